package web

import (
	"net/http"

	"github.com/heraldhq/herald/internal/auth"
)

func (s *Server) handleListUsers(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	users, err := s.Auth.ListUsers(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"users": users})
}

func (s *Server) handleCreateUser(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	var req auth.NewUser
	if err := s.decode(w, r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	u, err := s.Auth.CreateUser(r.Context(), p.Actor(), req)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, u)
}

func (s *Server) handleGetUser(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	id, err := pathID(r, "id")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	u, err := s.Auth.GetUser(r.Context(), id)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, u)
}

func (s *Server) handleUpdateUser(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	id, err := pathID(r, "id")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var req auth.UserUpdate
	if err := s.decode(w, r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	u, err := s.Auth.UpdateUser(r.Context(), p.Actor(), id, req)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, u)
}
