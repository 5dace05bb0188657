package fsm

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/coordinator/decide"
	"github.com/metalfleet/metalfleet/coordinator/state"
	"github.com/metalfleet/metalfleet/proto"
)

const mac1 = "52:54:00:00:00:01"

var taskKey = []byte("0123456789abcdef0123456789abcdef")

// taskFleet is rack r1 with the task images and settings, and node n1
// manageable in it (BMC verified) with a QEMU inventory of two disks.
func taskFleet(t *testing.T) *harness {
	h := newHarness(t)
	h.must(rackWithPool())
	for _, im := range []proto.Image{
		{Name: "tk", Kind: proto.ImageKernel, URL: "http://x/tk", SHA256: sha},
		{Name: "tr", Kind: proto.ImageRamdisk, URL: "http://x/tr", SHA256: sha},
		{Name: "fw", Kind: proto.ImageFirmware, URL: "http://x/fw.bin", SHA256: sha, Size: 4096},
	} {
		h.must(ImagePut{Image: im, Create: true})
	}
	k, r, cmd := "tk", "tr", "console=ttyS0"
	h.must(SettingsUpdate{Patch: proto.SettingsPatch{TasksKernel: &k, TasksRamdisk: &r, TasksCmdline: &cmd}})
	inv, _ := json.Marshal(proto.Inventory{Version: proto.InventoryVersion, System: proto.System{Vendor: "QEMU", Product: "Standard PC"},
		Disks: []proto.Disk{{Name: "vda", Serial: "D1", SizeBytes: 1 << 30}, {Name: "vdb", Serial: "D2", SizeBytes: 1 << 30}}})
	c := node(uuid1, "n1", mac1, proto.StateEnrolled)
	c.Node.Rack = "r1"
	c.Node.BMC = proto.BMC{Driver: proto.DriverIPMI, Address: "10.9.1.1", Username: "admin", Password: "s3cret"}
	c.Node.Inventory = inv
	h.must(c)
	h.must(NodeIntent{Ref: "n1", Intent: proto.Intent{Action: proto.ActionVerify, OnSuccess: "manage", Agent: "a1", At: t0}})
	h.must(bmcReport(1, proto.ActionVerify, "", t0.Add(time.Second)))
	if n := node1(h); n.ProvisionState != proto.StateManageable {
		t.Fatalf("fleet: node n1 is %s, want manageable", n.ProvisionState)
	}
	return h
}

var tc0 = t0.Add(time.Hour) // when the tests' tasks are created

func taskCreate(id string, kind proto.TaskKind, params map[string]string) TaskCreate {
	return TaskCreate{Ref: "n1", Task: proto.Task{ID: id, Kind: kind, Params: params, By: "ops (tok-1)"},
		Agent: "a1", Key: taskKey, Now: tc0}
}

// stepReport is a rack agent's report of a ramdisk's step report, as
// httpboot queues it (the node's MAC and uuid, the body as data).
func stepReport(id string, sr proto.StepReport, at time.Time) AgentReports {
	data, err := json.Marshal(sr)
	if err != nil {
		panic(err)
	}
	return AgentReports{Rack: "r1", Reports: []proto.AgentReport{{ID: id, Kind: proto.ReportCallback, Step: proto.StepTask,
		Rack: "r1", MAC: mac1, Node: uuid1, Time: at, Data: data}}}
}

// report applies one step report and returns why it was rejected ("" if
// it was acknowledged).
func (h *harness) report(id string, sr proto.StepReport, at time.Time) string {
	h.t.Helper()
	res := h.must(stepReport(id, sr, at)).(*AgentReportsResult)
	if why, ok := res.Rejected[id]; ok {
		return why
	}
	if len(res.Acked) != 1 || res.Acked[0] != id {
		h.t.Fatalf("report %s: acked %v rejected %v", id, res.Acked, res.Rejected)
	}
	return ""
}

func (h *harness) mustReport(id string, sr proto.StepReport, at time.Time) {
	h.t.Helper()
	if why := h.report(id, sr, at); why != "" {
		h.t.Fatalf("report %s (%s %s) rejected: %s", id, sr.Step, sr.Event, why)
	}
}

func (h *harness) task(id string) *proto.Task {
	h.t.Helper()
	t, ok := h.f.Store().Task(id)
	if !ok {
		h.t.Fatalf("task %s not found", id)
	}
	return t
}

// taskBytes is node n1, its history and its tasks (with token hashes) as
// JSON: what a step report may or may not change.
func taskBytes(h *harness) string {
	var hashes []string
	ts := h.f.Store().NodeTasks(uuid1)
	for _, t := range ts {
		hashes = append(hashes, t.TokenHash)
	}
	b, err := json.Marshal([]any{node1(h), h.f.Store().History(uuid1), ts, hashes})
	if err != nil {
		h.t.Fatal(err)
	}
	return string(b)
}

// setNode changes node n1 in the store directly (a state no command
// sequence here reaches cheaply), at the next index.
func (h *harness) setNode(edit func(n *proto.Node)) {
	h.t.Helper()
	h.index++
	err := h.f.Store().Write(h.index, func(tx *state.Tx) error {
		n := tx.Node(uuid1).Clone()
		edit(n)
		tx.PutNode(n)
		return nil
	})
	if err != nil {
		h.t.Fatal(err)
	}
}

func lastIntent(n *proto.Node) proto.Intent {
	if len(n.Intents) == 0 {
		return proto.Intent{}
	}
	return n.Intents[len(n.Intents)-1]
}

// TestTaskCreateWrongState: a task on a node in any state but manageable
// is refused with wrong_state naming the state, and changes nothing.
func TestTaskCreateWrongState(t *testing.T) {
	for _, st := range proto.AllStates {
		if st == proto.StateManageable {
			continue
		}
		t.Run(string(st), func(t *testing.T) {
			h := taskFleet(t)
			h.setNode(func(n *proto.Node) { n.ProvisionState = st })
			h.fails(taskCreate("t-1", proto.TaskInspect, nil), proto.CodeWrongState, "it is "+string(st)+"; service is allowed from manageable")
		})
	}
}

func TestTaskCreateRefusals(t *testing.T) {
	t.Run("maintenance", func(t *testing.T) {
		h := taskFleet(t)
		h.must(NodeSetMaintenance{Ref: "n1", Maintenance: true, Reason: "new PSU", Now: t0})
		h.fails(taskCreate("t-1", proto.TaskInspect, nil), proto.CodeWrongState, "in maintenance (new PSU)")
	})
	t.Run("no BMC", func(t *testing.T) {
		h := taskFleet(t)
		h.setNode(func(n *proto.Node) { n.BMC = proto.BMC{} })
		h.fails(taskCreate("t-1", proto.TaskInspect, nil), proto.CodeWrongState, "has no BMC")
	})
	t.Run("a second task while one runs", func(t *testing.T) {
		h := taskFleet(t)
		h.must(taskCreate("t-1", proto.TaskInspect, nil))
		h.fails(taskCreate("t-2", proto.TaskBurnin, nil), proto.CodeWrongState, "it is servicing")
		if n := len(h.f.Store().NodeTasks(uuid1)); n != 1 {
			t.Fatalf("node has %d tasks, want 1", n)
		}
	})
	t.Run("bad params", func(t *testing.T) {
		h := taskFleet(t)
		h.fails(taskCreate("t-1", proto.TaskBurnin, map[string]string{"duration": "forever"}), proto.CodeInvalid, "param duration=")
		h.fails(taskCreate("t-1", proto.TaskRAID, map[string]string{"level": "1", "disks": "D1,D9"}), proto.CodeInvalid, `no disk with serial "D9"`)
		h.fails(taskCreate("t-1", proto.TaskFirmware, map[string]string{"component": "bios", "image": "nope"}), proto.CodeInvalid, `image "nope" does not exist`)
		h.fails(taskCreate("t-1", proto.TaskFirmware, map[string]string{"component": "bios", "image": "tk"}), proto.CodeInvalid, "not a firmware image")
	})
	t.Run("no task images", func(t *testing.T) {
		h := taskFleet(t)
		empty := ""
		h.must(SettingsUpdate{Patch: proto.SettingsPatch{TasksKernel: &empty}})
		h.fails(taskCreate("t-1", proto.TaskInspect, nil), proto.CodeWrongState, "tasks.kernel is not set")
	})
	t.Run("no vendor tool for the model", func(t *testing.T) {
		h := taskFleet(t)
		h.setNode(func(n *proto.Node) {
			n.Inventory, _ = json.Marshal(proto.Inventory{System: proto.System{Vendor: "Dell Inc.", Product: "PowerEdge R650"}})
		})
		h.fails(taskCreate("t-1", proto.TaskBIOS, map[string]string{"settings": `{"BootMode":"UEFI"}`}), proto.CodeWrongState,
			`vendor "Dell Inc." product "PowerEdge R650"`)
	})
	t.Run("no rack agent named", func(t *testing.T) {
		h := taskFleet(t)
		c := taskCreate("t-1", proto.TaskInspect, nil)
		c.Agent = ""
		h.fails(c, proto.CodeInternal, "rack agent")
	})
}

// TestTaskCreate: the node becomes servicing, its boot config is saved
// and replaced by the task ramdisk, and its agent gets boot device PXE
// then a power cycle; a retried request gives back the same task.
func TestTaskCreate(t *testing.T) {
	h := taskFleet(t)
	c := taskCreate("t-1", proto.TaskBurnin, map[string]string{"duration": "5s", "network": "false"})
	c.Request = "req-1"
	got := h.must(c).(*proto.Task)
	if got.ID != "t-1" || got.State != proto.TaskRunning || got.Node != uuid1 || got.Current != 0 || len(got.Steps) != 3 ||
		time.Duration(got.Timeout) != 5*time.Second+30*time.Minute || !got.ProgressAt.Equal(tc0) || got.Request != "req-1" {
		t.Fatalf("TaskCreate = %+v, want t-1 running on n1, 3 steps, timeout 30m5s, request req-1", got)
	}
	token := decide.TaskToken(taskKey, uuid1, "t-1")
	if tk := h.task("t-1"); tk.TokenHash != decide.TokenHash(token) {
		t.Fatalf("task token hash %q, want the hash of TaskToken(key, node, task)", tk.TokenHash)
	}

	n := node1(h)
	if n.ProvisionState != proto.StateServicing || n.Task != "t-1" {
		t.Fatalf("node %s task %q, want servicing t-1", n.ProvisionState, n.Task)
	}
	if n.SavedBoot == nil || n.SavedBoot.Task != "t-1" || n.SavedBoot.Boot != nil {
		t.Fatalf("saved boot %+v, want saved by t-1 with no boot config of its own", n.SavedBoot)
	}
	if b := n.Boot; b == nil || b.Kind != proto.BootRamdisk || b.Task != "burnin" || b.Kernel == nil || b.Kernel.Name != "tk" ||
		b.Initrd == nil || b.Initrd.Name != "tr" || b.Cmdline != "console=ttyS0" || b.TaskToken != "" {
		t.Fatalf("node boot %+v, want the tk/tr task ramdisk of task burnin, no token stored", b)
	}
	if len(n.Intents) != 3 {
		t.Fatalf("intents %+v, want the verify, then boot-device and power", n.Intents)
	}
	bd, pw := n.Intents[1], n.Intents[2]
	if bd.Action != proto.ActionBootDevice || bd.Boot == nil || bd.Boot.Device != proto.BootDevicePXE || bd.Agent != "a1" || bd.Done {
		t.Errorf("intent %+v, want boot-device pxe for a1", bd)
	}
	if pw.Action != proto.ActionPower || pw.Power != proto.PowerTargetReboot || pw.Agent != "a1" || pw.Done || pw.Generation <= bd.Generation {
		t.Errorf("intent %+v, want power reboot for a1 after the boot device", pw)
	}
	if b := decide.NodeBMC(n); b == nil || len(b.Intents) != 2 {
		t.Errorf("the agent's boot state BMC %+v, want both pending intents", b)
	}
	// The rack's agents get the token and the plan.
	h.f.Store().ReadRack("r1", func(v state.RackView) {
		st := decide.RackBootState(decide.RackInput(v))
		bn := st.Nodes[0]
		if bn.Boot.TaskToken != token || bn.Task == nil || bn.Task.ID != "t-1" || len(bn.Task.Steps) != 3 {
			t.Errorf("boot state node: token %q plan %+v, want the task token and its 3-step plan", bn.Boot.TaskToken, bn.Task)
		}
	})
	if hs := h.f.Store().History(uuid1); !strings.Contains(hs[len(hs)-1].Message, "task t-1 (burnin) started: 3 steps") {
		t.Errorf("last history event %+v, want the task's start", hs[len(hs)-1])
	}

	// A retry of the same request (a new id made by the retrying API
	// call) gives back the task it created, and changes nothing.
	before := taskBytes(h)
	retry := taskCreate("t-2", proto.TaskBurnin, map[string]string{"duration": "5s", "network": "false"})
	retry.Request = "req-1"
	if again := h.must(retry).(*proto.Task); again.ID != "t-1" {
		t.Fatalf("retried request = task %s, want t-1", again.ID)
	}
	if taskBytes(h) != before {
		t.Fatal("a retried request changed the state")
	}
}

// runStep reports start, progress and a passed result of step i.
func (h *harness) runStep(task string, i int, name string, at time.Time, edit func(*proto.StepReport)) {
	h.t.Helper()
	for _, ev := range []string{proto.StepEventStart, proto.StepEventProgress, proto.StepEventResult} {
		r := proto.StepReport{Task: task, Step: name, Index: i, Event: ev, Percent: 50, Passed: ev == proto.StepEventResult,
			Log: name + " " + ev + "\n"}
		if ev == proto.StepEventResult && edit != nil {
			edit(&r)
		}
		h.mustReport(fmt.Sprintf("%s-%d-%s", task, i, ev), r, at)
	}
}

// TestTaskStepReports runs a raid task through step reports: refusals,
// a replay, and the end (manageable, boot restored, powered off, results
// kept, inventory replaced).
func TestTaskStepReports(t *testing.T) {
	h := taskFleet(t)
	h.must(taskCreate("t-1", proto.TaskRAID, map[string]string{"level": "1", "disks": "D1,D2"}))
	at := tc0.Add(2 * time.Minute)

	// Out of order: the inventory step before the raid step passed.
	before := taskBytes(h)
	if why := h.report("early", proto.StepReport{Task: "t-1", Step: "inventory", Index: 1, Event: proto.StepEventStart}, at); !strings.Contains(why, "step 1 (inventory) reported before step 0 (raid) passed") {
		t.Fatalf("out-of-order report: rejected %q, want it refused naming the steps", why)
	}
	// Another task id.
	if why := h.report("other", proto.StepReport{Task: "t-nope", Step: "raid", Index: 0, Event: proto.StepEventStart}, at); !strings.Contains(why, `task "t-nope" not found`) {
		t.Fatalf("report for another task: rejected %q, want not found", why)
	}
	if taskBytes(h) != before {
		t.Fatal("refused step reports changed the state")
	}

	h.runStep("t-1", 0, "raid", at, func(r *proto.StepReport) { r.Result = json.RawMessage(`{"arrays":["md0"]}`) })
	tk := h.task("t-1")
	if tk.Current != 1 || tk.Steps[0].State != proto.StepPassed || tk.Steps[0].Attempts != 1 || tk.Steps[0].Log != "raid start\nraid progress\nraid result\n" {
		t.Fatalf("after the raid step: current %d, step %+v", tk.Current, tk.Steps[0])
	}

	// The raid step's result again (the agent queued it again: a new seq,
	// the same body) changes nothing.
	before = taskBytes(h)
	replay := proto.StepReport{Task: "t-1", Step: "raid", Index: 0, Event: proto.StepEventResult, Passed: true, Result: json.RawMessage(`{"arrays":["md0"]}`), Log: "raid result\n"}
	if why := h.report("replay", replay, at.Add(time.Second)); why != "" {
		t.Fatalf("replayed result rejected: %s (a replay is acknowledged and dropped)", why)
	}
	if taskBytes(h) != before {
		t.Fatal("a replayed step report changed the state")
	}

	// A reboot mid-step: the inventory step starts twice.
	h.mustReport("inv-start-1", proto.StepReport{Task: "t-1", Step: "inventory", Index: 1, Event: proto.StepEventStart}, at)
	newInv := &proto.Inventory{Version: proto.InventoryVersion, System: proto.System{Vendor: "QEMU", Product: "Standard PC"},
		Disks: []proto.Disk{{Name: "md0", RAID: "raid1", SizeBytes: 1 << 30}, {Name: "vda", Serial: "D1"}, {Name: "vdb", Serial: "D2"}}}
	h.runStep("t-1", 1, "inventory", at.Add(time.Minute), func(r *proto.StepReport) { r.Inventory = newInv })
	if s := h.task("t-1").Steps[1]; s.Attempts != 2 {
		t.Errorf("inventory step attempts %d, want 2 (started again)", s.Attempts)
	}

	tk, n := h.task("t-1"), node1(h)
	if tk.State != proto.TaskSucceeded || tk.Current != 2 || tk.EndedAt.IsZero() {
		t.Fatalf("task %s current %d, want succeeded, 2", tk.State, tk.Current)
	}
	if n.ProvisionState != proto.StateManageable || n.Task != "" || n.SavedBoot != nil || n.Boot != nil || n.LastError != "" {
		t.Fatalf("node %s task %q saved %+v boot %+v last_error %q, want manageable, no task, its boot config back (none)", n.ProvisionState, n.Task, n.SavedBoot, n.Boot, n.LastError)
	}
	if in := lastIntent(n); in.Action != proto.ActionPower || in.Power != proto.PowerTargetOff || in.Agent != "a1" || in.Done {
		t.Fatalf("last intent %+v, want power off for a1", in)
	}
	sum := n.TaskResults[proto.TaskRAID]
	if sum == nil || sum.ID != "t-1" || sum.State != proto.TaskSucceeded || string(sum.Results["raid"]) != `{"arrays":["md0"]}` {
		t.Fatalf("task_results[raid] = %+v, want t-1 succeeded with the raid step's result", sum)
	}
	var inv proto.Inventory
	if err := json.Unmarshal(n.Inventory, &inv); err != nil || len(inv.Disks) != 3 || inv.Disks[0].RAID != "raid1" {
		t.Fatalf("node inventory %s, want the inventory step's (md0 raid1)", n.Inventory)
	}
	h.f.Store().ReadRack("r1", func(v state.RackView) {
		if bn := decide.RackBootState(decide.RackInput(v)).Nodes[0]; bn.Boot.TaskToken != "" || bn.Task != nil || bn.Boot.Kind != proto.BootLocalDisk {
			t.Errorf("boot state after the end: %+v plan %+v, want local disk, no token, no plan", bn.Boot, bn.Task)
		}
	})
	// A new task may not reuse an id.
	h.fails(taskCreate("t-1", proto.TaskInspect, nil), proto.CodeConflict, "task t-1 already exists")
	// A late report after the end changes nothing.
	before = taskBytes(h)
	if why := h.report("late", proto.StepReport{Task: "t-1", Step: "inventory", Index: 1, Event: proto.StepEventProgress, Percent: 90}, at.Add(time.Hour)); why != "" {
		t.Fatalf("late report rejected: %s", why)
	}
	if taskBytes(h) != before {
		t.Fatal("a late step report changed the state")
	}
}

func TestTaskStepFails(t *testing.T) {
	h := taskFleet(t)
	h.must(taskCreate("t-1", proto.TaskBurnin, map[string]string{"duration": "5s"}))
	at := tc0.Add(3 * time.Minute)
	h.mustReport("s", proto.StepReport{Task: "t-1", Step: "cpu", Index: 0, Event: proto.StepEventStart}, at)
	h.mustReport("r", proto.StepReport{Task: "t-1", Step: "cpu", Index: 0, Event: proto.StepEventResult,
		Error: "checksum mismatch on core 3", Result: json.RawMessage(`{"status":"fail","errors":1}`)}, at)
	tk, n := h.task("t-1"), node1(h)
	if tk.State != proto.TaskFailed || tk.Steps[0].State != proto.StepFailed {
		t.Fatalf("task %s step %s, want failed", tk.State, tk.Steps[0].State)
	}
	if n.ProvisionState != proto.StateFailed || n.Task != "" || n.Boot != nil || n.SavedBoot != nil {
		t.Fatalf("node %s task %q boot %+v, want failed with its boot config back", n.ProvisionState, n.Task, n.Boot)
	}
	for _, want := range []string{"t-1", "burnin", "step 1 (cpu)", "checksum mismatch on core 3"} {
		if !strings.Contains(n.LastError, want) {
			t.Errorf("last_error %q does not name %q", n.LastError, want)
		}
	}
	if in := lastIntent(n); in.Action != proto.ActionPower || in.Power != proto.PowerTargetOff {
		t.Errorf("last intent %+v, want power off", in)
	}
	if s := n.TaskResults[proto.TaskBurnin]; s == nil || s.State != proto.TaskFailed || string(s.Results["cpu"]) != `{"status":"fail","errors":1}` {
		t.Errorf("task_results[burnin] = %+v, want failed with the cpu result", s)
	}
}

func TestTaskAbort(t *testing.T) {
	fw := map[string]string{"component": "bios", "image": "fw"}
	abort := func(task string) TaskAbort {
		return TaskAbort{Ref: "n1", Task: task, By: "ops (tok-1)", Agent: "a1", Now: tc0.Add(10 * time.Minute)}
	}
	t.Run("refused during a firmware write, allowed after it", func(t *testing.T) {
		h := taskFleet(t)
		tk := h.must(taskCreate("t-1", proto.TaskFirmware, fw)).(*proto.Task)
		if tk.Vendor != "metalfleet-lab" {
			t.Fatalf("firmware task vendor %q, want the lab tool (a QEMU machine)", tk.Vendor)
		}
		at := tc0.Add(time.Minute)
		h.runStep("t-1", 0, "download", at, nil)
		h.mustReport("apply-start", proto.StepReport{Task: "t-1", Step: "apply", Index: 1, Event: proto.StepEventStart}, at)
		h.fails(abort("t-1"), proto.CodeWrongState, "step 2 (apply) is writing firmware")
		h.mustReport("apply-done", proto.StepReport{Task: "t-1", Step: "apply", Index: 1, Event: proto.StepEventResult, Passed: true}, at)
		h.mustReport("verify-start", proto.StepReport{Task: "t-1", Step: "verify", Index: 2, Event: proto.StepEventStart}, at)
		got := h.must(abort("t-1")).(*proto.Task)
		if got.State != proto.TaskAborted || got.Steps[2].State != proto.StepFailed || got.Steps[2].Error != "aborted" {
			t.Fatalf("aborted task %s, step %+v", got.State, got.Steps[2])
		}
		n := node1(h)
		if n.ProvisionState != proto.StateManageable || n.Task != "" || n.Boot != nil || !strings.Contains(n.LastError, "aborted by ops (tok-1) at step 3 (verify)") {
			t.Fatalf("node %s task %q boot %+v last_error %q, want manageable, boot back, last_error saying aborted", n.ProvisionState, n.Task, n.Boot, n.LastError)
		}
		if in := lastIntent(n); in.Action != proto.ActionPower || in.Power != proto.PowerTargetOff || in.Agent != "a1" {
			t.Errorf("last intent %+v, want power off for a1", in)
		}
		h.fails(abort("t-1"), proto.CodeWrongState, "already ended (aborted)")
		h.fails(abort("t-nope"), proto.CodeNotFound, `no task "t-nope"`)
		// A report after the abort changes nothing.
		before := taskBytes(h)
		if why := h.report("after", proto.StepReport{Task: "t-1", Step: "verify", Index: 2, Event: proto.StepEventResult, Passed: true}, at); why != "" {
			t.Fatalf("report after the abort rejected: %s", why)
		}
		if taskBytes(h) != before {
			t.Fatal("a report after the abort changed the state")
		}
	})
	t.Run("before the write starts", func(t *testing.T) {
		h := taskFleet(t)
		h.must(taskCreate("t-1", proto.TaskFirmware, fw))
		h.runStep("t-1", 0, "download", tc0.Add(time.Minute), nil)
		h.must(abort("t-1"))
		if n := node1(h); n.ProvisionState != proto.StateManageable || !strings.Contains(n.LastError, "aborted") {
			t.Fatalf("node %s last_error %q, want manageable, aborted", n.ProvisionState, n.LastError)
		}
	})
	t.Run("no agent: ended, not powered off", func(t *testing.T) {
		h := taskFleet(t)
		h.must(taskCreate("t-1", proto.TaskInspect, nil))
		a := abort("t-1")
		a.Agent = ""
		h.must(a)
		n := node1(h)
		if in := lastIntent(n); n.ProvisionState != proto.StateManageable || in.Action == proto.ActionPower && in.Power == proto.PowerTargetOff {
			t.Fatalf("node %s last intent %+v, want manageable and no power off", n.ProvisionState, in)
		}
		hs := h.f.Store().History(uuid1)
		if !strings.Contains(hs[len(hs)-1].Message, "not powered off") {
			t.Errorf("last history event %q, want it to say the node was not powered off", hs[len(hs)-1].Message)
		}
	})
	t.Run("another node's task", func(t *testing.T) {
		h := taskFleet(t)
		h.must(taskCreate("t-1", proto.TaskInspect, nil))
		c := node(uuid2, "n2", "52:54:00:00:00:02", proto.StateEnrolled)
		h.must(c)
		h.fails(TaskAbort{Ref: "n2", Task: "t-1", By: "ops", Now: tc0}, proto.CodeNotFound, `node n2 has no task "t-1"`)
	})
}

func TestTaskTimeout(t *testing.T) {
	h := taskFleet(t)
	h.must(taskCreate("t-1", proto.TaskInspect, nil)) // 30 minutes
	h.mustReport("s", proto.StepReport{Task: "t-1", Step: "inventory", Index: 0, Event: proto.StepEventStart}, tc0.Add(10*time.Minute))

	// Not yet (progress at +10m): nothing changes.
	before := taskBytes(h)
	if v := h.must(TaskTimeout{Task: "t-1", Agent: "a1", Now: tc0.Add(35 * time.Minute)}); v != nil {
		t.Fatalf("TaskTimeout before the timeout = %+v, want nothing", v)
	}
	if taskBytes(h) != before {
		t.Fatal("an early TaskTimeout changed the state")
	}
	got := h.must(TaskTimeout{Task: "t-1", Agent: "a1", Now: tc0.Add(41 * time.Minute)}).(*proto.Task)
	if got.State != proto.TaskFailed || got.Steps[0].State != proto.StepFailed || got.Steps[0].Error != "timed out" {
		t.Fatalf("timed-out task %s step %+v", got.State, got.Steps[0])
	}
	n := node1(h)
	if n.ProvisionState != proto.StateFailed || n.Boot != nil || n.Task != "" ||
		!strings.Contains(n.LastError, "t-1 (inspect) failed at step 1 (inventory): no progress for 30m0s") {
		t.Fatalf("node %s boot %+v last_error %q, want failed, boot back, naming task, step and timeout", n.ProvisionState, n.Boot, n.LastError)
	}
	if in := lastIntent(n); in.Action != proto.ActionPower || in.Power != proto.PowerTargetOff {
		t.Errorf("last intent %+v, want power off", in)
	}
	// Again (a second leader's round): nothing.
	before = taskBytes(h)
	if v := h.must(TaskTimeout{Task: "t-1", Agent: "a1", Now: tc0.Add(50 * time.Minute)}); v != nil || taskBytes(h) != before {
		t.Fatalf("a second TaskTimeout = %+v or changed the state", v)
	}
}

func TestTaskConsoleLog(t *testing.T) {
	h := taskFleet(t)
	h.must(taskCreate("t-1", proto.TaskInspect, nil))
	// A running task gets none.
	h.must(TaskConsoleLog{Task: "t-1", Log: "too early"})
	if l := h.task("t-1").ConsoleLog; l != "" {
		t.Fatalf("a running task got a console log %q", l)
	}
	h.must(TaskTimeout{Task: "t-1", Now: tc0.Add(time.Hour)})
	big := "boot line\n" + strings.Repeat("y", proto.MaxTaskConsoleLog) + "LAST"
	h.must(TaskConsoleLog{Task: "t-1", Log: big})
	l := h.task("t-1").ConsoleLog
	if len(l) != proto.MaxTaskConsoleLog || !strings.HasSuffix(l, "LAST") {
		t.Fatalf("console log of %d bytes, want the last %d", len(l), proto.MaxTaskConsoleLog)
	}
	h.must(TaskConsoleLog{Task: "t-1", Log: "a second one"})
	if h.task("t-1").ConsoleLog != l {
		t.Fatal("a second console log replaced the first")
	}
	// An empty log still marks the task done with.
	h.setNode(func(n *proto.Node) { n.ProvisionState = proto.StateManageable })
	h.must(taskCreate("t-2", proto.TaskInspect, nil))
	h.must(TaskTimeout{Task: "t-2", Now: tc0.Add(time.Hour)})
	h.must(TaskConsoleLog{Task: "t-2", Log: ""})
	if l := h.task("t-2").ConsoleLog; l == "" {
		t.Fatal("an empty console log left the task without one (the leader would ask again)")
	}
}

// TestTaskSnapshot: a snapshot keeps the tasks (running and ended),
// their token hashes and the task key; a restored replica makes the same
// token; replaying the log gives the same snapshot.
func TestTaskSnapshot(t *testing.T) {
	h := taskFleet(t)
	h.must(taskCreate("t-1", proto.TaskInspect, nil))
	h.runStep("t-1", 0, "inventory", tc0.Add(time.Minute), nil)
	h.must(taskCreate("t-2", proto.TaskBurnin, map[string]string{"duration": "5s"}))
	h.mustReport("cpu-start", proto.StepReport{Task: "t-2", Step: "cpu", Index: 0, Event: proto.StepEventStart}, tc0.Add(2*time.Minute))

	snap := stateBytes(t, h.f.Store())
	g := New(state.New(), nil)
	if err := g.Store().Restore(bytes.NewReader(snap)); err != nil {
		t.Fatal(err)
	}
	a, b := h.f.Store(), g.Store()
	ta, tb := a.NodeTasks(uuid1), b.NodeTasks(uuid1)
	if len(tb) != 2 || tb[0].ID != "t-2" || tb[1].ID != "t-1" {
		t.Fatalf("restored tasks %v, want t-2 then t-1 (newest first)", tb)
	}
	for i := range ta {
		if fmt.Sprintf("%+v", *ta[i]) != fmt.Sprintf("%+v", *tb[i]) {
			t.Errorf("task %s differs after restore:\n got %+v\nwant %+v", ta[i].ID, *tb[i], *ta[i])
		}
		if tb[i].TokenHash == "" || tb[i].TokenHash != ta[i].TokenHash {
			t.Errorf("task %s token hash %q after restore, want %q", ta[i].ID, tb[i].TokenHash, ta[i].TokenHash)
		}
	}
	if !b.HasTaskKey() {
		t.Fatal("the restored store has no task key")
	}
	var tokA, tokB string
	a.ReadRack("r1", func(v state.RackView) { tokA = decide.RackBootState(decide.RackInput(v)).Nodes[0].Boot.TaskToken })
	b.ReadRack("r1", func(v state.RackView) {
		if !bytes.Equal(v.TaskKey, taskKey) {
			t.Errorf("restored task key %x, want %x", v.TaskKey, taskKey)
		}
		tokB = decide.RackBootState(decide.RackInput(v)).Nodes[0].Boot.TaskToken
	})
	if tokA == "" || tokA != tokB || tokA != decide.TaskToken(taskKey, uuid1, "t-2") {
		t.Fatalf("boot state token %q, after restore %q: want both TaskToken(key, n1, t-2)", tokA, tokB)
	}
	// The restored replica goes on applying the same log.
	h2 := &harness{t: t, f: g, index: h.index, seq: h.seq}
	h2.mustReport("cpu-done", proto.StepReport{Task: "t-2", Step: "cpu", Index: 0, Event: proto.StepEventResult, Passed: true}, tc0.Add(3*time.Minute))
	if tk, _ := b.Task("t-2"); tk.Current != 1 {
		t.Fatalf("restored replica: task t-2 current %d after a result, want 1", tk.Current)
	}

	re := New(state.New(), nil)
	for i, e := range h.log {
		re.ApplyBytes(uint64(i+1), e)
	}
	if !bytes.Equal(snap, stateBytes(t, re.Store())) {
		t.Fatal("replaying the same log gave a different snapshot")
	}
}

// TestTaskNodeDelete: a node with a running task may not be deleted; once
// it ended, deleting the node drops its tasks.
func TestTaskNodeDelete(t *testing.T) {
	h := taskFleet(t)
	h.must(taskCreate("t-1", proto.TaskInspect, nil))
	h.fails(NodeDelete{Ref: "n1"}, proto.CodeWrongState, "it is servicing")
	h.runStep("t-1", 0, "inventory", tc0.Add(time.Minute), nil)
	h.must(NodeDelete{Ref: "n1"})
	if _, ok := h.f.Store().Task("t-1"); ok {
		t.Fatal("task t-1 outlived its node")
	}
	if ts := h.f.Store().NodeTasks(uuid1); len(ts) != 0 {
		t.Fatalf("node tasks %v after the node's delete", ts)
	}
	if rt := h.f.Store().RunningTasks(10); len(rt) != 0 {
		t.Fatalf("running tasks %v after the node's delete", rt)
	}
}

// TestTaskHistoryBounded: a node keeps its last MaxTaskHistory finished
// tasks.
func TestTaskHistoryBounded(t *testing.T) {
	h := taskFleet(t)
	for i := 1; i <= proto.MaxTaskHistory+3; i++ {
		id := fmt.Sprintf("t-%d", i)
		h.must(taskCreate(id, proto.TaskInspect, nil))
		h.runStep(id, 0, "inventory", tc0.Add(time.Duration(i)*time.Minute), nil)
	}
	ts := h.f.Store().NodeTasks(uuid1)
	if len(ts) != proto.MaxTaskHistory || ts[0].ID != fmt.Sprintf("t-%d", proto.MaxTaskHistory+3) || ts[len(ts)-1].ID != "t-4" {
		t.Fatalf("node keeps %d tasks (%s..%s), want %d: t-%d..t-4", len(ts), ts[0].ID, ts[len(ts)-1].ID, proto.MaxTaskHistory, proto.MaxTaskHistory+3)
	}
	if _, ok := h.f.Store().Task("t-1"); ok {
		t.Fatal("the oldest task is still stored")
	}
}

// TestTaskProgressDoesNotWakeAgents: a progress report changes what the
// task shows but not its plan, so the rack's boot index stays; a start
// and a result move it.
func TestTaskProgressDoesNotWakeAgents(t *testing.T) {
	h := taskFleet(t)
	h.must(taskCreate("t-1", proto.TaskBurnin, map[string]string{"duration": "1s"}))
	at := tc0.Add(time.Minute)
	boot := func() uint64 { return h.f.Store().BootIndex("r1") }

	b0 := boot()
	h.mustReport("s", proto.StepReport{Task: "t-1", Step: "cpu", Index: 0, Event: proto.StepEventStart, Boot: "b1"}, at)
	if b1 := boot(); b1 == b0 {
		t.Fatal("a step start did not move the rack's boot index: the agents' plan would be stale")
	}
	b1 := boot()
	h.mustReport("p", proto.StepReport{Task: "t-1", Step: "cpu", Index: 0, Event: proto.StepEventProgress, Percent: 50, Message: "half"}, at.Add(time.Second))
	if got := h.task("t-1").Steps[0]; got.Percent != 50 || got.Message != "half" {
		t.Fatalf("progress not applied: %+v", got)
	}
	if boot() != b1 {
		t.Error("a progress report moved the rack's boot index: every agent of the rack would re-read its boot state")
	}
	h.mustReport("s2", proto.StepReport{Task: "t-1", Step: "cpu", Index: 0, Event: proto.StepEventStart, Boot: "b1"}, at.Add(2*time.Second))
	if got := h.task("t-1").Steps[0]; got.Attempts != 1 || got.Percent != 50 {
		t.Errorf("a start retried from the same boot changed the step: %+v", got)
	}
	h.mustReport("r", proto.StepReport{Task: "t-1", Step: "cpu", Index: 0, Event: proto.StepEventResult, Passed: true}, at.Add(3*time.Second))
	if boot() == b1 {
		t.Error("a step result did not move the rack's boot index")
	}
}
