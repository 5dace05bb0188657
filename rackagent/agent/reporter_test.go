package agent

import (
	"context"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/metalfleet/metalfleet/coordinator/coordtest"
	"github.com/metalfleet/metalfleet/proto"
	"github.com/metalfleet/metalfleet/rackagent/outbox"
)

// captureSender records what the outbox delivers.
type captureSender struct {
	mu  sync.Mutex
	got []proto.AgentReport
}

func (c *captureSender) Send(_ context.Context, rs []proto.AgentReport) (proto.ReportAck, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.got = append(c.got, rs...)
	var ack proto.ReportAck
	for _, r := range rs {
		ack.Acked = append(ack.Acked, r.ID)
	}
	return ack, nil
}

// TestReportNowDurable: ReportNow returns once the report is in the
// outbox, stamped with the rack, agent, incarnation and a sequence number
// as Report's are, and returns the outbox's error when it is full.
func TestReportNowDurable(t *testing.T) {
	db, err := bbolt.Open(filepath.Join(t.TempDir(), "a.db"), 0o600, &bbolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	out, err := outbox.Open(db, outbox.Config{MaxQueued: 1})
	if err != nil {
		t.Fatal(err)
	}
	g := newGroupReporter(out, "r1", "a1", slog.New(slog.DiscardHandler))
	if err := g.ReportNow(proto.AgentReport{Kind: proto.ReportCallback, Step: "inventory", MAC: "52:54:00:00:00:01", Data: []byte(`{}`)}); err != nil {
		t.Fatal(err)
	}
	if out.Len() != 1 {
		t.Fatalf("outbox holds %d reports after ReportNow, want 1", out.Len())
	}
	if err := g.ReportNow(proto.AgentReport{Kind: proto.ReportCallback, Step: "inventory", MAC: "52:54:00:00:00:02", Data: []byte(`{}`)}); err == nil {
		t.Fatal("ReportNow past MaxQueued: no error")
	}
	s := &captureSender{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- out.Run(ctx, s) }()
	defer func() { cancel(); <-done }()
	coordtest.WaitFor(t, 10*time.Second, "outbox drained", func() bool { return out.Len() == 0 })
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.got) != 1 {
		t.Fatalf("sent %d reports, want 1", len(s.got))
	}
	r := s.got[0]
	if r.Rack != "r1" || r.Agent != "a1" || r.Incarnation != out.Incarnation() || r.Seq == 0 || r.Time.IsZero() {
		t.Fatalf("sent %+v: want rack r1, agent a1, incarnation %s, a seq and a time", r, out.Incarnation())
	}
}
