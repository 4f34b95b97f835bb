package webhook

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/store"
)

// Dispatcher posts queued events. Several nodes may run one: each batch is leased before it
// is posted, so a batch goes to one node at a time.
type Dispatcher struct {
	DB     *store.DB
	Client *http.Client
	Clock  clock.Clock
	Log    *slog.Logger
	// BatchSize is the most events per POST (default 500).
	BatchSize int
	// MaxAge is how long an event is retried before it is given up (default 72 h).
	MaxAge time.Duration
}

// backoff is the wait after the nth failed attempt (1-based); after the last, every day.
var backoff = []time.Duration{time.Minute, 5 * time.Minute, 30 * time.Minute, 2 * time.Hour, 6 * time.Hour}

// Backoff returns how long to wait after the nth failed attempt.
func Backoff(n int) time.Duration {
	if n <= 0 {
		return 0
	}
	if n <= len(backoff) {
		return backoff[n-1]
	}
	return 24 * time.Hour
}

// Run dispatches every interval until ctx ends.
func (d *Dispatcher) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if _, err := d.DispatchOnce(ctx); err != nil && ctx.Err() == nil {
			d.Log.Error("webhook dispatch", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

type leased struct {
	endpoint int64
	url      string
	secret   string
	ids      []int64
	payloads []json.RawMessage
	attempts []int
	created  []int64
}

// DispatchOnce posts one batch per endpoint with due events and reports how many events were
// delivered.
func (d *Dispatcher) DispatchOnce(ctx context.Context) (int, error) {
	size := d.BatchSize
	if size <= 0 {
		size = 500
	}
	maxAge := d.MaxAge
	if maxAge <= 0 {
		maxAge = 72 * time.Hour
	}
	now := d.Clock.Now()
	var batches []*leased
	// On PostgreSQL the rows read are locked, and rows another node is leasing skipped, so that
	// two nodes' dispatchers never lease, and post, the same events (SQLite's writes take turns).
	lock := ""
	if d.DB.Engine == store.Postgres {
		lock = ` FOR UPDATE OF o SKIP LOCKED`
	}
	err := d.DB.InTx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `SELECT o.id, o.endpoint_id, e.url, e.secret, o.payload, o.attempts, o.created_at
			FROM webhook_outbox o JOIN webhook_endpoints e ON e.id = o.endpoint_id
			WHERE o.delivered_at IS NULL AND NOT o.dead AND o.next_attempt_at <= $1 AND o.lease_until <= $1 AND e.enabled
			ORDER BY o.endpoint_id, o.id LIMIT $2`+lock, now.UnixMilli(), size*8)
		if err != nil {
			return fmt.Errorf("read webhook outbox: %w", err)
		}
		byEndpoint := map[int64]*leased{}
		for rows.Next() {
			var id, ep, created int64
			var u, secret, payload string
			var attempts int
			if err := rows.Scan(&id, &ep, &u, &secret, &payload, &attempts, &created); err != nil {
				rows.Close()
				return fmt.Errorf("read webhook outbox: %w", err)
			}
			b := byEndpoint[ep]
			if b == nil {
				b = &leased{endpoint: ep, url: u, secret: secret}
				byEndpoint[ep] = b
				batches = append(batches, b)
			}
			if len(b.ids) < size {
				b.ids, b.payloads = append(b.ids, id), append(b.payloads, json.RawMessage(payload))
				b.attempts, b.created = append(b.attempts, attempts), append(b.created, created)
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, b := range batches {
			if err := setColumn(ctx, tx, d.DB.Engine, "lease_until", now.Add(5*time.Minute).UnixMilli(), b.ids); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	delivered := 0
	for _, b := range batches {
		postErr := d.post(ctx, b)
		err := d.DB.InTx(ctx, func(tx *sql.Tx) error {
			if postErr == nil {
				return setColumn(ctx, tx, d.DB.Engine, "delivered_at", now.UnixMilli(), b.ids)
			}
			for i, id := range b.ids {
				n := b.attempts[i] + 1
				dead := now.Sub(time.UnixMilli(b.created[i])) >= maxAge
				if _, err := tx.ExecContext(ctx, `UPDATE webhook_outbox SET attempts = $1, next_attempt_at = $2, lease_until = 0,
					last_error = $3, dead = $4 WHERE id = $5`, n, now.Add(Backoff(n)).UnixMilli(), truncate(postErr.Error(), 500), dead, id); err != nil {
					return fmt.Errorf("record webhook failure: %w", err)
				}
			}
			return nil
		})
		if err != nil {
			return delivered, err
		}
		if postErr != nil {
			d.Log.Warn("webhook endpoint failed; will retry", "endpoint", b.endpoint, "events", len(b.ids), "err", postErr)
			continue
		}
		delivered += len(b.ids)
	}
	return delivered, nil
}

// setColumn sets col = v for the outbox rows ids, in one statement.
func setColumn(ctx context.Context, tx *sql.Tx, eng store.Engine, col string, v int64, ids []int64) error {
	var q string
	var list any
	if eng == store.Postgres {
		q, list = `UPDATE webhook_outbox SET `+col+` = $1 WHERE id = ANY($2::bigint[])`, ids
	} else {
		b, _ := json.Marshal(ids)
		q, list = `UPDATE webhook_outbox SET `+col+` = $1 WHERE id IN (SELECT value FROM json_each($2))`, string(b)
	}
	if _, err := tx.ExecContext(ctx, q, v, list); err != nil {
		return fmt.Errorf("update webhook outbox: %w", err)
	}
	return nil
}

func (d *Dispatcher) post(ctx context.Context, b *leased) error {
	var body bytes.Buffer
	body.WriteString(`{"events":[`)
	for i, p := range b.payloads {
		if i > 0 {
			body.WriteByte(',')
		}
		// Each event carries its outbox id, for receivers to dedupe retried batches.
		body.WriteString(`{"id":` + strconv.FormatInt(b.ids[i], 10) + `,"event":`)
		body.Write(p)
		body.WriteByte('}')
	}
	body.WriteString(`]}`)
	req, err := http.NewRequestWithContext(ctx, "POST", b.url, bytes.NewReader(body.Bytes()))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "Herald-Webhooks/1")
	req.Header.Set(SignatureHeader, Sign(b.secret, d.Clock.Now(), body.Bytes()))
	client := d.Client
	if client == nil {
		client = &http.Client{Timeout: 30 * time.Second}
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("the endpoint answered %s", resp.Status)
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "")
}
