package filter

import (
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" driver
	_ "modernc.org/sqlite"             // the "sqlite" driver

	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/store/storetest"
)

// The profiles table as the migrations make it, one per engine.
const (
	sqliteProfiles = `CREATE TABLE profiles (
		id INTEGER PRIMARY KEY, email TEXT, email_domain TEXT, phone TEXT, time_zone TEXT, locale TEXT,
		external_id TEXT, attributes TEXT NOT NULL DEFAULT '{}',
		opt_out_email INTEGER NOT NULL DEFAULT 0, opt_out_sms INTEGER NOT NULL DEFAULT 0,
		opt_out_push INTEGER NOT NULL DEFAULT 0,
		created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL)`
	postgresProfiles = `CREATE TABLE profiles (
		id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, email TEXT, email_domain TEXT, phone TEXT,
		time_zone TEXT, locale TEXT, external_id TEXT, attributes JSONB NOT NULL DEFAULT '{}',
		opt_out_email BOOLEAN NOT NULL DEFAULT FALSE, opt_out_sms BOOLEAN NOT NULL DEFAULT FALSE,
		opt_out_push BOOLEAN NOT NULL DEFAULT FALSE,
		created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL)`
)

// testNow is the clock the engine tests compile relative dates against.
var testNow = time.Date(2024, 6, 15, 12, 0, 0, 0, time.UTC)

type profile struct {
	id                        int64
	email, domain, phone      any // string or nil
	tz, locale, ext           any
	attrs                     string
	optEmail, optSMS, optPush bool
	created                   string // RFC 3339
}

// profiles are the rows every engine test starts from: case and Unicode variations, missing,
// null and differently-typed attributes, nested ones, and values that look like SQL.
var profiles = []profile{
	{id: 1, email: "alice@example.com", domain: "example.com", phone: "+33611111111", tz: "Europe/Paris", locale: "fr-FR", ext: "A-1",
		attrs: `{"city":"Paris","age":34,"vip":true,"address":{"city":"Paris","zip":"75011"},"tags":["a","b"]}`, created: "2024-05-01T08:00:00Z"},
	{id: 2, email: "BOB@Example.COM", domain: "example.com", tz: "America/New_York", locale: "en-US", ext: "B-2",
		attrs: `{"city":"paris","age":"34","vip":false,"score":4.5}`, optEmail: true, created: "2024-05-01T23:59:59.999Z"},
	{id: 3, email: "carol@other.org", domain: "other.org", phone: "+33622222222", tz: "Europe/Paris", locale: "fr-FR",
		attrs: `{"city":"Lyon","age":29,"score":3}`, optSMS: true, created: "2024-04-30T23:59:59.999Z"},
	{id: 4, phone: "+15550000004", attrs: `{}`, optPush: true, created: "2024-06-14T12:00:00Z"},
	{id: 5, email: "émile@exämple.fr", domain: "exämple.fr", tz: "Europe/Paris", locale: "fr",
		attrs: `{"city":"Évry","first name":"Émile"}`, created: "2024-06-01T00:00:00Z"},
	{id: 6, email: "ÉMILE@EXÄMPLE.FR", domain: "EXÄMPLE.FR", attrs: `{"city":"ÉVRY"}`, created: "2024-03-01T00:00:00Z"},
	{id: 7, email: "under_score@example.com", domain: "example.com", attrs: `{"note":"100% sure","path":"C:\\temp"}`, created: "2024-02-01T00:00:00Z"},
	{id: 8, email: "underXscore@example.com", domain: "example.com", attrs: `{"note":"100 percent"}`, created: "2024-02-02T00:00:00Z"},
	{id: 9, email: "nine@example.net", domain: "example.net", attrs: `{"city":null,"age":null}`, created: "2024-06-15T11:00:00Z"},
	{id: 10, email: "ten@example.net", domain: "example.net", attrs: `{"city":42,"age":41.5}`, created: "2024-06-15T12:00:00Z"},
	{id: 11, email: "eleven@example.net", domain: "example.net", attrs: `{"address":{"city":"Lyon","zip":75002}}`, created: "2024-01-01T00:00:00Z"},
	{id: 12, email: "twelve@example.net", domain: "example.net", attrs: `{"address":"flat string"}`, created: "2024-01-02T00:00:00Z"},
	{id: 13, email: "o'brien@example.ie", domain: "example.ie", attrs: `{"nick":"'; DROP TABLE profiles; --"}`, created: "2024-01-03T00:00:00Z"},
	{id: 14, email: "fourteen@example.com", domain: "example.com", attrs: `{"quote\"key":"v","we[ir]d":"x","a.b":"dotted"}`, created: "2024-01-04T00:00:00Z"},
	{id: 15, email: "fifteen@Example.com", domain: "Example.com", tz: "europe/paris", locale: "fr-fr",
		attrs: `{"score":10}`, optSMS: true, created: "2024-01-05T00:00:00Z"},
	{id: 16, email: "sixteen@example.com", domain: "example.com", attrs: `{"score":-2,"big":9007199254740993}`, created: "2023-01-01T00:00:00Z"},
	{id: 17, email: "seventeen@example.com", domain: "example.com", attrs: `{"vip":"true"}`, created: "2023-01-02T00:00:00Z"},
	{id: 18, email: "zed@EXAMPLE.com", domain: "EXAMPLE.com", attrs: `{"city":"PARIS"}`, created: "2023-01-03T00:00:00Z"},
	{id: 19, email: "日本@例え.jp", domain: "例え.jp", attrs: `{"city":"東京"}`, created: "2023-01-04T00:00:00Z"},
	{id: 20, email: "", domain: "", attrs: `{"city":""}`, created: "2023-01-05T00:00:00Z"},
}

// openProfiles gives a fresh database of engine eng holding profiles.
func openProfiles(t *testing.T, eng store.Engine) *sql.DB {
	t.Helper()
	return openProfilesWith(t, eng, postgresProfiles)
}

// openProfilesWith is openProfiles with the given PostgreSQL table definition.
func openProfilesWith(t *testing.T, eng store.Engine, postgresDDL string) *sql.DB {
	t.Helper()
	dsn := storetest.DSN(t, eng)
	driver, ddl, insert := "sqlite", sqliteProfiles,
		`INSERT INTO profiles (id, email, email_domain, phone, time_zone, locale, external_id, attributes,
			opt_out_email, opt_out_sms, opt_out_push, created_at, updated_at)
		 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12)`
	if eng == store.Postgres {
		driver, ddl = "pgx", postgresDDL
		insert = strings.Replace(insert, "VALUES", "OVERRIDING SYSTEM VALUE VALUES", 1)
	}
	db, err := sql.Open(driver, dsn)
	if err != nil {
		t.Fatalf("open %s: %v", eng, err)
	}
	t.Cleanup(func() { db.Close() })
	if _, err := db.Exec(ddl); err != nil {
		t.Fatalf("create profiles on %s: %v", eng, err)
	}
	for _, p := range profiles {
		created, err := time.Parse(time.RFC3339Nano, p.created)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec(insert, p.id, p.email, p.domain, p.phone, p.tz, p.locale, p.ext, p.attrs,
			p.optEmail, p.optSMS, p.optPush, created.UnixMilli()); err != nil {
			t.Fatalf("insert profile %d on %s: %v", p.id, eng, err)
		}
	}
	return db
}

// query runs filter src against db and returns the matching ids in order.
func query(db *sql.DB, eng store.Engine, src string) ([]int64, error) {
	e, err := Parse(src)
	if err != nil {
		return nil, err
	}
	// A leading parameter checks that numbering from firstParam lines up with args.
	where, args, err := Compile(e, eng, 2, testNow)
	if err != nil {
		return nil, err
	}
	rows, err := db.Query("SELECT id FROM profiles WHERE id > $1 AND "+where+" ORDER BY id", append([]any{int64(0)}, args...)...)
	if err != nil {
		return nil, fmt.Errorf("run %s: %w", where, err)
	}
	defer rows.Close()
	ids := []int64{}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}

// except gives 1..20 without ids.
func except(ids ...int64) []int64 {
	var out []int64
	for _, p := range profiles {
		if !slices.Contains(ids, p.id) {
			out = append(out, p.id)
		}
	}
	return out
}

var filterCases = []struct {
	filter string
	want   []int64
}{
	// Text columns fold ASCII case; email domains and all.
	{`email = "bob@example.com"`, []int64{2}},
	{`email = "ALICE@EXAMPLE.COM"`, []int64{1}},
	{`email ends_with "@example.com"`, []int64{1, 2, 7, 8, 14, 15, 16, 17, 18}},
	{`email_domain in ("EXAMPLE.NET", "other.org")`, []int64{3, 9, 10, 11, 12}},
	{`email_domain = "例え.jp"`, []int64{19}},
	{`email < "b"`, []int64{1, 20}},
	{`email < "f"`, []int64{1, 2, 3, 11, 20}}, // by code point: é and É come after f
	{`email = ""`, []int64{20}},
	{`email exists`, except(4)},
	{`locale = "FR-fr"`, []int64{1, 3, 15}},
	{`time_zone starts_with "europe/"`, []int64{1, 3, 5, 15}},
	{`external_id in ("a-1", 'B-2')`, []int64{1, 2}},
	// Only ASCII folds: É and é differ on both engines.
	{`email = "émile@exämple.fr"`, []int64{5}},
	{`email contains "ÉMILE"`, []int64{6}},
	// LIKE wildcards in values are literal.
	{`email contains "r_s"`, []int64{7}},
	{`attributes.note contains "%"`, []int64{7}},
	{`attributes.path contains "\\"`, []int64{7}},
	// Attribute strings.
	{`attributes.city = "paris"`, []int64{1, 2, 18}},
	{`attributes.city != "Paris"`, []int64{3, 5, 6, 19, 20}},
	{`not attributes.city = "Paris"`, except(1, 2, 18)},
	{`attributes.city in ("lyon", "東京", "")`, []int64{3, 19, 20}},
	{`attributes.city > "m"`, []int64{1, 2, 5, 6, 18, 19}},
	{`attributes.city = ""`, []int64{20}},
	{`attributes.city exists`, []int64{1, 2, 3, 5, 6, 10, 18, 19, 20}},
	{`attributes.city not exists`, []int64{4, 7, 8, 9, 11, 12, 13, 14, 15, 16, 17}},
	{`attributes.city = null`, []int64{4, 7, 8, 9, 11, 12, 13, 14, 15, 16, 17}},
	{`attributes.city != null and attributes.city not in ("paris")`, []int64{3, 5, 6, 10, 19, 20}},
	{`attributes."first name" = "ÉMILE"`, []int64{5}},
	{`attributes."we[ir]d" = "x"`, []int64{14}},
	{`attributes."a.b" = "dotted"`, []int64{14}},
	{`attributes.tags = "a"`, []int64{}},
	{`attributes.tags exists`, []int64{1}},
	// Attribute numbers compare numerically, and only with numbers.
	{`attributes.age > 30`, []int64{1, 10}},
	{`attributes.age >= 29 and attr.age < 41.5`, []int64{1, 3}},
	{`attributes.score in (3, 4.5, 10)`, []int64{2, 3, 15}},
	{`attributes.score < 0`, []int64{16}},
	{`attributes.big > 9007199254740992`, []int64{16}},
	{`attributes.age = "34"`, []int64{2}},
	// Attribute booleans.
	{`attributes.vip = true`, []int64{1}},
	{`attributes.vip != true`, []int64{2}},
	{`attributes.vip = "TRUE"`, []int64{17}},
	// Nested attributes, through objects only.
	{`attributes.address.city = "lyon"`, []int64{11}},
	{`attr.address.zip starts_with "750"`, []int64{1}},
	{`attributes.address.zip = 75002`, []int64{11}},
	{`attributes.address.city exists`, []int64{1, 11}},
	// Dates: a day is the whole UTC day; relative dates count from testNow.
	{`created_at = 2024-05-01`, []int64{1, 2}},
	{`created_at != 2024-05-01`, except(1, 2)},
	{`created_at <= 2024-04-30`, []int64{3, 6, 7, 8, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20}},
	{`created_at > 2024-05-01`, []int64{4, 5, 9, 10}},
	{`created_at >= now - 1d`, []int64{4, 9, 10}},
	{`created_at > -1d and created_at < now`, []int64{9}},
	{`created_at >= 2024-06-15T13:00:00+02:00`, []int64{9, 10}},
	{`updated_at < 2023-01-02T00:00:00.001Z`, []int64{16, 17}},
	// Booleans, numbers, nulls on columns.
	{`opt_out_email = true or opt_out_sms = true`, []int64{2, 3, 15}},
	{`not opt_out_push = false`, []int64{4}},
	{`phone exists`, []int64{1, 3, 4}},
	{`phone = null and id <= 5`, []int64{2, 5}},
	{`id in (1, 3, 5) or id > 19`, []int64{1, 3, 5, 20}},
	// Combinations.
	{`(email ends_with ".net" or email ends_with ".org") and not attributes.age exists`, []int64{9, 11, 12}},
	{`not (attributes.city exists or attributes.score exists) and created_at < 2024-01-03`, []int64{11, 12, 17}},
	// Values that look like SQL are data.
	{`attributes.nick = "'; DROP TABLE profiles; --"`, []int64{13}},
	{`email = "o'brien@example.ie"`, []int64{13}},
}

func TestFilterOnEngines(t *testing.T) {
	for _, eng := range storetest.Engines() {
		t.Run(string(eng), func(t *testing.T) {
			db := openProfiles(t, eng)
			for _, tc := range filterCases {
				got, err := query(db, eng, tc.filter)
				if err != nil {
					t.Errorf("%s: %v", tc.filter, err)
					continue
				}
				if !slices.Equal(got, tc.want) {
					t.Errorf("%s\n got  %v\n want %v", tc.filter, got, tc.want)
				}
			}
		})
	}
}

// TestPostgresCollation runs the cases on text columns with a linguistic (ICU) collation, as
// a database created with a non-C locale has: case folding and ordering must not change.
func TestPostgresCollation(t *testing.T) {
	if !slices.Contains(storetest.Engines(), store.Postgres) {
		t.Skipf("%s is not set", storetest.PostgresURLEnv)
	}
	db := openProfilesWith(t, store.Postgres, strings.ReplaceAll(postgresProfiles, " TEXT,", ` TEXT COLLATE "und-x-icu",`))
	for _, tc := range filterCases {
		if strings.Contains(tc.filter, "attributes") || strings.Contains(tc.filter, "attr.") {
			continue
		}
		got, err := query(db, store.Postgres, tc.filter)
		if err != nil {
			t.Errorf("%s: %v", tc.filter, err)
		} else if !slices.Equal(got, tc.want) {
			t.Errorf("%s\n got  %v\n want %v", tc.filter, got, tc.want)
		}
	}
}

// TestCanonicalCasesRun checks that every filter of the parser tests compiles to SQL that
// each engine runs, whatever it matches.
func TestCanonicalCasesRun(t *testing.T) {
	for _, eng := range storetest.Engines() {
		t.Run(string(eng), func(t *testing.T) {
			db := openProfiles(t, eng)
			for _, tc := range canonicalCases {
				if _, err := query(db, eng, tc.src); err != nil {
					t.Errorf("%s: %v", tc.src, err)
				}
			}
		})
	}
}

// TestCompileQualified checks that an alias qualifies every column, so a filter can run in
// a join with a table that has columns of the same names.
func TestCompileQualified(t *testing.T) {
	for _, eng := range storetest.Engines() {
		t.Run(string(eng), func(t *testing.T) {
			db := openProfiles(t, eng)
			ddl := `CREATE TABLE other (id BIGINT, email TEXT, attributes TEXT, created_at BIGINT)`
			if _, err := db.Exec(ddl); err != nil {
				t.Fatal(err)
			}
			if _, err := db.Exec(`INSERT INTO other VALUES (1, 'x', '{}', 0)`); err != nil {
				t.Fatal(err)
			}
			e, err := Parse(`email ends_with ".org" or attributes.city = "paris" or created_at > now - 1d`)
			if err != nil {
				t.Fatal(err)
			}
			where, args, err := CompileQualified(e, eng, "p", 1, testNow)
			if err != nil {
				t.Fatal(err)
			}
			var ids []int64
			rows, err := db.Query(`SELECT p.id FROM profiles p JOIN other ON other.id = 1 WHERE `+where+` ORDER BY p.id`, args...)
			if err != nil {
				t.Fatalf("%s: %v", where, err)
			}
			defer rows.Close()
			for rows.Next() {
				var id int64
				if err := rows.Scan(&id); err != nil {
					t.Fatal(err)
				}
				ids = append(ids, id)
			}
			if err := rows.Err(); err != nil {
				t.Fatal(err)
			}
			if want := []int64{1, 2, 3, 9, 10, 18}; !slices.Equal(ids, want) {
				t.Errorf("got %v, want %v", ids, want)
			}
		})
	}
}

func TestInjection(t *testing.T) {
	attempts := []struct {
		filter string
		want   []int64 // nil: refused by Parse
	}{
		{`email = "'; DROP TABLE profiles; --"`, []int64{}},
		{`email = '\'; DROP TABLE profiles; --'`, []int64{}},
		{`email = "x' OR '1'='1"`, []int64{}},
		{`email = 'x" OR "1"="1'`, []int64{}},
		{`attributes.city = "x\" OR 1=1 --"`, []int64{}},
		{`email contains "/* */"`, []int64{}},
		{`email contains "'; --"`, []int64{}},
		{`attributes.nick contains "; drop table"`, []int64{13}},
		{`attributes.nick ends_with "--"`, []int64{13}},
		{`email starts_with "%"`, []int64{}},
		{`email ends_with "_"`, []int64{}},
		{`attributes."x') OR 1=1 --" = "y"`, []int64{}},
		{`attributes."x'); DROP TABLE profiles; --" exists`, []int64{}},
		{`attributes."$[0]" exists`, []int64{}},
		{`attributes."]" exists or attributes."[" exists`, []int64{}},
		{`attributes."we[ir]d" exists`, []int64{14}},
		{`attributes."quote\"key" = "v"`, nil},
		{`attributes."a\\b" exists`, nil},
		{`attributes.x]; DROP TABLE profiles = 1`, nil},
		{`email = "a"; DROP TABLE profiles`, nil},
		{`email = "a" -- comment`, nil},
		{`email = "a" /* x */`, nil},
		{`email = "a" or 1=1`, nil},
		{`email = a`, nil},
		{`email = "a" or email = ""); DROP TABLE profiles; --`, nil},
		{`"email" = "a"`, nil},
		{`id = 1 union select 1`, nil},
	}
	for _, eng := range storetest.Engines() {
		t.Run(string(eng), func(t *testing.T) {
			db := openProfiles(t, eng)
			for _, a := range attempts {
				got, err := query(db, eng, a.filter)
				if a.want == nil {
					var se *SyntaxError
					if !errors.As(err, &se) {
						t.Errorf("%s: got %v, %v; want a syntax error", a.filter, got, err)
					}
				} else if err != nil {
					t.Errorf("%s: %v", a.filter, err)
				} else if !slices.Equal(got, a.want) {
					t.Errorf("%s: got %v, want %v", a.filter, got, a.want)
				}
				var n int
				if err := db.QueryRow(`SELECT count(*) FROM profiles`).Scan(&n); err != nil || n != len(profiles) {
					t.Fatalf("after %s: profiles holds %d rows (%v), want %d", a.filter, n, err, len(profiles))
				}
			}
		})
	}
}

func TestCompileErrors(t *testing.T) {
	now := testNow
	cases := []struct {
		name string
		e    Expr
		eng  store.Engine
		want string
	}{
		{"nil", nil, store.SQLite, "missing or unknown condition <nil>"},
		{"empty and", &And{}, store.SQLite, "and with no terms"},
		{"unknown field", &Exists{Field: Field{Name: "emial"}}, store.SQLite, `unknown field "emial"`},
		{"bad key", &Exists{Field: Field{Name: "attributes", Path: []string{`a"b`}}}, store.Postgres, `may not contain '"'`},
		{"wrong type", &Comparison{Field: Field{Name: "email"}, Op: OpEq, Value: Number{Int: 1}}, store.SQLite, "does not compare with a number"},
		{"bad op", &Comparison{Field: Field{Name: "email"}, Op: "like", Value: Text("x")}, store.SQLite, `unknown operator "like"`},
		{"empty in", &In{Field: Field{Name: "id"}}, store.SQLite, "in needs at least one value"},
		{"engine", &Exists{Field: Field{Name: "email"}}, "mysql", `unknown engine "mysql"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := Compile(tc.e, tc.eng, 1, now)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
	if _, _, err := Compile(&Exists{Field: Field{Name: "emial"}}, store.SQLite, 1, now); !errors.Is(err, ErrInvalid) {
		t.Errorf("an unknown field gave %v, want an error wrapping ErrInvalid", err)
	}
	if _, _, err := CompileQualified(&Exists{Field: Field{Name: "email"}}, store.SQLite, "p; DROP", 1, now); err == nil {
		t.Error("an alias that is not a plain name was accepted")
	}
}
