package sending

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"math"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/channel"
	"github.com/heraldhq/herald/internal/channel/email/smtptest"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/store/storetest"
)

// TestBenchSendsEveryMessageAndMeasures runs Bench small: every message reaches the in-process
// sink, the figures are filled in, and the CPU profile and the execution trace cover the send.
func TestBenchSendsEveryMessageAndMeasures(t *testing.T) {
	var profile, tr bytes.Buffer
	res, err := Bench(context.Background(), BenchOptions{N: 300, CPUProfile: &profile, Trace: &tr})
	if err != nil {
		t.Fatal(err)
	}
	if res.Sent != 300 || res.MsgsPerSec <= 0 || res.CeilingMsgsPerSec <= 0 || res.Ratio <= 0 ||
		res.CeilingBeforeMsgsPerSec <= 0 || res.CeilingAfterMsgsPerSec <= 0 {
		t.Fatalf("incomplete result: %+v", res)
	}
	// The ceiling over both halves is 2N messages over both halves' time.
	if want := 600 / (300/res.CeilingBeforeMsgsPerSec + 300/res.CeilingAfterMsgsPerSec); math.Abs(res.CeilingMsgsPerSec-want) > 1e-6*want {
		t.Fatalf("ceiling %.1f msgs/s, want %.1f from its halves", res.CeilingMsgsPerSec, want)
	}
	if res.MessageBytes < 2000 || res.PeakRSSSendMB <= 0 || res.CPUSeconds <= 0 {
		t.Fatalf("message size, memory or CPU not measured: %+v", res)
	}
	// The messages pushed before the send are the size of those the engine then sent.
	if d := math.Abs(float64(res.SampleBytes - res.MessageBytes)); d > 0.02*float64(res.MessageBytes) {
		t.Fatalf("sampled messages of %d bytes, sent %d", res.SampleBytes, res.MessageBytes)
	}
	if profile.Len() == 0 {
		t.Fatal("no CPU profile written")
	}
	if !bytes.HasPrefix(tr.Bytes(), []byte("go 1.")) {
		t.Fatalf("no execution trace written (%d bytes: %.10q)", tr.Len(), tr.Bytes())
	}
	if s := res.String(); !strings.Contains(s, "msgs/s") || !strings.Contains(s, "of the ceiling") {
		t.Fatalf("String() = %q", s)
	}
}

// TestBenchCeilingPushesTheDeliverysOwnMessages: the ceiling's ready-made messages are the
// messages the engine makes for the delivery's first rows, in id order, with their return paths,
// made without marking or sending anything; pushReady sends them, byte for byte, in turn.
func TestBenchCeilingPushesTheDeliverysOwnMessages(t *testing.T) {
	ctx := context.Background()
	db := storetest.New(t, store.SQLite)
	f := newFixture(t, db, 7, 84*time.Hour)
	srv := smtptest.Start(t, smtptest.Options{})
	tr := transport(t, srv)
	e := f.engine(t, tr, "bench", DefaultBatchSize)

	ready, err := readyMessages(ctx, e, f.id, 5)
	if err != nil {
		t.Fatal(err)
	}
	if len(ready) != 5 {
		t.Fatalf("%d ready-made messages, want 5", len(ready))
	}
	for i, m := range ready {
		if m.To != f.addrs[i] {
			t.Errorf("ready-made message %d is to %s, want %s (the delivery's rows in id order)", i, m.To, f.addrs[i])
		}
		if subject := fmt.Sprintf("Subject: Hi Ann%d\r\n", i); !bytes.Contains(m.Data, []byte(subject)) {
			t.Errorf("ready-made message %d lacks its recipient's %q:\n%s", i, subject, m.Data)
		}
		if !strings.HasPrefix(m.From, "b+") || m.From == ready[(i+1)%len(ready)].From {
			t.Errorf("ready-made message %d has return path %q, not its row's own", i, m.From)
		}
	}
	if n := f.count(t, "status = 'pending'"); n != 7 {
		t.Fatalf("%d of 7 rows pending after making the ready-made messages", n)
	}
	var batches int
	if err := db.Read.QueryRow(`SELECT COUNT(*) FROM in_flight`).Scan(&batches); err != nil || batches != 0 {
		t.Fatalf("%d batches in flight after making the ready-made messages (%v)", batches, err)
	}
	if srv.Count() != 0 {
		t.Fatalf("making the ready-made messages sent %d", srv.Count())
	}

	// Two goroutines with batches of 3 push ready[0..4] in turn, twelve messages, whichever
	// goroutine takes which batch; the connections are opened with ready[0] and ready[1].
	if _, err := pushReady(ctx, tr, 12, ready, 2, 3); err != nil {
		t.Fatal(err)
	}
	got := srv.Messages()
	if len(got) != 2+12 {
		t.Fatalf("the sink received %d messages, want 14", len(got))
	}
	seen := map[string]int{}
	for _, m := range got {
		seen[m.To[0]]++
		k := slices.IndexFunc(ready, func(r channel.Message) bool { return r.To == m.To[0] })
		if k < 0 || m.From != ready[k].From || !bytes.Equal(m.Data, ready[k].Data) {
			t.Fatalf("the sink received a message to %v from %s that is not a ready-made one:\n%s", m.To, m.From, m.Data)
		}
	}
	for i, r := range ready {
		want := 12/len(ready) + min(1, max(0, 12%len(ready)-i)) + min(1, max(0, 2-i))
		if seen[r.To] != want {
			t.Errorf("ready-made message to %s pushed %d times, want %d", r.To, seen[r.To], want)
		}
	}

	// After the send, the same rows make the same messages again, for the second half.
	drain(t, f.engine(t, tr, "bench", DefaultBatchSize))
	if n := f.count(t, "status = 'sent'"); n != 7 {
		t.Fatalf("%d of 7 rows sent", n)
	}
	again, err := readyMessages(ctx, e, f.id, 5)
	if err != nil {
		t.Fatal(err)
	}
	if len(again) != len(ready) {
		t.Fatalf("%d ready-made messages after the send, want %d", len(again), len(ready))
	}
	for i := range again {
		a, r := again[i], ready[i]
		// Only the MIME boundary, random in each message, may differ.
		if a.To != r.To || a.From != r.From || len(a.Data) != len(r.Data) {
			t.Errorf("ready-made message %d after the send is to %s from %s (%d bytes), before it to %s from %s (%d bytes)",
				i, a.To, a.From, len(a.Data), r.To, r.From, len(r.Data))
		}
	}
}

// TestBenchOnPostgres: with a postgres:// URL the bench runs on PostgreSQL, in a schema of its
// own that is gone afterwards.
func TestBenchOnPostgres(t *testing.T) {
	base := os.Getenv(storetest.PostgresURLEnv)
	if base == "" {
		t.Skipf("%s is not set", storetest.PostgresURLEnv)
	}
	admin, err := sql.Open("pgx", base)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	schemas := func() int {
		var n int
		if err := admin.QueryRow(`SELECT count(*) FROM information_schema.schemata WHERE schema_name LIKE 'herald_bench_%'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := schemas()
	res, err := Bench(context.Background(), BenchOptions{N: 300, DBPath: base})
	if err != nil {
		t.Fatal(err)
	}
	if res.Database != "postgresql" || res.Sent != 300 || res.Ratio <= 0 {
		t.Fatalf("result on PostgreSQL: %+v", res)
	}
	if !strings.Contains(res.String(), "database server's is not counted") {
		t.Fatalf("String() does not say that the server's CPU is left out:\n%s", res)
	}
	if n := schemas(); n != before {
		t.Fatalf("%d bench schemas after the run, %d before", n, before)
	}
}

// TestSummarize: the spread of the runs' ratios and rates, and how many reached the target.
func TestSummarize(t *testing.T) {
	s := Summarize([]BenchResult{{Ratio: 0.70, MsgsPerSec: 18000}, {Ratio: 0.80, MsgsPerSec: 21000},
		{Ratio: 0.75, MsgsPerSec: 20000}, {Ratio: 0.73, MsgsPerSec: 19000}})
	want := Spread{Mean: 0.745, Median: 0.74, Min: 0.70, Max: 0.80}
	if d := math.Abs(s.Ratio.Mean-want.Mean) + math.Abs(s.Ratio.Median-want.Median) + math.Abs(s.Ratio.Min-want.Min) +
		math.Abs(s.Ratio.Max-want.Max); d > 1e-9 {
		t.Fatalf("ratio spread %+v, want %+v", s.Ratio, want)
	}
	if s.MsgsPerSec.Median != 19500 || s.AtTarget != 2 {
		t.Fatalf("rate median %v, %d runs at the target; want 19500 and 2", s.MsgsPerSec.Median, s.AtTarget)
	}
	if out := s.String(); !strings.Contains(out, "run 4") || !strings.Contains(out, "2 of 4 at 0.75 or more") {
		t.Fatalf("String() =\n%s", out)
	}
	if odd := Summarize([]BenchResult{{Ratio: 0.9}, {Ratio: 0.6}, {Ratio: 0.7}}); odd.Ratio.Median != 0.7 {
		t.Fatalf("median of three = %v", odd.Ratio.Median)
	}
}
