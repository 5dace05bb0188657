package agent_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/metalfleet/metalfleet/coordinator/apiclient"
	"github.com/metalfleet/metalfleet/coordinator/coordtest"
	"github.com/metalfleet/metalfleet/ops/testkit"
	"github.com/metalfleet/metalfleet/proto"
	"github.com/metalfleet/metalfleet/rackagent/agent"
	"github.com/metalfleet/metalfleet/rackagent/dhcp"
	"github.com/metalfleet/metalfleet/rackagent/dhcp/dhcptest"
)

// fleet is a coordinator with rack r1 (127.0.0.0/24, so a loopback socket
// can be its DHCP relay), discovery images, a known node, and an agent
// token.
type fleet struct {
	c          *coordtest.Cluster
	admin      *apiclient.Client
	agentToken string
	kernel     []byte
	knownMAC   string
	knownIP    string
	coordAddr  string
}

func newFleet(t *testing.T) *fleet {
	t.Helper()
	ctx := context.Background()
	c := coordtest.StartCluster(t, 1)
	f := &fleet{c: c, admin: apiclient.New(c.Servers[0].HTTPAddr(), c.Token), knownMAC: "52:54:00:00:00:01", coordAddr: c.Servers[0].HTTPAddr()}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	_, err := f.admin.Do(ctx, "POST", "/v1/racks", proto.Rack{Name: "r1", Subnet: "127.0.0.0/24", BootServer: "127.0.0.1",
		PoolStart: "127.0.0.100", PoolEnd: "127.0.0.199"}, nil)
	must(err)
	var tok proto.TokenCreated
	_, err = f.admin.Do(ctx, "POST", "/v1/tokens", proto.TokenCreate{Role: proto.RoleAgent, Rack: "r1"}, &tok)
	must(err)
	f.agentToken = tok.Secret
	dir := t.TempDir()
	for _, im := range []struct {
		name string
		kind proto.ImageKind
	}{{"disc-kernel", proto.ImageKernel}, {"disc-ramdisk", proto.ImageRamdisk}} {
		body := []byte(strings.Repeat(im.name, 10000))
		if im.kind == proto.ImageKernel {
			f.kernel = body
		}
		p := filepath.Join(dir, im.name)
		must(os.WriteFile(p, body, 0o644))
		sum := sha256.Sum256(body)
		_, err = f.admin.Do(ctx, "POST", "/v1/images", proto.Image{Name: im.name, Kind: im.kind, URL: "file://" + p, SHA256: hex.EncodeToString(sum[:])}, nil)
		must(err)
	}
	yes, k, r := true, "disc-kernel", "disc-ramdisk"
	_, err = f.admin.Do(ctx, "PATCH", "/v1/settings", proto.SettingsPatch{DiscoveryEnabled: &yes, DiscoveryKernel: &k, DiscoveryRamdisk: &r}, nil)
	must(err)
	n, err := f.admin.CreateNode(ctx, proto.NodeCreate{Name: "n1", MACs: []string{f.knownMAC}, Rack: "r1"})
	must(err)
	f.knownIP = n.IP
	return f
}

func startAgent(t *testing.T, f *fleet, dataDir string) (*agent.Agent, func()) {
	t.Helper()
	tftpRoot := filepath.Join(dataDir, "tftp-root")
	os.MkdirAll(tftpRoot, 0o755)
	os.WriteFile(filepath.Join(tftpRoot, "undionly.kpxe"), []byte("first stage"), 0o644)
	a, err := agent.New(agent.Config{
		Name: "a1", Rack: "r1", DataDir: dataDir, Coordinators: []string{f.coordAddr}, Token: f.agentToken,
		DHCPAddr: "127.0.0.1:0", TFTPAddr: "127.0.0.1:0", TFTPRoots: []string{tftpRoot}, HTTPAddr: "127.0.0.1:0",
		AdvertiseIP: netip.MustParseAddr("127.0.0.1"), Logger: coordtest.Logger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	return a, runAgent(t, a)
}

func dora(t *testing.T, server net.Addr, mac net.HardwareAddr) string {
	t.Helper()
	return dhcptest.MustDORA(t, server, mac)
}

func get(t *testing.T, url string) (int, []byte) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// TestAgentServesAndReportsThroughOutages: the agent answers DHCP and
// serves boot files from its copy of the boot state while the coordinator
// is down, and every report made meanwhile arrives exactly once when the
// coordinator is back.
func TestAgentServesAndReportsThroughOutages(t *testing.T) {
	f := newFleet(t)
	a, _ := startAgent(t, f, t.TempDir())
	coordtest.WaitFor(t, 10*time.Second, "agent synced", a.Boot().Synced)
	base := "http://" + a.HTTPAddr().String()

	if ip := dora(t, a.DHCPAddr(), net.HardwareAddr{0x52, 0x54, 0, 0, 0, 1}); ip != f.knownIP {
		t.Fatalf("known node got %s, want its reservation %s", ip, f.knownIP)
	}
	if code, body := get(t, base+"/boot/"+f.knownMAC+".ipxe"); code != 200 || !strings.Contains(string(body), "exit") {
		t.Fatalf("known node's script: %d %q", code, body)
	}
	unknown := "52:54:00:00:10:01"
	code, script := get(t, base+"/boot/"+unknown+".ipxe")
	if code != 200 || !strings.Contains(string(script), "kernel http://127.0.0.1:") {
		t.Fatalf("discovery script: %d %q", code, script)
	}
	kernelURL := strings.Fields(strings.SplitN(string(script), "kernel ", 2)[1])[0]
	if code, body := get(t, kernelURL); code != 200 || string(body) != string(f.kernel) {
		t.Fatalf("kernel over HTTP: %d, %d bytes", code, len(body))
	}
	if code, body := get(t, base+"/tftp/undionly.kpxe"); code != 200 || string(body) != "first stage" {
		t.Fatalf("first stage over HTTP: %d %q", code, body)
	}
	if code, body := get(t, base+"/metrics"); code != 200 || !strings.Contains(string(body), "metalfleet_dhcp_answered_total 2") {
		t.Fatalf("agent metrics: %d, answered count missing:\n%.600s", code, body)
	}

	// The coordinator goes away.
	f.c.Kill(0)
	var macs []net.HardwareAddr
	leases := map[string]string{}
	for i := 0; i < 5; i++ {
		mac := net.HardwareAddr{0x52, 0x54, 0, 0, 0x20, byte(i)}
		macs = append(macs, mac)
		leases[mac.String()] = dora(t, a.DHCPAddr(), mac)
	}
	if ip := dora(t, a.DHCPAddr(), net.HardwareAddr{0x52, 0x54, 0, 0, 0, 1}); ip != f.knownIP {
		t.Fatalf("with the coordinator down the known node got %s", ip)
	}
	if code, body := get(t, kernelURL); code != 200 || string(body) != string(f.kernel) {
		t.Fatalf("kernel with the coordinator down: %d", code)
	}
	// Sightings are reported every few seconds, with a count: wait for
	// the five new MACs' to be queued too.
	coordtest.WaitFor(t, 20*time.Second, "reports queued", func() bool { return a.Outbox().Len() >= 10 && a.Outbox().Sightings() >= 5 })

	// It comes back: every report arrives, once.
	s := f.c.Restart(0)
	coordtest.WaitFor(t, 30*time.Second, "outbox drained", func() bool { return a.Outbox().Len() == 0 })
	for _, mac := range macs {
		var sg *proto.Sighting
		for _, x := range s.Store().Sightings("r1") {
			if x.MAC == mac.String() {
				sg = x
			}
		}
		// One report of two sightings (DISCOVER and REQUEST): applied
		// twice it would count 4.
		if sg == nil || sg.Count != 2 {
			t.Fatalf("sighting of %s = %+v, want one report of count 2, applied once", mac, sg)
		}
	}
	got := map[string]string{}
	for _, l := range s.Store().Leases("r1") {
		got[l.MAC] = l.IP
	}
	for mac, ip := range leases {
		if got[mac] != ip {
			t.Fatalf("coordinator's lease of %s = %q, want %s (all: %v)", mac, got[mac], ip, got)
		}
	}
	n, _ := s.Store().Node("n1")
	if n.LastBoot == nil {
		t.Fatalf("known node has no last boot event")
	}
	fmt.Fprintln(io.Discard, n)
}

// TestAgentRestartsFromItsCopy: an agent restarted while the coordinator
// is down answers from the boot state and leases it saved.
func TestAgentRestartsFromItsCopy(t *testing.T) {
	f := newFleet(t)
	dir := t.TempDir()
	a, stop := startAgent(t, f, dir)
	coordtest.WaitFor(t, 10*time.Second, "agent synced", a.Boot().Synced)
	mac := net.HardwareAddr{0x52, 0x54, 0, 0, 0x30, 1}
	first := dora(t, a.DHCPAddr(), mac)
	stop()
	f.c.Kill(0)

	b, _ := startAgent(t, f, dir)
	if b.Boot().View() == nil {
		t.Fatalf("restarted agent has no boot state while the coordinator is down")
	}
	if ip := dora(t, b.DHCPAddr(), mac); ip != first {
		t.Fatalf("after restart %s got %s, want %s again", mac, ip, first)
	}
	if ip := dora(t, b.DHCPAddr(), net.HardwareAddr{0x52, 0x54, 0, 0, 0, 1}); ip != f.knownIP {
		t.Fatalf("after restart the known node got %s", ip)
	}
	if other := dora(t, b.DHCPAddr(), net.HardwareAddr{0x52, 0x54, 0, 0, 0x30, 2}); other == first {
		t.Fatalf("after restart %s was handed to a second MAC", first)
	}
}

// coordLeases is the coordinator's record of r1's leases, mac -> ip, as
// its boot state gives them.
func coordLeases(t *testing.T, f *fleet) map[string]string {
	t.Helper()
	var st proto.RackBootState
	if _, err := f.admin.Do(context.Background(), "GET", "/v1/agent/bootstate?rack=r1", nil, &st); err != nil {
		t.Fatalf("boot state: %v", err)
	}
	out := map[string]string{}
	for _, l := range st.Leases {
		out[l.MAC] = l.IP
	}
	return out
}

// TestRebuiltAgentNeverHandsOutLeasedAddresses: an agent that lost its
// data directory (same name, a new empty agent.db) learns its leases from
// the coordinator's boot state: it answers nothing before it has one,
// never gives a leased address to a new MAC, and gives the MAC that held
// it the same address back.
func TestRebuiltAgentNeverHandsOutLeasedAddresses(t *testing.T) {
	f := newFleet(t)
	dir := filepath.Join(t.TempDir(), "data")
	a, stop := startAgent(t, f, dir)
	coordtest.WaitFor(t, 10*time.Second, "agent synced", a.Boot().Synced)
	held := map[string]string{} // mac -> ip
	for i := range 3 {
		mac := net.HardwareAddr{0x52, 0x54, 0, 0, 0x40, byte(i)}
		held[mac.String()] = dora(t, a.DHCPAddr(), mac)
	}
	coordtest.WaitFor(t, 20*time.Second, "leases at the coordinator", func() bool {
		got := coordLeases(t, f)
		for mac, ip := range held {
			if got[mac] != ip {
				return false
			}
		}
		return true
	})
	stop()
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}

	// The rebuilt agent starts while the coordinator is down, so it
	// cannot have a boot state: until it has one it answers no one.
	f.c.Kill(0)
	b, _ := startAgent(t, f, dir)
	if _, err := dhcptest.DORA(b.DHCPAddr(), net.HardwareAddr{0x52, 0x54, 0, 0, 0x41, 0xff}, 500*time.Millisecond); err == nil {
		t.Fatalf("a rebuilt agent without a boot state answered DHCP")
	}
	if b.Boot().View() != nil {
		t.Fatal("the rebuilt agent has a boot state with the coordinator down")
	}
	f.c.Restart(0)
	coordtest.WaitFor(t, 30*time.Second, "rebuilt agent synced", b.Boot().Synced)
	leased := map[string]bool{}
	for _, ip := range held {
		leased[ip] = true
	}
	for i := range 20 {
		mac := net.HardwareAddr{0x52, 0x54, 0, 0, 0x41, byte(i)}
		if ip := dora(t, b.DHCPAddr(), mac); leased[ip] {
			t.Fatalf("the rebuilt agent gave %s, leased to another MAC, to %s", ip, mac)
		}
	}
	for mac, ip := range held {
		hw, _ := net.ParseMAC(mac)
		if got := dora(t, b.DHCPAddr(), hw); got != ip {
			t.Fatalf("the rebuilt agent gave %s %s, want its lease %s back", mac, got, ip)
		}
	}
	// The coordinator agrees: every MAC holds one address, no address two.
	coordtest.WaitFor(t, 20*time.Second, "23 leases at the coordinator", func() bool { return len(coordLeases(t, f)) == 23 })
	owner := map[string]string{}
	for mac, ip := range coordLeases(t, f) {
		if prev, dup := owner[ip]; dup {
			t.Fatalf("the coordinator records %s for %s and %s", ip, prev, mac)
		}
		owner[ip] = mac
	}
	// The rebuilt agent holds its old leases again (it adopted them).
	have := map[string]string{}
	for _, l := range b.Leases() {
		have[l.MAC] = l.IP
	}
	for mac, ip := range held {
		if have[mac] != ip {
			t.Errorf("rebuilt agent's pool has %s -> %q, want %s", mac, have[mac], ip)
		}
	}
}

// TestAgentDHCPFlood: a flood of 1,000 unknown MACs through the relay
// becomes at most DefaultMaxNewSightings sighting reports per interval
// (the rest counted on /metrics), and the lease of a real client in the
// middle of it reaches the coordinator.
func TestAgentDHCPFlood(t *testing.T) {
	f := newFleet(t)
	a, _ := startAgent(t, f, t.TempDir())
	coordtest.WaitFor(t, 10*time.Second, "agent synced", a.Boot().Synced)
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const flood = 1000
	// A real client's lease, queued just before the flood (whose offers
	// take the whole pool).
	client := net.HardwareAddr{0x52, 0x54, 0, 0, 0x60, 1}
	clientIP := dora(t, a.DHCPAddr(), client)
	for i := range flood {
		mac := net.HardwareAddr{0x02, 0x00, 0x00, 0x01, byte(i >> 8), byte(i)}
		d, err := dhcpv4.NewDiscovery(mac, dhcptest.PXE...)
		if err != nil {
			t.Fatal(err)
		}
		d.GatewayIPAddr = net.IPv4(127, 0, 0, 1)
		if _, err := c.WriteTo(d.ToBytes(), a.DHCPAddr()); err != nil {
			t.Fatal(err)
		}
		if i == flood/2 {
			// The known node boots in the middle of it (retransmitting,
			// as clients do: the socket may shed under the flood).
			testkit.Until(t, 20*time.Second, "the known node's DORA during the flood", func() error {
				ip, err := dhcptest.DORA(a.DHCPAddr(), net.HardwareAddr{0x52, 0x54, 0, 0, 0, 1}, time.Second)
				if err == nil && ip != f.knownIP {
					t.Fatalf("known node got %s during the flood, want %s", ip, f.knownIP)
				}
				return err
			})
		}
	}
	base := "http://" + a.HTTPAddr().String()
	coordtest.WaitFor(t, 20*time.Second, "sightings left out on /metrics", func() bool {
		_, body := get(t, base+"/metrics")
		for _, line := range strings.Split(string(body), "\n") {
			if v, ok := strings.CutPrefix(line, "metalfleet_dhcp_sightings_left_out_total "); ok && v != "0" {
				return true
			}
		}
		return false
	})
	// UDP may shed part of the flood under load: how much arrived is
	// only logged, not asserted.
	t.Logf("received %d of %d flood packets", a.DHCPStats().Received.Load(), flood)
	// The cap of the flood's MACs per interval reaches the coordinator
	// (the flood, under a second, spans at most two intervals), plus
	// perhaps the client's own sighting.
	var sg []*proto.Sighting
	coordtest.WaitFor(t, 30*time.Second, "the capped sightings at the coordinator", func() bool {
		var err error
		sg, err = f.admin.Sightings(context.Background(), "r1")
		return err == nil && len(sg) >= dhcp.DefaultMaxNewSightings
	})
	coordtest.WaitFor(t, 30*time.Second, "outbox drained", func() bool { return a.Outbox().Len() == 0 })
	if len(sg) > 2*dhcp.DefaultMaxNewSightings+1 {
		t.Errorf("%d sightings at the coordinator from a flood of %d, want at most %d", len(sg), flood, 2*dhcp.DefaultMaxNewSightings+1)
	}
	t.Logf("flood of %d MACs: %d sightings reported", flood, len(sg))
	if got := coordLeases(t, f)[client.String()]; got != clientIP {
		t.Errorf("the coordinator's lease of %s = %q, want %s", client, got, clientIP)
	}
}

// TestMgmtListener: the management listener refuses a request without a
// token, or with a wrong or operator's token (401), and serves the rack's
// agent token and an admin token (verified with the coordinator). The
// agent sends its management address to the coordinator.
func TestMgmtListener(t *testing.T) {
	f := newFleet(t)
	a, _ := startAgent(t, f, t.TempDir())
	coordtest.WaitFor(t, 10*time.Second, "agent synced", a.Boot().Synced)
	var op proto.TokenCreated
	if _, err := f.admin.Do(context.Background(), "POST", "/v1/tokens", proto.TokenCreate{Role: proto.RoleOperator}, &op); err != nil {
		t.Fatal(err)
	}
	call := func(path, token string) (int, []byte) {
		t.Helper()
		req, _ := http.NewRequest("GET", "http://"+a.MgmtAddr()+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	for _, tc := range []struct{ name, token string }{{"none", ""}, {"wrong", "nope"}, {"operator", op.Secret}} {
		for _, path := range []string{"/v1/health", "/v1/diag"} {
			if code, body := call(path, tc.token); code != http.StatusUnauthorized {
				t.Errorf("%s token: GET %s = %d %s, want 401", tc.name, path, code, body)
			}
		}
	}
	for _, tc := range []struct{ name, token string }{{"agent", f.agentToken}, {"admin", f.c.Token}} {
		code, body := call("/v1/diag", tc.token)
		var d agent.Diag
		if code != 200 || json.Unmarshal(body, &d) != nil {
			t.Fatalf("%s token: GET /v1/diag = %d %s, want 200 and a diag", tc.name, code, body)
		}
		if d.Name != "a1" || d.Rack != "r1" || !proto.IsUUID(d.Incarnation) || d.BootStateIndex == 0 || !d.BootSynced {
			t.Errorf("diag = %+v", d)
		}
		if code, _ := call("/v1/health", tc.token); code != 200 {
			t.Errorf("%s token: GET /v1/health = %d, want 200", tc.name, code)
		}
	}
	// The boot server does not serve the management routes.
	if code, _ := get(t, "http://"+a.HTTPAddr().String()+"/v1/diag"); code == 200 {
		t.Errorf("the boot server serves /v1/diag")
	}
}

// runAgent runs a until the returned stop (also a cleanup) is called, and
// fails the test if Run returns an error.
func runAgent(t *testing.T, a *agent.Agent) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			cancel()
			if err := <-done; err != nil {
				t.Errorf("agent Run: %v", err)
			}
		}
	}
	t.Cleanup(stop)
	return stop
}
