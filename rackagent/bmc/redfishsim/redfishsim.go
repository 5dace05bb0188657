// Package redfishsim is a Redfish service written from the DMTF
// specifications (DSP0266, the protocol; DSP0268, the schema) for tests
// and the simulator: a service root, a Systems collection with
// ComputerSystems (PowerState, Boot override, the Reset action with its
// allowable values, inline or through an ActionInfo), a Manager with its
// FirmwareVersion, a SessionService (POST answers X-Auth-Token and
// Location; DELETE ends the session), HTTP Basic authentication, a
// TaskService whose task monitors follow an asynchronous reset, the
// Redfish error body (error.@Message.ExtendedInfo), @odata.id, @odata.type
// and ETags (If-Match honoured, 412 on a stale one).
//
// It listens on 127.0.0.1 over HTTP or over TLS with a self-signed
// certificate, and can be made slow, without a session service or without
// a manager. The machine behind each system is a PowerBackend (in memory
// by default), so the simulator plugs its simulated machines in.
package redfishsim

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/metalfleet/metalfleet/proto"
)

// Options configure a Server. The zero value is a plain-HTTP service with
// one system (id "1"), powered off, user admin with password "password",
// a session service and a manager.
type Options struct {
	// TLS serves HTTPS with a self-signed certificate for 127.0.0.1 and
	// localhost (CertPEM returns it).
	TLS bool
	// Username and Password are the one account ("admin" and "password"
	// when empty).
	Username, Password string

	// SystemID is the first system's Id ("1" when empty); ExtraSystems
	// adds that many more systems (ids "<SystemID>-2", ...), each powered
	// off in memory.
	SystemID     string
	ExtraSystems int
	// Backend is the first system's machine (an in-memory one, off, when
	// nil).
	Backend PowerBackend
	// ResetAllowed is the ResetType@Redfish.AllowableValues the systems
	// list (On, ForceOn, ForceOff, GracefulShutdown, GracefulRestart,
	// ForceRestart and PowerCycle when nil). ResetActionInfo lists them in
	// a ResetActionInfo resource (@Redfish.ActionInfo) instead of inline.
	ResetAllowed    []string
	ResetActionInfo bool

	// AsyncReset answers a reset with 202 Accepted and a task monitor
	// (Location); the reset happens, and the monitor stops answering 202,
	// at its AsyncPolls-th poll (2 when zero). AsyncFail makes every such
	// task end in the Exception state with this message, without acting.
	AsyncReset bool
	AsyncPolls int
	AsyncFail  string

	// RequireIfMatch refuses a PATCH without If-Match (428).
	RequireIfMatch bool
	// NoSessionService leaves the SessionService out: clients must use
	// Basic authentication.
	NoSessionService bool
	// NoManager leaves the Managers out (and the systems' ManagedBy link).
	NoManager bool
	// Slow delays every response by this long.
	Slow time.Duration

	// Identity of the systems and the manager (defaults: "Metalfleet",
	// "redfishsim", "redfishsim BMC", "1.0.0").
	Manufacturer, Model, ManagerModel, FirmwareVersion string
}

// BootOverride is a ComputerSystem's Boot override (DSP0268 Boot).
type BootOverride struct {
	Target  string // BootSourceOverrideTarget: None, Pxe, Hdd, ...
	Enabled string // BootSourceOverrideEnabled: Disabled, Once, Continuous
	Mode    string // BootSourceOverrideMode: UEFI, Legacy
}

// BootAware is a PowerBackend that wants to know where its machine boots:
// the service calls PowerBoot instead of Power, with the boot override in
// force. A Once override is used up by an action that boots the machine
// (on from off, restart, cycle).
type BootAware interface {
	PowerBackend
	PowerBoot(a PowerAction, boot BootOverride) error
}

// Stats counts what the service has seen.
type Stats struct {
	SessionsCreated int
	SessionsDeleted int
	SessionsLive    int
	BasicAuth       int // requests authenticated with Basic
	Unauthorized    int // 401 answers
	// Resets counts the resets performed (by ResetType), when the action
	// acts (for an asynchronous reset: when its task completes).
	Resets         map[string]int
	TaskPolls      int // GETs of task monitors
	Patches        int // PATCHes of a system that succeeded
	PatchesIfMatch int // of them, how many carried If-Match
}

// Server is a running Redfish service.
type Server struct {
	opts Options

	ln       net.Listener
	srv      *http.Server
	url      string
	certPEM  []byte
	inflight sync.WaitGroup
	served   chan struct{}

	mu       sync.Mutex
	systems  []*system
	sessions map[string]*session // by token
	tasks    map[string]*task    // by id
	nextID   int
	stats    Stats
	closed   bool
}

type system struct {
	id      string
	backend PowerBackend
	opMu    sync.Mutex // one power action at a time
	boot    BootOverride
}

type session struct {
	id, token, user string
}

// New returns a Server with opts; Start starts it.
func New(opts Options) *Server {
	if opts.Username == "" {
		opts.Username = "admin"
	}
	if opts.Password == "" {
		opts.Password = "password"
	}
	if opts.SystemID == "" {
		opts.SystemID = "1"
	}
	if opts.Backend == nil {
		opts.Backend = NewMemoryBackend(proto.PowerOff)
	}
	if opts.ResetAllowed == nil {
		opts.ResetAllowed = []string{"On", "ForceOn", "ForceOff", "GracefulShutdown", "GracefulRestart", "ForceRestart", "PowerCycle"}
	}
	if opts.AsyncPolls <= 0 {
		opts.AsyncPolls = 2
	}
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&opts.Manufacturer, "Metalfleet")
	def(&opts.Model, "redfishsim")
	def(&opts.ManagerModel, "redfishsim BMC")
	def(&opts.FirmwareVersion, "1.0.0")
	s := &Server{
		opts:     opts,
		sessions: map[string]*session{},
		tasks:    map[string]*task{},
		served:   make(chan struct{}),
		stats:    Stats{Resets: map[string]int{}},
	}
	boot := BootOverride{Target: "None", Enabled: "Disabled", Mode: "UEFI"}
	s.systems = append(s.systems, &system{id: opts.SystemID, backend: opts.Backend, boot: boot})
	for i := range opts.ExtraSystems {
		s.systems = append(s.systems, &system{
			id:      fmt.Sprintf("%s-%d", opts.SystemID, i+2),
			backend: NewMemoryBackend(proto.PowerOff),
			boot:    boot,
		})
	}
	return s
}

// Start listens on 127.0.0.1 on a free port and serves.
func (s *Server) Start() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("redfishsim: listen: %w", err)
	}
	s.srv = &http.Server{
		Handler:           http.HandlerFunc(s.serveHTTP),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0), // TLS handshake errors of tests that refuse the certificate
	}
	scheme := "http"
	if s.opts.TLS {
		cert, certPEM, err := selfSigned()
		if err != nil {
			ln.Close()
			return fmt.Errorf("redfishsim: certificate: %w", err)
		}
		s.certPEM = certPEM
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
		scheme = "https"
	}
	s.ln = ln
	s.url = scheme + "://" + ln.Addr().String()
	go func() {
		defer close(s.served)
		_ = s.srv.Serve(ln) // returns http.ErrServerClosed on Close
	}()
	return nil
}

// Close stops the service and waits for its handlers to return.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed || s.srv == nil {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	err := s.srv.Close() // cancels the requests in flight
	<-s.served
	s.inflight.Wait()
	return err
}

// URL is the service's base URL: scheme://127.0.0.1:port.
func (s *Server) URL() string { return s.url }

// SystemURL is the first system's URL (a BMC address naming its system).
func (s *Server) SystemURL() string { return s.url + s.systems[0].path() }

// CertPEM is the self-signed certificate (PEM) when TLS is on.
func (s *Server) CertPEM() []byte { return s.certPEM }

// Backend is the first system's machine.
func (s *Server) Backend() PowerBackend { return s.systems[0].backend }

// Boot returns the first system's boot override.
func (s *Server) Boot() BootOverride {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.systems[0].boot
}

// Stats returns a copy of the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.SessionsLive = len(s.sessions)
	st.Resets = make(map[string]int, len(s.stats.Resets))
	for k, v := range s.stats.Resets {
		st.Resets[k] = v
	}
	return st
}

// ExpireSessions ends every session, as a BMC does when a session times
// out or the BMC restarts: their tokens answer 401 from now on.
func (s *Server) ExpireSessions() {
	s.mu.Lock()
	clear(s.sessions)
	s.mu.Unlock()
}

// serveHTTP counts the handler in flight (Close waits for it), delays it
// when the service is slow, and routes it.
func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	// Added under the lock that Close takes to set closed, so every Add
	// happens before Close's Wait (a WaitGroup's rule).
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		http.Error(w, "closing", http.StatusServiceUnavailable)
		return
	}
	s.inflight.Add(1)
	s.mu.Unlock()
	defer s.inflight.Done()
	if s.opts.Slow > 0 {
		t := time.NewTimer(s.opts.Slow)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		}
	}
	w.Header().Set("OData-Version", "4.0")
	w.Header().Set("Cache-Control", "no-cache")
	s.route(w, r)
}

func (s *Server) newID() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nextID++
	return fmt.Sprint(s.nextID)
}

func randomToken() string {
	b := make([]byte, 24)
	_, _ = rand.Read(b) // crypto/rand never fails on Linux
	return hex.EncodeToString(b)
}

// selfSigned makes an ECDSA P-256 certificate for 127.0.0.1 and
// localhost, its own CA, valid for a day.
func selfSigned() (tls.Certificate, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "redfishsim", Organization: []string{"Metalfleet test BMC"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	return cert, certPEM, nil
}
