package dhcp

import (
	"fmt"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/proto"
)

// TestSightingsHeldBackNotCharged: MACs held back for SeenEvery and resent
// continuously do not count against MaxNew, so a new MAC's sighting is
// still reported in the next interval, and the held-back MACs' repeats
// are counted in their next report.
func TestSightingsHeldBackNotCharged(t *testing.T) {
	const maxNew = 4
	s := newSightings(maxNew, 30*time.Second)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	spoof := func() {
		for i := range maxNew {
			s.note(proto.AgentReport{Kind: proto.ReportMACSeen, MAC: fmt.Sprintf("02:00:00:00:00:%02x", i)})
		}
	}
	spoof()
	if got := s.flush(t0); len(got) != maxNew {
		t.Fatalf("first flush: %d reports, want %d", len(got), maxNew)
	}
	const real = "52:54:00:12:34:56"
	for i := 1; i <= 5; i++ { // 25 s: the spoofed MACs stay held back
		spoof()
		spoof()
		s.note(proto.AgentReport{Kind: proto.ReportMACSeen, MAC: real})
		got := s.flush(t0.Add(time.Duration(i) * 5 * time.Second))
		if i == 1 && (len(got) != 1 || got[0].MAC != real) {
			t.Fatalf("flush with %d held-back MACs resent: %+v, want the new MAC's sighting", maxNew, got)
		}
		if i > 1 && len(got) != 0 {
			t.Fatalf("flush %d: %+v, want nothing (all held back)", i, got)
		}
	}
	if n := s.leftOut.Load(); n != 0 {
		t.Errorf("%d sightings left out, want 0", n)
	}
	if len(s.cur) > maxNew+len(s.last) {
		t.Errorf("%d MACs gathered, want at most %d", len(s.cur), maxNew+len(s.last))
	}
	got := s.flush(t0.Add(30 * time.Second))
	if len(got) != maxNew {
		t.Fatalf("flush after SeenEvery: %d reports, want the %d held back", len(got), maxNew)
	}
	for _, r := range got {
		if r.Count != 10 {
			t.Errorf("%s: count %d, want 10 (its repeats while held back)", r.MAC, r.Count)
		}
	}
	// New MACs beyond maxNew in one interval are still left out.
	for i := range 2 * maxNew {
		s.note(proto.AgentReport{Kind: proto.ReportMACSeen, MAC: fmt.Sprintf("02:00:00:00:01:%02x", i)})
	}
	// (The real MAC, held back since its report at 5 s, is due too.)
	newMACs, realCount := 0, 0
	for _, r := range s.flush(t0.Add(35 * time.Second)) {
		if r.MAC == real {
			realCount = r.Count
		} else {
			newMACs++
		}
	}
	if newMACs != maxNew || s.leftOut.Load() != maxNew || realCount != 4 {
		t.Errorf("%d new MACs: %d reported, %d left out, the real MAC's count %d; want %d, %d, 4", 2*maxNew, newMACs, s.leftOut.Load(), realCount, maxNew, maxNew)
	}
}
