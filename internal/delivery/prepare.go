package delivery

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/heraldhq/herald/internal/audience/filter"
	"github.com/heraldhq/herald/internal/audit"
	"github.com/heraldhq/herald/internal/auth"
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
		aud, err := s.audienceQuery(ctx, tx, d, now)
		if err != nil {
			return err
		}

		// (4) Every recipient rendered once. On SQLite the check reads the whole audience on a
		// reader connection, on the other core, while this transaction computes the target:
		// this transaction holds the write lock from its start, so the reader sees the very
		// profiles it does. Failures of profiles excluded meanwhile are dropped at the end. On
		// PostgreSQL it reads the final target in this transaction, after the rules.
		var check *renderCheck
		checkDone := make(chan error, 1)
		superset := eng == store.SQLite && s.db.Read != s.db.Write
		if tpl != nil {
			check = newRenderCheck(tpl)
			if superset {
				cctx, stop := context.WithCancel(ctx)
				defer func() { stop(); <-checkDone }()
				go func() {
					checkDone <- check.run(cctx, s.db.Read, func(id int64, _ error) { check.failed.add(id) },
						`SELECT `+check.selectList()+` FROM `+aud.from+` WHERE `+aud.where, aud.args...)
				}()
			}
		}
		var cs codes
		if err := s.insertTarget(ctx, tx, d, aud, applied, now, &cs, &l); err != nil {
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

		// (4) Every recipient rendered once (see above).
		if check != nil {
			if superset {
				err := <-checkDone
				checkDone <- nil // for the deferred wait
				if err != nil {
					return err
				}
			} else if d.Counts.ToDeliver > 0 {
				err := check.run(ctx, tx, func(id int64, _ error) { check.failed.add(id) },
					`SELECT `+check.selectList()+` FROM `+prepTable+` t JOIN profiles p ON p.id = t.profile_id WHERE t.code IS NULL`)
				if err != nil {
					return err
				}
			}
			if d.Counts.ToDeliver > 0 {
				if err := s.reportPersonalisation(ctx, tx, check, superset, &l); err != nil {
					return err
				}
			}
		}
		if err := phase("personalisation"); err != nil {
			return err
		}

		// (5) The logs, in bulk.
		reasonSQL, ruleSQL, spellArgs := cs.spell(2)
		args := append([]any{d.ID}, spellArgs...)
		if _, err := tx.ExecContext(ctx, `INSERT INTO exclusion_log (delivery_id, profile_id, reason, rule)
			SELECT $1, profile_id, `+reasonSQL+`, `+ruleSQL+` FROM `+prepTable+` WHERE code IS NOT NULL`, args...); err != nil {
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

// audience is the audience part of a target query: FROM and WHERE over profiles p (erased
// ones never), with their arguments numbered from $1.
type audience struct {
	from, where string
	args        []any
}

// audienceQuery reads d's audience and returns its query.
func (s *Service) audienceQuery(ctx context.Context, tx *sql.Tx, d Delivery, now time.Time) (audience, error) {
	a := audience{from: "profiles p", where: "p.erased_at IS NULL"}
	if d.AudienceID == 0 {
		return a, problem.Conflictf("no_audience", "delivery %d has no audience; choose one, then prepare it", d.ID)
	}
	var kind, filterText string
	err := tx.QueryRowContext(ctx, `SELECT kind, filter FROM audiences WHERE id = $1`, d.AudienceID).Scan(&kind, &filterText)
	if errors.Is(err, sql.ErrNoRows) {
		return a, problem.Conflictf("no_audience", "the audience (id %d) of delivery %d no longer exists; choose another", d.AudienceID, d.ID)
	} else if err != nil {
		return a, fmt.Errorf("read audience %d: %w", d.AudienceID, err)
	}
	if kind == "list" {
		a.args = append(a.args, d.AudienceID)
		a.from += " JOIN audience_members m ON m.profile_id = p.id AND m.audience_id = $1"
	} else if strings.TrimSpace(filterText) != "" {
		e, err := filter.Parse(filterText)
		if err != nil {
			return a, problem.Conflictf("audience_invalid", "the filter of audience %d is not valid: %v", d.AudienceID, err)
		}
		w, fargs, err := filter.CompileQualified(e, s.db.Engine, "p", 1, now)
		if err != nil {
			return a, problem.Conflictf("audience_invalid", "the filter of audience %d is not valid: %v", d.AudienceID, err)
		}
		a.args = append(a.args, fargs...)
		a.where += " AND " + w
	}
	return a, nil
}

// insertTarget fills the working table with the audience's profiles and, for each, the first
// built-in or user filtering rule that excludes it, in rule order.
func (s *Service) insertTarget(ctx context.Context, tx *sql.Tx, d Delivery, aud audience, applied []Rule, now time.Time, cs *codes, l *PrepLog) error {
	eng := s.db.Engine
	args := slices.Clone(aud.args)
	addr := addressExpr(d.Channel)
	// One CASE, each condition written once, so that SQLite evaluates each (the quarantine
	// probe above all) at most once per profile. The email quarantine is probed after, apart,
	// from whichever side is smaller (see markQuarantined).
	var c strings.Builder
	fmt.Fprintf(&c, "CASE WHEN %s IS NULL OR %s = '' THEN %d", addr, addr, cs.add(ReasonAddressMissing, RuleAddressMissing))
	invalid := cs.add(ReasonAddressInvalid, RuleAddressInvalid)
	fmt.Fprintf(&c, " WHEN NOT %s THEN %d", validAddressSQL(eng, d.Channel, addr), invalid)
	q := quarantineCodes{quarantined: cs.add(ReasonQuarantined, RuleQuarantined), denylisted: cs.add(ReasonDenylisted, RuleDenylisted)}
	apart := d.Channel == Email
	ends := " END END"
	if !apart {
		fmt.Fprintf(&c, " ELSE CASE %s", q.caseOf(d.Channel, addr))
		ends += " END"
	}
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
	c.WriteString(ends)
	res, err := tx.ExecContext(ctx, `INSERT INTO `+prepTable+` (profile_id, address, code) SELECT p.id, `+addr+`, `+c.String()+
		` FROM `+aud.from+` WHERE `+aud.where+` ORDER BY p.id`, args...)
	if err != nil {
		return fmt.Errorf("compute the target of delivery %d: %w", d.ID, err)
	}
	if !apart {
		return nil
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("compute the target of delivery %d: %w", d.ID, err)
	}
	return markQuarantined(ctx, tx, d, n, invalid, q)
}

// quarantineCodes are the exclusion codes of the quarantine's two blocking statuses.
type quarantineCodes struct{ quarantined, denylisted int }

// caseOf is a CASE operand and its WHENs giving the code of the blocking quarantine status of
// addr (an expression, never input) on ch, NULL when none.
func (q quarantineCodes) caseOf(ch Channel, addr string) string {
	return fmt.Sprintf("(SELECT q.status FROM quarantine q WHERE q.channel = '%s' AND q.address = %s AND q.status IN (%s)) WHEN 'quarantine' THEN %d WHEN 'denylist' THEN %d",
		ch, addr, quarantine.BlockingStatusesSQL, q.quarantined, q.denylisted)
}

// markQuarantined gives the email quarantine's code to the n profiles of the working table
// whose address it blocks, unless an earlier rule (a missing or invalid address, code up to
// invalid) excluded them; it comes before the opt-out and the filtering rules, whose codes it
// replaces. Probing the quarantine for each of a million profiles costs more than the
// quarantine is usually long: when it holds fewer blocked addresses than the target has
// profiles, it is walked instead, and each address found through the profiles' unique index
// on email_key, the address column of email.
func markQuarantined(ctx context.Context, tx *sql.Tx, d Delivery, n int64, invalid int, q quarantineCodes) error {
	var blocked int64
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM (SELECT 1 FROM quarantine q WHERE q.channel = $1 AND q.status IN (`+
		quarantine.BlockingStatusesSQL+`) LIMIT $2) b`, Email, n).Scan(&blocked); err != nil {
		return fmt.Errorf("read the quarantine for delivery %d: %w", d.ID, err)
	}
	if blocked == 0 {
		return nil
	}
	which := `EXISTS (SELECT 1 FROM quarantine q WHERE q.channel = 'email' AND q.address = ` + prepTable + `.address AND q.status IN (` + quarantine.BlockingStatusesSQL + `))`
	if blocked < n {
		which = `profile_id IN (SELECT p.id FROM quarantine q JOIN profiles p ON p.email_key = q.address
			WHERE q.channel = 'email' AND q.status IN (` + quarantine.BlockingStatusesSQL + `))`
	}
	if _, err := tx.ExecContext(ctx, `UPDATE `+prepTable+` SET code = CASE `+q.caseOf(Email, prepTable+`.address`)+` END
		WHERE (code IS NULL OR code > $1) AND `+which, invalid); err != nil {
		return fmt.Errorf("apply the quarantine to delivery %d: %w", d.ID, err)
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
	//
	// The addresses that may be duplicated are those two profiles share once lower-cased. For
	// email, whose address (email_key) is unique among profiles, two such addresses differ,
	// so one of them at least is not its own lower case: the few addresses that are not give
	// every duplicated address, without grouping the whole target.
	candidates := `SELECT lower(address) FROM ` + prepTable + ` WHERE code IS NULL GROUP BY lower(address) HAVING count(*) > 1`
	if d.Channel == Email {
		candidates = `SELECT lower(address) FROM ` + prepTable + ` WHERE code IS NULL AND address <> lower(address)`
	}
	if _, err := tx.ExecContext(ctx, `UPDATE `+prepTable+` SET code = $1 WHERE code IS NULL AND profile_id IN (
		SELECT profile_id FROM (SELECT profile_id, ROW_NUMBER() OVER (PARTITION BY lower(address) ORDER BY profile_id) AS rn
			FROM `+prepTable+` WHERE code IS NULL AND lower(address) IN (`+candidates+`)) dup
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
	// Grouping only the excluded profiles, a few, costs a fraction of grouping them all.
	d.Counts = Counts{}
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM `+prepTable).Scan(&d.Counts.Targeted); err != nil {
		return fmt.Errorf("count the target of delivery %d: %w", d.ID, err)
	}
	d.Counts.ToDeliver = d.Counts.Targeted
	rows, err := tx.QueryContext(ctx, `SELECT code, count(*) FROM `+prepTable+` WHERE code IS NOT NULL GROUP BY code`)
	if err != nil {
		return fmt.Errorf("count the target of delivery %d: %w", d.ID, err)
	}
	defer rows.Close()
	byCode := map[int64]int64{}
	for rows.Next() {
		var code sql.NullInt64
		var n int64
		if err := rows.Scan(&code, &n); err != nil {
			return fmt.Errorf("count the target of delivery %d: %w", d.ID, err)
		}
		d.Counts.ToDeliver -= n
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
