package linux

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/sandbox/linux/boot"
	"github.com/msb-dev/msb/sandbox/linux/spawn"
)

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

// startSpawner starts the spawner (package spawn) from exe, the sealed
// portal binary, which it also executes as every init, with home the tasks
// files of the server's own v1 cgroups and caps the sandboxes' bounding
// set.
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
		p, err := os.StartProcess("/proc/self/fd/"+strconv.Itoa(int(exe.Fd())), []string{boot.Argv0, spawn.Role}, &os.ProcAttr{
			Dir:   "/",
			Env:   []string{spawn.Env + "=" + strconv.Itoa(len(home)) + "," + strconv.FormatUint(caps, 16)},
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
	req := spawn.Request{Env: attr.Env, Dir: attr.Dir, Cloneflags: attr.Sys.Cloneflags,
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
	if len(fds) > spawn.MaxFDs {
		return nil, fmt.Errorf("%d descriptors for one init is too many: at most %d", len(fds), spawn.MaxFDs)
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
func (sp *spawner) exchange(msg []byte, fds []int) (rep spawn.Reply, pidfd int, err error) {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.sock < 0 {
		return rep, -1, errSpawnerGone
	}
	var rights []byte
	if len(fds) > 0 {
		rights = unix.UnixRights(fds...)
	}
	if err := boot.SendMsg(sp.sock, msg, rights); err != nil {
		return rep, -1, sp.gone(err)
	}
	// Received: from here on, a failure may leave an init behind.
	lost := func(err error) (spawn.Reply, int, error) {
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
		boot.SendMsg(sp.sock, []byte("R"+strconv.Itoa(pid)), nil)
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
