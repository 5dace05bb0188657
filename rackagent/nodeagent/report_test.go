package nodeagent

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/ops/testkit"
	"github.com/metalfleet/metalfleet/proto"
)

// fakeClock advances at once by whatever is waited for, and records the
// waits.
type fakeClock struct {
	mu    sync.Mutex
	now   time.Time
	waits []time.Duration
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	c.waits = append(c.waits, d)
	ch := make(chan time.Time, 1)
	ch <- c.now
	return ch
}

func (c *fakeClock) Waits() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Duration(nil), c.waits...)
}

// callbackServer answers the i-th callback (from 0) with answers[i], the
// last one for every later one, and records what it got.
type callbackServer struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []recorded
	n    atomic.Int32
}

type recorded struct {
	path, mac, auth, ctype string
	body                   []byte
}

type answer struct {
	status     int
	body       string
	retryAfter string
}

func newCallbackServer(t *testing.T, answers ...answer) *callbackServer {
	cs := &callbackServer{}
	cs.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		cs.mu.Lock()
		cs.reqs = append(cs.reqs, recorded{r.URL.Path, r.Header.Get(MACHeader), r.Header.Get("Authorization"), r.Header.Get("Content-Type"), body})
		cs.mu.Unlock()
		i := int(cs.n.Add(1)) - 1
		a := answers[min(i, len(answers)-1)]
		if a.retryAfter != "" {
			w.Header().Set("Retry-After", a.retryAfter)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(a.status)
		io.WriteString(w, a.body)
	}))
	t.Cleanup(cs.Close)
	return cs
}

func (cs *callbackServer) requests() []recorded {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return append([]recorded(nil), cs.reqs...)
}

const accepted = `{"accepted":true}`

func TestReportPostsOnce(t *testing.T) {
	cs := newCallbackServer(t, answer{status: http.StatusAccepted, body: accepted})
	body := map[string]any{"cpus": 2}
	err := Report(context.Background(), cs.URL+"/v1/callback/", "52-54-00-12-34-56", "tok3n", StepInventory, body)
	if err != nil {
		t.Fatalf("Report = %v, want nil", err)
	}
	reqs := cs.requests()
	if len(reqs) != 1 {
		t.Fatalf("server got %d requests, want 1", len(reqs))
	}
	r := reqs[0]
	if r.path != "/v1/callback/inventory" || r.mac != "52:54:00:12:34:56" || r.auth != "Bearer tok3n" || r.ctype != "application/json" {
		t.Errorf("request = path %q mac %q auth %q type %q, want /v1/callback/inventory, the normalized MAC, the bearer token, JSON", r.path, r.mac, r.auth, r.ctype)
	}
	if string(r.body) != `{"cpus":2}` {
		t.Errorf("body = %s, want {\"cpus\":2}", r.body)
	}
}

func TestReportWithoutToken(t *testing.T) {
	cs := newCallbackServer(t, answer{status: http.StatusAccepted, body: accepted})
	if err := Report(context.Background(), cs.URL+"/v1/callback", "52:54:00:12:34:56", "", StepInventory, json.RawMessage(`{"a":1}`)); err != nil {
		t.Fatal(err)
	}
	if r := cs.requests()[0]; r.auth != "" || string(r.body) != `{"a":1}` {
		t.Errorf("request auth %q body %s, want no Authorization and the raw JSON", r.auth, r.body)
	}
}

func TestReportRetries(t *testing.T) {
	for _, tc := range []struct {
		name     string
		answers  []answer
		wantErr  bool
		wantReqs int
		check    func(t *testing.T, err error, waits []time.Duration)
	}{
		{
			name:     "5xx then accepted",
			answers:  []answer{{status: 503, body: `{"error":{"code":"no_leader","message":"no leader"}}`}, {status: 500}, {status: 202, body: accepted}},
			wantReqs: 3,
			check: func(t *testing.T, err error, waits []time.Duration) {
				if len(waits) != 2 || waits[0] > time.Second || waits[0] < 800*time.Millisecond || waits[1] < 1600*time.Millisecond || waits[1] > 2*time.Second {
					t.Errorf("waits = %v, want about 1s then 2s (doubling, less up to 20%% jitter)", waits)
				}
			},
		},
		{
			name:     "429 with Retry-After",
			answers:  []answer{{status: 429, retryAfter: "7"}, {status: 202, body: accepted}},
			wantReqs: 2,
			check: func(t *testing.T, err error, waits []time.Duration) {
				if len(waits) != 1 || waits[0] != 7*time.Second {
					t.Errorf("waits = %v, want [7s] (Retry-After)", waits)
				}
			},
		},
		{
			name:     "403 is final",
			answers:  []answer{{status: 403, body: `{"error":{"code":"forbidden","message":"not served discovery"}}`}},
			wantErr:  true,
			wantReqs: 1,
			check: func(t *testing.T, err error, waits []time.Duration) {
				var se *StatusError
				if !errors.As(err, &se) || se.Status != 403 || se.Temporary() {
					t.Errorf("err = %v, want a final *StatusError 403", err)
				}
				if proto.CodeOf(err) != proto.CodeForbidden {
					t.Errorf("CodeOf(err) = %s, want forbidden", proto.CodeOf(err))
				}
				if len(waits) != 0 {
					t.Errorf("waits = %v, want none", waits)
				}
			},
		},
		{
			name:     "401 wrong token is final",
			answers:  []answer{{status: 401, body: "not json"}},
			wantErr:  true,
			wantReqs: 1,
			check: func(t *testing.T, err error, waits []time.Duration) {
				if !strings.Contains(err.Error(), "not json") {
					t.Errorf("err = %v, want the body in it", err)
				}
			},
		},
		{
			name:     "gives up after MaxElapsed",
			answers:  []answer{{status: 502}},
			wantErr:  true,
			wantReqs: -1, // 1+2+4+8+15+15+15+15 = 75 s of waits at most, so 9 or 10 with jitter
			check: func(t *testing.T, err error, waits []time.Duration) {
				var sum time.Duration
				for _, w := range waits {
					sum += w
				}
				if !strings.Contains(err.Error(), "giving up after") || sum > 90*time.Second || len(waits) < 8 || len(waits) > 9 {
					t.Errorf("err = %v after waits %v (%s), want giving up after 9 or 10 attempts within 90s", err, waits, sum)
				}
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cs := newCallbackServer(t, tc.answers...)
			clock := newFakeClock()
			r := &Reporter{Clock: clock, InitialBackoff: time.Second, MaxBackoff: 15 * time.Second, MaxElapsed: 90 * time.Second}
			err := r.Report(context.Background(), cs.URL+"/v1/callback", "52:54:00:12:34:56", "", StepInventory, map[string]int{})
			if (err != nil) != tc.wantErr {
				t.Fatalf("Report = %v, want error %t", err, tc.wantErr)
			}
			if n := len(cs.requests()); tc.wantReqs >= 0 && n != tc.wantReqs {
				t.Errorf("server got %d requests, want %d", n, tc.wantReqs)
			}
			tc.check(t, err, clock.Waits())
		})
	}
}

func TestReportRetriesNetworkErrors(t *testing.T) {
	cs := newCallbackServer(t, answer{status: 202, body: accepted})
	url := cs.URL
	cs.Close() // nothing listens there now
	clock := newFakeClock()
	r := &Reporter{Clock: clock, MaxElapsed: 10 * time.Second}
	err := r.Report(context.Background(), url+"/v1/callback", "52:54:00:12:34:56", "", StepInventory, 1)
	if err == nil || !strings.Contains(err.Error(), "giving up") {
		t.Fatalf("Report(nothing listening) = %v, want giving up", err)
	}
	if len(clock.Waits()) < 3 {
		t.Errorf("waits = %v, want several retries", clock.Waits())
	}
}

func TestReportStopsWithContext(t *testing.T) {
	cs := newCallbackServer(t, answer{status: 503})
	ctx, cancel := context.WithCancel(context.Background())
	r := &Reporter{InitialBackoff: time.Hour, MaxBackoff: time.Hour, MaxElapsed: 2 * time.Hour} // the real clock: only ctx ends the wait
	done := make(chan error, 1)
	go func() { done <- r.Report(ctx, cs.URL+"/v1/callback", "52:54:00:12:34:56", "", StepInventory, 1) }()
	testkit.Eventually(t, 10*time.Second, "the first attempt", func() bool { return len(cs.requests()) > 0 })
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Report after cancel = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Report did not return after its context was cancelled")
	}
}

func TestReportRefusesBadArguments(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct{ url, mac, step string }{
		{"ftp://x/v1/callback", "52:54:00:12:34:56", "inventory"},
		{"http:///v1/callback", "52:54:00:12:34:56", "inventory"},
		{"http://x/v1/callback", "not-a-mac", "inventory"},
		{"http://x/v1/callback", "52:54:00:12:34:56", "../admin"},
		{"http://x/v1/callback", "52:54:00:12:34:56", ""},
	} {
		if err := Report(ctx, tc.url, tc.mac, "", tc.step, 1); err == nil {
			t.Errorf("Report(%q, %q, %q) = nil, want an error", tc.url, tc.mac, tc.step)
		}
	}
	if err := Report(ctx, "http://x/v1/callback", "52:54:00:12:34:56", "", "inventory", func() {}); err == nil {
		t.Error("Report(unencodable body) = nil, want an error")
	}
}

func TestStepURL(t *testing.T) {
	for _, tc := range []struct{ in, step, want string }{
		{"http://10.0.0.1:8080/v1/callback", "inventory", "http://10.0.0.1:8080/v1/callback/inventory"},
		{"http://10.0.0.1:8080/v1/callback/", "burnin.cpu", "http://10.0.0.1:8080/v1/callback/burnin.cpu"},
		{"https://agent/v1/callback?x=1", "inventory", "https://agent/v1/callback/inventory?x=1"},
	} {
		got, err := StepURL(tc.in, tc.step)
		if err != nil || got != tc.want {
			t.Errorf("StepURL(%q, %q) = %q, %v, want %q", tc.in, tc.step, got, err, tc.want)
		}
	}
}
