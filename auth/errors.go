package auth

import (
	"errors"
	"fmt"
	"time"

	"github.com/msb-dev/msb/auth/ratelimit"
)

// ErrUnauthenticated is matched (errors.Is) by every error that means the
// request carries no usable API key; the rpc layer answers 401 with the
// error's own message, which names the cause and never the key.
var ErrUnauthenticated = errors.New("authentication failed")

// The causes of a 401, with the messages clients show.
var (
	ErrKeyRequired = &authError{"API key is required"}
	ErrInvalidKey  = &authError{"invalid API key"}
	ErrExpired     = &authError{"API key has expired"}
	ErrRevoked     = &authError{"API key has been revoked"}
)

// ErrKeyNotFound is returned by the registry for an unknown key id.
var ErrKeyNotFound = errors.New("no such API key")

type authError struct{ msg string }

func (e *authError) Error() string        { return e.msg }
func (e *authError) Is(target error) bool { return target == ErrUnauthenticated }

// ErrUsageLimit is the 401 of a key whose --max-uses are spent.
var ErrUsageLimit = &authError{"API key usage limit reached: ask for a new key, or raise it with `msb server keys limit ID --max-uses N`"}

// ErrForbidden is matched by errors for an authenticated caller that may not
// do what it asked: a missing scope, or a key it may not manage or create.
var ErrForbidden = errors.New("forbidden")

// ErrInvalidArgument is matched by errors for bad input to key management
// (an unknown scope, a malformed rate or expiry).
var ErrInvalidArgument = errors.New("invalid argument")

// ErrRateLimited is matched by *RateLimitError.
var ErrRateLimited = errors.New("rate limited")

// RateLimitError is a call refused because the key's bucket is empty.
type RateLimitError struct {
	RetryAfter time.Duration
	Limit      ratelimit.Rate
	Start      bool // the sandbox.start bucket
}

func (e *RateLimitError) Error() string {
	what := "rate limit"
	if e.Start {
		what = "sandbox.start rate limit"
	}
	secs := int64((e.RetryAfter + time.Second - 1) / time.Second)
	return fmt.Sprintf("%s of this API key (%s) exceeded: retry in %ds, or ask for a higher limit (`msb server keys limit ID --rate N/m`)",
		what, e.Limit.Describe(), secs)
}

// Is makes a *RateLimitError match ErrRateLimited.
func (e *RateLimitError) Is(target error) bool { return target == ErrRateLimited }

// forbidden is an error matching ErrForbidden with a complete message.
type forbidden struct{ msg string }

func (e *forbidden) Error() string        { return e.msg }
func (e *forbidden) Is(target error) bool { return target == ErrForbidden }

// Forbiddenf returns an error matching ErrForbidden with the formatted message.
func Forbiddenf(format string, args ...any) error {
	return &forbidden{fmt.Sprintf(format, args...)}
}

// MissingScope is the 403 for a caller without scope.
func MissingScope(method string, scope Scope) error {
	if scope == ScopeAll {
		return Forbiddenf("%s needs an API key with every scope (*)", method)
	}
	return Forbiddenf("API key lacks scope %s, which %s needs: use a key made with --scope %s", scope, method, scope)
}
