package webhook_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/audit"
	"github.com/heraldhq/herald/internal/bounce"
	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/store/storetest"
	"github.com/heraldhq/herald/internal/webhook"
)

type receiver struct {
	mu       sync.Mutex
	failNext int
	batches  [][]map[string]any
	headers  []string
	bodies   [][]byte
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failNext > 0 {
		r.failNext--
		http.Error(w, "busy", http.StatusServiceUnavailable)
		return
	}
	body, _ := io.ReadAll(req.Body)
	var in struct {
		Events []map[string]any `json:"events"`
	}
	_ = json.Unmarshal(body, &in)
	r.batches = append(r.batches, in.Events)
	r.headers = append(r.headers, req.Header.Get(webhook.SignatureHeader))
	r.bodies = append(r.bodies, body)
}

func TestOutboxDispatch(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		clk := clock.NewFake(time.Now().Truncate(time.Second))
		log := slog.New(slog.DiscardHandler)
		svc := webhook.NewService(db, clk, log)
		rcv := &receiver{}
		srv := httptest.NewServer(rcv)
		defer srv.Close()
		all, err := svc.Create(ctx, audit.System, webhook.NewEndpoint{URL: srv.URL + "/all", Events: []string{"sent", "opened"}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := svc.Create(ctx, audit.System, webhook.NewEndpoint{URL: srv.URL + "/x", Events: []string{"teleported"}}); err == nil {
			t.Fatal("unknown event type accepted")
		}
		if _, err := svc.Create(ctx, audit.System, webhook.NewEndpoint{URL: srv.URL + "/clicks", Events: []string{"clicked"}}); err != nil {
			t.Fatal(err)
		}
		emit := func(commit bool, events ...webhook.Event) {
			err := db.InTx(ctx, func(tx *sql.Tx) error {
				if err := webhook.Emit(ctx, tx, db.Engine, clk.Now(), events); err != nil {
					return err
				}
				if !commit {
					return errors.New("roll back")
				}
				return nil
			})
			if commit && err != nil {
				t.Fatal(err)
			}
		}
		emit(true, webhook.Event{Type: "sent", DeliveryID: 1, LogID: 10, Address: "a@example.com"},
			webhook.Event{Type: "sent", DeliveryID: 1, LogID: 11, Address: "b@example.com"},
			webhook.Event{Type: "opened", DeliveryID: 1, LogID: 10},
			webhook.Event{Type: "failed", DeliveryID: 1, LogID: 12}) // no endpoint takes failed
		emit(false, webhook.Event{Type: "sent", DeliveryID: 1, LogID: 99}) // rolled back: never sent

		d := &webhook.Dispatcher{DB: db, Clock: clk, Log: log}
		rcv.failNext = 1
		if n, err := d.DispatchOnce(ctx); err != nil || n != 0 {
			t.Fatalf("first dispatch against a failing endpoint: %d %v", n, err)
		}
		if n, _ := d.DispatchOnce(ctx); n != 0 {
			t.Fatalf("retried before its back-off: %d", n)
		}
		clk.Advance(webhook.Backoff(1))
		n, err := d.DispatchOnce(ctx)
		if err != nil || n != 3 {
			t.Fatalf("dispatch after back-off: %d %v", n, err)
		}
		if len(rcv.batches) != 1 || len(rcv.batches[0]) != 3 {
			t.Fatalf("batches = %v", rcv.batches)
		}
		for _, e := range rcv.batches[0] {
			if e["event"].(map[string]any)["log_id"] == 99.0 {
				t.Fatal("an event of a rolled-back transaction was sent")
			}
		}
		// The signature is the one Herald's own generic webhook checks.
		if err := bounce.VerifyGeneric([]byte(all.Secret), rcv.headers[0], rcv.bodies[0], clk.Now()); err != nil {
			t.Fatalf("signature: %v", err)
		}
		if n, _ := d.DispatchOnce(ctx); n != 0 {
			t.Fatalf("delivered events sent again: %d", n)
		}
		// An endpoint that never recovers: events are given up after MaxAge.
		emit(true, webhook.Event{Type: "clicked", DeliveryID: 1, LogID: 10, Data: map[string]any{"url": "https://x.example"}})
		rcv.failNext = 1000
		for i := 1; i <= 8; i++ {
			_, _ = d.DispatchOnce(ctx)
			clk.Advance(webhook.Backoff(i))
		}
		_, _ = d.DispatchOnce(ctx) // over 72 hours after it was queued
		var dead int
		if err := db.Read.QueryRow(`SELECT count(*) FROM webhook_outbox WHERE dead`).Scan(&dead); err != nil || dead != 1 {
			t.Fatalf("dead events = %d, %v", dead, err)
		}
		list, _ := svc.List(ctx)
		if len(list) != 2 || list[0].Secret != "" || len(list[0].Events) != 2 {
			t.Fatalf("list = %+v", list)
		}
		if err := svc.Delete(ctx, audit.System, list[1].ID); err != nil {
			t.Fatal(err)
		}
	})
}

// TestDispatchersOfTwoNodesPostAnEventOnce: while one node's dispatcher is leasing the due
// events (its transaction open), another node's dispatcher must leave them to it, not lease and
// post them too.
func TestDispatchersOfTwoNodesPostAnEventOnce(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		clk := clock.NewFake(time.Now().Truncate(time.Second))
		log := slog.New(slog.DiscardHandler)
		rcv := &receiver{}
		srv := httptest.NewServer(rcv)
		defer srv.Close()
		if _, err := webhook.NewService(db, clk, log).Create(ctx, audit.System, webhook.NewEndpoint{URL: srv.URL, Events: []string{"sent"}}); err != nil {
			t.Fatal(err)
		}
		err := db.InTx(ctx, func(tx *sql.Tx) error {
			return webhook.Emit(ctx, tx, db.Engine, clk.Now(), []webhook.Event{
				{Type: "sent", DeliveryID: 1, LogID: 10}, {Type: "sent", DeliveryID: 1, LogID: 11}})
		})
		if err != nil {
			t.Fatal(err)
		}
		// The first node: reads and leases the events in a transaction still open.
		first, err := db.Write.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if db.Engine == store.Postgres {
			if _, err := first.ExecContext(ctx, `SELECT id FROM webhook_outbox FOR UPDATE`); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := first.ExecContext(ctx, `UPDATE webhook_outbox SET lease_until = $1`, clk.Now().Add(5*time.Minute).UnixMilli()); err != nil {
			t.Fatal(err)
		}
		var n int
		err = storetest.CommitMeanwhile(t, first, func() (err error) {
			n, err = (&webhook.Dispatcher{DB: db, Clock: clk, Log: log}).DispatchOnce(ctx)
			return err
		})
		if err != nil || n != 0 || len(rcv.batches) != 0 {
			t.Fatalf("the second node's dispatcher posted %d events (%v, batches %v) that the first was leasing", n, err, rcv.batches)
		}
	})
}
