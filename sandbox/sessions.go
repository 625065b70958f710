package sandbox

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	"github.com/msb-dev/msb/errdefs"
)

var _ Sessions = sessions{}

// sessions is the Service seen as Sessions: a view of its own, since the
// file operations' List and Remove share their names with the
// Lifecycles'.
type sessions struct{ s *Service }

// Sessions returns the Service's streams and file operations.
func (s *Service) Sessions() Sessions { return sessions{s} }

// touch records activity on the sandbox: a call, or a step of a
// streamed process or file transfer.
func (s *Service) touch(b *box) { b.lastActive.Store(s.opts.Now().UnixNano()) }

// busy marks a call under way on the sandbox until the function it
// returns is called (once): a sandbox is never idle while a call runs.
func (s *Service) busy(b *box) (done func()) {
	s.touch(b)
	b.inFlight.Add(1)
	var once sync.Once
	return func() {
		once.Do(func() {
			s.touch(b)
			b.inFlight.Add(-1)
		})
	}
}

// lastActivity is when the sandbox id last saw a call (exec, code,
// stream, file) or was started; the zero time for a sandbox this server
// never started.
func (s *Service) lastActivity(id ID) time.Time {
	b, ok := s.lookup(id)
	if !ok {
		return time.Time{}
	}
	n := b.lastActive.Load()
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// streamer and fileSystem return the engine's abilities, or the
// Unavailable error that says the engine lacks them.
func (s *Service) streamer() (Streamer, error) {
	if st, ok := s.opts.Engine.(Streamer); ok {
		return st, nil
	}
	return nil, errdefs.Unavailablef("the sandbox engine cannot stream processes")
}

func (s *Service) fileSystem() (FileSystem, error) {
	if fs, ok := s.opts.Engine.(FileSystem); ok {
		return fs, nil
	}
	return nil, errdefs.Unavailablef("the sandbox engine cannot reach the files of sandboxes")
}

// callErr explains a failed call as callError does, but leaves the
// caller's own context errors as they are: the caller gave up, the
// engine did not fail.
func (s *Service) callErr(id ID, b *box, err error) error {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return s.callError(id, b, err)
}

// Stream implements Sessions: the sandbox must run, the timeout is cut to
// MaxTimeout, and the call (and every later input, signal and resize)
// counts as activity. A process that cannot start is an EventFailed, not
// an error. Errors: NotFound for a sandbox never started, Conflict for
// one not running, Unavailable when the engine cannot stream.
func (v sessions) Stream(ctx context.Context, id ID, spec ExecSpec, killOnClose bool, events func(ExecEvent)) (Process, error) {
	s := v.s
	st, err := s.streamer()
	if err != nil {
		return nil, err
	}
	b, err := s.running(ctx, id)
	if err != nil {
		return nil, err
	}
	done := s.busy(b)
	spec.Timeout = min(spec.Timeout, s.opts.MaxTimeout)
	if events == nil {
		events = func(ExecEvent) {}
	}
	p, err := st.Stream(ctx, id, spec, killOnClose, func(ev ExecEvent) {
		if ev.Kind == EventExited || ev.Kind == EventFailed {
			done()
		}
		events(ev)
	})
	if err != nil {
		done()
		return nil, s.callErr(id, b, err)
	}
	go func() {
		// A process that ends without an event (the sandbox stopped).
		<-p.Done()
		done()
	}()
	return &process{s: s, id: id, b: b, p: p}, nil
}

// process is a streamed process whose calls count as activity and whose
// errors are classified.
type process struct {
	s  *Service
	id ID
	b  *box
	p  Process
}

func (p *process) err(err error) error {
	if err == nil || errdefs.Is(err, errdefs.Conflict) {
		return err // the process ended, or the sandbox stopped
	}
	return p.s.callErr(p.id, p.b, err)
}

func (p *process) Stdin(ctx context.Context, data []byte) error {
	p.s.touch(p.b)
	return p.err(p.p.Stdin(ctx, data))
}

func (p *process) Signal(sig int) error {
	p.s.touch(p.b)
	if sig <= 0 || sig > 64 {
		return errdefs.Invalidf("signal %d: signals are 1 to 64", sig)
	}
	return p.err(p.p.Signal(sig))
}

func (p *process) Resize(rows, cols uint16) error {
	p.s.touch(p.b)
	return p.err(p.p.Resize(rows, cols))
}

func (p *process) Done() <-chan struct{} { return p.p.Done() }

func (p *process) Close() error { return p.p.Close() }

// files runs one file call on a running sandbox: the checks and the
// activity of every call, and its errors classified once.
func (s *Service) files(ctx context.Context, id ID, call func(FileSystem, *box) error) error {
	fs, err := s.fileSystem()
	if err != nil {
		return err
	}
	b, err := s.running(ctx, id)
	if err != nil {
		return err
	}
	defer s.busy(b)()
	return s.callErr(id, b, call(fs, b))
}

// Open implements Sessions: the handle's reads and writes count as
// activity too. Errors: as FileSystem says, and NotFound for a sandbox
// never started, Conflict for one not running.
func (v sessions) Open(ctx context.Context, id ID, path string, o OpenOptions) (FileHandle, error) {
	s := v.s
	var h FileHandle
	err := s.files(ctx, id, func(fs FileSystem, b *box) error {
		f, err := fs.Open(ctx, id, path, o)
		if err == nil {
			h = &fileHandle{s: s, id: id, b: b, f: f}
		}
		return err
	})
	return h, err
}

// fileHandle is an open file whose transfers count as activity and whose
// errors are classified.
type fileHandle struct {
	s  *Service
	id ID
	b  *box
	f  FileHandle
}

func (h *fileHandle) ReadTo(ctx context.Context, offset, n int64, w io.Writer) (int64, error) {
	defer h.s.busy(h.b)()
	// A front-end that holds what it reads until it answers (a JSON-RPC
	// read) takes it from the output budget; one that streams it on (the
	// v1 socket) does not.
	held := heldByFrontEnd(ctx)
	if held {
		ctx, _ = holdOutput(ctx, h.s.output) // released by the front-end
	}
	dst := &OwnWriter{W: writerFunc(func(p []byte) (int, error) {
		if held && !TakeOutput(ctx, 2*int64(len(p))) {
			return 0, errdefs.Exhaustedf("the server's memory for call output (output_memory in config.toml) is in use by other calls: retry, or read in smaller parts (length)")
		}
		return w.Write(p)
	})}
	got, err := h.f.ReadTo(ctx, offset, n, dst)
	if dst.Own(err) {
		return got, err // the writer's own
	}
	return got, h.s.callErr(h.id, h.b, err)
}

func (h *fileHandle) WriteFrom(ctx context.Context, offset int64, r io.Reader) (int64, error) {
	defer h.s.busy(h.b)()
	src := &OwnReader{R: r}
	got, err := h.f.WriteFrom(ctx, offset, src)
	if src.Own(err) {
		return got, err // the reader's own
	}
	return got, h.s.callErr(h.id, h.b, err)
}

func (h *fileHandle) Close() error {
	err := h.f.Close()
	if errdefs.Is(err, errdefs.Conflict) {
		return nil // the sandbox stopped: the handle went with it
	}
	return h.s.callErr(h.id, h.b, err)
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// Stat implements Sessions. Errors as for Open.
func (v sessions) Stat(ctx context.Context, id ID, path string, follow bool) (FileInfo, error) {
	s := v.s
	var fi FileInfo
	err := s.files(ctx, id, func(fs FileSystem, _ *box) (err error) {
		fi, err = fs.Stat(ctx, id, path, follow)
		return err
	})
	return fi, err
}

// List implements Sessions. Errors as for Open.
func (v sessions) List(ctx context.Context, id ID, path string) ([]FileInfo, error) {
	s := v.s
	var list []FileInfo
	err := s.files(ctx, id, func(fs FileSystem, _ *box) (err error) {
		list, err = fs.List(ctx, id, path)
		return err
	})
	return list, err
}

// Mkdir implements Sessions. Errors as for Open.
func (v sessions) Mkdir(ctx context.Context, id ID, path string, mode uint32) error {
	s := v.s
	return s.files(ctx, id, func(fs FileSystem, _ *box) error { return fs.Mkdir(ctx, id, path, mode) })
}

// Remove implements Sessions. Errors as for Open.
func (v sessions) Remove(ctx context.Context, id ID, path string, recursive bool) error {
	s := v.s
	return s.files(ctx, id, func(fs FileSystem, _ *box) error { return fs.Remove(ctx, id, path, recursive) })
}

// Copy implements Sessions. Errors as for Open.
func (v sessions) Copy(ctx context.Context, id ID, src, dst string) error {
	s := v.s
	return s.files(ctx, id, func(fs FileSystem, _ *box) error { return fs.Copy(ctx, id, src, dst) })
}

// Rename implements Sessions. Errors as for Open.
func (v sessions) Rename(ctx context.Context, id ID, src, dst string) error {
	s := v.s
	return s.files(ctx, id, func(fs FileSystem, _ *box) error { return fs.Rename(ctx, id, src, dst) })
}
