package email

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// conn is one SMTP client connection. It is used by one goroutine at a time.
type conn struct {
	nc net.Conn
	r  *bufio.Reader
	w  *bufio.Writer

	// flushed counts bytes the network accepted from w; together with the
	// logical end of a message's data it tells whether the terminating dot
	// can have reached the server.
	flushed int64

	timeout time.Duration

	pipelining bool
	starttls   bool
	// unverified, after an opportunistic STARTTLS, says why the server's
	// certificate did not verify: the connection is encrypted but the
	// server not authenticated.
	unverified error
	smtputf8   bool // RFC 6531: internationalised addresses
	size       int64
	auth       []string

	text     []byte // text of the last reply, lines joined by '\n'
	sent     int    // messages sent on this connection
	lastUsed time.Time
	broken   bool // the server announced it is closing (421)
	// open says the server holds a transaction whose only recipient was
	// refused: the next message on the connection must be preceded by RSET
	// (a MAIL inside an open transaction is refused, 503).
	open bool
}

// countWriter sits under the bufio.Writer and counts what the network took.
type countWriter struct{ c *conn }

func (cw countWriter) Write(p []byte) (int, error) {
	n, err := cw.c.nc.Write(p)
	cw.c.flushed += int64(n)
	return n, err
}

// pos is the logical stream position: bytes flushed plus bytes buffered.
func (c *conn) pos() int64 { return c.flushed + int64(c.w.Buffered()) }

func (c *conn) setConn(nc net.Conn) {
	c.nc = nc
	if c.r == nil {
		c.r = bufio.NewReaderSize(nc, 4096)
		c.w = bufio.NewWriterSize(countWriter{c}, 64<<10)
		return
	}
	c.r.Reset(nc)
	c.w.Reset(countWriter{c})
}

// deadline arms the read/write deadline for the next exchange.
func (c *conn) deadline() {
	if c.timeout > 0 {
		c.nc.SetDeadline(time.Now().Add(c.timeout))
	}
}

func (c *conn) flush() error {
	c.deadline()
	if err := c.w.Flush(); err != nil {
		return fmt.Errorf("smtp write: %w", err)
	}
	return nil
}

// readReply reads one (possibly multi-line) reply, leaving its text in c.text.
func (c *conn) readReply() (int, error) {
	c.text = c.text[:0]
	code := 0
	for {
		line, err := c.r.ReadSlice('\n')
		if err != nil {
			if errors.Is(err, bufio.ErrBufferFull) {
				return 0, errMalformedReply
			}
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return 0, fmt.Errorf("smtp read: %w", err)
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) < 3 || (len(line) > 3 && line[3] != ' ' && line[3] != '-') {
			return 0, fmt.Errorf("%w: %q", errMalformedReply, line)
		}
		n := 0
		for _, d := range line[:3] {
			if d < '0' || d > '9' {
				return 0, fmt.Errorf("%w: %q", errMalformedReply, line)
			}
			n = n*10 + int(d-'0')
		}
		if code != 0 && n != code {
			return 0, fmt.Errorf("%w: code changed within reply", errMalformedReply)
		}
		code = n
		if len(c.text) > 0 {
			c.text = append(c.text, '\n')
		}
		if len(line) > 4 {
			c.text = append(c.text, line[4:]...)
		}
		if len(line) == 3 || line[3] == ' ' {
			if code == 421 {
				c.broken = true
			}
			return code, nil
		}
	}
}

// cmd writes a command, flushes and reads its reply, wanting code want.
func (c *conn) cmd(step string, want int, line string) error {
	c.w.WriteString(line)
	c.w.WriteString("\r\n")
	if err := c.flush(); err != nil {
		return err
	}
	return c.expect(step, want)
}

func (c *conn) expect(step string, want int) error {
	code, err := c.readReply()
	if err != nil {
		return fmt.Errorf("smtp %s: %w", step, err)
	}
	if code != want {
		enh, text := splitEnhanced(code, strings.ReplaceAll(string(c.text), "\n", " "))
		return &ReplyError{Step: step, Code: code, Enhanced: enh, Text: text}
	}
	return nil
}

// dial opens and prepares a connection to r: greeting, EHLO, TLS, AUTH.
func dial(ctx context.Context, r *Relay, helo string, dialTimeout, timeout time.Duration) (*conn, error) {
	d := net.Dialer{Timeout: dialTimeout}
	nc, err := d.DialContext(ctx, "tcp", r.Addr)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", r.Addr, err)
	}
	c := &conn{timeout: timeout}
	if err := c.handshake(ctx, nc, r, helo); err != nil {
		nc.Close()
		return nil, fmt.Errorf("relay %s: %w", r.Addr, err)
	}
	return c, nil
}

func (c *conn) handshake(ctx context.Context, nc net.Conn, r *Relay, helo string) error {
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	if r.TLS == TLSImplicit {
		tc := tls.Client(nc, r.tlsConfig())
		if err := tc.HandshakeContext(ctx); err != nil {
			return fmt.Errorf("tls handshake: %w", err)
		}
		nc = tc
	}
	c.setConn(nc)
	c.deadline()
	if err := c.expect("greeting", 220); err != nil {
		return err
	}
	if err := c.ehlo(helo); err != nil {
		return err
	}
	if r.TLS == TLSRequired || r.TLS == TLSOpportunistic {
		if c.starttls {
			if err := c.cmd("STARTTLS", 220, "STARTTLS"); err != nil {
				return err
			}
			cfg := r.tlsConfig()
			if r.TLS == TLSOpportunistic {
				cfg = opportunistic(cfg, &c.unverified)
			}
			tc := tls.Client(c.nc, cfg)
			if err := tc.HandshakeContext(ctx); err != nil {
				return fmt.Errorf("starttls handshake: %w", err)
			}
			c.setConn(tc)
			if err := c.ehlo(helo); err != nil {
				return err
			}
		} else if r.TLS == TLSRequired {
			return errors.New("server does not offer STARTTLS, which the relay configuration requires")
		}
	}
	if r.Username != "" {
		if err := c.authenticate(r); err != nil {
			return err
		}
	}
	return nil
}

func (c *conn) ehlo(helo string) error {
	c.pipelining, c.starttls, c.smtputf8, c.size, c.auth = false, false, false, 0, nil
	err := c.cmd("EHLO", 250, "EHLO "+helo)
	var re *ReplyError
	if errors.As(err, &re) && re.Code >= 500 {
		// A server without ESMTP: plain HELO and no extensions.
		return c.cmd("HELO", 250, "HELO "+helo)
	}
	if err != nil {
		return err
	}
	lines := strings.Split(string(c.text), "\n")
	for _, l := range lines[1:] {
		f := strings.Fields(strings.ToUpper(l))
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "PIPELINING":
			c.pipelining = true
		case "STARTTLS":
			c.starttls = true
		case "SMTPUTF8":
			c.smtputf8 = true
		case "SIZE":
			if len(f) > 1 {
				c.size, _ = strconv.ParseInt(f[1], 10, 64)
			}
		case "AUTH":
			c.auth = f[1:]
		}
	}
	return nil
}

func (c *conn) authenticate(r *Relay) error {
	_, isTLS := c.nc.(*tls.Conn)
	if err := passwordAllowed(r.Addr, isTLS, c.unverified); err != nil {
		return err
	}
	has := func(m string) bool {
		for _, a := range c.auth {
			if a == m {
				return true
			}
		}
		return false
	}
	switch {
	case has("PLAIN"):
		resp := base64.StdEncoding.EncodeToString([]byte("\x00" + r.Username + "\x00" + r.Password))
		return c.cmd("AUTH", 235, "AUTH PLAIN "+resp)
	case has("LOGIN"):
		if err := c.cmd("AUTH", 334, "AUTH LOGIN"); err != nil {
			return err
		}
		if err := c.cmd("AUTH", 334, base64.StdEncoding.EncodeToString([]byte(r.Username))); err != nil {
			return err
		}
		return c.cmd("AUTH", 235, base64.StdEncoding.EncodeToString([]byte(r.Password)))
	}
	return fmt.Errorf("server offers no AUTH mechanism Herald supports (PLAIN, LOGIN); it offers %q", c.auth)
}

// passwordAllowed says whether the relay password may go to addr over a
// connection with TLS or not, whose certificate did not verify for the
// reason unverified (nil when it did): only over TLS that authenticated the
// server, or to this machine.
func passwordAllowed(addr string, isTLS bool, unverified error) error {
	switch {
	case isLoopback(addr):
		return nil
	case !isTLS:
		return errors.New("refusing to send the relay password without TLS; use smtps:// or ?starttls=require")
	case unverified != nil:
		return fmt.Errorf("refusing to send the relay password over TLS whose certificate does not verify (%w); "+
			"give the relay a certificate for its name, or trust its CA with SSL_CERT_FILE", unverified)
	}
	return nil
}

// opportunistic returns cfg for an opportunistic STARTTLS: the server's
// certificate is verified as usual, but one that does not verify is taken,
// with the reason in *unverified, as Postfix's "may" level encrypts with any
// certificate: a relay with a self-signed one (Debian's snakeoil) still gets
// the message encrypted rather than not at all. A configuration that already
// skips verification is left as it is.
func opportunistic(cfg *tls.Config, unverified *error) *tls.Config {
	if cfg.InsecureSkipVerify {
		return cfg
	}
	cfg = cfg.Clone()
	cfg.InsecureSkipVerify = true
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			*unverified = errors.New("the server sent no certificate")
			return nil
		}
		opts := x509.VerifyOptions{DNSName: cfg.ServerName, Roots: cfg.RootCAs, Intermediates: x509.NewCertPool()}
		for _, ic := range cs.PeerCertificates[1:] {
			opts.Intermediates.AddCert(ic)
		}
		if _, err := cs.PeerCertificates[0].Verify(opts); err != nil {
			*unverified = err
		}
		return nil
	}
	return cfg
}

func isLoopback(addr string) bool {
	host, _, _ := net.SplitHostPort(addr)
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// quit says goodbye without waiting long for the answer, then closes.
func (c *conn) quit() {
	c.nc.SetDeadline(time.Now().Add(time.Second))
	if !c.broken {
		c.w.WriteString("QUIT\r\n")
		if c.w.Flush() == nil {
			c.readReply()
		}
	}
	c.nc.Close()
}

// writeEnvelope writes MAIL FROM, RCPT TO and DATA for one message.
func (c *conn) writeEnvelope(from, to string) {
	c.w.WriteString("MAIL FROM:<")
	c.w.WriteString(from)
	c.w.WriteString(">")
	c.w.WriteString(utf8Param(from, to))
	c.w.WriteString("\r\nRCPT TO:<")
	c.w.WriteString(to)
	c.w.WriteString(">\r\nDATA\r\n")
}

// writeData writes a message body with SMTP dot-stuffing, turning bare LF
// into CRLF, and the terminating dot; plain data (channel.Message.Plain) it
// writes as it is. It returns the logical stream position just after the
// terminator.
func (c *conn) writeData(data []byte, plain bool) int64 {
	if plain {
		c.w.Write(data)
	} else {
		writeStuffed(c.w, data)
	}
	if len(data) > 0 && data[len(data)-1] != '\n' {
		c.w.WriteString("\r\n")
	}
	c.w.WriteString(".\r\n")
	return c.pos()
}

// writeStuffed writes data dot-stuffed, each bare LF made CRLF.
func writeStuffed(w *bufio.Writer, data []byte) {
	if len(data) > 0 && data[0] == '.' {
		w.WriteByte('.')
	}
	seg := 0
	for i := 0; ; {
		j := bytes.IndexByte(data[i:], '\n')
		if j < 0 {
			break
		}
		j += i
		if j == 0 || data[j-1] != '\r' {
			w.Write(data[seg:j])
			w.WriteString("\r\n")
			seg = j + 1
		}
		if j+1 < len(data) && data[j+1] == '.' {
			w.Write(data[seg : j+1])
			w.WriteByte('.')
			seg = j + 1
		}
		i = j + 1
	}
	w.Write(data[seg:])
}
