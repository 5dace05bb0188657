package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/metalfleet/metalfleet/coordinator/apiclient"
	"github.com/metalfleet/metalfleet/coordinator/fsm"
	"github.com/metalfleet/metalfleet/ops/testkit"
	"github.com/metalfleet/metalfleet/proto"
)

const (
	envBench    = "METALFLEET_BENCH_TASKS"          // 1: run the benchmark
	envMachines = "METALFLEET_BENCH_TASKS_MACHINES" // machines, each running a burn-in (default 100)
	envRuns     = "METALFLEET_BENCH_TASKS_RUNS"     // runs, each from empty state (default 3)

	// Bounds of each phase of a run.
	setupLimit  = 4 * time.Minute // coordinator ready, machines discovered with their BMCs, managed, settled
	tasksLimit  = 5 * time.Minute // every burn-in ended and its machine powered off
	pollEvery   = 500 * time.Millisecond
	settledFor  = 3   // polls with the applied index unchanged before the tasks start
	clkTck      = 100 // USER_HZ: /proc/PID/stat counts CPU time in 1/100 s on Linux
	stopTimeout = 15 * time.Second
)

// burnin is the task each machine runs: short, every component (as the
// first rough figure in dev had it).
var burnin = map[string]string{"duration": "1s", "memory_percent": "1", "disk_bytes": "1MiB", "network": "true"}

func TestMain(m *testing.M) { testkit.Main(m) }

// TestBurninCost runs the benchmark: envRuns runs of envMachines burn-ins
// at once, each run from empty state, and logs each run's figures and
// their ranges.
func TestBurninCost(t *testing.T) {
	if os.Getenv(envBench) == "" {
		t.Skipf("set %s=1 to run (make bench-tasks)", envBench)
	}
	machines := envInt(t, envMachines, 100, 1, 2000)
	runs := envInt(t, envRuns, 3, 1, 20)
	bin, err := filepath.Abs(testkit.Binary(t))
	if err != nil {
		t.Fatal(err)
	}
	var results []*result
	for i := 1; i <= runs; i++ {
		t.Run(fmt.Sprintf("run%d", i), func(t *testing.T) {
			r := runOnce(t, bin, machines)
			r.log(t)
			results = append(results, r)
		})
	}
	if len(results) == 0 {
		t.Fatal("no run finished")
	}
	summarize(t, machines, results)
}

func envInt(t *testing.T, name string, def, lo, hi int) int {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < lo || n > hi {
		t.Fatalf("%s=%q: want a whole number from %d to %d", name, s, lo, hi)
	}
	return n
}

// result is one run's figures.
type result struct {
	machines int
	// The tasks: from the first POST to every task succeeded and every
	// machine powered off with its intents done.
	wall           time.Duration
	entries        uint64
	coordCPU       time.Duration
	devCPU         time.Duration // rack agent and simulated machines
	taskTimes      []time.Duration
	attempts       int // step starts beyond the first, over every task
	cheap, full    int // the waiting's API reads (done again in the baseline)
	load0, load1   string
	breakdown      map[string]int // Raft entries by command
	reportKinds    map[string]int // the agent reports in them by kind (a callback's by step)
	routes         map[string]int // API requests served during the tasks, by route
	baseRoutes     map[string]int
	reports        int // agent reports inside the entries
	entryBytes     int // the entries' data
	baseWall       time.Duration
	baseEntries    uint64
	baseCPU        time.Duration
	baseBreakdown  map[string]int
	settleEntries  uint64 // entries while waiting for the setup to settle
	setupTook      time.Duration
	postTook       time.Duration // the POSTs, all at once
	coordPeakRSSKB int
}

// cpuPerTask is the coordinator's CPU per task with the baseline, scaled
// to the tasks' wall time, taken off.
func (r *result) cpuPerTask() time.Duration {
	base := time.Duration(float64(r.baseCPU) * float64(r.wall) / float64(r.baseWall))
	return (r.coordCPU - base) / time.Duration(r.machines)
}

func (r *result) entriesPerTask() float64 {
	base := float64(r.baseEntries) * float64(r.wall) / float64(r.baseWall)
	return (float64(r.entries) - base) / float64(r.machines)
}

func (r *result) log(t *testing.T) {
	t.Logf("%d burn-ins at once (%s): all succeeded and powered off in %s (POSTs took %s); per task: created to ended p50 %s, max %s; step restarts %d",
		r.machines, paramsLine(), r.wall.Round(10*time.Millisecond), r.postTook.Round(time.Millisecond),
		pct(r.taskTimes, 50).Round(10*time.Millisecond), pct(r.taskTimes, 100).Round(10*time.Millisecond), r.attempts)
	t.Logf("coordinator: %d Raft entries (%.2f per task), %d agent reports in them, %d bytes of entries (%d per task); CPU %s (%s per task before the baseline)",
		r.entries, float64(r.entries)/float64(r.machines), r.reports, r.entryBytes, r.entryBytes/r.machines,
		r.coordCPU.Round(10*time.Millisecond), (r.coordCPU / time.Duration(r.machines)).Round(10*time.Microsecond))
	t.Logf("idle baseline over %s (the same API reads: %d cheap, %d full lists): %d Raft entries, coordinator CPU %s",
		r.baseWall.Round(10*time.Millisecond), r.cheap, r.full, r.baseEntries, r.baseCPU.Round(10*time.Millisecond))
	t.Logf("PER TASK, baseline subtracted: %.2f Raft entries, coordinator CPU %s", r.entriesPerTask(), r.cpuPerTask().Round(10*time.Microsecond))
	t.Logf("dev process (rack agent and %d simulated machines) CPU during the tasks: %s; coordinator peak RSS %d MiB; load average before %s, after %s",
		r.machines, r.devCPU.Round(10*time.Millisecond), r.coordPeakRSSKB/1024, r.load0, r.load1)
	t.Logf("Raft entries during the tasks, by command: %s", breakdownLine(r.breakdown))
	t.Logf("agent reports in them, by kind (callbacks by step): %s", breakdownLine(r.reportKinds))
	t.Logf("Raft entries during the baseline: %s", breakdownLine(r.baseBreakdown))
	t.Logf("API requests served during the tasks, by route (a /metrics read each snapshot): %s", breakdownLine(r.routes))
	t.Logf("API requests served during the baseline: %s", breakdownLine(r.baseRoutes))
	t.Logf("setup (discovery, BMCs, manage) took %s; %d entries while it settled", r.setupTook.Round(100*time.Millisecond), r.settleEntries)
}

func paramsLine() string {
	var kv []string
	for _, k := range slices.Sorted(maps.Keys(burnin)) {
		kv = append(kv, k+"="+burnin[k])
	}
	return "burnin " + strings.Join(kv, " ")
}

func breakdownLine(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int {
		if m[a] != m[b] {
			return m[b] - m[a]
		}
		return strings.Compare(a, b)
	})
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

func summarize(t *testing.T, machines int, rs []*result) {
	rng := func(f func(*result) float64, format string) string {
		lo, hi := f(rs[0]), f(rs[0])
		for _, r := range rs[1:] {
			lo, hi = min(lo, f(r)), max(hi, f(r))
		}
		return fmt.Sprintf(format+"-"+format, lo, hi)
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	t.Logf("SUMMARY of %d runs, %d burn-ins at once each (%s):", len(rs), machines, paramsLine())
	t.Logf("  Raft entries per task: %s (raw, before the baseline: %s)", rng(func(r *result) float64 { return r.entriesPerTask() }, "%.2f"),
		rng(func(r *result) float64 { return float64(r.entries) / float64(r.machines) }, "%.2f"))
	t.Logf("  coordinator CPU per task: %s ms (raw: %s ms)", rng(func(r *result) float64 { return ms(r.cpuPerTask()) }, "%.1f"),
		rng(func(r *result) float64 { return ms(r.coordCPU) / float64(r.machines) }, "%.1f"))
	t.Logf("  coordinator CPU for the %d tasks: %s s; idle baseline over the same wall: %s s, %s entries", machines,
		rng(func(r *result) float64 { return r.coordCPU.Seconds() }, "%.2f"),
		rng(func(r *result) float64 { return r.baseCPU.Seconds() * float64(r.wall) / float64(r.baseWall) }, "%.2f"),
		rng(func(r *result) float64 { return float64(r.baseEntries) }, "%.0f"))
	t.Logf("  wall time for the %d: %s s (a task created to ended: p50 %s s, max %s s)", machines,
		rng(func(r *result) float64 { return r.wall.Seconds() }, "%.1f"),
		rng(func(r *result) float64 { return pct(r.taskTimes, 50).Seconds() }, "%.1f"),
		rng(func(r *result) float64 { return pct(r.taskTimes, 100).Seconds() }, "%.1f"))
	t.Logf("  agent reports per task: %s; entry bytes per task: %s", rng(func(r *result) float64 { return float64(r.reports) / float64(r.machines) }, "%.1f"),
		rng(func(r *result) float64 { return float64(r.entryBytes) / float64(r.machines) }, "%.0f"))
	t.Logf("  dev process (rack agent and simulated machines) CPU during the tasks: %s s", rng(func(r *result) float64 { return r.devCPU.Seconds() }, "%.1f"))
	var loads []string
	for _, r := range rs {
		loads = append(loads, r.load0+" -> "+r.load1)
	}
	t.Logf("  load average (1, 5, 15 min) before -> after each run's tasks: %s", strings.Join(loads, "; "))
}

func pct(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s) - 1) * p / 100
	return s[i]
}

// runOnce starts a coordinator process and a dev process from empty
// state, readies envMachines manageable nodes, and measures their
// burn-ins at once, then as long again idle.
func runOnce(t *testing.T, bin string, machines int) *result {
	r := &result{machines: machines, breakdown: map[string]int{}, reportKinds: map[string]int{}, baseBreakdown: map[string]int{}}
	dir := t.TempDir()
	setupStart := time.Now()
	api, raftAddr := freePort(t), freePort(t)
	cdir := filepath.Join(dir, "coordinator")
	coord := startProc(t, bin, dir, "coordinator", "coordinator", "--node-id", "bench", "--data-dir", cdir,
		"--http-addr", api, "--raft-addr", raftAddr, "--bootstrap", "--log-level", "warn")
	var token string
	testkit.Until(t, 30*time.Second, "the coordinator's admin token and its leadership", func() error {
		if err := coord.alive(); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(cdir, "admin.token"))
		if err != nil {
			return err
		}
		token = strings.TrimSpace(string(b))
		st, err := apiclient.New(api, token).Status(ctx(t, 5*time.Second))
		if err != nil {
			return err
		}
		if st.RaftState != "Leader" && st.RaftState != "leader" {
			return fmt.Errorf("raft state %s", st.RaftState)
		}
		return nil
	})
	c := apiclient.New(api, token)

	// dev, as ops/bench/storm.sh runs it, with BMCs (no --until-done):
	// its working directory has no build/ramdisk, so it registers small
	// stand-ins as the discovery and task images.
	dev := startProc(t, bin, dir, "dev", "dev", "--coordinator", api, "--token", token, "--data-dir", filepath.Join(dir, "dev"),
		"--machines", strconv.Itoa(machines), "--power-on-spread", "1s", "--log-level", "error",
		"--agent-http-addr", "127.0.0.1:0", "--dhcp-addr", "127.0.0.1:0", "--tftp-addr", "127.0.0.1:0")

	var nodes []*proto.Node
	testkit.EventuallyEvery(t, setupLimit, 2*time.Second, fmt.Sprintf("%d nodes enrolled with their BMCs", machines), func() bool {
		if err := dev.alive(); err != nil {
			t.Fatal(err)
		}
		ns, _, err := c.Nodes(ctx(t, 20*time.Second), nil)
		if err != nil {
			return false
		}
		ready := 0
		for _, n := range ns {
			if n.ProvisionState == proto.StateEnrolled && n.BMC.Driver != "" && strings.HasPrefix(n.Name, "sim-") {
				ready++
			}
		}
		nodes = ns
		return ready == machines && len(ns) == machines
	})
	// manage: the agent verifies each BMC.
	forEach(t, nodes, 8, func(n *proto.Node) error {
		return retry503(t, "manage "+n.Name, func(cx context.Context) error {
			_, err := c.ProvisionWait(cx, n.UUID, "manage", 0)
			return err
		})
	})
	testkit.EventuallyEvery(t, setupLimit, time.Second, fmt.Sprintf("%d nodes manageable", machines), func() bool {
		ns, _, err := c.Nodes(ctx(t, 20*time.Second), nil)
		if err != nil {
			return false
		}
		ok := 0
		for _, n := range ns {
			if n.ProvisionState == proto.StateManageable && intentsDone(n) {
				ok++
			}
		}
		return ok == machines
	})
	// Settled: the applied index has not moved for settledFor polls.
	first := appliedIndex(t, c)
	last, same := first, 0
	testkit.EventuallyEvery(t, time.Minute, time.Second, "the coordinator's applied index to settle after the setup", func() bool {
		i := appliedIndex(t, c)
		if i == last {
			same++
		} else {
			last, same = i, 0
		}
		return same >= settledFor
	})
	r.settleEntries = last - first
	r.setupTook = time.Since(setupStart)

	// The tasks: every POST at once, then wait.
	before := snap(t, coord, dev, c)
	r.load0 = before.load
	postStart := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, len(nodes))
	for _, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := proto.TaskRequest{Kind: proto.TaskBurnin, Params: burnin, RequestID: "bench-" + n.UUID}
			if err := retry503(t, "burn-in on "+n.Name, func(cx context.Context) error {
				_, err := c.CreateTask(cx, n.UUID, req)
				return err
			}); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	r.postTook = time.Since(postStart)
	w := &waiter{t: t, c: c, machines: machines}
	w.untilDone(tasksLimit)
	after := snap(t, coord, dev, c)
	r.load1 = after.load
	r.cheap, r.full = w.cheap, w.full
	r.wall = after.at.Sub(before.at)
	r.entries = after.index - before.index
	r.coordCPU = after.coordCPU - before.coordCPU
	r.devCPU = after.devCPU - before.devCPU
	r.routes = routeDelta(before.routes, after.routes)

	// The baseline: as long again, the same reads, nothing else asked.
	w.replay(r.wall, r.cheap, r.full)
	base := snap(t, coord, dev, c)
	r.baseWall = base.at.Sub(after.at)
	r.baseEntries = base.index - after.index
	r.baseCPU = base.coordCPU - after.coordCPU
	r.baseRoutes = routeDelta(after.routes, base.routes)
	r.coordPeakRSSKB = vmHWM(coord.pid())

	// The tasks as recorded (read after the baseline: not measured).
	for _, n := range nodes {
		ts, err := c.Tasks(ctx(t, 20*time.Second), n.UUID)
		if err != nil {
			t.Fatalf("tasks of %s: %v", n.Name, err)
		}
		if len(ts) != 1 {
			t.Fatalf("%s has %d tasks, want 1", n.Name, len(ts))
		}
		tk := ts[0]
		if tk.State != proto.TaskSucceeded {
			t.Fatalf("%s: task %s is %s: %s", n.Name, tk.ID, tk.State, tk.Error)
		}
		r.taskTimes = append(r.taskTimes, tk.EndedAt.Sub(tk.CreatedAt))
		for _, s := range tk.Steps {
			if s.Attempts > 1 {
				r.attempts += s.Attempts - 1
			}
		}
	}

	// Stop both; then read what the entries were from raft.db.
	if err := dev.stop(); err != nil {
		t.Logf("dev: %v", err)
	}
	if err := coord.stop(); err != nil {
		t.Logf("coordinator: %v", err)
	}
	var err error
	r.reports, r.entryBytes, err = classify(filepath.Join(cdir, "raft.db"), before.index, after.index, r.breakdown, r.reportKinds)
	if err != nil {
		t.Fatalf("reading the entries of the tasks from raft.db: %v", err)
	}
	if _, _, err := classify(filepath.Join(cdir, "raft.db"), after.index, base.index, r.baseBreakdown, map[string]int{}); err != nil {
		t.Fatalf("reading the entries of the baseline from raft.db: %v", err)
	}
	return r
}

// snapshot is the counters at one moment.
type snapshot struct {
	at               time.Time
	index            uint64
	coordCPU, devCPU time.Duration
	load             string
	routes           map[string]float64 // API requests served so far, by method and route
}

func snap(t *testing.T, coord, dev *proc, c *apiclient.Client) snapshot {
	t.Helper()
	s := snapshot{index: appliedIndex(t, c), routes: apiRequests(t, c)}
	s.at = time.Now()
	var err error
	if s.coordCPU, err = coord.cpu(); err != nil {
		t.Fatal(err)
	}
	if s.devCPU, err = dev.cpu(); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		f := strings.Fields(string(b))
		if len(f) >= 3 {
			s.load = strings.Join(f[:3], " ")
		}
	}
	return s
}

// apiRequests reads metalfleet_api_requests_total from /metrics, summed
// over status codes.
func apiRequests(t *testing.T, c *apiclient.Client) map[string]float64 {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx(t, 10*time.Second), "GET", strings.TrimSuffix(c.Addrs()[0], "/")+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	out := map[string]float64{}
	for _, m := range fams["metalfleet_api_requests_total"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "route" {
				out[l.GetValue()] += m.GetCounter().GetValue()
			}
		}
	}
	return out
}

// routeDelta is after - before, route by route (routes with none left out).
func routeDelta(before, after map[string]float64) map[string]int {
	d := map[string]int{}
	for k, v := range after {
		if n := int(v - before[k]); n > 0 {
			d[k] = n
		}
	}
	return d
}

func appliedIndex(t *testing.T, c *apiclient.Client) uint64 {
	t.Helper()
	st, err := c.Status(ctx(t, 10*time.Second))
	if err != nil {
		t.Fatalf("GET /v1/status: %v", err)
	}
	return st.AppliedIndex
}

// waiter waits for the tasks with as few reads as it can (each read
// costs the coordinator CPU too), and counts them so that the baseline
// makes the same reads.
type waiter struct {
	t           *testing.T
	c           *apiclient.Client
	machines    int
	cheap, full int
}

var servicingOne = &apiclient.Query{Values: url.Values{"provision_state": {string(proto.StateServicing)}, "limit": {"1"}}}

// cheapRead asks whether any node is still servicing (one node at most in
// the answer).
func (w *waiter) cheapRead() (bool, error) {
	w.cheap++
	ns, _, err := w.c.Nodes(ctx(w.t, 20*time.Second), servicingOne)
	return len(ns) > 0, err
}

// fullRead reads every node; done when every one is manageable, off, with
// no task and every intent done. A failed node fails the benchmark.
func (w *waiter) fullRead() (bool, string, error) {
	w.full++
	ns, _, err := w.c.Nodes(ctx(w.t, 20*time.Second), nil)
	if err != nil {
		return false, "", err
	}
	for _, n := range ns {
		if n.ProvisionState == proto.StateFailed {
			w.t.Fatalf("node %s failed: %s", n.Name, n.LastError)
		}
	}
	for _, n := range ns {
		if n.ProvisionState != proto.StateManageable || n.Task != "" || n.PowerState != proto.PowerOff || !intentsDone(n) {
			return false, fmt.Sprintf("node %s is %s, power %s, task %q, intents done %v", n.Name, n.ProvisionState, n.PowerState, n.Task, intentsDone(n)), nil
		}
	}
	return len(ns) == w.machines, "", nil
}

func (w *waiter) untilDone(limit time.Duration) {
	deadline := time.Now().Add(limit)
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	why := "no read yet"
	for ; ; <-tick.C {
		if time.Now().After(deadline) {
			w.t.Fatalf("waited %s for every burn-in to end with its machine off: %s", limit, why)
		}
		busy, err := w.cheapRead()
		if err != nil {
			why = err.Error()
			continue
		}
		if busy {
			why = "nodes still servicing"
			continue
		}
		done, what, err := w.fullRead()
		switch {
		case err != nil:
			why = err.Error()
		case !done:
			why = what
		default:
			return
		}
	}
}

// replay makes cheap and full reads (as many as the wait made) over d.
func (w *waiter) replay(d time.Duration, cheap, full int) {
	end := time.Now().Add(d)
	n := max(cheap, 1)
	every := d / time.Duration(n)
	fullEvery := cheap / max(full, 1)
	fulls := 0
	tick := time.NewTicker(every)
	defer tick.Stop()
	for i := 0; i < cheap; i++ {
		<-tick.C
		_, _ = w.cheapRead()
		if fulls < full && (i+1)%max(fullEvery, 1) == 0 {
			fulls++
			_, _, _ = w.fullRead()
		}
	}
	for ; fulls < full; fulls++ {
		_, _, _ = w.fullRead()
	}
	if left := time.Until(end); left > 0 {
		<-time.After(left) // the baseline's wall time is the tasks' (a measured span, not a synchronisation)
	}
}

func intentsDone(n *proto.Node) bool {
	for _, in := range n.Intents {
		if !in.Done {
			return false
		}
	}
	return true
}

// forEach runs fn for every node, par at a time; the first error fails t.
func forEach(t *testing.T, nodes []*proto.Node, par int, fn func(*proto.Node) error) {
	t.Helper()
	sem := make(chan struct{}, par)
	errs := make(chan error, len(nodes))
	var wg sync.WaitGroup
	for _, n := range nodes {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := fn(n); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// retry503 calls fn until it succeeds, 30 s at most, while the answer is
// a 503 (no leader yet, or the rack's agent has not called this leader).
func retry503(t *testing.T, what string, fn func(context.Context) error) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := fn(ctx(t, 20*time.Second))
		var ae *apiclient.Error
		if err == nil {
			return nil
		}
		if !errors.As(err, &ae) || ae.Status != http.StatusServiceUnavailable || time.Now().After(deadline) {
			return fmt.Errorf("%s: %w", what, err)
		}
		<-time.After(200 * time.Millisecond) // a retry's pause, not a synchronisation
	}
}

func ctx(t *testing.T, d time.Duration) context.Context {
	c, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return c
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// proc is a process of the binary that the test started; it is stopped
// (SIGTERM, then SIGKILL) by pid when the test ends.
type proc struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
	once    sync.Once
	stopErr error
}

func startProc(t *testing.T, bin, dir, name string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, logPath: filepath.Join(dir, name+".log"), exited: make(chan struct{})}
	logf, err := os.Create(p.logPath)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Dir = dir
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	if err := p.cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		logf.Close()
		close(p.exited)
	}()
	t.Cleanup(func() {
		_ = p.stop()
		if t.Failed() {
			b, _ := os.ReadFile(p.logPath)
			lines := strings.Split(string(b), "\n")
			if len(lines) > 40 {
				lines = lines[len(lines)-40:]
			}
			t.Logf("--- %s's log, last lines ---\n%s", name, strings.Join(lines, "\n"))
		}
	})
	return p
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// alive is nil while the process runs.
func (p *proc) alive() error {
	select {
	case <-p.exited:
		b, _ := os.ReadFile(p.logPath)
		return fmt.Errorf("%s exited (%v); its log:\n%s", p.name, p.waitErr, b)
	default:
		return nil
	}
}

// stop sends SIGTERM, then SIGKILL after stopTimeout, and reaps it.
func (p *proc) stop() error {
	p.once.Do(func() {
		select {
		case <-p.exited:
			return
		default:
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(stopTimeout):
			_ = p.cmd.Process.Signal(syscall.SIGKILL)
			<-p.exited
			p.stopErr = fmt.Errorf("%s did not stop within %s of SIGTERM (killed)", p.name, stopTimeout)
		}
	})
	return p.stopErr
}

// cpu is the process's user and system CPU time so far (all threads),
// from /proc/PID/stat.
func (p *proc) cpu() (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.pid()))
	if err != nil {
		return 0, fmt.Errorf("%s: %w", p.name, err)
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("%s: /proc/%d/stat: no ')'", p.name, p.pid())
	}
	f := strings.Fields(s[i+1:])
	// After the command name: state is field 3, utime 14 and stime 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("%s: /proc/%d/stat: %d fields", p.name, p.pid(), len(f))
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("%s: /proc/%d/stat: utime %q stime %q", p.name, p.pid(), f[11], f[12])
	}
	return time.Duration(ut+st) * time.Second / clkTck, nil
}

// vmHWM is the process's peak resident set in KiB (0 if unknown).
func vmHWM(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return n
		}
	}
	return 0
}

// classify reads the Raft entries (from, to] of a stopped coordinator's
// raft.db into by (by command type) and the agent reports the entries
// carry into byReport (by report kind, and a callback's step). It returns
// how many agent reports the entries held and their data's size.
func classify(path string, from, to uint64, by, byReport map[string]int) (reports, bytes int, err error) {
	store, err := raftboltdb.New(raftboltdb.Options{Path: path})
	if err != nil {
		return 0, 0, err
	}
	defer store.Close()
	for i := from + 1; i <= to; i++ {
		var l raft.Log
		if err := store.GetLog(i, &l); err != nil {
			return reports, bytes, fmt.Errorf("entry %d: %w", i, err)
		}
		bytes += len(l.Data)
		if l.Type != raft.LogCommand {
			by["raft "+l.Type.String()]++
			continue
		}
		if len(l.Data) == 0 {
			by["empty"]++
			continue
		}
		typ := fsm.Type(l.Data[0])
		name := typeName(typ)
		if typ == fsm.TypeAgentReports {
			var ar fsm.AgentReports
			if err := json.Unmarshal(l.Data[1:], &ar); err != nil {
				return reports, bytes, fmt.Errorf("entry %d: %w", i, err)
			}
			reports += len(ar.Reports)
			for _, rep := range ar.Reports {
				k := string(rep.Kind)
				if rep.Kind == proto.ReportCallback && rep.Step != "" {
					k += " " + rep.Step
				}
				byReport[k]++
			}
		}
		by[name]++
	}
	return reports, bytes, nil
}

func typeName(t fsm.Type) string {
	if n, ok := typeNames[t]; ok {
		return n
	}
	return fmt.Sprintf("type %d", t)
}

var typeNames = map[fsm.Type]string{
	fsm.TypeNodeCreate: "NodeCreate", fsm.TypeNodeUpdate: "NodeUpdate", fsm.TypeNodeSetEnrolled: "NodeSetEnrolled",
	fsm.TypeNodeProvision: "NodeProvision", fsm.TypeSettingsUpdate: "SettingsUpdate", fsm.TypeNoop: "Noop",
	fsm.TypeAgentReports: "AgentReports", fsm.TypeLeasesExpire: "LeasesExpire", fsm.TypeNodeIntent: "NodeIntent",
	fsm.TypeIntentsExpire: "IntentsExpire", fsm.TypeTaskCreate: "TaskCreate", fsm.TypeTaskAbort: "TaskAbort",
	fsm.TypeTaskTimeout: "TaskTimeout", fsm.TypeTaskConsoleLog: "TaskConsoleLog", fsm.TypeServerPut: "ServerPut",
}
