package email

import (
	"fmt"
	"strings"
	"testing"

	"github.com/heraldhq/herald/internal/channel"
	"github.com/heraldhq/herald/internal/channel/email/smtptest"
)

func TestEnvelopeAddress(t *testing.T) {
	for _, tc := range []struct {
		in, want  string
		utf8Local bool
	}{
		{"Anna.Smith@Example.com", "Anna.Smith@Example.com", false}, // ASCII: as it is
		{"anna@bücher.de", "anna@xn--bcher-kva.de", false},
		{"anna@BÜCHER.de", "anna@xn--bcher-kva.de", false},
		{"anna@münchen.bücher.de", "anna@xn--mnchen-3ya.xn--bcher-kva.de", false},
		{"jörg@bücher.de", "jörg@xn--bcher-kva.de", true},
		{"用户@example.com", "用户@example.com", true},
		{"user@例え.jp", "user@xn--r8jz45g.jp", false},
	} {
		got, err := EnvelopeAddress(tc.in)
		u := needsUTF8("", got) // what Send decides from the address given
		if err != nil || got != tc.want || u != tc.utf8Local {
			t.Errorf("EnvelopeAddress(%q) = %q, %v, %v; want %q, %v", tc.in, got, u, err, tc.want, tc.utf8Local)
		}
	}
	for _, in := range []string{"anna@bü cher.de", "anna@bü_cher.de", "\xffanna@bücher.de", "bücher.de"} {
		if got, err := EnvelopeAddress(in); err == nil {
			t.Errorf("EnvelopeAddress(%q) = %q, want an error", in, got)
		} else if !strings.Contains(err.Error(), in) && in != "\xffanna@bücher.de" {
			t.Errorf("EnvelopeAddress(%q): error %q does not name the address", in, err)
		}
	}
}

func TestBuildInternationalisedRecipient(t *testing.T) {
	c := &Composer{Domain: "herald.test"}
	data, err := c.Build(nil, &Email{
		From: Address{Name: "Shop", Addr: "news@shop.example"}, To: Address{Addr: "jörg@xn--bcher-kva.de"},
		Subject: "Hallo", Text: []byte("Hallo Jörg"),
	})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), "\r\nTo: <jörg@xn--bcher-kva.de>\r\n") {
		t.Errorf("To header not the UTF-8 address (RFC 6532):\n%s", data)
	}
	for _, bad := range []Email{
		{From: Address{Addr: "news@shop.example"}, To: Address{Addr: "jörg@bücher.de"}},   // domain not in ASCII form
		{From: Address{Addr: "jörg@shop.example"}, To: Address{Addr: "anna@example.com"}}, // sender beyond ASCII
		{From: Address{Addr: "news@shop.example"}, To: Address{Addr: "jö rg@example.com"}},
	} {
		bad.Subject, bad.Text = "x", []byte("x")
		if _, err := c.Build(nil, &bad); err == nil {
			t.Errorf("Build with From %q, To %q: no error", bad.From.Addr, bad.To.Addr)
		}
	}
}

// TestSMTPUTF8: an internationalised local part goes out with MAIL FROM's
// SMTPUTF8 parameter to a relay that offers it, and fails, saying why, at
// one that does not, while the ASCII messages beside it go out plainly.
func TestSMTPUTF8(t *testing.T) {
	for _, tc := range smtpModes {
		for _, offered := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/offered=%v", tc.name, offered), func(t *testing.T) {
				s := smtptest.Start(t, smtptest.Options{NoPipelining: tc.noPipelining, SMTPUTF8: offered})
				tr := newTestTransport(t, Options{}, plainRelay(s, 2))
				msgs := testMessages(4, rcptN)
				msgs[1].To = "jörg@xn--bcher-kva.de"
				out := send(t, tr, msgs)
				for i := range out {
					if i == 1 && !offered {
						wantStatus(t, out, i, channel.HardFail)
						if out[i].Code != 0 || !strings.Contains(out[i].Text, "SMTPUTF8") {
							t.Errorf("out[1] = %+v; want decided here (code 0), naming SMTPUTF8", out[i])
						}
						continue
					}
					wantStatus(t, out, i, channel.Sent)
				}
				var utf8Seen bool
				for _, m := range s.Messages() {
					if m.UTF8 != (m.To[0] == msgs[1].To) {
						t.Errorf("message to %v: SMTPUTF8 %v", m.To, m.UTF8)
					}
					utf8Seen = utf8Seen || m.UTF8
				}
				if utf8Seen != offered {
					t.Errorf("SMTPUTF8 used: %v; relay offers it: %v", utf8Seen, offered)
				}
			})
		}
	}
}
