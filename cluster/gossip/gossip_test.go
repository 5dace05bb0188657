package gossip

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/metalfleet/metalfleet/ops/testkit"
	"go.uber.org/goleak"
)

// leakOptions are the goroutines memberlist v0.7.0 may leave running for a
// while after Shutdown returns. Shutdown stops its tickers and listeners
// but does not interrupt a probe already under way:
//   - probeNode blocks until its ack timer fires, one ProbeInterval after
//     the ping (scaled by awareness, at most AwarenessMaxMultiplier times),
//     then returns, possibly marking the target suspect first;
//   - its TCP fallback ping (sendPingAndWaitForAck) is bounded by the same
//     deadline.
//
// Nothing else is ignored.
var leakOptions = []goleak.Option{
	goleak.IgnoreTopFunction("github.com/hashicorp/memberlist.(*Memberlist).probeNode"),
	goleak.IgnoreAnyFunction("github.com/hashicorp/memberlist.(*Memberlist).sendPingAndWaitForAck"),
}

// TestMain fails the package if a test leaves a goroutine behind once its
// members are shut down.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, leakOptions...)
}

// testWriter sends log lines to t.Log until the test's cleanup closes it:
// memberlist's timers may still log after Shutdown returns.
type testWriter struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

// testLogger logs at info (GOSSIP_TEST_DEBUG=1 for debug) to t.Log.
func testLogger(t testing.TB) *slog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	level := slog.LevelInfo
	if os.Getenv("GOSSIP_TEST_DEBUG") != "" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// newMember starts a member on 127.0.0.1 with a free port and the local
// profile unless cfg says otherwise, and shuts it down after the test.
func newMember(t testing.TB, cfg Config) *Gossip {
	t.Helper()
	if cfg.BindAddr == "" {
		cfg.BindAddr = "127.0.0.1:0"
	}
	if cfg.Profile == "" {
		cfg.Profile = ProfileLocal
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t).With("member", cfg.Name)
	}
	g, err := New(cfg)
	if err != nil {
		t.Fatalf("New(%s) = %v", cfg.Name, err)
	}
	t.Cleanup(func() { _ = g.Shutdown() })
	return g
}

// waitFor waits until cond holds and returns how long that took.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	return testkit.Eventually(t, timeout, what, cond)
}

func memberOf(g *Gossip, name string) (Member, bool) {
	for _, m := range g.Members() {
		if m.Name == name {
			return m, true
		}
	}
	return Member{}, false
}

func aliveNames(g *Gossip) []string {
	var names []string
	for _, m := range g.Members() {
		if m.State == StateAlive {
			names = append(names, m.Name)
		}
	}
	return names
}

var (
	metaC1 = Meta{Role: RoleCoordinator, API: "127.0.0.1:8001", Version: "v1"}
	metaA1 = Meta{Role: RoleAgent, Rack: "r1", API: "127.0.0.1:8101", Version: "v1"}
	metaA2 = Meta{Role: RoleAgent, Rack: "r1", API: "127.0.0.1:8102", Version: "v1"}
)

// trio is a coordinator and two agents of rack r1, joined through c1.
type trio struct{ c1, a1, a2 *Gossip }

func (tr trio) all() []*Gossip { return []*Gossip{tr.c1, tr.a1, tr.a2} }

func startTrio(t *testing.T, mod func(*Config)) trio {
	t.Helper()
	mk := func(name string, m Meta) *Gossip {
		cfg := Config{Name: name, Meta: m}
		if mod != nil {
			mod(&cfg)
		}
		return newMember(t, cfg)
	}
	tr := trio{c1: mk("c1", metaC1), a1: mk("a1", metaA1), a2: mk("a2", metaA2)}
	for _, g := range []*Gossip{tr.a1, tr.a2} {
		if n, err := g.Join(t.Context(), []string{tr.c1.LocalAddr()}); err != nil || n != 1 {
			t.Fatalf("%s.Join(c1) = %d, %v, want 1, nil", g.Name(), n, err)
		}
	}
	want := []string{"a1", "a2", "c1"}
	for _, g := range tr.all() {
		waitFor(t, 10*time.Second, g.Name()+" sees all three alive", func() bool {
			return slices.Equal(aliveNames(g), want)
		})
	}
	return tr
}

func TestThreeMembers(t *testing.T) {
	t.Parallel()
	tr := startTrio(t, nil)
	wantMeta := map[string]Meta{"c1": metaC1, "a1": metaA1, "a2": metaA2}
	wantAddr := map[string]string{}
	for _, g := range tr.all() {
		wantAddr[g.Name()] = g.LocalAddr()
	}
	for _, g := range tr.all() {
		t.Run(g.Name(), func(t *testing.T) {
			ms := g.Members()
			if len(ms) != 3 {
				t.Fatalf("Members() has %d members, want 3: %+v", len(ms), ms)
			}
			for _, m := range ms {
				if m.Meta != wantMeta[m.Name] {
					t.Errorf("Meta of %s = %+v, want %+v", m.Name, m.Meta, wantMeta[m.Name])
				}
				if m.Addr != wantAddr[m.Name] {
					t.Errorf("Addr of %s = %q, want %q", m.Name, m.Addr, wantAddr[m.Name])
				}
				if m.State != StateAlive || m.LastChange.IsZero() {
					t.Errorf("%s: State %q LastChange %v, want alive and set", m.Name, m.State, m.LastChange)
				}
			}
			for _, tc := range []struct {
				role, rack string
				want       []string
			}{
				{RoleAgent, "r1", []string{"a1", "a2"}},
				{RoleAgent, "", []string{"a1", "a2"}},
				{RoleAgent, "r2", nil},
				{RoleCoordinator, "", []string{"c1"}},
				{"", "", nil},
			} {
				if got := g.Alive(tc.role, tc.rack); !slices.Equal(got, tc.want) {
					t.Errorf("Alive(%q, %q) = %v, want %v", tc.role, tc.rack, got, tc.want)
				}
			}
			if cs := g.Coordinators(); len(cs) != 1 || cs[0].Name != "c1" {
				t.Errorf("Coordinators() = %+v, want c1", cs)
			}
			if l := g.LeaderAPI(); l != "" {
				t.Errorf("LeaderAPI() = %q before any coordinator names one, want \"\"", l)
			}
		})
	}
}

func TestUpdateMetaPropagates(t *testing.T) {
	t.Parallel()
	tr := startTrio(t, nil)
	changed := tr.a1.Changed()
	m := metaC1
	m.Leader = m.API
	start := time.Now()
	if err := tr.c1.UpdateMeta(m); err != nil {
		t.Fatalf("UpdateMeta = %v", err)
	}
	for _, g := range tr.all() {
		d := waitFor(t, 5*time.Second, g.Name()+" sees c1 as leader", func() bool {
			return g.LeaderAPI() == m.API
		})
		if got, _ := memberOf(g, "c1"); got.Meta != m {
			t.Errorf("%s: Meta of c1 = %+v, want %+v", g.Name(), got.Meta, m)
		}
		t.Logf("%s saw the update %v after UpdateMeta began (%v of polling)", g.Name(), time.Since(start).Round(time.Millisecond), d.Round(time.Millisecond))
	}
	select {
	case <-changed:
	default:
		t.Error("a1.Changed() not closed by the meta update")
	}
	// An agent's Leader field does not count.
	am := metaA1
	am.Leader = "127.0.0.1:9999"
	if err := tr.a1.UpdateMeta(am); err != nil {
		t.Fatalf("UpdateMeta(agent) = %v", err)
	}
	waitFor(t, 5*time.Second, "c1 sees a1's new meta", func() bool {
		got, _ := memberOf(tr.c1, "a1")
		return got.Meta == am
	})
	if l := tr.c1.LeaderAPI(); l != m.API {
		t.Errorf("LeaderAPI() = %q after an agent named another, want %q", l, m.API)
	}
}

// estimate is what memberlist's settings predict for the time from a
// member's abrupt death until an observer sees it dead.
type estimate struct {
	n                int // members before the death
	k                int // confirmations the suspicion timer wants
	suspMin, suspMax time.Duration
	best, typ, worst time.Duration
}

// detectionEstimate follows memberlist v0.7.0's state.go and suspicion.go:
//   - each survivor probes one member per ProbeInterval, round-robin over
//     a shuffled list, so the dead one is first probed after about
//     ProbeInterval·(n-1)/n (at worst (n-1)·ProbeInterval);
//   - a failed probe (ProbeTimeout for the UDP ack, then indirect pings
//     through IndirectChecks peers and a TCP ping) ends at the interval's
//     deadline: the node turns suspect one ProbeInterval after the probe;
//   - the suspicion timer runs min = SuspicionMult·max(1, log10 n)·
//     ProbeInterval when k = SuspicionMult-2 other members confirm it (or
//     k is 0 because n-2 < k), up to max = SuspicionMaxTimeoutMult·min
//     with no confirmation;
//   - the dead message then reaches the others within a GossipInterval.
//
// Awareness (a member that misses acks slows its own probing up to
// AwarenessMaxMultiplier times) can stretch all of this.
func detectionEstimate(mc *memberlist.Config, n int) estimate {
	e := estimate{n: n, k: mc.SuspicionMult - 2}
	if n-2 < e.k {
		e.k = 0
	}
	scale := math.Max(1, math.Log10(float64(n)))
	e.suspMin = time.Duration(float64(mc.SuspicionMult) * scale * float64(mc.ProbeInterval))
	e.suspMax = time.Duration(mc.SuspicionMaxTimeoutMult) * e.suspMin
	susp := e.suspMin
	if e.k > 0 {
		susp = e.suspMax
	}
	e.best = mc.ProbeInterval + e.suspMin
	e.typ = mc.ProbeInterval*time.Duration(n-1)/time.Duration(n) + mc.ProbeInterval + e.suspMin + mc.GossipInterval/2
	e.worst = time.Duration(n-1)*mc.ProbeInterval + mc.ProbeInterval + susp + mc.GossipInterval
	return e
}

func (e estimate) String() string {
	return fmt.Sprintf("n=%d: suspicion %v (k=%d confirmations) .. %v; expect best %v, typical %v, worst %v",
		e.n, e.suspMin, e.k, e.suspMax, e.best, e.typ, e.worst)
}

// TestDetectionEstimateLAN logs what memberlist's LAN defaults give, the
// number the rack agent issue needs, for a few cluster sizes.
func TestDetectionEstimateLAN(t *testing.T) {
	t.Parallel()
	lan := memberlist.DefaultLANConfig()
	t.Logf("DefaultLANConfig: ProbeInterval %v, ProbeTimeout %v, SuspicionMult %d, SuspicionMaxTimeoutMult %d, IndirectChecks %d, GossipInterval %v, GossipToTheDeadTime %v, AwarenessMaxMultiplier %d",
		lan.ProbeInterval, lan.ProbeTimeout, lan.SuspicionMult, lan.SuspicionMaxTimeoutMult, lan.IndirectChecks, lan.GossipInterval, lan.GossipToTheDeadTime, lan.AwarenessMaxMultiplier)
	for _, n := range []int{3, 4, 10, 50, 200} {
		e := detectionEstimate(lan, n)
		t.Logf("LAN %v", e)
		if e.best > e.typ || e.typ > e.worst {
			t.Errorf("LAN n=%d: estimate out of order: %v", n, e)
		}
	}
	if e := detectionEstimate(lan, 3); e.k != 0 || e.suspMin != 4*time.Second {
		t.Errorf("LAN n=3: k=%d suspMin=%v, want k=0 (too few members to confirm) and 4s", e.k, e.suspMin)
	}
}

func TestFailureDetection(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		mod  func(*Config)
	}{
		{"local", nil},
		{"lan", func(c *Config) { c.Profile = ProfileLAN }},
		{"fast", func(c *Config) {
			c.ProbeInterval, c.ProbeTimeout, c.SuspicionMult = 200*time.Millisecond, 100*time.Millisecond, 3
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tr := startTrio(t, tc.mod)
			cfg := Config{Name: "x", Profile: ProfileLocal}
			if tc.mod != nil {
				tc.mod(&cfg)
			}
			mc, err := memberlistConfig(cfg)
			if err != nil {
				t.Fatal(err)
			}
			est := detectionEstimate(mc, 3)

			if err := tr.a2.Shutdown(); err != nil { // no Leave: a crash
				t.Fatalf("Shutdown = %v", err)
			}
			d := waitFor(t, 2*est.worst+5*time.Second, "a1 to drop a2 from Alive(agent, r1)", func() bool {
				return slices.Equal(tr.a1.Alive(RoleAgent, "r1"), []string{"a1"})
			})
			t.Logf("profile %s (ProbeInterval %v, ProbeTimeout %v, SuspicionMult %d): a2 killed, a1 dropped it after %v; %v",
				tc.name, mc.ProbeInterval, mc.ProbeTimeout, mc.SuspicionMult, d.Round(time.Millisecond), est)
			if d < est.suspMin {
				t.Errorf("detected after %v, less than the suspicion timeout %v", d, est.suspMin)
			}
			for _, g := range []*Gossip{tr.a1, tr.c1} {
				waitFor(t, 5*time.Second, g.Name()+" to see a2 dead", func() bool {
					m, ok := memberOf(g, "a2")
					return ok && m.State == StateDead
				})
			}
		})
	}
}

func TestGracefulLeave(t *testing.T) {
	t.Parallel()
	tr := startTrio(t, nil)
	start := time.Now()
	if err := tr.a2.Leave(2 * time.Second); err != nil {
		t.Fatalf("Leave = %v", err)
	}
	if err := tr.a2.Shutdown(); err != nil {
		t.Fatalf("Shutdown = %v", err)
	}
	for _, g := range []*Gossip{tr.a1, tr.c1} {
		waitFor(t, 3*time.Second, g.Name()+" to see a2 left", func() bool {
			m, ok := memberOf(g, "a2")
			return ok && m.State == StateLeft
		})
		if got := g.Alive(RoleAgent, "r1"); !slices.Equal(got, []string{"a1"}) {
			t.Errorf("%s: Alive(agent, r1) = %v, want [a1]", g.Name(), got)
		}
	}
	t.Logf("a2 seen as left by a1 and c1 %v after Leave began", time.Since(start).Round(time.Millisecond))
	if err := tr.a2.Leave(time.Second); !errors.Is(err, ErrClosed) {
		t.Errorf("Leave after Shutdown = %v, want ErrClosed", err)
	}
}

// TestLeaveIntent drives the dead/left bookkeeping with synthetic events
// on one member: the intent may come before or after memberlist's leave
// event, and a rejoin forgets it.
func TestLeaveIntent(t *testing.T) {
	t.Parallel()
	node := &memberlist.Node{Name: "x", Addr: net.IPv4(127, 0, 0, 9), Port: 7946, Meta: []byte(`{"role":"agent","rack":"r1"}`)}
	ev := func(g *Gossip, kind string) {
		switch kind {
		case "join":
			events{g}.NotifyJoin(node)
		case "leave":
			events{g}.NotifyLeave(node)
		case "intent":
			g.handleMsg(leaveIntent(uint64(time.Now().UnixNano()), "x"))
		}
	}
	for _, tc := range []struct {
		name  string
		steps []string
		want  string
	}{
		{"crash", []string{"join", "leave"}, StateDead},
		{"intent first", []string{"join", "intent", "leave"}, StateLeft},
		{"intent late", []string{"join", "leave", "intent"}, StateLeft},
		{"rejoin forgets intent", []string{"join", "intent", "leave", "join", "leave"}, StateDead},
		{"back after leaving", []string{"join", "intent", "leave", "join"}, StateAlive},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newMember(t, Config{Name: "self", Meta: metaA1})
			for _, s := range tc.steps {
				ev(g, s)
			}
			m, ok := memberOf(g, "x")
			if !ok || m.State != tc.want {
				t.Errorf("after %v: x is %+v (found %v), want state %s", tc.steps, m, ok, tc.want)
			}
			if m.Addr != "127.0.0.9:7946" || m.Meta.Rack != "r1" {
				t.Errorf("x = %+v, want addr 127.0.0.9:7946 rack r1", m)
			}
		})
	}
}

func TestEncryption(t *testing.T) {
	t.Parallel()
	key1 := []byte("0123456789abcdef")
	key2 := []byte("fedcba9876543210fedcba9876543210")
	for _, tc := range []struct {
		name         string
		keyA, keyB   []byte
		wantJoined   bool
		wantJoinFail bool
	}{
		{"same key", key1, key1, true, false},
		{"same 32-byte key", key2, key2, true, false},
		{"different keys", key1, key2, false, true},
		{"plain joins encrypted", key1, nil, false, true},
		{"encrypted joins plain", nil, key1, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a := newMember(t, Config{Name: "a", Meta: metaC1, Key: tc.keyA})
			b := newMember(t, Config{Name: "b", Meta: metaA1, Key: tc.keyB})
			n, err := b.Join(t.Context(), []string{a.LocalAddr()})
			if gotFail := err != nil; gotFail != tc.wantJoinFail {
				t.Fatalf("Join = %d, %v; want failure %v", n, err, tc.wantJoinFail)
			}
			if tc.wantJoined {
				for _, g := range []*Gossip{a, b} {
					waitFor(t, 5*time.Second, g.Name()+" sees both", func() bool {
						return slices.Equal(aliveNames(g), []string{"a", "b"})
					})
				}
				return
			}
			t.Logf("Join refused as it should: %v", err)
			for _, g := range []*Gossip{a, b} {
				if got := aliveNames(g); !slices.Equal(got, []string{g.Name()}) {
					t.Errorf("%s alive members = %v, want only itself", g.Name(), got)
				}
			}
		})
	}
}

// freeAddr returns a 127.0.0.1 address whose port is free for TCP and UDP
// (memberlist needs both) at the time of the call.
func freeAddr(t *testing.T) string {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		pc, err := net.ListenPacket("udp", addr)
		l.Close()
		if err == nil {
			pc.Close()
			return addr
		}
	}
	t.Fatal("no port free for both TCP and UDP")
	return ""
}

// TestRetryJoin starts a member whose only peer comes up later.
func TestRetryJoin(t *testing.T) {
	t.Parallel()
	peerAddr := freeAddr(t)

	early := newMember(t, Config{Name: "early", Meta: metaA1, Join: []string{peerAddr},
		RetryJoinMin: 50 * time.Millisecond, RetryJoinMax: 200 * time.Millisecond})
	ctx, cancel := context.WithCancel(t.Context())
	runDone := make(chan error, 1)
	go func() { runDone <- early.Run(ctx) }()

	waitFor(t, 5*time.Second, "two failed join attempts", func() bool { return early.joinAttempts.Load() >= 2 })
	late := newMember(t, Config{Name: "late", Meta: metaC1, BindAddr: peerAddr})
	d := waitFor(t, 5*time.Second, "early and late to find each other", func() bool {
		return slices.Equal(aliveNames(early), []string{"early", "late"}) &&
			slices.Equal(aliveNames(late), []string{"early", "late"})
	})
	t.Logf("found the late peer %v after it started, after %d failed attempts", d.Round(time.Millisecond), early.joinAttempts.Load())

	cancel()
	select {
	case err := <-runDone:
		if err != nil {
			t.Errorf("Run = %v, want nil on cancel", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

// TestRunRejoins: a member whose only peer crashes is alone; Run keeps
// trying and joins the peer again when it restarts on the same address.
func TestRunRejoins(t *testing.T) {
	t.Parallel()
	fast := func(c Config) Config {
		c.ProbeInterval, c.ProbeTimeout, c.SuspicionMult = 200*time.Millisecond, 100*time.Millisecond, 2
		return c
	}
	seed := newMember(t, fast(Config{Name: "seed", Meta: metaC1}))
	seedAddr := seed.LocalAddr()
	g := newMember(t, fast(Config{Name: "g", Meta: metaA1, Join: []string{seedAddr},
		RetryJoinMin: 50 * time.Millisecond, RetryJoinMax: 200 * time.Millisecond}))
	go func() { _ = g.Run(t.Context()) }()
	waitFor(t, 5*time.Second, "g to join seed", func() bool { return !g.alone() })
	if n := g.joinAttempts.Load(); n != 0 {
		t.Errorf("%d failed attempts to join a live seed, want 0", n)
	}

	if err := seed.Shutdown(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "g to see seed dead", func() bool { return g.alone() })
	waitFor(t, 5*time.Second, "g to retry", func() bool { return g.joinAttempts.Load() >= 1 })
	seed2 := newMember(t, fast(Config{Name: "seed", Meta: metaC1, BindAddr: seedAddr}))
	d := waitFor(t, 10*time.Second, "g and the restarted seed to find each other", func() bool {
		return slices.Equal(aliveNames(g), []string{"g", "seed"}) && slices.Equal(aliveNames(seed2), []string{"g", "seed"})
	})
	t.Logf("rejoined %v after the seed restarted (%d failed attempts)", d.Round(time.Millisecond), g.joinAttempts.Load())
}

func TestConfigErrors(t *testing.T) {
	t.Parallel()
	base := Config{Name: "n", BindAddr: "127.0.0.1:0", Meta: metaA1, Profile: ProfileLocal}
	atLimit := Meta{Role: RoleAgent}
	small, _ := atLimit.encode()
	atLimit.Version = strings.Repeat("v", MetaMaxSize-len(small)-len(`,"ver":""`))
	over := atLimit
	over.Version += "v"
	for _, tc := range []struct {
		name    string
		mod     func(*Config)
		wantErr string // "" for success
	}{
		{"ok", func(*Config) {}, ""},
		{"meta at the limit", func(c *Config) { c.Meta = atLimit }, ""},
		{"meta one byte over", func(c *Config) { c.Meta = over }, "memberlist allows at most 512"},
		{"no name", func(c *Config) { c.Name = "" }, "Name is required"},
		{"no role", func(c *Config) { c.Meta.Role = "" }, "role"},
		{"bad role", func(c *Config) { c.Meta.Role = "server" }, "role"},
		{"bad api", func(c *Config) { c.Meta.API = "nohost" }, "not host:port"},
		{"bad profile", func(c *Config) { c.Profile = "wan" }, "Profile"},
		{"bad bind", func(c *Config) { c.BindAddr = "127.0.0.1" }, "BindAddr"},
		{"bad bind port", func(c *Config) { c.BindAddr = "127.0.0.1:99999" }, "bad port"},
		{"advertise not an ip", func(c *Config) { c.AdvertiseAddr = "example.com:7946" }, "must be an IP"},
		{"key 8 bytes", func(c *Config) { c.Key = make([]byte, 8) }, "Key is 8 bytes"},
		{"key 33 bytes", func(c *Config) { c.Key = make([]byte, 33) }, "Key is 33 bytes"},
		{"key 24 bytes", func(c *Config) { c.Key = make([]byte, 24) }, ""},
		{"probe timeout too long", func(c *Config) { c.ProbeTimeout = 2 * time.Second }, "shorter than ProbeInterval"},
		{"negative suspicion", func(c *Config) { c.SuspicionMult = -1 }, "negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := base
			cfg.Logger = testLogger(t)
			tc.mod(&cfg)
			g, err := New(cfg)
			if err == nil {
				_ = g.Shutdown()
			}
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("New = %v, want success", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("New = %v, want error containing %q", err, tc.wantErr)
			}
			if strings.Contains(tc.name, "over") && !errors.Is(err, ErrMetaTooLarge) {
				t.Errorf("New = %v, want ErrMetaTooLarge", err)
			}
		})
	}
}

func TestUpdateMetaRefusesOversized(t *testing.T) {
	t.Parallel()
	g := newMember(t, Config{Name: "g", Meta: metaA1})
	big := metaA1
	big.Version = strings.Repeat("x", MetaMaxSize)
	if err := g.UpdateMeta(big); !errors.Is(err, ErrMetaTooLarge) {
		t.Fatalf("UpdateMeta(%d-byte version) = %v, want ErrMetaTooLarge", len(big.Version), err)
	}
	if m, _ := memberOf(g, "g"); m.Meta != metaA1 {
		t.Errorf("own Meta = %+v after a refused update, want %+v", m.Meta, metaA1)
	}
}

func TestLeaderOf(t *testing.T) {
	t.Parallel()
	c := func(api, leader string) Member {
		return Member{Name: api, Meta: Meta{Role: RoleCoordinator, API: api, Leader: leader}}
	}
	for _, tc := range []struct {
		name   string
		coords []Member
		want   string
	}{
		{"none", nil, ""},
		{"nobody knows", []Member{c("a:1", ""), c("b:1", "")}, ""},
		{"agreement", []Member{c("a:1", "b:1"), c("b:1", "b:1"), c("c:1", "b:1")}, "b:1"},
		{"leader not gossiping yet", []Member{c("a:1", "x:1"), c("b:1", "x:1")}, "x:1"},
		{"majority without claim", []Member{c("a:1", "x:1"), c("b:1", "x:1"), c("c:1", "y:1")}, "x:1"},
		{"claim beats majority", []Member{c("a:1", "x:1"), c("b:1", "x:1"), c("c:1", "c:1")}, "c:1"},
		{"two claims, more votes win", []Member{c("a:1", "a:1"), c("b:1", "b:1"), c("c:1", "b:1")}, "b:1"},
		{"two claims, tie by address", []Member{c("b:1", "b:1"), c("a:1", "a:1")}, "a:1"},
		{"tie by address", []Member{c("a:1", "y:1"), c("b:1", "x:1")}, "x:1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := leaderOf(tc.coords); got != tc.want {
				t.Errorf("leaderOf(%v) = %q, want %q", tc.coords, got, tc.want)
			}
		})
	}
}

func TestParseLogLine(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		line      string
		wantLevel slog.Level
		wantMsg   string
	}{
		{"[DEBUG] memberlist: Stream connection from=127.0.0.1:1\n", slog.LevelDebug, "Stream connection from=127.0.0.1:1"},
		{"[INFO] memberlist: Marking a as failed\n", slog.LevelDebug, "Marking a as failed"},
		{"[WARN] memberlist: Refuting a suspect message (from: b)\n", slog.LevelWarn, "Refuting a suspect message (from: b)"},
		{"[ERR] memberlist: Failed to send ping\n", slog.LevelError, "Failed to send ping"},
		{"[ERR] Failed to shutdown transport: x\n", slog.LevelError, "Failed to shutdown transport: x"},
		{"something else\n", slog.LevelInfo, "something else"},
	} {
		level, msg := parseLogLine(tc.line)
		if level != tc.wantLevel || msg != tc.wantMsg {
			t.Errorf("parseLogLine(%q) = %v, %q, want %v, %q", tc.line, level, msg, tc.wantLevel, tc.wantMsg)
		}
	}
}

// TestNoGoroutineLeak is not parallel, so it runs before the parallel
// tests resume and goleak sees only its own goroutines.
func TestNoGoroutineLeak(t *testing.T) {
	defer goleak.VerifyNone(t, append(leakOptions, goleak.IgnoreCurrent())...)
	log := testLogger(t)
	a, err := New(Config{Name: "a", BindAddr: "127.0.0.1:0", Profile: ProfileLocal, Meta: metaC1, Logger: log, Key: make([]byte, 16)})
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(Config{Name: "b", BindAddr: "127.0.0.1:0", Profile: ProfileLocal, Meta: metaA1, Logger: log, Key: make([]byte, 16),
		Join: []string{a.LocalAddr()}, RetryJoinMin: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	runDone := make(chan error, 1)
	go func() { runDone <- b.Run(ctx) }()
	waitFor(t, 5*time.Second, "b to join a", func() bool { return len(a.Alive(RoleAgent, "r1")) == 1 })
	m := metaC1
	m.Leader = m.API
	if err := a.UpdateMeta(m); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "b to see the leader", func() bool { return b.LeaderAPI() == m.API })
	cancel()
	<-runDone
	if err := b.Leave(time.Second); err != nil {
		t.Fatal(err)
	}
	for _, g := range []*Gossip{a, b} {
		if err := g.Shutdown(); err != nil {
			t.Fatal(err)
		}
	}
}

// BenchmarkAlive measures the per-DHCP-packet call on a member that knows
// 500 agents in 20 racks and 3 coordinators.
func BenchmarkAlive(b *testing.B) {
	g := newMember(b, Config{Name: "c0", Meta: metaC1, Logger: slog.New(slog.DiscardHandler)})
	for i := range 500 {
		meta := fmt.Appendf(nil, `{"role":"agent","rack":"r%d","api":"10.0.%d.%d:8080"}`, i%20, i/250, i%250)
		events{g}.NotifyJoin(&memberlist.Node{Name: fmt.Sprintf("agent-%03d", i), Addr: net.IPv4(10, 1, byte(i/250), byte(i%250)), Port: 7946, Meta: meta})
	}
	for i := 1; i < 3; i++ {
		events{g}.NotifyJoin(&memberlist.Node{Name: fmt.Sprintf("c%d", i), Addr: net.IPv4(10, 2, 0, byte(i)), Port: 7946, Meta: []byte(`{"role":"coordinator"}`)})
	}
	if got := len(g.Alive(RoleAgent, "r7")); got != 25 {
		b.Fatalf("Alive(agent, r7) has %d names, want 25", got)
	}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if len(g.Alive(RoleAgent, "r7")) != 25 {
				b.Fatal("wrong answer")
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if len(g.Alive(RoleAgent, "r7")) != 25 {
					b.Error("wrong answer")
					return
				}
			}
		})
	})
}

func TestJoinErrorOneLine(t *testing.T) {
	t.Parallel()
	g := newMember(t, Config{Name: "g", Meta: metaA1})
	var addrs []string
	for range 2 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, l.Addr().String())
		l.Close()
	}
	for _, tc := range []struct {
		addrs []string
		want  string
	}{
		{addrs[:1], fmt.Sprintf("gossip: join [%s]: failed to join %s: dial tcp %s: connect: connection refused", addrs[0], addrs[0], addrs[0])},
		{addrs, fmt.Sprintf("gossip: join %v: 2 errors occurred: failed to join %s: ", addrs, addrs[0])},
		{nil, "gossip: join: no addresses"},
	} {
		_, err := g.Join(t.Context(), tc.addrs)
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("Join(%v) = %q, want one line starting %q", tc.addrs, err, tc.want)
		}
	}
}
