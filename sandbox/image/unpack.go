package image

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Names of the OCI whiteout markers inside a layer. Other names starting
// with metaPrefix (AUFS's .wh..wh.plnk, .wh..wh.aufs) are the layer tool's
// own bookkeeping, never files of the image.
const (
	whiteoutPrefix = ".wh."
	metaPrefix     = ".wh..wh."
	opaqueMarker   = ".wh..wh..opq"
)

// errUnsafe marks a layer entry refused because it would reach outside the
// layer's directory.
var errUnsafe = errors.New("unsafe layer entry")

// unpackLayer writes the tar stream r into dir, an empty directory, in the
// form overlayfs reads as a lower layer: a whiteout ".wh.NAME" becomes a
// character device 0:0 named NAME, an opaque marker becomes the
// trusted.overlay.opaque xattr of its directory. A whiteout and an entry of
// the same name in one layer hide only the lower layers' entry: a directory
// becomes opaque. Other ".wh..wh." entries, and everything under them, are
// skipped. Modes (setuid bits included), ownership and modification times
// are kept.
//
// The unpacker never follows a symlink on the host: every parent directory
// is opened with openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS) from dir, so
// no entry can write through a link, absolute or relative. Entries whose
// names escape the layer ("../x"), hardlinks to outside it and relative
// symlinks climbing above the layer's root are refused with errors wrapping
// errUnsafe. Absolute symlink targets are kept: they are resolved inside
// the sandbox's root, never on the host. Device nodes are skipped (the
// sandbox's device cgroup would refuse them anyway); fifos are kept.
//
// It returns the bytes of regular files written.
func unpackLayer(r io.Reader, dir string) (int64, error) {
	rootfd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("open layer directory: %w", err)
	}
	defer unix.Close(rootfd)
	u := &unpacker{root: rootfd}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return u.size, nil
		}
		if err != nil {
			return u.size, fmt.Errorf("reading layer: %w", err)
		}
		if err := u.entry(hdr, tr); err != nil {
			return u.size, err
		}
	}
}

type unpacker struct {
	root int
	size int64
}

// cleanName turns a tar entry name into a path relative to the layer root,
// refusing names that leave it.
func cleanName(name string) (string, error) {
	p := strings.TrimLeft(name, "/")
	if p == "" || p == "." || p == "./" {
		return ".", nil
	}
	if !filepath.IsLocal(p) {
		return "", fmt.Errorf("layer entry %q leaves the layer's root: %w", name, errUnsafe)
	}
	return path.Clean(p), nil
}

// openDir opens the directory rel beneath the layer root, creating missing
// components (0755, root-owned) and refusing symlinks on the way. It
// returns an O_PATH descriptor, or with flags O_RDONLY one usable for
// xattrs.
func (u *unpacker) openDir(rel string, rdonly bool) (int, error) {
	flags := uint64(unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC)
	if rdonly {
		flags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC
	}
	how := &unix.OpenHow{Flags: flags, Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV}
	if rel == "." {
		return unix.Openat2(u.root, ".", how)
	}
	fd, err := unix.Openat2(u.root, rel, how)
	if err == nil {
		return fd, nil
	}
	if !errors.Is(err, unix.ENOENT) {
		return -1, u.pathErr(rel, err)
	}
	// Create the missing components one by one.
	cur := "."
	for _, comp := range strings.Split(rel, "/") {
		next := path.Join(cur, comp)
		parent, err := unix.Openat2(u.root, cur, &unix.OpenHow{Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: how.Resolve})
		if err != nil {
			return -1, u.pathErr(cur, err)
		}
		err = unix.Mkdirat(parent, comp, 0o755)
		unix.Close(parent)
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return -1, fmt.Errorf("layer: create %s: %w", next, err)
		}
		cur = next
	}
	fd, err = unix.Openat2(u.root, rel, how)
	if err != nil {
		return -1, u.pathErr(rel, err)
	}
	return fd, nil
}

func (u *unpacker) pathErr(rel string, err error) error {
	if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOTDIR) {
		return fmt.Errorf("layer path %q passes through a symlink or non-directory: %w", rel, errUnsafe)
	}
	return fmt.Errorf("layer: open %s: %w", rel, err)
}

// removeAt removes name in dirfd, whatever it is; a missing name is fine.
func removeAt(dirfd int, name string) error {
	err := unix.Unlinkat(dirfd, name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EPERM) {
		return err
	}
	// A directory: remove its tree without following links.
	return os.RemoveAll("/proc/self/fd/" + strconv.Itoa(dirfd) + "/" + name)
}

func (u *unpacker) entry(hdr *tar.Header, r io.Reader) error {
	rel, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	if rel == "." {
		return nil // the layer root keeps the mode msb gives it
	}
	parentRel, base := path.Dir(rel), path.Base(rel)
	if isMeta(rel) {
		return nil
	}

	if base == opaqueMarker {
		fd, err := u.openDir(parentRel, true)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := setOpaque(fd); err != nil {
			return fmt.Errorf("layer: mark %s opaque: %w", parentRel, err)
		}
		return nil
	}
	parent, err := u.openDir(parentRel, false)
	if err != nil {
		return err
	}
	defer unix.Close(parent)
	if strings.HasPrefix(base, whiteoutPrefix) {
		name := strings.TrimPrefix(base, whiteoutPrefix)
		if name == "" || name == "." || name == ".." {
			return fmt.Errorf("layer whiteout %q names nothing: %w", hdr.Name, errUnsafe)
		}
		// A whiteout hides the lower layers' entry only; one this layer
		// made already stays, and a directory no longer merges with theirs.
		var st unix.Stat_t
		if err := unix.Fstatat(parent, name, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil {
			if st.Mode&unix.S_IFMT == unix.S_IFDIR {
				if err := opaqueAt(parent, name); err != nil {
					return fmt.Errorf("layer: whiteout %s: %w", rel, err)
				}
			}
			return nil
		} else if !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("layer: whiteout %s: %w", rel, err)
		}
		if err := unix.Mknodat(parent, name, unix.S_IFCHR, 0); err != nil {
			return fmt.Errorf("layer: whiteout %s: %w", rel, err)
		}
		return nil
	}

	mode := uint32(hdr.Mode) & 0o7777
	switch hdr.Typeflag {
	case tar.TypeDir:
		var st unix.Stat_t
		whiteout := false
		if err := unix.Fstatat(parent, base, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil && st.Mode&unix.S_IFMT != unix.S_IFDIR {
			whiteout = st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0
			if err := removeAt(parent, base); err != nil {
				return fmt.Errorf("layer: replace %s: %w", rel, err)
			}
		}
		if err := unix.Mkdirat(parent, base, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("layer: create %s: %w", rel, err)
		}
		if whiteout {
			// ".wh.NAME" then "NAME/": the lower layers' NAME is deleted,
			// so nothing of it may show through this directory.
			if err := opaqueAt(parent, base); err != nil {
				return fmt.Errorf("layer: mark %s opaque: %w", rel, err)
			}
		}
	case tar.TypeReg, tar.TypeRegA: //nolint:staticcheck // old archives still use TypeRegA
		if err := removeAt(parent, base); err != nil {
			return fmt.Errorf("layer: replace %s: %w", rel, err)
		}
		fd, err := unix.Openat(parent, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return fmt.Errorf("layer: create %s: %w", rel, err)
		}
		f := os.NewFile(uintptr(fd), rel)
		n, err := io.Copy(f, r)
		u.size += n
		if err == nil {
			err = setXattrs(fd, hdr)
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("layer: write %s: %w", rel, err)
		}
	case tar.TypeSymlink:
		if escapes(parentRel, hdr.Linkname) {
			return fmt.Errorf("layer symlink %q -> %q climbs out of the image's root: %w", hdr.Name, hdr.Linkname, errUnsafe)
		}
		if err := removeAt(parent, base); err != nil {
			return fmt.Errorf("layer: replace %s: %w", rel, err)
		}
		if err := unix.Symlinkat(hdr.Linkname, parent, base); err != nil {
			return fmt.Errorf("layer: symlink %s: %w", rel, err)
		}
	case tar.TypeLink:
		target, err := cleanName(hdr.Linkname)
		if err != nil || target == "." {
			return fmt.Errorf("layer hardlink %q -> %q points out of the layer: %w", hdr.Name, hdr.Linkname, errUnsafe)
		}
		tparent, err := u.openDir(path.Dir(target), false)
		if err != nil {
			return err
		}
		defer unix.Close(tparent)
		if err := removeAt(parent, base); err != nil {
			return fmt.Errorf("layer: replace %s: %w", rel, err)
		}
		// Flags 0: a link to a symlink links the symlink itself.
		if err := unix.Linkat(tparent, path.Base(target), parent, base, 0); err != nil {
			if errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("layer hardlink %q -> %q: the target is not in this layer: %w", hdr.Name, hdr.Linkname, errUnsafe)
			}
			return fmt.Errorf("layer: hardlink %s: %w", rel, err)
		}
		return nil // a hardlink shares its target's metadata
	case tar.TypeFifo:
		if err := removeAt(parent, base); err != nil {
			return fmt.Errorf("layer: replace %s: %w", rel, err)
		}
		if err := unix.Mknodat(parent, base, unix.S_IFIFO|0o600, 0); err != nil {
			return fmt.Errorf("layer: fifo %s: %w", rel, err)
		}
	default:
		return nil // devices, global headers and the like
	}

	if err := unix.Fchownat(parent, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("layer: chown %s: %w", rel, err)
	}
	if hdr.Typeflag != tar.TypeSymlink {
		// After chown, which clears setuid bits. The entry is the one
		// just created, never a symlink, so following is harmless.
		if err := unix.Fchmodat(parent, base, mode, 0); err != nil {
			return fmt.Errorf("layer: chmod %s: %w", rel, err)
		}
	}
	if hdr.Typeflag != tar.TypeDir && !hdr.ModTime.IsZero() {
		ts := []unix.Timespec{unix.NsecToTimespec(accessTime(hdr).UnixNano()), unix.NsecToTimespec(hdr.ModTime.UnixNano())}
		_ = unix.UtimesNanoAt(parent, base, ts, unix.AT_SYMLINK_NOFOLLOW)
	}
	return nil
}

// isMeta reports whether rel is, or lies under, a layer tool's metadata
// entry (".wh..wh.NAME", the opaque marker excepted).
func isMeta(rel string) bool {
	comps := strings.Split(rel, "/")
	for i, c := range comps {
		if strings.HasPrefix(c, metaPrefix) && !(i == len(comps)-1 && c == opaqueMarker) {
			return true
		}
	}
	return false
}

// setOpaque marks the directory open as fd (O_RDONLY) opaque to overlayfs.
func setOpaque(fd int) error {
	return unix.Fsetxattr(fd, "trusted.overlay.opaque", []byte("y"), 0)
}

// opaqueAt marks the directory name in dirfd opaque, never following a
// symlink.
func opaqueAt(dirfd int, name string) error {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return setOpaque(fd)
}

func accessTime(hdr *tar.Header) time.Time {
	if hdr.AccessTime.IsZero() {
		return hdr.ModTime
	}
	return hdr.AccessTime
}

// setXattrs applies the extended attributes an image may carry on a file:
// file capabilities and user.* attributes. trusted.* (overlayfs's own
// markers among them) and security labels other than capabilities are
// never taken from an image.
func setXattrs(fd int, hdr *tar.Header) error {
	for k, v := range hdr.PAXRecords {
		name, ok := strings.CutPrefix(k, "SCHILY.xattr.")
		if !ok || !(name == "security.capability" || strings.HasPrefix(name, "user.")) {
			continue
		}
		if err := unix.Fsetxattr(fd, name, []byte(v), 0); err != nil {
			return fmt.Errorf("xattr %s: %w", name, err)
		}
	}
	return nil
}

// escapes reports whether a relative symlink target, followed from the
// directory dir of the layer, climbs above the root. Absolute targets are
// resolved inside the sandbox's root and never escape it.
func escapes(dir, target string) bool {
	if path.IsAbs(target) {
		return false
	}
	depth := 0
	if dir != "." {
		depth = len(strings.Split(dir, "/"))
	}
	for _, c := range strings.Split(target, "/") {
		switch c {
		case "", ".":
		case "..":
			depth--
			if depth < 0 {
				return true
			}
		default:
			depth++
		}
	}
	return false
}
