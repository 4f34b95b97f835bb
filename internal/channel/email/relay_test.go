package email

import (
	"strings"
	"testing"
)

func TestParseRelays(t *testing.T) {
	got, err := ParseRelays("smtp://mail.example.com, smtps://u%40x:p%2Cw@smtp.example.net?max_conns=4&rate=150.5 ," +
		"smtp://127.0.0.1:2525?starttls=off&max_per_conn=100,smtp://relay:587?starttls=require")
	if err != nil {
		t.Fatal(err)
	}
	want := []Relay{
		{Addr: "mail.example.com:25", TLS: TLSOpportunistic},
		{Addr: "smtp.example.net:465", TLS: TLSImplicit, Username: "u@x", Password: "p,w", MaxConns: 4, Rate: 150.5},
		{Addr: "127.0.0.1:2525", TLS: TLSNone, MaxPerConn: 100},
		{Addr: "relay:587", TLS: TLSRequired},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d relays, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("relay %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	if s := got[1].String(); s != "smtps://u@x@smtp.example.net:465" {
		t.Errorf("String() = %q", s)
	}
}

func TestParseRelaysErrors(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", "names no relay"},
		{"http://x", "scheme"},
		{"smtp://", "no host"},
		{"smtp://h?max_conns=0", "max_conns"},
		{"smtp://h?rate=-1", "rate"},
		{"smtp://h?rate=NaN", "rate"},
		{"smtp://h?rate=Inf", "rate"},
		{"smtp://h?starttls=maybe", "starttls"},
		{"smtps://h?starttls=require", "does not apply"},
		{"smtp://h?bogus=1", "unknown option"},
		{"smtp://user:hunter2@h?bogus=1", "xxxxx"},
	} {
		_, err := ParseRelays(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseRelays(%q) = %v, want an error mentioning %q", tc.in, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "hunter2") {
			t.Errorf("error leaks the password: %v", err)
		}
	}
}
