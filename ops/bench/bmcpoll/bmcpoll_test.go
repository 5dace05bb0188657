package bmcpoll

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/proto"
	"github.com/metalfleet/metalfleet/rackagent/bmc"
	"github.com/metalfleet/metalfleet/rackagent/bmc/ipmisim"
)

const (
	envBench = "METALFLEET_BENCH_BMC"  // 1: run the benchmark
	envFarm  = "METALFLEET_BMC_FARM"   // N: this process is a farm of N BMCs
	envBMCs  = "METALFLEET_BENCH_BMCS" // how many BMCs (default 1000)
	user     = "admin"
	password = "bench-pw"

	concurrency   = 64               // polls in flight, like an agent's limit
	pollFor       = 15 * time.Second // steady-state polling time
	maxPolls      = 300_000          // and count bound
	toolWorkers   = 8                // ipmitool processes at once
	toolFor       = 10 * time.Second
	maxToolPolls  = 2_000
	perCallN      = 300 // sequential calls per way, one BMC
	perCallToolN  = 60
	perCallBudget = 15 * time.Second // per way
)

func TestMain(m *testing.M) {
	if n := os.Getenv(envFarm); n != "" {
		os.Exit(runFarm(n))
	}
	os.Exit(m.Run())
}

// runFarm is the child process: N simulated BMCs on loopback, their ports
// on stdout as one JSON line, until stdin closes.
func runFarm(arg string) int {
	n, err := strconv.Atoi(arg)
	if err != nil || n < 1 {
		fmt.Fprintf(os.Stderr, "%s=%q: want a count\n", envFarm, arg)
		return 2
	}
	ports := make([]int, 0, n)
	var sims []*ipmisim.BMC
	for i := range n {
		s, err := ipmisim.New(ipmisim.Config{Username: user, Password: password, Power: ipmisim.NewMemPower(i%2 == 0)})
		if err == nil {
			err = s.Start()
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "bmc %d: %v\n", i, err)
			return 1
		}
		sims = append(sims, s)
		ports = append(ports, s.Port())
	}
	if err := json.NewEncoder(os.Stdout).Encode(ports); err != nil {
		return 1
	}
	_, _ = io.Copy(io.Discard, os.Stdin)
	for _, s := range sims {
		_ = s.Close()
	}
	return 0
}

// startFarm runs a farm of n BMCs in a child process (so the poller's
// CPU is measured apart from the BMCs') and returns their ports.
func startFarm(t *testing.T, n int) []int {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envFarm+"="+strconv.Itoa(n))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() {
		_ = stdin.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(pid, syscall.SIGKILL)
			<-done
		}
	})
	line, err := bufio.NewReader(stdout).ReadBytes('\n')
	if err != nil {
		t.Fatalf("BMC farm: %v", err)
	}
	var ports []int
	if err := json.Unmarshal(line, &ports); err != nil || len(ports) != n {
		t.Fatalf("BMC farm answered %q: %v", line, err)
	}
	return ports
}

// cpu is this process's CPU time (user+system); children is that of its
// ended children.
func cpu(who int) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(who, &ru); err != nil {
		panic(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func selfCPU() time.Duration     { return cpu(syscall.RUSAGE_SELF) }
func childrenCPU() time.Duration { return cpu(syscall.RUSAGE_CHILDREN) }

func open(t testing.TB, port int, iface string) bmc.Driver {
	d, err := bmc.Open(bmc.Config{Driver: proto.DriverIPMI, Address: "127.0.0.1", Port: port,
		Username: user, Password: password, Interface: iface})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func ipmitool(ctx context.Context, port int) error {
	cmd := exec.CommandContext(ctx, "ipmitool", "-I", "lanplus", "-C", "3", "-H", "127.0.0.1",
		"-p", strconv.Itoa(port), "-U", user, "-E", "chassis", "power", "status")
	cmd.Env = append(os.Environ(), "IPMI_PASSWORD="+password)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("ipmitool: %v: %s", err, out)
	}
	if !strings.Contains(string(out), "Chassis Power is") {
		return fmt.Errorf("ipmitool said %q", out)
	}
	return nil
}

// way is one way of reading a BMC's power, measured call by call.
type way struct {
	name string
	n    int
	poll func(ctx context.Context) error
	done func()
}

type perCall struct {
	name     string
	n        int
	p50, p99 time.Duration
	cpu      time.Duration // per call: this process and its children
}

func measure(t *testing.T, w way) perCall {
	t.Helper()
	defer func() {
		if w.done != nil {
			w.done()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), perCallBudget)
	defer cancel()
	if err := w.poll(ctx); err != nil { // warm: session open
		t.Fatalf("%s: %v", w.name, err)
	}
	lat := make([]time.Duration, 0, w.n)
	c0, k0 := selfCPU(), childrenCPU()
	for range w.n {
		if ctx.Err() != nil {
			break
		}
		start := time.Now()
		if err := w.poll(ctx); err != nil {
			t.Fatalf("%s: %v", w.name, err)
		}
		lat = append(lat, time.Since(start))
	}
	used := selfCPU() - c0 + childrenCPU() - k0
	slices.Sort(lat)
	return perCall{name: w.name, n: len(lat), p50: lat[len(lat)/2], p99: lat[len(lat)*99/100], cpu: used / time.Duration(len(lat))}
}

func TestBMCPoll(t *testing.T) {
	if os.Getenv(envBench) == "" {
		t.Skipf("benchmark: set %s=1 (make bench-bmc)", envBench)
	}
	if _, err := exec.LookPath("ipmitool"); err != nil {
		t.Skip("ipmitool is not installed (Debian package ipmitool)")
	}
	n := 1000
	if s := os.Getenv(envBMCs); s != "" {
		if v, err := strconv.Atoi(s); err == nil && v > 0 {
			n = v
		}
	}
	start := time.Now()
	ports := startFarm(t, n)
	t.Logf("farm: %d simulated BMCs up in %v", n, time.Since(start).Round(time.Millisecond))

	// 1. Per call against one BMC: the ways the driver could be built.
	one := ports[0]
	reuse := open(t, one, proto.IPMILanplus)
	lan := open(t, one, proto.IPMILan)
	ways := []way{
		{name: "go-ipmi lanplus, session reused (the driver)", n: perCallN,
			poll: func(ctx context.Context) error { _, err := reuse.PowerState(ctx); return err },
			done: func() { _ = reuse.Close() }},
		{name: "go-ipmi lanplus, new session per call", n: perCallN / 3,
			poll: func(ctx context.Context) error {
				d := open(t, one, proto.IPMILanplus)
				defer d.Close()
				_, err := d.PowerState(ctx)
				return err
			}},
		{name: "goipmi lan (v1.5), session reused", n: perCallN,
			poll: func(ctx context.Context) error { _, err := lan.PowerState(ctx); return err },
			done: func() { _ = lan.Close() }},
		{name: "ipmitool -I lanplus -C 3 process per call", n: perCallToolN,
			poll: func(ctx context.Context) error { return ipmitool(ctx, one) }},
	}
	var calls []perCall
	for _, w := range ways {
		calls = append(calls, measure(t, w))
	}
	t.Logf("per call, sequential, one BMC:")
	for _, c := range calls {
		t.Logf("  %-48s n=%-4d p50 %7.2f ms  p99 %7.2f ms  CPU %7.3f ms/call", c.name, c.n,
			ms(c.p50), ms(c.p99), ms(c.cpu))
	}

	// 2. One poller, 1,000 BMCs, sessions reused, 64 in flight.
	drivers := make([]bmc.Driver, n)
	for i, p := range ports {
		drivers[i] = open(t, p, proto.IPMILanplus)
	}
	defer func() {
		for _, d := range drivers {
			_ = d.Close()
		}
	}()
	queue := make(chan int, n)
	for i := range n {
		queue <- i
	}
	poll := func(deadline time.Time, limit int64) (polls, errs int64, elapsed, used time.Duration, firstErr error) {
		var cnt, bad atomic.Int64
		var once sync.Once
		c0 := selfCPU()
		t0 := time.Now()
		var wg sync.WaitGroup
		for range concurrency {
			wg.Go(func() {
				for time.Now().Before(deadline) && cnt.Load() < limit {
					i := <-queue
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					_, err := drivers[i].PowerState(ctx)
					cancel()
					queue <- i
					cnt.Add(1)
					if err != nil {
						bad.Add(1)
						once.Do(func() { firstErr = fmt.Errorf("bmc %d: %w", i, err) })
					}
				}
			})
		}
		wg.Wait()
		return cnt.Load(), bad.Load(), time.Since(t0), selfCPU() - c0, firstErr
	}
	// Every BMC once: sessions open (cipher suite asked, RAKP, privilege).
	connPolls, connErrs, connTime, connCPU, err := poll(time.Now().Add(60*time.Second), int64(n))
	if connErrs > 0 || connPolls < int64(n) {
		t.Fatalf("opening sessions: %d polls, %d errors (first: %v)", connPolls, connErrs, err)
	}
	t.Logf("sessions: %d opened (with a first poll) in %v, CPU %.3f ms each", n, connTime.Round(time.Millisecond), ms(connCPU)/float64(n))
	polls, errs, elapsed, used, err := poll(time.Now().Add(pollFor), maxPolls)
	if errs > 0 {
		t.Errorf("steady state: %d of %d polls failed (first: %v)", errs, polls, err)
	}
	rate := float64(polls) / elapsed.Seconds()
	perPoll := used / time.Duration(polls)
	t.Logf("go-ipmi, sessions reused: %d polls of %d BMCs in %v: %.0f polls/s, poller CPU %.1f%% of a core, %.1f µs/poll (%.0f polls/s per core)",
		polls, n, elapsed.Round(time.Millisecond), rate, 100*used.Seconds()/elapsed.Seconds(), us(perPoll), 1/perPoll.Seconds())

	// 3. An ipmitool process per poll.
	var tcnt, tbad atomic.Int64
	var tErr error
	var terrOnce sync.Once
	tdeadline := time.Now().Add(toolFor)
	c0, k0 := selfCPU(), childrenCPU()
	t0 := time.Now()
	var wg sync.WaitGroup
	var next atomic.Int64
	for range toolWorkers {
		wg.Go(func() {
			for time.Now().Before(tdeadline) && tcnt.Load() < maxToolPolls {
				i := int(next.Add(1)) % n
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				err := ipmitool(ctx, ports[i])
				cancel()
				tcnt.Add(1)
				if err != nil {
					tbad.Add(1)
					terrOnce.Do(func() { tErr = err })
				}
			}
		})
	}
	wg.Wait()
	telapsed := time.Since(t0)
	tself, tchild := selfCPU()-c0, childrenCPU()-k0
	if tbad.Load() > 0 {
		t.Errorf("ipmitool: %d of %d polls failed (first: %v)", tbad.Load(), tcnt.Load(), tErr)
	}
	tpolls := tcnt.Load()
	tPer := (tself + tchild) / time.Duration(tpolls)
	trate := float64(tpolls) / telapsed.Seconds()
	t.Logf("ipmitool process per poll (%d at once): %d polls in %v: %.0f polls/s, CPU %.2f ms/poll (ipmitool %.2f, spawning %.2f) (%.0f polls/s per core)",
		toolWorkers, tpolls, telapsed.Round(time.Millisecond), trate, ms(tPer), ms(tchild/time.Duration(tpolls)), ms(tself/time.Duration(tpolls)), 1/tPer.Seconds())

	ratio := tPer.Seconds() / perPoll.Seconds()
	verdict := "meets"
	if ratio < 50 {
		verdict = "MISSES"
	}
	t.Logf("RESULT bmcs=%d go-ipmi %.0f polls/s (%.1f µs CPU/poll, %.0f/s per core) | ipmitool %.0f polls/s (%.2f ms CPU/poll, %.0f/s per core) | %.0fx ipmitool per core: %s the 50x goal",
		n, rate, us(perPoll), 1/perPoll.Seconds(), trate, ms(tPer), 1/tPer.Seconds(), ratio, verdict)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
