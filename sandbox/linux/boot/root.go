package boot

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/errdefs"
)

// Root does file operations inside a sandbox's root without ever leaving
// it: paths are resolved as if the root were "/" (openat2 with
// RESOLVE_IN_ROOT, so the kernel itself keeps every symlink and ".." in),
// and final components are never followed, so a symlink an image planted
// (say /etc/hostname -> /etc/shadow) points into the sandbox's root, never
// at the host.
type Root struct {
	root *os.File
	// Base, when set, is the host id of the sandbox's root, for a root
	// the server writes into itself (a pooled sandbox's, sandbox/linux)
	// while the sandbox runs in a user namespace: what it makes is owned
	// by Base (+ the uid asked).
	Base int
}

// own gives the entry name of the directory dirfd to the sandbox's root,
// when the server writes the root for a sandbox in a user namespace.
func (r *Root) own(dirfd int, name string) error {
	if r.Base == 0 {
		return nil
	}
	return unix.Fchownat(dirfd, name, r.Base, r.Base, unix.AT_SYMLINK_NOFOLLOW)
}

// OpenRoot opens the root at the host path rootfs (a directory, or
// /proc/PID/root of a sandbox's init).
func OpenRoot(rootfs string) (*Root, error) {
	f, err := os.OpenFile(rootfs, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return &Root{root: f}, nil
}

func (r *Root) Close() error { return r.root.Close() }

// open opens p resolved inside the root.
func (r *Root) open(p string, flags uint64) (int, error) {
	return unix.Openat2(int(r.root.Fd()), p, &unix.OpenHow{
		Flags:   flags | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	})
}

// MkdirAll creates p and its parents inside the root and returns a handle
// (O_PATH) on it.
func (r *Root) MkdirAll(p string) (*os.File, error) {
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

// Mkdir creates directory p (and parents) and sets its mode.
func (r *Root) Mkdir(p string, mode fs.FileMode) error {
	h, err := r.MkdirAll(p)
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
func (r *Root) writeFile(p string, content []byte, mode fs.FileMode) error {
	parent, err := r.MkdirAll(path.Dir(p))
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
func (r *Root) symlink(target, p string) error {
	parent, err := r.MkdirAll(path.Dir(p))
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
func (r *Root) chown(p string, uid, gid int) error {
	parent, err := r.MkdirAll(path.Dir(p))
	if err != nil {
		return err
	}
	defer parent.Close()
	return unix.Fchownat(int(parent.Fd()), path.Base(p), r.Base+uid, r.Base+gid, unix.AT_SYMLINK_NOFOLLOW)
}

// isDir reports whether p resolves to a directory inside the root.
func (r *Root) isDir(p string) bool {
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

// FileTarget returns an O_PATH handle on the regular file at p inside the
// root, creating an empty one if there is none, for a file volume to be
// mounted on. Whatever else the image has there (a fifo, whose open would
// block, a device, a symlink, a directory) is refused with an error
// wrapping errdefs.ErrInvalid; nothing at p is ever opened for I/O.
func (r *Root) FileTarget(p string) (*os.File, error) {
	parent, err := r.MkdirAll(path.Dir(p))
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
