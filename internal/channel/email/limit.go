package email

import (
	"context"
	"math"
	"slices"
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
	b.refill(now)
	b.tokens--
	if b.tokens >= 0 {
		return 0
	}
	return time.Duration(-b.tokens / b.rate * float64(time.Second))
}

func (b *bucket) refill(now time.Time) {
	if now.After(b.last) {
		b.tokens = math.Min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
		b.last = now
	}
}

// setRate changes the rate from now on, after crediting the time passed at the old one.
func (b *bucket) setRate(rate float64, now time.Time) {
	b.refill(now)
	b.rate = rate
	b.burst = math.Max(1, rate/10)
	b.tokens = math.Min(b.tokens, b.burst)
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
	// Conns caps named domains at a number of messages in progress at once:
	// from the envelope's first command to the server's final answer, across
	// every connection to every relay. It is the most connections a relay
	// that forwards as it receives would open to the domain.
	Conns map[string]int
	// DefaultConns caps every domain not in Conns, each on its own; 0 means
	// no cap.
	DefaultConns int
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
	share   float64   // this node's part of the configured rates (SetShare)
	swept   time.Time // when the states no longer needed were last dropped (sweep)

	// slots caps the messages in progress per domain, when Conns or
	// DefaultConns are set; nil otherwise, and then costs nothing.
	slots *slots
}

type domainState struct {
	b    bucket
	cap  float64  // configured cap, 0 = none
	slow slowdown // while the domain's server asks to slow down
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
	l := &DomainLimiter{cfg: cfg, clock: clock, domains: map[string]*domainState{}, share: 1}
	if len(cfg.Conns) > 0 || cfg.DefaultConns > 0 {
		l.slots = &slots{caps: cfg.Conns, def: cfg.DefaultConns, clock: clock, recover: cfg.Recover, share: 1, domains: map[string]*slotState{}}
	}
	return l
}

// capOf returns this node's share of domain's configured rate; l.mu must be held.
func (l *DomainLimiter) capOf(domain string) float64 {
	if r, ok := l.cfg.Rates[domain]; ok {
		return r * l.share
	}
	return l.cfg.Default * l.share
}

// SetShare sets this node's part of every rate and every cap on messages in progress, in
// (0, 1], for an installation of several nodes (channel.Shared). A domain's current rate,
// throttled or not, moves in proportion; a cap on messages in progress is rounded up, and is
// at least 1.
func (l *DomainLimiter) SetShare(share float64) {
	if !(share > 0 && share <= 1) {
		share = 1
	}
	l.mu.Lock()
	now := l.clock.Now()
	old := l.share
	l.share = share
	for dom, st := range l.domains {
		st.cap = l.capOf(dom)
		st.slow.scale(share / old)
		st.b.setRate(st.b.rate*share/old, now)
	}
	l.mu.Unlock()
	if l.slots != nil {
		l.slots.setShare(share)
	}
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
		st = &domainState{b: newBucket(c, now), cap: c}
		l.domains[domain] = st
	}
	if st.slow.on() && l.recover(st, now) {
		delete(l.domains, domain)
		return nil
	}
	return st
}

// recover raises a throttled rate by half for each quiet period passed; it
// reports whether an uncapped domain has recovered enough to lose its limit.
func (l *DomainLimiter) recover(st *domainState, now time.Time) (lifted bool) {
	before := st.slow.rate
	switch ended := st.slow.recover(now, l.cfg.Recover, 1.5); {
	case ended && st.cap <= 0:
		return true
	case ended:
		st.b.setRate(st.cap, now)
	case st.slow.rate != before:
		st.b.setRate(st.slow.rate, now)
	}
	return false
}

// Reserve books one message to domain and returns how long the caller must
// wait before sending it (0: at once). A caller that then decides not to
// send calls Cancel.
func (l *DomainLimiter) Reserve(domain string) time.Duration {
	l.mu.Lock()
	now := l.clock.Now()
	due := now.Sub(l.swept) >= sweepEvery
	if due {
		l.swept = now
		l.sweep(now)
	}
	var wait time.Duration
	if st := l.state(domain, now); st != nil {
		wait = st.b.reserve(now)
	}
	l.mu.Unlock()
	if due && l.slots != nil {
		l.slots.sweep()
	}
	return wait
}

// sweepEvery is how often the states of domains no longer sent to are dropped: with a
// default cap (a "*" rate, or DefaultConns), every domain ever sent to would otherwise keep
// one for the life of the process, and a list of a million domains holds hundreds of
// thousands.
const sweepEvery = time.Minute

// sweep drops the rate states a domain would get back as they are: not slowed down (after
// applying the recovery due) and with a full bucket. l.mu is held.
func (l *DomainLimiter) sweep(now time.Time) {
	for dom := range l.domains {
		st := l.state(dom, now) // applies recovery, and drops a lifted one
		if st == nil || st.slow.on() {
			continue
		}
		if st.b.refill(now); st.b.tokens >= st.b.burst {
			delete(l.domains, dom)
		}
	}
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
// 451): the domain's rate is halved, and its cap on messages in progress if
// it has one, each at most once per second.
func (l *DomainLimiter) Throttle(domain string) {
	if l.slots != nil {
		l.slots.throttle(domain)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock.Now()
	st := l.state(domain, now)
	if st == nil { // not limited until now: down to Start, lifted again at 20 × Start
		st = &domainState{}
		start := l.cfg.Start * l.share
		st.slow.cut(now, start, 20*start, l.cfg.Min)
		st.b = newBucket(st.slow.rate, now)
		l.domains[domain] = st
		return
	}
	if st.slow.cut(now, st.cap/2, st.cap, l.cfg.Min) {
		st.b.setRate(st.slow.rate, now)
	}
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

// InProgress returns how many messages to domain hold one of its slots, 0
// when the domain's messages in progress are not capped.
func (l *DomainLimiter) InProgress(domain string) int {
	if l.slots == nil {
		return 0
	}
	l.slots.mu.Lock()
	defer l.slots.mu.Unlock()
	if st := l.slots.domains[domain]; st != nil {
		return st.inUse
	}
	return 0
}

// slots is a counting semaphore per capped domain. A domain's state exists
// only while it has messages in progress or waiting, or a cap cut by
// throttling, so the map holds the domains being sent to, not every domain
// ever seen. A freed slot is handed to the longest waiter, so a steady stream
// of new messages cannot starve it.
//
// Like the rates, a domain's cap slows down when its server answers 421, 450
// or 451 (halved, at most once a second, down to 1) and recovers after: one
// more slot for each quiet period (DomainLimits.Recover) until the configured
// cap is back.
type slots struct {
	caps    map[string]int
	def     int
	clock   Clock
	recover time.Duration

	mu      sync.Mutex
	share   float64
	domains map[string]*slotState
}

type slotState struct {
	inUse   int
	waiters []chan struct{} // closed when handed a slot
	cut     int             // the cap after throttling, below the configured one; 0: not cut
	changed time.Time       // when cut last moved
}

// base returns this node's share of domain's configured cap, 0 when it has none.
func (s *slots) base(domain string) int {
	c, ok := s.caps[domain]
	if !ok {
		c = s.def
	}
	if c <= 0 {
		return 0
	}
	return max(1, int(math.Ceil(float64(c)*s.share-1e-9)))
}

// capOf returns domain's cap now, 0 when it has none; s.mu must be held.
func (s *slots) capOf(domain string) int {
	c := s.base(domain)
	st := s.domains[domain]
	if c == 0 || st == nil || st.cut == 0 {
		return c
	}
	if steps := int(s.clock.Now().Sub(st.changed) / s.recover); steps > 0 {
		st.cut += steps
		st.changed = st.changed.Add(time.Duration(steps) * s.recover)
	}
	if st.cut >= c {
		st.cut = 0
		return c
	}
	return st.cut
}

// throttle halves domain's cap after a 421, 450 or 451, at most once a second.
func (s *slots) throttle(domain string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.capOf(domain)
	if c == 0 {
		return
	}
	now := s.clock.Now()
	st := s.domains[domain]
	if st == nil {
		st = &slotState{}
		s.domains[domain] = st
	}
	if st.cut > 0 && now.Sub(st.changed) < throttleDebounce {
		return
	}
	st.cut, st.changed = max(1, c/2), now
}

// grant hands the slots a larger cap frees to waiters; s.mu must be held.
func (s *slots) grant(domain string, st *slotState) {
	for c := s.capOf(domain); st.inUse < c && len(st.waiters) > 0; st.inUse++ {
		close(st.waiters[0])
		st.waiters = slices.Delete(st.waiters, 0, 1)
	}
}

// limit returns this node's share of domain's cap, 0 when it has none.
func (s *slots) limit(domain string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.capOf(domain)
}

// setShare sets this node's part of every cap, handing slots a larger cap frees to waiters.
func (s *slots) setShare(share float64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.share
	s.share = share
	for dom, st := range s.domains {
		if st.cut > 0 { // a cut cap moves in proportion, as a throttled rate does
			st.cut = max(1, int(math.Ceil(float64(st.cut)*share/old-1e-9)))
		}
		s.grant(dom, st)
	}
}

// tryAcquire takes one of domain's slots if one is free, or when the domain
// is not capped.
func (s *slots) tryAcquire(domain string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.capOf(domain)
	if c <= 0 {
		return true
	}
	st := s.domains[domain]
	if st == nil {
		st = &slotState{}
		s.domains[domain] = st
	}
	if st.inUse < c && len(st.waiters) == 0 {
		st.inUse++
		return true
	}
	return false
}

// acquire takes one of domain's slots, waiting at most wait for one to be
// freed; it reports whether it got one.
func (s *slots) acquire(ctx context.Context, domain string, wait time.Duration) bool {
	if s.tryAcquire(domain) {
		return true
	}
	ready := make(chan struct{})
	s.mu.Lock()
	st := s.domains[domain]
	if st == nil || st.inUse < s.capOf(domain) && len(st.waiters) == 0 {
		// Freed in between: take it as tryAcquire would.
		if st == nil {
			st = &slotState{}
			s.domains[domain] = st
		}
		st.inUse++
		s.mu.Unlock()
		return true
	}
	st.waiters = append(st.waiters, ready)
	s.mu.Unlock()

	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-ready:
		return true
	case <-timer.C:
	case <-ctx.Done():
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if i := slices.Index(st.waiters, ready); i >= 0 {
		st.waiters = slices.Delete(st.waiters, i, i+1)
		s.forget(domain, st)
		return false
	}
	return true // handed a slot while giving up: keep it
}

// release frees one of domain's slots, handing it to the longest waiter.
func (s *slots) release(domain string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.domains[domain]
	if st == nil {
		return // not capped
	}
	if len(st.waiters) > 0 && st.inUse <= s.capOf(domain) {
		close(st.waiters[0])
		st.waiters = slices.Delete(st.waiters, 0, 1)
		s.grant(domain, st) // the cap may have recovered meanwhile
		return
	}
	st.inUse--
	s.grant(domain, st)
	s.forget(domain, st)
}

// sweep drops the states of domains whose cut cap has recovered and that
// nothing holds or waits for.
func (s *slots) sweep() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for dom, st := range s.domains {
		s.capOf(dom) // applies the recovery due
		s.forget(dom, st)
	}
}

// forget drops a domain's state once nothing holds or waits for a slot and
// its cap is not cut; s.mu must be held.
func (s *slots) forget(domain string, st *slotState) {
	if st.inUse == 0 && len(st.waiters) == 0 && st.cut == 0 {
		delete(s.domains, domain)
	}
}

// throttledAndShare returns how many domains are throttled now, and this node's share.
func (l *DomainLimiter) throttledAndShare() (int, float64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, now := 0, l.clock.Now()
	for dom := range l.domains {
		if st := l.state(dom, now); st != nil && st.slow.on() { // state applies recovery first
			n++
		}
	}
	return n, l.share
}
