package store_test

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"testing"

	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/store/storetest"
)

func TestMigrateIsIdempotent(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		n, err := db.Migrate(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Fatalf("second Migrate applied %d migrations, want 0", n)
		}
		var groups int
		if err := db.Read.QueryRow(`SELECT count(*) FROM groups`).Scan(&groups); err != nil {
			t.Fatal(err)
		}
		if groups != 2 {
			t.Fatalf("seeded groups = %d, want 2 (Administrators, Standard users)", groups)
		}
	})
}

func TestInTxRollsBackOnError(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		boom := errors.New("boom")
		err := db.InTx(ctx, func(tx *sql.Tx) error {
			if _, err := tx.Exec(`INSERT INTO settings (key, value) VALUES ($1, $2)`, "k", "v"); err != nil {
				return err
			}
			return boom
		})
		if !errors.Is(err, boom) {
			t.Fatalf("InTx error = %v, want boom", err)
		}
		var n int
		if err := db.Read.QueryRow(`SELECT count(*) FROM settings`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Fatalf("rolled back insert is visible: %d rows", n)
		}
		if err := db.InTx(ctx, func(tx *sql.Tx) error {
			_, err := tx.Exec(`INSERT INTO settings (key, value) VALUES ($1, $2)`, "k", "v")
			return err
		}); err != nil {
			t.Fatal(err)
		}
		err = db.InTx(ctx, func(tx *sql.Tx) error {
			_, err := tx.Exec(`INSERT INTO settings (key, value) VALUES ($1, $2)`, "k", "again")
			return err
		})
		if !store.IsUniqueViolation(err) {
			t.Fatalf("duplicate key error not recognised as a unique violation: %v", err)
		}
	})
}

func TestSQLiteReadersSeeCommittedWrites(t *testing.T) {
	db := storetest.New(t, store.SQLite)
	ctx := context.Background()
	if err := db.InTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.Exec(`INSERT INTO settings (key, value) VALUES ('a', 'b')`)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var v string
	if err := db.Read.QueryRow(`SELECT value FROM settings WHERE key = 'a'`).Scan(&v); err != nil || v != "b" {
		t.Fatalf("reader saw %q, %v", v, err)
	}
	if _, err := db.Read.Exec(`INSERT INTO settings (key, value) VALUES ('x', 'y')`); err == nil {
		t.Fatal("the read pool accepted a write")
	}
	var mode string
	if err := db.Write.QueryRow(`PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "wal" {
		t.Fatalf("journal_mode = %q, %v; want wal", mode, err)
	}
}

func TestOpenRefusesMemory(t *testing.T) {
	if _, err := store.Open(context.Background(), ":memory:"); err == nil {
		t.Fatal("Open(:memory:) succeeded")
	}
	if _, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "missing", "dir", "x.db")); err == nil {
		t.Fatal("Open in a missing folder succeeded")
	}
}

func TestSecretIsMadeOnce(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		a, err := db.Secret(context.Background(), "test.key", 32)
		if err != nil || len(a) != 32 {
			t.Fatalf("first: %x %v", a, err)
		}
		b, err := db.Secret(context.Background(), "test.key", 32)
		if err != nil || string(a) != string(b) {
			t.Fatalf("second call made a new secret: %x vs %x, %v", a, b, err)
		}
		c, _ := db.Secret(context.Background(), "other.key", 32)
		if string(c) == string(a) {
			t.Fatal("two names share a secret")
		}
	})
}
