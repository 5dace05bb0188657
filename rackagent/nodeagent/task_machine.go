package nodeagent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/metalfleet/metalfleet/proto"
)

// LinuxMachine is the Machine of a real Linux system under Root ("/" in
// the ramdisk): the inventory is Collect's (live sources only on "/",
// without listening for LLDP), disks are Root/dev/NAME opened with
// O_DIRECT where the kernel allows it, MemAvailable is
// Root/proc/meminfo's, and programs run as they are (not under Root).
type LinuxMachine struct {
	// Root ("": "/").
	Root string
	// PXEMAC is put in the inventory.
	PXEMAC string
	// Log (nil: discard).
	Log *slog.Logger
}

func (m *LinuxMachine) root() string {
	if m.Root == "" {
		return "/"
	}
	return m.Root
}

// Inventory collects the inventory.
func (m *LinuxMachine) Inventory(ctx context.Context) (*proto.Inventory, error) {
	return CollectWith(ctx, Options{Root: m.root(), Live: isSlash(m.root()), PXEMAC: m.PXEMAC, Log: m.Log, LLDP: map[string]*proto.LLDP{}})
}

// OpenDisk opens Root/dev/NAME, with O_DIRECT when the kernel accepts it
// there (not on tmpfs).
func (m *LinuxMachine) OpenDisk(name string, write bool) (DiskDevice, error) {
	if name == "" || strings.ContainsAny(name, "/\x00") || name == "." || name == ".." {
		return nil, fmt.Errorf("disk name %q: want a name under /dev such as sda", name)
	}
	path := filepath.Join(m.root(), "dev", name)
	flags := os.O_RDONLY
	if write {
		flags = os.O_RDWR
	}
	if f, err := os.OpenFile(path, flags|oDirect, 0); err == nil {
		return f, nil
	}
	return os.OpenFile(path, flags, 0)
}

// MemAvailable reads MemAvailable from Root/proc/meminfo.
func (m *LinuxMachine) MemAvailable() (int64, error) {
	f, err := os.Open(filepath.Join(m.root(), "proc/meminfo"))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return memAvailable(f)
}

func memAvailable(f *os.File) (int64, error) {
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "MemAvailable:" {
			n, err := strconv.ParseInt(fields[1], 10, 64)
			if err != nil || n < 0 {
				return 0, fmt.Errorf("meminfo: MemAvailable %q: not a number", fields[1])
			}
			return n << 10, nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, errors.New("meminfo: no MemAvailable")
}

// Exec runs program with args.
func (m *LinuxMachine) Exec(ctx context.Context, program string, args []string) (ExecResult, error) {
	return RunProgram(ctx, program, args)
}

// RunProgram runs program with args (no shell) and returns its output,
// each stream cut at MaxExecOutput bytes, and its exit code; err only
// when it could not run or ctx ended. A simulated Machine may use it.
func RunProgram(ctx context.Context, program string, args []string) (ExecResult, error) {
	cmd := exec.CommandContext(ctx, program, args...)
	var stdout, stderr headBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/", "LC_ALL=C"}
	err := cmd.Run()
	res := ExecResult{Stdout: stdout.b, Stderr: stderr.b}
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		return res, fmt.Errorf("%w (%v)", ctx.Err(), err)
	case errors.As(err, &ee):
		res.ExitCode = ee.ExitCode()
		if res.ExitCode < 0 {
			res.ExitCode = 128 // killed by a signal
		}
		return res, nil
	case err != nil:
		return res, err
	}
	return res, nil
}

// headBuffer keeps the first MaxExecOutput bytes written to it.
type headBuffer struct{ b []byte }

func (h *headBuffer) Write(p []byte) (int, error) {
	if room := MaxExecOutput - len(h.b); room > 0 {
		h.b = append(h.b, p[:min(len(p), room)]...)
	}
	return len(p), nil
}
