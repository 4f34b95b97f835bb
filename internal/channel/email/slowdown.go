package email

import (
	"math"
	"time"
)

// slowdown is a rate that servers asking to slow down cut and quiet time restores, the way
// every adaptive rate here behaves (a recipient domain's, DomainLimiter; a relay's,
// relaythrottle.go): each answer asking to slow down halves it, at most once a
// throttleDebounce and down to a floor; each quiet period after its last change multiplies
// it by a factor, every period passed at once (a rate cut an hour ago is not still cut),
// until it is back where it was first cut from, and the slowdown ends.
type slowdown struct {
	rate    float64   // the rate in force, messages per second; 0: not slowed down
	upto    float64   // where recovery ends: the rate it was first cut from
	changed time.Time // when rate last moved, or last asked to go below the floor
}

// on reports whether the rate is cut.
func (s *slowdown) on() bool { return s.rate > 0 }

// cut slows down after an answer asking to: to first, the first time, with recovery ending
// at upto; to half the rate in force after, at most once a throttleDebounce, never below
// floor. An answer at the floor already puts recovery off. It reports whether the rate moved.
func (s *slowdown) cut(now time.Time, first, upto, floor float64) bool {
	switch {
	case !s.on():
		s.rate, s.upto, s.changed = math.Max(floor, first), upto, now
		return true
	case s.rate <= floor:
		s.changed = now // still asked to slow down: no recovery yet
		return false
	case now.Sub(s.changed) < throttleDebounce:
		return false
	}
	s.rate, s.changed = math.Max(floor, s.rate/2), now
	return true
}

// recover multiplies the rate by factor for each period passed since it last moved and
// ends the slowdown once the rate is back at upto. It reports whether the slowdown ended.
func (s *slowdown) recover(now time.Time, period time.Duration, factor float64) (ended bool) {
	if !s.on() {
		return false
	}
	steps := int(now.Sub(s.changed) / period)
	if steps <= 0 {
		return false
	}
	s.rate *= math.Pow(factor, float64(min(steps, 60)))
	s.changed = s.changed.Add(time.Duration(steps) * period)
	if s.rate >= s.upto {
		s.end()
		return true
	}
	return false
}

// end ends the slowdown.
func (s *slowdown) end() { *s = slowdown{} }

// scale moves the rate and where its recovery ends in proportion, when this node's share of
// the configured rates changes.
func (s *slowdown) scale(f float64) { s.rate, s.upto = s.rate*f, s.upto*f }
