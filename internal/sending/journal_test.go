package sending

import (
	"context"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/store/storetest"
)

// TestMarkLeavesOutTheRowsOfOtherBatches: on SQLite a worker's mark takes the rows it read that
// are in no other batch in flight. It reads only the batches whose id range meets its own, so
// the test marks batches that overlap at one end, that are disjoint, that touch at a single id,
// and beside a batch recorded before batches had ranges, which must always be read.
func TestMarkLeavesOutTheRowsOfOtherBatches(t *testing.T) {
	db := storetest.New(t, store.SQLite)
	f := newFixture(t, db, 14, 84*time.Hour)
	e := f.engine(t, NewCaptureSender(db, f.clk), "n1", 10)
	ids := make([]int64, len(f.addrs))
	for i, a := range f.addrs {
		if err := db.Read.QueryRow(`SELECT id FROM sending_log WHERE delivery_id = $1 AND address = $2`, f.id, a).Scan(&ids[i]); err != nil {
			t.Fatal(err)
		}
	}
	mark := func(from, to int) []int64 {
		t.Helper()
		got, batch, err := e.markBatch(context.Background(), f.id, ids[from:to])
		if err != nil {
			t.Fatal(err)
		}
		if (batch == 0) != (len(got) == 0) {
			t.Fatalf("batch %d for %d rows", batch, len(got))
		}
		return slices.Sorted(maps.Keys(got))
	}
	f.putInFlight(t, "n9", f.clk.Now().Add(time.Hour).UnixMilli(), f.addrs[11], f.addrs[12]) // no range
	for _, c := range []struct {
		name     string
		from, to int
		want     []int64
	}{
		{"first batch", 0, 5, ids[0:5]},
		{"overlapping its end", 2, 8, ids[5:8]},
		{"disjoint", 8, 10, ids[8:10]},
		{"one id, the end of a batch", 4, 5, nil},
		{"one id, the start of a batch", 8, 9, nil},
		{"beside a batch without a range", 10, 14, []int64{ids[10], ids[13]}},
	} {
		if got := mark(c.from, c.to); !slices.Equal(got, c.want) {
			t.Errorf("%s: marked %v, want %v", c.name, got, c.want)
		}
	}
	var ranged int
	if err := db.Read.QueryRow(`SELECT COUNT(*) FROM in_flight WHERE min_id > 0 AND max_id < 9223372036854775807`).Scan(&ranged); err != nil || ranged != 4 {
		t.Fatalf("%d batches with a range, %v; want 4", ranged, err)
	}
}
