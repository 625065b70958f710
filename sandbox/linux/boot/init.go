package boot

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox/guest"
	"github.com/msb-dev/msb/sandbox/portal"
)

// The init's command line and environment. The init is the portal binary
// itself, started as `msb portal` (its name in the sandbox's process list)
// with nothing in its environment but InitEnv and GOMAXPROCS, so that
// nothing of the sandbox's environment (GODEBUG, GOGC, ...) steers its Go
// runtime; the sandbox's own replaces them once the sandbox is built.
const (
	Argv0    = "msb"
	InitRole = "portal"
	InitEnv  = "_MSB_SANDBOX_INIT"
)

// File descriptors of the init. 3 to 5 are the portal's (package portal).
// The descriptors of its mounts (the image's host paths in a user
// namespace, volumes, then its root or disk) come later, on ConfigFD (see
// readConfig).
const (
	ConfigFD = 6 // a socket: the mounts and the Config in, a set-up error out
)

// Config is what the server hands a sandbox's init on ConfigFD, encoded
// by MarshalBinary: everything it needs to build the sandbox around itself.
type Config struct {
	// Root is the host path of the root's mount point (the same empty
	// directory for every sandbox: each mounts its root there in its own
	// mount namespace). The root is an overlay of Layers, read-only, under
	// Upper (the sandbox's writes), with Work the overlay's work directory.
	Root   string
	Layers []string // lowest first
	Upper  string
	Work   string
	// Disk, if set, is where the sandbox's disk (its detached mount,
	// descriptor DiskFD: the last one sent, see readConfig) is attached
	// before the overlay is mounted: Upper and Work are on it.
	Disk   string
	DiskFD int
	// In a user namespace (Stage.Userns), the root (the overlay,
	// mounted by the server with idmapped layers) is descriptor RootFD,
	// the last one sent; the image's host paths come among Volumes,
	// idmapped too.
	RootFD int
	// Build is set on a sandbox's first start: what to write into its root.
	Build *RootBuild
	// Binds are the image's host paths, parents first.
	Binds []guest.Mount
	// Volumes are the targets of the detached mounts the server sent,
	// one per descriptor, first; volumeFDs are those descriptors
	// (readConfig).
	Volumes   []VolumeTarget
	volumeFDs []int
	// Tmpfs are memory-backed directories, charged to the sandbox's memory.
	Tmpfs []guest.Tmpfs
	// Stage is what the init was told as it started (readStage).
	Stage
	// Procs is the GOMAXPROCS of the portal: the sandbox's CPUs (an init
	// the engine spawned ahead started with one).
	Procs    int
	Hostname string
	Workdir  string
	User     guest.User
	// Caps are the capabilities root in the sandbox keeps, and its
	// bounding set (the child of the spawner's clone sets it; boundCaps
	// drops what a spawner without cloneExec left); a non-root user
	// keeps none.
	Caps     uint64
	NoFile   uint64
	OOMScore int
	// TimerSlack is the timer slack, in nanoseconds, of every process
	// the portal starts: the server's as it started, before the engine
	// raised its own threads' (which the init inherits, and keeps unless
	// it executes the portal afresh); 0 leaves them the init's.
	TimerSlack uint64
	Env        []string
}

// Stage is what the server tells an init as soon as it has spawned
// it, before the sandbox it is for is known (a message 'S' on ConfigFD,
// linux.sendStage): enough to mount, while it starts or waits spawned ahead,
// the kernel file systems every sandbox gets (stage), which its start
// then moves into the sandbox's root (setup).
type Stage struct {
	// Userns: the init is in a user namespace of its own.
	Userns bool
	// Dir is the host path of the directory the init stages its mounts
	// in, outside a user namespace (the same empty directory for every
	// init, as Config.Root is); in one, where the init cannot reach
	// the server's directories, it stages them under /tmp.
	Dir string
	// Cgroups are the host's cgroup v1 hierarchies, mounted read-only at
	// /sys/fs/cgroup as the sandbox's cgroup namespace shows them; with
	// CgroupV2, the unified hierarchy is, in a cgroup namespace the init
	// makes itself once configured (the sandbox is cloned into its
	// cgroup, not born there).
	Cgroups  []CgroupMount
	CgroupV2 bool
}

// RootBuild is what the engine writes into a sandbox's root, resolved
// inside it (so that an image's symlinks never lead to the host).
type RootBuild struct {
	Dirs  []string
	Links []guest.Link
	Files []guest.File
	// Layered: the root is an image's, whose own directories keep their
	// mode and owner.
	Layered bool
	// Mounts are the sandbox's mount targets: a workdir under one is not
	// made in the root.
	Mounts []string
}

type VolumeTarget struct {
	Target string
	Dir    bool
}

// CgroupMount is one cgroup v1 hierarchy: its directory under
// /sys/fs/cgroup and its mount options.
type CgroupMount struct {
	Dir  string
	Opts string
}

// Report is what a failed init sends back on ConfigFD.
type Report struct {
	Error   string `json:"error"`
	Invalid bool   `json:"invalid,omitempty"`
}

// maybeInit runs the set-up of a sandbox when the process is a sandbox's
// init, and then serves as its portal: it never returns then. Otherwise it
// returns at once. The engine starts the init as PID 1 of a new PID
// namespace, with InitEnv set and a configuration on ConfigFD; Reexec
// calls it before anything else, so that the init runs none of the
// binary's other code.
func maybeInit() {
	if os.Getpid() != 1 || len(os.Args) != 2 || os.Args[1] != InitRole || os.Getenv(InitEnv) != "1" {
		return
	}
	// Credentials, namespaces and the working directory are the main
	// thread's business from here on; nothing else may run on it.
	runtime.LockOSThread()
	// Executed from /proc/self/fd/N, the process is called N.
	unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(&[]byte(Argv0 + "\x00")[0])), 0, 0, 0)
	syscall.CloseOnExec(ConfigFD)
	status := os.NewFile(ConfigFD, "init")
	err := runInit(status)
	// runInit returns only when the set-up failed.
	rep := Report{Error: err.Error(), Invalid: errors.Is(err, errdefs.ErrInvalid)}
	if rep.Invalid { // the server adds the class again
		rep.Error = strings.TrimSuffix(rep.Error, ": "+errdefs.ErrInvalid.Error())
	}
	data, _ := json.Marshal(rep)
	status.Write(data)
	fmt.Fprintln(os.Stderr, "msb init:", err)
	os.Exit(2)
}

// runInit builds the sandbox around this process, drops its privileges and
// becomes the portal. It returns only on failure.
func runInit(status *os.File) error {
	st, err := readStage(status)
	if err != nil {
		return err
	}
	staged, err := st.stage()
	if err != nil {
		return err
	}
	c, err := readConfig(status, st)
	if err != nil {
		return err
	}
	if c.Procs > 0 && runtime.GOMAXPROCS(0) != c.Procs {
		runtime.GOMAXPROCS(c.Procs)
	}
	// Without cgo, Go changes a credential or a namespace on all of its
	// threads at once; a binary linked with cgo cannot (the C library has
	// threads of its own), so there the main thread alone gets the
	// sandbox's credentials and namespace, and executes the portal afresh,
	// leaving every other thread behind.
	allThreads := true
	if c.CgroupV2 {
		if err := unshareCgroupNS(&allThreads); err != nil {
			return err
		}
	}
	if err := c.setup(staged); err != nil {
		return err
	}
	if err := c.dropPrivileges(&allThreads); err != nil {
		return err
	}
	if err := os.Chdir(c.Workdir); err != nil {
		return fmt.Errorf("workdir %s: %w", c.Workdir, err)
	}
	env := make([]string, 0, len(c.Env))
	for _, kv := range c.Env {
		if k, _, ok := strings.Cut(kv, "="); ok && k != "" && k != InitEnv {
			env = append(env, kv)
		}
	}
	if !allThreads {
		// The portal executed afresh keeps this thread's timer slack, and
		// every thread it starts inherits it, its forking thread too: the
		// server's original, which the processes it starts are to get,
		// rather than the raised one.
		if c.TimerSlack > 0 {
			if err := unix.Prctl(unix.PR_SET_TIMERSLACK, uintptr(c.TimerSlack), 0, 0, 0); err != nil {
				// Not worth failing the start over: its processes keep
				// the raised slack.
				fmt.Fprintf(os.Stderr, "msb init: cannot set the timer slack to %d ns: %v\n", c.TimerSlack, err)
			}
		}
		// ConfigFD closes on exec: the server sees the set-up done.
		err := syscall.Exec("/proc/self/exe", []string{Argv0, InitRole}, env)
		return fmt.Errorf("starting the portal: %w", err)
	}
	os.Clearenv()
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		os.Setenv(k, v)
	}
	// Locked down before the server hears the set-up is done: the
	// sandbox it reports started runs under the portal's filter, and the
	// server sends its first call without a ping to wait for.
	if err := portal.LockDown(); err != nil {
		return err
	}
	status.Close() // the set-up is done
	portal.Serve(portal.Options{ChildTimerSlack: c.TimerSlack})
	return errors.New("the portal returned")
}

// maxStage bounds the stage message: a few hundred bytes in practice.
const maxStage = 64 << 10

// readStage reads the stage message the server sends on ConfigFD right
// after the spawn (the engine's sendStage): 'S', the length of the encoded
// Stage (MarshalBinary) as 4 bytes big-endian, and the Stage; not a byte
// past it, which is the configuration's.
func readStage(status *os.File) (*Stage, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(status, hdr[:]); err != nil {
		return nil, fmt.Errorf("reading the stage: %w", err)
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if hdr[0] != 'S' || n > maxStage {
		return nil, fmt.Errorf("reading the stage: a header %q", hdr[:])
	}
	data := make([]byte, n)
	if _, err := io.ReadFull(status, data); err != nil {
		return nil, fmt.Errorf("reading the stage: %w", err)
	}
	var st Stage
	if err := st.UnmarshalBinary(data); err != nil {
		return nil, fmt.Errorf("stage: %w", err)
	}
	return &st, nil
}

// readConfig reads what the server sends on ConfigFD once the init runs (it
// prepares the mounts meanwhile): a message 'F' with the mounts'
// descriptors, one per volume and then the root or the disk, and then the
// Config, until the server shuts its end down.
func readConfig(status *os.File, st *Stage) (*Config, error) {
	// ConfigFD is blocking (the server made the socket so): the plain
	// system call waits.
	buf := make([]byte, 1)
	n, fds, err := RecvMsg(ConfigFD, buf, make([]byte, unix.CmsgSpace(4*MaxInitFiles)))
	switch {
	case err != nil:
		return nil, fmt.Errorf("reading the mounts: %w", err)
	case n == 0:
		return nil, fmt.Errorf("reading the mounts: %w", io.ErrUnexpectedEOF)
	case buf[0] != 'F':
		CloseFDs(fds)
		return nil, fmt.Errorf("reading the mounts: %q instead of F", buf[:n])
	}
	data, err := io.ReadAll(status) // until the server's end is shut down
	if err != nil {
		return nil, fmt.Errorf("reading the configuration: %w", err)
	}
	c := Config{Stage: *st}
	if err := c.UnmarshalBinary(data); err != nil {
		return nil, fmt.Errorf("configuration: %w", err)
	}
	want := len(c.Volumes)
	if c.Userns || c.Disk != "" {
		want++
	}
	if len(fds) != want {
		CloseFDs(fds)
		return nil, fmt.Errorf("configuration: %d descriptors sent for %d mounts", len(fds), want)
	}
	c.volumeFDs = fds[:len(c.Volumes)]
	if c.Userns {
		c.RootFD = fds[want-1]
	} else if c.Disk != "" {
		c.DiskFD = fds[want-1]
	}
	return &c, nil
}

// onAllThreads makes a system call on every thread of the process, or, in
// a binary linked with cgo, where Go cannot, on the calling thread alone
// and clears *allThreads.
func onAllThreads(allThreads *bool, trap, a1, a2, a3 uintptr) syscall.Errno {
	if *allThreads {
		_, _, errno := syscall.AllThreadsSyscall(trap, a1, a2, a3)
		if errno != syscall.ENOTSUP {
			return errno
		}
		*allThreads = false
	}
	_, _, errno := syscall.RawSyscall(trap, a1, a2, a3)
	return errno
}

// unshareCgroupNS gives the init a cgroup namespace rooted at the cgroup
// it was cloned into (cgroup v2 hosts).
func unshareCgroupNS(allThreads *bool) error {
	if errno := onAllThreads(allThreads, unix.SYS_UNSHARE, unix.CLONE_NEWCGROUP, 0, 0); errno != 0 {
		return fmt.Errorf("cgroup namespace: %w", errno)
	}
	return nil
}

// Mount flags of the sandbox's kernel file systems, as runc mounts them.
const nsd = unix.MS_NOSUID | unix.MS_NOEXEC | unix.MS_NODEV

// maskedPaths and readonlyPaths are runc's (specconv.Example): kernel
// files that tell about or act on the host. msb masks the virtual block
// devices' and ext4's files too: every sandbox's disk is a loop device,
// whose backing file names the sandbox (<namespace>.<name>, under the
// server's home) and whose ext4 counters tell what it writes, to every
// sandbox (/sys/block, /sys/class/block and /sys/dev/block only link
// there, and stay, for the host's real disks).
var (
	maskedPaths = []string{"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
		"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
		"/sys/devices/virtual/block", "/sys/fs/ext4", "/proc/fs/ext4"}
	readonlyPaths = []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"}
)

// stage makes / private in the init's own mount namespace and mounts
// there, under a directory of a tmpfs of its own that it returns, what
// every sandbox gets from the kernel and runc's masks over it
// (kernelMounts, mask), and brings up loopback: none of it depends on
// the sandbox, so an init does it before its configuration comes, while
// the server makes the sandbox's mounts, or while it waits spawned
// ahead. setup moves the three top mounts into the root, their mounts
// below them along.
func (st *Stage) stage() (string, error) {
	// This mount namespace is a copy of the server's, whose mounts may be
	// shared with the host's: nothing mounted here may propagate there.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return "", fmt.Errorf("making / private: %w", err)
	}
	// The stage is a tmpfs of this mount namespace's own. In a user
	// namespace, the server's directories (in the msb home, 0700) are not
	// the sandbox's root's to reach: the stage, and the root's mount
	// point (setup), are directories of a tmpfs over the host's /tmp.
	tmpfs, dir := st.Dir, st.Dir
	if st.Userns {
		tmpfs, dir = "/tmp", userStage
	}
	if err := unix.Mount("tmpfs", tmpfs, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0700,size=64k"); err != nil {
		return "", fmt.Errorf("staging the kernel's file systems: tmpfs on %s: %w", tmpfs, err)
	}
	if st.Userns {
		for _, d := range []string{userRoot, userStage} {
			if err := os.Mkdir(d, 0o755); err != nil {
				return "", fmt.Errorf("mount point of the root: %w", err)
			}
		}
	}
	if err := st.kernelMounts(dir); err != nil {
		return "", err
	}
	if err := mask(dir); err != nil {
		return "", err
	}
	// The network namespace is the sandbox's own from the clone.
	if err := LoopbackUp(); err != nil {
		return "", fmt.Errorf("loopback: %w", err)
	}
	return dir, nil
}

// In a user namespace, the root's mount point and the stage.
const (
	userRoot  = "/tmp/root"
	userStage = "/tmp/stage"
)

// setup builds the sandbox's file system inside this process's own mount
// namespace, around the kernel's file systems staged (stage), pivots into
// it and sets the rest of the sandbox's state that takes privileges:
// hostname, limits, OOM score.
func (c *Config) setup(staged string) error {
	if c.Userns {
		c.Root = userRoot
		if err := attachMount(c.RootFD, c.Root); err != nil {
			return fmt.Errorf("attaching the root file system: %w", err)
		}
	} else {
		if c.Disk != "" {
			if err := attachMount(c.DiskFD, c.Disk); err != nil {
				return fmt.Errorf("attaching the sandbox's disk: %w", err)
			}
		}
		if err := mountOverlay(c.Root, c.Upper, c.Work, c.Layers); err != nil {
			return err
		}
	}
	r, err := OpenRoot(c.Root)
	if err != nil {
		return fmt.Errorf("opening the root: %w", err)
	}
	defer r.Close()
	if c.Build != nil {
		if err := r.Build(c.Build, c.Hostname, c.Workdir, c.User); err != nil {
			return err
		}
	}
	if err := r.moveKernelMounts(staged); err != nil {
		return err
	}
	if c.CgroupV2 {
		if err := c.cgroupMounts(filepath.Join(c.Root, "sys/fs/cgroup")); err != nil {
			return err
		}
	}
	for _, m := range c.Binds {
		if err := r.bind(m); err != nil {
			return fmt.Errorf("mount %s: %w", m.Target, err)
		}
	}
	for i, v := range c.Volumes {
		if err := r.attachVolume(c.volumeFDs[i], v); err != nil {
			return err
		}
	}
	for _, t := range c.Tmpfs {
		if err := r.tmpfs(t); err != nil {
			return fmt.Errorf("tmpfs %s: %w", t.Guest, err)
		}
	}
	if err := pivot(r.root); err != nil {
		return err
	}
	if err := unix.Sethostname([]byte(c.Hostname)); err != nil {
		return fmt.Errorf("hostname: %w", err)
	}
	if c.NoFile > 0 {
		lim := unix.Rlimit{Cur: c.NoFile, Max: c.NoFile}
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
			return fmt.Errorf("RLIMIT_NOFILE: %w", err)
		}
	}
	// Written with CAP_SYS_RESOURCE, the score is also the floor no
	// process of the sandbox can go below (see initOOMScore).
	if err := os.WriteFile("/proc/self/oom_score_adj", []byte(strconv.Itoa(c.OOMScore)), 0); err != nil {
		return fmt.Errorf("oom_score_adj: %w", err)
	}
	return nil
}

// mountOverlay mounts the layers (lowest first) read-only under the
// sandbox's writable upper directory at root.
func mountOverlay(root, upper, work string, layers []string) error {
	lower := make([]string, len(layers))
	for i, l := range layers {
		lower[len(layers)-1-i] = l // overlayfs lists the top layer first
	}
	opts := "lowerdir=" + strings.Join(lower, ":") + ",upperdir=" + upper + ",workdir=" + work
	if err := unix.Mount("overlay", root, "overlay", unix.MS_NODEV, opts); err != nil {
		return fmt.Errorf("mounting the image's overlay: %w", err)
	}
	return nil
}

// kernelMounts mounts, at the top of dir (the stage), what runc's
// example spec has: /proc, /dev (a tmpfs with the standard device nodes),
// /dev/pts, /dev/shm, /dev/mqueue, a read-only /sys and, read-only, the
// sandbox's own cgroups at /sys/fs/cgroup (with CgroupV2, setup mounts
// them, once the init has its cgroup namespace).
func (st *Stage) kernelMounts(dir string) error {
	// All of it is in the stage's fresh tmpfs and the mounts on it, which
	// nothing else has touched: plain paths are safe there.
	for _, m := range kernelFS {
		d := filepath.Join(dir, m.path)
		if err := os.Mkdir(d, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(m.src, d, m.fstype, m.flags, m.data); err != nil {
			return fmt.Errorf("mounting /%s: %w", m.path, err)
		}
	}
	if err := devices(filepath.Join(dir, "dev"), st.Userns); err != nil {
		return err
	}
	if st.CgroupV2 {
		return nil
	}
	return st.cgroupMounts(filepath.Join(dir, "sys/fs/cgroup"))
}

// kernelFS are the kernel's file systems every sandbox gets, parents
// first; those at the top (no slash) are what moveKernelMounts moves into
// the root, each with what is mounted below it.
var kernelFS = []struct {
	path, src, fstype string
	flags             uintptr
	data              string
}{
	{"proc", "proc", "proc", nsd, ""},
	{"dev", "tmpfs", "tmpfs", unix.MS_NOSUID | unix.MS_STRICTATIME, "mode=755,size=65536k"},
	{"sys", "sysfs", "sysfs", nsd | unix.MS_RDONLY, ""},
	{"dev/pts", "devpts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5"},
	{"dev/shm", "shm", "tmpfs", nsd, "mode=1777,size=65536k"},
	{"dev/mqueue", "mqueue", "mqueue", nsd, ""},
}

// moveKernelMounts moves the kernel's file systems staged in dir to the
// top of the root. There, what the sandbox left on an earlier run (a
// symlink, say) is replaced: these are msb's.
func (r *Root) moveKernelMounts(dir string) error {
	for _, m := range kernelFS {
		name := m.path
		if strings.Contains(name, "/") {
			continue // moved with its parent
		}
		fd, err := r.topDir(name)
		if err != nil {
			return fmt.Errorf("mount point /%s: %w", name, err)
		}
		err = unix.Mount(filepath.Join(dir, name), "/proc/self/fd/"+strconv.Itoa(fd), "", unix.MS_MOVE, "")
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("moving /%s into the root: %w", name, err)
		}
	}
	return nil
}

// devices makes runc's default device nodes and links in the new /dev.
// In a user namespace, where mknod of a device is refused, the host's
// nodes are bind-mounted instead, as runc does for rootless containers.
func devices(dev string, bind bool) error {
	old := unix.Umask(0)
	defer unix.Umask(old)
	for _, d := range []struct {
		name         string
		major, minor uint32
	}{{"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7}, {"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0}} {
		p := filepath.Join(dev, d.name)
		if bind {
			if err := os.WriteFile(p, nil, 0o666); err != nil {
				return fmt.Errorf("/dev/%s: %w", d.name, err)
			}
			if err := unix.Mount("/dev/"+d.name, p, "", unix.MS_BIND, ""); err != nil {
				return fmt.Errorf("/dev/%s: %w", d.name, err)
			}
			continue
		}
		if err := unix.Mknod(p, unix.S_IFCHR|0o666, int(unix.Mkdev(d.major, d.minor))); err != nil {
			return fmt.Errorf("/dev/%s: %w", d.name, err)
		}
	}
	links := [][2]string{{"/proc/self/fd", "fd"}, {"/proc/self/fd/0", "stdin"}, {"/proc/self/fd/1", "stdout"},
		{"/proc/self/fd/2", "stderr"}, {"pts/ptmx", "ptmx"}}
	if _, err := os.Stat("/proc/kcore"); err == nil {
		links = append(links, [2]string{"/proc/kcore", "core"})
	}
	for _, l := range links {
		if err := os.Symlink(l[0], filepath.Join(dev, l[1])); err != nil {
			return err
		}
	}
	return nil
}

// cgroupMounts mounts the sandbox's cgroups read-only at dst, inside a
// sysfs that is already there: a tmpfs with each v1 hierarchy, as runc
// does (with links for co-mounted controllers), or the unified hierarchy.
// Through the sandbox's cgroup namespace each shows only the sandbox's
// own cgroups, whose limits programs read to size themselves.
func (st *Stage) cgroupMounts(dst string) error {
	const ro = nsd | unix.MS_RDONLY
	if st.CgroupV2 {
		if err := unix.Mount("cgroup2", dst, "cgroup2", ro, ""); err != nil {
			return fmt.Errorf("mounting /sys/fs/cgroup: %w", err)
		}
		return nil
	}
	if len(st.Cgroups) == 0 {
		return nil
	}
	if err := unix.Mount("tmpfs", dst, "tmpfs", nsd, "mode=755"); err != nil {
		return fmt.Errorf("mounting /sys/fs/cgroup: %w", err)
	}
	for _, h := range st.Cgroups {
		d := filepath.Join(dst, h.Dir)
		if err := os.Mkdir(d, 0o755); err != nil {
			return err
		}
		if err := unix.Mount("cgroup", d, "cgroup", ro, h.Opts); err != nil {
			return fmt.Errorf("mounting /sys/fs/cgroup/%s: %w", h.Dir, err)
		}
		if strings.Contains(h.Dir, ",") {
			for _, ctrl := range strings.Split(h.Dir, ",") {
				if err := os.Symlink(h.Dir, filepath.Join(dst, ctrl)); err != nil && !errors.Is(err, fs.ErrExist) {
					return err
				}
			}
		}
	}
	if err := unix.Mount("", dst, "", unix.MS_REMOUNT|unix.MS_BIND|ro, ""); err != nil {
		return fmt.Errorf("read-only /sys/fs/cgroup: %w", err)
	}
	return nil
}

// mask hides runc's masked paths (an empty read-only tmpfs over a
// directory, one for all of them, /dev/null over a file) and makes its
// read-only paths so, in the kernel's file systems mounted under root.
// What the sandbox mounts later (its volumes, never under /proc, /sys or
// /dev) can only cover them, never show what they hide.
func mask(root string) error {
	null := filepath.Join(root, "dev/null")
	empty := "" // the first masked directory, whose tmpfs covers the others
	for _, p := range maskedPaths {
		dst := filepath.Join(root, p)
		fi, err := os.Lstat(dst)
		if err != nil {
			continue // not on this kernel
		}
		switch {
		case fi.IsDir() && empty == "":
			err = unix.Mount("tmpfs", dst, "tmpfs", unix.MS_RDONLY, "nr_blocks=1,nr_inodes=1")
			empty = dst
		case fi.IsDir():
			// A bind of the same read-only tmpfs: a file system made and
			// torn down per directory would cost a start and a stop more.
			err = unix.Mount(empty, dst, "", unix.MS_BIND, "")
		default:
			err = unix.Mount(null, dst, "", unix.MS_BIND, "")
		}
		if err != nil {
			return fmt.Errorf("masking %s: %w", p, err)
		}
	}
	for _, p := range readonlyPaths {
		dst := filepath.Join(root, p)
		if _, err := os.Lstat(dst); err != nil {
			continue
		}
		if err := unix.Mount(dst, dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("read-only %s: %w", p, err)
		}
		if err := unix.Mount("", dst, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|nsd, ""); err != nil {
			return fmt.Errorf("read-only %s: %w", p, err)
		}
	}
	return nil
}

// pivot makes the root this process's "/", as runc does: pivot_root(".",
// ".") stacks the old root under the new one, whence it is detached.
func pivot(root *os.File) error {
	if err := unix.Fchdir(int(root.Fd())); err != nil {
		return fmt.Errorf("entering the root: %w", err)
	}
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detaching the host's root: %w", err)
	}
	return unix.Chdir("/")
}

// LoopbackUp brings up lo, the only interface of the sandbox's network.
func LoopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// dropPrivileges gives the sandbox's user and capabilities to every
// thread, or to the calling thread alone (see onAllThreads), which then
// executes the portal afresh. The bounding set (see boundCaps),
// no_new_privs and an empty list of supplementary groups came with the
// clone. As Docker does, root keeps Docker's default set and any other
// user none: its inheritable set too, which setuid leaves as it was.
func (c *Config) dropPrivileges(allThreads *bool) error {
	if err := c.boundCaps(allThreads); err != nil {
		return err
	}
	u := c.User
	groups := make([]int, len(u.AdditionalGids))
	for i, g := range u.AdditionalGids {
		groups[i] = int(g)
	}
	// The syscall package changes these on every thread, with or without
	// cgo.
	if cur, err := unix.Getgroups(); err != nil || len(groups) > 0 || len(cur) > 0 {
		if err := syscall.Setgroups(groups); err != nil {
			return fmt.Errorf("setgroups: %w", err)
		}
	}
	if u.GID != 0 {
		if err := syscall.Setresgid(int(u.GID), int(u.GID), int(u.GID)); err != nil {
			return fmt.Errorf("setresgid: %w", err)
		}
	}
	if u.UID != 0 {
		if err := syscall.Setresuid(int(u.UID), int(u.UID), int(u.UID)); err != nil {
			return fmt.Errorf("setresuid: %w", err)
		}
	}
	caps := c.Caps
	if u.UID != 0 {
		caps = 0
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	data := CapData(caps)
	errno := onAllThreads(allThreads, unix.SYS_CAPSET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0)
	runtime.KeepAlive(&hdr)
	runtime.KeepAlive(&data)
	if errno != 0 {
		return fmt.Errorf("capset: %w", errno)
	}
	return nil
}

// CapData is capset's data for the set caps as effective, permitted and
// inheritable set alike.
func CapData(caps uint64) [2]unix.CapUserData {
	var data [2]unix.CapUserData
	for i := range data {
		v := uint32(caps >> (32 * i))
		data[i] = unix.CapUserData{Effective: v, Permitted: v, Inheritable: v}
	}
	return data
}

// boundCaps drops from the bounding set what c.Caps does not have. The
// spawner clones the init with the sandbox's bounding set, so that this
// finds nothing to do; but a spawner without cloneExec (Go's fork and
// exec, on another architecture) leaves the full set a new user namespace
// starts with: this drops them on every thread, one call per capability.
func (c *Config) boundCaps(allThreads *bool) error {
	for cp := 0; cp < 64; cp++ {
		in, _, errno := syscall.RawSyscall(unix.SYS_PRCTL, unix.PR_CAPBSET_READ, uintptr(cp), 0)
		if errno == unix.EINVAL {
			return nil // past the kernel's last capability
		}
		if errno != 0 {
			return fmt.Errorf("reading the bounding set: %w", errno)
		}
		if in == 1 && c.Caps&(1<<cp) == 0 {
			if errno := onAllThreads(allThreads, unix.SYS_PRCTL, unix.PR_CAPBSET_DROP, uintptr(cp), 0); errno != 0 {
				return fmt.Errorf("dropping capability %d from the bounding set: %w", cp, errno)
			}
		}
	}
	return nil
}

// topDir returns an O_PATH handle on the directory name directly under
// the root, made if missing; anything else found there is replaced.
func (r *Root) topDir(name string) (int, error) {
	rfd := int(r.root.Fd())
	var st unix.Stat_t
	err := unix.Fstatat(rfd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
	if err == nil && st.Mode&unix.S_IFMT != unix.S_IFDIR {
		if err := unix.Unlinkat(rfd, name, 0); err != nil {
			return -1, err
		}
		err = unix.ENOENT
	}
	if errors.Is(err, unix.ENOENT) {
		if err := unix.Mkdirat(rfd, name, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
			return -1, err
		}
	} else if err != nil {
		return -1, err
	}
	return unix.Openat(rfd, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
}

// Build writes the image's directories, links and files into the root,
// then /etc/hostname and the workdir, all resolved inside it.
func (r *Root) Build(b *RootBuild, hostname, workdir string, user guest.User) error {
	wd := strings.TrimPrefix(path.Clean(workdir), "/")
	for _, d := range b.Dirs {
		existed := r.isDir(d)
		if existed && b.Layered {
			continue // the image's own directory keeps its mode and owner
		}
		mode := fs.FileMode(0o755)
		switch path.Base(d) {
		case "tmp":
			mode = 0o777 | fs.ModeSticky
		case "root":
			mode = 0o700
		}
		if err := r.Mkdir(d, mode); err != nil {
			return fmt.Errorf("directory %s: %w", d, err)
		}
		if !existed && path.Clean(d) == wd && user.UID != 0 {
			// A workdir msb made belongs to the user the image runs as.
			if err := r.chown(d, int(user.UID), int(user.GID)); err != nil {
				return fmt.Errorf("directory %s: %w", d, err)
			}
		}
	}
	for _, l := range b.Links {
		if err := r.symlink(l.Target, l.Path); err != nil {
			return fmt.Errorf("link %s: %w", l.Path, err)
		}
	}
	for _, f := range b.Files {
		if err := r.writeFile(f.Path, f.Content, fs.FileMode(f.Mode&0o777)|modeBits(f.Mode)); err != nil {
			return fmt.Errorf("file %s: %w", f.Path, err)
		}
	}
	// The image cannot know the sandbox's name; /etc/hostname follows the
	// UTS hostname when the image has an /etc.
	if hostname != "" && r.isDir("etc") {
		if err := r.writeFile("etc/hostname", []byte(hostname+"\n"), 0o644); err != nil {
			return fmt.Errorf("etc/hostname: %w", err)
		}
	}
	if !underTarget(workdir, b.Mounts) && !r.isDir(wd) {
		if err := r.Mkdir(wd, 0); err != nil {
			return fmt.Errorf("workdir %s: %w", workdir, err)
		}
	}
	return nil
}

// bind mounts the host path m.Source at m.Target inside the root, nosuid
// and nodev (nothing from the host may grant privileges inside), and
// read-only if asked, through file descriptors: a detached copy of the
// source made with open_tree, its flags set with mount_setattr, moved onto
// the target resolved inside the root.
func (r *Root) bind(m guest.Mount) error {
	tree, err := unix.OpenTree(unix.AT_FDCWD, m.Source, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err != nil {
		return fmt.Errorf("open_tree %s: %w", m.Source, err)
	}
	defer unix.Close(tree)
	attr := &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV}
	if m.ReadOnly {
		attr.Attr_set |= unix.MOUNT_ATTR_RDONLY
	}
	if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH, attr); err != nil {
		return fmt.Errorf("mount_setattr: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(tree, &st); err != nil {
		return err
	}
	return r.attach(tree, m.Target, st.Mode&unix.S_IFMT == unix.S_IFDIR)
}

// tmpfs mounts a tmpfs of the size asked at t.Guest, resolved inside the
// root (made if missing), nosuid and nodev, writable by everyone as /tmp
// is. The sandbox's init mounts it, so its pages are charged to the
// sandbox's memory cgroup.
func (r *Root) tmpfs(t guest.Tmpfs) error {
	h, err := r.MkdirAll(t.Guest)
	if err != nil {
		return err
	}
	defer h.Close()
	return unix.Mount("tmpfs", "/proc/self/fd/"+strconv.Itoa(int(h.Fd())), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV,
		"mode=1777,size="+strconv.Itoa(t.SizeMiB)+"m")
}

// attachVolume moves the volume the server opened as descriptor fd (the
// Linux engine's openVolume) onto its target in the root: a directory,
// made if missing, or a regular file (what the image has there otherwise is refused with
// an error wrapping errdefs.ErrInvalid).
func (r *Root) attachVolume(fd int, v VolumeTarget) error {
	defer unix.Close(fd)
	if err := r.attach(fd, v.Target, v.Dir); err != nil {
		return fmt.Errorf("volume target %s: %w", v.Target, err)
	}
	return nil
}

// attach moves the detached mount tree onto target, resolved inside the
// root: a directory (made if missing) or a regular file (made empty if
// missing).
func (r *Root) attach(tree int, target string, dir bool) error {
	var h *os.File
	var err error
	if dir {
		h, err = r.MkdirAll(target)
	} else {
		h, err = r.FileTarget(target)
	}
	if err != nil {
		return err
	}
	defer h.Close()
	if err := unix.MoveMount(tree, "", int(h.Fd()), "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH); err != nil {
		return fmt.Errorf("move_mount: %w", err)
	}
	return nil
}

// underTarget reports whether the sandbox path p is at or below one of the
// mount targets.
func underTarget(p string, targets []string) bool {
	p = path.Clean(p) + "/"
	for _, t := range targets {
		if strings.HasPrefix(p, path.Clean(t)+"/") {
			return true
		}
	}
	return false
}

// attachMount moves the detached mount fd onto target, and closes fd.
func attachMount(fd int, target string) error {
	err := unix.MoveMount(fd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH)
	unix.Close(fd)
	return err
}

// modeBits turns the setuid, setgid and sticky bits of a numeric mode into
// their fs.FileMode flags.
func modeBits(m uint32) fs.FileMode {
	var out fs.FileMode
	if m&0o4000 != 0 {
		out |= fs.ModeSetuid
	}
	if m&0o2000 != 0 {
		out |= fs.ModeSetgid
	}
	if m&0o1000 != 0 {
		out |= fs.ModeSticky
	}
	return out
}
