// Package webhook sends Herald's events — sent, failed, bounced, opened, clicked, opted out,
// complained — to the HTTP endpoints administrators register, each endpoint choosing its event
// types.
//
// Events go through an outbox: Emit writes them in the caller's transaction, so an event is
// sent if and only if the change it reports was committed. A Dispatcher posts them in batches,
// signed with the endpoint's secret (header X-Herald-Signature: t=<unix>,v1=<hex HMAC-SHA256 of
// "<t>.<body>">, the same form Herald accepts on its own generic webhook), and retries failures
// with back-off for up to three days. Delivery is at least once: receivers dedupe on the
// event id.
package webhook

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/heraldhq/herald/internal/audit"
	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/problem"
	"github.com/heraldhq/herald/internal/store"
)

// The event types.
const (
	Sent       = "sent"
	Failed     = "failed"
	Bounced    = "bounced"
	Opened     = "opened"
	Clicked    = "clicked"
	OptedOut   = "opted_out"
	Complained = "complained"
)

// Types lists every event type.
var Types = []string{Sent, Failed, Bounced, Opened, Clicked, OptedOut, Complained}

// SignatureHeader carries the HMAC of a batch.
const SignatureHeader = "X-Herald-Signature"

// Endpoint is a registered receiver. Its secret is shown only when it is created.
type Endpoint struct {
	ID        int64     `json:"id"`
	URL       string    `json:"url"`
	Events    []string  `json:"events"`
	Enabled   bool      `json:"enabled"`
	Secret    string    `json:"secret,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Service manages endpoints.
type Service struct {
	db    *store.DB
	clock clock.Clock
	log   *slog.Logger
}

// NewService returns a Service over db.
func NewService(db *store.DB, clk clock.Clock, log *slog.Logger) *Service {
	return &Service{db: db, clock: clk, log: log}
}

// NewEndpoint is what Create needs.
type NewEndpoint struct {
	URL    string   `json:"url"`
	Events []string `json:"events"`
}

// Create registers an endpoint for the given event types and returns it with its secret,
// which is not shown again.
func (s *Service) Create(ctx context.Context, actor audit.Actor, n NewEndpoint) (Endpoint, error) {
	u, err := url.Parse(n.URL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return Endpoint{}, problem.Invalidf("url", "%q is not an http(s) URL", n.URL)
	}
	if len(n.Events) == 0 {
		return Endpoint{}, problem.Invalidf("events", "choose at least one event type: %s", strings.Join(Types, ", "))
	}
	for _, t := range n.Events {
		if !slices.Contains(Types, t) {
			return Endpoint{}, problem.Invalidf("events", "unknown event type %q; the types are %s", t, strings.Join(Types, ", "))
		}
	}
	secret := make([]byte, 24)
	if _, err := rand.Read(secret); err != nil {
		return Endpoint{}, err
	}
	e := Endpoint{URL: n.URL, Events: n.Events, Enabled: true, Secret: "whsec_" + hex.EncodeToString(secret)}
	now := s.clock.Now()
	e.CreatedAt, e.UpdatedAt = now.UTC().Truncate(time.Millisecond), now.UTC().Truncate(time.Millisecond)
	err = s.db.InTx(ctx, func(tx *sql.Tx) error {
		if err := tx.QueryRowContext(ctx, `INSERT INTO webhook_endpoints (url, secret, events, enabled, created_at, updated_at)
			VALUES ($1, $2, $3, $4, $5, $5) RETURNING id`, e.URL, e.Secret, ","+strings.Join(e.Events, ",")+",", true, now.UnixMilli()).Scan(&e.ID); err != nil {
			return fmt.Errorf("create webhook endpoint: %w", err)
		}
		shown := e
		shown.Secret = ""
		return audit.Record(ctx, tx, now, actor, "webhook.create", "webhook_endpoint", e.ID, nil, shown)
	})
	return e, err
}

// List returns the endpoints, without their secrets.
func (s *Service) List(ctx context.Context) ([]Endpoint, error) {
	rows, err := s.db.Read.QueryContext(ctx, `SELECT id, url, events, enabled, created_at, updated_at FROM webhook_endpoints ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("list webhook endpoints: %w", err)
	}
	defer rows.Close()
	out := []Endpoint{}
	for rows.Next() {
		var e Endpoint
		var events string
		var created, updated int64
		if err := rows.Scan(&e.ID, &e.URL, &events, &e.Enabled, &created, &updated); err != nil {
			return nil, fmt.Errorf("list webhook endpoints: %w", err)
		}
		e.Events = strings.Split(strings.Trim(events, ","), ",")
		e.CreatedAt, e.UpdatedAt = clock.FromMillis(created), clock.FromMillis(updated)
		out = append(out, e)
	}
	return out, rows.Err()
}

// Delete removes an endpoint and its undelivered events.
func (s *Service) Delete(ctx context.Context, actor audit.Actor, id int64) error {
	return s.db.InTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM webhook_endpoints WHERE id = $1`, id)
		if err != nil {
			return fmt.Errorf("delete webhook endpoint %d: %w", id, err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return problem.NotFoundf("there is no webhook endpoint with id %d", id)
		}
		return audit.Record(ctx, tx, s.clock.Now(), actor, "webhook.delete", "webhook_endpoint", id, nil, nil)
	})
}

// Event is one thing that happened, as receivers get it.
type Event struct {
	Type       string    `json:"type"`
	At         time.Time `json:"at"`
	DeliveryID int64     `json:"delivery_id"`
	LogID      int64     `json:"log_id,omitempty"`
	ProfileID  int64     `json:"profile_id,omitempty"`
	Address    string    `json:"address,omitempty"`
	// Data holds the event's details: failure type and reason, link URL, ...
	Data map[string]any `json:"data,omitempty"`
}

// wantedSQL counts the enabled endpoints subscribed to event type $1.
const wantedSQL = `SELECT count(*) FROM webhook_endpoints WHERE enabled AND events LIKE '%,' || $1 || ',%'`

// queueSQL queues payloads $1 of type $2 at $3 for every endpoint subscribed to the type; $1
// is a text array on PostgreSQL, a JSON array on SQLite (see internal/profile/upsert.go).
func queueSQL(eng store.Engine) string {
	from := `(SELECT value AS v FROM json_each($1)) AS p`
	if eng == store.Postgres {
		from = `unnest($1::text[]) AS p(v)`
	}
	return `INSERT INTO webhook_outbox (endpoint_id, type, payload, created_at, next_attempt_at)
			SELECT e.id, $2, p.v, $3, $3 FROM webhook_endpoints e, ` + from + `
			WHERE e.enabled AND e.events LIKE '%,' || $2 || ',%'`
}

// The queueing statement on each engine, built once.
var queueSQLite, queuePostgres = queueSQL(store.SQLite), queueSQL(store.Postgres)

// queueFor returns eng's queueing statement.
func queueFor(eng store.Engine) string {
	if eng == store.Postgres {
		return queuePostgres
	}
	return queueSQLite
}

// EmitSQL returns the statements Emit runs on eng, for a caller that prepares them once.
func EmitSQL(eng store.Engine) []string { return []string{wantedSQL, queueFor(eng)} }

// Emit queues events for every enabled endpoint that takes their type, in tx: they are sent
// only if tx commits. It costs one statement per event type present, whatever the number of
// events, so the sending engine and the tracking writer call it once per batch.
func Emit(ctx context.Context, tx store.Runner, eng store.Engine, at time.Time, events []Event) error {
	if len(events) == 0 {
		return nil
	}
	// Most installations subscribe to few types: find out first, so a batch nobody listens to
	// costs one small query and no encoding.
	wanted := map[string]bool{}
	for _, e := range events {
		if _, seen := wanted[e.Type]; seen {
			continue
		}
		var one int
		err := tx.QueryRowContext(ctx, wantedSQL, e.Type).Scan(&one)
		if err != nil {
			return fmt.Errorf("find webhook endpoints: %w", err)
		}
		wanted[e.Type] = one > 0
	}
	byType := map[string][]string{}
	for _, e := range events {
		if !wanted[e.Type] {
			continue
		}
		b, err := json.Marshal(e)
		if err != nil {
			return fmt.Errorf("encode %s event: %w", e.Type, err)
		}
		byType[e.Type] = append(byType[e.Type], string(b))
	}
	queue := queueFor(eng)
	for typ, payloads := range byType {
		// One parameter carries the whole list (see internal/profile/upsert.go for why on SQLite).
		list := any(payloads)
		if eng != store.Postgres {
			b, _ := json.Marshal(payloads)
			list = string(b)
		}
		_, err := tx.ExecContext(ctx, queue, list, typ, at.UnixMilli())
		if err != nil {
			return fmt.Errorf("queue %s events: %w", typ, err)
		}
	}
	return nil
}

// Sign returns the signature header value for body sent at t with secret.
func Sign(secret string, t time.Time, body []byte) string {
	mac := hmac.New(sha256.New, []byte(secret))
	fmt.Fprintf(mac, "%d.", t.Unix())
	mac.Write(body)
	return fmt.Sprintf("t=%d,v1=%s", t.Unix(), hex.EncodeToString(mac.Sum(nil)))
}
