package web

import (
	"context"
	"net/http"

	"github.com/heraldhq/herald/internal/auth"
	"github.com/heraldhq/herald/internal/delivery"
	"github.com/heraldhq/herald/internal/sending"
	"github.com/heraldhq/herald/internal/stats"
)

// Every delivery handler decodes, calls one delivery.Service method and answers its result:
// the service checks roles and states itself, so the API and a future UI refuse the same
// things with the same words.

func (s *Server) handleCreateDelivery(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	var in delivery.Input
	if err := s.decode(w, r, &in); err != nil {
		s.fail(w, r, err)
		return
	}
	d, err := s.Deliveries.Create(r.Context(), p, in)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, d)
}

func (s *Server) handleListDeliveries(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	before, err := queryInt(r, "before")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	limit, err := queryInt(r, "limit")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	page, err := s.Deliveries.List(r.Context(), delivery.ListQuery{State: delivery.State(r.URL.Query().Get("state")), Before: before, Limit: int(limit)})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, page)
}

// deliveryView is a delivery as GET /api/v1/deliveries/{id} shows it: with its KPIs and the
// progress of its send.
type deliveryView struct {
	delivery.Delivery
	KPIs     stats.KPIs       `json:"kpis"`
	Progress sending.Progress `json:"progress"`
}

// handleGetDelivery answers the delivery with its KPIs, read from the live counters: the cost
// is the same for 100 or 10 million recipients.
func (s *Server) handleGetDelivery(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	s.withID(w, r, func(ctx context.Context, id int64) (any, error) {
		d, err := s.Deliveries.Get(ctx, id)
		if err != nil {
			return nil, err
		}
		k, err := s.Stats.Read(ctx, id)
		if err != nil {
			return nil, err
		}
		p, err := sending.ProgressOf(ctx, s.DB, s.Clock, id)
		if err != nil {
			return nil, err
		}
		s.noteWaiting(&p, d.State)
		return deliveryView{Delivery: d, KPIs: k, Progress: p}, nil
	})
}

// handleComputeStats recomputes every figure of the delivery from the sending and tracking
// logs and makes the live counters equal to it.
func (s *Server) handleComputeStats(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	s.withID(w, r, func(ctx context.Context, id int64) (any, error) {
		if _, err := s.Deliveries.Get(ctx, id); err != nil {
			return nil, err
		}
		k, err := s.Stats.Compute(ctx, id)
		if err != nil {
			return nil, err
		}
		return map[string]any{"delivery_id": id, "kpis": k}, nil
	})
}

func (s *Server) handleUpdateDelivery(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	var in delivery.Input
	s.withIDBody(w, r, &in, func(ctx context.Context, id int64) (any, error) { return s.Deliveries.Update(ctx, p, id, in) })
}

func (s *Server) handleDeleteDelivery(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	id, err := pathID(r, "id")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if err := s.Deliveries.Delete(r.Context(), p, id); err != nil {
		s.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handlePrepareDelivery(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	s.withID(w, r, func(ctx context.Context, id int64) (any, error) { return s.Deliveries.Prepare(ctx, p, id) })
}

type proofRequest struct {
	Addresses []string `json:"addresses"`
}

func (s *Server) handleProof(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	var req proofRequest
	id, err := pathID(r, "id")
	if err == nil {
		err = s.decode(w, r, &req)
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	proof, err := s.Deliveries.Proof(r.Context(), p, id, req.Addresses)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, proof)
}

func (s *Server) handleListProofs(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	s.withID(w, r, func(ctx context.Context, id int64) (any, error) {
		list, err := s.Deliveries.Proofs(ctx, id)
		return map[string]any{"proofs": list}, err
	})
}

func (s *Server) handleDecide(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	var in delivery.ApprovalInput
	s.withIDBody(w, r, &in, func(ctx context.Context, id int64) (any, error) { return s.Deliveries.Decide(ctx, p, id, in) })
}

func (s *Server) handleListApprovals(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	s.withID(w, r, func(ctx context.Context, id int64) (any, error) {
		list, err := s.Deliveries.Approvals(ctx, id)
		return map[string]any{"approvals": list}, err
	})
}

func (s *Server) handleConfirm(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	s.withID(w, r, func(ctx context.Context, id int64) (any, error) { return s.Deliveries.Confirm(ctx, p, id) })
}

func (s *Server) handlePause(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	s.withID(w, r, func(ctx context.Context, id int64) (any, error) { return s.Deliveries.Pause(ctx, p, id) })
}

func (s *Server) handleResume(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	s.withID(w, r, func(ctx context.Context, id int64) (any, error) { return s.Deliveries.Resume(ctx, p, id) })
}

func (s *Server) handleStop(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	s.withID(w, r, func(ctx context.Context, id int64) (any, error) { return s.Deliveries.Stop(ctx, p, id) })
}

// handlePreviewDelivery renders the delivery for ?profile_id=.
func (s *Server) handlePreviewDelivery(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	profileID, err := queryInt(r, "profile_id")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.withID(w, r, func(ctx context.Context, id int64) (any, error) { return s.Deliveries.Preview(ctx, id, profileID) })
}

func (s *Server) handleListRules(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	rules, err := s.Deliveries.Rules(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"rules": rules})
}

func (s *Server) handleCreateRule(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	var in delivery.Rule
	if err := s.decode(w, r, &in); err != nil {
		s.fail(w, r, err)
		return
	}
	rule, err := s.Deliveries.CreateRule(r.Context(), p, in)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, rule)
}

func (s *Server) handleUpdateRule(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	var in delivery.Rule
	s.withIDBody(w, r, &in, func(ctx context.Context, id int64) (any, error) { return s.Deliveries.UpdateRule(ctx, p, id, in) })
}

// withID answers the result of fn for the {id} of the path.
func (s *Server) withID(w http.ResponseWriter, r *http.Request, fn func(ctx context.Context, id int64) (any, error)) {
	id, err := pathID(r, "id")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out, err := fn(r.Context(), id)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// withIDBody is withID for a route that also decodes a JSON body into body first.
func (s *Server) withIDBody(w http.ResponseWriter, r *http.Request, body any, fn func(ctx context.Context, id int64) (any, error)) {
	if err := s.decode(w, r, body); err != nil {
		s.fail(w, r, err)
		return
	}
	s.withID(w, r, fn)
}
