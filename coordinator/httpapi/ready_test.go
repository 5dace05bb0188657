package httpapi

import (
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/proto"
)

// notReadyBackend is a leader that has not applied its predecessor's log
// yet, until ready is set.
type notReadyBackend struct {
	*fsmBackend
	ready atomic.Bool
}

func (b *notReadyBackend) WaitReady() error {
	if !b.ready.Load() {
		return proto.Errorf(proto.CodeUnavailable, "just elected; still applying the log")
	}
	return nil
}

// TestWritesWaitForANewLeader: a new leader that has not applied its
// predecessor's log answers writes with a retryable 503 before it looks
// at its (stale) token table or state; none is applied.
func TestWritesWaitForANewLeader(t *testing.T) {
	e := newFuzzEnv(t)
	b := &notReadyBackend{fsmBackend: e.b}
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	e.api = New(b, Config{Now: func() time.Time { return now }}, nil, nil)
	body := validBatch(proto.AgentReport{ID: "r-1", Kind: proto.ReportMACSeen, Rack: "r1", Agent: "a1", Incarnation: "i1", Seq: 1,
		Time: now, MAC: "52:54:00:00:00:01"})
	idx := e.b.store.Index()
	w := e.post(body, "a1", "")
	if w.Code != 503 || w.Header().Get("Retry-After") == "" {
		t.Fatalf("a write on a leader not yet ready: %d %s, want a retryable 503", w.Code, w.Body.Bytes())
	}
	if e.b.store.Index() != idx {
		t.Fatalf("the write was applied")
	}
	// A ?stale read is answered at once from the local state.
	req := httptest.NewRequest("GET", "/v1/agent/bootstate?rack=r1&stale", nil)
	req.Header.Set("Authorization", e.agent)
	rw := httptest.NewRecorder()
	e.api.Handler().ServeHTTP(rw, req)
	if rw.Code != 200 {
		t.Fatalf("a stale read on a leader not yet ready: %d %s, want 200", rw.Code, rw.Body.Bytes())
	}
	b.ready.Store(true)
	if w := e.post(body, "a1", ""); w.Code != 200 || e.b.store.Index() == idx {
		t.Fatalf("once ready: %d %s", w.Code, w.Body.Bytes())
	}
}
