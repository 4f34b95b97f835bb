package email

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"flag"
	"io"
	"mime/quotedprintable"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-message/mail"
	"github.com/emersion/go-msgauth/dkim"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

func fixedRand() func() uint64 {
	n := uint64(0x0123456789abcdef)
	return func() uint64 { n = n*6364136223846793005 + 1442695040888963407; return n }
}

var testDate = time.Date(2025, 3, 1, 9, 30, 0, 0, time.FixedZone("CET", 3600))

func sampleEmail() *Email {
	return &Email{
		From:                  Address{Name: "Herald Newsletter", Addr: "news@herald.test"},
		ReplyTo:               Address{Name: "Support, Team \"A\"", Addr: "support@herald.test"},
		To:                    Address{Name: "Zoë Dupré", Addr: "zoe@example.com"},
		Subject:               "Ça marche — spring offers for Zoë",
		Date:                  testDate,
		Text:                  []byte("Hello Zoë,\n\nOur spring offers are here. \n.A line starting with a dot\n" + strings.Repeat("long line ", 12) + "\nBye\n"),
		HTML:                  []byte("<html><body><p style=\"color:red\">Hello Zoë,</p>\r\n<p>Spring offers = 20% off!</p>\t\r\n</body></html>"),
		ListUnsubscribeURL:    "https://herald.test/t/u/abc123",
		ListUnsubscribeMailto: "unsubscribe+abc123@herald.test",
		Headers:               []Header{{Name: "X-Herald-Delivery", Value: "42"}},
	}
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file:\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

// checkWireFormat checks CRLF line endings and line lengths.
func checkWireFormat(t *testing.T, msg []byte) {
	t.Helper()
	for i, line := range bytes.Split(msg, []byte("\r\n")) {
		if bytes.IndexByte(line, '\n') >= 0 || bytes.IndexByte(line, '\r') >= 0 {
			t.Errorf("line %d has a bare CR or LF: %q", i+1, line)
		}
		if len(line) > 998 {
			t.Errorf("line %d is %d octets long", i+1, len(line))
		}
		if len(line) > 78 && !bytes.HasPrefix(line, []byte("DKIM-Signature")) && !bytes.HasPrefix(line, []byte(" ")) {
			t.Errorf("line %d is %d octets long, want folding at 78: %q", i+1, len(line), line)
		}
	}
	if !bytes.HasSuffix(msg, []byte("\r\n")) {
		t.Error("message does not end with CRLF")
	}
}

func TestBuildGolden(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(e *Email)
	}{
		{"alternative.eml", func(*Email) {}},
		{"text-only.eml", func(e *Email) {
			e.HTML, e.ReplyTo, e.ListUnsubscribeMailto, e.Headers = nil, Address{}, "", nil
			e.Subject = "Plain ASCII subject that is long enough to need folding somewhere past seventy-eight"
			e.From.Name = "Herald"
			e.To.Name = ""
		}},
		{"html-only.eml", func(e *Email) { e.Text, e.ListUnsubscribeURL = nil, "" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := sampleEmail()
			tc.edit(e)
			c := &Composer{Domain: "herald.test", Rand: fixedRand()}
			got, err := c.Build(nil, e)
			if err != nil {
				t.Fatal(err)
			}
			checkWireFormat(t, got)
			golden(t, tc.name, got)
		})
	}
}

func TestBuildParsesBack(t *testing.T) {
	e := sampleEmail()
	c := &Composer{Domain: "herald.test"}
	prefix := []byte("kept")
	msg, err := c.Build(prefix, e)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(msg, []byte("kept")) {
		t.Fatal("Build did not append to dst")
	}
	msg = msg[4:]
	mr, err := mail.CreateReader(bytes.NewReader(msg))
	if err != nil {
		t.Fatal(err)
	}
	h := mr.Header
	from, err := h.AddressList("From")
	if err != nil || len(from) != 1 || from[0].Name != e.From.Name || from[0].Address != e.From.Addr {
		t.Errorf("From = %v, %v", from, err)
	}
	rt, err := h.AddressList("Reply-To")
	if err != nil || len(rt) != 1 || rt[0].Name != e.ReplyTo.Name {
		t.Errorf("Reply-To = %v, %v", rt, err)
	}
	to, err := h.AddressList("To")
	if err != nil || len(to) != 1 || to[0].Name != e.To.Name || to[0].Address != e.To.Addr {
		t.Errorf("To = %v, %v", to, err)
	}
	if s, err := h.Subject(); err != nil || s != e.Subject {
		t.Errorf("Subject = %q, %v", s, err)
	}
	if d, err := h.Date(); err != nil || !d.Equal(testDate) {
		t.Errorf("Date = %v, %v", d, err)
	}
	if id, err := h.MessageID(); err != nil || !strings.HasSuffix(id, "@herald.test") || len(id) != 32+len("@herald.test") {
		t.Errorf("Message-ID = %q, %v", id, err)
	}
	if got := h.Get("List-Unsubscribe"); got != "<https://herald.test/t/u/abc123>, <mailto:unsubscribe+abc123@herald.test>" {
		t.Errorf("List-Unsubscribe = %q", got)
	}
	if got := h.Get("List-Unsubscribe-Post"); got != "List-Unsubscribe=One-Click" {
		t.Errorf("List-Unsubscribe-Post = %q", got)
	}
	if got := h.Get("X-Herald-Delivery"); got != "42" {
		t.Errorf("X-Herald-Delivery = %q", got)
	}
	if mt, _, _ := h.ContentType(); mt != "multipart/alternative" {
		t.Errorf("Content-Type = %q", mt)
	}
	norm := func(b []byte) string { return strings.ReplaceAll(string(b), "\r\n", "\n") }
	want := []struct{ typ, body string }{{"text/plain", norm(e.Text)}, {"text/html", norm(e.HTML)}}
	for i := 0; ; i++ {
		p, err := mr.NextPart()
		if err == io.EOF {
			if i != 2 {
				t.Errorf("%d parts, want 2", i)
			}
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		ih, ok := p.Header.(*mail.InlineHeader)
		if !ok || i >= 2 {
			t.Fatalf("part %d unexpected: %T", i, p.Header)
		}
		typ, params, _ := ih.ContentType()
		if typ != want[i].typ || params["charset"] != "utf-8" {
			t.Errorf("part %d Content-Type = %q %v", i, typ, params)
		}
		if cte := ih.Get("Content-Transfer-Encoding"); cte != "quoted-printable" {
			t.Errorf("part %d encoding = %q", i, cte)
		}
		body, err := io.ReadAll(p.Body)
		if err != nil {
			t.Fatal(err)
		}
		if norm(body) != want[i].body {
			t.Errorf("part %d body =\n%q\nwant\n%q", i, body, want[i].body)
		}
	}
}

func TestBuildRejectsInjection(t *testing.T) {
	for name, edit := range map[string]func(e *Email){
		"subject newline": func(e *Email) { e.Subject = "hi" }, // encoded, so allowed; replaced below
		"header value":    func(e *Email) { e.Headers = []Header{{Name: "X-A", Value: "a\r\nBcc: x@evil.test"}} },
		"header name":     func(e *Email) { e.Headers = []Header{{Name: "X A:", Value: "a"}} },
		"to address":      func(e *Email) { e.To.Addr = "a@b.test>\r\nBcc: <x@evil.test" },
		"http unsub":      func(e *Email) { e.ListUnsubscribeURL = "http://herald.test/u" },
		"message id":      func(e *Email) { e.MessageID = "a b@c" },
		"no body":         func(e *Email) { e.Text, e.HTML = nil, nil },
	} {
		t.Run(name, func(t *testing.T) {
			e := sampleEmail()
			edit(e)
			_, err := (&Composer{Domain: "herald.test"}).Build(nil, e)
			if name == "subject newline" {
				// A line break in the subject is encoded, never written raw.
				e.Subject = "a\r\nBcc: x@evil.test"
				msg, err := (&Composer{Domain: "herald.test"}).Build(nil, e)
				if err != nil || bytes.Contains(msg, []byte("\r\nBcc:")) {
					t.Errorf("subject with CRLF: err %v, injected %v", err, bytes.Contains(msg, []byte("\r\nBcc:")))
				}
				return
			}
			if err == nil {
				t.Error("Build accepted it")
			} else if name != "no body" && !errors.Is(err, ErrHeaderValue) {
				t.Errorf("error %v is not ErrHeaderValue", err)
			}
		})
	}
}

func TestQuotedPrintable(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"a=b", "a=3Db"},
		{"trailing \nx", "trailing=20\r\nx"},
		{"tab\t", "tab=09"},
		{"é", "=C3=A9"},
		{"cr\rlf", "cr=0Dlf"},
		{strings.Repeat("x", 80), strings.Repeat("x", 75) + "=\r\n" + strings.Repeat("x", 5)},
		{".a\n.\nb.\n..", "=2Ea\r\n=2E\r\nb.\r\n=2E."},
		{strings.Repeat("x", 75) + ".y", strings.Repeat("x", 75) + "=\r\n=2Ey"},
	} {
		if got := string(appendQP(nil, []byte(tc.in))); got != tc.want {
			t.Errorf("appendQP(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestDKIMVerifies(t *testing.T) {
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		key  any
		algo string
	}{{"ed25519", edKey, "ed25519"}, {"rsa", rsaKey, "rsa"}} {
		t.Run(tc.name, func(t *testing.T) {
			// Go through the PEM helper, as configuration will.
			der, err := x509.MarshalPKCS8PrivateKey(tc.key)
			if err != nil {
				t.Fatal(err)
			}
			signer, err := ParseDKIMKey(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
			if err != nil {
				t.Fatal(err)
			}
			pub, err := x509.MarshalPKIXPublicKey(signer.Public())
			if err != nil {
				t.Fatal(err)
			}
			if tc.algo == "ed25519" {
				pub = []byte(signer.Public().(ed25519.PublicKey))
			}
			record := "v=DKIM1; k=" + tc.algo + "; p=" + base64.StdEncoding.EncodeToString(pub)

			c := &Composer{Domain: "herald.test", DKIM: &DKIM{Domain: "herald.test", Selector: "s1", Key: signer}}
			msg, err := c.Build(nil, sampleEmail())
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.HasPrefix(msg, []byte("DKIM-Signature: ")) {
				t.Fatalf("message does not start with the signature:\n%s", msg[:200])
			}
			checkWireFormat(t, msg)
			lookups := 0
			opts := &dkim.VerifyOptions{LookupTXT: func(domain string) ([]string, error) {
				lookups++
				if domain != "s1._domainkey.herald.test" {
					t.Errorf("lookup of %q", domain)
				}
				return []string{record}, nil
			}}
			vs, err := dkim.VerifyWithOptions(bytes.NewReader(msg), opts)
			if err != nil || len(vs) != 1 {
				t.Fatalf("verify: %v, %d verifications", err, len(vs))
			}
			v := vs[0]
			if v.Err != nil || v.Domain != "herald.test" || lookups != 1 {
				t.Fatalf("verification = %+v", v)
			}
			for _, h := range []string{"from", "to", "subject", "date", "message-id", "list-unsubscribe", "list-unsubscribe-post", "mime-version", "content-type"} {
				found := false
				for _, k := range v.HeaderKeys {
					found = found || strings.EqualFold(k, h)
				}
				if !found {
					t.Errorf("%s is not signed (signed: %v)", h, v.HeaderKeys)
				}
			}
			// A tampered message must fail.
			bad := bytes.Replace(msg, []byte("Spring offers"), []byte("Spring 0ffers"), 1)
			vs, err = dkim.VerifyWithOptions(bytes.NewReader(bad), opts)
			if err != nil || len(vs) != 1 || vs[0].Err == nil {
				t.Errorf("tampered message verified: %v %+v", err, vs)
			}
		})
	}
}

func TestParseDKIMKey(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	pkcs1 := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)})
	if k, err := ParseDKIMKey(pkcs1); err != nil || !k.(*rsa.PrivateKey).Equal(rsaKey) {
		t.Errorf("PKCS#1: %v", err)
	}
	for _, bad := range []string{"", "not pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"} {
		if _, err := ParseDKIMKey([]byte(bad)); err == nil {
			t.Errorf("ParseDKIMKey(%q) accepted it", bad)
		}
	}
}

func benchEmail() *Email {
	e := sampleEmail()
	var html strings.Builder
	html.WriteString("<html><body>\n")
	for html.Len() < 2000 {
		html.WriteString("<p>Dear Zoë, discover our <a href=\"https://herald.test/t/c/abcdef0123\">spring offers</a> today.</p>\n")
	}
	html.WriteString("</body></html>\n")
	e.HTML = []byte(html.String())
	e.Text = []byte(strings.Repeat("Dear Zoë, discover our spring offers today.\n", 12))
	return e
}

// BenchmarkBuild builds a message with a ~2 KB HTML part and a text part,
// without DKIM, into a reused buffer.
func BenchmarkBuild(b *testing.B) {
	e := benchEmail()
	c := &Composer{Domain: "herald.test"}
	var buf []byte
	for b.Loop() {
		var err error
		buf, err = c.Build(buf[:0], e)
		if err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(int64(len(buf)))
}

// BenchmarkBuildDKIM adds DKIM signing with each key type.
func BenchmarkBuildDKIM(b *testing.B) {
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	for _, k := range []struct {
		name string
		key  *DKIM
	}{{"ed25519", &DKIM{Domain: "herald.test", Selector: "s", Key: edKey}}, {"rsa2048", &DKIM{Domain: "herald.test", Selector: "s", Key: rsaKey}}} {
		b.Run(k.name, func(b *testing.B) {
			e := benchEmail()
			c := &Composer{Domain: "herald.test", DKIM: k.key}
			var buf []byte
			for b.Loop() {
				var err error
				if buf, err = c.Build(buf[:0], e); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func TestQuotedPrintableRoundTrip(t *testing.T) {
	alphabet := []byte("ab =\t\r\n.é€x")
	rng := fixedRand()
	for n := range 500 {
		src := make([]byte, n%300)
		for i := range src {
			src[i] = alphabet[rng()%uint64(len(alphabet))]
		}
		enc := appendQP(nil, src)
		for _, line := range bytes.Split(enc, []byte("\r\n")) {
			if len(line) > 76 {
				t.Fatalf("line of %d octets in %q", len(line), enc)
			}
			if l := len(line); l > 0 && (line[l-1] == ' ' || line[l-1] == '\t') {
				t.Fatalf("trailing whitespace in %q", enc)
			}
			if bytes.HasPrefix(line, []byte(".")) {
				t.Fatalf("a line starts with a dot in %q", enc)
			}
		}
		dec, err := io.ReadAll(quotedprintable.NewReader(bytes.NewReader(enc)))
		if err != nil {
			t.Fatalf("decode %q: %v", enc, err)
		}
		// Line breaks come back as CRLF; a lone CR is kept as =0D.
		want := strings.ReplaceAll(strings.ReplaceAll(string(src), "\r\n", "\n"), "\n", "\r\n")
		if string(dec) != want {
			t.Fatalf("round trip of %q gave %q", src, dec)
		}
	}
}

// TestQuotedPrintableWordAtATime checks appendQP, which skips eight plain bytes at a time,
// against the same encoder testing one byte at a time, on long runs of plain text broken by
// every byte value that ends a run, at every offset within a word.
func TestQuotedPrintableWordAtATime(t *testing.T) {
	for c := range 256 {
		x := uint64(0x4141414141414141)
		for k := range 8 {
			y := x&^(0xff<<(8*k)) | uint64(c)<<(8*k)
			want := qpSafe[c] && c != '\t'
			if plain8(y) != want {
				t.Fatalf("plain8 with byte %#x at %d = %v, want %v", c, k, !want, want)
			}
		}
	}
	rng := fixedRand()
	breakers := []byte("=\t\r\n \x00\x1f\x7f\x80\xc3\xa9\xff~!")
	for n := range 3000 {
		src := make([]byte, 1+n%400)
		for i := range src {
			if rng()%13 == 0 {
				src[i] = breakers[rng()%uint64(len(breakers))]
			} else {
				src[i] = byte('a' + rng()%26)
			}
		}
		if got, want := appendQP(nil, src), appendQPWords(nil, src, false); !bytes.Equal(got, want) {
			t.Fatalf("appendQP(%q)\n = %q\nwant %q", src, got, want)
		}
	}
}

// partsOf parses msg and returns each part's transfer encoding and decoded body, with line
// breaks as LF.
func partsOf(t *testing.T, msg []byte) (encodings, bodies []string) {
	t.Helper()
	mr, err := mail.CreateReader(bytes.NewReader(msg))
	if err != nil {
		t.Fatal(err)
	}
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			return encodings, bodies
		}
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(p.Body)
		if err != nil {
			t.Fatal(err)
		}
		encodings = append(encodings, p.Header.Get("Content-Transfer-Encoding"))
		bodies = append(bodies, strings.ReplaceAll(string(body), "\r\n", "\n"))
	}
}

func TestBuildSendsASCIIBodiesAsTheyAre(t *testing.T) {
	long := strings.Repeat("x", max7bitLine)
	e := sampleEmail()
	e.Text = []byte("Hello Ann,\n\nOur offers = 20% off. \nA dot. Two..\r\n" + long + "\nBye\n")
	e.HTML = []byte("<html><body><p style=\"color:red\">Hello Ann,</p>\r\n<p>" + strings.Repeat("Spring offers. ", 40) + "</p>\t\n</body></html>")
	msg, err := (&Composer{Domain: "herald.test"}).Build(nil, e)
	if err != nil {
		t.Fatal(err)
	}
	encodings, bodies := partsOf(t, msg)
	if want := []string{"7bit", "7bit"}; !slices.Equal(encodings, want) {
		t.Errorf("encodings %q, want %q", encodings, want)
	}
	norm := func(b []byte) string { return strings.ReplaceAll(string(b), "\r\n", "\n") }
	if want := []string{norm(e.Text), norm(e.HTML)}; !slices.Equal(bodies, want) {
		t.Errorf("bodies\n%q\nwant\n%q", bodies, want)
	}
	// On the wire: the lines as written, each ended by CRLF, none cut or escaped.
	for _, want := range []string{"\r\nOur offers = 20% off. \r\nA dot. Two..\r\n" + long + "\r\nBye\r\n", "</p>\t\r\n</body></html>\r\n"} {
		if !bytes.Contains(msg, []byte(want)) {
			t.Errorf("message lacks %q", want)
		}
	}
	for i, line := range bytes.Split(msg, []byte("\r\n")) {
		if bytes.ContainsAny(line, "\r\n") || len(line) > 998 {
			t.Errorf("line %d: %d octets, bare CR or LF %v", i+1, len(line), bytes.ContainsAny(line, "\r\n"))
		}
	}

	// A part that is not ASCII is quoted-printable; the other stays as it is.
	e.HTML = []byte("<p>Hello Zoë</p>")
	msg, err = (&Composer{Domain: "herald.test"}).Build(nil, e)
	if err != nil {
		t.Fatal(err)
	}
	encodings, bodies = partsOf(t, msg)
	if want := []string{"7bit", "quoted-printable"}; !slices.Equal(encodings, want) {
		t.Errorf("encodings %q, want %q", encodings, want)
	}
	if len(bodies) != 2 || bodies[1] != "<p>Hello Zoë</p>" {
		t.Errorf("bodies %q", bodies)
	}
}

func TestBodiesThatCannotGoAsTheyAreAreQuotedPrintable(t *testing.T) {
	x := func(n int) string { return strings.Repeat("x", n) }
	for _, tc := range []struct {
		name, body string
		sevenBit   bool
	}{
		{"longest line", x(998), true},
		{"line too long", "a\n" + x(999) + "\nb", false},
		{"a line that starts with a dot", "a\n.b\nc", false},
		{"a dot alone on its line", "a\n.\nc", false},
		{"dots within lines", "a.\n b.c\n", true},
		{"CRLF and LF", "a\r\nb\nc\r\n", true},
		{"bare CR", "a\rb", false},
		{"CR at the end", "a\r", false},
		{"NUL", "a\x00b", false},
		{"DEL and controls", "a\x7f\x01\tb", true},
		{"UTF-8", "caf\xc3\xa9", false},
		{"boundary-like line", "a\n--=_0123456789abcdef\nb", false},
		{"boundary-like first line", "--=_x", false},
		{"boundary-like text inside a line", "a --=_x", true},
		{"other dashes", "--\n---=\n--=x", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := &Email{From: Address{Addr: "news@herald.test"}, To: Address{Addr: "ann@example.com"}, Date: testDate, Text: []byte(tc.body)}
			msg, err := (&Composer{Domain: "herald.test"}).Build(nil, e)
			if err != nil {
				t.Fatal(err)
			}
			encodings, bodies := partsOf(t, msg)
			want := "quoted-printable"
			if tc.sevenBit {
				want = "7bit"
			}
			if len(encodings) != 1 || encodings[0] != want {
				t.Fatalf("encodings %q, want %s", encodings, want)
			}
			// Both ways the body comes back (QP keeps a lone CR as =0D), with the line break
			// that ends a single-part message.
			if got, wantBody := bodies[0], strings.ReplaceAll(tc.body+"\r\n", "\r\n", "\n"); got != wantBody {
				t.Errorf("body %q, want %q", got, wantBody)
			}
			for i, line := range bytes.Split(msg, []byte("\r\n")) {
				if len(line) > 998 || bytes.HasPrefix(line, []byte(".")) {
					t.Errorf("line %d is %d octets, or starts with a dot: %.40q", i+1, len(line), line)
				}
			}
		})
	}
}

// TestASCII7WordAtATime checks ascii7, which tests eight bytes at a time, against a byte-wise
// test, for every byte value at every offset of a word and on random lines.
func TestASCII7WordAtATime(t *testing.T) {
	byteWise := func(line []byte) bool {
		for _, c := range line {
			if c >= 0x80 || c == 0 || c == '\r' {
				return false
			}
		}
		return true
	}
	for c := range 256 {
		for k := range 8 {
			line := []byte("AAAAAAAAAAAAAAAA")
			line[k] = byte(c)
			line[8+k] = byte(c)
			if got, want := ascii7(line), byteWise(line); got != want {
				t.Fatalf("ascii7 with byte %#x at %d = %v, want %v", c, k, got, want)
			}
		}
	}
	rng := fixedRand()
	odd := []byte("\x00\r\x0c\x0e\x7f\x80\xc3\xa9\xff\x01\x8d")
	for n := range 3000 {
		line := make([]byte, n%70)
		for i := range line {
			if rng()%17 == 0 {
				line[i] = odd[rng()%uint64(len(odd))]
			} else {
				line[i] = byte(' ' + rng()%95)
			}
		}
		if got, want := ascii7(line), byteWise(line); got != want {
			t.Fatalf("ascii7(%q) = %v, want %v", line, got, want)
		}
	}
}

// TestDateIsEachMessagesOwn: the Composer reuses the Date it formatted within the same second
// and zone; each message still carries its own date.
func TestDateIsEachMessagesOwn(t *testing.T) {
	c := &Composer{Domain: "herald.test"}
	paris := time.FixedZone("CET", 3600)
	base := time.Date(2026, 12, 3, 9, 30, 0, 100, time.UTC)
	for _, d := range []time.Time{base, base.Add(500 * time.Millisecond), base.Add(time.Second), base.Add(time.Second).In(paris),
		base.Add(time.Second), base.Add(-time.Hour), base} {
		e := &Email{From: Address{Addr: "news@herald.test"}, To: Address{Addr: "ann@example.com"}, Date: d, Text: []byte("hi")}
		msg, err := c.Build(nil, e)
		if err != nil {
			t.Fatal(err)
		}
		m, err := mail.CreateReader(bytes.NewReader(msg))
		if err != nil {
			t.Fatal(err)
		}
		if got, want := m.Header.Get("Date"), d.Format(time.RFC1123Z); got != want {
			t.Errorf("Date %q, want %q", got, want)
		}
	}
}
