package fsm

import (
	"fmt"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/coordinator/state"
	"github.com/metalfleet/metalfleet/proto"
)

// TestReportsOnceForAnyBacklog: a report retried after more other reports
// than the old 65,536-id window (every agent flushing its backlog after an
// outage) is acknowledged as a repeat, not applied again: a released lease
// does not reappear, a deleted node does not come back.
func TestReportsOnceForAnyBacklog(t *testing.T) {
	h := newHarness(t)
	h.must(rackWithPool())
	t1 := t0.Add(time.Minute)
	bound := proto.AgentReport{ID: "bound-1", Kind: proto.ReportLease, Rack: "r1", Agent: "a1", Incarnation: "inc-a1", Seq: 1, Time: t1,
		MAC: "52:54:00:99:00:01", LeaseEvent: "bound", Lease: &proto.Lease{IP: "10.9.0.100", Expires: t1.Add(time.Hour)}}
	inv := inventoryReport(t, "inv-1", "52:54:00:12:34:56", "5b2f0c1e-0000-4000-8000-000000000001", "LAB-0001")
	inv.Seq = 2
	h.must(AgentReports{Rack: "r1", Reports: []proto.AgentReport{bound, inv}})
	n, ok := h.f.Store().Node("52:54:00:12:34:56")
	if !ok || len(h.f.Store().Leases("r1")) != 1 {
		t.Fatalf("first delivery not applied")
	}
	h.must(AgentReports{Rack: "r1", Reports: []proto.AgentReport{{ID: "rel-1", Kind: proto.ReportLease, Rack: "r1", Agent: "a1", Seq: 3, Time: t1,
		MAC: "52:54:00:99:00:01", LeaseEvent: "released", Lease: &proto.Lease{IP: "10.9.0.100"}}}})
	h.must(NodeDelete{Ref: n.UUID})

	// 66,000 reports of the rack's other agent, in batches as the outbox
	// sends them.
	const other = 66000
	for i := 0; i < other; i += 1000 {
		batch := make([]proto.AgentReport, 0, 1000)
		for j := i; j < i+1000; j++ {
			batch = append(batch, proto.AgentReport{ID: fmt.Sprintf("b-%d", j), Kind: proto.ReportMACSeen, Rack: "r1", Agent: "a2",
				Time: t1, MAC: fmt.Sprintf("52:54:01:%02x:%02x:%02x", j>>16&0xff, j>>8&0xff, j&0xff)})
		}
		h.must(AgentReports{Rack: "r1", Reports: batch})
	}

	// The first batch's ack was lost: the agent sends it again.
	idx := h.f.Store().Index()
	res := h.must(AgentReports{Rack: "r1", Reports: []proto.AgentReport{bound, inv}}).(*AgentReportsResult)
	if len(res.Acked) != 2 || len(res.Rejected) != 0 {
		t.Fatalf("replay after the backlog: %+v, want both acked as repeats", res)
	}
	if got := h.f.Store().Index(); got != idx {
		t.Fatalf("a replay changed the state (index %d -> %d)", idx, got)
	}
	if ls := h.f.Store().Leases("r1"); len(ls) != 0 {
		t.Fatalf("a released lease reappeared: %+v", ls)
	}
	if _, ok := h.f.Store().Node("52:54:00:12:34:56"); ok {
		t.Fatalf("a deleted node came back")
	}

	// The state remembers it across a snapshot and restore.
	g := New(state.New(), nil)
	if err := g.Store().Restore(snapshotReader(t, h.f.Store())); err != nil {
		t.Fatal(err)
	}
	r := g.ApplyBytes(idx+1, mustEncode(t, AgentReports{Rack: "r1", Reports: []proto.AgentReport{bound}}))
	if r.Err != nil || g.Store().Index() != idx || len(g.Store().Leases("r1")) != 0 {
		t.Fatalf("after restore, a replay applied: err %v, index %d, leases %v", r.Err, g.Store().Index(), g.Store().Leases("r1"))
	}

	// A rebuilt agent (same name, new data directory) starts a new
	// sequence: its reports apply from seq 1 again.
	fresh := bound
	fresh.Incarnation, fresh.Seq, fresh.ID = "inc-a1-rebuilt", 1, "bound-2"
	res = h.must(AgentReports{Rack: "r1", Reports: []proto.AgentReport{fresh}}).(*AgentReportsResult)
	if len(res.Acked) != 1 || len(h.f.Store().Leases("r1")) != 1 {
		t.Fatalf("a new incarnation's first report was not applied: %+v", res)
	}
}

// TestOlderEventsNeverOverwriteNewer: power readings and boot events
// that arrive late (a backlog, or another agent's slower queue) do not
// replace newer ones.
func TestOlderEventsNeverOverwriteNewer(t *testing.T) {
	h := newHarness(t)
	h.must(rackWithPool())
	c := node(uuid1, "n1", "52:54:00:00:00:01", proto.StateEnrolled)
	c.Node.Rack = "r1"
	h.must(c)
	t1, t2 := t0.Add(time.Minute), t0.Add(2*time.Minute)
	h.must(AgentReports{Rack: "r1", Reports: []proto.AgentReport{
		{ID: "p2", Kind: proto.ReportPower, Rack: "r1", Agent: "a1", Time: t2, Node: uuid1, PowerState: proto.PowerOff},
		{ID: "e2", Kind: proto.ReportBootEvent, Rack: "r1", Agent: "a1", Time: t2, Node: uuid1, Event: "kernel"},
	}})
	h.must(AgentReports{Rack: "r1", Reports: []proto.AgentReport{
		{ID: "p1", Kind: proto.ReportPower, Rack: "r1", Agent: "a2", Time: t1, Node: uuid1, PowerState: proto.PowerOn},
		{ID: "e1", Kind: proto.ReportBootEvent, Rack: "r1", Agent: "a2", Time: t1, Node: uuid1, Event: "script"},
	}})
	n, _ := h.f.Store().Node("n1")
	if n.PowerState != proto.PowerOff || !n.PowerUpdatedAt.Equal(t2) {
		t.Fatalf("power = %s at %v, want off at %v", n.PowerState, n.PowerUpdatedAt, t2)
	}
	if n.LastBoot == nil || n.LastBoot.Event != "kernel" {
		t.Fatalf("last boot = %+v, want the newer kernel event", n.LastBoot)
	}
}

func mustEncode(t *testing.T, c Command) []byte {
	t.Helper()
	b, err := Encode(c)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
