package tracking

import (
	"strings"
	"testing"
)

func TestNewLinksBaseURL(t *testing.T) {
	s := testSigner(t)
	for _, c := range []struct {
		in, base string
	}{
		{"https://mail.example.com", "https://mail.example.com"},
		{"https://mail.example.com/", "https://mail.example.com"},
		{"http://127.0.0.1:8080/herald/", "http://127.0.0.1:8080/herald"},
	} {
		l, err := NewLinks(c.in, s)
		if err != nil {
			t.Fatalf("NewLinks(%q): %v", c.in, err)
		}
		if l.base != c.base {
			t.Errorf("NewLinks(%q).base = %q, want %q", c.in, l.base, c.base)
		}
	}
	for _, bad := range []string{"", "mail.example.com", "ftp://x.example", "https://x.example/?a=1", "https://x.example/#f", "https://u:p@x.example", "https://"} {
		if _, err := NewLinks(bad, s); err == nil {
			t.Errorf("NewLinks(%q) accepted", bad)
		}
	}
}

func TestRecipientURLs(t *testing.T) {
	s := testSigner(t)
	l, _ := NewLinks("https://t.example.com/h/", s)
	r, err := l.Recipient(1001, 55)
	if err != nil {
		t.Fatal(err)
	}
	click, err := r.Click(4, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		url, path string
		want      Ref
	}{
		{r.Open(), PathOpen, Ref{LogID: 1001, DeliveryID: 55, Link: NoLink, Kind: KindOpen}},
		{r.Mirror(), PathMirror, Ref{LogID: 1001, DeliveryID: 55, Link: NoLink, Kind: KindMirror}},
		{r.OptOut(), PathOptOut, Ref{LogID: 1001, DeliveryID: 55, Link: NoLink, Kind: KindOptOut}},
		{click, PathClick, Ref{LogID: 1001, DeliveryID: 55, Link: 4, Kind: KindClick}},
	} {
		prefix := "https://t.example.com/h" + c.path
		tok, ok := strings.CutPrefix(c.url, prefix)
		if !ok {
			t.Errorf("URL %q does not start with %q", c.url, prefix)
			continue
		}
		got, err := s.Verify(tok)
		c.want.KeyID = 1
		if err != nil || got != c.want {
			t.Errorf("%s: Verify = %+v, %v; want %+v", c.url, got, err, c.want)
		}
	}
	if _, err := l.Recipient(-1, 1); err == nil {
		t.Error("negative log id accepted")
	}
	if _, err := r.Click(-1, ""); err == nil {
		t.Error("negative link index accepted")
	}
	if _, err := r.Click(int(NoLink), ""); err == nil {
		t.Error("link index NoLink accepted")
	}
}

func TestRewriter(t *testing.T) {
	s := testSigner(t)
	l, _ := NewLinks("https://t.example", s)
	r, _ := l.Recipient(9, 3)
	links := []Link{
		{URL: "https://shop.example/a", Mode: ModeTracked},
		{URL: "mailto:help@shop.example", Mode: ModeNever},
		{URL: "https://shop.example/p/{{.id}}", Mode: ModeTracked, Personalised: true},
		{URL: "{{.unsubscribe_url}}", Mode: ModeOptOut, Personalised: true},
		{URL: "{{.attributes.url}}", Mode: ModeTracked, Personalised: true},
	}
	rw := r.Rewriter(links)
	check := func(index int, rendered string, wantURL string) {
		t.Helper()
		got := rw(index, rendered)
		if wantURL == "" {
			if got != rendered {
				t.Errorf("link %d: rewritten to %q; want it left as %q", index, got, rendered)
			}
			return
		}
		tok, ok := strings.CutPrefix(got, "https://t.example"+PathClick)
		if !ok {
			t.Fatalf("link %d: %q is not a click URL", index, got)
		}
		ref, err := s.Verify(tok)
		if err != nil || ref.Link != uint16(index) || ref.Kind != KindClick {
			t.Fatalf("link %d: token %+v, %v", index, ref, err)
		}
		if links[index].Personalised && ref.URL != wantURL {
			t.Errorf("link %d: token URL %q, want %q", index, ref.URL, wantURL)
		}
		if !links[index].Personalised && ref.URL != "" {
			t.Errorf("link %d: fixed link's token carries URL %q", index, ref.URL)
		}
	}
	check(0, "https://shop.example/a", "https://shop.example/a")
	check(1, "mailto:help@shop.example", "")
	check(2, "https://shop.example/p/77", "https://shop.example/p/77")
	check(3, "https://t.example/t/u/xyz", "")
	check(4, "javascript:alert(1)", "") // not http(s): left as written
	check(4, "https://elsewhere.example/x", "https://elsewhere.example/x")
	check(5, "https://unknown.example/", "") // index not in the list
	check(-1, "https://unknown.example/", "")
	check(2, "https://shop.example/p/"+strings.Repeat("z", MaxURLLen), "") // too long: untracked
}

func BenchmarkRecipientClick(b *testing.B) {
	l, _ := NewLinks("https://t.example.com", testSigner(b))
	r, _ := l.Recipient(250_000_000, 12_000)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Click(17, ""); err != nil {
			b.Fatal(err)
		}
	}
}
