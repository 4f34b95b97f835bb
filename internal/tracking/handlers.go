package tracking

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/content"
	"github.com/heraldhq/herald/internal/problem"
	"github.com/heraldhq/herald/internal/profile"
	"github.com/heraldhq/herald/internal/store"
)

// HandlersOptions are what the tracking endpoints need.
type HandlersOptions struct {
	Signer   *Signer
	Targets  *Targets
	Recorder *Recorder
	// Sink writes opt-outs at once, outside the Recorder, so that a one-click unsubscribe is
	// stored before it is answered.
	Sink Sink
	// Mirror renders mirror pages; nil answers them 404.
	Mirror *MirrorPages
	Clock  clock.Clock
	Log    *slog.Logger
}

// Handlers are the public tracking endpoints (DESIGN.md §7), as plain http.HandlerFuncs that read
// the token from the {token} path value (or the path's last segment). Every invalid token, of
// any kind, gets the same 404. A nil *Handlers answers 404 everywhere.
type Handlers struct {
	o HandlersOptions
}

// NewHandlers returns the endpoints.
func NewHandlers(o HandlersOptions) *Handlers {
	if o.Clock == nil {
		o.Clock = clock.Real{}
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	return &Handlers{o: o}
}

// pixel is a transparent 1×1 GIF.
var pixel = []byte("GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")

func token(r *http.Request) string {
	if t := r.PathValue("token"); t != "" {
		return t
	}
	return r.URL.Path[strings.LastIndexByte(r.URL.Path, '/')+1:]
}

// verify returns the token's ref when it is valid and of kind k; otherwise it answers 404.
func (h *Handlers) verify(w http.ResponseWriter, r *http.Request, k Kind) (Ref, bool) {
	if h == nil {
		http.NotFound(w, r)
		return Ref{}, false
	}
	ref, err := h.o.Signer.Verify(token(r))
	if err != nil || ref.Kind != k {
		notFound(w, "This link is not valid.")
		return Ref{}, false
	}
	return ref, true
}

func notFound(w http.ResponseWriter, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusNotFound)
	_, _ = w.Write([]byte(msg + "\n"))
}

func (h *Handlers) hit(r *http.Request, ref Ref, k Kind) Hit {
	ip, _ := netip.ParseAddrPort(r.RemoteAddr)
	return Hit{Ref: ref, Kind: k, At: h.o.Clock.Now(), UserAgent: r.UserAgent(), IP: ip.Addr()}
}

// Open serves GET /t/o/{token}: the 1×1 GIF. It verifies the token, queues the hit and answers,
// never waiting on the database.
func (h *Handlers) Open(w http.ResponseWriter, r *http.Request) {
	ref, ok := h.verify(w, r, KindOpen)
	if !ok {
		return
	}
	h.o.Recorder.Record(h.hit(r, ref, KindOpen))
	hd := w.Header()
	hd["Content-Type"] = []string{"image/gif"}
	hd["Cache-Control"] = []string{"no-store, no-cache, must-revalidate, private"}
	hd["Content-Length"] = []string{"43"}
	_, _ = w.Write(pixel)
}

// Click serves GET /t/c/{token}: a 302 to the link's URL (or the URL signed in the token for a
// personalised link), only ever a URL the delivery contains. Clicks past the tracking retention
// go to the fallback and are not recorded.
func (h *Handlers) Click(w http.ResponseWriter, r *http.Request) {
	ref, ok := h.verify(w, r, KindClick)
	if !ok {
		return
	}
	dest, err := h.o.Targets.Resolve(r.Context(), ref)
	if err != nil {
		if p, ok := problem.As(err); ok && p.Kind == problem.NotFound {
			notFound(w, p.Message+".")
			return
		}
		h.o.Log.Error("tracking: resolve a click", "delivery", ref.DeliveryID, "err", err)
		http.Error(w, "This link cannot be followed right now; please try again in a moment.", http.StatusServiceUnavailable)
		return
	}
	if !dest.Expired {
		h.o.Recorder.Record(h.hit(r, ref, KindClick))
	}
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Referrer-Policy", "no-referrer")
	http.Redirect(w, r, dest.URL, http.StatusFound)
}

// Mirror serves GET /t/m/{token}: the message as the recipient received it, rendered again
// for their profile. It reads the database; it is not a hot path.
func (h *Handlers) Mirror(w http.ResponseWriter, r *http.Request) {
	ref, ok := h.verify(w, r, KindMirror)
	if !ok {
		return
	}
	if h.o.Mirror == nil {
		notFound(w, "This page is not available.")
		return
	}
	page, err := h.o.Mirror.Render(r.Context(), ref)
	if err != nil {
		if _, ok := problem.As(err); ok {
			notFound(w, "This message is no longer available.")
			return
		}
		h.o.Log.Error("tracking: mirror page", "delivery", ref.DeliveryID, "log", ref.LogID, "err", err)
		http.Error(w, "This page cannot be shown right now; please try again in a moment.", http.StatusServiceUnavailable)
		return
	}
	h.o.Recorder.Record(h.hit(r, ref, KindMirror))
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Security-Policy", "script-src 'none'; object-src 'none'; base-uri 'none'")
	w.Header().Set("Referrer-Policy", "no-referrer")
	_, _ = w.Write(page)
}

var optOutPage = template.Must(template.New("optout").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{if .Done}}You are unsubscribed{{else}}Unsubscribe{{end}}</title></head>
<body style="font-family: sans-serif; max-width: 32em; margin: 3em auto; padding: 0 1em">
{{if .Done}}<h1>You are unsubscribed</h1><p>You will no longer receive these messages.</p>
{{else}}<h1>Unsubscribe</h1><p>Do you want to stop receiving these messages?</p>
<form method="post" action="{{.Action}}"><input type="hidden" name="List-Unsubscribe" value="One-Click">
<button type="submit">Unsubscribe</button></form>{{end}}
</body></html>
`))

// OptOutPage serves GET /t/u/{token}: a confirmation page whose form posts to the same URL. A
// GET changes nothing, since link scanners follow links.
func (h *Handlers) OptOutPage(w http.ResponseWriter, r *http.Request) {
	if _, ok := h.verify(w, r, KindOptOut); !ok {
		return
	}
	h.page(w, http.StatusOK, false, r.URL.Path)
}

// OptOut serves POST /t/u/{token}: the RFC 8058 one-click unsubscribe and the confirmation
// form's target. The opt-out is written before the answer: 200 means it is stored.
func (h *Handlers) OptOut(w http.ResponseWriter, r *http.Request) {
	ref, ok := h.verify(w, r, KindOptOut)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	if err := h.o.Sink.WriteHits(ctx, []Hit{h.hit(r, ref, KindOptOut)}); err != nil {
		h.o.Log.Error("tracking: opt-out", "delivery", ref.DeliveryID, "log", ref.LogID, "err", err)
		http.Error(w, "Your request could not be saved; please try again in a moment.", http.StatusServiceUnavailable)
		return
	}
	h.page(w, http.StatusOK, true, r.URL.Path)
}

func (h *Handlers) page(w http.ResponseWriter, status int, done bool, action string) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = optOutPage.Execute(w, struct {
		Done   bool
		Action string
	}{done, action})
}

// MirrorPages renders mirror pages: the delivery's content for the row's profile, with the
// recipient's tracked links, mirror and opt-out URLs and no open pixel.
type MirrorPages struct {
	db       *store.DB
	profiles *profile.Service
	links    *Links
	targets  *Targets
}

// NewMirrorPages returns the renderer; links builds the tracked URLs put in the page and targets
// gives the delivery's links.
func NewMirrorPages(db *store.DB, profiles *profile.Service, links *Links, targets *Targets) *MirrorPages {
	return &MirrorPages{db: db, profiles: profiles, links: links, targets: targets}
}

// Render returns the HTML page of ref's row (the text part in a <pre> when the message has no
// HTML). A missing delivery, row or profile is a problem.NotFound.
func (m *MirrorPages) Render(ctx context.Context, ref Ref) ([]byte, error) {
	var profileID int64
	var raw string
	err := m.db.Read.QueryRowContext(ctx, `SELECT s.profile_id, d.content FROM sending_log s JOIN deliveries d
		ON d.id = s.delivery_id WHERE s.id = $1 AND s.delivery_id = $2`, ref.LogID, ref.DeliveryID).Scan(&profileID, &raw)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, problem.NotFoundf("there is no such message")
	}
	if err != nil {
		return nil, fmt.Errorf("mirror page: %w", err)
	}
	var c content.Content
	if err := json.Unmarshal([]byte(raw), &c); err != nil {
		return nil, fmt.Errorf("mirror page of delivery %d: content: %w", ref.DeliveryID, err)
	}
	tpl, err := content.Compile(c, content.Options{})
	if err != nil {
		return nil, fmt.Errorf("mirror page of delivery %d: %w", ref.DeliveryID, err)
	}
	p, err := m.profiles.Get(ctx, profileID)
	if err != nil {
		return nil, err
	}
	rec, err := m.links.Recipient(ref.LogID, ref.DeliveryID)
	if err != nil {
		return nil, err
	}
	attrs, _ := json.Marshal(p.Attributes)
	decoded, err := content.DecodeAttributes(attrs)
	if err != nil {
		return nil, err
	}
	rc := &content.Recipient{ID: p.ID, Email: p.Email, Phone: p.Phone, Locale: p.Locale, TimeZone: p.TimeZone,
		ExternalID: p.ExternalID, CreatedAt: p.CreatedAt, Attributes: decoded,
		UnsubscribeURL: rec.OptOut(), MirrorURL: rec.Mirror()}
	var opts content.RenderOptions
	if set, err := m.targets.Get(ctx, ref.DeliveryID); err == nil {
		opts.LinkRewriter = rec.Rewriter(set.Links)
	}
	msg, err := tpl.NewRenderer().Render(rc, opts)
	if err != nil {
		return nil, fmt.Errorf("mirror page of delivery %d: %w", ref.DeliveryID, err)
	}
	if len(msg.HTML) > 0 {
		return append([]byte(nil), msg.HTML...), nil
	}
	var b strings.Builder
	b.WriteString(`<!doctype html><meta charset="utf-8"><title>`)
	template.HTMLEscape(&b, []byte(msg.Subject))
	b.WriteString(`</title><pre style="white-space: pre-wrap">`)
	template.HTMLEscape(&b, msg.Text)
	b.WriteString(`</pre>`)
	return []byte(b.String()), nil
}
