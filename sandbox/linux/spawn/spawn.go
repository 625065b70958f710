package spawn

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/sandbox/linux/boot"
)

// The spawner's command line (after argv[0]) and environment.
const (
	Role = "spawner"
	Env  = "_MSB_SPAWNER" // <number of home tasks files>,<bounding set, hex>
)

// Descriptors of the spawner process: its end of the socket, the sealed
// binary, and from homeFD up the tasks files of the server's own
// v1 cgroups, where its thread returns after every clone.
const (
	sockFD = 3
	exeFD  = 4
	homeFD = 5
)

// MaxFDs is how many descriptors a request carries at most: the
// kernel passes up to 253 in one message (SCM_MAX_FD).
const MaxFDs = 250

// Request asks for one init. Its descriptors come in this order: the
// tasks files, the network namespace (NetNS), the cgroup directory
// (CgroupFD), then the distinct files of Files.
type Request struct {
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

// Reply is the spawner's answer: the init's pid (its pidfd travels
// with the reply), or why there is none.
type Reply struct {
	Pid   int           `json:",omitempty"`
	Errno syscall.Errno `json:",omitempty"`
	Err   string        `json:",omitempty"`
}

// maybeServe plays the spawner when the binary was started as one (by the
// Linux engine's launcher), and never returns then (see Reexec).
func maybeServe() {
	if len(os.Args) != 2 || os.Args[1] != Role {
		return
	}
	v, ok := os.LookupEnv(Env)
	if !ok {
		return
	}
	if err := serveSpawner(v); err != nil {
		fmt.Fprintf(os.Stderr, "msb spawner: %v\n", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// Reexec plays every role the Linux engine runs the portal binary in, and
// never returns when it does: the spawner (maybeServe), and inside every
// sandbox its init, its portal and the trampoline of its commands
// (boot.Reexec). args are the process's arguments and pid its pid. Call it
// first thing in main of the portal binary (or through
// sandbox/engine.Reexec in msb).
func Reexec(args []string, pid int) {
	maybeServe()
	boot.Reexec(args, pid)
}

// spawnerProc is the spawner's own state.
type spawnerProc struct {
	exePath string
	caps    uint64 // the sandboxes' bounding set
	lastCap int    // the kernel's highest capability
	home    []int
	hostNet int
	pending map[int]bool // exited children the server let go, not reaped yet
}

func serveSpawner(v string) error {
	runtime.LockOSThread() // never unlocked: this thread clones every init
	nh, capsHex, _ := strings.Cut(v, ",")
	nHome, err := strconv.Atoi(nh)
	if err != nil {
		return fmt.Errorf("%s=%q", Env, v)
	}
	caps, err := strconv.ParseUint(capsHex, 16, 64)
	if err != nil {
		return fmt.Errorf("%s=%q", Env, v)
	}
	unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(&[]byte("msb-spawner\x00")[0])), 0, 0, 0)
	s := &spawnerProc{caps: caps, lastCap: lastCap(), pending: map[int]bool{}}
	// Whatever else the server was given by its own parent without
	// close-on-exec must not reach an init.
	if err := unix.CloseRange(sockFD, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		for fd := sockFD; fd < homeFD+nHome; fd++ {
			syscall.CloseOnExec(fd)
		}
	}
	for i := range nHome {
		s.home = append(s.home, homeFD+i)
	}
	exe, err := unix.FcntlInt(exeFD, unix.F_DUPFD_CLOEXEC, ExeFDMin)
	if err != nil {
		return fmt.Errorf("the binary: %w", err)
	}
	unix.Close(exeFD)
	s.exePath = "/proc/self/fd/" + strconv.Itoa(exe)
	if err := prepareSpawnerThread(caps); err != nil {
		return fmt.Errorf("preparing the spawner thread: %w", err)
	}
	if s.hostNet, err = unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
		return fmt.Errorf("its network namespace: %w", err)
	}
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(4*MaxFDs))
	for {
		n, fds, err := boot.RecvMsg(sockFD, buf, oob)
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
			var req Request
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
			serr := boot.SendMsg(sockFD, append([]byte{'P'}, out...), rights)
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
func (s *spawnerProc) spawn(req Request, fds []int) (pidfd int, rep Reply, err error) {
	fail := func(e error) (int, Reply, error) {
		rep := Reply{Err: e.Error()}
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
		rep = Reply{Err: fmt.Sprintf("entering the sandbox's cgroups: %v", err)}
	} else {
		// Under heavy process churn, executing /proc/self/fd/N has been
		// seen to fail now and then with EACCES while N was the sealed
		// memfd, intact, and to succeed at once when tried again (Linux
		// 6.18, a thousand sandboxes starting); a child that failed to
		// execute has exited and left nothing, so it is tried again.
		for try := 1; ; try++ {
			pid, err := s.clone(req, sys, files, &pidfd)
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
		return -1, Reply{Err: fmt.Sprintf("the spawner could not leave a sandbox's cgroups or network: %v", err)}, err
	}
	return pidfd, rep, nil
}

// cloneSpec is one clone of an init: the clone flags (namespaces), the
// descriptors the child gets as 0, 1, ... (^uintptr(0): none), the cgroup
// it is born in (cgroup v2; -1: its parent's), the user and group it
// takes (nil: the spawner's; the spawner's thread has no supplementary
// groups, and the child none either); in a new user namespace, its id maps
// and whether it may set its groups, and the bounding set it keeps there,
// of the kernel's capabilities up to lastCap.
type cloneSpec struct {
	path       string
	argv, env  []string
	dir        string
	flags      uintptr
	files      []uintptr
	cgroupFD   int
	cred       *syscall.Credential
	uids, gids []syscall.SysProcIDMap
	setgroups  bool
	bounding   uint64
	lastCap    int
}

// clone starts one init, with cloneInit where there is one, else with
// Go's fork and exec; its pidfd goes to *pidfd.
func (s *spawnerProc) clone(req Request, sys *syscall.SysProcAttr, files []uintptr, pidfd *int) (int, error) {
	argv := []string{boot.Argv0, boot.InitRole}
	if !haveCloneExec {
		sys.PidFD = pidfd
		return syscall.ForkExec(s.exePath, argv, &syscall.ProcAttr{Dir: req.Dir, Env: req.Env, Files: files, Sys: sys})
	}
	cgroup := -1
	if sys.UseCgroupFD {
		cgroup = sys.CgroupFD
	}
	pid, fd, err := cloneInit(cloneSpec{path: s.exePath, argv: argv, env: req.Env, dir: req.Dir,
		flags: sys.Cloneflags, files: files, cgroupFD: cgroup, cred: req.Credential,
		uids: req.UidMappings, gids: req.GidMappings, setgroups: req.SetGroups, bounding: s.caps, lastCap: s.lastCap})
	if err != nil {
		return -1, err
	}
	*pidfd = fd
	return pid, nil
}

// lastCap returns the kernel's highest capability: the last one its
// bounding set has a bit for.
func lastCap() int {
	c := 0
	for ; c < 63; c++ {
		if _, _, e := syscall.RawSyscall(unix.SYS_PRCTL, unix.PR_CAPBSET_READ, uintptr(c+1), 0); e == unix.EINVAL {
			break
		}
	}
	return c
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

// prepareSpawnerThread gives the calling thread a full inheritable set,
// then drops from its bounding set every capability not in keep, sets
// no_new_privs and clears its supplementary groups.
func prepareSpawnerThread(keep uint64) error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return err
	}
	for i := range data {
		data[i].Inheritable = data[i].Permitted
	}
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capset: %w", err)
	}
	for c := 0; c < 64; c++ {
		if keep&(1<<c) != 0 {
			continue
		}
		if _, _, e := syscall.RawSyscall(unix.SYS_PRCTL, unix.PR_CAPBSET_DROP, uintptr(c), 0); e == unix.EINVAL {
			break // past the kernel's last capability
		} else if e != 0 {
			return fmt.Errorf("dropping capability %d from the bounding set: %w", c, e)
		}
	}
	if _, _, e := syscall.RawSyscall(unix.SYS_PRCTL, unix.PR_SET_NO_NEW_PRIVS, 1, 0); e != 0 {
		return fmt.Errorf("no_new_privs: %w", e)
	}
	// No supplementary groups: the server's must not come along, and the
	// init of a sandbox whose user has none need not clear them.
	if _, _, e := syscall.RawSyscall(unix.SYS_SETGROUPS, 0, 0, 0); e != 0 {
		return fmt.Errorf("setgroups: %w", e)
	}
	return nil
}

// ExeFDMin is the lowest descriptor the memfd may have: above any the init
// is handed (the clone moves those to 0..n-1 before the exec, which
// resolves /proc/self/fd/N), and out of the way of most others.
const ExeFDMin = 1000
