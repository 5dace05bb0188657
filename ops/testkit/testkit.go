// Package testkit holds the helpers every test package shares: waiting on
// a condition instead of sleeping, and finding or building the metalfleet
// binary for process-level tests.
package testkit

import (
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
	start := time.Now()
	deadline := start.Add(limit)
	tick := time.NewTicker(Poll)
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
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// Binary returns the metalfleet binary to run: $METALFLEET_BIN if set
// (make test sets it), else one built once per test process from
// ./cmd/metalfleet of the module that holds the working directory.
func Binary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("METALFLEET_BIN"); p != "" {
		return p
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "metalfleet-bin-")
		if err != nil {
			buildErr = err
			return
		}
		buildPath = filepath.Join(dir, "metalfleet")
		cmd := exec.Command("go", "build", "-o", buildPath, "github.com/metalfleet/metalfleet/cmd/metalfleet")
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = &buildError{err: err, out: string(out)}
		}
	})
	if buildErr != nil {
		t.Fatalf("building metalfleet: %v", buildErr)
	}
	return buildPath
}

type buildError struct {
	err error
	out string
}

func (e *buildError) Error() string { return e.err.Error() + "\n" + e.out }
