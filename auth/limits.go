package auth

import (
	"context"
	"errors"
	"time"

	"github.com/msb-dev/msb/auth/ratelimit"
)

// Limits enforces keys' rate limits (in memory: a token bucket per key,
// plus a second, lower one for sandbox.start) and usage limits (in the
// registry, so they hold across restarts).
type Limits struct {
	Defaults Defaults
	Registry *Registry
	buckets  *ratelimit.Limiter
}

// NewLimits returns the limits of the keys in reg, with the server's
// default rates for keys that have none of their own; now is the clock of
// the buckets (nil: time.Now).
func NewLimits(reg *Registry, defaults Defaults, now func() time.Time) *Limits {
	return &Limits{Defaults: defaults, Registry: reg, buckets: ratelimit.New(now)}
}

// startSuffix keys a key's sandbox.start bucket apart from its main one.
const startSuffix = "\x00start"

// Allow takes one call from p's bucket, and for sandbox.start (start) from
// its start bucket too; and the same from the buckets of every key p
// descends from, so that a family of keys never calls faster than the key
// it descends from. It returns the state of p's bucket that decided, and
// a *RateLimitError when the call must wait.
func (l *Limits) Allow(p Principal, start bool) (ratelimit.Status, error) {
	for _, a := range p.Ancestors {
		ap := Principal{KeyID: a.KeyID, Rate: a.Rate, StartRate: a.StartRate}
		if st, err := l.allow(ap, start); err != nil {
			var rl *RateLimitError
			if errors.As(err, &rl) {
				rl.Family = true
			}
			return st, err
		}
	}
	return l.allow(p, start)
}

func (l *Limits) allow(p Principal, start bool) (ratelimit.Status, error) {
	r := effective(p.Rate, l.Defaults.Rate)
	if r.IsZero() {
		return ratelimit.Status{}, nil
	}
	if start {
		// A start refused by its own bucket takes nothing from the main one.
		if sr := effective(p.StartRate, l.Defaults.StartRate); !sr.IsZero() {
			if sst := l.buckets.Peek(p.KeyID+startSuffix, sr); !sst.Allowed {
				return sst, &RateLimitError{RetryAfter: sst.RetryAfter, Limit: sr, Start: true}
			}
		}
	}
	st := l.buckets.Take(p.KeyID, r)
	if !st.Allowed {
		return st, &RateLimitError{RetryAfter: st.RetryAfter, Limit: r}
	}
	if start {
		return l.allowStart(p)
	}
	return st, nil
}

// AllowStart takes one call from p's sandbox.start bucket only (and its
// ancestors'), for a start whose call was already taken from the main
// bucket. Without a start rate it reports the main bucket.
func (l *Limits) AllowStart(p Principal) (ratelimit.Status, error) {
	for _, a := range p.Ancestors {
		if st, err := l.allowStart(Principal{KeyID: a.KeyID, Rate: a.Rate, StartRate: a.StartRate}); err != nil {
			return st, err
		}
	}
	return l.allowStart(p)
}

func (l *Limits) allowStart(p Principal) (ratelimit.Status, error) {
	sr := effective(p.StartRate, l.Defaults.StartRate)
	if effective(p.Rate, l.Defaults.Rate).IsZero() || sr.IsZero() {
		return l.Status(p), nil
	}
	sst := l.buckets.Take(p.KeyID+startSuffix, sr)
	if !sst.Allowed {
		return sst, &RateLimitError{RetryAfter: sst.RetryAfter, Limit: sr, Start: true}
	}
	return sst, nil
}

// Status reports p's main bucket without taking from it.
func (l *Limits) Status(p Principal) ratelimit.Status {
	r := effective(p.Rate, l.Defaults.Rate)
	if r.IsZero() {
		return ratelimit.Status{}
	}
	return l.buckets.Peek(p.KeyID, r)
}

// Use counts one call of p's key and of every key it descends from that
// has a usage limit; ErrUsageLimit once p's uses are spent,
// ErrFamilyUsageLimit once an ancestor's are.
func (l *Limits) Use(ctx context.Context, p Principal) error {
	for _, a := range p.Ancestors {
		if a.MaxUses <= 0 {
			continue
		}
		if err := l.Registry.Use(ctx, a.KeyID, a.MaxUses); errors.Is(err, ErrUsageLimit) {
			return ErrFamilyUsageLimit
		} else if err != nil {
			return err
		}
	}
	return l.Registry.Use(ctx, p.KeyID, p.MaxUses)
}
