package linux

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"syscall"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox"
	"github.com/msb-dev/msb/sandbox/portal"
)

// Streamed processes and files go through the sandbox's portal like
// Exec: the portal starts the process, or does the file operation,
// inside the sandbox, so every path is resolved in the sandbox's own root
// and mount namespace and never reaches the host. The portal's client
// keeps both flow-controlled (see package portal).

var (
	_ sandbox.Streamer   = (*Engine)(nil)
	_ sandbox.FileSystem = (*Engine)(nil)
)

// sessionClient is what the engine uses of a portal.Client for streams
// and files.
type sessionClient interface {
	Stream(ctx context.Context, spec sandbox.ExecSpec, killOnClose bool, events func(sandbox.ExecEvent)) (*portal.Process, error)
	Open(ctx context.Context, path string, o sandbox.OpenOptions) (*portal.File, error)
	Stat(ctx context.Context, path string, follow bool) (sandbox.FileInfo, error)
	List(ctx context.Context, path string) ([]sandbox.FileInfo, error)
	Mkdir(ctx context.Context, path string, mode uint32) error
	Remove(ctx context.Context, path string, recursive bool) error
	Copy(ctx context.Context, src, dst string) error
	Rename(ctx context.Context, src, dst string) error
}

// sessions returns the portal client of the running sandbox id.
func (e *Engine) sessions(id sandbox.ID) (sessionClient, *box, error) {
	c, b, err := e.client(id)
	if err != nil {
		return nil, nil, err
	}
	sc, ok := c.(sessionClient)
	if !ok {
		return nil, nil, fmt.Errorf("sandbox %s: its portal client cannot stream: %w", id, errdefs.ErrUnavailable)
	}
	return sc, b, nil
}

// files checks the paths of a file call on the running sandbox id and
// returns the client of its portal.
func (e *Engine) files(id sandbox.ID, paths ...string) (sessionClient, *box, error) {
	for _, p := range paths {
		if err := checkPath(id, p); err != nil {
			return nil, nil, err
		}
	}
	return e.sessions(id)
}

// Stream starts a process in the running sandbox id with its I/O
// streamed (see sandbox.Streamer): events come from a goroutine of the
// portal client's, and at most a small window of output waits for a slow
// events. A process that cannot start is an EventFailed; when the
// sandbox stops under a process that started, its last event is an
// EventExited of code -1 by SIGKILL. It returns an error wrapping
// errdefs.ErrNotFound for an unknown sandbox, errdefs.ErrConflict when it
// is not running (or stops during the call), and errdefs.ErrUnavailable
// when the portal fails.
func (e *Engine) Stream(ctx context.Context, id sandbox.ID, spec sandbox.ExecSpec, killOnClose bool, events func(sandbox.ExecEvent)) (sandbox.Process, error) {
	defer e.calls.command()()
	c, b, err := e.sessions(id)
	if err != nil {
		return nil, err
	}
	p, err := c.Stream(ctx, spec, killOnClose, events)
	if err != nil {
		return nil, callErr(b, fmt.Sprintf("start %q", spec.Command), err)
	}
	return &process{p: p, b: b}, nil
}

// process classifies the errors of a portal.Process.
type process struct {
	p *portal.Process
	b *box
}

func (p *process) err(what string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, portal.ErrEnded):
		return fmt.Errorf("sandbox %s: %s: %w: %w", p.b.id, what, err, errdefs.ErrConflict)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	}
	return callErr(p.b, what, err)
}

// Stdin implements sandbox.Process. Errors: errdefs.ErrConflict once the
// process has ended (or was closed), or the sandbox stopped.
func (p *process) Stdin(ctx context.Context, data []byte) error {
	return p.err("stdin", p.p.Stdin(ctx, data))
}

// Signal implements sandbox.Process.
func (p *process) Signal(sig int) error { return p.err("signal", p.p.Signal(sig)) }

// Resize implements sandbox.Process.
func (p *process) Resize(rows, cols uint16) error { return p.err("resize", p.p.Resize(rows, cols)) }

// Done implements sandbox.Process.
func (p *process) Done() <-chan struct{} { return p.p.Done() }

// Close implements sandbox.Process.
func (p *process) Close() error { return p.p.Close() }

// maxPath is PATH_MAX: no longer path can name a file.
const maxPath = 4096

// checkPath refuses a path no file can have, with class Invalid.
func checkPath(id sandbox.ID, path string) error {
	switch {
	case path == "":
		return errdefs.Invalidf("sandbox %q: a path is required", id.Name())
	case strings.IndexByte(path, 0) >= 0:
		return errdefs.Invalidf("sandbox %q: path %q holds a NUL byte", id.Name(), path)
	case len(path) >= maxPath:
		return errdefs.Invalidf("sandbox %q: a path of %d bytes is longer than any (%d)", id.Name(), len(path), maxPath-1)
	}
	return nil
}

// errnoClass is the class of a file operation that failed in the
// sandbox, by its errno (sandbox.FileSystem's error contract).
func errnoClass(errno syscall.Errno) errdefs.Class {
	switch errno {
	case syscall.ENOENT:
		return errdefs.NotFound
	case syscall.EEXIST, syscall.ENOTEMPTY, syscall.ENOTDIR, syscall.EISDIR, syscall.EXDEV, syscall.EBUSY, syscall.ETXTBSY:
		return errdefs.Conflict
	case syscall.EACCES, syscall.EPERM, syscall.EROFS:
		return errdefs.Forbidden
	case syscall.EINVAL, syscall.ENAMETOOLONG, syscall.ELOOP, syscall.ESPIPE, syscall.EBADF:
		return errdefs.Invalid
	case syscall.EMFILE, syscall.ENFILE, syscall.ENOSPC, syscall.EDQUOT, syscall.E2BIG, syscall.EFBIG:
		return errdefs.Exhausted
	}
	return errdefs.Unavailable
}

// fileErr classifies the error of a file operation: what the sandbox
// refused by its errno, with the portal's message (which names the
// operation and the path inside the sandbox); anything else as callErr
// does. Context errors are left as they are.
func fileErr(b *box, what string, err error) error {
	var fe *portal.FileError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &fe):
		return &errdefs.Error{Class: errnoClass(fe.Errno), Msg: fmt.Sprintf("sandbox %q: %s", b.id.Name(), fe.Msg), Err: err}
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	}
	return callErr(b, what, err)
}

// Open opens path in the running sandbox id (see sandbox.FileSystem);
// the handle lives until Close or until the sandbox stops. Errors: as
// sandbox.FileSystem says, by what the sandbox answered (NotFound,
// Conflict, Forbidden, Invalid; Exhausted when too many files are open
// through the portal or the disk is full); errdefs.ErrNotFound for an
// unknown sandbox; errdefs.ErrConflict when it is not running.
func (e *Engine) Open(ctx context.Context, id sandbox.ID, path string, o sandbox.OpenOptions) (sandbox.FileHandle, error) {
	c, b, err := e.files(id, path)
	if err != nil {
		return nil, err
	}
	f, err := c.Open(ctx, path, o)
	if err != nil {
		return nil, fileErr(b, "open", err)
	}
	return &fileHandle{f: f, b: b}, nil
}

// fileHandle classifies the errors of a portal.File.
type fileHandle struct {
	f *portal.File
	b *box
}

// ReadTo implements sandbox.FileHandle: at most a small window of the
// file waits for a slow w. w's own error is returned as it is.
func (h *fileHandle) ReadTo(ctx context.Context, offset, n int64, w io.Writer) (int64, error) {
	dst := &sandbox.OwnWriter{W: w}
	got, err := h.f.ReadTo(ctx, offset, n, dst)
	if dst.Own(err) {
		return got, err
	}
	return got, fileErr(h.b, "read", err)
}

// WriteFrom implements sandbox.FileHandle. r's own error is returned as
// it is.
func (h *fileHandle) WriteFrom(ctx context.Context, offset int64, r io.Reader) (int64, error) {
	src := &sandbox.OwnReader{R: r}
	got, err := h.f.WriteFrom(ctx, offset, src)
	if src.Own(err) {
		return got, err
	}
	return got, fileErr(h.b, "write", err)
}

// Close implements sandbox.FileHandle. A handle whose sandbox stopped is
// closed already: that is not an error.
func (h *fileHandle) Close() error {
	err := h.f.Close()
	if errors.Is(err, portal.ErrClosed) {
		return nil
	}
	return fileErr(h.b, "close", err)
}

// Stat describes path in the running sandbox id, following a last
// symlink when follow is set. Errors as for Open.
func (e *Engine) Stat(ctx context.Context, id sandbox.ID, path string, follow bool) (sandbox.FileInfo, error) {
	c, b, err := e.files(id, path)
	if err != nil {
		return sandbox.FileInfo{}, err
	}
	fi, err := c.Stat(ctx, path, follow)
	return fi, fileErr(b, "stat", err)
}

// List lists the directory path in the running sandbox id, by path,
// without . and ..; a directory too large to list at once is Exhausted.
// Errors as for Open.
func (e *Engine) List(ctx context.Context, id sandbox.ID, path string) ([]sandbox.FileInfo, error) {
	c, b, err := e.files(id, path)
	if err != nil {
		return nil, err
	}
	list, err := c.List(ctx, path)
	return list, fileErr(b, "list", err)
}

// Mkdir creates path and its missing parents in the running sandbox id
// (mode 0: 0755). Errors as for Open.
func (e *Engine) Mkdir(ctx context.Context, id sandbox.ID, path string, mode uint32) error {
	c, b, err := e.files(id, path)
	if err != nil {
		return err
	}
	return fileErr(b, "mkdir", c.Mkdir(ctx, path, mode))
}

// Remove removes a file or a directory (with its contents when
// recursive) in the running sandbox id. Errors as for Open.
func (e *Engine) Remove(ctx context.Context, id sandbox.ID, path string, recursive bool) error {
	c, b, err := e.files(id, path)
	if err != nil {
		return err
	}
	return fileErr(b, "remove", c.Remove(ctx, path, recursive))
}

// Copy copies the regular file src to dst in the running sandbox id.
// Errors as for Open.
func (e *Engine) Copy(ctx context.Context, id sandbox.ID, src, dst string) error {
	c, b, err := e.files(id, src, dst)
	if err != nil {
		return err
	}
	return fileErr(b, "copy", c.Copy(ctx, src, dst))
}

// Rename renames src to dst in the running sandbox id. Errors as for
// Open.
func (e *Engine) Rename(ctx context.Context, id sandbox.ID, src, dst string) error {
	c, b, err := e.files(id, src, dst)
	if err != nil {
		return err
	}
	return fileErr(b, "rename", c.Rename(ctx, src, dst))
}
