package web

import (
	"net/http"
	"strings"
	"testing"

	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/store/storetest"
)

// seedLogRoutes writes, directly, a sent delivery 1 to profiles 1 and 2 with a tracked link,
// an exclusion, opens and clicks.
func seedLogRoutes(t *testing.T, db *store.DB) {
	t.Helper()
	for _, q := range []string{
		`INSERT INTO deliveries (id, name, channel, state, validity_seconds, created_at, updated_at)
			VALUES (1, 'Spring sale', 'email', 'finished', 3600, 0, 0)`,
		`INSERT INTO profiles (id, email, email_key, email_domain, created_at, updated_at) VALUES
			(1, 'ann@example.com', 'ann@example.com', 'example.com', 0, 0), (2, 'bob@other.example', 'bob@other.example', 'other.example', 0, 0),
			(3, 'cy@example.com', 'cy@example.com', 'example.com', 0, 0)`,
		`INSERT INTO sending_log (id, delivery_id, profile_id, address, status, attempts, sent_at, first_open_at, first_click_at)
			VALUES (1, 1, 1, 'ann@example.com', 'sent', 1, 1000, 2000, 3000)`,
		`INSERT INTO sending_log (id, delivery_id, profile_id, address, status, attempts, failure_type, failure_reason, smtp_code, enhanced_code)
			VALUES (2, 1, 2, 'bob@other.example', 'failed', 1, 'hard', 'user_unknown: 550 5.1.1 no such user', 550, '5.1.1')`,
		`INSERT INTO exclusion_log (delivery_id, profile_id, reason, rule) VALUES (1, 3, 'opted_out', 'Opt-out')`,
		`INSERT INTO tracked_links (delivery_id, idx, url, mode) VALUES (1, 0, 'https://shop.example/sale', 'tracked')`,
		`INSERT INTO tracking_events (delivery_id, log_id, kind, link, at, user_agent) VALUES
			(1, 1, 'open', NULL, 2000, 'Mail'), (1, 1, 'click', 0, 3000, 'Mail'), (1, 1, 'click', 0, 3100, 'Mail')`,
	} {
		if _, err := db.Write.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

// requireRoute skips the test while routes.go does not serve path yet.
func requireRoute(e *testEnv, path string) {
	e.t.Helper()
	if status, body := e.do("GET", path, e.adminToken, nil); status == http.StatusNotFound {
		if _, msg := errorOf(body); strings.HasPrefix(msg, "there is no API endpoint") {
			e.t.Skipf("%s is not in routes.go yet", path)
		}
	}
}

func TestLogRoutes(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		e := newTestEnv(t, db)
		requireRoute(e, "/api/v1/deliveries/1/logs")
		seedLogRoutes(t, db)
		exporter := e.tokenWith("exporter", "Export")
		importer := e.tokenWith("importer", "Generic import")

		status, body := e.do("GET", "/api/v1/deliveries/1/logs?limit=1", exporter, nil)
		entries, _ := body["entries"].([]any)
		if status != 200 || len(entries) != 1 || body["next_after"] != 1.0 {
			t.Fatalf("logs, page 1: %d %v", status, body)
		}
		if r := entries[0].(map[string]any); r["address"] != "ann@example.com" || r["status"] != "sent" || r["sent_at"] != "1970-01-01T00:00:01Z" ||
			r["first_click_at"] != "1970-01-01T00:00:03Z" || r["failure_reason"] != nil {
			t.Errorf("logs, row 1: %v", r)
		}
		status, body = e.do("GET", "/api/v1/deliveries/1/logs?limit=1&after=1", exporter, nil)
		if entries, _ := body["entries"].([]any); status != 200 || len(entries) != 1 || body["next_after"] != nil ||
			entries[0].(map[string]any)["smtp_code"] != 550.0 {
			t.Errorf("logs, page 2: %d %v", status, body)
		}
		for query, want := range map[string]int{
			"status=failed": 1, "status=delivered": 0, "reason=user_unknown": 1, "reason=mailbox": 0,
			"domain=EXAMPLE.com": 1, "domain=other.example&status=failed": 1,
		} {
			status, body := e.do("GET", "/api/v1/deliveries/1/logs?"+query, exporter, nil)
			if entries, _ := body["entries"].([]any); status != 200 || len(entries) != want {
				t.Errorf("logs?%s: %d %v, want %d rows", query, status, body, want)
			}
		}

		status, body = e.do("GET", "/api/v1/deliveries/1/exclusions?reason=opted_out", exporter, nil)
		if ex, _ := body["exclusions"].([]any); status != 200 || len(ex) != 1 || ex[0].(map[string]any)["address"] != "cy@example.com" {
			t.Errorf("exclusions: %d %v", status, body)
		}
		status, body = e.do("GET", "/api/v1/deliveries/1/tracking?kind=click", exporter, nil)
		if ev, _ := body["events"].([]any); status != 200 || len(ev) != 2 || ev[0].(map[string]any)["url"] != "https://shop.example/sale" {
			t.Errorf("tracking: %d %v", status, body)
		}
		status, body = e.do("GET", "/api/v1/deliveries/1/links", exporter, nil)
		if l, _ := body["links"].([]any); status != 200 || len(l) != 1 || l[0].(map[string]any)["clicks"] != 2.0 || l[0].(map[string]any)["unique_clicks"] != 1.0 {
			t.Errorf("links: %d %v", status, body)
		}

		// Errors: a bad filter, an unknown delivery, a role that does not read deliveries.
		for _, c := range []struct {
			path, token string
			status      int
			code        string
		}{
			{"/api/v1/deliveries/1/logs?status=lost", exporter, 400, "invalid"},
			{"/api/v1/deliveries/1/logs?after=-1", exporter, 400, "invalid"},
			{"/api/v1/deliveries/1/exclusions?reason=bored", exporter, 400, "invalid"},
			{"/api/v1/deliveries/1/tracking?kind=bounce", exporter, 400, "invalid"},
			{"/api/v1/deliveries/9/logs", exporter, 404, "not_found"},
			{"/api/v1/deliveries/9/exclusions", exporter, 404, "not_found"},
			{"/api/v1/deliveries/9/tracking", exporter, 404, "not_found"},
			{"/api/v1/deliveries/9/links", exporter, 404, "not_found"},
			{"/api/v1/deliveries/1/logs", importer, 403, ""},
			{"/api/v1/deliveries/1/links", importer, 403, ""},
		} {
			status, body := e.do("GET", c.path, c.token, nil)
			if code, _ := errorOf(body); status != c.status || (c.code != "" && code != c.code) {
				t.Errorf("%s: %d %v, want %d %s", c.path, status, body, c.status, c.code)
			}
		}
	})
}

func TestProfileHistoryRoute(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		e := newTestEnv(t, db)
		requireRoute(e, "/api/v1/profiles/1/history")
		seedLogRoutes(t, db)
		importer := e.tokenWith("importer", "Generic import")
		approver := e.tokenWith("approver", "Approve deliveries")

		status, body := e.do("GET", "/api/v1/profiles/1/history", importer, nil)
		entries, _ := body["entries"].([]any)
		if status != 200 || len(entries) != 1 {
			t.Fatalf("history: %d %v", status, body)
		}
		h := entries[0].(map[string]any)
		if h["delivery_id"] != 1.0 || h["delivery_name"] != "Spring sale" || h["channel"] != "email" || h["status"] != "sent" ||
			h["opens"] != 1.0 || h["clicks"] != 2.0 || h["first_open_at"] != "1970-01-01T00:00:02Z" || h["log_id"] != 1.0 {
			t.Errorf("history entry: %v", h)
		}
		for query, want := range map[string]int{"filter=received": 1, "filter=opened": 1, "filter=clicked": 1, "after=1": 0} {
			status, body := e.do("GET", "/api/v1/profiles/1/history?"+query, approver, nil)
			if entries, _ := body["entries"].([]any); status != 200 || len(entries) != want {
				t.Errorf("history?%s: %d %v, want %d entries", query, status, body, want)
			}
		}
		status, body = e.do("GET", "/api/v1/profiles/2/history?filter=received", approver, nil)
		if entries, _ := body["entries"].([]any); status != 200 || len(entries) != 0 {
			t.Errorf("history of a profile whose message failed, received: %d %v", status, body)
		}
		for _, c := range []struct {
			path   string
			status int
		}{
			{"/api/v1/profiles/1/history?filter=bounced", 400},
			{"/api/v1/profiles/1/history?limit=x", 400},
			{"/api/v1/profiles/99/history", 404},
			{"/api/v1/profiles/0/history", 400},
		} {
			if status, body := e.do("GET", c.path, importer, nil); status != c.status {
				t.Errorf("%s: %d %v, want %d", c.path, status, body, c.status)
			}
		}
		noRole := e.tokenWith("nobody")
		if status, _ := e.do("GET", "/api/v1/profiles/1/history", noRole, nil); status != 403 {
			t.Errorf("history without a role: %d, want 403", status)
		}
	})
}
