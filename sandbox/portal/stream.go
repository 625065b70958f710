package portal

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/sandbox/guest"
)

// session is a call whose data is flow-controlled: a streamed process,
// a file read or a file write. The portal's reader routes the client's
// credit and data frames to it without ever waiting.
type session struct {
	id  uint64
	out *credit // output the portal may still send
	in  *inbox  // the client's input (stdin, a write's chunks); nil: none
	// inKind is the kind of data frame the input comes in; tty marks a
	// process on a terminal, where the end of the input is ignored.
	inKind byte
	tty    bool

	mu       sync.Mutex
	pgid     int      // the process group, while the process runs
	pending  int      // a signal that came before the process started
	pty      *os.File // the terminal's master side, for a TTY process
	kill     func()   // kills the process and everything it started
	detached bool     // the client stopped following: output is dropped
	doomed   bool     // detached with kill, maybe before the process started
}

func newSession(id uint64, window, inLimit int64) *session {
	ss := &session{id: id, out: newCredit(window)}
	if inLimit > 0 {
		ss.in = newInbox(inLimit)
	}
	return ss
}

// signal sends sig to the process's group. One that comes before the
// process started is sent as it starts; after it ended there is nothing
// to signal.
func (ss *session) signal(sig int) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	switch {
	case sig <= 0 || sig > 64:
	case ss.pgid > 1:
		_ = syscall.Kill(-ss.pgid, syscall.Signal(sig))
	case ss.kill == nil:
		ss.pending = sig
	}
}

// resize sets the terminal's size; without a terminal it does nothing.
func (ss *session) resize(rows, cols uint16) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.pty != nil {
		setWinsize(ss.pty, rows, cols)
	}
}

// detach stops sending the process's output and closes its input; with
// kill the process and what it started are killed too.
func (ss *session) detach(kill bool) {
	ss.mu.Lock()
	ss.detached = true
	ss.doomed = ss.doomed || kill
	k := ss.kill
	ss.mu.Unlock()
	ss.out.close()
	if ss.in != nil {
		ss.in.close()
	}
	if kill && k != nil {
		go k() // never on the portal's reader: killing takes a while
	}
}

// emit sends p as data frames of kind, as the client's credit allows. It
// returns false when the client no longer wants it (detached, or gone).
func (s *server) emit(ctx context.Context, ss *session, kind byte, p []byte) bool {
	for len(p) > 0 {
		k := ss.out.take(ctx, int64(len(p)))
		if k == 0 {
			return false
		}
		if s.out.sendData(ss.id, kind, p[:k]) != nil {
			return false
		}
		p = p[k:]
	}
	return true
}

// A streamed process that cannot start fails with one of these kinds
// (guest.ExecFailure).
const (
	failNotFound      = "not_found"
	failPermission    = "permission_denied"
	failNotExecutable = "not_executable"
	failBadCwd        = "bad_cwd"
	failBadArgs       = "bad_args"
	failResourceLimit = "resource_limit"
	failUserSetup     = "user_setup_failed"
	failOutOfMemory   = "out_of_memory"
	failPTYSetup      = "pty_setup_failed"
	failOther         = "other"
)

// failKinds are the kinds a client accepts.
var failKinds = map[string]bool{
	failNotFound: true, failPermission: true, failNotExecutable: true, failBadCwd: true, failBadArgs: true,
	failResourceLimit: true, failUserSetup: true, failOutOfMemory: true, failPTYSetup: true, failOther: true,
}

func errnoOf(err error) syscall.Errno {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno
	}
	return 0
}

// startFailure is the kind of a failed fork or exec.
func startFailure(err error, switchedUser bool) string {
	switch errnoOf(err) {
	case syscall.ENOENT, syscall.ENOTDIR:
		return failNotFound
	case syscall.EACCES:
		return failPermission
	case syscall.EPERM:
		if switchedUser {
			return failUserSetup
		}
		return failPermission
	case syscall.ENOEXEC, syscall.EISDIR, syscall.ETXTBSY, syscall.ELIBBAD:
		return failNotExecutable
	case syscall.EAGAIN, syscall.EMFILE, syscall.ENFILE:
		return failResourceLimit
	case syscall.ENOMEM:
		return failOutOfMemory
	case syscall.E2BIG, syscall.EINVAL, syscall.ENAMETOOLONG:
		return failBadArgs
	}
	return failOther
}

// runStream runs a streamed process (opStart) and returns its final
// frame: exited, or failed when it never ran.
func (s *server) runStream(ctx context.Context, req request, ss *session) event {
	fail := func(kind string, err error, format string, a ...any) event {
		msg := fmt.Sprintf(format, a...)
		if err != nil {
			msg += ": " + err.Error()
		}
		return event{ID: req.ID, Done: true, Fail: &failure{Kind: kind, Errno: int(errnoOf(err)), Message: msg}}
	}
	if req.Command == "" {
		return fail(failBadArgs, nil, "no command given")
	}
	for _, a := range append(append([]string{req.Command, req.Workdir, req.User}, req.Args...), req.Env...) {
		if strings.IndexByte(a, 0) >= 0 {
			return fail(failBadArgs, syscall.EINVAL, "a command, argument, variable or directory holds a NUL byte")
		}
	}
	limits, err := parseRlimits(req.Rlimits)
	if err != nil {
		return fail(failBadArgs, syscall.EINVAL, "%v", err)
	}
	dir := req.Workdir
	if dir == "" {
		dir = s.cwd
	}
	if fi, err := os.Stat(dir); err != nil {
		return fail(failBadCwd, err, "working directory")
	} else if !fi.IsDir() {
		return fail(failBadCwd, syscall.ENOTDIR, "working directory %s", dir)
	}
	cred, home, err := lookupUser(req.User)
	if err != nil {
		return fail(failUserSetup, err, "user %q", req.User)
	}
	env := s.env
	if home != "" {
		env = guest.MergeEnv(env, []string{"HOME=" + home})
	}
	if req.TTY && lookupEnv(env, "TERM") == "" {
		env = guest.MergeEnv(env, []string{"TERM=xterm"})
	}
	env = guest.MergeEnv(env, req.Env)
	path, err := lookPath(req.Command, lookupEnv(env, "PATH"), dir)
	switch {
	case errors.Is(err, errNotExecutable):
		return fail(failNotExecutable, syscall.EACCES, "command %q is not executable", req.Command)
	case errors.Is(err, fs.ErrPermission):
		return fail(failPermission, syscall.EACCES, "command %q", req.Command)
	case err != nil:
		return fail(failNotFound, syscall.ENOENT, "command %q not found", req.Command)
	}

	// The child's ends: stdin, stdout, stderr (one terminal for all three
	// on a TTY); ours: where its input goes and its output comes from.
	var (
		childFiles []*os.File
		input      *os.File
		outs       []*os.File
		kinds      []byte
	)
	defer func() {
		for _, f := range childFiles {
			f.Close()
		}
	}()
	if req.TTY {
		master, slave, err := openPTY(req.Rows, req.Cols)
		if err != nil {
			return fail(failPTYSetup, err, "allocating a terminal")
		}
		childFiles = []*os.File{slave, slave, slave}
		input, outs, kinds = master, []*os.File{master}, []byte{dataStdout}
		ss.mu.Lock()
		ss.pty = master // a resize may come before the process starts
		ss.mu.Unlock()
	} else {
		var pipes [3][2]*os.File
		for i := range pipes {
			r, w, err := os.Pipe()
			if err != nil {
				for _, p := range pipes[:i] {
					p[0].Close()
					p[1].Close()
				}
				return fail(failResourceLimit, err, "making pipes")
			}
			pipes[i] = [2]*os.File{r, w}
		}
		childFiles = []*os.File{pipes[0][0], pipes[1][1], pipes[2][1]}
		input, outs, kinds = pipes[0][1], []*os.File{pipes[1][0], pipes[2][0]}, []byte{dataStdout, dataStderr}
	}
	closeOurs := func() {
		ss.mu.Lock()
		ss.pty = nil
		ss.mu.Unlock()
		input.Close()
		for _, f := range outs {
			f.Close()
		}
	}

	argv := append([]string{req.Command}, req.Args...)
	attr := &syscall.ProcAttr{Dir: dir, Env: env, Sys: &syscall.SysProcAttr{Credential: cred}}
	if req.TTY {
		// A session of its own with the terminal as its controlling
		// terminal: its process group is its pid, as with Setpgid.
		attr.Sys.Setsid, attr.Sys.Setctty, attr.Sys.Ctty = true, true, 0
	} else {
		attr.Sys.Setpgid = true
	}
	for _, f := range childFiles {
		attr.Files = append(attr.Files, f.Fd())
	}
	cg := s.cgroups.create()
	if cg != nil {
		defer cg.release()
	}
	var into *os.File
	if cg != nil {
		into = cg.tasks
	}
	var pid int
	var exited <-chan syscall.WaitStatus
	if len(limits) == 0 {
		pid, exited, err = s.reaper.start(path, argv, attr, into)
		if err != nil {
			closeOurs()
			return fail(startFailure(err, cred != nil), err, "starting %q", req.Command)
		}
	} else {
		var kind string
		pid, exited, kind, err = s.startLimited(path, argv, limits, attr, into)
		if err != nil {
			closeOurs()
			return fail(kind, err, "starting %q", req.Command)
		}
	}
	for _, f := range childFiles {
		f.Close()
	}
	childFiles = nil
	s.track(pid, true)
	defer s.track(pid, false)
	c := &child{pid: pid, exited: exited, cg: cg}

	ss.mu.Lock()
	ss.pgid, ss.kill = pid, c.kill
	doomed, pending := ss.doomed, ss.pending
	ss.mu.Unlock()
	if doomed {
		c.kill() // detached with kill before it started
	} else if pending != 0 {
		_ = syscall.Kill(-pid, syscall.Signal(pending))
	}
	s.out.send(event{ID: req.ID, Started: true, Pid: pid, Credit: stdinWindow})

	// After the process exits, its pipes are read until they are empty
	// for pipeGrace: background children may keep them open, and the call
	// must not last as long as they do. The deadline applies only while a
	// read waits, never while output waits for the client's credit, so
	// nothing the process wrote is lost.
	var over atomic.Bool
	var wg sync.WaitGroup
	for i, f := range outs {
		wg.Go(func() {
			buf := make([]byte, outputChunk)
			for {
				if over.Load() {
					f.SetReadDeadline(time.Now().Add(pipeGrace))
				}
				n, err := f.Read(buf)
				if n > 0 {
					s.emit(ctx, ss, kinds[i], buf[:n]) // dropped when detached
				}
				if err != nil {
					return // EOF; EIO from a terminal nobody holds; the deadline
				}
			}
		})
	}
	feedDone := make(chan struct{})
	go func() {
		defer close(feedDone)
		s.feed(ss, input)
	}()

	ws, timedOut := c.wait(ctx, req.Timeout)
	ss.mu.Lock()
	ss.pgid = 0 // its pid may be reused from now on
	ss.mu.Unlock()
	over.Store(true)
	for _, f := range outs {
		f.SetReadDeadline(time.Now().Add(pipeGrace))
	}
	wg.Wait()
	ss.in.close()
	closeOurs() // also wakes a write to stdin that waits for the process
	<-feedDone

	res := event{ID: req.ID, Done: true, ExitCode: ws.ExitStatus()}
	switch {
	case timedOut:
		res.ExitCode, res.Signal, res.TimedOut = -1, int(syscall.SIGKILL), true
	case ws.Signaled():
		res.ExitCode, res.Signal = -1, int(ws.Signal())
	}
	return res
}

// feed writes the client's input to the process until the input ends or
// the session does (then its stdin is closed, or its terminal hung up),
// granting the client credit as it goes. A write that
// fails (the process closed its stdin) is reported once; later input is
// dropped, still granting credit, so that the client never waits for it.
// On a terminal the end of the input never comes (the reader ignores
// it): the terminal stays open, as a person's would.
func (s *server) feed(ss *session, w *os.File) {
	broken := false
	var pending int64
	for {
		p, eof, ok := ss.in.pop(context.Background())
		if !ok {
			w.Close()
			return
		}
		if eof {
			w.Close()
			return
		}
		if !broken {
			if _, err := w.Write(p); err != nil {
				broken = true
				if !errors.Is(err, os.ErrClosed) {
					s.out.send(event{ID: ss.id, StdinError: "writing to the process's stdin: " + err.Error()})
				}
			}
		}
		pending += int64(len(p))
		if pending >= stdinWindow/4 || ss.in.empty() {
			s.out.send(event{ID: ss.id, Credit: pending})
			pending = 0
		}
	}
}

// openPTY allocates a pseudo-terminal of rows x cols (0: 24 x 80) from the
// sandbox's own /dev/ptmx. The master side is non-blocking, so reads
// honour deadlines and end when it is closed.
func openPTY(rows, cols uint16) (master, slave *os.File, err error) {
	fd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open /dev/ptmx: %w", err)
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("unlock the terminal: %w", err)
	}
	// TIOCGPTPEER opens the slave through the master's own devpts
	// instance, with no path to look up in /dev/pts.
	sfd, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TIOCGPTPEER, uintptr(unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC))
	if errno != 0 {
		n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
		if err != nil {
			unix.Close(fd)
			return nil, nil, fmt.Errorf("find the terminal: %w", err)
		}
		s, err := unix.Open("/dev/pts/"+strconv.Itoa(n), unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
		if err != nil {
			unix.Close(fd)
			return nil, nil, fmt.Errorf("open the terminal: %w", err)
		}
		sfd = uintptr(s)
	}
	master = os.NewFile(uintptr(fd), "pty-master")
	slave = os.NewFile(sfd, "pty-slave")
	if rows == 0 {
		rows = 24
	}
	if cols == 0 {
		cols = 80
	}
	if err := setWinsize(master, rows, cols); err != nil {
		master.Close()
		slave.Close()
		return nil, nil, fmt.Errorf("set the terminal size: %w", err)
	}
	return master, slave, nil
}

// setWinsize sets a terminal's size through its master; Fd would switch
// the master back to blocking mode.
func setWinsize(master *os.File, rows, cols uint16) error {
	rc, err := master.SyscallConn()
	if err != nil {
		return err
	}
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		ierr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols})
	}); err != nil {
		return err
	}
	return ierr
}

// rlimitNames are the resources an ExecSpec may limit.
var rlimitNames = map[string]int{
	"as": unix.RLIMIT_AS, "core": unix.RLIMIT_CORE, "cpu": unix.RLIMIT_CPU, "data": unix.RLIMIT_DATA,
	"fsize": unix.RLIMIT_FSIZE, "locks": unix.RLIMIT_LOCKS, "memlock": unix.RLIMIT_MEMLOCK,
	"msgqueue": unix.RLIMIT_MSGQUEUE, "nice": unix.RLIMIT_NICE, "nofile": unix.RLIMIT_NOFILE,
	"nproc": unix.RLIMIT_NPROC, "rss": unix.RLIMIT_RSS, "rtprio": unix.RLIMIT_RTPRIO,
	"rttime": unix.RLIMIT_RTTIME, "sigpending": unix.RLIMIT_SIGPENDING, "stack": unix.RLIMIT_STACK,
}

// parseRlimits checks the limits and renders them as the trampoline's
// arguments, "name=soft:hard".
func parseRlimits(ls []rlimit) ([]string, error) {
	var out []string
	for _, l := range ls {
		if _, ok := rlimitNames[l.Resource]; !ok {
			return nil, fmt.Errorf("unknown resource limit %.40q", l.Resource)
		}
		if l.Soft > l.Hard {
			return nil, fmt.Errorf("resource limit %s: soft limit %d above the hard limit %d", l.Resource, l.Soft, l.Hard)
		}
		out = append(out, fmt.Sprintf("%s=%d:%d", l.Resource, l.Soft, l.Hard))
	}
	return out, nil
}

// ExecRole is the argument with which the portal runs its own binary as
// a trampoline (ExecMain) to start a command with resource limits: limits
// set in the portal would bind the portal itself, and there is no hook
// between fork and exec to set them in the child alone.
const ExecRole = "portal-exec"

// ExecMain is the entry point of `msb portal-exec STATUSFD PATH CRED
// LIMIT... -- ARGV...`: it sets each LIMIT (name=soft:hard) on itself,
// then takes the credentials CRED ("uid:gid:group,group", or "-" to keep
// its own; a trailing "!" keeps the supplementary groups), in that order
// so that the limits may be raised before privileges are dropped, and
// executes PATH with ARGV and its own environment. When that fails it
// writes "ERRNO STAGE" to file descriptor STATUSFD (a pipe the portal
// reads, after the command's own descriptors; it closes on a successful
// exec) and exits with status 127. It never returns.
func ExecMain() {
	fd := 3
	if len(os.Args) > 2 {
		if n, err := strconv.Atoi(os.Args[2]); err == nil && n >= 3 {
			fd = n
		}
	}
	status := os.NewFile(uintptr(fd), "status")
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO {
		status = os.Stderr // not run by a portal: nobody reads it
	}
	fail := func(stage string, err error) {
		fmt.Fprintf(status, "%d %s", int(errnoOf(err)), stage)
		os.Exit(127)
	}
	if len(os.Args) < 3 {
		fail("args", syscall.EINVAL)
	}
	args := os.Args[3:]
	sep := -1
	for i, a := range args {
		if a == "--" {
			sep = i
			break
		}
	}
	if sep < 2 || sep == len(args)-1 {
		fail("args", syscall.EINVAL)
	}
	for _, l := range args[2:sep] {
		name, v, _ := strings.Cut(l, "=")
		soft, hard, _ := strings.Cut(v, ":")
		res, ok := rlimitNames[name]
		s, err1 := strconv.ParseUint(soft, 10, 64)
		h, err2 := strconv.ParseUint(hard, 10, 64)
		if !ok || err1 != nil || err2 != nil {
			fail("setrlimit", syscall.EINVAL)
		}
		if err := unix.Setrlimit(res, &unix.Rlimit{Cur: s, Max: h}); err != nil {
			fail("setrlimit", err)
		}
	}
	// Credentials are per thread in the kernel: they are set on this
	// thread alone, which then executes the command (and with it, the
	// process takes them).
	runtime.LockOSThread()
	if cred := args[1]; cred != "-" {
		keepGroups := strings.HasSuffix(cred, "!")
		f := strings.Split(strings.TrimSuffix(cred, "!"), ":")
		if len(f) != 3 {
			fail("credentials", syscall.EINVAL)
		}
		uid, err1 := strconv.ParseUint(f[0], 10, 32)
		gid, err2 := strconv.ParseUint(f[1], 10, 32)
		if err1 != nil || err2 != nil {
			fail("credentials", syscall.EINVAL)
		}
		if !keepGroups {
			groups := []uint32{}
			for _, g := range strings.Split(f[2], ",") {
				if n, err := strconv.ParseUint(g, 10, 32); err == nil {
					groups = append(groups, uint32(n))
				}
			}
			var ptr unsafe.Pointer
			if len(groups) > 0 {
				ptr = unsafe.Pointer(&groups[0])
			}
			if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(groups)), uintptr(ptr), 0); e != 0 {
				fail("setgroups", e)
			}
		}
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, uintptr(gid), uintptr(gid), uintptr(gid)); e != 0 {
			fail("setgid", e)
		}
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, uintptr(uid), uintptr(uid), uintptr(uid)); e != 0 {
			fail("setuid", e)
		}
	}
	if status != os.Stderr {
		syscall.CloseOnExec(fd)
	}
	fail("exec", syscall.Exec(args[0], args[sep+1:], os.Environ()))
}

// startLimited starts path with argv under limits, through the trampoline,
// and waits until it has executed path. It returns the failure's kind with
// its error.
func (s *server) startLimited(path string, argv, limits []string, attr *syscall.ProcAttr, into *os.File) (int, <-chan syscall.WaitStatus, string, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return 0, nil, failResourceLimit, err
	}
	defer r.Close()
	a := *attr
	a.Files = append(append([]uintptr(nil), attr.Files...), w.Fd())
	sys := *attr.Sys
	a.Sys = &sys
	cred := "-"
	if c := sys.Credential; c != nil {
		// The trampoline switches after it set the limits.
		var groups []string
		for _, g := range c.Groups {
			groups = append(groups, strconv.FormatUint(uint64(g), 10))
		}
		cred = fmt.Sprintf("%d:%d:%s", c.Uid, c.Gid, strings.Join(groups, ","))
		if c.NoSetGroups {
			cred += "!"
		}
		sys.Credential = nil
	}
	switched := cred != "-"
	statusFd := strconv.Itoa(len(a.Files) - 1) // after the command's own
	targv := append(append(append([]string{"msb", ExecRole, statusFd, path, cred}, limits...), "--"), argv...)
	// /proc/self/exe is the portal's own binary, whatever its path.
	pid, exited, err := s.reaper.start("/proc/self/exe", targv, &a, into)
	w.Close()
	if err != nil {
		return 0, nil, startFailure(err, false), err
	}
	r.SetReadDeadline(time.Now().Add(answerGrace))
	msg, err := io.ReadAll(io.LimitReader(r, 128))
	if err != nil || len(msg) > 0 {
		killTree(0, pid)
		<-exited
		errnoText, stage, _ := strings.Cut(string(msg), " ")
		n, _ := strconv.Atoi(errnoText)
		errno := syscall.Errno(n)
		switch {
		case err != nil:
			return 0, nil, failOther, fmt.Errorf("the resource limit trampoline did not report: %w", err)
		case stage == "setrlimit":
			return 0, nil, failResourceLimit, fmt.Errorf("setrlimit: %w", errno)
		case stage == "setgroups" || stage == "setgid" || stage == "setuid":
			return 0, nil, failUserSetup, fmt.Errorf("%s: %w", stage, errno)
		case stage == "exec":
			return 0, nil, startFailure(errno, switched), errno
		}
		return 0, nil, failOther, fmt.Errorf("trampoline %s: %w", stage, errno)
	}
	return pid, exited, "", nil
}

// lookupUser resolves a user as an image names it: "" (the sandbox's
// own), a name or uid, optionally with ":" and a group name or gid, in
// the sandbox's /etc/passwd and /etc/group. It returns nil credentials
// when the user is the portal's own, and the user's home when passwd
// names one.
func lookupUser(spec string) (*syscall.Credential, string, error) {
	if spec == "" {
		return nil, "", nil
	}
	userPart, groupPart, hasGroup := strings.Cut(spec, ":")
	var (
		uid, gid uint32
		home     string
		name     string
		found    bool
	)
	passwd := readColonFile("/etc/passwd")
	if n, err := strconv.ParseUint(userPart, 10, 32); err == nil {
		uid = uint32(n)
		for _, f := range passwd {
			if len(f) >= 6 && f[2] == userPart {
				name, home, found = f[0], f[5], true
				if g, err := strconv.ParseUint(f[3], 10, 32); err == nil {
					gid = uint32(g)
				}
				break
			}
		}
	} else {
		for _, f := range passwd {
			if len(f) >= 6 && f[0] == userPart {
				u, err1 := strconv.ParseUint(f[2], 10, 32)
				g, err2 := strconv.ParseUint(f[3], 10, 32)
				if err1 != nil || err2 != nil {
					return nil, "", fmt.Errorf("bad /etc/passwd entry for %q", userPart)
				}
				uid, gid, name, home, found = uint32(u), uint32(g), f[0], f[5], true
				break
			}
		}
		if !found {
			return nil, "", fmt.Errorf("no such user in the sandbox's /etc/passwd")
		}
	}
	groups := readColonFile("/etc/group")
	if hasGroup {
		if n, err := strconv.ParseUint(groupPart, 10, 32); err == nil {
			gid = uint32(n)
		} else {
			ok := false
			for _, f := range groups {
				if len(f) >= 3 && f[0] == groupPart {
					if g, err := strconv.ParseUint(f[2], 10, 32); err == nil {
						gid, ok = uint32(g), true
					}
					break
				}
			}
			if !ok {
				return nil, "", fmt.Errorf("no such group %q in the sandbox's /etc/group", groupPart)
			}
		}
	}
	var extra []uint32
	if name != "" && !hasGroup {
		for _, f := range groups {
			if len(f) < 4 {
				continue
			}
			for _, m := range strings.Split(f[3], ",") {
				if m == name {
					if g, err := strconv.ParseUint(f[2], 10, 32); err == nil && uint32(g) != gid {
						extra = append(extra, uint32(g))
					}
				}
			}
		}
	}
	if uid == uint32(os.Getuid()) && gid == uint32(os.Getgid()) && len(extra) == 0 {
		return nil, home, nil
	}
	// Without root's capabilities the portal cannot set groups; the
	// switch then fails as it must (user_setup_failed).
	return &syscall.Credential{Uid: uid, Gid: gid, Groups: extra, NoSetGroups: os.Getuid() != 0}, home, nil
}

// readColonFile reads a passwd-like file as lines of fields; a missing
// file is empty.
func readColonFile(path string) [][]string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out [][]string
	sc := bufio.NewScanner(io.LimitReader(f, 16<<20))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		out = append(out, strings.Split(line, ":"))
	}
	return out
}
