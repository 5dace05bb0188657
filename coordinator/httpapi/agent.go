package httpapi

import (
	"context"
	"sort"
	"sync"
	"time"

	"github.com/metalfleet/metalfleet/coordinator/fsm"
	"github.com/metalfleet/metalfleet/proto"
)

// Routes for rack agents: their rack's boot state (blocking on the rack's
// own index), and reports. An agent token reaches only its own rack.

// MaxReportBatch bounds the reports in one POST /v1/agent/reports.
const MaxReportBatch = 1000

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

// contacts remembers when each agent last called, for GET /v1/agents.
type contacts struct {
	mu   sync.Mutex
	last map[string]time.Time
}

func (k *contacts) touch(agent string, t time.Time) {
	if agent == "" {
		return
	}
	k.mu.Lock()
	if k.last == nil {
		k.last = map[string]time.Time{}
	}
	k.last[agent] = t
	k.mu.Unlock()
}

func (k *contacts) get(agent string) time.Time {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.last[agent]
}

// AgentHeader names the calling agent (for last-contact times).
const AgentHeader = "X-Metalfleet-Agent"

func (a *API) bootState(c *call) (any, error) {
	rack, err := c.agentRack()
	if err != nil {
		return nil, err
	}
	a.contacts.touch(c.r.Header.Get(AgentHeader), a.cfg.Now())
	st := a.b.Store()
	wait := func(ctx context.Context, min uint64) uint64 { return st.WaitBoot(ctx, rack, min) }
	index := func() uint64 { return st.BootIndex(rack) }
	if err := c.blockOn(isStale(c.r), wait, index); err != nil {
		return nil, err
	}
	var out proto.RackBootState
	gone := false
	out.Index = st.ReadRack(rack, func(r *proto.Rack, nodes []*proto.Node, leases []*proto.Lease, s proto.Settings, images map[string]*proto.Image) {
		if r == nil { // deleted while we waited
			gone = true
			return
		}
		out.Rack = *r
		out.Discovery = proto.BootConfig{Kind: proto.BootDiscovery, Kernel: artifact(images[s.DiscoveryKernel]), Initrd: artifact(images[s.DiscoveryRamdisk]),
			Cmdline: s.DiscoveryCmdline, Task: "discovery"}
		out.DiscoveryEnabled = s.DiscoveryEnabled && out.Discovery.Kernel != nil && out.Discovery.Initrd != nil
		out.Nodes = make([]proto.BootNode, 0, len(nodes))
		for _, n := range nodes {
			bn := proto.BootNode{UUID: n.UUID, Name: n.Name, MACs: append([]string(nil), n.MACs...), IP: n.IP}
			bn.Boot = bootConfig(n, out.Discovery, out.DiscoveryEnabled)
			out.Nodes = append(out.Nodes, bn)
		}
		// Every lease, the asking agent's own included: an agent that
		// lost its data directory learns from them what it may not offer.
		out.Leases = make([]proto.Lease, 0, len(leases))
		for _, l := range leases {
			out.Leases = append(out.Leases, *l)
		}
	})
	if gone {
		return nil, proto.Errorf(proto.CodeNotFound, "rack %q not found (deleted)", rack)
	}
	c.index = out.Index
	return out, nil
}

// bootConfig is what a node boots in its present state. Discovered nodes
// boot the discovery image while discovery is on; every other node its
// local disk until a task (later: inspection, deploy, rescue) gives it a
// ramdisk.
func bootConfig(n *proto.Node, discovery proto.BootConfig, discoveryOn bool) proto.BootConfig {
	if !n.Enrolled && discoveryOn {
		return discovery
	}
	return proto.BootConfig{Kind: proto.BootLocalDisk}
}

func artifact(im *proto.Image) *proto.Artifact {
	if im == nil {
		return nil
	}
	return &proto.Artifact{Name: im.Name, URL: im.URL, SHA256: im.SHA256, Size: im.Size}
}

func (a *API) agentReports(c *call) (any, error) {
	rack, err := c.agentRack()
	if err != nil {
		return nil, err
	}
	var b proto.ReportBatch
	if err := c.decode(&b); err != nil {
		return nil, err
	}
	if len(b.Reports) > MaxReportBatch {
		return nil, proto.Errorf(proto.CodeTooLarge, "reports: %d in one batch, at most %d", len(b.Reports), MaxReportBatch)
	}
	ack := proto.ReportAck{Acked: []string{}, Rejected: map[string]string{}}
	valid := make([]proto.AgentReport, 0, len(b.Reports))
	for i, r := range b.Reports {
		switch {
		case r.ID == "":
			return nil, proto.Errorf(proto.CodeInvalid, "reports[%d]: id is required", i)
		case r.Rack != rack:
			ack.Rejected[r.ID] = "report for rack " + r.Rack + " sent as rack " + rack
		case r.Time.IsZero():
			ack.Rejected[r.ID] = "report without a time"
		default:
			valid = append(valid, r)
		}
		a.contacts.touch(r.Agent, a.cfg.Now())
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

func (a *API) sightings(c *call) (any, error) {
	return a.b.Store().Sightings(c.r.URL.Query().Get("rack")), nil
}

// AgentLister lists the rack agents gossip knows of. A Backend may
// implement it; without it GET /v1/agents lists none.
type AgentLister interface {
	Agents() []proto.AgentInfo
}

func (a *API) agents(c *call) (any, error) {
	out := []proto.AgentInfo{}
	if l, ok := a.b.(AgentLister); ok {
		out = append(out, l.Agents()...)
	}
	rack := c.r.URL.Query().Get("rack")
	kept := out[:0]
	for _, ag := range out {
		if rack != "" && ag.Rack != rack {
			continue
		}
		if t := a.contacts.get(ag.Name); t.After(ag.LastContact) {
			ag.LastContact = t
		}
		kept = append(kept, ag)
	}
	sort.Slice(kept, func(i, j int) bool { return kept[i].Name < kept[j].Name })
	return kept, nil
}
