package sandbox

import (
	"context"
	"net"
	"time"

	"github.com/msb-dev/msb/sandbox/network"
)

// RootFS describes how to assemble a sandbox's root file system. The
// writable part always lives in the sandbox's own directory; Mounts are the
// only host paths a sandbox can see.
type RootFS struct {
	// Layers are read-only host directories holding an image's unpacked
	// layers in overlayfs form, lowest first. With layers the root is an
	// overlay of them under the sandbox's own writable directory; without,
	// it is a plain directory.
	Layers []string
	Mounts []Mount
	Links  []Link
	Files  []File
	Dirs   []string // writable directories created empty (e.g. "tmp", "workspace")
}

// Spec is everything an engine needs to create one sandbox.
type Spec struct {
	Root      RootFS
	Env       []string // KEY=VALUE, already merged (image, then user envs)
	Workdir   string   // absolute path inside the sandbox
	MemoryMiB int
	CPUs      int
	Pids      int
	// DiskMiB, if set, is the size of the sandbox's own file system,
	// which holds everything it writes outside its volumes and tmpfs;
	// 0: its writes go to the host's file system, unbounded.
	DiskMiB  int
	Hostname string
	User     User // who the sandbox's processes run as; zero: root
	// Tmpfs are memory-backed directories mounted over the root, charged
	// to the sandbox's memory.
	Tmpfs []Tmpfs
	// Rlimits bind every process the sandbox's agent starts (commands,
	// interpreters, the background command, streamed processes).
	Rlimits []Rlimit
	// Network, if set, is the sandbox's outbound network: an engine that
	// is a Networker attaches it when the sandbox's init has started
	// (before Start returns) and detaches it when the sandbox stops.
	// Nil: the sandbox has its own loopback only.
	Network *network.Config
}

// State is the coarse lifecycle state of a sandbox as an engine sees it.
type State string

// States an engine reports.
const (
	StateCreated State = "created"
	StateRunning State = "running"
	StateStopped State = "stopped"
)

// Status is what Inspect reports about one sandbox.
type Status struct {
	ID      ID
	State   State
	Pid     int // host pid of the sandbox's init, 0 when not running
	Started time.Time
}

// Stats is a point-in-time sample of a sandbox's resource use.
type Stats struct {
	// CPUTime is the total CPU time used by every process of the sandbox.
	CPUTime time.Duration
	// MemoryBytes is the memory charged to the sandbox's cgroup.
	MemoryBytes uint64
	// DiskBytes is what the sandbox's writes take on its disk (0 for a
	// sandbox without one).
	DiskBytes uint64
	// Network are the counters of the sandbox's network; nil when it has
	// none.
	Network *NetworkStats
	// Sampled is when the sample was taken.
	Sampled time.Time
}

// Runtime is an isolation engine: it creates, starts, stops and deletes
// sandboxes and finds the ones an earlier server process left behind.
// Every method takes the sandbox's ID; none blocks calls on other sandboxes.
type Runtime interface {
	// Create prepares the sandbox (root file system, cgroups) without
	// running anything in it. errdefs.ErrConflict if it already exists.
	Create(ctx context.Context, id ID, spec Spec) error
	// Start starts the sandbox's init (the portal) and waits until it
	// answers. errdefs.ErrNotFound if it was never created.
	Start(ctx context.Context, id ID) error
	// Stop kills every process in the sandbox. Stopping a stopped sandbox
	// is not an error; errdefs.ErrNotFound if it does not exist.
	Stop(ctx context.Context, id ID) error
	// Delete kills the sandbox and releases everything it holds:
	// processes, cgroups, mounts and its directory. Its processes are gone
	// and its name is free when it returns; an engine may finish
	// unmounting and removing files in the background. Deleting a missing
	// sandbox is not an error.
	Delete(ctx context.Context, id ID) error
	// Inspect reports the sandbox's state. errdefs.ErrNotFound if it does not exist.
	Inspect(ctx context.Context, id ID) (Status, error)
	// Recover lists the sandboxes this engine holds that the current
	// process did not create (left by a server that died). The caller then
	// deletes them or adopts them.
	Recover(ctx context.Context) ([]Status, error)
}

// Executor runs commands inside a running sandbox. errdefs.ErrConflict if the
// sandbox is not running. A command that cannot be started is a result, as
// in a shell: exit code 127 (not found) or 126 (not executable) with a
// stderr line naming it.
type Executor interface {
	Exec(ctx context.Context, id ID, req ExecRequest) (ExecResult, error)
}

// REPL evaluates code in a live interpreter kept per sandbox and language.
// errdefs.ErrConflict if the sandbox is not running; errdefs.ErrInvalid naming the
// interpreter if the image does not have it.
type REPL interface {
	RunCode(ctx context.Context, id ID, lang Language, code string, timeout time.Duration) (ReplResult, error)
}

// StatsReader samples a sandbox's resource use. errdefs.ErrConflict if it is not running.
type StatsReader interface {
	Stats(ctx context.Context, id ID) (Stats, error)
}

// Dialer connects to a TCP port inside a running sandbox's own network,
// as a process inside it would connect to 127.0.0.1. Engines that have it
// support port forwards. errdefs.ErrConflict if the sandbox is not running.
type Dialer interface {
	DialSandbox(ctx context.Context, id ID, port int) (net.Conn, error)
}

// ExitWatcher tells when a running sandbox's init exits, whatever the
// cause (stopped, killed, crashed): how the Service learns that a sandbox
// died on its own, so that it frees what it held (its host ports) and
// records it stopped at once.
type ExitWatcher interface {
	// Exited returns a channel closed when the init of the sandbox's
	// current run exits. errdefs.ErrConflict if the sandbox is not running,
	// errdefs.ErrNotFound if it does not exist.
	Exited(ctx context.Context, id ID) (<-chan struct{}, error)
}

// Networker is an engine that gives sandboxes outbound network: it
// attaches Spec.Network when a sandbox starts, detaches it when the
// sandbox stops, and changes it on a running sandbox.
type Networker interface {
	// SetNetwork gives the running sandbox id the network cfg: a new one
	// if it has none, else the policy and limits of cfg replace those of
	// the one it has (live connections the new policy refuses are
	// reset); nil detaches it. errdefs.ErrConflict if the sandbox is not
	// running, errdefs.ErrNotFound if it does not exist.
	SetNetwork(ctx context.Context, id ID, cfg *network.Config) error
}

// Pooler is an engine that starts sandboxes before anyone asks for them
// (a warm pool, package sandbox/pool) and gives one its identity when a
// start asks for it. A prestarted sandbox has no ID: it is known by an
// opaque handle that only Adopt and Discard take, so no call of a tenant
// can reach it, and it is adopted at most once.
type Pooler interface {
	// Prestart creates and starts a sandbox of spec that belongs to no one
	// and returns the engine's handle on it. spec has no Network (a
	// sandbox gets its network when it is adopted). It may first wait a
	// while (a second at most) for the engine's calls to leave a quiet
	// moment. Errors are those of Create and Start, or ctx's.
	Prestart(ctx context.Context, spec Spec) (handle string, err error)
	// Adopt makes the prestarted sandbox handle the running sandbox id,
	// with spec: what Poolable lets differ from the spec it was
	// prestarted with (environment, working directory, memory, CPUs,
	// pids, hostname, rlimits, network) is applied to it as it runs; from
	// then on every call knows it as id, and the handle names nothing.
	// On an error other than ErrNotFound the sandbox is deleted, never
	// offered again. Errors: errdefs.ErrNotFound for a handle that is
	// unknown, adopted or discarded; errdefs.ErrConflict when id exists;
	// errdefs.ErrInvalid when spec is not Poolable from the sandbox's;
	// errdefs.ErrUnavailable when the sandbox died or a setting could not
	// be applied.
	Adopt(ctx context.Context, handle string, id ID, spec Spec) error
	// Discard deletes a prestarted sandbox that was never adopted; an
	// unknown handle is not an error. errdefs.ErrUnavailable when
	// something cannot be released.
	Discard(ctx context.Context, handle string) error
}

// Engine is everything the Service needs from an isolation engine.
// Spawner, Dialer, Networker and Pooler are optional abilities, found by
// type assertion.
type Engine interface {
	Runtime
	Executor
	REPL
	StatsReader
	ExitWatcher
}
