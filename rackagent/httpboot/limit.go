package httpboot

import (
	"net/netip"
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

// recentSet remembers the MACs served the discovery script: when, to
// which source address, and whether the inventory that boot allows is
// still to come (armed) or was taken (and its body's hash, so a retry of
// the same POST is answered again without queuing it twice).
type recentSet struct {
	mu        sync.Mutex
	at        map[string]*served
	lastSweep time.Time
	order     []recentEntry // additions, oldest first
}

type served struct {
	at    time.Time
	ip    netip.Addr // the address the script was served to
	armed bool       // the boot's inventory is still to come
	sum   [32]byte   // the accepted inventory's body
	taken time.Time  // when it was accepted
}

const (
	// recentKeep is how long a MAC is remembered at all.
	recentKeep = time.Hour
	// recentMax bounds the set against a flood of made-up MACs.
	recentMax = 1 << 16
	// repeatWindow is how long after an inventory was accepted the same
	// body is answered 202 again (a retry after a lost answer) without
	// being queued again.
	repeatWindow = 2 * time.Minute
)

func newRecentSet() *recentSet { return &recentSet{at: map[string]*served{}} }

// add records that mac was served the discovery script at now, from ip,
// and arms its inventory.
func (s *recentSet) add(mac string, ip netip.Addr, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if now.Sub(s.lastSweep) > time.Minute {
		for m, e := range s.at {
			if now.Sub(e.at) > recentKeep {
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
		if e, ok := s.at[old.mac]; ok && e.at.Equal(old.at) {
			delete(s.at, old.mac)
		}
	}
	s.at[mac] = &served{at: now, ip: ip.Unmap(), armed: true}
	s.order = append(s.order, recentEntry{mac, now})
	if len(s.order) > 4*recentMax { // drop stale entries now and then
		kept := s.order[:0]
		for _, e := range s.order {
			if x, ok := s.at[e.mac]; ok && x.at.Equal(e.at) {
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
	e, ok := s.at[mac]
	return ok && !e.at.Before(t)
}

// servedTo is the address mac was last served the discovery script to,
// if that was at or after t.
func (s *recentSet) servedTo(mac string, t time.Time) (netip.Addr, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.at[mac]
	if !ok || e.at.Before(t) {
		return netip.Addr{}, false
	}
	return e.ip, true
}

// claim outcomes.
const (
	claimNew    = iota // the boot's inventory: queue it
	claimRepeat        // the same body again, soon after: answer, do not queue
	claimTaken         // the boot's inventory was already taken
)

// claim takes mac's armed inventory slot for a body hashing to sum, at
// now. One inventory per served discovery boot; the slot is armed again
// only by serving the script again.
func (s *recentSet) claim(mac string, sum [32]byte, now time.Time) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.at[mac]
	switch {
	case !ok:
		return claimTaken
	case e.armed:
		e.armed, e.sum, e.taken = false, sum, now
		return claimNew
	case e.sum == sum && now.Sub(e.taken) < repeatWindow:
		return claimRepeat
	}
	return claimTaken
}

// release arms mac's inventory slot again if it was taken by a body
// hashing to sum (whose report could then not be queued).
func (s *recentSet) release(mac string, sum [32]byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.at[mac]; ok && !e.armed && e.sum == sum {
		e.armed, e.sum, e.taken = true, [32]byte{}, time.Time{}
	}
}

// eventLimiter lets through at most one boot event per node and event
// kind per interval: boot events are state changes (the node's last
// boot), and a client fetching a script in a loop must not become a
// stream of reports.
type eventLimiter struct {
	every time.Duration

	mu        sync.Mutex
	last      map[string]time.Time
	lastSweep time.Time
}

// eventLimiterMax bounds the keys remembered (known nodes times events).
const eventLimiterMax = 1 << 16

func newEventLimiter(every time.Duration) *eventLimiter {
	return &eventLimiter{every: every, last: map[string]time.Time{}}
}

// allow reports whether an event of node is to be reported at now.
func (l *eventLimiter) allow(node, event string, now time.Time) bool {
	key := node + "\x00" + event
	l.mu.Lock()
	defer l.mu.Unlock()
	if t, ok := l.last[key]; ok && now.Sub(t) < l.every {
		return false
	}
	if len(l.last) >= eventLimiterMax || now.Sub(l.lastSweep) > time.Minute {
		for k, t := range l.last {
			if now.Sub(t) >= l.every {
				delete(l.last, k)
			}
		}
		l.lastSweep = now
		if len(l.last) >= eventLimiterMax {
			return false
		}
	}
	l.last[key] = now
	return true
}
