// Package config reads Herald's settings from HERALD_* environment variables. Command-line
// flags of the same meaning override them (see cmd/herald). The names are part of Herald's
// public contract (DESIGN.md §9).
package config

import (
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
)

// Config is Herald's configuration.
type Config struct {
	// Addr is the HTTP listen address (HERALD_ADDR, default 127.0.0.1:8080).
	Addr string
	// DB is the database: a SQLite file path or a postgres:// URL (HERALD_DB, default ./herald.db).
	DB string
	// PublicURL is the base URL written into links (HERALD_PUBLIC_URL, default http://Addr).
	PublicURL string
	// AdminPassword is the first administrator's password (HERALD_ADMIN_PASSWORD); empty: generated.
	AdminPassword string
	// SMTPRelays lists outgoing relays (HERALD_SMTP_RELAYS); empty: capture mode.
	SMTPRelays string
	// BounceAddr is the inbound SMTP listener for bounces (HERALD_BOUNCE_ADDR); empty: off.
	BounceAddr string
	// BounceDomain is the return-path domain (HERALD_BOUNCE_DOMAIN).
	BounceDomain string
	// DKIMKeyFile is a PEM private key (RSA or Ed25519) to sign outgoing mail with
	// (HERALD_DKIM_KEY_FILE); empty: no DKIM signature.
	DKIMKeyFile string
	// DKIMDomain and DKIMSelector are the signature's d= and s= (HERALD_DKIM_DOMAIN,
	// HERALD_DKIM_SELECTOR); the public key is published at <selector>._domainkey.<domain>.
	DKIMDomain   string
	DKIMSelector string
	// RetryBackoff is the wait before each retry of a soft failure, comma-separated durations
	// (HERALD_RETRY_BACKOFF, e.g. 15m,30m,1h,2h,4h,24h); empty: the engine's default.
	RetryBackoff string
	// DomainLimits caps messages per second per recipient domain, domain=rate pairs with * for
	// every other domain (HERALD_DOMAIN_LIMITS, e.g. gmail.com=50,*=200); empty: no fixed cap.
	DomainLimits string
	// DomainConns caps the messages in progress at once per recipient domain, domain=N pairs
	// with * for each other domain (HERALD_DOMAIN_CONNS, e.g. gmail.com=10,*=20); empty: no cap.
	DomainConns string
	// LogLevel is debug, info, warn or error (HERALD_LOG_LEVEL, default info).
	LogLevel string
	// LogFormat is text or json (HERALD_LOG_FORMAT, default text).
	LogFormat string
}

// FromEnv reads the configuration from the environment, with defaults.
func FromEnv() Config {
	c := Config{
		Addr:          env("HERALD_ADDR", "127.0.0.1:8080"),
		DB:            env("HERALD_DB", "./herald.db"),
		PublicURL:     os.Getenv("HERALD_PUBLIC_URL"),
		AdminPassword: os.Getenv("HERALD_ADMIN_PASSWORD"),
		SMTPRelays:    os.Getenv("HERALD_SMTP_RELAYS"),
		BounceAddr:    os.Getenv("HERALD_BOUNCE_ADDR"),
		BounceDomain:  os.Getenv("HERALD_BOUNCE_DOMAIN"),
		DKIMKeyFile:   os.Getenv("HERALD_DKIM_KEY_FILE"),
		DKIMDomain:    os.Getenv("HERALD_DKIM_DOMAIN"),
		DKIMSelector:  os.Getenv("HERALD_DKIM_SELECTOR"),
		RetryBackoff:  os.Getenv("HERALD_RETRY_BACKOFF"),
		DomainLimits:  os.Getenv("HERALD_DOMAIN_LIMITS"),
		DomainConns:   os.Getenv("HERALD_DOMAIN_CONNS"),
		LogLevel:      env("HERALD_LOG_LEVEL", "info"),
		LogFormat:     env("HERALD_LOG_FORMAT", "text"),
	}
	return c
}

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// Check fills derived defaults and reports the first setting that is not valid, naming it.
func (c *Config) Check() error {
	if c.PublicURL == "" {
		c.PublicURL = "http://" + c.Addr
	}
	u, err := url.Parse(c.PublicURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("HERALD_PUBLIC_URL %q is not an http(s) URL", c.PublicURL)
	}
	c.PublicURL = strings.TrimRight(c.PublicURL, "/")
	if _, err := c.Level(); err != nil {
		return err
	}
	if c.DKIMKeyFile != "" && (c.DKIMDomain == "" || c.DKIMSelector == "") {
		return fmt.Errorf("HERALD_DKIM_KEY_FILE is set, so HERALD_DKIM_DOMAIN and HERALD_DKIM_SELECTOR must be too")
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		return fmt.Errorf("HERALD_LOG_FORMAT %q is not text or json", c.LogFormat)
	}
	return nil
}

// Level returns the slog level named by LogLevel.
func (c Config) Level() (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(c.LogLevel)); err != nil {
		return 0, fmt.Errorf("HERALD_LOG_LEVEL %q is not debug, info, warn or error", c.LogLevel)
	}
	return l, nil
}

// Logger returns the logger the configuration asks for, writing to stderr.
func (c Config) Logger() *slog.Logger {
	level, _ := c.Level()
	opts := &slog.HandlerOptions{Level: level}
	if c.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}
