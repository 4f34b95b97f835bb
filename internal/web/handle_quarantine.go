package web

import (
	"net/http"

	"github.com/heraldhq/herald/internal/auth"
	"github.com/heraldhq/herald/internal/problem"
	"github.com/heraldhq/herald/internal/quarantine"
)

// bulkBodyLimit caps the body of a bulk quarantine edit: MaxBulkChanges changes with
// long addresses and reasons do not fit in the default 1 MiB.
const bulkBodyLimit = 8 << 20

// handleListQuarantine lists quarantine entries, newest-updated first or by address
// (?order=address); ?after= pages with the next_after of the previous answer.
func (s *Server) handleListQuarantine(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	v := r.URL.Query()
	limit, err := queryInt(r, "limit")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	page, err := s.Quarantine.List(r.Context(), quarantine.Query{
		Channel:       quarantine.Channel(v.Get("channel")),
		Status:        quarantine.Status(v.Get("status")),
		AddressPrefix: v.Get("address_prefix"),
		Order:         quarantine.Order(v.Get("order")),
		After:         v.Get("after"),
		Limit:         int(limit),
	})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var next any
	if page.NextAfter != "" {
		next = page.NextAfter
	}
	writeJSON(w, http.StatusOK, map[string]any{"entries": page.Entries, "next_after": next})
}

// quarantineAddress reads the {channel} and {address} path segments. An address holding
// a slash (a Web Push endpoint) arrives percent-encoded as %2F.
func quarantineAddress(r *http.Request) (quarantine.Channel, string, error) {
	ch, err := quarantine.ParseChannel(r.PathValue("channel"))
	if err != nil {
		return "", "", err
	}
	addr, err := quarantine.NormalizeAddress(ch, r.PathValue("address"))
	return ch, addr, err
}

// handleGetQuarantine answers where one address stands, with its history; an address
// never seen is valid with an empty history.
func (s *Server) handleGetQuarantine(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	ch, addr, err := quarantineAddress(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	e, err := s.Quarantine.Get(r.Context(), ch, addr)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	h, err := s.Quarantine.History(r.Context(), ch, addr)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"entry": e, "history": h})
}

// quarantineEdit is the body of PUT /api/v1/quarantine/{channel}/{address}.
type quarantineEdit struct {
	Status string `json:"status"`
	Reason string `json:"reason"`
}

// handleSetQuarantine is an administrator's edit of one address.
func (s *Server) handleSetQuarantine(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	ch, addr, err := quarantineAddress(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var req quarantineEdit
	if err := s.decode(w, r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	if req.Status == "" {
		s.fail(w, r, problem.Invalidf("status", "status is required: one of valid, erroneous, quarantine, denylist"))
		return
	}
	e, err := s.Quarantine.Set(r.Context(), p.Actor(), ch, addr, quarantine.Status(req.Status), req.Reason)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, e)
}

// quarantineBulk is the body of POST /api/v1/quarantine/bulk.
type quarantineBulk struct {
	Changes []quarantine.Change `json:"changes"`
}

// handleBulkQuarantine applies up to quarantine.MaxBulkChanges edits, all or nothing; a
// refusal lists every bad change with its index in error.details.
func (s *Server) handleBulkQuarantine(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	var req quarantineBulk
	if err := s.decodeLimit(w, r, &req, max(s.Config.MaxBodyBytes, bulkBodyLimit)); err != nil {
		s.fail(w, r, err)
		return
	}
	n, err := s.Quarantine.SetBulk(r.Context(), p.Actor(), req.Changes)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"changed": n})
}
