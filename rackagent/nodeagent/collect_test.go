package nodeagent

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/proto"
)

var update = flag.Bool("update", false, "rewrite the golden files of testdata")

// TestCollectGolden collects each fixture machine and compares the
// inventory with testdata/NAME.golden.json (go test -update rewrites
// them).
func TestCollectGolden(t *testing.T) {
	for _, tc := range []struct {
		name   string
		pxeMAC string
	}{
		{name: "host-firecracker"},
		{name: "qemu-i440fx-labvm", pxeMAC: "52:54:00:12:34:56"},
		{name: "synthetic-dell-r650", pxeMAC: "b0:7b:25:de:ad:03"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := loadFixture(t, tc.name)
			at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
			inv, err := CollectWith(context.Background(), Options{Root: root, PXEMAC: tc.pxeMAC, Now: func() time.Time { return at }})
			if err != nil {
				t.Fatalf("CollectWith(%s) = %v", tc.name, err)
			}
			inv.Collected.Agent = "test"
			got, err := json.MarshalIndent(inv, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, '\n')
			golden := filepath.Join("testdata", tc.name+".golden.json")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update to write it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("CollectWith(%s) differs from %s (go test -update rewrites it):\n%s", tc.name, golden, lineDiff(string(want), string(got)))
			}
		})
	}
}

// lineDiff shows the lines of got that differ from want, crudely.
func lineDiff(want, got string) string {
	w, g := bytes.Split([]byte(want), []byte("\n")), bytes.Split([]byte(got), []byte("\n"))
	var b bytes.Buffer
	for i := 0; i < len(w) || i < len(g); i++ {
		var wl, gl []byte
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if !bytes.Equal(wl, gl) {
			b.WriteString("line " + strconv.Itoa(i+1) + ":\n  want " + string(wl) + "\n  got  " + string(gl) + "\n")
			if b.Len() > 4000 {
				break
			}
		}
	}
	return b.String()
}

func TestCollectErrors(t *testing.T) {
	ctx := context.Background()
	if _, err := CollectWith(ctx, Options{Root: filepath.Join(t.TempDir(), "missing")}); err == nil {
		t.Error("CollectWith(missing root) = nil error, want one")
	}
	empty := t.TempDir()
	if _, err := CollectWith(ctx, Options{Root: empty}); err == nil {
		t.Error("CollectWith(root without /proc) = nil error, want one")
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := CollectWith(cancelled, Options{Root: loadFixture(t, "host-firecracker")}); err == nil {
		t.Error("CollectWith(cancelled) = nil error, want one")
	}
}

// TestCollectMinimal: a root with only cpuinfo and meminfo is enough;
// everything else is empty, not an error.
func TestCollectMinimal(t *testing.T) {
	root := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(root, "proc"), 0o755))
	must(t, os.WriteFile(filepath.Join(root, "proc/cpuinfo"), []byte("processor\t: 0\nflags\t\t: fpu lm\n\nprocessor\t: 1\nflags\t\t: fpu lm\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(root, "proc/meminfo"), []byte("MemTotal:        1024 kB\n"), 0o644))
	inv, err := CollectWith(context.Background(), Options{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	if inv.CPUs.Count != 2 || inv.CPUs.Threads != 2 || inv.CPUs.Architecture != "x86_64" || inv.Memory.TotalBytes != 1<<20 {
		t.Errorf("CollectWith(minimal) cpus=%+v memory=%+v, want 2 x86_64 CPUs and 1 MiB", inv.CPUs, inv.Memory)
	}
	if inv.BootMode != "bios" || inv.Disks == nil || inv.Interfaces == nil || inv.Version != proto.InventoryVersion {
		t.Errorf("CollectWith(minimal) = %+v, want bios, empty (not null) disks and interfaces", inv)
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// BenchmarkCollect collects this machine's inventory ("/"), without the
// LLDP wait (which is a wait, not work).
func BenchmarkCollect(b *testing.B) {
	ctx := context.Background()
	for b.Loop() {
		if _, err := CollectWith(ctx, Options{Root: "/", Live: true}); err != nil {
			b.Fatal(err)
		}
	}
}
