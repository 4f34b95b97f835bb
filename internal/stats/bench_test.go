package stats_test

import (
	"context"
	"runtime"
	"testing"

	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/stats"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/store/storetest"
)

// BenchmarkCompute recomputes a 1,000,000-recipient delivery on SQLite: every 50th row failed,
// a third of the rows opened (one in ten of those through a machine), one in twenty clicked.
// The target is at most 1 s per Compute. Besides the time it reports the CPU time of the thread
// running Compute (cpu-ns/op, Linux), steadier than the time on a shared machine; SQLite runs on
// the caller's goroutine, so that is nearly all of Compute's work.
func BenchmarkCompute(b *testing.B) {
	const rows = 1_000_000
	db := storetest.New(b, store.SQLite)
	d := newDelivery(b, db, rows)
	ms := clock.Millis(t0)
	if _, err := db.Write.Exec(`WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1)
		INSERT INTO sending_log (delivery_id, profile_id, address, status, failure_type, sent_at)
		SELECT $2, i, 'x', CASE WHEN i % 50 = 0 THEN 'failed' ELSE 'sent' END,
		CASE WHEN i % 100 = 0 THEN 'hard' WHEN i % 50 = 0 THEN 'soft' END, $3 + i % 7200000 FROM n`, rows, d, ms); err != nil {
		b.Fatal(err)
	}
	if _, err := db.Write.Exec(`INSERT INTO tracking_events (delivery_id, log_id, kind, at, machine)
		SELECT delivery_id, id, CASE WHEN id % 20 = 0 THEN 'click' ELSE 'open' END, sent_at + 3600000, id % 30 = 0
		FROM sending_log WHERE delivery_id = $1 AND id % 3 = 0`, d); err != nil {
		b.Fatal(err)
	}
	svc := stats.NewService(db, clock.NewFake(t0), nil)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cpu0, cpuOK := threadCPU()
	b.ResetTimer()
	for b.Loop() {
		k, err := svc.Compute(context.Background(), d)
		if err != nil {
			b.Fatal(err)
		}
		if k.Sent != rows || k.Opens != rows/3 {
			b.Fatalf("figures %+v", k)
		}
	}
	if cpu1, ok := threadCPU(); ok && cpuOK {
		b.ReportMetric(float64(cpu1-cpu0)/float64(b.N), "cpu-ns/op")
	}
}
