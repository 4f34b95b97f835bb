package tracking

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"runtime"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// memSink keeps copies of the batches it is given. failures makes the next calls fail; gate,
// when set, makes each call wait for a value (or ctx).
type memSink struct {
	mu       sync.Mutex
	batches  [][]Hit
	calls    int
	failures int
	gate     chan struct{}
}

func (m *memSink) WriteHits(ctx context.Context, hits []Hit) error {
	if m.gate != nil {
		select {
		case <-m.gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls++
	if m.failures > 0 {
		m.failures--
		return errors.New("database is locked")
	}
	m.batches = append(m.batches, slices.Clone(hits))
	return nil
}

func (m *memSink) sizes() []int {
	m.mu.Lock()
	defer m.mu.Unlock()
	var s []int
	for _, b := range m.batches {
		s = append(s, len(b))
	}
	return s
}

func (m *memSink) callCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.calls
}

// logIDs returns the log ids of every hit written, in order.
func (m *memSink) logIDs() []int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	var ids []int64
	for _, b := range m.batches {
		for _, h := range b {
			ids = append(ids, h.Ref.LogID)
		}
	}
	return ids
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func hit(id int64) Hit {
	return Hit{Ref: Ref{LogID: id, DeliveryID: 1, Link: NoLink, Kind: KindOpen}, At: t0, UserAgent: "Mozilla/5.0 (X11)"}
}

func record(t *testing.T, r *Recorder, from, to int64) {
	t.Helper()
	for i := from; i < to; i++ {
		if !r.Record(hit(i)) {
			t.Fatalf("hit %d dropped", i)
		}
	}
}

func seq(from, to int64) []int64 {
	var s []int64
	for i := from; i < to; i++ {
		s = append(s, i)
	}
	return s
}

func TestRecorderBatchesBySize(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sink := &memSink{}
		r := NewRecorder(sink, RecorderOptions{BatchSize: 10, FlushInterval: time.Hour, Log: quiet})
		record(t, r, 0, 25)
		synctest.Wait()
		if got := sink.sizes(); !slices.Equal(got, []int{10, 10}) {
			t.Fatalf("batches %v; want two full ones at once, the rest waiting", got)
		}
		if err := r.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		if got := sink.logIDs(); !slices.Equal(got, seq(0, 25)) {
			t.Fatalf("written %v", got)
		}
		st := r.Stats()
		if st.Queued != 25 || st.Written != 25 || st.Batches != 3 || st.Dropped != 0 || st.Pending != 0 {
			t.Errorf("stats %+v", st)
		}
	})
}

func TestRecorderBatchesByAge(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sink := &memSink{}
		r := NewRecorder(sink, RecorderOptions{BatchSize: 100, FlushInterval: 200 * time.Millisecond, Log: quiet})
		defer r.Close(context.Background())
		record(t, r, 0, 3)
		time.Sleep(199 * time.Millisecond) // virtual time inside the bubble
		synctest.Wait()
		if got := sink.sizes(); len(got) != 0 {
			t.Fatalf("written before the interval: %v", got)
		}
		time.Sleep(time.Millisecond)
		synctest.Wait()
		if got := sink.sizes(); !slices.Equal(got, []int{3}) {
			t.Fatalf("after the interval: %v, want one batch of 3", got)
		}
		record(t, r, 3, 5)
		time.Sleep(200 * time.Millisecond)
		synctest.Wait()
		if got := sink.logIDs(); !slices.Equal(got, seq(0, 5)) {
			t.Fatalf("written %v", got)
		}
	})
}

func TestRecorderRetriesWithoutLoss(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sink := &memSink{failures: 2}
		r := NewRecorder(sink, RecorderOptions{BatchSize: 4, FlushInterval: time.Hour, MinBackoff: 100 * time.Millisecond, MaxBackoff: time.Second, Log: quiet})
		start := time.Now()
		record(t, r, 0, 4)
		synctest.Wait()
		if got, calls := sink.sizes(), sink.callCount(); len(got) != 0 || calls != 1 {
			t.Fatalf("after the first failure: batches %v, calls %d", got, calls)
		}
		record(t, r, 4, 6) // queued while the first batch waits to be retried
		time.Sleep(300 * time.Millisecond)
		synctest.Wait()
		if got := sink.sizes(); !slices.Equal(got, []int{4}) {
			t.Fatalf("after back-off 100 ms + 200 ms: batches %v", got)
		}
		if d := time.Since(start); d != 300*time.Millisecond {
			t.Errorf("written after %v, want 300ms of back-off", d)
		}
		if err := r.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		if got := sink.logIDs(); !slices.Equal(got, seq(0, 6)) {
			t.Fatalf("written %v, want every hit once in order", got)
		}
		if st := r.Stats(); st.WriteErrors != 2 || st.Written != 6 {
			t.Errorf("stats %+v", st)
		}
	})
}

func TestRecorderFullQueueDrops(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sink := &memSink{gate: make(chan struct{})}
		r := NewRecorder(sink, RecorderOptions{Capacity: 10, BatchSize: 5, FlushInterval: time.Hour, Log: quiet})
		record(t, r, 0, 5) // a full batch: the writer takes it and blocks in the sink
		synctest.Wait()
		record(t, r, 5, 15) // fills the queue again
		for i := int64(15); i < 18; i++ {
			if r.Record(hit(i)) {
				t.Fatalf("hit %d accepted by a full queue", i)
			}
		}
		if st := r.Stats(); st.Dropped != 3 || st.Pending != 10 || st.Queued != 15 {
			t.Fatalf("stats %+v", st)
		}
		close(sink.gate)
		if err := r.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		if got := sink.logIDs(); !slices.Equal(got, seq(0, 15)) {
			t.Fatalf("written %v", got)
		}
		if r.Record(hit(99)) {
			t.Error("a closed recorder accepted a hit")
		}
		if st := r.Stats(); st.Dropped != 4 || st.Written != 15 {
			t.Errorf("stats after close %+v", st)
		}
	})
}

func TestRecorderCloseReportsUnwritten(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sink := &memSink{failures: 1 << 30}
		r := NewRecorder(sink, RecorderOptions{BatchSize: 3, FlushInterval: time.Hour, Log: quiet})
		record(t, r, 0, 7)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err := r.Close(ctx)
		var fe *FlushError
		if !errors.As(err, &fe) {
			t.Fatalf("Close = %v, want a *FlushError", err)
		}
		var ids []int64
		for _, h := range fe.Hits {
			ids = append(ids, h.Ref.LogID)
		}
		if !slices.Equal(ids, seq(0, 7)) {
			t.Errorf("unwritten %v, want all 7 in order", ids)
		}
		if fe.Err == nil || fe.Err.Error() != "database is locked" {
			t.Errorf("last error %v", fe.Err)
		}
		if err2 := r.Close(context.Background()); err2 == nil {
			t.Error("second Close forgot the unwritten hits")
		}
	})
}

func TestRecorderFillsKind(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sink := &memSink{}
		r := NewRecorder(sink, RecorderOptions{Log: quiet})
		r.Record(Hit{Ref: Ref{LogID: 1, Link: 2, Kind: KindClick}})
		if err := r.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		if k := sink.batches[0][0].Kind; k != KindClick {
			t.Errorf("Kind = %v, want click", k)
		}
	})
}

type discardSink struct{}

func (discardSink) WriteHits(context.Context, []Hit) error { return nil }

func BenchmarkRecord(b *testing.B) {
	r := NewRecorder(discardSink{}, RecorderOptions{Log: quiet})
	defer r.Close(context.Background())
	h := hit(1)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r.Record(h)
		}
	})
	b.StopTimer()
	if st := r.Stats(); st.Dropped > 0 {
		b.Logf("dropped %d of %d", st.Dropped, st.Queued+st.Dropped)
	}
}

// The writer runs with a P of its own while the Recorder lives, so that a long batch never
// leaves the handlers fewer Ps than CPUs; Close gives it back.
func TestRecorderHoldsAnExtraP(t *testing.T) {
	before := runtime.GOMAXPROCS(0)
	r := NewRecorder(&memSink{}, RecorderOptions{})
	if got := runtime.GOMAXPROCS(0); got != before+1 {
		t.Fatalf("GOMAXPROCS while the recorder runs = %d, want %d", got, before+1)
	}
	if err := r.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := runtime.GOMAXPROCS(0); got != before {
		t.Fatalf("GOMAXPROCS after Close = %d, want %d", got, before)
	}
}
