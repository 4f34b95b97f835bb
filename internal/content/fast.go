package content

import (
	"bytes"
	"fmt"
	"strings"
	"text/template/parse"
	"time"
)

// A plan renders a part without text/template's reflection, which is most of a render's cost.
// It covers what most message content is: text, actions that print a field of the data
// (.email, .attributes.city, $.attributes.city), possibly through default with a literal text,
// through the escapers html/template put there, and {{if}}/{{else}} on such a field. Compile
// makes a plan of a part whose escaped tree holds nothing else; a part with other functions,
// loops, variables or contexts the plan has no escaper for keeps its template alone.
//
// A plan gives up on data it is not sure to print as the template would (a field of a value
// that is not an object, a type it does not know); the Renderer then executes the template,
// so the output, or the error, is the template's in every case. Tests compare both, byte for
// byte, over many values.
type plan []planNode

type planNode struct {
	text      string   // literal text, when path and cond are nil
	path      []string // a printing action: the field, from the root of the data
	esc       []escaper
	textValue bool    // the action prints with textValue (a text part's), not html/template's way
	def       *string // the text of a default the field goes through, if any
	// cond is the field an {{if}} tests; then and els are its branches.
	cond      []string
	then, els plan
}

// escaper is one of the functions html/template adds to an action, or the text parts' own
// textValue, applied to the string the previous one produced.
type escaper func(b *bytes.Buffer, s string)

// planEscapers are the escapers a plan knows, by the name they have in an escaped tree.
// For the plain strings a plan prints, html/template's htmlescaper, attrescaper and
// rcdataescaper replace the same seven characters.
var planEscapers = map[string]escaper{
	"_html_template_htmlescaper":   escapeHTML,
	"_html_template_attrescaper":   escapeHTML,
	"_html_template_rcdataescaper": escapeHTML,
	"_html_template_urlfilter":     filterURL,
	"_html_template_urlnormalizer": func(b *bytes.Buffer, s string) { processURL(b, s, true) },
	"_html_template_urlescaper":    func(b *bytes.Buffer, s string) { processURL(b, s, false) },
	"herald_str":                   func(b *bytes.Buffer, s string) { b.WriteString(s) },
}

// makePlan returns the plan of an escaped (HTML) or instrumented (text) tree, or nil when the
// tree holds something a plan does not cover.
func makePlan(l *parse.ListNode) plan {
	if l == nil {
		return plan{}
	}
	p := plan{}
	for _, n := range l.Nodes {
		switch n := n.(type) {
		case *parse.TextNode:
			p = append(p, planNode{text: string(n.Text)})
		case *parse.ActionNode:
			if len(n.Pipe.Decl) > 0 || len(n.Pipe.Cmds) < 2 {
				return nil
			}
			node := planNode{path: fieldPath(n.Pipe.Cmds[0])}
			rest := n.Pipe.Cmds[1:]
			if node.path == nil {
				// {{default "text" .field}}
				node.path, node.def = defaultCall(n.Pipe.Cmds[0])
			} else if def, ok := defaultOf(rest[0]); ok {
				// {{.field | default "text"}}
				node.def, rest = def, rest[1:]
			}
			if node.path == nil || len(rest) == 0 {
				return nil
			}
			for _, c := range rest {
				if len(c.Args) != 1 {
					return nil
				}
				id, ok := c.Args[0].(*parse.IdentifierNode)
				if !ok || planEscapers[id.Ident] == nil {
					return nil
				}
				node.esc = append(node.esc, planEscapers[id.Ident])
				node.textValue = node.textValue || id.Ident == "herald_str"
			}
			p = append(p, node)
		case *parse.IfNode:
			if len(n.Pipe.Decl) > 0 || len(n.Pipe.Cmds) != 1 {
				return nil
			}
			cond := fieldPath(n.Pipe.Cmds[0])
			then, els := makePlan(n.List), makePlan(n.ElseList)
			if cond == nil || then == nil || els == nil {
				return nil
			}
			p = append(p, planNode{cond: cond, then: then, els: els})
		default:
			return nil
		}
	}
	return p
}

// fieldPath is the field chain of a command that only names a field of the root data
// (.a.b, or $.a.b), or nil. Dot is the root wherever a plan applies: it has no range or with.
func fieldPath(c *parse.CommandNode) []string {
	if len(c.Args) != 1 {
		return nil
	}
	switch a := c.Args[0].(type) {
	case *parse.FieldNode:
		return a.Ident
	case *parse.VariableNode:
		if len(a.Ident) > 1 && a.Ident[0] == "$" {
			return a.Ident[1:]
		}
	}
	return nil
}

// defaultOf reads a command `default "text"` (a field piped into it gives the value).
func defaultOf(c *parse.CommandNode) (*string, bool) {
	if len(c.Args) != 2 {
		return nil, false
	}
	id, ok := c.Args[0].(*parse.IdentifierNode)
	lit, isLit := c.Args[1].(*parse.StringNode)
	if !ok || id.Ident != "default" || !isLit {
		return nil, false
	}
	return &lit.Text, true
}

// defaultCall reads a command `default "text" .field` as the field's path and the text.
func defaultCall(c *parse.CommandNode) ([]string, *string) {
	if len(c.Args) != 3 {
		return nil, nil
	}
	def, ok := defaultOf(&parse.CommandNode{Args: c.Args[:2]})
	if !ok {
		return nil, nil
	}
	path := fieldPath(&parse.CommandNode{Args: c.Args[2:]})
	if path == nil {
		return nil, nil
	}
	return path, def
}

// exec writes the part for the data root to b; false means the template must render it.
func (p plan) exec(b *bytes.Buffer, root map[string]any, scratch *bytes.Buffer) bool {
	for i := range p {
		n := &p[i]
		switch {
		case n.cond != nil:
			v, ok := lookup(root, n.cond)
			if !ok {
				return false
			}
			truth, ok := isTrueValue(v)
			if !ok {
				return false
			}
			branch := n.els
			if truth {
				branch = n.then
			}
			if !branch.exec(b, root, scratch) {
				return false
			}
		case n.path != nil:
			v, ok := lookup(root, n.path)
			if !ok {
				return false
			}
			if n.def != nil {
				// defaultValue's emptiness for the values a plan prints; an empty list or
				// object is empty too, but printed gives those to the template anyway.
				if str, isStr := v.(string); v == nil || isStr && strings.TrimSpace(str) == "" {
					v = *n.def
				}
			}
			s, ok := printed(v, n.textValue)
			if !ok {
				return false
			}
			if len(n.esc) == 1 {
				n.esc[0](b, s)
				continue
			}
			// Each escaper reads what the one before it wrote.
			for k, esc := range n.esc {
				if k == len(n.esc)-1 {
					esc(b, s)
					break
				}
				scratch.Reset()
				esc(scratch, s)
				s = scratch.String()
			}
		default:
			b.WriteString(n.text)
		}
	}
	return true
}

// lookup follows path from root. A key an object lacks is nil, as text/template prints it;
// a step into anything but an object is for the template to report.
func lookup(root map[string]any, path []string) (any, bool) {
	var v any = root
	for _, k := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil, false
		}
		v = m[k]
	}
	return v, true
}

// printed is the string the first escaper receives for v: textValue's for text parts; for
// HTML, html/template's escapers skip a nil and print the rest with fmt.Sprint.
func printed(v any, text bool) (string, bool) {
	switch x := v.(type) {
	case nil:
		return "", true
	case string:
		return x, true
	case int64, float64, bool, time.Time:
		if text {
			return toString(x), true
		}
		return fmt.Sprint(x), true
	}
	return "", false
}

// isTrueValue is text/template's truth of the values a plan knows.
func isTrueValue(v any) (truth, ok bool) {
	switch x := v.(type) {
	case nil:
		return false, true
	case string:
		return x != "", true
	case bool:
		return x, true
	case int64:
		return x != 0, true
	case float64:
		return x != 0, true
	case map[string]any:
		return len(x) > 0, true
	case []any:
		return len(x) > 0, true
	case time.Time:
		return true, true
	}
	return false, false
}

// escapeHTML is html/template's htmlReplacer with its htmlReplacementTable, for plain text.
// It is not writeAttrEscaped, which escapes the URLs Herald itself writes into attributes: this
// one must match html/template byte for byte (it also escapes '+' and NUL).
func escapeHTML(b *bytes.Buffer, s string) {
	last := 0
	for i := 0; i < len(s); i++ {
		var repl string
		switch s[i] {
		case 0:
			repl = "\uFFFD"
		case '"':
			repl = "&#34;"
		case '&':
			repl = "&amp;"
		case '\'':
			repl = "&#39;"
		case '+':
			repl = "&#43;"
		case '<':
			repl = "&lt;"
		case '>':
			repl = "&gt;"
		default:
			continue
		}
		b.WriteString(s[last:i])
		b.WriteString(repl)
		last = i + 1
	}
	b.WriteString(s[last:])
}

// filterURL is html/template's urlFilter: a URL with a scheme other than http, https or
// mailto becomes "#ZgotmplZ".
func filterURL(b *bytes.Buffer, s string) {
	if scheme, _, ok := strings.Cut(s, ":"); ok && !strings.Contains(scheme, "/") &&
		!strings.EqualFold(scheme, "http") && !strings.EqualFold(scheme, "https") && !strings.EqualFold(scheme, "mailto") {
		b.WriteString("#ZgotmplZ")
		return
	}
	b.WriteString(s)
}

// processURL is html/template's processURLOnto: it percent-encodes what a URL may not hold
// as is; norm (the normalizer) leaves reserved characters and valid escapes alone.
func processURL(b *bytes.Buffer, s string, norm bool) {
	const hex = "0123456789abcdef"
	last := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch c {
		case '!', '#', '$', '&', '*', '+', ',', '/', ':', ';', '=', '?', '@', '[', ']':
			if norm {
				continue
			}
		case '-', '.', '_', '~':
			continue
		case '%':
			if norm && i+2 < len(s) && isHexDigit(s[i+1]) && isHexDigit(s[i+2]) {
				continue
			}
		default:
			if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' {
				continue
			}
		}
		b.WriteString(s[last:i])
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
		last = i + 1
	}
	b.WriteString(s[last:])
}

func isHexDigit(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}
