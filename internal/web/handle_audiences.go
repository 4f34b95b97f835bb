package web

import (
	"context"
	"net/http"

	"github.com/heraldhq/herald/internal/audience"
	"github.com/heraldhq/herald/internal/auth"
)

func (s *Server) handleCreateAudience(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	var req audience.New
	if err := s.decode(w, r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	a, err := s.Audiences.Create(r.Context(), p.Actor(), req)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, a)
}

func (s *Server) handleListAudiences(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	list, err := s.Audiences.List(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"audiences": list})
}

func (s *Server) handleGetAudience(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	s.withID(w, r, func(ctx context.Context, id int64) (any, error) { return s.Audiences.Get(ctx, id) })
}

type audienceUpdate struct {
	Name   *string `json:"name"`
	Filter *string `json:"filter"`
}

func (s *Server) handleUpdateAudience(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	var req audienceUpdate
	s.withIDBody(w, r, &req, func(ctx context.Context, id int64) (any, error) {
		return s.Audiences.Update(ctx, p.Actor(), id, req.Name, req.Filter)
	})
}

func (s *Server) handleDeleteAudience(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	id, err := pathID(r, "id")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if err := s.Audiences.Delete(r.Context(), p.Actor(), id); err != nil {
		s.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handleCountAudience(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	s.withID(w, r, func(ctx context.Context, id int64) (any, error) {
		n, err := s.Audiences.Count(ctx, id)
		return map[string]any{"audience_id": id, "count": n}, err
	})
}

// handlePreviewAudience lists the audience's first profiles (?limit=, default 20).
func (s *Server) handlePreviewAudience(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	id, err := pathID(r, "id")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	limit, err := queryInt(r, "limit")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if limit == 0 {
		limit = 20
	}
	where, err := s.Audiences.Where(r.Context(), id, "", 1)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	page, err := s.Profiles.List(r.Context(), where, 0, int(limit))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"audience_id": id, "profiles": page.Profiles})
}

type membersRequest struct {
	ProfileIDs []int64 `json:"profile_ids"`
}

func (s *Server) handleAddMembers(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	s.members(w, r, p, true)
}

func (s *Server) handleRemoveMembers(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	s.members(w, r, p, false)
}

func (s *Server) members(w http.ResponseWriter, r *http.Request, p auth.Principal, add bool) {
	id, err := pathID(r, "id")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var req membersRequest
	if err := s.decode(w, r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	if add {
		err = s.Audiences.AddMembers(r.Context(), p.Actor(), id, req.ProfileIDs)
	} else {
		err = s.Audiences.RemoveMembers(r.Context(), p.Actor(), id, req.ProfileIDs)
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	n, err := s.Audiences.Count(r.Context(), id)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"audience_id": id, "count": n})
}
