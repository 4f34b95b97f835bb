package web

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/audit"
	"github.com/heraldhq/herald/internal/delivery"
	"github.com/heraldhq/herald/internal/quarantine"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/store/storetest"
)

// TestDeliveryLifecycleOverHTTP walks the seed page end to end through the API: a Prepare
// deliveries user creates and prepares; its confirm is refused with the role named; four-eyes
// approvals; a Start deliveries user confirms; an edit after preparation forces preparing
// again; a future contact date waits in scheduled until the clock reaches it.
func TestDeliveryLifecycleOverHTTP(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		e := newTestEnv(t, db)
		ctx := context.Background()
		importer := e.tokenWith("importer", "Generic import")
		author := e.tokenWith("author", "Prepare deliveries", "Approve deliveries")
		approver := e.tokenWith("approver", "Approve deliveries")
		starter := e.tokenWith("starter", "Start deliveries")

		csv := "email,first_name,opt_out_email\n" +
			"ann@example.com,Ann,no\n" +
			"bob@example.com,Bob,no\n" +
			"cyd@example.com,Cyd,yes\n" + // opted out
			"dan@example.com,Dan,no\n" + // quarantined below
			"eve@example.com,Eve,no\n"
		if status, res := e.postCSV(importer, csv, "text/csv"); status != 200 || res["created"] != 5.0 {
			t.Fatalf("import: %d %v", status, res)
		}
		if _, err := quarantine.NewService(db, e.clock, slog.New(slog.DiscardHandler)).Set(ctx, audit.System, quarantine.Email, "dan@example.com", quarantine.StatusQuarantine, "hard bounce"); err != nil {
			t.Fatal(err)
		}
		status, a := e.do("POST", "/api/v1/audiences", author, map[string]any{"name": "All", "filter": `email_domain = "example.com"`})
		if status != 201 {
			t.Fatalf("audience: %d %v", status, a)
		}
		newDelivery := func(name string, schedule map[string]any) string {
			status, d := e.do("POST", "/api/v1/deliveries", author, map[string]any{
				"name": name, "channel": "email", "audience_id": a["id"],
				"content": map[string]any{
					"from_name": "Herald", "from_address": "news@herald.example", "subject": "Hello {{.attributes.first_name}}",
					"html": `<p>Hi {{.attributes.first_name}}</p><a href="https://shop.example/sale">Sale</a> <a href="{{.unsubscribe_url}}">Unsubscribe</a>`,
				},
				"schedule":  schedule,
				"approvals": map[string]any{"content": true, "target": true, "four_eyes": true},
			})
			if status != 201 || d["state"] != "draft" {
				t.Fatalf("create %s: %d %v", name, status, d)
			}
			return itoa64(d["id"].(float64))
		}
		id := newDelivery("Spring sale", nil)

		// Confirm before preparation is refused.
		if status, body := e.do("POST", "/api/v1/deliveries/"+id+"/confirm", starter, nil); status != 409 || body["error"].(map[string]any)["code"] != "not_prepared" {
			t.Fatalf("confirm before prepare: %d %v", status, body)
		}
		status, d := e.do("POST", "/api/v1/deliveries/"+id+"/prepare", author, nil)
		if status != 200 || d["state"] != "ready" {
			t.Fatalf("prepare: %d %v", status, d)
		}
		counts := d["counts"].(map[string]any)
		if counts["targeted"] != 5.0 || counts["to_deliver"] != 3.0 || counts["excluded"] != 2.0 {
			t.Fatalf("counts = %v; want targeted 5 = to deliver 3 + excluded 2 (opted out, quarantined)", counts)
		}
		var pending int
		if err := db.Read.QueryRow(`SELECT count(*) FROM sending_log WHERE delivery_id = $1 AND status = 'pending'`, id).Scan(&pending); err != nil || pending != 3 {
			t.Fatalf("pending sending log rows = %d, %v", pending, err)
		}
		if status, pv := e.do("GET", "/api/v1/deliveries/"+id+"/preview?profile_id=1", approver, nil); status != 200 || pv["subject"] != "Hello Ann" {
			t.Fatalf("preview: %d %v", status, pv)
		}

		// The author may not confirm: 403 naming the role.
		status, body := e.do("POST", "/api/v1/deliveries/"+id+"/confirm", author, nil)
		if msg := body["error"].(map[string]any)["message"].(string); status != 403 || !strings.Contains(msg, `"Start deliveries"`) {
			t.Fatalf("author's confirm: %d %v", status, body)
		}
		// Approvals are missing.
		if status, body := e.do("POST", "/api/v1/deliveries/"+id+"/confirm", starter, nil); status != 409 || body["error"].(map[string]any)["code"] != "approval_missing" {
			t.Fatalf("confirm without approvals: %d %v", status, body)
		}
		// Four eyes: the author cannot approve its own delivery.
		status, body = e.do("POST", "/api/v1/deliveries/"+id+"/approvals", author, map[string]any{"kind": "content", "decision": "approve"})
		if status != 403 || body["error"].(map[string]any)["code"] != "four_eyes" {
			t.Fatalf("author approving: %d %v", status, body)
		}
		for _, kind := range []string{"content", "target"} {
			if status, body := e.do("POST", "/api/v1/deliveries/"+id+"/approvals", approver, map[string]any{"kind": kind, "decision": "approve", "comment": "ok"}); status != 200 {
				t.Fatalf("approve %s: %d %v", kind, status, body)
			}
		}
		status, d = e.do("POST", "/api/v1/deliveries/"+id+"/confirm", starter, nil)
		if status != 200 || d["state"] != "sending" {
			t.Fatalf("confirm: %d %v", status, d)
		}
		if status, d := e.do("POST", "/api/v1/deliveries/"+id+"/pause", starter, nil); status != 200 || d["state"] != "paused" {
			t.Fatalf("pause: %d %v", status, d)
		}
		if status, d := e.do("POST", "/api/v1/deliveries/"+id+"/resume", starter, nil); status != 200 || d["state"] != "sending" {
			t.Fatalf("resume: %d %v", status, d)
		}

		// An edit after preparation returns to draft and voids the approvals.
		id2 := newDelivery("Second", nil)
		if status, d := e.do("POST", "/api/v1/deliveries/"+id2+"/prepare", author, nil); status != 200 || d["state"] != "ready" {
			t.Fatalf("prepare 2: %d %v", status, d)
		}
		for _, kind := range []string{"content", "target"} {
			e.do("POST", "/api/v1/deliveries/"+id2+"/approvals", approver, map[string]any{"kind": kind, "decision": "approve"})
		}
		status, d = e.do("PATCH", "/api/v1/deliveries/"+id2, author, map[string]any{"content": map[string]any{
			"from_name": "Herald", "from_address": "news@herald.example", "subject": "Changed", "html": `<p>x</p><a href="{{.unsubscribe_url}}">Unsubscribe</a>`}})
		if status != 200 || d["state"] != "draft" {
			t.Fatalf("edit after preparation: %d %v", status, d)
		}
		if status, body := e.do("POST", "/api/v1/deliveries/"+id2+"/confirm", starter, nil); status != 409 || body["error"].(map[string]any)["code"] != "not_prepared" {
			t.Fatalf("confirm after edit: %d %v", status, body)
		}
		e.do("POST", "/api/v1/deliveries/"+id2+"/prepare", author, nil)
		if status, body := e.do("POST", "/api/v1/deliveries/"+id2+"/confirm", starter, nil); status != 409 || body["error"].(map[string]any)["code"] != "approval_missing" {
			t.Fatalf("old approvals survived the edit: %d %v", status, body)
		}

		// A future contact date waits in scheduled until the clock reaches it.
		when := e.clock.Now().Add(2 * time.Hour)
		id3 := newDelivery("Later", map[string]any{"contact_date": when.Format(time.RFC3339)})
		e.do("POST", "/api/v1/deliveries/"+id3+"/prepare", author, nil)
		for _, kind := range []string{"content", "target"} {
			e.do("POST", "/api/v1/deliveries/"+id3+"/approvals", approver, map[string]any{"kind": kind, "decision": "approve"})
		}
		if status, d := e.do("POST", "/api/v1/deliveries/"+id3+"/confirm", starter, nil); status != 200 || d["state"] != "scheduled" {
			t.Fatalf("confirm scheduled: %d %v", status, d)
		}
		svc := delivery.NewService(db, e.clock, slog.New(slog.DiscardHandler))
		e.clock.Advance(time.Hour)
		if due, _ := svc.DueScheduled(ctx, e.clock.Now()); len(due) != 0 {
			t.Fatalf("started before its contact date: %v", due)
		}
		e.clock.Advance(time.Hour)
		if due, err := svc.DueScheduled(ctx, e.clock.Now()); err != nil || len(due) != 1 {
			t.Fatalf("due at contact date: %v %v", due, err)
		}
		if _, d := e.do("GET", "/api/v1/deliveries/"+id3, starter, nil); d["state"] != "sending" {
			t.Fatalf("scheduled delivery state = %v, want sending", d["state"])
		}

		// Every transition is in the audit log.
		_, page := e.do("GET", "/api/v1/audit?object_type=delivery&object_id="+id, e.adminToken, nil)
		var moves []string
		for _, en := range page["entries"].([]any) {
			m := en.(map[string]any)
			if after, ok := m["after"].(map[string]any); ok && strings.HasPrefix(m["action"].(string), "delivery.") {
				if st, ok := after["state"].(string); ok {
					moves = append(moves, st)
				}
			}
		}
		if len(moves) < 5 {
			t.Fatalf("audited transitions of delivery %s = %v", id, moves)
		}
	})
}
