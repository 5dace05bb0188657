package fsm

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/coordinator/state"
	"github.com/metalfleet/metalfleet/proto"
)

func ticketHash(secret string) string {
	s := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(s[:])
}

func ticketMake(secret, node string, now time.Time) ConsoleTicketMake {
	return ConsoleTicketMake{Now: now, Ticket: state.ConsoleTicket{Hash: ticketHash(secret), Node: node, User: "tok-1 (alice)",
		Mode: "interactive", Purpose: "console", Expires: now.Add(30 * time.Second)}}
}

// consoleFleet: rack r1 with n1 (a fake BMC) and n2 (no BMC), rack r2
// with n3 (a fake BMC).
func consoleFleet(t *testing.T) *harness {
	h := newHarness(t)
	h.must(rackWithPool())
	h.must(RackPut{Create: true, Rack: proto.Rack{Name: "r2", Subnet: "10.8.0.0/24", BootServer: "10.8.0.2"}})
	for _, n := range []struct{ uuid, name, mac, rack, driver string }{
		{uuid1, "n1", "52:54:00:00:00:01", "r1", proto.DriverFake},
		{uuid2, "n2", "52:54:00:00:00:02", "r1", ""},
		{uuid3, "n3", "52:54:00:00:00:03", "r2", proto.DriverFake},
	} {
		c := node(n.uuid, n.name, n.mac, proto.StateEnrolled)
		c.Node.Rack = n.rack
		if n.driver != "" {
			c.Node.BMC = proto.BMC{Driver: n.driver, Address: "bmc-" + n.name}
		}
		h.must(c)
	}
	return h
}

func TestConsoleTicketSingleUse(t *testing.T) {
	h := consoleFleet(t)
	got := h.must(ticketMake("s1", "n1", t0)).(*state.ConsoleTicket)
	if got.Node != uuid1 || got.Rack != "r1" {
		t.Fatalf("ticket for n1 = node %q rack %q, want %s r1", got.Node, got.Rack, uuid1)
	}
	h.fails(ConsoleTicketTake{Hash: ticketHash("s1"), Rack: "r2", Now: t0}, proto.CodeForbidden, "rack r1")
	tk := h.must(ConsoleTicketTake{Hash: ticketHash("s1"), Rack: "r1", Now: t0.Add(time.Second)}).(*state.ConsoleTicket)
	if tk.Node != uuid1 || tk.User != "tok-1 (alice)" || tk.Mode != "interactive" || tk.Purpose != "console" {
		t.Fatalf("taken ticket = %+v", tk)
	}
	h.fails(ConsoleTicketTake{Hash: ticketHash("s1"), Rack: "r1", Now: t0.Add(time.Second)}, proto.CodeUnauthorized, "already used")
	h.fails(ConsoleTicketTake{Hash: ticketHash("never"), Rack: "r1", Now: t0}, proto.CodeUnauthorized, "unknown")
}

func TestConsoleTicketExpires(t *testing.T) {
	h := consoleFleet(t)
	h.must(ticketMake("s1", "n1", t0))
	h.fails(ConsoleTicketTake{Hash: ticketHash("s1"), Rack: "r1", Now: t0.Add(30 * time.Second)}, proto.CodeUnauthorized, "expired")
	if n := len(h.f.Store().Tickets()); n != 1 {
		t.Fatalf("tickets = %d, want the expired one kept until the next make", n)
	}
	h.must(ticketMake("s2", "n1", t0.Add(time.Minute)))
	if ts := h.f.Store().Tickets(); len(ts) != 1 || ts[0].Hash != ticketHash("s2") {
		t.Fatalf("tickets after a later make = %+v, want only the new one", ts)
	}
}

func TestConsoleTicketRefusals(t *testing.T) {
	h := consoleFleet(t)
	h.fails(ticketMake("s1", "nosuch", t0), proto.CodeNotFound, "nosuch")
	h.fails(ticketMake("s1", "n2", t0), proto.CodeConflict, "has no BMC")
	h.must(ticketMake("s1", "n1", t0))
	h.fails(ticketMake("s1", "n1", t0), proto.CodeConflict, "reused")
}

func TestConsoleTicketsBounded(t *testing.T) {
	h := consoleFleet(t)
	for i := range state.MaxTickets {
		h.must(ticketMake(fmt.Sprint("s", i), "n1", t0))
	}
	h.fails(ticketMake("one-more", "n1", t0.Add(time.Second)), proto.CodeUnavailable, "outstanding")
	// Once they expire, a new one goes in and the expired are gone.
	h.must(ticketMake("later", "n1", t0.Add(time.Minute)))
	if n := len(h.f.Store().Tickets()); n != 1 {
		t.Fatalf("tickets = %d, want 1", n)
	}
}

// TestTicketsReplicaAgrees: a replica restored from a snapshot taken at
// any point agrees with one that applied the whole log, tickets made,
// taken, refused and expired included.
func TestTicketsReplicaAgrees(t *testing.T) {
	h := consoleFleet(t)
	cmds := []Command{
		ticketMake("a", "n1", t0),
		ticketMake("b", "n3", t0),
		ConsoleTicketTake{Hash: ticketHash("a"), Rack: "r2", Now: t0}, // refused: other rack
		ConsoleTicketTake{Hash: ticketHash("a"), Rack: "r1", Now: t0},
		ConsoleTicketTake{Hash: ticketHash("a"), Rack: "r1", Now: t0}, // refused: used
		ticketMake("c", "n2", t0),                                     // refused: no BMC
		ticketMake("d", "n1", t0.Add(time.Minute)),                    // expires b
		ConsoleTicketTake{Hash: ticketHash("b"), Rack: "r2", Now: t0.Add(time.Minute)},
	}
	for _, c := range cmds {
		h.apply(c)
	}
	want := stateBytes(t, h.f.Store())
	if !bytes.Contains(want, []byte(`"t":"ticket"`)) {
		t.Fatalf("the snapshot holds no ticket:\n%s", want)
	}
	for cut := 1; cut < len(h.log); cut++ {
		a := New(state.New(), nil)
		for i := 0; i < cut; i++ {
			a.ApplyBytes(uint64(i+1), h.log[i])
		}
		b := New(state.New(), nil)
		if err := b.Store().Restore(snapshotReader(t, a.Store())); err != nil {
			t.Fatal(err)
		}
		for i := cut; i < len(h.log); i++ {
			b.ApplyBytes(uint64(i+1), h.log[i])
		}
		if got := stateBytes(t, b.Store()); !bytes.Equal(got, want) {
			t.Fatalf("restored after entry %d, the replica differs:\n got %s\nwant %s", cut, got, want)
		}
	}
}
