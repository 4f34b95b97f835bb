package tracking

import (
	"fmt"
	"math"
	"net/url"
	"strings"
)

// The paths of the tracking endpoints; the token follows.
const (
	PathOpen   = "/t/o/"
	PathClick  = "/t/c/"
	PathMirror = "/t/m/"
	PathOptOut = "/t/u/"
)

// Links builds tracking URLs under Herald's public base URL (HERALD_PUBLIC_URL). It is safe for
// concurrent use.
type Links struct {
	base   string // no trailing slash
	signer *Signer
}

// NewLinks returns a URL builder for the public base URL, which must be an absolute http or https
// URL without query or fragment; a path prefix (https://example.com/herald) is kept.
func NewLinks(publicURL string, s *Signer) (*Links, error) {
	u, err := url.Parse(publicURL)
	if err != nil {
		return nil, fmt.Errorf("tracking: public URL %q: %w", publicURL, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return nil, fmt.Errorf("tracking: public URL %q must be http(s)://host[/path], without user, query or fragment", publicURL)
	}
	return &Links{base: strings.TrimRight(u.Scheme+"://"+u.Host+u.EscapedPath(), "/"), signer: s}, nil
}

// Recipient returns the URL builder of one sending-log row.
func (l *Links) Recipient(logID, deliveryID int64) (Recipient, error) {
	if logID < 0 || deliveryID < 0 {
		return Recipient{}, fmt.Errorf("tracking: negative id (log %d, delivery %d)", logID, deliveryID)
	}
	return Recipient{l: l, logID: logID, deliveryID: deliveryID}, nil
}

// Recipient builds the tracking URLs of one recipient of one delivery: the open pixel, the mirror
// page, the opt-out page and the tracked links. Get one from Links.Recipient.
type Recipient struct {
	l                 *Links
	logID, deliveryID int64
}

// Open returns the open pixel's URL.
func (r Recipient) Open() string { return r.must(PathOpen, KindOpen) }

// Mirror returns the mirror page's URL, for {{.mirror_url}}.
func (r Recipient) Mirror() string { return r.must(PathMirror, KindMirror) }

// OptOut returns the opt-out URL, for {{.unsubscribe_url}} and the List-Unsubscribe header.
func (r Recipient) OptOut() string { return r.must(PathOptOut, KindOptOut) }

// must builds a URL whose ref was checked when the Recipient was made, so it cannot fail.
func (r Recipient) must(path string, k Kind) string {
	u, err := r.build(path, Ref{LogID: r.logID, DeliveryID: r.deliveryID, Link: NoLink, Kind: k})
	if err != nil {
		panic("tracking: unreachable: " + err.Error())
	}
	return u
}

// Click returns the tracked URL of link index. personalURL is the URL rendered for this
// recipient when the link is personalised, signed into the token, and empty otherwise.
func (r Recipient) Click(index int, personalURL string) (string, error) {
	if index < 0 || index >= math.MaxUint16 {
		return "", fmt.Errorf("tracking: link index %d is out of range", index)
	}
	return r.build(PathClick, Ref{LogID: r.logID, DeliveryID: r.deliveryID, Link: uint16(index), Kind: KindClick, URL: personalURL})
}

func (r Recipient) build(path string, ref Ref) (string, error) {
	// Most URLs fit the stack buffer, so that the string is their one allocation.
	var buf [160]byte
	b := buf[:0]
	if n := len(r.l.base) + len(path) + 40 + len(ref.URL)*4/3; n > len(buf) {
		b = make([]byte, 0, n)
	}
	b = append(b, r.l.base...)
	b = append(b, path...)
	b, err := r.l.signer.AppendToken(b, ref)
	if err != nil {
		return "", err
	}
	return string(b), nil
}

// Rewriter returns the renderer's link rewriter (content.RenderOptions.LinkRewriter) for this
// recipient, given the delivery's links by index. A tracked link becomes its /t/c/ URL, carrying
// the rendered URL when the link is personalised; every other link is left as written: links
// marked never, the mirror and opt-out links (already tracking URLs), indexes the list does not
// know, and personalised URLs that are not http(s) or longer than MaxURLLen.
func (r Recipient) Rewriter(links []Link) func(index int, url string) string {
	return func(index int, rendered string) string {
		if index < 0 || index >= len(links) || links[index].Mode != ModeTracked {
			return rendered
		}
		personal := ""
		if links[index].Personalised {
			personal = rendered
		}
		u, err := r.Click(index, personal)
		if err != nil {
			return rendered
		}
		return u
	}
}
