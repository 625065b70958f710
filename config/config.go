// Package config holds msb's settings and the layout of its home directory.
//
// Configuration flows one way: Default → the optional config file in the home
// (config.toml, decoded strictly: an unknown key is an error) → environment
// (MSB_HOST, MSB_PORT, ...) → command-line flags (applied by main) →
// Validate. The result is a plain struct handed to constructors; nothing in
// msb reads settings from globals.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/google/go-containerregistry/pkg/name"

	"github.com/msb-dev/msb/auth/ratelimit"
	"github.com/msb-dev/msb/duration"
	"github.com/msb-dev/msb/errdefs"
)

// Defaults of the settings a user is most likely to change.
const (
	DefaultHost = "127.0.0.1"
	DefaultPort = 5555
	// FileName is the config file inside the home.
	FileName = "config.toml"
)

// Config is the complete configuration of one msb home and server.
type Config struct {
	// Home is the state directory: $MSB_HOME, else ~/.microsandbox.
	Home string `toml:"-"`

	Host    string `toml:"host"`
	Port    int    `toml:"port"`
	Dev     bool   `toml:"-"` // only ever from the --dev flag, never persisted
	TLSCert string `toml:"tls_cert"`
	TLSKey  string `toml:"tls_key"`

	// Registries are the registries images may be pulled from ("host",
	// "host:port", "*.domain"); nil: the public ones. Loopback and private
	// addresses need a registry listed by its exact host.
	Registries []string `toml:"registries"`

	// Images maps image names used in sandbox.start to what they run:
	// "host" (the built-in image) or, later, an OCI image reference.
	Images map[string]string `toml:"images"`

	// Engine names the sandbox engine (see sandbox/engine); default "linux".
	Engine string `toml:"engine"`

	// Connections: at most MaxConnections open at once, and
	// MaxConnectionsPerAddress from one remote address; at most
	// MaxCallsPerKey calls of one API key at once.
	MaxConnections           int `toml:"max_connections"`
	MaxConnectionsPerAddress int `toml:"max_connections_per_address"`
	MaxCallsPerKey           int `toml:"max_calls_per_key"`
	// OutputMemory bounds, in MiB, the memory the output of calls under
	// way (commands, code, file reads) holds on the server, together.
	OutputMemory int `toml:"output_memory"`

	// Per sandbox: the most memory (MiB) and CPUs one may ask for; 0:
	// half the host's memory, and every CPU.
	MaxMemory int `toml:"max_memory"`
	MaxCPUs   int `toml:"max_cpus"`
	// DefaultDisk is the disk (MiB) of a sandbox whose config has none;
	// MaxDisk the most one may ask for (0: no bound but the host's free
	// space at its start).
	DefaultDisk int `toml:"default_disk"`
	MaxDisk     int `toml:"max_disk"`
	// TotalPids and TotalMemory (MiB) bound what all the server's
	// sandboxes hold together (ceilings on their parent cgroup); 0: three
	// quarters of the host's process table, and of its memory.
	TotalPids   int `toml:"total_pids"`
	TotalMemory int `toml:"total_memory"`
	// UserNamespaces runs every sandbox in a user namespace of its own,
	// its root an unprivileged range of host ids.
	UserNamespaces bool `toml:"user_namespaces"`
	// ReadyInits is how many sandbox inits wait spawned ahead, in fresh
	// namespaces and cgroups, for cold starts of any image; 0: every
	// start spawns its own.
	ReadyInits int `toml:"ready_inits"`
	// Quotas bound what each namespace's running sandboxes hold together.
	Quotas Quotas `toml:"quotas"`
	// Network is sandboxes' outbound network: defaults, ceilings per
	// namespace, and how msb reaches out for them.
	Network Network `toml:"network"`
	// Pool is the warm pool: sandboxes of some images started ahead of
	// time, so that a start takes one instead of starting one.
	Pool Pool `toml:"pool"`

	// Sandbox defaults.
	SandboxPids int `toml:"sandbox_pids"`
	// MaxTimeout is the longest timeout a command or evaluation may have
	// (a duration such as "24h"); a longer one is cut to it.
	MaxTimeout string `toml:"max_timeout"`

	// VolumeRoots are the host directories sandboxes' volumes may come
	// from; namespace ns gets <root>/<ns> of each. Default: <home>/volumes.
	VolumeRoots []string `toml:"volume_roots"`
	// PortBind is the address port forwards listen on; empty: 127.0.0.1.
	PortBind string `toml:"port_bind_address"`
	// AllowPrivilegedPorts lets port forwards use host ports below 1024.
	AllowPrivilegedPorts bool `toml:"allow_privileged_ports"`

	// API keys: the default rate limits of keys made without --rate or
	// --start-rate (specs such as "600/m"), and how long audit events are
	// kept (a duration such as "90d").
	RateLimit      string `toml:"rate_limit"`
	StartRateLimit string `toml:"start_rate_limit"`
	AuditRetention string `toml:"audit_retention"`
}

// Quota bounds what the running sandboxes of one namespace hold together;
// 0: no bound.
type Quota struct {
	Sandboxes int `toml:"sandboxes"`
	Memory    int `toml:"memory"` // MiB
	CPUs      int `toml:"cpus"`
	Disk      int `toml:"disk"` // MiB
}

// Quotas are the quota of every namespace, and of some namespaces their own.
type Quotas struct {
	Quota
	Namespaces map[string]Quota `toml:"namespaces"`
}

// Of returns the quota of namespace ns.
func (q Quotas) Of(ns string) Quota {
	if own, ok := q.Namespaces[ns]; ok {
		return own
	}
	return q.Quota
}

// Pool is the [pool] table: how many sandboxes wait started for each
// image, and the memory they may hold together.
type Pool struct {
	// Enabled turns the warm pool on (default true); false: every start
	// starts its sandbox.
	Enabled bool `toml:"enabled"`
	// Memory bounds, in MiB, the memory all waiting sandboxes hold
	// together: each waits with a memory limit of Memory divided by the
	// number of sandboxes in Images (a start that takes one gives it its
	// own limit). Waiting sandboxes belong to no namespace, so no quota
	// counts them; a taken one counts against its namespace's.
	Memory int `toml:"memory"`
	// Images are how many sandboxes wait for each image, by the name a
	// sandbox config gives ("microsandbox/python"); 0 or absent: starts
	// of that image are cold. A file's [pool.images] replaces the
	// default table.
	Images map[string]int `toml:"images"`
}

// DefaultReadyInits and MaxReadyInits are ready_inits' default and bound.
const (
	DefaultReadyInits = 2
	MaxReadyInits     = 64
)

// Defaults of the warm pool: a small pool for the default image only.
const (
	DefaultPoolImage     = "microsandbox/python"
	DefaultPoolSandboxes = 2
	DefaultPoolMemory    = 128 // MiB: 64 for each waiting sandbox
	// MinPoolShare is the least memory (MiB) a waiting sandbox may get,
	// the least any sandbox may have (sandbox.MinMemory).
	MinPoolShare = 32
	// MaxPoolSandboxes bounds the sandboxes waiting in all pools.
	MaxPoolSandboxes = 1000
)

// DefaultPoolImages is the pool table of a config that sets none.
func DefaultPoolImages() map[string]int {
	return map[string]int{DefaultPoolImage: DefaultPoolSandboxes}
}

// Sandboxes is the number of sandboxes that wait in all pools (0 when
// the pool is off).
func (p Pool) Sandboxes() int {
	if !p.Enabled {
		return 0
	}
	n := 0
	for _, k := range p.Images {
		n += max(k, 0)
	}
	return n
}

// Share is the memory limit (MiB) of each waiting sandbox: Memory split
// evenly; 0 when no sandbox waits.
func (p Pool) Share() int {
	if n := p.Sandboxes(); n > 0 {
		return p.Memory / n
	}
	return 0
}

func (p Pool) validate() error {
	for ref, n := range p.Images {
		if ref == "" || n < 0 {
			return fmt.Errorf("%w: pool.images: %q = %d: an image name and a number of sandboxes of 0 or more, such as \"microsandbox/python\" = 2", ErrInvalid, ref, n)
		}
	}
	if p.Memory < 0 {
		return fmt.Errorf("%w: pool.memory %d must be 0 or more MiB", ErrInvalid, p.Memory)
	}
	n := p.Sandboxes()
	if n == 0 {
		return nil
	}
	if n > MaxPoolSandboxes {
		return fmt.Errorf("%w: pool.images: %d sandboxes in all, more than %d: make the pools smaller", ErrInvalid, n, MaxPoolSandboxes)
	}
	if p.Share() < MinPoolShare {
		return fmt.Errorf("%w: pool.memory %d MiB for %d waiting sandboxes is %d MiB each, less than the %d a sandbox needs: set pool.memory to at least %d, or make the pools smaller",
			ErrInvalid, p.Memory, n, p.Share(), MinPoolShare, n*MinPoolShare)
	}
	return nil
}

// Network is the [network] table: what sandboxes' outbound network may be,
// for every namespace ([network]) and for some their own
// ([network.namespaces.NAME], whose unset settings are those of
// [network]), and how msb dials and resolves for them. Rule lists are
// destinations as sandbox configs write them ("*.pypi.org:443",
// "203.0.113.0/24"); the server checks them when it starts.
type Network struct {
	NetworkSettings
	// DNS are the servers ("ip" or "ip:port") that answer sandboxes' DNS
	// through msb; none: the host's resolver (/etc/resolv.conf).
	DNS []string `toml:"dns"`
	// Interface, if set, binds every connection msb makes for a sandbox
	// to this network device.
	Interface  string                     `toml:"interface"`
	Namespaces map[string]NetworkSettings `toml:"namespaces"`
}

// NetworkSettings are the network settings of a namespace; nil is unset.
type NetworkSettings struct {
	// Permitted lets sandboxes have network at all (default true).
	Permitted *bool `toml:"permitted"`
	// DefaultEnabled gives network to sandboxes whose config does not
	// say (default false: none).
	DefaultEnabled *bool `toml:"default_enabled"`
	// Allow is the ceiling: what any sandbox's rules may allow (default
	// ["*"], every public destination).
	Allow *[]string `toml:"allow"`
	// DefaultAllow is what a sandbox asking for network without rules
	// reaches (default: Allow; a namespace that sets its own Allow and no
	// DefaultAllow gets its own Allow, not [network]'s DefaultAllow).
	DefaultAllow *[]string `toml:"default_allow"`
	// Deny are destinations refused to every sandbox, whatever its rules
	// (the operator's own public networks, say).
	Deny *[]string `toml:"deny"`
	// Exempt are private, loopback, link-local or this host's addresses
	// (CIDRs with optional ports) sandboxes may reach when their rules
	// allow them; nothing else ever opens those.
	Exempt *[]string `toml:"exempt"`
	// MaxConnections per sandbox (default DefaultNetworkConnections) and
	// MaxBandwidth in bytes per second each way (default 0): a sandbox's
	// caps, and the most it may ask for; 0: no cap.
	MaxConnections *int   `toml:"max_connections"`
	MaxBandwidth   *int64 `toml:"max_bandwidth"`
}

// DefaultNetworkConnections is a sandbox's cap of connections open at
// once unless config.toml sets another.
const DefaultNetworkConnections = 64

// NetworkBounds are the network settings of one namespace, resolved:
// its own, else those of [network], else the defaults.
type NetworkBounds struct {
	Permitted, DefaultEnabled         bool
	Allow, DefaultAllow, Deny, Exempt []string // Allow nil: every public destination
	MaxConnections                    int
	MaxBandwidth                      int64
}

// Of returns the network settings of namespace ns.
func (n Network) Of(ns string) NetworkBounds {
	b := NetworkBounds{Permitted: true, MaxConnections: DefaultNetworkConnections}
	for i, s := range []NetworkSettings{n.NetworkSettings, n.Namespaces[ns]} {
		if i == 1 && s.Allow != nil && s.DefaultAllow == nil {
			// A namespace's own ceiling makes its own default: [network]'s
			// default list may not fit within it.
			b.DefaultAllow = nil
		}
		if s.Permitted != nil {
			b.Permitted = *s.Permitted
		}
		if s.DefaultEnabled != nil {
			b.DefaultEnabled = *s.DefaultEnabled
		}
		if s.Allow != nil {
			b.Allow = append([]string{}, *s.Allow...)
		}
		if s.DefaultAllow != nil {
			b.DefaultAllow = append([]string{}, *s.DefaultAllow...)
		}
		if s.Deny != nil {
			b.Deny = append([]string{}, *s.Deny...)
		}
		if s.Exempt != nil {
			b.Exempt = append([]string{}, *s.Exempt...)
		}
		if s.MaxConnections != nil {
			b.MaxConnections = *s.MaxConnections
		}
		if s.MaxBandwidth != nil {
			b.MaxBandwidth = *s.MaxBandwidth
		}
	}
	return b
}

// DNSServers returns the DNS servers as addresses with ports (53 unless
// given); call it after Validate.
func (n Network) DNSServers() []netip.AddrPort {
	var out []netip.AddrPort
	for _, s := range n.DNS {
		out = append(out, parseDNSServer(s))
	}
	return out
}

func parseDNSServer(s string) netip.AddrPort {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.AddrPortFrom(a, 53)
	}
	return netip.AddrPort{}
}

// Defaults of the key limits, the audit log and calls.
const (
	DefaultMaxTimeout     = "24h"
	DefaultRateLimit      = "600/m"
	DefaultStartRateLimit = "60/m"
	DefaultAuditRetention = "90d"
)

// Rates returns the default rate limits; call it after Validate.
func (c *Config) Rates() (rate, start ratelimit.Rate) {
	rate, _ = ratelimit.Parse(c.RateLimit)
	start, _ = ratelimit.Parse(c.StartRateLimit)
	return rate, start
}

// CallTimeout returns the longest timeout of a call; call it after Validate.
func (c *Config) CallTimeout() time.Duration {
	d, _ := duration.Parse(c.MaxTimeout)
	return d
}

// Retention returns how long audit events are kept; call it after Validate.
func (c *Config) Retention() time.Duration {
	d, _ := duration.Parse(c.AuditRetention)
	return d
}

// ErrInvalid is wrapped by every error Validate and Load return for bad settings.
var ErrInvalid = errdefs.New(errdefs.Invalid, "invalid configuration")

// DefaultImages is the alias table written into a new config file: the SDKs'
// default images run on the built-in host image until OCI images are set.
func DefaultImages() map[string]string {
	return map[string]string{
		"microsandbox/python": "host",
		"microsandbox/node":   "host",
	}
}

// Default returns the built-in configuration for the given home.
func Default(home string) Config {
	return Config{
		Home:        home,
		Host:        DefaultHost,
		Port:        DefaultPort,
		Images:      DefaultImages(),
		Engine:      "linux",
		SandboxPids: 1024,
		DefaultDisk: 2048,

		UserNamespaces: true,
		ReadyInits:     DefaultReadyInits,

		MaxConnections:           8192,
		MaxConnectionsPerAddress: 512,
		MaxCallsPerKey:           32,
		OutputMemory:             512,
		MaxTimeout:               DefaultMaxTimeout,

		Pool: Pool{Enabled: true, Memory: DefaultPoolMemory, Images: DefaultPoolImages()},

		RateLimit:      DefaultRateLimit,
		StartRateLimit: DefaultStartRateLimit,
		AuditRetention: DefaultAuditRetention,
	}
}

// HomeFromEnv returns $MSB_HOME, else ~/.microsandbox.
func HomeFromEnv() (string, error) {
	if h := os.Getenv("MSB_HOME"); h != "" {
		return filepath.Abs(h)
	}
	dir, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("find home directory (set MSB_HOME): %w", err)
	}
	return filepath.Join(dir, ".microsandbox"), nil
}

// Load builds the configuration of home: defaults, then the config file if
// it exists, then the environment. Flags are applied by the caller, which
// then calls Validate. Errors wrap ErrInvalid for bad content.
func Load(home string) (Config, error) {
	c := Default(home)
	if err := c.loadFile(); err != nil {
		return c, err
	}
	if err := c.loadEnv(os.Getenv); err != nil {
		return c, err
	}
	return c, nil
}

func (c *Config) loadFile() error {
	path := c.Path(FileName)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	// The file's table replaces the defaults', so an operator can remove
	// an alias; a file without one keeps them.
	c.Images = nil
	c.Pool.Images = nil // the same for the pool's table
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(c)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrInvalid, path, err)
	}
	if !md.IsDefined("pool", "images") {
		c.Pool.Images = DefaultPoolImages()
	}
	if !md.IsDefined("images") {
		c.Images = DefaultImages()
	} else if md.Type("images") != "Hash" {
		return fmt.Errorf("%w: %s: images must be a table of aliases, such as [images] \"microsandbox/python\" = \"host\"", ErrInvalid, path)
	}
	if err := checkAliases(path, data, c.Images); err != nil {
		return err
	}
	if undecoded := md.Undecoded(); len(undecoded) > 0 {
		keys := make([]string, len(undecoded))
		for i, k := range undecoded {
			keys[i] = k.String()
		}
		return fmt.Errorf("%w: %s: unknown setting %s", ErrInvalid, path, strings.Join(keys, ", "))
	}
	if c.Images == nil {
		c.Images = map[string]string{}
	}
	return nil
}

// settings are the names of the top-level settings of config.toml.
func settings() map[string]bool {
	out := map[string]bool{}
	t := reflect.TypeOf(Config{})
	for i := range t.NumField() {
		if name, _, _ := strings.Cut(t.Field(i).Tag.Get("toml"), ","); name != "" && name != "-" && name != "images" {
			out[name] = true
		}
	}
	return out
}

// checkAliases refuses image aliases that are not: a setting written after
// the [images] table (TOML puts it inside the table), or a value that is
// no image reference. The error names the line, so that the operator can
// move it above [images] or fix it.
func checkAliases(path string, data []byte, aliases map[string]string) error {
	known := settings()
	names := slices.Sorted(maps.Keys(aliases))
	for _, alias := range names {
		target := aliases[alias]
		why := ""
		switch {
		case known[alias]:
			why = fmt.Sprintf("%q is a setting, but it is inside the [images] table, where it would be an image alias: move it above [images]", alias)
		case target != "host" && !validImageRef(target):
			why = fmt.Sprintf("image alias %q maps to %q, which is not an image reference (such as \"host\" or \"python:3.12-slim\")", alias, target)
		default:
			continue
		}
		where := path
		if n := aliasLine(data, alias); n > 0 {
			where = fmt.Sprintf("%s:%d", path, n)
		}
		return fmt.Errorf("%w: %s: %s", ErrInvalid, where, why)
	}
	return nil
}

// validImageRef reports whether s reads as an image reference.
func validImageRef(s string) bool {
	_, err := name.ParseReference(s)
	return err == nil
}

// aliasLine finds the line of key alias inside the file's [images] table
// (0 when it cannot tell).
func aliasLine(data []byte, alias string) int {
	in := false
	for i, line := range strings.Split(string(data), "\n") {
		l := strings.TrimSpace(line)
		if strings.HasPrefix(l, "[") {
			in = l == "[images]"
			continue
		}
		k, _, ok := strings.Cut(l, "=")
		if !in || !ok {
			continue
		}
		if k = strings.TrimSpace(k); k == alias || k == strconv.Quote(alias) || k == "'"+alias+"'" {
			return i + 1
		}
	}
	return 0
}

func (c *Config) loadEnv(getenv func(string) string) error {
	if v := getenv("MSB_HOST"); v != "" {
		c.Host = v
	}
	if v := getenv("MSB_PORT"); v != "" {
		p, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("%w: MSB_PORT=%q is not a port number", ErrInvalid, v)
		}
		c.Port = p
	}
	if v := getenv("MSB_TLS_CERT"); v != "" {
		c.TLSCert = v
	}
	if v := getenv("MSB_TLS_KEY"); v != "" {
		c.TLSKey = v
	}
	return nil
}

// Validate checks the settings together and says what to change.
// Errors wrap ErrInvalid.
func (c *Config) Validate() error {
	if c.Home == "" || !filepath.IsAbs(c.Home) {
		return fmt.Errorf("%w: home %q must be an absolute path", ErrInvalid, c.Home)
	}
	if c.Host == "" {
		return fmt.Errorf("%w: host is empty: use an address such as 127.0.0.1", ErrInvalid)
	}
	if c.Port < 0 || c.Port > 65535 {
		return fmt.Errorf("%w: port %d is out of range: use 1-65535 (or 0 for any free port)", ErrInvalid, c.Port)
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return fmt.Errorf("%w: --tls-cert and --tls-key must be given together", ErrInvalid)
	}
	if c.Dev && !IsLoopback(c.Host) {
		return fmt.Errorf("%w: --dev turns authentication off, so it only listens on a loopback address (127.0.0.1, ::1, localhost), not %q", ErrInvalid, c.Host)
	}
	for _, r := range c.VolumeRoots {
		if !filepath.IsAbs(r) || filepath.Clean(r) == "/" {
			return fmt.Errorf("%w: volume_roots: %q must be an absolute directory other than /", ErrInvalid, r)
		}
	}
	if c.PortBind != "" && net.ParseIP(c.PortBind) == nil && c.PortBind != "localhost" {
		return fmt.Errorf("%w: port_bind_address %q is not an IP address, such as 127.0.0.1", ErrInvalid, c.PortBind)
	}
	if c.MaxConnections < 16 || c.MaxConnectionsPerAddress < 1 || c.MaxConnectionsPerAddress > c.MaxConnections {
		return fmt.Errorf("%w: max_connections %d and max_connections_per_address %d: use at least 16, and at least 1 per address but no more than in all", ErrInvalid, c.MaxConnections, c.MaxConnectionsPerAddress)
	}
	if c.MaxMemory < 0 || c.MaxCPUs < 0 {
		return fmt.Errorf("%w: max_memory %d and max_cpus %d must be 0 (the host's) or more", ErrInvalid, c.MaxMemory, c.MaxCPUs)
	}
	if c.DefaultDisk < 64 || c.MaxDisk != 0 && c.MaxDisk < c.DefaultDisk {
		return fmt.Errorf("%w: default_disk %d MiB and max_disk %d MiB: use a default of at least 64, and a maximum of 0 (none) or at least the default", ErrInvalid, c.DefaultDisk, c.MaxDisk)
	}
	if c.ReadyInits < 0 || c.ReadyInits > MaxReadyInits {
		return fmt.Errorf("%w: ready_inits %d: use 0 (none) to %d", ErrInvalid, c.ReadyInits, MaxReadyInits)
	}
	if c.TotalPids != 0 && c.TotalPids < 64 || c.TotalPids < 0 {
		return fmt.Errorf("%w: total_pids %d: use 0 (three quarters of the host's process table) or at least 64", ErrInvalid, c.TotalPids)
	}
	if c.TotalPids > 0 && c.TotalPids < c.SandboxPids {
		return fmt.Errorf("%w: total_pids %d is below sandbox_pids %d: no sandbox could start; raise total_pids", ErrInvalid, c.TotalPids, c.SandboxPids)
	}
	if c.TotalMemory != 0 && c.TotalMemory < 64 || c.TotalMemory < 0 {
		return fmt.Errorf("%w: total_memory %d MiB: use 0 (three quarters of the host's memory) or at least 64", ErrInvalid, c.TotalMemory)
	}
	for ns, q := range c.Quotas.Namespaces {
		if !validNamespace(ns) {
			return fmt.Errorf("%w: quotas.namespaces: %q is not a namespace name", ErrInvalid, ns)
		}
		if q.Sandboxes < 0 || q.Memory < 0 || q.CPUs < 0 || q.Disk < 0 {
			return fmt.Errorf("%w: quotas.namespaces.%s: quotas must be 0 (no bound) or more", ErrInvalid, ns)
		}
	}
	if q := c.Quotas; q.Sandboxes < 0 || q.Memory < 0 || q.CPUs < 0 || q.Disk < 0 {
		return fmt.Errorf("%w: quotas: quotas must be 0 (no bound) or more", ErrInvalid)
	}
	if c.OutputMemory < 64 {
		return fmt.Errorf("%w: output_memory %d MiB: use at least 64 (two calls' output of 16 MiB, counted twice)", ErrInvalid, c.OutputMemory)
	}
	if err := c.Network.validate(); err != nil {
		return err
	}
	if err := c.Pool.validate(); err != nil {
		return err
	}
	if share := c.Pool.Share(); c.MaxMemory > 0 && share > c.MaxMemory {
		return fmt.Errorf("%w: pool.memory gives each waiting sandbox %d MiB, more than max_memory (%d MiB): lower pool.memory to at most %d", ErrInvalid, share, c.MaxMemory, c.MaxMemory*c.Pool.Sandboxes())
	}
	if c.MaxCallsPerKey < 1 {
		return fmt.Errorf("%w: max_calls_per_key %d: use at least 1", ErrInvalid, c.MaxCallsPerKey)
	}
	if c.Engine == "" {
		return fmt.Errorf("%w: engine is empty: use \"linux\"", ErrInvalid)
	}
	if c.SandboxPids < 16 {
		return fmt.Errorf("%w: sandbox_pids %d is too low: use at least 16", ErrInvalid, c.SandboxPids)
	}
	if _, err := ratelimit.Parse(c.RateLimit); err != nil {
		return fmt.Errorf("%w: rate_limit: %v", ErrInvalid, err)
	}
	if _, err := ratelimit.Parse(c.StartRateLimit); err != nil {
		return fmt.Errorf("%w: start_rate_limit: %v", ErrInvalid, err)
	}
	if _, err := duration.Parse(c.MaxTimeout); err != nil {
		return fmt.Errorf("%w: max_timeout: %v", ErrInvalid, err)
	}
	if _, err := duration.Parse(c.AuditRetention); err != nil {
		return fmt.Errorf("%w: audit_retention: %v", ErrInvalid, err)
	}
	for name, target := range c.Images {
		if name == "" || target == "" {
			return fmt.Errorf("%w: images: alias %q -> %q: both sides must be non-empty", ErrInvalid, name, target)
		}
	}
	return nil
}

// validate checks what config can check of [network]; the server checks
// its rules (sandbox.NetworkBounds.Check).
func (n Network) validate() error {
	for _, s := range n.DNS {
		if ap := parseDNSServer(s); !ap.IsValid() || ap.Port() == 0 || ap.Addr().Zone() != "" {
			return fmt.Errorf("%w: network.dns: %q is not an IP address with an optional port, such as 192.0.2.53 or [2001:db8::53]:53", ErrInvalid, s)
		}
	}
	if len(n.Interface) >= 16 || strings.ContainsAny(n.Interface, "/ \x00") {
		return fmt.Errorf("%w: network.interface: %q is not a network device name", ErrInvalid, n.Interface)
	}
	check := func(where string, s NetworkSettings) error {
		if s.MaxConnections != nil && *s.MaxConnections < 0 || s.MaxBandwidth != nil && *s.MaxBandwidth < 0 {
			return fmt.Errorf("%w: %s: max_connections and max_bandwidth must be 0 (no cap) or more", ErrInvalid, where)
		}
		return nil
	}
	if err := check("network", n.NetworkSettings); err != nil {
		return err
	}
	for ns, s := range n.Namespaces {
		if !validNamespace(ns) {
			return fmt.Errorf("%w: network.namespaces: %q is not a namespace name", ErrInvalid, ns)
		}
		if err := check("network.namespaces."+ns, s); err != nil {
			return err
		}
	}
	return nil
}

// validNamespace reports whether s is a namespace name (as the namespace
// package checks them; config stays below it).
func validNamespace(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for i, c := range s {
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || c != '-' && c != '_') {
			return false
		}
	}
	return true
}

// IsLoopback reports whether host names only the local machine.
func IsLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}

// Addr is the host:port the server listens on.
func (c *Config) Addr() string { return net.JoinHostPort(c.Host, strconv.Itoa(c.Port)) }

// Path returns the path of name inside the home.
func (c *Config) Path(name ...string) string {
	return filepath.Join(append([]string{c.Home}, name...)...)
}

// KeyPath is the signing key file (mode 0600).
func (c *Config) KeyPath() string { return c.Path("server.key") }

// DBPath is the SQLite database holding keys, sandboxes and audit events.
func (c *Config) DBPath() string { return c.Path("msb.db") }

// KeyChangesPath is appended to whenever a key's validity changes, so every
// msb process drops its cached view of the key registry.
func (c *Config) KeyChangesPath() string { return c.Path("keys.changed") }

// PidPath is the pid file of the running server.
func (c *Config) PidPath() string { return c.Path("server.pid") }

// StatePath describes the running server (address, pid, dev mode) for status.
func (c *Config) StatePath() string { return c.Path("server.json") }

// LockPath is held (flock) by the running server so a second one refuses to start.
func (c *Config) LockPath() string { return c.Path("server.lock") }

// LogDir holds the server log.
func (c *Config) LogDir() string { return c.Path("logs") }

// ImageDir holds pulled OCI images: their layers and records.
func (c *Config) ImageDir() string { return c.Path("images") }

// Volumes are the volume roots: VolumeRoots, else <home>/volumes.
func (c *Config) Volumes() []string {
	if len(c.VolumeRoots) > 0 {
		return c.VolumeRoots
	}
	return []string{c.Path("volumes")}
}

// SandboxDir holds one directory per sandbox: its writable root.
func (c *Config) SandboxDir() string { return c.Path("sandboxes") }

// EngineDir is the isolation engine's state directory.
func (c *Config) EngineDir() string { return c.Path("run", "engine") }

// SandboxLogDir holds the logs of sandboxes' exec and start scripts.
func (c *Config) SandboxLogDir() string { return c.Path("logs", "sandboxes") }

// EnsureHome creates the home directory (0700: it holds the signing key).
func (c *Config) EnsureHome() error {
	if err := os.MkdirAll(c.Home, 0o700); err != nil {
		return fmt.Errorf("create msb home: %w", err)
	}
	return os.Chmod(c.Home, 0o700)
}

const fileHeader = `# msb configuration. Settings here override the built-in defaults; the
# environment (MSB_HOST, MSB_PORT, ...) and command-line flags override this file.
# Unknown settings are an error, so a typo never goes unnoticed.

# host = "127.0.0.1"
# port = 5555

# The sandbox engine: "linux" (namespaces and cgroups).
# engine = "linux"

# Default rate limits of API keys made without --rate / --start-rate
# (calls per s, m, h or d; sandbox.start has its own, lower bucket), and how
# long audit events are kept.
# rate_limit = "600/m"
# start_rate_limit = "60/m"
# audit_retention = "90d"

# Connections open at once, in all and from one address, and calls of one
# API key under way at once; past them connections are closed at once and
# calls answered 429.
# max_connections = 8192
# max_connections_per_address = 512
# max_calls_per_key = 32

# The memory (MiB) the output of calls under way may hold on the server, all
# calls together (a call's output is at most 16 MiB, counted twice: as held
# and as encoded). A call that finds it in use has its output cut, and says so.
# output_memory = 512

# The longest timeout a command or code evaluation may ask for; a longer one
# (the Go SDK sends nanoseconds) is cut to it.
# max_timeout = "24h"

# Volumes ("host:guest[:ro]") come from <root>/<namespace> of these roots
# (default: <home>/volumes); a relative host path resolves in the first.
# volume_roots = ["/srv/msb-volumes"]
# Port forwards ("host:guest") listen on this address; host ports below
# 1024 need allow_privileged_ports.
# port_bind_address = "127.0.0.1"
# allow_privileged_ports = false

# The registries images may be pulled from: "host", "host:port" or
# "*.domain". Default: the public registries (docker.io, ghcr.io, quay.io,
# gcr.io, *.pkg.dev, registry.k8s.io, public.ecr.aws, mcr.microsoft.com,
# registry.gitlab.com). A pull never reaches a loopback, private or
# link-local address, nor this server's own, unless its host is listed here
# exactly, e.g. registries = ["docker.io", "registry.internal:5000"].
# registries = ["docker.io", "ghcr.io"]

# The most memory (MiB) and CPUs one sandbox may ask for (0: half the
# host's memory, every CPU).
# max_memory = 4096
# max_cpus = 2

# Each sandbox has a disk of its own (an ext4 image on a loop device) that
# holds all it writes outside volumes and tmpfs: its root's changes, /tmp,
# /workspace, /root. Past its size, or its inodes (64 per MiB), writes
# fail with ENOSPC inside the sandbox. Configs ask with "disk" (MiB); these
# are the size of a config that does not, and the most one may ask for
# (0: no bound). Images are sparse: only what is written takes host space.
# default_disk = 2048
# max_disk = 16384

# Every sandbox runs in a user namespace of its own: its root is root inside
# only, an unprivileged range of 65536 host ids outside (100000 + n*65536),
# and what it writes is owned on the host by that range. Volumes' files are
# owned from 100000 (root inside) up, and namespaces' volume roots are 0700.
# user_namespaces = true

# A sandbox's first start (any image, any config) takes an init spawned
# ahead: its first process, already in fresh namespaces and cgroups of its
# own, waiting for the sandbox it will build. It has run nothing but msb,
# goes to one start only, and each holds about 2 MiB while it waits (cgroup
# v1 hosts; on cgroup v2 every start spawns its own). 0 turns this off.
# ready_inits = 2

# Ceilings on what all sandboxes hold together, whatever their namespace:
# processes and threads, and memory (MiB), on their parent cgroup, so the
# host's process table and memory are never exhausted. A start is refused
# when the processes all sandboxes run, plus its own sandbox_pids, would
# pass total_pids. Keep each namespace's quotas.sandboxes x sandbox_pids
# under total_pids, so that no tenant's sandboxes forking at once can reach
# the ceiling. Memory past total_memory is reclaimed, then a process is
# OOM-killed. 0: three quarters of the host's process table (the lower of
# kernel.pid_max and kernel.threads-max), and of its memory.
# total_pids = 24576
# total_memory = 18000

# Quotas: what the running sandboxes of one namespace hold together (0: no
# bound); a start past one is refused, naming it. A table, so it must come
# after the settings above and before [images]:
# [quotas]
# sandboxes = 20
# memory = 16384    # MiB
# cpus = 8
# disk = 20480      # MiB
# [quotas.namespaces.team-a]
# sandboxes = 50

# Outbound network of sandboxes. A sandbox has none unless its config asks
# ("network": {"enabled": true, "allow": [...]}) or default_enabled says so;
# msb answers its DNS and dials each connection its rules allow. Loopback,
# private and link-local addresses (cloud metadata) and this host's own are
# always refused, unless listed in exempt. A table, like [quotas]:
# [network]
# permitted = true                 # may sandboxes have network at all
# default_enabled = false          # network for configs that do not say
# allow = ["*"]                    # the most any sandbox's rules may allow
# default_allow = ["*"]            # what "enabled" without "allow" reaches
# deny = ["198.51.100.0/24"]       # refused to every sandbox, whatever its rules
# exempt = ["10.1.2.3:5432"]       # private destinations sandboxes may reach
# max_connections = 64             # per sandbox: cap and most it may ask
# max_bandwidth = 0                # bytes/s each way per sandbox (0: none)
# dns = ["192.0.2.53"]             # upstream DNS (default: the host's)
# interface = "eth1"               # send sandboxes' traffic out of this device
# [network.namespaces.team-a]      # unset settings are [network]'s
# allow = ["pypi.org:443", "files.pythonhosted.org:443"]

# The warm pool: sandboxes started ahead of time for some images, so that a
# start of one of them takes a waiting sandbox (a few ms) instead of starting
# one. A waiting sandbox goes to one start only, gets that start's config
# (environment, limits, workdir, network, ports) when it is taken, and is
# deleted when it stops; a start with volumes, tmpfs mounts or another user
# starts cold. memory (MiB) bounds what all waiting sandboxes hold, split
# evenly between them. Default: 2 sandboxes of microsandbox/python in 128 MiB.
# enabled = false turns the pool off. A table, like [quotas]:
# [pool]
# enabled = true
# memory = 128
# [pool.images]
# "microsandbox/python" = 2

# Image aliases: the image names sandbox.start accepts, and what each runs.
# "host" is the built-in image: this machine's /usr, /bin and /lib, read-only,
# with a generated /etc. The SDKs' default images resolve to it. A target can
# also be an OCI image reference ("python:3.12-slim"), pulled on first use.
# Names without an alias are pulled as OCI images.
`

// WriteDefaultFile writes a commented config file with the default alias
// table if the home has none yet; it reports whether it wrote one.
func (c *Config) WriteDefaultFile() (bool, error) {
	path := c.Path(FileName)
	var buf bytes.Buffer
	buf.WriteString(fileHeader)
	if err := toml.NewEncoder(&buf).Encode(struct {
		Images map[string]string `toml:"images"`
	}{DefaultImages()}); err != nil {
		return false, fmt.Errorf("encode config: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("write config: %w", err)
	}
	if _, err := f.Write(buf.Bytes()); err != nil {
		f.Close()
		return false, fmt.Errorf("write config: %w", err)
	}
	return true, f.Close()
}
