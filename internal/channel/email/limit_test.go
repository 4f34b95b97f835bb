package email

import (
	"testing"
	"time"
)

func TestDomainLimiterThrottleAndRecover(t *testing.T) {
	clock := newFakeClock()
	l := NewDomainLimiter(DomainLimits{Start: 40, Min: 5, Recover: 10 * time.Second}, clock)

	if d := l.Reserve("example.com"); d != 0 || l.Rate("example.com") != 0 {
		t.Fatalf("unthrottled domain: wait %v, rate %v", d, l.Rate("example.com"))
	}
	l.Throttle("example.com")
	if r := l.Rate("example.com"); r != 40 {
		t.Fatalf("rate after first throttle = %v, want Start 40", r)
	}
	// A burst of answers within a second counts once.
	l.Throttle("example.com")
	l.Throttle("example.com")
	if r := l.Rate("example.com"); r != 40 {
		t.Fatalf("rate after debounced throttles = %v, want 40", r)
	}
	clock.Advance(2 * time.Second)
	l.Throttle("example.com")
	if r := l.Rate("example.com"); r != 20 {
		t.Fatalf("rate after second throttle = %v, want 20", r)
	}
	for range 5 {
		clock.Advance(2 * time.Second)
		l.Throttle("example.com")
	}
	if r := l.Rate("example.com"); r != 5 {
		t.Fatalf("rate = %v, want the floor 5", r)
	}

	// At 5/s with a burst of 1, the second message waits 200 ms.
	clock.Advance(time.Second)
	if d := l.Reserve("example.com"); d != 0 {
		t.Errorf("first reserve waits %v", d)
	}
	if d := l.Reserve("example.com"); d != 200*time.Millisecond {
		t.Errorf("second reserve waits %v, want 200ms", d)
	}
	l.Cancel("example.com")
	if d := l.Reserve("example.com"); d != 200*time.Millisecond {
		t.Errorf("reserve after cancel waits %v, want 200ms", d)
	}

	// Other domains are untouched.
	if d := l.Reserve("other.example"); d != 0 {
		t.Errorf("other domain waits %v", d)
	}

	// Recovery: ×1.5 per quiet 10 s, until above 20 × Start the limit goes.
	clock.Advance(10 * time.Second)
	if r := l.Rate("example.com"); r != 7.5 {
		t.Errorf("rate after one quiet period = %v, want 7.5", r)
	}
	clock.Advance(30 * time.Second)
	if r := l.Rate("example.com"); r != 7.5*1.5*1.5*1.5 {
		t.Errorf("rate after four quiet periods = %v", r)
	}
	clock.Advance(10 * time.Minute)
	if r := l.Rate("example.com"); r != 0 {
		t.Errorf("rate after a long quiet time = %v, want no limit", r)
	}
}

func TestDomainLimiterConfiguredCap(t *testing.T) {
	clock := newFakeClock()
	l := NewDomainLimiter(DomainLimits{Rates: map[string]float64{"gmail.com": 100}, Recover: time.Minute}, clock)
	if r := l.Rate("gmail.com"); r != 100 {
		t.Fatalf("rate = %v, want 100", r)
	}
	// Burst is a tenth of a second's worth: 10 at once, then paced.
	for i := range 10 {
		if d := l.Reserve("gmail.com"); d != 0 {
			t.Fatalf("reserve %d waits %v", i, d)
		}
	}
	if d := l.Reserve("gmail.com"); d != 10*time.Millisecond {
		t.Errorf("11th reserve waits %v, want 10ms", d)
	}
	l.Throttle("gmail.com")
	if r := l.Rate("gmail.com"); r != 50 {
		t.Errorf("rate after throttle = %v, want 50", r)
	}
	clock.Advance(2 * time.Minute)
	if r := l.Rate("gmail.com"); r != 100 {
		t.Errorf("rate after recovery = %v, want the cap 100 (never above)", r)
	}
}
