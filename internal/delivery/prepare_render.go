package delivery

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"

	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/content"
)

// The personalisation check renders every recipient once. A render is a function of the
// values its template reads (content.DataUse: the helpers read no clock and no randomness),
// so recipients who give the template the same values render alike: the check renders each
// distinct tuple of those values once and judges every other recipient who has it by that
// render. That is exact, not a sample: a tuple that fails fails for each of its recipients,
// and each is counted and listed. When the template reads a value unique to each recipient
// (.id, .email, .external_id, or the whole data) every tuple is distinct and the check renders
// each recipient, with content.Renderer.Check, which builds no message.

// renderBatch is how many recipients a personalisation worker takes at a time.
const renderBatch = 256

// Memory bounds of a worker's caches: tuples already judged, and decoded attributes by their
// JSON text. A full tuple cache drops its older generation and a full attribute cache starts
// again: forgetting only costs a render or a decode again.
const (
	tupleCacheEntries  = 1 << 15
	tupleCacheBytes    = 4 << 20
	attrCacheEntries   = 1 << 10
	attrCacheMaxLength = 1 << 10
)

// The per-recipient URLs the check renders with; their values do not matter, only that they are
// URLs like the engine's.
const (
	checkUnsubscribeURL = "https://herald.invalid/t/u/x"
	checkMirrorURL      = "https://herald.invalid/t/m/x"
)

// renderCheck is one personalisation check: what it reads and whom it found failing.
type renderCheck struct {
	tpl *content.Template
	use content.DataUse
	// decode says whether attributes are read and decoded (an attribute JSON that does not
	// decode fails the recipient).
	decode bool
	// distinct says whether tuples repeat, so that caching them pays.
	distinct bool
	// cols are the profile columns read after p.id.
	cols []string

	mu     sync.Mutex
	failed idSet
}

// newRenderCheck prepares the check of tpl.
func newRenderCheck(tpl *content.Template) *renderCheck {
	c := tpl.Content()
	if tpl.DerivesText() {
		// Deriving the text from the rendered HTML cannot fail on a recipient's data: check the
		// HTML alone (Check derives nothing; the fixed text keeps the compile from deriving).
		cc := c
		cc.Text = "-"
		if t, err := content.Compile(cc, content.Options{}); err == nil {
			tpl = t
		}
	}
	rc := &renderCheck{tpl: tpl, use: tpl.DataUse()}
	src := c.Subject + c.HTML + c.Text
	rc.decode = rc.use.Uses("attributes") || strings.Contains(src, "attr")
	rc.distinct = !rc.use.All && !rc.use.Uses("id") && !rc.use.Uses("email") && !rc.use.Uses("external_id")
	for _, col := range []struct{ name, col string }{
		{"email", "p.email"}, {"phone", "p.phone"}, {"locale", "p.locale"}, {"time_zone", "p.time_zone"},
		{"external_id", "p.external_id"}, {"created_at", "p.created_at"},
	} {
		if rc.use.Uses(col.name) {
			rc.cols = append(rc.cols, col.col)
		}
	}
	if rc.decode {
		rc.cols = append(rc.cols, "p.attributes")
	}
	return rc
}

// selectList is the SELECT list of a query feeding run: p.id, then cols.
func (c *renderCheck) selectList() string {
	return strings.Join(append([]string{"p.id"}, c.cols...), ", ")
}

type checkItem struct {
	rc    content.Recipient
	attrs string
}

// run checks every row of query (selectList over profiles p) on NumCPU workers and calls fail,
// under c.mu, for each recipient whose render fails. Rows are streamed a few batches at a time.
func (c *renderCheck) run(ctx context.Context, q querier, fail func(id int64, err error), query string, args ...any) error {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return fmt.Errorf("read recipients: %w", err)
	}
	defer rows.Close()

	workers := runtime.NumCPU()
	batches := make(chan []checkItem, 2*workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := c.newWorker()
			for b := range batches {
				for i := range b {
					if err := w.check(&b[i]); err != nil {
						c.mu.Lock()
						fail(b[i].rc.ID, err)
						c.mu.Unlock()
					}
				}
			}
		}()
	}

	var (
		scanErr error
		str     [5]sql.NullString
		created sql.NullInt64
	)
	dest := []any{nil}
	for _, col := range c.cols {
		switch col {
		case "p.email":
			dest = append(dest, &str[0])
		case "p.phone":
			dest = append(dest, &str[1])
		case "p.locale":
			dest = append(dest, &str[2])
		case "p.time_zone":
			dest = append(dest, &str[3])
		case "p.external_id":
			dest = append(dest, &str[4])
		case "p.created_at":
			dest = append(dest, &created)
		case "p.attributes":
			dest = append(dest, nil)
		}
	}
	batch := make([]checkItem, 0, renderBatch)
	for rows.Next() {
		batch = append(batch, checkItem{})
		it := &batch[len(batch)-1]
		dest[0] = &it.rc.ID
		if c.decode {
			dest[len(dest)-1] = &it.attrs
		}
		if scanErr = rows.Scan(dest...); scanErr != nil {
			break
		}
		it.rc.Email, it.rc.Phone, it.rc.Locale, it.rc.TimeZone, it.rc.ExternalID = str[0].String, str[1].String, str[2].String, str[3].String, str[4].String
		if created.Valid {
			it.rc.CreatedAt = clock.FromMillis(created.Int64)
		}
		if len(batch) == renderBatch {
			select {
			case batches <- batch:
			case <-ctx.Done():
				scanErr = ctx.Err()
			}
			if scanErr != nil {
				break
			}
			batch = make([]checkItem, 0, renderBatch)
		}
	}
	if scanErr == nil && len(batch) > 0 {
		batches <- batch
	}
	close(batches)
	wg.Wait()
	if scanErr != nil {
		return fmt.Errorf("read recipients: %w", scanErr)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read recipients: %w", err)
	}
	return nil
}

// errTupleFailed fails a recipient whose tuple already failed.
var errTupleFailed = errors.New("the message did not render")

// checkWorker is one goroutine's renderer and caches.
type checkWorker struct {
	c      *renderCheck
	r      *content.Renderer
	tuples tupleCache
	attrs  map[string]map[string]any
	key    []byte
}

func (c *renderCheck) newWorker() *checkWorker {
	return &checkWorker{c: c, r: c.tpl.NewRenderer(), attrs: map[string]map[string]any{}}
}

// check renders it, or finds its tuple already judged, and returns the render's error.
func (w *checkWorker) check(it *checkItem) error {
	rc := &it.rc
	if w.c.decode {
		// Decoded attributes are shared between recipients with the same JSON text: templates
		// and their helpers only read their data.
		a, ok := w.attrs[it.attrs]
		if !ok {
			var err error
			if a, err = content.DecodeAttributes([]byte(it.attrs)); err != nil {
				return err
			}
			if len(it.attrs) <= attrCacheMaxLength {
				if len(w.attrs) >= attrCacheEntries {
					clear(w.attrs)
				}
				w.attrs[it.attrs] = a
			}
		}
		rc.Attributes = a
	}
	rc.UnsubscribeURL, rc.MirrorURL = checkUnsubscribeURL, checkMirrorURL
	if !w.c.distinct {
		return w.r.Check(rc)
	}
	key, ok := w.c.use.AppendKey(w.key[:0], rc)
	w.key = key
	if !ok {
		return w.r.Check(rc)
	}
	if failed, seen := w.tuples.get(key); seen {
		if failed {
			// The recipient fails as the tuple's first did; the report renders again the
			// failures it lists, for their own words.
			return errTupleFailed
		}
		return nil
	}
	err := w.r.Check(rc)
	w.tuples.put(key, err != nil)
	return err
}

// tupleCache remembers judged tuples in two generations: when the newer is full it becomes the
// older, and the older is dropped.
type tupleCache struct {
	cur, old map[string]bool
	bytes    int
}

func (t *tupleCache) get(key []byte) (failed, ok bool) {
	if failed, ok = t.cur[string(key)]; ok {
		return failed, true
	}
	if failed, ok = t.old[string(key)]; ok {
		t.put(key, failed)
	}
	return failed, ok
}

func (t *tupleCache) put(key []byte, failed bool) {
	if t.cur == nil || len(t.cur) >= tupleCacheEntries || t.bytes+len(key) > tupleCacheBytes {
		t.old, t.cur, t.bytes = t.cur, make(map[string]bool), 0
	}
	if len(key) > tupleCacheBytes {
		return
	}
	t.cur[string(key)] = failed
	t.bytes += len(key)
}

// idSet is a set of profile ids, as a bitmap in chunks of 65,536 ids made when first used: a
// million failures in a dense range take 128 KiB.
type idSet struct {
	n      int64
	chunks map[int64]*[1024]uint64
}

func (s *idSet) add(id int64) {
	if s.chunks == nil {
		s.chunks = map[int64]*[1024]uint64{}
	}
	c := s.chunks[id>>16]
	if c == nil {
		c = new([1024]uint64)
		s.chunks[id>>16] = c
	}
	bit := uint64(1) << (id & 63)
	if c[(id>>6)&1023]&bit == 0 {
		c[(id>>6)&1023] |= bit
		s.n++
	}
}

func (s *idSet) has(id int64) bool {
	c := s.chunks[id>>16]
	return c != nil && c[(id>>6)&1023]&(uint64(1)<<(id&63)) != 0
}

// lowest returns the k lowest ids of the set, in order.
func (s *idSet) lowest(k int) []int64 {
	var out []int64
	keys := make([]int64, 0, len(s.chunks))
	for hi := range s.chunks {
		keys = append(keys, hi)
	}
	slices.Sort(keys)
	for _, hi := range keys {
		c := s.chunks[hi]
		for w := range c {
			for b := range 64 {
				if c[w]&(uint64(1)<<b) != 0 {
					if len(out) == k {
						return out
					}
					out = append(out, hi<<16|int64(w)<<6|int64(b))
				}
			}
		}
	}
	return out
}

// reportPersonalisation writes the check's findings to l: how many recipients still targeted
// failed and, for the lowest ids up to MaxPersonalisationFailures, why (rendered again: a
// render is deterministic). superset says the check covered the whole audience, excluded
// profiles too, whose failures do not count.
func (s *Service) reportPersonalisation(ctx context.Context, tx *sql.Tx, c *renderCheck, superset bool, l *PrepLog) error {
	if c.failed.n == 0 {
		return nil
	}
	failed := c.failed.n
	var ids []int64
	if superset {
		failed = 0
		rows, err := tx.QueryContext(ctx, `SELECT profile_id FROM `+prepTable+` WHERE code IS NULL ORDER BY profile_id`)
		if err != nil {
			return fmt.Errorf("read recipients: %w", err)
		}
		for rows.Next() {
			var id int64
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return fmt.Errorf("read recipients: %w", err)
			}
			if c.failed.has(id) {
				failed++
				if len(ids) < MaxPersonalisationFailures {
					ids = append(ids, id)
				}
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("read recipients: %w", err)
		}
	} else {
		ids = c.failed.lowest(MaxPersonalisationFailures)
	}
	if failed == 0 {
		return nil
	}
	msgs := map[int64]string{}
	list, _ := json.Marshal(ids)
	c.distinct = false // each its own words: no tuple judged for another
	err := c.run(ctx, tx, func(id int64, err error) { msgs[id] = err.Error() },
		`SELECT `+c.selectList()+` FROM profiles p WHERE p.id IN (`+idsFromJSON(s.db.Engine)+`)`, string(list))
	if err != nil {
		return err
	}
	failures := make([]RecipientFailure, 0, len(ids))
	for _, id := range ids {
		msg, ok := msgs[id]
		if !ok {
			msg = "the message did not render"
		}
		failures = append(failures, RecipientFailure{ProfileID: id, Error: msg})
	}
	l.PersonalisationFailed, l.PersonalisationFailures = failed, failures
	l.Errors = append(l.Errors, LogEntry{Rule: rulePersonalisation,
		Message: fmt.Sprintf("the message did not render for %d recipients (see personalisation_failures); fix the content or the profiles, then prepare again", failed)})
	return nil
}
