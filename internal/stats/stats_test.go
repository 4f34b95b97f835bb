package stats_test

import (
	"context"
	"database/sql"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/stats"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/store/storetest"
)

var t0 = time.Date(2026, 3, 2, 10, 30, 0, 0, time.UTC)

func newDelivery(t testing.TB, db *store.DB, toDeliver int64) int64 {
	t.Helper()
	var id int64
	if err := db.Write.QueryRow(`INSERT INTO deliveries (name, channel, state, validity_seconds, to_deliver, targeted,
		created_at, updated_at) VALUES ('d', 'email', 'sending', 302400, $1, $1, $2, $2) RETURNING id`,
		toDeliver, clock.Millis(t0)).Scan(&id); err != nil {
		t.Fatal(err)
	}
	return id
}

func TestRate(t *testing.T) {
	for _, c := range []struct {
		n, of int64
		want  float64
	}{{1, 3, 33.33}, {2, 3, 66.67}, {0, 0, 0}, {5, 5, 100}, {1, 8, 12.5}, {1, 200000, 0}} {
		if got := stats.Rate(c.n, c.of); got != c.want {
			t.Errorf("Rate(%d, %d) = %v, want %v", c.n, c.of, got, c.want)
		}
	}
}

func TestMove(t *testing.T) {
	var c stats.Counters
	c.Move(stats.OutcomeNone, stats.OutcomeOf("sent", ""), 3)
	c.Move(stats.OutcomeOf("sent", ""), stats.OutcomeOf("failed", "hard"), 1) // an asynchronous bounce
	c.Move(stats.OutcomeOf("retrying", "soft"), stats.OutcomeOf("failed", "soft"), 1)
	if c.Delivered != 2 || c.HardBounces != 1 || c.SoftBounces != 1 || c.Sent() != 4 {
		t.Errorf("counters %+v (sent %d), want 2 delivered, 1 hard, 1 soft, 4 sent", c, c.Sent())
	}
}

// seed writes ten rows and their events; the figures they make are in wantKPIs.
func seed(t *testing.T, db *store.DB, d int64) {
	t.Helper()
	ms := clock.Millis(t0)
	rows := []struct{ status, ft string }{
		{"sent", ""}, {"sent", ""}, {"sent", ""}, {"sent", ""}, {"sent", ""}, {"delivered", ""},
		{"failed", "hard"}, {"failed", "soft"}, {"failed", "ignored"}, {"pending", ""},
	}
	ids := make([]int64, len(rows))
	for i, r := range rows {
		var ft any
		if r.ft != "" {
			ft = r.ft
		}
		if err := db.Write.QueryRow(`INSERT INTO sending_log (delivery_id, profile_id, address, status, failure_type, sent_at)
			VALUES ($1, $2, 'x', $3, $4, $5) RETURNING id`, d, i+1, r.status, ft, ms).Scan(&ids[i]); err != nil {
			t.Fatal(err)
		}
	}
	events := []struct {
		row     int
		kind    string
		machine bool
	}{
		{0, "open", false}, {1, "open", false}, {1, "open", false}, {2, "click", false},
		{3, "open", true}, {0, "optout", false}, {1, "mirror", false},
	}
	for i, e := range events {
		if _, err := db.Write.Exec(`INSERT INTO tracking_events (delivery_id, log_id, kind, at, machine) VALUES ($1, $2, $3, $4, $5)`,
			d, ids[e.row], e.kind, ms+int64(i)*60_000, e.machine); err != nil {
			t.Fatal(err)
		}
	}
}

// wantKPIs are seed's figures, counted by hand.
var wantKPIs = stats.KPIs{
	ToDeliver: 10, Sent: 9, Delivered: 6, BouncesErrors: 3, HardBounces: 1, SoftBounces: 1, OtherErrors: 1,
	Opens: 4, OpensHuman: 3, Clicks: 1, OptOuts: 1, Mirror: 1,
	DeliveredRate: 66.67, BounceErrorRate: 33.33, HardBounceRate: 11.11, SoftBounceRate: 11.11,
	OpenRate: 66.67, OpenHumanRate: 50, ClickRate: 16.67, OptOutRate: 16.67, MirrorRate: 16.67,
}

func checkKPIs(t *testing.T, when string, got stats.KPIs, computed bool) {
	t.Helper()
	if (got.ComputedAt != nil) != computed {
		t.Errorf("%s: computed_at %v, want set: %v", when, got.ComputedAt, computed)
	}
	got.ComputedAt = nil
	if got != wantKPIs {
		t.Errorf("%s:\n got %+v\nwant %+v", when, got, wantKPIs)
	}
}

func TestKPIs(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		clk := clock.NewFake(t0)
		svc := stats.NewService(db, clk, nil)
		d := newDelivery(t, db, 10)
		if k, err := svc.Read(ctx, d); err != nil || k.Sent != 0 || k.ToDeliver != 10 || k.ComputedAt != nil {
			t.Fatalf("before anything: %+v %v", k, err)
		}
		seed(t, db, d)
		// The live moves the engine and the tracking sink would have made.
		var moves stats.Counters
		moves.Move(stats.OutcomeNone, stats.OutcomeDelivered, 6)
		moves.Move(stats.OutcomeNone, stats.OutcomeHard, 1)
		moves.Move(stats.OutcomeNone, stats.OutcomeSoft, 1)
		moves.Move(stats.OutcomeNone, stats.OutcomeError, 1)
		moves = moves.Add(stats.Counters{Opens: 4, OpensHuman: 3, Clicks: 1, OptOuts: 1, Mirror: 1})
		half := stats.Counters{Delivered: 3, Opens: 1}
		rest := moves.Add(stats.Counters{Delivered: -3, Opens: -1})
		for _, m := range []stats.Counters{half, rest} {
			if err := db.InTx(ctx, func(tx *sql.Tx) error { return stats.Apply(ctx, tx, d, t0, m) }); err != nil {
				t.Fatal(err)
			}
		}
		live, err := svc.Read(ctx, d)
		if err != nil {
			t.Fatal(err)
		}
		checkKPIs(t, "live", live, false)
		computed, err := svc.Compute(ctx, d)
		if err != nil {
			t.Fatal(err)
		}
		checkKPIs(t, "computed", computed, true)
		read, _ := svc.Read(ctx, d)
		checkKPIs(t, "read after compute", read, true)

		// Drifted counters (a lost batch, a crash between systems) are put right.
		if _, err := db.Write.Exec(`UPDATE delivery_stats SET opens = 99, delivered = 0, sent = 3 WHERE delivery_id = $1`, d); err != nil {
			t.Fatal(err)
		}
		if drifted, _ := svc.Read(ctx, d); drifted.Opens != 99 {
			t.Fatalf("the drift did not show: %+v", drifted)
		}
		clk.Advance(time.Hour)
		n, err := svc.Reconcile(ctx)
		if err != nil || n != 1 {
			t.Fatalf("Reconcile: %d %v, want 1 delivery", n, err)
		}
		read, _ = svc.Read(ctx, d)
		checkKPIs(t, "after reconcile", read, true)
		hours, err := svc.Hourly(ctx, d)
		if err != nil || len(hours) != 1 || hours[0].Delivered != 6 || hours[0].Opens != 4 || !hours[0].Hour.Equal(t0.Truncate(time.Hour)) {
			t.Errorf("hourly: %+v %v", hours, err)
		}
		if _, err := svc.Read(ctx, d+100); err == nil {
			t.Errorf("Read of a missing delivery: no error")
		}
		if _, err := svc.Compute(ctx, d+100); err == nil {
			t.Errorf("Compute of a missing delivery: no error")
		}
	})
}
