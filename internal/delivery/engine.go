package delivery

import (
	"context"
	"database/sql"

	"github.com/heraldhq/herald/internal/audit"
	"github.com/heraldhq/herald/internal/problem"
)

// EngineMove is the sending engine's change of a delivery's state, made inside the engine's
// own transaction tx so that it commits with the counts that decided it: sending → retrying
// (only retries wait), and sending or retrying → finished or failed (nothing left to send).
// It is recorded in the audit log with the actor "system" and reason. It refuses any other
// move, and returns a Conflict problem with code "state_changed" when the delivery is no
// longer from (a user paused or stopped it meanwhile), which the engine takes as "leave it".
func (s *Service) EngineMove(ctx context.Context, tx *sql.Tx, id int64, from, to State, reason string) error {
	if (from != Sending && from != Retrying) || (to != Retrying && to != Finished && to != Failed) {
		return problem.Conflictf("invalid_transition", "the sending engine does not move a delivery from %s to %s", from, to)
	}
	action := map[State]string{Retrying: "retry", Finished: "finish", Failed: "fail"}[to]
	return transition(ctx, tx, s.clock.Now(), audit.System, id, from, to, action, reason)
}
