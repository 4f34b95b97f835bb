package stats

import (
	"strings"
	"testing"

	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/store/storetest"
)

// TestComputeSendingCountsOverIndexes: on SQLite, whose status index leaves sent rows out, the
// delivered count is every row of the delivery less the rows of another status, each counted
// over a covering index; no step reads the sending log's table.
func TestComputeSendingCountsOverIndexes(t *testing.T) {
	db := storetest.New(t, store.SQLite)
	got := storetest.QueryPlan(t, db, computeSendingSQLite, 1)
	for _, want := range []string{"COVERING INDEX sending_log_delivery", "COVERING INDEX sending_log_status", "INDEX sending_log_status (delivery_id=? AND status=?)"} {
		if !strings.Contains(got, want) {
			t.Errorf("want %q in the plan:\n%s", want, got)
		}
	}
	if strings.Contains(got, "SCAN sending_log") {
		t.Errorf("a step scans the sending log:\n%s", got)
	}
}
