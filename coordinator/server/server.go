// Package server is the coordinator's composition root: it wires the state
// store, the FSM, a Raft node and the HTTP API together, runs the
// leader-only duties, bootstraps or joins a cluster, and shuts it all down
// on cancel.
package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/metalfleet/metalfleet/cluster/gossip"
	"github.com/metalfleet/metalfleet/cluster/raftnode"
	"github.com/metalfleet/metalfleet/coordinator/fsm"
	"github.com/metalfleet/metalfleet/coordinator/httpapi"
	"github.com/metalfleet/metalfleet/coordinator/state"
	"github.com/metalfleet/metalfleet/proto"
)

// Config configures a coordinator server.
type Config struct {
	// NodeID is this server's stable, unique id.
	NodeID string
	// DataDir holds the Raft log, snapshots and (with Bootstrap) admin.token.
	DataDir string
	// HTTPAddr is where the API listens (host:port; port 0 picks one).
	HTTPAddr string
	// HTTPAdvertise is the API address other servers reach this one at;
	// empty means the listener's address.
	HTTPAdvertise string
	// RaftAddr is where Raft listens; RaftAdvertise as for HTTP.
	RaftAddr      string
	RaftAdvertise string
	// Bootstrap makes this the first server of a new cluster.
	Bootstrap bool
	// JoinURL is any member's API address; with JoinToken (an admin
	// token) the server asks to be added as a voter.
	JoinURL   string
	JoinToken string
	// GossipAddr is where this server gossips with rack agents and the
	// other coordinators ("" disables gossip; GET /v1/agents then lists
	// none). GossipJoin lists members to join; GossipKey encrypts.
	GossipAddr    string
	GossipJoin    []string
	GossipKey     []byte
	GossipProfile string
	// Raft timings; zero fields take raftnode.DefaultConfig's.
	Raft raftnode.Config
	// API settings; zero fields take the defaults.
	API httpapi.Config

	Logger *slog.Logger
	// Out receives the one-time print of a new admin token (default
	// stdout).
	Out *os.File
}

// Server is one running coordinator.
type Server struct {
	cfg   Config
	log   *slog.Logger
	store *state.Store
	fsm   *fsm.FSM
	raft  *raftnode.Node
	api   *httpapi.API
	ln    net.Listener
	reg   *prometheus.Registry
	http  *http.Server

	applyLatency prometheus.Histogram
	gossip       *gossip.Gossip

	bootstrapSecret string // admin secret still to be stored, if any

	mu      sync.Mutex
	leading context.CancelFunc // stops the leader duties
}

// AdminTokenFile is the name of the bootstrap admin token's file in DataDir.
const AdminTokenFile = "admin.token"

// New opens the data directory, starts Raft and binds the API listener. It
// serves nothing until Run.
func New(cfg Config) (*Server, error) {
	if cfg.NodeID == "" {
		return nil, errors.New("a node id is required (--node-id)")
	}
	if cfg.DataDir == "" {
		return nil, errors.New("a data directory is required (--data-dir)")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Out == nil {
		cfg.Out = os.Stdout
	}
	if cfg.Bootstrap && cfg.JoinURL != "" {
		return nil, errors.New("--bootstrap and --join exclude each other: bootstrap the first server, join the others")
	}
	s := &Server{cfg: cfg, log: cfg.Logger, store: state.New(), reg: prometheus.NewRegistry()}
	s.fsm = fsm.New(s.store, s.log.With("component", "fsm"))
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	if cfg.Bootstrap {
		secret, err := s.bootstrapToken()
		if err != nil {
			return nil, err
		}
		s.bootstrapSecret = secret
	}
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return nil, fmt.Errorf("HTTP listener on %s: %w", cfg.HTTPAddr, err)
	}
	s.ln = ln
	if s.cfg.HTTPAdvertise == "" {
		s.cfg.HTTPAdvertise = ln.Addr().String()
	}

	rc := cfg.Raft
	rc.ID, rc.DataDir, rc.BindAddr, rc.Advertise = cfg.NodeID, cfg.DataDir, cfg.RaftAddr, cfg.RaftAdvertise
	rc.Bootstrap = cfg.Bootstrap
	rc.Logger = s.log
	rn, err := raftnode.New(rc, s.fsm)
	if err != nil {
		ln.Close()
		return nil, err
	}
	s.raft = rn

	s.applyLatency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "metalfleet_raft_apply_duration_seconds", Help: "Time from proposing a command to its being applied.",
		Buckets: prometheus.ExponentialBuckets(0.0002, 2, 16),
	})
	s.reg.MustRegister(
		s.applyLatency,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "metalfleet_raft_leader", Help: "1 if this server is the Raft leader."},
			func() float64 { return b2f(rn.IsLeader()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "metalfleet_raft_state", Help: "Raft state: 0 follower, 1 candidate, 2 leader, 3 shutdown."},
			func() float64 { return float64(rn.Raft.State()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "metalfleet_raft_applied_index", Help: "Last Raft index applied to the FSM."},
			func() float64 { return float64(rn.Raft.AppliedIndex()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "metalfleet_raft_term", Help: "Current Raft term."},
			func() float64 { return float64(rn.Raft.CurrentTerm()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "metalfleet_state_index", Help: "Raft index of the last change to the state."},
			func() float64 { return float64(s.store.Index()) }),
	)
	if cfg.GossipAddr != "" {
		g, err := gossip.New(gossip.Config{Name: "coordinator-" + cfg.NodeID, BindAddr: cfg.GossipAddr, Join: cfg.GossipJoin, Key: cfg.GossipKey,
			Profile: cfg.GossipProfile, Logger: s.log.With("component", "gossip"),
			Meta: gossip.Meta{Role: gossip.RoleCoordinator, API: s.cfg.HTTPAdvertise, Version: fmt.Sprint(proto.Version)}})
		if err != nil {
			rn.Shutdown()
			ln.Close()
			return nil, err
		}
		s.gossip = g
	}
	s.api = httpapi.New(backend{s}, cfg.API, s.log.With("component", "api"), s.reg)
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}))
	mux.Handle("/", s.api.Handler())
	s.http = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	return s, nil
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// bootstrapToken returns the admin secret of a bootstrapping server: read
// from DataDir/admin.token, or made and written there (0600) and printed
// once. The token reaches the FSM when this server first leads.
func (s *Server) bootstrapToken() (string, error) {
	path := filepath.Join(s.cfg.DataDir, AdminTokenFile)
	b, err := os.ReadFile(path)
	if err == nil {
		return strings.TrimSpace(string(b)), nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("admin token: %w", err)
	}
	secret := httpapi.NewSecret()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(secret+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("admin token: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", fmt.Errorf("admin token: %w", err)
	}
	fmt.Fprintf(s.cfg.Out, "Admin token (shown once; also saved to %s):\n  %s\n", path, secret)
	return secret, nil
}

// HTTPAddr is the address the API listens on.
func (s *Server) HTTPAddr() string { return s.ln.Addr().String() }

// RaftAddr is the address Raft listens on.
func (s *Server) RaftAddr() string { return s.raft.Addr() }

// Store is the local state.
func (s *Server) Store() *state.Store { return s.store }

// Raft is the Raft node (for tests and tools).
func (s *Server) Raft() *raftnode.Node { return s.raft }

// IsLeader reports whether this server leads now.
func (s *Server) IsLeader() bool { return s.raft.IsLeader() }

// Run serves until ctx ends, then shuts down the API and Raft.
func (s *Server) Run(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() {
		if err := s.http.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- err
		}
	}()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); s.watchLeadership(ctx) }()
	if s.cfg.JoinURL != "" {
		wg.Add(1)
		go func() { defer wg.Done(); s.joinLoop(ctx) }()
	}
	if s.gossip != nil {
		wg.Add(2)
		go func() { defer wg.Done(); _ = s.gossip.Run(ctx) }()
		go func() { defer wg.Done(); s.advertiseLeader(ctx) }()
	}
	s.log.Info("coordinator serving", "node_id", s.cfg.NodeID, "http", s.HTTPAddr(), "raft", s.RaftAddr())

	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	return errors.Join(err, s.shutdown(&wg))
}

func (s *Server) shutdown(wg *sync.WaitGroup) error {
	sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	herr := s.http.Shutdown(sctx)
	if herr != nil {
		s.http.Close() // blocking queries still open: cut them
		herr = nil
	}
	s.mu.Lock()
	if s.leading != nil {
		s.leading()
	}
	s.mu.Unlock()
	if s.gossip != nil {
		_ = s.gossip.Leave(time.Second)
	}
	rerr := s.raft.Shutdown()
	wg.Wait()
	if s.gossip != nil {
		s.gossip.Shutdown()
	}
	s.log.Info("coordinator stopped", "node_id", s.cfg.NodeID)
	return errors.Join(herr, rerr)
}

// Close stops a server whose Run was never called.
func (s *Server) Close() error {
	s.ln.Close()
	return s.raft.Shutdown()
}

// watchLeadership starts the leader duties when this server becomes
// leader and stops them when it stops leading.
func (s *Server) watchLeadership(ctx context.Context) {
	ch := s.raft.Raft.LeaderCh()
	for {
		select {
		case <-ctx.Done():
			return
		case leader := <-ch:
			s.mu.Lock()
			if s.leading != nil {
				s.leading()
				s.leading = nil
			}
			if leader {
				lctx, cancel := context.WithCancel(ctx)
				s.leading = cancel
				go s.leaderDuties(lctx)
			}
			s.mu.Unlock()
			s.log.Info("leadership changed", "leader", leader)
		}
	}
}

// leaderDuties runs while this server leads: it makes sure the state
// records this server's addresses and holds the bootstrap admin token.
// Each step is idempotent and retried, so a leader that dies half-way
// leaves its successor nothing to undo.
func (s *Server) leaderDuties(ctx context.Context) {
	retry := func(what string, fn func() error) bool {
		for backoff := 50 * time.Millisecond; ; backoff = min(backoff*2, 2*time.Second) {
			err := fn()
			if err == nil {
				return true
			}
			s.log.Warn("leader duty failed; retrying", "duty", what, "err", err)
			select {
			case <-ctx.Done():
				return false
			case <-time.After(backoff):
			}
		}
	}
	if !retry("barrier", func() error { return s.raft.Raft.Barrier(10 * time.Second).Error() }) {
		return
	}
	if !retry("record self", func() error {
		_, err := s.apply(ctx, fsm.ServerPut{Server: proto.Server{ID: s.cfg.NodeID, RaftAddr: s.RaftAddr(), HTTPAddr: s.cfg.HTTPAdvertise}})
		return err
	}) {
		return
	}
	if s.bootstrapSecret != "" && len(s.store.Tokens()) == 0 {
		// Only into an empty token table: an operator who has since
		// revoked the bootstrap token does not get it back on a restart.
		retry("bootstrap admin token", func() error {
			_, err := s.apply(ctx, fsm.TokenCreate{
				Token:      proto.Token{ID: "admin-bootstrap", Description: "created by --bootstrap", Role: proto.RoleAdmin, CreatedAt: time.Now().UTC()},
				SecretHash: httpapi.HashSecret(s.bootstrapSecret),
				IfAbsent:   true,
			})
			return err
		})
	}
}

// advertiseLeader keeps this server's gossip meta naming the Raft
// leader's API, so an agent that reaches any member learns where to go.
func (s *Server) advertiseLeader(ctx context.Context) {
	last := "-"
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		_, leader := backend{s}.LeaderHTTP()
		if leader != last {
			err := s.gossip.UpdateMeta(gossip.Meta{Role: gossip.RoleCoordinator, API: s.cfg.HTTPAdvertise,
				Version: fmt.Sprint(proto.Version), Leader: leader})
			if err == nil {
				last = leader
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// GossipAddr is the gossip address ("" without gossip).
func (s *Server) GossipAddr() string {
	if s.gossip == nil {
		return ""
	}
	return s.gossip.LocalAddr()
}

// apply proposes cmd and returns the FSM's value, or its error.
func (s *Server) apply(ctx context.Context, cmd fsm.Command) (any, error) {
	v, _, err := backend{s}.Apply(ctx, cmd)
	return v, err
}

// joinLoop asks the cluster at JoinURL to add this server, until it
// succeeds or ctx ends. A restarted server asks again; adding a voter that
// is already there with the same address changes nothing.
func (s *Server) joinLoop(ctx context.Context) {
	body, _ := json.Marshal(proto.JoinRequest{ID: s.cfg.NodeID, RaftAddr: s.RaftAddr(), HTTPAddr: s.cfg.HTTPAdvertise})
	url := strings.TrimRight(s.cfg.JoinURL, "/")
	if !strings.Contains(url, "://") {
		url = "http://" + url
	}
	client := &http.Client{Timeout: 15 * time.Second}
	for backoff := 200 * time.Millisecond; ; backoff = min(backoff*2, 5*time.Second) {
		err := func() error {
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+"/v1/cluster/join", bytes.NewReader(body))
			if err != nil {
				return err
			}
			req.Header.Set("Authorization", "Bearer "+s.cfg.JoinToken)
			req.Header.Set("Content-Type", "application/json")
			resp, err := client.Do(req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				var eb proto.ErrorBody
				if json.NewDecoder(resp.Body).Decode(&eb) == nil && eb.Error != nil {
					return fmt.Errorf("%s: %s", resp.Status, eb.Error.Message)
				}
				return errors.New(resp.Status)
			}
			return nil
		}()
		if err == nil {
			s.log.Info("joined cluster", "via", s.cfg.JoinURL)
			return
		}
		s.log.Warn("join failed; retrying", "via", s.cfg.JoinURL, "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
	}
}

// backend adapts Server to httpapi.Backend.
type backend struct{ s *Server }

func (b backend) NodeID() string       { return b.s.cfg.NodeID }
func (b backend) Store() *state.Store  { return b.s.store }
func (b backend) IsLeader() bool       { return b.s.raft.IsLeader() }
func (b backend) VerifyLeader() error  { return b.s.raft.VerifyLeader() }
func (b backend) Status() proto.Status { return b.s.Status() }

func (b backend) Apply(ctx context.Context, c fsm.Command) (any, uint64, error) {
	data, err := fsm.Encode(c)
	if err != nil {
		return nil, 0, err
	}
	start := time.Now()
	resp, idx, err := b.s.raft.Apply(ctx, data)
	if err != nil {
		if errors.Is(err, raftnode.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			return nil, 0, httpapi.ErrNotLeader
		}
		if errors.Is(err, raft.ErrEnqueueTimeout) {
			return nil, 0, context.DeadlineExceeded
		}
		return nil, 0, err
	}
	b.s.applyLatency.Observe(time.Since(start).Seconds())
	res, ok := resp.(*fsm.Result)
	if !ok {
		return nil, idx, fmt.Errorf("FSM returned %T", resp)
	}
	return res.Value, idx, res.Err
}

func (b backend) LeaderHTTP() (string, string) {
	id, _ := b.s.raft.Leader()
	if id == "" {
		return "", ""
	}
	if sv, ok := b.s.store.Server(id); ok {
		return id, sv.HTTPAddr
	}
	return id, ""
}

func (b backend) Join(ctx context.Context, req proto.JoinRequest) error {
	r := b.s.raft.Raft
	if err := r.AddVoter(raft.ServerID(req.ID), raft.ServerAddress(req.RaftAddr), 0, 10*time.Second).Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) {
			return httpapi.ErrNotLeader
		}
		return proto.Errorf(proto.CodeUnavailable, "adding voter %s: %v", req.ID, err)
	}
	_, err := b.s.apply(ctx, fsm.ServerPut{Server: proto.Server{ID: req.ID, RaftAddr: req.RaftAddr, HTTPAddr: req.HTTPAddr}})
	if err == nil {
		b.s.log.Info("server joined", "id", req.ID, "raft", req.RaftAddr, "http", req.HTTPAddr)
	}
	return err
}

func (b backend) RemovePeer(ctx context.Context, id string) error {
	r := b.s.raft.Raft
	cf := r.GetConfiguration()
	if err := cf.Error(); err != nil {
		return err
	}
	member, voters := false, 0
	for _, sv := range cf.Configuration().Servers {
		member = member || string(sv.ID) == id
		if sv.Suffrage == raft.Voter {
			voters++
		}
	}
	if member && voters == 1 {
		return proto.Errorf(proto.CodeConflict, "server %s is the last voter; a cluster cannot remove its last server", id)
	}
	if !member {
		if _, ok := b.s.store.Server(id); !ok {
			return proto.Errorf(proto.CodeNotFound, "server %q is not a member", id)
		}
		_, err := b.s.apply(ctx, fsm.ServerRemove{ID: id})
		return err
	}
	self := id == b.s.cfg.NodeID
	if self {
		// The leader removes itself: forget its record while it can
		// still write, then leave; Raft elects a leader among the rest.
		if _, err := b.s.apply(ctx, fsm.ServerRemove{ID: id}); err != nil {
			return err
		}
	}
	if err := r.RemoveServer(raft.ServerID(id), 0, 10*time.Second).Error(); err != nil {
		if self {
			// Still a member: put its record back, so followers can
			// still find this leader's API.
			_, _ = b.s.apply(ctx, fsm.ServerPut{Server: proto.Server{ID: id, RaftAddr: b.s.RaftAddr(), HTTPAddr: b.s.cfg.HTTPAdvertise}})
		}
		if errors.Is(err, raft.ErrNotLeader) {
			return httpapi.ErrNotLeader
		}
		return proto.Errorf(proto.CodeUnavailable, "removing server %s: %v", id, err)
	}
	if !self {
		if _, err := b.s.apply(ctx, fsm.ServerRemove{ID: id}); err != nil {
			return err
		}
	}
	b.s.log.Info("server removed", "id", id)
	return nil
}

// Agents lists the rack agents gossip knows of (httpapi.AgentLister).
func (b backend) Agents() []proto.AgentInfo {
	out := []proto.AgentInfo{}
	if b.s.gossip == nil {
		return out
	}
	for _, m := range b.s.gossip.Members() {
		if m.Meta.Role != gossip.RoleAgent {
			continue
		}
		ai := proto.AgentInfo{Name: m.Name, Rack: m.Meta.Rack, Address: m.Addr, APIAddr: m.Meta.API, Version: m.Meta.Version, Status: m.State}
		if m.State == gossip.StateAlive {
			ai.LastContact = time.Now().UTC()
		} else {
			ai.LastContact = m.LastChange.UTC()
		}
		out = append(out, ai)
	}
	return out
}

// Status describes this server and its view of the cluster.
func (s *Server) Status() proto.Status {
	r := s.raft.Raft
	lid, laddr := s.raft.Leader()
	st := proto.Status{
		NodeID: s.cfg.NodeID, RaftState: strings.ToLower(r.State().String()),
		LeaderID: lid, LeaderAddr: laddr,
		LastIndex: r.LastIndex(), AppliedIndex: r.AppliedIndex(), Term: r.CurrentTerm(),
		Peers: []proto.Peer{}, Version: proto.Version,
	}
	if sv, ok := s.store.Server(lid); ok {
		st.LeaderHTTP = sv.HTTPAddr
	}
	if cf := r.GetConfiguration(); cf.Error() == nil {
		for _, sv := range cf.Configuration().Servers {
			p := proto.Peer{ID: string(sv.ID), RaftAddr: string(sv.Address), Suffrage: strings.ToLower(sv.Suffrage.String()), Leader: string(sv.ID) == lid}
			if rec, ok := s.store.Server(string(sv.ID)); ok {
				p.HTTPAddr = rec.HTTPAddr
			}
			st.Peers = append(st.Peers, p)
		}
	}
	return st
}
