package web

import (
	"net/http"

	"github.com/heraldhq/herald/internal/auth"
	"github.com/heraldhq/herald/internal/delivery"
	"github.com/heraldhq/herald/internal/sending"
	"github.com/heraldhq/herald/internal/tracking"
)

// sendingLogs returns the sending-log reader. It holds only the pool, so one per request
// costs nothing. It has no tracking.Links yet (Deps carries none), so histories leave out
// their mirror-page URLs.
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

// handleDeliveryLogs lists a delivery's sending log in id order, filtered by ?status=,
// ?reason= (a prefix of the failure reason) and ?domain= (the address's domain), paginated
// with ?after= (the next_after of the previous page) and ?limit=.
func (s *Server) handleDeliveryLogs(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	id, err := pathID(r, "id")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	after, limit, err := pageParams(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	q := r.URL.Query()
	page, err := s.sendingLogs().List(r.Context(), id, sending.LogFilter{Status: q.Get("status"), Reason: q.Get("reason"), Domain: q.Get("domain")}, after, limit)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, page)
}

// handleDeliveryExclusions lists who a delivery's preparation excluded, and why, in profile id
// order, filtered by ?reason=, paginated with ?after= and ?limit=.
func (s *Server) handleDeliveryExclusions(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	id, err := pathID(r, "id")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	after, limit, err := pageParams(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	page, err := s.Deliveries.Exclusions(r.Context(), id, delivery.Reason(r.URL.Query().Get("reason")), after, limit)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, page)
}

// handleDeliveryTracking lists a delivery's tracking log in id order, filtered by ?kind=
// (open, click, mirror, optout), paginated with ?after= and ?limit=.
func (s *Server) handleDeliveryTracking(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	id, err := pathID(r, "id")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	after, limit, err := pageParams(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var kind tracking.Kind
	if k := r.URL.Query().Get("kind"); k != "" {
		if kind, err = tracking.ParseKind(k); err != nil {
			s.fail(w, r, err)
			return
		}
	}
	page, err := tracking.ListEvents(r.Context(), s.DB, id, kind, after, limit)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, page)
}

// handleDeliveryLinks lists a delivery's links with their total and unique clicks.
func (s *Server) handleDeliveryLinks(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	id, err := pathID(r, "id")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	links, err := tracking.ClicksByLink(r.Context(), s.DB, id)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"links": links})
}

// handleProfileHistory lists every message sent to a profile with its events, in the order
// deliveries were prepared, filtered by ?filter=received|opened|clicked, paginated with
// ?after= and ?limit=.
func (s *Server) handleProfileHistory(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	id, err := pathID(r, "id")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	after, limit, err := pageParams(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	page, err := s.sendingLogs().History(r.Context(), id, r.URL.Query().Get("filter"), after, limit)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, page)
}
