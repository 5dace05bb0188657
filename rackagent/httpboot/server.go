package httpboot

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path"
	"strings"
	"sync/atomic"
	"time"

	"github.com/metalfleet/metalfleet/proto"
)

// Backend answers what a MAC boots, from the rack's desired boot state.
type Backend interface {
	// Boot returns the MAC's node (nil for an unknown MAC, which gets the
	// discovery config) and its boot config; ok is false when there is
	// no answer (an unknown MAC while discovery is off).
	Boot(mac string) (node *proto.BootNode, boot proto.BootConfig, ok bool)
	// ArtifactBySHA finds an artifact named by some boot config.
	ArtifactBySHA(sha string) (proto.Artifact, bool)
	// Address is the address mac holds: a known node's reservation, or
	// the dynamic lease this agent granted it (while it lasts). ok is
	// false when it holds none. A discovery inventory and a boot script
	// with a task token are accepted from, and served to, only this
	// address.
	Address(mac string) (ip netip.Addr, ok bool)
	// NodeByUUID finds a node of the boot state by its uuid.
	NodeByUUID(uuid string) (node *proto.BootNode, ok bool)
}

// Reporter takes the reports the server produces. Report must not block;
// the agent wires it to its durable outbox, which fills ID, Rack and Agent.
type Reporter interface {
	Report(r proto.AgentReport)
}

// DurableReporter is a Reporter that can also queue a report durably
// before returning. The server uses it, when the Reporter has it, for
// callbacks: a callback is answered 202 only once its report is on disk,
// and 503 (with Retry-After) if it could not be queued, so the ramdisk
// retries instead of the report being lost.
type DurableReporter interface {
	Reporter
	ReportNow(r proto.AgentReport) error
}

// Config configures a Server.
type Config struct {
	// Backend answers boot configs and artifacts. nil knows nothing.
	Backend Backend
	// Reporter takes boot events and callbacks. nil drops them.
	Reporter Reporter
	// Cache serves artifacts. nil answers 503 to artifact requests.
	Cache *Cache
	// BaseURL is this agent as booting nodes reach it:
	// http://ADVERTISE:PORT.
	BaseURL string
	// Logger; nil discards.
	Logger *slog.Logger

	// CallbackRate and CallbackBurst bound the callbacks from one source
	// IP (token bucket). Defaults: 10 per second, burst 20.
	CallbackRate  float64
	CallbackBurst int
	// DiscoveryWindow is how long after serving the discovery script a
	// MAC may post its inventory without a token. Default 10 minutes.
	DiscoveryWindow time.Duration
	// BootEventEvery is the least time between two boot events reported
	// for one node and one event ("script", "artifact:NAME"). Default 5s.
	BootEventEvery time.Duration
	// Now is the clock; nil is time.Now.
	Now func() time.Time
	// Files, if set, serves first-stage boot files (the TFTP server's)
	// at GET /tftp/{file} for UEFI HTTP boot clients.
	Files FileOpener
	// Metrics, if set, is served at GET /metrics.
	Metrics http.Handler
	// BurninConcurrency bounds the network burn-in transfers running at
	// once (default 8); BurninQueueWait is how long one more waits for a
	// slot before it is answered 429 (default 10 s; negative: no wait);
	// BurninTimeout bounds one transfer (default 10 minutes).
	BurninConcurrency int
	BurninQueueWait   time.Duration
	BurninTimeout     time.Duration
}

// FileOpener opens a first-stage boot file by name, refusing any name
// that would leave its roots.
type FileOpener interface {
	Open(name string) (*os.File, int64, error)
}

// Server is the rack agent's HTTP boot server.
type Server struct {
	cfg     Config
	log     *slog.Logger
	now     func() time.Time
	mux     *http.ServeMux
	recent  *recentSet
	limiter *limiter
	events  *eventLimiter
	burnin  chan struct{} // network burn-in transfer slots
	waiting atomic.Int64  // network burn-in transfers waiting for a slot
	// burninLimit: the burn-in routes' rate per source.
	burninLimit *limiter
	// boot names this server's run (proto.AgentBootHeader).
	boot string
}

// New returns a Server; it listens only in Serve.
func New(cfg Config) *Server {
	if cfg.Backend == nil {
		cfg.Backend = noBackend{}
	}
	if cfg.Reporter == nil {
		cfg.Reporter = noReporter{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.CallbackRate <= 0 {
		cfg.CallbackRate = 10
	}
	if cfg.CallbackBurst <= 0 {
		cfg.CallbackBurst = 20
	}
	if cfg.DiscoveryWindow <= 0 {
		cfg.DiscoveryWindow = 10 * time.Minute
	}
	if cfg.BootEventEvery <= 0 {
		cfg.BootEventEvery = 5 * time.Second
	}
	if cfg.BurninConcurrency <= 0 {
		cfg.BurninConcurrency = 8
	}
	if cfg.BurninQueueWait == 0 {
		cfg.BurninQueueWait = 10 * time.Second
	}
	if cfg.BurninTimeout <= 0 {
		cfg.BurninTimeout = 10 * time.Minute
	}
	s := &Server{
		cfg:     cfg,
		log:     cfg.Logger,
		now:     cfg.Now,
		mux:     http.NewServeMux(),
		recent:  newRecentSet(),
		limiter: newLimiter(cfg.CallbackRate, cfg.CallbackBurst),
		events:  newEventLimiter(cfg.BootEventEvery),
		burnin:  make(chan struct{}, cfg.BurninConcurrency),
		// Ten times the callbacks' rate.
		burninLimit: newLimiter(10*cfg.CallbackRate, 10*cfg.CallbackBurst),
		boot:        rand.Text(),
	}
	s.mux.HandleFunc("GET /boot/{file}", s.handleScript)
	s.mux.HandleFunc("GET /artifacts/{sha256}", s.handleArtifact)
	s.mux.HandleFunc("POST "+proto.CallbackPath, s.handleCallback)
	s.mux.HandleFunc("GET "+proto.TaskPlanPath, s.handlePlan)
	s.mux.HandleFunc("GET "+proto.BurninSourcePath, s.handleBurninSource)
	s.mux.HandleFunc("POST "+proto.BurninSinkPath, s.handleBurninSink)
	if cfg.Files != nil {
		s.mux.HandleFunc("GET /tftp/{file...}", s.handleFile)
	}
	if cfg.Metrics != nil {
		s.mux.Handle("GET /metrics", cfg.Metrics)
	}
	return s
}

// Handler is the server's routes.
func (s *Server) Handler() http.Handler { return s.mux }

// Serve serves HTTP on ln until ctx ends, then shuts down: it waits up to
// five seconds for requests in flight (a large download may take longer,
// and is cut).
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	hs := &http.Server{
		Handler:           s.mux,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := hs.Shutdown(sctx); err != nil {
			hs.Close()
		}
	}()
	s.log.Info("http boot server listening", "addr", ln.Addr().String(), "base_url", s.cfg.BaseURL)
	err := hs.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		<-stopped
		return nil
	}
	hs.Close()
	return err
}

// handleScript serves GET /boot/{mac}.ipxe.
func (s *Server) handleScript(w http.ResponseWriter, r *http.Request) {
	file := r.PathValue("file")
	raw, ok := strings.CutSuffix(file, ".ipxe")
	if !ok {
		http.Error(w, fmt.Sprintf("no such file %q: want /boot/MAC.ipxe", file), http.StatusNotFound)
		return
	}
	mac, err := parseMAC(raw)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	log := s.log.With("mac", mac, "remote", r.RemoteAddr)
	node, boot, ok := s.cfg.Backend.Boot(mac)
	if !ok {
		log.Info("no boot script: unknown MAC and discovery is off")
		http.Error(w, "no boot config for "+mac+": unknown MAC and discovery is off", http.StatusNotFound)
		return
	}
	var uuid string
	if node != nil {
		uuid = node.UUID
		log = log.With("node", uuid)
	}
	if boot.TaskToken != "" {
		// The script carries the task token: only the node itself may
		// read it, from its own address.
		if err := s.fromOwnAddress(r, mac); err != nil {
			log.Warn("boot script with a task token refused: not from the node's own address", "source", sourceIP(r), "err", err)
			http.Error(w, "the boot script of "+mac+" is served only to its own address: "+err.Error(), http.StatusForbidden)
			return
		}
	}
	script, err := RenderScript(ScriptParams{MAC: mac, NodeUUID: uuid, Boot: boot, BaseURL: s.cfg.BaseURL})
	if err != nil {
		log.Error("cannot render boot script", "kind", boot.Kind, "err", err)
		http.Error(w, "cannot render boot script for "+mac+": "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write([]byte(script))
	if r.Method != http.MethodGet {
		return // HEAD: nothing is booting
	}
	if boot.Kind == proto.BootDiscovery {
		// Arms the one inventory this boot may post, from this address,
		// but only when it is the MAC's own: a host fetching another
		// MAC's script must not re-arm (and so block) its inventory.
		if err := s.fromOwnAddress(r, mac); err != nil {
			log.Info("discovery script served, inventory not armed: not from the MAC's own address", "source", sourceIP(r), "err", err)
		} else {
			src, _ := netip.ParseAddr(sourceIP(r))
			s.recent.add(mac, src, s.now())
		}
	}
	log.Debug("served boot script", "kind", boot.Kind, "task", boot.Task)
	// The limiter tells scripts apart by what they boot: a node that boots
	// its local disk seconds after its rescue ramdisk must still be
	// reported taking the local-boot path.
	s.bootEventOf(proto.AgentReport{Event: "script", MAC: mac, Node: uuid}, string(boot.Kind))
}

// bootEvent reports a boot event of a known node, at most one per node
// and event per BootEventEvery. An unknown MAC's is not reported: its
// DHCP sighting already tells the coordinator of it (gathered per
// interval, capped), and an unauthenticated GET must not become a report.
func (s *Server) bootEvent(r proto.AgentReport) { s.bootEventOf(r, "") }

// bootEventOf is bootEvent with the limiter keyed also by what the node
// boots (kind).
func (s *Server) bootEventOf(r proto.AgentReport, kind string) {
	if r.Node == "" {
		return
	}
	now := s.now()
	if !s.events.allow(r.Node, r.Event+"\x00"+kind, now) {
		return
	}
	r.Kind, r.Time = proto.ReportBootEvent, now
	s.log.Info("boot event", "node", r.Node, "mac", r.MAC, "event", r.Event)
	s.cfg.Reporter.Report(r)
}

// fromOwnAddress checks that r comes from the address mac holds (its
// reservation, or the lease this agent granted it).
func (s *Server) fromOwnAddress(r *http.Request, mac string) error {
	src, err := netip.ParseAddr(sourceIP(r))
	if err != nil {
		return fmt.Errorf("source address %q does not parse", r.RemoteAddr)
	}
	own, ok := s.cfg.Backend.Address(mac)
	if !ok {
		return fmt.Errorf("%s holds no address from this agent (no lease, no reservation); request came from %s", mac, src.Unmap())
	}
	if src.Unmap() != own.Unmap() {
		return fmt.Errorf("%s holds %s; request came from %s", mac, own, src.Unmap())
	}
	return nil
}

// RecentlyServedDiscovery reports whether mac was served the discovery
// script within the last within.
func (s *Server) RecentlyServedDiscovery(mac string, within time.Duration) bool {
	m, err := parseMAC(mac)
	if err != nil {
		return false
	}
	return s.recent.since(m, s.now().Add(-within))
}

// handleArtifact serves GET /artifacts/{sha256}.
func (s *Server) handleArtifact(w http.ResponseWriter, r *http.Request) {
	sha := r.PathValue("sha256")
	if !shaRE.MatchString(sha) {
		http.Error(w, fmt.Sprintf("%q is not a sha256: want 64 lower-case hex digits", sha), http.StatusBadRequest)
		return
	}
	log := s.log.With("sha256", sha, "remote", r.RemoteAddr)
	a, ok := s.lookupArtifact(sha, r)
	if !ok {
		http.Error(w, "no artifact "+sha, http.StatusNotFound)
		return
	}
	if !strings.EqualFold(a.SHA256, sha) {
		log.Error("backend answered an artifact with another sha256", "got", a.SHA256)
		http.Error(w, "artifact lookup answered another sha256", http.StatusInternalServerError)
		return
	}
	if s.cfg.Cache == nil {
		http.Error(w, "this agent has no artifact cache", http.StatusServiceUnavailable)
		return
	}
	f, err := s.cfg.Cache.Open(r.Context(), a)
	if err != nil {
		if r.Context().Err() != nil {
			return // the client went away
		}
		status := http.StatusBadGateway // the source failed or sent bad bytes
		switch {
		case errors.Is(err, ErrCacheFull):
			status = http.StatusServiceUnavailable
			w.Header().Set("Retry-After", "5")
		case errors.Is(err, ErrTooLarge):
			status = http.StatusInternalServerError
		}
		log.Error("cannot serve artifact", "artifact", a.Name, "status", status, "err", err)
		http.Error(w, "artifact "+sha+": "+err.Error(), status)
		return
	}
	defer f.Close()

	if q := r.URL.Query().Get("node"); r.Method == http.MethodGet && startsAtZero(r.Header.Get("Range")) && q != "" {
		// Logged for every booting machine (the boot's phases are read
		// from this line); a boot event only for a known node.
		rep, known := s.nodeOf(q)
		mac := rep.MAC
		if !known {
			mac, _ = parseMAC(q)
		}
		log.Info("node fetching artifact", "artifact", a.Name, "node", rep.Node, "mac", mac)
		if known {
			rep.Event = "artifact:" + artifactName(a)
			s.bootEvent(rep)
		}
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("ETag", `"`+sha+`"`)
	w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
	http.ServeContent(w, r, "", f.ModTime, f.File)
}

func artifactName(a proto.Artifact) string {
	if a.Name != "" {
		return a.Name
	}
	return a.SHA256
}

// startsAtZero: the request reads from the first byte (no Range, or a
// range list whose first range starts at 0).
func startsAtZero(rng string) bool {
	if rng == "" {
		return true
	}
	spec, ok := strings.CutPrefix(rng, "bytes=")
	if !ok {
		return true // ServeContent ignores a Range it does not understand
	}
	return strings.HasPrefix(strings.TrimSpace(spec), "0-")
}

// nodeOf reads the ?node= of an artifact URL, a uuid or a MAC, and finds
// its node in the boot state; ok is false for anything else.
func (s *Server) nodeOf(v string) (proto.AgentReport, bool) {
	if v == "" {
		return proto.AgentReport{}, false
	}
	if proto.IsUUID(v) {
		if n, ok := s.cfg.Backend.NodeByUUID(strings.ToLower(v)); ok && n != nil {
			return proto.AgentReport{Node: n.UUID}, true
		}
		return proto.AgentReport{}, false
	}
	if mac, err := parseMAC(v); err == nil {
		if n, _, ok := s.cfg.Backend.Boot(mac); ok && n != nil {
			return proto.AgentReport{Node: n.UUID, MAC: mac}, true
		}
	}
	return proto.AgentReport{}, false
}

// parseMAC accepts what net.ParseMAC accepts for a 6-byte MAC, and the 12
// bare hex digits of iPXE's ${mac:hexraw}.
func parseMAC(s string) (string, error) {
	if len(s) == 12 && isHex(s) {
		s = s[0:2] + ":" + s[2:4] + ":" + s[4:6] + ":" + s[6:8] + ":" + s[8:10] + ":" + s[10:12]
	}
	mac, err := proto.NormalizeMAC(s)
	if err != nil {
		return "", fmt.Errorf("%q is not an Ethernet MAC address", s)
	}
	return mac, nil
}

func isHex(s string) bool {
	for _, c := range []byte(s) {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

type noBackend struct{}

func (noBackend) Boot(string) (*proto.BootNode, proto.BootConfig, bool) {
	return nil, proto.BootConfig{}, false
}
func (noBackend) ArtifactBySHA(string) (proto.Artifact, bool) { return proto.Artifact{}, false }
func (noBackend) Address(string) (netip.Addr, bool)           { return netip.Addr{}, false }
func (noBackend) NodeByUUID(string) (*proto.BootNode, bool)   { return nil, false }

type noReporter struct{}

func (noReporter) Report(proto.AgentReport) {}

// handleFile serves GET /tftp/{file}: a first-stage boot file over HTTP.
func (s *Server) handleFile(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("file")
	f, _, err := s.cfg.Files.Open(name)
	if err != nil {
		s.log.Warn("boot file refused", "remote", r.RemoteAddr, "path", fmt.Sprintf("%q", name), "err", err)
		http.Error(w, "no such boot file", http.StatusNotFound)
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		http.Error(w, "boot file unreadable", http.StatusInternalServerError)
		return
	}
	http.ServeContent(w, r, path.Base(name), st.ModTime(), f)
}
