package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"fmt"
)

// Secret returns the random secret of n bytes kept in the settings table under name,
// creating it the first time. Nodes starting together agree on one: each inserts its own
// candidate with ON CONFLICT DO NOTHING, then every node reads the row that won.
func (db *DB) Secret(ctx context.Context, name string, n int) ([]byte, error) {
	candidate := make([]byte, n)
	if _, err := rand.Read(candidate); err != nil {
		return nil, fmt.Errorf("make secret %s: %w", name, err)
	}
	var stored string
	err := db.InTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING`,
			name, base64.StdEncoding.EncodeToString(candidate)); err != nil {
			return err
		}
		return tx.QueryRowContext(ctx, `SELECT value FROM settings WHERE key = $1`, name).Scan(&stored)
	})
	if err != nil {
		return nil, fmt.Errorf("secret %s: %w", name, err)
	}
	b, err := base64.StdEncoding.DecodeString(stored)
	if err != nil {
		return nil, fmt.Errorf("secret %s in settings is not base64: %w", name, err)
	}
	return b, nil
}
