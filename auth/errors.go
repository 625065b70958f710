package auth

import (
	"fmt"
	"time"

	"github.com/msb-dev/msb/auth/ratelimit"
	"github.com/msb-dev/msb/errdefs"
)

// The causes of a 401 (class Unauthenticated), with the messages clients
// show. They name the cause, never the key.
var (
	ErrKeyRequired = errdefs.New(errdefs.Unauthenticated, "API key is required")
	ErrInvalidKey  = errdefs.New(errdefs.Unauthenticated, "invalid API key")
	ErrExpired     = errdefs.New(errdefs.Unauthenticated, "API key has expired")
	ErrRevoked     = errdefs.New(errdefs.Unauthenticated, "API key has been revoked")
	// ErrUsageLimit is the 401 of a key whose --max-uses are spent.
	ErrUsageLimit = errdefs.New(errdefs.Unauthenticated, "API key usage limit reached: ask for a new key, or raise it with `msb server keys limit ID --max-uses N`")
	// ErrFamilyUsageLimit is the 401 of a key whose uses are left but
	// those of a key it was made from are spent.
	ErrFamilyUsageLimit = errdefs.New(errdefs.Unauthenticated, "API key usage limit reached by the key it was made from: its uses are shared with that key's, which are spent")
	// ErrFamilyRevoked is the 401 of a key made from a key that was
	// revoked (not rotated): revoking a key revokes every key made from it.
	ErrFamilyRevoked = errdefs.New(errdefs.Unauthenticated, "API key has been revoked: the key it was made from was revoked, and that revokes every key made from it")
)

// ErrKeyNotFound is returned by the registry for an unknown key id (class NotFound).
var ErrKeyNotFound = errdefs.New(errdefs.NotFound, "no such API key")

// RateLimitError is a call refused because the key's bucket is empty. It
// is of class RateLimited.
type RateLimitError struct {
	RetryAfter time.Duration
	Limit      ratelimit.Rate
	Start      bool // the sandbox.start bucket
	// Family marks a refusal by the bucket of a key this one descends from.
	Family bool
	// InFlight, when set, is the bound on calls under way at once that
	// the call would have passed (not a rate).
	InFlight int
}

func (e *RateLimitError) Error() string {
	if e.InFlight > 0 {
		return fmt.Sprintf("this API key already has %d calls under way, the most it may: retry when one has finished (max_calls_per_key in config.toml)", e.InFlight)
	}
	what := "rate limit"
	if e.Start {
		what = "sandbox.start rate limit"
	}
	whose := "this API key"
	if e.Family {
		whose = "the key this API key was made from, which its calls share"
	}
	secs := int64((e.RetryAfter + time.Second - 1) / time.Second)
	return fmt.Sprintf("%s of %s (%s) exceeded: retry in %ds, or ask for a higher limit (`msb server keys limit ID --rate N/m`)",
		what, whose, e.Limit.Describe(), secs)
}

// Is makes a *RateLimitError match errdefs.ErrRateLimited.
func (e *RateLimitError) Is(target error) bool { return target == errdefs.ErrRateLimited }

// MissingScope is the 403 for a caller without scope.
func MissingScope(method string, scope Scope) error {
	if scope == ScopeAll {
		return errdefs.Forbiddenf("%s needs an API key with every scope (*)", method)
	}
	return errdefs.Forbiddenf("API key lacks scope %s, which %s needs: use a key made with --scope %s", scope, method, scope)
}
