package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/metalfleet/metalfleet/proto"
	"github.com/metalfleet/metalfleet/rackagent/nodeagent"
)

// minimalRoot is a root with just what Collect needs.
func minimalRoot(t *testing.T) string {
	root := t.TempDir()
	for p, text := range map[string]string{
		"proc/cpuinfo":                  "processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu lm\n",
		"proc/meminfo":                  "MemTotal:        2048 kB\n",
		"sys/class/dmi/id/product_name": "Test Box\n",
	} {
		p = filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestInventory(t *testing.T) {
	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"inventory", "--root", minimalRoot(t)}, &out, &errb); err != nil {
		t.Fatalf("inventory = %v (%s)", err, errb.String())
	}
	var inv proto.Inventory
	if err := json.Unmarshal(out.Bytes(), &inv); err != nil {
		t.Fatalf("inventory printed %q: %v", out.String(), err)
	}
	if inv.CPUs.Count != 1 || inv.CPUs.Model != "Test CPU" || inv.Memory.TotalBytes != 2048<<10 || inv.System.Product != "Test Box" {
		t.Errorf("inventory = %+v, want the fixture's CPU, memory and product", inv)
	}
}

func TestReport(t *testing.T) {
	var got struct {
		path, mac, auth string
		inv             proto.Inventory
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.path, got.mac, got.auth = r.URL.Path, r.Header.Get(nodeagent.MACHeader), r.Header.Get("Authorization")
		b, _ := io.ReadAll(r.Body)
		_ = json.Unmarshal(b, &got.inv)
		w.WriteHeader(http.StatusAccepted)
	}))
	defer srv.Close()
	var out, errb bytes.Buffer
	args := []string{"report", "--root", minimalRoot(t), "--callback", srv.URL + "/v1/callback", "--mac", "52:54:00:12:34:56", "--token", "tk"}
	if err := run(context.Background(), args, &out, &errb); err != nil {
		t.Fatalf("report = %v (%s)", err, errb.String())
	}
	if got.path != "/v1/callback/inventory" || got.mac != "52:54:00:12:34:56" || got.auth != "Bearer tk" || got.inv.PXEMAC != "52:54:00:12:34:56" || got.inv.CPUs.Count != 1 {
		t.Errorf("the agent got %s mac %q auth %q inventory %+v", got.path, got.mac, got.auth, got.inv)
	}
}

func TestModules(t *testing.T) {
	dir := t.TempDir()
	dep := "kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko\n" +
		"kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\nkernel/net/core/failover.ko:\n"
	if err := os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(dep), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte("kernel/net/packet/af_packet.ko\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"modules", "--dir", dir, "virtio_net", "af_packet"}, &out, &errb); err != nil {
		t.Fatalf("modules = %v", err)
	}
	want := "kernel/net/core/failover.ko\nkernel/drivers/net/net_failover.ko\nkernel/drivers/net/virtio_net.ko\n"
	if out.String() != want || !strings.Contains(errb.String(), "af_packet is built into the kernel") {
		t.Errorf("modules printed %q (stderr %q), want %q and af_packet named as built in", out.String(), errb.String(), want)
	}
	if err := run(context.Background(), []string{"modules", "--dir", dir, "nosuch"}, &out, &errb); err == nil {
		t.Error("modules(unknown) = nil error")
	}
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{
		nil,
		{"frobnicate"},
		{"report", "--mac", "52:54:00:12:34:56"},
		{"inventory", "extra"},
		{"inventory", "--no-such-flag"},
		{"modules", "virtio_net"},
	} {
		var ue usageError
		if err := run(context.Background(), args, io.Discard, io.Discard); !errors.As(err, &ue) {
			t.Errorf("run(%q) = %v, want a usage error", args, err)
		}
	}
	var out bytes.Buffer
	if err := run(context.Background(), []string{"version"}, &out, io.Discard); err != nil || strings.TrimSpace(out.String()) != nodeagent.Version {
		t.Errorf("version = %q, %v", out.String(), err)
	}
	if err := run(context.Background(), []string{"inventory", "-h"}, io.Discard, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("inventory -h = %v, want flag.ErrHelp", err)
	}
}

func TestMFLabAndTask(t *testing.T) {
	dev := filepath.Join(t.TempDir(), "lab.img")
	if err := os.WriteFile(dev, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(dev, 8<<20); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"mflab", "--device", dev, "firmware-version", "bmc"}, &out, &errb); err != nil || out.String() != "1.0.0\n" {
		t.Errorf("mflab firmware-version = %v, %q (%s), want the factory version", err, out.String(), errb.String())
	}
	var ee exitError
	if err := run(context.Background(), []string{"mflab", "--device", dev, "bogus"}, io.Discard, io.Discard); !errors.As(err, &ee) || ee != 2 {
		t.Errorf("mflab bogus = %v, want exit status 2", err)
	}
	t.Setenv("METALFLEET_TOKEN", "")
	if err := run(context.Background(), []string{"task", "--callback", "http://a/v1/callback", "--mac", "52:54:00:12:34:56"}, io.Discard, io.Discard); !errors.As(err, new(usageError)) {
		t.Errorf("task without a token = %v, want a usage error", err)
	}
}

// TestRunAsMFLab builds nodeagent and runs it through a link named
// mflab, as the ramdisk's /bin/mflab.
func TestRunAsMFLab(t *testing.T) {
	if testing.Short() {
		t.Skip("builds nodeagent")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "nodeagent")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	link := filepath.Join(dir, "mflab")
	if err := os.Symlink(bin, link); err != nil {
		t.Fatal(err)
	}
	dev := filepath.Join(dir, "lab.img")
	if err := os.WriteFile(dev, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(dev, 8<<20); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(link, "--device", dev, "bios-get").Output()
	var got map[string]string
	if err != nil || json.Unmarshal(out, &got) != nil || got["BootMode"] != nodeagent.LabDefaultBIOS["BootMode"] {
		t.Errorf("mflab bios-get = %q, %v; want the default settings", out, err)
	}
	cmd := exec.Command(link, "firmware-apply", "bios", filepath.Join(dir, "missing.img"))
	cmd.Env = append(os.Environ(), "METALFLEET_MFLAB_DEVICE="+dev)
	out, err = cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), "missing.img") {
		t.Errorf("mflab firmware-apply of a missing file = %v, %q; want exit status 1 naming the file", err, out)
	}
}
