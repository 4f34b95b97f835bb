package tracking

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Hit is one request to a tracking endpoint, as the tracking log will keep it.
type Hit struct {
	// Ref is what the request's token names.
	Ref Ref
	// Kind is the event; Record sets it to Ref.Kind when it is zero.
	Kind Kind
	// At is when the request arrived.
	At time.Time
	// UserAgent is the request's User-Agent header.
	UserAgent string
	// IP is the client's address.
	IP netip.Addr
	// Machine and Why are the machine classification (see Classifier), when one was made.
	Machine bool
	Why     string
}

// Sink writes hits to storage, a batch per call; the SQL implementation writes the tracking log
// and the first-open and first-click times of the sending log. It must honour ctx, and must not
// keep hits after it returns: the Recorder reuses the slice.
type Sink interface {
	WriteHits(ctx context.Context, hits []Hit) error
}

// RecorderOptions tune a Recorder. Zero values take the defaults.
type RecorderOptions struct {
	// Capacity is the most hits held in memory; when full, hits are dropped and counted.
	// Default 1,048,576: about 150 MB at most, plus the user-agent strings.
	Capacity int
	// BatchSize is the most hits per WriteHits call; a full batch is written at once. Default 5,000.
	BatchSize int
	// FlushInterval is the longest a hit waits for a batch to fill. Default 200 ms.
	FlushInterval time.Duration
	// MinBackoff and MaxBackoff bound the wait between retries of a failed batch, which doubles
	// from one to the other. Defaults 100 ms and 10 s.
	MinBackoff, MaxBackoff time.Duration
	// Log defaults to slog.Default().
	Log *slog.Logger
}

// RecorderStats are a Recorder's counters since it started.
type RecorderStats struct {
	Queued      uint64 // hits accepted by Record
	Written     uint64 // hits the sink wrote
	Dropped     uint64 // hits refused because the queue was full or the Recorder closed
	Batches     uint64 // successful WriteHits calls
	WriteErrors uint64 // failed WriteHits calls, each retried
	Pending     int    // hits in the queue now, not counting a batch being written
}

// Recorder queues hits in memory and writes them in batches through a Sink from one goroutine, so
// that tracking handlers never wait on the database. The queue is bounded: when the database falls
// behind by Capacity hits, new hits are dropped and counted, never blocking a handler. A failed
// batch is retried with back-off until it is written or the Recorder is closed past its deadline.
// Hits live only in this process's memory: a crash loses what is queued (at most Capacity, in
// practice FlushInterval's worth), a graceful Close does not.
type Recorder struct {
	sink Sink
	opts RecorderOptions
	log  *slog.Logger

	mu     sync.Mutex
	chunks [][]Hit // the queue: chunks of at most BatchSize hits; the last one is being filled
	free   [][]Hit // written chunks kept for reuse
	n      int     // hits in chunks
	closed bool

	wake    chan struct{} // a batch is full
	closing chan struct{} // Close was called
	done    chan struct{} // the writer goroutine ended
	ctx     context.Context
	cancel  context.CancelFunc
	once    sync.Once
	lost    []Hit // what Close could not write
	lastErr error

	queued, written, dropped, batches, writeErrors atomic.Uint64
}

// NewRecorder starts a recorder writing to sink. Stop it with Close.
func NewRecorder(sink Sink, opts RecorderOptions) *Recorder {
	if opts.Capacity <= 0 {
		opts.Capacity = 1 << 20
	}
	if opts.BatchSize <= 0 {
		opts.BatchSize = 5000
	}
	if opts.FlushInterval <= 0 {
		opts.FlushInterval = 200 * time.Millisecond
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = 100 * time.Millisecond
	}
	if opts.MaxBackoff < opts.MinBackoff {
		opts.MaxBackoff = max(10*time.Second, opts.MinBackoff)
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	r := &Recorder{
		sink: sink, opts: opts, log: opts.Log,
		wake: make(chan struct{}, 1), closing: make(chan struct{}), done: make(chan struct{}),
	}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	addWriterProc() // given back when run ends
	go r.run()
	return r
}

// Record queues h and returns at once. It returns false, counting a drop, when the queue is full
// or the Recorder is closed.
func (r *Recorder) Record(h Hit) bool {
	if h.Kind == 0 {
		h.Kind = h.Ref.Kind
	}
	r.mu.Lock()
	if r.closed || r.n >= r.opts.Capacity {
		r.mu.Unlock()
		r.dropped.Add(1)
		return false
	}
	last := len(r.chunks) - 1
	if last < 0 || len(r.chunks[last]) == r.opts.BatchSize {
		r.chunks = append(r.chunks, r.newChunk())
		last++
	}
	r.chunks[last] = append(r.chunks[last], h)
	r.n++
	full := len(r.chunks[last]) == r.opts.BatchSize
	r.mu.Unlock()
	r.queued.Add(1)
	if full {
		select {
		case r.wake <- struct{}{}:
		default:
		}
	}
	return true
}

// newChunk returns an empty chunk, reused if one is free. r.mu is held.
func (r *Recorder) newChunk() []Hit {
	if n := len(r.free); n > 0 {
		c := r.free[n-1]
		r.free = r.free[:n-1]
		return c
	}
	return make([]Hit, 0, r.opts.BatchSize)
}

// take removes and returns the oldest chunk; with fullOnly, only if it is full.
func (r *Recorder) take(fullOnly bool) []Hit {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.chunks) == 0 || (fullOnly && len(r.chunks[0]) < r.opts.BatchSize) {
		return nil
	}
	c := r.chunks[0]
	r.chunks[0] = nil
	r.chunks = r.chunks[1:]
	if len(r.chunks) == 0 {
		r.chunks = nil // let the backing array go
	}
	r.n -= len(c)
	return c
}

// recycle gives a written chunk back for reuse, keeping a few.
func (r *Recorder) recycle(c []Hit) {
	clear(c)
	r.mu.Lock()
	if len(r.free) < 4 {
		r.free = append(r.free, c[:0])
	}
	r.mu.Unlock()
}

// run is the writer goroutine. It runs with a P of its own (addWriterProc, called by
// NewRecorder), so that on a busy machine writing a batch of events never leaves the HTTP
// handlers answering pixels and clicks fewer Ps than there are CPUs: the writes are batched and
// can wait, a visitor cannot.
func (r *Recorder) run() {
	defer close(r.done)
	defer releaseWriterProc()
	tick := time.NewTicker(r.opts.FlushInterval)
	defer tick.Stop()
	for {
		select {
		case <-r.wake:
			if !r.drain(true) {
				r.abandon()
				return
			}
		case <-tick.C:
			if !r.drain(false) {
				r.abandon()
				return
			}
		case <-r.closing:
			if !r.drain(false) {
				r.abandon()
			}
			return
		}
	}
}

// drain writes queued chunks until none is left (or, with fullOnly, no full one). It returns false
// when the Recorder's context ended with a batch unwritten, which it keeps in r.lost.
func (r *Recorder) drain(fullOnly bool) bool {
	for {
		c := r.take(fullOnly)
		if c == nil {
			return true
		}
		if !r.write(c) {
			r.lost = append(r.lost, c...)
			return false
		}
		r.recycle(c)
	}
}

// abandon moves everything still queued to r.lost; the Recorder's context has ended.
func (r *Recorder) abandon() {
	for c := r.take(false); c != nil; c = r.take(false) {
		r.lost = append(r.lost, c...)
	}
}

// write writes one batch, retrying with back-off until it succeeds or r.ctx ends.
func (r *Recorder) write(batch []Hit) bool {
	backoff := r.opts.MinBackoff
	for {
		err := r.sink.WriteHits(r.ctx, batch)
		if err == nil {
			r.written.Add(uint64(len(batch)))
			r.batches.Add(1)
			return true
		}
		r.writeErrors.Add(1)
		r.lastErr = err
		r.log.Warn("tracking: writing hits failed; retrying", "hits", len(batch), "retry_in", backoff, "err", err)
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-r.ctx.Done():
			t.Stop()
			return false
		}
		backoff = min(2*backoff, r.opts.MaxBackoff)
	}
}

// FlushError is Close's report of the hits it could not write before its deadline.
type FlushError struct {
	// Hits are the hits not written, oldest first, for the caller to log or keep.
	Hits []Hit
	// Err is the sink's last error, if it failed.
	Err error
}

func (e *FlushError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("tracking: %d hits not written: %v", len(e.Hits), e.Err)
	}
	return fmt.Sprintf("tracking: %d hits not written", len(e.Hits))
}

// Unwrap returns the sink's last error.
func (e *FlushError) Unwrap() error { return e.Err }

// Close stops accepting hits and writes everything queued, retrying failed batches until ctx
// ends. When hits remain unwritten it returns a *FlushError that holds them. Calling it again
// returns the same answer.
func (r *Recorder) Close(ctx context.Context) error {
	r.once.Do(func() {
		r.mu.Lock()
		r.closed = true
		r.mu.Unlock()
		close(r.closing)
	})
	select {
	case <-r.done:
	case <-ctx.Done():
		r.cancel()
		<-r.done
	}
	r.cancel()
	if len(r.lost) == 0 {
		return nil
	}
	err := r.lastErr
	if err == nil {
		err = ctx.Err()
	}
	return &FlushError{Hits: r.lost, Err: err}
}

// Stats returns the counters.
func (r *Recorder) Stats() RecorderStats {
	r.mu.Lock()
	pending := r.n
	r.mu.Unlock()
	return RecorderStats{
		Queued: r.queued.Load(), Written: r.written.Load(), Dropped: r.dropped.Load(),
		Batches: r.batches.Load(), WriteErrors: r.writeErrors.Load(), Pending: pending,
	}
}

var (
	descQueued      = prometheus.NewDesc("herald_tracking_hits_queued_total", "Tracking hits accepted into the in-memory queue.", nil, nil)
	descWritten     = prometheus.NewDesc("herald_tracking_hits_written_total", "Tracking hits written to the database.", nil, nil)
	descDropped     = prometheus.NewDesc("herald_tracking_hits_dropped_total", "Tracking hits dropped because the queue was full or closed.", nil, nil)
	descBatches     = prometheus.NewDesc("herald_tracking_batches_total", "Batches of tracking hits written.", nil, nil)
	descWriteErrors = prometheus.NewDesc("herald_tracking_write_errors_total", "Failed writes of a batch of tracking hits (each is retried).", nil, nil)
	descPending     = prometheus.NewDesc("herald_tracking_hits_pending", "Tracking hits waiting in the queue.", nil, nil)
)

var _ prometheus.Collector = (*Recorder)(nil)

// Describe sends the descriptions of the Recorder's metrics, for prometheus.Registry.
func (r *Recorder) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descQueued, descWritten, descDropped, descBatches, descWriteErrors, descPending} {
		ch <- d
	}
}

// Collect sends the Recorder's counters as Prometheus metrics.
func (r *Recorder) Collect(ch chan<- prometheus.Metric) {
	s := r.Stats()
	ch <- prometheus.MustNewConstMetric(descQueued, prometheus.CounterValue, float64(s.Queued))
	ch <- prometheus.MustNewConstMetric(descWritten, prometheus.CounterValue, float64(s.Written))
	ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(s.Dropped))
	ch <- prometheus.MustNewConstMetric(descBatches, prometheus.CounterValue, float64(s.Batches))
	ch <- prometheus.MustNewConstMetric(descWriteErrors, prometheus.CounterValue, float64(s.WriteErrors))
	ch <- prometheus.MustNewConstMetric(descPending, prometheus.GaugeValue, float64(s.Pending))
}
