package portal

import (
	"context"
	"sync"
)

// credit counts the bytes one side may still send on one call: taken by
// senders before they send, added to as the receiver grants more. Closing
// it wakes every sender for good (the call is over, or nobody listens).
type credit struct {
	mu     sync.Mutex
	n      int64
	closed bool
	ready  chan struct{} // a token: credit was added
	done   chan struct{} // closed by close
}

func newCredit(n int64) *credit {
	return &credit{n: n, ready: make(chan struct{}, 1), done: make(chan struct{})}
}

// add grants n more bytes.
func (c *credit) add(n int64) {
	if n <= 0 {
		return
	}
	c.mu.Lock()
	c.n += n
	c.mu.Unlock()
	c.signal()
}

func (c *credit) signal() {
	select {
	case c.ready <- struct{}{}:
	default:
	}
}

// take waits until some credit is left and takes up to max of it. It
// returns 0 when the credit was closed or ctx ended first.
func (c *credit) take(ctx context.Context, max int64) int64 {
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return 0
		}
		if c.n > 0 {
			k := min(c.n, max)
			c.n -= k
			left := c.n
			c.mu.Unlock()
			if left > 0 {
				c.signal() // another sender may be waiting too
			}
			return k
		}
		c.mu.Unlock()
		select {
		case <-c.ready:
		case <-c.done:
		case <-ctx.Done():
			return 0
		}
	}
}

// close ends the credit: every take returns 0 from now on.
func (c *credit) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed {
		c.closed = true
		close(c.done)
	}
}

// inbox holds the input the client sent on one call (stdin, or a file
// write's chunks) until the call's own goroutine writes it out, so that
// the portal's reader never waits for a slow process or disk. The client
// sends no more than the credit the portal granted, which bounds it.
type inbox struct {
	mu     sync.Mutex
	chunks [][]byte
	bytes  int64
	limit  int64
	eof    bool // the client sent the end of its input
	closed bool
	ready  chan struct{}
}

func newInbox(limit int64) *inbox {
	return &inbox{limit: limit, ready: make(chan struct{}, 1)}
}

// push queues p; an empty p is the end of the input. It returns false
// when p would overrun the limit (the client ignored its credit).
func (in *inbox) push(p []byte) bool {
	in.mu.Lock()
	if in.closed || in.eof {
		in.mu.Unlock()
		return true // input after the end is dropped
	}
	if len(p) == 0 {
		in.eof = true
	} else {
		if in.bytes+int64(len(p)) > in.limit {
			in.mu.Unlock()
			return false
		}
		in.chunks = append(in.chunks, p)
		in.bytes += int64(len(p))
	}
	in.mu.Unlock()
	select {
	case in.ready <- struct{}{}:
	default:
	}
	return true
}

// pop waits for the next chunk. It returns eof once the input is over
// and every chunk was popped, and ok false when the inbox was closed or
// ctx ended.
func (in *inbox) pop(ctx context.Context) (p []byte, eof, ok bool) {
	for {
		in.mu.Lock()
		switch {
		case in.closed:
			in.mu.Unlock()
			return nil, false, false
		case len(in.chunks) > 0:
			p = in.chunks[0]
			in.chunks[0] = nil
			in.chunks = in.chunks[1:]
			in.bytes -= int64(len(p))
			in.mu.Unlock()
			return p, false, true
		case in.eof:
			in.mu.Unlock()
			return nil, true, true
		}
		in.mu.Unlock()
		select {
		case <-in.ready:
		case <-ctx.Done():
			return nil, false, false
		}
	}
}

// empty reports whether nothing is queued.
func (in *inbox) empty() bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	return len(in.chunks) == 0
}

// close drops what is queued and ends every pop.
func (in *inbox) close() {
	in.mu.Lock()
	in.closed = true
	in.chunks = nil
	in.bytes = 0
	in.mu.Unlock()
	select {
	case in.ready <- struct{}{}:
	default:
	}
}
