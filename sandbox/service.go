package sandbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/namespace"
	"github.com/msb-dev/msb/sandbox/network"
)

// Manager is what the front-ends ask of sandboxes. Each method's namespace
// has already been authorized by the caller, and an ID is valid by
// construction (ParseID). Errors are of the classes of errdefs.
type Manager interface {
	// Start starts the sandbox, or does nothing if it runs with the same
	// config. cfg nil reuses the config it was last started with.
	Start(ctx context.Context, id ID, cfg *Config) error
	// Stop stops the sandbox and releases what it holds; its record stays.
	Stop(ctx context.Context, id ID) error
	// Metrics lists the sandboxes of namespace ns ("*": all).
	Metrics(ctx context.Context, ns string) ([]Metrics, error)
	// SandboxMetrics reports one sandbox.
	SandboxMetrics(ctx context.Context, id ID) (Metrics, error)
	// RunCode evaluates code in the sandbox's live interpreter for lang.
	RunCode(ctx context.Context, id ID, lang Language, code string, timeout time.Duration) (ReplResult, error)
	// Exec runs a command in the sandbox.
	Exec(ctx context.Context, id ID, req ExecRequest) (ExecResult, error)
	// Usage reports what the running sandboxes of namespace ns hold
	// together, and its quota.
	Usage(ns string) (Usage, Quota)
	// SetNetwork changes the sandbox's network (its mode, rules and
	// limits): at once when it runs, and for its next starts.
	SetNetwork(ctx context.Context, id ID, n Network) (NetworkUpdate, error)
	// Pool reports the warm pool of each image; none without a pool.
	Pool() []PoolStatus
}

// NetworkUpdate is the outcome of Manager.SetNetwork.
type NetworkUpdate struct {
	// Network is what the sandbox has now, or will have at its next
	// start: the namespace's defaults filled in. Mode NetworkNone: no
	// network.
	Network Network
	// Running: the sandbox runs, and the change took effect at once.
	Running bool
}

// API is what the front-ends (JSON-RPC, MCP, the v1 API) ask of
// sandboxes: the Service, or Unavailable on a server without an engine.
type API interface {
	Manager
	Lifecycles
	// Sessions returns the streamed processes and file operations.
	Sessions() Sessions
}

// Metrics is one sandbox's resource use. The pointers are nil for a
// sandbox that is not running.
type Metrics struct {
	ID          ID
	Running     bool
	CPUUsage    *float64 // percent of one CPU since the previous sample
	MemoryUsage *int64   // MiB
	DiskUsage   *int64   // bytes
	// Network are the counters of its network, nil when it runs without.
	Network *NetworkStats
}

// Image is a resolved image: what a sandbox's root is made of.
type Image struct {
	Ref     string // as the user wrote it
	Root    RootFS
	Env     []string // the image's environment, under the user's envs
	Workdir string   // the image's working directory, under the user's workdir
	User    User     // the image's user
}

// Resolver turns an image reference from a config into an Image. user,
// if not "", runs the sandbox instead of the image's own user: a name of
// the image's /etc/passwd, or uid[:gid]. Unknown or unusable references
// and users are errors of class Invalid naming them.
type Resolver interface {
	Resolve(ctx context.Context, ref, user string) (Image, error)
}

// DefaultMaxTimeout is the longest a command or evaluation may be given
// unless the server says otherwise.
const DefaultMaxTimeout = 24 * time.Hour

// ServiceOptions configure a Service.
type ServiceOptions struct {
	Engine   Engine
	Store    Store
	Images   Resolver
	LogDir   string // background logs: LogDir/<namespace>/<name>.log
	Pids     int    // pids limit of every sandbox
	MaxCPUs  int    // most CPUs one sandbox may ask for
	MaxMemMB int    // most memory one sandbox may ask for, MiB
	// DefaultDiskMB is the disk of a sandbox whose config has none (0:
	// DefaultDisk), MaxDiskMB the most one may ask for (0: no bound).
	DefaultDiskMB, MaxDiskMB int
	Log                      *slog.Logger
	Now                      func() time.Time
	// MaxTimeout bounds the timeout of one command or evaluation: a longer
	// one is cut to it. 0: DefaultMaxTimeout.
	MaxTimeout time.Duration
	// EphemeralGrace is how long a stopped ephemeral sandbox stays listed
	// before it is removed; 0: sandbox.EphemeralGrace.
	EphemeralGrace time.Duration
	// Quotas bound what each namespace's running sandboxes hold; nil: no
	// bound.
	Quotas Quotas
	// OutputMemory bounds the memory that the output of calls under way
	// holds on the server, in bytes (OutputBudget); 0:
	// DefaultOutputMemory.
	OutputMemory int64

	// VolumeRoots are the host directories volumes may come from; each
	// namespace ns gets <root>/<ns> of each, created on demand, and a
	// relative host path resolves in the first. None: no volumes.
	VolumeRoots []string
	// VolumeOwner is the host uid and gid of what msb makes in volumes
	// (directories it creates for them): the owner of root's files there
	// when sandboxes see volumes through idmapped mounts; 0: root.
	VolumeOwner int
	// PortBind is the address port forwards listen on; default 127.0.0.1.
	PortBind string
	// AllowPrivilegedPorts lets port forwards use host ports below 1024.
	AllowPrivilegedPorts bool

	// Network gives the operator's network bounds of each namespace;
	// nil: DefaultNetworkBounds for all.
	Network func(namespace string) NetworkBounds
	// NetDialer dials what sandboxes' networks allow, and NetResolver
	// answers their DNS; nil: a net.Dialer and the host's resolver.
	NetDialer   network.Dialer
	NetResolver network.Resolver
	// Pool, if set, gives starts sandboxes started ahead of time (a warm
	// pool) when the engine is a Pooler; Close closes it.
	Pool WarmPool

	// OnNetworkDenial, if set, is told of sandboxes' refused network
	// attempts, at most once a second per sandbox (NetworkDenial). It is
	// called with a lock held and must not block (the audit log's Record
	// does not).
	OnNetworkDenial func(NetworkDenial)
}

// Service is the sandbox Manager and the one owner of every sandbox's
// state: it validates requests, keeps the records, drives the engine, and
// learns from the engine (ExitWatcher) when a sandbox dies on its own.
// Calls on different sandboxes never wait on each other: each sandbox has
// its own lock, held only by start and stop.
type Service struct {
	opts   ServiceOptions
	bounds Bounds
	quotas quotas
	output *OutputBudget

	mu    sync.Mutex
	boxes map[ID]*box
}

// box is the live state of one sandbox in this server process.
type box struct {
	mu      sync.Mutex  // serialises start and stop of this sandbox
	gone    bool        // removed: the map no longer holds this box
	running atomic.Bool // set by start, cleared by release; read without mu
	// phase is StateStarting or StateStopping while a start or stop is
	// under way, else "" (the record says).
	phase  atomic.Value
	run    uint64        // counts the starts: timers of an earlier run do nothing
	timers []*time.Timer // of this run (max duration, idle timeout)
	// exited is the engine's report of the current run's end (a
	// <-chan struct{}), read without mu.
	exited  atomic.Value
	cfg     Config // normalized config it runs with
	started time.Time
	stopBg  context.CancelFunc // ends the background command's log writer
	bgDone  chan struct{}
	ports   []*forwarder // host ports forwarded into the sandbox
	// lastActive is when the sandbox last saw a call or was started, in
	// Unix nanoseconds of the service's clock (lastActivity).
	lastActive atomic.Int64
	// inFlight counts the calls under way (exec, code, file transfers,
	// streamed processes until they end): a sandbox with one is not idle.
	inFlight atomic.Int64
	// net is the network it runs with (nil: none), and denials reports
	// what that network refuses.
	net     *effectiveNetwork
	denials *denials

	sampleMu sync.Mutex
	lastCPU  time.Duration
	lastAt   time.Time
	cpus     int // what the CPU percentage is capped at, /100
}

// alive reports whether the sandbox runs: started, and its init has not
// exited (the engine's report, read without waiting for the watcher).
func (b *box) alive() bool {
	if !b.running.Load() {
		return false
	}
	exited, _ := b.exited.Load().(<-chan struct{})
	select {
	case <-exited:
		return false
	default:
		return true
	}
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
	if opts.MaxTimeout <= 0 {
		opts.MaxTimeout = DefaultMaxTimeout
	}
	if opts.EphemeralGrace <= 0 {
		opts.EphemeralGrace = EphemeralGrace
	}
	if opts.OutputMemory <= 0 {
		opts.OutputMemory = DefaultOutputMemory
	}
	if opts.Network == nil {
		opts.Network = func(string) NetworkBounds { return DefaultNetworkBounds() }
	}
	_, canDial := opts.Engine.(Dialer)
	_, canNet := opts.Engine.(Networker)
	return &Service{opts: opts, boxes: map[ID]*box{}, quotas: quotas{of: opts.Quotas}, output: NewOutputBudget(opts.OutputMemory), bounds: Bounds{
		MaxCPUs: opts.MaxCPUs, MaxMemory: opts.MaxMemMB, DefaultDisk: opts.DefaultDiskMB, MaxDisk: opts.MaxDiskMB, AllowPrivilegedPorts: opts.AllowPrivilegedPorts, NoPorts: !canDial, NoNetwork: !canNet,
	}}
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

// lockBox returns the box of id, locked, making one if needed; a box
// removed meanwhile is never returned.
func (s *Service) lockBox(id ID) *box {
	for {
		b := s.box(id)
		b.mu.Lock()
		if !b.gone {
			return b
		}
		b.mu.Unlock()
	}
}

// forget removes the sandbox b holds (b.mu held, not running) for good:
// its record, its log and its box.
func (s *Service) forget(ctx context.Context, id ID, b *box) error {
	if err := s.opts.Store.DeleteSandbox(ctx, id); err != nil {
		return err
	}
	if err := os.Remove(LogPath(s.opts.LogDir, id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.opts.Log.Warn("remove the log of a removed sandbox", "sandbox", id.String(), "err", err)
	}
	b.gone = true
	s.mu.Lock()
	if s.boxes[id] == b {
		delete(s.boxes, id)
	}
	s.mu.Unlock()
	return nil
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
	recs, err := s.opts.Store.Sandboxes(ctx, namespace.All)
	if err != nil {
		return fmt.Errorf("recover sandboxes: %w", err)
	}
	for _, r := range recs {
		switch {
		case r.Config.Ephemeral && r.State != StateFailed:
			// Nobody polls for its stop across a restart: remove it now.
			if err := s.opts.Store.DeleteSandbox(ctx, r.ID); err != nil {
				return fmt.Errorf("recover sandbox %s: %w", r.ID, err)
			}
		case r.State == StateRunning:
			if err := s.opts.Store.MarkSandboxStopped(ctx, r.ID, s.opts.Now()); err != nil {
				return fmt.Errorf("recover sandbox %s: %w", r.ID, err)
			}
		}
	}
	return nil
}

// Close deletes the sandboxes waiting in the warm pool and stops every
// running sandbox, as a server shutdown does.
func (s *Service) Close(ctx context.Context) error {
	var errs []error
	if s.opts.Pool != nil {
		if err := s.opts.Pool.Close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("warm pool: %w", err))
		}
	}
	s.mu.Lock()
	ids := make([]ID, 0, len(s.boxes))
	for id := range s.boxes {
		ids = append(ids, id)
	}
	s.mu.Unlock()
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, id := range ids {
		wg.Go(func() {
			if err := s.stop(ctx, id, false); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// engineError describes an engine failure for the client, in the one
// place that does. The classes that describe the request or the sandbox's
// state (invalid, missing, conflicting) stay as the engine worded them;
// anything else is an internal failure: the front-end logs its detail
// (host paths included) with a reference and shows only what failed.
func engineError(op string, id ID, err error) error {
	switch errdefs.Classify(err) {
	case errdefs.Invalid, errdefs.NotFound, errdefs.Conflict, errdefs.Exhausted,
		errdefs.Forbidden: // a file the sandbox's own permissions refuse
		return err
	}
	return &errdefs.Error{Class: errdefs.Internal, Msg: fmt.Sprintf("%s sandbox %q failed in the sandbox engine", op, id.Name()), Err: err}
}

var _ API = (*Service)(nil)
