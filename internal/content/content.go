// Package content holds a delivery's message content and its personalisation.
//
// A Content (sender, reply-to, subject, HTML, text) is compiled ONCE per delivery into a Template, and
// rendered per recipient on the sending hot path by a Renderer, one per worker goroutine.
//
// # Template language
//
// The subject and text are Go text/template templates and the HTML is a Go html/template template
// (values are escaped for their HTML, attribute, URL, JS or CSS context). Every name is lower-case
// snake_case, the data given to a template is:
//
//	{{.email}} {{.phone}} {{.locale}} {{.time_zone}} {{.external_id}} {{.id}} {{.created_at}}
//	{{.attributes.first_name}}  the profile's free attributes, by their JSON name
//	{{.unsubscribe_url}}        the recipient's opt-out page, filled by the engine
//	{{.mirror_url}}             the recipient's mirror page (web version), filled by the engine
//
// A missing attribute renders as nothing. A misspelt top-level name ({{.first_name}}) is refused when
// compiling, with a hint. Helper functions, besides Go's comparisons and logic (eq ne lt le gt ge and
// or not len index slice print printf println urlquery):
//
//	default X V       V, or X when V is missing, empty text or an empty list: {{.attributes.first_name | default "friend"}}
//	upper V, lower V  V in capitals or small letters
//	title V           V with the first letter of every word in capitals
//	truncate N V      V cut to at most N characters, the last being "…" when cut
//	date LAYOUT V     the date V (a time, "2006-01-02", RFC 3339 text, or Unix seconds) written with LAYOUT
//
// A date LAYOUT that contains a digit is a Go layout ("2006-01-02", "02/01/2006 15:04"); one without
// digits uses these tokens, anything else being copied: YYYY YY (year), MMMM MMM MM M (month: January,
// Jan, 01, 1), DD D (day), dddd ddd (weekday: Monday, Mon), HH (00-23 hour), hh h (1-12 hour), mm
// (minute), ss (second), A (AM/PM); text in single quotes is copied as is. Example:
// {{date "D MMMM YYYY" .created_at}} writes "2 January 2025".
//
// {{template}}, {{define}} and {{block}} are refused, and so are call, html and js: a template reaches
// only the data given to it, which holds no functions and no methods that do I/O.
//
// # Limits
//
// Rendering is bounded in memory and time whatever the template: each rendered part is capped
// (Options.MaxPartSize, 1 MiB by default) by a writer that aborts the render; loops are charged
// before they run, as their length times the size of their body, against a per-part budget
// (Options.MaxSteps); helper results are capped at 64 KiB and charged by size; ranges over a number
// written in the template above 1,000 are refused when compiling; sub-templates (the only recursion)
// do not exist.
package content

import (
	"errors"
	"fmt"
	"net/mail"
	"strings"
)

// Content is the message of one delivery, as stored in the delivery's content JSON.
type Content struct {
	FromName    string `json:"from_name"`
	FromAddress string `json:"from_address"`
	ReplyTo     string `json:"reply_to,omitempty"`
	Subject     string `json:"subject"`
	HTML        string `json:"html,omitempty"`
	// Text is the plain-text part. When empty and HTML is set, the text is derived from each
	// recipient's rendered HTML.
	Text     string   `json:"text,omitempty"`
	Tracking Tracking `json:"tracking,omitempty"`
}

// Tracking holds the delivery's tracking choices. The engine reads it; this package only keeps it.
type Tracking struct {
	// DisableOpens leaves out the open pixel.
	DisableOpens bool `json:"disable_opens,omitempty"`
	// DisableClicks leaves every link as written.
	DisableClicks bool `json:"disable_clicks,omitempty"`
	// UntrackedLinks lists link indexes (see Template.Links) to leave as written.
	UntrackedLinks []int `json:"untracked_links,omitempty"`
}

// Options are the limits a Template renders under. Zero fields take their defaults.
type Options struct {
	// MaxSourceSize caps each part's template source in bytes. Default 512 KiB.
	MaxSourceSize int
	// MaxPartSize caps each rendered part in bytes; a render over it fails. Default 1 MiB.
	MaxPartSize int
	// MaxSteps caps the loop work of rendering one part: a range costs its length times the size of
	// its body, and helpers cost one step plus one per 256 bytes they return. Default 200,000.
	MaxSteps int
	// MaxRangeLiteral is the largest number a template may range over when written as a literal
	// ({{range 12}}). Default 1,000.
	MaxRangeLiteral int
}

const (
	defaultMaxSourceSize   = 512 << 10
	defaultMaxPartSize     = 1 << 20
	defaultMaxSteps        = 200_000
	defaultMaxRangeLiteral = 1000
	// maxValueSize caps any text a helper builds, so loops of assignments cannot grow a value
	// without bound before it reaches the capped writer.
	maxValueSize = 64 << 10
)

func (o Options) withDefaults() Options {
	if o.MaxSourceSize <= 0 {
		o.MaxSourceSize = defaultMaxSourceSize
	}
	if o.MaxPartSize <= 0 {
		o.MaxPartSize = defaultMaxPartSize
	}
	if o.MaxSteps <= 0 {
		o.MaxSteps = defaultMaxSteps
	}
	if o.MaxRangeLiteral <= 0 {
		o.MaxRangeLiteral = defaultMaxRangeLiteral
	}
	return o
}

// ErrInvalid is wrapped by every error Validate returns.
var ErrInvalid = errors.New("invalid content")

// Validate reports structural errors: missing or malformed addresses, line breaks in the sender
// name, and a message with no body. An empty subject is not an error here: the preparation's
// control rules warn about it.
func (c Content) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...)))
	}
	switch {
	case strings.TrimSpace(c.FromAddress) == "":
		bad("the sender address (from_address) is missing")
	default:
		if err := checkAddress(c.FromAddress); err != nil {
			bad("the sender address (from_address) %q is not a valid email address: %v", c.FromAddress, err)
		}
	}
	if c.ReplyTo != "" {
		if err := checkAddress(c.ReplyTo); err != nil {
			bad("the reply-to address %q is not a valid email address: %v", c.ReplyTo, err)
		}
	}
	if strings.ContainsAny(c.FromName, "\r\n") {
		bad("the sender name (from_name) must be on one line")
	}
	if strings.ContainsAny(c.Subject, "\r\n") {
		bad("the subject must be on one line")
	}
	if strings.TrimSpace(c.HTML) == "" && strings.TrimSpace(c.Text) == "" {
		bad("the message has no body: write the HTML, the text, or both")
	}
	for _, p := range []struct{ name, src string }{{"subject", c.Subject}, {"HTML", c.HTML}, {"text", c.Text}} {
		if strings.IndexByte(p.src, 0) >= 0 {
			bad("the %s contains a NUL character", p.name)
		}
	}
	return errors.Join(errs...)
}

// checkAddress accepts a bare address (user@example.com), the only form a From or Reply-To field
// of Content holds: the display name lives in FromName.
func checkAddress(s string) error {
	a, err := mail.ParseAddress(s)
	if err != nil {
		return fmt.Errorf("parse: %w", err)
	}
	if a.Name != "" || a.Address != strings.TrimSpace(s) {
		return errors.New("write the address alone, without a name or <>")
	}
	at := strings.LastIndexByte(a.Address, '@')
	if at < 0 || !strings.Contains(a.Address[at+1:], ".") {
		return errors.New("the domain must be a full domain name such as example.com")
	}
	return nil
}
