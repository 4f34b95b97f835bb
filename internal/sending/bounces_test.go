package sending

import (
	"context"
	"database/sql"
	"errors"
	"log/slog"
	"net"
	"net/smtp"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/audit"
	"github.com/heraldhq/herald/internal/bounce"
	"github.com/heraldhq/herald/internal/channel/email/smtptest"
	"github.com/heraldhq/herald/internal/quarantine"
	"github.com/heraldhq/herald/internal/stats"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/store/storetest"
	"github.com/heraldhq/herald/internal/webhook"
)

// bounceFixture is a delivery sent through the engine to an SMTP server, a bounce listener
// over a BounceApplier, and an event webhook endpoint taking bounced and complained events.
type bounceFixture struct {
	*fixture
	rp       *ReturnPath
	stats    *stats.Service
	applier  *BounceApplier
	listener string
	sent     map[string]smtptest.Message // by recipient
}

func newBounceFixture(t *testing.T, db *store.DB, n int) *bounceFixture {
	t.Helper()
	return newBounceFixtureWith(t, db, n, func(*fixture) {})
}

// newBounceFixtureWith is newBounceFixture with before changing the delivery before it is sent.
func newBounceFixtureWith(t *testing.T, db *store.DB, n int, before func(*fixture)) *bounceFixture {
	t.Helper()
	ctx := context.Background()
	f := &bounceFixture{fixture: newFixture(t, db, n, 84*time.Hour), sent: map[string]smtptest.Message{}}
	before(f.fixture)
	srv := smtptest.Start(t, smtptest.Options{SMTPUTF8: true})
	drain(t, f.engine(t, transport(t, srv), "n1", 10))
	for _, m := range srv.Messages() {
		f.sent[m.To[0]] = m
	}
	log := slog.New(slog.DiscardHandler)
	f.stats = stats.NewService(db, f.clk, log)
	if _, err := f.stats.Compute(ctx, f.id); err != nil { // the live counters as the engine left them
		t.Fatal(err)
	}
	var err error
	if f.rp, err = NewReturnPath("bounce.example", []byte("return path secret!")); err != nil {
		t.Fatal(err)
	}
	if f.applier, err = NewBounceApplier(BounceConfig{DB: db, Quarantine: f.quar, ReturnPath: f.rp, Clock: f.clk, Logger: log}); err != nil {
		t.Fatal(err)
	}
	if _, err := webhook.NewService(db, f.clk, log).Create(ctx, audit.System, webhook.NewEndpoint{URL: "https://hooks.example/h",
		Events: []string{webhook.Bounced, webhook.Complained}}); err != nil {
		t.Fatal(err)
	}
	l := bounce.NewListener("bounce.example", f.applier, log)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = l.Serve(ln) }()
	t.Cleanup(func() { _ = l.Shutdown(context.Background()) })
	f.listener = ln.Addr().String()
	return f
}

// logID returns the sending-log id of addr's row.
func (f *bounceFixture) logID(t *testing.T, addr string) int64 {
	t.Helper()
	var id int64
	if err := f.db.Read.QueryRow(`SELECT id FROM sending_log WHERE delivery_id = $1 AND address = $2`, f.id, addr).Scan(&id); err != nil {
		t.Fatal(err)
	}
	return id
}

// fromTestdata reads a message of internal/bounce/testdata with its placeholders replaced.
func fromTestdata(t *testing.T, name string, replace ...string) []byte {
	t.Helper()
	raw, err := os.ReadFile("../bounce/testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return []byte(strings.NewReplacer(replace...).Replace(string(raw)))
}

// snapshot is everything a bounce may change.
type snapshot struct {
	row        logRow
	quarantine quarantine.Status
	history    int
	kpis       stats.KPIs
	outbox     map[string]int
	enhanced   string
}

func (f *bounceFixture) snapshot(t *testing.T, addr string) snapshot {
	t.Helper()
	ctx := context.Background()
	s := snapshot{row: f.row(t, addr), outbox: map[string]int{}}
	q, err := f.quar.Get(ctx, quarantine.Email, addr)
	if err != nil {
		t.Fatal(err)
	}
	s.quarantine = q.Status
	h, err := f.quar.History(ctx, quarantine.Email, addr)
	if err != nil {
		t.Fatal(err)
	}
	s.history = len(h)
	if s.kpis, err = f.stats.Read(ctx, f.id); err != nil {
		t.Fatal(err)
	}
	s.kpis.ComputedAt = nil
	rows, err := f.db.Read.Query(`SELECT type, COUNT(*) FROM webhook_outbox GROUP BY type`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var typ string
		var n int
		if err := rows.Scan(&typ, &n); err != nil {
			t.Fatal(err)
		}
		s.outbox[typ] = n
	}
	var enh sql.NullString
	_ = f.db.Read.QueryRow(`SELECT enhanced_code FROM sending_log WHERE delivery_id = $1 AND address = $2`, f.id, addr).Scan(&enh)
	s.enhanced = enh.String
	return s
}

func sameSnapshot(a, b snapshot) bool {
	if a.row != b.row || a.quarantine != b.quarantine || a.history != b.history || a.kpis != b.kpis || len(a.outbox) != len(b.outbox) {
		return false
	}
	for k, v := range a.outbox {
		if b.outbox[k] != v {
			return false
		}
	}
	return true
}

var messageIDHeader = regexp.MustCompile(`(?m)^Message-ID: <([^>]+)>`)

// TestDSNOverSMTPFailsTheRowOnce sends a delivery through the engine, then a real Postfix DSN
// for one recipient to the bounce listener over SMTP, twice.
func TestDSNOverSMTPFailsTheRowOnce(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		f := newBounceFixture(t, db, 3)
		addr := f.addrs[1]
		rp := f.sent[addr].From
		if id, _, ok := f.rp.Parse(rp); !ok || id != f.logID(t, addr) {
			t.Fatalf("message to %s went with return path %q", addr, rp)
		}
		before := f.snapshot(t, addr)
		if before.kpis.Delivered != 3 || before.kpis.HardBounces != 0 {
			t.Fatalf("KPIs after sending: %+v", before.kpis)
		}
		dsn := fromTestdata(t, "dsn-postfix.eml", "b+tok123@bounces.example.com", rp, "alice@dest.example", addr)
		if err := smtp.SendMail(f.listener, nil, "", []string{rp}, dsn); err != nil {
			t.Fatalf("send the DSN: %v", err)
		}
		after := f.snapshot(t, addr)
		if r := after.row; r.status != "failed" || r.failureType != "hard" || !strings.HasPrefix(r.reason, "userunknown: ") ||
			r.code.Int64 != 550 || after.enhanced != "5.1.1" || !r.sentAt.Valid {
			t.Errorf("row after the DSN: %+v (enhanced %q), want failed hard userunknown 550 5.1.1", r, after.enhanced)
		}
		if after.quarantine != quarantine.StatusQuarantine {
			t.Errorf("address is %s, want quarantine", after.quarantine)
		}
		if k := after.kpis; k.Delivered != 2 || k.HardBounces != 1 || k.Sent != 3 || k.SoftBounces != 0 {
			t.Errorf("KPIs after the DSN: delivered %d hard %d soft %d sent %d; want 2, 1, 0, 3", k.Delivered, k.HardBounces, k.SoftBounces, k.Sent)
		}
		if after.outbox[webhook.Bounced] != 1 {
			t.Errorf("webhook outbox %v, want one bounced event", after.outbox)
		}
		var payload string
		if err := db.Read.QueryRow(`SELECT payload FROM webhook_outbox WHERE type = 'bounced'`).Scan(&payload); err != nil ||
			!strings.Contains(payload, `"address":"`+addr+`"`) || !strings.Contains(payload, `"failure_type":"hard"`) {
			t.Errorf("bounced event %s, %v", payload, err)
		}
		// Live counters and Compute agree.
		if k, err := f.stats.Compute(context.Background(), f.id); err != nil || k.Delivered != 2 || k.HardBounces != 1 {
			t.Errorf("Compute after the DSN: %+v %v", k, err)
		}
		after = f.snapshot(t, addr)

		// The same DSN again changes nothing.
		if err := smtp.SendMail(f.listener, nil, "", []string{rp}, dsn); err != nil {
			t.Fatalf("send the DSN again: %v", err)
		}
		if again := f.snapshot(t, addr); !sameSnapshot(after, again) {
			t.Errorf("a second identical DSN changed things:\n%+v\n%+v", after, again)
		}
		// The other recipients are untouched.
		for _, a := range []string{f.addrs[0], f.addrs[2]} {
			if r := f.row(t, a); r.status != "sent" {
				t.Errorf("%s: %+v, want still sent", a, r)
			}
		}
	})
}

// TestComplaintOverSMTPDenylists sends an ARF complaint that quotes only the original
// message's headers: its Message-ID names the row.
func TestComplaintOverSMTPDenylists(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		f := newBounceFixture(t, db, 2)
		addr := f.addrs[0]
		m := messageIDHeader.FindSubmatch(f.sent[addr].Data)
		if m == nil {
			t.Fatalf("sent message has no Message-ID:\n%s", f.sent[addr].Data)
		}
		if id, ok := f.rp.ParseMessageID(string(m[1])); !ok || id != f.logID(t, addr) {
			t.Fatalf("Message-ID %q does not name row %d", m[1], f.logID(t, addr))
		}
		before := f.snapshot(t, addr)
		arf := fromTestdata(t, "arf.eml", "carol@isp.example", addr, "m2@sender.example", string(m[1]))
		for range 2 {
			if err := smtp.SendMail(f.listener, nil, "", []string{"fbl@bounce.example"}, arf); err != nil {
				t.Fatalf("send the complaint: %v", err)
			}
		}
		after := f.snapshot(t, addr)
		if after.quarantine != quarantine.StatusDenylist {
			t.Errorf("address is %s, want denylist", after.quarantine)
		}
		if after.row != before.row || after.kpis != before.kpis {
			t.Errorf("a complaint changed the row or the KPIs:\n%+v\n%+v", before, after)
		}
		if after.outbox[webhook.Complained] != 1 || after.outbox[webhook.Bounced] != 0 {
			t.Errorf("webhook outbox %v, want one complained event", after.outbox)
		}
	})
}

// TestBounceRules drives the applier directly with reports that differ only in data.
func TestBounceRules(t *testing.T) {
	hard, soft := true, false
	dsn := func(recipient string, reason bounce.Reason, h *bool, action string) *bounce.Report {
		return &bounce.Report{Kind: bounce.KindDSN, Results: []bounce.Result{{Recipient: recipient, Reason: reason, Hard: h,
			Action: action, Status: "5.2.2", ReplyCode: 552, Diagnostic: "over quota"}}}
	}
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		f := newBounceFixture(t, db, 4)
		ctx := context.Background()
		a0, a1, a2, a3 := f.addrs[0], f.addrs[1], f.addrs[2], f.addrs[3]

		// By recipient address: a soft bounce (mailbox full after acceptance), then a hard
		// one for the same row upgrades it; the KPIs follow delivered → soft → hard.
		if err := f.applier.Receive(ctx, []string{"postmaster@bounce.example"}, dsn(a0, bounce.ReasonMailboxFull, &soft, "failed")); err != nil {
			t.Fatal(err)
		}
		s := f.snapshot(t, a0)
		if s.row.status != "failed" || s.row.failureType != "soft" || s.quarantine != quarantine.StatusErroneous || s.kpis.SoftBounces != 1 || s.kpis.Delivered != 3 {
			t.Fatalf("after a soft bounce: %+v", s)
		}
		q, _ := f.quar.Get(ctx, quarantine.Email, a0)
		if !strings.HasPrefix(q.LastReason, quarantine.MailboxFullPrefix) {
			t.Errorf("soft error reason %q is not marked as a full mailbox", q.LastReason)
		}
		if err := f.applier.Receive(ctx, nil, dsn(a0, bounce.ReasonUserUnknown, &hard, "failed")); err != nil {
			t.Fatal(err)
		}
		if s := f.snapshot(t, a0); s.row.failureType != "hard" || s.kpis.SoftBounces != 0 || s.kpis.HardBounces != 1 || s.quarantine != quarantine.StatusQuarantine {
			t.Fatalf("after a hard bounce on a soft one: %+v", s)
		}

		// Nothing changes for: an auto-reply, a delayed notice, a delivered report, a bounce
		// about Herald's side (blocked: fails the row but leaves the address), a bounce for
		// nobody we wrote to, a forged return path.
		before := f.snapshot(t, a1)
		for name, rep := range map[string]*bounce.Report{
			"auto-reply": {Kind: bounce.KindAutoReply, Results: []bounce.Result{{Recipient: a1, Reason: bounce.ReasonVacation}}},
			"delayed":    dsn(a1, bounce.ReasonMailboxFull, &soft, "delayed"),
			"delivered":  {Kind: bounce.KindDSN, Results: []bounce.Result{{Recipient: a1, Reason: bounce.ReasonDelivered, Action: "delivered"}}},
			"unknown":    dsn("stranger@example.org", bounce.ReasonUserUnknown, &hard, "failed"),
		} {
			if err := f.applier.Receive(ctx, nil, rep); err != nil {
				t.Errorf("%s: %v", name, err)
			}
		}
		forged := "b+" + strconv.FormatInt(f.logID(t, a1), 10) + ".0000000000000000@bounce.example"
		if err := f.applier.Receive(ctx, []string{forged}, dsn(a1, bounce.ReasonUserUnknown, &hard, "failed")); err != nil {
			t.Errorf("forged: %v", err)
		}
		if after := f.snapshot(t, a1); !sameSnapshot(before, after) {
			t.Errorf("reports that should change nothing did:\n%+v\n%+v", before, after)
		}
		if err := f.applier.Receive(ctx, []string{f.rp.Bounce(f.logID(t, a2))}, dsn(a2, bounce.ReasonBlocked, &hard, "failed")); err != nil {
			t.Fatal(err)
		}
		if s := f.snapshot(t, a2); s.row.failureType != "hard" || s.quarantine != quarantine.StatusValid {
			t.Errorf("blocked: %+v, want the row failed and the address left valid", s)
		}

		// A row still in flight (in a batch in flight on SQLite): try again later.
		putRowInFlight(t, db, f.logID(t, a3))
		err := f.applier.Receive(ctx, []string{f.rp.Bounce(f.logID(t, a3))}, dsn(a3, bounce.ReasonUserUnknown, &hard, "failed"))
		if !errors.Is(err, ErrBounceTooEarly) {
			t.Errorf("bounce for a row in flight: %v, want ErrBounceTooEarly", err)
		}
		// Past the match window, an address names no row.
		f.clk.Advance(BounceMatchWindow + time.Hour)
		before = f.snapshot(t, a1)
		if err := f.applier.Receive(ctx, nil, dsn(a1, bounce.ReasonUserUnknown, &hard, "failed")); err != nil {
			t.Fatal(err)
		}
		if after := f.snapshot(t, a1); !sameSnapshot(before, after) {
			t.Errorf("a bounce older than the window matched: %+v", after.row)
		}
	})
}

// TestBouncesForInternationalisedDomains: reports name the recipient as it was sent, its
// domain in ASCII form; the profile and the sending log have it in Unicode. Both the match by
// recipient and the choice among a report's recipients see them as one address.
func TestBouncesForInternationalisedDomains(t *testing.T) {
	hard, soft := true, false
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		f := newBounceFixtureWith(t, db, 2, func(f *fixture) { f.readdress(t, "anna@bücher.de", "jörg@bücher.de") })
		ctx := context.Background()
		if _, ok := f.sent["anna@xn--bcher-kva.de"]; !ok {
			t.Fatalf("sent to %v", f.sent)
		}
		// By recipient: no return path, no Message-ID.
		rep := &bounce.Report{Kind: bounce.KindDSN, Results: []bounce.Result{{Recipient: "anna@xn--bcher-kva.de",
			Reason: bounce.ReasonUserUnknown, Hard: &hard, Action: "failed", Status: "5.1.1", ReplyCode: 550}}}
		if err := f.applier.Receive(ctx, []string{"postmaster@bounce.example"}, rep); err != nil {
			t.Fatal(err)
		}
		if s := f.snapshot(t, f.addrs[0]); s.row.failureType != "hard" || s.quarantine != quarantine.StatusQuarantine {
			t.Fatalf("bounce naming the ASCII form: %+v, want the row failed hard and the address quarantined", s)
		}
		// By return path, the report listing another recipient first (a forwarding target).
		rep = &bounce.Report{Kind: bounce.KindDSN, Results: []bounce.Result{
			{Recipient: "forward@elsewhere.example", Reason: bounce.ReasonMailboxFull, Hard: &soft, Action: "failed", Status: "5.2.2", ReplyCode: 552},
			{Recipient: "jörg@xn--bcher-kva.de", Reason: bounce.ReasonUserUnknown, Hard: &hard, Action: "failed", Status: "5.1.1", ReplyCode: 550},
		}}
		if err := f.applier.Receive(ctx, []string{f.rp.Bounce(f.logID(t, f.addrs[1]))}, rep); err != nil {
			t.Fatal(err)
		}
		if s := f.snapshot(t, f.addrs[1]); s.row.failureType != "hard" || s.quarantine != quarantine.StatusQuarantine {
			t.Fatalf("bounce by return path: %+v, want the result about the row's recipient (hard)", s)
		}
	})
}

func TestMessageIDRefusesForgeries(t *testing.T) {
	rp, _ := NewReturnPath("bounce.example", []byte("return path secret!"))
	id := rp.MessageID(42, "mail.example")
	if n, ok := rp.ParseMessageID("<" + id + ">"); !ok || n != 42 {
		t.Fatalf("ParseMessageID(%q) = %d %v", id, n, ok)
	}
	for _, bad := range []string{strings.Replace(id, "42.", "43.", 1), "m+42.0000000000000000@mail.example", "m1@sender.example", "", rp.Bounce(42)} {
		if _, ok := rp.ParseMessageID(bad); ok {
			t.Errorf("ParseMessageID(%q) accepted", bad)
		}
	}
}

// TestMailToTheUnsubscribeAddressOptsOut: mail to a message's List-Unsubscribe address is an
// opt-out for its row, whatever it says; a forged address is dropped.
func TestMailToTheUnsubscribeAddressOptsOut(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		f := newFixture(t, db, 2, 84*time.Hour)
		rp, err := NewReturnPath("bounce.example", []byte("return path secret!"))
		if err != nil {
			t.Fatal(err)
		}
		var got [][2]int64
		a, err := NewBounceApplier(BounceConfig{DB: db, Quarantine: f.quar, ReturnPath: rp, Clock: f.clk,
			OptOut: func(_ context.Context, logID, deliveryID int64) error {
				got = append(got, [2]int64{logID, deliveryID})
				return nil
			}})
		if err != nil {
			t.Fatal(err)
		}
		var logID int64
		if err := db.Read.QueryRow(`SELECT id FROM sending_log WHERE address = $1`, f.addrs[1]).Scan(&logID); err != nil {
			t.Fatal(err)
		}
		plain := &bounce.Report{Kind: bounce.KindUnknown}
		if err := a.Receive(context.Background(), []string{rp.Unsubscribe(logID)}, plain); err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || got[0] != [2]int64{logID, f.id} {
			t.Fatalf("opt-outs recorded: %v, want row %d of delivery %d", got, logID, f.id)
		}
		forged := strings.Replace(rp.Unsubscribe(logID), strconv.FormatInt(logID, 10), strconv.FormatInt(logID+1, 10), 1)
		if err := a.Receive(context.Background(), []string{forged}, plain); err != nil || len(got) != 1 {
			t.Fatalf("a forged unsubscribe address opted out: %v %v", got, err)
		}
	})
}
