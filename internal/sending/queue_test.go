package sending

import (
	"strings"
	"testing"

	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/store/storetest"
)

// TestInFlightStatementsUseAnIndex: the statements that find rows in flight across all
// deliveries (lease renewal, recovery of expired leases, a restart's reclaim) run every few
// seconds, so on SQLite, which keeps no index of rows in flight, they must search the status
// index delivery by delivery and never scan the sending log.
func TestInFlightStatementsUseAnIndex(t *testing.T) {
	db := storetest.New(t, store.SQLite)
	q := queriesFor(store.SQLite)
	for name, stmt := range map[string]string{"renew": q.renew, "recoverExpired": q.recoverExpired, "reclaimInFlight": q.reclaimInFlight} {
		rows, err := db.Read.Query(`EXPLAIN QUERY PLAN `+stmt, 1, 2, "node")
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var plan []string
		for rows.Next() {
			var id, parent, unused int
			var detail string
			if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
				t.Fatal(err)
			}
			plan = append(plan, detail)
		}
		rows.Close()
		all := strings.Join(plan, "\n")
		if !strings.Contains(all, "SEARCH sending_log USING INDEX sending_log_status") || strings.Contains(all, "SCAN sending_log") {
			t.Errorf("%s does not search the status index:\n%s", name, all)
		}
	}
}
