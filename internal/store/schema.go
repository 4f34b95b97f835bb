package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"net/url"
)

// NewSchema creates an empty schema, prefix followed by twelve random hex digits, in the
// PostgreSQL database at base, and returns a data source name that selects it (search_path)
// and a function that drops it with everything in it. Tests and benchmarks get a database of
// their own this way on a server they share.
func NewSchema(ctx context.Context, base, prefix string) (dsn string, drop func() error, err error) {
	if !IsPostgres(base) {
		return "", nil, fmt.Errorf("new schema: %s is not a postgres:// URL", redact(base))
	}
	u, err := url.Parse(base)
	if err != nil {
		return "", nil, fmt.Errorf("new schema: parse %s: %w", redact(base), err)
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	schema := prefix + hex.EncodeToString(b[:])
	admin, err := sql.Open("pgx", base)
	if err != nil {
		return "", nil, fmt.Errorf("new schema: open %s: %w", redact(base), err)
	}
	defer admin.Close()
	if _, err := admin.ExecContext(ctx, "CREATE SCHEMA "+schema); err != nil {
		return "", nil, fmt.Errorf("new schema: create %s in %s: %w", schema, redact(base), err)
	}
	drop = func() error {
		a, err := sql.Open("pgx", base)
		if err != nil {
			return err
		}
		defer a.Close()
		_, err = a.Exec("DROP SCHEMA " + schema + " CASCADE")
		return err
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String(), drop, nil
}
