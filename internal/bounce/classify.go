package bounce

import (
	"regexp"
	"strings"
)

// statusReasons maps RFC 3463 enhanced status codes (IANA registry) to a reason, for reports whose
// words say nothing more specific. Codes not listed fall back on their subject (see subjectReason).
var statusReasons = map[string]Reason{
	"X.1.0": ReasonUserUnknown, "X.1.1": ReasonUserUnknown, "X.1.2": ReasonHostUnknown,
	"X.1.3": ReasonUserUnknown, "X.1.4": ReasonFiltered, "X.1.6": ReasonHasMoved,
	"X.1.7": ReasonRejected, "X.1.8": ReasonRejected, "X.1.9": ReasonSystemError,
	"X.1.10": ReasonNotAccept,
	"5.2.0":  ReasonFiltered, "5.2.1": ReasonFiltered, "4.2.1": ReasonBlocked, "X.2.2": ReasonMailboxFull,
	"X.2.3": ReasonExceedLimit, "X.2.4": ReasonFiltered,
	"5.3.0": ReasonSystemError, "X.3.1": ReasonSystemFull, "X.3.2": ReasonNotAccept,
	"X.3.3": ReasonSystemError, "X.3.4": ReasonMesgTooBig, "X.3.5": ReasonSystemError,
	"5.4.0": ReasonNetworkError, "4.4.1": ReasonExpired, "X.4.2": ReasonNetworkError,
	"X.4.3": ReasonSystemError, "5.4.4": ReasonHostUnknown, "4.4.4": ReasonNetworkError,
	"X.4.5": ReasonSystemFull, "X.4.6": ReasonNetworkError, "X.4.7": ReasonExpired,
	"X.4.8": ReasonNetworkError,
	"X.5.2": ReasonSyntaxError, "X.5.3": ReasonTooManyConn, "X.5.4": ReasonSystemError,
	"X.5.5": ReasonSystemError, "X.5.6": ReasonSyntaxError,
	"4.7.1": ReasonBlocked, "4.7.2": ReasonBlocked,
	"X.7.5": ReasonSecurityError, "X.7.6": ReasonSecurityError, "X.7.7": ReasonSecurityError,
	"X.7.8": ReasonSecurityError, "X.7.9": ReasonSecurityError, "X.7.10": ReasonSecurityError,
	"X.7.11": ReasonSecurityError, "X.7.12": ReasonSecurityError, "X.7.13": ReasonSuspend,
	"X.7.14": ReasonSecurityError, "X.7.15": ReasonSecurityError, "X.7.16": ReasonMesgTooBig,
	"X.7.17": ReasonHasMoved, "X.7.18": ReasonHasMoved, "X.7.19": ReasonSecurityError,
	"X.7.20": ReasonAuthFailure, "X.7.21": ReasonAuthFailure, "X.7.22": ReasonAuthFailure,
	"X.7.23": ReasonAuthFailure, "X.7.24": ReasonAuthFailure, "X.7.25": ReasonRequirePTR,
	"X.7.26": ReasonAuthFailure, "X.7.27": ReasonNotAccept, "X.7.28": ReasonSpamDetected,
	"X.7.29": ReasonAuthFailure, "X.7.30": ReasonFailedSTARTTLS,
}

// statusOverrides are enhanced codes so specific that they beat the server's words.
var statusOverrides = map[string]bool{
	"X.7.20": true, "X.7.21": true, "X.7.22": true, "X.7.23": true, "X.7.24": true,
	"X.7.25": true, "X.7.26": true, "X.7.27": true, "X.7.13": true, "X.1.6": true,
}

func statusReason(status string) Reason {
	if status == "" {
		return ""
	}
	if r, ok := statusReasons[status]; ok {
		return r
	}
	return statusReasons["X"+status[1:]]
}

// subjectReason is the last resort for an enhanced code: its class and subject (RFC 3463 §3).
func subjectReason(status string, reply int) Reason {
	if len(status) < 3 {
		return ""
	}
	switch status[2] {
	case '1':
		if status[0] == '5' {
			return ReasonUserUnknown
		}
	case '2':
		return ReasonFiltered
	case '3':
		return ReasonSystemError
	case '4':
		return ReasonNetworkError
	case '5':
		if reply >= 500 && reply <= 504 || reply >= 400 && reply <= 404 {
			return ReasonSyntaxError
		}
		return ReasonSystemError
	case '6':
		return ReasonContentError
	case '7':
		return ReasonSecurityError
	}
	return ""
}

// replyReason maps the SMTP reply codes that mean one thing whatever the text says.
func replyReason(reply int) Reason {
	switch reply {
	case 521, 556:
		return ReasonNotAccept
	case 525:
		return ReasonSuspend
	case 523, 524, 538:
		return ReasonFailedSTARTTLS
	case 500, 501, 502, 503, 504, 555, 401, 402, 403, 404:
		return ReasonSyntaxError
	}
	return ""
}

var (
	lineCodeRe = regexp.MustCompile(`(?m)^\s*[245]\d\d[ -](?:[245]\.\d{1,3}\.\d{1,3}\s)?`)
	contCodeRe = regexp.MustCompile(`\s[245]\d\d-[245]\.\d{1,3}\.\d{1,3}\s`)
	spaceRe    = regexp.MustCompile(`\s+`)
)

// normalise lower-cases text, drops the reply-code prefixes of multi-line SMTP answers and folds
// white space, so that a phrase broken across lines of an answer still matches.
func normalise(text string) string {
	t := lineCodeRe.ReplaceAllString(text, " ")
	t = contCodeRe.ReplaceAllString(t, " ")
	t = strings.ToLower(t)
	return strings.TrimSpace(spaceRe.ReplaceAllString(t, " "))
}

// smtpCommand tells which SMTP command a report says the error answered: RCPT, MAIL, DATA,
// CONN (the greeting or HELO/EHLO), or "" when it does not say.
func smtpCommand(t string) string {
	switch {
	case containsAny(t, []string{"end of data", "after data", "final data", "data command", "after the data", "message content", "after end of"}):
		return "DATA"
	case containsAny(t, []string{"rcpt to", "rcpt command", "after rcpt", "rcpt_to"}):
		return "RCPT"
	case containsAny(t, []string{"mail from command", "after mail from", "in reply to mail from", "mail command"}):
		return "MAIL"
	case containsAny(t, []string{"initial connection", "helo command", "ehlo command", "after helo", "after ehlo", "greeting", "in reply to helo", "in reply to ehlo"}):
		return "CONN"
	}
	return ""
}

// filterWhenUnsure decides user-unknown words with neither a status nor an SMTP command.
var filterWhenUnsure = true

// level says how a reason was found, so the strongest evidence wins.
type level int

const (
	levelNone level = iota
	levelFallback
	levelCode
	levelPhrase
	levelDecisive
)

// classify finds the reason from an enhanced status, a reply code and the server's text.
//
// context is further text about the same recipient, read only to learn which SMTP command the
// error answered.
func classify(status string, reply int, text, context, action string) (Reason, level) {
	t := normalise(text)
	cmd := smtpCommand(t)
	if cmd == "" && context != "" {
		cmd = smtpCommand(normalise(context))
	}
	if action == "delivered" || action == "relayed" || action == "expanded" || strings.HasPrefix(status, "2.") {
		return ReasonDelivered, levelDecisive
	}
	if statusOverrides["X"+safeTail(status)] {
		return statusReason(status), levelDecisive
	}
	if r, _ := matchPhrase(t); r != "" {
		switch {
		case r == ReasonUserUnknown && (status == "5.2.2" || status == "4.2.2"):
			r = ReasonMailboxFull
		case r == ReasonUserUnknown && cmd != "RCPT" && !strings.HasPrefix(safeTail(status), ".1.") && !containsAny(t, directoryPhrases) && (cmd != "" || status != "" || filterWhenUnsure):
			// "No such user" that is not the answer to RCPT TO, nor carries a X.1.x
			// address status, comes from a filter that read the message (the server
			// accepted the recipient): the mailbox may well exist.
			r = ReasonFiltered
		case (r == ReasonMesgTooBig || r == ReasonExceedLimit) && strings.HasSuffix(status, ".2.3"):
			r = ReasonExceedLimit
		case (r == ReasonMesgTooBig || r == ReasonExceedLimit) && strings.HasSuffix(status, ".3.4"):
			r = ReasonMesgTooBig
		case r == ReasonHostUnknown && (strings.HasPrefix(status, "4") || reply >= 400 && reply < 500):
			// A temporary DNS failure does not show that the domain does not exist.
			r = ReasonNetworkError
		}
		return r, levelPhrase
	}
	if r := replyReason(reply); r != "" && (r != ReasonSyntaxError || status == "" || strings.Contains(status, ".5.") || strings.HasSuffix(status, ".0.0")) {
		return r, levelCode
	}
	if r := statusReason(status); r != "" {
		return r, levelCode
	}
	switch cmd {
	case "MAIL":
		return ReasonRejected, levelCode
	case "CONN":
		return ReasonBlocked, levelCode
	}
	if action == "delayed" {
		return ReasonExpired, levelFallback
	}
	if r := subjectReason(status, reply); r != "" {
		return r, levelFallback
	}
	if t != "" || status != "" || reply != 0 {
		return ReasonOnHold, levelFallback
	}
	return ReasonUndefined, levelNone
}

// safeTail returns status without its class digit (".1.1" for "5.1.1"), "" when too short.
func safeTail(status string) string {
	if len(status) < 2 {
		return ""
	}
	return status[1:]
}

// ClassifySMTP classifies a synchronous SMTP answer: the reply code (0 if unknown), the
// enhanced status code ("" if none; it is also looked for in text) and the answer's text. It
// returns the reason and whether the failure is hard (nil for a success).
func ClassifySMTP(replyCode int, enhanced string, text string) (Reason, *bool) {
	status := normaliseStatus(enhanced)
	if status == "" {
		status = findStatus(text)
	}
	if replyCode == 0 {
		replyCode = findReply(text)
	}
	if replyCode >= 200 && replyCode < 400 && (status == "" || status[0] == '2') {
		return ReasonDelivered, nil
	}
	r, _ := classify(status, replyCode, text, "", "")
	return r, IsHard(r, status, replyCode, text)
}

func normaliseStatus(s string) string {
	s = strings.TrimSpace(s)
	if st := findStatus(s); st == s {
		return s
	}
	return ""
}

// IsHard applies the hard/soft rule: the reason decides, not 4xx against 5xx. userunknown,
// hostunknown and hasmoved are hard; notaccept is hard unless the answer says it is temporary
// (a 4xx code or a 4.x.x status, or words saying so); every other failure is soft; feedback,
// vacation and delivered are not failures (nil).
func IsHard(r Reason, status string, reply int, text string) *bool {
	yes, no := true, false
	switch r {
	case ReasonFeedback, ReasonVacation, ReasonDelivered, "":
		return nil
	case ReasonUserUnknown, ReasonHostUnknown, ReasonHasMoved:
		return &yes
	case ReasonNotAccept:
		switch {
		case strings.HasPrefix(status, "5"), reply >= 500:
			return &yes
		case strings.HasPrefix(status, "4"), reply >= 400 && reply < 500:
			return &no
		}
		t := strings.ToLower(text)
		if strings.Contains(t, " temporar") || strings.Contains(t, " persistent") || strings.Contains(t, "try again") {
			return &no
		}
		return &yes
	}
	return &no
}

// evidence is everything a report says about one recipient.
type evidence struct {
	recipient string
	status    string // the DSN Status field
	action    string
	diag      string // the DSN Diagnostic-Code text
	diagType  string
	human     string // what the human-readable part says about this recipient
	whole     string // the whole human-readable report
	remoteMTA string
}

// judge turns the evidence about one recipient into a Result.
func judge(ev evidence) Result {
	res := Result{Recipient: ev.recipient, Action: ev.action, RemoteMTA: ev.remoteMTA}
	primary := ev.diag
	if primary == "" {
		primary = ev.human
	}

	// The Status field of a DSN, else the first code in the server's words; a more specific
	// code of the same class in the words beats an X.0.0 in the field.
	status := ev.status
	for _, src := range []string{ev.diag, ev.human} {
		found := findStatus(src)
		if found == "" {
			continue
		}
		if status == "" || strings.HasSuffix(status, ".0.0") && found[0] == status[0] && !strings.HasSuffix(found, ".0.0") {
			status = found
		}
		break
	}
	reply := findReply(ev.diag)
	if reply == 0 {
		reply = findReply(ev.human)
	}
	if status != "" && reply != 0 && status[0] != byte('0'+reply/100) && status[0] != '2' {
		// A reply code of another class than the status is a number in the text, not a reply.
		reply = 0
	}
	res.Status, res.ReplyCode = status, reply

	reason, lv := classify(status, reply, ev.diag, ev.human, ev.action)
	if lv < levelPhrase && ev.human != "" && ev.human != ev.diag {
		if r, l := classify(status, reply, ev.human, "", ev.action); l >= levelPhrase {
			reason, lv = r, l
		}
	}
	if lv < levelPhrase && strings.HasPrefix(ev.diagType, "X-UNIX") {
		reason, lv = ReasonMailerError, levelPhrase
	}
	if lv < levelCode && ev.whole != "" {
		if r, l := classify(status, reply, ev.whole, "", ev.action); l >= levelPhrase {
			reason, lv = r, l
		}
	}
	res.Reason = reason
	res.Diagnostic = fold(primary, 1000)
	res.Hard = IsHard(reason, status, reply, ev.diag+" "+ev.human)
	return res
}
