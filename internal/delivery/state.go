package delivery

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/heraldhq/herald/internal/audit"
	"github.com/heraldhq/herald/internal/problem"
)

// State is where a delivery stands in its lifecycle (DESIGN.md §2).
type State string

// The states.
const (
	Draft         State = "draft"
	Preparing     State = "preparing"
	PrepareFailed State = "prepare_failed"
	Ready         State = "ready"
	Approved      State = "approved"
	Scheduled     State = "scheduled"
	Sending       State = "sending"
	Paused        State = "paused"
	Retrying      State = "retrying"
	Stopped       State = "stopped"
	Finished      State = "finished"
	Failed        State = "failed"
)

// States lists every state in lifecycle order.
var States = []State{Draft, Preparing, PrepareFailed, Ready, Approved, Scheduled, Sending, Paused, Retrying, Stopped, Finished, Failed}

// transitions is the lifecycle: for each state, the states it may move to. It is the only
// place that says so; transition refuses anything else.
var transitions = map[State][]State{
	// Prepare.
	Draft: {Preparing},
	// The preparation ends, fails or is stopped.
	Preparing: {Ready, PrepareFailed},
	// Edited, or prepared again.
	PrepareFailed: {Draft, Preparing},
	// Approved, confirmed (when no approval is needed), rejected or edited, prepared again.
	Ready: {Approved, Scheduled, Sending, Draft, Preparing},
	// Confirmed, rejected or edited, prepared again.
	Approved: {Scheduled, Sending, Draft, Preparing},
	// The contact date is reached, or the send is stopped, or edited before it starts.
	Scheduled: {Sending, Stopped, Draft},
	// The engine's outcomes, and the Start deliveries user's pause and stop.
	Sending:  {Paused, Stopped, Retrying, Finished, Failed},
	Paused:   {Sending, Stopped},
	Retrying: {Paused, Stopped, Finished, Failed},
	// Stopped, Finished and Failed are final.
}

// CanMove reports whether the lifecycle allows from → to.
func CanMove(from, to State) bool { return slices.Contains(transitions[from], to) }

// Editable reports whether a delivery in state s may be edited (an edit of a prepared delivery
// returns it to draft).
func (s State) Editable() bool {
	return s == Draft || CanMove(s, Draft)
}

// Final reports whether s is a state a delivery never leaves.
func (s State) Final() bool { return len(transitions[s]) == 0 }

// stateChange is the audit record of one transition.
type stateChange struct {
	State  State  `json:"state"`
	Reason string `json:"reason,omitempty"`
}

// transition moves delivery id from the state from to to, in tx, and records it in the audit
// log as action (who, when, from, to). It checks the move against the lifecycle table and,
// with a compare-and-set on the stored state, that no one moved the delivery meanwhile.
// extra are further column assignments ("prepared_hash = NULL") written with the change; they
// are code, never input.
func transition(ctx context.Context, tx *sql.Tx, at time.Time, actor audit.Actor, id int64, from, to State, action, reason string, extra ...string) error {
	if !CanMove(from, to) {
		return problem.Conflictf("invalid_transition", "delivery %d is %s; it cannot become %s", id, from, to)
	}
	set := "state = $1, updated_at = $2"
	if len(extra) > 0 {
		set += ", " + strings.Join(extra, ", ")
	}
	res, err := tx.ExecContext(ctx, `UPDATE deliveries SET `+set+` WHERE id = $3 AND state = $4`, to, at.UnixMilli(), id, from)
	if err != nil {
		return fmt.Errorf("move delivery %d from %s to %s: %w", id, from, to, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("move delivery %d from %s to %s: %w", id, from, to, err)
	} else if n == 0 {
		return problem.Conflictf("state_changed", "delivery %d is no longer %s (it changed meanwhile); reload it and try again", id, from)
	}
	return audit.Record(ctx, tx, at, actor, "delivery."+action, "delivery", id,
		stateChange{State: from}, stateChange{State: to, Reason: reason})
}
