package tracking

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/problem"
)

// Mode is how one link of a delivery is tracked.
type Mode uint8

// The tracking modes of a link.
const (
	ModeTracked Mode = iota + 1 // rewritten to /t/c/ and redirected
	ModeNever                   // left as written: mailto:, tel:, anchors, links the author excluded
	ModeMirror                  // the mirror page link, already a /t/m/ URL
	ModeOptOut                  // the opt-out link, already a /t/u/ URL
)

// Link is one link of a delivery's HTML; its index in TargetSet.Links is the link index of tokens.
type Link struct {
	// URL is the href as written in the template, actions included.
	URL string
	// Mode says whether and how the link is tracked.
	Mode Mode
	// Personalised is true when URL holds a template action, so that each recipient's URL differs
	// and is signed into the click token. Set it with IsPersonalised.
	Personalised bool

	origin string // scheme://host a personalised URL must keep, lower case; "" when unconstrained
}

// IsPersonalised reports whether a link's href, as written, holds a template action.
func IsPersonalised(href string) bool { return strings.Contains(href, "{{") }

// TargetSet is what a click needs to know of a delivery.
type TargetSet struct {
	// Links are the delivery's links by index.
	Links []Link
	// TrackUntil is the end of the delivery's tracking retention; from then on every click goes to
	// the fallback URL. The zero time means no end.
	TrackUntil time.Time
	// Fallback, when set, replaces TargetsOptions.Fallback for this delivery.
	Fallback string
}

// TargetSource loads a delivery's targets, from the tracked_links table in production. It returns
// ErrUnknownDelivery (or an error wrapping it) when the delivery does not exist.
type TargetSource interface {
	Targets(ctx context.Context, deliveryID int64) (TargetSet, error)
}

// Errors of Targets.Resolve; both are answered 404 by the click endpoint.
var (
	// ErrUnknownDelivery says the delivery of a token no longer exists.
	ErrUnknownDelivery = &problem.Error{Kind: problem.NotFound, Code: "not_found", Message: "this message no longer exists"}
	// ErrNoTarget says the delivery has no tracked link of that index, or the token does not fit
	// the link (a URL for a fixed link, none for a personalised one, or one the link cannot have).
	ErrNoTarget = &problem.Error{Kind: problem.NotFound, Code: "not_found", Message: "this link is not valid"}
	// ErrExpired says the delivery's tracking retention is over and no fallback URL is set.
	ErrExpired = &problem.Error{Kind: problem.NotFound, Code: "expired", Message: "this link has expired"}
)

// TargetsOptions tune a Targets cache.
type TargetsOptions struct {
	// Capacity is the most deliveries kept; the least recently used go first. Default 10,000.
	Capacity int
	// TTL is how long a loaded delivery is trusted before it is loaded again. Default 10 minutes.
	TTL time.Duration
	// Fallback is where clicks on expired deliveries go, typically the organisation's home page.
	Fallback string
	// Clock defaults to the system clock.
	Clock clock.Clock
}

// Targets answers "where does this click go" from memory: per delivery, the links by index,
// loaded from a TargetSource on the first click and kept for TTL in a bounded LRU. Concurrent
// first clicks on one delivery share one load (made with the first caller's context, whose
// cancellation fails the others too, so the TargetSource should bound its own time). Not-found answers are cached like targets, so a
// deleted delivery costs one load per TTL; other load errors are not cached. On several nodes
// each node has its own cache; Invalidate acts on this node only, so changes a node must see at
// once (none exist today: a sent delivery's links never change) wait for the TTL elsewhere.
type Targets struct {
	src  TargetSource
	opts TargetsOptions

	mu       sync.Mutex
	entries  map[int64]*list.Element // of *targetEntry
	lru      list.List               // front is most recently used
	inflight map[int64]*targetLoad
}

type targetEntry struct {
	id      int64
	set     TargetSet
	err     error
	expires time.Time
}

type targetLoad struct {
	done chan struct{}
	set  TargetSet
	err  error
}

// NewTargets returns a cache in front of src.
func NewTargets(src TargetSource, opts TargetsOptions) *Targets {
	if opts.Capacity <= 0 {
		opts.Capacity = 10_000
	}
	if opts.TTL <= 0 {
		opts.TTL = 10 * time.Minute
	}
	if opts.Clock == nil {
		opts.Clock = clock.Real{}
	}
	return &Targets{src: src, opts: opts, entries: map[int64]*list.Element{}, inflight: map[int64]*targetLoad{}}
}

// Get returns a delivery's targets, loading them on a miss or after the TTL.
func (t *Targets) Get(ctx context.Context, deliveryID int64) (TargetSet, error) {
	now := t.opts.Clock.Now()
	t.mu.Lock()
	if el, ok := t.entries[deliveryID]; ok {
		e := el.Value.(*targetEntry)
		if now.Before(e.expires) {
			t.lru.MoveToFront(el)
			t.mu.Unlock()
			return e.set, e.err
		}
	}
	if l, ok := t.inflight[deliveryID]; ok {
		t.mu.Unlock()
		select {
		case <-l.done:
			return l.set, l.err
		case <-ctx.Done():
			return TargetSet{}, ctx.Err()
		}
	}
	l := &targetLoad{done: make(chan struct{})}
	t.inflight[deliveryID] = l
	t.mu.Unlock()

	l.set, l.err = t.load(ctx, deliveryID)

	t.mu.Lock()
	delete(t.inflight, deliveryID)
	if l.err == nil || errors.Is(l.err, ErrUnknownDelivery) {
		t.store(&targetEntry{id: deliveryID, set: l.set, err: l.err, expires: t.opts.Clock.Now().Add(t.opts.TTL)})
	}
	t.mu.Unlock()
	close(l.done)
	return l.set, l.err
}

// load reads and checks a delivery's targets, and works out what each personalised link must keep.
func (t *Targets) load(ctx context.Context, deliveryID int64) (TargetSet, error) {
	set, err := t.src.Targets(ctx, deliveryID)
	if err != nil {
		return TargetSet{}, fmt.Errorf("tracking: targets of delivery %d: %w", deliveryID, err)
	}
	if len(set.Links) >= int(NoLink) {
		return TargetSet{}, fmt.Errorf("tracking: delivery %d has %d links; tokens name at most %d", deliveryID, len(set.Links), NoLink-1)
	}
	links := make([]Link, len(set.Links))
	for i, l := range set.Links {
		if l.Personalised {
			l.origin = staticOrigin(l.URL)
		}
		links[i] = l
	}
	set.Links = links
	return set, nil
}

// store adds e, evicting the least recently used entries over capacity. t.mu is held.
func (t *Targets) store(e *targetEntry) {
	if el, ok := t.entries[e.id]; ok {
		el.Value = e
		t.lru.MoveToFront(el)
		return
	}
	t.entries[e.id] = t.lru.PushFront(e)
	for t.lru.Len() > t.opts.Capacity {
		old := t.lru.Back()
		t.lru.Remove(old)
		delete(t.entries, old.Value.(*targetEntry).id)
	}
}

// Invalidate forgets a delivery on this node, so that its next click loads it again.
func (t *Targets) Invalidate(deliveryID int64) {
	t.mu.Lock()
	if el, ok := t.entries[deliveryID]; ok {
		t.lru.Remove(el)
		delete(t.entries, deliveryID)
	}
	t.mu.Unlock()
}

// Len returns the number of deliveries cached.
func (t *Targets) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.lru.Len()
}

// Destination is where a click goes.
type Destination struct {
	// URL is the redirect's target.
	URL string
	// Expired is true when the delivery's tracking retention is over and URL is the fallback;
	// such clicks are not recorded.
	Expired bool
}

// Resolve returns where a verified click token redirects: the link's URL as written, or for a
// personalised link the URL signed into the token; the fallback URL once the delivery's tracking
// retention is over. It never returns a URL the delivery does not contain: a link index out of
// range, a link that is not tracked, or a token whose URL does not fit the link gives ErrNoTarget.
func (t *Targets) Resolve(ctx context.Context, ref Ref) (Destination, error) {
	if ref.Kind != KindClick {
		return Destination{}, ErrNoTarget
	}
	set, err := t.Get(ctx, ref.DeliveryID)
	if err != nil {
		return Destination{}, err
	}
	if int(ref.Link) >= len(set.Links) {
		return Destination{}, ErrNoTarget
	}
	if !set.TrackUntil.IsZero() && !t.opts.Clock.Now().Before(set.TrackUntil) {
		fb := set.Fallback
		if fb == "" {
			fb = t.opts.Fallback
		}
		if fb == "" {
			return Destination{}, ErrExpired
		}
		return Destination{URL: fb, Expired: true}, nil
	}
	l := set.Links[ref.Link]
	if l.Mode != ModeTracked {
		return Destination{}, ErrNoTarget
	}
	if !l.Personalised {
		if ref.URL != "" {
			return Destination{}, ErrNoTarget
		}
		return Destination{URL: l.URL}, nil
	}
	if !isHTTPURL(ref.URL) || !keepsOrigin(ref.URL, l.origin) {
		return Destination{}, ErrNoTarget
	}
	return Destination{URL: ref.URL}, nil
}

// staticOrigin returns the lower-cased scheme://host that a personalised href fixes before its
// first action, or "" when an action comes before the host ends (the host itself is
// personalised, or the whole URL is).
func staticOrigin(href string) string {
	static, _, _ := strings.Cut(href, "{{")
	scheme, rest, ok := strings.Cut(static, "://")
	if !ok {
		return ""
	}
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		return "" // the action may still be part of the host
	}
	return strings.ToLower(scheme + "://" + rest[:end])
}

// keepsOrigin reports whether u has origin (scheme://host, lower case) followed by the end of the
// URL or a path, query or fragment, so that https://shop.example.evil.test does not pass for
// https://shop.example.
func keepsOrigin(u, origin string) bool {
	if origin == "" {
		return true
	}
	if !hasPrefixFold(u, origin) {
		return false
	}
	return len(u) == len(origin) || strings.IndexByte("/?#", u[len(origin)]) >= 0
}
