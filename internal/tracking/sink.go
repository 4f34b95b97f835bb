package tracking

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/heraldhq/herald/internal/stats"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/webhook"
)

// SQLSink is the Recorder's Sink over the database. One WriteHits is one transaction that
//
//   - classifies each open and click with the Classifier, given its row's sent_at;
//   - appends the hits to tracking_events in one statement;
//   - sets the sending log's first_open_at (a click is an open), first_human_open_at,
//     first_click_at, first_mirror_at and optout_at where they are null, one statement each,
//     each returning the rows it changed so that unique counts move exactly once per row, even
//     with several nodes writing at once;
//   - opts out the rows' profiles on the delivery's channel for opt-out hits;
//   - moves the delivery's live counters (stats.Apply) by the unique events it created.
//
// Hits whose sending-log row does not exist or belongs to another delivery (a deleted delivery)
// are dropped. Batches travel as one JSON parameter on SQLite (json_each) and as arrays on
// PostgreSQL (unnest), never as one parameter per value.
//
// Limit: a batch retried after a failure is classified again, so the Classifier's burst memory
// sees its clicks twice; a retry is rare and only makes the burst rule more eager.
type SQLSink struct {
	db         *store.DB
	classifier *Classifier
}

var _ Sink = (*SQLSink)(nil)

// NewSQLSink returns the sink over db; classifier may be nil, and then every hit is kept with the
// classification it came with.
func NewSQLSink(db *store.DB, classifier *Classifier) *SQLSink {
	return &SQLSink{db: db, classifier: classifier}
}

// logRow is what the sink needs of a sending-log row.
type logRow struct {
	delivery, profile int64
	sentAt            int64
	channel           string
	// set says which first-event columns were already set when the batch read the row: a
	// repeated open or click (most hits, once a campaign is a few hours old) then costs no
	// UPDATE. The UPDATEs keep their IS NULL condition for nodes writing side by side.
	set [firstKinds]bool
}

// firstKind names the sending-log columns set by a row's first event of a sort.
type firstKind int

const (
	firstOpen firstKind = iota
	firstHumanOpen
	firstClick
	firstMirror
	firstOptOut
	firstKinds
)

var firstColumns = [firstKinds]string{"first_open_at", "first_human_open_at", "first_click_at", "first_mirror_at", "optout_at"}

// WriteHits writes a batch of hits; see SQLSink.
func (s *SQLSink) WriteHits(ctx context.Context, hits []Hit) error {
	if len(hits) == 0 {
		return nil
	}
	ids := make([]int64, 0, len(hits))
	seen := make(map[int64]bool, len(hits))
	for _, h := range hits {
		if !seen[h.Ref.LogID] {
			seen[h.Ref.LogID] = true
			ids = append(ids, h.Ref.LogID)
		}
	}
	return s.db.InTx(ctx, func(tx *sql.Tx) error {
		rows, err := s.lookup(ctx, tx, ids)
		if err != nil {
			return err
		}
		ev := newEventBatch(s.db.Engine, len(hits))
		var firsts [firstKinds]map[int64]int64 // log id → earliest time in this batch
		for i := range firsts {
			firsts[i] = map[int64]int64{}
		}
		note := func(k firstKind, id, at int64) {
			if rows[id].set[k] {
				return
			}
			if t, ok := firsts[k][id]; !ok || at < t {
				firsts[k][id] = at
			}
		}
		optOuts := map[string][]int64{} // channel → profiles
		var events []webhook.Event
		for _, h := range hits {
			row, ok := rows[h.Ref.LogID]
			if !ok || row.delivery != h.Ref.DeliveryID {
				continue
			}
			kind := h.Kind
			if kind == 0 {
				kind = h.Ref.Kind
			}
			machine, why := h.Machine, h.Why
			if s.classifier != nil && (kind == KindOpen || kind == KindClick) {
				var sent time.Time
				if row.sentAt != 0 {
					sent = time.UnixMilli(row.sentAt)
				}
				machine, why = s.classifier.Classify(h, sent)
			}
			at := h.At.UnixMilli()
			link := int64(-1)
			if kind == KindClick {
				link = int64(h.Ref.Link)
			}
			ev.add(row.delivery, h.Ref.LogID, kind.String(), link, at, h.UserAgent, machine, why)
			if t := eventType[kind]; t != "" {
				data := map[string]any{"machine": machine}
				if kind == KindClick {
					data["link"] = link
				}
				events = append(events, webhook.Event{Type: t, At: h.At, DeliveryID: row.delivery, LogID: h.Ref.LogID, ProfileID: row.profile, Data: data})
			}
			switch kind {
			case KindOpen, KindClick:
				note(firstOpen, h.Ref.LogID, at)
				if !machine {
					note(firstHumanOpen, h.Ref.LogID, at)
				}
				if kind == KindClick {
					note(firstClick, h.Ref.LogID, at)
				}
			case KindMirror:
				note(firstMirror, h.Ref.LogID, at)
			case KindOptOut:
				note(firstOptOut, h.Ref.LogID, at)
				optOuts[row.channel] = append(optOuts[row.channel], row.profile)
			}
		}
		if ev.n == 0 {
			return nil
		}
		if err := ev.insert(ctx, tx); err != nil {
			return err
		}
		type key struct{ delivery, hour int64 }
		moves := map[key]*stats.Counters{}
		for k := range firstKind(firstKinds) {
			changed, err := s.setFirst(ctx, tx, k, firsts[k])
			if err != nil {
				return err
			}
			for _, id := range changed {
				at := firsts[k][id]
				kk := key{rows[id].delivery, at - at%3_600_000}
				c := moves[kk]
				if c == nil {
					c = &stats.Counters{}
					moves[kk] = c
				}
				switch k {
				case firstOpen:
					c.Opens++
				case firstHumanOpen:
					c.OpensHuman++
				case firstClick:
					c.Clicks++
				case firstMirror:
					c.Mirror++
				case firstOptOut:
					c.OptOuts++
				}
			}
		}
		now := int64(0)
		for _, h := range hits {
			now = max(now, h.At.UnixMilli())
		}
		for channel, profiles := range optOuts {
			if err := s.optOut(ctx, tx, channel, profiles, now); err != nil {
				return err
			}
		}
		for k, c := range moves {
			if err := stats.Apply(ctx, tx, k.delivery, time.UnixMilli(k.hour), *c); err != nil {
				return err
			}
		}
		return webhook.Emit(ctx, tx, s.db.Engine, time.UnixMilli(now), events)
	})
}

// eventType is the outbound webhook event of each kind of hit (mirror views have none).
var eventType = map[Kind]string{KindOpen: webhook.Opened, KindClick: webhook.Clicked, KindOptOut: webhook.OptedOut}

// lookup reads the sending-log rows of ids, with their delivery's channel.
func (s *SQLSink) lookup(ctx context.Context, tx *sql.Tx, ids []int64) (map[int64]logRow, error) {
	q := `SELECT s.id, s.delivery_id, s.profile_id, COALESCE(s.sent_at, 0), d.channel,
		s.first_open_at IS NOT NULL, s.first_human_open_at IS NOT NULL, s.first_click_at IS NOT NULL,
		s.first_mirror_at IS NOT NULL, s.optout_at IS NOT NULL
		FROM sending_log s JOIN deliveries d ON d.id = s.delivery_id WHERE s.id IN `
	var arg any
	if s.db.Engine == store.SQLite {
		q += `(SELECT value FROM json_each($1))`
		arg = jsonInts(ids)
	} else {
		q += `(SELECT unnest($1::bigint[]))`
		arg = ids
	}
	rs, err := tx.QueryContext(ctx, q, arg)
	if err != nil {
		return nil, fmt.Errorf("tracking: read the sending log rows of %d hits: %w", len(ids), err)
	}
	defer rs.Close()
	out := make(map[int64]logRow, len(ids))
	for rs.Next() {
		var id int64
		var r logRow
		if err := rs.Scan(&id, &r.delivery, &r.profile, &r.sentAt, &r.channel,
			&r.set[firstOpen], &r.set[firstHumanOpen], &r.set[firstClick], &r.set[firstMirror], &r.set[firstOptOut]); err != nil {
			return nil, fmt.Errorf("tracking: read the sending log: %w", err)
		}
		out[id] = r
	}
	return out, rs.Err()
}

// setFirst sets a first-event column where it is null and returns the rows it changed.
func (s *SQLSink) setFirst(ctx context.Context, tx *sql.Tx, k firstKind, times map[int64]int64) ([]int64, error) {
	if len(times) == 0 {
		return nil, nil
	}
	col := firstColumns[k]
	var q string
	var args []any
	if s.db.Engine == store.SQLite {
		b := []byte{'['}
		for id, t := range times {
			if len(b) > 1 {
				b = append(b, ',')
			}
			b = append(b, '[')
			b = strconv.AppendInt(b, id, 10)
			b = append(b, ',')
			b = strconv.AppendInt(b, t, 10)
			b = append(b, ']')
		}
		b = append(b, ']')
		// Materialised, so the batch is parsed once and joined by primary key; a json_each in
		// the UPDATE's FROM may be evaluated again for every sending_log row SQLite scans.
		q = `WITH x AS MATERIALIZED (SELECT value->>0 AS xid, value->>1 AS t FROM json_each($1))
			UPDATE sending_log SET ` + col + ` = x.t FROM x
			WHERE sending_log.id = x.xid AND sending_log.` + col + ` IS NULL RETURNING id`
		args = []any{string(b)}
	} else {
		ids, ts := make([]int64, 0, len(times)), make([]int64, 0, len(times))
		for id, t := range times {
			ids, ts = append(ids, id), append(ts, t)
		}
		q = `UPDATE sending_log SET ` + col + ` = x.t FROM unnest($1::bigint[], $2::bigint[]) AS x(xid, t)
			WHERE sending_log.id = x.xid AND sending_log.` + col + ` IS NULL RETURNING id`
		args = []any{ids, ts}
	}
	rs, err := tx.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("tracking: set %s: %w", col, err)
	}
	defer rs.Close()
	var changed []int64
	for rs.Next() {
		var id int64
		if err := rs.Scan(&id); err != nil {
			return nil, fmt.Errorf("tracking: set %s: %w", col, err)
		}
		changed = append(changed, id)
	}
	return changed, rs.Err()
}

// optOut sets the channel's opt-out flag on profiles.
func (s *SQLSink) optOut(ctx context.Context, tx *sql.Tx, channel string, profiles []int64, now int64) error {
	col := map[string]string{"email": "opt_out_email", "sms": "opt_out_sms", "push": "opt_out_push"}[channel]
	if col == "" {
		return fmt.Errorf("tracking: opt-out on unknown channel %q", channel)
	}
	// updated_at always moves (profile.nextUpdated), so that an import that read the profile
	// before the opt-out does not write it back over it.
	q := `UPDATE profiles SET ` + col + ` = true, updated_at = CASE WHEN updated_at < $2 THEN $2 ELSE updated_at + 1 END
		WHERE ` + col + ` = false AND id IN `
	var arg any
	if s.db.Engine == store.SQLite {
		q += `(SELECT value FROM json_each($1))`
		arg = jsonInts(profiles)
	} else {
		q += `(SELECT unnest($1::bigint[]))`
		arg = profiles
	}
	if _, err := tx.ExecContext(ctx, q, arg, now); err != nil {
		return fmt.Errorf("tracking: opt out %d profiles: %w", len(profiles), err)
	}
	return nil
}

// jsonInts writes ids as a JSON array.
func jsonInts(ids []int64) string {
	b := make([]byte, 0, 12*len(ids)+2)
	b = append(b, '[')
	for i, id := range ids {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, id, 10)
	}
	return string(append(b, ']'))
}

// maxUserAgent caps the user agent kept per event; longer ones are cut.
const maxUserAgent = 512

// cleanText makes request text safe for both engines: valid UTF-8, no NUL (which PostgreSQL's
// text refuses, and would fail the whole batch again and again), at most maxUserAgent bytes.
func cleanText(s string) string {
	if len(s) > maxUserAgent {
		s = s[:maxUserAgent]
	}
	s = strings.ToValidUTF8(s, "\uFFFD")
	return strings.ReplaceAll(s, "\x00", "")
}

// appendJSONString appends s as a JSON string.
func appendJSONString(b []byte, s string) []byte {
	q, _ := json.Marshal(s)
	return append(b, q...)
}

// eventBatch collects tracking_events rows: a JSON array of arrays on SQLite, column arrays on
// PostgreSQL.
type eventBatch struct {
	eng                     store.Engine
	n                       int
	json                    []byte
	delivery, log, link, at []int64
	kind, ua, why           []string
	machine                 []bool
}

func newEventBatch(eng store.Engine, size int) *eventBatch {
	b := &eventBatch{eng: eng}
	if eng == store.SQLite {
		b.json = append(make([]byte, 0, 160*size), '[')
	}
	return b
}

func (b *eventBatch) add(delivery, log int64, kind string, link, at int64, ua string, machine bool, why string) {
	b.n++
	ua, why = cleanText(ua), cleanText(why)
	if b.eng != store.SQLite {
		b.delivery, b.log, b.kind, b.link = append(b.delivery, delivery), append(b.log, log), append(b.kind, kind), append(b.link, link)
		b.at, b.ua, b.machine, b.why = append(b.at, at), append(b.ua, ua), append(b.machine, machine), append(b.why, why)
		return
	}
	j := b.json
	if b.n > 1 {
		j = append(j, ',')
	}
	j = append(j, '[')
	j = strconv.AppendInt(j, delivery, 10)
	j = append(j, ',')
	j = strconv.AppendInt(j, log, 10)
	j = append(j, ',', '"')
	j = append(j, kind...)
	j = append(j, '"', ',')
	if link < 0 {
		j = append(j, "null"...)
	} else {
		j = strconv.AppendInt(j, link, 10)
	}
	j = append(j, ',')
	j = strconv.AppendInt(j, at, 10)
	j = append(j, ',')
	j = appendJSONString(j, ua)
	j = append(j, ',')
	if machine {
		j = append(j, '1')
	} else {
		j = append(j, '0')
	}
	j = append(j, ',')
	j = appendJSONString(j, why)
	b.json = append(j, ']')
}

func (b *eventBatch) insert(ctx context.Context, tx *sql.Tx) error {
	var err error
	if b.eng == store.SQLite {
		// Each row becomes JSONB once, so its eight fields are read from the binary form rather
		// than the row's text being parsed for each.
		_, err = tx.ExecContext(ctx, `WITH r AS MATERIALIZED (SELECT jsonb(value) AS v FROM json_each($1))
			INSERT INTO tracking_events (delivery_id, log_id, kind, link, at, user_agent, machine, why)
			SELECT v->>0, v->>1, v->>2, v->>3, v->>4, v->>5, v->>6, v->>7 FROM r`, string(append(b.json, ']')))
	} else {
		_, err = tx.ExecContext(ctx, `INSERT INTO tracking_events (delivery_id, log_id, kind, link, at, user_agent, machine, why)
			SELECT d, l, k, NULLIF(li, -1), a, u, m, w
			FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bigint[], $5::bigint[], $6::text[], $7::boolean[], $8::text[])
			AS x(d, l, k, li, a, u, m, w)`, b.delivery, b.log, b.kind, b.link, b.at, b.ua, b.machine, b.why)
	}
	if err != nil {
		return fmt.Errorf("tracking: write %d hits to the tracking log: %w", b.n, err)
	}
	return nil
}
