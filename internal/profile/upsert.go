package profile

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/heraldhq/herald/internal/store"
)

// An upsert batch: inputs resolved against the stored profiles and against each other, then
// written in one transaction. Single API writes are batches of one; imports are batches of
// thousands. Resolution happens inside the transaction that writes, so what it decided is
// still true when it is written.

// pending is one input line of a batch.
type pending struct {
	line int
	n    normalized
}

// outcome is what a batch did with each input, in input order.
type outcome int

const (
	outCreated outcome = iota + 1
	outUpdated
	outUnchanged
	outRejected
)

// slot is a profile a batch touches: stored before (id set) or new in this batch.
type slot struct {
	p     Profile
	isNew bool
	dirty bool
	// attrsJSON is p.Attributes encoded, while it is known; "" means encode when writing.
	attrsJSON string
	// readUpdated is the stored profile's updated_at when it was read: writing it back
	// requires it unchanged (see errChangedMeanwhile).
	readUpdated int64
}

type batchResult struct {
	outcomes []outcome
	errs     []error    // per input, for outRejected
	slots    []*slot    // per input, the profile it resolved to (nil when rejected)
	inserted []*slot    // new profiles, in order
	updated  []*slot    // changed stored profiles
	written  time.Time  // the transaction's time
	conflict []conflict // matching conflicts, for the caller's messages
}

type conflict struct {
	index int
	field string
	msg   string
}

// lookupChunk bounds the IN lists of the lookup queries.
const lookupChunk = 5000

// resolve decides, for each input, which profile it writes and how.
// It locks nothing: a batch locking thousands of rows in the order it meets them could deadlock
// with another, so what it read is checked when it is written (errChangedMeanwhile).
func resolve(ctx context.Context, eng store.Engine, tx *sql.Tx, batch []pending, now time.Time) (*batchResult, error) {
	var keys, exts []string
	for _, b := range batch {
		if b.n.emailKey != "" {
			keys = append(keys, b.n.emailKey)
		}
		if b.n.extID != nil && *b.n.extID != "" {
			exts = append(exts, *b.n.extID)
		}
	}
	byKey := map[string]*slot{}
	byExt := map[string]*slot{}
	byID := map[int64]*slot{}
	load := func(col string, vals []string) error {
		for start := 0; start < len(vals); start += lookupChunk {
			chunk := vals[start:min(start+lookupChunk, len(vals))]
			q, args := inQuery(eng, `SELECT `+profileColumns+` FROM profiles WHERE `+col+` IN `, chunk)
			rows, err := tx.QueryContext(ctx, q, args...)
			if err != nil {
				return fmt.Errorf("look up profiles: %w", err)
			}
			for rows.Next() {
				p, err := scanProfile(rows)
				if err != nil {
					rows.Close()
					return fmt.Errorf("look up profiles: %w", err)
				}
				if byID[p.ID] == nil {
					byID[p.ID] = &slot{p: p, readUpdated: storedMillis(p.UpdatedAt)}
				}
				s := byID[p.ID]
				if p.emailKey != "" {
					byKey[p.emailKey] = s
				}
				if p.ExternalID != "" {
					byExt[p.ExternalID] = s
				}
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return fmt.Errorf("look up profiles: %w", err)
			}
		}
		return nil
	}
	if err := load("email_key", keys); err != nil {
		return nil, err
	}
	if err := load("external_id", exts); err != nil {
		return nil, err
	}

	res := &batchResult{outcomes: make([]outcome, len(batch)), errs: make([]error, len(batch)), slots: make([]*slot, len(batch)), written: now}
	for i, b := range batch {
		ext := ""
		if b.n.extID != nil {
			ext = *b.n.extID
		}
		var target *slot
		if ext != "" {
			target = byExt[ext]
		}
		if b.n.emailKey != "" {
			other := byKey[b.n.emailKey]
			switch {
			case target != nil && other != nil && other != target:
				res.reject(i, "email", fmt.Errorf("the email %s already belongs to another profile (id %d); the profile with external id %q cannot take it", *b.n.email, other.p.ID, ext))
				continue
			case target == nil && other != nil && ext != "" && other.p.ExternalID != "" && other.p.ExternalID != ext:
				res.reject(i, "external_id", fmt.Errorf("the email %s belongs to the profile with external id %q, not %q", *b.n.email, other.p.ExternalID, ext))
				continue
			case target == nil:
				target = other
			}
		}
		if target == nil {
			if !b.n.matchable {
				res.reject(i, "email", fmt.Errorf("a new profile needs an email address or an external id"))
				continue
			}
			p, _ := b.n.apply(Profile{CreatedAt: now, UpdatedAt: now})
			s := &slot{p: p, isNew: true, attrsJSON: b.n.attrsJSON}
			if s.attrsJSON == "" && len(p.Attributes) == 0 {
				s.attrsJSON = "{}"
			}
			res.inserted = append(res.inserted, s)
			res.outcomes[i], res.slots[i] = outCreated, s
			index(byKey, byExt, s)
			continue
		}
		merged, changed := b.n.apply(target.p)
		if !changed {
			res.outcomes[i], res.slots[i] = outUnchanged, target
			continue
		}
		if merged.emailKey != target.p.emailKey && merged.emailKey != "" {
			if o := byKey[merged.emailKey]; o != nil && o != target {
				res.reject(i, "email", fmt.Errorf("the email %s already belongs to another profile (id %d)", merged.Email, o.p.ID))
				continue
			}
			if taken, err := emailTaken(ctx, tx, merged.emailKey, target.p.ID); err != nil {
				return nil, err
			} else if taken {
				res.reject(i, "email", fmt.Errorf("the email %s already belongs to another profile", merged.Email))
				continue
			}
		}
		if merged.ExternalID != target.p.ExternalID && merged.ExternalID != "" {
			if o := byExt[merged.ExternalID]; o != nil && o != target {
				res.reject(i, "external_id", fmt.Errorf("the external id %q already belongs to another profile (id %d)", merged.ExternalID, o.p.ID))
				continue
			}
		}
		merged.UpdatedAt = nextUpdated(now, target.readUpdated)
		target.p, target.attrsJSON = merged, ""
		if !target.isNew && !target.dirty {
			target.dirty = true
			res.updated = append(res.updated, target)
		}
		index(byKey, byExt, target)
		res.outcomes[i], res.slots[i] = outUpdated, target
	}
	return res, nil
}

func (r *batchResult) reject(i int, field string, err error) {
	r.outcomes[i], r.errs[i] = outRejected, err
	r.conflict = append(r.conflict, conflict{index: i, field: field, msg: err.Error()})
}

func index(byKey, byExt map[string]*slot, s *slot) {
	if s.p.emailKey != "" {
		byKey[s.p.emailKey] = s
	}
	if s.p.ExternalID != "" {
		byExt[s.p.ExternalID] = s
	}
}

func emailTaken(ctx context.Context, tx *sql.Tx, key string, except int64) (bool, error) {
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM profiles WHERE email_key = $1 AND id <> $2`, key, except).Scan(&n); err != nil {
		return false, fmt.Errorf("check email: %w", err)
	}
	return n > 0, nil
}

// inQuery completes prefix (ending in "IN ") with the list vals: on SQLite one JSON array
// parameter expanded by json_each (see jsonInsert for why), on PostgreSQL one text[] parameter.
func inQuery(eng store.Engine, prefix string, vals []string) (string, []any) {
	if eng == store.SQLite {
		buf := []byte{'['}
		for i, v := range vals {
			if i > 0 {
				buf = append(buf, ',')
			}
			buf = appendJSONString(buf, v)
		}
		return prefix + `(SELECT value FROM json_each($1))`, []any{string(append(buf, ']'))}
	}
	return prefix + `(SELECT unnest($1::text[]))`, []any{vals}
}

// insertColumns are written for a new profile, in slotValues' order.
var insertColumns = []string{"email", "email_key", "email_domain", "phone", "push_tokens", "time_zone", "locale",
	"external_id", "attributes", "opt_out_email", "opt_out_sms", "opt_out_push", "created_at", "updated_at"}

// slotValues returns the values of insertColumns for a slot's profile, reusing its encoded
// attributes when it has them.
func slotValues(s *slot) []any {
	p := &s.p
	attrs := s.attrsJSON
	if attrs == "" {
		attrs = jsonText(p.Attributes)
	}
	tokens := "[]"
	if len(p.PushTokens) > 0 {
		tokens = jsonText(p.PushTokens)
	}
	return []any{nullable(p.Email), nullable(p.emailKey), nullable(p.EmailDomain), nullable(p.Phone), tokens,
		nullable(p.TimeZone), nullable(p.Locale), nullable(p.ExternalID), attrs,
		p.OptOutEmail, p.OptOutSMS, p.OptOutPush, p.CreatedAt.UnixMilli(), p.UpdatedAt.UnixMilli()}
}

// write stores a resolved batch: new profiles (with their ids filled in when wantIDs) and
// changed ones.
func write(ctx context.Context, db *store.DB, conn *sql.Conn, tx *sql.Tx, r *batchResult, wantIDs bool) error {
	if len(r.inserted) > 0 {
		var err error
		switch {
		case wantIDs:
			err = insertReturning(ctx, tx, r.inserted)
		case db.Engine == store.Postgres:
			err = copyInsert(ctx, conn, r.inserted)
		default:
			err = jsonInsert(ctx, tx, r.inserted)
		}
		if err != nil {
			return err
		}
	}
	if len(r.updated) > 0 {
		stmt, err := tx.PrepareContext(ctx, `UPDATE profiles SET email = $1, email_key = $2, email_domain = $3, phone = $4,
			push_tokens = $5, time_zone = $6, locale = $7, external_id = $8, attributes = $9, opt_out_email = $10,
			opt_out_sms = $11, opt_out_push = $12, updated_at = $13 WHERE id = $14 AND updated_at = $15`)
		if err != nil {
			return fmt.Errorf("update profiles: %w", err)
		}
		defer stmt.Close()
		for _, s := range r.updated {
			v := slotValues(s)
			res, err := stmt.ExecContext(ctx, append(append(v[:12:12], v[13]), s.p.ID, s.readUpdated)...)
			if err != nil {
				return fmt.Errorf("update profile %d: %w", s.p.ID, err)
			}
			if n, err := res.RowsAffected(); err != nil || n != 1 {
				return fmt.Errorf("update profile %d: %w", s.p.ID, cmp.Or(err, errChangedMeanwhile))
			}
		}
	}
	return nil
}

// errCreatedMeanwhile says that another transaction created a profile with the same email or
// external id after this one looked them up: on PostgreSQL, where a transaction's lookups do
// not hold back other writers (SQLite's writes take turns). Trying again finds that profile.
var errCreatedMeanwhile = errors.New("a profile with this email or external id was created at the same time")

// errChangedMeanwhile says that a profile this transaction read was changed by another before
// this one wrote it back (PostgreSQL): writing the merged profile would undo that change, an
// opt-out for one. A profile is written back only if its updated_at is still the one read;
// trying again reads the change and merges with it.
var errChangedMeanwhile = errors.New("a profile was changed by another request at the same time")

// nextUpdated is the updated_at a write of a profile stores over read (the stored value in
// Unix milliseconds, 0 for a new profile): now, or one millisecond after read when now is not
// later (two writes within one millisecond, or a clock that went back). So every write moves
// updated_at, and the write-back's check that it is still the one read (errChangedMeanwhile)
// sees every change, not only those made in another millisecond. The tracking writer's opt-out
// and Erase move it the same way, in SQL.
func nextUpdated(now time.Time, read int64) time.Time {
	if read != 0 && now.UnixMilli() <= read {
		return time.UnixMilli(read + 1).UTC()
	}
	return now
}

// storedMillis is t as the database stores it, 0 for the zero time (see clock.FromMillis).
func storedMillis(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

// raced reports whether err is one of the two races above, which trying the transaction again
// resolves.
func raced(err error) bool {
	return errors.Is(err, errCreatedMeanwhile) || errors.Is(err, errChangedMeanwhile)
}

// retryRaced runs a resolve-and-write transaction, and again, three times in all, while it
// meets a race (raced); it returns the last error.
func retryRaced(tx func() error) error {
	var err error
	for range 3 {
		if err = tx(); !raced(err) {
			return err
		}
	}
	return err
}

func insertReturning(ctx context.Context, tx *sql.Tx, slots []*slot) error {
	q := `INSERT INTO profiles (` + strings.Join(insertColumns, ", ") + `) VALUES (` + placeholders(0, len(insertColumns)) + `) RETURNING id`
	for _, s := range slots {
		if err := tx.QueryRowContext(ctx, q, slotValues(s)...).Scan(&s.p.ID); err != nil {
			if store.IsUniqueViolation(err) {
				return fmt.Errorf("%w: %w", errCreatedMeanwhile, err)
			}
			return fmt.Errorf("insert profile: %w", err)
		}
		s.isNew = false
	}
	return nil
}

// jsonInsertRows is how many profiles one SQLite INSERT carries.
const jsonInsertRows = 1000

// jsonInsert is SQLite's bulk insert: each chunk of profiles goes as ONE JSON array parameter
// that json_each expands inside SQLite. Binding one parameter per chunk instead of 14 per row
// avoids the driver's per-parameter costs (a linear search to match each parameter, and a C
// string allocated and freed for each text value), which dominate a row-per-bind insert.
func jsonInsert(ctx context.Context, tx *sql.Tx, slots []*slot) error {
	cols := make([]string, len(insertColumns))
	for i := range insertColumns {
		cols[i] = "value->>" + strconv.Itoa(i)
	}
	stmt, err := tx.PrepareContext(ctx, `INSERT INTO profiles (`+strings.Join(insertColumns, ", ")+`) SELECT `+
		strings.Join(cols, ", ")+` FROM json_each(?)`)
	if err != nil {
		return fmt.Errorf("insert profiles: %w", err)
	}
	defer stmt.Close()
	buf := make([]byte, 0, 256*jsonInsertRows)
	for start := 0; start < len(slots); start += jsonInsertRows {
		buf = append(buf[:0], '[')
		for i, s := range slots[start:min(start+jsonInsertRows, len(slots))] {
			if i > 0 {
				buf = append(buf, ',')
			}
			buf = appendJSONRow(buf, slotValues(s))
		}
		buf = append(buf, ']')
		if _, err := stmt.ExecContext(ctx, string(buf)); err != nil {
			return fmt.Errorf("insert profiles: %w", err)
		}
	}
	return nil
}

// appendJSONRow appends vals (strings, nil, bools, int64s) as a JSON array.
func appendJSONRow(buf []byte, vals []any) []byte {
	buf = append(buf, '[')
	for i, v := range vals {
		if i > 0 {
			buf = append(buf, ',')
		}
		switch x := v.(type) {
		case nil:
			buf = append(buf, "null"...)
		case string:
			buf = appendJSONString(buf, x)
		case bool:
			buf = strconv.AppendBool(buf, x)
		case int64:
			buf = strconv.AppendInt(buf, x, 10)
		default:
			panic(fmt.Sprintf("profile: appendJSONRow: unexpected %T", v))
		}
	}
	return append(buf, ']')
}

// appendJSONString appends s as a JSON string; s is valid UTF-8 (imports check it).
func appendJSONString(buf []byte, s string) []byte {
	const hex = "0123456789abcdef"
	buf = append(buf, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		buf = append(buf, s[start:i]...)
		switch c {
		case '"', '\\':
			buf = append(buf, '\\', c)
		case '\n':
			buf = append(buf, '\\', 'n')
		case '\t':
			buf = append(buf, '\\', 't')
		case '\r':
			buf = append(buf, '\\', 'r')
		default:
			buf = append(buf, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		}
		start = i + 1
	}
	buf = append(buf, s[start:]...)
	return append(buf, '"')
}

func placeholders(from, n int) string {
	var b strings.Builder
	for i := 1; i <= n; i++ {
		if i > 1 {
			b.WriteByte(',')
		}
		b.WriteString("$" + strconv.Itoa(from+i))
	}
	return b.String()
}

// copyInsert writes new profiles with PostgreSQL's COPY, on the connection whose transaction
// is open, so the rows commit or roll back with it.
func copyInsert(ctx context.Context, conn *sql.Conn, slots []*slot) error {
	return conn.Raw(func(dc any) error {
		pc := dc.(*stdlib.Conn).Conn()
		rows := make([][]any, len(slots))
		for i, s := range slots {
			rows[i] = slotValues(s)
		}
		_, err := pc.CopyFrom(ctx, pgx.Identifier{"profiles"}, insertColumns, pgx.CopyFromRows(rows))
		if store.IsUniqueViolation(err) {
			return fmt.Errorf("copy profiles: %w: %w", errCreatedMeanwhile, err)
		}
		if err != nil {
			return fmt.Errorf("copy profiles: %w", err)
		}
		return nil
	})
}

// inBatchTx runs fn in a transaction on a dedicated connection, which COPY needs.
func inBatchTx(ctx context.Context, db *store.DB, fn func(conn *sql.Conn, tx *sql.Tx) error) error {
	conn, err := db.Write.Conn(ctx)
	if err != nil {
		return fmt.Errorf("get a connection: %w", err)
	}
	defer conn.Close()
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin transaction: %w", err)
	}
	if err := fn(conn, tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}
