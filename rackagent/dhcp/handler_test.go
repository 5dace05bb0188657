package dhcp

import (
	"context"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
	"go.etcd.io/bbolt"

	"github.com/metalfleet/metalfleet/coordinator/apiclient"
	"github.com/metalfleet/metalfleet/coordinator/coordtest"
	"github.com/metalfleet/metalfleet/ops/testkit"
	"github.com/metalfleet/metalfleet/proto"
	"github.com/metalfleet/metalfleet/rackagent/bootstate"
	"github.com/metalfleet/metalfleet/rackagent/nodeagent"
	"github.com/metalfleet/metalfleet/rackagent/outbox"
)

// fakeBackend serves a fixed view.
type fakeBackend struct {
	mu sync.Mutex
	v  *bootstate.View
}

func (f *fakeBackend) View() *bootstate.View { f.mu.Lock(); defer f.mu.Unlock(); return f.v }
func (f *fakeBackend) set(st *proto.RackBootState) {
	f.mu.Lock()
	f.v = bootstate.NewView(st)
	f.mu.Unlock()
}

// fakeReporter records reports.
type fakeReporter struct {
	mu sync.Mutex
	rs []proto.AgentReport
}

func (f *fakeReporter) Report(r proto.AgentReport) {
	f.mu.Lock()
	f.rs = append(f.rs, r)
	f.mu.Unlock()
}
func (f *fakeReporter) kinds() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, r := range f.rs {
		k := string(r.Kind)
		if r.LeaseEvent != "" {
			k += ":" + r.LeaseEvent
		}
		out = append(out, k)
	}
	return out
}

type splitFunc func(net.HardwareAddr) bool

func (f splitFunc) Mine(m net.HardwareAddr) bool { return f(m) }

var (
	knownMAC   = net.HardwareAddr{0x52, 0x54, 0x00, 0x00, 0x00, 0x01}
	unknownMAC = net.HardwareAddr{0x52, 0x54, 0x00, 0x00, 0x00, 0x99}
	serverIP   = netip.MustParseAddr("10.99.0.1")
)

func rackState() *proto.RackBootState {
	return &proto.RackBootState{
		Rack: proto.Rack{Name: "r1", Subnet: "10.99.0.0/24", Gateway: "10.99.0.254", BootServer: "10.99.0.1",
			DNS: []string{"10.99.0.53"}, PoolStart: "10.99.0.100", PoolEnd: "10.99.0.103", LeaseTime: proto.Duration(2 * time.Hour)},
		DiscoveryEnabled: true,
		Discovery:        proto.BootConfig{Kind: proto.BootDiscovery},
		Nodes: []proto.BootNode{{UUID: "node-1", Name: "n1", MACs: []string{knownMAC.String()}, IP: "10.99.0.10",
			Boot: proto.BootConfig{Kind: proto.BootLocalDisk}}},
		Index: 7,
	}
}

type env struct {
	t    *testing.T
	h    *Handler
	be   *fakeBackend
	rep  *fakeReporter
	pool *Pool
	db   *bbolt.DB
	now  time.Time
	path string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{t: t, be: &fakeBackend{}, rep: &fakeReporter{}, now: time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)}
	e.be.set(rackState())
	e.path = filepath.Join(t.TempDir(), "agent.db")
	e.open(nil)
	return e
}

func (e *env) open(split Splitter) {
	e.t.Helper()
	db, err := bbolt.Open(e.path, 0o600, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { db.Close() })
	e.db = db
	p, err := OpenPool(db, "a1", netip.MustParseAddr("10.99.0.100"), netip.MustParseAddr("10.99.0.103"))
	if err != nil {
		e.t.Fatal(err)
	}
	e.pool = p
	e.h = NewHandler(Config{Rack: "r1", Agent: "a1", ServerIP: serverIP, HTTPBase: "http://10.99.0.1:8080",
		Now: func() time.Time { return e.now }}, e.be, p, split, e.rep)
}

// pkt builds a request from mac with mods.
func pkt(t *testing.T, typ dhcpv4.MessageType, mac net.HardwareAddr, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	t.Helper()
	m, err := dhcpv4.New(append([]dhcpv4.Modifier{dhcpv4.WithMessageType(typ), dhcpv4.WithHwAddr(mac), dhcpv4.WithBroadcast(true)}, mods...)...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

var (
	pxeBIOS = []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")), dhcpv4.WithOption(dhcpv4.OptClientArch(iana.INTEL_X86PC))}
	pxeEFI  = []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00007:UNDI:003016")), dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_X86_64))}
	httpEFI = []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("HTTPClient:Arch:00016:UNDI:003001")), dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_X86_64_HTTP))}
	ipxe    = []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")), dhcpv4.WithOption(dhcpv4.OptUserClass("iPXE"))}
	// What the ramdisk's nodeagent sends.
	ramdisk = []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClassIdentifier(nodeagent.DHCPClassID))}
)

func (e *env) handle(m *dhcpv4.DHCPv4) (*Reply, error) {
	return e.h.Handle(Request{Msg: m, Src: netip.MustParseAddrPort("0.0.0.0:68"), Iface: "br0"})
}

func (e *env) answer(m *dhcpv4.DHCPv4) *dhcpv4.DHCPv4 {
	e.t.Helper()
	r, err := e.handle(m)
	if err != nil {
		e.t.Fatalf("%s from %s: no answer: %v", m.MessageType(), m.ClientHWAddr, err)
	}
	return r.Msg
}

func (e *env) silent(m *dhcpv4.DHCPv4, why string) {
	e.t.Helper()
	r, err := e.handle(m)
	if err == nil {
		e.t.Fatalf("%s from %s: answered %s, want silence", m.MessageType(), m.ClientHWAddr, r.Msg.MessageType())
	}
	if !strings.Contains(err.Error(), why) {
		e.t.Fatalf("%s from %s: dropped because %q, want %q", m.MessageType(), m.ClientHWAddr, err, why)
	}
}

// dora runs DISCOVER/OFFER/REQUEST/ACK for mac and returns the ACK.
func (e *env) dora(mac net.HardwareAddr, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	e.t.Helper()
	off := e.answer(pkt(e.t, dhcpv4.MessageTypeDiscover, mac, mods...))
	if off.MessageType() != dhcpv4.MessageTypeOffer {
		e.t.Fatalf("got %s, want OFFER", off.MessageType())
	}
	req := pkt(e.t, dhcpv4.MessageTypeRequest, mac, append(mods,
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(off.YourIPAddr)),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(off.ServerIdentifier())))...)
	ack := e.answer(req)
	if ack.MessageType() != dhcpv4.MessageTypeAck {
		e.t.Fatalf("got %s (%s), want ACK", ack.MessageType(), ack.Message())
	}
	if !ack.YourIPAddr.Equal(off.YourIPAddr) {
		e.t.Fatalf("ACK %s for OFFER %s", ack.YourIPAddr, off.YourIPAddr)
	}
	return ack
}

func TestKnownNodeGetsReservation(t *testing.T) {
	e := newEnv(t)
	ack := e.dora(knownMAC, pxeBIOS...)
	for _, c := range []struct{ what, got, want string }{
		{"yiaddr", ack.YourIPAddr.String(), "10.99.0.10"},
		{"server id", ack.ServerIdentifier().String(), "10.99.0.1"},
		{"mask", net.IP(ack.SubnetMask()).String(), "255.255.255.0"},
		{"router", ack.Router()[0].String(), "10.99.0.254"},
		{"dns", ack.DNS()[0].String(), "10.99.0.53"},
		{"lease", ack.IPAddressLeaseTime(0).String(), "2h0m0s"},
		{"hostname", ack.HostName(), "n1"},
		{"bootfile", ack.BootFileNameOption(), "undionly.kpxe"},
		{"BOOTP file", ack.BootFileName, "undionly.kpxe"},
		{"siaddr", ack.ServerIPAddr.String(), "10.99.0.1"},
		{"option 66", ack.TFTPServerName(), "10.99.0.1"},
		{"option 60", ack.ClassIdentifier(), "PXEClient"},
	} {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", c.what, c.got, c.want)
		}
	}
	if got := ack.GetOneOption(dhcpv4.OptionVendorSpecificInformation); len(got) == 0 {
		t.Errorf("no option 43 for a PXE client")
	}
	if got := e.rep.kinds(); len(got) == 0 || got[0] != "boot_event" {
		t.Errorf("reports = %v, want a boot_event first", got)
	}
	if len(e.pool.Leases()) != 0 {
		t.Errorf("a known node took a pool lease")
	}
}

func TestNetbootOptionsByClient(t *testing.T) {
	for _, tc := range []struct {
		name     string
		mods     []dhcpv4.Modifier
		bootfile string
		class    string
		opt175   bool
	}{
		{"bios pxe", pxeBIOS, "undionly.kpxe", "PXEClient", false},
		{"uefi pxe", pxeEFI, "ipxe.efi", "PXEClient", false},
		{"uefi http", httpEFI, "http://10.99.0.1:8080/tftp/ipxe.efi", "HTTPClient", false},
		{"ipxe", ipxe, "http://10.99.0.1:8080/boot/52:54:00:00:00:01.ipxe", "", true},
		{"plain dhcp", nil, "", "", false},
		{"ramdisk", ramdisk, "", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			off := e.answer(pkt(t, dhcpv4.MessageTypeDiscover, knownMAC, tc.mods...))
			if got := off.BootFileNameOption(); got != tc.bootfile {
				t.Errorf("bootfile = %q, want %q", got, tc.bootfile)
			}
			if got := off.ClassIdentifier(); got != tc.class {
				t.Errorf("option 60 = %q, want %q", got, tc.class)
			}
			got175 := off.GetOneOption(dhcpv4.GenericOptionCode(175))
			if tc.opt175 != (string(got175) == string(ipxeNoPXEDHCP)) {
				t.Errorf("option 175 = %v, want no-pxedhcp %v", got175, tc.opt175)
			}
		})
	}
}

func TestUnknownMACs(t *testing.T) {
	e := newEnv(t)
	ack := e.dora(unknownMAC, pxeBIOS...)
	if ack.YourIPAddr.String() != "10.99.0.100" {
		t.Fatalf("first pool address = %s, want 10.99.0.100", ack.YourIPAddr)
	}
	e.h.FlushSightings()
	if got := e.rep.kinds(); strings.Join(got, ",") != "lease:bound,mac_seen" {
		t.Fatalf("reports = %v", got)
	}
	if c := e.rep.rs[1].Count; c != 2 {
		t.Errorf("mac_seen count = %d, want 2 (DISCOVER and REQUEST)", c)
	}
	// The same MAC asks again: the same address.
	if again := e.dora(unknownMAC, pxeBIOS...); !again.YourIPAddr.Equal(ack.YourIPAddr) {
		t.Fatalf("second DORA gave %s, want %s", again.YourIPAddr, ack.YourIPAddr)
	}
	// A plain DHCP client with an unknown MAC: only if the rack says so.
	other := net.HardwareAddr{0x52, 0x54, 0x00, 0x00, 0x00, 0x98}
	e.silent(pkt(t, dhcpv4.MessageTypeDiscover, other), "not a netboot client")
	st := rackState()
	st.Rack.AnswerNonPXE = true
	e.be.set(st)
	e.answer(pkt(t, dhcpv4.MessageTypeDiscover, other))
	// Discovery off: unknown netboot clients get nothing; known ones do.
	st.DiscoveryEnabled = false
	e.be.set(st)
	e.silent(pkt(t, dhcpv4.MessageTypeDiscover, net.HardwareAddr{0x52, 0x54, 0x00, 0x00, 0x00, 0x97}, pxeBIOS...), "discovery is off")
	e.answer(pkt(t, dhcpv4.MessageTypeDiscover, knownMAC, pxeBIOS...))
}

// TestDiscoveryRamdisk: the discovery ramdisk of an unknown MAC (its
// nodeagent's vendor class, no PXE or iPXE) gets an address while
// discovery is on, the one its firmware got, and no boot file; with
// discovery off it gets nothing.
func TestDiscoveryRamdisk(t *testing.T) {
	e := newEnv(t)
	fw := e.dora(unknownMAC, ipxe...)
	ack := e.dora(unknownMAC, ramdisk...)
	if !ack.YourIPAddr.Equal(fw.YourIPAddr) {
		t.Errorf("ramdisk got %s, want its firmware's %s", ack.YourIPAddr, fw.YourIPAddr)
	}
	if ack.BootFileNameOption() != "" || ack.BootFileName != "" || ack.ClassIdentifier() != "" {
		t.Errorf("ramdisk's ACK has boot file %q / %q, option 60 %q; want none", ack.BootFileNameOption(), ack.BootFileName, ack.ClassIdentifier())
	}
	st := rackState()
	st.DiscoveryEnabled = false
	e.be.set(st)
	e.silent(pkt(t, dhcpv4.MessageTypeDiscover, net.HardwareAddr{0x52, 0x54, 0x00, 0x00, 0x00, 0x97}, ramdisk...), "discovery is off")
}

func TestRequestRules(t *testing.T) {
	e := newEnv(t)
	// A known node asking for another address is refused.
	nak := e.answer(pkt(t, dhcpv4.MessageTypeRequest, knownMAC, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.ParseIP("10.99.0.11")))))
	if nak.MessageType() != dhcpv4.MessageTypeNak || !strings.Contains(nak.Message(), "reserved 10.99.0.10") {
		t.Fatalf("got %s %q, want NAK naming the reservation", nak.MessageType(), nak.Message())
	}
	// An unknown MAC asking for an address held by another MAC: NAK.
	e.dora(unknownMAC, pxeBIOS...)
	thief := net.HardwareAddr{0x52, 0x54, 0x00, 0x00, 0x00, 0x77}
	nak = e.answer(pkt(t, dhcpv4.MessageTypeRequest, thief, append(pxeBIOS, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.ParseIP("10.99.0.100"))))...))
	if nak.MessageType() != dhcpv4.MessageTypeNak || !strings.Contains(nak.Message(), "in use by") {
		t.Fatalf("got %s %q, want NAK: in use", nak.MessageType(), nak.Message())
	}
	// INIT-REBOOT with a stale lease (no server id): an unknown MAC gets
	// nothing outside the pool, least of all a node's reservation.
	for ip, why := range map[string]string{"10.99.0.10": "outside the rack's pool", "10.99.0.1": "outside the rack's pool", "10.99.0.50": "outside the rack's pool"} {
		nak = e.answer(pkt(t, dhcpv4.MessageTypeRequest, thief, append(pxeBIOS, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.ParseIP(ip))))...))
		if nak.MessageType() != dhcpv4.MessageTypeNak || !strings.Contains(nak.Message(), why) {
			t.Fatalf("stale REQUEST for %s: %s %q, want NAK %q", ip, nak.MessageType(), nak.Message(), why)
		}
	}
	st := rackState()
	st.Nodes = append(st.Nodes, proto.BootNode{UUID: "node-in-pool", MACs: []string{"52:54:00:00:00:02"}, IP: "10.99.0.102"})
	e.be.set(st)
	nak = e.answer(pkt(t, dhcpv4.MessageTypeRequest, thief, append(pxeBIOS, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.ParseIP("10.99.0.102"))))...))
	if nak.MessageType() != dhcpv4.MessageTypeNak || !strings.Contains(nak.Message(), "reserved for node node-in-pool") {
		t.Fatalf("REQUEST for a reservation in the pool: %s %q", nak.MessageType(), nak.Message())
	}
	e.pool.SetShare(netip.MustParseAddr("10.99.0.100"), netip.MustParseAddr("10.99.0.101"))
	nak = e.answer(pkt(t, dhcpv4.MessageTypeRequest, thief, append(pxeBIOS, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.ParseIP("10.99.0.103"))))...))
	if nak.MessageType() != dhcpv4.MessageTypeNak || !strings.Contains(nak.Message(), "another agent's share") {
		t.Fatalf("REQUEST in the other agent's share: %s %q", nak.MessageType(), nak.Message())
	}
	e.be.set(rackState())
	e.pool.SetShare(netip.MustParseAddr("10.99.0.100"), netip.MustParseAddr("10.99.0.103"))
	// Outside the subnet: NAK.
	nak = e.answer(pkt(t, dhcpv4.MessageTypeRequest, thief, append(pxeBIOS, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.ParseIP("192.0.2.1"))))...))
	if nak.MessageType() != dhcpv4.MessageTypeNak {
		t.Fatalf("request outside the subnet: %s", nak.MessageType())
	}
	// A client that chose another server: silence.
	e.silent(pkt(t, dhcpv4.MessageTypeRequest, thief, append(pxeBIOS,
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.ParseIP("10.99.0.101"))),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.ParseIP("10.99.0.2"))))...), "chose server")
	// RENEWING: ciaddr set, no option 50; answered to ciaddr.
	r, err := e.handle(pkt(t, dhcpv4.MessageTypeRequest, unknownMAC, append(pxeBIOS,
		dhcpv4.WithClientIP(net.ParseIP("10.99.0.100")), dhcpv4.WithBroadcast(false))...))
	if err != nil || r.Msg.MessageType() != dhcpv4.MessageTypeAck || r.Broadcast || r.Dst.String() != "10.99.0.100:68" {
		t.Fatalf("renew: %v %+v", err, r)
	}
}

func TestReleaseDeclineInform(t *testing.T) {
	e := newEnv(t)
	ack := e.dora(unknownMAC, pxeBIOS...)
	e.silent(pkt(t, dhcpv4.MessageTypeRelease, unknownMAC, dhcpv4.WithClientIP(ack.YourIPAddr)), "RELEASE")
	if len(e.pool.Leases()) != 0 {
		t.Fatalf("lease kept after RELEASE")
	}
	// DECLINE: the address is not offered again for a while.
	ack = e.dora(unknownMAC, pxeBIOS...)
	declined := ack.YourIPAddr
	e.silent(pkt(t, dhcpv4.MessageTypeDecline, unknownMAC, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(declined))), "DECLINE")
	off := e.answer(pkt(t, dhcpv4.MessageTypeDiscover, unknownMAC, pxeBIOS...))
	if off.YourIPAddr.Equal(declined) {
		t.Fatalf("declined %s offered again", declined)
	}
	if got := strings.Join(e.rep.kinds(), ","); !strings.Contains(got, "lease:released") || !strings.Contains(got, "lease:declined") {
		t.Fatalf("reports = %s", got)
	}
	// INFORM: options, no address, to ciaddr.
	r, err := e.handle(pkt(t, dhcpv4.MessageTypeInform, knownMAC, dhcpv4.WithClientIP(net.ParseIP("10.99.0.10")), dhcpv4.WithBroadcast(false)))
	if err != nil || r.Msg.MessageType() != dhcpv4.MessageTypeAck || !r.Msg.YourIPAddr.IsUnspecified() ||
		r.Dst.String() != "10.99.0.10:68" || r.Msg.Options.Has(dhcpv4.OptionIPAddressLeaseTime) {
		t.Fatalf("inform: %v %+v", err, r)
	}
}

func TestPoolExhaustedAndExpiry(t *testing.T) {
	e := newEnv(t)
	for i := 0; i < 4; i++ {
		e.dora(net.HardwareAddr{0x52, 0x54, 0x00, 0x01, 0x00, byte(i)}, pxeBIOS...)
	}
	e.silent(pkt(t, dhcpv4.MessageTypeDiscover, unknownMAC, pxeBIOS...), "no free address")
	e.now = e.now.Add(3 * time.Hour)
	gone, err := e.pool.Expire(e.now)
	if err != nil || len(gone) != 4 {
		t.Fatalf("expired %d leases (%v), want 4", len(gone), err)
	}
	e.dora(unknownMAC, pxeBIOS...)
}

func TestRelayRules(t *testing.T) {
	e := newEnv(t)
	m := pkt(t, dhcpv4.MessageTypeDiscover, knownMAC, append(pxeBIOS, dhcpv4.WithGatewayIP(net.ParseIP("10.99.0.254")))...)
	r, err := e.h.Handle(Request{Msg: m, Src: netip.MustParseAddrPort("10.99.0.254:67")})
	if err != nil || r.Broadcast || r.Dst.String() != "10.99.0.254:67" || !r.Msg.GatewayIPAddr.Equal(net.ParseIP("10.99.0.254")) {
		t.Fatalf("relayed: %v %+v", err, r)
	}
	m = pkt(t, dhcpv4.MessageTypeDiscover, knownMAC, append(pxeBIOS, dhcpv4.WithGatewayIP(net.ParseIP("192.0.2.1")))...)
	if _, err := e.h.Handle(Request{Msg: m, Src: netip.MustParseAddrPort("192.0.2.1:67")}); err == nil || !strings.Contains(err.Error(), "outside rack subnet") {
		t.Fatalf("relay from outside the rack: %v", err)
	}
	// A NAK through a relay asks the relay to broadcast it.
	m = pkt(t, dhcpv4.MessageTypeRequest, knownMAC, dhcpv4.WithBroadcast(false), dhcpv4.WithGatewayIP(net.ParseIP("10.99.0.254")),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.ParseIP("10.99.0.11"))))
	r, err = e.h.Handle(Request{Msg: m, Src: netip.MustParseAddrPort("10.99.0.254:67")})
	if err != nil || r.Msg.MessageType() != dhcpv4.MessageTypeNak || !r.Msg.IsBroadcast() || r.Dst.String() != "10.99.0.254:67" {
		t.Fatalf("relayed NAK: %v %+v", err, r)
	}
}

func TestBadRequests(t *testing.T) {
	e := newEnv(t)
	reply := pkt(t, dhcpv4.MessageTypeDiscover, knownMAC)
	reply.OpCode = dhcpv4.OpcodeBootReply
	e.silent(reply, "not a BOOTREQUEST")
	short := pkt(t, dhcpv4.MessageTypeDiscover, net.HardwareAddr{1, 2, 3})
	e.silent(short, "length 3")
	if nak := e.answer(pkt(t, dhcpv4.MessageTypeRequest, knownMAC)); nak.MessageType() != dhcpv4.MessageTypeNak {
		t.Fatalf("REQUEST without an address: %s, want NAK", nak.MessageType())
	}
}

// TestLeasesSurviveRestart: a restarted agent gives a MAC its address back
// and never gives that address to another MAC.
func TestLeasesSurviveRestart(t *testing.T) {
	e := newEnv(t)
	ack := e.dora(unknownMAC, pxeBIOS...)
	e.db.Close()
	e.open(nil)
	off := e.answer(pkt(t, dhcpv4.MessageTypeDiscover, unknownMAC, pxeBIOS...))
	if !off.YourIPAddr.Equal(ack.YourIPAddr) {
		t.Fatalf("after restart offered %s, want %s", off.YourIPAddr, ack.YourIPAddr)
	}
	other := e.dora(net.HardwareAddr{0x52, 0x54, 0x00, 0x00, 0x00, 0x55}, pxeBIOS...)
	if other.YourIPAddr.Equal(ack.YourIPAddr) {
		t.Fatalf("after restart %s was given to a second MAC", ack.YourIPAddr)
	}
}

// TestTwoAgentsNeverShareAnAddress: two agents of one rack with disjoint
// shares split unknown MACs; when one dies the survivor answers every MAC,
// honours the dead one's leases and gives no address to two MACs. The
// agents' reports go through real outboxes to a real coordinator, and
// each agent answers from the boot state that coordinator gives it (its
// own leases included).
func TestTwoAgentsNeverShareAnAddress(t *testing.T) {
	ctx := t.Context()
	srv, adminTok := coordtest.StartSingle(t)
	admin := apiclient.New(srv.HTTPAddr(), adminTok)
	if _, err := admin.Do(ctx, "POST", "/v1/racks", proto.Rack{Name: "r1", Subnet: "10.99.0.0/24", BootServer: "10.99.0.1",
		PoolStart: "10.99.0.100", PoolEnd: "10.99.0.139", AnswerNonPXE: true}, nil); err != nil {
		t.Fatal(err)
	}
	var tok proto.TokenCreated
	if _, err := admin.Do(ctx, "POST", "/v1/tokens", proto.TokenCreate{Role: proto.RoleAgent, Rack: "r1"}, &tok); err != nil {
		t.Fatal(err)
	}
	type agentEnv struct {
		h   *Handler
		be  *fakeBackend
		out *outbox.Outbox
		c   *apiclient.Client
	}
	// sync gives an agent the coordinator's current boot state, as its
	// long poll would.
	sync := func(a agentEnv) {
		t.Helper()
		st, err := a.c.BootState(ctx, "r1", 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		a.be.set(st)
	}
	mk := func(name string, k int, peerAlive *bool) agentEnv {
		db, err := bbolt.Open(filepath.Join(t.TempDir(), name+".db"), 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		first, last, err := Share(netip.MustParseAddr("10.99.0.100"), netip.MustParseAddr("10.99.0.139"), k, 2)
		if err != nil {
			t.Fatal(err)
		}
		p, err := OpenPool(db, name, first, last)
		if err != nil {
			t.Fatal(err)
		}
		out, err := outbox.Open(db, outbox.Config{})
		if err != nil {
			t.Fatal(err)
		}
		c := apiclient.New(srv.HTTPAddr(), tok.Secret)
		c.SetHeader("X-Metalfleet-Agent", name)
		runCtx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); out.Run(runCtx, coordSender{c}) }()
		t.Cleanup(func() { cancel(); <-done })
		split := splitFunc(func(m net.HardwareAddr) bool { return !*peerAlive || int(m[5])%2 == k })
		a := agentEnv{be: &fakeBackend{}, out: out, c: c}
		sync(a)
		a.h = NewHandler(Config{Rack: "r1", Agent: name, ServerIP: serverIP}, a.be, p, split, outboxReporter{out})
		return a
	}
	alive := true
	a := mk("a", 0, &alive)
	b := mk("b", 1, &alive)
	owner := map[string]string{} // ip -> mac, across both agents
	bind := func(h *Handler, mac net.HardwareAddr) (string, bool) {
		off, err := h.Handle(Request{Msg: pkt(t, dhcpv4.MessageTypeDiscover, mac)})
		if err != nil {
			return "", false
		}
		ack, err := h.Handle(Request{Msg: pkt(t, dhcpv4.MessageTypeRequest, mac,
			dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(off.Msg.YourIPAddr)))})
		if err != nil || ack.Msg.MessageType() != dhcpv4.MessageTypeAck {
			t.Fatalf("%s: no ACK for its own offer: %v", mac, err)
		}
		ip := ack.Msg.YourIPAddr.String()
		if prev, ok := owner[ip]; ok && prev != mac.String() {
			t.Fatalf("%s handed to %s and %s", ip, prev, mac)
		}
		owner[ip] = mac.String()
		return ip, true
	}
	answered := map[string]int{}
	for i := 0; i < 20; i++ {
		mac := net.HardwareAddr{0x52, 0x54, 0x00, 0x02, 0x00, byte(i)}
		_, okA := bind(a.h, mac)
		_, okB := bind(b.h, mac)
		if okA == okB {
			t.Fatalf("%s answered by a=%v b=%v: want exactly one", mac, okA, okB)
		}
		if okA {
			answered["a"]++
		} else {
			answered["b"]++
		}
	}
	if answered["a"] != 10 || answered["b"] != 10 {
		t.Fatalf("split %v, want 10/10", answered)
	}
	// Every lease reaches the coordinator; then b dies, and a has the
	// coordinator's boot state: b's leases and its own.
	testkit.Eventually(t, 20*time.Second, "both outboxes delivered", func() bool { return a.out.Len() == 0 && b.out.Len() == 0 })
	sync(a)
	if n := len(a.be.View().State.Leases); n != 20 {
		t.Fatalf("the coordinator's boot state for a holds %d leases, want 20 (a's own and b's)", n)
	}
	alive = false
	for i := 0; i < 20; i++ {
		mac := net.HardwareAddr{0x52, 0x54, 0x00, 0x02, 0x00, byte(i)}
		ip, ok := bind(a.h, mac)
		if !ok {
			t.Fatalf("survivor did not answer %s", mac)
		}
		if owner[ip] != mac.String() {
			t.Fatalf("survivor gave %s to %s, which held %s before", ip, mac, ip)
		}
	}
	// New MACs come from the survivor's own share, never b's.
	for i := 20; i < 30; i++ {
		ip, ok := bind(a.h, net.HardwareAddr{0x52, 0x54, 0x00, 0x02, 0x00, byte(i)})
		if !ok {
			t.Fatalf("survivor did not answer a new MAC")
		}
		if a4 := netip.MustParseAddr(ip); !a4.Less(netip.MustParseAddr("10.99.0.120")) {
			t.Fatalf("survivor allocated %s from its peer's share", ip)
		}
	}
	// The coordinator agrees: 30 leases, no address twice.
	testkit.Eventually(t, 20*time.Second, "a's outbox delivered", func() bool { return a.out.Len() == 0 })
	sync(a)
	seen := map[string]string{}
	for _, l := range a.be.View().State.Leases {
		if prev, dup := seen[l.IP]; dup {
			t.Fatalf("the coordinator records %s for %s and %s", l.IP, prev, l.MAC)
		}
		seen[l.IP] = l.MAC
	}
	if len(seen) != 30 {
		t.Errorf("the coordinator records %d leases, want 30", len(seen))
	}
}

// outboxReporter queues reports in a real outbox.
type outboxReporter struct{ o *outbox.Outbox }

func (r outboxReporter) Report(rep proto.AgentReport) {
	if _, err := r.o.Add(rep); err != nil {
		panic(err)
	}
}

// coordSender delivers an outbox to the coordinator.
type coordSender struct{ c *apiclient.Client }

func (s coordSender) Send(ctx context.Context, rs []proto.AgentReport) (proto.ReportAck, error) {
	return s.c.Reports(ctx, "r1", rs)
}

func TestShare(t *testing.T) {
	for _, tc := range []struct {
		start, end string
		k, n       int
		want       string
	}{
		{"10.0.0.100", "10.0.0.199", 0, 1, "10.0.0.100-10.0.0.199"},
		{"10.0.0.100", "10.0.0.199", 0, 2, "10.0.0.100-10.0.0.149"},
		{"10.0.0.100", "10.0.0.199", 1, 2, "10.0.0.150-10.0.0.199"},
		{"10.0.0.100", "10.0.0.102", 2, 3, "10.0.0.102-10.0.0.102"},
	} {
		a, b, err := Share(netip.MustParseAddr(tc.start), netip.MustParseAddr(tc.end), tc.k, tc.n)
		if got := a.String() + "-" + b.String(); err != nil || got != tc.want {
			t.Errorf("Share(%s-%s, %d/%d) = %s, %v, want %s", tc.start, tc.end, tc.k, tc.n, got, err, tc.want)
		}
	}
	if _, _, err := Share(netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.1"), 1, 2); err == nil {
		t.Errorf("a one-address pool shared two ways: no error")
	}
}

// TestPoolChangeNoNAKLoop: after the rack's pool moves, a MAC holding a
// lease outside the new pool is offered a valid address (its old lease
// is ended and reported), and the REQUEST for that offer is ACKed: no
// DISCOVER/NAK loop until the old lease runs out. A lease the coordinator
// records (another agent's) outside the pool is not offered either.
func TestPoolChangeNoNAKLoop(t *testing.T) {
	e := newEnv(t)
	old := e.dora(unknownMAC, pxeBIOS...)
	other := net.HardwareAddr{0x52, 0x54, 0x00, 0x00, 0x00, 0x77}

	st := rackState()
	st.Rack.PoolStart, st.Rack.PoolEnd = "10.99.0.110", "10.99.0.113"
	st.Leases = []proto.Lease{{MAC: other.String(), IP: "10.99.0.101", Expires: e.now.Add(time.Hour), Agent: "a2"}}
	e.be.set(st)
	e.pool.SetShare(netip.MustParseAddr("10.99.0.110"), netip.MustParseAddr("10.99.0.113"))

	for _, mac := range []net.HardwareAddr{unknownMAC, other} {
		ack := e.dora(mac, pxeBIOS...) // fails on a NAK
		ip, _ := netip.AddrFromSlice(ack.YourIPAddr.To4())
		if ip.Less(netip.MustParseAddr("10.99.0.110")) || netip.MustParseAddr("10.99.0.113").Less(ip) {
			t.Errorf("%s got %s after the pool moved to 10.99.0.110-113", mac, ip)
		}
	}
	if held, ok := e.pool.Lookup(unknownMAC.String(), noExternal{}, e.now); !ok || held.String() == old.YourIPAddr.String() {
		t.Errorf("pool holds %s for %s, want a new address", held, unknownMAC)
	}
	var ended bool
	for _, r := range e.rep.rs {
		if r.Kind == proto.ReportLease && r.LeaseEvent == "released" && r.Lease.IP == old.YourIPAddr.String() {
			ended = true
		}
	}
	if !ended {
		t.Errorf("reports %v: the old lease %s was not reported ended", e.rep.kinds(), old.YourIPAddr)
	}
}

// TestDropInvalid: the pool ends the leases a new pool no longer allows.
func TestDropInvalid(t *testing.T) {
	e := newEnv(t)
	a := e.dora(unknownMAC, pxeBIOS...)
	b := e.dora(net.HardwareAddr{0x52, 0x54, 0x00, 0x00, 0x00, 0x78}, pxeBIOS...)
	keep := netip.MustParseAddr(b.YourIPAddr.String())
	gone, err := e.pool.DropInvalid(func(ip netip.Addr) bool { return ip == keep })
	if err != nil || len(gone) != 1 || gone[0].IP != a.YourIPAddr.String() {
		t.Fatalf("DropInvalid = %v, %v, want the lease of %s", gone, err, a.YourIPAddr)
	}
	e.db.Close()
	e.open(nil)
	if ls := e.pool.Leases(); len(ls) != 1 || ls[0].IP != keep.String() {
		t.Errorf("after reopen the pool holds %v, want only %s", ls, keep)
	}
}

// TestSightingsFlood: a flood of unknown MACs becomes at most
// MaxNewSightings mac_seen reports per interval, each with its count; the
// rest is counted as left out; a MAC reported is held back for SeenEvery;
// lease reports are not held back at all.
func TestSightingsFlood(t *testing.T) {
	e := newEnv(t)
	e.h = NewHandler(Config{Rack: "r1", Agent: "a1", ServerIP: serverIP, MaxNewSightings: 50, SeenEvery: 30 * time.Second,
		Now: func() time.Time { return e.now }}, e.be, e.pool, nil, e.rep)
	ack := e.dora(unknownMAC, pxeBIOS...) // a lease among the flood
	for i := range 300 {
		mac := net.HardwareAddr{0x02, 0x00, 0x00, 0x00, byte(i >> 8), byte(i)}
		for range 3 {
			e.handle(pkt(t, dhcpv4.MessageTypeDiscover, mac, pxeBIOS...))
		}
	}
	if got := e.rep.kinds(); strings.Join(got, ",") != "lease:bound" {
		t.Fatalf("reports before the flush = %v, want only the lease", got)
	}
	e.h.FlushSightings()
	seen := 0
	for _, r := range e.rep.rs[1:] {
		if r.Kind != proto.ReportMACSeen {
			t.Fatalf("report %+v, want mac_seen", r)
		}
		seen++
		want := 3
		if r.MAC == unknownMAC.String() {
			want = 2
		}
		if r.Count != want {
			t.Errorf("mac_seen %s count %d, want %d", r.MAC, r.Count, want)
		}
	}
	if seen != 50 {
		t.Errorf("%d mac_seen reports for 301 MACs, want the cap 50", seen)
	}
	// unknownMAC (2 sightings) and 49 flood MACs made it; 251 flood MACs
	// of 3 sightings each were left out.
	if got := e.h.SightingsLeftOut(); got != 251*3 {
		t.Errorf("SightingsLeftOut() = %d, want %d", got, 251*3)
	}
	if !ack.YourIPAddr.Equal(net.ParseIP("10.99.0.100")) {
		t.Errorf("lease %s", ack.YourIPAddr)
	}

	// A MAC just reported is held back for SeenEvery, then reported with
	// what it gathered meanwhile.
	e.rep.rs = nil
	e.handle(pkt(t, dhcpv4.MessageTypeDiscover, unknownMAC, pxeBIOS...))
	e.h.FlushSightings()
	if len(e.rep.rs) != 0 {
		t.Fatalf("reports %v within SeenEvery of the last, want none", e.rep.kinds())
	}
	e.now = e.now.Add(31 * time.Second)
	e.h.FlushSightings()
	if len(e.rep.rs) != 1 || e.rep.rs[0].MAC != unknownMAC.String() || e.rep.rs[0].Count != 1 {
		t.Fatalf("after SeenEvery: reports %+v, want one mac_seen of %s with count 1", e.rep.rs, unknownMAC)
	}
}
