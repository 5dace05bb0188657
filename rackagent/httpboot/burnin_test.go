package httpboot

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/ops/testkit"
	"github.com/metalfleet/metalfleet/proto"
)

func TestBurninSourceAndSink(t *testing.T) {
	h, logs := taskHarness(t)
	h.backend.addNode(taskNode(proto.Artifact{Name: "a", URL: "http://images/a", SHA256: kernelSHA}))
	good := auth(testToken, "aa:bb:cc:00:00:02")

	// Source: exactly N bytes, the pattern repeated, not something that
	// compresses to nothing.
	for _, n := range []int{0, 1, len(burninChunk), 3*len(burninChunk) + 17} {
		status, body, hdr := h.do("GET", proto.BurninSourcePath+"?bytes="+strconv.Itoa(n), good, nil)
		if status != 200 || len(body) != n || hdr.Get("Content-Length") != strconv.Itoa(n) {
			t.Errorf("source bytes=%d: %d, %d bytes, Content-Length %q", n, status, len(body), hdr.Get("Content-Length"))
			continue
		}
		if n > 0 && (body[:min(n, len(burninChunk))] != string(burninChunk[:min(n, len(burninChunk))]) ||
			strings.Count(body, "\x00") > n/64+1) {
			t.Errorf("source bytes=%d: not the pattern", n)
		}
	}
	// Sink: the body's size, whatever it is.
	for _, n := range []int{0, 5, 1 << 20} {
		status, body, _ := h.do("POST", proto.BurninSinkPath, good, bytes.NewReader(make([]byte, n)))
		var res BurninSinkResult
		if status != 200 || json.Unmarshal([]byte(body), &res) != nil || res.Bytes != int64(n) || res.Seconds < 0 {
			t.Errorf("sink %d bytes = %d %s, want 200 {\"bytes\": %d}", n, status, body, n)
		}
	}

	for _, tt := range []struct {
		name, method, path string
		hdr                map[string]string
		status             int
		code               proto.Code
		says               string
	}{
		{"source, no bytes", "GET", proto.BurninSourcePath, good, 400, proto.CodeInvalid, "bytes"},
		{"source, negative", "GET", proto.BurninSourcePath + "?bytes=-1", good, 400, proto.CodeInvalid, "bytes"},
		{"source, too many", "GET", proto.BurninSourcePath + "?bytes=" + strconv.Itoa(proto.MaxBurninBytes+1), good, 400, proto.CodeInvalid, "1073741824"},
		{"source, not a number", "GET", proto.BurninSourcePath + "?bytes=1e6", good, 400, proto.CodeInvalid, "bytes"},
		{"source, wrong token", "GET", proto.BurninSourcePath + "?bytes=10", auth("nope", "aa:bb:cc:00:00:02"), 401, proto.CodeUnauthorized, "token"},
		{"source, no token", "GET", proto.BurninSourcePath + "?bytes=10", map[string]string{MACHeader: "aa:bb:cc:00:00:02"}, 401, proto.CodeUnauthorized, "Bearer"},
		{"sink, wrong token", "POST", proto.BurninSinkPath, auth("nope", "aa:bb:cc:00:00:02"), 401, proto.CodeUnauthorized, "token"},
		{"sink, no MAC", "POST", proto.BurninSinkPath, map[string]string{"Authorization": "Bearer " + testToken}, 400, proto.CodeInvalid, "MAC"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			status, body, _ := h.do(tt.method, tt.path, tt.hdr, strings.NewReader("x"))
			if status != tt.status {
				t.Fatalf("%s %s = %d %s, want %d", tt.method, tt.path, status, body, tt.status)
			}
			if c := errCode(t, body); c != tt.code || !strings.Contains(body, tt.says) {
				t.Errorf("error %s: want code %q naming %q", body, tt.code, tt.says)
			}
		})
	}
	if !strings.Contains(logs.String(), "wrong task token") {
		t.Errorf("refused tokens are not logged:\n%s", logs.String())
	}
}

// TestBurninSinkTooLarge: a body announced over MaxBurninBytes is refused
// before it is read.
func TestBurninSinkTooLarge(t *testing.T) {
	h, _ := taskHarness(t)
	h.backend.addNode(taskNode(proto.Artifact{Name: "a", URL: "http://images/a", SHA256: kernelSHA}))
	req, err := http.NewRequest("POST", h.ts.URL+proto.BurninSinkPath, io.LimitReader(zeros{}, proto.MaxBurninBytes+1))
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = proto.MaxBurninBytes + 1
	req.Header.Set("Authorization", "Bearer "+testToken)
	req.Header.Set(MACHeader, "aa:bb:cc:00:00:02")
	start := time.Now()
	resp, err := h.ts.Client().Do(req)
	if err != nil {
		t.Fatalf("POST: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 413 || errCode(t, string(b)) != proto.CodeTooLarge {
		t.Errorf("POST %d bytes = %d %s, want 413 too_large", req.ContentLength, resp.StatusCode, b)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("the refusal took %s: the body was read", d)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// holdTransfers starts n source transfers that hold their slots (the
// server writes until the client reads or goes away; these do not read)
// and returns them and a func that starts one more.
func holdTransfers(t *testing.T, h *harness, n int) (held []*http.Response, get func() *http.Response) {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	t.Cleanup(client.CloseIdleConnections)
	get = func() *http.Response {
		req, _ := http.NewRequest("GET", h.ts.URL+proto.BurninSourcePath+"?bytes="+strconv.Itoa(proto.MaxBurninBytes), nil)
		req.Header.Set("Authorization", "Bearer "+testToken)
		req.Header.Set(MACHeader, "aa:bb:cc:00:00:02")
		resp, err := client.Do(req)
		if err != nil {
			t.Error(err)
			return nil
		}
		return resp
	}
	for range n {
		r := get()
		if r == nil || r.StatusCode != 200 {
			t.Fatalf("transfer = %v, want 200", r)
		}
		held = append(held, r)
	}
	return held, get
}

// TestBurninConcurrency: past BurninConcurrency transfers at once, 429
// with Retry-After; a finished transfer frees its slot.
func TestBurninConcurrency(t *testing.T) {
	const slots = 3
	h, _ := taskHarness(t, func(c *Config) { c.BurninConcurrency, c.BurninQueueWait = slots, -1 })
	h.backend.addNode(taskNode(proto.Artifact{Name: "a", URL: "http://images/a", SHA256: kernelSHA}))
	if c := New(Config{}); cap(c.burnin) != 8 || c.cfg.BurninQueueWait != 10*time.Second {
		t.Errorf("default concurrency %d, queue wait %s; want 8, 10s", cap(c.burnin), c.cfg.BurninQueueWait)
	}
	held, get := holdTransfers(t, h, slots)
	defer func() {
		for _, r := range held {
			r.Body.Close()
		}
	}()
	r := get()
	b, _ := io.ReadAll(r.Body)
	r.Body.Close()
	if r.StatusCode != 429 || r.Header.Get("Retry-After") == "" || errCode(t, string(b)) != proto.CodeRateLimited {
		t.Fatalf("transfer %d = %d %s (Retry-After %q), want 429 rate_limited with Retry-After", slots+1, r.StatusCode, b, r.Header.Get("Retry-After"))
	}
	// A sink too.
	if status, body, _ := h.do("POST", proto.BurninSinkPath, auth(testToken, "aa:bb:cc:00:00:02"), strings.NewReader("x")); status != 429 {
		t.Fatalf("sink with every slot taken = %d %s, want 429", status, body)
	}
	// One client goes away: its slot comes back.
	held[0].Body.Close()
	held = held[1:]
	testkit.Eventually(t, 10*time.Second, "a slot to come back", func() bool {
		status, _, _ := h.do("GET", proto.BurninSourcePath+"?bytes=100", auth(testToken, "aa:bb:cc:00:00:02"), nil)
		return status == 200
	})
}

// TestBurninQueue: a transfer past the bound waits for a slot (up to
// BurninQueueWait) instead of failing.
func TestBurninQueue(t *testing.T) {
	const slots = 2
	h, _ := taskHarness(t, func(c *Config) { c.BurninConcurrency, c.BurninQueueWait = slots, time.Minute })
	h.backend.addNode(taskNode(proto.Artifact{Name: "a", URL: "http://images/a", SHA256: kernelSHA}))
	held, _ := holdTransfers(t, h, slots)
	defer func() {
		for _, r := range held {
			r.Body.Close()
		}
	}()
	got := make(chan int, 1)
	go func() {
		req, _ := http.NewRequest("POST", h.ts.URL+proto.BurninSinkPath, strings.NewReader("queued"))
		req.Header.Set("Authorization", "Bearer "+testToken)
		req.Header.Set(MACHeader, "aa:bb:cc:00:00:02")
		resp, err := h.ts.Client().Do(req)
		if err != nil {
			got <- 0
			return
		}
		resp.Body.Close()
		got <- resp.StatusCode
	}()
	testkit.Eventually(t, 10*time.Second, "the transfer to wait for a slot", func() bool { return h.srv.waiting.Load() == 1 })
	held[0].Body.Close()
	held = held[1:]
	select {
	case status := <-got:
		if status != 200 {
			t.Errorf("a queued transfer = %d, want 200 once a slot freed", status)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the queued transfer did not run after a slot freed")
	}
}
