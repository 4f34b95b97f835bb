package bounce

import (
	"context"
	"crypto"
	"crypto/hmac"
	"crypto/rsa"
	"crypto/sha1" //nolint:gosec // SNS SignatureVersion 1 is SHA1withRSA; version 2 uses SHA-256.
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ErrBadSignature is returned, wrapped, for every webhook whose signature, certificate or age
// does not check out. Callers answer it with one refusal and say no more.
var ErrBadSignature = errors.New("webhook signature is not valid")

// SNSMessage is an Amazon SNS HTTP(S) notification, as posted to a subscribed endpoint.
type SNSMessage struct {
	Type             string `json:"Type"`
	MessageID        string `json:"MessageId"`
	Token            string `json:"Token"`
	TopicArn         string `json:"TopicArn"`
	Subject          string `json:"Subject"`
	Message          string `json:"Message"`
	SubscribeURL     string `json:"SubscribeURL"`
	Timestamp        string `json:"Timestamp"`
	SignatureVersion string `json:"SignatureVersion"`
	Signature        string `json:"Signature"`
	SigningCertURL   string `json:"SigningCertURL"`
}

// snsCertHost is the only kind of host SNS signing certificates are fetched from.
var snsCertHost = regexp.MustCompile(`^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$`)

// SNSVerifier checks the signatures of Amazon SNS messages. Signing certificates are
// fetched over HTTPS only from SNS's own hosts, and cached.
type SNSVerifier struct {
	// FetchCert returns the PEM certificate at an https://sns.<region>.amazonaws.com/ URL.
	FetchCert func(ctx context.Context, url string) ([]byte, error)
	// Now tells the time; messages older than MaxAge (default 1 hour) are refused as replays.
	Now    func() time.Time
	MaxAge time.Duration
	// TopicARNs, when not empty, are the only topics accepted.
	TopicARNs []string

	mu    sync.Mutex
	certs map[string]*x509.Certificate
}

// Verify parses body as an SNS message and checks its signature, certificate source, topic and
// age. Every failure wraps ErrBadSignature.
func (v *SNSVerifier) Verify(ctx context.Context, body []byte) (*SNSMessage, error) {
	var m SNSMessage
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, fmt.Errorf("%w: not an SNS message: %v", ErrBadSignature, err)
	}
	if len(v.TopicARNs) > 0 && !contains(v.TopicARNs, m.TopicArn) {
		return nil, fmt.Errorf("%w: topic %q is not one this endpoint accepts", ErrBadSignature, m.TopicArn)
	}
	ts, err := time.Parse(time.RFC3339, m.Timestamp)
	if err != nil {
		return nil, fmt.Errorf("%w: bad timestamp %q", ErrBadSignature, m.Timestamp)
	}
	maxAge := v.MaxAge
	if maxAge == 0 {
		maxAge = time.Hour
	}
	if age := v.Now().Sub(ts); age > maxAge || age < -5*time.Minute {
		return nil, fmt.Errorf("%w: the message is %s old; replays are refused", ErrBadSignature, age.Round(time.Second))
	}
	u, err := url.Parse(m.SigningCertURL)
	if err != nil || u.Scheme != "https" || !snsCertHost.MatchString(u.Hostname()) || u.Port() != "" || !strings.HasSuffix(u.Path, ".pem") {
		return nil, fmt.Errorf("%w: the signing certificate %q is not on an SNS host", ErrBadSignature, m.SigningCertURL)
	}
	cert, err := v.cert(ctx, m.SigningCertURL)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadSignature, err)
	}
	pub, ok := cert.PublicKey.(*rsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%w: the signing certificate has no RSA key", ErrBadSignature)
	}
	sig, err := base64.StdEncoding.DecodeString(m.Signature)
	if err != nil {
		return nil, fmt.Errorf("%w: the signature is not base64", ErrBadSignature)
	}
	text := snsStringToSign(&m)
	switch m.SignatureVersion {
	case "1":
		sum := sha1.Sum([]byte(text)) //nolint:gosec // as SNS signs version 1
		err = rsa.VerifyPKCS1v15(pub, crypto.SHA1, sum[:], sig)
	case "2":
		sum := sha256.Sum256([]byte(text))
		err = rsa.VerifyPKCS1v15(pub, crypto.SHA256, sum[:], sig)
	default:
		return nil, fmt.Errorf("%w: unknown SignatureVersion %q", ErrBadSignature, m.SignatureVersion)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: the signature does not match the message", ErrBadSignature)
	}
	return &m, nil
}

func (v *SNSVerifier) cert(ctx context.Context, u string) (*x509.Certificate, error) {
	v.mu.Lock()
	c := v.certs[u]
	v.mu.Unlock()
	if c != nil {
		return c, nil
	}
	raw, err := v.FetchCert(ctx, u)
	if err != nil {
		return nil, fmt.Errorf("fetch the signing certificate: %v", err)
	}
	block, _ := pem.Decode(raw)
	if block == nil {
		return nil, errors.New("the signing certificate is not PEM")
	}
	c, err = x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse the signing certificate: %v", err)
	}
	if now := v.Now(); now.Before(c.NotBefore) || now.After(c.NotAfter) {
		return nil, errors.New("the signing certificate is not valid now")
	}
	v.mu.Lock()
	if v.certs == nil {
		v.certs = map[string]*x509.Certificate{}
	}
	v.certs[u] = c
	v.mu.Unlock()
	return c, nil
}

// snsStringToSign builds the text SNS signs: the listed keys and their values, one per line,
// in this order, skipping Subject when absent.
func snsStringToSign(m *SNSMessage) string {
	var b strings.Builder
	add := func(k, v string) { b.WriteString(k + "\n" + v + "\n") }
	add("Message", m.Message)
	add("MessageId", m.MessageID)
	if m.Type == "Notification" {
		if m.Subject != "" {
			add("Subject", m.Subject)
		}
		add("Timestamp", m.Timestamp)
		add("TopicArn", m.TopicArn)
		add("Type", m.Type)
		return b.String()
	}
	add("SubscribeURL", m.SubscribeURL)
	add("Timestamp", m.Timestamp)
	add("Token", m.Token)
	add("TopicArn", m.TopicArn)
	add("Type", m.Type)
	return b.String()
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// sesMail is the part of an SES notification that names the message it is about.
type sesMail struct {
	Mail struct {
		MessageID     string `json:"messageId"`
		Source        string `json:"source"`
		CommonHeaders struct {
			MessageID string `json:"messageId"`
		} `json:"commonHeaders"`
	} `json:"mail"`
}

// ParseSESNotification reads the Message of an SNS notification from Amazon SES (a bounce or
// a complaint) into a Report: Results as the classifier judges them, To holding the message's
// envelope sender (Herald's per-recipient return path) and OriginalMessageID its Message-ID.
func ParseSESNotification(message string) (*Report, error) {
	results, ok := jsonNotification(message)
	if !ok {
		return nil, errors.New("the notification is not an SES bounce or complaint")
	}
	var m sesMail
	_ = json.Unmarshal([]byte(message), &m)
	rep := &Report{Kind: KindDSN, Results: results, OriginalMessageID: strings.Trim(m.Mail.CommonHeaders.MessageID, "<>")}
	if m.Mail.Source != "" {
		rep.To = []string{m.Mail.Source}
	}
	for _, r := range results {
		if r.Reason == ReasonFeedback {
			rep.Kind = KindFeedback
		}
	}
	return rep, nil
}

// Generic webhooks carry this header: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">.
const GenericSignatureHeader = "X-Herald-Signature"

// GenericMaxSkew is how far a generic webhook's timestamp may be from now.
const GenericMaxSkew = 5 * time.Minute

// VerifyGeneric checks a generic webhook's signature header against secret: the HMAC must
// match and the timestamp be within GenericMaxSkew of now, so a captured request cannot be
// replayed later. Failures wrap ErrBadSignature.
func VerifyGeneric(secret []byte, header string, body []byte, now time.Time) error {
	var ts int64
	var sigs [][]byte
	for _, part := range strings.Split(header, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch k {
		case "t":
			ts, _ = strconv.ParseInt(v, 10, 64)
		case "v1":
			if b, err := hex.DecodeString(v); err == nil {
				sigs = append(sigs, b)
			}
		}
	}
	if ts == 0 || len(sigs) == 0 {
		return fmt.Errorf("%w: the %s header must be t=<unix time>,v1=<hex HMAC>", ErrBadSignature, GenericSignatureHeader)
	}
	if d := now.Sub(time.Unix(ts, 0)); d > GenericMaxSkew || d < -GenericMaxSkew {
		return fmt.Errorf("%w: the timestamp is %s from now; replays are refused", ErrBadSignature, d.Round(time.Second))
	}
	want := SignGeneric(secret, ts, body)
	for _, s := range sigs {
		if hmac.Equal(s, want) {
			return nil
		}
	}
	return fmt.Errorf("%w: no v1 signature matches", ErrBadSignature)
}

// SignGeneric returns the HMAC a generic webhook sender puts in v1 for timestamp ts.
func SignGeneric(secret []byte, ts int64, body []byte) []byte {
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(strconv.FormatInt(ts, 10) + "."))
	mac.Write(body)
	return mac.Sum(nil)
}

// GenericEvent is one event of Herald's generic bounce webhook format, for providers and
// gateways that can post JSON: {"events": [{...}, ...]}.
type GenericEvent struct {
	// Type is "bounce" or "complaint".
	Type string `json:"type"`
	// Recipient is the address that bounced or complained.
	Recipient string `json:"recipient"`
	// ReturnPath is the envelope sender Herald sent with, when the provider reports it.
	ReturnPath string `json:"return_path"`
	// MessageID is the Message-ID header of Herald's message, when known.
	MessageID string `json:"message_id"`
	// Status, Code and Diagnostic are the remote server's enhanced status, reply code and words.
	Status     string `json:"status"`
	Code       int    `json:"code"`
	Diagnostic string `json:"diagnostic"`
}

// ParseGeneric reads a generic webhook body into one Report per event, each classified like
// a synchronous SMTP answer (bounces) or as a complaint.
func ParseGeneric(body []byte) ([]*Report, error) {
	var in struct {
		Events []GenericEvent `json:"events"`
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		return nil, fmt.Errorf("the body is not {\"events\": [...]}: %v", err)
	}
	out := make([]*Report, 0, len(in.Events))
	for i, e := range in.Events {
		if e.Recipient == "" {
			return nil, fmt.Errorf("event %d has no recipient", i)
		}
		rep := &Report{OriginalMessageID: strings.Trim(e.MessageID, "<>")}
		if e.ReturnPath != "" {
			rep.To = []string{e.ReturnPath}
		}
		switch e.Type {
		case "bounce":
			reason, hard := ClassifySMTP(e.Code, e.Status, e.Diagnostic)
			rep.Kind = KindDSN
			rep.Results = []Result{{Recipient: e.Recipient, Status: e.Status, ReplyCode: e.Code, Reason: reason, Hard: hard, Diagnostic: e.Diagnostic, Action: "failed"}}
		case "complaint":
			rep.Kind = KindFeedback
			rep.Results = []Result{{Recipient: e.Recipient, Reason: ReasonFeedback, FeedbackType: "abuse"}}
		default:
			return nil, fmt.Errorf("event %d has type %q; use bounce or complaint", i, e.Type)
		}
		out = append(out, rep)
	}
	return out, nil
}
