package v1

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox"
	"github.com/msb-dev/msb/sandbox/volume"
)

// Sandbox is the sandbox object of every sandbox response.
type Sandbox struct {
	ID                 string  `json:"id"` // the record's UUID
	OrgID              string  `json:"org_id"`
	Name               string  `json:"name"`
	Slug               string  `json:"slug"`
	Status             string  `json:"status"`
	StatusReason       *string `json:"status_reason"`
	Spec               *Spec   `json:"spec"`
	Ephemeral          bool    `json:"ephemeral"`
	CreatedAt          string  `json:"created_at"`
	StartedAt          *string `json:"started_at"`
	StoppedAt          *string `json:"stopped_at"`
	LastFailureMessage *string `json:"last_failure_message"`
}

// statuses are the states the SDK can decode; any other is reported as
// stopped, since the SDK fails on values it does not know.
var statuses = map[sandbox.State]string{
	sandbox.StateCreated: "created", sandbox.StateStarting: "starting", sandbox.StateRunning: "running",
	sandbox.StateStopping: "stopping", sandbox.StateStopped: "stopped", sandbox.StateFailed: "failed",
}

func timestamp(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

func optTimestamp(t time.Time) *string {
	if t.IsZero() {
		return nil
	}
	s := timestamp(t)
	return &s
}

func optString(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func optInt(n int) *int {
	if n == 0 {
		return nil
	}
	return &n
}

// sandboxJSON is the sandbox object of rec.
func sandboxJSON(rec sandbox.Record) Sandbox {
	status, ok := statuses[rec.State]
	if !ok {
		status = "stopped"
	}
	spec := specOf(rec.ID.Name(), rec.Config, rec.NetworkOn)
	return Sandbox{
		ID: rec.UUID, OrgID: rec.ID.Namespace(), Name: rec.ID.Name(), Slug: rec.ID.Name(), Status: status,
		Spec: &spec, Ephemeral: rec.Config.Ephemeral, CreatedAt: timestamp(rec.Created),
		StartedAt: optTimestamp(rec.Started), StoppedAt: optTimestamp(rec.Stopped), LastFailureMessage: optString(rec.Failure),
	}
}

// Spec is the body of a create (POST /v1/sandboxes), and the spec a
// sandbox object echoes: what the sandbox runs with, as msb honours it.
// Decoded strictly: a field msb does not know is refused, never ignored.
type Spec struct {
	Name      string            `json:"name"`
	Slug      *string           `json:"slug,omitempty"`
	Image     json.RawMessage   `json:"image"`
	Resources Resources         `json:"resources"`
	Runtime   Runtime           `json:"runtime"`
	Env       []EnvVar          `json:"env"`
	Labels    map[string]string `json:"labels"`
	Rlimits   []Rlimit          `json:"rlimits"`
	Mounts    []json.RawMessage `json:"mounts"`
	Patches   []json.RawMessage `json:"patches"`
	Network   *Network          `json:"network"`
	Init      json.RawMessage   `json:"init"`
	// PullPolicy and SecurityProfile are left out of a spec only by
	// clients that send their defaults implicitly.
	PullPolicy      string          `json:"pull_policy,omitempty"`
	SecurityProfile string          `json:"security_profile,omitempty"`
	Lifecycle       *Lifecycle      `json:"lifecycle"`
	Registry        json.RawMessage `json:"registry,omitempty"`
}

// Image is the image of a spec: an OCI reference.
type Image struct {
	Type      string `json:"type"`
	Reference string `json:"reference"`
}

// Resources of a spec.
type Resources struct {
	VCPUs       int  `json:"vcpus"`
	MemoryMiB   int  `json:"memory_mib"`
	DiskSizeMiB *int `json:"disk_size_mib,omitempty"`
}

// Runtime of a spec.
type Runtime struct {
	Workdir    *string           `json:"workdir"`
	Shell      *string           `json:"shell"`
	Scripts    map[string]string `json:"scripts"`
	Entrypoint []string          `json:"entrypoint"`
	Cmd        []string          `json:"cmd"`
	User       *string           `json:"user"`
	LogLevel   *string           `json:"log_level"`
}

// EnvVar is one variable of a spec's environment.
type EnvVar struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

// Rlimit is one resource limit of a spec.
type Rlimit struct {
	Resource string `json:"resource"`
	Soft     uint64 `json:"soft"`
	Hard     uint64 `json:"hard"`
}

// Network of a spec.
type Network struct {
	Enabled        bool            `json:"enabled"`
	Policy         json.RawMessage `json:"policy,omitempty"`
	Secrets        json.RawMessage `json:"secrets,omitempty"`
	MaxConnections *int            `json:"max_connections,omitempty"`
	Strict         bool            `json:"strict"`
}

// Lifecycle of a spec.
type Lifecycle struct {
	Ephemeral       bool    `json:"ephemeral"`
	MaxDurationSecs *uint64 `json:"max_duration_secs"`
	IdleTimeoutSecs *uint64 `json:"idle_timeout_secs"`
}

// NamedMount mounts a named volume.
type NamedMount struct {
	Type               string       `json:"type"`
	Name               string       `json:"name"`
	Guest              string       `json:"guest"`
	Options            MountOptions `json:"options"`
	StatVirtualization string       `json:"stat_virtualization"`
	HostPermissions    string       `json:"host_permissions"`
}

// TmpfsMount mounts a memory-backed directory.
type TmpfsMount struct {
	Type    string       `json:"type"`
	Guest   string       `json:"guest"`
	SizeMiB *int         `json:"size_mib"`
	Options MountOptions `json:"options"`
}

// MountOptions of a mount.
type MountOptions struct {
	ReadOnly bool `json:"readonly"`
	NoExec   bool `json:"noexec"`
	NoSuid   bool `json:"nosuid"`
	NoDev    bool `json:"nodev"`
}

// rlimitNames are the resources a spec may limit.
var rlimitNames = []string{"cpu", "fsize", "data", "stack", "core", "rss", "nproc", "nofile", "memlock", "as",
	"locks", "sigpending", "msgqueue", "nice", "rtprio", "rttime"}

// Bounds of what a spec may hold (sandbox.Normalize checks the rest).
const (
	maxLabels   = 64
	maxLabelLen = 256
	maxRlimits  = 16
	maxMounts   = 64
	maxSecs     = uint64(math.MaxInt64 / int64(time.Second))
)

// invalidConfig is an error of class Invalid about field of a spec, with
// the code the SDK raises InvalidConfigError for.
func invalidConfig(field, format string, args ...any) error {
	return withCode(codeInvalidConfig, errdefs.Invalidf(field+": "+format, args...))
}

// isNull reports whether a raw field is absent or null.
func isNull(raw json.RawMessage) bool {
	s := strings.TrimSpace(string(raw))
	return s == "" || s == "null"
}

// decodeField decodes raw into v strictly, naming field in the error.
func decodeField(field string, raw json.RawMessage, v any) error {
	if err := decodeStrict(raw, v); err != nil {
		return invalidConfig(field, "%v", strings.TrimPrefix(err.Error(), "the request body is not valid: "))
	}
	return nil
}

// config maps a create body onto the domain's config. Every field msb
// cannot honour is refused with an error of class Invalid naming it;
// none is ignored.
func (s Spec) config() (sandbox.Config, error) {
	var cfg sandbox.Config
	if s.Slug != nil && *s.Slug != s.Name {
		return cfg, invalidConfig("slug", "msb names a sandbox by its name alone: leave slug unset or equal to the name")
	}
	// image
	if isNull(s.Image) {
		return cfg, invalidConfig("image", "an image is required, such as {\"type\":\"oci\",\"reference\":\"alpine:3.20\"}")
	}
	var kind struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(s.Image, &kind); err != nil {
		return cfg, invalidConfig("image", "must be an object with a \"type\"")
	}
	if kind.Type != "oci" {
		return cfg, invalidConfig("image.type", "%q images name a path on the server's host, which a remote client may not choose: use an OCI image (\"type\":\"oci\")", truncate(kind.Type))
	}
	var img Image
	if err := decodeField("image", s.Image, &img); err != nil {
		return cfg, err
	}
	if img.Reference == "" {
		return cfg, invalidConfig("image.reference", "give an image reference, such as alpine:3.20")
	}
	cfg.Image = img.Reference
	// resources
	if d := s.Resources.DiskSizeMiB; d != nil {
		if *d <= 0 {
			return cfg, invalidConfig("resources.disk_size_mib", "give a size in MiB, such as 2048, or leave it unset for the server's default")
		}
		cfg.Disk = *d
	}
	if s.Resources.VCPUs < 0 || s.Resources.MemoryMiB < 0 {
		return cfg, invalidConfig("resources", "vcpus and memory_mib must not be negative")
	}
	cfg.CPUs, cfg.Memory = s.Resources.VCPUs, s.Resources.MemoryMiB
	// runtime
	rt := s.Runtime
	if rt.LogLevel != nil {
		return cfg, invalidConfig("runtime.log_level", "msb's sandboxes have no agent log level: leave logLevel unset")
	}
	if rt.Workdir != nil {
		cfg.Workdir = *rt.Workdir
	}
	if rt.Shell != nil {
		cfg.Shell = *rt.Shell
	}
	if rt.User != nil {
		cfg.User = *rt.User
	}
	cfg.Scripts = rt.Scripts
	if len(rt.Entrypoint)+len(rt.Cmd) > 0 {
		cfg.Command = append(slices.Clone(rt.Entrypoint), rt.Cmd...)
	}
	// env
	for i, e := range s.Env {
		if e.Key == "" || strings.ContainsAny(e.Key, "=\x00") || strings.ContainsRune(e.Value, 0) {
			return cfg, invalidConfig(fmt.Sprintf("env[%d]", i), "%.64q is not a variable name (no '=', not empty)", e.Key)
		}
		cfg.Envs = append(cfg.Envs, e.Key+"="+e.Value)
	}
	// labels
	if len(s.Labels) > maxLabels {
		return cfg, invalidConfig("labels", "%d labels is too many: use at most %d", len(s.Labels), maxLabels)
	}
	for k, v := range s.Labels {
		if k == "" || len(k) > maxLabelLen || len(v) > maxLabelLen || strings.ContainsRune(k+v, 0) {
			return cfg, invalidConfig("labels", "%.64q: keys must be 1-%d bytes and values at most %d", k, maxLabelLen, maxLabelLen)
		}
	}
	if len(s.Labels) > 0 {
		cfg.Labels = s.Labels
	}
	// rlimits
	if len(s.Rlimits) > maxRlimits {
		return cfg, invalidConfig("rlimits", "%d limits is too many: use at most %d", len(s.Rlimits), maxRlimits)
	}
	for i, r := range s.Rlimits {
		if !slices.Contains(rlimitNames, r.Resource) {
			return cfg, invalidConfig(fmt.Sprintf("rlimits[%d].resource", i), "%.32q is not one of %s", r.Resource, strings.Join(rlimitNames, ", "))
		}
		if r.Soft > r.Hard {
			return cfg, invalidConfig(fmt.Sprintf("rlimits[%d]", i), "soft %d is above hard %d", r.Soft, r.Hard)
		}
		cfg.Rlimits = append(cfg.Rlimits, sandbox.Rlimit{Resource: r.Resource, Soft: r.Soft, Hard: r.Hard})
	}
	// mounts
	if len(s.Mounts) > maxMounts {
		return cfg, invalidConfig("mounts", "%d mounts is too many: use at most %d", len(s.Mounts), maxMounts)
	}
	for i, raw := range s.Mounts {
		if err := mount(&cfg, fmt.Sprintf("mounts[%d]", i), raw); err != nil {
			return cfg, err
		}
	}
	// what msb cannot do, refused
	if len(s.Patches) > 0 {
		return cfg, invalidConfig("patches", "msb does not patch a sandbox's files at create: write them after create with sb.fs().write(...) or mkdir(...)")
	}
	if !isNull(s.Init) {
		return cfg, invalidConfig("init", "msb runs its own init in every sandbox: leave init unset")
	}
	switch s.PullPolicy {
	case "", "if_missing":
	case "always", "never":
		return cfg, invalidConfig("pull_policy", "%q is not supported: msb pulls an image it does not have and reuses one it has (if_missing)", s.PullPolicy)
	default:
		return cfg, invalidConfig("pull_policy", "%.32q is not one of if_missing, always, never", s.PullPolicy)
	}
	switch s.SecurityProfile {
	case "", "default":
	case "restricted":
		return cfg, invalidConfig("security_profile", "\"restricted\" is not supported: msb sandboxes run with its one profile (default)")
	default:
		return cfg, invalidConfig("security_profile", "%.32q is not one of default, restricted", s.SecurityProfile)
	}
	if !isNull(s.Registry) {
		var reg struct {
			Mode string `json:"mode"`
		}
		if err := json.Unmarshal(s.Registry, &reg); err != nil || reg.Mode != "anonymous" {
			return cfg, invalidConfig("registry", "msb pulls images anonymously: registry credentials are not supported")
		}
	}
	if n := s.Network; n != nil {
		var err error
		if cfg.Network, err = network(n); err != nil {
			return cfg, err
		}
	}
	if l := s.Lifecycle; l != nil {
		for field, v := range map[string]*uint64{"lifecycle.max_duration_secs": l.MaxDurationSecs, "lifecycle.idle_timeout_secs": l.IdleTimeoutSecs} {
			if v != nil && *v > maxSecs {
				return cfg, invalidConfig(field, "%d seconds is too long", *v)
			}
		}
		cfg.Ephemeral = l.Ephemeral
		if l.MaxDurationSecs != nil {
			cfg.MaxDuration = time.Duration(*l.MaxDurationSecs) * time.Second
		}
		if l.IdleTimeoutSecs != nil {
			cfg.IdleTimeout = time.Duration(*l.IdleTimeoutSecs) * time.Second
		}
	}
	return cfg, nil
}

// mount maps one mount of a spec onto cfg: a named volume, or a tmpfs.
// A bind or disk-image mount names a path on the server's host, which a
// remote client may not choose.
func mount(cfg *sandbox.Config, field string, raw json.RawMessage) error {
	var kind struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(raw, &kind); err != nil {
		return invalidConfig(field, "must be an object with a \"type\"")
	}
	switch kind.Type {
	case "named":
		var m NamedMount
		if err := decodeField(field, raw, &m); err != nil {
			return err
		}
		if err := volume.ValidateName(m.Name); err != nil {
			return invalidConfig(field+".name", "%v", err)
		}
		if m.Options.NoExec {
			return invalidConfig(field+".options.noexec", "msb cannot mount a volume noexec yet")
		}
		for f, v := range map[string]string{"stat_virtualization": m.StatVirtualization, "host_permissions": m.HostPermissions} {
			ok := map[string][]string{"stat_virtualization": {"", "strict", "relaxed", "off"}, "host_permissions": {"", "private", "mirror"}}[f]
			if !slices.Contains(ok, v) {
				return invalidConfig(field+"."+f, "%.32q is not one of %s", v, strings.Join(ok[1:], ", "))
			}
		}
		cfg.Volumes = append(cfg.Volumes, sandbox.Volume{Host: m.Name, Guest: m.Guest, ReadOnly: m.Options.ReadOnly})
	case "tmpfs":
		var m TmpfsMount
		if err := decodeField(field, raw, &m); err != nil {
			return err
		}
		if m.Options.ReadOnly || m.Options.NoExec {
			return invalidConfig(field+".options", "msb mounts a tmpfs writable and executable: leave readonly and noexec unset")
		}
		t := sandbox.Tmpfs{Guest: m.Guest}
		if m.SizeMiB != nil {
			if *m.SizeMiB <= 0 {
				return invalidConfig(field+".size_mib", "must be positive")
			}
			t.SizeMiB = *m.SizeMiB
		}
		cfg.Tmpfs = append(cfg.Tmpfs, t)
	case "bind", "disk_image":
		return invalidConfig(field, "a %s mount names a path on the server's host, which a remote client may not choose: use a named volume (m.named(...))", kind.Type)
	default:
		return invalidConfig(field+".type", "%.32q is not one of named, tmpfs, bind, disk_image", kind.Type)
	}
	return nil
}

// network maps a spec's network onto msb's. Without a policy, enabled
// follows the namespace's network settings (config.toml's [network]: the
// SDKs send enabled on every create), and disabled is none. A policy
// becomes msb's lists: default_egress allow is every public destination,
// deny is what its allow rules name and nothing else; rules by domain,
// domain suffix, CIDR and the public group map one for one. msb refuses
// loopback, private, link-local, metadata and host destinations whatever
// a client asks (only the operator exempts some), so allowing one of
// those groups is an error, and denying one is already so. Ingress is the
// port forwards, which a policy does not change: ingress rules are
// refused. strict (names checked against what the connection presents)
// is what msb always does. Secrets are refused: msb does not rewrite a
// sandbox's traffic.
func network(n *Network) (sandbox.Network, error) {
	var out sandbox.Network
	if !isNull(n.Secrets) {
		var sec struct {
			Entries     []json.RawMessage `json:"entries"`
			OnViolation json.RawMessage   `json:"on_violation"`
		}
		if err := decodeField("network.secrets", n.Secrets, &sec); err != nil {
			return out, err
		}
		if len(sec.Entries) > 0 {
			return out, invalidConfig("network.secrets", "msb does not inject secrets into a sandbox's traffic: pass them with env instead")
		}
	}
	if n.MaxConnections != nil {
		if *n.MaxConnections < 0 {
			return out, invalidConfig("network.max_connections", "must not be negative")
		}
		out.MaxConnections = *n.MaxConnections
	}
	if !n.Enabled {
		out.Mode = sandbox.NetworkNone
		return out, nil
	}
	if isNull(n.Policy) {
		return out, nil // the namespace's default
	}
	var p struct {
		DefaultEgress  string       `json:"default_egress"`
		DefaultIngress string       `json:"default_ingress"`
		Rules          []PolicyRule `json:"rules"`
	}
	if err := decodeField("network.policy", n.Policy, &p); err != nil {
		return out, err
	}
	out.Mode, out.Strict = sandbox.NetworkOn, true
	switch p.DefaultEgress {
	case "", "deny":
	case "allow":
		out.Allow = append(out.Allow, "*")
	default:
		return out, invalidConfig("network.policy.default_egress", "%.32q is not one of allow, deny", p.DefaultEgress)
	}
	if p.DefaultIngress != "" && p.DefaultIngress != "allow" && p.DefaultIngress != "deny" {
		return out, invalidConfig("network.policy.default_ingress", "%.32q is not one of allow, deny", p.DefaultIngress)
	}
	for i, r := range p.Rules {
		field := fmt.Sprintf("network.policy.rules[%d]", i)
		targets, err := r.targets(field)
		if err != nil {
			return out, err
		}
		if r.Action == "allow" {
			out.Allow = append(out.Allow, targets...)
		} else {
			out.Deny = append(out.Deny, targets...)
		}
	}
	if len(out.Allow) == 0 {
		out.Mode = sandbox.NetworkNone // nothing allowed: none, as msb reports it
		out.Strict, out.Deny = false, nil
	}
	return out, nil
}

// PolicyRule is one rule of a spec's network policy, as upstream's
// NetworkPolicy serialises it.
type PolicyRule struct {
	Direction   string                     `json:"direction"`
	Destination map[string]json.RawMessage `json:"destination"`
	Protocols   []string                   `json:"protocols"`
	Ports       []struct {
		Start uint16 `json:"start"`
		End   uint16 `json:"end"`
	} `json:"ports"`
	Action string `json:"action"`
}

// targets renders r as msb's rule targets ("[tcp|udp] DEST[:PORTS]"), or
// nil for a deny that msb makes anyway.
func (r PolicyRule) targets(field string) ([]string, error) {
	switch r.Action {
	case "allow", "deny":
	default:
		return nil, invalidConfig(field+".action", "%.32q is not one of allow, deny", r.Action)
	}
	switch r.Direction {
	case "egress", "any":
	case "ingress":
		return nil, invalidConfig(field+".direction", "msb has no inbound rules: a sandbox is reached through its port forwards only")
	default:
		return nil, invalidConfig(field+".direction", "%.32q is not one of egress, ingress, any", r.Direction)
	}
	if len(r.Destination) != 1 {
		return nil, invalidConfig(field+".destination", "want one of any, cidr, domain, domain_suffix, group")
	}
	var dests []string
	for kind, raw := range r.Destination {
		var v string
		if kind != "any" {
			if err := json.Unmarshal(raw, &v); err != nil || v == "" {
				return nil, invalidConfig(field+".destination."+kind, "must be a string")
			}
		}
		switch kind {
		case "any":
			dests = []string{"*"}
		case "cidr", "domain":
			dests = []string{v}
		case "domain_suffix":
			v = strings.TrimPrefix(v, ".")
			dests = []string{v, "*." + v}
		case "group":
			switch v {
			case "public":
				dests = []string{"*"}
			case "loopback", "private", "link_local", "metadata", "multicast", "host":
				if r.Action == "deny" {
					return nil, nil // refused to every sandbox already
				}
				return nil, invalidConfig(field+".destination.group", "msb never lets a sandbox reach %s destinations (only the server's operator can exempt some, in config.toml)", v)
			default:
				return nil, invalidConfig(field+".destination.group", "%.32q is not one of public, loopback, private, link_local, metadata, multicast, host", v)
			}
		default:
			return nil, invalidConfig(field+".destination", "%.32q is not one of any, cidr, domain, domain_suffix, group", kind)
		}
	}
	proto := ""
	switch len(r.Protocols) {
	case 0:
	case 1:
		switch r.Protocols[0] {
		case "tcp", "udp":
			proto = r.Protocols[0] + " "
		case "icmpv4", "icmpv6":
			if r.Action == "deny" {
				return nil, nil // msb carries no ICMP
			}
			return nil, invalidConfig(field+".protocols", "msb carries TCP and UDP only: a sandbox cannot ping")
		default:
			return nil, invalidConfig(field+".protocols", "%.32q is not one of tcp, udp, icmpv4, icmpv6", r.Protocols[0])
		}
	default:
		// Both TCP and UDP: a rule of each. ICMP beside them is refused
		// as above.
		var out []string
		for _, p := range r.Protocols {
			one := r
			one.Protocols = []string{p}
			t, err := one.targets(field)
			if err != nil {
				return nil, err
			}
			out = append(out, t...)
		}
		return out, nil
	}
	ports := ""
	for i, p := range r.Ports {
		if p.Start == 0 || p.End < p.Start {
			return nil, invalidConfig(fmt.Sprintf("%s.ports[%d]", field, i), "want 1 <= start <= end <= 65535")
		}
		if i > 0 {
			ports += ","
		}
		if p.Start == p.End {
			ports += strconv.Itoa(int(p.Start))
		} else {
			ports += fmt.Sprintf("%d-%d", p.Start, p.End)
		}
	}
	out := make([]string, 0, len(dests))
	for _, d := range dests {
		t := proto + d
		if ports != "" {
			if strings.Contains(d, ":") {
				t = proto + "[" + d + "]" // an IPv6 address or CIDR
			}
			t += ":" + ports
		}
		out = append(out, t)
	}
	return out, nil
}

// specOf is the spec a sandbox object echoes: the config as msb runs it,
// in the create body's shape. It holds no secret (msb refuses secrets
// and registry credentials at create).
func specOf(name string, c sandbox.Config, netOn bool) Spec {
	img, _ := json.Marshal(Image{Type: "oci", Reference: c.Image})
	s := Spec{
		Name: name, Image: img,
		Resources: Resources{VCPUs: c.CPUs, MemoryMiB: c.Memory, DiskSizeMiB: optInt(c.Disk)},
		Runtime: Runtime{Workdir: optString(c.Workdir), Shell: optString(c.Shell), Scripts: c.Scripts,
			User: optString(c.User)},
		Env: []EnvVar{}, Labels: c.Labels, Rlimits: []Rlimit{}, Mounts: []json.RawMessage{}, Patches: []json.RawMessage{},
		Network:    &Network{Enabled: netOn, Strict: netOn},
		Init:       json.RawMessage("null"),
		PullPolicy: "if_missing", SecurityProfile: "default",
		Lifecycle: &Lifecycle{Ephemeral: c.Ephemeral},
	}
	if s.Runtime.Scripts == nil {
		s.Runtime.Scripts = map[string]string{}
	}
	if s.Labels == nil {
		s.Labels = map[string]string{}
	}
	switch {
	case len(c.Command) > 0:
		s.Runtime.Entrypoint = c.Command
	case c.Exec != "": // a JSON-RPC sandbox's background command
		shell := c.Shell
		if shell == "" {
			shell = sandbox.DefaultShell
		}
		s.Runtime.Entrypoint = []string{shell, "-c", c.Exec}
	}
	for _, kv := range c.Envs {
		k, v, _ := strings.Cut(kv, "=")
		s.Env = append(s.Env, EnvVar{Key: k, Value: v})
	}
	for _, r := range c.Rlimits {
		s.Rlimits = append(s.Rlimits, Rlimit{Resource: r.Resource, Soft: r.Soft, Hard: r.Hard})
	}
	for _, v := range c.Volumes {
		// Volume mounts are always nosuid and nodev; the sandbox sees
		// the host's owners and modes (no stat virtualization), and
		// what it creates is the host's as it is (mirror).
		m, _ := json.Marshal(NamedMount{Type: "named", Name: v.Host, Guest: v.Guest, StatVirtualization: "off", HostPermissions: "mirror",
			Options: MountOptions{ReadOnly: v.ReadOnly, NoSuid: true, NoDev: true}})
		s.Mounts = append(s.Mounts, m)
	}
	for _, t := range c.Tmpfs {
		tm := TmpfsMount{Type: "tmpfs", Guest: t.Guest, Options: MountOptions{NoSuid: true, NoDev: true}}
		if t.SizeMiB > 0 {
			tm.SizeMiB = &t.SizeMiB
		}
		m, _ := json.Marshal(tm)
		s.Mounts = append(s.Mounts, m)
	}
	if c.MaxDuration > 0 {
		v := uint64(c.MaxDuration / time.Second)
		s.Lifecycle.MaxDurationSecs = &v
	}
	if c.IdleTimeout > 0 {
		v := uint64(c.IdleTimeout / time.Second)
		s.Lifecycle.IdleTimeoutSecs = &v
	}
	return s
}
