package image

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/msb-dev/msb/errdefs"
)

// DefaultRegistries are the registries images may come from unless the
// operator lists others: the public ones.
var DefaultRegistries = []string{
	"docker.io", "index.docker.io", "registry-1.docker.io", "ghcr.io", "quay.io", "gcr.io", "*.gcr.io", "*.pkg.dev",
	"registry.k8s.io", "public.ecr.aws", "mcr.microsoft.com", "registry.gitlab.com",
}

// Registries says which registries a pull may talk to, and checks every
// connection a pull makes, redirects included, on the address it actually
// dials (after DNS): a pull is a request the server makes on a tenant's
// behalf, so without this a tenant could aim it at the server's own
// loopback services or a private network (SSRF).
//
// Entries are "host", "host:port" or "*.domain". A registry must match an
// entry. Loopback, private, link-local, CGNAT, unspecified and multicast
// addresses, and the server's own, are refused unless the host dialled is
// listed explicitly (not by a wildcard): an operator who lists
// "127.0.0.1:5000" or "registry.internal" trusts that address.
type Registries struct {
	exact     map[string]bool // hosts and host:ports
	wildcards []string        // ".domain" suffixes
}

// NewRegistries parses the entries of config.toml's registries (nil: the
// DefaultRegistries). Errors are of class Invalid.
func NewRegistries(entries []string) (Registries, error) {
	if entries == nil {
		entries = DefaultRegistries
	}
	r := Registries{exact: map[string]bool{}}
	for _, e := range entries {
		e = strings.ToLower(strings.TrimSpace(e))
		switch {
		case strings.HasPrefix(e, "*.") && len(e) > 2 && !strings.ContainsAny(e[2:], "*:/ "):
			r.wildcards = append(r.wildcards, e[1:])
		case e != "" && !strings.ContainsAny(e, "*/ @"):
			r.exact[e] = true
		default:
			return Registries{}, errdefs.Invalidf("registries: %q is not a registry: use host, host:port or *.domain", e)
		}
	}
	return r, nil
}

// listed reports whether host (a host or host:port) is listed explicitly.
func (r Registries) listed(hostport string) bool {
	hostport = strings.ToLower(hostport)
	if r.exact[hostport] {
		return true
	}
	h, _, err := net.SplitHostPort(hostport)
	return err == nil && r.exact[strings.Trim(h, "[]")]
}

// Allowed returns nil when images may be pulled from registry (a host or
// host:port, as in an image reference), and otherwise an error of class
// Invalid saying how to allow it.
func (r Registries) Allowed(registry string) error {
	if r.listed(registry) {
		return nil
	}
	host := strings.ToLower(registry)
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	for _, w := range r.wildcards {
		if strings.HasSuffix(host, w) {
			return nil
		}
	}
	return errdefs.Invalidf("images may not be pulled from registry %q on this server: an operator can allow it by adding it to registries in config.toml", registry)
}

// special reports why ip may not be dialled unless listed, or "".
func special(ip netip.Addr, own map[netip.Addr]bool) string {
	ip = ip.Unmap()
	switch {
	case ip.IsLoopback():
		return "a loopback address"
	case ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast():
		return "a link-local address"
	case ip.IsPrivate():
		return "a private address"
	case ip.IsUnspecified(), ip.IsMulticast(), ip.IsInterfaceLocalMulticast():
		return "not an address of another host"
	case netip.MustParsePrefix("100.64.0.0/10").Contains(ip):
		return "a carrier-grade NAT address"
	case own[ip]:
		return "an address of this server"
	}
	return ""
}

// ownAddresses lists the addresses of this machine's interfaces.
func ownAddresses() map[netip.Addr]bool {
	own := map[netip.Addr]bool{}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return own
	}
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			own[p.Addr().Unmap()] = true
		}
	}
	return own
}

// DialContext dials addr (host:port) for a pull, refusing addresses a
// registry that is not listed may not have (see Registries). Each address
// DNS gives is checked, and the connection goes to the address checked.
func (r Registries) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	var ips []netip.Addr
	if ip, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		ips = []netip.Addr{ip}
	} else {
		found, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		if err != nil {
			return nil, err
		}
		ips = found
	}
	trusted := r.listed(addr) || r.listed(host)
	own := ownAddresses()
	d := net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
	var last error
	for _, ip := range ips {
		ip = ip.Unmap()
		if why := special(ip, own); why != "" && !trusted {
			last = errdefs.Invalidf("image pull refused: %s resolves to %s, %s; an operator can allow it by listing %q in registries in config.toml", host, ip, why, addr)
			continue
		}
		c, err := d.DialContext(ctx, network, net.JoinHostPort(ip.String(), port))
		if err == nil {
			return c, nil
		}
		last = err
	}
	if last == nil {
		last = fmt.Errorf("%s: no address", host)
	}
	return nil, last
}

// Transport is an HTTP transport whose every connection goes through
// DialContext.
func (r Registries) Transport() http.RoundTripper {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.Proxy = nil // a proxy would dial on the pull's behalf, unchecked
	t.DialContext = r.DialContext
	return t
}
