package sending

import (
	"slices"
	"strings"
	"time"

	"github.com/heraldhq/herald/internal/bounce"
	"github.com/heraldhq/herald/internal/channel"
)

// addressReasons are the bounce reasons that say something about the recipient's address,
// the only ones that change its quarantine entry. The others (an envelope sender refused,
// a blocked IP, a rate limit, a relay that cannot be reached) are about Herald's side.
var addressReasons = []bounce.Reason{
	bounce.ReasonUserUnknown, bounce.ReasonMailboxFull, bounce.ReasonHostUnknown, bounce.ReasonHasMoved,
	bounce.ReasonSuspend, bounce.ReasonNotAccept, bounce.ReasonExceedLimit,
}

// senderStatus reports an enhanced status about the envelope sender (X.1.7, X.1.8): the answer
// to MAIL FROM, a relay problem.
func senderStatus(enhanced string) bool {
	return len(enhanced) == 5 && (strings.HasSuffix(enhanced, ".1.7") || strings.HasSuffix(enhanced, ".1.8"))
}

// decide turns the Sender's outcome for r into the row's new state and, when the answer is
// about the recipient's address, the quarantine rule it triggers.
func (e *Engine) decide(d activeDelivery, r row, o channel.Outcome, now time.Time) (result, *quarantineChange) {
	ms := now.UnixMilli()
	res := result{ID: r.id, Attempts: r.attempts + 1, Ambiguous: r.ambiguous}
	if o.Code != 0 {
		res.Code = &o.Code
	}
	if o.Enhanced != "" {
		res.Enhanced = &o.Enhanced
	}
	if o.ProviderID != "" {
		res.ProviderID = &o.ProviderID
	}
	switch o.Status {
	case channel.Sent:
		res.Status, res.SentAt = "sent", &ms
		return res, nil
	case channel.Unknown:
		// Handed over but unanswered: count it sent, but say it may arrive twice if retried
		// elsewhere, and never send it again.
		res.Status, res.SentAt, res.Ambiguous = "sent", &ms, true
		res.Reason = ptr(cut(o.Text))
		return res, nil
	case channel.Deferred:
		res.Status, res.Attempts = "pending", r.attempts
		return res, nil
	}
	reason, hard := bounce.ClassifySMTP(o.Code, o.Enhanced, o.Text)
	text := string(reason)
	if o.Text != "" {
		text += ": " + o.Text
	}
	text = cut(text)
	recipientLevel := o.Code != 0 && !senderStatus(o.Enhanced) && slices.Contains(addressReasons, reason)
	if o.Status == channel.HardFail {
		typ := "soft"
		if hard == nil || *hard || o.Code == 0 {
			typ = "hard"
		}
		res.Status, res.FailureType, res.Reason = "failed", &typ, &text
		if recipientLevel {
			return res, &quarantineChange{address: r.address, reason: text, hard: typ == "hard", full: reason == bounce.ReasonMailboxFull}
		}
		return res, nil
	}
	// SoftFail: retry after the back-off, within the delivery's validity.
	soft := "soft"
	res.FailureType, res.Reason = &soft, &text
	next := now.Add(e.backoff(res.Attempts))
	if !d.validUntil.IsZero() && next.After(d.validUntil) {
		expired := cut("expired: " + text)
		res.Status, res.Reason = "failed", &expired
	} else {
		n := next.UnixMilli()
		res.Status, res.NextAttempt = "pending", &n
	}
	var qc *quarantineChange
	if recipientLevel {
		qc = &quarantineChange{address: r.address, reason: text, full: reason == bounce.ReasonMailboxFull}
	}
	return res, qc
}

func failedResult(r row, typ, reason string) result {
	reason = cut(reason)
	return result{ID: r.id, Status: "failed", Attempts: r.attempts, FailureType: &typ, Reason: &reason, Ambiguous: r.ambiguous}
}

// sortChanges orders quarantine changes by address, so that two transactions never lock the
// same addresses in opposite orders.
func sortChanges(cs []quarantineChange) {
	slices.SortFunc(cs, func(a, b quarantineChange) int { return strings.Compare(a.address, b.address) })
}

func ptr[T any](v T) *T { return &v }

// cut bounds a stored reason.
func cut(s string) string {
	const maxReason = 500
	if len(s) <= maxReason {
		return s
	}
	i := maxReason
	for i > 0 && s[i]&0xC0 == 0x80 {
		i--
	}
	return s[:i]
}
