package network

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestParseRule(t *testing.T) {
	for _, tc := range []struct {
		in, out string
	}{
		{"allow *.pypi.org:443", "allow *.pypi.org:443"},
		{"allow tcp pypi.org:80,443", "allow tcp pypi.org:80,443"},
		{"deny 10.0.0.0/8", "deny 10.0.0.0/8"},
		{"allow udp 203.0.113.0/24:1000-2000", "allow udp 203.0.113.0/24:1000-2000"},
		{"deny *:25", "deny *:25"},
		{"allow [2001:db8::/32]:443", "allow [2001:db8::/32]:443"},
		{"allow 2001:db8::/32", "allow 2001:db8::/32"},
		{"allow 203.0.113.7", "allow 203.0.113.7/32"},
		{"ALLOW Example.COM", "allow example.com"},
	} {
		r, err := ParseRule(tc.in)
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		if got := r.String(); !strings.EqualFold(got, tc.out) {
			t.Errorf("%q: got %q, want %q", tc.in, got, tc.out)
		}
	}
	for _, bad := range []string{"", "allow", "permit x.org", "allow *.*.org", "allow 10.0.0.1/8", "allow x.org:0", "allow x.org:9-3", "allow x.org y.org", "allow a..b"} {
		if _, err := ParseRule(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestDomainMatch(t *testing.T) {
	for _, tc := range []struct {
		pattern, name string
		want          bool
	}{
		{"pypi.org", "pypi.org", true},
		{"pypi.org", "files.pypi.org", false},
		{"*.pypi.org", "files.pypi.org", true},
		{"*.pypi.org", "a.b.pypi.org", true},
		{"*.pypi.org", "pypi.org", false},
		{"*.pypi.org", "evilpypi.org", false},
		{"*.pypi.org", "pypi.org.evil.com", false},
	} {
		if got := domainMatch(tc.pattern, tc.name); got != tc.want {
			t.Errorf("domainMatch(%q, %q) = %v", tc.pattern, tc.name, got)
		}
	}
}

func TestDecide(t *testing.T) {
	pol, err := compile(MustParsePolicy(Deny,
		"deny *.evil.test",
		"allow *.allowed.test:80,443",
		"allow 203.0.113.40/32",
		"allow 10.9.0.0/16",
		"allow udp 198.51.100.0/24:53",
	))
	if err != nil {
		t.Fatal(err)
	}
	ip := netip.MustParseAddr
	ap := func(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
	resolves := map[string]netip.Addr{"api.allowed.test": ip("203.0.113.10")}
	assoc := func(dst netip.AddrPort) func(string) bool {
		return func(name string) bool { return resolves[name] == dst.Addr() }
	}
	l := &Link{}
	for _, tc := range []struct {
		name      string
		proto     Proto
		dst       netip.AddrPort
		names     []string
		presented string
		allow     bool
		reason    Reason
		nameMat   bool
	}{
		{"by remembered name", TCP, ap("203.0.113.10:443"), []string{"api.allowed.test"}, "", true, "", true},
		{"remembered name, other port", TCP, ap("203.0.113.10:22"), []string{"api.allowed.test"}, "", false, ReasonDefault, false},
		{"by presented name", TCP, ap("203.0.113.10:443"), nil, "api.allowed.test", true, "", true},
		{"presented name elsewhere", TCP, ap("203.0.113.20:443"), nil, "api.allowed.test", false, ReasonNameMismatch, true},
		{"presented denied name on allowed address", TCP, ap("203.0.113.40:443"), nil, "x.evil.test", false, ReasonRule, true},
		{"CIDR", TCP, ap("203.0.113.40:8080"), nil, "", true, "", true},
		{"unknown address", TCP, ap("203.0.113.99:443"), nil, "", false, ReasonDefault, true},
		{"remembered denied name", TCP, ap("203.0.113.20:443"), []string{"www.evil.test"}, "", false, ReasonRule, true},
		{"udp rule", UDP, ap("198.51.100.9:53"), nil, "", true, "", true},
		{"udp rule is udp only", TCP, ap("198.51.100.9:53"), nil, "", false, ReasonDefault, true},
		{"private", TCP, ap("10.1.2.3:80"), nil, "", false, ReasonProtected, false},
		{"private via allowed name", TCP, ap("10.1.2.3:80"), []string{"private.allowed.test"}, "", false, ReasonProtected, false},
		{"private named by a rule", TCP, ap("10.9.1.1:80"), nil, "", false, ReasonProtected, false},
		{"metadata", TCP, ap("169.254.169.254:80"), nil, "", false, ReasonProtected, false},
		{"loopback", TCP, ap("127.0.0.1:80"), nil, "", false, ReasonProtected, false},
		{"cgnat", UDP, ap("100.100.100.100:53"), nil, "", false, ReasonProtected, false},
		{"ula", TCP, ap("[fd00::1]:80"), nil, "", false, ReasonProtected, false},
		{"v4-mapped", TCP, ap("[::ffff:10.0.0.1]:80"), nil, "", false, ReasonProtected, false},
	} {
		q := &query{proto: tc.proto, dst: tc.dst, names: tc.names, presented: tc.presented, assoc: assoc(tc.dst), protected: l.protectedRange(tc.proto, tc.dst)}
		v := pol.decide(q)
		if v.allow != tc.allow || v.reason != tc.reason || (tc.allow && v.nameMatters != tc.nameMat) {
			t.Errorf("%s: got allow=%v reason=%q nameMatters=%v rule=%d, want allow=%v reason=%q nameMatters=%v",
				tc.name, v.allow, v.reason, v.nameMatters, v.rule, tc.allow, tc.reason, tc.nameMat)
		}
	}

	// Allowing everything does not unlock protected ranges.
	all, _ := compile(MustParsePolicy(Allow, "allow 0.0.0.0/0", "allow ::/0"))
	for _, a := range []string{"127.0.0.1:1", "10.0.0.1:1", "172.16.0.1:1", "192.168.0.1:1", "169.254.169.254:80", "100.64.0.1:1", "[::1]:1", "[fe80::1]:1", "224.0.0.1:1", "0.0.0.0:1"} {
		dst := ap(a)
		if v := all.decide(&query{proto: TCP, dst: dst, protected: l.protectedRange(TCP, dst)}); v.allow {
			t.Errorf("%s allowed by allow-all", a)
		}
	}
	// The host's own addresses are protected, down to the single address.
	hl := &Link{}
	hl.host.get = func() []netip.Addr { return []netip.Addr{ip("198.51.100.1")} }
	pol2, _ := compile(MustParsePolicy(Deny, "allow 198.51.100.0/24"))
	if v := pol2.decide(&query{proto: TCP, dst: ap("198.51.100.1:80"), protected: hl.protectedRange(TCP, ap("198.51.100.1:80"))}); v.allow || v.reason != ReasonProtected {
		t.Errorf("host address: %+v", v)
	}
	if v := pol2.decide(&query{proto: TCP, dst: ap("198.51.100.2:80"), protected: hl.protectedRange(TCP, ap("198.51.100.2:80"))}); !v.allow {
		t.Errorf("neighbour of host address: %+v", v)
	}
}

// Only the operator's exemptions open a protected destination, and only
// for the ports and protocol they name.
func TestExempt(t *testing.T) {
	l := &Link{cfg: Config{Exempt: []Rule{mustRule(t, "allow tcp 10.9.0.0/16:5432"), mustRule(t, "allow 169.254.169.254")}}}
	l.host.get = func() []netip.Addr { return nil }
	pol, _ := compile(MustParsePolicy(Deny, "allow 10.9.1.1", "allow *:80"))
	for _, tc := range []struct {
		proto Proto
		dst   string
		allow bool
	}{
		{TCP, "10.9.1.1:5432", true},
		{UDP, "10.9.1.1:5432", false},
		{TCP, "10.9.1.1:5433", false},
		{TCP, "10.9.1.2:5432", false}, // exempt, but no rule allows it
		{TCP, "169.254.169.254:80", true},
		{TCP, "10.8.0.1:80", false},
	} {
		dst := netip.MustParseAddrPort(tc.dst)
		if v := pol.decide(&query{proto: tc.proto, dst: dst, protected: l.protectedRange(tc.proto, dst)}); v.allow != tc.allow {
			t.Errorf("%v %s: %+v", tc.proto, tc.dst, v)
		}
	}
}

func TestParseTarget(t *testing.T) {
	for in, want := range map[string]string{
		"*.PyPI.org:443":           "*.pypi.org:443",
		"udp 203.0.113.0/24":       "udp 203.0.113.0/24",
		"*":                        "*",
		"*:25":                     "*:25",
		"[2001:db8::1]:443":        "[2001:db8::1/128]:443",
		"::ffff:203.0.113.7":       "203.0.113.7/32",
		"files.pythonhosted.org":   "files.pythonhosted.org",
		"xn--bcher-kva.example:80": "xn--bcher-kva.example:80",
	} {
		r, err := ParseTarget(in)
		if err != nil || r.Target() != want || r.Action != Allow {
			t.Errorf("ParseTarget(%q) = %q, %v; want %q", in, r.Target(), err, want)
		}
	}
	for _, bad := range []string{"", "allow x.org", "x.org:", "x.org:0", "x.org:65536", "x.org:a", "*.*", "a..b", "-a.org", "bücher.example", "x.org/8",
		"10.0.0.1/8", "[::1", "[::1]x", "fe80::1%eth0", "a b", "tcp", strings.Repeat("a", 400), "*.", "a.org:1-2-3"} {
		if r, err := ParseTarget(bad); err == nil {
			t.Errorf("ParseTarget(%q) = %q, no error", bad, r.Target())
		}
	}
}

func TestWithin(t *testing.T) {
	ceiling := []Rule{
		mustRule(t, "allow *.pypi.org:443"), mustRule(t, "allow files.pythonhosted.org:443"),
		mustRule(t, "allow tcp example.org:80"), mustRule(t, "allow example.org:443-450"),
		mustRule(t, "allow 203.0.113.0/24"), mustRule(t, "allow udp 198.51.100.0/24:53"),
	}
	for target, want := range map[string]bool{
		"*.pypi.org:443":             true,
		"a.pypi.org:443":             true,
		"*.a.pypi.org:443":           true,
		"pypi.org:443":               false, // *.pypi.org is below pypi.org, not pypi.org
		"*.pypi.org":                 false, // every port
		"*.pypi.org:80":              false,
		"files.pythonhosted.org:443": true,
		"tcp example.org:80,443-445": true,  // spread over two rules
		"example.org:80":             false, // UDP is not covered
		"tcp example.org:80-450":     false,
		"203.0.113.128/25":           true,
		"203.0.113.7:8080":           true,
		"203.0.112.0/23":             false,
		"udp 198.51.100.9:53":        true,
		"198.51.100.9:53":            false,
		"*":                          false,
		"*:443":                      false,
		"[2001:db8::1]":              false,
	} {
		r, err := ParseTarget(target)
		if err != nil {
			t.Fatal(err)
		}
		if got := Within(r, ceiling); got != want {
			t.Errorf("Within(%q) = %v, want %v", target, got, want)
		}
	}
	everything := []Rule{mustRule(t, "allow *")}
	for _, target := range []string{"*", "*:443", "10.0.0.0/8", "udp x.org:53"} {
		if r, _ := ParseTarget(target); !Within(r, everything) {
			t.Errorf("%q not within *", target)
		}
	}
	if r, _ := ParseTarget("x.org"); Within(r, nil) {
		t.Error("within an empty ceiling")
	}
}

func TestNameVerdict(t *testing.T) {
	pol, _ := compile(MustParsePolicy(Deny, "deny *.evil.test", "deny tcp smtp.test:25", "allow *.allowed.test"))
	for name, want := range map[string]bool{
		"a.evil.test":    false,
		"smtp.test":      true, // denied for one port only
		"x.allowed.test": true,
		"other.test":     false, // nothing allowed without a name
	} {
		if got, _ := pol.nameVerdict(name); got != want {
			t.Errorf("%s: %v", name, got)
		}
	}
	open, _ := compile(MustParsePolicy(Deny, "deny *.evil.test", "allow 0.0.0.0/0:443"))
	if ok, _ := open.nameVerdict("other.test"); !ok {
		t.Error("names must resolve when addresses are allowed without names")
	}
}

// clientHello captures the bytes a real TLS client sends first.
func clientHello(t *testing.T, serverName string) []byte {
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	go tls.Client(c1, &tls.Config{ServerName: serverName, InsecureSkipVerify: true}).Handshake()
	var out []byte
	buf := make([]byte, 4096)
	c2.SetReadDeadline(time.Now().Add(2 * time.Second))
	for {
		n, err := c2.Read(buf)
		out = append(out, buf[:n]...)
		if name, complete, _ := clientHelloSNI(out); complete || err != nil {
			_ = name
			return out
		}
	}
}

func TestInspector(t *testing.T) {
	hello := clientHello(t, "API.Allowed.Test")
	// Fed one byte at a time, it still finds the name once.
	in := &inspector{}
	var names []string
	for i := range hello {
		ns, err := in.feed(hello[i : i+1])
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, ns...)
		if i < len(hello)-1 && in.classified {
			t.Fatalf("classified after %d of %d bytes", i+1, len(hello))
		}
	}
	if len(names) != 1 || names[0] != "api.allowed.test" || !in.classified || !in.tls {
		t.Fatalf("TLS: names %q classified %v", names, in.classified)
	}

	// Keep-alive HTTP: every request's Host, bodies skipped.
	stream := "POST /a HTTP/1.1\r\nHost: one.test\r\nContent-Length: 11\r\n\r\nGET / HTTP/" +
		"GET /b HTTP/1.1\r\nHost: two.test:8080\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nGET \r\n0\r\nX-T: 1\r\n\r\n" +
		"GET http://three.test/x HTTP/1.1\r\nHost: ignored.test\r\n\r\n" +
		"GET / HTTP/1.0\r\n\r\n"
	for _, chunk := range []int{1, 7, 1000} {
		in := &inspector{}
		var got []string
		for s := stream; s != ""; {
			n := min(chunk, len(s))
			ns, err := in.feed([]byte(s[:n]))
			if err != nil {
				t.Fatalf("chunk %d: %v", chunk, err)
			}
			got = append(got, ns...)
			s = s[n:]
		}
		if strings.Join(got, ",") != "one.test,two.test,three.test," {
			t.Errorf("chunk %d: names %q", chunk, got)
		}
	}

	// Ambiguous or oversized heads are refused, and names that are no
	// DNS names.
	for _, bad := range []string{
		"GET / HTTP/1.1\r\nHost: evil.test#.allowed.test\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a..allowed.test\r\n\r\n",
		"GET http://evil.test@x/ HTTP/1.1\r\nHost: x.allowed.test\r\n\r\n" + "GET / HTTP/1.1\r\nHost: e vil\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a.test\r\n folded\r\n\r\n",
		"GET / HTTP/1.1\r\nX: " + strings.Repeat("x", maxHead) + "\r\n\r\n",
	} {
		if _, err := (&inspector{}).feed([]byte(bad)); err == nil {
			t.Errorf("no error for %.60q", bad)
		}
	}
	// Other protocols are opaque at once; upgrades after their request.
	in = &inspector{}
	if ns, err := in.feed([]byte("SSH-2.0-x\r\n")); err != nil || len(ns) != 0 || !in.classified || in.mode != modeOpaque {
		t.Errorf("ssh: %q %v", ns, err)
	}
	in = &inspector{}
	ns, _ := in.feed([]byte("GET /ws HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nGET / HTTP/1.1\r\nHost: evil.test\r\n\r\n"))
	if len(ns) != 1 || ns[0] != "ws.test" {
		t.Errorf("upgrade: %q", ns)
	}
	if !bytes.HasPrefix(hello, []byte{0x16, 3}) {
		t.Error("hello")
	}
}

func TestNames(t *testing.T) {
	n := newNames(time.Minute, 2)
	now := time.Unix(1000, 0)
	n.now = func() time.Time { return now }
	a, b, c := netip.MustParseAddr("203.0.113.1"), netip.MustParseAddr("203.0.113.2"), netip.MustParseAddr("203.0.113.3")
	n.add("a.test", []netip.Addr{a, b})
	n.add("b.test", []netip.Addr{b})
	if got := n.lookup(b); len(got) != 2 {
		t.Errorf("lookup b: %q", got)
	}
	if !n.has("a.test", a) || n.has("b.test", a) {
		t.Error("has")
	}
	now = now.Add(30 * time.Second)
	n.lookup(a) // a.test in use: its life is extended
	now = now.Add(45 * time.Second)
	if n.has("b.test", b) || !n.has("a.test", a) {
		t.Error("expiry")
	}
	n.add("c.test", []netip.Addr{c}) // evicts the expired b.test
	if len(n.byName) != 2 || n.byName["b.test"] != nil {
		t.Errorf("eviction: %v", n.byName)
	}
}

// A name whose (the sandbox's own) DNS server answers every query with
// new addresses keeps the newest maxAddrsPerName; all names together keep
// at most maxAddrs: the table cannot grow the server's memory.
func TestNamesBoundedAddresses(t *testing.T) {
	n := newNames(time.Minute, 16)
	now := time.Unix(1000, 0)
	n.now = func() time.Time { return now }
	addr := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)}) }
	for i := range 20000 {
		now = now.Add(time.Millisecond)
		n.add("flood.test", []netip.Addr{addr(i)})
	}
	if e := n.byName["flood.test"]; len(e.addrs) != maxAddrsPerName || n.addrs != maxAddrsPerName || len(n.byAddr) != maxAddrsPerName {
		t.Fatalf("one name keeps %d addresses (%d counted, %d reverse), want %d", len(e.addrs), n.addrs, len(n.byAddr), maxAddrsPerName)
	}
	if !n.has("flood.test", addr(19999)) || n.has("flood.test", addr(0)) {
		t.Error("not the newest addresses kept")
	}
	for i := range 16 {
		var as []netip.Addr
		for j := range maxAddrsPerName {
			as = append(as, addr(1000+i*maxAddrsPerName+j))
		}
		n.add(fmt.Sprintf("n%d.test", i), as)
	}
	if n.addrs > n.maxAddrs() || len(n.byAddr) > n.maxAddrs() {
		t.Fatalf("%d addresses kept (%d reverse), bound %d", n.addrs, len(n.byAddr), n.maxAddrs())
	}
	if !n.has("n15.test", addr(1000+15*maxAddrsPerName)) {
		t.Error("the newest name was evicted")
	}
}
