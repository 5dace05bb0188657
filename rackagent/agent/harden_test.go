package agent_test

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/metalfleet/metalfleet/coordinator/coordtest"
	"github.com/metalfleet/metalfleet/proto"
	"github.com/metalfleet/metalfleet/rackagent/outbox"
)

// TestHTTPFloodKeepsLeases: a flood of unauthenticated script and
// artifact GETs for made-up MACs queues no report (their DHCP sightings
// stand for them), so the outbox does not fill, and the leases granted
// during the flood reach the coordinator.
func TestHTTPFloodKeepsLeases(t *testing.T) {
	f := newFleet(t)
	a, _ := startAgent(t, f, t.TempDir())
	coordtest.WaitFor(t, 10*time.Second, "agent synced", a.Boot().Synced)
	base := "http://" + a.HTTPAddr().String()
	var kernelSHA string
	if v := a.Boot().View(); v != nil && v.State.Discovery.Kernel != nil {
		kernelSHA = v.State.Discovery.Kernel.SHA256
	}
	if kernelSHA == "" {
		t.Fatal("the boot state has no discovery kernel: the artifact half of the flood would not run")
	}
	hc := &http.Client{Timeout: 10 * time.Second}
	const flood = 2000
	clients := map[string]string{}
	deadline := time.Now().Add(60 * time.Second)
	for i := range flood {
		if time.Now().After(deadline) {
			t.Fatalf("flood took over a minute at request %d", i)
		}
		mac := fmt.Sprintf("02:00:00:02:%02x:%02x", i>>8, i&0xff)
		resp, err := hc.Get(base + "/boot/" + mac + ".ipxe")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("GET script for %s = %d", mac, resp.StatusCode)
		}
		if i%10 == 0 {
			req, _ := http.NewRequest("GET", base+"/artifacts/"+kernelSHA+"?node="+mac, nil)
			req.Header.Set("Range", "bytes=0-9")
			if resp, err := hc.Do(req); err == nil {
				resp.Body.Close()
			}
		}
		if i%(flood/5) == 0 {
			hw := net.HardwareAddr{0x52, 0x54, 0, 0, 0x61, byte(i / (flood / 5))}
			clients[hw.String()] = dora(t, a.DHCPAddr(), hw)
		}
	}
	coordtest.WaitFor(t, 30*time.Second, "the leases granted during the flood at the coordinator", func() bool {
		got := coordLeases(t, f)
		for mac, ip := range clients {
			if got[mac] != ip {
				return false
			}
		}
		return true
	})
	coordtest.WaitFor(t, 30*time.Second, "outbox drained", func() bool { return a.Outbox().Len() == 0 })
	st := a.Outbox().Stats()
	t.Logf("flood of %d script GETs: %d reports sent, %d boot events dropped", flood, st.Sent, st.BootEventsDropped)
	if st.Sent+st.Rejected > 100 || st.BootEventsDropped > 0 {
		t.Errorf("a flood of %d script GETs for unknown MACs made %d reports (%d boot events dropped), want a handful (leases and sightings)",
			flood, st.Sent+st.Rejected, st.BootEventsDropped)
	}
}

// TestRolledBackDataDirStillReports: an agent started on a copy of an old
// agent.db (a backup or VM snapshot, whose outbox sequence went back)
// still gets its new reports applied: each start is a new incarnation.
// A report queued in the old copy before the restart is delivered too.
func TestRolledBackDataDirStillReports(t *testing.T) {
	f := newFleet(t)
	dir := t.TempDir()
	db := filepath.Join(dir, "agent.db")
	backup := filepath.Join(t.TempDir(), "agent.db.backup")
	leased := func(want map[string]string) func() bool {
		return func() bool {
			got := coordLeases(t, f)
			for mac, ip := range want {
				if got[mac] != ip {
					return false
				}
			}
			return true
		}
	}
	copyFile := func(from, to string) {
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	mac := func(i byte) net.HardwareAddr { return net.HardwareAddr{0x52, 0x54, 0, 0, 0x62, i} }

	a, stop := startAgent(t, f, dir)
	coordtest.WaitFor(t, 10*time.Second, "agent synced", a.Boot().Synced)
	first := map[string]string{mac(1).String(): dora(t, a.DHCPAddr(), mac(1))}
	coordtest.WaitFor(t, 20*time.Second, "the first lease at the coordinator", leased(first))
	coordtest.WaitFor(t, 20*time.Second, "outbox drained", func() bool { return a.Outbox().Len() == 0 })
	stop()
	copyFile(db, backup)

	a, stop = startAgent(t, f, dir)
	coordtest.WaitFor(t, 10*time.Second, "agent synced", a.Boot().Synced)
	more := map[string]string{}
	for i := byte(2); i < 20; i++ {
		more[mac(i).String()] = dora(t, a.DHCPAddr(), mac(i))
	}
	coordtest.WaitFor(t, 20*time.Second, "more leases at the coordinator", leased(more))
	coordtest.WaitFor(t, 20*time.Second, "outbox drained", func() bool { return a.Outbox().Len() == 0 })
	stop()

	// Roll the data directory back, with one report queued in it that
	// the coordinator has not seen.
	copyFile(backup, db)
	queued := proto.Lease{MAC: mac(40).String(), IP: "127.0.0.177", Agent: "a1", Expires: time.Now().Add(time.Hour).UTC()}
	func() {
		bdb, err := bbolt.Open(db, 0o600, &bbolt.Options{Timeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer bdb.Close()
		o, err := outbox.Open(bdb, outbox.Config{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := o.Add(proto.AgentReport{Kind: proto.ReportLease, Rack: "r1", Agent: "a1", MAC: queued.MAC, LeaseEvent: "bound", Lease: &queued}); err != nil {
			t.Fatal(err)
		}
	}()

	a, _ = startAgent(t, f, dir)
	coordtest.WaitFor(t, 10*time.Second, "rolled-back agent synced", a.Boot().Synced)
	after := map[string]string{mac(30).String(): dora(t, a.DHCPAddr(), mac(30))}
	coordtest.WaitFor(t, 20*time.Second, "a new lease of the rolled-back agent at the coordinator", leased(after))
	coordtest.WaitFor(t, 20*time.Second, "the report queued before the restart at the coordinator", leased(map[string]string{queued.MAC: queued.IP}))
	coordtest.WaitFor(t, 20*time.Second, "outbox drained", func() bool { return a.Outbox().Len() == 0 })
	if st := a.Outbox().Stats(); st.Rejected != 0 {
		t.Errorf("rolled-back agent: %d reports rejected, want 0", st.Rejected)
	}
}
