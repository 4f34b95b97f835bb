package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/channel/email/smtptest"
	"github.com/heraldhq/herald/internal/profile"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/store/storetest"
)

// crashPost sends a JSON POST to the API and decodes the answer.
func crashPost(t *testing.T, url, token string, body any) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest("POST", url, rd)
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

// TestSIGKILLWhileSending is DESIGN.md §4's crash promise, on the binary and on both engines:
// a `herald serve` sending 20,000 messages to an in-process SMTP server is killed with SIGKILL
// 3 to 5 times at random points while messages flow, and restarted each time on the same
// database. In the end every recipient has received the message; a recipient has one copy more
// for each kill its row was in flight at (in a batch in flight, SQLite's record of them; in
// status sending on PostgreSQL), and no more; the extra copies are no more than the messages in
// flight at the kills; and exactly the rows in flight at a kill say ambiguous. A row can be in
// flight at two kills: a restart sends the rows it took back first, and the next kill may come
// before they are written back (with three workers, 1,500 rows are in flight).
//
// Each restart is the same node (serve's default node id is the host name and the listen
// address, stable across restarts): on start it takes back at once the rows its dead run
// held, with no wait for their lease.
func TestSIGKILLWhileSending(t *testing.T) {
	if testing.Short() {
		t.Skip("kills and restarts herald serve several times; skipped under -short")
	}
	for _, eng := range storetest.Engines() {
		t.Run(string(eng), func(t *testing.T) { sigkillWhileSending(t, eng) })
	}
}

// inFlightAtKill reads, after a kill, the rows in flight (a batch's on SQLite, in status sending
// on PostgreSQL, and any an older version left in status sending) and what the node still
// leases, which its restart takes back at once: batches on SQLite, rows on PostgreSQL.
func inFlightAtKill(t *testing.T, db *store.DB) (ids []int64, leased string) {
	t.Helper()
	inFlight, lease := `SELECT id FROM sending_log WHERE status = 'sending'`,
		`SELECT COUNT(*) FROM sending_log WHERE status = 'sending' AND lease_owner = 'crash-node' AND lease_until > $1`
	if db.Engine == store.SQLite {
		inFlight = `SELECT j.value FROM in_flight f, json_each(f.log_ids) AS j UNION ` + inFlight
		lease = `SELECT COUNT(*) FROM in_flight WHERE lease_owner = 'crash-node' AND lease_until > $1`
	}
	rows, err := db.Read.Query(`SELECT * FROM (` + inFlight + `) AS f ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var rid int64
		if err := rows.Scan(&rid); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, rid)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := db.Read.QueryRow(lease, time.Now().UnixMilli()).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if db.Engine == store.SQLite {
		return ids, fmt.Sprintf("in %d batches", n)
	}
	return ids, fmt.Sprintf("%d of them", n)
}

func sigkillWhileSending(t *testing.T, eng store.Engine) {
	const n = 20_000
	dsn := storetest.DSN(t, eng)
	mail := smtptest.Start(t, smtptest.Options{})
	tokens := addUsers(t, dsn, [2]string{"maker", "Prepare deliveries"}, [2]string{"starter", "Start deliveries"})
	maker := tokens["maker"]
	var buf bytes.Buffer
	_, _ = io.Copy(&buf, profile.GenerateCSV(n, 3))
	if out := importProfiles(t, dsn, buf.Bytes()); !strings.Contains(out, fmt.Sprintf("%d created", n)) {
		t.Fatalf("import: %s", out)
	}
	env := func(int) []string {
		return []string{"HERALD_SMTP_RELAYS=smtp://" + mail.Addr() + "?starttls=off", "HERALD_NODE_ID=crash-node"}
	}

	s := startServer(t, dsn, env(0)...)
	api := func() string { return "http://" + s.addr + "/api/v1" }
	id, d := launch(t, api(), maker, tokens["starter"], "Crash", map[string]any{"from_name": "Shop", "from_address": "news@shop.example",
		"subject": "Hello {{.attributes.first_name}}",
		"html":    `<p>Hello {{.attributes.first_name}} of {{.attributes.city}}</p><a href="https://shop.example/">Shop</a> <a href="{{.unsubscribe_url}}">Unsubscribe</a>`})
	if d["state"] != "sending" {
		t.Fatalf("confirm: %v", d)
	}

	db, err := store.Open(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	inFlight := map[int64]int{} // rows in flight at a kill: at how many kills
	kills := 3 + rand.IntN(3)
	for k := range kills {
		// A random point in the k-th slice of the send, then a random few milliseconds more.
		slice := n / (kills + 1)
		target := int64(slice*(k+1) - slice/4 + rand.IntN(slice/2))
		deadline := time.Now().Add(60 * time.Second)
		for mail.Count() < target {
			if time.Now().After(deadline) {
				t.Fatalf("kill %d: the server has %d messages after 60 s, waiting for %d", k+1, mail.Count(), target)
			}
			time.Sleep(time.Millisecond)
		}
		time.Sleep(time.Duration(rand.IntN(30)) * time.Millisecond)
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
		received := mail.Count()

		ids, leased := inFlightAtKill(t, db)
		// On PostgreSQL a transaction whose COMMIT the killed process had already sent still
		// commits after the kill (an in-flight mark, a write-back): read until two reads 200 ms
		// apart agree, so that the rows counted are those the restart will find.
		for range 25 {
			time.Sleep(200 * time.Millisecond)
			again, l := inFlightAtKill(t, db)
			if slices.Equal(again, ids) {
				break
			}
			ids, leased = again, l
		}
		for _, rid := range ids {
			inFlight[rid]++
		}
		t.Logf("kill %d: SIGKILL at %d messages received; %d rows in flight, %s still leased (taken back at the restart)",
			k+1, received, len(ids), leased)
		s = startServer(t, dsn, env(k+1)...)
	}

	deadline := time.Now().Add(60 * time.Second)
	for {
		code, d := getJSON(t, api()+"/deliveries/"+id, maker)
		if code == 200 && d["state"] == "finished" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("delivery not finished 60 s after the last restart: %d %v (server has %d messages)", code, d["state"], mail.Count())
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.stop(t)

	got := map[string]int{}
	for _, m := range mail.Messages() {
		for _, to := range m.To {
			got[to]++
		}
	}
	rows, err := db.Read.Query(`SELECT id, address, status, ambiguous FROM sending_log WHERE delivery_id = $1`, id)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var total, dups, ambiguous, ambiguousOnce int
	for rows.Next() {
		var rid int64
		var addr, status string
		var amb bool
		if err := rows.Scan(&rid, &addr, &status, &amb); err != nil {
			t.Fatal(err)
		}
		total++
		c := got[addr]
		switch {
		case status != "sent":
			t.Errorf("row %d (%s) is %s, want sent", rid, addr, status)
		case c == 0:
			t.Errorf("%s never received its message", addr)
		case c > 1+inFlight[rid]:
			t.Errorf("%s received %d copies; its row was in flight at %d kills, so at most %d are allowed", addr, c, inFlight[rid], 1+inFlight[rid])
		}
		if c > 1 {
			dups += c - 1
		}
		if amb != (inFlight[rid] > 0) {
			t.Errorf("row %d (%s): ambiguous = %v, in flight at a kill = %v", rid, addr, amb, inFlight[rid])
		}
		if amb {
			ambiguous++
			if c == 1 {
				ambiguousOnce++
			}
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if total != n {
		t.Fatalf("the sending log has %d rows, want %d", total, n)
	}
	flights := 0 // messages in flight at the kills, a row counted once for each kill
	for _, k := range inFlight {
		flights += k
	}
	if dups > flights {
		t.Errorf("%d copies more than one a recipient, more than the %d messages in flight at the kills", dups, flights)
	}
	t.Logf("%d kills: %d messages received for %d recipients; %d in flight at the kills (%d rows), %d rows ambiguous (%d extra copies, %d ambiguous rows received once)",
		kills, mail.Count(), n, flights, len(inFlight), ambiguous, dups, ambiguousOnce)
}
