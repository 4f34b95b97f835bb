package delivery

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/heraldhq/herald/internal/audience/filter"
	"github.com/heraldhq/herald/internal/audit"
	"github.com/heraldhq/herald/internal/auth"
	"github.com/heraldhq/herald/internal/problem"
	"github.com/heraldhq/herald/internal/store"
)

// RuleKind is a typology rule's phase. Preparation applies filtering rules, then fatigue
// rules, then control rules; within a phase, by PhaseOrder then id.
type RuleKind string

// The kinds of typology rule.
const (
	// FilteringRule excludes the targeted profiles its filter matches.
	FilteringRule RuleKind = "filtering"
	// FatigueRule excludes profiles that already have Max messages in the period around the
	// contact date.
	FatigueRule RuleKind = "fatigue"
	// ControlRule checks the message itself.
	ControlRule RuleKind = "control"
)

// Severity says whether a rule's finding blocks the send.
type Severity string

// The severities.
const (
	Warning Severity = "warning"
	Error   Severity = "error"
)

// The checks of control rules.
const (
	CheckSubjectEmpty      = "subject_empty"
	CheckContentEmpty      = "content_empty"
	CheckNoUnsubscribeLink = "no_unsubscribe_link"
	CheckMalformedURLs     = "malformed_urls"
	CheckSizeLimit         = "size_limit"
	CheckProofSize         = "proof_size"
)

var checks = []string{CheckSubjectEmpty, CheckContentEmpty, CheckNoUnsubscribeLink, CheckMalformedURLs, CheckSizeLimit, CheckProofSize}

// RuleSettings are a rule's parameters; which apply depends on its kind.
type RuleSettings struct {
	// Filter (filtering) is a filter over profiles in Herald's filter language; matching
	// profiles are excluded.
	Filter string `json:"filter,omitempty"`
	// Channel (filtering, fatigue) limits the rule to deliveries of one channel, and a fatigue
	// rule to counting messages of that channel; empty means every channel.
	Channel Channel `json:"channel,omitempty"`
	// Max and PeriodHours (fatigue): at most Max messages per profile within PeriodHours
	// before or after the contact date, counting this one.
	Max         int `json:"max,omitempty"`
	PeriodHours int `json:"period_hours,omitempty"`
	// Check (control) is one of the CheckXxx names.
	Check string `json:"check,omitempty"`
	// MaxBytes (size_limit) and MaxRecipients (proof_size) are the check's limit.
	MaxBytes      int `json:"max_bytes,omitempty"`
	MaxRecipients int `json:"max_recipients,omitempty"`
}

// Rule is a typology rule, shared by every delivery that does not switch it off.
type Rule struct {
	ID         int64        `json:"id"`
	Name       string       `json:"name"`
	Kind       RuleKind     `json:"kind"`
	PhaseOrder int          `json:"phase_order"`
	Settings   RuleSettings `json:"settings"`
	Severity   Severity     `json:"severity"`
	Enabled    bool         `json:"enabled"`
	CreatedAt  time.Time    `json:"created_at"`
	UpdatedAt  time.Time    `json:"updated_at"`
}

// check reports what is wrong with r, in words for the person who wrote it.
func (r *Rule) check() error {
	r.Name = strings.TrimSpace(r.Name)
	if r.Name == "" || len(r.Name) > MaxNameLength {
		return problem.Invalidf("name", "a typology rule needs a name of 1 to %d characters", MaxNameLength)
	}
	if r.Severity == "" {
		r.Severity = Warning
	}
	if r.Severity != Warning && r.Severity != Error {
		return problem.Invalidf("severity", "unknown severity %q; it is warning or error", r.Severity)
	}
	switch r.Settings.Channel {
	case "", Email, SMS, Push:
	default:
		return problem.Invalidf("settings.channel", "unknown channel %q; the channels are email, sms and push", r.Settings.Channel)
	}
	st := r.Settings
	switch r.Kind {
	case FilteringRule:
		if strings.TrimSpace(st.Filter) == "" {
			return problem.Invalidf("settings.filter", "a filtering rule needs a filter, such as attributes.vip = false")
		}
		if _, err := filter.Parse(st.Filter); err != nil {
			return problem.Invalidf("settings.filter", "the rule's filter is not valid: %v", err)
		}
	case FatigueRule:
		if st.Max < 1 || st.PeriodHours < 1 {
			return problem.Invalidf("settings", "a fatigue rule needs max (at least 1 message) and period_hours (at least 1 hour)")
		}
	case ControlRule:
		if !slices.Contains(checks, st.Check) {
			return problem.Invalidf("settings.check", "unknown check %q; the checks are %s", st.Check, strings.Join(checks, ", "))
		}
		if st.Check == CheckSizeLimit && st.MaxBytes < 1 {
			return problem.Invalidf("settings.max_bytes", "a size_limit check needs max_bytes")
		}
		if st.Check == CheckProofSize && (st.MaxRecipients < 1 || st.MaxRecipients > MaxProofAddresses) {
			return problem.Invalidf("settings.max_recipients", "a proof_size check needs max_recipients, 1 to %d", MaxProofAddresses)
		}
	default:
		return problem.Invalidf("kind", "unknown rule kind %q; it is filtering, fatigue or control", r.Kind)
	}
	return nil
}

var kindOrder = map[RuleKind]int{FilteringRule: 0, FatigueRule: 1, ControlRule: 2}

const ruleColumns = `id, name, kind, phase_order, settings, severity, enabled, created_at, updated_at`

// Rules returns every typology rule in the order preparation applies them.
func (s *Service) Rules(ctx context.Context) ([]Rule, error) {
	return rules(ctx, s.db.Read)
}

func rules(ctx context.Context, q querier) ([]Rule, error) {
	rows, err := q.QueryContext(ctx, `SELECT `+ruleColumns+` FROM typology_rules`)
	if err != nil {
		return nil, fmt.Errorf("read typology rules: %w", err)
	}
	defer rows.Close()
	out := []Rule{}
	for rows.Next() {
		r, err := scanRule(rows)
		if err != nil {
			return nil, fmt.Errorf("read typology rules: %w", err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read typology rules: %w", err)
	}
	slices.SortStableFunc(out, func(a, b Rule) int {
		if c := kindOrder[a.Kind] - kindOrder[b.Kind]; c != 0 {
			return c
		}
		if c := a.PhaseOrder - b.PhaseOrder; c != 0 {
			return c
		}
		return int(a.ID - b.ID)
	})
	return out, nil
}

func scanRule(row interface{ Scan(...any) error }) (Rule, error) {
	var r Rule
	var settings string
	var created, updated int64
	if err := row.Scan(&r.ID, &r.Name, &r.Kind, &r.PhaseOrder, &settings, &r.Severity, &r.Enabled, &created, &updated); err != nil {
		return Rule{}, err
	}
	if err := json.Unmarshal([]byte(settings), &r.Settings); err != nil {
		return Rule{}, fmt.Errorf("rule %d settings: %w", r.ID, err)
	}
	r.CreatedAt, r.UpdatedAt = time.UnixMilli(created).UTC(), time.UnixMilli(updated).UTC()
	return r, nil
}

// CreateRule adds a typology rule. It needs the role Administration.
func (s *Service) CreateRule(ctx context.Context, actor auth.Principal, r Rule) (Rule, error) {
	if err := actor.Require(auth.Administration); err != nil {
		return Rule{}, err
	}
	if err := r.check(); err != nil {
		return Rule{}, err
	}
	now := s.clock.Now()
	r.CreatedAt, r.UpdatedAt = now.UTC().Truncate(time.Millisecond), now.UTC().Truncate(time.Millisecond)
	settings, _ := json.Marshal(r.Settings)
	err := s.db.InTx(ctx, func(tx *sql.Tx) error {
		err := tx.QueryRowContext(ctx, `INSERT INTO typology_rules (name, kind, phase_order, settings, severity, enabled, created_at, updated_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $7) RETURNING id`, r.Name, r.Kind, r.PhaseOrder, string(settings), r.Severity, r.Enabled, now.UnixMilli()).Scan(&r.ID)
		if err != nil {
			if store.IsUniqueViolation(err) {
				return problem.Conflictf("rule_exists", "a typology rule named %q already exists", r.Name)
			}
			return fmt.Errorf("create typology rule: %w", err)
		}
		if err := audit.Record(ctx, tx, now, actor.Actor(), "typology_rule.create", "typology_rule", r.ID, nil, r); err != nil {
			return err
		}
		return s.rulesChanged(ctx, tx, now, actor)
	})
	return r, err
}

// UpdateRule replaces a typology rule (its name, kind, order, settings, severity and whether
// it is enabled). It needs the role Administration. Prepared deliveries that are not yet
// confirmed return to draft, since their preparation applied the old rule.
func (s *Service) UpdateRule(ctx context.Context, actor auth.Principal, id int64, r Rule) (Rule, error) {
	if err := actor.Require(auth.Administration); err != nil {
		return Rule{}, err
	}
	if err := r.check(); err != nil {
		return Rule{}, err
	}
	now := s.clock.Now()
	settings, _ := json.Marshal(r.Settings)
	err := s.db.InTx(ctx, func(tx *sql.Tx) error {
		before, err := scanRule(tx.QueryRowContext(ctx, `SELECT `+ruleColumns+` FROM typology_rules WHERE id = $1`, id))
		if errors.Is(err, sql.ErrNoRows) {
			return problem.NotFoundf("there is no typology rule with id %d", id)
		} else if err != nil {
			return fmt.Errorf("read typology rule %d: %w", id, err)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE typology_rules SET name = $1, kind = $2, phase_order = $3, settings = $4,
			severity = $5, enabled = $6, updated_at = $7 WHERE id = $8`, r.Name, r.Kind, r.PhaseOrder, string(settings),
			r.Severity, r.Enabled, now.UnixMilli(), id); err != nil {
			if store.IsUniqueViolation(err) {
				return problem.Conflictf("rule_exists", "a typology rule named %q already exists", r.Name)
			}
			return fmt.Errorf("update typology rule %d: %w", id, err)
		}
		r.ID, r.CreatedAt, r.UpdatedAt = id, before.CreatedAt, now.UTC().Truncate(time.Millisecond)
		if err := audit.Record(ctx, tx, now, actor.Actor(), "typology_rule.update", "typology_rule", id, before, r); err != nil {
			return err
		}
		return s.rulesChanged(ctx, tx, now, actor)
	})
	return r, err
}

// rulesChanged returns every prepared, unconfirmed delivery to draft.
func (s *Service) rulesChanged(ctx context.Context, tx *sql.Tx, now time.Time, actor auth.Principal) error {
	rows, err := tx.QueryContext(ctx, `SELECT `+columns+` FROM deliveries WHERE state IN ($1, $2, $3)`, Ready, Approved, PrepareFailed)
	if err != nil {
		return fmt.Errorf("find prepared deliveries: %w", err)
	}
	var ds []Delivery
	for rows.Next() {
		d, err := scan(rows)
		if err != nil {
			rows.Close()
			return fmt.Errorf("find prepared deliveries: %w", err)
		}
		ds = append(ds, d)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("find prepared deliveries: %w", err)
	}
	for i := range ds {
		if err := s.toDraft(ctx, tx, now, actor.Actor(), &ds[i], "edit", "the typology rules changed; prepare it again"); err != nil {
			return err
		}
	}
	return nil
}
