package sending

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/textproto"
	"time"

	"github.com/heraldhq/herald/internal/channel"
	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/problem"
	"github.com/heraldhq/herald/internal/store"
)

// DefaultCaptureKeep is how many captured messages CaptureSender keeps by default.
const DefaultCaptureKeep = 10_000

// CaptureSender is the Sender of capture mode (HERALD_SMTP_RELAYS unset): it stores every
// message in the captured_messages table instead of sending it, keeping the Keep newest, so
// that a newcomer sees the whole flow with no SMTP server. Every message is Sent.
type CaptureSender struct {
	db    *store.DB
	clock clock.Clock
	// Keep is the most messages kept; older ones are deleted as new ones arrive.
	Keep int
}

var _ channel.Sender = (*CaptureSender)(nil)

// NewCaptureSender returns a capture sender over db keeping DefaultCaptureKeep messages.
func NewCaptureSender(db *store.DB, clk clock.Clock) *CaptureSender {
	if clk == nil {
		clk = clock.Real{}
	}
	return &CaptureSender{db: db, clock: clk, Keep: DefaultCaptureKeep}
}

type captureRow struct {
	LogID   int64  `json:"l"`
	To      string `json:"to"`
	From    string `json:"fr"`
	Subject string `json:"s"`
	Data    string `json:"d"`
}

// Send stores msgs in one statement and prunes the oldest beyond Keep.
func (c *CaptureSender) Send(ctx context.Context, msgs []channel.Message, out []channel.Outcome) error {
	if len(out) < len(msgs) {
		return fmt.Errorf("capture: Send got %d messages but room for %d outcomes", len(msgs), len(out))
	}
	if len(msgs) == 0 {
		return nil
	}
	rows := make([]captureRow, len(msgs))
	for i, m := range msgs {
		from, subject := headerFields(m.Data)
		if from == "" {
			from = m.From
		}
		rows[i] = captureRow{LogID: m.ID, To: m.To, From: from, Subject: subject, Data: string(m.Data)}
	}
	doc, err := json.Marshal(rows)
	if err != nil {
		return err
	}
	now := c.clock.Now().UnixMilli()
	src := `SELECT CAST(j.value->>'l' AS INTEGER) AS l, j.value->>'to' AS t, j.value->>'fr' AS f, j.value->>'s' AS s, j.value->>'d' AS d FROM json_each($1) AS j`
	if c.db.Engine == store.Postgres {
		src = `SELECT l, "to" AS t, fr AS f, s, d FROM jsonb_to_recordset($1::jsonb) AS j(l bigint, "to" text, fr text, s text, d text)`
	}
	err = c.db.InTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO captured_messages (delivery_id, log_id, to_address, from_address, subject, data, at)
			SELECT (SELECT delivery_id FROM sending_log WHERE id = x.l), x.l, x.t, x.f, x.s, x.d, $2 FROM (`+src+`) AS x`, string(doc), now); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `DELETE FROM captured_messages WHERE id <= (SELECT id FROM captured_messages ORDER BY id DESC LIMIT 1 OFFSET $1)`, max(c.Keep, 1))
		return err
	})
	for i := range msgs {
		if err != nil {
			out[i] = channel.Outcome{Status: channel.SoftFail, Text: "not captured: " + err.Error()}
		} else {
			out[i] = channel.Outcome{Status: channel.Sent, Code: 250, ProviderID: "captured"}
		}
	}
	return nil
}

// Close does nothing; the database belongs to the caller.
func (c *CaptureSender) Close() error { return nil }

// headerFields reads the decoded From and Subject of a message.
func headerFields(data []byte) (from, subject string) {
	end := bytes.Index(data, []byte("\r\n\r\n"))
	if end < 0 {
		end = len(data)
	}
	h, err := textproto.NewReader(bufio.NewReader(bytes.NewReader(data[:end]))).ReadMIMEHeader()
	if err != nil && len(h) == 0 {
		return "", ""
	}
	dec := new(mime.WordDecoder)
	from, subject = h.Get("From"), h.Get("Subject")
	if s, err := dec.DecodeHeader(subject); err == nil {
		subject = s
	}
	if s, err := dec.DecodeHeader(from); err == nil {
		from = s
	}
	return from, subject
}

// Captured is one captured message. Data (the raw RFC 5322 message) is filled by
// GetCaptured only.
type Captured struct {
	ID         int64     `json:"id"`
	DeliveryID *int64    `json:"delivery_id"`
	LogID      int64     `json:"log_id"`
	To         string    `json:"to"`
	From       string    `json:"from"`
	Subject    string    `json:"subject"`
	Size       int       `json:"size"`
	At         time.Time `json:"at"`
	Data       []byte    `json:"-"`
}

// CapturedPage is a page of captured messages, newest first. NextBefore, when not zero, is
// the before of the next page.
type CapturedPage struct {
	Messages   []Captured `json:"messages"`
	NextBefore int64      `json:"next_before,omitempty"`
}

// CapturedQuery selects captured messages: of one delivery when DeliveryID is not zero,
// with ids below Before when it is not zero, at most Limit (default 50, at most 500).
type CapturedQuery struct {
	DeliveryID int64
	Before     int64
	Limit      int
}

// ListCaptured lists captured messages, newest first, without their data.
func ListCaptured(ctx context.Context, db *store.DB, q CapturedQuery) (CapturedPage, error) {
	if q.Limit <= 0 {
		q.Limit = 50
	}
	if q.Limit > 500 {
		return CapturedPage{}, problem.Invalidf("limit", "limit is at most 500")
	}
	rows, err := db.Read.QueryContext(ctx, `SELECT id, delivery_id, log_id, to_address, from_address, subject, LENGTH(data), at
		FROM captured_messages WHERE ($1 = 0 OR delivery_id = $1) AND ($2 = 0 OR id < $2) ORDER BY id DESC LIMIT $3`,
		q.DeliveryID, q.Before, q.Limit+1)
	if err != nil {
		return CapturedPage{}, fmt.Errorf("list captured messages: %w", err)
	}
	defer rows.Close()
	page := CapturedPage{Messages: []Captured{}}
	for rows.Next() {
		c, err := scanCaptured(rows, false)
		if err != nil {
			return CapturedPage{}, err
		}
		page.Messages = append(page.Messages, c)
	}
	if len(page.Messages) > q.Limit {
		page.Messages = page.Messages[:q.Limit]
		page.NextBefore = page.Messages[q.Limit-1].ID
	}
	return page, rows.Err()
}

// GetCaptured returns one captured message with its data, or a NotFound problem.
func GetCaptured(ctx context.Context, db *store.DB, id int64) (Captured, error) {
	c, err := scanCaptured(db.Read.QueryRowContext(ctx, `SELECT id, delivery_id, log_id, to_address, from_address, subject, LENGTH(data), at, data
		FROM captured_messages WHERE id = $1`, id), true)
	if errors.Is(err, sql.ErrNoRows) {
		return Captured{}, problem.NotFoundf("there is no captured message with id %d (only the newest are kept)", id)
	}
	return c, err
}

func scanCaptured(r interface{ Scan(...any) error }, data bool) (Captured, error) {
	var c Captured
	var did, lid sql.NullInt64
	var at int64
	dest := []any{&c.ID, &did, &lid, &c.To, &c.From, &c.Subject, &c.Size, &at}
	var raw string
	if data {
		dest = append(dest, &raw)
	}
	if err := r.Scan(dest...); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return c, err
		}
		return c, fmt.Errorf("read captured message: %w", err)
	}
	if did.Valid {
		c.DeliveryID = &did.Int64
	}
	c.LogID, c.At, c.Data = lid.Int64, clock.FromMillis(at), []byte(raw)
	return c, nil
}
