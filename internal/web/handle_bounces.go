package web

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"sync"
	"time"

	"github.com/heraldhq/herald/internal/auth"
	"github.com/heraldhq/herald/internal/bounce"
	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/store"
)

// GenericBounceSecretName is the settings key of the generic bounce webhook's secret.
const GenericBounceSecretName = "webhook.generic.secret"

// maxBounceWebhookBody caps a bounce webhook's body.
const maxBounceWebhookBody = 1 << 20

// snsHost is the only kind of host an SNS SubscribeURL is followed to.
var snsHost = regexp.MustCompile(`^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$`)

// BounceWebhooksOptions configures NewBounceWebhooks. DB and Receiver are required.
type BounceWebhooksOptions struct {
	DB *store.DB
	// Receiver applies the reports (a sending.BounceApplier).
	Receiver bounce.Receiver
	// SNSTopicARNs are the Amazon SNS topics whose SES notifications are accepted; with none,
	// the ses provider refuses everything, as any AWS account can sign SNS messages.
	SNSTopicARNs []string
	// Client fetches SNS signing certificates and confirms subscriptions; nil means a client
	// with a 10-second timeout.
	Client *http.Client
	Clock  clock.Clock
	Log    *slog.Logger
}

// BounceWebhooks serves POST /api/v1/webhooks/bounces/{provider}, where email providers post
// asynchronous bounces and complaints, and GET /api/v1/webhooks/bounces/generic/secret. The
// bounce routes are public: the provider's signature is the authentication, and a request
// whose signature does not check out is refused before anything is read or written.
//
// Providers:
//   - ses: Amazon SES notifications through an SNS HTTPS subscription. Messages are checked with
//     bounce.SNSVerifier (signature, certificate on an SNS host, topic, age). A
//     SubscriptionConfirmation is confirmed by fetching its SubscribeURL, only after its
//     signature checked and only on an SNS host.
//   - generic: Herald's own JSON format (bounce.ParseGeneric), signed in the X-Herald-Signature
//     header with the secret kept in the settings table under GenericBounceSecretName, the same
//     on every node. Administrators read it at GET /api/v1/webhooks/bounces/generic/secret; the
//     HMAC key is the hex text shown there.
//
// A nil *BounceWebhooks answers 404.
type BounceWebhooks struct {
	db       *store.DB
	receiver bounce.Receiver
	sns      *bounce.SNSVerifier
	client   *http.Client
	clock    clock.Clock
	log      *slog.Logger

	mu     sync.Mutex
	secret []byte // the generic secret's hex text, once read
}

// NewBounceWebhooks returns the bounce webhook handlers for o.
func NewBounceWebhooks(o BounceWebhooksOptions) (*BounceWebhooks, error) {
	if o.DB == nil || o.Receiver == nil {
		return nil, errors.New("web: BounceWebhooksOptions needs DB and Receiver")
	}
	if o.Client == nil {
		o.Client = &http.Client{Timeout: 10 * time.Second}
	}
	if o.Clock == nil {
		o.Clock = clock.Real{}
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	b := &BounceWebhooks{db: o.DB, receiver: o.Receiver, client: o.Client, clock: o.Clock, log: o.Log}
	b.sns = &bounce.SNSVerifier{FetchCert: b.fetch, Now: o.Clock.Now, TopicARNs: o.SNSTopicARNs}
	return b, nil
}

// fetch GETs an https URL (Verify has checked it is on an SNS host) and returns up to 64 KiB.
func (b *BounceWebhooks) fetch(ctx context.Context, u string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := b.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	return io.ReadAll(io.LimitReader(resp.Body, 64<<10))
}

// genericSecret returns the generic webhook's HMAC key, creating it the first time.
func (b *BounceWebhooks) genericSecret(ctx context.Context) ([]byte, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.secret == nil {
		raw, err := b.db.Secret(ctx, GenericBounceSecretName, 32)
		if err != nil {
			return nil, err
		}
		b.secret = []byte(hex.EncodeToString(raw))
	}
	return b.secret, nil
}

// fail answers a failure of the database or the receiver: logged, 503 so that the provider
// retries later (every provider retries a 5xx).
func (b *BounceWebhooks) fail(w http.ResponseWriter, r *http.Request, err error) {
	b.log.Error("bounce webhook not applied; the provider will retry", "path", r.URL.Path, "err", err)
	writeProblem(w, r, http.StatusServiceUnavailable, "try_again", "the bounce could not be stored now; send it again later")
}

// handleProvider receives one provider's post.
func (b *BounceWebhooks) handleProvider(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	provider := r.PathValue("provider")
	if provider != "ses" && provider != "generic" {
		writeProblem(w, r, http.StatusNotFound, "not_found", fmt.Sprintf("there is no bounce webhook for provider %q; the providers are ses and generic", provider))
		return
	}
	if b == nil {
		writeProblem(w, r, http.StatusNotFound, "not_found", "bounce webhooks are not enabled on this server")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBounceWebhookBody))
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		writeProblem(w, r, http.StatusRequestEntityTooLarge, "body_too_large", fmt.Sprintf("the request body is over the limit of %d bytes", maxBounceWebhookBody))
		return
	}
	if err != nil {
		writeProblem(w, r, http.StatusBadRequest, "unreadable_body", "the request body could not be read: "+err.Error())
		return
	}
	if provider == "ses" {
		b.ses(w, r, body)
		return
	}
	b.generic(w, r, body)
}

// refuse answers a webhook whose signature did not check out, saying why in the log only.
func (b *BounceWebhooks) refuse(w http.ResponseWriter, r *http.Request, err error) {
	b.log.Warn("bounce webhook refused", "path", r.URL.Path, "remote", clientIP(r), "err", err)
	writeProblem(w, r, http.StatusForbidden, "invalid_signature", "the request's signature is not valid")
}

func (b *BounceWebhooks) ses(w http.ResponseWriter, r *http.Request, body []byte) {
	ctx := r.Context()
	if len(b.sns.TopicARNs) == 0 {
		writeProblem(w, r, http.StatusForbidden, "not_configured", "Amazon SES notifications are refused: no SNS topic is configured (HERALD_BOUNCE_SNS_TOPICS)")
		return
	}
	m, err := b.sns.Verify(ctx, body)
	if err != nil {
		b.refuse(w, r, err)
		return
	}
	switch m.Type {
	case "SubscriptionConfirmation":
		u, err := url.Parse(m.SubscribeURL)
		if err != nil || u.Scheme != "https" || u.Port() != "" || !snsHost.MatchString(u.Hostname()) {
			b.refuse(w, r, fmt.Errorf("SubscribeURL %q is not on an SNS host", m.SubscribeURL))
			return
		}
		if _, err := b.fetch(ctx, m.SubscribeURL); err != nil {
			b.log.Error("SNS subscription not confirmed", "topic", m.TopicArn, "err", err)
			writeProblem(w, r, http.StatusBadGateway, "confirmation_failed", "the SNS subscription could not be confirmed; SNS will send the confirmation again")
			return
		}
		b.log.Info("SNS subscription confirmed", "topic", m.TopicArn)
		writeJSON(w, http.StatusOK, map[string]string{"status": "confirmed"})
	case "UnsubscribeConfirmation":
		b.log.Warn("SNS topic unsubscribed this endpoint", "topic", m.TopicArn)
		writeJSON(w, http.StatusOK, map[string]string{"status": "ignored"})
	case "Notification":
		rep, err := bounce.ParseSESNotification(m.Message)
		if err != nil {
			// A delivery or other notification: nothing to apply, and nothing to retry.
			b.log.Debug("SES notification ignored", "topic", m.TopicArn, "err", err)
			writeJSON(w, http.StatusOK, map[string]string{"status": "ignored"})
			return
		}
		if err := b.receiver.Receive(ctx, rep.To, rep); err != nil {
			b.fail(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "accepted"})
	default:
		writeProblem(w, r, http.StatusBadRequest, "invalid", fmt.Sprintf("SNS message type %q is not handled", m.Type))
	}
}

func (b *BounceWebhooks) generic(w http.ResponseWriter, r *http.Request, body []byte) {
	ctx := r.Context()
	header := r.Header.Get(bounce.GenericSignatureHeader)
	if header == "" {
		writeProblem(w, r, http.StatusUnauthorized, "unauthenticated", "the "+bounce.GenericSignatureHeader+" header is missing: sign the body as t=<unix time>,v1=<hex HMAC-SHA256 of \"<t>.<body>\">")
		return
	}
	secret, err := b.genericSecret(ctx)
	if err != nil {
		b.fail(w, r, err)
		return
	}
	if err := bounce.VerifyGeneric(secret, header, body, b.clock.Now()); err != nil {
		b.refuse(w, r, err)
		return
	}
	reps, err := bounce.ParseGeneric(body)
	if err != nil {
		writeProblem(w, r, http.StatusBadRequest, "invalid", err.Error())
		return
	}
	for _, rep := range reps {
		if err := b.receiver.Receive(ctx, rep.To, rep); err != nil {
			b.fail(w, r, err) // the reports before it are applied; a retry applies them again harmlessly
			return
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": "accepted", "events": len(reps)})
}

// handleGenericSecret shows administrators the generic webhook's secret and how to sign.
func (b *BounceWebhooks) handleGenericSecret(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	if b == nil {
		writeProblem(w, r, http.StatusNotFound, "not_found", "bounce webhooks are not enabled on this server")
		return
	}
	secret, err := b.genericSecret(r.Context())
	if err != nil {
		b.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{
		"secret": string(secret),
		"header": bounce.GenericSignatureHeader,
		"format": `t=<unix time>,v1=<hex HMAC-SHA256, keyed with the secret's text, of "<t>.<body>">`,
		"url":    "/api/v1/webhooks/bounces/generic",
	})
}
