package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/metalfleet/metalfleet/coordinator/apiclient"
	"github.com/metalfleet/metalfleet/ops/testkit"
	"github.com/metalfleet/metalfleet/proto"
	"github.com/metalfleet/metalfleet/rackagent/bmc"
)

type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *lockedBuf) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

func freeAddr(t *testing.T, network string) string {
	t.Helper()
	if network == "udp" {
		c, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().String()
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// devArgs are dev's flags on free ports in dir.
func devArgs(t *testing.T, dir string) []string {
	return []string{"dev", "--data-dir", dir, "--http-addr", freeAddr(t, "tcp"), "--raft-addr", freeAddr(t, "tcp"),
		"--agent-http-addr", freeAddr(t, "tcp"), "--dhcp-addr", freeAddr(t, "udp"), "--tftp-addr", freeAddr(t, "udp")}
}

// startDev runs the CLI with args until the test ends (or stop is
// called), its output in the returned buffer.
func startDev(t *testing.T, args []string) (out *lockedBuf, stop func() error) {
	t.Helper()
	out = &lockedBuf{}
	root := newRoot(out, out)
	root.SetArgs(args)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() { cancel(); err = <-done })
		return err
	}
	t.Cleanup(func() { stop() })
	return out, stop
}

// TestDevMode runs `metalfleet dev` as a newcomer would (on free ports):
// the simulated machines PXE-boot through the rack agent, report their
// inventory and end up enrolled nodes with the inventory they reported;
// a second run finds the same state and the machines boot their disks.
func TestDevMode(t *testing.T) {
	dir := t.TempDir()
	args := append(devArgs(t, dir), "--machines", "3")
	api := args[4]
	run := func(want string) string {
		t.Helper()
		out, stop := startDev(t, args)
		testkit.Eventually(t, 60*time.Second, fmt.Sprintf("%q for every machine", want), func() bool {
			return strings.Count(out.String(), want) >= 3
		})
		if err := stop(); err != nil {
			t.Fatalf("dev mode returned %v; output:\n%s", err, out)
		}
		return out.String()
	}
	out := run("discovered as node")
	if !strings.Contains(out, "METALFLEET_TOKEN=") {
		t.Fatalf("dev mode does not print how to reach it:\n%s", out)
	}
	tok, _ := os.ReadFile(filepath.Join(dir, "coordinator", "admin.token"))
	run("known node, booted its local disk")

	// The state is still there and right: start dev once more and read it.
	startDev(t, append(append([]string{}, args...), "--machines", "0"))
	c := apiclient.New(api, strings.TrimSpace(string(tok)))
	var nodes []*proto.Node
	testkit.Until(t, 30*time.Second, "the 3 nodes after dev", func() error {
		var err error
		if nodes, _, err = c.Nodes(context.Background(), nil); err == nil && len(nodes) != 3 {
			err = fmt.Errorf("%d nodes", len(nodes))
		}
		return err
	})
	for _, n := range nodes {
		if n.ProvisionState != proto.StateEnrolled || !strings.HasPrefix(n.Name, "sim-") || len(n.Inventory) == 0 || n.IP == "" || n.Rack != "dev" {
			t.Errorf("node after dev mode: %s %s state=%s ip=%s rack=%s inventory=%d bytes", n.Name, n.UUID, n.ProvisionState, n.IP, n.Rack, len(n.Inventory))
		}
	}
}

// TestDevStorm: `dev --racks 2 --machines 150 --until-done` powers 300
// machines on at once, more than the 100 addresses dev's one rack used
// to have; every one ends up an enrolled node of its own rack, with an
// address of its own, and no address is ever ACKed to two MACs. (Before
// racks were sized for their machines, a rack of 150 left 50 without a
// DHCP answer.)
func TestDevStorm(t *testing.T) {
	dir := t.TempDir()
	base := devArgs(t, dir)
	api := base[4]
	args := append(append([]string{}, base...), "--racks", "2", "--machines", "150", "--until-done", "--name-nodes=false", "--power-on-spread", "2s")
	out := &lockedBuf{}
	root := newRoot(out, out)
	root.SetArgs(args)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := root.ExecuteContext(ctx); err != nil {
		t.Fatalf("dev --until-done: %v; output:\n%s", err, out)
	}
	for _, want := range []string{"enrolled 300, booted their disk (known) 0, failed 0", "addresses ACKed to two MACs at once: 0",
		"addresses held by two MACs in the final boot states (leases and reserved addresses, every rack): 0",
		"time from power-on to the last node enrolled", "inventory POST", "Raft entries applied"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the storm's summary does not say %q:\n%s", want, out)
		}
	}

	// The state is right: start dev again without machines and read it.
	startDev(t, append(base, "--racks", "2", "--machines", "0"))
	tok, _ := os.ReadFile(filepath.Join(dir, "coordinator", "admin.token"))
	c := apiclient.New(api, strings.TrimSpace(string(tok)))
	var nodes []*proto.Node
	testkit.Until(t, 30*time.Second, "the 300 nodes", func() error {
		var err error
		if nodes, _, err = c.Nodes(context.Background(), nil); err == nil && len(nodes) != 300 {
			err = fmt.Errorf("%d nodes", len(nodes))
		}
		return err
	})
	perRack, ips := map[string]int{}, map[string]string{}
	for _, n := range nodes {
		perRack[n.Rack]++
		if other, dup := ips[n.IP]; dup || n.IP == "" || n.ProvisionState != proto.StateEnrolled {
			t.Errorf("node %s: rack %s ip %q (also %s's) state %s", n.UUID, n.Rack, n.IP, other, n.ProvisionState)
		}
		ips[n.IP] = n.UUID
	}
	if perRack["dev"] != 150 || perRack["dev-2"] != 150 {
		t.Errorf("nodes per rack = %v, want 150 in dev and dev-2", perRack)
	}
}

// TestHistQuantile: the storm summary's Raft apply quantiles come from
// the change of a histogram's buckets between two scrapes of a real
// Prometheus text page, and its gauges from their unlabelled samples.
func TestHistQuantile(t *testing.T) {
	const h = "metalfleet_raft_apply_duration_seconds"
	page := func(b1, b2, b3, n float64, idx int) string {
		return fmt.Sprintf(`# HELP %[1]s Propose to applied.
# TYPE %[1]s histogram
%[1]s_bucket{le="0.001"} %[2]v
%[1]s_bucket{le="0.01"} %[3]v
%[1]s_bucket{le="0.1"} %[4]v
%[1]s_bucket{le="+Inf"} %[5]v
%[1]s_sum 0.5
%[1]s_count %[5]v
# TYPE metalfleet_raft_applied_index gauge
metalfleet_raft_applied_index %[6]d
# TYPE other counter
other{x="y"} 7
`, h, b1, b2, b3, n, idx)
	}
	var cur atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		io.WriteString(w, cur.Load().(string))
	}))
	defer srv.Close()
	scrape := func(text string) map[string]*dto.MetricFamily {
		cur.Store(text)
		m, err := scrapeMetrics(context.Background(), srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	before := scrape(page(5, 5, 5, 5, 10))
	after := scrape(page(55, 104, 105, 105, 120))
	if got := metricValue(after, "metalfleet_raft_applied_index") - metricValue(before, "metalfleet_raft_applied_index"); got != 110 {
		t.Errorf("applied index change = %v, want 110", got)
	}
	ha, hb := histogram(after, h), histogram(before, h)
	if ha == nil || hb == nil {
		t.Fatalf("histogram %s not found in the scrapes", h)
	}
	for _, c := range []struct {
		q    float64
		want float64
	}{{0.5, 0.001}, {0.9, 0.01}, {0.99, 0.01}, {1, 0.1}} {
		if got, ok := histQuantile(ha, hb, c.q); !ok || got != c.want {
			t.Errorf("histQuantile(q=%v) = %v, %v; want %v", c.q, got, ok, c.want)
		}
	}
	if _, ok := histQuantile(hb, hb, 0.5); ok {
		t.Errorf("histQuantile of no change: ok, want none")
	}
	cur.Store("not a metric page {{{\n")
	if _, err := scrapeMetrics(context.Background(), srv.URL); err == nil {
		t.Error("scraping a page that is not Prometheus text: no error")
	}
}

// TestDevAddrFlagsChecked: a bad address flag is refused before anything
// starts, with the flag and its value named.
func TestDevAddrFlagsChecked(t *testing.T) {
	for _, c := range []struct{ flag, value string }{
		{"--dhcp-addr", "x"}, {"--tftp-addr", "127.0.0.1"}, {"--agent-http-addr", "127.0.0.1:http"},
		{"--http-addr", "localhost:99999"}, {"--raft-addr", ":"},
	} {
		dir := t.TempDir()
		out := &lockedBuf{}
		root := newRoot(out, out)
		root.SetArgs([]string{"dev", "--data-dir", dir, "--http-addr", "127.0.0.1:0", "--raft-addr", "127.0.0.1:0",
			"--racks", "2", "--machines", "0", c.flag, c.value})
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := root.ExecuteContext(ctx)
		cancel()
		if err == nil || !strings.Contains(err.Error(), c.flag+" ") || !strings.Contains(err.Error(), fmt.Sprintf("%q", c.value)) {
			t.Errorf("dev %s %s: %v; want an error naming the flag and its value", c.flag, c.value, err)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 0 {
			t.Errorf("dev %s %s started something: %s holds %d entries", c.flag, c.value, dir, len(ents))
		}
	}
}

// TestDevPower: `metalfleet dev` machines have BMCs (sim-1 IPMI, sim-2
// Redfish with --redfish-share 0.5) and their nodes are given them; the
// BMCs answer the real drivers with those fields; power off and on
// through the API reach the machines' BMCs (the intents end done), a
// machine powered on boots again (its agent records the boot), and
// `node console sim-1` echoes what is typed and shows a reboot's boot.
func TestDevPower(t *testing.T) {
	dir := t.TempDir()
	args := append(devArgs(t, dir), "--machines", "2", "--redfish-share", "0.5")
	api := args[4]
	out, _ := startDev(t, args)
	testkit.Eventually(t, 60*time.Second, "both machines discovered", func() bool {
		return strings.Count(out.String(), "discovered as node") >= 2
	})
	if n := strings.Count(out.String(), "; BMC "); n != 2 {
		t.Fatalf("%d machines' nodes were given their BMC, want 2:\n%s", n, out)
	}
	for _, want := range []string{"node power sim-1 off", "node console sim-1"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("dev's output does not say how to try %q:\n%s", want, out)
		}
	}
	tok, _ := os.ReadFile(filepath.Join(dir, "coordinator", "admin.token"))
	c := apiclient.New(api, strings.TrimSpace(string(tok)))
	ctx := context.Background()
	for _, tc := range []struct{ name, driver string }{{"sim-1", proto.DriverIPMI}, {"sim-2", proto.DriverRedfish}} {
		n, err := c.Node(ctx, tc.name)
		if err != nil {
			t.Fatalf("node %s: %v", tc.name, err)
		}
		b := n.BMC
		if b.Driver != tc.driver || b.Username != "admin" || !b.PasswordSet || (tc.driver == proto.DriverIPMI && (b.Address != "127.0.0.1" || b.Port == 0)) ||
			(tc.driver == proto.DriverRedfish && !strings.HasPrefix(b.Address, "http://127.0.0.1:")) {
			t.Fatalf("node %s BMC = %+v; want %s on 127.0.0.1 for admin with a password", tc.name, b, tc.driver)
		}
		b.Password = "password" // the simulator's; the API never shows it
		d, err := bmc.Open(b)
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		state := func() proto.PowerState {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			p, err := d.PowerState(cctx)
			if err != nil {
				t.Fatalf("%s: power state over %s: %v", tc.name, tc.driver, err)
			}
			return p
		}
		if p := state(); p != proto.PowerOn {
			t.Fatalf("%s: power %s after its boot, want on", tc.name, p)
		}
		power := func(target proto.PowerTarget) {
			t.Helper()
			var acc proto.IntentAccepted
			if _, err := c.Do(ctx, "PUT", "/v1/nodes/"+n.UUID+"/power?wait=30s", proto.PowerRequest{Target: target}, &acc); err != nil {
				t.Fatalf("%s: power %s: %v", tc.name, target, err)
			}
			if !acc.Intent.Done || acc.Intent.Error != "" {
				t.Fatalf("%s: power %s: intent %+v; want done without error", tc.name, target, acc.Intent)
			}
		}
		power(proto.PowerTargetOff)
		if p := state(); p != proto.PowerOff {
			t.Errorf("%s: power %s after power off, want off", tc.name, p)
		}
		off := time.Now()
		power(proto.PowerTargetOn)
		if p := state(); p != proto.PowerOn {
			t.Errorf("%s: power %s after power on, want on", tc.name, p)
		}
		if tc.driver == proto.DriverIPMI {
			devConsole(t, api, strings.TrimSpace(string(tok)), c, tc.name)
		}
		// It network-boots again: its rack agent records the boot.
		testkit.Until(t, 30*time.Second, tc.name+" booting after power on", func() error {
			n, err := c.Node(ctx, tc.name)
			if err == nil && (n.LastBoot == nil || !n.LastBoot.Time.After(off)) {
				err = fmt.Errorf("last boot %+v, none since %s", n.LastBoot, off.Format(time.RFC3339Nano))
			}
			return err
		})
	}
}

// devConsole runs `node console NAME` with stdin a pipe: what is typed
// comes back, and a reboot through the API shows the machine's boot on
// it; closing stdin ends the command without error.
func devConsole(t *testing.T, api, token string, c *apiclient.Client, name string) {
	t.Helper()
	in, typing := io.Pipe()
	r := startCmd(t, api, token, in, "node", "console", name)
	go typing.Write([]byte("hello-dev\r"))
	testkit.Eventually(t, 20*time.Second, "the typed line echoed by "+name+"'s console", func() bool {
		return strings.Contains(r.out.String(), "hello-dev")
	})
	if _, err := c.Do(context.Background(), "PUT", "/v1/nodes/"+name+"/power?wait=30s", proto.PowerRequest{Target: proto.PowerTargetReboot}, nil); err != nil {
		t.Fatalf("%s: reboot: %v", name, err)
	}
	testkit.Eventually(t, 20*time.Second, name+"'s boot on its console", func() bool {
		return strings.Contains(r.out.String(), "sim: reset") && strings.Contains(r.out.String(), "sim: DHCPDISCOVER")
	})
	typing.Close()
	if err := r.wait(t); err != nil {
		t.Errorf("node console %s after stdin ended: %v; stderr %q", name, err, r.errb.String())
	}
}

// TestDevRedfishShareChecked: a --redfish-share outside 0 to 1 is refused
// before anything starts, naming the flag.
func TestDevRedfishShareChecked(t *testing.T) {
	for _, v := range []string{"-0.1", "1.5", "NaN"} {
		dir := t.TempDir()
		out := &lockedBuf{}
		root := newRoot(out, out)
		root.SetArgs([]string{"dev", "--data-dir", dir, "--http-addr", "127.0.0.1:0", "--raft-addr", "127.0.0.1:0", "--machines", "0", "--redfish-share", v})
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := root.ExecuteContext(ctx)
		cancel()
		if err == nil || !strings.Contains(err.Error(), "--redfish-share") {
			t.Errorf("dev --redfish-share %s: %v; want an error naming the flag", v, err)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 0 {
			t.Errorf("dev --redfish-share %s started something: %s holds %d entries", v, dir, len(ents))
		}
	}
}
