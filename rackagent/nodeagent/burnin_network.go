package nodeagent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"syscall"
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
	// netAgentDownMax bounds the wait for an agent that refuses
	// connections (it is restarting) before that counts as a failure.
	netAgentDownMax = 2 * time.Minute
)

// netResult is the network burn-in's result.
type netResult struct {
	Status     string  `json:"status"`
	RxMBPerSec float64 `json:"rx_mb_per_sec"`
	TxMBPerSec float64 `json:"tx_mb_per_sec"`
	Bytes      int64   `json:"bytes"`
	Transfers  int     `json:"transfers"`
	Errors     int     `json:"errors"`
	// AgentRestarts counts transfers cut by a restart of the rack agent
	// (its next answer named another run, proto.AgentBootHeader): not
	// faults of the network, so not errors.
	AgentRestarts int `json:"agent_restarts,omitempty"`
	rxBytes       int64
	txBytes       int64
	rxTime        time.Duration
	txTime        time.Duration
	lastErr       error
	failuresInRow int
	// pending are the failures since the last good transfer, judged when
	// the next one succeeds; agentBoot is the agent run last answered.
	pending   []netFailure
	agentBoot string
	downSince time.Time
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
	// Run for the duration, and until a transfer went through each way
	// (an agent that only ever asks to slow down gets netMaxSlowDowns
	// waits; failures stop it after netMaxFailures in a row).
	tried := map[bool]bool{}
	slowDowns := 0
	for (len(tried) < 2 && slowDowns < netMaxSlowDowns) || r.clock.Now().Sub(start) < p.Duration ||
		// A failure is judged by the next good transfer (an agent
		// restart is not the network's fault): go on until one comes,
		// or too many fail in a row.
		len(res.pending) > 0 && res.failuresInRow < netMaxFailures || !res.downSince.IsZero() {
		if err := ctx.Err(); err != nil {
			return stepResult{result: res, err: err}
		}
		took := time.Duration(0)
		for _, rx := range []bool{true, false} {
			t := time.Now()
			n, boot, err := r.netTransfer(ctx, rx, size)
			d := time.Since(t)
			took = max(took, d)
			if err != nil && refused(err) && ctx.Err() == nil {
				// Nothing listens: the agent is restarting. Wait for it,
				// within netAgentDownMax, without counting a failure.
				if res.downSince.IsZero() {
					res.downSince = r.clock.Now()
					sc.logf("network: the agent refuses connections (restarting?): waiting up to %s", netAgentDownMax)
				}
				if r.clock.Now().Sub(res.downSince) < netAgentDownMax {
					select {
					case <-ctx.Done():
					case <-r.clock.After(time.Second):
					}
					continue
				}
			}
			res.downSince = time.Time{}
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
			if err != nil {
				res.pending = append(res.pending, netFailure{err: err, boot: cmp.Or(boot, res.agentBoot)})
				res.failuresInRow++
				res.lastErr = err
				sc.logf("network: %s of %d bytes: %v", direction(rx), size, err)
				continue
			}
			res.judge(sc, boot)
			res.failuresInRow = 0
			tried[rx] = true // a way counts as tried once a transfer went through
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
	res.Errors += len(res.pending) // failures no good transfer followed
	res.pending = nil
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

// netFailure is a failed transfer and the agent run it was with (the
// one that answered it, else the last that answered).
type netFailure struct {
	err  error
	boot string
}

// judge settles the failures since the last good transfer, now that one
// succeeded with the agent run boot: those with another run were cut by
// an agent restart, the others are errors.
func (res *netResult) judge(sc *stepCtx, boot string) {
	for _, f := range res.pending {
		if f.boot != "" && boot != "" && f.boot != boot {
			res.AgentRestarts++
			sc.logf("network: the rack agent restarted (a new run answers): a transfer it cut (%v) is not counted as an error", f.err)
		} else {
			res.Errors++
		}
	}
	res.pending = nil
	if boot != "" {
		res.agentBoot = boot
	}
}

// refused reports whether err is a connection the agent's host refused
// (nothing listens on the port).
func refused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

// netTransfer downloads n bytes from the agent's source (rx) or uploads
// n bytes to its sink, and returns the bytes moved and the agent run
// that answered (proto.AgentBootHeader).
func (r *taskRunner) netTransfer(ctx context.Context, rx bool, n int64) (int64, string, error) {
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
		return 0, "", err
	}
	resp, err := r.http.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	boot := resp.Header.Get(proto.AgentBootHeader)
	if resp.StatusCode/100 != 2 {
		return 0, boot, statusError(resp)
	}
	if !rx {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return n, boot, nil
	}
	got, err := io.Copy(io.Discard, io.LimitReader(resp.Body, n+1))
	if err != nil {
		return got, boot, err
	}
	if got != n {
		return got, boot, fmt.Errorf("got %d bytes, asked %d", got, n)
	}
	return got, boot, nil
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
