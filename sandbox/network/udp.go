package network

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// handleUDP decides the first datagram of a UDP flow (a source and
// destination address and port pair with no endpoint yet). It runs on the
// netstack's packet path, so anything slow happens on a new goroutine; the
// endpoint is created here, so that the flow's next datagrams queue on it.
func (l *Link) handleUDP(r *udp.ForwarderRequest) {
	id := r.ID()
	dst := toAddrPort(id.LocalAddress, id.LocalPort)
	src := toAddrPort(id.RemoteAddress, id.RemotePort)
	if !l.isSandbox(src.Addr()) {
		l.deny("udp", dst, "", ReasonSource, -1)
		return
	}
	if dst.Port() == 53 {
		// A resolver usually asks from a new port each time: every
		// query is a flow of its own. They are not counted against
		// MaxConns, but have a cap of their own and a short life.
		select {
		case l.dnsFlowSem <- struct{}{}:
		default:
			return // dropped: the sandbox's resolver retries
		}
		c := l.acceptUDP(r)
		if c == nil {
			<-l.dnsFlowSem
			return
		}
		if !l.enter() {
			<-l.dnsFlowSem
			c.Close()
			return
		}
		go func() {
			defer func() { <-l.dnsFlowSem }()
			l.serveDNSUDP(c)
		}()
		return
	}
	if l.isGateway(dst.Addr()) {
		return
	}
	lim := l.limits.Load()
	if !l.stats.slots.acquire(lim.maxConns) {
		l.deny("udp", dst, "", ReasonConnLimit, -1)
		return
	}
	// UDP presents no name: domain rules match by what the sandbox
	// resolved through msb's DNS only.
	if v := l.policy.Load().decide(l.newQuery(UDP, dst)); !v.allow {
		l.stats.slots.release()
		l.deny("udp", dst, "", v.reason, v.rule)
		return
	}
	c := l.acceptUDP(r)
	if c == nil {
		l.stats.slots.release()
		return
	}
	if !l.enter() {
		l.stats.slots.release()
		c.Close()
		return
	}
	go func() {
		defer l.leave()
		defer l.stats.slots.release()
		defer c.Close()
		up, err := l.dial("udp", dst)
		if err != nil {
			return
		}
		defer up.Close()
		f := &flow{proto: "udp", pr: UDP, dst: dst}
		var once sync.Once
		f.abortFn = func() { once.Do(func() { up.Close(); c.Close() }) }
		if !l.addFlow(f) {
			return
		}
		defer l.removeFlow(f)
		l.relayUDP(c, up)
	}()
}

func (l *Link) acceptUDP(r *udp.ForwarderRequest) *gonet.UDPConn {
	var wq waiter.Queue
	ep, err := r.CreateEndpoint(&wq)
	if err != nil {
		return nil
	}
	return gonet.NewUDPConn(&wq, ep)
}

// relayUDP copies datagrams both ways until the flow is idle for
// UDPIdleTimeout, either side fails, or the link closes.
func (l *Link) relayUDP(c *gonet.UDPConn, up net.Conn) {
	var lastActive atomic.Int64 // UnixNano of the last datagram either way
	lastActive.Store(time.Now().UnixNano())
	stop := context.AfterFunc(l.ctx, func() { up.Close(); c.Close() })
	defer stop()

	done := make(chan struct{})
	go func() {
		defer close(done)
		l.pumpUDP(up, c, false, &lastActive)
		c.Close()
	}()
	l.pumpUDP(c, up, true, &lastActive)
	up.Close()
	<-done
}

// pumpUDP copies datagrams from one side of a flow to the other (up: from
// the sandbox) until neither side has sent one for UDPIdleTimeout, from
// fails, or to is closed.
func (l *Link) pumpUDP(from, to net.Conn, up bool, lastActive *atomic.Int64) {
	count := &l.stats.bytesDown
	if up {
		count = &l.stats.bytesUp
	}
	buf := make([]byte, 65535)
	for {
		from.SetReadDeadline(time.Now().Add(l.cfg.UDPIdleTimeout))
		n, err := from.Read(buf)
		if err != nil {
			if isTimeout(err) && time.Since(time.Unix(0, lastActive.Load())) < l.cfg.UDPIdleTimeout {
				continue // the other direction is active
			}
			return
		}
		lastActive.Store(time.Now().UnixNano())
		if !l.throttle(up, n) {
			continue
		}
		count.Add(uint64(n))
		if _, err := to.Write(buf[:n]); errors.Is(err, net.ErrClosed) {
			// A refused datagram (ICMP unreachable) is no reason to end
			// the flow; a closed socket is.
			return
		}
	}
}

// throttle takes n bytes from the direction's bucket; a datagram the
// bucket cannot hold now is dropped (false), as a congested link would.
func (l *Link) throttle(up bool, n int) bool {
	lim := l.limits.Load()
	rl := lim.down
	if up {
		rl = lim.up
	}
	if rl == nil {
		return true
	}
	return rl.AllowN(time.Now(), n)
}
