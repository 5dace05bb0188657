package state

import (
	"slices"
	"sort"
)

// De-duplication of rack agent reports for any backlog. An agent numbers
// its reports in a sequence it persists with its queue (Seq), named by an
// incarnation id made with its data directory; it delivers them in
// order. The store keeps the highest Seq applied per agent and
// incarnation, so a report at or below it is a repeat however long it was
// queued and however many other reports were applied meanwhile.

// MaxIncarnations bounds the incarnations remembered per agent: an agent
// rebuilt more often than this within the time its old reports could
// still be in flight is not a case that exists (an old incarnation's
// reports died with its data directory, but for one in-flight retry).
const MaxIncarnations = 8

// MaxAgentsPerRack bounds the agents remembered per rack (a rack has one
// or two); past it the one heard from longest ago is forgotten.
const MaxAgentsPerRack = 64

// Incarnation is one report sequence of an agent.
type Incarnation struct {
	ID  string `json:"id"`
	Seq uint64 `json:"seq"` // highest applied
	// Index is the Raft index that last moved Seq (for eviction).
	Index uint64 `json:"index"`
}

// AgentSeq is what the store remembers of one agent's reports.
type AgentSeq struct {
	Rack         string        `json:"rack"`
	Agent        string        `json:"agent"`
	Incarnations []Incarnation `json:"incarnations"` // most recently used first
}

func (a *AgentSeq) clone() AgentSeq {
	c := *a
	c.Incarnations = slices.Clone(a.Incarnations)
	return c
}

func (a *AgentSeq) last() uint64 {
	var m uint64
	for _, in := range a.Incarnations {
		m = max(m, in.Index)
	}
	return m
}

// ReportApplied reports whether the report seq of agent's incarnation inc
// in rack was applied before.
func (tx *Tx) ReportApplied(rack, agent, inc string, seq uint64) bool {
	a := tx.d.agentSeqs[rack+"/"+agent]
	if a == nil {
		return false
	}
	for _, in := range a.Incarnations {
		if in.ID == inc {
			return seq <= in.Seq
		}
	}
	return false
}

// MarkApplied records that report seq of agent's incarnation inc in rack
// is done with (applied or refused for good), with every one before it.
func (tx *Tx) MarkApplied(rack, agent, inc string, seq uint64) {
	key := rack + "/" + agent
	a := tx.d.agentSeqs[key]
	if a == nil {
		tx.forgetStalestAgent(rack)
		a = &AgentSeq{Rack: rack, Agent: agent}
	} else {
		c := a.clone() // snapshots share the old one
		a = &c
	}
	i := slices.IndexFunc(a.Incarnations, func(in Incarnation) bool { return in.ID == inc })
	cur := Incarnation{ID: inc}
	if i >= 0 {
		cur = a.Incarnations[i]
		a.Incarnations = slices.Delete(a.Incarnations, i, i+1)
	}
	cur.Seq, cur.Index = max(cur.Seq, seq), tx.index
	a.Incarnations = slices.Insert(a.Incarnations, 0, cur)
	if len(a.Incarnations) > MaxIncarnations {
		a.Incarnations = a.Incarnations[:MaxIncarnations]
	}
	tx.d.agentSeqs[key] = a
	tx.changed = true
}

// forgetStalestAgent makes room for one more agent in rack.
func (tx *Tx) forgetStalestAgent(rack string) {
	var keys []string
	for k, a := range tx.d.agentSeqs {
		if a.Rack == rack {
			keys = append(keys, k)
		}
	}
	if len(keys) < MaxAgentsPerRack {
		return
	}
	sort.Slice(keys, func(i, j int) bool {
		li, lj := tx.d.agentSeqs[keys[i]].last(), tx.d.agentSeqs[keys[j]].last()
		if li != lj {
			return li < lj
		}
		return keys[i] < keys[j]
	})
	delete(tx.d.agentSeqs, keys[0])
}

// forgetRackAgents drops a deleted rack's agents.
func (tx *Tx) forgetRackAgents(rack string) {
	for k, a := range tx.d.agentSeqs {
		if a.Rack == rack {
			delete(tx.d.agentSeqs, k)
		}
	}
}
