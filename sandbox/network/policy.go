package network

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Action is what a rule does with the connections it matches.
type Action uint8

const (
	// Deny refuses the connection: a TCP reset, a dropped datagram, or
	// NXDOMAIN for a name.
	Deny Action = iota
	// Allow lets the server dial the destination on the sandbox's behalf.
	Allow
)

// String returns "allow" or "deny".
func (a Action) String() string {
	if a == Allow {
		return "allow"
	}
	return "deny"
}

// Proto restricts a rule to one transport protocol.
type Proto uint8

// The protocols a rule may be restricted to.
const (
	AnyProto Proto = iota // TCP and UDP
	TCP
	UDP
)

// String returns "tcp", "udp" or "any".
func (p Proto) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	}
	return "any"
}

// PortRange is an inclusive range of ports; a single port has From == To.
type PortRange struct{ From, To uint16 }

// Rule matches connections by destination and decides them. A rule names
// at most one destination selector: a CIDR, or a domain. A rule with
// neither matches every destination (for example "deny port 25").
//
// A domain is either a name ("pypi.org", matching just that name) or a
// wildcard ("*.pypi.org", matching every name below pypi.org but not
// pypi.org itself). A domain rule matches a connection when the name the
// connection presents (TLS SNI, HTTP Host) matches, or, when it presents
// none, when the destination address is one the sandbox got from msb's DNS
// for a matching name. An allow rule additionally requires that the
// presented name really resolves to the destination address, so that a
// connection cannot borrow an allowed name to reach another address.
type Rule struct {
	Action Action
	CIDR   netip.Prefix // valid for a CIDR rule
	Domain string       // non-empty for a domain rule
	Ports  []PortRange  // empty: every port
	Proto  Proto        // AnyProto: TCP and UDP
}

// Policy is an ordered list of rules; the first rule that matches a
// connection decides it, and Default decides connections no rule matches.
// The zero Policy denies everything.
//
// Some destinations are refused whatever the rules say: loopback,
// link-local (so the 169.254.169.254 metadata service), RFC 1918 private
// ranges, IPv6 unique local addresses, CGNAT (100.64.0.0/10), multicast,
// broadcast and unspecified addresses, the server host's own addresses,
// and the extra ranges in Config.Protected (other sandboxes, the
// operator's own networks). No rule unlocks them, not even one naming
// them: only Config.Exempt, which is the operator's and never a client's,
// does. So an allowed name resolving to 10.0.0.1 is still refused.
type Policy struct {
	Rules   []Rule
	Default Action
}

// AllowAll is a policy that allows every public destination.
var AllowAll = Policy{Default: Allow}

// Validate reports the first malformed rule.
func (p Policy) Validate() error {
	for i, r := range p.Rules {
		if err := r.validate(); err != nil {
			return fmt.Errorf("rule %d: %w", i, err)
		}
	}
	return nil
}

func (r Rule) validate() error {
	if r.CIDR.IsValid() && r.Domain != "" {
		return errors.New("a rule has a CIDR or a domain, not both")
	}
	if r.CIDR.IsValid() && r.CIDR != r.CIDR.Masked() {
		return fmt.Errorf("CIDR %s has bits set past its prefix: use %s", r.CIDR, r.CIDR.Masked())
	}
	if r.Domain != "" {
		if err := validDomain(r.Domain); err != nil {
			return err
		}
	}
	for _, pr := range r.Ports {
		if pr.From > pr.To || pr.From == 0 {
			return fmt.Errorf("port range %d-%d is empty or starts at 0: ports are 1 to 65535, the lower first", pr.From, pr.To)
		}
	}
	if r.Action > Allow || r.Proto > UDP {
		return errors.New("unknown action or protocol")
	}
	return nil
}

// validDomain checks a rule's domain: a DNS name of letters, digits,
// '-' and '_' (internationalised names in their xn-- form), or "*." and
// such a name.
func validDomain(d string) error {
	name := strings.TrimPrefix(d, "*.")
	if len(name) == 0 || len(name) > 253 {
		return fmt.Errorf("domain %.64q is not a name such as example.org or *.example.org", d)
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("domain %.64q is not a name such as example.org or *.example.org", d)
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("domain %.64q is not a name such as example.org or *.example.org (write internationalised names in their xn-- form)", d)
			}
		}
	}
	return nil
}

// maxRuleText bounds the text of one rule.
const maxRuleText = 300

// ParseRule parses the textual form of a rule, as an operator would write
// it in a configuration file:
//
//	allow *.pypi.org:443
//	allow tcp pypi.org:80,443
//	deny 10.0.0.0/8
//	allow udp 203.0.113.0/24:1000-2000
//	deny *:25            (every destination, port 25)
//
// The action is followed by a target, as ParseTarget reads it.
func ParseRule(s string) (Rule, error) {
	action, target, ok := strings.Cut(strings.TrimSpace(s), " ")
	var a Action
	switch strings.ToLower(action) {
	case "allow":
		a = Allow
	case "deny":
		a = Deny
	default:
		if !ok {
			return Rule{}, fmt.Errorf("rule %.64q: want ACTION [tcp|udp] DEST[:PORTS], such as allow *.pypi.org:443", s)
		}
		return Rule{}, fmt.Errorf("rule %.64q: the action must be allow or deny", s)
	}
	r, err := ParseTarget(target)
	if err != nil {
		return Rule{}, fmt.Errorf("rule %.64q: %w", s, err)
	}
	r.Action = a
	return r, nil
}

// ParseTarget parses what a rule applies to: an optional protocol, a
// destination and optional ports, "[tcp|udp] DEST[:PORTS]". The
// destination is a domain ("pypi.org"), a wildcard domain ("*.pypi.org":
// every name below pypi.org), a CIDR, an IP address, or "*" (every
// destination); PORTS is a comma-separated list of ports and ranges
// ("80,443", "8000-8100"). IPv6 destinations with ports take brackets:
// "[2001:db8::/32]:443". The rule returned allows; errors say what is
// wrong, without the input's context.
func ParseTarget(s string) (Rule, error) {
	var r Rule
	r.Action = Allow
	if len(s) > maxRuleText {
		return r, fmt.Errorf("longer than %d characters", maxRuleText)
	}
	f := strings.Fields(s)
	if len(f) > 0 {
		switch strings.ToLower(f[0]) {
		case "tcp":
			r.Proto, f = TCP, f[1:]
		case "udp":
			r.Proto, f = UDP, f[1:]
		}
	}
	if len(f) != 1 {
		return r, errors.New("want one destination, [tcp|udp] DEST[:PORTS], such as *.pypi.org:443 or 203.0.113.0/24")
	}
	dest, ports, hasPorts := f[0], "", false
	if strings.HasPrefix(dest, "[") {
		end := strings.Index(dest, "]")
		if end < 0 {
			return r, errors.New("unclosed [")
		}
		rest := dest[end+1:]
		dest = dest[1:end]
		if rest != "" {
			p, ok := strings.CutPrefix(rest, ":")
			if !ok {
				return r, errors.New("after ] comes :PORTS or nothing")
			}
			ports, hasPorts = p, true
		}
	} else if strings.Count(dest, ":") == 1 {
		dest, ports, hasPorts = strings.Cut(dest, ":")
	}
	if hasPorts {
		for _, p := range strings.Split(ports, ",") {
			lo, hi, isRange := strings.Cut(p, "-")
			from, err := strconv.ParseUint(lo, 10, 16)
			if err != nil {
				return r, fmt.Errorf("port %.16q is not a number from 1 to 65535", p)
			}
			to := from
			if isRange {
				if to, err = strconv.ParseUint(hi, 10, 16); err != nil {
					return r, fmt.Errorf("port %.16q is not a number from 1 to 65535", p)
				}
			}
			r.Ports = append(r.Ports, PortRange{uint16(from), uint16(to)})
		}
	}
	switch {
	case dest == "*":
	case strings.Contains(dest, "/"):
		pfx, err := netip.ParsePrefix(dest)
		if err != nil {
			return r, fmt.Errorf("%.64q is not a CIDR such as 203.0.113.0/24", dest)
		}
		r.CIDR = pfx
	default:
		if a, err := netip.ParseAddr(dest); err == nil {
			if a.Zone() != "" {
				return r, fmt.Errorf("address %.64q has a zone", dest)
			}
			r.CIDR = netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
		} else {
			r.Domain = normName(dest)
		}
	}
	return r, r.validate()
}

// ParsePolicy parses rules with ParseRule; def decides what no rule
// matches.
func ParsePolicy(def Action, rules ...string) (Policy, error) {
	p := Policy{Default: def}
	for _, s := range rules {
		r, err := ParseRule(s)
		if err != nil {
			return Policy{}, err
		}
		p.Rules = append(p.Rules, r)
	}
	return p, nil
}

// MustParsePolicy is ParsePolicy for literals; it panics on a bad rule.
func MustParsePolicy(def Action, rules ...string) Policy {
	p, err := ParsePolicy(def, rules...)
	if err != nil {
		panic(err)
	}
	return p
}

// String renders the rule as ParseRule reads it.
func (r Rule) String() string { return r.Action.String() + " " + r.Target() }

// Target renders what the rule applies to, as ParseTarget reads it.
func (r Rule) Target() string {
	var b strings.Builder
	if r.Proto != AnyProto {
		b.WriteString(r.Proto.String() + " ")
	}
	switch {
	case r.CIDR.IsValid():
		if r.CIDR.Addr().Is6() && len(r.Ports) > 0 {
			b.WriteString("[" + r.CIDR.String() + "]")
		} else {
			b.WriteString(r.CIDR.String())
		}
	case r.Domain != "":
		b.WriteString(r.Domain)
	default:
		b.WriteString("*")
	}
	for i, p := range r.Ports {
		if i == 0 {
			b.WriteString(":")
		} else {
			b.WriteString(",")
		}
		b.WriteString(strconv.Itoa(int(p.From)))
		if p.To != p.From {
			b.WriteString("-" + strconv.Itoa(int(p.To)))
		}
	}
	return b.String()
}

// Reason says why a connection or name was refused.
type Reason string

// The reasons of a refusal.
const (
	ReasonRule         Reason = "rule"          // a deny rule matched
	ReasonDefault      Reason = "default"       // no rule matched and the default is deny
	ReasonProtected    Reason = "protected"     // an always-denied destination
	ReasonNameMismatch Reason = "name-mismatch" // the presented name does not resolve to the destination
	ReasonConnLimit    Reason = "conn-limit"    // too many concurrent connections
	ReasonInspect      Reason = "inspect"       // the stream could not be inspected (oversized or malformed head)
	ReasonSource       Reason = "source"        // a packet from an address that is not the sandbox's
)

// compiled is an immutable, normalised Policy; a Link swaps whole
// compiled policies atomically.
type compiled struct {
	rules      []Rule
	def        Action
	hasDomains bool // any domain rule: DNS answers are worth remembering
	openByIP   bool // some destination is allowed without a name
}

func compile(p Policy) (*compiled, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	c := &compiled{def: p.Default, openByIP: p.Default == Allow}
	for _, r := range p.Rules {
		r.Domain = normName(r.Domain)
		r.Ports = append([]PortRange(nil), r.Ports...)
		if r.CIDR.IsValid() {
			r.CIDR = netip.PrefixFrom(r.CIDR.Addr().Unmap(), r.CIDR.Bits()-unmapBits(r.CIDR.Addr()))
		}
		if r.Domain != "" {
			c.hasDomains = true
		} else if r.Action == Allow {
			c.openByIP = true
		}
		c.rules = append(c.rules, r)
	}
	return c, nil
}

func unmapBits(a netip.Addr) int {
	if a.Is4In6() {
		return 96
	}
	return 0
}

// normName lower-cases a DNS name and drops its trailing dot.
func normName(s string) string {
	return strings.TrimSuffix(strings.ToLower(s), ".")
}

// domainMatch reports whether name (normalised) matches pattern
// (normalised, possibly "*.suffix").
func domainMatch(pattern, name string) bool {
	if suffix, ok := strings.CutPrefix(pattern, "*."); ok {
		return len(name) > len(suffix)+1 && strings.HasSuffix(name, suffix) && name[len(name)-len(suffix)-1] == '.'
	}
	return pattern == name
}

func (r *Rule) matchesProtoPort(proto Proto, port uint16) bool {
	if r.Proto != AnyProto && r.Proto != proto {
		return false
	}
	if len(r.Ports) == 0 {
		return true
	}
	for _, pr := range r.Ports {
		if port >= pr.From && port <= pr.To {
			return true
		}
	}
	return false
}

// query is one connection attempt as the policy sees it.
type query struct {
	proto Proto
	dst   netip.AddrPort
	// names the sandbox resolved to dst through msb's DNS (remembered).
	names []string
	// presented is the name the connection presents (SNI, Host), if any.
	presented string
	// assoc reports whether the presented name resolves to dst; called at
	// most when an allow rule matches the presented name.
	assoc func(name string) bool
	// protected is the protected range holding dst, if any.
	protected netip.Prefix
}

// verdict is the policy's decision on a query.
type verdict struct {
	allow  bool
	reason Reason // why not, when !allow
	rule   int    // index of the deciding rule, -1 for none
	// nameMatters is set when a domain rule was considered before the
	// decision: a name the connection presents could change it.
	nameMatters bool
}

func (c *compiled) decide(q *query) verdict {
	v := verdict{rule: -1}
	if q.protected.IsValid() {
		// Whatever the rules say, and before any name is looked at.
		v.reason = ReasonProtected
		return v
	}
	ip := q.dst.Addr()
	for i := range c.rules {
		r := &c.rules[i]
		if !r.matchesProtoPort(q.proto, q.dst.Port()) {
			continue
		}
		switch {
		case r.CIDR.IsValid():
			if !r.CIDR.Contains(ip) {
				continue
			}
		case r.Domain != "":
			v.nameMatters = true
			if q.presented != "" {
				if !domainMatch(r.Domain, q.presented) {
					continue
				}
				if r.Action == Allow && (q.assoc == nil || !q.assoc(q.presented)) {
					v.allow, v.reason, v.rule = false, ReasonNameMismatch, i
					return v
				}
			} else if !anyMatch(r.Domain, q.names) {
				continue
			}
		}
		v.rule = i
		if r.Action == Deny {
			v.allow, v.reason = false, ReasonRule
			return v
		}
		v.allow = true
		return v
	}
	v.allow = c.def == Allow
	if !v.allow {
		v.reason = ReasonDefault
	}
	return v
}

func anyMatch(pattern string, names []string) bool {
	for _, n := range names {
		if domainMatch(pattern, n) {
			return true
		}
	}
	return false
}

// nameVerdict decides whether msb's DNS answers a query for name: it is
// refused when the first domain rule matching it (for any port) is a deny
// rule for every port and protocol, or when no domain rule matches it and
// nothing is allowed without a name. resolve tells whether the answers
// are worth remembering.
func (c *compiled) nameVerdict(name string) (answer bool, rule int) {
	for i := range c.rules {
		r := &c.rules[i]
		if r.Domain == "" || !domainMatch(r.Domain, name) {
			continue
		}
		if r.Action == Allow {
			return true, i
		}
		if len(r.Ports) == 0 && r.Proto == AnyProto {
			return false, i
		}
		// A deny for some ports only: other ports may still be allowed.
		return true, i
	}
	return c.openByIP, -1
}

// protectedRanges are refused unless Config.Exempt lists them.
var protectedRanges = func() []netip.Prefix {
	var ps []netip.Prefix
	for _, s := range []string{
		"0.0.0.0/8",      // "this network", unspecified
		"10.0.0.0/8",     // RFC 1918
		"100.64.0.0/10",  // CGNAT, RFC 6598
		"127.0.0.0/8",    // loopback
		"169.254.0.0/16", // link-local, cloud metadata
		"172.16.0.0/12",  // RFC 1918
		"192.0.0.0/24",   // IETF protocol assignments
		"192.168.0.0/16", // RFC 1918
		"198.18.0.0/15",  // benchmarking
		"224.0.0.0/4",    // multicast
		"240.0.0.0/4",    // reserved, broadcast
		"::/128",         // unspecified
		"::1/128",        // loopback
		"::ffff:0:0/96",  // IPv4-mapped (the IPv4 rules apply instead)
		"64:ff9b::/96",   // NAT64 (reaches IPv4, possibly private)
		"64:ff9b:1::/48", // local-use NAT64
		"100::/64",       // discard-only
		"2002::/16",      // 6to4 (embeds IPv4)
		"fc00::/7",       // unique local
		"fe80::/10",      // link-local
		"fec0::/10",      // site-local (deprecated)
		"ff00::/8",       // multicast
	} {
		ps = append(ps, netip.MustParsePrefix(s))
	}
	return ps
}()

// Within reports whether every connection rule r (an allow rule) can
// match is one a rule of ceiling can match: r is no broader than what
// the ceiling allows. A ceiling is a set of allow rules (the actions of
// its rules are ignored); a domain is within a wildcard that covers it
// ("a.pypi.org" and "*.a.pypi.org" are within "*.pypi.org"), a CIDR within
// a CIDR holding it, and a rule for every destination ("*") only within
// one. Ports and protocols must be within too, possibly spread over
// several rules of the ceiling ("x.org:80,443" is within "x.org:80" and
// "x.org:443").
func Within(r Rule, ceiling []Rule) bool {
	ports := r.Ports
	if len(ports) == 0 {
		ports = []PortRange{{1, 65535}}
	}
	protos := []Proto{r.Proto}
	if r.Proto == AnyProto {
		protos = []Proto{TCP, UDP}
	}
	for _, proto := range protos {
		for _, pr := range ports {
			if !portsWithin(r, proto, pr, ceiling) {
				return false
			}
		}
	}
	return true
}

// portsWithin reports whether the ports pr of proto to r's destination
// are covered by the union of the ceiling's rules for that destination.
func portsWithin(r Rule, proto Proto, pr PortRange, ceiling []Rule) bool {
	next := int(pr.From) // the lowest port not yet covered
	for next <= int(pr.To) {
		advanced := false
		for i := range ceiling {
			c := &ceiling[i]
			if (c.Proto != AnyProto && c.Proto != proto) || !destWithin(r, c) {
				continue
			}
			if len(c.Ports) == 0 {
				return true
			}
			for _, cp := range c.Ports {
				if int(cp.From) <= next && int(cp.To) >= next {
					next, advanced = int(cp.To)+1, true
				}
			}
		}
		if !advanced {
			return false
		}
	}
	return true
}

// destWithin reports whether r's destination is inside c's.
func destWithin(r Rule, c *Rule) bool {
	switch {
	case !c.CIDR.IsValid() && c.Domain == "":
		return true // c is every destination
	case c.CIDR.IsValid():
		if !r.CIDR.IsValid() {
			return false
		}
		rc, cc := unmapPrefix(r.CIDR), unmapPrefix(c.CIDR)
		return rc.Addr().BitLen() == cc.Addr().BitLen() && rc.Bits() >= cc.Bits() && cc.Contains(rc.Addr())
	default:
		if r.Domain == "" {
			return false
		}
		rd, cd := normName(r.Domain), normName(c.Domain)
		if rd == cd {
			return true
		}
		// "*.x" holds "a.x" and "*.a.x" (every name of which is below x).
		return strings.HasPrefix(cd, "*.") && domainMatch(cd, strings.TrimPrefix(rd, "*."))
	}
}

func unmapPrefix(p netip.Prefix) netip.Prefix {
	return netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-unmapBits(p.Addr()))
}
