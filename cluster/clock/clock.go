// Package clock is the one clock of Metalfleet's daemons: Real reads the
// system clock, and Fake is moved by tests, so timeouts, lease ends and
// rate limits are tested without sleeping.
package clock

import (
	"sort"
	"sync"
	"time"
)

// Clock tells the time and makes timers.
type Clock interface {
	Now() time.Time
	// After returns a channel that receives the time once d has passed.
	After(d time.Duration) <-chan time.Time
	// NewTicker returns a ticker that ticks every d.
	NewTicker(d time.Duration) Ticker
}

// Ticker is time.Ticker behind an interface.
type Ticker interface {
	C() <-chan time.Time
	Stop()
}

// Real is the system clock.
var Real Clock = realClock{}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }
func (realClock) NewTicker(d time.Duration) Ticker       { return realTicker{time.NewTicker(d)} }

type realTicker struct{ t *time.Ticker }

func (r realTicker) C() <-chan time.Time { return r.t.C }
func (r realTicker) Stop()               { r.t.Stop() }

// Or returns c, or Real if c is nil.
func Or(c Clock) Clock {
	if c == nil {
		return Real
	}
	return c
}

// Fake is a clock that moves only when Advance or Set is called. Timers
// and tickers fire, in time order, as the clock passes them.
type Fake struct {
	mu      sync.Mutex
	now     time.Time
	waiters []*waiter
	changed chan struct{} // closed and replaced when a waiter is added
}

type waiter struct {
	at     time.Time
	every  time.Duration // tickers
	ch     chan time.Time
	closed bool
}

// NewFake returns a fake clock at t.
func NewFake(t time.Time) *Fake { return &Fake{now: t, changed: make(chan struct{})} }

// Now is the fake time.
func (f *Fake) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

// After fires once the clock has been advanced by d.
func (f *Fake) After(d time.Duration) <-chan time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	w := &waiter{at: f.now.Add(d), ch: make(chan time.Time, 1)}
	if d <= 0 {
		w.ch <- f.now
		return w.ch
	}
	f.add(w)
	return w.ch
}

// NewTicker ticks every d of fake time; ticks a slow reader misses are
// dropped, as with time.Ticker.
func (f *Fake) NewTicker(d time.Duration) Ticker {
	if d <= 0 {
		panic("clock: non-positive ticker interval")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	w := &waiter{at: f.now.Add(d), every: d, ch: make(chan time.Time, 1)}
	f.add(w)
	return &fakeTicker{f: f, w: w}
}

func (f *Fake) add(w *waiter) {
	f.waiters = append(f.waiters, w)
	close(f.changed)
	f.changed = make(chan struct{})
}

type fakeTicker struct {
	f *Fake
	w *waiter
}

func (t *fakeTicker) C() <-chan time.Time { return t.w.ch }
func (t *fakeTicker) Stop() {
	t.f.mu.Lock()
	t.w.closed = true
	t.f.mu.Unlock()
}

// Advance moves the clock by d, firing every timer and tick it passes.
func (f *Fake) Advance(d time.Duration) { f.Set(f.Now().Add(d)) }

// Set moves the clock to t (never backwards).
func (f *Fake) Set(t time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if t.Before(f.now) {
		return
	}
	for {
		sort.SliceStable(f.waiters, func(i, j int) bool { return f.waiters[i].at.Before(f.waiters[j].at) })
		if len(f.waiters) == 0 || f.waiters[0].at.After(t) {
			break
		}
		w := f.waiters[0]
		f.waiters = f.waiters[1:]
		if w.closed {
			continue
		}
		f.now = w.at
		select {
		case w.ch <- w.at:
		default: // a tick nobody read: dropped
		}
		if w.every > 0 {
			w.at = w.at.Add(w.every)
			f.waiters = append(f.waiters, w)
		}
	}
	f.now = t
}

// Waiters is how many timers and tickers are pending; BlockUntil waits
// for a component under test to have armed its timers before a test
// advances the clock.
func (f *Fake) Waiters() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, w := range f.waiters {
		if !w.closed {
			n++
		}
	}
	return n
}

// BlockUntil returns once at least n timers or tickers are pending, or
// after limit (real time) with false.
func (f *Fake) BlockUntil(n int, limit time.Duration) bool {
	deadline := time.After(limit)
	for {
		f.mu.Lock()
		k := 0
		for _, w := range f.waiters {
			if !w.closed {
				k++
			}
		}
		ch := f.changed
		f.mu.Unlock()
		if k >= n {
			return true
		}
		select {
		case <-ch:
		case <-deadline:
			return false
		}
	}
}
