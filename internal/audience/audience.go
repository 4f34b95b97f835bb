// Package audience holds saved targets: filter audiences (a query in Herald's filter
// language over profiles, see package filter) and static lists of profiles. An audience
// resolves to a SQL condition over the profiles table, so counting it, previewing it and
// preparing a delivery from it are set-based queries whatever its size.
package audience

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/heraldhq/herald/internal/audience/filter"
	"github.com/heraldhq/herald/internal/audit"
	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/problem"
	"github.com/heraldhq/herald/internal/profile"
	"github.com/heraldhq/herald/internal/store"
)

// Kinds of audience.
const (
	KindFilter = "filter"
	KindList   = "list"
)

// MaxListAdd is the most profile ids one call adds to or removes from a static list.
const MaxListAdd = 100_000

// Audience is a saved target.
type Audience struct {
	ID        int64     `json:"id"`
	Name      string    `json:"name"`
	Kind      string    `json:"kind"`
	Filter    string    `json:"filter,omitempty"`
	CreatedBy *int64    `json:"created_by,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Service manages audiences.
type Service struct {
	db    *store.DB
	clock clock.Clock
	log   *slog.Logger
}

// NewService returns a Service over db.
func NewService(db *store.DB, clk clock.Clock, log *slog.Logger) *Service {
	return &Service{db: db, clock: clk, log: log}
}

// New is what Create needs: a name and either a filter (kind "filter", the default) or, for
// kind "list", optional initial profile ids.
type New struct {
	Name       string  `json:"name"`
	Kind       string  `json:"kind"`
	Filter     string  `json:"filter"`
	ProfileIDs []int64 `json:"profile_ids"`
}

// CheckFilter parses src and returns a problem that names the position of a syntax error.
func CheckFilter(src string) (filter.Expr, error) {
	e, err := filter.Parse(src)
	var se *filter.SyntaxError
	if errors.As(err, &se) {
		return nil, &problem.Error{Kind: problem.Invalid, Code: "invalid_filter", Field: "filter",
			Message: "the filter is not valid " + se.Error(),
			Details: map[string]any{"line": se.Line, "column": se.Col, "offset": se.Pos}}
	}
	if err != nil {
		return nil, problem.Invalidf("filter", "the filter is not valid: %v", err)
	}
	return e, nil
}

// Create saves a new audience.
func (s *Service) Create(ctx context.Context, actor audit.Actor, n New) (Audience, error) {
	name := strings.TrimSpace(n.Name)
	if name == "" || len(name) > 200 {
		return Audience{}, problem.Invalidf("name", "an audience needs a name of 1 to 200 characters")
	}
	kind := n.Kind
	if kind == "" {
		kind = KindFilter
	}
	switch kind {
	case KindFilter:
		if strings.TrimSpace(n.Filter) == "" {
			return Audience{}, problem.Invalidf("filter", "a filter audience needs a filter, e.g. email_domain = \"example.com\"")
		}
		if _, err := CheckFilter(n.Filter); err != nil {
			return Audience{}, err
		}
		if len(n.ProfileIDs) > 0 {
			return Audience{}, problem.Invalidf("profile_ids", "profile ids are for static lists (kind \"list\"), not filter audiences")
		}
	case KindList:
		if n.Filter != "" {
			return Audience{}, problem.Invalidf("filter", "a static list has no filter")
		}
		if len(n.ProfileIDs) > MaxListAdd {
			return Audience{}, problem.Invalidf("profile_ids", "at most %d profile ids per call", MaxListAdd)
		}
	default:
		return Audience{}, problem.Invalidf("kind", "kind must be %q or %q, not %q", KindFilter, KindList, kind)
	}
	var a Audience
	err := s.db.InTx(ctx, func(tx *sql.Tx) error {
		now := s.clock.Now()
		var id int64
		err := tx.QueryRowContext(ctx, `INSERT INTO audiences (name, kind, filter, created_by, created_at, updated_at)
			VALUES ($1, $2, $3, $4, $5, $5) RETURNING id`, name, kind, n.Filter, actor.ID, now.UnixMilli()).Scan(&id)
		if store.IsUniqueViolation(err) {
			return problem.Conflictf("name_taken", "an audience named %q already exists", name)
		}
		if err != nil {
			return fmt.Errorf("create audience: %w", err)
		}
		if len(n.ProfileIDs) > 0 {
			if err := s.addMembers(ctx, tx, id, n.ProfileIDs); err != nil {
				return err
			}
		}
		if a, err = get(ctx, tx, id); err != nil {
			return err
		}
		return audit.Record(ctx, tx, now, actor, "audience.create", "audience", id, nil, a)
	})
	return a, err
}

type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

const columns = `id, name, kind, filter, created_by, created_at, updated_at`

func scan(row interface{ Scan(...any) error }) (Audience, error) {
	var a Audience
	var by sql.NullInt64
	var created, updated int64
	if err := row.Scan(&a.ID, &a.Name, &a.Kind, &a.Filter, &by, &created, &updated); err != nil {
		return Audience{}, err
	}
	if by.Valid {
		a.CreatedBy = &by.Int64
	}
	a.CreatedAt, a.UpdatedAt = clock.FromMillis(created), clock.FromMillis(updated)
	return a, nil
}

func get(ctx context.Context, q querier, id int64) (Audience, error) {
	return getSuffix(ctx, q, id, "")
}

// getForUpdate is get for a change in tx (store.ForUpdate): two changes at once (one renaming,
// one editing the filter) are made in turn and neither is undone by the other.
func (s *Service) getForUpdate(ctx context.Context, tx *sql.Tx, id int64) (Audience, error) {
	return getSuffix(ctx, tx, id, store.ForUpdate(s.db.Engine))
}

func getSuffix(ctx context.Context, q querier, id int64, suffix string) (Audience, error) {
	a, err := scan(q.QueryRowContext(ctx, `SELECT `+columns+` FROM audiences WHERE id = $1`+suffix, id))
	if errors.Is(err, sql.ErrNoRows) {
		return Audience{}, problem.NotFoundf("there is no audience with id %d", id)
	}
	if err != nil {
		return Audience{}, fmt.Errorf("read audience %d: %w", id, err)
	}
	return a, nil
}

// Get returns the audience with the given id.
func (s *Service) Get(ctx context.Context, id int64) (Audience, error) {
	return get(ctx, s.db.Read, id)
}

// List returns every audience by name.
func (s *Service) List(ctx context.Context) ([]Audience, error) {
	rows, err := s.db.Read.QueryContext(ctx, `SELECT `+columns+` FROM audiences ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list audiences: %w", err)
	}
	defer rows.Close()
	out := []Audience{}
	for rows.Next() {
		a, err := scan(rows)
		if err != nil {
			return nil, fmt.Errorf("list audiences: %w", err)
		}
		out = append(out, a)
	}
	return out, rows.Err()
}

// Update renames an audience or changes its filter.
func (s *Service) Update(ctx context.Context, actor audit.Actor, id int64, name, filterSrc *string) (Audience, error) {
	var after Audience
	err := s.db.InTx(ctx, func(tx *sql.Tx) error {
		before, err := s.getForUpdate(ctx, tx, id)
		if err != nil {
			return err
		}
		after = before
		if name != nil {
			n := strings.TrimSpace(*name)
			if n == "" || len(n) > 200 {
				return problem.Invalidf("name", "an audience needs a name of 1 to 200 characters")
			}
			after.Name = n
		}
		if filterSrc != nil {
			if before.Kind != KindFilter {
				return problem.Invalidf("filter", "a static list has no filter")
			}
			if _, err := CheckFilter(*filterSrc); err != nil {
				return err
			}
			after.Filter = *filterSrc
		}
		after.UpdatedAt = s.clock.Now()
		_, err = tx.ExecContext(ctx, `UPDATE audiences SET name = $1, filter = $2, updated_at = $3 WHERE id = $4`,
			after.Name, after.Filter, after.UpdatedAt.UnixMilli(), id)
		if store.IsUniqueViolation(err) {
			return problem.Conflictf("name_taken", "an audience named %q already exists", after.Name)
		}
		if err != nil {
			return fmt.Errorf("update audience %d: %w", id, err)
		}
		return audit.Record(ctx, tx, s.clock.Now(), actor, "audience.update", "audience", id, before, after)
	})
	return after, err
}

// Delete removes an audience.
func (s *Service) Delete(ctx context.Context, actor audit.Actor, id int64) error {
	return s.db.InTx(ctx, func(tx *sql.Tx) error {
		before, err := get(ctx, tx, id)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM audience_members WHERE audience_id = $1`, id); err != nil {
			return fmt.Errorf("delete audience %d: %w", id, err)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM audiences WHERE id = $1`, id); err != nil {
			return fmt.Errorf("delete audience %d: %w", id, err)
		}
		return audit.Record(ctx, tx, s.clock.Now(), actor, "audience.delete", "audience", id, before, nil)
	})
}

// AddMembers adds profiles to a static list; ids already in it are ignored. Unknown or
// erased profile ids are refused, and nothing is added.
func (s *Service) AddMembers(ctx context.Context, actor audit.Actor, id int64, profileIDs []int64) error {
	if len(profileIDs) > MaxListAdd {
		return problem.Invalidf("profile_ids", "at most %d profile ids per call", MaxListAdd)
	}
	return s.db.InTx(ctx, func(tx *sql.Tx) error {
		a, err := get(ctx, tx, id)
		if err != nil {
			return err
		}
		if a.Kind != KindList {
			return problem.Invalidf("kind", "audience %d is a filter audience; only static lists have members", id)
		}
		if err := s.addMembers(ctx, tx, id, profileIDs); err != nil {
			return err
		}
		return audit.Record(ctx, tx, s.clock.Now(), actor, "audience.add_members", "audience", id, nil, map[string]any{"count": len(profileIDs)})
	})
}

func (s *Service) addMembers(ctx context.Context, tx *sql.Tx, id int64, ids []int64) error {
	// The ids travel as one parameter: a JSON array on SQLite, a bigint[] on PostgreSQL.
	idsFrom, arg := `(SELECT value AS v FROM json_each($1))`, any(idsJSON(ids))
	if s.db.Engine == store.Postgres {
		idsFrom, arg = `(SELECT unnest($1::bigint[]) AS v)`, ids
	}
	var missing sql.NullInt64
	if err := tx.QueryRowContext(ctx, `SELECT min(j.v) FROM `+idsFrom+` j
		WHERE NOT EXISTS (SELECT 1 FROM profiles p WHERE p.id = j.v AND p.erased_at IS NULL)`, arg).Scan(&missing); err != nil {
		return fmt.Errorf("check profile ids: %w", err)
	}
	if missing.Valid {
		return problem.Invalidf("profile_ids", "there is no profile with id %d", missing.Int64)
	}
	q := `INSERT INTO audience_members (audience_id, profile_id) SELECT $2, j.v FROM ` + idsFrom + ` j WHERE true ON CONFLICT DO NOTHING` // WHERE: SQLite needs it before ON CONFLICT
	if _, err := tx.ExecContext(ctx, q, arg, id); err != nil {
		return fmt.Errorf("add members: %w", err)
	}
	return nil
}

// RemoveMembers removes profiles from a static list.
func (s *Service) RemoveMembers(ctx context.Context, actor audit.Actor, id int64, profileIDs []int64) error {
	return s.db.InTx(ctx, func(tx *sql.Tx) error {
		a, err := get(ctx, tx, id)
		if err != nil {
			return err
		}
		if a.Kind != KindList {
			return problem.Invalidf("kind", "audience %d is a filter audience; only static lists have members", id)
		}
		q, arg := `DELETE FROM audience_members WHERE audience_id = $1 AND profile_id IN (SELECT value FROM json_each($2))`, any(idsJSON(profileIDs))
		if s.db.Engine == store.Postgres {
			q, arg = `DELETE FROM audience_members WHERE audience_id = $1 AND profile_id = ANY($2::bigint[])`, profileIDs
		}
		if _, err := tx.ExecContext(ctx, q, id, arg); err != nil {
			return fmt.Errorf("remove members: %w", err)
		}
		return audit.Record(ctx, tx, s.clock.Now(), actor, "audience.remove_members", "audience", id, nil, map[string]any{"count": len(profileIDs)})
	})
}

func idsJSON(ids []int64) string {
	var b strings.Builder
	b.WriteByte('[')
	for i, id := range ids {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprint(&b, id)
	}
	b.WriteByte(']')
	return b.String()
}

// Where returns the audience as a condition over the profiles table aliased alias (may be
// empty), with parameters numbered from firstParam. Erased profiles are excluded.
func (s *Service) Where(ctx context.Context, id int64, alias string, firstParam int) (profile.Where, error) {
	a, err := s.Get(ctx, id)
	if err != nil {
		return profile.Where{}, err
	}
	return s.WhereOf(a, alias, firstParam)
}

// WhereOf is Where for an audience already read.
func (s *Service) WhereOf(a Audience, alias string, firstParam int) (profile.Where, error) {
	col := func(c string) string {
		if alias == "" {
			return c
		}
		return alias + "." + c
	}
	if a.Kind == KindList {
		return profile.Where{
			SQL:  fmt.Sprintf(`%s IS NULL AND %s IN (SELECT profile_id FROM audience_members WHERE audience_id = $%d)`, col("erased_at"), col("id"), firstParam),
			Args: []any{a.ID},
		}, nil
	}
	e, err := CheckFilter(a.Filter)
	if err != nil {
		return profile.Where{}, fmt.Errorf("audience %d: %w", a.ID, err)
	}
	w, args, err := filter.CompileQualified(e, s.db.Engine, alias, firstParam, s.clock.Now())
	if err != nil {
		return profile.Where{}, fmt.Errorf("audience %d: %w", a.ID, err)
	}
	return profile.Where{SQL: col("erased_at") + " IS NULL AND (" + w + ")", Args: args}, nil
}

// Count returns how many profiles the audience holds now.
func (s *Service) Count(ctx context.Context, id int64) (int64, error) {
	w, err := s.Where(ctx, id, "", 1)
	if err != nil {
		return 0, err
	}
	var n int64
	if err := s.db.Read.QueryRowContext(ctx, `SELECT count(*) FROM profiles WHERE `+w.SQL, w.Args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("count audience %d: %w", id, err)
	}
	return n, nil
}
