package content

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"strings"
	"text/template/parse"
	"time"
)

// This file serves preparation, which renders every recipient once as a check: what data a
// template reads (so that recipients who give it the same data are rendered once), and a render
// that only says whether it fails.

// DataUse is the data a Template reads from a Recipient. A render is a function of that data
// alone: the helpers read no clock, no randomness and no outside state, and the limits count
// steps and bytes, never time. So two recipients who give a template the same values for every
// path of its DataUse get the same render, and the same error when it fails. (The one exception,
// printf's %p, prints an address, whose length cannot move a render across a limit worth naming.)
type DataUse struct {
	// All is set when the template reads the whole data ({{.}} or {{$}} at the top): every field
	// matters.
	All bool
	// Paths are the data paths the template reads, each a top-level name (see the package doc)
	// and, under attributes, attribute names: ["email"], ["attributes", "first_name"]. The value
	// at a path is read whole, whatever the template then does with it ({{with}}, {{range}},
	// index). Sorted, without duplicates.
	Paths [][]string
}

// Uses reports whether the template reads the top-level name.
func (u DataUse) Uses(name string) bool {
	if u.All {
		return true
	}
	for _, p := range u.Paths {
		if p[0] == name {
			return true
		}
	}
	return false
}

// DataUse returns the data the template reads, from its subject, HTML and written text.
func (t *Template) DataUse() DataUse {
	w := dataWalker{paths: map[string][]string{}}
	if t.subject != nil {
		w.list(t.subject.Tree.Root, true)
	}
	if t.text != nil {
		w.list(t.text.Tree.Root, true)
	}
	if t.html != nil {
		w.list(t.html.Tree.Root, true)
	}
	u := DataUse{All: w.all}
	if u.All {
		return u
	}
	for _, p := range w.paths {
		u.Paths = append(u.Paths, p)
	}
	slices.SortFunc(u.Paths, func(a, b []string) int { return slices.Compare(a, b) })
	return u
}

// dataWalker follows the parse tree as checker does: dot is the template's data at the top and
// in {{if}}, and a value already read whole inside {{with}} and {{range}}.
type dataWalker struct {
	all   bool
	paths map[string][]string
}

func (w *dataWalker) list(l *parse.ListNode, root bool) {
	if l == nil {
		return
	}
	for _, n := range l.Nodes {
		switch n := n.(type) {
		case *parse.ActionNode:
			w.pipe(n.Pipe, root)
		case *parse.IfNode:
			w.pipe(n.Pipe, root)
			w.list(n.List, root)
			w.list(n.ElseList, root)
		case *parse.WithNode:
			w.pipe(n.Pipe, root)
			w.list(n.List, false)
			w.list(n.ElseList, root)
		case *parse.RangeNode:
			w.pipe(n.Pipe, root)
			w.list(n.List, false)
			w.list(n.ElseList, root)
		case *parse.TemplateNode:
			w.all = true // refused by Compile; never guess
		}
	}
}

func (w *dataWalker) pipe(p *parse.PipeNode, root bool) {
	if p == nil {
		return
	}
	for _, cmd := range p.Cmds {
		for _, a := range cmd.Args {
			w.arg(a, root)
		}
	}
}

func (w *dataWalker) arg(a parse.Node, root bool) {
	switch a := a.(type) {
	case *parse.FieldNode:
		if root {
			w.add(a.Ident)
		}
	case *parse.DotNode:
		if root {
			w.all = true
		}
	case *parse.VariableNode:
		if a.Ident[0] == "$" {
			if len(a.Ident) == 1 {
				w.all = true
			} else {
				w.add(a.Ident[1:])
			}
		}
	case *parse.ChainNode:
		w.arg(a.Node, root)
	case *parse.PipeNode:
		w.pipe(a, root)
	}
}

// add records a path; only attributes have names under them, so longer paths are cut there.
func (w *dataWalker) add(ident []string) {
	p := ident
	if p[0] != "attributes" {
		p = p[:1]
	}
	w.paths[strings.Join(p, "\x00")] = slices.Clone(p)
}

// AppendKey appends to buf an encoding of the values rc gives at u's paths, such that two
// recipients with equal keys render alike (see DataUse). It reports false when a value is of a
// type it cannot encode (none that DecodeAttributes makes), or when u.All is set: then render.
func (u DataUse) AppendKey(buf []byte, rc *Recipient) ([]byte, bool) {
	if u.All {
		return buf, false
	}
	for _, p := range u.Paths {
		var v any
		switch p[0] {
		case "id":
			v = rc.ID
		case "email":
			v = rc.Email
		case "phone":
			v = rc.Phone
		case "locale":
			v = rc.Locale
		case "time_zone":
			v = rc.TimeZone
		case "external_id":
			v = rc.ExternalID
		case "created_at":
			if !rc.CreatedAt.IsZero() {
				v = rc.CreatedAt
			}
		case "unsubscribe_url":
			v = rc.UnsubscribeURL
		case "mirror_url":
			v = rc.MirrorURL
		case "attributes":
			var m any = rc.Attributes
			depth := 1
			for _, name := range p[1:] {
				mm, ok := m.(map[string]any)
				if !ok {
					break // the template errs or stops here, on this value, which is encoded
				}
				e, ok := mm[name]
				if !ok {
					m = missing{}
					break
				}
				m, depth = e, depth+1
			}
			buf = binary.AppendUvarint(buf, uint64(depth))
			v = m
		default:
			return buf, false
		}
		var ok bool
		if buf, ok = appendValue(buf, v); !ok {
			return buf, false
		}
	}
	return buf, true
}

// missing stands for a map key that is absent, which templates treat apart from a null.
type missing struct{}

// appendValue encodes v with a type tag, lengths before contents, map keys sorted.
func appendValue(buf []byte, v any) ([]byte, bool) {
	switch x := v.(type) {
	case nil:
		return append(buf, 'n'), true
	case missing:
		return append(buf, 'm'), true
	case bool:
		if x {
			return append(buf, 'T'), true
		}
		return append(buf, 'F'), true
	case int64:
		return binary.AppendVarint(append(buf, 'i'), x), true
	case float64:
		return binary.BigEndian.AppendUint64(append(buf, 'f'), math.Float64bits(x)), true
	case string:
		return append(binary.AppendUvarint(append(buf, 's'), uint64(len(x))), x...), true
	case time.Time:
		name, off := x.Zone()
		buf = binary.AppendVarint(append(buf, 't'), x.UnixNano())
		buf = binary.AppendVarint(buf, int64(off))
		buf = binary.AppendUvarint(buf, uint64(len(x.Location().String())))
		buf = append(buf, x.Location().String()...)
		return append(binary.AppendUvarint(buf, uint64(len(name))), name...), true
	case []any:
		buf = binary.AppendUvarint(append(buf, 'a'), uint64(len(x)))
		for _, e := range x {
			var ok bool
			if buf, ok = appendValue(buf, e); !ok {
				return buf, false
			}
		}
		return buf, true
	case map[string]any:
		if x == nil {
			return append(buf, 'N'), true
		}
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		buf = binary.AppendUvarint(append(buf, 'o'), uint64(len(x)))
		for _, k := range keys {
			buf = append(binary.AppendUvarint(buf, uint64(len(k))), k...)
			var ok bool
			if buf, ok = appendValue(buf, x[k]); !ok {
				return buf, false
			}
		}
		return buf, true
	}
	return buf, false
}

// Check renders rc as Render does with no tracking and returns the error Render would return,
// without building the message: the subject and a written text are counted, not kept, links
// are not rewritten and no text is derived from the HTML (neither can fail).
func (r *Renderer) Check(rc *Recipient) error {
	if r.err != nil {
		return r.err
	}
	r.fill(rc)
	max := r.tpl.opts.MaxPartSize
	if err := r.check(partSubject, r.tpl.subjectPlan, r.subject, &countWriter{max: max, part: partSubject}); err != nil {
		return err
	}
	if r.html != nil {
		if err := r.exec(partHTML, r.tpl.htmlPlan, r.html, &r.raw); err != nil {
			return err
		}
		if r.finishedSize(r.raw.Bytes()) > max {
			return &RenderError{Part: partHTML, Msg: fmt.Sprintf("the rendered HTML is over the %d-byte limit", max), Err: ErrTooLarge}
		}
	}
	if r.text != nil {
		return r.check(partText, r.tpl.textPlan, r.text, &countWriter{max: max, part: partText})
	}
	return nil
}

func (r *Renderer) check(part string, p plan, t executor, w *countWriter) error {
	if p != nil && !r.noPlans {
		r.subj.Reset()
		if p.exec(&r.subj, r.root, &r.scratch) && r.subj.Len() <= w.max {
			return nil
		}
	}
	r.b.steps = 0
	if err := t.Execute(w, r.root); err != nil {
		return renderError(part, err)
	}
	return nil
}

// finishedSize is the size of the HTML finishHTML makes from raw with no link rewriter and no
// pixel: markers dropped, kept comments restored.
func (r *Renderer) finishedSize(raw []byte) int {
	n := 0
	for {
		i := bytes.IndexByte(raw, 0)
		if i < 0 {
			return n + len(raw)
		}
		n += i
		raw = raw[i+1:]
		end := bytes.IndexByte(raw, 0)
		if end < 1 {
			continue
		}
		kind, num := raw[0], atoi(raw[1:end])
		raw = raw[end+1:]
		if kind == markComment && num < len(r.tpl.comments) {
			n += len(r.tpl.comments[num])
		}
	}
}

// countWriter discards what it is given and fails as limitWriter does when the total goes over max.
type countWriter struct {
	n, max int
	part   string
}

func (w *countWriter) Write(p []byte) (int, error) {
	if w.n+len(p) > w.max {
		return 0, fmt.Errorf("the rendered %s is over the %d-byte limit: %w", w.part, w.max, ErrTooLarge)
	}
	w.n += len(p)
	return len(p), nil
}
