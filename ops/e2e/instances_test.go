//go:build linux

package e2e

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/metalfleet/metalfleet/ops/netlab"
	"github.com/metalfleet/metalfleet/ops/testkit"
	"github.com/metalfleet/metalfleet/proto"
)

// The instance test's VMs: two disks each, the smaller one (the root
// disk: the smallest that fits) first. Their boot device "default" boots
// the disks (DiskBoot).
var (
	instBIOSVM = vmSpec{
		MAC: "52:54:00:e2:e0:31", UUID: "5e2e0a1c-7d3b-4c9e-8f21-e2e000000031",
		Manufacturer: "Metalfleet", Product: "LabVM-Instance", Serial: "E2E-0031",
		MemMiB: 512, CPUs: 1, DiskBoot: true,
		Disks: []vmDisk{{"E2E-ROOT-B", 64 << 20}, {"E2E-DATA-B", 96 << 20}},
	}
	instUEFIVM = vmSpec{
		MAC: "52:54:00:e2:e0:41", UUID: "5e2e0a1c-7d3b-4c9e-8f21-e2e000000041",
		Manufacturer: "Metalfleet", Product: "LabVM-Instance", Serial: "E2E-0041",
		MemMiB: 512, CPUs: 1, DiskBoot: true, UEFI: true,
		Disks: []vmDisk{{"E2E-ROOT-U", 64 << 20}, {"E2E-DATA-U", 96 << 20}},
	}
)

const (
	// instLimit bounds one instance operation that boots a ramdisk
	// (deploy, rescue, delete) from the CLI's start to its end.
	instLimit = 8 * time.Minute
	// defaultImageMiB is the BIOS image's size (raw, not compressed);
	// METALFLEET_E2E_IMAGE_MIB sets another (1024 for BENCHMARKS.md).
	defaultImageMiB = 24
	rescueInst      = "rescue-inst"   // the instance's own rescue image
	rescueFlavor    = "rescue-flavor" // the flavor's
)

// TestInstancesQEMU runs an instance's life on a QEMU VM behind its
// virtual BMC, with the real coordinator, rack agent, CLI and ramdisk, in
// BIOS (SeaBIOS) and UEFI (OVMF) (two labs, one after the other):
//
//   - a disk image the test builds (BIOS: raw, an MBR printing a marker;
//     UEFI: gzip-compressed, a GPT disk with GRUB on its ESP printing a
//     marker) is deployed by `instance create --wait` (BIOS: forced onto
//     the node; UEFI: placed by the scheduler): the smaller of the VM's
//     two disks holds exactly the image's bytes, the VM boots it (the
//     marker on its serial console), the instance is running and the
//     node active with boot config local-disk, and `node show
//     --instance` and `instance list --node` answer;
//   - rescue with the instance's rescue image (with a password: SSH for
//     user rescue), then, the instance's cleared, with the flavor's: the
//     rescue ramdisk reports in, its serial shell (through `node
//     console`) computes $((6*7)); unrescue: the VM boots its disk again,
//     the instance is running with boot config local-disk and no saved
//     boot config, the disk's bytes unchanged;
//   - delete --wait: the node available, the disks' first MiB zero and
//     wipefs finding no signature.
//
// The BIOS lab runs three coordinators and injects a fault into each
// rescue or unrescue: the rack agent killed (SIGKILL, restarted on its
// data dir) while the node boots the first rescue's ramdisk; the VM's
// power cut (QEMU killed, with the BMC held still so that it happens
// before the agent's reboot) during the first unrescue; the coordinator
// leader killed between the second rescue's Raft command (the boot config
// switched, the BMC held still) and the reboot. The UEFI lab runs the
// same cases without faults. Phase times are logged as Markdown tables.
//
// METALFLEET_E2E_INSTANCES=bios or =uefi runs one of the two.
func TestInstancesQEMU(t *testing.T) {
	needBMC(t)
	only := os.Getenv("METALFLEET_E2E_INSTANCES")
	if only != "" && only != "bios" && only != "uefi" {
		t.Fatalf("METALFLEET_E2E_INSTANCES=%q: want bios, uefi or empty (both)", only)
	}
	if only != "bios" {
		e2eNeed(t, map[string]string{ovmfCode: "package ovmf", ovmfVars: "package ovmf"})
		needImageTools(t)
	}
	testStart := time.Now()
	bin := binary(t)
	images := ramdisk(t, t.TempDir())
	needTasks(t, images, bin)
	needInstances(t, images, bin)
	t.Logf("ramdisk BUILD-INFO: %s", strings.ReplaceAll(images.Info, "\n", " "))
	for _, uefi := range []bool{false, true} {
		name := map[bool]string{false: "bios", true: "uefi"}[uefi]
		if only != "" && only != name {
			continue
		}
		// One lab after the other, not in parallel: a child started
		// with Pdeathsig dies when the OS thread that forked it exits,
		// and the vbmc's controller thread (locked, retired when its
		// lab ends) may be one that forked the other lab's processes
		// (seen: the UEFI lab's rack agent killed when the BIOS lab
		// ended).
		t.Run(name, func(t *testing.T) {
			runInstances(t, uefi, bin, images)
		})
	}
	t.Cleanup(func() { t.Logf("TestInstancesQEMU took %.1fs", time.Since(testStart).Seconds()) })
}

// needInstances skips the test (fails it under CI) when the ramdisk has
// no rescue mode or the binary no `instance` command.
func needInstances(t *testing.T, images ramdiskFiles, bin string) {
	t.Helper()
	var missing []string
	if ok, err := ramdiskHas(images.Ramdisk, []byte("metalfleet-rescue# ")); err != nil {
		t.Fatal(err)
	} else if !ok {
		missing = append(missing, "the rescue mode in the ramdisk's nodeagent (its prompt \"metalfleet-rescue# \"; make ramdisk)")
	}
	out, _ := exec.Command(bin, "instance", "rescue", "--help").CombinedOutput()
	if !bytes.Contains(out, []byte("--password-file")) {
		missing = append(missing, "`metalfleet instance rescue` in "+bin)
	}
	if len(missing) == 0 {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("CI is set but the instance test cannot run: missing %s", strings.Join(missing, "; "))
	}
	t.Skipf("needs %s (set CI=true to make this a failure)", strings.Join(missing, "; "))
}

// ramdiskHas reports whether the gzip'd ramdisk holds b anywhere.
func ramdiskHas(file string, b []byte) (bool, error) {
	f, err := os.Open(file)
	if err != nil {
		return false, err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return false, err
	}
	raw, err := io.ReadAll(io.LimitReader(zr, 1<<30))
	if err != nil {
		return false, err
	}
	return bytes.Contains(raw, b), nil
}

// rescueImage is a rescue image named name: the nodeagent ramdisk (its
// rescue mode) with one more cpio archive appended (Linux unpacks them
// all) holding /mf-rescue-image, the name: each rescue image has its own
// bytes (the agent caches artifacts by sha256), and the rescue shell
// shows which one booted.
func rescueImage(t *testing.T, ramdisk, name string) (string, string) {
	t.Helper()
	b, err := os.ReadFile(ramdisk)
	if err != nil {
		t.Fatal(err)
	}
	var raw bytes.Buffer
	w := &cpioWriter{w: &raw}
	w.add("mf-rescue-image", 0o100644, []byte(name+"\n"), 0, 0)
	w.add("TRAILER!!!", 0, nil, 0, 0)
	var z bytes.Buffer
	zw := gzip.NewWriter(&z)
	zw.Write(raw.Bytes())
	zw.Close()
	b = append(b, z.Bytes()...)
	file := filepath.Join(filepath.Dir(ramdisk), name+".cpio.gz")
	if err := os.WriteFile(file, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return file, shaHex(b)
}

// instRun is one lab's instance test.
type instRun struct {
	*oob
	uefi    bool
	fw      string // bios or uefi
	spec    vmSpec
	nodeN   string // the node's name
	inst    string // the instance's name
	flavor  string
	marker  string
	raw     []byte // the image's bytes as written to disk
	rawSHA  string
	image   string // its image name
	coords  []*netlab.Proc
	addrs   []string // their API addresses, coords[i] at addrs[i]
	timings []string
	// markerAt is when checkRunning saw the marker (polled every 100 ms).
	markerAt time.Time
}

func runInstances(t *testing.T, uefi bool, bin string, images ramdiskFiles) {
	r := &instRun{oob: &oob{t: t}, uefi: uefi, fw: map[bool]string{false: "bios", true: "uefi"}[uefi]}
	r.spec = map[bool]vmSpec{false: instBIOSVM, true: instUEFIVM}[uefi]
	imageMiB := defaultImageMiB
	if v := os.Getenv("METALFLEET_E2E_IMAGE_MIB"); v != "" && !uefi {
		if _, err := fmt.Sscan(v, &imageMiB); err != nil || imageMiB < 2 || imageMiB > 4096 {
			t.Fatalf("METALFLEET_E2E_IMAGE_MIB=%q: want a size in MiB, 2 to 4096", v)
		}
	}
	if !uefi {
		// The root disk fits the image with room; the other disk is
		// bigger (the root disk is the smallest that fits).
		root := int64(imageMiB+40) << 20
		r.spec.Disks = []vmDisk{{r.spec.Disks[0].Serial, root}, {r.spec.Disks[1].Serial, root + 32<<20}}
	}
	r.nodeN, r.inst, r.flavor, r.image = "inst-"+r.fw, "vm-"+r.fw, "small-"+r.fw, "disk-"+r.fw
	lap := netlab.Laps(t)
	l := newLab(t, "ra")
	r.l = l
	l.bin, l.images = bin, images
	l.agentArgs = []string{"--power-sync-interval", oobSyncEvery}
	l.startFleet()
	r.coords, r.addrs = []*netlab.Proc{l.coord}, []string{"127.0.0.1:7480"}
	if !uefi {
		r.startPeers(t)
	}
	l.startAgent()
	r.v = newVBMC(t, l, 1, r.spec, "password")
	img := newImageServer(t, l)
	lap(fmt.Sprintf("%s: %d coordinators, rack agent, virtual BMC, image server", r.fw, len(r.coords)))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("--- rack agent log (%s), last lines ---\n%s", l.file("agent.log"), netlab.Tail(l.file("agent.log"), 60))
			for _, c := range r.coords {
				t.Logf("--- %s log (%s), last lines ---\n%s", c.Name, c.LogPath, netlab.Tail(c.LogPath, 30))
			}
		}
	})
	r.secret("good.pw", r.v.Password)
	r.secret("rescue.pw", "rescue-pw-"+r.fw)
	r.mustCLI(t, "settings", "set", "tasks.kernel="+kernelImage, "tasks.ramdisk="+ramdiskImage, "tasks.cmdline="+tasksCmdline)

	// The image: BIOS raw, UEFI gzip-compressed (the ramdisk
	// decompresses it as it streams).
	r.marker = fmt.Sprintf("MF-E2E-DISK-%s-%06d", strings.ToUpper(r.fw), time.Now().UnixNano()%1e6)
	var served []byte
	if uefi {
		r.raw = uefiDiskImage(t, t.TempDir(), r.marker)
		var z bytes.Buffer
		zw := gzip.NewWriter(&z)
		zw.Write(r.raw)
		zw.Close()
		served = z.Bytes()
	} else {
		r.raw = biosDiskImage(r.marker, imageMiB<<20)
		served = r.raw
	}
	r.rawSHA = shaHex(r.raw)
	url, sha := img.add(t, r.image+".img", served)
	r.mustCLI(t, "image", "create", r.image, "--kind", "disk", "--url", url, "--sha256", sha)
	// The rescue images: the nodeagent ramdisk (its rescue mode), under
	// two names so that the test tells which one a rescue booted.
	for _, n := range []string{rescueInst, rescueFlavor} {
		file, sha := rescueImage(t, images.Ramdisk, n)
		r.mustCLI(t, "image", "create", n, "--kind", "ramdisk", "--url", "file://"+file, "--sha256", sha)
	}
	r.mustCLI(t, "flavor", "create", r.flavor, "--rack", "r1", "--rescue-image", rescueFlavor)
	t.Logf("%s image %s: %d bytes on disk, %d served (%s), sha256 of the disk bytes %s", r.fw, r.image, len(r.raw), len(served),
		map[bool]string{false: "raw", true: "gzip"}[uefi], r.rawSHA)

	for _, step := range []struct {
		name string
		run  func(*testing.T)
	}{
		{"available", r.available},
		{"deploy", r.deploy},
		{"rescue (instance's image)", r.rescueInstanceImage},
		{"unrescue", r.unrescueFirst},
		{"rescue (flavor's image)", r.rescueFlavorImage},
		{"unrescue again", r.unrescueSecond},
		{"delete", r.delete},
	} {
		if !t.Run(step.name, step.run) {
			t.Fatalf("step %q failed: the steps after it need it", step.name)
		}
		lap(r.fw + ": " + step.name)
	}
	t.Logf("%s timings (for BENCHMARKS.md):\n%s", r.fw, strings.Join(r.timings, "\n"))
}

func shaHex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// lastTask is the node's latest task of kind (GET /v1/nodes/{id}/tasks).
func (r *instRun) lastTask(t *testing.T, kind proto.TaskKind) (proto.Task, bool) {
	t.Helper()
	var list []proto.Task
	if _, err := r.l.call("GET", "/v1/nodes/"+r.node+"/tasks", nil, &list); err != nil {
		t.Errorf("GET tasks: %v", err)
		return proto.Task{}, false
	}
	var last proto.Task
	for _, x := range list {
		if x.Kind == kind && x.CreatedAt.After(last.CreatedAt) {
			last = x
		}
	}
	if last.ID == "" {
		return last, false
	}
	full, err := r.getTask(last.ID)
	if err != nil {
		t.Errorf("task %s: %v", last.ID, err)
		return last, false
	}
	return full, true
}

// getTask reads a task of the node from the API.
func (r *instRun) getTask(id string) (proto.Task, error) {
	var task proto.Task
	_, err := r.l.call("GET", "/v1/nodes/"+r.node+"/tasks/"+id, nil, &task)
	return task, err
}

// startPeers starts two more coordinators that join the first (three
// voters), and points the agent at all three.
func (r *instRun) startPeers(t *testing.T) {
	l := r.l
	token := filepath.Join(l.dir, "coord", "admin.token")
	for i, id := range []string{"c2", "c3"} {
		http, raft := fmt.Sprintf("127.0.0.1:%d", 7482+2*i), fmt.Sprintf("127.0.0.1:%d", 7483+2*i)
		p := netlab.Start(t, "coordinator "+id, l.NS, l.file("coordinator-"+id+".log"), l.bin, "coordinator",
			"--node-id", id, "--data-dir", l.file("coord-"+id), "--join", "http://127.0.0.1:7480", "--token-file", token,
			"--http-addr", http, "--raft-addr", raft,
			"--raft-heartbeat-timeout", "300ms", "--raft-election-timeout", "300ms", "--raft-leader-lease", "150ms")
		r.coords, r.addrs = append(r.coords, p), append(r.addrs, http)
	}
	testkit.Until(t, 60*time.Second, "three voters that know each other", func() error {
		for i := range r.coords {
			st, err := r.status(r.addrs[i])
			if err != nil {
				return err
			}
			voters := 0
			for _, p := range st.Peers {
				if p.Suffrage == "voter" && p.HTTPAddr != "" {
					voters++
				}
			}
			if voters != 3 || st.LeaderID == "" {
				return fmt.Errorf("%s: %d voters with an API address, leader %q", r.addrs[i], voters, st.LeaderID)
			}
		}
		return nil
	})
	l.coordAddrs = strings.Join(r.addrs, ",")
}

// status is GET /v1/status of the server at addr.
func (r *instRun) status(addr string) (proto.Status, error) {
	saved := r.l.apiAddr
	r.l.apiAddr = addr
	defer func() { r.l.apiAddr = saved }()
	var st proto.Status
	_, err := r.l.call("GET", "/v1/status", nil, &st)
	return st, err
}

// leader is the index of the leading server (of those running).
func (r *instRun) leader(t *testing.T) int {
	t.Helper()
	li := -1
	testkit.Until(t, 30*time.Second, "a leader", func() error {
		for i, c := range r.coords {
			if !c.Running() {
				continue
			}
			if st, err := r.status(r.addrs[i]); err == nil && st.RaftState == "leader" {
				li = i
				return nil
			}
		}
		return fmt.Errorf("no server says it leads")
	})
	return li
}

// cliLong runs the CLI with a longer bound than cli's.
func (r *instRun) cliLong(t *testing.T, limit time.Duration, args ...string) (string, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", r.l.NS, r.l.bin}, args...)...)
	cmd.Env = append(os.Environ(), "METALFLEET_TOKEN="+r.l.adminToken, "METALFLEET_ADDR="+r.l.addr())
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("metalfleet %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), stderr.String(), err
}

// instance is `instance show NAME -o json`.
func (r *instRun) instance(t *testing.T) proto.Instance {
	t.Helper()
	var in proto.Instance
	out := r.mustCLI(t, "instance", "show", r.inst, "-o", "json")
	if err := json.Unmarshal([]byte(out), &in); err != nil {
		t.Fatalf("instance show -o json: %v\n%s", err, out)
	}
	return in
}

// available creates the VM's node, manages it (the BMC verified) and
// provides it.
func (r *instRun) available(t *testing.T) {
	n := r.createNode(t, r.nodeN, r.spec.MAC, "good.pw", proto.IPMILanplus)
	r.node = n.UUID
	r.mustCLI(t, "node", "provision", r.nodeN, "manage")
	got := r.waitNode(t, 90*time.Second, "the node to be manageable", func(n proto.Node) bool {
		return n.ProvisionState == proto.StateManageable
	})
	if got.BMCStatus == nil || got.BMCStatus.State != proto.BMCOK {
		t.Fatalf("manageable without a verified BMC: %+v", got.BMCStatus)
	}
	r.mustCLI(t, "node", "provision", r.nodeN, "provide")
	r.waitNode(t, 60*time.Second, "the node to be available", func(n proto.Node) bool {
		return n.ProvisionState == proto.StateAvailable
	})
}

// deploy: instance create --wait; the disk holds the image, the VM boots
// it, the instance is running, the node active; lookups answer.
func (r *instRun) deploy(t *testing.T) {
	args := []string{"instance", "create", r.inst, "--flavor", r.flavor, "--image", r.image, "--rescue-image", rescueInst, "--wait", "--timeout", "20m", "-o", "json"}
	if !r.uefi {
		args = append(args, "--node", r.nodeN) // forced; UEFI: the scheduler's choice
	}
	markers := r.v.SerialCount(r.marker)
	start := time.Now()
	out, stderr, err := r.cliLong(t, instLimit, args...)
	done := time.Now()
	if err != nil {
		t.Fatalf("%v\nstdout: %s", err, out)
	}
	t.Logf("instance create --wait: %.1fs; stderr: %s", done.Sub(start).Seconds(), strings.TrimSpace(stderr))
	var in proto.Instance
	if err := json.Unmarshal([]byte(out), &in); err != nil {
		t.Fatalf("instance create -o json: %v\n%s", err, out)
	}
	if in.State != proto.InstanceRunning || in.Node != r.node || in.LastError != "" {
		t.Errorf("instance create --wait returned state %s node %s last_error %q, want running on %s", in.State, in.Node, in.LastError, r.node)
	}
	if in.Forced == r.uefi {
		t.Errorf("instance forced %v, want %v (%s)", in.Forced, !r.uefi, map[bool]string{false: "--node", true: "scheduled"}[r.uefi])
	}
	r.checkRunning(t, markers, "deploy")
	// The image on the root disk (the smaller: the smallest that fits),
	// nothing on the other.
	root, other := r.spec.Disks[0], r.spec.Disks[1]
	if got, err := fileSHA(r.v.DiskFile(root.Serial), int64(len(r.raw))); err != nil || got != r.rawSHA {
		t.Errorf("disk %s: sha256 of its first %d bytes %s (%v), want the image's %s", root.Serial, len(r.raw), got, err, r.rawSHA)
	}
	if at, err := nonZero(r.v.DiskFile(other.Serial), 0, 1<<20); err != nil || at >= 0 {
		t.Errorf("disk %s (not the root disk) was written: first MiB non-zero at %d (%v)", other.Serial, at, err)
	}
	// Lookups: node show --instance, instance list --node.
	var n proto.Node
	if err := json.Unmarshal([]byte(r.mustCLI(t, "node", "show", "--instance", r.inst, "-o", "json")), &n); err != nil || n.UUID != r.node {
		t.Errorf("node show --instance %s: node %q (%v), want %s", r.inst, n.UUID, err, r.node)
	}
	var list []proto.Instance
	if err := json.Unmarshal([]byte(r.mustCLI(t, "instance", "list", "--node", r.nodeN, "-o", "json")), &list); err != nil ||
		len(list) != 1 || list[0].Name != r.inst {
		t.Errorf("instance list --node %s: %+v (%v), want [%s]", r.nodeN, list, err, r.inst)
	}
	r.deployPhases(t, start, done)
}

// checkRunning: the instance running, the node active with boot config
// local-disk and nothing saved, no task; the VM on, booted from its disk
// (boot device default), the marker on its console once more than
// before (markers).
func (r *instRun) checkRunning(t *testing.T, markers int, after string) {
	t.Helper()
	in := r.instance(t)
	if in.State != proto.InstanceRunning || in.LastError != "" || in.Node != r.node {
		t.Errorf("after %s: instance %s, node %s, last_error %q; want running on %s", after, in.State, in.Node, in.LastError, r.node)
	}
	n := r.getNode(t, r.node)
	if n.ProvisionState != proto.StateActive || n.InstanceUUID != in.UUID {
		t.Errorf("after %s: node %s, instance_uuid %q; want active with %s", after, n.ProvisionState, n.InstanceUUID, in.UUID)
	}
	if n.Boot == nil || n.Boot.Kind != proto.BootLocalDisk || n.SavedBoot != nil || n.Task != "" {
		t.Errorf("after %s: node boot %+v saved_boot %+v task %q; want boot local-disk, nothing saved, no task", after, n.Boot, n.SavedBoot, n.Task)
	}
	testkit.EventuallyEvery(t, 3*time.Minute, 100*time.Millisecond, "the image's marker on the VM's console after "+after, func() bool {
		return r.v.SerialCount(r.marker) > markers
	})
	r.markerAt = time.Now()
	if !r.v.On() {
		t.Errorf("after %s: the VM is off", after)
	}
	if s := r.v.Starts(); len(s) == 0 || s[len(s)-1].Boot != bootDefault {
		t.Errorf("after %s: the VM's last start booted %+v, want the default device (its disks)", after, s[len(s)-1:])
	}
	if got, err := fileSHA(r.v.DiskFile(r.spec.Disks[0].Serial), int64(len(r.raw))); err != nil || got != r.rawSHA {
		t.Errorf("after %s: the root disk's first %d bytes: sha256 %s (%v), want the image's %s", after, len(r.raw), got, err, r.rawSHA)
	}
}

// deployPhases logs the deploy by phase, from the task, the VM's starts,
// the agent's log and the console.
func (r *instRun) deployPhases(t *testing.T, start, done time.Time) {
	task, ok := r.lastTask(t, proto.TaskDeploy)
	if !ok {
		t.Errorf("the node's tasks hold no deploy task")
		return
	}
	var write proto.Step
	for _, s := range task.Steps {
		if s.Name == proto.StepNameWrite {
			write = s
		}
	}
	var res struct {
		Disk, Serial, Format string
		Bytes                int64
		SHA256               string
		WriteMB              float64 `json:"write_mb_per_sec"`
		VerifyMB             float64 `json:"verify_mb_per_sec"`
	}
	_ = json.Unmarshal(write.Result, &res)
	t.Logf("deploy write step: %s", write.Result)
	if res.Serial != r.spec.Disks[0].Serial || res.Bytes != int64(len(r.raw)) || res.SHA256 != r.rawSHA {
		t.Errorf("deploy write result: disk %s serial %s %d bytes sha256 %s; want serial %s, %d bytes, %s", res.Disk, res.Serial, res.Bytes, res.SHA256,
			r.spec.Disks[0].Serial, len(r.raw), r.rawSHA)
	}
	var pxe, disk time.Time
	for _, s := range r.v.Starts() {
		if s.At.Before(start) {
			continue
		}
		if s.Boot == bootPXE && pxe.IsZero() {
			pxe = s.At
		}
		if s.Boot == bootDefault && disk.IsZero() && !pxe.IsZero() {
			disk = s.At
		}
	}
	b := &bootRecord{PowerOn: pxe}
	lines := readAgentLog(r.l.file("agent.log"))
	b.scan(lines, r.spec.MAC, r.node)
	var plan time.Time
	for _, l := range lines {
		if l.Msg == "task plan served" && l.Node == r.node && l.Time.After(pxe) {
			plan = l.Time
			break
		}
	}
	writeSecs, verifySecs := 0.0, 0.0
	if res.WriteMB > 0 {
		writeSecs = float64(res.Bytes) / 1e6 / res.WriteMB
	}
	if res.VerifyMB > 0 {
		verifySecs = float64(res.Bytes) / 1e6 / res.VerifyMB
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "deploy, %s, %d MiB image (%s), QEMU TCG 1 vCPU, 2 host cores shared\n\n| phase | from -> to | seconds |\n|---|---|---:|\n",
		r.fw, len(r.raw)>>20, res.Format)
	row := func(phase, span string, from, to time.Time) {
		if from.IsZero() || to.IsZero() {
			fmt.Fprintf(&sb, "| %s | %s | - |\n", phase, span)
			return
		}
		fmt.Fprintf(&sb, "| %s | %s | %.2f |\n", phase, span, to.Sub(from).Seconds())
	}
	row("request", "CLI started -> deploy task recorded", start, task.CreatedAt)
	row("power cycle", "task recorded -> QEMU started by the BMC (pxe)", task.CreatedAt, pxe)
	row("  boot: firmware to script", "QEMU started -> boot script served", pxe, b.Script)
	row("  boot: kernel, initrd, Linux, DHCP", "boot script -> the ramdisk's DHCP lease", b.Script, b.RamdiskLease)
	row("  boot: plan", "ramdisk's lease -> task plan served", b.RamdiskLease, plan)
	row("boot", "QEMU started -> write step started", pxe, write.StartedAt)
	row("write + verify", "write step started -> ended", write.StartedAt, write.EndedAt)
	fmt.Fprintf(&sb, "|   write | %d bytes at %.1f MB/s | %.2f |\n", res.Bytes, res.WriteMB, writeSecs)
	fmt.Fprintf(&sb, "|   verify (read back) | at %.1f MB/s | %.2f |\n", res.VerifyMB, verifySecs)
	row("reboot to disk", "write step ended -> QEMU started from the disk", write.EndedAt, disk)
	row("total", "CLI started -> instance running (CLI returned)", start, done)
	row("disk boot", "QEMU started from the disk -> the image's marker on the console (polled)", disk, r.markerAt)
	r.timings = append(r.timings, sb.String())
	t.Log(sb.String())
}

// rescueCLI is a `metalfleet instance rescue|unrescue ... --wait -o json`
// running in the background.
type rescueCLI struct {
	args           []string
	stdout, stderr testkit.SyncBuffer
	done           chan struct{}
	err            error
	started, ended time.Time
}

func (r *instRun) startCLI(t *testing.T, args ...string) *rescueCLI {
	t.Helper()
	c := &rescueCLI{args: args, done: make(chan struct{})}
	cmd := exec.Command("ip", append([]string{"netns", "exec", r.l.NS, r.l.bin}, args...)...)
	cmd.Env = append(os.Environ(), "METALFLEET_TOKEN="+r.l.adminToken, "METALFLEET_ADDR="+r.l.addr())
	cmd.Stdout, cmd.Stderr = &c.stdout, &c.stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	c.started = time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("metalfleet %s: %v", strings.Join(args, " "), err)
	}
	go func() {
		c.err = cmd.Wait()
		c.ended = time.Now()
		close(c.done)
	}()
	t.Cleanup(func() {
		select {
		case <-c.done:
		default:
			_ = cmd.Process.Kill()
			<-c.done
		}
	})
	return c
}

// wait waits for the CLI and parses its JSON instance.
func (c *rescueCLI) wait(t *testing.T, limit time.Duration) proto.Instance {
	t.Helper()
	select {
	case <-c.done:
	case <-time.After(limit):
		t.Fatalf("metalfleet %s still runs after %s; stderr: %s", strings.Join(c.args, " "), limit, c.stderr.String())
	}
	if c.err != nil {
		t.Fatalf("metalfleet %s: %v: %s\nstdout: %s", strings.Join(c.args, " "), c.err, c.stderr.String(), c.stdout.String())
	}
	var in proto.Instance
	if err := json.Unmarshal([]byte(c.stdout.String()), &in); err != nil {
		t.Fatalf("metalfleet %s -o json: %v\n%s", strings.Join(c.args, " "), err, c.stdout.String())
	}
	return in
}

// rescueTask is the rescue task running for the instance (its id from
// the instance while it rescues, or the node's task).
func (r *instRun) rescueTask(t *testing.T) proto.Task {
	t.Helper()
	n := r.getNode(t, r.node)
	id := n.Task
	if id == "" {
		id = r.instance(t).Task
	}
	if id == "" {
		t.Fatalf("the node runs no task and the instance names none (node %s)", n.ProvisionState)
	}
	task, err := r.getTask(id)
	if err != nil {
		t.Fatal(err)
	}
	return task
}

// checkRescue: the instance in rescue, the node too, booting the rescue
// image with the local-disk boot config saved; the rescue task's image
// is image; the serial shell answers; with password, SSH too. It returns
// the rescue step's result.
func (r *instRun) checkRescue(t *testing.T, in proto.Instance, image, password string) {
	t.Helper()
	if in.State != proto.InstanceRescue {
		t.Errorf("instance rescue --wait returned state %s (last_error %q), want rescue", in.State, in.LastError)
	}
	n := r.getNode(t, r.node)
	if n.ProvisionState != proto.StateRescue {
		t.Errorf("node %s in rescue, want provision_state rescue", n.ProvisionState)
	}
	if n.SavedBoot == nil || n.SavedBoot.Boot == nil || n.SavedBoot.Boot.Kind != proto.BootLocalDisk {
		t.Errorf("in rescue: saved_boot %+v, want the local-disk boot config", n.SavedBoot)
	}
	if n.Boot == nil || n.Boot.Initrd == nil || n.Boot.Initrd.Name != image {
		t.Errorf("in rescue: node boot %+v, want the rescue image %s as its initrd", n.Boot, image)
	}
	task := r.rescueTask(t)
	if task.Kind != proto.TaskRescue || task.Params["image"] != image {
		t.Errorf("rescue task %s: kind %s image %q, want rescue with image %s", task.ID, task.Kind, task.Params["image"], image)
	}
	if password != "" && strings.Contains(fmt.Sprint(task.Params), password) {
		t.Errorf("the rescue task's params hold the password")
	}
	var step proto.Step
	for _, s := range task.Steps {
		if s.Name == proto.StepNameRescue {
			step = s
		}
	}
	t.Logf("rescue task %s step %s %s: %s", task.ID, step.Name, step.State, step.Result)
	var res struct {
		SerialShell bool   `json:"serial_shell"`
		SSH         string `json:"ssh"`
	}
	_ = json.Unmarshal(step.Result, &res)
	if step.State != proto.StepPassed || !res.SerialShell {
		t.Errorf("rescue step %s, result %s: want passed with serial_shell", step.State, step.Result)
	}
	// The serial shell, through the BMC's SOL and `node console`.
	line, want := "echo RESCUE-$((6*7)) $(cat /mf-rescue-image)", "RESCUE-42 "+image
	// Polled for up to 90 s (ipmi_sim connects about every 10 s); not
	// connected by then is not a failure of Metalfleet (see below).
	solAt := time.Now()
	sol := r.v.SOLConnected()
	tick := time.NewTicker(100 * time.Millisecond)
	for !sol && time.Since(solAt) < 90*time.Second {
		<-tick.C
		sol = r.v.SOLConnected()
	}
	tick.Stop()
	if sol {
		c := r.openConsole(t)
		typeUntil(t, c, line, want)
		// The prompt after the answer (the one before it may have been
		// printed before the console was attached).
		testkit.Eventually(t, 20*time.Second, "the rescue shell's prompt \"metalfleet-rescue# \" after its answer", func() bool {
			_, after, _ := strings.Cut(c.out(), want)
			return strings.Contains(after, "metalfleet-rescue# ")
		})
		c.end(t)
		t.Logf("rescue serial shell answered through node console (SOL)")
	} else {
		// The lab's BMC at fault, not Metalfleet: its serial port is free,
		// so the test types into it itself.
		t.Logf("note: ipmi_sim did not connect SOL to the VM's serial port in 90s (the lab's BMC); typing into QEMU's serial port directly")
		r.serialType(t, line, want)
		t.Logf("rescue serial shell answered on QEMU's serial port")
	}
	if password == "" {
		if res.SSH != "" {
			t.Errorf("rescue without a password or key runs an SSH server on %s", res.SSH)
		}
		return
	}
	if res.SSH == "" {
		t.Errorf("rescue with --password-file: no SSH server in the step's result %s", step.Result)
		return
	}
	out, err := r.sshRun(res.SSH, password, "echo SSH-$((6*7)); id -u")
	if err != nil || !strings.Contains(out, "SSH-42") {
		t.Errorf("ssh rescue@%s: %q, %v; want SSH-42", res.SSH, out, err)
	} else {
		t.Logf("ssh rescue@%s ran a command: %q", res.SSH, strings.TrimSpace(out))
	}
	r.ddRate(t, res.SSH, password)
	if _, err := r.sshRun(res.SSH, password+"-wrong", "true"); err == nil {
		t.Errorf("ssh rescue@%s let a wrong password in", res.SSH)
	}
}

// openConsole opens `node console NODE --force`. A BMC may refuse SOL
// while a session of a rack agent killed earlier is still active there
// ("Payload already active on another session"): tried again every 5 s
// for up to 3 minutes, the refusals logged.
func (r *instRun) openConsole(t *testing.T) *consoleProc {
	t.Helper()
	var c *consoleProc
	start := time.Now()
	refusals := 0
	var last string
	testkit.Until(t, 3*time.Minute, "node console to open (not refused by the BMC)", func() error {
		if c != nil && c.running() {
			return nil
		}
		if c != nil {
			refusals++
			last = strings.TrimSpace(c.stderr.String())
		}
		c = r.startConsoleOn(t, r.nodeN, fmt.Sprintf("rescue-%s-%d", r.fw, refusals), "--force")
		select {
		case <-c.done:
			return fmt.Errorf("node console exited: %v: %s", c.err, strings.TrimSpace(c.stderr.String()))
		case <-time.After(5 * time.Second):
			return nil
		}
	})
	if refusals > 0 {
		t.Logf("node console was refused %d times over %.1fs before it opened; last: %s", refusals, time.Since(start).Seconds(), last)
	}
	return c
}

// ddRate measures, over SSH in the rescue ramdisk, the raw write rate of
// the VM's other disk (the same kind of disk as the root disk, which a
// rescue must not write): busybox dd of as many zeros as the image has
// bytes, O_DIRECT and fsync'd, in 4 MiB blocks (the deploy's block).
func (r *instRun) ddRate(t *testing.T, addr, password string) {
	t.Helper()
	serial := r.spec.Disks[1].Serial
	n := (len(r.raw) + 4<<20 - 1) / (4 << 20)
	cmd := fmt.Sprintf(`for d in /sys/block/vd*; do [ "$(cat $d/serial)" = %s ] && dev=/dev/${d##*/}; done; `+
		`echo disk=$dev; a=$(cut -d" " -f1 /proc/uptime); busybox dd if=/dev/zero of=$dev bs=4M count=%d oflag=direct conv=fsync 2>&1; `+
		`b=$(cut -d" " -f1 /proc/uptime); echo uptime $a $b`, serial, n)
	out, err := r.sshRun(addr, password, cmd)
	if err != nil {
		t.Logf("dd in the rescue ramdisk: %v: %s", err, out)
		return
	}
	bytesN := int64(n) << 22
	var secs float64
	if m := regexp.MustCompile(`(?m)^uptime ([0-9.]+) ([0-9.]+)$`).FindStringSubmatch(out); m != nil && strings.Contains(out, fmt.Sprintf("%d+0 records out", n)) {
		var a, b float64
		fmt.Sscan(m[1], &a)
		fmt.Sscan(m[2], &b)
		secs = b - a
	}
	if secs <= 0 {
		t.Logf("dd in the rescue ramdisk: no rate in its output: %q", out)
		return
	}
	line := fmt.Sprintf("| %s | raw write, busybox dd bs=4M oflag=direct conv=fsync of zeros to disk %s in the rescue ramdisk | %d bytes in %.2fs | %.1f MB/s |",
		r.fw, serial, bytesN, secs, float64(bytesN)/1e6/secs)
	r.timings = append(r.timings, line)
	t.Logf("%s\n%s", line, strings.TrimSpace(out))
}

// serialType types line into the VM's serial port (QEMU's chardev
// server, when ipmi_sim's SOL does not hold it) until want comes back;
// it returns what it read.
func (r *instRun) serialType(t *testing.T, line, want string) string {
	t.Helper()
	conn, err := netlab.Dialer(r.l.NS)(context.Background(), "tcp", fmt.Sprintf("127.0.0.1:%d", r.v.serialPort))
	if err != nil {
		t.Fatalf("the VM's serial port: %v", err)
	}
	defer conn.Close()
	var out testkit.SyncBuffer
	go func() { _, _ = io.Copy(&out, conn) }()
	var typed time.Time
	testkit.EventuallyEvery(t, 60*time.Second, 50*time.Millisecond, fmt.Sprintf("%q typed into the serial port to print %q, then the prompt", line, want), func() bool {
		if _, after, ok := strings.Cut(cleanConsole([]byte(out.String())), want); ok {
			return strings.Contains(after, "metalfleet-rescue# ")
		}
		if time.Since(typed) > 5*time.Second {
			_, _ = io.WriteString(conn, line+"\r")
			typed = time.Now()
		}
		return false
	})
	return cleanConsole([]byte(out.String()))
}

// sshRun runs command over SSH as user rescue with password, from inside
// the lab's namespace (the VM's network).
func (r *instRun) sshRun(addr, password, command string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := netlab.Dialer(r.l.NS)(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	cc, chans, reqs, err := ssh.NewClientConn(conn, addr, &ssh.ClientConfig{User: "rescue", Auth: []ssh.AuthMethod{ssh.Password(password)},
		HostKeyCallback: ssh.InsecureIgnoreHostKey(), Timeout: 20 * time.Second})
	if err != nil {
		return "", err
	}
	client := ssh.NewClient(cc, chans, reqs)
	defer client.Close()
	s, err := client.NewSession()
	if err != nil {
		return "", err
	}
	defer s.Close()
	out, err := s.CombinedOutput(command)
	return string(out), err
}

// rescueInstanceImage rescues with the instance's rescue image and a
// password. BIOS: the rack agent is killed while the node boots the
// rescue ramdisk (once the agent served its initrd), and started again on
// its data dir.
func (r *instRun) rescueInstanceImage(t *testing.T) {
	pw := "rescue-pw-" + r.fw
	var from int64
	if fi, err := os.Stat(r.v.Serial); err == nil {
		from = fi.Size()
	}
	c := r.startCLI(t, "instance", "rescue", r.inst, "--password-file", filepath.Join(r.dir, "rescue.pw"), "--wait", "--timeout", "20m", "-o", "json")
	if !r.uefi {
		// Killed once Linux runs the rescue ramdisk's /init (the kernel
		// and initrd fetched: a fetch cut by the kill fails the iPXE
		// boot for good, see the report), and kept down until the
		// ramdisk brings its interface up for DHCP: its first
		// DHCPDISCOVER finds no agent; the lease, the plan and the
		// report come from the agent started again.
		waitConsole := func(what, re string) time.Time {
			rx := regexp.MustCompile(re)
			testkit.EventuallyEvery(t, 4*time.Minute, 50*time.Millisecond, what, func() bool {
				if !c.running() {
					t.Fatalf("instance rescue exited (%v) before %s: %s", c.err, what, c.stderr.String())
				}
				b, _ := readFrom(r.v.Serial, from)
				return rx.MatchString(cleanConsole(b))
			})
			return time.Now()
		}
		initAt := waitConsole("the rescue ramdisk's /init to run (console)", markInit)
		if err := r.l.agent.Stop(syscall.SIGKILL, 10*time.Second); err != nil {
			t.Logf("agent stop: %v", err)
		}
		killed := time.Now()
		t.Logf("fault: rack agent killed (SIGKILL) %.1fs after instance rescue, as the rescue ramdisk's /init runs", killed.Sub(c.started).Seconds())
		waitConsole("the rescue ramdisk to bring its interface up for DHCP (console)", `msg=interface app=nodeagent`)
		r.l.startAgent()
		t.Logf("rack agent started again on its data dir %.1fs after the kill (%.1fs after /init)", time.Since(killed).Seconds(), time.Since(initAt).Seconds())
	}
	in := c.wait(t, instLimit)
	r.rescueTiming(t, "rescue (instance's image, password)"+map[bool]string{false: ", rack agent killed during the rescue boot", true: ""}[r.uefi], c)
	r.checkRescue(t, in, rescueInst, pw)
}

func (c *rescueCLI) running() bool {
	select {
	case <-c.done:
		return false
	default:
		return true
	}
}

// rescueTiming logs the time from the CLI's start to its return, with
// the VM's start between.
func (r *instRun) rescueTiming(t *testing.T, what string, c *rescueCLI) {
	var vmStart time.Time
	var boot string
	for _, s := range r.v.Starts() {
		if s.At.After(c.started) {
			vmStart, boot = s.At, s.Boot
		}
	}
	line := fmt.Sprintf("| %s | %s | %.2f | %s |", r.fw, what, c.ended.Sub(c.started).Seconds(),
		map[bool]string{true: fmt.Sprintf("VM last started %.2fs in (boot %s)", vmStart.Sub(c.started).Seconds(), boot), false: "-"}[!vmStart.IsZero()])
	r.timings = append(r.timings, line)
	t.Logf("timing (firmware | operation | seconds CLI --wait | note): %s", line)
}

// unrescueFirst: unrescue; BIOS: the VM's power is cut behind
// Metalfleet's back during it (QEMU killed while the BMC is held still,
// so before the agent's reboot reaches it): the agent's reboot powers it
// on, into its disk.
func (r *instRun) unrescueFirst(t *testing.T) {
	r.unrescue(t, !r.uefi)
}

func (r *instRun) unrescueSecond(t *testing.T) {
	r.unrescue(t, false)
}

func (r *instRun) unrescue(t *testing.T, cutPower bool) {
	markers := r.v.SerialCount(r.marker)
	var cont func()
	if cutPower {
		cont = r.holdBMC(t)
	}
	c := r.startCLI(t, "instance", "unrescue", r.inst, "--wait", "--timeout", "20m", "-o", "json")
	what := "unrescue"
	if cutPower {
		testkit.Until(t, time.Minute, "the instance to be unrescuing", func() error {
			var in proto.Instance
			if _, err := r.l.call("GET", "/v1/instances/"+r.inst, nil, &in); err != nil {
				return err
			}
			if in.State != proto.InstanceUnrescuing {
				return fmt.Errorf("instance %s", in.State)
			}
			return nil
		})
		r.v.KillBehindBack()
		t.Logf("fault: the VM's power cut (QEMU killed) %.1fs into the unrescue, before the agent's reboot (BMC held)", time.Since(c.started).Seconds())
		cont()
		what = "unrescue, power cut during it"
	}
	in := c.wait(t, instLimit)
	if in.State != proto.InstanceRunning {
		t.Errorf("instance unrescue --wait returned %s (last_error %q), want running", in.State, in.LastError)
	}
	r.checkRunning(t, markers, what)
	r.rescueTiming(t, fmt.Sprintf("%s (the marker on the console %.2fs after the CLI started)", what, r.markerAt.Sub(c.started).Seconds()), c)
}

// holdBMC stops ipmi_sim (SIGSTOP) so that no BMC call the agent makes
// can complete; the returned func lets it go on (SIGCONT), once (also at
// the test's end).
func (r *instRun) holdBMC(t *testing.T) func() {
	pid := r.v.sim.Cmd.Process.Pid
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	testkit.Until(t, 10*time.Second, "ipmi_sim stopped (state T)", func() error {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return err
		}
		if f := strings.Fields(string(b)); len(f) < 3 || f[2] != "T" {
			return fmt.Errorf("/proc/%d/stat: %.60s", pid, b)
		}
		return nil
	})
	held := true
	cont := func() {
		if held {
			_ = syscall.Kill(pid, syscall.SIGCONT)
			held = false
		}
	}
	t.Cleanup(cont)
	return cont
}

// rescueFlavorImage clears the instance's rescue image and rescues with
// the flavor's, without a password (the serial shell only). BIOS: the
// coordinator leader is killed right after the Raft command that
// switched the boot config, while the BMC is held so that the boot
// device and reboot intents cannot be done yet.
func (r *instRun) rescueFlavorImage(t *testing.T) {
	r.mustCLI(t, "instance", "set", r.inst, "--rescue-image", "")
	if in := r.instance(t); in.RescueImage != "" {
		t.Fatalf("instance set --rescue-image \"\": rescue_image still %q", in.RescueImage)
	}
	if r.uefi {
		c := r.startCLI(t, "instance", "rescue", r.inst, "--wait", "--timeout", "20m", "-o", "json")
		in := c.wait(t, instLimit)
		r.rescueTiming(t, "rescue (flavor's image)", c)
		r.checkRescue(t, in, rescueFlavor, "")
		return
	}
	// Talk to a follower: the leader is about to die.
	li := r.leader(t)
	r.l.apiAddr = r.addrs[(li+1)%len(r.addrs)]
	t.Logf("leader %s (%s); the test and the CLI talk to %s", r.coords[li].Name, r.addrs[li], r.l.apiAddr)
	before := r.getNode(t, r.node).BMCGeneration
	cont := r.holdBMC(t)
	c := r.startCLI(t, "instance", "rescue", r.inst, "--wait", "--timeout", "20m", "-o", "json")
	var n proto.Node
	testkit.Until(t, time.Minute, "the rescue's boot config switch (the node rescuing)", func() error {
		n = proto.Node{} // decoded afresh: omitted fields must not keep an earlier poll's values
		if _, err := r.l.call("GET", "/v1/nodes/"+r.node, nil, &n); err != nil {
			return err
		}
		if n.ProvisionState != proto.StateRescuing || n.BMCGeneration <= before {
			return fmt.Errorf("node %s generation %d", n.ProvisionState, n.BMCGeneration)
		}
		return nil
	})
	var pending []string
	for _, x := range n.Intents {
		if x.Generation > before {
			pending = append(pending, fmt.Sprintf("%s gen %d at %s done %v (done_at %s)", x.Action, x.Generation,
				x.At.Format("15:04:05.000"), x.Done, x.DoneAt.Format("15:04:05.000")))
		}
	}
	killed := time.Now()
	_ = r.coords[li].Stop(syscall.SIGKILL, 10*time.Second)
	t.Logf("fault: leader %s killed (SIGKILL) at %s, %.2fs after instance rescue; the rescue's intents as the follower showed them: %s",
		r.coords[li].Name, killed.Format("15:04:05.000"), killed.Sub(c.started).Seconds(), strings.Join(pending, "; "))
	// What the BMC did: nothing of the rescue's until it was let go.
	if ops := r.v.Ops(c.started, "set"); len(ops) > 0 {
		t.Errorf("the BMC acted before the leader was killed (it was held): %+v", ops)
	}
	cont()
	t.Logf("BMC let go at %s", time.Now().Format("15:04:05.000"))
	nl := r.leader(t)
	t.Logf("new leader %s %.1fs after the kill", r.coords[nl].Name, time.Since(killed).Seconds())
	in := c.wait(t, instLimit)
	for _, o := range r.v.Ops(c.started, "set") {
		t.Logf("BMC chassis_control after the rescue: %s %s", o.At.Format("15:04:05.000"), o.Args)
	}
	// The intents' record from the unrescue before to now (the node's
	// history), for a reader of this log.
	var hist []proto.HistoryEvent
	if _, err := r.l.call("GET", "/v1/nodes/"+r.node+"/history", nil, &hist); err == nil {
		for _, e := range hist {
			if strings.HasPrefix(e.Kind, "intent") && e.Time.After(c.started.Add(-15*time.Second)) {
				t.Logf("history: %s %s %s %q", e.Time.Format("15:04:05.000"), e.Kind, e.User, e.Message)
			}
		}
	}
	r.rescueTiming(t, "rescue (flavor's image), leader killed between the switch and the reboot", c)
	r.checkRescue(t, in, rescueFlavor, "")
}

// delete: instance delete --wait returns when the node is available; the
// instance is gone, the disks' first MiB zero and wipefs finds nothing.
func (r *instRun) delete(t *testing.T) {
	for _, d := range r.spec.Disks[:1] {
		if out, err := wipefsList(r.v.DiskFile(d.Serial)); err != nil || out == "" {
			t.Errorf("before delete: wipefs finds nothing on disk %s (%v): the check after would prove nothing", d.Serial, err)
		}
	}
	start := time.Now()
	out, stderr, err := r.cliLong(t, instLimit, "instance", "delete", r.inst, "--wait", "--timeout", "20m")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	line := fmt.Sprintf("| %s | delete (clean) | %.2f | until the node is available |", r.fw, time.Since(start).Seconds())
	r.timings = append(r.timings, line)
	t.Logf("instance delete --wait: %s %s; %s", strings.TrimSpace(out), strings.TrimSpace(stderr), line)
	n := r.getNode(t, r.node)
	if n.ProvisionState != proto.StateAvailable || n.InstanceUUID != "" || n.Task != "" || n.Boot != nil || n.SavedBoot != nil {
		t.Errorf("after delete: node %s instance %q task %q boot %+v saved %+v; want available, none of them", n.ProvisionState, n.InstanceUUID, n.Task, n.Boot, n.SavedBoot)
	}
	if _, err := r.cli("instance", "show", r.inst); err == nil {
		t.Errorf("instance %s still shown after delete --wait", r.inst)
	}
	var list []proto.Instance
	if err := json.Unmarshal([]byte(r.mustCLI(t, "instance", "list", "--node", r.nodeN, "-o", "json")), &list); err != nil || len(list) != 0 {
		t.Errorf("instance list --node %s after delete: %+v (%v), want none", r.nodeN, list, err)
	}
	testkit.Eventually(t, 2*time.Minute, "the VM off after the clean", func() bool { return !r.v.On() })
	for _, d := range r.spec.Disks {
		f := r.v.DiskFile(d.Serial)
		for _, off := range []int64{0, d.Size - 1<<20} {
			if at, err := nonZero(f, off, 1<<20); err != nil || at >= 0 {
				t.Errorf("after delete: disk %s, MiB at %d not zero (first non-zero byte at %d, %v)", d.Serial, off, at, err)
			}
		}
		if out, err := wipefsList(f); err != nil || out != "" {
			t.Errorf("after delete: wipefs --no-act on disk %s: %q (%v), want nothing", d.Serial, out, err)
		}
	}
}
