// Package problem is Herald's vocabulary of errors a caller can act on: invalid input, a
// missing object, a conflict, a missing role, too many attempts. Domain services return them;
// the HTTP layer turns each kind into its status code and the JSON error shape, and the
// command line prints the message. Any other error is an internal one.
package problem

import (
	"errors"
	"fmt"
	"time"
)

// Kind classifies a problem; each kind has one HTTP status.
type Kind int

// The kinds of problem.
const (
	Invalid         Kind = iota + 1 // the request is malformed or breaks a rule: 400
	Unauthenticated                 // no valid session or token: 401
	Forbidden                       // authenticated, but lacking a role or right: 403
	NotFound                        // the object does not exist: 404
	Conflict                        // the object's state forbids the action: 409
	TooLarge                        // the request body is over the limit: 413
	TooMany                         // too many attempts; retry later: 429
)

// Error is a problem with a stable machine-readable code and a message a person can act on.
type Error struct {
	Kind    Kind
	Code    string
	Message string
	// Field names the input at fault, where there is one.
	Field string
	// RetryAfter tells a throttled caller when to try again.
	RetryAfter time.Duration
	// Details carries structured data for the answer (per-line import errors, say).
	Details any
}

func (e *Error) Error() string { return e.Message }

// New returns a problem of kind k with the given code and formatted message.
func New(k Kind, code, format string, args ...any) *Error {
	return &Error{Kind: k, Code: code, Message: fmt.Sprintf(format, args...)}
}

// Invalidf returns an Invalid problem about field.
func Invalidf(field, format string, args ...any) *Error {
	return &Error{Kind: Invalid, Code: "invalid", Field: field, Message: fmt.Sprintf(format, args...)}
}

// NotFoundf returns a NotFound problem.
func NotFoundf(format string, args ...any) *Error {
	return &Error{Kind: NotFound, Code: "not_found", Message: fmt.Sprintf(format, args...)}
}

// Conflictf returns a Conflict problem with the given code.
func Conflictf(code, format string, args ...any) *Error {
	return &Error{Kind: Conflict, Code: code, Message: fmt.Sprintf(format, args...)}
}

// As returns the problem inside err, if there is one.
func As(err error) (*Error, bool) {
	var p *Error
	ok := errors.As(err, &p)
	return p, ok
}
