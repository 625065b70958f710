package portal

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// callCgroups makes one pids cgroup per command, under the sandbox's user
// pids cgroup, so that a timeout or a cancel can kill everything the
// command started. Process groups and parentage are not enough for that: a
// process that calls setsid and whose parent exits is reparented to the
// portal and is no longer in the command's group nor among its
// descendants. A cgroup is the one mark a process cannot shed: the
// sandbox's cgroup file system is read-only and mounting another is
// denied, so everything a command forks is born in its cgroup and stays
// there.
//
// The engine passes the user cgroup's directory as file descriptor 5 (a
// detached mount of it, through which nothing above it can be reached);
// the portal makes call-<n> directories through it, and reuses those a call
// left empty. Without it (no cgroup v1 pids hierarchy, an old kernel,
// tests) or when the portal may not write there (an image whose user is
// not root: the portal then holds no capabilities), commands run in the
// user cgroup itself and are killed by process tree, which a process that
// detached itself can escape.
type callCgroups struct {
	dir *os.File

	mu        sync.Mutex
	next      uint64
	idle      []*callCgroup // empty, ready for the next call
	lingering []string      // cgroups of finished calls that still held processes
	off       bool          // making one failed: calls get none from now on
}

// maxIdle is how many empty call cgroups are kept for reuse, sparing the
// kernel a cgroup's creation and teardown per command.
const maxIdle = 4

// callCgroupsFile returns fd 5 when the engine passed a cgroup v1
// directory there, and nil otherwise; the file system type and the file
// type are checked so that nothing else is ever written through it.
func callCgroupsFile() *os.File {
	var fs syscall.Statfs_t
	var st syscall.Stat_t
	if syscall.Fstatfs(5, &fs) != nil || fs.Type != cgroupV1Magic ||
		syscall.Fstat(5, &st) != nil || st.Mode&syscall.S_IFMT != syscall.S_IFDIR {
		return nil
	}
	syscall.CloseOnExec(5)
	return os.NewFile(5, "user-pids-cgroup-dir")
}

// callCgroup is the cgroup of one command: a value per call, also when
// the cgroup itself is reused, so that a kill of a call that is over can
// never reach the next call's processes.
type callCgroup struct {
	parent *callCgroups
	name   string
	tasks  *os.File // open for writing: "0" moves the writing thread in

	mu       sync.Mutex // held by kill until the cgroup is empty
	released bool
}

// create returns an empty cgroup for a call: an idle one, or a new one. It
// returns nil when calls cannot have cgroups here, and logs the reason the
// first time.
func (cs *callCgroups) create() *callCgroup {
	if cs == nil {
		return nil
	}
	cs.mu.Lock()
	if cs.off {
		cs.mu.Unlock()
		return nil
	}
	if n := len(cs.idle); n > 0 {
		cg := cs.idle[n-1]
		cs.idle = cs.idle[:n-1]
		cs.mu.Unlock()
		return &callCgroup{parent: cs, name: cg.name, tasks: cg.tasks}
	}
	cs.next++
	name := "call-" + strconv.FormatUint(cs.next, 10)
	cs.mu.Unlock()
	fd := int(cs.dir.Fd())
	err := unix.Mkdirat(fd, name, 0o755)
	if err == nil {
		var tfd int
		tfd, err = unix.Openat(fd, name+"/tasks", unix.O_WRONLY|unix.O_CLOEXEC, 0)
		if err == nil {
			return &callCgroup{parent: cs, name: name, tasks: os.NewFile(uintptr(tfd), name+"/tasks")}
		}
		unix.Unlinkat(fd, name, unix.AT_REMOVEDIR)
	}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if !cs.off {
		cs.off = true
		logf("commands get no cgroup of their own (%v); a timeout kills them by process tree", err)
	}
	return nil
}

// sweep removes the cgroups of finished calls whose last processes have
// exited since.
func (cs *callCgroups) sweep() {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	kept := cs.lingering[:0]
	for _, name := range cs.lingering {
		if unix.Unlinkat(int(cs.dir.Fd()), name, unix.AT_REMOVEDIR) != nil {
			kept = append(kept, name)
		}
	}
	cs.lingering = kept
}

// pids lists the processes in the cgroup, as pids of the portal's own PID
// namespace (the kernel translates them for the reader).
func (cg *callCgroup) pids() ([]int, error) {
	fd, err := unix.Openat(int(cg.parent.dir.Fd()), cg.name+"/cgroup.procs", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), cg.name+"/cgroup.procs")
	defer f.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(f); err != nil {
		return nil, err
	}
	var pids []int
	for _, field := range bytes.Fields(buf.Bytes()) {
		if pid, err := strconv.Atoi(string(field)); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// kill kills every process in the cgroup and waits until it is empty. No
// freezing is needed, unlike killTree: whatever a dying process forks is
// born in the same cgroup and found on the next pass. It returns an error
// when the cgroup cannot be read or does not empty within a few seconds
// (a process stuck in the kernel).
func (cg *callCgroup) kill() error {
	cg.mu.Lock()
	defer cg.mu.Unlock()
	if cg.released {
		return nil // the call is over: the cgroup may be another's now
	}
	self := os.Getpid()
	for deadline := time.Now().Add(5 * time.Second); ; {
		pids, err := cg.pids()
		if err != nil {
			return fmt.Errorf("cgroup %s: %w", cg.name, err)
		}
		alive := 0
		for _, pid := range pids {
			// The forking thread passes through the cgroup while it
			// starts the command; it must not take the portal with it.
			if pid != self {
				syscall.Kill(pid, syscall.SIGKILL)
				alive++
			}
		}
		if alive == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cgroup %s: %d processes survived SIGKILL", cg.name, alive)
		}
		time.Sleep(time.Millisecond)
	}
}

// release keeps the cgroup for another call once its call is over, or
// removes it, or leaves it for a later sweep while processes the call left
// in the background still run.
func (cg *callCgroup) release() {
	// After any kill under way, which must not find the next call's
	// processes here; and no kill after.
	cg.mu.Lock()
	cg.released = true
	cg.mu.Unlock()
	cs := cg.parent
	cs.sweep()
	if pids, err := cg.pids(); err == nil && len(pids) == 0 {
		cs.mu.Lock()
		if len(cs.idle) < maxIdle {
			cs.idle = append(cs.idle, cg)
			cs.mu.Unlock()
			return
		}
		cs.mu.Unlock()
	}
	cg.tasks.Close()
	err := unix.Unlinkat(int(cs.dir.Fd()), cg.name, unix.AT_REMOVEDIR)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return
	}
	cs.mu.Lock()
	cs.lingering = append(cs.lingering, cg.name)
	cs.mu.Unlock()
}
