package sending

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/heraldhq/herald/internal/channel"
	"github.com/heraldhq/herald/internal/delivery"
	"github.com/heraldhq/herald/internal/problem"
	"github.com/heraldhq/herald/internal/quarantine"
	"github.com/heraldhq/herald/internal/stats"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/webhook"
)

// queries holds the SQL whose text differs between the engines. A batch is always passed as
// ONE parameter: a JSON text expanded by json_each on SQLite (whose binding of many $N
// parameters is quadratic), an array or a JSON document on PostgreSQL.
type queries struct {
	engine store.Engine
	// claim leases up to $5 due pending rows of delivery $3 to $1 until $2; $4 is now
	// (PostgreSQL).
	claim string
	// pick reads up to $4 due pending rows of delivery $1 after id $2, none of a batch in
	// flight; $3 is now (SQLite).
	pick string
	// writeBack applies the outcomes in $1 to rows in flight under lease owner $2 (on SQLite,
	// to rows of a batch in flight, which the write-back deletes first; $2 goes unused).
	writeBack string
	// writeSent and writeSentIDs mark sent, at $5 with reply code $3 and enhanced code $4, the
	// rows in $1 in flight under lease owner $2, as writeBack does: writeSentIDs takes their
	// ids; writeSent takes each id with its provider id ("id provider" strings on SQLite, two
	// arrays on PostgreSQL).
	writeSent, writeSentIDs string
	// countedSent and countedSentIDs are writeSent and writeSentIDs without RETURNING, on
	// SQLite only: the write-back counts what they changed instead of reading every id back.
	countedSent, countedSentIDs string
	// renew extends to $1 the lease of the rows (on SQLite, the batches) in flight under owner
	// $3 whose lease ends before $2; recoverExpired returns to the queue, as ambiguous, the
	// rows in status sending whose lease ended before $1; reclaimInFlight does so for the rows
	// in status sending under owner $1. On SQLite, where only an older version left rows in
	// status sending, recoverBatches does the same for the batches.
	renew, recoverExpired, reclaimInFlight string
	// releaseOwn releases the claims of owner $1 on pending rows: those its earlier run had
	// claimed and not yet put in flight when it ended.
	releaseOwn string
	// recipients reads the profiles of a batch (ids in $1, the fields wanted in $2 to $6,
	// see recipientFields); erroneous reads which quarantine
	// keys in $1 are erroneous; markBatch records a batch in flight (SQLite, see markBatchSQL).
	recipients, erroneous, markBatch string
	// Settling a delivery: expire fails as expired, at $2, its pending rows not in flight;
	// waiting counts its pending rows and those in status sending, and says whether one pending
	// row is due at $2, in one statement; anySent says whether one row was sent. The delivery
	// is $1. On SQLite the rows of a batch in flight stay pending and due (the pick took them
	// due), so a delivery with a batch out is never moved on.
	expire, waiting, anySent string
}

// inFlightSQL is the condition that selects the rows in flight (status sending) of every
// delivery through an index: sending_log_in_flight on PostgreSQL; on SQLite, which has no such
// index (it cost two B-tree writes a message), the status index, delivery by delivery.
func inFlightSQL(eng store.Engine) string {
	if eng == store.Postgres {
		return `status = 'sending'`
	}
	return `delivery_id IN (SELECT id FROM deliveries) AND status = 'sending'` + unsent(eng, "status")
}

// setBatchQueries fills in the statements whose text is built from the engine's id sets.
func (q *queries) setBatchQueries() {
	ids, _ := q.idSet(nil, 1)
	keys, _ := q.strSet(nil, 1)
	// The fields a template does not show are read as NULL ($2 to $6 say which are shown),
	// which spares the driver a string for each.
	q.recipients = `SELECT id, email, CASE WHEN $2 = 1 THEN phone END, CASE WHEN $3 = 1 THEN locale END,
		CASE WHEN $4 = 1 THEN time_zone END, CASE WHEN $5 = 1 THEN external_id END,
		CASE WHEN $6 = 1 THEN created_at END, attributes FROM profiles WHERE id IN ` + ids
	q.erroneous = `SELECT address FROM quarantine WHERE channel = 'email' AND status = 'erroneous' AND address IN ` + keys
	if q.engine == store.SQLite {
		set, _ := q.idSet(nil, 3)
		q.markBatch = markBatchSQL(set)
	}
}

// setLeaseQueries fills in the statements on rows in flight.
func (q *queries) setLeaseQueries() {
	inFlight := inFlightSQL(q.engine)
	const back = `UPDATE sending_log SET status = 'pending', ambiguous = TRUE, lease_owner = NULL, lease_until = NULL WHERE `
	q.renew = `UPDATE sending_log SET lease_until = $1 WHERE ` + inFlight + ` AND lease_until < $2 AND lease_owner = $3`
	if q.engine == store.SQLite {
		// Rows are in flight by batch there (journal.go); no row is in status sending under
		// this node's lease.
		q.renew = `UPDATE in_flight SET lease_until = $1 WHERE lease_until < $2 AND lease_owner = $3`
	}
	q.recoverExpired = back + inFlight + ` AND lease_until < $1`
	q.reclaimInFlight = back + inFlight + ` AND lease_owner = $1`
	// Delivery by delivery through the status index, as inFlightSQL: lease_owner has no index,
	// and a scan of the whole log at every start grows with every message ever sent.
	q.releaseOwn = `UPDATE sending_log SET lease_owner = NULL, lease_until = NULL
		WHERE delivery_id IN (SELECT id FROM deliveries) AND status = 'pending'` + unsent(q.engine, "status") + ` AND lease_owner = $1`
}

// setSettleQueries fills in the statements that settle a delivery.
func (q *queries) setSettleQueries() {
	notInFlight := ""
	if q.engine == store.SQLite {
		notInFlight = ` AND id NOT IN ` + flightIDs("$1")
	}
	pending := `delivery_id = $1 AND status = 'pending'` + unsent(q.engine, "status")
	q.expire = `UPDATE sending_log SET status = 'failed', failure_type = 'soft',
		failure_reason = 'expired', next_attempt_at = NULL, lease_owner = NULL, lease_until = NULL
		WHERE ` + pending + ` AND (lease_until IS NULL OR lease_until < $2)` + notInFlight
	// One statement, so that its three answers are of one moment. On PostgreSQL each statement
	// of a transaction sees what was committed before it: a count of pending rows, then a look
	// for a due one, could see another worker's claimed rows pending, then in flight (not
	// pending, so not due), and retry a delivery whose every row was being sent.
	q.waiting = `SELECT (SELECT COUNT(*) FROM sending_log WHERE ` + pending + `),
		(SELECT COUNT(*) FROM sending_log WHERE delivery_id = $1 AND status = 'sending'` + unsent(q.engine, "status") + `),
		EXISTS (SELECT 1 FROM sending_log WHERE ` + pending + ` AND (next_attempt_at IS NULL OR next_attempt_at <= $2))`
	// Sent rows have a sent_at: SQLite finds one through sending_log_sent, as its status
	// index leaves sent rows out.
	q.anySent = `SELECT EXISTS (SELECT 1 FROM sending_log WHERE delivery_id = $1 AND status = 'sent' AND sent_at IS NOT NULL)`
}

// sentSet is what the two writeSent statements set besides the provider id.
const sentSet = `status = 'sent', attempts = attempts + 1, next_attempt_at = NULL, failure_type = NULL,
	failure_reason = NULL, smtp_code = $3, enhanced_code = $4, sent_at = $5, lease_owner = NULL, lease_until = NULL`

func queriesFor(eng store.Engine) queries {
	const due = `SELECT id FROM sending_log WHERE delivery_id = $3 AND status = 'pending'
		AND (next_attempt_at IS NULL OR next_attempt_at <= $4) AND (lease_until IS NULL OR lease_until < $4) LIMIT $5`
	const returning = ` RETURNING id, profile_id, address, attempts, ambiguous`
	if eng == store.Postgres {
		q := queries{
			engine: eng,
			// SKIP LOCKED lets several nodes claim side by side without waiting on each other.
			claim: `UPDATE sending_log SET lease_owner = $1, lease_until = $2 WHERE id IN (` + due + ` FOR UPDATE SKIP LOCKED)` + returning,
			writeBack: `UPDATE sending_log SET status = j.s, attempts = j.a, next_attempt_at = j.n, failure_type = j.ft,
				failure_reason = j.fr, smtp_code = j.c, enhanced_code = j.e, provider_id = j.p, ambiguous = j.amb, sent_at = j.t,
				lease_owner = NULL, lease_until = NULL
				FROM jsonb_to_recordset($1::jsonb) AS j(id bigint, s text, a bigint, n bigint, ft text, fr text, c bigint,
					e text, p text, amb boolean, t bigint)
				WHERE sending_log.id = j.id AND sending_log.lease_owner = $2 AND sending_log.status = 'sending'
				RETURNING sending_log.id`,
			writeSent: `UPDATE sending_log SET ` + sentSet + `, provider_id = NULLIF(j.p, '')
				FROM unnest($1::bigint[], $6::text[]) AS j(id, p)
				WHERE sending_log.id = j.id AND sending_log.lease_owner = $2 AND sending_log.status = 'sending'
				RETURNING sending_log.id`,
			writeSentIDs: `UPDATE sending_log SET ` + sentSet + `, provider_id = NULL
				WHERE id = ANY($1::bigint[]) AND lease_owner = $2 AND status = 'sending' RETURNING id`,
		}
		q.setLeaseQueries()
		q.setBatchQueries()
		q.setSettleQueries()
		return q
	}
	q := queries{
		engine: eng,
		// Rows of batches in flight are pending too: they are left out here, or a worker would
		// read and render them again and again while the batches are out. Only the batches with
		// an id past the cursor can hold rows the pick reads; the others' lists are not decoded.
		pick: `SELECT id, profile_id, address, attempts, ambiguous FROM sending_log WHERE delivery_id = $1 AND status = 'pending'` +
			unsent(eng, "status") + `
			AND id > $2 AND (next_attempt_at IS NULL OR next_attempt_at <= $3) AND (lease_until IS NULL OR lease_until < $3)
			AND id NOT IN ` + flightIDsWhere("$1", `f.max_id > $2`) + `
			ORDER BY id LIMIT $4`,
		// The batch is parsed once into a materialised table, then joined by primary key: with
		// json_each in the FROM of the UPDATE itself, SQLite may scan sending_log and evaluate
		// json_each (parsing the whole batch again) for every row.
		// Each row object becomes JSONB once (jsonb(value)), so the eleven fields are read from
		// the binary form instead of the row's text being parsed once per field.
		writeBack: `WITH r AS MATERIALIZED (SELECT jsonb(value) AS v FROM json_each($1)),
			j AS MATERIALIZED (SELECT v->>'id' AS id, v->>'s' AS s, v->>'a' AS a, v->>'n' AS n,
				v->>'ft' AS ft, v->>'fr' AS fr, v->>'c' AS c, v->>'e' AS e, v->>'p' AS p,
				v->>'amb' AS amb, v->>'t' AS t FROM r)
			UPDATE sending_log SET status = j.s, attempts = j.a, next_attempt_at = j.n,
			failure_type = j.ft, failure_reason = j.fr, smtp_code = j.c,
			enhanced_code = j.e, provider_id = j.p, ambiguous = j.amb, sent_at = j.t,
			lease_owner = NULL, lease_until = NULL
			FROM j
			WHERE sending_log.id = j.id AND ` + batchRowSQL + `
			RETURNING sending_log.id`,
		// Each element is "id provider": splitting a string costs less than reading a JSON
		// object, and most rows of a batch take this path.
		countedSent: `WITH j AS MATERIALIZED (SELECT CAST(substr(value, 1, instr(value, ' ') - 1) AS INTEGER) AS id,
				nullif(substr(value, instr(value, ' ') + 1), '') AS p FROM json_each($1))
			UPDATE sending_log SET ` + sentSet + `, provider_id = j.p
			FROM j
			WHERE sending_log.id = j.id AND ` + batchRowSQL,
		countedSentIDs: `UPDATE sending_log SET ` + sentSet + `, provider_id = NULL
			WHERE id IN (SELECT value FROM json_each($1)) AND +status = 'pending'`,
	}
	q.writeSent = q.countedSent + ` RETURNING sending_log.id`
	q.writeSentIDs = q.countedSentIDs + ` RETURNING id`
	q.setLeaseQueries()
	q.setBatchQueries()
	q.setSettleQueries()
	return q
}

// batchRowSQL is the condition on a row of a SQLite batch in flight, which the write-back
// statements apply to: it is still pending (journal.go). The batch itself, deleted in the same
// transaction, is what makes it this node's; the node's id, $2 on PostgreSQL, goes unused.
const batchRowSQL = `sending_log.status = 'pending'`

// unsent returns " AND col <> 'sent'" on SQLite, whose status index has no entry for a sent row
// (migration 00014): SQLite uses a partial index only for a statement that states its
// condition, so the statements on other statuses state it. PostgreSQL indexes every status.
func unsent(eng store.Engine, col string) string {
	if eng != store.SQLite {
		return ""
	}
	return " AND " + col + " <> 'sent'"
}

// noIndex returns col so that SQLite does not pick an index on it: for a statement that names
// its rows by id, SQLite may otherwise walk the status index over every pending row of every
// delivery (a cost that grows with the queue) instead of looking the ids up.
func (q queries) noIndex(col string) string {
	if q.engine == store.SQLite {
		return "+" + col
	}
	return col
}

// idSet returns the SQL of a row source of the ids, as parameter $n, and its argument.
func (q queries) idSet(ids []int64, n int) (string, any) {
	p := "$" + strconv.Itoa(n)
	if q.engine == store.Postgres {
		return `(SELECT unnest(` + p + `::bigint[]))`, ids
	}
	b := make([]byte, 0, 8*len(ids)+2)
	b = append(b, '[')
	for i, id := range ids {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, id, 10)
	}
	return `(SELECT value FROM json_each(` + p + `))`, string(append(b, ']'))
}

// strSet is idSet for text values.
func (q queries) strSet(vals []string, n int) (string, any) {
	p := "$" + strconv.Itoa(n)
	if q.engine == store.Postgres {
		return `(SELECT unnest(` + p + `::text[]))`, vals
	}
	b, _ := json.Marshal(vals)
	return `(SELECT value FROM json_each(` + p + `))`, string(b)
}

// row is one claimed sending-log row.
type row struct {
	id, profileID int64
	address       string
	attempts      int
	ambiguous     bool
}

// claim takes up to BatchSize due pending rows of a delivery for this node.
//
// On PostgreSQL it leases them, so that the nodes sharing the queue take distinct rows. On
// SQLite, whose database one node owns, it only reads them: the workers of the engine take
// them in id order from a cursor per delivery, and markInFlight, which moves only rows still
// pending, is what makes a row one worker's. A row costs one write fewer.
func (e *Engine) claim(ctx context.Context, deliveryID int64) ([]row, error) {
	if e.sql.engine == store.SQLite {
		return e.pick(ctx, deliveryID)
	}
	now := e.clock.Now()
	var out []row
	err := e.db.InTx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, e.sql.claim, e.cfg.NodeID, now.Add(e.cfg.Lease).UnixMilli(), deliveryID, now.UnixMilli(), e.cfg.BatchSize)
		if err != nil {
			return err
		}
		out, err = scanRows(rows)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("claim rows of delivery %d: %w", deliveryID, err)
	}
	return out, nil
}

// pick reads the next due pending rows of a delivery after its cursor, and from the start
// when there are none after it: rows behind the cursor may be pending again (deferred,
// retried, or left by a pause). A worker may then read rows another one has read and not yet
// marked; only one of them will mark each row.
func (e *Engine) pick(ctx context.Context, deliveryID int64) ([]row, error) {
	e.cursorMu.Lock()
	defer e.cursorMu.Unlock()
	now := e.clock.Now().UnixMilli()
	after := e.cursors[deliveryID]
	for {
		rows, err := e.readQuery(ctx, e.sql.pick, deliveryID, after, now, e.cfg.BatchSize)
		if err != nil {
			return nil, fmt.Errorf("read rows of delivery %d to send: %w", deliveryID, err)
		}
		out, err := scanRows(rows)
		if err != nil {
			return nil, fmt.Errorf("read rows of delivery %d to send: %w", deliveryID, err)
		}
		if len(out) > 0 {
			e.cursors[deliveryID] = out[len(out)-1].id
			return out, nil
		}
		delete(e.cursors, deliveryID)
		if after == 0 {
			return nil, nil
		}
		after = 0
	}
}

// forgetCursors drops the cursors of deliveries no longer active.
func (e *Engine) forgetCursors(active []activeDelivery) {
	e.cursorMu.Lock()
	defer e.cursorMu.Unlock()
	for id := range e.cursors {
		if !slices.ContainsFunc(active, func(d activeDelivery) bool { return d.id == id }) {
			delete(e.cursors, id)
		}
	}
}

func scanRows(rows *sql.Rows) ([]row, error) {
	defer rows.Close()
	var out []row
	for rows.Next() {
		var r row
		if err := rows.Scan(&r.id, &r.profileID, &r.address, &r.attempts, &r.ambiguous); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// markInFlight puts the claimed rows among ids in flight under this node's lease, in a
// committed transaction, unless the delivery stopped sending meanwhile, and returns the ids it
// put there and, on SQLite, the id of their batch (journal.go). On PostgreSQL the rows move to
// status sending. On SQLite a row still pending and in no batch is this worker's to take,
// whoever else read it; a row another worker took first is not among the ids returned.
func (e *Engine) markInFlight(ctx context.Context, deliveryID int64, ids []int64) (map[int64]bool, int64, error) {
	if e.sql.engine == store.SQLite {
		return e.markBatch(ctx, deliveryID, ids)
	}
	set, arg := e.sql.idSet(ids, 3)
	marked := make(map[int64]bool, len(ids))
	err := e.db.InTx(ctx, func(tx *sql.Tx) error {
		clear(marked)
		rows, err := tx.QueryContext(ctx, `UPDATE sending_log SET status = 'sending', lease_owner = $1, lease_until = $2
			WHERE lease_owner = $1 AND status = 'pending' AND id IN `+set+`
			AND EXISTS (SELECT 1 FROM deliveries WHERE id = $4 AND state IN ('sending', 'retrying'))
			RETURNING id`,
			e.cfg.NodeID, e.clock.Now().Add(e.cfg.Lease).UnixMilli(), arg, deliveryID)
		if err != nil {
			return err
		}
		return readIDs(rows, marked)
	})
	if err != nil {
		return nil, 0, fmt.Errorf("mark %d rows of delivery %d in flight: %w", len(ids), deliveryID, err)
	}
	return marked, 0, nil
}

// release gives claimed rows back to the queue untouched. On SQLite a claim leases nothing.
func (e *Engine) release(ctx context.Context, ids []int64) error {
	if e.sql.engine == store.SQLite {
		return nil
	}
	set, arg := e.sql.idSet(ids, 2)
	return e.db.InTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `UPDATE sending_log SET lease_owner = NULL, lease_until = NULL
			WHERE `+e.sql.noIndex("lease_owner")+` = $1 AND `+e.sql.noIndex("status")+` = 'pending' AND id IN `+set, e.cfg.NodeID, arg)
		return err
	})
}

// process renders, sends and writes back one claimed batch of delivery d.
func (e *Engine) process(ctx context.Context, w *worker, d activeDelivery, rows []row) error {
	// Writes that record what happened must not be lost to a cancelled context.
	wctx := context.WithoutCancel(ctx)
	b, err := w.prepare(ctx, d, rows)
	if err != nil {
		_ = e.release(wctx, ids(rows))
		return err
	}
	// Rows that failed before sending (render errors) go in flight with the rest, so that the
	// write-back's check that they are still this node's holds for them too.
	markIDs := make([]int64, 0, len(b.msgs)+len(b.failed))
	for i := range b.msgs {
		markIDs = append(markIDs, b.msgs[i].ID)
	}
	for _, f := range b.failed {
		markIDs = append(markIDs, f.row.id)
	}
	if len(markIDs) == 0 {
		return nil
	}
	marked, batchID, err := e.markInFlight(ctx, d.id, markIDs)
	if err != nil {
		_ = e.release(wctx, ids(rows))
		return err
	}
	if len(marked) == 0 { // paused or stopped since the claim, or another worker's
		return e.release(wctx, ids(rows))
	}
	b.flight = batchID
	b.keep(marked)
	b.failed = slices.DeleteFunc(b.failed, func(f failedRow) bool { return !marked[f.row.id] })
	e.metrics.notBuilt.Add(int64(len(b.failed)))
	if len(b.msgs) > 0 {
		sctx, cancel := context.WithCancel(ctx)
		f := &flight{cancel: cancel}
		e.addFlight(d.id, f)
		e.metrics.batches.Add(1)
		e.sentSinceBeat.Store(true)
		e.metrics.inFlight.Add(int64(len(b.msgs)))
		err = e.cfg.Sender.Send(sctx, b.msgs, b.out)
		e.metrics.inFlight.Add(-int64(len(b.msgs)))
		e.metrics.countSent(b.out[:len(b.msgs)])
		e.removeFlight(d.id, f)
		cancel()
		if err != nil && !errors.Is(err, channel.ErrClosed) {
			e.log.Error("sender refused the batch", "delivery", d.id, "error", err)
		}
	}
	return e.writeBack(wctx, d, b)
}

func ids(rows []row) []int64 {
	out := make([]int64, len(rows))
	for i, r := range rows {
		out[i] = r.id
	}
	return out
}

// result is the new state of one row, as the write-back statement reads it.
type result struct {
	ID          int64   `json:"id"`
	Status      string  `json:"s"`
	Attempts    int     `json:"a"`
	NextAttempt *int64  `json:"n"`
	FailureType *string `json:"ft"`
	Reason      *string `json:"fr"`
	Code        *int    `json:"c"`
	Enhanced    *string `json:"e"`
	ProviderID  *string `json:"p"`
	Ambiguous   bool    `json:"amb"`
	SentAt      *int64  `json:"t"`
}

// quarantineChange is a quarantine rule to apply to an address with the write-back.
type quarantineChange struct {
	address, reason string
	hard, full      bool
}

// sentGroup is the rows of a batch that a server accepted with the same reply codes. They are
// written with one statement over their ids (and provider ids), which costs about half of the
// general statement's reading of a JSON object per row, and most rows of a batch are such.
type sentGroup struct {
	code      int
	enhanced  string
	ids       []int64
	providers []string // one per id, "" when the server named no queue id
	named     bool     // some provider id is not ""
}

// writeBack writes the outcomes of a batch in one transaction: one statement per group of
// rows sent with the same reply codes, one for every other row, one to find the erroneous
// addresses among the successes, and a quarantine rule per failed or formerly erroneous
// address. On SQLite the transaction runs a second time, reading ids back, in the one case
// writeSent's count cannot account for (errSentCount).
func (e *Engine) writeBack(ctx context.Context, d activeDelivery, b *batch) error {
	now := e.clock.Now()
	results := make([]result, 0, len(b.msgs)+len(b.failed))
	var rest []result
	var groups []*sentGroup
	var changes []quarantineChange
	var sent []string
	for i := range b.msgs {
		o := b.out[i]
		r, qc := e.decide(d, b.rows[i], o, now)
		results = append(results, r)
		if qc != nil {
			changes = append(changes, *qc)
		}
		if r.Status == "sent" {
			sent = append(sent, b.rows[i].address)
		}
		if o.Status != channel.Sent {
			rest = append(rest, r)
			continue
		}
		var g *sentGroup
		for _, x := range groups {
			if x.code == o.Code && x.enhanced == o.Enhanced {
				g = x
				break
			}
		}
		if g == nil {
			g = &sentGroup{code: o.Code, enhanced: o.Enhanced}
			groups = append(groups, g)
		}
		g.ids = append(g.ids, r.ID)
		g.providers = append(g.providers, o.ProviderID)
		g.named = g.named || o.ProviderID != ""
	}
	for _, f := range b.failed {
		r := failedResult(f.row, "hard", f.reason)
		results = append(results, r)
		rest = append(rest, r)
	}
	addresses := make(map[int64]string, len(results))
	for _, r := range b.rows {
		addresses[r.id] = r.address
	}
	for _, f := range b.failed {
		addresses[f.row.id] = f.row.address
	}
	if len(results) == 0 {
		return nil
	}
	var doc []byte
	if len(rest) > 0 {
		var err error
		if doc, err = json.Marshal(rest); err != nil {
			return fmt.Errorf("encode outcomes: %w", err)
		}
	}
	write := func(exact bool) error {
		return e.db.InTx(ctx, func(tx *sql.Tx) error {
			if b.flight != 0 {
				mine, err := e.endBatch(ctx, tx, b.flight)
				if err != nil {
					return err
				}
				if !mine {
					e.log.Warn("the batch's lease ran out and its rows went back to the queue as ambiguous; its outcomes here are dropped",
						"delivery", d.id, "rows", len(results))
					return nil
				}
			}
			written := make(map[int64]bool, len(results))
			for _, g := range groups {
				if err := e.writeSent(ctx, tx, g, now.UnixMilli(), written, exact); err != nil {
					return err
				}
			}
			if len(rest) > 0 {
				if err := e.writeRows(ctx, tx, string(doc), written); err != nil {
					return err
				}
			}
			if len(written) < len(results) {
				e.log.Warn("some rows of the batch were taken over by another node after their lease ran out; their outcome here is dropped",
					"delivery", d.id, "rows", len(results)-len(written))
			}
			// The delivery's live counters and the event webhooks move with the rows, for the
			// rows this write changed: they commit or roll back together.
			var moves stats.Counters
			var events []webhook.Event
			for _, r := range results {
				if !written[r.ID] {
					continue
				}
				ft := ""
				if r.FailureType != nil {
					ft = *r.FailureType
				}
				moves.Move(stats.OutcomeNone, stats.OutcomeOf(r.Status, ft), 1)
				if r.Status == "sent" || r.Status == "failed" {
					ev := webhook.Event{Type: r.Status, At: now, DeliveryID: d.id, LogID: r.ID, Address: addresses[r.ID]}
					if r.Status == "failed" {
						ev.Data = map[string]any{"failure_type": ft, "reason": deref(r.Reason), "smtp_code": r.Code, "enhanced_code": r.Enhanced}
					}
					events = append(events, ev)
				}
			}
			if !moves.IsZero() {
				if err := stats.Apply(ctx, txRunner{e, tx}, d.id, now, moves); err != nil {
					return err
				}
			}
			if err := webhook.Emit(ctx, txRunner{e, tx}, e.db.Engine, now, events); err != nil {
				return err
			}
			if len(sent) > 0 {
				erroneous, err := e.erroneous(ctx, tx, sent)
				if err != nil {
					return err
				}
				for _, a := range erroneous {
					if _, err := e.cfg.Quarantine.RecordSuccess(ctx, tx, quarantine.Email, a, now); err != nil {
						return err
					}
				}
			}
			sortChanges(changes)
			for _, c := range changes {
				var err error
				if c.hard {
					_, err = e.cfg.Quarantine.RecordHard(ctx, tx, quarantine.Email, c.address, c.reason, now)
				} else {
					_, err = e.cfg.Quarantine.RecordSoft(ctx, tx, quarantine.Email, c.address, c.reason, c.full, now)
				}
				if p, ok := problem.As(err); err != nil && (!ok || p.Kind != problem.Invalid) {
					return err
				}
			}
			return nil
		})
	}
	// On SQLite the sent rows are first written without reading their ids back (see writeSent);
	// should a count differ, the transaction is undone and written again, reading them.
	exact := e.sql.engine != store.SQLite
	for {
		err := write(exact)
		if errors.Is(err, errSentCount) && !exact {
			e.log.Warn("rows of a batch in flight changed meanwhile; writing its outcomes again, row by row", "delivery", d.id)
			exact = true
			continue
		}
		if err != nil {
			return fmt.Errorf("write back the outcomes of %d rows of delivery %d: %w", len(results), d.id, err)
		}
		return nil
	}
}

// errSentCount is writeSent's report that a counted statement changed fewer rows than it named.
var errSentCount = errors.New("sending: a sent group's rows were not all pending")

// writeSent marks the rows of g sent at ms, those still in flight under this node's lease,
// and adds the ids it changed to written. Unless exact, on SQLite, it counts the rows it
// changed instead of reading their ids (about 1 µs a row): the write-back found its batch
// still in flight, so its rows are pending, since nothing else writes a row while its batch
// is out. A count short of the group's rows returns errSentCount, for the transaction to be
// undone and done again exactly.
func (e *Engine) writeSent(ctx context.Context, tx *sql.Tx, g *sentGroup, ms int64, written map[int64]bool, exact bool) error {
	var code, enhanced any
	if g.code != 0 {
		code = g.code
	}
	if g.enhanced != "" {
		enhanced = g.enhanced
	}
	q, ids := e.sql.writeSentIDs, any(g.ids)
	args := []any{nil, e.cfg.NodeID, code, enhanced, ms}
	switch {
	case g.named && e.sql.engine == store.Postgres:
		q = e.sql.writeSent
		args = append(args, g.providers)
	case g.named:
		q = e.sql.writeSent
		pairs := make([]string, len(g.ids))
		for i, id := range g.ids {
			pairs[i] = strconv.FormatInt(id, 10) + " " + g.providers[i]
		}
		doc, err := json.Marshal(pairs)
		if err != nil {
			return fmt.Errorf("encode provider ids: %w", err)
		}
		ids = string(doc)
	case e.sql.engine == store.SQLite:
		_, ids = e.sql.idSet(g.ids, 1)
	}
	args[0] = ids
	if !exact {
		q = e.sql.countedSentIDs
		if g.named {
			q = e.sql.countedSent
		}
		res, err := e.txExec(ctx, tx, q, args...)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n != int64(len(g.ids)) {
			return cmp.Or(err, errSentCount)
		}
		for _, id := range g.ids {
			written[id] = true
		}
		return nil
	}
	rows, err := e.txQuery(ctx, tx, q, args...)
	if err != nil {
		return err
	}
	return readIDs(rows, written)
}

// writeRows applies the encoded outcomes to the rows still in flight under this node's lease
// and adds the ids it changed to written.
func (e *Engine) writeRows(ctx context.Context, tx *sql.Tx, doc string, written map[int64]bool) error {
	rows, err := e.txQuery(ctx, tx, e.sql.writeBack, doc, e.cfg.NodeID)
	if err != nil {
		return err
	}
	return readIDs(rows, written)
}

// readIDs adds the ids of a RETURNING id statement's rows to set, and closes rows.
func readIDs(rows *sql.Rows, set map[int64]bool) error {
	defer rows.Close()
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return err
		}
		set[id] = true
	}
	return rows.Err()
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// erroneous returns those of addresses (as sent) whose quarantine entry is erroneous, the only
// ones a success changes.
func (e *Engine) erroneous(ctx context.Context, tx *sql.Tx, addresses []string) ([]string, error) {
	keys := make([]string, 0, len(addresses))
	for _, a := range addresses {
		if k, err := quarantine.NormalizeAddress(quarantine.Email, a); err == nil {
			keys = append(keys, k)
		}
	}
	_, arg := e.sql.strSet(keys, 1)
	rows, err := e.txQuery(ctx, tx, e.sql.erroneous, arg)
	if err != nil {
		return nil, fmt.Errorf("find erroneous addresses: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var a string
		if err := rows.Scan(&a); err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, rows.Err()
}

// settle expires the pending rows of a delivery past its validity and moves the delivery on
// when nothing is left to send now: retrying while only retries wait, then finished (failed
// when no row was sent).
func (e *Engine) settle(ctx context.Context, d activeDelivery) error {
	now := e.clock.Now()
	ms := now.UnixMilli()
	err := e.db.InTx(ctx, func(tx *sql.Tx) error {
		if !d.validUntil.IsZero() && !now.Before(d.validUntil) {
			res, err := tx.ExecContext(ctx, e.sql.expire, d.id, ms)
			if err != nil {
				return err
			}
			// Expired rows count as soft bounces, like any soft failure.
			if n, _ := res.RowsAffected(); n > 0 {
				var moves stats.Counters
				moves.Move(stats.OutcomeNone, stats.OutcomeOf("failed", "soft"), n)
				if err := stats.Apply(ctx, txRunner{e, tx}, d.id, now, moves); err != nil {
					return err
				}
			}
		}
		var waiting, inFlight int64
		var due, anySent bool
		if err := tx.QueryRowContext(ctx, e.sql.waiting, d.id, ms).Scan(&waiting, &inFlight, &due); err != nil {
			return err
		}
		if e.settleHook != nil {
			e.settleHook()
		}
		if inFlight > 0 {
			return nil
		}
		if waiting > 0 {
			if due || d.state == delivery.Retrying {
				return nil
			}
			return e.move(ctx, tx, d, delivery.Retrying, fmt.Sprintf("%d recipients wait for a retry", waiting))
		}
		if err := tx.QueryRowContext(ctx, e.sql.anySent, d.id).Scan(&anySent); err != nil {
			return err
		}
		if anySent {
			return e.move(ctx, tx, d, delivery.Finished, "every recipient was processed")
		}
		return e.move(ctx, tx, d, delivery.Failed, "no message could be sent")
	})
	if err != nil {
		return fmt.Errorf("settle delivery %d: %w", d.id, err)
	}
	return nil
}

func (e *Engine) move(ctx context.Context, tx *sql.Tx, d activeDelivery, to delivery.State, reason string) error {
	err := e.cfg.Deliveries.EngineMove(ctx, tx, d.id, d.state, to, reason)
	if p, ok := problem.As(err); ok && p.Code == "state_changed" {
		return nil // paused or stopped meanwhile: leave it to whoever did
	}
	if err == nil {
		e.log.Info("delivery moves on", "delivery", d.id, "from", d.state, "to", to, "reason", reason)
	}
	return err
}

// backoff is the wait before retry number attempt (from 1).
func (e *Engine) backoff(attempt int) time.Duration {
	b := e.cfg.Backoff
	return b[min(max(attempt, 1), len(b))-1]
}
