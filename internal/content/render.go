package content

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	htemplate "html/template"
	"io"
	"regexp"
	"strconv"
	ttemplate "text/template"
	"time"
	"unicode/utf8"
)

// Recipient is the data a template renders for one recipient: the profile's fields, its free
// attributes, and the per-recipient URLs the engine fills. Templates see it under lower-case
// names (see the package doc).
type Recipient struct {
	ID         int64
	Email      string
	Phone      string
	Locale     string
	TimeZone   string
	ExternalID string
	CreatedAt  time.Time
	// Attributes are the profile's free attributes as decoded by DecodeAttributes: strings,
	// int64, float64, bool, nil, []any and map[string]any only. Values with methods (other than
	// time.Time) must not be put here: html/template calls String methods.
	Attributes map[string]any
	// UnsubscribeURL and MirrorURL are the recipient's /t/u and /t/m tracking URLs.
	UnsubscribeURL string
	MirrorURL      string
}

// DecodeAttributes decodes a profile's attributes JSON for Recipient.Attributes. Whole numbers
// become int64, so that they print as 1500000 rather than 1.5e+06; other numbers become float64.
// The result keeps no reference to raw, which may be a driver's buffer (sql.RawBytes).
func DecodeAttributes(raw []byte) (map[string]any, error) {
	if len(bytes.TrimSpace(raw)) == 0 {
		return map[string]any{}, nil
	}
	if m, ok := decodeFlat(raw); ok {
		return m, nil
	}
	return decodeAttributes(raw)
}

// decodeAttributes is DecodeAttributes by encoding/json, for any JSON.
func decodeAttributes(raw []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("decode attributes: %w", err)
	}
	for k, v := range m {
		m[k] = normalizeNumbers(v)
	}
	return m, nil
}

// decodeFlat decodes the attributes most profiles have, a flat object of plain strings, whole
// numbers, booleans and nulls, about ten times faster than encoding/json; ok is false for
// anything else (an escape in a string, a fraction, a nested value, bad JSON), which
// decodeAttributes then reads. It is called for every recipient of every send.
func decodeFlat(raw []byte) (m map[string]any, ok bool) {
	i := skipJSONSpace(raw, 0)
	if i >= len(raw) || raw[i] != '{' {
		return nil, false
	}
	m = make(map[string]any, 8)
	i = skipJSONSpace(raw, i+1)
	if i < len(raw) && raw[i] == '}' {
		return m, skipJSONSpace(raw, i+1) == len(raw)
	}
	for {
		key, j, ok := plainJSONString(raw, i)
		if !ok {
			return nil, false
		}
		i = skipJSONSpace(raw, j)
		if i >= len(raw) || raw[i] != ':' {
			return nil, false
		}
		i = skipJSONSpace(raw, i+1)
		if i >= len(raw) {
			return nil, false
		}
		var v any
		switch c := raw[i]; {
		case c == '"':
			s, j, ok := plainJSONString(raw, i)
			if !ok {
				return nil, false
			}
			v, i = s, j
		case c == '-' || c >= '0' && c <= '9':
			j := i
			if raw[j] == '-' {
				j++
			}
			start := j
			for j < len(raw) && raw[j] >= '0' && raw[j] <= '9' {
				j++
			}
			// JSON allows no leading zero; a fraction or an exponent is decodeAttributes's.
			if j == start || raw[start] == '0' && j-start > 1 || j < len(raw) && (raw[j] == '.' || raw[j] == 'e' || raw[j] == 'E') {
				return nil, false
			}
			n, err := strconv.ParseInt(string(raw[i:j]), 10, 64)
			if err != nil {
				return nil, false
			}
			v, i = n, j
		case bytes.HasPrefix(raw[i:], []byte("true")):
			v, i = true, i+4
		case bytes.HasPrefix(raw[i:], []byte("false")):
			v, i = false, i+5
		case bytes.HasPrefix(raw[i:], []byte("null")):
			v, i = nil, i+4
		default:
			return nil, false
		}
		m[key] = v
		i = skipJSONSpace(raw, i)
		if i >= len(raw) {
			return nil, false
		}
		switch raw[i] {
		case ',':
			i = skipJSONSpace(raw, i+1)
		case '}':
			return m, skipJSONSpace(raw, i+1) == len(raw)
		default:
			return nil, false
		}
	}
}

func skipJSONSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// plainJSONString reads the string starting at b[i] ('"') when it has no escape and no control
// character and is valid UTF-8, and returns it and the offset after its closing quote.
func plainJSONString(b []byte, i int) (string, int, bool) {
	if i >= len(b) || b[i] != '"' {
		return "", 0, false
	}
	for j := i + 1; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			s := b[i+1 : j]
			if !utf8.Valid(s) {
				return "", 0, false
			}
			return string(s), j + 1, true
		case c == '\\' || c < 0x20:
			return "", 0, false
		}
	}
	return "", 0, false
}

func normalizeNumbers(v any) any {
	switch x := v.(type) {
	case json.Number:
		if n, err := x.Int64(); err == nil {
			return n
		}
		if f, err := x.Float64(); err == nil {
			return f
		}
		return string(x)
	case map[string]any:
		for k, e := range x {
			x[k] = normalizeNumbers(e)
		}
	case []any:
		for i, e := range x {
			x[i] = normalizeNumbers(e)
		}
	}
	return v
}

// RenderOptions are the per-recipient tracking choices of a render.
type RenderOptions struct {
	// LinkRewriter, when set, is called for every rendered href of link index (see
	// Template.Links), with the URL as rendered for this recipient; the href becomes what it
	// returns. Return url to leave a link as it is. It is called again for each repetition of a
	// link inside a {{range}}.
	LinkRewriter func(index int, url string) string
	// PixelURL, when set, adds a 1×1 open-tracking image before </body> (or at the end).
	PixelURL string
}

// Message is one recipient's rendered message. Its HTML and Text share the Renderer's buffers and
// are valid until the Renderer's next Render.
type Message struct {
	FromName    string
	FromAddress string
	ReplyTo     string
	Subject     string
	HTML        []byte // empty when the content has no HTML
	Text        []byte
}

// Renderer renders one Template for recipient after recipient, reusing its buffers. It is not safe
// for concurrent use: give each sending goroutine its own.
type Renderer struct {
	tpl     *Template
	err     error
	b       budget
	subject *ttemplate.Template
	html    *htemplate.Template
	text    *ttemplate.Template
	root    map[string]any
	lw      limitWriter
	subj    bytes.Buffer
	raw     bytes.Buffer
	out     bytes.Buffer
	txt     bytes.Buffer
	conv    textConverter
	msg     Message
	scratch bytes.Buffer // between a plan's chained escapers
	noPlans bool         // tests: execute the templates only
}

// NewRenderer returns a Renderer for t. Each Renderer holds its own copy of the compiled templates,
// whose functions charge its loop budget; making one costs about a compile.
func (t *Template) NewRenderer() *Renderer {
	r := &Renderer{tpl: t, root: make(map[string]any, len(rootKeys))}
	r.b.ranges = t.ranges
	r.b.max = t.opts.MaxSteps
	funcs := r.b.funcs()
	var err error
	if r.subject, err = t.subject.Clone(); err != nil {
		r.err = fmt.Errorf("clone subject: %w", err)
		return r
	}
	r.subject.Funcs(funcs)
	if t.text != nil {
		if r.text, err = t.text.Clone(); err != nil {
			r.err = fmt.Errorf("clone text: %w", err)
			return r
		}
		r.text.Funcs(funcs)
	}
	if t.html != nil {
		if r.html, err = t.html.Clone(); err != nil {
			r.err = fmt.Errorf("clone HTML: %w", err)
			return r
		}
		r.html.Funcs(funcs)
	}
	c := t.content
	r.msg = Message{FromName: c.FromName, FromAddress: c.FromAddress, ReplyTo: c.ReplyTo}
	return r
}

// fill puts rc into the reused root map.
func (r *Renderer) fill(rc *Recipient) map[string]any {
	m := r.root
	m["id"] = rc.ID
	m["email"] = rc.Email
	m["phone"] = rc.Phone
	m["locale"] = rc.Locale
	m["time_zone"] = rc.TimeZone
	m["external_id"] = rc.ExternalID
	if rc.CreatedAt.IsZero() {
		m["created_at"] = nil
	} else {
		m["created_at"] = rc.CreatedAt
	}
	m["attributes"] = rc.Attributes
	m["unsubscribe_url"] = rc.UnsubscribeURL
	m["mirror_url"] = rc.MirrorURL
	return m
}

// RenderError is a failed render: the part, where in its template when known, and why. It wraps
// ErrTooLarge or ErrTooMuchWork when a limit stopped the render.
type RenderError struct {
	Part   string
	Line   int
	Column int
	Msg    string
	Err    error
}

// Error implements error.
func (e *RenderError) Error() string {
	ce := CompileError{Part: e.Part, Line: e.Line, Column: e.Column, Msg: e.Msg}
	return ce.Error()
}

// Unwrap returns the underlying error.
func (e *RenderError) Unwrap() error { return e.Err }

// execErrorRe matches text/template's "template: NAME:LINE:COL: executing "NAME" at <NODE>: MSG".
var execErrorRe = regexp.MustCompile(`^template: [^:]*:(\d+):(\d+): executing "[^"]*" at <.*?>: (?:error calling \w+: )?(.*)$`)

func renderError(part string, err error) error {
	re := &RenderError{Part: part, Msg: err.Error(), Err: err}
	var ee ttemplate.ExecError
	if errors.As(err, &ee) {
		if m := execErrorRe.FindStringSubmatch(ee.Err.Error()); m != nil {
			re.Line, _ = strconv.Atoi(m[1])
			re.Column, _ = strconv.Atoi(m[2])
			re.Column++
			re.Msg = m[3]
		}
	}
	var le *loopError
	if errors.As(err, &le) {
		re.Line, re.Column, re.Msg = le.at.line, le.at.col, le.Error()
	}
	return re
}

// limitWriter appends to a buffer and fails a write that would take it over max, which stops the
// template at once.
type limitWriter struct {
	buf  *bytes.Buffer
	max  int
	part string
}

func (w *limitWriter) Write(p []byte) (int, error) {
	if w.buf.Len()+len(p) > w.max {
		return 0, fmt.Errorf("the rendered %s is over the %d-byte limit: %w", w.part, w.max, ErrTooLarge)
	}
	return w.buf.Write(p)
}

type executor interface {
	Execute(io.Writer, any) error
}

func (r *Renderer) exec(part string, p plan, t executor, buf *bytes.Buffer) error {
	if p != nil && !r.noPlans {
		buf.Reset()
		if p.exec(buf, r.root, &r.scratch) && buf.Len() <= r.tpl.opts.MaxPartSize {
			return nil
		}
	}
	buf.Reset()
	r.b.steps = 0
	r.lw = limitWriter{buf: buf, max: r.tpl.opts.MaxPartSize, part: part}
	if err := t.Execute(&r.lw, r.root); err != nil {
		return renderError(part, err)
	}
	return nil
}

// Render renders the message for rc. The returned Message and its bytes are reused by the next
// Render.
func (r *Renderer) Render(rc *Recipient, opts RenderOptions) (*Message, error) {
	if r.err != nil {
		return nil, r.err
	}
	r.fill(rc)
	if err := r.exec(partSubject, r.tpl.subjectPlan, r.subject, &r.subj); err != nil {
		return nil, err
	}
	r.msg.Subject = oneLine(r.subj.Bytes())
	r.msg.HTML, r.msg.Text = nil, nil
	if r.html != nil {
		if err := r.exec(partHTML, r.tpl.htmlPlan, r.html, &r.raw); err != nil {
			return nil, err
		}
		r.finishHTML(r.raw.Bytes(), &opts)
		if r.out.Len() > r.tpl.opts.MaxPartSize {
			return nil, &RenderError{Part: partHTML, Msg: fmt.Sprintf("the rendered HTML is over the %d-byte limit", r.tpl.opts.MaxPartSize), Err: ErrTooLarge}
		}
		r.msg.HTML = r.out.Bytes()
	}
	if r.text != nil {
		if err := r.exec(partText, r.tpl.textPlan, r.text, &r.txt); err != nil {
			return nil, err
		}
		r.msg.Text = r.txt.Bytes()
	} else if r.html != nil {
		r.txt.Reset()
		r.conv.convert(&r.txt, r.msg.HTML)
		r.msg.Text = r.txt.Bytes()
	}
	return &r.msg, nil
}

// oneLine makes a header-safe subject: line breaks and tabs become spaces, ends are trimmed.
func oneLine(b []byte) string {
	for i, c := range b {
		if c == '\r' || c == '\n' || c == '\t' {
			b[i] = ' '
		}
	}
	return string(bytes.TrimSpace(b))
}

// finishHTML copies raw into r.out, resolving markers: links go through the rewriter, kept
// comments come back, and the open pixel goes before </body>.
func (r *Renderer) finishHTML(raw []byte, opts *RenderOptions) {
	r.out.Reset()
	r.out.Grow(len(raw) + 256)
	if opts.PixelURL == "" {
		r.markers(raw, opts)
		return
	}
	at := lastIndexFold(raw, "</body")
	if at < 0 {
		at = len(raw)
	}
	r.markers(raw[:at], opts)
	r.out.WriteString(`<img src="`)
	writeAttrEscaped(&r.out, opts.PixelURL)
	r.out.WriteString(`" width="1" height="1" alt="" style="display:block;width:1px;height:1px;border:0">`)
	r.markers(raw[at:], opts)
}

func (r *Renderer) markers(raw []byte, opts *RenderOptions) {
	out := &r.out
	for {
		i := bytes.IndexByte(raw, 0)
		if i < 0 {
			out.Write(raw)
			return
		}
		out.Write(raw[:i])
		raw = raw[i+1:]
		end := bytes.IndexByte(raw, 0)
		if end < 1 {
			continue // cannot happen: see markLink
		}
		kind, num := raw[0], atoi(raw[1:end])
		raw = raw[end+1:]
		switch kind {
		case markComment:
			if num < len(r.tpl.comments) {
				out.WriteString(r.tpl.comments[num])
			}
		case markLink:
			if opts.LinkRewriter == nil || len(raw) < 2 || raw[0] != '<' || raw[1]|0x20 != 'a' {
				continue
			}
			href, _ := scanAttrs(raw, 2, "href", 0)
			if href.start < 0 {
				continue
			}
			quoted := href.start > 0 && (raw[href.start-1] == '"' || raw[href.start-1] == '\'')
			out.Write(raw[:href.start])
			val := raw[href.start:href.end]
			var u string
			if bytes.IndexByte(val, '&') >= 0 {
				u = html.UnescapeString(string(val))
			} else {
				u = string(val)
			}
			if !quoted {
				out.WriteByte('"')
			}
			writeAttrEscaped(out, opts.LinkRewriter(num, u))
			if !quoted {
				out.WriteByte('"')
			}
			raw = raw[href.end:]
		}
	}
}

func atoi(b []byte) int {
	n := 0
	for _, c := range b {
		n = n*10 + int(c-'0')
	}
	return n
}

// writeAttrEscaped writes s escaped for a quoted attribute value.
func writeAttrEscaped(w *bytes.Buffer, s string) {
	last := 0
	for i := 0; i < len(s); i++ {
		var esc string
		switch s[i] {
		case '&':
			esc = "&amp;"
		case '"':
			esc = "&#34;"
		case '\'':
			esc = "&#39;"
		case '<':
			esc = "&lt;"
		case '>':
			esc = "&gt;"
		default:
			continue
		}
		w.WriteString(s[last:i])
		w.WriteString(esc)
		last = i + 1
	}
	w.WriteString(s[last:])
}

// lastIndexFold is the offset of the last sep in s ignoring ASCII case; sep is lower case.
func lastIndexFold(s []byte, sep string) int {
	for i := len(s) - len(sep); i >= 0; i-- {
		if s[i] == sep[0] && equalFoldASCII(s[i:i+len(sep)], sep) {
			return i
		}
	}
	return -1
}

// Preview renders t for rc without tracking, for the API and the UI. It makes a Renderer for the
// one call, so it is not for the sending path.
func Preview(t *Template, rc *Recipient) (*Message, error) {
	return t.NewRenderer().Render(rc, RenderOptions{})
}

// usesField reports whether any part references the root field name.
func (t *Template) usesField(name string) bool { return t.usesURL[name] }

// wholeRoot stands in the uses set for a part that reads the root itself ({{.}}, {{$}},
// {{range .}}), and so may show any field.
const wholeRoot = "."

// Uses reports whether rendering may read the root field name (e.g. "mirror_url"): a part
// references it, or reads the root as a whole. A caller may leave a field it does not use
// empty in the Recipient.
func (t *Template) Uses(name string) bool { return t.usesURL[name] || t.usesURL[wholeRoot] }
