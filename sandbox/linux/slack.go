package linux

import (
	"bytes"
	"os"
	"runtime"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// timerSlack is the timer slack, in nanoseconds, the engine gives the
// threads of the process it runs in, and by inheritance the spawner's and
// every init's.
//
// Go's runtime has a monitor thread that sleeps 20 µs at a time while it
// keeps finding a processor held by a system call longer than that, and
// for 50 sleeps after the last one it found. The server's work and an
// init's set-up are mostly system calls (cgroups, mounts, files), so the
// monitors hardly ever slowed down: on a 2-core virtual machine they woke
// about 70 times per sandbox start and stop in the server and 100 times
// in each init, each wake a timer interrupt and two context switches,
// some 15 % of the server's CPU and 10 % of an init's. A thread's timer
// slack (PR_SET_TIMERSLACK) lets the kernel end its sleeps and timed waits
// up to that much late, to serve them with other timers: at 1 ms, the
// monitors wake about once a millisecond at most while busy. What it
// costs: the threads' timers (Go's time.Sleep, timeouts) fire up to 1 ms
// late, and a processor held by a blocking system call goes to other
// goroutines up to 1 ms later. Processes in sandboxes get the server's
// original slack back (boot.Config.TimerSlack): their sleeps are theirs.
// Other processes the server starts on the host (mke2fs, say) keep the
// raised one.
const timerSlack = 1_000_000

// raiseTimerSlack gives every thread of this process timerSlack, once per
// process, unless the process has that much already; threads made later
// inherit it from the thread that makes them. It returns the slack the
// process had before (0 if it could not be read, or is 0): what processes in
// sandboxes get. Other threads than the calling one take CAP_SYS_NICE;
// without it they keep theirs.
var raiseTimerSlack = sync.OnceValue(func() uint64 {
	cur, err := unix.PrctlRetInt(unix.PR_GET_TIMERSLACK, 0, 0, 0, 0)
	if err != nil || cur <= 0 {
		return 0
	}
	orig := uint64(cur)
	if orig >= timerSlack {
		return orig
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if unix.Prctl(unix.PR_SET_TIMERSLACK, timerSlack, 0, 0, 0) != nil {
		return orig
	}
	self := strconv.Itoa(unix.Gettid())
	tgid := []byte("\nTgid:\t" + strconv.Itoa(os.Getpid()) + "\n")
	// A second pass catches threads made during the first by one it had
	// not reached yet.
	for range 2 {
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			break
		}
		for _, t := range tasks {
			if t.Name() != self {
				raiseThreadSlack(t.Name(), tgid)
			}
		}
	}
	return orig
})

// raiseThreadSlack gives the thread tid timerSlack if its status has the
// line tgid (this process's "\nTgid:\t<pid>\n"). A thread's slack is only
// at /proc/<tid>, where a tid that has exited could name another
// process's thread by now: the directory, once open, stays that thread's,
// and its status says whose it is.
func raiseThreadSlack(tid string, tgid []byte) {
	dir, err := unix.Open("/proc/"+tid, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	defer unix.Close(dir)
	status, err := readAt(dir, "status")
	if err != nil || !bytes.Contains(status, tgid) {
		return
	}
	fd, err := unix.Openat(dir, "timerslack_ns", unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	unix.Write(fd, []byte(strconv.Itoa(timerSlack)))
	unix.Close(fd)
}

// readAt reads the small file name in the directory dir.
func readAt(dir int, name string) ([]byte, error) {
	fd, err := unix.Openat(dir, name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	buf := make([]byte, 4096)
	n, err := unix.Read(fd, buf)
	if err != nil {
		return nil, err
	}
	return buf[:n], nil
}
