package portal

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox/guest"
)

// ErrClosed is what every call returns once the connection to the portal is
// gone: closed by Close, ended by the sandbox, or dropped because the
// portal sent something no honest portal sends. Such errors also match
// errdefs.ErrUnavailable.
var ErrClosed = errors.New("portal connection closed")

// closedError carries why the connection closed.
type closedError struct{ reason string }

func (e *closedError) Error() string { return "portal connection closed: " + e.reason }

func (e *closedError) Is(target error) bool {
	return target == ErrClosed || target == errdefs.ErrUnavailable
}

// answerGrace is how long past a call's own timeout the client waits for
// the portal's answer: enough for the portal to kill, drain and report, and
// a bound on how long a portal that stopped answering can hold a caller
// whose context has no deadline.
const answerGrace = 10 * time.Second

// maxErrorText bounds an error message taken from the portal.
const maxErrorText = 1 << 10

// Client talks to one sandbox's portal over a connection. It is safe for
// concurrent use: calls are multiplexed over the one connection. It trusts
// nothing the portal sends (see the package comment).
type Client struct {
	conn io.ReadWriteCloser
	wmu  sync.Mutex // serialises writes of whole frames
	next atomic.Uint64

	mu    sync.Mutex
	calls map[uint64]*call
	err   error // set once the connection is closed

	rlimits    []rlimit       // of every process this client starts (SetRlimits)
	takeOutput TakeOutputFunc // see NewClient
}

// SetRlimits sets the resource limits of every process started through
// the client from now on (the sandbox's own); a streamed process's own
// limits go on top of them, never above their hard limits. Call it
// before the client's first call.
func (c *Client) SetRlimits(ls []guest.Rlimit) {
	c.rlimits = wireRlimits(ls)
}

func wireRlimits(ls []guest.Rlimit) []rlimit {
	var out []rlimit
	for _, l := range ls {
		out = append(out, rlimit{Resource: l.Resource, Soft: l.Soft, Hard: l.Hard})
	}
	return out
}

// call is one request waiting for its final frame. Lines arrive on the
// reader goroutine; final is written before done is closed. A
// flow-controlled call (a streamed process, a file read or write) gets
// its frames queued in flow instead, final included; a listing's entries
// are collected in list.
type call struct {
	id      uint64
	mu      sync.Mutex
	stopped bool // the caller gave up: drop whatever still arrives
	onLine  func(guest.Line)
	done    chan struct{}
	final   event
	err     error
	flow    *flow
	list    *listing
}

func (cl *call) line(l guest.Line) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if !cl.stopped && cl.onLine != nil {
		cl.onLine(l)
	}
}

func (cl *call) stop() {
	cl.mu.Lock()
	cl.stopped = true
	cl.mu.Unlock()
}

// TakeOutputFunc takes n bytes of the server's output budget for a call
// of ctx, or refuses them.
type TakeOutputFunc func(ctx context.Context, n int64) bool

// NewClient starts a client on conn and reads from it until it closes;
// Close closes conn. What the client holds of a capped call's output
// (Exec, RunCode) is taken from takeOutput as it grows: the server's output
// budget (sandbox.TakeOutput); when it refuses, the output is cut there
// and says so. With nil, only MaxOutput bounds it.
func NewClient(conn io.ReadWriteCloser, takeOutput TakeOutputFunc) *Client {
	if takeOutput == nil {
		takeOutput = func(context.Context, int64) bool { return true }
	}
	c := &Client{conn: conn, calls: make(map[uint64]*call), takeOutput: takeOutput}
	go c.read()
	return c
}

// read is the only reader of the connection. Every frame is checked; the
// first one that is too large, not JSON, or not a frame the protocol
// allows closes the connection, because after it nothing the portal says
// can be trusted. It never waits for a caller: lines go to their callback
// (which must be quick), everything else is queued, within what the
// client granted the call.
func (c *Client) read() {
	fr := newFrameReader(c.conn, maxFrame)
	for {
		line, hdr, err := fr.next()
		if err != nil {
			reason := "the sandbox's portal closed the connection"
			switch {
			case errors.Is(err, errFrameTooLong):
				reason = fmt.Sprintf("the sandbox's portal sent a frame larger than %d bytes", maxFrame)
			case errors.Is(err, errDataTooLong):
				reason = fmt.Sprintf("the sandbox's portal sent a data frame larger than %d bytes", maxData)
			case errors.Is(err, io.ErrUnexpectedEOF):
				reason = "the sandbox's portal closed the connection in the middle of a frame"
			case !errors.Is(err, io.EOF):
				reason = "reading from the sandbox's portal: " + err.Error()
			}
			c.fail(reason)
			return
		}
		if hdr != nil {
			if reason := c.data(fr, hdr); reason != "" {
				c.fail(reason)
				return
			}
			continue
		}
		var ev event
		dec := json.NewDecoder(bytes.NewReader(line))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&ev); err != nil {
			c.fail(fmt.Sprintf("the sandbox's portal sent a malformed frame (%v)", err))
			return
		}
		if dec.More() {
			c.fail("the sandbox's portal sent a malformed frame (trailing data)")
			return
		}
		if reason := c.event(ev); reason != "" {
			c.fail(reason)
			return
		}
	}
}

// data takes a data frame's payload to its call, or skips it when the
// call is gone. It returns why the frame is not allowed, if it is not.
func (c *Client) data(fr *frameReader, h *dataHeader) string {
	c.mu.Lock()
	cl := c.calls[h.id]
	c.mu.Unlock()
	if cl == nil {
		if fr.skip(h) != nil {
			return "the sandbox's portal closed the connection in the middle of a frame"
		}
		return "" // a late frame of an abandoned call
	}
	f := cl.flow
	if f == nil || f.kinds&(1<<h.kind) == 0 {
		return fmt.Sprintf("the sandbox's portal sent data of kind %d on a call that takes none", h.kind)
	}
	if !f.receive(h.len) {
		return fmt.Sprintf("the sandbox's portal sent more data than the %d bytes it was granted", f.size)
	}
	p, err := fr.payload(h)
	if err != nil {
		return "the sandbox's portal closed the connection in the middle of a frame"
	}
	f.push(item{kind: h.kind, data: p})
	return ""
}

// event takes a control frame to its call. It returns why the frame is
// not allowed, if it is not.
func (c *Client) event(ev event) string {
	switch {
	case ev.Done:
	case ev.Stream != "":
		if ev.Stream != guest.Stdout && ev.Stream != guest.Stderr {
			return fmt.Sprintf("the sandbox's portal sent a line on an unknown stream %.40q", ev.Stream)
		}
	case ev.Started, ev.StdinError != "", ev.Credit != 0, ev.Entries != nil:
		if ev.Credit < 0 || ev.Credit > maxCredit {
			return fmt.Sprintf("the sandbox's portal granted %d bytes of credit", ev.Credit)
		}
	default:
		return "the sandbox's portal sent a frame of no known kind"
	}
	if ev.Fail != nil && ev.Fail.Kind != "" && !failKinds[ev.Fail.Kind] {
		return fmt.Sprintf("the sandbox's portal sent an unknown failure %.40q", ev.Fail.Kind)
	}
	c.mu.Lock()
	cl := c.calls[ev.ID]
	if ev.Done {
		delete(c.calls, ev.ID)
	}
	c.mu.Unlock()
	if cl == nil {
		return "" // a late frame of an abandoned call
	}
	switch {
	case cl.flow != nil:
		if reason := cl.flow.event(ev, cl.done); reason != "" {
			return reason
		}
	case ev.Done:
		cl.final = ev
		close(cl.done)
	case ev.Entries != nil && cl.list != nil:
		cl.list.add(ev.Entries)
	case ev.Stream != "":
		cl.line(guest.Line{Stream: ev.Stream, Text: ev.Text})
	}
	return ""
}

// fail closes the connection and fails every call in flight, once; it
// returns the connection's Close error.
func (c *Client) fail(reason string) error {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return nil
	}
	err := &closedError{reason}
	c.err = err
	calls := c.calls
	c.calls = nil
	c.mu.Unlock()
	cerr := c.conn.Close()
	for _, cl := range calls {
		cl.err = err
		close(cl.done)
	}
	return cerr
}

// start registers a call and sends its request. A write that does not
// finish by the time ctx ends leaves a torn frame behind, so it closes the
// connection.
func (c *Client) start(ctx context.Context, req request, onLine func(guest.Line)) (*call, error) {
	return c.register(ctx, req, &call{onLine: onLine})
}

// register gives req and cl a new id, records cl and sends req.
func (c *Client) register(ctx context.Context, req request, cl *call) (*call, error) {
	req.ID = c.next.Add(1)
	cl.id, cl.done = req.ID, make(chan struct{})
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return nil, c.err
	}
	c.calls[req.ID] = cl
	c.mu.Unlock()
	if err := c.send(ctx, req); err != nil {
		c.forget(cl)
		return nil, err
	}
	return cl, nil
}

func (c *Client) forget(cl *call) {
	cl.stop()
	c.mu.Lock()
	if c.calls != nil {
		delete(c.calls, cl.id)
	}
	c.mu.Unlock()
}

func (c *Client) send(ctx context.Context, req request) error {
	frame, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("portal: encoding request: %w", err)
	}
	return c.sendFrame(ctx, append(frame, '\n'))
}

// sendFrame writes one whole frame. A write that does not finish by the
// time ctx ends leaves a torn frame behind, so it closes the connection.
func (c *Client) sendFrame(ctx context.Context, frame []byte) error {
	var abandoned atomic.Bool
	errc := make(chan error, 1)
	go func() {
		c.wmu.Lock()
		defer c.wmu.Unlock()
		if abandoned.Load() {
			errc <- ctx.Err()
			return
		}
		_, err := c.conn.Write(frame)
		errc <- err
	}()
	select {
	case err := <-errc:
		if err != nil {
			c.fail("writing to the sandbox's portal: " + err.Error())
			return c.closedErr()
		}
		return nil
	case <-ctx.Done():
		abandoned.Store(true)
		c.fail("the sandbox's portal stopped reading requests")
		return ctx.Err()
	}
}

func (c *Client) closedErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// wait waits for cl's final frame. When ctx ends or the portal overruns
// limit, it tells the portal to cancel the call and gives up on it.
func (c *Client) wait(ctx context.Context, cl *call, limit time.Duration) (event, error) {
	var overrun <-chan time.Time
	if limit > 0 {
		t := time.NewTimer(limit + answerGrace)
		defer t.Stop()
		overrun = t.C
	}
	var err error
	select {
	case <-cl.done:
		if cl.err != nil {
			return event{}, cl.err
		}
		return cl.final, nil
	case <-ctx.Done():
		err = ctx.Err()
	case <-overrun:
		err = fmt.Errorf("the sandbox's portal did not answer within %s of the call's timeout: %w", answerGrace, errdefs.ErrUnavailable)
	}
	c.forget(cl)
	// Best effort, and never blocking the caller: if the portal stopped
	// reading, the write fails when the connection is closed.
	go c.send(context.Background(), request{ID: cl.id, Op: opCancel})
	return event{}, err
}

// finalError turns a final frame's error into a Go error. The message is
// the portal's, so it is bounded; only the class the portal claims
// (invalid or not) is taken from it.
func finalError(op string, ev event) error {
	msg := ev.Error
	if len(msg) > maxErrorText {
		msg = msg[:maxErrorText] + "..."
	}
	if ev.Invalid {
		return fmt.Errorf("%s: %s: %w", op, msg, errdefs.ErrInvalid)
	}
	return fmt.Errorf("%s: %s: %w", op, msg, errdefs.ErrUnavailable)
}

// collector stores a capped call's lines. The cap is enforced here, on the
// server's side, because the portal may be hostile. What it stores is
// taken from the server's output budget (NewClient's takeOutput) as it grows,
// twice (held, then encoded), in steps of budgetStep.
type collector struct {
	ctx      context.Context
	take     TakeOutputFunc
	cap      outputCap
	lines    []guest.Line
	reserved int // bytes of the budget taken and not yet used
	starved  bool
}

const budgetStep = 256 << 10

func newCollector(ctx context.Context, take TakeOutputFunc) *collector {
	return &collector{ctx: ctx, take: take, cap: outputCap{maxBytes: guest.MaxOutput + trailerSlack, maxLines: maxLines + 16, perLine: lineEnvelope}}
}

func (co *collector) add(l guest.Line) {
	if co.starved {
		return
	}
	before := co.cap.bytes
	if !co.cap.admit(l.Text) {
		return
	}
	need := 2 * (co.cap.bytes - before)
	for co.reserved < need {
		if !co.take(co.ctx, budgetStep) {
			co.starved, co.cap.cut = true, true
			return
		}
		co.reserved += budgetStep
	}
	co.reserved -= need
	co.lines = append(co.lines, l)
}

// output is never nil: a call that printed nothing has an empty output,
// which the wire contract renders as [] rather than null.
func (co *collector) output() []guest.Line {
	if co.starved {
		return append(co.lines, guest.Line{Stream: guest.Stderr, Text: guest.OutputBudgetNotice})
	}
	if co.cap.cut {
		return append(co.lines, guest.Line{Stream: guest.Stderr, Text: guest.OutputCutNotice})
	}
	if co.lines == nil {
		return []guest.Line{}
	}
	return co.lines
}

// Ping waits until the portal answers. It returns ctx's error if ctx ends
// first, and an error matching ErrClosed if the connection is gone.
func (c *Client) Ping(ctx context.Context) error {
	cl, err := c.start(ctx, request{Op: opPing}, nil)
	if err != nil {
		return fmt.Errorf("portal: ping: %w", err)
	}
	ev, err := c.wait(ctx, cl, 0)
	if err != nil {
		return fmt.Errorf("portal: ping: %w", err)
	}
	if ev.Error != "" {
		return finalError("portal: ping", ev)
	}
	return nil
}

// Configure makes env and workdir the environment and working directory
// of everything the portal starts from now on (commands, interpreters,
// streamed processes) and the directory relative file paths start from,
// as if the sandbox had been started with them. Call it before any other
// call: one under way keeps what it started with. Errors: ctx's error;
// an error matching ErrClosed when the connection is gone; one wrapping
// errdefs.ErrUnavailable when the portal cannot enter workdir.
func (c *Client) Configure(ctx context.Context, env []string, workdir string) error {
	ev, err := c.do(ctx, request{Op: opConfigure, Env: env, Workdir: workdir}, 0, nil)
	if err != nil {
		return fmt.Errorf("portal: configure: %w", err)
	}
	if ev.Error != "" {
		return finalError("portal: configure", ev)
	}
	return nil
}

// Exec runs a command and returns its exit code and output, capped at
// guest.MaxOutput. A command that cannot be found or run is a result
// (exit code 127 or 126 and a stderr line), not an error; so is one killed
// by req.Timeout (guest.ExitTimeout, TimedOut). Errors: ctx's error when
// ctx ends first (the command is then killed), an error matching ErrClosed
// and errdefs.ErrUnavailable when the connection is gone or the portal
// misbehaved, or errdefs.ErrUnavailable when the portal could not run it.
func (c *Client) Exec(ctx context.Context, req guest.ExecRequest) (guest.ExecResult, error) {
	co := newCollector(ctx, c.takeOutput)
	ev, err := c.do(ctx, request{
		Op: opExec, Command: req.Command, Args: req.Args, Env: req.Env, Rlimits: c.rlimits,
		Workdir: req.Workdir, Timeout: req.Timeout,
	}, req.Timeout, co.add)
	if err != nil {
		return guest.ExecResult{}, fmt.Errorf("portal: exec %q: %w", req.Command, err)
	}
	if ev.Error != "" {
		return guest.ExecResult{}, finalError(fmt.Sprintf("portal: exec %q", req.Command), ev)
	}
	return guest.ExecResult{ExitCode: ev.ExitCode, TimedOut: ev.TimedOut, Output: co.output()}, nil
}

// do runs one call from request to final frame.
func (c *Client) do(ctx context.Context, req request, limit time.Duration, onLine func(guest.Line)) (event, error) {
	cl, err := c.start(ctx, req, onLine)
	if err != nil {
		return event{}, err
	}
	return c.wait(ctx, cl, limit)
}

// RunCode evaluates code in the sandbox's live interpreter for lang
// (guest.Python or guest.Node), which keeps its definitions from one
// call to the next. Output is capped at guest.MaxOutput. Code that
// raises, or makes the interpreter exit, is a ReplError result; code still
// running after timeout (when positive) is interrupted and is a
// ReplTimeout result. Errors: errdefs.ErrInvalid for an unknown
// language or when the image has no interpreter for it (the message names
// it); ctx's error when ctx ends first; an error matching ErrClosed and
// errdefs.ErrUnavailable when the connection is gone or the portal
// misbehaved; errdefs.ErrUnavailable when the interpreter could not start.
func (c *Client) RunCode(ctx context.Context, lang guest.Language, code string, timeout time.Duration) (guest.ReplResult, error) {
	if lang != guest.Python && lang != guest.Node {
		return guest.ReplResult{}, fmt.Errorf("portal: unknown language %q: %w", lang, errdefs.ErrInvalid)
	}
	limit := time.Duration(0)
	if timeout > 0 {
		limit = timeout + interruptGrace
	}
	co := newCollector(ctx, c.takeOutput)
	ev, err := c.do(ctx, request{Op: opRepl, Language: string(lang), Code: code, Timeout: timeout, Rlimits: c.rlimits}, limit, co.add)
	if err != nil {
		return guest.ReplResult{}, fmt.Errorf("portal: run %s code: %w", lang, err)
	}
	if ev.Error != "" {
		return guest.ReplResult{}, finalError(fmt.Sprintf("portal: run %s code", lang), ev)
	}
	switch ev.Status {
	case guest.ReplSuccess, guest.ReplError, guest.ReplTimeout:
	default:
		c.fail(fmt.Sprintf("the sandbox's portal sent an unknown status %.40q", ev.Status))
		return guest.ReplResult{}, fmt.Errorf("portal: run %s code: %w", lang, c.closedErr())
	}
	return guest.ReplResult{Status: ev.Status, Output: co.output()}, nil
}

// Spawn runs a long-lived background command (a sandbox's `exec` or
// `scripts.start`), calling out for every line it prints until it exits
// or ctx ends, and returns its exit code. An honest portal stops sending
// lines past guest.MaxLog, with guest.LogCutNotice as the last one. out runs on the
// client's reader goroutine, so it must return quickly and must not call
// the Client: a slow out stalls every call on this sandbox, which is what
// keeps memory bounded without dropping lines. Like Exec, a command that
// cannot start is exit code 127 or 126. Errors: ctx's error when ctx ends
// (the command is then killed); an error matching ErrClosed and
// errdefs.ErrUnavailable when the connection is gone or the portal
// misbehaved.
func (c *Client) Spawn(ctx context.Context, req guest.ExecRequest, out func(guest.Line)) (int, error) {
	if out == nil {
		out = func(guest.Line) {}
	}
	ev, err := c.do(ctx, request{
		Op: opSpawn, Command: req.Command, Args: req.Args, Env: req.Env, Rlimits: c.rlimits,
		Workdir: req.Workdir, Timeout: req.Timeout,
	}, req.Timeout, out)
	if err != nil {
		return 0, fmt.Errorf("portal: spawn %q: %w", req.Command, err)
	}
	if ev.Error != "" {
		return 0, finalError(fmt.Sprintf("portal: spawn %q", req.Command), ev)
	}
	return ev.ExitCode, nil
}

// Close closes the connection; calls in flight fail with an error matching
// ErrClosed. It returns the connection's Close error, if any.
func (c *Client) Close() error {
	return c.fail("closed by the server")
}
