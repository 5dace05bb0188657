package power

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/metalfleet/metalfleet/cluster/clock"
	"github.com/metalfleet/metalfleet/ops/testkit"
	"github.com/metalfleet/metalfleet/proto"
	"github.com/metalfleet/metalfleet/rackagent/bmc"
	"github.com/metalfleet/metalfleet/rackagent/bootstate"
)

// fakeReporter keeps the reports it is given; fail makes it refuse them.
type fakeReporter struct {
	mu      sync.Mutex
	reports []proto.AgentReport
	fail    bool
}

func (r *fakeReporter) ReportNow(rep proto.AgentReport) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail {
		return errors.New("outbox: full")
	}
	r.reports = append(r.reports, rep)
	return nil
}

func (r *fakeReporter) setFail(b bool) { r.mu.Lock(); r.fail = b; r.mu.Unlock() }

// of returns the reports of kind k.
func (r *fakeReporter) of(k proto.ReportKind) []proto.AgentReport {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []proto.AgentReport
	for _, x := range r.reports {
		if x.Kind == k {
			out = append(out, x)
		}
	}
	return out
}

// fakeSource is a boot state a test sets.
type fakeSource struct {
	mu     sync.Mutex
	view   *bootstate.View
	notify chan struct{}
	synced atomic.Bool
}

func newSource() *fakeSource {
	s := &fakeSource{notify: make(chan struct{})}
	s.synced.Store(true)
	return s
}

func (s *fakeSource) View() *bootstate.View {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.view
}

func (s *fakeSource) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.notify
}

func (s *fakeSource) Synced() bool { return s.synced.Load() }

var index atomic.Uint64

// set delivers a new boot state with nodes (copied).
func (s *fakeSource) set(nodes ...proto.BootNode) {
	st := &proto.RackBootState{Rack: proto.Rack{Name: "r1"}, Index: index.Add(1)}
	for _, n := range nodes {
		if n.BMC != nil {
			b := *n.BMC
			b.Intents = append([]proto.Intent(nil), b.Intents...)
			n.BMC = &b
		}
		st.Nodes = append(st.Nodes, n)
	}
	s.mu.Lock()
	s.view = bootstate.NewView(st)
	close(s.notify)
	s.notify = make(chan struct{})
	s.mu.Unlock()
}

// testBMC adds to a fake BMC what the fake cannot do: calls that block,
// power actions that do nothing or fail after acting, failures of the
// next calls only; and it counts opens, closes, calls and calls in
// flight. Driver "powertest", by address.
type testBMC struct {
	mu          sync.Mutex
	stuck       bool                 // power actions are accepted and do nothing
	afterApply  proto.BMCErrorKind   // power actions act, then fail with this kind
	lossOnReset bool                 // the power is lost just before a reset arrives (once)
	failNext    []proto.BMCErrorKind // the next calls fail with these kinds
	gate        chan struct{}        // calls wait until it is closed
	opens       int
	closes      int
	calls       int
	inflight    int
	maxFlight   int
	budget      map[string]time.Duration // op -> time left to the call's deadline when it entered
}

var testBMCs sync.Map // address -> *testBMC

// enterHook, if set, is told of every test driver call entering (+1) and
// leaving (-1).
var enterHook func(delta int64)

func testBMCFor(addr string) *testBMC {
	b, _ := testBMCs.LoadOrStore(addr, &testBMC{})
	return b.(*testBMC)
}

func init() {
	bmc.Register("powertest", func(cfg bmc.Config) (bmc.Driver, error) {
		t := testBMCFor(cfg.Address)
		t.mu.Lock()
		t.opens++
		t.mu.Unlock()
		fcfg := cfg
		fcfg.Driver = proto.DriverFake
		d, err := bmc.Open(fcfg)
		if err != nil {
			return nil, err
		}
		return &testDriver{t: t, fake: bmc.FakeFor(cfg.Address), d: d}, nil
	})
}

type testDriver struct {
	t    *testBMC
	fake *bmc.FakeBMC
	d    bmc.Driver
}

// enter counts a call in, waits at the gate, and returns the failure to
// inject, if any.
func (d *testDriver) enter(ctx context.Context, op string) (func(), error) {
	t := d.t
	t.mu.Lock()
	if dl, ok := ctx.Deadline(); ok {
		if t.budget == nil {
			t.budget = map[string]time.Duration{}
		}
		t.budget[op] = time.Until(dl)
	}
	t.calls++
	t.inflight++
	t.maxFlight = max(t.maxFlight, t.inflight)
	gate := t.gate
	var fail proto.BMCErrorKind
	if len(t.failNext) > 0 {
		fail, t.failNext = t.failNext[0], t.failNext[1:]
	}
	t.mu.Unlock()
	if enterHook != nil {
		enterHook(1)
	}
	leave := func() {
		t.mu.Lock()
		t.inflight--
		t.mu.Unlock()
		if enterHook != nil {
			enterHook(-1)
		}
	}
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			leave()
			return nil, &bmc.Error{Op: op, Kind: proto.BMCErrTimeout, Err: ctx.Err()}
		}
	}
	if fail != "" {
		leave()
		return nil, bmc.Errorf(op, fail, "injected")
	}
	return leave, nil
}

func (d *testDriver) PowerState(ctx context.Context) (proto.PowerState, error) {
	leave, err := d.enter(ctx, "power status")
	if err != nil {
		return proto.PowerUnknown, err
	}
	defer leave()
	return d.d.PowerState(ctx)
}

func (d *testDriver) Power(ctx context.Context, a bmc.PowerAction) error {
	leave, err := d.enter(ctx, "power "+string(a))
	if err != nil {
		return err
	}
	defer leave()
	d.t.mu.Lock()
	stuck, after := d.t.stuck, d.t.afterApply
	if a == bmc.PowerReset && d.t.lossOnReset {
		d.t.lossOnReset = false
		d.fake.SetPower(proto.PowerOff)
	}
	d.t.mu.Unlock()
	if stuck {
		return nil
	}
	if err := d.d.Power(ctx, a); err != nil {
		return err
	}
	if after != "" {
		return bmc.Errorf("power "+string(a), after, "injected after the action")
	}
	return nil
}

func (d *testDriver) SetBootDevice(ctx context.Context, b proto.BootDeviceSpec) error {
	leave, err := d.enter(ctx, "set boot device")
	if err != nil {
		return err
	}
	defer leave()
	return d.d.SetBootDevice(ctx, b)
}

func (d *testDriver) Identify(ctx context.Context) (proto.BMCInfo, error) {
	leave, err := d.enter(ctx, "identify")
	if err != nil {
		return proto.BMCInfo{}, err
	}
	defer leave()
	return d.d.Identify(ctx)
}

func (d *testDriver) Console(ctx context.Context) (io.ReadWriteCloser, error) {
	return nil, bmc.Errorf("console", proto.BMCErrUnsupported, "test driver")
}

func (d *testDriver) Close() error {
	d.t.mu.Lock()
	d.t.closes++
	d.t.mu.Unlock()
	return d.d.Close()
}

func (t *testBMC) get(f func(t *testBMC) int) int { t.mu.Lock(); defer t.mu.Unlock(); return f(t) }

// harness is a Manager on a temp bolt file, a fake clock, a fake
// reporter and a fake boot state.
type harness struct {
	t      *testing.T
	db     *bbolt.DB
	path   string
	clk    *clock.Fake
	rep    *fakeReporter
	src    *fakeSource
	m      *Manager
	cfg    Config
	cancel context.CancelFunc
	done   chan struct{}
}

var t0 = time.Date(2026, 11, 30, 6, 0, 0, 0, time.UTC)

func newHarness(t *testing.T, cfg Config) *harness {
	t.Helper()
	h := &harness{t: t, path: filepath.Join(t.TempDir(), "agent.db"), clk: clock.NewFake(t0), rep: &fakeReporter{}, src: newSource(), cfg: cfg}
	h.start()
	t.Cleanup(h.stop)
	return h
}

// start opens the db and runs a Manager on it.
func (h *harness) start() {
	h.t.Helper()
	db, err := bbolt.Open(h.path, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		h.t.Fatal(err)
	}
	h.db = db
	cfg := h.cfg
	cfg.Agent, cfg.DB, cfg.Reporter, cfg.Clock = "a1", db, h.rep, h.clk
	if h.m, err = New(cfg); err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel, h.done = cancel, make(chan struct{})
	go func() {
		defer close(h.done)
		_ = h.m.Run(ctx, h.src)
	}()
}

// stop ends Run and closes the db.
func (h *harness) stop() {
	if h.cancel == nil {
		return
	}
	h.cancel()
	<-h.done
	h.db.Close()
	h.cancel = nil
}

// waitReports waits for n reports of kind k (advancing the fake clock by
// step while waiting, when step > 0) and returns them.
func (h *harness) waitReports(k proto.ReportKind, n int, step time.Duration) []proto.AgentReport {
	h.t.Helper()
	testkit.Eventually(h.t, 10*time.Second, string(k)+" reports", func() bool {
		if step > 0 {
			h.clk.Advance(step)
		}
		return len(h.rep.of(k)) >= n
	})
	return h.rep.of(k)
}

// node is a node with a BMC at address addr (driver drv) and intents.
func node(uuid, drv, addr string, intents ...proto.Intent) proto.BootNode {
	return proto.BootNode{UUID: uuid, MACs: []string{}, BMC: &proto.BootBMC{
		BMC:     proto.BMC{Driver: drv, Address: addr, Username: "admin", Password: "secret"},
		Intents: intents}}
}

func powerIntent(g uint64, t proto.PowerTarget) proto.Intent {
	return proto.Intent{Generation: g, Action: proto.ActionPower, Power: t, Agent: "a1"}
}

var addrSeq atomic.Uint64

// addr is an address unique to the call (fake BMCs are per address and
// per process, and outlive a test run with -count).
func addr(t *testing.T, suffix string) string {
	return fmt.Sprintf("%s/%d/%s", t.Name(), addrSeq.Add(1), suffix)
}
