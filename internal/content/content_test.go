package content

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

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
		t.Fatalf("read golden (run with -update to create it): %v", err)
	}
	if string(want) != string(got) {
		t.Errorf("%s differs from golden:\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

func newsletter(t testing.TB) Content {
	t.Helper()
	html, err := os.ReadFile("testdata/newsletter.html")
	if err != nil {
		t.Fatal(err)
	}
	return Content{
		FromName:    "Herald Shop",
		FromAddress: "news@shop.example.com",
		ReplyTo:     "help@example.com",
		Subject:     "{{.attributes.first_name | default \"Hello\"}}, spring is here in {{.attributes.city}}",
		HTML:        string(html),
	}
}

func annie() *Recipient {
	attrs, err := DecodeAttributes([]byte(`{"first_name":"Annie","city":"Lyon & Co","vip":true,
		"offer_ends":"2025-04-30","picks":[{"sku":"A1","name":"Linen shirt","price":49},
		{"sku":"B 2","name":"Straw hat <new>","price":19.5},{"sku":"C3","name":"Espadrilles","price":1500000}]}`))
	if err != nil {
		panic(err)
	}
	return &Recipient{
		ID: 42, Email: "annie+news@example.org", Attributes: attrs,
		UnsubscribeURL: "https://herald.example.com/t/u/TOKU", MirrorURL: "https://herald.example.com/t/m/TOKM",
	}
}

func trackingOptions(tpl *Template) RenderOptions {
	return RenderOptions{
		LinkRewriter: func(i int, u string) string {
			switch tpl.Links()[i].Kind {
			case LinkHTTP:
				return fmt.Sprintf("https://herald.example.com/t/c/TOK%d", i)
			}
			return u
		},
		PixelURL: "https://herald.example.com/t/o/TOKO",
	}
}

func TestRenderGolden(t *testing.T) {
	tpl, err := Compile(newsletter(t), Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		opts RenderOptions
	}{
		{"plain", RenderOptions{}},
		{"tracked", trackingOptions(tpl)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := tpl.NewRenderer().Render(annie(), tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			if want := "Annie, spring is here in Lyon & Co"; m.Subject != want {
				t.Errorf("subject = %q, want %q", m.Subject, want)
			}
			if m.FromName != "Herald Shop" || m.FromAddress != "news@shop.example.com" || m.ReplyTo != "help@example.com" {
				t.Errorf("sender = %q %q %q", m.FromName, m.FromAddress, m.ReplyTo)
			}
			golden(t, "newsletter."+tc.name+".html", m.HTML)
			golden(t, "newsletter."+tc.name+".txt", m.Text)
		})
	}
}

func TestLinks(t *testing.T) {
	tpl, err := Compile(newsletter(t), Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := []Link{
		{0, "{{.mirror_url}}", "View this email in your browser", LinkMirror},
		{1, "https://shop.example.com/p/{{.sku}}?utm_source=herald&amp;utm_medium=email", "{{.name}}", LinkHTTP},
		{2, "https://shop.example.com/spring?c={{.attributes.city | urlquery}}&amp;e={{.email}}", "Shop the spring collection", LinkHTTP},
		{3, "https://shop.example.com/vip", "vip.example.com", LinkHTTP},
		{4, "mailto:help@example.com", "help@example.com", LinkMailto},
		{5, "{{.unsubscribe_url}}", "Unsubscribe", LinkUnsubscribe},
		{6, "https://example.com/privacy", "Privacy", LinkHTTP},
	}
	if got := tpl.Links(); !slices.Equal(got, want) {
		t.Errorf("Links() =\n%v\nwant\n%v", got, want)
	}

	// The rewriter sees each rendered URL, unescaped, once per repetition inside a range.
	var seen []string
	opts := RenderOptions{LinkRewriter: func(i int, u string) string {
		seen = append(seen, fmt.Sprintf("%d %s", i, u))
		return u
	}}
	if _, err := tpl.NewRenderer().Render(annie(), opts); err != nil {
		t.Fatal(err)
	}
	wantSeen := []string{
		"0 https://herald.example.com/t/m/TOKM",
		"1 https://shop.example.com/p/A1?utm_source=herald&utm_medium=email",
		"1 https://shop.example.com/p/B%202?utm_source=herald&utm_medium=email",
		"1 https://shop.example.com/p/C3?utm_source=herald&utm_medium=email",
		"2 https://shop.example.com/spring?c=Lyon+%26+Co&e=annie%2bnews%40example.org",
		"3 https://shop.example.com/vip",
		"4 mailto:help@example.com",
		"5 https://herald.example.com/t/u/TOKU",
		"6 https://example.com/privacy",
	}
	if !slices.Equal(seen, wantSeen) {
		t.Errorf("rewriter saw\n%s\nwant\n%s", strings.Join(seen, "\n"), strings.Join(wantSeen, "\n"))
	}
}

func TestLinkForms(t *testing.T) {
	for _, tc := range []struct {
		name, html, want string
	}{
		{"unquoted", `<a href={{.email}}>x</a>`, `<a href="R0[annie+news@example.org]">x</a>`},
		{"single quoted", `<a title='t' href='https://a.com/?q={{.attributes.city}}'>x</a>`, `<a title='t' href='R0[https://a.com/?q=Lyon%20%26%20Co]'>x</a>`},
		{"upper case", `<A HREF="https://a.com/">x</A>`, `<A HREF="R0[https://a.com/]">x</A>`},
		{"no href", `<a name="top">x</a><a href="https://b.com/">y</a>`, `<a name="top">x</a><a href="R0[https://b.com/]">y</a>`},
		{"conditional href", `<a {{if .attributes.vip}}href="https://v.com/"{{end}}>x</a>`, `<a href="R0[https://v.com/]">x</a>`},
		{"escaped result", `<a href="https://a.com/">x</a>`, `<a href="R0[https://a.com/]">x</a>`},
		{"in script ignored", `<script>var a = "<a href='x'>";</script><a href="https://a.com/">x</a>`, `<script>var a = "<a href='x'>";</script><a href="R0[https://a.com/]">x</a>`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tpl, err := Compile(Content{FromAddress: "a@b.co", HTML: tc.html}, Options{})
			if err != nil {
				t.Fatal(err)
			}
			m, err := tpl.NewRenderer().Render(annie(), RenderOptions{LinkRewriter: func(i int, u string) string {
				return fmt.Sprintf("R%d[%s]", i, u)
			}})
			if err != nil {
				t.Fatal(err)
			}
			if string(m.HTML) != tc.want {
				t.Errorf("got  %s\nwant %s", m.HTML, tc.want)
			}
		})
	}
}

func TestPixel(t *testing.T) {
	for _, tc := range []struct{ html, want string }{
		{`<body><p>x</p></BODY>`, `<body><p>x</p><img src="https://h/o?a=1&amp;b=2" width="1" height="1" alt="" style="display:block;width:1px;height:1px;border:0"></BODY>`},
		{`<p>x</p>`, `<p>x</p><img src="https://h/o?a=1&amp;b=2" width="1" height="1" alt="" style="display:block;width:1px;height:1px;border:0">`},
	} {
		tpl, err := Compile(Content{FromAddress: "a@b.co", HTML: tc.html}, Options{})
		if err != nil {
			t.Fatal(err)
		}
		m, err := tpl.NewRenderer().Render(annie(), RenderOptions{PixelURL: "https://h/o?a=1&b=2"})
		if err != nil {
			t.Fatal(err)
		}
		if string(m.HTML) != tc.want {
			t.Errorf("got  %s\nwant %s", m.HTML, tc.want)
		}
	}
}

func TestPersonalisation(t *testing.T) {
	created := time.Date(2024, 3, 9, 14, 5, 0, 0, time.UTC)
	for _, tc := range []struct {
		name, tmpl, want string
	}{
		{"email", "{{.email}}", "annie+news@example.org"},
		{"attribute", "{{.attributes.first_name}}", "Annie"},
		{"missing attribute is empty", "[{{.attributes.nope}}]", "[]"},
		{"missing with print", "[{{print .attributes.nope}}]", "[]"},
		{"default", `{{.attributes.nope | default "friend"}}`, "friend"},
		{"default keeps value", `{{default "friend" .attributes.first_name}}`, "Annie"},
		{"upper lower", "{{upper .attributes.first_name}} {{lower .attributes.first_name}}", "ANNIE annie"},
		{"title", `{{title "jean-pierre o'neil"}}`, "Jean-Pierre O'neil"},
		{"truncate", `{{truncate 8 "The quick brown fox"}}`, "The qui…"},
		{"truncate short", `{{.attributes.first_name | truncate 10}}`, "Annie"},
		{"date go layout", `{{date "2006-01-02" .created_at}}`, "2024-03-09"},
		{"date friendly", `{{date "dddd D MMMM YYYY 'at' HH:mm" .created_at}}`, "Saturday 9 March 2024 at 14:05"},
		{"date from text", `{{date "DD/MM/YY" .attributes.offer_ends}}`, "30/04/25"},
		{"date missing", `[{{date "DD/MM/YY" .attributes.nope}}]`, "[]"},
		{"whole number", "{{index .attributes.picks 2 | printf \"%v\"}} {{(index .attributes.picks 2).price}}", "map[name:Espadrilles price:1500000 sku:C3] 1500000"},
		{"range with index", "{{range $i, $p := .attributes.picks}}{{$i}}:{{$p.sku}} {{end}}", "0:A1 1:B 2 2:C3 "},
		{"range int literal", "{{range 3}}x{{end}}", "xxx"},
		{"if eq", `{{if eq .attributes.city "Lyon & Co"}}yes{{end}}`, "yes"},
		{"with", "{{with .attributes}}{{.first_name}}{{end}}", "Annie"},
		{"dollar", "{{range .attributes.picks}}{{$.email}}|{{end}}", "annie+news@example.org|annie+news@example.org|annie+news@example.org|"},
		{"urlquery", "{{urlquery .attributes.city}}", "Lyon+%26+Co"},
		{"unsubscribe", "{{.unsubscribe_url}}", "https://herald.example.com/t/u/TOKU"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tpl, err := Compile(Content{FromAddress: "a@b.co", Text: tc.tmpl, Subject: "s"}, Options{})
			if err != nil {
				t.Fatal(err)
			}
			rc := annie()
			rc.CreatedAt = created
			m, err := tpl.NewRenderer().Render(rc, RenderOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if string(m.Text) != tc.want {
				t.Errorf("got %q, want %q", m.Text, tc.want)
			}
		})
	}
}

func TestSubjectIsOneLine(t *testing.T) {
	tpl, err := Compile(Content{FromAddress: "a@b.co", Subject: "Hi {{.attributes.first_name}}", Text: "x"}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	rc := annie()
	rc.Attributes["first_name"] = "Eve\r\nBcc: victim@example.com"
	m, err := tpl.NewRenderer().Render(rc, RenderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if strings.ContainsAny(m.Subject, "\r\n") {
		t.Errorf("subject %q holds a line break", m.Subject)
	}
}

func TestHTMLEscapes(t *testing.T) {
	tpl, err := Compile(Content{FromAddress: "a@b.co", HTML: `<p title="{{.attributes.x}}">{{.attributes.x}}</p><a href="{{.attributes.u}}">u</a>`}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	rc := annie()
	rc.Attributes["x"] = `<script>"&'`
	rc.Attributes["u"] = "javascript:alert(1)"
	m, err := tpl.NewRenderer().Render(rc, RenderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := `<p title="&lt;script&gt;&#34;&amp;&#39;">&lt;script&gt;&#34;&amp;&#39;</p><a href="#ZgotmplZ">u</a>`
	if string(m.HTML) != want {
		t.Errorf("got  %s\nwant %s", m.HTML, want)
	}
}

func TestConcurrentRenderers(t *testing.T) {
	tpl, err := Compile(newsletter(t), Options{})
	if err != nil {
		t.Fatal(err)
	}
	want, err := Preview(tpl, annie())
	if err != nil {
		t.Fatal(err)
	}
	wantHTML := string(want.HTML)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			r := tpl.NewRenderer()
			for range 50 {
				m, err := r.Render(annie(), RenderOptions{})
				if err != nil {
					t.Error(err)
					return
				}
				if string(m.HTML) != wantHTML {
					t.Errorf("goroutine %d: HTML differs", g)
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestValidate(t *testing.T) {
	ok := Content{FromName: "Shop", FromAddress: "news@shop.example.com", Subject: "Hi", HTML: "<p>x</p>"}
	for _, tc := range []struct {
		name   string
		edit   func(*Content)
		errHas string // "" for valid
	}{
		{"valid", func(c *Content) {}, ""},
		{"empty subject is not structural", func(c *Content) { c.Subject = "" }, ""},
		{"text only", func(c *Content) { c.HTML, c.Text = "", "x" }, ""},
		{"missing from", func(c *Content) { c.FromAddress = "" }, "sender address (from_address) is missing"},
		{"bad from", func(c *Content) { c.FromAddress = "news@" }, "is not a valid email address"},
		{"from with name", func(c *Content) { c.FromAddress = "Shop <news@shop.example.com>" }, "without a name"},
		{"from without dot domain", func(c *Content) { c.FromAddress = "news@localhost" }, "full domain name"},
		{"bad reply-to", func(c *Content) { c.ReplyTo = "help" }, "reply-to address"},
		{"name with newline", func(c *Content) { c.FromName = "Shop\r\nBcc: x@y.z" }, "one line"},
		{"no body", func(c *Content) { c.HTML = " " }, "no body"},
		{"nul", func(c *Content) { c.HTML = "a\x00b" }, "NUL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.edit(&c)
			err := c.Validate()
			switch {
			case tc.errHas == "" && err != nil:
				t.Errorf("Validate() = %v, want nil", err)
			case tc.errHas != "" && (err == nil || !strings.Contains(err.Error(), tc.errHas) || !errors.Is(err, ErrInvalid)):
				t.Errorf("Validate() = %v, want an ErrInvalid containing %q", err, tc.errHas)
			}
		})
	}
}

func TestPreview(t *testing.T) {
	tpl, err := Compile(newsletter(t), Options{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := Preview(tpl, &Recipient{Email: "x@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(m.HTML), "Hello friend,") || !strings.Contains(string(m.Text), "Hello friend,") {
		t.Errorf("preview lacks the default greeting:\n%s", m.Text)
	}
	if m.Subject != "Hello, spring is here in" {
		t.Errorf("subject = %q", m.Subject)
	}
}

func TestUses(t *testing.T) {
	for _, c := range []struct {
		subject, html string
		mirror, phone bool
	}{
		{"Hi", `<p>{{.email}}</p>`, false, false},
		{"Hi {{.phone}}", `<a href="{{.mirror_url}}">View</a>`, true, true},
		{"Hi", `<p>{{.}}</p>`, true, true},
		{"Hi", `<p>{{with .attributes}}{{$.phone}}{{end}}</p>`, false, true},
		{"Hi", `<p>{{with .attributes}}{{$}}{{end}}</p>`, true, true},
		{"Hi", `{{range $k, $v := .}}{{$k}}{{end}}`, true, true},
		{"Hi", `{{range .attributes.picks}}{{.}} {{.mirror_url}}{{end}}`, false, false},
	} {
		tpl, err := Compile(Content{FromAddress: "a@b.example", Subject: c.subject, HTML: c.html}, Options{})
		if err != nil {
			t.Fatalf("%s: %v", c.html, err)
		}
		if tpl.Uses("mirror_url") != c.mirror || tpl.Uses("phone") != c.phone {
			t.Errorf("%q %q: Uses mirror_url %v, phone %v; want %v, %v", c.subject, c.html,
				tpl.Uses("mirror_url"), tpl.Uses("phone"), c.mirror, c.phone)
		}
	}
}
