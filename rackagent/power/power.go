// Package power is the rack agent's side of out-of-band control. It
// executes the BMC intents its rack's boot state names it for (verify,
// power, boot device), each generation at most once across restarts, and
// it polls the power state of the rack's nodes (power sync), reporting
// both through the agent's durable outbox.
//
// Once per generation: before acting on an intent the Manager records
// "started G" for the node in a bolt bucket; after acting it queues the
// result report in the outbox, then records "done G". An intent at or
// below the highest generation started is never acted on again, however
// often the boot state delivers it. A generation started but not done
// (the agent stopped mid-action) is not acted on again at the next start:
// it is reported with RestartedError and the power state read then.
//
// Per BMC one operation runs at a time (a lock per node); every call has a
// timeout (real time: it bounds real I/O); calls that found the BMC
// unreachable or timed out are retried a few times with backoff (on the
// Manager's clock), others never; a power action whose outcome is unknown
// is retried only after the power state was read again and shows it did
// not take effect (and a hard reset never, since the state cannot tell).
// At most Concurrency calls are in flight per agent. Drivers are opened
// once per node and kept; they are reopened when the node's BMC fields
// change and closed when it leaves the boot state.
//
// Power sync reads the power state of the nodes this agent is responsible
// for every SyncInterval (with +-10% jitter; the first round within 10 s
// of start) and reports a ReportPower
// only when the state or the error changed; a BMC that does not answer is
// reported as power unknown with the error, never as its last state.
//
// Credentials are used only to open drivers: they are never logged,
// reported or exposed in metrics.
package power

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"go.etcd.io/bbolt"

	"github.com/metalfleet/metalfleet/cluster/clock"
	"github.com/metalfleet/metalfleet/proto"
	"github.com/metalfleet/metalfleet/rackagent/bmc"
	"github.com/metalfleet/metalfleet/rackagent/bootstate"
)

// RestartedError is the Error of an intent's report when the agent
// stopped between starting the action and recording its result.
const RestartedError = "the rack agent restarted during the action; outcome unknown"

// Reporter queues a report durably: when ReportNow returns nil the report
// is on disk and will reach the coordinator (the agent's outbox).
type Reporter interface {
	ReportNow(r proto.AgentReport) error
}

// Source is the rack boot state: *bootstate.Store.
type Source interface {
	View() *bootstate.View
	Changed() <-chan struct{}
	// Synced reports whether the state came from a coordinator since
	// start: new intents are acted on only then, never from a state saved
	// on disk before a restart.
	Synced() bool
}

// Config configures a Manager. Zero fields take the defaults.
type Config struct {
	// Agent is this agent's name: it executes the intents naming it.
	Agent string
	// DB holds the record of the generations started and done.
	DB *bbolt.DB
	// Reporter queues results and power changes (required).
	Reporter Reporter
	Clock    clock.Clock
	Logger   *slog.Logger

	// CallTimeout bounds one driver call (default 10 s).
	CallTimeout time.Duration
	// Tries is how often a call that found the BMC unreachable or timed
	// out is made in all (default 3); Backoff is the wait after the first
	// failure, doubled after each (default 1 s).
	Tries   int
	Backoff time.Duration
	// Concurrency bounds the BMC calls in flight (default 32).
	Concurrency int
	// SettleTimeout bounds the wait for the power to reach the state a
	// power action asks for (default 60 s); SoftOffTimeout for a soft off,
	// which waits for the operating system (default 5 min).
	// SettleInterval spaces the reads while waiting (default 2 s).
	SettleTimeout  time.Duration
	SoftOffTimeout time.Duration
	SettleInterval time.Duration
	// SyncInterval is the power sync period (0: no power sync).
	SyncInterval time.Duration
	// Mine says whether this agent polls a node (nil: every node of its
	// rack). Intents name their agent and need no split.
	Mine func(uuid string) bool
}

func (c Config) withDefaults() Config {
	if c.CallTimeout <= 0 {
		c.CallTimeout = 10 * time.Second
	}
	if c.Tries <= 0 {
		c.Tries = 3
	}
	if c.Backoff <= 0 {
		c.Backoff = time.Second
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 32
	}
	if c.SettleTimeout <= 0 {
		c.SettleTimeout = 60 * time.Second
	}
	if c.SoftOffTimeout <= 0 {
		c.SoftOffTimeout = 5 * time.Minute
	}
	if c.SettleInterval <= 0 {
		c.SettleInterval = 2 * time.Second
	}
	c.Clock = clock.Or(c.Clock)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Stats are the Manager's counters.
type Stats struct {
	SyncRounds   int64 // power sync rounds finished
	Polls        int64 // power sync reads
	PollErrors   int64 // power sync reads that failed
	PowerReports int64 // power changes reported
	Intents      int64 // intents executed (reported), restarts included
	IntentErrors int64 // intents whose result is an error
	Calls        int64 // driver calls made (each try)
	CallErrors   int64 // driver calls that failed
	Retries      int64 // calls made again after unreachable or timeout
	InFlight     int64 // driver calls in flight now
}

type counters struct {
	rounds, polls, pollErrors, powerReports, intents, intentErrors atomic.Int64
	calls, callErrors, retries, inflight                           atomic.Int64
}

// Manager executes intents and runs power sync for one rack agent.
type Manager struct {
	cfg Config
	clk clock.Clock
	log *slog.Logger
	led *ledger
	sem chan struct{}
	st  counters

	src Source // set by Run

	mu    sync.Mutex
	conns map[string]*conn // node uuid -> its BMC connection
	busy  map[string]bool  // a worker executes the node's intents
	seq   map[string]uint64
	last  map[string]observation // power sync: what was last reported
	wg    sync.WaitGroup
	// stalled tells Run that a worker stopped on a failed record write.
	stalled chan struct{}
}

// observation is a node's power as last reported.
type observation struct {
	state proto.PowerState
	err   string
	kind  proto.BMCErrorKind
}

// New opens the intent record in cfg.DB.
func New(cfg Config) (*Manager, error) {
	if cfg.DB == nil || cfg.Reporter == nil {
		return nil, errors.New("power: a database and a reporter are required")
	}
	if cfg.Agent == "" {
		return nil, errors.New("power: the agent's name is required")
	}
	cfg = cfg.withDefaults()
	led, err := openLedger(cfg.DB, cfg.Clock.Now())
	if err != nil {
		return nil, err
	}
	return &Manager{cfg: cfg, clk: cfg.Clock, log: cfg.Logger, led: led, sem: make(chan struct{}, cfg.Concurrency),
		conns: map[string]*conn{}, busy: map[string]bool{}, seq: map[string]uint64{}, last: map[string]observation{},
		stalled: make(chan struct{}, 1)}, nil
}

// Stats returns the counters.
func (m *Manager) Stats() Stats {
	return Stats{SyncRounds: m.st.rounds.Load(), Polls: m.st.polls.Load(), PollErrors: m.st.pollErrors.Load(), PowerReports: m.st.powerReports.Load(),
		Intents: m.st.intents.Load(), IntentErrors: m.st.intentErrors.Load(), Calls: m.st.calls.Load(),
		CallErrors: m.st.callErrors.Load(), Retries: m.st.retries.Load(), InFlight: m.st.inflight.Load()}
}

// Run follows src until ctx ends: it executes new intents as each boot
// state arrives and runs power sync. It returns once every action it
// started has returned, with the drivers closed.
func (m *Manager) Run(ctx context.Context, src Source) error {
	m.src = src
	if m.cfg.SyncInterval > 0 {
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			m.syncLoop(ctx)
		}()
	}
	var retry <-chan time.Time
	for {
		changed := src.Changed()
		m.refresh(ctx)
		for waiting := true; waiting; {
			// Synced is set just after the first state from a
			// coordinator is swapped in: until then look again every
			// second.
			var again <-chan time.Time
			if !src.Synced() {
				again = m.clk.After(time.Second)
			}
			select {
			case <-ctx.Done():
				m.wg.Wait()
				m.closeAll()
				return nil
			case <-changed:
				waiting = false
			case <-again:
				waiting = false
			case <-m.stalled:
				// A worker could not write the record of generations
				// (disk full, an I/O error) and left its node's intents
				// waiting: look again in a while, not only at the next
				// boot state.
				retry = m.clk.After(5 * time.Second)
			case <-retry:
				retry, waiting = nil, false
			}
		}
	}
}

// refresh brings the drivers in step with the current boot state and
// starts a worker for each node with something to do.
func (m *Manager) refresh(ctx context.Context) {
	v := m.src.View()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.updateConns(v)
	todo := map[string]bool{}
	for _, uuid := range m.led.unfinished() {
		todo[uuid] = true
	}
	if v != nil && m.src.Synced() {
		for i := range v.State.Nodes {
			n := &v.State.Nodes[i]
			if n.BMC != nil && m.pendingLocked(n) != nil {
				todo[n.UUID] = true
			}
		}
	}
	for uuid := range todo {
		if m.busy[uuid] || ctx.Err() != nil {
			continue
		}
		m.busy[uuid] = true
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			m.worker(ctx, uuid)
		}()
	}
}

// pendingLocked is n's next intent for this agent: the lowest generation
// above the highest started, not done; nil while an intent of a lower
// generation held by another agent (the rack's agents changed between
// two requests) is not done, so a node's intents run in the order they
// were made and never two at once.
func (m *Manager) pendingLocked(n *proto.BootNode) *proto.Intent {
	started := m.led.get(n.UUID).Started
	var next *proto.Intent
	var othersLowest uint64
	for i := range n.BMC.Intents {
		in := &n.BMC.Intents[i]
		if in.Done {
			continue
		}
		if in.Agent != m.cfg.Agent {
			if othersLowest == 0 || in.Generation < othersLowest {
				othersLowest = in.Generation
			}
			continue
		}
		if in.Generation <= started {
			continue
		}
		if next == nil || in.Generation < next.Generation {
			next = in
		}
	}
	if next != nil && othersLowest != 0 && othersLowest < next.Generation {
		return nil
	}
	return next
}

// lapsed says why in must not be acted on, if so: it expired, or it was
// made before this agent's record of actions began (a rebuilt agent may
// have acted on it before and lost the record with its data directory).
func (m *Manager) lapsed(in proto.Intent) string {
	now := m.clk.Now()
	if !in.Expires.IsZero() && now.After(in.Expires) {
		return fmt.Sprintf("the intent expired at %s before this agent could act: not executed", in.Expires.UTC().Format(time.RFC3339))
	}
	if !in.At.IsZero() && in.At.Before(m.led.created) {
		return fmt.Sprintf("the intent (made %s) is older than this agent's record of actions (begun %s, a new data directory): not executed, as it may have run before",
			in.At.UTC().Format(time.RFC3339), m.led.created.Format(time.RFC3339))
	}
	return ""
}

// job is one thing a worker does for a node.
type job struct {
	recover bool // report an unfinished generation (RestartedError)
	rec     record
	intent  proto.Intent
}

// worker executes a node's intents in generation order, one at a time,
// reading the current boot state before each.
func (m *Manager) worker(ctx context.Context, uuid string) {
	for ctx.Err() == nil {
		m.mu.Lock()
		j, ok := m.nextJob(uuid)
		if !ok {
			delete(m.busy, uuid)
			m.mu.Unlock()
			return
		}
		m.seq[uuid]++
		m.mu.Unlock()
		var err error
		if j.recover {
			err = m.recoverJob(ctx, uuid, j.rec)
		} else {
			err = m.execute(ctx, uuid, j.intent)
		}
		m.mu.Lock()
		m.seq[uuid]++
		m.mu.Unlock()
		if err != nil {
			m.mu.Lock()
			delete(m.busy, uuid) // before the retry is asked for: it must find the node free
			m.mu.Unlock()
			if ctx.Err() == nil {
				m.log.Error("bmc intent: the record of generations could not be written; the node's intents wait, trying again in 5s",
					"node", uuid, "err", err)
				select {
				case m.stalled <- struct{}{}:
				default: // a retry is already due
				}
			}
			return
		}
	}
	m.mu.Lock()
	delete(m.busy, uuid)
	m.mu.Unlock()
}

// nextJob is uuid's next job, under m.mu.
func (m *Manager) nextJob(uuid string) (job, bool) {
	r := m.led.get(uuid)
	if r.Started > r.Done {
		return job{recover: true, rec: r}, true
	}
	v := m.src.View()
	if v == nil || !m.src.Synced() {
		return job{}, false
	}
	n, ok := v.NodeByUUID(uuid)
	if !ok || n.BMC == nil {
		return job{}, false
	}
	in := m.pendingLocked(n)
	if in == nil {
		return job{}, false
	}
	return job{intent: *in}, true
}

// execute acts on one intent: started, act, report, done. An error is
// the record's (or ctx's): the result, good or bad, is in the report.
func (m *Manager) execute(ctx context.Context, uuid string, in proto.Intent) error {
	if err := m.led.start(uuid, in.Generation, in.Action); err != nil {
		return err
	}
	log := m.log.With("node", uuid, "generation", in.Generation, "action", in.Action)
	if in.Power != "" {
		log = log.With("power", in.Power)
	}
	r := proto.AgentReport{Kind: proto.ReportBMC, Node: uuid, Action: in.Action, Generation: in.Generation}
	if why := m.lapsed(in); why != "" {
		log.Warn("bmc intent not executed", "why", why)
		r.Error, r.ErrorKind = why, proto.BMCErrExpired
		if err := m.report(ctx, r); err != nil {
			return err
		}
		return m.led.done(uuid, in.Generation)
	}
	log.Info("bmc intent: executing")
	var err error
	switch in.Action {
	case proto.ActionVerify:
		var info proto.BMCInfo
		err = m.retry(ctx, uuid, func(ctx context.Context, d bmc.Driver) (e error) { info, e = d.Identify(ctx); return })
		if err == nil {
			r.BMCInfo = cleanInfo(info)
			r.PowerState, err = m.readPower(ctx, uuid)
		}
	case proto.ActionPower:
		r.PowerState, err = m.power(ctx, uuid, in.Power)
	case proto.ActionBootDevice:
		if in.Boot == nil {
			err = bmc.Errorf("set boot device", proto.BMCErrRefused, "the intent names no boot device")
		} else if err = in.Boot.Check(); err == nil {
			spec := *in.Boot
			err = m.retry(ctx, uuid, func(ctx context.Context, d bmc.Driver) error { return d.SetBootDevice(ctx, spec) })
		}
	default:
		err = bmc.Errorf(string(in.Action), proto.BMCErrUnsupported, "this agent does not know the action %q", in.Action)
	}
	if ctx.Err() != nil {
		if err != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
			// Stopped mid-action: the outcome is reported at the next
			// start, as unknown.
			return ctx.Err()
		}
		// The action finished as the agent began to stop: its result is
		// known, so it is queued now rather than called unknown later.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
	}
	if err != nil {
		r.Error, r.ErrorKind = errText(err), bmc.KindOf(err)
		log.Warn("bmc intent failed", "kind", r.ErrorKind, "err", err)
	} else {
		log.Info("bmc intent done", "power_state", r.PowerState)
	}
	if err := m.report(ctx, r); err != nil {
		return err
	}
	m.st.intents.Add(1)
	if r.Error != "" {
		m.st.intentErrors.Add(1)
	}
	m.noteIntentPower(uuid, r.PowerState)
	return m.led.done(uuid, in.Generation)
}

// recoverJob reports a generation started before a restart and not
// recorded done: its outcome is unknown; the power is read now.
func (m *Manager) recoverJob(ctx context.Context, uuid string, rec record) error {
	r := proto.AgentReport{Kind: proto.ReportBMC, Node: uuid, Action: rec.Action, Generation: rec.Started,
		Error: RestartedError, PowerState: proto.PowerUnknown}
	m.mu.Lock()
	_, has := m.conns[uuid]
	m.mu.Unlock()
	if has {
		if ps, err := m.readPower(ctx, uuid); err == nil {
			r.PowerState = ps
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	m.log.Warn("bmc intent: the agent stopped during it; reported with its outcome unknown", "node", uuid,
		"generation", rec.Started, "action", rec.Action, "power_state", r.PowerState)
	if err := m.report(ctx, r); err != nil {
		return err
	}
	m.st.intents.Add(1)
	m.st.intentErrors.Add(1)
	m.noteIntentPower(uuid, r.PowerState)
	return m.led.done(uuid, rec.Started)
}

// report queues r durably, trying again (with backoff, on the clock)
// while the outbox refuses it: the action is done and must not be
// repeated, so its result must not be lost either.
func (m *Manager) report(ctx context.Context, r proto.AgentReport) error {
	wait := m.cfg.Backoff
	for {
		r.Time = m.clk.Now().UTC()
		err := m.cfg.Reporter.ReportNow(r)
		if err == nil {
			return nil
		}
		m.log.Error("bmc report not queued; trying again", "node", r.Node, "kind", r.Kind, "generation", r.Generation, "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-m.clk.After(wait):
		}
		wait = min(wait*2, 30*time.Second)
	}
}

// noteIntentPower records the power an intent reported as what power
// sync last reported, so power sync reports only later changes.
func (m *Manager) noteIntentPower(uuid string, ps proto.PowerState) {
	if ps != proto.PowerOn && ps != proto.PowerOff {
		return
	}
	m.mu.Lock()
	if _, ok := m.conns[uuid]; ok {
		m.last[uuid] = observation{state: ps}
	}
	m.mu.Unlock()
}

// power takes uuid's power to target and waits for it to settle.
func (m *Manager) power(ctx context.Context, uuid string, target proto.PowerTarget) (proto.PowerState, error) {
	var (
		act  bmc.PowerAction
		want = proto.PowerOn
		wait = m.cfg.SettleTimeout
	)
	switch target {
	case proto.PowerTargetOn:
		act = bmc.PowerOn
	case proto.PowerTargetOff:
		act, want = bmc.PowerOff, proto.PowerOff
	case proto.PowerTargetSoftOff:
		act, want, wait = bmc.PowerSoftOff, proto.PowerOff, m.cfg.SoftOffTimeout
	case proto.PowerTargetReboot:
		// On: a hard reset, never off then on. Off: power on.
		ps, err := m.readPower(ctx, uuid)
		if err != nil {
			return proto.PowerUnknown, err
		}
		act = bmc.PowerOn
		if ps == proto.PowerOn {
			act = bmc.PowerReset
		}
	default:
		return proto.PowerUnknown, bmc.Errorf("power", proto.BMCErrUnsupported, "unknown power target %q: want on, off, soft-off or reboot", target)
	}
	if err := m.act(ctx, uuid, act, want); err != nil {
		ps := proto.PowerUnknown
		if p, rerr := m.readOnce(ctx, uuid); rerr == nil {
			ps = p
		}
		return ps, err
	}
	return m.settle(ctx, uuid, act, want, wait)
}

// act performs a power action, retrying after unreachable or timeout only
// once the power state, read again, shows the action did not take effect.
func (m *Manager) act(ctx context.Context, uuid string, a bmc.PowerAction, want proto.PowerState) error {
	wait := m.cfg.Backoff
	for try := 1; ; try++ {
		// A power action may take longer than a read: a Redfish BMC
		// answers 202 and the driver follows its task monitor.
		err := m.call(withCallTimeout(ctx, m.cfg.SettleTimeout), uuid, func(ctx context.Context, d bmc.Driver) error { return d.Power(ctx, a) })
		if err == nil || ctx.Err() != nil {
			return err
		}
		if !retryable(err) {
			if a == bmc.PowerReset && bmc.KindOf(err) == proto.BMCErrRefused {
				// Refused: the node may have lost its power since it was
				// read on. An off node was not reset; a reboot of an off
				// node powers it on.
				if ps, rerr := m.readPower(ctx, uuid); rerr == nil && ps == proto.PowerOff && try < m.cfg.Tries {
					a = bmc.PowerOn
					continue
				}
			}
			return err
		}
		// The BMC may have acted: read before anything else.
		ps, rerr := m.readPower(ctx, uuid)
		if rerr != nil {
			return &bmc.Error{Op: "power " + string(a), Kind: bmc.KindOf(err),
				Err: fmt.Errorf("%v; the power state could not be read after it: %v", detail(err), rerr)}
		}
		if a == bmc.PowerReset {
			if ps == proto.PowerOn {
				// Whether it was reset cannot be told from the state, and
				// a second reset is not what was asked for.
				return &bmc.Error{Op: "power reset", Kind: bmc.KindOf(err),
					Err: fmt.Errorf("%v; the node is on and whether it was reset is unknown (not tried again)", detail(err))}
			}
			a = bmc.PowerOn // it is off: what a reboot of an off node does
		} else if ps == want {
			return nil // the action took effect
		}
		if try >= m.cfg.Tries {
			return err
		}
		if err := m.backoff(ctx, &wait); err != nil {
			return err
		}
	}
}

// detail is err without its *bmc.Error prefix (op and kind), for an
// error that wraps it with the same op and kind.
func detail(err error) error {
	var be *bmc.Error
	if errors.As(err, &be) {
		return be.Err
	}
	return err
}

// settle reads the power until it is want, for at most limit.
func (m *Manager) settle(ctx context.Context, uuid string, a bmc.PowerAction, want proto.PowerState, limit time.Duration) (proto.PowerState, error) {
	deadline := m.clk.Now().Add(limit)
	last := proto.PowerUnknown
	var lastErr error
	for {
		ps, err := m.readOnce(ctx, uuid)
		if err == nil && ps == want {
			return ps, nil
		}
		if ctx.Err() != nil {
			return proto.PowerUnknown, ctx.Err()
		}
		if err == nil {
			last, lastErr = ps, nil
		} else {
			last, lastErr = proto.PowerUnknown, err
		}
		if !m.clk.Now().Before(deadline) {
			still := "still " + string(last)
			if lastErr != nil {
				still = "its power state could not be read: " + lastErr.Error()
			}
			return last, &bmc.Error{Op: "power " + string(a), Kind: proto.BMCErrTimeout,
				Err: fmt.Errorf("the BMC accepted it but the power did not become %s within %s: %s", want, limit, still)}
		}
		select {
		case <-ctx.Done():
			return proto.PowerUnknown, ctx.Err()
		case <-m.clk.After(m.cfg.SettleInterval):
		}
	}
}

// readPower reads the power state with retries.
func (m *Manager) readPower(ctx context.Context, uuid string) (proto.PowerState, error) {
	ps := proto.PowerUnknown
	err := m.retry(ctx, uuid, func(ctx context.Context, d bmc.Driver) (e error) { ps, e = d.PowerState(ctx); return })
	if err != nil {
		return proto.PowerUnknown, err
	}
	return ps, nil
}

// readOnce reads the power state with one call.
func (m *Manager) readOnce(ctx context.Context, uuid string) (proto.PowerState, error) {
	ps := proto.PowerUnknown
	err := m.call(ctx, uuid, func(ctx context.Context, d bmc.Driver) (e error) { ps, e = d.PowerState(ctx); return })
	if err != nil {
		return proto.PowerUnknown, err
	}
	return ps, nil
}

// retryable: only a BMC that did not answer is asked again.
func retryable(err error) bool {
	k := bmc.KindOf(err)
	return k == proto.BMCErrUnreachable || k == proto.BMCErrTimeout
}

// retry makes a call up to Tries times while it fails unreachable or
// timed out, waiting Backoff, then twice that, between tries.
func (m *Manager) retry(ctx context.Context, uuid string, fn func(context.Context, bmc.Driver) error) error {
	wait := m.cfg.Backoff
	for try := 1; ; try++ {
		err := m.call(ctx, uuid, fn)
		if err == nil || !retryable(err) || try >= m.cfg.Tries || ctx.Err() != nil {
			return err
		}
		if err := m.backoff(ctx, &wait); err != nil {
			return err
		}
	}
}

// backoff counts a retry and waits *wait on the clock, doubling it for
// the next; it returns ctx's error if ctx ends first.
func (m *Manager) backoff(ctx context.Context, wait *time.Duration) error {
	m.st.retries.Add(1)
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-m.clk.After(*wait):
	}
	*wait *= 2
	return nil
}

// maxErrorLen bounds an error's text in a report (proto's
// MaxBMCErrorLen); maxInfoLen each field of a BMC's identity.
const (
	maxErrorLen = 1024
	maxInfoLen  = 128
)

// errText is err's text as a report carries it: UTF-8 without control
// characters (a driver's error may hold a tool's multi-line output), at
// most maxErrorLen bytes, cut at a character boundary.
func errText(err error) string {
	s := strings.ToValidUTF8(err.Error(), "?")
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
	if len(s) <= maxErrorLen {
		return s
	}
	cut := maxErrorLen - 3
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}

// cleanInfo makes a BMC's identity printable ASCII of bounded length, as
// a report carries it: a BMC names itself however it likes.
func cleanInfo(i proto.BMCInfo) *proto.BMCInfo {
	clean := func(s string) string {
		b := []byte(s)
		for j, c := range b {
			switch {
			case c < 0x20 || c == 0x7f:
				b[j] = ' '
			case c > 0x7f:
				b[j] = '?'
			}
		}
		if len(b) > maxInfoLen {
			b = b[:maxInfoLen]
		}
		return strings.TrimSpace(string(b))
	}
	return &proto.BMCInfo{Vendor: clean(i.Vendor), Model: clean(i.Model), FirmwareVersion: clean(i.FirmwareVersion), Protocol: clean(i.Protocol)}
}

// jitter is d +-10%.
func jitter(d time.Duration) time.Duration {
	return d - d/10 + time.Duration(rand.Int64N(int64(d/5)+1))
}
