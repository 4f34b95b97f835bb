// Package email is Herald's email channel: MIME building with DKIM signing,
// and an SMTP transport of its own that pipelines (RFC 2920) over pooled,
// long-lived connections to one or more relays.
//
// No Go SMTP library pipelines, which is where most of the speed of bulk
// sending comes from, so the client here is Herald's own: after a message's
// terminating dot the next message's MAIL, RCPT and DATA follow in the same
// write, and a connection never waits on a round trip it could have avoided.
package email

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heraldhq/herald/internal/bounce"
	"github.com/heraldhq/herald/internal/channel"
)

// Options configures a Transport. Zero values pick the documented defaults.
type Options struct {
	// Relays to send through; at least one. Load is spread over every relay
	// that is up; a relay that cannot be reached is skipped for a back-off.
	Relays []Relay
	// HelloName is the name given in EHLO; "" means the host name.
	HelloName string
	// Timeout bounds each exchange with a server (a write and the replies it
	// waits for); 0 means 2 minutes.
	Timeout time.Duration
	// DialTimeout bounds connecting and the handshake; 0 means 15 s.
	DialTimeout time.Duration
	// MaxAttempts is how many connections a message may be tried on within
	// one Send when a connection fails before the message was handed over;
	// 0 means 3.
	MaxAttempts int
	// MaxWait is the longest a message waits for a rate limit before Send
	// reports it Deferred; 0 means 2 s.
	MaxWait time.Duration
	// IdleTimeout closes pooled connections idle for longer instead of
	// reusing them; 0 means 30 s.
	IdleTimeout time.Duration
	// BackoffMin and BackoffMax bound the time an unreachable relay is
	// skipped; it doubles from BackoffMin on each consecutive failure.
	// 0 means 1 s and 5 min.
	BackoffMin, BackoffMax time.Duration
	// Domains configures per-recipient-domain limits.
	Domains DomainLimits
	// Clock drives limits and back-offs; nil means the system clock.
	Clock Clock
	// Logger receives relay up/down events; nil discards them.
	Logger *slog.Logger
}

// Transport sends email over SMTP relays. It is a channel.Sender.
type Transport struct {
	opts    Options
	pools   []*pool
	domains *DomainLimiter
	clock   Clock
	log     *slog.Logger
	closed  atomic.Bool
}

var (
	_ channel.Sender = (*Transport)(nil)
	_ channel.Shared = (*Transport)(nil)
	_ channel.Gate   = (*Transport)(nil)
)

// pool holds the connections to one relay.
type pool struct {
	relay Relay
	// slots holds one token per open connection; idle holds the open
	// connections not in use. Together they cap connections at MaxConns
	// across concurrent Sends.
	slots chan struct{}
	idle  chan *conn

	mu        sync.Mutex
	rate      bucket
	share     float64 // this node's share of the relay's rate (channel.Shared)
	throttle  relayThrottle
	failures  int
	downUntil time.Time
	lastErr   error
	// open counts the connections established (in use or idle). connLimit,
	// until connLimitUntil, is the most connections the relay took before it
	// refused one more while others worked (a per-client connection limit).
	open           int
	connLimit      int
	connLimitUntil time.Time
	// dialing counts the connections being opened; dialed, when not nil, is
	// closed when one of them is done (see waitDials).
	dialing int
	dialed  chan struct{}
	// held says the relay last refused mail for the account Herald sends
	// with, not for the message: the envelope sender or this host refused
	// (senderRefused), its sending quota used up (quotaUsedUp), the sender
	// refused after the data (senderRefusedAfterData). It is skipped like a
	// relay that is down, and a connection opened does not end its back-off;
	// a message it accepts does (accepted).
	held atomic.Bool
	// failing mirrors failures > 0, for accepted to read without the lock.
	failing atomic.Bool
	// caps is what the relay's last EHLO offered that a message may need
	// (check): nil until a connection to it opened.
	caps atomic.Pointer[relayCaps]
	// unverified says the last connection opened took a certificate that
	// does not verify (opportunistic STARTTLS), to log the change once.
	unverified bool
}

// dialDone records that a connection being opened is done, opened or not.
// p.mu is held.
func (p *pool) dialDone() {
	p.dialing--
	if p.dialed != nil {
		close(p.dialed)
		p.dialed = nil
	}
}

// waitDials waits, with p.mu held, while other connections to p are being
// opened, until each has opened or failed. It returns with p.mu held, early
// when ctx ends.
func (p *pool) waitDials(ctx context.Context) {
	for p.dialing > 0 && ctx.Err() == nil {
		if p.dialed == nil {
			p.dialed = make(chan struct{})
		}
		ch := p.dialed
		p.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
		}
		p.mu.Lock()
	}
}

// connLimitFor is how long a relay that refused one more connection is used
// with the connections it took, before one more is tried.
const connLimitFor = time.Minute

// maxConns returns how many connections to p may be open now: one while the
// relay is tried again after a failure (down, refusing the sender or this
// host, its quota used up), until it works again; before, each try after a
// back-off opened max_conns connections at once, each failed or refused.
//
// A relay whose rate is cut (relaythrottle.go) gets no more connections than
// messages a second it may be sent, at least one: a connection carries many a
// second, and twenty opened at once for one message every five seconds only
// burdened the relay (seen against Postfix limiting recipients a minute).
func (p *pool) maxConns(now time.Time) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.failures > 0 {
		return 1
	}
	n := p.relay.MaxConns
	if p.connLimit > 0 && now.Before(p.connLimitUntil) {
		n = p.connLimit
	}
	if p.throttle.on() {
		n = min(n, max(1, int(math.Ceil(p.throttle.rate))))
	}
	return n
}

var errRelayDown = errors.New("relay is in back-off after failing")

// New returns a Transport for opts.Relays. It connects lazily, on the first
// Send.
func New(opts Options) (*Transport, error) {
	if len(opts.Relays) == 0 {
		return nil, errors.New("email: no SMTP relay configured")
	}
	if opts.HelloName == "" {
		opts.HelloName, _ = os.Hostname()
		if opts.HelloName == "" || !strings.Contains(opts.HelloName, ".") {
			opts.HelloName = "localhost"
		}
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&opts.Timeout, 2*time.Minute)
	def(&opts.DialTimeout, 15*time.Second)
	def(&opts.MaxWait, 2*time.Second)
	def(&opts.IdleTimeout, 30*time.Second)
	def(&opts.BackoffMin, time.Second)
	def(&opts.BackoffMax, 5*time.Minute)
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = 3
	}
	if opts.Clock == nil {
		opts.Clock = systemClock{}
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	t := &Transport{
		opts:    opts,
		domains: NewDomainLimiter(opts.Domains, opts.Clock),
		clock:   opts.Clock,
		log:     opts.Logger,
	}
	now := t.clock.Now()
	for _, r := range opts.Relays {
		if r.MaxConns <= 0 {
			r.MaxConns = DefaultMaxConns
		}
		t.pools = append(t.pools, &pool{
			relay: r,
			slots: make(chan struct{}, r.MaxConns),
			idle:  make(chan *conn, r.MaxConns),
			rate:  newBucket(r.Rate, now),
			share: 1,
		})
	}
	return t, nil
}

// SetShare sets this node's part, in (0, 1], of every relay's rate and of the recipient
// domains' rates and caps on messages in progress, when several nodes send for one
// installation (channel.Shared). Connections per relay stay the node's own: each node opens
// its own.
func (t *Transport) SetShare(share float64) {
	if !(share > 0 && share <= 1) {
		share = 1
	}
	now := t.clock.Now()
	for _, p := range t.pools {
		p.mu.Lock()
		p.share = share
		p.applyRate(now)
		p.mu.Unlock()
	}
	t.domains.SetShare(share)
}

// Domains returns the per-recipient-domain limiter, for inspection.
func (t *Transport) Domains() *DomainLimiter { return t.domains }

// Send sends msgs through the relays; see channel.Sender for the guarantees.
//
// Messages are spread over every relay that is up, each relay's connections
// taking the next message as they free up. A message whose connection fails
// before its data was handed over is tried again on another connection, up
// to Options.MaxAttempts; a message whose data was handed over but not
// answered is Unknown. When no relay can be reached the remaining messages
// are SoftFail. A message that cannot be sent as it stands (bad address,
// empty, over the relay's SIZE) is HardFail with Code 0.
func (t *Transport) Send(ctx context.Context, msgs []channel.Message, out []channel.Outcome) error {
	if len(out) < len(msgs) {
		for i := range out {
			out[i] = channel.Outcome{Status: channel.Deferred, Text: "not attempted: outcome slice too short"}
		}
		return fmt.Errorf("email: Send got %d messages but room for %d outcomes", len(msgs), len(out))
	}
	b := &batch{msgs: msgs, out: out, max: t.opts.MaxAttempts}
	if t.domains.slots != nil {
		b.held = make([]bool, len(msgs))
	}
	if t.closed.Load() {
		b.finishRest(channel.Outcome{Status: channel.Deferred, Text: "not attempted: transport closed"})
		return channel.ErrClosed
	}
	for !b.empty() {
		if err := ctx.Err(); err != nil {
			b.finishRest(channel.Outcome{Status: channel.Deferred, Text: "not attempted: " + err.Error()})
			break
		}
		up := t.upPools()
		if len(up) == 0 {
			// Not the recipients' doing: their messages go back to the queue untried,
			// and the engine waits for a relay (Wait).
			b.finishRest(channel.Outcome{Status: channel.Deferred, Text: "not attempted: no SMTP relay available: " + t.downReason()})
			b.noRelay = true
			break
		}
		if b.strand(up, t.pools); b.empty() {
			break
		}
		var wg sync.WaitGroup
		left := b.remaining()
		now := t.clock.Now()
		for _, p := range up {
			for range min(p.maxConns(now), left) {
				wg.Go(func() { t.work(ctx, p, b) })
			}
		}
		wg.Wait()
		// Every path that ends a message frees its domain slot; this is
		// the backstop that keeps a slot from being lost for good.
		for i, h := range b.held {
			if h {
				t.done(b, i)
			}
		}
	}
	t.pace(ctx, b)
	return nil
}

// pace holds a Send whose every message was Deferred, some for a rate limit,
// until the limit would take one of them, at most MaxWait: it returned at
// once before, and a caller that sends its Deferred messages again straight
// away (the engine puts them back in its queue) turned in a busy loop while a
// limit was reached, rendering and deferring batch after batch. Messages
// Deferred for want of a relay are the caller's to hold back: Wait says for
// how long (channel.Gate).
func (t *Transport) pace(ctx context.Context, b *batch) {
	if b.limitWait == 0 || b.noRelay {
		return
	}
	wait := b.limitWait - t.opts.MaxWait
	for i := range b.msgs {
		if b.out[i].Status != channel.Deferred {
			return
		}
	}
	if wait <= 0 {
		return
	}
	timer := time.NewTimer(min(wait, t.opts.MaxWait))
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-ctx.Done():
	}
}

// Close closes idle connections politely (QUIT) and refuses further Sends.
// Connections in use by a running Send are closed when it returns them.
func (t *Transport) Close() error {
	t.closed.Store(true)
	for _, p := range t.pools {
		for {
			select {
			case c := <-p.idle:
				t.discard(p, c, true)
				continue
			default:
			}
			break
		}
	}
	return nil
}

// Wait returns how long until a relay may be tried again, 0 while one is up,
// else the shortest back-off left, and why: each skipped relay's last error
// (channel.Gate).
func (t *Transport) Wait() (time.Duration, string) {
	now := t.clock.Now()
	var wait time.Duration
	for _, p := range t.pools {
		p.mu.Lock()
		left := p.downUntil.Sub(now)
		p.mu.Unlock()
		if left <= 0 {
			return 0, ""
		}
		if wait == 0 || left < wait {
			wait = left
		}
	}
	return wait, "no SMTP relay available: " + t.downReason()
}

func (t *Transport) upPools() []*pool {
	now := t.clock.Now()
	var up []*pool
	for _, p := range t.pools {
		p.mu.Lock()
		if !now.Before(p.downUntil) {
			up = append(up, p)
		}
		p.mu.Unlock()
	}
	return up
}

func (t *Transport) downReason() string {
	var reasons []string
	for _, p := range t.pools {
		p.mu.Lock()
		if p.lastErr != nil {
			reasons = append(reasons, p.lastErr.Error())
		}
		p.mu.Unlock()
	}
	return strings.Join(reasons, "; ")
}

// work sends messages from b over connections of p until b has no message
// left to take or p fails.
func (t *Transport) work(ctx context.Context, p *pool, b *batch) {
	for b.hasFor(p) && ctx.Err() == nil {
		c, reused, err := t.get(ctx, p)
		if err != nil {
			return
		}
		if c.pipelining {
			err = t.runPipelined(ctx, p, c, b, reused)
		} else {
			err = t.runLockstep(ctx, p, c, b, reused)
		}
		switch {
		case errors.Is(err, errHeld):
			// The connection is sound, but the relay takes none of our mail for now
			// (and, refused after the data, a transaction may be half open: no QUIT).
			t.discard(p, c, false)
			return
		case err != nil || c.broken:
			t.discard(p, c, false)
		case p.relay.MaxPerConn > 0 && c.sent >= p.relay.MaxPerConn:
			t.discard(p, c, true)
		default:
			t.put(p, c)
		}
	}
}

// get returns an idle connection to p, or dials one when p has room.
func (t *Transport) get(ctx context.Context, p *pool) (c *conn, reused bool, err error) {
	for {
		select {
		case c = <-p.idle:
		default:
			if len(p.slots) >= p.maxConns(t.clock.Now()) {
				// The relay takes no more connections for now: wait for one of
				// those open, looking again now and then in case they close.
				timer := time.NewTimer(50 * time.Millisecond)
				select {
				case c = <-p.idle:
				case <-timer.C:
				case <-ctx.Done():
					timer.Stop()
					return nil, false, ctx.Err()
				}
				timer.Stop()
				if c == nil {
					continue
				}
				break
			}
			select {
			case c = <-p.idle:
			case p.slots <- struct{}{}:
			case <-ctx.Done():
				return nil, false, ctx.Err()
			}
		}
		if c == nil {
			break
		}
		if t.clock.Now().Sub(c.lastUsed) < t.opts.IdleTimeout && !t.closed.Load() {
			return c, true, nil
		}
		t.discard(p, c, true)
		c = nil
	}
	p.mu.Lock()
	down := t.clock.Now().Before(p.downUntil)
	p.mu.Unlock()
	if down {
		<-p.slots
		return nil, false, errRelayDown
	}
	p.mu.Lock()
	p.dialing++
	p.mu.Unlock()
	dctx, cancel := context.WithTimeout(ctx, t.opts.DialTimeout)
	defer cancel()
	c, err = dial(dctx, &p.relay, t.opts.HelloName, t.opts.DialTimeout, t.opts.Timeout)
	if err != nil {
		<-p.slots
		p.mu.Lock()
		p.dialDone()
		p.mu.Unlock()
		if ctx.Err() == nil {
			t.dialFailed(ctx, p, err)
		}
		return nil, false, err
	}
	p.caps.Store(&relayCaps{smtputf8: c.smtputf8, size: c.size})
	p.mu.Lock()
	if !p.held.Load() {
		if p.failures > 0 {
			t.log.Info("smtp relay is back", "relay", p.relay.String())
		}
		p.resetFailures()
	}
	p.open++
	p.dialDone()
	if (c.unverified != nil) != p.unverified {
		p.unverified = c.unverified != nil
		if p.unverified {
			t.log.Warn("smtp relay's certificate does not verify; sending encrypted without authenticating the relay (starttls=opportunistic; starttls=require refuses it)",
				"relay", p.relay.String(), "error", c.unverified)
		} else {
			t.log.Info("smtp relay's certificate verifies", "relay", p.relay.String())
		}
	}
	p.mu.Unlock()
	return c, false, nil
}

// dialFailed handles a connection p could not open. When none of p's
// connections is open the relay is down, and skipped for a back-off. When
// others are open and working, the relay is up but refuses one more (a
// per-client connection limit, often "421 Too many connections"): p is used
// with the connections it has for connLimitFor, instead of failing the
// messages of the next batches as if the relay were down.
//
// While others are being opened, which of the two it is, and how many
// connections the relay takes, waits for them: a relay that limits
// connections refuses the extra ones at once, often before the ones it took
// have finished their greeting, EHLO and STARTTLS; marking it down then
// would fail the batches of concurrent Sends for nothing, and counting only
// those open so far would use fewer connections than it takes.
func (t *Transport) dialFailed(ctx context.Context, p *pool, err error) {
	p.mu.Lock()
	p.waitDials(ctx)
	if ctx.Err() != nil {
		p.mu.Unlock()
		return
	}
	open := p.open
	// Only a relay that answered refuses one more connection ("421 Too many
	// connections"); one that cannot be reached is down, whatever connections
	// to it the pool still counts (they may be dead and not yet found so).
	var re *ReplyError
	if open > 0 && errors.As(err, &re) {
		first := p.connLimit != open || !t.clock.Now().Before(p.connLimitUntil)
		p.connLimit, p.connLimitUntil = open, t.clock.Now().Add(connLimitFor)
		p.mu.Unlock()
		if first {
			t.log.Warn("smtp relay refused one more connection; using those open", "relay", p.relay.String(),
				"connections", open, "for", connLimitFor, "error", err)
		}
		return
	}
	p.mu.Unlock()
	t.markDown(p, err)
}

func (t *Transport) markDown(p *pool, err error) {
	t.skip(p, err, "smtp relay unreachable, skipping it")
}

// skip puts p in back-off after err, unless another connection's failure
// just did, and logs msg.
func (t *Transport) skip(p *pool, err error, msg string) {
	now := t.clock.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	if now.Before(p.downUntil) {
		return // other connections failed together with this one
	}
	p.failures++
	p.failing.Store(true)
	backoff := t.opts.BackoffMin << min(p.failures-1, 30)
	if backoff > t.opts.BackoffMax || backoff <= 0 {
		backoff = t.opts.BackoffMax
	}
	p.downUntil, p.lastErr = now.Add(backoff), err
	t.log.Warn(msg, "relay", p.relay.String(), "error", err, "retry_in", backoff)
}

// senderRefused reports whether o, the answer at stage (0: MAIL FROM, 1:
// RCPT TO) of a message from → to, refuses the envelope sender whatever the
// message: a sender address or domain the relay does not take, AUTH it
// requires, a policy. That is about Herald's configuration, not the
// recipient, and failing each message for it would fail a whole delivery in
// seconds; retrying each on its own back-off would put them all in retry.
//
// At MAIL FROM every permanent refusal is the sender's, but a message too big
// (552, X.3.4), which is the message's own. Servers that delay their
// restrictions to RCPT TO (Postfix's default, smtpd_delay_reject) refuse the
// sender there: a refusal at RCPT TO is the sender's when it is aboutSender.
// A temporary refusal is the sender's, at either step, when it is
// aboutSender too ("450 4.1.8 <b+1.x@bounce.example>: Sender address
// rejected: Domain not found", Postfix's reject_unknown_sender_domain while
// the bounce domain does not resolve); other temporary answers to MAIL FROM
// ask to slow down (relayThrottled).
func senderRefused(stage int, o channel.Outcome, from, to string) bool {
	switch {
	case stage == 0 && o.Status == channel.HardFail:
		return o.Code != 552 && !strings.HasSuffix(o.Enhanced, ".3.4")
	case stage <= 1 && o.Status == channel.HardFail:
		return aboutSender(o, from, to)
	case stage <= 1 && o.Status == channel.SoftFail:
		// A rate limit a policy applies to the sender ("450 4.7.1 <from>: Sender
		// address rejected: Rate limit reached") asks to slow down instead.
		return aboutSender(o, from, to) && !clientLimited(o, to)
	}
	return false
}

// aboutSender reports an answer about the sender or the client rather than
// the recipient: its enhanced code about the sender (X.1.7, X.1.8, RFC 3463),
// its text Postfix's "Sender address rejected" or "Client host rejected"
// ("554 5.7.1 <unknown[192.0.2.7]>: Client host rejected: Access denied", a
// node whose address the relay does not know, as much the same for every
// message), or the sender's address named without the recipient's.
func aboutSender(o channel.Outcome, from, to string) bool {
	if strings.HasSuffix(o.Enhanced, ".1.7") || strings.HasSuffix(o.Enhanced, ".1.8") {
		return true
	}
	if t := strings.ToLower(o.Text); strings.Contains(t, "sender address rejected") || strings.Contains(t, "client host rejected") {
		return true
	}
	return from != "" && strings.Contains(o.Text, "<"+from+">") && !strings.Contains(o.Text, "<"+to+">")
}

// refuseSender holds p after its refusal o of message i's envelope sender,
// or of this host, at stage (0: MAIL FROM, 1: RCPT TO): see hold.
func (t *Transport) refuseSender(p *pool, b *batch, i, stage int, o channel.Outcome) error {
	msg := "smtp relay refuses the envelope sender, skipping it"
	if strings.Contains(strings.ToLower(o.Text), "client host rejected") {
		msg = "smtp relay refuses this host, skipping it"
	}
	return t.hold(p, b, i, -1, stageNames[stage], o, msg)
}

// stageNames names the envelope's stages, for errors.
var stageNames = [...]string{"MAIL FROM", "RCPT TO", "DATA"}

// errHeld ends a connection's run when its relay refused mail for the
// account Herald sends with (pool.held).
var errHeld = errors.New("the relay takes no mail from this account for now")

// quotaUsedUp reports an answer o to a message to `to` saying that the
// sender's quota at the relay is used up for a period, whatever its code and
// step (bounce.SendingQuota: Gmail's "550 5.4.5 Daily user sending quota
// exceeded" after the data, Microsoft 365's "550 5.1.90" at RCPT TO, Amazon
// SES's "454 Throttling failure: Daily message quota exceeded"). Such an
// answer fails no message: the quota comes back, most often the next day,
// and failing the rest of a delivery for it would lose them all in seconds.
func quotaUsedUp(o channel.Outcome, to string) bool {
	return o.Code >= 400 && bounce.SendingQuota(o.Text) && !names(o, to)
}

// names reports whether the text of o names the recipient to: an answer
// about that mailbox, not about the client. Postfix starts whatever a
// restriction at RCPT TO answers with the recipient ("<to>: Recipient address
// rejected: Rate limit reached", a policy server's words): what follows is
// what tells.
func names(o channel.Outcome, to string) bool {
	t := strings.ToLower(o.Text)
	if _, rest, ok := strings.Cut(t, "recipient address rejected:"); ok {
		t = rest
	}
	return strings.Contains(t, strings.ToLower(to))
}

// senderRefusedAfterData reports a permanent refusal after the data that is
// about the sender, not the message or its recipient, so the same for every
// message: aboutSender, or Amazon SES's "554 Message rejected: Email
// address is not verified. The following identities failed the check in
// region ...: news@shop.example" (the From header's address, which SES checks
// there), and not naming the recipient (SES's sandbox names an unverified
// recipient so: that one is the recipient's).
func senderRefusedAfterData(o channel.Outcome, to string) bool {
	if o.Status != channel.HardFail || names(o, to) {
		return false
	}
	return aboutSender(o, "", to) || strings.Contains(strings.ToLower(o.Text), "email address is not verified")
}

const quotaLog = "smtp relay says the sending quota is used up, skipping it"

// heldAfterData returns why the answer o to message i's data refuses every
// message for now (a log line), or "" when it is the message's own.
func heldAfterData(o channel.Outcome, to string) string {
	switch {
	case o.Status == channel.Sent:
		return ""
	case quotaUsedUp(o, to):
		return quotaLog
	case senderRefusedAfterData(o, to):
		return "smtp relay refuses the sender after the data, skipping it"
	}
	return ""
}

// hold handles the relay's answer o at step to message i that it takes no
// mail from this account for now (pool.held; msg says why, in the log), with,
// in a pipelined run, message next's envelope already written (-1 if none):
// both go back untried, to another relay or to the queue, the relay is
// skipped for a back-off (with its answer for the operator: Wait), and the
// run ends with errHeld. The relay is tried again after each back-off; the
// first message it accepts ends it.
func (t *Transport) hold(p *pool, b *batch, i, next int, step string, o channel.Outcome, msg string) error {
	err := &ReplyError{Step: step, Code: o.Code, Enhanced: o.Enhanced, Text: o.Text}
	t.untried(b, i, err)
	if next >= 0 {
		t.untried(b, next, err)
	}
	p.held.Store(true)
	t.skip(p, err, msg)
	return fmt.Errorf("relay %s: %w: %w", p.relay.Addr, errHeld, err)
}

// accepted records that p accepted a message: it ends a hold (pool.held), and
// the failures of a relay marked down while connections to it stayed open,
// which would keep it to one connection (maxConns) as long as they do.
func (t *Transport) accepted(p *pool) {
	if !p.failing.Load() {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.held.Swap(false) {
		t.log.Info("smtp relay takes mail again", "relay", p.relay.String())
	}
	p.resetFailures()
}

// resetFailures ends p's back-off. p.mu is held.
func (p *pool) resetFailures() {
	p.failures, p.lastErr, p.downUntil = 0, nil, time.Time{}
	p.failing.Store(false)
}

func (t *Transport) put(p *pool, c *conn) {
	if t.closed.Load() {
		t.discard(p, c, true)
		return
	}
	c.lastUsed = t.clock.Now()
	p.idle <- c // never blocks: idle has room for every slot
}

func (t *Transport) discard(p *pool, c *conn, polite bool) {
	if polite {
		c.quit()
	} else {
		c.nc.Close()
	}
	p.mu.Lock()
	p.open--
	p.mu.Unlock()
	<-p.slots
}

// next takes the next message to send on c, skipping (with their outcomes
// written) messages that are invalid or would wait too long for a limit.
// It returns -1 when there is nothing to send. busy says that c has a
// message of its own in progress, whose answer it has yet to read.
//
// A message whose domain has no free slot (DomainLimits.Conns) is parked
// and the next one taken, so that one busy domain does not hold up the
// others; parked messages are taken last. Only a connection with nothing in
// progress waits for a slot: one that waited while holding a slot itself
// could wait on the others doing the same.
func (t *Transport) next(ctx context.Context, p *pool, c *conn, b *batch, busy bool) int {
	for ctx.Err() == nil {
		i, parked, ok := b.take(p)
		if !ok {
			return -1
		}
		m := &b.msgs[i]
		if o, bad, relay := check(m, c); bad {
			if relay {
				t.elsewhere(p, b, i, o)
			} else {
				b.out[i] = o
			}
			continue
		}
		dom := domainOf(m.To)
		if b.held != nil {
			if !t.domains.slots.tryAcquire(dom) {
				if !parked || busy {
					b.park(i)
					if parked {
						return -1 // read this connection's answers first, which frees slots
					}
					continue
				}
				c.flush() // a write error resurfaces at the next flush
				if !t.domains.slots.acquire(ctx, dom, t.opts.MaxWait) {
					if ctx.Err() != nil {
						b.park(i)
						return -1
					}
					b.out[i] = channel.Outcome{Status: channel.Deferred, Text: fmt.Sprintf("not attempted: no free slot for %s (at most %d in progress at once) within %v",
						dom, t.domains.slots.limit(dom), t.opts.MaxWait)}
					continue
				}
			}
			b.held[i] = true
		}
		wait := t.domains.Reserve(dom)
		now := t.clock.Now()
		p.mu.Lock()
		recovered := p.recovered(now)
		wait = max(wait, p.rate.reserve(now))
		if wait == 0 {
			p.throttle.meter.add(now) // the rate sent at: messages that go, not those deferred
		}
		p.mu.Unlock()
		if recovered {
			t.log.Info("smtp relay quiet again; its rate is no longer cut", "relay", p.relay.String())
		}
		if wait == 0 {
			return i
		}
		if wait > t.opts.MaxWait {
			t.unreserve(p, b, i, dom)
			b.out[i] = channel.Outcome{Status: channel.Deferred, Text: fmt.Sprintf("not attempted: rate limit for %s would wait %v", dom, wait.Round(time.Millisecond))}
			b.deferredFor(wait)
			continue
		}
		c.flush() // a write error resurfaces at the next flush
		timer := time.NewTimer(wait)
		select {
		case <-timer.C:
			p.mu.Lock()
			p.throttle.meter.add(t.clock.Now())
			p.mu.Unlock()
			return i
		case <-ctx.Done():
			timer.Stop()
			t.unreserve(p, b, i, dom)
			b.giveBack(i)
			return -1
		}
	}
	return -1
}

// unreserve gives back what next booked for message i and did not use.
func (t *Transport) unreserve(p *pool, b *batch, i int, dom string) {
	t.domains.Cancel(dom)
	p.mu.Lock()
	p.rate.cancel()
	p.mu.Unlock()
	t.done(b, i)
}

// done frees the domain slot message i holds, if it holds one: its
// transaction is over, answered or not. It is called before the message is
// given back to the batch, where another connection may take it.
func (t *Transport) done(b *batch, i int) {
	if b.held != nil && b.held[i] {
		b.held[i] = false
		t.domains.slots.release(domainOf(b.msgs[i].To))
	}
}

// untried gives message i back, not looked at by the server (err says why
// it ended there), to another connection at no try's cost.
func (t *Transport) untried(b *batch, i int, err error) {
	t.done(b, i)
	b.requeue(i, softFail(err), true)
}

// feedback tells the limiters about a reply to a recipient over p: a
// throttling code slows down the recipient's domain and, when several domains
// answer one at once, the relay.
func (t *Transport) feedback(p *pool, to string, code int) {
	if !isThrottle(code) {
		return
	}
	dom := domainOf(to)
	t.domains.Throttle(dom)
	p.mu.Lock()
	relay := p.domainThrottled(dom, t.clock.Now())
	p.mu.Unlock()
	if relay {
		t.throttleRelay(p, fmt.Sprintf("%d from recipients of %d domains within %v", code, relayThrottleDomains, relayThrottleWindow))
	}
}

// throttleRelay cuts p's rate after the relay asked to slow down (see
// relaythrottle.go).
func (t *Transport) throttleRelay(p *pool, why string) {
	p.mu.Lock()
	r, first := p.throttled(t.clock.Now())
	p.mu.Unlock()
	switch {
	case first:
		t.log.Warn("smtp relay asks to slow down; its rate is cut", "relay", p.relay.String(), "rate", r, "answer", why)
	case r > 0:
		t.log.Info("smtp relay asks to slow down again; its rate is cut further", "relay", p.relay.String(), "rate", r, "answer", why)
	}
}

// refused decides on the refusal o at stage (0: MAIL FROM, 1: RCPT TO, 2:
// DATA) of message i's envelope. One that is the account's, not the
// message's, holds the relay and ends the run (hold's error): a sending quota
// used up (a DATA accepted nonetheless is left open: the connection is closed,
// which ends the transaction with nothing delivered), or a refused sender,
// unless the server accepted DATA nonetheless (dataOpen), whose lone dot must
// end it first. Otherwise it tells the limiters and returns the message's
// outcome: slowDown, throttled, when the relay asked to slow down for itself.
func (t *Transport) refused(p *pool, b *batch, i, stage int, o channel.Outcome, dataOpen bool) (out channel.Outcome, throttled bool, err error) {
	m := &b.msgs[i]
	switch {
	case quotaUsedUp(o, m.To):
		return o, false, t.hold(p, b, i, -1, stageNames[stage], o, quotaLog)
	case !dataOpen && senderRefused(stage, o, m.From, m.To):
		return o, false, t.refuseSender(p, b, i, stage, o)
	}
	own := clientLimited(o, m.To)
	if stage == 1 && !own {
		t.feedback(p, m.To, o.Code)
	}
	if t.relayThrottled(p, stage, o, own) {
		return slowDown(o), true, nil
	}
	return o, false, nil
}

// relayThrottled reports an answer at stage (0: MAIL FROM, 1: RCPT TO, 2:
// DATA) that asks to slow down for the relay itself, and then cuts the
// relay's rate (throttleRelay) unless it is cut already:
//   - an answer whose text says the client sends too much (own,
//     clientLimited), at any stage;
//   - a throttling code to MAIL FROM, since no recipient was named yet;
//   - a throttling code to RCPT TO while the relay is throttled (it answered
//     so for several domains at once: feedback).
//
// Its message is given back untried, to go at the relay's cut rate (or back
// to the queue, Deferred), not to a retry wait.
func (t *Transport) relayThrottled(p *pool, stage int, o channel.Outcome, own bool) bool {
	switch {
	case own || stage == 0 && isThrottle(o.Code):
		t.throttleRelay(p, fmt.Sprintf("%d %s %s", o.Code, o.Enhanced, o.Text))
		return true
	case stage == 1 && isThrottle(o.Code):
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.throttle.rate > 0
	}
	return false
}

// settle records the server's final answer o to message i's data. A 421
// gives the message to another connection; an answer that the client sends
// too much (clientLimited: Amazon SES answers "454
// Throttling failure: Maximum sending rate exceeded" there) cuts the relay's
// rate and gives the message back untried; the others settle it and tell the
// limiters (feedback).
func (t *Transport) settle(p *pool, b *batch, i int, o channel.Outcome) {
	if o.Code == 421 {
		// The server closes the connection and did not take the message (one
		// shutting down, or past its error limit): another connection may.
		b.requeue(i, o, false)
		return
	}
	if clientLimited(o, b.msgs[i].To) {
		t.throttleRelay(p, fmt.Sprintf("%d %s %s", o.Code, o.Enhanced, o.Text))
		b.requeue(i, slowDown(o), false)
		return
	}
	b.out[i] = o
	if o.Status == channel.Sent {
		t.accepted(p)
	}
	t.feedback(p, b.msgs[i].To, o.Code)
}

// clientLimitTexts are what temporary refusals say when the limit is on the
// mail this client sends, not on the recipient: Postfix's anvil limits
// ("450 4.7.1 Error: too many recipients from 192.0.2.1", "too much mail
// from"), providers' rates ("454 Throttling failure: Maximum sending rate
// exceeded"), the wording of rate limits in Exim's and others'
// configurations. (A quota used up for the day is not a pace: quotaUsedUp.)
var clientLimitTexts = []string{
	"too many recipients from", "too much mail from", "too many messages from",
	"rate limit", "ratelimit", "rate-limit", "rate exceeded", "throttl", "sending rate",
	"sender thread limit", // Microsoft 365: "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded"
}

// clientLimited reports a temporary refusal whose text says that the client
// sends too much (clientLimitTexts), unless it is about the recipient: its
// enhanced code about the address or the mailbox (X.1.x, X.2.x: "450 4.2.1
// The user you are trying to contact is receiving mail at a rate that
// prevents additional messages"), or its text naming the recipient.
func clientLimited(o channel.Outcome, to string) bool {
	if o.Code < 400 || o.Code >= 500 {
		return false
	}
	if len(o.Enhanced) > 2 && (o.Enhanced[2] == '1' || o.Enhanced[2] == '2') || names(o, to) {
		return false
	}
	text := strings.ToLower(o.Text)
	for _, s := range clientLimitTexts {
		if strings.Contains(text, s) {
			return true
		}
	}
	return false
}

// slowDown is the outcome of a message the relay asked to send more slowly.
func slowDown(o channel.Outcome) channel.Outcome {
	return channel.Outcome{Status: channel.Deferred, Text: fmt.Sprintf("not attempted: the relay asked to slow down: %d %s %s", o.Code, o.Enhanced, o.Text)}
}

func domainOf(addr string) string {
	return strings.ToLower(addr[strings.LastIndexByte(addr, '@')+1:])
}

// check refuses messages that cannot be sent as they stand; the outcome
// is a HardFail with Code 0, since no server answered. relay says the
// refusal is this relay's (a message over its SIZE, an internationalised
// address without its SMTPUTF8), which another relay may not share.
func check(m *channel.Message, c *conn) (o channel.Outcome, refused, relay bool) {
	const bad = "\r\n<> \t\x00"
	var reason string
	switch {
	case m.To == "" || !strings.Contains(m.To, "@") || strings.ContainsAny(m.To, bad):
		reason = fmt.Sprintf("invalid recipient address %q", m.To)
	case strings.ContainsAny(m.From, bad):
		reason = fmt.Sprintf("invalid envelope sender %q", m.From)
	case len(m.Data) == 0:
		reason = "empty message"
	case !(&relayCaps{smtputf8: c.smtputf8, size: c.size}).carry(m):
		relay = true
		if c.size > 0 && int64(len(m.Data)) > c.size {
			reason = fmt.Sprintf("message of %d bytes exceeds the relay's limit of %d bytes", len(m.Data), c.size)
			break
		}
		a := m.To
		if ascii(a) {
			a = m.From
		}
		reason = fmt.Sprintf("the internationalised address %q needs SMTPUTF8 (RFC 6531), which the relay does not offer", a)
	default:
		return channel.Outcome{}, false, false
	}
	return channel.Outcome{Status: channel.HardFail, Text: "not sent: " + reason}, true, relay
}

// relayCaps is what a relay offers that a message may need.
type relayCaps struct {
	smtputf8 bool
	size     int64 // SIZE, 0 for none
}

// carry reports whether a relay offering r can take m.
func (r *relayCaps) carry(m *channel.Message) bool {
	return (r.size <= 0 || int64(len(m.Data)) <= r.size) && (r.smtputf8 || !needsUTF8(m.From, m.To))
}

// mayCarry reports whether p can take m, as far as its last EHLO says (yes
// before any).
func (p *pool) mayCarry(m *channel.Message) bool {
	r := p.caps.Load()
	return r == nil || r.carry(m)
}

// elsewhere settles message i, which p cannot carry (o is its refusal):
// set aside for another relay that may (placement), or settled there.
func (t *Transport) elsewhere(p *pool, b *batch, i int, o channel.Outcome) {
	if out, ok := placement(t.upPools(), t.pools, p, &b.msgs[i], o); ok {
		b.out[i] = out
	} else {
		b.setAside(i, p, o)
	}
}

// placement decides for message m, which relay not cannot carry (o is its
// refusal): it waits for a relay up that may carry it (relays differ in SIZE
// and SMTPUTF8; ok false), is Deferred when only one that is down may, and is
// refused with o when none of all may.
func placement(up, all []*pool, not *pool, m *channel.Message, o channel.Outcome) (out channel.Outcome, ok bool) {
	may := func(ps []*pool) bool {
		return slices.ContainsFunc(ps, func(q *pool) bool { return q != not && q.mayCarry(m) })
	}
	switch {
	case may(up):
		return channel.Outcome{}, false
	case may(all):
		return channel.Outcome{Status: channel.Deferred, Text: "not attempted: only a relay that is down may carry it; " + o.Text}, true
	}
	return o, true
}

// runPipelined sends messages from b over c with RFC 2920 pipelining: each
// write carries the previous message's data and terminating dot followed by
// the next message's MAIL, RCPT and DATA, so one round trip serves two
// messages' worth of commands.
func (t *Transport) runPipelined(ctx context.Context, p *pool, c *conn, b *batch, reused bool) error {
	var (
		body    = -1     // message whose data is written and unanswered
		bodyEnd int64    // stream position just after its terminating dot
		lone    bool     // body is a lone dot after a DATA accepted in error
		rset    = c.open // the server holds a failed transaction to reset
		replies int      // replies read on this run, to tell stale connections
	)
	fail := func(err error, env int) error {
		if body >= 0 {
			t.done(b, body)
		}
		if env >= 0 {
			t.done(b, env)
		}
		if body >= 0 && !lone {
			if c.flushed >= bodyEnd {
				b.out[body] = unknown(err)
			} else {
				b.requeue(body, softFail(err), false)
			}
		}
		if env >= 0 {
			b.requeue(env, softFail(err), reused && replies == 0)
		}
		return fmt.Errorf("relay %s: %w", p.relay.Addr, err)
	}
	for {
		i := -1
		if p.relay.MaxPerConn == 0 || c.sent < p.relay.MaxPerConn {
			i = t.next(ctx, p, c, b, body >= 0)
		}
		if i >= 0 {
			if rset {
				c.w.WriteString("RSET\r\n")
			}
			c.writeEnvelope(b.msgs[i].From, b.msgs[i].To)
			c.sent++
		}
		if err := c.flush(); err != nil {
			return fail(err, i)
		}
		if body >= 0 {
			code, err := c.readReply()
			if err != nil {
				return fail(err, i)
			}
			replies++
			t.done(b, body)
			if !lone {
				o := outcome(code, c.text)
				if why := heldAfterData(o, b.msgs[body].To); why != "" {
					return t.hold(p, b, body, i, "end of data", o, why)
				}
				t.settle(p, b, body, o)
			}
			body, lone = -1, false
			if c.broken && i >= 0 {
				// 421 to the end of the data: the server closes, and message
				// i's envelope, written behind the dot, was not looked at.
				t.untried(b, i, errors.New("the server closed the connection: "+string(c.text)))
				return fmt.Errorf("relay %s: 421 %s", p.relay.Addr, c.text)
			}
		}
		if i < 0 {
			c.open = rset
			return nil
		}
		if rset {
			code, err := c.readReply()
			if err == nil {
				err = closedWhileIdle(c, reused, replies, code)
			}
			if err != nil {
				return fail(err, i)
			}
			replies++
			if code != 250 {
				err := &ReplyError{Step: "RSET", Code: code, Text: string(c.text)}
				if code == 421 {
					// The server ends the session after the transaction it just
					// refused (Postfix's "421 4.7.0 Error: too many errors" past its
					// smtpd_hard_error_limit): message i's envelope, written after
					// the RSET, was not looked at, and another connection takes it
					// at no try's cost.
					t.untried(b, i, err)
					return fmt.Errorf("relay %s: %w", p.relay.Addr, err)
				}
				return fail(err, i)
			}
			rset = false
		}
		var (
			failed  bool
			failure channel.Outcome
			stage   int
			data    int
		)
		for k := range 3 {
			code, err := c.readReply()
			if err == nil {
				err = closedWhileIdle(c, reused, replies, code)
			}
			if err != nil {
				return fail(err, i)
			}
			replies++
			ok := code/100 == 2
			if k == 2 {
				ok, data = code == 354, code
			}
			if !ok && !failed {
				failed, failure, stage = true, outcome(code, c.text), k
			}
			if c.broken {
				break // 421: the server closes the connection, and answers no more
			}
		}
		if !failed {
			body, bodyEnd = i, c.writeData(b.msgs[i].Data, b.msgs[i].Plain)
			continue
		}
		failure, throttled, err := t.refused(p, b, i, stage, failure, data == 354)
		if err != nil {
			return err
		}
		t.done(b, i)
		if c.broken {
			if failure.Code == 421 || throttled {
				// 421 before the data: the server is closing this connection;
				// the message was not handed over, so another connection may
				// take it.
				b.requeue(i, failure, false)
			} else {
				// Refused first (a recipient unknown), then closed (Postfix's
				// "421 Error: too many errors" to the DATA after it): the
				// refusal is the answer, not to be asked again.
				b.out[i] = failure
			}
			return nil
		}
		if throttled && data != 354 {
			b.requeue(i, failure, false)
		} else {
			// (With DATA accepted, the lone dot below ends the transaction and
			// its reply settles message i: it must not go to another
			// connection meanwhile.)
			b.out[i] = failure
		}
		if data == 354 {
			// All recipients refused yet DATA accepted: end it with a lone
			// dot (RFC 2920 section 3.1), which also ends the transaction.
			c.w.WriteString(".\r\n")
			body, lone = i, true
		} else {
			rset = true
		}
	}
}

// runLockstep sends messages from b over c one command at a time, for
// servers that do not offer PIPELINING.
func (t *Transport) runLockstep(ctx context.Context, p *pool, c *conn, b *batch, reused bool) error {
	replies := 0
	for {
		if p.relay.MaxPerConn > 0 && c.sent >= p.relay.MaxPerConn {
			return nil
		}
		i := t.next(ctx, p, c, b, false)
		if i < 0 {
			return nil
		}
		m := &b.msgs[i]
		c.sent++
		failEnv := func(err error) error {
			t.done(b, i)
			b.requeue(i, softFail(err), reused && replies == 0)
			return fmt.Errorf("relay %s: %w", p.relay.Addr, err)
		}
		steps := [...]struct {
			line string
			want int
		}{{"MAIL FROM:<" + m.From + ">" + utf8Param(m.From, m.To), 250}, {"RCPT TO:<" + m.To + ">", 250}, {"DATA", 354}}
		var failure *channel.Outcome
		for k, s := range steps {
			c.w.WriteString(s.line)
			c.w.WriteString("\r\n")
			if err := c.flush(); err != nil {
				return failEnv(err)
			}
			code, err := c.readReply()
			if err == nil {
				err = closedWhileIdle(c, reused, replies, code)
			}
			if err != nil {
				return failEnv(err)
			}
			replies++
			if code/100 == 2 && s.want == 250 || code == s.want {
				continue
			}
			o, _, err := t.refused(p, b, i, k, outcome(code, c.text), false)
			if err != nil {
				return err
			}
			failure = &o
			break
		}
		if failure != nil {
			t.done(b, i)
			if c.broken {
				b.requeue(i, *failure, false)
				return nil
			}
			if failure.Status == channel.Deferred { // the relay asked to slow down
				b.requeue(i, *failure, false)
			} else {
				b.out[i] = *failure
			}
			if err := c.cmd("RSET", 250, "RSET"); err != nil {
				return fmt.Errorf("relay %s: %w", p.relay.Addr, err)
			}
			continue
		}
		end := c.writeData(m.Data, m.Plain)
		err := c.flush()
		var code int
		if err == nil {
			code, err = c.readReply()
		}
		t.done(b, i)
		if err != nil {
			if c.flushed >= end {
				b.out[i] = unknown(err)
			} else {
				b.requeue(i, softFail(err), false)
			}
			return fmt.Errorf("relay %s: %w", p.relay.Addr, err)
		}
		replies++
		o := outcome(code, c.text)
		if why := heldAfterData(o, m.To); why != "" {
			return t.hold(p, b, i, -1, "end of data", o, why)
		}
		t.settle(p, b, i, o)
		if c.broken {
			return nil
		}
	}
}

// closedWhileIdle tells a pooled connection that the server closed while it sat idle: its
// first reply is a 421, as Postfix answers when its smtpd_timeout ends a connection ("421
// 4.4.2 Idle timeout"). The message was not looked at, so it goes to another connection
// without counting a try, as when the connection turns out closed before any reply.
func closedWhileIdle(c *conn, reused bool, replies, code int) error {
	if reused && replies == 0 && code == 421 {
		return fmt.Errorf("connection closed by the server while idle: 421 %s", c.text)
	}
	return nil
}

func softFail(err error) channel.Outcome {
	return channel.Outcome{Status: channel.SoftFail, Text: "not sent: " + err.Error()}
}

func unknown(err error) channel.Outcome {
	return channel.Outcome{Status: channel.Unknown, Text: "connection lost after the message data was sent, before the server answered: " + err.Error()}
}

// batch is the work of one Send: messages are taken in order, and given
// back when a connection fails before handing them over.
type batch struct {
	msgs []channel.Message
	out  []channel.Outcome
	max  int

	// held[i] says that message i holds a slot of its domain; nil when no
	// domain's messages in progress are capped. Only the connection that
	// took message i touches held[i] until it gives the message back.
	held []bool

	mu     sync.Mutex
	next   int
	retry  []int
	parked []int // waiting for a slot of their domain, taken last
	// aside are messages a relay could not carry (check), waiting for a
	// connection of one that may (pool.mayCarry), with the outcome they get
	// if none does.
	aside []asideMsg
	tries map[int]int
	// limitWait is the shortest wait for a rate limit that made a message
	// Deferred; noRelay says messages were Deferred for want of a relay (see
	// pace).
	limitWait time.Duration
	noRelay   bool
}

// deferredFor records that a message was Deferred rather than wait d for a
// rate limit.
func (b *batch) deferredFor(d time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.limitWait == 0 || d < b.limitWait {
		b.limitWait = d
	}
}

// take returns the next message for a connection to p: one given back
// first, then the next untried one, then a parked one (parked says so), then
// one set aside by another relay that p may carry.
func (b *batch) take(p *pool) (i int, parked, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if n := len(b.retry); n > 0 {
		i := b.retry[n-1]
		b.retry = b.retry[:n-1]
		return i, false, true
	}
	if b.next < len(b.msgs) {
		b.next++
		return b.next - 1, false, true
	}
	if len(b.parked) > 0 {
		i := b.parked[0]
		b.parked = b.parked[1:]
		return i, true, true
	}
	for k, a := range b.aside {
		if a.not != p && p.mayCarry(&b.msgs[a.i]) {
			b.aside = slices.Delete(b.aside, k, k+1)
			return a.i, false, true
		}
	}
	return 0, false, false
}

type asideMsg struct {
	i   int
	not *pool // the relay that could not carry it, last
	o   channel.Outcome
}

// park sets aside a taken message whose domain has no free slot.
func (b *batch) park(i int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.parked = append(b.parked, i)
}

// giveBack returns a taken message that was not tried.
func (b *batch) giveBack(i int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.retry = append(b.retry, i)
}

// requeue gives a message back after a failed try, or settles it with o
// once it has been tried max times. A free retry does not count.
func (b *batch) requeue(i int, o channel.Outcome, free bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !free {
		if b.tries == nil {
			b.tries = map[int]int{}
		}
		b.tries[i]++
		if b.tries[i] >= b.max {
			b.out[i] = o
			return
		}
	}
	b.retry = append(b.retry, i)
}

func (b *batch) empty() bool { return b.remaining() == 0 }

func (b *batch) remaining() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.retry) + len(b.parked) + len(b.msgs) - b.next + len(b.aside)
}

// hasFor reports whether a connection to p has something to take.
func (b *batch) hasFor(p *pool) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.retry)+len(b.parked)+len(b.msgs)-b.next > 0 {
		return true
	}
	for _, a := range b.aside {
		if a.not != p && p.mayCarry(&b.msgs[a.i]) {
			return true
		}
	}
	return false
}

// setAside keeps message i, which relay not could not carry, for another.
func (b *batch) setAside(i int, not *pool, o channel.Outcome) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.aside = append(b.aside, asideMsg{i: i, not: not, o: o})
}

// strand settles the messages set aside that none of the relays up may
// carry (placement). No worker may run.
func (b *batch) strand(up, all []*pool) {
	b.aside = slices.DeleteFunc(b.aside, func(a asideMsg) bool {
		out, ok := placement(up, all, a.not, &b.msgs[a.i], a.o)
		if ok {
			b.out[a.i] = out
		}
		return ok
	})
}

// finishRest settles every message not yet taken with o; no worker may run.
func (b *batch) finishRest(o channel.Outcome) {
	for _, i := range b.retry {
		b.out[i] = o
	}
	for _, i := range b.parked {
		b.out[i] = o
	}
	for i := b.next; i < len(b.msgs); i++ {
		b.out[i] = o
	}
	for _, a := range b.aside {
		b.out[a.i] = o
	}
	b.retry, b.parked, b.next, b.aside = nil, nil, len(b.msgs), nil
}
