//go:build linux

package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/ops/testkit"
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
	ipmi("chassis", "power", "off")
	if v.On() {
		t.Error("power off: QEMU still runs")
	}
	if got := ipmi("chassis", "power", "status"); got != "Chassis Power is off" {
		t.Errorf("power status: %q, want off", got)
	}
}
