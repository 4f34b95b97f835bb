package email

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// EnvelopeAddress returns addr as it goes into the envelope and the To header: a domain with
// letters beyond ASCII (an internationalised domain name, RFC 5890) in its ASCII form
// ("bücher.de" becomes "xn--bcher-kva.de"), which every server takes, and an ASCII address as
// it is. A local part beyond ASCII stays (RFC 6531): such a message can only go to a relay that
// offers SMTPUTF8, and Send fails it where the relay does not (needsUTF8).
func EnvelopeAddress(addr string) (string, error) {
	if ascii(addr) {
		return addr, nil
	}
	at := strings.LastIndexByte(addr, '@')
	if at <= 0 || !utf8.ValidString(addr) {
		return "", fmt.Errorf("%q is not a valid email address", addr)
	}
	dom, err := ASCIIDomain(addr[at+1:])
	if err != nil {
		return "", fmt.Errorf("the domain of %q is not a valid internationalised domain name: %w", addr, err)
	}
	return addr[:at+1] + dom, nil
}

// ASCIIDomain returns domain in the ASCII form messages go to: its A-labels when it has
// letters beyond ASCII, else as it is.
func ASCIIDomain(domain string) (string, error) {
	if ascii(domain) {
		return domain, nil
	}
	return idna.Lookup.ToASCII(domain)
}

// SameAddress reports whether a and b name one mailbox as sent: equal but for
// the case of ASCII letters once their domains are in ASCII form, so that a
// report naming "anna@xn--bcher-kva.de" matches "anna@bücher.de".
func SameAddress(a, b string) bool {
	if strings.EqualFold(a, b) {
		return true
	}
	ea, errA := EnvelopeAddress(a)
	eb, errB := EnvelopeAddress(b)
	return errA == nil && errB == nil && strings.EqualFold(ea, eb)
}

// UnicodeAddress returns addr with a domain in ASCII form that has A-labels
// ("xn--bcher-kva.de") in its Unicode form ("bücher.de"), as profiles keep
// it; any other address as it is.
func UnicodeAddress(addr string) string {
	at := strings.LastIndexByte(addr, '@')
	if at <= 0 || !strings.Contains(strings.ToLower(addr[at:]), "xn--") {
		return addr
	}
	u, err := idna.Lookup.ToUnicode(addr[at+1:])
	if err != nil {
		return addr
	}
	return addr[:at+1] + u
}

// ascii reports whether s is all ASCII.
func ascii(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// needsUTF8 reports an envelope that SMTPUTF8 must carry (RFC 6531).
func needsUTF8(from, to string) bool { return !ascii(to) || !ascii(from) }

// utf8Param is the MAIL FROM parameter an envelope needs: " SMTPUTF8" or "".
func utf8Param(from, to string) string {
	if needsUTF8(from, to) {
		return " SMTPUTF8"
	}
	return ""
}
