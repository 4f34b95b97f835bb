// Package sending is Herald's sending engine: it takes the pending rows of the sending log of
// every delivery that is sending or retrying, renders each recipient's message, hands batches
// to a channel.Sender and writes the outcomes back (DESIGN.md §4).
//
// The sending log is the queue. A worker claims a batch of due pending rows of one delivery.
// On PostgreSQL the claim is a lease (lease_owner = the node id, lease_until = now + Lease)
// taken with FOR UPDATE SKIP LOCKED, so several nodes share the queue; a claimed row whose
// lease runs out (its node died) is simply claimable again. On SQLite, whose database one node
// owns, the claim only reads the rows, from a cursor per delivery, and the in-flight mark below
// decides which worker a row is: it moves only rows still pending. The worker renders the
// batch with the delivery's template, compiled once per delivery and prepared hash, and builds
// each MIME message with email.Composer.
//
// Crash safety: before the batch goes to the Sender its rows are marked in flight (status
// sending, with a fresh lease) in a committed transaction; rows the mark did not move are
// dropped from the batch. Outcomes are written back in one
// transaction per batch, with the quarantine changes they cause. A row found in flight with an
// expired lease may have been sent by a node that died before writing its outcome: it goes
// back to pending, marked ambiguous, and is sent again. So at most the messages in flight at a
// hard crash are sent twice, and exactly those rows say ambiguous.
//
// Outcomes: Sent → sent; Unknown → sent and ambiguous; HardFail → failed at once with its type
// and reason; SoftFail → pending again after a back-off (Config.Backoff) until the delivery's
// validity_until, then failed with reason "expired"; Deferred → pending at once, no attempt
// counted. When a delivery has no row pending or in flight it becomes finished (failed when no
// row was sent); while only retries wait it is retrying. While the Sender says it has no way
// out (channel.Gate: every relay down or refusing the account's mail) no batch is claimed, so an
// outage leaves rows pending and untried and the delivery sending, until it ends.
//
// Pause and stop: workers read the delivery's state before every claim, and a watcher cancels
// the Send of batches whose delivery was paused or stopped (the Sender then defers the
// messages not yet on the wire), so a pause takes effect within WatchInterval plus the
// messages already handed over. Resume continues with the rows still pending.
//
// Limits: a batch lease must outlast the slowest Send (Lease, 5 minutes by default); a node
// whose Send outlives its lease loses the rows to another node, which sends them again as
// ambiguous, and its own late write-back is ignored.
package sending

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heraldhq/herald/internal/channel"
	"github.com/heraldhq/herald/internal/channel/email"
	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/delivery"
	"github.com/heraldhq/herald/internal/profile"
	"github.com/heraldhq/herald/internal/quarantine"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/tracking"
)

// DefaultBackoff is the wait before each retry of a soft failure, ACS-like: the n-th retry
// waits DefaultBackoff[n-1], and every retry after the last entry waits the last entry.
var DefaultBackoff = []time.Duration{15 * time.Minute, 30 * time.Minute, time.Hour, 2 * time.Hour, 4 * time.Hour, 24 * time.Hour}

// ParseBackoff reads a retry schedule written as comma-separated durations, e.g.
// "15m,30m,1h,2h,4h,24h" (DefaultBackoff; "1d" is 24h too): the n-th retry waits the n-th
// entry, and every retry after the last waits the last. Each wait must be at least a second and
// no shorter than the one before it. Errors name the entry at fault.
func ParseBackoff(s string) ([]time.Duration, error) {
	var out []time.Duration
	for n, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		d, err := time.ParseDuration(item)
		if days, ok := strings.CutSuffix(item, "d"); ok && err != nil {
			var k uint64
			if k, err = strconv.ParseUint(days, 10, 16); err == nil {
				d = time.Duration(k) * 24 * time.Hour
			}
		}
		switch {
		case err != nil:
			return nil, fmt.Errorf("entry %d %q is not a duration such as 15m, 2h or 24h", n+1, item)
		case d < time.Second:
			return nil, fmt.Errorf("entry %d %q is shorter than a second", n+1, item)
		case len(out) > 0 && d < out[len(out)-1]:
			return nil, fmt.Errorf("entry %d %q is shorter than the wait before it (%v)", n+1, item, out[len(out)-1])
		}
		out = append(out, d)
	}
	return out, nil
}

// ParseDomainLimits reads per-recipient-domain rate caps written "domain=rate,...": messages
// per second for each named domain, "*" for every other domain (email.DomainLimits.Default),
// e.g. "gmail.com=50,yahoo.com=20,*=100". A domain is one an address may have
// (profile.CheckDomain), matched in lower case as the part of the address after the @; an
// internationalised domain matches addresses written with it as it is written. Errors name the
// entry at fault.
func ParseDomainLimits(s string) (email.DomainLimits, error) {
	var l email.DomainLimits
	err := parseDomainEntries(s, "messages-per-second, e.g. gmail.com=50", func(dom, v string) error {
		r, err := strconv.ParseFloat(v, 64)
		if err != nil || r <= 0 || math.IsInf(r, 0) || math.IsNaN(r) {
			return fmt.Errorf("%q is not a positive number of messages per second", v)
		}
		if dom == "*" {
			l.Default = r
			return nil
		}
		if l.Rates == nil {
			l.Rates = map[string]float64{}
		}
		l.Rates[dom] = r
		return nil
	})
	if err != nil {
		return email.DomainLimits{}, err
	}
	return l, nil
}

// ParseDomainConns reads per-recipient-domain caps on the messages in progress at once,
// written "domain=N,..." like ParseDomainLimits ("*" for each other domain), e.g.
// "gmail.com=10,*=20", into l's Conns and DefaultConns. Errors name the entry at fault.
func ParseDomainConns(s string, l *email.DomainLimits) error {
	var conns map[string]int
	def := 0
	err := parseDomainEntries(s, "messages-in-progress, e.g. gmail.com=10", func(dom, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return fmt.Errorf("%q is not a whole number of messages in progress, 1 or more", v)
		}
		if dom == "*" {
			def = n
			return nil
		}
		if conns == nil {
			conns = map[string]int{}
		}
		conns[dom] = n
		return nil
	})
	if err != nil {
		return err
	}
	l.Conns, l.DefaultConns = conns, def
	return nil
}

// parseDomainEntries reads "domain=value,..." and hands each entry's lower-case domain (or *)
// and trimmed value to set, naming the entry in any error; want describes the expected form.
func parseDomainEntries(s, want string, set func(dom, value string) error) error {
	seen := map[string]bool{}
	for n, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		where := fmt.Sprintf("entry %d %q", n+1, item)
		dom, value, ok := strings.Cut(item, "=")
		if !ok {
			return fmt.Errorf("%s: want domain=%s", where, want)
		}
		dom = strings.ToLower(strings.TrimSpace(dom))
		if dom != "*" {
			if err := profile.CheckDomain(dom); err != nil {
				return fmt.Errorf("%s: %q is not a domain name (or * for every other domain): %w", where, dom, err)
			}
			// Messages go to an internationalised domain in its ASCII form.
			a, err := email.ASCIIDomain(dom)
			if err != nil {
				return fmt.Errorf("%s: %q is not a valid internationalised domain name: %w", where, dom, err)
			}
			dom = a
		}
		if seen[dom] {
			return fmt.Errorf("%s: %s is capped twice", where, dom)
		}
		seen[dom] = true
		if err := set(dom, strings.TrimSpace(value)); err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
	}
	return nil
}

// Defaults of Config.
const (
	DefaultBatchSize     = 500
	DefaultLease         = 5 * time.Minute
	DefaultPollInterval  = time.Second
	DefaultWatchInterval = 250 * time.Millisecond
)

// Config configures an Engine. DB, Deliveries, Quarantine and Sender are required; zero
// values of the rest pick the documented defaults.
type Config struct {
	DB         *store.DB
	Deliveries *delivery.Service
	Quarantine *quarantine.Service
	// Sender carries the messages out: an email.Transport, or a CaptureSender in capture mode.
	Sender channel.Sender
	// Links builds tracking URLs (pixel, tracked links, opt-out, mirror); nil sends without
	// tracking and without a List-Unsubscribe URL.
	Links *tracking.Links
	// ReturnPath makes the per-recipient envelope sender; nil uses the content's From address.
	ReturnPath *ReturnPath
	// MessageIDDomain is the right-hand side of Message-IDs; "" uses the return-path domain,
	// else "localhost".
	MessageIDDomain string
	// DKIM signs messages when set.
	DKIM *email.DKIM
	// NodeID names this node in lease_owner; "" means host name and process id.
	NodeID string
	// Workers is how many batches are rendered and sent at once; 0 means one more than the
	// number of CPUs. A batch spends much of its time waiting, on the network and on the
	// database's single writer, and with one worker a core the cores sat idle meanwhile: on two
	// CPUs, three workers sent 5% (100,000 recipients, ten pairs) to 12% (a million) more than
	// two, for 4–11% less CPU a message and the same peak RSS at a million recipients
	// (docs/benchmarks.md, tenth session).
	Workers int
	// BatchSize is the most rows one claim takes; 0 means DefaultBatchSize.
	BatchSize int
	// Lease is how long a claim is held; 0 means DefaultLease.
	Lease time.Duration
	// PollInterval is the wait of an idle worker before it looks for work again; 0 means
	// DefaultPollInterval. Kick wakes the workers at once.
	PollInterval time.Duration
	// WatchInterval is how often in-flight batches are checked for a pause or stop; 0 means
	// DefaultWatchInterval.
	WatchInterval time.Duration
	// Backoff is the retry schedule of soft failures; nil means DefaultBackoff.
	Backoff []time.Duration
	// Heartbeat is how often this node records that it is alive and whether it is sending, and
	// counts the nodes that send, whose number divides the Sender's limits (nodes.go); 0 means
	// DefaultHeartbeat.
	Heartbeat time.Duration
	Clock     clock.Clock
	Logger    *slog.Logger
}

// Engine is the sending engine. Start it once; Stop waits for the batches in hand to be
// written back.
type Engine struct {
	cfg     Config
	db      *store.DB
	clock   clock.Clock
	log     *slog.Logger
	sql     queries
	stmts   prepared
	compose *email.Composer

	templates templateCache
	rr        atomic.Uint64 // round-robin over active deliveries

	recoverMu   sync.Mutex
	lastRecover time.Time

	cursorMu sync.Mutex
	cursors  map[int64]int64 // delivery id → last row id a worker read (SQLite)

	flightMu sync.Mutex
	inflight map[int64]map[*flight]struct{} // delivery id → batches being sent

	metrics       metrics
	started       time.Time // when New made the engine, for the nodes table
	nodesMu       sync.Mutex
	liveNodes     int         // at the last heartbeat, this node included
	sharedWith    int         // 1 + the other active nodes at the last heartbeat; 0 before the first
	sentSinceBeat atomic.Bool // a batch went to the Sender since the last heartbeat

	kick   chan struct{}
	cancel context.CancelFunc
	wg     sync.WaitGroup
	start  sync.Once

	// settleHook, set by tests, runs in settle's transaction just after it has read the counts
	// it decides on.
	settleHook func()
}

// flight is one batch handed to the Sender; cancel stops it when its delivery is paused.
type flight struct{ cancel context.CancelFunc }

// New returns an Engine for cfg.
func New(cfg Config) (*Engine, error) {
	if cfg.DB == nil || cfg.Deliveries == nil || cfg.Quarantine == nil || cfg.Sender == nil {
		return nil, errors.New("sending: Config needs DB, Deliveries, Quarantine and Sender")
	}
	if cfg.NodeID == "" {
		host, _ := os.Hostname()
		cfg.NodeID = host + "-" + strconv.Itoa(os.Getpid())
	}
	if cfg.Workers <= 0 {
		cfg.Workers = runtime.NumCPU() + 1
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = DefaultBatchSize
	}
	if cfg.Lease <= 0 {
		cfg.Lease = DefaultLease
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = DefaultPollInterval
	}
	if cfg.WatchInterval <= 0 {
		cfg.WatchInterval = DefaultWatchInterval
	}
	if len(cfg.Backoff) == 0 {
		cfg.Backoff = DefaultBackoff
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = DefaultHeartbeat
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	domain := cfg.MessageIDDomain
	if domain == "" && cfg.ReturnPath != nil {
		domain = cfg.ReturnPath.Domain
	}
	if domain == "" {
		domain = "localhost"
	}
	q := queriesFor(cfg.DB.Engine)
	stmts, err := prepareStatements(context.Background(), cfg.DB, q)
	if err != nil {
		return nil, err
	}
	return &Engine{
		cfg:      cfg,
		db:       cfg.DB,
		clock:    cfg.Clock,
		log:      cfg.Logger,
		sql:      q,
		stmts:    stmts,
		compose:  &email.Composer{Domain: domain, DKIM: cfg.DKIM, Clock: cfg.Clock},
		inflight: map[int64]map[*flight]struct{}{},
		cursors:  map[int64]int64{},
		kick:     make(chan struct{}, 1),
		started:  cfg.Clock.Now(),
	}, nil
}

// NodeID is the name this engine writes in lease_owner.
func (e *Engine) NodeID() string { return e.cfg.NodeID }

// Start starts the workers and the pause watcher; they run until Stop or until ctx ends.
// Calling Start again does nothing.
func (e *Engine) Start(ctx context.Context) error {
	// Rows this node id holds now were left by an earlier run of this node that died (node ids
	// are unique among live nodes): take them back at once instead of after their lease.
	if err := e.reclaimOwn(ctx); err != nil {
		return err
	}
	// Take this node's share of the limits before the first message.
	if err := e.heartbeat(ctx); err != nil {
		return err
	}
	e.start.Do(func() {
		ctx, e.cancel = context.WithCancel(ctx)
		e.wg.Go(func() { e.beat(ctx) })
		for i := range e.cfg.Workers {
			e.wg.Go(func() { e.work(ctx, i) })
		}
		e.wg.Go(func() { e.watch(ctx) })
		e.log.Info("sending engine started", "node", e.cfg.NodeID, "workers", e.cfg.Workers, "batch", e.cfg.BatchSize)
	})
	return nil
}

// Stop stops the engine and waits until every batch in hand is written back. Messages not yet
// handed to the Sender go back to the queue.
func (e *Engine) Stop() {
	if e.cancel != nil {
		e.cancel()
	}
	e.wg.Wait()
}

// Kick wakes idle workers, e.g. after a delivery was confirmed or resumed.
func (e *Engine) Kick() {
	select {
	case e.kick <- struct{}{}:
	default:
	}
}

func (e *Engine) work(ctx context.Context, worker int) {
	w := newWorker(e)
	for ctx.Err() == nil {
		n, err := e.step(ctx, w)
		if err != nil && ctx.Err() == nil {
			e.metrics.errors.Add(1)
			e.log.Error("sending batch failed", "worker", worker, "error", err)
		}
		if n > 0 && err == nil {
			continue
		}
		t := time.NewTimer(e.cfg.PollInterval)
		select {
		case <-ctx.Done():
		case <-e.kick:
		case <-t.C:
		}
		t.Stop()
	}
}

// gate returns how long the Sender has no way out for, and why (channel.Gate); 0 and "" when
// it can send, or cannot tell.
func (e *Engine) gate() (time.Duration, string) {
	if g, ok := e.cfg.Sender.(channel.Gate); ok {
		return g.Wait()
	}
	return 0, ""
}

// Waiting says why this node's engine claims nothing although deliveries may be sending: its
// Sender has no way out for now (channel.Gate), and when it tries again; "" while it can send.
// Every node has the same relays, so one node's answer stands for the installation's.
func (e *Engine) Waiting() string {
	wait, why := e.gate()
	if wait <= 0 {
		return ""
	}
	return fmt.Sprintf("%s; next try in %v", why, wait.Round(100*time.Millisecond))
}

// Step does one round of work on the calling goroutine: it returns expired in-flight rows to
// the queue, claims one batch of one active delivery, sends it and writes the outcomes back,
// and settles the state of deliveries with nothing left to claim. It returns the number of
// rows it handled, 0 when nothing was due. Tests drive the engine with it; Start runs it in a
// loop on each worker.
func (e *Engine) Step(ctx context.Context) (int, error) {
	return e.step(ctx, newWorker(e))
}

func (e *Engine) step(ctx context.Context, w *worker) (int, error) {
	if err := e.recoverExpired(ctx); err != nil {
		return 0, err
	}
	active, err := e.activeDeliveries(ctx)
	if err != nil {
		return 0, err
	}
	e.forgetCursors(active)
	if len(active) == 0 {
		return 0, nil
	}
	now := e.clock.Now()
	// While the Sender has no way out (every relay down or refusing our mail), no batch is
	// claimed: the rows stay pending, untried, and the delivery goes on when it is back.
	wait, _ := e.gate()
	gated := wait > 0
	first := int(e.rr.Add(1) % uint64(len(active)))
	for k := range active {
		d := active[(first+k)%len(active)]
		if !d.validUntil.IsZero() && !now.Before(d.validUntil) {
			if err := e.settle(ctx, d); err != nil {
				return 0, err
			}
			continue
		}
		if gated {
			// Nothing is claimed, but a delivery whose last batch went out just before the
			// outage still finishes.
			if err := e.settle(ctx, d); err != nil {
				return 0, err
			}
			continue
		}
		rows, err := e.claim(ctx, d.id)
		if err != nil {
			return 0, err
		}
		if len(rows) == 0 {
			if err := e.settle(ctx, d); err != nil {
				return 0, err
			}
			continue
		}
		return len(rows), e.process(ctx, w, d, rows)
	}
	return 0, nil
}

// watch cancels the sends of batches whose delivery is no longer sending or retrying.
func (e *Engine) watch(ctx context.Context) {
	t := time.NewTicker(e.cfg.WatchInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		e.flightMu.Lock()
		ids := make([]int64, 0, len(e.inflight))
		for id := range e.inflight {
			ids = append(ids, id)
		}
		e.flightMu.Unlock()
		if len(ids) > 0 {
			e.renewLeases(ctx)
		}
		for _, id := range ids {
			var state string
			err := e.db.Read.QueryRowContext(ctx, `SELECT state FROM deliveries WHERE id = $1`, id).Scan(&state)
			if err != nil && !errors.Is(err, sql.ErrNoRows) {
				continue
			}
			if state == string(delivery.Sending) || state == string(delivery.Retrying) {
				continue
			}
			e.flightMu.Lock()
			for f := range e.inflight[id] {
				f.cancel()
			}
			e.flightMu.Unlock()
			e.log.Info("delivery no longer sending; cancelling its batches in flight", "delivery", id, "state", state)
		}
	}
}

// renewLeases extends the lease of this node's rows in flight once a quarter of it has gone,
// so that a Send slower than the lease (a slow or throttling server) is not taken over by
// another node and sent twice. A node that dies stops renewing, and its rows come back.
func (e *Engine) renewLeases(ctx context.Context) {
	now := e.clock.Now()
	err := e.db.InTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, e.sql.renew,
			now.Add(e.cfg.Lease).UnixMilli(), now.Add(e.cfg.Lease*3/4).UnixMilli(), e.cfg.NodeID)
		return err
	})
	if err != nil && ctx.Err() == nil {
		e.log.Warn("could not renew the leases of rows in flight", "err", err)
	}
}

func (e *Engine) addFlight(id int64, f *flight) {
	e.flightMu.Lock()
	defer e.flightMu.Unlock()
	if e.inflight[id] == nil {
		e.inflight[id] = map[*flight]struct{}{}
	}
	e.inflight[id][f] = struct{}{}
}

func (e *Engine) removeFlight(id int64, f *flight) {
	e.flightMu.Lock()
	defer e.flightMu.Unlock()
	delete(e.inflight[id], f)
	if len(e.inflight[id]) == 0 {
		delete(e.inflight, id)
	}
}

// activeDelivery is what the engine reads of a delivery before each claim.
type activeDelivery struct {
	id         int64
	state      delivery.State
	validUntil time.Time
	hash       string
}

func (e *Engine) activeDeliveries(ctx context.Context) ([]activeDelivery, error) {
	rows, err := e.readQuery(ctx, activeDeliveriesSQL)
	if err != nil {
		return nil, fmt.Errorf("list deliveries to send: %w", err)
	}
	defer rows.Close()
	var out []activeDelivery
	for rows.Next() {
		var d activeDelivery
		var until sql.NullInt64
		var hash sql.NullString
		if err := rows.Scan(&d.id, &d.state, &until, &hash); err != nil {
			return nil, fmt.Errorf("list deliveries to send: %w", err)
		}
		d.validUntil, d.hash = clock.FromMillis(until.Int64), hash.String
		out = append(out, d)
	}
	return out, rows.Err()
}

// reclaimOwn returns to the queue the rows leased under this node's id by an earlier run of
// it: rows in flight as ambiguous (they may have been sent), claimed rows untouched.
func (e *Engine) reclaimOwn(ctx context.Context) error {
	var inFlight, claimed int64
	err := e.db.InTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, e.sql.reclaimInFlight, e.cfg.NodeID)
		if err != nil {
			return err
		}
		inFlight, _ = res.RowsAffected()
		if e.sql.engine == store.SQLite {
			n, err := recoverBatches(ctx, tx, `lease_owner = $1`, e.cfg.NodeID)
			if err != nil {
				return err
			}
			inFlight += n
		}
		res, err = tx.ExecContext(ctx, e.sql.releaseOwn, e.cfg.NodeID)
		if err != nil {
			return err
		}
		claimed, _ = res.RowsAffected()
		return nil
	})
	if err != nil {
		return fmt.Errorf("take back the rows of node %s's earlier run: %w", e.cfg.NodeID, err)
	}
	if inFlight+claimed > 0 {
		e.log.Warn("took back rows left by this node's earlier run; those in flight are marked ambiguous (they may have been sent)",
			"node", e.cfg.NodeID, "in_flight", inFlight, "claimed", claimed)
	}
	return nil
}

// recoverExpired returns to the queue, marked ambiguous, the rows left in flight by a node
// whose lease ran out. It runs at most once per tenth of a lease.
func (e *Engine) recoverExpired(ctx context.Context) error {
	now := e.clock.Now()
	e.recoverMu.Lock()
	due := e.lastRecover.IsZero() || now.Sub(e.lastRecover) >= e.cfg.Lease/10 || now.Before(e.lastRecover)
	if due {
		e.lastRecover = now
	}
	e.recoverMu.Unlock()
	if !due {
		return nil
	}
	var n int64
	err := e.db.InTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, e.sql.recoverExpired, now.UnixMilli())
		if err != nil {
			return err
		}
		if n, err = res.RowsAffected(); err != nil || e.sql.engine != store.SQLite {
			return err
		}
		batched, err := recoverBatches(ctx, tx, `lease_until < $1`, now.UnixMilli())
		n += batched
		return err
	})
	if err != nil {
		return fmt.Errorf("return expired in-flight rows to the queue: %w", err)
	}
	if n > 0 {
		e.log.Warn("rows left in flight by a stopped node go back to the queue as ambiguous (they may have been sent)", "rows", n)
	}
	return nil
}
