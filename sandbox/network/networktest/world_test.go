package networktest_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/msb-dev/msb/sandbox/network/networktest"
)

// Two worlds at once get addresses of their own, and each one's DNS
// server answers its own zone, over UDP and TCP, from the test's
// namespace.
func TestWorlds(t *testing.T) {
	t.Parallel()
	a, b := networktest.New(t), networktest.New(t)
	if a.Allowed == b.Allowed || a.HostIf == b.HostIf || a.Contains(b.Allowed) {
		t.Fatalf("worlds share addresses: %v %v", a.Nets, b.Nets)
	}
	for _, w := range []*networktest.World{a, b} {
		for _, network := range []string{"udp", "tcp"} {
			r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
				d := net.Dialer{Control: networktest.BindTo(w.HostIf)}
				return d.DialContext(ctx, network, w.DNS().String())
			}}
			ips, err := r.LookupNetIP(context.Background(), "ip4", "allowed.test")
			if err != nil || !slices.Equal(ips, []netip.Addr{w.Allowed}) {
				t.Errorf("%s over %s: %v %v", w.HostIf, network, ips, err)
			}
			var de *net.DNSError
			if _, err := r.LookupNetIP(context.Background(), "ip4", "nosuch.test"); !errors.As(err, &de) || !de.IsNotFound {
				t.Errorf("%s over %s: unknown name: %v", w.HostIf, network, err)
			}
		}
		if !w.Contains(w.Allowed6) || !w.Contains(w.WorldAddr) || w.Contains(netip.MustParseAddr("192.0.2.2")) {
			t.Errorf("Contains: %v", w.Nets)
		}
	}
}
