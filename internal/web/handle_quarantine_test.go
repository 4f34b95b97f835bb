package web

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/audit"
	"github.com/heraldhq/herald/internal/auth"
	"github.com/heraldhq/herald/internal/quarantine"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/store/storetest"
)

// quarantineRoutes are the quarantine rows of routeTable.
func quarantineRoutes(s *Server) []route {
	return []route{
		{"GET", "/api/v1/quarantine", needs(auth.Administration), s.handleListQuarantine},
		{"POST", "/api/v1/quarantine/bulk", needs(auth.Administration), s.handleBulkQuarantine},
		{"GET", "/api/v1/quarantine/{channel}/{address}", needs(auth.Administration), s.handleGetQuarantine},
		{"PUT", "/api/v1/quarantine/{channel}/{address}", needs(auth.Administration), s.handleSetQuarantine},
	}
}

// newQuarantineEnv is a testEnv whose server serves the quarantine routes through the same
// authentication and role checks as every route.
func newQuarantineEnv(t *testing.T, db *store.DB) *testEnv {
	t.Helper()
	e := newTestEnv(t, db)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	s := NewServer(Deps{DB: db, Auth: e.auth, Clock: e.clock, Log: log, Config: Config{Version: "test"},
		Quarantine: quarantine.NewService(db, e.clock, log)})
	mux := http.NewServeMux()
	for _, rt := range quarantineRoutes(s) {
		mux.Handle(rt.method+" "+rt.pattern, s.wrap(rt))
	}
	qe := *e
	qe.srv = httptest.NewServer(mux)
	t.Cleanup(qe.srv.Close)
	return &qe
}

func TestQuarantineAPI(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		e := newQuarantineEnv(t, db)
		admin := e.adminToken
		status, resp := e.do("POST", "/api/v1/quarantine/bulk", admin, map[string]any{"changes": []map[string]string{
			{"channel": "email", "address": "Ann@Example.COM", "status": "quarantine", "reason": "bounced elsewhere"},
			{"channel": "sms", "address": "+1 415 555 0100", "status": "denylist"},
			{"channel": "push", "address": "https://push.example/send/abc", "status": "quarantine"},
		}})
		if status != 200 || resp["changed"] != float64(3) {
			t.Fatalf("bulk: %d %v", status, resp)
		}

		// One address, with its history; the email domain is matched without case.
		status, resp = e.do("GET", "/api/v1/quarantine/email/Ann@example.com", admin, nil)
		entry, _ := resp["entry"].(map[string]any)
		hist, _ := resp["history"].([]any)
		if status != 200 || entry["status"] != "quarantine" || entry["address"] != "Ann@example.com" || len(hist) != 1 ||
			hist[0].(map[string]any)["actor"] != "admin" || hist[0].(map[string]any)["reason"] != "bounced elsewhere" {
			t.Fatalf("get: %d %v", status, resp)
		}
		// A Web Push endpoint travels with its slashes percent-encoded.
		status, resp = e.do("GET", "/api/v1/quarantine/push/https:%2F%2Fpush.example%2Fsend%2Fabc", admin, nil)
		if entry, _ := resp["entry"].(map[string]any); status != 200 || entry["status"] != "quarantine" {
			t.Fatalf("get push endpoint: %d %v", status, resp)
		}
		// An address never seen is valid, with an empty history.
		status, resp = e.do("GET", "/api/v1/quarantine/sms/+33612345678", admin, nil)
		if entry, _ := resp["entry"].(map[string]any); status != 200 || entry["status"] != "valid" || fmt.Sprint(resp["history"]) != "[]" {
			t.Fatalf("get unknown: %d %v", status, resp)
		}

		// Release one by hand: the entry, the history and the audit log say who.
		e.clock.Advance(time.Minute)
		status, resp = e.do("PUT", "/api/v1/quarantine/email/Ann@EXAMPLE.com", admin, map[string]string{"status": "valid", "reason": "confirmed"})
		if status != 200 || resp["status"] != "valid" || resp["error_count"] != float64(0) {
			t.Fatalf("put: %d %v", status, resp)
		}
		entries, err := audit.List(context.Background(), db, audit.Query{ObjectType: "quarantine", ObjectID: "email:Ann@example.com"})
		if err != nil || len(entries) != 2 || entries[0].Action != "quarantine.set" || entries[0].Actor.Name != "admin" {
			t.Fatalf("audit: %+v %v", entries, err)
		}

		// The list pages with next_after, and filters.
		var seen []string
		path := "/api/v1/quarantine?limit=2"
		for range 5 {
			status, resp = e.do("GET", path, admin, nil)
			if status != 200 {
				t.Fatalf("list: %d %v", status, resp)
			}
			for _, it := range resp["entries"].([]any) {
				seen = append(seen, it.(map[string]any)["address"].(string))
			}
			next, _ := resp["next_after"].(string)
			if next == "" {
				if _, ok := resp["next_after"]; !ok {
					t.Fatal("the last page has no next_after key; want null")
				}
				break
			}
			path = "/api/v1/quarantine?limit=2&after=" + next
		}
		if len(seen) != 3 || seen[0] != "Ann@example.com" {
			t.Fatalf("listed %v; want 3 entries, the one just edited first", seen)
		}
		status, resp = e.do("GET", "/api/v1/quarantine?status=denylist&channel=sms", admin, nil)
		if list, _ := resp["entries"].([]any); status != 200 || len(list) != 1 || list[0].(map[string]any)["address"] != "+14155550100" {
			t.Fatalf("filtered list: %d %v", status, resp)
		}
		status, resp = e.do("GET", "/api/v1/quarantine?address_prefix=https:", admin, nil)
		if list, _ := resp["entries"].([]any); status != 200 || len(list) != 1 {
			t.Fatalf("prefix list: %d %v", status, resp)
		}

		// Bad requests answer 400 naming the field, and write nothing.
		writes := func() int {
			var n int
			_ = db.Read.QueryRow(`SELECT (SELECT count(*) FROM quarantine_history) + (SELECT count(*) FROM audit_log)`).Scan(&n)
			return n
		}
		before := writes()
		for _, c := range []struct {
			method, path string
			body         any
			code, field  string
		}{
			{"GET", "/api/v1/quarantine?status=blocked", nil, "invalid", "status"},
			{"GET", "/api/v1/quarantine?limit=-1", nil, "invalid", "limit"},
			{"GET", "/api/v1/quarantine?limit=5000", nil, "invalid", "limit"},
			{"GET", "/api/v1/quarantine?after=nonsense", nil, "invalid", "after"},
			{"GET", "/api/v1/quarantine/fax/123", nil, "invalid", "channel"},
			{"GET", "/api/v1/quarantine/sms/12", nil, "invalid", "address"},
			{"PUT", "/api/v1/quarantine/email/a@example.com", map[string]string{"status": "gone"}, "invalid", "status"},
			{"PUT", "/api/v1/quarantine/email/a@example.com", map[string]string{"reason": "x"}, "invalid", "status"},
			{"PUT", "/api/v1/quarantine/email/a@example.com", map[string]string{"status": "valid", "why": "x"}, "unknown_field", "why"},
			{"PUT", "/api/v1/quarantine/email/nobody", map[string]string{"status": "valid"}, "invalid", "address"},
			{"POST", "/api/v1/quarantine/bulk", map[string]any{"changes": []any{}}, "invalid", "changes"},
		} {
			status, resp := e.do(c.method, c.path, admin, c.body)
			errBody, _ := resp["error"].(map[string]any)
			if status != 400 || errBody["code"] != c.code || errBody["field"] != c.field {
				t.Errorf("%s %s: %d %v; want 400 %s on %s", c.method, c.path, status, resp, c.code, c.field)
			}
		}

		// A bulk with one bad entry is refused whole, and the answer names it.
		status, resp = e.do("POST", "/api/v1/quarantine/bulk", admin, map[string]any{"changes": []map[string]string{
			{"channel": "email", "address": "ok@example.com", "status": "quarantine"},
			{"channel": "email", "address": "ok2@example.com", "status": "paused"},
			{"channel": "email", "address": "ok3@example.com", "status": "denylist"},
		}})
		errBody, _ := resp["error"].(map[string]any)
		details, _ := errBody["details"].([]any)
		if status != 400 || errBody["code"] != "invalid_changes" || len(details) != 1 ||
			details[0].(map[string]any)["index"] != float64(1) || details[0].(map[string]any)["field"] != "status" {
			t.Fatalf("bulk with a bad entry: %d %v", status, resp)
		}
		if writes() != before {
			t.Fatalf("refused requests wrote %d rows", writes()-before)
		}
		if status, resp := e.do("GET", "/api/v1/quarantine/email/ok@example.com", admin, nil); resp["entry"].(map[string]any)["status"] != "valid" {
			t.Fatalf("a refused bulk changed an entry: %d %v", status, resp)
		}

		// Administration only: a delivery manager gets a 403 naming the role.
		if _, err := e.auth.CreateUser(context.Background(), audit.System, auth.NewUser{Login: "starter", Password: "starter password", Roles: []string{string(auth.StartDeliveries)}}); err != nil {
			t.Fatal(err)
		}
		tok, _, err := e.auth.CreateToken(context.Background(), audit.System, "starter", "", 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, rt := range quarantineRoutes(&Server{}) {
			path := strings.NewReplacer("{channel}", "email", "{address}", "Ann@example.com").Replace(rt.pattern)
			status, resp := e.do(rt.method, path, tok, map[string]any{})
			if errBody, _ := resp["error"].(map[string]any); status != 403 || !strings.Contains(errBody["message"].(string), `"Administration"`) {
				t.Errorf("%s %s as Start deliveries: %d %v; want 403 naming Administration", rt.method, path, status, resp)
			}
			if status, _ := e.do(rt.method, path, "", nil); status != 401 {
				t.Errorf("%s %s without credentials: %d; want 401", rt.method, path, status)
			}
		}
	})
}

// TestQuarantineBulkAtTheLimit sends the largest bulk accepted, whose body is over the
// default 1 MiB limit, and one change more.
func TestQuarantineBulkAtTheLimit(t *testing.T) {
	e := newQuarantineEnv(t, storetest.New(t, store.SQLite))
	var b strings.Builder
	body := func(n int) string {
		b.Reset()
		b.WriteString(`{"changes": [`)
		for i := range n {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `{"channel": "email", "address": "user%05d@example.com", "status": "denylist", "reason": "list purchased from a broker, removed"}`, i)
		}
		b.WriteString(`]}`)
		return b.String()
	}
	over := body(quarantine.MaxBulkChanges + 1)
	status, resp := e.do("POST", "/api/v1/quarantine/bulk", e.adminToken, over)
	if errBody, _ := resp["error"].(map[string]any); status != 400 || errBody["field"] != "changes" {
		t.Fatalf("%d changes: %d %v; want 400 on changes", quarantine.MaxBulkChanges+1, status, resp)
	}
	full := body(quarantine.MaxBulkChanges)
	if len(full) <= 1<<20 {
		t.Fatalf("the test body is %d bytes; make it larger than the default limit", len(full))
	}
	status, resp = e.do("POST", "/api/v1/quarantine/bulk", e.adminToken, full)
	if status != 200 || resp["changed"] != float64(quarantine.MaxBulkChanges) {
		t.Fatalf("%d changes: %d %v", quarantine.MaxBulkChanges, status, resp)
	}
	var n int
	_ = e.db.Read.QueryRow(`SELECT count(*) FROM quarantine WHERE status = 'denylist'`).Scan(&n)
	if n != quarantine.MaxBulkChanges {
		t.Fatalf("%d entries denylisted, want %d", n, quarantine.MaxBulkChanges)
	}
}
