package content

import (
	"bytes"
	"math/rand/v2"
	"strings"
	"testing"
)

// TestTextReplayMatchesConversion: a converter that copies what a document shares with the last
// one (textReplay, with its memo) writes, for every document, byte for byte what a converter
// that converts every token writes. The documents come from random templates, a few hundred
// each, with values of every kind in their slots: short and long, with entities, non-ASCII
// letters, runs of spaces, punctuation after links. Now and then a document drops or repeats a
// piece, as a conditional or a loop would, and some templates leave a script unclosed.
func TestTextReplayMatchesConversion(t *testing.T) {
	pieces := []string{
		"<p>", "</p>", "<br>", "<li>", "<h1>", "</h1>", "<div>", "</div>", "<ul>", "</ul>", "<ol>", "</ol>",
		"<td>", "</td>", "<b>", "</b>", "<table>", "</table>", "<tr>", "</tr>", "<!-- note -->", "<title>Shop</title>",
		`<a href="https://shop.example/x?a=1&amp;b=2">`, "</a>", `<img src="x.png" alt="Logo of the shop">`,
		"Spring is here and so are the new collections: light jackets, linen shirts and shoes for long walks.",
		"Members get early access and free returns.", " ", "\n", "word", ", ", ".", "Fish &amp; chips",
		"Été à Paris, des robes légères.", "<", "a < b",
	}
	values := []string{
		"", "Al", "Bartholomew", "Marie-Thérèse", "O&#39;Brien", "Jo &amp; Co", "  spaced   out  ",
		"averyveryveryverylongwordthatcannotbewrappedanywhereatallbecauseithasnospace", ",", ")",
		"https://t.example/c/abc123?x=1", "Zoë", "\n", "x y z w v u t s r q p o n m l k j i h g f e d c b a",
		"#top", "word", "trailing space ", "Spring is here and so are the new collections: light jackets",
	}
	const slot = "\x00"
	rng := rand.New(rand.NewPCG(3, 4))
	var replay, plain textConverter
	plain.memo.off, plain.replay.off = true, true
	var got, want bytes.Buffer
	var html strings.Builder
	tokens := 0
	for tpl := range 60 {
		var parts []string
		for range 5 + rng.IntN(40) {
			switch r := rng.IntN(20); {
			case r == 0:
				parts = append(parts, slot)
			case r == 1:
				parts = append(parts, "Dear "+slot+" from")
			case r == 2:
				// A link whose address is the recipient's own, as a tracked link is.
				parts = append(parts, `<a href="https://t.example/`+slot+`">`)
			case r == 3:
				// A link the recipient may not have: no address, or one its text repeats.
				parts = append(parts, `<a href="`+slot+`">`)
			default:
				parts = append(parts, pieces[rng.IntN(len(pieces))])
			}
		}
		if tpl%7 == 3 {
			parts = append(parts, "<script>var unclosed = 1;", "<p>", "tail")
		}
		for doc := range 50 + rng.IntN(300) {
			html.Reset()
			for i, p := range parts {
				if doc%9 == 8 && i == len(parts)/2 {
					continue // a conditional left out
				}
				if doc%11 == 10 && i == len(parts)/3 {
					html.WriteString(p) // a loop's extra turn
				}
				v := values[rng.IntN(len(values))]
				html.WriteString(strings.ReplaceAll(p, slot, v))
			}
			got.Reset()
			want.Reset()
			replay.convert(&got, []byte(html.String()))
			plain.convert(&want, []byte(html.String()))
			if got.String() != want.String() {
				t.Fatalf("template %d document %d %q:\nreplay %q\nplain  %q", tpl, doc, html.String(), got.String(), want.String())
			}
			tokens += len(replay.replay.bounds)
		}
	}
	if replay.replay.tokens < tokens/20 || plain.replay.tokens != 0 {
		t.Fatalf("%d tokens of %d copied (and %d with replay off): the test does not exercise it",
			replay.replay.tokens, tokens, plain.replay.tokens)
	}
}

// TestTextReplayLeavesUnclosedScripts: a script left unclosed is taken for text (no end was
// found for it), so a document in which it is closed further on must not take the text the
// first one wrote after it, although their bytes are the same up to there.
func TestTextReplayLeavesUnclosedScripts(t *testing.T) {
	var c, plain textConverter
	plain.memo.off, plain.replay.off = true, true
	var got, want bytes.Buffer
	for _, doc := range []string{
		"<p>Hello</p><script>var a = 1;<p>shown as text</p>",
		"<p>Hello</p><script>var a = 1;<p>shown as text</p></script><p>after</p>",
	} {
		got.Reset()
		want.Reset()
		c.convert(&got, []byte(doc))
		plain.convert(&want, []byte(doc))
		if got.String() != want.String() {
			t.Fatalf("%q:\nreplay %q\nplain  %q", doc, got.String(), want.String())
		}
	}
	if strings.Contains(got.String(), "shown") {
		t.Fatalf("the closed script's content was written: %q", got.String())
	}
	if c.replay.tokens == 0 {
		t.Fatal("nothing was copied: the test does not exercise the replay")
	}
}

// TestTextReplayCopiesTheSharedTokens: the second of two documents that differ in one value
// converts only the tokens around the value.
func TestTextReplayCopiesTheSharedTokens(t *testing.T) {
	page := func(name string) []byte {
		return []byte("<html><body><h1>Hello " + name + ",</h1>\n" +
			strings.Repeat("<p style=\"x\">Spring is here and so are the <b>new</b> collections.</p>\n", 5) +
			"<p><a href=\"https://shop.example/\">See it</a></p></body></html>")
	}
	var c textConverter
	var first, second bytes.Buffer
	c.convert(&first, page("Al"))
	total := len(c.replay.bounds)
	c.convert(&second, page("Bartholomew"))
	if !strings.Contains(second.String(), "Hello Bartholomew,") {
		t.Fatalf("second document: %q", second.String())
	}
	if copied := c.replay.tokens; copied < total-4 {
		t.Fatalf("%d of %d tokens copied, want all but the few around the name", copied, total)
	}
}

// TestTextReplayKeepsWhetherALinkJustEnded: a link with an address writes it and one without
// does not; the same list after either comes out as a converter that copies nothing writes
// it, with one space after each marker.
func TestTextReplayKeepsWhetherALinkJustEnded(t *testing.T) {
	var c, plain textConverter
	plain.memo.off, plain.replay.off = true, true
	var got, want bytes.Buffer
	for _, href := range []string{"https://shop.example/", "", "https://shop.example/"} {
		doc := []byte(`<p><a href="` + href + `">Shop</a></p><ul><li>item one</li><li>item two</li></ul><p>End.</p>`)
		got.Reset()
		want.Reset()
		c.convert(&got, doc)
		plain.convert(&want, doc)
		if got.String() != want.String() {
			t.Fatalf("link to %q:\nreplay %q\nplain  %q", href, got.String(), want.String())
		}
		if !strings.Contains(got.String(), "\n- item one\n") {
			t.Fatalf("link to %q: the first item is not \"- item one\": %q", href, got.String())
		}
	}
}
