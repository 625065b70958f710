package network

import (
	"errors"
	"sync/atomic"

	"golang.org/x/time/rate"
)

// limiter is an immutable set of limits; the token buckets inside are
// shared by every connection of the link.
type limiter struct {
	maxConns int
	up, down *rate.Limiter // nil: unlimited
}

func newLimiter(l Limits) (*limiter, error) {
	if l.MaxConns < 0 || l.UpBytesPerSec < 0 || l.DownBytesPerSec < 0 || l.Burst < 0 {
		return nil, errors.New("negative limit")
	}
	lim := &limiter{maxConns: l.MaxConns}
	burst := func(perSec int64) int {
		if l.Burst > 0 {
			return l.Burst
		}
		return max(64<<10, int(perSec/10))
	}
	if l.UpBytesPerSec > 0 {
		lim.up = rate.NewLimiter(rate.Limit(l.UpBytesPerSec), burst(l.UpBytesPerSec))
	}
	if l.DownBytesPerSec > 0 {
		lim.down = rate.NewLimiter(rate.Limit(l.DownBytesPerSec), burst(l.DownBytesPerSec))
	}
	return lim, nil
}

// connSlots counts a link's live connections and flows.
type connSlots struct{ n atomic.Int64 }

// acquire takes a slot unless max (> 0) are taken.
func (c *connSlots) acquire(max int) bool {
	for {
		n := c.n.Load()
		if max > 0 && n >= int64(max) {
			return false
		}
		if c.n.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

func (c *connSlots) release() { c.n.Add(-1) }
