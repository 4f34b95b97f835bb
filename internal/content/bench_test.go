package content

import (
	"bytes"
	"strconv"
	"strings"
	"testing"
)

// BenchmarkRender renders the ~2 KB newsletter (name, email and city personalisation, a loop of
// three products, nine tracked links, the open pixel and the derived text) for recipients in
// turn, each with their own name, city, address and tracking tokens, as a send does.
func BenchmarkRender(b *testing.B) {
	tpl, err := Compile(newsletter(b), Options{})
	if err != nil {
		b.Fatal(err)
	}
	recipients := benchRecipients()
	var opts [len(benchNames)]RenderOptions
	for k := range opts {
		opts[k] = RenderOptions{
			LinkRewriter: func(i int, u string) string {
				if tpl.Links()[i].Kind != LinkHTTP {
					return u
				}
				return "https://herald.example.com/t/c/AAAAAAAAAAAAAAAAAAAAA" + strconv.Itoa(100*k+i)
			},
			PixelURL: "https://herald.example.com/t/o/AAAAAAAAAAAAAAAAAAAAAA" + strconv.Itoa(k),
		}
	}
	r := tpl.NewRenderer()
	m, err := r.Render(recipients[0], opts[0])
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(m.HTML) + len(m.Text)))
	b.ReportAllocs()
	k := 0
	for b.Loop() {
		if _, err := r.Render(recipients[k], opts[k]); err != nil {
			b.Fatal(err)
		}
		k = (k + 1) % len(recipients)
	}
}

var benchNames = [...]string{"Annie", "Bartholomew", "Zoë", "Jo"}

// benchRecipients are annie with other names, cities and addresses.
func benchRecipients() []*Recipient {
	cities := [...]string{"Lyon & Co", "Saint-Étienne-du-Rouvray", "Nice", "Aix"}
	var out []*Recipient
	for k, name := range benchNames {
		rc := annie()
		rc.ID += int64(k)
		rc.Email = strings.ToLower(name) + "@example.org"
		rc.Attributes["first_name"] = name
		rc.Attributes["city"] = cities[k]
		out = append(out, rc)
	}
	return out
}

// BenchmarkRenderNoText is BenchmarkRender with a written text part, to show what deriving the
// text costs.
func BenchmarkRenderNoText(b *testing.B) {
	c := newsletter(b)
	c.Text = "Hello {{.attributes.first_name}}, see {{.mirror_url}}"
	tpl, err := Compile(c, Options{})
	if err != nil {
		b.Fatal(err)
	}
	rc := annie()
	r := tpl.NewRenderer()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Render(rc, RenderOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCompile compiles the newsletter, as done once per delivery.
func BenchmarkCompile(b *testing.B) {
	c := newsletter(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Compile(c, Options{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkNewRenderer is what each sending goroutine pays once per delivery.
func BenchmarkNewRenderer(b *testing.B) {
	tpl, err := Compile(newsletter(b), Options{})
	if err != nil {
		b.Fatal(err)
	}
	rc := annie()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := tpl.NewRenderer().Render(rc, RenderOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDeriveText converts the rendered newsletter HTML of recipients in turn to text.
func BenchmarkDeriveText(b *testing.B) {
	tpl, err := Compile(newsletter(b), Options{})
	if err != nil {
		b.Fatal(err)
	}
	var docs [][]byte
	for _, rc := range benchRecipients() {
		m, err := Preview(tpl, rc)
		if err != nil {
			b.Fatal(err)
		}
		docs = append(docs, m.HTML)
	}
	var c textConverter
	var buf bytes.Buffer
	b.ReportAllocs()
	k := 0
	for b.Loop() {
		buf.Reset()
		c.convert(&buf, docs[k])
		k = (k + 1) % len(docs)
	}
}
