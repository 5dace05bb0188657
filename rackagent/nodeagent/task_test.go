package nodeagent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/metalfleet/metalfleet/proto"
)

const (
	taskMAC   = "52:54:00:aa:bb:01"
	taskToken = "t0ken-of-the-task"
)

// tickClock moves a second on every reading and at once by whatever is
// waited for, so timed loops end quickly and deterministically.
type tickClock struct {
	mu  sync.Mutex
	now time.Time
}

func newTickClock() *tickClock { return &tickClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *tickClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(time.Second)
	return c.now
}

func (c *tickClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	ch := make(chan time.Time, 1)
	ch <- c.now
	return ch
}

// testAgent is a rack agent's task routes: the plan, the step reports
// (applied to the plan's steps as the coordinator would), the burn-in
// source and sink, and artifacts.
type testAgent struct {
	t *testing.T
	*httptest.Server

	mu        sync.Mutex
	plan      proto.TaskPlan
	reports   []proto.StepReport
	refuse    map[string]int // event -> status answered
	artifacts map[string][]byte
	rx, tx    int64
	badAuth   int
	planGets  int
	slowDown  int // burn-in source requests answered 429
	// boot is the agent run the burn-in routes name (AgentBootHeader);
	// cut burn-in downloads are cut mid-stream, and with restartOnCut the
	// run changes after each (an agent restart).
	boot         string
	cut          int
	restartOnCut bool
}

func newTestAgent(t *testing.T, plan proto.TaskPlan) *testAgent {
	a := &testAgent{t: t, plan: plan, refuse: map[string]int{}, artifacts: map[string][]byte{}}
	a.Server = httptest.NewServer(http.HandlerFunc(a.serve))
	t.Cleanup(a.Close)
	return a
}

func (a *testAgent) serve(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if r.Header.Get("Authorization") != "Bearer "+taskToken || r.Header.Get(proto.MACHeader) != taskMAC {
		a.badAuth++
		http.Error(w, `{"error":{"code":"unauthorized","message":"bad token"}}`, http.StatusUnauthorized)
		return
	}
	switch {
	case r.Method == http.MethodGet && r.URL.Path == proto.TaskPlanPath:
		a.planGets++
		json.NewEncoder(w).Encode(a.plan)
	case r.Method == http.MethodPost && r.URL.Path == proto.CallbackPrefix+"/"+proto.StepTask:
		var rep proto.StepReport
		if err := json.NewDecoder(r.Body).Decode(&rep); err != nil {
			a.t.Errorf("agent: a step report that is not JSON: %v", err)
			http.Error(w, "bad", http.StatusBadRequest)
			return
		}
		if err := rep.Validate(); err != nil {
			a.t.Errorf("agent: an invalid step report %+v: %v", rep, err)
			http.Error(w, "bad", http.StatusBadRequest)
			return
		}
		if st := a.refuse[rep.Event]; st != 0 {
			w.WriteHeader(st)
			fmt.Fprintf(w, `{"error":{"code":"conflict","message":"refused %s"}}`, rep.Event)
			return
		}
		a.reports = append(a.reports, rep)
		if rep.Task == a.plan.ID && rep.Index < len(a.plan.Steps) {
			switch {
			case rep.Event == proto.StepEventStart:
				a.plan.Steps[rep.Index].State = proto.StepRunning
			case rep.Event == proto.StepEventResult && rep.Passed:
				a.plan.Steps[rep.Index].State = proto.StepPassed
			case rep.Event == proto.StepEventResult:
				a.plan.Steps[rep.Index].State = proto.StepFailed
			}
		}
		w.WriteHeader(http.StatusAccepted)
	case r.URL.Path == proto.BurninSourcePath && a.slowDown > 0:
		a.slowDown--
		http.Error(w, `{"error":{"code":"rate_limited","message":"slow down"}}`, http.StatusTooManyRequests)
	case r.Method == http.MethodGet && r.URL.Path == proto.BurninSourcePath:
		n, err := strconv.ParseInt(r.URL.Query().Get("bytes"), 10, 64)
		if err != nil || n < 0 || n > proto.MaxBurninBytes {
			http.Error(w, "bad bytes", http.StatusBadRequest)
			return
		}
		w.Header().Set(proto.AgentBootHeader, a.boot)
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		if a.cut > 0 {
			a.cut--
			io.Copy(w, &patternReader{left: n / 2})
			if a.restartOnCut {
				a.boot += "-restarted"
			}
			panic(http.ErrAbortHandler) // the connection drops mid-body
		}
		m, _ := io.Copy(w, &patternReader{left: n})
		a.tx += m
	case r.Method == http.MethodPost && r.URL.Path == proto.BurninSinkPath:
		w.Header().Set(proto.AgentBootHeader, a.boot)
		m, _ := io.Copy(io.Discard, io.LimitReader(r.Body, proto.MaxBurninBytes))
		a.rx += m
		w.WriteHeader(http.StatusNoContent)
	case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/artifacts/"):
		b, ok := a.artifacts[strings.TrimPrefix(r.URL.Path, "/artifacts/")]
		if !ok {
			http.NotFound(w, r)
			return
		}
		// Not under the lock: a runner that posts a progress report while
		// it reads the body would wait for it (the test deadlocked so).
		a.mu.Unlock()
		defer a.mu.Lock()
		w.Write(b)
	default:
		http.NotFound(w, r)
	}
}

// results returns the result report of each step by name.
func (a *testAgent) results() map[string]proto.StepReport {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[string]proto.StepReport{}
	for _, r := range a.reports {
		if r.Event == proto.StepEventResult {
			out[r.Step] = r
		}
	}
	return out
}

// events lists "step:event" of every report.
func (a *testAgent) events() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for _, r := range a.reports {
		if r.Event != proto.StepEventProgress {
			out = append(out, r.Step+":"+r.Event)
		}
	}
	return out
}

func (a *testAgent) progressCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, r := range a.reports {
		if r.Event == proto.StepEventProgress {
			n++
		}
	}
	return n
}

// testMachine is a Machine with files as disks, the lab tool run in
// process on a file, and a recording mdadm.
type testMachine struct {
	mu        sync.Mutex
	inv       proto.Inventory
	dir       string
	mem       int64
	labDev    string
	calls     [][]string // program and args of every Exec
	mdadmExit int        // what mdadm --create answers
	examineOK map[string]bool
}

const testDiskSize = 3 << 20

func newTestMachine(t *testing.T) *testMachine {
	m := &testMachine{dir: t.TempDir(), mem: 16 << 20, examineOK: map[string]bool{}}
	m.inv = proto.Inventory{Version: proto.InventoryVersion, System: proto.System{Vendor: "QEMU", Product: "Standard PC (i440FX + PIIX, 1996)"},
		CPUs: proto.CPUs{Count: 2}, Memory: proto.Memory{TotalBytes: 1 << 30}}
	for _, d := range []proto.Disk{
		{Name: "vda", Serial: "S1", SizeBytes: testDiskSize},
		{Name: "vdb", Serial: "S2", SizeBytes: testDiskSize},
		{Name: "vdc", Serial: proto.LabDeviceSerial, SizeBytes: 16 << 20},
	} {
		f, err := os.Create(filepath.Join(m.dir, d.Name))
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(d.SizeBytes); err != nil {
			t.Fatal(err)
		}
		f.Close()
		m.inv.Disks = append(m.inv.Disks, d)
	}
	m.labDev = filepath.Join(m.dir, "vdc")
	return m
}

func (m *testMachine) Inventory(ctx context.Context) (*proto.Inventory, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	inv := m.inv
	inv.Disks = slices.Clone(m.inv.Disks)
	return &inv, nil
}

func (m *testMachine) OpenDisk(name string, write bool) (DiskDevice, error) {
	if strings.HasPrefix(name, "md") {
		return nil, fmt.Errorf("the burn-in opened array %s", name)
	}
	flags := os.O_RDONLY
	if write {
		flags = os.O_RDWR
	}
	return os.OpenFile(filepath.Join(m.dir, name), flags, 0)
}

func (m *testMachine) MemAvailable() (int64, error) { return m.mem, nil }

func (m *testMachine) Exec(ctx context.Context, program string, args []string) (ExecResult, error) {
	m.mu.Lock()
	m.calls = append(m.calls, append([]string{program}, args...))
	m.mu.Unlock()
	var out, errb bytes.Buffer
	switch program {
	case proto.LabTool.Firmware.Program:
		code := MFLab(append([]string{"--device", m.labDev}, args...), "/", &out, &errb)
		return ExecResult{Stdout: out.Bytes(), Stderr: errb.Bytes(), ExitCode: code}, nil
	case DefaultMDADM, "/opt/hwraid":
		if len(args) > 0 && args[0] == "--examine" {
			if m.examineOK[args[1]] {
				return ExecResult{}, nil
			}
			return ExecResult{Stderr: []byte("mdadm: No md superblock detected on " + args[1]), ExitCode: 1}, nil
		}
		if len(args) > 0 && args[0] == "--create" && m.mdadmExit != 0 {
			return ExecResult{Stderr: []byte("mdadm: cannot open /dev/vda: Device or resource busy"), ExitCode: m.mdadmExit}, nil
		}
		return ExecResult{Stdout: []byte("ok\n")}, nil
	}
	return ExecResult{}, fmt.Errorf("exec: %q: executable file not found", program)
}

func (m *testMachine) execCalls() [][]string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.calls)
}

// runTask runs the plan on the machine against a test agent.
func runTestTask(t *testing.T, a *testAgent, m Machine) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	clk := newTickClock()
	return RunTask(ctx, TaskEnv{
		CallbackURL: a.URL + proto.CallbackPrefix, MAC: taskMAC, Token: taskToken, Machine: m,
		Log: slog.New(slog.NewTextHandler(testWriter{t}, nil)), HTTP: a.Client(), Clock: clk,
		Reporter: &Reporter{Client: a.Client(), Clock: clk},
		TempDir:  t.TempDir(),
	})
}

func planOf(kind proto.TaskKind, params map[string]string) proto.TaskPlan {
	p, err := proto.ParseTaskParams(kind, params)
	if err != nil {
		panic(err)
	}
	plan := proto.TaskPlan{ID: "task-1", Kind: kind, Params: params}
	for _, s := range proto.TaskSteps(kind, p) {
		plan.Steps = append(plan.Steps, proto.PlanStep{Name: s.Name, State: s.State})
	}
	return plan
}

func decode[T any](t *testing.T, raw json.RawMessage) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatalf("result %s: %v", raw, err)
	}
	return v
}

func TestRunTaskBurnin(t *testing.T) {
	a := newTestAgent(t, planOf(proto.TaskBurnin, map[string]string{
		"duration": "3s", "memory_percent": "50", "disk_bytes": "1MiB", "destructive": "true", "network": "true"}))
	a.slowDown = 2 // the agent's rate bound is no network error
	m := newTestMachine(t)
	m.inv.Disks = append(m.inv.Disks, proto.Disk{Name: "md127", SizeBytes: testDiskSize, RAID: "raid1", Members: []string{"vda", "vdb"}})
	if err := runTestTask(t, a, m); err != nil {
		t.Fatalf("RunTask = %v", err)
	}
	want := []string{"cpu:start", "cpu:result", "memory:start", "memory:result", "disk:start", "disk:result", "network:start", "network:result"}
	if got := a.events(); !slices.Equal(got, want) {
		t.Errorf("reports = %v, want %v", got, want)
	}
	if a.progressCount() == 0 {
		t.Error("no progress report")
	}
	if a.badAuth != 0 {
		t.Errorf("%d requests without the token or MAC", a.badAuth)
	}
	res := a.results()
	for name, r := range res {
		if !r.Passed || r.Error != "" || r.Task != "task-1" {
			t.Errorf("step %s: passed %t error %q task %q, want passed", name, r.Passed, r.Error, r.Task)
		}
		if st := decode[map[string]any](t, r.Result)["status"]; st != "pass" {
			t.Errorf("step %s: status %v, want pass (%s)", name, st, r.Result)
		}
	}
	cpu := decode[cpuResult](t, res["cpu"].Result)
	if cpu.Cores != runtime.NumCPU() || cpu.Ops < int64(cpu.Cores) || cpu.Errors != 0 || cpu.OpsPerSec <= 0 {
		t.Errorf("cpu = %+v, want every core at least once, no errors", cpu)
	}
	mem := decode[memResult](t, res["memory"].Result)
	if mem.Bytes != 8<<20 || mem.Passes < 1 || mem.Errors != 0 || mem.MBPerSec <= 0 {
		t.Errorf("memory = %+v, want 8 MiB (50%% of 16 MiB), a pass or more, no errors", mem)
	}
	disk := decode[struct {
		Destructive bool
		Disks       []map[string]any
	}](t, res["disk"].Result)
	var names []string
	for _, d := range disk.Disks {
		names = append(names, d["name"].(string))
		if d["bytes"].(float64) != 1<<20 || d["errors"].(float64) != 0 || d["read_mb_per_sec"].(float64) <= 0 || d["write_mb_per_sec"].(float64) <= 0 {
			t.Errorf("disk %v, want 1 MiB read and written, no errors", d)
		}
	}
	if !disk.Destructive || !slices.Equal(names, []string{"vda", "vdb"}) {
		t.Errorf("disks tested %v (destructive %t), want vda and vdb, not the lab device or the array", names, disk.Destructive)
	}
	// The pattern is on the disk's first MiB, nothing past it, and the
	// lab device is untouched.
	b, _ := os.ReadFile(filepath.Join(m.dir, "vda"))
	if w := binary.LittleEndian.Uint64(b[4096:]); w&0xffffffffffff != 4096 || w == 4096 {
		t.Errorf("vda word at 4096 = %#x, want the pattern (offset 4096 with a pass seed)", w)
	}
	if !bytes.Equal(b[1<<20:], make([]byte, len(b)-1<<20)) {
		t.Error("vda was written past disk_bytes")
	}
	if lab, _ := os.ReadFile(m.labDev); !bytes.Equal(lab, make([]byte, len(lab))) {
		t.Error("the lab device was written")
	}
	net := decode[netResult](t, res["network"].Result)
	if net.Bytes <= 0 || net.RxMBPerSec <= 0 || net.TxMBPerSec <= 0 || net.Errors != 0 || a.rx == 0 || a.tx == 0 || a.slowDown != 0 {
		t.Errorf("network = %+v (agent rx %d tx %d), want bytes both ways", net, a.rx, a.tx)
	}
	boots := map[string]bool{}
	for _, r := range a.reports {
		boots[r.Boot] = true
	}
	if len(boots) != 1 || boots[""] {
		t.Errorf("reports name boots %v, want one, the same in every report", boots)
	}
	if a.plan.Steps[3].State != proto.StepPassed {
		t.Errorf("plan after = %+v", a.plan.Steps)
	}
}

func TestRunTaskResumesAfterPassedSteps(t *testing.T) {
	plan := planOf(proto.TaskBurnin, map[string]string{"duration": "1s", "memory_percent": "0", "disk_bytes": "64KiB", "network": "false"})
	plan.Steps[0].State, plan.Steps[1].State = proto.StepPassed, proto.StepPassed
	plan.Steps[2].State = proto.StepRunning // the ramdisk rebooted during it
	a := newTestAgent(t, plan)
	m := newTestMachine(t)
	if err := runTestTask(t, a, m); err != nil {
		t.Fatalf("RunTask = %v", err)
	}
	if got, want := a.events(), []string{"disk:start", "disk:result"}; !slices.Equal(got, want) {
		t.Errorf("reports = %v, want only the disk step (%v)", got, want)
	}
	if r := a.results()["disk"]; r.Index != 2 || !r.Passed {
		t.Errorf("disk result = %+v, want index 2, passed", r)
	}
	// Another run (the ramdisk rebooted) is another boot.
	plan2 := planOf(proto.TaskInspect, nil)
	a1 := newTestAgent(t, plan2)
	runTestTask(t, a1, m)
	if b1, b0 := a1.results()["inventory"].Boot, a.results()["disk"].Boot; b1 == b0 || b1 == "" {
		t.Errorf("two runs reported boots %q and %q, want two different ones", b0, b1)
	}
	before, _ := os.ReadFile(filepath.Join(m.dir, "vda"))
	if !bytes.Equal(before, make([]byte, len(before))) {
		t.Error("a non-destructive burn-in wrote a disk")
	}

	// Every step passed: nothing to do, nothing reported.
	for i := range plan.Steps {
		plan.Steps[i].State = proto.StepPassed
	}
	a2 := newTestAgent(t, plan)
	if err := runTestTask(t, a2, m); err != nil || len(a2.events()) != 0 {
		t.Errorf("RunTask(all passed) = %v with reports %v, want nothing done", err, a2.events())
	}
	// A failed step: the task is over.
	plan.Steps[2].State = proto.StepFailed
	a3 := newTestAgent(t, plan)
	if err := runTestTask(t, a3, m); !errors.Is(err, ErrStepFailed) || len(a3.events()) != 0 {
		t.Errorf("RunTask(a step failed) = %v with reports %v, want ErrStepFailed and nothing done", err, a3.events())
	}
}

func labImage(component, version string, payload string) []byte {
	return []byte(LabImageMagic + " " + component + " " + version + "\n" + payload)
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func TestRunTaskFirmware(t *testing.T) {
	image := labImage("bios", "2.1.0", strings.Repeat("firmware!", 1000))
	for _, tc := range []struct {
		name      string
		vendor    *proto.VendorTool
		artifact  proto.Artifact
		image     []byte
		wantFail  string // the failing step
		wantError string
	}{
		{name: "lab tool", vendor: &proto.LabTool, image: image},
		{name: "no tool", image: image, wantFail: "download", wantError: `no firmware tool for hardware model "QEMU" "Standard PC (i440FX + PIIX, 1996)"`},
		{name: "tool without firmware", vendor: &proto.VendorTool{Name: "acme", Vendor: "QEMU", BIOS: proto.LabTool.BIOS}, image: image,
			wantFail: "download", wantError: `its vendor tool "acme" has no firmware commands`},
		{name: "corrupt download", vendor: &proto.LabTool, image: image, artifact: proto.Artifact{SHA256: sha([]byte("other"))},
			wantFail: "download", wantError: "sha256 mismatch: got " + sha(image) + ", want " + sha([]byte("other")) + " (3 downloads)"},
		{name: "image for another component", vendor: &proto.LabTool, image: labImage("bmc", "3.0", "x"),
			wantFail: "apply", wantError: `the image is for component "bmc", not "bios"`},
		{name: "not an image", vendor: &proto.LabTool, image: []byte("hello\nworld"),
			wantFail: "apply", wantError: "not a lab firmware image"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			plan := planOf(proto.TaskFirmware, map[string]string{"component": "bios", "image": "bios-2.1"})
			plan.Vendor = tc.vendor
			a := newTestAgent(t, plan)
			art := tc.artifact
			art.URL = a.URL + "/artifacts/bios-2.1"
			if art.SHA256 == "" {
				art.SHA256 = sha(tc.image)
			}
			a.plan.Artifacts = map[string]proto.Artifact{"bios-2.1": art}
			a.artifacts["bios-2.1"] = tc.image
			m := newTestMachine(t)
			err := runTestTask(t, a, m)
			res := a.results()
			if tc.wantFail != "" {
				r := res[tc.wantFail]
				if !errors.Is(err, ErrStepFailed) || r.Passed || !strings.Contains(r.Error, tc.wantError) {
					t.Fatalf("RunTask = %v; step %s: passed %t error %q; want it failed with %q", err, tc.wantFail, r.Passed, r.Error, tc.wantError)
				}
				return
			}
			if err != nil {
				t.Fatalf("RunTask = %v", err)
			}
			dl := decode[firmwareResult](t, res["download"].Result)
			ver := decode[firmwareResult](t, res["verify"].Result)
			if dl.VersionBefore != LabFactoryVersion || dl.SHA256 != sha(image) || dl.Component != "bios" || dl.Image != "bios-2.1" {
				t.Errorf("download = %+v, want the factory version before and the image's sha256", dl)
			}
			if ver.VersionBefore != LabFactoryVersion || ver.VersionAfter != "2.1.0" {
				t.Errorf("verify = %+v, want 1.0.0 -> 2.1.0", ver)
			}
			if !strings.Contains(res["apply"].Log, "/bin/mflab firmware-apply bios ") {
				t.Errorf("apply log = %q, want the command line", res["apply"].Log)
			}
			// The device says so too.
			d, err := OpenLabDevice(m.labDev)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if v, err := d.FirmwareVersion("bios"); v != "2.1.0" || err != nil {
				t.Errorf("the lab device's bios version = %q, %v", v, err)
			}
		})
	}
}

func TestRunTaskFirmwareRedownloadsAfterRestart(t *testing.T) {
	image := labImage("nic:52:54:00:aa:bb:01", "7.0", "payload")
	plan := planOf(proto.TaskFirmware, map[string]string{"component": "nic:52:54:00:aa:bb:01", "image": "nic"})
	plan.Vendor = &proto.LabTool
	plan.Steps[0].State = proto.StepPassed // downloaded before the ramdisk restarted
	a := newTestAgent(t, plan)
	a.plan.Artifacts = map[string]proto.Artifact{"nic": {URL: a.URL + "/artifacts/nic", SHA256: sha(image), Size: int64(len(image))}}
	a.artifacts["nic"] = image
	if err := runTestTask(t, a, newTestMachine(t)); err != nil {
		t.Fatalf("RunTask = %v", err)
	}
	res := a.results()
	if v := decode[firmwareResult](t, res["verify"].Result).VersionAfter; v != "7.0" || !strings.Contains(res["apply"].Log, "downloading it again") {
		t.Errorf("verify version %q, apply log %q; want 7.0 after downloading again", v, res["apply"].Log)
	}
}

func TestRunTaskBIOS(t *testing.T) {
	settings := `{"BootMode":"Legacy","SRIOV":"Enabled","Turbo":true}`
	t.Run("set and read back", func(t *testing.T) {
		plan := planOf(proto.TaskBIOS, map[string]string{"settings": settings})
		plan.Vendor = &proto.LabTool
		a := newTestAgent(t, plan)
		if err := runTestTask(t, a, newTestMachine(t)); err != nil {
			t.Fatalf("RunTask = %v", err)
		}
		v := decode[struct {
			Settings map[string]string
			Matched  int
		}](t, a.results()["verify"].Result)
		if v.Matched != 3 || v.Settings["BootMode"] != "Legacy" || v.Settings["Turbo"] != "true" {
			t.Errorf("verify = %+v, want the 3 settings read back", v)
		}
	})
	t.Run("a tool that does not set: verify names the settings", func(t *testing.T) {
		plan := planOf(proto.TaskBIOS, map[string]string{"settings": settings})
		lazy := *proto.LabTool.BIOS
		lazy.Set = []string{"bios-get"} // succeeds, sets nothing
		plan.Vendor = &proto.VendorTool{Name: "lazy", Vendor: "QEMU", BIOS: &lazy}
		a := newTestAgent(t, plan)
		err := runTestTask(t, a, newTestMachine(t))
		r := a.results()["verify"]
		for _, want := range []string{`BootMode: asked "Legacy", read "UEFI"`, `SRIOV: asked "Enabled", read "Disabled"`, `Turbo: asked "true", not read back`} {
			if !strings.Contains(r.Error, want) {
				t.Errorf("verify error %q, want it to name %s", r.Error, want)
			}
		}
		if !errors.Is(err, ErrStepFailed) || !a.results()["apply"].Passed {
			t.Errorf("RunTask = %v, want apply passed and verify failed", err)
		}
	})
	t.Run("no tool", func(t *testing.T) {
		a := newTestAgent(t, planOf(proto.TaskBIOS, map[string]string{"settings": settings}))
		err := runTestTask(t, a, newTestMachine(t))
		if r := a.results()["apply"]; !errors.Is(err, ErrStepFailed) || !strings.Contains(r.Error, `no BIOS tool for hardware model "QEMU"`) {
			t.Errorf("RunTask = %v, apply error %q; want it to name the model", err, r.Error)
		}
	})
	t.Run("the tool fails", func(t *testing.T) {
		plan := planOf(proto.TaskBIOS, map[string]string{"settings": settings})
		plan.Vendor = &proto.VendorTool{Name: "gone", Vendor: "QEMU", BIOS: &proto.ToolCommands{Program: "/opt/nope", Set: []string{"set", "{file}"}}}
		a := newTestAgent(t, plan)
		err := runTestTask(t, a, newTestMachine(t))
		if r := a.results()["apply"]; !errors.Is(err, ErrStepFailed) || !strings.Contains(r.Error, "/opt/nope set ") || !strings.Contains(r.Error, "not found") {
			t.Errorf("RunTask = %v, apply error %q; want the command and why", err, r.Error)
		}
	})
}

func TestRunTaskRAID(t *testing.T) {
	t.Run("mdadm create, then the inventory", func(t *testing.T) {
		a := newTestAgent(t, planOf(proto.TaskRAID, map[string]string{"level": "1", "disks": "S2,S1"}))
		m := newTestMachine(t)
		if err := runTestTask(t, a, m); err != nil {
			t.Fatalf("RunTask = %v", err)
		}
		calls := m.execCalls()
		want := []string{DefaultMDADM, "--create", RAIDDevice, "--run", "--metadata=1.2", "--level=1", "--raid-devices=2", "/dev/vdb", "/dev/vda"}
		if len(calls) < 1 || !slices.Equal(calls[0], want) {
			t.Errorf("exec = %q, want first %q", calls, want)
		}
		res := a.results()
		if r := res["inventory"]; !r.Passed || r.Inventory == nil || len(r.Inventory.Disks) != 3 || r.Inventory.PXEMAC != taskMAC {
			t.Errorf("inventory step = %+v, want the inventory", r)
		}
		if got := a.events(); !slices.Equal(got, []string{"raid:start", "raid:result", "inventory:start", "inventory:result"}) {
			t.Errorf("reports = %v", got)
		}
	})
	t.Run("unknown serial: fails naming it, and stops", func(t *testing.T) {
		a := newTestAgent(t, planOf(proto.TaskRAID, map[string]string{"level": "0", "disks": "S1,NOPE"}))
		m := newTestMachine(t)
		err := runTestTask(t, a, m)
		r := a.results()["raid"]
		if !errors.Is(err, ErrStepFailed) || !strings.Contains(r.Error, `no disk with serial "NOPE"`) || !strings.Contains(r.Error, "S1, S2") {
			t.Errorf("RunTask = %v, raid error %q; want the serial named and the ones there", err, r.Error)
		}
		if got := a.events(); !slices.Equal(got, []string{"raid:start", "raid:result"}) || len(m.execCalls()) != 0 {
			t.Errorf("reports %v, exec %v; want the run stopped, no mdadm", got, m.execCalls())
		}
	})
	t.Run("mdadm refuses", func(t *testing.T) {
		a := newTestAgent(t, planOf(proto.TaskRAID, map[string]string{"level": "1", "disks": "S1,S2"}))
		m := newTestMachine(t)
		m.mdadmExit = 1
		err := runTestTask(t, a, m)
		if r := a.results()["raid"]; !errors.Is(err, ErrStepFailed) || !strings.Contains(r.Error, "exit status 1: mdadm: cannot open /dev/vda: Device or resource busy") || !strings.Contains(r.Log, "--create") {
			t.Errorf("raid = %+v, want mdadm's stderr in the error and the command in the log", r)
		}
	})
	t.Run("delete", func(t *testing.T) {
		a := newTestAgent(t, planOf(proto.TaskRAID, map[string]string{"delete": "true"}))
		m := newTestMachine(t)
		m.inv.Disks = append(m.inv.Disks, proto.Disk{Name: "md127", SizeBytes: testDiskSize, RAID: "raid1", Members: []string{"vda"}})
		m.examineOK["/dev/vdb"] = true // an array not assembled
		if err := runTestTask(t, a, m); err != nil {
			t.Fatalf("RunTask = %v", err)
		}
		var got []string
		for _, c := range m.execCalls() {
			got = append(got, strings.Join(c[1:], " "))
		}
		want := []string{"--stop /dev/md127", "--examine /dev/vdb", "--zero-superblock /dev/vda", "--zero-superblock /dev/vdb"}
		if !slices.Equal(got, want) {
			t.Errorf("mdadm calls = %q, want %q", got, want)
		}
		res := decode[map[string]any](t, a.results()["raid"].Result)
		if fmt.Sprint(res["zeroed"]) != "[vda vdb]" || fmt.Sprint(res["stopped"]) != "[md127]" {
			t.Errorf("raid result = %v", res)
		}
	})
	t.Run("hardware RAID through the vendor tool", func(t *testing.T) {
		plan := planOf(proto.TaskRAID, map[string]string{"level": "10", "disks": "S1,S2,S3,S4"})
		plan.Vendor = &proto.VendorTool{Name: "acme-raid", Vendor: "QEMU", RAID: &proto.ToolCommands{Program: "/opt/hwraid",
			Create: []string{"create", "--level={level}", "{disks}"}, Delete: []string{"delete", "--all"}}}
		a := newTestAgent(t, plan)
		m := newTestMachine(t)
		for _, s := range []string{"S3", "S4"} {
			m.inv.Disks = append(m.inv.Disks, proto.Disk{Name: "sd" + strings.ToLower(s), Serial: s, SizeBytes: testDiskSize})
		}
		if err := runTestTask(t, a, m); err != nil {
			t.Fatalf("RunTask = %v", err)
		}
		want := []string{"/opt/hwraid", "create", "--level=10", "/dev/vda,/dev/vdb,/dev/sds3,/dev/sds4"}
		if c := m.execCalls(); len(c) != 1 || !slices.Equal(c[0], want) {
			t.Errorf("exec = %q, want %q", c, want)
		}
	})
}

func TestRunTaskInspect(t *testing.T) {
	a := newTestAgent(t, planOf(proto.TaskInspect, nil))
	if err := runTestTask(t, a, newTestMachine(t)); err != nil {
		t.Fatalf("RunTask = %v", err)
	}
	r := a.results()["inventory"]
	sum := decode[map[string]any](t, r.Result)
	if !r.Passed || r.Inventory == nil || r.Inventory.System.Vendor != "QEMU" || sum["disks"] != 3.0 {
		t.Errorf("inventory = %+v (summary %v)", r, sum)
	}
}

func TestRunTaskRefusals(t *testing.T) {
	t.Run("a refused start report ends the run", func(t *testing.T) {
		a := newTestAgent(t, planOf(proto.TaskInspect, nil))
		a.refuse[proto.StepEventStart] = http.StatusConflict
		err := runTestTask(t, a, newTestMachine(t))
		var se *StatusError
		if !errors.As(err, &se) || se.Status != http.StatusConflict || errors.Is(err, ErrStepFailed) {
			t.Errorf("RunTask = %v, want the 409 (not a step failure)", err)
		}
	})
	t.Run("a refused progress report stops the step", func(t *testing.T) {
		a := newTestAgent(t, planOf(proto.TaskBurnin, map[string]string{"duration": "30s", "network": "false"}))
		a.refuse[proto.StepEventProgress] = http.StatusConflict
		err := runTestTask(t, a, newTestMachine(t))
		if err == nil || !strings.Contains(err.Error(), "refused progress") {
			t.Errorf("RunTask = %v, want the refusal", err)
		}
	})
	t.Run("no plan", func(t *testing.T) {
		a := newTestAgent(t, proto.TaskPlan{})
		a.Config.Handler = http.NotFoundHandler()
		err := runTestTask(t, a, newTestMachine(t))
		var se *StatusError
		if !errors.As(err, &se) || se.Status != http.StatusNotFound {
			t.Errorf("RunTask = %v, want the 404", err)
		}
	})
	t.Run("a wrong token", func(t *testing.T) {
		a := newTestAgent(t, planOf(proto.TaskInspect, nil))
		err := RunTask(context.Background(), TaskEnv{CallbackURL: a.URL + proto.CallbackPrefix, MAC: taskMAC, Token: "wrong",
			Machine: newTestMachine(t), HTTP: a.Client()})
		if err == nil || !strings.Contains(err.Error(), "401") || a.planGets != 0 {
			t.Errorf("RunTask = %v, want a 401", err)
		}
	})
	t.Run("bad params fail the first step", func(t *testing.T) {
		plan := planOf(proto.TaskBurnin, map[string]string{"duration": "5s"})
		plan.Params["duration"] = "forever"
		a := newTestAgent(t, plan)
		err := runTestTask(t, a, newTestMachine(t))
		if r := a.results()["cpu"]; !errors.Is(err, ErrStepFailed) || !strings.Contains(r.Error, "params: param duration") {
			t.Errorf("RunTask = %v, cpu error %q; want the param named", err, r.Error)
		}
	})
	t.Run("env", func(t *testing.T) {
		for _, env := range []TaskEnv{
			{CallbackURL: "http://a/v1/callback", MAC: taskMAC, Token: "t"},
			{CallbackURL: "http://a/v1/callback", MAC: taskMAC, Machine: newTestMachine(t)},
			{CallbackURL: "http://a/v1/callback", MAC: "nope", Token: "t", Machine: newTestMachine(t)},
			{CallbackURL: "http://a/elsewhere", MAC: taskMAC, Token: "t", Machine: newTestMachine(t)},
		} {
			if err := RunTask(context.Background(), env); err == nil {
				t.Errorf("RunTask(%+v) = nil error", env)
			}
		}
	})
}

func TestBaseURL(t *testing.T) {
	for in, want := range map[string]string{
		"http://10.0.0.1:8080/v1/callback":       "http://10.0.0.1:8080",
		"http://10.0.0.1:8080/v1/callback/":      "http://10.0.0.1:8080",
		"https://agent/prefix/v1/callback?x=1":   "https://agent/prefix",
		"http://[fd00::1]:8080/v1/callback#frag": "http://[fd00::1]:8080",
	} {
		if got, err := baseURL(in); got != want || err != nil {
			t.Errorf("baseURL(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "ftp://a/v1/callback", "http:///v1/callback", "http://a/v2/other"} {
		if _, err := baseURL(in); err == nil {
			t.Errorf("baseURL(%q) = nil error", in)
		}
	}
}

func TestToolArgs(t *testing.T) {
	got := ToolArgs([]string{"apply", "--component={component}", "{file}", "{level}", "{disks}", "{other}"},
		map[string]string{"component": "nic:aa", "file": "/tmp/a b; rm -rf /", "level": "1", "disks": "/dev/a,/dev/b"})
	want := []string{"apply", "--component=nic:aa", "/tmp/a b; rm -rf /", "1", "/dev/a,/dev/b", "{other}"}
	if !slices.Equal(got, want) {
		t.Errorf("ToolArgs = %q, want %q (each word one argument)", got, want)
	}
}

func TestStepBounds(t *testing.T) {
	var tb tailBuffer
	for i := 0; i < 10000; i++ {
		fmt.Fprintf(&tb, "line %05d of a long log\n", i)
	}
	s := tb.String()
	if len(s) > proto.MaxStepLog || !strings.HasSuffix(s, "line 09999 of a long log\n") || !strings.HasPrefix(s, "[... earlier lines dropped]") {
		t.Errorf("log tail: %d bytes, ends %q; want at most %d, the last line kept", len(s), s[len(s)-30:], proto.MaxStepLog)
	}
	if got := truncate(strings.Repeat("é", 100), 11); got != "éééé..." || len(got) > 11 {
		t.Errorf("truncate = %q, want whole runes and the mark", got)
	}
	if got := truncate("short", 10); got != "short" {
		t.Errorf("truncate(short) = %q", got)
	}
}

func TestRunTaskMemoryInChunks(t *testing.T) {
	defer func(n int64) { memChunk = n }(memChunk)
	memChunk = 1 << 20
	a := newTestAgent(t, planOf(proto.TaskBurnin, map[string]string{"duration": "1s", "memory_percent": "95", "network": "false"}))
	a.plan.Steps[0].State, a.plan.Steps[2].State = proto.StepPassed, proto.StepPassed
	m := newTestMachine(t)
	m.mem = 10<<20 + 12345
	if err := runTestTask(t, a, m); err != nil {
		t.Fatalf("RunTask = %v", err)
	}
	mem := decode[memResult](t, a.results()["memory"].Result)
	if want := (int64(10<<20+12345) * 95 / 100) &^ 4095; mem.Bytes != want || mem.Errors != 0 || mem.Passes < 1 {
		t.Errorf("memory = %+v, want %d bytes in 1 MiB chunks, no errors", mem, want)
	}
}

func TestMemoryPatternsFindErrors(t *testing.T) {
	words := make([]uint64, 1024)
	for p := range memPatterns {
		memFill(words, p, 4096)
		if bad := memCheck(words, p, 4096); bad != 0 {
			t.Errorf("pattern %s: %d bad words in memory just written", memPatterns[p], bad)
		}
		words[7] ^= 1 << 3 // a stuck bit
		words[900] = ^words[900]
		if bad := memCheck(words, p, 4096); bad != 2 {
			t.Errorf("pattern %s: %d bad words found, want 2", memPatterns[p], bad)
		}
	}
	if memWord(3, 10) == memWord(3, 11) || memWord(2, 1) != 2 {
		t.Error("address and walking-ones patterns do not vary by word")
	}
}

func TestCPUOpIsDeterministic(t *testing.T) {
	if cpuOp(3) != cpuOp(3) || cpuOp(3) == cpuOp(4) {
		t.Error("cpuOp must give one answer per round, a different one per round")
	}
}

func TestAlignedBuf(t *testing.T) {
	for i := 0; i < 8; i++ {
		b := alignedBuf(diskBlock)
		if len(b) != diskBlock || cap(b) != diskBlock {
			t.Fatalf("alignedBuf: len %d cap %d", len(b), cap(b))
		}
		if p := uintptrOf(b); p%diskAlign != 0 {
			t.Fatalf("alignedBuf at %#x, not aligned on %d", p, diskAlign)
		}
	}
}

func TestLinuxMachine(t *testing.T) {
	root := t.TempDir()
	for p, text := range map[string]string{
		"proc/meminfo": "MemTotal:        2048000 kB\nMemFree:  100 kB\nMemAvailable:    1024000 kB\n",
		"proc/cpuinfo": "processor\t: 0\n",
		"dev/vda":      strings.Repeat("x", 8192),
	} {
		os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755)
		if err := os.WriteFile(filepath.Join(root, p), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	m := &LinuxMachine{Root: root, PXEMAC: taskMAC}
	if n, err := m.MemAvailable(); n != 1024000<<10 || err != nil {
		t.Errorf("MemAvailable = %d, %v", n, err)
	}
	d, err := m.OpenDisk("vda", false)
	if err != nil {
		t.Fatal(err)
	}
	b := alignedBuf(4096)
	if _, err := d.ReadAt(b, 4096); err != nil || b[0] != 'x' {
		t.Errorf("ReadAt = %v, %q", err, b[:1])
	}
	d.Close()
	if _, err := m.OpenDisk("../proc/meminfo", false); err == nil {
		t.Error("OpenDisk(../proc/meminfo) = nil error")
	}
	inv, err := m.Inventory(context.Background())
	if err != nil || inv.PXEMAC != taskMAC || inv.Memory.TotalBytes != 2048000<<10 {
		t.Errorf("Inventory = %+v, %v", inv, err)
	}
	res, err := m.Exec(context.Background(), "/bin/sh", []string{"-c", "echo out; echo err >&2; exit 3"})
	if err != nil || string(res.Stdout) != "out\n" || string(res.Stderr) != "err\n" || res.ExitCode != 3 {
		t.Errorf("Exec = %+v, %v; want both streams and exit 3", res, err)
	}
	if _, err := m.Exec(context.Background(), filepath.Join(root, "nope"), nil); err == nil {
		t.Error("Exec(missing program) = nil error")
	}
}

func uintptrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(&b[0])) }

func TestRunInitRunsTheTask(t *testing.T) {
	const cmdline = "BOOTIF=01-52-54-00-00-00-0a metalfleet.callback=http://10.0.0.1:8080/v1/callback metalfleet.task=burnin metalfleet.token=tk"
	for _, tc := range []struct {
		name        string
		taskErr     error
		wantErr     string
		wantActions []string
	}{
		{name: "done: stay up, the coordinator powers off", wantActions: nil},
		{name: "a step failed: reported, so no reboot", taskErr: fmt.Errorf("step cpu: %w", ErrStepFailed), wantActions: nil},
		{name: "plan unreachable: reboot", taskErr: errors.New("GET plan: giving up"), wantErr: "giving up", wantActions: []string{"reboot"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := &fakeMachine{all: twoNICs(), dhcpOK: map[string]bool{"eth0": true}, cmdline: cmdline}
			sys := m.system(t)
			var got []TaskEnv
			sys.runTask = func(ctx context.Context, env TaskEnv) error {
				got = append(got, env)
				return tc.taskErr
			}
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			p, err := runInit(ctx, sys)
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("runInit = %v, want error %q", err, tc.wantErr)
			}
			if len(got) != 1 || got[0].CallbackURL != "http://10.0.0.1:8080/v1/callback" || got[0].MAC != macA || got[0].Token != "tk" {
				t.Fatalf("runTask calls = %+v, want one with the callback, MAC and token", got)
			}
			if len(m.reports) != 0 || m.collected.Root != "" {
				t.Errorf("the discovery path ran too: reports %v, collect %+v", m.reports, m.collected)
			}
			if p.PowerOff {
				t.Error("a burn-in powers off by itself; the coordinator does")
			}
			_ = finish(ctx, sys, p, err) // stays up until ctx ends, or reboots
			if !slices.Equal(m.actions, tc.wantActions) {
				t.Errorf("actions = %v, want %v", m.actions, tc.wantActions)
			}
		})
	}
}

// TestNetworkBurninAgentRestart: a download cut mid-stream is a network
// error, unless the agent's next answer comes from another run (it
// restarted): then it is counted as an agent restart and the step passes.
func TestNetworkBurninAgentRestart(t *testing.T) {
	for _, tc := range []struct {
		name     string
		restart  bool
		wantPass bool
	}{
		{"agent restarted", true, true},
		{"same agent: a network fault", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newTestAgent(t, planOf(proto.TaskBurnin, map[string]string{
				"duration": "1s", "memory_percent": "0", "disk_bytes": "0", "network": "true"}))
			for i := range a.plan.Steps[:3] {
				a.plan.Steps[i].State = proto.StepPassed
			}
			a.boot, a.cut, a.restartOnCut = "run-1", 1, tc.restart
			err := runTestTask(t, a, newTestMachine(t))
			res := a.results()
			net := decode[netResult](t, res["network"].Result)
			if tc.wantPass {
				if err != nil || net.Status != "pass" || net.Errors != 0 || net.AgentRestarts != 1 {
					t.Fatalf("RunTask = %v, network = %+v; want pass, 0 errors, 1 agent restart", err, net)
				}
				return
			}
			if err == nil || net.Status != "fail" || net.Errors != 1 || net.AgentRestarts != 0 {
				t.Fatalf("RunTask = %v, network = %+v; want a failure with 1 error", err, net)
			}
		})
	}
}
