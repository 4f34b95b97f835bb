package delivery

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"

	"github.com/heraldhq/herald/internal/audit"
	"github.com/heraldhq/herald/internal/auth"
	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/problem"
)

// ApprovalKind is what an approval is about.
type ApprovalKind string

// The kinds of approval.
const (
	ContentApproval ApprovalKind = "content"
	TargetApproval  ApprovalKind = "target"
)

// Decision is an approver's answer.
type Decision string

// The decisions.
const (
	Approve Decision = "approve"
	Reject  Decision = "reject"
)

// Approval is one recorded decision on a delivery.
type Approval struct {
	ID       int64        `json:"id"`
	Kind     ApprovalKind `json:"kind"`
	Decision Decision     `json:"decision"`
	ByID     int64        `json:"by_id,omitempty"`
	By       string       `json:"by"`
	At       time.Time    `json:"at"`
	Comment  string       `json:"comment,omitempty"`
	// Hash is the prepared hash the decision was about; Valid says it is still the
	// delivery's (an edit or a new preparation voids it).
	Hash  string `json:"hash"`
	Valid bool   `json:"valid"`
}

// ApprovalInput is a decision as the API receives it.
type ApprovalInput struct {
	Kind     ApprovalKind `json:"kind"`
	Decision Decision     `json:"decision"`
	Comment  string       `json:"comment"`
}

// MaxCommentLength is the longest approval comment, in bytes.
const MaxCommentLength = 2000

// Decide records an approval or a rejection; see Approve and Reject.
func (s *Service) Decide(ctx context.Context, actor auth.Principal, id int64, in ApprovalInput) (Delivery, error) {
	switch in.Decision {
	case Approve:
		return s.Approve(ctx, actor, id, in.Kind, in.Comment)
	case Reject:
		return s.Reject(ctx, actor, id, in.Kind, in.Comment)
	}
	return Delivery{}, problem.Invalidf("decision", "unknown decision %q; it is approve or reject", in.Decision)
}

// Approve records the approval of the content or the target of a prepared delivery, for its
// current prepared hash. It needs the role Approve deliveries; with four-eyes on, the
// delivery's author (its creator or last editor) is refused. Once every approval the delivery
// requires is given, it becomes approved.
func (s *Service) Approve(ctx context.Context, actor auth.Principal, id int64, kind ApprovalKind, comment string) (Delivery, error) {
	var out Delivery
	err := s.decide(ctx, actor, id, kind, Approve, comment, func(tx *sql.Tx, d *Delivery, now time.Time) error {
		have, err := validApprovals(ctx, tx, d)
		if err != nil {
			return err
		}
		if have[kind] {
			return problem.Conflictf("already_approved", "the %s of delivery %d is already approved", kind, id)
		}
		have[kind] = true
		if err := insertApproval(ctx, tx, d, actor, kind, Approve, comment, now); err != nil {
			return err
		}
		if missing := missingApprovals(d.Approvals, have); len(missing) == 0 && d.State == Ready {
			if err := transition(ctx, tx, now, actor.Actor(), id, Ready, Approved, "approve", "every required approval given"); err != nil {
				return err
			}
			d.State = Approved
		}
		out = *d
		return nil
	})
	return out, err
}

// Reject records the rejection of the content or the target of a prepared delivery and
// returns it to draft, voiding its approvals. It needs the role Approve deliveries and a
// comment saying what to change.
func (s *Service) Reject(ctx context.Context, actor auth.Principal, id int64, kind ApprovalKind, comment string) (Delivery, error) {
	if strings.TrimSpace(comment) == "" {
		if err := actor.Require(auth.ApproveDeliveries); err != nil {
			return Delivery{}, err
		}
		return Delivery{}, problem.Invalidf("comment", "a rejection needs a comment saying what to change")
	}
	var out Delivery
	err := s.decide(ctx, actor, id, kind, Reject, comment, func(tx *sql.Tx, d *Delivery, now time.Time) error {
		if err := insertApproval(ctx, tx, d, actor, kind, Reject, comment, now); err != nil {
			return err
		}
		if err := s.toDraft(ctx, tx, now, actor.Actor(), d, "reject", fmt.Sprintf("%s rejected: %s", kind, comment)); err != nil {
			return err
		}
		out = *d
		return nil
	})
	return out, err
}

// decide holds what Approve and Reject share: the role, the checks, the lock.
func (s *Service) decide(ctx context.Context, actor auth.Principal, id int64, kind ApprovalKind, dec Decision, comment string,
	fn func(tx *sql.Tx, d *Delivery, now time.Time) error) error {
	if err := actor.Require(auth.ApproveDeliveries); err != nil {
		return err
	}
	if kind != ContentApproval && kind != TargetApproval {
		return problem.Invalidf("kind", "unknown approval kind %q; it is content or target", kind)
	}
	if len(comment) > MaxCommentLength {
		return problem.Invalidf("comment", "the comment is longer than %d bytes", MaxCommentLength)
	}
	return s.db.InTx(ctx, func(tx *sql.Tx) error {
		d, err := s.lock(ctx, tx, id)
		if err != nil {
			return err
		}
		switch d.State {
		case Ready, Approved:
		case Draft, PrepareFailed, Preparing:
			return problem.Conflictf("not_prepared", "delivery %d is %s; it can be approved or rejected once it is prepared", id, d.State)
		default:
			return problem.Conflictf("already_confirmed", "delivery %d is %s; approvals are given before the send is confirmed", id, d.State)
		}
		if (kind == ContentApproval && !d.Approvals.Content) || (kind == TargetApproval && !d.Approvals.Target) {
			return problem.Invalidf("kind", "delivery %d does not require a %s approval", id, kind)
		}
		if dec == Approve && d.Approvals.FourEyes && actor.UserID != 0 && (actor.UserID == d.CreatedBy || actor.UserID == d.UpdatedBy) {
			return &problem.Error{Kind: problem.Forbidden, Code: "four_eyes",
				Message: fmt.Sprintf("delivery %d needs four eyes: %q created or last edited it, so another user with the role %q must approve it", id, actor.Login, auth.ApproveDeliveries)}
		}
		return fn(tx, &d, s.clock.Now())
	})
}

func insertApproval(ctx context.Context, tx *sql.Tx, d *Delivery, actor auth.Principal, kind ApprovalKind, dec Decision, comment string, now time.Time) error {
	if _, err := tx.ExecContext(ctx, `INSERT INTO delivery_approvals (delivery_id, kind, decision, by_id, by_login, at, comment, hash)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`, d.ID, kind, dec, nullID(actor.UserID), actor.Login, now.UnixMilli(),
		strings.TrimSpace(comment), d.PreparedHash); err != nil {
		return fmt.Errorf("record %s of delivery %d: %w", dec, d.ID, err)
	}
	return audit.Record(ctx, tx, now, actor.Actor(), "delivery."+string(dec), "delivery", d.ID, nil,
		map[string]any{"kind": kind, "comment": comment, "hash": d.PreparedHash})
}

// validApprovals returns the kinds approved for d's current prepared hash.
func validApprovals(ctx context.Context, q querier, d *Delivery) (map[ApprovalKind]bool, error) {
	have := map[ApprovalKind]bool{}
	if d.PreparedHash == "" {
		return have, nil
	}
	rows, err := q.QueryContext(ctx, `SELECT kind FROM delivery_approvals WHERE delivery_id = $1 AND hash = $2 AND decision = 'approve'`, d.ID, d.PreparedHash)
	if err != nil {
		return nil, fmt.Errorf("read approvals of delivery %d: %w", d.ID, err)
	}
	defer rows.Close()
	for rows.Next() {
		var k ApprovalKind
		if err := rows.Scan(&k); err != nil {
			return nil, fmt.Errorf("read approvals of delivery %d: %w", d.ID, err)
		}
		have[k] = true
	}
	return have, rows.Err()
}

func missingApprovals(req ApprovalSettings, have map[ApprovalKind]bool) []string {
	var missing []string
	if req.Content && !have[ContentApproval] {
		missing = append(missing, "content")
	}
	if req.Target && !have[TargetApproval] {
		missing = append(missing, "target")
	}
	return missing
}

// Approvals returns the decisions recorded on a delivery, oldest first.
func (s *Service) Approvals(ctx context.Context, id int64) ([]Approval, error) {
	d, err := s.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	rows, err := s.db.Read.QueryContext(ctx, `SELECT id, kind, decision, by_id, by_login, at, comment, hash
		FROM delivery_approvals WHERE delivery_id = $1 ORDER BY id`, id)
	if err != nil {
		return nil, fmt.Errorf("read approvals of delivery %d: %w", id, err)
	}
	defer rows.Close()
	out := []Approval{}
	for rows.Next() {
		var a Approval
		var by sql.NullInt64
		var at int64
		if err := rows.Scan(&a.ID, &a.Kind, &a.Decision, &by, &a.By, &at, &a.Comment, &a.Hash); err != nil {
			return nil, fmt.Errorf("read approvals of delivery %d: %w", id, err)
		}
		a.ByID, a.At = by.Int64, clock.FromMillis(at)
		a.Valid = a.Decision == Approve && d.PreparedHash != "" && a.Hash == d.PreparedHash
		out = append(out, a)
	}
	return out, rows.Err()
}

// Confirm confirms the send of a prepared delivery: it needs the role Start deliveries, a
// preparation without errors and every approval the delivery requires. A contact date in the
// future makes it scheduled; otherwise it is sending at once. Every refusal says why.
func (s *Service) Confirm(ctx context.Context, actor auth.Principal, id int64) (Delivery, error) {
	if err := actor.Require(auth.StartDeliveries); err != nil {
		return Delivery{}, err
	}
	var out Delivery
	err := s.db.InTx(ctx, func(tx *sql.Tx) error {
		d, err := s.lock(ctx, tx, id)
		if err != nil {
			return err
		}
		switch d.State {
		case Ready, Approved:
		case Draft:
			return problem.Conflictf("not_prepared", "delivery %d is not prepared: prepare it, then confirm the send", id)
		case Preparing:
			return problem.Conflictf("not_prepared", "delivery %d is being prepared; confirm the send once the preparation has ended", id)
		case PrepareFailed:
			return prepErrors(d)
		default:
			return problem.Conflictf("already_confirmed", "delivery %d is %s; its send was already confirmed", id, d.State)
		}
		if len(d.PrepLog.Errors) > 0 || d.PreparedHash == "" {
			return prepErrors(d)
		}
		have, err := validApprovals(ctx, tx, &d)
		if err != nil {
			return err
		}
		if missing := missingApprovals(d.Approvals, have); len(missing) > 0 {
			return problem.Conflictf("approval_missing", "delivery %d still needs the %s approval before its send can be confirmed; ask a user with the role %q",
				id, strings.Join(missing, " and the "), auth.ApproveDeliveries)
		}
		if d.Counts.ToDeliver == 0 {
			return problem.Conflictf("nothing_to_deliver", "the preparation of delivery %d left no recipient to deliver to (%d targeted, %d excluded); see its exclusions",
				id, d.Counts.Targeted, d.Counts.Excluded)
		}
		now := s.clock.Now()
		to, contact := Sending, now
		if c := d.Schedule.ContactDate; c != nil && c.After(now) {
			to, contact = Scheduled, *c
		}
		until := contact.Add(time.Duration(d.ValiditySeconds) * time.Second)
		reason := "confirmed; sending now"
		if to == Scheduled {
			reason = "confirmed; waits for its contact date " + contact.UTC().Format(time.RFC3339)
		}
		if err := transition(ctx, tx, now, actor.Actor(), id, d.State, to, "confirm", reason,
			fmt.Sprintf("contact_at = %d", contact.UnixMilli()), fmt.Sprintf("validity_until = %d", until.UnixMilli()),
			fmt.Sprintf("confirmed_at = %d", now.UnixMilli()), fmt.Sprintf("confirmed_by = %d", actor.UserID)); err != nil {
			return err
		}
		out, err = get(ctx, tx, id, "")
		return err
	})
	if err == nil {
		s.log.Info("delivery confirmed", "delivery", id, "state", out.State, "by", actor.Login, "to_deliver", out.Counts.ToDeliver)
	}
	return out, err
}

func prepErrors(d Delivery) error {
	msgs := make([]string, 0, 3)
	for i, e := range d.PrepLog.Errors {
		if i == 3 {
			msgs = append(msgs, fmt.Sprintf("and %d more", len(d.PrepLog.Errors)-3))
			break
		}
		msgs = append(msgs, e.Rule+": "+e.Message)
	}
	if len(msgs) == 0 {
		return problem.Conflictf("not_prepared", "delivery %d has no successful preparation; prepare it again", d.ID)
	}
	return &problem.Error{Kind: problem.Conflict, Code: "preparation_errors", Details: d.PrepLog.Errors,
		Message: fmt.Sprintf("the preparation of delivery %d found errors, which block the send: %s; fix them and prepare it again", d.ID, strings.Join(msgs, "; "))}
}

// Pause pauses a delivery that is sending or retrying. It needs the role Start deliveries.
func (s *Service) Pause(ctx context.Context, actor auth.Principal, id int64) (Delivery, error) {
	return s.move(ctx, actor, id, "pause", Paused, Sending, Retrying)
}

// Resume resumes a paused delivery. It needs the role Start deliveries.
func (s *Service) Resume(ctx context.Context, actor auth.Principal, id int64) (Delivery, error) {
	return s.move(ctx, actor, id, "resume", Sending, Paused)
}

// Stop stops a delivery that is scheduled, sending, paused or retrying, for good; its pending
// rows are left unsent. A preparation running in this process is stopped instead, which
// leaves the delivery in prepare_failed with nothing written. It needs the role Start
// deliveries.
func (s *Service) Stop(ctx context.Context, actor auth.Principal, id int64) (Delivery, error) {
	if err := actor.Require(auth.StartDeliveries); err != nil {
		return Delivery{}, err
	}
	if s.stopPreparation(ctx, id) {
		return s.Get(ctx, id)
	}
	return s.move(ctx, actor, id, "stop", Stopped, Scheduled, Sending, Paused, Retrying)
}

// move is a Start deliveries user's transition from one of from to to.
func (s *Service) move(ctx context.Context, actor auth.Principal, id int64, action string, to State, from ...State) (Delivery, error) {
	if err := actor.Require(auth.StartDeliveries); err != nil {
		return Delivery{}, err
	}
	var out Delivery
	err := s.db.InTx(ctx, func(tx *sql.Tx) error {
		d, err := s.lock(ctx, tx, id)
		if err != nil {
			return err
		}
		ok := false
		for _, f := range from {
			ok = ok || d.State == f
		}
		if !ok {
			names := make([]string, len(from))
			for i, f := range from {
				names[i] = string(f)
			}
			return problem.Conflictf("invalid_transition", "delivery %d is %s; only a delivery that is %s can %s", id, d.State, strings.Join(names, ", "), action)
		}
		if err := transition(ctx, tx, s.clock.Now(), actor.Actor(), id, d.State, to, action, ""); err != nil {
			return err
		}
		out, err = get(ctx, tx, id, "")
		return err
	})
	return out, err
}

// DueScheduled moves every scheduled delivery whose contact date is at or before now to
// sending, as the system, and returns their ids. The scheduler calls it on its clock's ticks.
func (s *Service) DueScheduled(ctx context.Context, now time.Time) ([]int64, error) {
	rows, err := s.db.Read.QueryContext(ctx, `SELECT id FROM deliveries WHERE state = $1 AND contact_at <= $2 ORDER BY contact_at, id`, Scheduled, now.UnixMilli())
	if err != nil {
		return nil, fmt.Errorf("find due deliveries: %w", err)
	}
	var ids []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return nil, fmt.Errorf("find due deliveries: %w", err)
		}
		ids = append(ids, id)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("find due deliveries: %w", err)
	}
	moved := []int64{}
	for _, id := range ids {
		err := s.db.InTx(ctx, func(tx *sql.Tx) error {
			return transition(ctx, tx, now, audit.System, id, Scheduled, Sending, "start", "contact date reached")
		})
		if p, ok := problem.As(err); ok && p.Code == "state_changed" {
			continue // stopped or edited meanwhile
		}
		if err != nil {
			return moved, err
		}
		s.log.Info("scheduled delivery starts", "delivery", id)
		moved = append(moved, id)
	}
	return moved, nil
}
