package drills

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/coordinator/apiclient"
	"github.com/metalfleet/metalfleet/ops/testkit"
	"github.com/metalfleet/metalfleet/proto"
	"github.com/metalfleet/metalfleet/rackagent/nodeagent"
	"github.com/metalfleet/metalfleet/rackagent/sim"
)

// The servicing-task drills: a burn-in on a simulated machine survives
// the SIGKILL of the coordinator leader (three coordinator processes) or
// of the rack agent process (restarted on the same data directory) while
// one of its steps runs. The task ends succeeded, the node manageable,
// its boot config as it was before the task, powered off (the machine
// itself, and node.power_state), with the burn-in's results on the node.
//
// The harness: coordinators and the rack agent are real processes of the
// built binary; the machine is a sim.Host in the test process, with an
// IPMI BMC (ipmisim, RMCP+ over UDP on loopback) that the agent drives.
// The agent serves relayed DHCP, and HTTP boot on loopback (no TFTP: the
// machine skips the first stage), so the host reaches the agent process
// as a machine reaches its rack's agent: DHCP through a relay address,
// the iPXE script, kernel and initrd over HTTP, then, booted into the
// task ramdisk, the real task runner (nodeagent.RunTask, run by the sim
// on simulated hardware) fetches its plan and posts its step reports to
// the agent, whose outbox carries them to the coordinators.

// burninParams are short enough for a test and run every component.
var burninParams = map[string]string{"duration": "2s", "memory_percent": "1", "disk_bytes": "1MiB", "network": "true"}

// drillFirmware retries quickly (tests on two shared cores), and boots
// again after a failed boot (a task ramdisk that lost track of its task
// reboots into it and resumes).
var drillFirmware = sim.Firmware{DHCPTimeouts: []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second},
	HTTPTimeout: 15 * time.Second, RebootAfter: 500 * time.Millisecond, MaxBoots: 5}

// burninRig is three coordinators, a rack agent process and one
// simulated machine with an IPMI BMC, its node manageable.
type burninRig struct {
	procs     []*Proc
	token     string
	all       *apiclient.Client // every coordinator (the client moves on when one is down)
	agent     *Proc
	agentHTTP string
	host      *sim.Host
	node      string
}

// startRack starts three coordinators, rack r1 with the task images,
// and its rack agent a1 (no power sync); it returns the rig without a
// machine, and the agent's DHCP address.
func startRack(t *testing.T, bin string) (*burninRig, *net.UDPAddr) {
	t.Helper()
	r := &burninRig{}
	r.procs, r.token = cluster3(t, bin)
	r.all = apiclient.New(Addrs(r.procs), r.token)
	agentToken := RackForCluster(t, r.all, "r1")
	taskImages(t, r.all)

	dhcpAddr := freeUDP(t)
	r.agentHTTP = FreePort(t)
	r.agent = NewAgentProc(t, bin, "a1", "--rack", "r1", "--coordinator", Addrs(r.procs), "--token-file", agentToken,
		"--dhcp-addr", dhcpAddr, "--tftp-addr", "", "--http-addr", r.agentHTTP, "--mgmt-addr", FreePort(t),
		"--advertise-ip", "127.0.0.1", "--power-sync-interval", "0")
	r.agent.Start(t)
	server, err := net.ResolveUDPAddr("udp4", dhcpAddr)
	if err != nil {
		t.Fatal(err)
	}
	return r, server
}

func newBurninRig(t *testing.T) *burninRig {
	t.Helper()
	r, server := startRack(t, Binary(t))
	hw := net.HardwareAddr{0x52, 0x54, 0x00, 0x0b, 0x00, 0x01}
	r.host = sim.NewHost(&sim.Machine{MAC: hw, DHCP: server, RelayIP: net.IPv4(127, 0, 0, 1), BindLease: true,
		Report: simReport, Firmware: drillFirmware, TaskDir: t.TempDir()})
	if err := r.host.StartBMC(sim.BMCConfig{Password: "drill-pw", Username: "admin"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		r.host.Close()
		if t.Failed() {
			t.Logf("--- console of the simulated machine, last lines ---\n%s", tail(r.host.Serial().Log(), 60))
		}
	})

	r.manage(t, proto.NodeCreate{Name: "b1", MACs: []string{hw.String()}, Rack: "r1", BMC: r.host.Credentials()})
	return r
}

// manage creates the node nc (r.node) and makes it manageable.
func (r *burninRig) manage(t *testing.T, nc proto.NodeCreate) {
	t.Helper()
	n, err := r.all.CreateNode(Ctx(t, 10*time.Second), nc)
	if err != nil {
		t.Fatalf("create node with the machine's BMC: %v", err)
	}
	r.node = n.UUID
	// manage: the agent verifies the BMC first. A leader refuses an
	// intent (503) until the rack's agent has called it.
	testkit.Until(t, 30*time.Second, "provision manage accepted", func() error {
		_, err := r.all.ProvisionWait(Ctx(t, 20*time.Second), r.node, "manage", 0)
		var ae *apiclient.Error
		if err != nil && (!errors.As(err, &ae) || ae.Status != http.StatusServiceUnavailable) {
			t.Fatalf("provision manage: %v", err)
		}
		return err
	})
	r.waitNode(t, 30*time.Second, "the node manageable (BMC verified)", func(n *proto.Node) bool {
		return n.ProvisionState == proto.StateManageable
	})
}

// taskImages registers a kernel and a ramdisk (small files: the
// simulated machine only fetches them) as the task images.
func taskImages(t *testing.T, c *apiclient.Client) {
	t.Helper()
	dir := t.TempDir()
	var names []string
	for _, im := range []struct {
		name string
		kind proto.ImageKind
	}{{"task-kernel", proto.ImageKernel}, {"task-ramdisk", proto.ImageRamdisk}} {
		body := []byte(strings.Repeat("simulated "+im.name+" ", 4096))
		p := filepath.Join(dir, im.name)
		if err := os.WriteFile(p, body, 0o644); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(body)
		if _, err := c.Do(Ctx(t, 10*time.Second), "POST", "/v1/images", proto.Image{Name: im.name, Kind: im.kind, URL: "file://" + p,
			SHA256: hex.EncodeToString(sum[:]), Size: int64(len(body))}, nil); err != nil {
			t.Fatalf("image %s: %v", im.name, err)
		}
		names = append(names, im.name)
	}
	if _, err := c.Do(Ctx(t, 10*time.Second), "PATCH", "/v1/settings", proto.SettingsPatch{TasksKernel: &names[0], TasksRamdisk: &names[1]}, nil); err != nil {
		t.Fatalf("settings tasks.kernel, tasks.ramdisk: %v", err)
	}
}

// simReport makes one attempt at a ramdisk callback with the nodeagent's
// code (the simulated machine retries), as dev mode does.
func simReport(ctx context.Context, client *http.Client, callbackURL, mac, token, step string, body any) error {
	rep := nodeagent.Reporter{Client: client, MaxElapsed: time.Nanosecond}
	return rep.Report(ctx, callbackURL, mac, token, step, body)
}

// readNode reads the node (a consistent read through any coordinator).
func (r *burninRig) readNode(t *testing.T) (*proto.Node, error) {
	return r.all.Node(Ctx(t, 5*time.Second), r.node)
}

// waitNode waits until cond holds of the node, read through any
// coordinator (errors while one is down are waited out).
func (r *burninRig) waitNode(t *testing.T, d time.Duration, what string, cond func(*proto.Node) bool) *proto.Node {
	t.Helper()
	var last *proto.Node
	testkit.Until(t, d, what, func() error {
		n, err := r.readNode(t)
		if err != nil {
			return err
		}
		last = n
		if !cond(n) {
			return fmt.Errorf("node is %s, power %s, task %q, boot %+v", n.ProvisionState, n.PowerState, n.Task, n.Boot)
		}
		return nil
	})
	return last
}

// startBurnin starts the burn-in through the API (retried, with a
// request id, while a leader refuses with 503).
func (r *burninRig) startBurnin(t *testing.T) *proto.Task {
	t.Helper()
	var task *proto.Task
	req := proto.TaskRequest{Kind: proto.TaskBurnin, Params: burninParams, RequestID: "drill-burnin"}
	testkit.Until(t, 30*time.Second, "POST /v1/nodes/{id}/tasks burnin accepted", func() error {
		var err error
		task, err = r.all.CreateTask(Ctx(t, 20*time.Second), r.node, req)
		var ae *apiclient.Error
		if err != nil && (!errors.As(err, &ae) || ae.Status != http.StatusServiceUnavailable) {
			t.Fatalf("start burn-in: %v", err)
		}
		return err
	})
	return task
}

// waitStepRunning waits until the task's current step is one of names
// and running, and returns the task as read then. A task that gets past
// every named step first fails the drill (the kill would not land
// mid-step where it must).
func (r *burninRig) waitStepRunning(t *testing.T, id string, names ...string) *proto.Task {
	t.Helper()
	return r.waitStepRunningFresh(t, id, 0, names...)
}

// burninFresh: a burn-in step (burninParams' 2 s) seen running this
// soon after its start is certainly still running when a kill lands
// (the API shows a step running until its result is committed, which
// may be a moment after the ramdisk sent it).
const burninFresh = time.Second

// waitStepRunningFresh is waitStepRunning for a step seen running less
// than within after it started (0: any time): an older one may end
// before a kill lands, so the next named step is waited for instead.
func (r *burninRig) waitStepRunningFresh(t *testing.T, id string, within time.Duration, names ...string) *proto.Task {
	t.Helper()
	var got *proto.Task
	testkit.Until(t, 90*time.Second, fmt.Sprintf("task %s running one of the steps %v", id, names), func() error {
		task, err := r.all.Task(Ctx(t, 5*time.Second), r.node, id)
		if err != nil {
			return err
		}
		if task.State.Ended() {
			t.Fatalf("task %s ended %s (error %q) before any of the steps %v was seen running", id, task.State, task.Error, names)
		}
		s := task.CurrentStep()
		if s == nil {
			return errors.New("no current step")
		}
		if s.State == proto.StepRunning && slices.Contains(names, s.Name) {
			if age := time.Since(s.StartedAt); within > 0 && age >= within {
				return fmt.Errorf("step %s seen running %.2fs after its start: too late to land a kill in it", s.Name, age.Seconds())
			}
			got = task
			return nil
		}
		last := names[len(names)-1]
		for _, st := range task.Steps[:task.Current] {
			if st.Name == last {
				t.Fatalf("task %s is past step %s (now %s %s) and none of %v was seen running", id, last, s.Name, s.State, names)
			}
		}
		return fmt.Errorf("current step %s is %s", s.Name, s.State)
	})
	return got
}

// waitTaskEnded waits for the task's end, read through any coordinator,
// and returns the task and when its end was first seen.
func (r *burninRig) waitTaskEnded(t *testing.T, id string, d time.Duration) (*proto.Task, time.Time) {
	t.Helper()
	var got *proto.Task
	testkit.Until(t, d, "task "+id+" ended", func() error {
		task, err := r.all.Task(Ctx(t, 5*time.Second), r.node, id)
		if err != nil {
			return err
		}
		if !task.State.Ended() {
			cur := "-"
			if s := task.CurrentStep(); s != nil {
				cur = s.Name + " " + string(s.State)
			}
			return fmt.Errorf("task %s still %s at step %s", id, task.State, cur)
		}
		got = task
		return nil
	})
	return got, time.Now()
}

// checkDone checks what a burn-in that survived a kill must leave: the
// task succeeded with every step passed (each started once, unless the
// machine rebooted), the node manageable with its boot config as before
// and no task, powered off (the machine, the power-off intent and
// node.power_state), the burn-in's results on the node. It logs the
// figures. A step's and the task's times are the agent's receipt of the
// ramdisk's reports; seenEnd is when the API first showed the task ended.
func (r *burninRig) checkDone(t *testing.T, task *proto.Task, bootBefore *proto.BootConfig, killed, seenEnd time.Time, what string) {
	t.Helper()
	for _, s := range task.Steps {
		var res bytes.Buffer
		if json.Compact(&res, s.Result) != nil {
			res.Write(s.Result)
		}
		t.Logf("  step %-8s %-7s attempts %d, %5.2fs, result %s", s.Name, s.State, s.Attempts, s.EndedAt.Sub(s.StartedAt).Seconds(), res.String())
	}
	t.Logf("%s: task %s %s; its last report %.2fs after the kill, its end seen through the API %.2fs after the kill; %.2fs from creation to end; the machine booted %d time(s)",
		what, task.ID, task.State, task.EndedAt.Sub(killed).Seconds(), seenEnd.Sub(killed).Seconds(), task.EndedAt.Sub(task.CreatedAt).Seconds(), r.host.Boots())
	if task.State != proto.TaskSucceeded {
		for _, s := range task.Steps {
			if s.State != proto.StepPassed {
				t.Logf("step %s (%s) error %q, log:\n%s", s.Name, s.State, s.Error, tail(s.Log, 20))
			}
		}
		t.Fatalf("%s: task %s ended %s (error %q), want succeeded", what, task.ID, task.State, task.Error)
	}
	boots := r.host.Boots()
	for _, s := range task.Steps {
		if s.State != proto.StepPassed {
			t.Errorf("step %s: %s, want passed", s.Name, s.State)
		}
		// A step starts again only when the machine rebooted mid-step.
		if s.Attempts != 1 && (boots == 1 || s.Attempts > boots) {
			t.Errorf("step %s started %d times, the machine booted %d time(s): want one start per boot that ran it", s.Name, s.Attempts, boots)
		}
		var res struct {
			Status string `json:"status"`
		}
		if err := json.Unmarshal(s.Result, &res); err != nil || res.Status != "pass" {
			t.Errorf("step %s: result %s, want status pass", s.Name, s.Result)
		}
	}

	// The machine is powered off: the task's last act.
	WaitFor(t, 60*time.Second, "the machine powered off", func() bool { return !r.host.On() })
	n := r.waitNode(t, 60*time.Second, "the node manageable, power_state off, no task", func(n *proto.Node) bool {
		return n.ProvisionState == proto.StateManageable && n.PowerState == proto.PowerOff && n.Task == ""
	})
	if !reflect.DeepEqual(n.Boot, bootBefore) || n.SavedBoot != nil {
		t.Errorf("node boot config %+v (saved %+v) after the task; before it was %+v: want it restored", n.Boot, n.SavedBoot, bootBefore)
	}
	var off *proto.Intent
	for i, in := range n.Intents {
		if in.Action == proto.ActionPower {
			off = &n.Intents[i]
		}
	}
	if off == nil || off.Power != proto.PowerTargetOff || !off.Done || off.Error != "" || off.At.Before(task.CreatedAt) {
		t.Errorf("the node's last power intent is %+v: want a power-off made after the task started, done without error", off)
	} else {
		t.Logf("power-off intent %d by %s done %.2fs after the task's last report", off.Generation, off.Agent, off.DoneAt.Sub(task.EndedAt).Seconds())
	}
	sum := n.TaskResults[proto.TaskBurnin]
	if sum == nil || sum.ID != task.ID || sum.State != proto.TaskSucceeded {
		t.Fatalf("node.task_results.burnin = %+v, want task %s succeeded", sum, task.ID)
	}
	for _, c := range []string{proto.StepNameCPU, proto.StepNameMemory, proto.StepNameDisk, proto.StepNameNetwork} {
		if len(sum.Results[c]) == 0 {
			t.Errorf("node.task_results.burnin has no %s result: %v", c, sum.Results)
		}
	}
}

// waitStepPassed waits until the API shows step name of task id passed
// (read through any coordinator) and returns when it first did.
func (r *burninRig) waitStepPassed(t *testing.T, id, name string) time.Time {
	t.Helper()
	testkit.Until(t, 2*time.Minute, "step "+name+" of task "+id+" passed", func() error {
		task, err := r.all.Task(Ctx(t, 5*time.Second), r.node, id)
		if err != nil {
			return err
		}
		if s := stepByName(task, name); s.State != proto.StepPassed {
			if s.State == proto.StepFailed || task.State.Ended() {
				t.Fatalf("step %s of task %s: %s (error %q), task %s: want passed", name, id, s.State, s.Error, task.State)
			}
			return fmt.Errorf("step %s is %s", name, s.State)
		}
		return nil
	})
	return time.Now()
}

// stepByName returns the step of task named name.
func stepByName(task *proto.Task, name string) proto.Step {
	for _, s := range task.Steps {
		if s.Name == name {
			return s
		}
	}
	return proto.Step{}
}

// TestLeaderKilledDuringBurnin: the coordinator leader (of three
// processes) is SIGKILLed while a burn-in step runs on the machine. The
// ramdisk's reports wait in the agent's outbox until a new leader takes
// them; the task ends succeeded, each step started once, and the node is
// left manageable, powered off, with its boot config restored. The
// killed server then restarts and catches up with the task's end.
// (With the drills' Raft timings, and with the defaults under
// METALFLEET_DRILL_DEFAULT_TIMINGS=1, a new leader is elected within a
// second, before the running step's result: the reports after the kill
// reach the new leader.)
func TestLeaderKilledDuringBurnin(t *testing.T) {
	if testing.Short() {
		t.Skip("starts coordinator and agent processes")
	}
	r := newBurninRig(t)
	before, err := r.readNode(t)
	if err != nil {
		t.Fatal(err)
	}
	task := r.startBurnin(t)
	t.Logf("burn-in task %s started: steps %d, params %v", task.ID, len(task.Steps), task.Params)
	running := r.waitStepRunningFresh(t, task.ID, burninFresh, proto.StepNameMemory, proto.StepNameDisk, proto.StepNameNetwork)
	step := running.CurrentStep()
	li := leaderOf(t, r.procs, r.token)
	killed := time.Now()
	r.procs[li].Kill()
	t.Logf("leader %s SIGKILLed while step %s ran (started %.2fs before, attempt %d)", r.procs[li].ID, step.Name,
		killed.Sub(step.StartedAt).Seconds(), step.Attempts)
	nl := leaderOf(t, r.procs, r.token)
	t.Logf("new leader %s %.2fs after the kill", r.procs[nl].ID, time.Since(killed).Seconds())
	if nl == li {
		t.Fatalf("the killed server %s is still reported as leader", r.procs[li].ID)
	}

	seen := r.waitStepPassed(t, task.ID, step.Name)
	done, seenEnd := r.waitTaskEnded(t, task.ID, 3*time.Minute)
	if s := stepByName(done, step.Name); !s.EndedAt.After(killed) {
		t.Errorf("step %s ended at %s, before the kill at %s: the kill did not land mid-step", s.Name, s.EndedAt.Format(time.StampMilli), killed.Format(time.StampMilli))
	} else {
		t.Logf("step %s: result recorded at %.2fs after the kill, seen passed through the API (a new leader) at %.2fs", s.Name,
			s.EndedAt.Sub(killed).Seconds(), seen.Sub(killed).Seconds())
	}
	r.checkDone(t, done, before.Boot, killed, seenEnd, "leader killed")
	WaitFor(t, 30*time.Second, "the agent's outbox drained", func() bool {
		v, ok := Metric(r.agentHTTP, "metalfleet_agent_outbox_reports")
		return ok && v == 0
	})

	// The killed server restarts and its own copy shows the task's end.
	r.procs[li].Start(t)
	WaitFor(t, 30*time.Second, r.procs[li].ID+" restarted and caught up with the task", func() bool {
		var got proto.Task
		_, err := r.procs[li].Client(r.token).Do(Ctx(t, 2*time.Second), "GET", "/v1/nodes/"+r.node+"/tasks/"+task.ID+"?stale=true", nil, &got)
		return err == nil && got.State == proto.TaskSucceeded
	})
}

// TestAgentKilledDuringBurnin: the rack agent process is SIGKILLed while
// a burn-in step runs on the machine, and restarted on the same data
// directory (and addresses) once the ramdisk has found it gone (a step
// report failed and is being retried). The ramdisk's retried reports
// reach the restarted agent; the task ends succeeded, the node is left
// manageable, powered off, with its boot config restored.
//
// The kill lands in the memory or disk step; TestAgentKilledDuringNetwork
// kills it during the network step, whose transfers go to the agent.
func TestAgentKilledDuringBurnin(t *testing.T) {
	agentKillDrill(t, proto.StepNameMemory, proto.StepNameDisk)
}

// TestAgentKilledDuringNetwork: as TestAgentKilledDuringBurnin, with the
// agent killed while the network step moves data to and from it. The
// transfer the kill cuts is counted as an agent restart (the restarted
// agent names another run), not as a network error, and the step passes.
func TestAgentKilledDuringNetwork(t *testing.T) {
	agentKillDrill(t, proto.StepNameNetwork)
}

func agentKillDrill(t *testing.T, steps ...string) {
	if testing.Short() {
		t.Skip("starts coordinator and agent processes")
	}
	r := newBurninRig(t)
	before, err := r.readNode(t)
	if err != nil {
		t.Fatal(err)
	}
	task := r.startBurnin(t)
	t.Logf("burn-in task %s started: steps %d, params %v", task.ID, len(task.Steps), task.Params)
	running := r.waitStepRunningFresh(t, task.ID, burninFresh, steps...)
	step := running.CurrentStep()
	if step.Name == proto.StepNameNetwork {
		// Kill while a transfer runs, so the kill cuts one: past the
		// first small transfers (they last milliseconds), when the
		// agent says one holds a slot, and well before the step's 2 s
		// end (its last transfer may be followed by no other).
		testkit.EventuallyEvery(t, 10*time.Second, 5*time.Millisecond, "a network burn-in transfer running on the agent", func() bool {
			if age := time.Since(step.StartedAt); age > 1500*time.Millisecond {
				t.Fatalf("no network burn-in transfer seen running on the agent from 0.3 s to 1.5 s into the step")
			}
			n, ok := Metric(r.agentHTTP, "metalfleet_agent_burnin_transfers")
			return ok && n > 0 && time.Since(step.StartedAt) > 300*time.Millisecond
		})
	}
	const retrying, refused = "report failed; retrying", "the agent refuses connections"
	seenBefore := strings.Count(r.host.Serial().Log(), retrying) + strings.Count(r.host.Serial().Log(), refused)
	killed := time.Now()
	r.agent.Kill()
	t.Logf("rack agent SIGKILLed while step %s ran (started %.2fs before, attempt %d)", step.Name, killed.Sub(step.StartedAt).Seconds(), step.Attempts)
	// The ramdisk finds the agent gone when it next reports (the step's
	// result, at most one step duration away); then the agent restarts.
	// Should the console's line not come (its format changed), the agent
	// restarts anyway after the wait, and the drill says so.
	saw := false
	deadline := time.Now().Add(20 * time.Second)
	testkit.Eventually(t, 25*time.Second, "the ramdisk to find the agent gone, or 20 s", func() bool {
		log := r.host.Serial().Log()
		saw = strings.Count(log, retrying)+strings.Count(log, refused) > seenBefore
		return saw || time.Now().After(deadline)
	})
	down := time.Since(killed)
	r.agent.Start(t)
	t.Logf("rack agent restarted %.2fs after the kill (the ramdisk had a report refused by the dead agent: %v)", down.Seconds(), saw)
	if !saw {
		t.Errorf("no report of the ramdisk failed while the agent was down for %.1fs: the drill did not exercise the outage", down.Seconds())
	}

	seen := r.waitStepPassed(t, task.ID, step.Name)
	done, seenEnd := r.waitTaskEnded(t, task.ID, 3*time.Minute)
	if s := stepByName(done, step.Name); !s.EndedAt.After(killed) {
		t.Errorf("step %s ended at %s, before the kill at %s: the kill did not land mid-step", s.Name, s.EndedAt.Format(time.StampMilli), killed.Format(time.StampMilli))
	} else {
		t.Logf("step %s: result recorded at %.2fs after the kill, seen passed through the API at %.2fs", s.Name,
			s.EndedAt.Sub(killed).Seconds(), seen.Sub(killed).Seconds())
	}
	r.checkDone(t, done, before.Boot, killed, seenEnd, "agent killed")
	if step.Name == proto.StepNameNetwork {
		var net struct {
			Status        string `json:"status"`
			Errors        int    `json:"errors"`
			AgentRestarts int    `json:"agent_restarts"`
		}
		s := stepByName(done, step.Name)
		err := json.Unmarshal(s.Result, &net)
		switch {
		case err != nil || net.Status != "pass" || net.Errors != 0:
			t.Errorf("network result %s (%v): want it passed with no errors: the agent's restart is not the network's fault", s.Result, err)
		case net.AgentRestarts > 0:
			t.Logf("the kill cut %d transfer(s), counted as agent restarts, not errors", net.AgentRestarts)
		case strings.Contains(s.Log, "the agent refuses connections"):
			// The transfer the metric showed ended in the moment
			// before the kill: the ramdisk found nothing listening
			// and waited, which is the other right answer.
			t.Logf("the kill landed between transfers: the ramdisk waited for the agent to listen again")
		default:
			t.Errorf("network result %s, log %q: the agent was down %.1fs, yet the step neither counted a cut transfer nor waited for the agent", s.Result, s.Log, down.Seconds())
		}
	}
	WaitFor(t, 30*time.Second, "the restarted agent's outbox drained", func() bool {
		v, ok := Metric(r.agentHTTP, "metalfleet_agent_outbox_reports")
		return ok && v == 0
	})
}
