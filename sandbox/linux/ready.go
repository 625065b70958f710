package linux

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Inits spawned ahead of time (Config.ReadyInits). Most of a cold start
// used to be the init's: the spawner's clone into new namespaces and
// cgroups, the exec, and the start of the Go runtime of a large binary,
// before the init reads its configuration. None of that depends on the
// sandbox, so a few inits wait past it: each in fresh namespaces, in a
// cgroup set of its own (named "init-<owner>-<n>", see readyPrefix),
// with an id range (slot) of its own in a user namespace, blocked on
// boot.ConfigFD before it has read anything. A sandbox's first start takes one
// (takeReady): the set is renamed to the sandbox's key and given its
// limits, the sandbox takes the init's slot in place of its own, and the
// start goes on as a cold one does, sending the mounts and configuration
// the init builds the sandbox from.
//
// What keeps this as safe as a cold start:
//
//   - a ready init has run nothing but msb's own code, and has received
//     nothing: it is no tenant's until it is taken, and it is taken once
//     (out of the list under its lock) and never given back;
//   - only a first start takes one (the sandbox's root holds no files of
//     its own slot yet), never a restart, and never a sandbox of the warm
//     pool, which has its own;
//   - an init that has died while waiting is discarded, and a binding that
//     fails discards the init and starts cold;
//   - a server that dies leaves its ready inits waiting on a socket whose
//     other end is gone: they read EOF and exit, and their cgroup sets
//     carry the dead server's handle, which Recover removes
//     (removeStaleWarm).
//
// Only on cgroup v1: a cgroup v2 cgroup cannot be renamed, so there every
// start spawns its own init. Waiting inits count under the server's
// ceilings (4 threads and about 2 MiB each).

// readyPrefix starts the name of every waiting init's cgroup set,
// "init-<owner>-<n>" (warmOwner): like a pool's handles, no sandbox key is
// ever one, and a dead server's are told from this one's.
const readyPrefix = "init-"

// readySeq numbers the waiting inits of every engine of the process.
var readySeq atomic.Int64

// readyInit is an init spawned ahead, waiting for a sandbox.
type readyInit struct {
	handle string // its cgroup set's name until a start renames it
	slot   int    // its id range (0: no user namespace)
	run    *initRun
}

// readyLimits are a waiting init's: the sandbox's own come when it is
// taken. Its CPU weight is the least (cgroups.yield, until bindReady),
// so that spawning it (its runtime's start, in its cgroup) takes only
// CPU that sandboxes and starts leave.
var readyLimits = limits{memory: 64 << 20, cpus: 1, pids: 64}

// readyInits keeps size inits waiting, refilled in the background from
// the first start on (so that they are never spawned before Recover has
// removed what a crashed server left).
type readyInits struct {
	size int
	mu   sync.Mutex
	// ready are the waiting inits, oldest first.
	ready  []*readyInit
	armed  bool
	closed bool
	taken  int           // how many starts took one
	wake   chan struct{} // a start took one
	quit   chan struct{} // closed by close
	done   chan struct{} // closed when the refill has stopped
}

func newReadyInits(size int) *readyInits {
	return &readyInits{size: size, wake: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{})}
}

// takeReady returns a ready init bound to the sandbox b (b.mu held): its
// cgroups renamed to b's and limited as b's spec says, b given its slot.
// It returns nil when b's start must spawn its own init: no init waits,
// the engine has none, or b is not on its first start.
func (e *Engine) takeReady(b *box) *initRun {
	r := e.ready
	if r.size == 0 || e.cg.v2 || b.done != nil || b.built || b.id.IsZero() {
		return nil
	}
	for {
		ri := r.take(e)
		if ri == nil {
			return nil
		}
		if ri.run.proc.exited() {
			e.log().Warn("an init spawned ahead exited while it waited; its log follows", "log", ri.run.log.held())
			e.discardReady(ri)
			continue
		}
		if err := e.bindReady(b, ri); err != nil {
			e.log().Warn("binding an init spawned ahead to a sandbox failed; the sandbox starts cold", "sandbox", b.String(), "err", err)
			return nil
		}
		return ri.run
	}
}

// bindReady gives ri to b: its cgroups, renamed to b.handle and limited
// to b's spec, and its slot, recorded in b's directory in place of b's.
// On a failure ri is discarded and b is as it was.
func (e *Engine) bindReady(b *box, ri *readyInit) error {
	if err := e.cg.renameOver(ri.handle, b.handle); err != nil {
		e.discardReady(ri)
		return fmt.Errorf("renaming its cgroups: %w", err)
	}
	ri.handle = b.handle
	err := e.cg.relimit(b.handle, specLimits(b.spec))
	if err == nil {
		err = e.cg.unyield(b.handle)
	}
	if err == nil && ri.slot != b.slot {
		err = writeSlot(b.dir, ri.slot)
	}
	if err != nil {
		if b.slot != ri.slot {
			writeSlot(b.dir, b.slot) // back to b's own, which it keeps
		}
		e.discardReady(ri)
		return err
	}
	if ri.slot != b.slot {
		e.ids.free(b.slot)
		b.slot = ri.slot
	}
	ri.run.log.attach(b.dir + "/" + portalLog)
	b.cgroups = true
	return nil
}

// take returns the oldest waiting init, or nil; it starts the refill on
// the first call and wakes it on every other.
func (r *readyInits) take(e *Engine) *readyInit {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	if !r.armed {
		r.armed = true
		go r.refill(e)
	}
	select {
	case r.wake <- struct{}{}:
	default:
	}
	if len(r.ready) == 0 {
		return nil
	}
	ri := r.ready[0]
	r.ready = r.ready[1:]
	r.taken++
	return ri
}

// refill spawns inits while fewer than size wait, each at a quiet moment
// of the engine's calls (calls.waitQuiet), until close. A failure
// is tried again a second later, and logged when its message changes or
// every 10 minutes (a full pids ceiling, say, fails every try).
func (r *readyInits) refill(e *Engine) {
	defer close(r.done)
	var lastErr string
	var lastLog time.Time
	for {
		r.mu.Lock()
		n := len(r.ready)
		r.mu.Unlock()
		if n < r.size {
			if !e.calls.waitQuiet(r.quit) {
				return
			}
			ri, err := e.spawnReady()
			if err == nil {
				lastErr = ""
				r.mu.Lock()
				if !r.closed {
					r.ready = append(r.ready, ri)
					ri = nil
				}
				r.mu.Unlock()
				if ri != nil { // closed meanwhile
					e.discardReady(ri)
					return
				}
				continue
			}
			if msg := err.Error(); msg != lastErr || time.Since(lastLog) > 10*time.Minute {
				e.log().Warn("spawning an init ahead of time failed; starts spawn their own until it works", "err", err)
				lastErr, lastLog = msg, time.Now()
			}
			select {
			case <-r.quit:
				return
			case <-time.After(time.Second):
			}
			continue
		}
		select {
		case <-r.quit:
			return
		case <-r.wake:
		}
	}
}

// close stops the refill and discards the waiting inits.
func (r *readyInits) close(e *Engine) {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	r.closed = true
	close(r.quit)
	armed, ready := r.armed, r.ready
	r.ready = nil
	r.mu.Unlock()
	if armed {
		<-r.done
	}
	var wg sync.WaitGroup
	for _, ri := range ready {
		wg.Go(func() { e.discardReady(ri) })
	}
	wg.Wait()
}

// spawnReady spawns an init to wait for a sandbox: a cgroup set and a
// slot of its own, with readyLimits.
func (e *Engine) spawnReady() (*readyInit, error) {
	handle := ownedName(readyPrefix, readySeq.Add(1))
	ri := &readyInit{handle: handle}
	// Admitted under total_pids as a start is: what starts under way may
	// take stays theirs.
	started, err := e.holdPids(handle, readyLimits.pids, true)
	if err != nil {
		return nil, err
	}
	defer started()
	if e.cfg.UserNamespaces {
		slot, err := e.ids.take()
		if err != nil {
			return nil, err
		}
		ri.slot = slot
		// Its user namespaces (for the idmapped mounts a start makes) are
		// made now, off the start's path.
		for _, vol := range []bool{false, true} {
			if _, err := e.ids.userns(slot, vol); err != nil {
				e.ids.free(slot)
				return nil, fmt.Errorf("user namespace: %w", err)
			}
		}
	}
	if err := e.cg.take(handle, readyLimits); err != nil {
		e.ids.free(ri.slot)
		return nil, fmt.Errorf("cgroups: %w", err)
	}
	var run *initRun
	err = e.cg.yield(handle)
	if err == nil {
		run, err = e.spawnInit(handle, ri.slot, 1, &initLog{})
	}
	if err != nil {
		e.releaseReady(ri)
		return nil, err
	}
	ri.run = run
	return ri, nil
}

// discardReady kills a waiting init and removes its cgroups; its slot is
// free again once they are gone (no process of it is left).
func (e *Engine) discardReady(ri *readyInit) {
	ri.run.portal.Close()
	ri.run.status.Close()
	killWait(ri.run.proc, ri.run.done)
	if err := e.releaseReady(ri); err != nil {
		e.log().Warn("removing the cgroups of an init spawned ahead", "handle", ri.handle, "err", err)
	}
}

// releaseReady removes the cgroups of ri, whose init is gone or was never
// spawned, and then frees its slot: while they cannot be removed, a
// process of it may be left.
func (e *Engine) releaseReady(ri *readyInit) error {
	if err := e.cg.removeSet(ri.handle); err != nil {
		return err
	}
	e.ids.free(ri.slot)
	return nil
}

// initLog is where an init's stdout and stderr go: its sandbox's
// portal.log once it has one (attach), held in memory (up to
// initLogHeld bytes) until then.
type initLog struct {
	mu     sync.Mutex
	buf    []byte
	w      *boundedLog
	closed bool // the init's output has ended
}

const initLogHeld = 16 << 10

func (l *initLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.w != nil {
		return l.w.Write(p)
	}
	if room := initLogHeld - len(l.buf); room > 0 {
		l.buf = append(l.buf, p[:min(len(p), room)]...)
	}
	return len(p), nil
}

// attach sends the log to the file at path from now on, what was held first.
func (l *initLog) attach(path string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.w = openBoundedLog(path)
	if len(l.buf) > 0 {
		l.w.Write(l.buf)
		l.buf = nil
	}
	if l.closed { // the init died while it waited
		l.w.Close()
	}
}

// held returns what the log holds in memory.
func (l *initLog) held() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.buf)
}

func (l *initLog) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	if l.w == nil {
		return nil
	}
	return l.w.Close()
}
