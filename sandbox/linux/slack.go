package linux

import (
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
const timerSlack = 1_000_000

var slack struct {
	once sync.Once
	orig uint64 // the process's slack before raiseTimerSlack; 0 if unknown
}

// raiseTimerSlack gives every thread of this process timerSlack, once per
// process, unless the process has that much already; threads made later
// inherit it from the thread that makes them. It returns the slack the
// process had before (0 if it could not be read): what processes in
// sandboxes get. Other threads than the calling one take CAP_SYS_NICE;
// without it they keep theirs.
func raiseTimerSlack() uint64 {
	slack.once.Do(func() {
		cur, err := unix.PrctlRetInt(unix.PR_GET_TIMERSLACK, 0, 0, 0, 0)
		if err != nil || cur <= 0 {
			return
		}
		slack.orig = uint64(cur)
		if slack.orig >= timerSlack {
			return
		}
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if unix.Prctl(unix.PR_SET_TIMERSLACK, timerSlack, 0, 0, 0) != nil {
			return
		}
		self := strconv.Itoa(unix.Gettid())
		value := []byte(strconv.Itoa(timerSlack))
		// A second pass catches threads made during the first by one it
		// had not reached yet.
		for range 2 {
			tasks, err := os.ReadDir("/proc/self/task")
			if err != nil {
				return
			}
			for _, t := range tasks {
				if t.Name() != self {
					// (Per thread only at /proc/<tid>, not under task/.)
					_ = os.WriteFile("/proc/"+t.Name()+"/timerslack_ns", value, 0)
				}
			}
		}
	})
	return slack.orig
}
