package httpboot

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/proto"
)

// serveFrom runs one request through the server's handler as if it came
// from remote (host:port).
func (h *harness) serveFrom(remote, method, path string, hdr map[string]string, body string) (int, string) {
	h.t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	req.RemoteAddr = remote
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	h.srv.Handler().ServeHTTP(rec, req)
	return rec.Code, rec.Body.String()
}

// TestScriptFloodMakesNoReports: GETs of discovery scripts for made-up
// MACs make no report at all (their DHCP sightings tell the coordinator of
// them), and a known node's script is reported at most once per
// BootEventEvery.
func TestScriptFloodMakesNoReports(t *testing.T) {
	h := newHarness(t, 1<<20)
	h.backend.addNode(ramdiskNode())
	h.backend.setDiscovery(discoveryConfig())
	art := h.artifact("vmlinuz", content(3, 1000))
	for i := range 2000 {
		mac := fmt.Sprintf("02:%02x:%02x:%02x:%02x:%02x", i>>8&0xff, i&0xff, rand.N(256), rand.N(256), rand.N(256))
		if st, body := h.serveFrom("10.1.0.9:4000", "GET", "/boot/"+mac+".ipxe", nil, ""); st != 200 {
			t.Fatalf("GET script %s = %d %s", mac, st, body)
		}
		if st, _ := h.serveFrom("10.1.0.9:4000", "GET", "/artifacts/"+art.SHA256+"?node="+mac, nil, ""); st != 200 {
			t.Fatalf("GET artifact = %d", st)
		}
	}
	if got := h.reporter.take(); len(got) != 0 {
		t.Fatalf("a flood of script GETs for unknown MACs made %d reports, want 0 (first %+v)", len(got), got[0])
	}
	h.backend.setAddr("aa:bb:cc:00:00:02", netip.MustParseAddr("10.1.0.2"))
	for range 50 {
		h.serveFrom("10.1.0.2:4000", "GET", "/boot/aa:bb:cc:00:00:02.ipxe", nil, "")
	}
	if got := h.reporter.take(); len(got) != 1 || got[0].Node != testNodeID || got[0].Event != "script" {
		t.Fatalf("50 script GETs of a known node within a second made reports %+v, want one", got)
	}
	h.clock.Advance(5 * time.Second)
	h.serveFrom("10.1.0.2:4000", "GET", "/boot/aa:bb:cc:00:00:02.ipxe", nil, "")
	if got := h.reporter.take(); len(got) != 1 {
		t.Fatalf("a script GET 5 s later made %d reports, want 1", len(got))
	}
	// The node's boot config becomes its local disk (an unrescue): its
	// next script, within the same second, is reported (the coordinator
	// sees the node take the local-boot path), and only once.
	n := ramdiskNode()
	n.Boot = proto.BootConfig{Kind: proto.BootLocalDisk}
	h.backend.addNode(n)
	for range 3 {
		h.serveFrom("10.1.0.2:4000", "GET", "/boot/aa:bb:cc:00:00:02.ipxe", nil, "")
	}
	if got := h.reporter.take(); len(got) != 1 || got[0].Event != "script" {
		t.Fatalf("scripts of the same node booting its local disk now: reports %+v, want one", got)
	}
}

// TestDiscoveryInventoryBinding: the inventory of a discovery boot is
// accepted only from the address the script was served to (and leased to
// the MAC), once per served boot; a retry of the same body is answered
// again without a second report; serving the script again arms it again.
func TestDiscoveryInventoryBinding(t *testing.T) {
	h := newHarness(t, 1<<20, func(c *Config) { c.CallbackBurst = 1000 })
	h.backend.setDiscovery(discoveryConfig())
	const mac = "52:54:00:00:00:31"
	h.backend.setAddr(mac, netip.MustParseAddr("10.2.0.31"))
	inv := func(from, body string) (int, string) {
		return h.serveFrom(from, "POST", "/v1/callback/inventory", map[string]string{proto.MACHeader: mac}, body)
	}
	const body = `{"system":{"vendor":"QEMU"}}`

	// Served to another address than the one the inventory comes from
	// (both the MAC's lease at one time or another): refused.
	h.backend.setAddr(mac, netip.MustParseAddr("10.2.0.99"))
	h.serveFrom("10.2.0.99:68", "GET", "/boot/"+mac+".ipxe", nil, "")
	h.backend.setAddr(mac, netip.MustParseAddr("10.2.0.31"))
	if st, got := inv("10.2.0.31:5000", body); st != 403 || !strings.Contains(got, "served to") {
		t.Errorf("inventory from the lease, script served to another address = %d %s, want 403 naming it", st, got)
	}
	if n := len(h.reporter.take()); n != 0 {
		t.Fatalf("%d reports, want 0", n)
	}

	h.serveFrom("10.2.0.31:68", "GET", "/boot/"+mac+".ipxe", nil, "")
	// Another host fetching the MAC's script does not re-arm (and so
	// block) the MAC's own inventory.
	h.serveFrom("10.2.0.66:5000", "GET", "/boot/"+mac+".ipxe", nil, "")
	h.clock.Advance(7 * time.Minute)
	if st, got := inv("10.2.0.31:5000", body); st != 202 {
		t.Fatalf("inventory 7 minutes after the script = %d %s, want 202", st, got)
	}
	if st, got := inv("10.2.0.31:5001", body); st != 202 {
		t.Errorf("the same inventory again (a retry) = %d %s, want 202", st, got)
	}
	for range 20 {
		if st, _ := inv("10.2.0.31:5002", `{"system":{"vendor":"other"}}`); st != 409 {
			t.Errorf("a second, different inventory of one boot = %d, want 409", st)
		}
	}
	if got := h.reporter.take(); len(got) != 1 || string(got[0].Data) != body {
		t.Fatalf("reports = %d (%+v), want the one inventory", len(got), got)
	}
	h.clock.Advance(repeatWindow)
	if st, _ := inv("10.2.0.31:5003", body); st != 409 {
		t.Errorf("the same inventory %s later = %d, want 409", repeatWindow, st)
	}
	// Booted again: one more inventory.
	h.serveFrom("10.2.0.31:68", "GET", "/boot/"+mac+".ipxe", nil, "")
	if st, got := inv("10.2.0.31:5004", body); st != 202 {
		t.Errorf("inventory after a new discovery boot = %d %s, want 202", st, got)
	}
	if n := len(h.reporter.take()); n != 1 {
		t.Errorf("%d reports after the new boot, want 1", n)
	}
}

// TestInventoryValidated: the agent checks an inventory as the
// coordinator does (proto.MaxCallbackBytes, Inventory.Validate) and
// answers 413 or 400 naming the field, before queuing anything.
func TestInventoryValidated(t *testing.T) {
	h := newHarness(t, 1<<20, func(c *Config) { c.CallbackBurst = 1000 })
	h.backend.setDiscovery(discoveryConfig())
	const mac = "52:54:00:00:00:41"
	h.backend.setAddr(mac, netip.MustParseAddr("10.2.0.41"))
	ifaces := make([]string, proto.MaxInvInterfaces+1)
	for i := range ifaces {
		ifaces[i] = fmt.Sprintf(`{"name":"eth%d"}`, i)
	}
	for _, tt := range []struct {
		name, body, field string
		status            int
	}{
		{"too many interfaces", `{"interfaces":[` + strings.Join(ifaces, ",") + `]}`, "interfaces", 413},
		{"negative cpu count", `{"cpus":{"count":-1}}`, "cpus.count", 400},
		{"a string where an object goes", `{"cpus":"many"}`, "cpus", 400},
		{"over the coordinator's limit", `{"system":{"vendor":"` + strings.Repeat("x", proto.MaxCallbackBytes) + `"}}`, "bytes", 413},
	} {
		h.serveFrom("10.2.0.41:68", "GET", "/boot/"+mac+".ipxe", nil, "")
		st, got := h.serveFrom("10.2.0.41:5000", "POST", "/v1/callback/inventory", map[string]string{proto.MACHeader: mac}, tt.body)
		if st != tt.status || !strings.Contains(got, tt.field) {
			t.Errorf("%s: = %d %.200s, want %d naming %q", tt.name, st, got, tt.status, tt.field)
		}
	}
	if n := len(h.reporter.take()); n != 0 {
		t.Errorf("%d reports queued for refused inventories, want 0", n)
	}
	if st, got := h.serveFrom("10.2.0.41:5000", "POST", "/v1/callback/inventory", map[string]string{proto.MACHeader: mac}, `{"cpus":{"count":4}}`); st != http.StatusAccepted {
		t.Errorf("a valid inventory after refused ones = %d %s, want 202 (a refused one does not take the boot's slot)", st, got)
	}
}
