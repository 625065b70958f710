package linux

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/runc/libcontainer/configs"
	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox"
)

// Paths of the portal inside every sandbox.
const (
	portalDir   = "/.msb"
	portalPath  = portalDir + "/msb"
	portalRole  = "portal"
	cpuPeriodUS = 100_000 // CFS period; quota = CPUs × period
	nofileLimit = 65536
)

// hostLimits is what the host lets the engine set on every sandbox, probed
// once by New.
type hostLimits struct {
	// oomScore is the init's oom_score_adj, never below 0 (see
	// initOOMScore).
	oomScore int
	// swap says whether the memory cgroup can limit memory+swap.
	swap bool
}

// probeHost finds the hostLimits of this host. It returns an error when
// sandboxes could not be protected from making themselves immune to the
// OOM killer.
func probeHost() (hostLimits, error) {
	score, err := initOOMScore()
	if err != nil {
		return hostLimits{}, err
	}
	return hostLimits{oomScore: score, swap: swapAccounting()}, nil
}

// initOOMScore returns the oom_score_adj every sandbox's init gets: the
// server's own, but never below 0. The kernel lets any process lower its
// score down to a floor (oom_score_adj_min) that is set only by a writer
// holding CAP_SYS_RESOURCE and inherited by every child; a sandbox's
// processes lack that capability, so their floor is whatever the init was
// given. An init below 0 would let code in the sandbox go below 0 too, and
// at -1000 the memory cgroup's OOM killer could kill nothing in it. Writing
// the score (runc does it in the init, with the server's capabilities) also
// pins the floor there when the server holds CAP_SYS_RESOURCE; raising a
// score takes no privilege, so the write works without it too.
//
// A server that runs below 0 itself without CAP_SYS_RESOURCE cannot raise
// the floor it passes on, so it gets an error naming the fix: it may lower
// its own score (as dockerd does, -999) only with that capability.
func initOOMScore() (int, error) {
	data, err := os.ReadFile("/proc/self/oom_score_adj")
	if err != nil {
		return 0, fmt.Errorf("linux engine: reading the server's OOM score: %w", err)
	}
	own, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return 0, fmt.Errorf("linux engine: the server's OOM score %q: %w", data, err)
	}
	if own < 0 && !hasCapSysResource() {
		// Without the capability the init's score can be raised to 0 but
		// not the floor it inherits, so code in the sandbox could go back
		// below 0 (down to immunity at -1000).
		return 0, fmt.Errorf("linux engine: the server runs with oom_score_adj %d but without CAP_SYS_RESOURCE, so code in its sandboxes could lower its own OOM score below 0; run it with a score of 0 or more, or with that capability: %w",
			own, errdefs.ErrUnavailable)
	}
	return max(own, 0), nil
}

// swapAccounting reports whether runc can limit the sandbox's memory+swap.
// On cgroup v1 that takes a kernel that accounts swap (memory.memsw.* files,
// missing when it was built or booted without swap accounting), and runc
// fails every start when it cannot write the limit it was given. On cgroup
// v2 runc converts memory+swap = memory to memory.swap.max = 0 and skips
// that file when the kernel has no swap accounting, so the limit is always
// safe to give.
func swapAccounting() bool {
	if cgroups.IsCgroup2UnifiedMode() {
		return true
	}
	mnt, err := cgroups.FindCgroupMountpoint("", "memory")
	if err != nil {
		return false
	}
	return memswAt(mnt)
}

// memswAt reports whether the cgroup v1 memory hierarchy mounted at mnt
// accounts swap.
func memswAt(mnt string) bool {
	_, err := os.Stat(filepath.Join(mnt, "memory.memsw.limit_in_bytes"))
	return err == nil
}

// dockerCaps is Docker's default capability set: enough for package
// managers and ordinary root tasks, none of the ones that reach the host
// (SYS_ADMIN, SYS_PTRACE, SYS_MODULE, NET_ADMIN, ...).
var dockerCaps = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
	"CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
	"CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}

// ociSpec is the OCI runtime spec of one sandbox: runc's example spec (its
// /proc, /dev, /sys mounts, masked and read-only paths, default-deny device
// cgroup) tightened and filled in from the sandbox's Spec.
//
// host says what the host allows: the init's OOM score, and whether swap
// can be limited. Without swap accounting only memory is: on a host that
// also has swap, a sandbox's pages may then go to swap uncounted.
func ociSpec(id sandbox.ID, s sandbox.Spec, rootfs, portalBinary, cgroupParent string, host hostLimits) *specs.Spec {
	oci := specconv.Example()
	oci.Root = &specs.Root{Path: rootfs, Readonly: false}
	oci.Hostname = s.Hostname
	if oci.Hostname == "" {
		oci.Hostname = id.Name()
	}

	p := oci.Process
	p.Terminal = false
	p.Args = []string{portalPath, portalRole}
	p.Env = s.Env
	p.Cwd = s.Workdir
	p.NoNewPrivileges = true
	p.Capabilities = &specs.LinuxCapabilities{
		Bounding:    dockerCaps,
		Effective:   dockerCaps,
		Permitted:   dockerCaps,
		Inheritable: dockerCaps,
	}
	p.User = specs.User{UID: s.User.UID, GID: s.User.GID, AdditionalGids: s.User.AdditionalGids}
	if s.User.UID != 0 {
		// As Docker does: a non-root user holds no capabilities, only
		// the bounding set caps what setuid programs could regain.
		p.Capabilities.Effective, p.Capabilities.Permitted, p.Capabilities.Inheritable = nil, nil, nil
	}
	score := host.oomScore
	p.OOMScoreAdj = &score

	// Example mounts cgroupfs at /sys/fs/cgroup; with a cgroup namespace the
	// sandbox sees only its own cgroups there, read-only.
	// Volumes (mounts with a Beneath root) are already in the root: the
	// engine mounted them itself, through file descriptors.
	oci.Mounts = append(oci.Mounts, bindMounts(imageMounts(s.Root.Mounts))...)
	for _, t := range s.Tmpfs {
		oci.Mounts = append(oci.Mounts, specs.Mount{Destination: t.Guest, Type: "tmpfs", Source: "tmpfs",
			Options: []string{"nosuid", "nodev", "mode=1777", "size=" + strconv.Itoa(t.SizeMiB) + "m"}})
	}
	oci.Mounts = append(oci.Mounts, specs.Mount{
		Destination: portalPath,
		Type:        "bind",
		Source:      portalBinary,
		Options:     []string{"bind", "ro", "nosuid", "nodev"},
	})

	l := oci.Linux
	l.RootfsPropagation = "private"
	l.Namespaces = []specs.LinuxNamespace{
		{Type: specs.PIDNamespace},
		{Type: specs.NetworkNamespace},
		{Type: specs.IPCNamespace},
		{Type: specs.UTSNamespace},
		{Type: specs.MountNamespace},
		{Type: specs.CgroupNamespace},
	}
	l.CgroupsPath = "/" + cgroupParent + "/" + id.Key()
	mem := int64(s.MemoryMiB) << 20
	quota := int64(s.CPUs) * cpuPeriodUS
	period := uint64(cpuPeriodUS)
	pids := int64(s.Pids)
	l.Resources.Memory = &specs.LinuxMemory{Limit: &mem}
	if host.swap {
		l.Resources.Memory.Swap = &mem
	}
	l.Resources.CPU = &specs.LinuxCPU{Quota: &quota, Period: &period}
	l.Resources.Pids = &specs.LinuxPids{Limit: &pids}
	return oci
}

// hasCapSysResource reports whether this process holds CAP_SYS_RESOURCE,
// needed to lower an OOM score below its floor and to set the floor.
func hasCapSysResource() bool {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		if hex, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(hex), 16, 64)
			return err == nil && caps&(1<<unix.CAP_SYS_RESOURCE) != 0
		}
	}
	return false
}

// bindMounts turns the image's mounts into OCI bind mounts, parents before
// children so that a mount inside another one lands on top of it. nosuid
// and nodev always: nothing from the host may grant privileges inside.
func bindMounts(ms []sandbox.Mount) []specs.Mount {
	sorted := append([]sandbox.Mount(nil), ms...)
	sort.SliceStable(sorted, func(i, j int) bool {
		return depth(sorted[i].Target) < depth(sorted[j].Target)
	})
	out := make([]specs.Mount, 0, len(sorted))
	for _, m := range sorted {
		opts := []string{"bind", "nosuid", "nodev"}
		if m.ReadOnly {
			// runc remounts a read-only bind with MS_RDONLY, so it is
			// really read-only, not just flagged so.
			opts = append(opts, "ro")
		}
		out = append(out, specs.Mount{
			Destination: path.Clean(m.Target),
			Type:        "bind",
			Source:      m.Source,
			Options:     opts,
		})
	}
	return out
}

func depth(p string) int { return strings.Count(path.Clean(p), "/") }

// libcontainerConfig converts the OCI spec into libcontainer's config, with
// the settings specconv leaves out.
func libcontainerConfig(oci *specs.Spec) (*configs.Config, error) {
	cfg, err := specconv.CreateLibcontainerConfig(&specconv.CreateOpts{
		Spec:         oci,
		NoNewKeyring: false,
	})
	if err != nil {
		return nil, fmt.Errorf("container config: %w", err)
	}
	// specconv leaves process rlimits to its caller (runc's CLI). Raising
	// a hard limit takes CAP_SYS_RESOURCE, so stay within the server's.
	n := uint64(nofileLimit)
	var cur unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &cur); err == nil && cur.Max < n {
		n = cur.Max
	}
	cfg.Rlimits = []configs.Rlimit{{Type: unix.RLIMIT_NOFILE, Hard: n, Soft: n}}
	return cfg, nil
}
