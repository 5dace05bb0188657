package httpboot

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// TestRecentSetFlood: a flood of made-up MACs cannot lock a real machine
// out of discovery: the oldest are forgotten, the newest kept.
func TestRecentSetFlood(t *testing.T) {
	s := newRecentSet()
	t0 := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	for i := 0; i < recentMax+100; i++ {
		s.add(fmt.Sprintf("02:00:00:%02x:%02x:%02x", i>>16&0xff, i>>8&0xff, i&0xff), netip.Addr{}, t0.Add(time.Duration(i)*time.Microsecond))
	}
	now := t0.Add(time.Second)
	s.add("52:54:00:12:34:56", netip.Addr{}, now)
	if !s.since("52:54:00:12:34:56", now) {
		t.Fatalf("a real machine served after a flood is not remembered")
	}
	if s.since("02:00:00:00:00:00", t0) {
		t.Fatalf("the oldest flood MAC is still remembered")
	}
	if len(s.at) > recentMax {
		t.Fatalf("set holds %d MACs, more than %d", len(s.at), recentMax)
	}
}
