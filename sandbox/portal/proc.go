package portal

import (
	"bytes"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// reaper is the portal's only caller of wait4. As PID 1 the portal inherits
// every orphan of the sandbox and must reap them, or zombies pile up until
// the pid limit is hit; but a second waiter would steal the exit statuses
// of the processes the portal is waiting for. So one SIGCHLD-driven loop
// reaps everything and hands each status to whoever registered its pid.
type reaper struct {
	mu         sync.Mutex
	waiters    map[int]chan syscall.WaitStatus
	forks      chan func() // run on the forking thread
	home       *os.File    // tasks file of the user pids cgroup; nil: none
	childScore string      // oom_score_adj of every child; "" leaves it as inherited
}

// childOOMBonus is how much higher than the portal's own oom_score_adj the
// portal sets the score of every process it starts, so that a sandbox out
// of memory loses the user's processes before the portal (the kernel adds
// this many thousandths of the memory limit to a process's size when it
// chooses). A process may lower its score again, but not below the floor
// the engine set with the portal's own score, which is never below 0: so
// nothing in the sandbox can become harder to kill than the portal, nor
// immune. On host-wide memory pressure, too, sandboxed code goes before
// the host's processes of the same size.
const childOOMBonus = 300

// childOOMScore returns the oom_score_adj for the portal's children, or ""
// when the portal's own cannot be read.
func childOOMScore() string {
	data, err := os.ReadFile("/proc/self/oom_score_adj")
	if err != nil {
		return ""
	}
	own, err := strconv.Atoi(string(bytes.TrimSpace(data)))
	if err != nil {
		return ""
	}
	return strconv.Itoa(min(own+childOOMBonus, 1000))
}

// newReaper starts the reap loop and the forking thread. When userCgroup is
// not nil (the tasks file of the sandbox's "user" pids cgroup, which the
// engine hands over as fd 4), the forking thread moves itself there before
// its first fork. Every process the portal starts is then born in that
// cgroup (or in a call's cgroup below it), so a fork bomb exhausts the
// user's pids, not the reserve the rest of the portal's threads need to
// keep answering. With childSlack (in nanoseconds), the forking thread
// takes that timer slack, which every process it starts inherits.
func newReaper(userCgroup *os.File, childSlack uint64) *reaper {
	r := &reaper{
		waiters:    make(map[int]chan syscall.WaitStatus),
		forks:      make(chan func()),
		childScore: childOOMScore(),
	}
	go func() {
		// Never unlocked: the thread must stay in the cgroup and serve
		// nothing else.
		runtime.LockOSThread()
		if childSlack > 0 {
			if err := unix.Prctl(unix.PR_SET_TIMERSLACK, uintptr(childSlack), 0, 0, 0); err != nil {
				logf("cannot give the forking thread a timer slack of %d ns: %v", childSlack, err)
			}
		}
		if userCgroup != nil {
			// "0" in a cgroup v1 tasks file means the writing thread.
			if _, err := userCgroup.Write([]byte("0")); err != nil {
				logf("cannot move the forking thread to the user pids cgroup: %v", err)
				userCgroup.Close()
			} else {
				r.home = userCgroup
			}
		}
		for f := range r.forks {
			f()
		}
	}()
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGCHLD)
	go func() {
		for range ch {
			r.reap()
		}
	}()
	return r
}

func (r *reaper) reap() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil || pid <= 0 {
			return
		}
		if ch, ok := r.waiters[pid]; ok {
			delete(r.waiters, pid)
			ch <- ws
		}
	}
}

// start forks and execs a child and registers it, both under the lock the
// reap loop holds, so a child that exits at once cannot be reaped before
// anyone waits for it. With into (the tasks file of a call's cgroup) the
// child is born in that cgroup: the forking thread moves there for the
// fork and back to the user cgroup after it, so that it never keeps a
// finished call's cgroup from being removed. The returned channel receives
// its exit status.
func (r *reaper) start(path string, argv []string, attr *syscall.ProcAttr, into *os.File) (int, <-chan syscall.WaitStatus, error) {
	var (
		pid int
		err error
		ch  = make(chan syscall.WaitStatus, 1)
	)
	done := make(chan struct{})
	r.forks <- func() {
		defer close(done)
		if into != nil && r.home != nil {
			// On failure the child is born in the user cgroup, and only
			// killTree can find what it starts.
			if _, err := into.Write([]byte("0")); err != nil {
				logf("cannot move the forking thread to a command's cgroup: %v", err)
			} else {
				defer func() {
					if _, err := r.home.Write([]byte("0")); err != nil {
						logf("cannot move the forking thread back to the user pids cgroup: %v", err)
					}
				}()
			}
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		pid, err = syscall.ForkExec(path, argv, attr)
		if err == nil {
			r.waiters[pid] = ch
		}
	}
	<-done
	if err != nil {
		return 0, nil, err
	}
	// Raising a score needs no privilege. A child that forks before this
	// leaves a grandchild at the portal's score, which is no lower than
	// anything in the sandbox can go anyway.
	if r.childScore != "" {
		_ = os.WriteFile("/proc/"+strconv.Itoa(pid)+"/oom_score_adj", []byte(r.childScore), 0)
	}
	return pid, ch, nil
}

// exitCode renders a wait status the way shells do: the exit code, or 128
// plus the signal that killed the process.
func exitCode(ws syscall.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}

// procInfo is what the killer needs from /proc/<pid>/stat.
type procInfo struct {
	ppid, pgrp int
	state      byte
	start      uint64 // start time in clock ticks: tells a pid from its reuse
}

// scanProcs reads every process the portal can see.
func scanProcs() map[int]procInfo {
	procs := make(map[int]procInfo)
	d, err := os.Open("/proc")
	if err != nil {
		return procs
	}
	names, _ := d.Readdirnames(-1)
	d.Close()
	for _, name := range names {
		pid, err := strconv.Atoi(name)
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + name + "/stat")
		if err != nil {
			continue
		}
		// The command name may hold spaces and parentheses: fields start
		// after the last ')'.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := bytes.Fields(b[i+1:])
		if len(f) < 20 {
			continue
		}
		ppid, _ := strconv.Atoi(string(f[1]))
		pgrp, _ := strconv.Atoi(string(f[2]))
		start, _ := strconv.ParseUint(string(f[19]), 10, 64)
		procs[pid] = procInfo{ppid: ppid, pgrp: pgrp, state: f[0][0], start: start}
	}
	return procs
}

// killTree kills every process in the process groups pgids, every
// descendant of those, and (when under is non-zero) every descendant of
// the process under. Killing the group alone is not enough: a child can
// leave the group with setpgid or setsid; killing by ppid alone is not
// enough either: a process forks again while its parent is being killed.
// So every process found is first frozen with SIGSTOP (a stopped process
// cannot fork), the tree is scanned again until no new process appears,
// then everything is killed, and the whole thing repeats until nothing is
// left alive. Identities are tracked with start times so that a reused pid
// is never signalled.
func killTree(under int, pgids ...int) {
	self := os.Getpid()
	groups := make(map[int]bool, len(pgids))
	for _, g := range pgids {
		if g > 1 {
			groups[g] = true
		}
	}
	seen := make(map[int]uint64)
	collect := func(procs map[int]procInfo) map[int]uint64 {
		children := make(map[int][]int)
		for pid, p := range procs {
			children[p.ppid] = append(children[p.ppid], pid)
		}
		out := make(map[int]uint64)
		var queue []int
		add := func(pid int) {
			p, ok := procs[pid]
			if !ok || pid == self || pid == 1 || p.state == 'Z' || p.state == 'X' {
				return
			}
			if _, dup := out[pid]; dup {
				return
			}
			out[pid] = p.start
			queue = append(queue, pid)
		}
		for pid, p := range procs {
			if groups[p.pgrp] {
				add(pid)
			}
			if st, ok := seen[pid]; ok && st == p.start {
				add(pid)
			}
		}
		if under > 0 {
			for _, c := range children[under] {
				add(c)
			}
		}
		for len(queue) > 0 {
			pid := queue[0]
			queue = queue[1:]
			for _, c := range children[pid] {
				add(c)
			}
		}
		return out
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		targets := collect(scanProcs())
		if len(targets) == 0 {
			return
		}
		// Freeze until the set stops growing.
		for range 20 {
			grew := false
			for pid, st := range targets {
				if _, ok := seen[pid]; !ok {
					seen[pid] = st
					grew = true
				}
				_ = syscall.Kill(pid, syscall.SIGSTOP)
			}
			if !grew {
				break
			}
			targets = collect(scanProcs())
		}
		for pid := range targets {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
