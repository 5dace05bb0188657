package nodeagent

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/metalfleet/metalfleet/proto"
)

// wipeMachine is a test machine that runs the real wipefs on its disk
// files (/dev/NAME is the file NAME), and lists partitions it is told.
type wipeMachine struct {
	*testMachine
	wipefs string
	parts  map[string][]string
}

func newWipeMachine(t *testing.T) *wipeMachine {
	t.Helper()
	w, err := exec.LookPath("wipefs")
	if err != nil {
		for _, p := range []string{"/usr/sbin/wipefs", "/sbin/wipefs"} {
			if _, err := os.Stat(p); err == nil {
				w = p
			}
		}
	}
	if w == "" {
		t.Skip("wipefs (util-linux) is not installed")
	}
	return &wipeMachine{testMachine: newTestMachine(t), wipefs: w, parts: map[string][]string{}}
}

func (m *wipeMachine) Partitions(disk string) []string { return m.parts[disk] }

func (m *wipeMachine) Exec(ctx context.Context, program string, args []string) (ExecResult, error) {
	if program != DefaultWipeFS {
		return m.testMachine.Exec(ctx, program, args)
	}
	m.mu.Lock()
	m.calls = append(m.calls, append([]string{program}, args...))
	m.mu.Unlock()
	a := slices.Clone(args)
	for i, x := range a {
		if name, ok := strings.CutPrefix(x, "/dev/"); ok {
			a[i] = filepath.Join(m.dir, name)
		}
	}
	return RunProgram(ctx, m.wipefs, a)
}

// mkfsExt4 makes an ext4 filesystem on a disk file.
func mkfsExt4(t *testing.T, file string) {
	t.Helper()
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		mkfs = "/usr/sbin/mkfs.ext4"
		if _, err := os.Stat(mkfs); err != nil {
			t.Skip("mkfs.ext4 (e2fsprogs) is not installed")
		}
	}
	if _, err := os.Stat(file); err != nil {
		if err := os.WriteFile(file, make([]byte, 2<<20), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command(mkfs, "-q", "-F", file).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
}

// signaturesOf lists what wipefs finds on a file.
func signaturesOf(t *testing.T, wipefs, file string) string {
	t.Helper()
	out, err := exec.Command(wipefs, "--noheadings", "--output", "TYPE", file).Output()
	if err != nil {
		t.Fatalf("wipefs %s: %v", file, err)
	}
	return strings.TrimSpace(string(out))
}

// TestRunTaskClean: the arrays are stopped, an ext4 filesystem (whole
// disk and on a "partition") is erased by wipefs, the first and last MiB
// are zeroed, the bytes between are left (not full), the lab device is
// untouched, and wipefs finds nothing afterwards.
func TestRunTaskClean(t *testing.T) {
	m := newWipeMachine(t)
	m.inv.Disks = append(m.inv.Disks, proto.Disk{Name: "md127", SizeBytes: testDiskSize, RAID: "raid1", Members: []string{"vda", "vdb"}})
	fillDisk(t, m.testMachine, "vda", 0xaa)
	mkfsExt4(t, filepath.Join(m.dir, "vdb"))
	// vda1 stands for a partition of vda holding a filesystem.
	mkfsExt4(t, filepath.Join(m.dir, "vda1"))
	m.parts["vda"] = []string{"vda1"}
	if got := signaturesOf(t, m.wipefs, filepath.Join(m.dir, "vdb")); got != "ext4" {
		t.Fatalf("before: wipefs finds %q on vdb, want ext4", got)
	}
	a := newTestAgent(t, planOf(proto.TaskClean, nil))
	if err := runTestTask(t, a, m); err != nil {
		t.Fatalf("RunTask = %v", err)
	}
	r := a.results()["erase"]
	if !r.Passed {
		t.Fatalf("erase: %+v, want passed", r)
	}
	res := decode[cleanResult](t, r.Result)
	if res.Full || !slices.Equal(res.ArraysStopped, []string{"md127"}) || len(res.Disks) != 2 {
		t.Fatalf("result %+v, want md127 stopped and two disks", res)
	}
	for _, d := range res.Disks {
		if d.Zeroed != 2<<20 {
			t.Errorf("disk %s: %d bytes zeroed, want 2 MiB", d.Name, d.Zeroed)
		}
	}
	if res.Disks[0].Name != "vda" || res.Disks[0].SignaturesErased != 1 || res.Disks[1].Name != "vdb" || res.Disks[1].SignaturesErased != 1 {
		t.Errorf("disks %+v, want vda (its partition's ext4 erased) and vdb (ext4 erased)", res.Disks)
	}
	for _, f := range []string{"vda", "vda1", "vdb"} {
		if got := signaturesOf(t, m.wipefs, filepath.Join(m.dir, f)); got != "" {
			t.Errorf("after: wipefs finds %q on %s", got, f)
		}
	}
	vda, _ := os.ReadFile(filepath.Join(m.dir, "vda"))
	if firstNonZero(vda[:1<<20]) >= 0 || firstNonZero(vda[len(vda)-1<<20:]) >= 0 {
		t.Error("vda's first or last MiB is not zero")
	}
	if mid := vda[1<<20 : len(vda)-1<<20]; !bytes.Equal(mid, bytes.Repeat([]byte{0xaa}, len(mid))) {
		t.Error("vda's middle was written without full=true")
	}
	if lab, _ := os.ReadFile(m.labDev); !bytes.Equal(lab, make([]byte, len(lab))) {
		t.Error("the lab device was written")
	}
	calls := m.execCalls()
	if len(calls) == 0 || !slices.Equal(calls[0], []string{DefaultMDADM, "--stop", "/dev/md127"}) {
		t.Errorf("first program run %v, want mdadm --stop /dev/md127", calls[:min(1, len(calls))])
	}
	for _, c := range calls {
		if slices.Contains(c, "/dev/vdc") {
			t.Errorf("the lab device was wiped: %v", c)
		}
	}
}

func TestRunTaskCleanFull(t *testing.T) {
	m := newWipeMachine(t)
	fillDisk(t, m.testMachine, "vda", 0xaa)
	fillDisk(t, m.testMachine, "vdb", 0x55)
	a := newTestAgent(t, planOf(proto.TaskClean, map[string]string{"full": "true"}))
	if err := runTestTask(t, a, m); err != nil {
		t.Fatalf("RunTask = %v", err)
	}
	res := decode[cleanResult](t, a.results()["erase"].Result)
	if !res.Full || len(res.Disks) != 2 || res.Disks[0].Zeroed != testDiskSize || res.Disks[1].Zeroed != testDiskSize {
		t.Errorf("result %+v, want both disks zeroed whole", res)
	}
	for _, f := range []string{"vda", "vdb"} {
		if b, _ := os.ReadFile(filepath.Join(m.dir, f)); firstNonZero(b) >= 0 {
			t.Errorf("%s: byte %d is not zero after a full erase", f, firstNonZero(b))
		}
	}
}

// stubbornMachine's wipefs erases nothing: the check must catch it.
type stubbornMachine struct{ *wipeMachine }

func (m *stubbornMachine) Exec(ctx context.Context, program string, args []string) (ExecResult, error) {
	if program == DefaultWipeFS && slices.Contains(args, "--all") {
		return ExecResult{}, nil
	}
	return m.wipeMachine.Exec(ctx, program, args)
}

func TestRunTaskCleanFindsWhatIsLeft(t *testing.T) {
	m := &stubbornMachine{newWipeMachine(t)}
	mkfsExt4(t, filepath.Join(m.dir, "vdb1"))
	m.parts["vdb"] = []string{"vdb1"}
	a := newTestAgent(t, planOf(proto.TaskClean, nil))
	if err := runTestTask(t, a, m); err == nil {
		t.Fatal("RunTask passed with a signature left")
	}
	if r := a.results()["erase"]; r.Passed || !strings.Contains(r.Error, "vdb: signatures left after erasing: vdb1 0x438 ext4") {
		t.Errorf("erase: passed %t error %q, want it to name vdb1's ext4", r.Passed, r.Error)
	}
}

func TestLinuxMachinePartitions(t *testing.T) {
	root := t.TempDir()
	for _, p := range []string{"sys/block/sda/sda1/partition", "sys/block/sda/sda2/partition", "sys/block/sda/queue/rotational"} {
		os.MkdirAll(filepath.Join(root, filepath.Dir(p)), 0o755)
		os.WriteFile(filepath.Join(root, p), []byte("1\n"), 0o644)
	}
	m := &LinuxMachine{Root: root}
	if got := m.Partitions("sda"); !slices.Equal(got, []string{"sda1", "sda2"}) {
		t.Errorf("Partitions(sda) = %v, want sda1 sda2", got)
	}
	if got := m.Partitions("sdb"); got != nil {
		t.Errorf("Partitions(sdb) = %v, want none", got)
	}
}
