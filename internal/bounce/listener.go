package bounce

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
)

// Receiver takes each message the listener accepted: the envelope recipients it was sent to
// (Herald's per-recipient return paths), and the classifier's report. An error makes the
// listener answer 451, so the sending server keeps the message and tries again later: a
// bounce is never lost to a passing database fault.
type Receiver interface {
	Receive(ctx context.Context, envelopeTo []string, rep *Report) error
}

// ReceiverFunc adapts a function to Receiver.
type ReceiverFunc func(ctx context.Context, envelopeTo []string, rep *Report) error

// Receive calls f.
func (f ReceiverFunc) Receive(ctx context.Context, envelopeTo []string, rep *Report) error {
	return f(ctx, envelopeTo, rep)
}

// Listener is Herald's inbound SMTP server for asynchronous bounces, complaints and
// auto-replies (HERALD_BOUNCE_ADDR). It accepts mail only for its return-path domain
// (HERALD_BOUNCE_DOMAIN) — it is not a relay — classifies each message with Parse and hands
// the report to the Receiver. Messages over MaxMessageSize are refused with 552.
type Listener struct {
	srv      *smtp.Server
	domain   string
	receiver Receiver
	log      *slog.Logger
}

// NewListener returns a listener for mail to domain, handing reports to r.
func NewListener(domain string, r Receiver, log *slog.Logger) *Listener {
	l := &Listener{domain: strings.ToLower(strings.TrimSpace(domain)), receiver: r, log: log}
	s := smtp.NewServer(l)
	s.Domain = l.domain
	s.MaxMessageBytes = MaxMessageSize
	s.MaxRecipients = 100
	s.ReadTimeout = 2 * time.Minute
	s.WriteTimeout = 2 * time.Minute
	s.ErrorLog = slogAdapter{log}
	l.srv = s
	return l
}

// Serve accepts connections on ln until Close or Shutdown.
func (l *Listener) Serve(ln net.Listener) error {
	err := l.srv.Serve(ln)
	if errors.Is(err, smtp.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting connections and waits for open sessions to end, or ctx.
func (l *Listener) Shutdown(ctx context.Context) error { return l.srv.Shutdown(ctx) }

// NewSession implements smtp.Backend.
func (l *Listener) NewSession(c *smtp.Conn) (smtp.Session, error) {
	return &session{l: l}, nil
}

type session struct {
	l  *Listener
	to []string
}

func (s *session) Reset()        { s.to = s.to[:0] }
func (s *session) Logout() error { return nil }

// Mail accepts any return path: bounces come with the null sender <>.
func (s *session) Mail(from string, _ *smtp.MailOptions) error { return nil }

func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	at := strings.LastIndexByte(to, '@')
	if at < 0 || !strings.EqualFold(to[at+1:], s.l.domain) {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1},
			Message: "this server only accepts bounces for " + s.l.domain}
	}
	s.to = append(s.to, to)
	return nil
}

func (s *session) Data(r io.Reader) error {
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(r); err != nil {
		return err
	}
	rep := ParseBytes(buf.Bytes())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.l.receiver.Receive(ctx, append([]string(nil), s.to...), rep); err != nil {
		s.l.log.Error("bounce not stored; the sender will retry", "to", s.to, "err", err)
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "temporary failure, try again later"}
	}
	s.l.log.Debug("bounce received", "to", s.to, "kind", rep.Kind, "results", len(rep.Results))
	return nil
}

type slogAdapter struct{ log *slog.Logger }

func (a slogAdapter) Printf(format string, v ...any) { a.log.Warn(fmt.Sprintf(format, v...)) }
func (a slogAdapter) Println(v ...any)               { a.log.Warn(fmt.Sprint(v...)) }
