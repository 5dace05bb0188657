package fsm

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/coordinator/decide"
	"github.com/metalfleet/metalfleet/proto"
)

func bmcNode(h *harness) *proto.Node {
	h.t.Helper()
	h.must(rackWithPool())
	c := node(uuid1, "n1", "52:54:00:00:00:01", proto.StateEnrolled)
	c.Node.Rack = "r1"
	c.Node.BMC = proto.BMC{Driver: proto.DriverIPMI, Address: "10.9.1.1", Username: "admin", Password: "s3cret"}
	return h.must(c).(*proto.Node)
}

func bmcReport(gen uint64, act proto.BMCAction, errText string, at time.Time) AgentReports {
	r := proto.AgentReport{ID: "b" + at.Format("150405.000"), Kind: proto.ReportBMC, Rack: "r1", Node: uuid1, Time: at,
		Action: act, Generation: gen, Error: errText, PowerState: proto.PowerOn}
	if errText != "" {
		r.ErrorKind, r.PowerState = proto.BMCErrAuth, ""
	} else if act == proto.ActionVerify {
		r.BMCInfo = &proto.BMCInfo{Vendor: "Acme", Model: "X1", FirmwareVersion: "2.1"}
	}
	return AgentReports{Rack: "r1", Reports: []proto.AgentReport{r}}
}

// nodeBytes is node n1 and its history as JSON (the report's seq mark
// changes the state; the node must not).
func nodeBytes(h *harness) string {
	b, err := json.Marshal([]any{node1(h), h.f.Store().History(uuid1)})
	if err != nil {
		h.t.Fatal(err)
	}
	return string(b)
}

func node1(h *harness) *proto.Node {
	n, _ := h.f.Store().Node(uuid1)
	return n
}

// TestManageVerifiesBMC: manage is a verify intent; the node stays
// enrolled until the agent's answer, becomes manageable on success with
// the identity recorded, and stays enrolled with last_error on failure.
func TestManageVerifiesBMC(t *testing.T) {
	h := newHarness(t)
	bmcNode(h)
	n := h.must(NodeIntent{Ref: "n1", Intent: proto.Intent{Action: proto.ActionVerify, OnSuccess: "manage", Agent: "a1", At: t0}}).(*proto.Node)
	if n.ProvisionState != proto.StateEnrolled || len(n.Intents) != 1 || n.Intents[0].Generation != 1 {
		t.Fatalf("after the verify intent: %s, intents %+v", n.ProvisionState, n.Intents)
	}
	// The agent is told, with the credentials.
	b := decide.NodeBMC(n)
	if b == nil || b.Password != "s3cret" || len(b.Intents) != 1 {
		t.Fatalf("boot state BMC: %+v", b)
	}
	// A failed verification: still enrolled, last_error says why.
	h.must(bmcReport(1, proto.ActionVerify, "authentication refused: wrong password", t0.Add(time.Second)))
	n = node1(h)
	if n.ProvisionState != proto.StateEnrolled || !strings.Contains(n.LastError, "wrong password") ||
		n.BMCStatus == nil || n.BMCStatus.State != proto.BMCAuthFailed {
		t.Fatalf("after a failed verify: %s, last_error %q, status %+v", n.ProvisionState, n.LastError, n.BMCStatus)
	}
	if decide.NodeBMC(n).Intents != nil {
		t.Fatal("a done intent is still sent to the agent")
	}
	// Again, successfully.
	h.must(NodeIntent{Ref: "n1", Intent: proto.Intent{Action: proto.ActionVerify, OnSuccess: "manage", Agent: "a1", At: t0}})
	h.must(bmcReport(2, proto.ActionVerify, "", t0.Add(2*time.Second)))
	n = node1(h)
	if n.ProvisionState != proto.StateManageable || n.LastError != "" || n.BMCStatus.State != proto.BMCOK ||
		n.BMCStatus.Info == nil || n.BMCStatus.Info.Vendor != "Acme" || n.PowerState != proto.PowerOn {
		t.Fatalf("after verify: %s, last_error %q, status %+v, power %s", n.ProvisionState, n.LastError, n.BMCStatus, n.PowerState)
	}
	// The result re-delivered (an agent resending) changes nothing.
	before := nodeBytes(h)
	h.must(bmcReport(2, proto.ActionVerify, "", t0.Add(3*time.Second)))
	if before != nodeBytes(h) {
		t.Fatal("a repeated result changed the state")
	}
	// Changing a BMC field makes it unverified and asks for a verify.
	pw := "other"
	n = h.must(NodeUpdate{Ref: "n1", Patch: proto.NodePatch{BMC: &proto.BMCPatch{Password: &pw}}, Now: t0, Agent: "a1"}).(*proto.Node)
	if n.BMCStatus.State != proto.BMCUnverified || len(n.Intents) != 1 || n.Intents[0].Done || n.Intents[0].Action != proto.ActionVerify {
		t.Fatalf("after a BMC change: status %+v intents %+v", n.BMCStatus, n.Intents)
	}
	if h.f.Store().History(uuid1) == nil {
		t.Fatal("no history")
	}
}

// TestPowerIntentOnce: a power intent is answered once; an answer for a
// replaced generation changes nothing; nodes without a BMC are refused.
func TestPowerIntentOnce(t *testing.T) {
	h := newHarness(t)
	bmcNode(h)
	h.must(NodeIntent{Ref: "n1", Intent: proto.Intent{Action: proto.ActionPower, Power: proto.PowerTargetOn, Agent: "a1", At: t0}})
	h.must(NodeIntent{Ref: "n1", Intent: proto.Intent{Action: proto.ActionBootDevice, Boot: &proto.BootDeviceSpec{Device: proto.BootDevicePXE}, Agent: "a1", At: t0}})
	n := h.must(NodeIntent{Ref: "n1", Intent: proto.Intent{Action: proto.ActionPower, Power: proto.PowerTargetReboot, Agent: "a1", At: t0}}).(*proto.Node)
	if len(n.Intents) != 2 || n.Intents[0].Action != proto.ActionBootDevice || n.Intents[1].Generation != 3 {
		t.Fatalf("intents %+v: want boot-device (2) then power reboot (3)", n.Intents)
	}
	// The answer to generation 1 (replaced by 3) changes nothing.
	before := nodeBytes(h)
	h.must(bmcReport(1, proto.ActionPower, "", t0.Add(time.Second)))
	if before != nodeBytes(h) {
		t.Fatal("an answer to a replaced intent changed the state")
	}
	h.must(bmcReport(3, proto.ActionPower, "", t0.Add(2*time.Second)))
	if n = node1(h); !n.Intents[1].Done || n.PowerState != proto.PowerOn {
		t.Fatalf("after the answer: %+v power %s", n.Intents[1], n.PowerState)
	}
	h.fails(NodeIntent{Ref: "n1", Intent: proto.Intent{Action: proto.ActionPower, Power: "sideways", Agent: "a1", At: t0}}, proto.CodeInvalid, "target")
	c := node(uuid2, "n2", "52:54:00:00:00:02", proto.StateEnrolled)
	h.must(c)
	h.fails(NodeIntent{Ref: "n2", Intent: proto.Intent{Action: proto.ActionPower, Power: proto.PowerTargetOn, Agent: "a1", At: t0}}, proto.CodeWrongState, "has no BMC")
}

// TestPowerSyncReadings: an unanswering BMC makes the power unknown (never
// a stale on) and the BMC unreachable; an older reading never wins.
func TestPowerSyncReadings(t *testing.T) {
	h := newHarness(t)
	bmcNode(h)
	read := func(at time.Time, ps proto.PowerState, errText string) {
		r := proto.AgentReport{ID: "p" + at.Format("150405"), Kind: proto.ReportPower, Rack: "r1", Node: uuid1, Time: at, PowerState: ps, Error: errText}
		if errText != "" {
			r.ErrorKind = proto.BMCErrTimeout
		}
		h.must(AgentReports{Rack: "r1", Reports: []proto.AgentReport{r}})
	}
	read(t0.Add(time.Second), proto.PowerOn, "")
	read(t0.Add(3*time.Second), proto.PowerOn, "no answer in 10s")
	n := node1(h)
	if n.PowerState != proto.PowerUnknown || n.BMCStatus.State != proto.BMCUnreachable || !strings.Contains(n.BMCStatus.Error, "no answer") {
		t.Fatalf("after a timeout: power %s status %+v", n.PowerState, n.BMCStatus)
	}
	read(t0.Add(2*time.Second), proto.PowerOff, "") // older: ignored
	if n = node1(h); n.PowerState != proto.PowerUnknown {
		t.Fatalf("an older reading won: %s", n.PowerState)
	}
	read(t0.Add(4*time.Second), proto.PowerOff, "")
	if n = node1(h); n.PowerState != proto.PowerOff || n.BMCStatus.State != proto.BMCOK {
		t.Fatalf("after recovery: power %s status %+v", n.PowerState, n.BMCStatus)
	}
	found := false
	for _, ev := range h.f.Store().History(uuid1) {
		found = found || strings.Contains(ev.Message, "unknown -> off")
	}
	if !found {
		t.Fatalf("history has no power change: %+v", h.f.Store().History(uuid1))
	}
}

// TestIntentsExpire: an intent no agent answered by its expiry is ended
// (outcome unknown) by the leader's IntentsExpire; one not yet expired,
// or already answered, is left alone; an agent's "expired, not executed"
// answer does not touch the BMC status.
func TestIntentsExpire(t *testing.T) {
	h := newHarness(t)
	bmcNode(h)
	n := h.must(NodeIntent{Ref: "n1", Intent: proto.Intent{Action: proto.ActionPower, Power: proto.PowerTargetReboot, Agent: "a1", At: t0}}).(*proto.Node)
	exp := n.Intents[0].Expires
	if !exp.Equal(t0.Add(proto.IntentTTL)) {
		t.Fatalf("expires %s, want at + %s", exp, proto.IntentTTL)
	}
	if refs := ExpiredIntents(n, exp); len(refs) != 0 {
		t.Fatalf("expired at its expiry instant: %v", refs)
	}
	// Too early: nothing.
	h.must(IntentsExpire{Now: exp.Add(-time.Second), Items: []IntentReference{{Node: uuid1, Generation: 1}}})
	if n = node1(h); n.Intents[0].Done {
		t.Fatal("ended before its expiry")
	}
	later := exp.Add(time.Minute)
	refs := ExpiredIntents(n, later)
	if len(refs) != 1 || h.f.Store().ExpiredIntents(later, 10)[0].Generation != 1 {
		t.Fatalf("expired intents: %v / %v", refs, h.f.Store().ExpiredIntents(later, 10))
	}
	res := h.must(IntentsExpire{Now: later, Items: refs}).(*IntentsExpireResult)
	n = node1(h)
	if res.Expired != 1 || !n.Intents[0].Done || !strings.Contains(n.Intents[0].Error, "outcome unknown") || !strings.Contains(n.LastError, "power reboot failed") {
		t.Fatalf("after expiry: %+v, last_error %q", n.Intents[0], n.LastError)
	}
	// A late result changes nothing.
	before := nodeBytes(h)
	h.must(bmcReport(1, proto.ActionPower, "", later.Add(time.Second)))
	if before != nodeBytes(h) {
		t.Fatal("a result after the expiry changed the node")
	}
	// "Expired, not executed" from the agent leaves the BMC status alone.
	h.must(NodeIntent{Ref: "n1", Intent: proto.Intent{Action: proto.ActionPower, Power: proto.PowerTargetOn, Agent: "a1", At: t0}})
	r := bmcReport(2, proto.ActionPower, "the intent expired", later.Add(2*time.Second))
	r.Reports[0].ErrorKind = proto.BMCErrExpired
	h.must(r)
	if n = node1(h); !n.Intents[0].Done || n.BMCStatus != nil && n.BMCStatus.State != proto.BMCUnverified && n.BMCStatus.State != proto.BMCOK {
		t.Fatalf("after an expired answer: intent %+v, status %+v", n.Intents[0], n.BMCStatus)
	}
}

// TestRackChangeEndsIntents: a node moved to another rack has its pending
// intents ended (the old rack's agents will not answer; the new rack's
// must not act on them); a BMC change during a pending manage keeps the
// manage.
func TestRackChangeEndsIntents(t *testing.T) {
	h := newHarness(t)
	bmcNode(h)
	h.must(NodeIntent{Ref: "n1", Intent: proto.Intent{Action: proto.ActionVerify, OnSuccess: "manage", Agent: "a1", At: t0}})
	pw := "changed"
	n := h.must(NodeUpdate{Ref: "n1", Patch: proto.NodePatch{BMC: &proto.BMCPatch{Password: &pw}}, Now: t0, Agent: "a1"}).(*proto.Node)
	if len(n.Intents) != 1 || n.Intents[0].OnSuccess != "manage" || n.Intents[0].Generation != 2 {
		t.Fatalf("after a BMC change during manage: %+v, want a new verify that still manages", n.Intents)
	}
	h.must(secondRack("r2"))
	h.must(NodeIntent{Ref: "n1", Intent: proto.Intent{Action: proto.ActionPower, Power: proto.PowerTargetOn, Agent: "a1", At: t0}})
	rk := "r2"
	n = h.must(NodeUpdate{Ref: "n1", Patch: proto.NodePatch{Rack: &rk}, Now: t0}).(*proto.Node)
	for _, in := range n.Intents {
		if !in.Done || !strings.Contains(in.Error, "moved from rack r1 to rack r2") {
			t.Errorf("intent %d after the move: done %v error %q", in.Generation, in.Done, in.Error)
		}
	}
}

// secondRack makes rack name (for moves).
func secondRack(name string) RackPut {
	return RackPut{Create: true, Rack: proto.Rack{Name: name, Subnet: "10.8.0.0/24"}}
}

// TestIntentAnsweredOnlyByItsAgent: another agent of the rack cannot
// answer (or end) an intent given to one agent.
func TestIntentAnsweredOnlyByItsAgent(t *testing.T) {
	h := newHarness(t)
	bmcNode(h)
	h.must(NodeIntent{Ref: "n1", Intent: proto.Intent{Action: proto.ActionPower, Power: proto.PowerTargetOff, Agent: "a1", At: t0}})
	r := bmcReport(1, proto.ActionPower, "", t0.Add(time.Second))
	r.Reports[0].Agent = "a2"
	res := h.must(r).(*AgentReportsResult)
	if len(res.Rejected) != 1 {
		t.Fatalf("a2's answer to a1's intent: %+v, want rejected", res)
	}
	if n := node1(h); n.Intents[0].Done {
		t.Fatal("another agent's answer ended the intent")
	}
	h.must(bmcReport(1, proto.ActionPower, "", t0.Add(2*time.Second)))
	if n := node1(h); !n.Intents[0].Done {
		t.Fatal("its own agent's answer did not end the intent")
	}
}
