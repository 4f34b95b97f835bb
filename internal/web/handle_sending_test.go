package web

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/auth"
	"github.com/heraldhq/herald/internal/channel"
	"github.com/heraldhq/herald/internal/channel/email"
	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/delivery"
	"github.com/heraldhq/herald/internal/quarantine"
	"github.com/heraldhq/herald/internal/sending"
	"github.com/heraldhq/herald/internal/stats"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/store/storetest"
)

// TestSendingHandlers calls the capture and live-progress handlers directly (the lead adds
// their routes to routes.go).
func TestSendingHandlers(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		clk := clock.NewFake(time.Date(2026, 5, 4, 10, 0, 0, 0, time.UTC))
		log := slog.New(slog.DiscardHandler)
		s := NewServer(Deps{DB: db, Clock: clk, Log: log, Deliveries: delivery.NewService(db, clk, log), Stats: stats.NewService(db, clk, log)})
		var did int64
		if err := db.Write.QueryRow(`INSERT INTO deliveries (name, channel, state, validity_seconds, created_at, updated_at)
			VALUES ('d', 'email', 'finished', 60, 0, 0) RETURNING id`).Scan(&did); err != nil {
			t.Fatal(err)
		}
		cs := sending.NewCaptureSender(db, clk)
		out := make([]channel.Outcome, 1)
		if err := cs.Send(ctx, []channel.Message{{To: "a@example.org", From: "b@example.org",
			Data: []byte("From: Shop <b@example.org>\r\nSubject: Hello\r\n\r\nbody\r\n")}}, out); err != nil || out[0].Status != channel.Sent {
			t.Fatal(err, out)
		}

		call := func(h handlerFunc, target string, pathID string) *httptest.ResponseRecorder {
			r := httptest.NewRequest("GET", target, nil)
			if pathID != "" {
				r.SetPathValue("id", pathID)
			}
			w := httptest.NewRecorder()
			h(w, r, auth.Principal{})
			return w
		}
		w := call(s.handleListCaptured, "/api/v1/captured?limit=10", "")
		var page struct {
			Messages []struct {
				ID      int64  `json:"id"`
				Subject string `json:"subject"`
			} `json:"messages"`
		}
		if err := json.Unmarshal(w.Body.Bytes(), &page); err != nil || w.Code != 200 || len(page.Messages) != 1 || page.Messages[0].Subject != "Hello" {
			t.Fatalf("list: %d %s", w.Code, w.Body)
		}
		w = call(s.handleGetCaptured, "/", jsonID(page.Messages[0].ID))
		if w.Code != 200 || w.Header().Get("Content-Type") != "message/rfc822" || !strings.Contains(w.Body.String(), "Subject: Hello") {
			t.Fatalf("get: %d %s", w.Code, w.Body)
		}
		if w = call(s.handleGetCaptured, "/", "999"); w.Code != http.StatusNotFound {
			t.Fatalf("get a missing message: %d", w.Code)
		}
		// A finished delivery: one progress event, then the stream ends.
		w = call(s.handleDeliveryEvents, "/", jsonID(did))
		body, _ := io.ReadAll(w.Body)
		if w.Code != 200 || w.Header().Get("Content-Type") != "text/event-stream" ||
			strings.Count(string(body), "event: progress\n") != 1 || !strings.Contains(string(body), `"state":"finished"`) {
			t.Fatalf("events: %d %q", w.Code, body)
		}
		if w = call(s.handleDeliveryEvents, "/", "999"); w.Code != http.StatusNotFound {
			t.Fatalf("events of a missing delivery: %d", w.Code)
		}
		w = call(s.handleGetDelivery, "/", jsonID(did))
		if b := w.Body.String(); w.Code != 200 || !strings.Contains(b, `"progress":{"counts":{}`) || !strings.Contains(b, `"state":"finished"`) || !strings.Contains(b, `"kpis":{`) {
			t.Fatalf("delivery with progress and KPIs: %d %s", w.Code, b)
		}
	})
}

func jsonID(id int64) string { b, _ := json.Marshal(id); return string(b) }

// TestProgressSaysWhyNothingGoesOut: while no relay can be used, a sending delivery's progress
// says so, with the relay's error, in GET /api/v1/deliveries/{id} and the live events; a
// finished one says nothing of it.
func TestProgressSaysWhyNothingGoesOut(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		clk := clock.NewFake(time.Date(2026, 5, 4, 10, 0, 0, 0, time.UTC))
		log := slog.New(slog.DiscardHandler)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		closed := ln.Addr().String()
		ln.Close()
		tr, err := email.New(email.Options{Relays: []email.Relay{{Addr: closed, TLS: email.TLSNone}}, HelloName: "herald.test"})
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()
		deliveries := delivery.NewService(db, clk, log)
		eng, err := sending.New(sending.Config{DB: db, Deliveries: deliveries, Quarantine: quarantine.NewService(db, clk, log), Sender: tr, Clock: clk, Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		s := NewServer(Deps{DB: db, Clock: clk, Log: log, Deliveries: deliveries, Stats: stats.NewService(db, clk, log), Sending: eng})
		ids := map[string]int64{}
		for _, st := range []string{"sending", "finished"} {
			var id int64
			if err := db.Write.QueryRow(`INSERT INTO deliveries (name, channel, state, validity_seconds, created_at, updated_at)
				VALUES ('d', 'email', $1, 60, 0, 0) RETURNING id`, st).Scan(&id); err != nil {
				t.Fatal(err)
			}
			ids[st] = id
		}
		get := func(h handlerFunc, id int64) string {
			r := httptest.NewRequest("GET", "/", nil).WithContext(ctx)
			r.SetPathValue("id", jsonID(id))
			w := httptest.NewRecorder()
			h(w, r, auth.Principal{})
			return w.Body.String()
		}
		if b := get(s.handleGetDelivery, ids["sending"]); strings.Contains(b, `"waiting"`) {
			t.Fatalf("before any relay failed: %s", b)
		}
		out := make([]channel.Outcome, 1)
		_ = tr.Send(ctx, []channel.Message{{To: "a@example.org", From: "b@example.org", Data: []byte("x\r\n")}}, out)
		if out[0].Status != channel.Deferred {
			t.Fatalf("a send to a closed port: %+v", out[0])
		}
		if b := get(s.handleGetDelivery, ids["sending"]); !strings.Contains(b, `"waiting":"no SMTP relay available: `) || !strings.Contains(b, "connection refused") {
			t.Errorf("sending delivery, relay down: %s", b)
		}
		// The live events of a sending delivery stream until the client leaves: cancel early.
		ectx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		r := httptest.NewRequest("GET", "/", nil).WithContext(ectx)
		r.SetPathValue("id", jsonID(ids["sending"]))
		w := httptest.NewRecorder()
		s.handleDeliveryEvents(w, r, auth.Principal{})
		if !strings.Contains(w.Body.String(), `"waiting":"no SMTP relay available: `) {
			t.Errorf("events, relay down: %s", w.Body.String())
		}
		if b := get(s.handleGetDelivery, ids["finished"]); strings.Contains(b, `"waiting"`) {
			t.Errorf("finished delivery: %s", b)
		}
	})
}
