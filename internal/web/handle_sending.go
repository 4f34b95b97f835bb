package web

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/heraldhq/herald/internal/auth"
	"github.com/heraldhq/herald/internal/delivery"
	"github.com/heraldhq/herald/internal/sending"
)

// eventsInterval is how often the live events of a delivery say where its send stands.
const eventsInterval = time.Second

// handleDeliveryEvents streams a delivery's progress as Server-Sent Events ("progress"
// events with the state and the progress object), every second until the delivery is
// finished, failed or stopped, or the client leaves.
func (s *Server) handleDeliveryEvents(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	id, err := pathID(r, "id")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	ctx := r.Context()
	if _, err := s.Deliveries.Get(ctx, id); err != nil {
		s.fail(w, r, err)
		return
	}
	flusher, _ := w.(http.Flusher)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	tick := time.NewTicker(eventsInterval)
	defer tick.Stop()
	for {
		d, err := s.Deliveries.Get(ctx, id)
		if err != nil {
			return
		}
		p, err := sending.ProgressOf(ctx, s.DB, s.Clock, id)
		if err != nil {
			return
		}
		s.noteWaiting(&p, d.State)
		data, _ := json.Marshal(map[string]any{"id": id, "state": d.State, "progress": p})
		if _, err := fmt.Fprintf(w, "event: progress\ndata: %s\n\n", data); err != nil {
			return
		}
		if flusher != nil {
			flusher.Flush()
		}
		if d.State == delivery.Finished || d.State == delivery.Failed || d.State == delivery.Stopped {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// handleListCaptured lists the messages capture mode kept, newest first, without their data;
// ?delivery_id= selects one delivery, ?before= pages with the next_before of the last answer.
func (s *Server) handleListCaptured(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	var q sending.CapturedQuery
	for name, dst := range map[string]*int64{"delivery_id": &q.DeliveryID, "before": &q.Before} {
		v, err := queryInt(r, name)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		*dst = v
	}
	limit, err := queryInt(r, "limit")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	q.Limit = int(limit)
	page, err := sending.ListCaptured(r.Context(), s.DB, q)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, page)
}

// handleGetCaptured answers one captured message as it would have gone out (message/rfc822).
func (s *Server) handleGetCaptured(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	id, err := pathID(r, "id")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	c, err := sending.GetCaptured(r.Context(), s.DB, id)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "message/rfc822")
	w.Header().Set("Content-Disposition", fmt.Sprintf(`inline; filename="captured-%d.eml"`, id))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(c.Data)
}

// noteWaiting tells, in the progress of a delivery that is sending, why nothing goes out when
// no relay can be used.
func (s *Server) noteWaiting(p *sending.Progress, st delivery.State) {
	if s.Sending != nil && (st == delivery.Sending || st == delivery.Retrying) {
		p.Waiting = s.Sending.Waiting()
	}
}
