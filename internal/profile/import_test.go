package profile_test

import (
	"context"
	"database/sql"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/audit"
	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/problem"
	"github.com/heraldhq/herald/internal/profile"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/store/storetest"
)

func newService(t *testing.T, db *store.DB) (*profile.Service, *clock.Fake) {
	clk := clock.NewFake(time.Date(2026, 2, 1, 8, 0, 0, 0, time.UTC))
	return profile.NewService(db, clk, slog.New(slog.NewTextHandler(io.Discard, nil))), clk
}

func countProfiles(t *testing.T, db *store.DB) int {
	var n int
	if err := db.Read.QueryRow(`SELECT count(*) FROM profiles`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestImportMixedLines(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		s, _ := newService(t, db)
		long := strings.Repeat("x", profile.MaxImportLine+10)
		csv := strings.Join([]string{
			"email,first_name,city,age:number,opt_out_email,segment",                        // 1
			"ann@example.com,Ann,Paris,31,no,x",                                             // 2 good
			"not-an-email,Bob,Lyon,40,no,x",                                                 // 3 bad email, column 1
			"\"carl@example.com,Carl,\"Nice,22,no,x",                                        // 4 text after closing quote
			"dana@example.com,Dana,Rome,19,no,x,extra",                                      // 5 wrong column count
			"\"eve@example.com,Eve,Oslo,50,no,x",                                            // 6 unbalanced quote, never closed
			"fay@example.com,Fay,Bern,33,yes,x",                                             // 7 good
			"gus@example.com,Gus," + long + ",1,no,x",                                       // 8 a line over 1 MiB
			"hal@example.com,Hal,K\xf6ln,45,no,x",                                           // 9 invalid UTF-8
			"ivy@example.com,Ivy,Riga,old,no,x",                                             // 10 age not a number, column 4
			"jon@example.com,Jon,Oslo,60,perhaps,x",                                         // 11 bad boolean, column 5
			"\"kim@example.com\",\"Kim \"\"the quick\"\"\",\"Multi\nline city\",27,false,x", // 12-13 good, multi-line field
			"ann@EXAMPLE.com,Annie,,32,,x",                                                  // 14 same person as line 2: updated
		}, "\n") + "\n"
		res, err := s.Import(context.Background(), audit.System, strings.NewReader(csv), profile.ImportOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if res.Read != 12 || res.Created != 3 || res.Updated != 1 || res.Unchanged != 0 || res.Rejected != 8 {
			t.Fatalf("counts = %+v; want read 12, created 3, updated 1, rejected 8", res)
		}
		want := []struct {
			line, column int
			contains     string
		}{
			{3, 1, "not an email address"},
			{4, 1, "text after a closing quote"},
			{5, 0, "has 7 columns; the header has 6"},
			{6, 1, "never closed"},
			{8, 0, "longer than"},
			{9, 0, "not valid UTF-8"},
			{10, 4, "not a number"},
			{11, 5, "not a yes/no value"},
		}
		// Line 6's unclosed quote swallows nothing: lines 7.. are read again.
		got := map[int]profile.LineError{}
		for _, e := range res.Errors {
			got[e.Line] = e
		}
		rejected := 0
		for _, w := range want {
			e, ok := got[w.line]
			if !ok {
				continue
			}
			rejected++
			if e.Column != w.column || !strings.Contains(e.Message, w.contains) {
				t.Errorf("line %d error = %+v; want column %d containing %q", w.line, e, w.column, w.contains)
			}
		}
		if rejected != len(want) {
			t.Errorf("errors = %+v; want one for each of lines 3, 4, 5, 6, 8, 9, 10, 11", res.Errors)
		}
		if countProfiles(t, db) != 3 {
			t.Fatalf("stored %d profiles, want 3 (ann, fay, kim)", countProfiles(t, db))
		}
		var first, city string
		var age float64
		if err := db.Read.QueryRow(`SELECT attributes->>'first_name', attributes->>'city', CAST(attributes->>'age' AS REAL) FROM profiles WHERE email_key = 'ann@example.com'`).Scan(&first, &city, &age); err != nil {
			t.Fatal(err)
		}
		if first != "Annie" || city != "Paris" || age != 32 {
			t.Fatalf("merged ann = %q %q %v; want Annie, Paris (kept from line 2), 32", first, city, age)
		}
		var kimName, kimCity string
		if err := db.Read.QueryRow(`SELECT attributes->>'first_name', attributes->>'city' FROM profiles WHERE email_key = 'kim@example.com'`).Scan(&kimName, &kimCity); err != nil {
			t.Fatal(err)
		}
		if kimName != `Kim "the quick"` || kimCity != "Multi\nline city" {
			t.Fatalf("kim = %q %q", kimName, kimCity)
		}
		var optOut bool
		_ = db.Read.QueryRow(`SELECT opt_out_email FROM profiles WHERE email_key = 'fay@example.com'`).Scan(&optOut)
		if !optOut {
			t.Fatal("fay's opt-out was not stored")
		}
	})
}

func TestReimportChangesNothing(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		s, clk := newService(t, db)
		var b strings.Builder
		b.WriteString("external_id,email,phone,locale,time_zone,tier,score:number\n")
		for i := 0; i < 12000; i++ { // more than two batches
			b.WriteString("c" + itoa(i) + ",user" + itoa(i) + "@Example.org,+3361234" + pad(i) + ",fr-FR,Europe/Paris,gold," + itoa(i%100) + "\n")
		}
		data := b.String()
		res, err := s.Import(context.Background(), audit.System, strings.NewReader(data), profile.ImportOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if res.Created != 12000 || res.Rejected != 0 {
			t.Fatalf("first import = %+v", res)
		}
		var updatedBefore int64
		_ = db.Read.QueryRow(`SELECT max(updated_at) FROM profiles`).Scan(&updatedBefore)
		clk.Advance(time.Hour)
		res, err = s.Import(context.Background(), audit.System, strings.NewReader(data), profile.ImportOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if res.Unchanged != 12000 || res.Created+res.Updated+res.Rejected != 0 {
			t.Fatalf("re-import = %+v; want all unchanged", res)
		}
		var updatedAfter int64
		_ = db.Read.QueryRow(`SELECT max(updated_at) FROM profiles`).Scan(&updatedAfter)
		if updatedAfter != updatedBefore {
			t.Fatal("a re-import touched updated_at")
		}
		// Matching by external id: a changed email moves with it.
		res, err = s.Import(context.Background(), audit.System, strings.NewReader("external_id,email\nc5,new5@example.org\nc6,user7@example.org\n"), profile.ImportOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if res.Updated != 1 || res.Rejected != 1 || !strings.Contains(res.Errors[0].Message, "already belongs to another profile") || res.Errors[0].Line != 3 {
			t.Fatalf("external id import = %+v", res)
		}
	})
}

func TestImportHeaderErrorsWriteNothing(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		s, _ := newService(t, db)
		cases := map[string]string{
			"":                              "empty",
			"first_name,city\nAnn,Paris\n":  "email or external_id column",
			"email,email\na@b.co,c@d.co\n":  "column 1 already does",
			"email,age:integer\na@b.co,1\n": "unknown type",
			"email,\na@b.co,1\n":            "empty column name",
		}
		for input, want := range cases {
			_, err := s.Import(context.Background(), audit.System, strings.NewReader(input), profile.ImportOptions{})
			p, ok := problem.As(err)
			if !ok || p.Kind != problem.Invalid || !strings.Contains(p.Message, want) {
				t.Errorf("header %q: %v; want an Invalid problem containing %q", input, err, want)
			}
		}
		if countProfiles(t, db) != 0 {
			t.Fatal("a refused import wrote profiles")
		}
	})
}

func TestUpsertUpdateErase(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		s, _ := newService(t, db)
		ctx := context.Background()
		str := func(v string) *string { return &v }
		p, created, err := s.Upsert(ctx, audit.System, profile.Input{Email: str("Zoe@Example.COM"), Attributes: map[string]any{"city": "Paris", "vip": true}})
		if err != nil || !created || p.Email != "Zoe@Example.COM" || p.EmailDomain != "example.com" {
			t.Fatalf("create = %+v %v %v", p, created, err)
		}
		p2, created, err := s.Upsert(ctx, audit.System, profile.Input{Email: str("Zoe@example.com"), Phone: str("+33 6 12 34 56 78"), Attributes: map[string]any{"vip": nil}})
		if err != nil || created || p2.ID != p.ID || p2.Phone != "+33612345678" || p2.Attributes["city"] != "Paris" || p2.Attributes["vip"] != nil {
			t.Fatalf("upsert by email (domain case ignored) = %+v %v %v", p2, created, err)
		}
		other, _, err := s.Upsert(ctx, audit.System, profile.Input{Email: str("zoe@example.com")})
		if err != nil || other.ID == p.ID {
			t.Fatalf("a different local part's case is a different mailbox: %+v %v", other, err)
		}
		if _, err := s.Update(ctx, audit.System, other.ID, profile.Input{Email: str("Zoe@EXAMPLE.com")}); problemKind(err) != problem.Conflict {
			t.Fatalf("taking another profile's email: %v", err)
		}
		if _, _, err := s.Upsert(ctx, audit.System, profile.Input{Email: str("bad"), Phone: str("123"), TimeZone: str("Nowhere/Land")}); problemKind(err) != problem.Invalid {
			t.Fatalf("bad input: %v", err)
		} else if p, _ := problem.As(err); len(p.Details.([]profile.FieldError)) != 3 {
			t.Fatalf("want 3 field errors, got %+v", p.Details)
		}
		if err := s.Erase(ctx, audit.System, p.ID); err != nil {
			t.Fatal(err)
		}
		got, err := s.Get(ctx, p.ID)
		if err != nil || !got.Erased || got.Email != "" || got.Phone != "" || len(got.Attributes) != 0 {
			t.Fatalf("erased profile = %+v %v", got, err)
		}
		page, err := s.List(ctx, profile.Where{}, 0, 10)
		if err != nil || len(page.Profiles) != 1 || page.Profiles[0].ID != other.ID {
			t.Fatalf("list after erase = %+v %v", page, err)
		}
		// The erased email can be used again by a new profile.
		again, created, err := s.Upsert(ctx, audit.System, profile.Input{Email: str("Zoe@example.com")})
		if err != nil || !created || again.ID == p.ID {
			t.Fatalf("re-create after erase = %+v %v %v", again, created, err)
		}
		if _, err := s.Update(ctx, audit.System, p.ID, profile.Input{Phone: str("+33612345678")}); problemKind(err) != problem.Conflict {
			t.Fatalf("update of an erased profile: %v", err)
		}
		if _, err := s.Get(ctx, 999999); problemKind(err) != problem.NotFound {
			t.Fatalf("missing profile: %v", err)
		}
	})
}

func TestListPagination(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		s, _ := newService(t, db)
		var b strings.Builder
		b.WriteString("email,n:number\n")
		for i := 0; i < 25; i++ {
			b.WriteString("p" + itoa(i) + "@example.net," + itoa(i) + "\n")
		}
		if _, err := s.Import(context.Background(), audit.System, strings.NewReader(b.String()), profile.ImportOptions{}); err != nil {
			t.Fatal(err)
		}
		seen := 0
		var after int64
		for pages := 0; ; pages++ {
			page, err := s.List(context.Background(), profile.Where{SQL: "email_domain = $1", Args: []any{"example.net"}}, after, 10)
			if err != nil {
				t.Fatal(err)
			}
			seen += len(page.Profiles)
			if page.NextAfter == 0 {
				if pages != 2 {
					t.Fatalf("%d pages, want 3", pages+1)
				}
				break
			}
			after = page.NextAfter
		}
		if seen != 25 {
			t.Fatalf("listed %d, want 25", seen)
		}
	})
}

func problemKind(err error) problem.Kind {
	if p, ok := problem.As(err); ok {
		return p.Kind
	}
	return 0
}

func itoa(i int) string { return fmtInt(i) }

func fmtInt(i int) string {
	if i == 0 {
		return "0"
	}
	var b []byte
	for ; i > 0; i /= 10 {
		b = append([]byte{byte('0' + i%10)}, b...)
	}
	return string(b)
}

func pad(i int) string {
	s := fmtInt(i)
	for len(s) < 5 {
		s = "0" + s
	}
	return s
}

// TestUpsertAfterAnotherCreatedTheProfile: an upsert of a new address while another
// transaction (another request, another node) creates the same address and commits: the upsert
// succeeds and updates that profile, one profile in all. On PostgreSQL its lookup does not see
// the uncommitted profile, its insert waits on the unique key and then fails; it tries again.
func TestUpsertAfterAnotherCreatedTheProfile(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		s, _ := newService(t, db)
		ctx := context.Background()
		tx1, first := createUncommitted(t, db, "twice@example.com")
		var p profile.Profile
		var created bool
		err := storetest.CommitMeanwhile(t, tx1, func() (err error) {
			email := "twice@example.com"
			p, created, err = s.Upsert(ctx, audit.System, profile.Input{Email: &email, Attributes: map[string]any{"city": "Lyon"}})
			return err
		})
		if err != nil || created || p.ID != first || p.Attributes["city"] != "Lyon" {
			t.Fatalf("upsert after another created the address: %+v created=%v %v; want an update of profile %d", p, created, err, first)
		}
		var n int
		if err := db.Read.QueryRow(`SELECT count(*) FROM profiles`).Scan(&n); err != nil || n != 1 {
			t.Fatalf("%d profiles (%v), want 1", n, err)
		}
	})
}

// TestImportAfterAnotherCreatedAProfile: while an import runs, another transaction creates one
// of the file's addresses and commits. The import finishes and updates that profile instead of
// failing the batch: on PostgreSQL the batch's lookup missed the uncommitted profile and its COPY
// met it on the unique key; it is resolved and written again.
func TestImportAfterAnotherCreatedAProfile(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		s, _ := newService(t, db)
		ctx := context.Background()
		tx1, _ := createUncommitted(t, db, "b@example.com")
		var res profile.ImportResult
		err := storetest.CommitMeanwhile(t, tx1, func() (err error) {
			csv := "email,city\na@example.com,Lyon\nb@example.com,Nice\nc@example.com,Paris\n"
			res, err = s.Import(ctx, audit.System, strings.NewReader(csv), profile.ImportOptions{})
			return err
		})
		if err != nil || res.Created != 2 || res.Updated != 1 || len(res.Errors) != 0 {
			t.Fatalf("import while another created one of its addresses: %+v %v; want 2 created, 1 updated", res, err)
		}
		var city string
		var n int
		if err := db.Read.QueryRow(`SELECT count(*) FROM profiles`).Scan(&n); err != nil || n != 3 {
			t.Fatalf("%d profiles (%v), want 3", n, err)
		}
		if err := db.Read.QueryRow(`SELECT attributes FROM profiles WHERE email = 'b@example.com'`).Scan(&city); err != nil || !strings.Contains(city, "Nice") {
			t.Fatalf("b@example.com's attributes %s (%v), want the import's city", city, err)
		}
	})
}

// TestChangesAtOnceToOneProfileAreBothKept: an update and an upsert of a profile made while
// another transaction changes the same profile (another request, another node) wait for it and
// merge with its result: no change is lost.
func TestChangesAtOnceToOneProfileAreBothKept(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		s, _ := newService(t, db)
		ctx := context.Background()
		email := "one@example.com"
		p, _, err := s.Upsert(ctx, audit.System, profile.Input{Email: &email, Attributes: map[string]any{"city": "Lyon"}})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			name   string
			attr   string
			change func() error
		}{
			{"update", "plan", func() error {
				_, err := s.Update(ctx, audit.System, p.ID, profile.Input{Attributes: map[string]any{"plan": "gold"}})
				return err
			}},
			{"upsert", "lang", func() error {
				_, _, err := s.Upsert(ctx, audit.System, profile.Input{Email: &email, Attributes: map[string]any{"lang": "fr"}})
				return err
			}},
		} {
			other, err := db.Write.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			// The other transaction sets an attribute of its own (its key is the case's name) and,
			// as every change Herald makes to a profile, its updated_at.
			set := `UPDATE profiles SET attributes = json_set(attributes, '$.` + c.name + `', 'x'), updated_at = updated_at + 1000 WHERE id = $1`
			if db.Engine == store.Postgres {
				set = `UPDATE profiles SET attributes = attributes || jsonb_build_object('` + c.name + `', 'x'), updated_at = updated_at + 1000 WHERE id = $1`
			}
			if _, err := other.ExecContext(ctx, set, p.ID); err != nil {
				t.Fatal(err)
			}
			if err := storetest.CommitMeanwhile(t, other, c.change); err != nil {
				t.Fatalf("%s while another transaction changes the profile: %v", c.name, err)
			}
			got, err := s.Get(ctx, p.ID)
			if err != nil {
				t.Fatal(err)
			}
			if got.Attributes[c.name] != "x" || got.Attributes[c.attr] == nil || got.Attributes["city"] != "Lyon" {
				t.Fatalf("%s: attributes %v; want the other transaction's %q and the %s's %q both kept", c.name, got.Attributes, c.name, c.name, c.attr)
			}
		}
	})
}

// createUncommitted creates a profile for email in a transaction it leaves open, as another
// request or node in the middle of its own change, and returns the transaction and the id.
func createUncommitted(t *testing.T, db *store.DB, email string) (*sql.Tx, int64) {
	t.Helper()
	tx, err := db.Write.BeginTx(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	var id int64
	if err := tx.QueryRow(`INSERT INTO profiles (email, email_key, email_domain, attributes, created_at, updated_at)
		VALUES ($1, $1, 'example.com', '{}', 0, 0) RETURNING id`, email).Scan(&id); err != nil {
		t.Fatal(err)
	}
	return tx, id
}

// TestImportKeepsAnOptOutMadeMeanwhile: a recipient opts out (the tracking writer's statement)
// while an import updates their profile. The import finishes with the imported change and the
// opt-out stands: on PostgreSQL the batch had read the profile before the opt-out and wrote it
// all back, re-subscribing the recipient; now a profile is written back only if unchanged since
// it was read, and the batch reads it again otherwise.
func TestImportKeepsAnOptOutMadeMeanwhile(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		s, _ := newService(t, db)
		ctx := context.Background()
		if _, err := s.Import(ctx, audit.System, strings.NewReader("email,city\nkeep@example.com,Lyon\n"), profile.ImportOptions{}); err != nil {
			t.Fatal(err)
		}
		var id, updated int64
		if err := db.Read.QueryRow(`SELECT id, updated_at FROM profiles WHERE email = 'keep@example.com'`).Scan(&id, &updated); err != nil {
			t.Fatal(err)
		}
		optOut, err := db.Write.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		// As the tracking writer opts a profile out (tracking.SQLSink.optOut).
		if _, err := optOut.ExecContext(ctx, `UPDATE profiles SET opt_out_email = true, updated_at = $2 WHERE opt_out_email = false AND id = $1`,
			id, updated+1000); err != nil {
			t.Fatal(err)
		}
		err = storetest.CommitMeanwhile(t, optOut, func() error {
			_, err := s.Import(ctx, audit.System, strings.NewReader("email,city\nkeep@example.com,Nice\n"), profile.ImportOptions{})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		p, err := s.Get(ctx, id)
		if err != nil || !p.OptOutEmail || p.Attributes["city"] != "Nice" {
			t.Fatalf("profile after the import %+v (%v); want opted out and in Nice", p, err)
		}
	})
}

// TestEveryWriteMovesUpdatedAt: with the clock standing still (writes within one millisecond),
// every write to a profile still moves its updated_at, which is what the write-back's check
// against changes made meanwhile compares: an update, an upsert, an import and an erase.
func TestEveryWriteMovesUpdatedAt(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		s, clk := newService(t, db)
		ctx := context.Background()
		email := "still@example.com"
		p, _, err := s.Upsert(ctx, audit.System, profile.Input{Email: &email})
		if err != nil {
			t.Fatal(err)
		}
		stored := func() int64 {
			var ms int64
			if err := db.Read.QueryRow(`SELECT updated_at FROM profiles WHERE id = $1`, p.ID).Scan(&ms); err != nil {
				t.Fatal(err)
			}
			return ms
		}
		last := stored()
		if last != clk.Now().UnixMilli() {
			t.Fatalf("a new profile's updated_at is %d, want the clock's %d", last, clk.Now().UnixMilli())
		}
		for _, w := range []struct {
			name  string
			write func() error
		}{
			{"update", func() error {
				got, err := s.Update(ctx, audit.System, p.ID, profile.Input{Attributes: map[string]any{"plan": "gold"}})
				if err == nil && got.UpdatedAt.UnixMilli() != last+1 {
					t.Errorf("update answered updated_at %d, want %d", got.UpdatedAt.UnixMilli(), last+1)
				}
				return err
			}},
			{"upsert", func() error {
				_, _, err := s.Upsert(ctx, audit.System, profile.Input{Email: &email, Attributes: map[string]any{"lang": "fr"}})
				return err
			}},
			{"import", func() error {
				_, err := s.Import(ctx, audit.System, strings.NewReader("email,city\n"+email+",Nice\n"), profile.ImportOptions{})
				return err
			}},
			{"erase", func() error { return s.Erase(ctx, audit.System, p.ID) }},
		} {
			if err := w.write(); err != nil {
				t.Fatalf("%s: %v", w.name, err)
			}
			if now := stored(); now != last+1 {
				t.Fatalf("%s within the same millisecond: updated_at %d, want %d", w.name, now, last+1)
			}
			last++
		}
	})
}
