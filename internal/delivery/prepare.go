package delivery

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/heraldhq/herald/internal/audience/filter"
	"github.com/heraldhq/herald/internal/audit"
	"github.com/heraldhq/herald/internal/auth"
	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/content"
	"github.com/heraldhq/herald/internal/problem"
	"github.com/heraldhq/herald/internal/quarantine"
	"github.com/heraldhq/herald/internal/store"
)

// Reason is why preparation excluded a profile, as the exclusion log records it.
type Reason string

// The reasons, in the order preparation applies the rules that give them.
const (
	ReasonAddressMissing Reason = "address_missing"
	ReasonAddressInvalid Reason = "address_invalid"
	ReasonQuarantined    Reason = "quarantined"
	ReasonDenylisted     Reason = "denylisted"
	ReasonOptedOut       Reason = "opted_out"
	ReasonFiltered       Reason = "filtering"
	ReasonDuplicate      Reason = "duplicate_address"
	ReasonFatigue        Reason = "fatigue"
)

// The names of the built-in filtering rules, as the exclusion log records them.
const (
	RuleAddressMissing = "Address not specified"
	RuleAddressInvalid = "Invalid address"
	RuleDuplicate      = "Duplicate address"
	RuleQuarantined    = "Quarantined address"
	RuleDenylisted     = "Denylisted address"
	RuleOptedOut       = "Opted out of the channel"
)

// ruleContent and rulePreparation name findings that come from no typology rule.
const (
	ruleContent         = "Content"
	ruleAudience        = "Audience"
	rulePersonalisation = "Personalisation"
	rulePreparation     = "Preparation"
)

// running is a preparation in progress in this process.
type running struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// Prepare prepares a delivery: it computes the target, applies the typology rules, writes
// the exclusion log, renders every recipient once as a check and writes the sending log rows
// as pending. It sends nothing. It needs the role Prepare deliveries.
//
// A preparation that finds errors leaves the delivery in prepare_failed with its log (and
// returns no error); one that finds only warnings leaves it ready. A preparation that is
// stopped (ctx ends, or Stop) writes nothing and leaves the delivery in prepare_failed.
func (s *Service) Prepare(ctx context.Context, actor auth.Principal, id int64) (Delivery, error) {
	if err := actor.Require(auth.PrepareDeliveries); err != nil {
		return Delivery{}, err
	}
	start := s.clock.Now()
	var d Delivery
	err := s.db.InTx(ctx, func(tx *sql.Tx) error {
		var err error
		if d, err = s.lock(ctx, tx, id); err != nil {
			return err
		}
		switch d.State {
		case Draft, PrepareFailed, Ready, Approved:
		case Preparing:
			return problem.Conflictf("delivery_preparing", "delivery %d is already being prepared", id)
		default:
			return problem.Conflictf("already_confirmed", "delivery %d is %s; its send was confirmed, so it cannot be prepared again", id, d.State)
		}
		if err := transition(ctx, tx, start, actor.Actor(), id, d.State, Preparing, "prepare", "",
			"prepared_hash = NULL", "prepared_at = NULL", "targeted = 0", "to_deliver = 0", "excluded = 0"); err != nil {
			return err
		}
		return deletePrepared(ctx, tx, id)
	})
	if err != nil {
		return Delivery{}, err
	}
	d.State = Preparing

	pctx, cancel := context.WithCancel(ctx)
	run := &running{cancel: cancel, done: make(chan struct{})}
	s.mu.Lock()
	s.preparing[id] = run
	s.mu.Unlock()
	defer func() {
		cancel()
		s.mu.Lock()
		delete(s.preparing, id)
		s.mu.Unlock()
		close(run.done)
	}()

	err = s.prepare(pctx, actor, d, start)
	if err == nil {
		return s.Get(ctx, id)
	}
	// Nothing of the preparation was kept; record why it ended.
	msg := "the preparation failed: " + err.Error()
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		msg = "the preparation was stopped before it ended; nothing was written; prepare it again"
	}
	if p, ok := problem.As(err); ok {
		msg = p.Message
	}
	cctx := context.WithoutCancel(ctx)
	ferr := s.db.InTx(cctx, func(tx *sql.Tx) error {
		l := emptyLog()
		l.Errors = append(l.Errors, LogEntry{Rule: rulePreparation, Message: msg})
		b, _ := json.Marshal(l)
		if _, err := tx.ExecContext(cctx, `UPDATE deliveries SET prep_log = $1 WHERE id = $2`, string(b), id); err != nil {
			return fmt.Errorf("record failed preparation of delivery %d: %w", id, err)
		}
		return transition(cctx, tx, s.clock.Now(), actor.Actor(), id, Preparing, PrepareFailed, "prepare_failed", msg)
	})
	if ferr != nil {
		s.log.Error("record failed preparation", "delivery", id, "error", ferr)
	}
	s.log.Warn("preparation failed", "delivery", id, "error", err)
	if _, ok := problem.As(err); ok || errors.Is(err, context.Canceled) {
		if ctx.Err() != nil {
			return Delivery{}, ctx.Err()
		}
		return s.Get(cctx, id)
	}
	return Delivery{}, err
}

// stopPreparation stops a preparation of id running in this process and waits for it to
// end. It reports whether there was one.
func (s *Service) stopPreparation(ctx context.Context, id int64) bool {
	s.mu.Lock()
	run := s.preparing[id]
	s.mu.Unlock()
	if run == nil {
		return false
	}
	run.cancel()
	select {
	case <-run.done:
	case <-ctx.Done():
	}
	return true
}

// FailInterrupted moves deliveries left in preparing by a process that ended mid-preparation
// to prepare_failed; their preparation wrote nothing. Call it at start, before serving, on a
// single node (on several nodes, a preparation may be running elsewhere).
func (s *Service) FailInterrupted(ctx context.Context) (int, error) {
	rows, err := s.db.Read.QueryContext(ctx, `SELECT id FROM deliveries WHERE state = $1`, Preparing)
	if err != nil {
		return 0, fmt.Errorf("find interrupted preparations: %w", err)
	}
	var ids []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return 0, err
		}
		ids = append(ids, id)
	}
	rows.Close()
	n := 0
	for _, id := range ids {
		s.mu.Lock()
		_, live := s.preparing[id]
		s.mu.Unlock()
		if live {
			continue
		}
		err := s.db.InTx(ctx, func(tx *sql.Tx) error {
			return transition(ctx, tx, s.clock.Now(), audit.System, id, Preparing, PrepareFailed, "prepare_failed", "Herald stopped during the preparation; prepare it again")
		})
		if err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// codes numbers the exclusions of one preparation: the working table marks an excluded
// profile with the index of its reason and rule here, an integer that is cheap to write and
// compare, and the logs spell it out at the end.
type codes []ExclusionCount

// add returns the code of a reason and rule.
func (c *codes) add(reason Reason, rule string) int {
	*c = append(*c, ExclusionCount{Reason: reason, Rule: rule})
	return len(*c) - 1
}

// spell returns the SQL expressions giving the reason and the rule of the code column, with
// their arguments numbered from $first.
func (c codes) spell(first int) (reason, rule string, args []any) {
	var rs, ru strings.Builder
	rs.WriteString("CASE code")
	ru.WriteString("CASE code")
	for i, e := range c {
		args = append(args, string(e.Reason), e.Rule)
		fmt.Fprintf(&rs, " WHEN %d THEN $%d", i, first+len(args)-2)
		fmt.Fprintf(&ru, " WHEN %d THEN $%d", i, first+len(args)-1)
	}
	rs.WriteString(" END")
	ru.WriteString(" END")
	return rs.String(), ru.String(), args
}

// prepare runs the preparation of d in one transaction; any error rolls it all back.
func (s *Service) prepare(ctx context.Context, actor auth.Principal, d Delivery, start time.Time) error {
	eng := s.db.Engine
	l := emptyLog()
	l.Phases = map[string]float64{}
	phaseStart := time.Now()
	phase := func(name string) error {
		l.Phases[name] = time.Since(phaseStart).Seconds()
		phaseStart = time.Now()
		if s.afterPhase != nil {
			s.afterPhase(d.ID, name)
		}
		return ctx.Err()
	}
	now := s.clock.Now()
	contact := now
	if d.Schedule.ContactDate != nil {
		contact = *d.Schedule.ContactDate
	}

	return s.db.InTx(ctx, func(tx *sql.Tx) error {
		all, err := rules(ctx, tx)
		if err != nil {
			return err
		}
		var applied []Rule
		for _, r := range all {
			if r.Enabled && !slices.Contains(d.Typology.DisabledRules, r.ID) && (r.Settings.Channel == "" || r.Settings.Channel == d.Channel) {
				applied = append(applied, r)
			}
		}

		// The content: compiled once, then the control rules.
		tpl := s.checkContent(d, applied, &l)
		if err := phase("content"); err != nil {
			return err
		}

		// (1) The target and (2) the built-in and user filtering rules, in one INSERT ... SELECT.
		for _, q := range createPrepTable(eng) {
			if _, err := tx.ExecContext(ctx, q); err != nil {
				return fmt.Errorf("prepare delivery %d: %w", d.ID, err)
			}
		}
		var cs codes
		if err := s.insertTarget(ctx, tx, d, applied, now, &cs, &l); err != nil {
			return err
		}
		if err := phase("target"); err != nil {
			return err
		}
		if err := markDuplicates(ctx, tx, d, &cs); err != nil {
			return err
		}
		if err := phase("duplicates"); err != nil {
			return err
		}

		// Fatigue rules, in order, each on the profiles still targeted.
		for _, r := range applied {
			if r.Kind != FatigueRule {
				continue
			}
			if err := applyFatigue(ctx, tx, d, r, contact, &cs); err != nil {
				return err
			}
		}
		if err := phase("fatigue"); err != nil {
			return err
		}

		// (3) The figures, by reason and rule.
		if err := countTarget(ctx, tx, &d, cs, &l); err != nil {
			return err
		}

		// (4) Every recipient rendered once.
		if tpl != nil && d.Counts.ToDeliver > 0 {
			if err := s.checkPersonalisation(ctx, tx, tpl, &l); err != nil {
				return err
			}
		}
		if err := phase("personalisation"); err != nil {
			return err
		}

		// (5) The logs, in bulk.
		reasonSQL, ruleSQL, spellArgs := cs.spell(2)
		if _, err := tx.ExecContext(ctx, `INSERT INTO exclusion_log (delivery_id, profile_id, reason, rule)
			SELECT $1, profile_id, `+reasonSQL+`, `+ruleSQL+` FROM `+prepTable+` WHERE code IS NOT NULL`, append([]any{d.ID}, spellArgs...)...); err != nil {
			return fmt.Errorf("write the exclusion log of delivery %d: %w", d.ID, err)
		}
		to := Ready
		if len(l.Errors) > 0 {
			to = PrepareFailed
		} else if _, err := tx.ExecContext(ctx, `INSERT INTO sending_log (delivery_id, profile_id, address, status)
			SELECT $1, profile_id, address, 'pending' FROM `+prepTable+` WHERE code IS NULL ORDER BY profile_id`, d.ID); err != nil {
			return fmt.Errorf("write the sending log of delivery %d: %w", d.ID, err)
		}
		if eng == store.SQLite {
			if _, err := tx.ExecContext(ctx, sqliteDropPrepTable); err != nil {
				return fmt.Errorf("prepare delivery %d: %w", d.ID, err)
			}
		}
		if err := phase("write"); err != nil {
			return err
		}

		end := s.clock.Now()
		l.Seconds = end.Sub(start).Seconds()
		hash := ""
		if to == Ready {
			hash = preparedHash(d, applied, l, end)
		}
		b, err := json.Marshal(l)
		if err != nil {
			return fmt.Errorf("encode preparation log: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE deliveries SET prep_log = $1, targeted = $2, to_deliver = $3, excluded = $4,
			prepared_hash = $5, prepared_at = $6 WHERE id = $7`, string(b), d.Counts.Targeted, d.Counts.ToDeliver,
			d.Counts.Excluded, nullString(hash), end.UnixMilli(), d.ID); err != nil {
			return fmt.Errorf("record preparation of delivery %d: %w", d.ID, err)
		}
		reason := fmt.Sprintf("%d targeted, %d to deliver, %d excluded, %d warnings, %d errors",
			d.Counts.Targeted, d.Counts.ToDeliver, d.Counts.Excluded, len(l.Warnings), len(l.Errors))
		if err := transition(ctx, tx, end, actor.Actor(), d.ID, Preparing, to, "prepared", reason); err != nil {
			return err
		}
		s.log.Info("delivery prepared", "delivery", d.ID, "state", to, "targeted", d.Counts.Targeted,
			"to_deliver", d.Counts.ToDeliver, "excluded", d.Counts.Excluded, "seconds", l.Seconds)
		return nil
	})
}

func nullString(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// checkContent compiles the content and applies the control rules, in order. It returns the
// template, or nil when the content does not compile.
func (s *Service) checkContent(d Delivery, applied []Rule, l *PrepLog) *content.Template {
	c := d.Content
	if d.Channel == Email {
		if err := c.Validate(); err != nil {
			for _, e := range splitJoined(err) {
				l.Errors = append(l.Errors, LogEntry{Rule: ruleContent, Message: strings.TrimPrefix(e.Error(), content.ErrInvalid.Error()+": ")})
			}
		}
	}
	tpl, err := content.Compile(c, content.Options{})
	if err != nil {
		for _, e := range splitJoined(err) {
			l.Errors = append(l.Errors, LogEntry{Rule: ruleContent, Message: "the message does not compile: " + e.Error()})
		}
		tpl = nil
	}
	for _, r := range applied {
		if r.Kind != ControlRule {
			continue
		}
		var msg string
		switch r.Settings.Check {
		case CheckSubjectEmpty:
			if d.Channel == Email && strings.TrimSpace(c.Subject) == "" {
				msg = "the subject is empty"
			}
		case CheckContentEmpty:
			if strings.TrimSpace(c.HTML) == "" && strings.TrimSpace(c.Text) == "" {
				msg = "the message has no content: write the HTML, the text, or both"
			}
		case CheckNoUnsubscribeLink:
			if d.Channel == Email && tpl != nil && !tpl.HasUnsubscribeLink() {
				msg = "the message has no unsubscribe link: add a link to {{.unsubscribe_url}}"
			}
		case CheckMalformedURLs:
			if tpl != nil {
				if bad := tpl.MalformedURLs(); len(bad) > 0 {
					if len(bad) > 5 {
						bad = append(bad[:5], fmt.Sprintf("and %d more", len(bad)-5))
					}
					msg = "malformed links: " + strings.Join(bad, ", ")
				}
			}
		case CheckSizeLimit:
			sz := len(c.Subject) + len(c.HTML) + len(c.Text)
			if r.Settings.MaxBytes > 0 && sz > r.Settings.MaxBytes {
				msg = fmt.Sprintf("the message is %d bytes, over the limit of %d", sz, r.Settings.MaxBytes)
			}
		}
		if msg != "" {
			e := LogEntry{Rule: r.Name, Message: msg}
			if r.Severity == Error {
				l.Errors = append(l.Errors, e)
			} else {
				l.Warnings = append(l.Warnings, e)
			}
		}
	}
	return tpl
}

func splitJoined(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// insertTarget fills the working table with the audience's profiles (erased ones never) and,
// for each, the first built-in or user filtering rule that excludes it, in rule order.
func (s *Service) insertTarget(ctx context.Context, tx *sql.Tx, d Delivery, applied []Rule, now time.Time, cs *codes, l *PrepLog) error {
	eng := s.db.Engine
	var args []any
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	if d.AudienceID == 0 {
		return problem.Conflictf("no_audience", "delivery %d has no audience; choose one, then prepare it", d.ID)
	}
	var kind, filterText string
	err := tx.QueryRowContext(ctx, `SELECT kind, filter FROM audiences WHERE id = $1`, d.AudienceID).Scan(&kind, &filterText)
	if errors.Is(err, sql.ErrNoRows) {
		return problem.Conflictf("no_audience", "the audience (id %d) of delivery %d no longer exists; choose another", d.AudienceID, d.ID)
	} else if err != nil {
		return fmt.Errorf("read audience %d: %w", d.AudienceID, err)
	}
	from := "profiles p"
	where := "p.erased_at IS NULL"
	if kind == "list" {
		from += " JOIN audience_members m ON m.profile_id = p.id AND m.audience_id = " + arg(d.AudienceID)
	} else if strings.TrimSpace(filterText) != "" {
		e, err := filter.Parse(filterText)
		if err != nil {
			return problem.Conflictf("audience_invalid", "the filter of audience %d is not valid: %v", d.AudienceID, err)
		}
		w, fargs, err := filter.CompileQualified(e, eng, "p", len(args)+1, now)
		if err != nil {
			return problem.Conflictf("audience_invalid", "the filter of audience %d is not valid: %v", d.AudienceID, err)
		}
		args = append(args, fargs...)
		where += " AND " + w
	}

	addr := addressExpr(d.Channel)
	// One CASE, each condition written once, so that SQLite evaluates each (the quarantine
	// probe above all) at most once per profile.
	var c strings.Builder
	fmt.Fprintf(&c, "CASE WHEN %s IS NULL OR %s = '' THEN %d", addr, addr, cs.add(ReasonAddressMissing, RuleAddressMissing))
	fmt.Fprintf(&c, " WHEN NOT %s THEN %d", validAddressSQL(eng, d.Channel, addr), cs.add(ReasonAddressInvalid, RuleAddressInvalid))
	fmt.Fprintf(&c, " ELSE CASE (SELECT q.status FROM quarantine q WHERE q.channel = '%s' AND q.address = %s AND q.status IN (%s))",
		d.Channel, addr, quarantine.BlockingStatusesSQL)
	fmt.Fprintf(&c, " WHEN 'quarantine' THEN %d WHEN 'denylist' THEN %d", cs.add(ReasonQuarantined, RuleQuarantined), cs.add(ReasonDenylisted, RuleDenylisted))
	fmt.Fprintf(&c, " ELSE CASE WHEN %s THEN %d", optOutColumn(d.Channel), cs.add(ReasonOptedOut, RuleOptedOut))
	for _, r := range applied {
		if r.Kind != FilteringRule {
			continue
		}
		e, err := filter.Parse(r.Settings.Filter)
		if err == nil {
			var w string
			var fargs []any
			w, fargs, err = filter.CompileQualified(e, eng, "p", len(args)+1, now)
			if err == nil {
				args = append(args, fargs...)
				fmt.Fprintf(&c, " WHEN %s THEN %d", w, cs.add(ReasonFiltered, r.Name))
				continue
			}
		}
		l.Errors = append(l.Errors, LogEntry{Rule: r.Name, Message: "the rule's filter is not valid: " + err.Error()})
	}
	c.WriteString(" END END END")
	q := `INSERT INTO ` + prepTable + ` (profile_id, address, code) SELECT p.id, ` + addr + `, ` + c.String() +
		` FROM ` + from + ` WHERE ` + where + ` ORDER BY p.id`
	if _, err := tx.ExecContext(ctx, q, args...); err != nil {
		return fmt.Errorf("compute the target of delivery %d: %w", d.ID, err)
	}
	return nil
}

// markDuplicates excludes, among the profiles still targeted, all but the lowest id of each
// address (compared without regard to case).
func markDuplicates(ctx context.Context, tx *sql.Tx, d Delivery, cs *codes) error {
	// Duplicates come last, among the profiles still targeted, so that the profile kept (the
	// lowest id) is one that can receive the message. They are found apart because sorting
	// the whole target by address inside the INSERT would write it out of id order, which
	// costs more than this pass.
	if _, err := tx.ExecContext(ctx, `UPDATE `+prepTable+` SET code = $1 WHERE code IS NULL AND profile_id IN (
		SELECT profile_id FROM (SELECT profile_id, ROW_NUMBER() OVER (PARTITION BY lower(address) ORDER BY profile_id) AS rn
			FROM `+prepTable+` WHERE code IS NULL AND lower(address) IN (
				SELECT lower(address) FROM `+prepTable+` WHERE code IS NULL GROUP BY lower(address) HAVING count(*) > 1)) dup
		WHERE rn > 1)`, cs.add(ReasonDuplicate, RuleDuplicate)); err != nil {
		return fmt.Errorf("find duplicate addresses in the target of delivery %d: %w", d.ID, err)
	}
	return nil
}

// activeStates are the states whose pending rows count as messages to come for fatigue.
const activeStatesSQL = `'scheduled', 'sending', 'paused', 'retrying'`

// applyFatigue excludes the profiles still targeted that already have r's maximum of
// messages within its period before or after the contact date: messages sent (any delivery
// but this one) and messages pending in deliveries confirmed to go out in the period.
func applyFatigue(ctx context.Context, tx *sql.Tx, d Delivery, r Rule, contact time.Time, cs *codes) error {
	period := time.Duration(r.Settings.PeriodHours) * time.Hour
	lo, hi := contact.Add(-period).UnixMilli(), contact.Add(period).UnixMilli()
	args := []any{cs.add(ReasonFatigue, r.Name), d.ID, lo, hi, r.Settings.Max}
	channel := ""
	if r.Settings.Channel != "" {
		args = append(args, r.Settings.Channel)
		channel = " AND d.channel = $6"
	}
	q := `UPDATE ` + prepTable + ` SET code = $1 WHERE code IS NULL AND profile_id IN (
		SELECT sl.profile_id FROM sending_log sl JOIN deliveries d ON d.id = sl.delivery_id
		WHERE d.id <> $2` + channel + ` AND (
			(sl.sent_at BETWEEN $3 AND $4)
			OR (sl.sent_at IS NULL AND sl.status IN ('pending', 'retrying') AND d.state IN (` + activeStatesSQL + `)
				AND d.contact_at BETWEEN $3 AND $4))
		GROUP BY sl.profile_id HAVING count(*) >= $5)`
	if _, err := tx.ExecContext(ctx, q, args...); err != nil {
		return fmt.Errorf("apply fatigue rule %q to delivery %d: %w", r.Name, d.ID, err)
	}
	return nil
}

// countTarget reads the figures from the working table: targeted, excluded by reason and
// rule (in rule order of first appearance), and to deliver.
func countTarget(ctx context.Context, tx *sql.Tx, d *Delivery, cs codes, l *PrepLog) error {
	rows, err := tx.QueryContext(ctx, `SELECT code, count(*) FROM `+prepTable+` GROUP BY code`)
	if err != nil {
		return fmt.Errorf("count the target of delivery %d: %w", d.ID, err)
	}
	defer rows.Close()
	d.Counts = Counts{}
	byCode := map[int64]int64{}
	for rows.Next() {
		var code sql.NullInt64
		var n int64
		if err := rows.Scan(&code, &n); err != nil {
			return fmt.Errorf("count the target of delivery %d: %w", d.ID, err)
		}
		d.Counts.Targeted += n
		if !code.Valid {
			d.Counts.ToDeliver += n
			continue
		}
		if code.Int64 < 0 || int(code.Int64) >= len(cs) {
			return fmt.Errorf("count the target of delivery %d: unknown exclusion code %d", d.ID, code.Int64)
		}
		d.Counts.Excluded += n
		byCode[code.Int64] = n
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("count the target of delivery %d: %w", d.ID, err)
	}
	for i, e := range cs { // in the order the rules were applied
		if n := byCode[int64(i)]; n > 0 {
			e.Count = n
			l.Exclusions = append(l.Exclusions, e)
		}
	}
	if d.Counts.Targeted == 0 {
		l.Warnings = append(l.Warnings, LogEntry{Rule: ruleAudience, Message: "the audience selects nobody"})
	} else if d.Counts.ToDeliver == 0 {
		l.Errors = append(l.Errors, LogEntry{Rule: ruleAudience, Message: fmt.Sprintf("every one of the %d targeted profiles was excluded; there is nobody to deliver to", d.Counts.Targeted)})
	}
	return nil
}

// renderBatch is how many recipients a personalisation worker takes at a time.
const renderBatch = 256

// checkPersonalisation renders every recipient still targeted once, on NumCPU workers, and
// lists those that fail. Memory is bounded: rows are streamed, a few batches at a time.
func (s *Service) checkPersonalisation(ctx context.Context, tx *sql.Tx, tpl *content.Template, l *PrepLog) error {
	c := tpl.Content()
	if tpl.DerivesText() {
		// Deriving the text from the rendered HTML cannot fail on a recipient's data, and
		// costs as much as the render: check with a fixed text part instead.
		cc := c
		cc.Text = "-"
		if t, err := content.Compile(cc, content.Options{}); err == nil {
			tpl = t
		}
	}
	usesAttrs := strings.Contains(c.Subject+c.HTML+c.Text, "attributes") || strings.Contains(c.Subject+c.HTML+c.Text, "attr")
	attrCol := "''"
	if usesAttrs {
		attrCol = "p.attributes"
	}
	rows, err := tx.QueryContext(ctx, `SELECT p.id, p.email, p.phone, p.locale, p.time_zone, p.external_id, p.created_at, `+attrCol+`
		FROM `+prepTable+` t JOIN profiles p ON p.id = t.profile_id WHERE t.code IS NULL ORDER BY t.profile_id`)
	if err != nil {
		return fmt.Errorf("read recipients: %w", err)
	}
	defer rows.Close()

	type item struct {
		rc    content.Recipient
		attrs string
	}
	workers := runtime.NumCPU()
	batches := make(chan []item, 2*workers)
	var mu sync.Mutex
	var failed int64
	var failures []RecipientFailure
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := tpl.NewRenderer()
			for b := range batches {
				for i := range b {
					it := &b[i]
					err := error(nil)
					if usesAttrs {
						it.rc.Attributes, err = content.DecodeAttributes([]byte(it.attrs))
					}
					if err == nil {
						it.rc.UnsubscribeURL, it.rc.MirrorURL = "https://herald.invalid/t/u/x", "https://herald.invalid/t/m/x"
						_, err = r.Render(&it.rc, content.RenderOptions{})
					}
					if err != nil {
						mu.Lock()
						failed++
						if len(failures) < MaxPersonalisationFailures {
							failures = append(failures, RecipientFailure{ProfileID: it.rc.ID, Error: err.Error()})
						}
						mu.Unlock()
					}
				}
			}
		}()
	}
	batch := make([]item, 0, renderBatch)
	var scanErr error
	for rows.Next() {
		var it item
		var email, phone, locale, tz, ext sql.NullString
		var created int64
		if scanErr = rows.Scan(&it.rc.ID, &email, &phone, &locale, &tz, &ext, &created, &it.attrs); scanErr != nil {
			break
		}
		it.rc.Email, it.rc.Phone, it.rc.Locale, it.rc.TimeZone, it.rc.ExternalID = email.String, phone.String, locale.String, tz.String, ext.String
		it.rc.CreatedAt = clock.FromMillis(created)
		batch = append(batch, it)
		if len(batch) == renderBatch {
			select {
			case batches <- batch:
			case <-ctx.Done():
				scanErr = ctx.Err()
			}
			if scanErr != nil {
				break
			}
			batch = make([]item, 0, renderBatch)
		}
	}
	if scanErr == nil && len(batch) > 0 {
		batches <- batch
	}
	close(batches)
	wg.Wait()
	if scanErr != nil {
		return fmt.Errorf("read recipients: %w", scanErr)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read recipients: %w", err)
	}
	slices.SortFunc(failures, func(a, b RecipientFailure) int { return int(a.ProfileID - b.ProfileID) })
	l.PersonalisationFailed, l.PersonalisationFailures = failed, failures
	if failed > 0 {
		l.Errors = append(l.Errors, LogEntry{Rule: rulePersonalisation,
			Message: fmt.Sprintf("the message did not render for %d recipients (see personalisation_failures); fix the content or the profiles, then prepare again", failed)})
	}
	return nil
}

// preparedHash identifies one preparation: what was prepared, with which rules, what it found
// and when. Approvals record it; anything that changes it voids them.
func preparedHash(d Delivery, applied []Rule, l PrepLog, at time.Time) string {
	b, _ := json.Marshal(struct {
		Channel    Channel
		AudienceID int64
		Content    content.Content
		Schedule   Schedule
		Typology   Typology
		Approvals  ApprovalSettings
		Validity   int64
		Rules      []Rule
		Counts     Counts
		Exclusions []ExclusionCount
		At         int64
	}{d.Channel, d.AudienceID, d.Content, d.Schedule, d.Typology, d.Approvals, d.ValiditySeconds, applied, d.Counts, l.Exclusions, at.UnixMilli()})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
