// Package store opens Herald's database, applies its migrations and runs transactions.
//
// Two engines are supported: SQLite (the default, one file in WAL mode, pure Go so no C
// toolchain is needed) and PostgreSQL (pgx), chosen by the form of the data source name:
// a postgres:// or postgresql:// URL selects PostgreSQL, anything else is a SQLite file path.
//
// SQLite allows one writer at a time, so a DB holds two pools: Write, limited to a single
// connection whose transactions begin IMMEDIATE (no upgrade deadlocks), and Read, a pool of
// read-only connections that see the last committed state through WAL. On PostgreSQL both
// names refer to the same pool. Services read through Read and write, including any read that
// decides a write, inside InTx.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"runtime"
	"strings"

	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver
	_ "modernc.org/sqlite"             // registers the "sqlite" database/sql driver
)

// ErrNotFound is returned, wrapped, when a row asked for by key does not exist.
var ErrNotFound = errors.New("not found")

// ErrConflict is returned, wrapped, when a write would break a uniqueness rule.
var ErrConflict = errors.New("conflict")

// Runner runs statements within a transaction: a *sql.Tx, or a wrapper that runs the
// statements it knows prepared (the sending engine's, for what it runs every batch).
type Runner interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// DB is an open Herald database.
type DB struct {
	// Engine says which database engine is behind the pools.
	Engine Engine
	// Write is the pool for transactions (one connection on SQLite).
	Write *sql.DB
	// Read is the pool for reads outside transactions.
	Read *sql.DB
	dsn  string
}

// Open connects to the database named by dsn without migrating it. A dsn starting with
// postgres:// or postgresql:// selects PostgreSQL; anything else is a SQLite file path
// (":memory:" is refused because the read and write pools would see different databases).
func Open(ctx context.Context, dsn string) (*DB, error) {
	if IsPostgres(dsn) {
		return openPostgres(ctx, dsn)
	}
	return openSQLite(ctx, dsn)
}

// ForUpdate is the clause that ends a SELECT reading rows a transaction is about to change: on
// PostgreSQL " FOR UPDATE", which locks them until the transaction ends, so that a change
// committed meanwhile by another transaction is waited for rather than overwritten; on SQLite
// "", as its write transactions already take turns.
func ForUpdate(eng Engine) string {
	if eng == Postgres {
		return " FOR UPDATE"
	}
	return ""
}

// IsPostgres reports whether dsn selects PostgreSQL.
func IsPostgres(dsn string) bool {
	return strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://")
}

func openPostgres(ctx context.Context, dsn string) (*DB, error) {
	pool, err := sql.Open("pgx", dsn)
	if err != nil {
		return nil, fmt.Errorf("open PostgreSQL: %w", err)
	}
	pool.SetMaxOpenConns(max(8, 4*runtime.NumCPU()))
	pool.SetMaxIdleConns(max(8, 4*runtime.NumCPU()))
	if err := pool.PingContext(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect to PostgreSQL at %s: %w", redact(dsn), err)
	}
	return &DB{Engine: Postgres, Write: pool, Read: pool, dsn: dsn}, nil
}

func openSQLite(ctx context.Context, path string) (*DB, error) {
	if path == "" || path == ":memory:" || strings.Contains(path, "mode=memory") {
		return nil, fmt.Errorf("open SQLite: %q is not a file; Herald needs a file path (e.g. ./herald.db)", path)
	}
	path = strings.TrimPrefix(path, "file:")
	if i := strings.IndexByte(path, '?'); i >= 0 {
		path = path[:i]
	}
	// Memory is the pure-Go SQLite's own, outside Go's heap, and costs about twice what SQLite
	// asks for: its allocator rounds a block up to a power of two, so a cached 4 KiB page (with
	// SQLite's header) takes 8 KiB. Hence small page caches — 16 MiB for the one writer, 2 MiB
	// for each of the 2×CPUs readers — with the OS caching the file behind them: larger ones
	// (32 and 8 MiB) measured no faster for preparation or sending, and cost ~80 MB of a
	// 1,000,000-recipient send's peak. Temporary B-trees and sorts (preparation's) go to
	// temporary files, not memory: their memory is never returned to the OS once freed, so
	// temp_store=MEMORY left a 1M preparation's ~50 MB in the process for good.
	pragmas := "_pragma=busy_timeout(10000)&_pragma=foreign_keys(1)&_pragma=synchronous(NORMAL)&_pragma=temp_store(FILE)"
	w, err := sql.Open("sqlite", "file:"+path+"?"+pragmas+"&_pragma=cache_size(-16000)&_pragma=journal_mode(WAL)&_txlock=immediate")
	if err != nil {
		return nil, fmt.Errorf("open SQLite file %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	// The first connection switches the file to WAL; do it before readers open.
	if err := w.PingContext(ctx); err != nil {
		w.Close()
		return nil, fmt.Errorf("open SQLite file %s: %w", path, err)
	}
	r, err := sql.Open("sqlite", "file:"+path+"?"+pragmas+"&_pragma=cache_size(-2000)&_pragma=query_only(1)")
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("open SQLite file %s for reading: %w", path, err)
	}
	readers := max(4, 2*runtime.NumCPU())
	r.SetMaxOpenConns(readers)
	r.SetMaxIdleConns(readers)
	return &DB{Engine: SQLite, Write: w, Read: r, dsn: path}, nil
}

// Close closes both pools.
func (db *DB) Close() error {
	err := db.Write.Close()
	if db.Read != db.Write {
		err = errors.Join(err, db.Read.Close())
	}
	return err
}

// InTx runs fn in a transaction on the write pool and commits it when fn returns nil. When fn
// returns an error or panics, the transaction is rolled back and nothing fn wrote is kept.
func (db *DB) InTx(ctx context.Context, fn func(tx *sql.Tx) error) (err error) {
	tx, err := db.Write.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin transaction: %w", err)
	}
	defer func() {
		if p := recover(); p != nil {
			_ = tx.Rollback()
			panic(p)
		}
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	if err = fn(tx); err != nil {
		return err
	}
	if err = tx.Commit(); err != nil {
		return fmt.Errorf("commit transaction: %w", err)
	}
	return nil
}

// IsUniqueViolation reports whether err is a unique-constraint violation on either engine.
func IsUniqueViolation(err error) bool {
	if err == nil {
		return false
	}
	msg := err.Error()
	return strings.Contains(msg, "UNIQUE constraint failed") || // SQLite
		strings.Contains(msg, "SQLSTATE 23505") // PostgreSQL unique_violation
}

// Describe names the database for logs, without any password.
func (db *DB) Describe() string {
	if db.Engine == Postgres {
		return "PostgreSQL " + redact(db.dsn)
	}
	return "SQLite " + db.dsn
}

func redact(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil {
		return "(unparseable URL)"
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	return u.String()
}
