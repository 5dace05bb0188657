package decide

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/metalfleet/metalfleet/proto"
)

// Servicing tasks: what a task boots, its token, its plan for the
// ramdisk, and the task state machine (what a step report does, when a
// task has timed out, whether it may be aborted). DESIGN.md, "Tasks".

// TaskToken is the token of task on node: an HMAC-SHA256 of both under
// the cluster's task key. It is never stored; the rack agents get it in
// their boot state and the ramdisk on its command line.
func TaskToken(key []byte, node, task string) string {
	m := hmac.New(sha256.New, key)
	fmt.Fprintf(m, "metalfleet-task-token\x00%s\x00%s", node, task)
	return hex.EncodeToString(m.Sum(nil))
}

// TokenHash is the SHA-256 (hex) of a token, as Task.TokenHash keeps it.
func TokenHash(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:])
}

// Node properties that override the tasks.kernel and tasks.ramdisk
// settings for one node.
const (
	PropTasksKernel  = "tasks.kernel"
	PropTasksRamdisk = "tasks.ramdisk"
)

// TaskBoot is the boot config of a task of kind on n: the task kernel and
// ramdisk (n's properties, else the settings) with the tasks command line.
// The token is added when the rack's boot state is made. The error names
// the setting that is missing or wrong.
func TaskBoot(s proto.Settings, images map[string]*proto.Image, n *proto.Node, kind proto.TaskKind) (proto.BootConfig, error) {
	b := proto.BootConfig{Kind: proto.BootRamdisk, Cmdline: s.TasksCmdline, Task: string(kind)}
	var reasons []string
	for _, ref := range []struct {
		setting, prop, name string
		kind                proto.ImageKind
		out                 **proto.Artifact
	}{
		{"tasks.kernel", PropTasksKernel, s.TasksKernel, proto.ImageKernel, &b.Kernel},
		{"tasks.ramdisk", PropTasksRamdisk, s.TasksRamdisk, proto.ImageRamdisk, &b.Initrd},
	} {
		name, from := ref.name, "setting "+ref.setting
		if v := n.Properties[ref.prop]; v != "" {
			name, from = v, "node property "+ref.prop
		}
		im := images[name]
		switch {
		case name == "":
			reasons = append(reasons, ref.setting+" is not set")
		case im == nil:
			reasons = append(reasons, fmt.Sprintf("%s: image %q does not exist", from, name))
		case im.Kind != ref.kind:
			reasons = append(reasons, fmt.Sprintf("%s: image %q is a %s image, not a %s", from, name, im.Kind, ref.kind))
		default:
			*ref.out = Artifact(im)
		}
	}
	if len(reasons) > 0 {
		return b, proto.Errorf(proto.CodeWrongState, "cannot boot a task: %s", strings.Join(reasons, "; "))
	}
	return b, nil
}

// TasksReady says whether the settings let tasks boot (a node property
// may still override them), and why not.
func TasksReady(s proto.Settings, images map[string]*proto.Image) (bool, string) {
	_, err := TaskBoot(s, images, &proto.Node{}, proto.TaskInspect)
	if err != nil {
		return false, strings.TrimPrefix(err.Error(), "cannot boot a task: ")
	}
	return true, ""
}

// VendorTools are the tools in effect: the setting's, or the built-in
// lab tool when none is set.
func VendorTools(s proto.Settings) []proto.VendorTool {
	if len(s.VendorTools) > 0 {
		return s.VendorTools
	}
	return []proto.VendorTool{proto.LabTool}
}

// TaskVendor picks the vendor tool a task of kind needs on n: firmware
// and bios need one, raid uses one when the model has it (else mdadm).
// The error names the hardware model when a needed tool is missing.
func TaskVendor(s proto.Settings, n *proto.Node, inv *proto.Inventory, kind proto.TaskKind) (*proto.VendorTool, error) {
	if kind != proto.TaskFirmware && kind != proto.TaskBIOS && kind != proto.TaskRAID {
		return nil, nil
	}
	t := proto.FindVendorTool(VendorTools(s), inv, kind)
	if t != nil || kind == proto.TaskRAID {
		return t, nil
	}
	model := "unknown (the node has no inventory: run an inspect task first)"
	if inv != nil {
		model = fmt.Sprintf("vendor %q product %q", inv.System.Vendor, inv.System.Product)
	}
	return nil, proto.Errorf(proto.CodeWrongState, "no vendor tool with %s commands is configured for node %s's hardware model, %s: add one to the vendor_tools setting", kind, n.UUID, model)
}

// Plan is the TaskPlan of t for its ramdisk: the steps with their
// states, params, vendor tool, and the images it downloads.
func Plan(t *proto.Task, vendor *proto.VendorTool, images map[string]*proto.Image) *proto.TaskPlan {
	p := &proto.TaskPlan{ID: t.ID, Kind: t.Kind, Params: t.Params, Vendor: vendor}
	for _, s := range t.Steps {
		p.Steps = append(p.Steps, proto.PlanStep{Name: s.Name, State: s.State})
	}
	if t.Kind == proto.TaskFirmware || t.Kind == proto.TaskDeploy {
		if im := images[t.Params["image"]]; im != nil {
			p.Artifacts = map[string]proto.Artifact{im.Name: *Artifact(im)}
		}
	}
	return p
}

// TaskVerdict is what a step report did to its task.
type TaskVerdict int

// Verdicts.
const (
	// TaskUnchanged: a replay, or a report for a step already passed.
	TaskUnchanged TaskVerdict = iota
	// TaskMoved: the task moved on and is still running.
	TaskMoved
	// TaskDone: the last step passed.
	TaskDone
	// TaskStepFailed: the step failed, so the task did.
	TaskStepFailed
)

// ApplyStep applies a ramdisk's step report to a copy of the running
// task t at now and says what it did. Only the task's current step moves:
// a report for a step already passed (a replay, or a ramdisk resuming)
// changes nothing; one for a later step is refused (out of order); a
// start of the current step again from another ramdisk boot (the node
// rebooted mid-step) counts an attempt and keeps its log; from the same
// boot (a retried report) it changes nothing.
func ApplyStep(t *proto.Task, r *proto.StepReport, now time.Time) (*proto.Task, TaskVerdict, error) {
	if r.Task != t.ID {
		return t, TaskUnchanged, proto.Errorf(proto.CodeConflict, "the report is for task %s; the node's task is %s", r.Task, t.ID)
	}
	if t.State.Ended() {
		return t, TaskUnchanged, nil // late delivery after the end: nothing to do
	}
	if r.Index < 0 || r.Index >= len(t.Steps) || t.Steps[r.Index].Name != r.Step {
		return t, TaskUnchanged, proto.Errorf(proto.CodeInvalid, "task %s has no step %d named %q", t.ID, r.Index, r.Step)
	}
	switch {
	case r.Index < t.Current:
		return t, TaskUnchanged, nil
	case r.Index > t.Current:
		return t, TaskUnchanged, proto.Errorf(proto.CodeConflict, "task %s: step %d (%s) reported before step %d (%s) passed",
			t.ID, r.Index, r.Step, t.Current, t.Steps[t.Current].Name)
	}
	if cur := t.Steps[t.Current]; r.Event == proto.StepEventStart && r.Boot != "" && cur.State == proto.StepRunning && cur.Boot == r.Boot {
		return t, TaskUnchanged, nil // the same start, retried by the ramdisk
	}
	c := t.Clone()
	s := &c.Steps[c.Current]
	c.ProgressAt = now
	s.Log = tail(s.Log+r.Log, proto.MaxStepLog)
	if r.Message != "" {
		s.Message = r.Message
	}
	switch r.Event {
	case proto.StepEventStart:
		s.State, s.Attempts, s.StartedAt, s.Percent, s.Boot = proto.StepRunning, s.Attempts+1, now, 0, r.Boot
		s.Error, s.Result = "", nil
		return c, TaskMoved, nil
	case proto.StepEventProgress:
		if s.State == proto.StepPending {
			s.State, s.Attempts, s.StartedAt, s.Boot = proto.StepRunning, s.Attempts+1, now, r.Boot
		}
		s.Percent = r.Percent
		return c, TaskMoved, nil
	}
	// A result.
	if s.StartedAt.IsZero() {
		s.StartedAt, s.Attempts = now, s.Attempts+1
	}
	s.EndedAt, s.Result = now, r.Result
	if !r.Passed {
		s.State, s.Error = proto.StepFailed, r.Error
		c.State, c.EndedAt = proto.TaskFailed, now
		c.Error = fmt.Sprintf("task %s (%s) failed at step %d (%s): %s", c.ID, c.Kind, c.Current+1, s.Name, r.Error)
		return c, TaskStepFailed, nil
	}
	s.State, s.Percent, s.Error = proto.StepPassed, 100, ""
	c.Current++
	if c.Current == len(c.Steps) {
		c.State, c.EndedAt = proto.TaskSucceeded, now
		return c, TaskDone, nil
	}
	return c, TaskMoved, nil
}

// TimedOut says whether the running task t has gone without progress
// for longer than its timeout at now.
func TimedOut(t *proto.Task, now time.Time) bool {
	return !t.State.Ended() && t.Timeout > 0 && now.Sub(t.ProgressAt) > time.Duration(t.Timeout)
}

// CanAbort says why t may not be aborted now, if so: it has ended, or
// its current step must not be interrupted (a firmware write).
func CanAbort(t *proto.Task) error {
	if t.State.Ended() {
		return proto.Errorf(proto.CodeWrongState, "task %s has already ended (%s)", t.ID, t.State)
	}
	if s := t.CurrentStep(); s != nil && s.NoAbort && s.State == proto.StepRunning {
		return proto.Errorf(proto.CodeWrongState, "task %s cannot be aborted now: step %d (%s) is writing firmware, and interrupting it could leave the component unbootable; wait for it to end",
			t.ID, t.Current+1, s.Name)
	}
	return nil
}

// tail keeps the last n bytes of s, as valid UTF-8 (a cut may split a
// character; every replica, restored from a snapshot or not, holds the
// same string).
func tail(s string, n int) string {
	if len(s) <= n {
		return strings.ToValidUTF8(s, "")
	}
	return strings.ToValidUTF8(s[len(s)-n:], "")
}
