package profile

import "testing"

func TestNormalizeEmail(t *testing.T) {
	good := []struct{ in, key, domain string }{
		{"Marie.Curie@Example.FR", "Marie.Curie@example.fr", "example.fr"},
		{"  a+tag@sub.example.com ", "a+tag@sub.example.com", "sub.example.com"},
		{"o'brien@example.ie", "o'brien@example.ie", "example.ie"},
		{"josé@exämple.de", "josé@exämple.de", "exämple.de"},
	}
	for _, g := range good {
		_, key, dom, err := NormalizeEmail(g.in)
		if err != nil || key != g.key || dom != g.domain {
			t.Errorf("NormalizeEmail(%q) = %q, %q, %v; want %q, %q", g.in, key, dom, err, g.key, g.domain)
		}
	}
	bad := []string{"", "plain", "@example.com", "a@", "a@b", "a@@b.com", "a b@example.com", "a..b@example.com",
		".a@example.com", "a@-example.com", "a@example..com", "a@1.2.3.4", "a@exa_mple.com", "a\"b@example.com",
		"x@" + string(make([]byte, 250)) + ".com", "a@example.com.", "a@.example.com", "a@example.c-"}
	for _, b := range bad {
		if _, _, _, err := NormalizeEmail(b); err == nil {
			t.Errorf("NormalizeEmail(%q) accepted a bad address", b)
		}
	}
}

// TestNormalizeEmailAllocations: an address whose domain is already in lower case, as most
// are, is checked without allocating (the import and the engine's quarantine check call this
// for every row).
func TestNormalizeEmailAllocations(t *testing.T) {
	if n := testing.AllocsPerRun(100, func() { _, _, _, _ = NormalizeEmail("marie.curie@mail.example.fr") }); n != 0 {
		t.Errorf("NormalizeEmail allocates %v times for a lower-case domain, want 0", n)
	}
}

func TestNormalizePhone(t *testing.T) {
	if p, err := NormalizePhone("+33 (0)6-12.34.56.78"); err != nil || p != "+330612345678" {
		t.Errorf("got %q %v", p, err)
	}
	if p, err := NormalizePhone("+1 415 555 0100"); err != nil || p != "+14155550100" {
		t.Errorf("got %q %v", p, err)
	}
	for _, b := range []string{"0612345678", "+0123456789", "+12", "+1234567890123456", "+33 6 12 x4"} {
		if _, err := NormalizePhone(b); err == nil {
			t.Errorf("NormalizePhone(%q) accepted", b)
		}
	}
}

func TestTimeZoneAndLocale(t *testing.T) {
	if err := CheckTimeZone("Europe/Paris"); err != nil {
		t.Error(err)
	}
	for _, z := range []string{"Mars/Olympus", "", "Local", "../../etc/passwd"} {
		if CheckTimeZone(z) == nil {
			t.Errorf("zone %q accepted", z)
		}
	}
	if l, err := NormalizeLocale("fr_fr"); err != nil || l != "fr-FR" {
		t.Errorf("locale = %q %v", l, err)
	}
	if _, err := NormalizeLocale("not a locale!"); err == nil {
		t.Error("bad locale accepted")
	}
}
