package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/qdisc/fifo"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/msb-dev/msb/sandbox/network/netns"
)

const nicID tcpip.NICID = 1

// Link is a sandbox's network: a TUN device in its namespace whose other
// end is a user-space TCP/IP stack in this process, which terminates every
// connection the sandbox makes, decides it by policy, and dials the
// allowed ones from the server's own namespace.
type Link struct {
	cfg    Config
	tun    *os.File // owned by ep once the stack runs
	ep     *tunEndpoint
	stack  *stack.Stack
	ctx    context.Context
	cancel context.CancelFunc

	policy atomic.Pointer[compiled]
	limits atomic.Pointer[limiter]
	names  *names
	host   hostAddrs
	stats  counters

	// mu guards closed, flows and the WaitGroup's Add against Close.
	mu     sync.Mutex
	closed bool
	flows  map[*flow]struct{}
	wg     sync.WaitGroup

	dnsSem     chan struct{} // bounds concurrent DNS resolutions
	dnsTCPSem  chan struct{} // bounds DNS-over-TCP connections
	dnsFlowSem chan struct{} // bounds DNS-over-UDP flows

	tune    tuningParams
	bufPool sync.Pool     // copy buffers of tune.copyBuffer bytes
	bulk    chan struct{} // a slot per copy in bulk mode (tune.bulkCopies)
}

// Attach gives the network namespace ns (typically a sandbox's, opened
// from /proc/PID/ns/net) a network through this process: it creates the
// device in ns, configures addresses and routes there, and starts the
// netstack. ns may be closed after Attach returns: the device keeps the
// namespace alive until Close.
//
// Attach refuses the namespace the calling process itself runs in: a
// sandbox's link must never become a device of the host.
func Attach(ctx context.Context, ns *os.File, cfg Config) (*Link, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, fmt.Errorf("network: %w", err)
	}
	pol, err := compile(cfg.Policy)
	if err != nil {
		return nil, fmt.Errorf("network: policy: %w", err)
	}
	lim, err := newLimiter(cfg.Limits)
	if err != nil {
		return nil, fmt.Errorf("network: limits: %w", err)
	}
	if same, err := netns.IsOwn(ns); err != nil {
		return nil, fmt.Errorf("network: %w", err)
	} else if same {
		return nil, errors.New("network: refusing to attach a sandbox's link to the server's own network namespace")
	}
	dc := deviceConfig{
		name:     cfg.Device,
		mtu:      cfg.MTU,
		txQLen:   1000,
		addr4:    cfg.Addr,
		gateway4: cfg.Gateway,
	}
	if cfg.IPv6 {
		dc.addr6, dc.gateway6 = cfg.Addr6, cfg.Gateway6
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	tun, err := createDevice(ns, dc)
	if err != nil {
		return nil, fmt.Errorf("network: %w", err)
	}
	l := &Link{
		cfg:        cfg,
		tun:        tun,
		names:      newNames(cfg.NameRetention, 4096),
		flows:      make(map[*flow]struct{}),
		dnsSem:     make(chan struct{}, 32),
		dnsTCPSem:  make(chan struct{}, 16),
		dnsFlowSem: make(chan struct{}, 256),
	}
	l.host.get = cfg.HostAddrs
	l.tune = tuning
	l.bufPool.New = func() any { b := make([]byte, l.tune.copyBuffer); return &b }
	l.bulk = make(chan struct{}, max(l.tune.bulkCopies, 1))
	l.policy.Store(pol)
	l.limits.Store(lim)
	l.ctx, l.cancel = context.WithCancel(context.Background())
	if err := l.startStack(); err != nil {
		l.cancel()
		if l.ep != nil {
			l.ep.stop()
		} else {
			tun.Close()
		}
		return nil, fmt.Errorf("network: %w", err)
	}
	return l, nil
}

// AttachPID is Attach for the network namespace of process pid.
func AttachPID(ctx context.Context, pid int, cfg Config) (*Link, error) {
	ns, err := netns.Open(pid)
	if err != nil {
		return nil, fmt.Errorf("network: %w", err)
	}
	defer ns.Close()
	return Attach(ctx, ns, cfg)
}

func (l *Link) startStack() error {
	netProtos := []stack.NetworkProtocolFactory{ipv4.NewProtocol}
	if l.cfg.IPv6 {
		netProtos = append(netProtos, ipv6.NewProtocol)
	}
	s := stack.New(stack.Options{
		NetworkProtocols:   netProtos,
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
	})
	l.stack = s
	fail := func(what string, err tcpip.Error) error {
		if l.ep != nil {
			// Before the stack, whose queue drops what it holds: the
			// endpoint would wait for it.
			l.ep.stop()
		}
		s.Destroy()
		return fmt.Errorf("netstack: %s: %s", what, err)
	}
	tuneTCP(s, l.tune)
	// No ICMP from the netstack: in promiscuous mode it would answer echo
	// requests to every address as if the whole internet were up.
	s.SetICMPBurst(0)
	s.SetICMPLimit(0)

	ep, err := newTUNEndpoint(l.tun, uint32(l.cfg.MTU))
	if err != nil {
		s.Destroy()
		return fmt.Errorf("netstack: link endpoint: %w", err)
	}
	l.ep = ep
	nicOpts := stack.NICOptions{Name: l.cfg.Device}
	if l.tune.qdiscLen > 0 {
		nicOpts.QDisc = ep.queue(fifo.New(queuedWriter{ep}, 1, l.tune.qdiscLen))
	}
	if err := s.CreateNICWithOptions(nicID, ep, nicOpts); err != nil {
		return fail("creating NIC", err)
	}
	// The netstack answers for every address: each connection the sandbox
	// opens lands in the forwarders below, whatever its destination.
	if err := s.SetPromiscuousMode(nicID, true); err != nil {
		return fail("promiscuous mode", err)
	}
	if err := s.SetSpoofing(nicID, true); err != nil {
		return fail("spoofing", err)
	}
	gw := tcpip.AddrFrom4(l.cfg.Gateway.As4())
	if err := s.AddProtocolAddress(nicID, tcpip.ProtocolAddress{
		Protocol:          ipv4.ProtocolNumber,
		AddressWithPrefix: tcpip.AddressWithPrefix{Address: gw, PrefixLen: l.cfg.Addr.Bits()},
	}, stack.AddressProperties{}); err != nil {
		return fail("gateway address", err)
	}
	routes := []tcpip.Route{{Destination: header.IPv4EmptySubnet, NIC: nicID}}
	if l.cfg.IPv6 {
		gw6 := tcpip.AddrFrom16(l.cfg.Gateway6.As16())
		if err := s.AddProtocolAddress(nicID, tcpip.ProtocolAddress{
			Protocol:          ipv6.ProtocolNumber,
			AddressWithPrefix: tcpip.AddressWithPrefix{Address: gw6, PrefixLen: l.cfg.Addr6.Bits()},
		}, stack.AddressProperties{}); err != nil {
			return fail("gateway address", err)
		}
		routes = append(routes, tcpip.Route{Destination: header.IPv6EmptySubnet, NIC: nicID})
	}
	s.SetRouteTable(routes)

	tcpFwd := tcp.NewForwarder(s, l.tune.rcvWnd, maxHandshakes, l.handleTCP)
	s.SetTransportProtocolHandler(tcp.ProtocolNumber, tcpFwd.HandlePacket)
	udpFwd := udp.NewForwarder(s, l.handleUDP)
	s.SetTransportProtocolHandler(udp.ProtocolNumber, udpFwd.HandlePacket)
	l.ep.start()
	return nil
}

// SetPolicy replaces the link's policy atomically. New connections are
// decided by p; live connections that p would refuse are reset, and HTTP
// connections check their next requests against p.
func (l *Link) SetPolicy(p Policy) error {
	c, err := compile(p)
	if err != nil {
		return fmt.Errorf("network: policy: %w", err)
	}
	l.policy.Store(c)
	l.mu.Lock()
	flows := make([]*flow, 0, len(l.flows))
	for f := range l.flows {
		flows = append(flows, f)
	}
	l.mu.Unlock()
	for _, f := range flows {
		q := f.query(l)
		if v := c.decide(q); !v.allow {
			l.deny(f.proto, f.dst, q.presented, v.reason, v.rule)
			f.abort()
		}
	}
	return nil
}

// Policy returns the policy in force (normalised).
func (l *Link) Policy() Policy {
	c := l.policy.Load()
	return Policy{Rules: append([]Rule(nil), c.rules...), Default: c.def}
}

// SetLimits replaces the link's limits. Bandwidth limits apply at once to
// live connections too; MaxConns to new ones.
func (l *Link) SetLimits(lim Limits) error {
	nl, err := newLimiter(lim)
	if err != nil {
		return fmt.Errorf("network: limits: %w", err)
	}
	l.limits.Store(nl)
	return nil
}

// ResolvConf is the /etc/resolv.conf the sandbox should have: the link's
// gateway is its name server.
func (l *Link) ResolvConf() []byte { return resolvConf(&l.cfg) }

// ResolvConf is the /etc/resolv.conf a sandbox attached with cfg should
// have, for writing into its root file system before it starts.
func ResolvConf(cfg Config) ([]byte, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	return resolvConf(&cfg), nil
}

// DefaultResolvConf is the /etc/resolv.conf of a sandbox whose link has
// the default addresses. It does no harm in a sandbox without network:
// there is no route to the name server, so a lookup fails at once.
func DefaultResolvConf() []byte {
	b, _ := ResolvConf(Config{Resolver: net.DefaultResolver, Dialer: &net.Dialer{}})
	return append([]byte("# msb: DNS is answered by msb when this sandbox has network; without, there is no route to it.\n"), b...)
}

func resolvConf(cfg *Config) []byte {
	s := "nameserver " + cfg.Gateway.String() + "\n"
	if cfg.IPv6 {
		s += "nameserver " + cfg.Gateway6.String() + "\n"
	}
	// One server, which answers at once: no point in waiting 5s for it
	// twice before failing.
	s += "options timeout:2 attempts:2\n"
	return []byte(s)
}

// Close tears the link down: it resets every connection, stops the
// netstack and deletes the device (the sandbox is left with loopback
// only). It waits for every goroutine of the link to end.
func (l *Link) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	flows := make([]*flow, 0, len(l.flows))
	for f := range l.flows {
		flows = append(flows, f)
	}
	l.mu.Unlock()
	l.cancel()
	for _, f := range flows {
		f.abort()
	}
	// Reset every connection, over and over until the link's goroutines
	// are done: a handler may be in the middle of a handshake with the
	// sandbox, or about to start one. For a moment the device stays, so
	// that the resets reach the sandbox; then its reader is stopped (it
	// may be delivering a packet, which takes the stack's locks: stop it
	// before the stack goes) and the handshakes still waiting for the
	// sandbox fail.
	done := make(chan struct{})
	go func() {
		l.wg.Wait()
		close(done)
	}()
	var err error
	stopAt := time.Now().Add(100 * time.Millisecond)
	for stopped := false; ; {
		for _, e := range l.stack.RegisteredEndpoints() {
			e.Abort()
		}
		if !stopped && time.Now().After(stopAt) {
			err, stopped = l.ep.stop(), true
		}
		select {
		case <-done:
		case <-time.After(20 * time.Millisecond):
			continue
		}
		if !stopped {
			err = l.ep.stop()
		}
		break
	}
	l.stack.Close()
	l.stack.Wait()
	return err
}

// enter registers a goroutine doing work for the link; false once the
// link is closing.
func (l *Link) enter() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.wg.Add(1)
	return true
}

func (l *Link) leave() { l.wg.Done() }

func (l *Link) addFlow(f *flow) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.flows[f] = struct{}{}
	return true
}

func (l *Link) removeFlow(f *flow) {
	l.mu.Lock()
	delete(l.flows, f)
	l.mu.Unlock()
}

// deny counts a refusal and reports it.
func (l *Link) deny(proto string, dst netip.AddrPort, name string, reason Reason, rule int) {
	l.stats.count(reason)
	if l.cfg.OnDeny != nil {
		l.cfg.OnDeny(Denial{Time: time.Now(), Proto: proto, Dst: dst, Name: name, Reason: reason, Rule: rule})
	}
}

// isSandbox reports whether a packet's source address is the sandbox's:
// anything else it sends is spoofed and dropped.
func (l *Link) isSandbox(a netip.Addr) bool {
	return a == l.cfg.Addr.Addr() || (l.cfg.IPv6 && a == l.cfg.Addr6.Addr())
}

func (l *Link) isGateway(a netip.Addr) bool {
	return a == l.cfg.Gateway || (l.cfg.IPv6 && a == l.cfg.Gateway6)
}

// newQuery describes a connection to dst for the policy.
func (l *Link) newQuery(proto Proto, dst netip.AddrPort) *query {
	q := &query{
		proto:     proto,
		dst:       dst,
		names:     l.names.lookup(dst.Addr()),
		protected: l.protectedRange(proto, dst),
	}
	var seen map[string]bool // each name is resolved at most once per query
	q.assoc = func(name string) bool {
		ok, done := seen[name]
		if !done {
			ok = l.resolvesTo(name, dst.Addr())
			if seen == nil {
				seen = make(map[string]bool)
			}
			seen[name] = ok
		}
		return ok
	}
	return q
}

// resolvesTo reports whether name resolves to addr: from what the
// sandbox's own DNS queries returned, or else by asking the resolver now
// (a sandbox may know an address from elsewhere, say /etc/hosts).
func (l *Link) resolvesTo(name string, addr netip.Addr) bool {
	if l.names.has(name, addr) {
		return true
	}
	network := "ip4"
	if addr.Is6() {
		network = "ip6"
	}
	ctx, cancel := context.WithTimeout(l.ctx, l.cfg.DialTimeout)
	defer cancel()
	addrs, err := l.cfg.Resolver.LookupNetIP(ctx, network, name)
	if err != nil {
		return false
	}
	addrs = unmapAll(addrs)
	l.names.add(name, addrs)
	for _, a := range addrs {
		if a == addr {
			return true
		}
	}
	return false
}

func unmapAll(addrs []netip.Addr) []netip.Addr {
	out := addrs[:0:0]
	for _, a := range addrs {
		out = append(out, a.Unmap())
	}
	return out
}

// protectedRange returns the most specific protected range holding dst,
// if any and unless the operator exempted dst (Config.Exempt).
func (l *Link) protectedRange(proto Proto, dst netip.AddrPort) netip.Prefix {
	a := dst.Addr()
	for i := range l.cfg.Exempt {
		if r := &l.cfg.Exempt[i]; r.matchesProtoPort(proto, dst.Port()) && unmapPrefix(r.CIDR).Contains(a) {
			return netip.Prefix{}
		}
	}
	var best netip.Prefix
	consider := func(p netip.Prefix) {
		if p.Contains(a) && (!best.IsValid() || p.Bits() > best.Bits()) {
			best = p
		}
	}
	for _, p := range protectedRanges {
		consider(p)
	}
	for _, p := range l.cfg.Protected {
		consider(p)
	}
	for _, h := range l.host.addrs() {
		consider(netip.PrefixFrom(h, h.BitLen()))
	}
	return best
}

// hostAddrs caches the server host's own addresses.
type hostAddrs struct {
	get     func() []netip.Addr
	mu      sync.Mutex
	cached  []netip.Addr
	fetched time.Time
}

func (h *hostAddrs) addrs() []netip.Addr {
	if h.get != nil {
		return h.get()
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if time.Since(h.fetched) < 5*time.Second {
		return h.cached
	}
	h.cached, h.fetched = interfaceAddrs(), time.Now()
	return h.cached
}

func interfaceAddrs() []netip.Addr {
	as, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range as {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out
}

func toAddrPort(a tcpip.Address, port uint16) netip.AddrPort {
	ip, _ := netip.AddrFromSlice(a.AsSlice())
	return netip.AddrPortFrom(ip, port)
}

func dialNetwork(proto string, a netip.Addr) string {
	if a.Is4() {
		return proto + "4"
	}
	return proto + "6"
}

var errClosed = errors.New("link closed")
