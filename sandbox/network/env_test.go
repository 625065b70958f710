package network

// The tests' sandboxes. The outside world is networktest's: a namespace
// made by the test behind a veth, with documentation addresses, servers
// and names of its own (see networktest for the picture). A sandbox here
// is another namespace made by the test, given a link by the code under
// test:
//
//	sandbox netns: eth0 (tun) 10.0.2.15/24, default via 10.0.2.2 = the netstack
//
// The link's dialer is the world's (bound to the veth, refusing anything
// outside the world) and its resolver answers the world's zone without
// DNS, so no test can send a packet off this machine.

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/msb-dev/msb/sandbox/network/netns"
	"github.com/msb-dev/msb/sandbox/network/networktest"
)

// sandbox is a test sandbox: a netns with a link attached.
type sandbox struct {
	ns     *os.File
	link   *Link
	dialer *networktest.Dialer
	res    *networktest.Resolver

	mu     sync.Mutex
	denied []Denial
}

func newSandbox(t testing.TB, w *networktest.World, cfg Config) *sandbox {
	t.Helper()
	ns, err := netns.New()
	if err != nil {
		t.Fatal(err)
	}
	sb := &sandbox{ns: ns, dialer: w.Dialer(), res: w.Resolver()}
	if cfg.Dialer == nil {
		cfg.Dialer = sb.dialer
	}
	if cfg.Resolver == nil {
		cfg.Resolver = sb.res
	}
	if cfg.OnDeny == nil {
		cfg.OnDeny = func(d Denial) {
			sb.mu.Lock()
			sb.denied = append(sb.denied, d)
			sb.mu.Unlock()
		}
	}
	if cfg.HostAddrs == nil {
		cfg.HostAddrs = func() []netip.Addr { return []netip.Addr{w.HostAddr, w.Host6} }
	}
	l, err := Attach(context.Background(), ns, cfg)
	if err != nil {
		ns.Close()
		t.Fatal(err)
	}
	sb.link = l
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("closing link: %v", err)
		}
		ns.Close()
	})
	return sb
}

func (sb *sandbox) denials() []Denial {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	return append([]Denial(nil), sb.denied...)
}

// dial connects from inside the sandbox, as a process there would.
func (sb *sandbox) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := netns.Do(sb.ns, func() (err error) {
		d := net.Dialer{Timeout: 5 * time.Second}
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// resolver is a Go resolver that asks the sandbox's DNS server (the
// gateway), from inside the sandbox.
func (sb *sandbox) resolver(server string) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return sb.dial(ctx, network, server)
	}}
}

// dialName resolves host through the sandbox's DNS, then dials.
func (sb *sandbox) dialName(ctx context.Context, network, hostport string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return nil, err
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return sb.dial(ctx, network, hostport)
	}
	ips, err := sb.resolver("10.0.2.2:53").LookupNetIP(ctx, "ip4", host)
	if err != nil {
		return nil, err
	}
	return sb.dial(ctx, network, net.JoinHostPort(ips[0].String(), port))
}

// httpClient makes requests from inside the sandbox, trusting the world's
// certificate.
func (sb *sandbox) httpClient(w *networktest.World) *http.Client {
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			DialContext:       sb.dialName,
			DisableKeepAlives: true,
			TLSClientConfig:   &tls.Config{RootCAs: w.Certs},
		},
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// checkGoroutines fails t if goroutines started during the test outlive
// its cleanups.
func checkGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for {
			n := runtime.NumGoroutine()
			if n <= before {
				return
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Errorf("%d goroutines leaked:\n%s", n-before, buf)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

func bufioReader(r io.Reader) *bufio.Reader { return bufio.NewReaderSize(r, 64<<10) }

// addr is ip:port.
func addr(ip netip.Addr, port uint16) string { return netip.AddrPortFrom(ip, port).String() }
