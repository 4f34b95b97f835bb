package filter

import (
	"database/sql"
	"errors"
	"reflect"
	"testing"

	"github.com/heraldhq/herald/internal/store"
)

// FuzzParse checks that Parse never panics, that whatever parses reads back from its
// canonical form to an equal tree, and that it compiles to SQL SQLite accepts and runs.
func FuzzParse(f *testing.F) {
	seeds := []string{
		`email = "a" or phone = "b" and not (locale = "c" or id in (1, 2))`,
		`attributes.address."first name" not in ("x", 'y') and attr.n >= -1.5e3`,
		`created_at >= now - 30d and updated_at < 2024-05-01T10:00:00+02:00 or created_at = 2024-05-01`,
		`attributes.vip = true and attributes.x != null and attributes.y exists`,
		`email contains "%_\\\"\u00e9" and phone not ends_with '--'`,
	}
	for _, tc := range filterCases {
		seeds = append(seeds, tc.filter)
	}
	for _, tc := range canonicalCases {
		seeds = append(seeds, tc.src)
	}
	for _, tc := range errorCases {
		if len(tc.src) < 200 {
			seeds = append(seeds, tc.src)
		}
	}
	f.Add("")
	for _, s := range seeds {
		f.Add(s)
	}

	db, err := sql.Open("sqlite", "file:"+f.TempDir()+"/fuzz.db")
	if err != nil {
		f.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(sqliteProfiles); err != nil {
		f.Fatal(err)
	}
	for _, p := range profiles[:14] {
		if _, err := db.Exec(`INSERT INTO profiles (id, email, attributes, created_at, updated_at) VALUES ($1, $2, $3, 0, 0)`,
			p.id, p.email, p.attrs); err != nil {
			f.Fatal(err)
		}
	}

	f.Fuzz(func(t *testing.T, src string) {
		e, err := Parse(src)
		if err != nil {
			var se *SyntaxError
			if !errors.As(err, &se) {
				t.Fatalf("Parse(%q) gave %T, not a *SyntaxError: %v", src, err, err)
			}
			if se.Pos < 0 || se.Pos > len(src) || se.Line < 1 || se.Col < 1 {
				t.Fatalf("Parse(%q): bad position %+v", src, se)
			}
			return
		}
		canon := e.String()
		again, err := Parse(canon)
		if err != nil {
			t.Fatalf("Parse(%q) = %s, which does not parse: %v", src, canon, err)
		}
		if !reflect.DeepEqual(again, e) {
			t.Fatalf("Parse(%q) = %s, which parses to a different tree", src, canon)
		}
		if again.String() != canon {
			t.Fatalf("canonical form is not stable: %s then %s", canon, again.String())
		}
		if _, _, err := Compile(e, store.Postgres, 1, testNow); err != nil {
			t.Fatalf("Parse(%q) = %s, which does not compile for PostgreSQL: %v", src, canon, err)
		}
		where, args, err := Compile(e, store.SQLite, 1, testNow)
		if err != nil {
			t.Fatalf("Parse(%q) = %s, which does not compile for SQLite: %v", src, canon, err)
		}
		var n int
		if err := db.QueryRow("SELECT count(*) FROM profiles WHERE "+where, args...).Scan(&n); err != nil {
			t.Fatalf("Parse(%q) = %s compiles to SQL SQLite refuses: %s: %v", src, canon, where, err)
		}
	})
}
