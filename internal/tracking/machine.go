package tracking

import (
	"container/list"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// ClassifierOptions tune a Classifier. Zero values take the defaults.
type ClassifierOptions struct {
	// MinDelay: an open or click sooner than this after sending is a machine's. Default 2 s.
	MinDelay time.Duration
	// BurstLinks distinct links clicked by one recipient within BurstWindow are a scanner's.
	// Defaults 3 and 2 s.
	BurstLinks  int
	BurstWindow time.Duration
	// MaxRecipients bounds the recipients whose recent clicks are remembered; the least recently
	// clicking are forgotten first. Default 100,000 (a few MB).
	MaxRecipients int
	// ProxyNets are networks whose requests are all machines', beside Apple's 17.0.0.0/8: load
	// Apple's published Private Relay / Mail Privacy Protection egress ranges here, and any
	// scanner ranges the operator knows.
	ProxyNets []netip.Prefix
	// OnOpenProxiesAreMachine makes Google's and Yahoo's image proxies machine opens. They fetch
	// the pixel when the person opens the message (and cache it), so by default their opens are
	// human, with the proxy named in why.
	OnOpenProxiesAreMachine bool
}

// Classifier tells machine opens and clicks (privacy proxies, link scanners, prefetchers, scripts)
// from people's, for the human opens Herald shows beside all opens. It is safe for concurrent use.
//
// Its rules, in order: the user agent (empty, a known proxy or scanner, a headless browser, an
// HTTP library, a bot); the client network (Apple's 17.0.0.0/8 and ProxyNets); an open or click
// within MinDelay of sending; and, for clicks, BurstLinks distinct links of one recipient within
// BurstWindow.
//
// Limits, stated up front: Apple Mail Privacy Protection fetches through proxies whose user agent
// is a bare "Mozilla/5.0" and whose egress ranges Apple publishes online but Herald does not ship;
// the user agent catches most of it, ProxyNets the rest when loaded. Apple's 17.0.0.0/8 also
// holds Apple's own staff, whose opens and clicks are counted as machine ones. Scanners that present a
// browser's user agent from a cloud network are caught only by timing or bursts. The burst rule
// flags the clicks from the BurstLinks-th on, not the first ones of the burst (Compute stats can
// flag them afterwards from the tracking log), and its memory is per process: on several nodes
// behind a load balancer that spreads one recipient's clicks, a burst split across nodes may go
// unseen.
type Classifier struct {
	opts ClassifierOptions

	mu      sync.Mutex
	clicks  map[int64]*list.Element // of *recentClicks, by sending-log row
	lru     list.List
	history int // clicks kept per recipient
}

// recentClicks are a recipient's latest clicks, oldest first.
type recentClicks struct {
	logID int64
	links []uint16
	at    []time.Time
}

// NewClassifier returns a classifier.
func NewClassifier(opts ClassifierOptions) *Classifier {
	if opts.MinDelay <= 0 {
		opts.MinDelay = 2 * time.Second
	}
	if opts.BurstLinks <= 1 {
		opts.BurstLinks = 3
	}
	if opts.BurstWindow <= 0 {
		opts.BurstWindow = 2 * time.Second
	}
	if opts.MaxRecipients <= 0 {
		opts.MaxRecipients = 100_000
	}
	return &Classifier{opts: opts, clicks: map[int64]*list.Element{}, history: 2 * opts.BurstLinks}
}

// uaRule is a user-agent fragment, in lower case, and what it reveals.
type uaRule struct {
	fragment string
	why      string
}

// onOpenProxies fetch images when the person opens the message.
var onOpenProxies = []uaRule{
	{"googleimageproxy", "Google Image Proxy"},
	{"ggpht.com", "Google Image Proxy"},
	{"yahoomailproxy", "Yahoo/AOL Mail proxy"},
}

// machineAgents are user agents that are never a person reading mail.
var machineAgents = []uaRule{
	// Link scanners and mail security gateways.
	{"barracuda", "Barracuda link scanner"},
	{"mimecast", "Mimecast link scanner"},
	{"proofpoint", "Proofpoint link scanner"},
	{"urldefense", "Proofpoint link scanner"},
	{"ironport", "Cisco IronPort scanner"},
	{"cisco secure email", "Cisco IronPort scanner"},
	{"symantec", "Symantec/Broadcom scanner"},
	{"messagelabs", "Symantec/Broadcom scanner"},
	{"broadcom", "Symantec/Broadcom scanner"},
	{"trend micro", "Trend Micro scanner"},
	{"trendmicro", "Trend Micro scanner"},
	{"sophos", "Sophos scanner"},
	{"fortiguard", "Fortinet scanner"},
	{"forcepoint", "Forcepoint scanner"},
	{"zscaler", "Zscaler scanner"},
	{"safelinks", "Microsoft Safe Links"},
	{"ms-office", "Microsoft Office link check"},
	{"microsoft office existence discovery", "Microsoft Office link check"},
	{"microsoft office protocol discovery", "Microsoft Office link check"},
	{"bingpreview", "Microsoft link preview"},
	{"skypeuripreview", "Microsoft link preview"},
	{"google-safety", "Google link check"},
	{"googlebot", "Google crawler"},
	// Link previews of chat apps and social networks.
	{"facebookexternalhit", "link preview"},
	{"slackbot", "link preview"},
	{"twitterbot", "link preview"},
	{"whatsapp", "link preview"},
	{"telegrambot", "link preview"},
	{"discordbot", "link preview"},
	// Headless browsers.
	{"headlesschrome", "headless browser"},
	{"phantomjs", "headless browser"},
	{"puppeteer", "headless browser"},
	{"playwright", "headless browser"},
	{"selenium", "headless browser"},
	// HTTP libraries and command-line tools.
	{"curl/", "HTTP tool"},
	{"wget/", "HTTP tool"},
	{"python-requests", "HTTP library"},
	{"python-urllib", "HTTP library"},
	{"python-httpx", "HTTP library"},
	{"aiohttp", "HTTP library"},
	{"go-http-client", "HTTP library"},
	{"okhttp", "HTTP library"},
	{"apache-httpclient", "HTTP library"},
	{"java/", "HTTP library"},
	{"libwww-perl", "HTTP library"},
	{"node-fetch", "HTTP library"},
	{"axios/", "HTTP library"},
	{"postmanruntime", "HTTP tool"},
	{"httpie", "HTTP tool"},
	{"scrapy", "crawler"},
	// Self-declared bots; "bot" alone would match phone makers such as Cubot.
	{"bot/", "bot"},
	{"bot;", "bot"},
	{"bot)", "bot"},
	{"crawler", "crawler"},
	{"spider", "crawler"},
	{"+http", "bot"},
}

// appleNet is Apple's own /8; Mail Privacy Protection fetches partly from it.
var appleNet = netip.MustParsePrefix("17.0.0.0/8")

// Classify reports whether h was made by a machine, and why; why may be non-empty for a human hit
// to name the proxy it came through. sentAt is when the message was sent (the zero time skips the
// timing rule). Clicks are remembered for the burst rule, so classify each hit once, in arrival
// order.
func (c *Classifier) Classify(h Hit, sentAt time.Time) (machine bool, why string) {
	kind := h.Kind
	if kind == 0 {
		kind = h.Ref.Kind
	}
	burst := false
	if kind == KindClick {
		burst = c.rememberClick(h.Ref.LogID, h.Ref.Link, h.At)
	}
	ua := strings.TrimSpace(h.UserAgent)
	if ua == "" {
		return true, "no user agent"
	}
	if ua == "Mozilla/5.0" {
		return true, "Apple Mail Privacy Protection"
	}
	lower := strings.ToLower(ua)
	for _, r := range machineAgents {
		if strings.Contains(lower, r.fragment) {
			return true, r.why
		}
	}
	proxy := ""
	for _, r := range onOpenProxies {
		if strings.Contains(lower, r.fragment) {
			if c.opts.OnOpenProxiesAreMachine {
				return true, r.why
			}
			proxy = r.why
			break
		}
	}
	if ip := h.IP.Unmap(); ip.IsValid() {
		if appleNet.Contains(ip) {
			return true, "Apple network (Mail Privacy Protection)"
		}
		for _, p := range c.opts.ProxyNets {
			if p.Contains(ip) {
				return true, "proxy network " + p.String()
			}
		}
	}
	if !sentAt.IsZero() && (kind == KindOpen || kind == KindClick) && h.At.Sub(sentAt) < c.opts.MinDelay {
		return true, "within " + c.opts.MinDelay.String() + " of sending"
	}
	if burst {
		return true, "many links clicked at once"
	}
	return false, proxy
}

// rememberClick adds a click to the recipient's recent clicks and reports whether they now hold
// BurstLinks distinct links within BurstWindow of this one.
func (c *Classifier) rememberClick(logID int64, link uint16, at time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	var rc *recentClicks
	if el, ok := c.clicks[logID]; ok {
		c.lru.MoveToFront(el)
		rc = el.Value.(*recentClicks)
	} else {
		if c.lru.Len() >= c.opts.MaxRecipients {
			old := c.lru.Back()
			c.lru.Remove(old)
			rc = old.Value.(*recentClicks)
			delete(c.clicks, rc.logID)
			rc.logID, rc.links, rc.at = logID, rc.links[:0], rc.at[:0]
		} else {
			rc = &recentClicks{logID: logID, links: make([]uint16, 0, c.history), at: make([]time.Time, 0, c.history)}
		}
		c.clicks[logID] = c.lru.PushFront(rc)
	}
	if len(rc.links) == c.history {
		copy(rc.links, rc.links[1:])
		copy(rc.at, rc.at[1:])
		rc.links, rc.at = rc.links[:c.history-1], rc.at[:c.history-1]
	}
	rc.links = append(rc.links, link)
	rc.at = append(rc.at, at)

	var seen [16]uint16
	distinct := seen[:0]
	for i := len(rc.at) - 1; i >= 0; i-- {
		if d := at.Sub(rc.at[i]); d > c.opts.BurstWindow || d < -c.opts.BurstWindow {
			continue
		}
		known := false
		for _, l := range distinct {
			if l == rc.links[i] {
				known = true
				break
			}
		}
		if !known {
			distinct = append(distinct, rc.links[i])
			if len(distinct) >= c.opts.BurstLinks {
				return true
			}
		}
	}
	return false
}
