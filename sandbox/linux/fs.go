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
	"unicode"

	"github.com/moby/sys/mountinfo"
	"github.com/opencontainers/cgroups"
	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox"
)

// checkSpec rejects a Spec the engine cannot build safely.
func checkSpec(s sandbox.Spec) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), errdefs.ErrInvalid)
	}
	if s.MemoryMiB <= 0 || s.CPUs <= 0 || s.Pids <= 0 {
		return bad("memory (%d MiB), cpus (%d) and pids (%d) must be positive", s.MemoryMiB, s.CPUs, s.Pids)
	}
	if !path.IsAbs(s.Workdir) {
		return bad("workdir %q is not an absolute path", s.Workdir)
	}
	for _, l := range s.Root.Layers {
		if !filepath.IsAbs(l) {
			return fmt.Errorf("layer %s: need an absolute path", l) // a bug of msb's: logged, never shown
		}
		// No host path in what the client reads.
		if fi, err := os.Stat(l); err != nil || !fi.IsDir() {
			return bad("the image's layers are missing from the cache (pruned while the sandbox started?): pull the image again with `msb pull IMAGE`, then start the sandbox again")
		}
	}
	for _, m := range s.Root.Mounts {
		if m.Beneath != "" {
			if !filepath.IsAbs(m.Beneath) || !strings.HasPrefix(filepath.Clean(m.Source)+"/", filepath.Clean(m.Beneath)+"/") {
				return bad("volume %s: not inside its root %s", m.Source, m.Beneath)
			}
			for _, im := range imageMounts(s.Root.Mounts) {
				if strings.HasPrefix(path.Clean(m.Target)+"/", path.Clean(im.Target)+"/") {
					return bad("volume target %s is inside the image's read-only %s: choose another path", m.Target, im.Target)
				}
			}
		}
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

// mountLayers records the sandbox's layers in dir and mounts them as the
// overlay at rootfs, holding layerLock (if set) shared meanwhile, so that a
// prune, which holds it exclusively, either sees the record or has finished
// and the missing layers are found here.
func mountLayers(dir, rootfs string, layers []string, layerLock string) error {
	if layerLock != "" {
		f, err := os.OpenFile(layerLock, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return fmt.Errorf("image layer lock: %w", err)
		}
		defer f.Close()
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH); err != nil {
			return fmt.Errorf("image layer lock: %w", err)
		}
	}
	if err := recordLayers(dir, layers); err != nil {
		return err
	}
	for _, l := range layers {
		if fi, err := os.Stat(l); err != nil || !fi.IsDir() {
			os.Remove(filepath.Join(dir, layersFile))
			return fmt.Errorf("the image's layers are missing from the cache (pruned after the sandbox was created?): pull the image again with `msb pull IMAGE`, then start the sandbox again: %w", errdefs.ErrInvalid)
		}
	}
	return mountOverlay(dir, rootfs, layers)
}

// buildRootFS assembles the root file system at rootfs, inside the
// sandbox's directory dir: an overlay of the image's layers under dir/upper
// when it has layers, else a plain directory; then the image's directories,
// links and files, /etc/hostname and the workdir, all written inside the
// root without following any symlink out of it; then the volumes, mounted
// through file descriptors. Image mounts are left to libcontainer, which
// creates their mount points.
func buildRootFS(dir, rootfs string, s sandbox.Spec, hostname, layerLock string) error {
	if len(s.Root.Layers) > 0 {
		if err := mountLayers(dir, rootfs, s.Root.Layers, layerLock); err != nil {
			return err
		}
	} else {
		if err := os.MkdirAll(rootfs, 0o755); err != nil {
			return err
		}
		if len(volumes(s.Root.Mounts)) > 0 {
			if err := bindSelf(rootfs); err != nil {
				return err
			}
		}
	}
	r, err := openRoot(rootfs)
	if err != nil {
		return err
	}
	defer r.Close()
	workdir := strings.TrimPrefix(path.Clean(s.Workdir), "/")
	for _, d := range s.Root.Dirs {
		existed := r.isDir(d)
		if existed && len(s.Root.Layers) > 0 {
			continue // the image's own directory keeps its mode and owner
		}
		mode := fs.FileMode(0o755)
		switch path.Base(d) {
		case "tmp":
			mode = 0o777 | fs.ModeSticky
		case "root":
			mode = 0o700
		}
		if err := r.mkdir(d, mode); err != nil {
			return fmt.Errorf("directory %s: %w", d, err)
		}
		if !existed && path.Clean(d) == workdir && s.User.UID != 0 {
			// A workdir msb made belongs to the user the image runs as.
			if err := r.chown(d, int(s.User.UID), int(s.User.GID)); err != nil {
				return fmt.Errorf("directory %s: %w", d, err)
			}
		}
	}
	for _, l := range s.Root.Links {
		if err := r.symlink(l.Target, l.Path); err != nil {
			return fmt.Errorf("link %s: %w", l.Path, err)
		}
	}
	for _, f := range s.Root.Files {
		if err := r.writeFile(f.Path, f.Content, fs.FileMode(f.Mode&0o777)|modeBits(f.Mode)); err != nil {
			return fmt.Errorf("file %s: %w", f.Path, err)
		}
	}
	// The image cannot know the sandbox's name; /etc/hostname follows the
	// UTS hostname when the image has an /etc.
	if r.isDir("etc") {
		if err := r.writeFile("etc/hostname", []byte(hostname+"\n"), 0o644); err != nil {
			return fmt.Errorf("etc/hostname: %w", err)
		}
	}
	if !underMount(s.Workdir, s.Root.Mounts) && !r.isDir(workdir) {
		if err := r.mkdir(workdir, 0); err != nil {
			return fmt.Errorf("workdir %s: %w", s.Workdir, err)
		}
	}
	for _, m := range volumes(s.Root.Mounts) {
		if err := r.mountVolume(m); err != nil {
			return err
		}
	}
	return nil
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

// volumes are the mounts the engine makes itself (those with a Beneath
// root); imageMounts the ones libcontainer makes.
func volumes(ms []sandbox.Mount) []sandbox.Mount {
	var out []sandbox.Mount
	for _, m := range ms {
		if m.Beneath != "" {
			out = append(out, m)
		}
	}
	return out
}

func imageMounts(ms []sandbox.Mount) []sandbox.Mount {
	var out []sandbox.Mount
	for _, m := range ms {
		if m.Beneath == "" {
			out = append(out, m)
		}
	}
	return out
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

// removeTree deletes the directory tree at p without following symlinks
// and without leaving the file system dev (a mount found there is an error,
// never something to delete through). It works through directory handles,
// holding one at a time and climbing back with "..", so neither the depth
// of a tree a sandbox built nor the length of its paths can stop it.
func removeTree(p string, dev uint64) error {
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) {
		return os.Remove(p) // a file or a symlink: remove the entry itself
	}
	if err != nil {
		return err
	}
	var stack []string // names from p down to the directory fd is
	defer func() { unix.Close(fd) }()
	for {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return err
		}
		if st.Dev != dev {
			return fmt.Errorf("%s is on another file system (a leftover mount?); not removing it", filepath.Join(append([]string{p}, stack...)...))
		}
		if st.Mode&0o700 != 0o700 { // the sandbox may have chmod'ed it to 0
			unix.Fchmod(fd, 0o700)
		}
		child, err := emptyDir(fd, dev)
		if err != nil {
			return fmt.Errorf("remove %s: %w", filepath.Join(append([]string{p}, stack...)...), err)
		}
		if child != "" {
			next, err := unix.Openat(fd, child, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err != nil {
				return err
			}
			unix.Close(fd)
			fd = next
			stack = append(stack, child)
			continue
		}
		// fd is empty now: climb and remove it from its parent.
		if len(stack) == 0 {
			unix.Close(fd)
			fd = -1
			if err := unix.Rmdir(p); err != nil && !errors.Is(err, unix.ENOENT) {
				return err
			}
			return nil
		}
		parent, err := unix.Openat(fd, "..", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		unix.Close(fd)
		fd = parent
		name := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if err := unix.Unlinkat(fd, name, unix.AT_REMOVEDIR); err != nil && !errors.Is(err, unix.ENOENT) {
			return err
		}
	}
}

// emptyDir unlinks every non-directory entry of the directory fd and
// returns the name of a subdirectory to descend into, or "" when fd is
// empty. A subdirectory on another file system is an error.
func emptyDir(fd int, dev uint64) (string, error) {
	dup, err := unix.Dup(fd)
	if err != nil {
		return "", err
	}
	f := os.NewFile(uintptr(dup), "dir")
	defer f.Close()
	// Unlinking while reading may make the kernel skip entries: repeat
	// whole passes until one finds nothing left.
	for {
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return "", err
		}
		removed := 0
		for {
			names, err := f.Readdirnames(512)
			for _, name := range names {
				var st unix.Stat_t
				if err := unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
					if errors.Is(err, unix.ENOENT) {
						continue
					}
					return "", err
				}
				if st.Mode&unix.S_IFMT == unix.S_IFDIR {
					if st.Dev != dev {
						return "", fmt.Errorf("%s is on another file system (a leftover mount?); not removing it", name)
					}
					return name, nil
				}
				if err := unix.Unlinkat(fd, name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
					return "", err
				}
				removed++
			}
			if errors.Is(err, io.EOF) || len(names) == 0 {
				break
			}
			if err != nil {
				return "", err
			}
		}
		if removed == 0 {
			return "", nil
		}
	}
}

// diskUsage is the apparent size of the files in the writable layer: the
// rootfs directory, not crossing into other file systems and not counting
// the mount points of bind-mounted host paths.
func diskUsage(rootfs string, ms []sandbox.Mount) (uint64, error) {
	if _, err := os.Stat(filepath.Join(filepath.Dir(rootfs), "upper")); err == nil {
		// An overlay: what the sandbox wrote is its upper directory.
		rootfs, ms = filepath.Join(filepath.Dir(rootfs), "upper"), nil
	}
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
			// The sandbox changes its files while we walk, and may build
			// paths longer than the kernel accepts: count what can be seen.
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) || errors.Is(err, unix.ENAMETOOLONG) {
				if d != nil && d.IsDir() {
					return filepath.SkipDir
				}
				return nil
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
// the sandbox can open it.
//
// It also returns the cgroup's directory as a detached bind mount (nil
// when the kernel cannot make one), which the portal gets as file
// descriptor 5 to make one child cgroup per command: a process cannot
// leave its cgroup (the sandbox's cgroup file system is read-only), so a
// timeout can kill everything a command started, even what left its
// process group and parent. A detached mount, not a plain directory, so
// that ".." from it cannot climb to the host's cgroups: the root of a
// mount that is attached nowhere is its own parent.
//
// It returns nil, nil, nil without a cgroup v1 pids hierarchy.
func userPidsCgroup(cgroupPath string, pids int) (tasks, tree *os.File, err error) {
	mnt, err := cgroups.FindCgroupMountpoint("", "pids")
	if err != nil {
		return nil, nil, nil
	}
	dir := filepath.Join(mnt, cgroupPath, "user")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, nil, fmt.Errorf("user pids cgroup: %w", err)
	}
	limit := strconv.Itoa(pids - pidsReserve(pids))
	if err := os.WriteFile(filepath.Join(dir, "pids.max"), []byte(limit), 0); err != nil {
		return nil, nil, fmt.Errorf("user pids cgroup: %w", err)
	}
	tasks, err = os.OpenFile(filepath.Join(dir, "tasks"), os.O_WRONLY, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("user pids cgroup: %w", err)
	}
	// Without open_tree (Linux < 5.2) the portal kills by process tree.
	if fd, err := unix.OpenTree(unix.AT_FDCWD, dir, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC); err == nil {
		tree = os.NewFile(uintptr(fd), "user-pids-cgroup-tree")
	}
	return tasks, tree, nil
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
// lastWords is the one line of the portal's log at p that says why it
// ended (a panic's or fatal error's first line, else the last line), cut
// to 160 bytes of printable text: what a client may read of it, never a
// goroutine dump.
func lastWords(p string) string {
	tail := logTail(p)
	line := tail
	if i := strings.IndexByte(tail, '\n'); i >= 0 {
		line = tail[:i]
		if !strings.HasPrefix(tail, "panic:") && !strings.HasPrefix(tail, "fatal error:") && !strings.HasPrefix(tail, "runtime") {
			line = tail[strings.LastIndexByte(tail, '\n')+1:]
		}
	}
	line = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || !unicode.IsPrint(r) {
			return -1
		}
		return r
	}, strings.TrimSpace(line))
	if len(line) > 160 {
		line = strings.ToValidUTF8(line[:160], "") + "..."
	}
	return line
}

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
