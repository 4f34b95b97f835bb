package delivery

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/heraldhq/herald/internal/audit"
	"github.com/heraldhq/herald/internal/auth"
	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/content"
	"github.com/heraldhq/herald/internal/problem"
	"github.com/heraldhq/herald/internal/quarantine"
)

// Proof is a test send of a delivery's message, numbered per delivery. Proofs are kept apart
// from the sending log and never counted in a delivery's figures.
type Proof struct {
	ID         int64     `json:"id"`
	DeliveryID int64     `json:"delivery_id"`
	N          int64     `json:"n"`
	Addresses  []string  `json:"addresses"`
	Subject    string    `json:"subject"`
	At         time.Time `json:"at"`
	By         string    `json:"by"`
}

// ProofMessage is one rendered proof, for one address.
type ProofMessage struct {
	To string `json:"to"`
	// ProfileID is the profile whose data personalised the message; 0 when the address
	// belongs to no profile (the message is rendered with the address alone).
	ProfileID   int64  `json:"profile_id,omitempty"`
	FromName    string `json:"from_name"`
	FromAddress string `json:"from_address"`
	ReplyTo     string `json:"reply_to,omitempty"`
	Subject     string `json:"subject"`
	HTML        string `json:"html,omitempty"`
	Text        string `json:"text"`
}

// ProofSender sends rendered proofs; the channel code implements it.
type ProofSender interface {
	SendProofs(ctx context.Context, d Delivery, msgs []ProofMessage) error
}

// proofPrefix is what a proof's subject starts with.
func proofPrefix(n int64) string { return fmt.Sprintf("Proof #%d ", n) }

// Proof records a proof of a delivery's message to addresses (1 to MaxProofAddresses, or the
// Proof size control rule's limit) and, when a ProofSender is set, sends it. It needs the
// role Prepare deliveries.
func (s *Service) Proof(ctx context.Context, actor auth.Principal, id int64, addresses []string) (Proof, error) {
	if err := actor.Require(auth.PrepareDeliveries); err != nil {
		return Proof{}, err
	}
	d, err := s.Get(ctx, id)
	if err != nil {
		return Proof{}, err
	}
	limit, err := s.proofLimit(ctx, d)
	if err != nil {
		return Proof{}, err
	}
	if len(addresses) == 0 {
		return Proof{}, problem.Invalidf("addresses", "give at least one address to send the proof to")
	}
	if len(addresses) > limit {
		return Proof{}, problem.Invalidf("addresses", "a proof goes to at most %d addresses; %d were given", limit, len(addresses))
	}
	seen := map[string]bool{}
	var addrs []string
	for _, a := range addresses {
		n, err := quarantine.NormalizeAddress(quarantine.Channel(d.Channel), a)
		if err != nil {
			return Proof{}, err
		}
		if !seen[n] {
			seen[n] = true
			addrs = append(addrs, n)
		}
	}
	if _, err := content.Compile(d.Content, content.Options{}); err != nil {
		return Proof{}, problem.Invalidf("content", "the message does not compile, so no proof can be made: %v", err)
	}
	now := s.clock.Now()
	p := Proof{DeliveryID: id, Addresses: addrs, At: now.UTC().Truncate(time.Millisecond), By: actor.Login}
	err = s.db.InTx(ctx, func(tx *sql.Tx) error {
		// Proofs asked for at once take turns on the delivery's row, so that each numbers itself
		// after the last one committed (on PostgreSQL they would read the same highest number).
		if _, err := s.lock(ctx, tx, id); err != nil {
			return err
		}
		if err := tx.QueryRowContext(ctx, `SELECT COALESCE(max(n), 0) + 1 FROM proofs WHERE delivery_id = $1`, id).Scan(&p.N); err != nil {
			return fmt.Errorf("number the proof of delivery %d: %w", id, err)
		}
		p.Subject = proofPrefix(p.N) + d.Content.Subject
		b, _ := json.Marshal(addrs)
		if err := tx.QueryRowContext(ctx, `INSERT INTO proofs (delivery_id, n, addresses, subject, at, by_id, by_login)
			VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id`, id, p.N, string(b), p.Subject, now.UnixMilli(),
			nullID(actor.UserID), actor.Login).Scan(&p.ID); err != nil {
			return fmt.Errorf("record the proof of delivery %d: %w", id, err)
		}
		return audit.Record(ctx, tx, now, actor.Actor(), "delivery.proof", "delivery", id, nil, p)
	})
	if err != nil {
		return Proof{}, err
	}
	if s.ProofSender != nil {
		msgs, err := s.ProofMessages(ctx, id, p.N)
		if err != nil {
			return p, err
		}
		if err := s.ProofSender.SendProofs(ctx, d, msgs); err != nil {
			return p, fmt.Errorf("send proof #%d of delivery %d: %w", p.N, id, err)
		}
	}
	return p, nil
}

// proofLimit is the most addresses a proof of d may go to.
func (s *Service) proofLimit(ctx context.Context, d Delivery) (int, error) {
	rs, err := rules(ctx, s.db.Read)
	if err != nil {
		return 0, err
	}
	limit := MaxProofAddresses
	for _, r := range rs {
		if r.Kind == ControlRule && r.Settings.Check == CheckProofSize && r.Enabled && r.Severity == Error &&
			!containsID(d.Typology.DisabledRules, r.ID) && r.Settings.MaxRecipients > 0 {
			limit = min(limit, r.Settings.MaxRecipients)
		}
	}
	return limit, nil
}

func containsID(ids []int64, id int64) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}

// Proofs returns the proofs of a delivery, oldest first.
func (s *Service) Proofs(ctx context.Context, id int64) ([]Proof, error) {
	rows, err := s.db.Read.QueryContext(ctx, `SELECT id, n, addresses, subject, at, by_login FROM proofs WHERE delivery_id = $1 ORDER BY n`, id)
	if err != nil {
		return nil, fmt.Errorf("read proofs of delivery %d: %w", id, err)
	}
	defer rows.Close()
	out := []Proof{}
	for rows.Next() {
		p := Proof{DeliveryID: id}
		var addrs string
		var at int64
		if err := rows.Scan(&p.ID, &p.N, &addrs, &p.Subject, &at, &p.By); err != nil {
			return nil, fmt.Errorf("read proofs of delivery %d: %w", id, err)
		}
		if err := json.Unmarshal([]byte(addrs), &p.Addresses); err != nil {
			return nil, fmt.Errorf("read proofs of delivery %d: %w", id, err)
		}
		p.At = clock.FromMillis(at)
		out = append(out, p)
	}
	return out, rows.Err()
}

// ProofMessages renders proof number n of a delivery, one message per address, with the
// delivery's current content; the subject starts with "Proof #n". An address that belongs
// to a profile is personalised with that profile's data.
func (s *Service) ProofMessages(ctx context.Context, id, n int64) ([]ProofMessage, error) {
	d, err := s.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	var addrs string
	err = s.db.Read.QueryRowContext(ctx, `SELECT addresses FROM proofs WHERE delivery_id = $1 AND n = $2`, id, n).Scan(&addrs)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, problem.NotFoundf("delivery %d has no proof #%d", id, n)
	} else if err != nil {
		return nil, fmt.Errorf("read proof #%d of delivery %d: %w", n, id, err)
	}
	var list []string
	if err := json.Unmarshal([]byte(addrs), &list); err != nil {
		return nil, fmt.Errorf("read proof #%d of delivery %d: %w", n, id, err)
	}
	tpl, err := content.Compile(d.Content, content.Options{})
	if err != nil {
		return nil, problem.Invalidf("content", "the message does not compile: %v", err)
	}
	r := tpl.NewRenderer()
	col := strings.TrimPrefix(addressExpr(d.Channel), "p.")
	if d.Channel == Push {
		col = "(push_tokens ->> 0)"
	}
	out := make([]ProofMessage, 0, len(list))
	for _, a := range list {
		rc := content.Recipient{Email: a}
		if d.Channel == SMS {
			rc = content.Recipient{Phone: a}
		}
		if err := s.loadRecipient(ctx, &rc, `erased_at IS NULL AND `+col+` = $1`, a); err != nil && !errors.Is(err, sql.ErrNoRows) {
			return nil, fmt.Errorf("find the profile of %s: %w", a, err)
		}
		m, err := r.Render(&rc, content.RenderOptions{})
		if err != nil {
			return nil, problem.Invalidf("content", "the proof for %s does not render: %v", a, err)
		}
		out = append(out, ProofMessage{To: a, ProfileID: rc.ID, FromName: m.FromName, FromAddress: m.FromAddress,
			ReplyTo: m.ReplyTo, Subject: proofPrefix(n) + m.Subject, HTML: string(m.HTML), Text: string(m.Text)})
	}
	return out, nil
}

// loadRecipient fills rc from the first profile matching where (with arg as $1); it returns
// sql.ErrNoRows, leaving rc as it was, when none matches.
func (s *Service) loadRecipient(ctx context.Context, rc *content.Recipient, where string, arg any) error {
	var email, phone, locale, tz, ext sql.NullString
	var created int64
	var attrs string
	var id int64
	err := s.db.Read.QueryRowContext(ctx, `SELECT id, email, phone, locale, time_zone, external_id, created_at, attributes
		FROM profiles WHERE `+where+` ORDER BY id LIMIT 1`, arg).Scan(&id, &email, &phone, &locale, &tz, &ext, &created, &attrs)
	if err != nil {
		return err
	}
	rc.ID, rc.Email, rc.Phone, rc.Locale, rc.TimeZone, rc.ExternalID = id, email.String, phone.String, locale.String, tz.String, ext.String
	rc.CreatedAt = clock.FromMillis(created)
	if rc.Attributes, err = content.DecodeAttributes([]byte(attrs)); err != nil {
		return fmt.Errorf("profile %d: %w", id, err)
	}
	return nil
}

// Preview renders the delivery's current content for one profile, without tracking, so that
// whoever prepares or approves it sees what that person will get.
func (s *Service) Preview(ctx context.Context, id, profileID int64) (ProofMessage, error) {
	d, err := s.Get(ctx, id)
	if err != nil {
		return ProofMessage{}, err
	}
	tpl, err := content.Compile(d.Content, content.Options{})
	if err != nil {
		return ProofMessage{}, problem.Invalidf("content", "the message does not compile: %v", err)
	}
	var rc content.Recipient
	err = s.loadRecipient(ctx, &rc, `erased_at IS NULL AND id = $1`, profileID)
	if errors.Is(err, sql.ErrNoRows) {
		return ProofMessage{}, problem.NotFoundf("there is no profile with id %d", profileID)
	} else if err != nil {
		return ProofMessage{}, err
	}
	m, err := content.Preview(tpl, &rc)
	if err != nil {
		return ProofMessage{}, problem.Invalidf("content", "the message does not render for profile %d: %v", profileID, err)
	}
	return ProofMessage{To: rc.Email, ProfileID: rc.ID, FromName: m.FromName, FromAddress: m.FromAddress,
		ReplyTo: m.ReplyTo, Subject: m.Subject, HTML: string(m.HTML), Text: string(m.Text)}, nil
}
