package audience_test

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/audience"
	"github.com/heraldhq/herald/internal/audit"
	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/problem"
	"github.com/heraldhq/herald/internal/profile"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/store/storetest"
)

const people = `email,external_id,city,age:number,vip:bool
ann@example.com,a1,Paris,31,true
bob@Example.org,b2,Lyon,45,false
cyd@example.com,c3,paris,22,false
dan@example.net,d4,Berlin,60,true
eve@example.com,e5,,19,
`

func setup(t *testing.T, db *store.DB) (*audience.Service, *profile.Service) {
	clk := clock.NewFake(time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC))
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ps := profile.NewService(db, clk, log)
	if _, err := ps.Import(context.Background(), audit.System, strings.NewReader(people), profile.ImportOptions{}); err != nil {
		t.Fatal(err)
	}
	return audience.NewService(db, clk, log), ps
}

func TestFilterAudiences(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		as, ps := setup(t, db)
		cases := []struct {
			filter string
			want   int64
		}{
			{`email_domain = "example.com"`, 3},
			{`attributes.city = "paris"`, 2}, // text comparisons ignore case
			{`attributes.vip = true and attributes.age >= 40`, 1},
			{`not attributes.city exists`, 1},
			{`email ends_with ".org" or external_id in ("d4", "zz")`, 2},
		}
		for i, c := range cases {
			a, err := as.Create(ctx, audit.System, audience.New{Name: "a" + string(rune('0'+i)), Filter: c.filter})
			if err != nil {
				t.Fatalf("%s: %v", c.filter, err)
			}
			n, err := as.Count(ctx, a.ID)
			if err != nil || n != c.want {
				t.Errorf("count(%s) = %d, %v; want %d", c.filter, n, err, c.want)
			}
		}
		// An erased profile leaves every audience.
		a, _ := as.Create(ctx, audit.System, audience.New{Name: "everyone", Filter: `id > 0`})
		p, _ := ps.List(ctx, profile.Where{}, 0, 1)
		if err := ps.Erase(ctx, audit.System, p.Profiles[0].ID); err != nil {
			t.Fatal(err)
		}
		if n, _ := as.Count(ctx, a.ID); n != 4 {
			t.Fatalf("count after erase = %d, want 4", n)
		}
		// A syntax error names its position and writes nothing.
		_, err := as.Create(ctx, audit.System, audience.New{Name: "bad", Filter: `city = `})
		pe, ok := problem.As(err)
		if !ok || pe.Code != "invalid_filter" || !strings.Contains(pe.Message, "1:") {
			t.Fatalf("bad filter: %v", err)
		}
		if _, err := as.Create(ctx, audit.System, audience.New{Name: "everyone", Filter: `id > 1`}); err == nil {
			t.Fatal("duplicate name accepted")
		}
		list, _ := as.List(ctx)
		if len(list) != 6 {
			t.Fatalf("%d audiences, want 6", len(list))
		}
		// Injection attempts are data, not SQL.
		inj, err := as.Create(ctx, audit.System, audience.New{Name: "inj", Filter: `email = "x'; DROP TABLE profiles; --"`})
		if err != nil {
			t.Fatal(err)
		}
		if n, err := as.Count(ctx, inj.ID); err != nil || n != 0 {
			t.Fatalf("injection count = %d, %v", n, err)
		}
		if n, _ := as.Count(ctx, a.ID); n != 4 {
			t.Fatal("profiles table damaged")
		}
	})
}

func TestStaticLists(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		as, ps := setup(t, db)
		page, _ := ps.List(ctx, profile.Where{}, 0, 10)
		ids := []int64{page.Profiles[0].ID, page.Profiles[2].ID}
		l, err := as.Create(ctx, audit.System, audience.New{Name: "testers", Kind: "list", ProfileIDs: ids})
		if err != nil {
			t.Fatal(err)
		}
		if n, _ := as.Count(ctx, l.ID); n != 2 {
			t.Fatalf("list count = %d", n)
		}
		if err := as.AddMembers(ctx, audit.System, l.ID, []int64{ids[0], page.Profiles[3].ID}); err != nil {
			t.Fatal(err)
		}
		if n, _ := as.Count(ctx, l.ID); n != 3 {
			t.Fatalf("after add = %d, want 3 (duplicates ignored)", n)
		}
		err = as.AddMembers(ctx, audit.System, l.ID, []int64{page.Profiles[4].ID, 999999})
		if pe, ok := problem.As(err); !ok || !strings.Contains(pe.Message, "999999") {
			t.Fatalf("unknown id: %v", err)
		}
		if n, _ := as.Count(ctx, l.ID); n != 3 {
			t.Fatalf("a refused add wrote members: %d", n)
		}
		if err := as.RemoveMembers(ctx, audit.System, l.ID, ids); err != nil {
			t.Fatal(err)
		}
		if n, _ := as.Count(ctx, l.ID); n != 1 {
			t.Fatalf("after remove = %d, want 1", n)
		}
		w, err := as.Where(ctx, l.ID, "p", 3)
		if err != nil || !strings.Contains(w.SQL, "$3") || !strings.Contains(w.SQL, "p.id") {
			t.Fatalf("where = %+v %v", w, err)
		}
		if err := as.Delete(ctx, audit.System, l.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := as.Get(ctx, l.ID); err == nil {
			t.Fatal("deleted audience still there")
		}
	})
}

// TestRenameWhileTheFilterChanges: a rename made while another transaction changes the
// audience's filter waits for it and keeps the new filter.
func TestRenameWhileTheFilterChanges(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		as, _ := setup(t, db)
		a, err := as.Create(ctx, audit.System, audience.New{Name: "parisians", Filter: `attributes.city = "paris"`})
		if err != nil {
			t.Fatal(err)
		}
		other, err := db.Write.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := other.ExecContext(ctx, `UPDATE audiences SET filter = $1 WHERE id = $2`, `attributes.city = "lyon"`, a.ID); err != nil {
			t.Fatal(err)
		}
		err = storetest.CommitMeanwhile(t, other, func() error {
			name := "city folk"
			_, err := as.Update(ctx, audit.System, a.ID, &name, nil)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		got, err := as.Get(ctx, a.ID)
		if err != nil || got.Name != "city folk" || got.Filter != `attributes.city = "lyon"` {
			t.Fatalf("audience %+v (%v); want the new name and the other transaction's filter", got, err)
		}
	})
}
