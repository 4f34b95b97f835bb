// Package audit keeps the audit log: who changed what, when, from which state to which.
//
// An entry is written with Record inside the transaction of the change it describes, so the
// log never claims a change that was rolled back and never misses one that was committed.
package audit

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/heraldhq/herald/internal/store"
)

// Actor is who made a change: a user (ID set) or the system or command line (ID nil).
type Actor struct {
	ID   *int64 `json:"id,omitempty"`
	Name string `json:"name"`
	IP   string `json:"ip,omitempty"`
}

// System is the actor of changes Herald makes by itself (the scheduler, first start).
var System = Actor{Name: "system"}

// Entry is one audit record. Before and After are the object's state (any JSON-encodable
// value; nil when the object did not exist before or does not exist after).
type Entry struct {
	ID         int64           `json:"id"`
	At         time.Time       `json:"at"`
	Actor      Actor           `json:"actor"`
	Action     string          `json:"action"`
	ObjectType string          `json:"object_type"`
	ObjectID   string          `json:"object_id"`
	Before     json.RawMessage `json:"before,omitempty"`
	After      json.RawMessage `json:"after,omitempty"`
}

// Record writes one entry in tx. before and after are encoded as JSON.
func Record(ctx context.Context, tx *sql.Tx, at time.Time, actor Actor, action, objectType string, objectID any, before, after any) error {
	b, err := encode(before)
	if err != nil {
		return fmt.Errorf("audit %s: %w", action, err)
	}
	a, err := encode(after)
	if err != nil {
		return fmt.Errorf("audit %s: %w", action, err)
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO audit_log (at, actor_id, actor, action, object_type, object_id, before, after, ip)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
		at.UnixMilli(), actor.ID, actor.Name, action, objectType, fmt.Sprint(objectID), b, a, actor.IP)
	if err != nil {
		return fmt.Errorf("write audit entry %s: %w", action, err)
	}
	return nil
}

func encode(v any) (any, error) {
	if v == nil {
		return nil, nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return string(b), nil
}

// Query selects audit entries, newest first. Zero fields do not filter.
type Query struct {
	ObjectType string
	ObjectID   string
	ActorID    int64
	Action     string
	// BeforeID pages backwards: only entries with a smaller id.
	BeforeID int64
	// Limit is the page size, 1 to 500 (default 100).
	Limit int
}

// List returns the entries matching q, newest first.
func List(ctx context.Context, db *store.DB, q Query) ([]Entry, error) {
	if q.Limit <= 0 || q.Limit > 500 {
		q.Limit = 100
	}
	sqlText := `SELECT id, at, actor_id, actor, action, object_type, object_id, before, after, ip FROM audit_log WHERE 1=1`
	var args []any
	add := func(cond string, v any) {
		args = append(args, v)
		sqlText += " AND " + cond + " $" + strconv.Itoa(len(args))
	}
	if q.ObjectType != "" {
		add("object_type =", q.ObjectType)
	}
	if q.ObjectID != "" {
		add("object_id =", q.ObjectID)
	}
	if q.ActorID != 0 {
		add("actor_id =", q.ActorID)
	}
	if q.Action != "" {
		add("action =", q.Action)
	}
	if q.BeforeID > 0 {
		add("id <", q.BeforeID)
	}
	args = append(args, q.Limit)
	sqlText += " ORDER BY id DESC LIMIT $" + strconv.Itoa(len(args))
	rows, err := db.Read.QueryContext(ctx, sqlText, args...)
	if err != nil {
		return nil, fmt.Errorf("list audit log: %w", err)
	}
	defer rows.Close()
	out := []Entry{}
	for rows.Next() {
		var e Entry
		var at int64
		var actorID sql.NullInt64
		var before, after sql.NullString
		if err := rows.Scan(&e.ID, &at, &actorID, &e.Actor.Name, &e.Action, &e.ObjectType, &e.ObjectID, &before, &after, &e.Actor.IP); err != nil {
			return nil, fmt.Errorf("list audit log: %w", err)
		}
		e.At = time.UnixMilli(at).UTC()
		if actorID.Valid {
			id := actorID.Int64
			e.Actor.ID = &id
		}
		if before.Valid {
			e.Before = json.RawMessage(before.String)
		}
		if after.Valid {
			e.After = json.RawMessage(after.String)
		}
		out = append(out, e)
	}
	return out, rows.Err()
}
