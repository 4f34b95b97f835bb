package web

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/auth"
	"github.com/heraldhq/herald/internal/channel"
	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/delivery"
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
