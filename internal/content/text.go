package content

import (
	"bytes"
	"html"
	"unicode/utf8"
)

// The text part, when not written, is derived from each recipient's final HTML at render time
// rather than from the HTML template at compile time: the derived text then follows the
// recipient's own conditionals and loops exactly, its links are the tracked ones already, and no
// template is produced from a translation that unbalanced actions inside tags could break. It
// costs a single pass over the rendered HTML, which is cheaper than executing a second template.

// wrapColumn is where derived text lines are wrapped (words are never cut).
const wrapColumn = 76

// blockBreak says how many line breaks an element starts and ends with in derived text. A
// switch, not a map: it is asked for every tag of every message, and hashing cost more.
func blockBreak(name []byte) int {
	switch string(name) {
	case "p", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol", "blockquote", "pre", "hr", "dl":
		return 2
	case "div", "tr", "li", "section", "article", "header", "footer", "center", "dt", "dd", "br",
		"address", "form", "main", "nav", "aside":
		return 1
	}
	return 0
}

// skippedElement reports elements whose content is not text to read.
func skippedElement(name []byte) bool {
	switch string(name) {
	case "script", "style", "head", "title", "textarea":
		return true
	}
	return false
}

// textConverter turns rendered HTML into readable plain text: paragraphs and line breaks kept,
// list items marked, links written "text (url)", scripts and styles dropped, entities decoded,
// lines wrapped at wrapColumn. It keeps scratch space between calls.
type textConverter struct {
	w       *bytes.Buffer
	col     int
	space   bool // a space is due before the next word
	nl      int  // line breaks due before the next word
	started bool
	lists   []int // per open list: 0 for <ul>, else the next <ol> number
	href    []byte
	inLink  bool
	// afterLink puts a space between a link's "(url)" and a following word that is not
	// punctuation, even when the HTML has none (</a><a>).
	afterLink bool
	linkAt    int // offset in w where the link's text starts
	scratch   []byte
	tmp       []byte
	name      [16]byte
	// memo remembers what long text runs became (see textMemo); it outlives convert.
	memo textMemo
	// replay keeps the last document converted, to copy what is the same in the next (see
	// textReplay); it outlives convert.
	replay textReplay
	// far says the token being converted read to the end of the document (an unclosed
	// skipped element) and so depends on more than its own bytes.
	far bool
}

// textState is the part of a converter's state that a run of text reads and changes.
type textState struct {
	col, nl                   int
	space, started, afterLink bool
}

func (c *textConverter) state() textState {
	return textState{col: c.col, nl: c.nl, space: c.space, started: c.started, afterLink: c.afterLink}
}

// loose is s with what no token reads left out: while line breaks are due, the next thing
// written writes them and starts a line, so the column and a due space do not matter.
// Whether a link has just ended is compared all the same: it is read by what a token writes
// first (a word, a list item), and the cost of keeping it is a few tokens not copied.
func (s textState) loose() textState {
	if s.nl > 0 && s.started {
		s.col, s.space = 0, false
	}
	return s
}

func (c *textConverter) setState(s textState) {
	c.col, c.nl, c.space, c.started, c.afterLink = s.col, s.nl, s.space, s.started, s.afterLink
}

// A run of text between two tags becomes the same text whenever the converter meets it in the
// same state: its output depends on nothing else (text and what it calls read and write only
// textState and append to w). Most of a message's text is the template's own, the same for
// every recipient, so a converter that renders many messages remembers the long runs it
// converted, keyed by their bytes and the state before, and replays the output and the state
// after instead of decoding, splitting and wrapping them again.
const (
	memoMinRun   = 48       // shorter runs cost about what a lookup does
	memoMaxBytes = 64 << 10 // remembered output and keys, beyond which the memo learns no more
)

type textMemo struct {
	runs  map[string][]memoRun
	bytes int
	hits  int  // runs replayed, for tests
	off   bool // convert every run, for the differential test
}

type memoRun struct {
	before, after textState
	out           []byte
}

// text adds a run of HTML text, through the memo when the run is long.
func (c *textConverter) text(b []byte) {
	if len(b) < memoMinRun || c.memo.off {
		c.convertText(b)
		return
	}
	before := c.state()
	if before.nl > 0 && before.started {
		// The run's first word writes the line breaks due and starts a line: where the last
		// line ended, and whether a space or a link's end was due, change nothing.
		before.col, before.space, before.afterLink = 0, false, false
	}
	for _, r := range c.memo.runs[string(b)] {
		if r.before == before {
			c.memo.hits++
			c.w.Write(r.out)
			c.setState(r.after)
			return
		}
	}
	start := c.w.Len()
	c.convertText(b)
	out := c.w.Bytes()[start:]
	if len(out) == 0 {
		return // only white space: its state after may depend on what the key left out
	}
	// A converter serves one template (Renderer), whose own runs its first messages teach the
	// memo; runs that hold a recipient's fields, or that follow them on the same line, never
	// repeat, and once they have filled the memo it keeps what it has.
	if c.memo.bytes+len(b)+len(out) > memoMaxBytes {
		return
	}
	if c.memo.runs == nil {
		c.memo.runs = map[string][]memoRun{}
	}
	key := string(b)
	c.memo.runs[key] = append(c.memo.runs[key], memoRun{before: before, after: c.state(), out: bytes.Clone(out)})
	c.memo.bytes += len(b) + len(out)
}

// Every recipient's HTML comes from the same template and the values put into it are escaped,
// so convert's loop meets the same tokens (a text run and the tag after it) in the same order
// from one message to the next, and most of them are the same bytes. A token's output and the
// state it leaves depend only on the state before it (textState, when no list or link is open)
// and on its own bytes. The one exception is an unclosed script or style, which looks for its
// end through the rest of the document: it is marked far and never copied. (replayLookahead
// bytes more are compared: the test for a comment reads past a tag shorter than "<!--", though
// what it finds there changes nothing.)
//
// So the converter keeps the last document: where each token started, the state there and the
// length of the text before it. When token k of a document starts in the same simple state as
// token k of the last one (compared loosely, textState.loose), the tokens from k on whose bytes
// are the same are not converted: the last document's text for them is copied and its state
// after them taken. Where a template's conditionals or loops change the tokens from one
// recipient to the next, the tokens stop lining up and fewer are copied.
const replayLookahead = len("<!--")

type textReplay struct {
	src, out []byte     // the last document and its text, without the final line break
	bounds   []boundary // where each of its tokens started
	cur      []boundary // the same for the document being converted
	tokens   int        // tokens copied, for tests
	off      bool       // convert every token, for the differential test
}

type boundary struct {
	pos, out int // offset of the token in the document, length of the text before it
	st       textState
	simple   bool // no list or link open: st is all the state the token reads
	far      bool // the token read to the end of the document
}

// match returns the last token m > k such that the document's tokens k to m-1 are the last
// document's, from a position whose state is b's, and m starts in a simple state.
func (r *textReplay) match(k int, b boundary, src []byte) (int, bool) {
	pb := r.bounds
	if !pb[k].simple || pb[k].st.loose() != b.st.loose() {
		return 0, false
	}
	delta := b.pos - pb[k].pos
	m := k
	for m+1 < len(pb) && !pb[m].far {
		from, to := pb[m].pos, pb[m+1].pos
		if to+delta > len(src) || !bytes.Equal(r.src[from:to], src[from+delta:to+delta]) {
			break
		}
		m++
	}
	for ; m > k; m-- {
		e := pb[m].pos
		ahead := min(len(r.src)-e, replayLookahead)
		if pb[m].simple && min(len(src)-e-delta, replayLookahead) == ahead &&
			bytes.Equal(r.src[e:e+ahead], src[e+delta:e+delta+ahead]) {
			return m, true
		}
	}
	return 0, false
}

func (c *textConverter) convert(w *bytes.Buffer, src []byte) {
	*c = textConverter{w: w, lists: c.lists[:0], scratch: c.scratch[:0], href: c.href[:0], tmp: c.tmp[:0],
		memo: c.memo, replay: c.replay}
	r := &c.replay
	r.cur = r.cur[:0]
	start := w.Len()
	n := len(src)
	i := 0
	for i < n {
		b := boundary{pos: i, out: w.Len() - start, st: c.state(), simple: len(c.lists) == 0 && !c.inLink}
		if k := len(r.cur); b.simple && !r.off && k < len(r.bounds) {
			if m, ok := r.match(k, b, src); ok {
				pb := r.bounds
				w.Write(r.out[pb[k].out:pb[m].out])
				for _, x := range pb[k:m] {
					x.pos += b.pos - pb[k].pos
					x.out += b.out - pb[k].out
					r.cur = append(r.cur, x)
				}
				c.setState(pb[m].st)
				r.tokens += m - k
				i = pb[m].pos + b.pos - pb[k].pos
				continue
			}
		}
		r.cur = append(r.cur, b)
		i = c.token(src, i)
		if c.far {
			r.cur[len(r.cur)-1].far = true
			c.far = false
		}
	}
	r.src = append(r.src[:0], src...)
	r.out = append(r.out[:0], w.Bytes()[start:]...)
	r.bounds, r.cur = r.cur, r.bounds
	if c.started {
		w.WriteByte('\n')
	}
}

// token converts the text run at src[i:] and the tag or markup after it, and returns where the
// next token starts.
func (c *textConverter) token(src []byte, i int) int {
	n := len(src)
	j := bytes.IndexByte(src[i:], '<')
	if j < 0 {
		j = n - i
	}
	c.text(src[i : i+j])
	i += j
	if i >= n {
		return n
	}
	rest := src[i:]
	switch {
	case bytes.HasPrefix(rest, []byte("<!--")):
		if end := bytes.Index(rest[4:], []byte("-->")); end >= 0 {
			i += 4 + end + 3
		} else {
			i = n
		}
	case bytes.HasPrefix(rest, []byte("<!")) || bytes.HasPrefix(rest, []byte("<?")):
		i = skipPastBytes(src, i, '>')
	case bytes.HasPrefix(rest, []byte("</")):
		name, k := c.tagName(src, i+2)
		c.endTag(name)
		i = skipPastBytes(src, k, '>')
	case len(rest) > 1 && isASCIILetter(rest[1]):
		name, k := c.tagName(src, i+1)
		i = c.startTag(src, name, k)
	default:
		c.text(rest[:1])
		i++
	}
	return i
}

// tagName reads a tag name at src[i:], lower-cased into c.name; the string does not allocate
// when used as a map key.
func (c *textConverter) tagName(src []byte, i int) ([]byte, int) {
	k := 0
	for i < len(src) && (isASCIILetter(src[i]) || src[i] >= '0' && src[i] <= '9') {
		if k < len(c.name) {
			c.name[k] = src[i] | 0x20
			if src[i] >= '0' && src[i] <= '9' {
				c.name[k] = src[i]
			}
			k++
		}
		i++
	}
	return c.name[:k], i
}

func skipPastBytes(s []byte, i int, ch byte) int {
	if j := bytes.IndexByte(s[i:], ch); j >= 0 {
		return i + j + 1
	}
	return len(s)
}

func (c *textConverter) startTag(src, name []byte, k int) int {
	want := ""
	switch {
	case string(name) == "a":
		want = "href"
	case string(name) == "img":
		want = "alt"
	}
	val, end := scanAttrs(src, k, want, 0)
	if skippedElement(name) {
		if close := findClose(src, end, name); close >= 0 {
			return close
		}
		c.far = true
		return end
	}
	if nb := blockBreak(name); nb > 0 {
		c.breakLine(nb)
	}
	switch string(name) {
	case "ul":
		c.lists = append(c.lists, 0)
	case "ol":
		c.lists = append(c.lists, 1)
	case "li":
		c.breakLine(1)
		c.flush()
		if len(c.lists) > 0 && c.lists[len(c.lists)-1] > 0 {
			c.put(itoa(c.scratch[:0], c.lists[len(c.lists)-1]))
			c.put([]byte(". "))
			c.lists[len(c.lists)-1]++
		} else {
			c.put([]byte("- "))
		}
		// The marker is what follows a link that ended before the item, not its first word.
		c.space, c.afterLink = false, false
	case "td", "th":
		c.space = true
	case "a":
		c.href = c.href[:0]
		if val.start >= 0 {
			c.href = append(c.href, bytes.TrimSpace(src[val.start:val.end])...)
		}
		c.inLink = true
		c.flushSpaceOnly()
		c.linkAt = c.w.Len()
	case "img":
		if val.start >= 0 {
			c.text(src[val.start:val.end])
		}
	}
	return end
}

// findClose returns the offset after the "</name...>" that closes an element opened before i.
func findClose(src []byte, i int, name []byte) int {
	for {
		j := bytes.Index(src[i:], []byte("</"))
		if j < 0 {
			return -1
		}
		i += j + 2
		if len(src)-i >= len(name) && equalFoldASCII(src[i:i+len(name)], string(name)) {
			return skipPastBytes(src, i, '>')
		}
	}
}

func (c *textConverter) endTag(name []byte) {
	switch string(name) {
	case "ul", "ol":
		if len(c.lists) > 0 {
			c.lists = c.lists[:len(c.lists)-1]
		}
	case "a":
		if c.inLink {
			c.inLink = false
			c.linkURL()
		}
	}
	if nb := blockBreak(name); nb > 0 {
		c.breakLine(nb)
	}
}

// linkURL writes " (url)" after a link's text, unless the text already says it.
func (c *textConverter) linkURL() {
	u := c.decode(c.href)
	if len(u) == 0 || u[0] == '#' || hasPrefixFold(u, "javascript:") {
		return
	}
	text := bytes.TrimSpace(c.w.Bytes()[min(c.linkAt, c.w.Len()):])
	shown := u
	if hasPrefixFold(u, "mailto:") {
		shown = u[len("mailto:"):]
	}
	if bytes.Equal(text, u) || bytes.Equal(text, shown) {
		return
	}
	if len(text) == 0 {
		c.word(u)
		c.afterLink = true
		return
	}
	c.space = true
	c.tmp = append(append(append(c.tmp[:0], '('), u...), ')')
	c.word(c.tmp)
	c.afterLink = true
}

func hasPrefixFold(b []byte, prefix string) bool {
	return len(b) >= len(prefix) && equalFoldASCII(b[:len(prefix)], prefix)
}

func (c *textConverter) breakLine(n int) {
	if c.started && n > c.nl {
		c.nl = n
	}
}

// flush writes due line breaks.
func (c *textConverter) flush() {
	if c.nl > 0 && c.started {
		for range c.nl {
			c.w.WriteByte('\n')
		}
		c.col = 0
		c.space = false
	}
	c.nl = 0
}

// flushSpaceOnly writes a due space or line breaks, so that a link's text starts after them.
func (c *textConverter) flushSpaceOnly() {
	if !c.started {
		return
	}
	if c.nl > 0 {
		c.flush()
		return
	}
	if c.space && c.col > 0 {
		c.w.WriteByte(' ')
		c.col++
		c.space = false
	}
}

func (c *textConverter) put(b []byte) {
	c.w.Write(b)
	c.col += utf8.RuneCount(b)
	c.started = true
}

// convertText adds a run of HTML text: entities decoded, white space collapsed.
func (c *textConverter) convertText(b []byte) {
	b = c.decode(b)
	for len(b) > 0 {
		k := 0
		for k < len(b) && isSpaceByte(b[k]) {
			k++
		}
		if k > 0 {
			c.space = true
			b = b[k:]
		}
		e := 0
		for e < len(b) && !isSpaceByte(b[e]) {
			e++
		}
		if e > 0 {
			c.word(b[:e])
			b = b[c.run(b[e:])+e:]
		}
	}
}

// run writes the words at the start of b that each follow a single space, are ASCII and fit
// on the line, as word would one by one, and returns how many bytes it took: most of a
// paragraph goes through here in one copy.
func (c *textConverter) run(b []byte) int {
	i := 0
	for i < len(b) && b[i] == ' ' {
		j := i + 1
		for j < len(b) && b[j] < utf8.RuneSelf && !isSpaceByte(b[j]) {
			j++
		}
		if j == i+1 || j < len(b) && !isSpaceByte(b[j]) || c.col+j > wrapColumn {
			break // a second space, a non-ASCII word, or a wrap: word's to handle
		}
		i = j
	}
	c.w.Write(b[:i])
	c.col += i
	return i
}

func isSpaceByte(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' }

func (c *textConverter) word(w []byte) {
	if c.afterLink && !bytes.ContainsAny(w[:1], ".,;:!?)") {
		c.space = true
	}
	c.afterLink = false
	n := runeCount(w)
	if c.nl > 0 && c.started {
		c.flush()
	} else if c.space && c.col > 0 {
		if c.col+1+n > wrapColumn {
			c.w.WriteByte('\n')
			c.col = 0
		} else {
			c.w.WriteByte(' ')
			c.col++
		}
	}
	c.nl = 0
	c.space = false
	c.w.Write(w)
	c.col += n
	c.started = true
}

// runeCount is utf8.RuneCount with a shortcut for the ASCII words most text is made of.
func runeCount(b []byte) int {
	for _, c := range b {
		if c >= utf8.RuneSelf {
			return utf8.RuneCount(b)
		}
	}
	return len(b)
}

// commonEntities decode without the general decoder; &nbsp; becomes a plain space.
var commonEntities = map[string]string{
	"amp": "&", "lt": "<", "gt": ">", "quot": `"`, "apos": "'", "nbsp": " ", "#39": "'", "#34": `"`,
	"#160": " ", "copy": "©", "reg": "®", "mdash": "—", "ndash": "–", "hellip": "…", "rsquo": "’",
	"lsquo": "‘", "rdquo": "”", "ldquo": "“", "zwnj": "", "#8203": "", "#847": "",
}

// decode returns b with entities decoded, in scratch space when it has any.
func (c *textConverter) decode(b []byte) []byte {
	if bytes.IndexByte(b, '&') < 0 {
		return b
	}
	out := c.scratch[:0]
	for len(b) > 0 {
		i := bytes.IndexByte(b, '&')
		if i < 0 {
			out = append(out, b...)
			break
		}
		out = append(out, b[:i]...)
		b = b[i:]
		semi := bytes.IndexByte(b[:min(len(b), 12)], ';')
		if semi < 0 {
			out = append(out, '&')
			b = b[1:]
			continue
		}
		if s, ok := commonEntities[string(b[1:semi])]; ok {
			out = append(out, s...)
		} else {
			out = append(out, html.UnescapeString(string(b[:semi+1]))...)
		}
		b = b[semi+1:]
	}
	c.scratch = out
	// The caller consumes the result before the next decode; copy so later appends to scratch
	// cannot alias it.
	return out[:len(out):len(out)]
}

func itoa(dst []byte, n int) []byte {
	var buf [20]byte
	i := len(buf)
	for n >= 10 {
		i--
		buf[i] = byte('0' + n%10)
		n /= 10
	}
	i--
	buf[i] = byte('0' + n)
	return append(dst, buf[i:]...)
}
