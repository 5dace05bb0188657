// Package httpapi serves the coordinator's /v1 HTTP API: JSON in and out,
// bearer-token auth by role, writes forwarded to the Raft leader, and
// blocking reads on the state store's index.
package httpapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/metalfleet/metalfleet/coordinator/decide"
	"github.com/metalfleet/metalfleet/coordinator/fsm"
	"github.com/metalfleet/metalfleet/coordinator/state"
	"github.com/metalfleet/metalfleet/proto"
)

// Backend is what the API needs from the coordinator it serves.
type Backend interface {
	// NodeID is this server's Raft id.
	NodeID() string
	// Store is the local copy of the replicated state.
	Store() *state.Store
	// Apply proposes a command on the leader and waits until it is
	// applied. It returns the FSM's value and the entry's index.
	Apply(ctx context.Context, c fsm.Command) (any, uint64, error)
	// IsLeader reports whether this server leads now.
	IsLeader() bool
	// VerifyLeader confirms leadership with a quorum.
	VerifyLeader() error
	// LeaderHTTP returns the leader's id and HTTP address, empty if not
	// known yet.
	LeaderHTTP() (id, addr string)
	// Status describes this server and the cluster.
	Status() proto.Status
	// Join adds a server as a voter (leader only).
	Join(ctx context.Context, req proto.JoinRequest) error
	// RemovePeer removes a server from the cluster (leader only).
	RemovePeer(ctx context.Context, id string) error
}

// ReadyWaiter is implemented by a Backend whose leader must apply its
// predecessor's log before it may act on its store (coordinator/server's:
// a new leader's barrier). WaitReady returns nil at once on a ready
// leader; on a new one it waits a bounded time, then returns a retryable
// error.
type ReadyWaiter interface {
	WaitReady() error
}

// ErrNotLeader is what a Backend returns when a leader-only call reaches a
// follower.
var ErrNotLeader = errors.New("not the leader")

// Config configures the API. The zero value takes the defaults.
type Config struct {
	// MaxBodyBytes limits request bodies (default 1 MiB).
	MaxBodyBytes int64
	// ForwardWait bounds how long a follower waits for a leader to exist
	// before it answers 503 (default 5 s).
	ForwardWait time.Duration
	// MaxWait caps ?wait= on blocking reads (default 5 min).
	MaxWait time.Duration
	// ApplyTimeout bounds one write's wait for commit (default 10 s).
	ApplyTimeout time.Duration
	// AgentAlive is how long after its last API call an agent that gossip
	// does not know of is listed as alive (default 2 min); after it,
	// "unknown".
	AgentAlive time.Duration
	// Now and NewID decide time and ids before a command is proposed;
	// tests replace them.
	Now   func() time.Time
	NewID func() string
}

func (c *Config) fill() {
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = 1 << 20
	}
	if c.ForwardWait == 0 {
		c.ForwardWait = 5 * time.Second
	}
	if c.MaxWait == 0 {
		c.MaxWait = 5 * time.Minute
	}
	if c.ApplyTimeout == 0 {
		c.ApplyTimeout = 10 * time.Second
	}
	if c.AgentAlive == 0 {
		c.AgentAlive = 2 * time.Minute
	}
	if c.Now == nil {
		c.Now = func() time.Time { return time.Now().UTC() }
	}
	if c.NewID == nil {
		c.NewID = newUUID
	}
}

// ForwardedHeader marks a request a follower passed to the leader, so the
// leader never passes it on again.
const ForwardedHeader = "X-Metalfleet-Forwarded-By"

// API is the HTTP handler set.
type API struct {
	b       Backend
	cfg     Config
	log     *slog.Logger
	mux     *http.ServeMux
	fwd     *http.Client
	reqs    *prometheus.CounterVec
	latency *prometheus.HistogramVec
	flight  *prometheus.GaugeVec

	contacts contacts
	// sched keeps the nodes' capacities between scheduling decisions
	// (decoding 10,000 inventories per decision would be most of it).
	sched decide.CapacityCache
}

// kind says where a route is served.
type kind int

const (
	kindLocal kind = iota // by any server from what it has (health, status)
	kindRead              // consistent by default: by the leader; ?stale: locally
	kindWrite             // by the leader; followers forward
	// kindReadOwnWait is kindRead for a handler that blocks on an index of
	// its own (a rack's boot state) through call.blockOn.
	kindReadOwnWait
)

// Route is one API endpoint. Routes lists them all; the OpenAPI document
// must list the same set.
type Route struct {
	Method string
	Path   string
	// Role is the least role that may call it; "" needs no token.
	Role proto.Role
	kind kind
	h    handler
}

type handler func(c *call) (any, error)

// call is one request as handlers see it.
type call struct {
	a      *API
	r      *http.Request
	w      http.ResponseWriter
	token  *proto.Token
	index  uint64 // X-Metalfleet-Index of the answer
	status int
}

// New returns the API over b. reg may be nil.
func New(b Backend, cfg Config, log *slog.Logger, reg prometheus.Registerer) *API {
	cfg.fill()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &API{
		b: b, cfg: cfg, log: log, mux: http.NewServeMux(),
		reqs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "metalfleet_api_requests_total", Help: "API requests by route and status code.",
		}, []string{"route", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "metalfleet_api_request_duration_seconds", Help: "API request latency by route.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"route"}),
		flight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "metalfleet_api_requests_in_flight", Help: "API requests being served (blocking reads included), by route.",
		}, []string{"route"}),
	}
	if reg != nil {
		reg.MustRegister(a.reqs, a.latency, a.flight)
	}
	a.fwd = &http.Client{
		// No overall timeout: a forwarded blocking read lasts as long as
		// its ?wait=; the caller's context bounds it.
		Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     90 * time.Second,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	for _, rt := range a.routes() {
		a.mux.Handle(rt.Method+" "+rt.Path, a.wrap(rt))
	}
	// Requests no route takes: 405 with Allow where the path exists
	// under other methods, else 404; both as JSON errors.
	paths := http.NewServeMux()
	allow := map[string][]string{}
	for _, rt := range a.routes() {
		if _, ok := allow[rt.Path]; !ok {
			paths.HandleFunc(rt.Path, func(http.ResponseWriter, *http.Request) {})
		}
		allow[rt.Path] = append(allow[rt.Path], rt.Method)
	}
	a.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if _, pattern := paths.Handler(r); pattern != "" {
			w.Header().Set("Allow", strings.Join(allow[pattern], ", "))
			writeError(w, proto.Errorf(proto.CodeNotAllowed, "%s is not allowed on %s; allowed: %s", r.Method, r.URL.Path, strings.Join(allow[pattern], ", ")))
			return
		}
		writeError(w, proto.Errorf(proto.CodeNotFound, "no route %s %s", r.Method, r.URL.Path))
	})
	return a
}

// Handler returns the API's http.Handler.
func (a *API) Handler() http.Handler { return a.mux }

// Routes lists every route the API serves.
func Routes() []Route {
	a := &API{}
	rs := a.routes()
	for i := range rs {
		rs[i].h = nil
	}
	return rs
}

// statusWriter records the status code for metrics.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (s *statusWriter) WriteHeader(code int) {
	if s.code == 0 {
		s.code = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.code == 0 {
		s.code = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

func (s *statusWriter) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (a *API) wrap(rt Route) http.Handler {
	name := rt.Method + " " + rt.Path
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		inFlight := a.flight.WithLabelValues(name)
		inFlight.Inc()
		defer func() {
			inFlight.Dec()
			code := sw.code
			if code == 0 {
				code = http.StatusOK
			}
			a.reqs.WithLabelValues(name, strconv.Itoa(code)).Inc()
			a.latency.WithLabelValues(name).Observe(time.Since(start).Seconds())
		}()
		a.serve(sw, r, rt)
	})
}

func (a *API) serve(w http.ResponseWriter, r *http.Request, rt Route) {
	c := &call{a: a, r: r, w: w, status: http.StatusOK}
	forwarded := r.Header.Get(ForwardedHeader) != ""
	leader := a.b.IsLeader()
	stale := isStale(r)
	if leader && rt.kind != kindLocal && (rt.kind == kindWrite || !stale) {
		// A new leader authenticates and checks preconditions against
		// its own store only once it holds what its predecessor
		// committed: a token revoked just before the election must not
		// let a write through, nor a rack just created answer 404. A
		// ?stale read asked for the local state now, and gets it.
		if rw, ok := a.b.(ReadyWaiter); ok {
			if err := rw.WaitReady(); err != nil {
				w.Header().Set("Retry-After", "1")
				writeError(w, retryable(err))
				return
			}
		}
	}
	if rt.Role != "" {
		tok, err := a.authenticate(r)
		if err != nil && rt.kind != kindLocal && proto.CodeOf(err) == proto.CodeUnauthorized && r.Header.Get("Authorization") != "" {
			// Only a leader that has applied its predecessor's log may
			// refuse a token: another server's copy of the tokens may
			// lag (a token just made, a server just restarted).
			switch {
			case leader:
				if verr := a.b.VerifyLeader(); verr != nil {
					w.Header().Set("Retry-After", "1")
					writeError(w, retryable(verr))
					return
				}
				tok, err = a.authenticate(r)
			case !forwarded:
				a.forward(w, r)
				return
			default:
				w.Header().Set("Retry-After", "1")
				writeError(w, proto.Errorf(proto.CodeNoLeader, "leadership moved while the request was forwarded; try again"))
				return
			}
		}
		if err != nil {
			writeError(w, err)
			return
		}
		if !allowed(tok, rt.Role) {
			writeError(w, proto.Errorf(proto.CodeForbidden, "%s token may not %s %s (needs %s)", withArticle(string(tok.Role)), r.Method, rt.Path, rt.Role))
			return
		}
		c.token = tok
	}
	switch {
	case rt.kind == kindWrite && !leader, (rt.kind == kindRead || rt.kind == kindReadOwnWait) && !stale && !leader:
		if forwarded {
			writeError(w, proto.Errorf(proto.CodeNoLeader, "leadership moved while the request was forwarded; try again"))
			return
		}
		a.forward(w, r)
		return
	}
	if rt.kind == kindRead {
		// A bad page is refused before a blocking read waits, not after.
		if q := r.URL.Query(); q.Has("limit") || q.Has("after") {
			if _, _, err := c.pageParams(); err != nil {
				writeError(w, err)
				return
			}
		}
		if err := c.block(stale); err != nil {
			writeError(w, err)
			return
		}
	}
	if rt.kind == kindWrite {
		r.Body = http.MaxBytesReader(w, r.Body, a.cfg.MaxBodyBytes)
	}
	v, err := rt.h(c)
	if sw, ok := w.(*statusWriter); ok && sw.code != 0 {
		return // the handler answered itself (raw bytes, a WebSocket upgrade)
	}
	if err != nil {
		writeError(w, err)
		return
	}
	if c.index == 0 {
		c.index = a.b.Store().Index()
	}
	w.Header().Set(proto.IndexHeader, strconv.FormatUint(c.index, 10))
	if c.status == http.StatusNoContent || v == nil && c.status == http.StatusOK && r.Method == http.MethodDelete {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	writeJSON(w, c.status, v)
}

// isStale reports whether the caller allows a read from this server's
// local copy: ?stale, ?stale=true or ?stale=1.
func isStale(r *http.Request) bool {
	v, ok := r.URL.Query()["stale"]
	if !ok {
		return false
	}
	if len(v) == 0 || v[0] == "" {
		return true
	}
	b, err := strconv.ParseBool(v[0])
	return err == nil && b
}

// block implements ?index=N&wait=D: it waits until the store passes N or D
// ends, then (for a consistent read) confirms leadership, and records the
// index the answer reflects.
func (c *call) block(stale bool) error {
	return c.blockOn(stale, c.a.b.Store().Wait, c.a.b.Store().Index)
}

// blockOn is block with the index to wait on and report given.
func (c *call) blockOn(stale bool, waitFn func(context.Context, uint64) uint64, index func() uint64) error {
	q := c.r.URL.Query()
	if s := q.Get("index"); s != "" {
		min, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return proto.Errorf(proto.CodeInvalid, "index %q: want a non-negative integer", s)
		}
		wait := 30 * time.Second
		if ws := q.Get("wait"); ws != "" {
			d, err := time.ParseDuration(ws)
			if err != nil || d < 0 {
				return proto.Errorf(proto.CodeInvalid, "wait %q: want a duration such as 30s", ws)
			}
			wait = d
		}
		wait = min64(wait, c.a.cfg.MaxWait)
		ctx, cancel := context.WithTimeout(c.r.Context(), wait)
		waitFn(ctx, min)
		cancel()
		if err := c.r.Context().Err(); err != nil {
			return proto.Errorf(proto.CodeUnavailable, "client went away")
		}
	}
	if !stale {
		// VerifyLeader also holds a newly elected leader's read until it
		// has applied its predecessor's log; both refusals are retryable.
		if err := c.a.b.VerifyLeader(); err != nil {
			c.w.Header().Set("Retry-After", "1")
			return retryable(err)
		}
	}
	// Read the index before the handler reads the data: the answer is then
	// at least as new as the index, and a caller that waits on it never
	// misses a change.
	c.index = index()
	return nil
}

// retryable is what a consistent read answers when VerifyLeader refuses:
// the backend's own 503 (a new leader still applying its predecessor's
// log), else no_leader.
func retryable(err error) error {
	var pe *proto.Error
	if errors.As(err, &pe) {
		return pe
	}
	return proto.Errorf(proto.CodeNoLeader, "this server lost leadership; try again (or read with ?stale)")
}

func min64(a, b time.Duration) time.Duration {
	if a < b {
		return a
	}
	return b
}

// forward passes the request to the leader, waiting up to ForwardWait for
// one to be known. A leader that cannot be dialled (it just died, and this
// server has not noticed yet) has not seen the request, so forwarding is
// tried again until the wait ends; any later failure leaves the outcome of
// a write unknown and says so.
func (a *API) forward(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, a.cfg.MaxBodyBytes))
	if err != nil {
		writeError(w, bodyError(err, a.cfg.MaxBodyBytes))
		return
	}
	deadline := time.Now().Add(a.cfg.ForwardWait)
	var lastErr error
	for {
		id, addr := a.b.LeaderHTTP()
		switch {
		case id != "" && id == a.b.NodeID() && a.b.IsLeader():
			// We became leader while waiting: serve it here.
			r.Body = io.NopCloser(bytes.NewReader(body))
			a.mux.ServeHTTP(w, r)
			return
		case addr != "" && id != a.b.NodeID():
			err := a.forwardTo(w, r, addr, body)
			if err == nil {
				return
			}
			var op *net.OpError
			if !errors.As(err, &op) || op.Op != "dial" {
				writeError(w, proto.Errorf(proto.CodeUnavailable,
					"forwarding to the leader %s at %s failed: %v; a write may or may not have been applied", id, addr, err))
				return
			}
			lastErr = fmt.Errorf("leader %s at %s unreachable: %w", id, addr, err)
		}
		if time.Now().After(deadline) {
			msg := fmt.Sprintf("no leader reachable within %s; the cluster may have lost quorum", a.cfg.ForwardWait)
			if lastErr != nil {
				msg += " (last: " + lastErr.Error() + ")"
			} else if id != "" {
				msg = fmt.Sprintf("leader %s has no known HTTP address yet (waited %s)", id, a.cfg.ForwardWait)
			}
			writeError(w, proto.Errorf(proto.CodeNoLeader, "%s", msg))
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-time.After(25 * time.Millisecond):
		}
	}
}

// forwardTo sends one copy of the request to the leader at addr and
// copies its answer back. It writes nothing if the request fails.
func (a *API) forwardTo(w http.ResponseWriter, r *http.Request, addr string, body []byte) error {
	u := *r.URL
	u.Scheme, u.Host = "http", addr
	req, err := http.NewRequestWithContext(r.Context(), r.Method, u.String(), bytes.NewReader(body))
	if err != nil {
		return err
	}
	for _, h := range []string{"Authorization", "Content-Type", "Accept", AgentHeader, proto.AgentMgmtHeader} {
		if v := r.Header.Get(h); v != "" {
			req.Header.Set(h, v)
		}
	}
	req.Header.Set(ForwardedHeader, a.b.NodeID())
	resp, err := a.fwd.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	for k, vs := range resp.Header {
		for _, v := range vs {
			w.Header().Add(k, v)
		}
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(w, resp.Body)
	return nil
}

// authenticate resolves the bearer token against the replicated store.
func (a *API) authenticate(r *http.Request) (*proto.Token, error) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return nil, proto.Errorf(proto.CodeUnauthorized, "missing Authorization: Bearer <token> header")
	}
	scheme, secret, _ := strings.Cut(h, " ")
	if !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(secret) == "" {
		return nil, proto.Errorf(proto.CodeUnauthorized, "the Authorization header must be \"Bearer <token>\"")
	}
	tok, ok := a.b.Store().TokenByHash(HashSecret(strings.TrimSpace(secret)))
	if !ok {
		return nil, proto.Errorf(proto.CodeUnauthorized, "unknown or revoked token")
	}
	return tok, nil
}

// HashSecret is how token secrets are stored: SHA-256, hex. Secrets are 32
// random bytes, so a fast hash is enough.
func HashSecret(secret string) string {
	s := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(s[:])
}

// withArticle puts "a" or "an" before a role name.
func withArticle(word string) string {
	if word != "" && strings.ContainsRune("aeiou", rune(word[0])) {
		return "an " + word
	}
	return "a " + word
}

// allowed reports whether tok's role covers need.
func allowed(tok *proto.Token, need proto.Role) bool {
	rank := map[proto.Role]int{proto.RoleReader: 1, proto.RoleOperator: 2, proto.RoleAdmin: 3}
	if tok.Role == proto.RoleAgent {
		// Agent tokens reach the agent routes (rack agent issue) only.
		return need == proto.RoleAgent
	}
	if need == proto.RoleAgent {
		return tok.Role == proto.RoleAdmin
	}
	return rank[tok.Role] >= rank[need]
}

// apply proposes a command and records its index for the answer.
func (c *call) apply(cmd fsm.Command) (any, error) {
	ctx, cancel := context.WithTimeout(c.r.Context(), c.a.cfg.ApplyTimeout)
	defer cancel()
	v, idx, err := c.a.b.Apply(ctx, cmd)
	if err != nil {
		switch {
		case errors.Is(err, ErrNotLeader):
			return nil, proto.Errorf(proto.CodeNoLeader, "this server lost leadership before the write committed; it may or may not have been applied")
		case errors.Is(err, context.DeadlineExceeded):
			return nil, proto.Errorf(proto.CodeTimeout, "the write did not commit within %s", c.a.cfg.ApplyTimeout)
		}
		return nil, err
	}
	c.index = idx
	return v, nil
}

// decode reads a JSON body into v, refusing unknown fields, trailing data
// and bodies over the limit, with a message that names the field. The
// Content-Type is not checked: `curl -d` sends a form type with JSON in it.
func (c *call) decode(v any) error { return c.decodeBody(v, true) }

// decodeBody decodes the request's one JSON value; strict refuses fields
// the type does not have (operators' bodies: a typo must not pass
// silently), lenient ignores them (agents' reports: a newer agent's must
// not be refused).
func (c *call) decodeBody(v any, strict bool) error {
	dec := json.NewDecoder(c.r.Body)
	if strict {
		dec.DisallowUnknownFields()
	}
	if err := dec.Decode(v); err != nil {
		return bodyError(err, c.a.cfg.MaxBodyBytes)
	}
	if err := dec.Decode(&struct{}{}); err != io.EOF {
		if err == nil {
			return proto.Errorf(proto.CodeInvalid, "body holds more than one JSON value")
		}
		return bodyError(err, c.a.cfg.MaxBodyBytes)
	}
	return nil
}

func bodyError(err error, limit int64) error {
	var (
		syn *json.SyntaxError
		typ *json.UnmarshalTypeError
		big *http.MaxBytesError
		pe  *proto.Error
	)
	switch {
	case errors.As(err, &big):
		return proto.Errorf(proto.CodeTooLarge, "body is larger than %d bytes", limit)
	case errors.Is(err, io.EOF):
		return proto.Errorf(proto.CodeUndecodable, "body is empty; want a JSON object")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return proto.Errorf(proto.CodeUndecodable, "body is not valid JSON: it ends early")
	case errors.As(err, &syn):
		return proto.Errorf(proto.CodeUndecodable, "body is not valid JSON at byte %d: %v", syn.Offset, syn)
	case errors.As(err, &typ):
		if typ.Field == "" {
			return proto.Errorf(proto.CodeUndecodable, "body: want %s, got %s", jsonKind(typ.Type.Kind().String()), typ.Value)
		}
		return proto.Errorf(proto.CodeUndecodable, "field %s: want %s, got %s", typ.Field, jsonKind(typ.Type.Kind().String()), typ.Value)
	case errors.As(err, &pe):
		return pe
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return proto.Errorf(proto.CodeUndecodable, "unknown field %s", strings.TrimPrefix(err.Error(), "json: unknown field "))
	}
	return proto.Errorf(proto.CodeUndecodable, "bad body: %v", err)
}

func jsonKind(goKind string) string {
	switch goKind {
	case "string":
		return "a string"
	case "bool":
		return "true or false"
	case "int", "int64", "int32", "uint", "uint64", "uint32", "float64":
		return "a number"
	case "slice", "array":
		return "an array"
	case "map", "struct", "ptr":
		return "an object"
	}
	return goKind
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, err error) {
	var pe *proto.Error
	if !errors.As(err, &pe) {
		pe = proto.Errorf(proto.CodeInternal, "%v", err)
	}
	writeJSON(w, pe.Code.Status(), proto.ErrorBody{Error: pe})
}
