// Package server is the coordinator's composition root: it wires the state
// store, the FSM, a Raft node, the leader loops (package leader) and the
// HTTP API together, bootstraps or joins a cluster, and shuts it all down
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
	"golang.org/x/term"

	"github.com/metalfleet/metalfleet/cluster/clock"
	"github.com/metalfleet/metalfleet/cluster/gossip"
	"github.com/metalfleet/metalfleet/cluster/raftnode"
	"github.com/metalfleet/metalfleet/coordinator/fsm"
	"github.com/metalfleet/metalfleet/coordinator/httpapi"
	"github.com/metalfleet/metalfleet/coordinator/leader"
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
	// TaskEvery is how often the leader looks for timed-out tasks and
	// failed tasks without a console log (default 10 s).
	TaskEvery time.Duration

	// ReadyWait bounds how long a consistent read on a newly elected
	// leader waits for the leader to have applied its predecessor's log
	// before it answers 503 with Retry-After (default 5 s).
	ReadyWait time.Duration
	// Clock drives the leader loops (default the system clock).
	Clock clock.Clock

	Logger *slog.Logger
	// Out receives the notice of a new admin token: the secret itself
	// only if Out is a terminal, else only the file that holds it
	// (default stdout).
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
	leader       *leader.Leader

	bootstrapSecret string // admin secret still to be stored, if any
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
	if cfg.ReadyWait <= 0 {
		cfg.ReadyWait = 5 * time.Second
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
	lc := leader.Config{
		Self:  proto.Server{ID: cfg.NodeID, RaftAddr: rn.Addr(), HTTPAddr: s.cfg.HTTPAdvertise},
		Clock: cfg.Clock, Logger: s.log.With("component", "leader"),
		Tasks: taskHelper{s}, TaskEvery: cfg.TaskEvery,
	}
	if s.bootstrapSecret != "" {
		lc.BootstrapSecretHash = httpapi.HashSecret(s.bootstrapSecret)
	}
	s.leader = leader.New(leaderBackend{s}, lc)

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
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "metalfleet_leader_ready", Help: "1 if this server leads and has applied its predecessor's log (serves consistent reads)."},
			func() float64 { return b2f(s.leader.Ready()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "metalfleet_leader_barrier_seconds", Help: "How long this server's last leadership held consistent reads: from winning the election until its barrier was applied."},
			func() float64 { return s.leader.BarrierTook().Seconds() }),
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

// isTerminal reports whether f is a terminal; tests replace it.
var isTerminal = func(f *os.File) bool { return term.IsTerminal(int(f.Fd())) }

// bootstrapToken returns the admin secret of a bootstrapping server: read
// from DataDir/admin.token, or made and written there (0600). The secret
// is printed once, only to a terminal: under systemd stdout is the
// journal, which must not hold it, so there only the file is named. The
// token reaches the FSM when this server first leads.
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
	if isTerminal(s.cfg.Out) {
		fmt.Fprintf(s.cfg.Out, "Admin token (shown once; also saved to %s):\n  %s\n", path, secret)
	} else {
		fmt.Fprintf(s.cfg.Out, "Admin token written to %s (mode 0600)\n", path)
	}
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
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		if err := s.http.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- err
		}
	}()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); s.leader.Watch(ctx, s.raft.Raft.LeaderCh()) }()
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
	cancel()
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
func (b backend) Status() proto.Status { return b.s.Status() }

// VerifyLeader answers whether this server may serve a consistent read
// from its store now: it leads, a quorum confirms it, and it has applied
// everything committed before its election (its barrier). A newly elected
// leader holds the read up to ReadyWait for the barrier, then refuses with
// a retryable 503. VerifyLeader alone is not enough: a new leader learns
// that its predecessor's last entries are committed only when its own
// first entry commits, and until it applies them its store is older than
// writes the cluster acknowledged.
func (b backend) VerifyLeader() error {
	if err := b.WaitReady(); err != nil {
		return err
	}
	if err := b.s.raft.VerifyLeader(); err != nil {
		return httpapi.ErrNotLeader
	}
	// Still the leadership whose barrier was applied: a term that moved
	// on while we verified needs its own.
	if !b.s.leader.Ready() {
		return proto.Errorf(proto.CodeUnavailable, "leadership changed while the read was verified; try again")
	}
	return nil
}

// WaitReady returns once this leader has applied everything committed
// before its election (httpapi.ReadyWaiter): at once on a ready leader,
// after up to ReadyWait on a new one, then a retryable error.
func (b backend) WaitReady() error {
	if !b.s.raft.IsLeader() {
		return httpapi.ErrNotLeader
	}
	if !b.s.leader.Ready() {
		ctx, cancel := context.WithTimeout(context.Background(), b.s.cfg.ReadyWait)
		ok := b.s.leader.WaitReady(ctx)
		cancel()
		if !ok {
			if !b.s.raft.IsLeader() {
				return httpapi.ErrNotLeader
			}
			return proto.Errorf(proto.CodeUnavailable, "this server was just elected leader and is still applying its predecessor's log (waited %s); try again", b.s.cfg.ReadyWait)
		}
	}
	return nil
}

// applyError turns a Raft error of a proposal into what the API answers.
// None of them may become a 4xx: a 4xx says the write was not applied,
// and after most of these the outcome is unknown.
func applyError(err error) error {
	switch {
	case errors.Is(err, raftnode.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost),
		errors.Is(err, raft.ErrLeadershipTransferInProgress), errors.Is(err, raft.ErrAbortedByRestore):
		return httpapi.ErrNotLeader // 503, "may or may not have been applied"
	case errors.Is(err, raft.ErrEnqueueTimeout), errors.Is(err, context.DeadlineExceeded):
		return context.DeadlineExceeded // 504
	case errors.Is(err, raft.ErrRaftShutdown):
		return proto.Errorf(proto.CodeUnavailable, "this server is shutting down; the write may or may not have been applied")
	}
	return proto.Errorf(proto.CodeInternal, "raft: %v; the write may or may not have been applied", err)
}

func (b backend) Apply(ctx context.Context, c fsm.Command) (any, uint64, error) {
	data, err := fsm.Encode(c)
	if err != nil {
		return nil, 0, err
	}
	start := time.Now()
	resp, idx, err := b.s.raft.Apply(ctx, data)
	if err != nil {
		return nil, 0, applyError(err)
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

// taskHelper gives the leader's task loop the API's agent choice and
// console-log reader (s.api is made after the leader, before it runs).
type taskHelper struct{ s *Server }

func (h taskHelper) PickAgent(rack, node string) string { return h.s.api.PickAgent(rack, node) }

func (h taskHelper) TaskConsoleLog(ctx context.Context, node string) (string, error) {
	return h.s.api.TaskConsoleLog(ctx, node)
}

// leaderBackend adapts Server to leader.Backend.
type leaderBackend struct{ s *Server }

func (l leaderBackend) Store() *state.Store { return l.s.store }
func (l leaderBackend) Term() uint64        { return l.s.raft.Raft.CurrentTerm() }

func (l leaderBackend) Apply(ctx context.Context, c fsm.Command) (any, error) {
	return l.s.apply(ctx, c)
}

func (l leaderBackend) Barrier(ctx context.Context) error { return l.s.raft.Barrier(ctx) }

// Ready reports whether this server leads and has applied everything
// committed before its election, so it serves consistent reads.
func (s *Server) Ready() bool { return s.leader.Ready() }

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
