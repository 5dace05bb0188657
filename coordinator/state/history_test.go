package state

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/metalfleet/metalfleet/proto"
)

// TestHistoryBounded: a node's history keeps its last MaxHistory events,
// each message cut to MaxHistoryMessage bytes on a rune boundary, and
// goes with the node.
func TestHistoryBounded(t *testing.T) {
	s := New()
	const uuid = "11111111-1111-4111-8111-111111111111"
	idx := uint64(1)
	write := func(fn func(tx *Tx)) {
		t.Helper()
		if err := s.Write(idx, func(tx *Tx) error { fn(tx); return nil }); err != nil {
			t.Fatal(err)
		}
		idx++
	}
	write(func(tx *Tx) { tx.PutNode(&proto.Node{UUID: uuid, MACs: []string{"52:54:00:00:00:01"}}) })
	long := strings.Repeat("é", proto.MaxHistoryMessage) // 2 bytes each
	for i := 0; i < proto.MaxHistory+25; i++ {
		msg := "event"
		if i == proto.MaxHistory+24 {
			msg = long
		}
		write(func(tx *Tx) { tx.AppendHistory(uuid, proto.HistoryEvent{Kind: "k", Message: msg}) })
	}
	h := s.History(uuid)
	if len(h) != proto.MaxHistory {
		t.Fatalf("%d events kept, want %d", len(h), proto.MaxHistory)
	}
	last := h[len(h)-1].Message
	if len(last) > proto.MaxHistoryMessage || !utf8.ValidString(last) || !strings.HasSuffix(last, "...") {
		t.Fatalf("long message kept as %d bytes (valid UTF-8 %v)", len(last), utf8.ValidString(last))
	}
	write(func(tx *Tx) { tx.DeleteNode(uuid) })
	if h := s.History(uuid); len(h) != 0 {
		t.Fatalf("history outlived its node: %d events", len(h))
	}
}
