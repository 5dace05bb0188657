package drills

import (
	"errors"
	"fmt"
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
// round asks for power on (PUT /v1/nodes/{id}/power) with the machine
// off, SIGKILLs the leader at a chosen moment, waits for a new leader
// and for the intent's result (GET node shows it done, without error),
// and checks that the BMC performed exactly one power-on. The moments:
// right after the PUT's 202 (the agent may not have the intent yet), and
// while the action is in flight (the BMC has performed it but its answer
// is still on the way, so the agent's result reaches only a new leader).
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
		name string
		// killInFlight: kill when the action reaches the machine;
		// otherwise right after the PUT's answer.
		killInFlight bool
	}
	rounds := []round{{"kill after 202", false}, {"kill in flight", true}, {"kill in flight", true}, {"kill after 202", false}}
	start := time.Now()
	for i, r := range rounds {
		machine.Set(false) // off behind the BMC's back: each round's power-on is a real change
		drain(machine.Acting)
		li := leaderOf(t, procs, token)
		leader := procs[li].Client(token)
		// A new leader refuses (503) until the rack's agent has called it;
		// the request id makes the retry safe.
		var acc proto.IntentAccepted
		req := proto.PowerRequest{Target: proto.PowerTargetOn, RequestID: fmt.Sprintf("drill-round-%d", i+1)}
		testkit.Until(t, 30*time.Second, fmt.Sprintf("round %d: PUT power on accepted by leader %s", i+1, procs[li].ID), func() error {
			_, err := leader.Do(Ctx(t, 10*time.Second), "PUT", "/v1/nodes/"+n.UUID+"/power", req, &acc)
			var ae *apiclient.Error
			if err != nil && (!errors.As(err, &ae) || ae.Status != 503) {
				t.Fatalf("round %d (%s): PUT power on through leader %s: %v", i+1, r.name, procs[li].ID, err)
			}
			return err
		})
		if r.killInFlight {
			select {
			case act := <-machine.Acting:
				if act != ipmisim.ActionOn {
					t.Fatalf("round %d: the machine was asked %q, want on", i+1, act)
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("round %d: the power-on did not reach the BMC within 30 s of the PUT", i+1)
			}
		}
		killed := time.Now()
		procs[li].Kill()

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
		if got.Error != "" {
			t.Errorf("round %d (%s): intent %d done with error %q, want none", i+1, r.name, got.Generation, got.Error)
		}
		if on := countOf(machine.Calls(), ipmisim.ActionOn); on != i+1 {
			t.Fatalf("round %d (%s): the BMC performed %d power-ons in all, want %d (one per round): %v", i+1, r.name, on, i+1, machine.Calls())
		}
		t.Logf("round %d (%s): leader %s killed; intent %d done %s later", i+1, r.name, procs[li].ID, got.Generation,
			time.Since(killed).Round(time.Millisecond))
		procs[li].Start(t)
		WaitFor(t, 30*time.Second, procs[li].ID+" back as a voter", func() bool {
			st, err := procs[li].Client(token).Status(Ctx(t, 2*time.Second))
			return err == nil && st.LeaderID != "" && len(st.Peers) == 3
		})
	}
	// Nothing more is on the way: the agent's outbox is empty, and the
	// machine saw exactly one power-on per round and nothing else.
	WaitFor(t, 30*time.Second, "the agent's outbox drained", func() bool {
		v, ok := Metric(agentHTTP, "metalfleet_agent_outbox_reports")
		return ok && v == 0
	})
	if calls := machine.Calls(); len(calls) != len(rounds) || countOf(calls, ipmisim.ActionOn) != len(rounds) {
		t.Errorf("the BMC performed %v over %d rounds; want exactly one power-on per round", calls, len(rounds))
	}
	if b.Actions(ipmisim.ActionOn) != len(rounds) {
		t.Errorf("the BMC counted %d power-ons, want %d", b.Actions(ipmisim.ActionOn), len(rounds))
	}
	t.Logf("%d rounds in %s", len(rounds), time.Since(start).Round(time.Millisecond))
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
