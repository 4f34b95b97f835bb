package email

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/heraldhq/herald/internal/channel"
	"github.com/heraldhq/herald/internal/channel/email/smtptest"
)

// TestTransportMetrics: the transport reports each relay as up or skipped with its open
// connections, the domains it has slowed down, and this node's share of the limits.
func TestTransportMetrics(t *testing.T) {
	s := smtptest.Start(t, smtptest.Options{})
	s.Script("slow@throttled.example", smtptest.Always(smtptest.Action{Code: 450, Enhanced: "4.2.1", Text: "slow down"}))
	clock := newFakeClock()
	live, dead := plainRelay(s, 2), Relay{Addr: closedAddr(t), TLS: TLSNone, MaxConns: 2}
	live.Rate = 10
	tr := newTestTransport(t, Options{Clock: clock}, dead, live)
	out := send(t, tr, []channel.Message{
		{To: "slow@throttled.example", From: "b@herald.test", Data: []byte("x\r\n")},
		{To: "ann@example.com", From: "b@herald.test", Data: []byte("x\r\n")},
	})
	wantStatus(t, out, 0, channel.SoftFail)
	wantStatus(t, out, 1, channel.Sent)
	tr.SetShare(0.5)
	want := `
# HELP herald_smtp_relay_up 1 when the relay is taking connections, 0 while it is skipped after failing to connect.
# TYPE herald_smtp_relay_up gauge
herald_smtp_relay_up{relay="smtp://` + dead.Addr + `"} 0
herald_smtp_relay_up{relay="smtp://` + live.Addr + `"} 1
# HELP herald_smtp_relay_rate_limit Messages per second this node sends to the relay at most: its rate= times the node's share, or less while the relay asks to slow down; 0 for no limit.
# TYPE herald_smtp_relay_rate_limit gauge
herald_smtp_relay_rate_limit{relay="smtp://` + dead.Addr + `"} 0
herald_smtp_relay_rate_limit{relay="smtp://` + live.Addr + `"} 5
# HELP herald_smtp_throttled_domains Recipient domains sent to below their configured rate after answering 421, 450 or 451.
# TYPE herald_smtp_throttled_domains gauge
herald_smtp_throttled_domains 1
# HELP herald_smtp_limits_share This node's share of the configured rates and caps (1/n while n nodes send).
# TYPE herald_smtp_limits_share gauge
herald_smtp_limits_share 0.5
`
	if err := testutil.CollectAndCompare(tr, strings.NewReader(want), "herald_smtp_relay_up", "herald_smtp_relay_rate_limit",
		"herald_smtp_throttled_domains", "herald_smtp_limits_share"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(tr, "herald_smtp_relay_connections"); n != 2 {
		t.Errorf("%d relay connection gauges, want one per relay", n)
	}
	// The throttled domain recovers after its quiet periods and is no longer counted.
	clock.Advance(time.Hour)
	if err := testutil.CollectAndCompare(tr, strings.NewReader(`
# HELP herald_smtp_throttled_domains Recipient domains sent to below their configured rate after answering 421, 450 or 451.
# TYPE herald_smtp_throttled_domains gauge
herald_smtp_throttled_domains 0
`), "herald_smtp_throttled_domains"); err != nil {
		t.Error(err)
	}
}
