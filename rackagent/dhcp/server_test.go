package dhcp

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"go.etcd.io/bbolt"

	"github.com/metalfleet/metalfleet/ops/testkit"
	"github.com/metalfleet/metalfleet/proto"
)

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// loopbackServer runs a real server on 127.0.0.1 for a rack whose subnet
// is 127.0.0.0/24, so a test socket can play the relay.
func loopbackServer(t *testing.T) (*Server, *syncBuf) {
	t.Helper()
	st := &proto.RackBootState{
		Rack:             proto.Rack{Name: "r1", Subnet: "127.0.0.0/24", BootServer: "127.0.0.1", PoolStart: "127.0.0.100", PoolEnd: "127.0.0.199"},
		DiscoveryEnabled: true,
		Nodes:            []proto.BootNode{{UUID: "node-1", MACs: []string{knownMAC.String()}, IP: "127.0.0.10"}},
	}
	be := &fakeBackend{}
	be.set(st)
	db, err := bbolt.Open(t.TempDir()+"/agent.db", 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	pool, err := OpenPool(db, "a1", netip.MustParseAddr("127.0.0.100"), netip.MustParseAddr("127.0.0.199"))
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuf{}
	log := slog.New(slog.NewTextHandler(io.MultiWriter(logs, testWriter{t}), &slog.HandlerOptions{Level: slog.LevelDebug}))
	h := NewHandler(Config{Rack: "r1", Agent: "a1", ServerIP: netip.MustParseAddr("127.0.0.1"), HTTPBase: "http://127.0.0.1:8080", Logger: log}, be, pool, nil, &fakeReporter{})
	conn, err := Listen("", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(h, conn, "", log)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s, logs
}

// relay is a test socket that plays a DHCP relay on 127.0.0.1.
type relay struct {
	t    *testing.T
	conn *net.UDPConn
	srv  net.Addr
}

func newRelay(t *testing.T, srv net.Addr) *relay {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &relay{t: t, conn: c, srv: srv}
}

func (r *relay) exchange(m *dhcpv4.DHCPv4) *dhcpv4.DHCPv4 {
	r.t.Helper()
	m.GatewayIPAddr = net.IPv4(127, 0, 0, 1)
	if _, err := r.conn.WriteTo(m.ToBytes(), r.srv); err != nil {
		r.t.Fatal(err)
	}
	buf := make([]byte, 1500)
	r.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		n, _, err := r.conn.ReadFrom(buf)
		if err != nil {
			r.t.Fatalf("no answer to %s: %v", m.MessageType(), err)
		}
		rep, err := dhcpv4.FromBytes(buf[:n])
		if err != nil {
			r.t.Fatalf("bad answer: %v", err)
		}
		if rep.TransactionID == m.TransactionID {
			return rep
		}
	}
}

// TestRelayedOverLoopback runs DORA through a relay socket on loopback,
// with packets built by the library's client helpers.
func TestRelayedOverLoopback(t *testing.T) {
	s, _ := loopbackServer(t)
	r := newRelay(t, s.Addr())
	for _, mac := range []net.HardwareAddr{knownMAC, unknownMAC} {
		disc, err := dhcpv4.NewDiscovery(mac, pxeBIOS...)
		if err != nil {
			t.Fatal(err)
		}
		off := r.exchange(disc)
		if off.MessageType() != dhcpv4.MessageTypeOffer {
			t.Fatalf("%s: %s, want OFFER", mac, off.MessageType())
		}
		req, err := dhcpv4.NewRequestFromOffer(off, pxeBIOS...)
		if err != nil {
			t.Fatal(err)
		}
		ack := r.exchange(req)
		if ack.MessageType() != dhcpv4.MessageTypeAck || !ack.YourIPAddr.Equal(off.YourIPAddr) {
			t.Fatalf("%s: %s %s, want ACK %s", mac, ack.MessageType(), ack.YourIPAddr, off.YourIPAddr)
		}
		want := "127.0.0.100"
		if mac.String() == knownMAC.String() {
			want = "127.0.0.10"
		}
		if ack.YourIPAddr.String() != want {
			t.Fatalf("%s got %s, want %s", mac, ack.YourIPAddr, want)
		}
	}
}

// TestHostilePackets: garbage is dropped with a log line naming its
// source, and the server keeps answering.
func TestHostilePackets(t *testing.T) {
	s, logs := loopbackServer(t)
	bad, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	good, _ := dhcpv4.NewDiscovery(knownMAC, pxeBIOS...)
	raw := good.ToBytes()
	huge := append(append([]byte{}, raw[:240]...), 43, 255) // option 43 claiming 255 bytes, then nothing
	for _, p := range [][]byte{
		{}, {1}, raw[:100], raw[:239], huge, bytes.Repeat([]byte{0xff}, 1400),
		append(append([]byte{}, raw[:240]...), 53), // option code without a length
	} {
		bad.WriteTo(p, s.Addr())
	}
	r := newRelay(t, s.Addr())
	disc, _ := dhcpv4.NewDiscovery(knownMAC, pxeBIOS...)
	if off := r.exchange(disc); off.MessageType() != dhcpv4.MessageTypeOffer {
		t.Fatalf("after garbage: %s", off.MessageType())
	}
	testkit.Eventually(t, 2*time.Second, "a log line naming the bad packets' source "+bad.LocalAddr().String(), func() bool {
		return strings.Contains(logs.String(), "src="+bad.LocalAddr().String())
	})
	// Rate limited: seven bad packets, one line.
	// (Counted by the message key: the error text may repeat the words.)
	if n := strings.Count(logs.String(), `msg="malformed DHCP packet"`); n != 1 {
		t.Fatalf("%d log lines for one source's burst, want 1", n)
	}
	// Packets are handled concurrently: the count may trail the log line.
	testkit.Eventually(t, 2*time.Second, "a malformed count of at least 5", func() bool { return s.Stats.Malformed.Load() >= 5 })
}

// FuzzHandle: no input makes the parser or the handler panic.
func FuzzHandle(f *testing.F) {
	for _, mods := range [][]dhcpv4.Modifier{pxeBIOS, pxeEFI, httpEFI, ipxe, nil} {
		for _, typ := range []dhcpv4.MessageType{dhcpv4.MessageTypeDiscover, dhcpv4.MessageTypeRequest, dhcpv4.MessageTypeInform, dhcpv4.MessageTypeRelease, dhcpv4.MessageTypeDecline} {
			m, _ := dhcpv4.New(append([]dhcpv4.Modifier{dhcpv4.WithMessageType(typ), dhcpv4.WithHwAddr(knownMAC),
				dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.ParseIP("10.99.0.10")))}, mods...)...)
			f.Add(m.ToBytes())
		}
	}
	e := newEnv(&testing.T{})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := dhcpv4.FromBytes(b)
		if err != nil {
			return
		}
		r, err := e.h.Handle(Request{Msg: m, Src: netip.MustParseAddrPort("10.99.0.254:67")})
		if err == nil && r.Msg != nil {
			_ = r.Msg.ToBytes()
		}
	})
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
