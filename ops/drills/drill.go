// Package drills holds failover drills that run real metalfleet
// processes: the same steps an operator rehearses, automated. Each drill
// is a Go test (failover_test.go) over the helpers here.
package drills

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/coordinator/apiclient"
	"github.com/metalfleet/metalfleet/ops/testkit"
)

// Binary returns the metalfleet binary to drill (testkit.Binary: $METALFLEET_BIN
// if set, else one built once per test process and removed by TestMain),
// as an absolute path.
func Binary(t testing.TB) string {
	t.Helper()
	b := testkit.Binary(t)
	abs, err := filepath.Abs(b)
	if err != nil {
		t.Fatal(err)
	}
	return abs
}

// FreePort returns a loopback TCP address free at the moment (see
// pickPort).
func FreePort(t testing.TB) string {
	t.Helper()
	return pickPort(t, "TCP", canBind("tcp4"))
}

// freeUDP returns a loopback UDP address free at the moment.
func freeUDP(t testing.TB) string {
	t.Helper()
	return pickPort(t, "UDP", canBind("udp4"))
}

// freeGossip returns a loopback address whose port is free for both TCP
// and UDP at the moment (memberlist binds both on one port).
func freeGossip(t testing.TB) string {
	t.Helper()
	tcp, udp := canBind("tcp4"), canBind("udp4")
	return pickPort(t, "TCP and UDP", func(addr string) bool { return tcp(addr) && udp(addr) })
}

// canBind says whether an address can be bound on network now.
func canBind(network string) func(addr string) bool {
	return func(addr string) bool {
		var c io.Closer
		var err error
		if strings.HasPrefix(network, "udp") {
			c, err = net.ListenPacket(network, addr)
		} else {
			c, err = net.Listen(network, addr)
		}
		if err == nil {
			c.Close()
		}
		return err == nil
	}
}

// The drills' ports: below Linux's default range of ephemeral ports
// (32768-60999), which every outgoing connection and every bind to
// port 0 takes from, so that a port handed to a process stays its own
// while the process is down (drills restart processes on their ports).
const drillPortLo, drillPortHi = 20000, 32000

var givenPorts = struct {
	mu sync.Mutex
	m  map[int]bool
}{m: map[int]bool{}}

// pickPort returns 127.0.0.1:P for a random port P of the drills' range
// that this process never handed out before and that free reports free.
func pickPort(t testing.TB, what string, free func(addr string) bool) string {
	t.Helper()
	for range 200 {
		p := drillPortLo + rand.IntN(drillPortHi-drillPortLo)
		givenPorts.mu.Lock()
		given := givenPorts.m[p]
		givenPorts.m[p] = true
		givenPorts.mu.Unlock()
		addr := fmt.Sprintf("127.0.0.1:%d", p)
		if !given && free(addr) {
			return addr
		}
	}
	t.Fatalf("no loopback port free for %s in 200 tries", what)
	return ""
}

// Proc is one coordinator process.
type Proc struct {
	ID       string
	Args     []string
	DataDir  string
	HTTPAddr string
	bin      string
	logPath  string

	mu  sync.Mutex
	cmd *exec.Cmd
	// exited receives the process's exit once.
	exited chan error
}

// NewProc describes a coordinator process; Start runs it.
func NewProc(t testing.TB, bin, id string, extra ...string) *Proc {
	p := newProc(t, bin, id)
	p.HTTPAddr = FreePort(t)
	p.Args = []string{"coordinator", "--node-id", id, "--data-dir", p.DataDir,
		"--http-addr", p.HTTPAddr, "--raft-addr", FreePort(t), "--log-level", "info"}
	// Faster than the defaults so drills run quickly; set
	// METALFLEET_DRILL_DEFAULT_TIMINGS=1 to drill the production defaults.
	if os.Getenv("METALFLEET_DRILL_DEFAULT_TIMINGS") == "" {
		p.Args = append(p.Args, "--raft-heartbeat-timeout", "300ms", "--raft-election-timeout", "300ms", "--raft-leader-lease", "150ms")
	}
	p.Args = append(p.Args, extra...)
	return p
}

// NewAgentProc describes a rack agent process with args after
// "rackagent --data-dir DIR"; Start runs it.
func NewAgentProc(t testing.TB, bin, id string, args ...string) *Proc {
	p := newProc(t, bin, id)
	p.Args = append([]string{"rackagent", "--name", id, "--data-dir", p.DataDir, "--log-level", "debug"}, args...)
	return p
}

func newProc(t testing.TB, bin, id string) *Proc {
	dir := t.TempDir()
	p := &Proc{ID: id, DataDir: filepath.Join(dir, "data"), bin: bin, logPath: filepath.Join(dir, id+".log")}
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			b, _ := os.ReadFile(p.logPath)
			t.Logf("--- log of %s ---\n%s", id, tail(string(b), 60))
		}
	})
	return p
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Start runs the process with its arguments (again, after a kill).
func (p *Proc) Start(t testing.TB) {
	t.Helper()
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(p.bin, p.Args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start %s: %v", p.ID, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait(); logf.Close() }()
	p.mu.Lock()
	p.cmd, p.exited = cmd, exited
	p.mu.Unlock()
}

// Kill sends SIGKILL to the process (if running) and reaps it.
func (p *Proc) Kill() {
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-exited
}

// Term sends SIGTERM and returns how long the process took to exit and
// its exit error.
func (p *Proc) Term(limit time.Duration) (time.Duration, error) {
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil {
		return 0, fmt.Errorf("%s is not running", p.ID)
	}
	start := time.Now()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		return time.Since(start), err
	case <-time.After(limit):
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-exited
		return time.Since(start), fmt.Errorf("%s did not exit within %s of SIGTERM", p.ID, limit)
	}
}

// Client returns an API client for the process.
func (p *Proc) Client(token string) *apiclient.Client { return apiclient.New(p.HTTPAddr, token) }

// WaitFor waits until cond holds or d passes (testkit.Eventually).
func WaitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	testkit.Eventually(t, d, what, cond)
}

// Metric reads one unlabelled sample from the Prometheus text at
// http://addr/metrics; ok is false if the page or the sample is missing.
func Metric(addr, name string) (v float64, ok bool) {
	resp, err := metricsClient.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(body), "\n") {
		if rest, found := strings.CutPrefix(line, name+" "); found {
			f, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			return f, err == nil
		}
	}
	return 0, false
}

var metricsClient = &http.Client{Timeout: 2 * time.Second}

// Ctx returns a context that ends after d.
func Ctx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
