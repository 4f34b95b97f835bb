package email

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/channel"
	"github.com/heraldhq/herald/internal/channel/email/smtptest"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// testBody is a small message whose lines exercise dot-stuffing.
const testBody = "From: <news@herald.test>\r\nTo: <%s>\r\nSubject: test %d\r\n\r\n" +
	"Hello.\r\n.leading dot\r\n..two dots\r\n.\r\nend\r\n"

func testMessages(n int, to func(i int) string) []channel.Message {
	msgs := make([]channel.Message, n)
	for i := range msgs {
		rcpt := to(i)
		msgs[i] = channel.Message{
			ID: int64(i + 1), To: rcpt, From: "bounces@herald.test",
			Data: fmt.Appendf(nil, testBody, rcpt, i),
		}
	}
	return msgs
}

func rcptN(i int) string { return fmt.Sprintf("user%d@example.com", i) }

func newTestTransport(t *testing.T, opts Options, relays ...Relay) *Transport {
	t.Helper()
	opts.Relays = relays
	if opts.HelloName == "" {
		opts.HelloName = "client.herald.test"
	}
	if opts.Timeout == 0 {
		opts.Timeout = 10 * time.Second
	}
	tr, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

func plainRelay(s *smtptest.Server, maxConns int) Relay {
	return Relay{Addr: s.Addr(), TLS: TLSNone, MaxConns: maxConns}
}

func send(t *testing.T, tr *Transport, msgs []channel.Message) []channel.Outcome {
	t.Helper()
	out := make([]channel.Outcome, len(msgs))
	if err := tr.Send(context.Background(), msgs, out); err != nil {
		t.Fatalf("Send: %v", err)
	}
	return out
}

func wantStatus(t *testing.T, out []channel.Outcome, i int, want channel.Status) {
	t.Helper()
	if out[i].Status != want {
		t.Errorf("out[%d] = %+v, want status %v", i, out[i], want)
	}
}

// wantAll checks that every outcome has status want.
func wantAll(t *testing.T, out []channel.Outcome, want channel.Status) {
	t.Helper()
	for i := range out {
		wantStatus(t, out, i, want)
	}
}

// checkReceived verifies the server got each sent message byte for byte.
func checkReceived(t *testing.T, s *smtptest.Server, msgs []channel.Message, out []channel.Outcome) {
	t.Helper()
	got := map[string][]byte{}
	for _, m := range s.Messages() {
		if len(m.To) != 1 {
			t.Fatalf("message with %d recipients", len(m.To))
		}
		got[m.To[0]] = m.Data
	}
	for i, m := range msgs {
		if out[i].Status != channel.Sent {
			continue
		}
		if d, ok := got[m.To]; !ok {
			t.Errorf("message %d reported sent but not received", i)
		} else if !bytes.Equal(d, m.Data) {
			t.Errorf("message %d received as\n%q\nwant\n%q", i, d, m.Data)
		}
	}
}

// smtpModes are the two ways the client talks to a server: pipelined, and one command at a
// time with a server that does not offer PIPELINING.
var smtpModes = []struct {
	name         string
	noPipelining bool
}{{"pipelined", false}, {"lockstep", true}}

func TestSendModes(t *testing.T) {
	for _, tc := range smtpModes {
		t.Run(tc.name, func(t *testing.T) {
			s := smtptest.Start(t, smtptest.Options{NoPipelining: tc.noPipelining})
			tr := newTestTransport(t, Options{}, plainRelay(s, 3))
			msgs := testMessages(40, rcptN)
			out := send(t, tr, msgs)
			for i := range out {
				wantStatus(t, out, i, channel.Sent)
				if out[i].Code != 250 || !strings.HasPrefix(out[i].ProviderID, "Q") {
					t.Errorf("out[%d] = %+v, want code 250 and a queue id", i, out[i])
				}
			}
			if s.Count() != 40 {
				t.Errorf("server accepted %d messages, want 40", s.Count())
			}
			checkReceived(t, s, msgs, out)
			c := <-tr.pools[0].idle
			if c.pipelining == tc.noPipelining {
				t.Errorf("connection pipelining = %v with server NoPipelining = %v", c.pipelining, tc.noPipelining)
			}
			tr.put(tr.pools[0], c)

			// Connections are reused by the next Send: the pool may still grow to its limit
			// (the first Send can finish before opening all three), never beyond.
			send(t, tr, testMessages(10, rcptN))
			if n := s.Connections(); n > 3 {
				t.Errorf("%d connections opened for 50 messages over two Sends, want at most the pool's 3", n)
			}
		})
	}
}

func TestDataNormalization(t *testing.T) {
	s := smtptest.Start(t, smtptest.Options{})
	tr := newTestTransport(t, Options{}, plainRelay(s, 1))
	msgs := []channel.Message{
		{To: "a@example.com", Data: []byte(".first\nbare LF\r\n.\n..x\nno final newline")},
		{To: "b@example.com", Data: []byte("Subject: x\r\n\r\n.")},
	}
	out := send(t, tr, msgs)
	want := map[string]string{
		"a@example.com": ".first\r\nbare LF\r\n.\r\n..x\r\nno final newline\r\n",
		"b@example.com": "Subject: x\r\n\r\n.\r\n",
	}
	wantAll(t, out, channel.Sent)
	for _, m := range s.Messages() {
		if string(m.Data) != want[m.To[0]] {
			t.Errorf("%s received %q, want %q", m.To[0], m.Data, want[m.To[0]])
		}
	}
}

// TestComposedMessagesGoAsTheyAre sends messages the Composer built from bodies full of dots,
// as plain data, in both modes: the server receives each exactly as built, so the Composer's
// promise that no line starts with a dot holds where SMTP would otherwise need to stuff it.
func TestComposedMessagesGoAsTheyAre(t *testing.T) {
	bodies := [][]byte{
		[]byte(".first\n.\n..two\nlast ."),
		[]byte("caf\xc3\xa9\n.\n" + strings.Repeat("x", 75) + ".y\n"),
		[]byte("<p>.</p>\r\n." + strings.Repeat("z", 80) + "\r\n.."),
	}
	for _, tc := range smtpModes {
		t.Run(tc.name, func(t *testing.T) {
			s := smtptest.Start(t, smtptest.Options{NoPipelining: tc.noPipelining})
			tr := newTestTransport(t, Options{}, plainRelay(s, 2))
			var msgs []channel.Message
			for i, body := range bodies {
				for _, html := range [][]byte{nil, body} {
					to := fmt.Sprintf("user%d@example.com", len(msgs))
					data, err := (&Composer{Domain: "herald.test"}).Build(nil, &Email{From: Address{Addr: "news@herald.test"},
						To: Address{Addr: to}, Subject: fmt.Sprint("dots ", i), Text: body, HTML: html})
					if err != nil {
						t.Fatal(err)
					}
					msgs = append(msgs, channel.Message{To: to, From: "bounces@herald.test", Data: data, Plain: true})
				}
			}
			out := send(t, tr, msgs)
			got := map[string][]byte{}
			for _, m := range s.Messages() {
				got[m.To[0]] = m.Data
			}
			for i, m := range msgs {
				wantStatus(t, out, i, channel.Sent)
				if !bytes.Equal(got[m.To], m.Data) {
					t.Errorf("%s received\n%q\nwant\n%q", m.To, got[m.To], m.Data)
				}
			}
		})
	}
}

func TestTempFailThenSent(t *testing.T) {
	for _, tc := range smtpModes {
		t.Run(tc.name, func(t *testing.T) {
			s := smtptest.Start(t, smtptest.Options{NoPipelining: tc.noPipelining})
			s.Script("user1@example.com", smtptest.FailTimes(2, 451, "4.7.1", "greylisted, try later"))
			clock := newFakeClock()
			tr := newTestTransport(t, Options{Clock: clock}, plainRelay(s, 1))
			msgs := testMessages(3, rcptN)
			for attempt := 1; attempt <= 3; attempt++ {
				out := send(t, tr, msgs)
				wantStatus(t, out, 0, channel.Sent)
				wantStatus(t, out, 2, channel.Sent)
				if attempt < 3 {
					want := channel.Outcome{Status: channel.SoftFail, Code: 451, Enhanced: "4.7.1", Text: "greylisted, try later"}
					if out[1] != want {
						t.Errorf("attempt %d: out[1] = %+v, want %+v", attempt, out[1], want)
					}
				} else {
					wantStatus(t, out, 1, channel.Sent)
				}
				clock.Advance(time.Minute)
			}
			if got := s.Count(); got != 7 {
				t.Errorf("server accepted %d messages, want 7", got)
			}
		})
	}
}

func TestTempFailThrottlesDomain(t *testing.T) {
	s := smtptest.Start(t, smtptest.Options{})
	s.Script("slow@throttled.example", smtptest.FailTimes(1, 450, "4.2.1", "rate limited"))
	// 421 closes the connection: the message was not handed over, so it is
	// tried again on a new connection within the same Send.
	s.Script("closing@other.example", smtptest.FailTimes(1, 421, "4.7.0", "too many messages"))
	tr := newTestTransport(t, Options{Clock: newFakeClock(), Domains: DomainLimits{Conns: map[string]int{"throttled.example": 4}}},
		plainRelay(s, 1))
	out := send(t, tr, []channel.Message{
		{To: "slow@throttled.example", Data: []byte("x\r\n")},
		{To: "other@example.com", Data: []byte("x\r\n")},
		{To: "closing@other.example", Data: []byte("x\r\n")},
		{To: "last@example.com", Data: []byte("x\r\n")},
	})
	wantStatus(t, out, 0, channel.SoftFail)
	if out[0].Code != 450 {
		t.Errorf("out[0] = %+v, want code 450", out[0])
	}
	wantStatus(t, out, 1, channel.Sent)
	wantStatus(t, out, 2, channel.Sent)
	wantStatus(t, out, 3, channel.Sent)
	if s.Attempts("closing@other.example") != 2 || s.Connections() != 2 {
		t.Errorf("421: %d attempts over %d connections, want 2 and 2", s.Attempts("closing@other.example"), s.Connections())
	}
	if r := tr.Domains().Rate("throttled.example"); r <= 0 {
		t.Errorf("throttled.example rate = %v after 421, want a limit", r)
	}
	if c := tr.domains.slots.limit("throttled.example"); c != 2 {
		t.Errorf("throttled.example may have %d messages in progress after the 450, want its 4 halved", c)
	}
	if r := tr.Domains().Rate("example.com"); r != 0 {
		t.Errorf("example.com rate = %v, want no limit", r)
	}
}

func TestHardFail(t *testing.T) {
	for _, tc := range smtpModes {
		t.Run(tc.name, func(t *testing.T) {
			s := smtptest.Start(t, smtptest.Options{NoPipelining: tc.noPipelining})
			s.Script("user1@example.com", smtptest.Always(smtptest.Action{Code: 550, Enhanced: "5.1.1", Text: "no such user"}))
			s.Script("user3@example.com", smtptest.Always(smtptest.Action{Stage: smtptest.AtData, Code: 554, Enhanced: "5.7.1", Text: "content rejected"}))
			tr := newTestTransport(t, Options{}, plainRelay(s, 1))
			msgs := testMessages(5, rcptN)
			out := send(t, tr, msgs)
			wants := []channel.Outcome{
				1: {Status: channel.HardFail, Code: 550, Enhanced: "5.1.1", Text: "no such user"},
				3: {Status: channel.HardFail, Code: 554, Enhanced: "5.7.1", Text: "content rejected"},
			}
			for _, i := range []int{1, 3} {
				if out[i] != wants[i] {
					t.Errorf("out[%d] = %+v, want %+v", i, out[i], wants[i])
				}
			}
			for _, i := range []int{0, 2, 4} {
				wantStatus(t, out, i, channel.Sent)
			}
			checkReceived(t, s, msgs, out)
			if s.Connections() != 1 {
				t.Errorf("used %d connections, want 1 (RSET keeps the connection usable)", s.Connections())
			}
		})
	}
}

// TestRefusedLastMessage: a batch whose last message is refused leaves its connection with a
// transaction open on the server (MAIL accepted, its only recipient refused); the next batch on
// that connection resets it first instead of meeting "503 nested MAIL command", which would
// fail its first recipient for good.
func TestRefusedLastMessage(t *testing.T) {
	for _, tc := range smtpModes {
		t.Run(tc.name, func(t *testing.T) {
			s := smtptest.Start(t, smtptest.Options{NoPipelining: tc.noPipelining})
			s.Script("user0@example.com", smtptest.Always(smtptest.Action{Code: 550, Enhanced: "5.1.1", Text: "no such user"}))
			tr := newTestTransport(t, Options{}, plainRelay(s, 1))
			out := send(t, tr, testMessages(1, rcptN))
			wantStatus(t, out, 0, channel.HardFail)
			msgs := testMessages(3, func(i int) string { return rcptN(i + 1) })
			out = send(t, tr, msgs)
			wantAll(t, out, channel.Sent)
			checkReceived(t, s, msgs, out)
			if s.Connections() != 1 {
				t.Errorf("used %d connections, want 1", s.Connections())
			}
		})
	}
}

// TestServerClosesIdleConnections: a relay that closes connections idle for a while (Postfix's
// smtpd_timeout, with "421 4.4.2 Idle timeout") leaves stale connections in the pool; the next
// batch finds out, sends each message once on a fresh connection, counts no try against it and
// does not take the 421 as a domain asking to slow down.
func TestServerClosesIdleConnections(t *testing.T) {
	for _, tc := range smtpModes {
		t.Run(tc.name, func(t *testing.T) {
			s := smtptest.Start(t, smtptest.Options{NoPipelining: tc.noPipelining, IdleTimeout: 300 * time.Millisecond})
			tr := newTestTransport(t, Options{MaxAttempts: 1}, plainRelay(s, 2))
			out := send(t, tr, testMessages(4, rcptN))
			wantAll(t, out, channel.Sent)
			before := s.Connections()
			time.Sleep(800 * time.Millisecond) // the server closes the pooled connections
			msgs := testMessages(4, func(i int) string { return rcptN(i + 10) })
			out = send(t, tr, msgs)
			wantAll(t, out, channel.Sent)
			checkReceived(t, s, msgs, out)
			for _, m := range msgs {
				if n := s.Attempts(m.To); n != 1 {
					t.Errorf("%s: %d attempts, want 1", m.To, n)
				}
			}
			if s.Connections() == before {
				t.Error("the second batch went out on no new connection")
			}
			if r := tr.Domains().Rate("example.com"); r != 0 {
				t.Errorf("example.com limited to %v msgs/s after an idle timeout", r)
			}
		})
	}
}

func TestDroppedConnection(t *testing.T) {
	drop := func(d smtptest.Drop) smtptest.Script {
		return func(attempt int) smtptest.Action {
			if attempt == 1 {
				return smtptest.Action{Stage: smtptest.AtData, Drop: d}
			}
			return smtptest.Action{}
		}
	}
	for _, tc := range []struct {
		name         string
		noPipelining bool
		drop         smtptest.Drop
		maxAttempts  int
		want         []channel.Status
	}{
		// The body of message 2 was sent: Unknown. Message 3's envelope
		// was pipelined behind it; it is tried again on a new connection.
		{"pipelined before reply", false, smtptest.DropBeforeReply, 0,
			[]channel.Status{channel.Sent, channel.Sent, channel.Unknown, channel.Sent, channel.Sent}},
		// With one attempt allowed, message 3 (never sent) is SoftFail.
		{"pipelined before reply one attempt", false, smtptest.DropBeforeReply, 1,
			[]channel.Status{channel.Sent, channel.Sent, channel.Unknown, channel.SoftFail, channel.Sent}},
		{"pipelined after reply", false, smtptest.DropAfterReply, 1,
			[]channel.Status{channel.Sent, channel.Sent, channel.Sent, channel.SoftFail, channel.Sent}},
		{"lockstep before reply", true, smtptest.DropBeforeReply, 1,
			[]channel.Status{channel.Sent, channel.Sent, channel.Unknown, channel.Sent, channel.Sent}},
		{"lockstep after reply", true, smtptest.DropAfterReply, 0,
			[]channel.Status{channel.Sent, channel.Sent, channel.Sent, channel.Sent, channel.Sent}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := smtptest.Start(t, smtptest.Options{NoPipelining: tc.noPipelining})
			s.Script("user2@example.com", drop(tc.drop))
			tr := newTestTransport(t, Options{MaxAttempts: tc.maxAttempts}, plainRelay(s, 1))
			msgs := testMessages(5, rcptN)
			out := send(t, tr, msgs)
			for i, w := range tc.want {
				wantStatus(t, out, i, w)
			}
			if out[2].Status == channel.Unknown && !strings.Contains(out[2].Text, "connection lost") {
				t.Errorf("out[2].Text = %q", out[2].Text)
			}
			checkReceived(t, s, msgs, out)
			if s.Attempts("user2@example.com") != 1 {
				t.Errorf("message 2 tried %d times, want 1", s.Attempts("user2@example.com"))
			}
		})
	}
}

// deadRelay accepts connections and closes them at once, counting them.
func deadRelay(t *testing.T) (addr string, accepts *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	accepts = new(atomic.Int64)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepts.Add(1)
			c.Close()
		}
	}()
	return ln.Addr().String(), accepts
}

// rawRelay is a pipelining SMTP server written out by hand, for answers smtptest cannot give
// (a 421 to RSET or to DATA, and the connection closed after). answer gets the connection's
// number, from 1, and each command's verb (MAIL, RCPT, DATA, RSET, QUIT; "." for the end of the
// data; CONNECT before the greeting, where close drops the connection): "" accepts it, and
// close ends the connection after the reply. It counts the commands by verb and the messages
// received.
type rawRelay struct {
	addr     string
	mu       sync.Mutex
	conns    int
	cmds     map[string]int
	received int
}

func startRawRelay(t *testing.T, answer func(conn int, verb string) (reply string, close bool)) *rawRelay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	r := &rawRelay{addr: ln.Addr().String(), cmds: map[string]int{}}
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			r.mu.Lock()
			r.conns++
			n := r.conns
			r.mu.Unlock()
			go r.serve(nc, n, answer)
		}
	}()
	return r
}

func (r *rawRelay) serve(nc net.Conn, n int, answer func(int, string) (string, bool)) {
	defer nc.Close()
	in := bufio.NewReader(nc)
	say := func(s string) { nc.Write([]byte(s + "\r\n")) }
	if _, closing := answer(n, "CONNECT"); closing {
		return
	}
	say("220 relay.test ESMTP")
	inData := false
	for {
		line, err := in.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		if inData {
			if line == "." {
				inData = false
				reply, closing := answer(n, ".")
				if reply == "" {
					r.mu.Lock()
					r.received++
					r.mu.Unlock()
					reply = "250 2.0.0 Ok: queued as Q"
				}
				say(reply)
				if closing {
					return
				}
			}
			continue
		}
		verb := strings.ToUpper(strings.SplitN(line, " ", 2)[0])
		if verb == "EHLO" {
			say("250-relay.test\r\n250 PIPELINING")
			continue
		}
		r.mu.Lock()
		r.cmds[verb]++
		r.mu.Unlock()
		reply, closing := answer(n, verb)
		switch {
		case reply != "":
		case verb == "DATA":
			reply, inData = "354 End data with <CR><LF>.<CR><LF>", true
		case verb == "QUIT":
			reply, closing = "221 2.0.0 Bye", true
		default:
			reply = "250 2.0.0 Ok"
		}
		say(reply)
		if closing {
			return
		}
	}
}

func (r *rawRelay) counts() (conns int, cmds map[string]int, received int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.conns, maps.Clone(r.cmds), r.received
}

// TestRsetAnswered421: Postfix ends a session whose refusals pass smtpd_hard_error_limit with
// "421 4.7.0 Error: too many errors" to the next command, the RSET after a refused recipient
// when pipelining: the message whose envelope followed the RSET was not looked at, and goes
// out on a new connection, at no try's cost (a try of one was a 15-minute retry before).
func TestRsetAnswered421(t *testing.T) {
	r := startRawRelay(t, func(conn int, verb string) (string, bool) {
		switch {
		case conn > 1:
			return "", false
		case verb == "RCPT":
			return "550 5.1.1 <user0@example.com>: Recipient address rejected: User unknown", false
		case verb == "DATA":
			return "554 5.5.1 Error: no valid recipients", false
		case verb == "RSET":
			return "421 4.7.0 relay.test Error: too many errors", true
		}
		return "", false
	})
	tr := newTestTransport(t, Options{Clock: newFakeClock(), MaxAttempts: 1}, Relay{Addr: r.addr, TLS: TLSNone, MaxConns: 1})
	out := send(t, tr, testMessages(2, rcptN))
	wantStatus(t, out, 0, channel.HardFail)
	wantStatus(t, out, 1, channel.Sent)
	if conns, _, received := r.counts(); conns != 2 || received != 1 {
		t.Errorf("%d connections, %d messages received; want 2 and 1", conns, received)
	}
}

// TestRefusedThenClosed: a recipient refused for good, then the connection closed with a 421
// to the DATA pipelined after it (Postfix past its smtpd_hard_error_limit), keeps its refusal:
// it is not asked again on another connection. And a 421 to MAIL FROM with the connection
// closed is reported with its text, not as the end of file that follows.
func TestRefusedThenClosed(t *testing.T) {
	r := startRawRelay(t, func(conn int, verb string) (string, bool) {
		switch verb {
		case "RCPT":
			return "550 5.1.1 <bad@example.com>: Recipient address rejected: User unknown", false
		case "DATA":
			return "421 4.7.0 relay.test Error: too many errors", true
		}
		return "", false
	})
	tr := newTestTransport(t, Options{Clock: newFakeClock()}, Relay{Addr: r.addr, TLS: TLSNone, MaxConns: 1})
	out := send(t, tr, []channel.Message{{ID: 1, To: "bad@example.com", From: "bounces@herald.test", Data: []byte("Subject: x\r\n\r\nx\r\n")}})
	wantStatus(t, out, 0, channel.HardFail)
	if out[0].Code != 550 {
		t.Errorf("out[0] = %+v, want the 550", out[0])
	}
	if _, cmds, _ := r.counts(); cmds["RCPT"] != 1 {
		t.Errorf("the refused recipient was named %d times, want once", cmds["RCPT"])
	}

	closing := startRawRelay(t, func(conn int, verb string) (string, bool) {
		if verb == "MAIL" {
			return "421 4.7.0 relay.test Error: too many connections from 127.0.0.1", true
		}
		return "", false
	})
	tr = newTestTransport(t, Options{Clock: newFakeClock(), MaxAttempts: 1}, Relay{Addr: closing.addr, TLS: TLSNone, MaxConns: 1})
	out = send(t, tr, testMessages(1, rcptN))
	if out[0].Status == channel.Sent || !strings.Contains(out[0].Text, "too many connections") {
		t.Errorf("out[0] = %+v, want the 421 and its text", out[0])
	}
}

// TestEndOfDataAnswered421: a 421 to the end of the data (a server shutting down) refuses the
// message and closes the connection: the message goes out on another connection within the
// same Send, instead of to a 15-minute retry, and its domain is not slowed down for it.
func TestEndOfDataAnswered421(t *testing.T) {
	r := startRawRelay(t, func(conn int, verb string) (string, bool) {
		if conn == 1 && verb == "." {
			return "421 4.3.2 relay.test Service shutting down, closing transmission channel", true
		}
		return "", false
	})
	tr := newTestTransport(t, Options{Clock: newFakeClock()}, Relay{Addr: r.addr, TLS: TLSNone, MaxConns: 1})
	out := send(t, tr, testMessages(3, rcptN))
	wantAll(t, out, channel.Sent)
	if conns, _, received := r.counts(); conns != 2 || received != 3 {
		t.Errorf("%d connections, %d messages received; want 2 and 3", conns, received)
	}
	if rate := tr.Domains().Rate("example.com"); rate != 0 {
		t.Errorf("example.com slowed down to %v/s for a server shutting down", rate)
	}

	// One try a message: the one refused with the 421 has had its try; the next one, whose
	// envelope followed the dot, was not looked at and goes on the next connection.
	r = startRawRelay(t, func(conn int, verb string) (string, bool) {
		if conn == 1 && verb == "." {
			return "421 4.3.2 relay.test Service shutting down, closing transmission channel", true
		}
		return "", false
	})
	tr = newTestTransport(t, Options{Clock: newFakeClock(), MaxAttempts: 1}, Relay{Addr: r.addr, TLS: TLSNone, MaxConns: 1})
	out = send(t, tr, testMessages(2, rcptN))
	wantStatus(t, out, 0, channel.SoftFail)
	wantStatus(t, out, 1, channel.Sent)
}

// TestRelayBackToItsConnections: a relay marked down by a failed dial while other
// connections to it stayed open, and tried again over those, gets its max_conns back once it
// takes mail: it stayed at one connection for as long as those lived (found in review).
func TestRelayBackToItsConnections(t *testing.T) {
	r := startRawRelay(t, func(conn int, verb string) (string, bool) {
		return "", conn == 2 && verb == "CONNECT" // the second connection is dropped unanswered
	})
	clock := newFakeClock()
	tr := newTestTransport(t, Options{Clock: clock}, Relay{Addr: r.addr, TLS: TLSNone, MaxConns: 4})
	wantAll(t, send(t, tr, testMessages(8, rcptN)), channel.Sent)
	clock.Advance(5 * time.Second)
	for range 3 {
		wantAll(t, send(t, tr, testMessages(200, rcptN)), channel.Sent)
	}
	if n := tr.pools[0].maxConns(clock.Now()); n != 4 {
		t.Errorf("after 600 messages taken, the relay gets %d connections, want its 4", n)
	}
}

// TestRelaysOfferingDifferently: with two relays of which one offers SMTPUTF8 and a larger
// SIZE, the messages the other cannot carry go through the one that can, instead of failing on
// whichever relay's connection took them; with no relay up that can, they fail as before.
func TestRelaysOfferingDifferently(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef012345678901234567890123456789012345678901234\r\n"), 40) // 2,560 bytes
	msgs := testMessages(40, rcptN)
	for i := range msgs {
		switch i % 4 {
		case 1:
			msgs[i].To = fmt.Sprintf("jörg%d@example.com", i)
		case 2:
			msgs[i].Data = append(append([]byte{}, msgs[i].Data...), big...)
		}
	}
	able := smtptest.Start(t, smtptest.Options{SMTPUTF8: true})
	plain := smtptest.Start(t, smtptest.Options{MaxMessageBytes: 2048})
	tr := newTestTransport(t, Options{Clock: newFakeClock()}, plainRelay(plain, 2), plainRelay(able, 2))
	for round := range 2 { // the second with both relays' offers known
		out := send(t, tr, msgs)
		wantAll(t, out, channel.Sent)
		for _, m := range plain.Messages() {
			if !ascii(m.To[0]) || len(m.Data) > 2048 {
				t.Fatalf("round %d: the relay without SMTPUTF8 and with SIZE 2048 got %s, %d bytes", round, m.To[0], len(m.Data))
			}
		}
	}
	if plain.Count() == 0 {
		t.Error("the relay without SMTPUTF8 got nothing: the test tells nothing")
	}

	// The relay that can is down: they wait, untried.
	dead, _ := deadRelay(t)
	clock := newFakeClock()
	down := newTestTransport(t, Options{Clock: clock}, plainRelay(smtptest.Start(t, smtptest.Options{}), 2), Relay{Addr: dead, TLS: TLSNone, MaxConns: 2})
	send(t, down, testMessages(4, rcptN)) // the dead relay tried once, and skipped
	out := send(t, down, msgs[:4])
	for i, want := range []channel.Status{channel.Sent, channel.Deferred, channel.Sent, channel.Sent} {
		wantStatus(t, out, i, want)
	}

	// Only the relay that cannot carry them: they fail, each with its reason.
	only := newTestTransport(t, Options{Clock: newFakeClock()}, plainRelay(smtptest.Start(t, smtptest.Options{MaxMessageBytes: 2048}), 2))
	out = send(t, only, msgs)
	for i := range out {
		want := channel.Sent
		if i%4 == 1 || i%4 == 2 {
			want = channel.HardFail
		}
		wantStatus(t, out, i, want)
	}
}

// closedAddr returns an address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestFailover(t *testing.T) {
	dead, accepts := deadRelay(t)
	s := smtptest.Start(t, smtptest.Options{})
	clock := newFakeClock()
	tr := newTestTransport(t, Options{Clock: clock, BackoffMin: time.Second},
		Relay{Addr: dead, TLS: TLSNone, MaxConns: 2}, plainRelay(s, 2))

	msgs := testMessages(30, rcptN)
	out := send(t, tr, msgs)
	wantAll(t, out, channel.Sent)
	first := accepts.Load()
	if first == 0 {
		t.Fatal("the dead relay was never tried")
	}

	// Within the back-off the dead relay is skipped.
	out = send(t, tr, msgs)
	wantAll(t, out, channel.Sent)
	if got := accepts.Load(); got != first {
		t.Errorf("dead relay dialled %d more times during its back-off", got-first)
	}

	// After the back-off it is tried again, and skipped for twice as long.
	clock.Advance(1100 * time.Millisecond)
	send(t, tr, msgs)
	second := accepts.Load()
	if second == first {
		t.Error("dead relay not retried after its back-off")
	}
	clock.Advance(1100 * time.Millisecond)
	send(t, tr, msgs)
	if accepts.Load() != second {
		t.Error("dead relay retried before its doubled back-off")
	}
	if s.Count() != 4*30 {
		t.Errorf("live relay accepted %d, want %d", s.Count(), 4*30)
	}
}

// TestRelayConnectionLimit: a relay that takes fewer connections than max_conns and refuses
// the next with "421 Too many connections" is up, not down: every message goes out over the
// connections it took, batch after batch, instead of the next batches failing as "no SMTP
// relay reachable"; one more connection is tried again only after a while.
func TestRelayConnectionLimit(t *testing.T) {
	s := smtptest.Start(t, smtptest.Options{MaxConns: 2})
	clock := newFakeClock()
	tr := newTestTransport(t, Options{Clock: clock, IdleTimeout: time.Hour}, plainRelay(s, 4))
	// slow keeps the connections open busy answering DATA, so that the batch
	// has messages left when the Send's other goroutines look for a
	// connection: without it, two connections could take all twenty before
	// those goroutines start, and never dial.
	slow := func(first int) {
		for i := range 20 {
			s.Script(rcptN(first+i), smtptest.Always(smtptest.Action{Stage: smtptest.AtData, Delay: 10 * time.Millisecond}))
		}
	}
	slow(0)
	slow(2000)
	for round := range 4 {
		out := send(t, tr, testMessages(20, func(i int) string { return rcptN(i + 100*round) }))
		wantAll(t, out, channel.Sent)
	}
	if n := s.Refused(); n < 1 || n > 4 {
		t.Errorf("%d connections refused over four batches; want the first batches' only", n)
	}
	refused := s.Refused()
	out := send(t, tr, testMessages(20, func(i int) string { return rcptN(i + 1000) }))
	wantAll(t, out, channel.Sent)
	if s.Refused() != refused {
		t.Errorf("a connection was tried again within %v of the refusal", connLimitFor)
	}
	clock.Advance(connLimitFor + time.Second)
	out = send(t, tr, testMessages(20, func(i int) string { return rcptN(i + 2000) }))
	wantAll(t, out, channel.Sent)
	if s.Refused() == refused {
		t.Errorf("no connection beyond the two was tried %v after the refusal", connLimitFor)
	}
}

// TestRelayRefusalsBeforeTheFirstConnection: a relay that takes one connection
// refuses the others at once, while the one it took is still greeting. Two
// Sends at once (two workers' first batches) must both go out over that one
// connection; marking the relay down at the first refusal failed the other
// Send's batch with "no SMTP relay reachable".
func TestRelayRefusalsBeforeTheFirstConnection(t *testing.T) {
	s := smtptest.Start(t, smtptest.Options{MaxConns: 1, GreetDelay: 200 * time.Millisecond})
	var logs bytes.Buffer
	tr := newTestTransport(t, Options{Clock: newFakeClock(), Logger: slog.New(slog.NewTextHandler(&logs, nil))}, plainRelay(s, 4))
	outs := make([][]channel.Outcome, 2)
	var wg sync.WaitGroup
	for k := range outs {
		wg.Go(func() { outs[k] = send(t, tr, testMessages(10, func(i int) string { return rcptN(i + 100*k) })) })
	}
	wg.Wait()
	for _, out := range outs {
		wantAll(t, out, channel.Sent)
	}
	if s.Refused() == 0 {
		t.Fatal("the relay refused no connection: the test did not make the case")
	}
	if strings.Contains(logs.String(), "unreachable") {
		t.Errorf("the relay was logged unreachable:\n%s", logs.String())
	}
}

// TestSenderRefused: a relay that refuses the envelope sender for good (a
// sender it does not own, AUTH it wants) refuses it whoever the recipient,
// so no message fails for it: each is a soft failure, retried later, and the
// relay is skipped like one that is down until it takes a sender again.
func TestSenderRefused(t *testing.T) {
	for _, tc := range smtpModes {
		t.Run(tc.name, func(t *testing.T) {
			s := smtptest.Start(t, smtptest.Options{NoPipelining: tc.noPipelining})
			s.RefuseSenders(smtptest.Action{Code: 553, Enhanced: "5.7.1", Text: "Sender address rejected: not owned by user"})
			clock := newFakeClock()
			var logs bytes.Buffer
			tr := newTestTransport(t, Options{Clock: clock, Logger: slog.New(slog.NewTextHandler(&logs, nil))}, plainRelay(s, 4))
			out := send(t, tr, testMessages(20, rcptN))
			for i := range out {
				wantStatus(t, out, i, channel.Deferred)
				if out[i].Code != 0 || !strings.Contains(out[i].Text, "553 5.7.1 Sender address rejected") {
					t.Errorf("out[%d] = %+v; want code 0 and the relay's answer in the text", i, out[i])
				}
			}
			if n := s.SenderRefusals(); n < 1 || n > 4 {
				t.Errorf("%d MAIL FROM refused; want one for each connection at most", n)
			}
			if !strings.Contains(logs.String(), "refuses the envelope sender") {
				t.Errorf("no warning logged:\n%s", logs.String())
			}

			// Skipped during its back-off, even when a connection to it opens.
			refusals := s.SenderRefusals()
			out = send(t, tr, testMessages(5, rcptN))
			wantAll(t, out, channel.Deferred)
			if wait, _ := tr.Wait(); wait <= 0 {
				t.Error("Wait() = 0 while the relay refusing the sender is skipped")
			}
			if s.SenderRefusals() != refusals {
				t.Error("the relay was tried during its back-off")
			}

			// Back after it, when the relay takes the sender again.
			s.RefuseSenders(smtptest.Action{})
			clock.Advance(time.Minute)
			out = send(t, tr, testMessages(20, func(i int) string { return rcptN(i + 100) }))
			wantAll(t, out, channel.Sent)
			if s.Count() != 20 {
				t.Errorf("server accepted %d, want 20", s.Count())
			}
		})
	}
}

// TestQuotaUsedUp: a relay answering that the sending quota of Herald's account is used up,
// at RCPT TO (Microsoft 365) or after the data (Gmail, with a 550), fails no message: every one
// comes back untried, the relay is skipped with its answer for the operator, tried again after
// each back-off (which a connection opened or a recipient taken does not end), and used again
// from the first message it accepts.
func TestQuotaUsedUp(t *testing.T) {
	answers := []struct {
		name string
		a    smtptest.Action
	}{
		{"rcpt", smtptest.Action{Code: 550, Enhanced: "5.1.90", Text: "Your message can't be sent because you've reached your daily limit for message recipients"}},
		{"data", smtptest.Action{Stage: smtptest.AtData, Code: 550, Enhanced: "5.4.5", Text: "Daily user sending quota exceeded."}},
	}
	for _, ans := range answers {
		for _, tc := range smtpModes {
			t.Run(ans.name+"/"+tc.name, func(t *testing.T) {
				s := smtptest.Start(t, smtptest.Options{NoPipelining: tc.noPipelining})
				msgs := testMessages(20, rcptN)
				for _, m := range msgs {
					s.Script(m.To, smtptest.Always(ans.a))
				}
				tries := func() (n int) {
					for _, m := range msgs {
						n += s.Attempts(m.To)
					}
					return n
				}
				clock := newFakeClock()
				var logs bytes.Buffer
				tr := newTestTransport(t, Options{Clock: clock, Logger: slog.New(slog.NewTextHandler(&logs, nil))}, plainRelay(s, 4))
				out := send(t, tr, msgs)
				wantAll(t, out, channel.Deferred)
				// One transaction a connection at most, and the next one's envelope when the
				// answer comes after the data of a pipelined one.
				if n := tries(); n < 1 || n > 8 || n > 4 && (ans.a.Stage != smtptest.AtData || tc.noPipelining) {
					t.Errorf("%d transactions over 4 connections", n)
				}
				wait, why := tr.Wait()
				if wait != time.Second || !strings.Contains(why, ans.a.Text) {
					t.Errorf("Wait() = %v, %q; want 1s and the relay's answer", wait, why)
				}
				if !strings.Contains(logs.String(), "sending quota is used up") {
					t.Errorf("no warning logged:\n%s", logs.String())
				}

				// Skipped during its back-off.
				before := tries()
				wantAll(t, send(t, tr, msgs[:5]), channel.Deferred)
				if tries() != before {
					t.Error("the relay was tried during its back-off")
				}

				// Tried after it, still used up: the back-off doubles.
				clock.Advance(time.Second)
				wantAll(t, send(t, tr, msgs[:5]), channel.Deferred)
				if tries() == before {
					t.Error("the relay was not tried after its back-off")
				}
				if wait, _ := tr.Wait(); wait != 2*time.Second {
					t.Errorf("second back-off: Wait() = %v, want 2s", wait)
				}

				// The quota is back (new recipients are not refused): used from the first.
				clock.Advance(time.Minute)
				more := testMessages(20, func(i int) string { return rcptN(i + 100) })
				wantAll(t, send(t, tr, more), channel.Sent)
				if wait, why := tr.Wait(); wait != 0 || why != "" {
					t.Errorf("after the relay took mail again: Wait() = %v, %q", wait, why)
				}
				if !strings.Contains(logs.String(), "takes mail again") {
					t.Errorf("no notice that the relay takes mail again:\n%s", logs.String())
				}
			})
		}
	}
}

// TestRelayLevelAnswers: which answers say the relay limits the client's pace (clientLimited)
// and which that the account's quota is used up (quotaUsedUp; checked first, so an answer may
// be both), rather than anything about the recipient.
func TestRelayLevelAnswers(t *testing.T) {
	const to = "ann@example.com"
	for _, tc := range []struct {
		code        int
		enhanced    string
		text        string
		pace, quota bool
	}{
		{450, "", "Error: too many recipients from 192.0.2.1", true, false},
		{450, "", "Error: too much mail from 192.0.2.1", true, false},
		{454, "", "Throttling failure: Maximum sending rate exceeded", true, false},
		{454, "", "Throttling failure: Daily message quota exceeded", true, true},
		{451, "", "Ratelimit exceeded for sender", true, false},
		{432, "4.3.2", "STOREDRV.ClientSubmit; sender thread limit exceeded [Hostname=AM0PR01MB1234]", true, false},
		{450, "", "Try again later", false, false},
		{450, "4.7.1", "<ann@example.com>: Recipient address rejected: Rate limit reached, retry later", true, false}, // a policy server's
		{450, "", "<ann@example.com>: Recipient address rejected: Greylisted", false, false},
		{450, "", "ann@example.com is receiving mail too fast: rate limit", false, false}, // the recipient's
		{452, "", "Mailbox quota exceeded", false, false},
		{554, "", "Throttling failure: Daily message quota exceeded", false, true}, // permanent: not a pace
		{454, "", "TLS not available due to local problem", false, false},
		{450, "4.2.1", "The user you are trying to contact is receiving mail at a rate that prevents additional messages: rate limit", false, false},
		{450, "4.7.1", "Error: too many recipients from 192.0.2.1", true, false},
		{550, "5.4.5", "Daily user sending quota exceeded. d75a77b69052e - gsmtp", false, true},
		{550, "5.4.5", "Daily user sending limit exceeded. For more information on Gmail sending limits go to https://support.google.com/a/answer/166852", false, true},
		{550, "5.1.90", "Your message can't be sent because you've reached your daily limit for message recipients", false, true},
		{554, "5.2.0", "STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message", false, true},
		{550, "5.7.1", "<DATA>: Data command rejected: limit of 400 rcpts per 24 hours for client news@example.org reached", false, true},
		{451, "", "Authentication failed: Maximum credits exceeded", false, true},
		{450, "4.7.1", "<ann@example.com>: Recipient address rejected: daily sending quota exceeded", false, true}, // a policy server's
		{552, "5.2.2", "Mailbox quota exceeded", false, false},
		{452, "4.2.2", "The email account that you tried to reach is over quota", false, false},
		{550, "5.7.1", "ann@example.com has reached its sending limit", false, false}, // names the recipient
		{250, "2.0.0", "Ok: queued as sending quota", false, false},
	} {
		o := channel.Outcome{Code: tc.code, Enhanced: tc.enhanced, Text: tc.text}
		if got := clientLimited(o, to); got != tc.pace {
			t.Errorf("%d %s %s: clientLimited = %v, want %v", tc.code, tc.enhanced, tc.text, got, tc.pace)
		}
		if got := quotaUsedUp(o, to); got != tc.quota {
			t.Errorf("%d %s %s: quotaUsedUp = %v, want %v", tc.code, tc.enhanced, tc.text, got, tc.quota)
		}
	}
}

// TestSenderRefusedAfterData: Amazon SES checks the From identity after the data ("554
// Message rejected: Email address is not verified ..."): every message would be refused so,
// and none fails for it; the relay is skipped like one whose quota is used up. Its sandbox
// names an unverified recipient the same way: that one is the recipient's, and fails.
func TestSenderRefusedAfterData(t *testing.T) {
	for _, tc := range smtpModes {
		t.Run(tc.name, func(t *testing.T) {
			s := smtptest.Start(t, smtptest.Options{NoPipelining: tc.noPipelining})
			msgs := testMessages(10, rcptN)
			const unverified = "Message rejected: Email address is not verified. The following identities failed the check in region US-EAST-1: "
			for _, m := range msgs {
				s.Script(m.To, smtptest.Always(smtptest.Action{Stage: smtptest.AtData, Code: 554, Text: unverified + "news@shop.example"}))
			}
			var logs bytes.Buffer
			tr := newTestTransport(t, Options{Clock: newFakeClock(), Logger: slog.New(slog.NewTextHandler(&logs, nil))}, plainRelay(s, 2))
			wantAll(t, send(t, tr, msgs), channel.Deferred)
			if wait, why := tr.Wait(); wait <= 0 || !strings.Contains(why, "news@shop.example") {
				t.Errorf("Wait() = %v, %q; want a back-off and the relay's answer", wait, why)
			}
			if !strings.Contains(logs.String(), "refuses the sender after the data") {
				t.Errorf("no warning logged:\n%s", logs.String())
			}

			sandbox := smtptest.Start(t, smtptest.Options{NoPipelining: tc.noPipelining})
			m := testMessages(1, rcptN)
			sandbox.Script(m[0].To, smtptest.Always(smtptest.Action{Stage: smtptest.AtData, Code: 554, Text: unverified + m[0].To}))
			tr = newTestTransport(t, Options{Clock: newFakeClock()}, plainRelay(sandbox, 1))
			wantAll(t, send(t, tr, m), channel.HardFail)
		})
	}
}

// TestRelayTriedAgainOnOneConnection: a relay tried again after a back-off is tried over one
// connection until it works again, not max_conns at once each refused (Postfix probe: 20
// connections refused at each try of a relay refusing this host); once it works, it gets them
// all again.
func TestRelayTriedAgainOnOneConnection(t *testing.T) {
	s := smtptest.Start(t, smtptest.Options{})
	s.RefuseSenders(smtptest.Action{Code: 554, Enhanced: "5.7.1", Text: "<localhost[127.0.0.1]>: Client host rejected: Access denied"})
	clock := newFakeClock()
	tr := newTestTransport(t, Options{Clock: clock}, plainRelay(s, 4))
	wantAll(t, send(t, tr, testMessages(40, rcptN)), channel.Deferred)
	for range 3 {
		clock.Advance(time.Hour) // past any back-off
		before := s.Connections()
		wantAll(t, send(t, tr, testMessages(40, rcptN)), channel.Deferred)
		if n := s.Connections() - before; n != 1 {
			t.Fatalf("tried again over %d connections, want 1", n)
		}
	}
	s.RefuseSenders(smtptest.Action{})
	clock.Advance(time.Hour)
	wantAll(t, send(t, tr, testMessages(40, rcptN)), channel.Sent)
	before := s.Connections()
	wantAll(t, send(t, tr, testMessages(400, func(i int) string { return rcptN(i + 100) })), channel.Sent)
	if n := s.Connections() - before; n < 2 {
		t.Errorf("working again, the relay got %d new connections for 400 messages; want its max_conns back", n)
	}
}

// TestSenderRefusedClassification: which permanent answers refuse the envelope sender,
// whoever the recipient, rather than the message or its recipient.
func TestSenderRefusedClassification(t *testing.T) {
	const from, to = "b+12.abc@bounce.example", "ann@example.com"
	hard := func(code int, enh, text string) channel.Outcome {
		return channel.Outcome{Status: channel.HardFail, Code: code, Enhanced: enh, Text: text}
	}
	soft := func(code int, enh, text string) channel.Outcome {
		return channel.Outcome{Status: channel.SoftFail, Code: code, Enhanced: enh, Text: text}
	}
	for _, tc := range []struct {
		stage int
		o     channel.Outcome
		want  bool
	}{
		{0, hard(553, "5.7.1", "Sender address rejected: not owned by user"), true},
		{0, hard(530, "5.7.0", "Authentication required"), true},
		{0, hard(552, "5.3.4", "Message size exceeds fixed limit"), false},
		{0, soft(451, "4.3.0", "try later"), false},
		// Postfix with smtpd_delay_reject (its default) answers at RCPT TO.
		{1, hard(554, "5.7.1", "<"+from+">: Sender address rejected: Access denied"), true},
		{1, hard(550, "5.1.8", "Domain of sender address does not exist"), true},
		{1, hard(550, "5.7.1", "<"+from+">: policy says no"), true},
		{1, hard(550, "5.1.1", "<"+to+">: Recipient address rejected: User unknown"), false},
		{1, hard(554, "5.7.1", "<"+to+">: Relay access denied"), false},
		{1, hard(550, "5.7.1", "<"+to+"> from <"+from+">: rejected"), false},
		{1, hard(554, "5.7.1", "Client host blocked using zen.spamhaus.org"), false},
		{1, hard(554, "5.7.1", "<unknown[192.0.2.7]>: Client host rejected: Access denied"), true},
		{2, hard(554, "5.7.1", "Sender address rejected"), false},
		// Temporary refusals of the sender, at either step; other temporary answers are not.
		{1, soft(450, "4.1.8", "<"+from+">: Sender address rejected: Domain not found"), true},
		{0, soft(451, "4.1.8", "Domain of sender address does not resolve"), true},
		{1, soft(450, "4.7.25", "Client host rejected: cannot find your hostname, [192.0.2.7]"), true},
		{1, soft(450, "4.2.0", "<"+to+">: Recipient address rejected: Greylisted"), false},
		{1, soft(450, "4.7.1", "Error: too many recipients from 192.0.2.7"), false},
		{0, soft(421, "4.7.0", "Too many messages, slow down"), false},
		{1, soft(450, "4.7.1", "<"+from+">: Sender address rejected: Rate limit reached"), false}, // a pace
	} {
		if got := senderRefused(tc.stage, tc.o, from, to); got != tc.want {
			t.Errorf("senderRefused(stage %d, %d %s %q) = %v, want %v", tc.stage, tc.o.Code, tc.o.Enhanced, tc.o.Text, got, tc.want)
		}
	}
}

// TestSenderRefusedAtRcpt: a server that refuses the sender at RCPT TO (Postfix's default
// timing) fails no message either: soft failures, the relay skipped.
func TestSenderRefusedAtRcpt(t *testing.T) {
	answers := []struct{ text, logged string }{
		{"<bounces@herald.test>: Sender address rejected: Access denied", "refuses the envelope sender"},
		{"<unknown[192.0.2.7]>: Client host rejected: Access denied", "refuses this host"},
	}
	for _, ans := range answers {
		for _, tc := range smtpModes {
			t.Run(tc.name, func(t *testing.T) {
				s := smtptest.Start(t, smtptest.Options{NoPipelining: tc.noPipelining})
				msgs := testMessages(12, rcptN)
				for _, m := range msgs {
					s.Script(m.To, smtptest.Always(smtptest.Action{Code: 554, Enhanced: "5.7.1", Text: ans.text}))
				}
				var logs bytes.Buffer
				tr := newTestTransport(t, Options{Clock: newFakeClock(), Logger: slog.New(slog.NewTextHandler(&logs, nil))}, plainRelay(s, 2))
				out := send(t, tr, msgs)
				for i := range out {
					wantStatus(t, out, i, channel.Deferred)
					if out[i].Code != 0 || !strings.Contains(out[i].Text, ans.text) {
						t.Errorf("out[%d] = %+v", i, out[i])
					}
				}
				tried := 0
				for _, m := range msgs {
					tried += s.Attempts(m.To)
				}
				if tried < 1 || tried > 2 {
					t.Errorf("%d recipients named; want one for each connection at most", tried)
				}
				if !strings.Contains(logs.String(), ans.logged) {
					t.Errorf("the warning does not say %q:\n%s", ans.logged, logs.String())
				}
			})
		}
	}
}

// TestSenderRefusedFailover: messages a relay refused for its sender go out
// through another relay in the same Send.
func TestSenderRefusedFailover(t *testing.T) {
	refusing := smtptest.Start(t, smtptest.Options{})
	refusing.RefuseSenders(smtptest.Action{Code: 530, Enhanced: "5.7.0", Text: "Authentication required"})
	// The good relay greets late, so that the refusing one is sure to be tried first.
	good := smtptest.Start(t, smtptest.Options{GreetDelay: 50 * time.Millisecond})
	tr := newTestTransport(t, Options{Clock: newFakeClock()}, plainRelay(refusing, 4), plainRelay(good, 4))
	msgs := testMessages(40, rcptN)
	out := send(t, tr, msgs)
	wantAll(t, out, channel.Sent)
	checkReceived(t, good, msgs, out)
	if refusing.SenderRefusals() == 0 {
		t.Error("the refusing relay was never tried: the test did not make the case")
	}
}

// TestMessageTooBigAtMail: 552 to MAIL FROM (its SIZE parameter) is about the
// message, which fails; the relay is not skipped.
func TestMessageTooBigAtMail(t *testing.T) {
	s := smtptest.Start(t, smtptest.Options{})
	s.RefuseSenders(smtptest.Action{Code: 552, Enhanced: "5.3.4", Text: "Message size exceeds fixed limit"})
	tr := newTestTransport(t, Options{Clock: newFakeClock()}, plainRelay(s, 2))
	out := send(t, tr, testMessages(6, rcptN))
	for i := range out {
		wantStatus(t, out, i, channel.HardFail)
		if out[i].Code != 552 {
			t.Errorf("out[%d].Code = %d, want 552", i, out[i].Code)
		}
	}
	if s.SenderRefusals() != 6 {
		t.Errorf("%d MAIL FROM answered 552, want 6 (one a message, the relay not skipped)", s.SenderRefusals())
	}
}

// TestRelayConnectionLimitCountsThoseStillOpening: the relay takes three connections and
// refuses the others at once, while the three it took finish opening one after another. The
// limit Herald keeps to is the three, not the one or two open when the refusals came.
func TestRelayConnectionLimitCountsThoseStillOpening(t *testing.T) {
	s := smtptest.Start(t, smtptest.Options{MaxConns: 3, GreetDelay: 30 * time.Millisecond, GreetDelayStep: 60 * time.Millisecond})
	clock := newFakeClock()
	tr := newTestTransport(t, Options{Clock: clock}, plainRelay(s, 8))
	wantAll(t, send(t, tr, testMessages(40, rcptN)), channel.Sent)
	if s.Refused() == 0 {
		t.Fatal("the relay refused no connection: the test did not make the case")
	}
	if n := tr.pools[0].maxConns(clock.Now()); n != 3 {
		t.Errorf("connections kept to after the refusals: %d, want the 3 the relay takes", n)
	}
}

// TestDialFailedTellsDownFromLimit: with connections to the relay still counted open, a
// dial the relay answered with a refusal ("421 Too many connections") is a connection limit;
// one it did not answer at all (refused, timed out: the relay stopped, and the connections
// counted are dead but not yet found so) makes the relay down.
func TestDialFailedTellsDownFromLimit(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		down bool
	}{
		{"answered 421", fmt.Errorf("relay x: %w", &ReplyError{Step: "greeting", Code: 421, Enhanced: "4.7.0", Text: "Too many connections"}), false},
		{"connection refused", fmt.Errorf("connect to x: %w", syscall.ECONNREFUSED), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := newFakeClock()
			tr := newTestTransport(t, Options{Clock: clock}, Relay{Addr: "192.0.2.1:25", MaxConns: 20})
			p := tr.pools[0]
			p.open = 3
			tr.dialFailed(context.Background(), p, tc.err)
			if wait, _ := tr.Wait(); (wait > 0) != tc.down {
				t.Errorf("relay down = %v, want %v", wait > 0, tc.down)
			}
			if limited := p.maxConns(clock.Now()) == 3; limited == tc.down {
				t.Errorf("connections limited to those open = %v, want %v", limited, !tc.down)
			}
		})
	}
}

func TestAllRelaysDown(t *testing.T) {
	dead, _ := deadRelay(t)
	tr := newTestTransport(t, Options{Clock: newFakeClock()},
		Relay{Addr: closedAddr(t), TLS: TLSNone}, Relay{Addr: dead, TLS: TLSNone})
	out := send(t, tr, testMessages(20, rcptN))
	// Not the recipients' doing: untried, for the engine to send again once a relay is back.
	for i := range out {
		wantStatus(t, out, i, channel.Deferred)
		if out[i].Code != 0 || !strings.Contains(out[i].Text, "no SMTP relay available") {
			t.Errorf("out[%d] = %+v", i, out[i])
		}
	}
	if w, why := tr.Wait(); w <= 0 || !strings.Contains(why, "no SMTP relay available") {
		t.Errorf("Wait() = %v, %q with every relay down, want the back-off left and why", w, why)
	}
}

func TestInvalidMessages(t *testing.T) {
	s := smtptest.Start(t, smtptest.Options{})
	tr := newTestTransport(t, Options{}, plainRelay(s, 1))
	out := send(t, tr, []channel.Message{
		{To: "evil@example.com>\r\nRCPT TO:<other@example.com", Data: []byte("x\r\n")},
		{To: "no-at-sign", Data: []byte("x\r\n")},
		{To: "ok@example.com", Data: nil},
		{To: "ok@example.com", Data: []byte("x\r\n")},
	})
	for i := range 3 {
		wantStatus(t, out, i, channel.HardFail)
		if out[i].Code != 0 {
			t.Errorf("out[%d].Code = %d, want 0 (decided locally)", i, out[i].Code)
		}
	}
	wantStatus(t, out, 3, channel.Sent)
	if s.Count() != 1 {
		t.Errorf("server accepted %d, want 1", s.Count())
	}
}

func TestContextCancelled(t *testing.T) {
	s := smtptest.Start(t, smtptest.Options{})
	tr := newTestTransport(t, Options{}, plainRelay(s, 1))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	msgs := testMessages(3, rcptN)
	out := make([]channel.Outcome, 3)
	if err := tr.Send(ctx, msgs, out); err != nil {
		t.Fatal(err)
	}
	wantAll(t, out, channel.Deferred)
	if s.Count() != 0 {
		t.Errorf("server accepted %d after cancel", s.Count())
	}
}

func TestClosedAndShortOut(t *testing.T) {
	s := smtptest.Start(t, smtptest.Options{})
	tr := newTestTransport(t, Options{}, plainRelay(s, 1))
	msgs := testMessages(2, rcptN)
	if err := tr.Send(context.Background(), msgs, make([]channel.Outcome, 1)); err == nil {
		t.Error("Send with a short out slice: no error")
	}
	tr.Close()
	out := make([]channel.Outcome, 2)
	if err := tr.Send(context.Background(), msgs, out); err != channel.ErrClosed {
		t.Errorf("Send after Close = %v, want ErrClosed", err)
	}
	wantStatus(t, out, 0, channel.Deferred)
}

func TestMaxPerConn(t *testing.T) {
	s := smtptest.Start(t, smtptest.Options{})
	r := plainRelay(s, 1)
	r.MaxPerConn = 3
	tr := newTestTransport(t, Options{}, r)
	out := send(t, tr, testMessages(10, rcptN))
	wantAll(t, out, channel.Sent)
	if got := s.Connections(); got != 4 {
		t.Errorf("used %d connections, want 4", got)
	}
}

func TestTLSAndAuth(t *testing.T) {
	serverTLS, clientTLS := smtptest.SelfSigned(t)
	users := map[string]string{"herald": "s3cret"}
	for _, tc := range []struct {
		name     string
		opts     smtptest.Options
		relay    Relay
		wantSent bool
		wantText string
		sysRoots bool
	}{
		{"starttls plain", smtptest.Options{TLSConfig: serverTLS, Users: users},
			Relay{TLS: TLSRequired, Username: "herald", Password: "s3cret"}, true, "", false},
		{"starttls login", smtptest.Options{TLSConfig: serverTLS, Users: users, AuthMechs: []string{"LOGIN"}},
			Relay{TLS: TLSOpportunistic, Username: "herald", Password: "s3cret"}, true, "", false},
		{"implicit tls", smtptest.Options{TLSConfig: serverTLS, ImplicitTLS: true, Users: users},
			Relay{TLS: TLSImplicit, Username: "herald", Password: "s3cret"}, true, "", false},
		{"wrong password", smtptest.Options{TLSConfig: serverTLS, Users: users},
			Relay{TLS: TLSRequired, Username: "herald", Password: "nope"}, false, "535", false},
		{"starttls required but missing", smtptest.Options{},
			Relay{TLS: TLSRequired}, false, "STARTTLS", false},
		{"untrusted certificate", smtptest.Options{TLSConfig: serverTLS},
			Relay{TLS: TLSRequired}, false, "certificate", true},
		// Opportunistic, as Postfix's "may": encrypted even when the certificate does not verify.
		{"opportunistic, untrusted certificate", smtptest.Options{TLSConfig: serverTLS},
			Relay{TLS: TLSOpportunistic}, true, "", true},
		{"opportunistic, trusted certificate", smtptest.Options{TLSConfig: serverTLS},
			Relay{TLS: TLSOpportunistic}, true, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := smtptest.Start(t, tc.opts)
			r := tc.relay
			r.Addr = s.Addr()
			if !tc.sysRoots { // system roots do not trust the test certificate
				r.TLSConfig = clientTLS
			}
			tr := newTestTransport(t, Options{Clock: newFakeClock()}, r)
			out := send(t, tr, testMessages(3, rcptN))
			for i := range out {
				if tc.wantSent {
					wantStatus(t, out, i, channel.Sent)
				} else { // the relay cannot be used: untried, for the engine to wait
					wantStatus(t, out, i, channel.Deferred)
					if !strings.Contains(out[i].Text, tc.wantText) {
						t.Errorf("out[%d].Text = %q, want it to mention %q", i, out[i].Text, tc.wantText)
					}
				}
			}
			for _, m := range s.Messages() {
				if !m.TLS || (tc.opts.Users != nil && m.User != "herald") {
					t.Errorf("message received with TLS=%v user=%q", m.TLS, m.User)
				}
			}
		})
	}
}

// TestOpportunisticTLSWarns: a relay whose certificate does not verify gets the
// message encrypted under starttls=opportunistic, with one warning saying so.
func TestOpportunisticTLSWarns(t *testing.T) {
	serverTLS, _ := smtptest.SelfSigned(t)
	s := smtptest.Start(t, smtptest.Options{TLSConfig: serverTLS})
	var logs bytes.Buffer
	tr := newTestTransport(t, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))},
		Relay{Addr: s.Addr(), TLS: TLSOpportunistic, MaxConns: 2})
	for round := range 2 {
		out := send(t, tr, testMessages(6, func(i int) string { return rcptN(i + 10*round) }))
		wantAll(t, out, channel.Sent)
	}
	for _, m := range s.Messages() {
		if !m.TLS {
			t.Fatal("a message went in clear text")
		}
	}
	if n := strings.Count(logs.String(), "certificate does not verify"); n != 1 {
		t.Errorf("%d warnings about the certificate, want 1:\n%s", n, logs.String())
	}
}

// TestPasswordAllowed: the relay password goes only over TLS that authenticated the server,
// or to this machine.
func TestPasswordAllowed(t *testing.T) {
	bad := errors.New("x509: certificate signed by unknown authority")
	for _, tc := range []struct {
		addr       string
		tls        bool
		unverified error
		want       string
	}{
		{"smtp.example.com:587", true, nil, ""},
		{"smtp.example.com:587", false, nil, "without TLS"},
		{"smtp.example.com:587", true, bad, "does not verify (x509: certificate signed by unknown authority)"},
		{"127.0.0.1:25", false, nil, ""},
		{"localhost:25", true, bad, ""},
	} {
		err := passwordAllowed(tc.addr, tc.tls, tc.unverified)
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("passwordAllowed(%q, tls=%v, %v) = %v, want %q", tc.addr, tc.tls, tc.unverified, err, tc.want)
		}
	}
}

// TestDomainConns: with a cap on the messages in progress to a domain, the server never has
// more transactions to it at once than the cap, the other domains keep the connections busy
// meanwhile, every message goes out, and no slot is left held.
func TestDomainConns(t *testing.T) {
	for _, tc := range smtpModes {
		t.Run(tc.name, func(t *testing.T) {
			s := smtptest.Start(t, smtptest.Options{NoPipelining: tc.noPipelining})
			var msgs []channel.Message
			for i := range 24 {
				for _, dom := range []string{"capped.example", "free.example"} {
					to := fmt.Sprintf("user%d@%s", i, dom)
					s.Script(to, smtptest.Always(smtptest.Action{Stage: smtptest.AtData, Delay: 20 * time.Millisecond}))
					msgs = append(msgs, channel.Message{To: to, From: "bounces@herald.test", Data: fmt.Appendf(nil, testBody, to, i)})
				}
			}
			tr := newTestTransport(t, Options{MaxWait: 10 * time.Second, Domains: DomainLimits{Conns: map[string]int{"capped.example": 2}}},
				plainRelay(s, 8))
			out := send(t, tr, msgs)
			wantAll(t, out, channel.Sent)
			checkReceived(t, s, msgs, out)
			if n := s.MaxInProgress("capped.example"); n != 2 {
				t.Errorf("capped.example: at most %d transactions at once, want the cap of 2", n)
			}
			if n := s.MaxInProgress("free.example"); n <= 2 {
				t.Errorf("free.example: at most %d transactions at once; it should have had the other connections", n)
			}
			if n := tr.Domains().InProgress("capped.example"); n != 0 {
				t.Errorf("%d slots of capped.example still held after Send", n)
			}
		})
	}
}

// TestDomainConnsOneAtATime: a cap of 1 shared by pipelined connections that all want the same
// domain: a connection that holds the slot reads its own answer before it waits, so none waits
// on another that waits on it, and every message goes out one at a time.
func TestDomainConnsOneAtATime(t *testing.T) {
	s := smtptest.Start(t, smtptest.Options{})
	tr := newTestTransport(t, Options{MaxWait: 10 * time.Second, Domains: DomainLimits{DefaultConns: 1}}, plainRelay(s, 4))
	msgs := testMessages(40, rcptN)
	start := time.Now()
	out := send(t, tr, msgs)
	wantAll(t, out, channel.Sent)
	if n := s.MaxInProgress("example.com"); n != 1 {
		t.Errorf("at most %d transactions at once, want 1", n)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("40 messages took %v: connections waited on each other", d)
	}
}

// TestDomainConnsEveryEndFreesTheSlot: on one connection and a cap of 1, each way a message can
// end (refused at RCPT or after the data, deferred by a 4xx, dropped before the answer, or the
// server closing with 421) frees the domain's slot for the next message, which would otherwise
// wait and be deferred.
func TestDomainConnsEveryEndFreesTheSlot(t *testing.T) {
	for _, tc := range smtpModes {
		t.Run(tc.name, func(t *testing.T) {
			s := smtptest.Start(t, smtptest.Options{NoPipelining: tc.noPipelining})
			ends := []struct {
				act  smtptest.Action
				want channel.Status
			}{
				{smtptest.Action{Code: 550, Enhanced: "5.1.1"}, channel.HardFail},
				{smtptest.Action{Stage: smtptest.AtData, Code: 554, Enhanced: "5.7.1"}, channel.HardFail},
				{smtptest.Action{Code: 451, Enhanced: "4.7.1"}, channel.SoftFail},
				{smtptest.Action{Stage: smtptest.AtData, Drop: smtptest.DropBeforeReply}, channel.Unknown},
				{smtptest.Action{Stage: smtptest.AtData, Drop: smtptest.DropAfterReply}, channel.Sent},
			}
			var msgs []channel.Message
			want := map[int]channel.Status{}
			for k, e := range ends {
				bad := fmt.Sprintf("bad%d@example.com", k)
				s.Script(bad, smtptest.Always(e.act))
				want[len(msgs)] = e.want
				msgs = append(msgs, channel.Message{To: bad, From: "bounces@herald.test", Data: []byte("x\r\n")})
				want[len(msgs)] = channel.Sent
				msgs = append(msgs, channel.Message{To: fmt.Sprintf("good%d@example.com", k), From: "bounces@herald.test", Data: []byte("x\r\n")})
			}
			tr := newTestTransport(t, Options{MaxWait: 200 * time.Millisecond, Domains: DomainLimits{Conns: map[string]int{"example.com": 1}}},
				plainRelay(s, 1))
			out := send(t, tr, msgs)
			for i, st := range want {
				wantStatus(t, out, i, st)
			}
			if n := tr.Domains().InProgress("example.com"); n != 0 {
				t.Errorf("%d slots still held after Send", n)
			}
		})
	}
}

// TestDomainConnsWaitTooLong: a message whose domain has no free slot for longer than MaxWait is
// Deferred (not attempted, no try counted), saying why.
func TestDomainConnsWaitTooLong(t *testing.T) {
	s := smtptest.Start(t, smtptest.Options{})
	s.Script("user0@example.com", smtptest.Always(smtptest.Action{Stage: smtptest.AtData, Delay: time.Second}))
	tr := newTestTransport(t, Options{MaxWait: 100 * time.Millisecond, Domains: DomainLimits{Conns: map[string]int{"example.com": 1}}},
		plainRelay(s, 3))
	out := send(t, tr, testMessages(3, rcptN))
	wantStatus(t, out, 0, channel.Sent)
	for _, i := range []int{1, 2} {
		wantStatus(t, out, i, channel.Deferred)
		if !strings.Contains(out[i].Text, "no free slot for example.com (at most 1 in progress at once) within 100ms") {
			t.Errorf("out[%d].Text = %q", i, out[i].Text)
		}
	}
	if s.Attempts("user1@example.com")+s.Attempts("user2@example.com") != 0 {
		t.Error("a deferred message reached the server")
	}
}
