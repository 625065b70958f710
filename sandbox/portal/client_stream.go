package portal

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox/guest"
)

// maxCredit bounds one grant of credit from the portal: more than any
// window, far from overflowing the sum.
const maxCredit = 1 << 32

// ErrEnded is what Process.Stdin returns once the process has ended (or
// its Process was closed): there is nobody to take the input.
var ErrEnded = errors.New("the process has ended")

// errStopped ends a wait because the caller stopped waiting.
var errStopped = errors.New("stopped")

// item is one thing queued on a flow-controlled call: a data frame's
// payload (kind is its data kind), or a control frame (kind 0).
type item struct {
	kind byte
	data []byte
	ev   event
}

// flow is the client's side of a flow-controlled call. The reader queues
// what arrives, never waiting; the call's consumer (a Process's delivery
// goroutine, ReadTo) takes it and grants the portal credit for it once
// it is consumed. The portal may never send more than it was granted, so
// what is queued never weighs more than the window.
type flow struct {
	kinds uint8 // the data kinds the call takes, as bits
	size  int64 // the window

	mu       sync.Mutex
	items    []item
	window   int64 // data bytes the portal may still send
	sendable int64 // input bytes the portal let the client send
	started  bool
	stdinErr bool
	ready    chan struct{} // a token: an item was queued
	credit   chan struct{} // a token: sendable grew
}

func newFlow(window int64, kinds ...byte) *flow {
	f := &flow{size: window, window: window, ready: make(chan struct{}, 1), credit: make(chan struct{}, 1)}
	for _, k := range kinds {
		f.kinds |= 1 << k
	}
	return f
}

func token(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// receive accounts for n bytes of data about to be queued; false: the
// portal overran its window.
func (f *flow) receive(n int) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if int64(n) > f.window {
		return false
	}
	f.window -= int64(n)
	return true
}

func (f *flow) push(it item) {
	f.mu.Lock()
	f.items = append(f.items, it)
	f.mu.Unlock()
	token(f.ready)
}

// event queues a control frame of the call; it returns why the frame is
// not allowed, if it is not. The final one also closes done, the call's,
// in the same step: whoever takes it from the queue (and delivers a
// process's exit) finds the call over.
func (f *flow) event(ev event, done chan struct{}) string {
	f.mu.Lock()
	if ev.Credit > 0 {
		if f.sendable+ev.Credit > maxCredit {
			f.mu.Unlock()
			return "the sandbox's portal granted more credit than any window"
		}
		f.sendable += ev.Credit
		token(f.credit)
	}
	switch {
	case ev.Stream != "" || ev.Entries != nil:
		f.mu.Unlock()
		return "the sandbox's portal sent lines or entries on a streamed call"
	case ev.Started:
		if f.started {
			f.mu.Unlock()
			return "the sandbox's portal started a process twice"
		}
		f.started = true
	case ev.StdinError != "":
		if f.stdinErr {
			if ev.Done {
				close(done)
			}
			f.mu.Unlock()
			return "" // one is enough
		}
		f.stdinErr = true
	case !ev.Done:
		f.mu.Unlock()
		return ""
	}
	// Any frame that got here is queued, a final one with done closed in
	// the same step (with Started or StdinError too, it is final all the
	// same).
	f.items = append(f.items, item{ev: ev})
	if ev.Done {
		close(done)
	}
	f.mu.Unlock()
	token(f.ready)
	return ""
}

// next waits for the next item. It returns errStopped when stop is
// closed first, and the call's error when the call ended (done closed)
// with nothing left to take.
func (f *flow) next(cl *call, stop <-chan struct{}) (item, error) {
	for {
		select {
		case <-stop:
			return item{}, errStopped
		default:
		}
		f.mu.Lock()
		if len(f.items) > 0 {
			it := f.items[0]
			f.items[0] = item{}
			f.items = f.items[1:]
			f.mu.Unlock()
			return it, nil
		}
		f.mu.Unlock()
		select {
		case <-f.ready:
		case <-stop:
			return item{}, errStopped
		case <-cl.done:
			f.mu.Lock()
			empty := len(f.items) == 0
			f.mu.Unlock()
			if !empty {
				continue
			}
			if cl.err != nil {
				return item{}, cl.err
			}
			return item{}, ErrEnded
		}
	}
}

// takeCredit waits until the portal lets the client send, and takes up to
// max bytes of that credit. It returns ctx's error when ctx ends first,
// errStopped when stop is closed first, and ErrEnded (or the
// connection's error) when the call ended.
func (f *flow) takeCredit(ctx context.Context, cl *call, max int64, stop <-chan struct{}) (int64, error) {
	for {
		f.mu.Lock()
		if f.sendable > 0 {
			k := min(f.sendable, max)
			f.sendable -= k
			f.mu.Unlock()
			return k, nil
		}
		f.mu.Unlock()
		select {
		case <-f.credit:
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-stop:
			return 0, errStopped
		case <-cl.done:
			if cl.err != nil {
				return 0, cl.err
			}
			return 0, ErrEnded
		}
	}
}

// giveBack returns credit taken and not used.
func (f *flow) giveBack(n int64) {
	if n > 0 {
		f.mu.Lock()
		f.sendable += n
		f.mu.Unlock()
		token(f.credit)
	}
}

// grant lets the portal send n more bytes on cl: the window grows before
// the grant leaves, so that data sent on it is never taken for an
// overrun.
func (c *Client) grant(cl *call, n int64) {
	if n <= 0 {
		return
	}
	cl.flow.mu.Lock()
	cl.flow.window += n
	cl.flow.mu.Unlock()
	c.control(request{ID: cl.id, Op: opCredit, N: n})
}

// control sends a frame about a call in progress, without a caller's
// context to bound it: the portal never stops reading for long, and if
// it does the connection is closed after answerGrace.
func (c *Client) control(req request) error {
	ctx, cancel := context.WithTimeout(context.Background(), answerGrace)
	defer cancel()
	return c.send(ctx, req)
}

// startFlow registers a flow-controlled call and sends its request.
func (c *Client) startFlow(ctx context.Context, req request, f *flow) (*call, error) {
	return c.register(ctx, req, &call{flow: f})
}

// abandon gives up on a call: later frames of it are dropped, and the
// portal is told to stop it.
func (c *Client) abandon(cl *call) {
	c.forget(cl)
	go c.control(request{ID: cl.id, Op: opCancel})
}

// Process is a process started by Stream. It implements guest.Process.
type Process struct {
	c           *Client
	cl          *call
	events      func(guest.ExecEvent)
	killOnClose bool

	stdinMu sync.Mutex    // one input at a time, in order
	stop    chan struct{} // closed by Close
	once    sync.Once
	done    chan struct{} // closed when delivery is over
}

var _ guest.Process = (*Process)(nil)

// Stream starts a process as spec says and delivers its events to events,
// in order, from a goroutine of its own: Started (or Failed: it never
// ran), its output, stdin errors, then Exited, last. The output is flow
// controlled: at most a window of it (procWindow) waits in the client
// while events is slow, and the portal stops reading the process's
// output until events has taken it, so a slow consumer slows the process
// down instead of growing memory, and never holds up other calls. When
// the connection is lost (the sandbox stopped) a process that started
// ends as killed by SIGKILL, one that had not as failed (kind other).
// ctx bounds sending the request, not the process. Errors: an error
// matching ErrClosed when the connection is gone; ctx's error.
func (c *Client) Stream(ctx context.Context, spec guest.ExecSpec, killOnClose bool, events func(guest.ExecEvent)) (*Process, error) {
	req := request{
		Op: opStart, Command: spec.Command, Args: spec.Args, Env: spec.Env, Workdir: spec.Workdir,
		User: spec.User, TTY: spec.TTY, Rows: spec.Rows, Cols: spec.Cols, Timeout: spec.Timeout, Window: procWindow,
	}
	if len(spec.Rlimits) > 0 {
		var base []guest.Rlimit
		for _, l := range c.rlimits {
			base = append(base, guest.Rlimit{Resource: l.Resource, Soft: l.Soft, Hard: l.Hard})
		}
		req.Rlimits = wireRlimits(guest.MergeRlimits(base, spec.Rlimits))
	} else {
		req.Rlimits = c.rlimits
	}
	cl, err := c.startFlow(ctx, req, newFlow(procWindow, dataStdout, dataStderr))
	if err != nil {
		return nil, fmt.Errorf("portal: start %q: %w", spec.Command, err)
	}
	if events == nil {
		events = func(guest.ExecEvent) {}
	}
	p := &Process{c: c, cl: cl, events: events, killOnClose: killOnClose, stop: make(chan struct{}), done: make(chan struct{})}
	go p.deliver()
	return p, nil
}

// deliver hands the call's events to the caller, and credit back to the
// portal once the caller has taken them.
func (p *Process) deliver() {
	defer close(p.done)
	var unacked int64
	started := false
	for {
		it, err := p.cl.flow.next(p.cl, p.stop)
		if errors.Is(err, errStopped) {
			return
		}
		if err != nil {
			// The connection is gone: so is the sandbox, and its
			// processes were killed with it.
			if started {
				p.events(guest.ExecEvent{Kind: guest.EventExited, Code: -1, Signal: int(syscall.SIGKILL)})
			} else {
				p.events(guest.ExecEvent{Kind: guest.EventFailed, Fail: &guest.ExecFailure{Kind: failOther, Message: err.Error()}})
			}
			return
		}
		switch {
		case it.kind != 0:
			kind := guest.EventStdout
			if it.kind == dataStderr {
				kind = guest.EventStderr
			}
			p.events(guest.ExecEvent{Kind: kind, Data: it.data})
			if unacked += int64(len(it.data)); unacked >= procWindow/4 {
				p.c.grant(p.cl, unacked)
				unacked = 0
			}
		case it.ev.Started:
			started = true
			p.events(guest.ExecEvent{Kind: guest.EventStarted, Pid: it.ev.Pid})
		case it.ev.StdinError != "":
			p.events(guest.ExecEvent{Kind: guest.EventStdinError, Message: bounded(it.ev.StdinError)})
		case it.ev.Done:
			p.events(exitEvent(it.ev))
			return
		}
	}
}

// bounded cuts a message from the portal to maxErrorText.
func bounded(msg string) string {
	if len(msg) > maxErrorText {
		return msg[:maxErrorText] + "..."
	}
	return msg
}

// exitEvent turns a streamed process's final frame into its last event.
func exitEvent(ev event) guest.ExecEvent {
	switch {
	case ev.Fail != nil:
		return guest.ExecEvent{Kind: guest.EventFailed, Fail: &guest.ExecFailure{
			Kind: ev.Fail.Kind, Errno: ev.Fail.Errno, Message: bounded(ev.Fail.Message)}}
	case ev.Error != "":
		return guest.ExecEvent{Kind: guest.EventFailed, Fail: &guest.ExecFailure{Kind: failOther, Message: bounded(ev.Error)}}
	case ev.Signal > 0:
		return guest.ExecEvent{Kind: guest.EventExited, Code: -1, Signal: min(ev.Signal, 64), TimedOut: ev.TimedOut}
	}
	return guest.ExecEvent{Kind: guest.EventExited, Code: ev.ExitCode, TimedOut: ev.TimedOut}
}

// maxStdinChunk bounds one data frame of input.
const maxStdinChunk = 64 << 10

// Stdin writes data to the process's stdin, waiting while the portal has
// not granted the credit for it (its pipe is full); an empty data closes
// stdin. Errors: ErrEnded once the process has ended or the Process was
// closed; ctx's error; an error matching ErrClosed when the connection is
// gone.
func (p *Process) Stdin(ctx context.Context, data []byte) error {
	p.stdinMu.Lock()
	defer p.stdinMu.Unlock()
	select {
	case <-p.stop:
		return ErrEnded
	case <-p.cl.done:
		if p.cl.err != nil {
			return p.cl.err
		}
		return ErrEnded
	default:
	}
	if len(data) == 0 {
		return p.c.sendFrame(ctx, dataFrame(p.cl.id, dataStdin, nil))
	}
	for len(data) > 0 {
		k, err := p.cl.flow.takeCredit(ctx, p.cl, min(int64(len(data)), maxStdinChunk), p.stop)
		switch {
		case errors.Is(err, errStopped):
			return ErrEnded
		case err != nil:
			return err
		}
		if err := p.c.sendFrame(ctx, dataFrame(p.cl.id, dataStdin, data[:k])); err != nil {
			return err
		}
		data = data[k:]
	}
	return nil
}

// Signal sends sig to the process's group; after the process ended it
// does nothing. Errors: an error matching ErrClosed when the connection
// is gone.
func (p *Process) Signal(sig int) error {
	if sig <= 0 || sig > 64 {
		return fmt.Errorf("portal: signal %d: %w", sig, errdefs.ErrInvalid)
	}
	return p.control(request{ID: p.cl.id, Op: opSignal, Signal: sig})
}

// Resize sets the terminal size of a TTY process; otherwise it does
// nothing. Errors: an error matching ErrClosed when the connection is
// gone.
func (p *Process) Resize(rows, cols uint16) error {
	return p.control(request{ID: p.cl.id, Op: opResize, Rows: rows, Cols: cols})
}

func (p *Process) control(req request) error {
	select {
	case <-p.cl.done:
		return nil // over: nothing to act on
	default:
	}
	return p.c.control(req)
}

// Done is closed after the last event was delivered, or after Close.
func (p *Process) Done() <-chan struct{} { return p.done }

// Close stops following the process: its stdin is closed, no more events
// are delivered (but the one being delivered), and it is killed if
// killOnClose was asked of Stream. It does not wait, and never fails.
func (p *Process) Close() error {
	p.once.Do(func() {
		close(p.stop)
		select {
		case <-p.cl.done:
			return // over already
		default:
		}
		p.c.forget(p.cl)
		go p.c.control(request{ID: p.cl.id, Op: opDetach, Kill: p.killOnClose})
	})
	return nil
}

// FileError is a file operation that failed inside the sandbox: what the
// system call said (Errno, as the portal reported it) and a message that
// names the operation and the path.
type FileError struct {
	Errno syscall.Errno
	Msg   string
}

func (e *FileError) Error() string { return e.Msg }

// Unwrap makes a FileError match its errno (and so fs.ErrNotExist and
// the like).
func (e *FileError) Unwrap() error { return e.Errno }

// fileError turns a file call's final frame into its error, or nil.
func fileError(op string, ev event) error {
	switch {
	case ev.Fail != nil:
		return &FileError{Errno: syscall.Errno(max(ev.Fail.Errno, 0)), Msg: bounded(ev.Fail.Message)}
	case ev.Error != "":
		return finalError("portal: "+op, ev)
	}
	return nil
}

// fileCall runs a one-shot file operation.
func (c *Client) fileCall(ctx context.Context, req request, list *listing) (event, error) {
	req.ID = c.next.Add(1)
	cl := &call{id: req.ID, done: make(chan struct{}), list: list}
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return event{}, fmt.Errorf("portal: %s: %w", req.Op, c.err)
	}
	c.calls[req.ID] = cl
	c.mu.Unlock()
	if err := c.send(ctx, req); err != nil {
		c.forget(cl)
		return event{}, fmt.Errorf("portal: %s: %w", req.Op, err)
	}
	ev, err := c.wait(ctx, cl, 0)
	if err != nil {
		return event{}, fmt.Errorf("portal: %s: %w", req.Op, err)
	}
	return ev, fileError(req.Op, ev)
}

// File is a file opened through the portal. It implements
// guest.FileHandle.
type File struct {
	c      *Client
	handle uint64
	once   sync.Once
}

var _ guest.FileHandle = (*File)(nil)

// Open opens path inside the sandbox (relative paths are taken from the
// sandbox's working directory). Errors: a *FileError for what the
// sandbox refused; ctx's error; an error matching ErrClosed when the
// connection is gone.
func (c *Client) Open(ctx context.Context, path string, o guest.OpenOptions) (*File, error) {
	ev, err := c.fileCall(ctx, request{Op: opOpen, Path: path, Mode: o.Mode, Open: &openFlags{
		Read: o.Read, Write: o.Write, Append: o.Append, Create: o.Create, Truncate: o.Truncate, Exclusive: o.Exclusive}}, nil)
	if err != nil {
		return nil, err
	}
	if ev.Handle == 0 {
		c.fail("the sandbox's portal opened a file without a handle")
		return nil, fmt.Errorf("portal: open: %w", c.closedErr())
	}
	return &File{c: c, handle: ev.Handle}, nil
}

// ReadTo streams up to n bytes of the file from offset (n < 0: to its
// end) to w and returns how many it wrote. At most readWindow bytes wait
// in the client at any time: the portal reads the file only as fast as w
// takes it. Errors: a *FileError; w's error; ctx's error; an error
// matching ErrClosed when the connection is gone.
func (f *File) ReadTo(ctx context.Context, offset, n int64, w io.Writer) (int64, error) {
	c := f.c
	if n < 0 {
		n = -1
	}
	if n == 0 {
		return 0, nil
	}
	cl, err := c.startFlow(ctx, request{Op: opRead, Handle: f.handle, Offset: offset, N: n, Window: readWindow}, newFlow(readWindow, dataFile))
	if err != nil {
		return 0, fmt.Errorf("portal: read: %w", err)
	}
	var total, unacked int64
	for {
		it, err := cl.flow.next(cl, ctx.Done())
		if errors.Is(err, errStopped) {
			c.abandon(cl)
			return total, ctx.Err()
		}
		if err != nil {
			return total, fmt.Errorf("portal: read: %w", err)
		}
		if it.kind == 0 && !it.ev.Done {
			continue
		}
		if it.kind == 0 {
			if err := fileError("read", it.ev); err != nil {
				return total, err
			}
			if it.ev.N != total {
				c.fail("the sandbox's portal miscounted a read")
				return total, fmt.Errorf("portal: read: %w", c.closedErr())
			}
			return total, nil
		}
		if n >= 0 && total+int64(len(it.data)) > n {
			c.fail("the sandbox's portal sent more of a file than asked")
			return total, fmt.Errorf("portal: read: %w", c.closedErr())
		}
		if _, err := w.Write(it.data); err != nil {
			c.abandon(cl)
			return total, err
		}
		total += int64(len(it.data))
		if unacked += int64(len(it.data)); unacked >= readWindow/4 {
			c.grant(cl, unacked)
			unacked = 0
		}
	}
}

// WriteFrom writes what r gives to the file from offset until r ends, as
// fast as the portal's credit allows (it grants it as the file takes the
// data), and returns the bytes written. Errors: a *FileError; r's error;
// ctx's error; an error matching ErrClosed when the connection is gone.
func (f *File) WriteFrom(ctx context.Context, offset int64, r io.Reader) (int64, error) {
	c := f.c
	cl, err := c.startFlow(ctx, request{Op: opWrite, Handle: f.handle, Offset: offset}, newFlow(0))
	if err != nil {
		return 0, fmt.Errorf("portal: write: %w", err)
	}
	buf := make([]byte, fileChunk)
	var sent int64
	for done := false; !done; {
		k, err := cl.flow.takeCredit(ctx, cl, fileChunk, nil)
		if ctx.Err() != nil {
			c.abandon(cl)
			return 0, ctx.Err()
		}
		if err != nil {
			break // over early: the final frame says why
		}
		n, rerr := r.Read(buf[:k])
		cl.flow.giveBack(k - int64(n))
		if n > 0 {
			if err := c.sendFrame(ctx, dataFrame(cl.id, dataFile, buf[:n])); err != nil {
				return 0, fmt.Errorf("portal: write: %w", err)
			}
			sent += int64(n)
		}
		switch {
		case errors.Is(rerr, io.EOF):
			if err := c.sendFrame(ctx, dataFrame(cl.id, dataFile, nil)); err != nil {
				return 0, fmt.Errorf("portal: write: %w", err)
			}
			done = true
		case rerr != nil:
			c.abandon(cl)
			return 0, rerr
		}
	}
	var it item
	for !it.ev.Done {
		it, err = cl.flow.next(cl, ctx.Done())
		if errors.Is(err, errStopped) {
			c.abandon(cl)
			return 0, ctx.Err()
		}
		if err != nil {
			return 0, fmt.Errorf("portal: write: %w", err)
		}
	}
	if err := fileError("write", it.ev); err != nil {
		return max(it.ev.N, 0), err
	}
	if it.ev.N != sent {
		c.fail("the sandbox's portal miscounted a write")
		return 0, fmt.Errorf("portal: write: %w", c.closedErr())
	}
	return sent, nil
}

// Close closes the file's handle in the sandbox; closing it again does
// nothing. Errors: a *FileError; an error matching ErrClosed when the
// connection is gone (the handle went with it).
func (f *File) Close() error {
	var err error
	f.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), answerGrace)
		defer cancel()
		_, err = f.c.fileCall(ctx, request{Op: opClose, Handle: f.handle}, nil)
	})
	return err
}

// Stat describes path, following a last symlink when follow is set.
// Errors as for Open.
func (c *Client) Stat(ctx context.Context, path string, follow bool) (guest.FileInfo, error) {
	ev, err := c.fileCall(ctx, request{Op: opStat, Path: path, Follow: follow}, nil)
	if err != nil {
		return guest.FileInfo{}, err
	}
	if ev.Info == nil {
		c.fail("the sandbox's portal answered a stat without a description")
		return guest.FileInfo{}, fmt.Errorf("portal: stat: %w", c.closedErr())
	}
	return ev.Info.domain(), nil
}

func (fi fileInfo) domain() guest.FileInfo {
	kind := fi.Kind
	switch kind {
	case guest.KindFile, guest.KindDir, guest.KindSymlink:
	default:
		kind = guest.KindOther
	}
	path := fi.Path
	if len(path) > maxPathText {
		path = path[:maxPathText]
	}
	return guest.FileInfo{Path: path, Kind: kind, Size: fi.Size, Mode: fi.Mode, UID: fi.UID, GID: fi.GID,
		ModTime: time.Unix(0, fi.MTime), ATime: time.Unix(0, fi.ATime)}
}

// maxPathText bounds a path taken from the portal: PATH_MAX and a name.
const maxPathText = 8 << 10

// listing collects a directory's entries, within the portal's own bounds
// (and a batch more): beyond them it keeps nothing more and the listing
// fails.
type listing struct {
	mu      sync.Mutex
	entries []guest.FileInfo
	weight  int
	over    bool
}

func (l *listing) add(batch []fileInfo) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range batch {
		w := entryWeight(e.Path)
		if l.over || len(l.entries) >= maxListEntries || l.weight+w > maxListBytes+listBatch {
			l.over = true
			return
		}
		l.entries = append(l.entries, e.domain())
		l.weight += w
	}
}

// List lists the directory path: every entry but . and .., each with its
// full path (path joined with its name), symlinks not followed, by path. A
// directory of more than maxListEntries entries is refused (a *FileError
// of E2BIG). Errors as for Open.
func (c *Client) List(ctx context.Context, path string) ([]guest.FileInfo, error) {
	l := &listing{}
	if _, err := c.fileCall(ctx, request{Op: opList, Path: path}, l); err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.over {
		return nil, &FileError{Errno: syscall.E2BIG, Msg: fmt.Sprintf("list %s: the directory has too many entries", path)}
	}
	if l.entries == nil {
		return []guest.FileInfo{}, nil
	}
	slices.SortFunc(l.entries, func(a, b guest.FileInfo) int { return strings.Compare(a.Path, b.Path) })
	return l.entries, nil
}

// Mkdir creates path and its missing parents with mode (0: 0755).
// Errors as for Open.
func (c *Client) Mkdir(ctx context.Context, path string, mode uint32) error {
	_, err := c.fileCall(ctx, request{Op: opMkdir, Path: path, Mode: mode}, nil)
	return err
}

// Remove removes a file, or a directory: an empty one, or any when
// recursive. Errors as for Open.
func (c *Client) Remove(ctx context.Context, path string, recursive bool) error {
	_, err := c.fileCall(ctx, request{Op: opRemove, Path: path, Recursive: recursive}, nil)
	return err
}

// Copy copies the regular file src to dst (created, or truncated), with
// src's permissions. Errors as for Open.
func (c *Client) Copy(ctx context.Context, src, dst string) error {
	_, err := c.fileCall(ctx, request{Op: opCopy, Path: src, Target: dst}, nil)
	return err
}

// Rename renames src to dst, as rename(2). Errors as for Open.
func (c *Client) Rename(ctx context.Context, src, dst string) error {
	_, err := c.fileCall(ctx, request{Op: opRename, Path: src, Target: dst}, nil)
	return err
}
