package sending

import (
	"context"
	"database/sql"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/audit"
	"github.com/heraldhq/herald/internal/channel"
	"github.com/heraldhq/herald/internal/delivery"
	"github.com/heraldhq/herald/internal/stats"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/store/storetest"
	"github.com/heraldhq/herald/internal/webhook"
)

// outcomeSender answers each message with the outcome given for its recipient.
type outcomeSender struct{ outcomes map[string]channel.Outcome }

func (s *outcomeSender) Send(_ context.Context, msgs []channel.Message, out []channel.Outcome) error {
	for i, m := range msgs {
		out[i] = s.outcomes[m.To]
	}
	return nil
}
func (s *outcomeSender) Close() error { return nil }

// TestWriteBackStoresEveryOutcome sends one batch whose rows take every path of the
// write-back — sent with and without a provider id and with two reply codes (grouped
// statements), ambiguous, soft and hard failures (the general one) — and checks each row's
// columns and the live counters.
func TestWriteBackStoresEveryOutcome(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		outcomes := []channel.Outcome{
			{Status: channel.Sent, Code: 250, Enhanced: "2.0.0", ProviderID: "Q1"},
			{Status: channel.Sent, Code: 250, Enhanced: "2.0.0"},
			{Status: channel.Sent, Code: 250, Enhanced: "2.0.0", ProviderID: "Q 3 \"quoted\" é"},
			{Status: channel.Sent, Code: 251, Enhanced: "2.1.5"},
			{Status: channel.Sent},
			{Status: channel.Unknown, Text: "connection dropped after the data"},
			{Status: channel.SoftFail, Code: 451, Enhanced: "4.3.0", Text: "try later"},
			{Status: channel.HardFail, Code: 550, Enhanced: "5.1.1", Text: "no such user"},
		}
		f := newFixture(t, db, len(outcomes), 84*time.Hour)
		byAddress := map[string]channel.Outcome{}
		for i, o := range outcomes {
			byAddress[f.addrs[i]] = o
		}
		e := f.engine(t, &outcomeSender{byAddress}, "n1", len(outcomes))
		if _, err := e.Step(context.Background()); err != nil {
			t.Fatal(err)
		}
		type want struct {
			status, enhanced, provider, failure string
			code                                int64
			ambiguous, sentAt                   bool
		}
		wants := []want{
			{status: "sent", code: 250, enhanced: "2.0.0", provider: "Q1", sentAt: true},
			{status: "sent", code: 250, enhanced: "2.0.0", sentAt: true},
			{status: "sent", code: 250, enhanced: "2.0.0", provider: "Q 3 \"quoted\" é", sentAt: true},
			{status: "sent", code: 251, enhanced: "2.1.5", sentAt: true},
			{status: "sent", sentAt: true},
			{status: "sent", ambiguous: true, sentAt: true},
			{status: "pending", code: 451, enhanced: "4.3.0", failure: "soft"},
			{status: "failed", code: 550, enhanced: "5.1.1", failure: "hard"},
		}
		for i, w := range wants {
			var status string
			var code, sentAt sql.NullInt64
			var enhanced, provider, failure, owner sql.NullString
			var attempts int
			var ambiguous bool
			if err := db.Read.QueryRow(`SELECT status, smtp_code, enhanced_code, provider_id, failure_type, attempts, ambiguous, sent_at, lease_owner
				FROM sending_log WHERE delivery_id = $1 AND address = $2`, f.id, f.addrs[i]).Scan(
				&status, &code, &enhanced, &provider, &failure, &attempts, &ambiguous, &sentAt, &owner); err != nil {
				t.Fatal(err)
			}
			got := want{status: status, code: code.Int64, enhanced: enhanced.String, provider: provider.String,
				failure: failure.String, ambiguous: ambiguous, sentAt: sentAt.Valid}
			if got != w || attempts != 1 || owner.Valid || (w.provider == "") != !provider.Valid {
				t.Errorf("row %d: %+v, attempts %d, lease %v, provider set %v; want %+v, 1 attempt, no lease", i, got, attempts, owner, provider.Valid, w)
			}
		}
		live, err := stats.NewService(db, f.clk, nil).Read(context.Background(), f.id)
		if err != nil {
			t.Fatal(err)
		}
		if live.Sent != 7 || live.Delivered != 6 || live.HardBounces != 1 {
			t.Errorf("live counters %+v; want 7 sent of which 6 delivered, 1 hard bounce (the soft one waits)", live)
		}
	})
}

// recordingSender defers the first attempt of the recipients in defer, accepts the rest,
// and counts what it accepted per recipient.
type recordingSender struct {
	mu       sync.Mutex
	deferred map[string]bool // true once deferred
	accepted map[string]int
}

func (s *recordingSender) Send(_ context.Context, msgs []channel.Message, out []channel.Outcome) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, m := range msgs {
		if done, ok := s.deferred[m.To]; ok && !done {
			s.deferred[m.To] = true
			out[i] = channel.Outcome{Status: channel.Deferred}
			continue
		}
		s.accepted[m.To]++
		out[i] = channel.Outcome{Status: channel.Sent, Code: 250}
	}
	return nil
}
func (s *recordingSender) Close() error { return nil }

// TestRowsReadTwiceAreSentOnce has a worker read rows that another has read and sent since,
// some of which went back to the queue: it sends only those.
func TestRowsReadTwiceAreSentOnce(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		f := newFixture(t, db, 6, 84*time.Hour)
		s := &recordingSender{accepted: map[string]int{}, deferred: map[string]bool{f.addrs[0]: false, f.addrs[1]: false}}
		e := f.engine(t, s, "n1", 4)
		active, err := e.activeDeliveries(ctx)
		if err != nil || len(active) != 1 {
			t.Fatal(active, err)
		}
		d := active[0]
		a, err := e.claim(ctx, d.id)
		if err != nil {
			t.Fatal(err)
		}
		b, err := e.claim(ctx, d.id)
		if err != nil {
			t.Fatal(err)
		}
		// On SQLite this third read starts again from the first rows, which are still pending;
		// on PostgreSQL they are leased and it takes nothing.
		c, err := e.claim(ctx, d.id)
		if err != nil {
			t.Fatal(err)
		}
		if err := e.process(ctx, newWorker(e), d, a); err != nil { // sends 2 of 4, defers 2
			t.Fatal(err)
		}
		for _, rows := range [][]row{c, b} { // c may send only the 2 deferred
			if len(rows) > 0 {
				if err := e.process(ctx, newWorker(e), d, rows); err != nil {
					t.Fatal(err)
				}
			}
		}
		drain(t, e)
		for _, addr := range f.addrs {
			if s.accepted[addr] != 1 {
				t.Errorf("%s received %d messages, want 1", addr, s.accepted[addr])
			}
		}
		if db.Engine == store.SQLite && len(c) == 0 {
			t.Error("the third read found nothing; the test needs it to read the first rows again")
		}
	})
}

// TestWorkersNeverSendARowTwice runs several workers on small batches while deferred rows
// return to the queue behind them: every recipient gets exactly one message.
func TestWorkersNeverSendARowTwice(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		const n = 300
		f := newFixture(t, db, n, 84*time.Hour)
		s := &recordingSender{accepted: map[string]int{}, deferred: map[string]bool{}}
		for i := 0; i < n; i += 3 {
			s.deferred[f.addrs[i]] = false
		}
		e, err := New(Config{DB: db, Deliveries: f.del, Quarantine: f.quar, Sender: s, NodeID: "n1", BatchSize: 7, Workers: 4,
			Clock: f.clk, PollInterval: 5 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		if err := e.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 20*time.Second, func() bool { return f.state(t) == delivery.Finished })
		e.Stop()
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, a := range f.addrs {
			if s.accepted[a] != 1 {
				t.Errorf("%s received %d messages, want 1", a, s.accepted[a])
			}
		}
		if got := f.count(t, `status = 'sent'`); got != n {
			t.Errorf("%d rows sent, want %d", got, n)
		}
	})
}

// meddlingSender accepts every message, but first runs meddle, as a writer that changes rows
// while their batch is out.
type meddlingSender struct{ meddle func() }

func (s meddlingSender) Send(_ context.Context, msgs []channel.Message, out []channel.Outcome) error {
	s.meddle()
	for i := range msgs {
		out[i] = channel.Outcome{Status: channel.Sent, Code: 250, Enhanced: "2.0.0"}
	}
	return nil
}
func (meddlingSender) Close() error { return nil }

// TestWriteBackLeavesRowsThatChangedInFlight: nothing in Herald writes a row while its batch is
// out, but should something do so, the write-back leaves that row as it found it and counts
// only the rows it wrote, in the live counters and the webhook events. On SQLite this is the
// write-back's second, exact pass, after its counted statement changed fewer rows than named.
func TestWriteBackLeavesRowsThatChangedInFlight(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		f := newFixture(t, db, 4, 84*time.Hour)
		if _, err := webhook.NewService(db, f.clk, slog.New(slog.DiscardHandler)).Create(ctx, audit.System,
			webhook.NewEndpoint{URL: "https://hooks.example/h", Events: []string{webhook.Sent, webhook.Failed}}); err != nil {
			t.Fatal(err)
		}
		meddle := func() {
			if _, err := db.Write.Exec(`UPDATE sending_log SET status = 'failed', failure_type = 'hard', failure_reason = 'changed meanwhile'
				WHERE delivery_id = $1 AND address = $2`, f.id, f.addrs[1]); err != nil {
				t.Error(err)
			}
		}
		e := f.engine(t, meddlingSender{meddle}, "n1", 10)
		if _, err := e.Step(ctx); err != nil {
			t.Fatal(err)
		}
		for i, a := range f.addrs {
			r := f.row(t, a)
			if i == 1 {
				if r.status != "failed" || r.reason != "changed meanwhile" || r.sentAt.Valid {
					t.Errorf("the changed row is %+v; want it left failed", r)
				}
			} else if r.status != "sent" || !r.sentAt.Valid {
				t.Errorf("row %d is %+v; want sent", i, r)
			}
		}
		live, err := stats.NewService(db, f.clk, nil).Read(ctx, f.id)
		if err != nil {
			t.Fatal(err)
		}
		var events int
		if err := db.Read.QueryRow(`SELECT count(*) FROM webhook_outbox WHERE type = 'sent'`).Scan(&events); err != nil {
			t.Fatal(err)
		}
		if live.Sent != 3 || events != 3 {
			t.Errorf("%d sent in the live counters, %d sent events; want 3 and 3", live.Sent, events)
		}
		if n := f.inFlight(t); n != 0 {
			t.Errorf("%d rows still in flight", n)
		}
	})
}
