package sending

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/store"
)

// Progress is where a delivery's send stands, for GET /api/v1/deliveries/{id} (as its
// progress object) and the live events.
type Progress struct {
	// Counts are the sending-log rows by status (pending, sending, sent, failed ...).
	Counts map[string]int64 `json:"counts"`
	// Total is the number of rows; Done those sent or failed.
	Total int64 `json:"total"`
	Done  int64 `json:"done"`
	// Ambiguous counts rows that may have been sent twice.
	Ambiguous int64 `json:"ambiguous"`
	// Rate is the messages sent per second over the last minute.
	Rate float64 `json:"rate"`
	// ETASeconds is the time left at Rate for the rows still pending or in flight; nil when
	// nothing is being sent.
	ETASeconds *int64 `json:"eta_seconds"`
	// Waiting, while the delivery is sending, says why nothing goes out: no relay can be used
	// (Engine.Waiting); "" (absent) otherwise.
	Waiting string    `json:"waiting,omitempty"`
	At      time.Time `json:"at"`
}

// ProgressOf computes delivery id's progress at the clock's now. Its cost does not grow with
// the delivery: totals come from the delivery's prepared count and its live counters (moved in
// the transactions that change the rows), and the only rows read are those in flight, those
// sent in the last minute and the ambiguous ones, each through an index that holds just them.
func ProgressOf(ctx context.Context, db *store.DB, clk clock.Clock, id int64) (Progress, error) {
	now := clk.Now()
	p := Progress{Counts: map[string]int64{}, At: now}
	var delivered, failed, inFlight, recent int64
	err := db.Read.QueryRowContext(ctx, `SELECT d.to_deliver, COALESCE(s.delivered, 0),
		COALESCE(s.hard_bounces, 0) + COALESCE(s.soft_bounces, 0) + COALESCE(s.other_errors, 0)
		FROM deliveries d LEFT JOIN delivery_stats s ON s.delivery_id = d.id WHERE d.id = $1`, id).Scan(&p.Total, &delivered, &failed)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return p, fmt.Errorf("progress of delivery %d: %w", id, err)
	}
	queries := []struct {
		q   string
		dst *int64
	}{
		{inFlightCountSQL(db.Engine), &inFlight},
		{`SELECT COUNT(*) FROM sending_log WHERE delivery_id = $1 AND sent_at > $2`, &recent},
		// noIndex keeps SQLite on sending_log_ambiguous instead of the status index, which
		// would read every sent row.
		{`SELECT COUNT(*) FROM sending_log WHERE delivery_id = $1 AND ambiguous AND ` + queriesFor(db.Engine).noIndex("status") + ` = 'sent'`, &p.Ambiguous},
	}
	for i, q := range queries {
		args := []any{id}
		if i == 1 {
			args = append(args, now.Add(-time.Minute).UnixMilli())
		}
		if err := db.Read.QueryRowContext(ctx, q.q, args...).Scan(q.dst); err != nil {
			return p, fmt.Errorf("progress of delivery %d: %w", id, err)
		}
	}
	p.Done = delivered + failed
	pending := max(p.Total-p.Done-inFlight, 0)
	for st, n := range map[string]int64{"pending": pending, "sending": inFlight, "sent": delivered, "failed": failed} {
		if n > 0 {
			p.Counts[st] = n
		}
	}
	p.Rate = math.Round(float64(recent)/60*100) / 100
	if left := pending + inFlight; left > 0 && recent > 0 {
		eta := int64(math.Ceil(float64(left) / (float64(recent) / 60)))
		p.ETASeconds = &eta
	}
	return p, nil
}
