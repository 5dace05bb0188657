package httpapi_test

// Tests of out-of-band control through the API: power and boot-device
// intents, manage verifying the BMC, ?wait=, history; the rack agent's
// part is played by coordtest.StandInAgent (the real agent's is tested in
// rackagent).

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/cluster/clock"
	"github.com/metalfleet/metalfleet/coordinator/coordtest"
	"github.com/metalfleet/metalfleet/ops/testkit"
	"github.com/metalfleet/metalfleet/proto"
)

const bmcRack = "bmc-r"

// standIn returns a stand-in agent of rack bmc-r (creating the rack),
// known to the coordinator from one boot-state poll.
func (e *apiEnv) standIn(name string) *coordtest.StandInAgent {
	e.t.Helper()
	if _, ok := e.srv.Store().Rack(bmcRack); !ok {
		e.ok(http.StatusCreated, "POST", "/v1/racks", asAdmin, proto.Rack{Name: bmcRack, Subnet: "10.77.0.0/24", Gateway: "10.77.0.1",
			BootServer: "10.77.0.2", PoolStart: "10.77.0.100", PoolEnd: "10.77.0.199"}, nil)
	}
	a := coordtest.NewStandInAgent(e.t, e.base[len("http://"):], e.createToken(proto.RoleAgent, bmcRack).Secret, bmcRack, name)
	a.Poll()
	return a
}

// manageViaAgent makes node ref manageable as it happens in a fleet: the
// node is put in rack bmc-r with a fake BMC when it has none, the rack's
// agent is known, the operator asks for manage (the answer goes to
// onAnswer), and the agent answers the verification.
func (e *apiEnv) manageViaAgent(ref string, onAnswer ...func(reply)) *proto.Node {
	e.t.Helper()
	a := e.standIn("agent-m")
	n, _ := e.srv.Store().Node(ref)
	p := proto.NodePatch{}
	if n.Rack != bmcRack {
		rk := bmcRack
		p.Rack = &rk
	}
	if n.BMC.Driver == "" || n.BMC.Address == "" {
		d, addr := proto.DriverFake, "fake-"+n.UUID
		p.BMC = &proto.BMCPatch{Driver: &d, Address: &addr}
	}
	if p.Rack != nil || p.BMC != nil {
		e.ok(200, "PATCH", "/v1/nodes/"+ref, asAdmin, p, nil)
	}
	r := e.ok(http.StatusAccepted, "POST", "/v1/nodes/"+ref+"/provision", asAdmin, proto.ProvisionRequest{Target: "manage"}, nil)
	for _, f := range onAnswer {
		f(r)
	}
	if got := a.Answer(""); got == 0 {
		e.t.Fatalf("manage %s: no intent reached the agent", ref)
	}
	n, _ = e.srv.Store().Node(ref)
	return n
}

// TestAPIPowerIntents: power and boot-device requests become intents for
// the rack's agent (202); ?wait= answers with the result; a retry with
// the same request id records nothing new; history tells the story.
func TestAPIPowerIntents(t *testing.T) {
	e := startAPI(t)
	var n proto.Node
	e.ok(http.StatusCreated, "POST", "/v1/nodes", asAdmin, proto.NodeCreate{Name: "p1", MACs: []string{mac(1)}}, &n)

	e.runErrCases([]errCase{
		{name: "power without a BMC", method: "PUT", path: "/v1/nodes/p1/power", body: `{"target":"on"}`,
			status: 409, code: proto.CodeWrongState, msg: "node p1 has no BMC"},
		{name: "bad target", method: "PUT", path: "/v1/nodes/p1/power", body: `{"target":"up"}`,
			status: 400, code: proto.CodeInvalid, msg: `target "up": want on, off, soft-off or reboot`},
		{name: "bad device", method: "PUT", path: "/v1/nodes/p1/boot-device", body: `{"device":"floppy"}`,
			status: 400, code: proto.CodeInvalid, msg: `device "floppy": want pxe or disk`},
		{name: "unknown node", method: "PUT", path: "/v1/nodes/nosuch/power", body: `{"target":"on"}`,
			status: 404, code: proto.CodeNotFound, msg: `node "nosuch" not found`},
		{name: "bad wait", method: "PUT", path: "/v1/nodes/p1/power?wait=soon", body: `{"target":"on"}`,
			status: 400, code: proto.CodeInvalid, msg: `wait "soon"`},
		{name: "redfish address not a URL", method: "PATCH", path: "/v1/nodes/p1", body: `{"bmc":{"driver":"redfish","address":"10.0.0.1"}}`,
			status: 400, code: proto.CodeInvalid, msg: "a redfish BMC's address is a URL"},
		{name: "bad CA", method: "PATCH", path: "/v1/nodes/p1", body: `{"bmc":{"ca_cert":"not pem"}}`,
			status: 400, code: proto.CodeInvalid, msg: "bmc.ca_cert: no PEM certificate"},
	})
	// A rack with a BMC but no agent heard of: 503 naming the rack.
	e.ok(http.StatusCreated, "POST", "/v1/racks", asAdmin, proto.Rack{Name: "lonely", Subnet: "10.78.0.0/24"}, nil)
	e.ok(200, "PATCH", "/v1/nodes/p1", asAdmin, `{"rack":"lonely","bmc":{"driver":"fake","address":"b1"}}`, nil)
	e.runErrCases([]errCase{{name: "no agent", method: "PUT", path: "/v1/nodes/p1/power", body: `{"target":"on"}`,
		status: 503, code: proto.CodeUnavailable, msg: "no rack agent of rack lonely"}})

	n = *e.manageViaAgent("p1")
	if n.ProvisionState != proto.StateManageable || n.BMCStatus == nil || n.BMCStatus.State != proto.BMCOK || n.BMCStatus.Info.Vendor != "Stand-in" {
		t.Fatalf("after manage: %s %+v", n.ProvisionState, n.BMCStatus)
	}
	a := e.standIn("agent-m")

	// 202 and the intent; a retry with the same id is the same intent.
	var acc, again proto.IntentAccepted
	e.ok(http.StatusAccepted, "PUT", "/v1/nodes/p1/power", asAdmin, proto.PowerRequest{Target: proto.PowerTargetOn, RequestID: "req-1"}, &acc)
	if acc.Intent.Action != proto.ActionPower || acc.Intent.Agent != "agent-m" || acc.Intent.Done || acc.Intent.Generation == 0 {
		t.Fatalf("power on: %+v", acc)
	}
	e.ok(http.StatusAccepted, "PUT", "/v1/nodes/p1/power", asAdmin, proto.PowerRequest{Target: proto.PowerTargetOn, RequestID: "req-1"}, &again)
	if again.Intent.Generation != acc.Intent.Generation {
		t.Fatalf("a retry made generation %d, want %d again", again.Intent.Generation, acc.Intent.Generation)
	}
	a.Answer("") // generation 1 (req-1): done
	// ?wait= holds the answer until the agent's result is in: a new
	// request, recorded, then answered while the call waits.
	done := make(chan reply, 1)
	go func() {
		done <- e.call("PUT", "/v1/nodes/p1/power?wait=20s", asAdmin, proto.PowerRequest{Target: proto.PowerTargetReboot, RequestID: "req-2"})
	}()
	testkit.Eventually(t, 10*time.Second, "the reboot recorded", func() bool {
		n, _ := e.srv.Store().Node("p1")
		return n != nil && slices.ContainsFunc(n.Intents, func(in proto.Intent) bool { return in.Request == "req-2" })
	})
	select {
	case r := <-done:
		t.Fatalf("?wait=20s answered %d before the agent's result: %s", r.Status, r.Body)
	default:
	}
	if a.Answer("") != 1 {
		t.Fatal("the reboot did not reach the agent")
	}
	var r reply
	select {
	case r = <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("?wait= did not return after the agent answered")
	}
	var got proto.IntentAccepted
	if r.Status != 200 || json.Unmarshal(r.Body, &got) != nil || !got.Intent.Done || got.Intent.Error != "" || got.Intent.Power != proto.PowerTargetReboot {
		t.Fatalf("waited answer: %d %s", r.Status, r.Body)
	}
	if sn, _ := e.srv.Store().Node("p1"); sn.PowerState != proto.PowerOn {
		t.Fatalf("power after the result: %s", sn.PowerState)
	}

	// A boot-device intent, answered with a failure: last_error says so.
	e.ok(http.StatusAccepted, "PUT", "/v1/nodes/p1/boot-device", asAdmin, proto.BootDeviceRequest{BootDeviceSpec: proto.BootDeviceSpec{Device: proto.BootDevicePXE}}, &acc)
	a.Answer("authentication refused: wrong password")
	sn, _ := e.srv.Store().Node("p1")
	if !strings.Contains(sn.LastError, "boot device pxe") || !strings.Contains(sn.LastError, "wrong password") || sn.BMCStatus.State != proto.BMCAuthFailed {
		t.Fatalf("after a failed boot-device: last_error %q status %+v", sn.LastError, sn.BMCStatus)
	}

	var h []proto.HistoryEvent
	e.ok(200, "GET", "/v1/nodes/p1/history", asAdmin, nil, &h)
	text := fmt.Sprint(h)
	for _, want := range []string{"BMC verification, then manage", "power on requested", "power on: done", "boot device pxe (once) failed"} {
		if !strings.Contains(text, want) {
			t.Errorf("history lacks %q: %s", want, text)
		}
	}
	// The rack's agent is given the password; an admin reading the boot
	// state is not.
	e.ok(200, "PATCH", "/v1/nodes/p1", asAdmin, `{"bmc":{"password":"pw-p1"}}`, nil)
	for _, bn := range a.Poll().Nodes {
		if bn.UUID == n.UUID && (bn.BMC == nil || bn.BMC.Address != "b1" || bn.BMC.Password != "pw-p1") {
			t.Errorf("agent's boot state BMC of p1: %+v", bn.BMC)
		}
	}
	r = e.ok(200, "GET", "/v1/agent/bootstate?rack="+bmcRack, asAdmin, nil, nil)
	if strings.Contains(string(r.Body), "pw-p1") || !strings.Contains(string(r.Body), `"password_set": true`) {
		t.Errorf("an admin's boot state shows the BMC password (or not password_set): %s", r.Body)
	}
}

// TestAPIManageWrongPassword: a failed verification leaves the node
// enrolled with last_error naming the failure.
func TestAPIManageWrongPassword(t *testing.T) {
	e := startAPI(t)
	a := e.standIn("agent-w")
	e.ok(http.StatusCreated, "POST", "/v1/nodes", asAdmin, proto.NodeCreate{Name: "w1", MACs: []string{mac(1)}, Rack: bmcRack,
		BMC: proto.BMC{Driver: proto.DriverIPMI, Address: "10.77.1.1", Username: "admin", Password: "nope"}}, nil)
	var n proto.Node
	e.ok(http.StatusAccepted, "POST", "/v1/nodes/w1/provision", asAdmin, proto.ProvisionRequest{Target: "manage"}, &n)
	if n.ProvisionState != proto.StateEnrolled {
		t.Fatalf("right after manage: %s, want enrolled until verified", n.ProvisionState)
	}
	a.Answer("bmc connect: authentication refused: RAKP 2 HMAC is invalid")
	e.ok(200, "GET", "/v1/nodes/w1", asAdmin, nil, &n)
	if n.ProvisionState != proto.StateEnrolled || !strings.Contains(n.LastError, "BMC verification failed") || !strings.Contains(n.LastError, "authentication refused") {
		t.Fatalf("after a failed verify: %s, last_error %q", n.ProvisionState, n.LastError)
	}
}

// TestAPIIntentAgentMustBeAlive: an agent not heard of within AgentAlive
// (2 minutes; agents poll at least every minute) is not given intents: a
// request then is a 503, not an intent that waits for a dead agent.
func TestAPIIntentAgentMustBeAlive(t *testing.T) {
	clk := clock.NewFake(time.Now().UTC())
	e := startAPIClock(t, clk)
	a := e.standIn("agent-a")
	e.ok(http.StatusCreated, "POST", "/v1/nodes", asAdmin, proto.NodeCreate{Name: "q1", MACs: []string{mac(1)}, Rack: bmcRack,
		BMC: proto.BMC{Driver: proto.DriverFake, Address: "bmc-q1"}}, nil)
	e.ok(http.StatusAccepted, "PUT", "/v1/nodes/q1/power", asAdmin, proto.PowerRequest{Target: proto.PowerTargetOn}, nil)
	clk.Advance(3 * time.Minute)
	e.runErrCases([]errCase{{name: "agent silent for 3 minutes", method: "PUT", path: "/v1/nodes/q1/power", body: `{"target":"off"}`,
		status: 503, code: proto.CodeUnavailable, msg: "no rack agent of rack " + bmcRack}})
	a.Poll()
	var acc proto.IntentAccepted
	e.ok(http.StatusAccepted, "PUT", "/v1/nodes/q1/power", asAdmin, proto.PowerRequest{Target: proto.PowerTargetOff}, &acc)
	if acc.Intent.Agent != "agent-a" {
		t.Fatalf("intent for %q, want agent-a", acc.Intent.Agent)
	}
}
