package v1

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/auth"
	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/rpc/v1/agent"
	"github.com/msb-dev/msb/sandbox"
	"github.com/msb-dev/msb/sandbox/logfile"
)

// The agent socket's limits.
const (
	// idMin and idMax are the correlation ids a client may use.
	idMin, idMax = 1, 1 << 31
	// maxOps bounds the calls in flight on one socket.
	maxOps = 64
	// maxHandles bounds the files one socket holds open (as the upstream
	// agent does).
	maxHandles = 1024
	// agentVersion is what core.ready says the agent is.
	agentVersion = "msb"
)

// writeTimeout bounds how long one frame may take to reach a client that
// stopped reading; past it the socket is closed.
var writeTimeout = time.Minute

// agent serves GET /v1/sandboxes/{id}/agent: after the caller, its scope
// (sandbox:exec), the sandbox and its state are checked, the request is
// upgraded to a WebSocket carrying the agent protocol (rpc/v1/agent),
// and each exec and file request on it is run through the Service, as
// an Action of its own.
func (h *Handler) agent(c *Call) {
	rec, err := c.admitSandbox()
	if err == nil && rec.State != sandbox.StateRunning {
		err = errdefs.Conflictf("sandbox %q is %s: start it before running anything in it", rec.ID.Name(), statusOf(rec.State))
	}
	if err == nil {
		err = checkUpgrade(c.r)
	}
	if err != nil {
		c.fail(err)
		return
	}
	c.report(nil)
	c.writeRateHeaders(http.StatusSwitchingProtocols)
	ws, err := websocket.Accept(c.w, c.r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
	if err != nil {
		h.log.Info("agent socket: upgrade failed", "sandbox", rec.ID.String(), "err", err)
		return
	}
	s := &session{h: h, caller: c.caller, ns: c.NS, id: rec.ID, startedAt: rec.Started, ws: ws,
		ops: map[uint32]*op{}, handles: map[uint64]*openFile{}}
	// Not the request's context: it ends when the handler returns, and
	// the socket outlives nothing else.
	s.ctx, s.cancel = context.WithCancel(context.WithoutCancel(c.ctx()))
	s.serve()
}

func statusOf(st sandbox.State) string {
	if s, ok := statuses[st]; ok {
		return s
	}
	return string(st)
}

// checkUpgrade refuses, before anything is audited as done, a request
// the WebSocket library would refuse: not an upgrade, or from a web page
// of another origin (which, in development mode, would otherwise drive
// the sandboxes without a key).
func checkUpgrade(r *http.Request) error {
	if !headerHas(r.Header, "Connection", "upgrade") || !headerHas(r.Header, "Upgrade", "websocket") {
		return &codedError{code: codeInvalidRequest, status: http.StatusUpgradeRequired,
			err: errdefs.Invalidf("this route is the agent WebSocket: connect with Upgrade: websocket")}
	}
	if origin := r.Header.Get("Origin"); origin != "" {
		u, err := url.Parse(origin)
		if err != nil || !strings.EqualFold(u.Host, r.Host) {
			return errdefs.Forbiddenf("WebSocket connections from web pages of other origins are refused")
		}
	}
	return nil
}

func headerHas(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// session is one agent socket: the calls in flight on it, by correlation
// id, and the files it holds open.
type session struct {
	h         *Handler
	caller    *auth.Caller
	ns        string
	id        sandbox.ID
	startedAt time.Time
	ws        *websocket.Conn
	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup

	mu         sync.Mutex
	ops        map[uint32]*op
	handles    map[uint64]*openFile
	nextHandle uint64
	logw       *logfile.Writer // the sandbox's log, opened at the first exec
}

// op is one call in flight: an exec, or a file request.
type op struct {
	id    uint32
	typ   string // its request's message type
	write bool   // a file Write, which takes core.fs.data
	// ended is set once its terminal frame is sent (or refused): no
	// other frame goes out on its id after.
	ended atomic.Bool
	done  chan struct{} // closed when it is removed from the session
	// abort is closed to end it early (a bad follow-up, the socket's end).
	abort     chan struct{}
	abortOnce sync.Once
	// exec: ready is closed once proc is set (or it failed to start);
	// stdin carries what the client writes.
	ready chan struct{}
	proc  sandbox.Process
	stdin chan []byte
	// file Write: where core.fs.data goes.
	pw *io.PipeWriter
	// buf is reused for the frames it sends (from one goroutine).
	buf []byte
}

func (o *op) stop() { o.abortOnce.Do(func() { close(o.abort) }) }

// openFile is a file a socket opened; mu serialises its calls.
type openFile struct {
	mu sync.Mutex
	h  sandbox.FileHandle
}

// serve runs the socket until the client goes or breaks the protocol,
// then ends every call of it: processes are killed (killOnClose), files
// closed, goroutines waited for.
func (s *session) serve() {
	defer s.close()
	// A frame is one binary message; one over the limit closes the socket.
	s.ws.SetReadLimit(agent.MaxFrame + 4)
	hello := agent.Prologue(idMin, idMax)
	// Upstream's times are durations on the guest's CLOCK_BOOTTIME: a
	// sandbox has no kernel of its own to boot (0), and its "boot" is its
	// start, so readiness is the time since then.
	hello, _ = agent.AppendFrame(hello, 0, 0, agent.TypeReady, agent.Ready{
		ReadyTimeNs: uint64(max(s.h.now().Sub(s.startedAt), 0)), AgentVersion: agentVersion})
	if err := s.send(hello); err != nil {
		return
	}
	s.wg.Go(s.watchKey)
	r := bufio.NewReaderSize(&messages{ws: s.ws, ctx: s.ctx}, 64<<10)
	for {
		f, err := agent.ReadFrame(r)
		var fe *agent.FrameError
		switch {
		case err == nil:
			s.dispatch(f)
		case errors.As(err, &fe) && errors.Is(err, agent.ErrFrameTooLarge):
			// Out of step: say why, then close.
			s.coreError(fe.ID, agent.ErrMalformedMessage, err.Error(), "")
			return
		case errors.As(err, &fe):
			s.malformed(fe.ID, fe.Err)
		default:
			var ce websocket.CloseError
			if !errors.Is(err, io.EOF) && !errors.As(err, &ce) && s.ctx.Err() == nil {
				s.h.log.Debug("agent socket: read", "sandbox", s.id.String(), "err", err)
			}
			if errors.Is(err, agent.ErrFrameTooLarge) {
				s.coreError(0, agent.ErrMalformedMessage, err.Error(), "")
			}
			return
		}
	}
}

// keyRecheck is how often an open socket checks that its key still
// holds, so that a revoked or expired key loses what it runs (a shell, a
// stream) within that time, not when the client lets go.
var keyRecheck = time.Second

// watchKey closes the socket once its key no longer holds: revoked,
// expired, spent, or its signing key reset.
func (s *session) watchKey() {
	t := time.NewTicker(keyRecheck)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		err := s.h.gate.Recheck(s.ctx, s.caller)
		if err == nil || !errdefs.Is(err, errdefs.Unauthenticated) {
			continue // a registry that cannot be read now is no verdict
		}
		s.h.log.Info("agent socket closed: its key no longer holds", "sandbox", s.id.String(), "key", s.caller.Principal.KeyID, "reason", err.Error())
		// A close reason is at most 123 bytes.
		reason := err.Error()
		if len(reason) > 120 {
			reason = reason[:120]
		}
		s.ws.Close(websocket.StatusPolicyViolation, reason)
		s.cancel()
		return
	}
}

// close ends the session: every call is stopped and waited for, then
// every file it left open is closed.
func (s *session) close() {
	s.cancel()
	s.ws.CloseNow()
	s.mu.Lock()
	for _, o := range s.ops {
		o.stop()
		if o.pw != nil {
			o.pw.CloseWithError(errSocketClosed)
		}
	}
	s.mu.Unlock()
	s.wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	for n, f := range s.handles {
		f.mu.Lock()
		f.h.Close()
		f.mu.Unlock()
		delete(s.handles, n)
	}
	if s.logw != nil {
		s.logw.Close()
	}
}

var errSocketClosed = errors.New("the agent socket closed")

// messages reads the binary messages of a WebSocket as one byte stream,
// skipping text messages, as the protocol carries frames.
type messages struct {
	ws  *websocket.Conn
	ctx context.Context
	cur io.Reader
}

func (m *messages) Read(p []byte) (int, error) {
	for {
		if m.cur == nil {
			typ, r, err := m.ws.Reader(m.ctx)
			if err != nil {
				return 0, err
			}
			if typ != websocket.MessageBinary {
				if _, err := io.Copy(io.Discard, r); err != nil {
					return 0, err
				}
				continue
			}
			m.cur = r
		}
		n, err := m.cur.Read(p)
		if err == io.EOF {
			m.cur = nil
			if n == 0 {
				continue
			}
			err = nil
		}
		if errors.Is(err, websocket.ErrMessageTooBig) {
			err = fmt.Errorf("a WebSocket message over %d bytes: %w", agent.MaxFrame+4, agent.ErrFrameTooLarge)
		}
		return n, err
	}
}

// send writes one WebSocket message.
func (s *session) send(b []byte) error {
	ctx, cancel := context.WithTimeout(s.ctx, writeTimeout)
	defer cancel()
	return s.ws.Write(ctx, websocket.MessageBinary, b)
}

// sendOp sends a non-terminal frame of o, unless o has ended.
func (s *session) sendOp(o *op, typ string, payload any) error {
	if o.ended.Load() {
		return errSocketClosed
	}
	var err error
	if o.buf, err = agent.AppendFrame(o.buf[:0], o.id, agent.FlagsOf(typ), typ, payload); err != nil {
		return err
	}
	return s.send(o.buf)
}

// sendData sends data of o in frames of at most agent.ChunkSize.
func (s *session) sendData(o *op, typ string, data []byte) error {
	for len(data) > 0 {
		if o.ended.Load() {
			return errSocketClosed
		}
		n := min(len(data), agent.ChunkSize)
		o.buf = agent.AppendDataFrame(o.buf[:0], o.id, agent.FlagsOf(typ), typ, data[:n])
		if err := s.send(o.buf); err != nil {
			return err
		}
		data = data[n:]
	}
	return nil
}

// finish sends o's terminal frame, once.
func (s *session) finish(o *op, typ string, payload any) {
	if !o.ended.CompareAndSwap(false, true) {
		return
	}
	frame, err := agent.AppendFrame(nil, o.id, agent.FlagsOf(typ), typ, payload)
	if err != nil {
		s.h.log.Error("agent socket: encode", "type", typ, "err", err)
		return
	}
	s.send(frame)
}

// coreError answers a frame that no call owns with core.error.
func (s *session) coreError(id uint32, kind, msg, offending string) {
	frame, _ := agent.AppendFrame(nil, id, agent.FlagsOf(agent.TypeError), agent.TypeError,
		agent.Error{Kind: kind, Message: msg, OffendingType: truncate(offending)})
	s.send(frame)
}

// abortOp ends o because its client broke the protocol on it: core.error,
// and whatever it runs is stopped.
func (s *session) abortOp(o *op, kind, msg, offending string) {
	if o.ended.CompareAndSwap(false, true) {
		s.coreError(o.id, kind, msg, offending)
	}
	o.stop()
	if o.pw != nil {
		o.pw.CloseWithError(errors.New(msg))
	}
}

func (s *session) op(id uint32) *op {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ops[id]
}

// malformed answers a whole frame whose envelope could not be read.
func (s *session) malformed(id uint32, err error) {
	msg := "malformed frame: " + err.Error()
	if o := s.op(id); o != nil {
		s.abortOp(o, agent.ErrMalformedMessage, msg, "")
		return
	}
	s.coreError(id, agent.ErrMalformedMessage, msg, "")
}

// dispatch routes one frame: a request opens a call, anything else goes
// to the call of its id.
func (s *session) dispatch(f agent.Frame) {
	switch f.Type {
	case agent.TypeExecRequest, agent.TypeFsRequest, agent.TypeTCPConnect:
		s.request(f)
		return
	}
	o := s.op(f.ID)
	if o == nil {
		if !agent.KnownType(f.Type) {
			s.coreError(f.ID, agent.ErrUnsupportedMessageType, fmt.Sprintf("msb does not know message type %q", truncate(f.Type)), f.Type)
		}
		// A follow-up of a call that has ended is dropped, as the
		// upstream agent drops it.
		return
	}
	switch f.Type {
	case agent.TypeExecStdin, agent.TypeExecSignal, agent.TypeExecResize:
		if o.typ == agent.TypeExecRequest {
			s.execInput(o, f)
			return
		}
	case agent.TypeFsData:
		if o.write {
			s.writeData(o, f)
			return
		}
	}
	if !agent.KnownType(f.Type) {
		s.abortOp(o, agent.ErrUnsupportedMessageType, fmt.Sprintf("msb does not know message type %q", truncate(f.Type)), f.Type)
		return
	}
	s.abortOp(o, agent.ErrInvalidSession, fmt.Sprintf("%s does not belong to the call on id %d (%s)", f.Type, f.ID, o.typ), f.Type)
}

// request opens a call.
func (s *session) request(f agent.Frame) {
	if f.ID < idMin || f.ID >= idMax {
		s.coreError(f.ID, agent.ErrInvalidSession, fmt.Sprintf("id %d is outside the range [%d, %d) this connection announced", f.ID, idMin, uint64(idMax)), f.Type)
		return
	}
	if old := s.op(f.ID); old != nil {
		s.abortOp(old, agent.ErrInvalidSession, fmt.Sprintf("id %d was used for a new request while its call was in flight", f.ID), f.Type)
		return
	}
	o := &op{id: f.ID, typ: f.Type, done: make(chan struct{}), abort: make(chan struct{})}
	s.mu.Lock()
	full := len(s.ops) >= maxOps
	s.mu.Unlock()
	switch f.Type {
	case agent.TypeTCPConnect:
		s.finish(o, agent.TypeTCPFailed, agent.TCPFailed{Error: "msb does not forward TCP connections over the agent socket"})
		return
	case agent.TypeExecRequest:
		var req agent.ExecRequest
		if err := agent.Decode(f.Payload, &req); err != nil {
			s.coreError(f.ID, agent.ErrInvalidPayload, "invalid core.exec.request: "+err.Error(), f.Type)
			return
		}
		if full {
			s.finish(o, agent.TypeExecFailed, agent.ExecFailed{Kind: "resource_limit", Message: fmt.Sprintf("too many calls in flight on this connection (at most %d)", maxOps)})
			return
		}
		o.ready, o.stdin = make(chan struct{}), make(chan []byte)
		s.add(o)
		s.wg.Go(func() { s.runExec(o, req) })
	case agent.TypeFsRequest:
		var req agent.FsRequest
		if err := agent.Decode(f.Payload, &req); err != nil {
			s.finish(o, agent.TypeFsResponse, fsError("invalid core.fs.request: "+err.Error()))
			return
		}
		if full {
			s.finish(o, agent.TypeFsResponse, fsError(fmt.Sprintf("too many calls in flight on this connection (at most %d)", maxOps)))
			return
		}
		if req.Op.Name == "Write" {
			var pr *io.PipeReader
			pr, o.pw = io.Pipe()
			o.write = true
			s.add(o)
			s.wg.Go(func() { s.runWrite(o, req.Op, pr) })
			return
		}
		s.add(o)
		s.wg.Go(func() { s.runFs(o, req.Op) })
	}
}

func (s *session) add(o *op) {
	s.mu.Lock()
	s.ops[o.id] = o
	s.mu.Unlock()
}

// remove forgets o: its id may be used again.
func (s *session) remove(o *op) {
	s.mu.Lock()
	if s.ops[o.id] == o {
		delete(s.ops, o.id)
	}
	s.mu.Unlock()
	close(o.done)
}

// action is the Action of one call on the socket, as the Gate admits and
// audits it.
func (s *session) action(name string, changes bool) auth.Action {
	return auth.Action{Name: "v1: agent " + name, Scope: auth.ScopeSandboxExec, Changes: changes,
		Namespaced: true, Namespace: s.ns, Sandbox: s.id.Name()}
}

// admit charges and authorizes a call on the socket, whose key must
// still hold (it was checked at the upgrade).
func (s *session) admit(a *auth.Action) error {
	if err := s.h.gate.Recheck(s.ctx, s.caller); err != nil {
		return err
	}
	if err := s.h.gate.Charge(s.caller, a); err != nil {
		return err
	}
	return s.h.gate.Authorize(s.ctx, s.caller, a, nil)
}

// message is what a client reads of err: its text, or for an internal
// error a reference to the server log.
func (s *session) message(err error) string {
	_, _, msg := s.h.describe(nil, err)
	return msg
}

// execFailure is the kind core.exec.failed gives a call refused or failed
// before its process ran.
func execFailure(err error) string {
	switch errdefs.Classify(err) {
	case errdefs.Forbidden, errdefs.Unauthenticated:
		return "permission_denied"
	case errdefs.RateLimited, errdefs.Exhausted:
		return "resource_limit"
	case errdefs.Invalid:
		return "bad_args"
	}
	return "other"
}

// runExec runs one core.exec.request: admitted and audited as one call,
// its process streamed through the Service (killed when the socket
// closes), its output also added to the sandbox's log.
func (s *session) runExec(o *op, req agent.ExecRequest) {
	defer s.remove(o)
	a := s.action("exec", true)
	err := s.admit(&a)
	if err == nil && req.Cmd == "" {
		err = errdefs.Invalidf("the exec request names no command")
	}
	if err != nil {
		s.h.gate.Done(s.caller, a, err)
		close(o.ready)
		s.finish(o, agent.TypeExecFailed, agent.ExecFailed{Kind: execFailure(err), Message: s.message(err)})
		return
	}
	spec := sandbox.ExecSpec{Command: req.Cmd, Args: req.Args, Env: req.Env, TTY: req.TTY}
	if req.Cwd != nil {
		spec.Workdir = *req.Cwd
	}
	if req.User != nil {
		spec.User = *req.User
	}
	if req.Rows != nil {
		spec.Rows = *req.Rows
	}
	if req.Cols != nil {
		spec.Cols = *req.Cols
	}
	for _, r := range req.Rlimits {
		spec.Rlimits = append(spec.Rlimits, sandbox.Rlimit{Resource: r.Resource, Soft: r.Soft, Hard: r.Hard})
	}
	out, errOut := s.logLines(req.TTY)
	events := func(ev sandbox.ExecEvent) {
		switch ev.Kind {
		case sandbox.EventStarted:
			s.sendOp(o, agent.TypeExecStarted, agent.ExecStarted{Pid: uint32(ev.Pid)})
		case sandbox.EventStdout:
			out.Write(ev.Data)
			s.sendData(o, agent.TypeExecStdout, ev.Data)
		case sandbox.EventStderr:
			errOut.Write(ev.Data)
			s.sendData(o, agent.TypeExecStderr, ev.Data)
		case sandbox.EventStdinError:
			s.sendOp(o, agent.TypeExecStdinError, agent.ExecStdinError{Message: ev.Message})
		case sandbox.EventExited:
			out.Flush()
			errOut.Flush()
			s.finish(o, agent.TypeExecExited, agent.ExecExited{Code: int32(ev.Code)})
		case sandbox.EventFailed:
			f := agent.ExecFailed{Kind: "other", Message: "the process could not be started"}
			if ev.Fail != nil {
				f.Kind, f.Message = ev.Fail.Kind, ev.Fail.Message
				if ev.Fail.Errno != 0 {
					n := int32(ev.Fail.Errno)
					name := unix.ErrnoName(syscall.Errno(ev.Fail.Errno))
					f.Errno = &n
					if name != "" {
						f.ErrnoName = &name
					}
				}
			}
			s.finish(o, agent.TypeExecFailed, f)
		}
	}
	proc, err := s.h.sessions.Stream(s.ctx, s.id, spec, true, events)
	s.h.gate.Done(s.caller, a, err)
	if err != nil {
		close(o.ready)
		s.finish(o, agent.TypeExecFailed, agent.ExecFailed{Kind: execFailure(err), Message: s.message(err)})
		return
	}
	o.proc = proc
	close(o.ready)
	defer proc.Close()
	for {
		select {
		case data := <-o.stdin:
			// A failed write is reported by the process's events.
			proc.Stdin(s.ctx, data)
		case <-proc.Done():
			if !o.ended.Load() {
				s.finish(o, agent.TypeError, agent.Error{Kind: agent.ErrInvalidSession, Message: "the process's events ended without its exit status"})
			}
			return
		case <-o.abort:
			return
		}
	}
}

// logLines returns the writers of an exec's output to the sandbox's log:
// stdout and stderr, or a terminal's output. Without a log they discard.
func (s *session) logLines(tty bool) (out, errOut lineWriter) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.logw == nil && s.h.logs != nil {
		w, err := s.h.logs.Append(s.id.Namespace(), s.id.Name())
		if err != nil {
			s.h.log.Warn("agent socket: the sandbox's log", "sandbox", s.id.String(), "err", err)
		}
		s.logw = w
	}
	if s.logw == nil {
		return discardLines{}, discardLines{}
	}
	if tty {
		return s.logw.Lines(logfile.Output), discardLines{}
	}
	return s.logw.Lines(logfile.Stdout), s.logw.Lines(logfile.Stderr)
}

type lineWriter interface {
	io.Writer
	Flush() error
}

type discardLines struct{}

func (discardLines) Write(p []byte) (int, error) { return len(p), nil }
func (discardLines) Flush() error                { return nil }

// execInput hands a follow-up of an exec to its process: stdin in order
// (waiting while the process's stdin is full), signals and resizes once
// it started.
func (s *session) execInput(o *op, f agent.Frame) {
	switch f.Type {
	case agent.TypeExecStdin:
		data, err := agent.DecodeData(f.Payload)
		if err != nil {
			s.abortOp(o, agent.ErrInvalidPayload, "invalid core.exec.stdin: "+err.Error(), f.Type)
			return
		}
		select {
		case o.stdin <- data:
		case <-o.done:
		case <-o.abort:
		}
	case agent.TypeExecSignal:
		var sig agent.ExecSignal
		if err := agent.Decode(f.Payload, &sig); err != nil {
			s.abortOp(o, agent.ErrInvalidPayload, "invalid core.exec.signal: "+err.Error(), f.Type)
			return
		}
		if p := s.started(o); p != nil {
			p.Signal(int(sig.Signal))
		}
	case agent.TypeExecResize:
		var rs agent.ExecResize
		if err := agent.Decode(f.Payload, &rs); err != nil {
			s.abortOp(o, agent.ErrInvalidPayload, "invalid core.exec.resize: "+err.Error(), f.Type)
			return
		}
		if p := s.started(o); p != nil {
			p.Resize(rs.Rows, rs.Cols)
		}
	}
}

// started waits until o's process started and returns it (nil if it
// never will).
func (s *session) started(o *op) sandbox.Process {
	select {
	case <-o.ready:
		return o.proc
	case <-o.done:
	case <-o.abort:
	}
	return nil
}

// writeData hands a core.fs.data of a Write to it: the bytes, or EOF.
func (s *session) writeData(o *op, f agent.Frame) {
	data, err := agent.DecodeData(f.Payload)
	if err != nil {
		s.abortOp(o, agent.ErrInvalidPayload, "invalid core.fs.data: "+err.Error(), f.Type)
		return
	}
	if len(data) == 0 {
		o.pw.Close()
		return
	}
	// Waits until the file took them: the client's next frames wait in
	// TCP, not in the server's memory. An error means the Write ended.
	o.pw.Write(data)
}

func fsError(msg string) agent.FsResponse { return agent.FsResponse{Error: &msg} }

// fsResult is the response to a file request that ended with err.
func (s *session) fsResult(err error, data *agent.FsData) agent.FsResponse {
	if err != nil {
		return fsError(s.message(err))
	}
	return agent.FsResponse{OK: true, Data: data}
}

// file returns the socket's open file n.
func (s *session) file(n uint64) (*openFile, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.handles[n]
	if f == nil {
		return nil, errdefs.NotFoundf("no open file handle %d on this connection", n)
	}
	return f, nil
}

// fsCall is how one file operation is admitted: charged (each operation
// counts, but reads and closes of a file already opened), audited when
// it changes something.
func fsCall(name string, opts agent.OpenOptions) (charged, changes bool) {
	switch name {
	case "Read", "CloseHandle", "FStat", "ReadDir":
		return false, false
	case "OpenFile":
		return true, opts.Write || opts.Append || opts.Create || opts.Truncate || opts.CreateNew
	case "List", "Stat", "RealPath", "ReadLink", "OpenDir":
		return true, false
	}
	return true, true
}

// runFs runs one file request but Write.
func (s *session) runFs(o *op, fop agent.FsOp) {
	defer s.remove(o)
	var open agent.OpenFile
	var decodeErr error
	if fop.Name == "OpenFile" {
		decodeErr = fop.Args(&open)
	}
	charged, changes := fsCall(fop.Name, open.Options)
	a := s.action("fs."+truncate(fop.Name), changes)
	var err error
	if charged {
		err = s.admit(&a)
	} else {
		err = s.h.gate.Recheck(s.ctx, s.caller)
	}
	var data *agent.FsData
	if err == nil {
		if decodeErr != nil {
			err = errdefs.Invalidf("invalid %s: %v", fop.Name, decodeErr)
		} else {
			data, err = s.fsOp(o, fop, open)
		}
	}
	if charged {
		s.h.gate.Done(s.caller, a, err)
	}
	s.finish(o, agent.TypeFsResponse, s.fsResult(err, data))
}

// fsOp runs a file operation on the sandbox.
func (s *session) fsOp(o *op, fop agent.FsOp, open agent.OpenFile) (*agent.FsData, error) {
	ctx, fs, id := s.ctx, s.h.sessions, s.id
	bad := func(err error) error { return errdefs.Invalidf("invalid %s: %v", fop.Name, err) }
	switch fop.Name {
	case "OpenFile":
		oo := open.Options
		opts := sandbox.OpenOptions{Read: oo.Read, Write: oo.Write, Append: oo.Append, Create: oo.Create, Truncate: oo.Truncate, Exclusive: oo.CreateNew}
		if oo.Mode != nil {
			opts.Mode = *oo.Mode
		}
		s.mu.Lock()
		full := len(s.handles) >= maxHandles
		s.mu.Unlock()
		if full {
			return nil, errdefs.Exhaustedf("too many open files on this connection (at most %d): close some", maxHandles)
		}
		h, err := fs.Open(ctx, id, open.Path, opts)
		if err != nil {
			return nil, err
		}
		s.mu.Lock()
		s.nextHandle++
		n := s.nextHandle
		s.handles[n] = &openFile{h: h}
		s.mu.Unlock()
		return &agent.FsData{Handle: &n}, nil
	case "Read":
		var args agent.Read
		if err := fop.Args(&args); err != nil {
			return nil, bad(err)
		}
		return nil, s.read(o, args)
	case "CloseHandle":
		var args agent.CloseHandle
		if err := fop.Args(&args); err != nil {
			return nil, bad(err)
		}
		f, err := s.file(args.Handle)
		if err != nil {
			return nil, err
		}
		s.mu.Lock()
		delete(s.handles, args.Handle)
		s.mu.Unlock()
		f.mu.Lock()
		defer f.mu.Unlock()
		return nil, f.h.Close()
	case "List":
		var args agent.List
		if err := fop.Args(&args); err != nil {
			return nil, bad(err)
		}
		list, err := fs.List(ctx, id, args.Path)
		if err != nil {
			return nil, err
		}
		out := make([]agent.EntryInfo, 0, len(list))
		for _, fi := range list {
			out = append(out, entryInfo(fi))
		}
		return &agent.FsData{List: out}, nil
	case "Stat":
		var args agent.Stat
		if err := fop.Args(&args); err != nil {
			return nil, bad(err)
		}
		fi, err := fs.Stat(ctx, id, args.Path, args.FollowSymlink)
		if err != nil {
			return nil, err
		}
		e := entryInfo(fi)
		return &agent.FsData{Stat: &e}, nil
	case "Mkdir":
		var args agent.Mkdir
		if err := fop.Args(&args); err != nil {
			return nil, bad(err)
		}
		var mode uint32
		if args.Mode != nil {
			mode = *args.Mode
		}
		return nil, fs.Mkdir(ctx, id, args.Path, mode)
	case "Remove":
		var args agent.Remove
		if err := fop.Args(&args); err != nil {
			return nil, bad(err)
		}
		return nil, fs.Remove(ctx, id, args.Path, false)
	case "RemoveDir":
		var args agent.RemoveDir
		if err := fop.Args(&args); err != nil {
			return nil, bad(err)
		}
		return nil, fs.Remove(ctx, id, args.Path, args.Recursive)
	case "Copy", "Rename":
		var args agent.Copy
		if err := fop.Args(&args); err != nil {
			return nil, bad(err)
		}
		if fop.Name == "Copy" {
			return nil, fs.Copy(ctx, id, args.Src, args.Dst)
		}
		return nil, fs.Rename(ctx, id, args.Src, args.Dst)
	case "RealPath", "SetStat", "ReadLink", "Symlink", "OpenDir", "ReadDir", "FStat", "FSetStat":
		return nil, errdefs.Invalidf("%s is not supported by msb's agent socket (the SDK's file API does not use it)", fop.Name)
	}
	return nil, errdefs.Invalidf("unknown file operation %q", truncate(fop.Name))
}

// read streams a file of the socket to the client in core.fs.data frames
// of o's id.
func (s *session) read(o *op, args agent.Read) error {
	if args.Offset > math.MaxInt64 || args.Len != nil && *args.Len > math.MaxInt64 {
		return errdefs.Invalidf("Read: offset and len must be below 2^63")
	}
	f, err := s.file(args.Handle)
	if err != nil {
		return err
	}
	n := int64(-1)
	if args.Len != nil {
		n = int64(*args.Len)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	_, err = f.h.ReadTo(s.ctx, int64(args.Offset), n, dataWriter{s, o})
	return err
}

// dataWriter sends what it is given as core.fs.data frames of its op.
type dataWriter struct {
	s *session
	o *op
}

func (w dataWriter) Write(p []byte) (int, error) {
	if err := w.s.sendData(w.o, agent.TypeFsData, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// runWrite runs a Write: the client's core.fs.data frames, until an empty
// one, go to the file; then one response.
func (s *session) runWrite(o *op, fop agent.FsOp, pr *io.PipeReader) {
	defer s.remove(o)
	defer pr.CloseWithError(errWriteEnded) // the client's further data is dropped
	a := s.action("fs.Write", true)
	err := s.admit(&a)
	var args agent.Write
	if err == nil {
		if derr := fop.Args(&args); derr != nil {
			err = errdefs.Invalidf("invalid Write: %v", derr)
		} else if args.Offset > math.MaxInt64 {
			err = errdefs.Invalidf("Write: offset must be below 2^63")
		}
	}
	var f *openFile
	if err == nil {
		f, err = s.file(args.Handle)
	}
	if err == nil {
		var r io.Reader = pr
		if args.Len != nil {
			r = &exactly{r: pr, n: *args.Len}
		}
		f.mu.Lock()
		var n int64
		n, err = f.h.WriteFrom(s.ctx, int64(args.Offset), r)
		f.mu.Unlock()
		if err == nil && args.Len != nil && uint64(n) != *args.Len {
			err = errdefs.Invalidf("write length mismatch: the request said %d bytes, %d came", *args.Len, n)
		}
	}
	s.h.gate.Done(s.caller, a, err)
	s.finish(o, agent.TypeFsResponse, s.fsResult(err, nil))
}

var errWriteEnded = errors.New("the write has ended")

// exactly reads from r and fails once more than n bytes come.
type exactly struct {
	r    io.Reader
	n, m uint64
}

func (e *exactly) Read(p []byte) (int, error) {
	k, err := e.r.Read(p)
	e.m += uint64(k)
	if e.m > e.n {
		return 0, errdefs.Invalidf("write length mismatch: the request said %d bytes, more came", e.n)
	}
	return k, err
}

// entryInfo is a file's description on the wire.
func entryInfo(fi sandbox.FileInfo) agent.EntryInfo {
	e := agent.EntryInfo{Path: fi.Path, Kind: string(fi.Kind), Size: uint64(max(fi.Size, 0)), Mode: fi.Mode, UID: fi.UID, GID: fi.GID}
	switch fi.Kind {
	case sandbox.KindFile, sandbox.KindDir, sandbox.KindSymlink:
	default:
		e.Kind = string(sandbox.KindOther)
	}
	if !fi.ModTime.IsZero() {
		t := fi.ModTime.Unix()
		e.Modified, e.Mtime = &t, &t
	}
	if !fi.ATime.IsZero() {
		t := fi.ATime.Unix()
		e.Atime = &t
	}
	return e
}
