package web

import (
	"net/http"

	"github.com/heraldhq/herald/internal/auth"
	"github.com/heraldhq/herald/internal/problem"
)

type loginRequest struct {
	Login    string `json:"login"`
	Password string `json:"password"`
}

// handleLogin opens a session and sets its cookie.
func (s *Server) handleLogin(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	var req loginRequest
	if err := s.decode(w, r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	if req.Login == "" || req.Password == "" {
		s.fail(w, r, problem.Invalidf("login", "send both \"login\" and \"password\""))
		return
	}
	me, token, err := s.Auth.Login(r.Context(), req.Login, req.Password, p.IP)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.setSessionCookie(w, token, int(s.Auth.SessionTTL.Seconds()))
	writeJSON(w, http.StatusOK, me)
}

// handleLogout ends the caller's session.
func (s *Server) handleLogout(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	if c, err := r.Cookie(sessionCookie); err == nil {
		if err := s.Auth.Logout(r.Context(), c.Value); err != nil {
			s.fail(w, r, err)
			return
		}
	}
	s.setSessionCookie(w, "", -1)
	w.WriteHeader(http.StatusNoContent)
}

// handleMe describes the caller.
func (s *Server) handleMe(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	writeJSON(w, http.StatusOK, p)
}
