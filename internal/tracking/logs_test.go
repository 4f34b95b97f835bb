package tracking_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/heraldhq/herald/internal/problem"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/store/storetest"
	"github.com/heraldhq/herald/internal/tracking"
)

// seedTrackingLog makes two deliveries: the first with stored links and events of every kind,
// the second with no stored links (its links come from its content) and one click.
func seedTrackingLog(t *testing.T, db *store.DB) (stored, fromContent int64) {
	t.Helper()
	html, _ := json.Marshal(map[string]any{"subject": "Hi", "html": `<p><a href="https://shop.example/a">a</a> <a href="https://shop.example/b">b</a></p>`})
	stored = insertID(t, db, `INSERT INTO deliveries (name, channel, state, validity_seconds, created_at, updated_at)
		VALUES ('stored', 'email', 'sending', 3600, 0, 0)`)
	fromContent = insertID(t, db, `INSERT INTO deliveries (name, channel, content, state, validity_seconds, created_at, updated_at)
		VALUES ('content', 'email', $1, 'sending', 3600, 0, 0)`, string(html))
	exec(t, db, `INSERT INTO tracked_links (delivery_id, idx, url, mode) VALUES ($1, 0, 'https://x.example/0', 'tracked'),
		($1, 1, 'https://x.example/1', 'tracked'), ($1, 2, 'https://x.example/never', 'never')`, stored)
	ev := func(d, log int64, kind string, link any, machine bool) {
		exec(t, db, `INSERT INTO tracking_events (delivery_id, log_id, kind, link, at, user_agent, machine)
			VALUES ($1, $2, $3, $4, $5, 'UA', $6)`, d, log, kind, link, t0.UnixMilli(), machine)
	}
	ev(stored, 1, "open", nil, true)
	ev(stored, 1, "click", 0, false)
	ev(fromContent, 9, "click", 1, false) // interleaved: the other delivery's rows are skipped
	ev(stored, 2, "click", 0, false)
	ev(stored, 1, "click", 0, false)
	ev(stored, 2, "click", 1, false)
	ev(stored, 2, "optout", nil, false)
	ev(stored, 3, "mirror", nil, false)
	return stored, fromContent
}

func TestListEvents(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		stored, fromContent := seedTrackingLog(t, db)

		// Every kind, two at a time, following the cursor.
		var kinds []string
		var after int64
		for pages := 0; ; pages++ {
			p, err := tracking.ListEvents(ctx, db, stored, 0, after, 2)
			if err != nil {
				t.Fatal(err)
			}
			if pages == 0 && (len(p.Events) != 2 || p.Events[0].Kind != "open" || !p.Events[0].Machine || p.Events[0].Link != nil ||
				p.Events[1].URL != "https://x.example/0" || p.Events[1].UserAgent != "UA" || !p.Events[1].At.Equal(t0)) {
				t.Fatalf("first page: %+v", p.Events)
			}
			for _, e := range p.Events {
				if e.ID <= after {
					t.Fatalf("event %d is not after the cursor %d", e.ID, after)
				}
				kinds = append(kinds, e.Kind)
			}
			if p.NextAfter == 0 {
				if pages != 3 {
					t.Errorf("%d pages, want 4", pages+1)
				}
				break
			}
			after = p.NextAfter
		}
		if got, want := strings.Join(kinds, " "), "open click click click click optout mirror"; got != want {
			t.Errorf("kinds %s, want %s", got, want)
		}

		// One kind.
		p, err := tracking.ListEvents(ctx, db, stored, tracking.KindClick, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Events) != 4 || p.NextAfter != 0 || p.Events[3].URL != "https://x.example/1" {
			t.Errorf("clicks: %+v", p)
		}
		// The content's links when none are stored.
		p, err = tracking.ListEvents(ctx, db, fromContent, tracking.KindClick, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Events) != 1 || p.Events[0].URL != "https://shop.example/b" {
			t.Errorf("clicks from the content's links: %+v", p.Events)
		}
		// Empty, and unknown.
		if p, err := tracking.ListEvents(ctx, db, fromContent, tracking.KindOpen, 0, 0); err != nil || len(p.Events) != 0 {
			t.Errorf("no opens: %+v, %v", p, err)
		}
		if _, err := tracking.ListEvents(ctx, db, 999, 0, 0, 0); !isProblem(err, problem.NotFound) {
			t.Errorf("unknown delivery: %v, want NotFound", err)
		}
	})
}

func TestParseKind(t *testing.T) {
	for _, name := range []string{"open", "click", "mirror", "optout"} {
		if k, err := tracking.ParseKind(name); err != nil || k.String() != name {
			t.Errorf("ParseKind(%q) = %v, %v", name, k, err)
		}
	}
	if _, err := tracking.ParseKind("bounce"); !isProblem(err, problem.Invalid) {
		t.Errorf("ParseKind(bounce): %v, want Invalid", err)
	}
}

func TestClicksByLink(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		stored, fromContent := seedTrackingLog(t, db)
		links, err := tracking.ClicksByLink(ctx, db, stored)
		if err != nil {
			t.Fatal(err)
		}
		want := []tracking.LinkClicks{
			{Index: 0, URL: "https://x.example/0", Mode: "tracked", Clicks: 3, UniqueClicks: 2},
			{Index: 1, URL: "https://x.example/1", Mode: "tracked", Clicks: 1, UniqueClicks: 1},
			{Index: 2, URL: "https://x.example/never", Mode: "never"},
		}
		if fmtList(links) != fmtList(want) {
			t.Errorf("stored links:\n got %v\nwant %v", fmtList(links), fmtList(want))
		}
		links, err = tracking.ClicksByLink(ctx, db, fromContent)
		if err != nil {
			t.Fatal(err)
		}
		want = []tracking.LinkClicks{
			{Index: 0, URL: "https://shop.example/a", Mode: "tracked"},
			{Index: 1, URL: "https://shop.example/b", Mode: "tracked", Clicks: 1, UniqueClicks: 1},
		}
		if fmtList(links) != fmtList(want) {
			t.Errorf("content's links:\n got %v\nwant %v", fmtList(links), fmtList(want))
		}
		if _, err := tracking.ClicksByLink(ctx, db, 999); !isProblem(err, problem.NotFound) {
			t.Errorf("unknown delivery: %v, want NotFound", err)
		}
	})
}

// fmtList spells v as JSON, to compare lists of structs.
func fmtList(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func isProblem(err error, k problem.Kind) bool {
	p, ok := problem.As(err)
	return ok && p.Kind == k
}
