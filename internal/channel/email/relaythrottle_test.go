package email

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/channel"
	"github.com/heraldhq/herald/internal/channel/email/smtptest"
)

func TestMeter(t *testing.T) {
	var m meter
	t0 := time.UnixMilli(1_000_000)
	for i := range 50 {
		m.add(t0.Add(time.Duration(i) * 20 * time.Millisecond)) // 50 a second, for a second
	}
	if r := m.rate(t0.Add(990 * time.Millisecond)); r != 50 {
		t.Errorf("rate = %v, want 50", r)
	}
	if r := m.rate(t0.Add(1500 * time.Millisecond)); r < 20 || r > 30 {
		t.Errorf("half a second later: rate = %v, want about 25", r)
	}
	if r := m.rate(t0.Add(3 * time.Second)); r != 0 {
		t.Errorf("two seconds later: rate = %v, want 0", r)
	}
	// A young meter is not read low: 30 events in its first 300 ms are 100 a second.
	var y meter
	for i := range 30 {
		y.add(t0.Add(time.Duration(i) * 10 * time.Millisecond))
	}
	if r := y.rate(t0.Add(290 * time.Millisecond)); r != 100 {
		t.Errorf("young meter: rate = %v, want 100", r)
	}
}

// TestRelayThrottleCutsAndRecovers: a throttled relay is cut to half what it sent at, halved
// again at most once a second, doubled back after each quiet period, and freed when back
// where it started; a configured rate (times the node's share) still binds.
func TestRelayThrottleCutsAndRecovers(t *testing.T) {
	now := time.UnixMilli(5_000_000)
	p := &pool{share: 1, rate: newBucket(0, now)}
	for i := range 80 { // 80 over the last second
		p.throttle.meter.add(now.Add(-time.Duration(79-i) * 11 * time.Millisecond))
	}
	if r, first := p.throttled(now); r != 40 || !first || p.rate.rate != 40 {
		t.Fatalf("first cut: %v (bucket %v, first %v), want 40", r, p.rate.rate, first)
	}
	if r, _ := p.throttled(now.Add(100 * time.Millisecond)); r != 0 || p.rate.rate != 40 {
		t.Fatalf("a second answer within the debounce cut again: %v", p.rate.rate)
	}
	now = now.Add(throttleDebounce)
	if r, first := p.throttled(now); r != 20 || first || p.rate.rate != 20 {
		t.Fatalf("second cut: %v, want 20", p.rate.rate)
	}
	if p.recovered(now.Add(relayRecover - time.Second)) {
		t.Fatal("recovered before a quiet period")
	}
	now = now.Add(relayRecover)
	if p.recovered(now) || p.rate.rate != 40 {
		t.Fatalf("after one quiet period: %v, want 40 and still cut", p.rate.rate)
	}
	now = now.Add(relayRecover)
	if !p.recovered(now) || p.rate.rate != 0 || p.throttle.rate != 0 {
		t.Fatalf("after two: bucket %v, throttle %v; want no limit", p.rate.rate, p.throttle.rate)
	}

	// With rate=100 shared by two nodes (50 here), sending at 50: cut to 25, freed at 50.
	q := &pool{relay: Relay{Rate: 100}, share: 1, rate: newBucket(100, now)}
	q.share = 0.5
	q.applyRate(now)
	for i := range 200 {
		q.throttle.meter.add(now.Add(-time.Duration(199-i) * 4 * time.Millisecond))
	}
	if q.throttled(now); q.rate.rate != 25 {
		t.Fatalf("shared configured rate: cut to %v, want 25", q.rate.rate)
	}
	if !q.recovered(now.Add(relayRecover)) || q.rate.rate != 50 {
		t.Fatalf("recovered to %v, want the configured share of 50", q.rate.rate)
	}
	// A relay idle for many quiet periods is back at once at its next message, not one
	// doubling at a time.
	r := &pool{share: 1, rate: newBucket(0, now)}
	for i := range 100 {
		r.throttle.meter.add(now.Add(-time.Duration(99-i) * 9 * time.Millisecond))
	}
	r.throttled(now)
	r.throttled(now.Add(throttleDebounce))
	r.throttled(now.Add(2 * throttleDebounce)) // 100 a second cut to 12.5
	if !r.recovered(now.Add(2*throttleDebounce+10*relayRecover)) || r.rate.rate != 0 {
		t.Errorf("after ten quiet periods at once: bucket %v, throttle %v; want no limit", r.rate.rate, r.throttle.rate)
	}

	// Never below the floor; answers there put off the recovery.
	for i := range 20 {
		q.throttled(now.Add(time.Duration(i+2) * time.Second))
	}
	if q.rate.rate != minRelayRate {
		t.Errorf("cut to %v, want the floor of %v", q.rate.rate, minRelayRate)
	}
	last := now.Add(21 * time.Second)
	if r, _ := q.throttled(last); r != 0 {
		t.Errorf("an answer at the floor reported a cut to %v", r)
	}
	if q.recovered(last.Add(relayRecover-time.Second)) || q.rate.rate != minRelayRate {
		t.Errorf("recovered %v after the last answer at the floor", relayRecover-time.Second)
	}
}

func TestDomainThrottledTellsTheRelay(t *testing.T) {
	now := time.UnixMilli(5_000_000)
	p := &pool{share: 1}
	if p.domainThrottled("a.example", now) || p.domainThrottled("a.example", now) || p.domainThrottled("b.example", now) {
		t.Fatal("two domains made it the relay's")
	}
	later := now.Add(relayThrottleWindow + time.Millisecond)
	if p.domainThrottled("c.example", later) || p.domainThrottled("d.example", later) {
		t.Fatal("answers further apart than the window made it the relay's")
	}
	if !p.domainThrottled("e.example", later) {
		t.Fatal("three domains within the window did not make it the relay's")
	}
}

// TestRelaySlowDownAtMail: a relay answering 451 to MAIL FROM asks to slow down for itself:
// its messages go back to the queue untried (Deferred, not soft failures that would wait for
// a retry), its rate is cut with a warning, and it recovers once quiet.
func TestRelaySlowDownAtMail(t *testing.T) {
	for _, tc := range smtpModes {
		t.Run(tc.name, func(t *testing.T) {
			s := smtptest.Start(t, smtptest.Options{NoPipelining: tc.noPipelining})
			clock := newFakeClock()
			var logs bytes.Buffer
			// One try a message: the clock stands still, so a cut rate would make the
			// tries wait in real time.
			tr := newTestTransport(t, Options{Clock: clock, MaxAttempts: 1, Logger: slog.New(slog.NewTextHandler(&logs, nil))}, plainRelay(s, 2))
			wantAll(t, send(t, tr, testMessages(30, rcptN)), channel.Sent)

			s.RefuseSenders(smtptest.Action{Code: 451, Enhanced: "4.7.1", Text: "too many messages, slow down"})
			out := send(t, tr, testMessages(4, func(i int) string { return rcptN(i + 100) }))
			for i := range out {
				wantStatus(t, out, i, channel.Deferred)
				if !strings.Contains(out[i].Text, "slow down") {
					t.Errorf("out[%d].Text = %q", i, out[i].Text)
				}
			}
			p := tr.pools[0]
			p.mu.Lock()
			cut, from := p.rate.rate, p.throttle.upto
			p.mu.Unlock()
			if from <= 0 || cut != from/2 {
				t.Errorf("relay rate after the 451s: %v, want half the %v a second it was sent at", cut, from)
			}
			if !strings.Contains(logs.String(), "asks to slow down") {
				t.Errorf("no warning:\n%s", logs.String())
			}

			s.RefuseSenders(smtptest.Action{})
			for range 10 {
				clock.Advance(relayRecover)
				out = send(t, tr, testMessages(1, func(int) string { return rcptN(200) }))
				wantAll(t, out, channel.Sent)
			}
			p.mu.Lock()
			free := p.rate.rate == 0
			p.mu.Unlock()
			if !free {
				t.Error("the relay's rate was still cut after ten quiet periods")
			}
		})
	}
}

// TestRelaySlowDownFromSeveralDomains: 450 from recipients of three domains at once is the
// relay's answer, not theirs: the relay's rate is cut too. From one domain, only its own.
func TestRelaySlowDownFromSeveralDomains(t *testing.T) {
	for _, domains := range []int{1, 3} {
		t.Run(fmt.Sprint(domains), func(t *testing.T) {
			s := smtptest.Start(t, smtptest.Options{})
			var msgs []channel.Message
			for i := range domains {
				to := fmt.Sprintf("user@d%d.example", i)
				s.Script(to, smtptest.Always(smtptest.Action{Code: 450, Enhanced: "4.7.1", Text: "slow down"}))
				msgs = append(msgs, channel.Message{To: to, From: "bounces@herald.test", Data: fmt.Appendf(nil, testBody, to, i)})
			}
			tr := newTestTransport(t, Options{Clock: newFakeClock()}, plainRelay(s, 1))
			out := send(t, tr, msgs)
			for i := range out { // refused for the recipient, retried later; the relay's, untried
				want := channel.SoftFail
				if i >= relayThrottleDomains-1 {
					want = channel.Deferred
				}
				wantStatus(t, out, i, want)
			}
			p := tr.pools[0]
			p.mu.Lock()
			cut := p.throttle.rate > 0
			p.mu.Unlock()
			if cut != (domains >= relayThrottleDomains) {
				t.Errorf("%d domains answering 450: relay cut = %v", domains, cut)
			}
		})
	}
}

// TestSendPacesWhenEverythingWaits: a Send whose every message would wait too long for a rate
// limit holds on before returning them Deferred, so that a caller sending them again at once
// does not spin; one that sent something returns at once.
func TestSendPacesWhenEverythingWaits(t *testing.T) {
	s := smtptest.Start(t, smtptest.Options{})
	r := plainRelay(s, 1)
	r.Rate = 1
	tr := newTestTransport(t, Options{Clock: newFakeClock(), MaxWait: 50 * time.Millisecond}, r)
	wantAll(t, send(t, tr, testMessages(1, rcptN)), channel.Sent) // the bucket's one token
	start := time.Now()
	out := send(t, tr, testMessages(3, func(i int) string { return rcptN(i + 10) }))
	wantAll(t, out, channel.Deferred)
	if d := time.Since(start); d < 40*time.Millisecond {
		t.Errorf("a Send that deferred everything returned after %v; want it held about MaxWait (50ms)", d)
	}
	// So does one given more room for outcomes than messages, as Send's contract allows.
	start = time.Now()
	out = make([]channel.Outcome, 5)
	if err := tr.Send(context.Background(), testMessages(3, func(i int) string { return rcptN(i + 20) }), out); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 40*time.Millisecond {
		t.Errorf("with room for 5 outcomes, a Send that deferred its 3 messages returned after %v", d)
	}
}

// TestRelaySlowDownAtRcpt: a relay answering 450 at RCPT TO whoever the recipient, in words
// that say nothing of whose limit it is. From the third domain so answered within the window
// the relay is taken as throttled, and its further 450s at RCPT TO send their messages back
// untried (Deferred) instead of to a retry wait.
func TestRelaySlowDownAtRcpt(t *testing.T) {
	for _, tc := range smtpModes {
		t.Run(tc.name, func(t *testing.T) {
			s := smtptest.Start(t, smtptest.Options{NoPipelining: tc.noPipelining})
			var msgs []channel.Message
			for i := range 6 {
				to := fmt.Sprintf("user@d%d.example", i)
				s.Script(to, smtptest.Always(smtptest.Action{Code: 450, Enhanced: "4.7.1", Text: "Try again later"}))
				msgs = append(msgs, channel.Message{To: to, From: "bounces@herald.test", Data: fmt.Appendf(nil, testBody, to, i)})
			}
			// One connection, one try a message: the answers come in order.
			tr := newTestTransport(t, Options{Clock: newFakeClock(), MaxAttempts: 1}, plainRelay(s, 1))
			out := send(t, tr, msgs)
			for i := range out {
				want := channel.Deferred
				if i < relayThrottleDomains-1 { // before the relay is taken as throttled
					want = channel.SoftFail
				}
				wantStatus(t, out, i, want)
			}
		})
	}
}

// TestRelaySaysItIsItsLimit: a refusal whose words say the client sends too much is the
// relay's from the first, at RCPT TO (Postfix's smtpd_client_recipient_rate_limit) as after
// the data (Amazon SES's 454): every message comes back untried, the relay's rate is cut at
// once, and no recipient domain is slowed down for it.
func TestRelaySaysItIsItsLimit(t *testing.T) {
	answers := []struct {
		name string
		a    smtptest.Action
	}{
		{"postfix at rcpt", smtptest.Action{Code: 450, Enhanced: "4.7.1", Text: "Error: too many recipients from 127.0.0.1"}},
		{"ses after data", smtptest.Action{Stage: smtptest.AtData, Code: 454, Text: "Throttling failure: Maximum sending rate exceeded"}},
	}
	for _, ans := range answers {
		for _, tc := range smtpModes {
			t.Run(ans.name+"/"+tc.name, func(t *testing.T) {
				s := smtptest.Start(t, smtptest.Options{NoPipelining: tc.noPipelining})
				var msgs []channel.Message
				for i := range 4 {
					to := fmt.Sprintf("user@d%d.example", i)
					s.Script(to, smtptest.Always(ans.a))
					msgs = append(msgs, channel.Message{To: to, From: "bounces@herald.test", Data: fmt.Appendf(nil, testBody, to, i)})
				}
				tr := newTestTransport(t, Options{Clock: newFakeClock(), MaxAttempts: 1}, plainRelay(s, 1))
				out := send(t, tr, msgs)
				wantAll(t, out, channel.Deferred)
				p := tr.pools[0]
				p.mu.Lock()
				cut := p.throttle.rate > 0
				p.mu.Unlock()
				if !cut {
					t.Error("the relay's rate was not cut")
				}
				for i := range msgs {
					if r := tr.domains.Rate(domainOf(msgs[i].To)); r != 0 {
						t.Errorf("domain %s slowed down to %v/s for the relay's limit", domainOf(msgs[i].To), r)
					}
				}
			})
		}
	}
}

// TestRelayThrottleGoesUnderThirtyAMinute: a relay that keeps asking to slow down, once a
// second, is cut below 30 messages a minute (Microsoft 365's SMTP AUTH quota), instead of
// stopping at a floor where half of what it is sent is turned away.
func TestRelayThrottleGoesUnderThirtyAMinute(t *testing.T) {
	now := time.UnixMilli(5_000_000)
	p := &pool{share: 1, rate: newBucket(0, now)}
	for i := range 80 {
		p.throttle.meter.add(now.Add(-time.Duration(79-i) * 11 * time.Millisecond))
	}
	for range 12 {
		p.throttled(now)
		now = now.Add(throttleDebounce)
	}
	if r := p.rate.rate * 60; r >= 30 {
		t.Errorf("after twelve answers a second apart the relay is at %v a minute, want under 30", r)
	}
}

// TestRelayThrottleMetersWhatGoes: the rate a relay is cut from is the rate messages went to
// it, not the rate they were looked at: messages deferred for a domain's limit did not go.
func TestRelayThrottleMetersWhatGoes(t *testing.T) {
	s := smtptest.Start(t, smtptest.Options{})
	msgs := testMessages(200, rcptN) // all to example.com, limited to 1 a second
	s.Script(msgs[0].To, smtptest.Always(smtptest.Action{Stage: smtptest.AtData, Code: 454, Text: "Throttling failure: Maximum sending rate exceeded"}))
	tr := newTestTransport(t, Options{Clock: newFakeClock(), MaxWait: 10 * time.Millisecond, MaxAttempts: 1,
		Domains: DomainLimits{Rates: map[string]float64{"example.com": 1}}}, plainRelay(s, 1))
	out := send(t, tr, msgs)
	wantAll(t, out, channel.Deferred)
	p := tr.pools[0]
	p.mu.Lock()
	cut, from := p.throttle.rate, p.throttle.upto
	p.mu.Unlock()
	if from > 10 || cut <= 0 {
		t.Errorf("the relay, sent one message, was cut to %v from %v a second; want from about 1", cut, from)
	}
}

// TestThrottledRelayKeepsFewConnections: a relay cut to a few messages a second gets no more
// connections than that (at least one), and all of them again once the cut ends.
func TestThrottledRelayKeepsFewConnections(t *testing.T) {
	now := time.UnixMilli(5_000_000)
	p := &pool{relay: Relay{MaxConns: 20}, share: 1, rate: newBucket(0, now)}
	for i := range 80 {
		p.throttle.meter.add(now.Add(-time.Duration(79-i) * 11 * time.Millisecond))
	}
	p.throttled(now) // 40/s
	if n := p.maxConns(now); n != 20 {
		t.Errorf("at 40/s: %d connections, want the 20 of max_conns", n)
	}
	for range 4 { // 20, 10, 5, 2.5
		now = now.Add(throttleDebounce)
		p.throttled(now)
	}
	if n := p.maxConns(now); n != 3 {
		t.Errorf("at 2.5/s: %d connections, want 3", n)
	}
	for range 6 {
		now = now.Add(throttleDebounce)
		p.throttled(now)
	}
	if n := p.maxConns(now); n != 1 {
		t.Errorf("at %v/s: %d connections, want 1", p.throttle.rate, n)
	}
	p.recovered(now.Add(time.Hour))
	if n := p.maxConns(now.Add(time.Hour)); n != 20 {
		t.Errorf("recovered: %d connections, want 20", n)
	}
}
