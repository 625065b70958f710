// Package errdefs is msb's one error model: a handful of classes that every
// package wraps, so that each front-end (JSON-RPC, MCP, the v1 REST API)
// maps a class to its own codes in one table and never has to know which
// package an error came from.
//
// Two ways to make a classed error, as containerd's errdefs and WTF Dial's
// Error do:
//
//   - Wrap a sentinel with context: fmt.Errorf("sandbox %q: %w", name, errdefs.ErrNotFound).
//     The message the client reads is the whole chain.
//   - Write the client's message in full: errdefs.NotFoundf("sandbox %q not found: start it first", name).
//     The message is exactly that text.
//
// Classify finds the class; an error of no class is Internal, whose message
// a front-end never shows (it logs it with a reference instead). So the
// safe default holds: forgetting to classify an error can hide a message,
// never leak one.
package errdefs

import (
	"errors"
	"fmt"
)

// Class is the kind of an error, what a front-end maps to a code.
type Class uint8

// The classes. The zero value is Internal: an error nobody classified.
const (
	Internal        Class = iota // a bug or a failure the client cannot act on; its detail is only logged
	Invalid                      // the request is malformed: a bad name, field, value
	NotFound                     // no such sandbox, key, image, volume
	Conflict                     // the request does not fit the current state (not running, exists, in use)
	Unauthenticated              // no usable API key
	Forbidden                    // the key may not do this (namespace, scope, quota of rights)
	RateLimited                  // over a rate limit; retry later
	Unavailable                  // the server cannot do this now (no engine, a registry is down); message shown
	Exhausted                    // a quota or capacity limit is reached (disk, sandboxes per namespace)
)

var names = [...]string{"internal", "invalid", "not_found", "conflict", "unauthenticated", "forbidden", "rate_limited", "unavailable", "exhausted"}

// String names the class, for logs and audit records.
func (c Class) String() string {
	if int(c) < len(names) {
		return names[c]
	}
	return fmt.Sprintf("class(%d)", uint8(c))
}

// sentinel is the error each class is matched by under errors.Is.
type sentinel struct {
	class Class
	msg   string
}

func (s *sentinel) Error() string { return s.msg }

// The sentinels, one per class, to wrap with %w and test with errors.Is.
var (
	ErrInternal        error = &sentinel{Internal, "internal error"}
	ErrInvalid         error = &sentinel{Invalid, "invalid argument"}
	ErrNotFound        error = &sentinel{NotFound, "not found"}
	ErrConflict        error = &sentinel{Conflict, "conflict"}
	ErrUnauthenticated error = &sentinel{Unauthenticated, "authentication failed"}
	ErrForbidden       error = &sentinel{Forbidden, "forbidden"}
	ErrRateLimited     error = &sentinel{RateLimited, "rate limited"}
	ErrUnavailable     error = &sentinel{Unavailable, "unavailable"}
	ErrExhausted       error = &sentinel{Exhausted, "quota exceeded"}
)

var sentinels = [...]error{ErrInternal, ErrInvalid, ErrNotFound, ErrConflict, ErrUnauthenticated, ErrForbidden, ErrRateLimited, ErrUnavailable, ErrExhausted}

// Error is an error of a class whose message is written for the client:
// what went wrong and what to do. Err, if set, is the cause, kept for
// errors.Is and errors.As (and logs) but not part of the message.
type Error struct {
	Class Class
	Msg   string
	Err   error
}

func (e *Error) Error() string { return e.Msg }

// Is makes an Error match its class's sentinel.
func (e *Error) Is(target error) bool {
	s, ok := target.(*sentinel)
	return ok && s.class == e.Class
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// New returns an error of class c whose message is the formatted text.
func New(c Class, format string, args ...any) error {
	return &Error{Class: c, Msg: fmt.Sprintf(format, args...)}
}

// Invalidf returns an Invalid error with the formatted message.
func Invalidf(format string, args ...any) error { return New(Invalid, format, args...) }

// NotFoundf returns a NotFound error with the formatted message.
func NotFoundf(format string, args ...any) error { return New(NotFound, format, args...) }

// Conflictf returns a Conflict error with the formatted message.
func Conflictf(format string, args ...any) error { return New(Conflict, format, args...) }

// Forbiddenf returns a Forbidden error with the formatted message.
func Forbiddenf(format string, args ...any) error { return New(Forbidden, format, args...) }

// Unavailablef returns an Unavailable error with the formatted message.
func Unavailablef(format string, args ...any) error { return New(Unavailable, format, args...) }

// Exhaustedf returns an Exhausted error with the formatted message.
func Exhaustedf(format string, args ...any) error { return New(Exhausted, format, args...) }

// Classify returns the class of err: that of the outermost Error in its
// chain, else of the first sentinel it matches, else Internal (also for nil).
func Classify(err error) Class {
	if err == nil {
		return Internal
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Class
	}
	for c := Class(1); int(c) < len(sentinels); c++ {
		if errors.Is(err, sentinels[c]) {
			return c
		}
	}
	return Internal
}

// Is reports whether err is of class c.
func Is(err error, c Class) bool { return err != nil && Classify(err) == c }

// Wrapf returns an error whose message is exactly the formatted text, of
// cause's class, that matches cause under errors.Is: a package's own
// sentinel (namespace.ErrInvalidName) with a message written for the client.
func Wrapf(cause error, format string, args ...any) error {
	return &Error{Class: Classify(cause), Msg: fmt.Sprintf(format, args...), Err: cause}
}
