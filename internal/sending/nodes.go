package sending

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/heraldhq/herald/internal/channel"
)

// Several nodes (herald serve processes) may send from one database. Each registers in the
// nodes table and beats every Config.Heartbeat; a node not seen for three beats is taken as
// gone, and its row is deleted after an hour. The limits an operator gives the Sender (a
// relay's rate, a recipient domain's rate and messages in progress) are the installation's:
// with n live nodes each engine gives its Sender a share of 1/n (channel.Shared), so that
// together they keep to them. A node that starts takes its share at once; the others take
// theirs at their next beat, so for up to one beat the installation may send above a limit
// by the new node's share.

// DefaultHeartbeat is Config.Heartbeat's default.
const DefaultHeartbeat = 2 * time.Second

// forgetNodesAfter is how long the row of a node that stopped beating is kept.
const forgetNodesAfter = time.Hour

// heartbeat records that this node is alive, counts the live nodes and, when their number
// changed, gives the Sender its new share of the limits.
func (e *Engine) heartbeat(ctx context.Context) error {
	now := e.clock.Now()
	var live int
	err := e.db.InTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO nodes (id, started_at, seen_at) VALUES ($1, $2, $3)
			ON CONFLICT (id) DO UPDATE SET started_at = excluded.started_at, seen_at = excluded.seen_at`,
			e.cfg.NodeID, e.started.UnixMilli(), now.UnixMilli()); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM nodes WHERE seen_at < $1`, now.Add(-forgetNodesAfter).UnixMilli()); err != nil {
			return err
		}
		return tx.QueryRowContext(ctx, `SELECT count(*) FROM nodes WHERE seen_at >= $1`,
			now.Add(-3*e.cfg.Heartbeat).UnixMilli()).Scan(&live)
	})
	if err != nil {
		return fmt.Errorf("node heartbeat: %w", err)
	}
	live = max(live, 1)
	e.nodesMu.Lock()
	changed := live != e.liveNodes
	e.liveNodes = live
	e.nodesMu.Unlock()
	if changed {
		if s, ok := e.cfg.Sender.(channel.Shared); ok {
			s.SetShare(1 / float64(live))
		}
		e.log.Info("sending limits shared among the live nodes", "node", e.cfg.NodeID, "live_nodes", live)
	}
	return nil
}

// LiveNodes returns the number of live nodes this node counted at its last heartbeat.
func (e *Engine) LiveNodes() int {
	e.nodesMu.Lock()
	defer e.nodesMu.Unlock()
	return e.liveNodes
}

// beat runs heartbeat every Config.Heartbeat until ctx ends, then removes this node's row so
// that the others take its share at their next beat.
func (e *Engine) beat(ctx context.Context) {
	t := time.NewTicker(e.cfg.Heartbeat)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			e.leave()
			return
		case <-t.C:
		}
		if err := e.heartbeat(ctx); err != nil && ctx.Err() == nil {
			e.log.Error("sending: node heartbeat failed", "error", err)
		}
	}
}

// leave deletes this node's row.
func (e *Engine) leave() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := e.db.Write.ExecContext(ctx, `DELETE FROM nodes WHERE id = $1`, e.cfg.NodeID); err != nil {
		e.log.Warn("sending: could not remove this node from the live nodes", "node", e.cfg.NodeID, "error", err)
	}
}
