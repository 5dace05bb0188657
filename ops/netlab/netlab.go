// Package netlab is what the lab tests share for network namespaces:
// running code with sockets inside a namespace, and removing namespaces
// that earlier, dead test processes left behind. The rack agent's netns
// tests and the QEMU end-to-end test both build on it.
package netlab

import (
	"context"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Do runs fn on an OS thread that has entered the named network
// namespace; sockets fn creates live in that namespace for good. The
// thread goes back to its own namespace afterwards; if it cannot, it is
// left locked so the Go runtime retires it with the goroutine.
func Do(name string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer self.Close()
		target, err := os.Open(filepath.Join("/var/run/netns", name))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setns %s: %w", name, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err == nil {
			runtime.UnlockOSThread()
		} // else: stay locked; the thread exits with this goroutine
		errc <- ferr
	}()
	return <-errc
}

// Dialer dials TCP from inside namespace ns.
func Dialer(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := Do(ns, func() error {
			var err error
			c, err = (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// ReapStale deletes namespaces left by earlier test processes that died
// before their cleanup ran. names matches a namespace name and captures
// the creating process's pid as its first group; the processes started
// in them died with that process (Pdeathsig).
func ReapStale(t testing.TB, names *regexp.Regexp) {
	ents, _ := os.ReadDir("/var/run/netns")
	for _, e := range ents {
		m := names.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		pid, _ := strconv.Atoi(m[1])
		if pid == os.Getpid() {
			continue
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			continue // its test process is still alive
		}
		if out, err := exec.Command("ip", "netns", "del", e.Name()).CombinedOutput(); err != nil {
			t.Logf("removing stale namespace %s: %v %s", e.Name(), err, out)
		} else {
			t.Logf("removed stale namespace %s (test process %d is gone)", e.Name(), pid)
		}
	}
}

// Need skips the test when it cannot run here (not root, a binary or a
// file missing), unless CI is set: CI installs ops/apt-packages.txt and
// runs as root, so there a missing piece fails the test instead of
// skipping it silently. files maps a path to where it comes from.
func Need(t testing.TB, binaries []string, files map[string]string) {
	t.Helper()
	// ip and dhclient live in /usr/sbin, which a non-login PATH may lack.
	path := os.Getenv("PATH")
	for _, d := range []string{"/usr/sbin", "/sbin"} {
		if !strings.Contains(":"+path+":", ":"+d+":") {
			path += ":" + d
		}
	}
	t.Setenv("PATH", path)
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root (network namespaces)")
	}
	for _, b := range binaries {
		if _, err := exec.LookPath(b); err != nil {
			missing = append(missing, b)
		}
	}
	for _, f := range slices.Sorted(maps.Keys(files)) {
		if _, err := os.Stat(f); err != nil {
			missing = append(missing, f+" ("+files[f]+")")
		}
	}
	if len(missing) == 0 {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("CI is set but this test cannot run: missing %s (see ops/apt-packages.txt, ops/install-deps.sh)", strings.Join(missing, ", "))
	}
	t.Skipf("needs %s (set CI=true to make this a failure)", strings.Join(missing, ", "))
}

// Laps returns a logger of phase timings: each call logs the time since
// the last one.
func Laps(t testing.TB) func(phase string) {
	start := time.Now()
	last := start
	return func(phase string) {
		now := time.Now()
		t.Logf("phase %-44s %7.2fs (total %6.2fs)", phase, now.Sub(last).Seconds(), now.Sub(start).Seconds())
		last = now
	}
}

// Run runs a short command and fails the test if it fails.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Tail returns the last n lines of a file (or why it cannot be read).
func Tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Proc is a child process a test started in a namespace; its pid is the
// only handle used to stop it.
type Proc struct {
	Name    string
	Cmd     *exec.Cmd
	LogPath string
	Started time.Time
	// Done is closed when the process has exited; Exited and Err are set
	// then.
	Done    chan struct{}
	Exited  time.Time
	Err     error
	stopped atomic.Bool
}

// Running reports whether the process has not exited.
func (p *Proc) Running() bool {
	select {
	case <-p.Done:
		return false
	default:
		return true
	}
}

// Stopped reports whether Stop found it running: the test ended it.
func (p *Proc) Stopped() bool { return p.stopped.Load() }

// Stop sends sig to the process's pid and waits up to d for it to exit,
// then SIGKILLs it.
func (p *Proc) Stop(sig syscall.Signal, d time.Duration) error {
	if !p.Running() {
		return nil
	}
	p.stopped.Store(true)
	_ = p.Cmd.Process.Signal(sig)
	select {
	case <-p.Done:
		return nil
	case <-time.After(d):
	}
	_ = p.Cmd.Process.Kill()
	select {
	case <-p.Done:
	case <-time.After(10 * time.Second):
	}
	return fmt.Errorf("%s (pid %d) ignored %v for %s and was killed", p.Name, p.Cmd.Process.Pid, sig, d)
}

// Start runs argv in namespace ns with its output appended to logPath.
// When the test ends the process is stopped by its pid (SIGTERM, then
// SIGKILL), and its log's last lines are shown if the test failed; if the
// test binary dies without running its cleanups, the kernel kills the
// process too (Pdeathsig).
func Start(t testing.TB, name, ns, logPath string, argv ...string) *Proc {
	t.Helper()
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	// `ip netns exec` execs the program in place: the pid is the
	// program's own.
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p := &Proc{Name: name, Cmd: cmd, LogPath: logPath, Done: make(chan struct{}), Started: time.Now()}
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.Err = cmd.Wait()
		p.Exited = time.Now()
		logf.Close()
		close(p.Done)
	}()
	t.Cleanup(func() {
		if err := p.Stop(syscall.SIGTERM, 5*time.Second); err != nil {
			t.Logf("%s: %v", name, err)
		}
		if t.Failed() {
			t.Logf("--- last lines of %s's log (%s) ---\n%s", name, logPath, Tail(logPath, 40))
		}
	})
	return p
}
