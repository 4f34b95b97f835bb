package sending

import (
	"context"
	"fmt"
	"strings"

	"github.com/heraldhq/herald/internal/channel"
	"github.com/heraldhq/herald/internal/channel/email"
	"github.com/heraldhq/herald/internal/delivery"
	"github.com/heraldhq/herald/internal/problem"
)

// ProofSender sends a delivery's proofs through the same channel as its send: the same
// Composer (MIME, DKIM) and Sender (SMTP relays, or capture mode). Proofs have no
// sending-log row, so they never count in a delivery's figures.
type ProofSender struct {
	Sender   channel.Sender
	Composer *email.Composer
}

var _ delivery.ProofSender = (*ProofSender)(nil)

// SendProofs builds and sends msgs, and fails, naming them, when any was not accepted.
func (p *ProofSender) SendProofs(ctx context.Context, d delivery.Delivery, msgs []delivery.ProofMessage) error {
	if d.Channel != delivery.Email {
		return problem.Conflictf("proof_channel", "proofs of %s deliveries are not sent yet; only email is", d.Channel)
	}
	out := make([]channel.Outcome, len(msgs))
	batch := make([]channel.Message, len(msgs))
	for i, m := range msgs {
		to, err := email.EnvelopeAddress(m.To)
		if err != nil {
			return problem.Invalidf("to", "the proof cannot be sent: %v", err)
		}
		data, err := p.Composer.Build(nil, &email.Email{
			From:    email.Address{Name: m.FromName, Addr: m.FromAddress},
			ReplyTo: email.Address{Addr: m.ReplyTo},
			To:      email.Address{Addr: to},
			Subject: m.Subject,
			Text:    []byte(m.Text),
			HTML:    []byte(m.HTML),
			Headers: []email.Header{{Name: "X-Herald-Proof", Value: fmt.Sprint(d.ID)}},
		})
		if err != nil {
			return problem.Invalidf("content", "the proof for %s cannot be built: %v", m.To, err)
		}
		batch[i] = channel.Message{To: to, From: m.FromAddress, Data: data, Plain: true}
	}
	if err := p.Sender.Send(ctx, batch, out); err != nil {
		return fmt.Errorf("send proofs of delivery %d: %w", d.ID, err)
	}
	var refused []string
	for i, o := range out {
		if o.Status != channel.Sent {
			refused = append(refused, fmt.Sprintf("%s (%d %s %s)", msgs[i].To, o.Code, o.Enhanced, o.Text))
		}
	}
	if len(refused) > 0 {
		return problem.Conflictf("proof_refused", "the proof was not accepted for %s", strings.Join(refused, ", "))
	}
	return nil
}
