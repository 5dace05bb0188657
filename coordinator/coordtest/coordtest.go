// Package coordtest starts real coordinators for tests: Raft on loopback
// TCP with bolt stores in t.TempDir, fast timings, and the HTTP API on a
// free port. Logs go to t.Log.
package coordtest

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/cluster/raftnode"
	"github.com/metalfleet/metalfleet/coordinator/server"
)

// Logger returns a slog logger that writes to t.Log at level warn and
// above (set METALFLEET_TEST_LOG=debug for everything).
func Logger(t testing.TB) *slog.Logger {
	level := slog.LevelWarn
	if os.Getenv("METALFLEET_TEST_LOG") == "debug" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: level}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// Server is a running test coordinator.
type Server struct {
	*server.Server
	Cfg    server.Config
	cancel context.CancelFunc
	done   chan error
}

// Config returns a config for a test server with id in dir: loopback
// ports chosen by the kernel and fast Raft timings.
func Config(t testing.TB, id, dir string) server.Config {
	rc := raftnode.TestConfig()
	return server.Config{
		NodeID: id, DataDir: dir, HTTPAddr: "127.0.0.1:0", RaftAddr: "127.0.0.1:0",
		Raft: rc, Logger: Logger(t).With("server", id), Out: devNull(t),
	}
}

func devNull(t testing.TB) *os.File {
	f, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// Start starts a server with cfg and stops it when the test ends.
func Start(t testing.TB, cfg server.Config) *Server {
	t.Helper()
	s, err := server.New(cfg)
	if err != nil {
		t.Fatalf("start %s: %v", cfg.NodeID, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ts := &Server{Server: s, Cfg: cfg, cancel: cancel, done: make(chan error, 1)}
	go func() { ts.done <- s.Run(ctx) }()
	t.Cleanup(func() { ts.Stop() })
	return ts
}

// Stop shuts the server down and waits for it. It is safe to call twice.
func (s *Server) Stop() {
	if s.cancel == nil {
		return
	}
	s.cancel()
	s.cancel = nil
	<-s.done
}

// StartSingle bootstraps a one-server cluster, waits until it leads and
// holds the bootstrap admin token, and returns it with that token.
func StartSingle(t testing.TB) (*Server, string) {
	t.Helper()
	dir := t.TempDir()
	cfg := Config(t, "s1", dir)
	cfg.Bootstrap = true
	s := Start(t, cfg)
	WaitFor(t, 10*time.Second, "leader with admin token", func() bool {
		return s.IsLeader() && len(s.Store().Tokens()) > 0
	})
	return s, AdminToken(t, dir)
}

// AdminToken reads the bootstrap admin token from a data dir.
func AdminToken(t testing.TB, dir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, server.AdminTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// WaitFor polls cond every 10 ms until it holds or d passes.
func WaitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var _ io.Writer = tWriter{}
