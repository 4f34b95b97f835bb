package email

import (
	"time"
)

// A relay asks to slow down the way recipient domains do, with 421, 450 or 451, when its own
// limit on the client's rate is reached (a provider's sending quota, a smarthost's anvil).
// Those answers are the relay's, not a recipient domain's, when they come to MAIL FROM, before
// any recipient is named, when their words say so (clientLimited), or to recipients of several
// domains at once: the relay's rate is then cut, on top of its configured rate= if any, and
// recovers when it stays quiet, a slowdown like a domain's (DomainLimiter.Throttle), doubling
// back each quiet period where a domain's grows by half.
const (
	// relayThrottleDomains distinct recipient domains answering a throttling code within
	// relayThrottleWindow make it the relay's.
	relayThrottleDomains = 3
	relayThrottleWindow  = 2 * time.Second
	// relayRecover is the quiet time after which a throttled relay's rate doubles, until it
	// no longer binds.
	relayRecover = 30 * time.Second
	// minRelayRate is the lowest rate a throttled relay is cut to, in messages per second:
	// 12 a minute, under the quotas of a minute that relays set lowest (Microsoft 365's SMTP
	// AUTH submission, 30 a minute; a smarthost's anvil).
	minRelayRate = 0.2
)

// relayThrottle is a relay's slow-down; the pool's mutex guards it.
type relayThrottle struct {
	slowdown       // from the rate it was sending at when first cut
	meter    meter // messages started, to know the rate being sent at
	// recent holds the domains that answered a throttling code lately, with when.
	recent map[string]time.Time
}

// meter counts events over the last second in ten slots of 100 ms.
type meter struct {
	slots [10]int
	at    [10]int64 // the 100 ms tick each slot counts
	first int64     // the tick of the first event, so that a meter younger than a second is not read low
}

func (m *meter) add(now time.Time) {
	tick := now.UnixMilli() / 100
	if m.first == 0 {
		m.first = tick
	}
	s := tick % 10
	if m.at[s] != tick {
		m.at[s], m.slots[s] = tick, 0
	}
	m.slots[s]++
}

// rate returns the events a second over the last second, or over the time since the first
// event when that is shorter (at least 100 ms).
func (m *meter) rate(now time.Time) float64 {
	tick := now.UnixMilli() / 100
	n := 0
	for s := range m.slots {
		if tick-m.at[s] < 10 {
			n += m.slots[s]
		}
	}
	ticks := min(10, max(1, tick-m.first+1))
	return float64(n) * 10 / float64(ticks)
}

// configuredRate is the relay's own rate= times this node's share, 0 for none. p.mu is held.
func (p *pool) configuredRate() float64 {
	return p.relay.Rate * p.share
}

// applyRate sets the pool's bucket to the lower of the configured rate and the throttled
// one. p.mu is held.
func (p *pool) applyRate(now time.Time) {
	r := p.configuredRate()
	if t := p.throttle.rate; t > 0 && (r == 0 || t < r) {
		r = t
	}
	if r != p.rate.rate {
		p.rate.setRate(r, now)
	}
}

// throttled records that the relay itself asked to slow down: its rate is halved from what it
// was sending at, at most once a second, down to minRelayRate. It returns the new rate, or 0
// when the answer did not change it (too soon after the last cut, or at the floor already),
// and whether it was the first cut. p.mu is held.
func (p *pool) throttled(now time.Time) (rate float64, first bool) {
	th := &p.throttle
	first = !th.on()
	var from float64
	if first {
		from = th.meter.rate(now)
		if c := p.configuredRate(); c > 0 && (from == 0 || c < from) {
			from = c
		}
	}
	if !th.cut(now, from/2, from, minRelayRate) {
		return 0, false
	}
	p.applyRate(now)
	return th.rate, first
}

// recovered doubles a throttled rate for each relayRecover passed without a throttling
// answer and ends the throttle once the rate is back where it was cut from, or the
// configured rate binds again. It reports whether the throttle ended. p.mu is held.
func (p *pool) recovered(now time.Time) bool {
	th := &p.throttle
	if !th.on() {
		return false
	}
	done := th.recover(now, relayRecover, 2)
	if c := p.configuredRate(); !done && c > 0 && th.rate >= c {
		th.end()
		done = true
	}
	p.applyRate(now)
	return done
}

// domainThrottled records that domain answered a throttling code and reports whether enough
// domains did lately for the answers to be the relay's. p.mu is held.
func (p *pool) domainThrottled(domain string, now time.Time) bool {
	th := &p.throttle
	if th.recent == nil {
		th.recent = map[string]time.Time{}
	}
	th.recent[domain] = now
	n := 0
	for d, at := range th.recent {
		if now.Sub(at) > relayThrottleWindow {
			delete(th.recent, d)
			continue
		}
		n++
	}
	if n >= relayThrottleDomains {
		clear(th.recent)
		return true
	}
	return false
}
