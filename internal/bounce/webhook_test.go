package bounce

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1" //nolint:gosec // SNS version 1 signatures
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"testing"
	"time"
)

const sesBounce = `{"notificationType":"Bounce","bounce":{"bounceType":"Permanent","bouncedRecipients":[{"emailAddress":"gone@example.net","action":"failed","status":"5.1.1","diagnosticCode":"smtp; 550 5.1.1 user unknown"}]},
"mail":{"messageId":"0100abc","source":"b+77.sig@bounces.example.com","commonHeaders":{"messageId":"<m77@herald.example>"}}}`

type snsFixture struct {
	key     *rsa.PrivateKey
	certPEM []byte
	now     time.Time
}

func newSNSFixture(t *testing.T) *snsFixture {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	tpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "sns.amazonaws.com"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return &snsFixture{key: key, certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), now: now}
}

func (f *snsFixture) message(t *testing.T, version string, mutate func(*SNSMessage)) []byte {
	m := SNSMessage{Type: "Notification", MessageID: "6a1b", TopicArn: "arn:aws:sns:eu-west-1:1:ses-bounces",
		Message: sesBounce, Timestamp: f.now.Add(-time.Minute).Format(time.RFC3339), SignatureVersion: version,
		SigningCertURL: "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc.pem"}
	text := snsStringToSign(&m)
	var sig []byte
	var err error
	if version == "1" {
		sum := sha1.Sum([]byte(text)) //nolint:gosec
		sig, err = rsa.SignPKCS1v15(rand.Reader, f.key, crypto.SHA1, sum[:])
	} else {
		sum := sha256.Sum256([]byte(text))
		sig, err = rsa.SignPKCS1v15(rand.Reader, f.key, crypto.SHA256, sum[:])
	}
	if err != nil {
		t.Fatal(err)
	}
	m.Signature = base64.StdEncoding.EncodeToString(sig)
	if mutate != nil {
		mutate(&m) // after signing: a forgery or a replay
	}
	b, _ := json.Marshal(m)
	return b
}

func TestSNSVerify(t *testing.T) {
	f := newSNSFixture(t)
	fetched := 0
	v := &SNSVerifier{
		Now: func() time.Time { return f.now },
		FetchCert: func(_ context.Context, u string) ([]byte, error) {
			fetched++
			if !strings.HasPrefix(u, "https://sns.") {
				return nil, fmt.Errorf("refusing to fetch %s", u)
			}
			return f.certPEM, nil
		},
		TopicARNs: []string{"arn:aws:sns:eu-west-1:1:ses-bounces"},
	}
	for _, version := range []string{"1", "2"} {
		m, err := v.Verify(context.Background(), f.message(t, version, nil))
		if err != nil {
			t.Fatalf("version %s: %v", version, err)
		}
		rep, err := ParseSESNotification(m.Message)
		if err != nil || len(rep.Results) != 1 || rep.Results[0].Reason != ReasonUserUnknown || rep.To[0] != "b+77.sig@bounces.example.com" || rep.OriginalMessageID != "m77@herald.example" {
			t.Fatalf("SES report = %+v, %v", rep, err)
		}
	}
	if fetched != 1 {
		t.Fatalf("certificate fetched %d times, want 1 (cached)", fetched)
	}
	refused := map[string]func(*SNSMessage){
		"altered message":        func(m *SNSMessage) { m.Message = strings.Replace(m.Message, "gone@", "kept@", 1) },
		"altered type":           func(m *SNSMessage) { m.Type = "SubscriptionConfirmation" },
		"certificate elsewhere":  func(m *SNSMessage) { m.SigningCertURL = "https://sns.eu-west-1.amazonaws.com.evil.test/x.pem" },
		"certificate over http":  func(m *SNSMessage) { m.SigningCertURL = "http://sns.eu-west-1.amazonaws.com/x.pem" },
		"replayed two hours on":  func(m *SNSMessage) { m.Timestamp = f.now.Add(-2 * time.Hour).Format(time.RFC3339) },
		"another topic":          func(m *SNSMessage) { m.TopicArn = "arn:aws:sns:eu-west-1:1:other" },
		"signature of other key": func(m *SNSMessage) { m.Signature = base64.StdEncoding.EncodeToString(make([]byte, 256)) },
		"unknown version":        func(m *SNSMessage) { m.SignatureVersion = "3" },
	}
	for name, mutate := range refused {
		if _, err := v.Verify(context.Background(), f.message(t, "2", mutate)); !errors.Is(err, ErrBadSignature) {
			t.Errorf("%s: %v, want ErrBadSignature", name, err)
		}
	}
	if _, err := v.Verify(context.Background(), []byte("not json")); !errors.Is(err, ErrBadSignature) {
		t.Errorf("garbage: %v", err)
	}
}

func TestGenericWebhook(t *testing.T) {
	secret := []byte("a shared secret of enough length")
	now := time.Unix(1_780_000_000, 0)
	body := []byte(`{"events": [{"type": "bounce", "recipient": "x@example.org", "return_path": "b+9.s@bounces.example.com", "code": 550, "status": "5.1.1", "diagnostic": "no such user"},
		{"type": "complaint", "recipient": "y@example.org", "message_id": "<m1@herald.example>"}]}`)
	header := fmt.Sprintf("t=%d,v1=%s", now.Unix(), hex.EncodeToString(SignGeneric(secret, now.Unix(), body)))
	if err := VerifyGeneric(secret, header, body, now.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	reps, err := ParseGeneric(body)
	if err != nil || len(reps) != 2 {
		t.Fatalf("parse: %v %v", reps, err)
	}
	if r := reps[0].Results[0]; r.Reason != ReasonUserUnknown || r.Hard == nil || !*r.Hard || reps[0].To[0] != "b+9.s@bounces.example.com" {
		t.Fatalf("bounce = %+v", reps[0])
	}
	if r := reps[1].Results[0]; r.Reason != ReasonFeedback || r.Hard != nil || reps[1].OriginalMessageID != "m1@herald.example" {
		t.Fatalf("complaint = %+v", reps[1])
	}
	bad := map[string]error{
		"tampered body":   VerifyGeneric(secret, header, append(body, ' '), now),
		"replayed later":  VerifyGeneric(secret, header, body, now.Add(10*time.Minute)),
		"wrong secret":    VerifyGeneric([]byte("another secret"), header, body, now),
		"no signature":    VerifyGeneric(secret, "", body, now),
		"malformed value": VerifyGeneric(secret, "t=x,v1=zz", body, now),
	}
	for name, err := range bad {
		if !errors.Is(err, ErrBadSignature) {
			t.Errorf("%s: %v, want ErrBadSignature", name, err)
		}
	}
	if _, err := ParseGeneric([]byte(`{"events": [{"type": "delivery", "recipient": "a@b.co"}]}`)); err == nil {
		t.Error("unknown event type accepted")
	}
}
