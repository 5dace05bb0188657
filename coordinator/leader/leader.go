// Package leader runs the loops only the Raft leader runs, started when a
// server wins an election and stopped when it loses leadership: the
// barrier that makes a new leader ready for consistent reads, recording
// the leader's own addresses, storing the bootstrap admin token, and
// expiring leases of agents that never came back.
package leader

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/metalfleet/metalfleet/cluster/clock"
	"github.com/metalfleet/metalfleet/coordinator/fsm"
	"github.com/metalfleet/metalfleet/coordinator/state"
	"github.com/metalfleet/metalfleet/proto"
)

// Backend is what the loops need from the coordinator.
type Backend interface {
	// Apply proposes a command and waits until it is applied.
	Apply(ctx context.Context, c fsm.Command) (any, error)
	// Store is the local state.
	Store() *state.Store
	// Barrier returns once every entry committed before it (by this
	// leader or a predecessor) has been applied to the local store.
	Barrier(ctx context.Context) error
	// Term is the current Raft term.
	Term() uint64
}

// Config configures the loops. Zero fields take the defaults.
type Config struct {
	// Self is this server's record, written on every election.
	Self proto.Server
	// BootstrapSecretHash, if set, is stored as the admin-bootstrap
	// token when the token table is empty.
	BootstrapSecretHash string
	// LeaseExpiryEvery is how often leases past fsm.LeaseKeep, and
	// intents past their expiry, are looked for (default 1 min).
	LeaseExpiryEvery time.Duration
	// Retry bounds the backoff of a failed step (default 2 s).
	Retry time.Duration
	// Tasks, if set, lets the task loop power off a node whose task timed
	// out and fetch the console log of a failed task; TaskEvery is how
	// often it runs (default 10 s).
	Tasks     TaskHelper
	TaskEvery time.Duration
	Clock     clock.Clock
	Logger    *slog.Logger
}

// Leader starts and stops the leader loops with leadership and tells
// whether this server is ready for consistent reads.
type Leader struct {
	b   Backend
	cfg Config
	log *slog.Logger
	clk clock.Clock

	mu        sync.Mutex
	cancel    context.CancelFunc // stops the running loops; nil when not leading
	done      chan struct{}      // closed when the running loops have returned
	readyTerm uint64             // term whose barrier has been applied; 0: none
	changed   chan struct{}      // closed and replaced when readiness changes
	// barrierTook is how long the last leadership waited for its
	// barrier: how much a failover's reads were held for it.
	barrierTook time.Duration
	// expiryRound, if set (tests only), is called after each round of
	// the lease expiry loop.
	expiryRound func()
}

// New returns loops over b; Watch runs them.
func New(b Backend, cfg Config) *Leader {
	if cfg.LeaseExpiryEvery <= 0 {
		cfg.LeaseExpiryEvery = time.Minute
	}
	if cfg.Retry <= 0 {
		cfg.Retry = 2 * time.Second
	}
	if cfg.TaskEvery <= 0 {
		cfg.TaskEvery = 10 * time.Second
	}
	l := &Leader{b: b, cfg: cfg, clk: clock.Or(cfg.Clock), log: cfg.Logger, changed: make(chan struct{})}
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	return l
}

// Watch follows leadership notifications (Raft's LeaderCh: true on
// winning an election, false on losing leadership) until ctx ends, then
// stops the loops. Every true restarts them, so leadership lost and won
// again between two reads of the channel still runs a fresh barrier.
func (l *Leader) Watch(ctx context.Context, leaderCh <-chan bool) {
	defer l.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case leading := <-leaderCh:
			l.Stop()
			if leading {
				l.Start(ctx)
			}
			l.log.Info("leadership changed", "leader", leading)
		}
	}
}

// Start runs the loops until Stop or ctx ends. A running set is stopped
// first.
func (l *Leader) Start(ctx context.Context) {
	l.Stop()
	lctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	l.mu.Lock()
	l.cancel, l.done = cancel, done
	l.mu.Unlock()
	go func() {
		defer close(done)
		l.run(lctx)
	}()
}

// Stop stops the loops, waits for them to return and clears readiness.
func (l *Leader) Stop() {
	l.mu.Lock()
	cancel, done := l.cancel, l.done
	l.cancel, l.done = nil, nil
	l.setReadyLocked(0)
	l.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}

// Leading reports whether the loops run.
func (l *Leader) Leading() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cancel != nil
}

// Ready reports whether this server, as leader, has applied everything
// committed before its election: its barrier has been applied in the
// current term. Only then may it answer a consistent read from its store.
func (l *Leader) Ready() bool {
	l.mu.Lock()
	t := l.readyTerm
	l.mu.Unlock()
	return t != 0 && t == l.b.Term()
}

// WaitReady waits until Ready or ctx ends, and reports Ready.
func (l *Leader) WaitReady(ctx context.Context) bool {
	for {
		l.mu.Lock()
		ch := l.changed
		l.mu.Unlock()
		if l.Ready() {
			return true
		}
		select {
		case <-ctx.Done():
			return l.Ready()
		case <-ch:
		}
	}
}

// BarrierTook is how long the last leadership waited, from winning the
// election, until its barrier was applied.
func (l *Leader) BarrierTook() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.barrierTook
}

func (l *Leader) setReadyLocked(term uint64) {
	if l.readyTerm == term {
		return
	}
	l.readyTerm = term
	close(l.changed)
	l.changed = make(chan struct{})
}

// run is one leadership: the barrier first, then the steps that write,
// then the periodic loops until ctx ends. Each step is idempotent and
// retried, so a leader that dies half-way leaves its successor nothing to
// undo.
func (l *Leader) run(ctx context.Context) {
	start := l.clk.Now()
	if !l.retry(ctx, "barrier", func() error {
		term := l.b.Term()
		if err := l.b.Barrier(ctx); err != nil {
			return err
		}
		l.mu.Lock()
		// Only for the leadership that ran it: a term that moved on
		// since needs its own barrier.
		if ctx.Err() == nil && l.b.Term() == term {
			l.setReadyLocked(term)
			l.barrierTook = l.clk.Now().Sub(start)
		}
		l.mu.Unlock()
		return nil
	}) {
		return
	}
	l.log.Info("ready for consistent reads", "barrier_took", l.BarrierTook())
	if l.cfg.Self.ID != "" && !l.retry(ctx, "record self", func() error {
		_, err := l.b.Apply(ctx, fsm.ServerPut{Server: l.cfg.Self})
		return err
	}) {
		return
	}
	if l.cfg.BootstrapSecretHash != "" && len(l.b.Store().Tokens()) == 0 {
		// Only into an empty token table: an operator who has since
		// revoked the bootstrap token does not get it back on a restart.
		if !l.retry(ctx, "bootstrap admin token", func() error {
			_, err := l.b.Apply(ctx, fsm.TokenCreate{
				Token:      proto.Token{ID: "admin-bootstrap", Description: "created by --bootstrap", Role: proto.RoleAdmin, CreatedAt: l.clk.Now().UTC()},
				SecretHash: l.cfg.BootstrapSecretHash,
				IfAbsent:   true,
			})
			return err
		}) {
			return
		}
	}
	go l.taskLoop(ctx)
	go l.admitLoop(ctx)
	l.expireLeases(ctx)
}

// expireLeases forgets, every LeaseExpiryEvery, the leases that expired
// more than fsm.LeaseKeep ago: leases of agents that died with them and
// never came back to report their end. It proposes nothing when no lease
// is that old, so an idle fleet writes no empty entries.
func (l *Leader) expireLeases(ctx context.Context) {
	tick := l.clk.NewTicker(l.cfg.LeaseExpiryEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C():
		}
		l.expireRound(ctx)
		l.expireIntents(ctx)
		if l.expiryRound != nil {
			l.expiryRound()
		}
	}
}

// expireRound is one round of expireLeases.
func (l *Leader) expireRound(ctx context.Context) {
	before := l.clk.Now().Add(-fsm.LeaseKeep)
	if !l.anyLeaseBefore(before) {
		return
	}
	v, err := l.b.Apply(ctx, fsm.LeasesExpire{Before: before})
	if err != nil {
		l.log.Warn("lease expiry failed; trying again next round", "err", err)
		return
	}
	if r, ok := v.(*fsm.LeasesExpireResult); ok {
		l.log.Info("expired old leases", "count", r.Expired, "before", before)
	}
}

// expireIntents ends the intents no rack agent answered by their expiry
// (fsm.IntentsExpire), at most 1,000 a round; it proposes nothing when
// there are none.
func (l *Leader) expireIntents(ctx context.Context) {
	now := l.clk.Now().UTC()
	refs := l.b.Store().ExpiredIntents(now, 1000)
	if len(refs) == 0 {
		return
	}
	c := fsm.IntentsExpire{Now: now, Items: make([]fsm.IntentReference, len(refs))}
	for i, r := range refs {
		c.Items[i] = fsm.IntentReference{Node: r.Node, Generation: r.Generation}
	}
	v, err := l.b.Apply(ctx, c)
	if err != nil {
		l.log.Warn("intent expiry failed; trying again next round", "err", err)
		return
	}
	if r, ok := v.(*fsm.IntentsExpireResult); ok {
		l.log.Warn("intents no rack agent answered in time ended, outcome unknown", "count", r.Expired)
	}
}

// anyLeaseBefore reports whether some rack holds a lease that expired
// before t.
func (l *Leader) anyLeaseBefore(t time.Time) bool {
	st := l.b.Store()
	for _, r := range st.Racks() {
		for _, ls := range st.Leases(r.Name) {
			if !ls.Expires.IsZero() && ls.Expires.Before(t) {
				return true
			}
		}
	}
	return false
}

// retry runs fn until it succeeds or ctx ends (false), backing off from
// 50 ms up to Retry.
func (l *Leader) retry(ctx context.Context, what string, fn func() error) bool {
	for backoff := 50 * time.Millisecond; ; backoff = min(backoff*2, l.cfg.Retry) {
		if ctx.Err() != nil {
			return false
		}
		err := fn()
		if err == nil {
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		l.log.Warn("leader step failed; retrying", "step", what, "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return false
		case <-l.clk.After(backoff):
		}
	}
}
