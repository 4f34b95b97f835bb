package sending

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/heraldhq/herald/internal/store"
)

// On SQLite the rows in flight are recorded a batch at a time (migration 00012): markInFlight
// inserts one in_flight row naming the batch's sending-log rows, with their lowest and highest
// id (migration 00013), which stay pending, and the write-back deletes it in the transaction
// that writes their outcomes. A row of a batch in
// flight reads 'sending' wherever the API shows or filters statuses (statusSQL, statusIs).
// Moving every row to status sending and back cost three B-tree writes a message; the batch
// costs one write per batch. PostgreSQL, whose nodes claim rows side by side under leases,
// keeps the status. Rows in status sending, PostgreSQL's or those an older version left on
// SQLite, are recovered by status (queries.recoverExpired, queries.reclaimInFlight).

// flightIDs is the SQL row source of the ids of the rows in flight by batch: of the delivery
// the SQL expression delivery names, or of every delivery when it is "".
func flightIDs(delivery string) string { return flightIDsWhere(delivery, "") }

// flightIDsWhere is flightIDs of the batches (alias f) that also meet cond, unless it is "":
// a condition on their id range spares decoding the lists of those that cannot matter.
func flightIDsWhere(delivery, cond string) string {
	q := `SELECT j.value FROM in_flight f, json_each(f.log_ids) AS j`
	var where []string
	if delivery != "" {
		where = append(where, `f.delivery_id = `+delivery)
	}
	if cond != "" {
		where = append(where, cond)
	}
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, ` AND `)
	}
	return `(` + q + `)`
}

// statusSQL is the status of sending-log row s (a table name or alias) as the API shows it:
// on SQLite a pending row of a batch in flight reads 'sending'. delivery is the SQL of the
// row's delivery, or "" to look through every batch in flight.
func statusSQL(eng store.Engine, s, delivery string) string {
	if eng != store.SQLite {
		return s + `.status`
	}
	return `CASE WHEN ` + s + `.status = 'pending' AND ` + s + `.id IN ` + flightIDs(delivery) +
		` THEN 'sending' ELSE ` + s + `.status END`
}

// statusIs is the condition that sending-log row s shows status st; param binds st as a
// parameter and returns its SQL, when the condition needs it. The rows in flight by batch are
// few, so the condition for sending looks them up by id: the ids of the batches in flight and
// of the rows an older version left in status sending.
func statusIs(eng store.Engine, s, delivery, st string, param func(any) string) string {
	if eng != store.SQLite {
		return s + `.status = ` + param(st)
	}
	switch st {
	case "sending":
		return s + `.id IN (SELECT value FROM ` + flightIDs(delivery) + ` UNION ALL SELECT id FROM sending_log WHERE delivery_id = ` +
			delivery + ` AND status = 'sending'` + unsent(eng, "status") + `) AND ` + s + `.status IN ('pending', 'sending')`
	case "pending":
		return `(` + s + `.status = 'pending' AND ` + s + `.id NOT IN ` + flightIDs(delivery) + `)` + unsent(eng, s+".status")
	case "sent":
		return s + `.status = 'sent'`
	}
	return s + `.status = ` + param(st) + unsent(eng, s+".status")
}

// inFlightCountSQL counts the rows of delivery $1 in flight: in status sending, and on SQLite
// in its batches in flight too.
func inFlightCountSQL(eng store.Engine) string {
	q := `SELECT COUNT(*) FROM sending_log WHERE delivery_id = $1 AND status = 'sending'` + unsent(eng, "status")
	if eng == store.SQLite {
		q = `SELECT (` + q + `) + (SELECT COALESCE(SUM(json_array_length(log_ids)), 0) FROM in_flight WHERE delivery_id = $1)`
	}
	return q
}

// markBatch is markInFlight on SQLite: it records as one batch in flight, under this node's
// lease, those of ids still pending and in no other batch, unless the delivery stopped sending
// meanwhile. It returns the ids it recorded and the batch's id (0 when none).
func (e *Engine) markBatch(ctx context.Context, deliveryID int64, ids []int64) (map[int64]bool, int64, error) {
	marked := make(map[int64]bool, len(ids))
	if len(ids) == 0 {
		return marked, 0, nil
	}
	_, arg := e.sql.idSet(ids, 3)
	lo, hi := slices.Min(ids), slices.Max(ids)
	var batchID int64
	var list string
	err := e.db.InTx(ctx, func(tx *sql.Tx) error {
		rows, err := e.txQuery(ctx, tx, e.sql.markBatch, e.cfg.NodeID, e.clock.Now().Add(e.cfg.Lease).UnixMilli(), arg, deliveryID, lo, hi)
		if err != nil {
			return err
		}
		defer rows.Close()
		batchID, list = 0, "[]"
		if rows.Next() {
			if err := rows.Scan(&batchID, &list); err != nil {
				return err
			}
		}
		return rows.Err()
	})
	if err != nil {
		return nil, 0, fmt.Errorf("mark %d rows of delivery %d in flight: %w", len(ids), deliveryID, err)
	}
	if err := parseIDList(list, marked); err != nil {
		return nil, 0, fmt.Errorf("mark %d rows of delivery %d in flight: %w", len(ids), deliveryID, err)
	}
	return marked, batchID, nil
}

// markBatchSQL records a batch of the rows among set (a row source of ids between $5 and $6)
// still pending and in no batch of delivery $4, under lease owner $1 until $2. Only the batches
// whose id range meets [$5, $6] are read: workers mostly take disjoint runs of ids. A row's own
// lease columns are not looked at: on SQLite only an older version set them on pending rows
// (its claims), and the pick has left out those whose lease still holds; the write-back clears
// them.
func markBatchSQL(set string) string {
	// An aggregate without GROUP BY yields a row even when nothing matched: HAVING drops it.
	return `INSERT INTO in_flight (delivery_id, lease_owner, lease_until, log_ids, min_id, max_id)
		SELECT $4, $1, $2, json_group_array(s.id), min(s.id), max(s.id) FROM sending_log s
		WHERE s.id IN ` + set + ` AND +s.status = 'pending'
		AND s.id NOT IN ` + flightIDsWhere("$4", `f.max_id >= $5 AND f.min_id <= $6`) + `
		AND EXISTS (SELECT 1 FROM deliveries WHERE id = $4 AND state IN ('sending', 'retrying'))
		HAVING COUNT(*) > 0
		RETURNING id, log_ids`
}

// parseIDList adds the ids of a JSON array of integers, as SQLite's json_group_array writes
// it, to set.
func parseIDList(list string, set map[int64]bool) error {
	if len(list) < 2 || list[0] != '[' || list[len(list)-1] != ']' {
		return fmt.Errorf("malformed id list %.40q", list)
	}
	s := list[1 : len(list)-1]
	for len(s) > 0 {
		end := 0
		for end < len(s) && s[end] != ',' {
			end++
		}
		id, err := strconv.ParseInt(s[:end], 10, 64)
		if err != nil {
			return fmt.Errorf("malformed id list %.40q: %w", list, err)
		}
		set[id] = true
		s = s[min(end+1, len(s)):]
	}
	return nil
}

// endBatch deletes batch id of this node in tx, before its outcomes are written, and reports
// whether it was still there: a batch whose lease ran out was taken back by recoverBatches,
// and its rows are no longer this node's to write.
func (e *Engine) endBatch(ctx context.Context, tx *sql.Tx, id int64) (bool, error) {
	res, err := e.txExec(ctx, tx, endBatchSQL, id, e.cfg.NodeID)
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n > 0, err
}

// recoverBatchRowsSQL marks ambiguous the rows of the batches in flight that match cond.
func recoverBatchRowsSQL(cond string) string {
	return `UPDATE sending_log SET ambiguous = TRUE
		WHERE id IN (SELECT j.value FROM in_flight f, json_each(f.log_ids) AS j WHERE f.` + cond + `) AND +status = 'pending'`
}

// recoverBatches returns the rows of the batches in flight that match cond (over in_flight,
// with $1 as arg) to the queue as ambiguous, since they may have been sent, deletes the
// batches, and returns how many rows it returned.
func recoverBatches(ctx context.Context, tx *sql.Tx, cond string, arg any) (int64, error) {
	res, err := tx.ExecContext(ctx, recoverBatchRowsSQL(cond), arg)
	if err != nil {
		return 0, err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, err
	}
	_, err = tx.ExecContext(ctx, `DELETE FROM in_flight WHERE `+cond, arg)
	return n, err
}
