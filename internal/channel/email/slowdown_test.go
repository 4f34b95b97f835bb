package email

import (
	"testing"
	"time"
)

// TestSlowdown: the first cut sets its rate and where recovery ends; later ones halve, at most
// once a second, never below the floor, and one at the floor puts recovery off; every quiet
// period passed counts at once, and the slowdown ends back where it started.
func TestSlowdown(t *testing.T) {
	t0 := time.UnixMilli(1_000_000)
	var s slowdown
	if !s.cut(t0, 40, 80, 5) || s.rate != 40 || s.upto != 80 || !s.on() {
		t.Fatalf("first cut: %+v, want 40 up to 80", s)
	}
	if s.cut(t0.Add(500*time.Millisecond), 999, 999, 5) || s.rate != 40 {
		t.Fatalf("a cut within the debounce moved it: %+v", s)
	}
	at := t0.Add(throttleDebounce)
	for _, want := range []float64{20, 10, 5} {
		if !s.cut(at, 999, 999, 5) || s.rate != want || s.upto != 80 {
			t.Fatalf("cut at %v: %+v, want %v up to 80", at.Sub(t0), s, want)
		}
		at = at.Add(throttleDebounce)
	}
	if s.cut(at, 999, 999, 5) || s.rate != 5 || !s.changed.Equal(at) {
		t.Fatalf("a cut at the floor: %+v, want 5, changed at %v", s, at.Sub(t0))
	}
	if s.recover(at.Add(9*time.Second), 10*time.Second, 2) || s.rate != 5 {
		t.Fatalf("recovered before a quiet period: %+v", s)
	}
	if s.recover(at.Add(25*time.Second), 10*time.Second, 2) || s.rate != 20 {
		t.Fatalf("two quiet periods at once: %+v, want 20", s)
	}
	s.scale(0.5)
	if s.rate != 10 || s.upto != 40 {
		t.Fatalf("scaled by half: %+v, want 10 up to 40", s)
	}
	if !s.recover(at.Add(time.Hour), 10*time.Second, 2) || s.on() {
		t.Fatalf("an hour later: %+v, want ended", s)
	}
	if s.recover(at.Add(2*time.Hour), 10*time.Second, 2) {
		t.Fatal("a slowdown not on recovered")
	}
}
