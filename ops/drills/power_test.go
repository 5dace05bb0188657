package drills

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/coordinator/apiclient"
	"github.com/metalfleet/metalfleet/ops/testkit"
	"github.com/metalfleet/metalfleet/proto"
	"github.com/metalfleet/metalfleet/rackagent/bmc/ipmisim"
)

// TestLeaderKilledDuringPowerIntent is the power drill on real processes:
// three coordinators, a rack agent, and a simulated IPMI BMC (RMCP+ over
// UDP in this process, slowed so that every answer takes 400 ms). Each
// round asks for a power change (PUT /v1/nodes/{id}/power, with a
// request id), SIGKILLs the leader at a chosen moment, waits for a new
// leader and for the intent's result (GET node shows it done), and
// checks what the BMC performed. The moments: right after the PUT's 202
// (the agent may not have the intent yet), and while the action is in
// flight (the BMC has performed it but its answer is still on the way,
// so the agent's result reaches only a new leader).
//
// The first rounds power on a machine that is off: one power-on each.
// Power on is idempotent, so the hard case follows: reboot of a machine
// that is on, which the agent does as one IPMI hard reset (never off
// then on), with the reset's answer 2.5 s later still (2.9 s in all),
// past go-ipmi's 2 s resend interval. The BMC must see exactly one reset
// per round and no power-off or power-on; a reset whose answer came after
// the driver's one wait is reported as timed out, never sent again. One
// reboot round is a client's retry: the same PUT with the same request
// id, sent again to the new leader, names the same intent (same
// generation) and the BMC acts once.
//
// The killed server restarts before the next round. At the end, with
// the agent's outbox drained, the BMC has seen one action per round and
// no other.
func TestLeaderKilledDuringPowerIntent(t *testing.T) {
	if testing.Short() {
		t.Skip("starts coordinator and agent processes")
	}
	bin := Binary(t)
	procs, token := cluster3(t, bin)
	all := apiclient.New(Addrs(procs), token)
	agentToken := RackForCluster(t, all, "r1")

	machine := NewCountingPower()
	// Late past go-ipmi's 2 s resend interval: a client that resent the
	// reset would make the BMC reset twice.
	const resetLate = 2500 * time.Millisecond
	machine.SetLate(ipmisim.ActionReset, resetLate)
	b, err := ipmisim.New(ipmisim.Config{Username: "admin", Password: "drill-pw", Power: machine, Slow: 400 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })

	agentHTTP := FreePort(t)
	a := NewAgentProc(t, bin, "a1", "--rack", "r1", "--coordinator", Addrs(procs), "--token-file", agentToken,
		"--dhcp-addr", freeUDP(t), "--tftp-addr", "", "--http-addr", agentHTTP, "--mgmt-addr", FreePort(t),
		"--advertise-ip", "127.0.0.1", "--power-sync-interval", "0")
	a.Start(t)

	n, err := all.CreateNode(Ctx(t, 10*time.Second), proto.NodeCreate{Name: "p1", MACs: []string{mac(1)}, Rack: "r1",
		BMC: proto.BMC{Driver: proto.DriverIPMI, Address: b.Host(), Port: b.Port(), Username: "admin", Password: "drill-pw"}})
	if err != nil {
		t.Fatalf("create node with a BMC: %v", err)
	}

	type round struct {
		name   string
		target proto.PowerTarget
		// killInFlight: kill when the action reaches the machine;
		// otherwise right after the PUT's answer.
		killInFlight bool
		// resend: send the same PUT (same request id) again to the new
		// leader, as a client that lost the answer does.
		resend bool
	}
	rounds := []round{
		{"on, kill after 202", proto.PowerTargetOn, false, false},
		{"on, kill in flight", proto.PowerTargetOn, true, false},
		{"on, kill in flight", proto.PowerTargetOn, true, false},
		{"on, kill after 202", proto.PowerTargetOn, false, false},
		{"reboot, late reset, kill in flight", proto.PowerTargetReboot, true, false},
		{"reboot, late reset, kill in flight", proto.PowerTargetReboot, true, false},
		{"reboot, late reset, kill after 202, PUT again", proto.PowerTargetReboot, false, true},
	}
	// What each round's target makes the BMC do to this machine.
	want := map[proto.PowerTarget]ipmisim.Action{proto.PowerTargetOn: ipmisim.ActionOn, proto.PowerTargetReboot: ipmisim.ActionReset}
	var wantCalls []ipmisim.Action
	timedOut := 0
	start := time.Now()
	for i, r := range rounds {
		act := want[r.target]
		// Off before a power-on, on before a reboot, behind the BMC's
		// back: each round's action is a real change, and a reboot is a
		// reset.
		machine.Set(r.target == proto.PowerTargetReboot)
		drain(machine.Acting)
		before := len(machine.Calls())
		li := leaderOf(t, procs, token)
		req := proto.PowerRequest{Target: r.target, RequestID: fmt.Sprintf("drill-round-%d", i+1)}
		acc := putPower(t, procs, token, n.UUID, req, fmt.Sprintf("round %d (%s)", i+1, r.name))
		if r.killInFlight {
			select {
			case got := <-machine.Acting:
				if got != act {
					t.Fatalf("round %d (%s): the machine was asked %q, want %q", i+1, r.name, got, act)
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("round %d (%s): the %s did not reach the BMC within 30 s of the PUT", i+1, r.name, act)
			}
		}
		killed := time.Now()
		procs[li].Kill()
		if r.resend {
			again := putPower(t, procs, token, n.UUID, req, fmt.Sprintf("round %d (%s): the same PUT again", i+1, r.name))
			if again.Intent.Generation != acc.Intent.Generation {
				t.Fatalf("round %d (%s): the PUT sent again with request id %q to the new leader made intent %d (%+v); the first was %d (%+v): want the same",
					i+1, r.name, req.RequestID, again.Intent.Generation, again.Intent, acc.Intent.Generation, acc.Intent)
			}
		}

		var got proto.Intent
		testkit.Until(t, 60*time.Second, fmt.Sprintf("round %d: intent %d done after leader %s was killed", i+1, acc.Intent.Generation, procs[li].ID), func() error {
			in, err := Intent(Ctx(t, 5*time.Second), all, n.UUID, acc.Intent.Generation)
			if err != nil {
				var ae *apiclient.Error
				if errors.As(err, &ae) && ae.Status != 503 && ae.Status != 504 {
					t.Fatalf("round %d: reading the node: %v", i+1, err)
				}
				return err
			}
			if !in.Done {
				return fmt.Errorf("intent %d not done yet: %+v", in.Generation, in)
			}
			got = in
			return nil
		})
		if got.Agent != "a1" {
			t.Errorf("round %d: intent %d is for agent %q, want a1", i+1, got.Generation, got.Agent)
		}
		switch {
		case got.Error == "":
		case r.target == proto.PowerTargetReboot && strings.Contains(got.Error, "timed out"):
			timedOut++ // the reset's answer came after the driver's wait
		default:
			t.Errorf("round %d (%s): intent %d done with error %q, want none (or, for a reset answered late, timed out)", i+1, r.name, got.Generation, got.Error)
		}
		wantCalls = append(wantCalls, act)
		// The BMC counts an action once it has answered it: a late
		// reset's answer may come after the intent is done.
		WaitFor(t, 15*time.Second, fmt.Sprintf("round %d: the BMC answered the %s", i+1, act), func() bool {
			return b.Actions(act) >= countOf(wantCalls, act)
		})
		if calls := machine.Calls()[before:]; len(calls) != 1 || calls[0] != act {
			t.Fatalf("round %d (%s): the BMC performed %v in this round, want exactly one %s; all so far: %v", i+1, r.name, calls, act, machine.Calls())
		}
		t.Logf("round %d (%s): leader %s killed; intent %d done %s later (error %q)", i+1, r.name, procs[li].ID, got.Generation,
			time.Since(killed).Round(time.Millisecond), got.Error)
		procs[li].Start(t)
		WaitFor(t, 30*time.Second, procs[li].ID+" back as a voter", func() bool {
			st, err := procs[li].Client(token).Status(Ctx(t, 2*time.Second))
			return err == nil && st.LeaderID != "" && len(st.Peers) == 3
		})
	}
	// Nothing more is on the way: the agent's outbox is empty, and the
	// machine saw exactly one action per round and nothing else.
	WaitFor(t, 30*time.Second, "the agent's outbox drained", func() bool {
		v, ok := Metric(agentHTTP, "metalfleet_agent_outbox_reports")
		return ok && v == 0
	})
	if calls := machine.Calls(); !slices.Equal(calls, wantCalls) {
		t.Errorf("the BMC performed %v over %d rounds; want exactly %v (one action per round)", calls, len(rounds), wantCalls)
	}
	for _, a := range []ipmisim.Action{ipmisim.ActionOn, ipmisim.ActionReset, ipmisim.ActionOff, ipmisim.ActionCycle, ipmisim.ActionSoftOff} {
		if got, w := b.Actions(a), countOf(wantCalls, a); got != w {
			t.Errorf("the BMC counted %d %s actions, want %d", got, a, w)
		}
	}
	// Every late reset outlived the driver's one wait: if none was
	// reported timed out, the drill did not test what it claims.
	if timedOut == 0 {
		t.Errorf("no reboot ended timed out although each reset was answered %s late: the late answer was not exercised", resetLate)
	}
	t.Logf("%d rounds in %s (%d resets reported timed out, none sent twice)", len(rounds), time.Since(start).Round(time.Millisecond), timedOut)
}

// putPower sends req to the leader among procs until one accepts it (a
// new leader refuses with 503 until the rack's agent has called it), for
// at most 30 s, and returns its answer.
func putPower(t *testing.T, procs []*Proc, token, node string, req proto.PowerRequest, what string) proto.IntentAccepted {
	t.Helper()
	var acc proto.IntentAccepted
	tries := 0
	testkit.Until(t, 30*time.Second, what+": PUT power "+string(req.Target)+" accepted by a leader", func() error {
		tries++
		if tries > 200 {
			t.Fatalf("%s: PUT power %s not accepted after 200 tries", what, req.Target)
		}
		li := leaderOf(t, procs, token)
		_, err := procs[li].Client(token).Do(Ctx(t, 10*time.Second), "PUT", "/v1/nodes/"+node+"/power", req, &acc)
		var ae *apiclient.Error
		if err != nil && (!errors.As(err, &ae) || ae.Status != 503) {
			t.Fatalf("%s: PUT power %s through leader %s: %v", what, req.Target, procs[li].ID, err)
		}
		return err
	})
	return acc
}

func countOf(calls []ipmisim.Action, a ipmisim.Action) int {
	n := 0
	for _, c := range calls {
		if c == a {
			n++
		}
	}
	return n
}

func drain(c chan ipmisim.Action) {
	for {
		select {
		case <-c:
		default:
			return
		}
	}
}
