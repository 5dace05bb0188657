package sim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/metalfleet/metalfleet/proto"
	"github.com/metalfleet/metalfleet/rackagent/nodeagent"
)

// A machine booted into a task ramdisk (metalfleet.task other than
// discovery) runs the real task runner, nodeagent.RunTask, against its
// rack agent, with a TaskMachine standing for its hardware: the sim's own
// inventory, memory of TaskMemory bytes, and disks whose first
// TaskDiskBytes are sparse files (reads past them are zeros; writes past
// them fail, unless they write zeros, which changes nothing there). The
// machine keeps its disk files from one task to the next until it is
// closed, so a deploy's image is still there for the clean that erases
// it. Exec runs the lab's vendor tool, /bin/mflab (nodeagent's own code,
// in-process, on the machine's lab device file, which keeps its firmware
// versions and BIOS settings from one task to the next until the machine
// is closed), and wipefs (util-linux's, the host's, on the disk files);
// any other program is refused, so a RAID task or a vendor tool other
// than the lab's fails clearly on a simulated machine.
//
// Instance tasks run as in the ramdisk: a deploy writes the image to the
// disk files (an image up to TaskDiskBytes), a clean erases them, and a
// rescue reports in and stays up until the machine is powered off or
// reset; it offers no console shell and no SSH server (its result says
// serial_shell false, ssh "").

// Defaults of a simulated machine's task hardware.
const (
	DefaultTaskMemory = 8 << 20
	// DefaultTaskDiskBytes is sparse: a file takes room only where it
	// was written.
	DefaultTaskDiskBytes = 64 << 20
)

// labDeviceBytes is the size of a task's lab device file (sparse): the
// header, and slots for a few components.
const labDeviceBytes = 1<<20 + 4*nodeagent.LabSlotSize

// TaskMachine is the hardware of a simulated machine as a task sees it
// (nodeagent.Machine). Its files live in Dir; Close removes them.
type TaskMachine struct {
	// MAC is the boot MAC; the inventory is Inventory(MAC).
	MAC net.HardwareAddr
	// Dir holds the disk files and the lab device.
	Dir string
	// Memory is what MemAvailable says (default DefaultTaskMemory).
	Memory int64
	// DiskBytes is how much of each disk is backed by a file (default
	// DefaultTaskDiskBytes).
	DiskBytes int64
	// LabDevice is the lab device file mflab works on ("": one made in
	// Dir on first use).
	LabDevice string
	// lab, if set, gives the lab device on first use (the machine's).
	lab func() (string, error)
	// disks, if set, gives the directory of the disk files on first
	// use (the machine's; else Dir).
	disks func() (string, error)

	mu sync.Mutex
}

var _ nodeagent.Machine = (*TaskMachine)(nil)

// NewTaskMachine makes the task hardware of mac in a new temporary
// directory under dir ("" for the system's).
func NewTaskMachine(mac net.HardwareAddr, dir string) (*TaskMachine, error) {
	d, err := os.MkdirTemp(dir, "sim-task-"+strings.ReplaceAll(mac.String(), ":", "")+"-")
	if err != nil {
		return nil, err
	}
	return &TaskMachine{MAC: mac, Dir: d, Memory: DefaultTaskMemory, DiskBytes: DefaultTaskDiskBytes}, nil
}

// Close removes the machine's files.
func (t *TaskMachine) Close() error { return os.RemoveAll(t.Dir) }

// Inventory is the sim's inventory of the machine.
func (t *TaskMachine) Inventory(context.Context) (*proto.Inventory, error) {
	inv := Inventory(t.MAC)
	return &inv, nil
}

// MemAvailable is Memory.
func (t *TaskMachine) MemAvailable() (int64, error) { return t.Memory, nil }

var diskNameRE = regexp.MustCompile(`^[a-z][a-z0-9]{0,31}$`)

// OpenDisk opens disk name of the inventory.
func (t *TaskMachine) OpenDisk(name string, write bool) (nodeagent.DiskDevice, error) {
	var size int64 = -1
	for _, d := range Inventory(t.MAC).Disks {
		if d.Name == name {
			size = d.SizeBytes
		}
	}
	if size < 0 || !diskNameRE.MatchString(name) {
		return nil, fmt.Errorf("sim: no disk %q in this machine's inventory", name)
	}
	backed := min(size, t.DiskBytes)
	file, err := t.diskFile(name)
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	f, err := os.OpenFile(file, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if st, err := f.Stat(); err != nil || st.Size() != backed {
		if err := f.Truncate(backed); err != nil { // sparse: no space until written
			f.Close()
			return nil, err
		}
	}
	return &simDisk{name: name, f: f, size: size, backed: backed, write: write}, nil
}

// diskFile is the path of disk name's file.
func (t *TaskMachine) diskFile(name string) (string, error) {
	dir := t.Dir
	if t.disks != nil {
		d, err := t.disks()
		if err != nil {
			return "", err
		}
		dir = d
	}
	return filepath.Join(dir, "disk-"+name), nil
}

// Exec runs /bin/mflab in-process on the task's lab device, and wipefs
// (the host's) on the disk files; it refuses every other program.
func (t *TaskMachine) Exec(ctx context.Context, program string, args []string) (nodeagent.ExecResult, error) {
	if path.Base(program) == "wipefs" {
		return t.wipefs(ctx, args)
	}
	if program != proto.LabTool.Firmware.Program {
		return nodeagent.ExecResult{}, fmt.Errorf("sim: %s is not simulated (a simulated machine runs only the lab's %s)", program, proto.LabTool.Firmware.Program)
	}
	if err := ctx.Err(); err != nil {
		return nodeagent.ExecResult{}, err
	}
	dev, err := t.labDevice()
	if err != nil {
		return nodeagent.ExecResult{}, err
	}
	var out, errb bytes.Buffer
	code := nodeagent.MFLab(append([]string{"--device", dev}, args...), "/", &out, &errb)
	return nodeagent.ExecResult{Stdout: out.Bytes(), Stderr: errb.Bytes(), ExitCode: code}, nil
}

// wipefs runs the host's wipefs with each /dev/NAME argument replaced by
// disk NAME's file (made if need be). A signature is found only in a
// disk's first TaskDiskBytes (the file's end is its "end").
func (t *TaskMachine) wipefs(ctx context.Context, args []string) (nodeagent.ExecResult, error) {
	prog := ""
	for _, p := range []string{"/usr/sbin/wipefs", "/sbin/wipefs", "/usr/bin/wipefs"} {
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			prog = p
			break
		}
	}
	if prog == "" {
		return nodeagent.ExecResult{}, errors.New("sim: wipefs is not installed on this host (util-linux): a clean cannot run on a simulated machine")
	}
	a := slices.Clone(args)
	for i, x := range a {
		name, ok := strings.CutPrefix(x, "/dev/")
		if !ok {
			continue
		}
		d, err := t.OpenDisk(name, false) // makes the file
		if err != nil {
			return nodeagent.ExecResult{}, err
		}
		d.Close()
		if a[i], err = t.diskFile(name); err != nil {
			return nodeagent.ExecResult{}, err
		}
	}
	return nodeagent.RunProgram(ctx, prog, a)
}

// labDevice is the path of the lab device, made on first use.
func (t *TaskMachine) labDevice() (string, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.LabDevice != "" {
		return t.LabDevice, nil
	}
	newLab := t.lab
	if newLab == nil {
		newLab = func() (string, error) { return newLabDevice(t.Dir) }
	}
	p, err := newLab()
	if err == nil {
		t.LabDevice = p
	}
	return p, err
}

// newLabDevice makes a fresh (factory) lab device file in dir.
func newLabDevice(dir string) (string, error) {
	f, err := os.CreateTemp(dir, "sim-mflab-device-")
	if err != nil {
		return "", err
	}
	defer f.Close()
	if err := f.Truncate(labDeviceBytes); err != nil { // sparse
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

// labDevice is the machine's lab device, made on first use; Close
// removes it.
func (m *Machine) labDevice() (string, error) {
	m.labMu.Lock()
	defer m.labMu.Unlock()
	if m.labPath == "" {
		p, err := newLabDevice(m.TaskDir)
		if err != nil {
			return "", err
		}
		m.labPath = p
	}
	return m.labPath, nil
}

// diskDir is the directory of the machine's disk files, made on first
// use; Close removes it.
func (m *Machine) diskDir() (string, error) {
	m.labMu.Lock()
	defer m.labMu.Unlock()
	if m.diskPath == "" {
		d, err := os.MkdirTemp(m.TaskDir, "sim-disks-"+strings.ReplaceAll(m.MAC.String(), ":", "")+"-")
		if err != nil {
			return "", err
		}
		m.diskPath = d
	}
	return m.diskPath, nil
}

// Close removes the machine's lab device file and disk files, if it has
// them.
func (m *Machine) Close() error {
	m.labMu.Lock()
	defer m.labMu.Unlock()
	var errs []error
	if m.labPath != "" {
		errs = append(errs, os.Remove(m.labPath))
		m.labPath = ""
	}
	if m.diskPath != "" {
		errs = append(errs, os.RemoveAll(m.diskPath))
		m.diskPath = ""
	}
	return errors.Join(errs...)
}

// simDisk is a disk of size bytes whose first backed bytes are a file.
type simDisk struct {
	name         string
	f            *os.File
	size, backed int64
	write        bool
}

func (d *simDisk) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("sim disk %s: negative offset", d.name)
	}
	if off >= d.size {
		return 0, io.EOF
	}
	var eof error
	if rest := d.size - off; int64(len(p)) > rest {
		p, eof = p[:rest], io.EOF
	}
	n := 0
	if off < d.backed {
		k := int(min(int64(len(p)), d.backed-off))
		m, err := d.f.ReadAt(p[:k], off)
		if err != nil && !errors.Is(err, io.EOF) {
			return m, err
		}
		clear(p[m:k])
		n = k
	}
	clear(p[n:]) // past the file: an unwritten disk reads as zeros
	return len(p), eof
}

func (d *simDisk) WriteAt(p []byte, off int64) (int, error) {
	if !d.write {
		return 0, fmt.Errorf("sim disk %s: opened read-only", d.name)
	}
	if off < 0 || off+int64(len(p)) > d.size {
		return 0, fmt.Errorf("sim disk %s: a write at %d of %d bytes is past its end (%d bytes)", d.name, off, len(p), d.size)
	}
	if off+int64(len(p)) > d.backed {
		// Past the file every byte reads as zero: writing zeros there
		// changes nothing; anything else is not simulated.
		k := max(0, d.backed-off)
		if !allZero(p[k:]) {
			return 0, fmt.Errorf("sim disk %s: writes past its first %d bytes are not simulated (at %d, %d bytes)", d.name, d.backed, off, len(p))
		}
		if k == 0 {
			return len(p), nil
		}
		if _, err := d.f.WriteAt(p[:k], off); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	return d.f.WriteAt(p, off)
}

// ZeroRange zeroes [off, off+n): the file's part is written with zeros,
// the rest reads as zeros already (so a full erase of a simulated 4 TB
// disk takes no time).
func (d *simDisk) ZeroRange(off, n int64) error {
	if !d.write {
		return fmt.Errorf("sim disk %s: opened read-only", d.name)
	}
	if off < 0 || n < 0 || off+n > d.size {
		return fmt.Errorf("sim disk %s: zeroing %d bytes at %d is past its end (%d bytes)", d.name, n, off, d.size)
	}
	end := min(off+n, d.backed)
	if off < end && end == d.backed {
		// To the file's end: cut it and grow it back (sparse zeros).
		if err := d.f.Truncate(off); err != nil {
			return err
		}
		return d.f.Truncate(d.backed)
	}
	if off >= end {
		return nil // past the file: zeros already
	}
	zeros := make([]byte, 1<<20)
	for ; off < end; off += int64(len(zeros)) {
		if _, err := d.f.WriteAt(zeros[:min(int64(len(zeros)), end-off)], off); err != nil {
			return err
		}
	}
	return nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func (d *simDisk) Sync() error  { return nil } // a temporary file: nothing to make durable
func (d *simDisk) Close() error { return d.f.Close() }

// taskHTTPClient sends from the machine's leased address (BindLease) and
// bounds the wait for an answer's headers, not a whole transfer.
func (m *Machine) taskHTTPClient(fw Firmware, ip net.IP) *http.Client {
	d := &net.Dialer{Timeout: 5 * time.Second}
	if m.BindLease {
		d.LocalAddr = &net.TCPAddr{IP: ip}
	}
	tr := &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: 2, IdleConnTimeout: 30 * time.Second,
		DisableCompression: true, ResponseHeaderTimeout: fw.HTTPTimeout}
	return &http.Client{Transport: tr}
}

// runTask runs the task of a task boot with the real runner; its log
// goes to the machine's serial console, as a ramdisk's does.
func (m *Machine) runTask(ctx context.Context, fw Firmware, ip net.IP, callback, mac, token, task string) error {
	tm, err := NewTaskMachine(m.MAC, m.TaskDir)
	if err != nil {
		return fmt.Errorf("task hardware: %w", err)
	}
	defer tm.Close()
	if m.TaskMemory > 0 {
		tm.Memory = m.TaskMemory
	}
	if m.TaskDiskBytes > 0 {
		tm.DiskBytes = m.TaskDiskBytes
	}
	tm.lab = m.labDevice // made when a task first runs mflab
	tm.disks = m.diskDir // kept from one task to the next
	client := m.taskHTTPClient(fw, ip)
	defer client.CloseIdleConnections()
	log := slog.New(slog.NewTextHandler(serialLines{m}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	m.say("sim: ramdisk: running task %s", task)
	err = nodeagent.RunTask(ctx, nodeagent.TaskEnv{CallbackURL: callback, MAC: mac, Token: token, Machine: tm,
		Log: log, HTTP: client, TempDir: tm.Dir})
	switch {
	case task == string(proto.TaskRescue) && ctx.Err() != nil:
		m.say("sim: ramdisk: rescue ended (powered off or reset)")
	case err == nil:
		m.say("sim: ramdisk: task %s done; waiting to be powered off", task)
	case errors.Is(err, nodeagent.ErrStepFailed):
		m.say("sim: ramdisk: task %s failed: %v; waiting to be powered off", task, err)
	default:
		m.say("sim: ramdisk: task %s: %v", task, err)
	}
	return err
}

// serialLines writes log records as console lines.
type serialLines struct{ m *Machine }

func (s serialLines) Write(p []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		s.m.say("nodeagent: %s", line)
	}
	return len(p), nil
}
