package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// Resolver resolves names for the sandbox's DNS and for checking that a
// presented name resolves to the address a connection goes to.
// *net.Resolver satisfies it; network is "ip4" or "ip6".
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Dialer dials the destinations the policy allows, on the sandbox's
// behalf, from the server's network namespace. *net.Dialer satisfies it;
// network is "tcp4", "tcp6", "udp4" or "udp6" and address is always an IP
// address and port, never a name.
type Dialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// Denial describes one refused attempt, for OnDeny.
type Denial struct {
	Time   time.Time
	Proto  string         // "tcp", "udp" or "dns"
	Dst    netip.AddrPort // the destination; zero for a DNS query
	Name   string         // the name involved (DNS question, SNI, Host), if any
	Reason Reason
	Rule   int // index of the deciding rule in the policy, -1 for none
}

// String describes the refusal in one line, for logs and audit records.
func (d Denial) String() string {
	s := d.Proto + " " + d.Reason.String()
	if d.Dst.IsValid() {
		s += " " + d.Dst.String()
	}
	if d.Name != "" {
		s += " " + d.Name
	}
	if d.Rule >= 0 {
		s += fmt.Sprintf(" (rule %d)", d.Rule)
	}
	return s
}

// String returns the reason's name.
func (r Reason) String() string { return string(r) }

// Limits caps what a sandbox can use. The zero value is unlimited.
type Limits struct {
	// MaxConns caps concurrent TCP connections plus UDP flows.
	MaxConns int
	// UpBytesPerSec and DownBytesPerSec cap the bandwidth from and to the
	// sandbox, summed over all its connections (payload bytes, token
	// bucket).
	UpBytesPerSec   int64
	DownBytesPerSec int64
	// Burst is the token bucket's depth in bytes; 0 picks a tenth of a
	// second's worth, at least 64 KiB.
	Burst int
}

// Config configures a sandbox's link.
type Config struct {
	Policy Policy
	Limits Limits
	// Resolver resolves names for the sandbox; nil uses
	// net.DefaultResolver (the host's resolver).
	Resolver Resolver
	// Dialer dials allowed destinations; nil uses a net.Dialer.
	Dialer Dialer
	// OnDeny, if set, is called for every refused attempt. It is called
	// from the goroutine handling the attempt and must not block; the
	// server rate-limits and audits.
	OnDeny func(Denial)

	// Device is the name of the interface in the sandbox ("eth0").
	Device string
	// MTU of the link; 0 picks 65520. A large MTU lets both TCP stacks
	// move 64 KiB segments through the device, which is where the
	// throughput comes from.
	MTU int
	// Addr is the sandbox's address and subnet (10.0.2.15/24) and Gateway
	// the netstack's (10.0.2.2): the sandbox's default route and DNS
	// server.
	Addr    netip.Prefix
	Gateway netip.Addr
	// Addr6 and Gateway6 give the sandbox IPv6 (fd00:6d73:62::15/64 via
	// fd00:6d73:62::2 when IPv6 is set); without, AAAA queries answer
	// nothing and the sandbox has no IPv6 route.
	IPv6     bool
	Addr6    netip.Prefix
	Gateway6 netip.Addr

	// Protected are further ranges refused whatever the rules say, on top
	// of the built-in ones and the host's addresses: say the addresses
	// other sandboxes' services are published on.
	Protected []netip.Prefix
	// Exempt are protected destinations that are not protected on this
	// link: CIDR rules (with ports and protocol, if any; their action is
	// ignored) naming the private or host addresses the operator lets
	// sandboxes reach. The policy's rules still decide whether they are
	// allowed. This is the operator's to set, never a client's.
	Exempt []Rule
	// HostAddrs returns the server host's own addresses, refused unless
	// exempt; nil reads the addresses of the server's network namespace,
	// cached for a few seconds.
	HostAddrs func() []netip.Addr

	// PeekTimeout is how long a connection whose fate depends on the name
	// it presents may take to present it (send its TLS ClientHello or
	// HTTP request) before it is decided without; 0 picks 1s. It delays
	// only server-speaks-first protocols, and only for destinations a
	// domain rule could match.
	PeekTimeout time.Duration
	// DialTimeout bounds dialing a destination and resolving a presented
	// name; 0 picks 30s.
	DialTimeout time.Duration
	// UDPIdleTimeout ends a UDP flow nothing has crossed for that long; 0
	// picks 60s.
	UDPIdleTimeout time.Duration
	// NameRetention is how long after its last resolution or use a name's
	// addresses are remembered for domain rules; 0 picks 30 minutes.
	NameRetention time.Duration
	// DNSTTL is the TTL of the DNS answers given to the sandbox; 0 picks
	// 30s.
	DNSTTL time.Duration
}

// Defaults for the sandbox's side of the link.
var (
	DefaultAddr     = netip.MustParsePrefix("10.0.2.15/24")
	DefaultGateway  = netip.MustParseAddr("10.0.2.2")
	DefaultAddr6    = netip.MustParsePrefix("fd00:6d73:62::15/64")
	DefaultGateway6 = netip.MustParseAddr("fd00:6d73:62::2")
)

func (c *Config) setDefaults() error {
	if c.Resolver == nil {
		c.Resolver = net.DefaultResolver
	}
	if c.Dialer == nil {
		c.Dialer = &net.Dialer{}
	}
	if c.Device == "" {
		c.Device = "eth0"
	}
	if c.MTU == 0 {
		c.MTU = 65520
	}
	if c.MTU < 1280 || c.MTU > 65535 {
		return fmt.Errorf("MTU %d is out of range: use 1280 to 65535", c.MTU)
	}
	for _, r := range c.Exempt {
		if err := r.validate(); err != nil || !r.CIDR.IsValid() {
			return fmt.Errorf("exempt destination %q: must be a CIDR (or address) with optional ports", r.Target())
		}
	}
	if !c.Addr.IsValid() {
		c.Addr = DefaultAddr
	}
	if !c.Gateway.IsValid() {
		c.Gateway = DefaultGateway
	}
	if !c.Addr.Addr().Is4() || !c.Gateway.Is4() || !c.Addr.Masked().Contains(c.Gateway) || c.Addr.Addr() == c.Gateway {
		return errors.New("Addr and Gateway must be distinct IPv4 addresses in one subnet")
	}
	if c.IPv6 {
		if !c.Addr6.IsValid() {
			c.Addr6 = DefaultAddr6
		}
		if !c.Gateway6.IsValid() {
			c.Gateway6 = DefaultGateway6
		}
		if !c.Addr6.Addr().Is6() || !c.Addr6.Masked().Contains(c.Gateway6) || c.Addr6.Addr() == c.Gateway6 {
			return errors.New("Addr6 and Gateway6 must be distinct IPv6 addresses in one subnet")
		}
	}
	if c.PeekTimeout == 0 {
		c.PeekTimeout = time.Second
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = 30 * time.Second
	}
	if c.UDPIdleTimeout == 0 {
		c.UDPIdleTimeout = time.Minute
	}
	if c.NameRetention == 0 {
		c.NameRetention = 30 * time.Minute
	}
	if c.DNSTTL == 0 {
		c.DNSTTL = 30 * time.Second
	}
	return nil
}
