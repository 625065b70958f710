package portal

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/sandbox/guest"
)

// The portal runs file operations itself, inside the sandbox: every path
// is resolved in the sandbox's root and mount namespace, as its processes
// would resolve it, so no symlink can lead to the host. Relative paths
// are taken from the sandbox's working directory.

const (
	// maxHandles bounds the files open through the portal at once.
	maxHandles = 1024
	// maxListEntries and maxListBytes bound one directory listing: what
	// the client holds until the listing is complete.
	maxListEntries = 1 << 17
	maxListBytes   = 32 << 20
	// listBatch bounds the entries of one frame by their weight (see
	// entryWeight), far below maxFrame.
	listBatch = 256 << 10
)

// entryWeight is what an entry costs the client to hold and to receive:
// its path as JSON escapes it, and the rest of it.
func entryWeight(path string) int { return encodedLen(path) + 160 }

// openFile is a file a client opened; non-seekable files (pipes, devices)
// are read and written in sequence, one call at a time. Writes to a file
// opened to append always go to its end.
type openFile struct {
	f        *os.File
	seekable bool
	append   bool
	mu       sync.Mutex
}

// files are the portal's open handles.
type files struct {
	mu   sync.Mutex
	next uint64
	open map[uint64]*openFile
}

func (fs *files) add(f *openFile) (uint64, bool) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.open == nil {
		fs.open = map[uint64]*openFile{}
	}
	if len(fs.open) >= maxHandles {
		return 0, false
	}
	fs.next++
	fs.open[fs.next] = f
	return fs.next, true
}

func (fs *files) get(h uint64) *openFile {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.open[h]
}

func (fs *files) remove(h uint64) *openFile {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	f := fs.open[h]
	delete(fs.open, h)
	return f
}

// fileFail is the final frame of a failed file operation.
func fileFail(id uint64, err error) event {
	msg := err.Error()
	if len(msg) > maxErrorText {
		msg = msg[:maxErrorText]
	}
	errno := errnoOf(err)
	if errno == 0 {
		errno = syscall.EIO
	}
	return event{ID: id, Done: true, Fail: &failure{Errno: int(errno), Message: msg}}
}

// resolve makes a path absolute in the sandbox, refusing what no file
// can be named.
func (s *server) resolve(op, p string) (string, error) {
	switch {
	case p == "":
		return "", &os.PathError{Op: op, Path: p, Err: syscall.EINVAL}
	case strings.IndexByte(p, 0) >= 0:
		return "", &os.PathError{Op: op, Path: strings.ReplaceAll(p, "\x00", `\0`), Err: syscall.EINVAL}
	case !filepath.IsAbs(p):
		p = filepath.Join(s.cwd, p)
	}
	return p, nil
}

// runFile runs one file operation and returns its final frame.
func (s *server) runFile(ctx context.Context, req request, ss *session) event {
	done := event{ID: req.ID, Done: true}
	var err error
	switch req.Op {
	case opOpen:
		done.Handle, err = s.openFile(req)
	case opClose:
		if f := s.files.remove(req.Handle); f == nil {
			err = fmt.Errorf("close: no open file %d: %w", req.Handle, syscall.EBADF)
		} else {
			err = f.f.Close()
		}
	case opRead:
		done.N, err = s.readFile(ctx, req, ss)
	case opWrite:
		done.N, err = s.writeFile(ctx, req, ss)
	case opStat:
		var p string
		if p, err = s.resolve("stat", req.Path); err == nil {
			var st unix.Stat_t
			if req.Follow {
				err = unix.Stat(p, &st)
			} else {
				err = unix.Lstat(p, &st)
			}
			if err != nil {
				err = &os.PathError{Op: "stat", Path: p, Err: err}
			} else {
				info := infoOf(req.Path, &st)
				done.Info = &info
			}
		}
	case opList:
		err = s.list(ctx, req)
	case opMkdir:
		var p string
		if p, err = s.resolve("mkdir", req.Path); err == nil {
			mode := os.FileMode(req.Mode & 0o7777)
			if mode == 0 {
				mode = 0o755
			}
			err = os.MkdirAll(p, mode)
		}
	case opRemove:
		err = s.remove(req)
	case opCopy:
		err = s.copyFile(ctx, req)
	case opRename:
		var src, dst string
		if src, err = s.resolve("rename", req.Path); err == nil {
			if dst, err = s.resolve("rename", req.Target); err == nil {
				err = os.Rename(src, dst)
			}
		}
	}
	if err != nil {
		return fileFail(req.ID, err)
	}
	return done
}

func kindOf(mode uint32) guest.FileKind {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return guest.KindFile
	case unix.S_IFDIR:
		return guest.KindDir
	case unix.S_IFLNK:
		return guest.KindSymlink
	}
	return guest.KindOther
}

func infoOf(path string, st *unix.Stat_t) fileInfo {
	return fileInfo{
		Path: path, Kind: kindOf(st.Mode), Size: st.Size, Mode: st.Mode, UID: st.Uid, GID: st.Gid,
		MTime: st.Mtim.Nano(), ATime: st.Atim.Nano(),
	}
}

func (s *server) openFile(req request) (uint64, error) {
	p, err := s.resolve("open", req.Path)
	if err != nil {
		return 0, err
	}
	o := req.Open
	if o == nil {
		o = &openFlags{Read: true}
	}
	flags := unix.O_RDONLY
	switch {
	case o.Read && (o.Write || o.Append):
		flags = unix.O_RDWR
	case o.Write || o.Append:
		flags = unix.O_WRONLY
	}
	if o.Append {
		flags |= unix.O_APPEND
	}
	if o.Create {
		flags |= unix.O_CREAT
	}
	if o.Truncate {
		flags |= unix.O_TRUNC
	}
	if o.Exclusive {
		flags |= unix.O_CREAT | unix.O_EXCL
	}
	mode := req.Mode & 0o7777
	if mode == 0 {
		mode = 0o644
	}
	// Non-blocking, so that opening a FIFO never waits for its other end.
	fd, err := unix.Open(p, flags|unix.O_CLOEXEC|unix.O_NOCTTY|unix.O_NONBLOCK, mode)
	if err != nil {
		return 0, &os.PathError{Op: "open", Path: p, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return 0, &os.PathError{Op: "open", Path: p, Err: err}
	}
	typ := st.Mode & unix.S_IFMT
	if typ == unix.S_IFREG || typ == unix.S_IFDIR || typ == unix.S_IFBLK {
		// Files whose reads never wait are read blocking, with offsets.
		unix.SetNonblock(fd, false)
	}
	f := &openFile{f: os.NewFile(uintptr(fd), p), seekable: typ == unix.S_IFREG || typ == unix.S_IFBLK, append: o.Append}
	h, ok := s.files.add(f)
	if !ok {
		f.f.Close()
		return 0, fmt.Errorf("open %s: %d files are open through the sandbox's file API already; close some: %w", p, maxHandles, syscall.EMFILE)
	}
	return h, nil
}

// readFile sends up to req.N bytes (all, when negative) of a file from
// req.Offset as data frames, as the client's credit allows.
func (s *server) readFile(ctx context.Context, req request, ss *session) (int64, error) {
	f := s.files.get(req.Handle)
	if f == nil {
		return 0, fmt.Errorf("read: no open file %d: %w", req.Handle, syscall.EBADF)
	}
	if req.Offset < 0 || (!f.seekable && req.Offset != 0) {
		return 0, &os.PathError{Op: "read", Path: f.f.Name(), Err: syscall.EINVAL}
	}
	if !f.seekable {
		f.mu.Lock()
		defer f.mu.Unlock()
	}
	buf := make([]byte, fileChunk)
	var total int64
	for req.N < 0 || total < req.N {
		want := int64(fileChunk)
		if req.N >= 0 {
			want = min(want, req.N-total)
		}
		k := ss.out.take(ctx, want)
		if k == 0 {
			return total, ctx.Err()
		}
		var n int
		var err error
		if f.seekable {
			n, err = f.f.ReadAt(buf[:k], req.Offset+total)
		} else {
			n, err = f.f.Read(buf[:k])
		}
		if n > 0 {
			if serr := s.out.sendData(req.ID, dataFile, buf[:n]); serr != nil {
				return total, serr
			}
			total += int64(n)
		}
		ss.out.add(k - int64(n)) // what was taken and not sent
		if errors.Is(err, io.EOF) {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// writeFile writes the chunks the client sends from req.Offset until it
// sends the end, granting credit as they are written.
func (s *server) writeFile(ctx context.Context, req request, ss *session) (int64, error) {
	f := s.files.get(req.Handle)
	if f == nil {
		return 0, fmt.Errorf("write: no open file %d: %w", req.Handle, syscall.EBADF)
	}
	if req.Offset < 0 || ((!f.seekable || f.append) && req.Offset != 0) {
		return 0, &os.PathError{Op: "write", Path: f.f.Name(), Err: syscall.EINVAL}
	}
	if !f.seekable || f.append {
		f.mu.Lock()
		defer f.mu.Unlock()
	}
	s.out.send(event{ID: req.ID, Credit: writeWindow})
	var total, pending int64
	for {
		p, eof, ok := ss.in.pop(ctx)
		if !ok {
			if ctx.Err() != nil {
				return total, ctx.Err()
			}
			return total, fmt.Errorf("write %s: the input overran its credit: %w", f.f.Name(), syscall.EPROTO)
		}
		if eof {
			return total, nil
		}
		var n int
		var err error
		if f.seekable && !f.append {
			n, err = f.f.WriteAt(p, req.Offset+total)
		} else {
			n, err = f.f.Write(p)
		}
		total += int64(n)
		if err != nil {
			return total, err
		}
		pending += int64(len(p))
		if pending >= writeWindow/4 || ss.in.empty() {
			s.out.send(event{ID: req.ID, Credit: pending})
			pending = 0
		}
	}
}

// list sends the entries of a directory in batches, each weighing at
// most listBatch; a directory of more than maxListEntries entries (or
// maxListBytes) is refused rather than cut.
func (s *server) list(ctx context.Context, req request) error {
	p, err := s.resolve("list", req.Path)
	if err != nil {
		return err
	}
	d, err := os.Open(p)
	if err != nil {
		return err
	}
	defer d.Close()
	dirfd := int(d.Fd())
	var (
		batch        []fileInfo
		weight       int
		count, bytes int
	)
	flush := func() {
		if len(batch) > 0 {
			s.out.send(event{ID: req.ID, Entries: batch})
			batch, weight = nil, 0
		}
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		names, err := d.Readdirnames(256)
		for _, name := range names {
			var st unix.Stat_t
			if unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) != nil {
				continue // removed meanwhile
			}
			full := strings.TrimSuffix(req.Path, "/") + "/" + name
			if req.Path == "/" {
				full = "/" + name
			}
			w := entryWeight(full)
			count++
			bytes += w
			if count > maxListEntries || bytes > maxListBytes {
				return fmt.Errorf("list %s: the directory has more than %d entries, or their names weigh more than %d MiB: list its subdirectories, or read it with a command: %w",
					p, maxListEntries, maxListBytes>>20, syscall.E2BIG)
			}
			if weight+w > listBatch {
				flush()
			}
			batch = append(batch, infoOf(full, &st))
			weight += w
		}
		if errors.Is(err, io.EOF) {
			flush()
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func (s *server) remove(req request) error {
	p, err := s.resolve("remove", req.Path)
	if err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return &os.PathError{Op: "remove", Path: p, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		if err := unix.Unlink(p); err != nil {
			return &os.PathError{Op: "remove", Path: p, Err: err}
		}
		return nil
	}
	if req.Recursive {
		return os.RemoveAll(p)
	}
	if err := unix.Rmdir(p); err != nil {
		return &os.PathError{Op: "remove", Path: p, Err: err}
	}
	return nil
}

// copyFile copies a regular file's contents to a new or truncated file
// with the same permissions, stopping when ctx ends.
func (s *server) copyFile(ctx context.Context, req request) error {
	src, err := s.resolve("copy", req.Path)
	if err != nil {
		return err
	}
	dst, err := s.resolve("copy", req.Target)
	if err != nil {
		return err
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return &os.PathError{Op: "copy", Path: src, Err: syscall.EISDIR}
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("copy %s: not a regular file: %w", src, syscall.EINVAL)
	}
	if di, err := os.Stat(dst); err == nil && os.SameFile(fi, di) {
		return fmt.Errorf("copy %s to %s: the same file: %w", src, dst, syscall.EINVAL)
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, fi.Mode().Perm())
	if err != nil {
		return err
	}
	for {
		if err := ctx.Err(); err != nil {
			out.Close()
			return err
		}
		n, err := io.CopyN(out, in, 64<<20)
		if errors.Is(err, io.EOF) || (err == nil && n == 0) {
			break
		}
		if err != nil {
			out.Close()
			return fmt.Errorf("copy %s to %s: %w", src, dst, err)
		}
	}
	return out.Close()
}
