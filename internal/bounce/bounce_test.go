package bounce

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func parseFile(t *testing.T, name string) *Report {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rep, err := Parse(f)
	if err != nil {
		t.Fatalf("Parse(%s): %v", name, err)
	}
	return rep
}

func hardString(h *bool) string {
	if h == nil {
		return "null"
	}
	if *h {
		return "hard"
	}
	return "soft"
}

// TestParseFormats covers each format Parse reads, with small hand-written bounces.
func TestParseFormats(t *testing.T) {
	type want struct {
		recipient, status string
		reply             int
		reason            Reason
		hard              string
	}
	tests := []struct {
		file    string
		kind    Kind
		results []want
		origID  string
	}{
		{"dsn-postfix.eml", KindDSN, []want{
			{"alice@dest.example", "5.1.1", 550, ReasonUserUnknown, "hard"},
			{"bob@dest.example", "4.2.2", 452, ReasonMailboxFull, "soft"},
		}, "m1@sender.example"},
		{"arf.eml", KindFeedback, []want{{"carol@isp.example", "", 0, ReasonFeedback, "null"}}, "m2@sender.example"},
		{"autoreply.eml", KindAutoReply, []want{{"dave@corp.example", "", 0, ReasonVacation, "null"}}, ""},
		{"qmail.eml", KindDSN, []want{{"erin@far.example", "5.2.2", 552, ReasonMailboxFull, "soft"}}, "m3@sender.example"},
		{"exim.eml", KindDSN, []want{{"frank@gone.example", "", 0, ReasonHostUnknown, "hard"}}, "m4@sender.example"},
		{"exchange.eml", KindDSN, []want{{"grace@corp.example", "", 0, ReasonUserUnknown, "hard"}}, ""},
		{"sendmail.eml", KindDSN, []want{{"heidi@blocked.example", "5.7.1", 554, ReasonBlocked, "soft"}}, ""},
		{"garbage.eml", KindUnknown, nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			rep := parseFile(t, tt.file)
			if rep.Kind != tt.kind {
				t.Errorf("Kind = %q, want %q", rep.Kind, tt.kind)
			}
			if len(rep.Results) != len(tt.results) {
				t.Fatalf("got %d results %+v, want %d", len(rep.Results), rep.Results, len(tt.results))
			}
			for i, w := range tt.results {
				g := rep.Results[i]
				got := want{g.Recipient, g.Status, g.ReplyCode, g.Reason, hardString(g.Hard)}
				if got != w {
					t.Errorf("result %d = %+v, want %+v (diagnostic %q)", i, got, w, g.Diagnostic)
				}
			}
			if rep.OriginalMessageID != tt.origID {
				t.Errorf("OriginalMessageID = %q, want %q", rep.OriginalMessageID, tt.origID)
			}
		})
	}
}

func TestEnvelopeAddresses(t *testing.T) {
	rep := parseFile(t, "dsn-postfix.eml")
	got := strings.Join(rep.EnvelopeAddresses(), ",")
	if got != "b+tok123@bounces.example.com" {
		t.Errorf("EnvelopeAddresses = %q", got)
	}
	if rep.OriginalFrom != "news@sender.example" || strings.Join(rep.OriginalTo, ",") != "alice@dest.example" {
		t.Errorf("original from/to = %q %q", rep.OriginalFrom, rep.OriginalTo)
	}
	if rep.Results[0].Action != "failed" || rep.Results[0].RemoteMTA != "mx.dest.example" {
		t.Errorf("action/remote = %q %q", rep.Results[0].Action, rep.Results[0].RemoteMTA)
	}
}

func TestClassifySMTP(t *testing.T) {
	tests := []struct {
		code     int
		enhanced string
		text     string
		reason   Reason
		hard     string
	}{
		{550, "5.1.1", "<a@b.example>: Recipient address rejected: User unknown in local recipient table", ReasonUserUnknown, "hard"},
		{552, "5.1.1", "mailbox is full, disk quota exceeded", ReasonMailboxFull, "soft"}, // the text wins
		{452, "4.2.2", "Mailbox full", ReasonMailboxFull, "soft"},
		{554, "5.7.1", "Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org", ReasonBlocked, "soft"},
		{550, "5.7.26", "Unauthenticated email from example.com is not accepted due to domain's DMARC policy", ReasonAuthFailure, "soft"},
		{556, "5.1.10", "Recipient address has null MX", ReasonNotAccept, "hard"},
		{421, "4.3.2", "System not accepting network messages", ReasonNotAccept, "soft"},
		{550, "", "5.1.2 Host unknown", ReasonHostUnknown, "hard"},
		{451, "4.4.0", "DNS lookup failure: domain not found", ReasonNetworkError, "soft"},
		{0, "", "550 5.1.6 user has moved; no forwarding", ReasonHasMoved, "hard"},
		{421, "4.7.0", "Try again later, closing connection. Too many connections from your host", ReasonTooManyConn, "soft"},
		{552, "5.3.4", "Message size exceeds fixed limit", ReasonMesgTooBig, "soft"},
		// A sending quota used up is the sender's, not a full mailbox.
		{550, "5.4.5", "Daily user sending quota exceeded. https://support.google.com/mail/?p=ReachedSendingLimit", ReasonTooManyConn, "soft"},
		{550, "5.4.5", "Daily user sending limit exceeded. For more information on Gmail sending limits go to https://support.google.com/a/answer/166852", ReasonTooManyConn, "soft"},
		{454, "", "Throttling failure: Daily message quota exceeded", ReasonTooManyConn, "soft"},
		{550, "5.1.90", "Your message can't be sent because you've reached your daily limit for message recipients", ReasonTooManyConn, "soft"},
		{554, "5.2.2", "mailbox full; quota exceeded", ReasonMailboxFull, "soft"},
		{550, "5.7.1", "Message rejected as spam by Content Filtering", ReasonSpamDetected, "soft"},
		{250, "2.0.0", "Ok: queued", ReasonDelivered, "null"},
		{0, "", "", ReasonUndefined, "soft"},
	}
	for _, tt := range tests {
		r, h := ClassifySMTP(tt.code, tt.enhanced, tt.text)
		if r != tt.reason || hardString(h) != tt.hard {
			t.Errorf("ClassifySMTP(%d, %q, %q) = %s %s, want %s %s", tt.code, tt.enhanced, tt.text, r, hardString(h), tt.reason, tt.hard)
		}
	}
}

// TestWriteJSONLinesGolden compares the `herald bounce classify` output with testdata/*.golden.
func TestWriteJSONLinesGolden(t *testing.T) {
	for _, name := range []string{"dsn-postfix", "arf", "autoreply", "qmail", "exim", "exchange", "sendmail", "garbage"} {
		t.Run(name, func(t *testing.T) {
			rep := parseFile(t, name+".eml")
			var buf bytes.Buffer
			if err := WriteJSONLines(&buf, name+".eml", rep); err != nil {
				t.Fatal(err)
			}
			golden := filepath.Join("testdata", name+".golden")
			if *update {
				if err := os.WriteFile(golden, buf.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if !bytes.Equal(buf.Bytes(), want) {
				t.Errorf("output differs from %s:\ngot:\n%s\nwant:\n%s", golden, buf.Bytes(), want)
			}
		})
	}
}

func TestParseNeverFails(t *testing.T) {
	for _, in := range []string{"", "\n\n", "Content-Type: multipart/report; boundary=\n\n--\n", "From: <>\nContent-Transfer-Encoding: base64\n\n!!!"} {
		rep, err := Parse(strings.NewReader(in))
		if err != nil || rep == nil {
			t.Errorf("Parse(%q) = %v, %v", in, rep, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, name := range []string{"dsn-postfix.eml", "arf.eml", "qmail.eml", "exim.eml", "exchange.eml", "sendmail.eml"} {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		rep, err := Parse(bytes.NewReader(b))
		if err != nil || rep == nil {
			t.Fatalf("Parse = %v, %v", rep, err)
		}
		for _, r := range rep.Results {
			if r.Reason == "" {
				t.Fatalf("result without a reason: %+v", r)
			}
		}
	})
}
