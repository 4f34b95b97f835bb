package profile

import (
	"fmt"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/language"
)

// Limits on profile data, so one bad record cannot bloat the database or a message.
const (
	MaxEmailLength      = 254
	MaxAttributeKey     = 64
	MaxAttributesBytes  = 64 << 10
	MaxPushTokens       = 20
	MaxPushTokenLength  = 4096
	maxShortFieldLength = 255
)

// NormalizeEmail checks an email address and returns it as given (trimmed), its match key
// (local part as given, domain lower-cased) and its lower-cased domain. The check is the
// practical subset of RFC 5321 that real mailboxes use: a dot-atom local part of at most 64
// octets, and a domain of at least two dot-separated labels of letters, digits and hyphens
// (internationalised letters allowed) whose last label is not all digits.
func NormalizeEmail(s string) (email, key, domain string, err error) {
	email = strings.TrimSpace(s)
	if email == "" {
		return "", "", "", fmt.Errorf("the email address is empty")
	}
	if len(email) > MaxEmailLength {
		return "", "", "", fmt.Errorf("the email address is longer than %d characters", MaxEmailLength)
	}
	at := strings.LastIndexByte(email, '@')
	if at <= 0 || at == len(email)-1 {
		return "", "", "", fmt.Errorf("%q is not an email address: it needs one @ between a name and a domain", email)
	}
	local, dom := email[:at], email[at+1:]
	if len(local) > 64 {
		return "", "", "", fmt.Errorf("%q is not a valid email address: the part before @ is longer than 64 characters", email)
	}
	if local[0] == '.' || local[len(local)-1] == '.' || strings.Contains(local, "..") {
		return "", "", "", fmt.Errorf("%q is not a valid email address: dots cannot start, end or double in the part before @", email)
	}
	for _, r := range local {
		if !localRune(r) {
			return "", "", "", fmt.Errorf("%q is not a valid email address: %q is not allowed before @", email, r)
		}
	}
	if err := CheckDomain(dom); err != nil {
		return "", "", "", fmt.Errorf("%q is not a valid email address: %w", email, err)
	}
	domain = strings.ToLower(dom)
	key = email
	if domain != dom {
		key = local + "@" + domain
	}
	return email, key, domain, nil
}

// CheckDomain reports what is wrong with d as the domain of an email address, in any case: it
// needs at least two dot-separated labels of letters, digits and hyphens (internationalised
// letters allowed), none empty, longer than 63 octets or starting or ending with a hyphen, and
// a last label that is not all digits. It allocates nothing for a valid domain: it runs for
// every imported row and every address the engine quarantines.
func CheckDomain(d string) error {
	if !strings.Contains(d, ".") {
		return fmt.Errorf("the domain %q has no dot", d)
	}
	var label string
	for rest, more := d, true; more; {
		label, rest, more = strings.Cut(rest, ".")
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("the domain %q is malformed", d)
		}
		for _, r := range label {
			if !(r == '-' || unicode.IsLetter(r) || unicode.IsDigit(r)) {
				return fmt.Errorf("%q is not allowed in the domain", r)
			}
		}
	}
	if strings.Trim(label, "0123456789") == "" {
		return fmt.Errorf("the domain %q ends in a number", d)
	}
	return nil
}

func localRune(r rune) bool {
	if r < utf8.RuneSelf {
		return r > ' ' && r < 0x7f && !strings.ContainsRune(`()<>[]:;@\,"`, r)
	}
	return unicode.IsLetter(r) || unicode.IsDigit(r) // RFC 6531 internationalised local parts
}

// NormalizePhone returns a phone number in E.164 form (+ and 8 to 15 digits), accepting the
// spaces, dots, dashes and parentheses people write numbers with.
func NormalizePhone(s string) (string, error) {
	s = strings.TrimSpace(s)
	var b strings.Builder
	for i, r := range s {
		switch {
		case r == '+' && i == 0:
			b.WriteByte('+')
		case r >= '0' && r <= '9':
			b.WriteRune(r)
		case r == ' ' || r == '-' || r == '.' || r == '(' || r == ')':
		default:
			return "", fmt.Errorf("%q is not a phone number: %q is not allowed", s, r)
		}
	}
	p := b.String()
	if !strings.HasPrefix(p, "+") {
		return "", fmt.Errorf("%q is not in international (E.164) form: start it with + and the country code", s)
	}
	if n := len(p) - 1; n < 8 || n > 15 || p[1] == '0' {
		return "", fmt.Errorf("%q is not a valid E.164 number: it needs 8 to 15 digits after +, not starting with 0", s)
	}
	return p, nil
}

var zones sync.Map // name → error (nil for a valid zone)

// CheckTimeZone checks an IANA time zone name such as Europe/Paris.
func CheckTimeZone(name string) error {
	if v, ok := zones.Load(name); ok {
		if v == nil {
			return nil
		}
		return v.(error)
	}
	var err error
	if name == "" || name == "Local" || len(name) > 64 {
		err = fmt.Errorf("%q is not an IANA time zone (like Europe/Paris)", name)
	} else if _, lerr := time.LoadLocation(name); lerr != nil {
		err = fmt.Errorf("%q is not an IANA time zone (like Europe/Paris)", name)
	}
	if err == nil {
		zones.Store(name, nil)
	} else {
		zones.Store(name, err)
	}
	return err
}

// NormalizeLocale returns a BCP 47 language tag in canonical form (fr-FR, pt-BR).
func NormalizeLocale(s string) (string, error) {
	tag, err := language.Parse(strings.ReplaceAll(strings.TrimSpace(s), "_", "-"))
	if err != nil {
		return "", fmt.Errorf("%q is not a language tag (like fr-FR or en)", s)
	}
	return tag.String(), nil
}

// CheckAttributeKey checks the name of a free attribute.
func CheckAttributeKey(k string) error {
	if k == "" || len(k) > MaxAttributeKey {
		return fmt.Errorf("attribute names must have 1 to %d characters, not %q", MaxAttributeKey, k)
	}
	for _, r := range k {
		if !(unicode.IsLetter(r) || unicode.IsDigit(r) || r == '_' || r == '-') {
			return fmt.Errorf("attribute name %q may hold only letters, digits, '_' and '-'", k)
		}
	}
	return nil
}
