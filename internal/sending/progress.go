package sending

import (
	"context"
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
	ETASeconds *int64    `json:"eta_seconds"`
	At         time.Time `json:"at"`
}

// ProgressOf computes delivery id's progress at the clock's now, with three index-served
// queries over its sending log.
func ProgressOf(ctx context.Context, db *store.DB, clk clock.Clock, id int64) (Progress, error) {
	now := clk.Now()
	p := Progress{Counts: map[string]int64{}, At: now}
	rows, err := db.Read.QueryContext(ctx, `SELECT status, COUNT(*) FROM sending_log WHERE delivery_id = $1 GROUP BY status`, id)
	if err != nil {
		return p, fmt.Errorf("progress of delivery %d: %w", id, err)
	}
	for rows.Next() {
		var st string
		var n int64
		if err := rows.Scan(&st, &n); err != nil {
			rows.Close()
			return p, fmt.Errorf("progress of delivery %d: %w", id, err)
		}
		p.Counts[st] = n
		p.Total += n
		if st == "sent" || st == "failed" {
			p.Done += n
		}
	}
	rows.Close()
	var recent int64
	if err := db.Read.QueryRowContext(ctx, `SELECT COUNT(*) FROM sending_log WHERE delivery_id = $1 AND sent_at > $2`,
		id, now.Add(-time.Minute).UnixMilli()).Scan(&recent); err != nil {
		return p, fmt.Errorf("progress of delivery %d: %w", id, err)
	}
	if err := db.Read.QueryRowContext(ctx, `SELECT COUNT(*) FROM sending_log WHERE delivery_id = $1 AND status = 'sent' AND ambiguous = TRUE`,
		id).Scan(&p.Ambiguous); err != nil {
		return p, fmt.Errorf("progress of delivery %d: %w", id, err)
	}
	p.Rate = math.Round(float64(recent)/60*100) / 100
	if left := p.Counts["pending"] + p.Counts["sending"]; left > 0 && recent > 0 {
		eta := int64(math.Ceil(float64(left) / (float64(recent) / 60)))
		p.ETASeconds = &eta
	}
	return p, nil
}
