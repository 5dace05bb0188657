package power

import (
	"strings"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/ops/testkit"
	"github.com/metalfleet/metalfleet/proto"
	"github.com/metalfleet/metalfleet/rackagent/bmc/ipmisim"
)

// TestWithIPMIOverUDP drives a simulated BMC speaking real IPMI v2.0
// RMCP+ over loopback UDP with the ipmi driver: verify, reboot of a node
// that is on (one hard reset), off; power sync picks up a button press,
// reports a BMC that stops answering as unknown, and its return.
func TestWithIPMIOverUDP(t *testing.T) {
	mp := ipmisim.NewMemPower(true)
	sim, err := ipmisim.New(ipmisim.Config{Username: "admin", Password: "pw-1", Power: mp})
	if err != nil {
		t.Fatal(err)
	}
	if err := sim.Start(); err != nil {
		t.Fatal(err)
	}
	defer sim.Close()
	h := newHarness(t, Config{SyncInterval: time.Minute, CallTimeout: 2 * time.Second, Tries: 1})
	n := proto.BootNode{UUID: "n1", BMC: &proto.BootBMC{BMC: proto.BMC{Driver: proto.DriverIPMI, Address: sim.Host(), Port: sim.Port(),
		Username: "admin", Password: "pw-1"}}}
	n.BMC.Intents = []proto.Intent{{Generation: 1, Action: proto.ActionVerify, Agent: "a1"},
		powerIntent(2, proto.PowerTargetReboot), powerIntent(3, proto.PowerTargetOff)}
	h.src.set(n)
	rs := h.waitReports(proto.ReportBMC, 3, 0)
	if r := rs[0]; r.Error != "" || r.BMCInfo == nil || !strings.Contains(r.BMCInfo.Protocol, "lanplus") || r.PowerState != proto.PowerOn {
		t.Fatalf("verify: %+v (info %+v), want the identity over lanplus and power on", r, r.BMCInfo)
	}
	if r := rs[1]; r.Error != "" || r.PowerState != proto.PowerOn {
		t.Fatalf("reboot: %+v, want on", r)
	}
	// One hard reset, never off then on; then the off intent's off.
	for a, want := range map[ipmisim.Action]int{ipmisim.ActionReset: 1, ipmisim.ActionOn: 0, ipmisim.ActionCycle: 0, ipmisim.ActionOff: 1} {
		if got := sim.Actions(a); got != want {
			t.Errorf("the BMC performed %s %d times, want %d", a, got, want)
		}
	}
	if r := rs[2]; r.Error != "" || r.PowerState != proto.PowerOff || sim.PowerState() {
		t.Fatalf("off: %+v, machine on %v; want off", r, sim.PowerState())
	}

	round := func(k int64) []proto.AgentReport {
		t.Helper()
		testkit.Eventually(t, 20*time.Second, "a power sync round", func() bool {
			h.clk.Advance(5 * time.Second)
			return h.m.Stats().SyncRounds >= k
		})
		return h.rep.of(proto.ReportPower)
	}
	if rs := round(1); len(rs) != 0 {
		t.Fatalf("power sync reported %+v with nothing changed since the off intent", rs)
	}
	mp.Set(true) // the button
	if rs := round(2); len(rs) != 1 || rs[0].PowerState != proto.PowerOn {
		t.Fatalf("power sync reported %+v after the button, want on", rs)
	}
	sim.SetDrop(true)
	rs = round(3)
	if len(rs) != 2 || rs[1].PowerState != proto.PowerUnknown || rs[1].ErrorKind == "" || rs[1].Error == "" {
		t.Fatalf("power sync reported %+v with the BMC silent, want unknown with the error", rs)
	}
	if k := rs[1].ErrorKind; k != proto.BMCErrTimeout && k != proto.BMCErrUnreachable {
		t.Errorf("a silent BMC's error kind %q, want timeout or unreachable", k)
	}
	sim.SetDrop(false)
	testkit.Eventually(t, 30*time.Second, "power on again", func() bool {
		h.clk.Advance(10 * time.Second)
		rs := h.rep.of(proto.ReportPower)
		return len(rs) == 3 && rs[2].PowerState == proto.PowerOn && rs[2].Error == ""
	})
}
