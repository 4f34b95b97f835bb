package delivery

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/heraldhq/herald/internal/audit"
	"github.com/heraldhq/herald/internal/auth"
	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/content"
	"github.com/heraldhq/herald/internal/problem"
	"github.com/heraldhq/herald/internal/profile"
	"github.com/heraldhq/herald/internal/store"
)

func init() {
	// The sending log copies the address; erasing a profile removes it there too.
	profile.RegisterEraser(`UPDATE sending_log SET address = '' WHERE profile_id = $1`)
}

// Service manages deliveries.
type Service struct {
	db    *store.DB
	clock clock.Clock
	log   *slog.Logger

	// ProofSender, when set, is given the rendered messages of each proof after it is recorded.
	ProofSender ProofSender

	mu        sync.Mutex
	preparing map[int64]*running // preparations running in this process
	// afterPhase, when set (by tests), is called after each phase of a preparation.
	afterPhase func(id int64, phase string)
}

// NewService returns a Service over db.
func NewService(db *store.DB, clk clock.Clock, log *slog.Logger) *Service {
	return &Service{db: db, clock: clk, log: log, preparing: map[int64]*running{}}
}

// Input is a write to a delivery. Nil fields are left as they are (PATCH semantics); Content,
// Schedule, Typology and Approvals replace the stored value whole.
type Input struct {
	Name            *string           `json:"name"`
	Channel         *Channel          `json:"channel"`
	AudienceID      *int64            `json:"audience_id"`
	Content         *content.Content  `json:"content"`
	Schedule        *Schedule         `json:"schedule"`
	Typology        *Typology         `json:"typology"`
	Approvals       *ApprovalSettings `json:"approvals"`
	ValiditySeconds *int64            `json:"validity_seconds"`
}

// Validity bounds.
const (
	minValidity = time.Minute
	maxValidity = 30 * 24 * time.Hour
)

// apply checks in and writes it over d, reporting whether anything other than the name changed.
func (in Input) apply(ctx context.Context, q querier, d *Delivery) (definitionChanged bool, err error) {
	if in.Name != nil {
		name := strings.TrimSpace(*in.Name)
		if name == "" {
			return false, problem.Invalidf("name", "the delivery needs a name")
		}
		if utf8.RuneCountInString(name) > MaxNameLength {
			return false, problem.Invalidf("name", "the name is longer than %d characters", MaxNameLength)
		}
		d.Name = name
	}
	nameOnly := *d
	if in.Channel != nil {
		switch *in.Channel {
		case Email, SMS, Push:
			d.Channel = *in.Channel
		default:
			return false, problem.Invalidf("channel", "unknown channel %q; the channels are email, sms and push", *in.Channel)
		}
	}
	if in.AudienceID != nil {
		if *in.AudienceID != 0 {
			var n int
			if err := q.QueryRowContext(ctx, `SELECT count(*) FROM audiences WHERE id = $1`, *in.AudienceID).Scan(&n); err != nil {
				return false, fmt.Errorf("check audience %d: %w", *in.AudienceID, err)
			}
			if n == 0 {
				return false, problem.Invalidf("audience_id", "there is no audience with id %d", *in.AudienceID)
			}
		}
		d.AudienceID = *in.AudienceID
	}
	if in.Content != nil {
		d.Content = *in.Content
	}
	if in.Schedule != nil {
		s := *in.Schedule
		if s.TimeZone != "" {
			if _, err := time.LoadLocation(s.TimeZone); err != nil {
				return false, problem.Invalidf("schedule.time_zone", "unknown time zone %q; use an IANA name such as Europe/Paris", s.TimeZone)
			}
		}
		if s.ContactDate != nil && s.ContactDate.IsZero() {
			s.ContactDate = nil
		}
		if s.ContactDate != nil {
			t := s.ContactDate.UTC().Truncate(time.Millisecond)
			s.ContactDate = &t
		}
		d.Schedule = s
	}
	if in.Typology != nil {
		d.Typology = *in.Typology
	}
	if in.Approvals != nil {
		d.Approvals = *in.Approvals
	}
	if in.ValiditySeconds != nil {
		v := time.Duration(*in.ValiditySeconds) * time.Second
		if v < minValidity || v > maxValidity {
			return false, problem.Invalidf("validity_seconds", "the validity must be between %d and %d seconds (1 minute to 30 days)", int64(minValidity/time.Second), int64(maxValidity/time.Second))
		}
		d.ValiditySeconds = *in.ValiditySeconds
	}
	a, _ := json.Marshal(nameOnly)
	b, _ := json.Marshal(d)
	return string(a) != string(b), nil
}

// querier reads: a *sql.DB or *sql.Tx.
type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// Create makes a draft delivery. It needs the role Prepare deliveries.
func (s *Service) Create(ctx context.Context, actor auth.Principal, in Input) (Delivery, error) {
	if err := actor.Require(auth.PrepareDeliveries); err != nil {
		return Delivery{}, err
	}
	if in.Name == nil {
		return Delivery{}, problem.Invalidf("name", "the delivery needs a name")
	}
	if in.Channel == nil {
		return Delivery{}, problem.Invalidf("channel", "choose the delivery's channel: email, sms or push")
	}
	now := s.clock.Now()
	d := Delivery{State: Draft, ValiditySeconds: int64(DefaultValidity / time.Second), CreatedBy: actor.UserID,
		UpdatedBy: actor.UserID, CreatedAt: now.UTC().Truncate(time.Millisecond), UpdatedAt: now.UTC().Truncate(time.Millisecond),
		Typology: Typology{}, PrepLog: emptyLog()}
	err := s.db.InTx(ctx, func(tx *sql.Tx) error {
		if _, err := in.apply(ctx, tx, &d); err != nil {
			return err
		}
		v, err := d.values()
		if err != nil {
			return err
		}
		if err := tx.QueryRowContext(ctx, `INSERT INTO deliveries (name, channel, audience_id, content, schedule, contact_at,
			state, typology, validity_seconds, approvals_required, prep_log, created_by, updated_by, created_at, updated_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) RETURNING id`,
			v.name, v.channel, v.audience, v.content, v.schedule, v.contactAt, d.State, v.typology, d.ValiditySeconds,
			v.approvals, v.prepLog, nullID(actor.UserID), nullID(actor.UserID), now.UnixMilli(), now.UnixMilli()).Scan(&d.ID); err != nil {
			return fmt.Errorf("create delivery: %w", err)
		}
		return audit.Record(ctx, tx, now, actor.Actor(), "delivery.create", "delivery", d.ID, nil, d)
	})
	if err != nil {
		return Delivery{}, err
	}
	s.log.Info("delivery created", "delivery", d.ID, "name", d.Name, "by", actor.Login)
	return d, nil
}

// Get returns the delivery with the given id.
func (s *Service) Get(ctx context.Context, id int64) (Delivery, error) {
	return get(ctx, s.db.Read, id, "")
}

// Page is one page of a listing of deliveries, newest first.
type Page struct {
	Deliveries []Delivery `json:"deliveries"`
	// NextBefore is the cursor for the next page; zero on the last page.
	NextBefore int64 `json:"next_before,omitempty"`
}

// ListQuery selects deliveries. Zero fields do not filter.
type ListQuery struct {
	State State
	// Before pages backwards: only deliveries with a smaller id.
	Before int64
	// Limit is the page size, 1 to MaxListLimit (default 100).
	Limit int
}

// List returns deliveries, newest first.
func (s *Service) List(ctx context.Context, q ListQuery) (Page, error) {
	if q.Limit <= 0 || q.Limit > MaxListLimit {
		q.Limit = 100
	}
	where, args := "1=1", []any{}
	if q.State != "" {
		if !validState(q.State) {
			return Page{}, problem.Invalidf("state", "unknown state %q", q.State)
		}
		args = append(args, q.State)
		where += " AND state = $" + strconv.Itoa(len(args))
	}
	if q.Before > 0 {
		args = append(args, q.Before)
		where += " AND id < $" + strconv.Itoa(len(args))
	}
	args = append(args, q.Limit+1)
	rows, err := s.db.Read.QueryContext(ctx, `SELECT `+columns+` FROM deliveries WHERE `+where+
		` ORDER BY id DESC LIMIT $`+strconv.Itoa(len(args)), args...)
	if err != nil {
		return Page{}, fmt.Errorf("list deliveries: %w", err)
	}
	defer rows.Close()
	page := Page{Deliveries: []Delivery{}}
	for rows.Next() {
		d, err := scan(rows)
		if err != nil {
			return Page{}, fmt.Errorf("list deliveries: %w", err)
		}
		page.Deliveries = append(page.Deliveries, d)
	}
	if err := rows.Err(); err != nil {
		return Page{}, fmt.Errorf("list deliveries: %w", err)
	}
	if len(page.Deliveries) > q.Limit {
		page.Deliveries = page.Deliveries[:q.Limit]
		page.NextBefore = page.Deliveries[q.Limit-1].ID
	}
	return page, nil
}

func validState(s State) bool {
	for _, x := range States {
		if x == s {
			return true
		}
	}
	return false
}

// Update changes a delivery (PATCH semantics, see Input). It needs the role Prepare
// deliveries. A change to anything but the name of a delivery that was prepared (ready,
// approved, prepare_failed or scheduled) returns it to draft: approvals are voided and it must
// be prepared again.
func (s *Service) Update(ctx context.Context, actor auth.Principal, id int64, in Input) (Delivery, error) {
	if err := actor.Require(auth.PrepareDeliveries); err != nil {
		return Delivery{}, err
	}
	var out Delivery
	err := s.db.InTx(ctx, func(tx *sql.Tx) error {
		d, err := s.lock(ctx, tx, id)
		if err != nil {
			return err
		}
		if !d.State.Editable() {
			return notEditable(d)
		}
		before := d
		changed, err := in.apply(ctx, tx, &d)
		if err != nil {
			return err
		}
		now := s.clock.Now()
		d.UpdatedAt, d.UpdatedBy = now.UTC().Truncate(time.Millisecond), actor.UserID
		v, err := d.values()
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE deliveries SET name = $1, channel = $2, audience_id = $3, content = $4,
			schedule = $5, contact_at = $6, typology = $7, validity_seconds = $8, approvals_required = $9, updated_by = $10,
			updated_at = $11 WHERE id = $12`, v.name, v.channel, v.audience, v.content, v.schedule, v.contactAt, v.typology,
			d.ValiditySeconds, v.approvals, nullID(actor.UserID), now.UnixMilli(), id); err != nil {
			return fmt.Errorf("update delivery %d: %w", id, err)
		}
		if err := audit.Record(ctx, tx, now, actor.Actor(), "delivery.update", "delivery", id, before, d); err != nil {
			return err
		}
		if changed && d.State != Draft {
			if err := s.toDraft(ctx, tx, now, actor.Actor(), &d, "edit", "edited after preparation; prepare it again"); err != nil {
				return err
			}
		}
		out = d
		return nil
	})
	return out, err
}

func notEditable(d Delivery) error {
	if d.State == Preparing {
		return problem.Conflictf("delivery_preparing", "delivery %d is being prepared; wait for the preparation to end, or stop it, before editing", d.ID)
	}
	return problem.Conflictf("delivery_not_editable", "delivery %d is %s; a delivery can be edited only before it is sent", d.ID, d.State)
}

// toDraft returns a prepared delivery to draft in tx: it clears the prepared hash (voiding
// approvals), the figures and the confirmation, and deletes what its preparation wrote.
func (s *Service) toDraft(ctx context.Context, tx *sql.Tx, now time.Time, actor audit.Actor, d *Delivery, action, reason string) error {
	if err := transition(ctx, tx, now, actor, d.ID, d.State, Draft, action, reason,
		"prepared_hash = NULL", "prepared_at = NULL", "targeted = 0", "to_deliver = 0", "excluded = 0",
		"validity_until = NULL", "confirmed_by = NULL", "confirmed_at = NULL"); err != nil {
		return err
	}
	if err := deletePrepared(ctx, tx, d.ID); err != nil {
		return err
	}
	d.State, d.PreparedHash, d.PreparedAt, d.Counts = Draft, "", nil, Counts{}
	d.ValidityUntil, d.ConfirmedAt, d.ConfirmedBy = nil, nil, 0
	return nil
}

// deletePrepared removes the sending and exclusion log rows of a preparation.
func deletePrepared(ctx context.Context, tx *sql.Tx, id int64) error {
	for _, t := range []string{"sending_log", "exclusion_log"} {
		if _, err := tx.ExecContext(ctx, `DELETE FROM `+t+` WHERE delivery_id = $1`, id); err != nil {
			return fmt.Errorf("clear the %s of delivery %d: %w", t, id, err)
		}
	}
	return nil
}

// Delete removes a delivery that was never confirmed (draft, prepare_failed, ready or
// approved), with its logs. It needs the role Prepare deliveries.
func (s *Service) Delete(ctx context.Context, actor auth.Principal, id int64) error {
	if err := actor.Require(auth.PrepareDeliveries); err != nil {
		return err
	}
	return s.db.InTx(ctx, func(tx *sql.Tx) error {
		d, err := s.lock(ctx, tx, id)
		if err != nil {
			return err
		}
		switch d.State {
		case Draft, PrepareFailed, Ready, Approved:
		default:
			return problem.Conflictf("delivery_not_deletable", "delivery %d is %s; only deliveries that were never confirmed (draft, prepare_failed, ready, approved) can be deleted", id, d.State)
		}
		if err := deletePrepared(ctx, tx, id); err != nil {
			return err
		}
		for _, t := range []string{"delivery_approvals", "proofs"} {
			if _, err := tx.ExecContext(ctx, `DELETE FROM `+t+` WHERE delivery_id = $1`, id); err != nil {
				return fmt.Errorf("delete delivery %d: %w", id, err)
			}
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM deliveries WHERE id = $1`, id); err != nil {
			return fmt.Errorf("delete delivery %d: %w", id, err)
		}
		return audit.Record(ctx, tx, s.clock.Now(), actor.Actor(), "delivery.delete", "delivery", id, d, nil)
	})
}

// columns are read by scan, in its order.
const columns = `id, name, channel, audience_id, content, schedule, contact_at, state, typology, validity_seconds,
	validity_until, approvals_required, prepared_hash, prepared_at, targeted, to_deliver, excluded, prep_log,
	confirmed_by, confirmed_at, created_by, updated_by, created_at, updated_at`

func scan(row interface{ Scan(...any) error }) (Delivery, error) {
	var d Delivery
	var audience, contactAt, validUntil, preparedAt, confirmedBy, confirmedAt, createdBy, updatedBy sql.NullInt64
	var hash sql.NullString
	var cont, sched, typo, appr, plog string
	var created, updated int64
	if err := row.Scan(&d.ID, &d.Name, &d.Channel, &audience, &cont, &sched, &contactAt, &d.State, &typo,
		&d.ValiditySeconds, &validUntil, &appr, &hash, &preparedAt, &d.Counts.Targeted, &d.Counts.ToDeliver,
		&d.Counts.Excluded, &plog, &confirmedBy, &confirmedAt, &createdBy, &updatedBy, &created, &updated); err != nil {
		return Delivery{}, err
	}
	d.AudienceID, d.PreparedHash = audience.Int64, hash.String
	d.ContactAt, d.ValidityUntil, d.PreparedAt, d.ConfirmedAt = optTime(contactAt), optTime(validUntil), optTime(preparedAt), optTime(confirmedAt)
	d.ConfirmedBy, d.CreatedBy, d.UpdatedBy = confirmedBy.Int64, createdBy.Int64, updatedBy.Int64
	d.CreatedAt, d.UpdatedAt = clock.FromMillis(created), clock.FromMillis(updated)
	var ss storedSchedule
	for _, j := range []struct {
		src string
		dst any
	}{{cont, &d.Content}, {sched, &ss}, {typo, &d.Typology}, {appr, &d.Approvals}, {plog, &d.PrepLog}} {
		if err := json.Unmarshal([]byte(j.src), j.dst); err != nil {
			return Delivery{}, fmt.Errorf("delivery %d: decode %T: %w", d.ID, j.dst, err)
		}
	}
	d.Schedule.TimeZone = ss.TimeZone
	if ss.ContactDate != nil {
		t := clock.FromMillis(*ss.ContactDate)
		d.Schedule.ContactDate = &t
	}
	d.PrepLog.normalize()
	return d, nil
}

func optTime(v sql.NullInt64) *time.Time {
	if !v.Valid {
		return nil
	}
	t := clock.FromMillis(v.Int64)
	return &t
}

func nullID(id int64) any {
	if id == 0 {
		return nil
	}
	return id
}

// stored is a delivery's columns in their stored form.
type stored struct {
	name, channel                                   string
	audience, contactAt                             any
	content, schedule, typology, approvals, prepLog string
}

func (d *Delivery) values() (stored, error) {
	v := stored{name: d.Name, channel: string(d.Channel), audience: nullID(d.AudienceID)}
	ss := storedSchedule{TimeZone: d.Schedule.TimeZone}
	if d.Schedule.ContactDate != nil {
		ms := d.Schedule.ContactDate.UnixMilli()
		ss.ContactDate, v.contactAt = &ms, ms
	}
	for _, j := range []struct {
		src any
		dst *string
	}{{d.Content, &v.content}, {ss, &v.schedule}, {d.Typology, &v.typology}, {d.Approvals, &v.approvals}, {d.PrepLog, &v.prepLog}} {
		b, err := json.Marshal(j.src)
		if err != nil {
			return stored{}, fmt.Errorf("encode delivery: %w", err)
		}
		*j.dst = string(b)
	}
	return v, nil
}

func emptyLog() PrepLog {
	l := PrepLog{}
	l.normalize()
	return l
}

// normalize gives nil lists their empty form, so the JSON shows [] rather than null.
func (l *PrepLog) normalize() {
	if l.Warnings == nil {
		l.Warnings = []LogEntry{}
	}
	if l.Errors == nil {
		l.Errors = []LogEntry{}
	}
	if l.Exclusions == nil {
		l.Exclusions = []ExclusionCount{}
	}
}

// get reads delivery id through q; suffix is appended to the query (a lock clause).
func get(ctx context.Context, q querier, id int64, suffix string) (Delivery, error) {
	d, err := scan(q.QueryRowContext(ctx, `SELECT `+columns+` FROM deliveries WHERE id = $1`+suffix, id))
	if errors.Is(err, sql.ErrNoRows) {
		return Delivery{}, problem.NotFoundf("there is no delivery with id %d", id)
	}
	if err != nil {
		return Delivery{}, fmt.Errorf("read delivery %d: %w", id, err)
	}
	return d, nil
}

// lock reads delivery id in tx for a change (store.ForUpdate).
func (s *Service) lock(ctx context.Context, tx *sql.Tx, id int64) (Delivery, error) {
	return get(ctx, tx, id, store.ForUpdate(s.db.Engine))
}
