package web

import (
	"context"
	"net/http"

	"github.com/heraldhq/herald/internal/auth"
	"github.com/heraldhq/herald/internal/delivery"
	"github.com/heraldhq/herald/internal/sending"
	"github.com/heraldhq/herald/internal/tracking"
)

// sendingLogs returns the sending-log reader. It holds only the pool and the tracking links
// (for the mirror-page URLs of histories), so one per request costs nothing.
func (s *Server) sendingLogs() *sending.Logs {
	return sending.NewLogs(s.DB, sending.LogsConfig{Links: s.Links})
}

// pageParams parses the ?after= cursor and the ?limit= page size common to the log listings.
func pageParams(r *http.Request) (after int64, limit int, err error) {
	if after, err = queryInt(r, "after"); err != nil {
		return 0, 0, err
	}
	n, err := queryInt(r, "limit")
	return after, int(min(n, 1<<20)), err
}

// withIDPage is withID for the paginated listings: fn also gets ?after= and ?limit=.
func (s *Server) withIDPage(w http.ResponseWriter, r *http.Request, fn func(ctx context.Context, id, after int64, limit int) (any, error)) {
	after, limit, err := pageParams(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.withID(w, r, func(ctx context.Context, id int64) (any, error) { return fn(ctx, id, after, limit) })
}

// handleDeliveryLogs lists a delivery's sending log in id order, filtered by ?status=,
// ?reason= (a prefix of the failure reason) and ?domain= (the address's domain), paginated
// with ?after= (the next_after of the previous page) and ?limit=.
func (s *Server) handleDeliveryLogs(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	q := r.URL.Query()
	filter := sending.LogFilter{Status: q.Get("status"), Reason: q.Get("reason"), Domain: q.Get("domain")}
	s.withIDPage(w, r, func(ctx context.Context, id, after int64, limit int) (any, error) {
		return s.sendingLogs().List(ctx, id, filter, after, limit)
	})
}

// handleDeliveryExclusions lists who a delivery's preparation excluded, and why, in profile id
// order, filtered by ?reason=, paginated with ?after= and ?limit=.
func (s *Server) handleDeliveryExclusions(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	reason := delivery.Reason(r.URL.Query().Get("reason"))
	s.withIDPage(w, r, func(ctx context.Context, id, after int64, limit int) (any, error) {
		return s.Deliveries.Exclusions(ctx, id, reason, after, limit)
	})
}

// handleDeliveryTracking lists a delivery's tracking log in id order, filtered by ?kind=
// (open, click, mirror, optout), paginated with ?after= and ?limit=.
func (s *Server) handleDeliveryTracking(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	var kind tracking.Kind
	if k := r.URL.Query().Get("kind"); k != "" {
		var err error
		if kind, err = tracking.ParseKind(k); err != nil {
			s.fail(w, r, err)
			return
		}
	}
	s.withIDPage(w, r, func(ctx context.Context, id, after int64, limit int) (any, error) {
		return tracking.ListEvents(ctx, s.DB, id, kind, after, limit)
	})
}

// handleDeliveryLinks lists a delivery's links with their total and unique clicks.
func (s *Server) handleDeliveryLinks(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	s.withID(w, r, func(ctx context.Context, id int64) (any, error) {
		links, err := tracking.ClicksByLink(ctx, s.DB, id)
		return map[string]any{"links": links}, err
	})
}

// handleProfileHistory lists every message sent to a profile with its events, in the order
// deliveries were prepared, filtered by ?filter=received|opened|clicked, paginated with
// ?after= and ?limit=.
func (s *Server) handleProfileHistory(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	filter := r.URL.Query().Get("filter")
	s.withIDPage(w, r, func(ctx context.Context, id, after int64, limit int) (any, error) {
		return s.sendingLogs().History(ctx, id, filter, after, limit)
	})
}
