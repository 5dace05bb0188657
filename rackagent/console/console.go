// Package console holds a rack agent's serial consoles: at most one
// Serial-over-LAN session per node, opened when its first client attaches
// and closed when its last one leaves, its output fanned out to every
// client attached.
//
// One client holds the keyboard (interactive); the others watch
// (read-only). A second interactive attach is refused with an error naming
// the holder and since when, unless it forces a takeover: then the holder
// is told who took over and detached (not demoted: a terminal in raw mode
// whose keystrokes silently stop counting is worse than a clear end).
//
// Slow clients never hold a session up: each client has a bounded queue,
// and one that falls behind by more than it holds is dropped with a
// notice. Each node's last LogBytes of output (while a session is open)
// are kept, also after the session ends, oldest first. Every client's
// attach and detach is reported (proto.ReportConsole) with its user and
// mode.
package console

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/metalfleet/metalfleet/proto"
)

// Modes of an attach.
const (
	Interactive = proto.ConsoleInteractive // holds the keyboard
	ReadOnly    = proto.ConsoleReadOnly    // watches
)

// Report events.
const (
	EventStart = "console-start"
	EventEnd   = "console-end"
)

// Defaults of Config.
const (
	DefaultMaxSessions  = 64
	DefaultMaxClients   = 16
	DefaultLogBytes     = 256 << 10
	DefaultClientBuffer = 256 << 10
	DefaultMaxLogs      = 256
)

// Opener opens a node's serial console (bmc.Driver.Console behind the
// node's BMC config).
type Opener func(ctx context.Context, node string) (io.ReadWriteCloser, error)

// Config configures a Manager. The zero value of each bound takes its
// default.
type Config struct {
	// Open opens a node's console; it is called on a node's first attach.
	Open Opener
	// Report queues a report (the agent's outbox); nil drops them.
	Report func(proto.AgentReport)
	// MaxSessions bounds the sessions open at once (default 64).
	MaxSessions int
	// MaxClients bounds the clients of one session (default 16).
	MaxClients int
	// LogBytes is how much of each node's output is kept (default 256 KiB).
	LogBytes int
	// MaxLogs bounds the nodes whose log is kept; past it the log written
	// longest ago goes (default 256).
	MaxLogs int
	// ClientBuffer bounds the output queued for one client (default 256
	// KiB); a client further behind is dropped.
	ClientBuffer int
	// Now is the clock (default time.Now).
	Now    func() time.Time
	Logger *slog.Logger
}

func (c *Config) fill() {
	if c.MaxSessions <= 0 {
		c.MaxSessions = DefaultMaxSessions
	}
	if c.MaxClients <= 0 {
		c.MaxClients = DefaultMaxClients
	}
	if c.LogBytes <= 0 {
		c.LogBytes = DefaultLogBytes
	}
	if c.MaxLogs <= 0 {
		c.MaxLogs = DefaultMaxLogs
	}
	if c.ClientBuffer <= 0 {
		c.ClientBuffer = DefaultClientBuffer
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Report == nil {
		c.Report = func(proto.AgentReport) {}
	}
}

// Manager holds the sessions of one rack agent. It is safe for concurrent
// use.
type Manager struct {
	cfg Config

	mu       sync.Mutex
	sessions map[string]*session // by node
	logs     map[string]*ring    // by node
	logTick  uint64              // orders logs for eviction
}

// New returns a Manager.
func New(cfg Config) *Manager {
	cfg.fill()
	return &Manager{cfg: cfg, sessions: map[string]*session{}, logs: map[string]*ring{}}
}

// HeldError refuses a second interactive attach: User holds the keyboard
// since Since.
type HeldError struct {
	Node  string
	User  string
	Since time.Time
}

func (e *HeldError) Error() string {
	return fmt.Sprintf("the console of node %s is held by %s since %s; attach read-only to watch, or force to take over",
		e.Node, e.User, e.Since.UTC().Format(time.RFC3339))
}

// Errors of Attach and Write.
var (
	ErrTooManySessions = errors.New("too many console sessions open on this rack agent")
	ErrTooManyClients  = errors.New("too many clients attached to this console")
	ErrReadOnly        = errors.New("read-only: this client does not hold the keyboard")
	ErrDetached        = errors.New("detached from the console")
)

// Request is one attach.
type Request struct {
	Node string
	// Name is how messages name the node (Node when empty).
	Name string
	User string
	// Mode is Interactive or ReadOnly (empty: Interactive).
	Mode string
	// Force takes the keyboard from its holder.
	Force bool
}

// session is one node's open console.
type session struct {
	node   string
	ready  chan struct{} // closed once conn is open (or failed)
	err    error         // why it failed to open
	conn   io.ReadWriteCloser
	wmu    sync.Mutex // one write to the BMC at a time
	closed bool

	clients map[*Client]struct{}
	holder  *Client
}

// Attach attaches a client to node's console, opening it if it is not.
// It fails with a *HeldError when another client holds the keyboard and
// the request does not force.
func (m *Manager) Attach(ctx context.Context, req Request) (*Client, error) {
	if req.Mode == "" {
		req.Mode = Interactive
	}
	if req.Name == "" {
		req.Name = req.Node
	}
	if req.Mode != Interactive && req.Mode != ReadOnly {
		return nil, fmt.Errorf("mode %q: want %s or %s", req.Mode, Interactive, ReadOnly)
	}
	// A session may close between its opening and this client joining
	// it (its other clients left): then open it again, a few times.
	for range 3 {
		s, err := m.session(ctx, req.Node)
		if err != nil {
			return nil, err
		}
		c, retry, err := m.join(s, req)
		if retry {
			continue
		}
		return c, err
	}
	return nil, fmt.Errorf("console of node %s: the session kept closing while attaching", req.Node)
}

// session returns node's open session, opening it if needed.
func (m *Manager) session(ctx context.Context, node string) (*session, error) {
	m.mu.Lock()
	s := m.sessions[node]
	if s == nil {
		if len(m.sessions) >= m.cfg.MaxSessions {
			m.mu.Unlock()
			return nil, ErrTooManySessions
		}
		s = &session{node: node, ready: make(chan struct{}), clients: map[*Client]struct{}{}}
		m.sessions[node] = s
		m.mu.Unlock()
		// The session outlives the request that opened it: a driver
		// that ties its session to the context must not end it when
		// the first client leaves.
		conn, err := m.cfg.Open(context.WithoutCancel(ctx), node)
		m.mu.Lock()
		if err != nil {
			s.err, s.closed = err, true
			delete(m.sessions, node)
		} else {
			s.conn = conn
			m.logFor(node) // the log goes on from the last session's
		}
		close(s.ready)
		m.mu.Unlock()
		if err != nil {
			return nil, err
		}
		m.cfg.Logger.Info("console session opened", "node", node)
		go m.pump(s)
		return s, nil
	}
	m.mu.Unlock()
	select {
	case <-s.ready:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if s.err != nil {
		return nil, s.err
	}
	return s, nil
}

// join adds a client to s; retry is true when s closed meanwhile.
func (m *Manager) join(s *session, req Request) (c *Client, retry bool, err error) {
	now := m.cfg.Now()
	m.mu.Lock()
	if s.closed {
		m.mu.Unlock()
		return nil, true, nil
	}
	var taken *Client
	if req.Mode == Interactive && s.holder != nil {
		if !req.Force {
			h := s.holder
			m.mu.Unlock()
			return nil, false, &HeldError{Node: req.Name, User: h.user, Since: h.since}
		}
		taken = s.holder
	}
	if len(s.clients) >= m.cfg.MaxClients && taken == nil {
		m.mu.Unlock()
		return nil, false, ErrTooManyClients
	}
	c = &Client{m: m, s: s, user: req.User, mode: req.Mode, since: now, wake: make(chan struct{}, 1), max: m.cfg.ClientBuffer}
	// The new client joins before the holder it replaces leaves: the
	// session must not close under it when that was the only client.
	s.clients[c] = struct{}{}
	if req.Mode == Interactive {
		s.holder = c
	}
	if taken != nil {
		m.detachLocked(taken, fmt.Sprintf("%s took over the console of node %s", req.User, req.Name))
		for o := range s.clients {
			if o != c {
				o.push(Event{Notice: fmt.Sprintf("%s took the keyboard from %s", req.User, taken.user)})
			}
		}
	}
	m.mu.Unlock()
	if taken != nil {
		m.reportEnd(taken)
	}
	m.cfg.Logger.Info("console client attached", "node", s.node, "user", req.User, "mode", req.Mode, "force", req.Force)
	m.cfg.Report(proto.AgentReport{Kind: proto.ReportConsole, Node: s.node, Event: EventStart, User: c.user, Mode: c.mode, Time: now.UTC()})
	return c, false, nil
}

func (m *Manager) reportEnd(c *Client) {
	m.cfg.Report(proto.AgentReport{Kind: proto.ReportConsole, Node: c.s.node, Event: EventEnd, User: c.user, Mode: c.mode, Time: m.cfg.Now().UTC()})
}

// detachLocked ends c's attachment with a last notice; it returns whether
// c was attached. The session closes when its last client goes.
func (m *Manager) detachLocked(c *Client, notice string) bool {
	s := c.s
	if _, ok := s.clients[c]; !ok {
		return false
	}
	delete(s.clients, c)
	if s.holder == c {
		s.holder = nil
	}
	c.end(notice)
	if len(s.clients) == 0 && !s.closed {
		s.closed = true
		if m.sessions[s.node] == s {
			delete(m.sessions, s.node)
		}
		// Close outside the caller's lock: a BMC may take a moment.
		go func() {
			_ = s.conn.Close()
			m.cfg.Logger.Info("console session closed: no client left", "node", s.node)
		}()
	}
	return true
}

// pump reads the console's output into the log and every client's queue
// until the console ends.
func (m *Manager) pump(s *session) {
	buf := make([]byte, 4096)
	for {
		n, err := s.conn.Read(buf)
		if n > 0 {
			var dropped []*Client
			m.mu.Lock()
			m.logFor(s.node).write(buf[:n])
			if !s.closed {
				chunk := append([]byte(nil), buf[:n]...)
				for c := range s.clients {
					if !c.push(Event{Data: chunk}) &&
						m.detachLocked(c, fmt.Sprintf("dropped: more than %d bytes of output were waiting for this client", c.max)) {
						dropped = append(dropped, c)
					}
				}
			}
			m.mu.Unlock()
			for _, c := range dropped {
				m.cfg.Logger.Warn("console client dropped: too slow", "node", s.node, "user", c.user)
				m.reportEnd(c)
			}
		}
		if err != nil {
			m.mu.Lock()
			ended := !s.closed
			var gone []*Client
			if ended {
				s.closed = true
				if m.sessions[s.node] == s {
					delete(m.sessions, s.node)
				}
				why := "the console ended"
				if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrClosedPipe) {
					why += ": " + err.Error()
				}
				for c := range s.clients {
					gone = append(gone, c)
					delete(s.clients, c)
					c.end(why)
				}
				s.holder = nil
			}
			m.mu.Unlock()
			if ended {
				_ = s.conn.Close()
				m.cfg.Logger.Info("console session ended by the BMC side", "node", s.node, "err", err)
				for _, c := range gone {
					m.reportEnd(c)
				}
			}
			return
		}
	}
}

// logFor returns node's log ring, making it (and evicting the oldest
// beyond MaxLogs).
func (m *Manager) logFor(node string) *ring {
	m.logTick++
	r := m.logs[node]
	if r == nil {
		for len(m.logs) >= m.cfg.MaxLogs {
			oldest, min := "", ^uint64(0)
			for k, l := range m.logs {
				if l.tick < min {
					oldest, min = k, l.tick
				}
			}
			delete(m.logs, oldest)
		}
		r = &ring{max: m.cfg.LogBytes}
		m.logs[node] = r
	}
	r.tick = m.logTick
	return r
}

// Log returns node's kept console output, oldest first, and whether any
// is kept.
func (m *Manager) Log(node string) ([]byte, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r := m.logs[node]
	if r == nil {
		return nil, false
	}
	return r.bytes(), true
}

// Close ends every session, telling their clients why.
func (m *Manager) Close() {
	m.mu.Lock()
	var gone []*Client
	for _, s := range m.sessions {
		for c := range s.clients {
			gone = append(gone, c)
			m.detachLocked(c, "the rack agent is stopping")
		}
	}
	m.mu.Unlock()
	for _, c := range gone {
		m.reportEnd(c)
	}
}

// Sessions is how many sessions are open.
func (m *Manager) Sessions() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.sessions)
}

// Holder returns who holds node's keyboard ("" if nobody) and how many
// clients are attached.
func (m *Manager) Holder(node string) (user string, clients int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.sessions[node]
	if s == nil {
		return "", 0
	}
	if s.holder != nil {
		user = s.holder.user
	}
	return user, len(s.clients)
}

// Event is one thing a client receives: output bytes, or a notice.
type Event struct {
	Data   []byte
	Notice string
}

// Client is one attachment to a node's console.
type Client struct {
	m     *Manager
	s     *session
	user  string
	mode  string
	since time.Time
	max   int

	// Guarded by m.mu.
	queue  []Event
	queued int // bytes of Data in queue
	ended  bool

	wake chan struct{} // cap 1: something was queued or the client ended
}

// User and Mode are the client's.
func (c *Client) User() string { return c.user }

// Mode is Interactive or ReadOnly.
func (c *Client) Mode() string { return c.mode }

// push queues e; it returns false when the queue would pass its bound.
// Called with m.mu held.
func (c *Client) push(e Event) bool {
	if c.ended {
		return true
	}
	if c.queued+len(e.Data) > c.max {
		return false
	}
	c.queue = append(c.queue, e)
	c.queued += len(e.Data)
	c.signal()
	return true
}

// end marks the client detached: what is queued is dropped but for the
// last notice. Called with m.mu held.
func (c *Client) end(notice string) {
	if c.ended {
		return
	}
	c.ended = true
	c.queue, c.queued = nil, 0
	if notice != "" {
		c.queue = []Event{{Notice: notice}}
	}
	c.signal()
}

func (c *Client) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// Next returns the client's next event, waiting for one; io.EOF once the
// client is detached and its last notice was read.
func (c *Client) Next(ctx context.Context) (Event, error) {
	for {
		c.m.mu.Lock()
		if len(c.queue) > 0 {
			e := c.queue[0]
			c.queue[0] = Event{}
			c.queue = c.queue[1:]
			c.queued -= len(e.Data)
			c.m.mu.Unlock()
			return e, nil
		}
		ended := c.ended
		c.m.mu.Unlock()
		if ended {
			return Event{}, io.EOF
		}
		select {
		case <-c.wake:
		case <-ctx.Done():
			return Event{}, ctx.Err()
		}
	}
}

// Write sends keystrokes to the console; only the keyboard's holder may.
func (c *Client) Write(p []byte) (int, error) {
	c.m.mu.Lock()
	ended, holds := c.ended, c.s.holder == c
	c.m.mu.Unlock()
	switch {
	case ended:
		return 0, ErrDetached
	case !holds:
		return 0, ErrReadOnly
	}
	c.s.wmu.Lock()
	defer c.s.wmu.Unlock()
	return c.s.conn.Write(p)
}

// Close detaches the client; the session closes if it was the last.
func (c *Client) Close() error {
	c.m.mu.Lock()
	gone := c.m.detachLocked(c, "")
	c.m.mu.Unlock()
	if gone {
		c.m.cfg.Logger.Info("console client detached", "node", c.s.node, "user", c.user, "mode", c.mode)
		c.m.reportEnd(c)
	}
	return nil
}

// ring keeps the last max bytes written.
type ring struct {
	max   int
	buf   []byte // grows up to max
	start int    // index of the oldest byte once full
	tick  uint64
}

func (r *ring) write(p []byte) {
	if len(p) >= r.max {
		r.buf = append(r.buf[:0], p[len(p)-r.max:]...)
		r.start = 0
		return
	}
	if room := r.max - len(r.buf); room > 0 {
		n := min(room, len(p))
		r.buf = append(r.buf, p[:n]...)
		p = p[n:]
	}
	for len(p) > 0 {
		n := copy(r.buf[r.start:], p)
		p = p[n:]
		r.start = (r.start + n) % r.max
	}
}

func (r *ring) bytes() []byte {
	out := make([]byte, 0, len(r.buf))
	out = append(out, r.buf[r.start:]...)
	return append(out, r.buf[:r.start]...)
}
