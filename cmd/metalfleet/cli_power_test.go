package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/coordinator/coordtest"
	"github.com/metalfleet/metalfleet/ops/testkit"
	"github.com/metalfleet/metalfleet/proto"
)

// standIn makes rack "pr" (if missing) and a stand-in agent of it known to
// the coordinator (coordtest.StandInAgent: the coordinator-only stand-in
// for a rack agent that answers intents).
func (c *cli) standIn(name string) *coordtest.StandInAgent {
	c.t.Helper()
	if _, ok := c.srv.Store().Rack("pr"); !ok {
		c.ok("rack", "create", "pr", "--subnet", "10.66.0.0/24", "--gateway", "10.66.0.1", "--boot-server", "10.66.0.2", "--pool", "10.66.0.100-10.66.0.199")
	}
	var tok proto.TokenCreated
	c.json(&tok, "token", "create", "--role", "agent", "--rack", "pr")
	a := coordtest.NewStandInAgent(c.t, c.addr, tok.Secret, "pr", name)
	a.Poll()
	return a
}

// TestNodePowerCommands: node power / boot-device / provision manage
// --wait / history, with a stand-in rack agent answering.
func TestNodePowerCommands(t *testing.T) {
	c := startCLI(t)
	a := c.standIn("agent-p")
	c.ok("node", "create", "--name", "p1", "--mac", "52:54:00:00:05:01", "--rack", "pr", "--bmc-driver", "fake", "--bmc-address", "bmc-p1")

	// The stand-in answers while commands wait.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	answered := make(chan struct{})
	go func() {
		defer close(answered)
		for ctx.Err() == nil {
			a.Answer("")
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	out := c.ok("node", "provision", "p1", "manage", "--wait", "20s")
	wantContains(t, "manage --wait", out, "is manageable")
	out = c.ok("node", "power", "p1", "on", "--wait")
	wantContains(t, "power on --wait", out, "power on done")
	if n := c.node("p1"); n.PowerState != proto.PowerOn {
		t.Errorf("power after node power on: %s", n.PowerState)
	}
	out = c.ok("node", "boot-device", "p1", "pxe", "--wait")
	wantContains(t, "boot-device", out, "boot device pxe (once) done")
	kv := parseKVOut(t, c.ok("node", "show", "p1"))
	if !strings.HasPrefix(kv["bmc.status"], "ok (Stand-in BMC") || !strings.Contains(kv["intents"], "power on (done") {
		t.Errorf("node show: bmc.status %q intents %q", kv["bmc.status"], kv["intents"])
	}
	cancel()
	<-answered

	// Without --wait: requested, not done.
	out = c.ok("node", "power", "p1", "reboot")
	wantContains(t, "power reboot", out, "power reboot requested", "agent agent-p")
	if a.Answer("") != 1 {
		t.Fatal("the reboot did not reach the agent")
	}
	// A failed action is a failed command naming the reason.
	go func() {
		tick := time.NewTicker(20 * time.Millisecond) // the stand-in's poll interval
		defer tick.Stop()
		for i := 0; i < 500 && a.Answer("authentication refused: bad password") == 0; i++ {
			<-tick.C
		}
	}()
	wantContains(t, "failed power", c.fail("node", "power", "p1", "off", "--wait"), "power off failed", "bad password")
	wantContains(t, "bad target", c.fail("node", "power", "p1", "sideways"), `"sideways": want on, off, soft-off or reboot`)
	c.ok("node", "create", "--name", "nobmc", "--mac", "52:54:00:00:05:02")
	wantContains(t, "no BMC", c.fail("node", "power", "nobmc", "on"), "has no BMC", "HTTP 409")

	out = c.ok("node", "history", "p1")
	wantContains(t, "history", out, "BMC verification, then manage", "power on requested", "power off failed")
}

// TestNodePowerWaitNeverReasserts: a `node power --wait` whose intent is
// replaced by another operator's before its result comes in fails saying
// so, and never sends its request again (which would re-assert the
// superseded target).
func TestNodePowerWaitNeverReasserts(t *testing.T) {
	c := startCLI(t)
	c.standIn("agent-r") // known, but it answers nothing here
	c.ok("node", "create", "--name", "r1", "--mac", "52:54:00:00:06:01", "--rack", "pr", "--bmc-driver", "fake", "--bmc-address", "bmc-r1")
	errc := make(chan error, 1)
	go func() {
		_, _, err := c.runAs(c.token, "node", "power", "r1", "on", "--wait", "--timeout", "20s")
		errc <- err
	}()
	testkit.Eventually(t, 10*time.Second, "the power on recorded", func() bool {
		n, _ := c.srv.Store().Node("r1")
		return n != nil && len(n.Intents) == 1 && n.Intents[0].Power == proto.PowerTargetOn
	})
	c.ok("node", "power", "r1", "off")
	var err error
	select {
	case err = <-errc:
	case <-time.After(20 * time.Second):
		t.Fatal("node power on --wait did not return after its intent was replaced")
	}
	if err == nil || !strings.Contains(err.Error(), "was replaced by a newer request") {
		t.Fatalf("node power on --wait: %v, want an error saying it was replaced", err)
	}
	n, _ := c.srv.Store().Node("r1")
	if n.BMCGeneration != 2 || len(n.Intents) != 1 || n.Intents[0].Power != proto.PowerTargetOff {
		t.Fatalf("generation %d, intents %+v: want exactly on (1) then off (2), the on never sent again", n.BMCGeneration, n.Intents)
	}
	wantContains(t, "bad timeout", c.fail("node", "power", "r1", "on", "--wait", "--timeout", "-1s"), "--timeout -1s: want a positive duration")
}
