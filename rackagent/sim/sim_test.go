package sim

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/metalfleet/metalfleet/proto"
)

// TestInventoryIdentity: every simulated machine reports a system
// identity of its own that is no firmware placeholder, and an inventory
// the size of a real one.
func TestInventoryIdentity(t *testing.T) {
	seen := map[string]string{}
	serials := map[string]bool{}
	for k := range 3 {
		for i := 1; i <= 2000; i++ {
			mac := net.HardwareAddr{0x52, 0x54, 0x00, byte(0xde + k), byte(i >> 8), byte(i)}
			inv := Inventory(mac)
			id := proto.SystemIdentity(inv.System)
			if id == "" || proto.IsPlaceholderID(inv.System.UUID) || proto.IsPlaceholderID(inv.System.Serial) {
				t.Fatalf("Inventory(%s).System = %+v: a placeholder identity", mac, inv.System)
			}
			if other, dup := seen[id]; dup {
				t.Fatalf("Inventory(%s) and Inventory(%s) share identity %s", mac, other, id)
			}
			if serials[inv.System.Serial] {
				t.Fatalf("Inventory(%s): serial %s repeats", mac, inv.System.Serial)
			}
			seen[id], serials[inv.System.Serial] = mac.String(), true
			if inv.Interfaces[1].MAC == inv.Interfaces[0].MAC {
				t.Fatalf("Inventory(%s): both NICs have MAC %s", mac, inv.Interfaces[0].MAC)
			}
		}
	}
	b, _ := json.Marshal(Inventory(net.HardwareAddr{0x52, 0x54, 0, 0xde, 0, 1}))
	if len(b) < 3000 || len(b) > 8000 {
		t.Errorf("inventory is %d bytes of JSON; a real one is 3-8 KB", len(b))
	}
}

// TestDHCPRetransmit: a DHCP message that gets no answer is sent again
// after the firmware's timeout, and the retry is counted (a real UDP
// server on loopback that ignores the first DISCOVER and the first
// REQUEST).
func TestDHCPRetransmit(t *testing.T) {
	// Every first transmission is lost.
	srv := lossyDHCP(t, net.IPv4(127, 0, 0, 50), func(n int64) bool { return n%2 == 1 })
	var acked []string
	m := &Machine{MAC: net.HardwareAddr{0x52, 0x54, 0, 0xde, 0, 1}, DHCP: srv.LocalAddr().(*net.UDPAddr), RelayIP: net.IPv4(127, 0, 0, 1),
		Firmware: Firmware{DHCPTimeouts: []time.Duration{250 * time.Millisecond, 500 * time.Millisecond}}, // wide enough for a loaded core
		OnLease: func(mac net.HardwareAddr, ip net.IP, d time.Duration) {
			acked = append(acked, ip.String())
		}}
	var r Retries
	ack, err := m.dora(context.Background(), m.Firmware.withDefaults(), nil, &r)
	if err != nil {
		t.Fatalf("dora with a lossy server: %v (retries %+v)", err, r)
	}
	if ack.YourIPAddr.String() != "127.0.0.50" || len(acked) != 1 {
		t.Errorf("dora: ACK of %s, OnLease heard %v; want 127.0.0.50 once", ack.YourIPAddr, acked)
	}
	if r.DHCP != 2 {
		t.Errorf("DHCP retries = %d, want 2 (DISCOVER and REQUEST each sent twice)", r.DHCP)
	}
}

// TestLeaseBook: an address ACKed to a second MAC while the first MAC's
// lease runs is a duplicate; after it ended, or to the same MAC, it is
// not.
func TestLeaseBook(t *testing.T) {
	now := time.Date(2026, 11, 30, 4, 0, 0, 0, time.UTC)
	b := LeaseBook{Now: func() time.Time { return now }}
	a, c := net.HardwareAddr{2, 0, 0, 0, 0, 1}, net.HardwareAddr{2, 0, 0, 0, 0, 2}
	ip := net.IPv4(127, 1, 128, 1)
	b.Ack(a, ip, time.Hour)
	b.Ack(a, ip, time.Hour)
	b.Ack(a, net.IPv4(127, 2, 128, 1), time.Hour)
	if d := b.Duplicates(); len(d) != 0 {
		t.Fatalf("Duplicates() = %v, want none", d)
	}
	b.Ack(c, ip, time.Hour)
	if d := b.Duplicates(); len(d) != 1 {
		t.Fatalf("Duplicates() = %v, want one", d)
	}
	b.Ack(a, net.IPv4(127, 3, 128, 1), time.Minute)
	now = now.Add(time.Minute + time.Second)
	b.Ack(c, net.IPv4(127, 3, 128, 1), time.Hour)
	if d := b.Duplicates(); len(d) != 1 {
		t.Errorf("Duplicates() = %v; an ended lease's address may go to another MAC", d)
	}
}

func TestQuantiles(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	p50, p99, mx := Quantiles(ds)
	if p50 != 50*time.Millisecond || p99 != 99*time.Millisecond || mx != 100*time.Millisecond {
		t.Errorf("Quantiles(1..100 ms) = %s, %s, %s; want 50ms, 99ms, 100ms", p50, p99, mx)
	}
	if a, b, c := Quantiles(nil); a != 0 || b != 0 || c != 0 {
		t.Errorf("Quantiles(nil) = %s, %s, %s; want zeros", a, b, c)
	}
}

// TestRebootAfterFailedBoot: a boot that fails (here: no DHCP answer at
// all to the first DISCOVER) is started over after RebootAfter, like
// firmware, and the reboot is counted; the second boot runs to its
// local-disk script (from the address it leased).
func TestRebootAfterFailedBoot(t *testing.T) {
	var scriptFrom atomic.Value
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		scriptFrom.Store(r.RemoteAddr)
		io.WriteString(w, "#!ipxe\nsanboot --no-describe --drive 0x80\n")
	}))
	defer web.Close()
	// The first boot's DISCOVER is lost.
	srv := lossyDHCP(t, net.IPv4(127, 0, 0, 51), func(n int64) bool { return n == 1 },
		dhcpv4.WithOption(dhcpv4.OptBootFileName(web.URL+"/boot/script.ipxe")))
	m := &Machine{MAC: net.HardwareAddr{0x52, 0x54, 0, 0xde, 0, 2}, DHCP: srv.LocalAddr().(*net.UDPAddr), RelayIP: net.IPv4(127, 0, 0, 1),
		BindLease: true, Firmware: Firmware{DHCPTimeouts: []time.Duration{250 * time.Millisecond}, RebootAfter: 10 * time.Millisecond, MaxBoots: 3}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := m.Run(ctx)
	if err != nil {
		t.Fatalf("Run: %v (result %+v)", err, res)
	}
	if res.Retries.Boots != 1 || len(res.Errors) != 1 || res.Reported || res.IP != "127.0.0.51" {
		t.Errorf("Run = boots retried %d, errors %v, reported %v, ip %s; want 1 reboot after 1 error, a local boot from 127.0.0.51",
			res.Retries.Boots, res.Errors, res.Reported, res.IP)
	}
	if from, _ := scriptFrom.Load().(string); !strings.HasPrefix(from, "127.0.0.51:") {
		t.Errorf("script fetched from %q, want the leased 127.0.0.51", from)
	}
}

// lossyDHCP is a DHCP server on loopback that offers and ACKs ip to any
// client, but ignores the n-th message received (1-based) when lose(n);
// extra options go into every answer. It stops with the test.
func lossyDHCP(t *testing.T, ip net.IP, lose func(n int64) bool, extra ...dhcpv4.Modifier) *net.UDPConn {
	t.Helper()
	srv, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	var got atomic.Int64
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := srv.ReadFrom(buf)
			if err != nil {
				return
			}
			req, err := dhcpv4.FromBytes(buf[:n])
			if err != nil || lose(got.Add(1)) {
				continue
			}
			typ := dhcpv4.MessageTypeOffer
			if req.MessageType() == dhcpv4.MessageTypeRequest {
				typ = dhcpv4.MessageTypeAck
			}
			mods := append([]dhcpv4.Modifier{dhcpv4.WithMessageType(typ), dhcpv4.WithYourIP(ip),
				dhcpv4.WithServerIP(net.IPv4(127, 0, 0, 1)), dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(127, 0, 0, 1))),
				dhcpv4.WithLeaseTime(3600)}, extra...)
			resp, _ := dhcpv4.NewReplyFromRequest(req, mods...)
			srv.WriteTo(resp.ToBytes(), from)
		}
	}()
	return srv
}
