package profile_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"testing"

	"github.com/heraldhq/herald/internal/audit"
	"github.com/heraldhq/herald/internal/profile"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/store/storetest"
)

// BenchmarkImport imports a generated CSV of HERALD_BENCH_ROWS rows (default 100,000; the
// figure in docs/benchmarks.md uses 1,000,000) into a fresh database and reports rows/s.
func BenchmarkImport(b *testing.B) {
	rows := 100_000
	if v := os.Getenv("HERALD_BENCH_ROWS"); v != "" {
		rows, _ = strconv.Atoi(v)
	}
	for _, eng := range storetest.Engines() {
		b.Run(string(eng), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				db := storetest.New(b, eng)
				s, _ := newService(&testing.T{}, db)
				b.StartTimer()
				res, err := s.Import(context.Background(), audit.System, profile.GenerateCSV(rows, 1), profile.ImportOptions{})
				if err != nil {
					b.Fatal(err)
				}
				if res.Created != rows {
					b.Fatalf("created %d of %d", res.Created, rows)
				}
				b.ReportMetric(float64(rows)/res.Seconds, "rows/s")
			}
		})
	}
}

var _ = fmt.Sprint
var _ io.Reader
var _ store.Engine
