package state

import (
	"slices"

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
