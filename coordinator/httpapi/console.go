package httpapi

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/coder/websocket"

	"github.com/metalfleet/metalfleet/coordinator/apiclient"
	"github.com/metalfleet/metalfleet/coordinator/fsm"
	"github.com/metalfleet/metalfleet/coordinator/state"
	"github.com/metalfleet/metalfleet/proto"
)

// The serial console's coordinator side (see apiclient/console.go for the
// wire): the leader makes a single-use ticket bound to node, user, mode
// and purpose (a Raft write, so every replica agrees whether it was
// used), dials the node's rack agent's management listener with it, and
// only once the agent accepted does it upgrade the caller's connection
// and proxy both ways. A refused attach (the keyboard held, no BMC, no
// agent reachable) reaches the caller as an HTTP error before any
// upgrade. A follower passes the whole request, upgrade included, to the
// leader: only the leader makes tickets, and it knows the agents'
// management addresses (agents' calls are forwarded to it).

// ConsoleTicketTTL is how long a console ticket may wait to be redeemed.
const ConsoleTicketTTL = 30 * time.Second

// consoleDialTimeout bounds the coordinator's dial of an agent, handshake
// included (the agent opens the BMC's console before it answers).
const consoleDialTimeout = 20 * time.Second

// Unwrap lets http.ResponseController and WebSocket upgrades reach the
// connection under a statusWriter.
func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

func (a *API) console(c *call) (any, error) {
	mode := c.r.URL.Query().Get("mode")
	switch mode {
	case "":
		mode = apiclient.ConsoleInteractive
	case apiclient.ConsoleInteractive, apiclient.ConsoleReadOnly:
	default:
		return nil, proto.Errorf(proto.CodeInvalid, "mode %q: want %s or %s", mode, apiclient.ConsoleInteractive, apiclient.ConsoleReadOnly)
	}
	force := false
	if s := c.r.URL.Query().Get("force"); s != "" {
		b, err := strconv.ParseBool(s)
		if err != nil {
			return nil, proto.Errorf(proto.CodeInvalid, "force %q: want true or false", s)
		}
		force = b
	}
	if force && mode != apiclient.ConsoleInteractive {
		return nil, proto.Errorf(proto.CodeInvalid, "force: only an interactive attach takes the keyboard over")
	}
	if !websocketRequest(c.r) {
		return nil, proto.Errorf(proto.CodeInvalid, "GET %s is a WebSocket: send Connection: Upgrade and Upgrade: websocket (metalfleet node console does)", c.r.URL.Path)
	}
	if a.passToLeader(c) {
		return nil, nil
	}
	t, agents, secret, err := a.consoleTicket(c, apiclient.PurposeConsole, mode, force)
	if err != nil {
		return nil, err
	}
	h := http.Header{}
	h.Set("Authorization", apiclient.TicketScheme+" "+secret)
	var agentConn *websocket.Conn
	ctx, cancel := context.WithTimeout(c.r.Context(), consoleDialTimeout)
	defer cancel()
	for _, ag := range agents {
		agentConn, err = apiclient.DialConsole(ctx, "http://"+ag.MgmtAddr+"/v1/console/"+url.PathEscape(t.Node), h)
		if err == nil || !unreached(err) {
			break // the agent answered: its answer is the answer
		}
		a.log.Warn("console: rack agent unreachable", "agent", ag.Name, "mgmt", ag.MgmtAddr, "err", err)
	}
	if err != nil {
		return nil, agentError(t, err)
	}
	client, err := websocket.Accept(c.w, c.r, nil)
	if err != nil {
		agentConn.Close(websocket.StatusGoingAway, "the client's upgrade failed")
		return nil, nil // Accept answered the client
	}
	client.SetReadLimit(apiclient.ConsoleMaxMessage)
	a.log.Info("console session proxied", "node", t.Node, "user", t.User, "mode", mode, "force", force)
	proxyConsole(context.WithoutCancel(c.r.Context()), client, agentConn)
	return nil, nil
}

func (a *API) consoleLog(c *call) (any, error) {
	if a.passToLeader(c) {
		return nil, nil
	}
	t, agents, secret, err := a.consoleTicket(c, apiclient.PurposeLog, "", false)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(c.r.Context(), consoleDialTimeout)
	defer cancel()
	var resp *http.Response
	for _, ag := range agents {
		req, rerr := http.NewRequestWithContext(ctx, "GET", "http://"+ag.MgmtAddr+"/v1/console/"+url.PathEscape(t.Node)+"/log", nil)
		if rerr != nil {
			return nil, rerr
		}
		req.Header.Set("Authorization", apiclient.TicketScheme+" "+secret)
		resp, err = a.fwd.Do(req)
		if err == nil || !unreached(err) {
			break
		}
		a.log.Warn("console log: rack agent unreachable", "agent", ag.Name, "mgmt", ag.MgmtAddr, "err", err)
	}
	if err != nil {
		return nil, agentError(t, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, agentError(t, apiclientError(resp))
	}
	c.w.Header().Set(proto.IndexHeader, strconv.FormatUint(t.Index, 10))
	c.w.Header().Set("Content-Type", "application/octet-stream")
	if n := resp.Header.Get("Content-Length"); n != "" {
		c.w.Header().Set("Content-Length", n)
	}
	c.w.WriteHeader(http.StatusOK)
	_, _ = io.Copy(c.w, resp.Body)
	return nil, nil
}

// redeemConsoleTicket: POST /v1/agent/console-ticket, by a rack agent.
func (a *API) redeemConsoleTicket(c *call) (any, error) {
	rack, err := c.agentRack()
	if err != nil {
		return nil, err
	}
	var req apiclient.ConsoleTicketRedeem
	if err := c.decode(&req); err != nil {
		return nil, err
	}
	if req.Ticket == "" {
		return nil, proto.Errorf(proto.CodeInvalid, "ticket: the console ticket's secret is required")
	}
	// A ticket this (leading) server does not hold, or holds expired or
	// for another rack, is refused without a Raft write: made-up tickets
	// cost no log entry. The command checks again.
	hash, now := HashSecret(req.Ticket), a.cfg.Now()
	if t, ok := a.b.Store().Ticket(hash); !ok || !now.Before(t.Expires) {
		return nil, proto.Errorf(proto.CodeUnauthorized, "console ticket unknown, already used or expired")
	} else if t.Rack != rack {
		return nil, proto.Errorf(proto.CodeForbidden, "console ticket is for a node of rack %s, not of rack %s", t.Rack, rack)
	}
	v, err := c.apply(fsm.ConsoleTicketTake{Hash: hash, Rack: rack, Now: now})
	if err != nil {
		return nil, err
	}
	t := v.(*state.ConsoleTicket)
	return apiclient.ConsoleTicket{Node: t.Node, Rack: t.Rack, User: t.User, Mode: t.Mode, Force: t.Force,
		Purpose: t.Purpose, Expires: t.Expires}, nil
}

// passToLeader sends a console request from a follower to the leader,
// upgrade included; it reports whether it did (and answered).
func (a *API) passToLeader(c *call) bool {
	if a.b.IsLeader() {
		return false
	}
	if c.r.Header.Get(ForwardedHeader) != "" {
		writeError(c.w, proto.Errorf(proto.CodeNoLeader, "leadership moved while the console request was forwarded; try again"))
		return true
	}
	deadline := time.Now().Add(a.cfg.ForwardWait)
	for {
		id, addr := a.b.LeaderHTTP()
		if id != "" && id == a.b.NodeID() && a.b.IsLeader() {
			return false
		}
		if addr != "" && id != a.b.NodeID() {
			rp := &httputil.ReverseProxy{
				Rewrite: func(pr *httputil.ProxyRequest) {
					pr.SetURL(&url.URL{Scheme: "http", Host: addr})
					pr.Out.Header.Set(ForwardedHeader, a.b.NodeID())
				},
				ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
					writeError(w, proto.Errorf(proto.CodeUnavailable, "passing the console request to the leader %s at %s failed: %v", id, addr, err))
				},
			}
			rp.ServeHTTP(c.w, c.r)
			return true
		}
		if time.Now().After(deadline) {
			writeError(c.w, proto.Errorf(proto.CodeNoLeader, "no leader within %s: console tickets are made by the leader", a.cfg.ForwardWait))
			return true
		}
		select {
		case <-c.r.Context().Done():
			return true
		case <-time.After(25 * time.Millisecond):
		}
	}
}

// consoleTicket checks the node and finds its rack's agents, then makes a
// ticket; it returns the ticket, the agents to try (mgmtAgents' order)
// and the ticket's secret.
func (a *API) consoleTicket(c *call, purpose, mode string, force bool) (*state.ConsoleTicket, []proto.AgentInfo, string, error) {
	if rw, ok := a.b.(ReadyWaiter); ok {
		if err := rw.WaitReady(); err != nil {
			c.w.Header().Set("Retry-After", "1")
			return nil, nil, "", retryable(err)
		}
	}
	id := c.r.PathValue("id")
	n, ok := a.b.Store().Node(id)
	if !ok {
		return nil, nil, "", proto.Errorf(proto.CodeNotFound, "node %q not found", id)
	}
	name := n.Name
	if name == "" {
		name = n.UUID
	}
	if n.BMC.Driver == "" || n.BMC.Address == "" {
		return nil, nil, "", proto.Errorf(proto.CodeConflict, "node %s has no BMC (set --bmc-driver and --bmc-address): no console to open", name)
	}
	if n.Rack == "" {
		return nil, nil, "", proto.Errorf(proto.CodeConflict, "node %s is in no rack: no rack agent can open its console", name)
	}
	agents := a.mgmtAgents(n.Rack, n.UUID)
	if len(agents) == 0 {
		c.w.Header().Set("Retry-After", "5")
		return nil, nil, "", proto.Errorf(proto.CodeUnavailable, "no rack agent of rack %s is reachable: none has told this coordinator its management address lately (is one running?)", n.Rack)
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return nil, nil, "", err
	}
	secret := hex.EncodeToString(b)
	now := a.cfg.Now()
	user := consoleUser(c.token)
	v, err := c.apply(fsm.ConsoleTicketMake{Now: now, Ticket: state.ConsoleTicket{Hash: HashSecret(secret), Node: n.UUID,
		User: user, Mode: mode, Force: force, Purpose: purpose, Expires: now.Add(ConsoleTicketTTL)}})
	if err != nil {
		return nil, nil, "", err
	}
	return v.(*state.ConsoleTicket), agents, secret, nil
}

// consoleUser names a token in console tickets, notices and the node's
// history: its id and description, within proto.MaxBMCInfoLen.
func consoleUser(t *proto.Token) string {
	if t.Description == "" {
		return t.ID
	}
	d := t.Description
	if room := proto.MaxBMCInfoLen - len(t.ID) - 3; len(d) > room {
		d = strings.ToValidUTF8(d[:max(room, 0)], "")
	}
	return t.ID + " (" + d + ")"
}

// mgmtAgents lists rack's agents with a management address in the order
// to try them for node's console: live ones first, and among equals by
// rendezvous hash of node and agent name, so every attach to one node
// (and its log) goes to the same agent while the rack's agents stay the
// same: one agent holds the node's one SOL session and its log.
func (a *API) mgmtAgents(rack, node string) []proto.AgentInfo {
	byName := map[string]*proto.AgentInfo{}
	if l, ok := a.b.(AgentLister); ok {
		for _, ag := range l.Agents() {
			if ag.Rack == rack {
				ag := ag
				byName[ag.Name] = &ag
			}
		}
	}
	now := a.cfg.Now()
	for _, ct := range a.contacts.all() {
		if ct.rack != rack {
			continue
		}
		ag, ok := byName[ct.name]
		if !ok {
			ag = &proto.AgentInfo{Name: ct.name, Rack: ct.rack, Status: AgentAlive}
			if now.Sub(ct.last) > a.cfg.AgentAlive {
				ag.Status = AgentUnknown
			}
			byName[ct.name] = ag
		}
		if ct.mgmt != "" {
			ag.MgmtAddr = ct.mgmt
		}
	}
	var out []proto.AgentInfo
	for _, ag := range byName {
		if ag.MgmtAddr != "" {
			out = append(out, *ag)
		}
	}
	rank := func(s string) int {
		switch s {
		case AgentAlive: // gossip's word too
			return 0
		case "suspect", AgentUnknown:
			return 1
		}
		return 2
	}
	score := func(name string) uint64 { return rendezvous(node, name) } // as intents are given out
	sort.Slice(out, func(i, j int) bool {
		if ri, rj := rank(out[i].Status), rank(out[j].Status); ri != rj {
			return ri < rj
		}
		if si, sj := score(out[i].Name), score(out[j].Name); si != sj {
			return si > sj
		}
		return out[i].Name < out[j].Name
	})
	return out
}

// unreached reports whether err means the agent was never reached (so
// the ticket is unused and another agent may be tried).
func unreached(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// agentError turns a failure to reach or use the agent into the answer:
// the agent's own refusal as it gave it (409 for a held keyboard), else
// 503 naming the failure.
func agentError(t *state.ConsoleTicket, err error) error {
	var ae *apiclient.Error
	if errors.As(err, &ae) {
		code := ae.Code
		if code == "" || code.Status() != ae.Status {
			code = codeForStatus(ae.Status)
		}
		return proto.Errorf(code, "rack agent: %s", ae.Message)
	}
	return proto.Errorf(proto.CodeUnavailable, "no rack agent of rack %s could be reached for node %s's console: %v", t.Rack, t.Node, err)
}

func codeForStatus(status int) proto.Code {
	switch status {
	case http.StatusConflict:
		return proto.CodeConflict
	case http.StatusNotFound:
		return proto.CodeNotFound
	case http.StatusBadRequest:
		return proto.CodeInvalid
	case http.StatusTooManyRequests:
		return proto.CodeRateLimited
	}
	return proto.CodeUnavailable
}

// apiclientError reads an agent's JSON error answer.
func apiclientError(resp *http.Response) error {
	var eb proto.ErrorBody
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	if err := decodeLenient(raw, &eb); err == nil && eb.Error != nil {
		return &apiclient.Error{Status: resp.StatusCode, Code: eb.Error.Code, Message: eb.Error.Message}
	}
	return &apiclient.Error{Status: resp.StatusCode, Message: fmt.Sprintf("%s %s", resp.Status, raw)}
}

func websocketRequest(r *http.Request) bool {
	return headerHasToken(r.Header, "Connection", "upgrade") && headerHasToken(r.Header, "Upgrade", "websocket")
}

// headerHasToken reports whether a comma-separated header holds token
// (case-insensitively).
func headerHasToken(h http.Header, key, token string) bool {
	for _, v := range h.Values(key) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// proxyConsole copies messages both ways, keeping their type, until
// either side ends; the other side is then closed with its status.
func proxyConsole(ctx context.Context, client, agent *websocket.Conn) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 2)
	go func() { errc <- copyMessages(ctx, agent, client) }()
	go func() { errc <- copyMessages(ctx, client, agent) }()
	err := <-errc
	cancel()
	status, reason := websocket.StatusNormalClosure, "console closed"
	if s := websocket.CloseStatus(err); s != -1 {
		status = s
		var ce websocket.CloseError
		if errors.As(err, &ce) {
			reason = ce.Reason
		}
	}
	client.Close(status, reason)
	agent.Close(status, reason)
	<-errc
}

// copyMessages copies messages from src to dst until one fails.
func copyMessages(ctx context.Context, dst, src *websocket.Conn) error {
	for {
		typ, b, err := src.Read(ctx)
		if err != nil {
			return err
		}
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err = dst.Write(wctx, typ, b)
		cancel()
		if err != nil {
			return err
		}
	}
}
