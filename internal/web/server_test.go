package web

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/audience"
	"github.com/heraldhq/herald/internal/audit"
	"github.com/heraldhq/herald/internal/auth"
	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/delivery"
	"github.com/heraldhq/herald/internal/profile"
	"github.com/heraldhq/herald/internal/quarantine"
	"github.com/heraldhq/herald/internal/stats"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/store/storetest"
	"github.com/heraldhq/herald/internal/webhook"
)

// testEnv is a Herald HTTP server over a fresh database, with an administrator.
type testEnv struct {
	t     *testing.T
	db    *store.DB
	auth  *auth.Service
	clock *clock.Fake
	srv   *httptest.Server
	// adminToken is an API token of the administrator.
	adminToken string
}

func newTestEnv(t *testing.T, db *store.DB) *testEnv {
	t.Helper()
	clk := clock.NewFake(time.Date(2026, 5, 4, 10, 0, 0, 0, time.UTC))
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	a := auth.NewService(db, clk, log)
	if _, _, err := a.EnsureAdmin(context.Background(), "admin password 1"); err != nil {
		t.Fatal(err)
	}
	s := NewServer(Deps{DB: db, Auth: a, Clock: clk, Log: log, Config: Config{Version: "test"},
		Quarantine: quarantine.NewService(db, clk, log),
		Profiles:   profile.NewService(db, clk, log),
		Audiences:  audience.NewService(db, clk, log),
		Deliveries: delivery.NewService(db, clk, log),
		Webhooks:   webhook.NewService(db, clk, log),
		Stats:      stats.NewService(db, clk, log),
	})
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	tok, _, err := a.CreateToken(context.Background(), audit.System, "admin", "test", 0)
	if err != nil {
		t.Fatal(err)
	}
	return &testEnv{t: t, db: db, auth: a, clock: clk, srv: srv, adminToken: tok}
}

// do sends a request with an optional bearer token and body, and returns the status and
// decoded JSON body (nil when the body is not JSON).
func (e *testEnv) do(method, path, token string, body any) (int, map[string]any) {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		data, _ := json.Marshal(b)
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, e.srv.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	data, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(data, &out)
	return resp.StatusCode, out
}

func errorOf(body map[string]any) (code, message string) {
	e, _ := body["error"].(map[string]any)
	code, _ = e["code"].(string)
	message, _ = e["message"].(string)
	return code, message
}

// roleRule is what DESIGN.md §3 says a route needs, written here independently of the route
// table so that a wrong role in routes.go fails this test.
var roleRule = map[string]string{
	"GET /healthz":             "public",
	"GET /metrics":             "public",
	"GET /api/v1/openapi.json": "public",
	"GET /t/o/{token}":         "public",
	"GET /t/c/{token}":         "public",
	"GET /t/m/{token}":         "public",
	"GET /t/u/{token}":         "public",
	"POST /t/u/{token}":        "public",
	"POST /api/v1/session":     "public",
	"DELETE /api/v1/session":   "authenticated",
	"GET /api/v1/me":           "authenticated",
	"GET /api/v1/users":        "Administration",
	"POST /api/v1/users":       "Administration",
	"GET /api/v1/users/{id}":   "Administration",
	"PATCH /api/v1/users/{id}": "Administration",
	"GET /api/v1/audit":        "Administration",

	"POST /api/v1/webhooks/bounces/{provider}":    "public",
	"GET /api/v1/webhooks/bounces/generic/secret": "Administration",

	"GET /api/v1/quarantine":                     "Administration",
	"POST /api/v1/quarantine/bulk":               "Administration",
	"GET /api/v1/quarantine/{channel}/{address}": "Administration",
	"PUT /api/v1/quarantine/{channel}/{address}": "Administration",

	"POST /api/v1/profiles":                 "Generic import",
	"GET /api/v1/profiles":                  readers,
	"POST /api/v1/profiles/import":          "Generic import",
	"GET /api/v1/profiles/{id}":             readers,
	"PATCH /api/v1/profiles/{id}":           "Generic import",
	"DELETE /api/v1/profiles/{id}":          "Administration",
	"GET /api/v1/profiles/{id}/export":      "Export",
	"POST /api/v1/audiences":                "Prepare deliveries",
	"GET /api/v1/audiences":                 readers,
	"GET /api/v1/audiences/{id}":            readers,
	"PATCH /api/v1/audiences/{id}":          "Prepare deliveries",
	"DELETE /api/v1/audiences/{id}":         "Prepare deliveries",
	"GET /api/v1/audiences/{id}/count":      readers,
	"GET /api/v1/audiences/{id}/preview":    readers,
	"POST /api/v1/audiences/{id}/members":   "Prepare deliveries",
	"DELETE /api/v1/audiences/{id}/members": "Prepare deliveries",

	"POST /api/v1/deliveries":                    "Prepare deliveries",
	"GET /api/v1/deliveries":                     "authenticated",
	"GET /api/v1/deliveries/{id}":                "authenticated",
	"PATCH /api/v1/deliveries/{id}":              "Prepare deliveries",
	"DELETE /api/v1/deliveries/{id}":             "Prepare deliveries",
	"GET /api/v1/deliveries/{id}/preview":        "Prepare deliveries | Approve deliveries",
	"POST /api/v1/deliveries/{id}/prepare":       "Prepare deliveries",
	"POST /api/v1/deliveries/{id}/proof":         "Prepare deliveries",
	"GET /api/v1/deliveries/{id}/proofs":         "authenticated",
	"POST /api/v1/deliveries/{id}/approvals":     "Approve deliveries",
	"GET /api/v1/deliveries/{id}/approvals":      "authenticated",
	"POST /api/v1/deliveries/{id}/confirm":       "Start deliveries",
	"POST /api/v1/deliveries/{id}/pause":         "Start deliveries",
	"POST /api/v1/deliveries/{id}/resume":        "Start deliveries",
	"POST /api/v1/deliveries/{id}/stop":          "Start deliveries",
	"POST /api/v1/deliveries/{id}/compute-stats": "Prepare deliveries | Approve deliveries | Export",
	"GET /api/v1/deliveries/{id}/events":         "authenticated",
	"GET /api/v1/deliveries/{id}/logs":           "Prepare deliveries | Approve deliveries | Export",
	"GET /api/v1/deliveries/{id}/exclusions":     "Prepare deliveries | Approve deliveries | Export",
	"GET /api/v1/deliveries/{id}/tracking":       "Prepare deliveries | Approve deliveries | Export",
	"GET /api/v1/deliveries/{id}/links":          "Prepare deliveries | Approve deliveries | Export",
	"GET /api/v1/profiles/{id}/history":          readers,
	"GET /api/v1/captured":                       "authenticated",
	"GET /api/v1/captured/{id}":                  "authenticated",
	"GET /api/v1/typology-rules":                 "authenticated",
	"POST /api/v1/typology-rules":                "Administration",
	"PUT /api/v1/typology-rules/{id}":            "Administration",

	"GET /api/v1/event-webhooks":         "Administration",
	"POST /api/v1/event-webhooks":        "Administration",
	"DELETE /api/v1/event-webhooks/{id}": "Administration",
}

// readers may read profiles and audiences: whoever builds, checks, imports or exports targets.
const readers = "Prepare deliveries | Approve deliveries | Generic import | Export"

// allowed is DESIGN.md §3: Administration may do everything; Start deliveries has all of
// Prepare deliveries; other roles grant only themselves.
func allowed(have auth.Role, need string) bool {
	switch need {
	case "public", "authenticated":
		return true
	}
	for _, n := range strings.Split(need, " | ") {
		if have == auth.Administration || string(have) == n ||
			(have == auth.StartDeliveries && n == string(auth.PrepareDeliveries)) {
			return true
		}
	}
	return false
}

func TestRoleMatrix(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		e := newTestEnv(t, db)
		s := NewServer(Deps{DB: db, Auth: e.auth, Clock: e.clock, Log: slog.Default()})
		for _, rt := range s.routes {
			if _, ok := roleRule[rt.method+" "+rt.pattern]; !ok {
				t.Errorf("route %s %s has no row in the role matrix test: add what DESIGN.md §3 says it needs", rt.method, rt.pattern)
			}
		}
		tokens := map[auth.Role]string{}
		for _, role := range auth.AllRoles {
			login := strings.ReplaceAll(strings.ToLower(string(role)), " ", "-")
			if _, err := e.auth.CreateUser(context.Background(), audit.System, auth.NewUser{Login: login, Password: "password for " + login, Roles: []string{string(role)}}); err != nil {
				t.Fatal(err)
			}
			tok, _, err := e.auth.CreateToken(context.Background(), audit.System, login, "", 0)
			if err != nil {
				t.Fatal(err)
			}
			tokens[role] = tok
		}
		if _, err := e.auth.CreateUser(context.Background(), audit.System, auth.NewUser{Login: "nobody", Password: "password for nobody"}); err != nil {
			t.Fatal(err)
		}
		noRole, _, _ := e.auth.CreateToken(context.Background(), audit.System, "nobody", "", 0)

		for key, need := range roleRule {
			method, pattern, _ := strings.Cut(key, " ")
			path := strings.NewReplacer("{id}", "1", "{channel}", "email", "{address}", "a@example.com").Replace(pattern)
			var body any
			if method == "POST" || method == "PATCH" {
				body = map[string]any{}
			}
			status, resp := e.do(method, path, "", body)
			if need == "public" {
				if status == http.StatusUnauthorized || status == http.StatusForbidden {
					t.Errorf("%s without credentials: %d, want it public", key, status)
				}
				continue
			}
			if code, _ := errorOf(resp); status != http.StatusUnauthorized || code != "unauthenticated" {
				t.Errorf("%s without credentials: %d %v, want 401 unauthenticated", key, status, resp)
			}
			for _, role := range auth.AllRoles {
				status, resp := e.do(method, path, tokens[role], body)
				if allowed(role, need) {
					if status == http.StatusUnauthorized || status == http.StatusForbidden {
						t.Errorf("%s as %q: %d %v, want allowed", key, role, status, resp)
					}
					continue
				}
				_, msg := errorOf(resp)
				named := true
				for _, n := range strings.Split(need, " | ") {
					named = named && strings.Contains(msg, `"`+n+`"`)
				}
				if status != http.StatusForbidden || !named {
					t.Errorf("%s as %q: %d %q, want 403 naming %q", key, role, status, msg, need)
				}
			}
			if status, _ := e.do(method, path, noRole, body); need != "authenticated" && status != http.StatusForbidden {
				t.Errorf("%s as a user with no role: %d, want 403", key, status)
			}
		}
	})
}

func TestOpenAPIMatchesRoutes(t *testing.T) {
	var doc struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(openAPIDoc, &doc); err != nil {
		t.Fatalf("openapi.json is not valid JSON: %v", err)
	}
	documented := map[string]string{}
	for path, ops := range doc.Paths {
		for method, raw := range ops {
			if method == "parameters" {
				continue
			}
			var op struct {
				Role string `json:"x-herald-role"`
			}
			if err := json.Unmarshal(raw, &op); err != nil {
				t.Fatalf("%s %s: %v", method, path, err)
			}
			documented[strings.ToUpper(method)+" "+path] = op.Role
		}
	}
	s := NewServer(Deps{Log: slog.Default()})
	served := map[string]string{}
	for _, rt := range s.routes {
		served[rt.method+" "+rt.pattern] = rt.access.describe()
	}
	for k, role := range served {
		if d, ok := documented[k]; !ok {
			t.Errorf("route %s is served but not in openapi.json", k)
		} else if d != role {
			t.Errorf("route %s needs %q but openapi.json says x-herald-role %q", k, role, d)
		}
	}
	for k := range documented {
		if _, ok := served[k]; !ok {
			t.Errorf("openapi.json documents %s, which is not served", k)
		}
	}
}

func TestBadRequestsWriteNothing(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		e := newTestEnv(t, db)
		countUsers := func() int {
			var n int
			if err := db.Read.QueryRow(`SELECT count(*) FROM users`).Scan(&n); err != nil {
				t.Fatal(err)
			}
			return n
		}
		countAudit := func() int {
			var n int
			if err := db.Read.QueryRow(`SELECT count(*) FROM audit_log`).Scan(&n); err != nil {
				t.Fatal(err)
			}
			return n
		}
		users, audits := countUsers(), countAudit()
		cases := []struct {
			name     string
			body     any
			status   int
			code     string
			contains string
		}{
			{"malformed JSON", "{\"login\": \"ann\",\n \"password\": }", 400, "invalid_json", "line 2"},
			{"wrong type", `{"login": 12}`, 400, "invalid_json", `"login"`},
			{"unknown field", `{"login": "ann", "passwd": "x"}`, 400, "unknown_field", "passwd"},
			{"empty body", "", 400, "empty_body", "empty"},
			{"two values", `{} {}`, 400, "invalid_json", "more than one"},
			{"oversized body", `{"login": "` + strings.Repeat("a", 2<<20) + `"}`, 413, "body_too_large", "limit"},
			{"short password", `{"login": "ann", "password": "short"}`, 400, "invalid", "too short"},
			{"unknown role", `{"login": "ann", "password": "long enough pw", "roles": ["Sender"]}`, 400, "invalid", "Start deliveries"},
			{"duplicate login", `{"login": "ADMIN", "password": "long enough pw"}`, 409, "login_taken", "already exists"},
		}
		for _, c := range cases {
			status, resp := e.do("POST", "/api/v1/users", e.adminToken, c.body)
			code, msg := errorOf(resp)
			if status != c.status || code != c.code || !strings.Contains(msg, c.contains) {
				t.Errorf("%s: %d %s %q; want %d %s containing %q", c.name, status, code, msg, c.status, c.code, c.contains)
			}
		}
		if countUsers() != users || countAudit() != audits {
			t.Fatalf("refused requests wrote: users %d→%d, audit %d→%d", users, countUsers(), audits, countAudit())
		}

		// Wrong password: 401, no session; throttled after repeated failures: 429 with Retry-After.
		for i := 0; i < auth.MaxFailuresPerLogin; i++ {
			status, resp := e.do("POST", "/api/v1/session", "", map[string]string{"login": "admin", "password": "wrong password"})
			if code, _ := errorOf(resp); status != 401 || code != "unauthenticated" {
				t.Fatalf("wrong password: %d %v", status, resp)
			}
		}
		status, resp := e.do("POST", "/api/v1/session", "", map[string]string{"login": "admin", "password": "admin password 1"})
		if code, _ := errorOf(resp); status != 429 || code != "too_many_attempts" {
			t.Fatalf("throttled login: %d %v", status, resp)
		}
		var sessions int
		_ = db.Read.QueryRow(`SELECT count(*) FROM sessions`).Scan(&sessions)
		if sessions != 0 {
			t.Fatalf("%d sessions opened by failed logins", sessions)
		}

		// Expired and revoked tokens.
		short, _, _ := e.auth.CreateToken(context.Background(), audit.System, "admin", "", time.Minute)
		if status, _ := e.do("GET", "/api/v1/me", short, nil); status != 200 {
			t.Fatalf("fresh token: %d", status)
		}
		e.clock.Advance(2 * time.Minute)
		if status, resp := e.do("GET", "/api/v1/me", short, nil); status != 401 || !strings.Contains(resp["error"].(map[string]any)["message"].(string), "expired") {
			t.Fatalf("expired token: %d %v", status, resp)
		}
		revoked, info, _ := e.auth.CreateToken(context.Background(), audit.System, "admin", "", 0)
		_ = e.auth.RevokeToken(context.Background(), audit.System, info.ID)
		if status, resp := e.do("GET", "/api/v1/me", revoked, nil); status != 401 || !strings.Contains(resp["error"].(map[string]any)["message"].(string), "revoked") {
			t.Fatalf("revoked token: %d %v", status, resp)
		}
		if status, _ := e.do("GET", "/api/v1/me", "hrd_forged", nil); status != 401 {
			t.Fatalf("forged token: %d", status)
		}
	})
}

func TestSessionCookieFlow(t *testing.T) {
	db := storetest.New(t, store.SQLite)
	e := newTestEnv(t, db)
	jar, _ := cookiejar.New(nil)
	client := &http.Client{Jar: jar}
	post := func(path, origin, body string) *http.Response {
		req, _ := http.NewRequest("POST", e.srv.URL+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if origin != "" {
			req.Header.Set("Origin", origin)
			req.Header.Set("Sec-Fetch-Site", "cross-site")
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	resp := post("/api/v1/session", "", `{"login": "admin", "password": "admin password 1"}`)
	if resp.StatusCode != 200 {
		t.Fatalf("login: %d", resp.StatusCode)
	}
	var c *http.Cookie
	for _, k := range resp.Cookies() {
		if k.Name == sessionCookie {
			c = k
		}
	}
	if c == nil || !c.HttpOnly || c.SameSite != http.SameSiteLaxMode {
		t.Fatalf("session cookie = %+v; want HttpOnly, SameSite=Lax", c)
	}
	me, err := client.Get(e.srv.URL + "/api/v1/me")
	if err != nil || me.StatusCode != 200 {
		t.Fatalf("me with cookie: %v %v", me.StatusCode, err)
	}
	me.Body.Close()
	// A cross-origin write with the cookie is refused, and writes nothing.
	resp = post("/api/v1/users", "https://evil.example", `{"login": "mallory", "password": "long enough password"}`)
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("cross-origin write: %d, want 403", resp.StatusCode)
	}
	if _, err := e.auth.UserByLogin(context.Background(), "mallory"); err == nil {
		t.Fatal("cross-origin write created a user")
	}
	// Log out ends the session.
	req, _ := http.NewRequest("DELETE", e.srv.URL+"/api/v1/session", nil)
	if resp, err := client.Do(req); err != nil || resp.StatusCode != 204 {
		t.Fatalf("logout: %v %v", resp.StatusCode, err)
	}
	req, _ = http.NewRequest("GET", e.srv.URL+"/api/v1/me", nil)
	req.AddCookie(c)
	if resp, _ := http.DefaultClient.Do(req); resp.StatusCode != 401 {
		t.Fatalf("old cookie after logout: %d", resp.StatusCode)
	}
}

func TestAuditAndMetrics(t *testing.T) {
	db := storetest.New(t, store.SQLite)
	e := newTestEnv(t, db)
	status, u := e.do("POST", "/api/v1/users", e.adminToken, map[string]any{"login": "eve", "password": "eve's password", "groups": []string{"Standard users"}})
	if status != 201 {
		t.Fatalf("create: %d %v", status, u)
	}
	roles, _ := u["roles"].([]any)
	if !slices.Contains(roles, any("Start deliveries")) || !slices.Contains(roles, any("Workflow")) {
		t.Fatalf("Standard users roles not granted: %v", roles)
	}
	status, page := e.do("GET", "/api/v1/audit?object_type=user&action=user.create&limit=1", e.adminToken, nil)
	entries, _ := page["entries"].([]any)
	if status != 200 || len(entries) != 1 {
		t.Fatalf("audit: %d %v", status, page)
	}
	first := entries[0].(map[string]any)
	if first["object_id"] != "2" || first["actor"].(map[string]any)["name"] != "admin" || first["after"] == nil {
		t.Fatalf("audit entry = %v", first)
	}
	if status, _ := e.do("GET", "/api/v1/audit?limit=x", e.adminToken, nil); status != 400 {
		t.Fatalf("bad limit: %d", status)
	}
	resp, err := http.Get(e.srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `herald_http_requests_total{code="201",route="POST /api/v1/users"} 1`) {
		t.Fatalf("metrics lack the request counter:\n%.2000s", body)
	}
	if status, resp := e.do("GET", "/api/v1/nothing", e.adminToken, nil); status != 404 || resp["error"] == nil {
		t.Fatalf("unknown API path: %d %v", status, resp)
	}
}
