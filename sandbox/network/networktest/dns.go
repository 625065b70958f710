package networktest

import (
	"encoding/binary"
	"io"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// queries counts the questions the worlds' DNS servers answered.
var queries atomic.Int64

// DNSQueries reports how many questions the world's DNS servers (of every
// world of this process) have answered.
func DNSQueries() int64 { return queries.Load() }

// serveDNS answers the zone over UDP and TCP on WorldAddr:53: A and AAAA
// records of its names, NXDOMAIN for other names, an empty answer for
// other types.
func (w *World) serveDNS(t testing.TB) {
	addr := w.DNS().String()
	_, pc := w.Listen(t, "udp", addr)
	w.Serve(func() {
		buf := make([]byte, 4096)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if resp := w.answer(buf[:n]); resp != nil {
				pc.WriteTo(resp, from)
			}
		}
	})
	ln, _ := w.Listen(t, "tcp", addr)
	w.Serve(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			w.Serve(func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				var l [2]byte
				for {
					if _, err := io.ReadFull(c, l[:]); err != nil {
						return
					}
					req := make([]byte, binary.BigEndian.Uint16(l[:]))
					if _, err := io.ReadFull(c, req); err != nil {
						return
					}
					resp := w.answer(req)
					if resp == nil {
						return
					}
					out := binary.BigEndian.AppendUint16(nil, uint16(len(resp)))
					if _, err := c.Write(append(out, resp...)); err != nil {
						return
					}
				}
			})
		}
	})
}

// answer answers one DNS query from the zone, or returns nil for what is
// not a query.
func (w *World) answer(req []byte) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(req)
	if err != nil || h.Response {
		return nil
	}
	q, err := p.Question()
	if err != nil {
		return nil
	}
	queries.Add(1)
	rh := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired}
	name := q.Name.String()
	var addrs []netip.Addr
	if _, ok := w.Zone[trimDot(name)]; !ok {
		rh.RCode = dnsmessage.RCodeNameError
	} else {
		switch q.Type {
		case dnsmessage.TypeA:
			addrs = w.lookup("ip4", name)
		case dnsmessage.TypeAAAA:
			addrs = w.lookup("ip6", name)
		}
	}
	b := dnsmessage.NewBuilder(nil, rh)
	b.StartQuestions()
	b.Question(q)
	b.StartAnswers()
	for _, a := range addrs {
		hdr := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 5}
		if a.Is4() {
			b.AResource(hdr, dnsmessage.AResource{A: a.As4()})
		} else {
			b.AAAAResource(hdr, dnsmessage.AAAAResource{AAAA: a.As16()})
		}
	}
	out, err := b.Finish()
	if err != nil {
		return nil
	}
	return out
}

func trimDot(s string) string {
	if len(s) > 0 && s[len(s)-1] == '.' {
		s = s[:len(s)-1]
	}
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}
