//go:build linux

package agent_test

// DHCP and TFTP over real sockets, with real Debian clients, between two
// network namespaces: the rack agent (a real `metalfleet rackagent`
// process, its DHCP socket bound to a veth with SO_BINDTODEVICE) on one
// side, dhclient, tftp-hpa and a Go client on the other. See
// netns_helpers_test.go for how the namespaces are wired. These tests need
// root and ops/apt-packages.txt; they skip without them unless CI is set.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
	"go.etcd.io/bbolt"

	"github.com/metalfleet/metalfleet/ops/netlab"
	"github.com/metalfleet/metalfleet/proto"
)

// inPool reports whether ip is in the lab rack's dynamic pool (.100-.199).
func (l *nsLab) inPool(ip string) bool {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return false
	}
	lo, hi := netip.MustParseAddr(l.prefix()+".100"), netip.MustParseAddr(l.prefix()+".199")
	return !a.Less(lo) && !hi.Less(a)
}

// TestNetnsDhclientLeases: Debian's dhclient, in its own namespace, gets a
// known node's reservation, a pool address for an unknown PXE client while
// discovery is on, the same address again (after a fresh DISCOVER and
// after an INIT-REBOOT REQUEST), and nothing once discovery is off.
func TestNetnsDhclientLeases(t *testing.T) {
	lap := netlab.Laps(t)
	l := newNSLab(t)
	lap("namespaces and veth")
	l.startFleet("52:54:00:77:00:01")
	lap("coordinator up; rack, token, images, node")
	l.startAgent()
	lap("agent up and synced")

	// A known MAC, not a netboot client: its reservation and the rack's
	// options.
	l.setClientMAC(l.KnownMAC)
	r := l.dhclient(false, "", 8)
	if r.IP != l.KnownIP {
		t.Fatalf("known MAC %s got %q, want its reservation %s\n%s", l.KnownMAC, r.IP, l.KnownIP, r.Output)
	}
	for opt, want := range map[string]string{"dhcp-server-identifier": l.ServerIP, "subnet-mask": "255.255.255.0",
		"routers": l.ServerIP, "host-name": "n1"} {
		if got := r.option(opt); got != want {
			t.Errorf("known MAC's lease: option %s = %q, want %q\n%s", opt, got, want, r.Lease)
		}
	}
	lap(fmt.Sprintf("known MAC -> %s (dhclient %.2fs)", r.IP, r.Took.Seconds()))

	// An unknown PXE client while discovery is on: a pool address and
	// iPXE for BIOS over TFTP.
	u1 := "52:54:00:77:01:01"
	l.setClientMAC(u1)
	r1 := l.dhclient(true, "", 8)
	if !l.inPool(r1.IP) {
		t.Fatalf("unknown PXE MAC %s got %q, want a pool address\n%s", u1, r1.IP, r1.Output)
	}
	for opt, want := range map[string]string{"bootfile-name": "undionly.kpxe", "tftp-server-name": l.ServerIP,
		"vendor-class-identifier": "PXEClient", "dhcp-server-identifier": l.ServerIP} {
		if got := r1.option(opt); got != want {
			t.Errorf("unknown PXE MAC's lease: option %s = %q, want %q\n%s", opt, got, want, r1.Lease)
		}
	}
	lap(fmt.Sprintf("unknown PXE MAC -> %s (dhclient %.2fs)", r1.IP, r1.Took.Seconds()))

	// The same MAC again, from scratch (DISCOVER): the same address.
	r2 := l.dhclient(true, "", 8)
	if r2.IP != r1.IP {
		t.Fatalf("second run for %s got %q, want %s again\n%s", u1, r2.IP, r1.IP, r2.Output)
	}
	// And keeping its lease file: dhclient asks for it straight away
	// (INIT-REBOOT, a REQUEST without a DISCOVER) and gets it.
	r3 := l.dhclient(true, r1.LeaseFile, 8)
	if r3.IP != r1.IP {
		t.Fatalf("INIT-REBOOT run for %s got %q, want %s\n%s", u1, r3.IP, r1.IP, r3.Output)
	}
	if strings.Contains(r3.Output, "DHCPDISCOVER") {
		t.Errorf("INIT-REBOOT of a valid lease fell back to DISCOVER (the REQUEST was refused or ignored):\n%s", r3.Output)
	}
	lap(fmt.Sprintf("same MAC twice -> same address (%.2fs, %.2fs)", r2.Took.Seconds(), r3.Took.Seconds()))

	// Another unknown MAC: another pool address.
	u2 := "52:54:00:77:01:02"
	l.setClientMAC(u2)
	r4 := l.dhclient(true, "", 8)
	if !l.inPool(r4.IP) || r4.IP == r1.IP {
		t.Fatalf("second unknown MAC %s got %q, want a pool address other than %s\n%s", u2, r4.IP, r1.IP, r4.Output)
	}
	lap(fmt.Sprintf("second unknown MAC -> %s", r4.IP))

	// Discovery off: an unknown MAC gets no answer at all.
	l.setDiscovery(false)
	u3 := "52:54:00:77:01:03"
	l.wait(15*time.Second, "the agent to see discovery off", l.agent, func() bool { return l.scriptStatus(u3) == 404 })
	lap("discovery off, agent synced")
	l.setClientMAC(u3)
	r5 := l.dhclient(true, "", 8)
	if r5.IP != "" || strings.Contains(r5.Output, "DHCPOFFER of") {
		t.Fatalf("with discovery off unknown MAC %s got an answer (%q)\n%s", u3, r5.IP, r5.Output)
	}
	if !strings.Contains(r5.Output, "DHCPDISCOVER") {
		t.Fatalf("dhclient sent no DISCOVER:\n%s", r5.Output)
	}
	if log, _ := os.ReadFile(l.agent.LogPath); !bytes.Contains(log, []byte(u3)) || !bytes.Contains(log, []byte("discovery is off")) {
		t.Errorf("the agent's log does not say why %s got no answer", u3)
	}
	lap(fmt.Sprintf("discovery off: no lease for unknown MAC (dhclient gave up after %.2fs)", r5.Took.Seconds()))

	// The known node is still answered.
	l.setClientMAC(l.KnownMAC)
	if r := l.dhclient(false, "", 8); r.IP != l.KnownIP {
		t.Fatalf("with discovery off the known MAC got %q, want %s\n%s", r.IP, l.KnownIP, r.Output)
	}
	lap("discovery off: known MAC still gets its reservation")
}

// TestNetnsAgentRestartKeepsLeases: a lease an agent granted survives a
// SIGTERM restart on the same data dir: the same MAC gets the same
// address, and no other MAC gets it.
func TestNetnsAgentRestartKeepsLeases(t *testing.T) {
	lap := netlab.Laps(t)
	l := newNSLab(t)
	l.startFleet("52:54:00:77:00:01")
	l.startAgent()
	lap("lab, coordinator and agent up")

	m1 := "52:54:00:77:02:01"
	l.setClientMAC(m1)
	r1 := l.dhclient(true, "", 8)
	if !l.inPool(r1.IP) {
		t.Fatalf("%s got %q, want a pool address\n%s", m1, r1.IP, r1.Output)
	}
	lap(fmt.Sprintf("%s -> %s", m1, r1.IP))

	pid := l.agent.Cmd.Process.Pid
	if err := l.agent.Stop(syscall.SIGTERM, 10*time.Second); err != nil {
		t.Fatalf("agent (pid %d) on SIGTERM: %v, want a clean exit", pid, err)
	}
	lap(fmt.Sprintf("agent pid %d stopped by SIGTERM", pid))

	// The lease is on disk in the agent's bolt file.
	db, err := bbolt.Open(filepath.Join(l.agentDir, "agent.db"), 0o600, &bbolt.Options{ReadOnly: true, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatalf("agent.db after stop: %v", err)
	}
	var onDisk proto.Lease
	err = db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte("leases"))
		if b == nil {
			return fmt.Errorf("no leases bucket")
		}
		v := b.Get([]byte(r1.IP))
		if v == nil {
			return fmt.Errorf("no lease of %s", r1.IP)
		}
		return json.Unmarshal(v, &onDisk)
	})
	db.Close()
	if err != nil || onDisk.MAC != m1 {
		t.Fatalf("agent.db's lease of %s: %+v, %v; want one for %s", r1.IP, onDisk, err, m1)
	}

	l.startAgent()
	lap(fmt.Sprintf("agent restarted (pid %d) on the same data dir", l.agent.Cmd.Process.Pid))
	r2 := l.dhclient(true, "", 8)
	if r2.IP != r1.IP {
		t.Fatalf("after restart %s got %q, want %s again\n%s", m1, r2.IP, r1.IP, r2.Output)
	}
	m2 := "52:54:00:77:02:02"
	l.setClientMAC(m2)
	r3 := l.dhclient(true, "", 8)
	if !l.inPool(r3.IP) || r3.IP == r1.IP {
		t.Fatalf("after restart new MAC %s got %q, want a pool address other than %s\n%s", m2, r3.IP, r1.IP, r3.Output)
	}
	lap(fmt.Sprintf("after restart: %s -> %s again, %s -> %s", m1, r2.IP, m2, r3.IP))
}

var (
	nsPXEBIOS = []dhcpv4.Modifier{
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")),
		dhcpv4.WithOption(dhcpv4.OptClientArch(iana.INTEL_X86PC)),
	}
	nsPXEUEFI = []dhcpv4.Modifier{
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00007:UNDI:003016")),
		dhcpv4.WithOption(dhcpv4.OptClientArch(iana.Arch(7))),
	}
	// What iPXE sends: its user class besides a PXE vendor class.
	nsIPXE = []dhcpv4.Modifier{
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")),
		dhcpv4.WithOption(dhcpv4.OptClientArch(iana.INTEL_X86PC)),
		dhcpv4.WithUserClass("iPXE", false),
	}
)

// TestNetnsPXEOptionsGoClient: a Go client on the client veth (a UDP
// socket on 0.0.0.0:68 in the client namespace, broadcasting from an
// interface without an address) runs whole DORA exchanges and checks the
// netboot options per client kind, and that a REQUEST for the wrong
// address is NAKed.
func TestNetnsPXEOptionsGoClient(t *testing.T) {
	lap := netlab.Laps(t)
	l := newNSLab(t)
	l.startFleet("52:54:00:77:00:01")
	l.startAgent()
	lap("lab, coordinator and agent up")
	c := l.dhcpClient()
	server := net.ParseIP(l.ServerIP).To4()

	check := func(what string, m *dhcpv4.DHCPv4, typ dhcpv4.MessageType, bootfile string, tftp bool) {
		t.Helper()
		if m.MessageType() != typ {
			t.Fatalf("%s: %s (%s), want %s", what, m.MessageType(), m.Message(), typ)
		}
		if !m.ServerIdentifier().Equal(server) {
			t.Errorf("%s: server identifier %v, want %s", what, m.ServerIdentifier(), server)
		}
		if got := m.BootFileNameOption(); got != bootfile {
			t.Errorf("%s: bootfile (option 67) %q, want %q", what, got, bootfile)
		}
		if lt := m.IPAddressLeaseTime(0); lt <= 0 {
			t.Errorf("%s: no lease time", what)
		}
		if got := net.IP(m.SubnetMask()).String(); got != "255.255.255.0" {
			t.Errorf("%s: netmask %s", what, got)
		}
		if tftp {
			if !m.ServerIPAddr.Equal(server) {
				t.Errorf("%s: siaddr %v, want the TFTP server %s", what, m.ServerIPAddr, server)
			}
			if got := m.TFTPServerName(); got != l.ServerIP {
				t.Errorf("%s: option 66 %q, want %s", what, got, l.ServerIP)
			}
			if got := m.ClassIdentifier(); got != "PXEClient" {
				t.Errorf("%s: option 60 %q, want PXEClient", what, got)
			}
			if got := m.Options.Get(dhcpv4.OptionVendorSpecificInformation); !bytes.Equal(got, []byte{6, 1, 8, 255}) {
				t.Errorf("%s: option 43 %v, want PXE_DISCOVERY_CONTROL=8 [6 1 8 255]", what, got)
			}
		}
	}
	dora := func(what string, mac net.HardwareAddr, mods []dhcpv4.Modifier, bootfile string, tftp bool) string {
		t.Helper()
		start := time.Now()
		off, ack, err := c.request(mac, mods...)
		if err != nil {
			t.Fatalf("%s (%s): %v", what, mac, err)
		}
		check(what+" OFFER", off, dhcpv4.MessageTypeOffer, bootfile, tftp)
		check(what+" ACK", ack, dhcpv4.MessageTypeAck, bootfile, tftp)
		if !ack.YourIPAddr.Equal(off.YourIPAddr) {
			t.Errorf("%s: ACK of %s after an OFFER of %s", what, ack.YourIPAddr, off.YourIPAddr)
		}
		lap(fmt.Sprintf("%s: %s -> %s (%.1f ms)", what, mac, ack.YourIPAddr, float64(time.Since(start).Microseconds())/1000))
		return ack.YourIPAddr.String()
	}

	bios := net.HardwareAddr{0x52, 0x54, 0, 0x77, 3, 0}
	if ip := dora("BIOS PXE (93=0)", bios, nsPXEBIOS, "undionly.kpxe", true); !l.inPool(ip) {
		t.Errorf("BIOS PXE client got %s, want a pool address", ip)
	}
	uefi := net.HardwareAddr{0x52, 0x54, 0, 0x77, 3, 7}
	if ip := dora("UEFI PXE (93=7)", uefi, nsPXEUEFI, "ipxe.efi", true); !l.inPool(ip) {
		t.Errorf("UEFI PXE client got %s, want a pool address", ip)
	}

	// iPXE: its script's URL (no chain-load loop), and option 175 with
	// no-pxedhcp (176) = 1, both for an unknown and a known MAC.
	for _, mac := range []net.HardwareAddr{bios, mustMAC(t, l.KnownMAC)} {
		url := fmt.Sprintf("http://%s:8080/boot/%s.ipxe", l.ServerIP, mac)
		off, ack, err := c.request(mac, nsIPXE...)
		if err != nil {
			t.Fatalf("iPXE %s: %v", mac, err)
		}
		for _, m := range []*dhcpv4.DHCPv4{off, ack} {
			check("iPXE "+m.MessageType().String(), m, m.MessageType(), url, false)
			if got := m.Options.Get(dhcpv4.GenericOptionCode(175)); !bytes.Equal(got, []byte{176, 1, 1}) {
				t.Errorf("iPXE %s %s: option 175 = %v, want [176 1 1] (no-pxedhcp)", mac, m.MessageType(), got)
			}
		}
		if ack.MessageType() != dhcpv4.MessageTypeAck {
			t.Fatalf("iPXE %s: %s", mac, ack.MessageType())
		}
		if mac.String() == l.KnownMAC && ack.YourIPAddr.String() != l.KnownIP {
			t.Errorf("iPXE on the known MAC got %s, want %s", ack.YourIPAddr, l.KnownIP)
		}
		lap(fmt.Sprintf("iPXE %s -> %s, %s", mac, ack.YourIPAddr, url))
	}

	// A REQUEST for an address that is not the node's reservation is
	// NAKed, whether INIT-REBOOT (no server id) or SELECTING (ours).
	known := mustMAC(t, l.KnownMAC)
	wrong := net.ParseIP(l.prefix() + ".150").To4()
	for _, sid := range []net.IP{nil, server} {
		mods := []dhcpv4.Modifier{dhcpv4.WithHwAddr(known), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
			dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(wrong))}
		if sid != nil {
			mods = append(mods, dhcpv4.WithOption(dhcpv4.OptServerIdentifier(sid)))
		}
		req, err := dhcpv4.New(mods...)
		if err != nil {
			t.Fatal(err)
		}
		rep, err := c.exchange(req, 3*time.Second)
		if err != nil {
			t.Fatalf("REQUEST of %s for the known MAC (server id %v): %v", wrong, sid, err)
		}
		if rep.MessageType() != dhcpv4.MessageTypeNak {
			t.Fatalf("REQUEST of %s for the known MAC (server id %v): %s (yiaddr %s), want NAK", wrong, sid, rep.MessageType(), rep.YourIPAddr)
		}
		if !rep.ServerIdentifier().Equal(server) || !rep.YourIPAddr.IsUnspecified() {
			t.Errorf("NAK: server id %v, yiaddr %v; want %s, 0.0.0.0", rep.ServerIdentifier(), rep.YourIPAddr, server)
		}
		lap(fmt.Sprintf("REQUEST %s (server id %v) for known MAC -> NAK %q", wrong, sid, rep.Message()))
	}
	// The right address is still ACKed.
	req, _ := dhcpv4.New(dhcpv4.WithHwAddr(known), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.ParseIP(l.KnownIP))))
	if rep, err := c.exchange(req, 3*time.Second); err != nil || rep.MessageType() != dhcpv4.MessageTypeAck {
		t.Fatalf("INIT-REBOOT REQUEST of the reservation: %v %v, want ACK", rep, err)
	}
	lap("REQUEST of the reservation -> ACK")

	// An unknown MAC's REQUEST without a server id (INIT-REBOOT, as
	// dhclient sends for the address in a stale lease file) gets a NAK for
	// anything but an address it may lease: never a known node's
	// reservation, the agent's own address, the network or broadcast
	// address, or an address outside the pool.
	for i, ip := range []string{l.KnownIP, l.ServerIP, l.prefix() + ".0", l.prefix() + ".255", l.prefix() + ".50"} {
		mac := net.HardwareAddr{0x52, 0x54, 0, 0x77, 0x0e, byte(i)}
		req, _ := dhcpv4.New(append([]dhcpv4.Modifier{dhcpv4.WithHwAddr(mac), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
			dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.ParseIP(ip)))}, nsPXEBIOS...)...)
		rep, err := c.exchange(req, 3*time.Second)
		if err != nil || rep.MessageType() != dhcpv4.MessageTypeNak {
			t.Fatalf("unknown MAC %s's INIT-REBOOT REQUEST for %s (not a pool address): %v %v, want NAK", mac, ip, rep, err)
		}
	}
}

func mustMAC(t *testing.T, s string) net.HardwareAddr {
	t.Helper()
	m, err := net.ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestNetnsTFTPDebianClient: a PXE client's whole first step with Debian
// clients: dhclient gets a lease naming a bootfile and a TFTP server, and
// tftp-hpa, from the leased address, fetches that file byte for byte (and
// snponly.efi); a path out of the TFTP root is refused.
func TestNetnsTFTPDebianClient(t *testing.T) {
	lap := netlab.Laps(t)
	l := newNSLab(t)
	l.startFleet("52:54:00:77:00:01")
	l.startAgent()
	lap("lab, coordinator and agent up")

	l.setClientMAC("52:54:00:77:04:01")
	r := l.dhclient(true, "", 8)
	bootfile, server := r.option("bootfile-name"), r.option("tftp-server-name")
	if r.IP == "" || bootfile == "" || server != l.ServerIP {
		t.Fatalf("PXE lease: ip %q bootfile %q tftp server %q\n%s\n%s", r.IP, bootfile, server, r.Output, r.Lease)
	}
	// dhclient -sf /bin/true configures nothing: give the client veth its
	// leased address as the PXE ROM would.
	netlab.Run(t, "ip", "-n", l.B, "addr", "add", r.IP+"/24", "dev", l.IfB)
	lap(fmt.Sprintf("dhclient: %s, bootfile %s from %s", r.IP, bootfile, server))

	tftp := func(file string) (out string, got []byte) {
		t.Helper()
		dst := filepath.Join(l.dir, "tftp-"+strings.NewReplacer("/", "_", ".", "_").Replace(file))
		cmd := exec.Command("timeout", "20", "ip", "netns", "exec", l.B, "tftp", server, "-m", "binary", "-c", "get", file, dst)
		o, err := cmd.CombinedOutput()
		if err != nil {
			t.Logf("tftp get %s: %v", file, err)
		}
		got, _ = os.ReadFile(dst)
		return string(o), got
	}
	for _, f := range []string{bootfile, "snponly.efi"} {
		start := time.Now()
		out, got := tftp(f)
		want, err := os.ReadFile(filepath.Join("/usr/lib/ipxe", f))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("tftp get %s: %d bytes, want the %d bytes of /usr/lib/ipxe/%s\n%s", f, len(got), len(want), f, out)
		}
		lap(fmt.Sprintf("tftp get %s: %d bytes identical (%.2fs)", f, len(got), time.Since(start).Seconds()))
	}
	// ipxe.efi, offered to UEFI PXE clients, is in Debian's package a
	// symlink out of /usr/lib/ipxe (to /boot); the agent copies it into
	// its own TFTP root, so it is served while escaping symlinks are not.
	if out, got := tftp("ipxe.efi"); len(got) == 0 {
		t.Fatalf("tftp get ipxe.efi (offered to UEFI PXE clients): %s", strings.TrimSpace(out))
	}
	for _, f := range []string{"../../etc/passwd", "/etc/passwd"} {
		out, got := tftp(f)
		if len(got) != 0 || !strings.Contains(out, "Error code") {
			t.Fatalf("tftp get %s: %d bytes, output %q; want an error and nothing", f, len(got), out)
		}
		lap(fmt.Sprintf("tftp get %s refused: %s", f, strings.TrimSpace(out)))
	}
}

// TestNetnsDhclientRenewsAndReleases: with a short lease, dhclient renews:
// a unicast REQUEST from its (now configured) address to the agent,
// answered by a unicast ACK it accepts, for the same address. Then
// `dhclient -r` releases the lease and the agent drops it.
func TestNetnsDhclientRenewsAndReleases(t *testing.T) {
	lap := netlab.Laps(t)
	l := newNSLab(t)
	l.startFleet("52:54:00:77:00:01")
	var rk proto.Rack
	l.mustCall("GET", "/v1/racks/r1", nil, &rk)
	rk.LeaseTime = proto.Duration(8 * time.Second)
	l.mustCall("PUT", "/v1/racks/r1", rk, nil)
	l.startAgent()
	lap("lab up, rack lease time 8s")

	mac := "52:54:00:77:05:01"
	l.setClientMAC(mac)
	var boundAt time.Time
	r := l.dhclientRun(nsDhclientOpts{PXE: true, Timeout: 8, Binds: 2, OnBound: func(ip string) {
		boundAt = time.Now()
		// What dhclient-script would do: the renewal is sent from it.
		netlab.Run(t, "ip", "-n", l.B, "addr", "add", ip+"/24", "dev", l.IfB)
	}})
	if r.Binds < 2 || !l.inPool(r.IP) {
		t.Fatalf("dhclient bound %d times (last %q), want a bind and a renewal of a pool address\n%s", r.Binds, r.IP, r.Output)
	}
	renew := fmt.Sprintf("DHCPREQUEST for %s on %s to %s port 67", r.IP, l.IfB, l.ServerIP)
	if !strings.Contains(r.Output, renew) {
		t.Errorf("no unicast renewal (%q) in:\n%s", renew, r.Output)
	}
	if n := strings.Count(r.Output, "DHCPDISCOVER"); n != 1 {
		t.Errorf("%d DISCOVERs, want 1 (the renewal must not fall back to INIT):\n%s", n, r.Output)
	}
	if log, _ := os.ReadFile(l.agent.LogPath); !bytes.Contains(log, []byte(`"dst":"`+r.IP+`:68"`)) {
		t.Errorf("the agent's log shows no unicast answer to %s:68", r.IP)
	}
	lap(fmt.Sprintf("%s -> %s, renewed %.1fs later", mac, r.IP, time.Since(boundAt).Seconds()))

	// dhclient -r: a fresh pid file, so it signals no process.
	conf := filepath.Join(l.dir, "release.conf")
	if err := os.WriteFile(conf, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	out := netlab.Run(t, "timeout", "15", "ip", "netns", "exec", l.B, "dhclient", "-4", "-r", "-v", "-sf", "/bin/true",
		"-lf", r.LeaseFile, "-pf", filepath.Join(l.dir, "release.pid"), "-cf", conf, l.IfB)
	if want := fmt.Sprintf("DHCPRELEASE of %s on %s to %s port 67", r.IP, l.IfB, l.ServerIP); !strings.Contains(out, want) {
		t.Fatalf("dhclient -r did not send %q:\n%s", want, out)
	}
	l.wait(5*time.Second, "the agent to take the RELEASE", l.agent, func() bool {
		log, _ := os.ReadFile(l.agent.LogPath)
		return bytes.Contains(log, []byte("RELEASE answered by silence (held: true)"))
	})
	lap(fmt.Sprintf("dhclient -r released %s", r.IP))
}
