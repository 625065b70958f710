package rpc

import (
	"context"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/msb-dev/msb/auth"
	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox"
)

// SandboxMethods returns the sandbox.* methods of docs/api.md, served by m.
func SandboxMethods(m sandbox.Manager) Methods {
	return Methods{
		"sandbox.start": Method[startParams]{Scope: auth.ScopeSandboxCreate, Changes: true, Start: true, Target: TargetSandbox,
			Handle: func(ctx context.Context, c *Call, p startParams) (any, error) { return start(ctx, m, c, p) }},
		"sandbox.stop": Method[Ref]{Scope: auth.ScopeSandboxDelete, Changes: true, Target: TargetSandbox,
			Handle: func(ctx context.Context, c *Call, p Ref) (any, error) { return stop(ctx, m, c) }},
		"sandbox.metrics.get": Method[Ref]{Scope: auth.ScopeSandboxRead, Target: TargetNamespaceOrAll,
			Handle: func(ctx context.Context, c *Call, p Ref) (any, error) { return metrics(ctx, m, c) }},
		"sandbox.repl.run": Method[replParams]{Scope: auth.ScopeSandboxExec, Changes: true, Target: TargetSandbox,
			Handle: func(ctx context.Context, c *Call, p replParams) (any, error) { return replRun(ctx, m, c, p) }},
		"sandbox.command.run": Method[commandParams]{Scope: auth.ScopeSandboxExec, Changes: true, Target: TargetSandbox,
			Handle: func(ctx context.Context, c *Call, p commandParams) (any, error) { return commandRun(ctx, m, c, p) }},
		// Changing what a sandbox may reach is starting it with another
		// config, as far as rights go.
		"sandbox.network.update": Method[networkParams]{Scope: auth.ScopeSandboxCreate, Changes: true, Target: TargetSandbox,
			Handle: func(ctx context.Context, c *Call, p networkParams) (any, error) { return networkUpdate(ctx, m, c, p) }},
	}
}

// Config is sandbox.start's config as the wire carries it.
type Config struct {
	Image     string            `json:"image,omitempty"`
	Memory    int               `json:"memory,omitempty"` // MiB
	CPUs      int               `json:"cpus,omitempty"`
	Disk      int               `json:"disk,omitempty"`    // MiB
	Volumes   []string          `json:"volumes,omitempty"` // host:guest[:ro]
	Ports     []string          `json:"ports,omitempty"`   // host:guest
	Envs      []string          `json:"envs,omitempty"`
	DependsOn []string          `json:"depends_on,omitempty"`
	Workdir   string            `json:"workdir,omitempty"`
	Shell     string            `json:"shell,omitempty"`
	Scripts   map[string]string `json:"scripts,omitempty"`
	Exec      string            `json:"exec,omitempty"`
	Command   []string          `json:"command,omitempty"` // argv, instead of exec
	User      string            `json:"user,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
	Rlimits   []Rlimit          `json:"rlimits,omitempty"`
	Lifecycle *Lifecycle        `json:"lifecycle,omitempty"`
	Tmpfs     []Tmpfs           `json:"tmpfs,omitempty"`
	Network   *Network          `json:"network,omitempty"`
}

// Tmpfs is a memory-backed directory of a sandbox.
type Tmpfs struct {
	Path    string `json:"path"`
	SizeMiB int    `json:"size_mib,omitempty"` // 0: half the sandbox's memory
}

// Network is a sandbox's outbound network as the wire carries it (in
// sandbox.start's config and sandbox.network.update). Absent, or without
// "enabled" and anything else: the namespace's default (none unless the
// operator changed it).
type Network struct {
	// Enabled: true for network, false for none; absent with allow, deny,
	// strict or a limit given: true.
	Enabled *bool `json:"enabled,omitempty"`
	// Allow and Deny list destinations: "*.pypi.org:443", "203.0.113.0/24",
	// "tcp example.org:80,443", "*" (every public destination).
	Allow []string `json:"allow,omitempty"`
	Deny  []string `json:"deny,omitempty"`
	// Strict: nothing but Allow (and with no Allow, nothing), instead of
	// the namespace's default list when Allow is empty.
	Strict         bool  `json:"strict,omitempty"`
	MaxConnections int   `json:"max_connections,omitempty"`
	MaxBandwidth   int64 `json:"max_bandwidth,omitempty"` // bytes per second, each way
}

func (n *Network) domain() sandbox.Network {
	if n == nil {
		return sandbox.Network{}
	}
	d := sandbox.Network{Allow: n.Allow, Deny: n.Deny, Strict: n.Strict, MaxConnections: n.MaxConnections, MaxBandwidth: n.MaxBandwidth}
	switch {
	case n.Enabled == nil:
	case *n.Enabled:
		d.Mode = sandbox.NetworkOn
	default:
		d.Mode = sandbox.NetworkNone
	}
	return d
}

// wireNetwork is the wire form of a sandbox's network.
func wireNetwork(n sandbox.Network) Network {
	on := n.Mode == sandbox.NetworkOn
	return Network{Enabled: &on, Allow: n.Allow, Deny: n.Deny, Strict: n.Strict, MaxConnections: n.MaxConnections, MaxBandwidth: n.MaxBandwidth}
}

// Rlimit is a resource limit of every process of a sandbox.
type Rlimit struct {
	Resource string `json:"resource"`
	Soft     uint64 `json:"soft"`
	Hard     uint64 `json:"hard"`
}

// Lifecycle bounds a sandbox's life, in the v1 API's terms.
type Lifecycle struct {
	Ephemeral       bool    `json:"ephemeral"`
	MaxDurationSecs float64 `json:"max_duration_secs"`
	IdleTimeoutSecs float64 `json:"idle_timeout_secs"`
}

// seconds converts a non-negative number of seconds of field.
func seconds(field string, s float64) (time.Duration, error) {
	if math.IsNaN(s) || s < 0 || s > sandbox.MaxLifetime.Seconds() {
		return 0, errdefs.Invalidf("config.lifecycle.%s %v is out of range: use 0 (none) to %d", field, s, int64(sandbox.MaxLifetime.Seconds()))
	}
	return time.Duration(s * float64(time.Second)), nil
}

// domain maps the wire config onto the domain's. Errors are of class
// Invalid and name the field.
func (c Config) domain() (sandbox.Config, error) {
	d := sandbox.Config{Image: c.Image, Memory: c.Memory, CPUs: c.CPUs, Disk: c.Disk, Envs: c.Envs, DependsOn: c.DependsOn,
		Workdir: c.Workdir, Shell: c.Shell, Scripts: c.Scripts, Exec: c.Exec, Command: c.Command, User: c.User, Labels: c.Labels,
		Network: c.Network.domain()}
	for _, l := range c.Rlimits {
		d.Rlimits = append(d.Rlimits, sandbox.Rlimit{Resource: l.Resource, Soft: l.Soft, Hard: l.Hard})
	}
	for _, t := range c.Tmpfs {
		d.Tmpfs = append(d.Tmpfs, sandbox.Tmpfs{Guest: t.Path, SizeMiB: t.SizeMiB})
	}
	if l := c.Lifecycle; l != nil {
		var err error
		d.Ephemeral = l.Ephemeral
		if d.MaxDuration, err = seconds("max_duration_secs", l.MaxDurationSecs); err != nil {
			return sandbox.Config{}, err
		}
		if d.IdleTimeout, err = seconds("idle_timeout_secs", l.IdleTimeoutSecs); err != nil {
			return sandbox.Config{}, err
		}
	}
	for _, s := range c.Volumes {
		v, err := sandbox.ParseVolume(s)
		if err != nil {
			return sandbox.Config{}, errdefs.Invalidf("config.volumes: %v", err)
		}
		d.Volumes = append(d.Volumes, v)
	}
	for _, s := range c.Ports {
		p, err := sandbox.ParsePort(s)
		if err != nil {
			return sandbox.Config{}, errdefs.Invalidf("config.ports: %v", err)
		}
		d.Ports = append(d.Ports, p)
	}
	return d, nil
}

type startParams struct {
	Ref
	Config *Config `json:"config"`
}

func start(ctx context.Context, m sandbox.Manager, c *Call, p startParams) (any, error) {
	var cfg *sandbox.Config
	if p.Config != nil {
		d, err := p.Config.domain()
		if err != nil {
			return nil, err
		}
		cfg = &d
	}
	if err := m.Start(ctx, c.ID, cfg); err != nil {
		return nil, err
	}
	return fmt.Sprintf("Sandbox %s started successfully", c.ID.Name()), nil
}

func stop(ctx context.Context, m sandbox.Manager, c *Call) (any, error) {
	if err := m.Stop(ctx, c.ID); err != nil {
		return nil, err
	}
	return fmt.Sprintf("Sandbox %s stopped successfully", c.ID.Name()), nil
}

// SandboxMetrics is one sandbox's entry in sandbox.metrics.get. The
// pointers are null for a sandbox that is not running.
type SandboxMetrics struct {
	Namespace   string   `json:"namespace"`
	Name        string   `json:"name"`
	Running     bool     `json:"running"`
	CPUUsage    *float64 `json:"cpu_usage"`
	MemoryUsage *int64   `json:"memory_usage"`
	DiskUsage   *int64   `json:"disk_usage"`
	// Network is there only for a running sandbox with network.
	Network *NetworkMetrics `json:"network,omitempty"`
}

// NetworkMetrics are a running sandbox's network counters since it
// started.
type NetworkMetrics struct {
	Connections uint64 `json:"connections"` // TCP connections and UDP flows made for it
	Active      int64  `json:"active"`      // of them, open now
	Denied      uint64 `json:"denied"`      // refused: connections, datagrams, DNS names
	BytesIn     uint64 `json:"bytes_in"`    // to the sandbox
	BytesOut    uint64 `json:"bytes_out"`   // from the sandbox
	DNSQueries  uint64 `json:"dns_queries"`
}

// MetricsResult is the result of sandbox.metrics.get. Quotas is msb's:
// the usage and quota of each namespace listed (of the one asked for,
// even with no sandbox in it).
type MetricsResult struct {
	Sandboxes []SandboxMetrics `json:"sandboxes"`
	Quotas    []NamespaceQuota `json:"quotas"`
	// Pool is the server's warm pool, by image: listed for namespace
	// "*" only (a key of every namespace), since it is no tenant's.
	Pool []PoolMetrics `json:"pool,omitempty"`
}

// PoolMetrics is the warm pool of one image.
type PoolMetrics struct {
	Image     string `json:"image"`
	Size      int    `json:"size"`
	MemoryMiB int    `json:"memory_mib"`
	Waiting   int    `json:"waiting"`
	Starting  int    `json:"starting"`
}

// NamespaceQuota is what the running sandboxes of a namespace hold
// together against its quota.
type NamespaceQuota struct {
	Namespace string     `json:"namespace"`
	Sandboxes QuotaValue `json:"sandboxes"`
	MemoryMiB QuotaValue `json:"memory_mib"`
	CPUs      QuotaValue `json:"cpus"`
	DiskMiB   QuotaValue `json:"disk_mib"`
}

// QuotaValue is one quantity in use and its bound; Limit is null when
// there is none.
type QuotaValue struct {
	Used  int  `json:"used"`
	Limit *int `json:"limit"`
}

func quotaValue(used, limit int) QuotaValue {
	if limit <= 0 {
		return QuotaValue{Used: used}
	}
	return QuotaValue{Used: used, Limit: &limit}
}

func metrics(ctx context.Context, m sandbox.Manager, c *Call) (any, error) {
	var list []sandbox.Metrics
	if !c.ID.IsZero() {
		one, err := m.SandboxMetrics(ctx, c.ID)
		if err != nil {
			return nil, err
		}
		list = []sandbox.Metrics{one}
	} else {
		// c.Namespace, not the params': "*" was narrowed to the key's namespace.
		var err error
		if list, err = m.Metrics(ctx, c.Namespace); err != nil {
			return nil, err
		}
	}
	out := MetricsResult{Sandboxes: make([]SandboxMetrics, 0, len(list)), Quotas: []NamespaceQuota{}}
	var namespaces []string
	if c.Namespace != "*" {
		namespaces = append(namespaces, c.Namespace)
	}
	for _, s := range list {
		sm := SandboxMetrics{Namespace: s.ID.Namespace(), Name: s.ID.Name(), Running: s.Running,
			CPUUsage: s.CPUUsage, MemoryUsage: s.MemoryUsage, DiskUsage: s.DiskUsage}
		if n := s.Network; n != nil {
			sm.Network = &NetworkMetrics{Connections: n.Connections, Active: n.Active, Denied: n.Denied,
				BytesIn: n.BytesIn, BytesOut: n.BytesOut, DNSQueries: n.DNSQueries}
		}
		out.Sandboxes = append(out.Sandboxes, sm)
		if !slices.Contains(namespaces, s.ID.Namespace()) {
			namespaces = append(namespaces, s.ID.Namespace())
		}
	}
	for _, ns := range namespaces {
		u, q := m.Usage(ns)
		out.Quotas = append(out.Quotas, NamespaceQuota{Namespace: ns, Sandboxes: quotaValue(u.Sandboxes, q.Sandboxes),
			MemoryMiB: quotaValue(u.MemoryMiB, q.MemoryMiB), CPUs: quotaValue(u.CPUs, q.CPUs), DiskMiB: quotaValue(u.DiskMiB, q.DiskMiB)})
	}
	if c.Namespace == "*" && c.ID.IsZero() {
		for _, p := range m.Pool() {
			out.Pool = append(out.Pool, PoolMetrics{Image: p.Image, Size: p.Size, MemoryMiB: p.MemoryMiB, Waiting: p.Waiting, Starting: p.Starting})
		}
	}
	return out, nil
}

type networkParams struct {
	Ref
	Network *Network `json:"network"`
}

// NetworkResult is the result of sandbox.network.update: the network the
// sandbox has now (or at its next start, when it is not running), with the
// namespace's defaults filled in.
type NetworkResult struct {
	Sandbox string  `json:"sandbox"`
	Running bool    `json:"running"` // the change took effect at once
	Network Network `json:"network"`
}

func networkUpdate(ctx context.Context, m sandbox.Manager, c *Call, p networkParams) (any, error) {
	if p.Network == nil {
		return nil, fmt.Errorf("%w: \"network\" is required, such as {\"enabled\": true, \"allow\": [\"*.pypi.org:443\"]}", errInvalidParams)
	}
	n := p.Network.domain()
	if n.Mode == sandbox.NetworkDefault {
		// An update says what the sandbox gets: {} or {"strict": false}
		// turns network on, as "enabled": true would.
		n.Mode = sandbox.NetworkOn
	}
	up, err := m.SetNetwork(ctx, c.ID, n)
	if err != nil {
		return nil, err
	}
	return NetworkResult{Sandbox: c.ID.Name(), Running: up.Running, Network: wireNetwork(up.Network)}, nil
}

// timeout converts the optional seconds param. Any positive number is
// taken (the upstream Go SDK sends nanoseconds: 30 s arrives as
// 30000000000); the service cuts one above the server's maximum to it.
func timeout(seconds *float64) (time.Duration, error) {
	if seconds == nil {
		return 0, nil
	}
	s := *seconds
	if math.IsNaN(s) || s <= 0 {
		return 0, fmt.Errorf("%w: \"timeout\" must be a number of seconds above 0 (longer than the server's maximum is cut to it)", errInvalidParams)
	}
	if s >= float64(math.MaxInt64)/float64(time.Second) {
		return math.MaxInt64, nil
	}
	return max(time.Duration(s*float64(time.Second)), 1), nil
}

// Language names clients send, and the interpreter each selects.
var languages = map[string]sandbox.Language{
	"python":     sandbox.Python,
	"nodejs":     sandbox.Node,
	"node":       sandbox.Node,
	"javascript": sandbox.Node,
}

// Line is one line of output as the wire carries it.
type Line struct {
	Stream string `json:"stream"`
	Text   string `json:"text"`
}

func lines(l []sandbox.Line) []Line {
	out := make([]Line, len(l))
	for i, x := range l {
		out[i] = Line{Stream: string(x.Stream), Text: x.Text}
	}
	return out
}

type replParams struct {
	Ref
	Language string   `json:"language"`
	Code     *string  `json:"code"`
	Timeout  *float64 `json:"timeout"`
}

// ReplResult is the result of sandbox.repl.run.
type ReplResult struct {
	Status   string `json:"status"`
	Language string `json:"language"`
	Output   []Line `json:"output"`
}

func replRun(ctx context.Context, m sandbox.Manager, c *Call, p replParams) (any, error) {
	lang, ok := languages[p.Language]
	if !ok {
		return nil, fmt.Errorf("%w: unsupported language %q: use python, nodejs, node or javascript", errInvalidParams, truncate(p.Language))
	}
	if p.Code == nil {
		return nil, fmt.Errorf("%w: \"code\" is required", errInvalidParams)
	}
	d, err := timeout(p.Timeout)
	if err != nil {
		return nil, err
	}
	res, err := m.RunCode(ctx, c.ID, lang, *p.Code, d)
	if err != nil {
		return nil, err
	}
	return ReplResult{Status: string(res.Status), Language: p.Language, Output: lines(res.Output)}, nil
}

type commandParams struct {
	Ref
	Command string   `json:"command"`
	Args    []string `json:"args"`
	Timeout *float64 `json:"timeout"`
}

// CommandResult is the result of sandbox.command.run.
type CommandResult struct {
	Command  string   `json:"command"`
	Args     []string `json:"args"`
	ExitCode int      `json:"exit_code"`
	Success  bool     `json:"success"`
	Output   []Line   `json:"output"`
}

func commandRun(ctx context.Context, m sandbox.Manager, c *Call, p commandParams) (any, error) {
	if p.Command == "" {
		return nil, fmt.Errorf("%w: \"command\" is required", errInvalidParams)
	}
	d, err := timeout(p.Timeout)
	if err != nil {
		return nil, err
	}
	if p.Args == nil {
		p.Args = []string{}
	}
	res, err := m.Exec(ctx, c.ID, sandbox.ExecRequest{Command: p.Command, Args: p.Args, Timeout: d})
	if err != nil {
		return nil, err
	}
	return CommandResult{Command: p.Command, Args: p.Args, ExitCode: res.ExitCode, Success: res.ExitCode == 0, Output: lines(res.Output)}, nil
}
