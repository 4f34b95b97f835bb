// Package delivery holds deliveries: one message on one channel to one audience, taken from
// draft through preparation, approvals and a role-gated confirmation to the send, as in
// DESIGN.md §2.
//
// Every change of state goes through one function (transition) that checks the change against
// the table of allowed transitions, writes it and records the audit entry (who, when, from,
// to) in the same transaction. Any change to the content, audience, schedule or typology of a
// prepared delivery returns it to draft: its prepared hash is cleared, which voids every
// approval (an approval counts only while it names the current prepared hash), and the rows
// its preparation wrote are deleted.
//
// Preparation (Prepare) sends nothing. It computes the target with set-based SQL, applies the
// typology rules in phase order, writes the exclusion log, renders every recipient once as a
// check and writes the sending log rows as pending, all in one transaction: stopping it (the
// context ends, or Stop is called while it runs) rolls everything back and leaves the delivery
// in prepare_failed, with no half-written log.
//
// Roles (DESIGN.md §3) are checked here, with auth.Principal.Require, so that the API, the
// command line and a future UI refuse the same things with the same words.
package delivery

import (
	"time"

	"github.com/heraldhq/herald/internal/content"
)

// Channel is the channel a delivery is sent on.
type Channel string

// The channels.
const (
	Email Channel = "email"
	SMS   Channel = "sms"
	Push  Channel = "push"
)

// DefaultValidity is how long after the contact date the engine keeps retrying soft failures
// (ACS: 3.5 days).
const DefaultValidity = 84 * time.Hour

// Limits on input.
const (
	// MaxNameLength is the longest delivery name, in characters.
	MaxNameLength = 200
	// MaxProofAddresses is the most addresses one proof goes to.
	MaxProofAddresses = 100
	// MaxListLimit is the largest page List and the log listings return; the default is 100.
	MaxListLimit = 1000
	// MaxPersonalisationFailures is how many failed recipients a preparation log lists; the
	// count covers all of them.
	MaxPersonalisationFailures = 100
)

// Schedule says when a delivery is sent: at ContactDate when set and in the future, else
// on confirm. TimeZone is the zone the contact date was chosen in, for display.
type Schedule struct {
	ContactDate *time.Time `json:"contact_date"`
	TimeZone    string     `json:"time_zone,omitempty"`
}

// storedSchedule is Schedule as the schedule column holds it.
type storedSchedule struct {
	ContactDate *int64 `json:"contact_date"`
	TimeZone    string `json:"time_zone,omitempty"`
}

// ApprovalSettings says which approvals a delivery needs before it may be confirmed.
type ApprovalSettings struct {
	Content bool `json:"content"`
	Target  bool `json:"target"`
	// FourEyes forbids the delivery's author (its creator and its last editor) approving it.
	FourEyes bool `json:"four_eyes"`
}

// Typology is a delivery's own typology settings: which of the shared rules it leaves out.
type Typology struct {
	// DisabledRules lists typology rule ids that do not apply to this delivery.
	DisabledRules []int64 `json:"disabled_rules,omitempty"`
}

// Counts are a preparation's figures: Targeted = ToDeliver + Excluded.
type Counts struct {
	Targeted  int64 `json:"targeted"`
	ToDeliver int64 `json:"to_deliver"`
	Excluded  int64 `json:"excluded"`
}

// Delivery is one send of one message on one channel to one audience.
type Delivery struct {
	ID         int64            `json:"id"`
	Name       string           `json:"name"`
	Channel    Channel          `json:"channel"`
	AudienceID int64            `json:"audience_id"`
	Content    content.Content  `json:"content"`
	Schedule   Schedule         `json:"schedule"`
	State      State            `json:"state"`
	Typology   Typology         `json:"typology"`
	Approvals  ApprovalSettings `json:"approvals"`
	// ValiditySeconds is how long after the contact date soft failures are retried.
	ValiditySeconds int64 `json:"validity_seconds"`
	// ValidityUntil is set at confirm: the contact date plus the validity.
	ValidityUntil *time.Time `json:"validity_until,omitempty"`
	// ContactAt is when sending starts: the contact date, or the confirm time without one.
	ContactAt    *time.Time `json:"contact_at,omitempty"`
	PreparedHash string     `json:"prepared_hash,omitempty"`
	PreparedAt   *time.Time `json:"prepared_at,omitempty"`
	Counts       Counts     `json:"counts"`
	PrepLog      PrepLog    `json:"prep_log"`
	ConfirmedBy  int64      `json:"confirmed_by,omitempty"`
	ConfirmedAt  *time.Time `json:"confirmed_at,omitempty"`
	CreatedBy    int64      `json:"created_by"`
	UpdatedBy    int64      `json:"updated_by"`
	CreatedAt    time.Time  `json:"created_at"`
	UpdatedAt    time.Time  `json:"updated_at"`
}

// PrepLog is what a preparation found: warnings (which do not block) and errors (which block
// confirm), the exclusions by reason and rule, and the recipients whose personalisation failed.
type PrepLog struct {
	Warnings   []LogEntry       `json:"warnings"`
	Errors     []LogEntry       `json:"errors"`
	Exclusions []ExclusionCount `json:"exclusions"`
	// PersonalisationFailed counts every recipient whose message did not render;
	// PersonalisationFailures lists the first MaxPersonalisationFailures of them.
	PersonalisationFailed   int64              `json:"personalisation_failed"`
	PersonalisationFailures []RecipientFailure `json:"personalisation_failures,omitempty"`
	// Seconds is how long the preparation took; Phases splits it by phase.
	Seconds float64            `json:"seconds,omitempty"`
	Phases  map[string]float64 `json:"phases,omitempty"`
}

// LogEntry is one warning or error of a preparation: the rule that raised it and what it says.
type LogEntry struct {
	Rule    string `json:"rule"`
	Message string `json:"message"`
}

// ExclusionCount is how many targeted profiles one rule excluded, and why.
type ExclusionCount struct {
	Reason Reason `json:"reason"`
	Rule   string `json:"rule"`
	Count  int64  `json:"count"`
}

// RecipientFailure is one recipient whose personalisation failed.
type RecipientFailure struct {
	ProfileID int64  `json:"profile_id"`
	Error     string `json:"error"`
}
