package sending

import (
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/store/storetest"
)

// scansLog matches a plan step that reads the whole sending log.
var scansLog = regexp.MustCompile(`(?m)^SCAN (sending_log|s)( |$)`)

// TestInFlightStatementsUseAnIndex: the statements that find rows in flight across all
// deliveries (lease renewal, recovery of expired leases, a restart's reclaim) run every few
// seconds, and those of a batch run for every batch, so on SQLite, which keeps no index of
// rows in flight, none of them may scan the sending log: rows left in status sending by an
// older version are found through the status index delivery by delivery, the rows of a batch
// in flight by id.
func TestInFlightStatementsUseAnIndex(t *testing.T) {
	db := storetest.New(t, store.SQLite)
	q := queriesFor(store.SQLite)
	_, list := q.idSet([]int64{1, 2, 3}, 3)
	for _, c := range []struct {
		name, stmt string
		args       []any
		want       string
	}{
		{"recoverExpired", q.recoverExpired, []any{1}, "SEARCH sending_log USING INDEX sending_log_status"},
		{"reclaimInFlight", q.reclaimInFlight, []any{"node"}, "SEARCH sending_log USING INDEX sending_log_status"},
		{"renew", q.renew, []any{1, 2, "node"}, "SCAN in_flight"},
		{"pick", q.pick, []any{1, 0, 2, 500}, "SEARCH sending_log USING INDEX sending_log_status"},
		{"markBatch", q.markBatch, []any{"node", 2, list, 1, 1, 3}, "SEARCH s USING INTEGER PRIMARY KEY"},
		{"recoverBatchRows", recoverBatchRowsSQL(`lease_until < $1`), []any{1}, "SEARCH sending_log USING INTEGER PRIMARY KEY"},
		{"writeSentIDs", q.writeSentIDs, []any{"[1]", "node", 250, "2.0.0", 1}, "SEARCH sending_log USING INTEGER PRIMARY KEY"},
		{"writeSent", q.writeSent, []any{`["1 q"]`, "node", 250, "2.0.0", 1}, "SEARCH sending_log USING INTEGER PRIMARY KEY"},
		{"writeBack", q.writeBack, []any{`[{"id":1}]`, "node"}, "SEARCH sending_log USING INTEGER PRIMARY KEY"},
	} {
		plan := storetest.QueryPlan(t, db, c.stmt, c.args...)
		if testing.Verbose() {
			t.Logf("%s:\n%s", c.name, plan)
		}
		if !strings.Contains(plan, c.want) || scansLog.MatchString(plan) {
			t.Errorf("%s: want %q and no scan of the sending log, got:\n%s", c.name, c.want, plan)
		}
	}
}

// TestStatusStatementsUseTheUnsentIndex: SQLite's status index leaves sent rows out (migration
// 00014), and SQLite uses a partial index only for a statement that states its condition. The
// queue, the settling of a delivery, its progress and its log listing by status must still find
// their rows through an index, never by reading the delivery's every row.
func TestStatusStatementsUseTheUnsentIndex(t *testing.T) {
	db := storetest.New(t, store.SQLite)
	q := queriesFor(store.SQLite)
	param := func(args *[]any) func(any) string {
		return func(v any) string {
			*args = append(*args, v)
			return "$" + strconv.Itoa(len(*args))
		}
	}
	type check struct {
		name, stmt string
		args       []any
		want       string
	}
	checks := []check{
		{"pick", q.pick, []any{1, 0, 2, 500}, "USING INDEX sending_log_status"},
		{"expire", q.expire, []any{1, 2}, "USING INDEX sending_log_status"},
		{"waiting", q.waiting, []any{1, 2}, "USING COVERING INDEX sending_log_status"},
		{"anySent", q.anySent, []any{1}, "USING INDEX sending_log_sent"},
		{"inFlightCount", inFlightCountSQL(store.SQLite), []any{1}, "USING COVERING INDEX sending_log_status"},
		// At start and every tenth of a lease: over every delivery, never a scan of the log.
		{"recoverExpired", q.recoverExpired, []any{2}, "USING INDEX sending_log_status"},
		{"reclaimInFlight", q.reclaimInFlight, []any{"node"}, "USING INDEX sending_log_status"},
		{"releaseOwn", q.releaseOwn, []any{"node"}, "USING INDEX sending_log_status"},
	}
	for _, st := range LogStatuses {
		args := []any{1, 0}
		stmt := `SELECT id FROM sending_log WHERE delivery_id = $1 AND id > $2 AND ` +
			statusIs(store.SQLite, "sending_log", "$1", st, param(&args)) + ` ORDER BY id LIMIT 50`
		want := "INDEX sending_log_status"
		switch st {
		case "sent":
			want = "INDEX sending_log_delivery (delivery_id=? AND id>?)" // most of a delivery's rows
		case "sending":
			want = "INDEX sending_log_delivery (delivery_id=? AND id=?" // each row in flight, by id
		}
		checks = append(checks, check{"list " + st, stmt, args, want})
	}
	for _, c := range checks {
		plan := storetest.QueryPlan(t, db, c.stmt, c.args...)
		if testing.Verbose() {
			t.Logf("%s:\n%s", c.name, plan)
		}
		if !strings.Contains(plan, c.want) || scansLog.MatchString(plan) {
			t.Errorf("%s: want %q and no scan of the sending log, got:\n%s", c.name, c.want, plan)
		}
	}
}
