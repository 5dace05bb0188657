package httpboot

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/proto"
)

func discoveryConfig() *proto.BootConfig {
	return &proto.BootConfig{Kind: proto.BootDiscovery, Kernel: testKernel(), Initrd: testInitrd(), Cmdline: "console=ttyS0,115200 panic=-1"}
}

func ramdiskNode() proto.BootNode {
	return proto.BootNode{UUID: testNodeID, MACs: []string{"aa:bb:cc:00:00:02"}, Boot: proto.BootConfig{
		Kind: proto.BootRamdisk, Kernel: testKernel(), Initrd: testInitrd(),
		Cmdline: "console=ttyS0,115200 ", Task: "burnin", TaskToken: "tt-3q9ZkVJ1xQ"}}
}

func TestScriptHandler(t *testing.T) {
	h := newHarness(t, 1<<20)
	h.backend.addNode(ramdiskNode())
	h.backend.addNode(proto.BootNode{UUID: "11111111-2222-4333-8444-555555555555", MACs: []string{"aa:bb:cc:00:00:04"},
		Boot: proto.BootConfig{Kind: proto.BootLocalDisk}})
	h.backend.addNode(proto.BootNode{UUID: "11111111-2222-4333-8444-666666666666", MACs: []string{"aa:bb:cc:00:00:06"},
		Boot: proto.BootConfig{Kind: proto.BootRamdisk, Initrd: testInitrd(), TaskToken: "x"}})

	golden := func(name string) string {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	tests := []struct {
		name      string
		discovery bool
		path      string
		status    int
		body      string // exact, or
		contains  string
	}{
		{"unknown MAC gets discovery", true, "/boot/aa:bb:cc:00:00:01.ipxe", 200, golden("discovery-unknown-mac.ipxe"), ""},
		{"dashes and upper case", true, "/boot/AA-BB-CC-00-00-01.ipxe", 200, golden("discovery-unknown-mac.ipxe"), ""},
		{"dotted", true, "/boot/aabb.cc00.0001.ipxe", 200, golden("discovery-unknown-mac.ipxe"), ""},
		{"hexraw", true, "/boot/aabbcc000001.ipxe", 200, golden("discovery-unknown-mac.ipxe"), ""},
		{"known ramdisk node", true, "/boot/aa-bb-cc-00-00-02.ipxe", 200, golden("ramdisk-task-token.ipxe"), ""},
		{"known node, discovery off", false, "/boot/aa:bb:cc:00:00:02.ipxe", 200, golden("ramdisk-task-token.ipxe"), ""},
		{"local disk", false, "/boot/aa:bb:cc:00:00:04.ipxe", 200, golden("local-disk.ipxe"), ""},
		{"unknown MAC, discovery off", false, "/boot/aa:bb:cc:00:00:01.ipxe", 404, "no boot config for aa:bb:cc:00:00:01: unknown MAC and discovery is off\n", ""},
		{"bad MAC", true, "/boot/nope.ipxe", 400, "\"nope\" is not an Ethernet MAC address\n", ""},
		{"8-byte MAC", true, "/boot/aa:bb:cc:dd:ee:ff:00:11.ipxe", 400, "", "not an Ethernet MAC"},
		{"not .ipxe", true, "/boot/aa:bb:cc:00:00:01", 404, "", "want /boot/MAC.ipxe"},
		{"ramdisk without kernel", true, "/boot/aa:bb:cc:00:00:06.ipxe", 500, "", "cannot render boot script for aa:bb:cc:00:00:06: ramdisk boot config has no kernel"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.discovery {
				h.backend.setDiscovery(discoveryConfig())
			} else {
				h.backend.setDiscovery(nil)
			}
			status, body, hdr := h.do("GET", tt.path, nil, nil)
			if status != tt.status {
				t.Errorf("GET %s = %d %q, want %d", tt.path, status, body, tt.status)
			}
			if tt.body != "" && body != tt.body {
				t.Errorf("GET %s = %q, want %q", tt.path, body, tt.body)
			}
			if !strings.Contains(body, tt.contains) {
				t.Errorf("GET %s = %q, want it to contain %q", tt.path, body, tt.contains)
			}
			if ct := hdr.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
				t.Errorf("GET %s: Content-Type %q, want text/plain", tt.path, ct)
			}
			if strings.Count(strings.TrimSuffix(body, "\n"), "\n") > 0 && status != 200 {
				t.Errorf("GET %s: error body %q has more than one line", tt.path, body)
			}
		})
	}
}

func TestScriptReportsAndDiscoveryRecord(t *testing.T) {
	h := newHarness(t, 1<<20)
	h.backend.addNode(ramdiskNode())
	h.backend.setDiscovery(discoveryConfig())

	h.do("GET", "/boot/aa-bb-cc-00-00-01.ipxe", nil, nil)  // unknown: discovery
	h.do("GET", "/boot/aa-bb-cc-00-00-02.ipxe", nil, nil)  // known node
	h.do("HEAD", "/boot/aa-bb-cc-00-00-03.ipxe", nil, nil) // HEAD: not booting
	h.do("GET", "/boot/zz.ipxe", nil, nil)                 // bad: no report

	got := h.reporter.take()
	// An unknown MAC's script is no boot event: its DHCP sighting tells
	// the coordinator of it.
	want := []proto.AgentReport{
		{Kind: proto.ReportBootEvent, Event: "script", MAC: "aa:bb:cc:00:00:02", Node: testNodeID, Time: h.clock.Now()},
	}
	if len(got) != len(want) {
		t.Fatalf("reports = %+v, want %+v", got, want)
	}
	for i := range want {
		if !equalReport(got[i], want[i]) {
			t.Errorf("report %d = %+v, want %+v", i, got[i], want[i])
		}
	}

	for _, tt := range []struct {
		mac     string
		advance time.Duration
		within  time.Duration
		want    bool
	}{
		{"aa:bb:cc:00:00:01", 0, 10 * time.Minute, true},
		{"AA-BB-CC-00-00-01", 0, 10 * time.Minute, true},
		{"aa:bb:cc:00:00:02", 0, 10 * time.Minute, false}, // a ramdisk, not discovery
		{"aa:bb:cc:00:00:03", 0, 10 * time.Minute, false}, // HEAD only
		{"garbage", 0, 10 * time.Minute, false},
		{"aa:bb:cc:00:00:01", 10 * time.Minute, 10 * time.Minute, true},
		{"aa:bb:cc:00:00:01", time.Second, 10 * time.Minute, false},
		{"aa:bb:cc:00:00:01", 0, time.Hour, true},
	} {
		h.clock.Advance(tt.advance)
		if got := h.srv.RecentlyServedDiscovery(tt.mac, tt.within); got != tt.want {
			t.Errorf("RecentlyServedDiscovery(%q, %s) at +%s = %v, want %v", tt.mac, tt.within, tt.advance, got, tt.want)
		}
	}
}

func equalReport(a, b proto.AgentReport) bool {
	return a.Kind == b.Kind && a.Event == b.Event && a.MAC == b.MAC && a.Node == b.Node && a.Step == b.Step &&
		a.Time.Equal(b.Time) && string(a.Data) == string(b.Data)
}

// TestServe: a real listener, a real request, and a clean stop on cancel.
func TestServe(t *testing.T) {
	be := newFakeBackend()
	be.setDiscovery(discoveryConfig())
	srv := New(Config{Backend: be, BaseURL: testBase, Logger: testLogger(t)})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()

	resp, err := http.Get("http://" + ln.Addr().String() + "/boot/aa-bb-cc-00-00-01.ipxe")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(string(b), "#!ipxe\nkernel ") {
		t.Errorf("GET script = %d %q", resp.StatusCode, b)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve = %v after cancel, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
	if _, err := http.Get("http://" + ln.Addr().String() + "/boot/aa-bb-cc-00-00-01.ipxe"); err == nil {
		t.Error("the listener still answers after Serve returned")
	}
}
