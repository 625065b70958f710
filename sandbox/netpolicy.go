package sandbox

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox/network"
)

// NetworkMode says whether a sandbox has outbound network.
type NetworkMode string

// The network modes of a config.
const (
	// NetworkDefault leaves it to the operator's setting for the
	// sandbox's namespace (NetworkBounds.DefaultOn): none unless the
	// operator changed it.
	NetworkDefault NetworkMode = ""
	// NetworkNone: the sandbox has its own loopback only.
	NetworkNone NetworkMode = "none"
	// NetworkOn: the sandbox reaches what its policy allows, through msb.
	NetworkOn NetworkMode = "on"
)

// Network is a sandbox's outbound network as its config asks for it. A
// sandbox with network reaches the destinations its Allow list names, but
// not those its Deny list names, through msb itself (sandbox/network):
// msb serves its DNS and dials every connection on its behalf. Loopback,
// private, link-local (cloud metadata) and the host's own addresses are
// refused whatever the lists say, unless the operator exempts some
// (NetworkBounds.Exempt).
//
// The v1 API's network {enabled, strict} maps onto it: enabled is Mode
// NetworkOn (or NetworkNone), strict is Strict.
type Network struct {
	Mode NetworkMode
	// Allow lists what the sandbox may reach, in the form of
	// network.ParseTarget: "*.pypi.org:443", "files.pythonhosted.org:443",
	// "203.0.113.0/24", "tcp example.org:80,443", "*" (every public
	// destination). Empty: the namespace's default list, unless Strict.
	Allow []string
	// Deny lists destinations refused even when Allow covers them.
	Deny []string
	// Strict: the sandbox reaches what Allow names and nothing else; with
	// Allow empty, nothing (not the namespace's default list).
	Strict bool
	// MaxConnections caps the sandbox's connections open at once; 0: the
	// namespace's cap.
	MaxConnections int
	// MaxBandwidth caps the bytes per second from and to the sandbox,
	// each way; 0: the namespace's cap.
	MaxBandwidth int64
}

// Limits of one network config.
const (
	maxNetworkRules = 256
	// DefaultNetworkConnections is a sandbox's cap of connections open at
	// once unless the operator sets another.
	DefaultNetworkConnections = 64
	maxNetworkConnections     = 65536
)

// asks reports whether anything but the mode is set: rules or limits,
// which only mean something with network.
func (n Network) asks() bool {
	return len(n.Allow) > 0 || len(n.Deny) > 0 || n.Strict || n.MaxConnections != 0 || n.MaxBandwidth != 0
}

// Equal reports whether two normalized networks are the same.
func (n Network) Equal(o Network) bool {
	return n.Mode == o.Mode && slices.Equal(n.Allow, o.Allow) && slices.Equal(n.Deny, o.Deny) && n.Strict == o.Strict &&
		n.MaxConnections == o.MaxConnections && n.MaxBandwidth == o.MaxBandwidth
}

// NormalizeNetwork validates n and puts it in canonical form: targets
// parsed and rewritten as network.Rule.Target renders them, sorted and
// without duplicates; a config that gives rules or limits without a mode
// asks for network. It is a pure function. Errors are of class Invalid,
// name the field and say what would be right; field is the field's
// name in them ("config.network").
func NormalizeNetwork(n Network, field string) (Network, error) {
	bad := func(format string, args ...any) (Network, error) {
		return Network{}, errdefs.Invalidf(field+"."+format, args...)
	}
	switch n.Mode {
	case NetworkDefault:
		if n.asks() {
			n.Mode = NetworkOn
		}
	case NetworkOn:
	case NetworkNone:
		if n.asks() {
			return bad("enabled is false, so allow, deny, strict and the limits mean nothing: set enabled to true, or leave them out")
		}
	default:
		return bad("mode %.16q is not none or on", n.Mode)
	}
	var err error
	if n.Allow, err = normalizeTargets(n.Allow); err != nil {
		return bad("allow: %v", err)
	}
	if n.Deny, err = normalizeTargets(n.Deny); err != nil {
		return bad("deny: %v", err)
	}
	if n.MaxConnections < 0 || n.MaxConnections > maxNetworkConnections {
		return bad("max_connections %d is out of range: use 1 to %d, or 0 for the server's default", n.MaxConnections, maxNetworkConnections)
	}
	if n.MaxBandwidth < 0 {
		return bad("max_bandwidth %d is negative: give bytes per second, or 0 for the server's default", n.MaxBandwidth)
	}
	return n, nil
}

// normalizeTargets parses targets and returns them canonical, sorted and
// without duplicates (nil for none).
func normalizeTargets(targets []string) ([]string, error) {
	if len(targets) > maxNetworkRules {
		return nil, fmt.Errorf("%d destinations is too many: use at most %d", len(targets), maxNetworkRules)
	}
	var out []string
	for _, t := range targets {
		r, err := network.ParseTarget(t)
		if err != nil {
			return nil, fmt.Errorf("%.64q: %v; write a destination such as *.pypi.org:443, 203.0.113.0/24 or tcp example.org:80,443", t, err)
		}
		out = append(out, r.Target())
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// NetworkBounds are what the operator lets the sandboxes of one namespace
// have ([network] of config.toml, and [network.namespaces.NAME]). Rule
// lists are in the form of network.ParseTarget; Check validates them.
type NetworkBounds struct {
	// Permitted lets sandboxes of the namespace have network at all.
	Permitted bool
	// DefaultOn gives network to sandboxes whose config does not say.
	DefaultOn bool
	// Allow is the ceiling: every destination a sandbox's Allow names
	// must be within one of these (network.Within). Nil: every public
	// destination ("*").
	Allow []string
	// DefaultAllow is what a sandbox that asks for network without an
	// Allow list reaches; nil: Allow.
	DefaultAllow []string
	// Deny are destinations refused to every sandbox of the namespace,
	// before its own rules are looked at.
	Deny []string
	// Exempt are the protected destinations (private, loopback,
	// link-local, this host's addresses) the sandboxes may reach, as
	// CIDRs or addresses with optional ports, when their Allow lets them.
	// Only the operator can exempt anything; no sandbox config can.
	Exempt []string
	// MaxConnections is each sandbox's cap of connections open at once,
	// and the most one may ask for; 0: no cap.
	MaxConnections int
	// MaxBandwidth is each sandbox's cap of bytes per second each way,
	// and the most one may ask for; 0: no cap.
	MaxBandwidth int64
}

// DefaultNetworkBounds are the bounds of a namespace the operator said
// nothing about: network on request, to every public destination, at
// most DefaultNetworkConnections connections at once.
func DefaultNetworkBounds() NetworkBounds {
	return NetworkBounds{Permitted: true, MaxConnections: DefaultNetworkConnections}
}

// Check reports the first malformed setting, naming it as config.toml
// does under prefix (such as "network" or "network.namespaces.team-a").
// Errors are of class Invalid.
func (b NetworkBounds) Check(prefix string) error {
	for _, l := range []struct {
		name    string
		targets []string
	}{{"allow", b.Allow}, {"default_allow", b.DefaultAllow}, {"deny", b.Deny}, {"exempt", b.Exempt}} {
		if _, err := parseTargets(l.targets); err != nil {
			return errdefs.Invalidf("%s.%s: %v", prefix, l.name, err)
		}
	}
	exempt, _ := parseTargets(b.Exempt)
	for i, r := range exempt {
		if !r.CIDR.IsValid() {
			return errdefs.Invalidf("%s.exempt: %q is not a CIDR or an address (with optional ports): only addresses can be exempt", prefix, b.Exempt[i])
		}
	}
	ceiling, _ := parseTargets(b.ceiling())
	defaults, _ := parseTargets(b.DefaultAllow)
	for i, r := range defaults {
		if !network.Within(r, ceiling) {
			return errdefs.Invalidf("%s.default_allow: %q is not within %s.allow", prefix, b.DefaultAllow[i], prefix)
		}
	}
	if b.MaxConnections < 0 || b.MaxConnections > maxNetworkConnections || b.MaxBandwidth < 0 {
		return errdefs.Invalidf("%s: max_connections (0 to %d) and max_bandwidth (bytes per second) must be 0 (no cap) or more", prefix, maxNetworkConnections)
	}
	return nil
}

// ceiling is the Allow list, "*" when none is set.
func (b NetworkBounds) ceiling() []string {
	if b.Allow == nil {
		return []string{"*"}
	}
	return b.Allow
}

func parseTargets(targets []string) ([]network.Rule, error) {
	out := make([]network.Rule, 0, len(targets))
	for _, t := range targets {
		r, err := network.ParseTarget(t)
		if err != nil {
			return nil, fmt.Errorf("%.64q: %v", t, err)
		}
		out = append(out, r)
	}
	return out, nil
}

// effectiveNetwork is what a sandbox's link runs with.
type effectiveNetwork struct {
	// Network is the config with the namespace's defaults filled in
	// (Allow, limits): what the sandbox gets, as a client reads it.
	Network
	policy network.Policy
	limits network.Limits
	exempt []network.Rule
}

// resolve turns a normalized network config of a sandbox of namespace ns
// into what its link runs with, within the bounds b; nil when it has no
// network. Errors are of class Forbidden (the namespace may not have
// this) and say what the operator allows.
func (b NetworkBounds) resolve(ns string, n Network) (*effectiveNetwork, error) {
	switch {
	case n.Mode == NetworkNone, n.Mode == NetworkDefault && !b.DefaultOn:
		return nil, nil
	case !b.Permitted:
		return nil, errdefs.Forbiddenf("config.network: sandboxes of namespace %q may not have network (the operator's [network] settings in config.toml): leave network out, or set enabled to false", ns)
	}
	e := &effectiveNetwork{Network: n}
	e.Mode = NetworkOn
	if len(e.Allow) == 0 && !e.Strict {
		e.Allow = b.DefaultAllow
		if e.Allow == nil {
			e.Allow = b.ceiling()
		}
	}
	ceiling, err := parseTargets(b.ceiling())
	if err != nil {
		return nil, fmt.Errorf("network bounds of namespace %q: %w", ns, err) // Check missed it: a bug
	}
	operator, err := parseTargets(b.Deny)
	if err != nil {
		return nil, fmt.Errorf("network bounds of namespace %q: %w", ns, err)
	}
	for _, r := range operator {
		r.Action = network.Deny
		e.policy.Rules = append(e.policy.Rules, r)
	}
	for _, t := range e.Deny {
		r, err := network.ParseTarget(t)
		if err != nil {
			return nil, errdefs.Invalidf("config.network.deny: %q: %v", t, err)
		}
		r.Action = network.Deny
		e.policy.Rules = append(e.policy.Rules, r)
	}
	for _, t := range e.Allow {
		r, err := network.ParseTarget(t)
		if err != nil {
			return nil, errdefs.Invalidf("config.network.allow: %q: %v", t, err)
		}
		if !network.Within(r, ceiling) {
			return nil, errdefs.Forbiddenf("config.network.allow: %q is more than sandboxes of namespace %q may reach (%s, set by the operator in config.toml): narrow it, or ask the operator", t, ns, strings.Join(b.ceiling(), ", "))
		}
		e.policy.Rules = append(e.policy.Rules, r)
	}
	e.policy.Default = network.Deny
	switch {
	case e.MaxConnections == 0:
		e.MaxConnections = b.MaxConnections
	case b.MaxConnections > 0 && e.MaxConnections > b.MaxConnections:
		return nil, errdefs.Forbiddenf("config.network.max_connections %d is more than sandboxes of namespace %q may have (%d): ask for %d or fewer", e.MaxConnections, ns, b.MaxConnections, b.MaxConnections)
	}
	switch {
	case e.MaxBandwidth == 0:
		e.MaxBandwidth = b.MaxBandwidth
	case b.MaxBandwidth > 0 && e.MaxBandwidth > b.MaxBandwidth:
		return nil, errdefs.Forbiddenf("config.network.max_bandwidth %d bytes/s is more than sandboxes of namespace %q may have (%d): ask for %d or less", e.MaxBandwidth, ns, b.MaxBandwidth, b.MaxBandwidth)
	}
	e.limits = network.Limits{MaxConns: e.MaxConnections, UpBytesPerSec: e.MaxBandwidth, DownBytesPerSec: e.MaxBandwidth}
	if e.exempt, err = parseTargets(b.Exempt); err != nil {
		return nil, fmt.Errorf("network bounds of namespace %q: %w", ns, err)
	}
	return e, nil
}

// NetworkStats are a running sandbox's network counters since it started.
type NetworkStats struct {
	Connections uint64 // TCP connections and UDP flows dialed on its behalf
	Active      int64  // of them, open now
	Denied      uint64 // attempts refused: connections, datagrams, DNS names
	BytesIn     uint64 // payload bytes to the sandbox
	BytesOut    uint64 // payload bytes from the sandbox
	DNSQueries  uint64 // DNS queries answered
}

// NetworkDenial reports a sandbox's refused network attempts to the
// Service's sink (ServiceOptions.OnNetworkDenial): at most one report a
// second per sandbox, each naming the last attempt refused and how many
// others were left out since the previous report.
type NetworkDenial struct {
	ID         ID
	Time       time.Time
	Denial     network.Denial
	Suppressed int
}
