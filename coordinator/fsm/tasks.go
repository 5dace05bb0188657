package fsm

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/metalfleet/metalfleet/coordinator/decide"
	"github.com/metalfleet/metalfleet/coordinator/state"
	"github.com/metalfleet/metalfleet/proto"
)

// Servicing tasks: creation (the node becomes servicing, its boot config
// is saved and replaced by the task ramdisk, its rack agent is asked for
// PXE once and a power cycle), the ramdisk's step reports, abort, timeout
// and the console log of a failed task. The rules of the task itself
// (which step a report may move, timeouts, abort) are decide's.

func init() {
	handlers[TypeTaskCreate] = decode(applyTaskCreate)
	handlers[TypeTaskAbort] = decode(applyTaskAbort)
	handlers[TypeTaskTimeout] = decode(applyTaskTimeout)
	handlers[TypeTaskConsoleLog] = decode(applyTaskConsoleLog)
}

// TaskCreate starts a task on node Ref. The proposer fills Task's ID,
// Kind, Params, Timeout (0: the kind's default) and By, names the rack
// agent that power-cycles the node (Agent), and sends a fresh random Key
// that becomes the cluster's task key if there is none yet.
type TaskCreate struct {
	Ref     string     `json:"ref"`
	Task    proto.Task `json:"task"`
	Request string     `json:"request,omitempty"`
	Agent   string     `json:"agent"`
	Key     []byte     `json:"key,omitempty"`
	Now     time.Time  `json:"now"`
}

func (TaskCreate) Type() Type { return TypeTaskCreate }

// TaskAbort ends node Ref's running task Task at an operator's request.
type TaskAbort struct {
	Ref   string    `json:"ref"`
	Task  string    `json:"task"`
	By    string    `json:"by"`
	Agent string    `json:"agent,omitempty"`
	Now   time.Time `json:"now"`
}

func (TaskAbort) Type() Type { return TypeTaskAbort }

// TaskTimeout fails a running task that has gone without progress for
// longer than its timeout as of Now (the leader proposes it; Apply checks
// again).
type TaskTimeout struct {
	Task  string    `json:"task"`
	Agent string    `json:"agent,omitempty"`
	Now   time.Time `json:"now"`
}

func (TaskTimeout) Type() Type { return TypeTaskTimeout }

// TaskConsoleLog attaches the console log of a failed task's boot.
type TaskConsoleLog struct {
	Task string `json:"task"`
	Log  string `json:"log"`
}

func (TaskConsoleLog) Type() Type { return TypeTaskConsoleLog }

func applyTaskCreate(tx *state.Tx, c *TaskCreate) (any, error) {
	n, err := findNode(tx, c.Ref)
	if err != nil {
		return nil, err
	}
	t := c.Task.Clone()
	if c.Request != "" {
		for _, old := range tx.NodeTasks(n.UUID) {
			if old.Request == c.Request {
				return old.Clone(), nil // a retry of a request already recorded
			}
		}
	}
	if !t.Kind.Valid() {
		return nil, proto.Errorf(proto.CodeInvalid, "kind %q: want one of inspect, burnin, firmware, bios, raid (deploy, clean and rescue come with instances)", t.Kind)
	}
	if err := CanServe(n); err != nil {
		return nil, err
	}
	params, err := proto.ParseTaskParams(t.Kind, t.Params)
	if err != nil {
		return nil, err
	}
	if params.Firmware != nil {
		im := tx.Image(params.Firmware.Image)
		if im == nil {
			return nil, proto.Errorf(proto.CodeInvalid, "param image: image %q does not exist", params.Firmware.Image)
		}
		if im.Kind != proto.ImageFirmware {
			return nil, proto.Errorf(proto.CodeInvalid, "param image: image %q is a %s image, not a firmware image", im.Name, im.Kind)
		}
	}
	boot, err := decide.TaskBoot(tx.Settings(), tx.Images(), n, t.Kind)
	if err != nil {
		return nil, err
	}
	var inv *proto.Inventory
	if len(n.Inventory) > 0 {
		inv = new(proto.Inventory)
		if json.Unmarshal(n.Inventory, inv) != nil {
			inv = nil
		}
	}
	vendor, err := decide.TaskVendor(tx.Settings(), n, inv, t.Kind)
	if err != nil {
		return nil, err
	}
	if params.RAID != nil && inv != nil {
		for _, serial := range params.RAID.Disks {
			if !hasDiskSerial(inv, serial) {
				return nil, proto.Errorf(proto.CodeInvalid, "param disks: node %s has no disk with serial %q in its inventory", nodeRef(n), serial)
			}
		}
	}
	if c.Agent == "" {
		return nil, proto.Errorf(proto.CodeInternal, "a task without a rack agent to power-cycle the node")
	}
	if tx.Task(t.ID) != nil {
		return nil, proto.Errorf(proto.CodeConflict, "task %s already exists", t.ID)
	}
	if vendor != nil {
		t.Vendor = vendor.Name
	}
	t.Request = c.Request
	n = n.Clone()
	if err := startTask(tx, n, t, params, boot, c.Agent, c.Key, c.Now); err != nil {
		return nil, err
	}
	n.ProvisionState, n.LastError = proto.StateServicing, ""
	tx.PutTask(t)
	tx.PutNode(n)
	tx.AppendHistory(n.UUID, proto.HistoryEvent{Time: c.Now, Kind: "task", User: t.By,
		Message: fmt.Sprintf("task %s (%s) started: %d steps, timeout %s", t.ID, t.Kind, len(t.Steps), time.Duration(t.Timeout))})
	return t.Clone(), nil
}

// startTask gives t (ID, Kind, Params, Timeout and By set) its steps,
// timeout and token hash, saves n's boot config and replaces it by boot,
// and asks agent for PXE once and a reboot. n is the caller's copy, to
// be stored by the caller with t (tx.PutTask, tx.PutNode) after its
// state is set. key becomes the cluster's task key if there is none.
func startTask(tx *state.Tx, n *proto.Node, t *proto.Task, params proto.TaskParams, boot proto.BootConfig, agent string, key []byte, now time.Time) error {
	if agent == "" {
		return proto.Errorf(proto.CodeInternal, "a task without a rack agent to power-cycle the node")
	}
	if tx.Task(t.ID) != nil {
		return proto.Errorf(proto.CodeConflict, "task %s already exists", t.ID)
	}
	tx.SetTaskKey(key)
	if len(tx.TaskKey()) == 0 {
		return proto.Errorf(proto.CodeInternal, "no task key: the proposer sent none")
	}
	t.Node, t.State, t.Current, t.Error, t.ConsoleLog = n.UUID, proto.TaskRunning, 0, "", ""
	t.Steps = proto.TaskSteps(t.Kind, params)
	if t.Timeout <= 0 {
		t.Timeout = proto.Duration(proto.DefaultTaskTimeout(t.Kind, params))
	}
	t.CreatedAt, t.ProgressAt, t.EndedAt = now, now, time.Time{}
	t.TokenHash = decide.TokenHash(decide.TaskToken(tx.TaskKey(), n.UUID, t.ID))
	n.UpdatedAt = now
	n.SavedBoot = &proto.SavedBoot{Boot: n.Boot.Clone(), Task: t.ID}
	n.Boot, n.Task = &boot, t.ID
	addIntent(tx, n, proto.Intent{Action: proto.ActionBootDevice, Boot: &proto.BootDeviceSpec{Device: proto.BootDevicePXE},
		Agent: agent, By: t.By, At: now})
	addIntent(tx, n, proto.Intent{Action: proto.ActionPower, Power: proto.PowerTargetReboot, Agent: agent, By: t.By, At: now})
	return nil
}

// CanServe says why a task may not start on n now, if so.
func CanServe(n *proto.Node) error {
	if _, err := proto.CheckTransition(nodeRef(n), n.ProvisionState, "service"); err != nil {
		return err
	}
	if n.Task != "" {
		return proto.Errorf(proto.CodeWrongState, "node %s is running task %s", nodeRef(n), n.Task)
	}
	if n.Maintenance {
		return proto.Errorf(proto.CodeWrongState, "node %s is in maintenance (%s): take it out of maintenance first", nodeRef(n), ifStr(n.MaintenanceReason != "", n.MaintenanceReason))
	}
	return CanDriveBMC(n)
}

func hasDiskSerial(inv *proto.Inventory, serial string) bool {
	for _, d := range inv.Disks {
		if d.Serial == serial {
			return true
		}
	}
	return false
}

// applyTaskStep applies a ramdisk's step report (a callback of step
// proto.StepTask), received by agent.
func applyTaskStep(tx *state.Tx, node *proto.Node, r *proto.AgentReport) error {
	if node == nil {
		return proto.Errorf(proto.CodeInvalid, "a task step report for a MAC that is no node's")
	}
	var sr proto.StepReport
	if err := json.Unmarshal(r.Data, &sr); err != nil {
		return proto.Errorf(proto.CodeInvalid, "data: not a step report: %v", err)
	}
	if err := sr.Validate(); err != nil {
		return err
	}
	t := tx.Task(sr.Task)
	if t == nil {
		return proto.Errorf(proto.CodeNotFound, "task %q not found", sr.Task)
	}
	if t.Node != node.UUID {
		return proto.Errorf(proto.CodeForbidden, "task %s is not node %s's", t.ID, nodeRef(node))
	}
	next, verdict, err := decide.ApplyStep(t, &sr, r.Time)
	if err != nil || verdict == decide.TaskUnchanged {
		return err
	}
	n := node.Clone()
	step := next.Steps[sr.Index]
	// Only the tasks that re-inventory replace the node's inventory (a
	// rescue image, chosen by a user, must not forge one).
	if sr.Event == proto.StepEventResult && sr.Passed && sr.Inventory != nil && (t.Kind == proto.TaskInspect || t.Kind == proto.TaskRAID) {
		raw, err := json.Marshal(sr.Inventory)
		if err != nil {
			return proto.Errorf(proto.CodeInvalid, "inventory: %v", err)
		}
		n.Inventory = raw
		tx.AppendHistory(n.UUID, proto.HistoryEvent{Time: r.Time, Kind: "task", User: "system",
			Message: fmt.Sprintf("task %s: inventory replaced (%d disks)", t.ID, len(sr.Inventory.Disks))})
	}
	if sr.Event == proto.StepEventStart && step.Attempts > 1 {
		tx.AppendHistory(n.UUID, proto.HistoryEvent{Time: r.Time, Kind: "task", User: "system",
			Message: fmt.Sprintf("task %s: step %d (%s) started again (attempt %d): the node rebooted or its ramdisk restarted", t.ID, sr.Index+1, step.Name, step.Attempts)})
	}
	switch {
	case (verdict == decide.TaskDone || verdict == decide.TaskStepFailed) && instanceTaskEnded(tx, n, next, verdict, r.Agent, r.Time):
	case verdict == decide.TaskDone || verdict == decide.TaskStepFailed:
		endTask(tx, n, next, r.Agent, r.Time)
	case sr.Event != proto.StepEventProgress:
		n.UpdatedAt = r.Time
		tx.PutNode(n)
	}
	tx.PutTask(next)
	return nil
}

// endTask ends t (already in its final state) on n: the saved boot config
// comes back, the result is kept on the node, the node leaves servicing
// (manageable, or failed with last_error naming task and step), and the
// node's rack agent is asked to power it off. n is stored.
func endTask(tx *state.Tx, n *proto.Node, t *proto.Task, agent string, now time.Time) {
	if n.SavedBoot != nil && n.SavedBoot.Task == t.ID {
		n.Boot = n.SavedBoot.Boot.Clone()
		n.SavedBoot = nil
	}
	if n.Task == t.ID {
		n.Task = ""
	}
	if n.TaskResults == nil {
		n.TaskResults = map[proto.TaskKind]*proto.TaskSummary{}
	}
	n.TaskResults[t.Kind] = &proto.TaskSummary{ID: t.ID, State: t.State, EndedAt: t.EndedAt, Results: t.Results()}
	switch t.State {
	case proto.TaskFailed:
		if n.ProvisionState == proto.StateServicing {
			n.ProvisionState = proto.StateFailed
		}
		n.LastError = t.Error
	default:
		if n.ProvisionState == proto.StateServicing {
			n.ProvisionState = proto.StateManageable
		}
		if t.State == proto.TaskAborted {
			n.LastError = t.Error
		}
	}
	n.UpdatedAt = now
	msg := fmt.Sprintf("task %s (%s) %s", t.ID, t.Kind, t.State)
	if t.Error != "" {
		msg += ": " + t.Error
	}
	if agent != "" && CanDriveBMC(n) == nil {
		addIntent(tx, n, proto.Intent{Action: proto.ActionPower, Power: proto.PowerTargetOff, Agent: agent, By: "system", At: now})
	} else {
		msg += "; the node was not powered off: no rack agent to ask"
	}
	tx.PutNode(n)
	tx.AppendHistory(n.UUID, proto.HistoryEvent{Time: now, Kind: "task", User: "system", Message: msg})
}

func applyTaskAbort(tx *state.Tx, c *TaskAbort) (any, error) {
	n, err := findNode(tx, c.Ref)
	if err != nil {
		return nil, err
	}
	t := tx.Task(c.Task)
	if t == nil || t.Node != n.UUID {
		return nil, proto.Errorf(proto.CodeNotFound, "node %s has no task %q", nodeRef(n), c.Task)
	}
	if isInstanceTask(t.Kind) {
		return nil, proto.Errorf(proto.CodeWrongState, "task %s is instance %s's %s: delete or unrescue the instance instead", t.ID, n.InstanceUUID, t.Kind)
	}
	if err := decide.CanAbort(t); err != nil {
		return nil, err
	}
	next := t.Clone()
	next.State, next.EndedAt = proto.TaskAborted, c.Now
	next.Error = fmt.Sprintf("task %s (%s) aborted by %s at step %d (%s)", t.ID, t.Kind, c.By, t.Current+1, stepName(t))
	if s := next.CurrentStep(); s != nil && s.State == proto.StepRunning {
		s.State, s.Error, s.EndedAt = proto.StepFailed, "aborted", c.Now
	}
	endTask(tx, n.Clone(), next, c.Agent, c.Now)
	tx.PutTask(next)
	return next.Clone(), nil
}

func applyTaskTimeout(tx *state.Tx, c *TaskTimeout) (any, error) {
	t := tx.Task(c.Task)
	if t == nil || !decide.TimedOut(t, c.Now) {
		return nil, nil
	}
	n := tx.Node(t.Node)
	if n == nil {
		return nil, nil
	}
	next := t.Clone()
	next.State, next.EndedAt = proto.TaskFailed, c.Now
	next.Error = fmt.Sprintf("task %s (%s) failed at step %d (%s): no progress for %s (its timeout)", t.ID, t.Kind, min(t.Current, len(t.Steps)-1)+1, stepName(t), time.Duration(t.Timeout))
	if s := next.CurrentStep(); s != nil {
		s.State, s.Error, s.EndedAt = proto.StepFailed, "timed out", c.Now
	}
	if isInstanceTask(t.Kind) {
		if in := tx.Instance(n.InstanceUUID); in != nil && in.Task == t.ID {
			tx.PutTask(next)
			instanceFailed(tx, n.Clone(), cloneInstance(in), next.Error, c.Agent, c.Now)
			return next.Clone(), nil
		}
	}
	endTask(tx, n.Clone(), next, c.Agent, c.Now)
	tx.PutTask(next)
	return next.Clone(), nil
}

func stepName(t *proto.Task) string {
	if s := t.CurrentStep(); s != nil {
		return s.Name
	}
	return "none"
}

func applyTaskConsoleLog(tx *state.Tx, c *TaskConsoleLog) (any, error) {
	t := tx.Task(c.Task)
	if t == nil || t.State != proto.TaskFailed || t.ConsoleLog != "" {
		return nil, nil
	}
	next := t.Clone()
	next.ConsoleLog = c.Log
	if len(next.ConsoleLog) > proto.MaxTaskConsoleLog {
		next.ConsoleLog = next.ConsoleLog[len(next.ConsoleLog)-proto.MaxTaskConsoleLog:]
	}
	// Valid UTF-8 (a cut may split a character): a snapshot restore then
	// gives every replica the same string.
	next.ConsoleLog = strings.ToValidUTF8(next.ConsoleLog, "")
	if next.ConsoleLog == "" {
		next.ConsoleLog = "(the console printed nothing)"
	}
	tx.PutTask(next)
	return nil, nil
}

func isInstanceTask(k proto.TaskKind) bool {
	return k == proto.TaskDeploy || k == proto.TaskClean || k == proto.TaskRescue
}
