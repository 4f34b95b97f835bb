package email

import (
	"crypto/tls"
	"fmt"
	"math"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// TLSMode says how a connection to a relay is protected.
type TLSMode int

const (
	// TLSOpportunistic upgrades with STARTTLS when the server offers it and
	// carries on in clear text when it does not (smtp:// default).
	TLSOpportunistic TLSMode = iota
	// TLSRequired upgrades with STARTTLS and refuses a server that does not
	// offer it (smtp://...?starttls=require).
	TLSRequired
	// TLSImplicit speaks TLS from the first byte (smtps://, port 465).
	TLSImplicit
	// TLSNone never upgrades (smtp://...?starttls=off), for local sinks.
	TLSNone
)

// Relay is one SMTP server Herald hands mail to.
type Relay struct {
	// Addr is host:port.
	Addr string
	// Username and Password, when Username is set, authenticate with AUTH
	// PLAIN or LOGIN. They are only sent over TLS or to a loopback address.
	Username, Password string
	// TLS says how connections are protected.
	TLS TLSMode
	// TLSConfig overrides the TLS client configuration; nil verifies the
	// server against the system roots for the host in Addr.
	TLSConfig *tls.Config
	// MaxConns caps open connections to the relay; 0 means DefaultMaxConns.
	MaxConns int
	// Rate caps messages per second to the relay; 0 means no cap.
	Rate float64
	// MaxPerConn closes a connection after that many messages; 0 means no
	// limit. Some providers cap messages per connection.
	MaxPerConn int
}

// DefaultMaxConns is the number of connections per relay when Relay.MaxConns
// is 0: Postfix's default_destination_concurrency_limit, the parallel
// deliveries an MTA makes to one destination. A pipelined connection carries
// one message per round trip, so the connections in use bound how much a
// relay has to work on while Herald reads its replies: against smtp-sink on
// loopback, 16 to 24 connections sent 2-9% more than 8 did, while pushing
// ready-made messages over them was 1-4% slower (docs/benchmarks.md).
const DefaultMaxConns = 20

func (r *Relay) tlsConfig() *tls.Config {
	cfg := r.TLSConfig
	if cfg == nil {
		cfg = &tls.Config{}
	}
	if cfg.ServerName == "" {
		cfg = cfg.Clone()
		cfg.ServerName, _, _ = net.SplitHostPort(r.Addr)
	}
	return cfg
}

// String names the relay for logs, without its password.
func (r *Relay) String() string {
	scheme := "smtp"
	if r.TLS == TLSImplicit {
		scheme = "smtps"
	}
	if r.Username != "" {
		return scheme + "://" + r.Username + "@" + r.Addr
	}
	return scheme + "://" + r.Addr
}

// ParseRelays parses HERALD_SMTP_RELAYS: a comma-separated list of
//
//	smtp://[user:pass@]host[:port][?option=value&...]
//	smtps://[user:pass@]host[:port][?option=value&...]
//
// smtp:// defaults to port 25 and opportunistic STARTTLS, smtps:// to port
// 465 and implicit TLS. Options: starttls=require|opportunistic|off,
// max_conns=N, rate=msgs-per-second, max_per_conn=N. A user name or password
// containing ',', '@', ':' or '/' must be percent-encoded.
func ParseRelays(s string) ([]Relay, error) {
	var relays []Relay
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		r, err := parseRelay(item)
		if err != nil {
			return nil, fmt.Errorf("HERALD_SMTP_RELAYS entry %q: %w", redact(item), err)
		}
		relays = append(relays, r)
	}
	if len(relays) == 0 {
		return nil, fmt.Errorf("HERALD_SMTP_RELAYS names no relay")
	}
	return relays, nil
}

func parseRelay(s string) (Relay, error) {
	u, err := url.Parse(s)
	if err != nil {
		return Relay{}, fmt.Errorf("not a URL: %w", err)
	}
	var r Relay
	port := "25"
	switch u.Scheme {
	case "smtp":
	case "smtps":
		r.TLS, port = TLSImplicit, "465"
	default:
		return Relay{}, fmt.Errorf("scheme must be smtp or smtps, not %q", u.Scheme)
	}
	if u.Hostname() == "" {
		return Relay{}, fmt.Errorf("no host")
	}
	if u.Port() != "" {
		port = u.Port()
	}
	r.Addr = net.JoinHostPort(u.Hostname(), port)
	if u.User != nil {
		r.Username = u.User.Username()
		r.Password, _ = u.User.Password()
	}
	for k, vs := range u.Query() {
		v := vs[len(vs)-1]
		switch k {
		case "starttls":
			if r.TLS == TLSImplicit {
				return Relay{}, fmt.Errorf("starttls does not apply to smtps://")
			}
			switch v {
			case "require", "required":
				r.TLS = TLSRequired
			case "opportunistic", "":
				r.TLS = TLSOpportunistic
			case "off", "no", "none":
				r.TLS = TLSNone
			default:
				return Relay{}, fmt.Errorf("starttls must be require, opportunistic or off, not %q", v)
			}
		case "max_conns", "max_per_conn":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return Relay{}, fmt.Errorf("%s must be a positive whole number, not %q", k, v)
			}
			if k == "max_conns" {
				r.MaxConns = n
			} else {
				r.MaxPerConn = n
			}
		case "rate":
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || !(f > 0) || math.IsInf(f, 1) {
				return Relay{}, fmt.Errorf("rate must be a positive number of messages per second, not %q", v)
			}
			r.Rate = f
		default:
			return Relay{}, fmt.Errorf("unknown option %q (known: starttls, max_conns, rate, max_per_conn)", k)
		}
	}
	return r, nil
}

// redact hides the password of a relay URL in error messages.
func redact(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.User == nil {
		if i := strings.LastIndex(s, "@"); i >= 0 {
			return "…@" + s[i+1:]
		}
		return s
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	return u.String()
}
