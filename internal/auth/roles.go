package auth

import (
	"fmt"
	"slices"
	"strings"
)

// Role is a permission, named as in Adobe Campaign Standard. A user's roles are the union of
// the roles given to it directly and those of its groups.
type Role string

// The roles of DESIGN.md §3.
const (
	// Administration may do everything, including users and settings.
	Administration Role = "Administration"
	// PrepareDeliveries may create, edit, prepare, proof and delete deliveries, never send.
	PrepareDeliveries Role = "Prepare deliveries"
	// ApproveDeliveries may approve or reject the content and target of deliveries.
	ApproveDeliveries Role = "Approve deliveries"
	// StartDeliveries has all of PrepareDeliveries, and may confirm, pause, resume and stop.
	StartDeliveries Role = "Start deliveries"
	// GenericImport may import profiles.
	GenericImport Role = "Generic import"
	// Export may export profiles and logs.
	Export Role = "Export"
	// Workflow may manage recurring deliveries, and can never send by itself.
	Workflow Role = "Workflow"
)

// AllRoles lists every role in the order of DESIGN.md §3.
var AllRoles = []Role{Administration, PrepareDeliveries, ApproveDeliveries, StartDeliveries, GenericImport, Export, Workflow}

// ParseRole returns the role with the given name (case-insensitive) or an error that lists the
// valid names.
func ParseRole(name string) (Role, error) {
	for _, r := range AllRoles {
		if strings.EqualFold(strings.TrimSpace(name), string(r)) {
			return r, nil
		}
	}
	names := make([]string, len(AllRoles))
	for i, r := range AllRoles {
		names[i] = fmt.Sprintf("%q", r)
	}
	return "", fmt.Errorf("unknown role %q; the roles are %s", name, strings.Join(names, ", "))
}

// Roles is the set of roles a user holds.
type Roles []Role

// Has reports whether the set grants r: directly, through Administration (which grants
// everything), or through Start deliveries (which includes Prepare deliveries).
func (rs Roles) Has(r Role) bool {
	if r == "" {
		return true
	}
	if slices.Contains(rs, r) || slices.Contains(rs, Administration) {
		return true
	}
	return r == PrepareDeliveries && slices.Contains(rs, StartDeliveries)
}

// normalize sorts the set in the order of AllRoles and drops duplicates.
func (rs Roles) normalize() Roles {
	out := Roles{}
	for _, r := range AllRoles {
		if slices.Contains(rs, r) {
			out = append(out, r)
		}
	}
	return out
}
