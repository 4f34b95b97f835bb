package web

import (
	"net/http"

	"github.com/heraldhq/herald/internal/auth"
)

// access is who may call a route: anyone (public), any authenticated user (role ""), or users
// holding role.
type access struct {
	public bool
	role   auth.Role
}

var (
	public        = access{public: true}
	authenticated = access{}
)

func needs(r auth.Role) access { return access{role: r} }

// handlerFunc is a route's handler; p is the authenticated caller (zero for public routes
// but for the client address).
type handlerFunc func(w http.ResponseWriter, r *http.Request, p auth.Principal)

// route is one endpoint: its method and path pattern, who may call it, and its handler. The
// OpenAPI document (openapi.json) lists the same routes; a test keeps the two in step.
type route struct {
	method  string
	pattern string
	access  access
	handler handlerFunc
}

// routeTable is every route of the HTTP API, with the role each needs, in one place.
func (s *Server) routeTable() []route {
	return []route{
		{"GET", "/healthz", public, s.handleHealth},
		{"GET", "/metrics", public, s.handleMetrics},
		{"GET", "/api/v1/openapi.json", public, s.handleOpenAPI},

		{"POST", "/api/v1/session", public, s.handleLogin},
		{"DELETE", "/api/v1/session", authenticated, s.handleLogout},
		{"GET", "/api/v1/me", authenticated, s.handleMe},

		{"GET", "/api/v1/users", needs(auth.Administration), s.handleListUsers},
		{"POST", "/api/v1/users", needs(auth.Administration), s.handleCreateUser},
		{"GET", "/api/v1/users/{id}", needs(auth.Administration), s.handleGetUser},
		{"PATCH", "/api/v1/users/{id}", needs(auth.Administration), s.handleUpdateUser},

		{"GET", "/api/v1/audit", needs(auth.Administration), s.handleAudit},

		{"GET", "/api/v1/quarantine", needs(auth.Administration), s.handleListQuarantine},
		{"POST", "/api/v1/quarantine/bulk", needs(auth.Administration), s.handleBulkQuarantine},
		{"GET", "/api/v1/quarantine/{channel}/{address}", needs(auth.Administration), s.handleGetQuarantine},
		{"PUT", "/api/v1/quarantine/{channel}/{address}", needs(auth.Administration), s.handleSetQuarantine},
	}
}
