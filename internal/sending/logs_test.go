package sending

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/heraldhq/herald/internal/problem"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/store/storetest"
	"github.com/heraldhq/herald/internal/tracking"
)

// seedLogs makes deliveries 1 (email) and 2 (sms) and sending-log rows of profiles 10 to 12,
// interleaved between the deliveries, with tracking events; it returns the row ids by name.
func seedLogs(t *testing.T, db *store.DB) map[string]int64 {
	t.Helper()
	run := func(q string, args ...any) {
		t.Helper()
		if _, err := db.Write.Exec(q, args...); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	run(`INSERT INTO deliveries (id, name, channel, state, validity_seconds, created_at, updated_at) VALUES
		(1, 'Spring sale', 'email', 'sending', 3600, 0, 0), (2, 'Reminder', 'sms', 'finished', 3600, 0, 0)`)
	run(`INSERT INTO profiles (id, email, email_key, email_domain, created_at, updated_at) VALUES
		(10, 'ann@example.com', 'ann@example.com', 'example.com', 0, 0), (11, 'bob@b.example', 'bob@b.example', 'b.example', 0, 0),
		(12, 'cy@example.com', 'cy@example.com', 'example.com', 0, 0)`)
	ids := map[string]int64{}
	row := func(name string, delivery, profile int64, address, status string, reason any, sent, open, click any) {
		t.Helper()
		var id int64
		if err := db.Write.QueryRow(`INSERT INTO sending_log (delivery_id, profile_id, address, status, attempts, failure_type,
			failure_reason, smtp_code, enhanced_code, sent_at, first_open_at, first_click_at)
			VALUES ($1, $2, $3, $4, 1, CASE WHEN $5 = '' THEN NULL ELSE 'hard' END, NULLIF($5, ''), CASE WHEN $5 = '' THEN NULL ELSE 550 END,
			CASE WHEN $5 = '' THEN NULL ELSE '5.1.1' END, $6, $7, $8) RETURNING id`,
			delivery, profile, address, status, reason, sent, open, click).Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids[name] = id
	}
	row("ann", 1, 10, "ann@Example.COM", "delivered", "", 1000, 2000, 3000)
	row("bob-sms", 2, 11, "+33600000011", "sent", "", 1500, nil, nil)
	row("bob", 1, 11, "bob@b.example", "failed", "user_unknown: 550 5.1.1 no such user", 1100, nil, nil)
	row("cy", 1, 12, "cy@example.com", "failed", "mailbox_full: 552 over quota", 1200, nil, nil)
	row("ann-sms", 2, 10, "+33600000010", "failed", "user_unknown: bad number", nil, nil, nil)
	row("dan", 1, 12, "dan@sub.example.com", "pending", "", nil, nil, nil)
	row("eve", 1, 10, "eve_x@ex%ample.com", "sent", "", 1300, 1400, nil)
	row("fay", 1, 11, "fay@f.example", "pending", "", nil, nil, nil)
	putRowInFlight(t, db, ids["fay"])
	for _, e := range []struct {
		row, kind string
		link      any
	}{{"ann", "open", nil}, {"ann", "open", nil}, {"ann", "click", 0}, {"eve", "open", nil}, {"bob-sms", "click", 1}} {
		run(`INSERT INTO tracking_events (delivery_id, log_id, kind, link, at, user_agent) SELECT delivery_id, id, $2, $3, 0, ''
			FROM sending_log WHERE id = $1`, ids[e.row], e.kind, e.link)
	}
	return ids
}

// putRowInFlight puts sending-log row id in flight as the engine does: in status sending, or
// pending in a batch in flight on SQLite.
func putRowInFlight(t *testing.T, db *store.DB, id int64) {
	t.Helper()
	qs := []string{`UPDATE sending_log SET status = 'sending', lease_owner = 'n1', lease_until = 0 WHERE id = $1`}
	if db.Engine == store.SQLite {
		qs = []string{`UPDATE sending_log SET status = 'pending' WHERE id = $1`,
			`INSERT INTO in_flight (delivery_id, lease_owner, lease_until, log_ids)
			SELECT delivery_id, 'n1', 0, json_array(id) FROM sending_log WHERE id = $1`}
	}
	for _, q := range qs {
		if _, err := db.Write.Exec(q, id); err != nil {
			t.Fatal(err)
		}
	}
}

func TestLogsList(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		ids := seedLogs(t, db)
		names := map[int64]string{}
		for k, v := range ids {
			names[v] = k
		}
		l := NewLogs(db, LogsConfig{})
		// list follows the cursor with pages of two rows and names the rows listed.
		list := func(f LogFilter) string {
			t.Helper()
			var got []string
			var after int64
			for pages := 0; pages < 10; pages++ {
				p, err := l.List(ctx, 1, f, after, 2)
				if err != nil {
					t.Fatalf("%+v: %v", f, err)
				}
				if len(p.Entries) > 2 || (p.NextAfter != 0 && len(p.Entries) != 2) {
					t.Fatalf("%+v: page of %d rows, next %d", f, len(p.Entries), p.NextAfter)
				}
				for _, e := range p.Entries {
					got = append(got, names[e.ID])
				}
				if after = p.NextAfter; after == 0 {
					break
				}
			}
			return strings.Join(got, " ")
		}
		for _, c := range []struct {
			f    LogFilter
			want string
		}{
			{LogFilter{}, "ann bob cy dan eve fay"},
			{LogFilter{Status: "sending"}, "fay"},
			{LogFilter{Status: "sent"}, "eve"},
			{LogFilter{Status: "pending"}, "dan"},
			{LogFilter{Status: "failed"}, "bob cy"},
			{LogFilter{Status: "delivered"}, "ann"},
			{LogFilter{Status: "cancelled"}, ""},
			{LogFilter{Reason: "user_unknown"}, "bob"},
			{LogFilter{Reason: "mailbox_full: 552"}, "cy"},
			{LogFilter{Reason: "User_unknown"}, ""},
			{LogFilter{Status: "failed", Reason: "mailbox"}, "cy"},
			{LogFilter{Domain: "example.com"}, "ann cy"},
			{LogFilter{Domain: "@EXAMPLE.com"}, "ann cy"},
			{LogFilter{Domain: "sub.example.com"}, "dan"},
			{LogFilter{Domain: "ex%ample.com"}, "eve"},
			{LogFilter{Domain: "ex_ample.com"}, ""},
			{LogFilter{Domain: "b.example", Status: "failed"}, "bob"},
		} {
			if got := list(c.f); got != c.want {
				t.Errorf("%+v: %q, want %q", c.f, got, c.want)
			}
		}
		if db.Engine == store.SQLite {
			// A row an older version left in status sending is in flight too, beside the
			// batches' rows.
			if _, err := db.Write.Exec(`UPDATE sending_log SET status = 'sending' WHERE id = $1`, ids["dan"]); err != nil {
				t.Fatal(err)
			}
			if got := list(LogFilter{Status: "sending"}); got != "dan fay" {
				t.Errorf("status sending with a row left in status sending: %q, want %q", got, "dan fay")
			}
			if _, err := db.Write.Exec(`UPDATE sending_log SET status = 'pending' WHERE id = $1`, ids["dan"]); err != nil {
				t.Fatal(err)
			}
		}

		p, err := l.List(ctx, 1, LogFilter{Status: "failed"}, 0, 1)
		if err != nil {
			t.Fatal(err)
		}
		e := p.Entries[0]
		if e.ProfileID != 11 || e.Address != "bob@b.example" || e.Attempts != 1 || *e.FailureType != "hard" || *e.SMTPCode != 550 ||
			*e.EnhancedCode != "5.1.1" || e.SentAt.UnixMilli() != 1100 || e.FirstOpenAt != nil || e.Ambiguous || p.NextAfter != e.ID {
			t.Errorf("failed row: %+v", p)
		}
		p, err = l.List(ctx, 1, LogFilter{Status: "delivered"}, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		if all, err := l.List(ctx, 1, LogFilter{}, 0, 0); err != nil || all.Entries[len(all.Entries)-1].Status != "sending" {
			t.Errorf("a row in flight: %+v, %v; want status sending", all.Entries[len(all.Entries)-1], err)
		}
		if e := p.Entries[0]; e.FailureReason != nil || e.FirstOpenAt.UnixMilli() != 2000 || e.FirstClickAt.UnixMilli() != 3000 {
			t.Errorf("delivered row: %+v", e)
		}

		for _, c := range []struct {
			delivery int64
			f        LogFilter
			kind     problem.Kind
		}{
			{999, LogFilter{}, problem.NotFound},
			{1, LogFilter{Status: "lost"}, problem.Invalid},
			{1, LogFilter{Domain: "a@b"}, problem.Invalid},
		} {
			_, err := l.List(ctx, c.delivery, c.f, 0, 0)
			if pr, ok := problem.As(err); !ok || pr.Kind != c.kind {
				t.Errorf("delivery %d %+v: %v, want a problem of kind %v", c.delivery, c.f, err, c.kind)
			}
		}
	})
}

func TestLogsHistory(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		ids := seedLogs(t, db)
		signer, err := tracking.NewSigner(tracking.Key{ID: 1, Secret: bytes.Repeat([]byte{7}, tracking.MinSecretLen)})
		if err != nil {
			t.Fatal(err)
		}
		links, err := tracking.NewLinks("https://herald.example", signer)
		if err != nil {
			t.Fatal(err)
		}
		l := NewLogs(db, LogsConfig{Links: links})

		p, err := l.History(ctx, 10, "", 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, e := range p.Entries {
			got = append(got, fmt.Sprintf("%d %s %s %s opens=%d clicks=%d mirror=%t", e.DeliveryID, e.DeliveryName, e.Channel, e.Status,
				e.Opens, e.Clicks, e.MirrorURL != ""))
		}
		want := []string{
			"1 Spring sale email delivered opens=2 clicks=1 mirror=true",
			"2 Reminder sms failed opens=0 clicks=0 mirror=false",
			"1 Spring sale email sent opens=1 clicks=0 mirror=true",
		}
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("history of profile 10:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		if e := p.Entries[0]; e.LogID != ids["ann"] || e.SentAt.UnixMilli() != 1000 || e.FirstOpenAt.UnixMilli() != 2000 ||
			e.FirstClickAt.UnixMilli() != 3000 || !strings.HasPrefix(e.MirrorURL, "https://herald.example"+tracking.PathMirror) {
			t.Errorf("first entry: %+v", e)
		}
		if e := p.Entries[1]; *e.FailureReason != "user_unknown: bad number" || e.SentAt != nil || e.Address != "+33600000010" {
			t.Errorf("failed entry: %+v", e)
		}
		if p, err := l.History(ctx, 11, "", 0, 0); err != nil || p.Entries[len(p.Entries)-1].Status != "sending" {
			t.Errorf("history of profile 11: %+v, %v; want its row in flight last, status sending", p.Entries, err)
		}
		// The mirror URL names the row: its token verifies to the row and delivery.
		tok := strings.TrimPrefix(p.Entries[0].MirrorURL, "https://herald.example"+tracking.PathMirror)
		if ref, err := signer.Verify(tok); err != nil || ref.LogID != ids["ann"] || ref.DeliveryID != 1 || ref.Kind != tracking.KindMirror {
			t.Errorf("mirror token: %+v, %v", ref, err)
		}

		// The filters, and the cursor, one row a page.
		for _, c := range []struct {
			profile int64
			filter  string
			want    []string
		}{
			{10, "", []string{"ann", "ann-sms", "eve"}},
			{10, HistoryReceived, []string{"ann", "eve"}},
			{10, HistoryOpened, []string{"ann", "eve"}},
			{10, HistoryClicked, []string{"ann"}},
			{11, HistoryReceived, []string{"bob-sms"}},
			{12, "", []string{"cy", "dan"}},
			{12, HistoryOpened, nil},
		} {
			var got []int64
			var after int64
			for pages := 0; pages < 10; pages++ {
				p, err := l.History(ctx, c.profile, c.filter, after, 1)
				if err != nil {
					t.Fatal(err)
				}
				for _, e := range p.Entries {
					got = append(got, e.LogID)
				}
				if after = p.NextAfter; after == 0 {
					break
				}
			}
			var want []int64
			for _, n := range c.want {
				want = append(want, ids[n])
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("profile %d, filter %q: %v, want %v", c.profile, c.filter, got, want)
			}
		}

		// Without Links, no mirror URL.
		p, err = NewLogs(db, LogsConfig{}).History(ctx, 10, "", 0, 1)
		if err != nil || p.Entries[0].MirrorURL != "" || p.NextAfter != ids["ann"] {
			t.Errorf("without links: %+v, %v", p, err)
		}
		for _, c := range []struct {
			profile int64
			filter  string
			kind    problem.Kind
		}{{999, "", problem.NotFound}, {10, "bounced", problem.Invalid}} {
			_, err := l.History(ctx, c.profile, c.filter, 0, 0)
			if pr, ok := problem.As(err); !ok || pr.Kind != c.kind {
				t.Errorf("profile %d, filter %q: %v, want a problem of kind %v", c.profile, c.filter, err, c.kind)
			}
		}
	})
}
