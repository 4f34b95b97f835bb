package web

import (
	"net/http"
	"strings"

	"github.com/heraldhq/herald/internal/auth"
)

// access is who may call a route: anyone (public), any authenticated user (no roles), or
// users holding at least one of roles.
type access struct {
	public bool
	roles  []auth.Role
}

var (
	public        = access{public: true}
	authenticated = access{}
)

func needs(r auth.Role) access { return access{roles: []auth.Role{r}} }

func anyOf(rs ...auth.Role) access { return access{roles: rs} }

// describe names the access as openapi.json's x-herald-role does.
func (a access) describe() string {
	switch {
	case a.public:
		return "public"
	case len(a.roles) == 0:
		return "authenticated"
	}
	names := make([]string, len(a.roles))
	for i, r := range a.roles {
		names[i] = string(r)
	}
	return strings.Join(names, " | ")
}

// readProfiles may read profiles and audiences: those who build, check, import or export
// targets.
var readProfiles = anyOf(auth.PrepareDeliveries, auth.ApproveDeliveries, auth.GenericImport, auth.Export)

// readDeliveries may read a delivery's logs: those who build, check or export deliveries.
var readDeliveries = anyOf(auth.PrepareDeliveries, auth.ApproveDeliveries, auth.Export)

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

		// Tracking: public, signed tokens; see internal/tracking.
		{"GET", "/t/o/{token}", public, tracked(s.Tracking.Open)},
		{"GET", "/t/c/{token}", public, tracked(s.Tracking.Click)},
		{"GET", "/t/m/{token}", public, tracked(s.Tracking.Mirror)},
		{"GET", "/t/u/{token}", public, tracked(s.Tracking.OptOutPage)},
		{"POST", "/t/u/{token}", public, tracked(s.Tracking.OptOut)},

		{"POST", "/api/v1/session", public, s.handleLogin},
		{"DELETE", "/api/v1/session", authenticated, s.handleLogout},
		{"GET", "/api/v1/me", authenticated, s.handleMe},

		{"GET", "/api/v1/users", needs(auth.Administration), s.handleListUsers},
		{"POST", "/api/v1/users", needs(auth.Administration), s.handleCreateUser},
		{"GET", "/api/v1/users/{id}", needs(auth.Administration), s.handleGetUser},
		{"PATCH", "/api/v1/users/{id}", needs(auth.Administration), s.handleUpdateUser},

		{"GET", "/api/v1/audit", needs(auth.Administration), s.handleAudit},

		{"POST", "/api/v1/profiles", needs(auth.GenericImport), s.handleUpsertProfile},
		{"GET", "/api/v1/profiles", readProfiles, s.handleListProfiles},
		{"POST", "/api/v1/profiles/import", needs(auth.GenericImport), s.handleImportProfiles},
		{"GET", "/api/v1/profiles/{id}", readProfiles, s.handleGetProfile},
		{"PATCH", "/api/v1/profiles/{id}", needs(auth.GenericImport), s.handleUpdateProfile},
		{"DELETE", "/api/v1/profiles/{id}", needs(auth.Administration), s.handleEraseProfile},
		{"GET", "/api/v1/profiles/{id}/export", needs(auth.Export), s.handleExportProfile},
		{"GET", "/api/v1/profiles/{id}/history", readProfiles, s.handleProfileHistory},

		{"POST", "/api/v1/audiences", needs(auth.PrepareDeliveries), s.handleCreateAudience},
		{"GET", "/api/v1/audiences", readProfiles, s.handleListAudiences},
		{"GET", "/api/v1/audiences/{id}", readProfiles, s.handleGetAudience},
		{"PATCH", "/api/v1/audiences/{id}", needs(auth.PrepareDeliveries), s.handleUpdateAudience},
		{"DELETE", "/api/v1/audiences/{id}", needs(auth.PrepareDeliveries), s.handleDeleteAudience},
		{"GET", "/api/v1/audiences/{id}/count", readProfiles, s.handleCountAudience},
		{"GET", "/api/v1/audiences/{id}/preview", readProfiles, s.handlePreviewAudience},
		{"POST", "/api/v1/audiences/{id}/members", needs(auth.PrepareDeliveries), s.handleAddMembers},
		{"DELETE", "/api/v1/audiences/{id}/members", needs(auth.PrepareDeliveries), s.handleRemoveMembers},

		{"POST", "/api/v1/deliveries", needs(auth.PrepareDeliveries), s.handleCreateDelivery},
		{"GET", "/api/v1/deliveries", authenticated, s.handleListDeliveries},
		{"GET", "/api/v1/deliveries/{id}", authenticated, s.handleGetDelivery},
		{"PATCH", "/api/v1/deliveries/{id}", needs(auth.PrepareDeliveries), s.handleUpdateDelivery},
		{"DELETE", "/api/v1/deliveries/{id}", needs(auth.PrepareDeliveries), s.handleDeleteDelivery},
		{"GET", "/api/v1/deliveries/{id}/preview", anyOf(auth.PrepareDeliveries, auth.ApproveDeliveries), s.handlePreviewDelivery},
		{"POST", "/api/v1/deliveries/{id}/prepare", needs(auth.PrepareDeliveries), s.handlePrepareDelivery},
		{"POST", "/api/v1/deliveries/{id}/proof", needs(auth.PrepareDeliveries), s.handleProof},
		{"GET", "/api/v1/deliveries/{id}/proofs", authenticated, s.handleListProofs},
		{"POST", "/api/v1/deliveries/{id}/approvals", needs(auth.ApproveDeliveries), s.handleDecide},
		{"GET", "/api/v1/deliveries/{id}/approvals", authenticated, s.handleListApprovals},
		{"POST", "/api/v1/deliveries/{id}/confirm", needs(auth.StartDeliveries), s.handleConfirm},
		{"POST", "/api/v1/deliveries/{id}/pause", needs(auth.StartDeliveries), s.handlePause},
		{"POST", "/api/v1/deliveries/{id}/resume", needs(auth.StartDeliveries), s.handleResume},
		{"POST", "/api/v1/deliveries/{id}/stop", needs(auth.StartDeliveries), s.handleStop},
		{"GET", "/api/v1/deliveries/{id}/events", authenticated, s.handleDeliveryEvents},
		{"GET", "/api/v1/deliveries/{id}/logs", readDeliveries, s.handleDeliveryLogs},
		{"GET", "/api/v1/deliveries/{id}/exclusions", readDeliveries, s.handleDeliveryExclusions},
		{"GET", "/api/v1/deliveries/{id}/tracking", readDeliveries, s.handleDeliveryTracking},
		{"GET", "/api/v1/deliveries/{id}/links", readDeliveries, s.handleDeliveryLinks},
		{"GET", "/api/v1/captured", authenticated, s.handleListCaptured},
		{"GET", "/api/v1/captured/{id}", authenticated, s.handleGetCaptured},
		{"POST", "/api/v1/deliveries/{id}/compute-stats", anyOf(auth.PrepareDeliveries, auth.ApproveDeliveries, auth.Export), s.handleComputeStats},
		{"GET", "/api/v1/typology-rules", authenticated, s.handleListRules},
		{"POST", "/api/v1/typology-rules", needs(auth.Administration), s.handleCreateRule},
		{"PUT", "/api/v1/typology-rules/{id}", needs(auth.Administration), s.handleUpdateRule},

		{"GET", "/api/v1/event-webhooks", needs(auth.Administration), s.handleListWebhooks},
		{"POST", "/api/v1/event-webhooks", needs(auth.Administration), s.handleCreateWebhook},
		{"DELETE", "/api/v1/event-webhooks/{id}", needs(auth.Administration), s.handleDeleteWebhook},

		// Bounce webhooks: public, the provider's signature is the authentication.
		{"POST", "/api/v1/webhooks/bounces/{provider}", public, s.Bounces.handleProvider},
		{"GET", "/api/v1/webhooks/bounces/generic/secret", needs(auth.Administration), s.Bounces.handleGenericSecret},

		{"GET", "/api/v1/quarantine", needs(auth.Administration), s.handleListQuarantine},
		{"POST", "/api/v1/quarantine/bulk", needs(auth.Administration), s.handleBulkQuarantine},
		{"GET", "/api/v1/quarantine/{channel}/{address}", needs(auth.Administration), s.handleGetQuarantine},
		{"PUT", "/api/v1/quarantine/{channel}/{address}", needs(auth.Administration), s.handleSetQuarantine},
	}
}
