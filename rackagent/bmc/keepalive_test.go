package bmc

import (
	"testing"
	"time"
)

// The wait before closing a go-ipmi client keeps the close out of its
// keepalive's sends: from each tick (every 30 s after Connect) until the
// send's longest wait is over, and from just before a tick (a close
// then may still run at it).
func TestKeepaliveWait(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	s := time.Second
	for _, c := range []struct {
		at   time.Duration // after Connect
		want time.Duration
	}{
		{0, 0},
		{10 * s, 0},
		{28 * s, 0},                   // before the first tick, the close done by it
		{29 * s, 1*s + keepaliveBusy}, // a close now could run into the tick
		{30 * s, keepaliveBusy},       // the keepalive sends
		{32 * s, keepaliveBusy - 2*s}, // may still be waiting for an answer
		{30*s + keepaliveBusy, 0},     // done
		{45 * s, 0},                   // between ticks
		{60*s + 100*time.Millisecond, keepaliveBusy - 100*time.Millisecond}, // the second tick
		{89 * s, 1*s + keepaliveBusy},
	} {
		got := keepaliveWait(t0, t0.Add(c.at))
		if got != c.want {
			t.Errorf("%s after Connect: wait %s, want %s", c.at, got, c.want)
		}
		// Whatever the wait, the close then starts outside every window.
		if after := keepaliveWait(t0, t0.Add(c.at+got)); after != 0 {
			t.Errorf("%s after Connect, waited %s: still %s to wait", c.at, got, after)
		}
	}
	if keepaliveEvery != 30*time.Second {
		t.Errorf("go-ipmi's keepalive interval is %s, the windows above assume 30 s", keepaliveEvery)
	}
}
