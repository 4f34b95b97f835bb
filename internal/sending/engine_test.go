package sending

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"io"
	"log/slog"
	"mime/quotedprintable"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/channel"
	"github.com/heraldhq/herald/internal/channel/email"
	"github.com/heraldhq/herald/internal/channel/email/smtptest"
	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/delivery"
	"github.com/heraldhq/herald/internal/quarantine"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/store/storetest"
	"github.com/heraldhq/herald/internal/tracking"
)

var t0 = time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)

const testHTML = `<html><body><p>Hello {{.attributes.first}}</p><a href="https://shop.example/sale">Sale</a>
<a href="{{.unsubscribe_url}}">Unsubscribe</a></body></html>`

// fixture is a database with one delivery in state sending to n recipients.
type fixture struct {
	db    *store.DB
	clk   *clock.Fake
	del   *delivery.Service
	quar  *quarantine.Service
	id    int64
	addrs []string
}

func newFixture(t *testing.T, db *store.DB, n int, validity time.Duration) *fixture {
	t.Helper()
	ctx := context.Background()
	f := &fixture{db: db, clk: clock.NewFake(t0)}
	log := slog.New(slog.DiscardHandler)
	f.del = delivery.NewService(db, f.clk, log)
	f.quar = quarantine.NewService(db, f.clk, log)
	ct := fmt.Sprintf(`{"from_name":"Shop","from_address":"news@shop.example","subject":"Hi {{.attributes.first}}","html":%q}`, testHTML)
	ms := t0.UnixMilli()
	err := db.InTx(ctx, func(tx *sql.Tx) error {
		if err := tx.QueryRowContext(ctx, `INSERT INTO deliveries (name, channel, content, state, validity_seconds, validity_until, prepared_hash, created_at, updated_at)
			VALUES ('d', 'email', $1, 'sending', $2, $3, 'h1', $4, $4) RETURNING id`, ct, int64(validity/time.Second), t0.Add(validity).UnixMilli(), ms).Scan(&f.id); err != nil {
			return err
		}
		for i := range n {
			addr := fmt.Sprintf("user%d@example.org", i)
			var pid int64
			if err := tx.QueryRowContext(ctx, `INSERT INTO profiles (email, email_key, email_domain, attributes, created_at, updated_at)
				VALUES ($1, $1, 'example.org', $2, $3, $3) RETURNING id`, addr, fmt.Sprintf(`{"first":"Ann%d"}`, i), ms).Scan(&pid); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO sending_log (delivery_id, profile_id, address, status) VALUES ($1, $2, $3, 'pending')`, f.id, pid, addr); err != nil {
				return err
			}
			f.addrs = append(f.addrs, addr)
		}
		// As preparation leaves it: to_deliver is the number of pending rows written.
		_, err := tx.ExecContext(ctx, `UPDATE deliveries SET to_deliver = $1, targeted = $1 WHERE id = $2`, n, f.id)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// testTracking returns the tracking links and return path of the test engines.
func testTracking(tb testing.TB) (*tracking.Links, *ReturnPath) {
	tb.Helper()
	signer, err := tracking.NewSigner(tracking.Key{ID: 1, Secret: []byte("0123456789abcdef0123456789abcdef")})
	if err != nil {
		tb.Fatal(err)
	}
	links, err := tracking.NewLinks("https://herald.example", signer)
	if err != nil {
		tb.Fatal(err)
	}
	rp, err := NewReturnPath("bounce.example", []byte("return path secret!"))
	if err != nil {
		tb.Fatal(err)
	}
	return links, rp
}

// wantWaitingUntried checks that the relay's refusal (why) of the account's mail left every row
// pending and untried, every address's quarantine entry as it was, and the delivery sending.
func (f *fixture) wantWaitingUntried(t *testing.T, why string) {
	t.Helper()
	for _, a := range f.addrs {
		if r := f.row(t, a); r.status != "pending" || r.attempts != 0 {
			t.Fatalf("%s: %+v, want pending, untried", why, r)
		}
		if en, _ := f.quar.Get(context.Background(), quarantine.Email, a); en.Status != quarantine.StatusValid {
			t.Errorf("%s changed %s's quarantine entry: %s", why, a, en.Status)
		}
	}
	if s := f.state(t); s != delivery.Sending {
		t.Fatalf("%s: delivery is %s, want sending, waiting for the relay", why, s)
	}
}

// wantSentAtFirstTry fails unless every row was sent at its first attempt and the delivery
// finished; when says at what point of the test.
func (f *fixture) wantSentAtFirstTry(t *testing.T, when string) {
	t.Helper()
	for _, a := range f.addrs {
		if r := f.row(t, a); r.status != "sent" || r.attempts != 1 {
			t.Fatalf("%s: %s: %+v, want sent at the first attempt", when, a, r)
		}
	}
	if s := f.state(t); s != delivery.Finished {
		t.Fatalf("%s: delivery is %s, want finished", when, s)
	}
}

// readdress gives the fixture's first profiles, and their rows, the addresses addrs.
func (f *fixture) readdress(t *testing.T, addrs ...string) {
	t.Helper()
	for i, a := range addrs {
		dom := a[strings.LastIndexByte(a, '@')+1:]
		if _, err := f.db.Write.Exec(`UPDATE sending_log SET address = $1 WHERE address = $2`, a, f.addrs[i]); err != nil {
			t.Fatal(err)
		}
		if _, err := f.db.Write.Exec(`UPDATE profiles SET email = $1, email_key = $1, email_domain = $2 WHERE email = $3`, a, dom, f.addrs[i]); err != nil {
			t.Fatal(err)
		}
		f.addrs[i] = a
	}
}

func (f *fixture) engine(t *testing.T, sender channel.Sender, node string, batch int) *Engine {
	t.Helper()
	return f.engineWith(t, sender, node, batch, func(*Config) {})
}

// engineWith is engine with set changing the configuration first.
func (f *fixture) engineWith(t *testing.T, sender channel.Sender, node string, batch int, set func(*Config)) *Engine {
	t.Helper()
	links, rp := testTracking(t)
	cfg := Config{DB: f.db, Deliveries: f.del, Quarantine: f.quar, Sender: sender, Links: links, ReturnPath: rp,
		NodeID: node, BatchSize: batch, Workers: 1, Clock: f.clk, WatchInterval: 10 * time.Millisecond, PollInterval: 10 * time.Millisecond}
	set(&cfg)
	e, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func transport(t *testing.T, srv *smtptest.Server) *email.Transport {
	t.Helper()
	return transportWith(t, srv, "")
}

// transportWith is transport with more relay options ("&max_conns=4").
func transportWith(t *testing.T, srv *smtptest.Server, options string) *email.Transport {
	t.Helper()
	relays, err := email.ParseRelays("smtp://" + srv.Addr() + "?starttls=off" + options)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := email.New(email.Options{Relays: relays, HelloName: "herald.test", Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

// drain steps e until nothing is due (the last step settles the delivery).
func drain(t *testing.T, e *Engine) {
	t.Helper()
	for range 1000 {
		n, err := e.Step(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
	}
	t.Fatal("the engine never ran out of work")
}

type logRow struct {
	status, failureType, reason string
	attempts                    int
	code                        sql.NullInt64
	next, sentAt                sql.NullInt64
	ambiguous                   bool
}

func (f *fixture) row(t *testing.T, addr string) logRow {
	t.Helper()
	var r logRow
	var ft, reason sql.NullString
	if err := f.db.Read.QueryRow(`SELECT status, failure_type, failure_reason, attempts, smtp_code, next_attempt_at, sent_at, ambiguous
		FROM sending_log WHERE delivery_id = $1 AND address = $2`, f.id, addr).Scan(&r.status, &ft, &reason, &r.attempts, &r.code, &r.next, &r.sentAt, &r.ambiguous); err != nil {
		t.Fatal(err)
	}
	r.failureType, r.reason = ft.String, reason.String
	return r
}

func (f *fixture) state(t *testing.T) delivery.State {
	t.Helper()
	d, err := f.del.Get(context.Background(), f.id)
	if err != nil {
		t.Fatal(err)
	}
	return d.State
}

func (f *fixture) count(t *testing.T, where string) int {
	t.Helper()
	var n int
	if err := f.db.Read.QueryRow(`SELECT COUNT(*) FROM sending_log WHERE delivery_id = $1 AND `+where, f.id).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// inFlight counts the delivery's rows in flight: in status sending, or in a batch in flight on
// SQLite.
func (f *fixture) inFlight(t *testing.T) int {
	t.Helper()
	var n int
	if err := f.db.Read.QueryRow(inFlightCountSQL(f.db.Engine), f.id).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// leasedInFlight counts the delivery's rows in flight under a lease that ends after ms.
func (f *fixture) leasedInFlight(t *testing.T, ms int64) int {
	t.Helper()
	q := `SELECT COUNT(*) FROM sending_log WHERE delivery_id = $1 AND status = 'sending' AND lease_until > $2`
	if f.db.Engine == store.SQLite {
		q = `SELECT COALESCE(SUM(json_array_length(log_ids)), 0) FROM in_flight WHERE delivery_id = $1 AND lease_until > $2`
	}
	var n int
	if err := f.db.Read.QueryRow(q, f.id, ms).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// putInFlight puts the rows of addresses in flight under owner's lease until ms, as the
// engine's mark does: in status sending, or as one batch on SQLite.
func (f *fixture) putInFlight(t *testing.T, owner string, ms int64, addresses ...string) {
	t.Helper()
	var ids []string
	for _, a := range addresses {
		var id int64
		if err := f.db.Read.QueryRow(`SELECT id FROM sending_log WHERE delivery_id = $1 AND address = $2`, f.id, a).Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, strconv.FormatInt(id, 10))
	}
	var err error
	if f.db.Engine == store.SQLite {
		_, err = f.db.Write.Exec(`INSERT INTO in_flight (delivery_id, lease_owner, lease_until, log_ids) VALUES ($1, $2, $3, $4)`,
			f.id, owner, ms, "["+strings.Join(ids, ",")+"]")
	} else {
		_, err = f.db.Write.Exec(`UPDATE sending_log SET status = 'sending', lease_owner = $1, lease_until = $2
			WHERE id IN (`+strings.Join(ids, ",")+`)`, owner, ms)
	}
	if err != nil {
		t.Fatal(err)
	}
}

func TestSendsPersonalisedTrackedMessagesAndFinishes(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		f := newFixture(t, db, 3, 84*time.Hour)
		srv := smtptest.Start(t, smtptest.Options{})
		e := f.engine(t, transport(t, srv), "n1", 2)
		drain(t, e)
		if got := srv.Count(); got != 3 {
			t.Fatalf("server accepted %d messages, want 3", got)
		}
		for _, a := range f.addrs {
			if r := f.row(t, a); r.status != "sent" || r.attempts != 1 || !r.sentAt.Valid || r.code.Int64 != 250 || r.ambiguous {
				t.Errorf("%s: %+v, want sent once with 250", a, r)
			}
		}
		if s := f.state(t); s != delivery.Finished {
			t.Fatalf("delivery is %s, want finished", s)
		}
		var actor string
		if err := db.Read.QueryRow(`SELECT actor FROM audit_log WHERE action = 'delivery.finish' AND object_id = $1`, fmt.Sprint(f.id)).Scan(&actor); err != nil || !strings.Contains(actor, "system") {
			t.Errorf("audit of finish: %q %v", actor, err)
		}
		m := srv.Messages()[0]
		rp, _ := NewReturnPath("bounce.example", []byte("return path secret!"))
		if id, kind, ok := rp.Parse(m.From); !ok || kind != 'b' || id == 0 {
			t.Errorf("envelope sender %q is not a signed return path", m.From)
		}
		data := string(m.Data)
		for _, want := range []string{"Subject: Hi Ann", "List-Unsubscribe: <https://herald.example/t/u/", "mailto:u+",
			"List-Unsubscribe-Post: List-Unsubscribe=One-Click", "https://herald.example/t/c/", "https://herald.example/t/o/", "From: Shop <news@shop.example>"} {
			if !strings.Contains(strings.ReplaceAll(data, "=\r\n", ""), want) {
				t.Errorf("message lacks %q:\n%s", want, data)
			}
		}
	})
}

func TestSoftFailureRetriesAfterBackoffThenSends(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		f := newFixture(t, db, 2, 84*time.Hour)
		srv := smtptest.Start(t, smtptest.Options{})
		srv.Script(f.addrs[0], smtptest.FailTimes(1, 451, "4.3.0", "try later"))
		e := f.engine(t, transport(t, srv), "n1", 10)
		drain(t, e)
		r := f.row(t, f.addrs[0])
		if r.status != "pending" || r.attempts != 1 || r.next.Int64 != t0.Add(15*time.Minute).UnixMilli() || r.code.Int64 != 451 || r.failureType != "soft" {
			t.Fatalf("after a 451: %+v, want pending for 15 min", r)
		}
		if s := f.state(t); s != delivery.Retrying {
			t.Fatalf("delivery is %s, want retrying", s)
		}
		f.clk.Advance(14 * time.Minute)
		drain(t, e)
		if r := f.row(t, f.addrs[0]); r.status != "pending" {
			t.Fatalf("retried before its time: %+v", r)
		}
		f.clk.Advance(time.Minute)
		drain(t, e)
		if r := f.row(t, f.addrs[0]); r.status != "sent" || r.attempts != 2 {
			t.Fatalf("after the retry: %+v, want sent at attempt 2", r)
		}
		if s := f.state(t); s != delivery.Finished {
			t.Fatalf("delivery is %s, want finished", s)
		}
	})
}

// TestConfiguredBackoff: a schedule from HERALD_RETRY_BACKOFF's syntax spaces the retries, the
// last wait repeating once the schedule runs out.
func TestConfiguredBackoff(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		f := newFixture(t, db, 1, 84*time.Hour)
		srv := smtptest.Start(t, smtptest.Options{})
		srv.Script(f.addrs[0], smtptest.FailTimes(3, 450, "4.2.0", "mailbox busy"))
		backoff, err := ParseBackoff("10m,40m")
		if err != nil {
			t.Fatal(err)
		}
		e := f.engineWith(t, transport(t, srv), "n1", 10, func(c *Config) { c.Backoff = backoff })
		for attempt, wait := range []time.Duration{10 * time.Minute, 40 * time.Minute, 40 * time.Minute} {
			drain(t, e)
			r := f.row(t, f.addrs[0])
			if want := f.clk.Now().Add(wait).UnixMilli(); r.status != "pending" || r.attempts != attempt+1 || r.next.Int64 != want {
				t.Fatalf("after failure %d: %+v, want pending until %v from now", attempt+1, r, wait)
			}
			f.clk.Advance(wait)
		}
		drain(t, e)
		if r := f.row(t, f.addrs[0]); r.status != "sent" || r.attempts != 4 {
			t.Fatalf("after three retries: %+v, want sent at attempt 4", r)
		}
	})
}

func TestHardFailureFailsAtOnceAndQuarantinesOnlyRecipientErrors(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		f := newFixture(t, db, 3, 84*time.Hour)
		srv := smtptest.Start(t, smtptest.Options{})
		srv.Script(f.addrs[0], smtptest.Always(smtptest.Action{Code: 550, Enhanced: "5.1.1", Text: "no such user"}))
		// About Herald's side, not the address: the row fails, the address stays valid. (A
		// refused envelope sender is neither: see TestRefusedSenderRetries.)
		srv.Script(f.addrs[1], smtptest.Always(smtptest.Action{Code: 554, Enhanced: "5.7.1",
			Text: "Service unavailable; Client host [192.0.2.7] blocked using zen.spamhaus.org"}))
		e := f.engine(t, transport(t, srv), "n1", 10)
		drain(t, e)
		r := f.row(t, f.addrs[0])
		if r.status != "failed" || r.failureType != "hard" || !strings.HasPrefix(r.reason, "userunknown") || r.code.Int64 != 550 {
			t.Fatalf("after a 550 5.1.1: %+v", r)
		}
		if en, _ := f.quar.Get(context.Background(), quarantine.Email, f.addrs[0]); en.Status != quarantine.StatusQuarantine {
			t.Errorf("unknown user's address is %s, want quarantine", en.Status)
		}
		if r := f.row(t, f.addrs[1]); r.status != "failed" || !strings.HasPrefix(r.reason, "blocked") {
			t.Fatalf("after a 554 5.7.1 blocked: %+v", r)
		}
		if en, _ := f.quar.Get(context.Background(), quarantine.Email, f.addrs[1]); en.Status != quarantine.StatusValid {
			t.Errorf("a block of Herald's host quarantined the recipient: %s", en.Status)
		}
		if s := f.state(t); s != delivery.Finished {
			t.Fatalf("delivery is %s, want finished", s)
		}
	})
}

// switchSender lets a test change the Sender under a running engine.
type switchSender struct {
	p atomic.Pointer[channel.Sender]
}

func (s *switchSender) set(x channel.Sender) { s.p.Store(&x) }
func (s *switchSender) Send(ctx context.Context, m []channel.Message, o []channel.Outcome) error {
	return (*s.p.Load()).Send(ctx, m, o)
}
func (s *switchSender) Close() error { return nil }

// Wait forwards channel.Gate to the Sender in use.
func (s *switchSender) Wait() (time.Duration, string) {
	if g, ok := (*s.p.Load()).(channel.Gate); ok {
		return g.Wait()
	}
	return 0, ""
}

func TestRelayDownWaitsAndDropAfterDataIsAmbiguous(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		f := newFixture(t, db, 2, 84*time.Hour)
		dead := smtptest.Start(t, smtptest.Options{})
		down := transport(t, dead)
		dead.Close()
		sw := &switchSender{}
		sw.set(down)
		e := f.engine(t, sw, "n1", 10)
		drain(t, e)
		// The outage is not the recipients' doing: no attempt, no retry wait; the delivery
		// waits, still sending, and claims nothing while the relay is skipped.
		for _, a := range f.addrs {
			if r := f.row(t, a); r.status != "pending" || r.attempts != 0 || r.next.Valid {
				t.Fatalf("relay down: %+v, want pending, untried", r)
			}
		}
		if s := f.state(t); s != delivery.Sending {
			t.Fatalf("relay down: delivery is %s, want sending", s)
		}
		if n, err := e.Step(context.Background()); n != 0 || err != nil {
			t.Fatalf("a step while the relay is skipped handled %d rows (%v), want none", n, err)
		}
		srv := smtptest.Start(t, smtptest.Options{})
		srv.Script(f.addrs[1], func(attempt int) smtptest.Action {
			if attempt == 1 {
				return smtptest.Action{Stage: smtptest.AtData, Drop: smtptest.DropBeforeReply}
			}
			return smtptest.Action{}
		})
		sw.set(transport(t, srv))
		drain(t, e)
		if r := f.row(t, f.addrs[0]); r.status != "sent" || r.attempts != 1 || r.ambiguous {
			t.Fatalf("after the relay came back: %+v, want sent at the first attempt", r)
		}
		if r := f.row(t, f.addrs[1]); r.status != "sent" || !r.ambiguous {
			t.Fatalf("connection dropped after the data: %+v, want sent and ambiguous", r)
		}
		if srv.Attempts(f.addrs[1]) != 1 {
			t.Errorf("an unanswered message was sent again")
		}
	})
}

// TestRefusedSenderRetries: a relay that refuses the envelope sender (AUTH
// it wants, a sender it does not own) fails no recipient and quarantines no
// address: the rows wait for a retry, and go out once the relay takes mail.
func TestRefusedSenderRetries(t *testing.T) {
	for _, stage := range []string{"mail", "rcpt"} {
		t.Run(stage, func(t *testing.T) { testRefusedSenderRetries(t, stage) })
	}
}

// testRefusedSenderRetries refuses the sender at MAIL FROM, or at RCPT TO as Postfix does by
// default (smtpd_delay_reject): "554 5.7.1 <sender>: Sender address rejected: Access denied".
func testRefusedSenderRetries(t *testing.T, stage string) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		f := newFixture(t, db, 3, 84*time.Hour)
		refusing := smtptest.Start(t, smtptest.Options{})
		if stage == "mail" {
			refusing.RefuseSenders(smtptest.Action{Code: 550, Enhanced: "5.7.1", Text: "Sender address rejected: not owned by user"})
		} else {
			for _, a := range f.addrs {
				refusing.Script(a, smtptest.Always(smtptest.Action{Code: 554, Enhanced: "5.7.1", Text: "<news@shop.example>: Sender address rejected: Access denied"}))
			}
		}
		sw := &switchSender{}
		sw.set(transport(t, refusing))
		e := f.engine(t, sw, "n1", 10)
		drain(t, e)
		f.wantWaitingUntried(t, "sender refused")
		srv := smtptest.Start(t, smtptest.Options{})
		sw.set(transport(t, srv))
		drain(t, e)
		f.wantSentAtFirstTry(t, "after the relay took the sender")
	})
}

// TestQuotaUsedUpWaits: a relay whose sending quota is used up for the day ("550 5.4.5 Daily
// user sending quota exceeded", after the data, as Gmail answers) fails no row and quarantines
// no address: the rows wait untried, the delivery stays sending and says why, and goes on when
// the relay takes mail again. (Every row failed at once before, each address with a
// mailbox-full strike.)
func TestQuotaUsedUpWaits(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		f := newFixture(t, db, 3, 84*time.Hour)
		used := smtptest.Start(t, smtptest.Options{})
		for _, a := range f.addrs {
			used.Script(a, smtptest.Always(smtptest.Action{Stage: smtptest.AtData, Code: 550, Enhanced: "5.4.5", Text: "Daily user sending quota exceeded."}))
		}
		sw := &switchSender{}
		sw.set(transport(t, used))
		e := f.engine(t, sw, "n1", 10)
		drain(t, e)
		f.wantWaitingUntried(t, "quota used up")
		if w := e.Waiting(); !strings.Contains(w, "Daily user sending quota exceeded") {
			t.Errorf("Waiting() = %q, want the relay's answer", w)
		}
		sw.set(transport(t, smtptest.Start(t, smtptest.Options{})))
		drain(t, e)
		f.wantSentAtFirstTry(t, "after the quota came back")
	})
}

// TestInternationalisedAddresses: a recipient at an internationalised domain gets the message
// at the domain's ASCII form, which every server takes; one with a local part beyond ASCII
// gets it over SMTPUTF8. The sending log keeps the addresses as the profiles have them. (Both
// failed as "the message could not be built" before.)
func TestInternationalisedAddresses(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		f := newFixture(t, db, 3, 84*time.Hour)
		f.readdress(t, "anna@bücher.de", "jörg@bücher.de")
		srv := smtptest.Start(t, smtptest.Options{SMTPUTF8: true})
		e := f.engine(t, transport(t, srv), "n1", 10)
		drain(t, e)
		for _, a := range f.addrs {
			if r := f.row(t, a); r.status != "sent" {
				t.Fatalf("%s: %+v, want sent", a, r)
			}
		}
		want := map[string]bool{"anna@xn--bcher-kva.de": false, "jörg@xn--bcher-kva.de": true, f.addrs[2]: false}
		got := map[string]bool{}
		for _, m := range srv.Messages() {
			got[m.To[0]] = m.UTF8
			if !strings.Contains(string(m.Data), "\r\nTo: <"+m.To[0]+">\r\n") {
				t.Errorf("message to %s: the To header is not its envelope address", m.To[0])
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("server received (address: SMTPUTF8) %v, want %v", got, want)
		}
	})
}

// TestRelaySlowDownIsNoRetry: a relay that asks a burst to slow down at MAIL FROM costs the
// recipients no try and no retry wait: the messages it turned away go back to the queue and
// out at the relay's cut rate, and the delivery finishes without passing through retrying.
func TestRelaySlowDownIsNoRetry(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		f := newFixture(t, db, 20, 84*time.Hour)
		srv := smtptest.Start(t, smtptest.Options{})
		srv.RefuseNextSenders(5, smtptest.Action{Code: 421, Enhanced: "4.7.0", Text: "Too many messages, slow down"})
		relays, err := email.ParseRelays("smtp://" + srv.Addr() + "?starttls=off")
		if err != nil {
			t.Fatal(err)
		}
		// One try a message within a Send: a message turned away leaves the Send at once.
		tr, err := email.New(email.Options{Relays: relays, HelloName: "herald.test", MaxAttempts: 1})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tr.Close() })
		e := f.engine(t, tr, "n1", 10)
		drain(t, e)
		f.wantSentAtFirstTry(t, "after the relay's slow-down")
		if srv.SenderRefusals() != 5 {
			t.Fatalf("the relay turned away %d, want 5", srv.SenderRefusals())
		}
		var retried int
		if err := db.Read.QueryRow(`SELECT COUNT(*) FROM audit_log WHERE action = 'delivery.retry' AND object_id = $1`,
			strconv.FormatInt(f.id, 10)).Scan(&retried); err != nil {
			t.Fatal(err)
		}
		if retried > 0 {
			t.Errorf("the delivery went to retrying %d times", retried)
		}
	})
}

// TestOutageOutlastingValidity: rows that waited out a relay outage, untried, still fail as
// expired once the delivery's validity is over, and the delivery ends.
func TestOutageOutlastingValidity(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		f := newFixture(t, db, 2, time.Hour)
		dead := smtptest.Start(t, smtptest.Options{})
		down := transport(t, dead)
		dead.Close()
		e := f.engine(t, down, "n1", 10)
		drain(t, e)
		if s := f.state(t); s != delivery.Sending {
			t.Fatalf("during the outage: delivery is %s, want sending", s)
		}
		if w := e.Waiting(); !strings.Contains(w, "no SMTP relay available") || !strings.Contains(w, "connection refused") || !strings.Contains(w, "next try in") {
			t.Errorf("Waiting() during the outage = %q", w)
		}
		f.clk.Advance(time.Hour)
		drain(t, e)
		for _, a := range f.addrs {
			if r := f.row(t, a); r.status != "failed" || r.reason != "expired" || r.attempts != 0 {
				t.Fatalf("after the validity: %+v, want failed, expired, untried", r)
			}
		}
		if s := f.state(t); s != delivery.Failed {
			t.Fatalf("delivery is %s, want failed (nothing sent)", s)
		}
	})
}

// TestOutageStillFinishesWhatIsDone: a delivery whose every row was sent before the relay went
// down finishes during the outage; one with rows left stays sending.
func TestOutageStillFinishesWhatIsDone(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		f := newFixture(t, db, 2, 84*time.Hour)
		if _, err := db.Write.Exec(`UPDATE sending_log SET status = 'sent', attempts = 1, sent_at = $1 WHERE delivery_id = $2`,
			t0.UnixMilli(), f.id); err != nil {
			t.Fatal(err)
		}
		// Another delivery to the same profiles, its rows pending.
		var other int64
		if err := db.Write.QueryRow(`INSERT INTO deliveries (name, channel, content, state, validity_seconds, validity_until, prepared_hash, created_at, updated_at, to_deliver, targeted)
			SELECT 'other', channel, content, state, validity_seconds, validity_until, prepared_hash, created_at, updated_at, to_deliver, targeted
			FROM deliveries WHERE id = $1 RETURNING id`, f.id).Scan(&other); err != nil {
			t.Fatal(err)
		}
		if _, err := db.Write.Exec(`INSERT INTO sending_log (delivery_id, profile_id, address, status)
			SELECT $1, profile_id, address, 'pending' FROM sending_log WHERE delivery_id = $2`, other, f.id); err != nil {
			t.Fatal(err)
		}
		dead := smtptest.Start(t, smtptest.Options{})
		down := transport(t, dead)
		dead.Close()
		out := make([]channel.Outcome, 1)
		_ = down.Send(context.Background(), []channel.Message{{To: "a@example.org", From: "b@example.org", Data: []byte("x\r\n")}}, out)
		if wait, _ := down.Wait(); wait <= 0 {
			t.Fatal("the relay is not skipped after a failed dial")
		}
		e := f.engine(t, down, "n1", 10)
		for range 3 {
			if _, err := e.Step(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
		if s := f.state(t); s != delivery.Finished {
			t.Errorf("a delivery sent in full is %s during the outage, want finished", s)
		}
		var st string
		var tried int
		if err := db.Read.QueryRow(`SELECT state, (SELECT COUNT(*) FROM sending_log WHERE delivery_id = $1 AND attempts > 0)
			FROM deliveries WHERE id = $1`, other).Scan(&st, &tried); err != nil {
			t.Fatal(err)
		}
		if st != string(delivery.Sending) || tried != 0 {
			t.Errorf("a delivery with rows left is %s with %d rows tried during the outage, want sending, none", st, tried)
		}
	})
}

func TestSoftFailuresExpireAtValidity(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		f := newFixture(t, db, 1, time.Hour)
		srv := smtptest.Start(t, smtptest.Options{})
		srv.Script(f.addrs[0], smtptest.Always(smtptest.Action{Code: 451, Enhanced: "4.7.1", Text: "greylisted"}))
		e := f.engine(t, transport(t, srv), "n1", 10)
		drain(t, e) // attempt 1, retry at +15 min
		f.clk.Advance(15 * time.Minute)
		drain(t, e) // attempt 2, retry at +45 min
		if r := f.row(t, f.addrs[0]); r.status != "pending" || r.attempts != 2 {
			t.Fatalf("%+v", r)
		}
		f.clk.Advance(30 * time.Minute)
		drain(t, e) // attempt 3; the next retry would be after the validity
		r := f.row(t, f.addrs[0])
		if r.status != "failed" || !strings.HasPrefix(r.reason, "expired") || r.attempts != 3 {
			t.Fatalf("at the end of validity: %+v, want failed, expired", r)
		}
		if s := f.state(t); s != delivery.Failed {
			t.Fatalf("delivery is %s, want failed (nothing sent)", s)
		}
	})
}

// TestRowsThatCannotBeBuiltFailWithTheirReason: a row whose profile's personal data was erased,
// one whose profile was deleted, and one whose personalisation breaks the part size limit fail
// at once, as hard failures with their reason, in the same batch as a row that is sent; the
// live counters count them and the delivery finishes.
func TestRowsThatCannotBeBuiltFailWithTheirReason(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		f := newFixture(t, db, 4, 84*time.Hour)
		for _, q := range []struct {
			sql string
			arg any
		}{
			{`UPDATE sending_log SET address = '' WHERE delivery_id = $1 AND id = (SELECT MIN(id) FROM sending_log WHERE delivery_id = $1)`, f.id},
			{`DELETE FROM profiles WHERE email = $1`, f.addrs[1]},
			{`UPDATE profiles SET attributes = $1 WHERE email = '` + f.addrs[2] + `'`, `{"first":"` + strings.Repeat("x", 1<<20) + `"}`},
		} {
			if _, err := db.Write.Exec(q.sql, q.arg); err != nil {
				t.Fatal(err)
			}
		}
		srv := smtptest.Start(t, smtptest.Options{})
		e := f.engine(t, transport(t, srv), "n1", 10)
		drain(t, e)
		if got := srv.Count(); got != 1 {
			t.Fatalf("server got %d messages, want the one that could be built", got)
		}
		rows, err := db.Read.Query(`SELECT status, COALESCE(failure_type, ''), COALESCE(failure_reason, '') FROM sending_log WHERE delivery_id = $1 ORDER BY id`, f.id)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for rows.Next() {
			var st, ft, reason string
			if err := rows.Scan(&st, &ft, &reason); err != nil {
				t.Fatal(err)
			}
			got = append(got, st+" "+ft+" "+reason)
		}
		rows.Close()
		want := []string{"failed hard no address", "failed hard the profile no longer exists", "failed hard personalisation failed", "sent  "}
		if len(got) != len(want) {
			t.Fatalf("rows: %q", got)
		}
		for i := range want {
			if !strings.HasPrefix(got[i], want[i]) {
				t.Errorf("row %d: %q, want it to start with %q", i, got[i], want[i])
			}
		}
		var delivered, other int64
		if err := db.Read.QueryRow(`SELECT delivered, hard_bounces + soft_bounces + other_errors FROM delivery_stats WHERE delivery_id = $1`, f.id).Scan(&delivered, &other); err != nil || delivered != 1 || other != 3 {
			t.Fatalf("live counters: delivered %d, failed %d (%v); want 1 and 3", delivered, other, err)
		}
		if s := f.state(t); s != delivery.Finished {
			t.Fatalf("delivery is %s, want finished", s)
		}
		if n := f.inFlight(t); n != 0 {
			t.Fatalf("%d rows left in flight", n)
		}
	})
}

// TestWorkersShareADeliveryWithoutSendingTwice: four workers on small batches read the queue
// side by side, overlapping at the delivery's tail (on SQLite they read without claiming, so
// two may read the same rows and only one marks them); every recipient receives exactly one
// message and every row ends sent.
func TestWorkersShareADeliveryWithoutSendingTwice(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		const n = 300
		f := newFixture(t, db, n, 84*time.Hour)
		srv := smtptest.Start(t, smtptest.Options{})
		links, rp := testTracking(t)
		e, err := New(Config{DB: db, Deliveries: f.del, Quarantine: f.quar, Sender: transport(t, srv), Links: links, ReturnPath: rp,
			NodeID: "n1", BatchSize: 7, Workers: 4, Clock: f.clk, WatchInterval: 10 * time.Millisecond, PollInterval: 5 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		if err := e.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		defer e.Stop()
		waitFor(t, 20*time.Second, func() bool { return f.state(t) == delivery.Finished })
		f.wantSentOnceEach(t, srv)
	})
}

// wantSentOnceEach checks a delivery that every row of went at the first try: each recipient
// received exactly one message, every row is sent and none ambiguous, and the delivery never
// passed through retrying on the way.
func (f *fixture) wantSentOnceEach(t *testing.T, srv *smtptest.Server) {
	t.Helper()
	got := map[string]int{}
	for _, m := range srv.Messages() {
		for _, to := range m.To {
			got[to]++
		}
	}
	for _, a := range f.addrs {
		if got[a] != 1 {
			t.Errorf("%s received %d messages, want 1", a, got[a])
		}
	}
	var retries int
	if err := f.db.Read.QueryRow(`SELECT COUNT(*) FROM audit_log WHERE action = 'delivery.retry' AND object_id = $1`,
		strconv.FormatInt(f.id, 10)).Scan(&retries); err != nil {
		t.Fatal(err)
	}
	n := len(f.addrs)
	if sent, amb := f.count(t, `status = 'sent'`), f.count(t, `ambiguous`); len(got) != n || sent != n || amb != 0 || retries != 0 {
		t.Fatalf("%d recipients reached, %d rows sent, %d ambiguous, %d moves to retrying; want %d, %d, 0, 0",
			len(got), sent, amb, retries, n, n)
	}
}

func TestPendingRowsExpireWhenValidityPasses(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		f := newFixture(t, db, 2, time.Hour)
		e := f.engine(t, NewCaptureSender(db, f.clk), "n1", 10)
		f.clk.Advance(2 * time.Hour)
		drain(t, e)
		if n := f.count(t, `status = 'failed' AND failure_reason = 'expired'`); n != 2 {
			t.Fatalf("%d rows expired, want 2", n)
		}
		var soft int64
		if err := db.Read.QueryRow(`SELECT soft_bounces FROM delivery_stats WHERE delivery_id = $1`, f.id).Scan(&soft); err != nil || soft != 2 {
			t.Fatalf("expired rows in the live counters: soft = %d, %v; want 2", soft, err)
		}
		if s := f.state(t); s != delivery.Failed {
			t.Fatalf("delivery is %s, want failed", s)
		}
	})
}

// TestRowsInFlightDoNotExpire: when the validity passes while rows are in flight, only the
// rows waiting in the queue expire; the delivery waits for the rows in flight, whose outcome
// is not known yet.
func TestRowsInFlightDoNotExpire(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		f := newFixture(t, db, 3, time.Hour)
		f.putInFlight(t, "n9", f.clk.Now().Add(3*time.Hour).UnixMilli(), f.addrs[0])
		e := f.engine(t, NewCaptureSender(db, f.clk), "n1", 10)
		f.clk.Advance(2 * time.Hour)
		drain(t, e)
		if n := f.count(t, `status = 'failed' AND failure_reason = 'expired'`); n != 2 {
			t.Fatalf("%d rows expired, want the 2 not in flight", n)
		}
		if n := f.inFlight(t); n != 1 {
			t.Fatalf("%d rows in flight, want 1", n)
		}
		if s := f.state(t); s != delivery.Sending {
			t.Fatalf("delivery is %s while a row is in flight, want sending", s)
		}
	})
}

func setState(t *testing.T, db *store.DB, id int64, s delivery.State) {
	t.Helper()
	if _, err := db.Write.Exec(`UPDATE deliveries SET state = $1 WHERE id = $2`, s, id); err != nil {
		t.Fatal(err)
	}
}

func TestPauseStopsWithinASecondAndResumeContinues(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		f := newFixture(t, db, 40, 84*time.Hour)
		srv := smtptest.Start(t, smtptest.Options{})
		for _, a := range f.addrs {
			srv.Script(a, smtptest.Always(smtptest.Action{Delay: 20 * time.Millisecond}))
		}
		// Four connections take 200 ms over the batch, time for the pause to land in it.
		tr := transportWith(t, srv, "&max_conns=4")
		e := f.engine(t, tr, "n1", 40)
		ctx := t.Context()
		if err := e.Start(ctx); err != nil {
			t.Fatal(err)
		}
		defer e.Stop()
		waitFor(t, 5*time.Second, func() bool { return srv.Count() >= 2 })
		setState(t, db, f.id, delivery.Paused)
		paused := time.Now()
		waitFor(t, 5*time.Second, func() bool { return f.inFlight(t) == 0 })
		if d := time.Since(paused); d > time.Second {
			t.Errorf("the pause took %v to stop the batch", d)
		}
		sent := srv.Count()
		if sent >= 40 {
			t.Fatalf("the whole batch went out despite the pause")
		}
		if n := f.count(t, `status = 'pending' AND attempts = 0`); n != 40-int(sent) {
			t.Fatalf("%d rows back to pending untouched, want %d", n, 40-sent)
		}
		setState(t, db, f.id, delivery.Sending)
		e.Kick()
		waitFor(t, 10*time.Second, func() bool { return f.state(t) == delivery.Finished })
		if srv.Count() != 40 {
			t.Fatalf("server got %d messages, want each of the 40 once", srv.Count())
		}
	})
}

func TestStoppedDeliveryIsNotSent(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		f := newFixture(t, db, 3, 84*time.Hour)
		srv := smtptest.Start(t, smtptest.Options{})
		e := f.engine(t, transport(t, srv), "n1", 10)
		setState(t, db, f.id, delivery.Stopped)
		drain(t, e)
		if srv.Count() != 0 || f.count(t, `status = 'pending'`) != 3 {
			t.Fatalf("a stopped delivery was sent")
		}
	})
}

// crashSender passes the first n messages of its first Send to next, then blocks until
// released, like a node that dies in the middle of a batch.
type crashSender struct {
	next    channel.Sender
	n       int
	release chan struct{}
	once    sync.Once
	crashed chan struct{}
}

func (c *crashSender) Send(ctx context.Context, m []channel.Message, o []channel.Outcome) error {
	_ = c.next.Send(ctx, m[:c.n], o[:c.n])
	c.once.Do(func() { close(c.crashed) })
	<-c.release
	for i := range m {
		o[i] = channel.Outcome{Status: channel.Deferred}
	}
	return nil
}
func (c *crashSender) Close() error { return nil }

func TestCrashMidBatchResendsOnlyInFlightRowsAsAmbiguous(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		const n, batch, before = 12, 5, 3
		f := newFixture(t, db, n, 84*time.Hour)
		srv := smtptest.Start(t, smtptest.Options{})
		tr := transport(t, srv)
		cs := &crashSender{next: tr, n: before, release: make(chan struct{}), crashed: make(chan struct{})}
		dead := f.engine(t, cs, "dead", batch)
		done := make(chan error, 1)
		go func() { _, err := dead.Step(context.Background()); done <- err }()
		<-cs.crashed
		if f.inFlight(t) != batch {
			t.Fatalf("the batch was not marked in flight before it was sent")
		}
		// Progress shows the batch as sending, the rest as pending.
		if p, err := ProgressOf(context.Background(), db, f.clk, f.id); err != nil || p.Counts["sending"] != batch || p.Counts["pending"] != n-batch {
			t.Fatalf("progress with a batch in flight: %+v %v", p.Counts, err)
		}
		// A second node does not touch the dead node's rows while its lease holds.
		alive := f.engine(t, tr, "alive", batch)
		drain(t, alive)
		if f.inFlight(t) != batch || f.count(t, `status = 'sent'`) != n-batch {
			t.Fatalf("rows under a live lease were taken")
		}
		f.clk.Advance(DefaultLease + time.Second)
		drain(t, alive)
		if got := srv.Count(); got != n+before {
			t.Fatalf("server got %d messages, want %d (%d duplicates from the crash)", got, n+before, before)
		}
		if f.count(t, `status = 'sent'`) != n {
			t.Fatalf("not every row ended sent")
		}
		if a := f.count(t, `ambiguous = TRUE`); a != batch {
			t.Fatalf("%d rows ambiguous, want exactly the %d in flight", a, batch)
		}
		close(cs.release) // the dead node's late write-back must change nothing
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if f.count(t, `status = 'sent'`) != n {
			t.Fatalf("a late write-back from an expired lease overwrote rows")
		}
		if s := f.state(t); s != delivery.Finished {
			t.Fatalf("delivery is %s, want finished", s)
		}
	})
}

func TestGracefulStopMidBatchLosesNothing(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		f := newFixture(t, db, 20, 84*time.Hour)
		srv := smtptest.Start(t, smtptest.Options{})
		for _, a := range f.addrs {
			srv.Script(a, smtptest.Always(smtptest.Action{Delay: 20 * time.Millisecond}))
		}
		tr := transport(t, srv)
		e := f.engine(t, tr, "n1", 20)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { _, err := e.Step(ctx); done <- err }()
		waitFor(t, 5*time.Second, func() bool { return srv.Count() >= 2 })
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if f.inFlight(t) != 0 || f.count(t, `ambiguous = TRUE`) != 0 {
			t.Fatalf("a graceful stop left rows in flight or ambiguous")
		}
		next := f.engine(t, tr, "n2", 20)
		drain(t, next)
		if srv.Count() != 20 || f.count(t, `status = 'sent'`) != 20 {
			t.Fatalf("server got %d, want each of 20 once", srv.Count())
		}
	})
}

func TestCaptureModeEndToEnd(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		f := newFixture(t, db, 3, 84*time.Hour)
		cs := NewCaptureSender(db, f.clk)
		cs.Keep = 2
		e := f.engine(t, cs, "n1", 10)
		drain(t, e)
		if s := f.state(t); s != delivery.Finished {
			t.Fatalf("delivery is %s, want finished", s)
		}
		page, err := ListCaptured(context.Background(), db, CapturedQuery{Limit: 1})
		if err != nil {
			t.Fatal(err)
		}
		if len(page.Messages) != 1 || page.NextBefore == 0 {
			t.Fatalf("first page: %+v", page)
		}
		m := page.Messages[0]
		if m.DeliveryID == nil || *m.DeliveryID != f.id || !strings.HasPrefix(m.Subject, "Hi Ann") || m.From != "Shop <news@shop.example>" || m.Size == 0 {
			t.Fatalf("captured: %+v", m)
		}
		rest, err := ListCaptured(context.Background(), db, CapturedQuery{Before: page.NextBefore})
		if err != nil || len(rest.Messages) != 1 || rest.Messages[0].ID >= m.ID {
			t.Fatalf("second page: %+v %v (only 2 are kept, newest first)", rest, err)
		}
		full, err := GetCaptured(context.Background(), db, m.ID)
		if err != nil || !strings.Contains(string(full.Data), "Subject: Hi Ann") {
			t.Fatalf("raw message: %v %q", err, full.Data)
		}
		if _, err := GetCaptured(context.Background(), db, m.ID+100); err == nil {
			t.Fatal("a missing message was found")
		}
		p, err := ProgressOf(context.Background(), db, f.clk, f.id)
		if err != nil || p.Counts["sent"] != 3 || p.Done != 3 || p.Rate != 0.05 || p.ETASeconds != nil {
			t.Fatalf("progress: %+v %v", p, err)
		}
	})
}

func TestReturnPathRefusesForgeries(t *testing.T) {
	rp, err := NewReturnPath("Bounce.Example", []byte("return path secret!"))
	if err != nil {
		t.Fatal(err)
	}
	a := rp.Bounce(42)
	if id, k, ok := rp.Parse(a); !ok || id != 42 || k != 'b' {
		t.Fatalf("Parse(%q) = %d %c %v", a, id, k, ok)
	}
	for _, bad := range []string{strings.Replace(a, "42", "43", 1), strings.Replace(a, "bounce.example", "other.example", 1), "b+42@bounce.example", "x"} {
		if _, _, ok := rp.Parse(bad); ok {
			t.Errorf("Parse(%q) accepted a forgery", bad)
		}
	}
	if _, err := NewReturnPath("bounce.example", []byte("short")); err == nil {
		t.Error("a short secret was accepted")
	}
}

// TestReturnPathAddressesShareOneMAC: a row's three addresses come from one HMAC, each its own
// piece of it, so that one tag does not stand for another; tags made before (v1) still parse.
func TestReturnPathAddressesShareOneMAC(t *testing.T) {
	rp, err := NewReturnPath("bounce.example", []byte("return path secret!"))
	if err != nil {
		t.Fatal(err)
	}
	a := rp.Addresses(42, "mail.example")
	if a.Bounce != rp.Bounce(42) || a.Unsubscribe != rp.Unsubscribe(42) || a.MessageID != rp.MessageID(42, "mail.example") {
		t.Fatalf("Addresses(42) = %+v; one at a time: %q %q %q", a, rp.Bounce(42), rp.Unsubscribe(42), rp.MessageID(42, "mail.example"))
	}
	if !strings.HasPrefix(a.Bounce, "b+42.") || !strings.HasSuffix(a.Bounce, "@bounce.example") ||
		!strings.HasPrefix(a.Unsubscribe, "u+42.") || !strings.HasSuffix(a.MessageID, "@mail.example") {
		t.Fatalf("Addresses(42) = %+v", a)
	}
	if id, k, ok := rp.Parse(a.Bounce); !ok || id != 42 || k != 'b' {
		t.Errorf("Parse(%q) = %d %c %v", a.Bounce, id, k, ok)
	}
	if id, k, ok := rp.Parse(a.Unsubscribe); !ok || id != 42 || k != 'u' {
		t.Errorf("Parse(%q) = %d %c %v", a.Unsubscribe, id, k, ok)
	}
	if id, ok := rp.ParseMessageID(a.MessageID); !ok || id != 42 {
		t.Errorf("ParseMessageID(%q) = %d %v", a.MessageID, id, ok)
	}
	tagOf := func(addr string) string {
		local, _, _ := strings.Cut(addr, "@")
		_, tag, _ := strings.Cut(local, ".")
		return tag
	}
	tb, tu, tm := tagOf(a.Bounce), tagOf(a.Unsubscribe), tagOf(a.MessageID)
	if len(tb) != tagLen || tb == tu || tb == tm || tu == tm {
		t.Fatalf("tags %q %q %q: want three different ones of %d digits", tb, tu, tm, tagLen)
	}
	// A tag in another kind's address is a forgery: a Message-ID quoted in a reply must not
	// unsubscribe its recipient.
	for _, bad := range []string{"u+42." + tm + "@bounce.example", "b+42." + tu + "@bounce.example", "u+42." + tb + "@bounce.example"} {
		if _, _, ok := rp.Parse(bad); ok {
			t.Errorf("Parse(%q) accepted another kind's tag", bad)
		}
	}
	if _, ok := rp.ParseMessageID("m+42." + tb + "@mail.example"); ok {
		t.Error("ParseMessageID accepted the bounce tag")
	}
	// v1: an HMAC of the kind and the id each, as in mail sent before.
	for _, k := range []byte{'b', 'u'} {
		old := fmt.Sprintf("%c+42.%s@bounce.example", k, rp.tag(k, 42, true))
		if id, kind, ok := rp.Parse(old); !ok || id != 42 || kind != k {
			t.Errorf("Parse(%q) (v1) = %d %c %v", old, id, kind, ok)
		}
	}
	if id, ok := rp.ParseMessageID("<m+42." + strings.ToUpper(rp.tag('m', 42, true)) + "@mail.example>"); !ok || id != 42 {
		t.Errorf("ParseMessageID of a v1 Message-ID = %d %v", id, ok)
	}
	if n := testing.AllocsPerRun(100, func() { rp.Addresses(1234567, "mail.example") }); n != 1 && !raceEnabled {
		t.Errorf("Addresses allocates %v times, want 1", n)
	}
}

// waitFor polls cond for real concurrency (a running engine and SMTP server), not for time
// logic, which the fake clock drives.
func waitFor(t *testing.T, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in time")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestRestartTakesBackItsOwnRowsAtOnce: a node that died and starts again under the same id
// takes back the rows it held without waiting for their lease: rows it had in flight return
// as ambiguous, rows it had only claimed return untouched, and all are then sent.
func TestRestartTakesBackItsOwnRowsAtOnce(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		f := newFixture(t, db, 4, 84*time.Hour)
		lease := f.clk.Now().Add(time.Hour).UnixMilli()
		f.putInFlight(t, "n1", lease, f.addrs[0], f.addrs[1])
		if _, err := db.Write.Exec(`UPDATE sending_log SET lease_owner = 'n1', lease_until = $1 WHERE address = $2`, lease, f.addrs[2]); err != nil {
			t.Fatal(err)
		}
		other := f.engine(t, NewCaptureSender(db, f.clk), "n2", 10)
		if err := other.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		other.Stop()
		held := f.count(t, `lease_owner = 'n1'`)
		if db.Engine == store.SQLite {
			held += f.inFlight(t) // its batch
		}
		if n := held; n != 3 {
			t.Fatalf("another node took %d of n1's leased rows before their lease ran out", 3-n)
		}
		e := f.engine(t, NewCaptureSender(db, f.clk), "n1", 10)
		if err := e.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		e.Stop()
		drain(t, e)
		if n := f.count(t, `status = 'sent'`); n != 4 {
			t.Fatalf("%d rows sent after the restart, want 4", n)
		}
		if n := f.count(t, `ambiguous`); n != 2 {
			t.Fatalf("%d rows ambiguous, want the 2 that were in flight", n)
		}
	})
}

// TestRowsLeftSendingByAnOlderVersionComeBack: on SQLite, rows an older version left in status
// sending (it had no batches) come back as ambiguous like the rows of a batch: at a restart
// under the same node id, or once their lease has run out. A pending row an older version
// claimed (it leased claims) is sent once its lease has run out, whichever node claimed it.
func TestRowsLeftSendingByAnOlderVersionComeBack(t *testing.T) {
	db := storetest.New(t, store.SQLite)
	f := newFixture(t, db, 5, 84*time.Hour)
	lease := f.clk.Now().Add(time.Hour).UnixMilli()
	for _, q := range []struct {
		set   string
		addrs []string
	}{
		{`status = 'sending', lease_owner = 'n1'`, f.addrs[0:2]},
		{`status = 'sending', lease_owner = 'gone'`, f.addrs[2:3]},
		{`lease_owner = 'gone'`, f.addrs[4:5]},
	} {
		for _, a := range q.addrs {
			if _, err := db.Write.Exec(`UPDATE sending_log SET `+q.set+`, lease_until = $1 WHERE address = $2`, lease, a); err != nil {
				t.Fatal(err)
			}
		}
	}
	if n := f.inFlight(t); n != 3 {
		t.Fatalf("%d rows in flight, want 3", n)
	}
	e := f.engine(t, NewCaptureSender(db, f.clk), "n1", 10)
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	e.Stop()
	if n := f.count(t, `ambiguous AND status = 'pending'`); n != 2 {
		t.Fatalf("%d rows taken back at the restart, want n1's 2", n)
	}
	drain(t, e)
	if n := f.count(t, `status = 'sent'`); n != 3 {
		t.Fatalf("%d rows sent while another node's leases hold, want 3", n)
	}
	f.clk.Advance(time.Hour + time.Second)
	drain(t, e)
	if n := f.count(t, `status = 'sent'`); n != 5 {
		t.Fatalf("%d rows sent after the leases ran out, want 5", n)
	}
	if n := f.count(t, `ambiguous`); n != 3 {
		t.Fatalf("%d rows ambiguous, want the 3 that were in flight", n)
	}
	if n := f.count(t, `lease_owner IS NOT NULL OR lease_until IS NOT NULL`); n != 0 {
		t.Fatalf("%d rows keep a lease after they were sent", n)
	}
}

// blockingSender holds every Send until released, like a very slow server.
type blockingSender struct {
	entered chan struct{}
	release chan struct{}
}

func (b *blockingSender) Send(ctx context.Context, msgs []channel.Message, out []channel.Outcome) error {
	b.entered <- struct{}{}
	<-b.release
	for i := range msgs {
		out[i] = channel.Outcome{Status: channel.Sent, Code: 250}
	}
	return nil
}
func (b *blockingSender) Close() error { return nil }

// TestLeaseRenewedWhileSendIsSlow: a Send that lasts longer than the lease keeps its rows —
// the engine renews their lease while it waits — so another node does not take them over and
// send them again; once sent, nothing is ambiguous.
func TestLeaseRenewedWhileSendIsSlow(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		f := newFixture(t, db, 3, 84*time.Hour)
		bs := &blockingSender{entered: make(chan struct{}, 1), release: make(chan struct{})}
		e := f.engine(t, bs, "slow", 10)
		if err := e.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		defer e.Stop()
		var once sync.Once
		release := func() { once.Do(func() { close(bs.release) }) }
		defer release() // runs before Stop, which waits for the Send to return
		<-bs.entered    // the batch is in flight, with a lease of DefaultLease from now
		other := f.engine(t, NewCaptureSender(db, f.clk), "other", 10)
		for range 3 {
			f.clk.Advance(DefaultLease / 2) // 1.5 leases in all: the first lease has run out
			deadline := time.Now().Add(5 * time.Second)
			for f.leasedInFlight(t, f.clk.Now().UnixMilli()+DefaultLease.Milliseconds()/2) != 3 {
				if time.Now().After(deadline) {
					t.Fatal("the lease of the rows in flight was not renewed")
				}
				time.Sleep(5 * time.Millisecond)
			}
			if n, err := other.Step(context.Background()); err != nil || n != 0 {
				t.Fatalf("another node took %d rows still in flight (%v)", n, err)
			}
		}
		release()
		waitFor(t, 5*time.Second, func() bool { return f.state(t) == delivery.Finished })
		if n := f.count(t, `ambiguous`); n != 0 {
			t.Fatalf("%d rows ambiguous after a slow but live send", n)
		}
	})
}

func TestParseDomainLimits(t *testing.T) {
	// An internationalised domain is keyed by its ASCII form, which messages go to.
	l, err := ParseDomainLimits(" Gmail.com=50, yahoo.co.uk = 2.5 ,*=200,Bücher.de=3,xn--mnchen-3ya.de=4")
	if err != nil {
		t.Fatal(err)
	}
	if l.Default != 200 || len(l.Rates) != 4 || l.Rates["gmail.com"] != 50 || l.Rates["yahoo.co.uk"] != 2.5 ||
		l.Rates["xn--bcher-kva.de"] != 3 || l.Rates["xn--mnchen-3ya.de"] != 4 {
		t.Fatalf("got %+v", l)
	}
	// The limiter caps what was parsed: gmail.com at 50 a second, so its 6th message at once waits.
	lim := email.NewDomainLimiter(l, nil)
	var waited bool
	for range 6 {
		waited = lim.Reserve("gmail.com") > 0
	}
	if !waited {
		t.Fatal("gmail.com was not capped")
	}
	for _, c := range []struct{ in, want string }{
		{"gmail.com", `entry 1 "gmail.com": want domain=messages-per-second`},
		{"gmail.com=fast", `entry 1 "gmail.com=fast": "fast" is not a positive number`},
		{"a.com=1,gmail.com=0", `entry 2 "gmail.com=0": "0" is not a positive number`},
		{"gmail.com=-3", `"-3" is not a positive number`},
		{"gmail.com=Inf", `"Inf" is not a positive number`},
		{"localhost=5", `"localhost" is not a domain name`},
		{"bad_domain.com=5", `"bad_domain.com" is not a domain name`},
		{"-x.com=5", `"-x.com" is not a domain name`},
		{"a..com=5", `"a..com" is not a domain name`},
		{"a.com=5,A.com=6", `entry 2 "A.com=6": a.com is capped twice`},
		{"*=5,*=6", `entry 2 "*=6": * is capped twice`},
		{"bücher.de=5,xn--bcher-kva.de=6", `entry 2 "xn--bcher-kva.de=6": xn--bcher-kva.de is capped twice`},
	} {
		_, err := ParseDomainLimits(c.in)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: got %v, want an error with %q", c.in, err, c.want)
		}
	}
}

func TestParseDomainConns(t *testing.T) {
	l := email.DomainLimits{Default: 200}
	if err := ParseDomainConns(" Gmail.com=10, *=20 ,yahoo.co.uk = 3", &l); err != nil {
		t.Fatal(err)
	}
	if l.Default != 200 || l.DefaultConns != 20 || len(l.Conns) != 2 || l.Conns["gmail.com"] != 10 || l.Conns["yahoo.co.uk"] != 3 {
		t.Fatalf("got %+v", l)
	}
	for _, c := range []struct{ in, want string }{
		{"gmail.com", `entry 1 "gmail.com": want domain=messages-in-progress`},
		{"gmail.com=many", `entry 1 "gmail.com=many": "many" is not a whole number of messages in progress, 1 or more`},
		{"a.com=1,gmail.com=0", `entry 2 "gmail.com=0": "0" is not a whole number`},
		{"gmail.com=2.5", `"2.5" is not a whole number`},
		{"localhost=5", `"localhost" is not a domain name`},
		{"a.com=5,A.com=6", `entry 2 "A.com=6": a.com is capped twice`},
	} {
		l := email.DomainLimits{}
		err := ParseDomainConns(c.in, &l)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: got %v, want an error with %q", c.in, err, c.want)
		}
	}
}

func TestParseBackoff(t *testing.T) {
	got, err := ParseBackoff("15m, 30m,1h,2h,4h,24h")
	if err != nil || !slices.Equal(got, DefaultBackoff) {
		t.Fatalf("got %v, %v; want %v", got, err, DefaultBackoff)
	}
	if got, err := ParseBackoff("1h, 1d,2d"); err != nil || !slices.Equal(got, []time.Duration{time.Hour, 24 * time.Hour, 48 * time.Hour}) {
		t.Fatalf("days: got %v, %v", got, err)
	}
	for _, c := range []struct{ in, want string }{
		{"", `entry 1 "" is not a duration`},
		{"1.5d", `entry 1 "1.5d" is not a duration`},
		{"d", `entry 1 "d" is not a duration`},
		{"15m,soon", `entry 2 "soon" is not a duration such as 15m, 2h or 24h`},
		{"15m,,1h", `entry 2 "" is not a duration`},
		{"500ms", `entry 1 "500ms" is shorter than a second`},
		{"1h,30m", `entry 2 "30m" is shorter than the wait before it (1h0m0s)`},
		{"-5m", `entry 1 "-5m" is shorter than a second`},
	} {
		_, err := ParseBackoff(c.in)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: got %v, want an error with %q", c.in, err, c.want)
		}
	}
}

// sendOne gives the fixture's delivery, which must have one recipient, the HTML html, sends it
// through an SMTP server and returns the message the server received.
func (f *fixture) sendOne(t *testing.T, html string) []byte {
	t.Helper()
	ct := fmt.Sprintf(`{"from_name":"Shop","from_address":"news@shop.example","subject":"Hi","html":%q}`, html)
	if _, err := f.db.Write.Exec(`UPDATE deliveries SET content = $1 WHERE id = $2`, ct, f.id); err != nil {
		t.Fatal(err)
	}
	srv := smtptest.Start(t, smtptest.Options{})
	drain(t, f.engine(t, transport(t, srv), "n1", 10))
	msgs := srv.Messages()
	if len(msgs) != 1 {
		t.Fatalf("%s: %d messages sent, want 1", html, len(msgs))
	}
	return msgs[0].Data
}

// TestMirrorURLOnlyWhereShown: the mirror page's signed URL is made only for a template that
// may show it: one that names {{.mirror_url}}, or reads the root as a whole ({{.}}, {{$}}, a
// variable holding it). Where shown, it names the message's delivery.
func TestMirrorURLOnlyWhereShown(t *testing.T) {
	signer, err := tracking.NewSigner(tracking.Key{ID: 1, Secret: []byte("0123456789abcdef0123456789abcdef")})
	if err != nil {
		t.Fatal(err)
	}
	mirrorRE := regexp.MustCompile(`https://herald\.example/t/m/([A-Za-z0-9_-]+)`)
	for i, c := range []struct {
		html   string
		mirror bool
	}{
		{`<p>Hi</p><a href="{{.mirror_url}}">View in a browser</a>`, true},
		{`<p>{{.}}</p>`, true},
		{`<p>{{with $}}{{.mirror_url}}{{end}}</p>`, true},
		{`<p>{{$r := .}}{{with .email}}{{$r.mirror_url}}{{end}}</p>`, true},
		{`<p>Hi {{.email}}</p>`, false},
	} {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			storetest.Each(t, func(t *testing.T, db *store.DB) {
				f := newFixture(t, db, 1, 84*time.Hour)
				data := f.sendOne(t, c.html)
				m := mirrorRE.FindSubmatch(data)
				if (m != nil) != c.mirror {
					t.Fatalf("%s: mirror URL in the message: %v, want %v\n%s", c.html, m != nil, c.mirror, data)
				}
				if m == nil {
					return
				}
				ref, err := signer.Verify(string(m[1]))
				if err != nil || ref.Kind != tracking.KindMirror || ref.DeliveryID != f.id {
					t.Fatalf("%s: mirror token %s: %+v, %v", c.html, m[1], ref, err)
				}
			})
		})
	}
}

// TestProfileFieldsAsShown: a template that shows the profile's fields gets each of them; one
// that shows none is sent all the same (the engine reads only the fields a template may show).
func TestProfileFieldsAsShown(t *testing.T) {
	for i, c := range []struct {
		html string
		want []string
	}{
		{`<p>{{.phone}} {{.locale}} {{.time_zone}} {{.external_id}} {{.created_at}}</p>`,
			[]string{"+33612345678", "fr-FR", "Europe/Paris", "crm-42", "2026-"}},
		{`<p>{{printf "%v" .}}</p>`, []string{"+33612345678", "fr-FR", "Europe/Paris", "crm-42", "2026-"}},
		{`<p>{{.time_zone}}</p>`, []string{"Europe/Paris"}},
		{`<p>Hello {{.attributes.first}}</p>`, []string{"Hello Ann0"}},
	} {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			storetest.Each(t, func(t *testing.T, db *store.DB) {
				f := newFixture(t, db, 1, 84*time.Hour)
				if _, err := db.Write.Exec(`UPDATE profiles SET phone = '+33612345678', locale = 'fr-FR',
					time_zone = 'Europe/Paris', external_id = 'crm-42'`); err != nil {
					t.Fatal(err)
				}
				text, err := io.ReadAll(quotedprintable.NewReader(bytes.NewReader(f.sendOne(t, c.html))))
				if err != nil {
					t.Fatal(err)
				}
				for _, w := range c.want {
					if !bytes.Contains(text, []byte(w)) {
						t.Errorf("%s: the message lacks %q:\n%s", c.html, w, text)
					}
				}
			})
		})
	}
}

// TestSettlingDecidesFromOneView: on PostgreSQL, another node's in-flight mark committed while
// a worker settles the delivery (here just after the worker read its counts, through
// settleHook) must not make the worker retry rows that are being sent. Settling decided from
// two statements, a count of pending rows and then a look for a due one; the second saw the
// rows no longer pending and none due, and moved the delivery to retrying. (On SQLite the
// settling transaction holds the only write lock, so no mark can come in between.)
func TestSettlingDecidesFromOneView(t *testing.T) {
	db := storetest.New(t, store.Postgres)
	f := newFixture(t, db, 4, 84*time.Hour)
	lease := f.clk.Now().Add(time.Hour).UnixMilli()
	if _, err := db.Write.Exec(`UPDATE sending_log SET lease_owner = 'n2', lease_until = $1`, lease); err != nil {
		t.Fatal(err)
	}
	e := f.engine(t, acceptSender{}, "n1", 10)
	marked := false
	e.settleHook = func() {
		if _, err := db.Write.Exec(`UPDATE sending_log SET status = 'sending' WHERE lease_owner = 'n2'`); err != nil {
			t.Error(err)
		}
		marked = true
	}
	if n, err := e.Step(context.Background()); err != nil || n != 0 {
		t.Fatalf("Step = %d, %v; want nothing to claim", n, err)
	}
	if !marked {
		t.Fatal("the worker did not settle the delivery")
	}
	if st := f.state(t); st != delivery.Sending {
		t.Fatalf("the delivery is %s while another node sends its every row, want sending", st)
	}
}

// TestTwoNodesShareADelivery: two engines with their own node ids, as two `herald serve` on one
// database, send one delivery side by side: every recipient receives exactly one message, no row
// is ambiguous, and the delivery finishes without passing through retrying.
func TestTwoNodesShareADelivery(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		const n = 400
		f := newFixture(t, db, n, 84*time.Hour)
		srv := smtptest.Start(t, smtptest.Options{})
		var engines []*Engine
		for _, node := range []string{"n1", "n2"} {
			e := f.engineWith(t, transport(t, srv), node, 9, func(c *Config) {
				c.Workers = 2
				c.PollInterval = 5 * time.Millisecond
			})
			if err := e.Start(t.Context()); err != nil {
				t.Fatal(err)
			}
			engines = append(engines, e)
		}
		waitFor(t, 30*time.Second, func() bool { return f.state(t) == delivery.Finished })
		for _, e := range engines {
			e.Stop()
		}
		f.wantSentOnceEach(t, srv)
	})
}

// shareSender is a Sender that only records the share of the limits it was given.
type shareSender struct {
	channel.Sender
	mu    sync.Mutex
	share float64
}

func (s *shareSender) SetShare(share float64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.share = share
}

func (s *shareSender) get() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.share
}

// TestNodesShareTheLimits: nodes on one database count each other through their heartbeats;
// each gives its Sender 1/(n+1) of the limits, n being the other live nodes that had a batch in
// flight since their previous beat, so that sending nodes share and an idle one takes nothing.
// A node that stops beating for three beats no longer counts, one that stops cleanly no longer
// counts at once, and rows of nodes gone for an hour are deleted.
func TestNodesShareTheLimits(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		f := newFixture(t, db, 0, time.Hour)
		var sa, sb shareSender
		beat := func(set *Config) { set.Heartbeat = time.Second }
		a, b := f.engineWith(t, &sa, "node-a", 0, beat), f.engineWith(t, &sb, "node-b", 0, beat)
		// step beats e, as a node that sent since its previous beat when sending, and checks the
		// share its Sender was given.
		step := func(e *Engine, s *shareSender, sending bool, want float64) {
			t.Helper()
			e.sentSinceBeat.Store(sending)
			if err := e.heartbeat(ctx); err != nil {
				t.Fatal(err)
			}
			if got := s.get(); got != want {
				t.Fatalf("%s: share %v, want %v", e.NodeID(), got, want)
			}
		}
		step(a, &sa, false, 1)
		step(b, &sb, false, 1) // a is live but idle
		step(a, &sa, true, 1)  // b is idle: a sends with the whole of every limit
		step(b, &sb, false, 0.5)
		step(b, &sb, true, 0.5)
		step(a, &sa, true, 0.5) // both send
		if n := a.LiveNodes(); n != 2 {
			t.Fatalf("LiveNodes = %d, want 2", n)
		}
		f.clk.Advance(2 * time.Second)
		step(b, &sb, true, 0.5) // a was seen 2 s ago: within three beats
		f.clk.Advance(2 * time.Second)
		step(b, &sb, true, 1) // a was seen 4 s ago: gone
		step(a, &sa, true, 0.5)
		step(b, &sb, true, 0.5)
		a.leave()
		step(b, &sb, true, 1)
		if n := b.LiveNodes(); n != 1 {
			t.Fatalf("LiveNodes = %d, want 1", n)
		}
		step(a, &sa, true, 0.5) // back
		// Rows of nodes gone for more than an hour are deleted.
		f.clk.Advance(2 * time.Hour)
		step(b, &sb, true, 1)
		var rows int
		if err := db.Read.QueryRow(`SELECT count(*) FROM nodes`).Scan(&rows); err != nil || rows != 1 {
			t.Fatalf("nodes table holds %d rows (%v), want only node-b's", rows, err)
		}
	})
}
