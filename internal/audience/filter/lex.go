package filter

import (
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

type tokKind int

const (
	tEOF      tokKind = iota
	tWord             // a keyword or a field, possibly with a .key path
	tString           // a quoted string
	tNumber           // 42, -1.5, 2e3
	tDuration         // 30d, -30d
	tDate             // 2024-05-01, 2024-05-01T10:00:00Z
	tLParen           // (
	tRParen           // )
	tComma            // ,
	tOp               // = != < <= > >=
	tPlus             // +
	tMinus            // - not followed by a digit
)

// token is one lexeme. Only the fields of its kind are set.
type token struct {
	kind tokKind
	pos  int    // byte offset of the first byte
	text string // the source text
	word string // tWord: the first name, as written
	path []string
	str  string // tString: the decoded value
	num  Number
	dur  RelDate // tDuration
	neg  bool    // tDuration: written with a leading '-'
	date Date
}

// maxOffsetMilli bounds relative dates to about 10,000 years either side of now.
const maxOffsetMilli = 10000 * 366 * 24 * 3600 * 1000

// lexer splits the source into tokens on demand.
type lexer struct {
	src string
	pos int
}

// lexError is a lexing failure at a byte offset; the parser turns it into a SyntaxError.
type lexError struct {
	pos int
	msg string
}

func (e *lexError) Error() string { return e.msg }

func isDigit(c byte) bool     { return c >= '0' && c <= '9' }
func isWordStart(c byte) bool { return c == '_' || (c|0x20 >= 'a' && c|0x20 <= 'z') }
func isWordByte(c byte) bool  { return isWordStart(c) || isDigit(c) }

// next lexes the token at the current position.
func (l *lexer) next() (token, error) {
	for l.pos < len(l.src) {
		switch l.src[l.pos] {
		case ' ', '\t', '\n', '\r', '\f', '\v':
			l.pos++
			continue
		}
		break
	}
	start := l.pos
	if start >= len(l.src) {
		return token{kind: tEOF, pos: start}, nil
	}
	c := l.src[start]
	simple := func(k tokKind, n int) (token, error) {
		l.pos += n
		return token{kind: k, pos: start, text: l.src[start:l.pos]}, nil
	}
	switch {
	case c == '(':
		return simple(tLParen, 1)
	case c == ')':
		return simple(tRParen, 1)
	case c == ',':
		return simple(tComma, 1)
	case c == '+':
		return simple(tPlus, 1)
	case c == '=':
		return simple(tOp, 1)
	case c == '<' || c == '>':
		if l.peekByte(1) == '=' {
			return simple(tOp, 2)
		}
		return simple(tOp, 1)
	case c == '!':
		if l.peekByte(1) == '=' {
			return simple(tOp, 2)
		}
		return token{}, &lexError{start, "expected '=' after '!'"}
	case c == '-':
		if isDigit(l.peekByte(1)) {
			return l.number()
		}
		return simple(tMinus, 1)
	case isDigit(c):
		if l.looksLikeDate() {
			return l.date()
		}
		return l.number()
	case c == '"' || c == '\'':
		s, err := l.quoted()
		if err != nil {
			return token{}, err
		}
		return token{kind: tString, pos: start, text: l.src[start:l.pos], str: s}, nil
	case isWordStart(c):
		return l.word()
	}
	r, _ := utf8.DecodeRuneInString(l.src[start:])
	if r == utf8.RuneError {
		return token{}, &lexError{start, "invalid UTF-8"}
	}
	return token{}, &lexError{start, "unexpected character " + describeRune(r)}
}

func (l *lexer) peekByte(off int) byte {
	if l.pos+off < len(l.src) {
		return l.src[l.pos+off]
	}
	return 0
}

func describeRune(r rune) string {
	if r < 0x20 || r == 0x7f {
		return "U+" + strings.ToUpper(strconv.FormatInt(int64(r), 16))
	}
	return "'" + string(r) + "'"
}

// word lexes a name and any .key path after it.
func (l *lexer) word() (token, error) {
	start := l.pos
	for l.pos < len(l.src) && isWordByte(l.src[l.pos]) {
		l.pos++
	}
	t := token{kind: tWord, pos: start, word: l.src[start:l.pos]}
	for l.pos < len(l.src) && l.src[l.pos] == '.' {
		l.pos++
		keyStart := l.pos
		var key string
		if c := l.peekByte(0); c == '"' || c == '\'' {
			s, err := l.quoted()
			if err != nil {
				return token{}, err
			}
			key = s
		} else {
			for l.pos < len(l.src) {
				r, n := utf8.DecodeRuneInString(l.src[l.pos:])
				if r == utf8.RuneError && n == 1 {
					return token{}, &lexError{l.pos, "invalid UTF-8"}
				}
				if !isKeyRune(r) {
					break
				}
				l.pos += n
			}
			key = l.src[keyStart:l.pos]
			if key == "" {
				return token{}, &lexError{keyStart, "expected a key after '" + l.src[start:keyStart] + "'; quote keys that hold other characters, as in attributes.\"first name\""}
			}
		}
		if err := checkKey(key); err != nil {
			return token{}, &lexError{keyStart, err.Error()}
		}
		t.path = append(t.path, key)
	}
	t.text = l.src[start:l.pos]
	return t, nil
}

// quoted lexes a string in single or double quotes and returns its decoded value.
func (l *lexer) quoted() (string, error) {
	start := l.pos
	q := l.src[start]
	l.pos++
	var b strings.Builder
	for {
		if l.pos >= len(l.src) {
			return "", &lexError{start, "string is not closed; expected " + string(q) + " before the end of input"}
		}
		c := l.src[l.pos]
		switch {
		case c == q:
			l.pos++
			return b.String(), nil
		case c == 0:
			return "", &lexError{l.pos, "a string may not contain NUL"}
		case c == '\\':
			r, err := l.escape()
			if err != nil {
				return "", err
			}
			b.WriteRune(r)
		case c < utf8.RuneSelf:
			b.WriteByte(c)
			l.pos++
		default:
			r, n := utf8.DecodeRuneInString(l.src[l.pos:])
			if r == utf8.RuneError && n == 1 {
				return "", &lexError{l.pos, "invalid UTF-8 in string"}
			}
			b.WriteString(l.src[l.pos : l.pos+n])
			l.pos += n
		}
	}
}

// escape decodes the escape sequence at the current position (at the backslash).
func (l *lexer) escape() (rune, error) {
	at := l.pos
	l.pos++
	if l.pos >= len(l.src) {
		return 0, &lexError{at, "string is not closed; expected a character after '\\'"}
	}
	c := l.src[l.pos]
	l.pos++
	switch c {
	case '"', '\'', '\\':
		return rune(c), nil
	case 'n':
		return '\n', nil
	case 'r':
		return '\r', nil
	case 't':
		return '\t', nil
	case 'u':
		if l.pos+4 > len(l.src) {
			return 0, &lexError{at, `\u needs four hex digits`}
		}
		n, err := strconv.ParseUint(l.src[l.pos:l.pos+4], 16, 32)
		if err != nil || strings.ContainsAny(l.src[l.pos:l.pos+4], "+-") {
			return 0, &lexError{at, `\u needs four hex digits`}
		}
		l.pos += 4
		r := rune(n)
		switch {
		case r == 0:
			return 0, &lexError{at, `a string may not contain NUL (\u0000)`}
		case r >= 0xD800 && r <= 0xDFFF:
			return 0, &lexError{at, `\u` + l.src[at+2:at+6] + ` is a UTF-16 surrogate, not a character`}
		}
		return r, nil
	}
	r, _ := utf8.DecodeRuneInString(l.src[l.pos-1:])
	return 0, &lexError{at, `unknown escape \` + string(r) + `; use \" \' \\ \n \r \t or \uXXXX`}
}

// looksLikeDate reports whether a date (YYYY-M...) starts at the current position.
func (l *lexer) looksLikeDate() bool {
	s := l.src[l.pos:]
	return len(s) >= 6 && isDigit(s[0]) && isDigit(s[1]) && isDigit(s[2]) && isDigit(s[3]) &&
		s[4] == '-' && isDigit(s[5])
}

func (l *lexer) date() (token, error) {
	start := l.pos
	for l.pos < len(l.src) && (isDigit(l.src[l.pos]) || strings.IndexByte(":.+-TZ", l.src[l.pos]) >= 0) {
		l.pos++
	}
	text := l.src[start:l.pos]
	bad := &lexError{start, "invalid date " + describeText(text) + "; write a date as 2024-05-01 or 2024-05-01T10:00:00Z"}
	if l.pos < len(l.src) && isWordByte(l.src[l.pos]) {
		return token{}, bad
	}
	var (
		t       time.Time
		err     error
		dayOnly = len(text) == len(time.DateOnly)
	)
	if dayOnly {
		t, err = time.Parse(time.DateOnly, text)
	} else {
		t, err = time.Parse(time.RFC3339Nano, text)
	}
	if err != nil {
		return token{}, bad
	}
	if y := t.UTC().Year(); y < 0 || y > 9999 {
		return token{}, &lexError{start, "date " + describeText(text) + " is out of range; dates run from year 0000 to 9999 in UTC"}
	}
	return token{kind: tDate, pos: start, text: text, date: Date{UnixMilli: t.UnixMilli(), DayOnly: dayOnly}}, nil
}

// number lexes a number or a duration, with an optional leading '-'.
func (l *lexer) number() (token, error) {
	start := l.pos
	neg := l.src[l.pos] == '-'
	if neg {
		l.pos++
	}
	digits := func() int {
		s := l.pos
		for l.pos < len(l.src) && isDigit(l.src[l.pos]) {
			l.pos++
		}
		return l.pos - s
	}
	digits()
	isFloat := false
	if l.peekByte(0) == '.' && isDigit(l.peekByte(1)) {
		l.pos++
		digits()
		isFloat = true
	}
	if c := l.peekByte(0); c == 'e' || c == 'E' {
		save := l.pos
		l.pos++
		if c := l.peekByte(0); c == '+' || c == '-' {
			l.pos++
		}
		if digits() == 0 {
			l.pos = save // not an exponent; reported below as a bad number
		} else {
			isFloat = true
		}
	}
	text := l.src[start:l.pos]
	if !isFloat {
		if u, ok := unitMilli[l.peekByte(0)]; ok && !isWordByte(l.peekByte(1)) {
			return l.duration(start, text, neg, u)
		}
	}
	if c := l.peekByte(0); isWordByte(c) || c == '.' {
		for l.pos < len(l.src) && (isWordByte(l.src[l.pos]) || l.src[l.pos] == '.') {
			l.pos++
		}
		return token{}, &lexError{start, "invalid number " + describeText(l.src[start:l.pos]) +
			"; durations are written 30d, with s, m, h, d or w"}
	}
	t := token{kind: tNumber, pos: start, text: text}
	if !isFloat {
		n, err := strconv.ParseInt(text, 10, 64)
		if err != nil {
			return token{}, &lexError{start, "number " + describeText(text) + " is out of range for a whole number; write it with a decimal point to compare approximately"}
		}
		t.num = Number{Int: n}
		return t, nil
	}
	f, err := strconv.ParseFloat(text, 64)
	if err != nil || math.IsInf(f, 0) {
		return token{}, &lexError{start, "number " + describeText(text) + " is out of range"}
	}
	t.num = Number{Float: f, IsFloat: true}
	return t, nil
}

func (l *lexer) duration(start int, text string, neg bool, unit int64) (token, error) {
	u := l.src[l.pos]
	l.pos++
	digits := strings.TrimPrefix(text, "-")
	n, err := strconv.ParseInt(digits, 10, 64)
	if err != nil || n > maxOffsetMilli/unit {
		return token{}, &lexError{start, "duration " + describeText(l.src[start:l.pos]) + " is too long; relative dates reach at most 10000 years"}
	}
	if neg {
		n = -n
	}
	return token{kind: tDuration, pos: start, text: l.src[start:l.pos], dur: RelDate{Amount: n, Unit: u}, neg: neg}, nil
}

// describeText quotes source text for a message, shortened when long.
func describeText(s string) string {
	const max = 32
	if len(s) > max {
		cut := max
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "…"
	}
	return "'" + s + "'"
}
