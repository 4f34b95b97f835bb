package tracking

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/problem"
	"github.com/heraldhq/herald/internal/store"
)

// Page sizes of the log listings: the default, and the most one page may hold.
const (
	DefaultPageSize = 100
	MaxPageSize     = 1000
)

// Event is one row of a delivery's tracking log, as the API lists it.
type Event struct {
	ID    int64  `json:"id"`
	Kind  string `json:"kind"`
	LogID int64  `json:"log_id"`
	// Link is the link index of a click; nil for the other kinds.
	Link *int64 `json:"link"`
	// URL is the clicked link's URL as the delivery's content holds it (personalised links show
	// their template); empty for the other kinds.
	URL       string    `json:"url,omitempty"`
	At        time.Time `json:"at"`
	UserAgent string    `json:"user_agent"`
	// Machine is true when the hit was classified as a privacy proxy's or a scanner's.
	Machine bool `json:"machine"`
}

// EventPage is one page of a tracking log.
type EventPage struct {
	Events []Event `json:"events"`
	// NextAfter is the cursor of the next page (pass it as after); zero on the last page.
	NextAfter int64 `json:"next_after,omitempty"`
}

// ParseKind returns the Kind stored in the tracking log as name (open, click, mirror, optout),
// or an Invalid problem naming the field kind.
func ParseKind(name string) (Kind, error) {
	for k := KindOpen; k <= KindOptOut; k++ {
		if k.String() == name {
			return k, nil
		}
	}
	return 0, problem.Invalidf("kind", "kind %q is not one of open, click, mirror, optout", name)
}

// ListEvents returns the tracking log of a delivery in id order after the cursor, of one kind
// (the zero Kind lists every kind), at most limit rows (DefaultPageSize when limit is 0 or
// less, at most MaxPageSize). Each page is one range scan of the index (delivery_id, id) or
// (delivery_id, kind, id), so its cost does not grow with the cursor. Click URLs come from the
// delivery's links (TargetSource semantics: tracked_links, else its content). A delivery that
// does not exist is a NotFound problem.
func ListEvents(ctx context.Context, db *store.DB, deliveryID int64, kind Kind, after int64, limit int) (EventPage, error) {
	limit = pageSize(limit)
	args := []any{deliveryID, after}
	q := `SELECT id, kind, log_id, link, at, user_agent, machine FROM tracking_events WHERE delivery_id = $1 AND id > $2`
	if kind != 0 {
		args = append(args, kind.String())
		q += ` AND kind = $3`
	}
	args = append(args, limit+1)
	q += ` ORDER BY id LIMIT $` + strconv.Itoa(len(args))
	rows, err := db.Read.QueryContext(ctx, q, args...)
	if err != nil {
		return EventPage{}, fmt.Errorf("list the tracking log of delivery %d: %w", deliveryID, err)
	}
	defer rows.Close()
	page := EventPage{Events: []Event{}}
	clicks := false
	for rows.Next() {
		var e Event
		var at int64
		if err := rows.Scan(&e.ID, &e.Kind, &e.LogID, &e.Link, &at, &e.UserAgent, &e.Machine); err != nil {
			return EventPage{}, fmt.Errorf("list the tracking log of delivery %d: %w", deliveryID, err)
		}
		e.At = clock.FromMillis(at).UTC()
		clicks = clicks || e.Link != nil
		page.Events = append(page.Events, e)
	}
	if err := rows.Err(); err != nil {
		return EventPage{}, fmt.Errorf("list the tracking log of delivery %d: %w", deliveryID, err)
	}
	if len(page.Events) > limit {
		page.Events = page.Events[:limit]
		page.NextAfter = page.Events[limit-1].ID
	}
	if clicks {
		set, err := NewSQLTargets(db, 0).Targets(ctx, deliveryID)
		if err != nil {
			return EventPage{}, notFoundDelivery(deliveryID, err)
		}
		for i, e := range page.Events {
			if e.Link != nil && *e.Link >= 0 && *e.Link < int64(len(set.Links)) {
				page.Events[i].URL = set.Links[*e.Link].URL
			}
		}
	} else if len(page.Events) == 0 {
		if err := deliveryExists(ctx, db, deliveryID); err != nil {
			return EventPage{}, err
		}
	}
	return page, nil
}

// LinkClicks is one of a delivery's links with its clicks.
type LinkClicks struct {
	Index int    `json:"index"`
	URL   string `json:"url"`
	// Mode is tracked, never, mirror or optout; only tracked links are counted.
	Mode string `json:"mode"`
	// Clicks counts every recorded click; UniqueClicks the recipients who clicked.
	Clicks       int64 `json:"clicks"`
	UniqueClicks int64 `json:"unique_clicks"`
}

// ClicksByLink returns a delivery's links in index order with their total and unique click
// counts. The links are its tracked_links, or its content's when none are stored (a delivery
// not sent yet); the counts are one aggregate query over its clicks. A delivery that does not
// exist is a NotFound problem.
func ClicksByLink(ctx context.Context, db *store.DB, deliveryID int64) ([]LinkClicks, error) {
	set, err := NewSQLTargets(db, 0).Targets(ctx, deliveryID)
	if err != nil {
		return nil, notFoundDelivery(deliveryID, err)
	}
	out := make([]LinkClicks, len(set.Links))
	for i, l := range set.Links {
		out[i] = LinkClicks{Index: i, URL: l.URL, Mode: modeNames[l.Mode]}
	}
	rows, err := db.Read.QueryContext(ctx, `SELECT link, COUNT(*), COUNT(DISTINCT log_id) FROM tracking_events
		WHERE delivery_id = $1 AND kind = 'click' GROUP BY link`, deliveryID)
	if err != nil {
		return nil, fmt.Errorf("count the clicks of delivery %d: %w", deliveryID, err)
	}
	defer rows.Close()
	for rows.Next() {
		var link *int64
		var total, unique int64
		if err := rows.Scan(&link, &total, &unique); err != nil {
			return nil, fmt.Errorf("count the clicks of delivery %d: %w", deliveryID, err)
		}
		if link != nil && *link >= 0 && *link < int64(len(out)) {
			out[*link].Clicks, out[*link].UniqueClicks = total, unique
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("count the clicks of delivery %d: %w", deliveryID, err)
	}
	return out, nil
}

func pageSize(limit int) int {
	if limit <= 0 {
		return DefaultPageSize
	}
	return min(limit, MaxPageSize)
}

// notFoundDelivery turns ErrUnknownDelivery into the NotFound problem the API answers.
func notFoundDelivery(deliveryID int64, err error) error {
	if errors.Is(err, ErrUnknownDelivery) {
		return problem.NotFoundf("there is no delivery with id %d", deliveryID)
	}
	return err
}

func deliveryExists(ctx context.Context, db *store.DB, deliveryID int64) error {
	var n int
	if err := db.Read.QueryRowContext(ctx, `SELECT COUNT(*) FROM deliveries WHERE id = $1`, deliveryID).Scan(&n); err != nil {
		return fmt.Errorf("read delivery %d: %w", deliveryID, err)
	}
	if n == 0 {
		return problem.NotFoundf("there is no delivery with id %d", deliveryID)
	}
	return nil
}
