package content

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// ErrTooLarge is wrapped by render errors caused by output or a value over its size cap.
var ErrTooLarge = errors.New("too large")

// ErrTooMuchWork is wrapped by render errors caused by loops over the step budget.
var ErrTooMuchWork = errors.New("too much work")

// budget counts the steps one part's render has spent. It is reset before each part.
type budget struct {
	steps, max int
	ranges     []rangeInfo
}

// rangeInfo describes one {{range}} of a template, for charging and for error messages.
type rangeInfo struct {
	part       string
	line, col  int
	costPerRun int // steps one iteration of the body costs
}

func (b *budget) charge(n int) error {
	if n < 0 || n > b.max-b.steps {
		b.steps = b.max
		return fmt.Errorf("the template does too much work (over %d steps): %w", b.max, ErrTooMuchWork)
	}
	b.steps += n
	return nil
}

// value charges a helper's result by its size and refuses results over maxValueSize.
func (b *budget) value(s string) (string, error) {
	if len(s) > maxValueSize {
		return "", fmt.Errorf("a value of %d bytes is over the %d-byte limit: %w", len(s), maxValueSize, ErrTooLarge)
	}
	if err := b.charge(1 + len(s)/256); err != nil {
		return "", err
	}
	return s, nil
}

// helperNames lists the functions a marketer may call, for messages.
const helperNames = "default, upper, lower, title, truncate, date, eq, ne, lt, le, gt, ge, and, or, not, len, index, slice, print, printf, println, urlquery"

// allowedBuiltins are text/template's own functions a template may use. call is left out because it
// calls functions held in data, html and js because html/template escapes by itself.
var allowedBuiltins = map[string]bool{
	"and": true, "or": true, "not": true, "len": true, "index": true, "slice": true,
	"eq": true, "ne": true, "lt": true, "le": true, "gt": true, "ge": true,
	"print": true, "printf": true, "println": true, "urlquery": true,
}

// builtinNames are all of text/template's builtins, given to the parser so that a refused one gets
// a clear refusal rather than "not defined".
var builtinNames = map[string]any{
	"and": true, "call": true, "html": true, "index": true, "slice": true, "js": true, "len": true,
	"not": true, "or": true, "print": true, "printf": true, "println": true, "urlquery": true,
	"eq": true, "ge": true, "gt": true, "le": true, "lt": true, "ne": true,
}

// funcs returns the helper functions bound to one budget. print, printf, println and urlquery
// replace text/template's own so that their results are capped.
func (b *budget) funcs() map[string]any {
	return map[string]any{
		"default":  defaultValue,
		"upper":    func(v any) (string, error) { return b.value(strings.ToUpper(toString(v))) },
		"lower":    func(v any) (string, error) { return b.value(strings.ToLower(toString(v))) },
		"title":    func(v any) (string, error) { return b.value(title(toString(v))) },
		"truncate": func(n int, v any) (string, error) { return b.value(truncate(n, toString(v))) },
		"date":     func(layout string, v any) (string, error) { return formatDate(b, layout, v) },
		"print":    func(args ...any) (string, error) { return b.print(false, args) },
		"println":  func(args ...any) (string, error) { return b.print(true, args) },
		"printf":   b.printf,
		"urlquery": func(args ...any) (string, error) {
			if err := checkSize(3 * argsSize(args)); err != nil {
				return "", err
			}
			return b.value(url.QueryEscape(joinArgs(args)))
		},
		"herald_range": b.rangeCharge,
		"herald_str":   textValue,
	}
}

// loopError is a loop refused by rangeCharge; it knows where the loop is.
type loopError struct {
	at     rangeInfo
	n, max int
}

func (e *loopError) Error() string {
	return fmt.Sprintf("the loop at line %d, column %d of the %s runs %d times, too many (the limit is %d steps of work): %v",
		e.at.line, e.at.col, e.at.part, e.n, e.max, ErrTooMuchWork)
}

func (e *loopError) Unwrap() error { return ErrTooMuchWork }

// rangeCharge is inserted at the end of every range pipeline: it charges the whole loop before it
// runs, so a loop that writes nothing is bounded too.
func (b *budget) rangeCharge(id int, v any) (any, error) {
	ri := b.ranges[id]
	n := lengthOf(v)
	if n > 0 && n > (b.max-b.steps)/ri.costPerRun {
		b.steps = b.max
		return nil, &loopError{at: ri, n: n, max: b.max}
	}
	return v, b.charge(1 + n*ri.costPerRun)
}

// lengthOf is how many times a range over v iterates.
func lengthOf(v any) int {
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Slice, reflect.Array, reflect.Map, reflect.String, reflect.Chan:
		return rv.Len()
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		if n := rv.Int(); n > 0 {
			return int(min(n, int64(1<<40)))
		}
		return 0
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return int(min(rv.Uint(), uint64(1<<40)))
	}
	return 1
}

// textValue ends every action of the subject and text: a missing value prints nothing rather than
// text/template's "<no value>".
func textValue(v any) string {
	return toString(v)
}

func toString(v any) string {
	switch x := v.(type) {
	case nil:
		return ""
	case string:
		return x
	case json.Number:
		return string(x)
	case int64:
		return strconv.FormatInt(x, 10)
	case int:
		return strconv.Itoa(x)
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64)
	case bool:
		return strconv.FormatBool(x)
	}
	return fmt.Sprint(v)
}

func defaultValue(def, v any) any {
	if isEmpty(v) {
		return def
	}
	return v
}

// isEmpty is true for a missing value, empty text and an empty list or map. Zero and false are
// values: a count of 0 is worth printing.
func isEmpty(v any) bool {
	switch x := v.(type) {
	case nil:
		return true
	case string:
		return strings.TrimSpace(x) == ""
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Slice, reflect.Map, reflect.Array:
		return rv.Len() == 0
	case reflect.Pointer, reflect.Interface:
		return rv.IsNil()
	}
	return false
}

func title(s string) string {
	var sb strings.Builder
	sb.Grow(len(s))
	start := true
	for _, r := range s {
		if unicode.IsLetter(r) || unicode.IsDigit(r) || r == '\'' || r == '’' {
			if start {
				r = unicode.ToTitle(r)
			}
			start = false
		} else {
			start = true
		}
		sb.WriteRune(r)
	}
	return sb.String()
}

func truncate(n int, s string) string {
	if n <= 0 {
		return ""
	}
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	i, count := 0, 0
	for i = range s {
		if count == n-1 {
			break
		}
		count++
	}
	return strings.TrimRightFunc(s[:i], unicode.IsSpace) + "…"
}

func checkSize(n int) error {
	if n > maxValueSize {
		return fmt.Errorf("a value of about %d bytes is over the %d-byte limit: %w", n, maxValueSize, ErrTooLarge)
	}
	return nil
}

// argSize is the printed size of v, cheaply for the common kinds.
func argSize(v any) int {
	switch x := v.(type) {
	case string:
		return len(x)
	case json.Number:
		return len(x)
	case nil, bool, int, int64, float64, time.Time:
		return 40
	}
	return len(fmt.Sprint(v))
}

func argsSize(args []any) int {
	n := len(args) + 1
	for _, a := range args {
		n += argSize(a)
	}
	return n
}

func joinArgs(args []any) string {
	if len(args) == 1 {
		return toString(args[0])
	}
	return fmt.Sprint(args...)
}

func (b *budget) print(ln bool, args []any) (string, error) {
	if err := checkSize(argsSize(args)); err != nil {
		return "", err
	}
	for i, a := range args {
		if a == nil {
			args[i] = "" // a missing value prints nothing, as in a plain action
		}
	}
	if ln {
		return b.value(fmt.Sprintln(args...))
	}
	return b.value(fmt.Sprint(args...))
}

// printf refuses widths and precisions over 1,000 and '*' (fmt would build the padding before
// any cap could see it) and estimates the result before building it.
func (b *budget) printf(format string, args ...any) (string, error) {
	maxArg := 0
	for _, a := range args {
		maxArg = max(maxArg, argSize(a))
	}
	estimate := len(format)
	for i := 0; i < len(format); i++ {
		if format[i] != '%' {
			continue
		}
		i++
		for i < len(format) && strings.IndexByte("+-# 0", format[i]) >= 0 {
			i++
		}
		for i < len(format) && format[i] == '[' {
			for i < len(format) && format[i] != ']' {
				i++
			}
			i++
		}
		width := 0
		for i < len(format) && (format[i] >= '0' && format[i] <= '9' || format[i] == '.' || format[i] == '*') {
			switch c := format[i]; {
			case c == '*':
				return "", errors.New("printf: '*' widths are not supported")
			case c == '.':
				width = 0
			default:
				width = width*10 + int(c-'0')
				if width > 1000 {
					return "", fmt.Errorf("printf: a width or precision over 1000 in %q: %w", format, ErrTooLarge)
				}
			}
			i++
		}
		factor := 1
		if i < len(format) && strings.IndexByte("qxXU", format[i]) >= 0 {
			factor = 10
		}
		estimate += 1000 + factor*maxArg
	}
	if err := checkSize(estimate); err != nil {
		return "", err
	}
	return b.value(fmt.Sprintf(format, args...))
}

// dateLayouts are the text forms a date attribute may take.
var dateLayouts = []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02 15:04:05", "2006-01-02"}

func toTime(v any) (t time.Time, ok bool, err error) {
	switch x := v.(type) {
	case nil:
		return t, false, nil
	case time.Time:
		return x, !x.IsZero(), nil
	case *time.Time:
		if x == nil {
			return t, false, nil
		}
		return *x, !x.IsZero(), nil
	case int64:
		return time.Unix(x, 0).UTC(), true, nil
	case int:
		return time.Unix(int64(x), 0).UTC(), true, nil
	case float64:
		return time.Unix(int64(x), 0).UTC(), true, nil
	case json.Number:
		n, err := x.Int64()
		if err != nil {
			return t, false, fmt.Errorf("date: %q is not a date", string(x))
		}
		return time.Unix(n, 0).UTC(), true, nil
	case string:
		s := strings.TrimSpace(x)
		if s == "" {
			return t, false, nil
		}
		for _, l := range dateLayouts {
			if t, err := time.Parse(l, s); err == nil {
				return t, true, nil
			}
		}
		return t, false, fmt.Errorf("date: %q is not a date (write it as 2025-01-31 or 2025-01-31T10:00:00Z)", truncate(40, s))
	}
	return t, false, fmt.Errorf("date: a %T is not a date", v)
}

// formatDate writes v with layout; a missing or empty date writes nothing, so that
// {{date "D MMMM" .attributes.renewal | default "soon"}} works.
func formatDate(b *budget, layout string, v any) (string, error) {
	t, ok, err := toTime(v)
	if err != nil || !ok {
		return "", err
	}
	if len(layout) > 200 {
		return "", fmt.Errorf("date: the layout is too long: %w", ErrTooLarge)
	}
	return b.value(t.Format(goLayout(layout)))
}

// friendlyTokens map the layout language of Content's doc to Go's reference time, longest first.
var friendlyTokens = []struct{ tok, goTok string }{
	{"YYYY", "2006"}, {"YY", "06"},
	{"MMMM", "January"}, {"MMM", "Jan"}, {"MM", "01"}, {"M", "1"},
	{"dddd", "Monday"}, {"ddd", "Mon"},
	{"DD", "02"}, {"D", "2"},
	{"HH", "15"}, {"hh", "03"}, {"h", "3"},
	{"mm", "04"}, {"ss", "05"}, {"A", "PM"},
}

// goLayout turns a friendly layout into a Go layout; a layout with a digit is already one.
// Text in single quotes is copied as is.
func goLayout(layout string) string {
	if strings.ContainsAny(layout, "0123456789") {
		return layout
	}
	var sb strings.Builder
	for i := 0; i < len(layout); {
		if layout[i] == '\'' {
			end := strings.IndexByte(layout[i+1:], '\'')
			if end < 0 {
				sb.WriteString(layout[i+1:])
				break
			}
			sb.WriteString(layout[i+1 : i+1+end])
			i += end + 2
			continue
		}
		matched := false
		for _, ft := range friendlyTokens {
			if strings.HasPrefix(layout[i:], ft.tok) {
				sb.WriteString(ft.goTok)
				i += len(ft.tok)
				matched = true
				break
			}
		}
		if !matched {
			sb.WriteByte(layout[i])
			i++
		}
	}
	return sb.String()
}
