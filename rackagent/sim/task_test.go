package sim

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/proto"
	"github.com/metalfleet/metalfleet/rackagent/httpboot"
	"github.com/metalfleet/metalfleet/rackagent/nodeagent"
)

// taskBackend is a rack's boot state of task nodes, for a real
// httpboot.Server.
type taskBackend struct {
	mu    sync.Mutex
	nodes map[string]*proto.BootNode // by MAC
}

func (b *taskBackend) add(n proto.BootNode) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.nodes == nil {
		b.nodes = map[string]*proto.BootNode{}
	}
	b.nodes[n.MACs[0]] = &n
}

func (b *taskBackend) Boot(mac string) (*proto.BootNode, proto.BootConfig, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if n, ok := b.nodes[mac]; ok {
		return n, n.Boot, true
	}
	return nil, proto.BootConfig{}, false
}

func (b *taskBackend) ArtifactBySHA(string) (proto.Artifact, bool) { return proto.Artifact{}, false }
func (b *taskBackend) Address(string) (netip.Addr, bool)           { return netip.Addr{}, false }

func (b *taskBackend) NodeByUUID(uuid string) (*proto.BootNode, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, n := range b.nodes {
		if n.UUID == uuid {
			return n, true
		}
	}
	return nil, false
}

// stepReports keeps the step reports the agent queued, by MAC.
type stepReports struct {
	mu  sync.Mutex
	got map[string][]proto.StepReport
	bad []string
}

func (s *stepReports) Report(r proto.AgentReport) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var sr proto.StepReport
	if r.Step != proto.StepTask || json.Unmarshal(r.Data, &sr) != nil {
		s.bad = append(s.bad, fmt.Sprintf("%s %s", r.Step, r.Data))
		return
	}
	if s.got == nil {
		s.got = map[string][]proto.StepReport{}
	}
	s.got[r.MAC] = append(s.got[r.MAC], sr)
}

// results are mac's step results by step name.
func (s *stepReports) results(mac string) map[string]proto.StepReport {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]proto.StepReport{}
	for _, r := range s.got[mac] {
		if r.Event == proto.StepEventResult {
			out[r.Step] = r
		}
	}
	return out
}

// taskAgent is a real HTTP boot server on loopback with a task backend.
func taskAgent(t *testing.T) (base string, b *taskBackend, reps *stepReports) {
	t.Helper()
	b, reps = &taskBackend{}, &stepReports{}
	cache, err := httpboot.NewCache(httpboot.CacheConfig{Dir: t.TempDir(), MaxBytes: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	base = "http://" + ln.Addr().String()
	srv := httpboot.New(httpboot.Config{Backend: b, Reporter: reps, Cache: cache, BaseURL: base})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done })
	return base, b, reps
}

func taskMAC(i int) net.HardwareAddr {
	return net.HardwareAddr{0x52, 0x54, 0, 0xe0, byte(i >> 8), byte(i)}
}

// taskNode is a node of MAC mac running plan.
func taskNode(i int, plan proto.TaskPlan) proto.BootNode {
	mac := taskMAC(i)
	return proto.BootNode{UUID: fmt.Sprintf("22222222-0000-4000-8000-%012x", i), MACs: []string{mac.String()},
		Boot: proto.BootConfig{Kind: proto.BootRamdisk, Task: string(plan.Kind), TaskToken: fmt.Sprintf("token-%d", i)}, Task: &plan}
}

var tinyBurnin = map[string]string{"duration": "1s", "memory_percent": "1", "disk_bytes": "1MiB", "network": "true"}

func burninPlan(id string) proto.TaskPlan {
	p, _ := proto.ParseTaskParams(proto.TaskBurnin, tinyBurnin)
	plan := proto.TaskPlan{ID: id, Kind: proto.TaskBurnin, Params: tinyBurnin}
	for _, s := range proto.TaskSteps(proto.TaskBurnin, p) {
		plan.Steps = append(plan.Steps, proto.PlanStep{Name: s.Name, State: s.State})
	}
	return plan
}

// TestTaskBurnin: a simulated machine runs a short burn-in with the real
// task runner against a real agent's task routes; every component passes
// with figures, and its disks' files stay with the machine until it is closed.
func TestTaskBurnin(t *testing.T) {
	base, b, reps := taskAgent(t)
	b.add(taskNode(1, burninPlan("t-burn")))
	dir := t.TempDir()
	m := &Machine{MAC: taskMAC(1), TaskDir: dir, Serial: NewSerial()}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := m.runTask(ctx, Firmware{}.withDefaults(), net.IPv4(127, 0, 0, 1), base+proto.CallbackPrefix, taskMAC(1).String(), "token-1", "burnin"); err != nil {
		t.Fatalf("burn-in: %v\nconsole:\n%s", err, m.Serial.Log())
	}
	res := reps.results(taskMAC(1).String())
	for _, step := range []string{"cpu", "memory", "disk", "network"} {
		r, ok := res[step]
		var fig map[string]any
		if !ok || !r.Passed || json.Unmarshal(r.Result, &fig) != nil || fig["status"] != "pass" {
			t.Errorf("step %s: result %+v, want passed with status pass", step, r)
		}
	}
	if len(reps.bad) > 0 {
		t.Errorf("reports that are not step reports: %v", reps.bad)
	}
	if !strings.Contains(m.Serial.Log(), "running task burnin") {
		t.Errorf("the console does not show the task:\n%s", m.Serial.Log())
	}
	// The machine keeps its disks (a deploy's image stays for the next
	// task) until it is closed; nothing else of the task is left.
	if des, _ := os.ReadDir(dir); len(des) != 1 || !strings.HasPrefix(des[0].Name(), "sim-disks-") {
		t.Errorf("after the task: %v, want only the machine's disks", des)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if des, _ := os.ReadDir(dir); len(des) != 0 {
		t.Errorf("the machine's files are left behind after Close: %v", des)
	}
}

// TestTaskFirmwareWithLabTool: a firmware task with the lab's tool
// configured for the sim's hardware downloads the image through the
// agent's cache (the plan's URL rewritten to it), applies it with the
// in-process mflab, and reads the version before and after.
func TestTaskFirmwareWithLabTool(t *testing.T) {
	base, b, reps := taskAgent(t)
	image := []byte(nodeagent.LabImageMagic + " bios 2.5.0\n" + strings.Repeat("payload ", 1000))
	up := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(image) })}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go up.Serve(ln)
	defer up.Close()
	sum := sha256.Sum256(image)
	tool := proto.LabTool
	tool.Name, tool.Vendor = "sim-lab", "Metalfleet Sim"
	plan := proto.TaskPlan{ID: "t-fw", Kind: proto.TaskFirmware, Params: map[string]string{"component": "bios", "image": "bios-2.5"},
		Vendor:    &tool,
		Artifacts: map[string]proto.Artifact{"bios-2.5": {Name: "bios-2.5", URL: "http://" + ln.Addr().String() + "/bios.bin", SHA256: hex.EncodeToString(sum[:]), Size: int64(len(image))}}}
	for _, s := range proto.TaskSteps(proto.TaskFirmware, proto.TaskParams{}) {
		plan.Steps = append(plan.Steps, proto.PlanStep{Name: s.Name, State: s.State})
	}
	b.add(taskNode(2, plan))
	m := &Machine{MAC: taskMAC(2), TaskDir: t.TempDir(), Serial: NewSerial()}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := m.runTask(ctx, Firmware{}.withDefaults(), net.IPv4(127, 0, 0, 1), base+proto.CallbackPrefix, taskMAC(2).String(), "token-2", "firmware"); err != nil {
		t.Fatalf("firmware: %v\nconsole:\n%s", err, m.Serial.Log())
	}
	res := reps.results(taskMAC(2).String())
	var fig struct {
		VersionBefore string `json:"version_before"`
		VersionAfter  string `json:"version_after"`
	}
	if r := res["verify"]; !r.Passed || json.Unmarshal(r.Result, &fig) != nil || fig.VersionAfter != "2.5.0" {
		t.Errorf("verify: %+v, want passed with version_after 2.5.0", r)
	}
	if r := res["download"]; !r.Passed || json.Unmarshal(r.Result, &fig) != nil || fig.VersionBefore != nodeagent.LabFactoryVersion {
		t.Errorf("download: %+v, want passed with version_before %s", r, nodeagent.LabFactoryVersion)
	}

	// The machine keeps its lab device from one task to the next: a
	// second task finds the version the first applied.
	plan.ID = "t-fw2"
	b.add(taskNode(2, plan))
	reps.mu.Lock()
	reps.got = nil
	reps.mu.Unlock()
	if err := m.runTask(ctx, Firmware{}.withDefaults(), net.IPv4(127, 0, 0, 1), base+proto.CallbackPrefix, taskMAC(2).String(), "token-2", "firmware"); err != nil {
		t.Fatalf("second firmware task: %v", err)
	}
	if r := reps.results(taskMAC(2).String())["download"]; json.Unmarshal(r.Result, &fig) != nil || fig.VersionBefore != "2.5.0" {
		t.Errorf("second task's download: %+v, want version_before 2.5.0 (the first task's)", r)
	}
	lab := m.labPath
	if _, err := os.Stat(lab); err != nil {
		t.Fatalf("lab device: %v", err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(lab); !os.IsNotExist(err) {
		t.Errorf("the lab device %s outlived Close: %v", lab, err)
	}
}

// TestTaskRAIDRefused: a program the sim does not simulate (mdadm) fails
// the step, clearly, and the failure is reported.
func TestTaskRAIDRefused(t *testing.T) {
	base, b, reps := taskAgent(t)
	params := map[string]string{"level": "1", "disks": "SSD" + strings.ToUpper(strings.ReplaceAll(taskMAC(3).String(), ":", "")) + ",HDD" +
		strings.ToUpper(strings.ReplaceAll(taskMAC(3).String(), ":", ""))}
	p, err := proto.ParseTaskParams(proto.TaskRAID, params)
	if err != nil {
		t.Fatal(err)
	}
	plan := proto.TaskPlan{ID: "t-raid", Kind: proto.TaskRAID, Params: params}
	for _, s := range proto.TaskSteps(proto.TaskRAID, p) {
		plan.Steps = append(plan.Steps, proto.PlanStep{Name: s.Name, State: s.State})
	}
	b.add(taskNode(3, plan))
	m := &Machine{MAC: taskMAC(3), TaskDir: t.TempDir(), Serial: NewSerial()}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err = m.runTask(ctx, Firmware{}.withDefaults(), net.IPv4(127, 0, 0, 1), base+proto.CallbackPrefix, taskMAC(3).String(), "token-3", "raid")
	if !errors.Is(err, nodeagent.ErrStepFailed) {
		t.Fatalf("raid on a sim = %v, want a failed step", err)
	}
	if r := reps.results(taskMAC(3).String())["raid"]; r.Passed || !strings.Contains(r.Error, "not simulated") {
		t.Errorf("raid result %+v, want failed saying mdadm is not simulated", r)
	}
}

// TestTaskDisk: reads past the backing file are zeros, writes past it
// fail, and a read-only disk refuses writes.
func TestTaskDisk(t *testing.T) {
	tm, err := NewTaskMachine(taskMAC(4), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer tm.Close()
	tm.DiskBytes = 8192
	d, err := tm.OpenDisk("sda", true)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := d.WriteAt([]byte(strings.Repeat("x", 4096)), 4096); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 12288)
	for i := range buf {
		buf[i] = 0xff
	}
	if n, err := d.ReadAt(buf, 0); n != len(buf) || err != nil {
		t.Fatalf("ReadAt = %d, %v", n, err)
	}
	if buf[0] != 0 || buf[4096] != 'x' || buf[8191] != 'x' || buf[8192] != 0 || buf[12287] != 0 {
		t.Errorf("read back %q...: want zeros, the write, zeros", buf[:8])
	}
	if _, err := d.WriteAt([]byte(strings.Repeat("y", 4096)), 8192); err == nil || !strings.Contains(err.Error(), "not simulated") {
		t.Errorf("a write past the backing = %v, want refused", err)
	}
	// Zeros past the backing change nothing: taken.
	if _, err := d.WriteAt(make([]byte, 8192), 4096); err != nil {
		t.Errorf("a write of zeros across the backing's end = %v, want it taken", err)
	}
	if n, err := d.ReadAt(buf, 0); n != len(buf) || err != nil || buf[4096] != 0 || buf[8191] != 0 {
		t.Errorf("after writing zeros: ReadAt = %d, %v, %q..., want zeros", n, err, buf[4096:4100])
	}
	if z, ok := d.(interface{ ZeroRange(off, n int64) error }); !ok {
		t.Error("a sim disk cannot zero a range")
	} else if err := z.ZeroRange(0, 4<<40); err == nil {
		t.Error("zeroing past the disk's end was taken")
	}
	ro, err := tm.OpenDisk("sdb", false)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if _, err := ro.WriteAt(make([]byte, 4096), 0); err == nil {
		t.Error("a read-only disk took a write")
	}
	if _, err := tm.OpenDisk("sdz", false); err == nil {
		t.Error("a disk not in the inventory opened")
	}
	if _, err := tm.Exec(context.Background(), "/sbin/mdadm", nil); err == nil || !strings.Contains(err.Error(), "not simulated") {
		t.Errorf("Exec(mdadm) = %v, want refused", err)
	}
}

// TestTaskBurninHundred: 100 simulated machines run a tiny burn-in at
// once against one agent (each from its own loopback address, as dev
// mode's do) and all pass.
func TestTaskBurninHundred(t *testing.T) {
	if testing.Short() {
		t.Skip("100 burn-ins")
	}
	const machines = 100
	base, b, reps := taskAgent(t)
	for i := range machines {
		b.add(taskNode(100+i, burninPlan(fmt.Sprintf("t-%d", i))))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	start := time.Now()
	errs := make(chan error, machines)
	for i := range machines {
		m := &Machine{MAC: taskMAC(100 + i), TaskDir: t.TempDir(), BindLease: true}
		go func() {
			ip := net.IPv4(127, 0, 2, byte(1+i))
			errs <- m.runTask(ctx, Firmware{}.withDefaults(), ip, base+proto.CallbackPrefix, m.MAC.String(), fmt.Sprintf("token-%d", 100+i), "burnin")
		}()
	}
	failed := 0
	for range machines {
		if err := <-errs; err != nil {
			failed++
			if failed <= 3 {
				t.Errorf("a burn-in failed: %v", err)
			}
		}
	}
	took := time.Since(start)
	passed := 0
	for i := range machines {
		res := reps.results(taskMAC(100 + i).String())
		if len(res) == 4 && res["cpu"].Passed && res["memory"].Passed && res["disk"].Passed && res["network"].Passed {
			passed++
		}
	}
	t.Logf("%d machines: %d burn-ins passed in %s", machines, passed, took.Round(time.Millisecond))
	if passed != machines {
		t.Errorf("%d of %d burn-ins passed every step", passed, machines)
	}
}
