package fsm

import (
	"strings"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/proto"
)

func rackWithPool() RackPut {
	return RackPut{Create: true, Rack: proto.Rack{Name: "r1", Subnet: "10.9.0.0/24", Gateway: "10.9.0.1", BootServer: "10.9.0.2",
		DNS: []string{"10.9.0.3"}, PoolStart: "10.9.0.100", PoolEnd: "10.9.0.199"}}
}

// TestReservedAddresses: nodes in a rack get the lowest free address
// outside the pool and the rack's own addresses; explicit ones are
// checked; a rack change that would strand a node's address is refused.
func TestReservedAddresses(t *testing.T) {
	h := newHarness(t)
	h.must(rackWithPool())
	mk := func(uuid, name, mac string) NodeCreate {
		c := node(uuid, name, mac, proto.StateEnrolled)
		c.Node.Rack = "r1"
		return c
	}
	n1 := h.must(mk(uuid1, "n1", "52:54:00:00:00:01")).(*proto.Node)
	if n1.IP != "10.9.0.4" {
		t.Fatalf("first node ip = %q, want 10.9.0.4 (after gateway, boot server, dns)", n1.IP)
	}
	n2 := h.must(mk(uuid2, "n2", "52:54:00:00:00:02")).(*proto.Node)
	if n2.IP != "10.9.0.5" {
		t.Fatalf("second node ip = %q, want 10.9.0.5", n2.IP)
	}
	for ip, msg := range map[string]string{
		"10.9.0.150": "inside the dynamic pool", "10.9.0.1": "rack's own", "10.9.1.5": "outside subnet",
		"10.9.0.255": "broadcast", "10.9.0.0": "network address", "10.9.0.4": "belongs to node",
	} {
		c := mk(uuid3, "n3", "52:54:00:00:00:03")
		c.Node.IP = ip
		code := proto.CodeInvalid
		if msg == "belongs to node" {
			code = proto.CodeConflict
		}
		h.fails(c, code, msg)
	}
	// Deleting a node frees its address for the next one.
	h.must(NodeDelete{Ref: "n1"})
	n3 := h.must(mk(uuid3, "n3", "52:54:00:00:00:03")).(*proto.Node)
	if n3.IP != "10.9.0.4" {
		t.Fatalf("reused ip = %q, want 10.9.0.4", n3.IP)
	}
	// Moving the pool over a node's address is refused.
	r := rackWithPool()
	r.Create, r.Rack.PoolStart = false, "10.9.0.5"
	h.fails(r, proto.CodeConflict, "n2 (10.9.0.5: inside the dynamic pool")
	// Leaving the rack drops the address.
	empty := ""
	n2 = h.must(NodeUpdate{Ref: "n2", Patch: proto.NodePatch{Rack: &empty}}).(*proto.Node)
	if n2.IP != "" {
		t.Fatalf("node without rack keeps ip %s", n2.IP)
	}
}

func TestAgentReports(t *testing.T) {
	h := newHarness(t)
	h.must(rackWithPool())
	h.must(RackPut{Create: true, Rack: proto.Rack{Name: "r2"}})
	c := node(uuid1, "n1", "52:54:00:00:00:01", proto.StateEnrolled)
	c.Node.Rack = "r1"
	h.must(c)
	t1 := t0.Add(time.Minute)
	rep := func(id string, kind proto.ReportKind, mod func(*proto.AgentReport)) proto.AgentReport {
		r := proto.AgentReport{ID: id, Kind: kind, Rack: "r1", Agent: "a1", Time: t1}
		mod(&r)
		return r
	}
	res := h.must(AgentReports{Rack: "r1", Reports: []proto.AgentReport{
		rep("s1", proto.ReportMACSeen, func(r *proto.AgentReport) { r.MAC, r.Arch, r.Count = "52:54:00:99:00:01", "bios", 3 }),
		rep("s2", proto.ReportMACSeen, func(r *proto.AgentReport) { r.MAC = "52-54-00-99-00-01" }),
		rep("b1", proto.ReportBootEvent, func(r *proto.AgentReport) { r.Node, r.Event = uuid1, "script" }),
		rep("l1", proto.ReportLease, func(r *proto.AgentReport) {
			r.MAC, r.LeaseEvent = "52:54:00:99:00:01", "bound"
			r.Lease = &proto.Lease{IP: "10.9.0.100", Expires: t1.Add(time.Hour)}
		}),
		rep("l2", proto.ReportLease, func(r *proto.AgentReport) {
			r.MAC, r.LeaseEvent = "52:54:00:99:00:02", "bound"
			r.Lease = &proto.Lease{IP: "10.9.0.100", Expires: t1.Add(time.Hour)}
		}),
		rep("l3", proto.ReportLease, func(r *proto.AgentReport) {
			r.MAC, r.LeaseEvent = "52:54:00:99:00:02", "bound"
			r.Lease = &proto.Lease{IP: "10.9.0.50", Expires: t1.Add(time.Hour)}
		}),
		rep("x1", proto.ReportCallback, func(r *proto.AgentReport) { r.MAC = "52:54:00:00:00:01" }),
		rep("x2", proto.ReportBootEvent, func(r *proto.AgentReport) { r.Node = "nosuch" }),
		rep("x3", proto.ReportMACSeen, func(r *proto.AgentReport) { r.MAC, r.Rack = "52:54:00:99:00:03", "r2" }),
		rep("p1", proto.ReportPower, func(r *proto.AgentReport) { r.Node, r.PowerState = uuid1, proto.PowerOn }),
	}}).(*AgentReportsResult)
	if got := strings.Join(res.Acked, ","); got != "s1,s2,b1,l1,p1" {
		t.Fatalf("acked = %s", got)
	}
	for id, frag := range map[string]string{"l2": "leased to 52:54:00:99:00:01", "l3": "outside rack r1's pool", "x1": "not handled",
		"x2": "not found", "x3": "batch for rack"} {
		if !strings.Contains(res.Rejected[id], frag) {
			t.Errorf("rejected[%s] = %q, want it to mention %q", id, res.Rejected[id], frag)
		}
	}
	sg := h.f.Store().Sightings("r1")
	if len(sg) != 1 || sg[0].Count != 4 || sg[0].Arch != "bios" || sg[0].Agent != "a1" {
		t.Fatalf("sightings = %+v", sg)
	}
	n, _ := h.f.Store().Node("n1")
	if n.LastBoot == nil || n.LastBoot.Event != "script" || n.PowerState != proto.PowerOn {
		t.Fatalf("node after reports: last_boot=%+v power=%s", n.LastBoot, n.PowerState)
	}
	if ls := h.f.Store().Leases("r1"); len(ls) != 1 || ls[0].MAC != "52:54:00:99:00:01" {
		t.Fatalf("leases = %+v", ls)
	}

	// A repeat of the whole batch changes nothing and acks the applied.
	idx := h.f.Store().Index()
	res = h.must(AgentReports{Rack: "r1", Reports: []proto.AgentReport{
		rep("s1", proto.ReportMACSeen, func(r *proto.AgentReport) { r.MAC, r.Count, r.Seq = "52:54:00:99:00:01", 3, 1 }),
	}}).(*AgentReportsResult)
	if len(res.Acked) != 1 || h.f.Store().Index() != idx {
		t.Fatalf("repeat: acked %v, index %d -> %d", res.Acked, idx, h.f.Store().Index())
	}
	if sg := h.f.Store().Sightings(""); sg[0].Count != 4 {
		t.Fatalf("a repeated sighting was counted again: %d", sg[0].Count)
	}

	// Released by its MAC: gone. The rack's boot index moved with it.
	bi := h.f.Store().BootIndex("r1")
	h.must(AgentReports{Rack: "r1", Reports: []proto.AgentReport{rep("l4", proto.ReportLease, func(r *proto.AgentReport) {
		r.MAC, r.LeaseEvent = "52:54:00:99:00:01", "released"
		r.Lease = &proto.Lease{IP: "10.9.0.100"}
	})}})
	if ls := h.f.Store().Leases("r1"); len(ls) != 0 {
		t.Fatalf("released lease kept: %+v", ls)
	}
	if h.f.Store().BootIndex("r1") <= bi || h.f.Store().BootIndex("r2") > bi {
		t.Fatalf("boot index r1 %d -> %d, r2 %d", bi, h.f.Store().BootIndex("r1"), h.f.Store().BootIndex("r2"))
	}

	// Creating a node for a sighted MAC forgets the sighting.
	h.must(node(uuid2, "n2", "52:54:00:99:00:01", proto.StateDiscovered))
	if sg := h.f.Store().Sightings(""); len(sg) != 0 {
		t.Fatalf("sighting kept after the MAC became a node: %+v", sg)
	}
	h.fails(AgentReports{Rack: "nosuch"}, proto.CodeInvalid, "does not exist")
}

// TestLeaseTakeover: a lease a surviving agent renewed is not ended or
// shortened by the old agent's late reports, and an agent's reports
// cannot touch a node of another rack.
func TestLeaseTakeover(t *testing.T) {
	h := newHarness(t)
	h.must(rackWithPool())
	h.must(RackPut{Create: true, Rack: proto.Rack{Name: "r2"}})
	other := node(uuid1, "n-r2", "52:54:00:00:00:01", proto.StateEnrolled)
	other.Node.Rack = "r2"
	h.must(other)
	t1 := t0.Add(time.Minute)
	lease := func(id, agent, ev string, exp time.Time) proto.AgentReport {
		return proto.AgentReport{ID: id, Kind: proto.ReportLease, Rack: "r1", Agent: agent, Time: t1, MAC: "52:54:00:99:00:01",
			LeaseEvent: ev, Lease: &proto.Lease{IP: "10.9.0.100", Expires: exp}}
	}
	h.must(AgentReports{Rack: "r1", Reports: []proto.AgentReport{
		lease("a-1", "a", "bound", t1.Add(time.Hour)),
		lease("b-1", "b", "bound", t1.Add(2*time.Hour)), // b took over and renewed
		lease("a-2", "a", "bound", t1.Add(time.Hour)),   // a, back, re-reports its old lease
		lease("a-3", "a", "expired", t1.Add(time.Hour)), // and expires it
	}})
	ls := h.f.Store().Leases("r1")
	if len(ls) != 1 || ls[0].Agent != "b" || !ls[0].Expires.Equal(t1.Add(2*time.Hour)) {
		t.Fatalf("leases after the old agent's late reports = %+v, want b's renewal", ls)
	}
	res := h.must(AgentReports{Rack: "r1", Reports: []proto.AgentReport{
		{ID: "p-1", Kind: proto.ReportPower, Rack: "r1", Agent: "a", Time: t1, Node: uuid1, PowerState: proto.PowerOff},
	}}).(*AgentReportsResult)
	if !strings.Contains(res.Rejected["p-1"], "is in rack") {
		t.Fatalf("power report for another rack's node: %+v", res)
	}
}

// TestReservedSkipsLeases: after a pool moves, a live lease left outside
// it is never given to a node as its reserved address (two machines on
// one address), by allocation or by an operator's choice.
func TestReservedSkipsLeases(t *testing.T) {
	h := newHarness(t)
	h.must(RackPut{Create: true, Rack: proto.Rack{Name: "r1", Subnet: "10.9.0.0/24", PoolStart: "10.9.0.1", PoolEnd: "10.9.0.9"}})
	t1 := t0.Add(time.Minute)
	h.must(AgentReports{Rack: "r1", Reports: []proto.AgentReport{{ID: "l1", Kind: proto.ReportLease, Rack: "r1", Time: t1,
		MAC: "52:54:00:99:00:01", LeaseEvent: "bound", Lease: &proto.Lease{IP: "10.9.0.1", Expires: t1.Add(time.Hour)}}}})
	h.must(RackPut{Rack: proto.Rack{Name: "r1", Subnet: "10.9.0.0/24", PoolStart: "10.9.0.100", PoolEnd: "10.9.0.199"}})
	c := node(uuid1, "n1", "52:54:00:00:00:01", proto.StateEnrolled)
	c.Node.Rack = "r1"
	if n := h.must(c).(*proto.Node); n.IP != "10.9.0.2" {
		t.Fatalf("reserved %s, want 10.9.0.2 (10.9.0.1 is leased)", n.IP)
	}
	c = node(uuid2, "n2", "52:54:00:00:00:02", proto.StateEnrolled)
	c.Node.Rack, c.Node.IP = "r1", "10.9.0.1"
	h.fails(c, proto.CodeConflict, "leased to 52:54:00:99:00:01")
}

// TestLeaseOutsideMovedPoolKept: when a pool moves, the agent ends the
// leases left outside it and reports them released; the coordinator
// keeps the record (the client may use the address until its renewal
// time) until the leader's LeasesExpire forgets it, an hour past its end.
// Until then no node is given the address.
func TestLeaseOutsideMovedPoolKept(t *testing.T) {
	h := newHarness(t)
	h.must(RackPut{Create: true, Rack: proto.Rack{Name: "r1", Subnet: "10.9.0.0/24", PoolStart: "10.9.0.1", PoolEnd: "10.9.0.9"}})
	t1 := t0.Add(time.Minute)
	lease := proto.Lease{IP: "10.9.0.1", Expires: t1.Add(time.Hour)}
	h.must(AgentReports{Rack: "r1", Reports: []proto.AgentReport{{ID: "l1", Kind: proto.ReportLease, Rack: "r1", Time: t1,
		MAC: "52:54:00:99:00:01", LeaseEvent: "bound", Lease: &lease}}})
	h.must(RackPut{Rack: proto.Rack{Name: "r1", Subnet: "10.9.0.0/24", PoolStart: "10.9.0.100", PoolEnd: "10.9.0.199"}})
	res := h.must(AgentReports{Rack: "r1", Reports: []proto.AgentReport{{ID: "l2", Kind: proto.ReportLease, Rack: "r1", Time: t1,
		MAC: "52:54:00:99:00:01", LeaseEvent: "released", Lease: &lease}}}).(*AgentReportsResult)
	if !strings.Contains(res.Rejected["l2"], "outside") || len(h.f.Store().Leases("r1")) != 1 {
		t.Fatalf("release outside the moved pool: %+v, leases %v; want refused and the record kept", res, h.f.Store().Leases("r1"))
	}
	if r := h.must(LeasesExpire{Before: lease.Expires}).(*LeasesExpireResult); r.Expired != 0 {
		t.Fatalf("expired a lease not yet past its end")
	}
	if r := h.must(LeasesExpire{Before: lease.Expires.Add(LeaseKeep + time.Second)}).(*LeasesExpireResult); r.Expired != 1 || len(h.f.Store().Leases("r1")) != 0 {
		t.Fatalf("LeasesExpire past the keep time: %+v", r)
	}
}
