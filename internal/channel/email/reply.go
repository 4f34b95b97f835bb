package email

import (
	"bytes"
	"errors"
	"fmt"
	"strings"

	"github.com/heraldhq/herald/internal/channel"
)

// ReplyError is an SMTP reply that ended a connection-level step (greeting,
// EHLO, STARTTLS, AUTH) with something other than success.
type ReplyError struct {
	// Step names the command that was answered, e.g. "AUTH".
	Step string
	// Code is the SMTP reply code.
	Code int
	// Enhanced is the enhanced status code, or "".
	Enhanced string
	// Text is the reply text without code and enhanced code.
	Text string
}

// Error describes the reply.
func (e *ReplyError) Error() string {
	if e.Enhanced != "" {
		return fmt.Sprintf("smtp %s: %d %s %s", e.Step, e.Code, e.Enhanced, e.Text)
	}
	return fmt.Sprintf("smtp %s: %d %s", e.Step, e.Code, e.Text)
}

var errMalformedReply = errors.New("smtp: malformed reply")

// splitEnhanced splits an RFC 3463 enhanced status code ("5.1.1") off the
// start of a reply text; it returns "" when the text does not start with one
// whose class matches the reply code's.
func splitEnhanced(code int, text string) (enhanced, rest string) {
	// class "." subject(1-3 digits) "." detail(1-3 digits)
	if len(text) < 5 || text[0] != byte('0'+code/100) || text[1] != '.' {
		return "", text
	}
	i := 2
	for n := 0; i < len(text) && text[i] >= '0' && text[i] <= '9'; i++ {
		if n++; n > 3 {
			return "", text
		}
	}
	if i == 2 || i >= len(text) || text[i] != '.' {
		return "", text
	}
	i++
	j := i
	for ; i < len(text) && text[i] >= '0' && text[i] <= '9'; i++ {
	}
	if i == j || i-j > 3 || (i < len(text) && text[i] != ' ') {
		return "", text
	}
	return text[:i], strings.TrimPrefix(text[i:], " ")
}

// queueID finds the relay's queue id in a final reply such as
// "2.0.0 Ok: queued as 4ZxY3k1Bz" (Postfix, SendGrid and many others).
func queueID(text []byte) string {
	const marker = "queued as "
	i := bytes.Index(text, []byte(marker))
	if i < 0 {
		return ""
	}
	id := text[i+len(marker):]
	if j := bytes.IndexAny(id, " \n\r\t"); j >= 0 {
		id = id[:j]
	}
	return string(id)
}

// outcome turns a failing or final reply into an Outcome; text is the reply
// text as read (enhanced code still included).
func outcome(code int, text []byte) channel.Outcome {
	st := channel.SoftFail
	switch {
	case code >= 200 && code < 300:
		return channel.Outcome{Status: channel.Sent, Code: code, ProviderID: queueID(text)}
	case code >= 500:
		st = channel.HardFail
	}
	enh, rest := splitEnhanced(code, string(text))
	return channel.Outcome{Status: st, Code: code, Enhanced: enh, Text: rest}
}

// isThrottle reports whether a reply code asks the client to slow down.
func isThrottle(code int) bool { return code == 421 || code == 450 || code == 451 }
