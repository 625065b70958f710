package sandbox

import (
	"path"
	"sort"
	"strings"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/namespace"
)

// Limits on what one config may hold; the body limit bounds the rest.
const (
	maxEnvs      = 1024
	maxScripts   = 64
	maxScriptLen = 1 << 20
	maxImageRef  = 512
)

// normalize validates cfg and fills in the defaults, so two configs that
// mean the same compare equal. Errors wrap errdefs.ErrInvalid and say which
// field is wrong and what would be right.
func (s *Service) normalize(cfg Config) (Config, error) {
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
	if cfg.Memory < MinMemory || (s.opts.MaxMemMB > 0 && cfg.Memory > s.opts.MaxMemMB) {
		return bad("memory %d MiB is out of range: use %d to %d", cfg.Memory, MinMemory, s.opts.MaxMemMB)
	}
	if cfg.CPUs == 0 {
		cfg.CPUs = DefaultCPUs
	}
	if cfg.CPUs < 1 || (s.opts.MaxCPUs > 0 && cfg.CPUs > s.opts.MaxCPUs) {
		return bad("cpus %d is out of range: use 1 to %d", cfg.CPUs, s.opts.MaxCPUs)
	}
	if len(cfg.Volumes) > maxVolumes {
		return bad("volumes: %d volumes is too many: use at most %d", len(cfg.Volumes), maxVolumes)
	}
	guests := map[string]bool{}
	for i, v := range cfg.Volumes {
		spec, err := parseVolume(v)
		if err != nil {
			return bad("volumes: %v", err)
		}
		if guests[spec.Guest] {
			return bad("volumes: the sandbox path %s is used twice", spec.Guest)
		}
		guests[spec.Guest] = true
		cfg.Volumes[i] = spec.String()
	}
	if len(cfg.Ports) > maxPorts {
		return bad("ports: %d port forwards is too many: use at most %d", len(cfg.Ports), maxPorts)
	}
	hostPorts := map[int]bool{}
	for i, p := range cfg.Ports {
		spec, err := parsePort(p)
		if err != nil {
			return bad("ports: %v", err)
		}
		if spec.Host < 1024 && !s.opts.AllowPrivilegedPorts {
			return bad("ports: %q: host ports below 1024 need the operator's permission (allow_privileged_ports in config.toml): use 1024 or more", p)
		}
		if hostPorts[spec.Host] {
			return bad("ports: host port %d is used twice", spec.Host)
		}
		hostPorts[spec.Host] = true
		cfg.Ports[i] = spec.String()
	}
	if len(cfg.Ports) > 0 {
		if _, ok := s.opts.Engine.(Dialer); !ok {
			return bad("ports: this server's sandbox engine cannot forward ports; remove \"ports\"")
		}
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
		if cfg.Workdir == "/" || cfg.Workdir == "/.msb" || strings.HasPrefix(cfg.Workdir, "/.msb/") ||
			cfg.Workdir == "/proc" || strings.HasPrefix(cfg.Workdir, "/proc/") ||
			cfg.Workdir == "/sys" || strings.HasPrefix(cfg.Workdir, "/sys/") ||
			cfg.Workdir == "/dev" || strings.HasPrefix(cfg.Workdir, "/dev/") {
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
	return cfg, nil
}
