// Package netlab is what the lab tests share for network namespaces:
// running code with sockets inside a namespace, and removing namespaces
// that earlier, dead test processes left behind. The rack agent's netns
// tests and the QEMU end-to-end test both build on it.
package netlab

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
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
