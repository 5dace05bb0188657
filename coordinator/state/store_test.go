package state

import (
	"bytes"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/proto"
)

func put(t *testing.T, s *Store, fn func(tx *Tx)) {
	t.Helper()
	if err := s.Write(s.Index()+1, func(tx *Tx) error { fn(tx); return nil }); err != nil {
		t.Fatal(err)
	}
}

// TestSightingsBoundedByAge: past MaxSightings the sighting seen longest
// ago goes, whatever the order they were written in, and a refreshed
// sighting moves to the young end.
func TestSightingsBoundedByAge(t *testing.T) {
	s := New()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	mac := func(i int) string { return fmt.Sprintf("52:54:00:%02x:%02x:%02x", i>>16&0xff, i>>8&0xff, i&0xff) }
	put(t, s, func(tx *Tx) {
		// Written youngest first, so insertion order is not age order.
		for i := MaxSightings - 1; i >= 0; i-- {
			tx.PutSighting(&proto.Sighting{MAC: mac(i), Rack: "r", LastSeen: t0.Add(time.Duration(i) * time.Second)})
		}
		// The oldest is seen again: now the youngest.
		tx.PutSighting(&proto.Sighting{MAC: mac(0), Rack: "r", LastSeen: t0.Add(time.Duration(MaxSightings) * time.Second)})
		tx.PutSighting(&proto.Sighting{MAC: mac(MaxSightings + 1), Rack: "r", LastSeen: t0.Add(time.Duration(MaxSightings+1) * time.Second)})
	})
	sg := s.Sightings("")
	if len(sg) != MaxSightings {
		t.Fatalf("%d sightings, want %d", len(sg), MaxSightings)
	}
	has := map[string]bool{}
	for _, x := range sg {
		has[x.MAC] = true
	}
	if !has[mac(0)] || has[mac(1)] || !has[mac(MaxSightings+1)] {
		t.Fatalf("evicted the wrong one: mac0 %v mac1 %v new %v", has[mac(0)], has[mac(1)], has[mac(MaxSightings+1)])
	}
	put(t, s, func(tx *Tx) { tx.DeleteSighting(mac(0)) })
	put(t, s, func(tx *Tx) {
		tx.PutSighting(&proto.Sighting{MAC: mac(MaxSightings + 2), Rack: "r", LastSeen: t0})
	})
	if len(s.Sightings("")) != MaxSightings {
		t.Fatalf("a delete left the age index out of step")
	}
}

// TestNodesPage: pages follow list order (name, uuid), a marker stays
// valid when its node is deleted, filters apply, and the pages add up to
// the whole list.
func TestNodesPage(t *testing.T) {
	s := New()
	put(t, s, func(tx *Tx) {
		for i := 0; i < 250; i++ {
			name := ""
			if i%5 != 0 {
				name = fmt.Sprintf("n%03d", i)
			}
			rack := "r1"
			if i%2 == 1 {
				rack = "r2"
			}
			tx.PutNode(&proto.Node{UUID: fmt.Sprintf("00000000-0000-4000-8000-%012d", i), Name: name, Rack: rack,
				MACs: []string{fmt.Sprintf("52:54:00:00:%02x:%02x", i>>8, i&0xff)}, ProvisionState: proto.StateEnrolled})
		}
	})
	all := s.Nodes(NodeFilter{})
	var paged []*proto.Node
	after := ""
	for pages := 0; ; pages++ {
		if pages > 100 {
			t.Fatal("paging does not end")
		}
		page, next := s.NodesPage(NodeFilter{}, after, 40)
		paged = append(paged, page...)
		if next == "" {
			break
		}
		if len(page) != 40 {
			t.Fatalf("a page of %d before the last", len(page))
		}
		if pages == 2 {
			// Delete the node the marker names: the next page goes on.
			last := page[len(page)-1].UUID
			put(t, s, func(tx *Tx) { tx.DeleteNode(last) })
			all = s.Nodes(NodeFilter{})
		}
		after = next
	}
	if len(paged) != len(all)+1 { // +1: the deleted one was already read
		t.Fatalf("paged %d nodes, list has %d (+1 deleted)", len(paged), len(all))
	}
	for i := 1; i < len(paged); i++ {
		a, b := paged[i-1], paged[i]
		if a.Name > b.Name || a.Name == b.Name && a.UUID >= b.UUID {
			t.Fatalf("out of order at %d: %s/%s then %s/%s", i, a.Name, a.UUID, b.Name, b.UUID)
		}
	}
	r2, next := s.NodesPage(NodeFilter{Rack: "r2"}, "", 10)
	if len(r2) != 10 || next == "" {
		t.Fatalf("filtered page: %d nodes, next %q", len(r2), next)
	}
	for _, n := range r2 {
		if n.Rack != "r2" {
			t.Fatalf("filter let %s of %s through", n.UUID, n.Rack)
		}
	}
	if p, n := s.NodesPage(NodeFilter{}, "not base64!", 10); len(p) != 0 || n != "" {
		t.Fatalf("a bad marker gave %d nodes", len(p))
	}
}

// TestIdentityIndex: nodes are found by system identity, kept right
// through updates, deletes and a restore; placeholders index nothing.
func TestIdentityIndex(t *testing.T) {
	s := New()
	inv := func(uuid, serial string) []byte {
		return []byte(fmt.Sprintf(`{"version":1,"system":{"uuid":%q,"serial":%q}}`, uuid, serial))
	}
	put(t, s, func(tx *Tx) {
		tx.PutNode(&proto.Node{UUID: "a", MACs: []string{"52:54:00:00:00:0a"}, Inventory: inv("5b2f0c1e-0000-4000-8000-00000000000a", "A")})
		tx.PutNode(&proto.Node{UUID: "b", MACs: []string{"52:54:00:00:00:0b"}, Inventory: inv("", "Default string")})
	})
	check := func(s *Store, ident string, want ...string) {
		t.Helper()
		var got []string
		_ = s.Write(s.Index(), func(tx *Tx) error { got = tx.NodesByIdentity(ident); return nil })
		if fmt.Sprint(got) != fmt.Sprint(want) && !(len(got) == 0 && len(want) == 0) {
			t.Fatalf("NodesByIdentity(%q) = %v, want %v", ident, got, want)
		}
	}
	check(s, "uuid:5b2f0c1e-0000-4000-8000-00000000000a", "a")
	check(s, "serial:Default string")
	put(t, s, func(tx *Tx) {
		tx.PutNode(&proto.Node{UUID: "c", MACs: []string{"52:54:00:00:00:0c"}, Inventory: inv("5b2f0c1e-0000-4000-8000-00000000000a", "A")})
		tx.PutNode(&proto.Node{UUID: "a", MACs: []string{"52:54:00:00:00:0a"}, Inventory: inv("5b2f0c1e-0000-4000-8000-0000000000aa", "A")})
	})
	check(s, "uuid:5b2f0c1e-0000-4000-8000-00000000000a", "c")
	check(s, "uuid:5b2f0c1e-0000-4000-8000-0000000000aa", "a")
	var buf bytes.Buffer
	if _, err := s.Snapshot().WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	r := New()
	if err := r.Restore(&buf); err != nil {
		t.Fatal(err)
	}
	check(r, "uuid:5b2f0c1e-0000-4000-8000-0000000000aa", "a")
	put(t, r, func(tx *Tx) { tx.DeleteNode("a") })
	check(r, "uuid:5b2f0c1e-0000-4000-8000-0000000000aa")
}

// TestConflictsOutliveFloods: a flood of unknown MACs never pushes out a
// sighting that records a conflict.
func TestConflictsOutliveFloods(t *testing.T) {
	s := New()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	put(t, s, func(tx *Tx) {
		tx.PutSighting(&proto.Sighting{MAC: "52:54:00:ff:00:01", Rack: "r", LastSeen: t0, Conflict: "MAC belongs to node n1"})
		for i := 0; i < 2*MaxSightings; i++ {
			tx.PutSighting(&proto.Sighting{MAC: fmt.Sprintf("52:54:01:%02x:%02x:%02x", i>>16&0xff, i>>8&0xff, i&0xff), Rack: "r",
				LastSeen: t0.Add(time.Duration(i+1) * time.Millisecond)})
		}
	})
	sg := s.Sightings("")
	if len(sg) != MaxSightings {
		t.Fatalf("%d sightings, want %d", len(sg), MaxSightings)
	}
	if sg[0].MAC != "52:54:00:ff:00:01" || sg[0].Conflict == "" {
		t.Fatalf("the conflict was evicted by the flood")
	}
}

// TestSnapshotLines: the lines WriteTo puts together by hand are the ones
// json.Encoder writes for a record (so snapshots of earlier builds read
// the same), and a record in any other JSON layout still restores.
func TestSnapshotLines(t *testing.T) {
	s := New()
	put(t, s, func(tx *Tx) {
		tx.PutRack(&proto.Rack{Name: "r<1>", Subnet: "10.9.0.0/24"})
		tx.PutNode(&proto.Node{UUID: "a", Rack: "r<1>", MACs: []string{"52:54:00:00:00:0a"}, Inventory: []byte(`{ "version": 1, "x": "<&>" }`)})
	})
	var buf bytes.Buffer
	if _, err := s.Snapshot().WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	var want bytes.Buffer
	enc := json.NewEncoder(&want)
	for _, line := range bytes.SplitAfter(buf.Bytes(), []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var rec record
		if err := json.Unmarshal(line, &rec); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		if err := enc.Encode(rec); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(buf.Bytes(), want.Bytes()) {
		t.Fatalf("hand-made lines differ from json.Encoder's:\n got %s\nwant %s", buf.Bytes(), want.Bytes())
	}
	spaced := bytes.ReplaceAll(buf.Bytes(), []byte(`{"t":`), []byte(`{ "t" : `))
	r := New()
	if err := r.Restore(bytes.NewReader(spaced)); err != nil {
		t.Fatalf("a snapshot in another layout: %v", err)
	}
	if n, ok := r.Node("a"); !ok || n.Rack != "r<1>" {
		t.Fatalf("restored node %+v", n)
	}
}
