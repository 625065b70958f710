package linux

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox/linux/boot"
)

// With user namespaces, every sandbox runs in a user namespace of its own
// whose ids 0..65535 are an unprivileged range of host ids of its own, its
// slot's: root inside is host uid idBase + slot·idRange, never host root,
// and what a sandbox writes (on its disk, in volumes) is owned on the host
// by its range. The image's files, owned by the host's root, are shown to
// it through idmapped mounts (root's files as its root's), made by the
// server and handed to the sandbox's init as file descriptors, as volumes
// are. Volumes are stored with ids of one fixed range, the volume range
// (slot 0: idBase..idBase+65535), and shown to each sandbox through an
// idmapped mount from it to the sandbox's range: a volume survives its
// sandboxes and every sandbox sees the same owners in it, and nothing a
// sandbox writes is owned on the host by an id below idBase (a setuid
// binary it leaves in a volume is setuid to an unprivileged user).
const (
	idBase   = 100000
	idRange  = 65536
	maxSlots = 4096
)

// VolumeIDBase is the host id that a volume's files owned by root inside
// sandboxes have; uid k inside is VolumeIDBase+k on the host.
const VolumeIDBase = idBase

// hostID is the host id of root in the sandbox of slot n.
func hostID(slot int) int { return idBase + slot*idRange }

// idmaps hands out slots and keeps, per slot, a user namespace mapping the
// sandbox's ids (0→S) and one mapping the volume range (idBase→S), for
// idmapped mounts. Those are made on first use and kept: a slot's
// mappings never change. A slot in use is also locked host-wide (an flock
// on a file of lockDir, held while the sandbox exists), so that two msb
// servers on one host (of different homes) never give two sandboxes the
// same ids.
type idmaps struct {
	lockDir string
	mu      sync.Mutex
	used    map[int]bool
	locks   map[int]*os.File
	ns      map[int]*os.File
	volume  map[int]*os.File
}

// slotLockDir holds the host-wide locks of the id ranges in use.
const slotLockDir = "/run/msb/id-ranges"

func newIDMaps(lockDir string) *idmaps {
	return &idmaps{lockDir: lockDir, used: map[int]bool{}, locks: map[int]*os.File{}, ns: map[int]*os.File{}, volume: map[int]*os.File{}}
}

// take returns a free slot, or an error of class Exhausted (or
// Unavailable when the locks cannot be taken).
func (m *idmaps) take() (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for n := 1; n <= maxSlots; n++ {
		if m.used[n] {
			continue
		}
		ok, err := m.lockLocked(n)
		if err != nil {
			return 0, fmt.Errorf("user id ranges: %w: %w", err, errdefs.ErrUnavailable)
		}
		if ok {
			m.used[n] = true
			return n, nil
		}
	}
	return 0, errdefs.Exhaustedf("every one of the %d user id ranges of this host is in use (by this server or another msb server): delete sandboxes first", maxSlots)
}

// lockLocked takes the host-wide lock of slot n (m.mu held); false when
// another server (or another engine of this process) holds it.
func (m *idmaps) lockLocked(n int) (bool, error) {
	if m.locks[n] != nil {
		return true, nil
	}
	if err := os.MkdirAll(m.lockDir, 0o700); err != nil {
		return false, err
	}
	fd, err := unix.Open(filepath.Join(m.lockDir, strconv.Itoa(n)), unix.O_RDWR|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return false, err
	}
	if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.EWOULDBLOCK) {
			return false, nil
		}
		return false, err
	}
	m.locks[n] = os.NewFile(uintptr(fd), "id range lock")
	return true, nil
}

// subordinateOverlaps lists the entries of the subordinate id files
// (/etc/subuid, /etc/subgid: "user:start:count") whose range overlaps the
// host ids msb gives sandboxes and volumes.
func subordinateOverlaps(files ...string) []string {
	var out []string
	lo, hi := idBase, hostID(maxSlots+1) // [lo, hi)
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			f := strings.Split(strings.TrimSpace(line), ":")
			if len(f) != 3 {
				continue
			}
			start, err1 := strconv.Atoi(f[1])
			count, err2 := strconv.Atoi(f[2])
			if err1 == nil && err2 == nil && start < hi && start+count > lo {
				out = append(out, file+": "+strings.TrimSpace(line))
			}
		}
	}
	return out
}

// slotFile, in a sandbox's directory, records its slot, so that the
// slot of a sandbox a crashed server left stays taken until it is deleted.
const slotFile = "slot"

func writeSlot(dir string, slot int) error {
	// A ready init's slot replaces the one Create wrote (bindReady).
	return writeFileAtomic(dir, slotFile, []byte(strconv.Itoa(slot)))
}

// reserve marks as taken the slot recorded in the sandbox directory dir
// (one a crashed server left) and returns it; 0 when there is none.
func (m *idmaps) reserve(dir string) int {
	data, err := os.ReadFile(filepath.Join(dir, slotFile))
	if err != nil {
		return 0
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || n < 1 || n > maxSlots {
		return 0
	}
	m.mu.Lock()
	m.used[n] = true
	// Taken back if no one took it since the crash; if another server
	// did, the slot stays out of this server's use all the same until the
	// leftover is deleted.
	m.lockLocked(n)
	m.mu.Unlock()
	return n
}

func (m *idmaps) free(slot int) {
	if slot == 0 {
		return
	}
	m.mu.Lock()
	delete(m.used, slot)
	if f := m.locks[slot]; f != nil {
		f.Close()
		delete(m.locks, slot)
	}
	m.mu.Unlock()
}

// userns returns the user namespace of slot's sandbox ids, or of its
// volume mapping.
func (m *idmaps) userns(slot int, volume bool) (*os.File, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	cache, inside := m.ns, 0
	if volume {
		cache, inside = m.volume, idBase
	}
	if f := cache[slot]; f != nil {
		return f, nil
	}
	f, err := newUserns(inside, hostID(slot), idRange)
	if err != nil {
		return nil, fmt.Errorf("user namespace of id range %d: %w", slot, err)
	}
	cache[slot] = f
	return f, nil
}

func (m *idmaps) close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, c := range []map[int]*os.File{m.ns, m.volume, m.locks} {
		for k, f := range c {
			f.Close()
			delete(c, k)
		}
	}
}

// newUserns makes a user namespace mapping ids inside..inside+size-1 to
// host ids host..host+size-1 and returns it open: a child is cloned into
// it and stopped at its exec (ptrace) once the maps are written, its
// namespace opened, and the child killed, as runc does.
func newUserns(inside, host, size int) (*os.File, error) {
	type result struct {
		f   *os.File
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// The tracer of a ptraced child is the thread that cloned it.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		attr := &os.ProcAttr{Sys: &syscall.SysProcAttr{
			Cloneflags:  unix.CLONE_NEWUSER,
			UidMappings: []syscall.SysProcIDMap{{ContainerID: inside, HostID: host, Size: size}},
			GidMappings: []syscall.SysProcIDMap{{ContainerID: inside, HostID: host, Size: size}},
			Ptrace:      true,
			// A server that exits in between would leave it stopped,
			// an orphan holding the namespace: it dies with this
			// thread, which lives until it has been reaped.
			Pdeathsig: syscall.SIGKILL,
		}}
		p, err := os.StartProcess("/proc/self/exe", []string{"msb-userns"}, attr)
		if err != nil {
			ch <- result{nil, err}
			return
		}
		f, err := os.Open("/proc/" + strconv.Itoa(p.Pid) + "/ns/user")
		p.Kill()
		p.Wait()
		ch <- result{f, err}
	}()
	r := <-ch
	return r.f, r.err
}

// idmappedClone clones the mount tree at path (or of the descriptor fd,
// with path "": name then names it in errors) into a detached mount,
// read-only if asked, nosuid and nodev, and shown through the user
// namespace userns unless it is nil.
func idmappedClone(fd int, path, name string, userns *os.File, readOnly bool) (int, error) {
	flags := unix.OPEN_TREE_CLONE | unix.OPEN_TREE_CLOEXEC
	if path == "" {
		flags |= unix.AT_EMPTY_PATH
	} else {
		name = path
	}
	if fd < 0 {
		fd = unix.AT_FDCWD
	}
	tree, err := unix.OpenTree(fd, path, uint(flags))
	if err != nil {
		return -1, fmt.Errorf("open_tree %s: %w", name, err)
	}
	attr := &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV}
	if readOnly {
		attr.Attr_set |= unix.MOUNT_ATTR_RDONLY
	}
	if userns != nil {
		attr.Attr_set |= unix.MOUNT_ATTR_IDMAP
		attr.Userns_fd = uint64(userns.Fd())
	}
	if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH, attr); err != nil {
		unix.Close(tree)
		if userns != nil {
			return -1, idmapErr(name, err)
		}
		return -1, fmt.Errorf("mount_setattr %s: %w", name, err)
	}
	return tree, nil
}

// mountRoot mounts the sandbox's overlay, detached, as the server: the
// layers (lowest first) as idmapped clones through userns, under upper
// and work, which are chowned to the sandbox's root (host id owner).
func mountRoot(layers []string, upper, work string, userns *os.File, owner int) (*os.File, error) {
	for _, d := range []string{upper, work} {
		if err := os.Lchown(d, owner, owner); err != nil {
			return nil, fmt.Errorf("root file system: %w", err)
		}
	}
	var lower []string
	var fds []int
	// The overlay holds the layers once made: the clones are closed then,
	// in the background, since closing a detached mount waits for an RCU
	// grace period (0.2 to 0.5 ms here, on the start's path otherwise).
	defer func() { go boot.CloseFDs(fds) }()
	for i := len(layers) - 1; i >= 0; i-- { // overlayfs lists the top layer first
		fd, err := idmappedClone(-1, layers[i], "", userns, true)
		if err != nil {
			return nil, fmt.Errorf("image layer: %w", err)
		}
		fds = append(fds, fd)
		lower = append(lower, "/proc/self/fd/"+strconv.Itoa(fd))
	}
	fsfd, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("fsopen overlay: %w", err)
	}
	defer unix.Close(fsfd)
	for _, o := range [][2]string{{"lowerdir", strings.Join(lower, ":")}, {"upperdir", upper}, {"workdir", work}} {
		if err := unix.FsconfigSetString(fsfd, o[0], o[1]); err != nil {
			return nil, fmt.Errorf("overlay option %s: %w", o[0], err)
		}
	}
	if err := unix.FsconfigCreate(fsfd); err != nil {
		return nil, fmt.Errorf("mounting the image's overlay: %w", err)
	}
	mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, unix.MOUNT_ATTR_NODEV)
	if err != nil {
		return nil, fmt.Errorf("fsmount overlay: %w", err)
	}
	return os.NewFile(uintptr(mfd), "root"), nil
}

// chownUserCgroup gives the sandbox's root (host id owner) the user pids
// cgroup's directory and the files that move tasks, so that its portal
// can make a cgroup per command there and move its forking thread in.
func (c *cgroups) chownUserCgroup(key string, owner int) error {
	if c.v2 || c.pids == "" {
		return nil
	}
	dir := c.dir(c.pids, key) + "/" + userCgroup
	for _, p := range []string{dir, dir + "/tasks", dir + "/cgroup.procs"} {
		if err := os.Chown(p, owner, owner); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("user pids cgroup: %w", err)
		}
	}
	return nil
}

// idmapErr says what to do when a file system cannot be idmapped.
func idmapErr(path string, err error) error {
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EPERM) || errors.Is(err, unix.EOPNOTSUPP) {
		return fmt.Errorf("idmapped mount of %s: %w (its file system cannot be idmapped: keep msb's home and volume roots on ext4, XFS, btrfs or tmpfs, or set user_namespaces = false in config.toml)", path, err)
	}
	return fmt.Errorf("idmapped mount of %s: %w", path, err)
}
