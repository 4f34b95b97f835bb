package tracking

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/content"
	"github.com/heraldhq/herald/internal/store"
)

// The targets of the tracking benchmark (issue 6): each Herald endpoint serves at least
// BenchTargetRPS requests a second, events stored, with a p99 latency at most BenchTargetP99Ratio
// times that of a bare net/http handler serving the same pixel in the same run.
const (
	BenchTargetRPS      = 20_000
	BenchTargetP99Ratio = 1.5
)

// ErrNoWrk says the load generator BenchTrack drives is not installed.
var ErrNoWrk = errors.New("bench track: wrk is not installed; on Debian or Ubuntu: apt-get install wrk")

// BenchTrackOptions configures BenchTrack. Zero values take the defaults.
type BenchTrackOptions struct {
	// Duration is the length of each of the three wrk runs. Default 10 s; wrk counts whole
	// seconds, so it is rounded up to one.
	Duration time.Duration
	// Threads and Connections are wrk's -t and -c. Defaults 2 and 50.
	Threads, Connections int
	// Recipients is the number of sending-log rows of the bench delivery, hence of distinct
	// tokens wrk picks from at random. Default 10,000.
	Recipients int
	// Wrk is the wrk binary; "" looks it up in PATH.
	Wrk string
	// DB is a SQLite file to create (it must not exist) or a PostgreSQL URL; "" makes a SQLite
	// file in a temporary directory that is removed afterwards.
	DB string
	// Handler builds the HTTP handler tree that serves the tracking endpoints, so that a caller
	// can measure the server's full tree (web.NewServer, which this package cannot import). nil
	// serves Open and Click on a plain http.ServeMux under the routes serve uses.
	Handler func(db *store.DB, h *Handlers) http.Handler
	// Log receives the Recorder's and handlers' logs; nil discards them.
	Log *slog.Logger
	// Progress, when set, receives one line per phase as the run goes.
	Progress io.Writer
}

// BenchTrackRun is one wrk run against one endpoint.
type BenchTrackRun struct {
	// Name is what was measured: "bare pixel", "herald pixel" or "herald click".
	Name string `json:"name"`
	// Completed is the number of requests wrk reports as completed.
	Completed int64 `json:"completed"`
	// Served is the number of requests the server's handler returned from; it exceeds Completed
	// by the requests in flight when wrk stopped, at most one per connection.
	Served int64 `json:"served"`
	// RPS is wrk's Requests/sec.
	RPS float64 `json:"rps"`
	// P50Ms and P99Ms are wrk's latency percentiles, in milliseconds.
	P50Ms float64 `json:"p50_ms"`
	P99Ms float64 `json:"p99_ms"`
	// BadStatus is wrk's count of responses other than 2xx and 3xx.
	BadStatus int64 `json:"bad_status"`
	// SocketErrors is the sum of wrk's connect, read, write and timeout errors.
	SocketErrors int64 `json:"socket_errors"`
	// P99Ratio is P99Ms over the bare pixel's (1 for the bare pixel itself).
	P99Ratio float64 `json:"p99_ratio"`
	// Events is the number of tracking_events rows of this endpoint's kind after the Recorder
	// was closed; 0 for the bare pixel.
	Events int64 `json:"events"`
}

// BenchTrackResult is what BenchTrack measured. On a machine shared with other work, rates and
// latencies are lower bounds.
type BenchTrackResult struct {
	Recipients  int           `json:"recipients"`
	Seconds     int           `json:"seconds"`
	Threads     int           `json:"threads"`
	Connections int           `json:"connections"`
	Database    string        `json:"database"`
	Handler     string        `json:"handler"`
	Bare        BenchTrackRun `json:"bare"`
	Pixel       BenchTrackRun `json:"pixel"`
	Click       BenchTrackRun `json:"click"`
	// Queued, Written and Dropped are the Recorder's counters after Close.
	Queued  uint64 `json:"queued"`
	Written uint64 `json:"written"`
	Dropped uint64 `json:"dropped"`
	// Events is the number of tracking_events rows of the bench delivery.
	Events int64 `json:"events"`
	// EventsMatch is true when Events equals the Herald requests served minus the dropped hits,
	// and the served requests exceed wrk's completed ones by no more than one per connection.
	EventsMatch bool `json:"events_match"`
	// RPSMet and P99Met say whether both Herald endpoints meet BenchTargetRPS and
	// BenchTargetP99Ratio.
	RPSMet bool `json:"rps_met"`
	P99Met bool `json:"p99_met"`
}

// String formats r as a table for a terminal.
func (r BenchTrackResult) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "wrk -t%d -c%d -d%ds --latency, %d recipients' tokens at random, %s, %s\n\n",
		r.Threads, r.Connections, r.Seconds, r.Recipients, r.Database, r.Handler)
	fmt.Fprintf(&b, "%-14s %12s %9s %9s %12s %11s %10s %10s %10s\n", "endpoint", "requests/s", "p50 ms", "p99 ms", "p99 / bare", "completed", "served", "events", "errors")
	for _, x := range []BenchTrackRun{r.Bare, r.Pixel, r.Click} {
		ev := strconv.FormatInt(x.Events, 10)
		if x.Name == r.Bare.Name {
			ev = "-"
		}
		fmt.Fprintf(&b, "%-14s %12.0f %9.2f %9.2f %11.2f× %11d %10d %10s %10d\n", x.Name, x.RPS, x.P50Ms, x.P99Ms, x.P99Ratio,
			x.Completed, x.Served, ev, x.BadStatus+x.SocketErrors)
	}
	served := r.Pixel.Served + r.Click.Served
	fmt.Fprintf(&b, "\nevents stored   %d rows for %d Herald requests served (%d completed by wrk), %d dropped by the recorder: %s\n",
		r.Events, served, r.Pixel.Completed+r.Click.Completed, r.Dropped, yesNo(r.EventsMatch, "match", "MISMATCH"))
	fmt.Fprintf(&b, "target rps      >= %d requests/s on both endpoints: %s\n", BenchTargetRPS, yesNo(r.RPSMet, "met", "NOT met"))
	fmt.Fprintf(&b, "target p99      <= %.1f× the bare handler's p99 on both endpoints: %s\n", BenchTargetP99Ratio, yesNo(r.P99Met, "met", "NOT met"))
	return b.String()
}

func yesNo(ok bool, yes, no string) string {
	if ok {
		return yes
	}
	return no
}

// benchUA is the User-Agent wrk sends: a browser's, so that the classifier has real work.
const benchUA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Firefox/128.0"

// benchContent is the bench delivery: two tracked links and an opt-out link.
var benchContent = content.Content{FromName: "Herald Shop", FromAddress: "news@shop.example", Subject: "Spring news",
	HTML: `<p>Hello,</p><p><a href="https://shop.example/spring">Spring</a> and <a href="https://shop.example/summer">summer</a>.</p>
<p><a href="{{.unsubscribe_url}}">Unsubscribe</a></p>`}

// BenchTrack measures the open pixel and the click redirect under wrk on loopback, with their
// hits stored: it makes a fresh database holding one delivery with Recipients sending-log rows
// marked sent and its tracked links, serves the real tracking handlers (the signing key from
// LoadOrCreateKey, SQLTargets behind Targets, a Recorder over the SQL sink with the Classifier)
// on 127.0.0.1, and a bare net/http handler serving the same 43-byte GIF on another port. wrk
// runs three times, one after the other, against the bare pixel, Herald's pixel and Herald's
// redirect, each request with a token picked at random from the delivery's. After the runs the
// Recorder is closed and the tracking_events rows are counted against the requests served.
func BenchTrack(ctx context.Context, o BenchTrackOptions) (BenchTrackResult, error) {
	if o.Duration <= 0 {
		o.Duration = 10 * time.Second
	}
	if o.Threads <= 0 {
		o.Threads = 2
	}
	if o.Connections <= 0 {
		o.Connections = 50
	}
	if o.Connections < o.Threads {
		return BenchTrackResult{}, fmt.Errorf("bench track: %d connections cannot be shared by %d threads", o.Connections, o.Threads)
	}
	if o.Recipients <= 0 {
		o.Recipients = 10_000
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	progress := func(format string, args ...any) {
		if o.Progress != nil {
			fmt.Fprintf(o.Progress, format+"\n", args...)
		}
	}
	res := BenchTrackResult{Recipients: o.Recipients, Seconds: int(math.Ceil(o.Duration.Seconds())),
		Threads: o.Threads, Connections: o.Connections, Handler: "tracking handlers on an http.ServeMux"}
	if o.Handler != nil {
		res.Handler = "the caller's handler tree"
	}
	wrk := o.Wrk
	if wrk == "" {
		p, err := exec.LookPath("wrk")
		if err != nil {
			return res, ErrNoWrk
		}
		wrk = p
	} else if _, err := exec.LookPath(wrk); err != nil {
		return res, fmt.Errorf("%w (%s: %v)", ErrNoWrk, wrk, err)
	}

	dir, err := os.MkdirTemp("", "herald-bench-track")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	dsn := o.DB
	if dsn == "" {
		dsn = filepath.Join(dir, "bench.db")
	} else if !store.IsPostgres(dsn) {
		if _, err := os.Stat(dsn); err == nil {
			return res, fmt.Errorf("bench track: %s exists; give a new file so that the run starts from an empty database", dsn)
		}
	}
	db, err := store.Open(ctx, dsn)
	if err != nil {
		return res, err
	}
	defer db.Close()
	if _, err := db.Migrate(ctx); err != nil {
		return res, err
	}
	res.Database = db.Describe()

	progress("creating a delivery with %d sent recipients", o.Recipients)
	deliveryID, logIDs, links, err := benchTrackDelivery(ctx, db, o.Recipients)
	if err != nil {
		return res, err
	}
	key, err := LoadOrCreateKey(ctx, db)
	if err != nil {
		return res, err
	}
	signer, err := NewSigner(key)
	if err != nil {
		return res, err
	}
	var opens, clicks []string
	for i, id := range logIDs {
		t, err := signer.Sign(Ref{LogID: id, DeliveryID: deliveryID, Kind: KindOpen, Link: NoLink})
		if err != nil {
			return res, err
		}
		opens = append(opens, t)
		if t, err = signer.Sign(Ref{LogID: id, DeliveryID: deliveryID, Kind: KindClick, Link: uint16(links[i%len(links)])}); err != nil {
			return res, err
		}
		clicks = append(clicks, t)
	}

	// Herald's endpoints, as serve builds them.
	targets := NewTargets(NewSQLTargets(db, 0), TargetsOptions{Fallback: "http://127.0.0.1/"})
	sink := NewSQLSink(db, NewClassifier(ClassifierOptions{}))
	rec := NewRecorder(sink, RecorderOptions{Log: o.Log})
	recClosed := false
	defer func() {
		if !recClosed {
			_ = rec.Close(context.Background())
		}
	}()
	h := NewHandlers(HandlersOptions{Signer: signer, Targets: targets, Recorder: rec, Sink: sink, Log: o.Log})
	var herald http.Handler
	if o.Handler != nil {
		herald = o.Handler(db, h)
	} else {
		mux := http.NewServeMux()
		mux.HandleFunc("GET "+PathOpen+"{token}", h.Open)
		mux.HandleFunc("GET "+PathClick+"{token}", h.Click)
		herald = mux
	}
	var heraldServed atomic.Int64
	heraldURL, stopHerald, err := benchServe(herald, &heraldServed)
	if err != nil {
		return res, err
	}
	defer stopHerald()

	// The bare handler: the same pixel and headers, no token check, nothing recorded.
	bare := http.NewServeMux()
	bare.HandleFunc("GET "+PathOpen+"{token}", func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd["Content-Type"] = []string{"image/gif"}
		hd["Cache-Control"] = []string{"no-store, no-cache, must-revalidate, private"}
		hd["Content-Length"] = []string{"43"}
		_, _ = w.Write(pixel)
	})
	var bareServed atomic.Int64
	bareURL, stopBare, err := benchServe(bare, &bareServed)
	if err != nil {
		return res, err
	}
	defer stopBare()

	openScript, err := writeWrkScript(dir, "open.lua", PathOpen, opens)
	if err != nil {
		return res, err
	}
	clickScript, err := writeWrkScript(dir, "click.lua", PathClick, clicks)
	if err != nil {
		return res, err
	}

	run := func(name, base, script string, served *atomic.Int64) (BenchTrackRun, error) {
		progress("wrk: %s for %d s", name, res.Seconds)
		before := served.Load()
		x, err := runWrk(ctx, wrk, o, res.Seconds, script, base+"/")
		x.Name = name
		if err != nil {
			return x, fmt.Errorf("bench track: %s: %w", name, err)
		}
		// Let the handlers of requests wrk gave up on return, and the queue drain, so that the
		// next run measures its own writes only.
		if err := waitDrained(ctx, rec, 60*time.Second); err != nil {
			return x, err
		}
		x.Served = served.Load() - before
		return x, nil
	}
	if res.Bare, err = run("bare pixel", bareURL, openScript, &bareServed); err != nil {
		return res, err
	}
	if res.Pixel, err = run("herald pixel", heraldURL, openScript, &heraldServed); err != nil {
		return res, err
	}
	if res.Click, err = run("herald click", heraldURL, clickScript, &heraldServed); err != nil {
		return res, err
	}
	stopHerald()
	stopBare()

	progress("closing the recorder and counting events")
	closeCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	recClosed = true
	if err := rec.Close(closeCtx); err != nil {
		return res, err
	}
	st := rec.Stats()
	res.Queued, res.Written, res.Dropped = st.Queued, st.Written, st.Dropped
	rows, err := db.Read.QueryContext(ctx, `SELECT kind, COUNT(*) FROM tracking_events WHERE delivery_id = $1 GROUP BY kind`, deliveryID)
	if err != nil {
		return res, fmt.Errorf("bench track: count the events: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var kind string
		var n int64
		if err := rows.Scan(&kind, &n); err != nil {
			return res, fmt.Errorf("bench track: count the events: %w", err)
		}
		switch kind {
		case KindOpen.String():
			res.Pixel.Events = n
		case KindClick.String():
			res.Click.Events = n
		}
		res.Events += n
	}
	if err := rows.Err(); err != nil {
		return res, fmt.Errorf("bench track: count the events: %w", err)
	}

	res.Bare.P99Ratio = 1
	if res.Bare.P99Ms > 0 {
		res.Pixel.P99Ratio = res.Pixel.P99Ms / res.Bare.P99Ms
		res.Click.P99Ratio = res.Click.P99Ms / res.Bare.P99Ms
	}
	served := res.Pixel.Served + res.Click.Served
	inFlight := func(x BenchTrackRun) bool {
		return x.Served >= x.Completed && x.Served-x.Completed <= int64(o.Connections)
	}
	res.EventsMatch = res.Events == served-int64(res.Dropped) && res.Written == uint64(res.Events) &&
		inFlight(res.Pixel) && inFlight(res.Click)
	res.RPSMet = res.Pixel.RPS >= BenchTargetRPS && res.Click.RPS >= BenchTargetRPS
	res.P99Met = res.Bare.P99Ms > 0 && res.Pixel.P99Ratio <= BenchTargetP99Ratio && res.Click.P99Ratio <= BenchTargetP99Ratio
	return res, nil
}

// benchTrackDelivery writes a finished delivery of benchContent with n sending-log rows sent an
// hour ago and its tracked links, as the engine saves them. It returns the delivery, the rows
// and the indexes of the tracked links.
func benchTrackDelivery(ctx context.Context, db *store.DB, n int) (int64, []int64, []int, error) {
	tpl, err := content.Compile(benchContent, content.Options{})
	if err != nil {
		return 0, nil, nil, fmt.Errorf("bench track: compile the content: %w", err)
	}
	all := LinksOf(tpl)
	var tracked []int
	for i, l := range all {
		if l.Mode == ModeTracked {
			tracked = append(tracked, i)
		}
	}
	if len(tracked) == 0 {
		return 0, nil, nil, errors.New("bench track: the bench content has no tracked link")
	}
	raw, err := json.Marshal(benchContent)
	if err != nil {
		return 0, nil, nil, err
	}
	sent := clock.Millis(time.Now().Add(-time.Hour))
	var id int64
	ids := make([]int64, 0, n)
	err = db.InTx(ctx, func(tx *sql.Tx) error {
		if err := tx.QueryRowContext(ctx, `INSERT INTO deliveries (name, channel, content, state, validity_seconds, contact_at,
			to_deliver, targeted, created_at, updated_at) VALUES ('bench track', 'email', $1, 'finished', 302400, $2, $3, $3, $2, $2)
			RETURNING id`, string(raw), sent, n).Scan(&id); err != nil {
			return fmt.Errorf("bench track: add the delivery: %w", err)
		}
		if err := SaveLinks(ctx, tx, id, all); err != nil {
			return err
		}
		stmt, err := tx.PrepareContext(ctx, `INSERT INTO sending_log (delivery_id, profile_id, address, status, sent_at)
			VALUES ($1, $2, $3, 'sent', $4) RETURNING id`)
		if err != nil {
			return fmt.Errorf("bench track: add the sending log: %w", err)
		}
		defer stmt.Close()
		for i := range n {
			var logID int64
			if err := stmt.QueryRowContext(ctx, id, i+1, fmt.Sprintf("user%d@example.com", i+1), sent).Scan(&logID); err != nil {
				return fmt.Errorf("bench track: add the sending log: %w", err)
			}
			ids = append(ids, logID)
		}
		return nil
	})
	return id, ids, tracked, err
}

// benchServe serves h on 127.0.0.1 with serve's server settings, counting in served the requests
// the handler returned from. It returns the base URL and an idempotent stop.
func benchServe(h http.Handler, served *atomic.Int64) (string, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, fmt.Errorf("bench track: listen: %w", err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			h.ServeHTTP(w, r)
			served.Add(1)
		}),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
	}
	go func() { _ = srv.Serve(ln) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = srv.Shutdown(ctx)
		})
	}
	return "http://" + ln.Addr().String(), stop, nil
}

// waitDrained waits for the requests wrk left behind to return and for every hit queued so far
// to be written.
func waitDrained(ctx context.Context, rec *Recorder, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	time.Sleep(100 * time.Millisecond)
	for {
		st := rec.Stats()
		if st.Written == st.Queued {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("bench track: %d hits still unwritten after %s (%d write errors)", st.Queued-st.Written, limit, st.WriteErrors)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// writeWrkScript writes a wrk Lua script that requests path followed by one of tokens, picked at
// random for every request, with a browser's User-Agent.
func writeWrkScript(dir, name, path string, tokens []string) (string, error) {
	var b bytes.Buffer
	b.WriteString("-- Written by herald bench track: one token at random per request.\n")
	fmt.Fprintf(&b, "wrk.headers[\"User-Agent\"] = %q\n", benchUA)
	fmt.Fprintf(&b, "local prefix = %q\n", path)
	b.WriteString("local tokens = {\n")
	for _, t := range tokens {
		fmt.Fprintf(&b, "%q,\n", t)
	}
	b.WriteString(`}
local n = #tokens
local threads = 0
function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end
function init(args)
  math.randomseed(os.time() * 1000 + (id or 0))
end
function request()
  return wrk.format("GET", prefix .. tokens[math.random(n)])
end
`)
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b.Bytes(), 0o600); err != nil {
		return "", fmt.Errorf("bench track: write the wrk script: %w", err)
	}
	return p, nil
}

// runWrk runs wrk for secs seconds against url with script and parses its report.
func runWrk(ctx context.Context, wrk string, o BenchTrackOptions, secs int, script, url string) (BenchTrackRun, error) {
	cmd := exec.CommandContext(ctx, wrk, "-t", strconv.Itoa(o.Threads), "-c", strconv.Itoa(o.Connections),
		"-d", strconv.Itoa(secs)+"s", "--timeout", "10s", "--latency", "-s", script, url)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return BenchTrackRun{}, fmt.Errorf("wrk: %v: %s%s", err, errOut.String(), out.String())
	}
	return parseWrk(out.String())
}

var (
	wrkCompleted = regexp.MustCompile(`(?m)^\s*(\d+) requests in `)
	wrkRPS       = regexp.MustCompile(`(?m)^Requests/sec:\s+([0-9.]+)`)
	wrkPct       = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([0-9.]+)(us|ms|s|m|h)\s*$`)
	wrkBad       = regexp.MustCompile(`(?m)^\s*Non-2xx or 3xx responses: (\d+)`)
	wrkSock      = regexp.MustCompile(`(?m)^\s*Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
)

// parseWrk reads the figures BenchTrack reports from wrk's --latency output.
func parseWrk(s string) (BenchTrackRun, error) {
	var x BenchTrackRun
	m := wrkCompleted.FindStringSubmatch(s)
	r := wrkRPS.FindStringSubmatch(s)
	if m == nil || r == nil {
		return x, fmt.Errorf("cannot read wrk's report:\n%s", s)
	}
	x.Completed, _ = strconv.ParseInt(m[1], 10, 64)
	x.RPS, _ = strconv.ParseFloat(r[1], 64)
	unit := map[string]float64{"us": 1e-3, "ms": 1, "s": 1e3, "m": 60e3, "h": 3600e3}
	for _, p := range wrkPct.FindAllStringSubmatch(s, -1) {
		v, _ := strconv.ParseFloat(p[2], 64)
		v *= unit[p[3]]
		if p[1] == "50" {
			x.P50Ms = v
		} else {
			x.P99Ms = v
		}
	}
	if x.P99Ms == 0 && x.Completed > 0 {
		return x, fmt.Errorf("no 99%% latency in wrk's report (was --latency given?):\n%s", s)
	}
	if b := wrkBad.FindStringSubmatch(s); b != nil {
		x.BadStatus, _ = strconv.ParseInt(b[1], 10, 64)
	}
	if e := wrkSock.FindStringSubmatch(s); e != nil {
		for _, v := range e[1:] {
			n, _ := strconv.ParseInt(v, 10, 64)
			x.SocketErrors += n
		}
	}
	return x, nil
}
