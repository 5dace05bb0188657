// Package gossip is how rack agents and coordinators find each other: a
// small wrapper around hashicorp/memberlist in which every member
// announces a Meta (role, rack, API address, version and, for
// coordinators, where the Raft leader is) and keeps an immutable view of
// who is alive, cheap enough to read on every DHCP packet.
//
// Use: New, then Run(ctx) in the background (it joins Config.Join and
// keeps retrying while this member is alone), then Leave and Shutdown.
package gossip

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// Profiles name memberlist's timing presets.
const (
	// ProfileLAN is memberlist.DefaultLANConfig: probe every 1 s with a
	// 500 ms ack timeout, SuspicionMult 4. The default.
	ProfileLAN = "lan"
	// ProfileLocal is memberlist.DefaultLocalConfig, for loopback tests:
	// probe every 1 s with a 200 ms ack timeout, SuspicionMult 3, gossip
	// every 100 ms.
	ProfileLocal = "local"
)

// Defaults of the join retry loop.
const (
	DefaultRetryJoinMin = time.Second
	DefaultRetryJoinMax = 30 * time.Second
)

// metaUpdateTimeout bounds how long UpdateMeta waits for its broadcast.
const metaUpdateTimeout = 5 * time.Second

// ErrClosed is returned by calls made after Shutdown.
var ErrClosed = errors.New("gossip: shut down")

// Config configures a Gossip member. Only Name and Meta are required.
type Config struct {
	// Name identifies this member; it must be unique in the cluster.
	Name string
	// BindAddr is where gossip listens, UDP and TCP on the same port
	// (host:port; port 0 picks a free one). Default 0.0.0.0:7946.
	BindAddr string
	// AdvertiseAddr is the ip:port other members reach this one at, if
	// not BindAddr (NAT, or BindAddr on 0.0.0.0). memberlist replaces its
	// port with the bound one when BindAddr's port is 0.
	AdvertiseAddr string
	// Join lists host:port of any members; Run joins through them while
	// this member is alone. Empty for the first member.
	Join []string
	// Key, if set, encrypts all gossip (AES-GCM via memberlist's keyring):
	// 16, 24 or 32 bytes, the same on every member.
	Key []byte
	// Meta is what this member announces; UpdateMeta changes it later.
	Meta Meta
	// Logger receives this package's logs and memberlist's (its DEBUG and
	// INFO lines at debug level). Nil discards them.
	Logger *slog.Logger

	// Profile is ProfileLAN (default) or ProfileLocal.
	Profile string
	// ProbeInterval, ProbeTimeout and SuspicionMult override the
	// profile's values when not zero (tests shorten them further).
	ProbeInterval time.Duration
	ProbeTimeout  time.Duration
	SuspicionMult int

	// RetryJoinMin is the first wait between join attempts while alone,
	// doubled after each failure up to RetryJoinMax (each wait jittered
	// by ±20%). Defaults DefaultRetryJoinMin and DefaultRetryJoinMax.
	RetryJoinMin time.Duration
	RetryJoinMax time.Duration
}

// Gossip is one member of the cluster. Its methods are safe for
// concurrent use.
type Gossip struct {
	name      string
	join      []string
	retryMin  time.Duration
	retryMax  time.Duration
	reapAfter time.Duration // memberlist's GossipToTheDeadTime
	log       *slog.Logger
	ml        *memberlist.Memberlist
	localAddr string
	bcast     *memberlist.TransmitLimitedQueue

	meta   atomic.Pointer[[]byte] // encoded Meta of this member
	metaMu sync.Mutex             // serialises UpdateMeta

	snap atomic.Pointer[snapshot]

	mu      sync.Mutex // guards the fields below; taken inside memberlist's node lock
	nodes   map[string]*Member
	leaving map[string]time.Time // leave intents heard, by node name
	seen    map[uint64]time.Time // leave intent nonces heard
	changed chan struct{}

	joinAttempts atomic.Int64 // failed attempts of Run, for tests and logs

	lifeMu sync.Mutex // guards closed and left; held across Leave
	closed bool
	left   bool
	done   chan struct{} // closed by Shutdown
	wg     sync.WaitGroup
}

// New creates the member and starts gossiping; it is alone until Join or
// Run reaches another member.
func New(cfg Config) (*Gossip, error) {
	if cfg.Name == "" {
		return nil, errors.New("gossip: config: Name is required")
	}
	meta, err := cfg.Meta.encode()
	if err != nil {
		return nil, err
	}
	mc, err := memberlistConfig(cfg)
	if err != nil {
		return nil, err
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	g := &Gossip{
		name:      cfg.Name,
		join:      append([]string(nil), cfg.Join...),
		retryMin:  cfg.RetryJoinMin,
		retryMax:  cfg.RetryJoinMax,
		reapAfter: mc.GossipToTheDeadTime,
		log:       logger,
		nodes:     make(map[string]*Member),
		leaving:   make(map[string]time.Time),
		seen:      make(map[uint64]time.Time),
		changed:   make(chan struct{}),
		done:      make(chan struct{}),
	}
	if g.retryMin <= 0 {
		g.retryMin = DefaultRetryJoinMin
	}
	if g.retryMax <= 0 {
		g.retryMax = DefaultRetryJoinMax
	}
	g.retryMax = max(g.retryMax, g.retryMin)
	g.meta.Store(&meta)
	g.snap.Store(&snapshot{})
	g.bcast = &memberlist.TransmitLimitedQueue{
		NumNodes:       func() int { return g.snap.Load().numAlive },
		RetransmitMult: mc.RetransmitMult,
	}
	mc.Delegate = delegate{g}
	mc.Events = events{g}
	mc.Logger = log.New(logWriter{logger.With("component", "memberlist")}, "", 0)

	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("gossip: start memberlist: %w", err)
	}
	g.ml = ml
	g.mu.Lock()
	if self := g.nodes[g.name]; self != nil { // memberlist reported us from Create
		g.localAddr = self.Addr
	}
	g.mu.Unlock()
	logger.Info("gossip: started", "name", g.name, "addr", g.localAddr, "profile", profileName(cfg.Profile),
		"encrypted", len(cfg.Key) > 0, "role", cfg.Meta.Role, "rack", cfg.Meta.Rack)
	return g, nil
}

func profileName(p string) string {
	if p == "" {
		return ProfileLAN
	}
	return p
}

// memberlistConfig turns cfg into memberlist's configuration, without
// delegates and logger.
func memberlistConfig(cfg Config) (*memberlist.Config, error) {
	var mc *memberlist.Config
	switch profileName(cfg.Profile) {
	case ProfileLAN:
		mc = memberlist.DefaultLANConfig()
	case ProfileLocal:
		mc = memberlist.DefaultLocalConfig()
	default:
		return nil, fmt.Errorf("gossip: config: Profile %q, want %q or %q", cfg.Profile, ProfileLAN, ProfileLocal)
	}
	mc.Name = cfg.Name
	if cfg.ProbeInterval < 0 || cfg.ProbeTimeout < 0 || cfg.SuspicionMult < 0 {
		return nil, errors.New("gossip: config: ProbeInterval, ProbeTimeout and SuspicionMult must not be negative")
	}
	if cfg.ProbeInterval > 0 {
		mc.ProbeInterval = cfg.ProbeInterval
	}
	if cfg.ProbeTimeout > 0 {
		mc.ProbeTimeout = cfg.ProbeTimeout
	}
	if cfg.SuspicionMult > 0 {
		mc.SuspicionMult = cfg.SuspicionMult
	}
	if mc.ProbeTimeout >= mc.ProbeInterval {
		return nil, fmt.Errorf("gossip: config: ProbeTimeout %v must be shorter than ProbeInterval %v", mc.ProbeTimeout, mc.ProbeInterval)
	}

	bind := cfg.BindAddr
	if bind == "" {
		bind = net.JoinHostPort(mc.BindAddr, strconv.Itoa(mc.BindPort))
	}
	host, port, err := splitHostPort(bind)
	if err != nil {
		return nil, fmt.Errorf("gossip: config: BindAddr: %w", err)
	}
	if host == "" {
		host = "0.0.0.0"
	}
	mc.BindAddr, mc.BindPort = host, port
	mc.AdvertiseAddr, mc.AdvertisePort = "", port
	if cfg.AdvertiseAddr != "" {
		host, aport, err := splitHostPort(cfg.AdvertiseAddr)
		if err != nil {
			return nil, fmt.Errorf("gossip: config: AdvertiseAddr: %w", err)
		}
		if net.ParseIP(host) == nil {
			return nil, fmt.Errorf("gossip: config: AdvertiseAddr %q: host must be an IP address", cfg.AdvertiseAddr)
		}
		if aport == 0 {
			aport = port
		}
		mc.AdvertiseAddr, mc.AdvertisePort = host, aport
	}

	if len(cfg.Key) > 0 {
		if err := memberlist.ValidateKey(cfg.Key); err != nil {
			return nil, fmt.Errorf("gossip: config: Key is %d bytes, want 16, 24 or 32", len(cfg.Key))
		}
		kr, err := memberlist.NewKeyring(nil, cfg.Key)
		if err != nil {
			return nil, fmt.Errorf("gossip: config: Key: %w", err)
		}
		mc.Keyring = kr
	}
	return mc, nil
}

func splitHostPort(s string) (string, int, error) {
	host, p, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("%q: bad port", s)
	}
	return host, port, nil
}

// LocalAddr returns the gossip address other members reach this one at.
func (g *Gossip) LocalAddr() string { return g.localAddr }

// Name returns this member's name.
func (g *Gossip) Name() string { return g.name }

// Join contacts the members at addrs (host:port) and exchanges state with
// them. It returns how many it reached; the error is non-nil only if none
// was. ctx bounds the wait, not memberlist's dials (each bounded by its
// TCPTimeout, 10 s on the LAN profile).
func (g *Gossip) Join(ctx context.Context, addrs []string) (int, error) {
	if len(addrs) == 0 {
		return 0, errors.New("gossip: join: no addresses")
	}
	g.lifeMu.Lock()
	switch {
	case g.closed:
		g.lifeMu.Unlock()
		return 0, ErrClosed
	case g.left:
		g.lifeMu.Unlock()
		return 0, errors.New("gossip: join: this member has left")
	}
	type result struct {
		n   int
		err error
	}
	ch := make(chan result, 1)
	g.wg.Add(1)
	g.lifeMu.Unlock()
	go func() {
		defer g.wg.Done()
		n, err := g.ml.Join(addrs)
		ch <- result{n, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return r.n, &joinError{addrs: addrs, err: r.err}
		}
		return r.n, nil
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// joinError puts memberlist's multi-line join error on one line.
type joinError struct {
	addrs []string
	err   error
}

func (e *joinError) Error() string {
	parts := strings.Split(strings.TrimSpace(e.err.Error()), "\n\t* ")
	if len(parts) > 1 && strings.HasSuffix(parts[0], "occurred:") {
		if parts[0] == "1 error occurred:" {
			parts = parts[1:]
		} else {
			parts[1] = parts[0] + " " + parts[1]
			parts = parts[1:]
		}
	}
	return fmt.Sprintf("gossip: join %v: %s", e.addrs, strings.Join(parts, "; "))
}

func (e *joinError) Unwrap() error { return e.err }

// Run joins Config.Join while no other member is alive: at once, then
// with a backoff from RetryJoinMin to RetryJoinMax, so a process started
// before its peers still finds them, and one left alone by a partition
// finds its way back. It returns nil when ctx is done or on Shutdown.
func (g *Gossip) Run(ctx context.Context) error {
	if len(g.join) == 0 {
		select {
		case <-ctx.Done():
		case <-g.done:
		}
		return nil
	}
	backoff := g.retryMin
	attempts := 0
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		timer.Stop()        // Go 1.23+ timers: no stale fire after Stop or Reset
		wake := g.Changed() // before looking, so no change slips between
		if g.alone() && !g.hasLeft() {
			wake = nil // while alone, only the backoff timer wakes us
			n, err := g.Join(ctx, g.join)
			if ctx.Err() != nil {
				return nil
			}
			if err == nil && !g.alone() {
				if attempts > 0 {
					g.log.Info("gossip: joined", "contacted", n, "after_attempts", attempts+1)
				} else {
					g.log.Info("gossip: joined", "contacted", n)
				}
				backoff, attempts = g.retryMin, 0
				continue
			}
			attempts++
			g.joinAttempts.Add(1)
			wait := jitter(backoff)
			level := slog.LevelDebug
			if attempts == 1 {
				level = slog.LevelInfo
			} else if attempts%10 == 0 {
				level = slog.LevelWarn
			}
			g.log.Log(ctx, level, "gossip: no other member reachable, will retry",
				"join", g.join, "attempt", attempts, "retry_in", wait.Round(time.Millisecond), "err", err)
			timer.Reset(wait)
			backoff = min(2*backoff, g.retryMax)
		} else if !g.alone() {
			backoff, attempts = g.retryMin, 0
		}
		select {
		case <-ctx.Done():
			return nil
		case <-g.done:
			return nil
		case <-wake:
			// A change may have left us alone: look again.
		case <-timer.C:
		}
	}
}

// jitter spreads d by ±20% so members restarted together do not retry
// in step.
func jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

// UpdateMeta changes this member's Meta and broadcasts it, waiting up to
// 5 s for the broadcast to go out. On a timeout the new Meta is in place
// locally and still spreads (push/pull); the error says so.
func (g *Gossip) UpdateMeta(m Meta) error {
	b, err := m.encode()
	if err != nil {
		return err
	}
	g.metaMu.Lock()
	defer g.metaMu.Unlock()
	g.lifeMu.Lock()
	closed, left := g.closed, g.left
	g.lifeMu.Unlock()
	switch {
	case closed:
		return ErrClosed
	case left: // memberlist ignores our own updates after Leave
		return errors.New("gossip: update meta: this member has left")
	}
	g.meta.Store(&b)
	if err := g.ml.UpdateNode(metaUpdateTimeout); err != nil {
		return fmt.Errorf("gossip: update meta (applied locally, broadcast unconfirmed): %w", err)
	}
	return nil
}

func (g *Gossip) hasLeft() bool {
	g.lifeMu.Lock()
	defer g.lifeMu.Unlock()
	return g.left
}

// Leave tells the cluster this member is going away on purpose, so the
// others record it as left at once instead of detecting a failure. It
// waits up to timeout for the broadcast. Gossip keeps running until
// Shutdown, which should follow.
func (g *Gossip) Leave(timeout time.Duration) error {
	g.lifeMu.Lock()
	defer g.lifeMu.Unlock()
	if g.closed {
		return ErrClosed // memberlist panics on Leave after Shutdown
	}
	if !g.left {
		g.left = true
		nonce := rand.Uint64()
		now := time.Now()
		g.mu.Lock()
		g.seen[nonce] = now
		g.leaving[g.name] = now
		g.mu.Unlock()
		// Queued before memberlist's own leave message, so it rides the
		// same gossip packets.
		g.bcast.QueueBroadcast(&leaveBroadcast{node: g.name, msg: leaveIntent(nonce, g.name)})
	}
	g.log.Info("gossip: leaving", "name", g.name)
	if err := g.ml.Leave(timeout); err != nil {
		return fmt.Errorf("gossip: leave: %w", err)
	}
	return nil
}

// Shutdown stops gossip without telling anyone (the others will detect a
// failure unless Leave came first) and waits for this package's
// goroutines. Safe to call more than once.
func (g *Gossip) Shutdown() error {
	g.lifeMu.Lock()
	if g.closed {
		g.lifeMu.Unlock()
		return nil
	}
	g.closed = true
	close(g.done)
	g.lifeMu.Unlock()

	err := g.ml.Shutdown()
	g.wg.Wait()
	g.log.Info("gossip: shut down", "name", g.name)
	if err != nil {
		return fmt.Errorf("gossip: shutdown: %w", err)
	}
	return nil
}
