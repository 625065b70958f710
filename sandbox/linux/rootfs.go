package linux

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox"
)

// maxMountData is the kernel's limit on a mount's option string (a page).
const maxMountData = 4096

// layersFile, in a sandbox's directory, lists the image layers its overlay
// is made of. It is written when the sandbox is created and goes with its
// directory.
const layersFile = "layers.json"

// recordLayers writes the list of the sandbox's layers into its directory
// dir, for LayersInUse.
func recordLayers(dir string, layers []string) error {
	data, err := json.Marshal(layers)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(dir, layersFile, data); err != nil {
		return fmt.Errorf("recording the image's layers: %w", err)
	}
	return nil
}

// writeFileAtomic writes data (mode 0600) to the file name in dir through
// a file written aside and renamed into place: a crash leaves the old
// content or the new, never a part of either.
func writeFileAtomic(dir, name string, data []byte) error {
	tmp := filepath.Join(dir, name+".tmp")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, name))
}

// LayersInUse lists the image layer directories that the sandboxes in
// sandboxDir (a Config's SandboxDir) are made of: those of every sandbox
// whose directory is there, whichever process runs it, and those a crashed
// server left until they are cleaned up. An image store keeps these layers
// when it prunes. It reads files only, so it works from any process and
// mount namespace. Errors are the file system's, or say which sandbox's
// record is damaged.
func LayersInUse(sandboxDir string) ([]string, error) {
	entries, err := os.ReadDir(sandboxDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		data, err := os.ReadFile(filepath.Join(sandboxDir, e.Name(), layersFile))
		if errors.Is(err, fs.ErrNotExist) {
			continue // no image layers, or deleted meanwhile
		}
		if err != nil {
			return nil, err
		}
		var layers []string
		if err := json.Unmarshal(data, &layers); err != nil {
			return nil, fmt.Errorf("sandbox %s: its layer list is damaged: %w", e.Name(), err)
		}
		out = append(out, layers...)
	}
	return out, nil
}

// inRoot does file operations inside a sandbox's root without ever leaving
// it: paths are resolved as if the root were "/" (openat2 with
// RESOLVE_IN_ROOT, so the kernel itself keeps every symlink and ".." in),
// and final components are never followed, so a symlink an image planted
// (say /etc/hostname -> /etc/shadow) points into the sandbox's root, never
// at the host.
type inRoot struct {
	root *os.File
	// base, when set, is the host id of the sandbox's root, for a root
	// the server writes into itself (pool.go) while the sandbox runs in a
	// user namespace: what it makes is owned by base (+ the uid asked).
	base int
}

// own gives the entry name of the directory dirfd to the sandbox's root,
// when the server writes the root for a sandbox in a user namespace.
func (r *inRoot) own(dirfd int, name string) error {
	if r.base == 0 {
		return nil
	}
	return unix.Fchownat(dirfd, name, r.base, r.base, unix.AT_SYMLINK_NOFOLLOW)
}

func openRoot(rootfs string) (*inRoot, error) {
	f, err := os.OpenFile(rootfs, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return &inRoot{root: f}, nil
}

func (r *inRoot) Close() error { return r.root.Close() }

// open opens p resolved inside the root.
func (r *inRoot) open(p string, flags uint64) (int, error) {
	return unix.Openat2(int(r.root.Fd()), p, &unix.OpenHow{
		Flags:   flags | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	})
}

// mkdirAll creates p and its parents inside the root and returns a handle
// (O_PATH) on it.
func (r *inRoot) mkdirAll(p string) (*os.File, error) {
	p = strings.TrimPrefix(path.Clean("/"+p), "/")
	if p == "" {
		p = "."
	}
	const dirFlags = unix.O_PATH | unix.O_DIRECTORY
	fd, err := r.open(p, dirFlags)
	if err == nil {
		return os.NewFile(uintptr(fd), p), nil
	}
	if !errors.Is(err, unix.ENOENT) {
		return nil, err
	}
	// Each prefix is resolved from the root again, and a missing
	// directory is made in its parent's handle by its name alone.
	parent, err := r.open(".", dirFlags)
	if err != nil {
		return nil, err
	}
	parts := strings.Split(p, "/")
	for i, part := range parts {
		prefix := strings.Join(parts[:i+1], "/")
		fd, err := r.open(prefix, dirFlags)
		if errors.Is(err, unix.ENOENT) {
			if err := unix.Mkdirat(parent, part, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
				unix.Close(parent)
				return nil, fmt.Errorf("%s: %w", prefix, err)
			} else if err == nil {
				if err := r.own(parent, part); err != nil {
					unix.Close(parent)
					return nil, fmt.Errorf("%s: %w", prefix, err)
				}
			}
			fd, err = r.open(prefix, dirFlags)
		}
		unix.Close(parent)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", prefix, err)
		}
		parent = fd
	}
	return os.NewFile(uintptr(parent), p), nil
}

// mkdir creates directory p (and parents) and sets its mode.
func (r *inRoot) mkdir(p string, mode fs.FileMode) error {
	h, err := r.mkdirAll(p)
	if err != nil {
		return err
	}
	defer h.Close()
	if mode == 0 {
		return nil
	}
	// The handle is O_PATH; the same directory is reopened through it.
	f, err := os.OpenFile("/proc/self/fd/"+strconv.Itoa(int(h.Fd())), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Chmod(mode)
}

// writeFile replaces whatever is at p with a regular file.
func (r *inRoot) writeFile(p string, content []byte, mode fs.FileMode) error {
	parent, err := r.mkdirAll(path.Dir(p))
	if err != nil {
		return err
	}
	defer parent.Close()
	base := path.Base(p)
	pfd := int(parent.Fd())
	if err := unlinkAny(pfd, base); err != nil {
		return err
	}
	fd, err := unix.Openat(pfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, uint32(mode.Perm()))
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), p)
	defer f.Close()
	if err := r.own(pfd, base); err != nil {
		return err
	}
	if _, err := f.Write(content); err != nil {
		return err
	}
	return f.Chmod(mode)
}

// symlink replaces whatever is at p with a symlink to target.
func (r *inRoot) symlink(target, p string) error {
	parent, err := r.mkdirAll(path.Dir(p))
	if err != nil {
		return err
	}
	defer parent.Close()
	if err := unlinkAny(int(parent.Fd()), path.Base(p)); err != nil {
		return err
	}
	if err := unix.Symlinkat(target, int(parent.Fd()), path.Base(p)); err != nil {
		return err
	}
	return r.own(int(parent.Fd()), path.Base(p))
}

// chown sets the owner of p, without following a final symlink.
func (r *inRoot) chown(p string, uid, gid int) error {
	parent, err := r.mkdirAll(path.Dir(p))
	if err != nil {
		return err
	}
	defer parent.Close()
	return unix.Fchownat(int(parent.Fd()), path.Base(p), r.base+uid, r.base+gid, unix.AT_SYMLINK_NOFOLLOW)
}

// isDir reports whether p resolves to a directory inside the root.
func (r *inRoot) isDir(p string) bool {
	fd, err := r.open(p, unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
}

// unlinkAny removes a file or empty directory; a missing one is fine.
func unlinkAny(dirfd int, name string) error {
	err := unix.Unlinkat(dirfd, name, 0)
	if errors.Is(err, unix.EISDIR) {
		err = unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR)
	}
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	return err
}

// resolveVolume opens the host side of a volume beneath its volume root
// with openat2(RESOLVE_BENEATH), which refuses any symlink or ".." leading
// out of it at this very moment (whatever was checked before), and says
// whether it is a directory (else it is a regular file). The result is an
// O_PATH descriptor. It returns an error wrapping errdefs.ErrInvalid when
// the source leads out of its root or is neither a directory nor a file.
func resolveVolume(m sandbox.Mount) (fd int, dir bool, err error) {
	rel, err := filepath.Rel(m.Beneath, m.Source)
	if err != nil || !filepath.IsLocal(rel) && rel != "." {
		return -1, false, fmt.Errorf("volume %s: not inside %s: %w", m.Source, m.Beneath, errdefs.ErrInvalid)
	}
	rootfd, err := unix.Open(m.Beneath, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, false, fmt.Errorf("volume root %s: %w", m.Beneath, err)
	}
	defer unix.Close(rootfd)
	src, err := unix.Openat2(rootfd, rel, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS,
	})
	if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ELOOP) {
		return -1, false, fmt.Errorf("volume %s: a symlink or \"..\" leads out of the volume root: %w", m.Source, errdefs.ErrInvalid)
	}
	if err != nil {
		return -1, false, fmt.Errorf("volume %s: %w", m.Source, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(src, &st); err != nil {
		unix.Close(src)
		return -1, false, fmt.Errorf("volume %s: %w", m.Source, err)
	}
	dir = st.Mode&unix.S_IFMT == unix.S_IFDIR
	if !dir && st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(src)
		return -1, false, fmt.Errorf("volume %s is neither a directory nor a file: %w", m.Source, errdefs.ErrInvalid)
	}
	return src, dir, nil
}

// openVolume prepares a volume for the sandbox's init to mount, entirely
// through file descriptors: the source is resolved beneath its volume root
// (resolveVolume), cloned with open_tree into a detached mount, and made
// nosuid, nodev (and read-only) with mount_setattr. The init moves it onto
// its target, resolved inside the sandbox's root, in the sandbox's own
// mount namespace. The detached mount is in no mount namespace meanwhile.
// Errors are those of resolveVolume, or the kernel's.
func openVolume(m sandbox.Mount, userns *os.File) (tree *os.File, dir bool, err error) {
	src, dir, err := resolveVolume(m)
	if err != nil {
		return nil, false, err
	}
	defer unix.Close(src)
	// With userns, shown from the volume range to the sandbox's (userns.go).
	fd, err := idmappedClone(src, "", m.Source, userns, m.ReadOnly)
	if err != nil {
		return nil, false, fmt.Errorf("volume: %w", err)
	}
	return os.NewFile(uintptr(fd), "volume"), dir, nil
}

// fileTarget returns an O_PATH handle on the regular file at p inside the
// root, creating an empty one if there is none, for a file volume to be
// mounted on. Whatever else the image has there (a fifo, whose open would
// block, a device, a symlink, a directory) is refused with an error
// wrapping errdefs.ErrInvalid; nothing at p is ever opened for I/O.
func (r *inRoot) fileTarget(p string) (*os.File, error) {
	parent, err := r.mkdirAll(path.Dir(p))
	if err != nil {
		return nil, err
	}
	defer parent.Close()
	pfd, base := int(parent.Fd()), path.Base(p)
	fd, err := unix.Openat(pfd, base, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		var created int
		created, err = unix.Openat(pfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
		if err == nil {
			unix.Close(created)
			fd, err = unix.Openat(pfd, base, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		}
	}
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), p)
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("the image has a %s there, not a regular file, to mount a file volume on: choose another path: %w", fileKind(fi.Mode()), errdefs.ErrInvalid)
	}
	return f, nil
}

// fileKind names the type of a file for a person.
func fileKind(m fs.FileMode) string {
	switch {
	case m&fs.ModeNamedPipe != 0:
		return "fifo"
	case m&fs.ModeSymlink != 0:
		return "symlink"
	case m.IsDir():
		return "directory"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m&fs.ModeDevice != 0:
		return "device"
	}
	return "special file"
}
