package content

import (
	"errors"
	"fmt"
	htemplate "html/template"
	"regexp"
	"slices"
	"strconv"
	"strings"
	ttemplate "text/template"
	"text/template/parse"
)

// The parts of a message, as named in errors.
const (
	partSubject = "subject"
	partHTML    = "HTML"
	partText    = "text"
)

// LinkKind says what a link points to, so that tracking can treat each kind in its own way.
type LinkKind string

// The kinds of link.
const (
	LinkHTTP        LinkKind = "http"        // an http or https URL, tracked
	LinkMailto      LinkKind = "mailto"      // a mailto: address
	LinkUnsubscribe LinkKind = "unsubscribe" // {{.unsubscribe_url}}, already a tracking URL
	LinkMirror      LinkKind = "mirror"      // {{.mirror_url}}, already a tracking URL
	LinkOther       LinkKind = "other"       // anything else: tel:, #anchors, a URL held whole in data
)

// Link is an <a href> of the HTML, in document order.
type Link struct {
	// Index numbers the link from 0; it is what LinkRewriter receives and what a tracking token names.
	Index int `json:"index"`
	// URL is the href as written, template actions included.
	URL string `json:"url"`
	// Text is the link's text as written, tags removed.
	Text string   `json:"text"`
	Kind LinkKind `json:"kind"`
}

// Sizes are the sizes in bytes of a Template's sources.
type Sizes struct {
	Subject int `json:"subject"`
	HTML    int `json:"html"`
	Text    int `json:"text"`
}

// Template is a compiled Content. It is immutable and safe to share between goroutines; render it
// with a Renderer from NewRenderer, one per goroutine.
type Template struct {
	content  Content
	opts     Options
	subject  *ttemplate.Template
	html     *htemplate.Template // nil without HTML
	text     *ttemplate.Template // nil when the text is derived from the HTML
	links    []Link
	comments []string // kept conditional comments, restored at render
	ranges   []rangeInfo
	usesURL  map[string]bool // root fields referenced anywhere, e.g. "unsubscribe_url"; wholeRoot for . or $ itself
	// The parts' plans (see plan), nil for a part that has none.
	subjectPlan, htmlPlan, textPlan plan
}

// Content returns the content the template was compiled from.
func (t *Template) Content() Content { return t.content }

// Links returns the HTML's links in document order. The caller must not modify the slice.
func (t *Template) Links() []Link { return t.links }

// Sizes returns the sizes of the sources.
func (t *Template) Sizes() Sizes {
	return Sizes{Subject: len(t.content.Subject), HTML: len(t.content.HTML), Text: len(t.content.Text)}
}

// DerivesText reports whether the text part is derived from each recipient's HTML.
func (t *Template) DerivesText() bool { return t.text == nil && t.html != nil }

// CompileError is a template error a marketer can act on: the part, where in it, and what.
type CompileError struct {
	Part   string // "subject", "HTML" or "text"
	Line   int    // from 1; 0 when unknown
	Column int    // from 1; 0 when unknown
	Msg    string
}

// Error implements error.
func (e *CompileError) Error() string {
	var sb strings.Builder
	sb.WriteString(e.Part)
	if e.Line > 0 {
		fmt.Fprintf(&sb, ", line %d", e.Line)
		if e.Column > 0 {
			fmt.Fprintf(&sb, ", column %d", e.Column)
		}
	}
	sb.WriteString(": ")
	sb.WriteString(e.Msg)
	return sb.String()
}

// rootKeys are the names a template can reach at the top of its data (see the package doc).
var rootKeys = map[string]bool{
	"id": true, "email": true, "phone": true, "locale": true, "time_zone": true, "external_id": true,
	"created_at": true, "attributes": true, "unsubscribe_url": true, "mirror_url": true,
}

// Compile checks and compiles c, once per delivery. Errors are *CompileError values (joined when
// several), naming the part, line and column.
func Compile(c Content, opts Options) (*Template, error) {
	opts = opts.withDefaults()
	t := &Template{content: c, opts: opts, usesURL: map[string]bool{}}
	var errs []error
	for _, p := range []struct{ name, src string }{{partSubject, c.Subject}, {partHTML, c.HTML}, {partText, c.Text}} {
		if len(p.src) > opts.MaxSourceSize {
			errs = append(errs, &CompileError{Part: p.name, Msg: fmt.Sprintf("it is %d bytes long, over the %d-byte limit", len(p.src), opts.MaxSourceSize)})
		}
		if i := strings.IndexByte(p.src, 0); i >= 0 {
			line, col := lineCol(p.src, i)
			errs = append(errs, &CompileError{Part: p.name, Line: line, Column: col, Msg: "it contains a NUL character"})
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	var err error
	if t.subject, err = t.compileText(partSubject, c.Subject); err != nil {
		errs = append(errs, err)
	}
	if strings.TrimSpace(c.Text) != "" || strings.TrimSpace(c.HTML) == "" {
		if t.text, err = t.compileText(partText, c.Text); err != nil {
			errs = append(errs, err)
		}
	}
	if strings.TrimSpace(c.HTML) != "" {
		if t.html, err = t.compileHTML(c.HTML); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	// html/template escapes on first execution; do it now on a throwaway clone so that context
	// errors (an action in an unquoted attribute name, a tag left open) surface at compile time.
	if t.html != nil {
		r := t.NewRenderer()
		if r.err != nil {
			return nil, r.err
		}
		r.root = r.fill(&Recipient{Email: "preview@example.com"})
		r.b.max = opts.MaxSteps
		err := r.html.Execute(discardLimited{}, r.root)
		var he *htemplate.Error
		if errors.As(err, &he) {
			return nil, escapeError(he)
		}
		t.htmlPlan = makePlan(r.html.Tree.Root) // the escaped tree
	}
	t.subjectPlan = makePlan(t.subject.Tree.Root)
	if t.text != nil {
		t.textPlan = makePlan(t.text.Tree.Root)
	}
	return t, nil
}

// discardLimited discards output, for the compile-time escaping check.
type discardLimited struct{}

func (discardLimited) Write(p []byte) (int, error) { return len(p), nil }

// parseFuncs is the function set the parser checks names against; the bodies are bound per
// Renderer.
var parseFuncs = (&budget{}).funcs()

func (t *Template) parse(part, src string) (*parse.Tree, error) {
	trees, err := parse.Parse(part, src, "{{", "}}", parseFuncs, builtinNames)
	if err != nil {
		return nil, parseError(part, src, err)
	}
	tree := trees[part]
	if len(trees) != 1 || tree == nil {
		return nil, &CompileError{Part: part, Msg: "{{define}} and {{block}} are not supported: write the content in place"}
	}
	ck := checker{part: part, src: src, tree: tree, opts: t.opts, uses: t.usesURL}
	ck.list(tree.Root, true)
	if len(ck.errs) > 0 {
		return nil, errors.Join(ck.errs...)
	}
	return tree, nil
}

func (t *Template) compileText(part, src string) (*ttemplate.Template, error) {
	tree, err := t.parse(part, src)
	if err != nil {
		return nil, err
	}
	t.instrument(part, src, tree, true)
	tt, err := ttemplate.New(part).Funcs(parseFuncs).AddParseTree(part, tree)
	if err != nil {
		return nil, fmt.Errorf("%s: add parse tree: %w", part, err)
	}
	return tt, nil
}

// Render-time markers: the compiled HTML holds "\x00l<n>\x00" before the '<' of link n and
// "\x00c<n>\x00" in place of kept comment n. The source cannot hold NUL and html/template escapes
// any NUL a value holds, so a NUL in rendered HTML always starts a marker.
const (
	markLink    = 'l'
	markComment = 'c'
)

func (t *Template) compileHTML(src string) (*htemplate.Template, error) {
	tree, err := t.parse(partHTML, src)
	if err != nil {
		return nil, err
	}
	scan := scanHTML(src, maskActions(src, tree))
	type edit struct {
		at, end int
		text    string
	}
	var edits []edit
	for i, l := range scan.links {
		raw := src[l.hrefStart:l.hrefEnd]
		t.links = append(t.links, Link{Index: i, URL: raw, Text: collapseSpace(stripTags(l.text.String())), Kind: linkKind(raw)})
		edits = append(edits, edit{l.tagStart, l.tagStart, "\x00" + string(markLink) + strconv.Itoa(i) + "\x00"})
	}
	for i, c := range scan.comments {
		// Keep the line count so that line numbers in later errors still match the source.
		nl := strings.Repeat("\n", strings.Count(src[c.start:c.end], "\n"))
		edits = append(edits, edit{c.start, c.end, "\x00" + string(markComment) + strconv.Itoa(i) + "\x00" + nl})
		t.comments = append(t.comments, src[c.start:c.end])
	}
	marked := src
	if len(edits) > 0 {
		// Links and comments do not overlap (links inside comments are not scanned), and both lists
		// are in source order; merge them.
		slices.SortFunc(edits, func(a, b edit) int { return a.at - b.at })
		var sb strings.Builder
		last := 0
		for _, e := range edits {
			sb.WriteString(src[last:e.at])
			sb.WriteString(e.text)
			last = e.end
		}
		sb.WriteString(src[last:])
		marked = sb.String()
		trees, err := parse.Parse(partHTML, marked, "{{", "}}", parseFuncs, builtinNames)
		if err != nil {
			return nil, fmt.Errorf("HTML: parse with link markers: %w", err)
		}
		tree = trees[partHTML]
	}
	t.instrument(partHTML, marked, tree, false)
	ht, err := htemplate.New(partHTML).Funcs(parseFuncs).AddParseTree(partHTML, tree)
	if err != nil {
		return nil, fmt.Errorf("HTML: add parse tree: %w", err)
	}
	return ht, nil
}

// instrument inserts the loop budget check at the end of every range pipeline and, for text
// parts, textValue at the end of every printing action.
func (t *Template) instrument(part, src string, tree *parse.Tree, text bool) {
	var walk func(l *parse.ListNode)
	walk = func(l *parse.ListNode) {
		if l == nil {
			return
		}
		for _, n := range l.Nodes {
			switch n := n.(type) {
			case *parse.ActionNode:
				if text && len(n.Pipe.Decl) == 0 {
					n.Pipe.Cmds = append(n.Pipe.Cmds, newCommand(n.Pos, "herald_str"))
				}
			case *parse.IfNode:
				walk(n.List)
				walk(n.ElseList)
			case *parse.WithNode:
				walk(n.List)
				walk(n.ElseList)
			case *parse.RangeNode:
				line, col := actionLineCol(src, int(n.Pos))
				id := len(t.ranges)
				t.ranges = append(t.ranges, rangeInfo{part: part, line: line, col: col, costPerRun: 1 + listCost(n.List)})
				num := &parse.NumberNode{NodeType: parse.NodeNumber, Pos: n.Pos, IsInt: true, Int64: int64(id), Text: strconv.Itoa(id)}
				n.Pipe.Cmds = append(n.Pipe.Cmds, newCommand(n.Pos, "herald_range", num))
				walk(n.List)
				walk(n.ElseList)
			}
		}
	}
	walk(tree.Root)
}

func newCommand(pos parse.Pos, fn string, args ...parse.Node) *parse.CommandNode {
	id := parse.NewIdentifier(fn).SetPos(pos)
	return &parse.CommandNode{NodeType: parse.NodeCommand, Pos: pos, Args: append([]parse.Node{id}, args...)}
}

// listCost is the steps one run of a list costs: one per node and per command, plus both branches
// of conditionals. Nested loops count once here and charge their own iterations when they run.
func listCost(l *parse.ListNode) int {
	if l == nil {
		return 0
	}
	cost := 0
	for _, n := range l.Nodes {
		cost++
		switch n := n.(type) {
		case *parse.ActionNode:
			cost += len(n.Pipe.Cmds)
		case *parse.IfNode:
			cost += len(n.Pipe.Cmds) + listCost(n.List) + listCost(n.ElseList)
		case *parse.WithNode:
			cost += len(n.Pipe.Cmds) + listCost(n.List) + listCost(n.ElseList)
		case *parse.RangeNode:
			cost += len(n.Pipe.Cmds) + listCost(n.ElseList)
		}
	}
	return cost
}

// checker walks a parse tree and refuses what a template may not do.
type checker struct {
	part string
	src  string
	tree *parse.Tree
	opts Options
	uses map[string]bool
	errs []error
}

func (c *checker) fail(n parse.Node, format string, args ...any) {
	line, col := nodeLineCol(c.tree, n)
	switch n.(type) {
	case *parse.RangeNode, *parse.TemplateNode:
		line, col = actionLineCol(c.src, int(n.Position()))
	}
	c.errs = append(c.errs, &CompileError{Part: c.part, Line: line, Column: col, Msg: fmt.Sprintf(format, args...)})
}

// list walks a list; root says whether dot is still the template's data there.
func (c *checker) list(l *parse.ListNode, root bool) {
	if l == nil {
		return
	}
	for _, n := range l.Nodes {
		switch n := n.(type) {
		case *parse.ActionNode:
			c.pipe(n.Pipe, root)
		case *parse.IfNode:
			c.pipe(n.Pipe, root)
			c.list(n.List, root)
			c.list(n.ElseList, root)
		case *parse.WithNode:
			c.pipe(n.Pipe, root)
			c.list(n.List, false)
			c.list(n.ElseList, root)
		case *parse.RangeNode:
			c.pipe(n.Pipe, root)
			if len(n.Pipe.Cmds) == 1 && len(n.Pipe.Cmds[0].Args) == 1 {
				if num, ok := n.Pipe.Cmds[0].Args[0].(*parse.NumberNode); ok && num.IsInt && num.Int64 > int64(c.opts.MaxRangeLiteral) {
					c.fail(n, "{{range %s}} repeats too many times: the limit is %d", num.Text, c.opts.MaxRangeLiteral)
				}
			}
			c.list(n.List, false)
			c.list(n.ElseList, root)
		case *parse.TemplateNode:
			c.fail(n, "{{template %q}} is not supported: write the content in place", n.Name)
		}
	}
}

func (c *checker) pipe(p *parse.PipeNode, root bool) {
	if p == nil {
		return
	}
	for _, cmd := range p.Cmds {
		for _, a := range cmd.Args {
			c.arg(a, root)
		}
	}
}

func (c *checker) arg(a parse.Node, root bool) {
	switch a := a.(type) {
	case *parse.IdentifierNode:
		if _, ok := parseFuncs[a.Ident]; ok && !strings.HasPrefix(a.Ident, "herald_") {
			return
		}
		if allowedBuiltins[a.Ident] {
			return
		}
		c.fail(a, "the function %q is not available; the functions are: %s", a.Ident, helperNames)
	case *parse.FieldNode:
		if root {
			c.rootField(a, a.Ident[0])
		}
	case *parse.DotNode:
		if root {
			c.uses[wholeRoot] = true
		}
	case *parse.VariableNode:
		switch {
		case a.Ident[0] == "$" && len(a.Ident) > 1:
			c.rootField(a, a.Ident[1])
		case a.Ident[0] == "$":
			c.uses[wholeRoot] = true
		}
	case *parse.ChainNode:
		c.arg(a.Node, root)
	case *parse.PipeNode:
		c.pipe(a, root)
	}
}

func (c *checker) rootField(n parse.Node, name string) {
	if !rootKeys[name] {
		c.fail(n, "there is no %q: profile attributes are written {{.attributes.%s}}; the other names are .email, .phone, .locale, .time_zone, .external_id, .id, .created_at, .unsubscribe_url and .mirror_url", "."+name, name)
		return
	}
	c.uses[name] = true
}

// nodeLineCol is the 1-based line and column of n in tree's source.
func nodeLineCol(tree *parse.Tree, n parse.Node) (line, col int) {
	loc, _ := tree.ErrorContext(n)
	parts := strings.Split(loc, ":")
	if len(parts) >= 3 {
		line, _ = strconv.Atoi(parts[len(parts)-2])
		col, _ = strconv.Atoi(parts[len(parts)-1])
		col++
	}
	return line, col
}

// actionLineCol is the line and column of the "{{" that opens the action holding offset off,
// where a block action such as {{range}} is reported.
func actionLineCol(src string, off int) (line, col int) {
	off = min(off, len(src))
	if i := strings.LastIndex(src[:off], "{{"); i >= 0 {
		off = i
	}
	return lineCol(src, off)
}

func lineCol(src string, off int) (line, col int) {
	line = 1 + strings.Count(src[:off], "\n")
	return line, off - strings.LastIndexByte(src[:off], '\n')
}

// parseErrorRe matches text/template's "template: NAME:LINE: MESSAGE".
var parseErrorRe = regexp.MustCompile(`^template: [^:]*:(\d+):(?:(\d+):)? ?(.*)$`)

// parseError rewrites a text/template parse error in a marketer's words.
func parseError(part, src string, err error) error {
	m := parseErrorRe.FindStringSubmatch(err.Error())
	if m == nil {
		return &CompileError{Part: part, Msg: err.Error()}
	}
	line, _ := strconv.Atoi(m[1])
	col, _ := strconv.Atoi(m[2])
	msg := m[3]
	lineText := ""
	if lines := strings.Split(src, "\n"); line >= 1 && line <= len(lines) {
		lineText = lines[line-1]
	}
	find := func(s string) {
		if i := strings.Index(lineText, s); i >= 0 && col == 0 {
			col = i + 1
		}
	}
	switch {
	case strings.HasPrefix(msg, "function ") && strings.HasSuffix(msg, " not defined"):
		name := strings.TrimSuffix(strings.TrimPrefix(msg, "function "), " not defined")
		find(strings.Trim(name, `"`))
		msg = fmt.Sprintf("there is no function %s; the functions are: %s", name, helperNames)
	case strings.HasPrefix(msg, "bad character"):
		msg = "unexpected " + strings.TrimPrefix(msg, "bad ") + " inside {{ }}: is a }} missing?"
	case strings.Contains(msg, "unclosed action"):
		find("{{")
		msg = "a {{ is not closed by }}"
	case strings.Contains(msg, "unexpected EOF"):
		msg = "the text ends inside an {{if}}, {{range}} or {{with}}: an {{end}} is missing"
	case strings.Contains(msg, "unexpected {{end}}"):
		find("{{end")
		msg = "this {{end}} closes nothing: there is no {{if}}, {{range}} or {{with}} open"
	case strings.Contains(msg, "undefined variable"):
		msg = "the variable " + strings.TrimPrefix(msg, "undefined variable ") + " is used before it is set"
	case strings.Contains(msg, "missing value for command"), strings.Contains(msg, "empty command"):
		find("{{")
		msg = "an empty {{ }}: write what to insert, e.g. {{.email}}"
	}
	return &CompileError{Part: part, Line: line, Column: col, Msg: msg}
}

// escapeError rewrites an html/template escaping error.
func escapeError(he *htemplate.Error) error {
	msg := he.Description
	switch he.ErrorCode {
	case htemplate.ErrEndContext:
		msg = "the HTML ends inside a tag, an attribute, a comment or a script: look for a missing quote, > or closing tag"
	case htemplate.ErrBranchEnd:
		msg = "the two branches of an {{if}}, {{range}} or {{with}} leave the HTML in different states (e.g. one opens a tag or quote the other does not)"
	case htemplate.ErrAmbigContext:
		msg = "an action sits in an ambiguous place in a URL; put it wholly before or after the '?'"
	case htemplate.ErrBadHTML:
		msg = "the HTML is malformed around an action: " + he.Description
	case htemplate.ErrPredefinedEscaper:
		msg = "urlquery cannot be used here: links are escaped automatically"
	}
	return &CompileError{Part: partHTML, Line: he.Line, Msg: msg}
}

// linkKind classifies a raw href.
func linkKind(raw string) LinkKind {
	s := strings.TrimSpace(raw)
	lower := strings.ToLower(s)
	switch {
	case actionFieldIs(s, "unsubscribe_url"):
		return LinkUnsubscribe
	case actionFieldIs(s, "mirror_url"):
		return LinkMirror
	case strings.HasPrefix(lower, "http://"), strings.HasPrefix(lower, "https://"):
		return LinkHTTP
	case strings.HasPrefix(lower, "mailto:"):
		return LinkMailto
	}
	return LinkOther
}

// actionFieldIs reports whether s is a single action printing the root field name.
func actionFieldIs(s, name string) bool {
	if !strings.HasPrefix(s, "{{") || !strings.HasSuffix(s, "}}") || strings.Count(s, "{{") != 1 {
		return false
	}
	inner := strings.Trim(strings.TrimSpace(strings.Trim(s[2:len(s)-2], "-")), " ")
	return inner == "."+name || inner == "$."+name
}

var tagRe = regexp.MustCompile(`<[^>]*>`)

func stripTags(s string) string { return tagRe.ReplaceAllString(s, " ") }

func collapseSpace(s string) string { return strings.Join(strings.Fields(s), " ") }
