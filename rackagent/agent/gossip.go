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

func (s gossipSplit) Mine(mac net.HardwareAddr) bool {
	alive := s.g.Alive(gossip.RoleAgent, s.rack)
	if len(alive) <= 1 {
		return true
	}
	h := fnv.New32a()
	h.Write(mac)
	return alive[h.Sum32()%uint32(len(alive))] == s.self
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
