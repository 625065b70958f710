package linux

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/sandbox/linux/spawn"
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
// the sandbox's namespaces by the spawner (package spawn): a small process
// of the same binary, started once, whose thread's credentials are prepared
// once for every sandbox. Cloning from it rather than from the server
// leaves nothing of the server's in the child between its clone and its
// exec (and, where the spawner clones into a new user namespace with Go's
// fork and exec, which copies the address space, copies its small one
// rather than the server's).
type launcher struct {
	exe     *os.File // the sealed memfd
	devNull *os.File // the init's stdin
	caps    uint64   // the sandboxes' bounding set
	cg      *cgroups
	netns   *netnsPool

	mu     sync.Mutex // guards sp, replaced when it has exited, and closed
	sp     *spawner
	closed bool
}

// newLauncher returns the launcher of the binary image; netnsPool network
// namespaces wait ready for inits that step into one (none when every
// sandbox gets a user namespace, whose root must own its network
// namespace, made at the clone).
func newLauncher(image io.ReaderAt, cg *cgroups, netnsPool int) (*launcher, error) {
	exe, err := sealedCopy(image)
	if err != nil {
		return nil, fmt.Errorf("copying the portal binary into memory: %w", err)
	}
	l := &launcher{exe: exe, caps: sandboxCaps(cg.v2), cg: cg, netns: newNetnsPool(netnsPool)}
	if l.devNull, err = os.Open(os.DevNull); err != nil {
		l.close()
		return nil, err
	}
	if l.sp, err = l.startSpawner(); err != nil {
		l.close()
		return nil, err
	}
	return l, nil
}

// startSpawner starts a spawner process (spawner.go).
func (l *launcher) startSpawner() (*spawner, error) {
	home, err := l.cg.ownTasksFiles()
	if err != nil {
		return nil, fmt.Errorf("the server's own cgroups: %w", err)
	}
	defer closeAll(home)
	return startSpawner(l.exe, home, l.caps)
}

// sealedCopy copies the binary image into a memfd sealed against any
// change, at a descriptor of at least spawn.ExeFDMin, close-on-exec.
func sealedCopy(image io.ReaderAt) (*os.File, error) {
	fd, err := unix.MemfdCreate("msb", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING|unix.MFD_EXEC)
	if errors.Is(err, unix.EINVAL) { // before Linux 6.3, every memfd is executable
		fd, err = unix.MemfdCreate("msb", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	}
	if err != nil {
		return nil, err
	}
	mem := os.NewFile(uintptr(fd), "msb-memfd")
	if _, err := io.Copy(mem, io.NewSectionReader(image, 0, 1<<62)); err != nil {
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
	hi, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, spawn.ExeFDMin)
	mem.Close()
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(hi), "msb-memfd"), nil
}

// close stops the spawner and frees the memfd; the launcher must not be
// used afterwards. Inits already started run on.
func (l *launcher) close() {
	l.mu.Lock()
	l.closed = true
	if l.sp != nil {
		l.sp.close()
	}
	l.mu.Unlock()
	l.netns.close()
	if l.exe != nil {
		l.exe.Close()
	}
	if l.devNull != nil {
		l.devNull.Close()
	}
}

// spawn starts an init with attr, born in the cgroups whose tasks files
// are given (cgroup v1; on v2 attr names its cgroup) and in a network
// namespace of its own.
func (l *launcher) spawn(tasks []*os.File, attr *os.ProcAttr, ownNet bool) (*initProc, error) {
	var netns *os.File
	if !ownNet {
		netns = l.netns.take()
	}
	if netns != nil {
		defer netns.Close()
	}
	l.mu.Lock()
	sp := l.sp
	l.mu.Unlock()
	p, err := sp.spawn(tasks, netns, attr)
	if !errors.Is(err, errSpawnerGone) {
		return p, err
	}
	// The spawner has exited (killed, or it could not leave a sandbox's
	// cgroups): a new one takes over.
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, err
	}
	if l.sp == sp {
		sp.close()
		if sp, err = l.startSpawner(); err != nil {
			l.mu.Unlock()
			return nil, err
		}
		l.sp = sp
	}
	sp = l.sp
	l.mu.Unlock()
	return sp.spawn(tasks, netns, attr)
}
