package bmc_test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/ops/testkit"
	"github.com/metalfleet/metalfleet/proto"
	"github.com/metalfleet/metalfleet/rackagent/bmc"
)

// OpenIPMI's ipmi_sim as the BMC: the driver against a BMC we did not
// write. ipmi_sim offers no cipher suite 17, so the driver must ask and
// take 3. Power and boot device go through a chassis_control program that
// keeps the machine's state in files; SOL connects to a TCP listener that
// plays the machine's serial port.

const ipmiSimChassis = `#!/bin/sh
# ipmi_sim chassis_control: chassis-control.sh MC get|set PARAM [VALUE]...
D=$(dirname "$0"); mc=$1; op=$2; shift 2
case $op in
get)
  for p in "$@"; do
    case $p in
      power) echo "power:$(cat $D/power 2>/dev/null || echo 0)" ;;
      boot)  echo "boot:$(cat $D/boot 2>/dev/null || echo default)" ;;
      *) echo "Invalid parameter: $p"; exit 1 ;;
    esac
  done ;;
set)
  while [ $# -gt 0 ]; do
    p=$1; v=$2; shift 2
    echo "$p $v" >> $D/actions.log
    case $p in
      power) echo $v > $D/power ;;
      reset|shutdown) ;;
      boot) echo $v > $D/boot ;;
      identify) shift ;;
      *) echo "Invalid parameter: $p"; exit 1 ;;
    esac
  done ;;
*) exit 1 ;;
esac
exit 0
`

const ipmiSimConf = `name "testbmc"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 %d
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
  chassis_control "%s 0x20"
  user 2 true "admin" "password" admin 10 none md2 md5 straight
  sol "tcp:127.0.0.1:%d" 115200
`

const ipmiSimEmu = `mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr
sel_enable 0x20 1000 0x0a
mc_enable 0x20
`

type openIPMI struct {
	dir  string
	port int
	sol  net.Listener
}

func freeUDPPort(t *testing.T) int {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// startIPMISim runs ipmi_sim on a free loopback port in a temp dir; it is
// killed by pid when the test ends.
func startIPMISim(t *testing.T) *openIPMI {
	t.Helper()
	bin, err := exec.LookPath("ipmi_sim")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("ipmi_sim not installed under CI (ops/apt-packages.txt lists openipmi): %v", err)
		}
		t.Skip("ipmi_sim (Debian package openipmi) is not installed: skipping the driver's test against OpenIPMI")
	}
	dir := t.TempDir()
	sol, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sol.Close() })
	o := &openIPMI{dir: dir, port: freeUDPPort(t), sol: sol}
	script := filepath.Join(dir, "chassis-control.sh")
	if err := os.WriteFile(script, []byte(ipmiSimChassis), 0o755); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(ipmiSimConf, o.port, script, sol.Addr().(*net.TCPAddr).Port)
	if err := os.WriteFile(filepath.Join(dir, "lan.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bmc.emu"), []byte(ipmiSimEmu), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "state"), 0o755); err != nil {
		t.Fatal(err)
	}
	log, err := os.Create(filepath.Join(dir, "ipmi_sim.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-c", filepath.Join(dir, "lan.conf"), "-f", filepath.Join(dir, "bmc.emu"),
		"-s", filepath.Join(dir, "state"), "-n", "-p")
	cmd.Dir, cmd.Stdout, cmd.Stderr = dir, log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() {
		_ = syscall.Kill(-pid, syscall.SIGKILL) // ipmi_sim and any chassis_control child
		_ = cmd.Wait()
		_ = log.Close()
		if t.Failed() {
			out, _ := os.ReadFile(filepath.Join(dir, "ipmi_sim.log"))
			t.Logf("ipmi_sim output:\n%s", out)
		}
	})
	return o
}

func (o *openIPMI) driver(t *testing.T, password string) bmc.Driver {
	t.Helper()
	d, err := bmc.Open(bmc.Config{Driver: proto.DriverIPMI, Address: "127.0.0.1", Port: o.port,
		Username: "admin", Password: password})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d
}

func (o *openIPMI) file(name string) string {
	b, _ := os.ReadFile(filepath.Join(o.dir, name))
	return strings.TrimSpace(string(b))
}

func TestIPMIAgainstOpenIPMI(t *testing.T) {
	o := startIPMISim(t)
	d := o.driver(t, "password")
	ctx := ctxFor(t, 60*time.Second)
	testkit.Until(t, 15*time.Second, "ipmi_sim answering", func() error {
		_, err := d.PowerState(ctxFor(t, time.Second))
		return err
	})

	info, err := d.Identify(ctx)
	if err != nil {
		t.Fatalf("Identify: %v", err)
	}
	// mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02: firmware 9.08, manufacturer 0x1291, product 0xf02.
	want := proto.BMCInfo{Vendor: "IANA 4753", Model: "product 0x0f02", FirmwareVersion: "9.08", Protocol: "lanplus cipher 3"}
	if info != want {
		t.Errorf("Identify = %+v, want %+v", info, want)
	}

	for _, step := range []struct {
		a     bmc.PowerAction
		log   string
		power proto.PowerState
	}{
		{bmc.PowerOn, "power 1", proto.PowerOn},
		{bmc.PowerReset, "reset 1", proto.PowerOn},
		{bmc.PowerSoftOff, "shutdown 1", proto.PowerOn}, // the script ignores ACPI shutdown
		{bmc.PowerOff, "power 0", proto.PowerOff},
	} {
		before := o.file("actions.log")
		if err := d.Power(ctx, step.a); err != nil {
			t.Fatalf("Power(%s): %v", step.a, err)
		}
		after := strings.TrimPrefix(o.file("actions.log"), before)
		if strings.TrimSpace(after) != step.log {
			t.Errorf("Power(%s): chassis_control ran %q, want %q once", step.a, after, step.log)
		}
		if got, err := d.PowerState(ctx); err != nil || got != step.power {
			t.Errorf("after Power(%s): PowerState = %q, %v; want %q", step.a, got, err, step.power)
		}
	}

	if err := d.SetBootDevice(ctx, proto.BootDeviceSpec{Device: proto.BootDevicePXE}); err != nil {
		t.Fatalf("SetBootDevice(pxe): %v", err)
	}
	if got := o.file("boot"); got != "pxe" {
		t.Errorf("after SetBootDevice(pxe) the BMC set boot %q, want pxe", got)
	}
	if err := d.SetBootDevice(ctx, proto.BootDeviceSpec{Device: proto.BootDeviceDisk, Persistent: true, Mode: proto.BootModeUEFI}); err != nil {
		t.Fatalf("SetBootDevice(disk): %v", err)
	}
	if got := o.file("boot"); got != "default" {
		t.Errorf("after SetBootDevice(disk) the BMC set boot %q, want default (ipmi_sim's name for the disk)", got)
	}

	// The v1.5 path through goipmi against the same BMC.
	lan, err := bmc.Open(bmc.Config{Address: "127.0.0.1", Port: o.port, Username: "admin", Password: "password", Interface: proto.IPMILan})
	if err != nil {
		t.Fatal(err)
	}
	defer lan.Close()
	if info, err := lan.Identify(ctx); err != nil || info.Model != "product 0x0f02" || info.Vendor != "IANA 4753" {
		t.Errorf("lan Identify = %+v, %v", info, err)
	}
	if err := lan.Power(ctx, bmc.PowerOn); err != nil {
		t.Fatalf("lan Power(on): %v", err)
	}
	if got, err := lan.PowerState(ctx); err != nil || got != proto.PowerOn {
		t.Errorf("lan PowerState = %q, %v; want on", got, err)
	}
	if err := lan.SetBootDevice(ctx, proto.BootDeviceSpec{Device: proto.BootDevicePXE}); err != nil || o.file("boot") != "pxe" {
		t.Errorf("lan SetBootDevice(pxe) = %v, BMC boot %q", err, o.file("boot"))
	}

	// Wrong password: auth, on both interfaces.
	bad := o.driver(t, "nope")
	if _, err := bad.PowerState(ctx); bmc.KindOf(err) != proto.BMCErrAuth {
		t.Errorf("lanplus with a wrong password: %v (kind %s), want auth", err, bmc.KindOf(err))
	}
	badLan, _ := bmc.Open(bmc.Config{Address: "127.0.0.1", Port: o.port, Username: "admin", Password: "nope", Interface: proto.IPMILan})
	defer badLan.Close()
	if _, err := badLan.PowerState(ctx); bmc.KindOf(err) != proto.BMCErrAuth {
		t.Errorf("lan with a wrong password: %v (kind %s), want auth", err, bmc.KindOf(err))
	}
}

func TestIPMIConsoleAgainstOpenIPMI(t *testing.T) {
	o := startIPMISim(t)
	// The machine's serial port: ipmi_sim connects to it.
	var mu sync.Mutex
	var serial net.Conn
	var typed strings.Builder
	go func() {
		c, err := o.sol.Accept()
		if err != nil {
			return
		}
		mu.Lock()
		serial = c
		mu.Unlock()
		buf := make([]byte, 256)
		for {
			n, err := c.Read(buf)
			mu.Lock()
			typed.Write(buf[:n])
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	d := o.driver(t, "password")
	ctx := ctxFor(t, 60*time.Second)
	testkit.Until(t, 15*time.Second, "ipmi_sim answering", func() error {
		_, err := d.PowerState(ctxFor(t, time.Second))
		return err
	})
	con, err := d.Console(ctx)
	if err != nil {
		t.Fatalf("Console: %v", err)
	}
	defer con.Close()
	testkit.Eventually(t, 30*time.Second, "ipmi_sim connected to the serial port", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return serial != nil
	})
	mu.Lock()
	_, err = serial.Write([]byte("console says hello\r\n"))
	mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	buf := make([]byte, 256)
	testkit.Until(t, 15*time.Second, "console output through SOL", func() error {
		n, err := con.Read(buf)
		out.Write(buf[:n])
		if strings.Contains(out.String(), "console says hello") {
			return nil
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		return fmt.Errorf("got %q", out.String())
	})
	if _, err := io.WriteString(con, "ls\r"); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 15*time.Second, "keystrokes at the serial port", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return strings.Contains(typed.String(), "ls\r")
	})
}
