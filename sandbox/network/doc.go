// Package network gives a sandbox outbound network through the server
// process, under a policy.
//
// A sandbox's network namespace gets one device besides loopback: a TUN
// device, eth0, whose other end is a file descriptor held by the server.
// On that descriptor runs a gVisor netstack (gvisor.dev/gvisor/pkg/tcpip)
// in the server's own process. The sandbox's default route points at the
// netstack's address (the gateway, 10.0.2.2 by default), which is also its
// DNS server. The netstack accepts every connection and datagram the
// sandbox sends, whatever the destination, and hands it to this package,
// which decides it by policy; only an allowed destination is then dialed,
// from the server's namespace, with the configured Dialer, and the bytes
// copied both ways. The sandbox never gets a route to the host's
// interfaces or to other sandboxes: it has nothing but the device to the
// netstack.
//
// # Policy
//
// A Policy is an ordered list of allow and deny rules by CIDR, domain
// ("pypi.org", "*.pypi.org"), port and protocol; the first match decides,
// Default decides the rest. Domain rules are enforced on two things:
//
//   - DNS. The link answers the sandbox's DNS (UDP and TCP port 53, at the
//     gateway or at any address the sandbox asks), resolving with the
//     configured Resolver. Names no rule would allow get NXDOMAIN. The
//     addresses each answered name resolved to are remembered for this
//     sandbox, so that a connection to one of them matches the domain
//     rules of the name.
//   - The name a connection presents: the SNI of a TLS ClientHello and
//     the Host of every HTTP/1 request. A presented name must itself be
//     allowed, and must resolve to the address the connection goes to, so
//     neither dialing an address directly nor presenting another name
//     than the address's gets past a domain rule.
//
// Loopback, link-local (169.254.169.254), RFC 1918, unique local, CGNAT,
// multicast and other special ranges, the host's own addresses, and the
// ranges in Config.Protected are refused before anything is dialed,
// whatever the rules say; only the operator's Config.Exempt opens some of
// them. Link.SetPolicy swaps the policy atomically, and resets live
// connections the new one refuses. Every refusal is counted (Link.Stats)
// and reported to Config.OnDeny.
//
// Within tells whether a rule stays inside a ceiling of allowed
// destinations: how msb keeps a sandbox's rules within what the operator
// lets its namespace reach.
//
// # Using it
//
//	link, err := network.AttachPID(ctx, initPid, network.Config{
//		Policy:   network.MustParsePolicy(network.Deny, "allow *.pypi.org:443", "allow files.pythonhosted.org:443"),
//		Limits:   network.Limits{MaxConns: 256, DownBytesPerSec: 50 << 20},
//		OnDeny:   audit,
//	})
//	...
//	link.SetPolicy(p) // on a running sandbox
//	link.Stats()
//	link.Close()      // when the sandbox stops
//
// The sandbox's /etc/resolv.conf should be Link.ResolvConf() (DNS is
// answered at any address, so any name server line reaches the link).
//
// Attach must run as root (CAP_NET_ADMIN and CAP_SYS_ADMIN): it joins the
// sandbox's namespace on a locked OS thread to create and configure the
// device, and comes back.
package network
