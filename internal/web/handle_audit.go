package web

import (
	"net/http"

	"github.com/heraldhq/herald/internal/audit"
	"github.com/heraldhq/herald/internal/auth"
)

// handleAudit lists audit entries, newest first; ?before_id= pages backwards.
func (s *Server) handleAudit(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	q := r.URL.Query()
	var err error
	aq := audit.Query{ObjectType: q.Get("object_type"), ObjectID: q.Get("object_id"), Action: q.Get("action")}
	if aq.ActorID, err = queryInt(r, "actor_id"); err == nil {
		if aq.BeforeID, err = queryInt(r, "before_id"); err == nil {
			var limit int64
			limit, err = queryInt(r, "limit")
			aq.Limit = int(limit)
		}
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	entries, err := audit.List(r.Context(), s.DB, aq)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	resp := map[string]any{"entries": entries}
	if n := len(entries); n > 0 && (aq.Limit == 0 && n == 100 || n == aq.Limit) {
		resp["next_before_id"] = entries[n-1].ID
	}
	writeJSON(w, http.StatusOK, resp)
}
