package filter

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Limits on what Parse accepts; they bound the work and the size of the SQL a filter makes.
const (
	// MaxSourceLen is the longest filter, in bytes.
	MaxSourceLen = 64 << 10
	// MaxDepth is the deepest nesting of parentheses and nots.
	MaxDepth = 50
	// MaxInValues is the most values one in (...) list may hold.
	MaxInValues = 1000
	// MaxValues is the most literal values a whole filter may hold, which keeps the compiled
	// SQL well under both engines' limits on bound parameters.
	MaxValues = 5000
)

// SyntaxError is a filter that Parse refused, with where and why.
type SyntaxError struct {
	Pos  int // byte offset into the source
	Line int // 1-based line
	Col  int // 1-based column, in Unicode code points
	Msg  string
}

// Error gives the position and the message, as in
// "at 1:19: expected a value after 'attributes.city =' but found ')'".
func (e *SyntaxError) Error() string {
	return fmt.Sprintf("at %d:%d: %s", e.Line, e.Col, e.Msg)
}

// keywords are the reserved words, matched without regard to case.
var keywords = map[string]bool{
	"and": true, "or": true, "not": true, "in": true, "exists": true,
	"contains": true, "starts_with": true, "ends_with": true,
	"true": true, "false": true, "null": true, "now": true,
}

// Parse reads a filter. A refused filter gives a *SyntaxError. Field names and the types of
// values are checked here, so a filter that parses also compiles.
func Parse(src string) (Expr, error) {
	if len(src) > MaxSourceLen {
		return nil, &SyntaxError{Pos: 0, Line: 1, Col: 1,
			Msg: fmt.Sprintf("a filter may be at most %d bytes long; this one is %d", MaxSourceLen, len(src))}
	}
	p := &parser{src: src, lx: lexer{src: src}}
	if err := p.advance(); err != nil {
		return nil, err
	}
	if p.tok.kind == tEOF {
		return nil, p.errorf(p.tok.pos, "the filter is empty; expected a condition such as email ends_with \"@example.com\"")
	}
	e, err := p.parseOr()
	if err != nil {
		return nil, err
	}
	if p.tok.kind != tEOF {
		if p.tok.kind == tRParen {
			return nil, p.errorf(p.tok.pos, "found ')' with no '(' to close")
		}
		return nil, p.errorf(p.tok.pos, "expected 'and', 'or' or the end of the filter but found %s", p.describe())
	}
	return e, nil
}

type parser struct {
	src    string
	lx     lexer
	tok    token
	depth  int
	values int
}

func (p *parser) advance() error {
	t, err := p.lx.next()
	if err != nil {
		var le *lexError
		if errors.As(err, &le) {
			return p.errorf(le.pos, "%s", le.msg)
		}
		return err
	}
	p.tok = t
	return nil
}

// errorf makes a SyntaxError at byte offset pos.
func (p *parser) errorf(pos int, format string, args ...any) *SyntaxError {
	line, col := 1, 1
	lineStart := 0
	for i := 0; i < pos && i < len(p.src); i++ {
		if p.src[i] == '\n' {
			line++
			lineStart = i + 1
		}
	}
	col += utf8.RuneCountInString(p.src[lineStart:min(pos, len(p.src))])
	return &SyntaxError{Pos: pos, Line: line, Col: col, Msg: fmt.Sprintf(format, args...)}
}

// isKeyword reports whether the current token is the keyword kw.
func (p *parser) isKeyword(kw string) bool {
	return p.tok.kind == tWord && p.tok.path == nil && strings.EqualFold(p.tok.word, kw)
}

// describe names the current token for "but found ...".
func (p *parser) describe() string {
	switch p.tok.kind {
	case tEOF:
		return "the end of the filter"
	case tString:
		return "the string " + describeText(p.tok.text)
	}
	return describeText(p.tok.text)
}

func (p *parser) parseOr() (Expr, error) {
	var terms []Expr
	for {
		x, err := p.parseAnd()
		if err != nil {
			return nil, err
		}
		if o, ok := x.(*Or); ok {
			terms = append(terms, o.Terms...)
		} else {
			terms = append(terms, x)
		}
		if !p.isKeyword("or") {
			break
		}
		if err := p.advance(); err != nil {
			return nil, err
		}
	}
	if len(terms) == 1 {
		return terms[0], nil
	}
	return &Or{Terms: terms}, nil
}

func (p *parser) parseAnd() (Expr, error) {
	var terms []Expr
	for {
		x, err := p.parseUnary()
		if err != nil {
			return nil, err
		}
		if a, ok := x.(*And); ok {
			terms = append(terms, a.Terms...)
		} else {
			terms = append(terms, x)
		}
		if !p.isKeyword("and") {
			break
		}
		if err := p.advance(); err != nil {
			return nil, err
		}
	}
	if len(terms) == 1 {
		return terms[0], nil
	}
	return &And{Terms: terms}, nil
}

func (p *parser) parseUnary() (Expr, error) {
	p.depth++
	defer func() { p.depth-- }()
	if p.depth > MaxDepth {
		return nil, p.errorf(p.tok.pos, "the filter nests more than %d levels of parentheses and 'not'", MaxDepth)
	}
	switch {
	case p.isKeyword("not"):
		if err := p.advance(); err != nil {
			return nil, err
		}
		x, err := p.parseUnary()
		if err != nil {
			return nil, err
		}
		return &Not{X: x}, nil
	case p.tok.kind == tLParen:
		open := p.tok.pos
		if err := p.advance(); err != nil {
			return nil, err
		}
		if p.tok.kind == tRParen {
			return nil, p.errorf(p.tok.pos, "expected a condition inside '(' but found ')'")
		}
		x, err := p.parseOr()
		if err != nil {
			return nil, err
		}
		if p.tok.kind != tRParen {
			o := p.errorf(open, "")
			return nil, p.errorf(p.tok.pos, "expected 'and', 'or' or ')' to close the '(' at %d:%d but found %s",
				o.Line, o.Col, p.describe())
		}
		if err := p.advance(); err != nil {
			return nil, err
		}
		return x, nil
	case p.tok.kind == tWord && (p.tok.path != nil || !keywords[strings.ToLower(p.tok.word)]):
		return p.parsePredicate()
	}
	return nil, p.errorf(p.tok.pos, "expected a field, 'not' or '(' but found %s", p.describe())
}

func (p *parser) parsePredicate() (Expr, error) {
	ft := p.tok
	f := Field{Name: ft.word, Path: ft.path}
	if f.Name == "attr" {
		f.Name = attributesName
	}
	k, err := fieldKind(f)
	if err != nil {
		return nil, p.errorf(ft.pos, "%s", err)
	}
	if err := p.advance(); err != nil {
		return nil, err
	}
	after := ft.text
	negate := false
	if p.isKeyword("not") {
		after += " not"
		if err := p.advance(); err != nil {
			return nil, err
		}
		if !p.isKeyword("in") && !p.isKeyword("exists") && !p.isKeyword("contains") &&
			!p.isKeyword("starts_with") && !p.isKeyword("ends_with") {
			return nil, p.errorf(p.tok.pos, "expected in, exists, contains, starts_with or ends_with after %s but found %s",
				describeText(after), p.describe())
		}
		negate = true
	}
	var e Expr
	switch {
	case p.tok.kind == tOp:
		op := Op(p.tok.text)
		if e, err = p.parseComparison(f, k, op, after); err != nil {
			return nil, err
		}
	case p.isKeyword("contains"), p.isKeyword("starts_with"), p.isKeyword("ends_with"):
		op := Op(strings.ToLower(p.tok.word))
		if e, err = p.parseComparison(f, k, op, after); err != nil {
			return nil, err
		}
	case p.isKeyword("in"):
		if e, err = p.parseIn(f, k, after); err != nil {
			return nil, err
		}
	case p.isKeyword("exists"):
		if err := p.advance(); err != nil {
			return nil, err
		}
		e = &Exists{Field: f}
	default:
		return nil, p.errorf(p.tok.pos, "expected an operator (= != < <= > >= contains starts_with ends_with in exists) after %s but found %s",
			describeText(after), p.describe())
	}
	if negate {
		return &Not{X: e}, nil
	}
	return e, nil
}

func (p *parser) parseComparison(f Field, k kind, op Op, after string) (Expr, error) {
	after += " " + string(op)
	if err := p.advance(); err != nil {
		return nil, err
	}
	at := p.tok.pos
	v, err := p.parseValue(after)
	if err != nil {
		return nil, err
	}
	if err := checkValue(f, k, op, v); err != nil {
		return nil, p.errorf(at, "%s", err)
	}
	return &Comparison{Field: f, Op: op, Value: v}, nil
}

func (p *parser) parseIn(f Field, k kind, after string) (Expr, error) {
	after += " in"
	if err := p.advance(); err != nil {
		return nil, err
	}
	if p.tok.kind != tLParen {
		return nil, p.errorf(p.tok.pos, "expected '(' after %s but found %s", describeText(after), p.describe())
	}
	if err := p.advance(); err != nil {
		return nil, err
	}
	var vs []Value
	for {
		at := p.tok.pos
		ctx := after + " ("
		if len(vs) > 0 {
			ctx = "','"
		}
		v, err := p.parseValue(ctx)
		if err != nil {
			return nil, err
		}
		if len(vs) == MaxInValues {
			return nil, p.errorf(at, "an in list may hold at most %d values", MaxInValues)
		}
		if err := checkInValue(f, k, vs, v); err != nil {
			return nil, p.errorf(at, "%s", err)
		}
		vs = append(vs, v)
		if p.tok.kind == tRParen {
			break
		}
		if p.tok.kind != tComma {
			return nil, p.errorf(p.tok.pos, "expected ',' or ')' in the in list but found %s", p.describe())
		}
		if err := p.advance(); err != nil {
			return nil, err
		}
	}
	if err := p.advance(); err != nil {
		return nil, err
	}
	return &In{Field: f, Values: vs}, nil
}

// parseValue reads a literal; after is what came before it, for the message.
func (p *parser) parseValue(after string) (Value, error) {
	t := p.tok
	p.values++
	if p.values > MaxValues {
		return nil, p.errorf(t.pos, "a filter may hold at most %d values", MaxValues)
	}
	var v Value
	switch {
	case t.kind == tString:
		v = Text(t.str)
	case t.kind == tNumber:
		v = t.num
	case t.kind == tDate:
		v = t.date
	case t.kind == tDuration && t.neg:
		v = t.dur
	case t.kind == tDuration:
		return nil, p.errorf(t.pos, "a duration needs now before it, as in now + %s or now - %s", t.text, t.text)
	case p.isKeyword("true"):
		v = Bool(true)
	case p.isKeyword("false"):
		v = Bool(false)
	case p.isKeyword("null"):
		v = Null{}
	case p.isKeyword("now"):
		return p.parseNow()
	default:
		if after == "','" {
			return nil, p.errorf(t.pos, "expected a value after ',' but found %s", p.describe())
		}
		return nil, p.errorf(t.pos, "expected a value after %s but found %s", describeText(after), p.describe())
	}
	return v, p.advance()
}

// parseNow reads now [(+|-) duration], the current token being now.
func (p *parser) parseNow() (Value, error) {
	if err := p.advance(); err != nil {
		return nil, err
	}
	switch p.tok.kind {
	case tDuration:
		if !p.tok.neg {
			return RelDate{}, nil // not ours; the caller reports it
		}
		d := p.tok.dur
		return d, p.advance()
	case tPlus, tMinus:
		sign := p.tok.text
		if err := p.advance(); err != nil {
			return nil, err
		}
		if p.tok.kind != tDuration || p.tok.neg {
			return nil, p.errorf(p.tok.pos, "expected a duration such as 30d after 'now %s' but found %s", sign, p.describe())
		}
		d := p.tok.dur
		if sign == "-" {
			d.Amount = -d.Amount
		}
		return d, p.advance()
	}
	return RelDate{}, nil
}
