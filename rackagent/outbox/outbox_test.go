package outbox

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/metalfleet/metalfleet/ops/testkit"
	"github.com/metalfleet/metalfleet/proto"
)

// Helpers.

func openDB(t testing.TB, path string) *bbolt.DB {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("bbolt.Open(%s): %v", path, err)
	}
	return db
}

// testConfig has fast backoffs and logs to the test.
func testConfig(t testing.TB) Config {
	return Config{
		MinBackoff: time.Millisecond,
		MaxBackoff: 20 * time.Millisecond,
		Logger:     slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
}

// newOutbox opens an outbox on a fresh db in t.TempDir, closed at the end.
func newOutbox(t testing.TB, cfg Config) (*Outbox, *bbolt.DB, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "agent.db")
	db := openDB(t, path)
	t.Cleanup(func() { db.Close() })
	o, err := Open(db, cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return o, db, path
}

func reports(prefix string, n int) []proto.AgentReport {
	rs := make([]proto.AgentReport, n)
	for i := range rs {
		rs[i] = proto.AgentReport{
			ID:         fmt.Sprintf("%s-%04d", prefix, i),
			Kind:       proto.ReportPower,
			Rack:       "r1",
			Agent:      "ra1",
			Node:       fmt.Sprintf("node-%d", i),
			PowerState: "on",
		}
	}
	return rs
}

func ids(rs []proto.AgentReport) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.ID
	}
	return out
}

func addAll(t testing.TB, o *Outbox, rs []proto.AgentReport) {
	t.Helper()
	for _, r := range rs {
		if _, err := o.Add(r); err != nil {
			t.Fatalf("Add(%s): %v", r.ID, err)
		}
	}
}

// startRun runs o.Run in the background; stop cancels it and returns
// Run's error. The test's cleanup stops it too.
func startRun(t testing.TB, o *Outbox, s Sender) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- o.Run(ctx, s) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				err = errors.New("Run did not return 10s after cancel")
			}
		})
		return err
	}
	t.Cleanup(func() { stop() })
	return stop
}

// waitFor waits until cond holds or the bound passes.
func waitFor(t testing.TB, bound time.Duration, what string, cond func() bool) {
	t.Helper()
	testkit.Eventually(t, bound, what, cond)
}

// queuedIDs reads the ids in the bucket in key order.
func queuedIDs(t testing.TB, db *bbolt.DB, bucket string) []string {
	t.Helper()
	var out []string
	err := db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket([]byte(bucket)).ForEach(func(k, v []byte) error {
			var r struct{ ID string }
			if err := json.Unmarshal(v, &r); err != nil {
				return err
			}
			out = append(out, r.ID)
			return nil
		})
	})
	if err != nil {
		t.Fatalf("reading bucket: %v", err)
	}
	return out
}

// Tests.

func TestAddFillsIDAndTime(t *testing.T) {
	now := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)
	given := now.Add(-time.Hour)
	cfg := testConfig(t)
	cfg.Now = func() time.Time { return now }
	o, db, _ := newOutbox(t, cfg)

	tests := []struct {
		name     string
		in       proto.AgentReport
		wantID   string // "" means: a fresh uuid
		wantTime time.Time
	}{
		{"empty id and time", proto.AgentReport{Kind: proto.ReportMACSeen}, "", now},
		{"given id and time kept", proto.AgentReport{ID: "given", Kind: proto.ReportPower, Time: given}, "given", given},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := o.Add(tt.in)
			if err != nil {
				t.Fatalf("Add: %v", err)
			}
			if tt.wantID != "" && id != tt.wantID {
				t.Errorf("Add() id = %q, want %q", id, tt.wantID)
			}
			if tt.wantID == "" && len(id) != 36 {
				t.Errorf("Add() id = %q, want a uuid", id)
			}
			items, _, err := o.oldest()
			if err != nil {
				t.Fatal(err)
			}
			got := items[len(items)-1].r
			if got.ID != id || !got.Time.Equal(tt.wantTime) || got.Kind != tt.in.Kind {
				t.Errorf("stored %+v, want id %q time %v kind %q", got, id, tt.wantTime, tt.in.Kind)
			}
		})
	}

	rs := []proto.AgentReport{{Kind: proto.ReportLease}, {Kind: proto.ReportLease}}
	if err := o.AddBatch(rs); err != nil {
		t.Fatalf("AddBatch: %v", err)
	}
	if rs[0].ID == "" || rs[0].ID == rs[1].ID {
		t.Errorf("AddBatch ids = %q, %q, want two distinct uuids", rs[0].ID, rs[1].ID)
	}
	if got := queuedIDs(t, db, "outbox"); len(got) != 4 || got[2] != rs[0].ID || got[3] != rs[1].ID {
		t.Errorf("queued = %v, want 4 ending with %s %s", got, rs[0].ID, rs[1].ID)
	}
	if o.Len() != 4 {
		t.Errorf("Len() = %d, want 4", o.Len())
	}
}

func TestOrderAndBatching(t *testing.T) {
	cfg := testConfig(t)
	cfg.MaxBatch = 64
	o, _, _ := newOutbox(t, cfg)
	rs := reports("r", 1000)
	// Half one by one, half in batches of 50: all in insertion order.
	addAll(t, o, rs[:500])
	for i := 500; i < 1000; i += 50 {
		if err := o.AddBatch(rs[i : i+50]); err != nil {
			t.Fatalf("AddBatch: %v", err)
		}
	}
	if o.Len() != 1000 {
		t.Fatalf("Len() = %d, want 1000", o.Len())
	}

	f := newFakeSender()
	stop := startRun(t, o, f)
	waitFor(t, 30*time.Second, "Len() == 0", func() bool { return o.Len() == 0 })
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}

	var sent []string
	for i, b := range f.sentBatches() {
		if len(b) > cfg.MaxBatch || len(b) == 0 {
			t.Errorf("batch %d has %d reports, want 1..%d", i, len(b), cfg.MaxBatch)
		}
		sent = append(sent, b...)
	}
	if !slices.Equal(sent, ids(rs)) {
		t.Errorf("sent %d reports, want the 1000 in insertion order once each", len(sent))
	}
	if st := o.Stats(); st.Sent != 1000 || st.Rejected != 0 || st.Retries != 0 {
		t.Errorf("Stats() = %+v, want 1000 sent", st)
	}
}

func TestCoordinatorAway(t *testing.T) {
	cfg := testConfig(t)
	cfg.MaxBatch = 32
	o, _, _ := newOutbox(t, cfg)
	f := newFakeSender()
	f.down = true
	startRun(t, o, f)

	// Adds keep working while every Send fails.
	rs := reports("away", 200)
	addAll(t, o, rs[:100])
	waitFor(t, 10*time.Second, "3 failed sends", func() bool { _, failed := f.counts(); return failed >= 3 })
	addAll(t, o, rs[100:150])
	if o.Len() != 150 {
		t.Fatalf("Len() = %d while coordinator away, want 150", o.Len())
	}
	if len(f.appliedIDs()) != 0 {
		t.Fatalf("applied %d while down, want 0", len(f.appliedIDs()))
	}

	// It comes back, but loses the first two acks; more adds meanwhile.
	f.set(func(f *fakeSender) { f.down = false; f.dropAcks = 2 })
	addAll(t, o, rs[150:])
	waitFor(t, 30*time.Second, "Len() == 0", func() bool { return o.Len() == 0 })

	got := f.appliedIDs()
	if !slices.Equal(got, ids(rs)) {
		t.Errorf("applied %d reports, want all 200 once each in order; got %v", len(got), got)
	}
	dupes := f.dupes()
	t.Logf("duplicates sent (ignored by the FSM): %d; stats %+v", dupes, o.Stats())
	if dupes == 0 {
		t.Errorf("dupes = 0, want > 0: two acks were lost, so those reports went twice")
	}
	if st := o.Stats(); st.Retries < 5 || st.Sent != 200 {
		t.Errorf("Stats() = %+v, want >= 5 retries and 200 sent", st)
	}
}

func TestRestartWithoutRun(t *testing.T) {
	cfg := testConfig(t)
	o, db, path := newOutbox(t, cfg)
	rs := reports("restart", 500)
	addAll(t, o, rs[:250])
	if err := o.AddBatch(rs[250:]); err != nil {
		t.Fatal(err)
	}
	db.Close() // the agent dies before it delivers anything

	db = openDB(t, path)
	defer db.Close()
	o, err := Open(db, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if o.Len() != 500 {
		t.Fatalf("Len() after reopen = %d, want 500", o.Len())
	}
	f := newFakeSender()
	stop := startRun(t, o, f)
	waitFor(t, 30*time.Second, "Len() == 0", func() bool { return o.Len() == 0 })
	stop()
	if got := f.appliedIDs(); !slices.Equal(got, ids(rs)) {
		t.Errorf("applied %d, want the 500 in order once each", len(got))
	}
}

func TestRestartAfterLostAcks(t *testing.T) {
	cfg := testConfig(t)
	cfg.MaxBatch = 50
	o, db, path := newOutbox(t, cfg)
	rs := reports("lost", 500)
	if err := o.AddBatch(rs); err != nil {
		t.Fatal(err)
	}

	// The coordinator applies every batch but no ack comes back; the
	// agent dies mid-delivery.
	f := newFakeSender()
	f.dropAcks = 1 << 30
	stop := startRun(t, o, f)
	waitFor(t, 10*time.Second, "some reports applied", func() bool { return len(f.appliedIDs()) >= 50 })
	stop()
	db.Close()

	db = openDB(t, path)
	defer db.Close()
	o, err := Open(db, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if o.Len() != 500 {
		t.Fatalf("Len() after reopen = %d, want 500 (no ack arrived)", o.Len())
	}
	f.set(func(f *fakeSender) { f.dropAcks = 0 })
	stop = startRun(t, o, f)
	waitFor(t, 30*time.Second, "Len() == 0", func() bool { return o.Len() == 0 })
	stop()

	if got := f.appliedIDs(); !slices.Equal(got, ids(rs)) {
		t.Errorf("applied %d, want the 500 exactly, once each, in order", len(got))
	}
	if f.dupes() == 0 {
		t.Errorf("dupes = 0, want > 0 (applied batches were resent)")
	}
	t.Logf("duplicates sent: %d", f.dupes())
}

// The child side of TestSIGKILL: add reports to the db named in the
// environment, printing each id once Add has returned, until killed.
const childEnv = "OUTBOX_TEST_CHILD_DB"

func TestSIGKILLChild(t *testing.T) {
	path := os.Getenv(childEnv)
	if path == "" {
		t.Skip("the child process of TestSIGKILL")
	}
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: 10 * time.Second})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	o, err := Open(db, Config{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	for i := range 100000 {
		r := proto.AgentReport{Kind: proto.ReportBootEvent, Node: fmt.Sprint(i), Event: "script"}
		id, err := o.Add(r)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		fmt.Fprintf(os.Stdout, "added %d %s\n", i, id)
	}
	os.Exit(3) // never killed: the parent reports it
}

func TestSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("starts child processes")
	}
	path := filepath.Join(t.TempDir(), "agent.db")
	var added []string // every id a child said was durable, in order

	// Three children in turn add to the same db; each is killed at a
	// random point.
	for round := range 3 {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestSIGKILLChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), childEnv+"="+path)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		killAfter := 1 + rand.IntN(300)
		n := 0
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var i int
			var id string
			if _, err := fmt.Sscanf(sc.Text(), "added %d %s", &i, &id); err != nil {
				continue // not ours
			}
			added = append(added, id)
			if n++; n == killAfter {
				// The child goes on adding: the kill lands somewhere
				// inside a later Add.
				if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
					t.Fatalf("kill %d: %v", cmd.Process.Pid, err)
				}
			}
		}
		err = cmd.Wait()
		cancel()
		ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
		if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
			t.Fatalf("round %d: child ended with %v, want killed by SIGKILL; stderr:\n%s", round, err, stderr.String())
		}
		t.Logf("round %d: child pid %d killed after it printed %d adds (%d in all)", round, cmd.Process.Pid, n, len(added))
	}

	db := openDB(t, path)
	defer db.Close()
	o, err := Open(db, testConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	// Every printed id is queued, in the order printed. An Add may have
	// committed in the instant before the kill without its line printed:
	// at most one more a round.
	queued := queuedIDs(t, db, "outbox")
	if o.Len() != len(queued) {
		t.Errorf("Len() = %d, bucket holds %d", o.Len(), len(queued))
	}
	if len(queued) < len(added) || len(queued) > len(added)+3 {
		t.Errorf("queued %d, children printed %d adds, want %d..%d", len(queued), len(added), len(added), len(added)+3)
	}
	if lost := missing(added, queued); len(lost) > 0 {
		t.Fatalf("%d reports lost after SIGKILL: %v", len(lost), lost)
	}

	f := newFakeSender()
	stop := startRun(t, o, f)
	waitFor(t, 30*time.Second, "Len() == 0", func() bool { return o.Len() == 0 })
	stop()
	applied := f.appliedIDs()
	if !slices.Equal(applied, queued) {
		t.Errorf("applied %d, want the %d queued in order", len(applied), len(queued))
	}
	if lost := missing(added, applied); len(lost) > 0 {
		t.Errorf("%d printed reports never delivered: %v", len(lost), lost)
	}
}

// missing returns the ids of want that are absent from got or out of
// want's order in it.
func missing(want, got []string) []string {
	pos := make(map[string]int, len(got))
	for i, id := range got {
		pos[id] = i
	}
	var out []string
	last := -1
	for _, id := range want {
		p, ok := pos[id]
		if !ok || p < last {
			out = append(out, id)
			continue
		}
		last = p
	}
	return out
}

// TestSettle drives single deliveries and checks what is deleted, kept,
// applied and logged.
func TestSettle(t *testing.T) {
	tests := []struct {
		name       string
		fault      func(f *fakeSender)
		wantErr    bool
		wantN      int      // reports settled by the first delivery
		wantQueued []string // left after the first delivery
		wantLog    []string // in the log of the first delivery
		wantFinal  []string // applied once the queue is empty
	}{{
		name:       "all acked",
		wantN:      6,
		wantQueued: nil,
		wantFinal:  []string{"s-0000", "s-0001", "s-0002", "s-0003", "s-0004", "s-0005"},
	}, {
		name:       "partial ack keeps the rest",
		fault:      func(f *fakeSender) { f.ackLimit = 2 },
		wantN:      2,
		wantQueued: []string{"s-0002", "s-0003", "s-0004", "s-0005"},
		wantFinal:  []string{"s-0000", "s-0001", "s-0002", "s-0003", "s-0004", "s-0005"},
	}, {
		name:       "rejected dropped and logged",
		fault:      func(f *fakeSender) { f.reject = map[string]string{"s-0001": "unknown node", "s-0004": "bad lease"} },
		wantN:      6,
		wantQueued: nil,
		wantLog: []string{
			`level=WARN msg="report rejected, dropping it" component=outbox id=s-0001 kind=power reason="unknown node"`,
			`level=WARN msg="report rejected, dropping it" component=outbox id=s-0004 kind=power reason="bad lease"`,
		},
		wantFinal: []string{"s-0000", "s-0002", "s-0003", "s-0005"},
	}, {
		name: "rejected with partial ack",
		fault: func(f *fakeSender) {
			f.reject = map[string]string{"s-0000": "gone"}
			f.ackLimit = 2
		},
		wantN:      3,
		wantQueued: []string{"s-0003", "s-0004", "s-0005"},
		wantLog:    []string{`id=s-0000 kind=power reason=gone`},
		wantFinal:  []string{"s-0001", "s-0002", "s-0003", "s-0004", "s-0005"},
	}, {
		name:       "send error keeps all",
		fault:      func(f *fakeSender) { f.failNext = 1 },
		wantErr:    true,
		wantQueued: []string{"s-0000", "s-0001", "s-0002", "s-0003", "s-0004", "s-0005"},
		wantFinal:  []string{"s-0000", "s-0001", "s-0002", "s-0003", "s-0004", "s-0005"},
	}, {
		name:       "lost ack keeps all",
		fault:      func(f *fakeSender) { f.dropAcks = 1 },
		wantErr:    true,
		wantQueued: []string{"s-0000", "s-0001", "s-0002", "s-0003", "s-0004", "s-0005"},
		wantFinal:  []string{"s-0000", "s-0001", "s-0002", "s-0003", "s-0004", "s-0005"},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs bytes.Buffer
			cfg := testConfig(t)
			cfg.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{
				ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
					if a.Key == slog.TimeKey {
						return slog.Attr{}
					}
					return a
				},
			}))
			o, db, _ := newOutbox(t, cfg)
			if err := o.AddBatch(reports("s", 6)); err != nil {
				t.Fatal(err)
			}
			f := newFakeSender()
			if tt.fault != nil {
				tt.fault(f)
			}

			n, err := o.deliver(t.Context(), f)
			if (err != nil) != tt.wantErr || (err == nil && n != tt.wantN) {
				t.Fatalf("deliver() = %d, %v, want %d, error %v", n, err, tt.wantN, tt.wantErr)
			}
			if got := queuedIDs(t, db, "outbox"); !slices.Equal(got, tt.wantQueued) {
				t.Errorf("queued after one delivery = %v, want %v", got, tt.wantQueued)
			}
			if o.Len() != len(tt.wantQueued) {
				t.Errorf("Len() = %d, want %d", o.Len(), len(tt.wantQueued))
			}
			for _, want := range tt.wantLog {
				if !strings.Contains(logs.String(), want) {
					t.Errorf("log lacks %q; log:\n%s", want, logs.String())
				}
			}

			for range 10 {
				if n, _ := o.deliver(t.Context(), f); n < 0 {
					break
				}
			}
			if got := f.appliedIDs(); !slices.Equal(got, tt.wantFinal) || o.Len() != 0 {
				t.Errorf("applied = %v with Len() %d, want %v and 0", got, o.Len(), tt.wantFinal)
			}
			if f.dupes() != 0 && !tt.wantErr {
				t.Errorf("dupes = %d, want 0", f.dupes())
			}
		})
	}
}

func TestUnreadableValueDropped(t *testing.T) {
	var logs bytes.Buffer
	cfg := testConfig(t)
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	o, db, _ := newOutbox(t, cfg)
	if _, err := o.Add(proto.AgentReport{ID: "a"}); err != nil {
		t.Fatal(err)
	}
	err := db.Update(func(tx *bbolt.Tx) error {
		return tx.Bucket([]byte("outbox")).Put(binary.BigEndian.AppendUint64(nil, 0), []byte("{not json"))
	})
	if err != nil {
		t.Fatal(err)
	}
	o, err = Open(db, cfg) // recount
	if err != nil || o.Len() != 2 {
		t.Fatalf("Open() Len = %d, %v, want 2", o.Len(), err)
	}
	f := newFakeSender()
	for range 3 {
		o.deliver(t.Context(), f)
	}
	if got := f.appliedIDs(); !slices.Equal(got, []string{"a"}) || o.Len() != 0 {
		t.Errorf("applied %v, Len %d, want [a] and 0", got, o.Len())
	}
	if !strings.Contains(logs.String(), "unreadable report") {
		t.Errorf("log lacks the unreadable report:\n%s", logs.String())
	}
}

func TestErrFull(t *testing.T) {
	cfg := testConfig(t)
	cfg.MaxQueued = 10
	o, db, path := newOutbox(t, cfg)
	rs := reports("full", 13)
	addAll(t, o, rs[:9])
	if err := o.AddBatch(rs[9:11]); !errors.Is(err, ErrFull) {
		t.Errorf("AddBatch of 2 with 9 queued = %v, want ErrFull", err)
	}
	if o.Len() != 9 {
		t.Errorf("Len() = %d after a refused batch, want 9", o.Len())
	}
	addAll(t, o, rs[9:10])
	if _, err := o.Add(rs[10]); !errors.Is(err, ErrFull) {
		t.Errorf("Add with 10 queued = %v, want ErrFull", err)
	}

	// The count survives a restart.
	db.Close()
	db = openDB(t, path)
	defer db.Close()
	o, err := Open(db, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := o.Add(rs[10]); !errors.Is(err, ErrFull) {
		t.Errorf("Add with 10 queued after reopen = %v, want ErrFull", err)
	}

	// Delivery makes room.
	f := newFakeSender()
	if n, err := o.deliver(t.Context(), f); n != 10 || err != nil {
		t.Fatalf("deliver() = %d, %v, want 10, nil", n, err)
	}
	if _, err := o.Add(rs[10]); err != nil {
		t.Errorf("Add after delivery = %v, want nil", err)
	}
}

func TestWakeOnAdd(t *testing.T) {
	cfg := testConfig(t)
	// Backoffs far longer than the bound: only the wake-up can deliver.
	cfg.MinBackoff, cfg.MaxBackoff = time.Hour, time.Hour
	o, _, _ := newOutbox(t, cfg)
	f := newFakeSender()
	startRun(t, o, f)

	for i := range 3 {
		id, err := o.Add(proto.AgentReport{Kind: proto.ReportPower})
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, 2*time.Second, fmt.Sprintf("report %d delivered", i), func() bool {
			return slices.Contains(f.appliedIDs(), id)
		})
	}
	if calls, _ := f.counts(); calls != 3 {
		t.Errorf("Send calls = %d, want 3 (no polling while idle)", calls)
	}
}

func TestRunStops(t *testing.T) {
	tests := []struct {
		name  string
		fault func(f *fakeSender)
		add   bool
	}{
		{"idle", nil, false},
		{"backing off", func(f *fakeSender) { f.down = true }, true},
		{"inside Send", func(f *fakeSender) { f.block = true }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t)
			cfg.MinBackoff, cfg.MaxBackoff = time.Hour, time.Hour
			o, _, _ := newOutbox(t, cfg)
			f := newFakeSender()
			if tt.fault != nil {
				tt.fault(f)
			}
			if tt.add {
				addAll(t, o, reports("stop", 3))
			}
			ctx, cancel := context.WithCancel(t.Context())
			done := make(chan error, 1)
			go func() { done <- o.Run(ctx, f) }()
			// Wait until the first Run holds the outbox (a fixed sleep
			// could lose the race on a loaded machine, and the second Run
			// would then be the one running).
			waitFor(t, 5*time.Second, "Run to start", o.running.Load)
			// Wait until it is in the state under test.
			switch tt.name {
			case "backing off":
				waitFor(t, 5*time.Second, "a failed send", func() bool { _, failed := f.counts(); return failed > 0 })
			case "inside Send":
				waitFor(t, 5*time.Second, "a send", func() bool { calls, _ := f.counts(); return calls > 0 })
			}

			// A second Run is refused while the first runs.
			sctx, scancel := context.WithTimeout(t.Context(), 2*time.Second)
			if err := o.Run(sctx, f); !errors.Is(err, ErrRunning) {
				t.Errorf("second Run() = %v, want ErrRunning", err)
			}
			scancel()

			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run() = %v after cancel, want nil", err)
				}
			case <-time.After(2 * time.Second):
				t.Fatal("Run did not return within 2s of cancel")
			}
			if tt.add && o.Len() != 3 {
				t.Errorf("Len() = %d after stop, want 3 kept", o.Len())
			}

			// Once it has returned, Run may start again.
			f.set(func(f *fakeSender) { f.down, f.block = false, false })
			stop := startRun(t, o, f)
			if tt.add {
				waitFor(t, 2*time.Second, "delivery by the second Run", func() bool { return o.Len() == 0 })
			}
			if err := stop(); err != nil {
				t.Errorf("second Run() = %v", err)
			}
		})
	}
}

func TestSharedDB(t *testing.T) {
	cfg := testConfig(t)
	cfg.Bucket = "reports"
	o, db, _ := newOutbox(t, cfg)
	err := db.Update(func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucket([]byte("leases"))
		if err != nil {
			return err
		}
		return b.Put([]byte("k"), []byte("v"))
	})
	if err != nil {
		t.Fatal(err)
	}
	addAll(t, o, reports("x", 3))
	o2, err := Open(db, Config{Bucket: "other"})
	if err != nil || o2.Len() != 0 || o.Len() != 3 {
		t.Fatalf("second outbox in another bucket: Len %d (first %d), %v; want 0 (3), nil", o2.Len(), o.Len(), err)
	}
	if got := queuedIDs(t, db, "reports"); len(got) != 3 {
		t.Errorf("bucket reports holds %v, want 3", got)
	}
}

func TestBackoff(t *testing.T) {
	o := &Outbox{cfg: Config{MinBackoff: 100 * time.Millisecond, MaxBackoff: time.Second}}
	tests := []struct {
		attempt  int
		min, max time.Duration
	}{
		{1, 50 * time.Millisecond, 100 * time.Millisecond},
		{2, 100 * time.Millisecond, 200 * time.Millisecond},
		{4, 400 * time.Millisecond, 800 * time.Millisecond},
		{5, 500 * time.Millisecond, time.Second},
		{60, 500 * time.Millisecond, time.Second},
	}
	for _, tt := range tests {
		for range 100 {
			if d := o.backoff(tt.attempt); d < tt.min || d > tt.max {
				t.Fatalf("backoff(%d) = %v, want in [%v, %v]", tt.attempt, d, tt.min, tt.max)
			}
		}
	}
}

// Benchmarks: durable adds, each committed (and fsynced) before it
// returns.

func BenchmarkAdd(b *testing.B) {
	cfg := Config{MaxQueued: 1 << 40, Logger: slog.New(slog.DiscardHandler)}
	o, _, _ := newOutbox(b, cfg)
	r := reports("bench", 1)[0]
	for b.Loop() {
		r.ID = ""
		if _, err := o.Add(r); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "adds/s")
}

func BenchmarkAddBatch100(b *testing.B) {
	cfg := Config{MaxQueued: 1 << 40, Logger: slog.New(slog.DiscardHandler)}
	o, _, _ := newOutbox(b, cfg)
	rs := reports("bench", 100)
	for b.Loop() {
		for i := range rs {
			rs[i].ID = ""
		}
		if err := o.AddBatch(rs); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "batches/s")
	b.ReportMetric(float64(100*b.N)/b.Elapsed().Seconds(), "reports/s")
}

// TestIncarnationAndSeq: every report gets the outbox's incarnation,
// made anew at every Open (every agent start), stored in the report when
// it is added, and a Seq that grows in the order of Add. Reports queued
// before a reopen keep their incarnation; a copy of an old db (a data
// directory rolled back) sends its new reports under a new incarnation, so
// the coordinator cannot take them for repeats of the lost ones.
func TestIncarnationAndSeq(t *testing.T) {
	cfg := testConfig(t)
	o, db, path := newOutbox(t, cfg)
	inc := o.Incarnation()
	if !proto.IsUUID(inc) {
		t.Fatalf("Incarnation() = %q, want a uuid", inc)
	}
	rs := reports("seq", 5)
	addAll(t, o, rs[:2])
	if err := o.AddBatch(rs[2:]); err != nil {
		t.Fatal(err)
	}
	for i, r := range rs[2:] {
		if r.Seq != uint64(i+3) || r.Incarnation != inc {
			t.Errorf("AddBatch set report %d to seq %d incarnation %q, want %d %q", i+2, r.Seq, r.Incarnation, i+3, inc)
		}
	}
	db.Close()
	// A backup of the data directory, taken now.
	backup := filepath.Join(t.TempDir(), "backup.db")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(backup, b, 0o600); err != nil {
		t.Fatal(err)
	}
	db = openDB(t, path)
	o, err = Open(db, cfg)
	if err != nil {
		t.Fatal(err)
	}
	inc2 := o.Incarnation()
	if inc2 == inc || !proto.IsUUID(inc2) {
		t.Errorf("Incarnation() after reopen = %q, want a new uuid (not %q)", inc2, inc)
	}
	addAll(t, o, reports("after", 1))
	f := newFakeSender()
	drainAll(t, o, f)
	for i, id := range f.appliedIDs() {
		r := f.reports[id]
		want := inc
		if i == 5 {
			want = inc2
		}
		if r.Seq != uint64(i+1) || r.Incarnation != want {
			t.Errorf("report %d (%s) delivered with seq %d incarnation %q, want %d %q", i, id, r.Seq, r.Incarnation, i+1, want)
		}
	}
	if len(f.appliedIDs()) != 6 {
		t.Errorf("delivered %d, want 6", len(f.appliedIDs()))
	}
	db.Close()

	// Rolled back to the backup: its queued reports keep their
	// incarnation, new ones get a third, though their seq repeats.
	db = openDB(t, backup)
	defer db.Close()
	o, err = Open(db, cfg)
	if err != nil {
		t.Fatal(err)
	}
	inc3 := o.Incarnation()
	if inc3 == inc || inc3 == inc2 {
		t.Errorf("Incarnation() after a rollback = %q, want a new one", inc3)
	}
	nr := reports("rolled", 1)
	addAll(t, o, nr)
	drainAll(t, o, f)
	if r, ok := f.reports[nr[0].ID]; !ok || r.Incarnation != inc3 || r.Seq != 6 {
		t.Errorf("the rolled-back db's new report = %+v (delivered %v), want seq 6 of incarnation %q", r, ok, inc3)
	}
}

// TestLegacyReportsKeepOneIncarnation: reports queued without incarnation
// and seq (before reports carried them) are sent with the incarnation kept
// in the db and their key as seq, the same at every Open.
func TestLegacyReportsKeepOneIncarnation(t *testing.T) {
	cfg := testConfig(t)
	o, db, path := newOutbox(t, cfg)
	_ = o
	rs := reports("old", 2)
	if err := db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte("outbox"))
		for _, r := range rs {
			seq, _ := b.NextSequence()
			v, _ := json.Marshal(r)
			if err := b.Put(binary.BigEndian.AppendUint64(nil, seq), v); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var incs []string
	for range 2 {
		db.Close()
		db = openDB(t, path)
		o, err := Open(db, cfg)
		if err != nil {
			t.Fatal(err)
		}
		items, _, err := o.oldest()
		if err != nil || len(items) != 2 {
			t.Fatalf("oldest = %d items, %v", len(items), err)
		}
		if items[1].r.Seq != 2 || items[1].r.Incarnation == "" || items[1].r.Incarnation == o.Incarnation() {
			t.Errorf("legacy report read as seq %d incarnation %q (this Open's: %q), want 2 and the db's kept one",
				items[1].r.Seq, items[1].r.Incarnation, o.Incarnation())
		}
		incs = append(incs, items[1].r.Incarnation)
	}
	db.Close()
	if incs[0] != incs[1] {
		t.Errorf("legacy reports' incarnation changed across opens: %v", incs)
	}
}

// TestBootEventsBudget: boot events (caused by untrusted HTTP requests)
// have a budget of their own; past it they are left out and counted, and
// a batch mixing them with a lease still queues the lease.
func TestBootEventsBudget(t *testing.T) {
	cfg := testConfig(t)
	cfg.MaxQueued, cfg.MaxBootEvents = 20, 5
	o, _, _ := newOutbox(t, cfg)
	var batch []proto.AgentReport
	for i := range 30 {
		batch = append(batch, proto.AgentReport{Kind: proto.ReportBootEvent, Event: "script", MAC: fmt.Sprintf("02:00:00:00:00:%02x", i)})
	}
	batch = append(batch, proto.AgentReport{Kind: proto.ReportLease, LeaseEvent: "bound", MAC: "02:00:00:00:01:01"})
	if err := o.AddBatch(batch); err != nil {
		t.Fatalf("AddBatch(30 boot events + a lease) = %v, want nil", err)
	}
	if o.Len() != 6 || o.BootEvents() != 5 || o.Stats().BootEventsDropped != 25 {
		t.Errorf("Len, BootEvents, BootEventsDropped = %d, %d, %d, want 6, 5, 25", o.Len(), o.BootEvents(), o.Stats().BootEventsDropped)
	}
	if batch[30].Seq == 0 {
		t.Errorf("the lease of the batch was not queued")
	}
	if _, err := o.Add(batch[0]); !errors.Is(err, ErrFull) {
		t.Errorf("Add(boot event) past the budget = %v, want ErrFull", err)
	}
	for i := range 19 {
		if _, err := o.Add(proto.AgentReport{Kind: proto.ReportCallback, Step: "inventory", MAC: "02:00:00:00:02:01"}); err != nil {
			t.Fatalf("Add(callback %d) with %d boot events queued = %v, want nil", i, o.BootEvents(), err)
		}
	}
	f := newFakeSender()
	drainAll(t, o, f)
	if o.BootEvents() != 0 {
		t.Errorf("BootEvents() after delivery = %d, want 0", o.BootEvents())
	}
}

// TestSeqOrderUnderPartialAcks: when the coordinator settles a batch in
// parts (acks a few, rejects one, loses an ack), delivery stays oldest
// first: no report is applied after a later Seq of its incarnation.
func TestSeqOrderUnderPartialAcks(t *testing.T) {
	cfg := testConfig(t)
	cfg.MaxBatch = 16
	o, _, _ := newOutbox(t, cfg)
	rs := reports("part", 100)
	addAll(t, o, rs)
	f := newFakeSender()
	f.ackLimit = 5
	f.dropAcks = 2
	f.reject = map[string]string{rs[7].ID: "bad", rs[40].ID: "bad"}
	stop := startRun(t, o, f)
	waitFor(t, 10*time.Second, "the queue drained", func() bool { return o.Len() == 0 })
	stop()
	if late := f.lateIDs(); len(late) > 0 {
		t.Errorf("reports applied after a later seq (taken for repeats by the coordinator): %v", late)
	}
	if got := len(f.appliedIDs()); got != 98 {
		t.Errorf("applied %d, want 98", got)
	}
}

// TestSightingsBudget: sightings have their own budget; past it they are
// refused (Add) or left out and counted (AddBatch), and a lease or
// callback report is accepted whatever the sightings hold.
func TestSightingsBudget(t *testing.T) {
	cfg := testConfig(t)
	cfg.MaxQueued, cfg.MaxSightings = 20, 5
	o, db, path := newOutbox(t, cfg)
	seen := func(i int) proto.AgentReport {
		return proto.AgentReport{Kind: proto.ReportMACSeen, MAC: fmt.Sprintf("02:00:00:00:00:%02x", i), Count: 1}
	}
	var batch []proto.AgentReport
	for i := range 8 {
		batch = append(batch, seen(i))
	}
	batch = append(batch, proto.AgentReport{Kind: proto.ReportLease, LeaseEvent: "bound", MAC: "02:00:00:00:01:01"})
	if err := o.AddBatch(batch); err != nil {
		t.Fatalf("AddBatch(8 sightings + a lease) = %v, want nil", err)
	}
	if o.Len() != 6 || o.Sightings() != 5 || o.Stats().SightingsDropped != 3 {
		t.Errorf("Len, Sightings, SightingsDropped = %d, %d, %d, want 6, 5, 3", o.Len(), o.Sightings(), o.Stats().SightingsDropped)
	}
	if _, err := o.Add(seen(9)); !errors.Is(err, ErrFull) {
		t.Errorf("Add(sighting) past the budget = %v, want ErrFull", err)
	}
	// Leases and callbacks fill up to MaxQueued of their own.
	for i := range 20 {
		if i == 19 {
			break
		}
		if _, err := o.Add(proto.AgentReport{Kind: proto.ReportCallback, Step: "inventory", MAC: "02:00:00:00:02:01"}); err != nil {
			t.Fatalf("Add(callback %d) with %d sightings queued = %v, want nil", i, o.Sightings(), err)
		}
	}
	if _, err := o.Add(proto.AgentReport{Kind: proto.ReportLease, LeaseEvent: "bound"}); !errors.Is(err, ErrFull) {
		t.Errorf("Add(lease) with 20 leases and callbacks queued = %v, want ErrFull", err)
	}
	// The counts survive a reopen.
	db.Close()
	db = openDB(t, path)
	defer db.Close()
	o, err := Open(db, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if o.Len() != 25 || o.Sightings() != 5 {
		t.Errorf("after reopen Len, Sightings = %d, %d, want 25, 5", o.Len(), o.Sightings())
	}
	// Delivery frees the sightings' budget.
	f := newFakeSender()
	drainAll(t, o, f)
	if o.Sightings() != 0 {
		t.Errorf("Sightings() after delivery = %d, want 0", o.Sightings())
	}
	if _, err := o.Add(seen(10)); err != nil {
		t.Errorf("Add(sighting) after delivery = %v, want nil", err)
	}
}

// drainAll delivers until the queue is empty, failing the test if a
// delivery errs or a thousand rounds leave reports queued.
func drainAll(t *testing.T, o *Outbox, f *fakeSender) {
	t.Helper()
	for i := 0; o.Len() > 0; i++ {
		if i == 1000 {
			t.Fatalf("%d reports still queued after %d deliveries", o.Len(), i)
		}
		if _, err := o.deliver(t.Context(), f); err != nil {
			t.Fatal(err)
		}
	}
}
