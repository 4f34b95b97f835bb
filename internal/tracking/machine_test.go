package tracking

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

const (
	uaChrome     = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
	uaAppleMail  = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)"
	uaOutlook    = "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17328; Pro)"
	uaCubotPhone = "Mozilla/5.0 (Linux; Android 11; CUBOT X30) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Mobile Safari/537.36"
)

func TestClassify(t *testing.T) {
	sent := t0
	later := t0.Add(time.Hour)
	human := netip.MustParseAddr("203.0.113.7")
	cases := []struct {
		name    string
		kind    Kind
		ua      string
		ip      netip.Addr
		at      time.Time
		machine bool
		why     string // a fragment of why; "" means why must be empty
	}{
		{"desktop browser", KindOpen, uaChrome, human, later, false, ""},
		{"Apple Mail without MPP", KindOpen, uaAppleMail, human, later, false, ""},
		{"Outlook desktop", KindOpen, uaOutlook, human, later, false, ""},
		{"Cubot phone is no bot", KindClick, uaCubotPhone, human, later, false, ""},
		{"Apple MPP bare UA", KindOpen, "Mozilla/5.0", human, later, true, "Apple Mail Privacy Protection"},
		{"Apple network", KindOpen, uaAppleMail, netip.MustParseAddr("17.58.1.2"), later, true, "Apple network"},
		{"Apple network v4-in-v6", KindOpen, uaAppleMail, netip.MustParseAddr("::ffff:17.58.1.2"), later, true, "Apple network"},
		{"Gmail proxy is a human open", KindOpen, "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)", human, later, false, "Google Image Proxy"},
		{"Yahoo proxy", KindOpen, "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html", human, later, false, "Yahoo"},
		{"no user agent", KindOpen, "", human, later, true, "no user agent"},
		{"blank user agent", KindOpen, "  ", human, later, true, "no user agent"},
		{"Barracuda", KindClick, "Mozilla/5.0 Barracuda Sentinel", human, later, true, "Barracuda"},
		{"Mimecast", KindClick, "Mimecast URL Protect", human, later, true, "Mimecast"},
		{"Proofpoint", KindClick, "Mozilla/5.0 (compatible; Proofpoint URL Defense)", human, later, true, "Proofpoint"},
		{"IronPort", KindClick, "Cisco-IronPort-WSA/11.8", human, later, true, "IronPort"},
		{"Symantec", KindClick, "Symantec Email Security.cloud", human, later, true, "Symantec"},
		{"Trend Micro", KindClick, "Mozilla/5.0 Trend Micro Email Security", human, later, true, "Trend Micro"},
		{"Sophos", KindClick, "Sophos Email Time-of-Click", human, later, true, "Sophos"},
		{"Office link check", KindClick, "Mozilla/4.0 (compatible; ms-office; MSOffice 16)", human, later, true, "Microsoft"},
		{"BingPreview", KindClick, "Mozilla/5.0 (Windows NT 10.0) AppleWebKit/537.36 BingPreview/1.0b", human, later, true, "Microsoft"},
		{"headless Chrome", KindClick, "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 HeadlessChrome/120.0.0.0 Safari/537.36", human, later, true, "headless"},
		{"curl", KindOpen, "curl/8.5.0", human, later, true, "HTTP tool"},
		{"python-requests", KindClick, "python-requests/2.31.0", human, later, true, "HTTP library"},
		{"Go", KindClick, "Go-http-client/1.1", human, later, true, "HTTP library"},
		{"declared bot", KindClick, "Mozilla/5.0 (compatible; SomeBot/2.1; +http://example.com/bot)", human, later, true, "bot"},
		{"Slack preview", KindClick, "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)", human, later, true, "link preview"},
		{"open 1 s after sending", KindOpen, uaChrome, human, sent.Add(time.Second), true, "of sending"},
		{"click 1.9 s after sending", KindClick, uaChrome, human, sent.Add(1900 * time.Millisecond), true, "of sending"},
		{"open 2 s after sending", KindOpen, uaChrome, human, sent.Add(2 * time.Second), false, ""},
		{"opt-out soon after sending", KindOptOut, uaChrome, human, sent.Add(time.Second), false, ""},
		{"configured proxy network", KindOpen, uaChrome, netip.MustParseAddr("198.51.100.9"), later, true, "198.51.100.0/24"},
	}
	c := NewClassifier(ClassifierOptions{ProxyNets: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}})
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			link := NoLink
			if tc.kind == KindClick {
				link = 0
			}
			h := Hit{Ref: Ref{LogID: int64(i), DeliveryID: 1, Link: link, Kind: tc.kind}, At: tc.at, UserAgent: tc.ua, IP: tc.ip}
			machine, why := c.Classify(h, sent)
			if machine != tc.machine {
				t.Errorf("machine = %v (%s), want %v", machine, why, tc.machine)
			}
			if tc.why == "" && why != "" || !strings.Contains(why, tc.why) {
				t.Errorf("why = %q, want it to contain %q", why, tc.why)
			}
		})
	}
}

func TestClassifyOnOpenProxiesAsMachine(t *testing.T) {
	c := NewClassifier(ClassifierOptions{OnOpenProxiesAreMachine: true})
	h := Hit{Ref: Ref{LogID: 1, Link: NoLink, Kind: KindOpen}, At: t0.Add(time.Hour), UserAgent: "Mozilla/5.0 (via ggpht.com GoogleImageProxy)"}
	if machine, why := c.Classify(h, t0); !machine || why != "Google Image Proxy" {
		t.Errorf("Classify = %v, %q", machine, why)
	}
}

func TestClassifyClickBurst(t *testing.T) {
	c := NewClassifier(ClassifierOptions{})
	at := t0.Add(time.Hour)
	clickAt := func(logID int64, link uint16, d time.Duration) bool {
		m, _ := c.Classify(Hit{Ref: Ref{LogID: logID, DeliveryID: 1, Link: link, Kind: KindClick}, At: at.Add(d), UserAgent: uaChrome}, t0)
		return m
	}
	// A scanner follows links 0, 1, 2, 3 within a second: the third distinct link and on are machine.
	got := []bool{clickAt(1, 0, 0), clickAt(1, 1, 300*time.Millisecond), clickAt(1, 2, 600*time.Millisecond), clickAt(1, 3, 900*time.Millisecond)}
	if want := []bool{false, false, true, true}; !slices.Equal(got, want) {
		t.Errorf("scanner burst: %v, want %v", got, want)
	}
	// A person clicking the same link thrice quickly, then two others minutes apart, is human.
	got = []bool{clickAt(2, 0, 0), clickAt(2, 0, 200*time.Millisecond), clickAt(2, 0, 400*time.Millisecond), clickAt(2, 1, time.Minute), clickAt(2, 2, 2*time.Minute)}
	if want := []bool{false, false, false, false, false}; !slices.Equal(got, want) {
		t.Errorf("person: %v, want %v", got, want)
	}
	// Three links just over 2 s apart in all: the window is 2 s.
	got = []bool{clickAt(3, 0, 0), clickAt(3, 1, time.Second), clickAt(3, 2, 2100*time.Millisecond)}
	if want := []bool{false, false, false}; !slices.Equal(got, want) {
		t.Errorf("slow clicks: %v, want %v", got, want)
	}
	// Recipients do not mix: two recipients clicking different links at once are both human.
	got = []bool{clickAt(4, 0, 0), clickAt(5, 1, 0), clickAt(6, 2, 0)}
	if want := []bool{false, false, false}; !slices.Equal(got, want) {
		t.Errorf("three recipients: %v, want %v", got, want)
	}
}

func TestClassifierMemoryIsBounded(t *testing.T) {
	c := NewClassifier(ClassifierOptions{MaxRecipients: 2})
	at := t0.Add(time.Hour)
	cl := func(logID int64, link uint16) bool {
		m, _ := c.Classify(Hit{Ref: Ref{LogID: logID, Link: link, Kind: KindClick}, At: at, UserAgent: uaChrome}, t0)
		return m
	}
	cl(1, 0)
	cl(1, 1)
	cl(2, 0)
	cl(3, 0) // evicts recipient 1, the least recently clicking
	if len(c.clicks) != 2 || c.lru.Len() != 2 {
		t.Fatalf("remembered %d recipients, want 2", len(c.clicks))
	}
	if cl(1, 2) {
		t.Error("an evicted recipient's old clicks were still counted")
	}
	cl(3, 1) // recipient 3 has links 0 and 1 now; one more makes a burst
	if !cl(3, 2) {
		t.Error("a remembered recipient's burst was missed")
	}
}

func BenchmarkClassify(b *testing.B) {
	c := NewClassifier(ClassifierOptions{})
	h := Hit{Ref: Ref{LogID: 1, Link: 0, Kind: KindClick}, At: t0.Add(time.Hour), UserAgent: uaChrome, IP: netip.MustParseAddr("203.0.113.7")}
	b.ReportAllocs()
	for b.Loop() {
		h.Ref.LogID++
		c.Classify(h, t0)
	}
}
