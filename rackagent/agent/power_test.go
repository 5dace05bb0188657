package agent_test

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/coordinator/apiclient"
	"github.com/metalfleet/metalfleet/coordinator/coordtest"
	"github.com/metalfleet/metalfleet/ops/testkit"
	"github.com/metalfleet/metalfleet/proto"
	"github.com/metalfleet/metalfleet/rackagent/agent"
	"github.com/metalfleet/metalfleet/rackagent/bmc"
)

// startPowerAgent starts agent name of rack r1 with a fast power sync.
func startPowerAgent(t *testing.T, coords []string, token, name, dataDir string) (*agent.Agent, func()) {
	t.Helper()
	a, err := agent.New(agent.Config{
		Name: name, Rack: "r1", DataDir: dataDir, Coordinators: coords, Token: token,
		DHCPAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", AdvertiseIP: netip.MustParseAddr("127.0.0.1"),
		PowerSyncInterval: 100 * time.Millisecond, Logger: coordtest.Logger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	return a, runAgent(t, a)
}

// setPower asks for a power target and waits for the result, retrying
// while the coordinator has not heard of the rack's agent yet.
func setPower(t *testing.T, c *apiclient.Client, node string, target proto.PowerTarget) *proto.IntentAccepted {
	t.Helper()
	var out *proto.IntentAccepted
	testkit.Until(t, 20*time.Second, "power "+string(target)+" of "+node, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		r, err := c.SetPower(ctx, node, proto.PowerRequest{Target: target}, 10*time.Second)
		if err != nil {
			return err
		}
		out = r
		return nil
	})
	return out
}

func nodeOf(t *testing.T, c *apiclient.Client, id string) *proto.Node {
	t.Helper()
	n, err := c.Node(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestPowerIntentsThroughTheCoordinator: an intent made through the API
// reaches the rack agent in its boot state, is executed once (a restart
// of the agent and the state's re-delivery do not repeat it), and the
// node's intent is done with the fake BMC's power changed; power sync
// records a change made at the BMC; manage verifies the BMC for real.
func TestPowerIntentsThroughTheCoordinator(t *testing.T) {
	f := newFleet(t)
	ctx := context.Background()
	addr := fmt.Sprintf("%s-%d.agent-test.invalid", strings.ToLower(t.Name()), time.Now().UnixNano())
	fb := bmc.FakeFor(addr)
	fb.SetPassword("pw")
	n, err := f.admin.CreateNode(ctx, proto.NodeCreate{Name: "p1", MACs: []string{"52:54:00:00:00:09"}, Rack: "r1",
		BMC: proto.BMC{Driver: proto.DriverFake, Address: addr, Username: "admin", Password: "pw"}})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	a, stop := startPowerAgent(t, []string{f.coordAddr}, f.agentToken, "a1", dir)
	coordtest.WaitFor(t, 10*time.Second, "agent synced", a.Boot().Synced)

	res := setPower(t, f.admin, n.UUID, proto.PowerTargetOn)
	if !res.Intent.Done || res.Intent.Error != "" || res.Intent.Agent != "a1" {
		t.Fatalf("power on: %+v, want done by a1 without error", res.Intent)
	}
	if fb.Power() != proto.PowerOn || !slices.Equal(fb.Actions(), []bmc.PowerAction{bmc.PowerOn}) {
		t.Fatalf("fake BMC power %s, actions %v; want on after one power on", fb.Power(), fb.Actions())
	}
	got := nodeOf(t, f.admin, n.UUID)
	if got.PowerState != proto.PowerOn || got.BMCStatus == nil || got.BMCStatus.State != proto.BMCOK {
		t.Fatalf("node power %s, bmc %+v; want on and ok", got.PowerState, got.BMCStatus)
	}

	// Restarted, the agent sees the rack's state again: nothing repeats.
	stop()
	a, _ = startPowerAgent(t, []string{f.coordAddr}, f.agentToken, "a1", dir)
	coordtest.WaitFor(t, 10*time.Second, "agent synced again", a.Boot().Synced)
	res = setPower(t, f.admin, n.UUID, proto.PowerTargetReboot)
	if !res.Intent.Done || res.Intent.Error != "" {
		t.Fatalf("reboot: %+v, want done without error", res.Intent)
	}
	if want := []bmc.PowerAction{bmc.PowerOn, bmc.PowerReset}; !slices.Equal(fb.Actions(), want) {
		t.Fatalf("fake BMC actions %v, want %v (on once, then a hard reset)", fb.Actions(), want)
	}

	// A change behind Metalfleet's back is recorded by power sync.
	fb.SetPower(proto.PowerOff)
	coordtest.WaitFor(t, 10*time.Second, "power sync records off", func() bool { return nodeOf(t, f.admin, n.UUID).PowerState == proto.PowerOff })
	// A BMC that stops answering: power unknown, BMC unreachable.
	fb.Fail(proto.BMCErrUnreachable)
	coordtest.WaitFor(t, 20*time.Second, "power sync records unknown", func() bool {
		n := nodeOf(t, f.admin, n.UUID)
		return n.PowerState == proto.PowerUnknown && n.BMCStatus != nil && n.BMCStatus.State == proto.BMCUnreachable
	})
	fb.Fail("")
	coordtest.WaitFor(t, 10*time.Second, "power sync records off again", func() bool { return nodeOf(t, f.admin, n.UUID).PowerState == proto.PowerOff })
	if got := len(fb.Actions()); got != 2 {
		t.Errorf("%d power actions, want 2 (power sync never acts)", got)
	}
	st := a.Power().Stats()
	if st.Polls == 0 || st.PowerReports == 0 || st.Intents == 0 {
		t.Errorf("power stats %+v: want polls, power reports and intents", st)
	}
}

// TestManageVerifiesTheBMC: manage makes the node manageable only once
// the agent connected with its credentials; with a wrong password it
// stays enrolled with last_error saying why.
func TestManageVerifiesTheBMC(t *testing.T) {
	f := newFleet(t)
	ctx := context.Background()
	addr := fmt.Sprintf("%s-%d.agent-test.invalid", strings.ToLower(t.Name()), time.Now().UnixNano())
	bmc.FakeFor(addr).SetPassword("right-pw")
	yes := true
	n, err := f.admin.CreateNode(ctx, proto.NodeCreate{Name: "p1", MACs: []string{"52:54:00:00:00:09"}, Rack: "r1", Enrolled: &yes,
		BMC: proto.BMC{Driver: proto.DriverFake, Address: addr, Username: "admin", Password: "hunter2"}})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := startPowerAgent(t, []string{f.coordAddr}, f.agentToken, "a1", t.TempDir())
	coordtest.WaitFor(t, 10*time.Second, "agent synced", a.Boot().Synced)
	manage := func() *proto.Node {
		var out *proto.Node
		testkit.Until(t, 20*time.Second, "manage", func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			r, err := f.admin.ProvisionWait(ctx, n.UUID, "manage", 10*time.Second)
			out = r
			return err
		})
		return out
	}
	got := manage()
	coordtest.WaitFor(t, 10*time.Second, "the verification's result", func() bool {
		got = nodeOf(t, f.admin, n.UUID)
		return got.LastError != ""
	})
	if got.ProvisionState != proto.StateEnrolled || !strings.Contains(got.LastError, "authentication refused") || strings.Contains(got.LastError, "hunter2") {
		t.Fatalf("with a wrong password: state %s, last_error %q; want enrolled, authentication refused", got.ProvisionState, got.LastError)
	}
	if got.BMCStatus == nil || got.BMCStatus.State != proto.BMCAuthFailed {
		t.Fatalf("bmc status %+v, want auth-failed", got.BMCStatus)
	}
	right := "right-pw"
	if _, err := f.admin.Do(ctx, "PATCH", "/v1/nodes/"+n.UUID, proto.NodePatch{BMC: &proto.BMCPatch{Password: &right}}, nil); err != nil {
		t.Fatal(err)
	}
	got = manage()
	coordtest.WaitFor(t, 10*time.Second, "manageable", func() bool {
		got = nodeOf(t, f.admin, n.UUID)
		return got.ProvisionState == proto.StateManageable
	})
	if got.BMCStatus == nil || got.BMCStatus.Info == nil || got.BMCStatus.Info.Vendor != "Metalfleet" {
		t.Errorf("bmc status %+v, want the fake's identity recorded", got.BMCStatus)
	}
}
