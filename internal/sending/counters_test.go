package sending

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/audit"
	"github.com/heraldhq/herald/internal/channel/email/smtptest"
	"github.com/heraldhq/herald/internal/stats"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/store/storetest"
	"github.com/heraldhq/herald/internal/webhook"
)

// TestLiveCountersAndEventsMoveWithOutcomes checks that the write-back moves the delivery's
// live counters (equal to what Compute stats finds in the sending log afterwards) and queues
// sent and failed events for a subscribed webhook, in the same transaction.
func TestLiveCountersAndEventsMoveWithOutcomes(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		f := newFixture(t, db, 5, 84*time.Hour)
		var posted atomic.Int64
		hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { posted.Add(1) }))
		defer hook.Close()
		if _, err := webhook.NewService(db, f.clk, slog.New(slog.DiscardHandler)).Create(ctx, audit.System,
			webhook.NewEndpoint{URL: hook.URL, Events: []string{webhook.Sent, webhook.Failed}}); err != nil {
			t.Fatal(err)
		}
		srv := smtptest.Start(t, smtptest.Options{})
		srv.Script(f.addrs[0], smtptest.Always(smtptest.Action{Code: 550, Enhanced: "5.1.1", Text: "no such user"}))
		srv.Script(f.addrs[1], smtptest.Always(smtptest.Action{Code: 552, Enhanced: "5.2.2", Text: "mailbox full"}))
		drain(t, f.engine(t, transport(t, srv), "n1", 10))

		st := stats.NewService(db, f.clk, slog.New(slog.DiscardHandler))
		live, err := st.Read(ctx, f.id)
		if err != nil {
			t.Fatal(err)
		}
		if live.Delivered != 3 || live.HardBounces != 1 || live.SoftBounces != 1 || live.Sent != 5 {
			t.Fatalf("live counters = %+v; want delivered 3, hard 1, soft 1, sent 5", live)
		}
		computed, err := st.Compute(ctx, f.id)
		if err != nil {
			t.Fatal(err)
		}
		if computed.Delivered != live.Delivered || computed.HardBounces != live.HardBounces || computed.SoftBounces != live.SoftBounces {
			t.Fatalf("live %+v differs from computed %+v", live, computed)
		}
		var queued int
		if err := db.Read.QueryRow(`SELECT count(*) FROM webhook_outbox`).Scan(&queued); err != nil || queued != 5 {
			t.Fatalf("queued webhook events = %d, %v; want 3 sent + 2 failed", queued, err)
		}
		d := &webhook.Dispatcher{DB: db, Clock: f.clk, Log: slog.New(slog.DiscardHandler)}
		if n, err := d.DispatchOnce(ctx); err != nil || n != 5 || posted.Load() != 1 {
			t.Fatalf("dispatched %d events in %d posts, %v", n, posted.Load(), err)
		}
	})
}
