// Package apiclient is the Go client of the coordinator's /v1 API, used by
// the CLI, the rack agents and tests.
package apiclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/metalfleet/metalfleet/proto"
)

// Client talks to one or more coordinator addresses (any member: a
// follower forwards to the leader). When an address cannot be reached it
// tries the next one, so a client given every coordinator rides out the
// loss of any of them.
type Client struct {
	mu     sync.Mutex
	bases  []string
	cur    int
	token  string
	header http.Header
	http   *http.Client
}

// New returns a client for addr ("host:port" or a URL; several separated
// by commas) with a bearer token.
func New(addr, token string) *Client {
	c := &Client{token: token, header: http.Header{}, http: &http.Client{Timeout: 6 * time.Minute}}
	c.SetAddrs(strings.Split(addr, ","))
	return c
}

// SetAddrs replaces the coordinator addresses the client tries.
func (c *Client) SetAddrs(addrs []string) {
	var bases []string
	for _, a := range addrs {
		a = strings.TrimSpace(a)
		if a == "" {
			continue
		}
		if !strings.Contains(a, "://") {
			a = "http://" + a
		}
		bases = append(bases, strings.TrimRight(a, "/"))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(bases) > 0 {
		c.bases, c.cur = bases, 0
	}
}

// Addrs returns the coordinator addresses the client tries, current first.
func (c *Client) Addrs() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append(append([]string(nil), c.bases[c.cur:]...), c.bases[:c.cur]...)
}

// SetHeader sets a header sent with every request.
func (c *Client) SetHeader(k, v string) {
	c.mu.Lock()
	c.header.Set(k, v)
	c.mu.Unlock()
}

// Error is an API error with its HTTP status.
type Error struct {
	Status  int
	Code    proto.Code
	Message string
}

func (e *Error) Error() string { return fmt.Sprintf("%s (HTTP %d)", e.Message, e.Status) }

// Do sends a request with an optional JSON body and decodes a JSON answer
// into out (if not nil). It returns the answer's X-Metalfleet-Index.
func (c *Client) Do(ctx context.Context, method, path string, in, out any) (uint64, error) {
	idx, _, err := c.DoHeader(ctx, method, path, in, out)
	return idx, err
}

// DoHeader is Do that also returns the answer's headers (nil when no
// answer came).
func (c *Client) DoHeader(ctx context.Context, method, path string, in, out any) (uint64, http.Header, error) {
	var payload []byte
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return 0, nil, err
		}
		payload = b
	}
	c.mu.Lock()
	bases, start, header := c.bases, c.cur, c.header.Clone()
	c.mu.Unlock()
	if len(bases) == 0 {
		return 0, nil, fmt.Errorf("no coordinator address")
	}
	var lastErr error
	for i := range bases {
		k := (start + i) % len(bases)
		idx, hdr, err, sent := c.do(ctx, bases[k], method, path, payload, in != nil, header, out)
		if sent {
			if k != start {
				c.mu.Lock()
				c.cur = k
				c.mu.Unlock()
			}
			return idx, hdr, err
		}
		lastErr = err
		if ctx.Err() != nil {
			break
		}
	}
	return 0, nil, lastErr
}

// do sends one request to base. sent is false when no answer came (the
// address could not be reached), so another address may be tried.
func (c *Client) do(ctx context.Context, base, method, path string, payload []byte, hasBody bool, header http.Header, out any) (idx uint64, hdr http.Header, err error, sent bool) {
	var body io.Reader
	if hasBody {
		body = bytes.NewReader(payload)
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, body)
	if err != nil {
		return 0, nil, err, true
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	if hasBody {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		// Only a request that never left (the address could not be
		// dialled) may go to another address: one that failed later may
		// have been applied, and a write must not be made twice.
		var op *net.OpError
		return 0, nil, err, !(errors.As(err, &op) && op.Op == "dial")
	}
	defer resp.Body.Close()
	idx, _ = strconv.ParseUint(resp.Header.Get(proto.IndexHeader), 10, 64)
	hdr = resp.Header
	if resp.StatusCode >= 300 {
		var eb proto.ErrorBody
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if json.Unmarshal(raw, &eb) == nil && eb.Error != nil {
			return idx, hdr, &Error{Status: resp.StatusCode, Code: eb.Error.Code, Message: eb.Error.Message}, true
		}
		return idx, hdr, &Error{Status: resp.StatusCode, Code: proto.CodeInternal, Message: strings.TrimSpace(resp.Status + " " + string(raw))}, true
	}
	if out != nil && resp.StatusCode != http.StatusNoContent {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			return idx, hdr, fmt.Errorf("decoding answer to %s %s: %w", method, path, err), true
		}
	}
	return idx, hdr, nil, true
}

// BootState reads rack's boot state, blocking until it passes index (if
// not zero) or wait ends.
func (c *Client) BootState(ctx context.Context, rack string, index uint64, wait time.Duration) (*proto.RackBootState, error) {
	q := &Query{Values: url.Values{"rack": {rack}}, Index: index, Wait: wait}
	var out proto.RackBootState
	_, err := c.Do(ctx, "GET", "/v1/agent/bootstate"+q.encode(), nil, &out)
	return &out, err
}

// Reports sends a batch of agent reports for rack.
func (c *Client) Reports(ctx context.Context, rack string, reports []proto.AgentReport) (proto.ReportAck, error) {
	var out proto.ReportAck
	_, err := c.Do(ctx, "POST", "/v1/agent/reports?rack="+url.QueryEscape(rack), proto.ReportBatch{Reports: reports}, &out)
	return out, err
}

// Sightings lists unknown MACs seen (in rack, if not empty).
func (c *Client) Sightings(ctx context.Context, rack string) ([]*proto.Sighting, error) {
	var out []*proto.Sighting
	q := ""
	if rack != "" {
		q = "?rack=" + url.QueryEscape(rack)
	}
	_, err := c.Do(ctx, "GET", "/v1/sightings"+q, nil, &out)
	return out, err
}

// Agents lists the rack agents the coordinators know of: through gossip
// and from the agents' API calls.
func (c *Client) Agents(ctx context.Context) ([]proto.AgentInfo, error) {
	var out []proto.AgentInfo
	_, err := c.Do(ctx, "GET", "/v1/agents", nil, &out)
	return out, err
}

// Query holds list filters and blocking-query parameters.
type Query struct {
	url.Values
	// Index and Wait make a blocking read: it returns when the state
	// passes Index or Wait ends.
	Index uint64
	Wait  time.Duration
	// Stale allows the answer from a follower's local copy.
	Stale bool
}

func (q *Query) encode() string {
	v := url.Values{}
	if q != nil {
		for k, vs := range q.Values {
			v[k] = vs
		}
		if q.Index > 0 {
			v.Set("index", strconv.FormatUint(q.Index, 10))
		}
		if q.Wait > 0 {
			v.Set("wait", q.Wait.String())
		}
		if q.Stale {
			v.Set("stale", "")
		}
	}
	if len(v) == 0 {
		return ""
	}
	return "?" + v.Encode()
}

func esc(s string) string { return url.PathEscape(s) }

// Nodes lists nodes with filters (provision_state, rack, enrolled,
// maintenance, instance).
func (c *Client) Nodes(ctx context.Context, q *Query) ([]*proto.Node, uint64, error) {
	var out []*proto.Node
	idx, err := c.Do(ctx, "GET", "/v1/nodes"+q.encode(), nil, &out)
	return out, idx, err
}

// Node gets a node by uuid, name or MAC.
func (c *Client) Node(ctx context.Context, id string) (*proto.Node, error) {
	var out proto.Node
	_, err := c.Do(ctx, "GET", "/v1/nodes/"+esc(id), nil, &out)
	return &out, err
}

// CreateNode creates a node.
func (c *Client) CreateNode(ctx context.Context, req proto.NodeCreate) (*proto.Node, error) {
	var out proto.Node
	_, err := c.Do(ctx, "POST", "/v1/nodes", req, &out)
	return &out, err
}

// UpdateNode patches a node.
func (c *Client) UpdateNode(ctx context.Context, id string, p proto.NodePatch) (*proto.Node, error) {
	var out proto.Node
	_, err := c.Do(ctx, "PATCH", "/v1/nodes/"+esc(id), p, &out)
	return &out, err
}

// DeleteNode deletes a node.
func (c *Client) DeleteNode(ctx context.Context, id string) error {
	_, err := c.Do(ctx, "DELETE", "/v1/nodes/"+esc(id), nil, nil)
	return err
}

// SetEnrolled enrolls or unenrolls a node.
func (c *Client) SetEnrolled(ctx context.Context, id string, enrolled bool) (*proto.Node, error) {
	var out proto.Node
	_, err := c.Do(ctx, "PUT", "/v1/nodes/"+esc(id)+"/enrolled", proto.EnrolledRequest{Enrolled: enrolled}, &out)
	return &out, err
}

// SetMaintenance sets or clears a node's maintenance flag.
func (c *Client) SetMaintenance(ctx context.Context, id string, on bool, reason string) (*proto.Node, error) {
	var out proto.Node
	_, err := c.Do(ctx, "PUT", "/v1/nodes/"+esc(id)+"/maintenance", proto.MaintenanceRequest{Maintenance: on, Reason: reason}, &out)
	return &out, err
}

// Provision asks for a state transition.
func (c *Client) Provision(ctx context.Context, id string, target proto.Event) (*proto.Node, error) {
	var out proto.Node
	_, err := c.Do(ctx, "POST", "/v1/nodes/"+esc(id)+"/provision", proto.ProvisionRequest{Target: target}, &out)
	return &out, err
}

// Status returns the server's and cluster's status.
func (c *Client) Status(ctx context.Context) (*proto.Status, error) {
	var out proto.Status
	_, err := c.Do(ctx, "GET", "/v1/status", nil, &out)
	return &out, err
}

// RemovePeer removes a server from the cluster's Raft configuration.
func (c *Client) RemovePeer(ctx context.Context, id string) error {
	_, err := c.Do(ctx, "DELETE", "/v1/cluster/peers/"+esc(id), nil, nil)
	return err
}

// Racks lists every rack, by name.
func (c *Client) Racks(ctx context.Context) ([]*proto.Rack, error) {
	var out []*proto.Rack
	_, err := c.Do(ctx, "GET", "/v1/racks", nil, &out)
	return out, err
}

// Rack gets a rack by name.
func (c *Client) Rack(ctx context.Context, name string) (*proto.Rack, error) {
	var out proto.Rack
	_, err := c.Do(ctx, "GET", "/v1/racks/"+esc(name), nil, &out)
	return &out, err
}

// CreateRack creates a rack; it fails if one of that name exists.
func (c *Client) CreateRack(ctx context.Context, r proto.Rack) (*proto.Rack, error) {
	var out proto.Rack
	_, err := c.Do(ctx, "POST", "/v1/racks", r, &out)
	return &out, err
}

// UpdateRack replaces the rack named r.Name; it fails if there is none.
func (c *Client) UpdateRack(ctx context.Context, r proto.Rack) (*proto.Rack, error) {
	var out proto.Rack
	_, err := c.Do(ctx, "PUT", "/v1/racks/"+esc(r.Name), r, &out)
	return &out, err
}

// DeleteRack deletes a rack no node or flavor uses.
func (c *Client) DeleteRack(ctx context.Context, name string) error {
	_, err := c.Do(ctx, "DELETE", "/v1/racks/"+esc(name), nil, nil)
	return err
}

// Flavors lists every flavor, by name.
func (c *Client) Flavors(ctx context.Context) ([]*proto.Flavor, error) {
	var out []*proto.Flavor
	_, err := c.Do(ctx, "GET", "/v1/flavors", nil, &out)
	return out, err
}

// Flavor gets a flavor by name.
func (c *Client) Flavor(ctx context.Context, name string) (*proto.Flavor, error) {
	var out proto.Flavor
	_, err := c.Do(ctx, "GET", "/v1/flavors/"+esc(name), nil, &out)
	return &out, err
}

// CreateFlavor creates a flavor; it fails if one of that name exists.
func (c *Client) CreateFlavor(ctx context.Context, f proto.Flavor) (*proto.Flavor, error) {
	var out proto.Flavor
	_, err := c.Do(ctx, "POST", "/v1/flavors", f, &out)
	return &out, err
}

// UpdateFlavor replaces the flavor named f.Name; it fails if there is none.
func (c *Client) UpdateFlavor(ctx context.Context, f proto.Flavor) (*proto.Flavor, error) {
	var out proto.Flavor
	_, err := c.Do(ctx, "PUT", "/v1/flavors/"+esc(f.Name), f, &out)
	return &out, err
}

// DeleteFlavor deletes a flavor no instance uses.
func (c *Client) DeleteFlavor(ctx context.Context, name string) error {
	_, err := c.Do(ctx, "DELETE", "/v1/flavors/"+esc(name), nil, nil)
	return err
}

// Images lists every image, by name.
func (c *Client) Images(ctx context.Context) ([]*proto.Image, error) {
	var out []*proto.Image
	_, err := c.Do(ctx, "GET", "/v1/images", nil, &out)
	return out, err
}

// Image gets an image by name.
func (c *Client) Image(ctx context.Context, name string) (*proto.Image, error) {
	var out proto.Image
	_, err := c.Do(ctx, "GET", "/v1/images/"+esc(name), nil, &out)
	return &out, err
}

// CreateImage creates an image; it fails if one of that name exists.
func (c *Client) CreateImage(ctx context.Context, im proto.Image) (*proto.Image, error) {
	var out proto.Image
	_, err := c.Do(ctx, "POST", "/v1/images", im, &out)
	return &out, err
}

// UpdateImage replaces the image named im.Name; it fails if there is none.
func (c *Client) UpdateImage(ctx context.Context, im proto.Image) (*proto.Image, error) {
	var out proto.Image
	_, err := c.Do(ctx, "PUT", "/v1/images/"+esc(im.Name), im, &out)
	return &out, err
}

// DeleteImage deletes an image nothing refers to.
func (c *Client) DeleteImage(ctx context.Context, name string) error {
	_, err := c.Do(ctx, "DELETE", "/v1/images/"+esc(name), nil, nil)
	return err
}

// Instances lists instances, by name: those on node (uuid, name or MAC),
// or every one if node is empty.
func (c *Client) Instances(ctx context.Context, node string) ([]*proto.Instance, error) {
	q := &Query{}
	if node != "" {
		q.Values = url.Values{"node": {node}}
	}
	var out []*proto.Instance
	_, err := c.Do(ctx, "GET", "/v1/instances"+q.encode(), nil, &out)
	return out, err
}

// Instance gets an instance by uuid or name.
func (c *Client) Instance(ctx context.Context, id string) (*proto.Instance, error) {
	var out proto.Instance
	_, err := c.Do(ctx, "GET", "/v1/instances/"+esc(id), nil, &out)
	return &out, err
}

// Settings returns the fleet settings and whether discovery is active.
func (c *Client) Settings(ctx context.Context) (*proto.SettingsView, error) {
	var out proto.SettingsView
	_, err := c.Do(ctx, "GET", "/v1/settings", nil, &out)
	return &out, err
}

// UpdateSettings changes the settings p names and returns them all.
func (c *Client) UpdateSettings(ctx context.Context, p proto.SettingsPatch) (*proto.SettingsView, error) {
	var out proto.SettingsView
	_, err := c.Do(ctx, "PATCH", "/v1/settings", p, &out)
	return &out, err
}

// Tokens lists every token, without secrets (admin only).
func (c *Client) Tokens(ctx context.Context) ([]*proto.Token, error) {
	var out []*proto.Token
	_, err := c.Do(ctx, "GET", "/v1/tokens", nil, &out)
	return out, err
}

// CreateToken creates a token; the answer holds its secret, which is never
// returned again (admin only).
func (c *Client) CreateToken(ctx context.Context, req proto.TokenCreate) (*proto.TokenCreated, error) {
	var out proto.TokenCreated
	_, err := c.Do(ctx, "POST", "/v1/tokens", req, &out)
	return &out, err
}

// RevokeToken deletes a token (admin only).
func (c *Client) RevokeToken(ctx context.Context, id string) error {
	_, err := c.Do(ctx, "DELETE", "/v1/tokens/"+esc(id), nil, nil)
	return err
}

// NextHeader carries the marker of a list's next page.
const NextHeader = proto.NextHeader

// DefaultPageSize is how many items Pages asks for at a time.
const DefaultPageSize = 1000

// Page reads one page of the list at path (with the filters in q): at
// most limit items (every one if limit is 0) after the marker after (""
// for the first page). next is the marker of the following page, "" on
// the last.
func Page[T any](ctx context.Context, c *Client, path string, q url.Values, after string, limit int) (items []T, next string, err error) {
	v := url.Values{}
	for k, vs := range q {
		v[k] = vs
	}
	if limit > 0 {
		v.Set("limit", strconv.Itoa(limit))
	}
	if after != "" {
		v.Set("after", after)
	}
	if len(v) > 0 {
		path += "?" + v.Encode()
	}
	_, hdr, err := c.DoHeader(ctx, "GET", path, nil, &items)
	if err != nil {
		return nil, "", err
	}
	return items, hdr.Get(NextHeader), nil
}

// Pages reads the list at path page by page, pageSize items at a time
// (DefaultPageSize if 0), until the last page or until it holds max items
// (every item if max is 0).
func Pages[T any](ctx context.Context, c *Client, path string, q url.Values, pageSize, max int) ([]T, error) {
	if max < 0 {
		return nil, fmt.Errorf("--limit %d: want a positive number (0: every one)", max)
	}
	if pageSize <= 0 {
		pageSize = DefaultPageSize
	}
	out := []T{}
	after := ""
	for {
		n := pageSize
		if max > 0 && max-len(out) < n {
			n = max - len(out)
		}
		items, next, err := Page[T](ctx, c, path, q, after, n)
		if err != nil {
			return out, err
		}
		out = append(out, items...)
		if next == "" || max > 0 && len(out) >= max {
			return out, nil
		}
		if next == after {
			return out, fmt.Errorf("GET %s: the server answered the same page marker twice", path)
		}
		after = next
	}
}
