package tracking

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/store/storetest"
)

// BenchmarkSQLSink measures the database cost of one tracking hit: batches of 5,000 opens and
// clicks on random rows of a 10,000-recipient delivery, as the Recorder writes them under
// `herald bench track`. Reported per hit.
func BenchmarkSQLSink(b *testing.B) {
	for _, eng := range storetest.Engines() {
		b.Run(string(eng), func(b *testing.B) {
			ctx := context.Background()
			db := storetest.New(b, eng)
			deliveryID, logIDs, links, err := benchTrackDelivery(ctx, db, 10_000)
			if err != nil {
				b.Fatal(err)
			}
			sink := NewSQLSink(db, NewClassifier(ClassifierOptions{}))
			const batch = 5000
			hits := make([]Hit, batch)
			rng := rand.New(rand.NewPCG(1, 2))
			b.ResetTimer()
			for b.Loop() {
				for i := range hits {
					k := rng.IntN(len(logIDs))
					ref := Ref{LogID: logIDs[k], DeliveryID: deliveryID, Kind: KindOpen, Link: NoLink}
					if i%2 == 1 {
						ref.Kind, ref.Link = KindClick, uint16(links[k%len(links)])
					}
					hits[i] = Hit{Ref: ref, Kind: ref.Kind, At: time.Now(), UserAgent: "Mozilla/5.0 (X11; Linux x86_64) wrk"}
				}
				if err := sink.WriteHits(ctx, hits); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch)/1e3, "µs/hit")
		})
	}
}
