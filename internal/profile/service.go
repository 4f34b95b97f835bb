package profile

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/heraldhq/herald/internal/audit"
	"github.com/heraldhq/herald/internal/problem"
)

// invalid turns field errors into one Invalid problem that lists them all.
func invalid(errs []FieldError) error {
	msgs := make([]string, len(errs))
	for i, e := range errs {
		msgs[i] = e.Field + ": " + e.Message
	}
	return &problem.Error{Kind: problem.Invalid, Code: "invalid", Field: errs[0].Field,
		Message: strings.Join(msgs, "; "), Details: errs}
}

// Upsert creates a profile or updates the one with the same external id (when given) or
// email. It reports whether the profile was created. Upserts of one new address at the same
// time (a form sent twice) make one profile: one creates it, and the others, on PostgreSQL
// refused by its unique keys, try again and update it (retryRaced).
func (s *Service) Upsert(ctx context.Context, actor audit.Actor, in Input) (Profile, bool, error) {
	n, errs := normalize(in)
	if len(errs) > 0 {
		return Profile{}, false, invalid(errs)
	}
	if !n.matchable {
		return Profile{}, false, problem.Invalidf("email", "give an email address or an external id to create or find the profile")
	}
	var out Profile
	var created bool
	err := retryRaced(func() error {
		return inBatchTx(ctx, s.db, func(conn *sql.Conn, tx *sql.Tx) error {
			br, err := resolve(ctx, s.db.Engine, tx, []pending{{n: n}}, s.clock.Now())
			if err != nil {
				return err
			}
			if br.outcomes[0] == outRejected {
				c := br.conflict[0]
				return &problem.Error{Kind: problem.Conflict, Code: "profile_conflict", Field: c.field, Message: c.msg}
			}
			var before *Profile
			if sl := br.slots[0]; !sl.isNew {
				b, err := get(ctx, tx, sl.p.ID)
				if err != nil {
					return err
				}
				before = &b
			}
			if err := write(ctx, s.db, conn, tx, br, true); err != nil {
				return err
			}
			out, created = br.slots[0].p, br.outcomes[0] == outCreated
			if br.outcomes[0] == outUnchanged {
				return nil
			}
			action := "profile.update"
			if created {
				action = "profile.create"
			}
			return audit.Record(ctx, tx, s.clock.Now(), actor, action, "profile", out.ID, before, out)
		})
	})
	if raced(err) {
		return Profile{}, false, &problem.Error{Kind: problem.Conflict, Code: "profile_conflict",
			Message: "the profile was created or changed by another request at the same time, three times; try again"}
	}
	return out, created, err
}

// Update changes the profile with the given id.
func (s *Service) Update(ctx context.Context, actor audit.Actor, id int64, in Input) (Profile, error) {
	n, errs := normalize(in)
	if len(errs) > 0 {
		return Profile{}, invalid(errs)
	}
	var out Profile
	err := inBatchTx(ctx, s.db, func(conn *sql.Conn, tx *sql.Tx) error {
		before, err := getForUpdate(ctx, s.db.Engine, tx, id)
		if err != nil {
			return err
		}
		if before.Erased {
			return problem.Conflictf("profile_erased", "profile %d was erased; it cannot be changed", id)
		}
		merged, changed := n.apply(before)
		if !changed {
			out = before
			return nil
		}
		if merged.Email == "" && merged.ExternalID == "" {
			return problem.Invalidf("email", "a profile needs an email address or an external id")
		}
		if merged.emailKey != before.emailKey && merged.emailKey != "" {
			if taken, err := emailTaken(ctx, tx, merged.emailKey, id); err != nil {
				return err
			} else if taken {
				return &problem.Error{Kind: problem.Conflict, Code: "profile_conflict", Field: "email", Message: fmt.Sprintf("the email %s already belongs to another profile", merged.Email)}
			}
		}
		if merged.ExternalID != before.ExternalID && merged.ExternalID != "" {
			var n int
			if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM profiles WHERE external_id = $1 AND id <> $2`, merged.ExternalID, id).Scan(&n); err != nil {
				return fmt.Errorf("check external id: %w", err)
			} else if n > 0 {
				return &problem.Error{Kind: problem.Conflict, Code: "profile_conflict", Field: "external_id", Message: fmt.Sprintf("the external id %q already belongs to another profile", merged.ExternalID)}
			}
		}
		read := storedMillis(before.UpdatedAt)
		merged.UpdatedAt = nextUpdated(s.clock.Now(), read)
		br := &batchResult{updated: []*slot{{p: merged, readUpdated: read}}}
		if err := write(ctx, s.db, conn, tx, br, true); err != nil {
			return err
		}
		out = merged
		return audit.Record(ctx, tx, s.clock.Now(), actor, "profile.update", "profile", id, before, merged)
	})
	return out, err
}

// Erase removes the personal data of the profile with the given id: its addresses, external
// id, attributes and tokens, and its audience memberships. The row stays, marked erased, so
// that counts which include it (sending logs, delivery figures) stay right; it no longer
// appears in lists or audiences and cannot be matched again.
func (s *Service) Erase(ctx context.Context, actor audit.Actor, id int64) error {
	return s.db.InTx(ctx, func(tx *sql.Tx) error {
		before, err := getForUpdate(ctx, s.db.Engine, tx, id)
		if err != nil {
			return err
		}
		if before.Erased {
			return nil
		}
		now := s.clock.Now().UnixMilli()
		if _, err := tx.ExecContext(ctx, `UPDATE profiles SET email = NULL, email_key = NULL, email_domain = NULL, phone = NULL,
			push_tokens = '[]', time_zone = NULL, locale = NULL, external_id = NULL, attributes = '{}',
			updated_at = CASE WHEN updated_at < $1 THEN $1 ELSE updated_at + 1 END, erased_at = $1 WHERE id = $2`, now, id); err != nil {
			return fmt.Errorf("erase profile %d: %w", id, err)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM audience_members WHERE profile_id = $1`, id); err != nil {
			return fmt.Errorf("erase profile %d: %w", id, err)
		}
		for _, stmt := range erasers {
			if _, err := tx.ExecContext(ctx, stmt, id); err != nil {
				return fmt.Errorf("erase profile %d: %w", id, err)
			}
		}
		// The audit entry names the profile but keeps none of its personal data.
		return audit.Record(ctx, tx, s.clock.Now(), actor, "profile.erase", "profile", id, nil, map[string]any{"erased": true})
	})
}

// erasers are statements, each taking the profile id as $1, that remove a profile's personal
// data from the tables of other domains (sending and tracking logs, as they are added).
var erasers []string

// RegisterEraser adds a statement that Erase runs in its transaction, with the profile id as
// $1. Domain packages call it from init for the tables they own that copy personal data.
func RegisterEraser(stmt string) { erasers = append(erasers, stmt) }

// Page is one page of a listing.
type Page struct {
	Profiles []Profile `json:"profiles"`
	// NextAfter is the cursor for the next page; zero on the last page.
	NextAfter int64 `json:"next_after,omitempty"`
}

// Where is a compiled filter: a SQL condition over the profiles table with its arguments,
// numbered from $1.
type Where struct {
	SQL  string
	Args []any
}

// List returns profiles in id order after the cursor, matching where (when not empty).
// Erased profiles are not listed.
func (s *Service) List(ctx context.Context, where Where, after int64, limit int) (Page, error) {
	if limit <= 0 || limit > 1000 {
		limit = 100
	}
	args := append([]any{}, where.Args...)
	q := `SELECT ` + profileColumns + ` FROM profiles WHERE erased_at IS NULL`
	if where.SQL != "" {
		q += ` AND (` + where.SQL + `)`
	}
	args = append(args, after, limit+1)
	q += ` AND id > $` + strconv.Itoa(len(args)-1) + ` ORDER BY id LIMIT $` + strconv.Itoa(len(args))
	rows, err := s.db.Read.QueryContext(ctx, q, args...)
	if err != nil {
		return Page{}, fmt.Errorf("list profiles: %w", err)
	}
	defer rows.Close()
	page := Page{Profiles: []Profile{}}
	for rows.Next() {
		p, err := scanProfile(rows)
		if err != nil {
			return Page{}, fmt.Errorf("list profiles: %w", err)
		}
		page.Profiles = append(page.Profiles, p)
	}
	if err := rows.Err(); err != nil {
		return Page{}, fmt.Errorf("list profiles: %w", err)
	}
	if len(page.Profiles) > limit {
		page.Profiles = page.Profiles[:limit]
		page.NextAfter = page.Profiles[limit-1].ID
	}
	return page, nil
}

// Export is everything Herald holds about one profile.
type Export struct {
	Profile    Profile          `json:"profile"`
	Audiences  []map[string]any `json:"audiences"`
	Quarantine []map[string]any `json:"quarantine"`
	ExportedAt time.Time        `json:"exported_at"`
}

// ExportData gathers everything Herald holds about the profile with the given id, for a
// person's right of access.
func (s *Service) ExportData(ctx context.Context, actor audit.Actor, id int64) (Export, error) {
	p, err := s.Get(ctx, id)
	if err != nil {
		return Export{}, err
	}
	ex := Export{Profile: p, Audiences: []map[string]any{}, Quarantine: []map[string]any{}, ExportedAt: s.clock.Now().UTC()}
	rows, err := s.db.Read.QueryContext(ctx, `SELECT a.id, a.name FROM audiences a JOIN audience_members m ON m.audience_id = a.id WHERE m.profile_id = $1 ORDER BY a.id`, id)
	if err != nil {
		return Export{}, fmt.Errorf("export profile %d: %w", id, err)
	}
	for rows.Next() {
		var aid int64
		var name string
		if err := rows.Scan(&aid, &name); err != nil {
			rows.Close()
			return Export{}, fmt.Errorf("export profile %d: %w", id, err)
		}
		ex.Audiences = append(ex.Audiences, map[string]any{"id": aid, "name": name})
	}
	rows.Close()
	addrs := map[string]string{}
	if p.emailKey != "" {
		addrs["email"] = p.emailKey
	}
	if p.Phone != "" {
		addrs["sms"] = p.Phone
	}
	for ch, addr := range addrs {
		var status, reason string
		var count int
		err := s.db.Read.QueryRowContext(ctx, `SELECT status, error_count, last_reason FROM quarantine WHERE channel = $1 AND address = $2`, ch, addr).Scan(&status, &count, &reason)
		if err == sql.ErrNoRows {
			continue
		}
		if err != nil {
			return Export{}, fmt.Errorf("export profile %d: %w", id, err)
		}
		ex.Quarantine = append(ex.Quarantine, map[string]any{"channel": ch, "address": addr, "status": status, "error_count": count, "last_reason": reason})
	}
	err = s.db.InTx(ctx, func(tx *sql.Tx) error {
		return audit.Record(ctx, tx, s.clock.Now(), actor, "profile.export", "profile", id, nil, nil)
	})
	return ex, err
}
