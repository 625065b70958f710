package linux

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/msb-dev/msb/sandbox/linux/boot"
	"golang.org/x/sys/unix"
)

// The spawner is a small process of msb's own binary, started once by the
// launcher, that clones every sandbox's init. A clone into a new user
// namespace cannot share the cloning process's memory until the exec (the
// parent must write the child's id maps meanwhile), so it copies the
// cloning process's page tables and makes every page it has copy-on-write
// until the child's exec: from the server, with its heap, a few
// milliseconds of CPU per start that grow with the server, and copies of
// all the server's descriptors in the child until its exec. The spawner
// holds almost nothing: its clones cost a fraction of that, and the child
// holds only the spawner's descriptors (all close-on-exec) before its exec.
//
// The spawner's one thread that clones is prepared once: the sandboxes'
// bounding set, a full inheritable set (so that the root init keeps every
// capability for its set-up), no_new_privs, no supplementary groups. For
// each init it joins the sandbox's v1 cgroups (writing "0" to their tasks
// files, which the server opens and sends) and a network namespace made
// ahead if the server sends one, clones, and goes back to its own.
//
// Protocol, over a SOCK_SEQPACKET socket pair, one request at a time: the
// server sends 'S' and a JSON spawnRequest with its descriptors
// (SCM_RIGHTS), and reads back 'P' and a JSON spawnReply with the init's
// pidfd. The init is the spawner's child: the spawner reaps it when the
// server, which watches its pidfd, says it has exited ('R' and its pid), so
// that its pid is not reused before. The spawner ends when the server
// closes its end, and dies with the server's thread that started it
// (Pdeathsig); inits it leaves are reparented to the host's init, which
// reaps them.
const (
	spawnerRole = "spawner"
	spawnerEnv  = "_MSB_SPAWNER" // <number of home tasks files>,<bounding set, hex>
)

// Descriptors of the spawner process: its end of the socket, the sealed
// binary, and from spawnerHomeFD up the tasks files of the server's own
// v1 cgroups, where its thread returns after every clone.
const (
	spawnerSockFD = 3
	spawnerExeFD  = 4
	spawnerHomeFD = 5
)

// maxSpawnFDs is how many descriptors a request carries at most: the
// kernel passes up to 253 in one message (SCM_MAX_FD).
const maxSpawnFDs = 250

// spawnRequest asks for one init. Its descriptors come in this order: the
// tasks files, the network namespace (NetNS), the cgroup directory
// (CgroupFD), then the distinct files of Files.
type spawnRequest struct {
	Env         []string
	Dir         string
	Cloneflags  uintptr
	UidMappings []syscall.SysProcIDMap `json:",omitempty"`
	GidMappings []syscall.SysProcIDMap `json:",omitempty"`
	SetGroups   bool                   `json:",omitempty"`
	Credential  *syscall.Credential    `json:",omitempty"`
	Tasks       int                    `json:",omitempty"`
	NetNS       bool                   `json:",omitempty"`
	CgroupFD    bool                   `json:",omitempty"`
	// Files maps the child's descriptor i to the Files[i]th descriptor
	// after the ones above; -1 leaves it closed.
	Files []int
}

// spawnReply is the spawner's answer: the init's pid (its pidfd travels
// with the reply), or why there is none.
type spawnReply struct {
	Pid   int           `json:",omitempty"`
	Errno syscall.Errno `json:",omitempty"`
	Err   string        `json:",omitempty"`
}

// errSpawnerGone is the error of a request that a spawner, which has
// exited, never received: it may be sent to another.
var errSpawnerGone = errors.New("the spawner process has exited")

// errSpawnerLost is the error of a request the spawner received but did
// not answer: an init may have been started for it, and runs untracked.
var errSpawnerLost = errors.New("the spawner process did not answer")

// spawnTimeout is how long the spawner may take to answer; one that takes
// longer is stuck (a clone never takes a fraction of that) and is killed.
const spawnTimeout = 30 * time.Second

// spawner is the server's handle on the spawner process.
type spawner struct {
	mu   sync.Mutex // one request and its reply at a time
	sock int        // the server's end of the socket pair; -1 once closed
	proc *os.Process
	done chan struct{} // closed once the spawner has exited
}

// startSpawner starts the spawner, which executes exe (the sealed portal
// binary) as every init, with home the tasks files of the server's own v1
// cgroups and caps the sandboxes' bounding set. The spawner itself is the
// server's own binary (which plays it through sandbox/engine.Reexec, or a
// test's TestMain): the portal binary may be a smaller one that has no
// spawner in it.
func startSpawner(exe *os.File, home []*os.File, caps uint64) (*spawner, error) {
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("the spawner's socket: %w", err)
	}
	theirs := os.NewFile(uintptr(pair[1]), "spawner")
	defer theirs.Close()
	null, err := os.Open(os.DevNull)
	if err != nil {
		unix.Close(pair[0])
		return nil, err
	}
	defer null.Close()
	files := append([]*os.File{null, null, os.Stderr, theirs, exe}, home...)
	sp := &spawner{sock: pair[0], done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		// The spawner dies with this thread (Pdeathsig), which lives
		// until the spawner has exited: locked, it ends with the
		// goroutine.
		runtime.LockOSThread()
		p, err := os.StartProcess("/proc/self/exe", []string{boot.Argv0, spawnerRole}, &os.ProcAttr{
			Dir:   "/",
			Env:   []string{spawnerEnv + "=" + strconv.Itoa(len(home)) + "," + strconv.FormatUint(caps, 16)},
			Files: files,
			Sys:   &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL},
		})
		if err == nil {
			sp.proc = p
		}
		started <- err
		if err != nil {
			return
		}
		p.Wait()
		close(sp.done)
	}()
	if err := <-started; err != nil {
		unix.Close(pair[0])
		return nil, fmt.Errorf("starting the spawner: %w", err)
	}
	return sp, nil
}

// close ends the spawner and waits until it has exited.
func (sp *spawner) close() {
	sp.mu.Lock()
	if sp.sock >= 0 {
		unix.Close(sp.sock)
		sp.sock = -1
	}
	sp.mu.Unlock()
	<-sp.done
}

// spawn asks the spawner for an init with attr (attr.Sys's clone flags, id
// maps, credential and cgroup), born in the cgroups of tasks and in
// network namespace netns (nil: a new one).
func (sp *spawner) spawn(tasks []*os.File, netns *os.File, attr *os.ProcAttr) (*initProc, error) {
	req := spawnRequest{Env: attr.Env, Dir: attr.Dir, Cloneflags: attr.Sys.Cloneflags,
		UidMappings: attr.Sys.UidMappings, GidMappings: attr.Sys.GidMappings,
		SetGroups: attr.Sys.GidMappingsEnableSetgroups, Credential: attr.Sys.Credential, Tasks: len(tasks)}
	var fds []int
	for _, f := range tasks {
		fds = append(fds, int(f.Fd()))
	}
	if netns != nil {
		req.NetNS = true
		fds = append(fds, int(netns.Fd()))
	}
	if attr.Sys.UseCgroupFD {
		req.CgroupFD = true
		fds = append(fds, attr.Sys.CgroupFD)
	}
	base := len(fds)
	for _, f := range attr.Files {
		if f == nil {
			req.Files = append(req.Files, -1)
			continue
		}
		req.Files = append(req.Files, len(fds)-base)
		fds = append(fds, int(f.Fd()))
	}
	if len(fds) > maxSpawnFDs {
		return nil, fmt.Errorf("%d descriptors for one init is too many: at most %d", len(fds), maxSpawnFDs)
	}
	head, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}

	rep, pidfd, err := sp.exchange(append([]byte{'S'}, head...), fds)
	runtime.KeepAlive(tasks)
	runtime.KeepAlive(netns)
	runtime.KeepAlive(attr)
	if err != nil {
		return nil, err
	}
	if pidfd < 0 {
		if rep.Errno != 0 {
			return nil, fmt.Errorf("clone and exec: %w", rep.Errno)
		}
		return nil, errors.New(rep.Err)
	}
	return newInitProc(rep.Pid, pidfd, sp.reap)
}

// exchange sends the spawner a request with its descriptors and returns
// its answer, and the init's pidfd if it has started one (else -1).
func (sp *spawner) exchange(msg []byte, fds []int) (rep spawnReply, pidfd int, err error) {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.sock < 0 {
		return rep, -1, errSpawnerGone
	}
	var rights []byte
	if len(fds) > 0 {
		rights = unix.UnixRights(fds...)
	}
	if err := sendMsg(sp.sock, msg, rights); err != nil {
		return rep, -1, sp.gone(err)
	}
	// Received: from here on, a failure may leave an init behind.
	lost := func(err error) (spawnReply, int, error) {
		return rep, -1, fmt.Errorf("%w: %w", errSpawnerLost, err)
	}
	if err := waitReadable(sp.sock, spawnTimeout); err != nil {
		sp.proc.Kill() // replaced at the next start
		return lost(err)
	}
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4))
	n, got, err := boot.RecvMsg(sp.sock, buf, oob)
	if err == nil && n == 0 {
		err = io.EOF
	}
	if err != nil {
		return lost(err)
	}
	if buf[0] != 'P' || json.Unmarshal(buf[1:n], &rep) != nil || (rep.Pid > 0) != (len(got) == 1) {
		boot.CloseFDs(got)
		return lost(fmt.Errorf("it answered %q with %d descriptors", buf[:n], len(got)))
	}
	if rep.Pid <= 0 {
		return rep, -1, nil
	}
	return rep, got[0], nil
}

// waitReadable waits until fd can be read (a pidfd: its process has
// exited), at most timeout.
func waitReadable(fd int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("not readable in %v", timeout)
		}
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, int(left.Milliseconds())+1)
		if n > 0 {
			return nil
		}
		if err != nil && err != unix.EINTR {
			return err
		}
	}
}

// gone is the error of a failed exchange with the spawner: errSpawnerGone
// if it has exited.
func (sp *spawner) gone(err error) error {
	select {
	case <-sp.done:
		return fmt.Errorf("%w: %w", errSpawnerGone, err)
	case <-time.After(time.Second):
		return fmt.Errorf("the spawner: %w", err)
	}
}

// reap lets the spawner reap its child pid, which has exited.
func (sp *spawner) reap(pid int) {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.sock >= 0 {
		sendMsg(sp.sock, []byte("R"+strconv.Itoa(pid)), nil)
	}
}

func sendMsg(fd int, p, oob []byte) error {
	for {
		err := unix.Sendmsg(fd, p, oob, nil, unix.MSG_NOSIGNAL)
		if err != unix.EINTR {
			return err
		}
	}
}

// initProc is a sandbox's init, a child of the spawner, known by its
// pidfd: unlike its pid, the pidfd never names another process.
type initProc struct {
	Pid   int
	pidfd *os.File // non-blocking, in the runtime's poller
	reap  func(pid int)
}

func newInitProc(pid, pidfd int, reap func(int)) (*initProc, error) {
	if err := unix.SetNonblock(pidfd, true); err != nil {
		unix.PidfdSendSignal(pidfd, unix.SIGKILL, nil, 0)
		unix.Close(pidfd)
		reap(pid) // the spawner reaps it once it has exited
		return nil, fmt.Errorf("the init's pidfd: %w", err)
	}
	return &initProc{Pid: pid, pidfd: os.NewFile(uintptr(pidfd), "pidfd:"+strconv.Itoa(pid)), reap: reap}, nil
}

// Kill sends the init SIGKILL; after release it does nothing.
func (p *initProc) Kill() error {
	rc, err := p.pidfd.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.PidfdSendSignal(int(fd), unix.SIGKILL, nil, 0) }); err != nil {
		return err
	}
	return serr
}

// Wait returns once the init has exited. It stays the spawner's zombie,
// its pid not reused, until release.
func (p *initProc) Wait() {
	rc, err := p.pidfd.SyscallConn()
	if err != nil {
		return // released
	}
	if err := rc.Read(pidfdExited); err != nil { // not in the poller: wait blocking
		rc.Control(func(fd uintptr) {
			for {
				n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, -1)
				if n > 0 || (err != nil && err != unix.EINTR) {
					return
				}
			}
		})
	}
}

// exited reports whether the init has exited (a zombie has, and a
// signal to it would still succeed).
func (p *initProc) exited() bool {
	rc, err := p.pidfd.SyscallConn()
	if err != nil {
		return true // released
	}
	gone := true
	rc.Control(func(fd uintptr) { gone = pidfdExited(fd) })
	return gone
}

// pidfdExited reports, without waiting, whether the process of pidfd fd
// has exited: a pidfd polls readable then.
func pidfdExited(fd uintptr) bool {
	n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 0)
	return err == nil && n > 0
}

// alive reports whether the init has not exited: while it runs, its pid
// names it and nothing else.
func (p *initProc) alive() bool {
	rc, err := p.pidfd.SyscallConn()
	if err != nil {
		return false
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.PidfdSendSignal(int(fd), 0, nil, 0) }); err != nil {
		return false
	}
	return serr == nil
}

// errInitExited is the error of a namespace asked of an init that has
// exited.
var errInitExited = errors.New("the sandbox's init has exited")

// openNS opens the init's namespace of kind ("net", "uts"...) while the
// init runs: opened before the check of its pidfd, the namespace is the
// init's, not that of a process that got its pid after it was reaped.
func (p *initProc) openNS(kind string) (*os.File, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(p.Pid) + "/ns/" + kind)
	if err != nil {
		return nil, err
	}
	if !p.alive() {
		f.Close()
		return nil, errInitExited
	}
	return f, nil
}

// release lets the spawner reap the init once Wait has returned; Kill does
// nothing afterwards. An init whose spawner died is reaped by whichever
// process it was given to: this one too, if it is a subreaper or PID 1.
func (p *initProc) release() {
	if rc, err := p.pidfd.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) {
			var info unix.Siginfo
			unix.Waitid(unix.P_PIDFD, int(fd), &info, unix.WEXITED|unix.WNOHANG, nil)
		})
	}
	p.pidfd.Close()
	p.reap(p.Pid)
}

// MaybeSpawner plays the spawner when the binary was started as one (see
// startSpawner), and never returns then. Call it before anything else in
// main, like boot.Reexec.
func MaybeSpawner() {
	if len(os.Args) != 2 || os.Args[1] != spawnerRole {
		return
	}
	v, ok := os.LookupEnv(spawnerEnv)
	if !ok {
		return
	}
	if err := serveSpawner(v); err != nil {
		fmt.Fprintf(os.Stderr, "msb spawner: %v\n", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// spawnerProc is the spawner's own state.
type spawnerProc struct {
	exePath string
	home    []int
	hostNet int
	pending map[int]bool // exited children the server let go, not reaped yet
}

func serveSpawner(v string) error {
	runtime.LockOSThread() // never unlocked: this thread clones every init
	nh, capsHex, _ := strings.Cut(v, ",")
	nHome, err := strconv.Atoi(nh)
	if err != nil {
		return fmt.Errorf("%s=%q", spawnerEnv, v)
	}
	caps, err := strconv.ParseUint(capsHex, 16, 64)
	if err != nil {
		return fmt.Errorf("%s=%q", spawnerEnv, v)
	}
	unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(&[]byte("msb-spawner\x00")[0])), 0, 0, 0)
	s := &spawnerProc{pending: map[int]bool{}}
	// Whatever else the server was given by its own parent without
	// close-on-exec must not reach an init.
	if err := unix.CloseRange(spawnerSockFD, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		for fd := spawnerSockFD; fd < spawnerHomeFD+nHome; fd++ {
			syscall.CloseOnExec(fd)
		}
	}
	for i := range nHome {
		s.home = append(s.home, spawnerHomeFD+i)
	}
	exe, err := unix.FcntlInt(spawnerExeFD, unix.F_DUPFD_CLOEXEC, exeFDMin)
	if err != nil {
		return fmt.Errorf("the binary: %w", err)
	}
	unix.Close(spawnerExeFD)
	s.exePath = "/proc/self/fd/" + strconv.Itoa(exe)
	if err := prepareSpawnerThread(caps); err != nil {
		return fmt.Errorf("preparing the spawner thread: %w", err)
	}
	if s.hostNet, err = unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
		return fmt.Errorf("its network namespace: %w", err)
	}
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(4*maxSpawnFDs))
	for {
		n, fds, err := boot.RecvMsg(spawnerSockFD, buf, oob)
		if err != nil {
			return err
		}
		if n == 0 {
			return nil // the server closed its end
		}
		switch buf[0] {
		case 'R':
			boot.CloseFDs(fds)
			if pid, err := strconv.Atoi(string(buf[1:n])); err == nil && pid > 0 {
				s.pending[pid] = true
			}
		case 'S':
			var req spawnRequest
			if err := json.Unmarshal(buf[1:n], &req); err != nil {
				boot.CloseFDs(fds)
				return fmt.Errorf("a request: %w", err)
			}
			pidfd, rep, err := s.spawn(req, fds)
			boot.CloseFDs(fds)
			out, _ := json.Marshal(rep)
			var rights []byte
			if pidfd >= 0 {
				rights = unix.UnixRights(pidfd)
			}
			serr := sendMsg(spawnerSockFD, append([]byte{'P'}, out...), rights)
			if pidfd >= 0 {
				unix.Close(pidfd)
			}
			if err != nil {
				return err // its thread could not go home: it must clone nothing more
			}
			if serr != nil {
				return serr
			}
		default:
			boot.CloseFDs(fds)
		}
		s.reapPending()
	}
}

// reapPending reaps the children the server let go that have exited.
func (s *spawnerProc) reapPending() {
	for pid := range s.pending {
		var st unix.WaitStatus
		got, err := unix.Wait4(pid, &st, unix.WNOHANG, nil)
		if got == pid || (err != nil && err != unix.EINTR) {
			delete(s.pending, pid)
		}
	}
}

// spawn clones one init as req asks. It returns the init's pidfd and the
// reply for the server; an error means the thread could not return to its
// own cgroups or network namespace after the clone.
func (s *spawnerProc) spawn(req spawnRequest, fds []int) (pidfd int, rep spawnReply, err error) {
	fail := func(e error) (int, spawnReply, error) {
		rep := spawnReply{Err: e.Error()}
		errors.As(e, &rep.Errno)
		return -1, rep, nil
	}
	i := req.Tasks
	if req.NetNS {
		i++
	}
	if req.CgroupFD {
		i++
	}
	if i > len(fds) {
		return fail(fmt.Errorf("a request for %d descriptors came with %d", i, len(fds)))
	}
	tasks, rest := fds[:req.Tasks], fds[req.Tasks:]
	sys := &syscall.SysProcAttr{Cloneflags: req.Cloneflags, UidMappings: req.UidMappings, GidMappings: req.GidMappings,
		GidMappingsEnableSetgroups: req.SetGroups, Credential: req.Credential}
	netns := -1
	if req.NetNS {
		netns, rest = rest[0], rest[1:]
	}
	if req.CgroupFD {
		sys.UseCgroupFD, sys.CgroupFD, rest = true, rest[0], rest[1:]
	}
	files := make([]uintptr, len(req.Files))
	for j, k := range req.Files {
		switch {
		case k < 0:
			files[j] = ^uintptr(0)
		case k < len(rest):
			files[j] = uintptr(rest[k])
		default:
			return fail(fmt.Errorf("descriptor %d of %d", k, len(rest)))
		}
	}
	inNet := netns >= 0 && unix.Setns(netns, unix.CLONE_NEWNET) == nil
	if !inNet {
		sys.Cloneflags |= unix.CLONE_NEWNET
	}
	pidfd = -1
	if err := writeZeroFDs(tasks); err != nil {
		rep = spawnReply{Err: fmt.Sprintf("entering the sandbox's cgroups: %v", err)}
	} else {
		sys.PidFD = &pidfd
		// Under heavy process churn, executing /proc/self/fd/N has been
		// seen to fail now and then with EACCES while N was the sealed
		// memfd, intact, and to succeed at once when tried again (Linux
		// 6.18, a thousand sandboxes starting); a child that failed to
		// execute has exited and left nothing, so it is tried again.
		for try := 1; ; try++ {
			pid, err := syscall.ForkExec(s.exePath, []string{boot.Argv0, boot.Role},
				&syscall.ProcAttr{Dir: req.Dir, Env: req.Env, Files: files, Sys: sys})
			if err == nil {
				rep.Pid = pid
				break
			}
			if try == 3 || !errors.Is(err, unix.EACCES) {
				_, rep, _ = fail(err)
				break
			}
		}
	}
	err = writeZeroFDs(s.home)
	if inNet {
		if nerr := unix.Setns(s.hostNet, unix.CLONE_NEWNET); nerr != nil && err == nil {
			err = fmt.Errorf("network namespace: %w", nerr)
		}
	}
	if err != nil {
		if pidfd >= 0 {
			unix.PidfdSendSignal(pidfd, unix.SIGKILL, nil, 0)
			unix.Close(pidfd)
			s.pending[rep.Pid] = true
		}
		return -1, spawnReply{Err: fmt.Sprintf("the spawner could not leave a sandbox's cgroups or network: %v", err)}, err
	}
	return pidfd, rep, nil
}

// writeZeroFDs writes "0", the writing thread, into each tasks file.
func writeZeroFDs(fds []int) error {
	for _, fd := range fds {
		if _, err := unix.Write(fd, []byte("0")); err != nil {
			return err
		}
	}
	return nil
}
