package httpapi

import (
	"context"
	"hash/fnv"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/metalfleet/metalfleet/coordinator/fsm"
	"github.com/metalfleet/metalfleet/proto"
)

// Out-of-band control: power and boot-device intents, BMC verification
// on manage, and the node history.

// rackAgent picks the rack agent that executes node's intents, among the
// agents of rack that called this server (the leader: agents' boot-state
// polls are forwarded to it) lately: the one of highest rendezvous hash of node and agent name, so a node's
// intents go to one agent while the rack's agents stay the same (two
// agents never drive one BMC at once; the agents also wait for a lower
// generation held by another agent). "" if none called.
func (a *API) rackAgent(rack, node string) string {
	// Agents poll their boot state at least every minute: one not heard
	// of within AgentAlive, or that gossip says is dead or gone, is not
	// given intents.
	horizon := a.cfg.Now().Add(-a.cfg.AgentAlive)
	gone := map[string]bool{}
	if l, ok := a.b.(AgentLister); ok {
		for _, ag := range l.Agents() {
			if ag.Rack == rack && (ag.Status == "dead" || ag.Status == "left") {
				gone[ag.Name] = true
			}
		}
	}
	best, bestScore := "", uint64(0)
	for _, ct := range a.contacts.all() {
		if ct.rack != rack || !ct.last.After(horizon) || gone[ct.name] {
			continue
		}
		if sc := rendezvous(node, ct.name); best == "" || sc > bestScore || sc == bestScore && ct.name < best {
			best, bestScore = ct.name, sc
		}
	}
	return best
}

// rendezvous is the hash that ranks agent for node.
func rendezvous(node, agent string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(node + "\x00" + agent))
	return h.Sum64()
}

// requireAgent returns the agent for rack, or a 503 saying none is heard of.
func (a *API) requireAgent(rack, node string) (string, error) {
	if rack == "" {
		return "", nil // the FSM refuses it, naming the node
	}
	if ag := a.rackAgent(rack, node); ag != "" {
		return ag, nil
	}
	return "", proto.Errorf(proto.CodeUnavailable, "no rack agent of rack %s has called the coordinator lately, so none can act on the BMC; is one running?", rack)
}

// who names the caller in intents and history: its token's id, with its
// description when it has one ("admin-bootstrap (created by --bootstrap)").
func (c *call) who() string {
	if c.token == nil {
		return ""
	}
	if c.token.Description != "" {
		return c.token.ID + " (" + c.token.Description + ")"
	}
	return c.token.ID
}

// makeIntent records an intent on node id and, with ?wait=, waits for
// its result.
func (a *API) makeIntent(c *call, in proto.Intent) (any, error) {
	id := c.r.PathValue("id")
	n, ok := a.b.Store().Node(id)
	if !ok {
		return nil, proto.Errorf(proto.CodeNotFound, "node %q not found", id)
	}
	wait, err := waitParam(c)
	if err != nil {
		return nil, err
	}
	if err := fsm.CanDriveBMC(n); err != nil {
		return nil, err
	}
	if in.Agent, err = a.requireAgent(n.Rack, n.UUID); err != nil {
		return nil, err
	}
	in.By, in.At = c.who(), a.cfg.Now()
	v, err := c.apply(fsm.NodeIntent{Ref: id, Intent: in})
	if err != nil {
		return nil, err
	}
	n = v.(*proto.Node)
	got := latestIntent(n, in.Action)
	c.status = http.StatusAccepted
	if wait > 0 {
		if done, node, ok := a.waitIntent(c.r.Context(), n.UUID, got.Generation, wait); ok {
			got, n = done, node
			c.status = http.StatusOK
		}
	}
	if in.Action == proto.ActionVerify {
		return n.Redacted(), nil
	}
	return proto.IntentAccepted{Node: n.UUID, Intent: got}, nil
}

func latestIntent(n *proto.Node, act proto.BMCAction) proto.Intent {
	for _, in := range n.Intents {
		if in.Action == act {
			return in
		}
	}
	return proto.Intent{}
}

// waitParam reads ?wait= (a duration, capped at MaxWait).
func waitParam(c *call) (time.Duration, error) {
	s := c.r.URL.Query().Get("wait")
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, proto.Errorf(proto.CodeInvalid, "wait %q: want a duration such as 30s", s)
	}
	return min(d, c.a.cfg.MaxWait), nil
}

// waitIntent waits until node uuid's intent gen is done (or gone, or the
// wait ends) and returns it with the node.
func (a *API) waitIntent(ctx context.Context, uuid string, gen uint64, wait time.Duration) (proto.Intent, *proto.Node, bool) {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	st := a.b.Store()
	for {
		idx := st.Index()
		n, ok := st.Node(uuid)
		if !ok {
			return proto.Intent{}, nil, false
		}
		i := slices.IndexFunc(n.Intents, func(x proto.Intent) bool { return x.Generation == gen })
		if i < 0 {
			return proto.Intent{}, nil, false // replaced by a newer intent
		}
		if n.Intents[i].Done {
			return n.Intents[i], n, true
		}
		if ctx.Err() != nil {
			return proto.Intent{}, nil, false
		}
		st.Wait(ctx, idx)
	}
}

func (a *API) setPower(c *call) (any, error) {
	var req proto.PowerRequest
	if err := c.decode(&req); err != nil {
		return nil, err
	}
	if !req.Target.Valid() {
		return nil, proto.Errorf(proto.CodeInvalid, "target %q: want on, off, soft-off or reboot", req.Target)
	}
	if err := checkRequestID(req.RequestID); err != nil {
		return nil, err
	}
	return a.makeIntent(c, proto.Intent{Action: proto.ActionPower, Power: req.Target, Request: req.RequestID})
}

func (a *API) setBootDevice(c *call) (any, error) {
	var req proto.BootDeviceRequest
	if err := c.decode(&req); err != nil {
		return nil, err
	}
	if err := req.Check(); err != nil {
		return nil, err
	}
	if err := checkRequestID(req.RequestID); err != nil {
		return nil, err
	}
	spec := req.BootDeviceSpec
	return a.makeIntent(c, proto.Intent{Action: proto.ActionBootDevice, Boot: &spec, Request: req.RequestID})
}

func (a *API) nodeHistory(c *call) (any, error) {
	id := c.r.PathValue("id")
	n, ok := a.b.Store().Node(id)
	if !ok {
		return nil, proto.Errorf(proto.CodeNotFound, "node %q not found", id)
	}
	h := a.b.Store().History(n.UUID)
	if h == nil {
		h = []proto.HistoryEvent{}
	}
	return h, nil
}

func checkRequestID(s string) error {
	if len(s) > 64 || strings.ContainsFunc(s, func(r rune) bool { return r <= ' ' || r > '~' }) {
		return proto.Errorf(proto.CodeInvalid, "request_id: at most 64 printable ASCII characters")
	}
	return nil
}
