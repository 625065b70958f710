package linux_test

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/msb-dev/msb/sandbox/linux"
	"github.com/msb-dev/msb/sandbox/sandboxtest"
	"golang.org/x/sys/unix"
)

// startSlack is this process's timer slack before any engine raised it
// (TestMain reads it).
var startSlack int

// TestTimerSlack checks that the engine gives its own process's threads
// its timer slack, and that the spawner's and the init's threads have it
// too, but not the processes in the sandbox: they get the slack this
// process had, through the one thread of the portal that starts them.
// (The slack is raised once per process: that it is raised before the
// spawner starts shows only when this engine is the process's first, as
// with -run TestTimerSlack.)
func TestTimerSlack(t *testing.T) {
	e, _, _ := newEngineToClose(t, "msb-slack")
	id := sandboxtest.ID(t, "slack", "a")
	pid := startBox(t, e, id, hostSpec(t))
	orig := strconv.Itoa(startSlack)
	raised := strconv.Itoa(max(startSlack, linux.TimerSlack))
	for name, p := range map[string]int{"this process": os.Getpid(), "the spawner": linux.SpawnerPid(e)} {
		for tid, slack := range threadSlacks(t, p) {
			if slack != raised {
				t.Errorf("%s: thread %d has a timer slack of %s ns, want %s", name, tid, slack, raised)
			}
		}
	}
	if got := mustRun(t, e, id, `cat /proc/self/timerslack_ns; sh -c 'cat /proc/self/timerslack_ns'`); got != orig+"\n"+orig+"\n" {
		t.Errorf("timer slack of processes in the sandbox: %q, want %s (this process's before the engine raised it)", got, orig)
	}
	// The portal has started a process: its forking thread is there.
	var forking int
	for tid, slack := range threadSlacks(t, pid) {
		switch slack {
		case raised:
		case orig:
			forking++
		default:
			t.Errorf("the init: thread %d has a timer slack of %s ns, want %s", tid, slack, raised)
		}
	}
	if forking != 1 && raised != orig {
		t.Errorf("the init has %d threads of the original timer slack, want 1 (the forking thread)", forking)
	}
}

// TestRaiseThreadSlackOwnOnly checks that raising a thread's slack by its
// tid leaves another process's alone (a tid of this process's that
// exited may name one by then).
func TestRaiseThreadSlackOwnOnly(t *testing.T) {
	other := exec.Command("sleep", "60")
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { other.Process.Kill(); other.Wait() }()
	// Started by a thread of this process: the other's slack is this
	// process's, lowered so that a raise would show.
	path := fmt.Sprintf("/proc/%d/timerslack_ns", other.Process.Pid)
	if err := os.WriteFile(path, []byte("50000"), 0); err != nil {
		t.Fatal(err)
	}
	linux.RaiseThreadSlack(other.Process.Pid)
	if data, err := os.ReadFile(path); err != nil || strings.TrimSpace(string(data)) != "50000" {
		t.Errorf("another process's timer slack after a raise by its tid: %q, %v; want 50000", data, err)
	}
}

// threadSlacks returns the timer slack of every thread of process pid.
func threadSlacks(t *testing.T, pid int) map[int]string {
	t.Helper()
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	slacks := map[int]string{}
	for _, task := range tasks {
		tid, _ := strconv.Atoi(task.Name())
		// (Per thread only at /proc/<tid>.)
		data, err := os.ReadFile("/proc/" + task.Name() + "/timerslack_ns")
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ESRCH) {
			continue // exited meanwhile
		}
		if err != nil {
			t.Fatal(err)
		}
		slacks[tid] = strings.TrimSpace(string(data))
	}
	if len(slacks) == 0 {
		t.Fatalf("process %d has no threads", pid)
	}
	return slacks
}

// TestPortalSocketPolled checks that the portal waits for requests through
// the runtime's poller (its socket, descriptor 3, non-blocking), not in a
// read(2) that holds its only processor: the goroutines of the request in
// flight then ran only once the runtime's monitor took the processor back
// (up to timerSlack later).
func TestPortalSocketPolled(t *testing.T) {
	e, _, _ := newEngineToClose(t, "msb-polled")
	id := sandboxtest.ID(t, "polled", "a")
	pid := startBox(t, e, id, hostSpec(t))
	mustRun(t, e, id, "true") // the portal serves
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/3", pid))
	if err != nil {
		t.Fatal(err)
	}
	var flags string
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "flags:"); ok {
			flags = strings.TrimSpace(v)
		}
	}
	f, err := strconv.ParseUint(flags, 8, 64)
	if err != nil {
		t.Fatalf("flags of the portal's descriptor 3 in %q: %v", data, err)
	}
	if f&unix.O_NONBLOCK == 0 {
		t.Errorf("the portal's socket (descriptor 3) is blocking: flags %s", flags)
	}
	if link, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/3", pid)); !strings.HasPrefix(link, "socket:") {
		t.Errorf("the portal's descriptor 3 is %q, not its socket", link)
	}
}
