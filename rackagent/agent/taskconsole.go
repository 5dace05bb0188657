package agent

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/metalfleet/metalfleet/proto"
	"github.com/metalfleet/metalfleet/rackagent/bootstate"
	"github.com/metalfleet/metalfleet/rackagent/console"
)

// Console capture during tasks: while a node of the rack runs a task
// (BootNode.Task set) and has a BMC with a serial console (ipmi, or the
// fake driver of labs), the agent that executes the node's intents keeps
// a read-only console client attached to it, so the console manager
// keeps the output of the task's boot (its last LogBytes) and the
// coordinator can read it through the console-log route when the task
// fails. The client never takes the keyboard: an operator attaches
// beside it (interactive, without forcing) and sees the same session.
// It is detached when the task leaves the boot state; the session closes
// then unless an operator is still attached.

// taskConsoleUser names the capture in console reports and the node's
// history.
const taskConsoleUser = "metalfleet-task"

// longSession: a capture whose session ended after this long attaches
// again at once (one that ends sooner waits, with backoff).
const longSession = 5 * time.Second

// taskConsoleShare is the share of the console manager's sessions that
// captures may take: the rest stay for operators.
const taskConsoleShare = 2 // one half

// viewSource is the boot state the captures follow.
type viewSource interface {
	View() *bootstate.View
	Changed() <-chan struct{}
}

// taskConsoles keeps one capture per node with a running task.
type taskConsoles struct {
	m    *console.Manager
	self string
	// mine decides for a node with no intent in the boot state (gossip's
	// split of the rack's nodes; nil: every node).
	mine func(uuid string) bool
	max  int
	log  *slog.Logger
	// retryMin and retryMax bound the wait before attaching again after
	// a failure or the session's end.
	retryMin, retryMax time.Duration

	mu   sync.Mutex
	caps map[string]*capture // by node uuid
	held int                 // captures held back by max, as last logged
	wg   sync.WaitGroup
}

type capture struct {
	task   string
	cancel context.CancelCauseFunc
	done   chan struct{}
}

// Why a capture ends (its context's cause).
var (
	errTaskGone     = errors.New("the task left the boot state")
	errCaptureStops = errors.New("the rack agent stops")
)

func newTaskConsoles(m *console.Manager, self string, mine func(string) bool, maxSessions int, log *slog.Logger) *taskConsoles {
	if maxSessions <= 0 {
		maxSessions = console.DefaultMaxSessions
	}
	return &taskConsoles{m: m, self: self, mine: mine, max: max(1, maxSessions/taskConsoleShare), log: log,
		retryMin: time.Second, retryMax: 30 * time.Second, caps: map[string]*capture{}}
}

// run follows the boot state until ctx ends, then detaches every capture.
func (t *taskConsoles) run(ctx context.Context, src viewSource) error {
	tick := time.NewTicker(10 * time.Second) // captures held back by the bound
	defer tick.Stop()
	defer t.stopAll()
	for {
		ch := src.Changed()
		t.reconcile(ctx, src.View())
		select {
		case <-ctx.Done():
			return nil
		case <-ch:
		case <-tick.C:
		}
	}
}

// wanted maps each node whose console this agent should capture to its
// task's id.
func (t *taskConsoles) wanted(v *bootstate.View) map[string]*proto.BootNode {
	out := map[string]*proto.BootNode{}
	if v == nil {
		return out
	}
	for i := range v.State.Nodes {
		n := &v.State.Nodes[i]
		if n.Task == nil || n.BMC == nil || !hasConsole(n.BMC.Driver) {
			continue
		}
		if t.executes(n) {
			out[n.UUID] = n
		}
	}
	return out
}

// hasConsole: the drivers with a serial console (Redfish has none).
func hasConsole(driver string) bool {
	return driver == proto.DriverIPMI || driver == "" || driver == proto.DriverFake
}

// executes reports whether this agent executes n's intents: the agent of
// its latest intent (the task's power cycle is one), which is the agent
// the coordinator asks for the node's console and its log; for a node
// without an intent, the rack's split.
func (t *taskConsoles) executes(n *proto.BootNode) bool {
	var latest *proto.Intent
	for i := range n.BMC.Intents {
		if in := &n.BMC.Intents[i]; latest == nil || in.Generation > latest.Generation {
			latest = in
		}
	}
	if latest != nil {
		return latest.Agent == t.self
	}
	return t.mine == nil || t.mine(n.UUID)
}

// reconcile starts the captures v wants and stops the others.
func (t *taskConsoles) reconcile(ctx context.Context, v *bootstate.View) {
	want := t.wanted(v)
	t.mu.Lock()
	defer t.mu.Unlock()
	for uuid, c := range t.caps {
		if n, ok := want[uuid]; !ok || n.Task.ID != c.task {
			c.cancel(errTaskGone)
			delete(t.caps, uuid)
		}
	}
	held := 0
	for uuid, n := range want {
		if _, ok := t.caps[uuid]; ok {
			continue
		}
		if len(t.caps) >= t.max {
			held++
			continue
		}
		cctx, cancel := context.WithCancelCause(ctx)
		c := &capture{task: n.Task.ID, cancel: cancel, done: make(chan struct{})}
		t.caps[uuid] = c
		name := n.Name
		if name == "" {
			name = uuid
		}
		t.wg.Add(1)
		go func() {
			defer t.wg.Done()
			defer close(c.done)
			t.capture(cctx, uuid, name, c.task)
		}()
	}
	if held != t.held { // logged when it changes, not at every look
		if held > 0 {
			t.log.Warn("task consoles not captured: too many at once", "held_back", held, "capturing", len(t.caps), "max", t.max)
		} else {
			t.log.Info("every task console is captured", "capturing", len(t.caps))
		}
		t.held = held
	}
}

// capture keeps a read-only client on node's console until ctx ends,
// attaching again after a failure or the session's end.
func (t *taskConsoles) capture(ctx context.Context, node, name, task string) {
	log := t.log.With("node", node, "task", task)
	wait := t.retryMin
	failed := 0
	for ctx.Err() == nil {
		cl, err := t.m.Attach(ctx, console.Request{Node: node, Name: name, User: taskConsoleUser, Mode: console.ReadOnly})
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			failed++
			lvl := slog.LevelDebug
			if failed == 1 || errors.Is(err, console.ErrTooManySessions) {
				lvl = slog.LevelWarn
			}
			log.Log(ctx, lvl, "task console not captured; trying again", "err", err, "retry_in", wait)
		} else {
			if failed > 0 {
				log.Info("task console captured after failures", "failures", failed)
			} else {
				log.Info("task console captured (read-only)")
			}
			failed, wait = 0, t.retryMin
			began := time.Now()
			for { // the manager keeps the log; this client only holds the session
				if _, err := cl.Next(ctx); err != nil {
					break
				}
			}
			cl.Close()
			if ctx.Err() != nil {
				why := context.Cause(ctx)
				if !errors.Is(why, errTaskGone) {
					why = errCaptureStops // the run's context ended
				}
				log.Info("task console capture ended", "why", why.Error())
				return
			}
			if time.Since(began) >= longSession {
				// The boot's output goes on: attach again at once.
				log.Info("task console session ended; attaching again")
				continue
			}
			log.Info("task console session ended; attaching again", "retry_in", wait)
		}
		tm := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			tm.Stop()
			return
		case <-tm.C:
		}
		wait = min(2*wait, t.retryMax)
	}
}

// capturing lists the nodes captured now.
func (t *taskConsoles) capturing() map[string]string {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := map[string]string{}
	for uuid, c := range t.caps {
		out[uuid] = c.task
	}
	return out
}

// stopAll detaches every capture and waits for them.
func (t *taskConsoles) stopAll() {
	t.mu.Lock()
	for uuid, c := range t.caps {
		c.cancel(errCaptureStops)
		delete(t.caps, uuid)
	}
	t.mu.Unlock()
	t.wg.Wait()
}

// runTaskConsoles captures the consoles of the rack's nodes running a
// task, until ctx ends.
func (a *Agent) runTaskConsoles(ctx context.Context) error {
	var mine func(string) bool
	if a.gossip != nil {
		mine = powerSplit{g: a.gossip, self: a.cfg.Name, rack: a.cfg.Rack}.Mine
	}
	t := newTaskConsoles(a.console, a.cfg.Name, mine, console.DefaultMaxSessions, a.log.With("component", "task-console"))
	return t.run(ctx, a.boot)
}
