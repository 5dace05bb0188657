package ipmisim_test

import (
	"context"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/proto"
	"github.com/metalfleet/metalfleet/rackagent/bmc/ipmisim"
)

// ipmitool, a client we did not write, drives the simulated BMC over each
// protocol it speaks.
func ipmitool(t *testing.T, s *ipmisim.BMC, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	base := []string{"-H", s.Host(), "-p", strconv.Itoa(s.Port()), "-U", "admin", "-E"}
	cmd := exec.CommandContext(ctx, "ipmitool", append(base, args...)...)
	cmd.Env = append(os.Environ(), "IPMI_PASSWORD=pw")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestIpmitoolAgainstSim(t *testing.T) {
	if _, err := exec.LookPath("ipmitool"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("ipmitool not installed under CI (ops/apt-packages.txt lists it): %v", err)
		}
		t.Skip("ipmitool (Debian package ipmitool) is not installed")
	}
	power := ipmisim.NewMemPower(false)
	s, err := ipmisim.New(ipmisim.Config{Username: "admin", Password: "pw", Power: power})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	for _, proto := range [][]string{
		{"-I", "lanplus", "-C", "17"},
		{"-I", "lanplus", "-C", "3"},
		{"-I", "lan", "-A", "MD5"},
	} {
		out, err := ipmitool(t, s, append(proto, "chassis", "power", "status")...)
		if err != nil || !strings.Contains(out, "Chassis Power is off") {
			t.Errorf("ipmitool %v chassis power status: %v: %s", proto, err, out)
		}
	}
	if out, err := ipmitool(t, s, "-I", "lanplus", "-C", "17", "chassis", "power", "on"); err != nil {
		t.Fatalf("power on: %v: %s", err, out)
	}
	if n := s.Actions(ipmisim.ActionOn); n != 1 || !s.PowerState() {
		t.Errorf("after ipmitool power on: %d power-ons, power %v; want 1, on", n, s.PowerState())
	}
	if out, err := ipmitool(t, s, "-I", "lanplus", "-C", "3", "chassis", "bootdev", "pxe", "options=persistent,efiboot"); err != nil {
		t.Fatalf("bootdev: %v: %s", err, out)
	}
	want := proto.BootDeviceSpec{Device: proto.BootDevicePXE, Persistent: true, Mode: proto.BootModeUEFI}
	if got, ok := s.BootDevice(); !ok || got != want {
		t.Errorf("after ipmitool bootdev pxe persistent efiboot: %+v (%v), want %+v", got, ok, want)
	}
	// Persistent: a boot does not clear it.
	if got, ok := s.NextBoot(); !ok || got != want {
		t.Errorf("NextBoot = %+v, %v", got, ok)
	}
	if _, ok := s.BootDevice(); !ok {
		t.Error("a persistent override was cleared by a boot")
	}

	// A wrong password is refused.
	cmd := exec.Command("ipmitool", "-I", "lanplus", "-C", "3", "-H", s.Host(), "-p", strconv.Itoa(s.Port()),
		"-U", "admin", "-E", "-R", "1", "-N", "1", "chassis", "power", "status")
	cmd.Env = append(os.Environ(), "IPMI_PASSWORD=bad")
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Errorf("a wrong password was accepted: %s", out)
	}

	// Drop: no answer at all.
	s.SetDrop(true)
	start := time.Now()
	cmd = exec.Command("ipmitool", "-I", "lanplus", "-C", "3", "-H", s.Host(), "-p", strconv.Itoa(s.Port()),
		"-U", "admin", "-E", "-R", "1", "-N", "1", "chassis", "power", "status")
	cmd.Env = append(os.Environ(), "IPMI_PASSWORD=pw")
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Errorf("a dropping BMC answered: %s", out)
	}
	if took := time.Since(start); took < 900*time.Millisecond {
		t.Errorf("a dropping BMC failed ipmitool in %v, before its 1 s timeout", took)
	}
	s.SetDrop(false)
	if out, err := ipmitool(t, s, "-I", "lanplus", "-C", "3", "chassis", "power", "status"); err != nil || !strings.Contains(out, "on") {
		t.Errorf("after the drop: %v: %s", err, out)
	}
}

func TestConfigErrors(t *testing.T) {
	for _, c := range []struct {
		cfg  ipmisim.Config
		want string
	}{
		{ipmisim.Config{Username: strings.Repeat("u", 17), Password: "p"}, "username"},
		{ipmisim.Config{Username: "u", Password: strings.Repeat("p", 21)}, "password"},
		{ipmisim.Config{CipherSuites: []int{99}}, "cipher suite 99"},
	} {
		if _, err := ipmisim.New(c.cfg); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("New(%+v) = %v, want an error naming %s", c.cfg, err, c.want)
		}
	}
	s, _ := ipmisim.New(ipmisim.Config{Addr: "127.0.0.1:notaport"})
	if err := s.Start(); err == nil || !strings.Contains(err.Error(), "notaport") {
		t.Errorf("Start with a bad address = %v, want an error naming it", err)
	}
}
