package content

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

func TestCompileErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		c      Content
		part   string
		line   int
		column int // 0: not checked
		msgHas string
	}{
		{"unknown function", Content{Subject: "Hi {{env \"HOME\"}}"}, "subject", 1, 6, `no function "env"`},
		{"readFile", Content{Text: "a\n{{readFile \"/etc/passwd\"}}"}, "text", 2, 3, `no function "readFile"`},
		{"call refused", Content{Text: "{{call .attributes.f}}"}, "text", 1, 3, `"call" is not available`},
		{"js refused", Content{Text: "{{js .email}}"}, "text", 1, 3, `"js" is not available`},
		{"html refused", Content{HTML: "<p>{{html .email}}</p>"}, "HTML", 1, 6, `"html" is not available`},
		{"internal helper refused", Content{Text: "{{herald_range 0 .email}}"}, "text", 1, 3, `"herald_range" is not available`},
		{"define refused", Content{Text: `{{define "a"}}{{template "a"}}{{end}}x`}, "text", 0, 0, "{{define}} and {{block}} are not supported"},
		{"block refused", Content{Text: `{{block "a" .}}x{{end}}`}, "text", 0, 0, "not supported"},
		{"template of undefined", Content{HTML: `<p>{{template "footer.html"}}</p>`}, "HTML", 1, 4, `{{template "footer.html"}} is not supported`},
		{"unclosed action", Content{HTML: "<p>\n<b>{{.email</b>"}, "HTML", 2, 0, "is a }} missing"},
		{"missing end", Content{HTML: "<p>{{if .email}}x</p>"}, "HTML", 0, 0, "{{end}} is missing"},
		{"stray end", Content{Text: "x\n{{end}}"}, "text", 2, 0, "closes nothing"},
		{"misspelt root field", Content{Subject: "Hi {{.first_name}}"}, "subject", 1, 6, "{{.attributes.first_name}}"},
		{"misspelt root via $", Content{Text: "{{range .attributes.x}}{{$.frist}}{{end}}"}, "text", 1, 0, `there is no ".frist"`},
		{"range literal too big", Content{Text: "{{range 1000000000}}{{end}}"}, "text", 1, 1, "repeats too many times"},
		{"unclosed attribute", Content{HTML: `<a href="{{.email}}>x</a>`}, "HTML", 0, 0, "ends inside a tag"},
		{"branches differ", Content{HTML: `<p>{{if .email}}<a href="{{end}}x">y</a></p>`}, "HTML", 0, 0, "branches"},
		{"source too big", Content{Text: strings.Repeat("x", 1<<20)}, "text", 0, 0, "over the"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.c.FromAddress = "a@b.co"
			_, err := Compile(tc.c, Options{})
			if err == nil {
				t.Fatal("Compile succeeded, want an error")
			}
			var ce *CompileError
			if !errors.As(err, &ce) {
				t.Fatalf("error %v is not a *CompileError", err)
			}
			if ce.Part != tc.part || (tc.line > 0 && ce.Line != tc.line) || (tc.column > 0 && ce.Column != tc.column) {
				t.Errorf("error at %s line %d column %d, want %s line %d column %d: %v", ce.Part, ce.Line, ce.Column, tc.part, tc.line, tc.column, err)
			}
			if !strings.Contains(err.Error(), tc.msgHas) {
				t.Errorf("error %q does not say %q", err, tc.msgHas)
			}
		})
	}
}

// renderTimed renders text with attrs and fails the test when the render is slow: a limit that
// only triggers after seconds is no limit.
func renderTimed(t *testing.T, c Content, attrs map[string]any) error {
	t.Helper()
	c.FromAddress = "a@b.co"
	tpl, err := Compile(c, Options{})
	if err != nil {
		t.Fatalf("compile: %v", err)
	}
	start := time.Now()
	_, err = tpl.NewRenderer().Render(&Recipient{Email: "x@example.com", Attributes: attrs}, RenderOptions{})
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("render took %v", d)
	}
	return err
}

func TestRenderLimits(t *testing.T) {
	big := make([]any, 1000)
	for i := range big {
		big[i] = i
	}
	for _, tc := range []struct {
		name  string
		c     Content
		attrs map[string]any
		want  error
	}{
		{"huge output", Content{Text: "{{range 200}}{{$.attributes.s}}{{end}}"}, map[string]any{"s": strings.Repeat("x", 10<<10)}, ErrTooLarge},
		{"huge HTML output", Content{HTML: "{{range 200}}<p>{{$.attributes.s}}</p>{{end}}"}, map[string]any{"s": strings.Repeat("x", 10<<10)}, ErrTooLarge},
		{"range over a big data number", Content{Text: "{{range .attributes.n}}{{end}}"}, map[string]any{"n": int64(1_000_000_000)}, ErrTooMuchWork},
		{"range over a big data number in HTML", Content{HTML: "<p>{{range .attributes.n}}{{end}}</p>"}, map[string]any{"n": int64(1_000_000_000)}, ErrTooMuchWork},
		{"nested ranges that write nothing", Content{Text: "{{range .attributes.l}}{{range $.attributes.l}}{{range $.attributes.l}}{{end}}{{end}}{{end}}"}, map[string]any{"l": big}, ErrTooMuchWork},
		{"nested literal ranges", Content{Text: "{{range 1000}}{{range 1000}}{{range 1000}}{{end}}{{end}}{{end}}"}, nil, ErrTooMuchWork},
		{"value doubling", Content{Text: `{{$x := "ab"}}{{range 60}}{{$x = print $x $x}}{{end}}{{len $x}}`}, nil, ErrTooLarge},
		{"printf %q growth", Content{Text: `{{$x := "\\"}}{{range 60}}{{$x = printf "%q" $x}}{{end}}`}, nil, ErrTooLarge},
		{"printf width", Content{Text: `{{printf "%0999999999d" 1}}`}, nil, ErrTooLarge},
		{"printf repeated argument", Content{Text: `{{$x := printf "%0900d" 1}}{{range 100}}{{$x = printf "%[1]s%[1]s%[1]s%[1]s" $x}}{{end}}`}, nil, ErrTooLarge},
		{"upper in a loop", Content{Text: `{{$x := printf "%0900d" 1}}{{range 1000}}{{range 1000}}{{$y := upper $x}}{{end}}{{end}}`}, nil, ErrTooMuchWork},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.c.Subject == "" {
				tc.c.Subject = "s"
			}
			err := renderTimed(t, tc.c, tc.attrs)
			if !errors.Is(err, tc.want) {
				t.Fatalf("render error = %v, want %v", err, tc.want)
			}
			var re *RenderError
			if !errors.As(err, &re) {
				t.Fatalf("error %v is not a *RenderError", err)
			}
		})
	}
}

func TestLoopErrorSaysWhere(t *testing.T) {
	err := renderTimed(t, Content{Subject: "s", Text: "a\nb {{range .attributes.n}}x{{end}}"}, map[string]any{"n": int64(1e9)})
	want := "text, line 2, column 3: the loop at line 2, column 3 of the text runs 1000000000 times"
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("error = %v, want it to start %q", err, want)
	}
}

func TestLimitsAllowRealisticLoops(t *testing.T) {
	items := make([]any, 500)
	for i := range items {
		items[i] = map[string]any{"name": "item", "price": int64(i)}
	}
	err := renderTimed(t, Content{Subject: "s", HTML: `<table>{{range .attributes.items}}<tr><td>{{.name | upper}}</td><td>{{if gt .price 10}}{{.price}}{{else}}cheap{{end}}</td></tr>{{end}}</table>`},
		map[string]any{"items": items})
	if err != nil {
		t.Errorf("a 500-row table failed: %v", err)
	}
}

func TestHTMLToText(t *testing.T) {
	for _, tc := range []struct {
		name, html, want string
	}{
		{"paragraphs", "<p>One\n   two</p><p>Three</p>", "One two\n\nThree\n"},
		{"breaks", "a<br>b<br/>c", "a\nb\nc\n"},
		{"entities", "<p>Fish &amp; chips &lt;3 &eacute;t&eacute;&nbsp;! &#8364; &#x41;</p>", "Fish & chips <3 été ! € A\n"},
		{"lists", "<ul><li>a</li><li>b</li></ul><ol><li>x</li><li>y</li></ol>", "- a\n- b\n\n1. x\n2. y\n"},
		{"link", `<p>See <a href="https://a.com/x?a=1&amp;b=2">the offer</a>.</p>`, "See the offer (https://a.com/x?a=1&b=2).\n"},
		{"link showing its url", `<a href="https://a.com/">https://a.com/</a>`, "https://a.com/\n"},
		{"mailto", `<a href="mailto:help@a.com">help@a.com</a>`, "help@a.com\n"},
		{"anchor", `<a href="#top">Top</a>`, "Top\n"},
		{"adjacent links", `<a href="https://a.com/">A</a><a href="https://b.com/">B</a>`, "A (https://a.com/) B (https://b.com/)\n"},
		{"script style head", "<head><title>T</title><style>p{}</style></head><script>x()</script><p>body</p>", "body\n"},
		{"comments", "<!-- hidden --><p>shown</p>", "shown\n"},
		{"image alt", `<img src="x.png" alt="Logo"> text`, "Logo text\n"},
		{"table cells", "<table><tr><td>a</td><td>b</td></tr><tr><td>c</td></tr></table>", "a b\nc\n"},
		{"wrap", "<p>" + strings.Repeat("word ", 20) + "</p>", strings.TrimSpace(strings.Repeat("word ", 15)) + "\n" + strings.TrimSpace(strings.Repeat("word ", 5)) + "\n"},
		{"empty", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c textConverter
			var buf bytes.Buffer
			c.convert(&buf, []byte(tc.html))
			if buf.String() != tc.want {
				t.Errorf("got  %q\nwant %q", buf.String(), tc.want)
			}
		})
	}
}

func TestHasUnsubscribeLink(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    Content
		want bool
	}{
		{"helper in HTML", Content{HTML: `<a href="{{.unsubscribe_url}}">Leave</a>`}, true},
		{"helper in text", Content{HTML: `<p>x</p>`, Text: "Stop: {{.unsubscribe_url}}"}, true},
		{"link text", Content{HTML: `<a href="https://a.com/prefs">Unsubscribe here</a>`}, true},
		{"link URL", Content{HTML: `<a href="https://a.com/opt-out?e={{.email}}">here</a>`}, true},
		{"none", Content{HTML: `<a href="https://a.com/">Shop</a> unsubscribe by mail`}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.c.FromAddress = "a@b.co"
			tpl, err := Compile(tc.c, Options{})
			if err != nil {
				t.Fatal(err)
			}
			if got := tpl.HasUnsubscribeLink(); got != tc.want {
				t.Errorf("HasUnsubscribeLink() = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestMalformedURLs(t *testing.T) {
	html := `<a href="https://ok.com/{{.email}}">a</a>
<a href="http//missing-colon.com">b</a>
<a href="https://{{.attributes.sub}}.example.com/">c</a>
<a href="{{.attributes.url}}">d</a>
<a href="www.example.com">e</a>
<a href="mailto:">f</a>
<a href="mailto:x@y.z?subject=Hi">g</a>
<a href="https://exa mple.com/">h</a>
<a href="">i</a>
<a href="#top">j</a>
<a href="tel:+33 1 23 45 67 89">k</a>
<a href="{{.unsubscribe_url}}">l</a>`
	tpl, err := Compile(Content{FromAddress: "a@b.co", HTML: html}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(tpl.MalformedURLs(), " | ")
	want := "http//missing-colon.com | www.example.com | mailto: | https://exa mple.com/ |  | #top"
	if got != want {
		t.Errorf("MalformedURLs() = %q\nwant              %q", got, want)
	}
	if s := tpl.Sizes(); s.HTML != len(html) || s.Subject != 0 {
		t.Errorf("Sizes() = %+v", s)
	}
}

func TestConditionalCommentsKept(t *testing.T) {
	html := "<!--[if mso]><v:roundrect href=\"https://a.com/\"><![endif]-->\n<!-- plain -->\n<!--[if mso]>{{.email}}<![endif]--><p>x</p>"
	tpl, err := Compile(Content{FromAddress: "a@b.co", HTML: html}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := Preview(tpl, &Recipient{Email: "x@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	// The first is kept; a plain comment and one holding an action are dropped by html/template.
	want := "<!--[if mso]><v:roundrect href=\"https://a.com/\"><![endif]-->\n\n<p>x</p>"
	if string(m.HTML) != want {
		t.Errorf("got  %q\nwant %q", m.HTML, want)
	}
}

// TestTextMemoMatchesConversion: a converter that remembers its runs (textMemo) writes, for
// every document, byte for byte what a converter that converts every run writes. The
// documents repeat long runs in every state a run can start in (mid-line, after a link, after
// breaks, in a list item, first in the document) and with entities, non-ASCII text and runs
// of spaces, and there are enough of them for the memo to start over several times.
func TestTextMemoMatchesConversion(t *testing.T) {
	runs := []string{
		"Spring is here and so are the new collections: light jackets, linen shirts and shoes for long walks.",
		"  Members get early access\tand free returns for thirty days,   whatever the size of the order.  ",
		"Fish &amp; chips &lt;3 for everyone &eacute;t&eacute;&nbsp;! &#8364; 12 and more, all summer long at the shop.",
		"Été à Paris : des robes légères, des chemises en lin et des chaussures pour marcher longtemps — déjà là.",
		"averyveryveryverylongwordthatcannotbewrappedanywhereatallbecauseithasnospaceinsideitwhatsoever and a tail",
		",and a run that starts with punctuation right after a link, which must not get a space before it....",
		"\n\n   \n  leading and trailing white space around a short sentence that is long enough to remember   \n",
		"\n" + strings.Repeat(" ", 60) + "\n\t\t",
	}
	// Mostly block tags, as in real messages, which is where runs repeat in the same state.
	tags := []string{"<p>", "</p>", "<br>", "<li>", "<h1>", "</h1>", "<div>", "<p>", "</p>", "<br>", "<li>", "<h1>", "</h1>", "<div>",
		"<ul>", "</ul>", "<ol>", "</ol>", "</div>", `<a href="https://shop.example/x?a=1&amp;b=2">`, "</a>",
		`<img src="x.png" alt="Logo of the shop">`, "<td>", "<b>", "</b>", " ", "word"}
	rng := rand.New(rand.NewPCG(1, 2))
	var memo, plain textConverter
	plain.memo.off = true
	var got, want bytes.Buffer
	for doc := range 3000 {
		var html strings.Builder
		for range 1 + rng.IntN(30) {
			html.WriteString(tags[rng.IntN(len(tags))])
			if rng.IntN(3) > 0 {
				html.WriteString(runs[rng.IntN(len(runs))])
			}
		}
		got.Reset()
		want.Reset()
		memo.convert(&got, []byte(html.String()))
		plain.convert(&want, []byte(html.String()))
		if got.String() != want.String() {
			t.Fatalf("document %d %q:\nmemo  %q\nplain %q", doc, html.String(), got.String(), want.String())
		}
	}
	if memo.memo.hits < 10000 || plain.memo.hits != 0 {
		t.Fatalf("the memo replayed %d runs (and %d with it off): the test does not exercise it", memo.memo.hits, plain.memo.hits)
	}
}
