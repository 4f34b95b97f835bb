package stats_test

import (
	"context"
	"math/rand/v2"
	"testing"

	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/stats"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/store/storetest"
)

// TestComputeMixed checks Compute against figures counted in Go over every mix of events a row
// can have: several events per row, clicks with and without an open, machine and human events of
// each kind, opt-outs and mirror views, failure types of every sort, statuses that count nowhere,
// and another delivery's rows and events beside.
func TestComputeMixed(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		r := rand.New(rand.NewPCG(1, 2))
		ms := clock.Millis(t0)
		statuses := []struct{ status, ft string }{
			{"sent", ""}, {"delivered", ""}, {"failed", "hard"}, {"failed", "soft"}, {"failed", "ignored"},
			{"failed", ""}, {"pending", ""}, {"retrying", "soft"}, {"cancelled", ""},
		}
		kinds := []string{"open", "click", "mirror", "optout"}
		want := map[int64]stats.Counters{}
		var ds []int64
		for range 2 {
			d := newDelivery(t, db, 300)
			ds = append(ds, d)
			var c stats.Counters
			for i := range 300 {
				st := statuses[r.IntN(len(statuses))]
				var ft any
				if st.ft != "" {
					ft = st.ft
				}
				var id int64
				if err := db.Write.QueryRow(`INSERT INTO sending_log (delivery_id, profile_id, address, status, failure_type, sent_at)
					VALUES ($1, $2, 'x', $3, $4, $5) RETURNING id`, d, i+1, st.status, ft, ms).Scan(&id); err != nil {
					t.Fatal(err)
				}
				c.Move(stats.OutcomeNone, stats.OutcomeOf(st.status, st.ft), 1)
				var seen [4]bool
				human := false
				for range r.IntN(5) {
					k := r.IntN(len(kinds))
					machine := r.IntN(3) == 0
					if _, err := db.Write.Exec(`INSERT INTO tracking_events (delivery_id, log_id, kind, at, machine)
						VALUES ($1, $2, $3, $4, $5)`, d, id, kinds[k], ms+int64(r.IntN(7_200_000)), machine); err != nil {
						t.Fatal(err)
					}
					seen[k] = true
					human = human || (k < 2 && !machine)
				}
				if seen[0] || seen[1] {
					c.Opens++
				}
				if human {
					c.OpensHuman++
				}
				if seen[1] {
					c.Clicks++
				}
				if seen[2] {
					c.Mirror++
				}
				if seen[3] {
					c.OptOuts++
				}
			}
			want[d] = c
		}
		svc := stats.NewService(db, clock.NewFake(t0), nil)
		for _, d := range ds {
			k, err := svc.Compute(ctx, d)
			if err != nil {
				t.Fatal(err)
			}
			c := want[d]
			w := stats.NewKPIs(300, c, t0)
			k.ComputedAt, w.ComputedAt = nil, nil
			if k != w {
				t.Errorf("delivery %d:\n got %+v\nwant %+v", d, k, w)
			}
			if c.Opens == c.Clicks || c.OpensHuman == c.Opens || c.OtherErrors == 0 {
				t.Errorf("delivery %d: the mix misses a case: %+v", d, c)
			}
			read, _ := svc.Read(ctx, d)
			read.ComputedAt = nil
			if read != w {
				t.Errorf("delivery %d: read after compute:\n got %+v\nwant %+v", d, read, w)
			}
		}
	})
}
