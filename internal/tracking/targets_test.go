package tracking

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/heraldhq/herald/internal/clock"
)

// fakeSource serves fixed target sets and counts loads.
type fakeSource struct {
	mu    sync.Mutex
	sets  map[int64]TargetSet
	loads map[int64]int
	fail  error
	gate  chan struct{} // when set, loads wait for it
}

func (f *fakeSource) Targets(ctx context.Context, id int64) (TargetSet, error) {
	if f.gate != nil {
		<-f.gate
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.loads[id]++
	if f.fail != nil {
		return TargetSet{}, f.fail
	}
	set, ok := f.sets[id]
	if !ok {
		return TargetSet{}, ErrUnknownDelivery
	}
	return set, nil
}

func (f *fakeSource) count(id int64) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.loads[id]
}

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func newFakeSource() *fakeSource {
	return &fakeSource{loads: map[int64]int{}, sets: map[int64]TargetSet{
		1: {Links: []Link{
			{URL: "https://shop.example/a", Mode: ModeTracked},
			{URL: "mailto:x@shop.example", Mode: ModeNever},
			{URL: "https://shop.example/p/{{.id}}", Mode: ModeTracked, Personalised: true},
			{URL: "{{.mirror_url}}", Mode: ModeMirror, Personalised: true},
			{URL: "{{.attributes.url}}", Mode: ModeTracked, Personalised: true},
			{URL: "https://{{.attributes.region}}.shop.example/", Mode: ModeTracked, Personalised: true},
		}, TrackUntil: t0.Add(180 * 24 * time.Hour)},
		2: {Links: []Link{{URL: "https://two.example/", Mode: ModeTracked}}},
		3: {Links: []Link{{URL: "https://three.example/", Mode: ModeTracked}}},
	}}
}

func click(delivery int64, link uint16, url string) Ref {
	return Ref{LogID: 10, DeliveryID: delivery, Link: link, Kind: KindClick, URL: url}
}

func TestResolve(t *testing.T) {
	src := newFakeSource()
	tg := NewTargets(src, TargetsOptions{Clock: clock.NewFake(t0), Fallback: "https://shop.example/"})
	ctx := context.Background()
	for _, c := range []struct {
		name string
		ref  Ref
		want string
		err  error
	}{
		{"fixed link", click(1, 0, ""), "https://shop.example/a", nil},
		{"fixed link with a URL", click(1, 0, "https://evil.example/"), "", ErrNoTarget},
		{"never-tracked link", click(1, 1, ""), "", ErrNoTarget},
		{"personalised", click(1, 2, "https://shop.example/p/77"), "https://shop.example/p/77", nil},
		{"personalised host case", click(1, 2, "HTTPS://Shop.Example/p/77"), "HTTPS://Shop.Example/p/77", nil},
		{"personalised without URL", click(1, 2, ""), "", ErrNoTarget},
		{"personalised other host", click(1, 2, "https://evil.example/p/77"), "", ErrNoTarget},
		{"personalised host suffix", click(1, 2, "https://shop.example.evil.test/p/1"), "", ErrNoTarget},
		{"personalised userinfo trick", click(1, 2, "https://shop.example@evil.test/"), "", ErrNoTarget},
		{"personalised not http", click(1, 2, "javascript:alert(1)"), "", ErrNoTarget},
		{"mirror link", click(1, 3, "https://t.example/t/m/x"), "", ErrNoTarget},
		{"whole URL from data", click(1, 4, "https://anywhere.example/x"), "https://anywhere.example/x", nil},
		{"personalised host", click(1, 5, "https://eu.shop.example/"), "https://eu.shop.example/", nil},
		{"index out of range", click(1, 6, ""), "", ErrNoTarget},
		{"index far out of range", click(1, NoLink-1, ""), "", ErrNoTarget},
		{"not a click", Ref{DeliveryID: 1, Link: NoLink, Kind: KindOpen}, "", ErrNoTarget},
		{"unknown delivery", click(99, 0, ""), "", ErrUnknownDelivery},
	} {
		t.Run(c.name, func(t *testing.T) {
			d, err := tg.Resolve(ctx, c.ref)
			if !errors.Is(err, c.err) {
				t.Fatalf("Resolve error = %v, want %v", err, c.err)
			}
			if d.URL != c.want || d.Expired {
				t.Fatalf("Resolve = %+v, want %q", d, c.want)
			}
		})
	}
	if n := src.count(1); n != 1 {
		t.Errorf("delivery 1 loaded %d times, want once", n)
	}
}

func TestResolveExpired(t *testing.T) {
	src := newFakeSource()
	clk := clock.NewFake(t0)
	tg := NewTargets(src, TargetsOptions{Clock: clk, Fallback: "https://shop.example/", TTL: 365 * 24 * time.Hour})
	ctx := context.Background()
	if d, err := tg.Resolve(ctx, click(1, 0, "")); err != nil || d.Expired {
		t.Fatalf("before retention end: %+v, %v", d, err)
	}
	clk.Advance(180 * 24 * time.Hour)
	for _, ref := range []Ref{click(1, 0, ""), click(1, 2, "https://shop.example/p/1")} {
		d, err := tg.Resolve(ctx, ref)
		if err != nil || !d.Expired || d.URL != "https://shop.example/" {
			t.Errorf("after retention end: %+v, %v; want the fallback", d, err)
		}
	}
	// A per-delivery fallback wins; with none at all, the click is refused.
	src.sets[2] = TargetSet{Links: src.sets[2].Links, TrackUntil: t0, Fallback: "https://two.example/home"}
	if d, _ := tg.Resolve(ctx, click(2, 0, "")); d.URL != "https://two.example/home" {
		t.Errorf("per-delivery fallback: %+v", d)
	}
	bare := NewTargets(src, TargetsOptions{Clock: clk})
	if _, err := bare.Resolve(ctx, click(1, 0, "")); !errors.Is(err, ErrExpired) {
		t.Errorf("no fallback: %v, want ErrExpired", err)
	}
}

func TestTargetsCache(t *testing.T) {
	src := newFakeSource()
	clk := clock.NewFake(t0)
	tg := NewTargets(src, TargetsOptions{Clock: clk, TTL: time.Minute, Capacity: 2})
	ctx := context.Background()
	get := func(id int64) {
		t.Helper()
		if _, err := tg.Get(ctx, id); err != nil && !errors.Is(err, ErrUnknownDelivery) {
			t.Fatal(err)
		}
	}
	get(1)
	get(1)
	clk.Advance(59 * time.Second)
	get(1)
	if n := src.count(1); n != 1 {
		t.Fatalf("within TTL: %d loads, want 1", n)
	}
	clk.Advance(time.Second)
	get(1)
	if n := src.count(1); n != 2 {
		t.Fatalf("after TTL: %d loads, want 2", n)
	}

	// Capacity 2: using 1, then 2, then 3 evicts 2's predecessor in use order, which is 1.
	get(2)
	get(1) // 1 is now the most recent
	get(3) // evicts 2
	if tg.Len() != 2 {
		t.Fatalf("Len = %d, want 2", tg.Len())
	}
	get(1)
	if n := src.count(1); n != 2 {
		t.Errorf("recently used delivery was evicted: %d loads", n)
	}
	get(2)
	if n := src.count(2); n != 2 {
		t.Errorf("least recently used delivery was kept: %d loads, want 2", n)
	}

	// Not found is cached for the TTL; other errors are not cached.
	get(99)
	get(99)
	if n := src.count(99); n != 1 {
		t.Errorf("unknown delivery loaded %d times, want 1", n)
	}
	src.fail = errors.New("database is down")
	tg.Invalidate(3)
	for range 2 {
		if _, err := tg.Get(ctx, 3); err == nil {
			t.Fatal("load error not returned")
		}
	}
	if n := src.count(3); n != 3 {
		t.Errorf("failed loads: %d, want each retried (3 loads in all)", n)
	}
}

func TestTargetsConcurrentMissLoadsOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := newFakeSource()
		src.gate = make(chan struct{})
		tg := NewTargets(src, TargetsOptions{Clock: clock.NewFake(t0)})
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for range 8 {
			wg.Go(func() {
				d, err := tg.Resolve(context.Background(), click(2, 0, ""))
				if err == nil && d.URL != "https://two.example/" {
					err = fmt.Errorf("got %q", d.URL)
				}
				errs <- err
			})
		}
		synctest.Wait() // one goroutine loads, seven wait for it
		close(src.gate)
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Error(err)
			}
		}
		if n := src.count(2); n != 1 {
			t.Errorf("8 concurrent first clicks caused %d loads, want 1", n)
		}
	})
}

func BenchmarkResolveCached(b *testing.B) {
	tg := NewTargets(newFakeSource(), TargetsOptions{})
	ctx := context.Background()
	ref := click(2, 0, "")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := tg.Resolve(ctx, ref); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
