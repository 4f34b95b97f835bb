package quarantine

import (
	"cmp"
	"context"
	"database/sql"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/heraldhq/herald/internal/audit"
	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/problem"
)

// Change is an administrator's edit of one address.
type Change struct {
	Channel Channel `json:"channel"`
	Address string  `json:"address"`
	Status  Status  `json:"status"`
	Reason  string  `json:"reason"`
}

// ChangeError says why one change of a SetBulk was refused.
type ChangeError struct {
	// Index is the change's position in the list, from 0.
	Index   int    `json:"index"`
	Field   string `json:"field,omitempty"`
	Message string `json:"message"`
}

// check validates c and returns it with its channel, status and address normalized.
func (c Change) check() (Change, error) {
	ch, err := ParseChannel(string(c.Channel))
	if err != nil {
		return c, err
	}
	addr, err := NormalizeAddress(ch, c.Address)
	if err != nil {
		return c, err
	}
	st, err := ParseStatus(string(c.Status))
	if err != nil {
		return c, err
	}
	reason := strings.TrimSpace(c.Reason)
	if n := utf8.RuneCountInString(reason); n > MaxReasonLength {
		return c, problem.Invalidf("reason", "the reason is %d characters long; the limit is %d", n, MaxReasonLength)
	}
	return Change{Channel: ch, Address: addr, Status: st, Reason: reason}, nil
}

// Set is an administrator's edit of one address: it moves it to status whatever it was,
// and writes the history and the audit log in the same transaction. Moving to valid clears
// the error count; moving to erroneous starts it again at one error counted now (so Cleanup
// returns the address to valid ErroneousExpiry later); quarantine and denylist keep it.
func (s *Service) Set(ctx context.Context, actor audit.Actor, channel Channel, address string, status Status, reason string) (Entry, error) {
	c, err := Change{Channel: channel, Address: address, Status: status, Reason: reason}.check()
	if err != nil {
		return Entry{}, err
	}
	var e Entry
	err = s.db.InTx(ctx, func(tx *sql.Tx) error {
		e, err = set(ctx, tx, actor, c, s.clock.Now(), "quarantine.set")
		return err
	})
	return e, err
}

// SetBulk applies up to MaxBulkChanges administrator's edits, all or nothing: when any
// change is invalid (or names an address another change already names) it returns an
// Invalid problem whose Details is a []ChangeError listing every bad change, and writes
// nothing; else it applies them all, as Set would, in one transaction, and returns how
// many it applied.
func (s *Service) SetBulk(ctx context.Context, actor audit.Actor, changes []Change) (int, error) {
	if len(changes) == 0 {
		return 0, problem.Invalidf("changes", "the list of changes is empty")
	}
	if len(changes) > MaxBulkChanges {
		return 0, problem.Invalidf("changes", "%d changes is over the limit of %d per request; split the list", len(changes), MaxBulkChanges)
	}
	valid := make([]Change, len(changes))
	seen := make(map[[2]string]int, len(changes))
	var bad []ChangeError
	for i, c := range changes {
		v, err := c.check()
		if err != nil {
			ce := ChangeError{Index: i, Message: err.Error()}
			if p, ok := problem.As(err); ok {
				ce.Field = p.Field
			}
			bad = append(bad, ce)
			continue
		}
		key := [2]string{string(v.Channel), v.Address}
		if j, dup := seen[key]; dup {
			bad = append(bad, ChangeError{Index: i, Field: "address",
				Message: fmt.Sprintf("%s address %q is already changed by change %d; give each address once", v.Channel, v.Address, j)})
			continue
		}
		seen[key] = i
		valid[i] = v
	}
	if len(bad) > 0 {
		return 0, &problem.Error{Kind: problem.Invalid, Code: "invalid_changes", Field: "changes", Details: bad,
			Message: fmt.Sprintf("%d of the %d changes are invalid, so none was applied; first: change %d: %s",
				len(bad), len(changes), bad[0].Index, bad[0].Message)}
	}
	// A stable locking order: two bulk edits on PostgreSQL cannot deadlock.
	slices.SortFunc(valid, func(a, b Change) int {
		return cmp.Or(cmp.Compare(a.Channel, b.Channel), cmp.Compare(a.Address, b.Address))
	})
	now := s.clock.Now()
	err := s.db.InTx(ctx, func(tx *sql.Tx) error {
		for _, c := range valid {
			if _, err := set(ctx, tx, actor, c, now, "quarantine.bulk_set"); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return len(valid), nil
}

// set applies one checked change inside tx, with its history row and audit entry.
func set(ctx context.Context, tx *sql.Tx, actor audit.Actor, c Change, at time.Time, action string) (Entry, error) {
	now := clock.Millis(at)
	old, err := lock(ctx, tx, c.Channel, c.Address, now)
	if err != nil {
		return Entry{}, err
	}
	name := actor.Name
	if name == "" {
		name = SystemActor
	}
	reason := c.Reason
	if reason == "" {
		reason = "set by " + name
	}
	r := old
	r.status, r.reason, r.updated = c.Status, reason, now
	switch c.Status {
	case StatusValid:
		r.count, r.first = 0, 0
	case StatusErroneous:
		r.count, r.first, r.last = 1, now, now
	}
	if err := write(ctx, tx, c.Channel, c.Address, old.status, r, reason, name); err != nil {
		return Entry{}, err
	}
	before, after := old.entry(c.Channel, c.Address), r.entry(c.Channel, c.Address)
	if err := audit.Record(ctx, tx, at, actor, action, "quarantine", string(c.Channel)+":"+c.Address, before, after); err != nil {
		return Entry{}, err
	}
	return after, nil
}
