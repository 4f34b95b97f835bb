package bounce

import (
	"regexp"
	"strings"
)

// message is a parsed bounce with its parts sorted by role.
type message struct {
	root         *entity
	texts        []*entity // human-readable parts, outside any attached original message
	dsnPart      *entity   // message/delivery-status
	feedbackPart *entity   // message/feedback-report
	original     *entity   // message/rfc822 or text/rfc822-headers
	reportType   string

	report, originalText *string // cached splitReport results
}

func (m *message) collect(e *entity, depth int) {
	switch t := e.mediaType; {
	case strings.HasPrefix(t, "multipart/") && len(e.parts) > 0:
		if t == "multipart/report" && m.reportType == "" {
			m.reportType = strings.ToLower(e.params["report-type"])
		}
		for _, p := range e.parts {
			m.collect(p, depth+1)
		}
	case isMessageType(t), t == "text/rfc822-headers", t == "text/rfc822-header":
		if m.original == nil {
			m.original = e
		}
	case t == "message/delivery-status", t == "message/global-delivery-status", t == "text/delivery-status":
		if m.dsnPart == nil {
			m.dsnPart = e
		}
	case t == "message/feedback-report":
		if m.feedbackPart == nil {
			m.feedbackPart = e
		}
	case strings.HasPrefix(t, "text/"), strings.HasPrefix(t, "multipart/"):
		m.texts = append(m.texts, e)
	}
}

// humanText is the readable text of the bounce: its text/plain parts, or its HTML made plain
// when it has no text/plain part.
func (m *message) humanText() string {
	var b strings.Builder
	for _, e := range m.texts {
		if e.mediaType != "text/html" {
			b.Write(e.body)
			b.WriteByte('\n')
		}
	}
	if b.Len() == 0 {
		for _, e := range m.texts {
			b.WriteString(htmlText(e.body))
			b.WriteByte('\n')
		}
	}
	return strings.ToValidUTF8(b.String(), "?")
}

// separators are the lines with which plain-text bounces start the copy of the original message.
var separators = []string{
	"below this line is a copy of the message",
	"this is a copy of the message",
	"this is a copy of the headers",
	"original message follows",
	"original message headers",
	"unsent message below",
	"message headers follow",
	"headers of your message follow",
	"---- original message ----",
	"----- original message -----",
	"------ original message ------",
	"the header of the original message",
	"following is a copy of the message",
	"content-type: message/rfc822",
	"content-type: text/rfc822-headers",
	"------- returned message",
	"----- returned message",
}

var headerLineRe = regexp.MustCompile(`^(?i)(return-path|received|message-id|date|from|to|subject|mime-version|dkim-signature|x-[a-z0-9-]+|content-type|reply-to|delivered-to):\s`)

// splitReport cuts the human-readable text into the report and the copy of the original message
// that follows it, if any.
func (m *message) splitReport() (report, original string) {
	if m.report != nil {
		return *m.report, *m.originalText
	}
	text := m.humanText()
	lines := strings.Split(text, "\n")
	cut := -1
	for i, l := range lines {
		ll := strings.ToLower(strings.TrimSpace(l))
		for _, s := range separators {
			if strings.Contains(ll, s) {
				cut = i
				break
			}
		}
		if cut >= 0 {
			break
		}
		// A header block at the left margin after a blank line is the original message.
		if i > 0 && strings.TrimSpace(lines[i-1]) == "" && headerLineRe.MatchString(l) &&
			i+1 < len(lines) && (headerLineRe.MatchString(lines[i+1]) || strings.HasPrefix(lines[i+1], " ") || strings.HasPrefix(lines[i+1], "\t")) {
			cut = i - 1
			break
		}
	}
	if cut < 0 {
		report = text
	} else {
		report = strings.Join(lines[:cut], "\n")
		original = strings.Join(lines[cut+1:], "\n")
	}
	m.report, m.originalText = &report, &original
	return report, original
}

// findOriginal fills the Original* fields from the returned message or its headers.
func (m *message) findOriginal(rep *Report) {
	var h header
	switch {
	case m.original != nil && len(m.original.parts) > 0:
		h = m.original.parts[0].header
	case m.original != nil:
		h, _ = parseHeader([]byte(strings.TrimLeft(string(m.original.body), "\n\r\t ")))
	default:
		_, orig := m.splitReport()
		orig = strings.TrimLeft(orig, "\n\r\t -")
		h, _ = parseHeader([]byte(orig))
	}
	rep.OriginalMessageID = strings.Trim(h.get("Message-ID"), "<> \t")
	rep.OriginalFrom = firstAddress(decodeHeader(h.get("From")))
	rep.OriginalTo = addressList(h.values("To"))
}

func (m *message) isFeedback() bool {
	return m.feedbackPart != nil || m.reportType == "feedback-report"
}

var (
	bounceSenderRe = regexp.MustCompile(`(?i)^(mailer-daemon|post_?master|mail-daemon|mailerdaemon|mdaemon|mail_daemon|bounce|bounces|mail delivery (sub)?system)\b`)
	bounceSubjects = []string{
		"undeliver", "undelivered", "delivery status notification", "delivery failure",
		"delivery failed", "delivery has failed", "returned mail", "failure notice",
		"mail delivery failed", "mail system error", "non remis", "non-delivery", "nondelivery",
		"could not send message", "delivery notification", "mail could not be delivered",
		"rejected:", "warning: could not", "delayed mail", "unzustellbar", "returned to sender",
		"message not delivered", "undeliverable", "error sending message", "permanent error",
		"delivery problem", "nicht zugestellt", "no se puede entregar",
	}
	bounceBodies = []string{
		"this is the qmail-send program", "created automatically by mail delivery software",
		"could not be delivered", "was not delivered", "wasn't delivered", "delivery has failed",
		"did not reach the following recipient", "undeliverable", "permanent error", "permanent fatal",
		"delivery to the following recipient", "the following address", "unable to deliver",
		"couldn't be delivered", "mail delivery failed", "delivery failed", "transcript of session",
		"the following message to", "user unknown", "returned to the sender",
		"this is the mail system at host", "there was an error delivering",
		"i'm afraid i wasn't able to deliver", "message you sent", "your message to",
	}
)

// looksLikeBounce says whether a message with no delivery-status part is a plain-text bounce.
func (m *message) looksLikeBounce() bool {
	h := m.root.header
	if len(h.values("X-Failed-Recipients")) > 0 {
		return true
	}
	from := decodeHeader(h.get("From"))
	fromBounce := bounceSenderRe.MatchString(strings.TrimSpace(strings.Trim(from, `"<`))) ||
		strings.Contains(strings.ToLower(from), "mailer-daemon") || strings.Contains(strings.ToLower(from), "postmaster@")
	subj := strings.ToLower(decodeHeader(h.get("Subject")))
	subjBounce := containsAny(subj, bounceSubjects)
	report, _ := m.splitReport()
	body := strings.ToLower(report)
	if containsAny(body, strongBodies) {
		return true
	}
	signals := 0
	for _, ok := range []bool{
		fromBounce, subjBounce, containsAny(body, bounceBodies),
		strings.TrimSpace(h.get("Return-Path")) == "<>" || strings.TrimSpace(from) == "<>",
	} {
		if ok {
			signals++
		}
	}
	return signals >= 2 || fromBounce && !m.isAutoReply()
}

// strongBodies are sentences only a bounce contains.
var strongBodies = []string{
	"this is the qmail-send program", "created automatically by mail delivery software",
	"could not be delivered to:", "did not reach the following recipient",
	"transcript of session follows", "the following addresses had permanent",
	"delivery to the following recipient", "this is the mail system at host",
	"i'm afraid i wasn't able to deliver", "there was an error delivering your mail",
}

var autoReplySubjects = []string{
	"auto:", "automatic reply", "autoreply", "auto-reply", "auto reply", "autoresponse",
	"auto response", "out of office", "out of the office", "out-of-office", "away from",
	"vacation", "on leave", "abwesenheit", "abwesend", "réponse automatique",
	"reponse automatique", "absence", "respuesta automática", "risposta automatica",
	"automatisch antwoord", "自動応答", "自動返信", "away until", "i am away", "currently away",
}

// isAutoReply applies RFC 3834 and the de-facto headers and subjects of vacation responders.
func (m *message) isAutoReply() bool {
	h := m.root.header
	as := strings.ToLower(h.get("Auto-Submitted"))
	if strings.HasPrefix(as, "auto-replied") || strings.HasPrefix(as, "auto-notified") {
		return true
	}
	for _, k := range []string{"X-Autoreply", "X-Autorespond", "X-Autoresponder", "X-Vacation", "X-Mail-Autoreply"} {
		if len(h.values(k)) > 0 {
			return true
		}
	}
	if p := strings.ToLower(h.get("Precedence")); p == "auto_reply" || p == "auto-reply" {
		return true
	}
	if strings.EqualFold(h.get("X-Auto-Response-Suppress"), "All") && strings.Contains(strings.ToLower(h.get("Subject")), ":") {
		return true
	}
	subj := strings.ToLower(decodeHeader(h.get("Subject")))
	return containsAny(subj, autoReplySubjects)
}

func containsAny(s string, list []string) bool {
	for _, p := range list {
		if strings.Contains(s, p) {
			return true
		}
	}
	return false
}

// forwardedBounce returns the attached message when this one carries no report of its own and
// the attachment is a delivery status notification.
func (m *message) forwardedBounce() *message {
	if m.dsnPart != nil || m.isFeedback() || m.original == nil || len(m.original.parts) == 0 {
		return nil
	}
	inner := &message{root: m.original.parts[0]}
	inner.collect(inner.root, 0)
	if inner.dsnPart == nil {
		return nil
	}
	return inner
}
