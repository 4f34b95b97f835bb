package filter

import (
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Expr is a parsed filter: one of *And, *Or, *Not, *Comparison, *In or *Exists.
// String gives the canonical source, which Parse reads back to an equal tree.
type Expr interface {
	String() string
	expr()
}

// And is true when every term is true. Parse gives at least two terms, none of them an *And.
type And struct {
	Terms []Expr
}

// Or is true when any term is true. Parse gives at least two terms, none of them an *Or.
type Or struct {
	Terms []Expr
}

// Not is true when X is false.
type Not struct {
	X Expr
}

// Comparison compares Field with Value using Op.
type Comparison struct {
	Field Field
	Op    Op
	Value Value
}

// In is true when Field equals one of Values, under the same rules as Op =.
type In struct {
	Field  Field
	Values []Value
}

// Exists is true when Field is present and not null.
type Exists struct {
	Field Field
}

func (*And) expr()        {}
func (*Or) expr()         {}
func (*Not) expr()        {}
func (*Comparison) expr() {}
func (*In) expr()         {}
func (*Exists) expr()     {}

// Op is a comparison operator.
type Op string

// The comparison operators.
const (
	OpEq         Op = "="
	OpNe         Op = "!="
	OpLt         Op = "<"
	OpLe         Op = "<="
	OpGt         Op = ">"
	OpGe         Op = ">="
	OpContains   Op = "contains"
	OpStartsWith Op = "starts_with"
	OpEndsWith   Op = "ends_with"
)

// isWordOp reports whether op is written as a word (and so may be negated in place).
func (op Op) isWordOp() bool {
	return op == OpContains || op == OpStartsWith || op == OpEndsWith
}

// Field names what a predicate looks at: a profile column, or an attribute when Name is
// "attributes" and Path holds the keys from the outermost in.
type Field struct {
	Name string
	Path []string
}

// IsAttribute reports whether f names a key inside the attributes JSON.
func (f Field) IsAttribute() bool { return f.Name == attributesName }

// String gives the field as written in canonical source, e.g. attributes.address.city.
func (f Field) String() string {
	if !f.IsAttribute() {
		return f.Name
	}
	var b strings.Builder
	b.WriteString(attributesName)
	for _, k := range f.Path {
		b.WriteByte('.')
		if isBareKey(k) {
			b.WriteString(k)
		} else {
			b.WriteString(quote(k))
		}
	}
	return b.String()
}

// isBareKey reports whether key can be written without quotes.
func isBareKey(key string) bool {
	if key == "" {
		return false
	}
	for _, r := range key {
		if !isKeyRune(r) {
			return false
		}
	}
	return true
}

func isKeyRune(r rune) bool {
	return r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r)
}

// Value is a literal: Text, Number, Bool, Null, Date or RelDate.
type Value interface {
	String() string
	value()
}

// Text is a string literal.
type Text string

// Number is a numeric literal. A literal written without fraction or exponent that fits an
// int64 is kept exactly in Int; any other in Float.
type Number struct {
	Int     int64
	Float   float64
	IsFloat bool
}

// Bool is true or false.
type Bool bool

// Null is the literal null.
type Null struct{}

// Date is an absolute date, held as Unix milliseconds UTC. DayOnly marks a date written
// without a time, which stands for the whole UTC day starting at UnixMilli.
type Date struct {
	UnixMilli int64
	DayOnly   bool
}

// RelDate is a date relative to the time a filter is compiled: now plus Amount Units
// (Amount may be negative). Unit is one of 's', 'm', 'h', 'd', 'w', or 0 for now itself.
type RelDate struct {
	Amount int64
	Unit   byte
}

func (Text) value()    {}
func (Number) value()  {}
func (Bool) value()    {}
func (Null) value()    {}
func (Date) value()    {}
func (RelDate) value() {}

// String gives the literal double-quoted, with escapes.
func (t Text) String() string { return quote(string(t)) }

// String gives the number in a form Parse reads back to the same Number.
func (n Number) String() string {
	if !n.IsFloat {
		return strconv.FormatInt(n.Int, 10)
	}
	s := strconv.FormatFloat(n.Float, 'g', -1, 64)
	if !strings.ContainsAny(s, ".e") {
		s += ".0" // keep it a float when read back
	}
	return s
}

// String gives true or false.
func (b Bool) String() string {
	if b {
		return "true"
	}
	return "false"
}

// String gives null.
func (Null) String() string { return "null" }

// String gives the date as YYYY-MM-DD when DayOnly, else as an RFC 3339 UTC time.
func (d Date) String() string {
	t := time.UnixMilli(d.UnixMilli).UTC()
	if d.DayOnly {
		return t.Format(time.DateOnly)
	}
	return t.Format("2006-01-02T15:04:05.999Z07:00")
}

// String gives now, or now followed by the signed offset, e.g. now - 30d.
func (r RelDate) String() string {
	if r.Unit == 0 {
		return "now"
	}
	sign, n := "+", r.Amount
	if n < 0 {
		sign = "-"
	}
	return "now " + sign + " " + strconv.FormatUint(absU(n), 10) + string(r.Unit)
}

func absU(n int64) uint64 {
	if n < 0 {
		return uint64(-(n + 1)) + 1
	}
	return uint64(n)
}

// unitMilli gives the length of a RelDate unit in milliseconds.
var unitMilli = map[byte]int64{
	's': 1000,
	'm': 60 * 1000,
	'h': 3600 * 1000,
	'd': 24 * 3600 * 1000,
	'w': 7 * 24 * 3600 * 1000,
}

// quote double-quotes s with the escapes the lexer reads.
func quote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"':
			b.WriteString(`\"`)
		case r == '\\':
			b.WriteString(`\\`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20 || r == 0x7f || r == utf8.RuneError:
			b.WriteString(`\u`)
			h := strconv.FormatInt(int64(r), 16)
			b.WriteString(strings.Repeat("0", 4-len(h)))
			b.WriteString(h)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// String gives the canonical source: terms joined by " and ", with parentheses only
// around an Or term.
func (e *And) String() string {
	parts := make([]string, len(e.Terms))
	for i, t := range e.Terms {
		if _, ok := t.(*Or); ok {
			parts[i] = "(" + t.String() + ")"
		} else {
			parts[i] = t.String()
		}
	}
	return strings.Join(parts, " and ")
}

// String gives the canonical source: terms joined by " or ".
func (e *Or) String() string {
	parts := make([]string, len(e.Terms))
	for i, t := range e.Terms {
		if _, ok := t.(*Or); ok { // only in hand-built trees; keeps the grouping
			parts[i] = "(" + t.String() + ")"
		} else {
			parts[i] = t.String()
		}
	}
	return strings.Join(parts, " or ")
}

// String gives the canonical source. The negations that have an in-place form are written
// that way: "x not in (...)", "x not exists", "x not contains ...".
func (e *Not) String() string {
	switch x := e.X.(type) {
	case *In:
		return x.Field.String() + " not in " + valueList(x.Values)
	case *Exists:
		return x.Field.String() + " not exists"
	case *Comparison:
		if x.Op.isWordOp() {
			return x.Field.String() + " not " + string(x.Op) + " " + x.Value.String()
		}
		return "not " + x.String()
	case *And, *Or:
		return "not (" + x.String() + ")"
	case nil:
		return "not <nil>"
	default:
		return "not " + x.String()
	}
}

// String gives the canonical source, e.g. attributes.city = "Paris".
func (e *Comparison) String() string {
	return e.Field.String() + " " + string(e.Op) + " " + e.Value.String()
}

// String gives the canonical source, e.g. locale in ("fr", "de").
func (e *In) String() string {
	return e.Field.String() + " in " + valueList(e.Values)
}

// String gives the canonical source, e.g. attributes.vip exists.
func (e *Exists) String() string {
	return e.Field.String() + " exists"
}

func valueList(vs []Value) string {
	parts := make([]string, len(vs))
	for i, v := range vs {
		parts[i] = v.String()
	}
	return "(" + strings.Join(parts, ", ") + ")"
}
