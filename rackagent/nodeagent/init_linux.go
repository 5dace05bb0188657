package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"time"

	uiorand "github.com/u-root/uio/rand"
	"golang.org/x/sys/unix"

	"github.com/metalfleet/metalfleet/proto"
)

// RunInit is PID 1 of a task ramdisk. It mounts /proc, /sys, /dev (with
// /dev/console as its standard streams) and /run, loads the modules in
// ModuleListFile, reads the kernel command line (see ParseCmdline), takes
// a DHCP lease on the boot interface, collects the inventory and reports
// it to metalfleet.callback, printing its progress on the console (or,
// with metalfleet.task and a token, runs that task: see RunTask). Then
// it powers off, reboots or stays up as the command line says; a rescue
// ramdisk (metalfleet.task=rescue) always stays up, its shells running. It
// returns only when that fails (or ctx ends while staying up); PID 1 must
// then not exit, or the kernel panics.
func RunInit(ctx context.Context) error {
	if os.Getpid() != 1 {
		return errors.New("RunInit: not PID 1")
	}
	// The DHCP library draws transaction ids from u-root's rand, which
	// spins (up to 2 minutes, deaf to contexts) until the kernel's CRNG
	// is seeded, or, told to use /dev/urandom, waits about a second for
	// the kernel to seed it from timer jitter: a VM without RDRAND or
	// virtio-rng has no faster source. A transaction id only has to
	// differ from other clients' ids, so the ramdisk draws them from
	// math/rand (seeded by the runtime) instead.
	uiorand.Reader = xidReader{}
	sys := linuxInit(os.Stderr)
	p, err := runInit(ctx, sys)
	return finish(ctx, sys, p, err)
}

func linuxInit(console io.Writer) *initSystem {
	log := consoleLogger(console)
	fs := sysfs{root: "/"}
	rep := &Reporter{Log: log}
	return &initSystem{
		mountAll:    mountAll,
		loadModules: func() (int, []error) { return loadModules(ModuleListFile, "/lib/modules/"+unameRelease()) },
		cmdline: func() (string, error) {
			b, err := os.ReadFile("/proc/cmdline")
			return string(b), err
		},
		links:  func() []Link { return listLinks(fs) },
		linkUp: setLinkUp,
		dhcp: func(ctx context.Context, l Link) (*Lease, error) {
			return dhcpLease(ctx, l, log)
		},
		configure: configureLease,
		lldp: func(ctx context.Context, ifaces []string, wait time.Duration) map[string]*proto.LLDP {
			return ListenLLDP(ctx, ifaces, wait, log)
		},
		collect: CollectWith,
		report:  rep.Report,
		runTask: func(ctx context.Context, env TaskEnv) error {
			if env.Machine == nil {
				env.Machine = &LinuxMachine{PXEMAC: env.MAC, Log: log}
			}
			// A task's reports wait longer for the agent than the
			// discovery inventory: a step's result is worth keeping
			// through an agent's restart.
			env.Reporter = &Reporter{Log: log, MaxElapsed: TaskReportMaxElapsed}
			// A rescue task's shell on the serial console, and its SSH
			// server (when its params let user rescue in).
			if env.RescueShell == nil {
				env.RescueShell = (&ConsoleShell{Log: log}).Start
			}
			if env.RescueSSH == "" {
				env.RescueSSH = ":22"
			}
			return RunTask(ctx, env)
		},
		powerOff: func() error { unix.Sync(); return unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF) },
		reboot:   func() error { unix.Sync(); return unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART) },
		sleep: func(ctx context.Context, d time.Duration) {
			t := time.NewTimer(d)
			defer t.Stop()
			select {
			case <-ctx.Done():
			case <-t.C:
			}
		},
		out: console,
		log: log,
	}
}

// consoleLogger logs text lines with the time since boot instead of the
// wall clock (a ramdisk's clock is whatever the RTC said).
func consoleLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey && len(groups) == 0 {
				var ts unix.Timespec
				if unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts) == nil {
					return slog.String("up", fmt.Sprintf("%.3fs", float64(ts.Nano())/1e9))
				}
			}
			return a
		},
	})).With("app", "nodeagent")
}

// mountAll mounts the kernel filesystems (and devpts) and makes /dev/console the
// standard streams.
func mountAll() error {
	const nsd = unix.MS_NOSUID | unix.MS_NODEV
	mounts := []struct {
		source, target, fstype string
		flags                  uintptr
		data                   string
	}{
		{"proc", "/proc", "proc", nsd | unix.MS_NOEXEC, ""},
		{"sysfs", "/sys", "sysfs", nsd | unix.MS_NOEXEC, ""},
		{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
		{"tmpfs", "/run", "tmpfs", nsd, "mode=0755"},
		// Pseudo-terminals for the rescue SSH server's sessions.
		{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "mode=0620,ptmxmode=0666"},
	}
	var errs []error
	for _, m := range mounts {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data); err != nil && !errors.Is(err, unix.EBUSY) {
			errs = append(errs, fmt.Errorf("mount %s: %w", m.target, err))
		}
	}
	// mdadm keeps its map of arrays in /run/mdadm (raid tasks).
	if err := os.MkdirAll("/run/mdadm", 0o700); err != nil {
		errs = append(errs, err)
	}
	if fd, err := unix.Open("/dev/console", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0); err == nil {
		for i := 0; i <= 2; i++ {
			_ = unix.Dup3(fd, i, 0)
		}
		unix.Close(fd)
	}
	return errors.Join(errs...)
}

// xidReader is math/rand/v2 as a u-root rand.ContextReader.
type xidReader struct{}

func (xidReader) Read(b []byte) (int, error) {
	for i := range b {
		b[i] = byte(mrand.Uint32())
	}
	return len(b), nil
}

func (r xidReader) ReadContext(_ context.Context, b []byte) (int, error) { return r.Read(b) }

// ModuleError is a module that did not load.
type ModuleError struct {
	Module string
	Err    error
}

func (e *ModuleError) Error() string { return e.Module + ": " + e.Err.Error() }
func (e *ModuleError) Unwrap() error { return e.Err }

// NoDevice says the module loaded nothing because its hardware is not
// there (ipmi_si on a machine without a BMC): not a problem.
func (e *ModuleError) NoDevice() bool { return errors.Is(e.Err, unix.ENODEV) }

// moduleInitCompressedFile asks finit_module to decompress (Linux 6.1+,
// CONFIG_MODULE_DECOMPRESS).
const moduleInitCompressedFile = 4

// loadModules loads each file of list (relative to dir) with
// finit_module, in order. A module already loaded is not an error; a
// module that fails (a driver with no device, say) does not stop the
// others.
func loadModules(list, dir string) (int, []error) {
	f, err := os.Open(list)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, []error{err}
	}
	files, err := ParseModuleList(f)
	f.Close()
	if err != nil {
		return 0, []error{err}
	}
	var (
		loaded int
		errs   []error
	)
	for _, file := range files {
		if err := loadModule(filepath.Join(dir, file)); err != nil {
			errs = append(errs, &ModuleError{Module: ModuleName(file), Err: err})
			continue
		}
		loaded++
	}
	return loaded, errs
}

func loadModule(path string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	flags := 0
	for _, ext := range []string{".xz", ".zst", ".gz"} {
		if strings.HasSuffix(path, ext) {
			flags = moduleInitCompressedFile
		}
	}
	if err := unix.FinitModule(fd, "", flags); err != nil && !errors.Is(err, unix.EEXIST) {
		return err
	}
	return nil
}
