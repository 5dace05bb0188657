package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/coder/websocket"

	"github.com/metalfleet/metalfleet/coordinator/apiclient"
	"github.com/metalfleet/metalfleet/proto"
	"github.com/metalfleet/metalfleet/rackagent/bmc"
	"github.com/metalfleet/metalfleet/rackagent/console"
)

// The console routes of the management listener. They take no bearer
// token: each request carries a single-use console ticket
// ("Authorization: Ticket <secret>") that the coordinator made for one
// node, user, mode and purpose; the agent redeems it at the coordinator
// (POST /v1/agent/console-ticket, with its own token), which answers only
// for a ticket that exists, has not expired or been used, and names a
// node of this agent's rack.
//
//	GET /v1/console/{node}      WebSocket: binary messages are console
//	                            bytes both ways, text messages JSON
//	                            notices {"notice": "..."}
//	GET /v1/console/{node}/log  the node's kept output, oldest first
//	                            (application/octet-stream)
//
// A refused attach is an HTTP error before any upgrade: 409 naming who
// holds the keyboard, or when the BMC refused (credentials, a command, no
// console: the BMC's error named); 503 past a bound, or when the BMC did
// not answer.

// newConsole makes the agent's console manager: sessions opened with the
// BMC config of the node in the rack's boot state, reports through the
// outbox.
func (a *Agent) newConsole() *console.Manager {
	return console.New(console.Config{
		Open:   a.openConsole,
		Report: a.rep.Report,
		Logger: a.log.With("component", "console"),
	})
}

// openConsole opens node's serial console through its BMC driver; closing
// the stream closes the driver too.
func (a *Agent) openConsole(ctx context.Context, node string) (io.ReadWriteCloser, error) {
	v := a.boot.View()
	if v == nil {
		return nil, proto.Errorf(proto.CodeUnavailable, "this rack agent has no boot state yet")
	}
	n, ok := v.NodeByUUID(node)
	if !ok {
		return nil, proto.Errorf(proto.CodeNotFound, "node %s is not in rack %s's boot state", node, a.cfg.Rack)
	}
	if n.BMC == nil {
		return nil, proto.Errorf(proto.CodeConflict, "node %s has no BMC in rack %s's boot state", node, a.cfg.Rack)
	}
	d, err := bmc.Open(n.BMC.BMC)
	if err != nil {
		return nil, err
	}
	octx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	c, err := d.Console(octx)
	if err != nil {
		d.Close()
		return nil, err
	}
	return &driverConsole{ReadWriteCloser: c, d: d}, nil
}

// ConsoleHolder says who holds node's console keyboard ("" if nobody)
// and how many clients are attached.
func (a *Agent) ConsoleHolder(node string) (user string, clients int) { return a.console.Holder(node) }

type driverConsole struct {
	io.ReadWriteCloser
	d bmc.Driver
}

func (c *driverConsole) Close() error {
	err := c.ReadWriteCloser.Close()
	c.d.Close()
	return err
}

// ticketAuth redeems console tickets, bounded as mgmtAuth bounds token
// checks: a malformed ticket costs no coordinator call, a source past its
// failure budget is answered 429, a redemption takes a failure from the
// source's budget until the coordinator accepts the ticket (so distinct
// tickets sent at once cannot outrun the budget), and redemptions share
// mgmtAuth's mgmtMaxChecks slots with token checks.
type ticketAuth struct {
	m      *mgmtAuth // its per-source failure budget and check slots
	redeem func(ctx context.Context, secret string) (*apiclient.ConsoleTicket, error)
}

// take redeems the ticket of r, sent from ip.
func (t *ticketAuth) take(ctx context.Context, r *http.Request, ip string) (*apiclient.ConsoleTicket, error) {
	scheme, secret, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	secret = strings.TrimSpace(secret)
	now := t.m.now()
	t.m.mu.Lock()
	if !t.m.mayFailLocked(ip, now) {
		t.m.mu.Unlock()
		return nil, proto.Errorf(proto.CodeRateLimited, "too many failed authentications from %s; slow down", ip)
	}
	// Charged now, malformed or not; refunded below unless the
	// coordinator refuses the ticket.
	t.m.failLocked(ip, now)
	t.m.mu.Unlock()
	if !strings.EqualFold(scheme, apiclient.TicketScheme) || !wellFormedTicket(secret) {
		return nil, proto.Errorf(proto.CodeUnauthorized, "want Authorization: Ticket <secret>, a console ticket the coordinator made (GET /v1/nodes/{id}/console there)")
	}
	ctx, cancel := context.WithTimeout(ctx, mgmtCheckTimeout)
	defer cancel()
	if !t.m.slot(ctx) {
		t.refund(ip)
		return nil, proto.Errorf(proto.CodeUnavailable, "cannot redeem the console ticket now: too many in flight")
	}
	tk, err := t.redeem(ctx, secret)
	t.m.unslot()
	var ae *apiclient.Error
	switch {
	case err == nil:
		t.refund(ip)
		return tk, nil
	case errors.As(err, &ae) && (ae.Status == http.StatusUnauthorized || ae.Status == http.StatusForbidden):
		return nil, proto.Errorf(proto.CodeUnauthorized, "console ticket refused by the coordinator: %s", ae.Message)
	default:
		t.refund(ip)
		return nil, proto.Errorf(proto.CodeUnavailable, "cannot redeem the console ticket with the coordinator: %v", err)
	}
}

// refund gives back the failure take charged ip.
func (t *ticketAuth) refund(ip string) {
	t.m.mu.Lock()
	t.m.refundLocked(ip)
	t.m.mu.Unlock()
}

// wellFormedTicket: tickets are 32 random bytes in hex.
func wellFormedTicket(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// consoleRoutes serves /v1/console/ with ticket authentication.
func (a *Agent) consoleRoutes() http.Handler {
	ta := &ticketAuth{m: a.mgmtAuth,
		redeem: func(ctx context.Context, secret string) (*apiclient.ConsoleTicket, error) {
			return a.client.RedeemConsoleTicket(ctx, a.cfg.Rack, secret)
		}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/console/{node}", func(w http.ResponseWriter, r *http.Request) {
		t, ok := a.consoleTicket(w, r, ta, apiclient.PurposeConsole)
		if ok {
			a.serveConsole(w, r, t)
		}
	})
	mux.HandleFunc("GET /v1/console/{node}/log", func(w http.ResponseWriter, r *http.Request) {
		t, ok := a.consoleTicket(w, r, ta, apiclient.PurposeLog)
		if !ok {
			return
		}
		b, kept := a.console.Log(t.Node)
		if !kept {
			proto.WriteError(w, proto.Errorf(proto.CodeNotFound, "no console output of node %s is kept on rack agent %s (no session since it started)", t.Node, a.cfg.Name))
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		_, _ = w.Write(b)
	})
	return mux
}

// consoleTicket authenticates a console request for purpose; on failure
// it has answered.
func (a *Agent) consoleTicket(w http.ResponseWriter, r *http.Request, ta *ticketAuth, purpose string) (*apiclient.ConsoleTicket, bool) {
	ip, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		ip = r.RemoteAddr
	}
	t, err := ta.take(r.Context(), r, ip)
	if err == nil && (t.Purpose != purpose || t.Node != r.PathValue("node")) {
		err = proto.Errorf(proto.CodeForbidden, "the console ticket is for the %s of node %s, not the %s of node %s", t.Purpose, t.Node, purpose, r.PathValue("node"))
	}
	if err != nil {
		a.log.Warn("console request refused", "remote", r.RemoteAddr, "path", r.URL.Path, "err", err)
		if proto.CodeOf(err) == proto.CodeRateLimited {
			w.Header().Set("Retry-After", "2")
		}
		proto.WriteError(w, err)
		return nil, false
	}
	return t, true
}

// serveConsole attaches the ticket's user and upgrades the connection.
func (a *Agent) serveConsole(w http.ResponseWriter, r *http.Request, t *apiclient.ConsoleTicket) {
	name := t.Node
	if v := a.boot.View(); v != nil {
		if n, ok := v.NodeByUUID(t.Node); ok && n.Name != "" {
			name = n.Name
		}
	}
	cl, err := a.console.Attach(r.Context(), console.Request{Node: t.Node, Name: name, User: t.User, Mode: t.Mode, Force: t.Force})
	if err != nil {
		var held *console.HeldError
		switch {
		case errors.As(err, &held):
			err = proto.Errorf(proto.CodeConflict, "%s", held.Error())
		case errors.Is(err, console.ErrTooManySessions), errors.Is(err, console.ErrTooManyClients):
			w.Header().Set("Retry-After", "5")
			err = proto.Errorf(proto.CodeUnavailable, "%v", err)
		case proto.CodeOf(err) != proto.CodeInternal:
		default:
			var be *bmc.Error
			if errors.As(err, &be) {
				// Unreachable or slow: worth a retry. Refused
				// credentials, a refused command, no console: not
				// until someone changes something.
				code := proto.CodeConflict
				if be.Kind == proto.BMCErrUnreachable || be.Kind == proto.BMCErrTimeout {
					code = proto.CodeUnavailable
					w.Header().Set("Retry-After", "5")
				}
				err = proto.Errorf(code, "opening the console of node %s: %v", name, err)
			}
		}
		a.log.Warn("console attach refused", "node", t.Node, "user", t.User, "mode", t.Mode, "err", err)
		proto.WriteError(w, err)
		return
	}
	defer cl.Close()
	ws, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	ws.SetReadLimit(apiclient.ConsoleMaxMessage)
	ctx, cancel := context.WithCancel(context.WithoutCancel(r.Context()))
	defer cancel()
	notice := func(s string) error {
		b, _ := json.Marshal(apiclient.ConsoleNotice{Notice: s})
		wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
		defer wcancel()
		return ws.Write(wctx, websocket.MessageText, b)
	}
	_ = notice(fmt.Sprintf("attached to the console of node %s as %s (%s)", name, t.User, cl.Mode()))

	// Keystrokes in; a read-only client is told once that they go nowhere.
	go func() {
		defer cancel()
		told := false
		for {
			typ, b, err := ws.Read(ctx)
			if err != nil {
				return
			}
			if typ != websocket.MessageBinary {
				continue
			}
			if _, err := cl.Write(b); err != nil {
				if errors.Is(err, console.ErrReadOnly) && !told {
					told = true
					_ = notice("read-only: what you type is not sent")
				}
				if errors.Is(err, console.ErrDetached) {
					return
				}
			}
		}
	}()
	// Output and notices out, until the client is detached or leaves.
	reason := "console closed"
	for {
		e, err := cl.Next(ctx)
		if err != nil {
			break
		}
		wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
		if e.Notice != "" {
			b, _ := json.Marshal(apiclient.ConsoleNotice{Notice: e.Notice})
			err = ws.Write(wctx, websocket.MessageText, b)
			reason = e.Notice
		} else {
			err = ws.Write(wctx, websocket.MessageBinary, e.Data)
		}
		wcancel()
		if err != nil {
			break
		}
	}
	if len(reason) > 120 { // a close reason is at most 123 bytes
		reason = reason[:120]
	}
	ws.Close(websocket.StatusNormalClosure, reason)
}
