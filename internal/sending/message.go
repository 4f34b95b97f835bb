package sending

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/heraldhq/herald/internal/channel"
	"github.com/heraldhq/herald/internal/channel/email"
	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/content"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/tracking"
)

// ReturnPath makes the per-recipient envelope sender b+<log id>.<tag>@Domain, so that an
// asynchronous bounce names the sending-log row it is about, the List-Unsubscribe mailto
// address u+<log id>.<tag>@Domain and the Message-ID m+<log id>.<tag>@<domain>. The tags are
// HMACs, so a forged address is refused.
//
// The three tags of a row are three different eight-byte pieces of one HMAC of its id: each is
// as unpredictable as a tag of its own, and knowing one (a Message-ID quoted in a reply) tells
// nothing of the others, for one HMAC a message instead of three. Tags made before, an HMAC
// of the kind and the id each (v1), are still accepted, for the bounces, complaints and
// unsubscribes of mail sent by earlier versions.
type ReturnPath struct {
	// Domain is HERALD_BOUNCE_DOMAIN.
	Domain string
	key    []byte
	// macs holds keyed HMAC states for reuse: a fresh hmac.New costs two extra SHA-256 blocks
	// and its allocations each time.
	macs sync.Pool
}

// MinReturnPathSecret is the shortest secret NewReturnPath accepts, in bytes.
const MinReturnPathSecret = 16

// NewReturnPath returns the return-path builder for domain, tagging with secret.
func NewReturnPath(domain string, secret []byte) (*ReturnPath, error) {
	domain = strings.ToLower(strings.TrimSpace(domain))
	if domain == "" || strings.ContainsAny(domain, "@ <>\r\n") {
		return nil, fmt.Errorf("sending: bounce domain %q is not a domain name", domain)
	}
	if len(secret) < MinReturnPathSecret {
		return nil, fmt.Errorf("sending: the return-path secret is %d bytes; it must be at least %d", len(secret), MinReturnPathSecret)
	}
	d := hmac.New(sha256.New, secret)
	d.Write([]byte("herald return path v1"))
	p := &ReturnPath{Domain: domain, key: d.Sum(nil)}
	p.macs.New = func() any { return &macState{h: hmac.New(sha256.New, p.key)} }
	return p, nil
}

// tagLen is the length of a tag in hex.
const tagLen = 16

// macState is a keyed HMAC with the buffers it reads and writes, pooled together: a buffer on
// the stack would escape through the hash.Hash interface, an allocation a tag.
type macState struct {
	h   hash.Hash
	buf [sha256.Size]byte
}

// rowMACPrefix starts the input of a row's HMAC: no kind byte of a v1 tag, so that no v1 tag is
// a piece of it.
const rowMACPrefix = '*'

// tagOffset is where the tag of kind starts in its row's HMAC.
func tagOffset(kind byte) int {
	switch kind {
	case 'u':
		return tagLen / 2
	case 'm':
		return tagLen
	}
	return 0
}

// mac computes the HMAC of prefix and logID into m.buf and returns it.
func (p *ReturnPath) mac(m *macState, prefix byte, logID int64) []byte {
	m.h.Reset()
	m.h.Write(strconv.AppendInt(append(m.buf[:0], prefix), logID, 10))
	return m.h.Sum(m.buf[:0])
}

// tag returns the hex tag of kind for row logID: its piece of the row's HMAC, or with v1 the
// tag earlier versions made, an HMAC of the kind and the id.
func (p *ReturnPath) tag(kind byte, logID int64, v1 bool) string {
	m := p.macs.Get().(*macState)
	defer p.macs.Put(m)
	if v1 {
		return hex.EncodeToString(p.mac(m, kind, logID)[:tagLen/2])
	}
	off := tagOffset(kind)
	return hex.EncodeToString(p.mac(m, rowMACPrefix, logID)[off : off+tagLen/2])
}

// validTag reports whether tag (hex, any case) is row logID's tag of kind, as made now or by v1.
func (p *ReturnPath) validTag(kind byte, logID int64, tag string) bool {
	tag = strings.ToLower(tag)
	return hmac.Equal([]byte(tag), []byte(p.tag(kind, logID, false))) || hmac.Equal([]byte(tag), []byte(p.tag(kind, logID, true)))
}

// appendTagged appends kind+<log id>.<tag>@domain to dst, with the tag read from the row's HMAC.
func appendTagged(dst []byte, kind byte, logID int64, sum []byte, domain string) []byte {
	dst = strconv.AppendInt(append(dst, kind, '+'), logID, 10)
	off := tagOffset(kind)
	dst = hex.AppendEncode(append(dst, '.'), sum[off:off+tagLen/2])
	return append(append(dst, '@'), domain...)
}

// RowAddresses are the tagged addresses of one sending-log row.
type RowAddresses struct {
	Bounce, Unsubscribe, MessageID string
}

// Addresses returns row logID's envelope sender, List-Unsubscribe address and Message-ID (at
// messageIDDomain, without angle brackets), from one HMAC, in one allocation.
func (p *ReturnPath) Addresses(logID int64, messageIDDomain string) RowAddresses {
	m := p.macs.Get().(*macState)
	sum := p.mac(m, rowMACPrefix, logID)
	var buf [256]byte // the three at their usual lengths: one allocation, the string's
	b := appendTagged(buf[:0], 'b', logID, sum, p.Domain)
	nb := len(b)
	b = appendTagged(b, 'u', logID, sum, p.Domain)
	nu := len(b)
	b = appendTagged(b, 'm', logID, sum, messageIDDomain)
	p.macs.Put(m)
	s := string(b)
	return RowAddresses{Bounce: s[:nb], Unsubscribe: s[nb:nu], MessageID: s[nu:]}
}

// Bounce returns the envelope sender of sending-log row logID.
func (p *ReturnPath) Bounce(logID int64) string { return p.Addresses(logID, p.Domain).Bounce }

// Unsubscribe returns the List-Unsubscribe mailto address of sending-log row logID.
func (p *ReturnPath) Unsubscribe(logID int64) string { return p.Addresses(logID, p.Domain).Unsubscribe }

// Parse reads an address made by Bounce or Unsubscribe: the row and the kind ('b' or 'u').
// It refuses other domains and forged or damaged tags.
func (p *ReturnPath) Parse(addr string) (logID int64, kind byte, ok bool) {
	local, dom, found := strings.Cut(addr, "@")
	if !found || !strings.EqualFold(dom, p.Domain) || len(local) < 3 || local[1] != '+' {
		return 0, 0, false
	}
	kind = local[0] | 0x20
	if kind != 'b' && kind != 'u' {
		return 0, 0, false
	}
	num, tag, found := strings.Cut(local[2:], ".")
	if !found {
		return 0, 0, false
	}
	id, err := strconv.ParseInt(num, 10, 64)
	if err != nil || id < 0 || !p.validTag(kind, id, tag) {
		return 0, 0, false
	}
	return id, kind, true
}

// compiled is a delivery's template with what tracking needs of it.
type compiled struct {
	tpl      *content.Template
	links    []tracking.Link
	tracking content.Tracking
}

type cacheKey struct {
	id   int64
	hash string
}

// templateCache compiles each delivery's content once per prepared hash.
type templateCache struct {
	mu sync.Mutex
	m  map[cacheKey]*compiled
}

func (c *templateCache) get(ctx context.Context, db *store.DB, d activeDelivery) (*compiled, error) {
	key := cacheKey{d.id, d.hash}
	c.mu.Lock()
	defer c.mu.Unlock()
	if t := c.m[key]; t != nil {
		return t, nil
	}
	var raw string
	if err := db.Read.QueryRowContext(ctx, `SELECT content FROM deliveries WHERE id = $1`, d.id).Scan(&raw); err != nil {
		return nil, fmt.Errorf("read the content of delivery %d: %w", d.id, err)
	}
	var ct content.Content
	if err := json.Unmarshal([]byte(raw), &ct); err != nil {
		return nil, fmt.Errorf("decode the content of delivery %d: %w", d.id, err)
	}
	tpl, err := content.Compile(ct, content.Options{})
	if err != nil {
		return nil, fmt.Errorf("compile the content of delivery %d: %w", d.id, err)
	}
	t := &compiled{tpl: tpl, links: trackedLinks(tpl, ct.Tracking), tracking: ct.Tracking}
	if c.m == nil || len(c.m) >= 64 {
		c.m = map[cacheKey]*compiled{}
	}
	c.m[key] = t
	return t, nil
}

// trackedLinks says, for each link of the template, whether and how it is tracked.
func trackedLinks(tpl *content.Template, tr content.Tracking) []tracking.Link {
	links := tpl.Links()
	out := make([]tracking.Link, len(links))
	for i, l := range links {
		mode := tracking.ModeNever
		switch l.Kind {
		case content.LinkHTTP:
			if !tr.DisableClicks && !slices.Contains(tr.UntrackedLinks, l.Index) {
				mode = tracking.ModeTracked
			}
		case content.LinkUnsubscribe:
			mode = tracking.ModeOptOut
		case content.LinkMirror:
			mode = tracking.ModeMirror
		}
		out[i] = tracking.Link{URL: l.URL, Mode: mode, Personalised: tracking.IsPersonalised(l.URL)}
	}
	return out
}

// worker holds what one sending goroutine reuses from batch to batch: its renderers (a
// Renderer is not safe for concurrent use) and its message buffer.
type worker struct {
	e         *Engine
	renderers map[cacheKey]*content.Renderer
	buf       []byte
}

func newWorker(e *Engine) *worker {
	return &worker{e: e, renderers: map[cacheKey]*content.Renderer{}}
}

// batch is one claimed batch: the rows to send with their messages and outcomes, and the rows
// that failed before sending.
type batch struct {
	rows   []row
	msgs   []channel.Message
	out    []channel.Outcome
	failed []failedRow
	// flight is the id of the batch in flight on SQLite (journal.go), 0 on PostgreSQL.
	flight int64
}

// keep drops the messages whose row is not in marked: another worker moved it first.
func (b *batch) keep(marked map[int64]bool) {
	n := 0
	for i := range b.msgs {
		if marked[b.msgs[i].ID] {
			b.rows[n], b.msgs[n] = b.rows[i], b.msgs[i]
			n++
		}
	}
	b.rows, b.msgs, b.out = b.rows[:n], b.msgs[:n], b.out[:n]
}

type failedRow struct {
	row    row
	reason string
}

// prepare renders and builds the messages of rows.
func (w *worker) prepare(ctx context.Context, d activeDelivery, rows []row) (*batch, error) {
	e := w.e
	t, err := e.templates.get(ctx, e.db, d)
	if err != nil {
		return nil, err
	}
	key := cacheKey{d.id, d.hash}
	r := w.renderers[key]
	if r == nil {
		if len(w.renderers) >= 16 {
			clear(w.renderers)
		}
		r = t.tpl.NewRenderer()
		w.renderers[key] = r
	}
	recipients, err := e.recipients(ctx, rows, t.tpl)
	if err != nil {
		return nil, err
	}
	b := &batch{rows: make([]row, 0, len(rows)), msgs: make([]channel.Message, 0, len(rows))}
	w.buf = w.buf[:0]
	mirror := t.tpl.Uses("mirror_url") // a signed token a message: only when shown
	for _, row := range rows {
		rc, ok := recipients[row.profileID]
		switch {
		case row.address == "":
			b.failed = append(b.failed, failedRow{row, "no address: the profile's personal data was erased"})
			continue
		case !ok:
			b.failed = append(b.failed, failedRow{row, "the profile no longer exists"})
			continue
		}
		to, err := email.EnvelopeAddress(row.address)
		if err != nil {
			b.failed = append(b.failed, failedRow{row, err.Error()})
			continue
		}
		var opts content.RenderOptions
		var unsubURL, mailto string
		if e.cfg.Links != nil {
			tr, err := e.cfg.Links.Recipient(row.id, d.id)
			if err != nil {
				return nil, err
			}
			rc.UnsubscribeURL = tr.OptOut()
			if mirror {
				rc.MirrorURL = tr.Mirror()
			}
			if !t.tracking.DisableClicks {
				opts.LinkRewriter = tr.Rewriter(t.links)
			}
			if !t.tracking.DisableOpens {
				opts.PixelURL = tr.Open()
			}
			if strings.HasPrefix(rc.UnsubscribeURL, "https://") {
				unsubURL = rc.UnsubscribeURL
			}
		}
		msg, err := r.Render(&rc, opts)
		if err != nil {
			b.failed = append(b.failed, failedRow{row, "personalisation failed: " + err.Error()})
			continue
		}
		from := msg.FromAddress
		var messageID string
		if e.cfg.ReturnPath != nil {
			a := e.cfg.ReturnPath.Addresses(row.id, e.compose.Domain)
			from, mailto, messageID = a.Bounce, a.Unsubscribe, a.MessageID
		}
		em := email.Email{
			From:                  email.Address{Name: msg.FromName, Addr: msg.FromAddress},
			ReplyTo:               email.Address{Addr: msg.ReplyTo},
			To:                    email.Address{Addr: to},
			MessageID:             messageID,
			Subject:               msg.Subject,
			HTML:                  msg.HTML,
			Text:                  msg.Text,
			ListUnsubscribeURL:    unsubURL,
			ListUnsubscribeMailto: mailto,
		}
		start := len(w.buf)
		w.buf, err = e.compose.Build(w.buf, &em)
		if err != nil {
			w.buf = w.buf[:start]
			b.failed = append(b.failed, failedRow{row, "the message could not be built: " + err.Error()})
			continue
		}
		if start == 0 {
			// The first message tells the batch's size: room for all of it at once. Grown
			// by appends, the buffer went through copies that the batch's earlier messages
			// kept alive, tens of MB at the start of a send (the 1,000,000 bench's peak RSS).
			if need := len(w.buf) * len(rows) * 9 / 8; cap(w.buf) < need {
				w.buf = append(make([]byte, 0, need), w.buf...)
			}
		}
		b.rows = append(b.rows, row)
		b.msgs = append(b.msgs, channel.Message{ID: row.id, To: to, From: from, Data: w.buf[start:len(w.buf):len(w.buf)], Plain: true})
	}
	b.out = make([]channel.Outcome, len(b.msgs))
	return b, nil
}

// recipientFields are the profile fields read only for a template that may show them, in the
// order of the recipients statement's parameters $2 to $6.
var recipientFields = [...]string{"phone", "locale", "time_zone", "external_id", "created_at"}

// recipients loads the profiles of rows in one query, with the fields tpl may show.
func (e *Engine) recipients(ctx context.Context, rows []row, tpl *content.Template) (map[int64]content.Recipient, error) {
	pids := make([]int64, len(rows))
	for i, r := range rows {
		pids[i] = r.profileID
	}
	_, arg := e.sql.idSet(pids, 1)
	args := []any{arg, 0, 0, 0, 0, 0}
	for i, field := range recipientFields {
		if tpl.Uses(field) {
			args[i+1] = 1
		}
	}
	q, err := e.readQuery(ctx, e.sql.recipients, args...)
	if err != nil {
		return nil, fmt.Errorf("load %d recipients: %w", len(rows), err)
	}
	defer q.Close()
	out := make(map[int64]content.Recipient, len(rows))
	// Declared once: Scan takes their addresses, which would put each row's on the heap.
	var (
		rc                           content.Recipient
		mail, phone, locale, tz, ext sql.NullString
		created                      sql.NullInt64
		attrs                        sql.RawBytes // the driver's bytes: decoding copies what it keeps
	)
	for q.Next() {
		rc = content.Recipient{}
		if err := q.Scan(&rc.ID, &mail, &phone, &locale, &tz, &ext, &created, &attrs); err != nil {
			return nil, fmt.Errorf("load recipients: %w", err)
		}
		rc.Email, rc.Phone, rc.Locale, rc.TimeZone, rc.ExternalID = mail.String, phone.String, locale.String, tz.String, ext.String
		if created.Valid {
			rc.CreatedAt = clock.FromMillis(created.Int64)
		}
		if rc.Attributes, err = content.DecodeAttributes(attrs); err != nil {
			rc.Attributes = map[string]any{}
		}
		out[rc.ID] = rc
	}
	if err := q.Err(); err != nil {
		return nil, fmt.Errorf("load recipients: %w", err)
	}
	return out, nil
}
