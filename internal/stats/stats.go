// Package stats keeps a delivery's KPIs (DESIGN.md §6): live counters in delivery_stats and
// delivery_stats_hourly, moved in the same transactions that change their sources (the sending
// engine's outcome batches, the tracking sink's hit batches), read in O(1) whatever the
// delivery's size, and recomputed exactly from the sending log and the tracking log by Compute
// (the "Compute stats" action) and by the hourly Reconcile.
//
// What a sending-log row counts as:
//
//	delivered       status sent or delivered (accepted by the relay or the provider)
//	hard_bounces    status failed, failure_type hard
//	soft_bounces    status failed, failure_type soft (a soft error that outlived the validity)
//	other_errors    status failed with any other failure type (ignored, unreachable, ...)
//	sent            delivered + hard + soft + other: every row processed
//
// pending, retrying and cancelled rows count nowhere. Opens are unique per row and a click counts
// as an open; human opens leave out opens and clicks the tracking classifier flagged as machine.
package stats

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/problem"
	"github.com/heraldhq/herald/internal/store"
)

// Counters are the figures kept per delivery (and per hour). In a move (Apply) they are
// differences and may be negative.
type Counters struct {
	Delivered   int64
	HardBounces int64
	SoftBounces int64
	OtherErrors int64
	Opens       int64 // unique: rows with an open or a click
	OpensHuman  int64 // unique: rows with an open or a click not flagged machine
	Clicks      int64 // unique: rows with a click
	OptOuts     int64 // unique: rows whose recipient opted out
	Mirror      int64 // unique: rows whose mirror page was viewed
}

// Sent is every processed row: delivered plus bounces and errors.
func (c Counters) Sent() int64 { return c.Delivered + c.BouncesErrors() }

// BouncesErrors is hard plus soft bounces plus other errors.
func (c Counters) BouncesErrors() int64 { return c.HardBounces + c.SoftBounces + c.OtherErrors }

// IsZero reports whether c moves nothing.
func (c Counters) IsZero() bool { return c == Counters{} }

// Add returns c + d.
func (c Counters) Add(d Counters) Counters {
	return Counters{
		Delivered: c.Delivered + d.Delivered, HardBounces: c.HardBounces + d.HardBounces,
		SoftBounces: c.SoftBounces + d.SoftBounces, OtherErrors: c.OtherErrors + d.OtherErrors,
		Opens: c.Opens + d.Opens, OpensHuman: c.OpensHuman + d.OpensHuman, Clicks: c.Clicks + d.Clicks,
		OptOuts: c.OptOuts + d.OptOuts, Mirror: c.Mirror + d.Mirror,
	}
}

// Outcome is what one sending-log row counts as.
type Outcome uint8

// The outcomes of a row. OutcomeNone is a row not (or not yet) processed.
const (
	OutcomeNone Outcome = iota
	OutcomeDelivered
	OutcomeHard
	OutcomeSoft
	OutcomeError
)

// OutcomeOf returns what a row with this status and failure type counts as.
func OutcomeOf(status, failureType string) Outcome {
	switch status {
	case "sent", "delivered":
		return OutcomeDelivered
	case "failed":
		switch failureType {
		case "hard":
			return OutcomeHard
		case "soft":
			return OutcomeSoft
		}
		return OutcomeError
	}
	return OutcomeNone
}

// Move adds to c the change of n rows going from one outcome to another: -n on from, +n on to.
// A row sent and later bounced asynchronously moves from OutcomeDelivered to OutcomeHard.
func (c *Counters) Move(from, to Outcome, n int64) {
	c.bump(from, -n)
	c.bump(to, n)
}

func (c *Counters) bump(o Outcome, n int64) {
	switch o {
	case OutcomeDelivered:
		c.Delivered += n
	case OutcomeHard:
		c.HardBounces += n
	case OutcomeSoft:
		c.SoftBounces += n
	case OutcomeError:
		c.OtherErrors += n
	}
}

// Hour returns the start of t's hour in Unix milliseconds, the key of delivery_stats_hourly.
func Hour(t time.Time) int64 { return t.UnixMilli() - t.UnixMilli()%3_600_000 }

// Apply moves a delivery's live counters by c, and its hourly counters for the hour of at, inside
// tx. The sending engine calls it in each outcome transaction, once per delivery of the batch,
// with the batch's moves summed (Counters.Move per row, from the row's old outcome to its new
// one); the tracking sink calls it for the unique events a batch of hits created. Calling it in
// the transaction that changes the rows is what keeps the counters exact between Computes: they
// commit or roll back together. It takes delivery_stats' row lock on PostgreSQL, so that Compute
// and concurrent moves serialise.
func Apply(ctx context.Context, tx store.Runner, deliveryID int64, at time.Time, c Counters) error {
	if c.IsZero() {
		return nil
	}
	vals := []any{c.Sent(), c.Delivered, c.HardBounces, c.SoftBounces, c.OtherErrors, c.Opens, c.OpensHuman, c.Clicks, c.OptOuts, c.Mirror}
	if _, err := tx.ExecContext(ctx, addStatsSQL,
		append(append([]any{deliveryID}, vals...), at.UnixMilli())...); err != nil {
		return fmt.Errorf("move the counters of delivery %d: %w", deliveryID, err)
	}
	if _, err := tx.ExecContext(ctx, addHourlySQL,
		append(append([]any{deliveryID}, vals...), Hour(at))...); err != nil {
		return fmt.Errorf("move the hourly counters of delivery %d: %w", deliveryID, err)
	}
	return nil
}

// counterColumns are the counters of delivery_stats and delivery_stats_hourly, in the order
// Apply binds them.
var counterColumns = []string{"sent", "delivered", "hard_bounces", "soft_bounces", "other_errors",
	"opens", "opens_human", "clicks", "optouts", "mirror"}

// The upserts Apply runs, built once.
var (
	addStatsSQL  = addCountersSQL("delivery_stats", "updated_at", "delivery_id")
	addHourlySQL = addCountersSQL("delivery_stats_hourly", "hour", "delivery_id, hour")
)

// ApplySQL returns the statements Apply runs, for a caller that prepares them once.
func ApplySQL() []string { return []string{addStatsSQL, addHourlySQL} }

// addCountersSQL is the upsert that adds the counters to table's row: parameters are
// delivery_id, the counters, then extra (updated_at, which replaces, or hour, part of the key).
func addCountersSQL(table, extra, key string) string {
	cols := "delivery_id, " + strings.Join(counterColumns, ", ") + ", " + extra
	params := make([]string, len(counterColumns)+2)
	for i := range params {
		params[i] = "$" + strconv.Itoa(i+1)
	}
	sets := make([]string, 0, len(counterColumns)+1)
	for _, c := range counterColumns {
		sets = append(sets, c+" = "+table+"."+c+" + excluded."+c)
	}
	if extra == "updated_at" {
		sets = append(sets, "updated_at = excluded.updated_at")
	}
	return "INSERT INTO " + table + " (" + cols + ") VALUES (" + strings.Join(params, ", ") + ")" +
		" ON CONFLICT (" + key + ") DO UPDATE SET " + strings.Join(sets, ", ")
}

// KPIs are a delivery's figures as the API shows them (DESIGN.md §9, the kpis object). Rates are
// percentages with two decimals: delivered and bounce rates over sent, the others over delivered;
// a rate over zero is 0.
type KPIs struct {
	ToDeliver       int64      `json:"to_deliver"`
	Sent            int64      `json:"sent"`
	Delivered       int64      `json:"delivered"`
	BouncesErrors   int64      `json:"bounces_errors"`
	HardBounces     int64      `json:"hard_bounces"`
	SoftBounces     int64      `json:"soft_bounces"`
	OtherErrors     int64      `json:"other_errors"`
	Opens           int64      `json:"opens"`
	OpensHuman      int64      `json:"opens_human"`
	Clicks          int64      `json:"clicks"`
	OptOuts         int64      `json:"optouts"`
	Mirror          int64      `json:"mirror"`
	DeliveredRate   float64    `json:"delivered_rate"`
	BounceErrorRate float64    `json:"bounce_error_rate"`
	HardBounceRate  float64    `json:"hard_bounce_rate"`
	SoftBounceRate  float64    `json:"soft_bounce_rate"`
	OpenRate        float64    `json:"open_rate"`
	OpenHumanRate   float64    `json:"open_human_rate"`
	ClickRate       float64    `json:"click_rate"`
	OptOutRate      float64    `json:"optout_rate"`
	MirrorRate      float64    `json:"mirror_rate"`
	ComputedAt      *time.Time `json:"computed_at"`
}

// NewKPIs derives the KPIs from the counters, the preparation's to-deliver count and the time of
// the last Compute (zero when never computed).
func NewKPIs(toDeliver int64, c Counters, computedAt time.Time) KPIs {
	sent := c.Sent()
	k := KPIs{
		ToDeliver: toDeliver, Sent: sent, Delivered: c.Delivered, BouncesErrors: c.BouncesErrors(),
		HardBounces: c.HardBounces, SoftBounces: c.SoftBounces, OtherErrors: c.OtherErrors,
		Opens: c.Opens, OpensHuman: c.OpensHuman, Clicks: c.Clicks, OptOuts: c.OptOuts, Mirror: c.Mirror,
		DeliveredRate: Rate(c.Delivered, sent), BounceErrorRate: Rate(c.BouncesErrors(), sent),
		HardBounceRate: Rate(c.HardBounces, sent), SoftBounceRate: Rate(c.SoftBounces, sent),
		OpenRate: Rate(c.Opens, c.Delivered), OpenHumanRate: Rate(c.OpensHuman, c.Delivered),
		ClickRate: Rate(c.Clicks, c.Delivered), OptOutRate: Rate(c.OptOuts, c.Delivered),
		MirrorRate: Rate(c.Mirror, c.Delivered),
	}
	if !computedAt.IsZero() {
		t := computedAt.UTC()
		k.ComputedAt = &t
	}
	return k
}

// Rate is n over of as a percentage rounded to two decimals, and 0 when of is 0.
func Rate(n, of int64) float64 {
	if of == 0 {
		return 0
	}
	return math.Round(float64(n)*10000/float64(of)) / 100
}

// Service reads, computes and reconciles KPIs.
type Service struct {
	db    *store.DB
	clock clock.Clock
	log   *slog.Logger
}

// NewService returns a Service over db.
func NewService(db *store.DB, clk clock.Clock, log *slog.Logger) *Service {
	if log == nil {
		log = slog.Default()
	}
	return &Service{db: db, clock: clk, log: log}
}

// Read returns a delivery's KPIs from its live counters: two primary-key reads, whatever the
// delivery's size. A delivery nothing was counted for yet has zero figures.
func (s *Service) Read(ctx context.Context, deliveryID int64) (KPIs, error) {
	var toDeliver int64
	var c Counters
	var computed sql.NullInt64
	err := s.db.Read.QueryRowContext(ctx, `SELECT d.to_deliver, COALESCE(s.delivered, 0), COALESCE(s.hard_bounces, 0),
		COALESCE(s.soft_bounces, 0), COALESCE(s.other_errors, 0), COALESCE(s.opens, 0), COALESCE(s.opens_human, 0),
		COALESCE(s.clicks, 0), COALESCE(s.optouts, 0), COALESCE(s.mirror, 0), s.computed_at
		FROM deliveries d LEFT JOIN delivery_stats s ON s.delivery_id = d.id WHERE d.id = $1`, deliveryID).
		Scan(&toDeliver, &c.Delivered, &c.HardBounces, &c.SoftBounces, &c.OtherErrors, &c.Opens, &c.OpensHuman,
			&c.Clicks, &c.OptOuts, &c.Mirror, &computed)
	if errors.Is(err, sql.ErrNoRows) {
		return KPIs{}, problem.NotFoundf("there is no delivery with id %d", deliveryID)
	}
	if err != nil {
		return KPIs{}, fmt.Errorf("read the KPIs of delivery %d: %w", deliveryID, err)
	}
	return NewKPIs(toDeliver, c, clock.FromMillis(computed.Int64)), nil
}

// HourlyRow is one hour of a delivery's counters.
type HourlyRow struct {
	Hour time.Time
	Counters
}

// Hourly returns a delivery's hourly counters, oldest first, for charts.
func (s *Service) Hourly(ctx context.Context, deliveryID int64) ([]HourlyRow, error) {
	rows, err := s.db.Read.QueryContext(ctx, `SELECT hour, delivered, hard_bounces, soft_bounces, other_errors,
		opens, opens_human, clicks, optouts, mirror FROM delivery_stats_hourly WHERE delivery_id = $1 ORDER BY hour`, deliveryID)
	if err != nil {
		return nil, fmt.Errorf("read the hourly figures of delivery %d: %w", deliveryID, err)
	}
	defer rows.Close()
	var out []HourlyRow
	for rows.Next() {
		var h int64
		var c Counters
		if err := rows.Scan(&h, &c.Delivered, &c.HardBounces, &c.SoftBounces, &c.OtherErrors, &c.Opens,
			&c.OpensHuman, &c.Clicks, &c.OptOuts, &c.Mirror); err != nil {
			return nil, fmt.Errorf("read the hourly figures of delivery %d: %w", deliveryID, err)
		}
		out = append(out, HourlyRow{Hour: time.UnixMilli(h).UTC(), Counters: c})
	}
	return out, rows.Err()
}
