// Package networktest builds the outside world a sandbox network test
// talks to, entirely on this machine: a network namespace made by the
// test, joined to the test process's namespace by a veth pair, with HTTP,
// HTTPS, a speak-first banner, UDP echo and a DNS server of its own, on
// documentation addresses. Nothing a test does through it can leave the
// machine: the world's namespace has no route out, and its Dialer binds
// every socket to the test's veth and refuses any address outside the
// world.
//
//	test's netns                          world netns (made by the test)
//	  veth HostAddr 198.51.100.8s+1/29 <->  WorldAddr 198.51.100.8s+2/29 (DNS on :53)
//	  2001:db8:51:s::1/64                   2001:db8:51:s::2/64
//	  route 203.0.113.8s/29 via WorldAddr   lo: Allowed, Evil, Shared, Plain
//	  route 2001:db8:113:s::/64             lo: Allowed6
//
// s is a slot, taken with a lock file for the world's life, so that
// worlds of tests running at once (in one process or several) never share
// an address or a route. The servers' names are in Zone (names under
// .test, which no real resolver answers): the world's DNS server answers
// them, and Resolver answers them without DNS.
package networktest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/sandbox/network/netns"
)

// World is the outside world of one test.
type World struct {
	// NS is the world's network namespace.
	NS *os.File
	// HostIf is the name of the veth's end in the test's namespace.
	HostIf string
	// HostAddr and WorldAddr are the two ends of the veth; Host6 and
	// World6 the same in IPv6. The world's DNS server listens on
	// WorldAddr:53.
	HostAddr, WorldAddr, Host6, World6 netip.Addr
	// The servers' addresses: Allowed is allowed.test and api.allowed.test,
	// Evil is evil.test, Shared is both cdn.allowed.test and
	// fronted.evil.test (a CDN), Plain has no name. Allowed6 is the IPv6
	// address of api.allowed.test.
	Allowed, Evil, Shared, Plain, Allowed6 netip.Addr
	// Nets are the world's networks: the veth's and the servers'.
	Nets []netip.Prefix
	// Zone is what the world's names resolve to. Two names resolve to
	// protected addresses: private.allowed.test to 10.1.2.3 and
	// meta.allowed.test to 169.254.169.254.
	Zone map[string][]netip.Addr
	// Certs trusts the HTTPS server's certificate (for every name of the
	// zone); CertPEM is the same certificate in PEM.
	Certs   *x509.CertPool
	CertPEM []byte

	slot    *os.File
	closers []io.Closer
	wg      sync.WaitGroup
}

// The address slots: 198.51.100.0/24 and 203.0.113.0/24 in /29s, from
// firstSlot on (the lower ones stay free for other tools' tests, which
// use 198.51.100.1/24 and 203.0.113.10-.40; 192.0.2.0/24 is left alone:
// a machine's own network may use it).
const (
	firstSlot = 8
	slots     = 32
)

// New builds a world; it is torn down when the test ends. It needs root
// and /dev/net/tun; without them the test fails (these tests are meant to
// run as root).
func New(t testing.TB) *World {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("networktest: needs root (network namespaces, veth, tun)")
	}
	w := &World{}
	t.Cleanup(w.close)
	slot := w.takeSlot(t)
	v4 := func(net string, n int) netip.Addr {
		return netip.MustParseAddr(fmt.Sprintf("%s.%d", net, 8*slot+n))
	}
	w.HostAddr, w.WorldAddr = v4("198.51.100", 1), v4("198.51.100", 2)
	w.Allowed, w.Evil, w.Shared, w.Plain = v4("203.0.113", 1), v4("203.0.113", 2), v4("203.0.113", 3), v4("203.0.113", 4)
	w.Host6 = netip.MustParseAddr(fmt.Sprintf("2001:db8:51:%x::1", slot))
	w.World6 = netip.MustParseAddr(fmt.Sprintf("2001:db8:51:%x::2", slot))
	w.Allowed6 = netip.MustParseAddr(fmt.Sprintf("2001:db8:113:%x::10", slot))
	servers := netip.PrefixFrom(w.Allowed, 29).Masked()
	servers6 := netip.PrefixFrom(w.Allowed6, 64).Masked()
	w.Nets = []netip.Prefix{netip.PrefixFrom(w.HostAddr, 29).Masked(), servers, netip.PrefixFrom(w.Host6, 64).Masked(), servers6}
	w.Zone = map[string][]netip.Addr{
		"allowed.test":         {w.Allowed},
		"api.allowed.test":     {w.Allowed, w.Allowed6},
		"cdn.allowed.test":     {w.Shared},
		"evil.test":            {w.Evil},
		"fronted.evil.test":    {w.Shared},
		"private.allowed.test": {netip.MustParseAddr("10.1.2.3")},
		"meta.allowed.test":    {netip.MustParseAddr("169.254.169.254")},
	}

	ns, err := netns.New()
	if err != nil {
		t.Fatalf("networktest: %v", err)
	}
	w.NS = ns
	// Unique in this machine while the slot is held; short enough for
	// IFNAMSIZ.
	w.HostIf = fmt.Sprintf("msbw%dh", slot)
	peerIf := fmt.Sprintf("msbw%dw", slot)
	if old, err := netlink.LinkByName(w.HostIf); err == nil {
		netlink.LinkDel(old) // left by a test process that was killed
	}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: w.HostIf, MTU: 65520}, PeerName: peerIf, PeerNamespace: netlink.NsFd(int(ns.Fd()))}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatalf("networktest: veth: %v", err)
	}
	hl, err := netlink.LinkByName(w.HostIf)
	if err != nil {
		t.Fatal(err)
	}
	must(t, netlink.AddrAdd(hl, &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(w.HostAddr, 29))}))
	must(t, netlink.AddrAdd(hl, &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(w.Host6, 64)), Flags: unix.IFA_F_NODAD}))
	must(t, noDAD(w.HostIf))
	must(t, netlink.LinkSetUp(hl))
	must(t, netlink.RouteAdd(&netlink.Route{LinkIndex: hl.Attrs().Index, Dst: prefixNet(servers), Gw: w.WorldAddr.AsSlice()}))
	must(t, netlink.RouteAdd(&netlink.Route{LinkIndex: hl.Attrs().Index, Dst: prefixNet(servers6), Gw: w.World6.AsSlice()}))

	var peerMAC net.HardwareAddr
	must(t, netns.Do(ns, func() error {
		h, err := netlink.NewHandle()
		if err != nil {
			return err
		}
		defer h.Close()
		lo, err := h.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := h.LinkSetUp(lo); err != nil {
			return err
		}
		for _, a := range []netip.Addr{w.Allowed, w.Evil, w.Shared, w.Plain, w.Allowed6} {
			if err := h.AddrAdd(lo, &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(a, a.BitLen())), Flags: unix.IFA_F_NODAD}); err != nil {
				return err
			}
		}
		pl, err := h.LinkByName(peerIf)
		if err != nil {
			return err
		}
		if err := noDAD(peerIf); err != nil {
			return err
		}
		// Static neighbours both ways: no ARP or neighbour discovery
		// to lose while the veth comes up (a lost one is retried only
		// after a second).
		for _, a := range []netip.Addr{w.HostAddr, w.Host6} {
			if err := h.NeighSet(&netlink.Neigh{LinkIndex: pl.Attrs().Index, IP: a.AsSlice(), HardwareAddr: hl.Attrs().HardwareAddr, State: netlink.NUD_PERMANENT}); err != nil {
				return err
			}
		}
		peerMAC = pl.Attrs().HardwareAddr
		if err := h.AddrAdd(pl, &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(w.WorldAddr, 29))}); err != nil {
			return err
		}
		if err := h.AddrAdd(pl, &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(w.World6, 64)), Flags: unix.IFA_F_NODAD}); err != nil {
			return err
		}
		// No default route: nothing from here goes anywhere but back.
		return h.LinkSetUp(pl)
	}))
	for _, a := range []netip.Addr{w.WorldAddr, w.World6} {
		must(t, netlink.NeighSet(&netlink.Neigh{LinkIndex: hl.Attrs().Index, IP: a.AsSlice(), HardwareAddr: peerMAC, State: netlink.NUD_PERMANENT}))
	}
	w.startServers(t)
	// Wait until the world answers (the veth has carrier, neighbours are
	// resolved), so that no test's first packet is lost.
	deadline := time.Now().Add(5 * time.Second)
	for {
		// Short attempts: a SYN lost while the veth comes up would
		// otherwise be retransmitted only after a second.
		d := net.Dialer{Timeout: 50 * time.Millisecond, Control: BindTo(w.HostIf)}
		c, err := d.Dial("tcp", netip.AddrPortFrom(w.Plain, 80).String())
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("networktest: world unreachable: %v", err)
		}
	}
	return w
}

// takeSlot locks a free slot for the world's life: a lock file per slot
// in the temporary directory, held with flock (released by the kernel if
// the process dies).
func (w *World) takeSlot(t testing.TB) int {
	t.Helper()
	for s := firstSlot; s < slots; s++ {
		f, err := os.OpenFile(filepath.Join(os.TempDir(), fmt.Sprintf("msb-networktest-%d.lock", s)), os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			t.Fatalf("networktest: slot lock: %v", err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			continue
		}
		w.slot = f
		return s
	}
	t.Fatalf("networktest: all %d world slots are in use", slots-firstSlot)
	return 0
}

func (w *World) close() {
	for i := len(w.closers) - 1; i >= 0; i-- {
		w.closers[i].Close()
	}
	w.wg.Wait()
	if w.HostIf != "" {
		if l, err := netlink.LinkByName(w.HostIf); err == nil {
			netlink.LinkDel(l) // takes the peer and the routes with it
		}
	}
	if w.NS != nil {
		w.NS.Close()
	}
	if w.slot != nil {
		w.slot.Close() // after the veth is gone: the next holder reuses its name
	}
}

// Contains reports whether a is in one of the world's networks.
func (w *World) Contains(a netip.Addr) bool {
	for _, p := range w.Nets {
		if p.Contains(a.Unmap()) {
			return true
		}
	}
	return false
}

// DNS is the address of the world's DNS server.
func (w *World) DNS() netip.AddrPort { return netip.AddrPortFrom(w.WorldAddr, 53) }

// Listen listens inside the world; the listener is closed with it.
func (w *World) Listen(t testing.TB, network, addr string) (ln net.Listener, pc net.PacketConn) {
	t.Helper()
	must(t, netns.Do(w.NS, func() (err error) {
		if strings.HasPrefix(network, "udp") {
			pc, err = net.ListenPacket(network, addr)
			return err
		}
		ln, err = net.Listen(network, addr)
		return err
	}))
	if ln != nil {
		w.closers = append(w.closers, ln)
	} else {
		w.closers = append(w.closers, pc)
	}
	return ln, pc
}

// Serve runs f on a goroutine that the world's teardown waits for.
func (w *World) Serve(f func()) {
	w.wg.Add(1)
	go func() { defer w.wg.Done(); f() }()
}

// startServers starts HTTP on :80 (/ answers "host=H local=ADDR", /bytes?n=N
// sends N bytes, /upload reads the body), HTTPS on :443, a banner on :2222
// (the server speaks first, as SSH and SMTP do), UDP echo on :7 and DNS on
// WorldAddr:53.
func (w *World) startServers(t testing.TB) {
	cert := w.selfSigned(t)
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(rw http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(rw, "host=%s local=%s\n", r.Host, r.Context().Value(http.LocalAddrContextKey))
	})
	mux.HandleFunc("/upload", func(rw http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		fmt.Fprintf(rw, "read %d %v\n", n, err)
	})
	mux.HandleFunc("/bytes", func(rw http.ResponseWriter, r *http.Request) {
		n, _ := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		rw.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		buf := make([]byte, 1<<20)
		for n > 0 {
			m := min(n, int64(len(buf)))
			if _, err := rw.Write(buf[:m]); err != nil {
				return
			}
			n -= m
		}
	})
	for _, port := range []string{"80", "443"} {
		ln, _ := w.Listen(t, "tcp", ":"+port)
		srv := &http.Server{Handler: mux, ErrorLog: log.New(io.Discard, "", 0)}
		if port == "443" {
			ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}})
		}
		w.closers = append(w.closers, srv)
		w.Serve(func() { srv.Serve(ln) })
	}
	ln, _ := w.Listen(t, "tcp", ":2222")
	w.Serve(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("BANNER " + c.LocalAddr().String() + "\n"))
			c.Close()
		}
	})
	// UDP echo, one socket per address so that replies come from the
	// address the request went to.
	for _, a := range []netip.Addr{w.Allowed, w.Plain, w.Allowed6} {
		_, pc := w.Listen(t, "udp", netip.AddrPortFrom(a, 7).String())
		w.Serve(func() {
			buf := make([]byte, 65535)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				pc.WriteTo(buf[:n], from)
			}
		})
	}
	w.serveDNS(t)
}

// selfSigned makes the HTTPS server's certificate, for every name of the
// zone and its addresses.
func (w *World) selfSigned(t testing.TB) tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "msb test world"},
		DNSNames:              []string{"*.test", "*.allowed.test", "*.evil.test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	w.Certs = x509.NewCertPool()
	w.Certs.AddCert(c)
	w.CertPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// Dialer is a dialer for a sandbox network in tests: it records every
// dial, binds every socket to the world's veth and refuses anything
// outside the world's networks, so that even a wrongly allowed
// connection cannot leave the machine.
type Dialer struct {
	w     *World
	mu    sync.Mutex
	dials []string
}

// Dialer returns a new Dialer into w.
func (w *World) Dialer() *Dialer { return &Dialer{w: w} }

// DialContext dials address, an IP address and port, if it is in the
// world.
func (d *Dialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	d.mu.Lock()
	d.dials = append(d.dials, network+" "+address)
	d.mu.Unlock()
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return nil, fmt.Errorf("test dialer: %q is not an address: %w", address, err)
	}
	if !d.w.Contains(ap.Addr()) {
		return nil, fmt.Errorf("test dialer: %s is outside the test's networks", ap)
	}
	nd := net.Dialer{Control: BindTo(d.w.HostIf)}
	return nd.DialContext(ctx, network, address)
}

// Calls lists the dials made, as "network address".
func (d *Dialer) Calls() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.dials...)
}

// Reset forgets the dials made.
func (d *Dialer) Reset() {
	d.mu.Lock()
	d.dials = nil
	d.mu.Unlock()
}

// DialedTo reports whether a dial to addr was made.
func (d *Dialer) DialedTo(addr netip.Addr) bool {
	for _, c := range d.Calls() {
		_, a, _ := strings.Cut(c, " ")
		if ap, err := netip.ParseAddrPort(a); err == nil && ap.Addr() == addr {
			return true
		}
	}
	return false
}

// Resolver answers the world's zone without DNS, and records what it was
// asked. Its LookupNetIP has the signature of net.Resolver's.
type Resolver struct {
	w     *World
	mu    sync.Mutex
	calls []string
}

// Resolver returns a new Resolver of w's zone.
func (w *World) Resolver() *Resolver { return &Resolver{w: w} }

// LookupNetIP looks host up in the zone; network is "ip4", "ip6" or "ip".
func (r *Resolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	r.mu.Lock()
	r.calls = append(r.calls, network+" "+host)
	r.mu.Unlock()
	out := r.w.lookup(network, host)
	if len(out) == 0 {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	return out, nil
}

// Calls lists the lookups made, as "network host".
func (r *Resolver) Calls() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.calls...)
}

func (w *World) lookup(network, host string) []netip.Addr {
	var out []netip.Addr
	for _, a := range w.Zone[strings.TrimSuffix(strings.ToLower(host), ".")] {
		if (network == "ip4" && a.Is4()) || (network == "ip6" && a.Is6()) || network == "ip" {
			out = append(out, a)
		}
	}
	return out
}

// BindTo is a net.Dialer Control binding the socket to device dev.
func BindTo(dev string) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptString(int(fd), unix.SOL_SOCKET, unix.SO_BINDTODEVICE, dev)
		})
		if err != nil {
			return err
		}
		return serr
	}
}

// noDAD turns duplicate address detection off on device dev of the
// calling thread's namespace, before it is up: its addresses are then
// usable at once, and neighbour discovery does not wait a second.
func noDAD(dev string) error {
	return os.WriteFile("/proc/sys/net/ipv6/conf/"+dev+"/accept_dad", []byte("0"), 0o644)
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("networktest: %v", err)
	}
}
