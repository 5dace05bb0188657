// Package tftp is the rack agent's read-only TFTP server for first-stage
// boot files (iPXE's undionly.kpxe, ipxe.efi, snponly.efi).
//
// It is a thin layer over github.com/pin/tftp/v3, which speaks the
// protocol; this package decides what may be read. A request names a file
// relative to one of Config.Roots, searched in order. Names are checked
// before any file is touched (see cleanName): no ".." component, no NUL
// or other control character, no backslash, no empty name; a leading '/'
// is taken as relative to the root, so "/etc/passwd" looks for
// ROOT/etc/passwd and never the host's file. Files are then opened through
// os.Root, so a symlink that leads out of its root is refused by the OS
// layer. Only regular files are served.
//
// Every refused request (bad name, escape, missing file, write request)
// is answered with a TFTP error packet and logged once at warn with the
// remote address and the requested name quoted with %q. Every served file
// is logged at debug and, if Config.OnRead is set, reported through it.
//
// Options: blksize up to MaxBlockSize and tsize (RFC 2348, RFC 2349).
//
// Limits inherited from pin/tftp v3.1.0, worth knowing when reading a
// packet capture: every error packet carries error code 1 ("file not
// found") whatever the cause, so the message text ("access violation",
// "read-only server", ...) is what tells the causes apart; and a NUL byte
// inside a requested name cannot reach this package, because on the wire a
// NUL ends the filename field and the library hands over only what comes
// before it.
package tftp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	ptftp "github.com/pin/tftp/v3"
)

// MaxBlockSize is the largest blksize the server agrees to: 1468 bytes of
// data plus 4 of TFTP, 8 of UDP and 20 of IPv4 headers fill a 1500-byte
// Ethernet frame exactly, so no block is ever fragmented on a standard
// MTU. Clients asking for more get MaxBlockSize in the OACK.
const MaxBlockSize = 1468

// Defaults for the zero values of Config.Timeout and Config.Retries.
const (
	DefaultTimeout = 5 * time.Second
	DefaultRetries = 5
)

// Config configures a Server. Only Roots is required.
type Config struct {
	// Roots are the directories searched, in order, for a requested
	// file: typically a configured directory, then /usr/lib/ipxe. A root
	// that does not exist is skipped; New fails if none exists.
	Roots []string
	// Logger receives a warn line per refused request and a debug line
	// per served file. Nil discards.
	Logger *slog.Logger
	// Timeout is how long the server waits for each acknowledgement
	// before sending a block again. Zero means DefaultTimeout.
	Timeout time.Duration
	// Retries is how many times a block is sent again before the
	// transfer is abandoned. Zero means DefaultRetries.
	Retries int
	// OnRead, if set, is called after a file has been sent in full and
	// its last block acknowledged, with the client's address, the served
	// file's path relative to its root (cleaned: "undionly.kpxe" for a
	// request of "/undionly.kpxe") and the number of bytes sent. It runs
	// on the transfer's goroutine and should not block for long: Serve
	// waits for it when it shuts down.
	OnRead func(remote net.Addr, path string, size int64)
}

// Server serves files from its roots. It may serve several sockets at
// once (one Serve per socket).
type Server struct {
	roots   []string
	log     *slog.Logger
	timeout time.Duration
	retries int
	onRead  func(remote net.Addr, path string, size int64)

	mu   sync.Mutex
	addr net.Addr // local address of the socket Serve last started on
}

// New checks cfg and returns a Server. It fails if no root exists as a
// directory.
func New(cfg Config) (*Server, error) {
	if len(cfg.Roots) == 0 {
		return nil, errors.New("tftp: no roots configured")
	}
	found := false
	for _, dir := range cfg.Roots {
		if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
			found = true
			break
		}
	}
	if !found {
		return nil, fmt.Errorf("tftp: none of the roots %q is a directory", cfg.Roots)
	}
	s := &Server{
		roots:   append([]string(nil), cfg.Roots...),
		log:     cfg.Logger,
		timeout: cfg.Timeout,
		retries: cfg.Retries,
		onRead:  cfg.OnRead,
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.timeout <= 0 {
		s.timeout = DefaultTimeout
	}
	if s.retries <= 0 {
		s.retries = DefaultRetries
	}
	return s, nil
}

// Addr returns the local address of the socket that Serve (or
// ListenAndServe) last started serving, or nil before that. Tests that
// listen on port 0 read the port from it.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// ListenAndServe listens on the UDP address addr ("127.0.0.1:0",
// ":69", ...) and serves it until ctx ends; it closes the socket before it
// returns.
func (s *Server) ListenAndServe(ctx context.Context, addr string) error {
	var lc net.ListenConfig
	conn, err := lc.ListenPacket(ctx, "udp", addr)
	if err != nil {
		return fmt.Errorf("tftp: %w", err)
	}
	return s.Serve(ctx, conn)
}

// Serve answers TFTP requests arriving on conn until ctx ends, then
// returns nil. It owns conn from then on and closes it; do not close it
// yourself (pin/tftp would spin on the closed socket until ctx ends).
//
// When ctx ends, Serve stops taking requests, stops each transfer in
// progress at its next block (the client gets an error packet), and
// returns once every transfer goroutine has ended: at worst
// Timeout × (Retries+1) later, for a transfer waiting on a silent client.
//
// conn should be a *net.UDPConn: pin/tftp reads the interface MTU through
// it, and on any other net.PacketConn it never lets blksize exceed 512.
func (s *Server) Serve(ctx context.Context, conn net.PacketConn) error {
	s.mu.Lock()
	s.addr = conn.LocalAddr()
	s.mu.Unlock()

	srv := ptftp.NewServer(s.readHandler(ctx), s.writeHandler)
	srv.SetTimeout(s.timeout)
	srv.SetRetries(s.retries)
	srv.SetBlockSize(MaxBlockSize)
	// Resend as soon as the timeout has passed; the library's default
	// adds up to a second of random sleep to every retry.
	srv.SetBackoff(func(int) time.Duration { return 0 })
	srv.SetHook(libHook{log: s.log})

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(conn) }()

	var err error
	select {
	case <-ctx.Done():
		// Shutdown closes conn (which ends the library's read), stops
		// its loop and waits for the transfers' goroutines.
		srv.Shutdown()
		<-errc
	case err = <-errc:
		// The library gave up on conn before it started (it could not
		// tell the address family); nothing is running.
		err = fmt.Errorf("tftp: %w", err)
	}
	// Shutdown only closes conn if the library had taken it; close it
	// here in every case. A second Close is harmless.
	conn.Close()
	return err
}

// errors sent to clients. pin/tftp sends every error with code 1, so the
// text is what tells them apart.
var (
	errNotFound = errors.New("file not found")
	errAccess   = errors.New("access violation")
	errReadOnly = errors.New("read-only server")
	errShutdown = errors.New("server shutting down")
)

// unknownPeer stands for the client's address in logs if the library
// ever hands over a transfer without one.
const unknownPeer = "unknown"

// readHandler returns the library's read handler for one Serve; ctx is
// Serve's, so transfers stop when it ends.
func (s *Server) readHandler(ctx context.Context) func(string, io.ReaderFrom) error {
	return func(name string, rf io.ReaderFrom) error {
		start := time.Now()
		ot, _ := rf.(ptftp.OutgoingTransfer)
		remote := remoteOf(ot)

		f, rel, size, reason, err := s.open(name)
		if err != nil {
			s.log.Warn("tftp: read refused",
				"remote", addrString(remote),
				"path", fmt.Sprintf("%q", name),
				"reason", reason)
			return err
		}
		defer f.Close()

		if ot != nil {
			// Only takes effect if the client asked for tsize. The file
			// is read through a LimitReader, so it is never longer than
			// what tsize promised.
			ot.SetSize(size)
		}
		n, err := rf.ReadFrom(&ctxReader{ctx: ctx, r: io.LimitReader(f, size)})
		if err != nil {
			// Clients end transfers early on purpose too: PXE ROMs ask
			// for tsize, then abort. Not worth more than debug.
			s.log.Debug("tftp: transfer ended early",
				"remote", addrString(remote),
				"path", fmt.Sprintf("%q", name),
				"bytes", n,
				"err", err)
			return err
		}
		s.log.Debug("tftp: served",
			"remote", addrString(remote),
			"path", fmt.Sprintf("%q", name),
			"file", rel,
			"bytes", n,
			"duration", time.Since(start))
		if s.onRead != nil {
			s.onRead(remote, rel, n)
		}
		return nil
	}
}

// writeHandler refuses every write request. Returning an error makes
// pin/tftp answer with an error packet carrying its text; nothing is read
// from the client and nothing is created.
func (s *Server) writeHandler(name string, wt io.WriterTo) error {
	var remote net.Addr
	if it, ok := wt.(ptftp.IncomingTransfer); ok {
		a := it.RemoteAddr()
		remote = &a
	}
	s.log.Warn("tftp: write refused",
		"remote", addrString(remote),
		"path", fmt.Sprintf("%q", name),
		"reason", "read-only server")
	return errReadOnly
}

func remoteOf(ot ptftp.OutgoingTransfer) net.Addr {
	if ot == nil {
		return nil
	}
	a := ot.RemoteAddr()
	return &a
}

func addrString(a net.Addr) string {
	if a == nil {
		return unknownPeer
	}
	return a.String()
}

// ctxReader fails reads once ctx has ended, so a transfer in progress
// stops at its next block when Serve is told to stop.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	select {
	case <-c.ctx.Done():
		return 0, errShutdown
	default:
	}
	return c.r.Read(p)
}

// libHook receives pin/tftp's reports. Transfers, failed or not, are
// already logged by the handlers; what is left is packets the library
// could not use (garbage, truncated requests, stray ACKs on the listening
// port), which it reports with empty stats: no remote address.
type libHook struct{ log *slog.Logger }

func (h libHook) OnSuccess(ptftp.TransferStats) {}

func (h libHook) OnFailure(st ptftp.TransferStats, err error) {
	if st.RemoteAddr != nil || err == nil {
		return
	}
	h.log.Debug("tftp: bad packet", "err", err)
}
