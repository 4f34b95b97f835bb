// Package channel defines the seam between the sending engine and the
// transports that carry messages out: email now, SMS and push later.
//
// The engine claims a batch of sending-log rows, renders one Message per row
// and hands the whole batch to a Sender. The Sender fills one Outcome per
// Message, and the engine writes the outcomes back in one transaction. The
// contract is written so that the engine never loses a recipient and never
// sends one twice by mistake: a Sender says Unknown whenever a message may
// have been accepted but it cannot prove it.
package channel

import (
	"context"
	"errors"
	"strconv"
	"time"
)

// ErrClosed is returned by Send after Close has been called.
var ErrClosed = errors.New("channel: sender is closed")

// Message is one rendered message for one recipient, ready to go out.
type Message struct {
	// ID is the sending-log row this message belongs to. Senders do not
	// interpret it; it lets logs and outcomes be traced back to the row.
	ID int64
	// To is the recipient address (for email the envelope recipient, RCPT TO).
	To string
	// From is the sender identity. For email it is the envelope sender
	// (MAIL FROM, the return path where bounces go), which may differ from
	// the From header inside Data.
	From string
	// Data is the channel-specific payload. For email it is the complete,
	// signed RFC 5322 message with CRLF line endings; the sender does the
	// SMTP dot-stuffing itself.
	Data []byte
	// Plain says, for email, that Data needs no dot-stuffing or line-end
	// repair: no line starts with a dot and every line break is CRLF, as
	// email.Composer builds messages. The sender then writes it as it is,
	// instead of looking at every line.
	Plain bool
}

// Status is what became of one message. The zero value is Unknown, so an
// outcome a Sender forgot to fill is never taken for a success or a failure.
type Status uint8

const (
	// Unknown means the message may or may not have been accepted: the
	// whole message was handed to the network but no final answer came
	// back (connection dropped or timed out after the end of the data).
	// The engine must not resend it blindly; it marks the row ambiguous.
	Unknown Status = iota
	// Sent means the next hop accepted the message (SMTP 2xx after DATA).
	Sent
	// SoftFail means the message was not accepted this time but may be
	// later: a 4xx answer, or a network failure before any of the message
	// was handed over. The row goes to retry with back-off within its
	// validity period.
	SoftFail
	// HardFail means the message was refused for good (a 5xx answer, or a
	// message the sender can tell is malformed without sending it). The
	// row fails with Code, Enhanced and Text as its reason.
	HardFail
	// Deferred means the sender did not attempt the message at all: the
	// context was cancelled before its turn, a rate limit would have made
	// it wait longer than the sender is allowed to, or the sender has no
	// way out for now (every relay down or refusing the account's mail:
	// see Gate). Nothing the recipient could answer happened; the engine
	// returns the row to the queue without counting an attempt.
	Deferred
)

// String returns the lower-case name of the status, as stored in logs.
func (s Status) String() string {
	switch s {
	case Unknown:
		return "unknown"
	case Sent:
		return "sent"
	case SoftFail:
		return "soft_fail"
	case HardFail:
		return "hard_fail"
	case Deferred:
		return "deferred"
	}
	return "status(" + strconv.Itoa(int(s)) + ")"
}

// Outcome is the result for one Message.
type Outcome struct {
	// Status says what became of the message.
	Status Status
	// Code is the provider's numeric answer (SMTP reply code such as 250,
	// 451, 550), or 0 when the outcome did not come from the provider
	// (network failure, local validation, rate limit).
	Code int
	// Enhanced is the enhanced status code (RFC 3463, e.g. "5.1.1") when
	// the provider gave one, else "".
	Enhanced string
	// Text is the provider's answer text, or a description of the local
	// error that decided the outcome.
	Text string
	// ProviderID is the identifier the provider gave the message (for SMTP
	// the relay's queue id, when its answer names one), else "".
	ProviderID string
}

// Sender carries messages out on one channel. Implementations are safe for
// concurrent use by several goroutines.
type Sender interface {
	// Send sends msgs and writes the outcome of msgs[i] to out[i]; out must
	// be at least as long as msgs. When Send returns, every out[i] for
	// i < len(msgs) has been written, whatever the error.
	//
	// Send does not retry answers from the provider (a 4xx is reported as
	// SoftFail for the engine to retry later), but it may retry a message
	// that it knows was never handed over, on another connection or relay,
	// and one the provider turned away to slow the sender down, not for its
	// recipient (Deferred when it cannot be tried again in time).
	// If ctx is cancelled, messages not yet started are Deferred and
	// messages already on the wire finish normally.
	//
	// Send returns a non-nil error only when it could not attempt the
	// batch at all (ErrClosed, out too short); the outcomes then say
	// Deferred.
	Send(ctx context.Context, msgs []Message, out []Outcome) error
	// Close releases connections. Send must not be called after Close.
	Close() error
}

// Shared is implemented by Senders whose limits are the installation's, not one node's: the
// messages per second a relay or a recipient domain may receive, and a domain's messages in
// progress. With several nodes sending from one database, each node's engine gives its Sender
// its share of every such limit (1/n while n nodes send), so that together they keep to it.
type Shared interface {
	// SetShare sets this node's part of every shared limit, in (0, 1]; 1 is the whole.
	SetShare(share float64)
}

// Gate is implemented by Senders that can tell when they cannot carry any message for a while:
// every SMTP relay is down, or refuses the account's mail. The engine claims no batch for such
// a Sender until the wait is over, and the messages of a batch caught by the outage come back
// Deferred: an outage costs the recipients no attempt and no retry wait, and the delivery goes
// on when the Sender is back.
type Gate interface {
	// Wait returns how long until the Sender may take messages again, and why it may not now
	// (for the operator: each relay's last error); 0 and "" when it may now.
	Wait() (time.Duration, string)
}
