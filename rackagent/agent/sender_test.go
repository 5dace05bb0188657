package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/coordinator/apiclient"
	"github.com/metalfleet/metalfleet/ops/testkit"
	"github.com/metalfleet/metalfleet/proto"
)

// orderCoordinator answers report batches like a coordinator that keeps
// a high-water Seq per incarnation: 413 for a batch over maxBatch, 400
// for a batch holding a report with Step "bad"; it records the Seqs it
// applies, in order.
type orderCoordinator struct {
	mu       sync.Mutex
	maxBatch int
	applied  []uint64
	headers  []http.Header
}

func (c *orderCoordinator) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.headers = append(c.headers, r.Header.Clone())
	if r.URL.Path != "/v1/agent/reports" {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	var b proto.ReportBatch
	if err := json.NewDecoder(r.Body).Decode(&b); err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	if len(b.Reports) > c.maxBatch {
		w.WriteHeader(http.StatusRequestEntityTooLarge)
		json.NewEncoder(w).Encode(proto.ErrorBody{Error: proto.Errorf(proto.CodeTooLarge, "too many")})
		return
	}
	for _, rep := range b.Reports {
		if rep.Step == "bad" {
			w.WriteHeader(http.StatusBadRequest)
			json.NewEncoder(w).Encode(proto.ErrorBody{Error: proto.Errorf(proto.CodeInvalid, "step: bad")})
			return
		}
	}
	ack := proto.ReportAck{}
	for _, rep := range b.Reports {
		c.applied = append(c.applied, rep.Seq)
		ack.Acked = append(ack.Acked, rep.ID)
	}
	json.NewEncoder(w).Encode(ack)
}

// TestSenderKeepsSeqOrder: splitting a batch on 413 and bisecting it on
// 400 still delivers reports in Seq order.
func TestSenderKeepsSeqOrder(t *testing.T) {
	oc := &orderCoordinator{maxBatch: 3}
	srv := httptest.NewServer(oc)
	defer srv.Close()
	s := sender{c: apiclient.New(srv.URL, "tok"), rack: "r1"}
	var rs []proto.AgentReport
	for i := range 10 {
		r := proto.AgentReport{ID: string(rune('a' + i)), Kind: proto.ReportCallback, Seq: uint64(i + 1), Incarnation: "inc"}
		if i == 6 {
			r.Step = "bad"
		}
		rs = append(rs, r)
	}
	ack, err := s.Send(context.Background(), rs)
	if err != nil {
		t.Fatal(err)
	}
	if len(ack.Acked) != 9 || len(ack.Rejected) != 1 {
		t.Errorf("ack %+v, want 9 acked and 1 rejected", ack)
	}
	for i := 1; i < len(oc.applied); i++ {
		if oc.applied[i] <= oc.applied[i-1] {
			t.Fatalf("applied seqs %v: not in order", oc.applied)
		}
	}
}

// runAgent runs an agent named a1 of rack r1 against the coordinator at
// url until the test ends.
func runAgent(t *testing.T, url string) *Agent {
	t.Helper()
	a, err := New(Config{Name: "a1", Rack: "r1", DataDir: t.TempDir(), Coordinators: []string{url}, Token: "tok",
		DHCPAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", AdvertiseIP: netip.MustParseAddr("127.0.0.1")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return a
}

// TestMgmtHeaderSent: the agent names its management listener on its
// calls to the coordinator, boot-state polls included.
func TestMgmtHeaderSent(t *testing.T) {
	oc := &orderCoordinator{maxBatch: 100}
	srv := httptest.NewServer(oc)
	defer srv.Close()
	a := runAgent(t, srv.URL)
	testkit.Eventually(t, 10*time.Second, "a boot-state poll", func() bool {
		oc.mu.Lock()
		defer oc.mu.Unlock()
		for _, h := range oc.headers {
			if h.Get(proto.AgentMgmtHeader) == a.MgmtAddr() {
				return true
			}
		}
		return false
	})
}

// TestSenderRetriesUndecodableAndUnavailable: a single report answered 400
// because the coordinator could not decode it (a field it does not know,
// from a newer agent) or answered 5xx is kept and sent again; a 400 about
// its content is a rejection.
func TestSenderRetriesUndecodableAndUnavailable(t *testing.T) {
	for _, tt := range []struct {
		status int
		code   proto.Code
		msg    string
		reject bool
	}{
		{400, proto.CodeUndecodable, "reports[0]: unknown field \"power_cycle\"", false},
		{400, proto.CodeUndecodable, "reports[0]: body is not valid JSON at byte 3: x", false},
		{400, proto.CodeUndecodable, "reports[0]: field seq: want a number, got string", false},
		{503, proto.CodeUnavailable, "report without incarnation or seq; try again", false},
		{500, proto.CodeInternal, "internal", false},
		{400, proto.CodeInvalid, "reports[0]: id is required", true},
		// A content error is a rejection whatever its wording.
		{400, proto.CodeInvalid, "reports[0].mac \"x\": want an Ethernet MAC address", true},
	} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			proto.WriteError(w, proto.Errorf(tt.code, "%s", tt.msg))
		}))
		s := sender{c: apiclient.New(srv.URL, "tok"), rack: "r1"}
		ack, err := s.Send(context.Background(), []proto.AgentReport{{ID: "r-1", Kind: proto.ReportLease, Seq: 1, Incarnation: "inc"}})
		srv.Close()
		if rejected := len(ack.Rejected) == 1; rejected != tt.reject || (!tt.reject && err == nil) {
			t.Errorf("%d %q: ack %+v err %v; want rejected=%v (else an error, to retry)", tt.status, tt.msg, ack, err, tt.reject)
		}
	}
}

// TestMgmtAuthBoundsCoordinatorChecks: 200 requests with random bad
// tokens to the management listener cause a small bounded number of token
// checks at the coordinator (a per-source failure budget, a negative
// cache, one check per token in flight), and are all refused.
func TestMgmtAuthBoundsCoordinatorChecks(t *testing.T) {
	var mu sync.Mutex
	checks := 0
	var unbounded []string // queries of checks not asking for one token
	const admin = "admin-token"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/tokens" {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		mu.Lock()
		if q := r.URL.RawQuery; q != "limit=1" {
			unbounded = append(unbounded, q)
		}
		checks++
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if r.Header.Get("Authorization") != "Bearer "+admin {
			w.WriteHeader(http.StatusUnauthorized)
			json.NewEncoder(w).Encode(proto.ErrorBody{Error: proto.Errorf(proto.CodeUnauthorized, "bad token")})
			return
		}
		w.Write([]byte("[]"))
	}))
	defer srv.Close()
	a := runAgent(t, srv.URL)
	get := func(token string) int {
		req, _ := http.NewRequest("GET", "http://"+a.mgmtLn.Addr().String()+"/v1/health", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Error(err)
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if st := get(admin); st != 200 {
		t.Fatalf("an admin token = %d, want 200", st)
	}
	var wg sync.WaitGroup
	statuses := make(chan int, 200)
	for g := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 10 {
				statuses <- get(fmt.Sprintf("bad-%d-%d-%d", g, i, rand.Int64()))
			}
		}()
	}
	wg.Wait()
	close(statuses)
	for st := range statuses {
		if st != http.StatusUnauthorized && st != http.StatusTooManyRequests {
			t.Errorf("a bad token answered %d, want 401 or 429", st)
		}
	}
	mu.Lock()
	n := checks - 1 // the admin's
	mu.Unlock()
	if n > mgmtFailBurst+1 {
		t.Errorf("200 bad tokens caused %d token checks at the coordinator, want at most %d", n, mgmtFailBurst+1)
	}
	t.Logf("200 bad tokens: %d coordinator checks", n)
	mu.Lock()
	if len(unbounded) != 0 {
		t.Errorf("token checks asked GET /v1/tokens with queries %q, want ?limit=1 (a small answer)", unbounded)
	}
	mu.Unlock()
	if st := get(admin); st != 200 {
		t.Errorf("the admin token (remembered) after the flood = %d, want 200", st)
	}
}

// TestMgmtAuthNegativeCacheAndSingleFlight: one bad token sent many times
// at once is checked once; then it is answered from the cache.
func TestMgmtAuthNegativeCacheAndSingleFlight(t *testing.T) {
	var mu sync.Mutex
	checks := 0
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		checks++
		mu.Unlock()
		<-release
		w.WriteHeader(http.StatusUnauthorized)
	}))
	defer srv.Close()
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	defer free() // before srv.Close, even when the test fails
	m := newMgmtAuth("own", func() []string { return []string{srv.URL} }, time.Now)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- m.check(context.Background(), "same-bad-token", fmt.Sprintf("10.0.0.%d", i))
		}()
	}
	// All 8 registered: one check at the coordinator, 7 waiting on it.
	testkit.Eventually(t, 5*time.Second, "one check in flight, 7 waiting on it", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return checks == 1 && m.waiters.Load() == 7
	})
	free()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != errBadToken {
			t.Errorf("check = %v, want the bad-token error", err)
		}
	}
	for range 5 {
		if err := m.check(context.Background(), "same-bad-token", "10.0.1.1"); err != errBadToken {
			t.Errorf("check again = %v, want the bad-token error", err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if checks != 1 {
		t.Errorf("13 checks of one bad token asked the coordinator %d times, want 1", checks)
	}
}

// TestMgmtAuthCapsChecksInFlight: distinct tokens from distinct sources
// at once have at most mgmtMaxChecks coordinator checks in flight.
func TestMgmtAuthCapsChecksInFlight(t *testing.T) {
	var mu sync.Mutex
	inFlight, most, calls := 0, 0, 0
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		calls++
		inFlight++
		most = max(most, inFlight)
		mu.Unlock()
		<-release
		mu.Lock()
		inFlight--
		mu.Unlock()
		w.WriteHeader(http.StatusUnauthorized)
	}))
	defer srv.Close()
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	defer free() // before srv.Close, even when the test fails
	m := newMgmtAuth("own", func() []string { return []string{srv.URL} }, time.Now)
	var wg sync.WaitGroup
	for i := range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = m.check(context.Background(), fmt.Sprintf("token-%d", i), fmt.Sprintf("10.0.2.%d", i))
		}()
	}
	// All 12 registered: in flight at the coordinator or waiting for a
	// slot.
	testkit.Eventually(t, 5*time.Second, "all 12 checks in flight or waiting", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return int64(inFlight)+m.queued.Load() == 12
	})
	mu.Lock()
	if inFlight != mgmtMaxChecks || calls != mgmtMaxChecks {
		t.Errorf("%d checks in flight, %d coordinator calls, with 12 at once; want %d and %d", inFlight, calls, mgmtMaxChecks, mgmtMaxChecks)
	}
	mu.Unlock()
	free()
	wg.Wait()
	if most > mgmtMaxChecks {
		t.Errorf("%d coordinator checks in flight at once, want at most %d", most, mgmtMaxChecks)
	}
}
