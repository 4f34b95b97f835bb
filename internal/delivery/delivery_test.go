package delivery

import (
	"context"
	"database/sql"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/audit"
	"github.com/heraldhq/herald/internal/auth"
	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/content"
	"github.com/heraldhq/herald/internal/problem"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/store/storetest"
)

var (
	t0       = time.Date(2025, 3, 10, 9, 0, 0, 0, time.UTC)
	preparer = auth.Principal{UserID: 11, Login: "pat", Roles: auth.Roles{auth.PrepareDeliveries}}
	approver = auth.Principal{UserID: 12, Login: "ada", Roles: auth.Roles{auth.ApproveDeliveries}}
	starter  = auth.Principal{UserID: 13, Login: "sam", Roles: auth.Roles{auth.StartDeliveries}}
	admin    = auth.Principal{UserID: 14, Login: "admin", Roles: auth.Roles{auth.Administration}}
)

func newService(t testing.TB, db *store.DB) (*Service, *clock.Fake) {
	clk := clock.NewFake(t0)
	return NewService(db, clk, slog.New(slog.NewTextHandler(io.Discard, nil))), clk
}

func ptr[T any](v T) *T { return &v }

// exec runs one statement or fails the test.
func exec(t testing.TB, db *store.DB, q string, args ...any) {
	t.Helper()
	if _, err := db.Write.Exec(q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

func count(t testing.TB, db *store.DB, q string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := db.Read.QueryRow(q, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}

// addProfile stores a profile with the given email (the key as the profile package keys it)
// and attributes JSON, and returns its id.
func addProfile(t testing.TB, db *store.DB, email, attrs string) int64 {
	t.Helper()
	var key, domain any
	if email != "" {
		at := strings.LastIndexByte(email, '@')
		if at > 0 {
			key, domain = email[:at]+"@"+strings.ToLower(email[at+1:]), strings.ToLower(email[at+1:])
		} else {
			key = email
		}
	}
	if attrs == "" {
		attrs = "{}"
	}
	var id int64
	if err := db.Write.QueryRow(`INSERT INTO profiles (email, email_key, email_domain, attributes, created_at, updated_at)
		VALUES ($1, $2, $3, $4, 0, 0) RETURNING id`, nullString(email), key, domain, attrs).Scan(&id); err != nil {
		t.Fatalf("add profile %q: %v", email, err)
	}
	return id
}

func addAudience(t testing.TB, db *store.DB, name, filterText string) int64 {
	t.Helper()
	var id int64
	if err := db.Write.QueryRow(`INSERT INTO audiences (name, kind, filter, created_at, updated_at) VALUES ($1, 'filter', $2, 0, 0) RETURNING id`,
		name, filterText).Scan(&id); err != nil {
		t.Fatalf("add audience: %v", err)
	}
	return id
}

func newsletter() content.Content {
	return content.Content{FromName: "Herald", FromAddress: "news@example.com", Subject: "Hello {{.attributes.first_name | default \"friend\"}}",
		HTML: `<p>Hi {{.attributes.first_name}}</p><a href="https://example.com/offer">Offer</a> <a href="{{.unsubscribe_url}}">Unsubscribe</a>`}
}

func create(t testing.TB, s *Service, audience int64, mod func(*Input)) Delivery {
	t.Helper()
	in := Input{Name: ptr("Spring sale"), Channel: ptr(Email), AudienceID: &audience, Content: ptr(newsletter())}
	if mod != nil {
		mod(&in)
	}
	d, err := s.Create(context.Background(), preparer, in)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	return d
}

func prepare(t testing.TB, s *Service, id int64) Delivery {
	t.Helper()
	d, err := s.Prepare(context.Background(), preparer, id)
	if err != nil {
		t.Fatalf("prepare: %v", err)
	}
	return d
}

// wantProblem fails unless err is a problem of kind k whose code is code and whose message
// contains every one of words.
func wantProblem(t *testing.T, err error, k problem.Kind, code string, words ...string) {
	t.Helper()
	p, ok := problem.As(err)
	if !ok {
		t.Fatalf("got error %v; want a problem %q", err, code)
	}
	if p.Kind != k || p.Code != code {
		t.Fatalf("got problem %d/%s (%s); want %d/%s", p.Kind, p.Code, p.Message, k, code)
	}
	for _, w := range words {
		if !strings.Contains(p.Message, w) {
			t.Errorf("message %q does not mention %q", p.Message, w)
		}
	}
}

func wantState(t *testing.T, s *Service, id int64, want State) Delivery {
	t.Helper()
	d, err := s.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if d.State != want {
		t.Fatalf("delivery %d is %s; want %s (log %+v)", id, d.State, want, d.PrepLog)
	}
	return d
}

func TestLifecycle(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		s, _ := newService(t, db)
		for _, e := range []string{"ann@example.com", "bob@example.com", "cy@example.com"} {
			addProfile(t, db, e, `{"first_name": "X"}`)
		}
		aud := addAudience(t, db, "everyone", "")
		d := create(t, s, aud, func(in *Input) { in.Approvals = &ApprovalSettings{Content: true, Target: true, FourEyes: true} })
		if d.State != Draft || d.CreatedBy != preparer.UserID {
			t.Fatalf("created %+v", d)
		}

		// Confirm before preparation: refused, saying why.
		_, err := s.Confirm(ctx, starter, d.ID)
		wantProblem(t, err, problem.Conflict, "not_prepared", "prepare")

		d = prepare(t, s, d.ID)
		if d.State != Ready || d.Counts != (Counts{Targeted: 3, ToDeliver: 3}) || d.PreparedHash == "" {
			t.Fatalf("prepared: state %s counts %+v hash %q log %+v", d.State, d.Counts, d.PreparedHash, d.PrepLog)
		}
		if n := count(t, db, `SELECT count(*) FROM sending_log WHERE delivery_id = $1 AND status = 'pending'`, d.ID); n != 3 {
			t.Fatalf("%d pending rows; want 3", n)
		}

		// The preparer may not confirm: the refusal names the role.
		_, err = s.Confirm(ctx, preparer, d.ID)
		wantProblem(t, err, problem.Forbidden, "missing_role", `"Start deliveries"`)
		// Nor approve.
		_, err = s.Approve(ctx, preparer, d.ID, ContentApproval, "")
		wantProblem(t, err, problem.Forbidden, "missing_role", `"Approve deliveries"`)

		// Approvals are missing.
		_, err = s.Confirm(ctx, starter, d.ID)
		wantProblem(t, err, problem.Conflict, "approval_missing", "content", "target")

		// Four eyes: the author, even holding the role, may not approve.
		author := auth.Principal{UserID: preparer.UserID, Login: "pat", Roles: auth.Roles{auth.ApproveDeliveries}}
		_, err = s.Approve(ctx, author, d.ID, ContentApproval, "")
		wantProblem(t, err, problem.Forbidden, "four_eyes", "four eyes")

		if d, err = s.Approve(ctx, approver, d.ID, ContentApproval, "fine"); err != nil || d.State != Ready {
			t.Fatalf("approve content: %v, state %s", err, d.State)
		}
		_, err = s.Approve(ctx, approver, d.ID, ContentApproval, "")
		wantProblem(t, err, problem.Conflict, "already_approved")
		_, err = s.Confirm(ctx, starter, d.ID)
		wantProblem(t, err, problem.Conflict, "approval_missing", "target")
		if d, err = s.Approve(ctx, approver, d.ID, TargetApproval, ""); err != nil || d.State != Approved {
			t.Fatalf("approve target: %v, state %s", err, d.State)
		}

		d, err = s.Confirm(ctx, starter, d.ID)
		if err != nil || d.State != Sending || d.ConfirmedBy != starter.UserID || d.ContactAt == nil || !d.ContactAt.Equal(t0) {
			t.Fatalf("confirm: %v, %+v", err, d)
		}
		if want := t0.Add(DefaultValidity); d.ValidityUntil == nil || !d.ValidityUntil.Equal(want) {
			t.Fatalf("validity until %v; want %v", d.ValidityUntil, want)
		}
		_, err = s.Update(ctx, preparer, d.ID, Input{Name: ptr("renamed")})
		wantProblem(t, err, problem.Conflict, "delivery_not_editable")
		err = s.Delete(ctx, preparer, d.ID)
		wantProblem(t, err, problem.Conflict, "delivery_not_deletable")

		_, err = s.Pause(ctx, preparer, d.ID)
		wantProblem(t, err, problem.Forbidden, "missing_role", `"Start deliveries"`)
		if d, err = s.Pause(ctx, starter, d.ID); err != nil || d.State != Paused {
			t.Fatalf("pause: %v %s", err, d.State)
		}
		_, err = s.Pause(ctx, starter, d.ID)
		wantProblem(t, err, problem.Conflict, "invalid_transition")
		if d, err = s.Resume(ctx, starter, d.ID); err != nil || d.State != Sending {
			t.Fatalf("resume: %v %s", err, d.State)
		}
		if d, err = s.Stop(ctx, starter, d.ID); err != nil || d.State != Stopped {
			t.Fatalf("stop: %v %s", err, d.State)
		}
		_, err = s.Resume(ctx, starter, d.ID)
		wantProblem(t, err, problem.Conflict, "invalid_transition")

		// Every transition is in the audit log: who, from, to.
		entries, err := audit.List(ctx, db, audit.Query{ObjectType: "delivery", ObjectID: "1", Limit: 500})
		if err != nil {
			t.Fatal(err)
		}
		var moves []string
		for i := len(entries) - 1; i >= 0; i-- {
			e := entries[i]
			if strings.Contains(string(e.After), `"state"`) && strings.Contains(string(e.Before), `"state"`) {
				moves = append(moves, e.Actor.Name+":"+stateOf(e.Before)+">"+stateOf(e.After))
			}
		}
		want := "pat:draft>preparing pat:preparing>ready ada:ready>approved sam:approved>sending sam:sending>paused sam:paused>sending sam:sending>stopped"
		if got := strings.Join(moves, " "); got != want {
			t.Fatalf("audited transitions\n got %s\nwant %s", got, want)
		}
	})
}

func stateOf(raw []byte) string {
	var v struct{ State string }
	if err := json.Unmarshal(raw, &v); err != nil || v.State == "" {
		return "?"
	}
	return v.State
}

func TestEditAfterPreparationReturnsToDraft(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		s, _ := newService(t, db)
		addProfile(t, db, "ann@example.com", "")
		aud := addAudience(t, db, "all", "")
		d := create(t, s, aud, func(in *Input) { in.Approvals = &ApprovalSettings{Content: true} })
		d = prepare(t, s, d.ID)
		d, err := s.Approve(ctx, approver, d.ID, ContentApproval, "")
		if err != nil || d.State != Approved {
			t.Fatalf("approve: %v %s", err, d.State)
		}

		// A rename changes nothing that was prepared.
		if d, err = s.Update(ctx, preparer, d.ID, Input{Name: ptr("Spring sale (final)")}); err != nil || d.State != Approved {
			t.Fatalf("rename: %v %s", err, d.State)
		}
		// A content change does.
		c := newsletter()
		c.Subject = "Last days"
		if d, err = s.Update(ctx, preparer, d.ID, Input{Content: &c}); err != nil {
			t.Fatal(err)
		}
		if d.State != Draft || d.PreparedHash != "" || d.Counts != (Counts{}) {
			t.Fatalf("after edit: %s %q %+v", d.State, d.PreparedHash, d.Counts)
		}
		if n := count(t, db, `SELECT count(*) FROM sending_log WHERE delivery_id = $1`, d.ID); n != 0 {
			t.Fatalf("%d sending log rows left after the edit", n)
		}
		as, err := s.Approvals(ctx, d.ID)
		if err != nil || len(as) != 1 || as[0].Valid {
			t.Fatalf("approvals after edit: %v %+v", err, as)
		}
		_, err = s.Confirm(ctx, starter, d.ID)
		wantProblem(t, err, problem.Conflict, "not_prepared")

		// Prepared again, the old approval does not count.
		d = prepare(t, s, d.ID)
		_, err = s.Confirm(ctx, starter, d.ID)
		wantProblem(t, err, problem.Conflict, "approval_missing", "content")

		// A rejection needs a comment and returns the delivery to draft.
		_, err = s.Reject(ctx, approver, d.ID, ContentApproval, " ")
		wantProblem(t, err, problem.Invalid, "invalid", "comment")
		if d, err = s.Reject(ctx, approver, d.ID, ContentApproval, "the offer link is wrong"); err != nil || d.State != Draft {
			t.Fatalf("reject: %v %s", err, d.State)
		}

		// A change of a typology rule returns prepared deliveries to draft.
		d = prepare(t, s, d.ID)
		rs, err := s.Rules(ctx)
		if err != nil {
			t.Fatal(err)
		}
		r := rs[0]
		r.Severity = Warning
		if _, err := s.UpdateRule(ctx, preparer, r.ID, r); err == nil {
			t.Fatal("a preparer changed a typology rule")
		}
		if _, err := s.UpdateRule(ctx, admin, r.ID, r); err != nil {
			t.Fatal(err)
		}
		wantState(t, s, d.ID, Draft)

		// Only unconfirmed deliveries can be deleted; a draft can.
		if err := s.Delete(ctx, preparer, d.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Get(ctx, d.ID); err == nil {
			t.Fatal("deleted delivery still there")
		}
	})
}

func TestScheduledStartsAtTheContactDate(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		s, clk := newService(t, db)
		addProfile(t, db, "ann@example.com", "")
		aud := addAudience(t, db, "all", "")
		at := t0.Add(2 * time.Hour)
		d := create(t, s, aud, func(in *Input) { in.Schedule = &Schedule{ContactDate: &at, TimeZone: "Europe/Paris"} })
		prepare(t, s, d.ID)
		d, err := s.Confirm(ctx, starter, d.ID)
		if err != nil || d.State != Scheduled || !d.ContactAt.Equal(at) {
			t.Fatalf("confirm: %v %+v", err, d)
		}
		if ids, err := s.DueScheduled(ctx, clk.Now()); err != nil || len(ids) != 0 {
			t.Fatalf("due before the contact date: %v %v", ids, err)
		}
		clk.Advance(2*time.Hour - time.Millisecond)
		if ids, _ := s.DueScheduled(ctx, clk.Now()); len(ids) != 0 {
			t.Fatalf("due a millisecond early: %v", ids)
		}
		clk.Advance(time.Millisecond)
		if ids, err := s.DueScheduled(ctx, clk.Now()); err != nil || len(ids) != 1 || ids[0] != d.ID {
			t.Fatalf("due at the contact date: %v %v", ids, err)
		}
		wantState(t, s, d.ID, Sending)

		// A past contact date sends on confirm.
		past := t0.Add(-time.Hour)
		d2 := create(t, s, aud, func(in *Input) { in.Name = ptr("late"); in.Schedule = &Schedule{ContactDate: &past} })
		prepare(t, s, d2.ID)
		if d2, err = s.Confirm(ctx, starter, d2.ID); err != nil || d2.State != Sending {
			t.Fatalf("confirm past: %v %s", err, d2.State)
		}

		// A scheduled delivery can be stopped before it starts.
		d3 := create(t, s, aud, func(in *Input) {
			in.Name = ptr("later")
			in.Schedule = &Schedule{ContactDate: ptr(clk.Now().Add(time.Hour))}
		})
		prepare(t, s, d3.ID)
		if _, err := s.Confirm(ctx, starter, d3.ID); err != nil {
			t.Fatal(err)
		}
		if d3, err = s.Stop(ctx, starter, d3.ID); err != nil || d3.State != Stopped {
			t.Fatalf("stop scheduled: %v %s", err, d3.State)
		}
		clk.Advance(2 * time.Hour)
		if ids, _ := s.DueScheduled(ctx, clk.Now()); len(ids) != 0 {
			t.Fatalf("a stopped delivery started: %v", ids)
		}
	})
}

func TestTransitionTable(t *testing.T) {
	for _, st := range States {
		for _, to := range transitions[st] {
			if !validState(to) {
				t.Errorf("%s → unknown state %s", st, to)
			}
		}
	}
	for _, c := range []struct {
		from, to State
		ok       bool
	}{
		{Draft, Preparing, true}, {Draft, Sending, false}, {Ready, Sending, true}, {Approved, Scheduled, true},
		{Scheduled, Sending, true}, {Sending, Paused, true}, {Paused, Sending, true}, {Stopped, Sending, false},
		{Finished, Draft, false}, {Sending, Draft, false}, {Preparing, Ready, true}, {PrepareFailed, Ready, false},
	} {
		if got := CanMove(c.from, c.to); got != c.ok {
			t.Errorf("CanMove(%s, %s) = %v; want %v", c.from, c.to, got, c.ok)
		}
	}
	for _, st := range []State{Stopped, Finished, Failed} {
		if !st.Final() {
			t.Errorf("%s is not final", st)
		}
	}
}

// tx runs fn in a write transaction, for tests that poke at the store.
func tx(t testing.TB, db *store.DB, fn func(tx *sql.Tx) error) {
	t.Helper()
	if err := db.InTx(context.Background(), fn); err != nil {
		t.Fatal(err)
	}
}
