package apiclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/coder/websocket"

	"github.com/metalfleet/metalfleet/proto"
)

// The serial console, end to end: GET /v1/nodes/{id}/console is a
// WebSocket (operator role) that the coordinator proxies to the node's
// rack agent's management listener (GET /v1/console/{node}), with a
// single-use ticket in "Authorization: Ticket <secret>" that the agent
// redeems at POST /v1/agent/console-ticket. On both hops, binary messages
// are raw console bytes both ways and text messages are JSON notices
// (ConsoleNotice). GET /v1/nodes/{id}/console/log (and the agent's
// /v1/console/{node}/log) answers the kept output as
// application/octet-stream.

// Console modes and ticket purposes.
const (
	ConsoleInteractive = proto.ConsoleInteractive
	ConsoleReadOnly    = proto.ConsoleReadOnly
	PurposeConsole     = "console"
	PurposeLog         = "log"
)

// TicketScheme is the Authorization scheme of a console ticket.
const TicketScheme = "Ticket"

// ConsoleMaxMessage bounds one WebSocket message on either hop; writers
// split their bytes into messages of at most ConsoleChunk.
const (
	ConsoleMaxMessage = 64 << 10
	ConsoleChunk      = 4096
)

// ConsoleNotice is a text message on a console WebSocket.
type ConsoleNotice struct {
	Notice string `json:"notice"`
}

// ConsoleTicketRedeem is the body of POST /v1/agent/console-ticket.
type ConsoleTicketRedeem struct {
	Ticket string `json:"ticket"`
}

// ConsoleTicket answers a redeemed ticket: what it lets the agent open.
type ConsoleTicket struct {
	Node    string    `json:"node"` // uuid
	Rack    string    `json:"rack"`
	User    string    `json:"user"`
	Mode    string    `json:"mode,omitempty"`
	Force   bool      `json:"force,omitempty"`
	Purpose string    `json:"purpose"`
	Expires time.Time `json:"expires"`
}

// RedeemConsoleTicket takes a console ticket for rack (the agent's).
func (c *Client) RedeemConsoleTicket(ctx context.Context, rack, secret string) (*ConsoleTicket, error) {
	var out ConsoleTicket
	_, err := c.Do(ctx, "POST", "/v1/agent/console-ticket?rack="+url.QueryEscape(rack), ConsoleTicketRedeem{Ticket: secret}, &out)
	if err != nil {
		return nil, err
	}
	return &out, nil
}

// ConsoleOptions are an attach's.
type ConsoleOptions struct {
	ReadOnly bool
	Force    bool
}

// Console attaches to node's serial console through the coordinator. A
// refused attach (the keyboard held, no BMC, no agent) is an *Error with
// the API's status and message.
func (c *Client) Console(ctx context.Context, node string, o ConsoleOptions) (*websocket.Conn, error) {
	q := url.Values{"mode": {ConsoleInteractive}}
	if o.ReadOnly {
		q.Set("mode", ConsoleReadOnly)
	}
	if o.Force {
		q.Set("force", "true")
	}
	path := "/v1/nodes/" + esc(node) + "/console?" + q.Encode()
	c.mu.Lock()
	bases, start, header := c.bases, c.cur, c.header.Clone()
	c.mu.Unlock()
	if c.token != "" {
		header.Set("Authorization", "Bearer "+c.token)
	}
	var lastErr error
	for i := range bases {
		base := bases[(start+i)%len(bases)]
		conn, err := DialConsole(ctx, base+path, header)
		var op *net.OpError
		if err != nil && errors.As(err, &op) && op.Op == "dial" {
			lastErr = err
			continue
		}
		return conn, err
	}
	return nil, lastErr
}

// DialConsole opens a console WebSocket at url (http or https) with
// header. An HTTP answer other than the upgrade is returned as an *Error
// (its JSON error body read); a failure to connect as the dial's error.
func DialConsole(ctx context.Context, rawURL string, header http.Header) (*websocket.Conn, error) {
	u := "ws" + strings.TrimPrefix(rawURL, "http")
	conn, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: header})
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			return nil, responseError(resp)
		}
		var op *net.OpError
		if errors.As(err, &op) {
			return nil, op
		}
		return nil, err
	}
	conn.SetReadLimit(ConsoleMaxMessage)
	return conn, nil
}

// responseError reads an API error from a non-2xx answer (at most 1 KiB
// of it: all a failed WebSocket handshake keeps).
func responseError(resp *http.Response) error {
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	resp.Body.Close()
	var eb proto.ErrorBody
	if json.Unmarshal(raw, &eb) == nil && eb.Error != nil {
		return &Error{Status: resp.StatusCode, Code: eb.Error.Code, Message: eb.Error.Message}
	}
	return &Error{Status: resp.StatusCode, Code: proto.CodeInternal, Message: strings.TrimSpace(resp.Status + " " + string(raw))}
}

// ConsoleLog copies node's kept console output (oldest first) to w.
func (c *Client) ConsoleLog(ctx context.Context, node string, w io.Writer) (int64, error) {
	c.mu.Lock()
	bases, start, header := c.bases, c.cur, c.header.Clone()
	c.mu.Unlock()
	var lastErr error
	for i := range bases {
		req, err := http.NewRequestWithContext(ctx, "GET", bases[(start+i)%len(bases)]+"/v1/nodes/"+esc(node)+"/console/log", nil)
		if err != nil {
			return 0, err
		}
		req.Header = header.Clone()
		if c.token != "" {
			req.Header.Set("Authorization", "Bearer "+c.token)
		}
		resp, err := c.http.Do(req)
		if err != nil {
			var op *net.OpError
			if errors.As(err, &op) && op.Op == "dial" {
				lastErr = err
				continue
			}
			return 0, err
		}
		if resp.StatusCode != http.StatusOK {
			return 0, responseError(resp)
		}
		n, err := io.Copy(w, resp.Body)
		resp.Body.Close()
		if err != nil {
			return n, fmt.Errorf("reading the console log: %w", err)
		}
		return n, nil
	}
	return 0, lastErr
}
