package spawn

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The spawner clones an init with clone3 and CLONE_VM|CLONE_VFORK, as Go's
// own fork and exec does, but also into a new user namespace, where Go's
// copies the spawner's whole address space (its child waits, before its
// exec, for the parent to write its id maps): the page tables copied, every
// page the spawner then writes faulted and copied, and all of it torn down
// at the child's exec, most of the CPU a spawn took. Here the child waits
// for nothing. It makes a list of system calls the spawner prepared
// (cloneExec, in assembly: it runs no Go code, on a stack of its own) and
// executes the init, which is not yet root of its namespace then (it has no
// id maps yet) but keeps every capability there through its ambient set;
// the spawner writes the maps once the clone returns, and the init takes
// the namespace's root before anything else (boot), once its stage has
// come, which the server sends after the spawner's reply.
//
// A new user namespace also starts with a full bounding set and an empty
// inheritable set, whatever the cloning thread's: the child sets them to
// the sandbox's, as the cloning thread has them for a clone without one.

// cloneArgs is the kernel's struct clone_args (clone3(2)).
type cloneArgs struct {
	flags, pidfd, childTID, parentTID, exitSignal, stack, stackSize, tls, setTID, setTIDSize, cgroup uint64
}

// step is one system call of the child: its number, its arguments, and
// whether it may fail.
type step struct {
	nr, a1, a2, a3, a4, a5, a6 uintptr
	flags                      uintptr
}

// mayFail marks a step whose failure the child ignores.
const mayFail = 1

// failure is what a child whose step failed leaves: the error and the
// address of the step.
type failure struct{ errno, at uintptr }

// childStack is the size of the child's stack, which only the kernel could
// use: it makes system calls, and gets no signal until its handlers are
// the default ones.
const childStack = 16 << 10

// lastCap returns the kernel's highest capability.
func lastCap() int {
	data, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if n, perr := strconv.Atoi(strings.TrimSpace(string(data))); err == nil && perr == nil {
		return n
	}
	return 40 // CAP_CHECKPOINT_RESTORE, the last of Linux 5.9 to 6.18
}

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

// cloneSpec is one clone of an init: the clone flags (namespaces), the
// descriptors the child gets as 0, 1, ... (^uintptr(0): none), the cgroup
// it is born in (cgroup v2; -1: its parent's), and the bounding set it
// keeps in a new user namespace, of the kernel's capabilities up to
// lastCap.
type cloneSpec struct {
	path      string
	argv, env []string
	dir       string
	flags     uintptr
	files     []uintptr
	cgroupFD  int
	bounding  uint64
	lastCap   int
}

// cloneInit clones and executes the init as c says, and returns its pid
// and pidfd. An init in a new user namespace has no id maps yet.
func cloneInit(c cloneSpec) (pid, pidfd int, err error) {
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
	// default before it unblocks them (its own copies: no CLONE_SIGHAND).
	dfl := new([4]uint64) // struct sigaction of SIG_DFL, no flags, no mask
	p.hold(dfl)
	for sig := 1; sig <= 64; sig++ {
		if sig != int(unix.SIGKILL) && sig != int(unix.SIGSTOP) {
			p.add("resetting its signal handlers", 0, unix.SYS_RT_SIGACTION, uintptr(sig), uintptr(unsafe.Pointer(dfl)), 0, 8)
		}
	}

	if c.flags&unix.CLONE_NEWUSER != 0 {
		// Every capability into the inheritable and then the ambient set,
		// which keeps them across the exec of a process that is not root
		// of its namespace; then the sandbox's bounding set.
		full := uint64(1)<<(c.lastCap+1) - 1
		hdr := &unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		data := &[2]unix.CapUserData{}
		for i := range data {
			v := uint32(full >> (32 * i))
			data[i] = unix.CapUserData{Effective: v, Permitted: v, Inheritable: v}
		}
		p.hold(hdr)
		p.hold(data)
		p.add("raising its capabilities", 0, unix.SYS_CAPSET, uintptr(unsafe.Pointer(hdr)), uintptr(unsafe.Pointer(&data[0])))
		for cp := 0; cp <= c.lastCap; cp++ {
			p.add("raising its ambient capabilities", 0, unix.SYS_PRCTL, unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_RAISE, uintptr(cp), 0, 0)
		}
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
	if n, ok := strings.CutPrefix(c.path, "/proc/self/fd/"); ok {
		if exe, err := strconv.Atoi(n); err == nil {
			nextfd = max(nextfd, exe+1) // executed last: nothing may land on it
		}
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
	if dir != nil {
		p.add("changing to directory "+c.dir, 0, unix.SYS_CHDIR, uintptr(unsafe.Pointer(dir)))
	}
	mask := new(unix.Sigset_t) // the spawner thread's, filled in below
	p.hold(mask)
	p.add("unblocking signals", 0, unix.SYS_RT_SIGPROCMASK, unix.SIG_SETMASK, uintptr(unsafe.Pointer(mask)), 0, 8)
	p.add("executing "+c.path, 0, unix.SYS_EXECVE, uintptr(unsafe.Pointer(path)), uintptr(unsafe.Pointer(&argv[0])), uintptr(unsafe.Pointer(&env[0])))

	stack := make([]byte, childStack)
	fd32 := new(int32) // the kernel writes an int
	*fd32 = -1
	args := &cloneArgs{
		flags:      uint64(c.flags) | unix.CLONE_VM | unix.CLONE_VFORK | unix.CLONE_PIDFD,
		pidfd:      uint64(uintptr(unsafe.Pointer(fd32))),
		exitSignal: uint64(unix.SIGCHLD),
		stack:      uint64(uintptr(unsafe.Pointer(&stack[0]))),
		stackSize:  uint64(len(stack)),
	}
	if c.cgroupFD >= 0 {
		args.flags |= unix.CLONE_INTO_CGROUP
		args.cgroup = uint64(c.cgroupFD)
	}
	fail := &failure{}
	all := unix.Sigset_t{}
	for i := range all.Val {
		all.Val[i] = ^uint64(0)
	}
	steps := uintptr(unsafe.Pointer(&p.steps[0]))
	end := steps + uintptr(len(p.steps))*unsafe.Sizeof(step{})
	if _, _, e := syscall.RawSyscall6(unix.SYS_RT_SIGPROCMASK, unix.SIG_SETMASK, uintptr(unsafe.Pointer(&all)), uintptr(unsafe.Pointer(mask)), 8, 0, 0); e != 0 {
		return -1, -1, fmt.Errorf("blocking signals: %w", e)
	}
	r, errno := cloneExec(args, unsafe.Sizeof(*args), steps, end, fail)
	syscall.RawSyscall6(unix.SYS_RT_SIGPROCMASK, unix.SIG_SETMASK, uintptr(unsafe.Pointer(mask)), 0, 8, 0, 0)
	runtime.KeepAlive(p)
	runtime.KeepAlive(stack)
	runtime.KeepAlive(args)
	if errno != 0 {
		return -1, -1, fmt.Errorf("clone3: %w", syscall.Errno(errno))
	}
	pid, pidfd = int(r), int(*fd32)
	if fail.at != 0 {
		// The child has exited: reap it.
		var st unix.WaitStatus
		for {
			if _, err := unix.Wait4(pid, &st, 0, nil); err != unix.EINTR {
				break
			}
		}
		unix.Close(pidfd)
		i := (fail.at - steps) / unsafe.Sizeof(step{})
		if i >= uintptr(len(p.steps)) {
			return -1, -1, fmt.Errorf("the cloned child: executing %s returned", c.path)
		}
		return -1, -1, fmt.Errorf("the cloned child: %s: %w", p.what[i], syscall.Errno(fail.errno))
	}
	return pid, pidfd, nil
}

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
	write := func(name string, data []byte) error {
		f, err := os.OpenFile("/proc/"+strconv.Itoa(pid)+"/"+name, os.O_WRONLY, 0)
		if err == nil {
			_, err = f.Write(data)
			if cerr := f.Close(); err == nil {
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
