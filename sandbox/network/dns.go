package network

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
)

// dnsFlowIdle ends a DNS flow (over UDP or TCP) nothing has crossed for
// that long.
const dnsFlowIdle = 5 * time.Second

// serveDNSUDP answers the DNS queries of one UDP flow from the sandbox to
// port 53 (of the gateway or of any address: msb answers them all) until
// it is idle for dnsFlowIdle or the link closes.
func (l *Link) serveDNSUDP(c *gonet.UDPConn) {
	defer l.leave()
	defer c.Close()
	stop := context.AfterFunc(l.ctx, func() { c.Close() })
	defer stop()
	buf := make([]byte, 4096)
	for {
		c.SetReadDeadline(time.Now().Add(dnsFlowIdle))
		n, err := c.Read(buf)
		if err != nil {
			return
		}
		req := append([]byte(nil), buf[:n]...)
		select {
		case l.dnsSem <- struct{}{}:
		default:
			continue // too many queries in flight: drop, the sandbox retries
		}
		if !l.enter() {
			<-l.dnsSem
			return
		}
		go func() {
			defer l.leave()
			defer func() { <-l.dnsSem }()
			if resp := l.answerDNS(req, false); resp != nil {
				c.Write(resp)
			}
		}()
	}
}

// serveDNSTCP answers DNS queries on one TCP connection from the sandbox.
func (l *Link) serveDNSTCP(c *gonet.TCPConn) {
	defer c.Close()
	stop := context.AfterFunc(l.ctx, func() { c.Close() })
	defer stop()
	var lenBuf [2]byte
	for {
		c.SetReadDeadline(time.Now().Add(dnsFlowIdle))
		if _, err := io.ReadFull(c, lenBuf[:]); err != nil {
			return
		}
		req := make([]byte, binary.BigEndian.Uint16(lenBuf[:]))
		if _, err := io.ReadFull(c, req); err != nil {
			return
		}
		resp := l.answerDNS(req, true)
		if resp == nil {
			return
		}
		out := make([]byte, 2+len(resp))
		binary.BigEndian.PutUint16(out, uint16(len(resp)))
		copy(out[2:], resp)
		c.SetWriteDeadline(time.Now().Add(dnsFlowIdle))
		if _, err := c.Write(out); err != nil {
			return
		}
	}
}

// answerDNS answers one query: names the policy refuses get NXDOMAIN,
// others are resolved with the configured resolver (A, and AAAA when the
// link has IPv6; other types get an empty answer) and their addresses
// remembered for domain rules. It returns nil for what it will not answer
// at all (not a query).
func (l *Link) answerDNS(req []byte, overTCP bool) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(req)
	if err != nil || h.Response {
		return nil
	}
	qs, err := p.AllQuestions()
	if err != nil {
		return nil
	}
	maxSize := 512
	if overTCP {
		maxSize = 65535
	} else if p.SkipAllAnswers() == nil && p.SkipAllAuthorities() == nil {
		if add, err := p.AllAdditionals(); err == nil {
			for _, r := range add {
				if r.Header.Type == dnsmessage.TypeOPT {
					maxSize = min(max(int(r.Header.Class), 512), 1232)
				}
			}
		}
	}
	l.stats.dnsQueries.Add(1)
	rh := dnsmessage.Header{ID: h.ID, Response: true, OpCode: h.OpCode, RecursionDesired: h.RecursionDesired, RecursionAvailable: true}
	if h.OpCode != 0 || len(qs) != 1 || qs[0].Class != dnsmessage.ClassINET {
		rh.RCode = dnsmessage.RCodeNotImplemented
		return buildDNS(rh, qs, nil, l.cfg.DNSTTL, maxSize)
	}
	q := qs[0]
	name := normName(q.Name.String())
	if ok, rule := l.policy.Load().nameVerdict(name); !ok {
		l.stats.dnsNames.Add(1)
		reason := ReasonRule
		if rule < 0 {
			reason = ReasonDefault
		}
		l.deny("dns", netip.AddrPort{}, name, reason, rule)
		rh.RCode = dnsmessage.RCodeNameError
		return buildDNS(rh, qs, nil, l.cfg.DNSTTL, maxSize)
	}
	var network string
	switch q.Type {
	case dnsmessage.TypeA:
		network = "ip4"
	case dnsmessage.TypeAAAA:
		if l.cfg.IPv6 {
			network = "ip6"
		}
	}
	var addrs []netip.Addr
	if network != "" {
		ctx, cancel := context.WithTimeout(l.ctx, l.cfg.DialTimeout)
		addrs, err = l.cfg.Resolver.LookupNetIP(ctx, network, name)
		cancel()
		addrs = unmapAll(addrs)
		var dnsErr *net.DNSError
		switch {
		case err == nil:
		case errors.As(err, &dnsErr) && dnsErr.IsNotFound:
			rh.RCode = dnsmessage.RCodeNameError
		default:
			rh.RCode = dnsmessage.RCodeServerFailure
		}
		if err == nil {
			kept := addrs[:0]
			for _, a := range addrs {
				if (network == "ip4") == a.Is4() {
					kept = append(kept, a)
				}
			}
			addrs = kept
			l.names.add(name, addrs)
		}
	}
	return buildDNS(rh, qs, addrs, l.cfg.DNSTTL, maxSize)
}

func buildDNS(h dnsmessage.Header, qs []dnsmessage.Question, addrs []netip.Addr, ttl time.Duration, maxSize int) []byte {
	for {
		b := dnsmessage.NewBuilder(make([]byte, 0, 512), h)
		b.EnableCompression()
		b.StartQuestions()
		for _, q := range qs {
			b.Question(q)
		}
		b.StartAnswers()
		for _, a := range addrs {
			rh := dnsmessage.ResourceHeader{Name: qs[0].Name, Class: dnsmessage.ClassINET, TTL: uint32(ttl / time.Second)}
			if a.Is4() {
				b.AResource(rh, dnsmessage.AResource{A: a.As4()})
			} else {
				b.AAAAResource(rh, dnsmessage.AAAAResource{AAAA: a.As16()})
			}
		}
		out, err := b.Finish()
		if err != nil {
			return nil
		}
		if len(out) <= maxSize || len(addrs) == 0 {
			return out
		}
		// Too big for the transport: truncate, the client retries over
		// TCP.
		h.Truncated = true
		addrs = nil
	}
}
