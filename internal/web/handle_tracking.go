package web

import (
	"net/http"

	"github.com/heraldhq/herald/internal/auth"
)

// tracked adapts a tracking endpoint (tracking.Handlers: Open, Click, Mirror, OptOutPage,
// OptOut), a plain http.HandlerFunc that needs no caller, to a public route of the table.
func tracked(h http.HandlerFunc) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request, _ auth.Principal) { h(w, r) }
}
