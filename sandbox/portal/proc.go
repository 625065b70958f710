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
)

// reaper is the portal's only caller of wait4. As PID 1 the portal inherits
// every orphan of the sandbox and must reap them, or zombies pile up until
// the pid limit is hit; but a second waiter would steal the exit statuses
// of the processes the portal is waiting for. So one SIGCHLD-driven loop
// reaps everything and hands each status to whoever registered its pid.
type reaper struct {
	mu      sync.Mutex
	waiters map[int]chan syscall.WaitStatus
	forks   chan func() // run on the forking thread
}

// newReaper starts the reap loop and the forking thread. When userCgroup is
// not nil (the tasks file of the sandbox's "user" pids cgroup, which the
// engine hands over as fd 4), the forking thread moves itself there before
// its first fork. Every process the portal starts is then born in that
// cgroup, so a fork bomb exhausts the user's pids, not the reserve the rest
// of the portal's threads need to keep answering.
func newReaper(userCgroup *os.File) *reaper {
	r := &reaper{
		waiters: make(map[int]chan syscall.WaitStatus),
		forks:   make(chan func()),
	}
	go func() {
		// Never unlocked: the thread must stay in the cgroup and serve
		// nothing else.
		runtime.LockOSThread()
		if userCgroup != nil {
			// "0" in a cgroup v1 tasks file means the writing thread.
			if _, err := userCgroup.Write([]byte("0")); err != nil {
				logf("cannot move the forking thread to the user pids cgroup: %v", err)
			}
			userCgroup.Close()
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
// anyone waits for it. The returned channel receives its exit status.
func (r *reaper) start(path string, argv []string, attr *syscall.ProcAttr) (int, <-chan syscall.WaitStatus, error) {
	var (
		pid int
		err error
		ch  = make(chan syscall.WaitStatus, 1)
	)
	done := make(chan struct{})
	r.forks <- func() {
		defer close(done)
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
	// The engine starts the portal with oom_score_adj -1000 so that the
	// kernel never picks it; its children must be fair game instead.
	// Raising the score needs no privilege.
	_ = os.WriteFile("/proc/"+strconv.Itoa(pid)+"/oom_score_adj", []byte("0"), 0)
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
