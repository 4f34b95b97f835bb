// Package storetest gives tests a fresh, migrated Herald database on every engine.
//
// SQLite databases live in the test's temporary folder. PostgreSQL tests run when
// HERALD_TEST_POSTGRES_URL names a database the tests may write to (CI always sets it); each
// test gets its own schema, dropped when the test ends, so packages can run in parallel
// against one server.
package storetest

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/store"
)

// PostgresURLEnv is the variable naming the PostgreSQL database tests may use.
const PostgresURLEnv = "HERALD_TEST_POSTGRES_URL"

// Engines returns the engines this test run covers: SQLite always, PostgreSQL when
// HERALD_TEST_POSTGRES_URL is set.
func Engines() []store.Engine {
	if os.Getenv(PostgresURLEnv) == "" {
		return []store.Engine{store.SQLite}
	}
	return []store.Engine{store.SQLite, store.Postgres}
}

// Each runs fn as a subtest, named for the engine, once per engine of Engines, each with a
// fresh migrated database.
func Each(t *testing.T, fn func(t *testing.T, db *store.DB)) {
	t.Helper()
	for _, eng := range Engines() {
		t.Run(string(eng), func(t *testing.T) {
			fn(t, New(t, eng))
		})
	}
}

// New returns a fresh, migrated database of the given engine, closed when the test ends.
func New(t testing.TB, eng store.Engine) *store.DB {
	t.Helper()
	dsn := DSN(t, eng)
	db, err := store.Open(context.Background(), dsn)
	if err != nil {
		t.Fatalf("open %s test database: %v", eng, err)
	}
	t.Cleanup(func() { db.Close() })
	if _, err := db.Migrate(context.Background()); err != nil {
		t.Fatalf("migrate %s test database: %v", eng, err)
	}
	return db
}

// DSN returns the data source name of a fresh, empty database of the given engine, for tests
// that open it themselves (a child process, a second node). A PostgreSQL schema made for it
// is dropped when the test ends.
func DSN(t testing.TB, eng store.Engine) string {
	t.Helper()
	if eng == store.SQLite {
		return filepath.Join(t.TempDir(), "herald.db")
	}
	base := os.Getenv(PostgresURLEnv)
	if base == "" {
		t.Skipf("%s is not set; skipping the PostgreSQL run", PostgresURLEnv)
	}
	dsn, drop, err := store.NewSchema(context.Background(), base, "t_")
	if err != nil {
		t.Fatalf("%s: %v", PostgresURLEnv, err)
	}
	t.Cleanup(func() { _ = drop() })
	return dsn
}

// QueryPlan returns SQLite's plan of stmt on db, one step a line (EXPLAIN QUERY PLAN).
func QueryPlan(t testing.TB, db *store.DB, stmt string, args ...any) string {
	t.Helper()
	rows, err := db.Read.Query(`EXPLAIN QUERY PLAN `+stmt, args...)
	if err != nil {
		t.Fatalf("%v\n%s", err, stmt)
	}
	defer rows.Close()
	var plan []string
	for rows.Next() {
		var id, parent, unused int
		var detail string
		if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
			t.Fatal(err)
		}
		plan = append(plan, detail)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return strings.Join(plan, "\n")
}

// CommitMeanwhile runs fn while tx, another request's or node's transaction left open by the
// test, is still open, then commits tx and returns fn's error: fn starts, is given 50 ms to reach
// whatever it waits for on tx (on PostgreSQL a row or key tx holds, on SQLite the one write
// connection), and tx commits under it. When fn waits on tx, it ends after the commit, whatever
// the timing.
func CommitMeanwhile(t testing.TB, tx *sql.Tx, fn func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- fn() }()
	time.Sleep(50 * time.Millisecond)
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	return <-done
}
