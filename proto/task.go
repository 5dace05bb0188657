package proto

import (
	"encoding/json"
	"fmt"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Servicing tasks: work a ramdisk does on one named, manageable node
// (inspect, burn-in, firmware, BIOS settings, RAID), as a list of steps.
//
// The flow (DESIGN.md, "Tasks"):
//
//   - POST /v1/nodes/{id}/tasks (TaskRequest) records the Task and its
//     steps in one Raft command: the node becomes servicing, its boot
//     config is saved (Node.SavedBoot) and replaced by the task ramdisk
//     (settings tasks.kernel and tasks.ramdisk), and two intents ask its
//     rack agent for boot device PXE (once) and a power cycle.
//   - The rack agent renders the ramdisk's command line with
//     metalfleet.task=<kind>, metalfleet.token=<task token> and the
//     callback URL. The token is derived by the coordinator (an HMAC of
//     node and task under a cluster key); the replicated state keeps only
//     its SHA-256 (Task.TokenHash) and the rack's agents get it in their
//     boot state.
//   - The ramdisk (nodeagent) fetches its plan, GET TaskPlanPath with the
//     token, skips the steps already passed, and reports each step's
//     start, progress and result as StepReport bodies POSTed to
//     <metalfleet.callback>/StepTask with the token. The agent queues them
//     in its outbox like every other report.
//   - The FSM applies a step report only to the node's running task, to
//     its current step: a replayed or out-of-order report changes nothing.
//     When the last step has passed, or one failed, or the task timed out
//     or was aborted, the saved boot config comes back and the node is
//     powered off.

// TaskKind names what a task does.
type TaskKind string

// Task kinds.
const (
	TaskInspect  TaskKind = "inspect"
	TaskBurnin   TaskKind = "burnin"
	TaskFirmware TaskKind = "firmware"
	TaskBIOS     TaskKind = "bios"
	TaskRAID     TaskKind = "raid"
)

// TaskKinds lists the kinds, in help order.
var TaskKinds = []TaskKind{TaskInspect, TaskBurnin, TaskFirmware, TaskBIOS, TaskRAID}

// Valid reports whether k is a known task kind.
func (k TaskKind) Valid() bool { return slices.Contains(TaskKinds, k) }

// TaskState is where a task is.
type TaskState string

// Task states.
const (
	TaskRunning   TaskState = "running"
	TaskSucceeded TaskState = "succeeded"
	TaskFailed    TaskState = "failed"
	TaskAborted   TaskState = "aborted"
)

// Ended reports whether s is a final state.
func (s TaskState) Ended() bool { return s != TaskRunning && s != "" }

// StepState is where one step of a task is.
type StepState string

// Step states.
const (
	StepPending StepState = "pending"
	StepRunning StepState = "running"
	StepPassed  StepState = "passed"
	StepFailed  StepState = "failed"
)

// Step names. Burn-in steps are named for their component.
const (
	StepNameInventory = "inventory" // collect and record the inventory
	StepNameCPU       = "cpu"
	StepNameMemory    = "memory"
	StepNameDisk      = "disk"
	StepNameNetwork   = "network"
	StepNameDownload  = "download" // firmware: fetch through the agent's cache, check sha256, read the version before
	StepNameApply     = "apply"    // firmware: write; bios: set
	StepNameVerify    = "verify"   // firmware: read the version after; bios: read back and compare
	StepNameRAID      = "raid"     // create or delete arrays
)

// Step is one step of a task as recorded in Raft.
type Step struct {
	Name  string    `json:"name"`
	State StepState `json:"state"`
	// NoAbort is set on a step that must not be interrupted (a firmware
	// write): an abort is refused while it runs.
	NoAbort bool   `json:"no_abort,omitempty"`
	Percent int    `json:"percent,omitempty"`
	Message string `json:"message,omitempty"`
	// Result is the step's structured result (for a burn-in component:
	// {"status": "pass|fail", figures...}).
	Result json.RawMessage `json:"result,omitempty"`
	Error  string          `json:"error,omitempty"`
	// Log is the step's log, the last MaxStepLog bytes.
	Log string `json:"log,omitempty"`
	// Attempts counts the starts of this step (a node that rebooted
	// mid-step starts it again); Boot is the ramdisk boot of the last.
	Attempts  int       `json:"attempts,omitempty"`
	Boot      string    `json:"boot,omitempty"`
	StartedAt time.Time `json:"started_at,omitzero"`
	EndedAt   time.Time `json:"ended_at,omitzero"`
}

// Task is a servicing task on one node.
type Task struct {
	ID     string            `json:"id"`
	Node   string            `json:"node"` // uuid
	Kind   TaskKind          `json:"kind"`
	Params map[string]string `json:"params,omitempty"`
	State  TaskState         `json:"state"`
	Steps  []Step            `json:"steps"`
	// Current is the index of the step to run (len(Steps) when all passed).
	Current int `json:"current"`
	// Timeout: the task fails when nothing is heard of it for this long.
	Timeout Duration `json:"timeout"`
	// Vendor names the vendor tool chosen for the node's hardware model.
	Vendor string `json:"vendor,omitempty"`
	By     string `json:"by,omitempty"`
	// Request is the client's request id (TaskRequest.RequestID).
	Request string `json:"request_id,omitempty"`
	Error   string `json:"error,omitempty"`
	// ConsoleLog is the tail of the node's serial console during the
	// task, attached when it failed (at most MaxTaskConsoleLog bytes).
	ConsoleLog string `json:"console_log,omitempty"`
	// TokenHash is the SHA-256 (hex) of the task token.
	TokenHash string    `json:"-"`
	CreatedAt time.Time `json:"created_at"`
	// ProgressAt is when the task last moved (created, a step report).
	ProgressAt time.Time `json:"progress_at"`
	EndedAt    time.Time `json:"ended_at,omitzero"`
	Meta
}

// Clone returns a deep copy.
func (t *Task) Clone() *Task {
	c := *t
	c.Params = cloneStrMap(t.Params)
	c.Steps = slices.Clone(t.Steps)
	for i := range c.Steps {
		c.Steps[i].Result = slices.Clone(c.Steps[i].Result)
	}
	return &c
}

func cloneStrMap(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	c := make(map[string]string, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// CurrentStep returns the step to run, or nil when every step has passed.
func (t *Task) CurrentStep() *Step {
	if t.Current < 0 || t.Current >= len(t.Steps) {
		return nil
	}
	return &t.Steps[t.Current]
}

// Results maps each passed or failed step with a result to it.
func (t *Task) Results() map[string]json.RawMessage {
	out := map[string]json.RawMessage{}
	for _, s := range t.Steps {
		if len(s.Result) > 0 {
			out[s.Name] = s.Result
		}
	}
	return out
}

// TaskSummary is a finished task as kept on its node: the latest per
// kind (Node.TaskResults).
type TaskSummary struct {
	ID      string                     `json:"id"`
	State   TaskState                  `json:"state"`
	EndedAt time.Time                  `json:"ended_at"`
	Results map[string]json.RawMessage `json:"results,omitempty"`
}

// TaskRequest is the body of POST /v1/nodes/{id}/tasks.
type TaskRequest struct {
	Kind   TaskKind          `json:"kind"`
	Params map[string]string `json:"params,omitempty"`
	// Timeout overrides the kind's default (DefaultTaskTimeout).
	Timeout Duration `json:"timeout,omitempty"`
	// RequestID makes a retried request idempotent: the same id on the
	// same node returns the task it created.
	RequestID string `json:"request_id,omitempty"`
}

// StepTask is the callback step (the path's {step}) of every task step
// report; its body is a StepReport.
const StepTask = "task"

// TaskPlanPath is the rack agent's route where a task ramdisk fetches its
// TaskPlan (GET, with the token and the MAC header).
const TaskPlanPath = "/v1/task"

// BurninSourcePath and BurninSinkPath are the rack agent's routes for the
// network burn-in: GET ?bytes=N streams N bytes, POST swallows the body
// (both bounded by MaxBurninBytes, with the token and the MAC header).
const (
	BurninSourcePath = "/v1/burnin/source"
	BurninSinkPath   = "/v1/burnin/sink"
)

// AgentBootHeader names, on the burn-in routes' answers, the rack agent's
// boot server run (random per start): a transfer that failed while the
// agent restarted is told from a network fault by the next answer's
// differing value.
const AgentBootHeader = "X-Metalfleet-Agent-Boot"

// MaxBurninBytes bounds one network burn-in transfer.
const MaxBurninBytes = 1 << 30

// Step report events.
const (
	StepEventStart    = "start"
	StepEventProgress = "progress"
	StepEventResult   = "result"
)

// StepReport is the body a task ramdisk POSTs to <callback>/StepTask.
type StepReport struct {
	Task  string `json:"task"`
	Step  string `json:"step"`
	Index int    `json:"index"`
	// Event is start, progress or result.
	Event   string `json:"event"`
	Percent int    `json:"percent,omitempty"`
	Message string `json:"message,omitempty"`
	// Passed is the step's outcome (a result event).
	Passed bool            `json:"passed,omitempty"`
	Result json.RawMessage `json:"result,omitempty"`
	Error  string          `json:"error,omitempty"`
	// Log is appended to the step's log (the last MaxStepLog bytes kept).
	Log string `json:"log,omitempty"`
	// Inventory is the inventory collected by an inventory step.
	Inventory *Inventory `json:"inventory,omitempty"`
	// Boot names the ramdisk's boot (random, made at each start of the
	// runner): a start of the current step again from the same boot is
	// a retried report, from another boot a restart of the step.
	Boot string `json:"boot,omitempty"`
}

// Bounds on a step report (the callback body is bounded by
// MaxCallbackBytes in all).
const (
	MaxStepLog        = 64 << 10
	MaxStepResult     = 16 << 10
	MaxStepError      = 2 << 10
	MaxStepMessage    = 512
	MaxTaskConsoleLog = 64 << 10
	MaxTaskParams     = 16
	MaxTaskParamValue = 8 << 10
	// MaxTaskHistory is how many finished tasks are kept per node.
	MaxTaskHistory = 20
)

// Validate checks a step report's fields and bounds, naming the field.
func (r *StepReport) Validate() error {
	if err := checkRE("task", r.Task, 64, shortNameRE, "a task id"); err != nil {
		return err
	}
	if err := checkRE("step", r.Step, MaxStepLen, shortNameRE, "a step name"); err != nil {
		return err
	}
	if r.Index < 0 || r.Index > 64 {
		return Errorf(CodeInvalid, "index %d: want 0-64", r.Index)
	}
	switch r.Event {
	case StepEventStart, StepEventProgress, StepEventResult:
	default:
		return Errorf(CodeInvalid, "event %q: want start, progress or result", truncateForError(r.Event))
	}
	if len(r.Boot) > 64 {
		return tooLong("boot", len(r.Boot), 64)
	}
	if r.Percent < 0 || r.Percent > 100 {
		return Errorf(CodeInvalid, "percent %d: want 0-100", r.Percent)
	}
	for _, f := range []struct {
		name   string
		n, max int
	}{
		{"message", len(r.Message), MaxStepMessage},
		{"error", len(r.Error), MaxStepError},
		{"log", len(r.Log), MaxStepLog},
		{"result", len(r.Result), MaxStepResult},
	} {
		if f.n > f.max {
			return tooLong(f.name, f.n, f.max)
		}
	}
	if len(r.Result) > 0 && !json.Valid(r.Result) {
		return Errorf(CodeInvalid, "result: not valid JSON")
	}
	if r.Inventory != nil {
		if err := r.Inventory.Validate(); err != nil {
			return prefixed("inventory.", err)
		}
	}
	if r.Event == StepEventResult && !r.Passed && r.Error == "" {
		return Errorf(CodeInvalid, "a failed step's result needs an error")
	}
	return nil
}

// componentRE: a firmware component, bios, bmc, nic:<mac>, or a vendor's
// own name.
var componentRE = regexp.MustCompile(`^[a-z][a-z0-9_-]*(:[A-Za-z0-9._:-]+)?$`)

func truncateForError(s string) string {
	if len(s) > 32 {
		return s[:32] + "..."
	}
	return s
}

// TaskPlan is what a task ramdisk is told to do: in the rack boot state
// (BootNode.Task) for the agents, and served by the agent at TaskPlanPath.
type TaskPlan struct {
	ID     string            `json:"id"`
	Kind   TaskKind          `json:"kind"`
	Params map[string]string `json:"params,omitempty"`
	Steps  []PlanStep        `json:"steps"`
	// Vendor is the vendor tool for the node's hardware model, if the
	// task needs one.
	Vendor *VendorTool `json:"vendor,omitempty"`
	// Artifacts are the images the task downloads (firmware), by name;
	// the agent serves them from its cache and rewrites URL to its own.
	Artifacts map[string]Artifact `json:"artifacts,omitempty"`
}

// PlanStep is one step of a TaskPlan.
type PlanStep struct {
	Name  string    `json:"name"`
	State StepState `json:"state"`
}

// VendorTool is how Metalfleet drives a hardware model's vendor tools
// (firmware updater, BIOS settings, hardware RAID). It is matched on the
// inventory's system vendor (case-insensitive, exact) and product (a
// path.Match pattern; empty matches any). The program is a path inside
// the task ramdisk (build it in with ops/ramdisk/build.sh TOOLS=...).
//
// The contract of every command: arguments are the listed words, with
// {component}, {file}, {level} and {disks} replaced (each word stays one
// argument; nothing goes through a shell); exit status 0 is success and
// anything else a failure whose stderr names the cause; what a command
// prints on stdout is read as said per field.
type VendorTool struct {
	Name    string `json:"name"`
	Vendor  string `json:"vendor"`
	Product string `json:"product,omitempty"`
	// Firmware: Version prints the component's version (one line);
	// Apply writes the image at {file} to {component}.
	Firmware *ToolCommands `json:"firmware,omitempty"`
	// BIOS: Get prints the settings as one JSON object of strings;
	// Set applies the JSON object of strings at {file}.
	BIOS *ToolCommands `json:"bios,omitempty"`
	// RAID: Create makes an array of {level} over {disks} (comma-
	// separated device paths); Delete removes every array. Without it,
	// raid tasks use Linux software RAID (mdadm).
	RAID *ToolCommands `json:"raid,omitempty"`
}

// ToolCommands are one capability's commands.
type ToolCommands struct {
	Program string   `json:"program"`
	Version []string `json:"version,omitempty"`
	Apply   []string `json:"apply,omitempty"`
	Get     []string `json:"get,omitempty"`
	Set     []string `json:"set,omitempty"`
	Create  []string `json:"create,omitempty"`
	Delete  []string `json:"delete,omitempty"`
}

// LabTool is the vendor tool built into the task ramdisk for the lab:
// /bin/mflab (nodeagent under another name) keeps firmware images and
// BIOS settings on a disk whose serial is LabDeviceSerial, so the QEMU
// lab exercises the whole contract for real. It matches QEMU machines.
var LabTool = VendorTool{
	Name: "metalfleet-lab", Vendor: "QEMU",
	Firmware: &ToolCommands{Program: "/bin/mflab",
		Version: []string{"firmware-version", "{component}"},
		Apply:   []string{"firmware-apply", "{component}", "{file}"}},
	BIOS: &ToolCommands{Program: "/bin/mflab",
		Get: []string{"bios-get"},
		Set: []string{"bios-set", "{file}"}},
}

// LabDeviceSerial is the serial of the lab tool's device.
const LabDeviceSerial = "MFLAB-DEVICE"

// MaxVendorTools bounds the vendor_tools setting.
const MaxVendorTools = 64

// Matches reports whether t is for a machine of this vendor and product.
func (t *VendorTool) Matches(vendor, product string) bool {
	if !strings.EqualFold(strings.TrimSpace(t.Vendor), strings.TrimSpace(vendor)) {
		return false
	}
	if t.Product == "" {
		return true
	}
	ok, err := path.Match(t.Product, strings.TrimSpace(product))
	return err == nil && ok
}

// Validate checks a vendor tool's fields.
func (t *VendorTool) Validate() error {
	if err := checkRE("name", t.Name, 63, shortNameRE, "a name such as dell-r650"); err != nil {
		return err
	}
	if t.Vendor == "" || len(t.Vendor) > 128 {
		return Errorf(CodeInvalid, "vendor tool %s: vendor: want 1-128 bytes", t.Name)
	}
	if _, err := path.Match(t.Product, ""); err != nil || len(t.Product) > 128 {
		return Errorf(CodeInvalid, "vendor tool %s: product %q: want a pattern such as \"PowerEdge R6*\" of at most 128 bytes", t.Name, t.Product)
	}
	if t.Firmware == nil && t.BIOS == nil && t.RAID == nil {
		return Errorf(CodeInvalid, "vendor tool %s: give at least one of firmware, bios, raid", t.Name)
	}
	for _, c := range []struct {
		what  string
		cmds  *ToolCommands
		needs [][]string
		names []string
	}{
		{"firmware", t.Firmware, nil, []string{"version", "apply"}},
		{"bios", t.BIOS, nil, []string{"get", "set"}},
		{"raid", t.RAID, nil, []string{"create", "delete"}},
	} {
		if c.cmds == nil {
			continue
		}
		if !strings.HasPrefix(c.cmds.Program, "/") || len(c.cmds.Program) > 256 {
			return Errorf(CodeInvalid, "vendor tool %s: %s.program %q: want an absolute path in the task ramdisk", t.Name, c.what, c.cmds.Program)
		}
		args := map[string][]string{"version": c.cmds.Version, "apply": c.cmds.Apply, "get": c.cmds.Get,
			"set": c.cmds.Set, "create": c.cmds.Create, "delete": c.cmds.Delete}
		for _, n := range c.names {
			if len(args[n]) == 0 {
				return Errorf(CodeInvalid, "vendor tool %s: %s.%s: give the arguments", t.Name, c.what, n)
			}
			if len(args[n]) > 32 {
				return Errorf(CodeInvalid, "vendor tool %s: %s.%s: at most 32 arguments", t.Name, c.what, n)
			}
			for _, a := range args[n] {
				if len(a) > 256 {
					return Errorf(CodeInvalid, "vendor tool %s: %s.%s: an argument over 256 bytes", t.Name, c.what, n)
				}
			}
		}
	}
	return nil
}

// FindVendorTool returns the first tool in tools matching the inventory's
// vendor and product that has the capability want (firmware, bios, raid).
func FindVendorTool(tools []VendorTool, inv *Inventory, want TaskKind) *VendorTool {
	if inv == nil {
		return nil
	}
	for i := range tools {
		t := &tools[i]
		if !t.Matches(inv.System.Vendor, inv.System.Product) {
			continue
		}
		switch {
		case want == TaskFirmware && t.Firmware != nil,
			want == TaskBIOS && t.BIOS != nil,
			want == TaskRAID && t.RAID != nil:
			c := *t
			return &c
		}
	}
	return nil
}

// BurninParams are a burn-in's parameters.
type BurninParams struct {
	// Duration is how long each component runs (at least one full pass).
	Duration time.Duration
	// MemoryPercent is the share of free memory written and verified.
	MemoryPercent int
	// DiskBytes is the region of each disk read (and, when Destructive,
	// written and verified), from its start.
	DiskBytes   int64
	Destructive bool
	// Network runs the throughput test to the rack agent.
	Network bool
}

// RAIDParams are a raid task's parameters.
type RAIDParams struct {
	Level  int
	Disks  []string // serials
	Delete bool
}

// FirmwareParams are a firmware task's parameters.
type FirmwareParams struct {
	Component string // bios, bmc, nic:<mac>, ...
	Image     string // image name
}

// BIOSParams are a bios task's parameters.
type BIOSParams struct {
	Settings map[string]string
}

// DeployParams are a deploy's parameters.
type DeployParams struct {
	Image string // image name: TaskPlan.Artifacts[Image]
	// RootDevice picks the disk (nil: the smallest that fits).
	RootDevice *RootDeviceHint
	// MinBytes: the root disk must be at least this big (the flavor's
	// disk_gb).
	MinBytes int64
}

// CleanParams are a clean's parameters.
type CleanParams struct {
	// Full erases every disk whole, not only its first and last MiB and
	// its signatures.
	Full bool
}

// RescueParams are a rescue's parameters: how user rescue logs in over
// SSH (neither: only the serial console shell).
type RescueParams struct {
	Auth RescueAuth
}

// TaskParams is a task's parameters, parsed and defaulted: one of the
// fields is set, for its kind.
type TaskParams struct {
	Burnin   *BurninParams
	RAID     *RAIDParams
	Firmware *FirmwareParams
	BIOS     *BIOSParams
	Deploy   *DeployParams
	Clean    *CleanParams
	Rescue   *RescueParams
}

// Burn-in defaults, sized for a real server.
const (
	DefaultBurninDuration      = 30 * time.Minute
	DefaultBurninMemoryPercent = 80
	DefaultBurninDiskBytes     = 16 << 30
)

var taskParamNames = map[TaskKind][]string{
	TaskDeploy:   {"image", "root_device", "min_bytes"},
	TaskClean:    {"full"},
	TaskRescue:   {"image", "password_salt", "password_sha256", "ssh_key"},
	TaskInspect:  {},
	TaskBurnin:   {"duration", "memory_percent", "disk_bytes", "destructive", "network"},
	TaskFirmware: {"component", "image"},
	TaskBIOS:     {"settings"},
	TaskRAID:     {"level", "disks", "delete"},
}

// ParseTaskParams checks and parses the params of a task of kind k,
// naming the parameter at fault. The coordinator refuses a request with
// bad params; the ramdisk parses the same map with this same function.
func ParseTaskParams(k TaskKind, params map[string]string) (TaskParams, error) {
	var out TaskParams
	names, ok := taskParamNames[k]
	if !ok {
		return out, Errorf(CodeInvalid, "kind %q: want one of %s", truncateForError(string(k)), kindList())
	}
	if len(params) > MaxTaskParams {
		return out, Errorf(CodeInvalid, "params: %d given; at most %d", len(params), MaxTaskParams)
	}
	for key, v := range params {
		if !slices.Contains(names, key) {
			want := "none"
			if len(names) > 0 {
				want = strings.Join(names, ", ")
			}
			return out, Errorf(CodeInvalid, "param %q is not a %s param (%s: %s)", truncateForError(key), k, k, want)
		}
		if len(v) > MaxTaskParamValue {
			return out, tooLong("param "+key, len(v), MaxTaskParamValue)
		}
	}
	bad := func(key, want string) error {
		return Errorf(CodeInvalid, "param %s=%q: want %s", key, truncateForError(params[key]), want)
	}
	switch k {
	case TaskDeploy:
		d := &DeployParams{Image: params["image"]}
		if d.Image == "" {
			return out, Errorf(CodeInvalid, "param image is required: the name of the disk image")
		}
		if v := params["root_device"]; v != "" {
			var h RootDeviceHint
			if err := json.Unmarshal([]byte(v), &h); err != nil {
				return out, bad("root_device", "a JSON root-device hint such as {\"serial\":\"S1\"}")
			}
			d.RootDevice = &h
		}
		if v, ok := params["min_bytes"]; ok {
			n, err := ParseBytes(v)
			if err != nil {
				return out, bad("min_bytes", "a size such as 10GiB")
			}
			d.MinBytes = n
		}
		out.Deploy = d
	case TaskClean:
		c := &CleanParams{}
		if v, ok := params["full"]; ok {
			x, err := strconv.ParseBool(v)
			if err != nil {
				return out, bad("full", "true or false")
			}
			c.Full = x
		}
		out.Clean = c
	case TaskRescue:
		out.Rescue = &RescueParams{Auth: RescueAuth{PasswordSalt: params["password_salt"],
			PasswordSHA256: params["password_sha256"], SSHKey: params["ssh_key"]}}
	case TaskBurnin:
		b := &BurninParams{Duration: DefaultBurninDuration, MemoryPercent: DefaultBurninMemoryPercent,
			DiskBytes: DefaultBurninDiskBytes, Network: true}
		if v, ok := params["duration"]; ok {
			d, err := time.ParseDuration(v)
			if err != nil || d < time.Second || d > 72*time.Hour {
				return out, bad("duration", "a Go duration from 1s to 72h, such as 5s or 2h")
			}
			b.Duration = d
		}
		if v, ok := params["memory_percent"]; ok {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 || n > 95 {
				return out, bad("memory_percent", "a whole number from 0 to 95")
			}
			b.MemoryPercent = n
		}
		if v, ok := params["disk_bytes"]; ok {
			n, err := ParseBytes(v)
			if err != nil || n < 0 {
				return out, bad("disk_bytes", "a size such as 16MiB, 10GiB or 1048576")
			}
			b.DiskBytes = n
		}
		for key, dst := range map[string]*bool{"destructive": &b.Destructive, "network": &b.Network} {
			if v, ok := params[key]; ok {
				x, err := strconv.ParseBool(v)
				if err != nil {
					return out, bad(key, "true or false")
				}
				*dst = x
			}
		}
		out.Burnin = b
	case TaskRAID:
		r := &RAIDParams{}
		if v, ok := params["delete"]; ok {
			x, err := strconv.ParseBool(v)
			if err != nil {
				return out, bad("delete", "true or false")
			}
			r.Delete = x
		}
		if r.Delete {
			if params["level"] != "" || params["disks"] != "" {
				return out, Errorf(CodeInvalid, "params: delete=true takes no level or disks")
			}
			out.RAID = r
			break
		}
		switch params["level"] {
		case "0", "1", "10":
			r.Level, _ = strconv.Atoi(params["level"])
		case "":
			return out, Errorf(CodeInvalid, "param level is required (0, 1 or 10), or delete=true")
		default:
			return out, bad("level", "0, 1 or 10")
		}
		for _, s := range strings.Split(params["disks"], ",") {
			if s = strings.TrimSpace(s); s != "" {
				if slices.Contains(r.Disks, s) {
					return out, Errorf(CodeInvalid, "param disks: serial %q is named twice", truncateForError(s))
				}
				r.Disks = append(r.Disks, s)
			}
		}
		min := map[int]int{0: 2, 1: 2, 10: 4}[r.Level]
		if len(r.Disks) < min {
			return out, Errorf(CodeInvalid, "param disks: RAID %d needs at least %d disks (comma-separated serials), got %d", r.Level, min, len(r.Disks))
		}
		if r.Level == 10 && len(r.Disks)%2 != 0 {
			return out, Errorf(CodeInvalid, "param disks: RAID 10 needs an even number of disks, got %d", len(r.Disks))
		}
		if len(r.Disks) > 32 {
			return out, Errorf(CodeInvalid, "param disks: at most 32 disks")
		}
		out.RAID = r
	case TaskFirmware:
		f := &FirmwareParams{Component: params["component"], Image: params["image"]}
		if err := checkRE("param component", f.Component, 63, componentRE, "bios, bmc or nic:<mac>"); err != nil {
			return out, err
		}
		if f.Image == "" {
			return out, Errorf(CodeInvalid, "param image is required: the name of the firmware image")
		}
		out.Firmware = f
	case TaskBIOS:
		raw, ok := params["settings"]
		if !ok {
			return out, Errorf(CodeInvalid, "param settings is required: a JSON object such as {\"BootMode\":\"UEFI\"}")
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(raw), &m); err != nil || m == nil {
			return out, Errorf(CodeInvalid, "param settings: not a JSON object: %v", err)
		}
		if len(m) == 0 || len(m) > 256 {
			return out, Errorf(CodeInvalid, "param settings: want 1 to 256 settings, got %d", len(m))
		}
		s := make(map[string]string, len(m))
		for key, v := range m {
			if key == "" || len(key) > 128 {
				return out, Errorf(CodeInvalid, "param settings: a name of %d bytes; want 1-128", len(key))
			}
			switch x := v.(type) {
			case string:
				s[key] = x
			case float64, bool:
				s[key] = fmt.Sprint(x)
			default:
				return out, Errorf(CodeInvalid, "param settings: %s: want a string, number or boolean", truncateForError(key))
			}
		}
		out.BIOS = &BIOSParams{Settings: s}
	}
	return out, nil
}

func kindList() string {
	parts := make([]string, len(TaskKinds))
	for i, k := range TaskKinds {
		parts[i] = string(k)
	}
	return strings.Join(parts, ", ")
}

// ParseBytes reads a size: a whole number of bytes, or one with a unit
// (KiB, MiB, GiB, TiB, or KB, MB, GB, TB in powers of ten).
func ParseBytes(s string) (int64, error) {
	s = strings.TrimSpace(s)
	units := []struct {
		suffix string
		mult   int64
	}{
		{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
		{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"B", 1},
	}
	mult := int64(1)
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return n * mult, nil
}

// TaskSteps is the plan of a task of kind k with params p.
func TaskSteps(k TaskKind, p TaskParams) []Step {
	var names []string
	noAbort := ""
	switch k {
	case TaskInspect:
		names = []string{StepNameInventory}
	case TaskBurnin:
		names = []string{StepNameCPU, StepNameMemory, StepNameDisk}
		if p.Burnin != nil && p.Burnin.Network {
			names = append(names, StepNameNetwork)
		}
	case TaskFirmware:
		names, noAbort = []string{StepNameDownload, StepNameApply, StepNameVerify}, StepNameApply
	case TaskBIOS:
		names = []string{StepNameApply, StepNameVerify}
	case TaskRAID:
		names = []string{StepNameRAID, StepNameInventory}
	case TaskDeploy:
		names = []string{StepNameWrite}
	case TaskClean:
		names = []string{StepNameErase}
	case TaskRescue:
		names = []string{StepNameRescue}
	}
	steps := make([]Step, len(names))
	for i, n := range names {
		steps[i] = Step{Name: n, State: StepPending, NoAbort: n == noAbort}
	}
	return steps
}

// DefaultTaskTimeout is how long a task of kind k may go without progress
// before it fails: long enough for a real server to power-cycle, POST and
// boot the ramdisk, and for the longest step to report.
func DefaultTaskTimeout(k TaskKind, p TaskParams) time.Duration {
	switch k {
	case TaskBurnin:
		if p.Burnin != nil {
			return p.Burnin.Duration + 30*time.Minute
		}
	case TaskFirmware, TaskDeploy:
		return time.Hour
	case TaskClean:
		if p.Clean != nil && p.Clean.Full {
			return 24 * time.Hour
		}
	}
	return 30 * time.Minute
}
