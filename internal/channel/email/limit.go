package email

import (
	"math"
	"sync"
	"time"
)

// Clock tells the time. Limits and back-offs read it, so tests can move time
// by hand instead of sleeping.
type Clock interface {
	Now() time.Time
}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// bucket is a token bucket; a zero rate means no limit.
type bucket struct {
	rate   float64
	burst  float64
	tokens float64
	last   time.Time
}

func newBucket(rate float64, now time.Time) bucket {
	burst := math.Max(1, rate/10)
	return bucket{rate: rate, burst: burst, tokens: burst, last: now}
}

// reserve takes a token and returns how long to wait before using it.
func (b *bucket) reserve(now time.Time) time.Duration {
	if b.rate <= 0 {
		return 0
	}
	if now.After(b.last) {
		b.tokens = math.Min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
		b.last = now
	}
	b.tokens--
	if b.tokens >= 0 {
		return 0
	}
	return time.Duration(-b.tokens / b.rate * float64(time.Second))
}

// cancel gives back a token reserved but not used.
func (b *bucket) cancel() {
	if b.rate > 0 {
		b.tokens++
	}
}

// DomainLimits configures the per-recipient-domain limiter.
type DomainLimits struct {
	// Rates caps named domains (lower case, e.g. "gmail.com") at a steady
	// number of messages per second.
	Rates map[string]float64
	// Default caps every domain not in Rates; 0 means no cap.
	Default float64
	// Start is the rate a domain without a cap falls to the first time it
	// answers 421, 450 or 451; 0 means 50 msgs/s.
	Start float64
	// Min is the lowest rate throttling goes down to; 0 means 0.2 msgs/s.
	Min float64
	// Recover is how long a domain must go without a throttling answer
	// before its rate rises by half again; 0 means 30 s. An uncapped domain
	// whose rate climbs back above 20 × Start is no longer limited.
	Recover time.Duration
}

// throttleDebounce keeps a burst of 4xx answers, which pipelined
// connections produce together, from counting as many separate signals.
const throttleDebounce = time.Second

// DomainLimiter paces messages per recipient domain. It halves a domain's
// rate (additive-increase, multiplicative-decrease style) each time the
// domain's server answers 421, 450 or 451, and raises it gradually after a
// quiet period. It is safe for concurrent use.
type DomainLimiter struct {
	cfg   DomainLimits
	clock Clock

	mu      sync.Mutex
	domains map[string]*domainState
}

type domainState struct {
	b         bucket
	cap       float64 // configured cap, 0 = none
	throttled bool
	changed   time.Time // last rate change, for debounce and recovery
}

// NewDomainLimiter returns a limiter; a nil clock means the system clock.
func NewDomainLimiter(cfg DomainLimits, clock Clock) *DomainLimiter {
	if cfg.Start <= 0 {
		cfg.Start = 50
	}
	if cfg.Min <= 0 {
		cfg.Min = 0.2
	}
	if cfg.Recover <= 0 {
		cfg.Recover = 30 * time.Second
	}
	if clock == nil {
		clock = systemClock{}
	}
	return &DomainLimiter{cfg: cfg, clock: clock, domains: map[string]*domainState{}}
}

func (l *DomainLimiter) capOf(domain string) float64 {
	if r, ok := l.cfg.Rates[domain]; ok {
		return r
	}
	return l.cfg.Default
}

// state returns the domain's state, creating it only when the domain is
// limited at all; l.mu must be held.
func (l *DomainLimiter) state(domain string, now time.Time) *domainState {
	st := l.domains[domain]
	if st == nil {
		c := l.capOf(domain)
		if c <= 0 {
			return nil
		}
		st = &domainState{b: newBucket(c, now), cap: c, changed: now}
		l.domains[domain] = st
	}
	if st.throttled && l.recover(st, now) {
		delete(l.domains, domain)
		return nil
	}
	return st
}

// recover raises a throttled rate for the quiet periods passed; it reports
// whether an uncapped domain has recovered enough to lose its limit.
func (l *DomainLimiter) recover(st *domainState, now time.Time) (lifted bool) {
	steps := int(now.Sub(st.changed) / l.cfg.Recover)
	if steps <= 0 {
		return false
	}
	rate := st.b.rate * math.Pow(1.5, float64(steps))
	st.changed = st.changed.Add(time.Duration(steps) * l.cfg.Recover)
	switch {
	case st.cap > 0 && rate >= st.cap:
		st.b.rate, st.throttled = st.cap, false
	case st.cap <= 0 && rate >= 20*l.cfg.Start:
		return true
	default:
		st.b.rate = rate
	}
	st.b.burst = math.Max(1, st.b.rate/10)
	return false
}

// Reserve books one message to domain and returns how long the caller must
// wait before sending it (0: at once). A caller that then decides not to
// send calls Cancel.
func (l *DomainLimiter) Reserve(domain string) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock.Now()
	st := l.state(domain, now)
	if st == nil {
		return 0
	}
	return st.b.reserve(now)
}

// Cancel returns a reservation that was not used.
func (l *DomainLimiter) Cancel(domain string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if st := l.domains[domain]; st != nil {
		st.b.cancel()
	}
}

// Throttle records that domain's server asked us to slow down (421, 450,
// 451): the domain's rate is halved, at most once per second.
func (l *DomainLimiter) Throttle(domain string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock.Now()
	st := l.state(domain, now)
	if st == nil {
		st = &domainState{b: newBucket(l.cfg.Start, now), changed: now, throttled: true}
		l.domains[domain] = st
		return
	}
	if st.throttled && now.Sub(st.changed) < throttleDebounce {
		return
	}
	st.throttled = true
	st.changed = now
	st.b.rate = math.Max(l.cfg.Min, st.b.rate/2)
	st.b.burst = math.Max(1, st.b.rate/10)
	st.b.tokens = math.Min(st.b.tokens, st.b.burst)
}

// Rate returns the domain's current limit in messages per second, 0 when
// it is not limited.
func (l *DomainLimiter) Rate(domain string) float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if st := l.state(domain, l.clock.Now()); st != nil {
		return st.b.rate
	}
	return 0
}
