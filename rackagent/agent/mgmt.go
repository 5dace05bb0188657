package agent

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/metalfleet/metalfleet/coordinator/apiclient"
	"github.com/metalfleet/metalfleet/proto"
)

// DefaultMgmtAddr is the management listener's address when none is
// given: loopback, a fixed port.
const DefaultMgmtAddr = "127.0.0.1:7492"

// Diag is GET /v1/diag on the management listener.
type Diag struct {
	Name           string `json:"name"`
	Rack           string `json:"rack"`
	Version        string `json:"version"`
	Incarnation    string `json:"incarnation"`
	OutboxLen      int    `json:"outbox_len"`
	OutboxSighting int    `json:"outbox_sightings"`
	Leases         int    `json:"leases"`
	BootStateIndex uint64 `json:"bootstate_index"`
	BootSynced     bool   `json:"bootstate_synced"`
	HTTPAddr       string `json:"http_addr"`
	DHCPAddr       string `json:"dhcp_addr"`
}

// mgmtAuth checks management bearer tokens: the agent's own token
// (compared in constant time), or an admin token, which the coordinator
// verifies (an admin-only read answered 200); a verified token is
// remembered for a minute.
//
// Unauthenticated traffic must not become traffic to the coordinator: a
// token the coordinator refused is remembered for a minute too (at most
// mgmtBadMax of them), one check per token is in flight at a time (the
// others wait for its answer), at most mgmtMaxChecks checks are in flight
// in all (console ticket redemptions included), each waits at most mgmtCheckTimeout, and a source address past
// mgmtFailBurst failures (refilled at mgmtFailRate a second) is answered
// 429 without a check.
type mgmtAuth struct {
	own   string
	addrs func() []string // the coordinators' API addresses
	now   func() time.Time

	mu       sync.Mutex
	good     map[[32]byte]time.Time // sha256 of a verified token -> until
	bad      map[[32]byte]time.Time // sha256 of a refused token -> until
	inflight map[[32]byte]*mgmtCheck
	fails    map[string]*failBucket // source IP -> failed authentications
	sem      chan struct{}          // one token per check in flight
	checks   atomic.Int64           // coordinator checks made (tests)
	waiters  atomic.Int64           // checks waiting on another's in flight (tests)
	queued   atomic.Int64           // checks waiting for a free slot (tests)
}

// mgmtCheck is one coordinator check in flight; done closes when err is
// set.
type mgmtCheck struct {
	done chan struct{}
	err  error
}

type failBucket struct {
	tokens float64
	last   time.Time
}

// Bounds of mgmtAuth.
const (
	// mgmtVerifyFor is how long a token the coordinator verified (or
	// refused) is taken without asking again.
	mgmtVerifyFor = time.Minute
	// mgmtBadMax bounds the refused tokens remembered.
	mgmtBadMax = 1024
	// mgmtMaxChecks bounds the coordinator checks in flight.
	mgmtMaxChecks = 4
	// mgmtCheckTimeout bounds one check (and the wait for a free slot).
	mgmtCheckTimeout = 2 * time.Second
	// mgmtFailBurst and mgmtFailRate bound failed authentications per
	// source address: a burst, then this many a second.
	mgmtFailBurst = 10
	mgmtFailRate  = 0.5
	// mgmtFailMax bounds the source addresses tracked.
	mgmtFailMax = 4096
)

func newMgmtAuth(own string, addrs func() []string, now func() time.Time) *mgmtAuth {
	return &mgmtAuth{own: own, addrs: addrs, now: now, good: map[[32]byte]time.Time{}, bad: map[[32]byte]time.Time{},
		inflight: map[[32]byte]*mgmtCheck{}, fails: map[string]*failBucket{}, sem: make(chan struct{}, mgmtMaxChecks)}
}

var errBadToken = proto.Errorf(proto.CodeUnauthorized, "the token is neither this rack's agent token nor an admin token")

// check authenticates token, sent from source address ip.
func (m *mgmtAuth) check(ctx context.Context, token, ip string) error {
	if token == "" {
		return proto.Errorf(proto.CodeUnauthorized, "want Authorization: Bearer <token> (this rack's agent token or an admin token)")
	}
	if m.own != "" && subtle.ConstantTimeCompare([]byte(token), []byte(m.own)) == 1 {
		return nil
	}
	key := sha256.Sum256([]byte(token))
	now := m.now()
	m.mu.Lock()
	if until, ok := m.good[key]; ok && now.Before(until) {
		m.mu.Unlock()
		return nil
	}
	if !m.mayFailLocked(ip, now) {
		m.mu.Unlock()
		return proto.Errorf(proto.CodeRateLimited, "too many failed authentications from %s; slow down", ip)
	}
	if until, ok := m.bad[key]; ok && now.Before(until) {
		m.failLocked(ip, now)
		m.mu.Unlock()
		return errBadToken
	}
	c, waiting := m.inflight[key]
	if !waiting {
		c = &mgmtCheck{done: make(chan struct{})}
		m.inflight[key] = c
		// A check takes a failure from the source's budget until it
		// passes: distinct tokens sent at once cannot outrun it.
		m.failLocked(ip, now)
	}
	m.mu.Unlock()

	if waiting {
		m.waiters.Add(1)
		select {
		case <-c.done:
			m.waiters.Add(-1)
		case <-ctx.Done():
			m.waiters.Add(-1)
			return proto.Errorf(proto.CodeUnavailable, "cannot verify the token: %v", ctx.Err())
		}
	} else {
		c.err = m.ask(ctx, token)
		m.mu.Lock()
		delete(m.inflight, key)
		now = m.now()
		if c.err != errBadToken {
			m.refundLocked(ip)
		}
		switch {
		case c.err == nil:
			if len(m.good) >= mgmtBadMax {
				clear(m.good)
			}
			m.good[key] = now.Add(mgmtVerifyFor)
		case c.err == errBadToken:
			if len(m.bad) >= mgmtBadMax {
				for k, until := range m.bad {
					if !now.Before(until) || len(m.bad) >= mgmtBadMax {
						delete(m.bad, k)
					}
				}
			}
			m.bad[key] = now.Add(mgmtVerifyFor)
		}
		m.mu.Unlock()
		close(c.done)
	}
	if waiting && c.err == errBadToken {
		m.mu.Lock()
		m.failLocked(ip, m.now())
		m.mu.Unlock()
	}
	return c.err
}

// ask has the coordinator check token, in one of the mgmtMaxChecks slots.
func (m *mgmtAuth) ask(ctx context.Context, token string) error {
	ctx, cancel := context.WithTimeout(ctx, mgmtCheckTimeout)
	defer cancel()
	if !m.slot(ctx) {
		return proto.Errorf(proto.CodeUnavailable, "cannot verify the token now: too many checks in flight")
	}
	defer m.unslot()
	m.checks.Add(1)
	c := apiclient.New(strings.Join(m.addrs(), ","), token)
	// An admin-only read of one item: the answer stays small however
	// many tokens there are.
	_, err := c.Do(ctx, "GET", "/v1/tokens?limit=1", nil, nil)
	var ae *apiclient.Error
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ae) && (ae.Status == http.StatusUnauthorized || ae.Status == http.StatusForbidden):
		return errBadToken
	default:
		return proto.Errorf(proto.CodeUnavailable, "cannot verify the token with the coordinator: %v", err)
	}
}

// slot takes one of the mgmtMaxChecks slots of coordinator checks (token
// checks and console ticket redemptions alike), waiting until ctx ends;
// false if none came free. unslot gives it back.
func (m *mgmtAuth) slot(ctx context.Context) bool {
	m.queued.Add(1)
	defer m.queued.Add(-1)
	select {
	case m.sem <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

func (m *mgmtAuth) unslot() { <-m.sem }

// mayFailLocked reports whether ip has a failure left in its bucket.
func (m *mgmtAuth) mayFailLocked(ip string, now time.Time) bool {
	b := m.fails[ip]
	if b == nil {
		return true
	}
	b.tokens = min(mgmtFailBurst, b.tokens+now.Sub(b.last).Seconds()*mgmtFailRate)
	b.last = now
	return b.tokens >= 1
}

// refundLocked gives back the failure a check took from ip's budget.
func (m *mgmtAuth) refundLocked(ip string) {
	if b := m.fails[ip]; b != nil {
		b.tokens = min(mgmtFailBurst, b.tokens+1)
	}
}

// failLocked takes one failure from ip's bucket.
func (m *mgmtAuth) failLocked(ip string, now time.Time) {
	b := m.fails[ip]
	if b == nil {
		if len(m.fails) >= mgmtFailMax {
			full := time.Duration(mgmtFailBurst / mgmtFailRate * float64(time.Second))
			for k, x := range m.fails {
				if now.Sub(x.last) >= full || len(m.fails) >= mgmtFailMax {
					delete(m.fails, k)
				}
			}
		}
		b = &failBucket{tokens: mgmtFailBurst, last: now}
		m.fails[ip] = b
	}
	b.tokens = max(0, b.tokens-1)
}

// mgmtHandler is the management listener's routes: the console routes
// behind single-use console tickets (mgmt_console.go), every other one
// behind mgmtAuth.
func (a *Agent) mgmtHandler() http.Handler {
	consoles := a.consoleRoutes()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/health", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /v1/diag", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, a.Diag())
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/v1/console/") {
			consoles.ServeHTTP(w, r)
			return
		}
		scheme, token, _ := strings.Cut(r.Header.Get("Authorization"), " ")
		if !strings.EqualFold(scheme, "Bearer") {
			token = ""
		}
		ip, _, err := net.SplitHostPort(r.RemoteAddr)
		if err != nil {
			ip = r.RemoteAddr
		}
		if err := a.mgmtAuth.check(r.Context(), strings.TrimSpace(token), ip); err != nil {
			a.log.Warn("management request refused", "remote", r.RemoteAddr, "path", r.URL.Path, "err", err)
			if proto.CodeOf(err) == proto.CodeRateLimited {
				w.Header().Set("Retry-After", "2")
			}
			proto.WriteError(w, err)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// Diag describes the agent's state.
func (a *Agent) Diag() Diag {
	d := Diag{Name: a.cfg.Name, Rack: a.cfg.Rack, Version: Version, Incarnation: a.out.Incarnation(),
		OutboxLen: a.out.Len(), OutboxSighting: a.out.Sightings(), Leases: len(a.pool.Leases()),
		BootSynced: a.boot.Synced(), HTTPAddr: a.httpLn.Addr().String(), DHCPAddr: a.dhcp.Addr().String()}
	if v := a.boot.View(); v != nil {
		d.BootStateIndex = v.State.Index
	}
	return d
}

// MgmtAddr is the management listener's address as the coordinator is
// told it (an unspecified host replaced by the advertise IP).
func (a *Agent) MgmtAddr() string { return a.mgmtAdvert }

// mgmtAdvertise is ln's address with an unspecified host replaced by ip.
func mgmtAdvertise(ln net.Listener, ip string) string {
	host, port, err := net.SplitHostPort(ln.Addr().String())
	if err != nil {
		return ln.Addr().String()
	}
	if a := net.ParseIP(host); a == nil || a.IsUnspecified() {
		host = ip
	}
	return net.JoinHostPort(host, port)
}

// serveMgmt serves the management listener until ctx ends.
func (a *Agent) serveMgmt(ctx context.Context) error {
	hs := &http.Server{Handler: a.mgmtHandler(), ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(a.log.Handler(), slog.LevelWarn)}
	stop := context.AfterFunc(ctx, func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = hs.Shutdown(sctx)
	})
	defer stop()
	err := hs.Serve(a.mgmtLn)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
