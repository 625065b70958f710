package sandbox

import (
	"context"
	"io"
	"slices"
	"time"
)

// Streams and files: what the v1 API's agent socket (and the JSON-RPC
// fs methods, and MCP's file tools) need of a running sandbox, beyond the
// buffered Exec and RunCode. Engines that can are found by type assertion
// (Streamer, FileSystem); the Service checks the sandbox runs, counts the
// call as activity (idle timeouts) and classifies errors, as for Exec.

// ExecSpec is one process to start in a sandbox with its I/O streamed.
type ExecSpec struct {
	Command string   // run directly, found on PATH; no shell
	Args    []string // without Command
	Env     []string // KEY=VALUE over the sandbox's environment; later wins
	Workdir string   // "": the sandbox's workdir
	User    string   // "": the sandbox's user; else a name of the image or uid[:gid]
	// TTY runs the process on a pseudo-terminal of Rows x Cols (0: 24 x
	// 80); its output then comes as Stdout alone.
	TTY        bool
	Rows, Cols uint16
	Rlimits    []Rlimit
	// Timeout kills the process (and what it started) after this long;
	// 0: never.
	Timeout time.Duration
}

// Rlimit is one resource limit, by its lowercase name without RLIMIT_
// ("nofile", "nproc", "cpu", "as", ...).
type Rlimit struct {
	Resource   string
	Soft, Hard uint64
}

// ExecEventKind says what an ExecEvent reports.
type ExecEventKind int

// The events of a process, in the order they come: Started once, then
// output and stdin errors, then exactly one of Exited or Failed, last.
const (
	EventStarted    ExecEventKind = iota + 1 // Pid
	EventStdout                              // Data
	EventStderr                              // Data
	EventStdinError                          // Message (writing to its stdin failed: it closed it)
	EventExited                              // Code (-1 for a death by signal, then Signal)
	EventFailed                              // Fail: it never ran
)

// ExecEvent is one thing that happened to a streamed process.
type ExecEvent struct {
	Kind   ExecEventKind
	Pid    int
	Data   []byte // owned by the receiver
	Code   int
	Signal int // the signal that killed it, with Code -1
	// TimedOut marks an Exited caused by ExecSpec.Timeout.
	TimedOut bool
	Message  string
	Fail     *ExecFailure
}

// ExecFailure says why a process could not be started.
type ExecFailure struct {
	// Kind is one of not_found, permission_denied, not_executable,
	// bad_cwd, bad_args, resource_limit, user_setup_failed,
	// out_of_memory, pty_setup_failed, other.
	Kind    string
	Errno   int    // 0: none
	Message string // what failed, for a person: "chdir /x: no such file or directory"
}

// Process controls a streamed process. Its methods may be called from
// any goroutine while events arrive.
type Process interface {
	// Stdin writes p to the process's stdin, waiting while its pipe (and
	// the sandbox's buffer for it) is full; an empty p closes stdin (EOF).
	Stdin(ctx context.Context, p []byte) error
	// Signal sends sig to the process's group.
	Signal(sig int) error
	// Resize sets the terminal size of a TTY process (ignored otherwise).
	Resize(rows, cols uint16) error
	// Done is closed after the last event was delivered.
	Done() <-chan struct{}
	// Close stops following the process: its stdin is closed, no more
	// events are delivered, and it is killed if it still runs and
	// killOnClose was asked of Stream. It does not wait.
	Close() error
}

// Streamer starts processes whose I/O is streamed. Events are delivered
// in order, from one goroutine, by calling events; a slow events (a client
// that reads slowly) slows the process's output down (flow control)
// rather than growing the server's memory, and never holds up other
// calls on the same sandbox. Errors: class Conflict when the sandbox is
// not running; a process that cannot start is an EventFailed, not an error.
type Streamer interface {
	Stream(ctx context.Context, id ID, spec ExecSpec, killOnClose bool, events func(ExecEvent)) (Process, error)
}

// FileKind is the kind of a file.
type FileKind string

// The kinds of FileInfo.Kind.
const (
	KindFile    FileKind = "file"
	KindDir     FileKind = "dir"
	KindSymlink FileKind = "symlink"
	KindOther   FileKind = "other"
)

// FileInfo describes a file inside a sandbox.
type FileInfo struct {
	Path    string // as asked (Stat), or the directory joined with the name (List)
	Kind    FileKind
	Size    int64
	Mode    uint32 // the full st_mode, type bits included
	UID     uint32 // as the sandbox sees them
	GID     uint32
	ModTime time.Time
	ATime   time.Time
}

// OpenOptions are how a file is opened, as open(2) takes them.
type OpenOptions struct {
	Read, Write, Append, Create, Truncate bool
	Exclusive                             bool   // create_new: fail if it exists
	Mode                                  uint32 // for a file created; 0: 0644
}

// FileHandle is an open file inside a sandbox: a handle the sandbox keeps
// until Close (or until the sandbox stops).
type FileHandle interface {
	// ReadTo streams up to n bytes from offset (n < 0: to the end of
	// the file) to w, in chunks of at most MaxChunk, as fast as w takes
	// them. It returns the bytes read.
	ReadTo(ctx context.Context, offset, n int64, w io.Writer) (int64, error)
	// WriteFrom writes what r gives at offset until r ends, and returns
	// the bytes written.
	WriteFrom(ctx context.Context, offset int64, r io.Reader) (int64, error)
	Close() error
}

// MaxChunk is the most a file read delivers in one piece.
const MaxChunk = 3 << 20

// FileSystem reaches the files of a running sandbox. Every path is a path
// inside the sandbox, resolved in the sandbox's own root as its processes
// would resolve it (symlinks included): never on the host. Errors are of
// class NotFound (no such file), Conflict (exists, not a directory, not
// empty), Invalid (a malformed path), Forbidden (the sandbox's own
// permissions refuse it), and Conflict when the sandbox is not running.
type FileSystem interface {
	Open(ctx context.Context, id ID, path string, o OpenOptions) (FileHandle, error)
	Stat(ctx context.Context, id ID, path string, follow bool) (FileInfo, error)
	List(ctx context.Context, id ID, path string) ([]FileInfo, error)
	// Mkdir creates path and its missing parents; mode 0: 0755.
	Mkdir(ctx context.Context, id ID, path string, mode uint32) error
	// Remove removes a file, or a directory (with what is in it when
	// recursive).
	Remove(ctx context.Context, id ID, path string, recursive bool) error
	Copy(ctx context.Context, id ID, src, dst string) error
	Rename(ctx context.Context, id ID, src, dst string) error
}

// Sessions is what the front-ends that stream (the v1 API's agent socket,
// and the JSON-RPC fs methods) ask of the Service beyond Manager: the
// same abilities as Streamer and FileSystem, with the Service's checks
// (the sandbox runs; the call counts as activity for its idle timeout).
type Sessions interface {
	Stream(ctx context.Context, id ID, spec ExecSpec, killOnClose bool, events func(ExecEvent)) (Process, error)
	FileSystem
}

// MergeRlimits returns base with over's limits on top, by resource: a
// sandbox's limits with a call's. A limit of over never goes above base's
// hard limit for the same resource, so a call cannot lift what binds
// every process of its sandbox.
func MergeRlimits(base, over []Rlimit) []Rlimit {
	out := slices.Clone(base)
	for _, o := range over {
		i := slices.IndexFunc(out, func(b Rlimit) bool { return b.Resource == o.Resource })
		if i < 0 {
			out = append(out, o)
			continue
		}
		hard := out[i].Hard
		out[i] = Rlimit{Resource: o.Resource, Soft: min(o.Soft, hard), Hard: min(o.Hard, hard)}
	}
	return out
}
