package httpboot

import (
	"errors"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/metalfleet/metalfleet/proto"
)

// durableReporter is a DurableReporter whose ReportNow fails while fail
// is set.
type durableReporter struct {
	fakeReporter
	mu     sync.Mutex
	fail   error
	queued []proto.AgentReport
}

func (d *durableReporter) ReportNow(r proto.AgentReport) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fail != nil {
		return d.fail
	}
	d.queued = append(d.queued, r)
	return nil
}

// TestCallbackDurable: a callback is answered 202 only once the report is
// queued durably; when it cannot be, the answer is 503 with Retry-After
// and the discovery boot's inventory slot is freed, so the ramdisk's retry
// is queued rather than answered as a repeat.
func TestCallbackDurable(t *testing.T) {
	rep := &durableReporter{fail: errors.New("outbox full")}
	h := newHarness(t, 1<<20, func(c *Config) { c.CallbackBurst = 1000; c.Reporter = rep })
	h.backend.setDiscovery(discoveryConfig())
	const mac = "52:54:00:00:00:51"
	h.backend.setAddr(mac, netip.MustParseAddr("10.2.0.51"))
	h.serveFrom("10.2.0.51:68", "GET", "/boot/"+mac+".ipxe", nil, "")
	const body = `{"system":{"vendor":"QEMU"}}`
	post := func() (int, string, string) {
		req := httptest.NewRequest("POST", "/v1/callback/inventory", strings.NewReader(body))
		req.RemoteAddr = "10.2.0.51:5000"
		req.Header.Set(proto.MACHeader, mac)
		rec := httptest.NewRecorder()
		h.srv.Handler().ServeHTTP(rec, req)
		return rec.Code, rec.Body.String(), rec.Header().Get("Retry-After")
	}
	if st, got, ra := post(); st != 503 || ra == "" {
		t.Fatalf("inventory with the outbox failing = %d %s (Retry-After %q), want 503 with Retry-After", st, got, ra)
	}
	if n := len(h.reporter.take()) + len(rep.take()); n != 0 {
		t.Fatalf("%d asynchronous reports, want 0", n)
	}
	rep.mu.Lock()
	rep.fail = nil
	rep.mu.Unlock()
	if st, got, _ := post(); st != 202 {
		t.Fatalf("the retry once the outbox takes it = %d %s, want 202", st, got)
	}
	if st, got, _ := post(); st != 202 {
		t.Fatalf("a repeat of the queued inventory = %d %s, want 202", st, got)
	}
	rep.mu.Lock()
	defer rep.mu.Unlock()
	if len(rep.queued) != 1 || string(rep.queued[0].Data) != body || rep.queued[0].Kind != proto.ReportCallback {
		t.Fatalf("queued %+v, want the one inventory", rep.queued)
	}
}
