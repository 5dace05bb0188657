// Package dhcp is the rack agent's DHCPv4 server, in three parts: a
// listener (a UDP socket, broadcast on a rack interface or relayed on an
// address), a Handler that decides each answer, and the Handler's backend
// (the rack's boot state and this agent's share of the dynamic pool).
//
// Known MACs get their reserved address and boot config; unknown MACs a
// pool address and the discovery image while discovery is on. PXE ROMs get
// iPXE over TFTP for their architecture; iPXE gets its script's URL (no
// boot loop) and option 175/176 so it does not wait for ProxyDHCP; no
// conflict probe ever delays an offer.
package dhcp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"
)

// Listen opens the server's socket: on iface (0.0.0.0:67 bound to that
// device, for broadcast clients; needs root) or, with iface empty, on addr
// (relayed DHCP only).
func Listen(iface, addr string) (net.PacketConn, error) {
	if iface != "" {
		port := 67
		if addr != "" {
			ua, err := net.ResolveUDPAddr("udp4", addr)
			if err != nil {
				return nil, fmt.Errorf("dhcp address %q: %w", addr, err)
			}
			port = ua.Port
		}
		c, err := server4.NewIPv4UDPConn(iface, &net.UDPAddr{Port: port})
		if err != nil {
			return nil, fmt.Errorf("dhcp on %s: %w", iface, err)
		}
		return c, nil
	}
	c, err := net.ListenPacket("udp4", addr)
	if err != nil {
		return nil, fmt.Errorf("dhcp on %s: %w", addr, err)
	}
	return c, nil
}

// Stats counts what the server did.
type Stats struct {
	Received, Malformed, Answered, Dropped, Overflow, Errors atomic.Uint64
}

// Server reads requests from a socket, hands them to a Handler on a pool
// of workers, and sends the answers.
type Server struct {
	h       *Handler
	conn    net.PacketConn
	iface   string
	log     *slog.Logger
	workers int
	Stats   Stats

	logMu   sync.Mutex
	lastLog map[netip.Addr]time.Time
}

// NewServer serves h on conn; iface names the interface for logs.
func NewServer(h *Handler, conn net.PacketConn, iface string, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{h: h, conn: conn, iface: iface, log: log, workers: 64, lastLog: map[netip.Addr]time.Time{}}
}

// Addr is the socket's address.
func (s *Server) Addr() net.Addr { return s.conn.LocalAddr() }

type packet struct {
	b   []byte
	src netip.AddrPort
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 1500); return &b }}

// Serve answers until ctx ends; it closes the socket.
func (s *Server) Serve(ctx context.Context) error {
	queue := make(chan packet, 1024)
	var wg sync.WaitGroup
	for i := 0; i < s.workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range queue {
				s.handle(p)
				bufPool.Put(&p.b)
			}
		}()
	}
	stop := context.AfterFunc(ctx, func() { s.conn.Close() })
	defer stop()
	var err error
	for {
		bp := bufPool.Get().(*[]byte)
		buf := (*bp)[:cap(*bp)]
		n, src, rerr := s.conn.ReadFrom(buf)
		if rerr != nil {
			if ctx.Err() == nil && !errors.Is(rerr, net.ErrClosed) {
				err = rerr
			}
			break
		}
		s.Stats.Received.Add(1)
		ua, _ := src.(*net.UDPAddr)
		var ap netip.AddrPort
		if ua != nil {
			ap = ua.AddrPort()
			ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		}
		select {
		case queue <- packet{b: buf[:n], src: ap}:
		default:
			// Overloaded: shed load rather than answer late. Clients
			// retransmit.
			s.Stats.Overflow.Add(1)
			bufPool.Put(bp)
		}
	}
	close(queue)
	wg.Wait()
	return err
}

func (s *Server) handle(p packet) {
	defer func() {
		if r := recover(); r != nil {
			s.Stats.Errors.Add(1)
			s.log.Error("DHCP handler panic; packet dropped", "src", p.src.String(), "panic", r, "stack", string(debug.Stack()))
		}
	}()
	m, err := dhcpv4.FromBytes(p.b)
	if err != nil {
		s.Stats.Malformed.Add(1)
		s.badPacket(p.src, "malformed DHCP packet", err)
		return
	}
	rep, err := s.h.Handle(Request{Msg: m, Src: p.src, Iface: s.iface})
	if err != nil {
		var d errDrop
		if errors.As(err, &d) {
			s.Stats.Dropped.Add(1)
			s.log.Debug("no answer", "mac", m.ClientHWAddr.String(), "xid", m.TransactionID.String(), "iface", s.iface,
				"type", m.MessageType().String(), "src", p.src.String(), "why", d.why)
			return
		}
		s.Stats.Errors.Add(1)
		s.log.Error("DHCP request failed", "mac", m.ClientHWAddr.String(), "xid", m.TransactionID.String(), "iface", s.iface, "err", err)
		return
	}
	dst := rep.Dst
	if rep.Broadcast {
		dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte{255, 255, 255, 255}), 68)
	}
	if _, err := s.conn.WriteTo(rep.Msg.ToBytes(), net.UDPAddrFromAddrPort(dst)); err != nil {
		s.Stats.Errors.Add(1)
		s.log.Warn("sending DHCP answer", "mac", m.ClientHWAddr.String(), "xid", m.TransactionID.String(), "dst", dst.String(), "err", err)
		return
	}
	s.Stats.Answered.Add(1)
	s.log.Debug("answered", "mac", m.ClientHWAddr.String(), "xid", m.TransactionID.String(), "iface", s.iface,
		"type", m.MessageType().String(), "reply", rep.Msg.MessageType().String(), "yiaddr", rep.Msg.YourIPAddr.String(), "dst", dst.String())
}

// badPacket logs a malformed packet naming its source, at most once per
// 10 s per source so a flood cannot flood the log.
func (s *Server) badPacket(src netip.AddrPort, what string, err error) {
	now := time.Now()
	s.logMu.Lock()
	last, seen := s.lastLog[src.Addr()]
	if seen && now.Sub(last) < 10*time.Second {
		s.logMu.Unlock()
		return
	}
	s.lastLog[src.Addr()] = now
	if len(s.lastLog) > 10000 {
		for a, t := range s.lastLog {
			if now.Sub(t) > 10*time.Second {
				delete(s.lastLog, a)
			}
		}
	}
	s.logMu.Unlock()
	s.log.Warn(what, "src", src.String(), "iface", s.iface, "err", err, "malformed_total", s.Stats.Malformed.Load())
}
