package decide

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/proto"
)

var t0 = time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC)

// runningTask is a task of kind on node "u1" as TaskCreate records it,
// then changed by each of edits.
func runningTask(kind proto.TaskKind, params map[string]string, edits ...func(*proto.Task)) *proto.Task {
	p, err := proto.ParseTaskParams(kind, params)
	if err != nil {
		panic(err)
	}
	t := &proto.Task{ID: "t-0000000001", Node: "u1", Kind: kind, Params: params, State: proto.TaskRunning,
		Steps: proto.TaskSteps(kind, p), Timeout: proto.Duration(30 * time.Minute), CreatedAt: t0, ProgressAt: t0}
	for _, e := range edits {
		e(t)
	}
	return t
}

// passed marks the first n steps passed and makes step n current.
func passed(n int) func(*proto.Task) {
	return func(t *proto.Task) {
		for i := 0; i < n; i++ {
			t.Steps[i].State, t.Steps[i].Percent, t.Steps[i].Attempts = proto.StepPassed, 100, 1
			t.Steps[i].StartedAt, t.Steps[i].EndedAt = t0, t0.Add(time.Minute)
			t.Steps[i].Result = json.RawMessage(`{"status":"pass"}`)
		}
		t.Current = n
	}
}

// running marks the current step running (attempt 1, a log and 40%).
func running(t *proto.Task) {
	s := &t.Steps[t.Current]
	s.State, s.Attempts, s.StartedAt, s.Percent, s.Log = proto.StepRunning, 1, t0, 40, "first boot\n"
}

func ended(state proto.TaskState) func(*proto.Task) {
	return func(t *proto.Task) { t.State, t.EndedAt = state, t0 }
}

var burnin = map[string]string{"duration": "5s"} // cpu, memory, disk, network

func TestApplyStep(t *testing.T) {
	now := t0.Add(5 * time.Minute)
	for _, tc := range []struct {
		name    string
		task    *proto.Task
		report  proto.StepReport
		verdict TaskVerdict
		errCode proto.Code // "" for no error
		errHas  []string
		check   func(t *testing.T, got *proto.Task)
	}{
		{
			name:    "start of the first step",
			task:    runningTask(proto.TaskInspect, nil),
			report:  proto.StepReport{Task: "t-0000000001", Step: "inventory", Index: 0, Event: proto.StepEventStart, Log: "collecting\n"},
			verdict: TaskMoved,
			check: func(t *testing.T, got *proto.Task) {
				s := got.Steps[0]
				if s.State != proto.StepRunning || s.Attempts != 1 || !s.StartedAt.Equal(now) || s.Log != "collecting\n" {
					t.Errorf("step = %+v, want running, attempt 1, started now, the log", s)
				}
				if !got.ProgressAt.Equal(now) || got.State != proto.TaskRunning || got.Current != 0 {
					t.Errorf("task progress %v state %s current %d, want now, running, 0", got.ProgressAt, got.State, got.Current)
				}
			},
		},
		{
			name: "a passed result moves to the next step",
			task: runningTask(proto.TaskBurnin, burnin, running),
			report: proto.StepReport{Task: "t-0000000001", Step: "cpu", Index: 0, Event: proto.StepEventResult, Passed: true,
				Result: json.RawMessage(`{"status":"pass","ops_per_sec":12}`)},
			verdict: TaskMoved,
			check: func(t *testing.T, got *proto.Task) {
				s := got.Steps[0]
				if s.State != proto.StepPassed || s.Percent != 100 || !s.EndedAt.Equal(now) || string(s.Result) != `{"status":"pass","ops_per_sec":12}` {
					t.Errorf("step 0 = %+v, want passed, 100%%, ended now, the result", s)
				}
				if got.Current != 1 || got.State != proto.TaskRunning || got.Steps[1].State != proto.StepPending {
					t.Errorf("current %d state %s step 1 %s, want 1, running, pending", got.Current, got.State, got.Steps[1].State)
				}
			},
		},
		{
			name: "a replayed result of a passed step changes nothing",
			task: runningTask(proto.TaskBurnin, burnin, passed(1), running),
			report: proto.StepReport{Task: "t-0000000001", Step: "cpu", Index: 0, Event: proto.StepEventResult, Passed: true,
				Result: json.RawMessage(`{"status":"pass","ops_per_sec":99}`)},
			verdict: TaskUnchanged,
		},
		{
			name:    "a replayed start of a passed step changes nothing (a ramdisk resuming)",
			task:    runningTask(proto.TaskBurnin, burnin, passed(2)),
			report:  proto.StepReport{Task: "t-0000000001", Step: "memory", Index: 1, Event: proto.StepEventStart},
			verdict: TaskUnchanged,
		},
		{
			name:    "a report for a later step is refused",
			task:    runningTask(proto.TaskBurnin, burnin, running),
			report:  proto.StepReport{Task: "t-0000000001", Step: "disk", Index: 2, Event: proto.StepEventStart},
			verdict: TaskUnchanged, errCode: proto.CodeConflict,
			errHas: []string{"t-0000000001", "step 2 (disk) reported before step 0 (cpu) passed"},
		},
		{
			name:    "a result for a later step is refused",
			task:    runningTask(proto.TaskFirmware, map[string]string{"component": "bios", "image": "fw"}),
			report:  proto.StepReport{Task: "t-0000000001", Step: "verify", Index: 2, Event: proto.StepEventResult, Passed: true},
			verdict: TaskUnchanged, errCode: proto.CodeConflict, errHas: []string{"before step 0 (download) passed"},
		},
		{
			name: "a start retried from the same ramdisk boot changes nothing",
			task: func() *proto.Task {
				t := runningTask(proto.TaskBurnin, burnin, passed(1), running)
				t.Steps[1].Boot = "boot-a"
				return t
			}(),
			report:  proto.StepReport{Task: "t-0000000001", Step: "memory", Index: 1, Event: proto.StepEventStart, Boot: "boot-a"},
			verdict: TaskUnchanged,
		},
		{
			name: "a start from another ramdisk boot is a restart of the step",
			task: func() *proto.Task {
				t := runningTask(proto.TaskBurnin, burnin, passed(1), running)
				t.Steps[1].Boot = "boot-a"
				return t
			}(),
			report:  proto.StepReport{Task: "t-0000000001", Step: "memory", Index: 1, Event: proto.StepEventStart, Boot: "boot-b"},
			verdict: TaskMoved,
			check: func(t *testing.T, got *proto.Task) {
				if s := got.Steps[1]; s.Attempts != 2 || s.Boot != "boot-b" {
					t.Errorf("step 1 = %+v, want attempt 2 from boot-b", s)
				}
			},
		},
		{
			name:    "start of the current step again counts an attempt (resume after a reboot)",
			task:    runningTask(proto.TaskBurnin, burnin, passed(1), running),
			report:  proto.StepReport{Task: "t-0000000001", Step: "memory", Index: 1, Event: proto.StepEventStart, Log: "second boot\n"},
			verdict: TaskMoved,
			check: func(t *testing.T, got *proto.Task) {
				s := got.Steps[1]
				if s.State != proto.StepRunning || s.Attempts != 2 || s.Percent != 0 || !s.StartedAt.Equal(now) {
					t.Errorf("step 1 = %+v, want running, attempt 2, 0%%, started now", s)
				}
				if s.Log != "first boot\nsecond boot\n" {
					t.Errorf("step 1 log %q, want both boots' lines", s.Log)
				}
				if got.Current != 1 || got.Steps[0].State != proto.StepPassed {
					t.Errorf("current %d, step 0 %s: want 1 and passed (no start over)", got.Current, got.Steps[0].State)
				}
			},
		},
		{
			name:    "progress",
			task:    runningTask(proto.TaskBurnin, burnin, running),
			report:  proto.StepReport{Task: "t-0000000001", Step: "cpu", Index: 0, Event: proto.StepEventProgress, Percent: 55, Message: "pass 3 of 5"},
			verdict: TaskMoved,
			check: func(t *testing.T, got *proto.Task) {
				s := got.Steps[0]
				if s.Percent != 55 || s.Message != "pass 3 of 5" || s.State != proto.StepRunning || s.Attempts != 1 {
					t.Errorf("step = %+v, want 55%%, the message, running, attempt 1", s)
				}
				if !got.ProgressAt.Equal(now) {
					t.Errorf("progress_at %v, want now (progress keeps the task from timing out)", got.ProgressAt)
				}
			},
		},
		{
			name:    "progress of a step whose start was lost starts it",
			task:    runningTask(proto.TaskBurnin, burnin),
			report:  proto.StepReport{Task: "t-0000000001", Step: "cpu", Index: 0, Event: proto.StepEventProgress, Percent: 10},
			verdict: TaskMoved,
			check: func(t *testing.T, got *proto.Task) {
				if s := got.Steps[0]; s.State != proto.StepRunning || s.Attempts != 1 || s.Percent != 10 {
					t.Errorf("step = %+v, want running, attempt 1, 10%%", s)
				}
			},
		},
		{
			name: "a failed result fails the task naming task and step",
			task: runningTask(proto.TaskBurnin, burnin, passed(1), running),
			report: proto.StepReport{Task: "t-0000000001", Step: "memory", Index: 1, Event: proto.StepEventResult,
				Error: "pattern mismatch at 0x1000", Result: json.RawMessage(`{"status":"fail","errors":1}`)},
			verdict: TaskStepFailed,
			check: func(t *testing.T, got *proto.Task) {
				if got.State != proto.TaskFailed || !got.EndedAt.Equal(now) {
					t.Errorf("task state %s ended %v, want failed now", got.State, got.EndedAt)
				}
				for _, want := range []string{"t-0000000001", "burnin", "step 2 (memory)", "pattern mismatch at 0x1000"} {
					if !strings.Contains(got.Error, want) {
						t.Errorf("task error %q does not name %q", got.Error, want)
					}
				}
				if s := got.Steps[1]; s.State != proto.StepFailed || s.Error != "pattern mismatch at 0x1000" || len(s.Result) == 0 {
					t.Errorf("step 1 = %+v, want failed with the error and result", s)
				}
				if got.Current != 1 {
					t.Errorf("current %d, want 1 (the failed step)", got.Current)
				}
			},
		},
		{
			name:    "the last step passing ends the task done",
			task:    runningTask(proto.TaskBurnin, burnin, passed(3), running),
			report:  proto.StepReport{Task: "t-0000000001", Step: "network", Index: 3, Event: proto.StepEventResult, Passed: true},
			verdict: TaskDone,
			check: func(t *testing.T, got *proto.Task) {
				if got.State != proto.TaskSucceeded || got.Current != 4 || !got.EndedAt.Equal(now) || got.CurrentStep() != nil {
					t.Errorf("task state %s current %d ended %v, want succeeded, 4, now, no current step", got.State, got.Current, got.EndedAt)
				}
			},
		},
		{
			name:    "a result without a start counts an attempt",
			task:    runningTask(proto.TaskInspect, nil),
			report:  proto.StepReport{Task: "t-0000000001", Step: "inventory", Index: 0, Event: proto.StepEventResult, Passed: true},
			verdict: TaskDone,
			check: func(t *testing.T, got *proto.Task) {
				if s := got.Steps[0]; s.Attempts != 1 || !s.StartedAt.Equal(now) {
					t.Errorf("step = %+v, want attempt 1, started now", s)
				}
			},
		},
		{
			name:    "another task's report is refused",
			task:    runningTask(proto.TaskInspect, nil),
			report:  proto.StepReport{Task: "t-00000000ff", Step: "inventory", Index: 0, Event: proto.StepEventStart},
			verdict: TaskUnchanged, errCode: proto.CodeConflict, errHas: []string{"t-00000000ff", "t-0000000001"},
		},
		{
			name:    "a step name that does not match its index is refused",
			task:    runningTask(proto.TaskBurnin, burnin),
			report:  proto.StepReport{Task: "t-0000000001", Step: "disk", Index: 0, Event: proto.StepEventStart},
			verdict: TaskUnchanged, errCode: proto.CodeInvalid, errHas: []string{`no step 0 named "disk"`},
		},
		{
			name:    "an index past the last step is refused",
			task:    runningTask(proto.TaskInspect, nil),
			report:  proto.StepReport{Task: "t-0000000001", Step: "inventory", Index: 1, Event: proto.StepEventStart},
			verdict: TaskUnchanged, errCode: proto.CodeInvalid, errHas: []string{"no step 1"},
		},
		{
			name:    "a late report after the end changes nothing",
			task:    runningTask(proto.TaskInspect, nil, running, ended(proto.TaskAborted)),
			report:  proto.StepReport{Task: "t-0000000001", Step: "inventory", Index: 0, Event: proto.StepEventResult, Passed: true},
			verdict: TaskUnchanged,
		},
		{
			name:    "a step's log keeps its last MaxStepLog bytes",
			task:    runningTask(proto.TaskInspect, nil, running),
			report:  proto.StepReport{Task: "t-0000000001", Step: "inventory", Index: 0, Event: proto.StepEventProgress, Log: strings.Repeat("x", proto.MaxStepLog-1) + "END"},
			verdict: TaskMoved,
			check: func(t *testing.T, got *proto.Task) {
				if l := got.Steps[0].Log; len(l) != proto.MaxStepLog || !strings.HasSuffix(l, "END") {
					t.Errorf("log of %d bytes ending %q, want %d ending END", len(l), l[max(0, len(l)-5):], proto.MaxStepLog)
				}
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := tc.task.Clone()
			got, verdict, err := ApplyStep(tc.task, &tc.report, now)
			if verdict != tc.verdict {
				t.Errorf("ApplyStep verdict = %d, want %d", verdict, tc.verdict)
			}
			switch {
			case tc.errCode == "" && err != nil:
				t.Fatalf("ApplyStep error = %v, want none", err)
			case tc.errCode != "" && err == nil:
				t.Fatalf("ApplyStep error = nil, want %s", tc.errCode)
			case tc.errCode != "" && proto.CodeOf(err) != tc.errCode:
				t.Errorf("ApplyStep error code = %s (%v), want %s", proto.CodeOf(err), err, tc.errCode)
			}
			for _, want := range tc.errHas {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("ApplyStep error %q does not say %q", err, want)
				}
			}
			if !reflect.DeepEqual(tc.task, before) {
				t.Errorf("ApplyStep changed its input task:\n got %+v\nwant %+v", tc.task, before)
			}
			if verdict == TaskUnchanged && !reflect.DeepEqual(got, before) {
				t.Errorf("ApplyStep = %+v with verdict unchanged, want the task as it was", got)
			}
			if tc.check != nil {
				tc.check(t, got)
			}
		})
	}
}

// A whole run: every step started, progressed and passed in order, with
// a replay of each report, ends done with each step attempted once.
func TestApplyStepWholeRun(t *testing.T) {
	task := runningTask(proto.TaskFirmware, map[string]string{"component": "bmc", "image": "fw"})
	now := t0
	for i, s := range task.Steps {
		for _, ev := range []string{proto.StepEventStart, proto.StepEventProgress, proto.StepEventResult} {
			r := proto.StepReport{Task: task.ID, Step: s.Name, Index: i, Event: ev, Percent: 50, Passed: true}
			now = now.Add(time.Second)
			next, verdict, err := ApplyStep(task, &r, now)
			if err != nil || verdict == TaskUnchanged {
				t.Fatalf("step %d %s %s: verdict %d err %v, want a move", i, s.Name, ev, verdict, err)
			}
			if _, again, err := ApplyStep(next, &r, now.Add(time.Second)); ev == proto.StepEventResult && (again != TaskUnchanged || err != nil) {
				t.Fatalf("step %d %s: replayed result gives verdict %d err %v, want unchanged", i, s.Name, again, err)
			}
			task = next
		}
	}
	if task.State != proto.TaskSucceeded {
		t.Fatalf("task state %s, want succeeded", task.State)
	}
	for _, s := range task.Steps {
		if s.Attempts != 1 || s.State != proto.StepPassed {
			t.Errorf("step %s: %d attempts, %s; want 1, passed", s.Name, s.Attempts, s.State)
		}
	}
}

func TestTimedOut(t *testing.T) {
	for _, tc := range []struct {
		name string
		task *proto.Task
		now  time.Time
		want bool
	}{
		{"running, within its timeout", runningTask(proto.TaskInspect, nil), t0.Add(29 * time.Minute), false},
		{"running, at its timeout", runningTask(proto.TaskInspect, nil), t0.Add(30 * time.Minute), false},
		{"running, past its timeout", runningTask(proto.TaskInspect, nil), t0.Add(30*time.Minute + time.Second), true},
		{"progress resets the clock", runningTask(proto.TaskInspect, nil, func(t *proto.Task) { t.ProgressAt = t0.Add(20 * time.Minute) }), t0.Add(40 * time.Minute), false},
		{"succeeded long ago", runningTask(proto.TaskInspect, nil, ended(proto.TaskSucceeded)), t0.Add(48 * time.Hour), false},
		{"failed long ago", runningTask(proto.TaskInspect, nil, ended(proto.TaskFailed)), t0.Add(48 * time.Hour), false},
		{"no timeout", runningTask(proto.TaskInspect, nil, func(t *proto.Task) { t.Timeout = 0 }), t0.Add(48 * time.Hour), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := TimedOut(tc.task, tc.now); got != tc.want {
				t.Errorf("TimedOut(progress %v, timeout %s, now %v) = %v, want %v", tc.task.ProgressAt, time.Duration(tc.task.Timeout), tc.now, got, tc.want)
			}
		})
	}
}

func TestCanAbort(t *testing.T) {
	fw := map[string]string{"component": "bios", "image": "fw"}
	for _, tc := range []struct {
		name   string
		task   *proto.Task
		errHas []string // nil: allowed
	}{
		{"firmware, downloading", runningTask(proto.TaskFirmware, fw, running), nil},
		{"firmware, before the write starts", runningTask(proto.TaskFirmware, fw, passed(1)), nil},
		{"firmware, writing", runningTask(proto.TaskFirmware, fw, passed(1), running),
			[]string{"t-0000000001", "cannot be aborted now", "step 2 (apply)", "writing firmware"}},
		{"firmware, verifying", runningTask(proto.TaskFirmware, fw, passed(2), running), nil},
		{"bios apply may be aborted", runningTask(proto.TaskBIOS, map[string]string{"settings": `{"A":"1"}`}, running), nil},
		{"burn-in, running", runningTask(proto.TaskBurnin, burnin, passed(2), running), nil},
		{"succeeded", runningTask(proto.TaskInspect, nil, ended(proto.TaskSucceeded)), []string{"already ended (succeeded)"}},
		{"aborted", runningTask(proto.TaskInspect, nil, ended(proto.TaskAborted)), []string{"already ended (aborted)"}},
		{"failed during a firmware write", runningTask(proto.TaskFirmware, fw, passed(1), running, ended(proto.TaskFailed)), []string{"already ended (failed)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CanAbort(tc.task)
			if tc.errHas == nil {
				if err != nil {
					t.Errorf("CanAbort = %v, want allowed", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("CanAbort = nil, want refused")
			}
			if proto.CodeOf(err) != proto.CodeWrongState {
				t.Errorf("CanAbort code = %s, want %s", proto.CodeOf(err), proto.CodeWrongState)
			}
			for _, want := range tc.errHas {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("CanAbort = %q, want it to say %q", err, want)
				}
			}
		})
	}
}

func TestTaskBoot(t *testing.T) {
	ok := proto.Settings{TasksKernel: "k", TasksRamdisk: "r", TasksCmdline: "console=ttyS0"}
	for _, tc := range []struct {
		name   string
		s      proto.Settings
		props  map[string]string
		reason string // "" for a boot
		kernel string // the kernel artifact's image when it boots
	}{
		{"settings", ok, nil, "", "k"},
		{"nothing set", proto.Settings{}, nil, "cannot boot a task: tasks.kernel is not set; tasks.ramdisk is not set", ""},
		{"ramdisk missing", proto.Settings{TasksKernel: "k", TasksRamdisk: "gone"}, nil, `setting tasks.ramdisk: image "gone" does not exist`, ""},
		{"wrong kind", proto.Settings{TasksKernel: "k", TasksRamdisk: "k"}, nil, `setting tasks.ramdisk: image "k" is a kernel image, not a ramdisk`, ""},
		{"property overrides the setting", ok, map[string]string{PropTasksKernel: "k2"}, "", "k2"},
		{"property names a missing image", ok, map[string]string{PropTasksKernel: "nope"}, `node property tasks.kernel: image "nope" does not exist`, ""},
		{"property names the wrong kind", ok, map[string]string{PropTasksRamdisk: "k"}, `node property tasks.ramdisk: image "k" is a kernel image, not a ramdisk`, ""},
		{"property stands in for an unset setting", proto.Settings{TasksRamdisk: "r"}, map[string]string{PropTasksKernel: "k"}, "", "k"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ims := map[string]*proto.Image{"k": kernel, "r": ramdisk,
				"k2": {Name: "k2", Kind: proto.ImageKernel, URL: "http://x/k2", SHA256: "cc"}}
			b, err := TaskBoot(tc.s, ims, &proto.Node{UUID: "u1", Properties: tc.props}, proto.TaskBurnin)
			if tc.reason != "" {
				if err == nil || !strings.Contains(err.Error(), tc.reason) || proto.CodeOf(err) != proto.CodeWrongState {
					t.Fatalf("TaskBoot error = %v, want wrong_state saying %q", err, tc.reason)
				}
				return
			}
			if err != nil {
				t.Fatalf("TaskBoot error = %v", err)
			}
			if b.Kind != proto.BootRamdisk || b.Task != "burnin" || b.Cmdline != tc.s.TasksCmdline || b.TaskToken != "" {
				t.Errorf("TaskBoot = %+v, want a ramdisk boot of task burnin with the settings' cmdline, no token", b)
			}
			if b.Kernel == nil || b.Kernel.Name != tc.kernel || b.Initrd == nil || b.Initrd.SHA256 != ramdisk.SHA256 {
				t.Errorf("TaskBoot artifacts %+v %+v, want kernel %s and ramdisk r", b.Kernel, b.Initrd, tc.kernel)
			}
		})
	}
	if ready, why := TasksReady(proto.Settings{TasksKernel: "k"}, images); ready || why != "tasks.ramdisk is not set" {
		t.Errorf("TasksReady(no ramdisk) = %v %q, want false, tasks.ramdisk is not set", ready, why)
	}
	if ready, why := TasksReady(ok, images); !ready || why != "" {
		t.Errorf("TasksReady(both) = %v %q, want true", ready, why)
	}
}

func TestTaskToken(t *testing.T) {
	key, other := []byte("key-one-key-one-key-one-key-one!"), []byte("key-two-key-two-key-two-key-two!")
	tok := TaskToken(key, "u1", "t-1")
	if len(tok) != 64 || strings.Trim(tok, "0123456789abcdef") != "" {
		t.Fatalf("TaskToken = %q, want 64 hex digits", tok)
	}
	if again := TaskToken(key, "u1", "t-1"); again != tok {
		t.Errorf("TaskToken is not stable: %q then %q", tok, again)
	}
	for name, v := range map[string]string{
		"another node": TaskToken(key, "u2", "t-1"),
		"another task": TaskToken(key, "u1", "t-2"),
		"another key":  TaskToken(other, "u1", "t-1"),
		"shifted join": TaskToken(key, "u1t", "-1"),
	} {
		if v == tok {
			t.Errorf("TaskToken for %s = the same token", name)
		}
	}
	h := TokenHash(tok)
	if len(h) != 64 || h == tok || TokenHash(tok) != h || TokenHash(TaskToken(key, "u1", "t-2")) == h {
		t.Errorf("TokenHash(%q) = %q: want 64 hex digits, stable, not the token, different per token", tok, h)
	}
}

func TestPlan(t *testing.T) {
	fwImage := &proto.Image{Name: "fw", Kind: proto.ImageFirmware, URL: "http://x/fw.bin", SHA256: "dd", Size: 4096}
	ims := map[string]*proto.Image{"k": kernel, "r": ramdisk, "fw": fwImage}
	vendor := proto.LabTool

	fw := runningTask(proto.TaskFirmware, map[string]string{"component": "bios", "image": "fw"}, passed(1))
	p := Plan(fw, &vendor, ims)
	if p.ID != fw.ID || p.Kind != proto.TaskFirmware || p.Params["image"] != "fw" || p.Vendor == nil || p.Vendor.Name != "metalfleet-lab" {
		t.Errorf("Plan = %+v, want the task's id, kind, params and the lab tool", p)
	}
	want := []proto.PlanStep{{Name: "download", State: proto.StepPassed}, {Name: "apply", State: proto.StepPending}, {Name: "verify", State: proto.StepPending}}
	if !reflect.DeepEqual(p.Steps, want) {
		t.Errorf("Plan steps = %+v, want %+v", p.Steps, want)
	}
	if a, ok := p.Artifacts["fw"]; !ok || len(p.Artifacts) != 1 || a.URL != fwImage.URL || a.SHA256 != "dd" || a.Size != 4096 {
		t.Errorf("Plan artifacts = %+v, want the fw image only", p.Artifacts)
	}

	gone := runningTask(proto.TaskFirmware, map[string]string{"component": "bios", "image": "deleted"})
	if p := Plan(gone, &vendor, ims); len(p.Artifacts) != 0 {
		t.Errorf("Plan with a deleted image: artifacts %+v, want none", p.Artifacts)
	}
	bi := runningTask(proto.TaskBurnin, burnin)
	if p := Plan(bi, nil, ims); len(p.Artifacts) != 0 || p.Vendor != nil || len(p.Steps) != 4 || p.Params["duration"] != "5s" {
		t.Errorf("Plan of a burn-in = %+v, want 4 steps, its params, no artifacts, no vendor", p)
	}
}

func TestRackBootStateTask(t *testing.T) {
	key := []byte("the-cluster-task-key-32-bytes!!!")
	s := proto.Settings{TasksKernel: "k", TasksRamdisk: "r"}
	fwImage := &proto.Image{Name: "fw", Kind: proto.ImageFirmware, URL: "http://x/fw.bin", SHA256: "dd"}
	ims := map[string]*proto.Image{"k": kernel, "r": ramdisk, "fw": fwImage}
	inv, _ := json.Marshal(proto.Inventory{System: proto.System{Vendor: "QEMU", Product: "Standard PC (Q35 + ICH9, 2009)"}})
	boot, err := TaskBoot(s, ims, &proto.Node{}, proto.TaskFirmware)
	if err != nil {
		t.Fatal(err)
	}
	fw := runningTask(proto.TaskFirmware, map[string]string{"component": "bios", "image": "fw"}, func(t *proto.Task) { t.Vendor = "metalfleet-lab" })
	node := func(task string, b *proto.BootConfig) *proto.Node {
		return &proto.Node{UUID: "u1", Enrolled: true, ProvisionState: proto.StateServicing, Inventory: inv, Task: task, Boot: b}
	}
	for _, tc := range []struct {
		name  string
		node  *proto.Node
		task  *proto.Task
		token bool
	}{
		{"running task", node(fw.ID, &boot), fw, true},
		{"ended task", node("", nil), runningTask(proto.TaskFirmware, map[string]string{"component": "bios", "image": "fw"}, ended(proto.TaskSucceeded)), false},
		{"ended task, boot not restored yet", node(fw.ID, &boot), runningTask(proto.TaskFirmware, map[string]string{"component": "bios", "image": "fw"}, ended(proto.TaskFailed)), false},
		{"running task, node boots its disk", node(fw.ID, &proto.BootConfig{Kind: proto.BootLocalDisk}), fw, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := RackBootState(RackInput{Rack: &proto.Rack{Name: "r1"}, Nodes: []*proto.Node{tc.node}, Settings: s, Images: ims,
				Tasks: map[string]*proto.Task{tc.task.ID: tc.task}, TaskKey: key})
			bn := st.Nodes[0]
			if !tc.token {
				if bn.Boot.TaskToken != "" || bn.Task != nil {
					t.Errorf("boot node token %q plan %+v, want neither", bn.Boot.TaskToken, bn.Task)
				}
				return
			}
			if want := TaskToken(key, "u1", fw.ID); bn.Boot.TaskToken != want {
				t.Errorf("boot node token %q, want TaskToken(key, u1, %s) = %q", bn.Boot.TaskToken, fw.ID, want)
			}
			if bn.Boot.Kind != proto.BootRamdisk || bn.Boot.Task != "firmware" || bn.Boot.Kernel == nil {
				t.Errorf("boot node boot %+v, want the task ramdisk", bn.Boot)
			}
			if bn.Task == nil || bn.Task.ID != fw.ID || len(bn.Task.Steps) != 3 || bn.Task.Artifacts["fw"].SHA256 != "dd" {
				t.Fatalf("boot node plan %+v, want the task's 3 steps and the fw artifact", bn.Task)
			}
			if bn.Task.Vendor == nil || bn.Task.Vendor.Name != "metalfleet-lab" || bn.Task.Vendor.Firmware == nil {
				t.Errorf("plan vendor %+v, want the lab tool (the QEMU machine's)", bn.Task.Vendor)
			}
			if tc.node.Boot.TaskToken != "" || boot.TaskToken != "" {
				t.Errorf("RackBootState wrote the token into the node's stored boot config")
			}
		})
	}
	// The tool chosen at creation renamed since: no vendor rather than
	// another tool.
	renamed := fw.Clone()
	renamed.Vendor = "old-name"
	st := RackBootState(RackInput{Rack: &proto.Rack{Name: "r1"}, Nodes: []*proto.Node{node(fw.ID, &boot)}, Settings: s, Images: ims,
		Tasks: map[string]*proto.Task{fw.ID: renamed}, TaskKey: key})
	if p := st.Nodes[0].Task; p == nil || p.Vendor != nil {
		t.Errorf("plan %+v with the chosen tool gone, want a plan without a vendor", p)
	}
}
