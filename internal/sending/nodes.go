package sending

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/heraldhq/herald/internal/channel"
)

// Several nodes (herald serve processes) may send from one database. Each registers in the
// nodes table and beats every Config.Heartbeat, saying whether it had a batch in flight since
// its previous beat (active); a node not seen for three beats is taken as gone, and its row is
// deleted after an hour. The limits an operator gives the Sender (a relay's rate, a recipient
// domain's rate and messages in progress) are the installation's: each engine gives its Sender
// a share of 1/(n+1) of them (channel.Shared), n being the other live nodes that are active,
// so that n+1 sending nodes keep to them together while an idle node takes nothing from the
// others. A node that starts sending takes its share at once; the others take their smaller
// one at their next beat, so for up to one beat the installation may send above a limit by the
// new node's share.

// DefaultHeartbeat is Config.Heartbeat's default.
const DefaultHeartbeat = 2 * time.Second

// forgetNodesAfter is how long the row of a node that stopped beating is kept.
const forgetNodesAfter = time.Hour

// heartbeat records that this node is alive and whether it was active, counts the other live
// nodes and the active ones among them and, when the share changed, gives the Sender its new
// share of the limits.
func (e *Engine) heartbeat(ctx context.Context) error {
	now := e.clock.Now()
	active := e.sentSinceBeat.Swap(false) || e.hasFlights()
	var live, others int
	err := e.db.InTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO nodes (id, started_at, seen_at, active) VALUES ($1, $2, $3, $4)
			ON CONFLICT (id) DO UPDATE SET started_at = excluded.started_at, seen_at = excluded.seen_at, active = excluded.active`,
			e.cfg.NodeID, e.started.UnixMilli(), now.UnixMilli(), active); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM nodes WHERE seen_at < $1`, now.Add(-forgetNodesAfter).UnixMilli()); err != nil {
			return err
		}
		return tx.QueryRowContext(ctx, `SELECT count(*), count(CASE WHEN active AND id <> $2 THEN 1 END) FROM nodes WHERE seen_at >= $1`,
			now.Add(-3*e.cfg.Heartbeat).UnixMilli(), e.cfg.NodeID).Scan(&live, &others)
	})
	if err != nil {
		return fmt.Errorf("node heartbeat: %w", err)
	}
	e.nodesMu.Lock()
	before := e.sharedWith
	e.liveNodes, e.sharedWith = max(live, 1), others+1
	e.nodesMu.Unlock()
	if others+1 != before {
		if s, ok := e.cfg.Sender.(channel.Shared); ok {
			s.SetShare(1 / float64(others+1))
		}
		if before != 0 || others > 0 { // not at a lone node's first beat
			e.log.Info("sending limits shared among the sending nodes", "node", e.cfg.NodeID, "share", fmt.Sprintf("1/%d", others+1))
		}
	}
	return nil
}

// LiveNodes returns the number of live nodes this node counted at its last heartbeat, itself
// included.
func (e *Engine) LiveNodes() int {
	e.nodesMu.Lock()
	defer e.nodesMu.Unlock()
	return e.liveNodes
}

// hasFlights reports whether a batch of this node is being sent.
func (e *Engine) hasFlights() bool {
	e.flightMu.Lock()
	defer e.flightMu.Unlock()
	return len(e.inflight) > 0
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
