package sandbox

import (
	"fmt"
	"maps"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/namespace"
)

// Config is how a sandbox is to run: the one domain form that every
// front-end maps its wire format onto, and that the store keeps in a
// record format of its own. Zero fields take the defaults (Normalize).
type Config struct {
	Image  string // image reference or alias; default DefaultImage
	Memory int    // MiB; default DefaultMemory
	CPUs   int    // default DefaultCPUs
	// Disk is the size in MiB of the sandbox's own file system, which
	// holds all it writes outside volumes and tmpfs (and 64 inodes per
	// MiB); default the server's (Bounds.DefaultDisk).
	Disk      int
	Volumes   []Volume
	Ports     []Port
	Envs      []string // KEY=VALUE
	DependsOn []string // sandboxes of the same namespace that must run first
	Workdir   string   // absolute; default the image's, else DefaultWorkdir
	Shell     string   // default DefaultShell
	Scripts   map[string]string
	Exec      string // run in the background at start, instead of Scripts["start"]

	// Command is run in the background at start, as an argv without a
	// shell (an image's entrypoint and cmd), instead of Exec.
	Command []string
	// User runs the sandbox's processes: a user of the image, or
	// uid[:gid]; "": the image's.
	User    string
	Rlimits []Rlimit          // of every process of the sandbox
	Labels  map[string]string // the client's, kept and filtered on
	Tmpfs   []Tmpfs           // memory-backed directories
	Lifecycle
	// Network is its outbound network; the zero value leaves it to the
	// namespace's default (none unless the operator changed it).
	Network Network
}

// Volume is a host directory (or file) inside the namespace's volume
// roots, bind-mounted into the sandbox.
type Volume struct {
	Host     string // relative to the namespace's first volume root, or absolute inside one of its roots
	Guest    string // absolute path inside the sandbox
	ReadOnly bool
}

// Overlapping returns the test of whether a volume mounts the host
// directory dir, a directory in it, or one holding it (such as a
// namespace's whole root, "."), its relative host path resolved in root
// and symlinks on either side followed as far as they exist. dir is
// resolved once, for every volume tested.
func Overlapping(root, dir string) func(Volume) bool {
	b := realPath(dir)
	return func(v Volume) bool {
		host := v.Host
		if !filepath.IsAbs(host) {
			host = filepath.Join(root, host)
		}
		a := realPath(host)
		return a == b || strings.HasPrefix(a, b+"/") || strings.HasPrefix(b, a+"/") || a == "/" || b == "/"
	}
}

// serverDisk is the disk (MiB) of a config that names none on a server
// whose default is def (0: DefaultDisk). A pool's sandboxes wait with it
// too (WarmSpec): only a start of the same disk can take one.
func serverDisk(def int) int {
	if def == 0 {
		return DefaultDisk
	}
	return def
}

// realPath is p cleaned, with its symlinks resolved when it exists.
func realPath(p string) string {
	p = filepath.Clean(p)
	if r, err := filepath.EvalSymlinks(p); err == nil {
		return r
	}
	return p
}

// String renders the volume as "host:guest[:ro]".
func (v Volume) String() string {
	if v.ReadOnly {
		return v.Host + ":" + v.Guest + ":ro"
	}
	return v.Host + ":" + v.Guest
}

// Port forwards a host port to a port on the sandbox's own loopback.
type Port struct {
	Host, Guest int
}

// String renders the port forward as "host:guest".
func (p Port) String() string { return strconv.Itoa(p.Host) + ":" + strconv.Itoa(p.Guest) }

// Defaults applied to a config that leaves a field out.
const (
	DefaultImage   = "microsandbox/python"
	DefaultMemory  = 512 // MiB
	DefaultCPUs    = 1
	DefaultWorkdir = "/workspace"
	DefaultShell   = "/bin/sh"
	MinMemory      = 32   // MiB
	DefaultDisk    = 2048 // MiB
	MinDisk        = 64   // MiB
)

// Limits on what one config may hold; the request body limit bounds the rest.
const (
	maxEnvs      = 1024
	maxScripts   = 64
	maxScriptLen = 1 << 20
	maxImageRef  = 512
	maxVolumes   = 64
	maxPorts     = 64
	maxArgs      = 4096
	maxLabels    = 64
	maxLabelKey  = 128
	maxLabelVal  = 1024
	// MaxLifetime bounds MaxDuration and IdleTimeout.
	MaxLifetime = 366 * 24 * time.Hour
)

// Rlimits are the resources a Rlimit may name, as setrlimit(2) knows them.
var Rlimits = map[string]int{
	"cpu": 0, "fsize": 1, "data": 2, "stack": 3, "core": 4, "rss": 5, "nproc": 6, "nofile": 7,
	"memlock": 8, "as": 9, "locks": 10, "sigpending": 11, "msgqueue": 12, "nice": 13, "rtprio": 14, "rttime": 15,
}

// Bounds are what this server lets one config ask for.
type Bounds struct {
	MaxCPUs   int // 0: no bound
	MaxMemory int // MiB; 0: no bound
	// DefaultDisk is the disk (MiB) of a config without one; 0:
	// sandbox.DefaultDisk. MaxDisk is the most one may ask for; 0: no
	// bound.
	DefaultDisk, MaxDisk int
	// AllowPrivilegedPorts lets port forwards use host ports below 1024.
	AllowPrivilegedPorts bool
	// NoPorts says the engine cannot forward ports at all.
	NoPorts bool
	// NoNetwork says the engine cannot give sandboxes network.
	NoNetwork bool
}

// ParseVolume reads a volume written "host:guest" or "host:guest:ro" (or
// ":rw"). Errors say which rule it breaks; Normalize checks the rest.
func ParseVolume(s string) (Volume, error) {
	parts := strings.Split(s, ":")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
		return Volume{}, fmt.Errorf("%.100q is not host:guest or host:guest:ro", s)
	}
	v := Volume{Host: parts[0], Guest: parts[1]}
	if len(parts) == 3 {
		switch parts[2] {
		case "ro":
			v.ReadOnly = true
		case "rw":
		default:
			return Volume{}, fmt.Errorf("%.100q: the mode must be ro or rw, not %q", s, parts[2])
		}
	}
	return v, nil
}

// ParsePort reads a port forward written "host:guest".
func ParsePort(s string) (Port, error) {
	h, g, ok := strings.Cut(s, ":")
	hp, herr := strconv.Atoi(h)
	gp, gerr := strconv.Atoi(g)
	if !ok || herr != nil || gerr != nil {
		return Port{}, fmt.Errorf("%.64q is not host:guest, such as 8080:80", s)
	}
	return Port{Host: hp, Guest: gp}, nil
}

// reservedGuest reports whether a sandbox path belongs to msb or the
// kernel and may not be covered by a volume or be the working directory.
func reservedGuest(p string) bool {
	for _, r := range []string{"/.msb", "/proc", "/sys", "/dev"} {
		if p == r || strings.HasPrefix(p, r+"/") {
			return true
		}
	}
	return p == "/"
}

// normalizeVolume checks one volume's syntax and puts it in canonical form.
func normalizeVolume(v Volume) (Volume, error) {
	s := v.String()
	if strings.ContainsAny(v.Host+v.Guest, "\x00\n") {
		return Volume{}, fmt.Errorf("%.100q contains a control character", s)
	}
	if strings.Contains(v.Host+v.Guest, ":") {
		return Volume{}, fmt.Errorf("%.100q: paths of volumes may not contain ':'", s)
	}
	if v.Host == "" || v.Guest == "" {
		return Volume{}, fmt.Errorf("%.100q is not host:guest or host:guest:ro", s)
	}
	for _, c := range strings.Split(v.Host, "/") {
		if c == ".." {
			return Volume{}, fmt.Errorf("%.100q: the host path may not contain \"..\"", s)
		}
	}
	if !path.IsAbs(v.Guest) {
		return Volume{}, fmt.Errorf("%.100q: the sandbox path must be absolute, such as /data", s)
	}
	v.Guest = path.Clean(v.Guest)
	if reservedGuest(v.Guest) {
		return Volume{}, fmt.Errorf("%.100q: the sandbox path %s is reserved: use another, such as /data", s, v.Guest)
	}
	v.Host = path.Clean(v.Host)
	return v, nil
}

// Normalize validates cfg against b and fills in the defaults, so that two
// configs that mean the same compare equal (Equal). It is a pure function
// of its arguments. Errors are of class Invalid and say which field is
// wrong and what would be right.
func Normalize(cfg Config, b Bounds) (Config, error) {
	bad := func(format string, args ...any) (Config, error) {
		return Config{}, errdefs.Invalidf("config."+format, args...)
	}
	if cfg.Image == "" {
		cfg.Image = DefaultImage
	}
	if len(cfg.Image) > maxImageRef || strings.ContainsAny(cfg.Image, " \t\r\n\x00") {
		return bad("image %.64q is not an image reference", cfg.Image)
	}
	if cfg.Memory == 0 {
		cfg.Memory = DefaultMemory
	}
	if cfg.Memory < MinMemory || (b.MaxMemory > 0 && cfg.Memory > b.MaxMemory) {
		return bad("memory %d MiB is out of range: use %d to %d", cfg.Memory, MinMemory, b.MaxMemory)
	}
	if cfg.CPUs == 0 {
		cfg.CPUs = DefaultCPUs
	}
	if cfg.CPUs < 1 || (b.MaxCPUs > 0 && cfg.CPUs > b.MaxCPUs) {
		return bad("cpus %d is out of range: use 1 to %d", cfg.CPUs, b.MaxCPUs)
	}
	if cfg.Disk == 0 {
		cfg.Disk = serverDisk(b.DefaultDisk)
	}
	if cfg.Disk < MinDisk || (b.MaxDisk > 0 && cfg.Disk > b.MaxDisk) {
		if b.MaxDisk > 0 {
			return bad("disk %d MiB is out of range: use %d to %d (max_disk in config.toml)", cfg.Disk, MinDisk, b.MaxDisk)
		}
		return bad("disk %d MiB is out of range: use at least %d", cfg.Disk, MinDisk)
	}
	if len(cfg.Volumes) > maxVolumes {
		return bad("volumes: %d volumes is too many: use at most %d", len(cfg.Volumes), maxVolumes)
	}
	cfg.Volumes = slices.Clone(cfg.Volumes)
	guests := map[string]bool{}
	for i, v := range cfg.Volumes {
		v, err := normalizeVolume(v)
		if err != nil {
			return bad("volumes: %v", err)
		}
		if guests[v.Guest] {
			return bad("volumes: the sandbox path %s is used twice", v.Guest)
		}
		guests[v.Guest] = true
		cfg.Volumes[i] = v
	}
	if len(cfg.Tmpfs) > maxVolumes {
		return bad("tmpfs: %d directories is too many: use at most %d", len(cfg.Tmpfs), maxVolumes)
	}
	cfg.Tmpfs = slices.Clone(cfg.Tmpfs)
	for i, t := range cfg.Tmpfs {
		if strings.ContainsAny(t.Guest, "\x00\n") || !path.IsAbs(t.Guest) {
			return bad("tmpfs: %.100q is not an absolute path: use one such as /scratch", t.Guest)
		}
		t.Guest = path.Clean(t.Guest)
		if reservedGuest(t.Guest) {
			return bad("tmpfs: the sandbox path %s is reserved: use another, such as /scratch", t.Guest)
		}
		for g := range guests {
			if g == t.Guest || strings.HasPrefix(g, t.Guest+"/") || strings.HasPrefix(t.Guest, g+"/") {
				return bad("tmpfs: %s overlaps the mount at %s: use paths apart, such as /scratch and /data", t.Guest, g)
			}
		}
		guests[t.Guest] = true
		if t.SizeMiB < 0 || t.SizeMiB > cfg.Memory {
			return bad("tmpfs: %s: size %d MiB is out of range: use 1 to the sandbox's memory (%d MiB), or 0 for half of it", t.Guest, t.SizeMiB, cfg.Memory)
		}
		if t.SizeMiB == 0 {
			t.SizeMiB = max(cfg.Memory/2, 1)
		}
		cfg.Tmpfs[i] = t
	}
	if len(cfg.Ports) > maxPorts {
		return bad("ports: %d port forwards is too many: use at most %d", len(cfg.Ports), maxPorts)
	}
	hostPorts := map[int]bool{}
	for _, p := range cfg.Ports {
		if p.Host < 1 || p.Host > 65535 || p.Guest < 1 || p.Guest > 65535 {
			return bad("ports: %q: ports must be 1 to 65535", p.String())
		}
		if p.Host < 1024 && !b.AllowPrivilegedPorts {
			return bad("ports: %q: host ports below 1024 need the operator's permission (allow_privileged_ports in config.toml): use 1024 or more", p.String())
		}
		if hostPorts[p.Host] {
			return bad("ports: host port %d is used twice", p.Host)
		}
		hostPorts[p.Host] = true
	}
	if len(cfg.Ports) > 0 && b.NoPorts {
		return bad("ports: this server's sandbox engine cannot forward ports; remove \"ports\"")
	}
	if len(cfg.Envs) > maxEnvs {
		return bad("envs: %d variables is too many: use at most %d", len(cfg.Envs), maxEnvs)
	}
	for _, kv := range cfg.Envs {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || k == "" || strings.ContainsAny(kv, "\x00") || strings.ContainsAny(k, " \t\n") {
			return bad("envs: %.64q is not KEY=VALUE", kv)
		}
	}
	seen := map[string]bool{}
	for _, dep := range cfg.DependsOn {
		if err := namespace.ValidateName("sandbox", dep); err != nil {
			return bad("depends_on: %v", err)
		}
		if seen[dep] {
			return bad("depends_on: %q is listed twice", dep)
		}
		seen[dep] = true
	}
	if cfg.Workdir != "" {
		if !path.IsAbs(cfg.Workdir) || strings.ContainsAny(cfg.Workdir, "\x00\n") {
			return bad("workdir %.64q must be an absolute path, such as /workspace", cfg.Workdir)
		}
		cfg.Workdir = path.Clean(cfg.Workdir)
		if reservedGuest(cfg.Workdir) {
			return bad("workdir %q is reserved: use a directory such as /workspace", cfg.Workdir)
		}
	}
	if cfg.Shell == "" {
		cfg.Shell = DefaultShell
	}
	if !path.IsAbs(cfg.Shell) || strings.ContainsAny(cfg.Shell, "\x00\n ") {
		return bad("shell %.64q must be an absolute path, such as /bin/sh", cfg.Shell)
	}
	if len(cfg.Scripts) > maxScripts {
		return bad("scripts: %d scripts is too many: use at most %d", len(cfg.Scripts), maxScripts)
	}
	names := make([]string, 0, len(cfg.Scripts))
	for name := range cfg.Scripts {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if name == "" || len(cfg.Scripts[name]) > maxScriptLen || strings.ContainsRune(cfg.Scripts[name], 0) {
			return bad("scripts: script %.64q must have a name and at most 1 MiB of text", name)
		}
	}
	if len(cfg.Exec) > maxScriptLen || strings.ContainsRune(cfg.Exec, 0) {
		return bad("exec must be at most 1 MiB of text")
	}
	if len(cfg.Command) > 0 && cfg.Exec != "" {
		return bad("command and exec are two ways to say what runs at start: give one")
	}
	size := 0
	for _, a := range cfg.Command {
		size += len(a)
		if strings.ContainsRune(a, 0) {
			return bad("command: %.64q contains a NUL byte", a)
		}
	}
	if len(cfg.Command) > maxArgs || size > maxScriptLen || (len(cfg.Command) > 0 && cfg.Command[0] == "") {
		return bad("command must be a program and at most %d arguments, 1 MiB in all", maxArgs-1)
	}
	if cfg.User != "" && !validUser(cfg.User) {
		return bad("user %.64q is not a user name or uid[:gid]", cfg.User)
	}
	cfg.Rlimits = slices.Clone(cfg.Rlimits)
	seenLimit := map[string]bool{}
	for i, l := range cfg.Rlimits {
		l.Resource = strings.ToLower(strings.TrimPrefix(strings.ToUpper(l.Resource), "RLIMIT_"))
		if _, ok := Rlimits[l.Resource]; !ok {
			return bad("rlimits: unknown resource %.32q: use one of cpu, fsize, data, stack, core, rss, nproc, nofile, memlock, as, locks, sigpending, msgqueue, nice, rtprio, rttime", l.Resource)
		}
		if l.Soft > l.Hard {
			return bad("rlimits: %s: the soft limit %d is above the hard limit %d", l.Resource, l.Soft, l.Hard)
		}
		if seenLimit[l.Resource] {
			return bad("rlimits: %s is given twice", l.Resource)
		}
		seenLimit[l.Resource] = true
		cfg.Rlimits[i] = l
	}
	if len(cfg.Labels) > maxLabels {
		return bad("labels: %d labels is too many: use at most %d", len(cfg.Labels), maxLabels)
	}
	for k, v := range cfg.Labels {
		if k == "" || len(k) > maxLabelKey || len(v) > maxLabelVal || !utf8.ValidString(k+v) || strings.ContainsAny(k+v, "\x00\n") {
			return bad("labels: %.64q = %.64q: a label is a name of 1 to %d and a value of at most %d characters, without NUL or newline", k, v, maxLabelKey, maxLabelVal)
		}
	}
	if cfg.MaxDuration < 0 || cfg.MaxDuration > MaxLifetime {
		return bad("lifecycle.max_duration %v is out of range: use 0 (none) to %v", cfg.MaxDuration, MaxLifetime)
	}
	if cfg.IdleTimeout < 0 || cfg.IdleTimeout > MaxLifetime {
		return bad("lifecycle.idle_timeout %v is out of range: use 0 (none) to %v", cfg.IdleTimeout, MaxLifetime)
	}
	net, err := NormalizeNetwork(cfg.Network, "config.network")
	if err != nil {
		return Config{}, err
	}
	if net.Mode == NetworkOn && b.NoNetwork {
		return bad("network: this server's sandbox engine cannot give sandboxes network; leave network out")
	}
	cfg.Network = net
	// Empty and absent mean the same.
	if len(cfg.Scripts) == 0 {
		cfg.Scripts = nil
	}
	if len(cfg.Envs) == 0 {
		cfg.Envs = nil
	}
	if len(cfg.DependsOn) == 0 {
		cfg.DependsOn = nil
	}
	if len(cfg.Volumes) == 0 {
		cfg.Volumes = nil
	}
	if len(cfg.Ports) == 0 {
		cfg.Ports = nil
	}
	if len(cfg.Command) == 0 {
		cfg.Command = nil
	}
	if len(cfg.Rlimits) == 0 {
		cfg.Rlimits = nil
	}
	if len(cfg.Labels) == 0 {
		cfg.Labels = nil
	}
	return cfg, nil
}

// validUser reports whether s reads as a user: a name as useradd allows
// one, or uid, or uid:gid, or name:group.
func validUser(s string) bool {
	if len(s) > 64 {
		return false
	}
	u, g, _ := strings.Cut(s, ":")
	ok := func(p string) bool {
		if p == "" {
			return false
		}
		for _, c := range p {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
				return false
			}
		}
		return true
	}
	return ok(u) && (g == "" && !strings.Contains(s, ":") || ok(g))
}

// Equal reports whether two normalized configs are the same.
func (c Config) Equal(o Config) bool {
	return c.Image == o.Image && c.Memory == o.Memory && c.CPUs == o.CPUs && c.Disk == o.Disk &&
		slices.Equal(c.Volumes, o.Volumes) && slices.Equal(c.Ports, o.Ports) &&
		slices.Equal(c.Envs, o.Envs) && slices.Equal(c.DependsOn, o.DependsOn) &&
		c.Workdir == o.Workdir && c.Shell == o.Shell && maps.Equal(c.Scripts, o.Scripts) && c.Exec == o.Exec &&
		slices.Equal(c.Command, o.Command) && c.User == o.User && slices.Equal(c.Rlimits, o.Rlimits) &&
		maps.Equal(c.Labels, o.Labels) && slices.Equal(c.Tmpfs, o.Tmpfs) && c.Lifecycle == o.Lifecycle && c.Network.Equal(o.Network)
}

// background is what a sandbox runs in the background when it starts, if
// anything: its command, else its exec or start script in its shell.
func (c Config) background() (ExecRequest, bool) {
	if len(c.Command) > 0 {
		return ExecRequest{Command: c.Command[0], Args: slices.Clone(c.Command[1:])}, true
	}
	script := c.Exec
	if script == "" {
		script = c.Scripts["start"]
	}
	if script == "" {
		return ExecRequest{}, false
	}
	return ExecRequest{Command: c.Shell, Args: []string{"-c", script}}, true
}
