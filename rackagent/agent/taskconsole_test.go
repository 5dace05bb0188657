package agent

import (
	"context"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/metalfleet/metalfleet/coordinator/coordtest"
	"github.com/metalfleet/metalfleet/ops/testkit"
	"github.com/metalfleet/metalfleet/proto"
	"github.com/metalfleet/metalfleet/rackagent/bootstate"
	"github.com/metalfleet/metalfleet/rackagent/console"
	"github.com/metalfleet/metalfleet/rackagent/sim"
)

const (
	tcNode1 = "11111111-0000-4000-8000-000000000001"
	tcNode2 = "11111111-0000-4000-8000-000000000002"
	tcNode3 = "11111111-0000-4000-8000-000000000003"
	tcNode4 = "11111111-0000-4000-8000-000000000004"
)

// consoleReports records console reports.
type consoleReports struct {
	mu   sync.Mutex
	reps []proto.AgentReport
}

func (c *consoleReports) add(r proto.AgentReport) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reps = append(c.reps, r)
}

func (c *consoleReports) events(user string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, r := range c.reps {
		if r.User == user {
			out = append(out, r.Event+" "+r.Mode)
		}
	}
	return out
}

// bootStore is a boot-state store in a temporary bolt file.
func bootStore(t *testing.T) *bootstate.Store {
	t.Helper()
	db, err := bbolt.Open(filepath.Join(t.TempDir(), "agent.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	s, err := bootstate.Open(db, "r1", nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func taskBMC(b proto.BMC, agent string) *proto.BootBMC {
	return &proto.BootBMC{BMC: b, Intents: []proto.Intent{
		{Generation: 4, Action: proto.ActionBootDevice, Agent: "older", Done: true},
		{Generation: 5, Action: proto.ActionPower, Power: proto.PowerTargetReboot, Agent: agent}}}
}

// TestTaskConsoleCapture: over real IPMI SOL (a simulated host's BMC), the
// agent of a node's intents captures its console while it has a task, and
// only then; an operator attaches beside the capture with the keyboard.
func TestTaskConsoleCapture(t *testing.T) {
	h := sim.NewHost(&sim.Machine{})
	defer h.Close()
	if err := h.StartBMC(sim.BMCConfig{}); err != nil {
		t.Fatal(err)
	}
	creds := h.Credentials()
	plan := &proto.TaskPlan{ID: "t-1", Kind: proto.TaskBurnin, Steps: []proto.PlanStep{{Name: "cpu", State: proto.StepPending}}}
	redfish := proto.BMC{Driver: proto.DriverRedfish, Address: "http://127.0.0.1:1/redfish/v1/Systems/1"}
	state := func(withTask bool) *proto.RackBootState {
		st := &proto.RackBootState{Rack: proto.Rack{Name: "r1"}, Index: 1, Nodes: []proto.BootNode{
			{UUID: tcNode1, Name: "n1", MACs: []string{"52:54:00:00:00:01"}, BMC: taskBMC(creds, "a1")},
			{UUID: tcNode2, MACs: []string{"52:54:00:00:00:02"}, BMC: taskBMC(creds, "a2"), Task: plan},   // another agent's
			{UUID: tcNode3, MACs: []string{"52:54:00:00:00:03"}, BMC: taskBMC(creds, "a1")},               // no task
			{UUID: tcNode4, MACs: []string{"52:54:00:00:00:04"}, BMC: taskBMC(redfish, "a1"), Task: plan}, // no console
		}}
		if withTask {
			st.Nodes[0].Task = plan
		}
		return st
	}
	store := bootStore(t)
	if err := store.Set(state(true)); err != nil {
		t.Fatal(err)
	}
	a := &Agent{boot: store, cfg: Config{Rack: "r1", Name: "a1"}}
	reps := &consoleReports{}
	var opens atomic.Int64
	m := console.New(console.Config{Report: reps.add, Logger: coordtest.Logger(t),
		Open: func(ctx context.Context, node string) (io.ReadWriteCloser, error) {
			opens.Add(1)
			return a.openConsole(ctx, node)
		}})
	defer m.Close()
	tc := newTaskConsoles(m, "a1", nil, console.DefaultMaxSessions, coordtest.Logger(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tc.run(ctx, store) }()
	defer func() {
		cancel()
		<-done
	}()

	testkit.Eventually(t, 20*time.Second, "the task console of n1 captured", func() bool {
		_, clients := m.Holder(tcNode1)
		return clients == 1
	})
	if got := tc.capturing(); len(got) != 1 || got[tcNode1] != "t-1" {
		t.Errorf("capturing %v, want only n1's task t-1 (not another agent's node, a node without a task, or a Redfish BMC)", got)
	}
	if n := m.Sessions(); n != 1 {
		t.Errorf("%d console sessions, want 1", n)
	}
	if user, _ := m.Holder(tcNode1); user != "" {
		t.Errorf("the capture holds the keyboard (%q)", user)
	}

	// What the machine prints during the task is kept.
	testkit.Eventually(t, 20*time.Second, "the task's console output in the log", func() bool {
		h.Serial().Printf("ramdisk: burn-in cpu step starting")
		b, _ := m.Log(tcNode1)
		return strings.Contains(string(b), "burn-in cpu step starting")
	})

	// An operator takes the keyboard without forcing, and leaves.
	op, err := m.Attach(ctx, console.Request{Node: tcNode1, User: "alice", Mode: console.Interactive})
	if err != nil {
		t.Fatalf("operator attach beside the capture: %v", err)
	}
	if user, clients := m.Holder(tcNode1); user != "alice" || clients != 2 {
		t.Errorf("holder %q with %d clients, want alice with 2", user, clients)
	}
	op.Close()

	// The task ends: the capture goes, and the session with it.
	if err := store.Set(state(false)); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 20*time.Second, "the capture to end with the task", func() bool {
		return len(tc.capturing()) == 0 && m.Sessions() == 0
	})
	if b, ok := m.Log(tcNode1); !ok || !strings.Contains(string(b), "burn-in cpu step starting") {
		t.Error("the log is not kept after the capture ended")
	}
	// One read-only start and end per session (a loaded machine may see
	// the BMC end a session, which the capture opens again).
	evs := reps.events(taskConsoleUser)
	ok := len(evs) >= 2 && len(evs)%2 == 0 && int(opens.Load()) == len(evs)/2
	for i, e := range evs {
		if want := []string{"console-start read-only", "console-end read-only"}[i%2]; e != want {
			ok = false
		}
	}
	if !ok {
		t.Errorf("capture reports = %q with %d console opens, want a read-only start and end per open", evs, opens.Load())
	}
}

// TestTaskConsoleReattach: a session the BMC side ends is attached again
// while the task runs; a failed open is retried.
func TestTaskConsoleReattach(t *testing.T) {
	var mu sync.Mutex
	var conns []net.Conn
	fail := atomic.Bool{}
	fail.Store(true)
	m := console.New(console.Config{Logger: coordtest.Logger(t),
		Open: func(ctx context.Context, node string) (io.ReadWriteCloser, error) {
			if fail.Swap(false) {
				return nil, io.ErrUnexpectedEOF // the first open fails
			}
			bmcSide, agentSide := net.Pipe()
			mu.Lock()
			conns = append(conns, bmcSide)
			mu.Unlock()
			return agentSide, nil
		}})
	defer m.Close()
	store := bootStore(t)
	st := &proto.RackBootState{Rack: proto.Rack{Name: "r1"}, Nodes: []proto.BootNode{
		// No intent: the split decides.
		{UUID: tcNode1, MACs: []string{"52:54:00:00:00:01"}, BMC: &proto.BootBMC{BMC: proto.BMC{Driver: proto.DriverFake}},
			Task: &proto.TaskPlan{ID: "t-9", Kind: proto.TaskInspect}},
		{UUID: tcNode2, MACs: []string{"52:54:00:00:00:02"}, BMC: &proto.BootBMC{BMC: proto.BMC{Driver: proto.DriverFake}},
			Task: &proto.TaskPlan{ID: "t-8", Kind: proto.TaskInspect}},
	}}
	if err := store.Set(st); err != nil {
		t.Fatal(err)
	}
	tc := newTaskConsoles(m, "a1", func(uuid string) bool { return uuid == tcNode1 }, 4, coordtest.Logger(t))
	tc.retryMin, tc.retryMax = 10*time.Millisecond, 50*time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tc.run(ctx, store) }()
	defer func() {
		cancel()
		<-done
	}()
	nconns := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(conns)
	}
	testkit.Eventually(t, 10*time.Second, "a capture after a failed open", func() bool { return nconns() == 1 })
	if got := tc.capturing(); len(got) != 1 || got[tcNode1] != "t-9" {
		t.Errorf("capturing %v, want only the node the split gives this agent", got)
	}
	mu.Lock()
	conns[0].Close() // the BMC ends the session
	mu.Unlock()
	testkit.Eventually(t, 10*time.Second, "a second session after the first ended", func() bool {
		_, clients := m.Holder(tcNode1)
		return nconns() == 2 && clients == 1
	})
	// A new task on the node replaces the capture.
	st2 := *st
	st2.Nodes = append([]proto.BootNode(nil), st.Nodes...)
	st2.Nodes[0].Task = &proto.TaskPlan{ID: "t-10", Kind: proto.TaskInspect}
	if err := store.Set(&st2); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, "the capture to follow the new task", func() bool {
		return tc.capturing()[tcNode1] == "t-10"
	})
}

// TestTaskConsoleBound: captures take at most half the console sessions;
// one held back is captured once another task ends.
func TestTaskConsoleBound(t *testing.T) {
	m := console.New(console.Config{MaxSessions: 2, Logger: coordtest.Logger(t),
		Open: func(ctx context.Context, node string) (io.ReadWriteCloser, error) {
			_, agentSide := net.Pipe()
			return agentSide, nil
		}})
	defer m.Close()
	store := bootStore(t)
	node := func(uuid, mac, task string) proto.BootNode {
		return proto.BootNode{UUID: uuid, MACs: []string{mac}, BMC: &proto.BootBMC{BMC: proto.BMC{Driver: proto.DriverIPMI}},
			Task: &proto.TaskPlan{ID: task, Kind: proto.TaskInspect}}
	}
	st := &proto.RackBootState{Rack: proto.Rack{Name: "r1"}, Nodes: []proto.BootNode{
		node(tcNode1, "52:54:00:00:00:01", "t-1"), node(tcNode2, "52:54:00:00:00:02", "t-2")}}
	if err := store.Set(st); err != nil {
		t.Fatal(err)
	}
	tc := newTaskConsoles(m, "a1", nil, 2, coordtest.Logger(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tc.run(ctx, store) }()
	defer func() {
		cancel()
		<-done
	}()
	testkit.Eventually(t, 10*time.Second, "one capture", func() bool { return m.Sessions() == 1 })
	first := ""
	for uuid := range tc.capturing() {
		first = uuid
	}
	if n := len(tc.capturing()); n != 1 {
		t.Fatalf("%d captures with 2 sessions, want 1 (half)", n)
	}
	// The captured node's task ends: the other is captured.
	st2 := &proto.RackBootState{Rack: proto.Rack{Name: "r1"}, Index: 2}
	for _, n := range st.Nodes {
		if n.UUID == first {
			n.Task = nil
		}
		st2.Nodes = append(st2.Nodes, n)
	}
	if err := store.Set(st2); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, "the held-back node captured", func() bool {
		c := tc.capturing()
		_, still := c[first]
		return len(c) == 1 && !still && m.Sessions() == 1
	})
}
