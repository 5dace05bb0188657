package dhcp

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/metalfleet/metalfleet/cluster/clock"
	"github.com/metalfleet/metalfleet/proto"
)

// Defaults of the sightings aggregator.
const (
	// DefaultSightingInterval is how often sightings of unknown MACs are
	// reported: one report per MAC per interval, with a count.
	DefaultSightingInterval = 5 * time.Second
	// DefaultMaxNewSightings bounds the MACs reported per interval; the
	// rest of a flood is counted (SightingsLeftOut), not reported.
	DefaultMaxNewSightings = 256
)

// sightings gathers the sightings of unknown MACs between flushes, so a
// DHCP flood of made-up MACs costs at most MaxNew reports per interval
// instead of one per packet. A MAC reported less than SeenEvery ago is
// held back and folded into a later report; held-back MACs are not
// charged to MaxNew (only MACs not reported in the last SeenEvery are), so
// a few MACs resent continuously cannot keep a new machine's sighting out.
// Memory stays bounded: a held-back MAC is one of last, which holds only
// the MACs reported in one SeenEvery.
type sightings struct {
	mu      sync.Mutex
	cur     map[string]*proto.AgentReport // this interval's, by MAC
	last    map[string]time.Time          // when each MAC was last reported
	fresh   int                           // MACs of cur not in last: charged to maxNew
	maxNew  int
	every   time.Duration
	leftOut atomic.Uint64
}

func newSightings(maxNew int, every time.Duration) *sightings {
	return &sightings{cur: map[string]*proto.AgentReport{}, last: map[string]time.Time{}, maxNew: maxNew, every: every}
}

// note counts one sighting of r.MAC.
func (s *sightings) note(r proto.AgentReport) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.cur[r.MAC]; ok {
		c.Count++
		return
	}
	r.Count = 1
	if _, ok := s.last[r.MAC]; ok {
		// Reported lately: held back, its count folded into a later
		// report, not charged to maxNew.
		s.cur[r.MAC] = &r
		return
	}
	if s.fresh >= s.maxNew {
		s.leftOut.Add(1)
		return
	}
	s.fresh++
	s.cur[r.MAC] = &r
}

// flush returns the reports due at now: every gathered MAC not reported
// in the last SeenEvery. The others stay gathered for a later flush.
func (s *sightings) flush(now time.Time) []proto.AgentReport {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []proto.AgentReport
	for mac, r := range s.cur {
		if t, ok := s.last[mac]; ok && now.Sub(t) < s.every {
			continue
		}
		out = append(out, *r)
		delete(s.cur, mac)
		s.last[mac] = now
	}
	// What stays in cur was reported lately (it is in last): none of it
	// is charged to maxNew.
	s.fresh = 0
	// Forget report times older than SeenEvery: they no longer hold
	// anything back, and the map stays as small as the reports of one
	// SeenEvery.
	for mac, t := range s.last {
		if now.Sub(t) >= s.every {
			delete(s.last, mac)
		}
	}
	return out
}

// SightingsLeftOut counts the sightings of unknown MACs not reported
// because an interval already held MaxNewSightings MACs.
func (h *Handler) SightingsLeftOut() uint64 { return h.sight.leftOut.Load() }

// SightingsGathered is how many MACs' sightings wait for a flush
// (gathered this interval, or held back: reported less than SeenEvery
// ago).
func (h *Handler) SightingsGathered() int {
	h.sight.mu.Lock()
	defer h.sight.mu.Unlock()
	return len(h.sight.cur)
}

// FlushSightings reports the sightings gathered so far that are due.
func (h *Handler) FlushSightings() {
	now := h.cfg.Now()
	for _, r := range h.sight.flush(now) {
		r.Time = now.UTC()
		h.report(r)
	}
}

// RunSightings flushes the gathered sightings every SightingInterval of
// c (nil: the real clock) until ctx ends, then once more.
func (h *Handler) RunSightings(ctx context.Context, c clock.Clock) error {
	t := clock.Or(c).NewTicker(h.cfg.SightingInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			h.FlushSightings()
			return nil
		case <-t.C():
			h.FlushSightings()
		}
	}
}
