// Package quarantine keeps, for every address on every channel, whether Herald may still
// write to it: valid, erroneous, quarantine or denylist, with an error count and a history of
// every change.
//
// The rules are Adobe Campaign Standard's (DESIGN.md §5). A hard bounce puts the address in
// quarantine at once. A soft bounce makes it erroneous and counts one error, but at most one
// per day: a soft error less than SoftErrorInterval after the last counted one changes
// nothing. At QuarantineAfter counted errors the address goes to quarantine. An erroneous
// address returns to valid after a successful send, or in the nightly Cleanup when its last
// counted error is over ErroneousExpiry old (MailboxFullExpiry when that error was a full
// mailbox). Quarantine and denylist never return by themselves; a spam complaint or an SMS
// STOP puts the address on the denylist. Only an administrator's Set moves an address back.
//
// The rules (RecordHard, RecordSoft, RecordSuccess, Denylist) run inside the caller's
// transaction, so a sending-log outcome and the quarantine change it causes commit together.
// They lock the address's row; a caller that records many addresses in one transaction
// should do so in a stable order (sorted by address) so that two PostgreSQL transactions
// cannot deadlock.
//
// Addresses are keyed as NormalizeAddress returns them: for email the local part as given
// and the domain lower-cased (the same key as profiles.email_key), for SMS E.164, for push the
// token as is. An address with no row is valid.
//
// Preparation excludes quarantined and denylisted addresses; erroneous ones are still sent
// to. Set-based preparation joins against the table with the condition ExcludeSQL returns:
//
//	NOT EXISTS (SELECT 1 FROM quarantine WHERE quarantine.channel = 'email'
//	    AND quarantine.address = p.email_key AND quarantine.status IN ('quarantine', 'denylist'))
//
// which the primary key (channel, address) answers with one index probe per profile.
// Callers holding a list of addresses instead use Blocked.
package quarantine

import (
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/problem"
	"github.com/heraldhq/herald/internal/profile"
	"github.com/heraldhq/herald/internal/store"
)

// The ACS rules' figures.
const (
	// SoftErrorInterval is how long after a counted soft error the next one counts.
	SoftErrorInterval = 24 * time.Hour
	// QuarantineAfter is the number of counted soft errors that quarantines an address.
	QuarantineAfter = 5
	// ErroneousExpiry is how old the last counted soft error of an erroneous address must be
	// for Cleanup to return it to valid.
	ErroneousExpiry = 10 * 24 * time.Hour
	// MailboxFullExpiry replaces ErroneousExpiry when the last counted error was a full mailbox.
	MailboxFullExpiry = 30 * 24 * time.Hour
)

// Limits on input.
const (
	// MaxBulkChanges is the most changes one SetBulk accepts.
	MaxBulkChanges = 10000
	// MaxReasonLength is the longest reason, in characters: Set refuses longer ones, the
	// rules cut bounce texts to it.
	MaxReasonLength = 500
	// MaxPushTokenLength is the longest push token accepted.
	MaxPushTokenLength = 4096
	// MaxListLimit is the largest page List returns; the default is 100.
	MaxListLimit = 1000
	// MaxHistory is the most history rows History returns (the newest ones).
	MaxHistory = 1000
)

// MailboxFullPrefix starts the stored last_reason of an error counted as a full mailbox:
// it is how Cleanup knows to wait MailboxFullExpiry rather than ErroneousExpiry.
const MailboxFullPrefix = "mailbox full: "

// SystemActor names the rules in the history.
const SystemActor = "system"

// Channel is a delivery channel.
type Channel string

// The channels.
const (
	Email Channel = "email"
	SMS   Channel = "sms"
	Push  Channel = "push"
)

// Channels lists every channel.
var Channels = []Channel{Email, SMS, Push}

// ParseChannel returns the channel named s, or an Invalid problem listing the channels.
func ParseChannel(s string) (Channel, error) {
	c := Channel(strings.ToLower(strings.TrimSpace(s)))
	if slices.Contains(Channels, c) {
		return c, nil
	}
	return "", problem.Invalidf("channel", "unknown channel %q; the channels are email, sms and push", s)
}

// Status is where an address stands.
type Status string

// The statuses.
const (
	// StatusValid addresses are sent to.
	StatusValid Status = "valid"
	// StatusErroneous addresses have soft errors but are still sent to.
	StatusErroneous Status = "erroneous"
	// StatusQuarantine addresses are excluded until an administrator releases them.
	StatusQuarantine Status = "quarantine"
	// StatusDenylist addresses (spam complaint, SMS STOP, invalid push token) are excluded
	// until an administrator releases them.
	StatusDenylist Status = "denylist"
)

// Statuses lists every status.
var Statuses = []Status{StatusValid, StatusErroneous, StatusQuarantine, StatusDenylist}

// ParseStatus returns the status named s, or an Invalid problem listing the statuses.
func ParseStatus(s string) (Status, error) {
	st := Status(strings.ToLower(strings.TrimSpace(s)))
	if slices.Contains(Statuses, st) {
		return st, nil
	}
	return "", problem.Invalidf("status", "unknown status %q; the statuses are valid, erroneous, quarantine and denylist", s)
}

// Blocks reports whether preparation excludes an address with this status.
func (s Status) Blocks() bool { return s == StatusQuarantine || s == StatusDenylist }

// NormalizeAddress returns the key under which an address is kept, or an Invalid problem
// saying what is wrong with it. Email: the profile's email key (profile.NormalizeEmail: the
// local part as given, the domain lower-cased). SMS: E.164 (profile.NormalizePhone). Push: the token as is (no spaces, at most MaxPushTokenLength bytes).
func NormalizeAddress(channel Channel, addr string) (string, error) {
	switch channel {
	case Email:
		// The same key as profiles.email_key, so quarantine and profiles match.
		_, key, _, err := profile.NormalizeEmail(addr)
		if err != nil {
			return "", problem.Invalidf("address", "%v", err)
		}
		return key, nil
	case SMS:
		p, err := profile.NormalizePhone(addr)
		if err != nil {
			return "", problem.Invalidf("address", "%v", err)
		}
		return p, nil
	case Push:
		if addr == "" {
			return "", problem.Invalidf("address", "the push token is empty")
		}
		if len(addr) > MaxPushTokenLength {
			return "", problem.Invalidf("address", "the push token is longer than %d bytes", MaxPushTokenLength)
		}
		if strings.IndexFunc(addr, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0 || !utf8.ValidString(addr) {
			return "", problem.Invalidf("address", "the push token contains spaces or control characters")
		}
		return addr, nil
	}
	return "", problem.Invalidf("channel", "unknown channel %q; the channels are email, sms and push", channel)
}

// Entry is where one address stands. Times are zero when unset.
type Entry struct {
	Channel    Channel `json:"channel"`
	Address    string  `json:"address"`
	Status     Status  `json:"status"`
	ErrorCount int     `json:"error_count"`
	// FirstErrorAt is the first counted error since the address was last valid.
	FirstErrorAt time.Time `json:"first_error_at,omitzero"`
	// LastErrorAt is the last counted error: the one the one-a-day rule and Cleanup measure from.
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
	LastReason  string    `json:"last_reason"`
	// MailboxFull says the last counted error was a full mailbox (LastReason starts with
	// MailboxFullPrefix).
	MailboxFull bool `json:"mailbox_full,omitempty"`
	// UpdatedAt is zero for an address never seen.
	UpdatedAt time.Time `json:"updated_at,omitzero"`
}

// HistoryEntry is one change of an address's status or error count.
type HistoryEntry struct {
	ID         int64     `json:"id"`
	Channel    Channel   `json:"channel"`
	Address    string    `json:"address"`
	At         time.Time `json:"at"`
	From       Status    `json:"from"`
	To         Status    `json:"to"`
	ErrorCount int       `json:"error_count"`
	Reason     string    `json:"reason"`
	// Actor is SystemActor for the rules, else the login of the administrator.
	Actor string `json:"actor"`
}

// Service reads and changes the quarantine table.
type Service struct {
	db    *store.DB
	clock clock.Clock
	log   *slog.Logger
}

// NewService returns a Service over db.
func NewService(db *store.DB, clk clock.Clock, log *slog.Logger) *Service {
	return &Service{db: db, clock: clk, log: log}
}

// row is a quarantine row as stored: times in Unix ms, 0 for NULL.
type row struct {
	status      Status
	count       int
	first, last int64
	reason      string
	updated     int64
}

func (r row) entry(ch Channel, addr string) Entry {
	return Entry{Channel: ch, Address: addr, Status: r.status, ErrorCount: r.count,
		FirstErrorAt: clock.FromMillis(r.first), LastErrorAt: clock.FromMillis(r.last),
		LastReason: r.reason, MailboxFull: strings.HasPrefix(r.reason, MailboxFullPrefix),
		UpdatedAt: clock.FromMillis(r.updated)}
}

// scanner is a *sql.Row or *sql.Rows.
type scanner interface{ Scan(dest ...any) error }

func scanRow(sc scanner, extra ...any) (row, error) {
	var r row
	var first, last sql.NullInt64
	dest := append(extra, &r.status, &r.count, &first, &last, &r.reason, &r.updated)
	if err := sc.Scan(dest...); err != nil {
		return row{}, err
	}
	r.first, r.last = first.Int64, last.Int64
	return r, nil
}

const rowColumns = `status, error_count, first_error_at, last_error_at, last_reason, updated_at`

func nullMillis(ms int64) any {
	if ms == 0 {
		return nil
	}
	return ms
}

// Get returns where an address stands; an address never seen is valid with no errors.
func (s *Service) Get(ctx context.Context, channel Channel, address string) (Entry, error) {
	addr, err := NormalizeAddress(channel, address)
	if err != nil {
		return Entry{}, err
	}
	r, err := scanRow(s.db.Read.QueryRowContext(ctx, `SELECT `+rowColumns+` FROM quarantine
		WHERE channel = $1 AND address = $2`, channel, addr))
	if errors.Is(err, sql.ErrNoRows) {
		return Entry{Channel: channel, Address: addr, Status: StatusValid}, nil
	}
	if err != nil {
		return Entry{}, fmt.Errorf("get quarantine entry %s %s: %w", channel, addr, err)
	}
	return r.entry(channel, addr), nil
}

// History returns the changes of an address, oldest first: at most the MaxHistory newest.
func (s *Service) History(ctx context.Context, channel Channel, address string) ([]HistoryEntry, error) {
	addr, err := NormalizeAddress(channel, address)
	if err != nil {
		return nil, err
	}
	rows, err := s.db.Read.QueryContext(ctx, `SELECT id, at, from_status, to_status, error_count, reason, actor
		FROM quarantine_history WHERE channel = $1 AND address = $2 ORDER BY id DESC LIMIT $3`, channel, addr, MaxHistory)
	if err != nil {
		return nil, fmt.Errorf("quarantine history of %s %s: %w", channel, addr, err)
	}
	defer rows.Close()
	out := []HistoryEntry{}
	for rows.Next() {
		h := HistoryEntry{Channel: channel, Address: addr}
		var at int64
		var from sql.NullString
		if err := rows.Scan(&h.ID, &at, &from, &h.To, &h.ErrorCount, &h.Reason, &h.Actor); err != nil {
			return nil, fmt.Errorf("quarantine history of %s %s: %w", channel, addr, err)
		}
		h.At, h.From = clock.FromMillis(at), Status(from.String)
		out = append(out, h)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("quarantine history of %s %s: %w", channel, addr, err)
	}
	slices.Reverse(out)
	return out, nil
}

// Order is the order of a List.
type Order string

// The orders of a List.
const (
	// ByUpdated lists the most recently changed entries first (the default).
	ByUpdated Order = "updated"
	// ByAddress lists entries by address, then channel.
	ByAddress Order = "address"
)

// Query selects quarantine entries. Zero fields do not filter.
type Query struct {
	Channel Channel
	Status  Status
	// AddressPrefix keeps addresses starting with it (for email, the domain part of the
	// prefix is compared lower-cased, like the addresses).
	AddressPrefix string
	// Order is ByUpdated (default) or ByAddress.
	Order Order
	// After is the NextAfter of the previous page.
	After string
	// Limit is the page size, 1 to MaxListLimit (default 100).
	Limit int
}

// Page is one page of a List.
type Page struct {
	Entries []Entry `json:"entries"`
	// NextAfter is the cursor of the next page; empty on the last page.
	NextAfter string `json:"next_after,omitempty"`
}

// cursor is the position after which the next page starts.
type cursor struct {
	Order   Order   `json:"o"`
	Updated int64   `json:"u,omitempty"`
	Channel Channel `json:"c"`
	Address string  `json:"a"`
}

func (c cursor) encode() string {
	b, _ := json.Marshal(c)
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodeCursor(s string, o Order) (cursor, error) {
	var c cursor
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err == nil {
		err = json.Unmarshal(b, &c)
	}
	if err != nil || c.Order != o {
		return cursor{}, problem.Invalidf("after", "after=%q is not a cursor of this list; pass the next_after of the previous page unchanged", s)
	}
	return c, nil
}

// List returns one page of entries matching q.
func (s *Service) List(ctx context.Context, q Query) (Page, error) {
	switch {
	case q.Limit == 0:
		q.Limit = 100
	case q.Limit < 0 || q.Limit > MaxListLimit:
		return Page{}, problem.Invalidf("limit", "limit must be between 1 and %d, not %d", MaxListLimit, q.Limit)
	}
	if q.Order == "" {
		q.Order = ByUpdated
	}
	if q.Order != ByUpdated && q.Order != ByAddress {
		return Page{}, problem.Invalidf("order", "unknown order %q; use updated or address", q.Order)
	}
	sqlText := `SELECT channel, address, ` + rowColumns + ` FROM quarantine WHERE 1=1`
	var args []any
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	if q.Channel != "" {
		ch, err := ParseChannel(string(q.Channel))
		if err != nil {
			return Page{}, err
		}
		sqlText += " AND channel = " + arg(ch)
	}
	if q.Status != "" {
		st, err := ParseStatus(string(q.Status))
		if err != nil {
			return Page{}, err
		}
		sqlText += " AND status = " + arg(st)
	}
	if p := q.AddressPrefix; p != "" {
		if at := strings.LastIndexByte(p, '@'); at >= 0 && (q.Channel == "" || q.Channel == Email) {
			p = p[:at] + "@" + strings.ToLower(p[at+1:])
		}
		sqlText += " AND substr(address, 1, " + arg(utf8.RuneCountInString(p)) + ") = " + arg(p)
	}
	if q.After != "" {
		c, err := decodeCursor(q.After, q.Order)
		if err != nil {
			return Page{}, err
		}
		if q.Order == ByUpdated {
			sqlText += " AND (updated_at, channel, address) < (" + arg(c.Updated) + ", " + arg(c.Channel) + ", " + arg(c.Address) + ")"
		} else {
			sqlText += " AND (address, channel) > (" + arg(c.Address) + ", " + arg(c.Channel) + ")"
		}
	}
	if q.Order == ByUpdated {
		sqlText += " ORDER BY updated_at DESC, channel DESC, address DESC"
	} else {
		sqlText += " ORDER BY address, channel"
	}
	sqlText += " LIMIT " + arg(q.Limit+1)
	rows, err := s.db.Read.QueryContext(ctx, sqlText, args...)
	if err != nil {
		return Page{}, fmt.Errorf("list quarantine: %w", err)
	}
	defer rows.Close()
	page := Page{Entries: []Entry{}}
	for rows.Next() {
		var ch Channel
		var addr string
		r, err := scanRow(rows, &ch, &addr)
		if err != nil {
			return Page{}, fmt.Errorf("list quarantine: %w", err)
		}
		page.Entries = append(page.Entries, r.entry(ch, addr))
	}
	if err := rows.Err(); err != nil {
		return Page{}, fmt.Errorf("list quarantine: %w", err)
	}
	if len(page.Entries) > q.Limit {
		page.Entries = page.Entries[:q.Limit]
		last := page.Entries[q.Limit-1]
		page.NextAfter = cursor{Order: q.Order, Updated: last.UpdatedAt.UnixMilli(), Channel: last.Channel, Address: last.Address}.encode()
	}
	return page, nil
}

// lock returns the row of an address inside tx, locking it until tx ends. An address with
// no row gets a valid one, which every caller then changes: the insert is what lets two
// PostgreSQL transactions wait on each other for an address neither had seen.
func lock(ctx context.Context, tx *sql.Tx, ch Channel, addr string, at int64) (row, error) {
	r, err := scanRow(tx.QueryRowContext(ctx, `INSERT INTO quarantine (channel, address, status, error_count, last_reason, updated_at)
		VALUES ($1, $2, 'valid', 0, '', $3)
		ON CONFLICT (channel, address) DO UPDATE SET status = quarantine.status
		RETURNING `+rowColumns, ch, addr, at))
	if err != nil {
		return row{}, fmt.Errorf("lock quarantine entry %s %s: %w", ch, addr, err)
	}
	return r, nil
}

// write stores r as the address's row and records the change from `from` in the history.
func write(ctx context.Context, tx *sql.Tx, ch Channel, addr string, from Status, r row, reason, actor string) error {
	_, err := tx.ExecContext(ctx, `UPDATE quarantine SET status = $3, error_count = $4, first_error_at = $5,
		last_error_at = $6, last_reason = $7, updated_at = $8 WHERE channel = $1 AND address = $2`,
		ch, addr, r.status, r.count, nullMillis(r.first), nullMillis(r.last), r.reason, r.updated)
	if err != nil {
		return fmt.Errorf("update quarantine entry %s %s: %w", ch, addr, err)
	}
	return addHistory(ctx, tx, ch, addr, r.updated, from, r.status, r.count, reason, actor)
}

func addHistory(ctx context.Context, tx *sql.Tx, ch Channel, addr string, at int64, from, to Status, count int, reason, actor string) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO quarantine_history (channel, address, at, from_status, to_status, error_count, reason, actor)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`, ch, addr, at, from, to, count, reason, actor)
	if err != nil {
		return fmt.Errorf("write quarantine history of %s %s: %w", ch, addr, err)
	}
	return nil
}

// cut shortens a reason to MaxReasonLength characters.
func cut(reason string) string {
	reason = strings.TrimSpace(reason)
	if utf8.RuneCountInString(reason) <= MaxReasonLength {
		return reason
	}
	return string([]rune(reason)[:MaxReasonLength])
}
