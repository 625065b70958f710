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
// spawn costs (measured: the first python3 -c in a new sandbox took 47 ms
// beside one, 31 ms on a server without inits spawned ahead), and a
// start's first commands usually follow it within milliseconds.
//
// The work waits while a command is in flight and the latest command
// began less than backgroundPatience ago (a long one alone, such as a
// sandbox's exec that runs for hours, does not hold it up), or one ended
// less than backgroundQuiet ago, and while a start is in flight or one ended less than
// backgroundQuiet ago, unless the start in flight began that soon after
// the one before ended or beside another (a burst of starts, which the
// inits spawned ahead are for). Each wait lasts backgroundPatience at
// most. Stops and deletes do not count: nothing of their sandbox follows
// them.
const (
	backgroundQuiet    = 20 * time.Millisecond
	backgroundPatience = time.Second
)

type calls struct {
	mu               sync.Mutex
	starts, commands int // in flight
	// lastStart and lastCommand are when the last one ended,
	// commandBegan when the last command began; burst says whether the
	// last start began in a burst.
	lastStart, lastCommand, commandBegan time.Time
	burst                                bool
	// started is closed, and replaced, when a start begins: it may make
	// a burst, which every waiter must see at once.
	started chan struct{}
}

func newCalls() *calls { return &calls{started: make(chan struct{})} }

// start counts a start in flight until the function it returns is called.
func (c *calls) start() func() {
	c.mu.Lock()
	c.burst = c.starts > 0 || time.Since(c.lastStart) < backgroundQuiet
	c.starts++
	close(c.started)
	c.started = make(chan struct{})
	c.mu.Unlock()
	return c.end(&c.starts, &c.lastStart)
}

// command counts a command (or code, a process, a stream's start) in
// flight until the function it returns is called.
func (c *calls) command() func() {
	c.mu.Lock()
	c.commands++
	c.commandBegan = time.Now()
	c.mu.Unlock()
	return c.end(&c.commands, &c.lastCommand)
}

// end returns the function that ends a call: one fewer in flight, the
// last one ended now.
func (c *calls) end(inFlight *int, last *time.Time) func() {
	return func() {
		c.mu.Lock()
		*inFlight--
		*last = time.Now()
		c.mu.Unlock()
	}
}

// quietFor returns how long the background work has to wait yet, at
// least (0: it may go), and a channel closed when a start begins.
func (c *calls) quietFor() (time.Duration, <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.commands > 0 && time.Since(c.commandBegan) < backgroundPatience {
		return backgroundQuiet, c.started
	}
	d := backgroundQuiet - time.Since(c.lastCommand)
	switch {
	case c.starts > 0 && c.burst:
	case c.starts > 0:
		d = backgroundQuiet
	default:
		d = max(d, backgroundQuiet-time.Since(c.lastStart))
	}
	return max(0, d), c.started
}

// waitQuiet waits until the background work may go (quietFor), or for
// backgroundPatience at most, or until quit is closed (then it returns
// false).
func (c *calls) waitQuiet(quit <-chan struct{}) bool {
	deadline := time.Now().Add(backgroundPatience)
	for {
		d, started := c.quietFor()
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
		case <-started:
			t.Stop()
		case <-t.C:
		}
	}
}
