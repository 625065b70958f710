package sandbox

import (
	"errors"
	"fmt"
)

// Error classes shared by every layer of msb. Callers wrap them with context
// (fmt.Errorf("sandbox %q: %w", name, ErrNotFound)) and test them with
// errors.Is; the rpc package maps each class to one JSON-RPC error code.
var (
	// ErrInvalidArgument: the caller sent something malformed (bad name,
	// bad config field, unknown image). Maps to -32602.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrNotFound: no such sandbox (or image) in that namespace. Maps to -32003.
	ErrNotFound = errors.New("not found")
	// ErrConflict: the request does not fit the current state (sandbox not
	// running, already running with another config, a dependency is down).
	// Maps to -32001.
	ErrConflict = errors.New("conflict")
	// ErrUnavailable: the server cannot do this at all right now (no runtime,
	// the engine broke). Maps to -32603.
	ErrUnavailable = errors.New("unavailable")
)

// Errorf returns an error whose message is exactly the formatted text (what
// a client reads) and which matches class under errors.Is.
func Errorf(class error, format string, args ...any) error {
	return &classError{msg: fmt.Sprintf(format, args...), class: class}
}

type classError struct {
	msg   string
	class error
}

func (e *classError) Error() string { return e.msg }
func (e *classError) Unwrap() error { return e.class }
