package network

import "sync/atomic"

// Stats are a link's counters since Attach.
type Stats struct {
	TCPConns     uint64 // TCP connections dialed on the sandbox's behalf
	UDPFlows     uint64 // UDP flows dialed on the sandbox's behalf
	Active       int64  // live TCP connections plus UDP flows
	DialFailures uint64 // allowed attempts whose dial failed
	BytesUp      uint64 // payload bytes from the sandbox to its destinations
	BytesDown    uint64 // payload bytes from destinations to the sandbox
	DNSQueries   uint64 // DNS queries answered

	Denied         uint64 // every refused attempt, all reasons
	DeniedRule     uint64 // ... by a deny rule
	DeniedDefault  uint64 // ... by the policy's default
	DeniedProtect  uint64 // ... to an always-denied destination
	DeniedName     uint64 // ... presenting a name that does not resolve to the destination
	DeniedLimit    uint64 // ... over the connection cap
	DeniedInspect  uint64 // ... whose request head could not be inspected
	DeniedSource   uint64 // ... from a spoofed source address
	DeniedDNSNames uint64 // DNS queries refused (also counted by reason above)
}

type counters struct {
	tcpConns, udpFlows, dialFailures atomic.Uint64
	bytesUp, bytesDown, dnsQueries   atomic.Uint64
	denied, rule, def, protect, name atomic.Uint64
	limit, inspect, source, dnsNames atomic.Uint64
	slots                            connSlots
}

func (c *counters) count(r Reason) {
	c.denied.Add(1)
	switch r {
	case ReasonRule:
		c.rule.Add(1)
	case ReasonDefault:
		c.def.Add(1)
	case ReasonProtected:
		c.protect.Add(1)
	case ReasonNameMismatch:
		c.name.Add(1)
	case ReasonConnLimit:
		c.limit.Add(1)
	case ReasonInspect:
		c.inspect.Add(1)
	case ReasonSource:
		c.source.Add(1)
	}
}

// Stats returns a snapshot of the link's counters.
func (l *Link) Stats() Stats {
	c := &l.stats
	return Stats{
		TCPConns:       c.tcpConns.Load(),
		UDPFlows:       c.udpFlows.Load(),
		Active:         c.slots.n.Load(),
		DialFailures:   c.dialFailures.Load(),
		BytesUp:        c.bytesUp.Load(),
		BytesDown:      c.bytesDown.Load(),
		DNSQueries:     c.dnsQueries.Load(),
		Denied:         c.denied.Load(),
		DeniedRule:     c.rule.Load(),
		DeniedDefault:  c.def.Load(),
		DeniedProtect:  c.protect.Load(),
		DeniedName:     c.name.Load(),
		DeniedLimit:    c.limit.Load(),
		DeniedInspect:  c.inspect.Load(),
		DeniedSource:   c.source.Load(),
		DeniedDNSNames: c.dnsNames.Load(),
	}
}
