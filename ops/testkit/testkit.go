// Package testkit holds the helpers every test package shares: waiting on
// a condition instead of sleeping, and finding or building the metalfleet
// binary for process-level tests.
package testkit

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// Poll is how often Eventually checks its condition.
const Poll = 10 * time.Millisecond

// Eventually waits until cond is true, checking every Poll, and fails the
// test naming what it waited for if limit passes first. It returns how
// long the wait took.
func Eventually(t testing.TB, limit time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	return EventuallyEvery(t, limit, Poll, what, cond)
}

// EventuallyEvery is Eventually checking every every instead of Poll: for
// a condition that costs much to check.
func EventuallyEvery(t testing.TB, limit, every time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(limit)
	tick := time.NewTicker(every)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s", limit, what)
		}
		<-tick.C
	}
	return time.Since(start)
}

// Until is Eventually for a condition that may fail with an error: it
// waits until cond returns nil and reports the last error on timeout.
func Until(t testing.TB, limit time.Duration, what string, cond func() error) {
	t.Helper()
	var last error
	deadline := time.Now().Add(limit)
	tick := time.NewTicker(Poll)
	defer tick.Stop()
	for {
		if last = cond(); last == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s; last error: %v", limit, what, last)
		}
		<-tick.C
	}
}

var (
	binDir    string // set by Main: where Binary builds, removed at exit
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// Main runs a package's tests (call it from TestMain) with a directory of
// its own for the binary Binary builds, and removes that directory when
// they are done.
func Main(m *testing.M) {
	dir, err := os.MkdirTemp("", "metalfleet-bin-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "testkit: %v\n", err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// Binary returns the metalfleet binary to run: $METALFLEET_BIN if set
// (make test sets it), else one built from ./cmd/metalfleet of the module
// that holds the working directory: once per test process in a package
// whose TestMain calls Main, else once per test into t.TempDir().
func Binary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("METALFLEET_BIN"); p != "" {
		return p
	}
	if binDir == "" {
		p := filepath.Join(t.TempDir(), "metalfleet")
		if err := build(p); err != nil {
			t.Fatalf("building metalfleet: %v", err)
		}
		return p
	}
	buildOnce.Do(func() {
		buildPath = filepath.Join(binDir, "metalfleet")
		buildErr = build(buildPath)
	})
	if buildErr != nil {
		t.Fatalf("building metalfleet: %v", buildErr)
	}
	return buildPath
}

// build builds the metalfleet command into path.
func build(path string) error {
	cmd := exec.Command("go", "build", "-o", path, "github.com/metalfleet/metalfleet/cmd/metalfleet")
	if out, err := cmd.CombinedOutput(); err != nil {
		return &buildError{err: err, out: string(out)}
	}
	return nil
}

type buildError struct {
	err error
	out string
}

func (e *buildError) Error() string { return e.err.Error() + "\n" + e.out }

// SyncBuffer is a bytes.Buffer that one goroutine may write while others
// read it (a process's or a logger's output, read by a test's conditions).
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns what was written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
