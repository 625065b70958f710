// Package duration parses and formats the lifetimes given to API keys
// (msb server keygen --expire): a whole number and one unit, such as 7d or 3mo.
package duration

import (
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/msb-dev/msb/errdefs"
)

// ErrInvalid is wrapped by every error Parse returns, so callers can map a
// bad duration to an invalid-params error with errors.Is.
var ErrInvalid = errdefs.New(errdefs.Invalid, "invalid duration")

const (
	day   = 24 * time.Hour
	week  = 7 * day
	month = 30 * day
	year  = 365 * day
)

// units is ordered largest first so Format picks the largest exact unit.
var units = []struct {
	name string
	size time.Duration
}{
	{"y", year},
	{"mo", month},
	{"w", week},
	{"d", day},
	{"h", time.Hour},
	{"m", time.Minute},
	{"s", time.Second},
}

const usage = "use a whole number followed by one unit: s, m, h, d, w, mo (30 days), y (365 days), e.g. 30s, 15m, 3mo, 1y"

// maxShown caps how much of a rejected input is echoed back, so a huge
// parameter cannot blow up a log line or an error response.
const maxShown = 64

// Parse reads a positive whole number followed by exactly one unit:
// s, m, h, d (24h), w (7d), mo (30 days) or y (365 days), e.g. "30s", "3mo".
// Signs, spaces, fractions, zero and combinations such as "1h30m" are
// rejected, as are values too large for a time.Duration.
// Every error wraps ErrInvalid and quotes the input.
func Parse(s string) (time.Duration, error) {
	i := 0
	for i < len(s) && '0' <= s[i] && s[i] <= '9' {
		i++
	}
	digits, unit := s[:i], s[i:]
	if digits == "" || unit == "" {
		return 0, invalid(s, "")
	}
	size := unitSize(unit)
	if size == 0 {
		return 0, invalid(s, "")
	}
	// digits holds only 0-9, so the only possible error is ErrRange.
	n, err := strconv.ParseInt(digits, 10, 64)
	if err == nil && n == 0 {
		return 0, invalid(s, "must be greater than zero; ")
	}
	if err != nil || n > math.MaxInt64/int64(size) {
		return 0, invalid(s, "too large, the most is 292y; ")
	}
	return time.Duration(n) * size, nil
}

func unitSize(name string) time.Duration {
	for _, u := range units {
		if u.name == name {
			return u.size
		}
	}
	return 0
}

func invalid(s, reason string) error {
	q := strconv.Quote(s)
	if len(s) > maxShown {
		q = strconv.Quote(s[:maxShown]) + "..."
	}
	return fmt.Errorf("%w %s: %s%s", ErrInvalid, q, reason, usage)
}

// Format renders d in the largest unit that divides it exactly, in the form
// Parse accepts: 90*24h is "3mo", 36h is "36h". Durations that Parse could
// never return (zero, negative, or not a whole number of seconds) are
// rendered by time.Duration.String. Format returns no error.
func Format(d time.Duration) string {
	if d <= 0 || d%time.Second != 0 {
		return d.String()
	}
	for _, u := range units {
		if d%u.size == 0 {
			return strconv.FormatInt(int64(d/u.size), 10) + u.name
		}
	}
	return d.String() // unreachable: every whole number of seconds matches "s"
}
