package console

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/cluster/clock"
	"github.com/metalfleet/metalfleet/ops/testkit"
	"github.com/metalfleet/metalfleet/proto"
	"github.com/metalfleet/metalfleet/rackagent/bmc"
)

var t0 = time.Date(2026, 11, 30, 6, 0, 0, 0, time.UTC)

// rig is a Manager over the fake BMC driver, whose console echoes what is
// written; it counts opens and keeps the reports.
type rig struct {
	m     *Manager
	clk   *clock.Fake
	mu    sync.Mutex
	opens map[string]int
	conns []io.ReadWriteCloser
	reps  []proto.AgentReport
}

func newRig(t *testing.T, cfg Config) *rig {
	r := &rig{clk: clock.NewFake(t0), opens: map[string]int{}}
	cfg.Now = r.clk.Now
	cfg.Open = func(ctx context.Context, node string) (io.ReadWriteCloser, error) {
		d, err := bmc.Open(proto.BMC{Driver: proto.DriverFake, Address: "console-test-" + node})
		if err != nil {
			return nil, err
		}
		c, err := d.Console(ctx)
		if err != nil {
			return nil, err
		}
		r.mu.Lock()
		r.opens[node]++
		r.conns = append(r.conns, c)
		r.mu.Unlock()
		return c, nil
	}
	cfg.Report = func(rep proto.AgentReport) {
		r.mu.Lock()
		r.reps = append(r.reps, rep)
		r.mu.Unlock()
	}
	r.m = New(cfg)
	t.Cleanup(r.m.Close)
	return r
}

func (r *rig) openCount(node string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.opens[node]
}

func (r *rig) attach(t *testing.T, node, user, mode string, force bool) *Client {
	t.Helper()
	c, err := r.m.Attach(context.Background(), Request{Node: node, User: user, Mode: mode, Force: force})
	if err != nil {
		t.Fatalf("Attach(%s, %s, %s, force=%v) = %v, want a client", node, user, mode, force, err)
	}
	return c
}

func (r *rig) reports() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, rep := range r.reps {
		out = append(out, rep.Event+" "+rep.Node+" "+rep.User+" "+rep.Mode)
	}
	return out
}

// read collects c's output until it holds want (or fails after a while).
func read(t *testing.T, c *Client, want string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var got []byte
	for !bytes.Contains(got, []byte(want)) {
		e, err := c.Next(ctx)
		if err != nil {
			t.Fatalf("%s reading: got %q, then %v; want %q", c.user, got, err, want)
		}
		got = append(got, e.Data...)
	}
}

// ended reads c's events until EOF and returns its notices.
func ended(t *testing.T, c *Client) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var notices []string
	for {
		e, err := c.Next(ctx)
		if errors.Is(err, io.EOF) {
			return notices
		}
		if err != nil {
			t.Fatalf("%s: waiting for the end: %v (notices %q)", c.user, err, notices)
		}
		if e.Notice != "" {
			notices = append(notices, e.Notice)
		}
	}
}

func TestFanOutOneKeyboard(t *testing.T) {
	r := newRig(t, Config{})
	alice := r.attach(t, "n1", "alice", Interactive, false)
	bob := r.attach(t, "n1", "bob", ReadOnly, false)
	carol := r.attach(t, "n1", "carol", ReadOnly, false)
	if _, err := alice.Write([]byte("hello\n")); err != nil {
		t.Fatalf("holder Write = %v", err)
	}
	for _, c := range []*Client{alice, bob, carol} {
		read(t, c, "hello\n")
	}
	if _, err := bob.Write([]byte("rm -rf /\n")); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("read-only Write = %v, want ErrReadOnly", err)
	}
	if n := r.openCount("n1"); n != 1 {
		t.Fatalf("opens of n1 = %d, want 1 (one session per node)", n)
	}
	if u, n := r.m.Holder("n1"); u != "alice" || n != 3 {
		t.Fatalf("Holder = %q, %d clients; want alice, 3", u, n)
	}
}

func TestSecondInteractiveRefusedNamingHolder(t *testing.T) {
	r := newRig(t, Config{})
	r.attach(t, "n1", "alice", Interactive, false)
	r.clk.Advance(time.Minute)
	_, err := r.m.Attach(context.Background(), Request{Node: "n1", User: "bob", Mode: Interactive})
	var held *HeldError
	if !errors.As(err, &held) {
		t.Fatalf("second interactive Attach = %v, want a *HeldError", err)
	}
	if held.User != "alice" || !held.Since.Equal(t0) {
		t.Fatalf("held by %q since %v, want alice since %v", held.User, held.Since, t0)
	}
	if !strings.Contains(err.Error(), "alice") || !strings.Contains(err.Error(), t0.Format(time.RFC3339)) {
		t.Fatalf("error %q does not name the holder and since when", err)
	}
}

func TestForceTakeoverTellsTheFirst(t *testing.T) {
	r := newRig(t, Config{})
	alice := r.attach(t, "n1", "alice", Interactive, false)
	watcher := r.attach(t, "n1", "wendy", ReadOnly, false)
	bob := r.attach(t, "n1", "bob", Interactive, true)
	notices := ended(t, alice)
	if len(notices) != 1 || !strings.Contains(notices[0], "bob took over") {
		t.Fatalf("alice's last notices = %q, want one naming bob's takeover", notices)
	}
	if _, err := alice.Write([]byte("x")); !errors.Is(err, ErrDetached) {
		t.Fatalf("Write after takeover = %v, want ErrDetached", err)
	}
	if _, err := bob.Write([]byte("mine\n")); err != nil {
		t.Fatalf("new holder Write = %v", err)
	}
	read(t, bob, "mine\n")
	read(t, watcher, "mine\n")
	if u, _ := r.m.Holder("n1"); u != "bob" {
		t.Fatalf("holder = %q, want bob", u)
	}
	want := []string{"console-start n1 alice interactive", "console-start n1 wendy read-only",
		"console-end n1 alice interactive", "console-start n1 bob interactive"}
	if got := r.reports(); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("reports = %q, want %q", got, want)
	}
}

// TestForceTakeoverOfTheOnlyClient: the session stays open for the new
// holder when the one it replaces was its only client.
func TestForceTakeoverOfTheOnlyClient(t *testing.T) {
	r := newRig(t, Config{})
	alice := r.attach(t, "n1", "alice", Interactive, false)
	bob := r.attach(t, "n1", "bob", Interactive, true)
	if n := ended(t, alice); len(n) != 1 || !strings.Contains(n[0], "bob took over") {
		t.Fatalf("alice's notices = %q", n)
	}
	if _, err := bob.Write([]byte("still open\n")); err != nil {
		t.Fatalf("the new holder's Write = %v", err)
	}
	read(t, bob, "still open\n")
	if r.m.Sessions() != 1 || r.openCount("n1") != 1 {
		t.Fatalf("sessions %d, opens %d; want the one session kept", r.m.Sessions(), r.openCount("n1"))
	}
}

func TestSlowClientDroppedNotBlocking(t *testing.T) {
	r := newRig(t, Config{ClientBuffer: 1024})
	fast := r.attach(t, "n1", "fast", Interactive, false)
	slow := r.attach(t, "n1", "slow", ReadOnly, false) // never reads
	// The fast client reads each chunk's echo before it sends the next
	// (so its own queue stays small); 50 chunks are five times the slow
	// client's queue.
	for i := range 50 {
		chunk := fmt.Sprintf("%03d%s\n", i, strings.Repeat("x", 96))
		if _, err := fast.Write([]byte(chunk)); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		read(t, fast, chunk)
	}
	notices := ended(t, slow)
	if len(notices) != 1 || !strings.Contains(notices[0], "dropped") {
		t.Fatalf("slow client's notices = %q, want one saying it was dropped", notices)
	}
	if _, n := r.m.Holder("n1"); n != 1 {
		t.Fatalf("clients = %d, want 1 (the slow one gone)", n)
	}
	want := []string{"console-start n1 fast interactive", "console-start n1 slow read-only", "console-end n1 slow read-only"}
	if got := r.reports(); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("reports = %q, want %q", got, want)
	}
}

func TestLogKeepsLastBytesOldestFirst(t *testing.T) {
	r := newRig(t, Config{LogBytes: 1000})
	c := r.attach(t, "n1", "alice", Interactive, false)
	var all []byte
	for i := range 30 {
		line := []byte(strings.Repeat(string(rune('a'+i%26)), 97) + "\n")
		all = append(all, line...)
		if _, err := c.Write(line); err != nil {
			t.Fatal(err)
		}
	}
	read(t, c, string(all[len(all)-98:]))
	testkit.Eventually(t, 5*time.Second, "the log holds every byte echoed", func() bool {
		b, _ := r.m.Log("n1")
		return bytes.HasSuffix(b, all[len(all)-98:])
	})
	got, ok := r.m.Log("n1")
	if want := all[len(all)-1000:]; !ok || !bytes.Equal(got, want) {
		t.Fatalf("Log = %d bytes %q..., want the last %d bytes %q...", len(got), got[:20], len(want), want[:20])
	}
	c.Close()
	testkit.Eventually(t, 5*time.Second, "the session closes", func() bool { return r.m.Sessions() == 0 })
	if after, ok := r.m.Log("n1"); !ok || !bytes.Equal(after, got) {
		t.Fatalf("Log after the session closed = %d bytes, want the same %d", len(after), len(got))
	}
	if _, ok := r.m.Log("n2"); ok {
		t.Fatalf("Log of a node never consoled: ok, want none")
	}
}

func TestRingAgainstReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, max := range []int{1, 7, 64, 1000} {
		rg := &ring{max: max}
		var ref []byte
		for i := range 500 {
			p := make([]byte, rng.IntN(3*max+2))
			for j := range p {
				p[j] = byte(rng.IntN(256))
			}
			rg.write(p)
			ref = append(ref, p...)
			if len(ref) > max {
				ref = ref[len(ref)-max:]
			}
			if got := rg.bytes(); !bytes.Equal(got, ref) {
				t.Fatalf("max %d, write %d: ring holds %x, want %x", max, i, got, ref)
			}
		}
	}
}

func TestSessionClosesWithLastClient(t *testing.T) {
	r := newRig(t, Config{})
	a := r.attach(t, "n1", "alice", Interactive, false)
	b := r.attach(t, "n1", "bob", ReadOnly, false)
	a.Close()
	if r.m.Sessions() != 1 {
		t.Fatalf("sessions after the first of two left = %d, want 1", r.m.Sessions())
	}
	// The keyboard is free again.
	c := r.attach(t, "n1", "carol", Interactive, false)
	c.Close()
	b.Close()
	if r.m.Sessions() != 0 {
		t.Fatalf("sessions after the last client left = %d, want 0", r.m.Sessions())
	}
	r.mu.Lock()
	first := r.conns[0]
	r.mu.Unlock()
	testkit.Eventually(t, 5*time.Second, "the BMC console is closed", func() bool {
		_, err := first.Write([]byte("x"))
		return err != nil
	})
	r.attach(t, "n1", "dave", Interactive, false)
	if n := r.openCount("n1"); n != 2 {
		t.Fatalf("opens = %d, want 2 (a new session after the last closed)", n)
	}
}

func TestBMCEndTellsEveryClient(t *testing.T) {
	r := newRig(t, Config{})
	a := r.attach(t, "n1", "alice", Interactive, false)
	b := r.attach(t, "n1", "bob", ReadOnly, false)
	r.mu.Lock()
	conn := r.conns[0]
	r.mu.Unlock()
	conn.Close()
	for _, c := range []*Client{a, b} {
		if n := ended(t, c); len(n) != 1 || !strings.Contains(n[0], "console ended") {
			t.Fatalf("%s's notices = %q, want one saying the console ended", c.user, n)
		}
	}
	if r.m.Sessions() != 0 {
		t.Fatalf("sessions = %d, want 0", r.m.Sessions())
	}
}

func TestBounds(t *testing.T) {
	r := newRig(t, Config{MaxSessions: 2, MaxClients: 3})
	r.attach(t, "n1", "u", ReadOnly, false)
	r.attach(t, "n2", "u", ReadOnly, false)
	if _, err := r.m.Attach(context.Background(), Request{Node: "n3", User: "u", Mode: ReadOnly}); !errors.Is(err, ErrTooManySessions) {
		t.Fatalf("third session: %v, want ErrTooManySessions", err)
	}
	r.attach(t, "n1", "v", ReadOnly, false)
	r.attach(t, "n1", "w", Interactive, false)
	if _, err := r.m.Attach(context.Background(), Request{Node: "n1", User: "x", Mode: ReadOnly}); !errors.Is(err, ErrTooManyClients) {
		t.Fatalf("fourth client: %v, want ErrTooManyClients", err)
	}
	// A takeover replaces the holder: it fits.
	r.attach(t, "n1", "y", Interactive, true)
	if _, err := r.m.Attach(context.Background(), Request{Node: "n1", User: "z", Mode: "admin"}); err == nil || !strings.Contains(err.Error(), "mode") {
		t.Fatalf("bad mode: %v, want an error naming the mode", err)
	}
}

func TestConcurrentAttachOpensOnce(t *testing.T) {
	r := newRig(t, Config{MaxClients: 16})
	var wg sync.WaitGroup
	clients := make(chan *Client, 16)
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := r.m.Attach(context.Background(), Request{Node: "n1", User: string(rune('a' + i)), Mode: ReadOnly})
			if err != nil {
				t.Error(err)
				return
			}
			clients <- c
		}()
	}
	wg.Wait()
	close(clients)
	if n := r.openCount("n1"); n != 1 {
		t.Fatalf("opens = %d, want 1", n)
	}
	for c := range clients {
		c.Close()
	}
	if r.m.Sessions() != 0 {
		t.Fatalf("sessions = %d, want 0", r.m.Sessions())
	}
}

// BenchmarkFanOut: console output (the fake BMC's echo of 4 KiB writes)
// delivered to 16 attached clients: bytes/s is the session's output rate.
func BenchmarkFanOut(b *testing.B) {
	m := New(Config{Open: func(ctx context.Context, node string) (io.ReadWriteCloser, error) {
		d, err := bmc.Open(proto.BMC{Driver: proto.DriverFake, Address: "bench-" + node})
		if err != nil {
			return nil, err
		}
		return d.Console(ctx)
	}})
	defer m.Close()
	ctx := context.Background()
	holder, err := m.Attach(ctx, Request{Node: "n1", User: "u0"})
	if err != nil {
		b.Fatal(err)
	}
	clients := []*Client{holder}
	for i := 1; i < 16; i++ {
		c, err := m.Attach(ctx, Request{Node: "n1", User: fmt.Sprint("u", i), Mode: ReadOnly})
		if err != nil {
			b.Fatal(err)
		}
		clients = append(clients, c)
	}
	chunk := bytes.Repeat([]byte("x"), 4096)
	total := b.N * len(chunk)
	// The writer keeps within 64 KiB of the slowest client (whose queue
	// holds 256 KiB), so the benchmark measures delivery, not drops.
	var mu sync.Mutex
	cond := sync.NewCond(&mu)
	got := make([]int, len(clients))
	var wg sync.WaitGroup
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < total; {
				e, err := c.Next(ctx)
				if err != nil {
					b.Errorf("%s after %d bytes: %v", c.User(), n, err)
					mu.Lock()
					got[i] = total // the writer must not wait for it
					cond.Broadcast()
					mu.Unlock()
					return
				}
				n += len(e.Data)
				mu.Lock()
				got[i] = n
				cond.Broadcast()
				mu.Unlock()
			}
		}()
	}
	b.SetBytes(int64(len(chunk)))
	b.ResetTimer()
	for i := range b.N {
		mu.Lock()
		for i*len(chunk)-slices.Min(got) > 64<<10 {
			cond.Wait()
		}
		mu.Unlock()
		if _, err := holder.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	wg.Wait()
}
