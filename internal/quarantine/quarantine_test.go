package quarantine

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/audit"
	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/problem"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/store/storetest"
)

var t0 = time.Date(2026, 5, 4, 10, 0, 0, 0, time.UTC)

const day = 24 * time.Hour

func newService(t *testing.T, db *store.DB) (*Service, *clock.Fake) {
	t.Helper()
	clk := clock.NewFake(t0)
	return NewService(db, clk, slog.New(slog.NewTextHandler(io.Discard, nil))), clk
}

// inTx runs fn in its own transaction, as the sending engine would, and fails the test on error.
func inTx[T any](t *testing.T, db *store.DB, fn func(tx *sql.Tx) (T, error)) T {
	t.Helper()
	var out T
	err := db.InTx(context.Background(), func(tx *sql.Tx) error {
		var err error
		out, err = fn(tx)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func count(t *testing.T, db *store.DB, table string) int {
	t.Helper()
	var n int
	if err := db.Read.QueryRow(`SELECT count(*) FROM ` + table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func mustGet(t *testing.T, s *Service, ch Channel, addr string) Entry {
	t.Helper()
	e, err := s.Get(context.Background(), ch, addr)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func history(t *testing.T, s *Service, ch Channel, addr string) []HistoryEntry {
	t.Helper()
	h, err := s.History(context.Background(), ch, addr)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestNormalizeAddress(t *testing.T) {
	good := []struct {
		ch       Channel
		in, want string
	}{
		{Email, " Marie.Curie@Example.FR ", "Marie.Curie@example.fr"},
		{SMS, "+33 6-12.34.56.78", "+33612345678"},
		{SMS, "+1 (415) 555 0100", "+14155550100"},
		{Push, "fcm:APA91b-Token_xyz", "fcm:APA91b-Token_xyz"},
	}
	for _, g := range good {
		if got, err := NormalizeAddress(g.ch, g.in); err != nil || got != g.want {
			t.Errorf("NormalizeAddress(%s, %q) = %q, %v; want %q", g.ch, g.in, got, err, g.want)
		}
	}
	bad := []struct {
		ch Channel
		in string
	}{
		{Email, "plain"}, {Email, "@example.com"}, {Email, "a@"}, {Email, "a b@example.com"}, {Email, "a@b@example.com"},
		{Email, "x@" + strings.Repeat("a", 260) + ".com"},
		{SMS, "0612345678"}, {SMS, "+0612345678"}, {SMS, "+1234"}, {SMS, "+33 6 12 x4 56 78"},
		{Push, ""}, {Push, "tok en"}, {Push, strings.Repeat("a", MaxPushTokenLength+1)},
		{"fax", "+33612345678"},
	}
	for _, b := range bad {
		_, err := NormalizeAddress(b.ch, b.in)
		if p, ok := problem.As(err); !ok || p.Kind != problem.Invalid {
			t.Errorf("NormalizeAddress(%s, %.40q) = %v; want an Invalid problem", b.ch, b.in, err)
		}
	}
}

func TestSoftErrorsCountOncePerDayThenQuarantine(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		s, _ := newService(t, db)
		ctx := context.Background()
		const addr = "Ann.Lee@Example.COM"
		const key = "Ann.Lee@example.com"
		soft := func(at time.Time, full bool) Entry {
			t.Helper()
			return inTx(t, db, func(tx *sql.Tx) (Entry, error) {
				return s.RecordSoft(ctx, tx, Email, addr, "452 try later", full, at)
			})
		}
		if e := mustGet(t, s, Email, addr); e.Status != StatusValid || e.ErrorCount != 0 || !e.UpdatedAt.IsZero() || e.Address != key {
			t.Fatalf("unknown address = %+v; want valid, no errors, keyed %q", e, key)
		}
		if e := soft(t0, false); e.Status != StatusErroneous || e.ErrorCount != 1 {
			t.Fatalf("first soft error: %+v; want erroneous, 1 error", e)
		}
		// Two more the same day, the last a minute short of 24 hours: still one error.
		soft(t0.Add(5*time.Hour), false)
		if e := soft(t0.Add(day-time.Minute), false); e.ErrorCount != 1 || !e.LastErrorAt.Equal(t0) {
			t.Fatalf("soft errors within a day counted: %+v", e)
		}
		// One a day from then on: 2, 3, 4 erroneous, 5 quarantine.
		for n := 2; n <= QuarantineAfter; n++ {
			at := t0.Add(time.Duration(n-1) * day)
			e := soft(at, false)
			want := StatusErroneous
			if n == QuarantineAfter {
				want = StatusQuarantine
			}
			if e.Status != want || e.ErrorCount != n || !e.LastErrorAt.Equal(at) || !e.FirstErrorAt.Equal(t0) {
				t.Fatalf("soft error on day %d: %+v; want %s with %d errors", n, e, want, n)
			}
			// A second error the same day never counts.
			if e := soft(at.Add(time.Hour), false); e.ErrorCount != n {
				t.Fatalf("second soft error on day %d counted: %+v", n, e)
			}
		}
		stored := mustGet(t, s, Email, addr)
		if stored.Status != StatusQuarantine || stored.ErrorCount != QuarantineAfter || stored.LastReason != "452 try later" {
			t.Fatalf("stored entry = %+v", stored)
		}
		h := history(t, s, Email, addr)
		if len(h) != QuarantineAfter {
			t.Fatalf("history has %d rows, want %d: %+v", len(h), QuarantineAfter, h)
		}
		for i, r := range h {
			from, to := StatusErroneous, StatusErroneous
			if i == 0 {
				from = StatusValid
			}
			if i == QuarantineAfter-1 {
				to = StatusQuarantine
			}
			if r.From != from || r.To != to || r.ErrorCount != i+1 || r.Actor != SystemActor || r.Address != key ||
				!r.At.Equal(t0.Add(time.Duration(i)*day)) {
				t.Errorf("history[%d] = %+v; want %s→%s with %d errors by system", i, r, from, to, i+1)
			}
		}
		// Quarantine never returns by itself: not on success, not in Cleanup, and later soft
		// errors are not counted.
		soft(t0.Add(10*day), false)
		if changed := inTx(t, db, func(tx *sql.Tx) (bool, error) {
			return s.RecordSuccess(ctx, tx, Email, addr, t0.Add(11*day))
		}); changed {
			t.Fatal("a success released a quarantined address")
		}
		if _, err := s.Cleanup(ctx, t0.Add(100*day)); err != nil {
			t.Fatal(err)
		}
		if e := mustGet(t, s, Email, addr); e.Status != StatusQuarantine || e.ErrorCount != QuarantineAfter {
			t.Fatalf("quarantine changed by itself: %+v", e)
		}
		if n := len(history(t, s, Email, addr)); n != QuarantineAfter {
			t.Fatalf("history grew to %d rows with no change", n)
		}
	})
}

func TestHardBounceQuarantinesAtOnce(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		s, _ := newService(t, db)
		ctx := context.Background()
		e := inTx(t, db, func(tx *sql.Tx) (Entry, error) {
			return s.RecordHard(ctx, tx, SMS, "+33 6 12 34 56 78", "unknown subscriber", t0)
		})
		if e.Status != StatusQuarantine || e.ErrorCount != 1 || e.Address != "+33612345678" {
			t.Fatalf("after a hard bounce: %+v; want quarantine with 1 error", e)
		}
		// An erroneous address goes too.
		inTx(t, db, func(tx *sql.Tx) (Entry, error) {
			return s.RecordSoft(ctx, tx, Email, "bob@example.com", "mailbox busy", false, t0)
		})
		e = inTx(t, db, func(tx *sql.Tx) (Entry, error) {
			return s.RecordHard(ctx, tx, Email, "bob@example.com", "550 5.1.1 user unknown", t0.Add(time.Hour))
		})
		if e.Status != StatusQuarantine || e.ErrorCount != 2 || e.LastReason != "550 5.1.1 user unknown" {
			t.Fatalf("erroneous then hard: %+v", e)
		}
		h := history(t, s, Email, "bob@example.com")
		if len(h) != 2 || h[1].From != StatusErroneous || h[1].To != StatusQuarantine || !strings.Contains(h[1].Reason, "hard bounce") {
			t.Fatalf("history = %+v", h)
		}
		// A further hard bounce on a quarantined address changes nothing.
		e = inTx(t, db, func(tx *sql.Tx) (Entry, error) {
			return s.RecordHard(ctx, tx, Email, "bob@example.com", "550 again", t0.Add(2*day))
		})
		if e.ErrorCount != 2 || e.LastReason != "550 5.1.1 user unknown" || len(history(t, s, Email, "bob@example.com")) != 2 {
			t.Fatalf("second hard bounce changed the entry: %+v", e)
		}
		// A long bounce text is cut, not refused.
		e = inTx(t, db, func(tx *sql.Tx) (Entry, error) {
			return s.RecordHard(ctx, tx, Push, "tok-1", strings.Repeat("x", 2*MaxReasonLength), t0)
		})
		if len(e.LastReason) != MaxReasonLength {
			t.Fatalf("reason of %d characters stored", len(e.LastReason))
		}
	})
}

func TestSuccessReturnsErroneousOnly(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		s, _ := newService(t, db)
		ctx := context.Background()
		success := func(addr string, at time.Time) bool {
			return inTx(t, db, func(tx *sql.Tx) (bool, error) { return s.RecordSuccess(ctx, tx, Email, addr, at) })
		}
		// The common case writes nothing at all.
		if success("new@example.com", t0) {
			t.Fatal("a success changed an unknown address")
		}
		if n := count(t, db, "quarantine"); n != 0 {
			t.Fatalf("a success on an unknown address wrote %d rows", n)
		}
		for d := range 3 {
			inTx(t, db, func(tx *sql.Tx) (Entry, error) {
				return s.RecordSoft(ctx, tx, Email, "err@example.com", "452", false, t0.Add(time.Duration(d)*day))
			})
		}
		inTx(t, db, func(tx *sql.Tx) (Entry, error) {
			return s.RecordHard(ctx, tx, Email, "hard@example.com", "550", t0)
		})
		if !success("err@Example.com", t0.Add(3*day)) {
			t.Fatal("a success did not return an erroneous address to valid")
		}
		if e := mustGet(t, s, Email, "err@example.com"); e.Status != StatusValid || e.ErrorCount != 0 || !e.FirstErrorAt.IsZero() {
			t.Fatalf("after success: %+v; want valid with the count cleared", e)
		}
		h := history(t, s, Email, "err@example.com")
		if last := h[len(h)-1]; len(h) != 4 || last.From != StatusErroneous || last.To != StatusValid || last.Actor != SystemActor {
			t.Fatalf("history = %+v", h)
		}
		if success("hard@example.com", t0.Add(time.Hour)) || mustGet(t, s, Email, "hard@example.com").Status != StatusQuarantine {
			t.Fatal("a success released a quarantined address")
		}
		// Counting starts again from one.
		e := inTx(t, db, func(tx *sql.Tx) (Entry, error) {
			return s.RecordSoft(ctx, tx, Email, "err@example.com", "452", false, t0.Add(3*day+time.Hour))
		})
		if e.Status != StatusErroneous || e.ErrorCount != 1 {
			t.Fatalf("soft error after success: %+v", e)
		}
	})
}

func TestCleanupAfterTenOrThirtyDays(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		s, _ := newService(t, db)
		ctx := context.Background()
		inTx(t, db, func(tx *sql.Tx) (any, error) {
			for _, step := range []func() (Entry, error){
				func() (Entry, error) {
					return s.RecordSoft(ctx, tx, Email, "soft@example.com", "451 greylisted", false, t0)
				},
				func() (Entry, error) { return s.RecordSoft(ctx, tx, Email, "full@example.com", "552 quota", true, t0) },
				func() (Entry, error) { return s.RecordHard(ctx, tx, Email, "hard@example.com", "550", t0) },
				func() (Entry, error) {
					e, _, err := s.Denylist(ctx, tx, Email, "spam@example.com", "complaint", t0)
					return e, err
				},
				// The last counted error, not the last error, is what Cleanup measures from.
				func() (Entry, error) { return s.RecordSoft(ctx, tx, SMS, "+14155550100", "absent", false, t0) },
				func() (Entry, error) {
					return s.RecordSoft(ctx, tx, SMS, "+14155550100", "absent", false, t0.Add(20*time.Hour))
				},
			} {
				if _, err := step(); err != nil {
					return nil, err
				}
			}
			return nil, nil
		})
		if e := mustGet(t, s, Email, "full@example.com"); !e.MailboxFull || e.LastReason != MailboxFullPrefix+"552 quota" {
			t.Fatalf("mailbox-full entry = %+v", e)
		}
		cleanup := func(at time.Time) int {
			t.Helper()
			n, err := s.Cleanup(ctx, at)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
		status := func(ch Channel, addr string) Status { return mustGet(t, s, ch, addr).Status }
		if n := cleanup(t0.Add(ErroneousExpiry)); n != 0 {
			t.Fatalf("cleanup at exactly 10 days changed %d entries; the rule is over 10 days", n)
		}
		if n := cleanup(t0.Add(ErroneousExpiry + time.Millisecond)); n != 2 {
			t.Fatalf("cleanup just over 10 days changed %d entries, want 2 (soft, sms)", n)
		}
		if status(Email, "soft@example.com") != StatusValid || status(SMS, "+14155550100") != StatusValid {
			t.Fatal("a soft error over 10 days old did not return to valid")
		}
		if status(Email, "full@example.com") != StatusErroneous {
			t.Fatal("a mailbox-full error returned to valid before 30 days")
		}
		if n := cleanup(t0.Add(MailboxFullExpiry)); n != 0 {
			t.Fatalf("cleanup at exactly 30 days changed %d entries", n)
		}
		if n := cleanup(t0.Add(MailboxFullExpiry + time.Hour)); n != 1 || status(Email, "full@example.com") != StatusValid {
			t.Fatalf("cleanup over 30 days changed %d entries; mailbox-full is %s", n, status(Email, "full@example.com"))
		}
		if status(Email, "hard@example.com") != StatusQuarantine || status(Email, "spam@example.com") != StatusDenylist {
			t.Fatal("cleanup released a quarantined or denylisted address")
		}
		h := history(t, s, Email, "full@example.com")
		if last := h[len(h)-1]; last.To != StatusValid || !strings.Contains(last.Reason, "mailbox full") || last.Actor != SystemActor {
			t.Fatalf("history = %+v", h)
		}
		h = history(t, s, Email, "soft@example.com")
		if last := h[len(h)-1]; last.To != StatusValid || !strings.Contains(last.Reason, "10 days") ||
			!last.At.Equal(t0.Add(ErroneousExpiry+time.Millisecond)) {
			t.Fatalf("history = %+v", h)
		}
	})
}

func TestCleanupWorksInBatches(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		s, _ := newService(t, db)
		const n = cleanupBatch + 7
		err := db.InTx(context.Background(), func(tx *sql.Tx) error {
			for i := range n {
				if _, err := tx.Exec(`INSERT INTO quarantine (channel, address, status, error_count, last_error_at, updated_at)
					VALUES ('push', $1, 'erroneous', 2, $2, $2)`, fmt.Sprintf("tok-%05d", i), t0.UnixMilli()); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		got, err := s.Cleanup(context.Background(), t0.Add(11*day))
		if err != nil || got != n {
			t.Fatalf("cleanup = %d, %v; want %d", got, err, n)
		}
		var left, hist int
		_ = db.Read.QueryRow(`SELECT count(*) FROM quarantine WHERE status <> 'valid'`).Scan(&left)
		_ = db.Read.QueryRow(`SELECT count(*) FROM quarantine_history WHERE to_status = 'valid'`).Scan(&hist)
		if left != 0 || hist != n {
			t.Fatalf("%d entries left erroneous, %d history rows; want 0 and %d", left, hist, n)
		}
	})
}

func TestDenylistNeverReturns(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		s, _ := newService(t, db)
		ctx := context.Background()
		inTx(t, db, func(tx *sql.Tx) (Entry, error) {
			return s.RecordSoft(ctx, tx, SMS, "+14155550100", "absent", false, t0)
		})
		e := inTx(t, db, func(tx *sql.Tx) (Entry, error) {
			e, added, err := s.Denylist(ctx, tx, SMS, "+1 415 555 0100", "STOP", t0.Add(time.Hour))
			if err == nil && !added {
				t.Error("the first STOP did not report the address as added to the denylist")
			}
			return e, err
		})
		if e.Status != StatusDenylist || e.ErrorCount != 1 || e.LastReason != "STOP" {
			t.Fatalf("after STOP: %+v", e)
		}
		at := t0.Add(2 * day)
		inTx(t, db, func(tx *sql.Tx) (Entry, error) {
			return s.RecordSoft(ctx, tx, SMS, "+14155550100", "absent", false, at)
		})
		inTx(t, db, func(tx *sql.Tx) (Entry, error) {
			return s.RecordHard(ctx, tx, SMS, "+14155550100", "invalid", at)
		})
		inTx(t, db, func(tx *sql.Tx) (bool, error) { return s.RecordSuccess(ctx, tx, SMS, "+14155550100", at) })
		inTx(t, db, func(tx *sql.Tx) (Entry, error) {
			e, added, err := s.Denylist(ctx, tx, SMS, "+14155550100", "STOP again", at)
			if added {
				t.Error("a second STOP reported the address as newly denylisted")
			}
			return e, err
		})
		if _, err := s.Cleanup(ctx, t0.Add(365*day)); err != nil {
			t.Fatal(err)
		}
		if e := mustGet(t, s, SMS, "+14155550100"); e.Status != StatusDenylist || e.LastReason != "STOP" {
			t.Fatalf("denylist changed by itself: %+v", e)
		}
		if h := history(t, s, SMS, "+14155550100"); len(h) != 2 || h[1].From != StatusErroneous || h[1].To != StatusDenylist {
			t.Fatalf("history = %+v", h)
		}
		// A quarantined address can still be denylisted (a complaint is stronger).
		inTx(t, db, func(tx *sql.Tx) (Entry, error) { return s.RecordHard(ctx, tx, Email, "q@example.com", "550", t0) })
		if e := inTx(t, db, func(tx *sql.Tx) (Entry, error) {
			e, _, err := s.Denylist(ctx, tx, Email, "q@example.com", "ARF abuse report", t0)
			return e, err
		}); e.Status != StatusDenylist {
			t.Fatalf("complaint on a quarantined address: %+v", e)
		}
	})
}

func TestRulesRollBackWithTheCaller(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		s, _ := newService(t, db)
		ctx := context.Background()
		err := db.InTx(ctx, func(tx *sql.Tx) error {
			if _, err := s.RecordHard(ctx, tx, Email, "a@example.com", "550", t0); err != nil {
				return err
			}
			return fmt.Errorf("the sending-log write failed")
		})
		if err == nil {
			t.Fatal("InTx did not fail")
		}
		if n := count(t, db, "quarantine") + count(t, db, "quarantine_history"); n != 0 {
			t.Fatalf("a rolled-back rule left %d rows", n)
		}
		_, err = s.RecordHard(ctx, nil, Email, "not an address", "550", t0)
		if p, ok := problem.As(err); !ok || p.Kind != problem.Invalid {
			t.Fatalf("bad address: %v; want an Invalid problem", err)
		}
	})
}

func TestConcurrentRulesOnANewAddress(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		s, _ := newService(t, db)
		ctx := context.Background()
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for range 8 {
			wg.Go(func() {
				errs <- db.InTx(ctx, func(tx *sql.Tx) error {
					_, err := s.RecordSoft(ctx, tx, Email, "race@example.com", "451", false, t0)
					return err
				})
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		if e := mustGet(t, s, Email, "race@example.com"); e.ErrorCount != 1 || len(history(t, s, Email, "race@example.com")) != 1 {
			t.Fatalf("8 concurrent soft errors at one time: %+v; want 1 counted", e)
		}
	})
}

func auditRows(t *testing.T, db *store.DB, action string) []audit.Entry {
	t.Helper()
	es, err := audit.List(context.Background(), db, audit.Query{ObjectType: "quarantine", Action: action, Limit: 500})
	if err != nil {
		t.Fatal(err)
	}
	return es
}

func TestSetByAnAdministrator(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		s, clk := newService(t, db)
		ctx := context.Background()
		id := int64(7)
		admin := audit.Actor{ID: &id, Name: "alice", IP: "192.0.2.1"}
		inTx(t, db, func(tx *sql.Tx) (Entry, error) { return s.RecordHard(ctx, tx, Email, "x@example.com", "550", t0) })
		clk.Advance(time.Hour)
		e, err := s.Set(ctx, admin, "EMAIL", "x@EXAMPLE.com", "valid", "confirmed by phone")
		if err != nil {
			t.Fatal(err)
		}
		if e.Status != StatusValid || e.ErrorCount != 0 || e.LastReason != "confirmed by phone" || !e.UpdatedAt.Equal(clk.Now()) {
			t.Fatalf("after Set: %+v", e)
		}
		h := history(t, s, Email, "x@example.com")
		if last := h[len(h)-1]; len(h) != 2 || last.From != StatusQuarantine || last.To != StatusValid || last.Actor != "alice" || last.Reason != "confirmed by phone" {
			t.Fatalf("history = %+v", h)
		}
		as := auditRows(t, db, "quarantine.set")
		if len(as) != 1 || as[0].ObjectID != "email:x@example.com" || *as[0].Actor.ID != 7 ||
			!strings.Contains(string(as[0].Before), `"quarantine"`) || !strings.Contains(string(as[0].After), `"valid"`) {
			t.Fatalf("audit = %+v", as)
		}
		// Set to erroneous starts the count again, so Cleanup releases it 10 days later.
		if e, err = s.Set(ctx, admin, Email, "y@example.com", StatusErroneous, ""); err != nil || e.ErrorCount != 1 || e.LastReason != "set by alice" {
			t.Fatalf("Set erroneous: %+v %v", e, err)
		}
		if n, _ := s.Cleanup(ctx, clk.Now().Add(ErroneousExpiry+time.Second)); n != 1 {
			t.Fatalf("cleanup after a manual erroneous changed %d", n)
		}
		// Refused edits write nothing.
		before := count(t, db, "quarantine_history") + count(t, db, "audit_log")
		for _, c := range []Change{
			{Email, "not-an-address", StatusValid, ""},
			{"fax", "+14155550100", StatusValid, ""},
			{Email, "z@example.com", "blocked", ""},
			{Email, "z@example.com", StatusDenylist, strings.Repeat("r", MaxReasonLength+1)},
		} {
			_, err := s.Set(ctx, admin, c.Channel, c.Address, c.Status, c.Reason)
			if p, ok := problem.As(err); !ok || p.Kind != problem.Invalid || p.Field == "" {
				t.Errorf("Set(%+v) = %v; want an Invalid problem naming the field", c, err)
			}
		}
		if after := count(t, db, "quarantine_history") + count(t, db, "audit_log"); after != before {
			t.Fatalf("refused edits wrote %d rows", after-before)
		}
	})
}

func TestSetBulkIsAllOrNothing(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		s, _ := newService(t, db)
		ctx := context.Background()
		admin := audit.Actor{Name: "alice"}
		changes := []Change{
			{Email, "a@example.com", StatusDenylist, "asked by legal"},
			{SMS, "+33612345678", StatusQuarantine, ""},
			{Push, "tok-1", StatusValid, ""},
		}
		n, err := s.SetBulk(ctx, admin, changes)
		if err != nil || n != 3 {
			t.Fatalf("SetBulk = %d, %v", n, err)
		}
		if mustGet(t, s, Email, "a@example.com").Status != StatusDenylist || mustGet(t, s, SMS, "+33612345678").Status != StatusQuarantine {
			t.Fatal("bulk changes not applied")
		}
		if as := auditRows(t, db, "quarantine.bulk_set"); len(as) != 3 {
			t.Fatalf("%d audit rows, want 3", len(as))
		}
		if h := count(t, db, "quarantine_history"); h != 3 {
			t.Fatalf("%d history rows, want 3", h)
		}

		rows := func() int {
			return count(t, db, "quarantine") + count(t, db, "quarantine_history") + count(t, db, "audit_log")
		}
		before := rows()
		bad := []Change{
			{Email, "b@example.com", StatusQuarantine, ""},
			{Email, "no at sign", StatusQuarantine, ""},
			{Email, "c@example.com", StatusValid, ""},
			{Email, "B@EXAMPLE.COM", StatusQuarantine, ""}, // a different local part: fine
			{Email, "b@Example.com", StatusValid, ""},      // the same key as change 0
			{SMS, "+33612345678", "gone", ""},
		}
		_, err = s.SetBulk(ctx, admin, bad)
		p, ok := problem.As(err)
		if !ok || p.Kind != problem.Invalid || p.Code != "invalid_changes" {
			t.Fatalf("SetBulk with bad entries = %v; want an invalid_changes problem", err)
		}
		details, _ := p.Details.([]ChangeError)
		if len(details) != 3 || details[0].Index != 1 || details[1].Index != 4 || details[2].Index != 5 ||
			details[0].Field != "address" || !strings.Contains(details[1].Message, "change 0") || details[2].Field != "status" {
			t.Fatalf("details = %+v; want changes 1, 4 and 5 named", details)
		}
		if rows() != before {
			t.Fatalf("a refused bulk wrote %d rows", rows()-before)
		}
		if mustGet(t, s, Email, "b@example.com").Status != StatusValid {
			t.Fatal("a refused bulk changed a good entry")
		}
		if _, err := s.SetBulk(ctx, admin, make([]Change, MaxBulkChanges+1)); err == nil || !strings.Contains(err.Error(), "limit") {
			t.Fatalf("oversized bulk: %v", err)
		}
		if _, err := s.SetBulk(ctx, admin, nil); err == nil {
			t.Fatal("empty bulk accepted")
		}
	})
}

func TestListPagesAndFilters(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		s, _ := newService(t, db)
		ctx := context.Background()
		addrs := []string{"d@example.com", "a@example.com", "c@other.org", "b@example.com", "e@example.com"}
		for i, a := range addrs {
			inTx(t, db, func(tx *sql.Tx) (Entry, error) {
				if i%2 == 0 {
					return s.RecordHard(ctx, tx, Email, a, "550", t0.Add(time.Duration(i)*time.Minute))
				}
				return s.RecordSoft(ctx, tx, Email, a, "451", false, t0.Add(time.Duration(i)*time.Minute))
			})
		}
		inTx(t, db, func(tx *sql.Tx) (Entry, error) { return s.RecordHard(ctx, tx, SMS, "+14155550100", "x", t0) })
		all := func(q Query) []string {
			t.Helper()
			var got []string
			for range 10 {
				p, err := s.List(ctx, q)
				if err != nil {
					t.Fatal(err)
				}
				for _, e := range p.Entries {
					got = append(got, e.Address)
				}
				if p.NextAfter == "" {
					return got
				}
				q.After = p.NextAfter
			}
			t.Fatal("List never ended")
			return nil
		}
		check := func(name string, q Query, want ...string) {
			t.Helper()
			if got := all(q); strings.Join(got, " ") != strings.Join(want, " ") {
				t.Errorf("%s: %v; want %v", name, got, want)
			}
		}
		check("newest first, pages of 2", Query{Channel: Email, Limit: 2},
			"e@example.com", "b@example.com", "c@other.org", "a@example.com", "d@example.com")
		check("by address, pages of 2", Query{Order: ByAddress, Limit: 2},
			"+14155550100", "a@example.com", "b@example.com", "c@other.org", "d@example.com", "e@example.com")
		check("quarantined email", Query{Channel: Email, Status: StatusQuarantine, Order: ByAddress},
			"c@other.org", "d@example.com", "e@example.com")
		check("address prefix", Query{AddressPrefix: "c@OTHER", Order: ByAddress}, "c@other.org")
		check("sms", Query{Channel: SMS}, "+14155550100")
		for _, q := range []Query{{After: "garbage"}, {Limit: MaxListLimit + 1}, {Status: "blocked"}, {Channel: "fax"}, {Order: "random"}} {
			if _, err := s.List(ctx, q); err == nil {
				t.Errorf("List(%+v) accepted", q)
			}
		}
		p, _ := s.List(ctx, Query{Limit: 1})
		if _, err := s.List(ctx, Query{Limit: 1, After: p.NextAfter, Order: ByAddress}); err == nil {
			t.Error("a cursor of one order was accepted for the other")
		}
	})
}

func TestBlockedAndExcludeSQL(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		s, _ := newService(t, db)
		ctx := context.Background()
		inTx(t, db, func(tx *sql.Tx) (any, error) {
			if _, err := s.RecordHard(ctx, tx, Email, "hard@example.com", "550", t0); err != nil {
				return nil, err
			}
			if _, _, err := s.Denylist(ctx, tx, Email, "spam@example.com", "ARF", t0); err != nil {
				return nil, err
			}
			if _, err := s.RecordSoft(ctx, tx, Email, "soft@example.com", "451", false, t0); err != nil {
				return nil, err
			}
			_, err := s.RecordHard(ctx, tx, SMS, "+14155550100", "x", t0)
			return nil, err
		})
		addrs := []string{"hard@EXAMPLE.com", "Hard@example.com", "spam@example.com", "soft@example.com", "new@example.com", "not an address"}
		for i := range blockedChunk {
			addrs = append(addrs, fmt.Sprintf("filler%d@example.com", i))
		}
		addrs = append(addrs, "hard@example.com")
		got, err := s.Blocked(ctx, db.Read, Email, addrs)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]Status{"hard@EXAMPLE.com": StatusQuarantine, "hard@example.com": StatusQuarantine, "spam@example.com": StatusDenylist}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("Blocked = %v; want %v", got, want)
		}
		// The documented join: profiles keyed by email_key.
		err = db.InTx(ctx, func(tx *sql.Tx) error {
			for _, a := range []string{"hard@example.com", "spam@example.com", "soft@example.com", "new@example.com"} {
				if _, err := tx.Exec(`INSERT INTO profiles (email, email_key, created_at, updated_at) VALUES ($1, $1, 0, 0)`, a); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		rows, err := db.Read.Query(`SELECT p.email_key FROM profiles p WHERE ` + ExcludeSQL(Email, "p.email_key") + ` ORDER BY p.email_key`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var kept []string
		for rows.Next() {
			var k string
			_ = rows.Scan(&k)
			kept = append(kept, k)
		}
		if strings.Join(kept, " ") != "new@example.com soft@example.com" {
			t.Fatalf("profiles kept by ExcludeSQL: %v; want new and soft (erroneous is still sent to)", kept)
		}
	})
}

// TestDenylistTellsOneOfTwoAtOnce: two transactions denylist one new address at the same time
// (a complaint delivered twice, to two nodes); only the first learns that it added it, since the
// second decides on the row the first committed.
func TestDenylistTellsOneOfTwoAtOnce(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		s, _ := newService(t, db)
		ctx := context.Background()
		tx1, err := db.Write.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, added, err := s.Denylist(ctx, tx1, Email, "both@example.com", "complaint", t0); err != nil || !added {
			t.Fatalf("first Denylist: added %v, %v", added, err)
		}
		var added bool
		err = storetest.CommitMeanwhile(t, tx1, func() error {
			return db.InTx(ctx, func(tx *sql.Tx) (err error) {
				_, added, err = s.Denylist(ctx, tx, Email, "both@example.com", "complaint again", t0)
				return err
			})
		})
		if err != nil || added {
			t.Fatalf("second Denylist: added %v, %v; want false: both would report putting the address on the denylist", added, err)
		}
		if h := history(t, s, Email, "both@example.com"); len(h) != 1 {
			t.Fatalf("history = %+v, want one change", h)
		}
	})
}
