package sending

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/problem"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/tracking"
)

// Page sizes of the log listings: the default, and the most one page may hold.
const (
	DefaultPageSize = 100
	MaxPageSize     = 1000
)

// LogStatuses are the sending-log statuses a listing may filter on.
var LogStatuses = []string{"pending", "sending", "sent", "delivered", "retrying", "failed", "cancelled"}

// LogsConfig is what Logs needs beyond the database.
type LogsConfig struct {
	// Links builds the mirror-page URLs of a profile's history; nil leaves them out.
	Links *tracking.Links
}

// Logs reads the sending log for the API: a delivery's log and a profile's history. It holds
// no state but its configuration and is safe for concurrent use.
type Logs struct {
	db  *store.DB
	cfg LogsConfig
}

// NewLogs returns the sending-log reader over db.
func NewLogs(db *store.DB, cfg LogsConfig) *Logs {
	return &Logs{db: db, cfg: cfg}
}

// LogFilter selects rows of a delivery's sending log. Zero fields do not filter.
type LogFilter struct {
	// Status is one of LogStatuses.
	Status string
	// Reason keeps the rows whose failure reason starts with it (case-sensitive).
	Reason string
	// Domain keeps the rows whose address is at that domain (case-insensitive; a leading @ is
	// allowed); subdomains are not included.
	Domain string
}

// LogEntry is one row of a delivery's sending log.
type LogEntry struct {
	ID        int64  `json:"id"`
	ProfileID int64  `json:"profile_id"`
	Address   string `json:"address"`
	Status    string `json:"status"`
	Attempts  int64  `json:"attempts"`
	// FailureType is hard or soft, FailureReason the classified reason and the server's text.
	FailureType   *string `json:"failure_type"`
	FailureReason *string `json:"failure_reason"`
	SMTPCode      *int64  `json:"smtp_code"`
	EnhancedCode  *string `json:"enhanced_code"`
	// Ambiguous is true when the message may have been sent twice (a lease expired mid-send).
	Ambiguous    bool       `json:"ambiguous"`
	SentAt       *time.Time `json:"sent_at"`
	FirstOpenAt  *time.Time `json:"first_open_at"`
	FirstClickAt *time.Time `json:"first_click_at"`
}

// LogPage is one page of a delivery's sending log.
type LogPage struct {
	Entries []LogEntry `json:"entries"`
	// NextAfter is the cursor of the next page (pass it as after); zero on the last page.
	NextAfter int64 `json:"next_after,omitempty"`
}

// List returns the sending log of a delivery in id order after the cursor, filtered by f, at
// most limit rows (DefaultPageSize when limit is 0 or less, at most MaxPageSize). Each page is
// one range scan of the index (delivery_id, id), or (delivery_id, status, id) with a status,
// from the cursor; the reason and domain filters are checked on the rows scanned, so a rare
// reason or domain reads more rows per page, but never more on a later page. An unknown
// delivery is a NotFound problem, a bad filter an Invalid one.
func (l *Logs) List(ctx context.Context, deliveryID int64, f LogFilter, after int64, limit int) (LogPage, error) {
	limit = pageSize(limit)
	args := []any{deliveryID, after}
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	q := `SELECT id, profile_id, address, ` + statusSQL(l.db.Engine, "sending_log", "$1") + `, attempts, failure_type, failure_reason,
		smtp_code, enhanced_code, ambiguous, sent_at, first_open_at, first_click_at FROM sending_log WHERE delivery_id = $1 AND id > $2`
	if f.Status != "" {
		if !slices.Contains(LogStatuses, f.Status) {
			return LogPage{}, problem.Invalidf("status", "status %q is not one of %s", f.Status, strings.Join(LogStatuses, ", "))
		}
		q += ` AND ` + statusIs(l.db.Engine, "sending_log", "$1", f.Status, arg)
	}
	if f.Reason != "" {
		// substr, not LIKE: the same case-sensitive prefix on both engines, with no wildcards to escape.
		q += ` AND substr(failure_reason, 1, ` + arg(utf8.RuneCountInString(f.Reason)) + `) = ` + arg(f.Reason)
	}
	if f.Domain != "" {
		d := strings.ToLower(strings.TrimPrefix(strings.TrimSpace(f.Domain), "@"))
		if d == "" || strings.ContainsAny(d, "@ ") {
			return LogPage{}, problem.Invalidf("domain", "domain %q is not a domain name (example.com)", f.Domain)
		}
		q += ` AND lower(address) LIKE ` + arg("%@"+likeEscaper.Replace(d)) + ` ESCAPE '\'`
	}
	q += ` ORDER BY id LIMIT ` + arg(limit+1)
	rows, err := l.db.Read.QueryContext(ctx, q, args...)
	if err != nil {
		return LogPage{}, fmt.Errorf("list the sending log of delivery %d: %w", deliveryID, err)
	}
	defer rows.Close()
	page := LogPage{Entries: []LogEntry{}}
	for rows.Next() {
		var e LogEntry
		var sent, open, click sql.NullInt64
		if err := rows.Scan(&e.ID, &e.ProfileID, &e.Address, &e.Status, &e.Attempts, &e.FailureType, &e.FailureReason,
			&e.SMTPCode, &e.EnhancedCode, &e.Ambiguous, &sent, &open, &click); err != nil {
			return LogPage{}, fmt.Errorf("list the sending log of delivery %d: %w", deliveryID, err)
		}
		e.SentAt, e.FirstOpenAt, e.FirstClickAt = timeOf(sent), timeOf(open), timeOf(click)
		page.Entries = append(page.Entries, e)
	}
	if err := rows.Err(); err != nil {
		return LogPage{}, fmt.Errorf("list the sending log of delivery %d: %w", deliveryID, err)
	}
	if len(page.Entries) > limit {
		page.Entries = page.Entries[:limit]
		page.NextAfter = page.Entries[limit-1].ID
	}
	if len(page.Entries) == 0 {
		if err := exists(ctx, l.db, "deliveries", "delivery", deliveryID); err != nil {
			return LogPage{}, err
		}
	}
	return page, nil
}

// The filters of a profile's history.
const (
	// HistoryReceived keeps the messages sent (status sent or delivered).
	HistoryReceived = "received"
	// HistoryOpened keeps the messages opened (a click counts as an open).
	HistoryOpened = "opened"
	// HistoryClicked keeps the messages with a click.
	HistoryClicked = "clicked"
)

// historyFilters are the conditions of the history filters, over sending_log s.
var historyFilters = map[string]string{
	HistoryReceived: `s.status IN ('sent', 'delivered')`,
	HistoryOpened:   `s.first_open_at IS NOT NULL`,
	HistoryClicked:  `s.first_click_at IS NOT NULL`,
}

// HistoryEntry is one message sent, or to be sent, to a profile: its sending-log row with
// the delivery it belongs to and its tracking counts.
type HistoryEntry struct {
	// LogID is the sending-log row's id, the cursor of the history.
	LogID         int64      `json:"log_id"`
	DeliveryID    int64      `json:"delivery_id"`
	DeliveryName  string     `json:"delivery_name"`
	Channel       string     `json:"channel"`
	Address       string     `json:"address"`
	Status        string     `json:"status"`
	FailureType   *string    `json:"failure_type"`
	FailureReason *string    `json:"failure_reason"`
	SentAt        *time.Time `json:"sent_at"`
	FirstOpenAt   *time.Time `json:"first_open_at"`
	FirstClickAt  *time.Time `json:"first_click_at"`
	// Opens and Clicks count the tracking log's open and click events of the row, machine ones
	// included.
	Opens  int64 `json:"opens"`
	Clicks int64 `json:"clicks"`
	// MirrorURL is the message's mirror page, for email messages sent when Logs has Links.
	MirrorURL string `json:"mirror_url,omitempty"`
}

// HistoryPage is one page of a profile's history.
type HistoryPage struct {
	Entries []HistoryEntry `json:"entries"`
	// NextAfter is the cursor of the next page (pass it as after); zero on the last page.
	NextAfter int64 `json:"next_after,omitempty"`
}

// History returns every message of every delivery sent to a profile, in sending-log id order
// (the order deliveries were prepared) after the cursor, keeping only those filter names
// (HistoryReceived, HistoryOpened, HistoryClicked; empty keeps all), at most limit rows
// (DefaultPageSize when limit is 0 or less, at most MaxPageSize). A page is a range scan of the
// sending log's profile index from the cursor and, per row returned, two counts over the
// tracking log's (log_id, id) index. An unknown profile is a NotFound problem, an unknown
// filter an Invalid one.
func (l *Logs) History(ctx context.Context, profileID int64, filter string, after int64, limit int) (HistoryPage, error) {
	limit = pageSize(limit)
	q := `SELECT s.id, s.delivery_id, d.name, d.channel, s.address, ` + statusSQL(l.db.Engine, "s", "") + `, s.failure_type, s.failure_reason,
		s.sent_at, s.first_open_at, s.first_click_at,
		(SELECT COUNT(*) FROM tracking_events e WHERE e.log_id = s.id AND e.kind = 'open'),
		(SELECT COUNT(*) FROM tracking_events e WHERE e.log_id = s.id AND e.kind = 'click')
		FROM sending_log s JOIN deliveries d ON d.id = s.delivery_id
		WHERE s.profile_id = $1 AND s.id > $2`
	if filter != "" {
		cond, ok := historyFilters[filter]
		if !ok {
			return HistoryPage{}, problem.Invalidf("filter", "filter %q is not one of %s, %s, %s", filter, HistoryReceived, HistoryOpened, HistoryClicked)
		}
		q += ` AND ` + cond
	}
	q += ` ORDER BY s.id LIMIT $3`
	rows, err := l.db.Read.QueryContext(ctx, q, profileID, after, limit+1)
	if err != nil {
		return HistoryPage{}, fmt.Errorf("read the history of profile %d: %w", profileID, err)
	}
	defer rows.Close()
	page := HistoryPage{Entries: []HistoryEntry{}}
	for rows.Next() {
		var e HistoryEntry
		var sent, open, click sql.NullInt64
		if err := rows.Scan(&e.LogID, &e.DeliveryID, &e.DeliveryName, &e.Channel, &e.Address, &e.Status, &e.FailureType,
			&e.FailureReason, &sent, &open, &click, &e.Opens, &e.Clicks); err != nil {
			return HistoryPage{}, fmt.Errorf("read the history of profile %d: %w", profileID, err)
		}
		e.SentAt, e.FirstOpenAt, e.FirstClickAt = timeOf(sent), timeOf(open), timeOf(click)
		if l.cfg.Links != nil && e.Channel == "email" && e.SentAt != nil {
			if r, err := l.cfg.Links.Recipient(e.LogID, e.DeliveryID); err == nil {
				e.MirrorURL = r.Mirror()
			}
		}
		page.Entries = append(page.Entries, e)
	}
	if err := rows.Err(); err != nil {
		return HistoryPage{}, fmt.Errorf("read the history of profile %d: %w", profileID, err)
	}
	if len(page.Entries) > limit {
		page.Entries = page.Entries[:limit]
		page.NextAfter = page.Entries[limit-1].LogID
	}
	if len(page.Entries) == 0 {
		if err := exists(ctx, l.db, "profiles", "profile", profileID); err != nil {
			return HistoryPage{}, err
		}
	}
	return page, nil
}

// likeEscaper escapes LIKE's wildcards and its escape character, '\'.
var likeEscaper = strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`)

func pageSize(limit int) int {
	if limit <= 0 {
		return DefaultPageSize
	}
	return min(limit, MaxPageSize)
}

func timeOf(ms sql.NullInt64) *time.Time {
	if !ms.Valid {
		return nil
	}
	t := clock.FromMillis(ms.Int64).UTC()
	return &t
}

// exists answers a NotFound problem naming noun when table has no row with the id. table is
// a constant of this file, never input.
func exists(ctx context.Context, db *store.DB, table, noun string, id int64) error {
	var n int
	if err := db.Read.QueryRowContext(ctx, `SELECT COUNT(*) FROM `+table+` WHERE id = $1`, id).Scan(&n); err != nil {
		return fmt.Errorf("read %s %d: %w", noun, id, err)
	}
	if n == 0 {
		return problem.NotFoundf("there is no %s with id %d", noun, id)
	}
	return nil
}
