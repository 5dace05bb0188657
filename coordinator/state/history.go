package state

import (
	"slices"
	"time"
	"unicode/utf8"

	"github.com/metalfleet/metalfleet/proto"
)

// Node history: a bounded list of events per node, replicated (it is
// written by FSM commands) and kept in snapshots.

type historyRecord struct {
	Node   string               `json:"node"`
	Events []proto.HistoryEvent `json:"events"`
}

// AppendHistory adds ev to the history of node uuid, dropping the oldest
// events beyond proto.MaxHistory.
func (tx *Tx) AppendHistory(uuid string, ev proto.HistoryEvent) {
	if tx.d.nodes[uuid] == nil {
		return
	}
	ev.Message = truncateText(ev.Message, proto.MaxHistoryMessage)
	ev.User = truncateText(ev.User, 128)
	h := append(tx.d.history[uuid], ev)
	if over := len(h) - proto.MaxHistory; over > 0 {
		h = slices.Clone(h[over:])
	}
	tx.d.history[uuid] = h
	tx.changed = true
}

// History returns a copy of the history of node uuid, oldest first.
func (s *Store) History(uuid string) []proto.HistoryEvent {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return slices.Clone(s.d.history[uuid])
}

// IntentRef names one intent of a node.
type IntentRef struct {
	Node       string
	Generation uint64
}

// ExpiredIntents lists the pending intents past their expiry at now, at
// most max of them, read under one lock without copying nodes.
func (s *Store) ExpiredIntents(now time.Time, max int) []IntentRef {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []IntentRef
	for _, n := range s.d.nodes {
		for _, in := range n.Intents {
			if !in.Done && !in.Expires.IsZero() && now.After(in.Expires) {
				out = append(out, IntentRef{Node: n.UUID, Generation: in.Generation})
				if len(out) >= max {
					return out
				}
			}
		}
	}
	return out
}

// truncateText cuts s to at most n bytes on a rune boundary, marking the cut.
func truncateText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n - len("...")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}
