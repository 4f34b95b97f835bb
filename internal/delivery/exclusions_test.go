package delivery

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/problem"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/store/storetest"
)

func TestExclusions(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		run := func(q string, args ...any) {
			t.Helper()
			if _, err := db.Write.Exec(q, args...); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
		run(`INSERT INTO deliveries (id, name, channel, state, validity_seconds, created_at, updated_at) VALUES
			(1, 'mail', 'email', 'ready', 3600, 0, 0), (2, 'text', 'sms', 'ready', 3600, 0, 0)`)
		run(`INSERT INTO profiles (id, email, email_key, email_domain, phone, created_at, updated_at) VALUES
			(10, 'Ann@Example.com', 'Ann@example.com', 'example.com', '+33600000010', 0, 0),
			(11, 'bob@example.com', 'bob@example.com', 'example.com', NULL, 0, 0),
			(12, 'cy@example.org', 'cy@example.org', 'example.org', '+33600000012', 0, 0),
			(13, NULL, NULL, NULL, NULL, 0, 0)`)
		// Inserted out of profile order; 14 has no profile any more.
		run(`INSERT INTO exclusion_log (delivery_id, profile_id, reason, rule) VALUES
			(1, 12, 'quarantined', 'Quarantine'), (1, 10, 'opted_out', 'Opt-out'), (2, 11, 'address_missing', 'Address missing'),
			(1, 13, 'address_missing', 'Address missing'), (1, 11, 'fatigue', 'Weekly cap'), (1, 14, 'quarantined', 'Quarantine')`)
		s := NewService(db, clock.NewFake(time.Unix(0, 0)), slog.New(slog.NewTextHandler(io.Discard, nil)))

		str := func(p *string) string {
			if p == nil {
				return "<nil>"
			}
			return *p
		}
		var got []string
		var after int64
		for pages := 0; pages < 10; pages++ {
			p, err := s.Exclusions(ctx, 1, "", after, 2)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range p.Exclusions {
				got = append(got, str(e.Address)+" "+string(e.Reason)+" "+e.Rule)
			}
			if after = p.NextAfter; after == 0 {
				break
			}
		}
		want := []string{"Ann@example.com opted_out Opt-out", "bob@example.com fatigue Weekly cap", "cy@example.org quarantined Quarantine",
			"<nil> address_missing Address missing", "<nil> quarantined Quarantine"}
		if len(got) != len(want) {
			t.Fatalf("got %q, want %q", got, want)
		}
		for i := range want {
			if got[i] != want[i] {
				t.Errorf("row %d: %q, want %q", i, got[i], want[i])
			}
		}

		p, err := s.Exclusions(ctx, 1, ReasonQuarantined, 0, 1)
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Exclusions) != 1 || p.Exclusions[0].ProfileID != 12 || p.NextAfter != 12 {
			t.Errorf("quarantined, first page: %+v", p)
		}
		p, err = s.Exclusions(ctx, 1, ReasonQuarantined, 12, 1)
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Exclusions) != 1 || p.Exclusions[0].ProfileID != 14 || p.NextAfter != 0 {
			t.Errorf("quarantined, second page: %+v", p)
		}
		// The SMS delivery shows phone numbers.
		p, err = s.Exclusions(ctx, 2, "", 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Exclusions) != 1 || p.Exclusions[0].Address != nil || p.Exclusions[0].Reason != ReasonAddressMissing {
			t.Errorf("SMS delivery: %+v", p)
		}
		if p, err := s.Exclusions(ctx, 2, ReasonFatigue, 0, 0); err != nil || len(p.Exclusions) != 0 || p.Exclusions == nil {
			t.Errorf("no fatigue exclusions: %+v, %v", p, err)
		}

		for _, c := range []struct {
			id     int64
			reason Reason
			kind   problem.Kind
		}{{999, "", problem.NotFound}, {1, "bored", problem.Invalid}} {
			_, err := s.Exclusions(ctx, c.id, c.reason, 0, 0)
			if pr, ok := problem.As(err); !ok || pr.Kind != c.kind {
				t.Errorf("delivery %d, reason %q: %v, want a problem of kind %v", c.id, c.reason, err, c.kind)
			}
		}
	})
}
