//go:build linux

package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/ops/netlab"
	"github.com/metalfleet/metalfleet/ops/testkit"
	"github.com/metalfleet/metalfleet/proto"
)

// tasksVM is the hardware of the servicing-task test's VM. Its SMBIOS
// vendor is QEMU: the lab vendor tool (proto.LabTool) matches it. Two
// small disks for the RAID1 array, and the lab tool's device, whose
// serial is proto.LabDeviceSerial (it keeps the firmware versions and
// BIOS settings).
var tasksVM = vmSpec{
	MAC:          "52:54:00:e2:e0:21",
	UUID:         "5e2e0a1c-7d3b-4c9e-8f21-e2e000000021",
	Manufacturer: "QEMU",
	Product:      "LabVM-Tasks",
	Serial:       "E2E-0021",
	MemMiB:       512,
	CPUs:         2,
	Disks: []vmDisk{
		{"E2E-RAID-A", 64 << 20},
		{"E2E-RAID-B", 64 << 20},
		{proto.LabDeviceSerial, 16 << 20},
	},
}

// addedDisk is put into the VM, while it is off, before the last inspect.
var addedDisk = vmDisk{"E2E-ADDED", 48 << 20}

const (
	taskNode = "task1" // the node's name
	// tasksCmdline is the task ramdisk's command line (setting
	// tasks.cmdline), the discovery one's: the nodeagent's log on the
	// serial console, a panic ends the boot.
	tasksCmdline = "console=ttyS0,115200 quiet panic=5"
	// taskLimit bounds one task from the CLI's start to the node back:
	// a power cycle, a network boot under TCG on two busy cores, the
	// steps, the power-off.
	taskLimit = 8 * time.Minute
)

// burninParams are the short burn-in's: 3 s per component.
var burninParams = []string{"duration=3s", "memory_percent=5", "disk_bytes=16MiB", "network=true"}

// TestTasksQEMU runs servicing tasks on one QEMU VM behind its virtual BMC
// (ipmi_sim), with the real coordinator, rack agent, CLI and task ramdisk
// (build/ramdisk: nodeagent with mdadm and the lab vendor tool /bin/mflab):
// an inspect (during which a step report with a wrong task token is
// refused), a short burn-in whose per-component results are kept, a long
// burn-in aborted while its cpu step runs, a burn-in whose VM is reset
// during its memory step (it resumes there), a RAID1 array over two of the
// VM's disks, a firmware update and BIOS settings through the lab tool, a
// BIOS setting whose readback cannot match (a vendor tool whose Set
// applies nothing), and an inspect that finds a disk added while the VM
// was off. The subtests
// share the VM and the fleet; each starts from a manageable node that is
// powered off, and leaves it so.
func TestTasksQEMU(t *testing.T) {
	needBMC(t)
	testStart := time.Now()
	lap := netlab.Laps(t)
	bin := binary(t)
	images := ramdisk(t, t.TempDir())
	needTasks(t, images, bin)
	lap("binary, kernel and task ramdisk")
	t.Logf("ramdisk BUILD-INFO: %s", strings.ReplaceAll(images.Info, "\n", " "))
	l := newLab(t, "ra")
	l.bin, l.images = bin, images
	l.agentArgs = []string{"--power-sync-interval", oobSyncEvery}
	l.startFleet()
	l.startAgent()
	r := &taskRun{oob: &oob{t: t, l: l}}
	r.v = newVBMC(t, l, 1, tasksVM, "password")
	r.img = newImageServer(t, l)
	lap("coordinator, rack agent, virtual BMC, image server")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("--- rack agent log (%s), last lines ---\n%s", l.file("agent.log"), netlab.Tail(l.file("agent.log"), 60))
			t.Logf("--- coordinator log (%s), last lines ---\n%s", l.file("coordinator.log"), netlab.Tail(l.file("coordinator.log"), 40))
		}
	})
	r.secret("good.pw", r.v.Password)
	// The task ramdisk is the one discovery boots: nodeagent as /init
	// runs a task when the command line names one.
	r.mustCLI(t, "settings", "set", "tasks.kernel="+kernelImage, "tasks.ramdisk="+ramdiskImage, "tasks.cmdline="+tasksCmdline)

	for _, step := range []struct {
		name string
		run  func(*testing.T)
		need bool // the steps after it cannot run without it
	}{
		{"manage", r.manage, true},
		{"inspect, wrong task token", r.inspectWrongToken, true},
		{"burn-in", r.burnin, false},
		{"abort a burn-in", r.abortBurnin, false},
		{"reboot mid-task", r.rebootMidTask, false},
		{"raid1", r.raid1, false},
		{"firmware", r.firmware, false},
		{"bios", r.bios, false},
		{"bios readback mismatch", r.biosMismatch, false},
		{"inspect an added disk", r.inspectAddedDisk, false},
	} {
		ok := t.Run(step.name, func(t *testing.T) {
			r.ready(t)
			step.run(t)
		})
		if !ok && step.need {
			t.Fatalf("step %q failed: the other steps need it", step.name)
		}
		lap(step.name)
	}
	t.Logf("task durations (CLI started -> node manageable and off): %s", strings.Join(r.durations, ", "))
	t.Logf("TestTasksQEMU took %.1fs", time.Since(testStart).Seconds())
}

// taskRun is the task test's state, shared by its steps.
type taskRun struct {
	*oob
	img       *imageServer
	durations []string
}

// manage creates the VM's node with its BMC and makes it manageable (the
// agent verifies the BMC first).
func (r *taskRun) manage(t *testing.T) {
	n := r.createNode(t, taskNode, tasksVM.MAC, "good.pw", proto.IPMILanplus)
	r.node = n.UUID
	r.mustCLI(t, "node", "provision", taskNode, "manage")
	got := r.waitNode(t, 90*time.Second, "the node to be manageable", func(n proto.Node) bool {
		return n.ProvisionState == proto.StateManageable
	})
	if got.BMCStatus == nil || got.BMCStatus.State != proto.BMCOK {
		t.Fatalf("manageable without a verified BMC: %+v", got.BMCStatus)
	}
}

// ready brings the node back to manageable and powered off if a step
// before left it otherwise (a running task is aborted, a failed node
// managed again, the VM powered off), then checks it is so: every step
// starts from there.
func (r *taskRun) ready(t *testing.T) {
	t.Helper()
	if r.node == "" {
		return
	}
	n := r.getNode(t, r.node)
	if n.Task != "" {
		t.Logf("node %s still runs task %s: aborting it", taskNode, n.Task)
		if _, err := r.cli("node", "task", "abort", taskNode, n.Task); err != nil {
			t.Logf("abort: %v", err)
		}
		n = r.waitNode(t, 3*time.Minute, "the aborted task to end", func(n proto.Node) bool { return n.Task == "" })
	}
	if n.ProvisionState == proto.StateFailed {
		t.Logf("node %s is failed (%q): managing it again", taskNode, n.LastError)
		r.mustCLI(t, "node", "provision", taskNode, "manage")
		n = r.waitNode(t, 90*time.Second, "the node to be manageable again", func(n proto.Node) bool {
			return n.ProvisionState == proto.StateManageable
		})
	}
	if r.v.On() || n.PowerState != proto.PowerOff {
		r.mustCLI(t, "node", "power", taskNode, "off", "--wait")
	}
	n = r.waitNode(t, syncTimeout, "the node manageable and power_state off", func(n proto.Node) bool {
		return n.ProvisionState == proto.StateManageable && n.PowerState == proto.PowerOff
	})
	if r.v.On() {
		t.Fatalf("node %s is manageable and off, but its VM runs", taskNode)
	}
}

// getTask reads a task from the API.
func (r *taskRun) getTask(id string) (proto.Task, error) {
	var task proto.Task
	_, err := r.l.call("GET", "/v1/nodes/"+r.node+"/tasks/"+id, nil, &task)
	return task, err
}

// runTask runs `node task NODE KIND --param ... --wait -o json` to its
// end and checks what every task must leave: the task as
// `node task show -o json` prints it, the node manageable (want: the task
// succeeds) or failed, powered off, its VM off, its boot config restored,
// the task in the node's task_results and task list. It returns the task
// and its times.
func (r *taskRun) runTask(t *testing.T, kind proto.TaskKind, want proto.TaskState, params ...string) (proto.Task, *taskTimes) {
	t.Helper()
	c := r.startTaskCLI(t, taskNode, kind, params...)
	return r.finishTask(t, c, kind, want)
}

// finishTask waits for the CLI started by startTaskCLI and checks the
// task ended in state want, and what it left (see runTask).
func (r *taskRun) finishTask(t *testing.T, c *taskCLI, kind proto.TaskKind, want proto.TaskState) (proto.Task, *taskTimes) {
	t.Helper()
	task := c.wait(t, taskLimit)
	c.console.stop()
	tt := &taskTimes{CLI: c.started, CLIDone: c.ended, Created: task.CreatedAt, Ended: task.EndedAt, Steps: task.Steps,
		Fetched: c.console.at(c.initrdDone), Init: c.console.at(markInit)}
	t.Logf("%s task %s: %s in %.1fs (CLI); progress on stderr:\n%s", kind, task.ID, task.State, c.ended.Sub(c.started).Seconds(), tail(c.stderr.String(), 30))
	for _, s := range task.Steps {
		t.Logf("  step %-9s %-7s %5.1fs attempts %d result %s error %q", s.Name, s.State, s.EndedAt.Sub(s.StartedAt).Seconds(), s.Attempts, s.Result, s.Error)
	}
	if task.Kind != kind || task.Node != r.node {
		t.Errorf("task kind %q node %q, want %s on %s", task.Kind, task.Node, kind, r.node)
	}
	if time.Duration(task.Timeout) != 20*time.Minute {
		t.Errorf("task timeout %s, want 20m (--timeout 20m)", time.Duration(task.Timeout))
	}
	// --wait -o json: the progress, step by step, on stderr.
	for _, s := range task.Steps {
		if s.State != proto.StepPending && !strings.Contains(c.stderr.String(), s.Name) {
			t.Errorf("node task --wait -o json printed no progress of step %s on stderr", s.Name)
		}
	}
	wantOK := want == proto.TaskSucceeded
	if wantOK && task.State != proto.TaskSucceeded {
		for _, s := range task.Steps {
			if s.State == proto.StepFailed || s.Log != "" && s.State != proto.StepPassed {
				t.Logf("step %s log:\n%s", s.Name, tail(s.Log, 40))
			}
		}
		if task.ConsoleLog != "" {
			t.Logf("the task's console log, last lines:\n%s", tail(cleanConsole([]byte(task.ConsoleLog)), 40))
		}
		t.Fatalf("%s task %s: state %s, error %q: want succeeded", kind, task.ID, task.State, task.Error)
	}
	if !wantOK && task.State != want {
		t.Fatalf("%s task %s: state %s, error %q: want %s", kind, task.ID, task.State, task.Error, want)
	}
	if len(task.Steps) > 0 {
		tt.FirstStep = task.Steps[0].StartedAt
		tt.LastStep = task.Steps[len(task.Steps)-1].EndedAt
		for _, s := range task.Steps {
			if wantOK && s.State != proto.StepPassed {
				t.Errorf("step %s: state %s, want passed", s.Name, s.State)
			}
			if !s.EndedAt.IsZero() {
				tt.LastStep = s.EndedAt
			}
		}
	}
	// The VM was powered on by the BMC, booting from the network.
	for _, s := range r.v.Starts() {
		if s.At.After(c.started) {
			tt.VMStart, tt.VMStartBoot = s.At, s.Boot
			break
		}
	}
	if tt.VMStart.IsZero() {
		t.Errorf("the VM was not powered on for the task")
	} else if tt.VMStartBoot != bootPXE {
		t.Errorf("the VM booted %q for the task, want pxe (boot device pxe, once)", tt.VMStartBoot)
	}
	wantNode := proto.StateManageable
	if want == proto.TaskFailed {
		wantNode = proto.StateFailed
	}
	n := r.waitNode(t, 3*time.Minute, "the node "+string(wantNode)+", power_state off, after the task", func(n proto.Node) bool {
		return n.ProvisionState == wantNode && n.PowerState == proto.PowerOff && !r.v.On()
	})
	tt.Manageable = time.Now()
	tt.VMOff = r.v.Exited()
	if !tt.VMStart.IsZero() {
		b := &bootRecord{PowerOn: tt.VMStart}
		lines := readAgentLog(r.l.file("agent.log"))
		b.scan(lines, tasksVM.MAC, r.node)
		tt.Boot = b
		for _, l := range lines {
			if l.Msg == "task plan served" && l.Node == r.node && l.Time.After(tt.VMStart) {
				tt.PlanServed = l.Time
				break
			}
		}
	}
	if n.Task != "" {
		t.Errorf("node.task %q after the task ended", n.Task)
	}
	if n.SavedBoot != nil || n.Boot != nil {
		t.Errorf("the node's boot config was not restored: boot %+v saved_boot %+v", n.Boot, n.SavedBoot)
	}
	sum := n.TaskResults[kind]
	if sum == nil || sum.ID != task.ID || sum.State != task.State {
		t.Errorf("node.task_results[%s] = %+v, want task %s %s", kind, sum, task.ID, task.State)
	}
	// `node task show -o json` and `node tasks -o json` agree.
	var shown proto.Task
	if err := json.Unmarshal([]byte(r.mustCLI(t, "node", "task", "show", taskNode, task.ID, "-o", "json")), &shown); err != nil {
		t.Errorf("node task show -o json: %v", err)
	} else if shown.ID != task.ID || shown.State != task.State || len(shown.Steps) != len(task.Steps) {
		t.Errorf("node task show: task %s %s with %d steps, want %s %s with %d", shown.ID, shown.State, len(shown.Steps), task.ID, task.State, len(task.Steps))
	}
	var list []proto.Task
	if err := json.Unmarshal([]byte(r.mustCLI(t, "node", "tasks", taskNode, "-o", "json")), &list); err != nil {
		t.Errorf("node tasks -o json: %v", err)
	} else if !slices.ContainsFunc(list, func(x proto.Task) bool { return x.ID == task.ID && x.State == task.State }) {
		t.Errorf("node tasks does not list task %s (%s)", task.ID, task.State)
	}
	r.durations = append(r.durations, fmt.Sprintf("%s %.1fs", kind, tt.Manageable.Sub(tt.CLI).Seconds()))
	return task, tt
}

// stepByName returns the task's step of that name.
func stepByName(t *testing.T, task proto.Task, name string) proto.Step {
	t.Helper()
	for _, s := range task.Steps {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("task %s has no step %q: %+v", task.ID, name, task.Steps)
	return proto.Step{}
}

// inventory is the node's inventory.
func (r *taskRun) inventory(t *testing.T) (proto.Node, proto.Inventory) {
	t.Helper()
	n := r.getNode(t, r.node)
	var inv proto.Inventory
	if err := json.Unmarshal(n.Inventory, &inv); err != nil {
		t.Fatalf("node %s: inventory: %v\n%s", n.UUID, err, n.Inventory)
	}
	return n, inv
}

// inspectWrongToken runs an inspect (the node had no inventory: it was
// created by hand, and the vendor tools are matched on it), and while the
// task runs posts a step report to the rack agent's callback with a wrong
// token, and with none: both refused 401; a wrong token cannot fetch the
// task's plan either. The forged report would fail the task if it were
// taken; the task succeeds and the node's inventory is the VM's.
func (r *taskRun) inspectWrongToken(t *testing.T) {
	c := r.startTaskCLI(t, taskNode, proto.TaskInspect)
	var n proto.Node
	testkit.Until(t, time.Minute, "the node to run a task", func() error {
		var err error
		if _, err = r.l.call("GET", "/v1/nodes/"+r.node, nil, &n); err != nil {
			return err
		}
		if n.Task == "" {
			if !c.running() {
				t.Fatalf("node task inspect exited (%v) before the node ran a task: %s", c.err, c.stderr.String())
			}
			return fmt.Errorf("node.task is empty, provision_state %s", n.ProvisionState)
		}
		return nil
	})
	id := n.Task
	if n.ProvisionState != proto.StateServicing {
		t.Errorf("provision_state %q while task %s runs, want servicing", n.ProvisionState, id)
	}
	task, err := r.getTask(id)
	if err != nil {
		t.Fatal(err)
	}
	r.l.wait(30*time.Second, fmt.Sprintf("the agent to sync the task (index %d)", task.ModifyIndex), r.l.agent, func() bool {
		return r.l.agentIndex() >= task.ModifyIndex
	})
	forged, _ := json.Marshal(proto.StepReport{Task: id, Step: proto.StepNameInventory, Index: 0, Event: proto.StepEventResult,
		Passed: false, Error: "forged by the e2e test with a wrong token"})
	base := "http://" + r.l.ServerIP + ":8080"
	for _, c := range []struct {
		what, method, path, auth string
		body                     []byte
	}{
		{"a step report with a wrong token", "POST", proto.CallbackPrefix + "/" + proto.StepTask, "Bearer not-the-task-token", forged},
		{"a step report without a token", "POST", proto.CallbackPrefix + "/" + proto.StepTask, "", forged},
		{"the plan with a wrong token", "GET", proto.TaskPlanPath, "Bearer not-the-task-token", nil},
	} {
		req, err := http.NewRequest(c.method, base+c.path, bytes.NewReader(c.body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set(proto.MACHeader, tasksVM.MAC)
		if c.auth != "" {
			req.Header.Set("Authorization", c.auth)
		}
		if c.body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := r.l.api.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", c.what, err)
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		t.Logf("%s (%s %s): %s %s", c.what, c.method, c.path, resp.Status, bytes.TrimSpace(body))
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s while task %s runs: %s, want 401 Unauthorized", c.what, id, resp.Status)
		}
	}
	task, tt := r.finishTask(t, c, proto.TaskInspect, proto.TaskSucceeded)
	for _, s := range task.Steps {
		if strings.Contains(s.Error, "forged") || strings.Contains(task.Error, "forged") {
			t.Errorf("the forged report reached the task: step %s error %q", s.Name, s.Error)
		}
	}
	t.Log(tt.phaseLines("inspect (node created by hand, first task)"))
	n, inv := r.inventory(t)
	checkInventory(t, n, tasksVM)
	if collectedAt(inv).Before(c.started.Add(-5 * time.Second)) {
		t.Errorf("inventory collected at %s, before the task (%s)", inv.Collected.At, c.started)
	}
	t.Logf("inventory after inspect: %s", summary(inv))
}

// burnin runs a short burn-in: every component passes, with its figures,
// on the task and on the node (task_results.burnin). It logs the time by
// phase, as a table for BENCHMARKS.md.
func (r *taskRun) burnin(t *testing.T) {
	task, tt := r.runTask(t, proto.TaskBurnin, proto.TaskSucceeded, burninParams...)
	n := r.getNode(t, r.node)
	sum := n.TaskResults[proto.TaskBurnin]
	if sum == nil {
		t.Fatalf("node.task_results has no burnin: %+v", n.TaskResults)
	}
	for _, comp := range []string{proto.StepNameCPU, proto.StepNameMemory, proto.StepNameDisk, proto.StepNameNetwork} {
		s := stepByName(t, task, comp)
		var res map[string]any
		if err := json.Unmarshal(s.Result, &res); err != nil {
			t.Errorf("burn-in %s: result %q: %v", comp, s.Result, err)
			continue
		}
		if res["status"] != "pass" {
			t.Errorf("burn-in %s: status %v, want pass: %s", comp, res["status"], s.Result)
		}
		var figures []string
		for k, v := range res {
			if k == "status" {
				continue
			}
			if f, ok := v.(float64); ok && f > 0 {
				figures = append(figures, k)
			}
		}
		if len(figures) == 0 {
			t.Errorf("burn-in %s: no figure above zero in its result %s", comp, s.Result)
		}
		if d := s.EndedAt.Sub(s.StartedAt); d < 3*time.Second {
			t.Errorf("burn-in %s ran %.2fs, want at least duration=3s", comp, d.Seconds())
		}
		kept, ok := sum.Results[comp]
		if !ok {
			t.Errorf("node.task_results.burnin.results has no %s", comp)
		} else if !jsonEqual(kept, s.Result) {
			t.Errorf("node.task_results.burnin.results.%s = %s, want the task's %s", comp, kept, s.Result)
		}
		t.Logf("burn-in %s: %s", comp, s.Result)
	}
	t.Log(tt.phaseLines(fmt.Sprintf("burn-in (%s), QEMU TCG %d vCPUs %d MiB, 2 host cores", strings.Join(burninParams, " "), tasksVM.CPUs, tasksVM.MemMiB)))
}

// collectedAt is when the inventory was collected, by the VM's clock
// (QEMU's RTC starts at the host's time).
func collectedAt(inv proto.Inventory) time.Time {
	at, _ := time.Parse(time.RFC3339Nano, inv.Collected.At)
	return at
}

// waitStep waits until the task the CLI c started runs its step name,
// and returns the task then.
func (r *taskRun) waitStep(t *testing.T, c *taskCLI, name string) proto.Task {
	t.Helper()
	var task proto.Task
	testkit.Until(t, 4*time.Minute, "the task's "+name+" step to run", func() error {
		if !c.running() {
			t.Fatalf("metalfleet %s exited (%v) before step %s ran: %s", strings.Join(c.args, " "), c.err, name, c.stderr.String())
		}
		var n proto.Node
		if _, err := r.l.call("GET", "/v1/nodes/"+r.node, nil, &n); err != nil {
			return err
		}
		if n.Task == "" {
			return fmt.Errorf("no task yet")
		}
		var err error
		if task, err = r.getTask(n.Task); err != nil {
			return err
		}
		if s := task.CurrentStep(); s == nil || s.Name != name || s.State != proto.StepRunning {
			return fmt.Errorf("task %s at step %d %+v", task.ID, task.Current, task.CurrentStep())
		}
		return nil
	})
	return task
}

// abortBurnin aborts a long burn-in while its cpu step runs: the task
// is aborted (the --wait CLI exits non-zero with it), the running step
// failed "aborted", the node manageable and powered off, with a
// last_error that says who aborted it.
func (r *taskRun) abortBurnin(t *testing.T) {
	c := r.startTaskCLI(t, taskNode, proto.TaskBurnin, "duration=10m", "memory_percent=5", "disk_bytes=1MiB", "network=false")
	id := r.waitStep(t, c, proto.StepNameCPU).ID
	out := r.mustCLI(t, "node", "task", "abort", taskNode, id)
	t.Logf("node task abort: %s", strings.TrimSpace(out))
	task, tt := r.finishTask(t, c, proto.TaskBurnin, proto.TaskAborted)
	t.Log(tt.phaseLines("burn-in aborted during its cpu step"))
	if s := stepByName(t, task, proto.StepNameCPU); s.State != proto.StepFailed || s.Error != "aborted" {
		t.Errorf("the cpu step after the abort: %s %q, want failed \"aborted\"", s.State, s.Error)
	}
	if n := r.getNode(t, r.node); !strings.Contains(n.LastError, "aborted") {
		t.Errorf("node last_error %q after the abort: want it to say the task was aborted", n.LastError)
	}
}

// rebootMidTask resets the VM behind Metalfleet's back (QEMU's
// system_reset: a machine that rebooted by itself) while a burn-in's
// memory step runs. It network-boots the task ramdisk again, which
// resumes at the step recorded: the cpu step is not run again, the memory
// step counts a second attempt, the task succeeds.
func (r *taskRun) rebootMidTask(t *testing.T) {
	c := r.startTaskCLI(t, taskNode, proto.TaskBurnin, "duration=5s", "memory_percent=5", "disk_bytes=1MiB", "network=false")
	before := r.waitStep(t, c, proto.StepNameMemory)
	cpuBefore := stepByName(t, before, proto.StepNameCPU)
	boots := r.v.SerialCount(`msg="running the task"`)
	resetAt := time.Now()
	if err := r.v.hmp("system_reset"); err != nil {
		t.Fatalf("system_reset: %v", err)
	}
	task, tt := r.finishTask(t, c, proto.TaskBurnin, proto.TaskSucceeded)
	t.Log(tt.phaseLines("burn-in with a reset of the VM during its memory step (the phases until the first step are the first boot's)"))
	cpu, mem := stepByName(t, task, proto.StepNameCPU), stepByName(t, task, proto.StepNameMemory)
	t.Logf("after the reset: cpu attempts %d ended %s; memory attempts %d started %s ended %s; the reset at %s",
		cpu.Attempts, cpu.EndedAt.Format("15:04:05.000"), mem.Attempts, mem.StartedAt.Format("15:04:05.000"),
		mem.EndedAt.Format("15:04:05.000"), resetAt.Format("15:04:05.000"))
	if cpu.Attempts != 1 || !cpu.EndedAt.Equal(cpuBefore.EndedAt) {
		t.Errorf("the cpu step ran again after the reset: attempts %d, ended %s (was %s)", cpu.Attempts, cpu.EndedAt, cpuBefore.EndedAt)
	}
	if mem.Attempts != 2 {
		t.Errorf("the memory step: %d attempts, want 2 (started again after the reset)", mem.Attempts)
	}
	if !mem.EndedAt.After(resetAt) {
		t.Errorf("the memory step ended at %s, before the reset (%s)", mem.EndedAt, resetAt)
	}
	if n := r.v.SerialCount(`msg="running the task"`); n <= boots {
		t.Errorf("the VM's console shows no second run of the task ramdisk after the reset (%d runs, %d before)", n, boots)
	}
}

func jsonEqual(a, b json.RawMessage) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	xb, _ := json.Marshal(x)
	yb, _ := json.Marshal(y)
	return bytes.Equal(xb, yb)
}

// raid1 makes a RAID1 array over the two RAID disks (named by serial):
// the task's new inventory shows the array over both, and the disks'
// files hold md superblocks of one level-1 array.
func (r *taskRun) raid1(t *testing.T) {
	a, b := tasksVM.Disks[0], tasksVM.Disks[1]
	task, tt := r.runTask(t, proto.TaskRAID, proto.TaskSucceeded, "level=1", "disks="+a.Serial+","+b.Serial)
	t.Log(tt.phaseLines("raid1"))
	t.Logf("raid step: %s\nlog:\n%s", stepByName(t, task, proto.StepNameRAID).Result, tail(stepByName(t, task, proto.StepNameRAID).Log, 20))
	_, inv := r.inventory(t)
	if collectedAt(inv).Before(tt.CLI.Add(-5 * time.Second)) {
		t.Errorf("inventory collected at %s, before the raid task (%s): not replaced", inv.Collected.At, tt.CLI)
	}
	names := map[string]string{} // serial -> name
	for _, d := range inv.Disks {
		if d.Serial != "" {
			names[d.Serial] = d.Name
		}
	}
	var array *proto.Disk
	for i, d := range inv.Disks {
		if d.RAID != "" {
			array = &inv.Disks[i]
		}
	}
	if array == nil {
		t.Fatalf("the inventory after the raid task shows no array: %s", summary(inv))
	}
	t.Logf("array in the inventory: %+v", *array)
	if array.RAID != "raid1" {
		t.Errorf("array %s: raid %q, want raid1", array.Name, array.RAID)
	}
	want := []string{names[a.Serial], names[b.Serial]}
	slices.Sort(want)
	if !slices.Equal(array.Members, want) {
		t.Errorf("array %s: members %v, want %v (disks %s and %s)", array.Name, array.Members, want, a.Serial, b.Serial)
	}
	// RAID1 of two 64 MiB disks: a little less than 64 MiB.
	if array.SizeBytes <= a.Size/2 || array.SizeBytes > a.Size {
		t.Errorf("array %s: %d bytes, want a little under %d", array.Name, array.SizeBytes, a.Size)
	}
	// The disks themselves, read from the host: one array, level 1.
	sa, err := readMDSuper(r.v.DiskFile(a.Serial))
	if err != nil {
		t.Fatal(err)
	}
	sb, err := readMDSuper(r.v.DiskFile(b.Serial))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("md superblocks: %s %+v, %s %+v", a.Serial, sa, b.Serial, sb)
	if sa.UUID != sb.UUID || sa.Level != 1 || sb.Level != 1 || sa.Disks != 2 {
		t.Errorf("md superblocks %+v and %+v: want one level-1 array of 2 disks", sa, sb)
	}
	if !strings.Contains(sa.Name, "metalfleet0") {
		t.Errorf("md array name %q, want metalfleet0 (/dev/md/metalfleet0)", sa.Name)
	}
}

// firmware updates the lab device's "bios" firmware from an image the
// rack agent fetches from the test's server: the versions before and
// after are in the steps' results, the after one the image's.
func (r *taskRun) firmware(t *testing.T) {
	const version = "2.7.1-e2e"
	name := "lab-bios-" + version + ".bin"
	url, sha := r.img.add(t, name, labFirmwareImage("bios", version))
	r.l.mustCall("POST", "/v1/images", proto.Image{Name: "lab-bios-e2e", Kind: firmwareImageKind, URL: url, SHA256: sha}, nil)
	task, tt := r.runTask(t, proto.TaskFirmware, proto.TaskSucceeded, "component=bios", "image=lab-bios-e2e")
	t.Log(tt.phaseLines("firmware (lab tool, component bios)"))
	before, after := firmwareVersions(t, task)
	t.Logf("firmware bios: version before %q, after %q", before, after)
	if after != version {
		t.Errorf("firmware version after the update %q, want the image's %q", after, version)
	}
	if before == "" || before == after {
		t.Errorf("firmware version before the update %q: want the device's earlier version, not empty nor the new one", before)
	}
	if r.img.Gets(name) == 0 {
		t.Errorf("the image server had no GET of %s: the rack agent did not fetch the image", name)
	}
	sum := r.getNode(t, r.node).TaskResults[proto.TaskFirmware]
	if sum == nil || len(sum.Results) == 0 {
		t.Errorf("node.task_results.firmware has no results: %+v", sum)
	}
}

// biosSettings are set by the bios task and read back.
const biosSettings = `{"BootOrder":"pxe,disk","HyperThreading":"off"}`

// bios applies settings with the lab tool; the verify step reads back
// what was set.
func (r *taskRun) bios(t *testing.T) {
	task, tt := r.runTask(t, proto.TaskBIOS, proto.TaskSucceeded, "settings="+biosSettings)
	t.Log(tt.phaseLines("bios (lab tool)"))
	var want map[string]string
	if err := json.Unmarshal([]byte(biosSettings), &want); err != nil {
		t.Fatal(err)
	}
	verify := stepByName(t, task, proto.StepNameVerify)
	got := readBackSettings(t, verify.Result)
	t.Logf("bios verify result: %s", verify.Result)
	for k, v := range want {
		if got[k] != v {
			t.Errorf("bios setting %s read back %q, want %q (verify result %s)", k, got[k], v, verify.Result)
		}
	}
}

// biosMismatch: with a vendor tool whose BIOS Set applies nothing
// (labIgnoresSet, through the vendor_tools setting), the verify step's
// readback cannot match: it fails naming the setting, the task fails with
// the console log attached, the node is failed with a last_error naming
// task and step. The vendor_tools setting is cleared after (the built-in
// lab tool again).
func (r *taskRun) biosMismatch(t *testing.T) {
	tools := []proto.VendorTool{labIgnoresSet}
	r.l.mustCall("PATCH", "/v1/settings", proto.SettingsPatch{VendorTools: &tools}, nil)
	defer func() {
		none := []proto.VendorTool{}
		r.l.mustCall("PATCH", "/v1/settings", proto.SettingsPatch{VendorTools: &none}, nil)
	}()
	const setting = "SRIOV" // Disabled on a fresh lab device, and not set by the bios step
	task, tt := r.runTask(t, proto.TaskBIOS, proto.TaskFailed, `settings={"`+setting+`":"Enabled"}`)
	t.Log(tt.phaseLines("bios, readback mismatch (failed task)"))
	if task.Vendor != labIgnoresSet.Name {
		t.Errorf("task vendor %q, want %s (the vendor_tools setting)", task.Vendor, labIgnoresSet.Name)
	}
	var failed *proto.Step
	for i, s := range task.Steps {
		if s.State == proto.StepFailed {
			failed = &task.Steps[i]
		}
	}
	if failed == nil {
		t.Fatalf("failed task %s has no failed step: %+v", task.ID, task.Steps)
	}
	t.Logf("failed step %s: %q; task error %q", failed.Name, failed.Error, task.Error)
	if failed.Name != proto.StepNameVerify {
		t.Errorf("step %s failed, want verify (the readback)", failed.Name)
	}
	if !strings.Contains(failed.Error, setting) {
		t.Errorf("the failed step's error %q does not name the setting %s", failed.Error, setting)
	}
	if !strings.Contains(task.Error, setting) {
		t.Errorf("the task's error %q does not name the setting %s", task.Error, setting)
	}
	// The agent's capture of the task's console is attached to the
	// failed task after it ended (a Raft command of its own).
	var withLog proto.Task
	testkit.Until(t, time.Minute, "the console log of the task's boot attached to the failed task", func() error {
		var err error
		if withLog, err = r.getTask(task.ID); err != nil {
			return err
		}
		if withLog.ConsoleLog == "" {
			return fmt.Errorf("task %s (%s) has no console_log", task.ID, withLog.State)
		}
		return nil
	})
	console := cleanConsole([]byte(withLog.ConsoleLog))
	t.Logf("failed task's console log: %d bytes, attached %.1fs after the task ended; last lines:\n%s",
		len(withLog.ConsoleLog), time.Since(task.EndedAt).Seconds(), tail(console, 8))
	// It shows the ramdisk running the failing step. (The ramdisk's own
	// line about the failure comes after its report and may be missed:
	// the capture stops when the task leaves the boot state.)
	if !strings.Contains(console, task.ID) || !strings.Contains(console, failed.Name) {
		t.Errorf("the failed task's console log does not show the ramdisk running task %s's step %s", task.ID, failed.Name)
	}
	if !strings.Contains(console, setting) {
		t.Logf("note: the console log ends before the ramdisk logged the failure (no %q in it)", setting)
	}
	n := r.getNode(t, r.node)
	t.Logf("node after the failed task: %s, last_error %q", n.ProvisionState, n.LastError)
	if !strings.Contains(n.LastError, task.ID) || !strings.Contains(n.LastError, failed.Name) {
		t.Errorf("node last_error %q does not name the task (%s) and the step (%s)", n.LastError, task.ID, failed.Name)
	}
}

// inspectAddedDisk adds a disk to the VM while it is off; an inspect
// finds it, and the node's inventory is replaced.
func (r *taskRun) inspectAddedDisk(t *testing.T) {
	_, before := r.inventory(t)
	if slices.ContainsFunc(before.Disks, func(d proto.Disk) bool { return d.Serial == addedDisk.Serial }) {
		t.Fatalf("disk %s is in the inventory before it was added", addedDisk.Serial)
	}
	r.v.AddDisk(addedDisk)
	_, tt := r.runTask(t, proto.TaskInspect, proto.TaskSucceeded)
	t.Log(tt.phaseLines("inspect (a disk added)"))
	_, after := r.inventory(t)
	t.Logf("inventory after the disk was added: %s", summary(after))
	if !slices.ContainsFunc(after.Disks, func(d proto.Disk) bool {
		return d.Serial == addedDisk.Serial && d.SizeBytes == addedDisk.Size
	}) {
		t.Errorf("the inventory has no disk %s of %d bytes after inspect: %s", addedDisk.Serial, addedDisk.Size, summary(after))
	}
	for _, d := range before.Disks {
		if d.Serial != "" && !slices.ContainsFunc(after.Disks, func(e proto.Disk) bool { return e.Serial == d.Serial }) {
			t.Errorf("disk %s (%s) is gone from the inventory after inspect", d.Serial, d.Name)
		}
	}
	if !collectedAt(after).After(collectedAt(before)) {
		t.Errorf("inventory collected at %s, not after the last one (%s): not replaced", after.Collected.At, before.Collected.At)
	}
}
