package sending

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/heraldhq/herald/internal/channel"
	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/delivery"
	"github.com/heraldhq/herald/internal/quarantine"
	"github.com/heraldhq/herald/internal/store"
)

// acceptSender accepts every message as Postfix does, naming a queue id.
type acceptSender struct{}

func (acceptSender) Send(_ context.Context, msgs []channel.Message, out []channel.Outcome) error {
	for i := range msgs {
		out[i] = channel.Outcome{Status: channel.Sent, Code: 250, Enhanced: "2.0.0", ProviderID: fmt.Sprintf("4Zx%07d", msgs[i].ID)}
	}
	return nil
}
func (acceptSender) Close() error { return nil }

// BenchmarkEngineStep measures the engine's own work per message, without the network: one
// Step (read, render, MIME, in-flight mark, write-back) of a 500-row batch of the delivery
// `herald bench send` sends, on SQLite, with a Sender that accepts every message at once.
// The delivery is set back to pending whenever it has been sent.
//
//	go test -run XXX -bench EngineStep -benchtime 40x -count 5 ./internal/sending/
func BenchmarkEngineStep(b *testing.B) {
	const n = 20000
	ctx := context.Background()
	db, err := store.Open(ctx, filepath.Join(b.TempDir(), "step.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Migrate(ctx); err != nil {
		b.Fatal(err)
	}
	clk := clock.Real{}
	log := slog.New(slog.DiscardHandler)
	deliveries := delivery.NewService(db, clk, log)
	var res BenchResult
	d, err := benchDelivery(ctx, db, deliveries, n, &res, func(string, ...any) {})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := deliveries.Confirm(ctx, d.starter, d.id); err != nil {
		b.Fatal(err)
	}
	links, rp := testTracking(b)
	e, err := New(Config{DB: db, Deliveries: deliveries, Quarantine: quarantine.NewService(db, clk, log), Sender: acceptSender{},
		Links: links, ReturnPath: rp, NodeID: "bench", Clock: clk, Logger: log})
	if err != nil {
		b.Fatal(err)
	}
	w := newWorker(e)
	sent := 0
	for b.Loop() {
		k, err := e.step(ctx, w)
		if err != nil {
			b.Fatal(err)
		}
		if k == 0 {
			b.StopTimer()
			if _, err := db.Write.ExecContext(ctx, `UPDATE sending_log SET status = 'pending', attempts = 0, sent_at = NULL,
				smtp_code = NULL, enhanced_code = NULL, provider_id = NULL WHERE delivery_id = $1`, d.id); err != nil {
				b.Fatal(err)
			}
			if _, err := db.Write.ExecContext(ctx, `UPDATE deliveries SET state = 'sending' WHERE id = $1`, d.id); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			continue
		}
		sent += k
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/1000/float64(max(sent, 1)), "µs/msg")
}
