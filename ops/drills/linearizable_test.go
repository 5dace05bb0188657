package drills

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/metalfleet/metalfleet/proto"
)

// The register the linearizability drill writes and reads: the cpus of
// a few flavors, one register per flavor. A write sets a value no other
// write sets; a default (consistent) read returns the current one.
const linKeys = 4

// linIn is an operation's input: a write of Value to Key, or a read of Key.
type linIn struct {
	Write bool
	Key   int
	Value int
}

// linOut is a read's answer.
type linOut struct{ Value int }

// linMeta is what the visualization shows besides the value.
type linMeta struct {
	Server string
	Index  uint64
	Note   string
}

var registerModel = porcupine.Model{
	Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
		by := make([][]porcupine.Operation, linKeys)
		for _, op := range h {
			k := op.Input.(linIn).Key
			by[k] = append(by[k], op)
		}
		return by
	},
	Init: func() any { return 0 },
	Step: func(state, input, output any) (bool, any) {
		in := input.(linIn)
		if in.Write {
			return true, in.Value
		}
		return output.(linOut).Value == state.(int), state
	},
	DescribeOperation: func(input, output any) string {
		in := input.(linIn)
		if in.Write {
			return fmt.Sprintf("put(f%d, %d)", in.Key, in.Value)
		}
		return fmt.Sprintf("get(f%d) -> %d", in.Key, output.(linOut).Value)
	},
	DescribeState: func(state any) string { return strconv.Itoa(state.(int)) },
	DescribeOperationMetadata: func(info any) string {
		m, _ := info.(linMeta)
		return fmt.Sprintf("via %s, index %d %s", m.Server, m.Index, m.Note)
	},
}

// linClient sends the drill's requests to one server and sorts the
// answers: ok, not applied (a 4xx, or a request never sent), or unknown
// (5xx, a timeout, a cut connection).
type linClient struct {
	http  *http.Client
	token string
}

type outcome int

const (
	outOK outcome = iota
	outNotApplied
	outUnknown
)

func (c *linClient) do(ctx context.Context, method, addr, path string, body any, out any) (outcome, uint64, string) {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+addr+path, rd)
	if err != nil {
		return outNotApplied, 0, err.Error()
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return outNotApplied, 0, "not sent: " + err.Error()
		}
		return outUnknown, 0, err.Error()
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return outUnknown, 0, err.Error()
	}
	idx, _ := strconv.ParseUint(resp.Header.Get(proto.IndexHeader), 10, 64)
	switch {
	case resp.StatusCode >= 500:
		return outUnknown, 0, fmt.Sprintf("%d %s", resp.StatusCode, bytes.TrimSpace(b))
	case resp.StatusCode >= 400:
		return outNotApplied, 0, fmt.Sprintf("%d %s", resp.StatusCode, bytes.TrimSpace(b))
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return outUnknown, 0, "bad body: " + err.Error()
		}
	}
	return outOK, idx, ""
}

// linHistory collects the operations of all clients.
type linHistory struct {
	start time.Time
	mu    sync.Mutex
	ops   []porcupine.Operation
	// counts by kind of answer, for the log
	reads, writes, unknown, notApplied int
	errs                               map[string]int
	// refused lists 4xx answers: every request of the drill is valid
	// (a known token, an existing flavor, a good body), so each is a
	// server answering from state older than it should.
	refused []string
}

func (h *linHistory) now() int64 { return int64(time.Since(h.start)) }

func (h *linHistory) add(op porcupine.Operation) {
	h.mu.Lock()
	h.ops = append(h.ops, op)
	h.mu.Unlock()
}

func (h *linHistory) count(f func()) {
	h.mu.Lock()
	f()
	h.mu.Unlock()
}

// linDrill is one run's parameters.
type linDrill struct {
	Kills    int           // leader SIGKILLs
	Duration time.Duration // upper bound of the whole run
	Clients  int
}

// TestLinearizableUnderLeaderKills records a history of concurrent writes
// and default (consistent) reads through random servers of three real
// coordinator processes while the leader is SIGKILLed and restarted, and
// checks it against a register model with porcupine. Writes whose outcome
// is unknown (5xx, timeout, cut connection) may have been applied: they
// stay open to the end of the history. A write answered 4xx must not have
// been applied, so it is left out: a read that returns its value fails the
// check. It also checks that no read answers with an index below that of a
// write acknowledged before the read began, and measures how soon after
// each kill a consistent read is served again.
//
// The short run is part of make test; make drill-linearizable runs a long
// one (METALFLEET_DRILL_KILLS sets the number of rounds; one in three
// restarts the whole cluster).
func TestLinearizableUnderLeaderKills(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three coordinator processes")
	}
	d := linDrill{Kills: 5, Duration: 3 * time.Minute, Clients: 6}
	if s := os.Getenv("METALFLEET_DRILL_KILLS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 1000 {
			t.Fatalf("METALFLEET_DRILL_KILLS=%q: want 1..1000", s)
		}
		d.Kills, d.Duration = n, time.Duration(n)*20*time.Second+time.Minute
	}
	runLinearizable(t, d)
}

func runLinearizable(t *testing.T, d linDrill) {
	bin := Binary(t)
	procs, token := cluster3(t, bin)
	addrs := make([]string, len(procs))
	for i, p := range procs {
		addrs[i] = p.HTTPAddr
	}
	setup := &linClient{http: &http.Client{Timeout: 10 * time.Second}, token: token}
	for k := 0; k < linKeys; k++ {
		o, _, msg := setup.do(Ctx(t, 15*time.Second), http.MethodPost, addrs[0], "/v1/flavors", proto.Flavor{Name: fmt.Sprintf("f%d", k)}, nil)
		if o != outOK {
			t.Fatalf("create flavor f%d: %s", k, msg)
		}
	}

	h := &linHistory{start: time.Now(), errs: map[string]int{}}
	ctx, cancel := context.WithTimeout(context.Background(), d.Duration)
	defer cancel()
	var (
		next atomic.Int64 // unique write values
		wg   sync.WaitGroup
	)
	// However the test ends (a t.Fatal in the killer included), the
	// clients stop before it returns.
	defer func() { cancel(); wg.Wait() }()
	// client runs one client until ctx ends: writes (one in two, unless
	// readOnly) and reads of random flavors through random servers.
	const maxOpsPerClient = 50000
	client := func(ctx context.Context, c int, readOnly bool) {
		defer wg.Done()
		cl := &linClient{http: &http.Client{Timeout: 8 * time.Second}, token: token}
		rng := rand.New(rand.NewPCG(uint64(c), 7))
		for i := 0; i < maxOpsPerClient && ctx.Err() == nil; i++ {
			srv := rng.IntN(len(addrs))
			key := rng.IntN(linKeys)
			path := fmt.Sprintf("/v1/flavors/f%d", key)
			// Each op gets its own deadline so the end of the run does
			// not cut requests into unknown outcomes.
			octx, ocancel := context.WithTimeout(context.Background(), 9*time.Second)
			var o outcome
			var msg string
			if !readOnly && rng.IntN(2) == 0 {
				v := int(next.Add(1))
				in := linIn{Write: true, Key: key, Value: v}
				call := h.now()
				var idx uint64
				o, idx, msg = cl.do(octx, http.MethodPut, addrs[srv], path, proto.Flavor{Name: fmt.Sprintf("f%d", key), CPUs: v}, nil)
				ret := h.now()
				switch o {
				case outOK:
					h.add(porcupine.Operation{ClientId: c, Input: in, Call: call, Output: linOut{}, Return: ret, Metadata: linMeta{Server: procs[srv].ID, Index: idx}})
					h.count(func() { h.writes++ })
				case outUnknown:
					// Possibly applied, at any time after the call.
					h.add(porcupine.Operation{ClientId: c, Input: in, Call: call, Output: linOut{}, Return: -1, Metadata: linMeta{Server: procs[srv].ID, Note: "unknown: " + trunc(msg, 80)}})
					h.count(func() { h.unknown++; h.errs["write: "+errClass(msg)]++ })
				default:
					h.count(func() { h.notApplied++; h.errs["write: "+errClass(msg)]++ })
				}
				if is4xx(msg) {
					h.count(func() { h.refused = append(h.refused, "write: "+errClass(msg)) })
				}
			} else {
				var f proto.Flavor
				call := h.now()
				var idx uint64
				o, idx, msg = cl.do(octx, http.MethodGet, addrs[srv], path, nil, &f)
				ret := h.now()
				if o == outOK {
					h.add(porcupine.Operation{ClientId: c, Input: linIn{Key: key}, Call: call, Output: linOut{Value: f.CPUs}, Return: ret, Metadata: linMeta{Server: procs[srv].ID, Index: idx}})
					h.count(func() { h.reads++ })
				} else {
					h.count(func() { h.errs["read: "+errClass(msg)]++ })
				}
				if is4xx(msg) {
					h.count(func() { h.refused = append(h.refused, "read: "+errClass(msg)) })
				}
			}
			ocancel()
			if o != outOK {
				// A server that is down refuses at once: pace the retry.
				select {
				case <-ctx.Done():
				case <-time.After(2 * time.Millisecond):
				}
			}
		}
	}
	for c := 0; c < d.Clients; c++ {
		wg.Add(1)
		go client(ctx, c, false)
	}
	// burst adds readers for a few seconds after a kill, so that many
	// consistent reads arrive while a new leader takes over.
	const burstReaders = 8
	burst := func(round int) {
		bctx, bcancel := context.WithTimeout(ctx, 3*time.Second)
		var bwg sync.WaitGroup
		for j := 0; j < burstReaders; j++ {
			wg.Add(1)
			bwg.Add(1)
			go func() { defer bwg.Done(); client(bctx, d.Clients+j, true) }()
		}
		go func() { bwg.Wait(); bcancel() }()
	}

	// The killer: SIGKILL the leader, time the first consistent read
	// served after it, restart the killed server, wait until all three
	// are voters again, repeat. Every third round (the second, the
	// fifth, ...) SIGKILLs all three and restarts them instead: a
	// restarted leader must not answer from its snapshot before it has
	// replayed the log its predecessors committed.
	// First consistent read after a kill and how long the new leader
	// held reads for its barrier, per kind of kill.
	var recovery, restartRecovery, barriers, restartBarriers []time.Duration
	killErr := func() error {
		prober := &linClient{http: &http.Client{Timeout: 8 * time.Second}, token: token}
		for k := 0; k < d.Kills; k++ {
			// Let the clients run against a whole cluster for a while.
			select {
			case <-ctx.Done():
				return fmt.Errorf("run ended after %d of %d kills", k, d.Kills)
			case <-time.After(time.Duration(1500+rand.IntN(1500)) * time.Millisecond):
			}
			all := k%3 == 1
			li := leaderOf(t, procs, token)
			burst(k)
			killed := time.Now()
			if all {
				for _, p := range procs {
					p.Kill()
				}
				for _, p := range procs {
					p.Start(t)
				}
			} else {
				procs[li].Kill()
			}
			// The first consistent read served after the kill, through
			// a survivor (forwarded to the new leader or served by it).
			// A refused connection fails at once: pace the tries.
			served := func() bool {
				pctx, pcancel := context.WithTimeout(ctx, 30*time.Second)
				defer pcancel()
				pace := time.NewTicker(5 * time.Millisecond)
				defer pace.Stop()
				for i := 0; ; i++ {
					srv := (li + 1 + i%2) % 3
					var f proto.Flavor
					o, _, _ := prober.do(pctx, http.MethodGet, addrs[srv], "/v1/flavors/f0", nil, &f)
					if o == outOK {
						return true
					}
					select {
					case <-pctx.Done():
						return false
					case <-pace.C:
					}
				}
			}()
			if !served && ctx.Err() != nil {
				return fmt.Errorf("run ended during kill %d of %d", k+1, d.Kills)
			}
			if !served {
				return fmt.Errorf("no consistent read served within 30s of killing %s", procs[li].ID)
			}
			took := time.Since(killed)
			// How much of that the new leader held reads for its barrier.
			var held time.Duration
			if v, ok := Metric(procs[leaderOf(t, procs, token)].HTTPAddr, "metalfleet_leader_barrier_seconds"); ok {
				held = time.Duration(v * float64(time.Second))
				if all {
					restartBarriers = append(restartBarriers, held)
				} else {
					barriers = append(barriers, held)
				}
			}
			if all {
				restartRecovery = append(restartRecovery, took)
				t.Logf("kill %d: all three SIGKILLed and restarted; first consistent read served %s later (barrier %s)", k+1, took.Round(time.Millisecond), held.Round(time.Microsecond))
			} else {
				recovery = append(recovery, took)
				t.Logf("kill %d: leader %s SIGKILLed; first consistent read served %s later (barrier %s)", k+1, procs[li].ID, took.Round(time.Millisecond), held.Round(time.Microsecond))
				procs[li].Start(t)
			}
			if err := waitVoters(ctx, procs, token, 30*time.Second); err != nil {
				return fmt.Errorf("after kill %d: %w", k+1, err)
			}
		}
		return nil
	}()
	// A few more seconds of traffic on the healed cluster, then stop.
	if killErr == nil {
		select {
		case <-ctx.Done():
		case <-time.After(2 * time.Second):
		}
	}
	cancel()
	wg.Wait()
	if killErr != nil {
		t.Fatalf("drill: %v", killErr)
	}

	end := h.now() + 1
	for i := range h.ops {
		if h.ops[i].Return < 0 {
			h.ops[i].Return = end
		}
	}
	t.Logf("history: %d acknowledged writes, %d reads, %d writes of unknown outcome, %d writes not applied (4xx or never sent)",
		h.writes, h.reads, h.unknown, h.notApplied)
	for msg, n := range h.errs {
		t.Logf("  %4d x %s", n, msg)
	}
	if h.writes < 50 || h.reads < 50 {
		t.Fatalf("too few operations to check (%d writes, %d reads)", h.writes, h.reads)
	}
	logSpread(t, "first consistent read after a leader SIGKILL", "leader kills", recovery, time.Millisecond)
	logSpread(t, "first consistent read after all three SIGKILLed and restarted", "full restarts", restartRecovery, time.Millisecond)
	logSpread(t, "new leaders held consistent reads for their barrier after a leader SIGKILL", "leader kills", barriers, time.Microsecond)
	logSpread(t, "new leaders held consistent reads for their barrier after a full restart", "full restarts", restartBarriers, time.Microsecond)

	bad := staleIndexes(h.ops)
	res, info := porcupine.CheckOperationsVerbose(registerModel, h.ops, 2*time.Minute)
	for i, r := range h.refused {
		if i < 10 {
			t.Errorf("a valid request refused: %s", trunc(r, 200))
		}
	}
	if res != porcupine.Ok || len(bad) > 0 || len(h.refused) > 0 {
		path := saveHistory(t, info, h.ops)
		for i, b := range bad {
			if i < 10 {
				t.Errorf("stale index: %s", b)
			}
		}
		t.Fatalf("linearizability check: %s; %d reads answered an index below an acknowledged write's; %d valid requests answered 4xx; history and porcupine visualization in %s",
			res, len(bad), len(h.refused), path)
	}
	t.Logf("linearizable: %d operations, 0 anomalies", len(h.ops))
}

// staleIndexes lists reads that answered with an index below that of a
// write acknowledged before the read was sent.
func staleIndexes(ops []porcupine.Operation) []string {
	type ack struct {
		ret int64
		idx uint64
	}
	var acks []ack
	for _, op := range ops {
		if in := op.Input.(linIn); in.Write {
			if m := op.Metadata.(linMeta); m.Index > 0 {
				acks = append(acks, ack{op.Return, m.Index})
			}
		}
	}
	sort.Slice(acks, func(i, j int) bool { return acks[i].ret < acks[j].ret })
	maxBefore := func(t int64) uint64 {
		var m uint64
		for _, a := range acks {
			if a.ret >= t {
				break
			}
			m = max(m, a.idx)
		}
		return m
	}
	var out []string
	for _, op := range ops {
		in := op.Input.(linIn)
		m := op.Metadata.(linMeta)
		if in.Write {
			continue
		}
		if want := maxBefore(op.Call); m.Index < want {
			out = append(out, fmt.Sprintf("read of f%d via %s at %s answered index %d, below acknowledged index %d",
				in.Key, m.Server, time.Duration(op.Call).Round(time.Millisecond), m.Index, want))
		}
	}
	return out
}

// saveHistory writes the porcupine visualization and the raw history
// under build/drills (kept after the test, unlike t.TempDir) and returns
// the directory.
func saveHistory(t *testing.T, info porcupine.LinearizationInfo, ops []porcupine.Operation) string {
	dir := os.Getenv("METALFLEET_DRILL_OUT")
	if dir == "" {
		dir = filepath.Join("..", "..", "build", "drills")
	}
	dir = filepath.Join(dir, "linearizability-"+time.Now().UTC().Format("20060102T150405"))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		dir = t.TempDir()
	}
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	if err := porcupine.VisualizePath(registerModel, info, filepath.Join(dir, "porcupine.html")); err != nil {
		t.Logf("visualization: %v", err)
	}
	if b, err := json.MarshalIndent(ops, "", " "); err == nil {
		_ = os.WriteFile(filepath.Join(dir, "history.json"), b, 0o644)
	}
	return dir
}

// waitVoters waits until every process answers with three voters and a
// leader.
func waitVoters(ctx context.Context, procs []*Proc, token string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		ok := true
		for _, p := range procs {
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			st, err := p.Client(token).Status(cctx)
			cancel()
			if err != nil || len(st.Peers) != 3 || st.LeaderID == "" {
				ok = false
				break
			}
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("three voters with a leader: not within %s", limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func is4xx(msg string) bool { return len(msg) > 3 && msg[0] == '4' && msg[3] == ' ' }

// errClass names a failed request's kind without its addresses.
func errClass(msg string) string {
	switch {
	case strings.HasPrefix(msg, "not sent"):
		return "not sent (connection refused)"
	case strings.HasPrefix(msg, "5") || strings.HasPrefix(msg, "4"):
		code, rest, _ := strings.Cut(msg, " ")
		var eb proto.ErrorBody
		if json.Unmarshal([]byte(rest), &eb) == nil && eb.Error != nil {
			return code + " " + string(eb.Error.Code) + ": " + trunc(eb.Error.Message, 70)
		}
		return code
	case strings.Contains(msg, "EOF"), strings.Contains(msg, "reset"):
		return "connection cut"
	case strings.Contains(msg, "Timeout") || strings.Contains(msg, "deadline"):
		return "timeout"
	}
	return trunc(msg, 60)
}

func trunc(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// logSpread logs the p50 and max of ds (sorted in place), if any, over
// len(ds) of what.
func logSpread(t *testing.T, title, what string, ds []time.Duration, round time.Duration) {
	t.Helper()
	if len(ds) == 0 {
		return
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	t.Logf("%s: p50 %s, max %s over %d %s", title, ds[len(ds)/2].Round(round), ds[len(ds)-1].Round(round), len(ds), what)
}
