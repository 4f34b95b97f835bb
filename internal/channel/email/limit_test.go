package email

import (
	"strings"
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

func TestParseDomainLimits(t *testing.T) {
	l, err := ParseDomainLimits(" Gmail.com=50, yahoo.co.uk = 2.5 ,*=200,Bücher.de=3,xn--bcher-kva.de=4")
	if err != nil {
		t.Fatal(err)
	}
	if l.Default != 200 || len(l.Rates) != 4 || l.Rates["gmail.com"] != 50 || l.Rates["yahoo.co.uk"] != 2.5 ||
		l.Rates["bücher.de"] != 3 || l.Rates["xn--bcher-kva.de"] != 4 {
		t.Fatalf("got %+v", l)
	}
	// The limiter caps what was parsed: gmail.com at 50 a second, so its 6th message at once waits.
	lim := NewDomainLimiter(l, nil)
	var waited bool
	for range 6 {
		waited = lim.Reserve("gmail.com") > 0
	}
	if !waited {
		t.Fatal("gmail.com was not capped")
	}
	for _, c := range []struct{ in, want string }{
		{"gmail.com", `entry 1 "gmail.com": want domain=messages-per-second`},
		{"gmail.com=fast", `entry 1 "gmail.com=fast": "fast" is not a positive number`},
		{"a.com=1,gmail.com=0", `entry 2 "gmail.com=0": "0" is not a positive number`},
		{"gmail.com=-3", `"-3" is not a positive number`},
		{"gmail.com=Inf", `"Inf" is not a positive number`},
		{"localhost=5", `"localhost" is not a domain name`},
		{"bad_domain.com=5", `"bad_domain.com" is not a domain name`},
		{"-x.com=5", `"-x.com" is not a domain name`},
		{"a..com=5", `"a..com" is not a domain name`},
		{"a.com=5,A.com=6", `entry 2 "A.com=6": a.com is capped twice`},
		{"*=5,*=6", `entry 2 "*=6": * is capped twice`},
	} {
		_, err := ParseDomainLimits(c.in)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: got %v, want an error with %q", c.in, err, c.want)
		}
	}
}
