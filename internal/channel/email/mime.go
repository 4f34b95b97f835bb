package email

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"mime"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// Address is a mailbox with an optional display name.
type Address struct {
	// Name is the display name, any UTF-8; "" for none.
	Name string
	// Addr is the address, local@domain.
	Addr string
}

// Header is an extra header field.
type Header struct {
	// Name is the field name, e.g. "X-Campaign".
	Name string
	// Value is the unfolded field value, without CR or LF.
	Value string
}

// Email is the content of one message to one recipient.
type Email struct {
	From    Address
	ReplyTo Address // Addr "" for none
	// To is the recipient: its domain in ASCII (see EnvelopeAddress), its
	// local part may be UTF-8 (RFC 6532), for a relay that offers SMTPUTF8.
	To      Address
	Subject string // any UTF-8; encoded per RFC 2047 when not plain ASCII
	// Date is the Date header; zero means the Composer clock's now.
	Date time.Time
	// MessageID is the Message-ID without angle brackets; "" makes a random
	// one at the Composer's domain (see NewMessageID).
	MessageID string
	// Text and HTML are the bodies, UTF-8; either may be empty, not both.
	Text, HTML []byte
	// ListUnsubscribeURL is the one-click (RFC 8058) https URL; setting it
	// also writes List-Unsubscribe-Post.
	ListUnsubscribeURL string
	// ListUnsubscribeMailto is the address (or full mailto: URI) for
	// unsubscribing by mail.
	ListUnsubscribeMailto string
	// Headers are extra header fields, written after the standard ones.
	Headers []Header
}

// Composer builds RFC 5322 messages. Its Build is on the sending hot path:
// it appends to a caller's buffer with hand-written quoted-printable and
// header code, and allocates only for non-ASCII header text and DKIM.
// A Composer is safe for concurrent use.
type Composer struct {
	// Domain is the right-hand side of generated Message-IDs.
	Domain string
	// DKIM signs messages when set.
	DKIM *DKIM
	// Clock gives the Date when Email.Date is zero; nil means system time.
	Clock Clock
	// Rand returns random numbers for Message-IDs and MIME boundaries; nil
	// means math/rand/v2 (ChaCha8, randomly seeded). Tests fix it.
	Rand func() uint64

	// date is the Date field of the last second formatted: messages built
	// within a second share it, and formatting cost about a microsecond.
	date atomic.Pointer[formattedDate]
}

type formattedDate struct {
	unix int64
	loc  *time.Location
	text []byte
}

// appendDate appends t as RFC 5322 wants it (RFC 1123 with a numeric zone).
func (c *Composer) appendDate(b []byte, t time.Time) []byte {
	if d := c.date.Load(); d != nil && d.unix == t.Unix() && d.loc == t.Location() {
		return append(b, d.text...)
	}
	start := len(b)
	b = t.AppendFormat(b, time.RFC1123Z)
	c.date.Store(&formattedDate{unix: t.Unix(), loc: t.Location(), text: bytes.Clone(b[start:])})
	return b
}

// ErrHeaderValue reports a header value that would corrupt the message:
// a CR or LF (header injection) or a line over 998 octets.
var ErrHeaderValue = errors.New("email: invalid header value")

// NewMessageID returns a random Message-ID (without angle brackets) at domain.
func NewMessageID(domain string) string {
	var b []byte
	b = appendHex(b, rand.Uint64())
	b = appendHex(b, rand.Uint64())
	return string(b) + "@" + domain
}

// Build appends the complete message for e to dst and returns it. Output
// lines end in CRLF, header lines are folded at 78 octets where they have
// spaces and never exceed 998. A body goes as it is (7bit) when it is ASCII
// with lines of at most 998 octets, else quoted-printable (see appendBody).
// The MIME boundary starts with "=_", a sequence quoted-printable never
// produces and a 7bit body may not start a line with, so it cannot occur in
// the content. No line starts with a dot, so the message needs no SMTP
// dot-stuffing (channel.Message.Plain).
func (c *Composer) Build(dst []byte, e *Email) ([]byte, error) {
	if len(e.Text) == 0 && len(e.HTML) == 0 {
		return dst, errors.New("email: message has neither text nor HTML body")
	}
	rnd := c.Rand
	if rnd == nil {
		rnd = rand.Uint64
	}
	r1, r2 := rnd(), rnd()
	date := e.Date
	if date.IsZero() {
		if c.Clock != nil {
			date = c.Clock.Now()
		} else {
			date = time.Now()
		}
	}
	start := len(dst)
	var err error
	h := headerWriter{b: dst}
	h.address("From", e.From, false, &err)
	if e.ReplyTo.Addr != "" {
		h.address("Reply-To", e.ReplyTo, false, &err)
	}
	h.address("To", e.To, true, &err)
	h.text("Subject", e.Subject, &err)
	h.b = append(h.b, "Date: "...)
	h.b = c.appendDate(h.b, date)
	h.b = append(h.b, "\r\nMessage-ID: <"...)
	if e.MessageID != "" {
		if !safeToken(e.MessageID) {
			return dst, fmt.Errorf("%w: Message-ID %q", ErrHeaderValue, e.MessageID)
		}
		h.b = append(h.b, e.MessageID...)
	} else {
		h.b = appendHex(h.b, r1)
		h.b = appendHex(h.b, r2)
		h.b = append(h.b, '@')
		h.b = append(h.b, c.Domain...)
	}
	h.b = append(h.b, ">\r\n"...)
	if e.ListUnsubscribeURL != "" || e.ListUnsubscribeMailto != "" {
		// <https://...>, <mailto:...>, built in one allocation: it is in every message.
		var v strings.Builder
		u, m := e.ListUnsubscribeURL, e.ListUnsubscribeMailto
		scheme := ""
		if m != "" && !strings.HasPrefix(m, "mailto:") {
			scheme = "mailto:"
		}
		v.Grow(len(u) + len(scheme) + len(m) + 6)
		if u != "" {
			if !strings.HasPrefix(u, "https://") || !safeToken(u) {
				return dst, fmt.Errorf("%w: List-Unsubscribe URL must be https and have no spaces: %q", ErrHeaderValue, u)
			}
			v.WriteByte('<')
			v.WriteString(u)
			v.WriteByte('>')
		}
		if m != "" {
			if !safeToken(m) || len(scheme)+len(m) > 900 {
				return dst, fmt.Errorf("%w: List-Unsubscribe mailto %q", ErrHeaderValue, scheme+m)
			}
			if v.Len() > 0 {
				v.WriteString(", ")
			}
			v.WriteString("<")
			v.WriteString(scheme)
			v.WriteString(m)
			v.WriteByte('>')
		}
		h.raw("List-Unsubscribe", v.String(), &err)
		if e.ListUnsubscribeURL != "" {
			h.b = append(h.b, "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"...)
		}
	}
	h.b = append(h.b, "MIME-Version: 1.0\r\n"...)
	for _, x := range e.Headers {
		if !validName(x.Name) {
			return dst, fmt.Errorf("%w: header name %q", ErrHeaderValue, x.Name)
		}
		h.raw(x.Name, x.Value, &err)
	}
	if err != nil {
		return dst, err
	}
	b := h.b
	switch {
	case len(e.HTML) == 0:
		b = appendBody(b, "plain", e.Text)
	case len(e.Text) == 0:
		b = appendBody(b, "html", e.HTML)
	default:
		var bound [2 + 32]byte
		boundary := appendHex(appendHex(append(bound[:0], "=_"...), r2), r1)
		b = append(b, "Content-Type: multipart/alternative;\r\n boundary=\""...)
		b = append(b, boundary...)
		b = append(b, "\"\r\n\r\nThis is a multi-part message in MIME format.\r\n"...)
		for _, part := range [2]struct {
			sub  string
			body []byte
		}{{"plain", e.Text}, {"html", e.HTML}} {
			b = append(b, "\r\n--"...)
			b = append(b, boundary...)
			b = append(b, "\r\n"...)
			b = appendBody(b, part.sub, part.body)
		}
		b = append(b, "\r\n--"...)
		b = append(b, boundary...)
		b = append(b, "--"...)
	}
	b = append(b, "\r\n"...)
	if c.DKIM != nil {
		sig, err := c.DKIM.Sign(b[start:])
		if err != nil {
			return dst, err
		}
		b = append(b, sig...) // grow, then move the message behind the signature
		copy(b[start+len(sig):], b[start:len(b)-len(sig)])
		copy(b[start:], sig)
	}
	return b, nil
}

// appendBody appends a text part's header fields and body. The body goes as it is, with its
// line breaks made CRLF, under Content-Transfer-Encoding 7bit when it can (see append7bit):
// most templates are ASCII, and encoding them quoted-printable made each message longer and
// cost more than rendering its text. Anything else is quoted-printable.
func appendBody(b []byte, sub string, body []byte) []byte {
	b = append(b, "Content-Type: text/"...)
	b = append(b, sub...)
	b = append(b, "; charset=utf-8\r\nContent-Transfer-Encoding: "...)
	enc := len(b)
	if out, ok := append7bit(append(b, "7bit\r\n\r\n"...), body); ok {
		return out
	}
	return appendQP(append(b[:enc], "quoted-printable\r\n\r\n"...), body)
}

// max7bitLine is the longest line append7bit writes, without its CRLF (RFC 5322 section
// 2.1.1).
const max7bitLine = 998

// append7bit appends src with each line break (LF or CRLF) written CRLF and reports true, when
// src is 7bit data (RFC 2045 section 2.7): no octet above 127, no NUL, no CR but before LF, no
// line over max7bitLine. It also refuses a line that starts with "--=_", which could open a
// MIME boundary delimiter, and one that starts with a dot, which quoted-printable writes =2E so
// that SMTP need not dot-stuff the message. Otherwise it reports false and what it appended is
// to be discarded.
func append7bit(dst, src []byte) ([]byte, bool) {
	for len(src) > 0 {
		line, rest, nl := src, []byte(nil), false
		if i := bytes.IndexByte(src, '\n'); i >= 0 {
			line, rest, nl = src[:i], src[i+1:], true
			if i > 0 && line[i-1] == '\r' {
				line = line[:i-1]
			}
		}
		if len(line) > max7bitLine || len(line) > 0 && line[0] == '.' || !ascii7(line) || bytes.HasPrefix(line, []byte("--=_")) {
			return dst, false
		}
		dst = append(dst, line...)
		if nl {
			dst = append(dst, '\r', '\n')
		}
		src = rest
	}
	return dst, true
}

// ascii7 reports whether line has no octet above 127, no NUL and no CR, eight bytes at a time.
func ascii7(line []byte) bool {
	const ones, highs, crs = 0x0101010101010101, 0x8080808080808080, 0x0d0d0d0d0d0d0d0d
	i := 0
	for ; i+8 <= len(line); i += 8 {
		x := binary.LittleEndian.Uint64(line[i:])
		cr := x ^ crs
		// A zero byte in x or in cr (where x has CR) sets its high bit in the differences;
		// with no high bit set in x, the test is exact.
		if x&highs != 0 || ((x-ones)&^x|(cr-ones)&^cr)&highs != 0 {
			return false
		}
	}
	for _, c := range line[i:] {
		if c >= 0x80 || c == 0 || c == '\r' {
			return false
		}
	}
	return true
}

const hexDigits = "0123456789abcdef"

func appendHex(b []byte, v uint64) []byte {
	for s := 60; s >= 0; s -= 4 {
		b = append(b, hexDigits[v>>uint(s)&0xf])
	}
	return b
}

// safeToken reports whether s can stand in a header without encoding or
// folding: printable ASCII, no spaces, no angle brackets.
func safeToken(s string) bool {
	if len(s) == 0 || len(s) > 900 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c >= 0x7f || c == '<' || c == '>' {
			return false
		}
	}
	return true
}

// safeUTF8Address reports an address with a UTF-8 local part and an ASCII
// domain (RFC 6532), safe to write in a header as it is.
func safeUTF8Address(s string) bool {
	at := strings.LastIndexByte(s, '@')
	if at <= 0 || len(s) > 900 || !utf8.ValidString(s[:at]) || !safeToken(s[at:]) {
		return false
	}
	for _, r := range s[:at] {
		if r <= ' ' || r == 0x7f || r == '<' || r == '>' || (r >= 0x80 && r < 0xa0) {
			return false
		}
	}
	return true
}

func validName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c >= 0x7f || c == ':' {
			return false
		}
	}
	return true
}

// plainASCII reports whether s can be written in a header as it is.
func plainASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < ' ' && c != '\t') || c >= 0x7f {
			return false
		}
	}
	return !strings.Contains(s, "=?")
}

// headerWriter appends header fields, folding long ones at spaces.
type headerWriter struct{ b []byte }

// raw writes a field whose value is already in header syntax.
func (h *headerWriter) raw(name, value string, errp *error) {
	if strings.ContainsAny(value, "\r\n") {
		*errp = fmt.Errorf("%w: %s contains a line break", ErrHeaderValue, name)
		return
	}
	h.b = append(h.b, name...)
	h.b = append(h.b, ": "...)
	line := len(name) + 2
	if line+len(value) <= 78 {
		h.b = append(h.b, value...)
		h.b = append(h.b, "\r\n"...)
		return
	}
	first := true
	for value != "" {
		word := value
		rest := ""
		if i := strings.IndexByte(value[1:], ' '); i >= 0 {
			word, rest = value[:i+1], value[i+1:]
		}
		if !first && line+len(word) > 78 && word[0] == ' ' {
			h.b = append(h.b, "\r\n"...)
			line = 0
		}
		if line+len(word) > 998 {
			*errp = fmt.Errorf("%w: %s has a word too long for one line", ErrHeaderValue, name)
			return
		}
		h.b = append(h.b, word...)
		line += len(word)
		value, first = rest, false
	}
	h.b = append(h.b, "\r\n"...)
}

// text writes an unstructured field (Subject), RFC 2047 encoding it when it
// is not plain ASCII or has a word too long to fold.
func (h *headerWriter) text(name, value string, errp *error) {
	if !plainASCII(value) || longWord(value) {
		value = mime.QEncoding.Encode("utf-8", value)
	}
	h.raw(name, value, errp)
}

func longWord(s string) bool {
	n := 0
	for i := 0; i < len(s); i++ {
		if s[i] == ' ' {
			n = 0
		} else if n++; n > 900 {
			return true
		}
	}
	return false
}

// address writes a mailbox field: "Name" <addr>.
func (h *headerWriter) address(name string, a Address, utf8Local bool, errp *error) {
	ok := safeToken(a.Addr)
	if !ok && utf8Local {
		ok = safeUTF8Address(a.Addr)
	}
	if !ok || !strings.Contains(a.Addr, "@") {
		*errp = fmt.Errorf("%w: %s address %q", ErrHeaderValue, name, a.Addr)
		return
	}
	if a.Name == "" {
		h.raw(name, "<"+a.Addr+">", errp)
		return
	}
	var phrase string
	switch {
	case !plainASCII(a.Name) || longWord(a.Name):
		phrase = mime.QEncoding.Encode("utf-8", a.Name)
	case isAtomText(a.Name):
		phrase = a.Name
	default:
		var sb strings.Builder
		sb.WriteByte('"')
		for i := 0; i < len(a.Name); i++ {
			if c := a.Name[i]; c == '"' || c == '\\' {
				sb.WriteByte('\\')
			}
			sb.WriteByte(a.Name[i])
		}
		sb.WriteByte('"')
		phrase = sb.String()
	}
	h.raw(name, phrase+" <"+a.Addr+">", errp)
}

// isAtomText reports whether s is words of RFC 5322 atext separated by
// single spaces, which needs no quoting in a display name.
func isAtomText(s string) bool {
	if s == "" || s[0] == ' ' || s[len(s)-1] == ' ' || strings.Contains(s, "  ") {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == ' ':
		case strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// qpSafe marks bytes quoted-printable writes as themselves.
var qpSafe = func() (t [256]bool) {
	for c := '!'; c <= '~'; c++ {
		t[c] = c != '='
	}
	t[' '], t['\t'] = true, true
	return t
}()

// appendQP appends src quoted-printable encoded (RFC 2045 section 6.7).
// LF and CRLF in src are line breaks; lines are at most 76 octets; space and
// tab before a line break are encoded so transports cannot strip them, and
// a dot that starts a line is encoded (=2E) so that SMTP need not stuff it.
func appendQP(dst, src []byte) []byte { return appendQPWords(dst, src, true) }

// appendQPWords is appendQP; words false tests one byte at a time, which tests compare with.
func appendQPWords(dst, src []byte, words bool) []byte {
	line := 0
	for i := 0; i < len(src); {
		c := src[i]
		if qpSafe[c] && line < 75 && (c != '.' || line > 0) {
			// Copy a run of literal bytes at once, up to the line limit.
			j, end := i+1, min(len(src), i+75-line)
			for words && j+8 <= end && plain8(binary.LittleEndian.Uint64(src[j:])) {
				j += 8
			}
			for j < end && qpSafe[src[j]] {
				j++
			}
			if w := src[j-1]; (w == ' ' || w == '\t') && (j == len(src) || src[j] == '\n' || src[j] == '\r') {
				j-- // whitespace before a line break is encoded below
			}
			if j > i {
				dst = append(dst, src[i:j]...)
				line += j - i
				i = j
				continue
			}
		}
		if c == '\n' || (c == '\r' && i+1 < len(src) && src[i+1] == '\n') {
			if c == '\r' {
				i++
			}
			dst = append(dst, '\r', '\n')
			line = 0
			i++
			continue
		}
		enc := !qpSafe[c]
		if (c == ' ' || c == '\t') && (i+1 == len(src) || src[i+1] == '\n' || src[i+1] == '\r') || c == '.' && line == 0 {
			enc = true
		}
		n := 1
		if enc {
			n = 3
		}
		if line+n > 75 {
			dst = append(dst, '=', '\r', '\n')
			line = 0
			if c == '.' {
				enc, n = true, 3
			}
		}
		if enc {
			dst = append(dst, '=', upperHex[c>>4], upperHex[c&0xf])
		} else {
			dst = append(dst, c)
		}
		line += n
		i++
	}
	return dst
}

const upperHex = "0123456789ABCDEF"

// plain8 reports whether the eight bytes packed in x are all printable ASCII or space, and
// none is '=': bytes quoted-printable copies as they are. Tab, which it copies too, is left
// to the byte-wise loop. Each test is exact for the word as a whole: a borrow or carry
// between bytes only ever starts at a byte that already fails.
func plain8(x uint64) bool {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	below := (x - 0x20*ones) &^ x       // some byte < 0x20
	above := (x + (0x80-0x7f)*ones) | x // some byte > 0x7e
	eq := x ^ '='*ones                  // a zero byte where x has '='
	equals := (eq - ones) &^ eq
	return (below|above|equals)&highs == 0
}
