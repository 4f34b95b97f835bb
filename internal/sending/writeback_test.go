package sending

import (
	"context"
	"database/sql"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/channel"
	"github.com/heraldhq/herald/internal/stats"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/store/storetest"
)

// outcomeSender answers each message with the outcome given for its recipient.
type outcomeSender struct{ outcomes map[string]channel.Outcome }

func (s *outcomeSender) Send(_ context.Context, msgs []channel.Message, out []channel.Outcome) error {
	for i, m := range msgs {
		out[i] = s.outcomes[m.To]
	}
	return nil
}
func (s *outcomeSender) Close() error { return nil }

// TestWriteBackStoresEveryOutcome sends one batch whose rows take every path of the
// write-back — sent with and without a provider id and with two reply codes (grouped
// statements), ambiguous, soft and hard failures (the general one) — and checks each row's
// columns and the live counters.
func TestWriteBackStoresEveryOutcome(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		outcomes := []channel.Outcome{
			{Status: channel.Sent, Code: 250, Enhanced: "2.0.0", ProviderID: "Q1"},
			{Status: channel.Sent, Code: 250, Enhanced: "2.0.0"},
			{Status: channel.Sent, Code: 250, Enhanced: "2.0.0", ProviderID: "Q 3 \"quoted\" é"},
			{Status: channel.Sent, Code: 251, Enhanced: "2.1.5"},
			{Status: channel.Sent},
			{Status: channel.Unknown, Text: "connection dropped after the data"},
			{Status: channel.SoftFail, Code: 451, Enhanced: "4.3.0", Text: "try later"},
			{Status: channel.HardFail, Code: 550, Enhanced: "5.1.1", Text: "no such user"},
		}
		f := newFixture(t, db, len(outcomes), 84*time.Hour)
		byAddress := map[string]channel.Outcome{}
		for i, o := range outcomes {
			byAddress[f.addrs[i]] = o
		}
		e := f.engine(t, &outcomeSender{byAddress}, "n1", len(outcomes))
		if _, err := e.Step(context.Background()); err != nil {
			t.Fatal(err)
		}
		type want struct {
			status, enhanced, provider, failure string
			code                                int64
			ambiguous, sentAt                   bool
		}
		wants := []want{
			{status: "sent", code: 250, enhanced: "2.0.0", provider: "Q1", sentAt: true},
			{status: "sent", code: 250, enhanced: "2.0.0", sentAt: true},
			{status: "sent", code: 250, enhanced: "2.0.0", provider: "Q 3 \"quoted\" é", sentAt: true},
			{status: "sent", code: 251, enhanced: "2.1.5", sentAt: true},
			{status: "sent", sentAt: true},
			{status: "sent", ambiguous: true, sentAt: true},
			{status: "pending", code: 451, enhanced: "4.3.0", failure: "soft"},
			{status: "failed", code: 550, enhanced: "5.1.1", failure: "hard"},
		}
		for i, w := range wants {
			var status string
			var code, sentAt sql.NullInt64
			var enhanced, provider, failure, owner sql.NullString
			var attempts int
			var ambiguous bool
			if err := db.Read.QueryRow(`SELECT status, smtp_code, enhanced_code, provider_id, failure_type, attempts, ambiguous, sent_at, lease_owner
				FROM sending_log WHERE delivery_id = $1 AND address = $2`, f.id, f.addrs[i]).Scan(
				&status, &code, &enhanced, &provider, &failure, &attempts, &ambiguous, &sentAt, &owner); err != nil {
				t.Fatal(err)
			}
			got := want{status: status, code: code.Int64, enhanced: enhanced.String, provider: provider.String,
				failure: failure.String, ambiguous: ambiguous, sentAt: sentAt.Valid}
			if got != w || attempts != 1 || owner.Valid || (w.provider == "") != !provider.Valid {
				t.Errorf("row %d: %+v, attempts %d, lease %v, provider set %v; want %+v, 1 attempt, no lease", i, got, attempts, owner, provider.Valid, w)
			}
		}
		live, err := stats.NewService(db, f.clk, nil).Read(context.Background(), f.id)
		if err != nil {
			t.Fatal(err)
		}
		if live.Sent != 7 || live.Delivered != 6 || live.HardBounces != 1 {
			t.Errorf("live counters %+v; want 7 sent of which 6 delivered, 1 hard bounce (the soft one waits)", live)
		}
	})
}
