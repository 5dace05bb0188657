package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/metalfleet/metalfleet/proto"
)

// Transfer sizes of the network burn-in: the first, and the largest
// (each transfer doubles the last while it took less than netGrowBelow).
const (
	netFirstTransfer = 4 << 20
	netMaxTransfer   = 256 << 20
	netGrowBelow     = 2 * time.Second
	// netMaxFailures in a row stop the network burn-in.
	netMaxFailures = 3
	// netMaxSlowDowns bounds the 429 waits past the duration.
	netMaxSlowDowns = 30
)

// netResult is the network burn-in's result.
type netResult struct {
	Status        string  `json:"status"`
	RxMBPerSec    float64 `json:"rx_mb_per_sec"`
	TxMBPerSec    float64 `json:"tx_mb_per_sec"`
	Bytes         int64   `json:"bytes"`
	Transfers     int     `json:"transfers"`
	Errors        int     `json:"errors"`
	rxBytes       int64
	txBytes       int64
	rxTime        time.Duration
	txTime        time.Duration
	lastErr       error
	failuresInRow int
}

// burnNetwork alternates downloads from the agent's burn-in source and
// uploads to its sink for the burn-in's duration (at least one of
// each), growing the transfers while they are quick.
func (r *taskRunner) burnNetwork(ctx context.Context, sc *stepCtx) stepResult {
	p := r.params.Burnin
	if p == nil {
		return stepResult{err: errors.New("no burnin params")}
	}
	var res netResult
	size := int64(netFirstTransfer)
	start := r.clock.Now()
	// Run for the duration, and until both ways were tried (an agent
	// that only ever asks to slow down gets netMaxSlowDowns waits).
	tried := map[bool]bool{}
	slowDowns := 0
	for (len(tried) < 2 && slowDowns < netMaxSlowDowns) || r.clock.Now().Sub(start) < p.Duration {
		if err := ctx.Err(); err != nil {
			return stepResult{result: res, err: err}
		}
		took := time.Duration(0)
		for _, rx := range []bool{true, false} {
			t := time.Now()
			n, err := r.netTransfer(ctx, rx, size)
			d := time.Since(t)
			took = max(took, d)
			var se *StatusError
			if errors.As(err, &se) && se.Status == http.StatusTooManyRequests {
				// The agent's rate bound, not a fault of the network:
				// wait and go on.
				slowDowns++
				sc.logf("network: the agent asks to slow down (429)")
				select {
				case <-ctx.Done():
				case <-r.clock.After(time.Second):
				}
				continue
			}
			res.Transfers++
			tried[rx] = true
			if err != nil {
				res.Errors++
				res.failuresInRow++
				res.lastErr = err
				sc.logf("network: %s of %d bytes: %v", direction(rx), size, err)
				continue
			}
			res.failuresInRow = 0
			if rx {
				res.rxBytes, res.rxTime = res.rxBytes+n, res.rxTime+d
			} else {
				res.txBytes, res.txTime = res.txBytes+n, res.txTime+d
			}
		}
		if res.failuresInRow >= netMaxFailures {
			sc.logf("network: %d failures in a row: stopping", res.failuresInRow)
			break
		}
		if took < netGrowBelow {
			size = min(2*size, netMaxTransfer, proto.MaxBurninBytes)
		}
		pct := int(100 * r.clock.Now().Sub(start) / p.Duration)
		if err := sc.progress(ctx, pct, "network: rx %d tx %d bytes, %d errors", res.rxBytes, res.txBytes, res.Errors); err != nil {
			return stepResult{result: res, err: err}
		}
	}
	res.Bytes = res.rxBytes + res.txBytes
	res.RxMBPerSec, res.TxMBPerSec = rate(res.rxBytes, res.rxTime), rate(res.txBytes, res.txTime)
	sc.logf("network: %d transfers, rx %.1f MB/s, tx %.1f MB/s, %d bytes, %d errors", res.Transfers, res.RxMBPerSec, res.TxMBPerSec, res.Bytes, res.Errors)
	var err error
	switch {
	case res.Errors > 0:
		err = fmt.Errorf("network: %d of %d transfers failed, the last: %v", res.Errors, res.Transfers, res.lastErr)
	case res.rxBytes == 0 || res.txBytes == 0:
		err = fmt.Errorf("network: no transfer both ways in %s (the agent asked to slow down %d times)", p.Duration, slowDowns)
	}
	res.Status = statusOf(err)
	return stepResult{result: res, err: err}
}

func direction(rx bool) string {
	if rx {
		return "download"
	}
	return "upload"
}

// netTransfer downloads n bytes from the agent's source (rx) or uploads
// n bytes to its sink, and returns the bytes moved.
func (r *taskRunner) netTransfer(ctx context.Context, rx bool, n int64) (int64, error) {
	// Allow 1 MB/s at the least, and 30 s more.
	ctx, cancel := context.WithTimeout(ctx, DefaultAttemptTimeout+time.Duration(n/1e6)*time.Second)
	defer cancel()
	var (
		req *http.Request
		err error
	)
	if rx {
		req, err = r.request(ctx, http.MethodGet, r.base+proto.BurninSourcePath+"?bytes="+strconv.FormatInt(n, 10), nil)
	} else {
		req, err = r.request(ctx, http.MethodPost, r.base+proto.BurninSinkPath, &patternReader{left: n})
		if req != nil {
			req.ContentLength = n
			req.Header.Set("Content-Type", "application/octet-stream")
		}
	}
	if err != nil {
		return 0, err
	}
	resp, err := r.http.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return 0, statusError(resp)
	}
	if !rx {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return n, nil
	}
	got, err := io.Copy(io.Discard, io.LimitReader(resp.Body, n+1))
	if err != nil {
		return got, err
	}
	if got != n {
		return got, fmt.Errorf("got %d bytes, asked %d", got, n)
	}
	return got, nil
}

// patternReader reads left bytes of a fixed pattern.
type patternReader struct{ left int64 }

var netPattern = func() []byte {
	b := make([]byte, 64<<10)
	for i := range b {
		b[i] = byte(i*7 + i>>8)
	}
	return b
}()

func (p *patternReader) Read(b []byte) (int, error) {
	if p.left <= 0 {
		return 0, io.EOF
	}
	n := copy(b[:min(int64(len(b)), p.left)], netPattern)
	p.left -= int64(n)
	return n, nil
}
