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
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"unicode"

	"github.com/moby/sys/mountinfo"
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

// prepareRoot makes the directories of a sandbox's root file system in
// its directory dir: the overlay's upper and work directories. An image's
// layers are recorded there first, holding layerLock (if set) shared
// meanwhile, so that a prune, which holds it exclusively, either sees the
// record or has finished and the missing layers are found here. The root
// itself is mounted and built by the sandbox's init, inside its own mount
// namespace.
func prepareRoot(dir, upper string, layers []string, layerLock string) error {
	mkdirs := func() error {
		if upper != dir {
			return nil // on the sandbox's disk, made with it
		}
		for _, d := range []string{"upper", "work"} {
			if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
				return err
			}
		}
		return nil
	}
	if len(layers) == 0 {
		return mkdirs()
	}
	var opts int
	for _, l := range layers {
		if strings.ContainsAny(l, ":,") {
			return fmt.Errorf("layer directory %q contains ':' or ','", l)
		}
		opts += len(l) + 1
	}
	if opts+2*len(upper)+len("lowerdir=,upperdir=/upper,workdir=/work") >= maxMountData {
		return fmt.Errorf("the image has too many layers (%d) to mount: %w", len(layers), errdefs.ErrInvalid)
	}
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
	return mkdirs()
}

// volumes are a user's mounts (those with a Beneath root), which the
// server resolves and opens; imageMounts the image's, host paths the init
// binds itself.
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

// trashPrefix starts the names of sandbox directories being removed in
// the background; no sandbox key starts with a dot.
const trashPrefix = ".trash-"

// trash removes the directories of deleted sandboxes off the request
// path: a sandbox's directory is renamed out of its name at once (one
// rename) and removed by a goroutine. Only directories of sandboxes this
// engine ran go there: nothing is mounted on the host for them, so no
// mount check is needed (a leftover of an earlier version may have mounts,
// and goes through removeSandboxDir).
type trash struct {
	dir string // SandboxDir
	seq atomic.Uint64
	wg  sync.WaitGroup
}

// discard moves the sandbox directory dir into the trash and removes it in
// the background, after first, which gets the directory's new path (or,
// when it cannot be moved, dir, at once). The image layers it records stop
// counting as used at once. It returns an error when dir can be neither
// moved nor removed.
func (t *trash) discard(dir string, first func(moved string)) error {
	os.Remove(filepath.Join(dir, layersFile))
	to := filepath.Join(t.dir, fmt.Sprintf("%s%s-%d-%d", trashPrefix, filepath.Base(dir), os.Getpid(), t.seq.Add(1)))
	if err := os.Rename(dir, to); err != nil {
		first(dir)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return removeSandboxDir(dir)
	}
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		first(to)
		removeTree(to, devOf(t.dir))
	}()
	return nil
}

// wait waits for the removals under way.
func (t *trash) wait() { t.wg.Wait() }

// empty removes what an earlier server left in the trash.
func (t *trash) empty() {
	entries, _ := os.ReadDir(t.dir)
	dev := devOf(t.dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), trashPrefix) {
			removeTree(filepath.Join(t.dir, e.Name()), dev)
		}
	}
}

// removeTree deletes the directory tree at p without following symlinks
// and without leaving the file system dev (a mount found there is an error,
// never something to delete through). It works through directory handles,
// holding one at a time and climbing back with "..", so neither the depth
// of a tree a sandbox built nor the length of its paths can stop it.
func removeTree(p string, dev uint64) error {
	unlimited := -1
	return removeTreeBudget(p, dev, &unlimited)
}

// errBudget is removeTreeBudget's error when the tree has more entries
// than its budget.
var errBudget = errors.New("more entries than the budget")

// removeTreeBudget is removeTree that takes every entry it removes from
// *budget and gives up with errBudget once it is spent (no limit if
// negative): hard links make a tree's entries many more than its inodes.
func removeTreeBudget(p string, dev uint64, budget *int) error {
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
		child, err := emptyDir(fd, dev, budget)
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
		if err := spend(budget); err != nil {
			return err
		}
		if err := unix.Unlinkat(fd, name, unix.AT_REMOVEDIR); err != nil && !errors.Is(err, unix.ENOENT) {
			return err
		}
	}
}

// spend takes one entry from *budget (none if it is negative), or
// returns errBudget when it is spent.
func spend(budget *int) error {
	if *budget == 0 {
		return errBudget
	}
	if *budget > 0 {
		*budget--
	}
	return nil
}

// emptyDir unlinks every non-directory entry of the directory fd, each
// from budget (see spend), and returns the name of a subdirectory to
// descend into, or "" when fd is empty. A subdirectory on another file
// system is an error.
func emptyDir(fd int, dev uint64, budget *int) (string, error) {
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
				if err := spend(budget); err != nil {
					return "", err
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

// logLimit bounds portal.log: the portal logs its own failures there, and a
// sandbox must not fill the host's disk through it.
const logLimit = 1 << 20

// boundedLog writes to a file until it holds logLimit bytes, then
// discards. The file is made (truncated) on the first write: most portals
// never write a line, and a start then makes no file for it.
type boundedLog struct {
	mu   sync.Mutex
	path string
	f    *os.File
	err  error
	n    int64
}

func openBoundedLog(p string) *boundedLog {
	return &boundedLog{path: p}
}

func (l *boundedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil && l.err == nil {
		l.f, l.err = os.OpenFile(l.path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	}
	if room := logLimit - l.n; room > 0 && l.f != nil {
		q := p
		if int64(len(q)) > room {
			q = q[:room]
		}
		n, _ := l.f.Write(q)
		l.n += int64(n)
	}
	return len(p), nil
}

func (l *boundedLog) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	return l.f.Close()
}

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
