package fsm

// Tests of an instance's whole life through FSM commands and the reports
// that move it: create (queued or forced), admission (InstanceStart),
// deploy (the write step, then the disk boot by BMC results or a boot
// event), rescue and unrescue, delete (cleaning), timeouts, the rescue
// image and the snapshot of a rescue in progress.

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/coordinator/decide"
	"github.com/metalfleet/metalfleet/coordinator/state"
	"github.com/metalfleet/metalfleet/proto"
)

const (
	instA = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaa1"
	instB = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaa2"
	instC = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaa3"
)

// instFleet is taskFleet with node n1 available, a disk image, rescue
// images (rsc and rsc2 with the task kernel, rsc-own with its own kernel
// rk, frsc the flavor's) and the flavors small (rescue image frsc) and
// bare (none).
func instFleet(t *testing.T) *harness {
	h := taskFleet(t)
	h.must(NodeProvision{Ref: "n1", Event: "provide", Actor: proto.ActorOperator, Now: t0})
	for _, im := range []proto.Image{
		{Name: "disk", Kind: proto.ImageDisk, URL: "http://x/disk.raw", SHA256: sha},
		{Name: "rsc", Kind: proto.ImageRamdisk, URL: "http://x/rsc", SHA256: sha},
		{Name: "rsc2", Kind: proto.ImageRamdisk, URL: "http://x/rsc2", SHA256: sha},
		{Name: "frsc", Kind: proto.ImageRamdisk, URL: "http://x/frsc", SHA256: sha},
		{Name: "rk", Kind: proto.ImageKernel, URL: "http://x/rk", SHA256: sha},
		{Name: "rsc-own", Kind: proto.ImageRamdisk, URL: "http://x/rsc-own", SHA256: sha, Kernel: "rk"},
	} {
		h.must(ImagePut{Image: im, Create: true})
	}
	h.must(FlavorPut{Flavor: proto.Flavor{Name: "small", DiskGB: 1, RescueImage: "frsc"}, Create: true})
	h.must(FlavorPut{Flavor: proto.Flavor{Name: "bare"}, Create: true})
	if n := node1(h); n.ProvisionState != proto.StateAvailable {
		t.Fatalf("fleet: node n1 is %s, want available", n.ProvisionState)
	}
	return h
}

func instCreate(name, uuid, flavor string, forced bool, now time.Time) InstanceCreate {
	return InstanceCreate{Instance: proto.Instance{UUID: uuid, Name: name, Flavor: flavor, Image: "disk", Node: "n1"},
		Forced: forced, Agent: "a1", Key: taskKey, By: "ops (tok-1)", Now: now}
}

func (h *harness) inst(ref string) *proto.Instance {
	h.t.Helper()
	in, ok := h.f.Store().Instance(ref)
	if !ok {
		h.t.Fatalf("instance %s not found", ref)
	}
	return in
}

// instBytes is everything an instance command may change: node n1, its
// history and tasks, and every instance.
func instBytes(h *harness) string {
	b, err := json.Marshal([]any{taskBytes(h), h.f.Store().Instances("")})
	if err != nil {
		h.t.Fatal(err)
	}
	return string(b)
}

// bootEvent is a rack agent's boot event for n1 at at.
func bootEvent(id, ev string, at time.Time) AgentReports {
	return AgentReports{Rack: "r1", Reports: []proto.AgentReport{{ID: id, Kind: proto.ReportBootEvent, Rack: "r1",
		MAC: mac1, Node: uuid1, Event: ev, Time: at}}}
}

// stepResult reports step name (index 0) of task passed or failed.
func (h *harness) stepResult(id, task, name string, passed bool, errText string, at time.Time) {
	h.t.Helper()
	h.mustReport(id+"-start", proto.StepReport{Task: task, Step: name, Index: 0, Event: proto.StepEventStart, Boot: "boot-" + id}, at)
	h.mustReport(id+"-result", proto.StepReport{Task: task, Step: name, Index: 0, Event: proto.StepEventResult, Passed: passed,
		Error: errText, Result: json.RawMessage(`{"sha256":"` + sha + `"}`)}, at)
}

// intentsFrom returns n's intents of generation above gen.
func intentsFrom(n *proto.Node, gen uint64) []proto.Intent {
	var out []proto.Intent
	for _, in := range n.Intents {
		if in.Generation > gen {
			out = append(out, in)
		}
	}
	return out
}

// wantTaskBootIntents checks that n was asked, after generation gen, for
// boot device pxe (once) then a reboot, for agent a1.
func wantTaskBootIntents(t *testing.T, n *proto.Node, gen uint64) {
	t.Helper()
	got := intentsFrom(n, gen)
	if len(got) != 2 || got[0].Action != proto.ActionBootDevice || got[0].Boot == nil || got[0].Boot.Device != proto.BootDevicePXE ||
		got[0].Boot.Persistent || got[1].Action != proto.ActionPower || got[1].Power != proto.PowerTargetReboot ||
		got[0].Agent != "a1" || got[1].Agent != "a1" || got[0].Done || got[1].Done {
		t.Fatalf("intents after generation %d: %+v, want boot device pxe (once), then a reboot, for a1", gen, got)
	}
}

// wantDiskBootIntents checks that n was asked, after generation gen, for
// boot device disk (persistent) then a reboot, and boots local disk.
func wantDiskBootIntents(t *testing.T, n *proto.Node, gen uint64) {
	t.Helper()
	got := intentsFrom(n, gen)
	if len(got) != 2 || got[0].Action != proto.ActionBootDevice || got[0].Boot == nil || got[0].Boot.Device != proto.BootDeviceDisk ||
		!got[0].Boot.Persistent || got[1].Action != proto.ActionPower || got[1].Power != proto.PowerTargetReboot || got[1].Agent != "a1" {
		t.Fatalf("intents after generation %d: %+v, want boot device disk (persistent), then a reboot, for a1", gen, got)
	}
	if n.Boot == nil || n.Boot.Kind != proto.BootLocalDisk || n.SavedBoot != nil {
		t.Fatalf("node boot %+v saved %+v, want local disk, nothing saved", n.Boot, n.SavedBoot)
	}
}

// wantPoweredOffNotRamdisk checks that a node an instance failed on is
// failed, naming why, boots no ramdisk and was asked to power off.
func wantPoweredOffNotRamdisk(t *testing.T, n *proto.Node, why string) {
	t.Helper()
	if n.ProvisionState != proto.StateFailed || n.Task != "" || !strings.Contains(n.LastError, why) {
		t.Errorf("node %s task %q last_error %q, want failed, no task, last_error naming %q", n.ProvisionState, n.Task, n.LastError, why)
	}
	if b := decide.NodeBoot(n, decide.Discovery{}); b.Kind == proto.BootRamdisk || n.SavedBoot != nil {
		t.Errorf("node boots %+v (own %+v, saved %+v), want no ramdisk left to boot", b, n.Boot, n.SavedBoot)
	}
	if in := lastIntent(n); in.Action != proto.ActionPower || in.Power != proto.PowerTargetOff || in.Agent != "a1" || in.Done {
		t.Errorf("last intent %+v, want power off for a1", in)
	}
}

// deployed creates instance web1 forced onto n1 and runs its deploy: the
// write step passes at tc0+10m and the disk boot is seen at tc0+12m. It
// returns the deploy task id.
func deployed(h *harness) string {
	h.t.Helper()
	in := h.must(instCreate("web1", instA, "small", true, tc0)).(*proto.Instance)
	h.stepResult("w", in.Task, proto.StepNameWrite, true, "", tc0.Add(10*time.Minute))
	h.must(bootEvent("disk", "script", tc0.Add(12*time.Minute)))
	if got := h.inst("web1"); got.State != proto.InstanceRunning {
		h.t.Fatalf("instance web1 is %s after its deploy, want running", got.State)
	}
	return in.Task
}

// rescued rescues running web1 at at (with req) and returns the task.
func rescued(h *harness, req proto.RescueRequest, at time.Time) *proto.Task {
	h.t.Helper()
	in := h.must(InstanceRescue{Ref: "web1", TaskID: "t-rescue", Request: req, Salt: "5a17", Agent: "a1", By: "ops", Now: at}).(*proto.Instance)
	if in.State != proto.InstanceRescuing || in.Task != "t-rescue" {
		h.t.Fatalf("rescue: instance %s task %q, want rescuing t-rescue", in.State, in.Task)
	}
	return h.task("t-rescue")
}

// TestInstanceCreateQueuedThenStart: a scheduled create binds the node
// and queues; InstanceStart starts the deploy (task ramdisk, PXE once,
// reboot); a repeated start changes nothing.
func TestInstanceCreateQueuedThenStart(t *testing.T) {
	h := instFleet(t)
	gen := node1(h).BMCGeneration
	in := h.must(instCreate("web1", instA, "small", false, tc0)).(*proto.Instance)
	if in.State != proto.InstanceQueued || in.Node != uuid1 || in.Forced || in.Task != "" || !in.StateSince.Equal(tc0) {
		t.Fatalf("create = %+v, want queued on n1, not forced, no task", in)
	}
	n := node1(h)
	if n.InstanceUUID != instA || n.ProvisionState != proto.StateAvailable || n.Task != "" || n.Boot != nil || n.BMCGeneration != gen {
		t.Fatalf("node after a queued create: %s instance %q task %q boot %+v gen %d, want available, bound, nothing started",
			n.ProvisionState, n.InstanceUUID, n.Task, n.Boot, n.BMCGeneration)
	}

	got := h.must(InstanceStart{Ref: "web1", Agent: "a1", Key: taskKey, Now: tc0.Add(time.Minute)}).(*proto.Instance)
	if got.State != proto.InstanceBuilding || got.Task == "" || !got.StateSince.Equal(tc0.Add(time.Minute)) {
		t.Fatalf("start = %+v, want building with a task", got)
	}
	tk := h.task(got.Task)
	if tk.Kind != proto.TaskDeploy || tk.State != proto.TaskRunning || tk.Params["image"] != "disk" || tk.Params["min_bytes"] != "1073741824" ||
		len(tk.Steps) != 1 || tk.Steps[0].Name != proto.StepNameWrite {
		t.Fatalf("deploy task %+v, want a running deploy of image disk, min 1 GiB, one write step", tk)
	}
	n = node1(h)
	if n.ProvisionState != proto.StateDeploying || n.Task != tk.ID || n.Boot == nil || n.Boot.Kind != proto.BootRamdisk ||
		n.Boot.Task != string(proto.TaskDeploy) || n.Boot.Initrd == nil || n.Boot.Initrd.Name != "tr" {
		t.Fatalf("node %s task %q boot %+v, want deploying with the task ramdisk", n.ProvisionState, n.Task, n.Boot)
	}
	wantTaskBootIntents(t, n, gen)

	before := instBytes(h)
	if v := h.must(InstanceStart{Ref: "web1", Agent: "a1", Key: taskKey, Now: tc0.Add(2 * time.Minute)}); v != nil {
		t.Fatalf("a repeated start = %+v, want nothing", v)
	}
	if instBytes(h) != before {
		t.Fatal("a repeated start changed the state")
	}
	h.fails(InstanceStart{Ref: "nosuch", Agent: "a1", Now: tc0}, proto.CodeNotFound, `instance "nosuch" not found`)
}

// TestInstanceCreateForced: a forced create starts the deploy at once.
func TestInstanceCreateForced(t *testing.T) {
	h := instFleet(t)
	gen := node1(h).BMCGeneration
	in := h.must(instCreate("web1", instA, "bare", true, tc0)).(*proto.Instance)
	if in.State != proto.InstanceBuilding || !in.Forced || in.Task == "" {
		t.Fatalf("forced create = %+v, want building, forced, with a task", in)
	}
	n := node1(h)
	if n.ProvisionState != proto.StateDeploying || n.Task != in.Task || n.Boot == nil || n.Boot.Kind != proto.BootRamdisk ||
		n.Boot.Task != string(proto.TaskDeploy) || n.SavedBoot == nil || n.SavedBoot.Boot != nil {
		t.Fatalf("node %s task %q boot %+v saved %+v, want deploying, the task ramdisk, nothing of its own saved", n.ProvisionState, n.Task, n.Boot, n.SavedBoot)
	}
	wantTaskBootIntents(t, n, gen)
	// The rack's agents get the token and the plan.
	h.f.Store().ReadRack("r1", func(v state.RackView) {
		bn := decide.RackBootState(decide.RackInput(v)).Nodes[0]
		if bn.Boot.TaskToken != decide.TaskToken(taskKey, uuid1, in.Task) || bn.Task == nil || bn.Task.ID != in.Task {
			t.Errorf("boot state: token %q plan %+v, want the deploy's token and plan", bn.Boot.TaskToken, bn.Task)
		}
	})
}

// TestInstanceTwoCreatesOneNode: the command that binds re-checks the
// node: the second create for it fails naming the holder, forced or not;
// a retried request gives back the first.
func TestInstanceTwoCreatesOneNode(t *testing.T) {
	h := instFleet(t)
	c := instCreate("web1", instA, "small", false, tc0)
	c.Request = "req-1"
	h.must(c)
	h.fails(instCreate("web2", instB, "small", false, tc0), proto.CodeWrongState, "node n1 already holds instance "+instA)
	h.fails(instCreate("web2", instB, "small", true, tc0), proto.CodeWrongState, "node n1 already holds instance "+instA)
	retry := instCreate("web1", instC, "small", false, tc0.Add(time.Second))
	retry.Request = "req-1"
	before := instBytes(h)
	if got := h.must(retry).(*proto.Instance); got.UUID != instA {
		t.Fatalf("retried create = %s, want the first (%s)", got.UUID, instA)
	}
	if instBytes(h) != before {
		t.Fatal("a retried create changed the state")
	}
	h.fails(instCreate("web1", instC, "small", false, tc0), proto.CodeConflict, `instance "web1" exists`)
}

// putNode stores a node directly (extra nodes for admission), at the
// next index.
func (h *harness) putNode(n *proto.Node) {
	h.t.Helper()
	h.index++
	if err := h.f.Store().Write(h.index, func(tx *state.Tx) error { tx.PutNode(n); return nil }); err != nil {
		h.t.Fatal(err)
	}
}

// TestInstanceStartAdmission: InstanceStart re-checks the deploy limits
// of the settings, in all and per rack; a refused start leaves the
// instance queued, and it starts once a deploy ends.
func TestInstanceStartAdmission(t *testing.T) {
	h := instFleet(t)
	h.must(secondRack("r2"))
	extra := []struct{ uuid, name, mac, rack string }{
		{uuid2, "n2", "52:54:00:00:00:02", "r1"},
		{uuid3, "n3", "52:54:00:00:00:03", "r2"},
	}
	for _, x := range extra {
		n := node1(h).Clone()
		n.UUID, n.Name, n.MACs, n.Rack, n.IP, n.Intents, n.BMCGeneration = x.uuid, x.name, []string{x.mac}, x.rack, "", nil, 0
		h.putNode(n)
	}
	one, neg := 1, -1
	h.fails(SettingsUpdate{Patch: proto.SettingsPatch{DeployMax: &neg}}, proto.CodeInvalid, "deploy_max -1")
	if s := h.must(SettingsUpdate{Patch: proto.SettingsPatch{DeployMaxPerRack: &one}}).(proto.Settings); s.DeployMaxPerRack != 1 || s.DeployMax != 0 {
		t.Fatalf("settings after deploy_max_per_rack=1: %d/%d, want per rack 1, in all 0 (the default)", s.DeployMaxPerRack, s.DeployMax)
	}
	for _, c := range []InstanceCreate{instCreate("a", instA, "small", false, tc0), instCreate("b", instB, "small", false, tc0), instCreate("c", instC, "small", false, tc0)} {
		c.Instance.Node = map[string]string{instA: "n1", instB: "n2", instC: "n3"}[c.Instance.UUID]
		h.must(c)
	}
	start := func(ref string) *proto.Instance {
		t.Helper()
		h.must(InstanceStart{Ref: ref, Agent: "a1", Key: taskKey, Now: tc0.Add(time.Minute)})
		return h.inst(ref)
	}
	if st := start("a").State; st != proto.InstanceBuilding {
		t.Fatalf("a: %s, want building", st)
	}
	// Per rack: r1 has one deploy running, so b waits; c (r2) goes.
	if st := start("b").State; st != proto.InstanceQueued {
		t.Fatalf("b (rack r1, one deploy running there, at most 1): %s, want queued", st)
	}
	if n, _ := h.f.Store().Node("n2"); n.ProvisionState != proto.StateAvailable || n.Task != "" {
		t.Fatalf("node n2 of a refused start: %s task %q, want available, untouched", n.ProvisionState, n.Task)
	}
	// Global: at most 1 in all.
	h.must(SettingsUpdate{Patch: proto.SettingsPatch{DeployMax: &one}})
	if st := start("c").State; st != proto.InstanceQueued {
		t.Fatalf("c (one deploy running in all, at most 1): %s, want queued", st)
	}
	two := 2
	h.must(SettingsUpdate{Patch: proto.SettingsPatch{DeployMax: &two}})
	if st := start("c").State; st != proto.InstanceBuilding {
		t.Fatalf("c with room: %s, want building", st)
	}
	// a's deploy ends (its write fails): b may start.
	h.stepResult("wa", h.inst("a").Task, proto.StepNameWrite, false, "no disk", tc0.Add(5*time.Minute))
	if st := h.inst("a").State; st != proto.InstanceError {
		t.Fatalf("a after a failed write: %s, want error", st)
	}
	if st := start("b").State; st != proto.InstanceBuilding {
		t.Fatalf("b once a's deploy ended: %s, want building", st)
	}
}

// TestInstanceDeployByBMC: the write passes: the node boots local disk
// with boot device disk and a reboot, the instance still building; the
// results of both intents make it running and the node active.
func TestInstanceDeployByBMC(t *testing.T) {
	for _, order := range []string{"boot device first", "reboot first"} {
		t.Run(order, func(t *testing.T) {
			h := instFleet(t)
			in := h.must(instCreate("web1", instA, "small", true, tc0)).(*proto.Instance)
			// A boot event while the ramdisk runs changes nothing.
			h.must(bootEvent("ramdisk", "script", tc0.Add(time.Minute)))
			if st := h.inst("web1").State; st != proto.InstanceBuilding {
				t.Fatalf("instance %s after the ramdisk's boot, want building", st)
			}
			gen := node1(h).BMCGeneration
			at := tc0.Add(10 * time.Minute)
			h.stepResult("w", in.Task, proto.StepNameWrite, true, "", at)
			n, got := node1(h), h.inst("web1")
			if got.State != proto.InstanceBuilding || got.Task != "" || got.BootGen != gen+2 {
				t.Fatalf("instance after the write: %s task %q boot gen %d, want building, no task, gen %d", got.State, got.Task, got.BootGen, gen+2)
			}
			if n.ProvisionState != proto.StateDeploying || n.Task != "" {
				t.Fatalf("node after the write: %s task %q, want deploying, no task", n.ProvisionState, n.Task)
			}
			wantDiskBootIntents(t, n, gen)
			if tk := h.task(in.Task); tk.State != proto.TaskSucceeded {
				t.Fatalf("deploy task %s, want succeeded", tk.State)
			}
			first, second := gen+1, gen+2
			firstAct, secondAct := proto.ActionBootDevice, proto.ActionPower
			if order == "reboot first" {
				first, second, firstAct, secondAct = second, first, secondAct, firstAct
			}
			h.must(bmcReport(first, firstAct, "", at.Add(time.Second)))
			if st := h.inst("web1").State; st != proto.InstanceBuilding {
				t.Fatalf("instance %s after one of the two intents, want building", st)
			}
			h.must(bmcReport(second, secondAct, "", at.Add(2*time.Second)))
			n, got = node1(h), h.inst("web1")
			if got.State != proto.InstanceRunning || n.ProvisionState != proto.StateActive || n.Boot.Kind != proto.BootLocalDisk || got.LastError != "" {
				t.Fatalf("after both intents: instance %s node %s boot %+v, want running, active, local disk", got.State, n.ProvisionState, n.Boot)
			}
			// A boot event later changes nothing more.
			before := instBytes(h)
			h.must(bootEvent("later", "script", at.Add(time.Hour)))
			if got := h.inst("web1"); got.State != proto.InstanceRunning || !got.StateSince.Equal(at.Add(2*time.Second)) {
				t.Fatalf("instance after a later boot: %s since %s, want running since the reboot (%s)", got.State, got.StateSince, before)
			}
		})
	}
}

// TestInstanceDeployBMCRefusedBootDevice: a BMC that refuses boot device
// disk: the reboot done still makes the instance running (the firmware's
// order boots the disk), and the history says so; a failed reboot does
// not.
func TestInstanceDeployBMCRefusedBootDevice(t *testing.T) {
	h := instFleet(t)
	in := h.must(instCreate("web1", instA, "small", true, tc0)).(*proto.Instance)
	gen := node1(h).BMCGeneration
	at := tc0.Add(10 * time.Minute)
	h.stepResult("w", in.Task, proto.StepNameWrite, true, "", at)
	h.must(bmcReport(gen+1, proto.ActionBootDevice, "persistent boot device not supported", at.Add(time.Second)))
	if st := h.inst("web1").State; st != proto.InstanceBuilding {
		t.Fatalf("instance %s before the reboot, want building", st)
	}
	h.must(bmcReport(gen+2, proto.ActionPower, "", at.Add(2*time.Second)))
	if st := h.inst("web1").State; st != proto.InstanceRunning {
		t.Fatalf("instance %s after the reboot, want running", st)
	}
	hs := h.f.Store().History(uuid1)
	found := false
	for _, e := range hs {
		found = found || strings.Contains(e.Message, "the BMC did not set boot device disk: persistent boot device not supported")
	}
	if !found {
		t.Errorf("no history event says the BMC refused the boot device")
	}

	// A failed reboot does not make it running.
	h2 := instFleet(t)
	in = h2.must(instCreate("web1", instA, "small", true, tc0)).(*proto.Instance)
	h2.stepResult("w", in.Task, proto.StepNameWrite, true, "", at)
	h2.must(bmcReport(gen+1, proto.ActionBootDevice, "", at.Add(time.Second)))
	h2.must(bmcReport(gen+2, proto.ActionPower, "BMC busy", at.Add(2*time.Second)))
	if got := h2.inst("web1"); got.State != proto.InstanceBuilding || !strings.Contains(got.LastError, "the reboot into the disk failed: BMC busy") {
		t.Fatalf("instance %s %q after a failed reboot, want building, saying the reboot failed", got.State, got.LastError)
	}
	// The operator powers it on; it takes the local-boot path: running,
	// the message gone.
	h2.must(bootEvent("on", "script", at.Add(time.Minute)))
	if got := h2.inst("web1"); got.State != proto.InstanceRunning || got.LastError != "" {
		t.Fatalf("instance %s %q after the local boot, want running without last_error", got.State, got.LastError)
	}
}

// TestInstanceDeployByBootEvent: after the switch to the disk, a boot
// event "script" makes the instance running; one from before the switch
// (delivered late) does nothing.
func TestInstanceDeployByBootEvent(t *testing.T) {
	h := instFleet(t)
	in := h.must(instCreate("web1", instA, "small", true, tc0)).(*proto.Instance)
	at := tc0.Add(10 * time.Minute)
	h.stepResult("w", in.Task, proto.StepNameWrite, true, "", at)
	// Served while the deploy ramdisk ran (before the switch), delivered
	// after it (a backlog).
	h.must(bootEvent("early", "script", at.Add(-time.Minute)))
	if st := h.inst("web1").State; st != proto.InstanceBuilding {
		t.Fatalf("instance %s after a boot event from before the switch, want building", st)
	}
	// Other boot steps are not the local-boot path.
	h.must(bootEvent("dhcp", "dhcp", at.Add(time.Minute)))
	if st := h.inst("web1").State; st != proto.InstanceBuilding {
		t.Fatalf("instance %s after a dhcp event, want building", st)
	}
	h.must(bootEvent("disk", "script", at.Add(2*time.Minute)))
	n, got := node1(h), h.inst("web1")
	if got.State != proto.InstanceRunning || n.ProvisionState != proto.StateActive || !got.StateSince.Equal(at.Add(2*time.Minute)) {
		t.Fatalf("after the local-boot path: instance %s since %s node %s, want running since the event, active", got.State, got.StateSince, n.ProvisionState)
	}
	hs := h.f.Store().History(uuid1)
	if !strings.Contains(hs[len(hs)-1].Message, "instance web1 running: seen taking the local-boot path") {
		t.Errorf("last history event %q, want the instance running, saying how", hs[len(hs)-1].Message)
	}
}

// TestInstanceDeployFails: a failed write: instance error with the
// reason, node failed naming it, its boot config back (no ramdisk),
// powered off.
func TestInstanceDeployFails(t *testing.T) {
	h := instFleet(t)
	in := h.must(instCreate("web1", instA, "small", true, tc0)).(*proto.Instance)
	h.stepResult("w", in.Task, proto.StepNameWrite, false, "sha256 mismatch at block 7", tc0.Add(10*time.Minute))
	got, n := h.inst("web1"), node1(h)
	if got.State != proto.InstanceError || got.Task != "" || !strings.Contains(got.LastError, "sha256 mismatch at block 7") {
		t.Fatalf("instance %s task %q last_error %q, want error naming the step's error", got.State, got.Task, got.LastError)
	}
	wantPoweredOffNotRamdisk(t, n, "instance web1: ")
	if !strings.Contains(n.LastError, "sha256 mismatch at block 7") || n.Boot != nil {
		t.Errorf("node last_error %q boot %+v, want the step's error and its own boot config (none) back", n.LastError, n.Boot)
	}
	if tk := h.task(in.Task); tk.State != proto.TaskFailed {
		t.Errorf("deploy task %s, want failed", tk.State)
	}
	if n.InstanceUUID != instA {
		t.Errorf("node instance %q, want still bound to web1 (deleted to free it)", n.InstanceUUID)
	}
}

// TestInstanceRescueImage: the request's image, else the instance's,
// else the flavor's; none is a 409 saying so; the image's own kernel.
func TestInstanceRescueImage(t *testing.T) {
	cases := []struct {
		name, flavor, own, asked, want, kernel string
	}{
		{"request's", "small", "rsc", "rsc2", "rsc2", "tk"},
		{"instance's", "small", "rsc", "", "rsc", "tk"},
		{"flavor's", "small", "", "", "frsc", "tk"},
		{"with its own kernel", "bare", "", "rsc-own", "rsc-own", "rk"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := instFleet(t)
			c := instCreate("web1", instA, tc.flavor, true, tc0)
			c.Instance.RescueImage = tc.own
			in := h.must(c).(*proto.Instance)
			h.stepResult("w", in.Task, proto.StepNameWrite, true, "", tc0.Add(10*time.Minute))
			h.must(bootEvent("disk", "script", tc0.Add(12*time.Minute)))
			tk := rescued(h, proto.RescueRequest{Image: tc.asked}, tc0.Add(time.Hour))
			if tk.Params["image"] != tc.want || tk.Kind != proto.TaskRescue {
				t.Fatalf("rescue task params %v, want image %s", tk.Params, tc.want)
			}
			n := node1(h)
			if n.Boot == nil || n.Boot.Kind != proto.BootRamdisk || n.Boot.Initrd == nil || n.Boot.Initrd.Name != tc.want ||
				n.Boot.Kernel == nil || n.Boot.Kernel.Name != tc.kernel {
				t.Fatalf("node boot %+v, want initrd %s, kernel %s", n.Boot, tc.want, tc.kernel)
			}
		})
	}
	t.Run("none", func(t *testing.T) {
		h := instFleet(t)
		in := h.must(instCreate("web1", instA, "bare", true, tc0)).(*proto.Instance)
		h.stepResult("w", in.Task, proto.StepNameWrite, true, "", tc0.Add(10*time.Minute))
		h.must(bootEvent("disk", "script", tc0.Add(12*time.Minute)))
		h.fails(InstanceRescue{Ref: "web1", Agent: "a1", Now: tc0.Add(time.Hour)}, proto.CodeWrongState, "instance web1 has no rescue image")
		h.fails(InstanceRescue{Ref: "web1", Request: proto.RescueRequest{Image: "disk"}, Agent: "a1", Now: tc0.Add(time.Hour)}, proto.CodeInvalid, "is a disk image, want a ramdisk image")
		h.fails(InstanceRescue{Ref: "web1", Request: proto.RescueRequest{Image: "nosuch"}, Agent: "a1", Now: tc0.Add(time.Hour)}, proto.CodeInvalid, `image "nosuch" does not exist`)
	})
	t.Run("not running", func(t *testing.T) {
		h := instFleet(t)
		h.must(instCreate("web1", instA, "small", true, tc0))
		h.fails(InstanceRescue{Ref: "web1", Agent: "a1", Now: tc0.Add(time.Hour)}, proto.CodeWrongState, "it is building; rescue is for a running instance")
	})
}

// TestInstanceRescueLife: rescue with a password (stored only as a salted
// hash), the rescue ramdisk reports in (rescue; its token and plan stay
// in the boot state; a replay changes nothing), unrescue (local disk,
// boot device disk and a reboot), running again.
func TestInstanceRescueLife(t *testing.T) {
	h := instFleet(t)
	deployed(h)
	gen := node1(h).BMCGeneration
	const password = "Pa55-w0rd-in-clear"
	at := tc0.Add(time.Hour)
	sum := sha256.Sum256([]byte("5a17" + password))
	if got := RescuePasswordHash("5a17", password); got != hex.EncodeToString(sum[:]) {
		t.Fatalf("RescuePasswordHash = %s, want the hex of SHA-256(salt+password)", got)
	}
	// The proposer hashes the password (as the API does): the command,
	// in the Raft log, does not hold it.
	h.must(InstanceRescue{Ref: "web1", TaskID: "t-rescue", Request: proto.RescueRequest{SSHKey: "ssh-ed25519 AAAA rescuer"}, Salt: "5a17",
		PasswordSHA256: RescuePasswordHash("5a17", password), Agent: "a1", By: "ops", Now: at})
	tk := h.task("t-rescue")
	if tk.Params["password_salt"] != "5a17" || tk.Params["password_sha256"] != hex.EncodeToString(sum[:]) || tk.Params["ssh_key"] != "ssh-ed25519 AAAA rescuer" {
		t.Fatalf("rescue task params %v, want the salt, SHA-256(salt+password) and the key", tk.Params)
	}
	if snap := stateBytes(t, h.f.Store()); bytes.Contains(snap, []byte(password)) {
		t.Fatal("the password is in the state in clear")
	}
	for i, e := range h.log {
		if bytes.Contains(e, []byte(password)) {
			t.Fatalf("log entry %d holds the password in clear", i+1)
		}
	}
	n := node1(h)
	if n.ProvisionState != proto.StateRescuing || n.Task != "t-rescue" || n.SavedBoot == nil || n.SavedBoot.Boot == nil ||
		n.SavedBoot.Boot.Kind != proto.BootLocalDisk || n.Boot.Kind != proto.BootRamdisk || n.Boot.Task != string(proto.TaskRescue) {
		t.Fatalf("node %s task %q boot %+v saved %+v, want rescuing, the rescue ramdisk, local disk saved", n.ProvisionState, n.Task, n.Boot, n.SavedBoot)
	}
	wantTaskBootIntents(t, n, gen)
	// A retried rescue is the same.
	before := instBytes(h)
	if got := h.must(InstanceRescue{Ref: "web1", TaskID: "t-other", Agent: "a1", Now: at.Add(time.Second)}).(*proto.Instance); got.Task != "t-rescue" || instBytes(h) != before {
		t.Fatalf("a retried rescue = task %s or changed the state", got.Task)
	}

	// The rescue ramdisk reports in.
	h.stepResult("r", "t-rescue", proto.StepNameRescue, true, "", at.Add(3*time.Minute))
	got, n := h.inst("web1"), node1(h)
	if got.State != proto.InstanceRescue || n.ProvisionState != proto.StateRescue || n.Task != "t-rescue" || n.Boot.Kind != proto.BootRamdisk {
		t.Fatalf("after the report: instance %s node %s task %q boot %+v, want rescue, rescue, the task kept, the ramdisk", got.State, n.ProvisionState, n.Task, n.Boot)
	}
	token := decide.TaskToken(taskKey, uuid1, "t-rescue")
	h.f.Store().ReadRack("r1", func(v state.RackView) {
		bn := decide.RackBootState(decide.RackInput(v)).Nodes[0]
		if bn.Boot.Kind != proto.BootRamdisk || bn.Boot.TaskToken != token || bn.Task == nil || bn.Task.ID != "t-rescue" {
			t.Errorf("boot state in rescue: %+v plan %+v, want the rescue ramdisk, its token and plan", bn.Boot, bn.Task)
		}
	})
	// A rebooted rescue ramdisk reports in again: nothing changes.
	before = instBytes(h)
	h.mustReport("r2-start", proto.StepReport{Task: "t-rescue", Step: proto.StepNameRescue, Index: 0, Event: proto.StepEventStart, Boot: "boot-2"}, at.Add(20*time.Minute))
	h.mustReport("r2-result", proto.StepReport{Task: "t-rescue", Step: proto.StepNameRescue, Index: 0, Event: proto.StepEventResult, Passed: true}, at.Add(20*time.Minute))
	if instBytes(h) != before {
		t.Fatal("a rebooted rescue ramdisk's reports changed the state")
	}
	// An operator may not abort it as a node task.
	h.fails(TaskAbort{Ref: "n1", Task: "t-rescue", By: "ops", Agent: "a1", Now: at}, proto.CodeWrongState, "delete or unrescue the instance instead")

	// Unrescue.
	gen = node1(h).BMCGeneration
	ut := at.Add(30 * time.Minute)
	got = h.must(InstanceUnrescue{Ref: "web1", Agent: "a1", By: "ops", Now: ut}).(*proto.Instance)
	n = node1(h)
	if got.State != proto.InstanceUnrescuing || n.ProvisionState != proto.StateUnrescuing || n.Task != "" {
		t.Fatalf("unrescue: instance %s node %s task %q, want unrescuing, no task", got.State, n.ProvisionState, n.Task)
	}
	wantDiskBootIntents(t, n, gen)
	h.f.Store().ReadRack("r1", func(v state.RackView) {
		if bn := decide.RackBootState(decide.RackInput(v)).Nodes[0]; bn.Boot.Kind != proto.BootLocalDisk || bn.Boot.TaskToken != "" || bn.Task != nil {
			t.Errorf("boot state after unrescue: %+v plan %+v, want local disk, no token, no plan", bn.Boot, bn.Task)
		}
	})
	// A retried unrescue is the same.
	before = instBytes(h)
	h.must(InstanceUnrescue{Ref: "web1", Agent: "a1", Now: ut.Add(time.Second)})
	if instBytes(h) != before {
		t.Fatal("a retried unrescue changed the state")
	}
	h.must(bmcReport(gen+1, proto.ActionBootDevice, "", ut.Add(time.Minute)))
	h.must(bmcReport(gen+2, proto.ActionPower, "", ut.Add(2*time.Minute)))
	got, n = h.inst("web1"), node1(h)
	if got.State != proto.InstanceRunning || n.ProvisionState != proto.StateActive || n.Boot.Kind != proto.BootLocalDisk {
		t.Fatalf("after the reboot: instance %s node %s boot %+v, want running, active, local disk", got.State, n.ProvisionState, n.Boot)
	}
	// The rescue ramdisk's reports after unrescue change nothing.
	before = instBytes(h)
	h.mustReport("r3", proto.StepReport{Task: "t-rescue", Step: proto.StepNameRescue, Index: 0, Event: proto.StepEventResult, Passed: true}, ut.Add(3*time.Minute))
	if instBytes(h) != before {
		t.Fatal("a rescue report after unrescue changed the state")
	}
	if snap := stateBytes(t, h.f.Store()); bytes.Contains(snap, []byte(password)) {
		t.Fatal("the password is in the state in clear")
	}
	// Unrescue of a running instance is a no-op; of a building one, refused.
	h.fails(InstanceUnrescue{Ref: "nosuch", Agent: "a1", Now: ut}, proto.CodeNotFound, "not found")
}

// TestInstanceUnrescueWhileRescuing: unrescue before the rescue ramdisk
// reported in aborts the rescue task; its late report changes nothing.
func TestInstanceUnrescueWhileRescuing(t *testing.T) {
	h := instFleet(t)
	deployed(h)
	at := tc0.Add(time.Hour)
	rescued(h, proto.RescueRequest{}, at)
	gen := node1(h).BMCGeneration
	h.must(InstanceUnrescue{Ref: "web1", Agent: "a1", By: "ops", Now: at.Add(time.Minute)})
	if tk := h.task("t-rescue"); tk.State != proto.TaskAborted || !strings.Contains(tk.Error, "unrescued before the rescue ramdisk reported in") {
		t.Fatalf("rescue task %s %q, want aborted saying why", tk.State, tk.Error)
	}
	n := node1(h)
	if st := h.inst("web1").State; st != proto.InstanceUnrescuing || n.ProvisionState != proto.StateUnrescuing || n.Task != "" {
		t.Fatalf("instance %s node %s task %q, want unrescuing, no task", st, n.ProvisionState, n.Task)
	}
	wantDiskBootIntents(t, n, gen)
	before := instBytes(h)
	h.mustReport("late", proto.StepReport{Task: "t-rescue", Step: proto.StepNameRescue, Index: 0, Event: proto.StepEventResult, Passed: true}, at.Add(2*time.Minute))
	if instBytes(h) != before {
		t.Fatal("the aborted rescue's report changed the state")
	}
	h.must(bootEvent("disk", "script", at.Add(3*time.Minute)))
	if st := h.inst("web1").State; st != proto.InstanceRunning {
		t.Fatalf("instance %s after the disk boot, want running", st)
	}
}

// TestInstanceDelete: from every state a delete cleans the node (a
// queued one is gone at once); the clean's end frees the node.
func TestInstanceDelete(t *testing.T) {
	t.Run("queued", func(t *testing.T) {
		h := instFleet(t)
		h.must(instCreate("web1", instA, "small", false, tc0))
		if v := h.must(InstanceDelete{Ref: "web1", By: "ops", Now: tc0.Add(time.Minute)}); v != nil {
			t.Fatalf("delete of a queued instance = %+v, want nothing (gone)", v)
		}
		if _, ok := h.f.Store().Instance("web1"); ok {
			t.Fatal("a deleted queued instance is still there")
		}
		if n := node1(h); n.InstanceUUID != "" || n.ProvisionState != proto.StateAvailable || n.Task != "" {
			t.Fatalf("node %s instance %q task %q, want available, unbound", n.ProvisionState, n.InstanceUUID, n.Task)
		}
		// The node takes a new instance.
		h.must(instCreate("web2", instB, "small", false, tc0.Add(2*time.Minute)))
	})
	setups := map[string]func(h *harness){
		"running": func(h *harness) { deployed(h) },
		"building": func(h *harness) {
			h.must(instCreate("web1", instA, "small", true, tc0))
		},
		"rescuing": func(h *harness) {
			deployed(h)
			rescued(h, proto.RescueRequest{}, tc0.Add(time.Hour))
		},
		"rescue": func(h *harness) {
			deployed(h)
			rescued(h, proto.RescueRequest{}, tc0.Add(time.Hour))
			h.stepResult("r", "t-rescue", proto.StepNameRescue, true, "", tc0.Add(time.Hour+time.Minute))
		},
		"unrescuing": func(h *harness) {
			deployed(h)
			rescued(h, proto.RescueRequest{}, tc0.Add(time.Hour))
			h.must(InstanceUnrescue{Ref: "web1", Agent: "a1", Now: tc0.Add(time.Hour + time.Minute)})
		},
		"error": func(h *harness) {
			in := h.must(instCreate("web1", instA, "small", true, tc0)).(*proto.Instance)
			h.stepResult("w", in.Task, proto.StepNameWrite, false, "disk too small", tc0.Add(time.Minute))
		},
	}
	for name, setup := range setups {
		t.Run(name, func(t *testing.T) {
			for _, ending := range []string{"cleaned", "clean fails"} {
				t.Run(ending, func(t *testing.T) {
					h := instFleet(t)
					setup(h)
					prev := h.inst("web1").Task
					gen := node1(h).BMCGeneration
					dt := tc0.Add(2 * time.Hour)
					got := h.must(InstanceDelete{Ref: "web1", Agent: "a1", By: "ops", Now: dt}).(*proto.Instance)
					if got.State != proto.InstanceDeleting || got.Task == "" {
						t.Fatalf("delete = %+v, want deleting with a clean task", got)
					}
					if prev != "" {
						if tk := h.task(prev); !tk.State.Ended() {
							t.Fatalf("the %s task %s is %s after the delete, want ended", name, prev, tk.State)
						}
					}
					tk := h.task(got.Task)
					n := node1(h)
					if tk.Kind != proto.TaskClean || n.ProvisionState != proto.StateCleaning || n.Task != tk.ID ||
						n.Boot == nil || n.Boot.Task != string(proto.TaskClean) {
						t.Fatalf("clean task %s node %s task %q boot %+v, want cleaning with the clean task's ramdisk", tk.Kind, n.ProvisionState, n.Task, n.Boot)
					}
					wantTaskBootIntents(t, n, gen)
					// A repeated delete is the same.
					before := instBytes(h)
					h.must(InstanceDelete{Ref: "web1", Agent: "a1", Now: dt.Add(time.Second)})
					if instBytes(h) != before {
						t.Fatal("a repeated delete changed the state")
					}
					if ending == "clean fails" {
						h.stepResult("e", tk.ID, proto.StepNameErase, false, "wipefs: device busy", dt.Add(5*time.Minute))
						if got := h.inst("web1"); got.State != proto.InstanceError || !strings.Contains(got.LastError, "wipefs: device busy") {
							t.Fatalf("instance %s last_error %q after a failed clean, want error naming it", got.State, got.LastError)
						}
						wantPoweredOffNotRamdisk(t, node1(h), "wipefs: device busy")
						return
					}
					h.stepResult("e", tk.ID, proto.StepNameErase, true, "", dt.Add(5*time.Minute))
					if _, ok := h.f.Store().Instance("web1"); ok {
						t.Fatal("the instance is still there after its node was cleaned")
					}
					n = node1(h)
					if n.ProvisionState != proto.StateAvailable || n.InstanceUUID != "" || n.Task != "" || n.Boot != nil || n.SavedBoot != nil || n.LastError != "" {
						t.Fatalf("node after the clean: %s instance %q task %q boot %+v saved %+v last_error %q, want available and clear",
							n.ProvisionState, n.InstanceUUID, n.Task, n.Boot, n.SavedBoot, n.LastError)
					}
					if in := lastIntent(n); in.Action != proto.ActionPower || in.Power != proto.PowerTargetOff {
						t.Fatalf("last intent %+v, want power off", in)
					}
					h.f.Store().ReadRack("r1", func(v state.RackView) {
						if bn := decide.RackBootState(decide.RackInput(v)).Nodes[0]; bn.Boot.Kind == proto.BootRamdisk || bn.Boot.TaskToken != "" || bn.Task != nil {
							t.Errorf("boot state after the clean: %+v plan %+v, want no ramdisk, no token", bn.Boot, bn.Task)
						}
					})
				})
			}
		})
	}
	t.Run("full erase", func(t *testing.T) {
		h := instFleet(t)
		h.must(FlavorPut{Flavor: proto.Flavor{Name: "wipe", FullErase: true}, Create: true})
		in := h.must(instCreate("web1", instA, "wipe", true, tc0)).(*proto.Instance)
		h.stepResult("w", in.Task, proto.StepNameWrite, true, "", tc0.Add(time.Minute))
		got := h.must(InstanceDelete{Ref: "web1", Agent: "a1", Now: tc0.Add(time.Hour)}).(*proto.Instance)
		if tk := h.task(got.Task); tk.Params["full"] != "true" || time.Duration(tk.Timeout) != 24*time.Hour {
			t.Fatalf("clean task params %v timeout %s, want full=true, 24h", tk.Params, time.Duration(tk.Timeout))
		}
	})
	t.Run("no agent", func(t *testing.T) {
		h := instFleet(t)
		deployed(h)
		h.fails(InstanceDelete{Ref: "web1", Now: tc0.Add(time.Hour)}, proto.CodeInternal, "rack agent")
	})
}

// TestInstanceTimeout: each busy state times out (only past its timeout)
// to error, the node failed, booting no ramdisk, powered off.
func TestInstanceTimeout(t *testing.T) {
	start := tc0.Add(time.Hour) // when the busy state starts in each case
	cases := map[proto.InstanceState]func(h *harness){
		proto.InstanceBuilding: func(h *harness) {
			h.must(instCreate("web1", instA, "small", true, start))
		},
		proto.InstanceRescuing: func(h *harness) {
			deployed(h)
			rescued(h, proto.RescueRequest{}, start)
		},
		proto.InstanceUnrescuing: func(h *harness) {
			deployed(h)
			rescued(h, proto.RescueRequest{}, start.Add(-time.Minute))
			h.stepResult("r", "t-rescue", proto.StepNameRescue, true, "", start.Add(-time.Minute))
			h.must(InstanceUnrescue{Ref: "web1", Agent: "a1", Now: start})
		},
		proto.InstanceDeleting: func(h *harness) {
			deployed(h)
			h.must(InstanceDelete{Ref: "web1", Agent: "a1", Now: start})
		},
	}
	for st, setup := range cases {
		t.Run(string(st), func(t *testing.T) {
			h := instFleet(t)
			setup(h)
			if got := h.inst("web1"); got.State != st || !got.StateSince.Equal(start) {
				t.Fatalf("setup: instance %s since %s, want %s since %s", got.State, got.StateSince, st, start)
			}
			task := h.inst("web1").Task
			limit := proto.InstanceTimeouts[st]
			before := instBytes(h)
			if v := h.must(InstanceTimeout{Ref: "web1", State: st, Agent: "a1", Now: start.Add(limit)}); v != nil || instBytes(h) != before {
				t.Fatalf("a timeout at exactly %s = %+v or changed the state, want nothing", limit, v)
			}
			// Another state's timeout (the instance moved on) does nothing.
			if v := h.must(InstanceTimeout{Ref: "web1", State: proto.InstanceRunning, Agent: "a1", Now: start.Add(10 * limit)}); v != nil || instBytes(h) != before {
				t.Fatalf("a timeout for another state = %+v or changed the state", v)
			}
			if task != "" {
				// While its task runs, the task's own progress timeout
				// applies (a full erase takes hours, reporting progress).
				if v := h.must(InstanceTimeout{Ref: "web1", State: st, Agent: "a1", Now: start.Add(limit + time.Second)}); v != nil || instBytes(h) != before {
					t.Fatalf("an instance timeout while its task %s runs = %+v or changed the state, want nothing", task, v)
				}
				tk := h.task(task)
				h.must(TaskTimeout{Task: task, Agent: "a1", Now: tk.ProgressAt.Add(time.Duration(tk.Timeout) + time.Second)})
				got := h.inst("web1")
				if got.State != proto.InstanceError || !strings.Contains(got.LastError, "no progress for") {
					t.Fatalf("task timed out: instance %s last_error %q, want error saying no progress", got.State, got.LastError)
				}
				wantPoweredOffNotRamdisk(t, node1(h), "no progress for")
				if tk := h.task(task); tk.State != proto.TaskFailed || tk.CurrentStep() == nil || tk.CurrentStep().State != proto.StepFailed {
					t.Errorf("the instance's task %s is %s, want failed with its step failed", task, tk.State)
				}
				return
			}
			got := h.must(InstanceTimeout{Ref: "web1", State: st, Agent: "a1", Now: start.Add(limit + time.Second)}).(*proto.Instance)
			if got.State != proto.InstanceError || !strings.Contains(got.LastError, string(st)+" for ") || !strings.Contains(got.LastError, "longer than its timeout ("+limit.String()+")") {
				t.Fatalf("timed out: instance %s last_error %q, want error naming the state and its timeout", got.State, got.LastError)
			}
			wantPoweredOffNotRamdisk(t, node1(h), "longer than its timeout")
			if task != "" {
				if tk := h.task(task); tk.State != proto.TaskFailed {
					t.Errorf("the instance's task %s is %s, want failed", task, tk.State)
				}
			}
			before = instBytes(h)
			if v := h.must(InstanceTimeout{Ref: "web1", State: st, Agent: "a1", Now: start.Add(2 * limit)}); v != nil || instBytes(h) != before {
				t.Fatalf("a second timeout = %+v or changed the state", v)
			}
		})
	}
	t.Run("deleting from rescue", func(t *testing.T) {
		h := instFleet(t)
		deployed(h)
		rescued(h, proto.RescueRequest{}, tc0.Add(time.Hour))
		h.stepResult("r", "t-rescue", proto.StepNameRescue, true, "", tc0.Add(time.Hour+time.Minute))
		h.must(InstanceDelete{Ref: "web1", Agent: "a1", Now: start.Add(time.Hour)})
		clean := h.task(h.inst("web1").Task)
		h.must(TaskTimeout{Task: clean.ID, Agent: "a1", Now: clean.ProgressAt.Add(time.Duration(clean.Timeout) + time.Second)})
		if st := h.inst("web1").State; st != proto.InstanceError {
			t.Fatalf("instance %s, want error", st)
		}
		wantPoweredOffNotRamdisk(t, node1(h), "no progress for")
	})
}

// TestInstancePatch sets and clears the rescue image.
func TestInstancePatch(t *testing.T) {
	h := instFleet(t)
	h.must(instCreate("web1", instA, "small", false, tc0))
	set, clear, disk, none := "rsc", "", "disk", "nosuch"
	got := h.must(InstancePatch{Ref: "web1", Patch: proto.InstancePatch{RescueImage: &set}, Now: tc0.Add(time.Minute)}).(*proto.Instance)
	if got.RescueImage != "rsc" || h.inst(instA).RescueImage != "rsc" || !got.UpdatedAt.Equal(tc0.Add(time.Minute)) {
		t.Fatalf("patch set = %+v, want rescue image rsc", got)
	}
	if got := h.must(InstancePatch{Ref: "web1", Now: tc0}).(*proto.Instance); got.RescueImage != "rsc" {
		t.Fatalf("an empty patch changed the rescue image to %q", got.RescueImage)
	}
	h.fails(InstancePatch{Ref: "web1", Patch: proto.InstancePatch{RescueImage: &disk}, Now: tc0}, proto.CodeInvalid, "rescue_image: image \"disk\" is a disk image")
	h.fails(InstancePatch{Ref: "web1", Patch: proto.InstancePatch{RescueImage: &none}, Now: tc0}, proto.CodeInvalid, `image "nosuch" does not exist`)
	h.fails(InstancePatch{Ref: "nosuch", Patch: proto.InstancePatch{RescueImage: &set}, Now: tc0}, proto.CodeNotFound, "not found")
	if got := h.must(InstancePatch{Ref: instA, Patch: proto.InstancePatch{RescueImage: &clear}, Now: tc0}).(*proto.Instance); got.RescueImage != "" {
		t.Fatalf("patch clear = %q, want none", got.RescueImage)
	}
}

// TestInstanceTaskAbortRefused: an instance's task is not a node task an
// operator may abort.
func TestInstanceTaskAbortRefused(t *testing.T) {
	h := instFleet(t)
	in := h.must(instCreate("web1", instA, "small", true, tc0)).(*proto.Instance)
	h.fails(TaskAbort{Ref: "n1", Task: in.Task, By: "ops", Agent: "a1", Now: tc0.Add(time.Minute)}, proto.CodeWrongState,
		"is instance "+instA+"'s deploy: delete or unrescue the instance instead")
	h.fails(taskCreate("t-1", proto.TaskDeploy, map[string]string{"image": "disk"}), proto.CodeInvalid, "deploy, clean and rescue come with instances")
}

// TestInstanceSnapshotMidRescue: a snapshot taken in rescue keeps the
// instance, node, task and token; the same log applied to a fresh FSM
// (a new leader) gives a byte-identical snapshot; the restored replica
// goes on to unrescue.
func TestInstanceSnapshotMidRescue(t *testing.T) {
	h := instFleet(t)
	deployed(h)
	const password = "Snap-Pa55word"
	// A password in the request (an older proposer) is hashed by Apply.
	if tk := rescued(h, proto.RescueRequest{Password: password}, tc0.Add(time.Hour)); tk.Params["password_sha256"] != RescuePasswordHash("5a17", password) {
		t.Fatalf("rescue task params %v, want the password's salted hash", tk.Params)
	}
	h.stepResult("r", "t-rescue", proto.StepNameRescue, true, "", tc0.Add(time.Hour+time.Minute))

	snap := stateBytes(t, h.f.Store())
	if bytes.Contains(snap, []byte(password)) {
		t.Fatal("the snapshot holds the password in clear")
	}
	g := New(state.New(), nil)
	if err := g.Store().Restore(bytes.NewReader(snap)); err != nil {
		t.Fatal(err)
	}
	re := New(state.New(), nil)
	for i, e := range h.log {
		if r := re.ApplyBytes(uint64(i+1), e); r.Err != nil {
			t.Fatalf("replaying entry %d: %v", i+1, r.Err)
		}
	}
	if !bytes.Equal(snap, stateBytes(t, re.Store())) {
		t.Fatal("the same log applied to a fresh FSM gave a different snapshot")
	}
	for _, s := range []*state.Store{g.Store(), re.Store()} {
		in, _ := s.Instance("web1")
		n, _ := s.Node(uuid1)
		tk, _ := s.Task("t-rescue")
		if in.State != proto.InstanceRescue || n.ProvisionState != proto.StateRescue || n.Task != "t-rescue" || tk == nil ||
			n.SavedBoot == nil || n.SavedBoot.Boot.Kind != proto.BootLocalDisk {
			t.Fatalf("restored: instance %s node %s task %q saved %+v, want rescue with the task and local disk saved", in.State, n.ProvisionState, n.Task, n.SavedBoot)
		}
		s.ReadRack("r1", func(v state.RackView) {
			if bn := decide.RackBootState(decide.RackInput(v)).Nodes[0]; bn.Boot.TaskToken != decide.TaskToken(taskKey, uuid1, "t-rescue") || bn.Task == nil {
				t.Errorf("restored boot state: token %q plan %+v, want the rescue token and plan", bn.Boot.TaskToken, bn.Task)
			}
		})
	}
	// The restored replica (a new leader) unrescues.
	h2 := &harness{t: t, f: g, index: h.index, seq: h.seq}
	gen := node1(h2).BMCGeneration
	h2.must(InstanceUnrescue{Ref: "web1", Agent: "a1", Now: tc0.Add(2 * time.Hour)})
	h2.must(bmcReport(gen+1, proto.ActionBootDevice, "", tc0.Add(2*time.Hour+time.Minute)))
	h2.must(bmcReport(gen+2, proto.ActionPower, "", tc0.Add(2*time.Hour+2*time.Minute)))
	if in := h2.inst("web1"); in.State != proto.InstanceRunning {
		t.Fatalf("restored replica: instance %s after unrescue and reboot, want running", in.State)
	}
}

// TestInstanceStartWaitsOutMaintenance: a queued instance whose node was
// put in maintenance after the bind stays queued (maintenance keeps the
// scheduler and a forced create off a node; a deploy would power-cycle
// it under the operators' hands); it starts once the node is out of
// maintenance.
func TestInstanceStartWaitsOutMaintenance(t *testing.T) {
	h := instFleet(t)
	h.must(instCreate("web1", instA, "small", false, tc0))
	h.must(NodeSetMaintenance{Ref: "n1", Maintenance: true, Reason: "PSU swap", Now: tc0})
	before := instBytes(h)
	if v := h.must(InstanceStart{Ref: "web1", Agent: "a1", Key: taskKey, Now: tc0.Add(time.Minute)}); v != nil || instBytes(h) != before {
		t.Fatalf("start on a node in maintenance = %+v or changed the state, want it to stay queued", v)
	}
	h.must(NodeSetMaintenance{Ref: "n1", Maintenance: false, Now: tc0.Add(2 * time.Minute)})
	h.must(InstanceStart{Ref: "web1", Agent: "a1", Key: taskKey, Now: tc0.Add(3 * time.Minute)})
	if st := h.inst("web1").State; st != proto.InstanceBuilding {
		t.Fatalf("instance %s once the node left maintenance, want building", st)
	}
}

// TestInstanceNodeHeldByInstance: an operator may not move a node that
// holds an instance (manage a failed one, then provide it, would leave
// an instance no delete can clean: undeploy is not allowed from
// available); the instance's delete is the way, and it works from error.
func TestInstanceNodeHeldByInstance(t *testing.T) {
	h := instFleet(t)
	in := h.must(instCreate("web1", instA, "small", true, tc0)).(*proto.Instance)
	h.stepResult("w", in.Task, proto.StepNameWrite, false, "no disk", tc0.Add(time.Minute))
	if n := node1(h); n.ProvisionState != proto.StateFailed {
		t.Fatalf("node %s, want failed", n.ProvisionState)
	}
	h.fails(NodeProvision{Ref: "n1", Event: "manage", Actor: proto.ActorOperator, Now: tc0.Add(2 * time.Minute)},
		proto.CodeWrongState, "node n1 holds instance web1 ("+instA+"): delete the instance")
	got := h.must(InstanceDelete{Ref: "web1", Agent: "a1", Now: tc0.Add(3 * time.Minute)}).(*proto.Instance)
	h.stepResult("e", got.Task, proto.StepNameErase, true, "", tc0.Add(4*time.Minute))
	if n := node1(h); n.ProvisionState != proto.StateAvailable || n.InstanceUUID != "" {
		t.Fatalf("node %s instance %q after the delete, want available, free", n.ProvisionState, n.InstanceUUID)
	}
	// A free node is the operator's again.
	h.must(NodeProvision{Ref: "n1", Event: "manage", Actor: proto.ActorOperator, Now: tc0.Add(5 * time.Minute)})
	// A queued instance's node, too, stays as it is.
	h.must(NodeProvision{Ref: "n1", Event: "provide", Actor: proto.ActorOperator, Now: tc0.Add(6 * time.Minute)})
	h.must(instCreate("web2", instB, "small", false, tc0.Add(7*time.Minute)))
	h.fails(NodeProvision{Ref: "n1", Event: "manage", Actor: proto.ActorOperator, Now: tc0.Add(8 * time.Minute)},
		proto.CodeWrongState, "holds instance web2")
}

// TestInstanceStartCannotStart: a bound, queued instance whose deploy
// cannot start (here the node lost its BMC after the bind) goes to error
// with the reason rather than stay queued forever, and deleting it is
// immediate (nothing ran on the node).
func TestInstanceStartCannotStart(t *testing.T) {
	h := instFleet(t)
	h.must(instCreate("a", instA, "small", false, tc0))
	n := node1(h).Clone()
	n.BMC = proto.BMC{}
	h.putNode(n)
	h.must(InstanceStart{Ref: "a", Agent: "a1", Key: taskKey, Now: tc0.Add(time.Minute)})
	in := h.inst("a")
	if in.State != proto.InstanceError || !strings.Contains(in.LastError, "the deploy could not start") || !strings.Contains(in.LastError, "no BMC") {
		t.Fatalf("instance = %s %q, want error saying the deploy could not start for want of a BMC", in.State, in.LastError)
	}
	if n := node1(h); n.ProvisionState != proto.StateAvailable || n.Task != "" || n.Boot != nil {
		t.Fatalf("node = %s task %q boot %+v: the failed start touched it", n.ProvisionState, n.Task, n.Boot)
	}
	h.must(InstanceDelete{Ref: "a", Now: tc0.Add(2 * time.Minute)})
	if _, ok := h.f.Store().Instance("a"); ok {
		t.Fatal("the instance is still there after its delete")
	}
	if n := node1(h); n.InstanceUUID != "" || n.ProvisionState != proto.StateAvailable {
		t.Fatalf("node = %s holding %q, want available and free", n.ProvisionState, n.InstanceUUID)
	}
}

// TestInstanceRescueForgedInventory: a rescue image (chosen by a user)
// that reports an inventory with its result does not replace the node's:
// only inspect and raid tasks re-inventory.
func TestInstanceRescueForgedInventory(t *testing.T) {
	h := instFleet(t)
	deployed(h)
	before := string(node1(h).Inventory)
	rescued(h, proto.RescueRequest{}, tc0.Add(time.Hour))
	at := tc0.Add(time.Hour + time.Minute)
	h.mustReport("rs", proto.StepReport{Task: "t-rescue", Step: proto.StepNameRescue, Index: 0, Event: proto.StepEventStart, Boot: "b"}, at)
	forged := &proto.Inventory{Version: proto.InventoryVersion, System: proto.System{Vendor: "Forged", Product: "Big"},
		CPUs: proto.CPUs{Count: 512}, Disks: []proto.Disk{{Name: "vda", Serial: "X", SizeBytes: 1 << 50}}}
	h.mustReport("rr", proto.StepReport{Task: "t-rescue", Step: proto.StepNameRescue, Index: 0, Event: proto.StepEventResult, Passed: true,
		Result: json.RawMessage(`{"serial_shell":true}`), Inventory: forged}, at)
	if got := h.inst("web1").State; got != proto.InstanceRescue {
		t.Fatalf("instance %s, want rescue", got)
	}
	if string(node1(h).Inventory) != before {
		t.Fatalf("the rescue image's inventory replaced the node's: %s", node1(h).Inventory)
	}
}
