package network

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// flow is a live TCP connection or UDP flow, as SetPolicy and Close see
// it.
type flow struct {
	proto string // "tcp" or "udp"
	pr    Proto
	dst   netip.AddrPort

	mu        sync.Mutex
	presented string // the last name the connection presented
	assocOK   bool   // presented resolves to dst (checked when it was allowed)
	abortFn   func()
	aborted   bool
}

// query rebuilds the flow's policy query, without resolving anything: a
// presented name keeps the association it was allowed with.
func (f *flow) query(l *Link) *query {
	f.mu.Lock()
	presented, ok := f.presented, f.assocOK
	f.mu.Unlock()
	q := &query{
		proto:     f.pr,
		dst:       f.dst,
		names:     l.names.lookup(f.dst.Addr()),
		presented: presented,
		protected: l.protectedRange(f.pr, f.dst),
	}
	q.assoc = func(name string) bool { return ok && name == presented }
	return q
}

func (f *flow) setPresented(name string, assocOK bool) {
	f.mu.Lock()
	f.presented, f.assocOK = name, assocOK
	f.mu.Unlock()
}

func (f *flow) abort() {
	f.mu.Lock()
	fn := f.abortFn
	f.aborted = true
	f.mu.Unlock()
	if fn != nil {
		fn()
	}
}

// handleTCP decides a connection the sandbox opens. It runs on its own
// goroutine (the forwarder starts one per SYN) before the handshake with
// the sandbox is complete.
func (l *Link) handleTCP(r *tcp.ForwarderRequest) {
	id := r.ID()
	dst := toAddrPort(id.LocalAddress, id.LocalPort)
	src := toAddrPort(id.RemoteAddress, id.RemotePort)
	if !l.enter() {
		r.Complete(true)
		return
	}
	defer l.leave()
	if !l.isSandbox(src.Addr()) {
		l.deny("tcp", dst, "", ReasonSource, -1)
		r.Complete(true)
		return
	}
	if dst.Port() == 53 {
		// DNS over TCP, to the gateway or to any server the sandbox
		// names: msb answers it, so that names are learnt and decided.
		// These connections are not counted against MaxConns (a sandbox
		// at its cap can still resolve) but have a small cap of their own.
		select {
		case l.dnsTCPSem <- struct{}{}:
		default:
			r.Complete(true)
			return
		}
		defer func() { <-l.dnsTCPSem }()
		if c, _ := l.accept(r); c != nil {
			l.serveDNSTCP(c)
		}
		return
	}
	if l.isGateway(dst.Addr()) {
		r.Complete(true) // nothing else listens on the gateway
		return
	}
	lim := l.limits.Load()
	if !l.stats.slots.acquire(lim.maxConns) {
		l.deny("tcp", dst, "", ReasonConnLimit, -1)
		r.Complete(true)
		return
	}
	defer l.stats.slots.release()

	f := &flow{proto: "tcp", pr: TCP, dst: dst}
	pol := l.policy.Load()
	q := l.newQuery(TCP, dst)
	v := pol.decide(q)
	if !v.nameMatters {
		// Decided by address alone: dial first, so that the sandbox sees
		// the destination's own refusal or silence.
		if !v.allow {
			l.deny("tcp", dst, "", v.reason, v.rule)
			r.Complete(true)
			return
		}
		up, err := l.dial("tcp", dst)
		if err != nil {
			r.Complete(true)
			return
		}
		c, ep := l.accept(r)
		if c == nil {
			up.Close()
			return
		}
		l.proxy(f, c, ep, up, nil, false)
		return
	}

	// A domain rule could match: complete the handshake, and wait for
	// the name the connection presents before dialing anything.
	c, ep := l.accept(r)
	if c == nil {
		return
	}
	in := &inspector{}
	peeked, eof, err := l.peek(c, in)
	if err != nil {
		if errors.Is(err, errInspect) {
			l.deny("tcp", dst, "", ReasonInspect, -1)
		}
		ep.Abort()
		c.Close()
		return
	}
	names, ierr := in.feed(peeked)
	if ierr != nil {
		l.deny("tcp", dst, "", ReasonInspect, -1)
		ep.Abort()
		c.Close()
		return
	}
	for _, name := range names {
		q.presented = name
		v = pol.decide(q)
		if !v.allow {
			break
		}
		f.setPresented(name, name != "" && q.assoc(name))
	}
	if !v.allow {
		l.deny("tcp", dst, q.presented, v.reason, v.rule)
		ep.Abort()
		c.Close()
		return
	}
	up, err := l.dial("tcp", dst)
	if err != nil {
		ep.Abort()
		c.Close()
		return
	}
	if len(peeked) > 0 {
		if _, err := up.Write(peeked); err != nil {
			ep.Abort()
			c.Close()
			up.Close()
			return
		}
		l.stats.bytesUp.Add(uint64(len(peeked)))
	}
	l.proxy(f, c, ep, up, in, eof)
}

// accept completes the handshake with the sandbox.
func (l *Link) accept(r *tcp.ForwarderRequest) (*gonet.TCPConn, tcpip.Endpoint) {
	var wq waiter.Queue
	ep, err := r.CreateEndpoint(&wq)
	r.Complete(false)
	if err != nil {
		return nil, nil
	}
	return gonet.NewTCPConn(&wq, ep), ep
}

// peek reads what the sandbox sends first, until the inspector has
// classified it or PeekTimeout passes. eof reports that the sandbox has
// finished sending.
func (l *Link) peek(c *gonet.TCPConn, in *inspector) (peeked []byte, eof bool, err error) {
	deadline := time.Now().Add(l.cfg.PeekTimeout)
	defer c.SetReadDeadline(time.Time{})
	probe := &inspector{}
	buf := make([]byte, 4096)
	for {
		if err := c.SetReadDeadline(deadline); err != nil {
			return nil, false, err
		}
		n, rerr := c.Read(buf)
		if n > 0 {
			peeked = append(peeked, buf[:n]...)
			if _, err := probe.feed(buf[:n]); err != nil {
				return nil, false, err
			}
			if probe.classified {
				return peeked, false, nil
			}
			if len(peeked) > maxHead {
				return nil, false, errInspect
			}
		}
		switch {
		case rerr == nil:
		case errors.Is(rerr, io.EOF):
			return peeked, true, nil
		case errors.Is(rerr, os.ErrDeadlineExceeded) || isTimeout(rerr):
			return peeked, false, nil
		default:
			return nil, false, rerr
		}
		if l.ctx.Err() != nil {
			return nil, false, errClosed
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// dial connects to dst from the server's namespace.
func (l *Link) dial(proto string, dst netip.AddrPort) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(l.ctx, l.cfg.DialTimeout)
	defer cancel()
	c, err := l.cfg.Dialer.DialContext(ctx, dialNetwork(proto, dst.Addr()), dst.String())
	if err != nil {
		l.stats.dialFailures.Add(1)
		return nil, err
	}
	if proto == "tcp" {
		l.stats.tcpConns.Add(1)
	} else {
		l.stats.udpFlows.Add(1)
	}
	return c, nil
}

// proxy copies between the sandbox's connection c and the destination's
// up until both directions are done. When in is set, the bytes from the
// sandbox go on being inspected, and every name they present must be
// allowed. upDone says the sandbox has already finished sending.
func (l *Link) proxy(f *flow, c *gonet.TCPConn, ep tcpip.Endpoint, up net.Conn, in *inspector, upDone bool) {
	var once sync.Once
	abort := func() {
		once.Do(func() {
			if tc, ok := up.(*net.TCPConn); ok {
				tc.SetLinger(0)
			}
			up.Close()
			ep.Abort()
		})
	}
	f.mu.Lock()
	f.abortFn = abort
	aborted := f.aborted
	f.mu.Unlock()
	if aborted || !l.addFlow(f) {
		abort()
		c.Close()
		return
	}
	defer l.removeFlow(f)

	var check func([]byte) error
	if in != nil {
		check = func(p []byte) error {
			names, err := in.feed(p)
			if err != nil {
				l.deny("tcp", f.dst, "", ReasonInspect, -1)
				return err
			}
			for _, name := range names {
				pq := l.newQuery(TCP, f.dst)
				pq.presented = name
				if v := l.policy.Load().decide(pq); !v.allow {
					l.deny("tcp", f.dst, name, v.reason, v.rule)
					return errDenied
				}
				f.setPresented(name, name != "" && pq.assoc(name))
			}
			return nil
		}
	}

	done := make(chan struct{})
	go func() {
		defer close(done)
		if !upDone {
			if err := l.pipe(up, c, true, check, abort); err != nil {
				abort()
				return
			}
		}
		closeWrite(up)
	}()
	if err := l.pipe(c, up, false, nil, abort); err != nil {
		abort()
	} else {
		c.CloseWrite()
	}
	<-done
	up.Close()
	c.Close()
}

var errDenied = errors.New("denied")

type closeWriter interface{ CloseWrite() error }

func closeWrite(c net.Conn) {
	if cw, ok := c.(closeWriter); ok {
		cw.CloseWrite()
		return
	}
	c.Close()
}

// pipe copies src to dst, through the bandwidth limit of its direction,
// until src ends (nil) or either fails. check, if set, sees every chunk,
// in order, before it is forwarded; abort must make a blocked src.Read
// return.
//
// An idle connection holds a small buffer only. Once a read fills it, the
// copy moves to the link's large buffers, read ahead on a second goroutine
// so that the kernel's copy out of src runs in parallel with the copy
// into dst (for the download direction, the netstack's work); it moves
// back after src has been idle for bulkIdle. At most tune.bulkCopies
// copies of a link are in bulk mode at once.
func (l *Link) pipe(dst io.Writer, src net.Conn, up bool, check func([]byte) error, abort func()) error {
	small := make([]byte, smallBuffer)
	for {
		n, rerr := src.Read(small)
		if n > 0 {
			if err := l.forward(dst, small[:n], up, check); err != nil {
				return err
			}
		}
		if rerr != nil {
			if rerr == io.EOF {
				return nil
			}
			return rerr
		}
		if n == len(small) {
			select {
			case l.bulk <- struct{}{}:
			default:
				continue // the link's bulk copies are all busy: stay small
			}
			eof, err := l.copyBulk(dst, src, up, check, abort)
			<-l.bulk
			if err != nil || eof {
				return err
			}
			src.SetReadDeadline(time.Time{})
		}
	}
}

const (
	smallBuffer = 16 << 10
	bulkIdle    = 100 * time.Millisecond
)

// copyBulk is pipe's bulk mode. It returns when src ends (eof), fails, or
// has been idle for bulkIdle (neither).
func (l *Link) copyBulk(dst io.Writer, src net.Conn, up bool, check func([]byte) error, abort func()) (eof bool, err error) {
	type chunk struct {
		b    *[]byte
		n    int
		err  error
		idle bool
	}
	const depth = 3
	full := make(chan chunk, depth)
	free := make(chan *[]byte, depth)
	for i := 0; i < depth; i++ {
		free <- l.bufPool.Get().(*[]byte)
	}
	go func() {
		defer close(full)
		for b := range free {
			src.SetReadDeadline(time.Now().Add(bulkIdle))
			n, err := src.Read(*b)
			if err != nil && isTimeout(err) && l.ctx.Err() == nil {
				full <- chunk{b: b, n: n, idle: true}
				return
			}
			full <- chunk{b: b, n: n, err: err}
			if err != nil {
				return
			}
		}
	}()
	done, freeClosed := false, false
	finish := func() {
		if !freeClosed {
			close(free)
			freeClosed = true
		}
	}
	for c := range full {
		if !done && c.n > 0 {
			if werr := l.forward(dst, (*c.b)[:c.n], up, check); werr != nil {
				err, done = werr, true
				abort()
			}
		}
		if !done && (c.err != nil || c.idle) {
			switch {
			case c.err == io.EOF:
				eof = true
			case c.err != nil:
				err = c.err
			}
			done = true
		}
		l.bufPool.Put(c.b)
		if done {
			// Let the reader run out of buffers: it ends at its next
			// read (src has ended, been aborted, or is idle and the
			// reader has stopped already).
			finish()
		} else {
			free <- l.bufPool.Get().(*[]byte)
		}
	}
	finish()
	for b := range free {
		l.bufPool.Put(b)
	}
	return eof, err
}

// forward passes one chunk read from src to check and on to dst.
func (l *Link) forward(dst io.Writer, p []byte, up bool, check func([]byte) error) error {
	if check != nil {
		if err := check(p); err != nil {
			return err
		}
	}
	return l.write(dst, p, up)
}

// write writes p to dst in pieces the direction's token bucket allows.
func (l *Link) write(dst io.Writer, p []byte, up bool) error {
	for len(p) > 0 {
		lim := l.limits.Load()
		rl := lim.down
		if up {
			rl = lim.up
		}
		n := len(p)
		if rl != nil {
			n = min(n, rl.Burst())
			if err := rl.WaitN(l.ctx, n); err != nil {
				return err
			}
		}
		nw, err := dst.Write(p[:n])
		if up {
			l.stats.bytesUp.Add(uint64(nw))
		} else {
			l.stats.bytesDown.Add(uint64(nw))
		}
		if err != nil {
			return err
		}
		p = p[n:]
	}
	return nil
}
