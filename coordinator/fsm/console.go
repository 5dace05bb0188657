package fsm

import (
	"time"

	"github.com/metalfleet/metalfleet/coordinator/state"
	"github.com/metalfleet/metalfleet/proto"
)

// Console tickets (state/tickets.go): made by the API for each console
// attach or log read, taken once by the node's rack agent.

func init() {
	handlers[TypeConsoleTicketMake] = decode(applyConsoleTicketMake)
	handlers[TypeConsoleTicketTake] = decode(applyConsoleTicketTake)
}

// ConsoleTicketMake stores a ticket for the node Ticket.Node (a uuid,
// name or MAC; stored as the uuid, with the node's rack). Expired tickets
// go first; past state.MaxTickets outstanding it is refused.
type ConsoleTicketMake struct {
	Ticket state.ConsoleTicket `json:"ticket"`
	Now    time.Time           `json:"now"`
}

// ConsoleTicketTake redeems the ticket whose secret hashes to Hash, for an
// agent of Rack: it is removed and returned only if it exists, has not
// expired at Now and names a node of Rack.
type ConsoleTicketTake struct {
	Hash string    `json:"hash"`
	Rack string    `json:"rack"`
	Now  time.Time `json:"now"`
}

func (ConsoleTicketMake) Type() Type { return TypeConsoleTicketMake }
func (ConsoleTicketTake) Type() Type { return TypeConsoleTicketTake }

func applyConsoleTicketMake(tx *state.Tx, c *ConsoleTicketMake) (any, error) {
	t := c.Ticket
	if len(t.Hash) != 64 {
		return nil, proto.Errorf(proto.CodeInternal, "console ticket without a secret hash")
	}
	if !t.Expires.After(c.Now) {
		return nil, proto.Errorf(proto.CodeInternal, "console ticket expires at %s, before it is made (%s)", t.Expires, c.Now)
	}
	n := tx.Node(t.Node)
	if n == nil {
		return nil, proto.Errorf(proto.CodeNotFound, "node %q not found", t.Node)
	}
	if n.BMC.Driver == "" || n.BMC.Address == "" {
		return nil, proto.Errorf(proto.CodeConflict, "node %s has no BMC (set --bmc-driver and --bmc-address): no console to open", nodeRef(n))
	}
	if n.Rack == "" {
		return nil, proto.Errorf(proto.CodeConflict, "node %s is in no rack: no rack agent can open its console", nodeRef(n))
	}
	if tx.Ticket(t.Hash) != nil {
		return nil, proto.Errorf(proto.CodeConflict, "console ticket secret reused")
	}
	// Checked before anything changes: a refused command leaves no trace.
	if tx.TicketCount()-expiredTickets(tx, c.Now) >= state.MaxTickets {
		return nil, proto.Errorf(proto.CodeUnavailable, "%d console tickets outstanding (at most %d); try again in a few seconds", state.MaxTickets, state.MaxTickets)
	}
	tx.ExpireTickets(c.Now)
	t.Node, t.Rack = n.UUID, n.Rack
	tx.PutTicket(t)
	out := *tx.Ticket(t.Hash)
	return &out, nil
}

// expiredTickets counts the tickets expired at now.
func expiredTickets(tx *state.Tx, now time.Time) int {
	n := 0
	tx.EachTicket(func(t *state.ConsoleTicket) {
		if !now.Before(t.Expires) {
			n++
		}
	})
	return n
}

func applyConsoleTicketTake(tx *state.Tx, c *ConsoleTicketTake) (any, error) {
	t := tx.Ticket(c.Hash)
	if t == nil || !c.Now.Before(t.Expires) {
		// One answer for unknown, used and expired: a guesser learns
		// nothing. An expired ticket stays until the next make.
		return nil, proto.Errorf(proto.CodeUnauthorized, "console ticket unknown, already used or expired")
	}
	if t.Rack != c.Rack {
		return nil, proto.Errorf(proto.CodeForbidden, "console ticket is for a node of rack %s, not of rack %s", t.Rack, c.Rack)
	}
	out := *t
	tx.DeleteTicket(c.Hash)
	return &out, nil
}
