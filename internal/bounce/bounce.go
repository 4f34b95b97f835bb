// Package bounce reads bounce messages — RFC 3464 delivery status notifications, RFC 5965 (ARF)
// complaint reports, RFC 3834 auto-replies and the plain-text reports that many mail servers still
// send instead of a DSN — and says, for every recipient the message names, why delivery failed and
// whether the failure is hard (the address goes to quarantine at once) or soft.
//
// The same classifier backs ClassifySMTP, so a synchronous SMTP answer and an asynchronous bounce
// for the same problem get the same reason.
//
// Limits: Parse reads at most MaxMessageSize bytes of a message and ignores the rest; it walks at
// most maxDepth levels of nested MIME parts and maxParts parts in all. It never fails because of
// bad MIME, unknown charsets or missing headers: what cannot be decoded is read as it is.
package bounce

import (
	"bytes"
	"fmt"
	"io"
	"strings"
)

// MaxMessageSize caps how much of one message Parse reads. A bounce larger than this is read up to
// the cap: the report part comes first in every format, so what matters is within it.
const MaxMessageSize = 10 << 20

// Kind says what sort of message a Report was read from.
type Kind string

// The kinds of message Parse recognises.
const (
	// KindDSN is a delivery status notification, standard (RFC 3464) or plain text.
	KindDSN Kind = "dsn"
	// KindFeedback is a complaint (RFC 5965 Abuse Reporting Format).
	KindFeedback Kind = "feedback"
	// KindAutoReply is an automatic answer such as an out-of-office message (RFC 3834).
	KindAutoReply Kind = "autoreply"
	// KindUnknown is any other message: nothing in it could be tied to a recipient.
	KindUnknown Kind = "unknown"
)

// Reason is why a message was not delivered, in the vocabulary shared with sisimai, the most
// widely used open-source bounce classifier, so figures can be compared with it.
type Reason string

// The whole vocabulary of reasons. Whether a reason is hard or soft is decided by IsHard.
const (
	ReasonUserUnknown     Reason = "userunknown"     // the mailbox does not exist
	ReasonMailboxFull     Reason = "mailboxfull"     // the mailbox is over quota
	ReasonExpired         Reason = "expired"         // the message stayed queued too long
	ReasonFiltered        Reason = "filtered"        // the recipient's filter refused it after reading it
	ReasonRejected        Reason = "rejected"        // the envelope sender was refused
	ReasonBlocked         Reason = "blocked"         // the sending IP address or host was refused
	ReasonHostUnknown     Reason = "hostunknown"     // the recipient's domain does not exist
	ReasonFeedback        Reason = "feedback"        // a complaint report, not a failure
	ReasonAuthFailure     Reason = "authfailure"     // SPF, DKIM or DMARC failed
	ReasonNetworkError    Reason = "networkerror"    // DNS or routing trouble, mail loops
	ReasonSuspend         Reason = "suspend"         // the mailbox exists but is disabled
	ReasonPolicyViolation Reason = "policyviolation" // a local policy of the receiver refused it
	ReasonRequirePTR      Reason = "requireptr"      // the sending IP has no valid reverse DNS
	ReasonSpamDetected    Reason = "spamdetected"    // a spam filter refused the content
	ReasonSystemError     Reason = "systemerror"     // the receiving system failed
	ReasonNotAccept       Reason = "notaccept"       // the host accepts no mail at all (null MX)
	ReasonSecurityError   Reason = "securityerror"   // authentication or other security refusal
	ReasonMailerError     Reason = "mailererror"     // a local delivery program failed
	ReasonNotCompliantRFC Reason = "notcompliantrfc" // the message breaks RFC 5322
	ReasonNoRelaying      Reason = "norelaying"      // relaying was refused
	ReasonOnHold          Reason = "onhold"          // a failure, but the report does not say why
	ReasonHasMoved        Reason = "hasmoved"        // the mailbox moved, no forwarding
	ReasonTooManyConn     Reason = "toomanyconn"     // too many connections or recipients
	ReasonVacation        Reason = "vacation"        // an out-of-office answer, not a failure
	ReasonDelivered       Reason = "delivered"       // a positive delivery report, not a failure
	ReasonExceedLimit     Reason = "exceedlimit"     // a per-mailbox size limit was exceeded
	ReasonMesgTooBig      Reason = "mesgtoobig"      // the message is larger than the system accepts
	ReasonBadReputation   Reason = "badreputation"   // the sender's reputation is too low
	ReasonContentError    Reason = "contenterror"    // the content or its encoding was refused
	ReasonVirusDetected   Reason = "virusdetected"   // a virus scanner refused it
	ReasonSyntaxError     Reason = "syntaxerror"     // an SMTP command syntax error
	ReasonSpeeding        Reason = "speeding"        // sending too fast (rate limited)
	ReasonUndefined       Reason = "undefined"       // nothing in the report says anything
	ReasonFailedSTARTTLS  Reason = "failedstarttls"  // TLS was required or failed
	ReasonSystemFull      Reason = "systemfull"      // the receiving system's disk is full
)

// Reasons lists the whole vocabulary, in the order of the constants above.
var Reasons = []Reason{
	ReasonUserUnknown, ReasonMailboxFull, ReasonExpired, ReasonFiltered, ReasonRejected,
	ReasonBlocked, ReasonHostUnknown, ReasonFeedback, ReasonAuthFailure, ReasonNetworkError,
	ReasonSuspend, ReasonPolicyViolation, ReasonRequirePTR, ReasonSpamDetected, ReasonSystemError,
	ReasonNotAccept, ReasonSecurityError, ReasonMailerError, ReasonNotCompliantRFC,
	ReasonNoRelaying, ReasonOnHold, ReasonHasMoved, ReasonTooManyConn, ReasonVacation,
	ReasonDelivered, ReasonExceedLimit, ReasonMesgTooBig, ReasonBadReputation, ReasonContentError,
	ReasonVirusDetected, ReasonSyntaxError, ReasonSpeeding, ReasonUndefined, ReasonFailedSTARTTLS,
	ReasonSystemFull,
}

// Result is what a bounce says about one recipient.
type Result struct {
	// Recipient is the address that failed, lower-cased domain kept as sent; "" when the message
	// names none (some complaint reports hide it).
	Recipient string
	// Status is the RFC 3463 enhanced status code such as "5.1.1", "" when the report has none.
	Status string
	// ReplyCode is the SMTP reply code such as 550, 0 when the report has none.
	ReplyCode int
	// Reason is the classification.
	Reason Reason
	// Hard is true for a hard bounce, false for a soft one, nil when this is not a failure at all
	// (a complaint, an auto-reply, a delivered report).
	Hard *bool
	// Diagnostic is the receiving server's own words, whitespace folded.
	Diagnostic string
	// Action is the RFC 3464 Action ("failed", "delayed", "delivered", ...), "" when not given.
	Action string
	// RemoteMTA is the host that answered, when the report names it.
	RemoteMTA string
	// FeedbackType is the ARF Feedback-Type ("abuse", "fraud", ...) of a complaint.
	FeedbackType string
}

// Report is everything Parse learned from one message.
type Report struct {
	// Kind says what the message is.
	Kind Kind
	// Results holds one entry per recipient the message reports on, in the message's order.
	Results []Result

	// Subject and From are the bounce's own header fields, decoded.
	Subject string
	From    string
	// To, XOriginalTo and DeliveredTo are the addresses the bounce itself was sent to. Herald
	// sends with a per-recipient return path, so these tie a bounce to its sending-log row.
	To          []string
	XOriginalTo []string
	DeliveredTo []string

	// OriginalMessageID, OriginalFrom and OriginalTo come from the returned original message (or
	// its headers) when the bounce includes it; empty otherwise.
	OriginalMessageID string
	OriginalFrom      string
	OriginalTo        []string
}

// EnvelopeAddresses returns the distinct addresses the bounce was delivered to — Delivered-To,
// X-Original-To, then To — for matching a per-recipient return path.
func (r *Report) EnvelopeAddresses() []string {
	var out []string
	seen := map[string]bool{}
	for _, list := range [][]string{r.DeliveredTo, r.XOriginalTo, r.To} {
		for _, a := range list {
			k := strings.ToLower(a)
			if a != "" && !seen[k] {
				seen[k] = true
				out = append(out, a)
			}
		}
	}
	return out
}

// Parse reads one RFC 5322 message from r and reports on it. It returns an error only when r
// cannot be read; a message that is not a bounce gives a Report of KindUnknown with no Results.
func Parse(r io.Reader) (*Report, error) {
	raw, err := io.ReadAll(io.LimitReader(r, MaxMessageSize))
	if err != nil {
		return nil, fmt.Errorf("bounce: reading message: %w", err)
	}
	return parseBytes(raw), nil
}

// ParseBytes is Parse for a message already in memory; it cannot fail.
func ParseBytes(raw []byte) *Report {
	if len(raw) > MaxMessageSize {
		raw = raw[:MaxMessageSize]
	}
	return parseBytes(raw)
}

func parseBytes(raw []byte) *Report {
	raw = bytes.ReplaceAll(raw, []byte("\r\n"), []byte("\n"))
	root := parseEntity(raw, 0, new(int))
	m := &message{root: root}
	m.collect(root, 0)

	rep := &Report{Kind: KindUnknown}
	rep.Subject = decodeHeader(root.header.get("Subject"))
	rep.From = firstAddress(root.header.get("From"))
	rep.To = addressList(root.header.values("To"))
	rep.XOriginalTo = addressList(root.header.values("X-Original-To"))
	rep.DeliveredTo = addressList(root.header.values("Delivered-To"))
	m.findOriginal(rep)
	if inner := m.forwardedBounce(); inner != nil {
		// A bounce forwarded as an attachment: read the attached one.
		m = inner
	}
	if results, ok := jsonNotification(m.humanText()); ok {
		rep.Kind = KindDSN
		rep.Results = results
		return rep
	}

	switch {
	case m.isFeedback():
		rep.Kind = KindFeedback
		rep.Results = m.feedbackResults(rep)
	case m.dsnPart != nil:
		rep.Kind = KindDSN
		rep.Results = m.dsnResults(rep)
		if len(rep.Results) == 0 {
			rep.Results = m.textResults(rep)
		}
	case m.looksLikeBounce():
		rep.Kind = KindDSN
		rep.Results = m.textResults(rep)
	case m.isAutoReply():
		rep.Kind = KindAutoReply
		rep.Results = []Result{{
			Recipient:  rep.From,
			Reason:     ReasonVacation,
			Diagnostic: fold(m.humanText(), 500),
		}}
	}
	if rep.Kind == KindDSN && len(rep.Results) == 0 {
		rep.Kind = KindUnknown
	}
	return rep
}

// fold collapses runs of white space into one space and cuts the text to at most n bytes.
func fold(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if n > 0 && len(s) > n {
		for n > 0 && !utf8Start(s[n]) {
			n--
		}
		s = s[:n]
	}
	return s
}

func utf8Start(b byte) bool { return b < 0x80 || b >= 0xC0 }
