package content

import (
	"strings"
	"text/template/parse"
)

// maskByte stands for every byte of a template action in the masked source, so that an HTML
// scanner sees the literal HTML only while offsets stay those of the source.
const maskByte = '\x01'

// maskActions returns src with every byte outside the tree's text nodes replaced by maskByte.
func maskActions(src string, tree *parse.Tree) string {
	b := []byte(strings.Repeat(string(maskByte), len(src)))
	var walk func(n parse.Node)
	walk = func(n parse.Node) {
		switch n := n.(type) {
		case *parse.ListNode:
			if n == nil {
				return
			}
			for _, c := range n.Nodes {
				walk(c)
			}
		case *parse.TextNode:
			copy(b[n.Pos:], n.Text)
		case *parse.IfNode:
			walk(n.List)
			walk(n.ElseList)
		case *parse.RangeNode:
			walk(n.List)
			walk(n.ElseList)
		case *parse.WithNode:
			walk(n.List)
			walk(n.ElseList)
		}
	}
	walk(tree.Root)
	return string(b)
}

// scannedLink is an <a href> found in the HTML source.
type scannedLink struct {
	tagStart           int // offset of '<'
	hrefStart, hrefEnd int
	text               strings.Builder
}

// span is a range of source offsets.
type span struct{ start, end int }

// htmlScan is what the compile-time scan of the HTML source finds.
type htmlScan struct {
	links    []*scannedLink
	comments []span // Outlook conditional comments to keep (html/template drops comments)
}

// rawTextElements hold text that is not HTML; html/template treats the same ones specially.
var rawTextElements = map[string]bool{"script": true, "style": true, "textarea": true, "title": true}

// scanHTML finds the links and conditional comments of the HTML source; masked is the source with
// its template actions masked (see maskActions). Actions inside an href stay in the link's URL.
func scanHTML(src, masked string) htmlScan {
	var out htmlScan
	var open *scannedLink // the <a> whose text is being collected
	n := len(masked)
	i := 0
	for i < n {
		j := strings.IndexByte(masked[i:], '<')
		if j < 0 {
			j = n - i
		}
		if open != nil {
			open.text.WriteString(src[i : i+j])
			open.text.WriteByte(' ')
		}
		i += j
		if i >= n {
			break
		}
		rest := masked[i:]
		switch {
		case strings.HasPrefix(rest, "<!--"):
			end := strings.Index(masked[i+4:], "-->")
			e := n
			if end >= 0 {
				e = i + 4 + end + 3
			}
			body := masked[i+4 : max(i+4, e-3)]
			if (strings.HasPrefix(body, "[if") || strings.HasPrefix(body, "<![endif]")) && masked[i:e] == src[i:e] {
				out.comments = append(out.comments, span{i, e})
			}
			i = e
		case strings.HasPrefix(rest, "<!") || strings.HasPrefix(rest, "<?"):
			i = skipPast(masked, i, '>')
		case strings.HasPrefix(rest, "</"):
			name, k := tagName(masked, i+2)
			if name == "a" && open != nil {
				open = nil
			}
			i = skipPast(masked, k, '>')
		case len(rest) > 1 && isASCIILetter(rest[1]):
			name, k := tagName(masked, i+1)
			href, end := scanAttrs(masked, k, "href", maskByte)
			if name == "a" && href.start >= 0 {
				open = &scannedLink{tagStart: i, hrefStart: href.start, hrefEnd: href.end}
				out.links = append(out.links, open)
			}
			i = end
			if rawTextElements[name] {
				i = skipRawText(masked, i, name)
			}
		default:
			i++
		}
	}
	return out
}

func isASCIILetter(c byte) bool { return c|0x20 >= 'a' && c|0x20 <= 'z' }

// tagName reads a lower-cased tag name at s[i:] and returns the offset after it.
func tagName[S string | []byte](s S, i int) (string, int) {
	start := i
	for i < len(s) && (isASCIILetter(s[i]) || s[i] >= '0' && s[i] <= '9' || s[i] == '-' || s[i] == ':') {
		i++
	}
	return strings.ToLower(string(s[start:i])), i
}

// skipPast returns the offset after the next c at or after i, or len(s).
func skipPast(s string, i int, c byte) int {
	if j := strings.IndexByte(s[i:], c); j >= 0 {
		return i + j + 1
	}
	return len(s)
}

// skipRawText returns the offset of the "</name" that closes a raw text element opened before i.
func skipRawText(s string, i int, name string) int {
	for {
		j := strings.Index(s[i:], "</")
		if j < 0 {
			return len(s)
		}
		i += j
		if got, _ := tagName(s, i+2); got == name {
			return i
		}
		i += 2
	}
}

// scanAttrs reads the attributes of a tag from s[i:] (just after its name) to its '>'. It returns
// the span of the value of the attribute named want ({-1,-1} when absent) and the offset after
// the tag. mask is a byte that separates attributes like a space outside values but belongs to an
// unquoted value, so that actions in a masked source behave; 0 disables it.
func scanAttrs[S string | []byte](s S, i int, want string, mask byte) (val span, end int) {
	val = span{-1, -1}
	n := len(s)
	isSpace := func(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' }
	for {
		for i < n && (isSpace(s[i]) || s[i] == '/' || (mask != 0 && s[i] == mask)) {
			i++
		}
		if i >= n {
			return val, n
		}
		if s[i] == '>' {
			return val, i + 1
		}
		nameStart := i
		for i < n && !isSpace(s[i]) && s[i] != '/' && s[i] != '>' && s[i] != '=' && !(mask != 0 && s[i] == mask) {
			i++
		}
		name := s[nameStart:i]
		for i < n && isSpace(s[i]) {
			i++
		}
		if i >= n || s[i] != '=' {
			continue
		}
		i++
		for i < n && isSpace(s[i]) {
			i++
		}
		var v span
		switch {
		case i < n && (s[i] == '"' || s[i] == '\''):
			q := s[i]
			i++
			v.start = i
			for i < n && s[i] != q {
				i++
			}
			v.end = i
			if i < n {
				i++
			}
		default:
			v.start = i
			for i < n && !isSpace(s[i]) && s[i] != '>' {
				i++
			}
			v.end = i
		}
		if val.start < 0 && equalFoldASCII(name, want) {
			val = v
		}
	}
}

// equalFoldASCII reports whether s equals want, a lower-case ASCII word, ignoring case.
func equalFoldASCII[S string | []byte](s S, want string) bool {
	if len(s) != len(want) {
		return false
	}
	for i := 0; i < len(want); i++ {
		c := s[i]
		if c >= 'A' && c <= 'Z' {
			c |= 0x20
		}
		if c != want[i] {
			return false
		}
	}
	return true
}
