package web

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/heraldhq/herald/internal/audit"
	"github.com/heraldhq/herald/internal/auth"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/store/storetest"
)

func (e *testEnv) postCSV(token, body, contentType string) (int, map[string]any) {
	e.t.Helper()
	req, _ := http.NewRequest("POST", e.srv.URL+"/api/v1/profiles/import", strings.NewReader(body))
	req.Header.Set("Content-Type", contentType)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var out map[string]any
	_ = json.Unmarshal(data, &out)
	return resp.StatusCode, out
}

func (e *testEnv) tokenWith(login string, roles ...string) string {
	e.t.Helper()
	if _, err := e.auth.CreateUser(context.Background(), audit.System, auth.NewUser{Login: login, Password: "password of " + login, Roles: roles}); err != nil {
		e.t.Fatal(err)
	}
	tok, _, err := e.auth.CreateToken(context.Background(), audit.System, login, "", 0)
	if err != nil {
		e.t.Fatal(err)
	}
	return tok
}

func TestProfilesAndAudiencesOverHTTP(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		e := newTestEnv(t, db)
		importer := e.tokenWith("importer", "Generic import")
		marketer := e.tokenWith("marketer", "Prepare deliveries")

		csv := "email,external_id,city,age:number\n" +
			"ann@example.com,a1,Paris,31\n" +
			"bad-address,b2,Lyon,40\n" +
			"cyd@example.com,c3,Paris,x\n" +
			"dan@example.org,d4,Oslo,50,extra\n" +
			"eve@example.org,e5,Oslo,19\n"
		status, res := e.postCSV(importer, csv, "text/csv")
		if status != 200 || res["read"] != 5.0 || res["created"] != 2.0 || res["rejected"] != 3.0 {
			t.Fatalf("import = %d %v", status, res)
		}
		errs := res["errors"].([]any)
		lines := []float64{}
		for _, e := range errs {
			lines = append(lines, e.(map[string]any)["line"].(float64))
		}
		if len(lines) != 3 || lines[0] != 3 || lines[1] != 4 || lines[2] != 5 {
			t.Fatalf("error lines = %v, want 3, 4, 5: %v", lines, errs)
		}
		if col := errs[1].(map[string]any)["column"]; col != 4.0 {
			t.Fatalf("age error column = %v, want 4", col)
		}
		if status, _ := e.postCSV(importer, csv, "application/json"); status != 400 {
			t.Fatalf("JSON content type: %d", status)
		}
		if status, _ := e.postCSV(marketer, csv, "text/csv"); status != 403 {
			t.Fatalf("import without Generic import: %d", status)
		}
		if status, res := e.postCSV(importer, "name,city\nx,y\n", "text/csv"); status != 400 || !strings.Contains(res["error"].(map[string]any)["message"].(string), "email or external_id") {
			t.Fatalf("bad header: %d %v", status, res)
		}

		// Single upsert: 201 then 200.
		status, p := e.do("POST", "/api/v1/profiles", importer, map[string]any{"email": "Fay@Example.com", "attributes": map[string]any{"city": "Bern"}})
		if status != 201 {
			t.Fatalf("create: %d %v", status, p)
		}
		status, p2 := e.do("POST", "/api/v1/profiles", importer, map[string]any{"email": "Fay@EXAMPLE.COM", "phone": "+41 79 123 45 67"})
		if status != 200 || p2["id"] != p["id"] || p2["phone"] != "+41791234567" {
			t.Fatalf("upsert: %d %v", status, p2)
		}
		if status, body := e.do("POST", "/api/v1/profiles", importer, map[string]any{"email": "nope"}); status != 400 || body["error"].(map[string]any)["field"] != "email" {
			t.Fatalf("bad email: %d %v", status, body)
		}

		// List with a filter; a syntax error names its position.
		status, page := e.do("GET", "/api/v1/profiles?filter="+urlq(`attributes.city = "paris" or email_domain = "example.org"`), marketer, nil)
		if status != 200 || len(page["profiles"].([]any)) != 2 {
			t.Fatalf("filtered list: %d %v", status, page)
		}
		status, body := e.do("GET", "/api/v1/profiles?filter="+urlq(`city ==`), marketer, nil)
		if status != 400 || !strings.Contains(body["error"].(map[string]any)["message"].(string), "at 1:") {
			t.Fatalf("bad filter: %d %v", status, body)
		}

		// Audiences.
		status, a := e.do("POST", "/api/v1/audiences", marketer, map[string]any{"name": "Oslo", "filter": `attributes.city = "Oslo"`})
		if status != 201 {
			t.Fatalf("create audience: %d %v", status, a)
		}
		aid := itoa64(a["id"].(float64))
		if status, c := e.do("GET", "/api/v1/audiences/"+aid+"/count", marketer, nil); status != 200 || c["count"] != 1.0 {
			t.Fatalf("count: %d %v", status, c)
		}
		if status, pv := e.do("GET", "/api/v1/audiences/"+aid+"/preview", marketer, nil); status != 200 || len(pv["profiles"].([]any)) != 1 {
			t.Fatalf("preview: %d %v", status, pv)
		}
		status, l := e.do("POST", "/api/v1/audiences", marketer, map[string]any{"name": "VIP", "kind": "list", "profile_ids": []any{p["id"]}})
		if status != 201 {
			t.Fatalf("list: %d %v", status, l)
		}
		if status, c := e.do("POST", "/api/v1/audiences/"+itoa64(l["id"].(float64))+"/members", marketer, map[string]any{"profile_ids": []int{999}}); status != 400 {
			t.Fatalf("unknown member: %d %v", status, c)
		}

		// Export and erase.
		pid := itoa64(p["id"].(float64))
		exporter := e.tokenWith("exporter", "Export")
		status, ex := e.do("GET", "/api/v1/profiles/"+pid+"/export", exporter, nil)
		if status != 200 || ex["profile"].(map[string]any)["email"] != "Fay@EXAMPLE.COM" || len(ex["audiences"].([]any)) != 1 {
			t.Fatalf("export: %d %v", status, ex)
		}
		if status, _ := e.do("DELETE", "/api/v1/profiles/"+pid, importer, nil); status != 403 {
			t.Fatalf("erase without Administration: %d", status)
		}
		if status, _ := e.do("DELETE", "/api/v1/profiles/"+pid, e.adminToken, nil); status != 204 {
			t.Fatalf("erase: %d", status)
		}
		if status, got := e.do("GET", "/api/v1/profiles/"+pid, marketer, nil); status != 200 || got["email"] != nil || got["erased"] != true {
			t.Fatalf("after erase: %d %v", status, got)
		}
	})
}

func urlq(s string) string { return url.QueryEscape(s) }

func itoa64(f float64) string { return strconv.FormatInt(int64(f), 10) }
