package linux

import (
	"context"
	"debug/elf"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox"
	"github.com/msb-dev/msb/sandbox/linux/boot"
	"github.com/msb-dev/msb/sandbox/network"
	"github.com/msb-dev/msb/sandbox/network/netns"
	"github.com/msb-dev/msb/sandbox/portal"
)

// DefaultCgroupParent is the cgroup, under the root of every hierarchy,
// that holds one cgroup per sandbox.
const DefaultCgroupParent = "msb"

// startTimeout bounds how long Start waits for a new portal to answer.
const startTimeout = 15 * time.Second

// Config locates everything the engine keeps on the host.
type Config struct {
	// StateDir is the engine's state directory, e.g. <msb home>/run/engine.
	// The engine keeps nothing there any more (a sandbox's cgroups and
	// directory are its state); what earlier versions left there is
	// cleaned up with their sandboxes.
	StateDir string
	// SandboxDir holds one directory per sandbox (its rootfs and the
	// portal's log), e.g. <msb home>/sandboxes.
	SandboxDir string
	// PortalBinary is the host path of the binary run as every sandbox's
	// init, which becomes its portal, and as the spawner (msb's own
	// executable, when it carries no portal binary); Portal, if set, is
	// that binary itself (the one msb carries, sandbox/linux/portalbin),
	// and PortalBinary may then be empty. It is copied into memory once,
	// when the engine starts.
	PortalBinary string
	Portal       io.ReaderAt `json:"-"`
	// CgroupParent is the cgroup holding the sandboxes' cgroups; default
	// DefaultCgroupParent.
	CgroupParent string
	// AllowDynamicPortal runs a dynamically linked portal in OCI images
	// anyway: for tests whose images carry the host's C library.
	AllowDynamicPortal bool
	// Log gets the engine's warnings (a portal binary that cannot run in
	// images); nil: slog.Default().
	Log *slog.Logger `json:"-"`
	// UserNamespaces runs every sandbox in a user namespace of its own,
	// its root an unprivileged host id (see userns.go).
	UserNamespaces bool
	// ReadyDiskMiB is the one disk size (MiB) of which disks are made
	// ahead (diskPoolSize of them; normally the server's default disk):
	// a start of another size makes its disk then. 0: none made ahead.
	ReadyDiskMiB int
	// ReadyInits is how many inits wait spawned ahead for sandboxes'
	// first starts (ready.go); 0: every start spawns its own.
	ReadyInits int
	// Ceilings bound what all the sandboxes hold together, on their
	// parent cgroup; zero fields: none.
	Ceilings Ceilings
	// LayerLock, if set, is a file (the image store's pull lock) locked
	// shared while a sandbox records its image layers: the store prunes
	// layers only under it exclusively, after reading which layers
	// sandboxes use (LayersInUse).
	LayerLock string
}

// Engine runs sandboxes with an in-house launcher (see the package
// documentation). It implements sandbox.Engine. Calls on different
// sandboxes never wait on each other; lifecycle calls on the same sandbox
// are serialised.
type Engine struct {
	cfg Config

	mu    sync.Mutex      // guards boxes, warm, startingPids and dying only; never held across slow work
	boxes map[string]*box // by ID.Key()
	// startingPids is what the pids limits of the sandboxes starting now
	// add up to, refillPids those of the inits being spawned ahead
	// (holdPids).
	startingPids, refillPids int
	// dying are the cgroup sets of the deleted sandboxes whose processes
	// are still being torn down (killAside); dyingGone is closed, and
	// replaced, when one is done (reapAside).
	dying     map[string]bool
	dyingGone chan struct{}
	// warm are the sandboxes started ahead of time, by handle (pool.go).
	warm    map[string]*box
	warmSeq int
	// staleMu serialises removeStaleWarm; staleWarm says its last run
	// left something (a host process holds a cgroup, say), which every
	// Prestart then tries again.
	staleMu   sync.Mutex
	staleWarm atomic.Bool

	host hostLimits // what the host lets every sandbox have
	cg   *cgroups
	l    *launcher
	// templates are the lower layers of roots without image layers.
	templates *templates
	disks     *disks
	ids       *idmaps
	// mountPoint is where every sandbox's init mounts its root, and
	// stageDir where it stages the kernel's file systems (boot.Stage), in
	// its own mount namespace: empty directories. stageMsgs are what
	// sendStage sends.
	mountPoint, stageDir string
	stageMsgs            [2][]byte
	trash                *trash
	ready                *readyInits
	// calls are the engine's starts and commands (quiet.go).
	calls *calls
	// dynamicPortal is set when the portal binary needs the host's C
	// library, so it cannot run inside an OCI image's root.
	dynamicPortal bool
}

// buildStatic is the README's command that builds msb with the static
// portal binary it carries, which runs inside any image; built without it,
// msb itself must be static to do so. A dynamically linked portal binary's
// warning and refusal give it.
const buildStatic = `go generate ./sandbox/linux/portalbin && go build -tags netgo,osusergo,urfave_cli_no_docs -ldflags '-extldflags "-static"' -o msb .`

// refuseDynamic refuses a sandbox of an OCI image (spec) when the portal
// binary is dynamically linked, which cannot run in an image's root.
func (e *Engine) refuseDynamic(spec sandbox.Spec) error {
	if len(spec.Root.Layers) == 0 || !e.dynamicPortal || e.cfg.AllowDynamicPortal {
		return nil
	}
	return errdefs.Invalidf("this msb server runs a dynamically linked binary in its sandboxes (msb itself when built without its portal binary), which cannot run inside an OCI image (it needs the host's C library): use the built-in host image (microsandbox/python), or build msb statically with its portal binary, as the README does (%s), and restart it", buildStatic)
}

// needsLoader reports whether the ELF binary image is dynamically linked
// (it names a program interpreter, the C library's loader).
func needsLoader(image io.ReaderAt) (bool, error) {
	f, err := elf.NewFile(image)
	if err != nil {
		return false, err
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return true, nil
		}
	}
	return false, nil
}

// portalClient is what the engine uses of a portal.Client.
type portalClient interface {
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
	id sandbox.ID // zero while it waits in a pool
	// handle names the sandbox's directory under SandboxDir and its
	// cgroups: its key, or the handle it was started under in a pool
	// (pool.go), which it keeps when it is adopted.
	handle string
	dir    string // <SandboxDir>/<handle>

	mu       sync.Mutex // serialises lifecycle calls; held briefly by Exec and friends
	gone     bool       // deleted: the map no longer holds this box
	leftover bool       // left by an earlier engine: only Stop, Inspect and Delete work
	spec     sandbox.Spec
	template string    // the root's lower layer, for a spec without image layers
	built    bool      // the root has what Spec.Root writes into it
	proc     *initProc // the init (the portal), while started
	client   portalClient
	done     chan struct{} // closed when the portal has exited; nil before the first Start
	started  time.Time
	cgroups  bool          // the sandbox's cgroups exist (from Start to Stop)
	disk     *disk         // the sandbox's own file system, if its spec has a size
	slot     int           // its host id range (userns.go); 0: none, it runs as the host's root
	link     *network.Link // the sandbox's network while it runs with one (network.go)
}

// New returns an Engine keeping its state in cfg's directories, creating
// them if needed, with the sandboxes' parent cgroup made and the portal
// binary copied into memory. It returns an error wrapping
// errdefs.ErrInvalid when a path is missing or relative or the portal
// binary is not a file, errdefs.ErrUnavailable when the server's own OOM
// score would make its sandboxes immune to the OOM killer (see
// initOOMScore), and the underlying error when a directory or a cgroup
// cannot be created. It raises the timer slack of every thread of the
// calling process, for good (see timerSlack).
func New(cfg Config) (*Engine, error) {
	if cfg.CgroupParent == "" {
		cfg.CgroupParent = DefaultCgroupParent
	}
	paths := map[string]string{"StateDir": cfg.StateDir, "SandboxDir": cfg.SandboxDir}
	if cfg.Portal == nil {
		paths["PortalBinary"] = cfg.PortalBinary
	}
	for name, p := range paths {
		if !filepath.IsAbs(p) {
			return nil, fmt.Errorf("linux engine: %s %q must be an absolute path: %w", name, p, errdefs.ErrInvalid)
		}
	}
	if strings.Contains(cfg.CgroupParent, "..") || strings.HasPrefix(cfg.CgroupParent, "/") || strings.HasPrefix(filepath.Base(cfg.CgroupParent), ".") {
		return nil, fmt.Errorf("linux engine: cgroup parent %q must be a relative path: %w", cfg.CgroupParent, errdefs.ErrInvalid)
	}
	// The portal binary, read where it is (not copied onto the heap), into
	// the sealed memfd below.
	image, portalName := cfg.Portal, "the portal binary msb carries"
	if image == nil {
		portalName = fmt.Sprintf("portal binary %q", cfg.PortalBinary)
		f, err := os.Open(cfg.PortalBinary)
		if err != nil {
			return nil, fmt.Errorf("linux engine: %s is not a file: %w", portalName, errdefs.ErrInvalid)
		}
		defer f.Close()
		if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
			return nil, fmt.Errorf("linux engine: %s is not a file: %w", portalName, errdefs.ErrInvalid)
		}
		image = f
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
	dynamic, err := needsLoader(image)
	if err != nil {
		return nil, fmt.Errorf("linux engine: %s: %w", portalName, err)
	}
	if dynamic {
		log := cfg.Log
		if log == nil {
			log = slog.Default()
		}
		log.Warn("the binary sandboxes run (msb itself when built without its portal binary) is dynamically linked: it runs sandboxes of the host image, but not of OCI images, which lack the host's C library; build msb statically with its portal binary, as the README does: " + buildStatic)
	}
	cg, err := findCgroups(cfg.CgroupParent)
	if err != nil {
		return nil, fmt.Errorf("linux engine: cgroups: %w", err)
	}
	if err := cg.setup(); err != nil {
		return nil, fmt.Errorf("linux engine: %w", err)
	}
	if err := cg.setCeilings(cfg.Ceilings); err != nil {
		return nil, fmt.Errorf("linux engine: %w", err)
	}
	cg.removeStalePools()
	host.swap = cg.swap
	bin := &trash{dir: cfg.SandboxDir}
	bin.empty()
	tmpl := &templates{dir: cfg.SandboxDir}
	tmpl.clean()
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	dsk, err := newDisks(cfg.SandboxDir, cfg.ReadyDiskMiB, log)
	if err != nil {
		return nil, fmt.Errorf("linux engine: %w", err)
	}
	mountPoint, stageDir := filepath.Join(cfg.SandboxDir, ".root"), filepath.Join(cfg.SandboxDir, ".stage")
	for _, d := range []string{mountPoint, stageDir} {
		if err := os.Mkdir(d, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("linux engine: %w", err)
		}
	}
	netnsPool := defaultNetnsPool
	if cfg.UserNamespaces {
		netnsPool = 0
		for _, o := range subordinateOverlaps("/etc/subuid", "/etc/subgid") {
			log.Warn("a host user's subordinate ids overlap the id ranges of msb's sandboxes: that user's rootless containers could own sandboxes' and volumes' files; move their range above msb's", "entry", o, "msb_ids", fmt.Sprintf("%d-%d", idBase, hostID(maxSlots+1)-1))
		}
	}
	// Before the spawner starts, which inherits it, and every init with it.
	host.timerSlack = raiseTimerSlack()
	l, err := newLauncher(image, cg, netnsPool)
	if err != nil {
		return nil, fmt.Errorf("linux engine: %w", err)
	}
	return &Engine{
		cfg:           cfg,
		boxes:         map[string]*box{},
		warm:          map[string]*box{},
		dying:         map[string]bool{},
		dyingGone:     make(chan struct{}),
		host:          host,
		cg:            cg,
		l:             l,
		templates:     tmpl,
		disks:         dsk,
		ids:           newIDMaps(slotLockDir),
		mountPoint:    mountPoint,
		stageDir:      stageDir,
		stageMsgs:     stageMessages(cg, stageDir),
		trash:         bin,
		ready:         newReadyInits(cfg.ReadyInits),
		calls:         newCalls(),
		dynamicPortal: dynamic,
	}, nil
}

// Close removes the cgroups made ahead for sandboxes and the engine's
// cgroup parent from every hierarchy once the sandboxes are gone, so a
// server that stops leaves no empty cgroups behind, removes the files its
// sandboxes shared (root templates, their mount point) when no sandbox is
// left in SandboxDir, and frees the portal binary's copy. A parent that
// still holds a sandbox (one that could not be deleted) stays, for the
// next server's recovery; its error is returned. Only the parent's last
// component is removed: the levels above it may be shared with other
// servers. The Engine must not be used afterwards.
func (e *Engine) Close() error {
	e.disks.stop() // the warm sandboxes' disks are not kept
	e.ready.close(e)
	e.discardWarm()
	e.trash.wait()
	e.disks.drain()
	err := e.cg.drain()
	if perr := e.cg.removeParent(); err == nil {
		err = perr
	}
	if e.templates.clean() {
		os.Remove(e.mountPoint)
		os.Remove(e.stageDir)
		e.disks.remove()
	}
	e.l.close()
	e.ids.close()
	return err
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
	for _, p := range []string{filepath.Join(e.cfg.SandboxDir, key), filepath.Join(e.cfg.StateDir, key)} {
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
	nb := &box{id: id, handle: key, dir: filepath.Join(e.cfg.SandboxDir, key), leftover: true}
	nb.slot = e.ids.reserve(nb.dir)
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

// withDefaults checks id and returns its key and spec with the defaults
// of what it leaves out: the working directory /, the hostname id's name.
func withDefaults(id sandbox.ID, spec sandbox.Spec) (string, sandbox.Spec, error) {
	key := id.Key()
	if id.IsZero() || !validKey(key) {
		return "", spec, fmt.Errorf("sandbox %s: bad sandbox ID: %w", id, errdefs.ErrInvalid)
	}
	if spec.Workdir == "" {
		spec.Workdir = "/"
	}
	if spec.Hostname == "" {
		spec.Hostname = id.Name()
	}
	return key, spec, nil
}

// Create prepares the sandbox: its directory under SandboxDir and, for an
// image with layers, the record of the layers it uses. The root file
// system is built by the sandbox's init at its first start, inside the
// sandbox's own mount namespace; the sandbox's cgroups are made ahead of
// time and given to it at start. Nothing runs until Start. It returns an
// error wrapping errdefs.ErrInvalid for a bad ID or spec (a volume whose
// host path leads out of its root included), errdefs.ErrConflict when the
// sandbox already exists (or an earlier server left it behind), and the
// file system's error when the directory cannot be made.
func (e *Engine) Create(ctx context.Context, id sandbox.ID, spec sandbox.Spec) error {
	key, spec, err := withDefaults(id, spec)
	if err != nil {
		return err
	}
	if err := checkSpec(spec); err != nil {
		return fmt.Errorf("sandbox %s: %w", id, err)
	}

	b := &box{id: id, handle: key, dir: filepath.Join(e.cfg.SandboxDir, key), spec: spec}
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
		e.releaseIsolation(b, true, nil, nil)(b.dir)
		_ = removeSandboxDir(b.dir)
		e.forget(b)
		return err
	}
	return nil
}

func (e *Engine) create(b *box) error {
	if err := os.Mkdir(b.dir, 0o700); err != nil {
		return fmt.Errorf("sandbox %s: %w", b, err)
	}
	k, err := e.disks.create(b.dir, b.spec.DiskMiB)
	if err != nil {
		return fmt.Errorf("sandbox %s: %w", b, err)
	}
	b.disk = k
	if e.cfg.UserNamespaces {
		if b.slot, err = e.ids.take(); err != nil {
			return fmt.Errorf("sandbox %s: %w", b, err)
		}
		if err := writeSlot(b.dir, b.slot); err != nil {
			return fmt.Errorf("sandbox %s: %w", b, err)
		}
	}
	if err := prepareRoot(b.dir, b.upperDir(), b.spec.Root.Layers, e.cfg.LayerLock); err != nil {
		return fmt.Errorf("sandbox %s: root file system: %w", b, err)
	}
	if len(b.spec.Root.Layers) == 0 {
		t, err := e.templates.get(b.spec)
		if err != nil {
			return fmt.Errorf("sandbox %s: %w", b, err)
		}
		b.template = t
	}
	// A volume's host path is resolved again, through descriptors, when
	// the sandbox starts; one that leads out of its root already is
	// refused now.
	for _, m := range volumes(b.spec.Root.Mounts) {
		v, _, err := openVolume(m, nil)
		if err != nil {
			return fmt.Errorf("sandbox %s: %w", b, err)
		}
		v.Close()
	}
	return nil
}

// validKey: letters, digits and _-. (a sandbox key is namespace.name).
func validKey(key string) bool {
	for _, c := range key {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-', c == '.':
		default:
			return false
		}
	}
	return key != "" && key[0] != '.'
}

// upperDir is the directory holding the overlay's upper and work
// directories: the sandbox's disk, where the init attaches it, or its
// directory on the host when it has none.
func (b *box) upperDir() string {
	if b.disk != nil {
		return filepath.Join(b.dir, "disk")
	}
	return b.dir
}

// String names the sandbox in messages: its ID, or, while it waits in a
// pool, its handle.
func (b *box) String() string {
	if b.id.IsZero() {
		return "(pooled) " + b.handle
	}
	return b.id.String()
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

// Start starts the sandbox's init, which builds the sandbox around itself
// and becomes its portal, and waits until the init reports the sandbox
// built and itself under the portal's seccomp filter (in a binary linked
// with cgo, which executes the portal afresh, before the portal locks
// itself down: no request is served before it has). A stopped sandbox
// starts again with the files it had. It returns an error
// wrapping errdefs.ErrNotFound for an unknown sandbox,
// errdefs.ErrConflict when it is already running (or was left by an
// earlier server), errdefs.ErrInvalid when the sandbox cannot be built as
// specified (a file volume over a directory of the image, say), and
// errdefs.ErrUnavailable when the init does not start or fails; the
// portal's log is quoted in that error.
func (e *Engine) Start(ctx context.Context, id sandbox.ID) error {
	defer e.calls.start()()
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
	if err := e.refuseDynamic(b.spec); err != nil {
		return err
	}
	if b.done != nil {
		// The previous run is over: release what it held.
		e.kill(b)
		e.releaseCgroups(b)
	}
	return e.start(ctx, b)
}

// childFiles are the descriptors an init is started with, in order from
// fd 0; the server closes its copies once the init holds them.
type childFiles []*os.File

func (fs childFiles) close() {
	for _, f := range fs {
		if f != nil {
			f.Close()
		}
	}
}

func (e *Engine) start(ctx context.Context, b *box) (err error) {
	started, err := e.holdPids(b.String(), b.spec.Pids, false)
	if err != nil {
		return err
	}
	defer started()
	cfg := e.initConfig(b)
	// The init's mounts (the image's host paths, volumes, its root or
	// disk) are made once it runs, while it starts (Go's runtime, its
	// packages), and sent on boot.ConfigFD (initMounts, sendConfig); a request
	// for too many is refused before the clone.
	if n := boot.ConfigFD + 1 + initMountCount(b, cfg); n > boot.MaxInitFiles {
		return fmt.Errorf("sandbox %s: too many volumes and image mounts (%d descriptors, at most %d): %w", b, n, boot.MaxInitFiles, errdefs.ErrInvalid)
	}
	// A sandbox's first start takes an init spawned ahead when one waits
	// (ready.go), or spawns its own.
	run := e.takeReady(b)
	if run == nil {
		if err := e.cg.take(b.handle, specLimits(b.spec)); err != nil {
			return b.unavailable("cgroups", err)
		}
		b.cgroups = true
		logs := &initLog{}
		logs.attach(filepath.Join(b.dir, portalLog))
		if run, err = e.spawnInit(b.handle, b.slot, b.spec.CPUs, logs); err != nil {
			e.releaseCgroups(b)
			if errors.Is(err, errdefs.ErrExhausted) {
				return fmt.Errorf("sandbox %s: %w", b.id, err)
			}
			return fmt.Errorf("sandbox %s: %w: %w", b, err, errdefs.ErrUnavailable)
		}
	}
	defer func() {
		if err != nil {
			run.portal.Close()
			run.status.Close()
			e.kill(b)
			e.releaseCgroups(b)
		}
	}()
	client := portal.NewClient(run.portal, sandbox.TakeOutput)
	client.SetRlimits(b.spec.Rlimits)
	b.proc, b.done, b.client, b.started = run.proc, run.done, client, time.Now()
	logPath := filepath.Join(b.dir, portalLog)
	sctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	mounts, err := e.initMounts(b, cfg)
	defer closeAll(mounts) // the socket holds them once sent
	if err != nil {
		return err
	}
	if err := sendConfig(sctx, run.status, mounts, cfg); err != nil {
		// The init may have died before it read: its log says why.
		return e.startErr(b, logPath, "sending the configuration", err)
	}
	// The network namespace is there from the clone: its link goes in
	// while the init builds the rest.
	if err := e.attachNetwork(ctx, b); err != nil {
		return err
	}

	if err := waitInit(sctx, run.status); err != nil {
		if errors.Is(err, errdefs.ErrInvalid) {
			return fmt.Errorf("sandbox %s: %w", b, err)
		}
		return e.startErr(b, logPath, "set-up failed", err)
	}
	run.status.Close()
	b.built = true
	return nil
}

// portalLog, in a sandbox's directory, is what its init and portal wrote
// to stdout and stderr in its last run.
const portalLog = "portal.log"

// initRun is an init the server spawned, waiting for its configuration
// on boot.ConfigFD, and the server's ends of its descriptors.
type initRun struct {
	proc   *initProc
	portal net.Conn      // the portal's socket
	status net.Conn      // boot.ConfigFD: the mounts and configuration go out, a set-up error comes back
	log    *initLog      // its stdout and stderr
	done   chan struct{} // closed once the init has exited and its log is written
}

// spawnInit spawns an init born in the cgroups handle (made, and limited,
// by the caller), in a user namespace of its own mapping the ids of slot
// (0: none), with a Go runtime of procs threads, writing to logs. Its
// errors are of class Exhausted when the server's pids ceiling is full;
// otherwise they say what failed.
func (e *Engine) spawnInit(handle string, slot, procs int, logs *initLog) (run *initRun, err error) {
	var mine childFiles // the init's copies, closed here once it has them
	var portalConn, status net.Conn
	var logR *os.File // the server's end of the init's log
	defer func() {
		mine.close()
		if err != nil {
			for _, c := range []net.Conn{portalConn, status} {
				if c != nil {
					c.Close()
				}
			}
			if logR != nil {
				logR.Close()
			}
		}
	}()
	tasks, tree, err := e.cg.userPidsCgroup(handle)
	if err != nil {
		return nil, fmt.Errorf("cgroups: %w", err)
	}
	mine = append(mine, tasks, tree)
	portalEnd, c, err := socketPair("portal")
	if err != nil {
		return nil, fmt.Errorf("socketpair: %w", err)
	}
	portalConn = c
	mine = append(mine, portalEnd)
	initEnd, s, err := socketPair("init")
	if err != nil {
		return nil, fmt.Errorf("socketpair: %w", err)
	}
	status = s
	mine = append(mine, initEnd)
	r, logW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("pipe: %w", err)
	}
	logR = r
	mine = append(mine, logW)
	files := childFiles{e.l.devNull, logW, logW, portalEnd, tasks, tree, initEnd}
	if slot > 0 {
		if err := e.cg.chownUserCgroup(handle, hostID(slot)); err != nil {
			return nil, fmt.Errorf("cgroups: %w", err)
		}
	}
	attr := &os.ProcAttr{
		Dir: "/",
		// The portal's Go runtime would size itself from the CPUs of the
		// cgroup it sees at exec, before its cgroup namespace is in place:
		// the host's root. It gets the sandbox's CPU quota instead (and
		// again from its configuration, boot.Config.Procs).
		Env:   []string{boot.InitEnv + "=1", "GOMAXPROCS=" + strconv.Itoa(initProcs(procs))},
		Files: files,
		Sys:   &syscall.SysProcAttr{Cloneflags: sandboxCloneFlags},
	}
	if slot > 0 {
		// The user namespace comes first, and owns the others: a network
		// namespace of its own too, so that its root may bring up
		// loopback, mount sysfs and bind low ports there.
		ids := []syscall.SysProcIDMap{{ContainerID: 0, HostID: hostID(slot), Size: idRange}}
		attr.Sys.Cloneflags |= unix.CLONE_NEWUSER
		attr.Sys.UidMappings, attr.Sys.GidMappings, attr.Sys.GidMappingsEnableSetgroups = ids, ids, true
		// Cloned by the host's root, the init is nobody in its namespace
		// until it takes the namespace's root, S on the host, before its
		// exec.
		attr.Sys.Credential = &syscall.Credential{Uid: 0, Gid: 0}
	}
	var cgTasks []*os.File
	if e.cg.v2 {
		dir, err := e.cg.dirFD(handle)
		if err != nil {
			return nil, fmt.Errorf("cgroups: %w", err)
		}
		defer dir.Close()
		attr.Sys.UseCgroupFD, attr.Sys.CgroupFD = true, int(dir.Fd())
	} else if cgTasks, err = e.cg.tasksFiles(handle); err != nil {
		return nil, fmt.Errorf("cgroups: %w", err)
	}
	proc, err := e.l.spawn(cgTasks, attr, slot > 0)
	closeAll(cgTasks)
	if err != nil {
		if errors.Is(err, unix.EAGAIN) {
			// The ceiling (written by the engine) full: the clone that
			// failed was one process over it.
			if limit, cur := e.cfg.Ceilings.Pids, e.cg.pidsCurrent(); limit > 0 && cur+1 >= limit {
				return nil, errdefs.Exhaustedf("the server's sandboxes run %d processes together, its ceiling (total_pids in config.toml): stop sandboxes, or raise total_pids", cur)
			}
		}
		if errors.Is(err, errSpawnerLost) {
			// An init may have started before the spawner went.
			if kerr := e.cg.killInit(handle); kerr != nil {
				err = fmt.Errorf("%w (and %w)", err, kerr)
			}
		}
		return nil, fmt.Errorf("starting the init: %w", err)
	}
	mine.close() // the init holds them now; EOF on the portal's socket must mean the portal is gone
	mine = nil
	if err := e.sendStage(status, slot > 0); err != nil {
		proc.Kill()
		proc.Wait()
		proc.release()
		return nil, fmt.Errorf("sending the init its stage: %w", err)
	}
	logDone := make(chan struct{})
	go func() {
		io.Copy(logs, logR)
		logR.Close()
		logs.Close()
		close(logDone)
	}()
	done := make(chan struct{})
	go func() {
		proc.Wait()
		select { // every writer of the log is gone with the init's PID namespace
		case <-logDone:
		case <-time.After(time.Second):
			logR.Close()
		}
		close(done)
		proc.release() // its pid may name another process from now on
	}()
	return &initRun{proc: proc, portal: portalConn, status: status, log: logs, done: done}, nil
}

// initProcs is the GOMAXPROCS of an init for a sandbox of cpus CPUs.
func initProcs(cpus int) int { return max(1, min(cpus, runtime.NumCPU())) }

// unavailable is the error of a start of the sandbox that failed at what:
// nothing the caller asked for was wrong.
func (b *box) unavailable(what string, err error) error {
	return fmt.Errorf("sandbox %s: %s: %w: %w", b, what, err, errdefs.ErrUnavailable)
}

// initMountCount is how many mounts initMounts makes for the init of b.
func initMountCount(b *box, cfg *boot.Config) int {
	n := len(volumes(b.spec.Root.Mounts))
	if b.slot > 0 {
		n += len(cfg.Binds) + 1 // the image's host paths, the root
	} else if b.disk != nil {
		n++
	}
	return n
}

// initMounts makes the init's mounts, to be sent on its socket in this
// order (see sendConfig, readConfig): the image's host paths and volumes,
// idmapped in a user namespace, then its root, or its disk; cfg gets the
// volumes' targets. The caller closes them, also on an error.
func (e *Engine) initMounts(b *box, cfg *boot.Config) (mounts []*os.File, err error) {
	unavailable := b.unavailable
	var userns, volUserns *os.File
	if b.slot > 0 {
		if userns, err = e.ids.userns(b.slot, false); err != nil {
			return mounts, unavailable("user namespace", err)
		}
		if volUserns, err = e.ids.userns(b.slot, true); err != nil {
			return mounts, unavailable("user namespace", err)
		}
		// The image's host paths, idmapped, go first among the mounts
		// the init attaches (parents first).
		for _, m := range cfg.Binds {
			fd, err := idmappedClone(-1, m.Source, "", userns, m.ReadOnly)
			if err != nil {
				return mounts, unavailable("image mount "+m.Target, err)
			}
			mounts = append(mounts, os.NewFile(uintptr(fd), "bind"))
			var st unix.Stat_t
			if err := unix.Fstat(fd, &st); err != nil {
				return mounts, unavailable("image mount "+m.Target, err)
			}
			cfg.Volumes = append(cfg.Volumes, boot.VolumeTarget{Target: m.Target, Dir: st.Mode&unix.S_IFMT == unix.S_IFDIR})
		}
		cfg.Binds = nil
	}
	for _, m := range volumes(b.spec.Root.Mounts) {
		v, dir, err := openVolume(m, volUserns)
		if err != nil {
			return mounts, fmt.Errorf("sandbox %s: %w", b, err)
		}
		mounts = append(mounts, v)
		cfg.Volumes = append(cfg.Volumes, boot.VolumeTarget{Target: m.Target, Dir: dir})
	}
	if b.slot > 0 {
		upper := b.upperDir()
		if b.disk != nil {
			upper = b.disk.path()
		}
		root, err := mountRoot(cfg.Layers, filepath.Join(upper, "upper"), filepath.Join(upper, "work"), userns, hostID(b.slot))
		if err != nil {
			return mounts, unavailable("root file system", err)
		}
		mounts = append(mounts, root)
	} else if b.disk != nil {
		d, err := b.disk.clone()
		if err != nil {
			return mounts, unavailable("disk", err)
		}
		mounts = append(mounts, d)
	}
	return mounts, nil
}

// sendStage sends a newly spawned init, on status (the server's end of
// boot.ConfigFD), what it stages before its configuration comes (boot.Stage,
// readStage): one of the engine's two stage messages, for an init with
// and without a user namespace. The socket's buffer holds it: the write
// does not wait.
func (e *Engine) sendStage(status net.Conn, userns bool) error {
	msg := e.stageMsgs[0]
	if userns {
		msg = e.stageMsgs[1]
	}
	_, err := status.Write(msg)
	return err
}

// stageMessages are the stage messages of an engine with cgroups cg and
// stage directory dir, without and with a user namespace: 'S', the
// length of the encoded boot.Stage as 4 bytes big-endian, and the Stage.
func stageMessages(cg *cgroups, dir string) (msgs [2][]byte) {
	st := boot.Stage{Dir: dir, CgroupV2: cg.v2}
	for _, h := range cg.v1 {
		st.Cgroups = append(st.Cgroups, boot.CgroupMount{Dir: filepath.Base(h.mount), Opts: h.opts})
	}
	for i, userns := range []bool{false, true} {
		st.Userns = userns
		data, _ := st.MarshalBinary() // never fails
		msgs[i] = append(binary.BigEndian.AppendUint32([]byte{'S'}, uint32(len(data))), data...)
	}
	return msgs
}

// sendConfig sends the init, on status (the server's end of boot.ConfigFD), the
// descriptors of its mounts in a message 'F' (SCM_RIGHTS), then cfg, and
// shuts the sending side down; an init that does not read them is stuck,
// and no write waits past ctx.
func sendConfig(ctx context.Context, status net.Conn, mounts []*os.File, cfg *boot.Config) error {
	data, _ := cfg.MarshalBinary() // never fails
	fds := make([]int, len(mounts))
	for i, f := range mounts {
		fds[i] = int(f.Fd())
	}
	var rights []byte
	if len(fds) > 0 {
		rights = unix.UnixRights(fds...)
	}
	uc := status.(*net.UnixConn)
	if deadline, ok := ctx.Deadline(); ok {
		uc.SetWriteDeadline(deadline)
	}
	stop := context.AfterFunc(ctx, func() { uc.SetWriteDeadline(time.Now()) })
	defer func() {
		stop()
		uc.SetWriteDeadline(time.Time{})
	}()
	if _, _, err := uc.WriteMsgUnix([]byte{'F'}, rights, nil); err != nil {
		return err
	}
	if _, err := uc.Write(data); err != nil {
		return err
	}
	return uc.CloseWrite()
}

// startErr is the error of a start that failed in the init or the portal,
// with the portal's log.
func (e *Engine) startErr(b *box, logPath, what string, err error) error {
	e.kill(b)
	msg := logTail(logPath)
	if msg != "" {
		msg = "; portal log: " + msg
	}
	return fmt.Errorf("sandbox %s: %s: %w%s: %w", b, what, err, msg, errdefs.ErrUnavailable)
}

// waitInit waits until the init has built the sandbox (it closes its end
// of the status socket) or reports why it could not: an error wrapping
// errdefs.ErrInvalid when the spec cannot be built.
func waitInit(ctx context.Context, status net.Conn) error {
	if dl, ok := ctx.Deadline(); ok {
		status.SetReadDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { status.SetReadDeadline(time.Now()) })
	defer stop()
	data, err := io.ReadAll(io.LimitReader(status, 64<<10))
	if err != nil {
		return err
	}
	if len(data) == 0 {
		return nil
	}
	var rep boot.Report
	if err := json.Unmarshal(data, &rep); err != nil {
		return fmt.Errorf("malformed report from the init: %q", data)
	}
	if rep.Invalid {
		return fmt.Errorf("%s: %w", rep.Error, errdefs.ErrInvalid)
	}
	return errors.New(rep.Error)
}

// socketPair returns a connected pair of unix stream sockets: one end as a
// file for a child, the other as a connection for the server.
func socketPair(name string) (*os.File, net.Conn, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	child := os.NewFile(uintptr(fds[0]), name)
	server := os.NewFile(uintptr(fds[1]), name+"-server")
	conn, err := net.FileConn(server)
	server.Close()
	if err != nil {
		child.Close()
		return nil, nil, err
	}
	return child, conn, nil
}

// initConfig is what the sandbox's init needs to build it.
func (e *Engine) initConfig(b *box) *boot.Config {
	s := b.spec
	c := &boot.Config{
		Root:       e.mountPoint,
		Layers:     s.Root.Layers,
		Upper:      filepath.Join(b.upperDir(), "upper"),
		Work:       filepath.Join(b.upperDir(), "work"),
		Binds:      bindOrder(imageMounts(s.Root.Mounts)),
		Hostname:   s.Hostname,
		Workdir:    s.Workdir,
		User:       s.User,
		Caps:       e.l.caps,
		NoFile:     e.host.nofile,
		OOMScore:   e.host.oomScore,
		TimerSlack: e.host.timerSlack,
		Env:        s.Env,
		Tmpfs:      s.Tmpfs,
		Procs:      initProcs(s.CPUs),
	}
	if b.template != "" {
		c.Layers = []string{b.template}
	}
	if b.disk != nil && b.slot == 0 { // in a user namespace, the server mounts the root, disk included
		c.Disk = b.upperDir()
	}
	if !b.built {
		// The image's entries (in the template already, without layers),
		// /etc/hostname and the workdir.
		c.Build = &boot.RootBuild{Layered: true}
		if b.template == "" {
			c.Build.Dirs, c.Build.Links, c.Build.Files = s.Root.Dirs, s.Root.Links, s.Root.Files
		}
		for _, m := range s.Root.Mounts {
			c.Build.Mounts = append(c.Build.Mounts, m.Target)
		}
	}
	return c
}

// kill stops the portal (and with it the whole PID namespace) and waits for
// it; b.mu must be held.
func (e *Engine) kill(b *box) {
	if b.done == nil {
		return
	}
	if b.running() && b.proc != nil {
		killWait(b.proc, b.done)
	} else {
		waitDone(b.done)
	}
	e.disconnect(b)
}

// disconnect closes the network and the portal connection of b, whose
// init is killed; b.mu held.
func (e *Engine) disconnect(b *box) {
	e.detachNetwork(b)
	if b.client != nil {
		b.client.Close()
	}
	b.client = nil
}

// killWait kills the init proc and waits for done, closed once it has
// exited (see spawnInit).
func killWait(proc *initProc, done <-chan struct{}) {
	_ = proc.Kill()
	waitDone(done)
}

// waitDone waits for an init's done, for at most 30 s: an init that
// survives SIGKILL this long is stuck in the kernel (D state), and
// removing its cgroups will report them busy.
func waitDone(done <-chan struct{}) {
	select {
	case <-done:
	case <-time.After(30 * time.Second):
	}
}

// releaseCgroups removes the cgroups of the sandbox's last run, whose init
// is gone; b.mu must be held. The root file system stays.
func (e *Engine) releaseCgroups(b *box) error {
	if !b.cgroups {
		return nil
	}
	if err := e.cg.removeSet(b.handle); err != nil {
		return err
	}
	b.cgroups = false
	return nil
}

// holdPids admits the start of sandbox name under the server's pids
// ceiling (total_pids): the processes all sandboxes run now, plus the
// limits of the starts under way, plus its own limit, must fit under it,
// so that it can reach its own limit (where its fork fails and its portal
// keeps a reserve, pidsReserve) whatever the others do at that moment. Idle
// sandboxes run a few processes each, so a thousand of them fit where the
// sum of their limits would not; what keeps sandboxes that all fork at
// once from meeting at the ceiling is the namespaces' quotas (README:
// Totals). It returns the function that ends the start's claim, or an
// error of class Exhausted.
//
// The spawn of an init ahead (refill) is admitted the same way, and also
// leaves room for the other spawns under way; a start does not count
// those: a waiting init runs a few threads of the 64 it may, and a start
// must never fail because one was being spawned just then.
func (e *Engine) holdPids(name string, pids int, refill bool) (func(), error) {
	limit := e.cfg.Ceilings.Pids
	if limit <= 0 {
		return func() {}, nil
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	claims := &e.startingPids
	if refill {
		claims = &e.refillPids
	}
	others := func() int { // what the starts (and spawns) under way may take
		if refill {
			return e.startingPids + e.refillPids
		}
		return e.startingPids
	}
	cur := e.cg.pidsCurrent()
	// Processes of deleted sandboxes that are still dying count until
	// they are gone, which takes milliseconds: a start that they alone
	// would keep out waits for them rather than fail.
	var deadline <-chan time.Time
	for cur+others()+pids > limit && len(e.dying) > 0 && cur-e.dyingPids()+others()+pids <= limit {
		if deadline == nil {
			deadline = time.After(dyingWait)
		}
		gone, late := e.dyingGone, false
		e.mu.Unlock()
		select {
		case <-gone:
		case <-deadline:
			late = true
		}
		e.mu.Lock()
		if cur = e.cg.pidsCurrent(); late {
			break
		}
	}
	if cur+others()+pids > limit {
		return nil, fmt.Errorf("sandbox %s: %w", name, errdefs.Exhaustedf("the running sandboxes hold %d processes together and starting ones may take %d, so this one's %d would pass the server's ceiling of %d (total_pids in config.toml): stop a sandbox, or raise total_pids", cur, others(), pids, limit))
	}
	*claims += pids
	return func() {
		e.mu.Lock()
		*claims -= pids
		e.mu.Unlock()
	}, nil
}

// dyingPids is how many processes the sets in e.dying hold; e.mu held.
func (e *Engine) dyingPids() int {
	n := 0
	for set := range e.dying {
		n += e.cg.pidsIn(set)
	}
	return n
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
		if err := e.cg.killInit(b.handle); err != nil {
			return fmt.Errorf("sandbox %s: %w: %w", id, err, errdefs.ErrUnavailable)
		}
		return nil
	}
	if b.done == nil { // created, never started
		return nil
	}
	e.kill(b)
	if err := e.releaseCgroups(b); err != nil {
		return fmt.Errorf("sandbox %s: %w: %w", id, err, errdefs.ErrUnavailable)
	}
	return nil
}

// Delete kills the sandbox and releases everything it holds: processes,
// cgroups, its directory, and whatever an earlier version of the engine
// kept for it (state, mounts on the host). When it returns, its name is
// free, its processes are killed (SIGKILL sent: none runs the sandbox's
// code again) and its network is closed; on cgroup v1 the kernel's
// tear-down of the processes (their memory unmapped, then the cgroups
// removed) goes on in the background, in cgroups renamed aside
// (killAside) that keep counting them under the server's ceilings until
// they are gone. Its mounts are unmounted, its disk wiped or closed and
// its directory removed in the background after that (Close waits for
// all of it). Deleting a missing sandbox is not an error; sandboxes left
// by an earlier server are deleted the same way. It returns an error wrapping errdefs.ErrUnavailable when something
// cannot be released (the sandbox stays known, so Delete can be retried).
func (e *Engine) Delete(ctx context.Context, id sandbox.ID) error {
	b := e.lockOrAdopt(id)
	if b == nil {
		return nil
	}
	defer b.mu.Unlock()
	var errs []error
	var mounts *os.File
	var dying *aside
	if b.leftover {
		if err := e.cg.killInit(b.handle); err != nil {
			errs = append(errs, err)
		}
		b.cgroups = true // whatever a crashed run left
	} else {
		if b.running() {
			// Held, the init's mount namespace outlives it: the
			// kernel unmounts the sandbox's mounts when it is let go
			// (releaseIsolation), not in the init's exit.
			mounts, _ = b.proc.openNS("mnt")
			dying = e.killAside(b)
		}
		if dying == nil {
			e.kill(b)
		}
	}
	if b.cgroups {
		if dying != nil {
			b.cgroups = false // renamed aside, removed once the processes are gone
		} else if err := e.cg.removeSet(b.handle); err != nil {
			errs = append(errs, err)
		} else {
			b.cgroups = false
		}
		if err := e.cg.removeLegacyUnified(b.handle); err != nil {
			errs = append(errs, err)
		}
	}
	released := e.releaseIsolation(b, len(errs) == 0, mounts, dying)
	if err := os.RemoveAll(filepath.Join(e.cfg.StateDir, id.Key())); err != nil {
		errs = append(errs, err)
	}
	if b.leftover {
		released(b.dir)
		if err := removeSandboxDir(b.dir); err != nil {
			errs = append(errs, err)
		}
	} else if err := e.trash.discard(b.dir, released); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return fmt.Errorf("sandbox %s: delete: %w: %w", id, errors.Join(errs...), errdefs.ErrUnavailable)
	}
	e.forget(b)
	return nil
}

// releaseIsolation releases a killed sandbox's disk and, once its
// processes are gone, its id range, for another sandbox, and mounts, its
// init's mount namespace if the caller held it past the kill (or nil).
// What waits for the sandbox's mounts to go is returned, to run once its
// directory has moved to dir, in the background if the caller likes
// (trash.discard): the mount namespace is let go, so that the kernel
// unmounts the sandbox's root and the rest, and the disk is then wiped
// and made ready again if the sandbox left little on it (disks.recycle),
// or else closed, dropping what it wrote last rather than writing it back
// to an image about to be removed. While processes may be left, the disk
// is shut down at once. dying, when not nil, holds the killed sandbox's
// processes, still dying (killAside): what is returned first waits for
// them to go, and releases nothing more if they stay.
func (e *Engine) releaseIsolation(b *box, processesGone bool, mounts *os.File, dying *aside) func(dir string) {
	k, slot := b.disk, b.slot
	b.disk = nil
	// (Close of a nil *os.File does nothing.)
	if dying == nil && !processesGone {
		k.cutOff()
		mounts.Close()
		return func(string) {} // b keeps its slot: a Delete that succeeds later frees it
	}
	b.slot = 0
	if dying == nil {
		// Nothing can enter the namespace left: its ids may go to
		// another sandbox at once.
		e.ids.free(slot)
	}
	return func(dir string) {
		// Whatever else failed, the processes set aside are to be
		// waited for and their cgroups removed.
		if dying != nil {
			if !e.reapAside(dying) {
				k.cutOff() // its id range stays out of use
				mounts.Close()
				return
			}
			e.ids.free(slot)
		}
		mounts.Close()
		e.disks.recycle(k, diskImage(dir))
	}
}

// dyingPrefix starts the name of the cgroup set of a deleted sandbox
// whose processes are dying: "gone-<owner>-<n>" (warmOwner), removed once
// they are gone, or by the next server's Recover (removeStaleWarm) after
// a crash.
const dyingPrefix = "gone-"

// killAside kills the running sandbox b (b.mu held) without waiting for
// its processes to die: SIGKILL to its init, which takes its PID
// namespace with it, its network and portal connection closed, and its
// cgroup set renamed out of its key, so that the name is free at once
// while the processes go on being counted under the server's ceilings
// until the kernel has torn them down (releaseIsolation waits for that
// in the background). It returns nil when it could not rename the set
// (on cgroup v2, which renames no cgroup): the caller then waits (kill).
func (e *Engine) killAside(b *box) *aside {
	if e.cg.v2 || !b.cgroups { // b is running: Delete calls it only then
		return nil
	}
	// At the least CPU weight, its tear-down (most of it its processes
	// unmapping their memory as they exit) does not preempt the server's
	// threads, this one first, the moment the kill wakes it.
	e.cg.yield(b.handle)
	_ = b.proc.Kill()
	dying := &aside{set: ownedName(dyingPrefix, dyingSeq.Add(1)), done: b.done}
	if err := e.cg.rename(b.handle, dying.set); err != nil {
		e.log().Warn("renaming a deleted sandbox's cgroups aside; its delete waits for its processes", "sandbox", b.String(), "err", err)
		return nil
	}
	e.mu.Lock()
	e.dying[dying.set] = true
	e.mu.Unlock()
	e.disconnect(b)
	return dying
}

// aside is a deleted sandbox whose processes are dying: the cgroup set
// they are in, renamed out of the sandbox's key, and its init's done.
type aside struct {
	set  string
	done <-chan struct{}
}

// yieldFor is how long a killed sandbox's processes die at the least CPU
// weight (killAside, reapAside): long enough for an idle one.
const yieldFor = time.Second

// dyingWait bounds how long a start waits for deleted sandboxes'
// processes to go (holdPids): an instant, unless one is stuck in the
// kernel.
const dyingWait = 5 * time.Second

// dyingSeq numbers the dying sets of every engine of the process.
var dyingSeq atomic.Int64

// reapAside waits for the init of dying to exit (see waitDone) and removes
// its cgroup set. It reports whether its processes are gone.
func (e *Engine) reapAside(dying *aside) bool {
	defer func() {
		e.mu.Lock()
		delete(e.dying, dying.set)
		close(e.dyingGone)
		e.dyingGone = make(chan struct{})
		e.mu.Unlock()
	}()
	select {
	case <-dying.done:
	case <-time.After(yieldFor):
		// Starved of CPU by busy sandboxes (a large one takes long to
		// unmap): the tear-down gets a sandbox's weight back.
		e.cg.unyield(dying.set)
		waitDone(dying.done)
	}
	if err := e.cg.removeSet(dying.set); err != nil {
		e.log().Warn("removing the cgroups of a deleted sandbox; its id range stays in use until the server restarts", "cgroups", dying.set, "err", err)
		return false
	}
	return true
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
		st.State, st.Started, st.Pid = sandbox.StateRunning, b.started, b.proc.Pid
	case b.done != nil:
		st.State = sandbox.StateStopped
	}
	return st, nil
}

// leftoverStatus describes a sandbox found on disk that this Engine did not
// create: running while its init (found in its cgroups) lives.
func (e *Engine) leftoverStatus(id sandbox.ID) (sandbox.Status, bool) {
	if !e.onDisk(id.Key()) {
		return sandbox.Status{}, false
	}
	st := sandbox.Status{ID: id, State: sandbox.StateStopped}
	if pid, started := e.cg.findInit(id.Key()); pid != 0 {
		st.State, st.Pid, st.Started = sandbox.StateRunning, pid, started
	}
	return st, true
}

// Recover lists the sandboxes found in SandboxDir (and in StateDir, for
// earlier versions) that this Engine did not create: those of a server
// process that died. They are not re-adopted (their portals exited with
// the server's connection); the caller deletes them with Delete. It returns
// an error wrapping errdefs.ErrUnavailable when the directories cannot be
// read.
func (e *Engine) Recover(ctx context.Context) ([]sandbox.Status, error) {
	e.removeStaleWarm()
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
			// Its ids stay its own until it is deleted: its processes
			// may still run.
			e.ids.reserve(filepath.Join(e.cfg.SandboxDir, key))
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
	logPath := filepath.Join(b.dir, portalLog)
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
	defer e.calls.command()()
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
	defer e.calls.command()()
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
	defer e.calls.command()()
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
	if b.leftover || !b.running() {
		b.mu.Unlock()
		return sandbox.Stats{}, fmt.Errorf("sandbox %s is not running: %w", id, errdefs.ErrConflict)
	}
	st := sandbox.Stats{Sampled: time.Now(), Network: networkStats(b)}
	handle := b.handle
	b.mu.Unlock()

	cpu, mem, err := e.cg.stats(handle)
	if err != nil {
		// A Stop racing with us removes the cgroups we are reading.
		return sandbox.Stats{}, callErr(b, "reading cgroups", fmt.Errorf("%w: %w", err, errdefs.ErrUnavailable))
	}
	st.CPUTime, st.MemoryBytes = cpu, mem
	b.mu.Lock()
	k := b.disk
	var disk uint64
	if k != nil {
		disk, err = k.usage()
	}
	b.mu.Unlock()
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
	proc := b.proc
	b.mu.Unlock()
	nsFile, err := proc.openNS("net")
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: network namespace: %w: %w", id, err, errdefs.ErrConflict)
	}
	defer nsFile.Close()
	return dialInNetns(ctx, nsFile, fmt.Sprintf("127.0.0.1:%d", port))
}

// dialInNetns dials addr from the network namespace ns: a socket belongs
// to the namespace of the thread that creates it (netns.Do).
func dialInNetns(ctx context.Context, ns *os.File, addr string) (net.Conn, error) {
	var c net.Conn
	err := netns.Do(ns, func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, "tcp4", addr)
		return err
	})
	if err != nil {
		if c != nil {
			c.Close()
		}
		return nil, fmt.Errorf("dial %s in the sandbox's network: %w", addr, err)
	}
	return c, nil
}
