// Package raftnode assembles one hashicorp/raft server: a TCP transport,
// raft-boltdb/v2 as log and stable store, and file snapshots, all under
// one data directory, with timings tuned for a LAN.
package raftnode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

// Config configures a Node. DefaultConfig gives LAN timings; a zero
// duration takes the default.
type Config struct {
	// ID is this server's unique, stable id.
	ID string
	// DataDir holds raft.db (log and stable store) and snapshots/.
	DataDir string
	// BindAddr is the TCP address Raft listens on (host:port; port 0
	// picks a free one).
	BindAddr string
	// Advertise is the address other servers dial; empty means BindAddr
	// (which must then not be an unspecified address).
	Advertise string
	// Bootstrap makes this server the first voter of a new cluster if its
	// data directory holds no Raft state yet. Harmless on a restart.
	Bootstrap bool

	// HeartbeatTimeout is how long a follower waits without contact
	// before it stands for election (randomised up to twice this).
	HeartbeatTimeout time.Duration
	// ElectionTimeout is how long a candidate waits for votes.
	ElectionTimeout time.Duration
	// LeaderLeaseTimeout is how long a leader stays leader without
	// contact with a quorum.
	LeaderLeaseTimeout time.Duration
	// CommitTimeout bounds how long a follower may lag behind commits
	// when there is nothing else to send.
	CommitTimeout time.Duration
	// SnapshotThreshold is how many new entries trigger a snapshot.
	SnapshotThreshold uint64
	// SnapshotInterval is how often the threshold is checked.
	SnapshotInterval time.Duration
	// TrailingLogs is how many entries a snapshot leaves in the log, so a
	// follower a little behind can catch up without a snapshot.
	TrailingLogs uint64

	Logger *slog.Logger
}

// DefaultConfig returns LAN timings: a dead leader is noticed within
// 0.5-1 s and replaced shortly after.
func DefaultConfig() Config {
	return Config{
		HeartbeatTimeout:   500 * time.Millisecond,
		ElectionTimeout:    500 * time.Millisecond,
		LeaderLeaseTimeout: 250 * time.Millisecond,
		CommitTimeout:      20 * time.Millisecond,
		SnapshotThreshold:  8192,
		SnapshotInterval:   30 * time.Second,
		TrailingLogs:       10240,
	}
}

// TestConfig returns faster timings for tests on loopback.
func TestConfig() Config {
	c := DefaultConfig()
	c.HeartbeatTimeout = 200 * time.Millisecond
	c.ElectionTimeout = 200 * time.Millisecond
	c.LeaderLeaseTimeout = 100 * time.Millisecond
	c.CommitTimeout = 5 * time.Millisecond
	return c
}

func (c *Config) fill() {
	d := DefaultConfig()
	if c.HeartbeatTimeout == 0 {
		c.HeartbeatTimeout = d.HeartbeatTimeout
	}
	if c.ElectionTimeout == 0 {
		c.ElectionTimeout = d.ElectionTimeout
	}
	if c.LeaderLeaseTimeout == 0 {
		c.LeaderLeaseTimeout = d.LeaderLeaseTimeout
	}
	if c.CommitTimeout == 0 {
		c.CommitTimeout = d.CommitTimeout
	}
	if c.SnapshotThreshold == 0 {
		c.SnapshotThreshold = d.SnapshotThreshold
	}
	if c.SnapshotInterval == 0 {
		c.SnapshotInterval = d.SnapshotInterval
	}
	if c.TrailingLogs == 0 {
		c.TrailingLogs = d.TrailingLogs
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Node is one running Raft server.
type Node struct {
	Raft  *raft.Raft
	id    string
	addr  raft.ServerAddress
	store *raftboltdb.BoltStore
	trans *raft.NetworkTransport
}

// ErrNotLeader is returned by Apply on a server that is not the leader.
var ErrNotLeader = errors.New("not the leader")

// New opens (or creates) the data directory and starts Raft.
func New(cfg Config, fsm raft.FSM) (*Node, error) {
	cfg.fill()
	if cfg.ID == "" {
		return nil, errors.New("raft: a server id is required")
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("raft data dir: %w", err)
	}
	hl := hclog.New(&hclog.LoggerOptions{
		Name:   "raft",
		Level:  hclog.Info,
		Output: &slogWriter{log: cfg.Logger.With("component", "raft")},
	})

	store, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(cfg.DataDir, "raft.db")})
	if err != nil {
		return nil, fmt.Errorf("raft store: %w", err)
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.DataDir, 2, hl)
	if err != nil {
		store.Close()
		return nil, fmt.Errorf("raft snapshots: %w", err)
	}
	var adv net.Addr
	if cfg.Advertise != "" {
		a, err := net.ResolveTCPAddr("tcp", cfg.Advertise)
		if err != nil {
			store.Close()
			return nil, fmt.Errorf("raft advertise address %q: %w", cfg.Advertise, err)
		}
		adv = a
	}
	trans, err := raft.NewTCPTransportWithLogger(cfg.BindAddr, adv, 3, 10*time.Second, hl)
	if err != nil {
		store.Close()
		return nil, fmt.Errorf("raft transport on %s: %w", cfg.BindAddr, err)
	}

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.ID)
	rc.Logger = hl
	rc.HeartbeatTimeout = cfg.HeartbeatTimeout
	rc.ElectionTimeout = cfg.ElectionTimeout
	rc.LeaderLeaseTimeout = cfg.LeaderLeaseTimeout
	rc.CommitTimeout = cfg.CommitTimeout
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	rc.SnapshotInterval = cfg.SnapshotInterval
	rc.TrailingLogs = cfg.TrailingLogs
	rc.BatchApplyCh = true
	rc.MaxAppendEntries = 256

	n := &Node{id: cfg.ID, addr: trans.LocalAddr(), store: store, trans: trans}
	fail := func(err error) (*Node, error) {
		trans.Close()
		store.Close()
		return nil, err
	}
	if cfg.Bootstrap {
		has, err := raft.HasExistingState(store, store, snaps)
		if err != nil {
			return fail(fmt.Errorf("raft state: %w", err))
		}
		if !has {
			conf := raft.Configuration{Servers: []raft.Server{{ID: rc.LocalID, Address: n.addr}}}
			if err := raft.BootstrapCluster(rc, store, store, snaps, trans, conf); err != nil {
				return fail(fmt.Errorf("raft bootstrap: %w", err))
			}
		}
	}
	r, err := raft.NewRaft(rc, fsm, store, store, snaps, trans)
	if err != nil {
		return fail(fmt.Errorf("raft: %w", err))
	}
	n.Raft = r
	return n, nil
}

// ID is this server's id.
func (n *Node) ID() string { return n.id }

// Addr is the address other servers reach this one's Raft at.
func (n *Node) Addr() string { return string(n.addr) }

// IsLeader reports whether this server is the leader now.
func (n *Node) IsLeader() bool { return n.Raft.State() == raft.Leader }

// Leader returns the current leader's id and Raft address, empty if none
// is known.
func (n *Node) Leader() (id, addr string) {
	a, i := n.Raft.LeaderWithID()
	return string(i), string(a)
}

// Apply proposes cmd and waits until it is applied here, or ctx ends.
// It returns what the FSM returned and the entry's index.
func (n *Node) Apply(ctx context.Context, cmd []byte) (any, uint64, error) {
	timeout := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
		if timeout <= 0 {
			return nil, 0, context.DeadlineExceeded
		}
	}
	f := n.Raft.Apply(cmd, timeout)
	if err := f.Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) {
			return nil, 0, ErrNotLeader
		}
		return nil, 0, err
	}
	return f.Response(), f.Index(), nil
}

// VerifyLeader confirms with a quorum that this server is still leader.
func (n *Node) VerifyLeader() error {
	if err := n.Raft.VerifyLeader().Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			return ErrNotLeader
		}
		return err
	}
	return nil
}

// Barrier waits until every entry committed before it, by this leader or
// a predecessor, has been applied to the local FSM, or ctx ends. A new
// leader runs it before it answers consistent reads.
func (n *Node) Barrier(ctx context.Context) error {
	timeout := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
		if timeout <= 0 {
			return context.DeadlineExceeded
		}
	}
	f := n.Raft.Barrier(timeout)
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			return ErrNotLeader
		}
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Shutdown stops Raft and closes the transport and the store.
func (n *Node) Shutdown() error {
	err := n.Raft.Shutdown().Error()
	if cerr := n.trans.Close(); err == nil {
		err = cerr
	}
	if cerr := n.store.Close(); err == nil {
		err = cerr
	}
	return err
}

// slogWriter routes hclog's text lines to slog at the level hclog wrote.
type slogWriter struct{ log *slog.Logger }

func (w *slogWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	level, msg := slog.LevelInfo, line
	for _, l := range []struct {
		tag string
		lv  slog.Level
	}{{"[ERROR]", slog.LevelError}, {"[WARN]", slog.LevelWarn}, {"[INFO]", slog.LevelInfo}, {"[DEBUG]", slog.LevelDebug}, {"[TRACE]", slog.LevelDebug}} {
		if i := strings.Index(line, l.tag); i >= 0 {
			level, msg = l.lv, strings.TrimSpace(line[i+len(l.tag):])
			msg = strings.TrimPrefix(msg, "raft: ")
			break
		}
	}
	w.log.Log(context.Background(), level, msg)
	return len(p), nil
}

var _ io.Writer = (*slogWriter)(nil)
