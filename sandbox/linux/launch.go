package linux

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// dockerCaps is Docker's default capability set: enough for package
// managers and ordinary root tasks, none of the ones that reach the host
// (SYS_ADMIN, SYS_PTRACE, SYS_MODULE, NET_ADMIN, ...).
var dockerCaps = []int{
	unix.CAP_CHOWN, unix.CAP_DAC_OVERRIDE, unix.CAP_FSETID, unix.CAP_FOWNER, unix.CAP_MKNOD,
	unix.CAP_NET_RAW, unix.CAP_SETGID, unix.CAP_SETUID, unix.CAP_SETFCAP, unix.CAP_SETPCAP,
	unix.CAP_NET_BIND_SERVICE, unix.CAP_SYS_CHROOT, unix.CAP_KILL, unix.CAP_AUDIT_WRITE,
}

// capMask is a set of capabilities as a bit mask.
func capMask(caps []int) uint64 {
	var m uint64
	for _, c := range caps {
		m |= 1 << c
	}
	return m
}

// sandboxCaps are the capabilities root in a sandbox has: Docker's set.
// On a cgroup v2 host, which has no device cgroup to restrict which device
// nodes may be opened (runc loads an eBPF program for that), CAP_MKNOD is
// left out instead, so that no device node can be made: the root's
// overlay, volumes and /dev/shm are nodev, and the sandbox's /dev holds
// only the harmless nodes the init makes.
func sandboxCaps(cgroupV2 bool) uint64 {
	m := capMask(dockerCaps)
	if cgroupV2 {
		m &^= 1 << unix.CAP_MKNOD
	}
	return m
}

// sandboxCloneFlags are the namespaces every sandbox gets at clone: PID,
// mount, UTS (its hostname), IPC and cgroup. Its network namespace
// (loopback only) is one made ahead, or a new one (CLONE_NEWNET).
const sandboxCloneFlags = unix.CLONE_NEWPID | unix.CLONE_NEWNS | unix.CLONE_NEWUTS |
	unix.CLONE_NEWIPC | unix.CLONE_NEWCGROUP

// launcher starts sandbox inits. The init is the portal binary, copied
// once into a sealed memfd (so nothing can change it under a running
// server, and no sandbox ever sees a path to it), and cloned straight into
// the sandbox's namespaces by a spawner: an OS thread of the server that
// does nothing else and whose credentials are prepared once for every
// sandbox (see spawnerThread).
type launcher struct {
	exe     *os.File // the sealed memfd
	exePath string   // /proc/self/fd/N
	devNull *os.File // the init's stdin
	caps    uint64   // the sandboxes' bounding set
	cg      *cgroups
	netns   *netnsPool
	reqs    chan spawnReq
	// home are the tasks files of the server's own v1 cgroups, where a
	// spawner thread returns after every clone.
	home []*os.File
}

type spawnReq struct {
	tasks []*os.File // the sandbox's v1 tasks files, to step into
	netns *os.File   // a network namespace to step into; nil: a new one
	attr  *os.ProcAttr
	res   chan spawnRes
}

type spawnRes struct {
	p   *os.Process
	err error
}

// exeFDMin is the lowest descriptor the memfd may have: above any the init
// is handed (os.StartProcess moves those to 0..n-1 before the exec, which
// resolves /proc/self/fd/N), and out of the way of most others.
const exeFDMin = 1000

// newLauncher returns the launcher of binary; netnsPool network
// namespaces wait ready for inits that step into one (none when every
// sandbox gets a user namespace, whose root must own its network
// namespace, made at the clone).
func newLauncher(binary string, cg *cgroups, netnsPool int) (*launcher, error) {
	exe, err := sealedCopy(binary)
	if err != nil {
		return nil, fmt.Errorf("copying %s into memory: %w", binary, err)
	}
	l := &launcher{exe: exe, exePath: "/proc/self/fd/" + strconv.Itoa(int(exe.Fd())), caps: sandboxCaps(cg.v2), cg: cg,
		netns: newNetnsPool(netnsPool), reqs: make(chan spawnReq)}
	if l.devNull, err = os.Open(os.DevNull); err != nil {
		l.close()
		return nil, err
	}
	if l.home, err = cg.ownTasksFiles(); err != nil {
		l.close()
		return nil, fmt.Errorf("the server's own cgroups: %w", err)
	}
	if err := l.startSpawner(); err != nil {
		l.close()
		return nil, err
	}
	return l, nil
}

// sealedCopy copies the binary into a memfd sealed against any change, at
// a descriptor of at least exeFDMin, close-on-exec.
func sealedCopy(binary string) (*os.File, error) {
	src, err := os.Open(binary)
	if err != nil {
		return nil, err
	}
	defer src.Close()
	fd, err := unix.MemfdCreate("msb", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING|unix.MFD_EXEC)
	if errors.Is(err, unix.EINVAL) { // before Linux 6.3, every memfd is executable
		fd, err = unix.MemfdCreate("msb", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	}
	if err != nil {
		return nil, err
	}
	mem := os.NewFile(uintptr(fd), "msb-memfd")
	if _, err := io.Copy(mem, src); err != nil {
		mem.Close()
		return nil, err
	}
	if err := unix.Fchmod(fd, 0o555); err != nil {
		mem.Close()
		return nil, err
	}
	seals := unix.F_SEAL_SEAL | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
		mem.Close()
		return nil, err
	}
	hi, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, exeFDMin)
	mem.Close()
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(hi), "msb-memfd"), nil
}

// close ends the spawner thread and frees the memfd; the launcher must not
// be used afterwards.
func (l *launcher) close() {
	close(l.reqs) // the spawner goroutine returns, locked: its thread ends
	l.netns.close()
	if l.exe != nil {
		l.exe.Close()
	}
	if l.devNull != nil {
		l.devNull.Close()
	}
	closeAll(l.home)
}

// startSpawner starts a spawner thread and waits until it is ready.
func (l *launcher) startSpawner() error {
	ready := make(chan error, 1)
	go l.spawnerThread(ready)
	return <-ready
}

// spawnerThread serves spawn requests on an OS thread of its own, locked
// for good, whose state every init it clones inherits:
//
//   - cgroups: before each clone the thread moves itself into the
//     sandbox's cgroups by writing "0" to their v1 tasks files, and back
//     home afterwards. Migrating the calling thread alone takes none of
//     the locks that moving a process does, so it never waits for the RCU
//     grace period that the first cgroup.procs write after a quiet spell
//     does on cgroup v1 (~10 ms): the init is born in its cgroups, and
//     CLONE_NEWCGROUP roots its cgroup namespace there.
//   - capabilities: the thread's bounding set is the sandbox's (Docker's
//     set) and its inheritable set full, so the root init it execs keeps
//     every capability for its set-up (permitted = inheritable | bounding
//     for root) while its bounding set is already final.
//   - no_new_privs, inherited by every thread of the init: the portal's
//     seccomp filter, installed on all its threads, needs it.
//   - the network namespace: the thread joins one made ahead (netnsPool)
//     for the clone, and returns to the server's.
//
// The Go runtime never clones new threads from a locked one, so none of
// the server's other threads ever gets these credentials.
func (l *launcher) spawnerThread(ready chan<- error) {
	runtime.LockOSThread() // never unlocked
	if err := prepareSpawnerThread(l.caps); err != nil {
		ready <- fmt.Errorf("preparing the spawner thread: %w", err)
		return
	}
	hostNet, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		ready <- fmt.Errorf("the server's network namespace: %w", err)
		return
	}
	defer hostNet.Close()
	ready <- nil
	for r := range l.reqs {
		var res spawnRes
		inNet := r.netns != nil && unix.Setns(int(r.netns.Fd()), unix.CLONE_NEWNET) == nil
		if !inNet {
			r.attr.Sys.Cloneflags |= unix.CLONE_NEWNET
		}
		if err := writeZero(r.tasks); err != nil {
			res.err = fmt.Errorf("entering the sandbox's cgroups: %w", err)
		} else {
			res.p, res.err = l.startInit(r.attr)
		}
		err := writeZero(l.home)
		if inNet {
			if nerr := unix.Setns(int(hostNet.Fd()), unix.CLONE_NEWNET); nerr != nil && err == nil {
				err = fmt.Errorf("network namespace: %w", nerr)
			}
		}
		if err != nil {
			// A thread that cannot go home must start nothing else; ending
			// it (locked) ends its membership of the sandbox's cgroups and
			// namespace.
			if res.err == nil {
				res.p.Kill()
				res.p.Wait()
			}
			r.res <- spawnRes{err: fmt.Errorf("the spawner thread could not leave a sandbox's cgroups or network: %w", err)}
			if err := l.startSpawner(); err != nil {
				go func() {
					for r := range l.reqs {
						r.res <- spawnRes{err: err}
					}
				}()
			}
			return
		}
		r.res <- res
	}
}

// startInit clones and executes the init. Under heavy process churn,
// executing /proc/self/fd/N has been seen to fail now and then with
// EACCES while N was the sealed memfd, intact, and to succeed at once when
// tried again (Linux 6.18, a thousand sandboxes starting); a child that
// failed to execute has exited and left nothing, so it is tried again.
func (l *launcher) startInit(attr *os.ProcAttr) (*os.Process, error) {
	for try := 1; ; try++ {
		p, err := os.StartProcess(l.exePath, []string{portalArgv0, portalRole}, attr)
		if err == nil || try == 3 || !errors.Is(err, unix.EACCES) {
			return p, err
		}
	}
}

// spawn starts an init with attr, born in the cgroups whose tasks files
// are given and in a network namespace of its own.
func (l *launcher) spawn(tasks []*os.File, attr *os.ProcAttr, ownNet bool) (*os.Process, error) {
	r := spawnReq{tasks: tasks, attr: attr, res: make(chan spawnRes, 1)}
	if !ownNet {
		r.netns = l.netns.take()
	}
	if r.netns != nil {
		defer r.netns.Close()
	}
	l.reqs <- r
	res := <-r.res
	return res.p, res.err
}

// writeZero writes "0", the writing thread, into each tasks file.
func writeZero(files []*os.File) error {
	for _, f := range files {
		if _, err := f.Write([]byte("0")); err != nil {
			return fmt.Errorf("%s: %w", f.Name(), err)
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
