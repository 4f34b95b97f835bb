package content

import (
	"net/url"
	"regexp"
	"strings"
)

// optOutRe matches words that say a link unsubscribes, in the languages Herald's users write.
var optOutRe = regexp.MustCompile(`(?i)unsubscri|opt[- ]?out|d[ée]sabonn|d[ée]sinscri|abmelden|darse de baja|cancelar suscri`)

// HasUnsubscribeLink reports whether the message offers a way to opt out: {{.unsubscribe_url}}
// anywhere, or an HTML link whose URL or text says unsubscribe or opt-out. Preparation's control
// rules warn when it is false.
func (t *Template) HasUnsubscribeLink() bool {
	if t.usesField("unsubscribe_url") {
		return true
	}
	for _, l := range t.links {
		if l.Kind == LinkUnsubscribe || optOutRe.MatchString(l.URL) || optOutRe.MatchString(l.Text) {
			return true
		}
	}
	return false
}

// actionRe matches one template action.
var actionRe = regexp.MustCompile(`\{\{.*?\}\}`)

// MalformedURLs returns, in document order, the hrefs that are not valid absolute http, https,
// mailto or tel URLs once each template action in them is taken as a plain word. An href that
// starts with an action is taken from data and left out: it can only be judged when rendered.
func (t *Template) MalformedURLs() []string {
	var bad []string
	for _, l := range t.links {
		raw := strings.TrimSpace(l.URL)
		if strings.HasPrefix(raw, "{{") {
			continue
		}
		if !validURL(actionRe.ReplaceAllString(raw, "x")) {
			bad = append(bad, l.URL)
		}
	}
	return bad
}

func validURL(s string) bool {
	if len(s) > 4 && strings.EqualFold(s[:4], "tel:") {
		return strings.Trim(s[4:], "+0123456789-. ()") == "" && strings.TrimSpace(s[4:]) != ""
	}
	if s == "" || strings.ContainsAny(s, " \t\r\n<>\"") {
		return false
	}
	u, err := url.Parse(s)
	if err != nil {
		return false
	}
	switch strings.ToLower(u.Scheme) {
	case "http", "https":
		host := u.Hostname()
		return host != "" && !strings.HasPrefix(host, ".") && !strings.HasSuffix(host, "..") &&
			(strings.Contains(host, ".") || host == "localhost")
	case "mailto":
		addr := u.Opaque
		if i := strings.IndexByte(addr, '?'); i >= 0 {
			addr = addr[:i]
		}
		at := strings.IndexByte(addr, '@')
		return at > 0 && at < len(addr)-1
	}
	return false
}
