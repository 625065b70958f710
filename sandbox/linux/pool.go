package linux

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox"
	"github.com/msb-dev/msb/sandbox/linux/boot"
)

// Sandboxes started ahead of time (sandbox.Pooler). Prestart starts a
// sandbox as Start does, under a handle instead of an ID: its directory
// (<SandboxDir>/<handle>) and cgroups are named by the handle, it is kept
// in Engine.warm, not Engine.boxes, so that no call by ID can reach it,
// and its portal waits. Adopt moves it into Engine.boxes under the ID a
// start asks for and applies what of that start's spec can change on a
// running sandbox:
//
//   - memory, CPU and pids limits: cgroup writes;
//   - the working directory (made in its root if missing, as the init
//     makes one) and /etc/hostname: written by the server through
//     /proc/<init>/root, resolved inside the sandbox's root as the init
//     writes them;
//   - the hostname: set from a server thread that joins the sandbox's UTS
//     namespace for the call;
//   - the environment and the working directory of everything the portal
//     starts: a "configure" call to the portal, before any other;
//   - rlimits: the portal client's, sent with every call;
//   - the network: attached as SetNetwork attaches one.
//
// The root file system, volumes, user and tmpfs mounts are built by the
// init and cannot change: sandbox.Poolable says when they differ, and
// Adopt refuses then. The directory and cgroups keep the handle's name
// for the sandbox's whole life (cgroup v2 cannot rename a cgroup, nor v1
// one that holds processes across parents), so b.handle, not the key, is
// what the engine's file and cgroup calls use. Handles contain no dot:
// no sandbox key can ever be one.
//
// A handle is adopted at most once: Adopt takes it out of Engine.warm
// before anything else. When a sandbox adopted from a pool stops, Delete
// removes it as any other; nothing is ever given back to a pool.
//
// Recovery: a server that dies leaves the directories and cgroups of its
// pool's sandboxes, waiting or adopted, under handles of its own process
// id. Recover kills what still runs in them and removes them
// (removeStaleWarm) before it lists the sandboxes left by ID (what it
// cannot remove, every Prestart tries again until it is gone); the
// caller's records of adopted ones say running, and the caller marks them
// stopped as it does every record of a crashed server.

var _ sandbox.Pooler = (*Engine)(nil)

// warmPrefix starts every handle: "warm-<pid>-<token>-<n>".
const warmPrefix = "warm-"

// warmOwner is this process's part of its handles, "<pid>-<token>": the
// token is random, so that a server whose process id is a dead one's (as
// the first process of a container always is) never takes that server's
// leftovers for its own sandboxes. Every engine of a process shares it:
// a Recover never removes the sandboxes another engine of the same
// process is running.
var warmOwner = sync.OnceValue(func() string {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return strconv.Itoa(os.Getpid()) + "-" + hex.EncodeToString(b[:])
})

// ownedPrefix starts the names this process gives under prefix (warm,
// ready, dying): "<prefix><owner>-"; ownedName is its n-th.
func ownedPrefix(prefix string) string { return prefix + warmOwner() + "-" }

func ownedName(prefix string, n int64) string {
	return ownedPrefix(prefix) + strconv.FormatInt(n, 10)
}

// Prestart implements sandbox.Pooler: it creates and starts a sandbox of
// spec under a new handle, once the engine's calls leave a quiet moment
// (calls.waitQuiet). It returns an error wrapping errdefs.ErrInvalid
// for a spec with a network (a sandbox gets it when it is adopted) or one
// Create refuses, and Start's errors.
func (e *Engine) Prestart(ctx context.Context, spec sandbox.Spec) (string, error) {
	if spec.Workdir == "" {
		spec.Workdir = "/"
	}
	if spec.Hostname == "" {
		spec.Hostname = sandbox.WarmHostname
	}
	if spec.Network != nil {
		return "", fmt.Errorf("a sandbox started ahead of time gets its network when it is taken: %w", errdefs.ErrInvalid)
	}
	if err := checkSpec(spec); err != nil {
		return "", fmt.Errorf("pooled sandbox: %w", err)
	}
	if err := e.refuseDynamic(spec); err != nil {
		return "", err
	}
	// Work in the background, after the engine's calls (calls.waitQuiet).
	if !e.calls.waitQuiet(ctx.Done()) {
		return "", ctx.Err()
	}
	if e.staleWarm.Load() {
		e.removeStaleWarm()
	}
	e.mu.Lock()
	e.warmSeq++
	handle := ownedName(warmPrefix, int64(e.warmSeq))
	b := &box{handle: handle, dir: filepath.Join(e.cfg.SandboxDir, handle), spec: spec}
	b.mu.Lock()
	defer b.mu.Unlock()
	e.warm[handle] = b
	e.mu.Unlock()

	err := e.create(b)
	if err == nil {
		err = e.start(ctx, b)
	}
	if err != nil {
		e.destroy(b)
		return "", err
	}
	return handle, nil
}

// Adopt implements sandbox.Pooler. It returns an error wrapping
// errdefs.ErrNotFound for an unknown handle (adopted or discarded
// already), errdefs.ErrInvalid for a bad ID or spec or one the sandbox
// cannot become (sandbox.Poolable), errdefs.ErrConflict when id exists,
// and errdefs.ErrUnavailable when the sandbox is no longer running or a
// setting cannot be applied. On any error but the first the sandbox is
// deleted.
func (e *Engine) Adopt(ctx context.Context, handle string, id sandbox.ID, spec sandbox.Spec) error {
	defer e.calls.start()()
	key, spec, err := withDefaults(id, spec)
	if err != nil {
		return err
	}
	e.mu.Lock()
	b := e.warm[handle]
	delete(e.warm, handle) // never twice, whatever happens next
	e.mu.Unlock()
	if b == nil {
		return fmt.Errorf("pooled sandbox %q: %w", handle, errdefs.ErrNotFound)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.gone {
		return fmt.Errorf("pooled sandbox %q: %w", handle, errdefs.ErrNotFound)
	}
	fail := func(err error) error {
		e.destroy(b)
		return err
	}
	if err := checkSpec(spec); err != nil {
		return fail(fmt.Errorf("sandbox %s: %w", id, err))
	}
	if err := sandbox.Poolable(b.spec, spec); err != nil {
		return fail(fmt.Errorf("sandbox %s cannot be taken from the pool: %w: %w", id, err, errdefs.ErrInvalid))
	}
	if !b.running() {
		return fail(fmt.Errorf("pooled sandbox %q is no longer running: %w", handle, errdefs.ErrUnavailable))
	}
	// Admitted under total_pids with the start's own limit, as a cold
	// start is (its few processes already counted).
	started, err := e.holdPids(b.String(), spec.Pids, false)
	if err != nil {
		return fail(err)
	}
	defer started()
	e.mu.Lock()
	if e.boxes[key] != nil || e.onDisk(key) {
		e.mu.Unlock()
		return fail(fmt.Errorf("sandbox %s already exists: %w", id, errdefs.ErrConflict))
	}
	b.id = id
	e.boxes[key] = b
	e.mu.Unlock()
	if err := e.apply(ctx, b, spec); err != nil {
		e.destroy(b)
		e.forget(b)
		return err
	}
	return nil
}

// apply gives the running sandbox b holds (b.mu held) what spec has that
// its pool's spec had not (see the top of this file), and makes spec its
// own.
func (e *Engine) apply(ctx context.Context, b *box, spec sandbox.Spec) error {
	unavailable := func(what string, err error) error {
		return fmt.Errorf("sandbox %s: taking it from the pool: %s: %w: %w", b, what, err, errdefs.ErrUnavailable)
	}
	if err := e.cg.relimit(b.handle, specLimits(spec)); err != nil {
		return unavailable("cgroups", err)
	}
	// The pid names the init while it runs: opened before the check, the
	// root is the sandbox's.
	pid := b.proc.Pid
	r, err := boot.OpenRoot("/proc/" + strconv.Itoa(pid) + "/root")
	if err != nil {
		return unavailable("its root", err)
	}
	if !b.proc.alive() {
		r.Close()
		return unavailable("its root", errors.New("its init has exited"))
	}
	if b.slot > 0 {
		r.Base = hostID(b.slot)
	}
	// As the init's first build: /etc/hostname, and the workdir made as a
	// directory of the root (its user's, when msb makes it).
	build := &boot.RootBuild{Layered: true}
	if wd := strings.TrimPrefix(filepath.Clean(spec.Workdir), "/"); wd != "" {
		build.Dirs = []string{wd}
	}
	for _, m := range spec.Root.Mounts {
		build.Mounts = append(build.Mounts, m.Target)
	}
	err = r.Build(build, spec.Hostname, spec.Workdir, spec.User)
	r.Close()
	if err != nil {
		return unavailable("its root", err)
	}
	if err := setHostname(b.proc, spec.Hostname); err != nil {
		return unavailable("hostname", err)
	}
	c, ok := b.client.(configurable)
	if !ok {
		return unavailable("portal", errors.New("its client cannot configure it"))
	}
	env := make([]string, 0, len(spec.Env))
	for _, kv := range spec.Env {
		if k, _, ok := strings.Cut(kv, "="); ok && k != "" && k != boot.InitEnv {
			env = append(env, kv)
		}
	}
	cctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	if err := c.Configure(cctx, env, spec.Workdir); err != nil {
		return unavailable("portal", err)
	}
	c.SetRlimits(spec.Rlimits)
	if spec.Network != nil {
		link, err := e.attachLink(ctx, b, *spec.Network)
		if err != nil {
			return err
		}
		b.link = link
	}
	spec.Root.Dirs = b.spec.Root.Dirs // what its root was built from
	b.spec, b.started = spec, time.Now()
	return nil
}

// configurable is what Adopt uses of a portal.Client beyond portalClient.
type configurable interface {
	Configure(ctx context.Context, env []string, workdir string) error
	SetRlimits(ls []sandbox.Rlimit)
}

// Discard implements sandbox.Pooler: it deletes the waiting sandbox
// handle (an unknown one is not an error). It returns an error wrapping
// errdefs.ErrUnavailable when its cgroups or directory cannot be removed;
// they are left to the next server's recovery.
func (e *Engine) Discard(ctx context.Context, handle string) error {
	e.mu.Lock()
	b := e.warm[handle]
	delete(e.warm, handle)
	e.mu.Unlock()
	if b == nil {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.gone {
		return nil
	}
	if err := e.destroy(b); err != nil {
		return fmt.Errorf("pooled sandbox %q: %w: %w", handle, err, errdefs.ErrUnavailable)
	}
	return nil
}

// destroy kills the sandbox b holds (b.mu held) and removes its cgroups
// and directory; b is gone afterwards (the caller removes it from
// Engine.boxes if it is there).
func (e *Engine) destroy(b *box) error {
	b.gone = true
	e.mu.Lock()
	if e.warm[b.handle] == b {
		delete(e.warm, b.handle)
	}
	e.mu.Unlock()
	e.kill(b)
	var errs []error
	if err := e.releaseCgroups(b); err != nil {
		errs = append(errs, err)
	}
	if err := e.trash.discard(b.dir, e.releaseIsolation(b, len(errs) == 0, nil, nil)); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// discardWarm deletes every sandbox still waiting, at once.
func (e *Engine) discardWarm() {
	e.mu.Lock()
	handles := make([]string, 0, len(e.warm))
	for h := range e.warm {
		handles = append(handles, h)
	}
	e.mu.Unlock()
	var wg sync.WaitGroup
	for _, h := range handles {
		wg.Go(func() {
			if err := e.Discard(context.Background(), h); err != nil {
				e.log().Warn("removing a sandbox of the pool", "handle", h, "err", err)
			}
		})
	}
	wg.Wait()
}

// removeStaleWarm kills and removes what a server that died left of its
// pool's sandboxes, of its inits spawned ahead (ready.go) and of the
// deleted sandboxes whose processes were dying (killAside): directories
// and cgroups named by a handle of another process (an engine of this
// process may hold the others, as the cgroup sets made ahead, see
// removeStalePools). Whatever cannot be removed is logged and tried again
// by the next Prestart (the pool's refills) and the next Recover.
func (e *Engine) removeStaleWarm() {
	e.staleMu.Lock()
	defer e.staleMu.Unlock()
	failed := false
	defer func() { e.staleWarm.Store(failed) }()
	found := map[string]bool{}
	stale := func(name string) bool {
		if strings.Contains(name, ".") {
			return false // a sandbox's key (namespace.name), whatever its namespace is called
		}
		for _, prefix := range []string{warmPrefix, readyPrefix, dyingPrefix} { // sandboxes of a pool, inits spawned ahead, deleted sandboxes
			if strings.HasPrefix(name, prefix) && !strings.HasPrefix(name, ownedPrefix(prefix)) {
				return true
			}
		}
		return false
	}
	if entries, err := os.ReadDir(e.cfg.SandboxDir); err == nil {
		for _, en := range entries {
			if stale(en.Name()) {
				found[en.Name()] = true
			}
		}
	}
	for _, mnt := range e.cg.mounts() {
		entries, _ := os.ReadDir(filepath.Join(mnt, e.cg.parent))
		for _, en := range entries {
			if en.IsDir() && stale(en.Name()) {
				found[en.Name()] = true
			}
		}
	}
	for h := range found {
		// Its id range stays out of use until it is gone: its processes
		// may still run.
		slot := e.ids.reserve(filepath.Join(e.cfg.SandboxDir, h))
		var errs []error
		if err := e.cg.killInit(h); err != nil {
			errs = append(errs, err)
		}
		if err := e.cg.removeSet(h); err != nil {
			errs = append(errs, err)
		}
		if err := removeSandboxDir(filepath.Join(e.cfg.SandboxDir, h)); err != nil {
			errs = append(errs, err)
		}
		if err := errors.Join(errs...); err != nil {
			failed = true
			e.log().Warn("cannot remove a pool's sandbox, a waiting init or a deleted sandbox's cgroups left by an earlier server; the pool's next start of a sandbox tries again", "handle", h, "err", err)
			continue
		}
		e.ids.free(slot)
		e.log().Info("removed a pool's sandbox, a waiting init or a deleted sandbox's cgroups left by an earlier server", "handle", h)
	}
}

// liftSwapLimit lifts the memory+swap limit of the sandbox handle, where
// the host accounts swap (cgroup v1): setLimits then writes memory and
// memory+swap in that order whether they go up or down.
func (c *cgroups) liftSwapLimit(handle string) error {
	if c.v2 || !c.swap || c.memory == "" {
		return nil
	}
	p := filepath.Join(c.dir(c.memory, handle), "memory.memsw.limit_in_bytes")
	if err := os.WriteFile(p, []byte("-1"), 0); err != nil {
		return fmt.Errorf("cgroup limit %s = -1: %w", p, err)
	}
	return nil
}

// setHostname sets the hostname of the UTS namespace of a sandbox's init
// (while it runs), from a locked OS thread that joins the namespace for
// the call. A thread that cannot get back to the server's namespace is
// never unlocked, so the Go runtime retires it.
func setHostname(proc *initProc, name string) error {
	ns, err := proc.openNS("uts")
	if err != nil {
		return err
	}
	defer ns.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self, err := os.Open("/proc/thread-self/ns/uts")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer self.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWUTS); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("joining the sandbox's UTS namespace: %w", err)
			return
		}
		err = unix.Sethostname([]byte(name))
		if serr := unix.Setns(int(self.Fd()), unix.CLONE_NEWUTS); serr != nil {
			errc <- fmt.Errorf("back to the server's UTS namespace: %w", serr) // the thread dies locked
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}
