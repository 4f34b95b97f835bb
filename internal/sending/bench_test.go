package sending

import (
	"context"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/channel/email/smtptest"
	"github.com/heraldhq/herald/internal/delivery"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/store/storetest"
)

// BenchmarkSendToSink measures the engine end to end on SQLite: claim, render with tracking,
// MIME, pipelined SMTP to the in-process sink, write-back, for 5,000 recipients per run.
func BenchmarkSendToSink(b *testing.B) {
	const n = 5000
	for b.Loop() {
		b.StopTimer()
		db := storetest.New(b, store.SQLite)
		f := newFixture(&testing.T{}, db, n, 84*time.Hour)
		srv := smtptest.Start(b, smtptest.Options{Sink: true})
		tr := transport(&testing.T{}, srv)
		e := f.engine(&testing.T{}, tr, "bench", DefaultBatchSize)
		e.cfg.Workers = 4
		b.StartTimer()
		start := time.Now()
		if err := e.Start(context.Background()); err != nil {
			b.Fatal(err)
		}
		for f.stateB(b) != delivery.Finished {
			time.Sleep(2 * time.Millisecond)
		}
		e.Stop()
		b.ReportMetric(n/time.Since(start).Seconds(), "msgs/s")
		if srv.Count() != n {
			b.Fatalf("sink got %d, want %d", srv.Count(), n)
		}
	}
}

func (f *fixture) stateB(b *testing.B) delivery.State {
	d, err := f.del.Get(context.Background(), f.id)
	if err != nil {
		b.Fatal(err)
	}
	return d.State
}
