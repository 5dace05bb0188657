package sim_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/coordinator/apiclient"
	"github.com/metalfleet/metalfleet/coordinator/coordtest"
	"github.com/metalfleet/metalfleet/ops/testkit"
	"github.com/metalfleet/metalfleet/proto"
	"github.com/metalfleet/metalfleet/rackagent/agent"
	"github.com/metalfleet/metalfleet/rackagent/bmc"
	"github.com/metalfleet/metalfleet/rackagent/nodeagent"
	"github.com/metalfleet/metalfleet/rackagent/sim"
)

// fastFirmware retries quickly: tests on loaded cores.
var fastFirmware = sim.Firmware{DHCPTimeouts: []time.Duration{250 * time.Millisecond, 500 * time.Millisecond, time.Second},
	TFTPTimeout: time.Second, HTTPTimeout: 10 * time.Second, RebootAfter: 100 * time.Millisecond, MaxBoots: 3}

// report makes one attempt at a ramdisk callback with the nodeagent's
// code (as dev mode does).
func report(ctx context.Context, client *http.Client, callbackURL, mac, token, step string, body any) error {
	r := nodeagent.Reporter{Client: client, MaxElapsed: time.Nanosecond}
	return r.Report(ctx, callbackURL, mac, token, step, body)
}

// open opens the real driver for a host's BMC credentials.
func open(t *testing.T, cfg proto.BMC) bmc.Driver {
	t.Helper()
	d, err := bmc.Open(cfg)
	if err != nil {
		t.Fatalf("bmc.Open(%s %s:%d): %v", cfg.Driver, cfg.Address, cfg.Port, err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// countingDHCP is a UDP socket on loopback that counts what it receives
// and never answers.
func countingDHCP(t *testing.T) (*net.UDPAddr, *atomic.Int64) {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	var n atomic.Int64
	go func() {
		buf := make([]byte, 1500)
		for {
			if _, _, err := c.ReadFrom(buf); err != nil {
				return
			}
			n.Add(1)
		}
	}()
	return c.LocalAddr().(*net.UDPAddr), &n
}

// TestHostPoweredOffSendsNothing: for both drivers, a host whose BMC
// says it is off sends no packet while a real driver reads its power
// (the reads take real round trips); powered on through the BMC it
// starts sending DHCP, and powered off it stops booting.
func TestHostPoweredOffSendsNothing(t *testing.T) {
	for _, driver := range []string{proto.DriverIPMI, proto.DriverRedfish} {
		t.Run(driver, func(t *testing.T) {
			srv, got := countingDHCP(t)
			h := sim.NewHost(&sim.Machine{MAC: net.HardwareAddr{0x52, 0x54, 0, 0xdf, 0, 1}, DHCP: srv, RelayIP: net.IPv4(127, 0, 0, 1),
				Firmware: sim.Firmware{DHCPTimeouts: []time.Duration{50 * time.Millisecond}, RebootAfter: 50 * time.Millisecond, MaxBoots: 1000}})
			defer h.Close()
			if err := h.StartBMC(sim.BMCConfig{Driver: driver}); err != nil {
				t.Fatal(err)
			}
			d := open(t, h.Credentials())
			for i := 0; i < 5; i++ {
				p, err := d.PowerState(ctxFor(t, 10*time.Second))
				if err != nil || p != proto.PowerOff {
					t.Fatalf("PowerState of a new host = %s, %v; want off", p, err)
				}
			}
			if n := got.Load(); n != 0 || h.Boots() != 0 || h.Serial().Log() != "" {
				t.Fatalf("powered-off host: %d DHCP packets, %d boots, console %q; want nothing", n, h.Boots(), h.Serial().Log())
			}
			if err := d.Power(ctxFor(t, 10*time.Second), bmc.PowerOn); err != nil {
				t.Fatalf("power on: %v", err)
			}
			testkit.Eventually(t, 10*time.Second, "DHCP packets from the powered-on host", func() bool { return got.Load() > 0 })
			if !strings.Contains(h.Serial().Log(), "sim: DHCPDISCOVER") {
				t.Errorf("console after power on = %q, want a DHCPDISCOVER line", h.Serial().Log())
			}
			if err := d.Power(ctxFor(t, 10*time.Second), bmc.PowerOff); err != nil {
				t.Fatalf("power off: %v", err)
			}
			if p, err := d.PowerState(ctxFor(t, 10*time.Second)); err != nil || p != proto.PowerOff {
				t.Fatalf("PowerState after power off = %s, %v; want off", p, err)
			}
			// The boot stops: once its goroutine has ended, not one more
			// packet arrives while the BMC is asked five more times.
			testkit.Eventually(t, 15*time.Second, "the boot to end after power off", func() bool { return !h.Booting() })
			before := got.Load()
			for i := 0; i < 5; i++ {
				if _, err := d.PowerState(ctxFor(t, 10*time.Second)); err != nil {
					t.Fatal(err)
				}
			}
			if n := got.Load(); n != before {
				t.Errorf("%d DHCP packets after the boot ended with power off", n-before)
			}
			if h.Actions(bmc.PowerOn) != 1 || h.Actions(bmc.PowerOff) != 1 || h.Boots() != 1 {
				t.Errorf("host saw %d power-ons, %d power-offs, %d boots; want 1 each", h.Actions(bmc.PowerOn), h.Actions(bmc.PowerOff), h.Boots())
			}
		})
	}
}

// rackFleet is a coordinator with rack r1 (127.0.0.0/24, its relay and
// boot server on 127.0.0.1), discovery on, and a real rack agent.
func rackFleet(t *testing.T) (*apiclient.Client, *agent.Agent) {
	t.Helper()
	ctx := context.Background()
	c := coordtest.StartCluster(t, 1)
	admin := apiclient.New(c.Servers[0].HTTPAddr(), c.Token)
	must := func(_ uint64, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(admin.Do(ctx, "POST", "/v1/racks", proto.Rack{Name: "r1", Subnet: "127.0.0.0/24", BootServer: "127.0.0.1",
		PoolStart: "127.0.0.100", PoolEnd: "127.0.0.199"}, nil))
	var tok proto.TokenCreated
	must(admin.Do(ctx, "POST", "/v1/tokens", proto.TokenCreate{Role: proto.RoleAgent, Rack: "r1"}, &tok))
	dir := t.TempDir()
	for _, im := range []struct {
		name string
		kind proto.ImageKind
	}{{"k", proto.ImageKernel}, {"r", proto.ImageRamdisk}} {
		body := []byte(strings.Repeat("simulated "+im.name, 1000))
		p := filepath.Join(dir, im.name)
		if err := os.WriteFile(p, body, 0o644); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(body)
		must(admin.Do(ctx, "POST", "/v1/images", proto.Image{Name: im.name, Kind: im.kind, URL: "file://" + p, SHA256: hex.EncodeToString(sum[:])}, nil))
	}
	yes, k, r := true, "k", "r"
	must(admin.Do(ctx, "PATCH", "/v1/settings", proto.SettingsPatch{DiscoveryEnabled: &yes, DiscoveryKernel: &k, DiscoveryRamdisk: &r}, nil))
	a, err := agent.New(agent.Config{
		Name: "a1", Rack: "r1", DataDir: filepath.Join(dir, "agent"), Coordinators: []string{c.Servers[0].HTTPAddr()}, Token: tok.Secret,
		DHCPAddr: "127.0.0.1:0", TFTPAddr: "", HTTPAddr: "127.0.0.1:0", AdvertiseIP: netip.MustParseAddr("127.0.0.1"),
		Logger: coordtest.Logger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx) }()
	t.Cleanup(func() { cancel(); <-done })
	testkit.Eventually(t, 20*time.Second, "the agent's boot state", func() bool { return a.Boot().View() != nil })
	return admin, a
}

// TestHostBootsWhenPoweredOnThroughItsBMC: a host with an IPMI BMC,
// powered on by the real ipmi driver over RMCP+, PXE-boots from a real
// rack agent, reports its inventory and becomes a discovered node in the
// agent's boot state; its console (the BMC's SOL source) shows the boot.
func TestHostBootsWhenPoweredOnThroughItsBMC(t *testing.T) {
	admin, a := rackFleet(t)
	mac := net.HardwareAddr{0x52, 0x54, 0, 0xdf, 0, 2}
	h := sim.NewHost(&sim.Machine{MAC: mac, DHCP: a.DHCPAddr().(*net.UDPAddr), RelayIP: net.IPv4(127, 0, 0, 1),
		BindLease: true, Report: report, Firmware: fastFirmware})
	defer h.Close()
	booted := make(chan error, 1)
	h.OnBoot = func(res *sim.Result, err error) {
		if err == nil && !res.Reported {
			err = errors.New("booted without reporting its inventory")
		}
		booted <- err
	}
	if err := h.StartBMC(sim.BMCConfig{}); err != nil {
		t.Fatal(err)
	}
	cred := h.Credentials()
	if cred.Driver != proto.DriverIPMI || cred.Address != "127.0.0.1" || cred.Port == 0 || cred.Username == "" || cred.Password == "" {
		t.Fatalf("Credentials() = %+v; want an ipmi BMC on 127.0.0.1 with a port and an account", cred)
	}
	d := open(t, cred)
	if err := d.Power(ctxFor(t, 10*time.Second), bmc.PowerOn); err != nil {
		t.Fatalf("power on over IPMI: %v", err)
	}
	select {
	case err := <-booted:
		if err != nil {
			t.Fatalf("boot after power on: %v\nconsole:\n%s", err, h.Serial().Log())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("no boot within 60 s of power on; console:\n%s", h.Serial().Log())
	}
	testkit.Eventually(t, 30*time.Second, "the machine's node in the agent's boot state", func() bool {
		v := a.Boot().View()
		_, ok := v.Node(mac)
		return ok
	})
	nodes, _, err := admin.Nodes(ctxFor(t, 10*time.Second), nil)
	if err != nil {
		t.Fatal(err)
	}
	var found *proto.Node
	for _, n := range nodes {
		if len(n.MACs) > 0 && n.MACs[0] == mac.String() {
			found = n
		}
	}
	if found == nil || found.ProvisionState != proto.StateDiscovered {
		t.Errorf("the coordinator's node of %s: %+v; want a discovered node", mac, found)
	}
	con := h.Serial().Log()
	for _, want := range []string{"sim: power on", "sim: DHCPDISCOVER", "sim: got lease 127.0.0.", "sim: fetching kernel", "sim: inventory reported"} {
		if !strings.Contains(con, want) {
			t.Errorf("console does not show %q:\n%s", want, con)
		}
	}
	if ip := h.IPMI(); ip == nil || ip.Actions("on") != 1 {
		t.Errorf("the IPMI BMC counted %v power-ons, want 1", ip.Actions("on"))
	}
}

// TestHostConsoleEchoes: what is typed on the serial console comes back.
func TestHostConsoleEchoes(t *testing.T) {
	h := sim.NewHost(&sim.Machine{MAC: net.HardwareAddr{0x52, 0x54, 0, 0xdf, 0, 3}})
	defer h.Close()
	s := h.Serial()
	if _, err := s.Write([]byte("hello\r")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, err := s.Read(buf)
	if err != nil || string(buf[:n]) != "hello\r\n" {
		t.Errorf("console read %q, %v after typing hello<CR>; want %q", buf[:n], err, "hello\r\n")
	}
}

// TestHostBMCFaults: a slow BMC answers, late; one that times out never
// answers (the driver's call fails as timed out or unreachable, within
// the caller's deadline); one given the wrong password refuses it (kind
// auth). Each for both drivers.
func TestHostBMCFaults(t *testing.T) {
	for _, driver := range []string{proto.DriverIPMI, proto.DriverRedfish} {
		t.Run(driver+"/slow", func(t *testing.T) {
			h := sim.NewHost(&sim.Machine{MAC: net.HardwareAddr{0x52, 0x54, 0, 0xdf, 1, 1}})
			defer h.Close()
			const slow = 300 * time.Millisecond
			if err := h.StartBMC(sim.BMCConfig{Driver: driver, Slow: slow}); err != nil {
				t.Fatal(err)
			}
			d := open(t, h.Credentials())
			start := time.Now()
			p, err := d.PowerState(ctxFor(t, 20*time.Second))
			if err != nil || p != proto.PowerOff {
				t.Fatalf("PowerState of a slow BMC = %s, %v; want off", p, err)
			}
			if took := time.Since(start); took < slow {
				t.Errorf("PowerState of a BMC slowed by %s took %s", slow, took)
			}
		})
		t.Run(driver+"/timeout", func(t *testing.T) {
			h := sim.NewHost(&sim.Machine{MAC: net.HardwareAddr{0x52, 0x54, 0, 0xdf, 1, 2}})
			defer h.Close()
			if err := h.StartBMC(sim.BMCConfig{Driver: driver, Timeout: true}); err != nil {
				t.Fatal(err)
			}
			d := open(t, h.Credentials())
			start := time.Now()
			err := d.Power(ctxFor(t, 3*time.Second), bmc.PowerOn)
			k := bmc.KindOf(err)
			if err == nil || (k != proto.BMCErrTimeout && k != proto.BMCErrUnreachable) {
				t.Fatalf("power on with a BMC that never answers: %v (kind %s); want timed out or unreachable", err, k)
			}
			if took := time.Since(start); took > 15*time.Second {
				t.Errorf("the calls took %s; the caller's deadline was 3 s each", took)
			}
			if h.On() || h.Actions(bmc.PowerOn) != 0 {
				t.Errorf("a BMC that never answers powered the host on")
			}
		})
		t.Run(driver+"/wrong-password", func(t *testing.T) {
			h := sim.NewHost(&sim.Machine{MAC: net.HardwareAddr{0x52, 0x54, 0, 0xdf, 1, 3}})
			defer h.Close()
			if err := h.StartBMC(sim.BMCConfig{Driver: driver, WrongPassword: true}); err != nil {
				t.Fatal(err)
			}
			d := open(t, h.Credentials())
			err := d.Power(ctxFor(t, 10*time.Second), bmc.PowerOn)
			if k := bmc.KindOf(err); err == nil || k != proto.BMCErrAuth {
				t.Fatalf("power on with the wrong password: %v (kind %s); want an auth error", err, k)
			}
			if h.On() {
				t.Errorf("a refused password powered the host on")
			}
		})
	}
}

// TestHostConsoleOverSOL: the real ipmi driver's Serial-over-LAN session
// shows the host's boot as its firmware prints it after a power on, and
// what is typed into it comes back.
func TestHostConsoleOverSOL(t *testing.T) {
	srv, _ := countingDHCP(t)
	h := sim.NewHost(&sim.Machine{MAC: net.HardwareAddr{0x52, 0x54, 0, 0xdf, 0, 4}, DHCP: srv, RelayIP: net.IPv4(127, 0, 0, 1),
		Firmware: sim.Firmware{DHCPTimeouts: []time.Duration{200 * time.Millisecond}, RebootAfter: 200 * time.Millisecond, MaxBoots: 1000}})
	defer h.Close()
	if err := h.StartBMC(sim.BMCConfig{}); err != nil {
		t.Fatal(err)
	}
	con := open(t, h.Credentials())
	sol, err := con.Console(ctxFor(t, 10*time.Second))
	if err != nil {
		t.Fatalf("console over SOL: %v", err)
	}
	defer sol.Close()
	var got lockedText
	go func() {
		buf := make([]byte, 1024)
		for {
			n, err := sol.Read(buf)
			got.add(buf[:n])
			if err != nil {
				return
			}
		}
	}()
	// A second driver (as the rack agent's power side) powers it on.
	if err := open(t, h.Credentials()).Power(ctxFor(t, 10*time.Second), bmc.PowerOn); err != nil {
		t.Fatalf("power on: %v", err)
	}
	testkit.Eventually(t, 20*time.Second, "the boot on the SOL console", func() bool {
		return strings.Contains(got.String(), "sim: power on") && strings.Contains(got.String(), "sim: DHCPDISCOVER")
	})
	if _, err := sol.Write([]byte("echo-me\r")); err != nil {
		t.Fatalf("typing on the console: %v", err)
	}
	testkit.Eventually(t, 20*time.Second, "the typed line echoed on the SOL console", func() bool {
		return strings.Contains(got.String(), "echo-me\r\n")
	})
}

type lockedText struct {
	mu sync.Mutex
	b  []byte
}

func (l *lockedText) add(p []byte) { l.mu.Lock(); l.b = append(l.b, p...); l.mu.Unlock() }
func (l *lockedText) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.b)
}

// TestHostBootDeviceOverride: a disk boot override set through the BMC
// (both drivers) makes the next power on boot the local disk (no DHCP
// at all); the override was for one boot only, so a reset network-boots.
func TestHostBootDeviceOverride(t *testing.T) {
	for _, driver := range []string{proto.DriverIPMI, proto.DriverRedfish} {
		t.Run(driver, func(t *testing.T) {
			srv, got := countingDHCP(t)
			h := sim.NewHost(&sim.Machine{MAC: net.HardwareAddr{0x52, 0x54, 0, 0xdf, 0, 5}, DHCP: srv, RelayIP: net.IPv4(127, 0, 0, 1),
				Firmware: sim.Firmware{DHCPTimeouts: []time.Duration{100 * time.Millisecond}, RebootAfter: 100 * time.Millisecond, MaxBoots: 1000}})
			defer h.Close()
			if err := h.StartBMC(sim.BMCConfig{Driver: driver}); err != nil {
				t.Fatal(err)
			}
			d := open(t, h.Credentials())
			if err := d.SetBootDevice(ctxFor(t, 10*time.Second), proto.BootDeviceSpec{Device: proto.BootDeviceDisk}); err != nil {
				t.Fatalf("set boot device disk: %v", err)
			}
			if err := d.Power(ctxFor(t, 10*time.Second), bmc.PowerOn); err != nil {
				t.Fatalf("power on: %v", err)
			}
			testkit.Eventually(t, 10*time.Second, "a local-disk boot on the console", func() bool {
				return strings.Contains(h.Serial().Log(), "booting from local disk")
			})
			if n := got.Load(); n != 0 || strings.Contains(h.Serial().Log(), "DHCPDISCOVER") {
				t.Fatalf("a disk boot sent %d DHCP packets; console:\n%s", n, h.Serial().Log())
			}
			if err := d.Power(ctxFor(t, 10*time.Second), bmc.PowerReset); err != nil {
				t.Fatalf("reset: %v", err)
			}
			testkit.Eventually(t, 10*time.Second, "a network boot after the reset", func() bool { return got.Load() > 0 })
		})
	}
}
