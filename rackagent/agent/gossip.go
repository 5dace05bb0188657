package agent

import (
	"context"
	"hash/fnv"
	"net"
	"slices"

	"github.com/metalfleet/metalfleet/cluster/gossip"
)

// gossipSplit answers an unknown MAC when the hash of the MAC picks this
// agent among the rack's agents that gossip says are alive (RFC 3074 in
// spirit: a stable hash of the client's hardware address decides the
// server). When its peer is declared dead, the survivor answers all MACs.
type gossipSplit struct {
	g    *gossip.Gossip
	self string
	rack string
}

func (s gossipSplit) Mine(mac net.HardwareAddr) bool { return gossipMine(s.g, s.rack, s.self, mac) }

// gossipMine reports whether a stable hash of key picks self among rack's
// agents that g says are alive; true when self is the only one (or none
// is known).
func gossipMine(g *gossip.Gossip, rack, self string, key []byte) bool {
	alive := g.Alive(gossip.RoleAgent, rack)
	if len(alive) <= 1 {
		return true
	}
	h := fnv.New32a()
	h.Write(key)
	return alive[h.Sum32()%uint32(len(alive))] == self
}

// followCoordinators adds the coordinators gossip knows of to the API
// client's addresses (after the configured ones), so an agent given one
// reachable member finds them all.
func (a *Agent) followCoordinators(ctx context.Context) error {
	for {
		ch := a.gossip.Changed()
		addrs := slices.Clone(a.cfg.Coordinators)
		for _, m := range a.gossip.Coordinators() {
			if m.Meta.API != "" && !slices.Contains(addrs, m.Meta.API) {
				addrs = append(addrs, m.Meta.API)
			}
		}
		if !slices.Equal(addrs, a.client.Addrs()) {
			a.client.SetAddrs(addrs)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ch:
		}
	}
}
