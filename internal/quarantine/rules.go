package quarantine

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/problem"
)

// RecordHard applies a hard bounce at time at, inside tx: the address goes to quarantine at
// once, counting the error. An address on the denylist, or already in quarantine, is left
// as it is. It returns the entry as it now stands.
func (s *Service) RecordHard(ctx context.Context, tx *sql.Tx, channel Channel, address, reason string, at time.Time) (Entry, error) {
	return s.apply(ctx, tx, channel, address, at, func(old row, now int64) (row, string, bool) {
		if old.status.Blocks() {
			return old, "", false
		}
		r := old
		r.status, r.count, r.last, r.reason = StatusQuarantine, old.count+1, now, cut(reason)
		if r.first == 0 {
			r.first = now
		}
		return r, "hard bounce: " + r.reason, true
	})
}

// RecordSoft applies a soft bounce at time at, inside tx. A valid address becomes erroneous
// with one error. An erroneous one counts another error only when at least
// SoftErrorInterval has passed since its last counted error, and goes to quarantine at
// QuarantineAfter errors; an earlier soft error changes nothing. mailboxFull marks the
// error as a full mailbox, which Cleanup forgives after MailboxFullExpiry instead of
// ErroneousExpiry. Quarantine and denylist are left as they are.
func (s *Service) RecordSoft(ctx context.Context, tx *sql.Tx, channel Channel, address, reason string, mailboxFull bool, at time.Time) (Entry, error) {
	reason = cut(reason)
	if mailboxFull && !strings.HasPrefix(reason, MailboxFullPrefix) {
		reason = cut(MailboxFullPrefix + reason)
	}
	return s.apply(ctx, tx, channel, address, at, func(old row, now int64) (row, string, bool) {
		r := old
		switch old.status {
		case StatusQuarantine, StatusDenylist:
			return old, "", false
		case StatusValid:
			r.status, r.count, r.first = StatusErroneous, 1, now
		case StatusErroneous:
			if old.last != 0 && now-old.last < SoftErrorInterval.Milliseconds() {
				return old, "", false
			}
			r.count = old.count + 1
			if r.first == 0 {
				r.first = now
			}
			if r.count >= QuarantineAfter {
				r.status = StatusQuarantine
			}
		}
		r.last, r.reason = now, reason
		return r, fmt.Sprintf("soft bounce %d of %d: %s", r.count, QuarantineAfter, reason), true
	})
}

// Denylist puts an address on the denylist at time at, inside tx: a spam complaint, an SMS
// STOP, an invalid push token. The error count is kept. It reports whether the address was
// not on the denylist yet, decided on the address's locked row, so that of two callers at once
// exactly one learns that it put it there.
func (s *Service) Denylist(ctx context.Context, tx *sql.Tx, channel Channel, address, reason string, at time.Time) (Entry, bool, error) {
	added := false
	e, err := s.apply(ctx, tx, channel, address, at, func(old row, now int64) (row, string, bool) {
		if old.status == StatusDenylist {
			return old, "", false
		}
		r := old
		r.status, r.reason = StatusDenylist, cut(reason)
		added = true
		return r, r.reason, true
	})
	return e, added && err == nil, err
}

// apply runs one rule on an address's locked row and writes the result with a history row
// (actor SystemActor) when the rule changed it.
func (s *Service) apply(ctx context.Context, tx *sql.Tx, channel Channel, address string, at time.Time,
	rule func(old row, now int64) (r row, reason string, changed bool)) (Entry, error) {
	addr, err := NormalizeAddress(channel, address)
	if err != nil {
		return Entry{}, err
	}
	now := clock.Millis(at)
	old, err := lock(ctx, tx, channel, addr, now)
	if err != nil {
		return Entry{}, err
	}
	r, reason, changed := rule(old, now)
	if !changed {
		return old.entry(channel, addr), nil
	}
	r.updated = now
	if err := write(ctx, tx, channel, addr, old.status, r, reason, SystemActor); err != nil {
		return Entry{}, err
	}
	return r.entry(channel, addr), nil
}

// RecordSuccess applies a successful send at time at, inside tx: an erroneous address
// returns to valid with its count reset. It reports whether the address changed. The
// common case, an address with no errors, costs one UPDATE that matches no row.
func (s *Service) RecordSuccess(ctx context.Context, tx *sql.Tx, channel Channel, address string, at time.Time) (bool, error) {
	addr, err := NormalizeAddress(channel, address)
	if err != nil {
		return false, err
	}
	now := clock.Millis(at)
	res, err := tx.ExecContext(ctx, `UPDATE quarantine SET status = 'valid', error_count = 0, first_error_at = NULL, updated_at = $3
		WHERE channel = $1 AND address = $2 AND status = 'erroneous'`, channel, addr, now)
	if err != nil {
		return false, fmt.Errorf("record a success for %s %s: %w", channel, addr, err)
	}
	if n, err := res.RowsAffected(); err != nil || n == 0 {
		return false, err
	}
	return true, addHistory(ctx, tx, channel, addr, now, StatusErroneous, StatusValid, 0, "successful send", SystemActor)
}

// cleanupBatch is how many entries Cleanup returns to valid per transaction, so that the
// SQLite writer is never held long.
const cleanupBatch = 1000

// Cleanup returns to valid the erroneous entries whose last counted error is over
// ErroneousExpiry old at time at, or over MailboxFullExpiry old when it was a full mailbox.
// It is meant to run nightly, and returns how many entries it changed. Each batch of
// entries commits on its own, so a cancelled Cleanup keeps the batches it finished.
func (s *Service) Cleanup(ctx context.Context, at time.Time) (int, error) {
	now := clock.Millis(at)
	softBefore := now - ErroneousExpiry.Milliseconds()
	fullBefore := now - MailboxFullExpiry.Milliseconds()
	// The conditions are repeated outside the subquery so that, on PostgreSQL, a row changed
	// by a concurrent transaction is checked again in its new state before it is updated.
	const due = `status = 'erroneous' AND (
		(substr(last_reason, 1, $2) = $3 AND COALESCE(last_error_at, updated_at) < $4) OR
		(substr(last_reason, 1, $2) <> $3 AND COALESCE(last_error_at, updated_at) < $5))`
	sqlText := `UPDATE quarantine SET status = 'valid', error_count = 0, first_error_at = NULL, updated_at = $1
		WHERE ` + due + ` AND (channel, address) IN (SELECT channel, address FROM quarantine WHERE ` + due + ` LIMIT $6)
		RETURNING channel, address, last_reason`
	total := 0
	for {
		n := 0
		err := s.db.InTx(ctx, func(tx *sql.Tx) error {
			changed, err := cleanupRows(ctx, tx, sqlText, now, len(MailboxFullPrefix), MailboxFullPrefix, fullBefore, softBefore, cleanupBatch)
			if err != nil {
				return err
			}
			for _, d := range changed {
				why := fmt.Sprintf("no counted soft error for over %d days", int(ErroneousExpiry.Hours()/24))
				if strings.HasPrefix(d.reason, MailboxFullPrefix) {
					why = fmt.Sprintf("mailbox full over %d days ago", int(MailboxFullExpiry.Hours()/24))
				}
				if err := addHistory(ctx, tx, d.ch, d.addr, now, StatusErroneous, StatusValid, 0, why, SystemActor); err != nil {
					return err
				}
			}
			n = len(changed)
			return nil
		})
		if err != nil {
			return total, err
		}
		total += n
		if n < cleanupBatch {
			break
		}
	}
	if total > 0 {
		s.log.Info("quarantine cleanup returned erroneous addresses to valid", "count", total)
	}
	return total, nil
}

// cleaned is an entry Cleanup returned to valid, with the reason of its last error.
type cleaned struct {
	ch           Channel
	addr, reason string
}

func cleanupRows(ctx context.Context, tx *sql.Tx, sqlText string, args ...any) ([]cleaned, error) {
	rows, err := tx.QueryContext(ctx, sqlText, args...)
	if err != nil {
		return nil, fmt.Errorf("quarantine cleanup: %w", err)
	}
	defer rows.Close()
	var out []cleaned
	for rows.Next() {
		var c cleaned
		if err := rows.Scan(&c.ch, &c.addr, &c.reason); err != nil {
			return nil, fmt.Errorf("quarantine cleanup: %w", err)
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("quarantine cleanup: %w", err)
	}
	return out, nil
}

// Querier is what Blocked reads through: a *sql.DB, *sql.Tx or *sql.Conn.
type Querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// blockedChunk is how many addresses one Blocked query asks about.
const blockedChunk = 500

// Blocked returns, for those of addresses that preparation must exclude (quarantine or
// denylist) on channel, their status, keyed by the address as given. Addresses that are
// valid, erroneous, unknown or not addresses at all are absent. It reads through q, so a
// preparation can ask inside its own transaction.
func (s *Service) Blocked(ctx context.Context, q Querier, channel Channel, addresses []string) (map[string]Status, error) {
	if !slices.Contains(Channels, channel) {
		return nil, problem.Invalidf("channel", "unknown channel %q; the channels are email, sms and push", channel)
	}
	given := make(map[string][]string, len(addresses)) // key → addresses as given
	keys := make([]string, 0, len(addresses))
	for _, a := range addresses {
		k, err := NormalizeAddress(channel, a)
		if err != nil {
			continue
		}
		if _, ok := given[k]; !ok {
			keys = append(keys, k)
		}
		given[k] = append(given[k], a)
	}
	out := map[string]Status{}
	for len(keys) > 0 {
		chunk := keys[:min(blockedChunk, len(keys))]
		keys = keys[len(chunk):]
		args := make([]any, 0, len(chunk)+1)
		args = append(args, channel)
		var b strings.Builder
		b.WriteString(`SELECT address, status FROM quarantine WHERE channel = $1 AND status IN (` + BlockingStatusesSQL + `) AND address IN (`)
		for i, k := range chunk {
			if i > 0 {
				b.WriteString(", ")
			}
			args = append(args, k)
			fmt.Fprintf(&b, "$%d", len(args))
		}
		b.WriteString(")")
		if err := blockedRows(ctx, q, b.String(), args, func(k string, st Status) {
			for _, a := range given[k] {
				out[a] = st
			}
		}); err != nil {
			return nil, fmt.Errorf("check quarantine of %d %s addresses: %w", len(addresses), channel, err)
		}
	}
	return out, nil
}

func blockedRows(ctx context.Context, q Querier, sqlText string, args []any, found func(addr string, st Status)) error {
	rows, err := q.QueryContext(ctx, sqlText, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var k string
		var st Status
		if err := rows.Scan(&k, &st); err != nil {
			return err
		}
		found(k, st)
	}
	return rows.Err()
}

// BlockingStatusesSQL is the SQL list of the statuses preparation excludes, for
// `status IN (` + BlockingStatusesSQL + `)`. Erroneous addresses are not excluded.
const BlockingStatusesSQL = `'quarantine', 'denylist'`

// ExcludeSQL returns an SQL condition, true when the address in addressExpr (a column or
// expression of the caller's query holding the normalized address, such as p.email_key or
// p.phone) is not quarantined or denylisted on channel. addressExpr is pasted into the
// SQL: pass code, never input. It panics on an unknown channel, a programming error.
func ExcludeSQL(channel Channel, addressExpr string) string {
	if !slices.Contains(Channels, channel) {
		panic(fmt.Sprintf("quarantine.ExcludeSQL: unknown channel %q", channel))
	}
	return `NOT EXISTS (SELECT 1 FROM quarantine WHERE quarantine.channel = '` + string(channel) +
		`' AND quarantine.address = ` + addressExpr + ` AND quarantine.status IN (` + BlockingStatusesSQL + `))`
}
