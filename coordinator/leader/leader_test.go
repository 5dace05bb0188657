package leader

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/cluster/clock"
	"github.com/metalfleet/metalfleet/coordinator/fsm"
	"github.com/metalfleet/metalfleet/coordinator/state"
	"github.com/metalfleet/metalfleet/ops/testkit"
	"github.com/metalfleet/metalfleet/proto"
)

// fake is a Backend over a real store and FSM, without Raft: Apply
// applies at the next index, Barrier blocks until released.
type fake struct {
	mu      sync.Mutex
	store   *state.Store
	f       *fsm.FSM
	index   uint64
	term    uint64
	applied []fsm.Command
	barrier chan struct{} // closed: barriers pass
	failing int           // Apply fails this many more times
}

func newFake() *fake {
	st := state.New()
	fk := &fake{store: st, f: fsm.New(st, nil), index: 1, term: 1, barrier: make(chan struct{})}
	return fk
}

func (f *fake) Store() *state.Store { return f.store }

func (f *fake) Term() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.term
}

func (f *fake) setTerm(t uint64) {
	f.mu.Lock()
	f.term = t
	f.mu.Unlock()
}

func (f *fake) Barrier(ctx context.Context) error {
	f.mu.Lock()
	ch := f.barrier
	f.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (f *fake) release() {
	f.mu.Lock()
	close(f.barrier)
	f.mu.Unlock()
}

func (f *fake) Apply(_ context.Context, c fsm.Command) (any, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failing > 0 {
		f.failing--
		return nil, errors.New("no quorum")
	}
	data, err := fsm.Encode(c)
	if err != nil {
		return nil, err
	}
	f.index++
	r := f.f.ApplyBytes(f.index, data)
	if r.Err != nil {
		return nil, r.Err
	}
	f.applied = append(f.applied, c)
	return r.Value, nil
}

// count returns how many applied commands have c's type.
func (f *fake) count(t fsm.Type) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.applied {
		if c.Type() == t {
			n++
		}
	}
	return n
}

// must applies c or fails the test.
func (f *fake) must(t *testing.T, c fsm.Command) {
	t.Helper()
	if _, err := f.Apply(context.Background(), c); err != nil {
		t.Fatalf("apply %T: %v", c, err)
	}
}

var t0 = time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)

func TestReadyOnlyAfterBarrierAndOnlyWhileLeading(t *testing.T) {
	fk := newFake()
	l := New(fk, Config{Self: proto.Server{ID: "s1", RaftAddr: "127.0.0.1:1", HTTPAddr: "127.0.0.1:2"}, Clock: clock.NewFake(t0)})
	ch := make(chan bool, 1)
	ctx, cancel := context.WithCancel(context.Background())
	watched := make(chan struct{})
	go func() { l.Watch(ctx, ch); close(watched) }()
	defer func() { cancel(); <-watched }()

	ch <- true
	testkit.Eventually(t, 5*time.Second, "loops started", l.Leading)
	if l.Ready() {
		t.Fatal("Ready before the barrier was applied")
	}
	short, c := context.WithTimeout(context.Background(), 20*time.Millisecond)
	if l.WaitReady(short) {
		t.Fatal("WaitReady true before the barrier was applied")
	}
	c()
	if fk.count(fsm.TypeServerPut) != 0 {
		t.Fatal("wrote before the barrier")
	}

	fk.release()
	wctx, c2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer c2()
	if !l.WaitReady(wctx) {
		t.Fatal("not ready after the barrier")
	}
	testkit.Eventually(t, 5*time.Second, "self recorded", func() bool { _, ok := fk.store.Server("s1"); return ok })

	// A new term (lost and won again, unseen yet) is not ready on the
	// old term's barrier.
	fk.setTerm(2)
	if l.Ready() {
		t.Fatal("Ready in a term whose barrier did not run")
	}
	fk.setTerm(1)

	ch <- false
	testkit.Eventually(t, 5*time.Second, "loops stopped", func() bool { return !l.Leading() })
	if l.Ready() {
		t.Fatal("Ready after losing leadership")
	}

	// Winning again runs a fresh barrier, in the new term.
	fk.setTerm(3)
	ch <- true
	if !l.WaitReady(wctx) {
		t.Fatal("not ready after winning again")
	}
	if fk.count(fsm.TypeServerPut) != 2 {
		t.Fatalf("self recorded %d times, want once per leadership (2)", fk.count(fsm.TypeServerPut))
	}
}

func TestBootstrapTokenOnlyIntoEmptyTable(t *testing.T) {
	fk := newFake()
	fk.release()
	fk.failing = 2 // the first writes fail: retried
	clk := clock.NewFake(t0)
	l := New(fk, Config{Self: proto.Server{ID: "s1", RaftAddr: "127.0.0.1:1", HTTPAddr: "127.0.0.1:2"}, BootstrapSecretHash: strings.Repeat("ab", 32), Clock: clk})
	l.Start(context.Background())
	defer l.Stop()
	testkit.Eventually(t, 5*time.Second, "bootstrap token stored", func() bool {
		clk.Advance(time.Second) // past the retry backoff
		return len(fk.store.Tokens()) == 1
	})
	if tok := fk.store.Tokens()[0]; tok.ID != "admin-bootstrap" || tok.Role != proto.RoleAdmin || !tok.CreatedAt.After(t0) {
		t.Fatalf("token = %+v", tok)
	}
	l.Stop()

	// Revoked since (after another admin token was made): a new
	// leadership does not bring it back.
	fk.must(t, fsm.TokenCreate{Token: proto.Token{ID: "admin-2", Role: proto.RoleAdmin, CreatedAt: t0}, SecretHash: strings.Repeat("cd", 32)})
	fk.must(t, fsm.TokenRevoke{ID: "admin-bootstrap"})
	l.Start(context.Background())
	testkit.Eventually(t, 5*time.Second, "self recorded again", func() bool { return fk.count(fsm.TypeServerPut) == 2 })
	l.Stop()
	if toks := fk.store.Tokens(); len(toks) != 1 || toks[0].ID != "admin-2" {
		t.Fatalf("tokens after a new leadership with the bootstrap token revoked = %+v, want admin-2 only", toks)
	}
}

func TestLeaseExpiry(t *testing.T) {
	fk := newFake()
	fk.release()
	clk := clock.NewFake(t0)
	fk.must(t, fsm.RackPut{Create: true, Rack: proto.Rack{Name: "r1", Subnet: "10.9.0.0/24", Gateway: "10.9.0.1", BootServer: "10.9.0.2",
		PoolStart: "10.9.0.100", PoolEnd: "10.9.0.199"}})
	// One lease of an agent that never came back, ending at t0+10m.
	fk.must(t, fsm.AgentReports{Rack: "r1", Reports: []proto.AgentReport{{
		ID: "a-1", Kind: proto.ReportLease, Rack: "r1", Agent: "a", Incarnation: "i1", Seq: 1, Time: t0,
		MAC: "52:54:00:99:00:01", LeaseEvent: "bound", Lease: &proto.Lease{IP: "10.9.0.100", Expires: t0.Add(10 * time.Minute)},
	}}})
	if n := len(fk.store.Leases("r1")); n != 1 {
		t.Fatalf("setup: %d leases, want 1", n)
	}

	round := startExpiryRounds(t, fk, clk)
	// An hour after the lease ended (t0+70m) it is still kept, and
	// nothing is proposed for it.
	for i := 0; i < 70; i++ {
		round()
	}
	if n := fk.count(fsm.TypeLeasesExpire); n != 0 {
		t.Fatalf("proposed LeasesExpire %d times with no lease past LeaseKeep", n)
	}
	if n := len(fk.store.Leases("r1")); n != 1 {
		t.Fatalf("lease forgotten within LeaseKeep: %d leases", n)
	}
	// Past end + LeaseKeep: the next round forgets it, once.
	round()
	if n := len(fk.store.Leases("r1")); n != 0 {
		t.Fatalf("the old lease kept past LeaseKeep: %d leases", n)
	}
	for i := 0; i < 5; i++ {
		round()
	}
	if n := fk.count(fsm.TypeLeasesExpire); n != 1 {
		t.Fatalf("LeasesExpire proposed %d times, want 1 (none once nothing is old)", n)
	}
}

func TestLeaseExpiryStopsWithLeadership(t *testing.T) {
	fk := newFake()
	fk.release()
	clk := clock.NewFake(t0)
	l := New(fk, Config{Clock: clk})
	ctx, cancel := context.WithCancel(context.Background())
	l.Start(ctx)
	if !clk.BlockUntil(1, 5*time.Second) {
		t.Fatal("the expiry ticker was never armed")
	}
	cancel() // leadership (the caller's context) ends
	testkit.Eventually(t, 5*time.Second, "ticker stopped", func() bool { return clk.Waiters() == 0 })
	l.Stop()
	if l.Leading() || l.Ready() {
		t.Fatal("still leading after Stop")
	}
}

// TestIntentExpiry: an intent no rack agent answered is ended by the
// leader's round after its expiry, once; nothing is proposed before.
func TestIntentExpiry(t *testing.T) {
	fk := newFake()
	fk.release()
	clk := clock.NewFake(t0)
	fk.must(t, fsm.RackPut{Create: true, Rack: proto.Rack{Name: "r1", Subnet: "10.9.0.0/24"}})
	fk.must(t, fsm.NodeCreate{Node: proto.Node{UUID: "11111111-1111-4111-8111-111111111111", Name: "n1", MACs: []string{"52:54:00:99:00:02"},
		Rack: "r1", ProvisionState: proto.StateEnrolled, BMC: proto.BMC{Driver: proto.DriverFake, Address: "b"}}})
	fk.must(t, fsm.NodeIntent{Ref: "n1", Intent: proto.Intent{Action: proto.ActionPower, Power: proto.PowerTargetOn, Agent: "gone", At: t0}})

	round := startExpiryRounds(t, fk, clk)
	for i := 0; i < int(proto.IntentTTL/time.Minute); i++ {
		round()
	}
	if n := fk.count(fsm.TypeIntentsExpire); n != 0 {
		t.Fatalf("proposed IntentsExpire %d times before the intent expired", n)
	}
	round()
	n, _ := fk.store.Node("n1")
	if !n.Intents[0].Done || !strings.Contains(n.Intents[0].Error, "no result from rack agent gone") {
		t.Fatalf("after its expiry: %+v", n.Intents[0])
	}
	for i := 0; i < 3; i++ {
		round()
	}
	if c := fk.count(fsm.TypeIntentsExpire); c != 1 {
		t.Fatalf("IntentsExpire proposed %d times, want once", c)
	}
}

// startExpiryRounds starts leader loops over fk with a one-minute expiry
// round and returns a function that runs one round. The fake clock drops
// a tick nobody has read and Advance does not wait for the loop: it
// advances one tick at a time and waits until the loop has finished that
// round.
func startExpiryRounds(t *testing.T, fk *fake, clk *clock.Fake) func() {
	t.Helper()
	l := New(fk, Config{Clock: clk, LeaseExpiryEvery: time.Minute})
	var rounds atomic.Int64
	l.expiryRound = func() { rounds.Add(1) }
	l.Start(context.Background())
	t.Cleanup(l.Stop)
	// Two waiters: the task loop's ticker and the expiry ticker (one
	// alone may be the task loop's: advancing then misses the expiry).
	if !clk.BlockUntil(2, 5*time.Second) {
		t.Fatal("the expiry ticker was never armed")
	}
	return func() {
		t.Helper()
		want := rounds.Load() + 1
		clk.Advance(time.Minute)
		testkit.Eventually(t, 5*time.Second, fmt.Sprintf("expiry round %d", want), func() bool { return rounds.Load() >= want })
	}
}
