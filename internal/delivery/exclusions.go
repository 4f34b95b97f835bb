package delivery

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"github.com/heraldhq/herald/internal/problem"
)

// Page sizes of the exclusion log listing: the default, and the most one page may hold.
const (
	DefaultExclusionPage = 100
	MaxExclusionPage     = 1000
)

// Reasons are every reason preparation records, in the order it applies the rules that give
// them.
var Reasons = []Reason{ReasonAddressMissing, ReasonAddressInvalid, ReasonQuarantined, ReasonDenylisted,
	ReasonOptedOut, ReasonFiltered, ReasonDuplicate, ReasonFatigue}

// Exclusion is one row of a delivery's exclusion log: a profile preparation excluded, and why.
type Exclusion struct {
	ProfileID int64 `json:"profile_id"`
	// Address is the profile's address on the delivery's channel as it is now (email, phone or
	// first push token); nil when the profile has none, was erased or deleted.
	Address *string `json:"address"`
	Reason  Reason  `json:"reason"`
	// Rule names the rule that excluded the profile (a built-in rule or a typology rule).
	Rule string `json:"rule"`
}

// ExclusionPage is one page of an exclusion log.
type ExclusionPage struct {
	Exclusions []Exclusion `json:"exclusions"`
	// NextAfter is the cursor of the next page (a profile id; pass it as after); zero on the
	// last page.
	NextAfter int64 `json:"next_after,omitempty"`
}

// Exclusions returns the exclusion log of a delivery in profile id order after the cursor (a
// profile appears at most once per delivery, so the profile id is the row's key), of one
// reason when reason is not empty, at most limit rows (DefaultExclusionPage when limit is 0 or
// less, at most MaxExclusionPage). Each page is one range scan of the index (delivery_id,
// profile_id) or (delivery_id, reason, profile_id). An unknown delivery is a NotFound problem,
// an unknown reason an Invalid one.
func (s *Service) Exclusions(ctx context.Context, deliveryID int64, reason Reason, after int64, limit int) (ExclusionPage, error) {
	if reason != "" && !slices.Contains(Reasons, reason) {
		return ExclusionPage{}, problem.Invalidf("reason", "reason %q is not one of %v", reason, Reasons)
	}
	if limit <= 0 {
		limit = DefaultExclusionPage
	}
	limit = min(limit, MaxExclusionPage)
	var ch Channel
	err := s.db.Read.QueryRowContext(ctx, `SELECT channel FROM deliveries WHERE id = $1`, deliveryID).Scan(&ch)
	if errors.Is(err, sql.ErrNoRows) {
		return ExclusionPage{}, problem.NotFoundf("there is no delivery with id %d", deliveryID)
	}
	if err != nil {
		return ExclusionPage{}, fmt.Errorf("read delivery %d: %w", deliveryID, err)
	}
	// The address comes from the profile (the exclusion log keeps none), as preparation read it.
	args := []any{deliveryID, after}
	q := `SELECT x.profile_id, ` + addressExpr(ch) + `, x.reason, x.rule FROM exclusion_log x
		LEFT JOIN profiles p ON p.id = x.profile_id WHERE x.delivery_id = $1 AND x.profile_id > $2`
	if reason != "" {
		args = append(args, string(reason))
		q += ` AND x.reason = $3`
	}
	args = append(args, limit+1)
	q += ` ORDER BY x.profile_id LIMIT $` + strconv.Itoa(len(args))
	rows, err := s.db.Read.QueryContext(ctx, q, args...)
	if err != nil {
		return ExclusionPage{}, fmt.Errorf("list the exclusion log of delivery %d: %w", deliveryID, err)
	}
	defer rows.Close()
	page := ExclusionPage{Exclusions: []Exclusion{}}
	for rows.Next() {
		var e Exclusion
		if err := rows.Scan(&e.ProfileID, &e.Address, &e.Reason, &e.Rule); err != nil {
			return ExclusionPage{}, fmt.Errorf("list the exclusion log of delivery %d: %w", deliveryID, err)
		}
		page.Exclusions = append(page.Exclusions, e)
	}
	if err := rows.Err(); err != nil {
		return ExclusionPage{}, fmt.Errorf("list the exclusion log of delivery %d: %w", deliveryID, err)
	}
	if len(page.Exclusions) > limit {
		page.Exclusions = page.Exclusions[:limit]
		page.NextAfter = page.Exclusions[limit-1].ProfileID
	}
	return page, nil
}
