package bounce

import (
	"bytes"
	"encoding/base64"
	"io"
	"mime"
	"mime/quotedprintable"
	"net/mail"
	"regexp"
	"strings"

	"github.com/emersion/go-message/charset"
)

// A lenient MIME reader. Bounces are produced by every kind of software, often broken, and the
// standard readers (net/textproto, go-message's) give up on the first malformed header line or
// boundary. This one never gives up: a line it cannot read is skipped and a part it cannot decode
// is kept as it is. go-message's charset tables do the charset conversion.

const (
	maxDepth = 8   // nested MIME levels walked
	maxParts = 200 // MIME parts read in one message
)

// header holds a message or part header; keys are lower-cased, values unfolded, in order.
type header struct {
	keys []string
	vals map[string][]string
}

func (h header) get(k string) string {
	if v := h.vals[strings.ToLower(k)]; len(v) > 0 {
		return v[0]
	}
	return ""
}

func (h header) values(k string) []string { return h.vals[strings.ToLower(k)] }

// parseHeader reads header lines from the start of b and returns them with the rest of b after
// the blank line that ends them. A leading mbox "From " line is skipped.
func parseHeader(b []byte) (header, []byte) {
	h := header{vals: map[string][]string{}}
	if bytes.HasPrefix(b, []byte("From ")) {
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		} else {
			return h, nil
		}
	}
	var key string
	var val strings.Builder
	flush := func() {
		if key != "" {
			k := strings.ToLower(key)
			if _, ok := h.vals[k]; !ok {
				h.keys = append(h.keys, k)
			}
			h.vals[k] = append(h.vals[k], strings.TrimSpace(val.String()))
		}
		key = ""
		val.Reset()
	}
	rest := b
	for len(rest) > 0 {
		line := rest
		next := []byte(nil)
		if i := bytes.IndexByte(rest, '\n'); i >= 0 {
			line, next = rest[:i], rest[i+1:]
		}
		line = bytes.TrimRight(line, "\r")
		if len(bytes.TrimSpace(line)) == 0 {
			flush()
			return h, next
		}
		if line[0] == ' ' || line[0] == '\t' {
			if key != "" {
				val.WriteByte(' ')
				val.Write(bytes.TrimSpace(line))
			}
			rest = next
			continue
		}
		i := bytes.IndexByte(line, ':')
		if i <= 0 || bytes.ContainsAny(line[:i], " \t") {
			if len(h.keys) == 0 && key == "" {
				// Not a header at all: the message has no header block.
				return h, b
			}
			flush()
			rest = next
			continue
		}
		flush()
		key = string(line[:i])
		val.Write(bytes.TrimSpace(line[i+1:]))
		rest = next
	}
	flush()
	return h, nil
}

// entity is one MIME part with its body decoded (transfer encoding always, charset for text/*).
type entity struct {
	header    header
	mediaType string
	params    map[string]string
	body      []byte
	parts     []*entity
}

var boundaryRe = regexp.MustCompile(`(?i)boundary\s*=\s*"?([^";]+)"?`)

func parseEntity(raw []byte, depth int, count *int) *entity {
	*count++
	h, body := parseHeader(raw)
	e := &entity{header: h}
	e.mediaType, e.params = contentType(h.get("Content-Type"))

	switch {
	case strings.HasPrefix(e.mediaType, "multipart/") && e.params["boundary"] != "" && depth < maxDepth:
		for _, p := range splitMultipart(body, e.params["boundary"]) {
			if *count >= maxParts {
				break
			}
			e.parts = append(e.parts, parseEntity(p, depth+1, count))
		}
		if len(e.parts) == 0 {
			e.body = body
		}
	case isMessageType(e.mediaType) && depth < maxDepth:
		e.body = decodeTransfer(h.get("Content-Transfer-Encoding"), body)
		if *count < maxParts {
			e.parts = []*entity{parseEntity(e.body, depth+1, count)}
		}
	default:
		e.body = decodeTransfer(h.get("Content-Transfer-Encoding"), body)
		if strings.HasPrefix(e.mediaType, "text/") || e.mediaType == "message/delivery-status" {
			e.body = decodeCharset(e.params["charset"], e.body)
		}
	}
	return e
}

func isMessageType(t string) bool {
	return t == "message/rfc822" || t == "message/global" || t == "message/partial"
}

func contentType(v string) (string, map[string]string) {
	if v == "" {
		return "text/plain", map[string]string{}
	}
	t, params, err := mime.ParseMediaType(v)
	if err != nil {
		t = strings.ToLower(strings.TrimSpace(strings.SplitN(v, ";", 2)[0]))
		params = map[string]string{}
		if m := boundaryRe.FindStringSubmatch(v); m != nil {
			params["boundary"] = strings.TrimSpace(m[1])
		}
		if m := regexp.MustCompile(`(?i)charset\s*=\s*"?([^";\s]+)`).FindStringSubmatch(v); m != nil {
			params["charset"] = m[1]
		}
		if m := regexp.MustCompile(`(?i)report-type\s*=\s*"?([^";\s]+)`).FindStringSubmatch(v); m != nil {
			params["report-type"] = m[1]
		}
	}
	if t == "" {
		t = "text/plain"
	}
	return t, params
}

// splitMultipart cuts body at the boundary lines; text before the first and after the closing
// boundary is dropped. A missing closing boundary is tolerated.
func splitMultipart(body []byte, boundary string) [][]byte {
	delim := []byte("--" + boundary)
	var parts [][]byte
	var cur []byte
	in := false
	start := 0
	for start < len(body) {
		end := bytes.IndexByte(body[start:], '\n')
		var line []byte
		if end < 0 {
			line = body[start:]
			end = len(body)
		} else {
			line = body[start : start+end]
			end = start + end + 1
		}
		trimmed := bytes.TrimRight(line, " \t\r")
		if bytes.HasPrefix(trimmed, delim) {
			tail := trimmed[len(delim):]
			if len(tail) == 0 || bytes.Equal(tail, []byte("--")) {
				if in {
					parts = append(parts, cur)
				}
				cur = nil
				in = len(tail) == 0
				start = end
				if !in {
					return parts
				}
				continue
			}
		}
		if in {
			cur = append(cur, body[start:end]...)
		}
		start = end
	}
	if in && len(cur) > 0 {
		parts = append(parts, cur)
	}
	return parts
}

func decodeTransfer(enc string, body []byte) []byte {
	switch strings.ToLower(strings.TrimSpace(enc)) {
	case "base64":
		clean := make([]byte, 0, len(body))
		for _, c := range body {
			if c == '+' || c == '/' || c == '=' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' {
				clean = append(clean, c)
			}
		}
		if i := bytes.IndexByte(clean, '='); i >= 0 {
			clean = clean[:i]
		}
		if len(clean)%4 == 1 {
			clean = clean[:len(clean)-1]
		}
		out, err := base64.RawStdEncoding.DecodeString(string(clean))
		if err != nil && len(out) == 0 {
			return body
		}
		return out
	case "quoted-printable":
		out, err := io.ReadAll(quotedprintable.NewReader(bytes.NewReader(body)))
		if err != nil && len(out) == 0 {
			return body
		}
		return out
	}
	return body
}

func decodeCharset(cs string, body []byte) []byte {
	cs = strings.ToLower(strings.TrimSpace(cs))
	if cs == "" || cs == "us-ascii" || cs == "utf-8" || cs == "utf8" {
		return body
	}
	r, err := charset.Reader(cs, bytes.NewReader(body))
	if err != nil {
		return body
	}
	out, err := io.ReadAll(r)
	if err != nil && len(out) == 0 {
		return body
	}
	return out
}

var wordDecoder = &mime.WordDecoder{CharsetReader: charset.Reader}

// decodeHeader decodes RFC 2047 encoded words; undecodable text is returned as it is.
func decodeHeader(v string) string {
	if !strings.Contains(v, "=?") {
		return v
	}
	if d, err := wordDecoder.DecodeHeader(v); err == nil {
		return d
	}
	return v
}

var addrRe = regexp.MustCompile(`(?i)(?:"[^"\s]{1,64}"|[a-z0-9!#$%&'*+/=?^_{|}~.-]{1,64})@(?:\[[0-9.]+\]|[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+)`)

// firstAddress returns the first e-mail address in a header value, "" if there is none.
func firstAddress(v string) string {
	if l := addressList([]string{v}); len(l) > 0 {
		return l[0]
	}
	return ""
}

// addressList returns the addresses in header values, parsed as RFC 5322 lists when they are
// well formed and picked out by pattern when they are not.
func addressList(values []string) []string {
	var out []string
	for _, v := range values {
		if strings.TrimSpace(v) == "" {
			continue
		}
		if list, err := mail.ParseAddressList(v); err == nil {
			for _, a := range list {
				out = append(out, a.Address)
			}
			continue
		}
		out = append(out, addrRe.FindAllString(v, -1)...)
	}
	return out
}

var tagRe = regexp.MustCompile(`(?s)<(script|style)[^>]*>.*?</(script|style)>|<[^>]*>`)

// htmlText turns HTML into rough text: tags go, block ends become line ends, entities decode.
func htmlText(b []byte) string {
	s := string(b)
	s = regexp.MustCompile(`(?i)<br\s*/?>|</p>|</div>|</tr>|</li>|</h[1-6]>`).ReplaceAllString(s, "\n")
	s = tagRe.ReplaceAllString(s, "")
	s = strings.NewReplacer("&nbsp;", " ", "&lt;", "<", "&gt;", ">", "&amp;", "&", "&quot;", `"`, "&#39;", "'").Replace(s)
	return s
}
