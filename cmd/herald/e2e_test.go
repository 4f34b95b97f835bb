package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"mime/quotedprintable"
	"net/http"
	"net/smtp"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/channel/email/smtptest"
	"github.com/heraldhq/herald/internal/profile"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/store/storetest"
)

const e2eBrowser = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"

// TestTrackingBouncesAndKPIsEndToEnd is issue 6's end-to-end test, on the binary and each
// engine: a delivery sent by `herald serve` to an in-process SMTP server (one recipient refused
// at once with 550); opens and a click made through HTTP with the links of the messages as
// received; a DSN for another recipient fed to Herald's bounce listener over SMTP, addressed
// to that message's return path. The KPIs must then equal the DESIGN §6 formulas worked out
// here by hand, before and after Compute stats, and the bounced address be in quarantine.
func TestTrackingBouncesAndKPIsEndToEnd(t *testing.T) {
	for _, eng := range storetest.Engines() {
		t.Run(string(eng), func(t *testing.T) {
			dsn := storetest.DSN(t, eng)
			mail := smtptest.Start(t, smtptest.Options{})
			mail.Script("dan@example.com", smtptest.Always(smtptest.Action{Code: 550, Enhanced: "5.1.1", Text: "no such user"}))
			tokens := addUsers(t, dsn, [2]string{"maker", "Prepare deliveries"}, [2]string{"starter", "Start deliveries"}, [2]string{"boss", "Administration"})
			maker, starter, boss := tokens["maker"], tokens["starter"], tokens["boss"]
			importProfiles(t, dsn, []byte("email,first_name\nann@example.com,Ann\nbob@example.com,Bob\ncyd@example.com,Cyd\ndan@example.com,Dan\neve@example.com,Eve\n"))
			bounceAddr := freeAddr(t)
			s := startServer(t, dsn, "HERALD_SMTP_RELAYS=smtp://"+mail.Addr()+"?starttls=off",
				"HERALD_BOUNCE_ADDR="+bounceAddr, "HERALD_BOUNCE_DOMAIN=bounces.herald.test")
			defer s.stop(t)
			api := "http://" + s.addr + "/api/v1"

			id, _ := launch(t, api, maker, starter, "Sale", map[string]any{"from_name": "Shop", "from_address": "news@shop.example",
				"subject": "Hi {{.attributes.first_name}}",
				"html":    `<html><body><p>Hi {{.attributes.first_name}}</p><a href="https://shop.example/sale">Sale</a> <a href="{{.unsubscribe_url}}">Unsubscribe</a></body></html>`})
			waitFor(t, "the delivery to finish", func() bool {
				_, d := getJSON(t, api+"/deliveries/"+id, maker)
				return d["state"] == "finished"
			})

			// The messages as received: their tracking links and return paths.
			pixel, click, returnPath, unsubscribe := map[string]string{}, map[string]string{}, map[string]string{}, map[string]string{}
			linkRE := regexp.MustCompile(`http://[0-9.:]+/t/([oc])/[A-Za-z0-9_-]+`)
			mailtoRE := regexp.MustCompile(`mailto:(u\+[^>\s]+)`)
			for _, m := range mail.Messages() {
				decoded, err := io.ReadAll(quotedprintable.NewReader(bytes.NewReader(m.Data)))
				if err != nil {
					t.Fatal(err)
				}
				to := m.To[0]
				returnPath[to] = m.From
				if u := mailtoRE.FindStringSubmatch(string(decoded)); u != nil {
					unsubscribe[to] = u[1]
				}
				for _, l := range linkRE.FindAllStringSubmatch(string(decoded), -1) {
					if l[1] == "o" {
						pixel[to] = l[0]
					} else if click[to] == "" {
						click[to] = l[0]
					}
				}
			}
			if len(pixel) != 4 || len(click) != 4 {
				t.Fatalf("tracked messages received: %d pixels, %d clicks; want 4 each (dan was refused)", len(pixel), len(click))
			}
			hit := func(url string, wantStatus int) {
				req, _ := http.NewRequest("GET", url, nil)
				req.Header.Set("User-Agent", e2eBrowser)
				resp, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != wantStatus {
					t.Fatalf("GET %s: %d, want %d", url, resp.StatusCode, wantStatus)
				}
				if wantStatus == http.StatusFound && resp.Header.Get("Location") != "https://shop.example/sale" {
					t.Fatalf("click redirected to %q", resp.Header.Get("Location"))
				}
			}
			hit(pixel["ann@example.com"], 200)
			hit(click["ann@example.com"], http.StatusFound)
			hit(pixel["bob@example.com"], 200)
			hit(pixel["bob@example.com"], 200)              // a second open of the same message counts once
			hit(click["cyd@example.com"], http.StatusFound) // a click without the pixel still counts as an open

			// Eve's server accepted the message, then bounced it.
			dsn5 := "From: MAILER-DAEMON@mx.example.com\r\nTo: " + returnPath["eve@example.com"] + "\r\nSubject: Undelivered Mail Returned to Sender\r\n" +
				"MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"b1\"\r\n\r\n" +
				"--b1\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n" +
				"--b1\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.com\r\n\r\n" +
				"Final-Recipient: rfc822; eve@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n" +
				"Diagnostic-Code: smtp; 550 5.1.1 <eve@example.com>: Recipient address rejected: User unknown\r\n\r\n--b1--\r\n"
			if err := smtp.SendMail(bounceAddr, nil, "", []string{returnPath["eve@example.com"]}, []byte(dsn5)); err != nil {
				t.Fatalf("DSN to the bounce listener: %v", err)
			}

			// Bob unsubscribes with his mail client: a message to the List-Unsubscribe mailto address.
			if unsubscribe["bob@example.com"] == "" {
				t.Fatal("bob's message has no List-Unsubscribe mailto address")
			}
			if err := smtp.SendMail(bounceAddr, nil, "bob@example.com", []string{unsubscribe["bob@example.com"]},
				[]byte("From: bob@example.com\r\nSubject: unsubscribe\r\n\r\nunsubscribe\r\n")); err != nil {
				t.Fatalf("unsubscribe by mail: %v", err)
			}

			// By hand (DESIGN §6): 5 to deliver; sent = 5; delivered = ann, bob, cyd = 3; bounces and
			// errors = dan (refused) + eve (bounced) = 2, both hard; unique opens = ann, bob, cyd (a
			// click counts as an open) = 3; unique clicks = ann, cyd = 2. Rates: delivered and bounces
			// over sent, opens and clicks over delivered. Opt-outs: bob = 1.
			want := map[string]float64{"to_deliver": 5, "sent": 5, "delivered": 3, "bounces_errors": 2, "hard_bounces": 2, "soft_bounces": 0,
				"opens": 3, "clicks": 2, "optouts": 1, "delivered_rate": 60, "bounce_error_rate": 40, "open_rate": 100, "click_rate": round2(200.0 / 3)}
			check := func(when string, k map[string]any) bool {
				for name, v := range want {
					if got, _ := k[name].(float64); got != v {
						if when != "" {
							t.Errorf("%s: kpis.%s = %v, want %v", when, name, k[name], v)
						}
						return false
					}
				}
				return true
			}
			waitFor(t, "the live KPIs to reach the figures worked out by hand", func() bool {
				_, d := getJSON(t, api+"/deliveries/"+id, maker)
				k, _ := d["kpis"].(map[string]any)
				return check("", k)
			})
			code, c := crashPost(t, api+"/deliveries/"+id+"/compute-stats", maker, nil)
			if code != 200 {
				t.Fatalf("compute-stats: %d %v", code, c)
			}
			check("after Compute stats", c["kpis"].(map[string]any))
			if code, p := getJSON(t, api+"/profiles/2", maker); code != 200 || p["email"] != "bob@example.com" || p["opt_out_email"] != true {
				t.Fatalf("bob after unsubscribing by mail: %d %v", code, p)
			}
			if code, q := getJSON(t, api+"/quarantine/email/eve@example.com", boss); code != 200 || fmt.Sprint(q["entry"].(map[string]any)["status"]) != "quarantine" {
				t.Fatalf("eve's quarantine entry: %d %v", code, q)
			}
		})
	}
}

func round2(f float64) float64 { return math.Round(f*100) / 100 }

// waitFor polls cond every 50 ms for up to 30 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestSendingSettingsReachTheEngine: `herald serve` paces a recipient domain capped in
// HERALD_DOMAIN_LIMITS, sends to a domain capped in HERALD_DOMAIN_CONNS one message at a time,
// and retries a soft failure after the first wait of HERALD_RETRY_BACKOFF.
func TestSendingSettingsReachTheEngine(t *testing.T) {
	dsn := storetest.DSN(t, storetest.Engines()[0])
	mail := smtptest.Start(t, smtptest.Options{})
	mail.Script("dan@busy.example", smtptest.Always(smtptest.Action{Code: 451, Enhanced: "4.3.0", Text: "busy"}))
	narrow := []string{"eve@narrow.example", "fay@narrow.example", "gus@narrow.example", "hal@narrow.example"}
	for _, to := range narrow {
		// Slow enough that, over the 20 connections of the relay, the four would be in progress together.
		mail.Script(to, smtptest.Always(smtptest.Action{Stage: smtptest.AtData, Delay: 150 * time.Millisecond}))
	}
	tokens := addUsers(t, dsn, [2]string{"maker", "Prepare deliveries"}, [2]string{"starter", "Start deliveries"})
	importProfiles(t, dsn, []byte("email\nann@slow.example\nbob@slow.example\ncyd@slow.example\ndan@busy.example\n"+
		strings.Join(narrow, "\n")+"\n"))
	s := startServer(t, dsn, "HERALD_SMTP_RELAYS=smtp://"+mail.Addr()+"?starttls=off",
		"HERALD_DOMAIN_LIMITS=slow.example=2", "HERALD_DOMAIN_CONNS=narrow.example=1", "HERALD_RETRY_BACKOFF=7m,1h")
	defer s.stop(t)
	launch(t, "http://"+s.addr+"/api/v1", tokens["maker"], tokens["starter"], "Paced", map[string]any{"from_name": "Shop",
		"from_address": "news@shop.example", "subject": "Hi", "html": `<html><body><p>Hi</p><a href="{{.unsubscribe_url}}">Unsubscribe</a></body></html>`})
	// Two a second with a burst of one: the third reaches the server a second after the first.
	var first time.Time
	deadline := time.Now().Add(30 * time.Second)
	for countTo(mail, "slow.example") < 3 {
		if first.IsZero() && countTo(mail, "slow.example") > 0 {
			first = time.Now()
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of the three slow.example messages arrived", countTo(mail, "slow.example"))
		}
		time.Sleep(5 * time.Millisecond)
	}
	if first.IsZero() {
		first = time.Now()
	}
	if took := time.Since(first); took < 800*time.Millisecond {
		t.Fatalf("three messages to slow.example within %v: the cap of 2 a second was not applied", took)
	}
	waitFor(t, "the narrow.example messages", func() bool { return countTo(mail, "narrow.example") == len(narrow) })
	if n := mail.MaxInProgress("narrow.example"); n != 1 {
		t.Fatalf("%d messages to narrow.example were in progress at once, want the cap of 1", n)
	}
	db, err := store.Open(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var attempts int
	var next int64
	waitFor(t, "dan's soft failure", func() bool {
		err := db.Read.QueryRow(`SELECT l.attempts, coalesce(l.next_attempt_at, 0) FROM sending_log l
			JOIN profiles p ON p.id = l.profile_id WHERE p.email = 'dan@busy.example'`).Scan(&attempts, &next)
		return err == nil && attempts == 1
	})
	if wait := time.Until(time.UnixMilli(next)); wait < 6*time.Minute+50*time.Second || wait > 7*time.Minute {
		t.Fatalf("dan's retry is due in %v, want the 7m of HERALD_RETRY_BACKOFF", wait)
	}
	// /metrics has the engine's and the transport's figures.
	resp, err := http.Get("http://" + s.addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, line := range []string{
		`herald_sending_messages_total{outcome="sent"} 7`,
		`herald_sending_messages_total{outcome="soft_fail"} 1`,
		`herald_sending_live_nodes 1`,
		`herald_smtp_relay_up{relay="smtp://` + mail.Addr() + `"} 1`,
		`herald_smtp_limits_share 1`,
	} {
		if !strings.Contains(string(body), "\n"+line+"\n") {
			t.Errorf("/metrics lacks %q", line)
		}
	}
}

// countTo counts the messages s accepted for recipients at domain.
func countTo(s *smtptest.Server, domain string) int {
	n := 0
	for _, m := range s.Messages() {
		if strings.HasSuffix(m.To[0], "@"+domain) {
			n++
		}
	}
	return n
}

// TestTwoServersShareADeliveryOnPostgres: two `herald serve` processes on one PostgreSQL
// database, as two nodes (each its own default node id, from its listen address), send one
// delivery confirmed on one of them: both nodes claim rows, every recipient receives exactly one
// message, the delivery finishes, and both are counted among the live nodes until they stop.
func TestTwoServersShareADeliveryOnPostgres(t *testing.T) {
	const n = 20_000 // a few seconds of sending: the second node finds the delivery within its 1 s poll
	dsn := storetest.DSN(t, store.Postgres)
	mail := smtptest.Start(t, smtptest.Options{})
	tokens := addUsers(t, dsn, [2]string{"maker", "Prepare deliveries"}, [2]string{"starter", "Start deliveries"})
	var buf bytes.Buffer
	_, _ = io.Copy(&buf, profile.GenerateCSV(n, 5))
	if out := importProfiles(t, dsn, buf.Bytes()); !strings.Contains(out, fmt.Sprintf("%d created", n)) {
		t.Fatalf("import: %s", out)
	}
	db, err := store.Open(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	relay := "HERALD_SMTP_RELAYS=smtp://" + mail.Addr() + "?starttls=off"
	a, b := startServer(t, dsn, relay), startServer(t, dsn, relay)
	api := "http://" + a.addr + "/api/v1"
	id, d := launch(t, api, tokens["maker"], tokens["starter"], "Two nodes", map[string]any{"from_name": "Shop",
		"from_address": "news@shop.example", "subject": "Hi {{.attributes.first_name}}",
		"html": `<p>Hi {{.attributes.first_name}}</p><a href="{{.unsubscribe_url}}">Unsubscribe</a>`})
	if d["state"] != "sending" {
		t.Fatalf("confirm: %v", d)
	}
	// The nodes holding claims, seen while the delivery is sent (a write-back clears them).
	owners := map[string]bool{}
	waitFor(t, "the delivery to finish", func() bool {
		rows, err := db.Read.Query(`SELECT DISTINCT lease_owner FROM sending_log WHERE lease_owner IS NOT NULL`)
		if err == nil {
			for rows.Next() {
				var o string
				if rows.Scan(&o) == nil {
					owners[o] = true
				}
			}
			rows.Close()
		}
		code, d := getJSON(t, api+"/deliveries/"+id, tokens["maker"])
		return code == 200 && d["state"] == "finished"
	})
	// Both nodes count each other (each sends with half of the installation's limits), and a
	// node that stops leaves the count at once.
	nodes := func() (n int) {
		if err := db.Read.QueryRow(`SELECT count(*) FROM nodes`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := nodes(); n != 2 {
		t.Fatalf("%d nodes registered, want 2", n)
	}
	a.stop(t)
	if n := nodes(); n != 1 {
		t.Fatalf("%d nodes registered after one stopped, want 1", n)
	}
	b.stop(t)
	if len(owners) != 2 {
		t.Fatalf("nodes seen claiming rows: %v; want both", owners)
	}
	got := map[string]int{}
	for _, m := range mail.Messages() {
		for _, to := range m.To {
			got[to]++
		}
	}
	twice := 0
	for _, c := range got {
		if c != 1 {
			twice++
		}
	}
	if len(got) != n || twice != 0 {
		t.Fatalf("%d recipients reached, %d more than once; want %d, 0", len(got), twice, n)
	}
}

// TestTwoServersShareTheLimitsOnPostgres: two `herald serve` nodes on one PostgreSQL share the
// installation's limits while both send, and each takes them whole again once the other is idle:
// with 2,000 messages to a domain capped at 200 a second (four batches, so both nodes hold some),
// both nodes' /metrics say a share of one half during the send, and one again after it.
func TestTwoServersShareTheLimitsOnPostgres(t *testing.T) {
	const n = 2000
	dsn := storetest.DSN(t, store.Postgres)
	mail := smtptest.Start(t, smtptest.Options{})
	tokens := addUsers(t, dsn, [2]string{"maker", "Prepare deliveries"}, [2]string{"starter", "Start deliveries"})
	csv := []byte("email\n")
	for i := range n {
		csv = fmt.Appendf(csv, "user%d@capped.example\n", i)
	}
	importProfiles(t, dsn, csv)
	env := []string{"HERALD_SMTP_RELAYS=smtp://" + mail.Addr() + "?starttls=off", "HERALD_DOMAIN_LIMITS=capped.example=200"}
	a, b := startServer(t, dsn, env...), startServer(t, dsn, env...)
	defer a.stop(t)
	defer b.stop(t)
	share := func(s *server) string {
		resp, err := http.Get("http://" + s.addr + "/metrics")
		if err != nil {
			return ""
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		_, after, _ := strings.Cut(string(body), "\nherald_smtp_limits_share ")
		v, _, _ := strings.Cut(after, "\n")
		return v
	}
	launch(t, "http://"+a.addr+"/api/v1", tokens["maker"], tokens["starter"], "Shared limits", map[string]any{"from_name": "Shop",
		"from_address": "news@shop.example", "subject": "Hi", "html": `<p>Hi</p><a href="{{.unsubscribe_url}}">Unsubscribe</a>`})
	seen := map[*server]bool{}
	waitFor(t, "every message, with both nodes at half of the limits meanwhile", func() bool {
		for _, s := range []*server{a, b} {
			if share(s) == "0.5" {
				seen[s] = true
			}
		}
		return countTo(mail, "capped.example") == n
	})
	if !seen[a] || !seen[b] {
		t.Fatalf("nodes seen sending at half of the limits: a %v, b %v; want both", seen[a], seen[b])
	}
	for _, s := range []*server{a, b} {
		waitFor(t, "each node to take the whole limits once the other is idle", func() bool { return share(s) == "1" })
	}
}
