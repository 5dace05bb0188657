package state

import (
	"maps"
	"time"
)

// Console tickets: short-lived, single-use, bound to one node and user.
// The API makes one for each console attach (or console log read) and
// hands its secret to the node's rack agent, which redeems it once. Only
// the secret's SHA-256 is stored. Tickets are replicated (and in
// snapshots) so that any coordinator agrees on whether one was used.

// MaxTickets bounds the tickets outstanding at once; expired ones are
// removed whenever one is made.
const MaxTickets = 1024

// ConsoleTicket is one console ticket.
type ConsoleTicket struct {
	// Hash is the hex SHA-256 of the ticket's secret.
	Hash string `json:"hash"`
	// Node is the node's uuid, Rack its rack when the ticket was made.
	Node string `json:"node"`
	Rack string `json:"rack"`
	// User names who asked (a token id and description).
	User string `json:"user"`
	// Mode is interactive or read-only; Force takes the keyboard.
	Mode  string `json:"mode,omitempty"`
	Force bool   `json:"force,omitempty"`
	// Purpose is what the ticket opens: "console" or "log".
	Purpose string    `json:"purpose"`
	Expires time.Time `json:"expires"`
	// Index is the Raft index that made it.
	Index uint64 `json:"index"`
}

// Ticket returns the ticket whose secret hashes to hash, or nil.
func (tx *Tx) Ticket(hash string) *ConsoleTicket { return tx.d.tickets[hash] }

// PutTicket stores t, stamped with the change's index.
func (tx *Tx) PutTicket(t ConsoleTicket) {
	if tx.d.tickets == nil {
		tx.d.tickets = map[string]*ConsoleTicket{}
	}
	t.Index = tx.index
	tx.d.tickets[t.Hash] = &t
	tx.changed = true
}

// DeleteTicket removes a ticket (it was used).
func (tx *Tx) DeleteTicket(hash string) {
	if _, ok := tx.d.tickets[hash]; ok {
		delete(tx.d.tickets, hash)
		tx.changed = true
	}
}

// TicketCount is how many tickets are stored, expired ones included.
func (tx *Tx) TicketCount() int { return len(tx.d.tickets) }

// EachTicket calls fn with every ticket; fn must not change it.
func (tx *Tx) EachTicket(fn func(*ConsoleTicket)) {
	for _, t := range tx.d.tickets {
		fn(t)
	}
}

// ExpireTickets removes the tickets expired at now and returns how many
// are left.
func (tx *Tx) ExpireTickets(now time.Time) int {
	for h, t := range tx.d.tickets {
		if !now.Before(t.Expires) {
			delete(tx.d.tickets, h)
			tx.changed = true
		}
	}
	return len(tx.d.tickets)
}

// Ticket returns a copy of the ticket whose secret hashes to hash.
func (s *Store) Ticket(hash string) (ConsoleTicket, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	t, ok := s.d.tickets[hash]
	if !ok {
		return ConsoleTicket{}, false
	}
	return *t, true
}

// Tickets returns copies of the outstanding tickets, by hash.
func (s *Store) Tickets() []ConsoleTicket {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]ConsoleTicket, 0, len(s.d.tickets))
	for _, h := range sortedKeys(s.d.tickets) {
		out = append(out, *s.d.tickets[h])
	}
	return out
}

// cloneTickets copies the ticket table for a snapshot (tickets are
// replaced, never changed in place).
func cloneTickets(m map[string]*ConsoleTicket) map[string]*ConsoleTicket { return maps.Clone(m) }

// restoreTicket adds a ticket read from a snapshot.
func (d *data) restoreTicket(t *ConsoleTicket) {
	if d.tickets == nil {
		d.tickets = map[string]*ConsoleTicket{}
	}
	d.tickets[t.Hash] = t
}
