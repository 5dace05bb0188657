package agent

import (
	"context"
	"encoding/json"
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

// TestMgmtHeaderSent: the agent names its management listener on its
// calls to the coordinator, boot-state polls included.
func TestMgmtHeaderSent(t *testing.T) {
	oc := &orderCoordinator{maxBatch: 100}
	srv := httptest.NewServer(oc)
	defer srv.Close()
	a, err := New(Config{Name: "a1", Rack: "r1", DataDir: t.TempDir(), Coordinators: []string{srv.URL}, Token: "tok",
		DHCPAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", AdvertiseIP: netip.MustParseAddr("127.0.0.1")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()
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
