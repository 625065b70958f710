package linux

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/msb-dev/msb/sandbox"
)

// TimerSlack is the timer slack the engine gives its process's threads.
const TimerSlack = timerSlack

// RaiseThreadSlack gives the thread tid TimerSlack if it is this
// process's.
func RaiseThreadSlack(tid int) {
	raiseThreadSlack(strconv.Itoa(tid), []byte("\nTgid:\t"+strconv.Itoa(os.Getpid())+"\n"))
}

// WaitCgroupPool waits until the engine's cgroups made ahead are ready.
func WaitCgroupPool(e *Engine) { e.cg.fill() }

// WritableDir is where the sandbox id's writes are seen from this process:
// the upper directory on its disk, through the engine's descriptor of the
// disk's mount, or in its directory when it has no disk.
func WritableDir(e *Engine, id sandbox.ID) string {
	b := e.lock(id)
	if b == nil {
		return ""
	}
	defer b.mu.Unlock()
	if b.disk == nil {
		return filepath.Join(b.dir, "upper")
	}
	return "/proc/self/fd/" + strconv.Itoa(int(b.disk.mnt.Fd())) + "/upper"
}

// SpawnerPid is the pid of the engine's spawner process.
func SpawnerPid(e *Engine) int {
	e.l.mu.Lock()
	defer e.l.mu.Unlock()
	return e.l.sp.proc.Pid
}

// ReadyInits is how many inits wait spawned ahead.
func ReadyInits(e *Engine) int {
	e.ready.mu.Lock()
	defer e.ready.mu.Unlock()
	return len(e.ready.ready)
}

// ReadyTaken is how many starts took an init spawned ahead.
func ReadyTaken(e *Engine) int {
	e.ready.mu.Lock()
	defer e.ready.mu.Unlock()
	return e.ready.taken
}

// WaitDeleted waits until what Delete left to the background is done.
func WaitDeleted(e *Engine) { e.trash.wait() }

// HoldPids claims pids under the server's pids ceiling as a start does,
// or as the spawn of an init ahead does (refill).
func HoldPids(e *Engine, pids int, refill bool) (func(), error) {
	return e.holdPids("test", pids, refill)
}

// SlotInUse reports whether the engine holds id range slot (its own
// record, not the host-wide lock, which other engines of the same
// process may hold).
func SlotInUse(e *Engine, slot string) bool {
	n, err := strconv.Atoi(strings.TrimSpace(slot))
	if err != nil {
		return false
	}
	e.ids.mu.Lock()
	defer e.ids.mu.Unlock()
	return e.ids.used[n]
}

// BackgroundPatience is how long background work waits at most for the
// engine's calls to leave a quiet moment.
const BackgroundPatience = backgroundPatience

// LastCalls returns when the engine's last start and last command ended.
func LastCalls(e *Engine) (start, command time.Time) {
	e.calls.mu.Lock()
	defer e.calls.mu.Unlock()
	return e.calls.lastStart, e.calls.lastCommand
}
