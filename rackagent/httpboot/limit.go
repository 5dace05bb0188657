package httpboot

import (
	"sync"
	"time"
)

// limiter is a token bucket per key (a source IP).
type limiter struct {
	rate  float64 // tokens per second
	burst float64

	mu        sync.Mutex
	buckets   map[string]*bucket
	lastSweep time.Time
	order     []recentEntry
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newLimiter(rate float64, burst int) *limiter {
	return &limiter{rate: rate, burst: float64(burst), buckets: map[string]*bucket{}}
}

// allow takes a token from key's bucket, if it has one.
func (l *limiter) allow(key string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	// Forget buckets that have refilled: they are as good as new.
	full := time.Duration(l.burst / l.rate * float64(time.Second))
	if now.Sub(l.lastSweep) > full && len(l.buckets) > 0 {
		for k, b := range l.buckets {
			if now.Sub(b.last) >= full {
				delete(l.buckets, k)
			}
		}
		l.lastSweep = now
	}
	b := l.buckets[key]
	if b == nil {
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[key] = b
	} else if now.After(b.last) {
		b.tokens = min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
		b.last = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// recentSet remembers when MACs were last served the discovery script.
type recentSet struct {
	mu        sync.Mutex
	at        map[string]time.Time
	lastSweep time.Time
	order     []recentEntry // additions, oldest first
}

const (
	// recentKeep is how long a MAC is remembered at all.
	recentKeep = time.Hour
	// recentMax bounds the set against a flood of made-up MACs.
	recentMax = 1 << 16
)

func newRecentSet() *recentSet { return &recentSet{at: map[string]time.Time{}} }

func (s *recentSet) add(mac string, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if now.Sub(s.lastSweep) > time.Minute {
		for m, t := range s.at {
			if now.Sub(t) > recentKeep {
				delete(s.at, m)
			}
		}
		s.lastSweep = now
	}
	// Full of MACs (a flood of made-up ones): forget the oldest, so a real
	// machine served just now is still let in. The queue holds every
	// addition in order; an entry whose MAC was added again since is stale.
	for len(s.at) >= recentMax && len(s.order) > 0 {
		old := s.order[0]
		s.order = s.order[1:]
		if t, ok := s.at[old.mac]; ok && t.Equal(old.at) {
			delete(s.at, old.mac)
		}
	}
	s.at[mac] = now
	s.order = append(s.order, recentEntry{mac, now})
	if len(s.order) > 4*recentMax { // drop stale entries now and then
		kept := s.order[:0]
		for _, e := range s.order {
			if t, ok := s.at[e.mac]; ok && t.Equal(e.at) {
				kept = append(kept, e)
			}
		}
		s.order = kept
	}
}

type recentEntry struct {
	mac string
	at  time.Time
}

// since reports whether mac was added at or after t.
func (s *recentSet) since(mac string, t time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	at, ok := s.at[mac]
	return ok && !at.Before(t)
}
