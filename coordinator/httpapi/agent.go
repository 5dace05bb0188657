package httpapi

import (
	"bytes"
	"container/list"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/netip"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/metalfleet/metalfleet/coordinator/decide"
	"github.com/metalfleet/metalfleet/coordinator/fsm"
	"github.com/metalfleet/metalfleet/coordinator/state"
	"github.com/metalfleet/metalfleet/proto"
)

// Routes for rack agents: their rack's boot state (blocking on the rack's
// own index), and reports. An agent token reaches only its own rack.

// MaxReportBatch bounds the reports in one POST /v1/agent/reports.
const MaxReportBatch = proto.MaxReportBatch

// agentRack returns the rack an agent call is about: the ?rack= of the
// request, which an agent token must be bound to.
func (c *call) agentRack() (string, error) {
	rack := c.r.URL.Query().Get("rack")
	if rack == "" && c.token != nil && c.token.Role == proto.RoleAgent {
		rack = c.token.Rack
	}
	if rack == "" {
		return "", proto.Errorf(proto.CodeInvalid, "rack: say which rack (?rack=NAME)")
	}
	if c.token != nil && c.token.Role == proto.RoleAgent && c.token.Rack != rack {
		return "", proto.Errorf(proto.CodeForbidden, "this agent token is bound to rack %s, not %s", c.token.Rack, rack)
	}
	if _, ok := c.a.b.Store().Rack(rack); !ok {
		return "", proto.Errorf(proto.CodeNotFound, "rack %q not found", rack)
	}
	return rack, nil
}

// MaxContacts bounds the agents whose last contact a server remembers;
// past it the one heard of longest ago is forgotten. MaxContactsPerRack
// bounds one rack's (its agent token names them).
const (
	MaxContacts        = 4096
	MaxContactsPerRack = 64
)

// contact is what a server remembers of an agent's API calls.
type contact struct {
	name, rack, mgmt string
	last             time.Time
}

// contacts remembers when each agent last called (and from which rack,
// with which management address), for GET /v1/agents. An agent is keyed
// by its rack (the one its token is bound to) and name, so an agent of
// one rack cannot overwrite another rack's agent of the same name (its
// management address above all). It holds at most max entries, evicting
// the least recently heard of; only names that passed
// proto.CheckAgentName are kept.
type contacts struct {
	mu    sync.Mutex
	max   int
	order *list.List // of *contact, most recent first
	byKey map[string]*list.Element
}

func (k *contacts) touch(name, rack, mgmt string, t time.Time) {
	if proto.CheckAgentName("agent", name) != nil {
		return
	}
	if mgmt != "" && proto.CheckHostPort("mgmt", mgmt) != nil {
		mgmt = ""
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.byKey == nil {
		k.byKey, k.order = map[string]*list.Element{}, list.New()
	}
	if k.max <= 0 {
		k.max = MaxContacts
	}
	key := rack + "/" + name
	if e, ok := k.byKey[key]; ok {
		ct := e.Value.(*contact)
		ct.last = t
		if mgmt != "" {
			ct.mgmt = mgmt
		}
		k.order.MoveToFront(e)
		return
	}
	// One rack's token cannot push other racks' agents out: a rack
	// holds at most MaxContactsPerRack, its own least recent going first.
	inRack := 0
	var oldestInRack *list.Element
	for e := k.order.Back(); e != nil; e = e.Prev() {
		if e.Value.(*contact).rack == rack {
			inRack++
			if oldestInRack == nil {
				oldestInRack = e
			}
		}
	}
	if inRack >= MaxContactsPerRack {
		k.remove(oldestInRack)
	}
	for k.order.Len() >= k.max {
		k.remove(k.order.Back())
	}
	k.byKey[key] = k.order.PushFront(&contact{name: name, rack: rack, mgmt: mgmt, last: t})
}

func (k *contacts) remove(e *list.Element) {
	k.order.Remove(e)
	c := e.Value.(*contact)
	delete(k.byKey, c.rack+"/"+c.name)
}

// all returns copies of every contact.
func (k *contacts) all() []contact {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make([]contact, 0, len(k.byKey))
	if k.order == nil {
		return out
	}
	for e := k.order.Front(); e != nil; e = e.Next() {
		out = append(out, *e.Value.(*contact))
	}
	return out
}

func (k *contacts) len() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.byKey)
}

// reachableMgmt is the management address an agent's call names, unless
// it is a loopback address named by a call from another host (an agent
// left on the default --mgmt-addr 127.0.0.1:7492 on a host of its own):
// this server could not reach it there, and would reach whatever listens
// on its own loopback instead. Such an agent is listed without a
// management address, and consoles through it answer 503 saying so.
func reachableMgmt(r *http.Request) string {
	mgmt := r.Header.Get(proto.AgentMgmtHeader)
	host, _, err := net.SplitHostPort(mgmt)
	if err != nil {
		return mgmt // touch drops what is not HOST:PORT
	}
	loop := host == "localhost"
	if ip, err := netip.ParseAddr(host); err == nil {
		loop = ip.Unmap().IsLoopback()
	}
	if !loop {
		return mgmt
	}
	from, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return ""
	}
	if fip, err := netip.ParseAddr(from); err == nil && fip.Unmap().IsLoopback() {
		return mgmt
	}
	return ""
}

// AgentHeader names the calling agent (for last-contact times).
const AgentHeader = "X-Metalfleet-Agent"

func (a *API) bootState(c *call) (any, error) {
	rack, err := c.agentRack()
	if err != nil {
		return nil, err
	}
	a.contacts.touch(c.r.Header.Get(AgentHeader), rack, reachableMgmt(c.r), a.cfg.Now())
	st := a.b.Store()
	wait := func(ctx context.Context, min uint64) uint64 { return st.WaitBoot(ctx, rack, min) }
	index := func() uint64 { return st.BootIndex(rack) }
	if err := c.blockOn(isStale(c.r), wait, index); err != nil {
		return nil, err
	}
	var out proto.RackBootState
	gone := false
	idx := st.ReadRack(rack, func(v state.RackView) {
		if v.Rack == nil { // deleted while we waited
			gone = true
			return
		}
		out = decide.RackBootState(decide.RackInput(v))
	})
	if gone {
		return nil, proto.Errorf(proto.CodeNotFound, "rack %q not found (deleted)", rack)
	}
	out.Index = idx
	c.index = out.Index
	if c.token == nil || c.token.Role != proto.RoleAgent {
		// BMC credentials and task tokens go to the rack's agents only,
		// not to an admin reading the boot state.
		for i := range out.Nodes {
			if out.Nodes[i].Boot.TaskToken != "" {
				out.Nodes[i].Boot.TaskToken = "(redacted)"
			}
			if b := out.Nodes[i].BMC; b != nil {
				b.PasswordSet, b.Password = b.Password != "", ""
			}
		}
	}
	return out, nil
}

// rawBatch is a ReportBatch read one report at a time, so each report's
// size is known and checked before it is decoded.
type rawBatch struct {
	Reports []json.RawMessage `json:"reports"`
}

// agentReports takes a batch of reports. A batch that cannot be read as a
// whole (not JSON, over the body limit, over MaxReportBatch, a report over
// proto.MaxReportBytes, a report without a usable id) is refused with a
// 400 or 413 naming the report and field. A report whose content is
// refused (over a limit, a missing field, another rack) is answered in
// the ack's Rejected, naming the field, so one bad report does not hold
// up the agent's queue. Nothing refused reaches the Raft log.
func (a *API) agentReports(c *call) (any, error) {
	rack, err := c.agentRack()
	if err != nil {
		return nil, err
	}
	var raw rawBatch
	if err := c.decodeBody(&raw, false); err != nil {
		return nil, err
	}
	if len(raw.Reports) > MaxReportBatch {
		return nil, proto.Errorf(proto.CodeTooLarge, "reports: %d in one batch, at most %d", len(raw.Reports), MaxReportBatch)
	}
	ack := proto.ReportAck{Acked: []string{}, Rejected: map[string]string{}}
	valid := make([]proto.AgentReport, 0, len(raw.Reports))
	now := a.cfg.Now()
	caller, mgmt := c.r.Header.Get(AgentHeader), reachableMgmt(c.r)
	for i, rr := range raw.Reports {
		field := "reports[" + strconv.Itoa(i) + "]"
		if len(rr) > proto.MaxReportBytes {
			return nil, proto.Errorf(proto.CodeTooLarge, "%s: %d bytes, at most %d", field, len(rr), proto.MaxReportBytes)
		}
		// Unknown fields are ignored: a newer agent's report must not
		// be refused (and dropped by the agent) for a field this
		// coordinator does not know yet.
		var r proto.AgentReport
		if err := decodeLenient(rr, &r); err != nil {
			return nil, proto.Errorf(proto.CodeOf(err), "%s: %s", field, err.Error())
		}
		if r.ID == "" {
			return nil, proto.Errorf(proto.CodeInvalid, "%s: id is required", field)
		}
		if legacyReport(r, rack) {
			// A sound report of an agent from before reports were
			// numbered: answered with a retryable 503, never a
			// rejection (the agent would drop its reports, leases
			// included); they stay queued until the agent is upgraded.
			c.w.Header().Set("Retry-After", "30")
			return nil, proto.Errorf(proto.CodeUnavailable, "%s: %s", field, LegacyReportMessage)
		}
		if err := proto.CheckReportID(r.ID); err != nil {
			// A report the ack cannot name: the batch is refused.
			return nil, proto.Errorf(proto.CodeOf(err), "%s.%s", field, err.Error())
		}
		if err := r.Validate(); err != nil {
			ack.Rejected[r.ID] = field + "." + err.Error()
			continue
		}
		if r.Rack != rack {
			ack.Rejected[r.ID] = "report for rack " + r.Rack + " sent as rack " + rack
			continue
		}
		valid = append(valid, r)
		if caller == "" {
			// A name from a report body: no management address (that
			// comes only with the caller's own header).
			a.contacts.touch(r.Agent, rack, "", now)
		}
	}
	if caller != "" {
		a.contacts.touch(caller, rack, mgmt, now)
	}
	if len(valid) > 0 {
		v, err := c.apply(fsm.AgentReports{Rack: rack, Reports: valid})
		if err != nil {
			return nil, err
		}
		res := v.(*fsm.AgentReportsResult)
		ack.Acked = append(ack.Acked, res.Acked...)
		for id, why := range res.Rejected {
			ack.Rejected[id] = why
		}
	}
	if c.index == 0 {
		c.index = a.b.Store().Index()
	}
	ack.Index = c.index
	return ack, nil
}

// LegacyReportMessage answers a batch from a rack agent older than this
// coordinator.
const LegacyReportMessage = "a report without incarnation and seq, from a rack agent older than this coordinator: upgrade the agent; its reports stay queued"

// legacyReport reports whether r is a report an older agent would send:
// sound in every way but lacking incarnation and seq.
func legacyReport(r proto.AgentReport, rack string) bool {
	if r.Incarnation != "" || r.Seq != 0 || r.Rack != rack {
		return false
	}
	r.Incarnation, r.Seq = "legacy", 1
	return r.Validate() == nil
}

// decodeLenient decodes one JSON value, ignoring unknown fields, with
// errors that name the field.
func decodeLenient(b []byte, v any) error {
	if err := json.NewDecoder(bytes.NewReader(b)).Decode(v); err != nil {
		return bodyError(err, 0)
	}
	return nil
}

func (a *API) sightings(c *call) (any, error) {
	return page(c, a.b.Store().Sightings(c.r.URL.Query().Get("rack")), func(s *proto.Sighting) string { return s.MAC })
}

// AgentLister lists the rack agents gossip knows of. A Backend may
// implement it; without it GET /v1/agents lists the agents known from
// their API calls only.
type AgentLister interface {
	Agents() []proto.AgentInfo
}

// Agent statuses of agents known only from their API calls.
const (
	AgentAlive   = "alive"   // called within Config.AgentAlive
	AgentUnknown = "unknown" // not heard of since
)

// agents lists the agents gossip knows of and those that called this
// server's API (gossip may be off), merged by rack and name: for a gossip
// member the later contact and the management address are added.
func (a *API) agents(c *call) (any, error) {
	byName := map[string]*proto.AgentInfo{}
	if l, ok := a.b.(AgentLister); ok {
		for _, ag := range l.Agents() {
			ag := ag
			ag.Source = "gossip"
			byName[ag.Rack+"/"+ag.Name] = &ag
		}
	}
	now := a.cfg.Now()
	for _, ct := range a.contacts.all() {
		ag, ok := byName[ct.rack+"/"+ct.name]
		if !ok {
			status := AgentAlive
			if now.Sub(ct.last) > a.cfg.AgentAlive {
				status = AgentUnknown
			}
			byName[ct.rack+"/"+ct.name] = &proto.AgentInfo{Name: ct.name, Rack: ct.rack, Status: status,
				LastContact: ct.last, MgmtAddr: ct.mgmt, Source: "api"}
			continue
		}
		if ct.last.After(ag.LastContact) {
			ag.LastContact = ct.last
		}
		if ct.mgmt != "" {
			ag.MgmtAddr = ct.mgmt
		}
	}
	rack := c.r.URL.Query().Get("rack")
	out := make([]proto.AgentInfo, 0, len(byName))
	for _, ag := range byName {
		if rack != "" && ag.Rack != rack {
			continue
		}
		out = append(out, *ag)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].Rack < out[j].Rack
	})
	return out, nil
}
