package store_test

import (
	"context"
	"net/url"
	"os"
	"strings"
	"testing"

	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/store/storetest"
)

// TestNewSchema: each schema NewSchema makes is a database of its own (a migrated Herald in one
// is not seen from another), and drop removes it with everything in it.
func TestNewSchema(t *testing.T) {
	ctx := context.Background()
	if _, _, err := store.NewSchema(ctx, "./herald.db", "x_"); err == nil {
		t.Fatal("NewSchema accepted a SQLite path")
	}
	base := os.Getenv(storetest.PostgresURLEnv)
	if base == "" {
		t.Skipf("%s is not set", storetest.PostgresURLEnv)
	}
	dsn1, drop1, err := store.NewSchema(ctx, base, "s_")
	if err != nil {
		t.Fatal(err)
	}
	defer drop1()
	dsn2, drop2, err := store.NewSchema(ctx, base, "s_")
	if err != nil {
		t.Fatal(err)
	}
	schema := mustSchema(t, dsn1)
	if !strings.HasPrefix(schema, "s_") || len(schema) != len("s_")+12 || dsn1 == dsn2 {
		t.Fatalf("schemas %q and %q", dsn1, dsn2)
	}
	db1, err := store.Open(ctx, dsn1)
	if err != nil {
		t.Fatal(err)
	}
	defer db1.Close()
	if _, err := db1.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	db2, err := store.Open(ctx, dsn2)
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	var n int
	if err := db2.Read.QueryRow(`SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("the second schema holds %d tables (%v), want none", n, err)
	}
	db2.Close()
	if err := drop2(); err != nil {
		t.Fatal(err)
	}
	if err := db1.Read.QueryRow(`SELECT count(*) FROM information_schema.schemata WHERE schema_name = $1`,
		mustSchema(t, dsn2)).Scan(&n); err != nil || n != 0 {
		t.Fatalf("the dropped schema is still there (%d, %v)", n, err)
	}
}

func mustSchema(t *testing.T, dsn string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	return u.Query().Get("search_path")
}
