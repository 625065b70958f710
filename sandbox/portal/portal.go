package portal

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/msb-dev/msb/sandbox/guest"
	"golang.org/x/sys/unix"
)

// Main is the entry point of `msb portal`, the sandbox's init: it serves
// requests on file descriptor 3 until the connection closes, then kills
// whatever it started and exits. It never returns and reports no errors:
// when fd 3 is not a usable connection there is nobody to report to, so it
// exits with status 2.
func Main() {
	if err := LockDown(); err != nil {
		// Fail closed: a sandbox without its filter must not run code.
		logf("%v", err)
		os.Exit(2)
	}
	Serve(Options{})
}

// Options are what the init that becomes the portal passes on to it.
type Options struct {
	// ChildTimerSlack is the timer slack, in nanoseconds, of every
	// process the portal starts; 0 leaves them the portal's own. (The
	// engine raises its own threads' slack, and every init inherits it;
	// the processes of the sandbox get the server's original back.)
	ChildTimerSlack uint64
}

// Serve is Main in a process already locked down (LockDown): an init
// that becomes the portal without an exec locks itself down before it
// reports its set-up done, so that a sandbox its server calls started
// runs under its filter before the portal serves anything. opts are what
// the init passes on.
func Serve(opts Options) {
	// Read and written through the runtime's poller, so that waiting for
	// the next request holds no processor. A portal often has just one
	// (GOMAXPROCS is its sandbox's CPUs): blocked in read(2) on a blocking
	// socket, it kept the goroutines of the request in flight (a command's
	// output, an interpreter's) from running until the runtime's monitor
	// took the processor back, 20 µs to a millisecond later.
	if err := syscall.SetNonblock(3, true); err != nil {
		logf("the server's connection (descriptor 3): %v", err)
		os.Exit(2)
	}
	conn := os.NewFile(3, "portal")
	if conn.SetReadDeadline(time.Time{}) != nil {
		// Not in the poller after all (it refused the descriptor): a
		// blocking one still works, where a non-blocking one would fail
		// its reads with EAGAIN.
		syscall.SetNonblock(3, false)
	}
	// Commands must not inherit the connection to the server.
	syscall.CloseOnExec(3)
	userCgroup := userCgroupFile()
	var calls *callCgroups
	if userCgroup != nil {
		if dir := callCgroupsFile(); dir != nil {
			calls = &callCgroups{dir: dir}
		}
	}
	// Outside a PID namespace (tests, or an engine without one) orphans
	// would escape to the host's init; as a subreaper they come to the
	// portal, as they do when it is PID 1, so it reaps and finally kills
	// them.
	const prSetChildSubreaper = 36 // linux/prctl.h
	syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0)
	os.Exit(serve(conn, userCgroup, calls, opts.ChildTimerSlack))
}

// cgroupV1Magic is CGROUP_SUPER_MAGIC, the file system type of cgroup v1.
const cgroupV1Magic = 0x27e0eb

// userCgroupFile returns fd 4 when the engine passed the tasks file of the
// sandbox's user pids cgroup there, and nil otherwise. The file system type
// is checked so that some other inherited descriptor (or one the Go runtime
// opened itself) is never written to.
func userCgroupFile() *os.File {
	// A cgroup file open for writing: a descriptor some runtime left open
	// without close-on-exec (Go's own keeps cgroup CPU files open to size
	// GOMAXPROCS) is on the same file system, but read-only.
	var st syscall.Statfs_t
	if err := syscall.Fstatfs(4, &st); err != nil || st.Type != cgroupV1Magic {
		return nil
	}
	if fl, err := unix.FcntlInt(4, unix.F_GETFL, 0); err != nil || fl&unix.O_ACCMODE != unix.O_WRONLY {
		return nil
	}
	syscall.CloseOnExec(4)
	return os.NewFile(4, "user-pids-cgroup")
}

// logf reports the portal's own failures on its stderr, which the engine
// keeps in a bounded log next to the sandbox: there is nobody else to tell.
func logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "msb portal: "+format+"\n", a...)
}

// server is the portal's state: one per sandbox.
type server struct {
	out     *frameWriter
	reaper  *reaper
	cgroups *callCgroups // nil: commands get no cgroup of their own
	env     []string     // the sandbox's default environment
	cwd     string       // the sandbox's default working directory

	files files // open file handles

	mu       sync.Mutex
	calls    map[uint64]context.CancelFunc
	sessions map[uint64]*session // flow-controlled calls, by id
	groups   map[int]bool        // process groups started and not yet finished
	interps  map[guest.Language]*interpSlot
	// seq numbers evaluations, so that a late sync marker of an earlier
	// evaluation is never taken for the current one.
	seq atomic.Uint64
}

// serve handles frames from conn until EOF and returns the exit status.
// calls may be nil: commands then get no cgroup of their own; childSlack
// is the timer slack of the processes it starts (0: the portal's).
func serve(conn io.ReadWriter, userCgroup *os.File, calls *callCgroups, childSlack uint64) int {
	cwd, err := os.Getwd()
	if err != nil {
		cwd = "/"
	}
	s := &server{
		out:      &frameWriter{w: conn},
		reaper:   newReaper(userCgroup, childSlack),
		cgroups:  calls,
		env:      os.Environ(),
		cwd:      cwd,
		calls:    make(map[uint64]context.CancelFunc),
		sessions: make(map[uint64]*session),
		groups:   make(map[int]bool),
		interps:  make(map[guest.Language]*interpSlot),
	}
	fr := newFrameReader(conn, maxRequest)
	status := 0
	for {
		line, hdr, err := fr.next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			logf("reading requests, stopping: %v", err)
			status = 3
			break
		}
		if hdr != nil {
			p, err := fr.payload(hdr)
			if err != nil {
				logf("reading requests, stopping: %v", err)
				status = 3
				break
			}
			s.input(hdr, p)
			continue
		}
		var req request
		if err := json.Unmarshal(line, &req); err != nil {
			// The server is the only peer and is trusted; a frame it
			// cannot have meant is a bug worth stopping for.
			logf("malformed request, stopping: %v", err)
			status = 3
			break
		}
		s.handle(req)
	}
	s.shutdown()
	return status
}

// input routes a data frame from the client to its call, never waiting:
// input for a call that is over (or never took any) is dropped.
func (s *server) input(h *dataHeader, p []byte) {
	ss := s.session(h.id)
	if ss == nil || ss.in == nil {
		return
	}
	if h.kind != ss.inKind || (len(p) == 0 && ss.tty) {
		return // the wrong kind, or a terminal's end of input
	}
	if !ss.in.push(p) {
		logf("call %d: the server sent more input than it was granted; dropping the call's input", h.id)
		ss.in.close()
	}
}

func (s *server) session(id uint64) *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sessions[id]
}

// shutdown kills everything the portal started. As PID 1 the kernel would
// do it anyway when the portal exits; when the portal is not PID 1 (tests,
// or an engine without a PID namespace) nothing else would.
func (s *server) shutdown() {
	s.mu.Lock()
	var groups []int
	for g := range s.groups {
		groups = append(groups, g)
	}
	s.mu.Unlock()
	killTree(os.Getpid(), groups...)
}

func (s *server) track(pgid int, live bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if live {
		s.groups[pgid] = true
	} else {
		delete(s.groups, pgid)
	}
}

// handle serves one control frame. Frames about a call in progress
// (cancel, credit, signal, resize, detach) are served at once; a new call
// runs on its own goroutine, so that the reader never waits.
func (s *server) handle(req request) {
	switch req.Op {
	case opPing:
		s.out.send(event{ID: req.ID, Done: true})
		return
	case opConfigure:
		// Served here, on the reader's goroutine: every call read after
		// it starts with what it set.
		s.out.send(s.configure(req))
		return
	case opCancel:
		s.mu.Lock()
		cancel := s.calls[req.ID]
		s.mu.Unlock()
		if cancel != nil {
			cancel()
		}
		return
	case opCredit, opSignal, opResize, opDetach:
		ss := s.session(req.ID)
		if ss == nil {
			return // the call is over
		}
		switch req.Op {
		case opCredit:
			ss.out.add(req.N)
		case opSignal:
			ss.signal(req.Signal)
		case opResize:
			ss.resize(req.Rows, req.Cols)
		case opDetach:
			ss.detach(req.Kill)
		}
		return
	case opExec, opSpawn, opRepl, opStart,
		opOpen, opRead, opWrite, opClose, opStat, opList, opMkdir, opRemove, opCopy, opRename:
	default:
		s.out.send(event{ID: req.ID, Done: true, Error: fmt.Sprintf("portal: unknown operation %q", req.Op)})
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	// A session is registered before the call's goroutine starts: the
	// client's next frames (credit, input) may come before it runs.
	var ss *session
	switch req.Op {
	case opStart:
		ss = newSession(req.ID, max(req.Window, 0), stdinWindow)
		ss.tty, ss.inKind = req.TTY, dataStdin
	case opRead:
		ss = newSession(req.ID, max(req.Window, 0), 0)
	case opWrite:
		ss = newSession(req.ID, 0, writeWindow)
		ss.inKind = dataFile
	}
	s.mu.Lock()
	s.calls[req.ID] = cancel
	if ss != nil {
		s.sessions[req.ID] = ss
	}
	s.mu.Unlock()
	go func() {
		defer func() {
			s.mu.Lock()
			delete(s.calls, req.ID)
			delete(s.sessions, req.ID)
			s.mu.Unlock()
			cancel()
			if ss != nil {
				ss.out.close()
				if ss.in != nil {
					ss.in.close()
				}
			}
		}()
		var res event
		switch req.Op {
		case opExec:
			res = s.runCommand(ctx, req, false)
		case opSpawn:
			res = s.runCommand(ctx, req, true)
		case opRepl:
			res = s.runCode(ctx, req)
		case opStart:
			res = s.runStream(ctx, req, ss)
		default:
			res = s.runFile(ctx, req, ss)
		}
		if ss != nil {
			ss.mu.Lock()
			detached := ss.detached
			ss.mu.Unlock()
			if detached {
				return // nobody waits for it
			}
		}
		s.out.send(res)
	}()
}

// configure makes req's environment and working directory the ones
// everything started from now on gets (Client.Configure). The working
// directory exists already: the engine makes it as the init would.
func (s *server) configure(req request) event {
	if req.Workdir != "" {
		if err := os.Chdir(req.Workdir); err != nil {
			return event{ID: req.ID, Done: true, Error: fmt.Sprintf("workdir %s: %v", req.Workdir, err)}
		}
		s.cwd = req.Workdir
	}
	s.env = append([]string(nil), req.Env...)
	return event{ID: req.ID, Done: true}
}

// sink sends the lines of one call, applying the output cap in the portal
// too: the client caps again, but an honest portal should not make the
// server drop a flood it could have dropped itself. Past the cap lines are
// read and dropped here, inside the sandbox, so that a command printing
// forever costs the server nothing.
type sink struct {
	mu  sync.Mutex
	id  uint64
	out *frameWriter
	cap outputCap
	// logCut says the call is a background command whose output goes to
	// the sandbox's log: the cut is noted at once, as the log's last line
	// for as long as the command runs, rather than when the call ends.
	logCut bool
}

// newSink returns the sink of call id: capped at guest.MaxOutput, or at
// guest.MaxLog for a background command (forLog).
func (s *server) newSink(id uint64, forLog bool) *sink {
	sk := &sink{id: id, out: s.out, logCut: forLog}
	sk.cap = outputCap{maxBytes: guest.MaxOutput, maxLines: maxLines, perLine: lineEnvelope}
	if forLog {
		sk.cap = outputCap{maxBytes: guest.MaxLog, maxLines: maxLogLines, perLine: 1}
	}
	return sk
}

func (sk *sink) line(stream guest.Stream, text string) {
	sk.mu.Lock()
	defer sk.mu.Unlock()
	if sk.cap.cut {
		return
	}
	if !sk.cap.admit(text) {
		if sk.logCut {
			sk.out.send(event{ID: sk.id, Stream: guest.Stderr, Text: guest.LogCutNotice})
		}
		return
	}
	sk.out.send(event{ID: sk.id, Stream: stream, Text: text})
}

// note sends a stderr line of msb's own, past the cap: notices must reach
// the caller even when the output was cut.
func (sk *sink) note(text string) {
	sk.mu.Lock()
	defer sk.mu.Unlock()
	sk.out.send(event{ID: sk.id, Stream: guest.Stderr, Text: text})
}

// cut reports whether the output was cut and the caller still has to say
// so.
func (sk *sink) cut() bool {
	sk.mu.Lock()
	defer sk.mu.Unlock()
	return sk.cap.cut && !sk.logCut
}
