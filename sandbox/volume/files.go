package volume

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/errdefs"
)

// Dir is an open volume: its directory, held by descriptor, from which
// every path is resolved beneath it. Close it when done.
type Dir struct {
	fd    int
	name  string
	owner int // of what it creates; 0: root
}

// FileInfo describes a file of a volume.
type FileInfo struct {
	Path  string // relative to the volume
	Dir   bool
	Size  int64
	Mode  uint32 // st_mode, type bits included
	UID   uint32
	GID   uint32
	ATime time.Time
	MTime time.Time
}

// Close releases the volume's directory.
func (d *Dir) Close() error { return unix.Close(d.fd) }

// Clean checks a path inside a volume and returns it relative to the
// volume ("." for its top): a leading "/" is dropped; ".." is refused.
// Errors are of class Invalid.
func Clean(p string) (string, error) {
	if strings.ContainsRune(p, 0) {
		return "", errdefs.Invalidf("invalid volume path %.64q: it contains a NUL byte", p)
	}
	var parts []string
	for _, c := range strings.Split(p, "/") {
		switch c {
		case "", ".":
		case "..":
			return "", errdefs.Invalidf("invalid volume path %.64q: \"..\" would leave the volume", p)
		default:
			parts = append(parts, c)
		}
	}
	if len(parts) == 0 {
		return ".", nil
	}
	return strings.Join(parts, "/"), nil
}

// beneath is how every path of a volume is resolved.
const beneath = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS

// openat opens rel (Clean's form) beneath the volume.
func (d *Dir) openat(rel string, flags int, mode uint32) (int, error) {
	return unix.Openat2(d.fd, rel, &unix.OpenHow{Flags: uint64(flags | unix.O_CLOEXEC), Mode: uint64(mode), Resolve: beneath})
}

// errNotRegular is the error of a read or write of a FIFO, socket or
// device node, which a sandbox can leave in a volume: opening one would
// block the server (a FIFO) or reach the host's devices.
var errNotRegular = errors.New("not a regular file")

// openRegular opens rel beneath dirfd with flags (O_RDONLY, or O_WRONLY
// with O_CREAT and O_TRUNC), and opens nothing but a regular file or, for
// O_RDONLY, a directory: the file is first opened as a path (O_PATH,
// which opens no FIFO or device), its type checked, and then that very
// inode opened again through its descriptor. A file that does not exist
// is created (O_EXCL: never anything a sandbox put there meanwhile).
func openRegular(dirfd int, rel string, flags int, mode uint32) (int, error) {
	for range 3 {
		pfd, err := unix.Openat2(dirfd, rel, &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: beneath})
		if errors.Is(err, unix.ENOENT) && flags&unix.O_CREAT != 0 {
			fd, err := unix.Openat2(dirfd, rel, &unix.OpenHow{Flags: uint64(flags | unix.O_EXCL | unix.O_CLOEXEC), Mode: uint64(mode), Resolve: beneath})
			if errors.Is(err, unix.EEXIST) {
				continue // made meanwhile: check what it is
			}
			return fd, err
		}
		if err != nil {
			return -1, err
		}
		fd, err := reopen(pfd, flags)
		unix.Close(pfd)
		return fd, err
	}
	return -1, unix.EEXIST
}

// reopen opens the inode of the O_PATH descriptor pfd with flags, if it
// is a regular file (or a directory, for reading).
func reopen(pfd, flags int) (int, error) {
	var st unix.Stat_t
	if err := unix.Fstat(pfd, &st); err != nil {
		return -1, err
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
	case unix.S_IFDIR:
		if flags&unix.O_ACCMODE != unix.O_RDONLY {
			return -1, unix.EISDIR
		}
	default:
		return -1, errNotRegular
	}
	fd, err := unix.Open("/proc/self/fd/"+strconv.Itoa(pfd), flags&^(unix.O_CREAT|unix.O_EXCL)|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if err != nil {
		return -1, err
	}
	var now unix.Stat_t
	if err := unix.Fstat(fd, &now); err != nil || now.Dev != st.Dev || now.Ino != st.Ino {
		unix.Close(fd)
		return -1, errNotRegular
	}
	return fd, nil
}

// fileError classifies an error of the file operation op on p.
func (d *Dir) fileError(op, p string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, errNotRegular):
		return errdefs.Invalidf("%s %s: it is not a regular file (a FIFO, socket or device node): volume file calls read and write regular files only", op, p)
	case errors.Is(err, unix.ENOENT):
		return errdefs.NotFoundf("%s %s: no such file or directory in volume %s", op, p, d.name)
	case errors.Is(err, unix.EXDEV), errors.Is(err, unix.ELOOP):
		return errdefs.Invalidf("%s %s: a symlink on the path leads out of volume %s", op, p, d.name)
	case errors.Is(err, unix.EEXIST):
		return errdefs.Conflictf("%s %s: it already exists", op, p)
	case errors.Is(err, unix.ENOTDIR):
		return errdefs.Conflictf("%s %s: a part of the path is not a directory", op, p)
	case errors.Is(err, unix.EISDIR):
		return errdefs.Conflictf("%s %s: it is a directory", op, p)
	case errors.Is(err, unix.ENOTEMPTY):
		return errdefs.Conflictf("%s %s: the directory is not empty", op, p)
	case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM), errors.Is(err, unix.EROFS):
		return errdefs.Forbiddenf("%s %s: permission denied", op, p)
	case errors.Is(err, unix.ENAMETOOLONG):
		return errdefs.Invalidf("%s %.64s: the name is too long", op, p)
	case errors.Is(err, unix.ENOSPC), errors.Is(err, unix.EDQUOT):
		return errdefs.Exhaustedf("%s %s: no space left for the volume", op, p)
	}
	return fmt.Errorf("%s %s in volume %s: %w", op, p, d.name, err)
}

// parent opens the directory holding rel and returns it with rel's last
// name; mkdir creates missing parents first.
func (d *Dir) parent(rel string, mkdir bool) (int, string, error) {
	if rel == "." {
		return -1, "", unix.EINVAL
	}
	dir, base := path.Split(rel)
	dir = strings.TrimSuffix(dir, "/")
	if dir == "" {
		dir = "."
	}
	if mkdir {
		if err := d.mkdirAll(dir); err != nil {
			return -1, "", err
		}
	}
	fd, err := d.openat(dir, unix.O_PATH|unix.O_DIRECTORY, 0)
	return fd, base, err
}

// mkdirAll creates rel and its parents beneath the volume, passing
// through no symlink.
func (d *Dir) mkdirAll(rel string) error { return MkdirBeneath(d.fd, rel, d.owner) }

// MkdirBeneath creates the directory rel and its parents beneath the
// directory rootfd, passing through no symlink (ELOOP) and never leading
// out of it (EXDEV); the directories it makes are owned by owner (0: left
// as made).
func MkdirBeneath(rootfd int, rel string, owner int) error {
	cur := "."
	for _, c := range strings.Split(rel, "/") {
		if c == "" || c == "." {
			continue
		}
		pfd, err := unix.Openat2(rootfd, cur, &unix.OpenHow{Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
			Resolve: beneath | unix.RESOLVE_NO_SYMLINKS})
		if err != nil {
			return err
		}
		err = unix.Mkdirat(pfd, c, 0o755)
		if err == nil && owner != 0 {
			err = unix.Fchownat(pfd, c, owner, owner, unix.AT_SYMLINK_NOFOLLOW)
		}
		unix.Close(pfd)
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return err
		}
		cur = path.Join(cur, c)
	}
	return nil
}

// Open opens the file p for reading, with its description.
func (d *Dir) Open(p string) (*os.File, FileInfo, error) {
	rel, err := Clean(p)
	if err != nil {
		return nil, FileInfo{}, err
	}
	fd, err := openRegular(d.fd, rel, unix.O_RDONLY, 0)
	if err != nil {
		return nil, FileInfo{}, d.fileError("read", p, err)
	}
	f := os.NewFile(uintptr(fd), rel)
	info, err := statFD(fd, p)
	if err == nil && info.Dir {
		err = unix.EISDIR
	}
	if err != nil {
		f.Close()
		return nil, FileInfo{}, d.fileError("read", p, err)
	}
	return f, info, nil
}

// Write writes what r gives to the file p, created (with its missing
// parents) or truncated, and returns the bytes written.
func (d *Dir) Write(p string, r io.Reader) (int64, error) {
	rel, err := Clean(p)
	if err != nil {
		return 0, err
	}
	if rel == "." {
		return 0, errdefs.Invalidf("write %q: give the path of a file in the volume", p)
	}
	pfd, base, err := d.parent(rel, true)
	if err != nil {
		return 0, d.fileError("write", p, err)
	}
	fd, err := openRegular(pfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC, 0o644)
	unix.Close(pfd)
	if err != nil {
		return 0, d.fileError("write", p, err)
	}
	f := os.NewFile(uintptr(fd), rel)
	if d.owner != 0 {
		var st unix.Stat_t
		// Made by the server, a file is the host root's: it becomes the
		// volume owner's, so that sandboxes' root owns it.
		if unix.Fstat(fd, &st) == nil && st.Uid == 0 {
			unix.Fchown(fd, d.owner, d.owner)
		}
	}
	n, err := io.Copy(f, r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			return n, d.fileError("write", p, pe.Err)
		}
		return n, fmt.Errorf("write %s: %w", p, err) // the request body broke off
	}
	return n, nil
}

// Stat describes the file p, following symlinks that stay in the volume.
func (d *Dir) Stat(p string) (FileInfo, error) {
	rel, err := Clean(p)
	if err != nil {
		return FileInfo{}, err
	}
	fd, err := d.openat(rel, unix.O_PATH, 0)
	if err != nil {
		return FileInfo{}, d.fileError("stat", p, err)
	}
	defer unix.Close(fd)
	info, err := statFD(fd, p)
	return info, d.fileError("stat", p, err)
}

func statFD(fd int, p string) (FileInfo, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return FileInfo{}, err
	}
	return fileInfo(p, &st), nil
}

func fileInfo(p string, st *unix.Stat_t) FileInfo {
	return FileInfo{Path: p, Dir: st.Mode&unix.S_IFMT == unix.S_IFDIR, Size: st.Size, Mode: st.Mode,
		UID: st.Uid, GID: st.Gid, ATime: statTime(st.Atim), MTime: statTime(st.Mtim)}
}

// List describes the files of directory p, by name, without "." and "..".
// A symlink is described as what it points to in the volume, or as
// itself when that is outside.
func (d *Dir) List(p string) ([]FileInfo, error) {
	rel, err := Clean(p)
	if err != nil {
		return nil, err
	}
	fd, err := d.openat(rel, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, d.fileError("list", p, err)
	}
	f := os.NewFile(uintptr(fd), rel)
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, d.fileError("list", p, err)
	}
	out := make([]FileInfo, 0, len(names))
	for _, name := range names {
		child := name
		if rel != "." {
			child = rel + "/" + name
		}
		var st unix.Stat_t
		if err := unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			continue // gone meanwhile
		}
		if st.Mode&unix.S_IFMT == unix.S_IFLNK {
			if cfd, err := d.openat(child, unix.O_PATH, 0); err == nil {
				unix.Fstat(cfd, &st)
				unix.Close(cfd)
			}
		}
		out = append(out, fileInfo(child, &st))
	}
	return out, nil
}

// Mkdir creates directory p and its missing parents.
func (d *Dir) Mkdir(p string) error {
	rel, err := Clean(p)
	if err != nil {
		return err
	}
	return d.fileError("mkdir", p, d.mkdirAll(rel))
}

// Remove removes the file p, or the directory p: with everything in it
// when recursive, else only when it is empty.
func (d *Dir) Remove(p string, recursive bool) error {
	rel, err := Clean(p)
	if err != nil {
		return err
	}
	if rel == "." {
		return errdefs.Invalidf("remove %q: the volume's top directory cannot be removed (delete the volume instead)", p)
	}
	pfd, base, err := d.parent(rel, false)
	if err != nil {
		return d.fileError("remove", p, err)
	}
	defer unix.Close(pfd)
	if recursive {
		return d.fileError("remove", p, removeAllAt(pfd, base, 0))
	}
	err = unix.Unlinkat(pfd, base, 0)
	if errors.Is(err, unix.EISDIR) {
		err = unix.Unlinkat(pfd, base, unix.AT_REMOVEDIR)
	}
	return d.fileError("remove", p, err)
}

// removeAllAt removes name in directory dirfd and everything under it,
// opening each directory from its parent with O_NOFOLLOW.
func removeAllAt(dirfd int, name string, depth int) error {
	if depth > 1024 {
		return unix.ELOOP
	}
	err := unix.Unlinkat(dirfd, name, 0)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) {
		return err
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), name)
	for {
		names, err := f.Readdirnames(256)
		for _, n := range names {
			if err := removeAllAt(fd, n, depth+1); err != nil && !errors.Is(err, unix.ENOENT) {
				f.Close()
				return err
			}
		}
		if err == io.EOF || len(names) == 0 {
			break
		}
		if err != nil {
			f.Close()
			return err
		}
	}
	f.Close()
	return unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR)
}

// Copy copies the file from to the file to (created with its missing
// parents, or truncated).
func (d *Dir) Copy(from, to string) error {
	if a, b := cleanOr(from), cleanOr(to); a == b {
		return errdefs.Invalidf("copy %q to %q: the source and the destination are the same file", from, to)
	}
	src, _, err := d.Open(from)
	if err != nil {
		return err
	}
	defer src.Close()
	_, err = d.Write(to, src)
	return err
}

func cleanOr(p string) string {
	if rel, err := Clean(p); err == nil {
		return rel
	}
	return p
}

// Rename moves from to to (whose parent must exist).
func (d *Dir) Rename(from, to string) error {
	frel, err := Clean(from)
	if err != nil {
		return err
	}
	trel, err := Clean(to)
	if err != nil {
		return err
	}
	if frel == "." || trel == "." {
		return errdefs.Invalidf("rename %q to %q: the volume's top directory cannot be renamed", from, to)
	}
	ffd, fbase, err := d.parent(frel, false)
	if err != nil {
		return d.fileError("rename", from, err)
	}
	defer unix.Close(ffd)
	tfd, tbase, err := d.parent(trel, false)
	if err != nil {
		return d.fileError("rename", to, err)
	}
	defer unix.Close(tfd)
	return d.fileError("rename", from, unix.Renameat(ffd, fbase, tfd, tbase))
}
