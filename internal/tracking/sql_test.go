package tracking_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/audit"
	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/content"
	"github.com/heraldhq/herald/internal/profile"
	"github.com/heraldhq/herald/internal/stats"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/store/storetest"
	"github.com/heraldhq/herald/internal/tracking"
	"github.com/heraldhq/herald/internal/webhook"
)

var t0 = time.Date(2026, 3, 2, 10, 30, 0, 0, time.UTC)

const browser = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Firefox/128.0"

// fixture is a delivery with two recipients, both sent an hour before t0.
type fixture struct {
	db                   *store.DB
	delivery             int64
	profiles, rows       [2]int64
	clk                  *clock.Fake
	signer               *tracking.Signer
	links                *tracking.Links
	rec                  *tracking.Recorder
	sink                 *tracking.SQLSink
	srv                  *httptest.Server
	stats                *stats.Service
	fallback, publicBase string
}

func exec(t testing.TB, db *store.DB, q string, args ...any) {
	t.Helper()
	if _, err := db.Write.Exec(q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

func insertID(t testing.TB, db *store.DB, q string, args ...any) int64 {
	t.Helper()
	var id int64
	if err := db.Write.QueryRow(q+" RETURNING id", args...).Scan(&id); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return id
}

func newFixture(t *testing.T, db *store.DB) *fixture {
	t.Helper()
	f := &fixture{db: db, clk: clock.NewFake(t0), fallback: "https://herald.example/expired"}
	c := content.Content{FromName: "Shop", FromAddress: "news@shop.example", Subject: "Hello {{.attributes.name}}",
		HTML: `<p>Hi {{.attributes.name}}</p><a href="https://shop.example/a">A</a>
<a href="https://shop.example/p/{{.attributes.sku}}">P</a> <a href="{{.unsubscribe_url}}">Unsubscribe</a>`}
	raw, _ := json.Marshal(c)
	ms := clock.Millis(t0)
	f.delivery = insertID(t, db, `INSERT INTO deliveries (name, channel, content, state, validity_seconds, contact_at,
		to_deliver, targeted, created_at, updated_at) VALUES ('d', 'email', $1, 'sending', 302400, $2, 2, 2, $2, $2)`,
		string(raw), ms-3_600_000)
	for i := range 2 {
		f.profiles[i] = insertID(t, db, `INSERT INTO profiles (email, email_key, attributes, created_at, updated_at)
			VALUES ($1, $1, $2, $3, $3)`, []string{"ann@example.com", "bob@example.com"}[i],
			[]string{`{"name":"Ann","sku":"42"}`, `{"name":"Bob","sku":"7"}`}[i], ms)
		f.rows[i] = insertID(t, db, `INSERT INTO sending_log (delivery_id, profile_id, address, status, sent_at)
			VALUES ($1, $2, 'x', 'sent', $3)`, f.delivery, f.profiles[i], ms-3_600_000)
	}
	key, err := tracking.LoadOrCreateKey(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	again, err := tracking.LoadOrCreateKey(context.Background(), db)
	if err != nil || string(again.Secret) != string(key.Secret) {
		t.Fatalf("a second LoadOrCreateKey gave another key (%v)", err)
	}
	if f.signer, err = tracking.NewSigner(key); err != nil {
		t.Fatal(err)
	}
	f.stats = stats.NewService(db, f.clk, nil)
	f.sink = tracking.NewSQLSink(db, tracking.NewClassifier(tracking.ClassifierOptions{}))
	f.rec = tracking.NewRecorder(f.sink, tracking.RecorderOptions{})
	t.Cleanup(func() { f.rec.Close(context.Background()) })
	targets := tracking.NewTargets(tracking.NewSQLTargets(db, 0), tracking.TargetsOptions{Clock: f.clk, Fallback: f.fallback})
	mux := http.NewServeMux()
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	if f.links, err = tracking.NewLinks(f.srv.URL, f.signer); err != nil {
		t.Fatal(err)
	}
	h := tracking.NewHandlers(tracking.HandlersOptions{Signer: f.signer, Targets: targets, Recorder: f.rec, Sink: f.sink,
		Mirror: tracking.NewMirrorPages(db, profile.NewService(db, f.clk, nil), f.links, targets), Clock: f.clk})
	mux.HandleFunc("GET /t/o/{token}", h.Open)
	mux.HandleFunc("GET /t/c/{token}", h.Click)
	mux.HandleFunc("GET /t/m/{token}", h.Mirror)
	mux.HandleFunc("GET /t/u/{token}", h.OptOutPage)
	mux.HandleFunc("POST /t/u/{token}", h.OptOut)
	return f
}

func (f *fixture) token(t *testing.T, row int, kind tracking.Kind, link uint16, url string) string {
	t.Helper()
	tok, err := f.signer.Sign(tracking.Ref{LogID: f.rows[row], DeliveryID: f.delivery, Kind: kind, Link: link, URL: url})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

var noRedirect = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

func (f *fixture) do(t *testing.T, method, path, ua string) (int, http.Header, string) {
	t.Helper()
	req, _ := http.NewRequest(method, f.srv.URL+path, nil)
	req.Header.Set("User-Agent", ua)
	resp, err := noRedirect.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

func (f *fixture) int(t *testing.T, q string, args ...any) int64 {
	t.Helper()
	var n sql.NullInt64
	if err := f.db.Read.QueryRow(q, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n.Int64
}

func TestTokensThroughHTTP(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		f := newFixture(t, db)
		open := f.token(t, 0, tracking.KindOpen, tracking.NoLink, "")
		click := f.token(t, 0, tracking.KindClick, 0, "")
		altered := []byte(click)
		altered[len(altered)/2] ^= 1
		outOfRange := f.token(t, 0, tracking.KindClick, 9, "")
		optOutLink := f.token(t, 0, tracking.KindClick, 2, "")
		evil := f.token(t, 0, tracking.KindClick, 1, "https://evil.example/p/42")
		urlOnFixed := f.token(t, 0, tracking.KindClick, 0, "https://evil.example/")
		for name, path := range map[string]string{
			"forged open":                "/t/o/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
			"altered click":              "/t/c/" + string(altered),
			"open token as click":        "/t/c/" + open,
			"click token as pixel":       "/t/o/" + click,
			"link index out of range":    "/t/c/" + outOfRange,
			"untracked link":             "/t/c/" + optOutLink,
			"personalised link, evil":    "/t/c/" + evil,
			"fixed link carrying a URL":  "/t/c/" + urlOnFixed,
			"opt-out with a click token": "/t/u/" + click,
		} {
			if code, hd, _ := f.do(t, "GET", path, browser); code != http.StatusNotFound || hd.Get("Location") != "" {
				t.Errorf("%s: %d %q, want 404 and no redirect", name, code, hd.Get("Location"))
			}
		}
		if code, hd, _ := f.do(t, "GET", "/t/c/"+click, browser); code != http.StatusFound || hd.Get("Location") != "https://shop.example/a" {
			t.Errorf("click: %d %q, want 302 to https://shop.example/a", code, hd.Get("Location"))
		}
		personal := f.token(t, 1, tracking.KindClick, 1, "https://shop.example/p/7")
		if code, hd, _ := f.do(t, "GET", "/t/c/"+personal, browser); code != http.StatusFound || hd.Get("Location") != "https://shop.example/p/7" {
			t.Errorf("personalised click: %d %q", code, hd.Get("Location"))
		}
		code, hd, body := f.do(t, "GET", "/t/o/"+open, browser)
		if code != http.StatusOK || hd.Get("Content-Type") != "image/gif" || !strings.HasPrefix(body, "GIF89a") || len(body) != 43 {
			t.Errorf("pixel: %d %q %d bytes", code, hd.Get("Content-Type"), len(body))
		}
		if err := f.rec.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		if n := f.int(t, `SELECT COUNT(*) FROM tracking_events`); n != 3 {
			t.Errorf("tracking events: %d, want 3 (two clicks and an open; no 404 recorded)", n)
		}
	})
}

func TestRecordingAndKPIs(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		f := newFixture(t, db)
		if _, err := webhook.NewService(db, f.clk, slog.New(slog.DiscardHandler)).Create(context.Background(), audit.System,
			webhook.NewEndpoint{URL: "https://hooks.example/herald", Events: []string{webhook.Opened, webhook.Clicked}}); err != nil {
			t.Fatal(err)
		}
		// Ann clicks (an open too) and opens; Bob opens twice, once through curl (a machine).
		f.do(t, "GET", "/t/c/"+f.token(t, 0, tracking.KindClick, 0, ""), browser)
		f.do(t, "GET", "/t/o/"+f.token(t, 0, tracking.KindOpen, tracking.NoLink, ""), browser)
		f.clk.Advance(time.Hour)
		f.do(t, "GET", "/t/o/"+f.token(t, 1, tracking.KindOpen, tracking.NoLink, ""), "curl/8.5.0")
		f.do(t, "GET", "/t/o/"+f.token(t, 1, tracking.KindOpen, tracking.NoLink, ""), browser)
		code, _, page := f.do(t, "GET", "/t/m/"+f.token(t, 1, tracking.KindMirror, tracking.NoLink, ""), browser)
		if code != http.StatusOK || !strings.Contains(page, "Hi Bob") || !strings.Contains(page, "/t/c/") || strings.Contains(page, "https://shop.example/a") {
			t.Errorf("mirror page: %d\n%s\nwant Bob's message with tracked links", code, page)
		}
		if err := f.rec.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		first := f.int(t, `SELECT first_open_at FROM sending_log WHERE id = $1`, f.rows[0])
		if first != clock.Millis(t0) || f.int(t, `SELECT first_click_at FROM sending_log WHERE id = $1`, f.rows[0]) != clock.Millis(t0) {
			t.Errorf("Ann's first open %d and click: want both at t0 (a click counts as an open)", first)
		}
		if n := f.int(t, `SELECT first_click_at FROM sending_log WHERE id = $1`, f.rows[1]); n != 0 {
			t.Errorf("Bob's first click %d, want none", n)
		}
		if n := f.int(t, `SELECT COUNT(*) FROM tracking_events WHERE machine = true`); n != 1 {
			t.Errorf("machine events: %d, want 1 (curl)", n)
		}
		if n := f.int(t, `SELECT COUNT(*) FROM webhook_outbox WHERE type = 'opened'`); n != 3 {
			t.Errorf("opened webhook events queued: %d, want 3 (every open hit, machine ones flagged)", n)
		}
		if n := f.int(t, `SELECT COUNT(*) FROM webhook_outbox WHERE type = 'clicked'`); n != 1 {
			t.Errorf("clicked webhook events queued: %d, want 1", n)
		}
		want := stats.Counters{Opens: 2, OpensHuman: 2, Clicks: 1, Mirror: 1}
		live, err := f.stats.Read(context.Background(), f.delivery)
		if err != nil {
			t.Fatal(err)
		}
		check := func(when string, k stats.KPIs) {
			t.Helper()
			if k.Opens != want.Opens || k.OpensHuman != want.OpensHuman || k.Clicks != want.Clicks || k.Mirror != want.Mirror || k.OptOuts != want.OptOuts {
				t.Errorf("%s: opens %d human %d clicks %d mirror %d optouts %d, want %+v", when, k.Opens, k.OpensHuman, k.Clicks, k.Mirror, k.OptOuts, want)
			}
		}
		check("live", live)

		// One-click opt-out: stored before the 200, counted once however often it is posted.
		optOut := "/t/u/" + f.token(t, 0, tracking.KindOptOut, tracking.NoLink, "")
		if code, _, body := f.do(t, "GET", optOut, browser); code != 200 || !strings.Contains(body, `method="post"`) {
			t.Errorf("opt-out page: %d %s", code, body)
		}
		if n := f.int(t, `SELECT COUNT(*) FROM profiles WHERE opt_out_email = true`); n != 0 {
			t.Errorf("a GET opted out %d profiles", n)
		}
		// Ann's profile was last written "later" than the opt-out's clock (the same millisecond,
		// or a node whose clock is behind): the opt-out still moves updated_at, which an import
		// that read the profile before checks before it writes back.
		const later = 4102444800000 // 2100-01-01
		if _, err := f.db.Write.Exec(`UPDATE profiles SET updated_at = $1 WHERE id = $2`, later, f.profiles[0]); err != nil {
			t.Fatal(err)
		}
		for range 2 {
			if code, _, _ := f.do(t, "POST", optOut, ""); code != http.StatusOK {
				t.Fatalf("one-click opt-out: %d", code)
			}
		}
		if n := f.int(t, `SELECT COUNT(*) FROM profiles WHERE opt_out_email = true AND id = $1`, f.profiles[0]); n != 1 {
			t.Errorf("Ann is not opted out")
		}
		if ms := f.int(t, `SELECT updated_at FROM profiles WHERE id = $1`, f.profiles[0]); ms != later+1 {
			t.Errorf("Ann's updated_at after the opt-out: %d, want %d", ms, later+1)
		}
		if n := f.int(t, `SELECT COUNT(*) FROM profiles WHERE opt_out_email = true`); n != 1 {
			t.Errorf("%d profiles opted out, want 1", n)
		}
		want.OptOuts = 1
		live, _ = f.stats.Read(context.Background(), f.delivery)
		check("live after opt-out", live)
		computed, err := f.stats.Compute(context.Background(), f.delivery)
		if err != nil {
			t.Fatal(err)
		}
		check("computed", computed)
		if _, err := f.stats.Rollup(context.Background(), f.delivery); err != nil {
			t.Fatal(err)
		}
		hours, err := f.stats.Hourly(context.Background(), f.delivery)
		if err != nil {
			t.Fatal(err)
		}
		var sum stats.Counters
		for _, h := range hours {
			sum = sum.Add(h.Counters)
		}
		if sum.Opens != 2 || sum.Clicks != 1 || sum.Delivered != 2 {
			t.Errorf("hourly sums %+v, want 2 opens, 1 click, 2 delivered", sum)
		}

		// Past the tracking retention a click goes to the fallback and is not recorded.
		f.clk.Advance(tracking.Retention)
		before := f.int(t, `SELECT COUNT(*) FROM tracking_events`)
		targets := tracking.NewTargets(tracking.NewSQLTargets(db, 0), tracking.TargetsOptions{Clock: f.clk, Fallback: f.fallback})
		dest, err := targets.Resolve(context.Background(), tracking.Ref{LogID: f.rows[0], DeliveryID: f.delivery, Kind: tracking.KindClick, Link: 0})
		if err != nil || !dest.Expired || dest.URL != f.fallback {
			t.Errorf("expired click: %+v %v, want the fallback", dest, err)
		}
		if after := f.int(t, `SELECT COUNT(*) FROM tracking_events`); after != before {
			t.Errorf("resolving wrote events")
		}
	})
}

func TestSinkDropsHitsOfUnknownRows(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		f := newFixture(t, db)
		err := f.sink.WriteHits(context.Background(), []tracking.Hit{
			{Ref: tracking.Ref{LogID: 999_999, DeliveryID: f.delivery, Kind: tracking.KindOpen, Link: tracking.NoLink}, At: t0, UserAgent: browser},
			{Ref: tracking.Ref{LogID: f.rows[0], DeliveryID: f.delivery + 1, Kind: tracking.KindOpen, Link: tracking.NoLink}, At: t0, UserAgent: browser},
			{Ref: tracking.Ref{LogID: f.rows[1], DeliveryID: f.delivery, Kind: tracking.KindOpen, Link: tracking.NoLink}, At: t0, UserAgent: "bad\x00\xff agent"},
		})
		if err != nil {
			t.Fatal(err)
		}
		if n := f.int(t, `SELECT COUNT(*) FROM tracking_events`); n != 1 {
			t.Errorf("events: %d, want 1", n)
		}
	})
}

func TestSaveLinks(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		f := newFixture(t, db)
		links := []tracking.Link{{URL: "https://other.example/", Mode: tracking.ModeTracked}}
		if err := db.InTx(context.Background(), func(tx *sql.Tx) error {
			return tracking.SaveLinks(context.Background(), tx, f.delivery, links)
		}); err != nil {
			t.Fatal(err)
		}
		set, err := tracking.NewSQLTargets(db, 0).Targets(context.Background(), f.delivery)
		if err != nil || len(set.Links) != 1 || set.Links[0].URL != "https://other.example/" || set.Links[0].Mode != tracking.ModeTracked {
			t.Errorf("targets after SaveLinks: %+v %v", set, err)
		}
		if _, err := tracking.NewSQLTargets(db, 0).Targets(context.Background(), 12345); err != tracking.ErrUnknownDelivery {
			t.Errorf("unknown delivery: %v", err)
		}
	})
}

// A row's later hits, in later batches, add events but move no first-event time and no
// unique counter: the batch skips columns its lookup found set, and the rest stay guarded.
func TestSinkCountsFirstsOnceAcrossBatches(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		f := newFixture(t, db)
		ctx := context.Background()
		hit := func(kind tracking.Kind, link uint16, at time.Time) tracking.Hit {
			return tracking.Hit{Ref: tracking.Ref{LogID: f.rows[0], DeliveryID: f.delivery, Kind: kind, Link: link}, At: at, UserAgent: browser}
		}
		t1, t2 := t0.Add(time.Hour), t0.Add(2*time.Hour)
		if err := f.sink.WriteHits(ctx, []tracking.Hit{hit(tracking.KindOpen, tracking.NoLink, t0)}); err != nil {
			t.Fatal(err)
		}
		if err := f.sink.WriteHits(ctx, []tracking.Hit{hit(tracking.KindOpen, tracking.NoLink, t1), hit(tracking.KindClick, 0, t1)}); err != nil {
			t.Fatal(err)
		}
		if err := f.sink.WriteHits(ctx, []tracking.Hit{hit(tracking.KindClick, 0, t2), hit(tracking.KindOpen, tracking.NoLink, t2)}); err != nil {
			t.Fatal(err)
		}
		if got := f.int(t, `SELECT first_open_at FROM sending_log WHERE id = $1`, f.rows[0]); got != clock.Millis(t0) {
			t.Errorf("first open %d, want t0 %d", got, clock.Millis(t0))
		}
		if got := f.int(t, `SELECT first_click_at FROM sending_log WHERE id = $1`, f.rows[0]); got != clock.Millis(t1) {
			t.Errorf("first click %d, want t1 %d", got, clock.Millis(t1))
		}
		if n := f.int(t, `SELECT COUNT(*) FROM tracking_events`); n != 5 {
			t.Errorf("events %d, want 5", n)
		}
		live, err := f.stats.Read(ctx, f.delivery)
		if err != nil {
			t.Fatal(err)
		}
		if live.Opens != 1 || live.OpensHuman != 1 || live.Clicks != 1 {
			t.Errorf("live opens %d, human %d, clicks %d; want 1, 1, 1", live.Opens, live.OpensHuman, live.Clicks)
		}
	})
}
