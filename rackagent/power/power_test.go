package power

import (
	"bytes"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"go.etcd.io/bbolt"

	"github.com/metalfleet/metalfleet/ops/testkit"
	"github.com/metalfleet/metalfleet/proto"
	"github.com/metalfleet/metalfleet/rackagent/bmc"
)

func TestVerify(t *testing.T) {
	h := newHarness(t, Config{})
	a := addr(t, "bmc")
	bmc.FakeFor(a).SetPower(proto.PowerOn)
	h.src.set(node("n1", proto.DriverFake, a, proto.Intent{Generation: 1, Action: proto.ActionVerify, Agent: "a1"}))
	r := h.waitReports(proto.ReportBMC, 1, 0)[0]
	if r.Node != "n1" || r.Action != proto.ActionVerify || r.Generation != 1 || r.Error != "" || r.ErrorKind != "" {
		t.Fatalf("report = %+v, want a verify of n1 generation 1 without error", r)
	}
	if r.PowerState != proto.PowerOn || r.BMCInfo == nil || r.BMCInfo.Vendor != "Metalfleet" || r.BMCInfo.Model != "fake BMC" {
		t.Fatalf("report power %q info %+v, want on and the fake's identity", r.PowerState, r.BMCInfo)
	}
	if r.Time != t0 {
		t.Errorf("report time = %v, want the fake clock's %v", r.Time, t0)
	}
}

func TestVerifyWrongPasswordNotRetriedNorLogged(t *testing.T) {
	var logs bytes.Buffer
	h := newHarness(t, Config{Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	a := addr(t, "bmc")
	bmc.FakeFor(a).SetPassword("right")
	h.src.set(node("n1", "powertest", a, proto.Intent{Generation: 1, Action: proto.ActionVerify, Agent: "a1"}))
	r := h.waitReports(proto.ReportBMC, 1, 0)[0]
	if r.ErrorKind != proto.BMCErrAuth || !strings.Contains(r.Error, "authentication refused") || r.BMCInfo != nil {
		t.Fatalf("report = %+v, want an auth error and no identity", r)
	}
	if n := testBMCFor(a).get(func(b *testBMC) int { return b.calls }); n != 1 {
		t.Errorf("calls = %d, want 1 (an auth failure is not retried)", n)
	}
	h.stop()
	if strings.Contains(logs.String(), "secret") || strings.Contains(r.Error, "secret") {
		t.Errorf("the password appears in the logs or the report:\n%s\n%s", logs.String(), r.Error)
	}
	if !strings.Contains(logs.String(), "bmc intent failed") {
		t.Errorf("no log line for the failed intent:\n%s", logs.String())
	}
}

func TestPowerTargets(t *testing.T) {
	for _, tc := range []struct {
		target  proto.PowerTarget
		from    proto.PowerState
		actions []bmc.PowerAction
		want    proto.PowerState
	}{
		{proto.PowerTargetOn, proto.PowerOff, []bmc.PowerAction{bmc.PowerOn}, proto.PowerOn},
		{proto.PowerTargetOff, proto.PowerOn, []bmc.PowerAction{bmc.PowerOff}, proto.PowerOff},
		{proto.PowerTargetSoftOff, proto.PowerOn, []bmc.PowerAction{bmc.PowerSoftOff}, proto.PowerOff},
		// Reboot of a node that is on is a hard reset, never off then on.
		{proto.PowerTargetReboot, proto.PowerOn, []bmc.PowerAction{bmc.PowerReset}, proto.PowerOn},
		// Of a node that is off, it powers on.
		{proto.PowerTargetReboot, proto.PowerOff, []bmc.PowerAction{bmc.PowerOn}, proto.PowerOn},
	} {
		t.Run(string(tc.target)+"-from-"+string(tc.from), func(t *testing.T) {
			h := newHarness(t, Config{})
			a := addr(t, "bmc")
			fb := bmc.FakeFor(a)
			fb.SetPower(tc.from)
			h.src.set(node("n1", proto.DriverFake, a, powerIntent(7, tc.target)))
			r := h.waitReports(proto.ReportBMC, 1, 0)[0]
			if r.Error != "" || r.PowerState != tc.want || r.Generation != 7 || r.Action != proto.ActionPower {
				t.Fatalf("report = %+v, want generation 7 power %s without error", r, tc.want)
			}
			if got := fb.Actions(); !slices.Equal(got, tc.actions) {
				t.Errorf("BMC actions = %v, want %v", got, tc.actions)
			}
			if fb.Power() != tc.want {
				t.Errorf("BMC power = %s, want %s", fb.Power(), tc.want)
			}
		})
	}
}

func TestBootDevice(t *testing.T) {
	h := newHarness(t, Config{})
	a := addr(t, "bmc")
	spec := proto.BootDeviceSpec{Device: proto.BootDevicePXE, Mode: proto.BootModeUEFI}
	bad := proto.BootDeviceSpec{Device: "floppy"}
	h.src.set(node("n1", proto.DriverFake, a,
		proto.Intent{Generation: 1, Action: proto.ActionBootDevice, Boot: &spec, Agent: "a1"},
		proto.Intent{Generation: 2, Action: proto.ActionBootDevice, Boot: &bad, Agent: "a1"}))
	rs := h.waitReports(proto.ReportBMC, 2, 0)
	if rs[0].Generation != 1 || rs[0].Error != "" {
		t.Fatalf("first report = %+v, want generation 1 without error", rs[0])
	}
	if got := bmc.FakeFor(a).BootDevice(); got != spec {
		t.Errorf("boot device = %+v, want %+v", got, spec)
	}
	if rs[1].Generation != 2 || !strings.Contains(rs[1].Error, "floppy") {
		t.Errorf("second report = %+v, want generation 2 refused naming the device", rs[1])
	}
}

func TestOnlyThisAgentsPendingIntentsInOrder(t *testing.T) {
	h := newHarness(t, Config{})
	a := addr(t, "bmc")
	other := powerIntent(5, proto.PowerTargetOn)
	other.Agent = "a2" // a later generation held by another agent: not ours, and no wait
	done := powerIntent(2, proto.PowerTargetOn)
	done.Done = true
	// Delivered out of order: executed by generation.
	h.src.set(node("n1", proto.DriverFake, a, powerIntent(4, proto.PowerTargetOff), other, done, powerIntent(3, proto.PowerTargetOn)))
	rs := h.waitReports(proto.ReportBMC, 2, 0)
	if rs[0].Generation != 3 || rs[1].Generation != 4 {
		t.Fatalf("reports of generations %d, %d; want 3 then 4", rs[0].Generation, rs[1].Generation)
	}
	if got, want := bmc.FakeFor(a).Actions(), []bmc.PowerAction{bmc.PowerOn, bmc.PowerOff}; !slices.Equal(got, want) {
		t.Errorf("BMC actions = %v, want %v (only a1's intents that are not done)", got, want)
	}
}

func TestOncePerGenerationAcrossRedeliveryAndRestart(t *testing.T) {
	h := newHarness(t, Config{})
	a := addr(t, "bmc")
	fb := bmc.FakeFor(a)
	g1, g2, g3 := powerIntent(1, proto.PowerTargetOn), powerIntent(2, proto.PowerTargetOff), powerIntent(3, proto.PowerTargetOn)
	h.src.set(node("n1", proto.DriverFake, a, g1))
	h.waitReports(proto.ReportBMC, 1, 0)
	// The same state again (its result not applied yet), twice, then
	// with a new intent beside the old one.
	h.src.set(node("n1", proto.DriverFake, a, g1))
	h.src.set(node("n1", proto.DriverFake, a, g1))
	h.src.set(node("n1", proto.DriverFake, a, g1, g2))
	h.waitReports(proto.ReportBMC, 2, 0)
	// A restart with both still delivered as not done, then a third.
	h.stop()
	h.start()
	h.src.set(node("n1", proto.DriverFake, a, g1, g2))
	h.src.set(node("n1", proto.DriverFake, a, g1, g2, g3))
	rs := h.waitReports(proto.ReportBMC, 3, 0)
	var gens []uint64
	for _, r := range rs {
		gens = append(gens, r.Generation)
	}
	if !slices.Equal(gens, []uint64{1, 2, 3}) {
		t.Errorf("reported generations %v, want [1 2 3]", gens)
	}
	if got, want := fb.Actions(), []bmc.PowerAction{bmc.PowerOn, bmc.PowerOff, bmc.PowerOn}; !slices.Equal(got, want) {
		t.Errorf("BMC actions = %v, want %v (each generation once)", got, want)
	}
}

func TestRestartDuringActionIsNotActedOnAgain(t *testing.T) {
	h := newHarness(t, Config{})
	a := addr(t, "bmc")
	tb := testBMCFor(a)
	tb.mu.Lock()
	tb.stuck = true // the BMC accepts the action; the power never changes
	tb.mu.Unlock()
	h.src.set(node("n1", "powertest", a, powerIntent(5, proto.PowerTargetOn)))
	// Wait for the settle wait (the action made, a read, a timer armed),
	// then stop the agent in it.
	testkit.Eventually(t, 5*time.Second, "the action and the settle wait", func() bool {
		return tb.get(func(b *testBMC) int { return b.calls }) >= 2 && h.clk.Waiters() >= 1
	})
	h.stop()
	if n := len(h.rep.of(proto.ReportBMC)); n != 0 {
		t.Fatalf("%d reports before the restart, want none", n)
	}
	calls := tb.get(func(b *testBMC) int { return b.calls })
	tb.mu.Lock()
	tb.stuck = false
	tb.mu.Unlock()

	h.start()
	h.src.set(node("n1", "powertest", a, powerIntent(5, proto.PowerTargetOn), powerIntent(6, proto.PowerTargetOff)))
	rs := h.waitReports(proto.ReportBMC, 2, 0)
	if r := rs[0]; r.Generation != 5 || r.Error != RestartedError || r.PowerState != proto.PowerOff || r.Action != proto.ActionPower {
		t.Fatalf("first report after the restart = %+v, want generation 5, %q, power off", r, RestartedError)
	}
	if r := rs[1]; r.Generation != 6 || r.Error != "" || r.PowerState != proto.PowerOff {
		t.Fatalf("second report = %+v, want generation 6 done", r)
	}
	if got, want := bmc.FakeFor(a).Actions(), []bmc.PowerAction{bmc.PowerOff}; !slices.Equal(got, want) {
		t.Errorf("BMC actions = %v, want %v (generation 5 not acted on again)", got, want)
	}
	// After the restart: one read for generation 5, then 6's action and
	// its settle read.
	if n := tb.get(func(b *testBMC) int { return b.calls }) - calls; n != 3 {
		t.Errorf("%d calls after the restart, want 3", n)
	}
}

func TestRetries(t *testing.T) {
	for _, tc := range []struct {
		name     string
		intent   proto.Intent
		from     proto.PowerState
		failNext []proto.BMCErrorKind
		after    proto.BMCErrorKind // power actions act, then fail so
		calls    int
		kind     proto.BMCErrorKind // of the report
		errHas   string
		actions  []bmc.PowerAction
	}{
		{name: "unreachable twice", intent: proto.Intent{Action: proto.ActionVerify},
			failNext: []proto.BMCErrorKind{proto.BMCErrUnreachable, proto.BMCErrTimeout}, calls: 4},
		{name: "unreachable three times", intent: proto.Intent{Action: proto.ActionVerify},
			failNext: []proto.BMCErrorKind{proto.BMCErrUnreachable, proto.BMCErrUnreachable, proto.BMCErrUnreachable},
			calls:    3, kind: proto.BMCErrUnreachable, errHas: "unreachable"},
		{name: "auth", intent: proto.Intent{Action: proto.ActionVerify}, failNext: []proto.BMCErrorKind{proto.BMCErrAuth},
			calls: 1, kind: proto.BMCErrAuth, errHas: "authentication refused"},
		{name: "refused", intent: proto.Intent{Action: proto.ActionVerify}, failNext: []proto.BMCErrorKind{proto.BMCErrRefused},
			calls: 1, kind: proto.BMCErrRefused, errHas: "command refused"},
		{name: "unsupported", intent: proto.Intent{Action: proto.ActionBootDevice, Boot: &proto.BootDeviceSpec{Device: proto.BootDeviceDisk}},
			failNext: []proto.BMCErrorKind{proto.BMCErrUnsupported}, calls: 1, kind: proto.BMCErrUnsupported, errHas: "not supported"},
		// The action timed out before the BMC acted: read (off), act again.
		{name: "power on timed out, not done", intent: proto.Intent{Action: proto.ActionPower, Power: proto.PowerTargetOn},
			from: proto.PowerOff, failNext: []proto.BMCErrorKind{proto.BMCErrTimeout}, calls: 4, actions: []bmc.PowerAction{bmc.PowerOn}},
		// The BMC acted and the answer was lost: the read shows it, no
		// second action.
		{name: "power off timed out, done", intent: proto.Intent{Action: proto.ActionPower, Power: proto.PowerTargetOff},
			from: proto.PowerOn, after: proto.BMCErrTimeout, calls: 3, actions: []bmc.PowerAction{bmc.PowerOff}},
		// A reset that timed out cannot be told from the state: no second.
		{name: "reset timed out", intent: proto.Intent{Action: proto.ActionPower, Power: proto.PowerTargetReboot},
			from: proto.PowerOn, after: proto.BMCErrTimeout, calls: 4, kind: proto.BMCErrTimeout, errHas: "whether it was reset is unknown",
			actions: []bmc.PowerAction{bmc.PowerReset}},
		// Refused actions are not retried.
		{name: "power refused", intent: proto.Intent{Action: proto.ActionPower, Power: proto.PowerTargetOn},
			from: proto.PowerOff, after: proto.BMCErrRefused, calls: 2, kind: proto.BMCErrRefused, actions: []bmc.PowerAction{bmc.PowerOn}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, Config{})
			a := addr(t, "bmc")
			if tc.from != "" {
				bmc.FakeFor(a).SetPower(tc.from)
			}
			tb := testBMCFor(a)
			tb.mu.Lock()
			tb.failNext, tb.afterApply = tc.failNext, tc.after
			tb.mu.Unlock()
			in := tc.intent
			in.Generation, in.Agent = 1, "a1"
			h.src.set(node("n1", "powertest", a, in))
			r := h.waitReports(proto.ReportBMC, 1, 250*time.Millisecond)[0]
			if r.ErrorKind != tc.kind || !strings.Contains(r.Error, tc.errHas) || (tc.kind == "") != (r.Error == "") {
				t.Errorf("report error %q kind %q, want kind %q containing %q", r.Error, r.ErrorKind, tc.kind, tc.errHas)
			}
			if n := tb.get(func(b *testBMC) int { return b.calls }); n != tc.calls {
				t.Errorf("calls = %d, want %d", n, tc.calls)
			}
			if got := bmc.FakeFor(a).Actions(); !slices.Equal(got, tc.actions) {
				t.Errorf("BMC actions = %v, want %v", got, tc.actions)
			}
		})
	}
}

func TestRetryBackoffOnTheClock(t *testing.T) {
	h := newHarness(t, Config{})
	a := addr(t, "bmc")
	tb := testBMCFor(a)
	tb.mu.Lock()
	tb.failNext = []proto.BMCErrorKind{proto.BMCErrUnreachable, proto.BMCErrUnreachable}
	tb.mu.Unlock()
	h.src.set(node("n1", "powertest", a, proto.Intent{Generation: 1, Action: proto.ActionVerify, Agent: "a1"}))
	calls := func() int { return tb.get(func(b *testBMC) int { return b.calls }) }
	// The first try, then a wait of 1 s, then of 2 s.
	for i, d := range []time.Duration{time.Second, 2 * time.Second} {
		testkit.Eventually(t, 5*time.Second, "a backoff timer", func() bool { return calls() == i+1 && h.clk.Waiters() == 1 })
		h.clk.Advance(d - time.Millisecond)
		if calls() != i+1 {
			t.Fatalf("try %d before its backoff of %s passed", i+2, d)
		}
		h.clk.Advance(time.Millisecond)
	}
	r := h.waitReports(proto.ReportBMC, 1, 0)[0]
	if r.Error != "" || h.m.Stats().Retries != 2 {
		t.Errorf("report error %q after %d retries, want none after 2", r.Error, h.m.Stats().Retries)
	}
}

func TestSettleTimeout(t *testing.T) {
	for _, tc := range []struct {
		target proto.PowerTarget
		limit  time.Duration
	}{
		{proto.PowerTargetOff, 60 * time.Second},
		{proto.PowerTargetSoftOff, 5 * time.Minute},
	} {
		t.Run(string(tc.target), func(t *testing.T) {
			h := newHarness(t, Config{})
			a := addr(t, "bmc")
			bmc.FakeFor(a).SetPower(proto.PowerOn)
			tb := testBMCFor(a)
			tb.mu.Lock()
			tb.stuck = true
			tb.mu.Unlock()
			h.src.set(node("n1", "powertest", a, powerIntent(1, tc.target)))
			r := h.waitReports(proto.ReportBMC, 1, time.Second)[0]
			if r.ErrorKind != proto.BMCErrTimeout || !strings.Contains(r.Error, "did not become off within "+tc.limit.String()) ||
				!strings.Contains(r.Error, "still on") || r.PowerState != proto.PowerOn {
				t.Fatalf("report = %+v, want a timeout saying the power is still on", r)
			}
			if took := r.Time.Sub(t0); took < tc.limit || took > tc.limit+30*time.Second {
				t.Errorf("reported after %s, want after the %s settle limit", took, tc.limit)
			}
		})
	}
}

func TestReportRetriedUntilQueued(t *testing.T) {
	h := newHarness(t, Config{})
	a := addr(t, "bmc")
	h.rep.setFail(true)
	h.src.set(node("n1", proto.DriverFake, a, powerIntent(1, proto.PowerTargetOn)))
	testkit.Eventually(t, 5*time.Second, "the action", func() bool { return len(bmc.FakeFor(a).Actions()) == 1 })
	h.src.set(node("n1", proto.DriverFake, a, powerIntent(1, proto.PowerTargetOn))) // re-delivered meanwhile
	h.clk.Advance(10 * time.Second)
	h.rep.setFail(false)
	r := h.waitReports(proto.ReportBMC, 1, time.Second)[0]
	if r.Error != "" || r.PowerState != proto.PowerOn {
		t.Errorf("report = %+v, want power on", r)
	}
	if got := bmc.FakeFor(a).Actions(); len(got) != 1 {
		t.Errorf("BMC actions = %v, want one", got)
	}
}

func TestNoNewIntentsBeforeSync(t *testing.T) {
	h := newHarness(t, Config{})
	h.src.synced.Store(false)
	a := addr(t, "bmc")
	h.src.set(node("n1", proto.DriverFake, a, powerIntent(1, proto.PowerTargetOn)))
	for range 3 {
		// Each wait for the sync is armed after a look at the state.
		testkit.Eventually(t, 5*time.Second, "a wait for the sync", func() bool { return h.clk.Waiters() >= 1 })
		h.clk.Advance(time.Second)
	}
	testkit.Eventually(t, 5*time.Second, "a wait for the sync", func() bool { return h.clk.Waiters() >= 1 })
	h.m.mu.Lock()
	busy := len(h.m.busy)
	h.m.mu.Unlock()
	if n := len(bmc.FakeFor(a).Actions()); n != 0 || busy != 0 {
		t.Fatalf("%d actions (%d workers) from a boot state not synced, want none", n, busy)
	}
	h.src.synced.Store(true)
	r := h.waitReports(proto.ReportBMC, 1, time.Second)[0]
	if r.Generation != 1 || r.Error != "" {
		t.Errorf("report = %+v, want generation 1 done", r)
	}
}

func TestDriversReopenedAndClosed(t *testing.T) {
	h := newHarness(t, Config{})
	a := addr(t, "bmc")
	tb := testBMCFor(a)
	verify := func(g uint64) proto.Intent {
		return proto.Intent{Generation: g, Action: proto.ActionVerify, Agent: "a1"}
	}
	n := node("n1", "powertest", a, verify(1))
	h.src.set(n)
	h.waitReports(proto.ReportBMC, 1, 0)
	n.BMC.Intents = []proto.Intent{verify(2)}
	h.src.set(n) // same fields: same driver
	h.waitReports(proto.ReportBMC, 2, 0)
	if o := tb.get(func(b *testBMC) int { return b.opens }); o != 1 {
		t.Fatalf("opens = %d after two intents with the same fields, want 1", o)
	}
	n.BMC.Password = "new"
	n.BMC.Intents = []proto.Intent{verify(3)}
	h.src.set(n)
	h.waitReports(proto.ReportBMC, 3, 0)
	if o, c := tb.get(func(b *testBMC) int { return b.opens }), tb.get(func(b *testBMC) int { return b.closes }); o != 2 || c != 1 {
		t.Fatalf("opens, closes = %d, %d after the password changed, want 2, 1", o, c)
	}
	h.src.set() // the node left
	testkit.Eventually(t, 5*time.Second, "the driver closed", func() bool { return tb.get(func(b *testBMC) int { return b.closes }) == 2 })
}

func TestPowerSyncReportsChangesOnly(t *testing.T) {
	h := newHarness(t, Config{SyncInterval: time.Minute, Mine: func(uuid string) bool { return uuid != "theirs" }})
	aa, ab, ac := addr(t, "a"), addr(t, "b"), addr(t, "c")
	bmc.FakeFor(aa).SetPower(proto.PowerOn)
	maint := node("maint", proto.DriverFake, ac)
	maint.BMC.Maintenance = true
	h.src.set(node("A", proto.DriverFake, aa), node("B", proto.DriverFake, ab), maint,
		proto.BootNode{UUID: "nobmc"}, node("theirs", proto.DriverFake, addr(t, "d")))
	round := func(k int64) []proto.AgentReport {
		t.Helper()
		testkit.Eventually(t, 10*time.Second, "a power sync round", func() bool {
			h.clk.Advance(5 * time.Second)
			return h.m.Stats().SyncRounds >= k
		})
		return h.rep.of(proto.ReportPower)
	}
	got := map[string]proto.PowerState{}
	for _, r := range round(1) {
		got[r.Node] = r.PowerState
	}
	if want := map[string]proto.PowerState{"A": proto.PowerOn, "B": proto.PowerOff, "maint": proto.PowerOff}; !mapsEqual(got, want) {
		t.Fatalf("first round reported %v, want %v (every node of mine with a BMC, maintenance too)", got, want)
	}
	if rs := round(2); len(rs) != 3 {
		t.Fatalf("%d reports after a round without change, want still 3", len(rs))
	}
	bmc.FakeFor(aa).SetPower(proto.PowerOff) // behind Metalfleet's back
	rs := round(3)
	if len(rs) != 4 || rs[3].Node != "A" || rs[3].PowerState != proto.PowerOff {
		t.Fatalf("reports after A was switched off: %+v, want a 4th: A off", rs)
	}
	bmc.FakeFor(ab).Fail(proto.BMCErrUnreachable)
	rs = round(4)
	if len(rs) != 5 || rs[4].Node != "B" || rs[4].PowerState != proto.PowerUnknown || rs[4].ErrorKind != proto.BMCErrUnreachable || rs[4].Error == "" {
		t.Fatalf("reports after B stopped answering: %+v, want a 5th: B unknown with the error", rs)
	}
	if rs := round(5); len(rs) != 5 {
		t.Fatalf("%d reports after a round with the same error, want still 5", len(rs))
	}
	bmc.FakeFor(ab).Fail("")
	rs = round(6)
	if len(rs) != 6 || rs[5].Node != "B" || rs[5].PowerState != proto.PowerOff || rs[5].Error != "" {
		t.Fatalf("reports after B answers again: %+v, want a 6th: B off", rs)
	}
	st := h.m.Stats()
	if st.PollErrors < 2 || st.PowerReports != 6 {
		t.Errorf("stats %+v: want at least 2 poll errors and 6 power reports", st)
	}
}

func TestPowerSyncAfterIntentReportsNothingNew(t *testing.T) {
	h := newHarness(t, Config{SyncInterval: time.Minute})
	a := addr(t, "bmc")
	h.src.set(node("n1", proto.DriverFake, a, powerIntent(1, proto.PowerTargetOn)))
	h.waitReports(proto.ReportBMC, 1, 0)
	testkit.Eventually(t, 10*time.Second, "a power sync round", func() bool {
		h.clk.Advance(5 * time.Second)
		return h.m.Stats().SyncRounds >= 1
	})
	if rs := h.rep.of(proto.ReportPower); len(rs) != 0 {
		t.Errorf("power sync reported %+v after the intent reported power on; want nothing", rs)
	}
}

func TestConcurrencyLimit(t *testing.T) {
	const limit, nodes = 3, 10
	globalMu.Lock()
	maxGlobal.Store(curGlobal.Load()) // counted from here (other tests use the test driver too)
	globalMu.Unlock()
	h := newHarness(t, Config{Concurrency: limit})
	gate := make(chan struct{})
	var ns []proto.BootNode
	var tbs []*testBMC
	for i := range nodes {
		a := addr(t, string(rune('a'+i)))
		tb := testBMCFor(a)
		tb.mu.Lock()
		tb.gate = gate
		tb.mu.Unlock()
		tbs = append(tbs, tb)
		ns = append(ns, node(string(rune('A'+i)), "powertest", a, proto.Intent{Generation: 1, Action: proto.ActionVerify, Agent: "a1"}))
	}
	inflight := func() int {
		n := 0
		for _, tb := range tbs {
			n += tb.get(func(b *testBMC) int { return b.inflight })
		}
		return n
	}
	h.src.set(ns...)
	testkit.Eventually(t, 5*time.Second, "calls up to the limit", func() bool { return inflight() >= limit })
	if n := h.m.Stats().InFlight; n != limit {
		t.Errorf("InFlight = %d, want %d", n, limit)
	}
	close(gate)
	h.waitReports(proto.ReportBMC, nodes, 0)
	if gmax := maxGlobal.Load(); gmax != limit {
		t.Errorf("at most %d calls were in flight at once, want %d (the limit, reached)", gmax, limit)
	}
	for _, tb := range tbs {
		if n := tb.get(func(b *testBMC) int { return b.maxFlight }); n != 1 {
			t.Errorf("%d calls at once on one BMC, want 1", n)
		}
	}
}

// maxGlobal is the most test driver calls in flight at once since
// TestConcurrencyLimit reset it.
var (
	curGlobal atomic.Int64
	maxGlobal atomic.Int64
	globalMu  sync.Mutex
)

func init() {
	enterHook = func(d int64) {
		globalMu.Lock()
		defer globalMu.Unlock()
		n := curGlobal.Add(d)
		if n > maxGlobal.Load() {
			maxGlobal.Store(n)
		}
	}
}

func mapsEqual[K comparable, V comparable](a, b map[K]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// The ledger alone: started and done survive a reopen.
func TestLedgerDurable(t *testing.T) {
	path := t.TempDir() + "/l.db"
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	l, err := openLedger(db, t0)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.start("n1", 4, proto.ActionPower); err != nil {
		t.Fatal(err)
	}
	if err := l.start("n2", 2, proto.ActionVerify); err != nil {
		t.Fatal(err)
	}
	if err := l.done("n2", 2); err != nil {
		t.Fatal(err)
	}
	db.Close()
	db, err = bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if l, err = openLedger(db, t0); err != nil {
		t.Fatal(err)
	}
	if got := l.get("n1"); got != (record{Started: 4, Action: proto.ActionPower}) {
		t.Errorf("n1 = %+v, want started 4 not done", got)
	}
	if got := l.unfinished(); !slices.Equal(got, []string{"n1"}) {
		t.Errorf("unfinished = %v, want [n1]", got)
	}
}

func TestReportTextIsClean(t *testing.T) {
	long := errors.New("ipmitool said:\nError: " + strings.Repeat("é", 600) + "\x00\xff")
	s := errText(long)
	if len(s) > maxErrorLen || !utf8.ValidString(s) || strings.ContainsFunc(s, unicode.IsControl) || !strings.HasPrefix(s, "ipmitool said: Error: é") {
		t.Errorf("errText = %q (%d bytes): want valid UTF-8 without control characters, at most %d bytes", s, len(s), maxErrorLen)
	}
	i := cleanInfo(proto.BMCInfo{Vendor: "Acmé\n", Model: strings.Repeat("m", 300), FirmwareVersion: "1.0", Protocol: "lanplus cipher 3"})
	if i.Vendor != "Acm??" || len(i.Model) != maxInfoLen || i.Protocol != "lanplus cipher 3" {
		t.Errorf("cleanInfo = %+v: want printable ASCII, each field at most %d bytes", i, maxInfoLen)
	}
}

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"10.0.0.5": "10.0.0.5",
		"https://bmc.example/redfish/v1/Systems/1":   "https://bmc.example/redfish/v1/Systems/1",
		"https://root:calvin@bmc.example/redfish/v1": "https://root:xxxxx@bmc.example/redfish/v1",
	} {
		if got := redact(in); got != want {
			t.Errorf("redact(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestPowerSyncTiming(t *testing.T) {
	h := newHarness(t, Config{SyncInterval: time.Hour})
	h.src.set(node("n1", proto.DriverFake, addr(t, "bmc")))
	rounds := func() int64 { return h.m.Stats().SyncRounds }
	if !h.clk.BlockUntil(1, 5*time.Second) {
		t.Fatal("no power sync timer")
	}
	h.clk.Advance(11 * time.Second) // the first round comes within 10 s (+-10%)
	testkit.Eventually(t, 5*time.Second, "the first round", func() bool { return rounds() == 1 })
	if !h.clk.BlockUntil(1, 5*time.Second) {
		t.Fatal("no power sync timer after the first round")
	}
	h.clk.Advance(50 * time.Minute) // then every hour, +-10%
	if n := rounds(); n != 1 {
		t.Fatalf("%d rounds 50 minutes after the first, want 1", n)
	}
	h.clk.Advance(20 * time.Minute)
	testkit.Eventually(t, 5*time.Second, "the second round", func() bool { return rounds() == 2 })
	if rs := h.rep.of(proto.ReportPower); len(rs) != 1 {
		t.Errorf("%d power reports, want 1 (the first round's)", len(rs))
	}
}

// TestWaitsForAnotherAgentsLowerGeneration: when a node's intents went to
// two agents (the rack's agents changed between two requests), an agent
// does not act on its intent while a lower generation held by the other
// is not done: a boot device set by one and a reboot by the other happen
// in the order they were asked for, never at once.
func TestWaitsForAnotherAgentsLowerGeneration(t *testing.T) {
	m := &Manager{cfg: Config{Agent: "a1"}, led: &ledger{m: map[string]record{}}}
	boot := proto.Intent{Generation: 5, Action: proto.ActionBootDevice, Boot: &proto.BootDeviceSpec{Device: proto.BootDevicePXE}, Agent: "a2"}
	reboot := powerIntent(6, proto.PowerTargetReboot)
	n := node("n1", proto.DriverFake, "x", boot, reboot)
	if got := m.pendingLocked(&n); got != nil {
		t.Fatalf("pending = generation %d while a2's generation 5 is not done; want none", got.Generation)
	}
	n = node("n1", proto.DriverFake, "x", reboot) // a2's done: no longer sent
	if got := m.pendingLocked(&n); got == nil || got.Generation != 6 {
		t.Fatalf("pending = %+v after a2's intent is done; want generation 6", got)
	}
}

// TestLapsedIntentsNotExecuted: an intent past its expiry, or made before
// the agent's record of actions began (a rebuilt agent), is reported as
// not executed and never acted on.
func TestLapsedIntentsNotExecuted(t *testing.T) {
	h := newHarness(t, Config{})
	a := addr(t, "bmc")
	old := powerIntent(1, proto.PowerTargetOn)
	old.At = t0.Add(-time.Hour) // before the harness's agent started (at t0)
	old.Expires = t0.Add(time.Hour)
	expired := powerIntent(2, proto.PowerTargetOff)
	expired.At, expired.Expires = t0, t0.Add(-time.Second)
	fine := powerIntent(3, proto.PowerTargetOn)
	fine.At, fine.Expires = t0, t0.Add(time.Hour)
	h.src.set(node("n1", proto.DriverFake, a, old, expired, fine))
	rs := h.waitReports(proto.ReportBMC, 3, 0)
	for i, want := range []string{"older than this agent's record of actions", "expired", ""} {
		if r := rs[i]; !strings.Contains(r.Error, want) || (want != "") != (r.ErrorKind == proto.BMCErrExpired) {
			t.Errorf("report %d (generation %d): error %q kind %q, want %q", i, r.Generation, r.Error, r.ErrorKind, want)
		}
	}
	if got := bmc.FakeFor(a).Actions(); !slices.Equal(got, []bmc.PowerAction{bmc.PowerOn}) {
		t.Errorf("BMC actions = %v, want only generation 3's power on", got)
	}
}

// TestPowerActionCallBound: a power action's call may take as long as the
// settle wait (a Redfish BMC answers 202 and the driver follows its task
// monitor), reads only CallTimeout.
func TestPowerActionCallBound(t *testing.T) {
	h := newHarness(t, Config{CallTimeout: 2 * time.Second, SettleTimeout: time.Minute})
	a := addr(t, "bmc")
	h.src.set(node("n1", "powertest", a, powerIntent(1, proto.PowerTargetOn)))
	h.waitReports(proto.ReportBMC, 1, 0)
	tb := testBMCFor(a)
	tb.mu.Lock()
	act, read := tb.budget["power on"], tb.budget["power status"]
	tb.mu.Unlock()
	if act <= 2*time.Second || act > time.Minute {
		t.Errorf("power on had %s to its deadline, want more than the 2s call timeout, at most the 1m settle wait", act)
	}
	if read <= 0 || read > 2*time.Second {
		t.Errorf("power status had %s to its deadline, want at most the 2s call timeout", read)
	}
}

// TestPowerSyncOneCallPerDeadBMC: a poll of a BMC that does not answer is
// one call (no retries holding a concurrency slot through their
// backoff), reported as power unknown with the error.
func TestPowerSyncOneCallPerDeadBMC(t *testing.T) {
	h := newHarness(t, Config{SyncInterval: time.Minute})
	a := addr(t, "dead")
	tb := testBMCFor(a)
	tb.mu.Lock()
	tb.failNext = []proto.BMCErrorKind{proto.BMCErrUnreachable, proto.BMCErrUnreachable, proto.BMCErrUnreachable}
	tb.mu.Unlock()
	h.src.set(node("n1", "powertest", a))
	testkit.Eventually(t, 10*time.Second, "a power sync round", func() bool {
		h.clk.Advance(5 * time.Second)
		return h.m.Stats().SyncRounds >= 1
	})
	rs := h.rep.of(proto.ReportPower)
	if len(rs) != 1 || rs[0].PowerState != proto.PowerUnknown || rs[0].ErrorKind != proto.BMCErrUnreachable {
		t.Fatalf("reports %+v, want one: unknown, unreachable", rs)
	}
	tb.mu.Lock()
	calls := tb.calls
	tb.mu.Unlock()
	if calls != 1 {
		t.Errorf("%d calls for one poll of a dead BMC, want 1", calls)
	}
}

// TestRecordWriteFailureRetried: a node whose record of generations could
// not be written (disk full) has its intent tried again after a while,
// without waiting for another boot state, and acted on once.
func TestRecordWriteFailureRetried(t *testing.T) {
	h := newHarness(t, Config{})
	var fail atomic.Bool
	fail.Store(true)
	h.m.mu.Lock()
	h.m.led.failPut = func() error {
		if fail.Load() {
			return errors.New("no space left on device")
		}
		return nil
	}
	h.m.mu.Unlock()
	a := addr(t, "bmc")
	h.src.set(node("n1", proto.DriverFake, a, powerIntent(1, proto.PowerTargetOn)))
	if !h.clk.BlockUntil(1, 5*time.Second) {
		t.Fatal("no retry was scheduled after the failed write")
	}
	if got := bmc.FakeFor(a).Actions(); len(got) != 0 {
		t.Fatalf("acted %v without recording the start", got)
	}
	fail.Store(false)
	testkit.Eventually(t, 10*time.Second, "the intent done after the retry", func() bool {
		h.clk.Advance(5 * time.Second)
		return len(h.rep.of(proto.ReportBMC)) == 1
	})
	if got := bmc.FakeFor(a).Actions(); !slices.Equal(got, []bmc.PowerAction{bmc.PowerOn}) {
		t.Errorf("BMC actions = %v, want one power on", got)
	}
}

// TestRebootPowerLostBeforeReset: the node is on when a reboot reads it,
// then loses power before the reset arrives; the BMC refuses the reset
// (the chassis is off). The agent reads the power again and, finding it
// off, powers it on: what a reboot of an off node does. (Before, the
// reboot failed and the node stayed off: an unrescue then waited for its
// timeout.)
func TestRebootPowerLostBeforeReset(t *testing.T) {
	h := newHarness(t, Config{})
	a := addr(t, "lost")
	tb := testBMCFor(a)
	tb.mu.Lock()
	tb.lossOnReset = true
	tb.mu.Unlock()
	fb := bmc.FakeFor(a)
	fb.SetPower(proto.PowerOn)
	h.src.set(node("n1", "powertest", a, powerIntent(3, proto.PowerTargetReboot)))
	r := h.waitReports(proto.ReportBMC, 1, 0)[0]
	if r.Error != "" || r.PowerState != proto.PowerOn {
		t.Fatalf("report = %+v, want the reboot done, power on", r)
	}
	if got := fb.Actions(); !slices.Equal(got, []bmc.PowerAction{bmc.PowerOn}) {
		t.Errorf("BMC actions = %v, want one power-on (the refused reset did nothing)", got)
	}
}
