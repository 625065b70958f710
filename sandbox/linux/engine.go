package linux

import (
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	// Registers the cgo constructor that joins namespaces during
	// `<binary> init`, before the Go runtime starts.
	_ "github.com/opencontainers/runc/libcontainer/nsenter"
	// Without it libcontainer fails with "cgroup manager is not configured
	// to set device rules".
	_ "github.com/opencontainers/cgroups/devices"

	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/configs"
	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox"
	"github.com/msb-dev/msb/sandbox/network"
	"github.com/msb-dev/msb/sandbox/portal"
)

// DefaultCgroupParent is the cgroup, under the root of every hierarchy,
// that holds one cgroup per sandbox.
const DefaultCgroupParent = "msb"

// startTimeout bounds how long Start waits for a new portal to answer.
const startTimeout = 15 * time.Second

// Config locates everything the engine keeps on the host.
type Config struct {
	// StateDir is libcontainer's state root, one directory per container,
	// e.g. <msb home>/run/engine.
	StateDir string
	// SandboxDir holds one directory per sandbox (its rootfs and the
	// portal's log), e.g. <msb home>/sandboxes.
	SandboxDir string
	// PortalBinary is the host path of the binary bind-mounted read-only
	// at /.msb/msb and run as `/.msb/msb portal`; msb passes its own
	// executable.
	PortalBinary string
	// CgroupParent is the cgroup holding the sandboxes' cgroups; default
	// DefaultCgroupParent.
	CgroupParent string
	// AllowDynamicPortal runs a dynamically linked portal in OCI images
	// anyway: for tests whose images carry the host's C library.
	AllowDynamicPortal bool
	// Log gets the engine's warnings (a portal binary that cannot run in
	// images); nil: slog.Default().
	Log *slog.Logger `json:"-"`
	// LayerLock, if set, is a file (the image store's pull lock) locked
	// shared while a sandbox records its image layers and mounts them:
	// the store prunes layers only under it exclusively, after reading
	// which layers sandboxes use (LayersInUse).
	LayerLock string
}

// MaybeInit runs libcontainer's container setup when the process was
// started as `<binary> init` (libcontainer re-executes its own binary that
// way for every sandbox) and never returns then; otherwise it returns at
// once. Call it before anything else in main, or from an init function.
func MaybeInit() {
	if len(os.Args) > 1 && os.Args[1] == "init" {
		libcontainer.Init() // never returns
	}
}

// Engine runs sandboxes as libcontainer containers. It implements
// sandbox.Engine. Calls on different sandboxes never wait on each other;
// lifecycle calls on the same sandbox are serialised.
type Engine struct {
	cfg Config

	mu    sync.Mutex      // guards boxes only; never held across slow work
	boxes map[string]*box // by ID.Key()

	host hostLimits // what the host lets every sandbox have
	// dynamicPortal is set when the portal binary needs the host's C
	// library, so it cannot run inside an OCI image's root.
	dynamicPortal bool
}

// buildStatic is the README's command that builds msb as it must be built
// to run inside any image.
const buildStatic = `go build -tags netgo,osusergo -ldflags '-extldflags "-static"' -o msb .`

// needsLoader reports whether the ELF binary at path is dynamically linked
// (it names a program interpreter, the C library's loader).
func needsLoader(path string) (bool, error) {
	f, err := elf.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return true, nil
		}
	}
	return false, nil
}

// portalClient is what the engine uses of a portal.Client.
type portalClient interface {
	Ping(ctx context.Context) error
	Exec(ctx context.Context, req sandbox.ExecRequest) (sandbox.ExecResult, error)
	RunCode(ctx context.Context, lang sandbox.Language, code string, timeout time.Duration) (sandbox.ReplResult, error)
	Spawn(ctx context.Context, req sandbox.ExecRequest, out func(sandbox.Line)) (int, error)
	Close() error
}

var (
	_ sandbox.Engine  = (*Engine)(nil)
	_ sandbox.Spawner = (*Engine)(nil)
	_ sandbox.Dialer  = (*Engine)(nil)

	_ sandbox.ExitWatcher = (*Engine)(nil)
)

// box is one sandbox this Engine knows: created by it, or found on disk
// and being deleted.
type box struct {
	id  sandbox.ID
	dir string // <SandboxDir>/<key>

	mu       sync.Mutex // serialises lifecycle calls; held briefly by Exec and friends
	gone     bool       // deleted: the map no longer holds this box
	leftover bool       // left by an earlier engine: only Stop, Inspect and Delete work
	spec     sandbox.Spec
	config   *configs.Config
	ctr      *libcontainer.Container // nil after Stop, until the next Start
	proc     *libcontainer.Process   // the portal, while started
	client   portalClient
	done     chan struct{} // closed when the portal has exited; nil before the first Start
	started  time.Time
	link     *network.Link // the sandbox's network while it runs with one (network.go)
}

// New returns an Engine keeping its state in cfg's directories, creating
// them if needed. It returns an error wrapping errdefs.ErrInvalid
// when a path is missing or relative or the portal binary is not a file,
// errdefs.ErrUnavailable when the server's own OOM score would make its
// sandboxes immune to the OOM killer (see initOOMScore), and the underlying
// error when a directory cannot be created.
func New(cfg Config) (*Engine, error) {
	if cfg.CgroupParent == "" {
		cfg.CgroupParent = DefaultCgroupParent
	}
	for name, p := range map[string]string{"StateDir": cfg.StateDir, "SandboxDir": cfg.SandboxDir, "PortalBinary": cfg.PortalBinary} {
		if !filepath.IsAbs(p) {
			return nil, fmt.Errorf("linux engine: %s %q must be an absolute path: %w", name, p, errdefs.ErrInvalid)
		}
	}
	if strings.Contains(cfg.CgroupParent, "..") || strings.HasPrefix(cfg.CgroupParent, "/") {
		return nil, fmt.Errorf("linux engine: cgroup parent %q must be a relative path: %w", cfg.CgroupParent, errdefs.ErrInvalid)
	}
	if fi, err := os.Stat(cfg.PortalBinary); err != nil || !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("linux engine: portal binary %q is not a file: %w", cfg.PortalBinary, errdefs.ErrInvalid)
	}
	for _, d := range []string{cfg.StateDir, cfg.SandboxDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("linux engine: %w", err)
		}
	}
	host, err := probeHost()
	if err != nil {
		return nil, err
	}
	dynamic, err := needsLoader(cfg.PortalBinary)
	if err != nil {
		return nil, fmt.Errorf("linux engine: portal binary %q: %w", cfg.PortalBinary, err)
	}
	if dynamic {
		log := cfg.Log
		if log == nil {
			log = slog.Default()
		}
		log.Warn("this msb binary is dynamically linked: it runs sandboxes of the host image, but not of OCI images, which lack the host's C library; build it statically: " + buildStatic)
	}
	return &Engine{
		cfg:           cfg,
		boxes:         map[string]*box{},
		host:          host,
		dynamicPortal: dynamic,
	}, nil
}

func (e *Engine) cgroupPath(key string) string { return "/" + e.cfg.CgroupParent + "/" + key }

// Close removes the engine's cgroup parent from every hierarchy once the
// sandboxes are gone, so a server that stops leaves no empty cgroups
// behind. A parent that still holds a sandbox (one that could not be
// deleted) stays, for the next server's recovery; its error is returned.
// Only the parent's last component is removed: the levels above it may be
// shared with other servers.
func (e *Engine) Close() error {
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/*", e.cfg.CgroupParent))
	if d := filepath.Join("/sys/fs/cgroup", e.cfg.CgroupParent); cgroups.IsCgroup2UnifiedMode() {
		dirs = append(dirs, d)
	}
	var errs []error
	for _, d := range dirs {
		if err := os.Remove(d); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}

func notFound(id sandbox.ID) error { return fmt.Errorf("sandbox %s: %w", id, errdefs.ErrNotFound) }

func leftoverErr(id sandbox.ID) error {
	return fmt.Errorf("sandbox %s was left by an earlier server process and must be deleted first: %w", id, errdefs.ErrConflict)
}

// lock returns the sandbox's box, locked, or nil when this Engine does not
// know it.
func (e *Engine) lock(id sandbox.ID) *box {
	for {
		e.mu.Lock()
		b := e.boxes[id.Key()]
		e.mu.Unlock()
		if b == nil {
			return nil
		}
		b.mu.Lock()
		if !b.gone {
			return b
		}
		b.mu.Unlock() // deleted meanwhile; the key may have a new box
	}
}

// onDisk reports whether an earlier engine left anything of the sandbox.
func (e *Engine) onDisk(key string) bool {
	for _, p := range []string{filepath.Join(e.cfg.StateDir, key), filepath.Join(e.cfg.SandboxDir, key)} {
		if _, err := os.Lstat(p); err == nil {
			return true
		}
	}
	return false
}

// lockOrAdopt is lock, but a sandbox left on disk by an earlier engine gets
// a leftover box so that concurrent calls on it are serialised too.
func (e *Engine) lockOrAdopt(id sandbox.ID) *box {
	if b := e.lock(id); b != nil {
		return b
	}
	key := id.Key()
	if !e.onDisk(key) {
		return nil
	}
	nb := &box{id: id, dir: filepath.Join(e.cfg.SandboxDir, key), leftover: true}
	nb.mu.Lock()
	e.mu.Lock()
	if e.boxes[key] != nil { // lost a race; use the winner
		e.mu.Unlock()
		return e.lock(id)
	}
	e.boxes[key] = nb
	e.mu.Unlock()
	return nb
}

// forget removes a locked box from the map for good.
func (e *Engine) forget(b *box) {
	b.gone = true
	e.mu.Lock()
	if e.boxes[b.id.Key()] == b {
		delete(e.boxes, b.id.Key())
	}
	e.mu.Unlock()
}

// Create prepares the sandbox: its root file system under SandboxDir
// (spec.Root's directories, links and files; /etc/hostname set to the
// sandbox's hostname) and its libcontainer container in StateDir. Nothing
// runs until Start. It returns an error wrapping errdefs.ErrInvalid
// for a bad ID or spec, errdefs.ErrConflict when the sandbox already exists
// (or an earlier server left it behind), and errdefs.ErrUnavailable when the
// container cannot be set up.
func (e *Engine) Create(ctx context.Context, id sandbox.ID, spec sandbox.Spec) error {
	key := id.Key()
	if id.IsZero() || !validKey(key) {
		return fmt.Errorf("sandbox %s: bad sandbox ID: %w", id, errdefs.ErrInvalid)
	}
	if spec.Workdir == "" {
		spec.Workdir = "/"
	}
	if err := checkSpec(spec); err != nil {
		return fmt.Errorf("sandbox %s: %w", id, err)
	}

	b := &box{id: id, dir: filepath.Join(e.cfg.SandboxDir, key), spec: spec}
	b.mu.Lock()
	defer b.mu.Unlock()
	e.mu.Lock()
	if e.boxes[key] != nil {
		e.mu.Unlock()
		return fmt.Errorf("sandbox %s already exists: %w", id, errdefs.ErrConflict)
	}
	if e.onDisk(key) {
		e.mu.Unlock()
		return leftoverErr(id)
	}
	e.boxes[key] = b
	e.mu.Unlock()

	if err := e.create(b); err != nil {
		if ctr := b.ctr; ctr != nil {
			_ = ctr.Destroy()
		}
		_ = removeSandboxDir(b.dir)
		e.forget(b)
		return err
	}
	return nil
}

func (e *Engine) create(b *box) error {
	hostname := b.spec.Hostname
	if hostname == "" {
		hostname = b.id.Name()
	}
	rootfs := filepath.Join(b.dir, "rootfs")
	if err := os.Mkdir(b.dir, 0o700); err != nil {
		return fmt.Errorf("sandbox %s: %w", b.id, err)
	}
	if err := buildRootFS(b.dir, rootfs, b.spec, hostname, e.cfg.LayerLock); err != nil {
		return fmt.Errorf("sandbox %s: building root file system: %w", b.id, err)
	}
	oci := ociSpec(b.id, b.spec, rootfs, e.cfg.PortalBinary, e.cfg.CgroupParent, e.host)
	cfg, err := libcontainerConfig(oci)
	if err != nil {
		return fmt.Errorf("sandbox %s: %w: %w", b.id, err, errdefs.ErrInvalid)
	}
	b.config = cfg
	return e.newContainer(b)
}

func (e *Engine) newContainer(b *box) error {
	ctr, err := libcontainer.Create(e.cfg.StateDir, b.id.Key(), b.config)
	if err != nil {
		return fmt.Errorf("sandbox %s: creating container: %w: %w", b.id, err, errdefs.ErrUnavailable)
	}
	b.ctr = ctr
	b.proc, b.done, b.client = nil, nil, nil
	return nil
}

// validKey: libcontainer accepts letters, digits and _+-. in container IDs.
func validKey(key string) bool {
	for _, c := range key {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-', c == '.':
		default:
			return false
		}
	}
	return key != ""
}

// running reports whether the portal is up; b.mu must be held.
func (b *box) running() bool {
	if b.done == nil {
		return false
	}
	select {
	case <-b.done:
		return false
	default:
		return true
	}
}

// Start starts the sandbox's portal as its init and waits until it answers
// a ping. A stopped sandbox starts again with the files it had. It returns
// an error wrapping errdefs.ErrNotFound for an unknown sandbox,
// errdefs.ErrConflict when it is already running (or was left by an
// earlier server), and errdefs.ErrUnavailable when the portal does not
// start or answer; the portal's log is quoted in that error.
func (e *Engine) Start(ctx context.Context, id sandbox.ID) error {
	b := e.lock(id)
	if b == nil {
		if e.onDisk(id.Key()) {
			return leftoverErr(id)
		}
		return notFound(id)
	}
	defer b.mu.Unlock()
	if b.leftover {
		return leftoverErr(id)
	}
	if b.running() {
		return fmt.Errorf("sandbox %s is already running: %w", id, errdefs.ErrConflict)
	}
	if len(b.spec.Root.Layers) > 0 && e.dynamicPortal && !e.cfg.AllowDynamicPortal {
		return errdefs.Invalidf("this msb server is a dynamically linked build, which cannot run inside an OCI image (it needs the host's C library): use the built-in host image (microsandbox/python), or build msb statically with %s and restart it", buildStatic)
	}
	if b.done != nil || b.ctr == nil {
		// libcontainer runs one init per container: after a stop, start
		// afresh from the same config and root file system.
		e.teardownContainer(b)
		if err := e.newContainer(b); err != nil {
			return err
		}
	}
	return e.start(ctx, b)
}

func (e *Engine) start(ctx context.Context, b *box) error {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("sandbox %s: socketpair: %w: %w", b.id, err, errdefs.ErrUnavailable)
	}
	portalEnd := os.NewFile(uintptr(fds[0]), "portal")
	serverEnd := os.NewFile(uintptr(fds[1]), "server")
	conn, err := net.FileConn(serverEnd)
	serverEnd.Close()
	if err != nil {
		portalEnd.Close()
		return fmt.Errorf("sandbox %s: %w: %w", b.id, err, errdefs.ErrUnavailable)
	}
	logPath := filepath.Join(b.dir, "portal.log")
	logw, err := openBoundedLog(logPath)
	if err != nil {
		portalEnd.Close()
		conn.Close()
		return fmt.Errorf("sandbox %s: %w: %w", b.id, err, errdefs.ErrUnavailable)
	}
	extra := []*os.File{portalEnd} // fd 3 in the portal
	tasks, tree, err := userPidsCgroup(e.cgroupPath(b.id.Key()), b.spec.Pids)
	if err != nil {
		portalEnd.Close()
		conn.Close()
		logw.Close()
		return fmt.Errorf("sandbox %s: %w: %w", b.id, err, errdefs.ErrUnavailable)
	}
	if tasks != nil {
		extra = append(extra, tasks) // fd 4 in the portal
		defer tasks.Close()
	}
	if tree != nil {
		extra = append(extra, tree) // fd 5 in the portal
		defer tree.Close()
	}
	proc := &libcontainer.Process{
		Args:       []string{portalPath, portalRole},
		Env:        b.spec.Env,
		Cwd:        b.spec.Workdir,
		ExtraFiles: extra,
		Stdout:     logw,
		Stderr:     logw,
		Init:       true,
		UID:        int(b.spec.User.UID),
		GID:        int(b.spec.User.GID),
	}
	for _, g := range b.spec.User.AdditionalGids {
		proc.AdditionalGroups = append(proc.AdditionalGroups, int(g))
	}
	err = b.ctr.Run(proc)
	portalEnd.Close() // the portal holds it now; EOF on conn must mean the portal is gone
	if err != nil {
		conn.Close()
		logw.Close()
		e.teardownContainer(b)
		return fmt.Errorf("sandbox %s: starting portal: %w: %w", b.id, err, errdefs.ErrUnavailable)
	}
	done := make(chan struct{})
	go func() {
		_, _ = proc.Wait() // reaps the init; cmd.Wait also drains its output into the log
		logw.Close()
		close(done)
	}()
	client := portal.NewClient(conn)
	client.SetRlimits(b.spec.Rlimits)
	b.proc, b.done, b.client, b.started = proc, done, client, time.Now()
	pid, err := proc.Pid()
	if err == nil {
		err = e.attachNetwork(ctx, b, pid)
	}
	if err != nil {
		e.kill(b)
		e.teardownContainer(b)
		return err
	}

	pctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	if err := client.Ping(pctx); err != nil {
		e.kill(b)
		e.teardownContainer(b)
		msg := logTail(logPath)
		if msg != "" {
			msg = "; portal log: " + msg
		}
		return fmt.Errorf("sandbox %s: portal did not answer: %w%s: %w", b.id, err, msg, errdefs.ErrUnavailable)
	}
	return nil
}

// kill stops the portal (and with it the whole PID namespace) and waits for
// it; b.mu must be held.
func (e *Engine) kill(b *box) {
	if b.done == nil {
		return
	}
	if b.running() && b.ctr != nil {
		_ = b.ctr.Signal(unix.SIGKILL)
	}
	select {
	case <-b.done:
	case <-time.After(30 * time.Second):
		// An init that survives SIGKILL this long is stuck in the kernel
		// (D state); Destroy will report its cgroup as busy.
	}
	e.detachNetwork(b)
	if b.client != nil {
		b.client.Close()
	}
	b.client = nil
}

// teardownContainer releases the container's cgroups and state after its
// init is gone; b.mu must be held. The root file system stays.
func (e *Engine) teardownContainer(b *box) {
	if b.ctr != nil {
		_ = b.ctr.Destroy()
		b.ctr = nil
	}
}

// Stop kills every process in the sandbox and releases its cgroups; its
// files stay until Delete. Stopping a stopped sandbox does nothing. It
// returns an error wrapping errdefs.ErrNotFound for an unknown sandbox, and
// errdefs.ErrUnavailable when a sandbox left by an earlier server cannot be
// killed.
func (e *Engine) Stop(ctx context.Context, id sandbox.ID) error {
	b := e.lockOrAdopt(id)
	if b == nil {
		return notFound(id)
	}
	defer b.mu.Unlock()
	if b.leftover {
		if err := e.killLeftover(b.id.Key()); err != nil {
			return fmt.Errorf("sandbox %s: %w: %w", id, err, errdefs.ErrUnavailable)
		}
		return nil
	}
	if b.done == nil { // created, never started
		return nil
	}
	e.kill(b)
	e.teardownContainer(b)
	return nil
}

// Delete kills the sandbox and releases everything it holds: processes,
// cgroups, libcontainer state, its directory and any mount left under it.
// Deleting a missing sandbox is not an error; sandboxes left by an earlier
// server are deleted the same way. It returns an error wrapping
// errdefs.ErrUnavailable when something cannot be released (the sandbox
// stays known, so Delete can be retried).
func (e *Engine) Delete(ctx context.Context, id sandbox.ID) error {
	b := e.lockOrAdopt(id)
	if b == nil {
		return nil
	}
	defer b.mu.Unlock()
	var errs []error
	if b.leftover {
		if err := e.killLeftover(id.Key()); err != nil {
			errs = append(errs, err)
		}
	} else {
		e.kill(b)
		if b.ctr != nil {
			if err := b.ctr.Destroy(); err != nil {
				errs = append(errs, err)
			}
			b.ctr = nil
		}
	}
	// Whatever libcontainer could not remove (or never recorded).
	if err := os.RemoveAll(filepath.Join(e.cfg.StateDir, id.Key())); err != nil {
		errs = append(errs, err)
	}
	if err := removeCgroupDirs(e.cgroupPath(id.Key())); err != nil {
		errs = append(errs, err)
	}
	if err := removeSandboxDir(b.dir); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return fmt.Errorf("sandbox %s: delete: %w: %w", id, errors.Join(errs...), errdefs.ErrUnavailable)
	}
	e.forget(b)
	return nil
}

// killLeftover kills and destroys a container an earlier engine started.
func (e *Engine) killLeftover(key string) error {
	ctr, err := libcontainer.Load(e.cfg.StateDir, key)
	if errors.Is(err, libcontainer.ErrNotExist) {
		return nil // created but never started: nothing runs
	} else if err != nil {
		return fmt.Errorf("loading container: %w", err)
	}
	if st, err := ctr.Status(); err == nil && st != libcontainer.Stopped {
		if err := ctr.Signal(unix.SIGKILL); err != nil && !errors.Is(err, libcontainer.ErrNotRunning) {
			return fmt.Errorf("killing container: %w", err)
		}
		// Not our child: poll until the kernel has torn it down.
		deadline := time.Now().Add(30 * time.Second)
		for {
			st, err := ctr.Status()
			if err != nil || st == libcontainer.Stopped {
				break
			}
			if time.Now().After(deadline) {
				return errors.New("container init survived SIGKILL for 30s")
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return ctr.Destroy()
}

// Inspect reports the sandbox's state, including a sandbox left by an
// earlier server. It returns an error wrapping errdefs.ErrNotFound when the
// sandbox does not exist.
func (e *Engine) Inspect(ctx context.Context, id sandbox.ID) (sandbox.Status, error) {
	b := e.lock(id)
	if b == nil {
		if st, ok := e.leftoverStatus(id); ok {
			return st, nil
		}
		return sandbox.Status{}, notFound(id)
	}
	defer b.mu.Unlock()
	if b.leftover {
		if st, ok := e.leftoverStatus(id); ok {
			return st, nil
		}
		return sandbox.Status{}, notFound(id)
	}
	st := sandbox.Status{ID: id, State: sandbox.StateCreated}
	switch {
	case b.running():
		st.State, st.Started = sandbox.StateRunning, b.started
		if pid, err := b.proc.Pid(); err == nil {
			st.Pid = pid
		}
	case b.done != nil || b.ctr == nil:
		st.State = sandbox.StateStopped
	}
	return st, nil
}

// leftoverStatus describes a sandbox found on disk that this Engine did not
// create.
func (e *Engine) leftoverStatus(id sandbox.ID) (sandbox.Status, bool) {
	if !e.onDisk(id.Key()) {
		return sandbox.Status{}, false
	}
	st := sandbox.Status{ID: id, State: sandbox.StateStopped}
	ctr, err := libcontainer.Load(e.cfg.StateDir, id.Key())
	if err != nil {
		return st, true
	}
	if s, err := ctr.State(); err == nil {
		st.Started = s.Created
		if cs, err := ctr.Status(); err == nil && cs != libcontainer.Stopped {
			st.State, st.Pid = sandbox.StateRunning, s.InitProcessPid
		}
	}
	return st, true
}

// Recover lists the sandboxes found in StateDir and SandboxDir that this
// Engine did not create: those of a server process that died. They are not
// re-adopted (their portals exited with the server's connection); the
// caller deletes them with Delete. It returns an error wrapping
// errdefs.ErrUnavailable when the directories cannot be read.
func (e *Engine) Recover(ctx context.Context) ([]sandbox.Status, error) {
	keys := map[string]bool{}
	for _, d := range []string{e.cfg.StateDir, e.cfg.SandboxDir} {
		entries, err := os.ReadDir(d)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("recover: %w: %w", err, errdefs.ErrUnavailable)
		}
		for _, en := range entries {
			if en.IsDir() {
				keys[en.Name()] = true
			}
		}
	}
	var out []sandbox.Status
	for key := range keys {
		e.mu.Lock()
		b := e.boxes[key]
		e.mu.Unlock()
		if b != nil && !b.leftover {
			continue
		}
		id, err := sandbox.ParseKey(key)
		if err != nil {
			continue // not ours: sandbox keys are always namespace.name
		}
		if st, ok := e.leftoverStatus(id); ok {
			out = append(out, st)
		}
	}
	return out, nil
}

// client returns the portal client of a running sandbox.
func (e *Engine) client(id sandbox.ID) (portalClient, *box, error) {
	b := e.lock(id)
	if b == nil {
		if e.onDisk(id.Key()) {
			return nil, nil, leftoverErr(id)
		}
		return nil, nil, notFound(id)
	}
	defer b.mu.Unlock()
	if b.leftover {
		return nil, nil, leftoverErr(id)
	}
	if !b.running() {
		return nil, nil, fmt.Errorf("sandbox %s is not running: %w", id, errdefs.ErrConflict)
	}
	return b.client, b, nil
}

// callErr classifies a failed portal call: a portal that died meanwhile
// means the sandbox stopped under the call.
func callErr(b *box, what string, err error) error {
	b.mu.Lock()
	done := b.done
	b.mu.Unlock()
	exited := false
	if errors.Is(err, errdefs.ErrUnavailable) {
		// A closed connection usually means the portal is gone: give the
		// init a moment to be reaped.
		select {
		case <-done:
			exited = true
		case <-time.After(time.Second):
		}
	} else {
		select {
		case <-done:
			exited = true
		default:
		}
	}
	if !exited {
		return fmt.Errorf("sandbox %s: %s: %w", b.id, what, err)
	}
	// The portal's last words say whether it was killed or crashed: the
	// client gets their first line, the server's log all of them.
	logPath := filepath.Join(b.dir, "portal.log")
	msg := lastWords(logPath)
	if msg != "" {
		slog.Warn("sandbox stopped during a call", "sandbox", b.id.String(), "call", what, "portal_log", logTail(logPath))
		msg = " (the sandbox's agent said: " + msg + ")"
	}
	return fmt.Errorf("sandbox %s stopped during %s%s: %w", b.id, what, msg, errdefs.ErrConflict)
}

// Exec runs a command in the sandbox through its portal. It returns an
// error wrapping errdefs.ErrNotFound for an unknown sandbox,
// errdefs.ErrConflict when the sandbox is not running (or stops during the
// call), and errdefs.ErrUnavailable when the portal fails. A command that
// cannot be started is a result (exit code 127 or 126), not an error.
func (e *Engine) Exec(ctx context.Context, id sandbox.ID, req sandbox.ExecRequest) (sandbox.ExecResult, error) {
	c, b, err := e.client(id)
	if err != nil {
		return sandbox.ExecResult{}, err
	}
	res, err := c.Exec(ctx, req)
	if err != nil {
		return res, callErr(b, fmt.Sprintf("exec %q", req.Command), err)
	}
	return res, nil
}

// Spawn runs a background command in the running sandbox id, calling out
// for every line it prints until it exits or ctx ends, and returns its exit
// code. Errors are as for Exec.
func (e *Engine) Spawn(ctx context.Context, id sandbox.ID, req sandbox.ExecRequest, out func(sandbox.Line)) (int, error) {
	c, b, err := e.client(id)
	if err != nil {
		return 0, err
	}
	code, err := c.Spawn(ctx, req, out)
	if err != nil {
		return code, callErr(b, fmt.Sprintf("spawn %q", req.Command), err)
	}
	return code, nil
}

// RunCode evaluates code in the sandbox's live interpreter for lang,
// through its portal. It returns an error wrapping errdefs.ErrNotFound for
// an unknown sandbox, errdefs.ErrConflict when the sandbox is not running
// (or stops during the call), and the portal's error otherwise
// (errdefs.ErrInvalid when the image has no such interpreter).
func (e *Engine) RunCode(ctx context.Context, id sandbox.ID, lang sandbox.Language, code string, timeout time.Duration) (sandbox.ReplResult, error) {
	c, b, err := e.client(id)
	if err != nil {
		return sandbox.ReplResult{}, err
	}
	res, err := c.RunCode(ctx, lang, code, timeout)
	if err != nil {
		return res, callErr(b, fmt.Sprintf("run %s code", lang), err)
	}
	return res, nil
}

// Stats samples the sandbox's cgroups (CPU time, memory charged) and the
// size of its writable layer. It returns an error wrapping
// errdefs.ErrNotFound for an unknown sandbox, errdefs.ErrConflict when it is
// not running, and errdefs.ErrUnavailable when the cgroups cannot be read.
func (e *Engine) Stats(ctx context.Context, id sandbox.ID) (sandbox.Stats, error) {
	b := e.lock(id)
	if b == nil {
		if e.onDisk(id.Key()) {
			return sandbox.Stats{}, leftoverErr(id)
		}
		return sandbox.Stats{}, notFound(id)
	}
	if b.leftover || !b.running() || b.ctr == nil {
		b.mu.Unlock()
		return sandbox.Stats{}, fmt.Errorf("sandbox %s is not running: %w", id, errdefs.ErrConflict)
	}
	ctr, mounts := b.ctr, b.spec.Root.Mounts
	st := sandbox.Stats{Sampled: time.Now(), Network: networkStats(b)}
	b.mu.Unlock()

	cs, err := ctr.Stats()
	if err != nil {
		// A Stop racing with us removes the cgroups we are reading.
		return sandbox.Stats{}, callErr(b, "reading cgroups", fmt.Errorf("%w: %w", err, errdefs.ErrUnavailable))
	}
	if cg := cs.CgroupStats; cg != nil {
		st.CPUTime = time.Duration(cg.CpuStats.CpuUsage.TotalUsage)
		st.MemoryBytes = cg.MemoryStats.Usage.Usage
	}
	disk, err := diskUsage(filepath.Join(b.dir, "rootfs"), mounts)
	if err != nil {
		return sandbox.Stats{}, fmt.Errorf("sandbox %s: measuring disk use: %w: %w", id, err, errdefs.ErrUnavailable)
	}
	st.DiskBytes = disk
	return st, nil
}

// Exited returns a channel closed when the portal (the init) of the running
// sandbox id exits. It returns an error wrapping errdefs.ErrNotFound for an
// unknown sandbox and errdefs.ErrConflict when it is not running.
func (e *Engine) Exited(ctx context.Context, id sandbox.ID) (<-chan struct{}, error) {
	b := e.lock(id)
	if b == nil {
		return nil, notFound(id)
	}
	defer b.mu.Unlock()
	if b.leftover || !b.running() {
		return nil, fmt.Errorf("sandbox %s is not running: %w", id, errdefs.ErrConflict)
	}
	return b.done, nil
}

// DialSandbox connects to TCP port on 127.0.0.1 inside the running
// sandbox id's network namespace, as a process in it would: the socket is
// created on an OS thread that has joined the namespace of the sandbox's
// init for just that call. It returns an error wrapping errdefs.ErrNotFound
// for an unknown sandbox, errdefs.ErrConflict when it is not running, and
// the dial's error (connection refused when nothing listens).
func (e *Engine) DialSandbox(ctx context.Context, id sandbox.ID, port int) (net.Conn, error) {
	b := e.lock(id)
	if b == nil {
		return nil, notFound(id)
	}
	if b.leftover || !b.running() || b.proc == nil {
		b.mu.Unlock()
		return nil, fmt.Errorf("sandbox %s is not running: %w", id, errdefs.ErrConflict)
	}
	pid, err := b.proc.Pid()
	b.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: %w: %w", id, err, errdefs.ErrConflict)
	}
	nsFile, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: network namespace: %w: %w", id, err, errdefs.ErrConflict)
	}
	defer nsFile.Close()
	return dialInNetns(ctx, nsFile, fmt.Sprintf("127.0.0.1:%d", port))
}

// dialInNetns dials addr from the network namespace ns. A socket belongs
// to the namespace of the thread that creates it, so the dial runs on a
// locked OS thread moved into ns and back; a thread that cannot get back
// is never unlocked, so the Go runtime retires it.
func dialInNetns(ctx context.Context, ns *os.File, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		self, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{nil, err}
			return
		}
		defer self.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- result{nil, fmt.Errorf("joining the sandbox's network: %w", err)}
			return
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp4", addr)
		if serr := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); serr != nil {
			ch <- result{c, err} // the thread stays locked and dies with this goroutine
			return
		}
		runtime.UnlockOSThread()
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}
