package auth

import (
	"context"
	"database/sql"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/problem"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/store/storetest"
)

// TestTwoChangesAtOnceKeepAnAdministrator: two transactions each disable one of the last two
// administrators at the same time. The second one's check must see the first's commit and
// refuse, or nobody could manage users any more. (The first transaction waits 50 ms between its
// check and its commit, time for the second to run its check unless it waits its turn.)
func TestTwoChangesAtOnceKeepAnAdministrator(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		s := NewService(db, clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)), slog.New(slog.NewTextHandler(io.Discard, nil)))
		var ids [2]int64
		for i, login := range []string{"ada", "grace"} {
			err := db.InTx(ctx, func(tx *sql.Tx) error {
				if err := tx.QueryRowContext(ctx, `INSERT INTO users (login, password_hash, disabled, created_at, updated_at)
					VALUES ($1, 'x', $2, 0, 0) RETURNING id`, login, false).Scan(&ids[i]); err != nil {
					return err
				}
				_, err := tx.ExecContext(ctx, `INSERT INTO user_roles (user_id, role) VALUES ($1, $2)`, ids[i], string(Administration))
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
		}
		disable := func(tx *sql.Tx, id int64) error {
			if _, err := tx.ExecContext(ctx, `UPDATE users SET disabled = $1 WHERE id = $2`, true, id); err != nil {
				return err
			}
			return s.keepAnAdministrator(ctx, tx)
		}
		tx1, err := db.Write.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := disable(tx1, ids[0]); err != nil {
			t.Fatalf("disabling one of two administrators: %v", err)
		}
		err = storetest.CommitMeanwhile(t, tx1, func() error {
			return db.InTx(ctx, func(tx *sql.Tx) error { return disable(tx, ids[1]) })
		})
		if p, ok := problem.As(err); !ok || p.Code != "last_administrator" {
			t.Fatalf("the second change, which leaves no administrator, got %v", p)
		}
		var enabled int
		if err := db.Read.QueryRow(`SELECT count(*) FROM users WHERE disabled = $1`, false).Scan(&enabled); err != nil || enabled != 1 {
			t.Fatalf("%d administrators enabled (%v), want 1", enabled, err)
		}
	})
}
