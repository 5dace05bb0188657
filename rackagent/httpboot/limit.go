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
	if now.Sub(s.lastSweep) > time.Minute || len(s.at) >= recentMax {
		for m, t := range s.at {
			if now.Sub(t) > recentKeep {
				delete(s.at, m)
			}
		}
		s.lastSweep = now
	}
	if _, ok := s.at[mac]; !ok && len(s.at) >= recentMax {
		return // full of MACs from the last hour: refuse newcomers, keep the old
	}
	s.at[mac] = now
}

// since reports whether mac was added at or after t.
func (s *recentSet) since(mac string, t time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	at, ok := s.at[mac]
	return ok && !at.Before(t)
}
