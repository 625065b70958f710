package server

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/auth/audit"
	"github.com/msb-dev/msb/config"
	"github.com/msb-dev/msb/sandbox"
	"github.com/msb-dev/msb/sandbox/network"
)

// networkBounds maps config.toml's network settings of a namespace onto
// the sandbox service's.
func networkBounds(n config.Network, ns string) sandbox.NetworkBounds {
	b := n.Of(ns)
	return sandbox.NetworkBounds{Permitted: b.Permitted, DefaultOn: b.DefaultEnabled, Allow: b.Allow, DefaultAllow: b.DefaultAllow,
		Deny: b.Deny, Exempt: b.Exempt, MaxConnections: b.MaxConnections, MaxBandwidth: b.MaxBandwidth}
}

// checkNetwork checks the rules of [network] and of every
// [network.namespaces.NAME].
func checkNetwork(n config.Network) error {
	if err := networkBounds(n, "").Check("network"); err != nil {
		return fmt.Errorf("config.toml: %w", err)
	}
	for ns := range n.Namespaces {
		if err := networkBounds(n, ns).Check("network.namespaces." + ns); err != nil {
			return fmt.Errorf("config.toml: %w", err)
		}
	}
	return nil
}

// netDialer dials for sandboxes: from the server's own network namespace,
// out of the configured interface when there is one.
func netDialer(n config.Network) network.Dialer {
	d := &net.Dialer{}
	if n.Interface != "" {
		dev := n.Interface
		d.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptString(int(fd), unix.SOL_SOCKET, unix.SO_BINDTODEVICE, dev)
			}); err != nil {
				return err
			}
			if serr != nil {
				return fmt.Errorf("bind to network.interface %q: %w", dev, serr)
			}
			return nil
		}
	}
	return d
}

// netResolver resolves for sandboxes: with the configured DNS servers
// (each query to the next one), else with the host's resolver.
func netResolver(n config.Network) network.Resolver {
	servers := n.DNSServers()
	if len(servers) == 0 {
		return net.DefaultResolver
	}
	var next atomic.Uint64
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, proto, _ string) (net.Conn, error) {
		s := servers[int(next.Add(1)-1)%len(servers)]
		var d net.Dialer
		return d.DialContext(ctx, proto, s.String())
	}}
}

// denialSink records sandboxes' refused network attempts in the audit log
// (when there is one: not in development mode) and the server's log. The
// sandbox service reports at most one a second per sandbox.
func denialSink(w *audit.Writer, log *slog.Logger) func(sandbox.NetworkDenial) {
	return func(d sandbox.NetworkDenial) {
		detail := sandbox.DescribeDenial(d)
		log.Info("sandbox network refused", "sandbox", d.ID.String(), "detail", detail)
		if w == nil {
			return
		}
		// No key did this: the sandbox did. Its namespace stands for the
		// key's, so that the namespace's keys see it in audit.list.
		w.Record(audit.Event{Time: d.Time, KeyNamespace: d.ID.Namespace(), Namespace: d.ID.Namespace(), Sandbox: d.ID.Name(),
			Method: audit.MethodNetwork, Outcome: audit.Refused, Detail: detail})
	}
}
