package web

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/auth"
	"github.com/heraldhq/herald/internal/bounce"
	"github.com/heraldhq/herald/internal/quarantine"
	"github.com/heraldhq/herald/internal/sending"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/store/storetest"
)

const testTopic = "arn:aws:sns:eu-west-1:1:ses-bounces"

// snsSigner signs SNS messages with a self-made certificate, which fakeAWS serves at the
// SigningCertURL.
type snsSigner struct {
	key     *rsa.PrivateKey
	certPEM []byte
}

func newSNSSigner(t *testing.T, now time.Time) *snsSigner {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "sns.amazonaws.com"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	var pemBuf bytes.Buffer
	fmt.Fprintf(&pemBuf, "-----BEGIN CERTIFICATE-----\n%s\n-----END CERTIFICATE-----\n", base64.StdEncoding.EncodeToString(der))
	return &snsSigner{key: key, certPEM: pemBuf.Bytes()}
}

// sign returns m signed with SignatureVersion 2, as SNS builds its string to sign.
func (s *snsSigner) sign(t *testing.T, m bounce.SNSMessage) []byte {
	t.Helper()
	var b strings.Builder
	add := func(k, v string) { b.WriteString(k + "\n" + v + "\n") }
	add("Message", m.Message)
	add("MessageId", m.MessageID)
	if m.Type != "Notification" {
		add("SubscribeURL", m.SubscribeURL)
	}
	add("Timestamp", m.Timestamp)
	if m.Type != "Notification" {
		add("Token", m.Token)
	}
	add("TopicArn", m.TopicArn)
	add("Type", m.Type)
	sum := sha256.Sum256([]byte(b.String()))
	sig, err := rsa.SignPKCS1v15(rand.Reader, s.key, crypto.SHA256, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	m.SignatureVersion, m.Signature = "2", base64.StdEncoding.EncodeToString(sig)
	out, _ := json.Marshal(m)
	return out
}

// fakeAWS answers the HTTPS requests the endpoint makes: the signing certificate and
// subscription confirmations, which it records.
type fakeAWS struct {
	cert []byte
	mu   sync.Mutex
	got  []string
}

func (f *fakeAWS) RoundTrip(r *http.Request) (*http.Response, error) {
	f.mu.Lock()
	f.got = append(f.got, r.URL.String())
	f.mu.Unlock()
	body, status := "not found", http.StatusNotFound
	switch {
	case r.URL.Host == "sns.eu-west-1.amazonaws.com" && strings.HasSuffix(r.URL.Path, ".pem"):
		body, status = string(f.cert), http.StatusOK
	case r.URL.Host == "sns.eu-west-1.amazonaws.com" && r.URL.Query().Get("Action") == "ConfirmSubscription":
		body, status = "<ConfirmSubscriptionResponse/>", http.StatusOK
	}
	return &http.Response{StatusCode: status, Status: http.StatusText(status), Body: io.NopCloser(strings.NewReader(body)), Header: http.Header{}, Request: r}, nil
}

func (f *fakeAWS) requested(s string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, u := range f.got {
		if strings.Contains(u, s) {
			return true
		}
	}
	return false
}

// bounceEnv is a test server whose bounce routes are mounted as routes.go mounts them, over a
// database holding one sent delivery to three recipients.
type bounceEnv struct {
	*testEnv
	rp    *sending.ReturnPath
	aws   *fakeAWS
	sns   *snsSigner
	ids   map[string]int64
	addrs []string
}

func newBounceEnv(t *testing.T, db *store.DB) *bounceEnv {
	t.Helper()
	ctx := context.Background()
	e := &bounceEnv{testEnv: newTestEnv(t, db), ids: map[string]int64{}}
	e.sns = newSNSSigner(t, e.clock.Now())
	e.aws = &fakeAWS{cert: e.sns.certPEM}
	log := slog.New(slog.DiscardHandler)
	var err error
	if e.rp, err = sending.NewReturnPath("bounce.example", []byte("return path secret!")); err != nil {
		t.Fatal(err)
	}
	applier, err := sending.NewBounceApplier(sending.BounceConfig{DB: db, Quarantine: quarantine.NewService(db, e.clock, log),
		ReturnPath: e.rp, Clock: e.clock, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	hooks, err := NewBounceWebhooks(BounceWebhooksOptions{DB: db, Receiver: applier, SNSTopicARNs: []string{testTopic},
		Client: &http.Client{Transport: e.aws}, Clock: e.clock, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(Deps{DB: db, Auth: e.auth, Clock: e.clock, Log: log})
	mux := http.NewServeMux()
	for _, rt := range []route{
		{"POST", "/api/v1/webhooks/bounces/{provider}", public, hooks.handleProvider},
		{"GET", "/api/v1/webhooks/bounces/generic/secret", needs(auth.Administration), hooks.handleGenericSecret},
	} {
		mux.Handle(rt.method+" "+rt.pattern, s.wrap(rt))
	}
	e.srv = httptest.NewServer(mux)
	t.Cleanup(e.srv.Close)

	ms := e.clock.Now().UnixMilli()
	err = db.InTx(ctx, func(tx *sql.Tx) error {
		var did int64
		if err := tx.QueryRowContext(ctx, `INSERT INTO deliveries (name, channel, content, state, validity_seconds, created_at, updated_at)
			VALUES ('d', 'email', '{}', 'finished', 302400, $1, $1) RETURNING id`, ms).Scan(&did); err != nil {
			return err
		}
		for i := range 3 {
			addr := fmt.Sprintf("user%d@example.org", i)
			var pid, id int64
			if err := tx.QueryRowContext(ctx, `INSERT INTO profiles (email, email_key, email_domain, attributes, created_at, updated_at)
				VALUES ($1, $1, 'example.org', '{}', $2, $2) RETURNING id`, addr, ms).Scan(&pid); err != nil {
				return err
			}
			if err := tx.QueryRowContext(ctx, `INSERT INTO sending_log (delivery_id, profile_id, address, status, attempts, smtp_code, sent_at)
				VALUES ($1, $2, $3, 'sent', 1, 250, $4) RETURNING id`, did, pid, addr, ms).Scan(&id); err != nil {
				return err
			}
			e.ids[addr] = id
			e.addrs = append(e.addrs, addr)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// post sends body to a bounce route with the given headers.
func (e *bounceEnv) post(provider string, body []byte, header map[string]string) (int, map[string]any) {
	e.t.Helper()
	req, _ := http.NewRequest("POST", e.srv.URL+"/api/v1/webhooks/bounces/"+provider, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	data, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(data, &out)
	return resp.StatusCode, out
}

// state is what a refused request must not change.
func (e *bounceEnv) state() string {
	e.t.Helper()
	var b strings.Builder
	for _, q := range []string{`SELECT id, status, COALESCE(failure_type, '') FROM sending_log ORDER BY id`,
		`SELECT address, status, '' FROM quarantine ORDER BY address`} {
		rows, err := e.db.Read.Query(q)
		if err != nil {
			e.t.Fatal(err)
		}
		for rows.Next() {
			var a, s, f string
			if err := rows.Scan(&a, &s, &f); err != nil {
				e.t.Fatal(err)
			}
			fmt.Fprintf(&b, "%s %s %s; ", a, s, f)
		}
		rows.Close()
	}
	return b.String()
}

func (e *bounceEnv) status(addr string) (string, string) {
	e.t.Helper()
	var st, ft sql.NullString
	if err := e.db.Read.QueryRow(`SELECT status, failure_type FROM sending_log WHERE id = $1`, e.ids[addr]).Scan(&st, &ft); err != nil {
		e.t.Fatal(err)
	}
	return st.String, ft.String
}

func sesNotification(source, recipient string) string {
	return fmt.Sprintf(`{"notificationType":"Bounce","bounce":{"bounceType":"Permanent","bouncedRecipients":[{"emailAddress":%q,
"action":"failed","status":"5.1.1","diagnosticCode":"smtp; 550 5.1.1 user unknown"}]},"mail":{"messageId":"0100abc","source":%q,
"commonHeaders":{"messageId":"<x@elsewhere.example>"}}}`, recipient, source)
}

func TestSESBounceWebhook(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		e := newBounceEnv(t, db)
		now := e.clock.Now()
		addr := e.addrs[0]
		msg := bounce.SNSMessage{Type: "Notification", MessageID: "6a1b", TopicArn: testTopic,
			Message: sesNotification(e.rp.Bounce(e.ids[addr]), addr), Timestamp: now.Add(-time.Minute).Format(time.RFC3339),
			SigningCertURL: "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc.pem"}

		// Forgeries first: nothing is written.
		clean := e.state()
		var forged bounce.SNSMessage
		_ = json.Unmarshal(e.sns.sign(t, msg), &forged)
		forged.Message = sesNotification(e.rp.Bounce(e.ids[e.addrs[1]]), e.addrs[1])
		forgedBody, _ := json.Marshal(forged)
		otherTopic := msg
		otherTopic.TopicArn = "arn:aws:sns:eu-west-1:666:attacker"
		for name, body := range map[string][]byte{
			"altered after signing": forgedBody,
			"another topic":         e.sns.sign(t, otherTopic),
			"not SNS at all":        []byte(`{"hello": "world"}`),
		} {
			status, resp := e.post("ses", body, nil)
			if code, _ := errorOf(resp); status != http.StatusForbidden || code != "invalid_signature" {
				t.Errorf("%s: %d %v, want 403 invalid_signature", name, status, resp)
			}
		}
		if got := e.state(); got != clean {
			t.Fatalf("refused notifications wrote:\n%s\n%s", clean, got)
		}

		status, resp := e.post("ses", e.sns.sign(t, msg), nil)
		if status != http.StatusOK || resp["status"] != "accepted" {
			t.Fatalf("signed notification: %d %v", status, resp)
		}
		if st, ft := e.status(addr); st != "failed" || ft != "hard" {
			t.Errorf("row after the SES bounce: %s %s, want failed hard", st, ft)
		}
		var q string
		if err := db.Read.QueryRow(`SELECT status FROM quarantine WHERE address = $1`, addr).Scan(&q); err != nil || q != "quarantine" {
			t.Errorf("address after the SES bounce: %q %v, want quarantine", q, err)
		}

		// Subscription confirmations are followed only when signed and only to an SNS host.
		sub := bounce.SNSMessage{Type: "SubscriptionConfirmation", MessageID: "7c2d", TopicArn: testTopic, Token: "tok",
			Message: "You have chosen to subscribe", Timestamp: now.Format(time.RFC3339),
			SubscribeURL:   "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn=" + testTopic + "&Token=tok",
			SigningCertURL: msg.SigningCertURL}
		evil := sub
		evil.SubscribeURL = "https://attacker.example/?Action=ConfirmSubscription"
		if status, resp := e.post("ses", e.sns.sign(t, evil), nil); status != http.StatusForbidden || e.aws.requested("attacker.example") {
			t.Errorf("confirmation elsewhere: %d %v, fetched %v", status, resp, e.aws.got)
		}
		unsigned := sub
		unsigned.Signature, unsigned.SignatureVersion = "", "2"
		unsignedBody, _ := json.Marshal(unsigned)
		if status, _ := e.post("ses", unsignedBody, nil); status != http.StatusForbidden || e.aws.requested("ConfirmSubscription") {
			t.Errorf("unsigned confirmation: %d, fetched %v", status, e.aws.got)
		}
		if status, resp := e.post("ses", e.sns.sign(t, sub), nil); status != http.StatusOK || resp["status"] != "confirmed" || !e.aws.requested("ConfirmSubscription") {
			t.Errorf("signed confirmation: %d %v, fetched %v", status, resp, e.aws.got)
		}

		if status, resp := e.post("mailgun", []byte(`{}`), nil); status != http.StatusNotFound {
			t.Errorf("unknown provider: %d %v", status, resp)
		}
		if status, _ := e.post("ses", bytes.Repeat([]byte("x"), 2<<20), nil); status != http.StatusRequestEntityTooLarge {
			t.Errorf("oversized body: %d", status)
		}
	})
}

func TestGenericBounceWebhook(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		e := newBounceEnv(t, db)
		status, resp := e.do("GET", "/api/v1/webhooks/bounces/generic/secret", e.adminToken, nil)
		secret, _ := resp["secret"].(string)
		if status != http.StatusOK || len(secret) != 64 {
			t.Fatalf("secret: %d %v", status, resp)
		}
		if status, _ := e.do("GET", "/api/v1/webhooks/bounces/generic/secret", "", nil); status != http.StatusUnauthorized {
			t.Errorf("secret without credentials: %d, want 401", status)
		}
		// The provider knows only the recipient: matched to the row last sent to it; a
		// complaint for another recipient in the same post.
		body := []byte(fmt.Sprintf(`{"events": [{"type": "bounce", "recipient": %q, "code": 550, "status": "5.1.1", "diagnostic": "no such user"},
			{"type": "complaint", "recipient": %q}]}`, e.addrs[1], e.addrs[2]))
		sign := func(key string, at time.Time) map[string]string {
			mac := bounce.SignGeneric([]byte(key), at.Unix(), body)
			return map[string]string{bounce.GenericSignatureHeader: fmt.Sprintf("t=%d,v1=%s", at.Unix(), hex.EncodeToString(mac))}
		}
		now := e.clock.Now()
		clean := e.state()
		for name, c := range map[string]struct {
			header map[string]string
			status int
		}{
			"no signature":     {nil, http.StatusUnauthorized},
			"wrong secret":     {sign(strings.Repeat("0", 64), now), http.StatusForbidden},
			"replayed an hour": {sign(secret, now.Add(-time.Hour)), http.StatusForbidden},
		} {
			if status, resp := e.post("generic", body, c.header); status != c.status {
				t.Errorf("%s: %d %v, want %d", name, status, resp, c.status)
			}
		}
		if got := e.state(); got != clean {
			t.Fatalf("refused posts wrote:\n%s\n%s", clean, got)
		}
		status, resp = e.post("generic", body, sign(secret, now))
		if status != http.StatusOK || resp["events"] != float64(2) {
			t.Fatalf("signed post: %d %v", status, resp)
		}
		if st, ft := e.status(e.addrs[1]); st != "failed" || ft != "hard" {
			t.Errorf("bounced row: %s %s, want failed hard", st, ft)
		}
		if st, _ := e.status(e.addrs[2]); st != "sent" {
			t.Errorf("complained row: %s, want still sent", st)
		}
		var q string
		if err := db.Read.QueryRow(`SELECT status FROM quarantine WHERE address = $1`, e.addrs[2]).Scan(&q); err != nil || q != "denylist" {
			t.Errorf("complained address: %q %v, want denylist", q, err)
		}
		if st, _ := e.status(e.addrs[0]); st != "sent" {
			t.Errorf("an untouched row changed: %s", st)
		}
	})
}
