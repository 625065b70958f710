// Package ratelimit parses rate specs such as "600/m" and enforces them with
// in-memory token buckets, one per key. Buckets live only in memory: they
// cost a map lookup and a short lock per call, and start full again when the
// server restarts.
package ratelimit

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/msb-dev/msb/errdefs"
)

// ErrInvalid is wrapped by every error Parse returns.
var ErrInvalid = errdefs.New(errdefs.Invalid, "invalid rate")

// Rate is at most N calls per Per, with bursts of up to N. The zero Rate
// means "not set" (callers fall back to a default).
type Rate struct {
	N   int64
	Per time.Duration
}

// IsZero reports whether r is unset.
func (r Rate) IsZero() bool { return r.N == 0 }

// MaxN bounds the number in a rate spec.
const MaxN = 1_000_000_000

var units = []struct {
	name string
	size time.Duration
}{{"s", time.Second}, {"m", time.Minute}, {"h", time.Hour}, {"d", 24 * time.Hour}}

const usage = "use a whole number of calls, a slash and one unit: s, m, h or d, e.g. 600/m, 10/s, 1000/h"

// Parse reads "N/unit": N a whole number from 1 to 1e9, unit s, m, h or d.
// Errors wrap ErrInvalid and quote (a bounded part of) the input.
func Parse(s string) (Rate, error) {
	num, unit, ok := strings.Cut(s, "/")
	if !ok || num == "" || len(num) > 10 {
		return Rate{}, invalid(s)
	}
	for i := 0; i < len(num); i++ {
		if num[i] < '0' || num[i] > '9' {
			return Rate{}, invalid(s)
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 1 || n > MaxN {
		return Rate{}, fmt.Errorf("%w %s: the number of calls must be from 1 to %d; %s", ErrInvalid, quote(s), MaxN, usage)
	}
	for _, u := range units {
		if u.name == unit {
			return Rate{N: n, Per: u.size}, nil
		}
	}
	return Rate{}, invalid(s)
}

func quote(s string) string {
	if len(s) > 32 {
		return strconv.Quote(s[:32]) + "..."
	}
	return strconv.Quote(s)
}

func invalid(s string) error { return fmt.Errorf("%w %s: %s", ErrInvalid, quote(s), usage) }

// String renders r as Parse reads it ("" for the zero Rate).
func (r Rate) String() string {
	if r.IsZero() {
		return ""
	}
	for i := len(units) - 1; i >= 0; i-- {
		if r.Per == units[i].size {
			return strconv.FormatInt(r.N, 10) + "/" + units[i].name
		}
	}
	return fmt.Sprintf("%d/%s", r.N, r.Per)
}

// Describe renders r for people: "600 calls per minute".
func (r Rate) Describe() string {
	per := map[time.Duration]string{time.Second: "second", time.Minute: "minute", time.Hour: "hour", 24 * time.Hour: "day"}[r.Per]
	if per == "" {
		per = r.Per.String()
	}
	calls := "calls"
	if r.N == 1 {
		calls = "call"
	}
	return fmt.Sprintf("%d %s per %s", r.N, calls, per)
}

// Faster reports whether r allows more calls over time than o (both set).
func (r Rate) Faster(o Rate) bool {
	// r.N/r.Per > o.N/o.Per, in floating point: both sides are bounded.
	return float64(r.N)/float64(r.Per) > float64(o.N)/float64(o.Per)*(1+1e-12)
}

// Exceeds reports whether r grants more than o (both set): a higher
// average rate, or a bigger burst (r.N calls at once). A key limited to
// 10/s must not hand out 36000/h, whose average is the same.
func (r Rate) Exceeds(o Rate) bool {
	return r.N > o.N || r.Faster(o)
}

// Status is a bucket's state after a call, for X-RateLimit-* headers.
type Status struct {
	Limit      int64         // the bucket's size: calls per period
	Remaining  int64         // whole calls left now
	Reset      time.Time     // when the bucket is full again
	RetryAfter time.Duration // when refused: wait this long for one call
	Allowed    bool
}

// Limiter holds one token bucket per key. The zero value is not usable:
// use New.
type Limiter struct {
	now     func() time.Time
	buckets sync.Map // key -> *bucket
}

type bucket struct {
	mu     sync.Mutex
	rate   Rate
	tokens float64
	last   time.Time
}

// New returns a Limiter on clock now (nil: time.Now).
func New(now func() time.Time) *Limiter {
	if now == nil {
		now = time.Now
	}
	return &Limiter{now: now}
}

func (l *Limiter) bucket(key string, r Rate) *bucket {
	if b, ok := l.buckets.Load(key); ok {
		return b.(*bucket)
	}
	b, _ := l.buckets.LoadOrStore(key, &bucket{rate: r, tokens: float64(r.N), last: l.now()})
	return b.(*bucket)
}

// refill brings b up to now at rate r. A rate raised (more calls, or a
// bigger burst) takes effect with a full bucket of its new size, as an
// operator who raised it expects; a rate lowered keeps the tokens left,
// capped at the new size, so that lowering a rate never refills it.
func (b *bucket) refill(r Rate, now time.Time) {
	if b.rate != r {
		raised := r.Exceeds(b.rate)
		b.rate = r
		if raised {
			b.tokens, b.last = float64(r.N), now
			return
		}
	}
	if el := now.Sub(b.last); el > 0 {
		b.tokens += float64(r.N) * float64(el) / float64(r.Per)
		b.last = now
	}
	if max := float64(r.N); b.tokens > max {
		b.tokens = max
	}
}

func (b *bucket) status(now time.Time, allowed bool) Status {
	r := b.rate
	st := Status{Limit: r.N, Remaining: int64(math.Floor(b.tokens)), Allowed: allowed}
	missing := float64(r.N) - b.tokens
	st.Reset = now.Add(time.Duration(missing / float64(r.N) * float64(r.Per)))
	if !allowed {
		st.RetryAfter = time.Duration((1 - b.tokens) / float64(r.N) * float64(r.Per))
		if st.RetryAfter < time.Millisecond {
			st.RetryAfter = time.Millisecond
		}
	}
	return st
}

// Take takes one call from key's bucket at rate r (r must be set) and
// reports whether it was allowed and the bucket's state.
func (l *Limiter) Take(key string, r Rate) Status {
	now := l.now()
	b := l.bucket(key, r)
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refill(r, now)
	if b.tokens < 1 {
		return b.status(now, false)
	}
	b.tokens--
	return b.status(now, true)
}

// Peek reports key's bucket at rate r without taking from it.
func (l *Limiter) Peek(key string, r Rate) Status {
	now := l.now()
	b := l.bucket(key, r)
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refill(r, now)
	return b.status(now, b.tokens >= 1)
}
