package sending

import (
	"bufio"
	"context"
	"crypto/rand"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"runtime/trace"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/heraldhq/herald/internal/audience"
	"github.com/heraldhq/herald/internal/audit"
	"github.com/heraldhq/herald/internal/auth"
	"github.com/heraldhq/herald/internal/channel"
	"github.com/heraldhq/herald/internal/channel/email"
	"github.com/heraldhq/herald/internal/channel/email/smtptest"
	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/content"
	"github.com/heraldhq/herald/internal/delivery"
	"github.com/heraldhq/herald/internal/profile"
	"github.com/heraldhq/herald/internal/quarantine"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/tracking"
)

// BenchOptions configures Bench.
type BenchOptions struct {
	// N is the number of recipients, and of messages pushed for the ceiling.
	N int
	// DBPath is the SQLite file to create; "" makes one in a temporary directory that is
	// removed afterwards. An existing file is refused, so that every run starts empty. A
	// postgres:// URL runs the bench on PostgreSQL instead, in a schema of its own made in that
	// database and dropped at the end.
	DBPath string
	// SMTPAddr is the host:port of an SMTP sink on loopback (e.g. Postfix's smtp-sink); ""
	// starts smtptest's in-process fast sink.
	SMTPAddr string
	// Conns is the relay's max_conns, for the engine and the ceiling alike; 0 means
	// email.DefaultMaxConns.
	Conns int
	// Workers and BatchSize configure the engine; 0 picks the engine's defaults, as serve does.
	Workers, BatchSize int
	// CPUProfile, when set, receives a CPU profile of the end-to-end phase only (confirm to
	// the last message written back).
	CPUProfile io.Writer
	// Trace, when set, receives a runtime execution trace of the same phase (go tool trace).
	Trace io.Writer
	// Progress, when set, receives one line per phase as the run goes.
	Progress io.Writer
}

// BenchResult is what Bench measured. Rates are lower bounds on a loaded machine.
type BenchResult struct {
	N        int    `json:"n"`
	Sink     string `json:"sink"`
	Conns    int    `json:"conns"`
	Workers  int    `json:"workers"`
	Batch    int    `json:"batch"`
	Database string `json:"database"`
	// ImportSeconds and PrepareSeconds are the set-up: profile import, and preparation.
	ImportSeconds  float64 `json:"import_seconds"`
	PrepareSeconds float64 `json:"prepare_seconds"`
	// SendSeconds runs from confirm until the delivery is finished (every outcome written).
	SendSeconds float64 `json:"send_seconds"`
	MsgsPerSec  float64 `json:"msgs_per_sec"`
	Sent        int64   `json:"sent"`
	// MessageBytes is the mean size of the messages the engine sent.
	MessageBytes int `json:"message_bytes"`
	// CPUSeconds is user+system time of the whole process during the send (the in-process
	// sink included when it is used).
	CPUSeconds float64 `json:"cpu_seconds"`
	// CPUMicrosPerMsg is CPUSeconds per message.
	CPUMicrosPerMsg float64 `json:"cpu_us_per_msg"`
	// PeakRSSSendMB is the peak resident set during the send (VmHWM, reset before confirm);
	// PeakRSSRunMB is the peak of the whole run, set-up included (ru_maxrss).
	PeakRSSSendMB float64 `json:"peak_rss_send_mb"`
	PeakRSSRunMB  float64 `json:"peak_rss_run_mb"`
	// CeilingMsgsPerSec is the rate of ready-made messages pushed to the same sink through a
	// Transport with the same relay settings, from Workers concurrent senders:
	// N of them just before the send and N just after (2N over CeilingSeconds), so that a
	// machine whose speed drifts during the run is compared with itself on both sides.
	CeilingMsgsPerSec float64 `json:"ceiling_msgs_per_sec"`
	CeilingSeconds    float64 `json:"ceiling_seconds"`
	// CeilingBeforeMsgsPerSec and CeilingAfterMsgsPerSec are the two halves' own rates. Both
	// push the delivery's own messages, those of its first Workers × Batch recipients (fewer
	// when N is smaller), rendered and built before the send, in turn; SampleBytes is their
	// mean size.
	CeilingBeforeMsgsPerSec float64 `json:"ceiling_before_msgs_per_sec"`
	CeilingAfterMsgsPerSec  float64 `json:"ceiling_after_msgs_per_sec"`
	SampleBytes             int     `json:"sample_message_bytes"`
	// CeilingCPUMicrosPerMsg is the process's CPU time per ready-made message pushed.
	CeilingCPUMicrosPerMsg float64 `json:"ceiling_cpu_us_per_msg"`
	// Ratio is MsgsPerSec / CeilingMsgsPerSec.
	Ratio float64 `json:"ratio"`
}

// String formats r for a terminal.
func (r BenchResult) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "recipients        %d (%s, sink %s, %d conns, %d workers, batch %d)\n", r.N, r.Database, r.Sink, r.Conns, r.Workers, r.Batch)
	fmt.Fprintf(&b, "set-up            import %.1f s, prepare %.1f s\n", r.ImportSeconds, r.PrepareSeconds)
	fmt.Fprintf(&b, "end to end        %d sent in %.2f s = %.0f msgs/s (mean message %d bytes)\n", r.Sent, r.SendSeconds, r.MsgsPerSec, r.MessageBytes)
	fmt.Fprintf(&b, "cpu               %.2f s user+sys = %.0f µs/msg (%.2f cores)", r.CPUSeconds, r.CPUMicrosPerMsg, r.CPUSeconds/max(r.SendSeconds, 1e-9))
	if r.Database == "postgresql" {
		b.WriteString(", Herald's process only: the database server's is not counted")
	}
	b.WriteString("\n")
	fmt.Fprintf(&b, "peak rss          %.0f MB during the send, %.0f MB for the whole run\n", r.PeakRSSSendMB, r.PeakRSSRunMB)
	fmt.Fprintf(&b, "ceiling           %.0f msgs/s (%d ready-made messages in %.2f s: %.0f msgs/s before the send, %.0f after)\n",
		r.CeilingMsgsPerSec, 2*r.N, r.CeilingSeconds, r.CeilingBeforeMsgsPerSec, r.CeilingAfterMsgsPerSec)
	fmt.Fprintf(&b, "ceiling cpu       %.0f µs/msg\n", r.CeilingCPUMicrosPerMsg)
	fmt.Fprintf(&b, "ratio             %.2f of the ceiling (CPU per message: %.2f)\n", r.Ratio, r.CeilingCPUMicrosPerMsg/max(r.CPUMicrosPerMsg, 1e-9))
	return b.String()
}

// benchHTML is the bench delivery's body: about 2 KB of HTML personalised with the first
// name, address and city, one tracked link and an opt-out link; the open pixel is added.
var benchHTML = `<!DOCTYPE html><html><head><meta charset="utf-8"><title>Spring news</title></head>
<body style="font-family:Arial,sans-serif;color:#222;background:#fff">
<table width="600" cellpadding="0" cellspacing="0" align="center"><tr><td>
<h1 style="font-size:22px">Hello {{.attributes.first_name}},</h1>
<p>We are writing to {{.email}} because you asked for news from our shop in {{.attributes.city}}.
` + strings.Repeat(`<p style="font-size:14px;line-height:20px">Spring is here and so are the new collections: light jackets,
linen shirts and shoes for long walks. Members get early access and free returns for thirty days.</p>
`, 6) + `<p><a href="https://shop.example/spring?utm_source=herald" style="color:#0645ad">See the spring collection</a></p>
<p style="font-size:11px;color:#888">You receive this message as a member in {{.attributes.city}}.
<a href="{{.unsubscribe_url}}">Unsubscribe</a></p>
</td></tr></table></body></html>`

// Bench measures the engine end to end on SQLite: it imports N generated profiles, prepares
// and confirms a personalised, tracked delivery to all of them with principals holding the
// roles, and times the engine from confirm until the delivery is finished, against an SMTP
// sink on loopback. Just before and just after the send it pushes N ready-made messages over a
// Transport with the same relay settings to the same sink: the delivery's own messages, built
// apart from the send (readyMessages), so that the sink receives the same bytes, line for line,
// as from the engine. Their rate over both runs is the ceiling the engine is compared with.
// Memory figures are Linux's; the process should run nothing else meanwhile.
func Bench(ctx context.Context, o BenchOptions) (BenchResult, error) {
	if o.N <= 0 {
		return BenchResult{}, errors.New("bench: the number of recipients must be positive")
	}
	progress := func(format string, args ...any) {
		if o.Progress != nil {
			fmt.Fprintf(o.Progress, format+"\n", args...)
		}
	}
	res := BenchResult{N: o.N, Conns: o.Conns, Database: "sqlite"}
	if res.Conns <= 0 {
		res.Conns = email.DefaultMaxConns
	}

	path := o.DBPath
	if store.IsPostgres(path) {
		dsn, drop, err := store.NewSchema(ctx, path, "herald_bench_")
		if err != nil {
			return res, fmt.Errorf("bench: %w", err)
		}
		defer drop()
		path, res.Database = dsn, "postgresql"
	} else if path == "" {
		dir, err := os.MkdirTemp("", "herald-bench")
		if err != nil {
			return res, err
		}
		defer os.RemoveAll(dir)
		path = filepath.Join(dir, "bench.db")
	} else if _, err := os.Stat(path); err == nil {
		return res, fmt.Errorf("bench: %s exists; give a new file so that the run starts from an empty database", path)
	}
	db, err := store.Open(ctx, path)
	if err != nil {
		return res, err
	}
	defer db.Close()
	if _, err := db.Migrate(ctx); err != nil {
		return res, err
	}

	addr := o.SMTPAddr
	res.Sink = addr
	if addr == "" {
		srv, err := smtptest.Listen(smtptest.Options{Sink: true})
		if err != nil {
			return res, err
		}
		defer srv.Close()
		addr, res.Sink = srv.Addr(), "smtptest sink "+srv.Addr()
	}
	relays, err := email.ParseRelays("smtp://" + addr + "?starttls=off&max_conns=" + strconv.Itoa(res.Conns))
	if err != nil {
		return res, err
	}

	clk := clock.Real{}
	log := slog.New(slog.DiscardHandler)
	deliveries := delivery.NewService(db, clk, log)
	d, err := benchDelivery(ctx, db, deliveries, o.N, &res, progress)
	if err != nil {
		return res, err
	}

	tr, err := email.New(email.Options{Relays: relays, HelloName: "bench.herald.test"})
	if err != nil {
		return res, err
	}
	defer tr.Close()
	counted := &countingSender{Sender: tr}
	secret := make([]byte, 32)
	rand.Read(secret)
	signer, err := tracking.NewSigner(tracking.Key{ID: 1, Secret: secret})
	if err != nil {
		return res, err
	}
	links, err := tracking.NewLinks("http://127.0.0.1", signer)
	if err != nil {
		return res, err
	}
	rp, err := NewReturnPath("bounce.bench.example", secret)
	if err != nil {
		return res, err
	}
	eng, err := New(Config{DB: db, Deliveries: deliveries, Quarantine: quarantine.NewService(db, clk, log), Sender: counted,
		Links: links, ReturnPath: rp, NodeID: "bench", Workers: o.Workers, BatchSize: o.BatchSize, Clock: clk, Logger: log})
	if err != nil {
		return res, err
	}
	res.Workers, res.Batch = eng.cfg.Workers, eng.cfg.BatchSize

	// The ceiling, first half: the messages the engine will make, made ahead. They are made
	// again for the second half rather than kept through the send, where megabytes more of
	// live heap would space out its garbage collections and change its CPU and memory.
	nReady := min(o.N, res.Workers*res.Batch)
	ready, err := readyMessages(ctx, eng, d.id, nReady)
	if err != nil {
		return res, err
	}
	for _, m := range ready {
		res.SampleBytes += len(m.Data)
	}
	res.SampleBytes /= len(ready)
	progress("pushing %d ready-made messages of %d bytes (the ceiling, before the send)", o.N, res.SampleBytes)
	ceilBefore, cpuBefore, err := ceiling(ctx, relays, o.N, ready, res.Workers, res.Batch)
	if err != nil {
		return res, err
	}
	ready = nil

	// The send: from confirm to the delivery finished, with memory measured from here.
	runtime.GC()
	debug.FreeOSMemory()
	resetPeakRSS()
	before := cpuTime()
	if o.CPUProfile != nil {
		if err := pprof.StartCPUProfile(o.CPUProfile); err != nil {
			return res, err
		}
	}
	if o.Trace != nil {
		if err := trace.Start(o.Trace); err != nil {
			pprof.StopCPUProfile()
			return res, err
		}
	}
	stopProfiles := func() {
		if o.CPUProfile != nil {
			pprof.StopCPUProfile()
		}
		if o.Trace != nil {
			trace.Stop()
		}
	}
	progress("sending %d messages", o.N)
	start := time.Now()
	if _, err := deliveries.Confirm(ctx, d.starter, d.id); err != nil {
		stopProfiles()
		return res, fmt.Errorf("bench: confirm: %w", err)
	}
	if err := eng.Start(ctx); err != nil {
		stopProfiles()
		return res, err
	}
	err = waitFinished(ctx, db, d.id, func() bool { return counted.msgs.Load() >= int64(o.N) })
	res.SendSeconds = time.Since(start).Seconds()
	stopProfiles()
	res.CPUSeconds = cpuTime() - before
	res.PeakRSSSendMB = peakRSSMB()
	eng.Stop()
	if err != nil {
		return res, err
	}
	if err := db.Read.QueryRowContext(ctx, `SELECT COUNT(*) FROM sending_log WHERE delivery_id = $1 AND status = 'sent'`, d.id).Scan(&res.Sent); err != nil {
		return res, err
	}
	if res.Sent != int64(o.N) {
		return res, fmt.Errorf("bench: %d of %d messages were sent; the sink refused or lost the rest", res.Sent, o.N)
	}
	res.MsgsPerSec = float64(res.Sent) / res.SendSeconds
	res.CPUMicrosPerMsg = res.CPUSeconds / float64(res.Sent) * 1e6
	if n := counted.msgs.Load(); n > 0 {
		res.MessageBytes = int(counted.bytes.Load() / n)
	}

	if ready, err = readyMessages(ctx, eng, d.id, nReady); err != nil {
		return res, err
	}
	progress("pushing %d ready-made messages of %d bytes (the ceiling, after the send)", o.N, res.SampleBytes)
	ceilAfter, cpuAfter, err := ceiling(ctx, relays, o.N, ready, res.Workers, res.Batch)
	if err != nil {
		return res, err
	}
	res.CeilingCPUMicrosPerMsg = (cpuBefore + cpuAfter) / float64(2*o.N) * 1e6
	res.CeilingSeconds = ceilBefore + ceilAfter
	res.CeilingMsgsPerSec = float64(2*o.N) / res.CeilingSeconds
	res.CeilingBeforeMsgsPerSec, res.CeilingAfterMsgsPerSec = float64(o.N)/ceilBefore, float64(o.N)/ceilAfter
	res.Ratio = res.MsgsPerSec / res.CeilingMsgsPerSec
	res.PeakRSSRunMB = maxRSSMB()
	return res, nil
}

// ceiling pushes n of the ready messages to the relays through a new Transport (see
// pushReady) and returns the seconds it took and the CPU seconds the process spent.
func ceiling(ctx context.Context, relays []email.Relay, n int, ready []channel.Message, workers, batch int) (secs, cpu float64, err error) {
	tr, err := email.New(email.Options{Relays: relays, HelloName: "bench.herald.test"})
	if err != nil {
		return 0, 0, err
	}
	defer tr.Close()
	from := cpuTime()
	secs, err = pushReady(ctx, tr, n, ready, workers, batch)
	return secs, cpuTime() - from, err
}

// readyMessages reads, renders and builds the messages of the first n rows of delivery id as
// a worker does, whatever their status, and marks or sends nothing: the ready-made messages
// the ceiling pushes. Made before the send, it also loads the delivery's templates into the
// engine's cache, a millisecond the timed send then saves.
func readyMessages(ctx context.Context, e *Engine, id int64, n int) ([]channel.Message, error) {
	var hash sql.NullString
	if err := e.db.Read.QueryRowContext(ctx, `SELECT prepared_hash FROM deliveries WHERE id = $1`, id).Scan(&hash); err != nil {
		return nil, fmt.Errorf("bench: make the ready-made messages: %w", err)
	}
	q, err := e.db.Read.QueryContext(ctx, `SELECT id, profile_id, address, attempts, ambiguous FROM sending_log
		WHERE delivery_id = $1 ORDER BY id LIMIT $2`, id, n)
	if err != nil {
		return nil, fmt.Errorf("bench: make the ready-made messages: %w", err)
	}
	rows, err := scanRows(q)
	if err != nil {
		return nil, fmt.Errorf("bench: make the ready-made messages: %w", err)
	}
	b, err := newWorker(e).prepare(ctx, activeDelivery{id: id, state: delivery.Sending, hash: hash.String}, rows)
	if err != nil {
		return nil, fmt.Errorf("bench: make the ready-made messages: %w", err)
	}
	if len(b.msgs) == 0 {
		return nil, errors.New("bench: make the ready-made messages: none could be built")
	}
	return b.msgs, nil
}

// benchRun is the delivery Bench sends and the principal that confirms it.
type benchRun struct {
	id      int64
	starter auth.Principal
}

// benchDelivery imports n profiles and prepares a delivery to all of them, as two users: one
// with the role Prepare deliveries, one with Start deliveries, who confirms.
func benchDelivery(ctx context.Context, db *store.DB, deliveries *delivery.Service, n int, res *BenchResult, progress func(string, ...any)) (benchRun, error) {
	clk := clock.Real{}
	log := slog.New(slog.DiscardHandler)
	users := auth.NewService(db, clk, log)
	principal := func(login string, role auth.Role) (auth.Principal, error) {
		pw := make([]byte, 16)
		rand.Read(pw)
		if _, err := users.CreateUser(ctx, audit.System, auth.NewUser{Login: login, Password: fmt.Sprintf("%x", pw), Roles: []string{string(role)}}); err != nil {
			return auth.Principal{}, fmt.Errorf("bench: add user %s: %w", login, err)
		}
		return users.PrincipalFor(ctx, login)
	}
	maker, err := principal("bench-maker", auth.PrepareDeliveries)
	if err != nil {
		return benchRun{}, err
	}
	starter, err := principal("bench-starter", auth.StartDeliveries)
	if err != nil {
		return benchRun{}, err
	}

	progress("importing %d profiles", n)
	t := time.Now()
	imp, err := profile.NewService(db, clk, log).Import(ctx, audit.System, bufio.NewReaderSize(profile.GenerateCSV(n, 1), 1<<16), profile.ImportOptions{})
	if err != nil {
		return benchRun{}, fmt.Errorf("bench: import: %w", err)
	}
	if imp.Created != n {
		return benchRun{}, fmt.Errorf("bench: the import created %d of %d profiles: %v", imp.Created, n, imp.Errors)
	}
	res.ImportSeconds = time.Since(t).Seconds()

	aud, err := audience.NewService(db, clk, log).Create(ctx, maker.Actor(), audience.New{Name: "everyone", Kind: audience.KindFilter, Filter: "id > 0"})
	if err != nil {
		return benchRun{}, fmt.Errorf("bench: audience: %w", err)
	}
	name, ch := "Bench", delivery.Email
	ct := content.Content{FromName: "Herald Shop", FromAddress: "news@shop.example",
		Subject: "{{.attributes.first_name}}, spring is here in {{.attributes.city}}", HTML: benchHTML}
	d, err := deliveries.Create(ctx, maker, delivery.Input{Name: &name, Channel: &ch, AudienceID: &aud.ID, Content: &ct})
	if err != nil {
		return benchRun{}, fmt.Errorf("bench: create the delivery: %w", err)
	}
	progress("preparing the delivery")
	t = time.Now()
	if d, err = deliveries.Prepare(ctx, maker, d.ID); err != nil {
		return benchRun{}, fmt.Errorf("bench: prepare: %w", err)
	}
	res.PrepareSeconds = time.Since(t).Seconds()
	if d.Counts.ToDeliver != int64(n) {
		return benchRun{}, fmt.Errorf("bench: the preparation kept %d of %d recipients (%s): %+v", d.Counts.ToDeliver, n, d.State, d.PrepLog.Errors)
	}
	return benchRun{id: d.ID, starter: starter}, nil
}

// waitFinished polls the delivery's state until it has finished. Until handedOver says every
// message has gone to the Sender it polls every 20 ms, then every millisecond: a query every
// few milliseconds for the whole send would cost the engine about 2% of its CPU, and the
// finish time must be precise.
func waitFinished(ctx context.Context, db *store.DB, id int64, handedOver func() bool) error {
	for {
		var state string
		err := db.Read.QueryRowContext(ctx, `SELECT state FROM deliveries WHERE id = $1`, id).Scan(&state)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		switch delivery.State(state) {
		case delivery.Finished:
			return nil
		case delivery.Failed, delivery.Stopped, delivery.Retrying:
			return fmt.Errorf("bench: the delivery ended %s", state)
		}
		wait := 20 * time.Millisecond
		if handedOver() {
			wait = time.Millisecond
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}

// pushReady sends n ready-made messages through tr, in batches of batch from workers
// goroutines, and returns the seconds it took. The batches take ready in turn, the k-th
// message pushed being ready[k % len(ready)] whichever goroutine pushes it.
func pushReady(ctx context.Context, tr *email.Transport, n int, ready []channel.Message, workers, batch int) (float64, error) {
	// Open the connections first, as the engine's first batch does its own.
	warm := make([]channel.Message, workers)
	for i := range warm {
		warm[i] = ready[i%len(ready)]
		warm[i].ID = int64(i)
	}
	_ = tr.Send(ctx, warm, make([]channel.Outcome, workers))
	var next atomic.Int64
	var failed atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range workers {
		wg.Go(func() {
			mine := make([]channel.Message, batch)
			out := make([]channel.Outcome, batch)
			for {
				from := int(next.Add(int64(batch))) - batch
				if from >= n {
					return
				}
				k := min(batch, n-from)
				for i := range k {
					mine[i] = ready[(from+i)%len(ready)]
					mine[i].ID = int64(from + i)
				}
				_ = tr.Send(ctx, mine[:k], out[:k])
				for i := range k {
					if out[i].Status != channel.Sent {
						failed.Add(1)
					}
				}
			}
		})
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	if f := failed.Load(); f > 0 {
		return secs, fmt.Errorf("bench: the sink did not accept %d of the %d ready-made messages", f, n)
	}
	return secs, nil
}

// countingSender counts the messages and bytes handed to Sender.
type countingSender struct {
	channel.Sender
	msgs, bytes atomic.Int64
}

// Send counts msgs, then sends them.
func (c *countingSender) Send(ctx context.Context, msgs []channel.Message, out []channel.Outcome) error {
	var b int64
	for i := range msgs {
		b += int64(len(msgs[i].Data))
	}
	c.msgs.Add(int64(len(msgs)))
	c.bytes.Add(b)
	return c.Sender.Send(ctx, msgs, out)
}

// Wait forwards channel.Gate, so that the engine waits out an outage of the sink as it would
// one of a relay.
func (c *countingSender) Wait() (time.Duration, string) {
	if g, ok := c.Sender.(channel.Gate); ok {
		return g.Wait()
	}
	return 0, ""
}

// cpuTime returns the process's user+system CPU seconds.
func cpuTime() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return float64(ru.Utime.Sec+ru.Stime.Sec) + float64(ru.Utime.Usec+ru.Stime.Usec)/1e6
}

// maxRSSMB returns the process's peak resident set (ru_maxrss, in KiB on Linux) in MB.
func maxRSSMB() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return float64(ru.Maxrss) * 1024 / 1e6
}

// resetPeakRSS resets Linux's VmHWM to the current resident set (clear_refs 5), so that
// peakRSSMB measures from here; elsewhere it does nothing.
func resetPeakRSS() { _ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) }

// peakRSSMB returns VmHWM from /proc/self/status in MB, or ru_maxrss where there is none.
func peakRSSMB() float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return maxRSSMB()
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			if err == nil {
				return kb * 1024 / 1e6
			}
		}
	}
	return maxRSSMB()
}
