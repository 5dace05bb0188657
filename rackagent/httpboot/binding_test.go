package httpboot

import (
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/metalfleet/metalfleet/ops/testkit"
	"github.com/metalfleet/metalfleet/proto"
)

// TestSourceBinding: a discovery inventory is accepted only from the
// address this agent leased to the MAC (and only after its discovery
// boot), and a boot script carrying a task token is served only to the
// node's own address. Refusals are 403 with a log line naming the
// source. (The test's requests all come from 127.0.0.1.)
func TestSourceBinding(t *testing.T) {
	var logs testkit.SyncBuffer
	h := newHarness(t, 1<<20, func(c *Config) {
		c.CallbackBurst = 1000
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	h.backend.setDiscovery(discoveryConfig())
	h.backend.addNode(ramdiskNode()) // aa:bb:cc:00:00:02, with a task token
	const (
		leasedHere  = "aa:bb:cc:00:00:11" // leased 127.0.0.1: the test's source
		leasedThere = "aa:bb:cc:00:00:12" // leased 127.0.0.2
		noLease     = "aa:bb:cc:00:00:13"
	)
	h.backend.setAddr(leasedThere, netip.MustParseAddr("127.0.0.2"))
	h.backend.setAddr(noLease, netip.Addr{})
	for _, mac := range []string{leasedHere, leasedThere, noLease} {
		if st, body, _ := h.do("GET", "/boot/"+mac+".ipxe", nil, nil); st != 200 {
			t.Fatalf("discovery script for %s = %d %s", mac, st, body)
		}
	}
	inventory := func(mac string) (int, string) {
		st, body, _ := h.do("POST", "/v1/callback/inventory", map[string]string{proto.MACHeader: mac}, strings.NewReader(`{"cpus":{"count":1}}`))
		return st, body
	}
	if st, body := inventory(leasedHere); st != 202 {
		t.Errorf("inventory from the MAC's own lease = %d %s, want 202", st, body)
	}
	// Their scripts went to 127.0.0.1, not their own address: served,
	// but no inventory armed, so theirs from 127.0.0.1 is refused.
	for _, mac := range []string{leasedThere, noLease} {
		st, body := inventory(mac)
		if st != 403 {
			t.Errorf("inventory for %s from 127.0.0.1 = %d %s, want 403", mac, st, body)
		}
	}
	if !strings.Contains(logs.String(), "inventory not armed") || !strings.Contains(logs.String(), "source=127.0.0.1") {
		t.Errorf("no log line naming the source the script went to:\n%s", logs.String())
	}
	// Armed from its own address, then posted from another: refused,
	// naming the lease.
	h.serveFrom("127.0.0.2:68", "GET", "/boot/"+leasedThere+".ipxe", nil, "")
	if st, body := inventory(leasedThere); st != 403 || !strings.Contains(body, "127.0.0.2") {
		t.Errorf("inventory for %s from 127.0.0.1, armed from its lease 127.0.0.2 = %d %s, want 403 naming it", leasedThere, st, body)
	}
	if !strings.Contains(logs.String(), "inventory refused") {
		t.Errorf("no log line for the refused inventory:\n%s", logs.String())
	}
	// A lease but no discovery boot served: refused too.
	if st, _ := inventory("aa:bb:cc:00:00:14"); st != 403 {
		t.Errorf("inventory for a MAC never served discovery = %d, want 403", st)
	}

	// The task token's script: to the node's own address only.
	h.backend.setAddr("aa:bb:cc:00:00:02", netip.MustParseAddr("10.99.0.20"))
	st, body, _ := h.do("GET", "/boot/aa:bb:cc:00:00:02.ipxe", nil, nil)
	if st != 403 || strings.Contains(body, testToken) {
		t.Errorf("script with a task token to another address = %d %q, want 403 without the token", st, body)
	}
	if !strings.Contains(logs.String(), "boot script with a task token refused") {
		t.Errorf("no log line for the refused script:\n%s", logs.String())
	}
	h.backend.setAddr("aa:bb:cc:00:00:02", netip.MustParseAddr("127.0.0.1"))
	if st, body, _ := h.do("GET", "/boot/aa:bb:cc:00:00:02.ipxe", nil, nil); st != 200 || !strings.Contains(body, "metalfleet.token="+testToken) {
		t.Errorf("script with a task token to the node's own address = %d %q, want 200 with the token", st, body)
	}
}
