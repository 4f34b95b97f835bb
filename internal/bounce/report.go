package bounce

import (
	"regexp"
	"strconv"
	"strings"
)

// dsnRecipient is one per-recipient block of an RFC 3464 delivery-status body.
type dsnRecipient struct {
	recipient string
	action    string
	status    string
	diagType  string
	diag      string
	remoteMTA string
}

// parseDSNFields reads the per-recipient blocks of a delivery-status body. It is lenient: blocks
// need not be separated by blank lines, and the fields may sit in a text/plain part.
func parseDSNFields(body string) []dsnRecipient {
	var out []dsnRecipient
	var cur *dsnRecipient
	var key string
	newBlock := true
	var hasFinal, hasOrig bool
	set := func(k, v string) {
		switch k {
		case "final-recipient", "original-recipient", "x-actual-recipient":
			addr := dsnAddress(v)
			if addr == "" {
				return
			}
			final := k == "final-recipient"
			if cur == nil || newBlock || final && hasFinal || !final && hasOrig {
				out = append(out, dsnRecipient{})
				cur = &out[len(out)-1]
				newBlock, hasFinal, hasOrig = false, false, false
			}
			if final {
				hasFinal = true
				cur.recipient = addr
			} else {
				hasOrig = true
				if cur.recipient == "" {
					cur.recipient = addr
				}
			}
		case "action":
			if cur != nil && cur.action == "" {
				cur.action = strings.ToLower(strings.Fields(v + " x")[0])
			}
		case "status":
			if cur != nil && cur.status == "" {
				cur.status = findStatus(v)
			}
		case "diagnostic-code":
			if cur != nil {
				t, d, ok := strings.Cut(v, ";")
				if !ok {
					t, d = "", v
				}
				cur.diagType = strings.ToUpper(strings.TrimSpace(t))
				cur.diag = strings.TrimSpace(cur.diag + " " + strings.TrimSpace(d))
			}
		case "remote-mta":
			if cur != nil && cur.remoteMTA == "" {
				_, d, ok := strings.Cut(v, ";")
				if !ok {
					d = v
				}
				cur.remoteMTA = strings.TrimSpace(d)
			}
		}
	}
	var val strings.Builder
	flush := func() {
		if key != "" {
			set(key, strings.TrimSpace(val.String()))
		}
		key = ""
		val.Reset()
	}
	for _, line := range strings.Split(body, "\n") {
		line = strings.TrimRight(line, "\r")
		if strings.TrimSpace(line) == "" {
			flush()
			newBlock = true
			continue
		}
		if (line[0] == ' ' || line[0] == '\t') && key != "" {
			val.WriteByte(' ')
			val.WriteString(strings.TrimSpace(line))
			continue
		}
		flush()
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || strings.ContainsAny(k, " \t") {
			continue
		}
		key = strings.ToLower(k)
		val.WriteString(v)
	}
	flush()
	return out
}

// dsnAddress takes the address out of "rfc822; <addr>".
func dsnAddress(v string) string {
	if t, a, ok := strings.Cut(v, ";"); ok && !strings.Contains(t, "@") {
		v = a
	}
	v = strings.TrimSpace(v)
	v = strings.Trim(v, "<> \t")
	if i := strings.IndexAny(v, " \t"); i > 0 && !strings.HasPrefix(v, `"`) {
		if a := addrRe.FindString(v); a != "" {
			return a
		}
	}
	if !strings.Contains(v, "@") {
		if a := addrRe.FindString(v); a != "" {
			return a
		}
		return ""
	}
	return v
}

// dsnResults reads a message with a delivery-status part.
func (m *message) dsnResults(rep *Report) []Result {
	blocks := parseDSNFields(string(m.dsnPart.body))
	report, _ := m.splitReport()
	var all []string
	for _, b := range blocks {
		all = append(all, b.recipient)
	}
	var out []Result
	for _, b := range blocks {
		human := recipientText(report, b.recipient, all)
		out = append(out, judge(evidence{
			recipient: b.recipient, status: b.status, action: b.action, diag: b.diag,
			diagType: b.diagType, human: human, whole: report, remoteMTA: b.remoteMTA,
		}))
	}
	return out
}

// textResults reads a plain-text bounce.
func (m *message) textResults(rep *Report) []Result {
	report, _ := m.splitReport()
	if blocks := parseDSNFields(report); len(blocks) > 0 {
		// A delivery status report pasted into a text part.
		var all []string
		for _, b := range blocks {
			all = append(all, b.recipient)
		}
		var out []Result
		for _, b := range blocks {
			out = append(out, judge(evidence{
				recipient: b.recipient, status: b.status, action: b.action, diag: b.diag,
				diagType: b.diagType, human: recipientText(report, b.recipient, all), whole: report,
			}))
		}
		return out
	}
	rcpts := m.findRecipients(report, rep)
	var out []Result
	for _, r := range rcpts {
		out = append(out, judge(evidence{
			recipient: r, human: recipientText(report, r, rcpts), whole: report,
		}))
	}
	return out
}

var (
	listedAddrRe = regexp.MustCompile(`(?i)^\s*(?:[-*>]\s*)?(?:[245]\d\d[ -](?:[245]\.\d{1,3}\.\d{1,3}\s+)?)?(?:(?:failed )?recipient(?:\(s\))?:?\s*|to:\s*|address:\s*|original-recipient:\s*|final-recipient:\s*(?:rfc822;)?\s*)?<?("?[^\s<>"]*"?@[a-z0-9.\[\]-]+)>?\s*(?::|\.\.\.|\s+on\s|\s*\(|\s*$|\s+-|\s+\S+.*(?:error|fail|unknown|exist|reject|denied|refused|unavailable|full|quota|invalid|disabled|suspend|block))`)
	rcptToRe     = regexp.MustCompile(`(?i)(?:rcpt to:?\s*|recipient:?\s*|delivered to:?\s*|to\s+|for\s+|delivering your mail to\s+|deliver (?:your )?(?:message|mail) to\s+|addressed to\s+)<?([^<>\s(),;:]+@[^<>\s(),;:]+)>?`)
)

// findRecipients picks the failed recipients out of a plain-text report: the X-Failed-Recipients
// header if there is one, else the addresses the report lists as failing, else the address given
// as the SMTP RCPT TO, else the original message's To.
func (m *message) findRecipients(report string, rep *Report) []string {
	exclude := map[string]bool{}
	for _, a := range append(append([]string{rep.From, rep.OriginalFrom}, rep.To...), rep.DeliveredTo...) {
		exclude[strings.ToLower(a)] = true
	}
	for _, v := range m.root.header.values("Return-Path") {
		exclude[strings.ToLower(firstAddress(v))] = true
	}
	for _, l := range strings.Split(report, "\n") {
		ll := strings.ToLower(l)
		if i := strings.Index(ll, "mail from:"); i >= 0 {
			if a := addrRe.FindString(l[i:]); a != "" {
				exclude[strings.ToLower(a)] = true
			}
		}
	}
	ok := func(a string) bool {
		la := strings.ToLower(a)
		local, _, _ := strings.Cut(la, "@")
		return !exclude[la] && local != "mailer-daemon" && !strings.HasPrefix(local, "mailer-daemon")
	}
	var out []string
	seen := map[string]bool{}
	add := func(a string) {
		a = strings.Trim(a, "<>.,;: ")
		if a == "" || !strings.Contains(a, "@") || !ok(a) || seen[strings.ToLower(a)] {
			return
		}
		seen[strings.ToLower(a)] = true
		out = append(out, a)
	}
	for _, a := range addressList(m.root.header.values("X-Failed-Recipients")) {
		// The MTA names them itself: no need to tell them from other addresses.
		if la := strings.ToLower(a); !seen[la] {
			seen[la] = true
			out = append(out, a)
		}
	}
	if len(out) > 0 {
		return out
	}
	for _, l := range strings.Split(report, "\n") {
		if mm := listedAddrRe.FindStringSubmatch(l); mm != nil {
			if a := addrRe.FindString(mm[1]); a != "" {
				add(a)
			} else {
				add(mm[1])
			}
		}
	}
	if len(out) > 0 {
		return out
	}
	for _, mm := range rcptToRe.FindAllStringSubmatch(report, -1) {
		add(mm[1])
	}
	if len(out) > 0 {
		return out
	}
	for _, a := range addrRe.FindAllString(report, -1) {
		add(a)
	}
	if len(out) > 0 {
		return out
	}
	for _, a := range rep.OriginalTo {
		add(a)
	}
	if len(out) == 0 {
		// Someone who wrote to themselves: the recipient is also the bounce's addressee.
		exclude = map[string]bool{}
		for _, l := range strings.Split(report, "\n") {
			if mm := listedAddrRe.FindStringSubmatch(l); mm != nil {
				add(mm[1])
			}
		}
	}
	return out
}

// recipientText gathers what a report says about one recipient: the lines from where it is named
// up to where the next recipient is named, and every other line naming it with the line after
// (an SMTP transcript's answer).
func recipientText(report, rcpt string, all []string) string {
	if rcpt == "" {
		return ""
	}
	lines := strings.Split(report, "\n")
	lr := strings.ToLower(rcpt)
	others := []string{}
	for _, a := range all {
		if la := strings.ToLower(a); la != lr && la != "" {
			others = append(others, la)
		}
	}
	keep := make([]bool, len(lines))
	in := false
	for i, l := range lines {
		ll := strings.ToLower(l)
		mentions := strings.Contains(ll, lr)
		if mentions {
			in = true
			keep[i] = true
			// In an SMTP transcript the answer follows the command that named the recipient.
			if i+1 < len(lines) && (strings.Contains(ll, "rcpt to") || strings.Contains(ll, ">>>")) {
				keep[i+1] = true
			}
			continue
		}
		for _, o := range others {
			if strings.Contains(ll, o) {
				in = false
				break
			}
		}
		if in {
			keep[i] = true
		}
	}
	var b strings.Builder
	for i, l := range lines {
		if keep[i] {
			b.WriteString(l)
			b.WriteByte('\n')
		}
	}
	return b.String()
}

// feedbackResults reads an ARF report: one result per Original-Rcpt-To, else the returned
// message's To, else one result with no recipient.
func (m *message) feedbackResults(rep *Report) []Result {
	var ftype string
	var rcpts []string
	if m.feedbackPart != nil {
		h, _ := parseHeader(m.feedbackPart.body)
		ftype = strings.ToLower(strings.TrimSpace(h.get("Feedback-Type")))
		for _, v := range append(h.values("Original-Rcpt-To"), h.values("Removal-Recipient")...) {
			rcpts = append(rcpts, addressList([]string{v})...)
		}
	}
	if ftype == "" {
		ftype = "abuse"
	}
	if len(rcpts) == 0 {
		rcpts = rep.OriginalTo
	}
	if len(rcpts) == 0 {
		rcpts = []string{""}
	}
	report, _ := m.splitReport()
	var out []Result
	for _, r := range rcpts {
		out = append(out, Result{
			Recipient: r, Reason: ReasonFeedback, FeedbackType: ftype,
			Diagnostic: fold(report, 500),
		})
	}
	return out
}

var (
	statusRe = regexp.MustCompile(`\b([245])\.(\d{1,3})\.(\d{1,3})\b`)
	replyRe  = regexp.MustCompile(`(?:^|[\s:;(\[=#'"])([245][0-9][0-9])(?:[\s\-,.)\]'"]|$)`)
)

// findStatus returns the first RFC 3463 enhanced status code in s that is not part of a longer
// dotted number such as an IP address or a version.
func findStatus(s string) string {
	for _, loc := range statusRe.FindAllStringSubmatchIndex(s, -1) {
		a, b := loc[0], loc[1]
		// Not part of a version ("mta-5.5.0-3") or an IP address.
		if a > 0 && strings.IndexByte(".-_", s[a-1]) >= 0 || a > 0 && isAlnum(s[a-1]) {
			continue
		}
		if b < len(s) && (s[b] == '-' || s[b] == '.' && b+1 < len(s) && isAlnum(s[b+1]) || isAlnum(s[b])) {
			continue
		}
		return s[a:b]
	}
	return ""
}

// findReply returns the first SMTP reply code in s, 0 if none.
func findReply(s string) int {
	for _, m := range replyRe.FindAllStringSubmatchIndex(s, -1) {
		n, _ := strconv.Atoi(s[m[2]:m[3]])
		// Skip what is plainly part of an address, a time or a number.
		if m[3] < len(s) && (s[m[3]] == '.' && m[3]+1 < len(s) && s[m[3]+1] >= '0' && s[m[3]+1] <= '9') {
			continue
		}
		return n
	}
	return 0
}

func isAlnum(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}
