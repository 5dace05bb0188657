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
type mgmtAuth struct {
	own   string
	addrs func() []string // the coordinators' API addresses
	now   func() time.Time

	mu   sync.Mutex
	good map[[32]byte]time.Time // sha256 of a verified token -> until
}

// mgmtVerifyFor is how long a token the coordinator verified is taken
// without asking again.
const mgmtVerifyFor = time.Minute

func (m *mgmtAuth) check(ctx context.Context, token string) error {
	if token == "" {
		return proto.Errorf(proto.CodeUnauthorized, "want Authorization: Bearer <token> (this rack's agent token or an admin token)")
	}
	if m.own != "" && subtle.ConstantTimeCompare([]byte(token), []byte(m.own)) == 1 {
		return nil
	}
	key := sha256.Sum256([]byte(token))
	now := m.now()
	m.mu.Lock()
	until, ok := m.good[key]
	m.mu.Unlock()
	if ok && now.Before(until) {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c := apiclient.New(strings.Join(m.addrs(), ","), token)
	_, err := c.Do(ctx, "GET", "/v1/tokens", nil, nil)
	var ae *apiclient.Error
	switch {
	case err == nil:
		m.mu.Lock()
		if len(m.good) > 1000 {
			clear(m.good)
		}
		m.good[key] = now.Add(mgmtVerifyFor)
		m.mu.Unlock()
		return nil
	case errors.As(err, &ae) && (ae.Status == http.StatusUnauthorized || ae.Status == http.StatusForbidden):
		return proto.Errorf(proto.CodeUnauthorized, "the token is neither this rack's agent token nor an admin token")
	default:
		return proto.Errorf(proto.CodeUnavailable, "cannot verify the token with the coordinator: %v", err)
	}
}

// mgmtHandler is the management listener's routes, every one behind
// mgmtAuth.
func (a *Agent) mgmtHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/health", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /v1/diag", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, a.Diag())
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		scheme, token, _ := strings.Cut(r.Header.Get("Authorization"), " ")
		if !strings.EqualFold(scheme, "Bearer") {
			token = ""
		}
		if err := a.mgmtAuth.check(r.Context(), strings.TrimSpace(token)); err != nil {
			a.log.Warn("management request refused", "remote", r.RemoteAddr, "path", r.URL.Path, "err", err)
			var pe *proto.Error
			errors.As(err, &pe)
			writeJSON(w, pe.Code.Status(), proto.ErrorBody{Error: pe})
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
