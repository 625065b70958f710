//go:build amd64

package spawn

import (
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"unsafe"

	"github.com/msb-dev/msb/sandbox/linux/boot"
	"golang.org/x/sys/unix"
)

// The spawner clones an init with clone3 and CLONE_VM|CLONE_VFORK, as Go's
// own fork and exec does, but also into a new user namespace, where Go's
// copies the spawner's whole address space (so that the parent can write
// the child's id maps while the child waits): the page tables copied, every
// page the spawner then writes faulted and copied, and all of it torn down
// at the child's exec, most of the CPU a spawn took. Here the child runs a
// list of system calls the spawner prepared (cloneExec, in assembly: it
// runs no Go code, on a stack of its own) and executes the init. Into a
// new user namespace, it first waits on a pipe while another goroutine of
// the spawner writes its id maps (the cloning thread is blocked until the
// exec, in the runtime's syscall state, its processor handed over, so that
// nothing of the runtime waits for it and the other goroutine can run),
// then takes the namespace's root, so that the init starts as root there,
// as with Go's fork and exec.
//
// A new user namespace also starts with a full bounding set and an empty
// inheritable set, whatever the cloning thread's: the child sets them to
// the sandbox's and to a full one, as the cloning thread has them for a
// clone without one, so that the init, root of its namespace, keeps every
// capability for its set-up and no process after it can get more than
// the sandbox's.

// haveCloneExec says whether cloneExec exists on this architecture.
const haveCloneExec = true

// cloneExec is in clone_amd64.s.
func cloneExec(args *cloneArgs, size uintptr, steps, end uintptr, st *childState) (pid, errno uintptr)

// cloneArgs is the kernel's struct clone_args (clone3(2)).
type cloneArgs struct {
	flags, pidfd, childTID, parentTID, exitSignal, stack, stackSize, tls, setTID, setTIDSize, cgroup uint64
}

// step is one system call of the child: its number, its arguments, and
// its flags.
type step struct {
	nr, a1, a2, a3, a4, a5, a6 uintptr
	flags                      uintptr
}

// Flags of a step: the child ignores its failure (mayFail), or it must
// return 1 (wantOne: a read or write of one byte).
const (
	mayFail = 1
	wantOne = 2
)

// childState is the memory of one clone that the kernel and the child
// write, handed to cloneExec (so that it is on the heap, where nothing
// moves): a failed step's error and address (written by the child, at
// offsets 0 and 8), the init's pidfd and pid (by the kernel), and the
// child's stack, which only the kernel could use: the child makes system
// calls, and gets no signal until its handlers are the default ones.
type childState struct {
	errno, at  uintptr
	pidfd, tid int32
	stack      [16 << 10]byte
}

// The layout cloneExec (clone_amd64.s) reads and writes.
var (
	_ [0]struct{} = [unsafe.Sizeof(step{}) - 64]struct{}{}
	_ [0]struct{} = [unsafe.Offsetof(step{}.flags) - 56]struct{}{}
	_ [0]struct{} = [unsafe.Offsetof(childState{}.at) - 8]struct{}{}
)

// childPlan is the child's steps, what each does (for an error), and what
// they point to (held until the clone returns).
type childPlan struct {
	steps []step
	what  []string
	held  []any
}

func (p *childPlan) add(what string, flags uintptr, nr uintptr, args ...uintptr) {
	var a [6]uintptr
	copy(a[:], args)
	p.steps = append(p.steps, step{nr, a[0], a[1], a[2], a[3], a[4], a[5], flags})
	p.what = append(p.what, what)
}

// hold keeps v (a pointer a step passes) alive until the clone returns.
func (p *childPlan) hold(v any) { p.held = append(p.held, v) }

// cloneInit clones and executes the init as c says, and returns its pid
// and pidfd. It blocks every signal of its thread across the clone, which
// it keeps to itself meanwhile.
func cloneInit(c cloneSpec) (pid, pidfd int, err error) {
	if c.cred != nil && (len(c.cred.Groups) > 0 || c.cred.NoSetGroups) {
		return -1, -1, errors.New("cloneInit sets no supplementary groups")
	}
	exe := -1 // the descriptor executed, if any
	if n, ok := strings.CutPrefix(c.path, "/proc/self/fd/"); ok {
		if exe, err = strconv.Atoi(n); err != nil {
			exe = -1
		} else if exe < len(c.files) {
			return -1, -1, fmt.Errorf("executing descriptor %d, which the child's descriptor %d replaces", exe, exe)
		}
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	path, err := syscall.BytePtrFromString(c.path)
	if err != nil {
		return -1, -1, err
	}
	argv, err := syscall.SlicePtrFromStrings(c.argv)
	if err != nil {
		return -1, -1, err
	}
	env, err := syscall.SlicePtrFromStrings(c.env)
	if err != nil {
		return -1, -1, err
	}
	var dir *byte
	if c.dir != "" {
		if dir, err = syscall.BytePtrFromString(c.dir); err != nil {
			return -1, -1, err
		}
	}
	p := &childPlan{}
	p.hold(path)
	p.hold(argv)
	p.hold(env)
	p.hold(dir)

	// No signal handler of the spawner's may run in the child, which has
	// the spawner's memory but is not one of its threads: every signal is
	// blocked across the clone, and the child sets all handlers to the
	// default before it unblocks them (its own copies: no CLONE_SIGHAND),
	// those of signals the spawner ignores too (Go's fork and exec leaves
	// those ignored): an init starts with every signal's default.
	dfl := new([4]uint64) // struct sigaction of SIG_DFL, no flags, no mask
	p.hold(dfl)
	for sig := 1; sig <= 64; sig++ {
		if sig != int(unix.SIGKILL) && sig != int(unix.SIGSTOP) {
			p.add("resetting its signal handlers", 0, unix.SYS_RT_SIGACTION, uintptr(sig), uintptr(unsafe.Pointer(dfl)), 0, 8)
		}
	}

	userns := c.flags&unix.CLONE_NEWUSER != 0
	var ready, goOn [2]int // the child's "waiting" and the spawner's "maps written"
	if userns {
		if err := unix.Pipe2(ready[:], unix.O_CLOEXEC); err != nil {
			return -1, -1, err
		}
		defer unix.Close(ready[0])
		if err := unix.Pipe2(goOn[:], unix.O_CLOEXEC); err != nil {
			unix.Close(ready[1])
			return -1, -1, err
		}
		defer unix.Close(goOn[0])
		buf := new([8]byte)
		p.hold(buf)
		b := uintptr(unsafe.Pointer(buf))
		// Its copy of the write end would keep its read from ever seeing
		// the end of a spawner that gave up.
		p.add("closing the spawner's end of a pipe", 0, unix.SYS_CLOSE, uintptr(goOn[1]))
		p.add("telling the spawner it waits for its id maps", wantOne, unix.SYS_WRITE, uintptr(ready[1]), b, 1)
		p.add(waitMaps, wantOne, unix.SYS_READ, uintptr(goOn[0]), b, 1)
	}
	if c.cred != nil {
		g, u := uintptr(c.cred.Gid), uintptr(c.cred.Uid)
		p.add(fmt.Sprintf("taking group %d", g), 0, unix.SYS_SETRESGID, g, g, g)
		p.add(fmt.Sprintf("taking user %d", u), 0, unix.SYS_SETRESUID, u, u, u)
		// The memory is the spawner's until the exec: a process of that
		// user (with fs.suid_dumpable = 1, which the change of user
		// applies) must not be able to trace the child meanwhile.
		p.add("making itself not dumpable", 0, unix.SYS_PRCTL, unix.PR_SET_DUMPABLE, 0)
	}
	if userns {
		// Every capability into the inheritable set (root's permitted set
		// after the exec), then the sandbox's bounding set.
		full := uint64(1)<<(c.lastCap+1) - 1
		hdr := &unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		data := new([2]unix.CapUserData)
		*data = boot.CapData(full)
		p.hold(hdr)
		p.hold(data)
		p.add("raising its capabilities", 0, unix.SYS_CAPSET, uintptr(unsafe.Pointer(hdr)), uintptr(unsafe.Pointer(&data[0])))
		for cp := 0; cp <= c.lastCap; cp++ {
			if c.bounding&(1<<cp) == 0 {
				p.add("dropping capabilities from its bounding set", 0, unix.SYS_PRCTL, unix.PR_CAPBSET_DROP, uintptr(cp))
			}
		}
	}

	// The descriptors, as Go's fork and exec moves them: first those that
	// a lower target would overwrite, out of the way above all of them;
	// then each onto its target, without close-on-exec.
	fd := make([]int, len(c.files))
	nextfd := len(c.files)
	for i, f := range c.files {
		fd[i] = -1
		if f != ^uintptr(0) {
			fd[i] = int(f)
			nextfd = max(nextfd, fd[i]+1)
		}
	}
	if exe >= 0 {
		nextfd = max(nextfd, exe+1) // executed last: nothing may land on it
	}
	for i := range fd {
		if fd[i] >= 0 && fd[i] < i {
			p.add("moving its descriptors", 0, unix.SYS_DUP3, uintptr(fd[i]), uintptr(nextfd), unix.O_CLOEXEC)
			fd[i] = nextfd
			nextfd++
		}
	}
	for i := range fd {
		switch {
		case fd[i] < 0:
			p.add("closing a descriptor", mayFail, unix.SYS_CLOSE, uintptr(i))
		case fd[i] == i:
			p.add("moving its descriptors", 0, unix.SYS_FCNTL, uintptr(i), unix.F_SETFD, 0)
		default:
			p.add("moving its descriptors", 0, unix.SYS_DUP3, uintptr(fd[i]), uintptr(i), 0)
		}
	}
	for i := len(fd); i < 3; i++ { // as Go's: no standard descriptor not given
		p.add("closing a descriptor", mayFail, unix.SYS_CLOSE, uintptr(i))
	}
	if dir != nil {
		p.add("changing to directory "+c.dir, 0, unix.SYS_CHDIR, uintptr(unsafe.Pointer(dir)))
	}
	mask := new(unix.Sigset_t) // the spawner thread's, filled in below
	p.hold(mask)
	p.add("unblocking signals", 0, unix.SYS_RT_SIGPROCMASK, unix.SIG_SETMASK, uintptr(unsafe.Pointer(mask)), 0, 8)
	p.add("executing "+c.path, 0, unix.SYS_EXECVE, uintptr(unsafe.Pointer(path)), uintptr(unsafe.Pointer(&argv[0])), uintptr(unsafe.Pointer(&env[0])))

	st := &childState{pidfd: -1}
	args := &cloneArgs{
		flags:      uint64(c.flags) | unix.CLONE_VM | unix.CLONE_VFORK | unix.CLONE_PIDFD | unix.CLONE_PARENT_SETTID,
		pidfd:      uint64(uintptr(unsafe.Pointer(&st.pidfd))),
		parentTID:  uint64(uintptr(unsafe.Pointer(&st.tid))),
		exitSignal: uint64(unix.SIGCHLD),
		stack:      uint64(uintptr(unsafe.Pointer(&st.stack[0]))),
		stackSize:  uint64(len(st.stack)),
	}
	if c.cgroupFD >= 0 {
		args.flags |= unix.CLONE_INTO_CGROUP
		args.cgroup = uint64(c.cgroupFD)
	}
	all := unix.Sigset_t{}
	for i := range all.Val {
		all.Val[i] = ^uint64(0)
	}
	steps := uintptr(unsafe.Pointer(&p.steps[0]))
	end := steps + uintptr(len(p.steps))*unsafe.Sizeof(step{})
	var mapped chan error
	if userns {
		// The child's id maps, once it says it waits (the kernel wrote its
		// pid before it ran); if it never does, its end of ready closes at
		// its exit, and the spawner's after the clone.
		mapped = make(chan error, 1)
		go func() {
			var b [1]byte
			n, err := unix.Read(ready[0], b[:])
			for err == unix.EINTR {
				n, err = unix.Read(ready[0], b[:])
			}
			if n == 1 {
				err = writeIDMaps(int(atomic.LoadInt32(&st.tid)), c.uids, c.gids, c.setgroups)
				if err == nil {
					_, err = unix.Write(goOn[1], b[:])
				}
			} else if err == nil {
				err = errors.New("the child did not wait for its id maps")
			}
			unix.Close(goOn[1]) // the child's read returns 0 if nothing came
			mapped <- err
		}()
	}
	if _, _, e := syscall.RawSyscall6(unix.SYS_RT_SIGPROCMASK, unix.SIG_SETMASK, uintptr(unsafe.Pointer(&all)), uintptr(unsafe.Pointer(mask)), 8, 0, 0); e != 0 {
		if userns {
			unix.Close(ready[1])
			<-mapped
		}
		return -1, -1, fmt.Errorf("blocking signals: %w", e)
	}
	var r, errno uintptr
	if userns {
		r, errno = cloneExecHandOff(args, unsafe.Sizeof(*args), steps, end, st)
	} else {
		r, errno = cloneExecSyscall(args, unsafe.Sizeof(*args), steps, end, st)
	}
	syscall.RawSyscall6(unix.SYS_RT_SIGPROCMASK, unix.SIG_SETMASK, uintptr(unsafe.Pointer(mask)), 0, 8, 0, 0)
	runtime.KeepAlive(p)
	runtime.KeepAlive(args)
	var mapErr error
	if userns {
		unix.Close(ready[1])
		mapErr = <-mapped
	}
	if errno != 0 {
		return -1, -1, fmt.Errorf("clone3: %w", syscall.Errno(errno))
	}
	pid, pidfd = int(r), int(st.pidfd)
	if st.at == 0 && mapErr == nil {
		return pid, pidfd, nil
	}
	// The child has exited: after a failed step, or killed before it
	// waited for its maps (their error says so). The signal is for a child
	// that would be alive all the same.
	unix.PidfdSendSignal(pidfd, unix.SIGKILL, nil, 0)
	var ws unix.WaitStatus
	for {
		if _, err := unix.Wait4(pid, &ws, 0, nil); err != unix.EINTR {
			break
		}
	}
	unix.Close(pidfd)
	i := (st.at - steps) / unsafe.Sizeof(step{})
	switch {
	case st.at == 0:
		return -1, -1, fmt.Errorf("the cloned child's id maps: %w", mapErr)
	case i >= uintptr(len(p.steps)):
		return -1, -1, fmt.Errorf("the cloned child: executing %s returned", c.path)
	case mapErr != nil && p.what[i] == waitMaps:
		return -1, -1, fmt.Errorf("the cloned child's id maps: %w", mapErr)
	case st.errno == 0:
		return -1, -1, fmt.Errorf("the cloned child: %s", p.what[i])
	}
	return -1, -1, fmt.Errorf("the cloned child: %s: %w", p.what[i], syscall.Errno(st.errno))
}

// waitMaps is what the child's step that waits for its id maps does.
const waitMaps = "waiting for its id maps"

// cloneExecSyscall is cloneExec in the runtime's syscall state, as
// syscall.Syscall makes its call, so that a stop of the world does not
// wait for the thread. Nothing in the spawner calls on all threads
// (syscall.AllThreadsSyscall, and syscall.Setuid and the like without cgo),
// which would.
//
//go:nosplit
func cloneExecSyscall(args *cloneArgs, size uintptr, steps, end uintptr, st *childState) (pid, errno uintptr) {
	entersyscall()
	pid, errno = cloneExec(args, size, steps, end, st)
	exitsyscall()
	return pid, errno
}

// cloneExecHandOff is cloneExecSyscall that hands the thread's processor
// to another thread at once: the goroutine that writes the child's id maps
// must run meanwhile, also where GOMAXPROCS is 1.
//
//go:nosplit
func cloneExecHandOff(args *cloneArgs, size uintptr, steps, end uintptr, st *childState) (pid, errno uintptr) {
	entersyscallblock()
	pid, errno = cloneExec(args, size, steps, end, st)
	exitsyscall()
	return pid, errno
}

//go:linkname entersyscall runtime.entersyscall
func entersyscall()

//go:linkname entersyscallblock runtime.entersyscallblock
func entersyscallblock()

//go:linkname exitsyscall runtime.exitsyscall
func exitsyscall()

// writeIDMaps writes the id maps of the user namespace of process pid,
// and its setgroups permission, as Go's fork and exec does.
func writeIDMaps(pid int, uids, gids []syscall.SysProcIDMap, setgroups bool) error {
	format := func(m []syscall.SysProcIDMap) []byte {
		var b []byte
		for _, e := range m {
			b = fmt.Appendf(b, "%d %d %d\n", e.ContainerID, e.HostID, e.Size)
		}
		return b
	}
	// Plain system calls: the child waits meanwhile, and os.OpenFile
	// would try the poller on each file.
	write := func(name string, data []byte) error {
		fd, err := unix.Open("/proc/"+strconv.Itoa(pid)+"/"+name, unix.O_WRONLY|unix.O_CLOEXEC, 0)
		if err == nil {
			_, err = unix.Write(fd, data)
			if cerr := unix.Close(fd); err == nil {
				err = cerr
			}
		}
		if err != nil {
			return fmt.Errorf("writing %s: %w", name, err)
		}
		return nil
	}
	if uids != nil {
		if err := write("uid_map", format(uids)); err != nil {
			return err
		}
	}
	if gids != nil {
		if !setgroups {
			if err := write("setgroups", []byte("deny")); err != nil {
				return err
			}
		}
		if err := write("gid_map", format(gids)); err != nil {
			return err
		}
	}
	return nil
}
