package sending

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/heraldhq/herald/internal/stats"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/webhook"
)

// On SQLite the statements the engine runs for every batch are prepared once, when the engine
// is made: parsing and planning one of them (the write-backs above all) costs SQLite more than
// running it on a batch's rows, and modernc.org/sqlite keeps a prepared statement's compiled
// form between runs. PostgreSQL's driver caches its statements itself. The statements live as
// long as the engine (Step still runs after Stop), and close with the database.
//
// The driver resets a prepared statement's one compiled form when it runs again, so its rows
// must be closed before the statement runs again on the same connection (within a write
// transaction above all). Each statement here is read to the end and closed where it runs;
// a statement run again while its rows are open does not belong here.

// activeDeliveriesSQL lists the deliveries the engine sends.
const activeDeliveriesSQL = `SELECT id, state, validity_until, prepared_hash FROM deliveries
	WHERE state IN ('sending', 'retrying') AND channel = 'email' ORDER BY id`

// endBatchSQL deletes batch $1 of node $2.
const endBatchSQL = `DELETE FROM in_flight WHERE id = $1 AND lease_owner = $2`

// prepared holds the engine's prepared statements by their text: those run on the read pool
// and those run in write transactions.
type prepared struct {
	read, write map[string]*sql.Stmt
}

// prepareStatements prepares the engine's statements for every batch on SQLite; on PostgreSQL it
// prepares nothing.
func prepareStatements(ctx context.Context, db *store.DB, q queries) (prepared, error) {
	p := prepared{read: map[string]*sql.Stmt{}, write: map[string]*sql.Stmt{}}
	if db.Engine != store.SQLite {
		return p, nil
	}
	for _, s := range []struct {
		pool  *sql.DB
		into  map[string]*sql.Stmt
		texts []string
	}{
		{db.Read, p.read, []string{q.pick, q.recipients, activeDeliveriesSQL}},
		{db.Write, p.write, append(append([]string{q.markBatch, endBatchSQL, q.writeSent, q.writeSentIDs, q.countedSent,
			q.countedSentIDs, q.writeBack, q.erroneous}, stats.ApplySQL()...), webhook.EmitSQL(db.Engine)...)},
	} {
		for _, text := range s.texts {
			st, err := s.pool.PrepareContext(ctx, text)
			if err != nil {
				return p, errors.Join(fmt.Errorf("sending: prepare %.60q: %w", text, err), p.close())
			}
			s.into[text] = st
		}
	}
	return p, nil
}

func (p prepared) close() error {
	var err error
	for _, m := range []map[string]*sql.Stmt{p.read, p.write} {
		for _, st := range m {
			err = errors.Join(err, st.Close())
		}
	}
	return err
}

// readQuery runs query on the read pool, prepared when it is one of the engine's.
func (e *Engine) readQuery(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if st := e.stmts.read[query]; st != nil {
		return st.QueryContext(ctx, args...)
	}
	return e.db.Read.QueryContext(ctx, query, args...)
}

// txQuery runs query in tx, prepared when it is one of the engine's.
func (e *Engine) txQuery(ctx context.Context, tx *sql.Tx, query string, args ...any) (*sql.Rows, error) {
	if st := e.stmts.write[query]; st != nil {
		return tx.StmtContext(ctx, st).QueryContext(ctx, args...)
	}
	return tx.QueryContext(ctx, query, args...)
}

// txRunner runs statements in tx for stats.Apply and webhook.Emit, prepared when they are the
// engine's.
type txRunner struct {
	e  *Engine
	tx *sql.Tx
}

func (r txRunner) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	return r.e.txExec(ctx, r.tx, query, args...)
}

func (r txRunner) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	if st := r.e.stmts.write[query]; st != nil {
		return r.tx.StmtContext(ctx, st).QueryRowContext(ctx, args...)
	}
	return r.tx.QueryRowContext(ctx, query, args...)
}

// txExec is txQuery for statements that return no rows.
func (e *Engine) txExec(ctx context.Context, tx *sql.Tx, query string, args ...any) (sql.Result, error) {
	if st := e.stmts.write[query]; st != nil {
		return tx.StmtContext(ctx, st).ExecContext(ctx, args...)
	}
	return tx.ExecContext(ctx, query, args...)
}
