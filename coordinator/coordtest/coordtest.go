// Package coordtest starts real coordinators for tests: Raft on loopback
// TCP with bolt stores in t.TempDir, fast timings, and the HTTP API on a
// free port. Logs go to t.Log.
package coordtest

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/cluster/raftnode"
	"github.com/metalfleet/metalfleet/coordinator/server"
	"github.com/metalfleet/metalfleet/ops/testkit"
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
	return runServer(t, s, cfg)
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

// WaitFor waits until cond holds or d passes (testkit.Eventually).
func WaitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	testkit.Eventually(t, d, what, cond)
}

var _ io.Writer = tWriter{}

// Cluster is N real coordinators on loopback: the first bootstraps, the
// others join through its API with the admin token.
type Cluster struct {
	t       testing.TB
	Servers []*Server // nil where killed
	cfgs    []server.Config
	// Token is the bootstrap admin token.
	Token string
}

// StartCluster starts n servers and waits until all are voters and agree
// on a leader.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	c := &Cluster{t: t, Servers: make([]*Server, n), cfgs: make([]server.Config, n)}
	for i := 0; i < n; i++ {
		cfg := Config(t, fmt.Sprintf("s%d", i+1), t.TempDir())
		if i == 0 {
			cfg.Bootstrap = true
		} else {
			cfg.JoinURL, cfg.JoinToken = c.Servers[0].HTTPAddr(), c.Token
		}
		s := Start(t, cfg)
		// Pin the ports the kernel chose, so a restart comes back at the
		// same addresses, as a real server would.
		cfg.HTTPAddr, cfg.RaftAddr = s.HTTPAddr(), s.RaftAddr()
		s.Cfg = cfg
		c.Servers[i], c.cfgs[i] = s, cfg
		if i == 0 {
			WaitFor(t, 10*time.Second, "first leader", func() bool { return s.IsLeader() && len(s.Store().Tokens()) > 0 })
			c.Token = AdminToken(t, cfg.DataDir)
		}
	}
	WaitFor(t, 20*time.Second, "all servers joined", func() bool {
		for _, s := range c.Servers {
			if len(s.Store().Servers()) != n {
				return false
			}
			if id, _ := s.Raft().Leader(); id == "" {
				return false
			}
		}
		return true
	})
	return c
}

// Leader waits for a leader among the running servers and returns its
// position.
func (c *Cluster) Leader() int {
	c.t.Helper()
	var idx int
	WaitFor(c.t, 15*time.Second, "a leader", func() bool {
		for i, s := range c.Servers {
			if s != nil && s.IsLeader() {
				idx = i
				return true
			}
		}
		return false
	})
	return idx
}

// Follower returns the position of a running server that is not leader.
func (c *Cluster) Follower() int {
	c.t.Helper()
	l := c.Leader()
	for i, s := range c.Servers {
		if s != nil && i != l {
			return i
		}
	}
	c.t.Fatalf("no running follower")
	return -1
}

// Kill stops server i (Raft and API); its data dir stays.
func (c *Cluster) Kill(i int) {
	c.Servers[i].Stop()
	c.Servers[i] = nil
}

// Restart starts server i again from its data dir with its first config.
func (c *Cluster) Restart(i int) *Server {
	c.t.Helper()
	cfg := c.cfgs[i]
	var s *Server
	// The old listeners' ports may take a moment to be free again.
	WaitFor(c.t, 10*time.Second, "restart "+cfg.NodeID, func() bool {
		srv, err := server.New(cfg)
		if err != nil {
			return false
		}
		s = runServer(c.t, srv, cfg)
		return true
	})
	c.Servers[i] = s
	return s
}

func runServer(t testing.TB, srv *server.Server, cfg server.Config) *Server {
	ctx, cancel := context.WithCancel(context.Background())
	ts := &Server{Server: srv, Cfg: cfg, cancel: cancel, done: make(chan error, 1)}
	go func() { ts.done <- srv.Run(ctx) }()
	t.Cleanup(func() { ts.Stop() })
	return ts
}
