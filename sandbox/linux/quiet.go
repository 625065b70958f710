package linux

import (
	"sync"
	"time"
)

// calls tracks the engine's calls in flight, so that the work it does in
// the background (spawning inits ahead, starting sandboxes for the warm
// pool) waits for a quiet moment: no call in flight for backgroundQuiet,
// or backgroundPatience at most. On a machine of a few cores, an init
// spawned while a sandbox's first command runs slows that command by
// about as much as the spawn costs (measured: a python3 -c of 26 ms took
// 44 ms beside one, 29 ms without), and a start's first commands usually
// follow it within milliseconds.
const (
	backgroundQuiet    = 20 * time.Millisecond
	backgroundPatience = time.Second
)

type calls struct {
	mu       sync.Mutex
	inFlight int
	last     time.Time // when the last call ended
}

// begin counts a call in flight until the function it returns is called.
func (c *calls) begin() func() {
	c.mu.Lock()
	c.inFlight++
	c.mu.Unlock()
	return func() {
		c.mu.Lock()
		c.inFlight--
		c.last = time.Now()
		c.mu.Unlock()
	}
}

// quietFor returns how long to wait until no call will have been in
// flight for quiet: 0 when that is already so.
func (c *calls) quietFor(quiet time.Duration) time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.inFlight > 0 {
		return quiet
	}
	return max(0, quiet-time.Since(c.last))
}

// waitQuiet waits until no call has been in flight for backgroundQuiet,
// or for backgroundPatience at most, or until quit is closed (then it
// returns false).
func (c *calls) waitQuiet(quit <-chan struct{}) bool {
	deadline := time.Now().Add(backgroundPatience)
	for {
		d := c.quietFor(backgroundQuiet)
		if d == 0 {
			return true
		}
		left := time.Until(deadline)
		if left <= 0 {
			return true
		}
		t := time.NewTimer(min(d, left))
		select {
		case <-quit:
			t.Stop()
			return false
		case <-t.C:
		}
	}
}
