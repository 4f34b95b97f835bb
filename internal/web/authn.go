package web

import (
	"net/http"
	"strings"

	"github.com/heraldhq/herald/internal/auth"
	"github.com/heraldhq/herald/internal/problem"
)

// sessionCookie names the session cookie.
const sessionCookie = "herald_session"

// authenticate finds the caller from an `Authorization: Bearer` API token or the session
// cookie. A request that offers a token is judged by the token alone.
func (s *Server) authenticate(r *http.Request) (auth.Principal, error) {
	ip := clientIP(r)
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, token, ok := strings.Cut(h, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(token) == "" {
			return auth.Principal{}, &problem.Error{Kind: problem.Unauthenticated, Code: "unauthenticated",
				Message: "the Authorization header must be \"Bearer <token>\""}
		}
		return s.Auth.TokenPrincipal(r.Context(), strings.TrimSpace(token), ip)
	}
	c, err := r.Cookie(sessionCookie)
	if err != nil || c.Value == "" {
		return auth.Principal{}, &problem.Error{Kind: problem.Unauthenticated, Code: "unauthenticated",
			Message: "log in first: POST /api/v1/session, or send an API token as \"Authorization: Bearer <token>\""}
	}
	return s.Auth.Session(r.Context(), c.Value, ip)
}

func (s *Server) setSessionCookie(w http.ResponseWriter, value string, maxAge int) {
	http.SetCookie(w, &http.Cookie{
		Name:     sessionCookie,
		Value:    value,
		Path:     "/",
		MaxAge:   maxAge,
		HttpOnly: true,
		Secure:   strings.HasPrefix(s.Config.PublicURL, "https://"),
		SameSite: http.SameSiteLaxMode,
	})
}
