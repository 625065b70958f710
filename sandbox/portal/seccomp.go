package portal

import (
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The sandbox's code runs as root (uid 0) with Docker's default
// capabilities. Capabilities alone leave two doors open that the review of
// this engine walked through: creating a user namespace (which hands back a
// full capability set inside it, enough to mount a cgroup file system and
// raise the sandbox's own memory, CPU and pids limits), and the kernel
// surfaces that are not namespaced at all (the host root's keyrings, bpf,
// perf, io_uring, module loading). So before serving, the portal installs a
// seccomp filter on all of its threads; every process it starts inherits it
// and cannot remove it (no_new_privs is set by the engine). The list follows
// what Docker's default profile denies to a container without
// CAP_SYS_ADMIN, as a deny list so that ordinary programs keep working.
//
// The filter is built here rather than with libseccomp, which would need
// cgo, which the static portal binary avoids. It is small enough to
// read.

// deniedSyscalls fail with EPERM inside a sandbox.
var deniedSyscalls = []uintptr{
	// Namespaces and mounts: the way out of the cgroup limits.
	unix.SYS_UNSHARE, unix.SYS_SETNS,
	unix.SYS_MOUNT, unix.SYS_UMOUNT2, unix.SYS_PIVOT_ROOT,
	unix.SYS_OPEN_TREE, unix.SYS_MOVE_MOUNT, unix.SYS_FSOPEN, unix.SYS_FSCONFIG,
	unix.SYS_FSMOUNT, unix.SYS_FSPICK, unix.SYS_MOUNT_SETATTR,
	// Keyrings are not namespaced: the host root's would be shared.
	unix.SYS_KEYCTL, unix.SYS_ADD_KEY, unix.SYS_REQUEST_KEY,
	// Other processes' memory and descriptors (the portal's socket above all).
	unix.SYS_PTRACE, unix.SYS_PROCESS_VM_READV, unix.SYS_PROCESS_VM_WRITEV,
	unix.SYS_PIDFD_GETFD, unix.SYS_KCMP,
	// Large kernel attack surfaces a sandbox has no use for.
	unix.SYS_BPF, unix.SYS_PERF_EVENT_OPEN, unix.SYS_USERFAULTFD,
	unix.SYS_IO_URING_SETUP, unix.SYS_IO_URING_ENTER, unix.SYS_IO_URING_REGISTER,
	unix.SYS_OPEN_BY_HANDLE_AT, unix.SYS_NAME_TO_HANDLE_AT,
	unix.SYS_FANOTIFY_INIT, unix.SYS_LOOKUP_DCOOKIE,
	// The machine itself.
	unix.SYS_KEXEC_LOAD, unix.SYS_KEXEC_FILE_LOAD, unix.SYS_INIT_MODULE,
	unix.SYS_FINIT_MODULE, unix.SYS_DELETE_MODULE, unix.SYS_REBOOT,
	unix.SYS_SWAPON, unix.SYS_SWAPOFF, unix.SYS_ACCT, unix.SYS_SYSLOG,
	unix.SYS_QUOTACTL, unix.SYS_VHANGUP, unix.SYS_SETTIMEOFDAY,
	unix.SYS_CLOCK_SETTIME, unix.SYS_CLOCK_ADJTIME, unix.SYS_ADJTIMEX,
}

// namespaceFlags are the clone flags that create namespaces.
const namespaceFlags = unix.CLONE_NEWNS | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC |
	unix.CLONE_NEWUSER | unix.CLONE_NEWPID | unix.CLONE_NEWNET | unix.CLONE_NEWCGROUP | unix.CLONE_NEWTIME

// offsets in struct seccomp_data.
const (
	offNr   = 0
	offArch = 4
	offArg0 = 16 // low 32 bits on little-endian machines
)

func stmt(code uint16, k uint32) unix.SockFilter { return unix.SockFilter{Code: code, K: k} }

func jump(code uint16, k uint32, jt, jf uint8) unix.SockFilter {
	return unix.SockFilter{Code: code, Jt: jt, Jf: jf, K: k}
}

// seccompFilter returns the program for this machine's architecture.
func seccompFilter() ([]unix.SockFilter, error) {
	var arch uint32
	switch runtime.GOARCH {
	case "amd64":
		arch = unix.AUDIT_ARCH_X86_64
	case "arm64":
		arch = unix.AUDIT_ARCH_AARCH64
	default:
		return nil, fmt.Errorf("no seccomp filter for %s", runtime.GOARCH)
	}
	const (
		ld   = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
		jeq  = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		jge  = unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K
		jset = unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K
		ret  = unix.BPF_RET | unix.BPF_K
	)
	eperm := uint32(unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM))
	enosys := uint32(unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS))
	prog := []unix.SockFilter{
		stmt(ld, offArch),
		jump(jeq, arch, 1, 0),
		stmt(ret, unix.SECCOMP_RET_KILL_PROCESS), // another ABI: never allowed
		stmt(ld, offNr),
	}
	if runtime.GOARCH == "amd64" {
		// The x32 ABI shares the architecture value; its numbers have this bit.
		prog = append(prog, jump(jge, 0x40000000, 0, 1), stmt(ret, eperm))
	}
	for _, nr := range deniedSyscalls {
		prog = append(prog, jump(jeq, uint32(nr), 0, 1), stmt(ret, eperm))
	}
	// clone3 passes its flags in memory, out of the filter's reach: answer
	// ENOSYS so that libc falls back to clone, whose flags are checked.
	prog = append(prog,
		jump(jeq, unix.SYS_CLONE3, 0, 1), stmt(ret, enosys),
		jump(jeq, unix.SYS_CLONE, 1, 0), stmt(ret, unix.SECCOMP_RET_ALLOW),
		stmt(ld, offArg0),
		jump(jset, namespaceFlags, 0, 1), stmt(ret, eperm),
		stmt(ret, unix.SECCOMP_RET_ALLOW),
	)
	return prog, nil
}

// LockDown installs the seccomp filter on every thread of the portal and
// makes the portal undumpable, so that no process in the sandbox can
// ptrace it, read its memory or take its descriptors (the connection to
// the server). Children inherit the filter; exec resets dumpability. It
// is called once per process: a second call would stack a second filter.
func LockDown() error {
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("set undumpable: %w", err)
	}
	// Normally set by the engine already; required for an unprivileged filter.
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("set no_new_privs: %w", err)
	}
	prog, err := seccompFilter()
	if err != nil {
		return err
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	_, _, errno := unix.RawSyscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER,
		unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&fprog)))
	runtime.KeepAlive(prog)
	if errno != 0 {
		return fmt.Errorf("install seccomp filter: %w", errno)
	}
	return nil
}
