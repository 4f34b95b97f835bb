package web

import (
	"context"
	"net/http"
	"strings"

	"github.com/heraldhq/herald/internal/audience"
	"github.com/heraldhq/herald/internal/audience/filter"
	"github.com/heraldhq/herald/internal/auth"
	"github.com/heraldhq/herald/internal/problem"
	"github.com/heraldhq/herald/internal/profile"
)

// MaxImportBytes caps a CSV import sent over HTTP.
const MaxImportBytes = 4 << 30

// handleUpsertProfile creates a profile, or updates the one with the same external id or
// email: 201 when created, 200 when it existed.
func (s *Server) handleUpsertProfile(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	var in profile.Input
	if err := s.decode(w, r, &in); err != nil {
		s.fail(w, r, err)
		return
	}
	out, created, err := s.Profiles.Upsert(r.Context(), p.Actor(), in)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	writeJSON(w, status, out)
}

// handleListProfiles lists profiles in id order, filtered by ?filter= (the audience filter
// language), paginated with ?after= and ?limit=.
func (s *Server) handleListProfiles(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	after, err := queryInt(r, "after")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	limit, err := queryInt(r, "limit")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var where profile.Where
	if src := r.URL.Query().Get("filter"); strings.TrimSpace(src) != "" {
		e, err := audience.CheckFilter(src)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		sqlText, args, err := filter.Compile(e, s.DB.Engine, 1, s.Clock.Now())
		if err != nil {
			s.fail(w, r, problem.Invalidf("filter", "%v", err))
			return
		}
		where = profile.Where{SQL: sqlText, Args: args}
	}
	page, err := s.Profiles.List(r.Context(), where, after, int(limit))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, page)
}

func (s *Server) handleGetProfile(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	s.withID(w, r, func(ctx context.Context, id int64) (any, error) { return s.Profiles.Get(ctx, id) })
}

func (s *Server) handleUpdateProfile(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	var in profile.Input
	s.withIDBody(w, r, &in, func(ctx context.Context, id int64) (any, error) { return s.Profiles.Update(ctx, p.Actor(), id, in) })
}

// handleEraseProfile erases a profile's personal data (see profile.Service.Erase).
func (s *Server) handleEraseProfile(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	id, err := pathID(r, "id")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if err := s.Profiles.Erase(r.Context(), p.Actor(), id); err != nil {
		s.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handleExportProfile(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	w.Header().Set("Content-Disposition", `attachment; filename="profile-`+r.PathValue("id")+`.json"`)
	s.withID(w, r, func(ctx context.Context, id int64) (any, error) { return s.Profiles.ExportData(ctx, p.Actor(), id) })
}

// handleImportProfiles streams a CSV body into the import and answers its counts and
// per-line errors.
func (s *Server) handleImportProfiles(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "text/csv") && !strings.HasPrefix(ct, "text/plain") && !strings.HasPrefix(ct, "application/octet-stream") {
		s.fail(w, r, problem.New(problem.Invalid, "unsupported_media_type", "send the CSV file itself as the body, with Content-Type: text/csv (not %q)", ct))
		return
	}
	body := http.MaxBytesReader(w, r.Body, MaxImportBytes)
	res, err := s.Profiles.Import(r.Context(), p.Actor(), body, profile.ImportOptions{})
	if err != nil {
		if pe, ok := problem.As(err); ok && pe.Details == nil {
			pe.Details = res
		}
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}
