// Package smtptest runs an in-process SMTP server for tests and benchmarks of
// Herald's email transport.
//
// It is built on github.com/emersion/go-smtp's server, which advertises
// PIPELINING and reads pipelined commands correctly. On top of it the Server
// records every accepted message, and answers per recipient from a Script:
// temporary failures a number of times, permanent refusals, a connection
// dropped around the end of DATA, or a slow answer. Like Postfix, it refuses
// a MAIL command while a transaction is open (503). Sink mode replaces
// go-smtp with a minimal hand-written loop that counts and discards, for
// benchmarks.
package smtptest

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Message is one message the server accepted.
type Message struct {
	// From is the envelope sender (MAIL FROM).
	From string
	// To holds the envelope recipients (RCPT TO).
	To []string
	// Data is the message as received, dot-stuffing removed, CRLF kept.
	Data []byte
	// TLS reports whether the message came over TLS (STARTTLS or implicit).
	TLS bool
	// User is the authenticated user name, or "" without AUTH.
	User string
	// UTF8 reports MAIL FROM's SMTPUTF8 parameter (RFC 6531).
	UTF8 bool
}

// Stage names the point of a transaction where a scripted Action answers.
type Stage int

const (
	// AtRcpt answers the RCPT TO command naming the recipient.
	AtRcpt Stage = iota
	// AtData answers after the message data (the final reply).
	AtData
)

// Drop says whether and when the server closes the connection after the
// message data of a transaction, instead of carrying on.
type Drop int

const (
	// NoDrop keeps the connection open.
	NoDrop Drop = iota
	// DropBeforeReply closes the connection after reading the whole
	// message data, without answering it: the client cannot know whether
	// the message was accepted.
	DropBeforeReply
	// DropAfterReply answers the data normally (the message is accepted
	// and recorded) and then closes the connection.
	DropAfterReply
)

// Action is how the server treats one transaction for one recipient.
// The zero Action accepts the message.
type Action struct {
	// Stage is where Code is answered.
	Stage Stage
	// Code, when non-zero, is the reply code answered at Stage instead of
	// accepting (e.g. 451 or 550).
	Code int
	// Enhanced is the enhanced status code sent with Code, as "x.y.z".
	Enhanced string
	// Text is the reply text sent with Code.
	Text string
	// Drop closes the connection around the final reply.
	Drop Drop
	// Delay is waited before answering at Stage; it makes a slow server.
	Delay time.Duration
}

// Script decides the Action for a recipient's attempt; attempt counts the
// transactions that named the recipient, from 1.
type Script func(attempt int) Action

// FailTimes answers code (a 4xx, typically) at RCPT for the first n attempts
// and accepts after.
func FailTimes(n, code int, enhanced, text string) Script {
	return func(attempt int) Action {
		if attempt <= n {
			return Action{Code: code, Enhanced: enhanced, Text: text}
		}
		return Action{}
	}
}

// Always answers the same Action on every attempt.
func Always(a Action) Script {
	return func(int) Action { return a }
}

// Options configures a Server.
type Options struct {
	// TLSConfig, when set, makes the server offer STARTTLS.
	TLSConfig *tls.Config
	// ImplicitTLS makes the listener speak TLS from the first byte (smtps);
	// it needs TLSConfig.
	ImplicitTLS bool
	// Users, when set, enables AUTH PLAIN and LOGIN (only over TLS unless
	// InsecureAuth) and requires it before MAIL.
	Users map[string]string
	// AuthMechs restricts the AUTH mechanisms offered (of "PLAIN" and
	// "LOGIN"); nil offers both.
	AuthMechs []string
	// InsecureAuth allows AUTH without TLS.
	InsecureAuth bool
	// NoPipelining hides PIPELINING from the EHLO answer, for testing the
	// client's lock-step mode. It works on connections without TLS only.
	NoPipelining bool
	// MaxConns, when set, caps the connections open at once: one more is
	// greeted with "421 4.7.0 Too many connections" and closed, as relays
	// that limit a client's concurrent connections answer.
	MaxConns int
	// IdleTimeout, when set, makes the server close a connection that sent
	// nothing for that long, with "421 4.4.2 Idle timeout" as Postfix's
	// smtpd_timeout does: a client's pooled connection goes stale.
	IdleTimeout time.Duration
	// GreetDelay, when set, delays the greeting of each connection taken (not
	// of those refused for MaxConns, which are answered at once), as a busy
	// relay or a greet pause does.
	GreetDelay time.Duration
	// GreetDelayStep adds to GreetDelay for each connection taken before:
	// the n-th (from 0) is greeted after GreetDelay + n*GreetDelayStep, so
	// that connections opened together finish opening one after another.
	GreetDelayStep time.Duration
	// SMTPUTF8 offers internationalised addresses (RFC 6531). An address
	// beyond ASCII in a transaction without the SMTPUTF8 parameter is refused
	// with 553 5.6.7 either way, as the RFC asks of servers.
	SMTPUTF8 bool
	// MaxMessageBytes, when set, is offered as SIZE and refuses larger messages.
	MaxMessageBytes int64
	// Sink runs a minimal, fast server for benchmarks instead of go-smtp's:
	// it accepts and discards every message, only counting them, and
	// ignores every other option.
	Sink bool
	// Logf receives server errors; nil discards them.
	Logf func(format string, args ...any)
}

// Server is a running in-process SMTP server.
type Server struct {
	opts        Options
	srv         *smtp.Server
	sink        *sink
	ln          net.Listener
	done        chan struct{}
	count       atomic.Int64
	conns       atomic.Int64
	open        atomic.Int64 // connections open now, with MaxConns
	refused     atomic.Int64 // connections refused for MaxConns
	mailRefused atomic.Int64 // MAIL FROM commands refused for RefuseSenders
	taken       atomic.Int64 // connections taken, for GreetDelayStep
	nextID      atomic.Int64

	mu      sync.Mutex
	msgs    []Message
	scripts map[string]Script
	// mailRefusal, when its Code is set, answers MAIL FROM: every one, or
	// the next mailRefusals when that is above 0.
	mailRefusal  Action
	mailRefusals int
	attempts     map[string]int
	// active and maxActive count, per recipient domain, the transactions
	// with an accepted recipient there that have not had their final reply.
	active, maxActive map[string]int
}

// Start starts a server on 127.0.0.1 with a random port and stops it when
// the test ends.
func Start(tb testing.TB, opts Options) *Server {
	tb.Helper()
	s, err := Listen(opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

// Listen starts a server on 127.0.0.1 with a random port; the caller closes it.
func Listen(opts Options) (*Server, error) {
	if opts.ImplicitTLS && opts.TLSConfig == nil {
		return nil, errors.New("smtptest: ImplicitTLS needs a TLSConfig")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("smtptest: listen: %w", err)
	}
	s := &Server{
		opts:      opts,
		ln:        ln,
		done:      make(chan struct{}),
		scripts:   map[string]Script{},
		attempts:  map[string]int{},
		active:    map[string]int{},
		maxActive: map[string]int{},
	}
	if opts.Sink {
		s.sink = &sink{s: s, conns: map[net.Conn]struct{}{}}
		go func() {
			defer close(s.done)
			s.sink.serve(ln)
		}()
		return s, nil
	}
	srv := smtp.NewServer(smtp.BackendFunc(s.newSession))
	srv.Domain = "smtptest.invalid"
	srv.EnableSMTPUTF8 = opts.SMTPUTF8
	srv.MaxMessageBytes = opts.MaxMessageBytes
	srv.AllowInsecureAuth = opts.InsecureAuth
	srv.ReadTimeout = opts.IdleTimeout
	srv.ErrorLog = log.New(io.Discard, "", 0)
	if opts.Logf != nil {
		srv.ErrorLog = log.New(logfWriter(opts.Logf), "smtptest: ", 0)
	}
	var l net.Listener = &countingListener{Listener: ln, s: s}
	if opts.ImplicitTLS {
		l = tls.NewListener(l, opts.TLSConfig)
	} else {
		srv.TLSConfig = opts.TLSConfig
	}
	s.srv = srv
	go func() {
		defer close(s.done)
		srv.Serve(l)
	}()
	return s, nil
}

// Addr returns the host:port the server listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Close stops the server and closes every connection.
func (s *Server) Close() error {
	if s.sink != nil {
		err := s.ln.Close()
		<-s.done
		s.sink.close()
		return err
	}
	err := s.srv.Close()
	s.ln.Close() // in case Serve had not registered it yet
	<-s.done
	return err
}

// Script sets how the server answers transactions naming rcpt.
func (s *Server) Script(rcpt string, sc Script) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.scripts[rcpt] = sc
}

// RefuseSenders makes the server answer every MAIL FROM with a's Code,
// Enhanced and Text, as a relay that does not take mail from the envelope
// sender answers ("553 5.7.1 Sender address rejected: not owned by user");
// the zero Action takes senders again. Sessions count as refused MAIL
// commands in SenderRefusals.
func (s *Server) RefuseSenders(a Action) {
	s.RefuseNextSenders(0, a)
}

// RefuseNextSenders is RefuseSenders for the next n MAIL FROM commands only
// (every one when n is 0), as a relay that asks a burst to slow down.
func (s *Server) RefuseNextSenders(n int, a Action) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mailRefusal, s.mailRefusals = a, n
}

// SenderRefusals returns the number of MAIL FROM commands refused by
// RefuseSenders.
func (s *Server) SenderRefusals() int64 { return s.mailRefused.Load() }

// Count returns the number of messages accepted so far (also in Sink mode).
func (s *Server) Count() int64 { return s.count.Load() }

// Refused returns the number of connections refused for Options.MaxConns.
func (s *Server) Refused() int64 { return s.refused.Load() }

// Connections returns the number of connections accepted so far.
func (s *Server) Connections() int64 { return s.conns.Load() }

// Attempts returns how many transactions have named rcpt so far.
func (s *Server) Attempts(rcpt string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.attempts[rcpt]
}

// MaxInProgress returns the most transactions that had a recipient at domain
// accepted and were not yet answered, at any one time, across connections.
// A transaction is in progress from its accepted RCPT to its final reply
// (counted as ended just before the reply is written) or its reset.
func (s *Server) MaxInProgress(domain string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxActive[domain]
}

// enter counts se's transaction in progress to domain.
func (s *Server) enter(se *session, domain string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	se.domains = append(se.domains, domain)
	s.active[domain]++
	s.maxActive[domain] = max(s.maxActive[domain], s.active[domain])
}

// leave ends se's transaction's count in progress. go-smtp may log a session out (on Close)
// while its connection's goroutine is in Data, hence the lock around se.domains too.
func (s *Server) leave(se *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range se.domains {
		s.active[d]--
	}
	se.domains = se.domains[:0]
}

// Messages returns a copy of the accepted messages, in acceptance order.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.msgs...)
}

func (s *Server) action(rcpt string) Action {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.attempts[rcpt]++
	if sc := s.scripts[rcpt]; sc != nil {
		return sc(s.attempts[rcpt])
	}
	return Action{}
}

func (s *Server) newSession(c *smtp.Conn) (smtp.Session, error) {
	return &session{s: s, c: c}, nil
}

type session struct {
	s       *Server
	c       *smtp.Conn
	user    string
	from    string
	utf8    bool // MAIL FROM had SMTPUTF8
	inMail  bool // a transaction is open: MAIL accepted, not yet ended or reset
	to      []string
	actions []Action
	drop    bool     // close the connection once the final reply is written
	domains []string // recipient domains counted in progress; Server.mu guards it
}

var (
	_ smtp.Session     = (*session)(nil)
	_ smtp.AuthSession = (*session)(nil)
)

func (se *session) AuthMechanisms() []string {
	if se.s.opts.Users == nil {
		return nil
	}
	if se.s.opts.AuthMechs != nil {
		return se.s.opts.AuthMechs
	}
	return []string{sasl.Plain, sasl.Login}
}

func (se *session) Auth(mech string) (sasl.Server, error) {
	if !slices.Contains(se.AuthMechanisms(), mech) {
		return nil, smtp.ErrAuthUnknownMechanism
	}
	check := func(user, pass string) error {
		if want, ok := se.s.opts.Users[user]; !ok || want != pass {
			return &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "bad credentials"}
		}
		se.user = user
		return nil
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(func(identity, user, pass string) error {
			if identity != "" && identity != user {
				return errors.New("identity differs from user")
			}
			return check(user, pass)
		}), nil
	case sasl.Login:
		return &loginServer{check: check}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

func (se *session) Mail(from string, opts *smtp.MailOptions) error {
	if se.s.opts.Users != nil && se.user == "" {
		return smtp.ErrAuthRequired
	}
	if se.inMail {
		// As Postfix and Exim answer (RFC 5321 section 4.1.4): a client must end
		// or reset a transaction before starting another.
		return &smtp.SMTPError{Code: 503, EnhancedCode: smtp.EnhancedCode{5, 5, 1}, Message: "nested MAIL command"}
	}
	se.s.mu.Lock()
	refusal := se.s.mailRefusal
	if se.s.mailRefusals > 0 {
		if se.s.mailRefusals--; se.s.mailRefusals == 0 {
			se.s.mailRefusal = Action{}
		}
	}
	se.s.mu.Unlock()
	if refusal.Code != 0 {
		se.s.mailRefused.Add(1)
		return smtpError(refusal)
	}
	utf8 := opts != nil && opts.UTF8
	if !utf8 && !asciiOnly(from) {
		return errNeedsUTF8
	}
	se.from, se.utf8, se.inMail = from, utf8, true
	return nil
}

// errNeedsUTF8 refuses an address beyond ASCII in a transaction without SMTPUTF8.
var errNeedsUTF8 = &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 6, 7}, Message: "non-ASCII address without SMTPUTF8"}

func asciiOnly(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

func (se *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if !se.utf8 && !asciiOnly(to) {
		return errNeedsUTF8
	}
	a := se.s.action(to)
	if a.Stage == AtRcpt {
		time.Sleep(a.Delay)
		if a.Code != 0 {
			return smtpError(a)
		}
	}
	se.to = append(se.to, to)
	se.actions = append(se.actions, a)
	se.s.enter(se, strings.ToLower(to[strings.LastIndexByte(to, '@')+1:]))
	return nil
}

func (se *session) Data(r io.Reader) error {
	defer se.s.leave(se) // before the final reply is written
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(r); err != nil {
		return err
	}
	for _, a := range se.actions {
		if a.Stage != AtData {
			continue
		}
		time.Sleep(a.Delay)
		switch a.Drop {
		case DropBeforeReply:
			se.c.Conn().Close()
			return errors.New("dropped")
		case DropAfterReply:
			se.drop = true
		}
		if a.Code != 0 {
			return smtpError(a)
		}
	}
	id := se.s.nextID.Add(1)
	se.s.count.Add(1)
	_, isTLS := se.c.TLSConnectionState()
	se.s.mu.Lock()
	se.s.msgs = append(se.s.msgs, Message{
		From: se.from, To: append([]string(nil), se.to...), Data: buf.Bytes(), TLS: isTLS, User: se.user, UTF8: se.utf8,
	})
	se.s.mu.Unlock()
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "Ok: queued as Q" + strconv.FormatInt(id, 10)}
}

// Reset runs after every transaction, once its final reply is written, which
// is where a DropAfterReply takes effect.
func (se *session) Reset() {
	se.s.leave(se)
	se.from, se.utf8, se.to, se.actions, se.inMail = "", false, nil, nil, false
	if se.drop {
		se.drop = false
		se.c.Conn().Close()
	}
}

func (se *session) Logout() error {
	se.s.leave(se)
	return nil
}

func smtpError(a Action) *smtp.SMTPError {
	e := &smtp.SMTPError{Code: a.Code, EnhancedCode: smtp.NoEnhancedCode, Message: a.Text}
	if a.Enhanced != "" {
		var c smtp.EnhancedCode
		if _, err := fmt.Sscanf(a.Enhanced, "%d.%d.%d", &c[0], &c[1], &c[2]); err == nil {
			e.EnhancedCode = c
		}
	}
	if e.Message == "" {
		e.Message = "scripted answer"
	}
	return e
}

// loginServer is the server side of the obsolete but still common AUTH LOGIN
// mechanism, which go-sasl only implements as a client.
type loginServer struct {
	check func(user, pass string) error
	user  string
	step  int
}

func (l *loginServer) Next(response []byte) ([]byte, bool, error) {
	switch l.step {
	case 0:
		l.step++
		if response != nil {
			l.user = string(response)
			l.step++
			return []byte("Password:"), false, nil
		}
		return []byte("Username:"), false, nil
	case 1:
		l.user = string(response)
		l.step++
		return []byte("Password:"), false, nil
	default:
		return nil, true, l.check(l.user, string(response))
	}
}

// countingListener counts connections and, with NoPipelining, hides the
// PIPELINING capability.
type countingListener struct {
	net.Listener
	s *Server
}

func (l *countingListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		l.s.conns.Add(1)
		if max := int64(l.s.opts.MaxConns); max > 0 {
			if l.s.open.Add(1) > max {
				l.s.open.Add(-1)
				l.s.refused.Add(1)
				c.Write([]byte("421 4.7.0 Too many connections, try again later\r\n"))
				c.Close()
				continue
			}
			c = &openConn{Conn: c, open: &l.s.open}
		}
		if d := l.s.opts.GreetDelay; d > 0 {
			n := l.s.taken.Add(1) - 1
			c = &slowGreetConn{Conn: c, delay: d + time.Duration(n)*l.s.opts.GreetDelayStep}
		}
		if l.s.opts.NoPipelining {
			return &noPipeliningConn{Conn: c}, nil
		}
		return c, nil
	}
}

// slowGreetConn waits delay before its first write, the greeting.
type slowGreetConn struct {
	net.Conn
	delay time.Duration
	once  sync.Once
}

func (c *slowGreetConn) Write(p []byte) (int, error) {
	c.once.Do(func() { time.Sleep(c.delay) })
	return c.Conn.Write(p)
}

// openConn counts itself out of the open connections when closed.
type openConn struct {
	net.Conn
	open *atomic.Int64
	once sync.Once
}

func (c *openConn) Close() error {
	c.once.Do(func() { c.open.Add(-1) })
	return c.Conn.Close()
}

// noPipeliningConn drops the "250-PIPELINING" line; go-smtp writes each reply
// line with its own Write call.
type noPipeliningConn struct{ net.Conn }

func (c *noPipeliningConn) Write(p []byte) (int, error) {
	if bytes.Equal(p, []byte("250-PIPELINING\r\n")) {
		return len(p), nil
	}
	return c.Conn.Write(p)
}

type logfWriter func(format string, args ...any)

func (f logfWriter) Write(p []byte) (int, error) {
	f("%s", bytes.TrimRight(p, "\n"))
	return len(p), nil
}
