package web

import (
	"net/http"

	"github.com/heraldhq/herald/internal/auth"
	"github.com/heraldhq/herald/internal/webhook"
)

func (s *Server) handleListWebhooks(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	list, err := s.Webhooks.List(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"endpoints": list})
}

// handleCreateWebhook registers an endpoint; the answer holds its secret, shown only here.
func (s *Server) handleCreateWebhook(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	var req webhook.NewEndpoint
	if err := s.decode(w, r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	e, err := s.Webhooks.Create(r.Context(), p.Actor(), req)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, e)
}

func (s *Server) handleDeleteWebhook(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	id, err := pathID(r, "id")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if err := s.Webhooks.Delete(r.Context(), p.Actor(), id); err != nil {
		s.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
