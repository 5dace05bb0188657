//go:build linux

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/ops/netlab"
	"github.com/metalfleet/metalfleet/ops/testkit"
	"github.com/metalfleet/metalfleet/proto"
)

// bmcVM is the hardware of the VM behind the virtual BMC.
var bmcVM = vmSpec{
	MAC:          "52:54:00:e2:e0:11",
	UUID:         "5e2e0a1c-7d3b-4c9e-8f21-e2e000000011",
	Manufacturer: "Metalfleet",
	Product:      "LabVM-BMC",
	Serial:       "E2E-0011",
	MemMiB:       256,
	CPUs:         1,
}

// needBMC: what the out-of-band tests need besides the lab's own.
func needBMC(t *testing.T) {
	e2eNeed(t, map[string]string{
		"/dev/net/tun":                      "tun device",
		"/usr/lib/ipxe/qemu/efi-virtio.rom": "package ipxe-qemu",
		"/usr/bin/ipmi_sim":                 "package openipmi",
		"/usr/bin/ipmitool":                 "package ipmitool",
		"/bin/busybox":                      "package busybox-static",
	})
}

// TestVirtualBMCQEMU checks the virtual BMC alone, with ipmitool as the
// client: power on, the boot device, a reset, power off, and SOL to the
// VM's shell. When it fails, the lab is at fault, not Metalfleet.
func TestVirtualBMCQEMU(t *testing.T) {
	needBMC(t)
	l := newLab(t, "ra")
	l.images = ramdisk(t, t.TempDir())
	v := newVBMC(t, l, 1, bmcVM, "password")
	ipmi := func(args ...string) string {
		t.Helper()
		out, err := v.ipmitool(args...)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(out)
	}
	if got := ipmi("chassis", "power", "status"); got != "Chassis Power is off" {
		t.Fatalf("power status at start: %q, want off", got)
	}
	if out, err := v.ipmitoolAs("wrong", "chassis", "power", "status"); err == nil {
		t.Errorf("a wrong password was accepted: %s", out)
	}
	ipmi("chassis", "bootdev", "pxe")
	if got := ipmi("chassis", "bootparam", "get", "5"); !strings.Contains(got, "PXE") {
		t.Errorf("boot device after bootdev pxe: %s", got)
	}
	t0 := time.Now()
	ipmi("chassis", "power", "on")
	if !v.On() {
		t.Fatal("power on: QEMU does not run")
	}
	if s := v.Starts(); len(s) != 1 || s[0].Boot != bootPXE {
		t.Fatalf("starts %+v, want one PXE start", s)
	}
	t.Logf("ipmitool power on to QEMU started: %.0f ms", v.Starts()[0].At.Sub(t0).Seconds()*1000)
	if got := ipmi("chassis", "power", "status"); got != "Chassis Power is on" {
		t.Errorf("power status: %q, want on", got)
	}
	// Once: the next reset boots the installed OS (QEMU restarted).
	ipmi("chassis", "power", "reset")
	if s := v.Starts(); len(s) != 2 || s[1].Boot != bootDefault {
		t.Fatalf("starts %+v, want a second start booting the default device", s)
	}
	testkit.EventuallyEvery(t, 90*time.Second, 100*time.Millisecond, "the installed OS to boot", func() bool { return v.SerialCount(osMarker) >= 1 })
	t.Logf("installed OS up %.1fs after the reset", time.Since(v.Starts()[1].At).Seconds())
	// A reset with the same boot device is a system_reset.
	pid := v.Pid()
	ipmi("chassis", "power", "reset")
	if v.Pid() != pid || v.Resets() != 1 {
		t.Errorf("reset: pid %d (was %d), resets %d, want the same process reset once", v.Pid(), pid, v.Resets())
	}
	testkit.EventuallyEvery(t, 90*time.Second, 100*time.Millisecond, "the installed OS to boot again", func() bool { return v.SerialCount(osMarker) >= 2 })
	// SOL: ipmitool's serial console reaches the OS's shell.
	testkit.EventuallyEvery(t, 60*time.Second, 100*time.Millisecond, "ipmi_sim to connect SOL to the VM's serial port", v.SOLConnected)
	sol := exec.Command("ip", "netns", "exec", l.NS, "ipmitool", "-I", "lanplus", "-C", "3", "-H", v.Addr, "-U", v.User, "-P", v.Password, "sol", "activate")
	var solOut testkit.SyncBuffer
	sol.Stdout, sol.Stderr = &solOut, &solOut
	sol.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	in, err := sol.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := sol.Start(); err != nil {
		t.Fatal(err)
	}
	solDone := make(chan struct{})
	go func() { _ = sol.Wait(); close(solDone) }()
	t.Cleanup(func() {
		select {
		case <-solDone:
		default:
			_ = sol.Process.Kill()
			<-solDone
		}
	})
	var typed time.Time
	testkit.EventuallyEvery(t, 60*time.Second, 50*time.Millisecond, "ipmitool sol activate to run a command in the VM's shell", func() bool {
		if strings.Contains(cleanConsole([]byte(solOut.String())), "SOL-OK-42") {
			return true
		}
		if time.Since(typed) > 3*time.Second {
			_, _ = io.WriteString(in, "echo SOL-OK-$((6*7))\r")
			typed = time.Now()
		}
		return false
	})
	_, _ = io.WriteString(in, "\r~.")
	select {
	case <-solDone:
	case <-time.After(10 * time.Second):
		t.Errorf("ipmitool sol activate did not leave on ~.")
	}
	// Soft off: the power button; the OS powers off.
	ipmi("chassis", "power", "soft")
	testkit.Eventually(t, 60*time.Second, "the OS to power off after the power button", func() bool { return !v.On() })
	if got := ipmi("chassis", "power", "status"); got != "Chassis Power is off" {
		t.Errorf("power status: %q, want off", got)
	}
}

// Bounds of the out-of-band test. The installed OS boots in about 7 s on
// an idle machine, several times that on two busy cores under TCG.
const (
	oobBootTimeout = 150 * time.Second // power-on to the OS's shell, or to a DHCP request
	oobCLITimeout  = 150 * time.Second // one CLI command (power --wait waits for the BMC)
	syncTimeout    = 60 * time.Second  // a change at the BMC to the node's power_state
	oobSyncEvery   = "2s"              // the agent's --power-sync-interval
	pxeRuns        = 3                 // power-on-to-DHCP measurements
)

// TestOutOfBandQEMU drives a QEMU VM through its virtual BMC (ipmi_sim,
// RMCP+ over UDP in the lab's namespace) with the real coordinator, rack
// agent and CLI, as an operator would: a wrong BMC password leaves a node
// enrolled with a clear last_error; manage verifies the BMC before the node
// is manageable; power on, reboot and off through the API change the VM's
// power; the serial console (SOL) reaches the VM's shell, one keyboard at a
// time, with --force, read-only watchers and the kept console log; power
// changes made at the BMC or by pulling the plug are picked up by power
// sync and not undone; a PXE boot device set once before a reboot makes the
// VM network-boot from the rack agent, once; soft-off lets the OS power
// off; a BMC that stops answering makes the power unknown, not a stale
// state, until it answers again. It logs the time from `node power on` to the VM's first
// DHCPDISCOVER at the rack agent.
func TestOutOfBandQEMU(t *testing.T) {
	needBMC(t)
	testStart := time.Now()
	lap := netlab.Laps(t)
	bin := binary(t)
	images := ramdisk(t, t.TempDir())
	lap("binary, kernel")
	l := newLab(t, "ra")
	l.bin, l.images = bin, images
	o := &oob{t: t, l: l}
	l.agentArgs = []string{"--power-sync-interval", oobSyncEvery}
	l.startFleet()
	l.startAgent()
	o.v = newVBMC(t, l, 1, bmcVM, "password")
	lap("coordinator, rack agent, virtual BMC")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("--- rack agent log (%s), last lines ---\n%s", l.file("agent.log"), netlab.Tail(l.file("agent.log"), 40))
			t.Logf("--- coordinator log (%s), last lines ---\n%s", l.file("coordinator.log"), netlab.Tail(l.file("coordinator.log"), 30))
		}
	})
	o.secret("good.pw", o.v.Password)
	o.secret("bad.pw", "not-the-password")

	for _, step := range []struct {
		name string
		run  func(*testing.T)
		need bool // the steps after it cannot run without it
	}{
		{"wrong password", o.wrongPassword, false},
		{"manage", o.manage, true},
		{"manage over IPMI v1.5", o.manageLan, false},
		{"power on, reboot", o.powerOnReboot, false},
		{"console", o.console, false},
		{"power sync", o.powerSync, false},
		{"PXE once before a reboot", o.pxeReboot, false},
		{"power-on to first DHCP", o.powerOnToDHCP, false},
		{"once, then soft-off", o.onceThenSoftOff, false},
		{"BMC not answering", o.bmcSilent, false},
	} {
		if !t.Run(step.name, step.run) && step.need {
			t.Fatalf("step %q failed: the other steps need it", step.name)
		}
		lap(step.name)
	}
	t.Logf("TestOutOfBandQEMU took %.1fs", time.Since(testStart).Seconds())
}

// oob is the out-of-band test's state, shared by its steps.
type oob struct {
	t    *testing.T
	l    *lab
	v    *vbmc
	node string // the VM's node (uuid)
	dir  string
}

func (o *oob) secret(name, value string) {
	o.t.Helper()
	if o.dir == "" {
		o.dir = o.t.TempDir()
	}
	if err := os.WriteFile(filepath.Join(o.dir, name), []byte(value+"\n"), 0o600); err != nil {
		o.t.Fatal(err)
	}
}

// cli runs `metalfleet ARGS` in the namespace with the admin token in
// METALFLEET_TOKEN, as an operator at a shell would; it returns stdout,
// and an error holding stderr when the command fails.
func (o *oob) cli(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), oobCLITimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", o.l.NS, o.l.bin}, args...)...)
	cmd.Env = append(os.Environ(), "METALFLEET_TOKEN="+o.l.adminToken, "METALFLEET_ADDR="+o.l.addr())
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.String(), fmt.Errorf("metalfleet %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

func (o *oob) mustCLI(t *testing.T, args ...string) string {
	t.Helper()
	out, err := o.cli(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// getNode reads a node from the API.
func (o *oob) getNode(t *testing.T, id string) proto.Node {
	t.Helper()
	var n proto.Node
	if _, err := o.l.call("GET", "/v1/nodes/"+id, nil, &n); err != nil {
		t.Fatal(err)
	}
	return n
}

// createNode runs `metalfleet node create` for a node of rack r1 with an
// IPMI BMC at the vbmc's address.
func (o *oob) createNode(t *testing.T, name, mac, pwFile, iface string) proto.Node {
	t.Helper()
	out := o.mustCLI(t, "node", "create", "--name", name, "--mac", mac, "--rack", "r1",
		"--bmc-driver", "ipmi", "--bmc-interface", iface, "--bmc-address", o.v.Addr, "--bmc-port", "623", "--bmc-username", o.v.User,
		"--bmc-password-file", filepath.Join(o.dir, pwFile), "-o", "json")
	var n proto.Node
	if err := json.Unmarshal([]byte(out), &n); err != nil {
		t.Fatalf("node create -o json: %v\n%s", err, out)
	}
	if n.BMC.Password != "" {
		t.Errorf("node create answered the BMC password")
	}
	if n.BMC.Interface != iface {
		t.Errorf("node create --bmc-interface %s: the node's bmc.interface is %q", iface, n.BMC.Interface)
	}
	return n
}

// discovers are the times of the DHCPDISCOVERs from mac the rack agent
// answered since since (its log).
func (o *oob) discovers(mac string, since time.Time) []time.Time {
	var out []time.Time
	for _, line := range readAgentLog(o.l.file("agent.log")) {
		if line.Msg == "answered" && line.Type == "DISCOVER" && strings.EqualFold(line.MAC, mac) && !line.Time.Before(since) {
			out = append(out, line.Time)
		}
	}
	return out
}

// waitNode polls the node until cond holds.
func (o *oob) waitNode(t *testing.T, limit time.Duration, what string, cond func(n proto.Node) bool) proto.Node {
	t.Helper()
	var n proto.Node
	var last error
	start := time.Now()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		n = proto.Node{} // decoded afresh: an omitted field must not keep an earlier poll's value
		_, last = o.l.call("GET", "/v1/nodes/"+o.node, nil, &n)
		if last == nil && cond(n) {
			return n
		}
		if time.Since(start) > limit {
			b, _ := json.MarshalIndent(struct {
				State     proto.ProvisionState `json:"provision_state"`
				Power     proto.PowerState     `json:"power_state"`
				LastError string               `json:"last_error"`
				BMC       *proto.BMCStatus     `json:"bmc_status"`
				Intents   []proto.Intent       `json:"intents"`
			}{n.ProvisionState, n.PowerState, n.LastError, n.BMCStatus, n.Intents}, "", "  ")
			t.Fatalf("waited %s for %s (last error %v); the node: %s", limit, what, last, b)
		}
		<-tick.C
	}
}

// waitOS waits until the installed OS has come up n times in all.
func (o *oob) waitOS(t *testing.T, n int, what string) {
	t.Helper()
	testkit.EventuallyEvery(t, oobBootTimeout, 100*time.Millisecond, what, func() bool { return o.v.SerialCount(osMarker) >= n })
}

// wrongPassword: manage with a wrong BMC password leaves the node
// enrolled, its BMC auth-failed, with a last_error that says so (and not
// the password).
func (o *oob) wrongPassword(t *testing.T) {
	n := o.createNode(t, "bad-password", "52:54:00:e2:e0:12", "bad.pw", proto.IPMILanplus)
	out, err := o.cli("node", "provision", n.UUID, "manage")
	t.Logf("node provision bad-password manage: %s %v", strings.TrimSpace(out), err)
	node := o.node
	o.node = n.UUID
	defer func() { o.node = node }()
	got := o.waitNode(t, 60*time.Second, "the verification with a wrong password to fail", func(n proto.Node) bool {
		if n.ProvisionState == proto.StateManageable {
			t.Fatalf("manageable with a wrong BMC password: bmc_status %+v", n.BMCStatus)
		}
		return n.LastError != "" && n.BMCStatus != nil && n.BMCStatus.State != proto.BMCUnverified && n.BMCStatus.State != ""
	})
	t.Logf("wrong password: provision_state %s, bmc_status %s %q, last_error %q", got.ProvisionState, got.BMCStatus.State, got.BMCStatus.Error, got.LastError)
	if got.ProvisionState != proto.StateEnrolled {
		t.Errorf("provision_state %q, want enrolled", got.ProvisionState)
	}
	if got.BMCStatus.State != proto.BMCAuthFailed {
		t.Errorf("bmc_status.state %q, want %q", got.BMCStatus.State, proto.BMCAuthFailed)
	}
	low := strings.ToLower(got.LastError)
	if !strings.Contains(low, "auth") && !strings.Contains(low, "password") && !strings.Contains(low, "credential") {
		t.Errorf("last_error %q does not say the BMC refused the credentials", got.LastError)
	}
	if strings.Contains(got.LastError, "not-the-password") || strings.Contains(got.BMCStatus.Error, "not-the-password") {
		t.Errorf("the error shows the password: %q", got.LastError)
	}
	if got.BMCStatus.Info != nil {
		t.Errorf("bmc_status.info %+v after a failed verification, want none", *got.BMCStatus.Info)
	}
}

// manage: the VM's node becomes manageable only once the agent has
// verified its BMC (bmc_status ok, with the device identity).
func (o *oob) manage(t *testing.T) {
	n := o.createNode(t, "bmc1", bmcVM.MAC, "good.pw", proto.IPMILanplus)
	o.node = n.UUID
	if n.ProvisionState != proto.StateEnrolled {
		t.Fatalf("created node: provision_state %q, want enrolled", n.ProvisionState)
	}
	asked := time.Now()
	o.mustCLI(t, "node", "provision", "bmc1", "manage")
	var states []string
	got := o.waitNode(t, 60*time.Second, "the node to be manageable", func(n proto.Node) bool {
		s := string(n.ProvisionState)
		if n.BMCStatus != nil {
			s += "/bmc " + string(n.BMCStatus.State)
		}
		if len(states) == 0 || states[len(states)-1] != s {
			states = append(states, s)
		}
		if n.ProvisionState == proto.StateManageable && (n.BMCStatus == nil || n.BMCStatus.State != proto.BMCOK || n.BMCStatus.Info == nil) {
			t.Fatalf("manageable before its BMC was verified: bmc_status %+v", n.BMCStatus)
		}
		return n.ProvisionState == proto.StateManageable
	})
	t.Logf("manage: %s in %.2fs; states seen: %s", got.ProvisionState, time.Since(asked).Seconds(), strings.Join(states, " -> "))
	info := got.BMCStatus.Info
	t.Logf("BMC identity: vendor %q model %q firmware %q protocol %q", info.Vendor, info.Model, info.FirmwareVersion, info.Protocol)
	if info.Protocol == "" && info.FirmwareVersion == "" && info.Vendor == "" {
		t.Errorf("bmc_status.info is empty: %+v", *info)
	}
	if got.BMCStatus.CheckedAt.Before(asked.Add(-time.Second)) {
		t.Errorf("bmc_status.checked_at %s is before manage (%s)", got.BMCStatus.CheckedAt, asked)
	}
	if got.LastError != "" {
		t.Errorf("last_error %q after a good verification", got.LastError)
	}
}

// manageLan: a node configured for IPMI v1.5 (lan) is verified over it.
func (o *oob) manageLan(t *testing.T) {
	n := o.createNode(t, "bmc1-lan", "52:54:00:e2:e0:13", "good.pw", proto.IPMILan)
	node := o.node
	o.node = n.UUID
	defer func() { o.node = node }()
	o.mustCLI(t, "node", "provision", n.UUID, "manage")
	got := o.waitNode(t, 60*time.Second, "the v1.5 node to be manageable", func(n proto.Node) bool {
		if n.LastError != "" {
			t.Fatalf("manage over IPMI v1.5: last_error %q", n.LastError)
		}
		return n.ProvisionState == proto.StateManageable
	})
	if got.BMCStatus == nil || got.BMCStatus.Info == nil {
		t.Fatalf("manageable without a verified BMC: bmc_status %+v", got.BMCStatus)
	}
	t.Logf("IPMI v1.5: manageable, protocol %q", got.BMCStatus.Info.Protocol)
	if p := got.BMCStatus.Info.Protocol; !strings.Contains(p, "lan") || strings.Contains(p, "lanplus") {
		t.Errorf("bmc_status.info.protocol %q, want the v1.5 lan interface", p)
	}
}

// powerOnReboot: power on boots the installed OS; reboot of a node that
// is on is a hard reset of the running VM, never off then on.
func (o *oob) powerOnReboot(t *testing.T) {
	v := o.v
	if v.On() {
		t.Fatal("the VM runs before power on")
	}
	t0 := time.Now()
	o.mustCLI(t, "node", "power", "bmc1", "on", "--wait")
	t.Logf("node power on --wait returned after %.2fs", time.Since(t0).Seconds())
	if !v.On() {
		t.Fatal("node power on --wait: QEMU does not run")
	}
	if n := o.getNode(t, o.node); n.PowerState != proto.PowerOn {
		t.Errorf("after power on: power_state %q, want on", n.PowerState)
	}
	o.waitOS(t, 1, "the installed OS to boot")
	t.Logf("power on to the OS's shell: %.1fs", time.Since(t0).Seconds())

	pid, resets := v.Pid(), v.Resets()
	t1 := time.Now()
	o.mustCLI(t, "node", "power", "bmc1", "reboot", "--wait")
	if v.Resets() != resets+1 || v.Pid() != pid {
		t.Errorf("reboot: %d resets (was %d), QEMU pid %d (was %d): want one hard reset of the same VM", v.Resets(), resets, v.Pid(), pid)
	}
	if offs := v.Ops(t1, "set power 0"); len(offs) > 0 {
		t.Errorf("reboot powered the VM off: %+v", offs)
	}
	o.waitOS(t, 2, "the installed OS to boot again after the reboot")
	t.Logf("reboot to the OS's shell: %.1fs", time.Since(t1).Seconds())
	if n := o.getNode(t, o.node); n.PowerState != proto.PowerOn {
		t.Errorf("after reboot: power_state %q, want on", n.PowerState)
	}
}

// powerSync: changes made behind Metalfleet's back (the plug pulled, the
// BMC's own power control) show in power_state within a few sync
// intervals, and are not undone.
func (o *oob) powerSync(t *testing.T) {
	v := o.v
	if !v.On() {
		o.mustCLI(t, "node", "power", "bmc1", "on", "--wait")
	}
	o.waitNode(t, syncTimeout, "power_state on", func(n proto.Node) bool { return n.PowerState == proto.PowerOn })

	// The plug pulled: QEMU killed, not through the BMC.
	t0 := time.Now()
	v.KillBehindBack()
	o.waitNode(t, syncTimeout, "power sync to see the VM killed (power_state off)", func(n proto.Node) bool { return n.PowerState == proto.PowerOff })
	t.Logf("VM killed behind Metalfleet's back: power_state off after %.2fs (--power-sync-interval %s)", time.Since(t0).Seconds(), oobSyncEvery)
	// Not undone: two more sync rounds later, the VM is still off.
	gets := v.PowerGets()
	testkit.Eventually(t, syncTimeout, "two more power sync rounds (bmc1 and bmc1-lan poll the same BMC)", func() bool { return v.PowerGets() >= gets+4 })
	if v.On() || len(v.Ops(t0, "set power 1")) > 0 {
		t.Errorf("Metalfleet powered the VM on again after it was switched off behind its back: %+v", v.Ops(t0, "set power"))
	}

	// On, at the BMC (ipmitool).
	t1 := time.Now()
	if _, err := v.ipmitool("chassis", "power", "on"); err != nil {
		t.Fatal(err)
	}
	o.waitNode(t, syncTimeout, "power sync to see the VM switched on at the BMC", func(n proto.Node) bool { return n.PowerState == proto.PowerOn })
	t.Logf("ipmitool chassis power on at the BMC: power_state on after %.2fs", time.Since(t1).Seconds())
	// Off, at the BMC.
	t2 := time.Now()
	if _, err := v.ipmitool("chassis", "power", "off"); err != nil {
		t.Fatal(err)
	}
	o.waitNode(t, syncTimeout, "power sync to see the VM switched off at the BMC", func(n proto.Node) bool { return n.PowerState == proto.PowerOff })
	t.Logf("ipmitool chassis power off at the BMC: power_state off after %.2fs", time.Since(t2).Seconds())
	gets = v.PowerGets()
	testkit.Eventually(t, syncTimeout, "two more power sync rounds (bmc1 and bmc1-lan poll the same BMC)", func() bool { return v.PowerGets() >= gets+4 })
	if v.On() {
		t.Errorf("Metalfleet powered the VM on again after it was switched off at the BMC")
	}
}

// setPXEOnce sets the next boot, only, to PXE through the API and waits
// for the BMC to have it.
func (o *oob) setPXEOnce(t *testing.T) {
	t.Helper()
	var acc proto.IntentAccepted
	if _, err := o.l.call("PUT", "/v1/nodes/"+o.node+"/boot-device?wait=60s",
		proto.BootDeviceRequest{BootDeviceSpec: proto.BootDeviceSpec{Device: proto.BootDevicePXE}}, &acc); err != nil {
		t.Fatal(err)
	}
	if !acc.Intent.Done || acc.Intent.Error != "" {
		t.Fatalf("boot device pxe: intent %+v, want done without error", acc.Intent)
	}
	if out, err := o.v.ipmitool("chassis", "bootparam", "get", "5"); err != nil || !strings.Contains(out, "PXE") {
		t.Errorf("the BMC's boot device after PUT boot-device pxe: %v\n%s", err, out)
	}
}

// pxeReboot: boot device PXE once, then reboot: the VM network-boots
// from the rack agent.
func (o *oob) pxeReboot(t *testing.T) {
	v := o.v
	if !v.On() {
		o.mustCLI(t, "node", "power", "bmc1", "on", "--wait")
	}
	o.setPXEOnce(t)
	t0 := time.Now()
	o.mustCLI(t, "node", "power", "bmc1", "reboot", "--wait")
	starts := v.Starts()
	if last := starts[len(starts)-1]; last.At.Before(t0) || last.Boot != bootPXE {
		t.Errorf("after boot device pxe and reboot: last VM start %+v, want a PXE boot after %s", last, t0.Format("15:04:05.000"))
	}
	testkit.EventuallyEvery(t, oobBootTimeout, 100*time.Millisecond, "the rack agent to answer the VM's DHCPDISCOVER after the reboot", func() bool {
		return len(o.discovers(bmcVM.MAC, t0)) > 0
	})
	t.Logf("reboot with boot device pxe to the first DHCPDISCOVER at the rack agent: %.2fs", o.discovers(bmcVM.MAC, t0)[0].Sub(t0).Seconds())
	o.mustCLI(t, "node", "power", "bmc1", "off", "--wait")
	if v.On() {
		t.Error("node power off --wait: QEMU still runs")
	}
	if n := o.getNode(t, o.node); n.PowerState != proto.PowerOff {
		t.Errorf("after power off: power_state %q, want off", n.PowerState)
	}
}

// powerOnToDHCP measures, pxeRuns times, the time from `node power on`
// (boot device pxe, once) to the VM's first DHCPDISCOVER at the rack
// agent.
func (o *oob) powerOnToDHCP(t *testing.T) {
	v := o.v
	var all []string
	for i := 1; i <= pxeRuns; i++ {
		if v.On() {
			o.mustCLI(t, "node", "power", "bmc1", "off", "--wait")
		}
		o.setPXEOnce(t)
		t0 := time.Now()
		o.mustCLI(t, "node", "power", "bmc1", "on", "--wait")
		cliDone := time.Since(t0)
		testkit.EventuallyEvery(t, oobBootTimeout, 50*time.Millisecond, "the VM's DHCPDISCOVER at the rack agent", func() bool {
			return len(o.discovers(bmcVM.MAC, t0)) > 0
		})
		d := o.discovers(bmcVM.MAC, t0)[0]
		starts := v.Starts()
		qemu := starts[len(starts)-1]
		if qemu.Boot != bootPXE || qemu.At.Before(t0) {
			t.Errorf("run %d: VM start %+v, want a PXE boot", i, qemu)
		}
		t.Logf("run %d: power-on to first DHCPDISCOVER: %.2fs (node power on to QEMU started %.2fs, QEMU to DHCPDISCOVER %.2fs; node power on --wait returned after %.2fs)",
			i, d.Sub(t0).Seconds(), qemu.At.Sub(t0).Seconds(), d.Sub(qemu.At).Seconds(), cliDone.Seconds())
		all = append(all, fmt.Sprintf("%.2fs", d.Sub(t0).Seconds()))
		o.mustCLI(t, "node", "power", "bmc1", "off", "--wait")
		if v.On() {
			t.Fatalf("run %d: node power off --wait: QEMU still runs", i)
		}
	}
	t.Logf("power-on to first DHCPDISCOVER, %d runs: %s", pxeRuns, strings.Join(all, ", "))
}

// onceThenSoftOff: after a one-time PXE boot the next power-on boots the
// OS, with no network boot; soft-off presses the power button and the OS
// powers off by itself.
func (o *oob) onceThenSoftOff(t *testing.T) {
	v := o.v
	if v.On() {
		o.mustCLI(t, "node", "power", "bmc1", "off", "--wait")
	}
	if s := v.Starts(); len(s) == 0 || s[len(s)-1].Boot != bootPXE {
		t.Errorf("the VM's last start %+v, want a PXE boot (the previous step)", s)
	}
	before := v.SerialCount(osMarker)
	t1 := time.Now()
	o.mustCLI(t, "node", "power", "bmc1", "on", "--wait")
	o.waitOS(t, before+1, "the installed OS to boot (the PXE boot device was for one boot)")
	if d := o.discovers(bmcVM.MAC, t1); len(d) > 0 {
		t.Errorf("a power-on after a one-time PXE boot network-booted again (DHCPDISCOVER at %s)", d[0].Format("15:04:05.000"))
	}

	// Soft-off: the BMC presses the power button, the OS powers off.
	t2 := time.Now()
	o.mustCLI(t, "node", "power", "bmc1", "soft-off", "--wait")
	cliDone := time.Since(t2)
	if len(v.Ops(t2, "set shutdown 1")) == 0 {
		t.Errorf("soft-off: the BMC was not asked for a soft shutdown: %+v", v.Ops(t2, "set "))
	}
	if offs := v.Ops(t2, "set power 0"); len(offs) > 0 {
		t.Errorf("soft-off cut the power (%+v): want the OS to power off by itself", offs)
	}
	testkit.Eventually(t, 60*time.Second, "the OS to power off after soft-off", func() bool { return !v.On() })
	t.Logf("soft-off to the VM off: %.2fs (node power soft-off --wait returned after %.2fs)", v.Exited().Sub(t2).Seconds(), cliDone.Seconds())
	o.waitNode(t, syncTimeout, "power_state off after soft-off", func(n proto.Node) bool { return n.PowerState == proto.PowerOff })
}

// consoleProc is one `metalfleet node console` process: stdin a pipe
// (not a terminal: it copies stdin to the console and the console to
// stdout).
type consoleProc struct {
	name   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stdout testkit.SyncBuffer
	stderr testkit.SyncBuffer
	done   chan struct{}
	err    error
}

// startConsole runs `metalfleet node console NODE ARGS...` in the
// namespace; it is stopped by its pid when the test ends.
func (o *oob) startConsole(t *testing.T, name string, args ...string) *consoleProc {
	t.Helper()
	return o.startConsoleOn(t, "bmc1", name, args...)
}

// startConsoleOn is startConsole of the node named node.
func (o *oob) startConsoleOn(t *testing.T, node, name string, args ...string) *consoleProc {
	t.Helper()
	c := &consoleProc{name: name, done: make(chan struct{})}
	c.cmd = exec.Command("ip", append([]string{"netns", "exec", o.l.NS, o.l.bin, "node", "console", node}, args...)...)
	c.cmd.Env = append(os.Environ(), "METALFLEET_TOKEN="+o.l.adminToken, "METALFLEET_ADDR="+o.l.addr())
	c.cmd.Stdout, c.cmd.Stderr = &c.stdout, &c.stderr
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var err error
	if c.stdin, err = c.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("node console (%s): %v", name, err)
	}
	go func() {
		c.err = c.cmd.Wait()
		close(c.done)
	}()
	o.t.Cleanup(func() {
		if c.running() {
			_ = c.cmd.Process.Kill()
			<-c.done
		}
	})
	return c
}

func (c *consoleProc) running() bool {
	select {
	case <-c.done:
		return false
	default:
		return true
	}
}

// typeIn writes s to the console's stdin (ignoring a closed pipe).
func (c *consoleProc) typeIn(s string) { _, _ = io.WriteString(c.stdin, s) }

// out is what the console printed, terminal escapes removed.
func (c *consoleProc) out() string { return cleanConsole([]byte(c.stdout.String())) }

// end closes stdin (the session ends with it) and waits for the exit.
func (c *consoleProc) end(t *testing.T) {
	t.Helper()
	c.stdin.Close()
	select {
	case <-c.done:
	case <-time.After(20 * time.Second):
		t.Errorf("node console (%s) still runs 20s after its stdin ended", c.name)
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

// interrupt ends a read-only watcher as a person would (^C: it does not
// read stdin) and waits for the exit.
func (c *consoleProc) interrupt(t *testing.T) {
	t.Helper()
	_ = c.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-c.done:
	case <-time.After(20 * time.Second):
		t.Errorf("node console (%s) still runs 20s after SIGINT", c.name)
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

// typeUntil types line into c until its output shows want.
func typeUntil(t *testing.T, c *consoleProc, line, want string) {
	t.Helper()
	var typed time.Time
	testkit.EventuallyEvery(t, 60*time.Second, 50*time.Millisecond, fmt.Sprintf("%q typed into node console (%s) to print %q", line, c.name, want), func() bool {
		if strings.Contains(c.out(), want) {
			return true
		}
		if !c.running() {
			t.Fatalf("node console (%s) exited: %v\nstdout: %s\nstderr: %s", c.name, c.err, c.out(), c.stderr.String())
		}
		// Retyped every 5 s: bytes typed before the session reached the
		// VM's serial port are lost, as on a real serial line.
		if time.Since(typed) > 5*time.Second {
			c.typeIn(line + "\r")
			typed = time.Now()
		}
		return false
	})
}

// console: the serial console through coordinator, rack agent and SOL.
func (o *oob) console(t *testing.T) {
	v := o.v
	if !v.On() {
		o.mustCLI(t, "node", "power", "bmc1", "on", "--wait")
		o.waitOS(t, v.SerialCount(osMarker)+1, "the installed OS to boot")
	}
	// ipmi_sim connects to QEMU's serial port about every 10 s.
	testkit.EventuallyEvery(t, 60*time.Second, 100*time.Millisecond, "ipmi_sim to connect SOL to the VM's serial port", v.SOLConnected)

	// Interactive: bytes typed reach the VM's shell, its output comes back.
	c1 := o.startConsole(t, "first")
	typeUntil(t, c1, "echo MF-ONE-$((6*7))", "MF-ONE-42")
	t.Logf("console: typed into the VM's shell and read its answer")

	// A second interactive attach is refused, whatever its stdin holds.
	c2 := o.startConsole(t, "second")
	c2.typeIn("echo MF-TWO-$((6*7))\r")
	select {
	case <-c2.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("a second interactive console still runs after 30s; stdout: %q stderr: %q", c2.out(), c2.stderr.String())
	}
	if c2.err == nil {
		t.Errorf("a second interactive console exited 0, want refused; stdout %q stderr %q", c2.out(), c2.stderr.String())
	}
	t.Logf("second interactive console refused: %v: %s", c2.err, strings.TrimSpace(c2.stderr.String()))
	if strings.TrimSpace(c2.stderr.String()) == "" {
		t.Errorf("the refused console printed no reason")
	}

	// A read-only watcher: what it is given to type goes nowhere.
	w := o.startConsole(t, "watcher", "--read-only")
	w.typeIn("echo MF-RO-$((6*7))\r")

	// --force takes the keyboard; the first is told.
	c3 := o.startConsole(t, "forced", "--force")
	typeUntil(t, c3, "echo MF-FORCE-$((6*7))", "MF-FORCE-42")
	testkit.Eventually(t, 30*time.Second, "the read-only watcher to see the forced session's output", func() bool {
		return strings.Contains(w.out(), "MF-FORCE-42")
	})
	testkit.Eventually(t, 30*time.Second, "the first console to be told who took over", func() bool {
		return strings.Contains(c1.stderr.String(), "took over the console")
	})
	t.Logf("first console after --force: running %v, err %v, stderr %q", c1.running(), c1.err, strings.TrimSpace(c1.stderr.String()))
	c1.typeIn("echo MF-OLD-$((6*7))\r")

	// The console log holds a boot: a reboot while the sessions are open
	// (a hard reset of the same VM: SOL stays connected).
	boots := v.SerialCount(osMarker)
	o.mustCLI(t, "node", "power", "bmc1", "reboot", "--wait")
	o.waitOS(t, boots+1, "the installed OS to boot again")
	testkit.Eventually(t, 60*time.Second, "the watcher to see the OS boot", func() bool {
		return strings.Count(w.out(), osMarker) >= 1
	})
	// The shell is up again: the forced session still types.
	typeUntil(t, c3, "echo MF-AFTER-$((6*7))", "MF-AFTER-42")

	var log []byte
	testkit.Until(t, 30*time.Second, "the console log to hold the boot", func() error {
		b, err := o.consoleLog()
		log = b
		if err != nil {
			return err
		}
		text := cleanConsole(b)
		for _, want := range []string{"SeaBIOS", osMarker, "MF-FORCE-42", "MF-AFTER-42"} {
			if !strings.Contains(text, want) {
				return fmt.Errorf("no %q in the %d bytes of the console log", want, len(b))
			}
		}
		return nil
	})
	t.Logf("console log: %d bytes, the boot included", len(log))

	c3.end(t)
	w.interrupt(t)
	c1.end(t)
	serial := cleanConsole(mustRead(t, v.Serial))
	for _, s := range []string{"MF-TWO-42", "MF-RO-42", "MF-OLD-42"} {
		if strings.Contains(serial, s) {
			t.Errorf("%s reached the VM: only the session holding the keyboard may type", s)
		}
	}
	// The sessions are in the node's history.
	var hist []proto.HistoryEvent
	testkit.Until(t, 30*time.Second, "console sessions in the node's history", func() error {
		if _, err := o.l.call("GET", "/v1/nodes/"+o.node+"/history", nil, &hist); err != nil {
			return err
		}
		var starts, ends int
		for _, e := range hist {
			switch e.Kind {
			case "console-start":
				starts++
			case "console-end":
				ends++
			}
		}
		if starts < 3 || ends < 3 {
			return fmt.Errorf("%d console-start and %d console-end events, want 3 each (first, watcher, forced): %+v", starts, ends, hist)
		}
		return nil
	})
	var readOnly bool
	for _, e := range hist {
		if strings.HasPrefix(e.Kind, "console-") {
			t.Logf("history: %s %s %q %q", e.Time.Format("15:04:05.000"), e.Kind, e.User, e.Message)
			if e.User == "" {
				t.Errorf("history event %s %q names no user", e.Kind, e.Message)
			}
			readOnly = readOnly || strings.Contains(e.Message, "read-only")
		}
	}
	if !readOnly {
		t.Errorf("no console event in the history names the read-only mode")
	}
}

// consoleLog is GET /v1/nodes/{id}/console/log.
func (o *oob) consoleLog() ([]byte, error) {
	req, err := http.NewRequest("GET", "http://127.0.0.1:7480/v1/nodes/"+o.node+"/console/log", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+o.l.adminToken)
	resp, err := o.l.api.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET console/log: %s: %s", resp.Status, bytes.TrimSpace(b))
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/octet-stream" {
		return b, fmt.Errorf("GET console/log: Content-Type %q, want application/octet-stream", ct)
	}
	return b, err
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// bmcSilent: a BMC that stops answering (ipmi_sim stopped with SIGSTOP)
// leaves the node's power unknown and its BMC unreachable with the error,
// never a stale power state; once it answers again (SIGCONT) power sync
// reads the power again.
func (o *oob) bmcSilent(t *testing.T) {
	v := o.v
	want := proto.PowerOff
	if v.On() {
		want = proto.PowerOn
	}
	o.waitNode(t, syncTimeout, "power_state "+string(want), func(n proto.Node) bool { return n.PowerState == want })
	pid := v.sim.Cmd.Process.Pid
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := true
	cont := func() {
		if stopped {
			_ = syscall.Kill(pid, syscall.SIGCONT)
			stopped = false
		}
	}
	defer cont()
	t0 := time.Now()
	got := o.waitNode(t, 90*time.Second, "power_state unknown and the BMC unreachable", func(n proto.Node) bool {
		return n.PowerState == proto.PowerUnknown && n.BMCStatus != nil && n.BMCStatus.State == proto.BMCUnreachable
	})
	t.Logf("BMC silent: power_state %s, bmc_status %s %q after %.1fs", got.PowerState, got.BMCStatus.State, got.BMCStatus.Error, time.Since(t0).Seconds())
	if got.BMCStatus.Error == "" {
		t.Errorf("bmc_status of a BMC that does not answer has no error")
	}
	cont()
	t1 := time.Now()
	got = o.waitNode(t, 90*time.Second, "power sync to read the power again once the BMC answers", func(n proto.Node) bool {
		return n.PowerState == want && n.BMCStatus != nil && n.BMCStatus.State == proto.BMCOK
	})
	t.Logf("BMC answering again: power_state %s, bmc_status %s after %.1fs", got.PowerState, got.BMCStatus.State, time.Since(t1).Seconds())
}
