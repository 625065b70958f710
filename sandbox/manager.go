package sandbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/namespace"
)

// Image is a resolved image: what a sandbox's root is made of.
type Image struct {
	Ref     string // as the user wrote it
	Root    RootFS
	Env     []string // the image's environment, under the user's envs
	Workdir string   // the image's working directory, under the user's workdir
	User    User     // the image's user
}

// Resolver turns an image reference from sandbox.start into an Image.
// Unknown or unusable references are errdefs.ErrInvalid naming the reference.
type Resolver interface {
	Resolve(ctx context.Context, ref string) (Image, error)
}

// Spawner runs a long-lived command in the background of a running sandbox
// (its exec or start script), streaming every line to out until it exits.
type Spawner interface {
	Spawn(ctx context.Context, id ID, req ExecRequest, out func(Line)) (int, error)
}

// Defaults applied to a config that leaves a field out.
const (
	DefaultImage   = "microsandbox/python"
	DefaultMemory  = 512 // MiB
	DefaultCPUs    = 1
	DefaultWorkdir = "/workspace"
	DefaultShell   = "/bin/sh"
	MinMemory      = 32 // MiB
)

// ServiceOptions configure a Service.
type ServiceOptions struct {
	Engine   Engine
	Store    *Store
	Images   Resolver
	LogDir   string // background logs: LogDir/<namespace>/<name>.log
	Pids     int    // pids limit of every sandbox
	MaxCPUs  int    // most CPUs one sandbox may ask for
	MaxMemMB int    // most memory one sandbox may ask for, MiB
	Log      *slog.Logger
	Now      func() time.Time

	// VolumeRoots are the host directories volumes may come from; each
	// namespace ns gets <root>/<ns> of each, created on demand, and a
	// relative host path resolves in the first. None: no volumes.
	VolumeRoots []string
	// PortBind is the address port forwards listen on; default 127.0.0.1.
	PortBind string
	// AllowPrivilegedPorts lets port forwards use host ports below 1024.
	AllowPrivilegedPorts bool
}

// Service is the sandbox Manager: it validates requests, keeps the records,
// and drives the engine. Calls on different sandboxes never wait on each
// other: each sandbox has its own lock, held only by start and stop.
type Service struct {
	opts ServiceOptions

	mu    sync.Mutex
	boxes map[ID]*box
}

// box is the live state of one sandbox in this server process.
type box struct {
	mu      sync.Mutex // serialises start and stop of this sandbox
	running atomic.Bool
	cfg     Config // normalized config it runs with
	started time.Time
	stopBg  context.CancelFunc // ends the background command's log writer
	bgDone  chan struct{}
	ports   []*forwarder // host ports forwarded into the sandbox

	sampleMu sync.Mutex
	lastCPU  time.Duration
	lastAt   time.Time
}

// NewService returns a Service. Call Recover before serving.
func NewService(opts ServiceOptions) *Service {
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.PortBind == "" {
		opts.PortBind = "127.0.0.1"
	}
	return &Service{opts: opts, boxes: map[ID]*box{}}
}

func (s *Service) box(id ID) *box {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.boxes[id]
	if !ok {
		b = &box{}
		s.boxes[id] = b
	}
	return b
}

func (s *Service) lookup(id ID) (*box, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.boxes[id]
	return b, ok
}

// Recover cleans up after a server that did not stop cleanly: every sandbox
// the engine still holds is deleted (the portal's connection died with the
// old server, so none can be adopted) and every record still marked running
// is marked stopped. A leftover that cannot be deleted (a busy mount, a
// cgroup something on the host still holds) is only logged: it must not
// keep the server, and every other sandbox, from starting. Its record says
// stopped, and the engine retries the cleanup when it is started again.
// Recover returns an error when the engine cannot list what it holds or the
// store cannot be read or written.
func (s *Service) Recover(ctx context.Context) error {
	left, err := s.opts.Engine.Recover(ctx)
	if err != nil {
		return fmt.Errorf("recover sandboxes: %w", err)
	}
	for _, st := range left {
		if err := s.opts.Engine.Delete(ctx, st.ID); err != nil {
			s.opts.Log.Error("cannot clean up a sandbox left by an earlier server; it stays stopped, and starting it retries the cleanup",
				"sandbox", st.ID.String(), "err", err)
			continue
		}
		s.opts.Log.Info("cleaned up a sandbox left by an earlier server", "sandbox", st.ID.String())
	}
	recs, err := s.opts.Store.List(ctx, namespace.All)
	if err != nil {
		return fmt.Errorf("recover sandboxes: %w", err)
	}
	for _, r := range recs {
		if r.State == StateRunning {
			if err := s.opts.Store.MarkStopped(ctx, r.ID, s.opts.Now()); err != nil {
				return fmt.Errorf("recover sandbox %s: %w", r.ID, err)
			}
		}
	}
	return nil
}

// Close stops every running sandbox, as a server shutdown does.
func (s *Service) Close(ctx context.Context) error {
	s.mu.Lock()
	ids := make([]ID, 0, len(s.boxes))
	for id := range s.boxes {
		ids = append(ids, id)
	}
	s.mu.Unlock()
	var errs []error
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.stop(ctx, id, false); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Start implements Manager.
func (s *Service) Start(ctx context.Context, id ID, cfg *Config) error {
	if err := id.Validate(); err != nil {
		return err
	}
	if cfg == nil {
		// No config: the one it last ran with, else every default.
		rec, err := s.opts.Store.Get(ctx, id)
		switch {
		case err == nil:
			cfg = &rec.Config
		case errors.Is(err, errdefs.ErrNotFound):
			cfg = &Config{}
		default:
			return err
		}
	}
	norm, err := s.normalize(*cfg)
	if err != nil {
		return err
	}
	b := s.box(id)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.running.Load() {
		if s.alive(ctx, id) {
			if reflect.DeepEqual(b.cfg, norm) {
				return nil
			}
			return errdefs.Conflictf("sandbox %q is already running with a different config: stop it first, or start it with the same config", id.Name)
		}
		// It died on its own (its init was killed): release what is left
		// and start it afresh.
		s.opts.Log.Warn("sandbox had stopped on its own; starting it again", "sandbox", id.String())
		if err := s.release(ctx, id, b); err != nil {
			return s.engineError("start", id, err)
		}
	}
	for _, dep := range norm.DependsOn {
		d, ok := s.lookup(ID{Namespace: id.Namespace, Name: dep})
		if !ok || !d.running.Load() {
			return errdefs.Conflictf("sandbox %q depends on %q, which is not running in namespace %q: start %q first", id.Name, dep, id.Namespace, dep)
		}
	}
	img, err := s.opts.Images.Resolve(ctx, norm.Image)
	if err != nil {
		return err
	}
	root := img.Root
	root.Mounts = append([]Mount(nil), root.Mounts...)
	for _, v := range norm.Volumes {
		spec, _ := parseVolume(v) // normalize checked it
		m, err := s.resolveVolume(id.Namespace, spec)
		if err != nil {
			return err
		}
		root.Mounts = append(root.Mounts, m)
	}
	var portSpecs []portSpec
	for _, p := range norm.Ports {
		ps, _ := parsePort(p)
		portSpecs = append(portSpecs, ps)
	}
	// The host ports are taken before the sandbox starts, so that a port
	// in use fails the start at once.
	forwarders, err := s.listenPorts(portSpecs)
	if err != nil {
		return err
	}
	started := false
	defer func() {
		if !started {
			closeForwarders(forwarders)
		}
	}()
	spec := Spec{
		Root:      root,
		Env:       mergeEnv(img.Env, norm.Envs),
		Workdir:   norm.Workdir,
		MemoryMiB: norm.Memory,
		CPUs:      norm.CPUs,
		Pids:      s.opts.Pids,
		Hostname:  id.Name,
		User:      img.User,
	}
	if spec.Workdir == "" {
		spec.Workdir = img.Workdir
	}
	if spec.Workdir == "" {
		spec.Workdir = DefaultWorkdir
	}
	spec.Root.Dirs = append(append([]string(nil), spec.Root.Dirs...), strings.TrimPrefix(spec.Workdir, "/"))

	eng := s.opts.Engine
	// A sandbox the engine still holds (stopped by a crash inside it) is
	// replaced: its record says stopped, so its leftovers are garbage.
	// This is also where the cleanup of a leftover Recover could not
	// delete is retried.
	if err := eng.Delete(ctx, id); err != nil {
		return s.engineError("start", id, fmt.Errorf("clean up earlier run: %w", err))
	}
	if err := eng.Create(ctx, id, spec); err != nil {
		eng.Delete(context.WithoutCancel(ctx), id)
		return s.engineError("start", id, err)
	}
	if err := eng.Start(ctx, id); err != nil {
		eng.Delete(context.WithoutCancel(ctx), id)
		return s.engineError("start", id, err)
	}
	now := s.opts.Now()
	if err := s.opts.Store.Put(ctx, id, norm, now); err != nil {
		eng.Delete(context.WithoutCancel(ctx), id)
		return err
	}
	b.cfg, b.started = norm, now
	b.sampleMu.Lock()
	b.lastCPU, b.lastAt = 0, now
	b.sampleMu.Unlock()
	b.running.Store(true)
	started = true
	b.ports = forwarders
	s.serveForwarders(id, forwarders)
	s.freePortsOnExit(ctx, id, b)
	if script := startScript(norm); script != "" {
		s.background(id, b, ExecRequest{Command: norm.Shell, Args: []string{"-c", script}})
	}
	s.opts.Log.Info("sandbox started", "sandbox", id.String(), "image", norm.Image, "memory_mib", norm.Memory, "cpus", norm.CPUs)
	return nil
}

// freePortsOnExit closes the host ports of the sandbox b holds (b.mu held)
// as soon as its init exits, when the engine can tell: a sandbox that dies
// on its own must not keep them from other sandboxes until it is stopped
// or started again. A stop or a new start that came first wins.
func (s *Service) freePortsOnExit(ctx context.Context, id ID, b *box) {
	w, ok := s.opts.Engine.(ExitWatcher)
	if !ok || len(b.ports) == 0 {
		return
	}
	exited, err := w.Exited(ctx, id)
	if err != nil {
		// Not running any more: free the ports at once.
		closed := make(chan struct{})
		close(closed)
		exited = closed
	}
	ports := b.ports
	go func() {
		<-exited
		b.mu.Lock()
		defer b.mu.Unlock()
		if len(b.ports) == 0 || b.ports[0] != ports[0] {
			return // stopped, or started again, meanwhile
		}
		closeForwarders(b.ports)
		b.ports = nil
		s.opts.Log.Warn("sandbox stopped on its own; its host ports are free", "sandbox", id.String())
	}()
}

// engineError turns an engine failure into what a client should read. The
// classes that describe the request or the sandbox's state (invalid,
// missing, conflicting) stay as the engine worded them; anything else is an
// internal failure whose detail (host paths included) only goes to the log.
func (s *Service) engineError(op string, id ID, err error) error {
	for _, class := range []error{errdefs.ErrInvalid, errdefs.ErrNotFound, errdefs.ErrConflict} {
		if errors.Is(err, class) {
			return err
		}
	}
	ref := fmt.Sprintf("%x", s.opts.Now().UnixNano()&0xffffffffff)
	s.opts.Log.Error(op+" sandbox failed", "sandbox", id.String(), "ref", ref, "err", err)
	return errdefs.Unavailablef("%s sandbox %q failed in the sandbox engine; the server log has the details (ref %s)", op, id.Name, ref)
}

func startScript(cfg Config) string {
	if cfg.Exec != "" {
		return cfg.Exec
	}
	return cfg.Scripts["start"]
}

// LogPath is where the background output of sandbox id goes.
func LogPath(logDir string, id ID) string {
	return filepath.Join(logDir, id.Namespace, id.Name+".log")
}

// background runs the sandbox's start command with its output in the
// sandbox's log file.
func (s *Service) background(id ID, b *box, req ExecRequest) {
	spawner, ok := s.opts.Engine.(Spawner)
	if !ok {
		s.opts.Log.Warn("engine cannot run background commands", "sandbox", id.String())
		return
	}
	path := LogPath(s.opts.LogDir, id)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		s.opts.Log.Error("sandbox log", "sandbox", id.String(), "err", err)
		return
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		s.opts.Log.Error("sandbox log", "sandbox", id.String(), "err", err)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	b.stopBg, b.bgDone = cancel, done
	go func() {
		defer close(done)
		defer f.Close()
		var written int64
		full := false
		write := func(text string) {
			if full {
				return
			}
			// The portal stops at MaxLog already; this bounds the
			// file whatever the portal sends.
			if written+int64(len(text))+1 > MaxLog {
				full = true
				text = LogCutNotice
			}
			n, _ := f.WriteString(text + "\n")
			written += int64(n)
		}
		fmt.Fprintf(f, "[msb] %s: %s %s\n", s.opts.Now().UTC().Format(time.RFC3339), req.Command, strings.Join(req.Args, " "))
		code, err := spawner.Spawn(ctx, id, req, func(l Line) { write(l.Text) })
		switch {
		case ctx.Err() != nil:
			write("[msb] stopped with the sandbox")
		case err != nil:
			write(fmt.Sprintf("[msb] could not run: %v", err))
		default:
			write(fmt.Sprintf("[msb] exited with code %d", code))
		}
	}()
}

// Stop implements Manager.
func (s *Service) Stop(ctx context.Context, id ID) error {
	if err := id.Validate(); err != nil {
		return err
	}
	return s.stop(ctx, id, true)
}

func (s *Service) stop(ctx context.Context, id ID, mustExist bool) error {
	b, ok := s.lookup(id)
	if !ok {
		if !mustExist {
			return nil
		}
		// Known from an earlier server run: already stopped.
		_, err := s.opts.Store.Get(ctx, id)
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.running.Load() {
		return nil
	}
	if err := s.release(ctx, id, b); err != nil {
		return s.engineError("stop", id, err)
	}
	s.opts.Log.Info("sandbox stopped", "sandbox", id.String())
	return nil
}

// release stops the sandbox b holds and frees everything: processes,
// engine state, its background log writer, and records it stopped. The
// caller holds b.mu.
func (s *Service) release(ctx context.Context, id ID, b *box) error {
	// Not ctx: a stop that began must finish, even if the client goes away.
	ctx = context.WithoutCancel(ctx)
	b.running.Store(false)
	closeForwarders(b.ports)
	b.ports = nil
	eng := s.opts.Engine
	err := eng.Stop(ctx, id)
	if errors.Is(err, errdefs.ErrNotFound) {
		err = nil
	}
	if derr := eng.Delete(ctx, id); err == nil {
		err = derr
	}
	if b.stopBg != nil {
		b.stopBg()
		<-b.bgDone
		b.stopBg, b.bgDone = nil, nil
	}
	if serr := s.opts.Store.MarkStopped(ctx, id, s.opts.Now()); err == nil {
		err = serr
	}
	return err
}

// alive asks the engine whether the sandbox still runs.
func (s *Service) alive(ctx context.Context, id ID) bool {
	st, err := s.opts.Engine.Inspect(ctx, id)
	return err == nil && st.State == StateRunning
}

// running returns the live box of id, or the error a call on it gets.
func (s *Service) running(ctx context.Context, id ID) (*box, error) {
	if err := id.Validate(); err != nil {
		return nil, err
	}
	if b, ok := s.lookup(id); ok && b.running.Load() {
		return b, nil
	}
	if _, err := s.opts.Store.Get(ctx, id); err != nil {
		return nil, err
	}
	return nil, errdefs.Conflictf("sandbox %q in namespace %q is not running: start it with sandbox.start", id.Name, id.Namespace)
}

// RunCode implements Manager.
func (s *Service) RunCode(ctx context.Context, id ID, lang Language, code string, timeout time.Duration) (ReplResult, error) {
	b, err := s.running(ctx, id)
	if err != nil {
		return ReplResult{}, err
	}
	res, err := s.opts.Engine.RunCode(ctx, id, lang, code, timeout)
	if err != nil {
		if errors.Is(err, errdefs.ErrInvalid) {
			return ReplResult{}, errdefs.Invalidf("%v (image %q)", err, b.cfg.Image)
		}
		return ReplResult{}, s.callError(id, b, err)
	}
	return res, nil
}

// Exec implements Manager.
func (s *Service) Exec(ctx context.Context, id ID, req ExecRequest) (ExecResult, error) {
	b, err := s.running(ctx, id)
	if err != nil {
		return ExecResult{}, err
	}
	res, err := s.opts.Engine.Exec(ctx, id, req)
	if err != nil {
		return ExecResult{}, s.callError(id, b, err)
	}
	return res, nil
}

// callError explains a failed call: a sandbox stopped under it is a
// conflict, not an internal error.
func (s *Service) callError(id ID, b *box, err error) error {
	if !b.running.Load() {
		return errdefs.Conflictf("sandbox %q was stopped during the call", id.Name)
	}
	return s.engineError("run in", id, err)
}

// Metrics implements Manager.
func (s *Service) Metrics(ctx context.Context, ns, name string) ([]Metrics, error) {
	if name != "" {
		if err := namespace.ValidateName("sandbox", name); err != nil {
			return nil, err
		}
		if ns == namespace.All {
			return nil, errdefs.Invalidf("give a namespace with a sandbox name, not %q", ns)
		}
	}
	recs, err := s.opts.Store.List(ctx, ns)
	if err != nil {
		return nil, err
	}
	out := make([]Metrics, 0, len(recs))
	for _, r := range recs {
		if name != "" && r.ID.Name != name {
			continue
		}
		m := Metrics{Namespace: r.ID.Namespace, Name: r.ID.Name}
		if b, ok := s.lookup(r.ID); ok && b.running.Load() {
			s.sample(ctx, r.ID, b, &m)
		}
		out = append(out, m)
	}
	if name != "" && len(out) == 0 {
		return nil, errdefs.NotFoundf("sandbox %q not found in namespace %q", name, ns)
	}
	return out, nil
}

// sample fills the live figures of m. CPU is the percentage of one CPU used
// since the previous sample (or since start, for the first).
func (s *Service) sample(ctx context.Context, id ID, b *box, m *Metrics) {
	st, err := s.opts.Engine.Stats(ctx, id)
	if err != nil {
		if b.running.Load() {
			s.opts.Log.Warn("sandbox stats", "sandbox", id.String(), "err", err)
		}
		return
	}
	m.Running = true
	b.sampleMu.Lock()
	elapsed := st.Sampled.Sub(b.lastAt)
	var cpu float64
	if elapsed > 0 && st.CPUTime >= b.lastCPU {
		cpu = float64(st.CPUTime-b.lastCPU) / float64(elapsed) * 100
	}
	b.lastCPU, b.lastAt = st.CPUTime, st.Sampled
	b.sampleMu.Unlock()
	mem := int64(st.MemoryBytes >> 20)
	disk := int64(st.DiskBytes)
	m.CPUUsage, m.MemoryUsage, m.DiskUsage = &cpu, &mem, &disk
}

// mergeEnv returns base overridden by over, by variable name, in order.
func mergeEnv(base, over []string) []string {
	out := make([]string, 0, len(base)+len(over))
	index := map[string]int{}
	for _, kv := range append(append([]string(nil), base...), over...) {
		k, _, _ := strings.Cut(kv, "=")
		if i, ok := index[k]; ok {
			out[i] = kv
			continue
		}
		index[k] = len(out)
		out = append(out, kv)
	}
	return out
}
