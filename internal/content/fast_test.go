package content

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
	"time"
)

// planContent has an action in every context a plan has escapers for, conditionals, $ and
// nested fields, in all three parts.
var planContent = Content{
	FromName: "Shop", FromAddress: "news@shop.example",
	Subject: `Hi {{.attributes.v}}{{if .attributes.b}}!{{end}} {{.attributes.obj.k}} {{.attributes.v | default "you & co"}}`,
	HTML: `<html><head><title>{{.attributes.v}}</title></head><body>
<p title="{{.attributes.v}}">Hello {{.attributes.v}} ({{.email}}, {{$.attributes.v}}, #{{.id}}, {{.created_at}})</p>
{{if .attributes.b}}<p>B {{.attributes.v}}</p>{{else if .attributes.v}}<p>V</p>{{else}}<p>none</p>{{end}}
<a href="{{.attributes.v}}">whole</a> <a href="https://shop.example/?q={{.attributes.v}}&amp;x=1">query</a>
<a href="https://shop.example/{{.attributes.v}}/p">path</a> <a href="{{.unsubscribe_url}}">Unsubscribe</a>
<p>{{.attributes.obj.k}} {{.attributes.missing}}</p>
<p title="{{default "<you>" .attributes.v}}">{{.attributes.v | default "friend & co"}} {{default "x" .attributes.missing}}
{{.attributes.obj.k | default ""}}</p> <a href="https://shop.example/{{.attributes.v | default "a b"}}">d</a></body></html>`,
	Text: `Hello {{.attributes.v}} {{if .attributes.b}}B{{else}}-{{end}} {{.attributes.obj.k}} {{.attributes.missing}}` +
		` {{.attributes.v | default "friend"}} {{default "<x>" .attributes.missing}}`,
}

// planValues are the values of attributes.v (and b, obj) the plans must print as the
// templates do, including those a plan gives up on.
var planValues = []any{
	"", " \t\n", "plain", `<b class="x">Q'&+</b>`, "javascript:alert(1)", "JavaScript:x", "HTTP://x/y z?a=b&c=%41%zz%4",
	"mailto:a@b.example", "a/b:c", "é ü 中", "\x00nul", "\xff\xfe bad UTF-8", "%", "%4", " spaces\nnewline\t",
	"a?b#c d", "[x]!*'();:@&=+$,/?#", int64(1500000), int64(-3), float64(1.5), float64(1e21), float64(0), true, false, nil,
	map[string]any{"k": "v&"}, map[string]any{}, []any{int64(1), "a"}, []any{}, time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
	struct{ A int }{1}, int(7),
}

func TestPlansRenderAsTheTemplatesDo(t *testing.T) {
	tpl, err := Compile(planContent, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if tpl.subjectPlan == nil || tpl.htmlPlan == nil || tpl.textPlan == nil {
		t.Fatalf("plans: subject %v, HTML %v, text %v; want all three", tpl.subjectPlan != nil, tpl.htmlPlan != nil, tpl.textPlan != nil)
	}
	derived := planContent
	derived.Text = ""
	tplDerived, err := Compile(derived, Options{})
	if err != nil {
		t.Fatal(err)
	}
	opts := RenderOptions{LinkRewriter: func(i int, u string) string { return fmt.Sprintf("%s#t%d", u, i) }, PixelURL: "https://h.example/o"}
	planned := 0
	for _, tp := range []*Template{tpl, tplDerived} {
		fast, slow := tp.NewRenderer(), tp.NewRenderer()
		slow.noPlans = true
		for i, v := range planValues {
			for _, obj := range []any{map[string]any{"k": v}, v, nil} {
				rc := &Recipient{ID: 42, Email: "a+b@example.org", CreatedAt: time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC),
					UnsubscribeURL: "https://h.example/u?x=1&y=2",
					Attributes:     map[string]any{"v": v, "b": planValues[(i+3)%len(planValues)], "obj": obj}}
				fm, ferr := fast.Render(rc, opts)
				var got Message
				if fm != nil {
					got = *fm
					got.HTML, got.Text = bytes.Clone(fm.HTML), bytes.Clone(fm.Text)
				}
				sm, serr := slow.Render(rc, opts)
				if (ferr == nil) != (serr == nil) || ferr != nil && ferr.Error() != serr.Error() {
					t.Fatalf("value %#v, obj %#v: plan error %v, template error %v", v, obj, ferr, serr)
				}
				if ferr != nil {
					continue
				}
				if got.Subject != sm.Subject || !bytes.Equal(got.HTML, sm.HTML) || !bytes.Equal(got.Text, sm.Text) {
					t.Fatalf("value %#v, obj %#v:\nplan subject %q\ntmpl subject %q\nplan HTML %s\ntmpl HTML %s\nplan text %q\ntmpl text %q",
						v, obj, got.Subject, sm.Subject, got.HTML, sm.HTML, got.Text, sm.Text)
				}
				if fe, se := fast.Check(rc), slow.Check(rc); (fe == nil) != (se == nil) {
					t.Fatalf("value %#v: Check with plans %v, without %v", v, fe, se)
				}
				var b, scratch bytes.Buffer
				if tp.htmlPlan.exec(&b, fast.fill(rc), &scratch) {
					planned++
				}
			}
		}
	}
	// The plans must not give up on everything: strings, numbers, booleans and nil are theirs.
	if planned < len(planValues) {
		t.Errorf("the HTML plan rendered %d of %d recipients; it gives up too often", planned, 2*3*len(planValues))
	}
}

func TestPlansLeaveOtherTemplatesToTheirTemplate(t *testing.T) {
	for _, html := range []string{
		`<p>{{.attributes.v | upper}}</p>`,
		`{{range .attributes.list}}<p>{{.}}</p>{{end}}`,
		`{{with .attributes.obj}}<p>{{.k}}</p>{{end}}`,
		`{{$x := .email}}<p>{{$x}}</p>`,
		`<p onclick="f({{.attributes.v}})">x</p>`,
		`<p style="color: {{.attributes.v}}">x</p>`,
		`<a href={{.attributes.v}}>unquoted</a>`,
		`<p>{{"literal"}}</p>`,
		`<p>{{.attributes.v | default .email}}</p>`,
		`<p>{{default .email .attributes.v}}</p>`,
		`<p>{{.attributes.v | default "a" | upper}}</p>`,
	} {
		tpl, err := Compile(Content{FromAddress: "a@b.example", Subject: "s", HTML: html}, Options{})
		if err != nil {
			t.Fatalf("%s: %v", html, err)
		}
		if tpl.htmlPlan != nil {
			t.Errorf("%s: has a plan; a plan does not cover it", html)
		}
	}
}

func TestPlanRespectsThePartLimit(t *testing.T) {
	long := &Recipient{Attributes: map[string]any{"v": string(bytes.Repeat([]byte("x"), 200))}}
	for _, c := range []Content{
		{FromAddress: "a@b.example", Subject: "s", Text: `{{.attributes.v}}`},
		{FromAddress: "a@b.example", Subject: `{{.attributes.v}}`, Text: "t"},
		{FromAddress: "a@b.example", Subject: "s", HTML: `<p>{{.attributes.v}}</p>`},
	} {
		tpl, err := Compile(c, Options{MaxPartSize: 100})
		if err != nil {
			t.Fatal(err)
		}
		if tpl.subjectPlan == nil || c.HTML != "" && tpl.htmlPlan == nil || c.HTML == "" && tpl.textPlan == nil {
			t.Fatalf("%+v: a part has no plan", c)
		}
		_, err = tpl.NewRenderer().Render(long, RenderOptions{})
		if !errors.Is(err, ErrTooLarge) {
			t.Errorf("%+v: a 200-byte value rendered under a 100-byte limit: %v", c, err)
		}
		if err := tpl.NewRenderer().Check(long); !errors.Is(err, ErrTooLarge) {
			t.Errorf("%+v: Check passed a 200-byte value under a 100-byte limit: %v", c, err)
		}
	}
}
