package delivery

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/problem"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/store/storetest"
)

// exclusions returns the exclusion log of a delivery as "reason/rule: n".
func exclusions(t *testing.T, db *store.DB, id int64) map[string]int64 {
	t.Helper()
	rows, err := db.Read.Query(`SELECT reason, rule, count(*) FROM exclusion_log WHERE delivery_id = $1 GROUP BY reason, rule`, id)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var reason, rule string
		var n int64
		if err := rows.Scan(&reason, &rule, &n); err != nil {
			t.Fatal(err)
		}
		out[reason+"/"+rule] = n
	}
	return out
}

func TestBuiltInAndUserFilters(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		s, _ := newService(t, db)
		ok1 := addProfile(t, db, "ann@example.com", `{"vip": true}`)
		ok2 := addProfile(t, db, "bob@example.com", "")
		exec(t, db, `INSERT INTO profiles (external_id, created_at, updated_at) VALUES ('no-email', 0, 0)`)
		addProfile(t, db, "not-an-address", "")
		dupKept := addProfile(t, db, "Carl@example.com", "")
		addProfile(t, db, "carl@example.com", "") // the same mailbox for most servers: a duplicate
		addProfile(t, db, "quar@example.com", "")
		addProfile(t, db, "deny@example.com", "")
		out := addProfile(t, db, "out@example.com", "")
		exec(t, db, `UPDATE profiles SET opt_out_email = $1 WHERE id = $2`, true, out)
		addProfile(t, db, "nonvip@example.com", `{"vip": false}`)
		erased := addProfile(t, db, "gone@example.com", "")
		exec(t, db, `UPDATE profiles SET erased_at = 1, email = NULL, email_key = NULL WHERE id = $1`, erased)
		exec(t, db, `INSERT INTO quarantine (channel, address, status, updated_at) VALUES
			('email', 'quar@example.com', 'quarantine', 0), ('email', 'deny@example.com', 'denylist', 0),
			('email', 'bob@example.com', 'erroneous', 0)`)
		if _, err := s.CreateRule(ctx, admin, Rule{Name: "No non-VIPs", Kind: FilteringRule, Settings: RuleSettings{Filter: "attributes.vip = false"}, Enabled: true}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.CreateRule(ctx, admin, Rule{Name: "SMS only", Kind: FilteringRule, Settings: RuleSettings{Filter: "id > 0", Channel: SMS}, Enabled: true}); err != nil {
			t.Fatal(err)
		}
		aud := addAudience(t, db, "all", "")
		d := prepare(t, s, create(t, s, aud, nil).ID)
		if d.State != Ready {
			t.Fatalf("state %s, log %+v", d.State, d.PrepLog)
		}
		want := map[string]int64{
			"address_missing/" + RuleAddressMissing: 1,
			"address_invalid/" + RuleAddressInvalid: 1,
			"duplicate_address/" + RuleDuplicate:    1,
			"quarantined/" + RuleQuarantined:        1,
			"denylisted/" + RuleDenylisted:          1,
			"opted_out/" + RuleOptedOut:             1,
			"filtering/No non-VIPs":                 1,
		}
		got := exclusions(t, db, d.ID)
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("exclusions\n got %v\nwant %v", got, want)
		}
		if d.Counts != (Counts{Targeted: 10, ToDeliver: 3, Excluded: 7}) {
			t.Fatalf("counts %+v", d.Counts)
		}
		var sum int64
		for _, e := range d.PrepLog.Exclusions {
			sum += e.Count
			if got[string(e.Reason)+"/"+e.Rule] != e.Count {
				t.Errorf("log says %s/%s: %d; the exclusion log has %d", e.Reason, e.Rule, e.Count, got[string(e.Reason)+"/"+e.Rule])
			}
		}
		if sum != d.Counts.Excluded || d.Counts.Targeted != d.Counts.ToDeliver+d.Counts.Excluded {
			t.Fatalf("figures do not add up: %+v, by reason %d", d.Counts, sum)
		}
		rows, err := db.Read.Query(`SELECT profile_id FROM sending_log WHERE delivery_id = $1 ORDER BY profile_id`, d.ID)
		if err != nil {
			t.Fatal(err)
		}
		var ids []int64
		for rows.Next() {
			var id int64
			_ = rows.Scan(&id)
			ids = append(ids, id)
		}
		rows.Close()
		if fmt.Sprint(ids) != fmt.Sprint([]int64{ok1, ok2, dupKept}) {
			t.Fatalf("sending log for %v; want %v (the lowest id of a duplicate is kept)", ids, []int64{ok1, ok2, dupKept})
		}

		// A delivery can switch a rule off.
		rs, _ := s.Rules(ctx)
		var vipRule int64
		for _, r := range rs {
			if r.Name == "No non-VIPs" {
				vipRule = r.ID
			}
		}
		d2 := create(t, s, aud, func(in *Input) {
			in.Name = ptr("all of them")
			in.Typology = &Typology{DisabledRules: []int64{vipRule}}
		})
		if d2 = prepare(t, s, d2.ID); d2.Counts.ToDeliver != 4 {
			t.Fatalf("with the rule off: %+v", d2.Counts)
		}
	})
}

func TestFilterAudienceAndStaticList(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		s, _ := newService(t, db)
		a := addProfile(t, db, "ann@example.com", `{"city": "Paris"}`)
		addProfile(t, db, "bob@example.com", `{"city": "Lyon"}`)
		c := addProfile(t, db, "cy@example.com", `{"city": "Paris"}`)
		paris := addAudience(t, db, "paris", `attributes.city = "Paris"`)
		d := prepare(t, s, create(t, s, paris, nil).ID)
		if d.Counts != (Counts{Targeted: 2, ToDeliver: 2}) {
			t.Fatalf("filter audience: %+v", d.Counts)
		}
		var list int64
		if err := db.Write.QueryRow(`INSERT INTO audiences (name, kind, created_at, updated_at) VALUES ('list', 'list', 0, 0) RETURNING id`).Scan(&list); err != nil {
			t.Fatal(err)
		}
		exec(t, db, `INSERT INTO audience_members (audience_id, profile_id) VALUES ($1, $2), ($1, $3)`, list, a, c)
		d = prepare(t, s, create(t, s, list, func(in *Input) { in.Name = ptr("list") }).ID)
		if d.Counts != (Counts{Targeted: 2, ToDeliver: 2}) {
			t.Fatalf("static list: %+v", d.Counts)
		}
	})
}

func TestFatigueRule(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		s, _ := newService(t, db)
		tired := addProfile(t, db, "tired@example.com", "")
		scheduledFor := addProfile(t, db, "soon@example.com", "")
		fresh := addProfile(t, db, "fresh@example.com", "")
		old := addProfile(t, db, "old@example.com", "")
		aud := addAudience(t, db, "all", "")
		if _, err := s.CreateRule(ctx, admin, Rule{Name: "One a day", Kind: FatigueRule, Settings: RuleSettings{Max: 1, PeriodHours: 24}, Enabled: true}); err != nil {
			t.Fatal(err)
		}
		// Past deliveries: tired got one 3 hours ago, old one 3 days ago; soon is in a
		// delivery scheduled for tomorrow morning.
		past := create(t, s, aud, func(in *Input) { in.Name = ptr("past") })
		exec(t, db, `UPDATE deliveries SET state = 'finished', contact_at = $1 WHERE id = $2`, t0.Add(-3*time.Hour).UnixMilli(), past.ID)
		exec(t, db, `INSERT INTO sending_log (delivery_id, profile_id, address, status, sent_at) VALUES
			($1, $2, 'tired@example.com', 'sent', $3), ($1, $4, 'old@example.com', 'sent', $5)`,
			past.ID, tired, t0.Add(-3*time.Hour).UnixMilli(), old, t0.Add(-72*time.Hour).UnixMilli())
		soon := create(t, s, aud, func(in *Input) { in.Name = ptr("soon") })
		exec(t, db, `UPDATE deliveries SET state = 'scheduled', contact_at = $1 WHERE id = $2`, t0.Add(20*time.Hour).UnixMilli(), soon.ID)
		exec(t, db, `INSERT INTO sending_log (delivery_id, profile_id, address, status) VALUES ($1, $2, 'soon@example.com', 'pending')`, soon.ID, scheduledFor)

		d := prepare(t, s, create(t, s, aud, nil).ID)
		got := exclusions(t, db, d.ID)
		if got["fatigue/One a day"] != 2 || len(got) != 1 {
			t.Fatalf("exclusions %v; want tired and soon excluded by the fatigue rule", got)
		}
		if d.Counts != (Counts{Targeted: 4, ToDeliver: 2, Excluded: 2}) {
			t.Fatalf("counts %+v", d.Counts)
		}
		if n := count(t, db, `SELECT count(*) FROM sending_log WHERE delivery_id = $1 AND profile_id IN ($2, $3)`, d.ID, fresh, old); n != 2 {
			t.Fatalf("fresh and old not both to deliver (%d)", n)
		}
	})
}

func TestControlRules(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		s, _ := newService(t, db)
		addProfile(t, db, "ann@example.com", "")
		aud := addAudience(t, db, "all", "")

		// Warnings do not block.
		c := newsletter()
		c.HTML = `<p>Hi</p><a href="http://exa mple.com">x</a>`
		d := prepare(t, s, create(t, s, aud, func(in *Input) { in.Content = &c }).ID)
		if d.State != Ready || len(d.PrepLog.Errors) != 0 {
			t.Fatalf("state %s, log %+v", d.State, d.PrepLog)
		}
		rules := map[string]bool{}
		for _, w := range d.PrepLog.Warnings {
			rules[w.Rule] = true
		}
		if !rules["No unsubscribe link"] || !rules["Malformed URLs"] {
			t.Fatalf("warnings %+v; want the unsubscribe and malformed URL rules", d.PrepLog.Warnings)
		}

		// Errors block: an empty subject.
		c = newsletter()
		c.Subject = " "
		d = prepare(t, s, create(t, s, aud, func(in *Input) { in.Name = ptr("no subject"); in.Content = &c }).ID)
		if d.State != PrepareFailed || len(d.PrepLog.Errors) != 1 || d.PrepLog.Errors[0].Rule != "Subject empty" {
			t.Fatalf("state %s, log %+v", d.State, d.PrepLog)
		}
		if n := count(t, db, `SELECT count(*) FROM sending_log WHERE delivery_id = $1`, d.ID); n != 0 {
			t.Fatalf("%d sending log rows written for a failed preparation", n)
		}
		_, err := s.Confirm(ctx, starter, d.ID)
		wantProblem(t, err, problem.Conflict, "preparation_errors", "Subject empty", "subject is empty")

		// A size limit, made an error by the administrator.
		rs, _ := s.Rules(ctx)
		for _, r := range rs {
			if r.Settings.Check == CheckSizeLimit {
				r.Severity, r.Settings.MaxBytes = Error, 100
				if _, err := s.UpdateRule(ctx, admin, r.ID, r); err != nil {
					t.Fatal(err)
				}
			}
		}
		c = newsletter()
		c.HTML += strings.Repeat("<p>long</p>", 20)
		d = prepare(t, s, create(t, s, aud, func(in *Input) { in.Name = ptr("long"); in.Content = &c }).ID)
		if d.State != PrepareFailed || len(d.PrepLog.Errors) != 1 || d.PrepLog.Errors[0].Rule != "Message size" {
			t.Fatalf("state %s, log %+v", d.State, d.PrepLog)
		}
	})
}

func TestPersonalisationFailuresAreListed(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		s, _ := newService(t, db)
		good := addProfile(t, db, "ann@example.com", `{"codes": ["A", "B"]}`)
		bad := addProfile(t, db, "bob@example.com", `{"codes": ["A"]}`)
		aud := addAudience(t, db, "all", "")
		c := newsletter()
		c.Text = "Your second code: {{index .attributes.codes 1}}"
		d := prepare(t, s, create(t, s, aud, func(in *Input) { in.Content = &c }).ID)
		if d.State != PrepareFailed || d.PrepLog.PersonalisationFailed != 1 || len(d.PrepLog.PersonalisationFailures) != 1 ||
			d.PrepLog.PersonalisationFailures[0].ProfileID != bad {
			t.Fatalf("state %s, log %+v (good %d, bad %d)", d.State, d.PrepLog, good, bad)
		}
	})
}

func TestStoppedPreparationWritesNothing(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		s, _ := newService(t, db)
		for i := range 20 {
			addProfile(t, db, fmt.Sprintf("p%d@example.com", i), "")
		}
		aud := addAudience(t, db, "all", "")
		d := create(t, s, aud, nil)
		s.afterPhase = func(id int64, phase string) {
			if phase == "personalisation" {
				s.mu.Lock()
				s.preparing[id].cancel() // what Stop does, without waiting for the end
				s.mu.Unlock()
			}
		}
		d, err := s.Prepare(ctx, preparer, d.ID)
		if err != nil {
			t.Fatal(err)
		}
		if d.State != PrepareFailed || len(d.PrepLog.Errors) != 1 || !strings.Contains(d.PrepLog.Errors[0].Message, "stopped") {
			t.Fatalf("state %s, log %+v", d.State, d.PrepLog)
		}
		for _, table := range []string{"sending_log", "exclusion_log"} {
			if n := count(t, db, `SELECT count(*) FROM `+table+` WHERE delivery_id = $1`, d.ID); n != 0 {
				t.Fatalf("%d rows left in %s", n, table)
			}
		}
		if d.Counts != (Counts{}) || d.PreparedHash != "" {
			t.Fatalf("figures kept: %+v %q", d.Counts, d.PreparedHash)
		}
		// It can be prepared again.
		s.afterPhase = nil
		if d = prepare(t, s, d.ID); d.State != Ready || d.Counts.ToDeliver != 20 {
			t.Fatalf("again: %s %+v", d.State, d.Counts)
		}
		// Interrupted preparations left by a dead process are failed at start.
		exec(t, db, `UPDATE deliveries SET state = 'preparing' WHERE id = $1`, d.ID)
		if n, err := s.FailInterrupted(ctx); err != nil || n != 1 {
			t.Fatalf("FailInterrupted: %d %v", n, err)
		}
		wantState(t, s, d.ID, PrepareFailed)
	})
}

func TestProofs(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		s, _ := newService(t, db)
		addProfile(t, db, "ann@example.com", `{"first_name": "Ann"}`)
		aud := addAudience(t, db, "all", "")
		d := create(t, s, aud, nil)
		sender := &captureSender{}
		s.ProofSender = sender
		p, err := s.Proof(ctx, preparer, d.ID, []string{"ann@Example.com", "test@example.com"})
		if err != nil || p.N != 1 || !strings.HasPrefix(p.Subject, "Proof #1 ") {
			t.Fatalf("proof: %v %+v", err, p)
		}
		if len(sender.msgs) != 2 || sender.msgs[0].Subject != "Proof #1 Hello Ann" || sender.msgs[1].Subject != "Proof #1 Hello friend" {
			t.Fatalf("rendered proofs %+v", sender.msgs)
		}
		if p, err = s.Proof(ctx, preparer, d.ID, []string{"test@example.com"}); err != nil || p.N != 2 {
			t.Fatalf("second proof: %v %+v", err, p)
		}
		many := make([]string, MaxProofAddresses+1)
		for i := range many {
			many[i] = "t" + strconv.Itoa(i) + "@example.com"
		}
		_, err = s.Proof(ctx, preparer, d.ID, many)
		wantProblem(t, err, problem.Invalid, "invalid", "at most 100")
		_, err = s.Proof(ctx, approver, d.ID, []string{"x@example.com"})
		wantProblem(t, err, problem.Forbidden, "missing_role")
		// Proofs are never in the sending log.
		if n := count(t, db, `SELECT count(*) FROM sending_log WHERE delivery_id = $1`, d.ID); n != 0 {
			t.Fatalf("%d proof rows in the sending log", n)
		}
		ps, err := s.Proofs(ctx, d.ID)
		if err != nil || len(ps) != 2 {
			t.Fatalf("proofs: %v %+v", err, ps)
		}
	})
}

type captureSender struct{ msgs []ProofMessage }

func (c *captureSender) SendProofs(_ context.Context, _ Delivery, msgs []ProofMessage) error {
	c.msgs = append(c.msgs, msgs...)
	return nil
}

var _ ProofSender = (*captureSender)(nil)

// BenchmarkPrepare prepares a delivery to HERALD_BENCH_RECIPIENTS profiles (default 100,000)
// with the built-in filters, one fatigue rule and a personalised newsletter; 1% of the
// profiles are opted out and 1% quarantined. So that the fatigue rule has history to count,
// every profile was sent an earlier delivery two days before, and 1% of them three, which the
// rule (at most three a week) excludes. It reports recipients/s.
func BenchmarkPrepare(b *testing.B) {
	n := 100_000
	if v := os.Getenv("HERALD_BENCH_RECIPIENTS"); v != "" {
		n, _ = strconv.Atoi(v)
	}
	for _, eng := range storetest.Engines() {
		b.Run(string(eng), func(b *testing.B) {
			db := storetest.New(b, eng)
			seedProfiles(b, db, n)
			seedHistory(b, db, t0.Add(-48*time.Hour))
			s, _ := newService(b, db)
			ctx := context.Background()
			if _, err := s.CreateRule(ctx, admin, Rule{Name: "Three a week", Kind: FatigueRule, Settings: RuleSettings{Max: 3, PeriodHours: 24 * 7}, Enabled: true}); err != nil {
				b.Fatal(err)
			}
			aud := addAudience(b, db, "all", "")
			d := create(b, s, aud, nil)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				start := time.Now()
				got := prepare(b, s, d.ID)
				secs := time.Since(start).Seconds()
				if got.State != Ready || got.Counts.Targeted != int64(n) || got.Counts.ToDeliver+got.Counts.Excluded != int64(n) {
					b.Fatalf("prepared %s %+v %+v", got.State, got.Counts, got.PrepLog)
				}
				if fatigued := excludedFor(b, db, d.ID, ReasonFatigue); fatigued < int64(n/100)-2 {
					b.Fatalf("the fatigue rule excluded %d profiles, want about %d", fatigued, n/100)
				}
				b.ReportMetric(float64(n)/secs, "recipients/s")
				b.ReportMetric(secs, "s/prepare")
				b.Logf("%s: %d recipients in %.2fs, phases %v", eng, n, secs, got.PrepLog.Phases)
			}
		})
	}
}

// seedHistory records, for the fatigue rule to count, earlier email deliveries sent at `at`:
// one to every profile, and two more to 1% of them.
func seedHistory(b testing.TB, db *store.DB, at time.Time) {
	b.Helper()
	for i, where := range []string{"1 = 1", "id % 100 = 42", "id % 100 = 42"} {
		var id int64
		if err := db.Write.QueryRow(`INSERT INTO deliveries (name, channel, state, validity_seconds, created_at, updated_at)
			VALUES ($1, 'email', 'finished', 60, 0, 0) RETURNING id`, fmt.Sprintf("history %d", i)).Scan(&id); err != nil {
			b.Fatal(err)
		}
		exec(b, db, `INSERT INTO sending_log (delivery_id, profile_id, address, status, sent_at)
			SELECT $1, id, email, 'sent', $2 FROM profiles WHERE `+where, id, at.UnixMilli())
	}
}

// excludedFor counts a delivery's exclusion-log rows with the reason.
func excludedFor(b testing.TB, db *store.DB, id int64, reason Reason) int64 {
	b.Helper()
	var n int64
	if err := db.Read.QueryRow(`SELECT count(*) FROM exclusion_log WHERE delivery_id = $1 AND reason = $2`, id, reason).Scan(&n); err != nil {
		b.Fatal(err)
	}
	return n
}

// seedProfiles inserts n profiles with set-based SQL (a recursive CTE), 1% opted out and 1%
// quarantined.
func seedProfiles(b testing.TB, db *store.DB, n int) {
	b.Helper()
	optOut := "(i % 100 = 7)" // a boolean on PostgreSQL, 0 or 1 on SQLite
	exec(b, db, `WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < $1)
		INSERT INTO profiles (email, email_key, email_domain, attributes, opt_out_email, created_at, updated_at)
		SELECT 'user' || i || '@example.com', 'user' || i || '@example.com', 'example.com',
			'{"first_name": "Ann", "city": "Paris"}', `+optOut+`, 0, 0 FROM seq`, n)
	exec(b, db, `WITH RECURSIVE seq(i) AS (SELECT 13 UNION ALL SELECT i + 100 FROM seq WHERE i + 100 <= $1)
		INSERT INTO quarantine (channel, address, status, updated_at) SELECT 'email', 'user' || i || '@example.com', 'quarantine', 0 FROM seq`, n)
}

// TestProofsAtOnceAreNumberedInTurn: proofs of one delivery asked for at the same time (two
// users pressing the button) each get their own number, 1 to n, and none fails: on PostgreSQL
// each read the highest number before either wrote its own.
func TestProofsAtOnceAreNumberedInTurn(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		s, _ := newService(t, db)
		addProfile(t, db, "ann@example.com", `{"first_name": "Ann"}`)
		d := create(t, s, addAudience(t, db, "all", ""), nil)
		const n = 8
		errs := make(chan error, n)
		for range n {
			go func() {
				_, err := s.Proof(ctx, preparer, d.ID, []string{"test@example.com"})
				errs <- err
			}()
		}
		for range n {
			if err := <-errs; err != nil {
				t.Errorf("a proof asked for at the same time as others: %v", err)
			}
		}
		ps, err := s.Proofs(ctx, d.ID)
		if err != nil || len(ps) != n {
			t.Fatalf("%d proofs recorded (%v), want %d", len(ps), err, n)
		}
		seen := map[int]bool{}
		for _, p := range ps {
			seen[int(p.N)] = true
		}
		for k := 1; k <= n; k++ {
			if !seen[k] {
				t.Fatalf("proof numbers %v, want 1 to %d", seen, n)
			}
		}
	})
}
