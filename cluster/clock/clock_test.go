package clock

import (
	"testing"
	"time"
)

func TestFakeTimersFireInOrder(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f := NewFake(t0)
	a := f.After(2 * time.Second)
	b := f.After(time.Second)
	tk := f.NewTicker(500 * time.Millisecond)
	if !f.BlockUntil(3, time.Second) {
		t.Fatal("waiters not registered")
	}
	select {
	case <-a:
		t.Fatal("fired before its time")
	default:
	}
	f.Advance(time.Second)
	if got := <-b; !got.Equal(t0.Add(time.Second)) {
		t.Fatalf("b fired at %v", got)
	}
	select {
	case <-a:
		t.Fatal("a fired early")
	default:
	}
	if got := <-tk.C(); !got.After(t0) {
		t.Fatalf("tick at %v", got)
	}
	f.Advance(time.Second)
	if got := <-a; !got.Equal(t0.Add(2 * time.Second)) {
		t.Fatalf("a fired at %v", got)
	}
	tk.Stop()
	if f.Waiters() != 0 {
		t.Fatalf("%d waiters after all fired and the ticker stopped", f.Waiters())
	}
	if !f.Now().Equal(t0.Add(2 * time.Second)) {
		t.Fatalf("now = %v", f.Now())
	}
	f.Set(t0) // never backwards
	if !f.Now().Equal(t0.Add(2 * time.Second)) {
		t.Fatalf("clock went backwards to %v", f.Now())
	}
}
