package content

import (
	"bytes"
	"strconv"
	"testing"
)

// BenchmarkRender renders the ~2 KB newsletter (name, email and city personalisation, a loop of
// three products, nine tracked links, the open pixel and the derived text) for one recipient.
func BenchmarkRender(b *testing.B) {
	tpl, err := Compile(newsletter(b), Options{})
	if err != nil {
		b.Fatal(err)
	}
	tracked := make([]string, len(tpl.Links()))
	for i := range tracked {
		tracked[i] = "https://herald.example.com/t/c/AAAAAAAAAAAAAAAAAAAAAAAA" + strconv.Itoa(i)
	}
	opts := RenderOptions{
		LinkRewriter: func(i int, u string) string {
			if tpl.Links()[i].Kind != LinkHTTP {
				return u
			}
			return tracked[i]
		},
		PixelURL: "https://herald.example.com/t/o/AAAAAAAAAAAAAAAAAAAAAAAA",
	}
	rc := annie()
	r := tpl.NewRenderer()
	m, err := r.Render(rc, opts)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(m.HTML) + len(m.Text)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Render(rc, opts); err != nil {
			b.Fatal(err)
		}
	}
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

// BenchmarkDeriveText converts the rendered newsletter HTML to text.
func BenchmarkDeriveText(b *testing.B) {
	tpl, err := Compile(newsletter(b), Options{})
	if err != nil {
		b.Fatal(err)
	}
	m, err := Preview(tpl, annie())
	if err != nil {
		b.Fatal(err)
	}
	var c textConverter
	var buf bytes.Buffer
	b.ReportAllocs()
	for b.Loop() {
		buf.Reset()
		c.convert(&buf, m.HTML)
	}
}
