package linux

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/moby/sys/mountinfo"
	"github.com/opencontainers/cgroups"
	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/sandbox"
)

// checkSpec rejects a Spec the engine cannot build safely.
func checkSpec(s sandbox.Spec) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), sandbox.ErrInvalidArgument)
	}
	if s.MemoryMiB <= 0 || s.CPUs <= 0 || s.Pids <= 0 {
		return bad("memory (%d MiB), cpus (%d) and pids (%d) must be positive", s.MemoryMiB, s.CPUs, s.Pids)
	}
	if !path.IsAbs(s.Workdir) {
		return bad("workdir %q is not an absolute path", s.Workdir)
	}
	for _, m := range s.Root.Mounts {
		if !filepath.IsAbs(m.Source) || !path.IsAbs(m.Target) || path.Clean(m.Target) == "/" {
			return bad("mount %s:%s: need absolute host and sandbox paths, not the root", m.Source, m.Target)
		}
		if strings.HasPrefix(path.Clean(m.Target)+"/", portalDir+"/") {
			return bad("mount %s:%s: %s is reserved for msb", m.Source, m.Target, portalDir)
		}
		if _, err := os.Stat(m.Source); err != nil {
			return bad("mount %s:%s: %v", m.Source, m.Target, err)
		}
	}
	for _, l := range s.Root.Links {
		if !filepath.IsLocal(l.Path) {
			return bad("link %q is not a path inside the sandbox", l.Path)
		}
	}
	for _, f := range s.Root.Files {
		if !filepath.IsLocal(f.Path) {
			return bad("file %q is not a path inside the sandbox", f.Path)
		}
	}
	for _, d := range s.Root.Dirs {
		if !filepath.IsLocal(d) {
			return bad("directory %q is not a path inside the sandbox", d)
		}
	}
	return nil
}

// buildRootFS lays out the writable part of the root file system: the
// image's directories, links and files, /etc/hostname and the workdir.
// Mount points are left to libcontainer, which creates them.
func buildRootFS(rootfs string, s sandbox.Spec, hostname string) error {
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		return err
	}
	for _, d := range s.Root.Dirs {
		mode := fs.FileMode(0o755)
		switch path.Base(d) {
		case "tmp":
			mode = 0o777 | fs.ModeSticky
		case "root":
			mode = 0o700
		}
		p := filepath.Join(rootfs, d)
		if err := os.MkdirAll(p, 0o755); err != nil {
			return err
		}
		if err := os.Chmod(p, mode); err != nil { // MkdirAll is subject to umask and drops the sticky bit
			return err
		}
	}
	for _, l := range s.Root.Links {
		p := filepath.Join(rootfs, l.Path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.Symlink(l.Target, p); err != nil {
			return err
		}
	}
	for _, f := range s.Root.Files {
		if err := writeFile(filepath.Join(rootfs, f.Path), f.Content, fs.FileMode(f.Mode&0o7777)); err != nil {
			return err
		}
	}
	// The image cannot know the sandbox's name; /etc/hostname follows the
	// UTS hostname when the image has an /etc.
	if fi, err := os.Stat(filepath.Join(rootfs, "etc")); err == nil && fi.IsDir() {
		if err := writeFile(filepath.Join(rootfs, "etc/hostname"), []byte(hostname+"\n"), 0o644); err != nil {
			return err
		}
	}
	if !underMount(s.Workdir, s.Root.Mounts) {
		if err := os.MkdirAll(filepath.Join(rootfs, s.Workdir), 0o755); err != nil {
			return err
		}
	}
	return nil
}

func writeFile(p string, content []byte, mode fs.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(p, content, mode); err != nil {
		return err
	}
	return os.Chmod(p, mode)
}

func underMount(p string, ms []sandbox.Mount) bool {
	p = path.Clean(p) + "/"
	for _, m := range ms {
		if strings.HasPrefix(p, path.Clean(m.Target)+"/") {
			return true
		}
	}
	return false
}

// mountsUnder lists the mount points at or below dir in this process's
// mount namespace, deepest first.
func mountsUnder(dir string) ([]string, error) {
	infos, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		return nil, err
	}
	var mps []string
	for _, m := range infos {
		mps = append(mps, m.Mountpoint)
	}
	sort.Slice(mps, func(i, j int) bool { return len(mps[i]) > len(mps[j]) })
	return mps, nil
}

// removeSandboxDir removes a sandbox's directory. Sandbox mounts live in the
// sandbox's own mount namespace, so the host should see none; any it does
// see is detached first, and the removal never crosses into another file
// system, so a stray bind mount cannot take host files with it.
func removeSandboxDir(dir string) error {
	mps, err := mountsUnder(dir)
	if err != nil {
		return fmt.Errorf("reading mounts: %w", err)
	}
	for _, mp := range mps {
		if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("unmounting leftover %s: %w", mp, err)
		}
	}
	if mps, err := mountsUnder(dir); err != nil {
		return fmt.Errorf("reading mounts: %w", err)
	} else if len(mps) > 0 {
		return fmt.Errorf("mounts left under %s: %v", dir, mps)
	}
	fi, err := os.Lstat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	return removeTree(dir, fi.Sys().(*syscall.Stat_t).Dev)
}

func removeTree(p string, dev uint64) error {
	fi, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	if fi.Sys().(*syscall.Stat_t).Dev != dev {
		return fmt.Errorf("%s is on another file system (a leftover mount?); not removing it", p)
	}
	if fi.IsDir() {
		if fi.Mode().Perm()&0o700 != 0o700 { // the sandbox may have chmod'ed it to 0
			_ = os.Chmod(p, 0o700)
		}
		entries, err := os.ReadDir(p)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		for _, e := range entries {
			if err := removeTree(filepath.Join(p, e.Name()), dev); err != nil {
				return err
			}
		}
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// diskUsage is the apparent size of the files in the writable layer: the
// rootfs directory, not crossing into other file systems and not counting
// the mount points of bind-mounted host paths.
func diskUsage(rootfs string, ms []sandbox.Mount) (uint64, error) {
	skip := map[string]bool{filepath.Join(rootfs, portalPath): true}
	for _, m := range ms {
		skip[filepath.Join(rootfs, m.Target)] = true
	}
	root, err := os.Lstat(rootfs)
	if err != nil {
		return 0, err
	}
	dev := root.Sys().(*syscall.Stat_t).Dev
	var total uint64
	err = filepath.WalkDir(rootfs, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
				return nil // the sandbox changes its files while we walk
			}
			return err
		}
		if skip[p] {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Dev != dev {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if fi.Mode().IsRegular() {
			total += uint64(fi.Size())
		}
		return nil
	})
	return total, err
}

// removeCgroupDirs removes the cgroup directories of a sandbox whose
// libcontainer state is gone (crash between creating cgroups and saving
// state). Directories that still hold processes are left, and reported.
func removeCgroupDirs(cgroupPath string) error {
	mounts, err := cgroups.GetCgroupMounts(true)
	if err != nil {
		return err
	}
	var errs []error
	seen := map[string]bool{}
	for _, m := range mounts {
		p := filepath.Join(m.Mountpoint, cgroupPath)
		if seen[p] {
			continue
		}
		seen[p] = true
		if err := cgroups.RemovePath(p); err != nil {
			errs = append(errs, err)
		}
	}
	if cgroups.IsCgroup2HybridMode() {
		if err := cgroups.RemovePath(filepath.Join("/sys/fs/cgroup/unified", cgroupPath)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// pidsReserve is how many of a sandbox's pids are kept for the portal: a
// Go program dies when it cannot create a thread, so a fork bomb must not
// be able to take the portal's last pids.
func pidsReserve(pids int) int {
	return min(pids/4, 32)
}

// userPidsCgroup prepares the sandbox's "user" pids cgroup, a child of its
// own limited to pids minus pidsReserve, and returns its tasks file open
// for writing. The portal gets it as file descriptor 4: it moves the one
// thread it forks commands from into that cgroup (by writing "0"), so every
// process it starts is born there and the rest of the portal keeps the
// reserve. The open file carries the server's permission; nothing inside
// the sandbox can open it. It returns nil, nil without a cgroup v1 pids
// hierarchy.
func userPidsCgroup(cgroupPath string, pids int) (*os.File, error) {
	mnt, err := cgroups.FindCgroupMountpoint("", "pids")
	if err != nil {
		return nil, nil
	}
	dir := filepath.Join(mnt, cgroupPath, "user")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("user pids cgroup: %w", err)
	}
	limit := strconv.Itoa(pids - pidsReserve(pids))
	if err := os.WriteFile(filepath.Join(dir, "pids.max"), []byte(limit), 0); err != nil {
		return nil, fmt.Errorf("user pids cgroup: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "tasks"), os.O_WRONLY, 0)
	if err != nil {
		return nil, fmt.Errorf("user pids cgroup: %w", err)
	}
	return f, nil
}

// logLimit bounds portal.log: the portal logs its own failures there, and a
// sandbox must not fill the host's disk through it.
const logLimit = 1 << 20

// boundedLog writes to a file until it holds logLimit bytes, then discards.
type boundedLog struct {
	mu sync.Mutex
	f  *os.File
	n  int64
}

func openBoundedLog(p string) (*boundedLog, error) {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	return &boundedLog{f: f}, nil
}

func (l *boundedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if room := logLimit - l.n; room > 0 {
		q := p
		if int64(len(q)) > room {
			q = q[:room]
		}
		n, _ := l.f.Write(q)
		l.n += int64(n)
	}
	return len(p), nil
}

func (l *boundedLog) Close() error { return l.f.Close() }

// logTail returns the gist of a log for an error message: from the first
// Go crash line if there is one (its goroutine dump is long and says
// less), else the last lines.
func logTail(p string) string {
	const max = 2048
	f, err := os.Open(p)
	if err != nil {
		return ""
	}
	defer f.Close()
	b, _ := io.ReadAll(io.LimitReader(f, logLimit))
	for _, marker := range []string{"runtime/cgo:", "fatal error:", "panic:", "runtime: "} {
		if i := strings.Index(string(b), marker); i >= 0 {
			b = b[i:]
			if len(b) > max {
				b = b[:max]
			}
			return strings.TrimSpace(string(b))
		}
	}
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return strings.TrimSpace(string(b))
}
