package gossip

import (
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
)

// Member states as Member.State reports them.
const (
	StateAlive = "alive"
	// StateSuspect is never reported with memberlist v0.7.0: it keeps
	// suspicion in an unexported field and sends no event for it (see
	// events), so a suspect member reads "alive" until it is declared dead.
	StateSuspect = "suspect"
	StateDead    = "dead"
	StateLeft    = "left"
)

// Member is one member as this process sees it.
type Member struct {
	Name string
	// Addr is the member's gossip address, host:port.
	Addr  string
	Meta  Meta
	State string
	// LastChange is when this process saw State change.
	LastChange time.Time
}

// aliveKey indexes snapshot.alive: {role, ""} lists the whole role.
type aliveKey struct{ role, rack string }

// snapshot is an immutable view rebuilt on every membership event, so
// the per-packet reads (Alive) cost one atomic load and one map lookup.
type snapshot struct {
	members      []Member // all remembered members, by name
	alive        map[aliveKey][]string
	numAlive     int // including self
	othersAlive  int
	coordinators []Member // alive coordinators, by name
	leaderAPI    string
}

// events is memberlist's EventDelegate. memberlist calls it with its node
// lock held, one call at a time; it must not call back into memberlist.
//
// memberlist v0.7.0 never sets Node.State (its nodeState.State field
// shadows the embedded Node.State), so the Node handed to NotifyLeave
// says StateAlive whether the node died or left, and Members() cannot
// tell alive from suspect. The state is therefore tracked here from the
// events, and a leave is told from a failure by the leave intent a
// leaving member broadcasts first (see Gossip.Leave and handleMsg).
type events struct{ g *Gossip }

func (e events) NotifyJoin(n *memberlist.Node)   { e.g.observe(n, StateAlive) }
func (e events) NotifyUpdate(n *memberlist.Node) { e.g.observe(n, "") }
func (e events) NotifyLeave(n *memberlist.Node)  { e.g.observe(n, StateDead) }

// observe records one event; state "" (an update) keeps the state.
func (g *Gossip) observe(n *memberlist.Node, state string) {
	now := time.Now()
	meta, err := decodeMeta(n.Meta)
	if err != nil {
		g.log.Warn("gossip: member with unreadable meta", "member", n.Name, "err", err)
	}
	addr := net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port)))

	g.mu.Lock()
	defer g.mu.Unlock()
	m := g.nodes[n.Name]
	if m == nil {
		m = &Member{Name: n.Name}
		g.nodes[n.Name] = m
	}
	m.Addr, m.Meta = addr, meta
	switch state {
	case StateAlive:
		// A fresh incarnation: an older leave intent no longer applies.
		delete(g.leaving, n.Name)
	case StateDead:
		if t, ok := g.leaving[n.Name]; ok && now.Sub(t) < g.reapAfter {
			state = StateLeft
		}
	case "":
		state = m.State
		if state == "" {
			state = StateAlive
		}
	}
	if m.State != state {
		m.State, m.LastChange = state, now
	}
	g.log.Debug("gossip: member", "member", n.Name, "addr", addr, "state", m.State,
		"role", meta.Role, "rack", meta.Rack)
	g.publishLocked(now)
}

// publishLocked forgets members dead or left for longer than memberlist
// remembers them, builds a new snapshot and wakes Changed waiters.
func (g *Gossip) publishLocked(now time.Time) {
	for name, m := range g.nodes {
		if (m.State == StateDead || m.State == StateLeft) && now.Sub(m.LastChange) > g.reapAfter {
			delete(g.nodes, name)
		}
	}
	for name, t := range g.leaving {
		if now.Sub(t) > g.reapAfter {
			delete(g.leaving, name)
		}
	}
	for nonce, t := range g.seen {
		if now.Sub(t) > g.reapAfter {
			delete(g.seen, nonce)
		}
	}

	s := &snapshot{alive: make(map[aliveKey][]string)}
	s.members = make([]Member, 0, len(g.nodes))
	for _, m := range g.nodes {
		s.members = append(s.members, *m)
	}
	slices.SortFunc(s.members, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	for _, m := range s.members {
		if m.State != StateAlive {
			continue
		}
		s.numAlive++
		if m.Name != g.name {
			s.othersAlive++
		}
		k := aliveKey{role: m.Meta.Role}
		s.alive[k] = append(s.alive[k], m.Name)
		if m.Meta.Rack != "" {
			k.rack = m.Meta.Rack
			s.alive[k] = append(s.alive[k], m.Name)
		}
		if m.Meta.Role == RoleCoordinator {
			s.coordinators = append(s.coordinators, m)
		}
	}
	for k, names := range s.alive {
		s.alive[k] = names[:len(names):len(names)] // appending copies
	}
	s.leaderAPI = leaderOf(s.coordinators)
	g.snap.Store(s)

	close(g.changed)
	g.changed = make(chan struct{})
}

// leaderOf picks the Raft leader's API address from the coordinators'
// Meta: a coordinator claiming to be leader (its Leader is its own API)
// wins over one merely named; among equals the value most coordinators
// name wins, then the smallest address, so every member picks the same.
func leaderOf(coords []Member) string {
	votes := make(map[string]int)
	claimed := make(map[string]bool)
	for _, c := range coords {
		if c.Meta.Leader == "" {
			continue
		}
		votes[c.Meta.Leader]++
		if c.Meta.Leader == c.Meta.API {
			claimed[c.Meta.Leader] = true
		}
	}
	best := ""
	for l, v := range votes {
		switch {
		case best == "":
		case claimed[l] != claimed[best]:
			if !claimed[l] {
				continue
			}
		case v != votes[best]:
			if v < votes[best] {
				continue
			}
		case l > best:
			continue
		}
		best = l
	}
	return best
}

// Members returns every member this process remembers, itself included,
// alive or not, sorted by name. Dead and left members are forgotten after
// memberlist's GossipToTheDeadTime (30 s on the LAN profile).
func (g *Gossip) Members() []Member {
	s := g.snap.Load()
	now := time.Now()
	out := make([]Member, 0, len(s.members))
	for _, m := range s.members {
		if m.State != StateAlive && now.Sub(m.LastChange) > g.reapAfter {
			continue
		}
		out = append(out, m)
	}
	return out
}

// Alive returns the sorted names of the alive members with the role and,
// if rack is not "", the rack, this process included. It is cheap enough
// for every DHCP packet: one atomic load, one map lookup, no allocation.
// The slice is shared: read it, do not modify it.
func (g *Gossip) Alive(role, rack string) []string {
	return g.snap.Load().alive[aliveKey{role, rack}]
}

// Coordinators returns the alive coordinators, sorted by name.
func (g *Gossip) Coordinators() []Member {
	return slices.Clone(g.snap.Load().coordinators)
}

// LeaderAPI returns the API address of the Raft leader as the alive
// coordinators announce it, or "" if none names one. A coordinator that
// claims to be leader (its Leader equals its own API) is preferred; else
// the address most coordinators name.
func (g *Gossip) LeaderAPI() string {
	return g.snap.Load().leaderAPI
}

// Changed returns a channel closed at the next membership change (a
// member joining, failing, leaving or changing its Meta). Call it again
// after each wake-up for the next one.
func (g *Gossip) Changed() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.changed
}

// alone reports whether no other member is alive.
func (g *Gossip) alone() bool {
	return g.snap.Load().othersAlive == 0
}
