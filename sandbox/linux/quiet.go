package linux

import (
	"sync"
	"time"
)

// calls tracks the engine's starts and commands, so that the work it does
// in the background (spawning inits ahead, starting sandboxes for the warm
// pool) waits for a quiet moment rather than run beside a sandbox's first
// commands. On a machine of a few cores, an init spawned while a
// sandbox's first command runs slows that command by about as much as the
// spawn costs (measured: a python3 -c of 26 ms took 44 ms beside one, 29
// ms without), and a start's first commands usually follow it within
// milliseconds.
//
// The work waits while a command is in flight or one ended less than
// backgroundQuiet ago, and while a start is in flight or one ended less
// than backgroundQuiet ago, unless a start follows another that closely
// (a burst of starts, which the inits spawned ahead are for); for
// backgroundPatience at most. Stops and deletes do not count: nothing of
// their sandbox follows them.
const (
	backgroundQuiet    = 20 * time.Millisecond
	backgroundPatience = time.Second
)

type calls struct {
	mu                     sync.Mutex
	starts, commands       int       // in flight
	lastStart, lastCommand time.Time // when the last one ended
	// started wakes waitQuiet when a start begins: it may make a burst.
	started chan struct{}
}

func newCalls() *calls { return &calls{started: make(chan struct{}, 1)} }

// start counts a start in flight until the function it returns is
// called; command counts a command (or code, a process, a stream's
// start) so.
func (c *calls) start() func() {
	done := c.begin(&c.starts, &c.lastStart)
	select {
	case c.started <- struct{}{}:
	default:
	}
	return done
}
func (c *calls) command() func() { return c.begin(&c.commands, &c.lastCommand) }

func (c *calls) begin(inFlight *int, last *time.Time) func() {
	c.mu.Lock()
	*inFlight++
	c.mu.Unlock()
	return func() {
		c.mu.Lock()
		*inFlight--
		*last = time.Now()
		c.mu.Unlock()
	}
}

// quietFor returns how long the background work has to wait yet, at
// least: 0 when it may go.
func (c *calls) quietFor() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.commands > 0 {
		return backgroundQuiet
	}
	d := backgroundQuiet - time.Since(c.lastCommand)
	sinceStart := time.Since(c.lastStart)
	switch {
	case c.starts > 0 && sinceStart < backgroundQuiet:
		// A start right after another: a burst of starts.
	case c.starts > 0:
		d = backgroundQuiet
	default:
		d = max(d, backgroundQuiet-sinceStart)
	}
	return max(0, d)
}

// waitQuiet waits until the background work may go (quietFor), or for
// backgroundPatience at most, or until quit is closed (then it returns
// false).
func (c *calls) waitQuiet(quit <-chan struct{}) bool {
	deadline := time.Now().Add(backgroundPatience)
	for {
		d := c.quietFor()
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
		case <-c.started:
			t.Stop()
		case <-t.C:
		}
	}
}
