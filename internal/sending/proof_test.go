package sending

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/auth"
	"github.com/heraldhq/herald/internal/channel/email"
	"github.com/heraldhq/herald/internal/channel/email/smtptest"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/store/storetest"
)

// TestProofsGoOutThroughTheChannel sends a proof through the SMTP transport to the
// in-process server: personalised for the address's profile, subject prefixed "Proof #n",
// and no sending-log row or figure touched.
func TestProofsGoOutThroughTheChannel(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		f := newFixture(t, db, 2, 84*time.Hour)
		srv := smtptest.Start(t, smtptest.Options{SMTPUTF8: true})
		f.del.ProofSender = &ProofSender{Sender: transport(t, srv), Composer: &email.Composer{Domain: "herald.test"}}
		maker := auth.Principal{UserID: 0, Login: "maker", Roles: auth.Roles{auth.PrepareDeliveries}}
		before := f.count(t, `1 = 1`)
		p, err := f.del.Proof(ctx, maker, f.id, []string{f.addrs[1], "reviewer@agency.example"})
		if err != nil {
			t.Fatal(err)
		}
		if p.N != 1 {
			t.Fatalf("proof number %d", p.N)
		}
		msgs := srv.Messages()
		if len(msgs) != 2 {
			t.Fatalf("the server got %d messages, want 2", len(msgs))
		}
		var personalised bool
		for _, m := range msgs {
			data := string(m.Data)
			if !strings.Contains(data, "Subject: Proof #1 Hi") {
				t.Errorf("proof subject missing its prefix:\n%.400s", data)
			}
			if strings.Contains(data, "Subject: Proof #1 Hi Ann1") {
				personalised = true
			}
		}
		if !personalised {
			t.Error("the proof to a profile's address was not personalised with its data")
		}
		if after := f.count(t, `1 = 1`); after != before {
			t.Fatalf("a proof wrote sending-log rows: %d → %d", before, after)
		}
		// A reviewer at an internationalised domain gets it at the domain's ASCII form.
		if _, err := f.del.Proof(ctx, maker, f.id, []string{"prüfer@agentür.example"}); err != nil {
			t.Fatalf("proof to an internationalised address: %v", err)
		}
		if m := srv.Messages(); len(m) != 3 || m[2].To[0] != "prüfer@xn--agentr-7ya.example" || !m[2].UTF8 {
			t.Fatalf("proof to an internationalised address arrived as %+v", m[len(m)-1].To)
		}
		// A refused address fails the proof with the server's words.
		srv.Script("refused@agency.example", smtptest.Always(smtptest.Action{Code: 550, Enhanced: "5.1.1", Text: "no such user"}))
		if _, err := f.del.Proof(ctx, maker, f.id, []string{"refused@agency.example"}); err == nil || !strings.Contains(err.Error(), "no such user") {
			t.Fatalf("refused proof: %v", err)
		}
	})
}
