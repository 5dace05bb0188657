package nodeagent

import (
	"bytes"
	"context"
	"encoding/binary"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"golang.org/x/sys/unix"
)

func TestAddrMessage(t *testing.T) {
	got := addrMessage(7, net.IPNet{IP: net.IPv4(10, 0, 2, 15), Mask: net.CIDRMask(24, 32)})
	ne := binary.NativeEndian
	want := []byte{unix.AF_INET, 24, 0, unix.RT_SCOPE_UNIVERSE}
	want = ne.AppendUint32(want, 7)
	for _, a := range []struct {
		typ uint16
		ip  []byte
	}{{unix.IFA_LOCAL, []byte{10, 0, 2, 15}}, {unix.IFA_ADDRESS, []byte{10, 0, 2, 15}}, {unix.IFA_BROADCAST, []byte{10, 0, 2, 255}}} {
		want = ne.AppendUint16(want, 8)
		want = ne.AppendUint16(want, a.typ)
		want = append(want, a.ip...)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("addrMessage = % x\nwant           % x", got, want)
	}
	if p2p := addrMessage(7, net.IPNet{IP: net.IPv4(10, 0, 0, 1), Mask: net.CIDRMask(32, 32)}); len(p2p) != 8+2*8 {
		t.Errorf("addrMessage(/32) has %d bytes, want no broadcast attribute", len(p2p))
	}
}

func TestRouteMessage(t *testing.T) {
	ne := binary.NativeEndian
	for _, onlink := range []bool{false, true} {
		got := routeMessage(3, net.IPv4(10, 0, 2, 2), onlink)
		want := []byte{unix.AF_INET, 0, 0, 0, unix.RT_TABLE_MAIN, unix.RTPROT_DHCP, unix.RT_SCOPE_UNIVERSE, unix.RTN_UNICAST}
		flags := uint32(0)
		if onlink {
			flags = unix.RTNH_F_ONLINK
		}
		want = ne.AppendUint32(want, flags)
		want = ne.AppendUint16(want, 8)
		want = ne.AppendUint16(want, unix.RTA_GATEWAY)
		want = append(want, 10, 0, 2, 2)
		want = ne.AppendUint16(want, 8)
		want = ne.AppendUint16(want, unix.RTA_OIF)
		want = ne.AppendUint32(want, 3)
		if !bytes.Equal(got, want) {
			t.Errorf("routeMessage(onlink %t) = % x\nwant % x", onlink, got, want)
		}
	}
}

func TestNLAck(t *testing.T) {
	ne := binary.NativeEndian
	msg := func(typ uint16, seq uint32, errno int32) []byte {
		b := ne.AppendUint32(nil, 16+4)
		b = ne.AppendUint16(b, typ)
		b = ne.AppendUint16(b, 0)
		b = ne.AppendUint32(b, seq)
		b = ne.AppendUint32(b, 0)
		return ne.AppendUint32(b, uint32(errno))
	}
	if done, err := nlAck(msg(unix.NLMSG_ERROR, 5, 0), 5); !done || err != nil {
		t.Errorf("nlAck(ack) = %t, %v; want done, nil", done, err)
	}
	if done, err := nlAck(append(msg(unix.NLMSG_ERROR, 4, 0), msg(unix.NLMSG_ERROR, 5, -int32(unix.EEXIST))...), 5); !done || err != unix.EEXIST {
		t.Errorf("nlAck(old ack, EEXIST) = %t, %v; want done, EEXIST", done, err)
	}
	if done, _ := nlAck(msg(unix.RTM_NEWADDR, 5, 0), 5); done {
		t.Error("nlAck(not an error message) = done")
	}
	if done, err := nlAck([]byte{0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 5); !done || err == nil {
		t.Errorf("nlAck(malformed) = %t, %v; want an error", done, err)
	}
}

func TestLeaseFromACK(t *testing.T) {
	ack, err := dhcpv4.New(
		dhcpv4.WithYourIP(net.IPv4(10, 99, 0, 50)),
		dhcpv4.WithNetmask(net.CIDRMask(24, 32)),
		dhcpv4.WithRouter(net.IPv4(10, 99, 0, 1)),
		dhcpv4.WithDNS(net.IPv4(10, 99, 0, 1)),
		dhcpv4.WithServerIP(net.IPv4(10, 99, 0, 1)),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(10, 99, 0, 1))),
		dhcpv4.WithLeaseTime(600),
	)
	if err != nil {
		t.Fatal(err)
	}
	l, err := leaseFromACK(Link{Name: "eth0", MAC: macA}, ack)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := l.String(), "eth0 10.99.0.50/24 router=10.99.0.1 dns=[10.99.0.1] server=10.99.0.1 lease=10m0s"; got != want {
		t.Errorf("leaseFromACK = %s, want %s", got, want)
	}
	bare, _ := dhcpv4.New(dhcpv4.WithYourIP(net.IPv4(192, 168, 1, 9)))
	if l, err := leaseFromACK(Link{Name: "eth0"}, bare); err != nil || l.Router != nil || l.Addr.String() != "192.168.1.9/24" {
		t.Errorf("leaseFromACK(no options) = %v, %v; want the class C default mask and no router", l, err)
	}
	none, _ := dhcpv4.New()
	if _, err := leaseFromACK(Link{Name: "eth0"}, none); err == nil {
		t.Error("leaseFromACK(no address) = nil error")
	}
}

// inNetns runs f on a locked thread moved to a new network namespace
// (the thread is thrown away after). It skips without root.
func inNetns(t *testing.T, f func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	done := make(chan bool)
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			t.Errorf("unshare: %v", err)
			return
		}
		f()
	}()
	<-done
}

// TestConfigureLeaseInNetns puts a lease on a veth in a fresh network
// namespace with the real netlink calls and reads it back.
func TestConfigureLeaseInNetns(t *testing.T) {
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("no ip(8)")
	}
	inNetns(t, func() {
		if out, err := exec.Command("ip", "link", "add", "nat0", "type", "veth", "peer", "name", "nat1").CombinedOutput(); err != nil {
			t.Errorf("ip link add: %v: %s", err, out)
			return
		}
		for _, n := range []string{"nat0", "nat1"} {
			if err := setLinkUp(n); err != nil {
				t.Errorf("setLinkUp(%s) = %v", n, err)
			}
		}
		for _, l := range []*Lease{
			{Interface: "nat0", Addr: net.IPNet{IP: net.IPv4(10, 77, 0, 144).To4(), Mask: net.CIDRMask(24, 32)}, Router: net.IPv4(10, 77, 0, 1).To4()},
			// Again (REPLACE), then a router outside the subnet (onlink).
			{Interface: "nat0", Addr: net.IPNet{IP: net.IPv4(10, 77, 0, 144).To4(), Mask: net.CIDRMask(24, 32)}, Router: net.IPv4(10, 77, 0, 1).To4()},
			{Interface: "nat0", Addr: net.IPNet{IP: net.IPv4(10, 78, 0, 9).To4(), Mask: net.CIDRMask(32, 32)}, Router: net.IPv4(10, 78, 1, 1).To4()},
		} {
			if err := configureLease(l); err != nil {
				t.Errorf("configureLease(%s) = %v", l, err)
			}
		}
		out, _ := exec.Command("ip", "-4", "-o", "addr", "show", "dev", "nat0").CombinedOutput()
		if !strings.Contains(string(out), "10.77.0.144/24 brd 10.77.0.255") || !strings.Contains(string(out), "10.78.0.9/32") {
			t.Errorf("addresses on nat0:\n%s\nwant 10.77.0.144/24 with its broadcast and 10.78.0.9/32", out)
		}
		out, _ = exec.Command("ip", "-4", "route", "show", "default").CombinedOutput()
		if !strings.Contains(string(out), "default via 10.78.1.1 dev nat0 proto dhcp onlink") {
			t.Errorf("default route:\n%s\nwant via 10.78.1.1 onlink", out)
		}
		lo, err := net.InterfaceByName("lo")
		if err != nil || lo.Flags&net.FlagUp == 0 {
			t.Errorf("lo = %+v, %v; want it up", lo, err)
		}
	})
}

// TestDHCPLeaseInNetns takes a real lease from dnsmasq across a veth pair
// between two network namespaces.
func TestDHCPLeaseInNetns(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	dnsmasq, err := exec.LookPath("dnsmasq")
	if err != nil {
		t.Skip("no dnsmasq")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("no ip(8)")
	}
	inNetns(t, func() {
		// This namespace is the client's; the server gets a named one.
		srv := "nodeagent-test-" + strings.ReplaceAll(t.Name(), "/", "-")
		run := func(args ...string) error {
			out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
			if err != nil {
				t.Errorf("%s: %v: %s", strings.Join(args, " "), err, out)
			}
			return err
		}
		_ = exec.Command("ip", "netns", "del", srv).Run()
		if run("ip", "netns", "add", srv) != nil {
			return
		}
		defer exec.Command("ip", "netns", "del", srv).Run()
		if run("ip", "link", "add", "dhc0", "type", "veth", "peer", "name", "dhs0") != nil ||
			run("ip", "link", "set", "dhs0", "netns", srv) != nil ||
			run("ip", "-n", srv, "addr", "add", "10.79.0.1/24", "dev", "dhs0") != nil ||
			run("ip", "-n", srv, "link", "set", "dhs0", "up") != nil {
			return
		}
		cmd := exec.Command("ip", "netns", "exec", srv, dnsmasq, "--no-daemon", "--conf-file=/dev/null", "--port=0",
			"--interface=dhs0", "--bind-interfaces", "--dhcp-range=10.79.0.100,10.79.0.150,255.255.255.0,10m",
			"--dhcp-option=3,10.79.0.1", "--dhcp-option=6,10.79.0.1", "--no-ping", "--dhcp-leasefile=/dev/null", "--no-resolv")
		var logs bytes.Buffer
		cmd.Stdout, cmd.Stderr = &logs, &logs
		if err := cmd.Start(); err != nil {
			t.Errorf("dnsmasq: %v", err)
			return
		}
		defer func() {
			cmd.Process.Kill()
			cmd.Wait()
			if t.Failed() {
				t.Logf("dnsmasq:\n%s", logs.String())
			}
		}()
		if err := setLinkUp("dhc0"); err != nil {
			t.Errorf("setLinkUp = %v", err)
			return
		}
		ifc, _ := net.InterfaceByName("dhc0")
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		defer cancel()
		start := time.Now()
		l, err := dhcpLease(ctx, Link{Name: "dhc0", MAC: ifc.HardwareAddr.String()}, slog.New(slog.NewTextHandler(testWriter{t}, nil)))
		if err != nil {
			t.Errorf("dhcpLease = %v", err)
			return
		}
		t.Logf("lease after %s: %s", time.Since(start).Round(time.Millisecond), l)
		if !(&net.IPNet{IP: net.IPv4(10, 79, 0, 0), Mask: net.CIDRMask(24, 32)}).Contains(l.Addr.IP) || !l.Router.Equal(net.IPv4(10, 79, 0, 1)) || l.Duration != 10*time.Minute {
			t.Errorf("lease = %s, want 10.79.0.x/24 via 10.79.0.1 for 10m", l)
		}
	})
}
