package drills

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/coordinator/apiclient"
	"github.com/metalfleet/metalfleet/ops/testkit"
	"github.com/metalfleet/metalfleet/proto"
	"github.com/metalfleet/metalfleet/rackagent/bmc"
	"github.com/metalfleet/metalfleet/rackagent/bmc/ipmisim"
	"github.com/metalfleet/metalfleet/rackagent/sim"
)

// The instance drills: one instance on a simulated machine (the burn-in
// rig: three coordinator processes, a rack agent process, a sim.Host in
// the test process running the real task runner) goes through create,
// rescue, unrescue and delete while processes are killed and the
// machine's power is cut, and after every phase the drill checks the
// instance's state, the node's provision state, boot config, saved boot
// config and task, the machine's power, and the bytes on its disk.
//
// The machine's BMC is an ipmisim BMC whose power backend (gatedPower)
// can hold the next power action or power read for a moment (at most
// gateMax, under the IPMI driver's 2 s wait for an answer): so the
// drill can kill the leader while the reboot a command asked for is
// certainly not done, or cut the power between two steps of the agent.
// Without the sim's own BMC the machine has no boot-device override: it
// always network-boots, and a node whose boot config is local disk is
// sent `exit` by the agent (the local-boot path).

// gateMax bounds how long gatedPower holds a BMC call: under the IPMI
// driver's wait for one answer (2 s), so a held call is never resent.
const gateMax = 1200 * time.Millisecond

// gatedPower is a sim.Host's power behind an ipmisim BMC, able to hold
// the next power action or read until released.
type gatedPower struct {
	chassis ipmisim.PowerBackend // the host's (sim.IPMIPower)
	arrived chan string

	mu       sync.Mutex
	holdAct  bool
	holdRead bool
	release  chan struct{}
	// expired counts held calls let go by gateMax, not by free: the
	// drill was too slow to land its fault in the window.
	expired atomic.Int64
}

func newGatedPower(h *sim.Host) *gatedPower {
	return &gatedPower{chassis: sim.IPMIPower(h), arrived: make(chan string, 16), release: make(chan struct{})}
}

// hold makes the next power action (read false) or power read (read
// true) wait until release (or gateMax).
func (g *gatedPower) hold(read bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if read {
		g.holdRead = true
	} else {
		g.holdAct = true
	}
}

// free lets a held call go on and disarms the holds.
func (g *gatedPower) free() {
	g.mu.Lock()
	defer g.mu.Unlock()
	close(g.release)
	g.release = make(chan struct{})
	g.holdAct, g.holdRead = false, false
}

func (g *gatedPower) wait(ctx context.Context, read bool, what string) {
	g.mu.Lock()
	armed := g.holdAct
	if read {
		armed = g.holdRead
	}
	rel := g.release
	if armed {
		if read {
			g.holdRead = false
		} else {
			g.holdAct = false
		}
	}
	g.mu.Unlock()
	if !armed {
		return
	}
	select {
	case g.arrived <- what:
	default:
	}
	tm := time.NewTimer(gateMax)
	defer tm.Stop()
	select {
	case <-rel:
	case <-tm.C:
		g.expired.Add(1)
	case <-ctx.Done():
	}
}

func (g *gatedPower) PowerState(ctx context.Context) (bool, error) {
	g.wait(ctx, true, "read")
	return g.chassis.PowerState(ctx)
}

func (g *gatedPower) Power(ctx context.Context, a ipmisim.Action) error {
	g.wait(ctx, false, string(a))
	return g.chassis.Power(ctx, a)
}

// gate makes the callers of pass wait while it is held, until open (or
// a minute: a drill that forgot to open it); arrived hears a caller that
// found it held.
type gate struct {
	mu      sync.Mutex
	ch      chan struct{} // nil: open
	hits    int
	arrived chan struct{}
}

func newGate() *gate { return &gate{arrived: make(chan struct{}, 1)} }

// pass waits while g is held; false if ctx ended first.
func (g *gate) pass(ctx context.Context) bool {
	g.mu.Lock()
	ch := g.ch
	g.hits++
	g.mu.Unlock()
	if ch == nil {
		return true
	}
	select {
	case g.arrived <- struct{}{}:
	default:
	}
	select {
	case <-ch:
	case <-ctx.Done():
		return false
	case <-time.After(time.Minute):
	}
	return true
}

// requests is how many callers passed or waited.
func (g *gate) requests() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.hits
}

func (g *gate) hold() {
	g.mu.Lock()
	g.ch = make(chan struct{})
	g.mu.Unlock()
	select {
	case <-g.arrived:
	default:
	}
}

func (g *gate) open() {
	g.mu.Lock()
	if g.ch != nil {
		close(g.ch)
		g.ch = nil
	}
	g.mu.Unlock()
}

// imageGate serves a disk image over HTTP, its requests behind a gate.
type imageGate struct {
	*gate
	body []byte
	url  string
}

func (g *imageGate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !g.pass(r.Context()) {
		return
	}
	w.Header().Set("Content-Length", fmt.Sprint(len(g.body)))
	w.Write(g.body)
}

// instRig is the burn-in rig's processes with a gated BMC, a disk image
// served by the test, a rescue image and a flavor, the node available.
type instRig struct {
	*burninRig
	bin   string
	power *gatedPower
	ipmi  *ipmisim.BMC
	image *imageGate
	// boot holds the machine's ramdisk boots between fetching the
	// kernel and initrd and running them (sim.Machine.BeforeKernel).
	boot    *gate
	imgSum  string
	taskDir string
	inst    string
}

const (
	drillFlavor = "drill-flavor"
	drillDisk   = "drill-disk"
	drillRescue = "drill-rescue"
)

func newInstRig(t *testing.T) *instRig {
	t.Helper()
	bin := Binary(t)
	rack, server := startRack(t, bin)
	r := &instRig{burninRig: rack, bin: bin, inst: "drill-inst"}
	hw := net.HardwareAddr{0x52, 0x54, 0x00, 0x0b, 0x00, 0x11}
	r.taskDir = t.TempDir()
	r.boot = newGate()
	r.host = sim.NewHost(&sim.Machine{MAC: hw, DHCP: server, RelayIP: net.IPv4(127, 0, 0, 1), BindLease: true,
		Report: simReport, Firmware: drillFirmware, TaskDir: r.taskDir, BeforeKernel: func(ctx context.Context) { r.boot.pass(ctx) }})
	r.power = newGatedPower(r.host)
	var err error
	r.ipmi, err = ipmisim.New(ipmisim.Config{Username: "admin", Password: "drill-pw", Power: r.power, Console: r.host.Serial()})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.ipmi.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		r.power.free()
		r.boot.open()
		r.ipmi.Close()
		r.host.Close()
		if t.Failed() {
			t.Logf("--- console of the simulated machine, last lines ---\n%s", tail(r.host.Serial().Log(), 80))
		}
	})

	// The disk image: 4 MiB of random bytes, served by the test.
	img := make([]byte, 4<<20)
	rand.Read(img)
	copy(img, "METALFLEET-DRILL-IMAGE")
	r.image = &imageGate{gate: newGate(), body: img}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: r.image}
	go srv.Serve(ln)
	t.Cleanup(func() { r.image.open(); srv.Close() })
	r.image.url = "http://" + ln.Addr().String() + "/drill-disk.img"
	sum := sha256.Sum256(img)
	r.imgSum = hex.EncodeToString(sum[:])
	ctx := Ctx(t, 30*time.Second)
	if _, err := r.all.CreateImage(ctx, proto.Image{Name: drillDisk, Kind: proto.ImageDisk, URL: r.image.url, SHA256: r.imgSum, Size: int64(len(img))}); err != nil {
		t.Fatalf("disk image: %v", err)
	}
	// The rescue image: a ramdisk of its own (the simulated machine runs
	// the rescue task whatever initrd it fetched), so that the boot
	// config shows which initrd the node boots.
	rb := []byte(strings.Repeat("simulated rescue ramdisk ", 4096))
	rp := filepath.Join(t.TempDir(), "rescue.img")
	if err := os.WriteFile(rp, rb, 0o644); err != nil {
		t.Fatal(err)
	}
	rsum := sha256.Sum256(rb)
	if _, err := r.all.CreateImage(ctx, proto.Image{Name: drillRescue, Kind: proto.ImageRamdisk, URL: "file://" + rp, SHA256: hex.EncodeToString(rsum[:]), Size: int64(len(rb))}); err != nil {
		t.Fatalf("rescue image: %v", err)
	}
	// full_erase: a delete zeroes the whole disk, so the drill can check
	// that no byte of the image is left.
	if _, err := r.all.CreateFlavor(ctx, proto.Flavor{Name: drillFlavor, RescueImage: drillRescue, FullErase: true}); err != nil {
		t.Fatalf("flavor: %v", err)
	}

	r.manage(t, proto.NodeCreate{Name: "i1", MACs: []string{hw.String()}, Rack: "r1",
		BMC: proto.BMC{Driver: proto.DriverIPMI, Address: r.ipmi.Host(), Port: r.ipmi.Port(), Interface: proto.IPMILanplus, Username: "admin", Password: "drill-pw"}})
	if _, err := r.all.Provision(Ctx(t, 20*time.Second), r.node, "provide"); err != nil {
		t.Fatalf("provision provide: %v", err)
	}
	r.waitNode(t, 30*time.Second, "the node available", func(n *proto.Node) bool { return n.ProvisionState == proto.StateAvailable })
	return r
}

// retry503 runs f until it does not fail with a 503 or a transport
// error (a leader being elected), within d; another error fails the
// drill.
func retry503(t *testing.T, d time.Duration, what string, f func() error) {
	t.Helper()
	testkit.Until(t, d, what, func() error {
		err := f()
		var ae *apiclient.Error
		if err != nil && errors.As(err, &ae) && ae.Status != http.StatusServiceUnavailable {
			t.Fatalf("%s: %v", what, err)
		}
		return err
	})
}

func (r *instRig) instance(t *testing.T) (*proto.Instance, error) {
	return r.all.Instance(Ctx(t, 5*time.Second), r.inst)
}

// waitInstance waits until the instance is in state want and returns it
// with when it was first seen so. An instance in error fails the drill.
func (r *instRig) waitInstance(t *testing.T, d time.Duration, want proto.InstanceState) (*proto.Instance, time.Time) {
	t.Helper()
	var got *proto.Instance
	testkit.Until(t, d, "instance "+string(want), func() error {
		in, err := r.instance(t)
		if err != nil {
			return err
		}
		if in.State == proto.InstanceError && want != proto.InstanceError {
			t.Fatalf("instance in error (want %s): %s", want, in.LastError)
		}
		if in.State != want {
			return fmt.Errorf("instance %s", in.State)
		}
		got = in
		return nil
	})
	return got, time.Now()
}

// killLeader SIGKILLs the current leader and returns its index and when.
func (r *instRig) killLeader(t *testing.T) (int, time.Time) {
	t.Helper()
	li := leaderOf(t, r.procs, r.token)
	r.procs[li].Kill()
	return li, time.Now()
}

// restart starts killed coordinator i again and waits until it follows a
// leader.
func (r *instRig) restart(t *testing.T, i int) {
	t.Helper()
	r.procs[i].Start(t)
	WaitFor(t, 30*time.Second, r.procs[i].ID+" back, following a leader", func() bool {
		st, err := r.procs[i].Client(r.token).Status(Ctx(t, 2*time.Second))
		return err == nil && st.LeaderID != ""
	})
}

// diskFile is the simulated machine's disk file name (kept from one
// task to the next).
func (r *instRig) diskFile(t *testing.T, name string) string {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(r.taskDir, "sim-disks-*", "disk-"+name))
	if len(m) != 1 {
		t.Fatalf("disk file of %s: %v", name, m)
	}
	return m[0]
}

// diskSum is the sha256 of the first n bytes of disk file f.
func diskSum(t *testing.T, f string, n int) string {
	t.Helper()
	fh, err := os.Open(f)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	h := sha256.New()
	if _, err := io.CopyN(h, fh, int64(n)); err != nil {
		t.Fatalf("read %s: %v", f, err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// drainArrived forgets the held calls an earlier phase left reported.
func (g *gatedPower) drainArrived() {
	for {
		select {
		case <-g.arrived:
		default:
			return
		}
	}
}

// heldNow says which held call reached the BMC so far ("" for none).
func (g *gatedPower) heldNow() string {
	select {
	case a := <-g.arrived:
		return a
	default:
		return ""
	}
}

// localDisk says whether b is the local-disk boot config and nothing else.
func localDisk(b *proto.BootConfig) bool {
	return b != nil && b.Kind == proto.BootLocalDisk && b.Kernel == nil && b.Initrd == nil && b.TaskToken == ""
}

// checkRunning checks a running instance: node active, booting its disk
// (no saved config, no task), the machine on, the image on the disk.
func (r *instRig) checkRunning(t *testing.T, what, disk string) {
	t.Helper()
	in, n := r.readBoth(t)
	if in.State != proto.InstanceRunning || in.LastError != "" || in.Node != r.node {
		t.Errorf("%s: instance %s (last_error %q, node %s), want running on %s", what, in.State, in.LastError, in.Node, r.node)
	}
	if n.ProvisionState != proto.StateActive || !localDisk(n.Boot) || n.SavedBoot != nil || n.Task != "" || n.InstanceUUID != in.UUID {
		t.Errorf("%s: node %s boot %+v saved %+v task %q instance %q: want active, local-disk, no saved boot, no task", what,
			n.ProvisionState, n.Boot, n.SavedBoot, n.Task, n.InstanceUUID)
	}
	WaitFor(t, 30*time.Second, what+": the machine on", r.host.On)
	if got := diskSum(t, r.diskFile(t, disk), len(r.image.body)); got != r.imgSum {
		t.Errorf("%s: the disk's first %d bytes have sha256 %s, want the image's %s", what, len(r.image.body), got, r.imgSum)
	}
}

// checkRescue checks an instance in rescue: node rescue, booting the
// rescue image (the task kernel, initrd drill-rescue, task rescue with a
// token), the disk config saved, the rescue task the node's, the
// machine on, the disk untouched.
func (r *instRig) checkRescue(t *testing.T, what, disk string) {
	t.Helper()
	in, n := r.readBoth(t)
	if in.State != proto.InstanceRescue || in.LastError != "" {
		t.Errorf("%s: instance %s (last_error %q), want rescue", what, in.State, in.LastError)
	}
	checkRescueBoot(t, what, n)
	if n.ProvisionState != proto.StateRescue || n.Task == "" {
		t.Errorf("%s: node %s task %q, want rescue with the rescue task", what, n.ProvisionState, n.Task)
	} else if task, err := r.all.Task(Ctx(t, 5*time.Second), r.node, n.Task); err != nil || task.Kind != proto.TaskRescue {
		t.Errorf("%s: node task %s: %+v (%v), want a rescue task", what, n.Task, task, err)
	}
	WaitFor(t, 30*time.Second, what+": the machine on", r.host.On)
	if got := diskSum(t, r.diskFile(t, disk), len(r.image.body)); got != r.imgSum {
		t.Errorf("%s: the disk's first %d bytes have sha256 %s in rescue, want the image's %s (unchanged)", what, len(r.image.body), got, r.imgSum)
	}
}

// readBoth reads the instance and its node.
func (r *instRig) readBoth(t *testing.T) (*proto.Instance, *proto.Node) {
	t.Helper()
	in, err := r.instance(t)
	if err != nil {
		t.Fatal(err)
	}
	n, err := r.readNode(t)
	if err != nil {
		t.Fatal(err)
	}
	return in, n
}

// checkRescueBoot: the node boots the rescue image, its disk config saved.
func checkRescueBoot(t *testing.T, what string, n *proto.Node) {
	t.Helper()
	b := n.Boot
	if b == nil || b.Kind != proto.BootRamdisk || b.Initrd == nil || b.Initrd.Name != drillRescue || b.Kernel == nil || b.Kernel.Name != "task-kernel" ||
		b.Task != string(proto.TaskRescue) {
		// (The API leaves the task token out of the boot config.)
		t.Errorf("%s: node boot %+v, want a ramdisk: kernel task-kernel, initrd %s, task rescue", what, b, drillRescue)
	}
	if n.SavedBoot == nil || !localDisk(n.SavedBoot.Boot) {
		t.Errorf("%s: node saved_boot %+v, want the local-disk config", what, n.SavedBoot)
	}
}

// consoleSince waits until the machine's console, past offset from,
// matches one of subs, and returns the one seen.
func (r *instRig) consoleSince(t *testing.T, from int, d time.Duration, what string, subs ...string) string {
	t.Helper()
	seen := ""
	WaitFor(t, d, what, func() bool {
		log := r.host.Serial().Log()
		if len(log) < from {
			from = 0
		}
		for _, s := range subs {
			if strings.Contains(log[from:], s) {
				seen = s
				return true
			}
		}
		return false
	})
	return seen
}

// lastLine is the console's last line.
func (r *instRig) lastLine() string {
	log := strings.TrimRight(r.host.Serial().Log(), "\n")
	if i := strings.LastIndexByte(log, '\n'); i >= 0 {
		return log[i+1:]
	}
	return log
}

// rebootIntent is the node's power intent of the instance's BootGen.
func rebootIntent(n *proto.Node, gen uint64) *proto.Intent {
	for i, x := range n.Intents {
		if x.Action == proto.ActionPower && x.Generation == gen {
			return &n.Intents[i]
		}
	}
	return nil
}

// TestInstanceLifeFaults: create, rescue, unrescue, rescue, unrescue,
// rescue, unrescue, delete of one instance, with a fault in each phase:
//
//  1. deploy: the leader SIGKILLed while the write step waits for the
//     image (the test's server holds it);
//  2. rescue: the leader SIGKILLed right after the rescue POST returns,
//     the machine's reset held at its BMC so it cannot have happened;
//  3. unrescue: the same, after the unrescue POST;
//  4. rescue: the rack agent SIGKILLed while the machine boots the
//     rescue image, restarted on its data dir when the machine's boot
//     failed for it;
//  5. unrescue: the machine powered off behind Metalfleet's back before
//     the agent reads its power for the reboot (the read held);
//  6. rescue, no fault;
//  7. unrescue: the machine powered off behind Metalfleet's back while
//     the agent's reset is on its way (held at the BMC): the reset meets
//     an off machine;
//  8. delete: the leader SIGKILLed while the clean runs on the machine.
//
// Each phase ends in the state it must, checked as above.
func TestInstanceLifeFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("starts coordinator and agent processes")
	}
	r := newInstRig(t)

	// 1. Deploy, the leader killed during the write step.
	r.image.hold()
	var in *proto.Instance
	created := time.Now()
	retry503(t, 30*time.Second, "POST /v1/instances", func() (err error) {
		in, err = r.all.CreateInstance(Ctx(t, 20*time.Second), proto.InstanceRequest{Name: r.inst, Flavor: drillFlavor, Image: drillDisk, RequestID: "drill-create"})
		return err
	})
	if in.Node != r.node {
		t.Fatalf("instance scheduled on %q, want the drill's node %s", in.Node, r.node)
	}
	var deployTask string
	testkit.Until(t, 30*time.Second, "the deploy task started", func() error {
		cur, err := r.instance(t)
		if err != nil {
			return err
		}
		if cur.Task == "" {
			return fmt.Errorf("instance %s, no task", cur.State)
		}
		deployTask = cur.Task
		return nil
	})
	running := r.waitStepRunning(t, deployTask, proto.StepNameWrite)
	li, killed := r.killLeader(t)
	t.Logf("phase 1 deploy: leader %s SIGKILLed %.2fs after the create, while step write ran (started %.2fs before; the image held by the test's server, %d request(s))",
		r.procs[li].ID, killed.Sub(created).Seconds(), killed.Sub(running.CurrentStep().StartedAt).Seconds(), r.image.requests())
	r.image.open()
	_, seen := r.waitInstance(t, 3*time.Minute, proto.InstanceRunning)
	done, _ := r.waitTaskEnded(t, deployTask, time.Minute)
	var dep struct {
		Disk   string `json:"disk"`
		SHA256 string `json:"sha256"`
		Bytes  int64  `json:"bytes"`
	}
	if s := stepByName(done, proto.StepNameWrite); s.State != proto.StepPassed || json.Unmarshal(s.Result, &dep) != nil || dep.SHA256 != r.imgSum {
		t.Fatalf("deploy task %s %s, write %s result %s: want passed with the image's sha256 %s", done.ID, done.State, s.State, s.Result, r.imgSum)
	}
	t.Logf("phase 1 deploy: running %.2fs after the kill (write step ended %.2fs after it; create to running %.2fs); image on disk %s",
		seen.Sub(killed).Seconds(), stepByName(done, proto.StepNameWrite).EndedAt.Sub(killed).Seconds(), seen.Sub(created).Seconds(), dep.Disk)
	r.checkRunning(t, "after deploy", dep.Disk)
	r.restart(t, li)

	// 2. Rescue, the leader killed right after the POST returns.
	r.rescueLeaderKill(t, dep.Disk)
	// 3. Unrescue, the same.
	r.unrescueLeaderKill(t, dep.Disk)
	// 4. Rescue, the rack agent killed during the rescue boot.
	r.rescueAgentKill(t, dep.Disk)
	// 5. Unrescue, the power cut before the agent's power read.
	r.unrescuePowerCut(t, dep.Disk, true)
	// 6. Rescue without a fault.
	start := time.Now()
	retry503(t, 30*time.Second, "POST rescue", func() error {
		_, err := r.all.RescueInstance(Ctx(t, 20*time.Second), r.inst, proto.RescueRequest{})
		return err
	})
	_, seen = r.waitInstance(t, 2*time.Minute, proto.InstanceRescue)
	t.Logf("phase 6 rescue (no fault): rescue %.2fs after the POST", seen.Sub(start).Seconds())
	r.checkRescue(t, "phase 6 rescue", dep.Disk)
	// 7. Unrescue, the power cut while the agent's reset is on its way.
	r.unrescuePowerCut(t, dep.Disk, false)
	// 8. Delete, the leader killed during the clean.
	r.deleteLeaderKill(t, dep.Disk)
}

// killLeaderBeforeReboot holds the agent's next power action at the
// BMC, makes the request post (a rescue or an unrescue) and SIGKILLs the
// leader as soon as it is answered: after the Raft command that switched
// the boot config, before the reboot it asked for. It returns the killed
// server, and when the POST started and the kill came.
func (r *instRig) killLeaderBeforeReboot(t *testing.T, phase string, post func() error) (li int, start, killed time.Time) {
	t.Helper()
	li = leaderOf(t, r.procs, r.token)
	boots := r.host.Boots()
	r.power.drainArrived()
	r.power.hold(false)
	expired := r.power.expired.Load()
	start = time.Now()
	if err := post(); err != nil {
		r.power.free()
		t.Fatalf("%s: POST: %v", phase, err)
	}
	posted := time.Now()
	r.procs[li].Kill()
	killed = time.Now()
	rebooted := r.host.Boots() != boots
	held := r.power.heldNow()
	r.power.free()
	t.Logf("%s: leader %s SIGKILLed %.1fms after the POST returned (%.1fms for the POST); the machine rebooted before the kill: %v; the agent's power action held at the BMC then: %q (\"\": not sent yet)",
		phase, r.procs[li].ID, float64(killed.Sub(posted).Microseconds())/1000, float64(posted.Sub(start).Microseconds())/1000, rebooted, held)
	switch {
	case rebooted && r.power.expired.Load() > expired:
		// The reset was held gateMax (1.2 s) and let go before the
		// kill: this machine was too slow for the window, the fault
		// missed it; the end states are still checked.
		t.Logf("%s: the reset was let go by the gate's timeout before the kill: the kill landed after the reboot, not between the switch and it", phase)
	case rebooted:
		t.Errorf("%s: the machine rebooted before the kill: the kill was not between the switch and the reboot", phase)
	}
	return li, start, killed
}

func (r *instRig) rescueLeaderKill(t *testing.T, disk string) {
	t.Helper()
	li, start, killed := r.killLeaderBeforeReboot(t, "phase 2 rescue", func() error {
		_, err := r.all.RescueInstance(Ctx(t, 20*time.Second), r.inst, proto.RescueRequest{})
		return err
	})
	n := r.waitNode(t, 30*time.Second, "the rescue's switch read through a survivor", func(n *proto.Node) bool { return n.Task != "" })
	if n.ProvisionState != proto.StateRescuing && n.ProvisionState != proto.StateRescue {
		t.Errorf("after the kill: node %s, want rescuing (or rescue)", n.ProvisionState)
	}
	checkRescueBoot(t, "phase 2, right after the kill", n)
	_, seen := r.waitInstance(t, 2*time.Minute, proto.InstanceRescue)
	t.Logf("phase 2 rescue: instance rescue %.2fs after the kill (%.2fs after the POST); new leader %s", seen.Sub(killed).Seconds(), seen.Sub(start).Seconds(),
		r.procs[leaderOf(t, r.procs, r.token)].ID)
	r.checkRescue(t, "phase 2 rescue (leader killed)", disk)
	r.restart(t, li)
}

func (r *instRig) unrescueLeaderKill(t *testing.T, disk string) {
	t.Helper()
	li, start, killed := r.killLeaderBeforeReboot(t, "phase 3 unrescue", func() error {
		_, err := r.all.UnrescueInstance(Ctx(t, 20*time.Second), r.inst)
		return err
	})
	n := r.waitNode(t, 30*time.Second, "the unrescue's switch read through a survivor", func(n *proto.Node) bool {
		return n.ProvisionState == proto.StateUnrescuing || n.ProvisionState == proto.StateActive
	})
	if !localDisk(n.Boot) || n.SavedBoot != nil || n.Task != "" {
		t.Errorf("after the kill: node boot %+v saved %+v task %q, want local-disk, none, none", n.Boot, n.SavedBoot, n.Task)
	}
	_, seen := r.waitInstance(t, 2*time.Minute, proto.InstanceRunning)
	t.Logf("phase 3 unrescue: instance running %.2fs after the kill (%.2fs after the POST)", seen.Sub(killed).Seconds(), seen.Sub(start).Seconds())
	r.checkRunning(t, "phase 3 unrescue (leader killed)", disk)
	r.restart(t, li)
}

func (r *instRig) rescueAgentKill(t *testing.T, disk string) {
	t.Helper()
	boots := r.host.Boots()
	// The rescue boot is held once the machine has fetched the kernel
	// and the rescue initrd, before the rescue ramdisk first calls the
	// agent; the agent dies there. (Unheld, the whole rescue boot on
	// loopback can end before a kill lands.)
	r.boot.hold()
	defer r.boot.open()
	start := time.Now()
	retry503(t, 30*time.Second, "POST rescue", func() error {
		_, err := r.all.RescueInstance(Ctx(t, 20*time.Second), r.inst, proto.RescueRequest{})
		return err
	})
	select {
	case <-r.boot.arrived:
	case <-time.After(time.Minute):
		t.Fatalf("phase 4 rescue: the machine did not fetch the rescue boot's kernel and initrd within a minute of the POST")
	}
	at := r.lastLine()
	r.agent.Kill()
	killed := time.Now()
	r.boot.open()
	t.Logf("phase 4 rescue: rack agent SIGKILLed %.2fs after the rescue POST; the console's last line then: %q", killed.Sub(start).Seconds(), at)
	from2 := len(r.host.Serial().Log())
	saw := r.consoleSince(t, from2, 30*time.Second, "the machine's boot to fail for the dead agent",
		"boot failed", "rebooting", "msg=retrying", "report failed; retrying", "the agent refuses connections")
	r.agent.Start(t)
	t.Logf("phase 4 rescue: rack agent restarted on its data dir %.2fs after the kill (the machine: %q)", time.Since(killed).Seconds(), saw)
	_, seen := r.waitInstance(t, 3*time.Minute, proto.InstanceRescue)
	t.Logf("phase 4 rescue: instance rescue %.2fs after the kill (%.2fs after the POST); %d power-on boot(s) of the machine since the POST (a failed network boot starts over within one)", seen.Sub(killed).Seconds(), seen.Sub(start).Seconds(), r.host.Boots()-boots)
	r.checkRescue(t, "phase 4 rescue (agent killed)", disk)
}

// unrescuePowerCut unrescues while the machine's power is cut behind
// Metalfleet's back: beforeRead, before the agent reads the power for
// the reboot (the reboot then powers it on); else while the agent's
// reset is held at the BMC (it then meets an off machine).
func (r *instRig) unrescuePowerCut(t *testing.T, disk string, beforeRead bool) {
	t.Helper()
	phase, held := "phase 7 unrescue", "reset"
	if beforeRead {
		phase, held = "phase 5 unrescue", "read"
	}
	r.power.hold(beforeRead)
	defer r.power.free()
	r.power.drainArrived()
	expired := r.power.expired.Load()
	start := time.Now()
	var in *proto.Instance
	retry503(t, 30*time.Second, "POST unrescue", func() (err error) {
		in, err = r.all.UnrescueInstance(Ctx(t, 20*time.Second), r.inst)
		return err
	})
	var got string
	select {
	case got = <-r.power.arrived:
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: no power %s reached the BMC within 30 s of the unrescue", phase, held)
	}
	if err := r.host.Power(bmc.PowerOff); err != nil {
		t.Fatal(err)
	}
	cut := time.Now()
	r.power.free()
	t.Logf("%s: the machine powered off behind Metalfleet's back %.2fs after the unrescue POST, while the agent's power %s was held at the BMC", phase, cut.Sub(start).Seconds(), got)
	if r.power.expired.Load() > expired {
		// The held call was let go by the gate's timeout (gateMax)
		// before the cut: this machine was too slow for the window, the
		// cut came after the agent's power call, so it is a power loss
		// after the unrescue, not during it. An operator powers the
		// machine on; the instance must run from its disk.
		t.Logf("%s: the power %s was let go by the gate's timeout before the cut: the fault missed its window; powering on as an operator would", phase, got)
		r.operatorPower(t, proto.PowerTargetOn)
		_, seen := r.waitInstance(t, 2*time.Minute, proto.InstanceRunning)
		t.Logf("%s: instance running %.2fs after the cut", phase, seen.Sub(cut).Seconds())
		r.checkRunning(t, phase+" (power cut after the reboot)", disk)
		return
	}

	// The reboot intent's outcome.
	var n *proto.Node
	testkit.Until(t, time.Minute, "the unrescue's reboot intent done", func() error {
		var err error
		if n, err = r.readNode(t); err != nil {
			return err
		}
		cur, err := r.instance(t)
		if err != nil {
			return err
		}
		x := rebootIntent(n, cur.BootGen)
		if cur.BootGen == 0 || x == nil || !x.Done {
			return fmt.Errorf("instance %s bootgen %d, intent %+v", cur.State, cur.BootGen, x)
		}
		in = cur
		return nil
	})
	x := rebootIntent(n, in.BootGen)
	t.Logf("%s: reboot intent %d done %.2fs after the cut, error %q; instance %s, node %s, machine on %v", phase, x.Generation, x.DoneAt.Sub(cut).Seconds(), x.Error, in.State, n.ProvisionState, r.host.On())
	if x.Error == "" {
		_, seen := r.waitInstance(t, 2*time.Minute, proto.InstanceRunning)
		t.Logf("%s: the reboot powered the machine on; instance running %.2fs after the cut", phase, seen.Sub(cut).Seconds())
		r.checkRunning(t, phase+" (power cut)", disk)
		return
	}
	// The reboot failed: the instance waits in unrescuing (until the
	// agent sees the node take its local-boot path, or the 30 min
	// timeout); the boot config must be the disk, never a ramdisk.
	if in.State != proto.InstanceUnrescuing || n.ProvisionState != proto.StateUnrescuing {
		t.Errorf("%s: after the failed reboot: instance %s node %s, want unrescuing (waiting)", phase, in.State, n.ProvisionState)
	}
	if !localDisk(n.Boot) || n.SavedBoot != nil || n.Task != "" {
		t.Errorf("%s: after the failed reboot: boot %+v saved %+v task %q: want local-disk, no saved boot, no task", phase, n.Boot, n.SavedBoot, n.Task)
	}
	if r.host.On() {
		t.Errorf("%s: the machine is on after a failed reboot", phase)
	}
	t.Logf("%s: REBOOT FAILED on the off machine: %q; instance stays %s (timeout %s) with boot %s, node last_error %q",
		phase, x.Error, in.State, proto.InstanceTimeouts[proto.InstanceUnrescuing], n.Boot.Kind, n.LastError)
	// An operator powers it on: the machine boots its disk, through the
	// agent's local-disk script, and the instance runs when the agent
	// reports that boot event (the BMC path does not apply: the operator's
	// power intent replaced the unrescue's).
	on := time.Now()
	r.operatorPower(t, proto.PowerTargetOn)
	if r.runningWithin(t, 15*time.Second) {
		t.Logf("%s: after an operator's power on, instance running %.2fs later", phase, time.Since(on).Seconds())
	} else {
		// The agent reports at most one "script" boot event per node per
		// 5 s (httpboot's eventLimiter, keyed by node and event, not by
		// what the script boots): the local-disk script served within 5 s
		// of the rescue ramdisk's script is not reported.
		t.Logf("%s: FINDING: the machine booted its disk after the operator's power on (console: %q) but the instance is still unrescuing 15 s later; the agent's boot events since: %s",
			phase, r.lastLine(), r.agentBootEvents(t, on))
		again := time.Now()
		r.operatorPower(t, proto.PowerTargetReboot)
		if !r.runningWithin(t, time.Minute) {
			t.Fatalf("%s: the instance is not running a minute after a second operator reboot either", phase)
		}
		t.Logf("%s: after an operator's reboot %.1fs after the power on, instance running %.2fs later", phase, again.Sub(on).Seconds(), time.Since(again).Seconds())
	}
	r.checkRunning(t, phase+" (power cut, operator power on)", disk)
}

// operatorPower asks for a power target through the API.
func (r *instRig) operatorPower(t *testing.T, target proto.PowerTarget) {
	t.Helper()
	retry503(t, 30*time.Second, "power "+string(target), func() error {
		_, err := r.all.SetPower(Ctx(t, 20*time.Second), r.node, proto.PowerRequest{Target: target}, 0)
		return err
	})
}

// runningWithin says whether the instance is running within d.
func (r *instRig) runningWithin(t *testing.T, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if in, err := r.instance(t); err == nil && in.State == proto.InstanceRunning {
			return true
		}
		tm := time.NewTimer(100 * time.Millisecond) // polling the API
		<-tm.C
	}
	return false
}

// agentBootEvents lists the boot events the agent's log shows after since.
func (r *instRig) agentBootEvents(t *testing.T, since time.Time) string {
	b, err := os.ReadFile(r.agent.logPath)
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		var rec struct {
			Time  time.Time `json:"time"`
			Msg   string    `json:"msg"`
			Event string    `json:"event"`
			Kind  string    `json:"kind"`
		}
		if json.Unmarshal([]byte(line), &rec) != nil || rec.Time.Before(since) {
			continue
		}
		if rec.Msg == "boot event" || rec.Msg == "served boot script" {
			out = append(out, fmt.Sprintf("%s %s %s%s", rec.Time.Format("15:04:05.000"), rec.Msg, rec.Event, rec.Kind))
		}
	}
	return strings.Join(out, "; ")
}

func (r *instRig) deleteLeaderKill(t *testing.T, disk string) {
	t.Helper()
	file := r.diskFile(t, disk)
	from := len(r.host.Serial().Log())
	start := time.Now()
	var del *proto.Instance
	retry503(t, 30*time.Second, "DELETE instance", func() (err error) {
		del, err = r.all.DeleteInstance(Ctx(t, 20*time.Second), r.inst)
		return err
	})
	if del.State != proto.InstanceDeleting || del.Task == "" {
		t.Fatalf("DELETE answered instance %s task %q, want deleting with a clean task", del.State, del.Task)
	}
	r.consoleSince(t, from, time.Minute, "the machine running the clean", "sim: ramdisk: running task clean")
	li, killed := r.killLeader(t)
	t.Logf("phase 8 delete: leader %s SIGKILLed %.2fs after the DELETE, as the clean ramdisk started its task", r.procs[li].ID, killed.Sub(start).Seconds())
	var gone time.Time
	testkit.Until(t, 3*time.Minute, "the instance gone", func() error {
		_, err := r.instance(t)
		var ae *apiclient.Error
		if errors.As(err, &ae) && ae.Status == http.StatusNotFound {
			gone = time.Now()
			return nil
		}
		if err == nil {
			return errors.New("still there")
		}
		return err
	})
	n := r.waitNode(t, time.Minute, "the node available", func(n *proto.Node) bool { return n.ProvisionState == proto.StateAvailable })
	t.Logf("phase 8 delete: instance gone %.2fs after the kill (%.2fs after the DELETE)", gone.Sub(killed).Seconds(), gone.Sub(start).Seconds())
	if clean, err := r.all.Task(Ctx(t, 5*time.Second), r.node, del.Task); err != nil {
		t.Errorf("clean task %s: %v", del.Task, err)
	} else if s := stepByName(clean, proto.StepNameErase); clean.State != proto.TaskSucceeded || s.State != proto.StepPassed {
		t.Errorf("clean task %s %s, erase %s (%q): want succeeded", clean.ID, clean.State, s.State, s.Error)
	} else {
		t.Logf("phase 8 delete: clean task %s: erase step started %.2fs %s the kill, its result recorded %.2fs after it", clean.ID,
			s.StartedAt.Sub(killed).Abs().Seconds(), map[bool]string{true: "after", false: "before"}[s.StartedAt.After(killed)], s.EndedAt.Sub(killed).Seconds())
		if !s.EndedAt.After(killed) {
			t.Errorf("the erase step ended before the kill: the kill did not land during the clean")
		}
	}
	if n.Boot != nil || n.SavedBoot != nil || n.Task != "" || n.InstanceUUID != "" {
		t.Errorf("after delete: node boot %+v saved %+v task %q instance %q: want none", n.Boot, n.SavedBoot, n.Task, n.InstanceUUID)
	}
	WaitFor(t, time.Minute, "the machine off after the clean", func() bool { return !r.host.On() })
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if i := bytes.IndexFunc(b, func(c rune) bool { return c != 0 }); i >= 0 || len(b) < len(r.image.body) {
		t.Errorf("after delete (full erase): the disk file (%d bytes) has a non-zero byte at %d", len(b), i)
	}
	r.restart(t, li)
}
