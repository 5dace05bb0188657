// Package agent is the rack agent's composition root: one bolt file for
// its durable state (boot state copy, leases, outbox), the DHCP, TFTP and
// HTTP boot servers, the link to the coordinator, and gossip with the
// rack's other agent and the coordinators.
//
// The HTTP boot server faces untrusted nodes and authenticates nothing
// but task tokens. Apart from it, the agent serves an authenticated
// management listener (--mgmt-addr, default 127.0.0.1:7492): every
// request needs "Authorization: Bearer <token>", where the token is this
// rack's agent token (the one the agent runs with, compared in constant
// time) or an admin token, which the agent verifies by asking the
// coordinator (an admin-only read answered 200; a verified or refused
// token is remembered for a minute; checks are bounded, see mgmtAuth). It serves GET /v1/health and GET /v1/diag,
// and the serial console routes, which take a single-use console ticket
// instead of a token (mgmt_console.go). The agent tells the coordinator
// this address on every API call, boot-state polls included, in the
// X-Metalfleet-Agent-Mgmt header (an unspecified host replaced by the
// advertise IP).
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"go.etcd.io/bbolt"

	"github.com/metalfleet/metalfleet/cluster/gossip"
	"github.com/metalfleet/metalfleet/coordinator/apiclient"
	"github.com/metalfleet/metalfleet/proto"
	"github.com/metalfleet/metalfleet/rackagent/bootstate"
	"github.com/metalfleet/metalfleet/rackagent/console"
	"github.com/metalfleet/metalfleet/rackagent/dhcp"
	"github.com/metalfleet/metalfleet/rackagent/httpboot"
	"github.com/metalfleet/metalfleet/rackagent/outbox"
	"github.com/metalfleet/metalfleet/rackagent/power"
	"github.com/metalfleet/metalfleet/rackagent/ra"
	"github.com/metalfleet/metalfleet/rackagent/tftp"
)

// IPXEDir is where Debian's ipxe package puts iPXE's first-stage files.
const IPXEDir = "/usr/lib/ipxe"

// copyIPXE copies Debian's iPXE binaries into the agent's own TFTP root
// (the first root). Some of them are symlinks out of /usr/lib/ipxe
// (ipxe.efi points into /boot), which the TFTP server rightly refuses to
// follow; a copy serves them without widening what it may read.
func copyIPXE(root string, log *slog.Logger) error {
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	for _, name := range []string{"undionly.kpxe", "ipxe.efi", "snponly.efi", "ipxe.pxe"} {
		dst := filepath.Join(root, name)
		if _, err := os.Lstat(dst); err == nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(IPXEDir, name)) // follows the package's symlinks
		if err != nil {
			continue
		}
		if err := os.WriteFile(dst+".tmp", b, 0o644); err != nil {
			return err
		}
		if err := os.Rename(dst+".tmp", dst); err != nil {
			return err
		}
		log.Debug("iPXE first stage copied into the TFTP root", "file", name, "bytes", len(b))
	}
	return nil
}

// Version is reported in gossip and to the coordinator.
const Version = "0.1.0"

// Config configures a rack agent.
type Config struct {
	// Name is this agent's unique name (default: hostname-rack).
	Name string
	// Rack is the rack it serves.
	Rack string
	// DataDir holds agent.db and the artifact cache.
	DataDir string
	// Coordinators are API addresses of coordinators (any member).
	Coordinators []string
	// Token is an agent token bound to Rack.
	Token string

	// Interface serves broadcast DHCP on a NIC (root); else DHCPAddr
	// serves relayed DHCP only.
	Interface string
	DHCPAddr  string
	// TFTPAddr serves first-stage boot files ("" disables TFTP).
	TFTPAddr string
	// TFTPRoots are searched in order (default: DataDir/tftp, /usr/lib/ipxe).
	TFTPRoots []string
	// HTTPAddr serves iPXE scripts, artifacts and callbacks.
	HTTPAddr string
	// AdvertiseIP is this agent's address as nodes reach it: the DHCP
	// server identifier and the host of its boot URLs.
	AdvertiseIP netip.Addr
	// PoolShare is this agent's share of the rack's dynamic pool: K of N
	// (0-based), agents of one rack taking disjoint shares (default 0/1).
	PoolShare [2]int
	// GossipAddr is where this agent gossips ("" disables gossip: then it
	// answers every MAC and finds coordinators only from Coordinators).
	GossipAddr string
	// GossipJoin lists any members (agents or coordinators) to join.
	GossipJoin []string
	// GossipKey encrypts gossip (16, 24 or 32 bytes), if set.
	GossipKey []byte
	// GossipProfile is "lan" (default) or "local" (tests).
	GossipProfile string
	// NoRouterAdverts turns off the IPv6 router advertisements an agent
	// serving broadcast DHCP sends on its interface (see package ra).
	NoRouterAdverts bool
	// CacheMaxBytes bounds the artifact cache (default 20 GiB).
	CacheMaxBytes int64
	// MgmtAddr is the authenticated management listener (default
	// 127.0.0.1:0). MgmtAddrSoft: if it cannot be bound, bind
	// 127.0.0.1:0 instead and log it (the CLI's default address).
	MgmtAddr     string
	MgmtAddrSoft bool
	// PowerSyncInterval is how often the power of the rack's nodes is
	// read from their BMCs (default 60 s; negative: no power sync).
	PowerSyncInterval time.Duration
	// BMCConcurrency bounds the BMC calls in flight (default 32).
	BMCConcurrency int

	Logger *slog.Logger
}

// Agent is a running rack agent.
type Agent struct {
	cfg    Config
	log    *slog.Logger
	db     *bbolt.DB
	client *apiclient.Client
	boot   *bootstate.Store
	out    *outbox.Outbox
	rep    *groupReporter
	pool   *dhcp.Pool
	dhcp   *dhcp.Server
	dhcpH  *dhcp.Handler
	tftp   *tftp.Server
	tftpLn net.PacketConn
	http   *httpboot.Server
	httpLn net.Listener
	gossip *gossip.Gossip

	dhcpConn net.PacketConn

	mgmtLn     net.Listener
	mgmtAdvert string
	mgmtAuth   *mgmtAuth
	console    *console.Manager

	power *power.Manager
}

// New opens the agent's state and binds its sockets; Run serves.
func New(cfg Config) (*Agent, error) {
	if cfg.Rack == "" {
		return nil, errors.New("a rack is required (--rack)")
	}
	if cfg.DataDir == "" {
		return nil, errors.New("a data directory is required (--data-dir)")
	}
	if len(cfg.Coordinators) == 0 {
		return nil, errors.New("at least one coordinator address is required (--coordinator)")
	}
	if !cfg.AdvertiseIP.IsValid() {
		return nil, errors.New("an advertise IP is required (--advertise-ip): nodes reach the agent there")
	}
	if cfg.Name == "" {
		h, _ := os.Hostname()
		cfg.Name = h + "-" + cfg.Rack
	}
	if cfg.PoolShare[1] == 0 {
		cfg.PoolShare = [2]int{0, 1}
	}
	if cfg.CacheMaxBytes == 0 {
		cfg.CacheMaxBytes = 20 << 30
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if len(cfg.TFTPRoots) == 0 {
		cfg.TFTPRoots = []string{filepath.Join(cfg.DataDir, "tftp"), IPXEDir}
	}
	a := &Agent{cfg: cfg, log: cfg.Logger.With("agent", cfg.Name, "rack", cfg.Rack)}
	ok := false
	defer func() {
		if !ok {
			a.close()
		}
	}()
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, err
	}
	db, err := bbolt.Open(filepath.Join(cfg.DataDir, "agent.db"), 0o600, &bbolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("agent.db: %w (is another agent running on this data dir?)", err)
	}
	a.db = db
	// Leases are committed in groups (db.Batch) before their ACK: a short
	// gathering window keeps each ACK fast and still folds many into one
	// fsync under load.
	db.MaxBatchDelay = 2 * time.Millisecond
	a.client = apiclient.New(joinAddrs(cfg.Coordinators), cfg.Token)
	a.client.SetHeader("X-Metalfleet-Agent", cfg.Name)
	if cfg.MgmtAddr == "" {
		cfg.MgmtAddr = "127.0.0.1:0"
	}
	if a.mgmtLn, err = net.Listen("tcp", cfg.MgmtAddr); err != nil {
		if !cfg.MgmtAddrSoft {
			return nil, fmt.Errorf("management listener on %s: %w", cfg.MgmtAddr, err)
		}
		a.log.Warn("management listener: address taken; using a free loopback port", "addr", cfg.MgmtAddr, "err", err)
		if a.mgmtLn, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			return nil, fmt.Errorf("management listener: %w", err)
		}
	}
	a.mgmtAdvert = mgmtAdvertise(a.mgmtLn, cfg.AdvertiseIP.String())
	// The coordinator learns the management address from every call
	// (boot-state polls included), so it knows it with gossip off.
	a.client.SetHeader(proto.AgentMgmtHeader, a.mgmtAdvert)
	a.mgmtAuth = newMgmtAuth(cfg.Token, a.client.Addrs, time.Now)
	if a.boot, err = bootstate.Open(db, cfg.Rack, a.log.With("component", "bootstate")); err != nil {
		return nil, err
	}
	if a.out, err = outbox.Open(db, outbox.Config{Logger: a.log.With("component", "outbox")}); err != nil {
		return nil, err
	}
	a.rep = newGroupReporter(a.out, cfg.Rack, cfg.Name, a.log)
	a.console = a.newConsole()

	// The pool's share is known once the rack's pool is: until then it is
	// empty, and set again on every new boot state.
	a.pool, err = dhcp.OpenPool(db, cfg.Name, netip.Addr{}, netip.Addr{})
	if err != nil {
		return nil, err
	}
	a.applyShare()
	if a.httpLn, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
		return nil, fmt.Errorf("http on %s: %w", cfg.HTTPAddr, err)
	}
	dconn, err := dhcp.Listen(cfg.Interface, cfg.DHCPAddr)
	if err != nil {
		return nil, err
	}
	httpHost := net.JoinHostPort(cfg.AdvertiseIP.String(), portOf(a.httpLn.Addr().String()))
	httpBase := "http://" + httpHost
	var split dhcp.Splitter
	if cfg.GossipAddr != "" {
		a.gossip, err = gossip.New(gossip.Config{Name: cfg.Name, BindAddr: cfg.GossipAddr, Join: cfg.GossipJoin, Key: cfg.GossipKey,
			Profile: cfg.GossipProfile, Logger: a.log.With("component", "gossip"),
			Meta: gossip.Meta{Role: gossip.RoleAgent, Rack: cfg.Rack, API: httpHost, Version: Version}})
		if err != nil {
			return nil, err
		}
		split = gossipSplit{g: a.gossip, self: cfg.Name, rack: cfg.Rack}
	}
	pc := power.Config{Agent: cfg.Name, DB: db, Reporter: a.rep, Concurrency: cfg.BMCConcurrency,
		SyncInterval: cfg.PowerSyncInterval, Logger: a.log.With("component", "power")}
	if pc.SyncInterval == 0 {
		pc.SyncInterval = time.Minute
	}
	if a.gossip != nil {
		pc.Mine = powerSplit{g: a.gossip, self: cfg.Name, rack: cfg.Rack}.Mine
	}
	if a.power, err = power.New(pc); err != nil {
		return nil, err
	}
	h := dhcp.NewHandler(dhcp.Config{Rack: cfg.Rack, Agent: cfg.Name, ServerIP: cfg.AdvertiseIP, HTTPBase: httpBase,
		Logger: a.log.With("component", "dhcp")}, a.boot, a.pool, split, a.rep)
	a.dhcpH = h
	a.dhcp = dhcp.NewServer(h, dconn, cfg.Interface, a.log.With("component", "dhcp"))
	a.dhcpConn = dconn

	if cfg.TFTPAddr != "" {
		if err := copyIPXE(cfg.TFTPRoots[0], a.log); err != nil {
			return nil, err
		}
		ts, err := tftp.New(tftp.Config{Roots: cfg.TFTPRoots, Logger: a.log.With("component", "tftp"), OnRead: a.tftpRead})
		if err != nil {
			return nil, err
		}
		a.tftp = ts
		if a.tftpLn, err = net.ListenPacket("udp4", cfg.TFTPAddr); err != nil {
			return nil, fmt.Errorf("tftp on %s: %w", cfg.TFTPAddr, err)
		}
	}
	cache, err := httpboot.NewCache(httpboot.CacheConfig{Dir: filepath.Join(cfg.DataDir, "artifacts"), MaxBytes: cfg.CacheMaxBytes,
		Logger: a.log.With("component", "cache")})
	if err != nil {
		return nil, err
	}
	hc := httpboot.Config{Backend: bootBackend{a.boot, a.pool}, Reporter: a.rep, Cache: cache, BaseURL: httpBase,
		Logger: a.log.With("component", "http")}
	if a.tftp != nil {
		hc.Files = a.tftp
	}
	hc.Metrics = a.metrics()
	a.http = httpboot.New(hc)
	ok = true
	return a, nil
}

func joinAddrs(as []string) string {
	out := ""
	for i, a := range as {
		if i > 0 {
			out += ","
		}
		out += a
	}
	return out
}

func portOf(hostport string) string {
	_, p, err := net.SplitHostPort(hostport)
	if err != nil {
		return "80"
	}
	return p
}

// DHCPAddr, TFTPAddr and HTTPAddr are the bound addresses.
func (a *Agent) DHCPAddr() net.Addr { return a.dhcp.Addr() }

// TFTPAddr is the TFTP socket's address (nil if TFTP is off).
func (a *Agent) TFTPAddr() net.Addr {
	if a.tftpLn == nil {
		return nil
	}
	return a.tftpLn.LocalAddr()
}

// HTTPAddr is the HTTP boot listener's address.
func (a *Agent) HTTPAddr() net.Addr { return a.httpLn.Addr() }

// Boot is the agent's boot state copy.
func (a *Agent) Boot() *bootstate.Store { return a.boot }

// GossipAddr is the gossip address ("" without gossip).
func (a *Agent) GossipAddr() string {
	if a.gossip == nil {
		return ""
	}
	return a.gossip.LocalAddr()
}

// Outbox is the agent's report queue.
func (a *Agent) Outbox() *outbox.Outbox { return a.out }

// DHCPStats are the DHCP server's counters.
func (a *Agent) DHCPStats() *dhcp.Stats { return &a.dhcp.Stats }

// Run serves until ctx ends, then stops everything and closes the state.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	run := func(name string, fn func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(ctx); err != nil && ctx.Err() == nil {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	run("bootstate", func(ctx context.Context) error { return a.boot.Run(ctx, a.client) })
	run("outbox", func(ctx context.Context) error { return a.out.Run(ctx, sender{a.client, a.cfg.Rack}) })
	run("reports", a.rep.run)
	run("dhcp", a.dhcp.Serve)
	run("sightings", func(ctx context.Context) error { return a.dhcpH.RunSightings(ctx, nil) })
	run("http", func(ctx context.Context) error { return a.http.Serve(ctx, a.httpLn) })
	if a.tftp != nil {
		run("tftp", func(ctx context.Context) error { return a.tftp.Serve(ctx, a.tftpLn) })
	}
	run("leases", a.leaseLoop)
	run("mgmt", a.serveMgmt)
	run("power", func(ctx context.Context) error { return a.power.Run(ctx, a.boot) })
	// Task console captures stop before the console manager closes, so
	// none opens a session again while the agent stops.
	capCtx, stopCaptures := context.WithCancel(ctx)
	capturesDone := make(chan struct{})
	go func() {
		defer close(capturesDone)
		_ = a.runTaskConsoles(capCtx)
	}()
	if a.cfg.Interface != "" && !a.cfg.NoRouterAdverts {
		run("router-adverts", func(ctx context.Context) error {
			if err := ra.Run(ctx, a.cfg.Interface, ra.DefaultInterval, a.log.With("component", "ra")); err != nil {
				// Boots are slower without them, not broken.
				a.log.Warn("no IPv6 router advertisements: iPXE will wait about 16 s for IPv6 on each boot", "err", err)
			}
			return nil
		})
	}
	if a.gossip != nil {
		run("gossip", a.gossip.Run)
		run("coordinators", a.followCoordinators)
	}
	a.log.Info("rack agent serving", "dhcp", a.dhcp.Addr().String(), "http", a.httpLn.Addr().String(), "mgmt", a.mgmtLn.Addr().String(),
		"tftp", fmt.Sprint(a.TFTPAddr()), "coordinators", a.client.Addrs())
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		a.log.Error("rack agent component failed; stopping", "err", err)
	}
	if a.gossip != nil {
		_ = a.gossip.Leave(time.Second) // tell the rack's other agent at once
	}
	stopCaptures()
	<-capturesDone
	a.console.Close() // its console-end reports go out with the outbox's last flush
	cancel()
	wg.Wait()
	a.close()
	a.log.Info("rack agent stopped")
	return err
}

func (a *Agent) close() {
	if a.gossip != nil {
		a.gossip.Shutdown()
	}
	if a.dhcpConn != nil {
		a.dhcpConn.Close()
	}
	if a.httpLn != nil {
		a.httpLn.Close()
	}
	if a.mgmtLn != nil {
		a.mgmtLn.Close()
	}
	if a.tftpLn != nil {
		a.tftpLn.Close()
	}
	if a.db != nil {
		a.db.Close()
	}
}

// applyShare sets the pool share from the current boot state.
func (a *Agent) applyShare() {
	v := a.boot.View()
	if v == nil || !v.HasPool() {
		return
	}
	first, last, err := dhcp.Share(v.PoolStart, v.PoolEnd, a.cfg.PoolShare[0], a.cfg.PoolShare[1])
	if err != nil {
		a.log.Error("pool share", "err", err)
		return
	}
	a.pool.SetShare(first, last)
}

// leaseLoop keeps the pool share in step with the boot state and expires
// leases. Once after each start, when the outbox has drained, it reports
// every lease this agent holds again: a lease whose report a crash lost
// (between its commit and its report's) reaches the coordinator that way.
// The coordinator takes a repeat as an update.
func (a *Agent) leaseLoop(ctx context.Context) error {
	expire := time.NewTicker(15 * time.Second)
	defer expire.Stop()
	poll := time.NewTicker(time.Second)
	defer poll.Stop()
	reconciled, adopted := false, false
	for {
		changed := a.boot.Changed()
		a.applyShare()
		if !adopted && a.boot.Synced() {
			adopted = true
			a.adoptLeases()
		}
		a.dropInvalidLeases()
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-poll.C:
			if reconciled || !a.boot.Synced() || a.out.Len() > 0 {
				continue
			}
			reconciled = true
			now := time.Now()
			n := 0
			for _, l := range a.pool.Leases() {
				if l.Expires.After(now) {
					l := l
					a.rep.Report(proto.AgentReport{Kind: proto.ReportLease, MAC: l.MAC, LeaseEvent: "bound", Lease: &l})
					n++
				}
			}
			if n > 0 {
				a.log.Info("leases reported again after start", "leases", n)
			}
		case <-expire.C:
			gone, err := a.pool.Expire(time.Now())
			if err != nil {
				a.log.Error("expiring leases", "err", err)
			}
			for _, l := range gone {
				l := l
				a.rep.Report(proto.AgentReport{Kind: proto.ReportLease, MAC: l.MAC, LeaseEvent: "expired", Lease: &l})
			}
		}
	}
}

// adoptLeases takes the leases the coordinator records as this agent's
// into its pool, once after each start, at the first boot state from the
// coordinator: an agent that lost its data directory gets its leases back
// (and expires and re-reports them as its own). Until then, and for any
// it does not adopt, the boot state's record alone keeps their addresses
// from other MACs.
func (a *Agent) adoptLeases() {
	v := a.boot.View()
	if v == nil {
		return
	}
	now := time.Now()
	n := 0
	for _, l := range v.State.Leases {
		if l.Agent != a.cfg.Name {
			continue
		}
		ok, err := a.pool.Adopt(l, now)
		if err != nil {
			a.log.Error("adopting a lease from the boot state", "mac", l.MAC, "ip", l.IP, "err", err)
			continue
		}
		if ok {
			n++
		}
	}
	if n > 0 {
		a.log.Info("leases adopted from the coordinator's record (the data directory did not hold them)", "leases", n)
	}
}

// dropInvalidLeases ends the leases held here that the rack's current
// pool no longer allows (outside it, or a node's reservation) and reports
// them released: a client asking to renew one is NAKed and gets a valid
// address at its next DISCOVER.
func (a *Agent) dropInvalidLeases() {
	v := a.boot.View()
	if v == nil {
		return
	}
	gone, err := a.pool.DropInvalid(func(ip netip.Addr) bool {
		_, reserved := v.NodeByIP(ip)
		return v.InPool(ip) && !reserved
	})
	if err != nil {
		a.log.Error("dropping leases outside the pool", "err", err)
	}
	for _, l := range gone {
		l := l
		a.log.Info("lease ended: outside the rack's pool", "mac", l.MAC, "ip", l.IP)
		a.rep.Report(proto.AgentReport{Kind: proto.ReportLease, MAC: l.MAC, LeaseEvent: "released", Lease: &l})
	}
}

// Leases are the leases this agent holds.
func (a *Agent) Leases() []proto.Lease { return a.pool.Leases() }

func (a *Agent) tftpRead(remote net.Addr, path string, size int64) {
	a.log.Debug("tftp served", "remote", remote.String(), "path", path, "bytes", size)
}

// sender delivers the outbox to the coordinator.
type sender struct {
	c    *apiclient.Client
	rack string
}

func (s sender) Send(ctx context.Context, rs []proto.AgentReport) (proto.ReportAck, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	ack, err := s.c.Reports(ctx, s.rack, rs)
	var ae *apiclient.Error
	if !errors.As(err, &ae) {
		return ack, err
	}
	switch {
	case ae.Status == http.StatusRequestEntityTooLarge && len(rs) > 1:
		// Too big as one body (inventories are large): send it in halves.
		a1, err := s.Send(ctx, rs[:len(rs)/2])
		if err != nil {
			return a1, err
		}
		a2, err := s.Send(ctx, rs[len(rs)/2:])
		a1.Acked = append(a1.Acked, a2.Acked...)
		for id, why := range a2.Rejected {
			if a1.Rejected == nil {
				a1.Rejected = map[string]string{}
			}
			a1.Rejected[id] = why
		}
		return a1, err
	case len(rs) == 1 && ae.Status >= 400 && ae.Status < 500 && ae.Status != http.StatusTooManyRequests &&
		ae.Status != http.StatusUnauthorized && ae.Status != http.StatusForbidden && ae.Status != http.StatusRequestTimeout &&
		!undecodable(ae):
		// The coordinator will never take this one report as it is:
		// reject it, loudly, rather than retry forever.
		return proto.ReportAck{Rejected: map[string]string{rs[0].ID: ae.Error()}}, nil
	case len(rs) > 1 && ae.Status == http.StatusBadRequest:
		// One bad report spoils a batch: find it by sending them alone.
		out := proto.ReportAck{Rejected: map[string]string{}}
		for _, r := range rs {
			a, err := s.Send(ctx, []proto.AgentReport{r})
			if err != nil {
				return out, err
			}
			out.Acked = append(out.Acked, a.Acked...)
			for id, why := range a.Rejected {
				out.Rejected[id] = why
			}
		}
		return out, nil
	}
	return ack, err // retried later with the same reports
}

// undecodable reports whether a 400 says the coordinator could not decode
// the body (proto.CodeUndecodable: a field it does not know, from a newer
// agent; a type it does not expect): the agent writes its reports itself,
// so that is a version skew to wait out, never a report to drop.
func undecodable(ae *apiclient.Error) bool {
	return ae.Status == http.StatusBadRequest && ae.Code == proto.CodeUndecodable
}

// bootBackend adapts the boot state and the pool to httpboot's Backend.
type bootBackend struct {
	s    *bootstate.Store
	pool *dhcp.Pool
}

// Address is mac's reservation (a known node) or the lease this agent
// granted it.
func (b bootBackend) Address(mac string) (netip.Addr, bool) {
	hw, err := net.ParseMAC(mac)
	if err != nil {
		return netip.Addr{}, false
	}
	if v := b.s.View(); v != nil {
		if n, ok := v.Node(hw); ok {
			return v.NodeIP(n)
		}
	}
	return b.pool.Held(hw.String(), time.Now())
}

func (b bootBackend) Boot(mac string) (*proto.BootNode, proto.BootConfig, bool) {
	v := b.s.View()
	if v == nil {
		return nil, proto.BootConfig{}, false
	}
	hw, err := net.ParseMAC(mac)
	if err != nil {
		return nil, proto.BootConfig{}, false
	}
	if n, ok := v.Node(hw); ok {
		return n, n.Boot, true
	}
	if !v.State.DiscoveryEnabled {
		return nil, proto.BootConfig{}, false
	}
	return nil, v.State.Discovery, true
}

func (b bootBackend) NodeByUUID(uuid string) (*proto.BootNode, bool) {
	v := b.s.View()
	if v == nil {
		return nil, false
	}
	return v.NodeByUUID(uuid)
}

func (b bootBackend) ArtifactBySHA(sha string) (proto.Artifact, bool) {
	v := b.s.View()
	if v == nil {
		return proto.Artifact{}, false
	}
	check := func(bc proto.BootConfig) (proto.Artifact, bool) {
		for _, a := range []*proto.Artifact{bc.Kernel, bc.Initrd} {
			if a != nil && a.SHA256 == sha {
				return *a, true
			}
		}
		return proto.Artifact{}, false
	}
	if a, ok := check(v.State.Discovery); ok {
		return a, true
	}
	for _, n := range v.State.Nodes {
		if a, ok := check(n.Boot); ok {
			return a, true
		}
	}
	return proto.Artifact{}, false
}
