package bounce

import (
	"encoding/json"
	"strings"
)

// sesNotification is the part of an Amazon SES bounce or complaint notification (delivered by
// e-mail through SNS, or posted to a webhook) that says what happened to whom.
type sesNotification struct {
	NotificationType string `json:"notificationType"`
	EventType        string `json:"eventType"`
	Bounce           *struct {
		BounceType        string `json:"bounceType"`
		BouncedRecipients []struct {
			EmailAddress   string `json:"emailAddress"`
			Action         string `json:"action"`
			Status         string `json:"status"`
			DiagnosticCode string `json:"diagnosticCode"`
		} `json:"bouncedRecipients"`
	} `json:"bounce"`
	Complaint *struct {
		ComplaintFeedbackType string `json:"complaintFeedbackType"`
		ComplainedRecipients  []struct {
			EmailAddress string `json:"emailAddress"`
		} `json:"complainedRecipients"`
	} `json:"complaint"`
}

// jsonNotification reads a JSON bounce notification (Amazon SES's format) found in the body of a
// message. ok is false when the text is not one.
func jsonNotification(text string) ([]Result, bool) {
	t := strings.TrimSpace(text)
	start := strings.IndexByte(t, '{')
	if start < 0 || !strings.Contains(t, "Recipients\"") {
		return nil, false
	}
	var n sesNotification
	// Mailers wrap long lines, even inside a JSON string.
	dec := json.NewDecoder(strings.NewReader(strings.ReplaceAll(t[start:], "\n", "")))
	if err := dec.Decode(&n); err != nil {
		return nil, false
	}
	var out []Result
	if n.Bounce != nil {
		for _, r := range n.Bounce.BouncedRecipients {
			diag := r.DiagnosticCode
			if _, d, ok := strings.Cut(diag, ";"); ok && len(diag) < 12+len(d) {
				diag = strings.TrimSpace(d)
			}
			out = append(out, judge(evidence{
				recipient: r.EmailAddress, status: findStatus(r.Status), action: strings.ToLower(r.Action),
				diag: diag,
			}))
		}
	}
	if n.Complaint != nil {
		ft := strings.ToLower(n.Complaint.ComplaintFeedbackType)
		if ft == "" {
			ft = "abuse"
		}
		for _, r := range n.Complaint.ComplainedRecipients {
			out = append(out, Result{Recipient: r.EmailAddress, Reason: ReasonFeedback, FeedbackType: ft})
		}
	}
	return out, len(out) > 0
}
