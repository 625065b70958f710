package network

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/sandbox/network/netns"
	"github.com/msb-dev/msb/sandbox/network/networktest"
)

// get fetches url from inside the sandbox and returns the body.
func get(t *testing.T, sb *sandbox, w *networktest.World, url string) (string, error) {
	t.Helper()
	c := sb.httpClient(w)
	defer c.CloseIdleConnections()
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// rawHTTP sends one request with the given Host to addr from inside the
// sandbox and returns the response's first line, or the error.
func rawHTTP(sb *sandbox, addr, host string) (string, error) {
	c, err := sb.dial(context.Background(), "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", host)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return strings.TrimSpace(string(b)), nil
}

// tlsDial does a TLS handshake from inside the sandbox to addr with the
// given SNI.
func tlsDial(sb *sandbox, w *networktest.World, addr, sni string) error {
	c, err := sb.dial(context.Background(), "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	tc := tls.Client(c, &tls.Config{ServerName: sni, RootCAs: w.Certs})
	if err := tc.Handshake(); err != nil {
		return err
	}
	fmt.Fprintf(tc, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", sni)
	resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

func lastDenial(t *testing.T, sb *sandbox) Denial {
	t.Helper()
	return denialAfter(t, sb, 0)
}

// denialAfter waits for more than n denials and returns the last.
func denialAfter(t *testing.T, sb *sandbox, n int) Denial {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		if ds := sb.denials(); len(ds) > n {
			return ds[len(ds)-1]
		}
		if time.Now().After(deadline) {
			t.Fatal("no denial reported")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var policyAllowed = MustParsePolicy(Deny, "deny *.evil.test", "allow allowed.test", "allow *.allowed.test")

func TestAllowedByNameAndAddress(t *testing.T) {
	checkGoroutines(t)
	w := networktest.New(t)
	sb := newSandbox(t, w, Config{Policy: policyAllowed})

	body, err := get(t, sb, w, "http://allowed.test/")
	if err != nil || !strings.Contains(body, "host=allowed.test") {
		t.Fatalf("by name: %q %v", body, err)
	}
	body, err = get(t, sb, w, "https://api.allowed.test/")
	if err != nil || !strings.Contains(body, "host=api.allowed.test") {
		t.Fatalf("https by name: %q %v", body, err)
	}
	// By address, with no DNS query from the sandbox first (say the name
	// is in its /etc/hosts): the presented name is checked with the
	// resolver.
	sb2 := newSandbox(t, w, Config{Policy: policyAllowed})
	body, err = rawHTTP(sb2, addr(w.Allowed, 80), "allowed.test")
	if err != nil || !strings.Contains(body, "host=allowed.test") {
		t.Fatalf("by address: %q %v", body, err)
	}
	if err := tlsDial(sb2, w, addr(w.Allowed, 443), "api.allowed.test"); err != nil {
		t.Fatalf("TLS by address: %v", err)
	}
	if d := sb2.denials(); len(d) != 0 {
		t.Errorf("denials: %v", d)
	}
	st := sb.link.Stats()
	if st.TCPConns != 2 || st.DNSQueries == 0 || st.BytesDown == 0 || st.BytesUp == 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestDNS(t *testing.T) {
	checkGoroutines(t)
	w := networktest.New(t)
	sb := newSandbox(t, w, Config{Policy: policyAllowed})
	ctx := context.Background()
	r := sb.resolver("10.0.2.2:53")

	ips, err := r.LookupNetIP(ctx, "ip4", "api.allowed.test")
	if err != nil || len(ips) != 1 || ips[0] != w.Allowed {
		t.Fatalf("A: %v %v", ips, err)
	}
	// No IPv6 on this link: AAAA answers nothing, but the name exists.
	if ips, err := r.LookupNetIP(ctx, "ip6", "api.allowed.test"); err == nil || len(ips) != 0 {
		t.Errorf("AAAA without IPv6: %v %v", ips, err)
	}
	if _, err := r.LookupNetIP(ctx, "ip4", "www.evil.test"); !isNotFound(err) {
		t.Errorf("denied name: %v", err)
	}
	if d := lastDenial(t, sb); d.Proto != "dns" || d.Name != "www.evil.test" || d.Reason != ReasonRule {
		t.Errorf("denial %v", d)
	}
	if _, err := r.LookupNetIP(ctx, "ip4", "other.test"); !isNotFound(err) {
		t.Errorf("name no rule allows: %v", err)
	}
	if _, err := r.LookupNetIP(ctx, "ip4", "missing.allowed.test"); !isNotFound(err) {
		t.Errorf("allowed name that does not exist: %v", err)
	}
	// DNS over TCP, and DNS sent to any other server, are answered by msb
	// too: nothing is dialed.
	tcpR := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return sb.dial(ctx, "tcp", "10.0.2.2:53")
	}}
	if ips, err := tcpR.LookupNetIP(ctx, "ip4", "allowed.test"); err != nil || len(ips) != 1 || ips[0] != w.Allowed {
		t.Errorf("over TCP: %v %v", ips, err)
	}
	if ips, err := sb.resolver(addr(w.Plain, 53)).LookupNetIP(ctx, "ip4", "allowed.test"); err != nil || len(ips) != 1 {
		t.Errorf("to another server: %v %v", ips, err)
	}
	if c := sb.dialer.Calls(); len(c) != 0 {
		t.Errorf("DNS dialed: %v", c)
	}
	if got := string(sb.link.ResolvConf()); got != "nameserver 10.0.2.2\noptions timeout:2 attempts:2\n" {
		t.Errorf("resolv.conf %q", got)
	}
	if got, _ := ResolvConf(Config{}); string(got) != string(sb.link.ResolvConf()) {
		t.Errorf("ResolvConf(Config{}) = %q", got)
	}
}

func isNotFound(err error) bool {
	var de *net.DNSError
	return errors.As(err, &de) && de.IsNotFound
}

func TestDeniedHost(t *testing.T) {
	checkGoroutines(t)
	w := networktest.New(t)
	sb := newSandbox(t, w, Config{Policy: policyAllowed})
	for _, addr := range []string{addr(w.Evil, 80), addr(w.Plain, 80)} {
		if body, err := rawHTTP(sb, addr, "x"); err == nil {
			t.Errorf("%s: got %q", addr, body)
		}
	}
	if _, err := get(t, sb, w, "http://evil.test/"); err == nil {
		t.Error("evil.test by name")
	}
	if sb.dialer.DialedTo(w.Evil) || sb.dialer.DialedTo(w.Plain) {
		t.Errorf("dialed: %v", sb.dialer.Calls())
	}
	st := sb.link.Stats()
	if st.Denied < 3 || st.TCPConns != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestDomainBypass: a domain rule cannot be used to reach another address,
// nor another name, by presenting one thing and connecting to another.
func TestDomainBypass(t *testing.T) {
	checkGoroutines(t)
	w := networktest.New(t)
	sb := newSandbox(t, w, Config{Policy: policyAllowed, PeekTimeout: 300 * time.Millisecond})
	ctx := context.Background()
	r := sb.resolver("10.0.2.2:53")
	if _, err := r.LookupNetIP(ctx, "ip4", "cdn.allowed.test"); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name, addr, host string
		reason           Reason
	}{
		{"allowed name, evil address", addr(w.Evil, 80), "allowed.test", ReasonNameMismatch},
		{"allowed address, evil name", addr(w.Allowed, 80), "www.evil.test", ReasonRule},
		{"allowed address, unlisted name", addr(w.Allowed, 80), "other.test", ReasonDefault},
		{"shared address, fronted name", addr(w.Shared, 80), "fronted.evil.test", ReasonRule},
		{"allowed name, unnamed address", addr(w.Plain, 80), "allowed.test", ReasonNameMismatch},
	} {
		sb.dialer.Reset()
		if body, err := rawHTTP(sb, tc.addr, tc.host); err == nil {
			t.Errorf("%s: got %q", tc.name, body)
			continue
		}
		if c := sb.dialer.Calls(); len(c) != 0 {
			t.Errorf("%s: dialed %v", tc.name, c)
		}
		if d := lastDenial(t, sb); d.Reason != tc.reason || d.Name != normName(tc.host) {
			t.Errorf("%s: denial %v", tc.name, d)
		}
	}
	// The same over TLS: the SNI decides.
	for _, tc := range []struct{ name, addr, sni string }{
		{"TLS allowed name, evil address", addr(w.Evil, 443), "api.allowed.test"},
		{"TLS allowed address, evil name", addr(w.Allowed, 443), "www.evil.test"},
	} {
		sb.dialer.Reset()
		if err := tlsDial(sb, w, tc.addr, tc.sni); err == nil {
			t.Errorf("%s: handshake succeeded", tc.name)
		}
		if c := sb.dialer.Calls(); len(c) != 0 {
			t.Errorf("%s: dialed %v", tc.name, c)
		}
	}
	// The shared address is fine under the allowed name.
	if body, err := rawHTTP(sb, addr(w.Shared, 80), "cdn.allowed.test"); err != nil || !strings.Contains(body, "host=cdn.allowed.test") {
		t.Errorf("shared address, allowed name: %q %v", body, err)
	}

	// A keep-alive connection cannot switch hosts after its first request.
	c, err := sb.dial(ctx, "tcp", addr(w.Allowed, 80))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: evil.test\r\n\r\n")
	if resp, err := http.ReadResponse(br, nil); err == nil {
		b, _ := io.ReadAll(resp.Body)
		t.Errorf("second request with another host answered: %q", b)
	}
	if d := lastDenial(t, sb); d.Name != "evil.test" {
		t.Errorf("denial %v", d)
	}

	// A server that speaks first: decided without a name after the peek
	// timeout, by the name the sandbox resolved.
	c2, err := sb.dial(ctx, "tcp", addr(w.Shared, 2222))
	if err != nil {
		t.Fatal(err)
	}
	c2.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c2).ReadString('\n')
	c2.Close()
	if err != nil || !strings.HasPrefix(line, "BANNER") {
		t.Errorf("speaks-first server: %q %v", line, err)
	}
	c3, err := sb.dial(ctx, "tcp", addr(w.Plain, 2222))
	if err == nil {
		c3.SetDeadline(time.Now().Add(5 * time.Second))
		if line, err := bufio.NewReader(c3).ReadString('\n'); err == nil {
			t.Errorf("speaks-first server with no name: %q", line)
		}
		c3.Close()
	}
}

// TestProtected: whatever the policy, private, link-local, loopback and
// the host's own addresses are refused before anything is dialed, unless
// the operator exempted them.
func TestProtected(t *testing.T) {
	checkGoroutines(t)
	w := networktest.New(t)
	allowAll := MustParsePolicy(Allow, "allow 0.0.0.0/0", "allow *.allowed.test")
	sb := newSandbox(t, w, Config{Policy: allowAll})
	ctx := context.Background()
	for _, addr := range []string{
		"127.0.0.1:80", // the sandbox's own loopback: never leaves it
		"10.1.2.3:80", "172.16.5.4:443", "192.168.1.1:80",
		"169.254.169.254:80", "100.64.0.1:80", addr(w.HostAddr, 80), "0.0.0.0:80",
		"10.0.2.15:80", // the sandbox itself, through the gateway
	} {
		ap := netip.MustParseAddrPort(addr)
		before := len(sb.denials())
		c, err := sb.dial(ctx, "tcp", addr)
		if err == nil {
			c.SetDeadline(time.Now().Add(2 * time.Second))
			_, err = c.Read(make([]byte, 1))
			c.Close()
		}
		if err == nil {
			t.Errorf("%s: connected", addr)
		}
		if ap.Addr() == netip.MustParseAddr("10.0.2.15") || ap.Addr().IsUnspecified() || ap.Addr().IsLoopback() {
			continue // the sandbox's own kernel answers these
		}
		if sb.dialer.DialedTo(ap.Addr()) {
			t.Errorf("%s: dialed", addr)
		}
		ds := sb.denials()
		if len(ds) != before+1 || ds[len(ds)-1].Reason != ReasonProtected || ds[len(ds)-1].Dst != ap {
			t.Errorf("%s: denials %v", addr, ds[before:])
		}
	}
	// An allowed name resolving to a private or metadata address gets its
	// answer, but not its connection.
	for _, name := range []string{"private.allowed.test", "meta.allowed.test"} {
		c := sb.httpClient(w)
		if _, err := c.Get("http://" + name + "/"); err == nil {
			t.Errorf("%s: connected", name)
		}
		c.CloseIdleConnections()
		if d := lastDenial(t, sb); d.Reason != ReasonProtected {
			t.Errorf("%s: %v", name, d)
		}
	}
	// UDP too.
	u, err := sb.dial(ctx, "udp", "169.254.169.254:123")
	if err != nil {
		t.Fatal(err)
	}
	before := len(sb.denials())
	u.Write([]byte("x"))
	u.Close()
	if d := denialAfter(t, sb, before); d.Proto != "udp" || d.Reason != ReasonProtected {
		t.Errorf("udp: %v", d)
	}
	if n := len(sb.dialer.Calls()); n != 0 {
		t.Errorf("dialed: %v", sb.dialer.Calls())
	}

	// A rule naming a protected range does not unlock it either.
	if err := sb.link.SetPolicy(MustParsePolicy(Deny, "allow 10.1.2.0/24:80")); err != nil {
		t.Fatal(err)
	}
	before = len(sb.denials())
	if c, err := sb.dial(ctx, "tcp", "10.1.2.3:80"); err == nil {
		c.Close()
	}
	if d := denialAfter(t, sb, before); d.Reason != ReasonProtected || sb.dialer.DialedTo(netip.MustParseAddr("10.1.2.3")) {
		t.Errorf("private address named by a rule: %v, dials %v", d, sb.dialer.Calls())
	}

	// Exempt by the operator, and allowed by a rule, it is dialed (and
	// the test's dialer refuses it, as it refuses anything outside the
	// test's networks); other ports of it stay protected.
	ex := newSandbox(t, w, Config{Policy: MustParsePolicy(Deny, "allow 10.1.2.0/24"), Exempt: []Rule{mustRule(t, "allow tcp 10.1.2.3:80")}})
	if c, err := ex.dial(ctx, "tcp", "10.1.2.3:80"); err == nil {
		c.Close()
	}
	if !ex.dialer.DialedTo(netip.MustParseAddr("10.1.2.3")) {
		t.Error("exempt and allowed private address not dialed")
	}
	ex.dialer.Reset()
	if c, err := ex.dial(ctx, "tcp", "10.1.2.3:81"); err == nil {
		c.Close()
	}
	if d := lastDenial(t, ex); d.Reason != ReasonProtected || len(ex.dialer.Calls()) != 0 {
		t.Errorf("exempt address, other port: %v, dials %v", d, ex.dialer.Calls())
	}
}

func mustRule(t testing.TB, s string) Rule {
	t.Helper()
	r, err := ParseRule(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestPolicyChangeLive(t *testing.T) {
	checkGoroutines(t)
	w := networktest.New(t)
	sb := newSandbox(t, w, Config{Policy: MustParsePolicy(Deny, "allow "+w.Plain.String())})
	ctx := context.Background()

	// A keep-alive connection, open across the change.
	c, err := sb.dial(ctx, "tcp", addr(w.Plain, 80))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	roundTrip := func() error {
		c.SetDeadline(time.Now().Add(3 * time.Second))
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return err
	}
	if err := roundTrip(); err != nil {
		t.Fatal(err)
	}
	if _, err := rawHTTP(sb, addr(w.Allowed, 80), "x"); err == nil {
		t.Fatal("Allowed reachable before the change")
	}

	if err := sb.link.SetPolicy(MustParsePolicy(Deny, "allow "+w.Allowed.String()+"/32")); err != nil {
		t.Fatal(err)
	}
	if _, err := rawHTTP(sb, addr(w.Allowed, 80), "x"); err != nil {
		t.Errorf("Allowed after the change: %v", err)
	}
	if err := roundTrip(); err == nil {
		t.Error("live connection to Plain survived the change")
	}
	if _, err := rawHTTP(sb, addr(w.Plain, 80), "x"); err == nil {
		t.Error("new connection to Plain after the change")
	}
	if got := sb.link.Policy().Rules[0].String(); got != "allow "+w.Allowed.String()+"/32" {
		t.Errorf("Policy() = %q", got)
	}
	if err := sb.link.SetPolicy(Policy{Rules: []Rule{{Domain: "*.*"}}}); err == nil {
		t.Error("bad policy accepted")
	}
}

func TestConnLimit(t *testing.T) {
	checkGoroutines(t)
	w := networktest.New(t)
	sb := newSandbox(t, w, Config{Policy: AllowAll, Limits: Limits{MaxConns: 3}})
	ctx := context.Background()
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	open := func() (net.Conn, error) {
		c, err := sb.dial(ctx, "tcp", addr(w.Plain, 80))
		if err != nil {
			return nil, err
		}
		c.SetDeadline(time.Now().Add(3 * time.Second))
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			c.Close()
			return nil, err
		}
		resp.Body.Close()
		return c, nil
	}
	for i := 0; i < 3; i++ {
		c, err := open()
		if err != nil {
			t.Fatalf("conn %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	if c, err := open(); err == nil {
		c.Close()
		t.Fatal("fourth connection allowed")
	}
	if d := lastDenial(t, sb); d.Reason != ReasonConnLimit {
		t.Errorf("denial %v", d)
	}
	if st := sb.link.Stats(); st.Active != 3 || st.DeniedLimit != 1 {
		t.Errorf("stats %+v", st)
	}
	conns[0].Close()
	conns = conns[1:]
	deadline := time.Now().Add(3 * time.Second)
	for sb.link.Stats().Active > 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	c, err := open()
	if err != nil {
		t.Fatalf("after closing one: %v", err)
	}
	conns = append(conns, c)
}

func TestBandwidth(t *testing.T) {
	checkGoroutines(t)
	w := networktest.New(t)
	const rate = 4 << 20
	sb := newSandbox(t, w, Config{Policy: AllowAll, Limits: Limits{DownBytesPerSec: rate, UpBytesPerSec: rate, Burst: 256 << 10}})
	start := time.Now()
	download(t, sb.dial, addr(w.Plain, 80), 8<<20)
	if d := time.Since(start); d < 1700*time.Millisecond || d > 4*time.Second {
		t.Errorf("8 MiB at 4 MiB/s down took %v", d)
	}
	// Upload: POST 4 MiB.
	c, err := sb.dial(context.Background(), "tcp", addr(w.Plain, 80))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start = time.Now()
	fmt.Fprintf(c, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nConnection: close\r\n\r\n", 4<<20)
	if _, err := c.Write(make([]byte, 4<<20)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if d := time.Since(start); d < 800*time.Millisecond || d > 3*time.Second {
		t.Errorf("4 MiB at 4 MiB/s up took %v", d)
	}
	// Lifting the limit on the live link.
	if err := sb.link.SetLimits(Limits{}); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	download(t, sb.dial, addr(w.Plain, 80), 64<<20)
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("64 MiB unlimited took %v", d)
	}
}

func TestUDP(t *testing.T) {
	checkGoroutines(t)
	w := networktest.New(t)
	sb := newSandbox(t, w, Config{Policy: MustParsePolicy(Deny, "allow udp "+w.Plain.String()+"/32:7"), UDPIdleTimeout: 500 * time.Millisecond})
	ctx := context.Background()
	echo := func(addr string) (string, error) {
		c, err := sb.dial(ctx, "udp", addr)
		if err != nil {
			return "", err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(time.Second))
		if _, err := c.Write([]byte("ping " + addr)); err != nil {
			return "", err
		}
		buf := make([]byte, 100)
		n, err := c.Read(buf)
		return string(buf[:n]), err
	}
	if got, err := echo(addr(w.Plain, 7)); err != nil || got != "ping "+addr(w.Plain, 7) {
		t.Errorf("allowed: %q %v", got, err)
	}
	before := len(sb.denials())
	if got, err := echo(addr(w.Allowed, 7)); err == nil {
		t.Errorf("denied answered %q", got)
	}
	if sb.dialer.DialedTo(w.Allowed) {
		t.Error("denied flow dialed")
	}
	if d := denialAfter(t, sb, before); d.Proto != "udp" || d.Reason != ReasonDefault {
		t.Errorf("denial %v", d)
	}
	// Idle flows end and give their slot back.
	deadline := time.Now().Add(3 * time.Second)
	for sb.link.Stats().Active != 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if st := sb.link.Stats(); st.Active != 0 || st.UDPFlows != 1 {
		t.Errorf("stats %+v", st)
	}
}

func TestIPv6(t *testing.T) {
	checkGoroutines(t)
	w := networktest.New(t)
	sb := newSandbox(t, w, Config{Policy: policyAllowed, IPv6: true})
	ctx := context.Background()
	ips, err := sb.resolver("[fd00:6d73:62::2]:53").LookupNetIP(ctx, "ip6", "api.allowed.test")
	if err != nil || len(ips) != 1 || ips[0] != w.Allowed6 {
		t.Fatalf("AAAA: %v %v", ips, err)
	}
	body, err := rawHTTP(sb, addr(w.Allowed6, 80), "api.allowed.test")
	if err != nil || !strings.Contains(body, "host=api.allowed.test") {
		t.Errorf("over IPv6: %q %v", body, err)
	}
	if _, err := rawHTTP(sb, addr(w.Allowed6, 80), "evil.test"); err == nil {
		t.Error("evil over IPv6")
	}
	if got := string(sb.link.ResolvConf()); !strings.Contains(got, "fd00:6d73:62::2") {
		t.Errorf("resolv.conf %q", got)
	}
}

// TestSpoofedSource: the sandbox can add addresses to its device, but
// traffic from them is dropped.
func TestSpoofedSource(t *testing.T) {
	checkGoroutines(t)
	w := networktest.New(t)
	sb := newSandbox(t, w, Config{Policy: AllowAll})
	must(t, netns.Do(sb.ns, func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		return netlink.AddrAdd(l, &netlink.Addr{IPNet: prefixNet(netip.MustParsePrefix("10.0.2.99/24"))})
	}))
	var err error
	must(t, netns.Do(sb.ns, func() error {
		d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP("10.0.2.99")}}
		var c net.Conn
		c, err = d.Dial("tcp", addr(w.Plain, 80))
		if err == nil {
			c.Close()
		}
		return nil
	}))
	if err == nil {
		t.Error("spoofed source connected")
	}
	if d := lastDenial(t, sb); d.Reason != ReasonSource {
		t.Errorf("denial %v", d)
	}
}

// TestClose: closing the link leaves the sandbox with loopback only,
// resets its connections, and ends every goroutine (checkGoroutines).
func TestClose(t *testing.T) {
	checkGoroutines(t)
	w := networktest.New(t)
	sb := newSandbox(t, w, Config{Policy: AllowAll})
	// A keep-alive connection, idle when the link closes.
	c, err := sb.dial(context.Background(), "tcp", addr(w.Plain, 80))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	br := bufio.NewReader(c)
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()

	var links []string
	listLinks := func() {
		links = nil
		must(t, netns.Do(sb.ns, func() error {
			ls, err := netlink.LinkList()
			for _, l := range ls {
				links = append(links, l.Attrs().Name)
			}
			return err
		}))
		slices.Sort(links)
	}
	listLinks()
	if strings.Join(links, ",") != "eth0,lo" {
		t.Errorf("links before close: %v", links)
	}
	if err := sb.link.Close(); err != nil {
		t.Fatal(err)
	}
	listLinks()
	if strings.Join(links, ",") != "lo" {
		t.Errorf("links after close: %v", links)
	}
	// The sandbox's connection was reset, not left hanging.
	start := time.Now()
	if _, err := br.ReadByte(); err == nil || isTimeout(err) {
		t.Errorf("read after close: %v after %v", err, time.Since(start))
	}
	if err := sb.link.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}
}

// TestCloseWhilePeeking: closing does not wait for connections still
// deciding (here, one waiting for a name that a server-speaks-first
// protocol never presents).
func TestCloseWhilePeeking(t *testing.T) {
	checkGoroutines(t)
	w := networktest.New(t)
	sb := newSandbox(t, w, Config{Policy: policyAllowed, PeekTimeout: time.Minute})
	c, err := sb.dial(context.Background(), "tcp", addr(w.Allowed, 2222))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	if err := sb.link.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Close took %v", d)
	}
}

// TestPortReuse: a sandbox may reuse a local port at once when its peer
// closed first (its side keeps no TIME-WAIT). The netstack, whose side
// then did the active close, must not hold the old connection in
// TIME-WAIT: gVisor hands a new SYN for a TIME-WAIT connection only to a
// listener, which a forwarder is not, so the new connection would hang
// for the whole TIME-WAIT.
func TestPortReuse(t *testing.T) {
	checkGoroutines(t)
	w := networktest.New(t)
	sb := newSandbox(t, w, Config{Policy: AllowAll})
	reuse := func(network, address string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) {
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
		})
	}
	for i := 0; i < 3; i++ {
		time.Sleep(100 * time.Millisecond) // for the last close to complete
		start := time.Now()
		var body string
		err := netns.Do(sb.ns, func() error {
			d := net.Dialer{Timeout: 3 * time.Second, LocalAddr: &net.TCPAddr{Port: 40123}, Control: reuse}
			c, err := d.Dial("tcp", addr(w.Plain, 80))
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(3 * time.Second))
			fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
			b, err := io.ReadAll(c) // to the server's FIN
			body = string(b)
			return err
		})
		if err != nil || !strings.Contains(body, "200 OK") {
			t.Fatalf("connection %d from the same port: %q %v", i, body, err)
		}
		if d := time.Since(start); d > 900*time.Millisecond {
			t.Errorf("connection %d took %v", i, d)
		}
	}
}

// TestAttachErrors: a bad configuration, or a namespace that already has
// the device, fail cleanly.
func TestAttachErrors(t *testing.T) {
	checkGoroutines(t)
	w := networktest.New(t)
	sb := newSandbox(t, w, Config{Policy: AllowAll})
	if l, err := Attach(context.Background(), sb.ns, Config{}); err == nil {
		l.Close()
		t.Error("second link on the same namespace")
	}
	if _, err := Attach(context.Background(), sb.ns, Config{Device: "eth1", Policy: Policy{Rules: []Rule{{Domain: "a..b"}}}}); err == nil {
		t.Error("bad policy accepted")
	}
	if _, err := Attach(context.Background(), sb.ns, Config{Device: "eth1", Addr: netip.MustParsePrefix("10.0.2.15/24"), Gateway: netip.MustParseAddr("10.9.9.9")}); err == nil {
		t.Error("gateway outside the subnet accepted")
	}
	// The first link still works.
	if _, err := rawHTTP(sb, addr(w.Plain, 80), "x"); err != nil {
		t.Errorf("first link after failed attaches: %v", err)
	}
}
