package filter

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/heraldhq/herald/internal/store"
)

// ErrInvalid is wrapped by Compile's errors for trees Parse would not have produced: an
// unknown field, a value of the wrong type, an empty and or or.
var ErrInvalid = errors.New("invalid filter")

// maxCompileDepth bounds the recursion over hand-built trees (Parse stops at MaxDepth).
const maxCompileDepth = 1000

// Compile turns e into a WHERE fragment over the profiles table for engine eng, with bare
// column names. Its parameters are numbered from firstParam ($firstParam, $firstParam+1, ...)
// and their values are returned in args, in order: strings, int64s, float64s, bools, and on
// PostgreSQL a []string per attribute path, bound as text[] (pgx's stdlib driver does this).
// Relative dates count from now.
//
// The fragment is never NULL (see the package doc), so it may be negated or combined freely:
//
//	where, args, err := filter.Compile(e, db.Engine, 1, clock.Now())
//	rows, err := db.Read.QueryContext(ctx, "SELECT id FROM profiles WHERE "+where, args...)
func Compile(e Expr, eng store.Engine, firstParam int, now time.Time) (where string, args []any, err error) {
	return CompileQualified(e, eng, "", firstParam, now)
}

// CompileQualified is Compile with every column qualified by alias (as in p.email), for
// queries that join profiles to other tables. An empty alias gives bare column names.
func CompileQualified(e Expr, eng store.Engine, alias string, firstParam int, now time.Time) (where string, args []any, err error) {
	if eng != store.SQLite && eng != store.Postgres {
		return "", nil, fmt.Errorf("compile filter: unknown engine %q", eng)
	}
	if firstParam < 1 {
		return "", nil, fmt.Errorf("compile filter: first parameter number %d is below 1", firstParam)
	}
	if alias != "" && !isSQLName(alias) {
		return "", nil, fmt.Errorf("compile filter: table alias %q is not a plain SQL name", alias)
	}
	c := &compiler{eng: eng, next: firstParam, now: now.UnixMilli()}
	if alias != "" {
		c.prefix = alias + "."
	}
	if err := c.expr(e, 0); err != nil {
		return "", nil, fmt.Errorf("compile filter %q: %w", exprString(e), err)
	}
	return c.b.String(), c.args, nil
}

func exprString(e Expr) (s string) {
	if e == nil {
		return ""
	}
	defer func() {
		if recover() != nil {
			s = "?"
		}
	}()
	return e.String()
}

func isSQLName(s string) bool {
	for i := 0; i < len(s); i++ {
		if !isWordByte(s[i]) {
			return false
		}
	}
	return s != "" && !isDigit(s[0])
}

type compiler struct {
	eng    store.Engine
	prefix string
	next   int
	now    int64
	args   []any
	b      strings.Builder
}

// arg binds v and returns its placeholder.
func (c *compiler) arg(v any) string {
	c.args = append(c.args, v)
	p := "$" + strconv.Itoa(c.next)
	c.next++
	return p
}

func (c *compiler) w(parts ...string) {
	for _, p := range parts {
		c.b.WriteString(p)
	}
}

func invalidErr(err error) error {
	return fmt.Errorf("%w: %w", ErrInvalid, err)
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

func (c *compiler) expr(e Expr, depth int) error {
	if depth > maxCompileDepth {
		return invalid("nested more than %d levels", maxCompileDepth)
	}
	switch e := e.(type) {
	case *And:
		return c.join(e.Terms, " AND ", "and", depth)
	case *Or:
		return c.join(e.Terms, " OR ", "or", depth)
	case *Not:
		if e == nil {
			break
		}
		c.w("(NOT ")
		if err := c.expr(e.X, depth+1); err != nil {
			return err
		}
		c.w(")")
		return nil
	case *Comparison:
		if e == nil {
			break
		}
		return c.comparison(e)
	case *In:
		if e == nil {
			break
		}
		return c.in(e)
	case *Exists:
		if e == nil {
			break
		}
		k, err := fieldKind(e.Field)
		if err != nil {
			return invalidErr(err)
		}
		c.exists(e.Field, k)
		return nil
	}
	return invalid("missing or unknown condition %T", e)
}

func (c *compiler) join(terms []Expr, sep, word string, depth int) error {
	if len(terms) == 0 {
		return invalid("%s with no terms", word)
	}
	c.w("(")
	for i, t := range terms {
		if i > 0 {
			c.w(sep)
		}
		if err := c.expr(t, depth+1); err != nil {
			return err
		}
	}
	c.w(")")
	return nil
}

// sqlOps are the SQL spellings of the ordering operators.
var sqlOps = map[Op]string{OpEq: "=", OpNe: "<>", OpLt: "<", OpLe: "<=", OpGt: ">", OpGe: ">="}

func (c *compiler) comparison(e *Comparison) error {
	k, err := fieldKind(e.Field)
	if err != nil {
		return invalidErr(err)
	}
	if _, ok := sqlOps[e.Op]; !ok && !e.Op.isWordOp() {
		return invalid("unknown operator %q", e.Op)
	}
	if err := checkValue(e.Field, k, e.Op, e.Value); err != nil {
		return invalidErr(err)
	}
	if _, ok := e.Value.(Null); ok {
		if e.Op == OpEq {
			c.w("(NOT ")
			c.exists(e.Field, k)
			c.w(")")
		} else {
			c.exists(e.Field, k)
		}
		return nil
	}
	switch k {
	case kindText:
		col := c.prefix + e.Field.Name
		c.w("(", col, " IS NOT NULL AND ", c.lower(col), " ")
		c.textOp(e.Op, e.Value.(Text))
		c.w(")")
	case kindInt, kindBool:
		c.w("(", c.prefix, e.Field.Name, " ", sqlOps[e.Op], " ", c.arg(bindValue(k, e.Value)), ")")
	case kindTime:
		return c.timeComparison(e)
	case kindAttribute:
		guard, val := c.attribute(e.Field, e.Value)
		c.w("(CASE WHEN ", guard, " THEN ", val, " ")
		if t, ok := e.Value.(Text); ok {
			c.textOp(e.Op, t)
		} else {
			c.w(sqlOps[e.Op], " ", c.arg(bindValue(k, e.Value)))
		}
		c.w(" ELSE FALSE END)")
	}
	return nil
}

// textOp writes the operator and the bound, lower-cased operand of a text comparison.
func (c *compiler) textOp(op Op, t Text) {
	s := asciiLower(string(t))
	switch op {
	case OpContains:
		c.w("LIKE ", c.arg("%"+likeEscape(s)+"%"), ` ESCAPE '\'`)
	case OpStartsWith:
		c.w("LIKE ", c.arg(likeEscape(s)+"%"), ` ESCAPE '\'`)
	case OpEndsWith:
		c.w("LIKE ", c.arg("%"+likeEscape(s)), ` ESCAPE '\'`)
	default:
		c.w(sqlOps[op], " ", c.arg(s))
	}
}

// lower folds ASCII case the same way on both engines: SQLite's lower() folds ASCII only,
// and PostgreSQL's does too under the "C" collation, whatever the database's locale.
func (c *compiler) lower(x string) string {
	if c.eng == store.Postgres {
		return "lower((" + x + `) COLLATE "C")`
	}
	return "lower(" + x + ")"
}

func (c *compiler) timeComparison(e *Comparison) error {
	col := c.prefix + e.Field.Name
	var ms int64
	switch v := e.Value.(type) {
	case Date:
		if v.DayOnly {
			start, end := v.UnixMilli, v.UnixMilli+24*3600*1000
			switch e.Op {
			case OpEq:
				c.w("(", col, " >= ", c.arg(start), " AND ", col, " < ", c.arg(end), ")")
			case OpNe:
				c.w("(", col, " < ", c.arg(start), " OR ", col, " >= ", c.arg(end), ")")
			case OpLt:
				c.w("(", col, " < ", c.arg(start), ")")
			case OpLe:
				c.w("(", col, " < ", c.arg(end), ")")
			case OpGt:
				c.w("(", col, " >= ", c.arg(end), ")")
			case OpGe:
				c.w("(", col, " >= ", c.arg(start), ")")
			}
			return nil
		}
		ms = v.UnixMilli
	case RelDate:
		unit, ok := unitMilli[v.Unit]
		if v.Unit == 0 {
			unit, ok = 0, v.Amount == 0
		}
		if !ok || absU(v.Amount) > uint64(maxOffsetMilli/max(unit, 1)) {
			return invalid("relative date %s is out of range", v)
		}
		ms = c.now + v.Amount*unit
	}
	c.w("(", col, " ", sqlOps[e.Op], " ", c.arg(ms), ")")
	return nil
}

func (c *compiler) in(e *In) error {
	k, err := fieldKind(e.Field)
	if err != nil {
		return invalidErr(err)
	}
	if err := checkIn(e.Field, k, e.Values); err != nil {
		return invalidErr(err)
	}
	list := func() string {
		ps := make([]string, len(e.Values))
		for i, v := range e.Values {
			ps[i] = c.arg(bindValue(k, v))
		}
		return "(" + strings.Join(ps, ", ") + ")"
	}
	switch k {
	case kindText:
		col := c.prefix + e.Field.Name
		c.w("(", col, " IS NOT NULL AND ", c.lower(col), " IN ", list(), ")")
	case kindAttribute:
		guard, val := c.attribute(e.Field, e.Values[0])
		c.w("(CASE WHEN ", guard, " THEN ", val, " IN ", list(), " ELSE FALSE END)")
	default:
		c.w("(", c.prefix, e.Field.Name, " IN ", list(), ")")
	}
	return nil
}

// exists writes the test that f is present and not null.
func (c *compiler) exists(f Field, k kind) {
	if k != kindAttribute {
		c.w("(", c.prefix, f.Name, " IS NOT NULL)")
		return
	}
	p := c.path(f)
	if c.eng == store.Postgres {
		c.w("COALESCE(jsonb_typeof(", c.prefix, "attributes #> ", p, ") <> 'null', FALSE)")
		return
	}
	c.w("COALESCE(json_type(", c.prefix, "attributes, ", p, ") <> 'null', FALSE)")
}

// path binds the attribute path of f once and returns the placeholder, typed for the engine.
func (c *compiler) path(f Field) string {
	if c.eng == store.Postgres {
		return c.arg(append([]string(nil), f.Path...)) + "::text[]"
	}
	var b strings.Builder
	b.WriteString("$")
	for _, k := range f.Path {
		b.WriteString(`."`) // checkKey has ruled out '"' and '\' in keys
		b.WriteString(k)
		b.WriteString(`"`)
	}
	return c.arg(b.String())
}

// attribute binds f's path and returns the guard that the attribute holds a JSON value of
// v's type, and the SQL expression of that value, comparable with v's bound form.
func (c *compiler) attribute(f Field, v Value) (guard, val string) {
	p := c.path(f)
	a := c.prefix + "attributes"
	if c.eng == store.Postgres {
		typ := "jsonb_typeof(" + a + " #> " + p + ")"
		text := a + " #>> " + p
		switch v.(type) {
		case Number:
			return typ + " = 'number'", "(" + text + ")::numeric"
		case Bool:
			return typ + " = 'boolean'", "(" + text + ")"
		default:
			return typ + " = 'string'", c.lower(text)
		}
	}
	typ := "json_type(" + a + ", " + p + ")"
	switch v.(type) {
	case Number:
		return typ + " IN ('integer', 'real')", "(" + a + " ->> " + p + ")"
	case Bool:
		return typ + " IN ('true', 'false')", typ
	default:
		return typ + " = 'text'", c.lower(a + " ->> " + p)
	}
}

// bindValue gives the Go value bound for literal v compared with a field of kind k.
func bindValue(k kind, v Value) any {
	switch v := v.(type) {
	case Text:
		return asciiLower(string(v))
	case Number:
		if v.IsFloat {
			return v.Float
		}
		return v.Int
	case Bool:
		if k == kindAttribute {
			// Compared with the JSON spelling: json_type's answer on SQLite, #>>'s on PostgreSQL.
			return v.String()
		}
		return bool(v)
	}
	return nil
}

// asciiLower folds A-Z only, matching the SQL lower() used on the column side.
func asciiLower(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'A' && r <= 'Z' {
			return r + ('a' - 'A')
		}
		return r
	}, s)
}

// likeEscape makes s match literally in a LIKE pattern with ESCAPE '\'.
func likeEscape(s string) string {
	return strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(s)
}
