// Package guest is the plain data that the sandbox service, its engines
// and the code running inside every sandbox (its init and portal) share:
// what a sandbox's root is made of (mounts, links, files, tmpfs, its
// user), and the work done in it (commands and their output, REPL
// evaluations, streamed processes, files, resource limits).
//
// It imports nothing but the standard library, so that the small binary
// every sandbox runs (sandbox/linux/portalbin) stays small: the
// service's own package, sandbox, brings in the network stack and much
// more, and names each of these as its own (sandbox.Line is guest.Line).
package guest

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// Mount is a bind mount from the host into a sandbox.
type Mount struct {
	Source   string // absolute host path
	Target   string // absolute path inside the sandbox
	ReadOnly bool
	// Beneath, when set, is a directory Source must stay inside: a user's
	// volume. The engine resolves Source again when it mounts it, through
	// file descriptors and refusing any symlink that leads out of Beneath,
	// so a path swapped for a symlink after validation cannot escape.
	Beneath string
}

// Link is a symbolic link created in the sandbox's root, e.g. bin -> usr/bin.
type Link struct {
	Path   string // path inside the sandbox, relative to its root
	Target string // link target, as stored in the link
}

// File is a small file the engine writes into the sandbox's root before start.
type File struct {
	Path    string // path inside the sandbox, relative to its root
	Mode    uint32
	Content []byte
}

// User is a numeric user inside a sandbox, resolved from an image's config.
type User struct {
	UID, GID       uint32
	AdditionalGids []uint32
}

// Stream names an output stream of a command or interpreter.
type Stream string

// The two output streams.
const (
	Stdout Stream = "stdout"
	Stderr Stream = "stderr"
)

// Line is one line of output, without its trailing newline.
type Line struct {
	Stream Stream `json:"stream"`
	Text   string `json:"text"`
}

// ExecRequest is one command to run inside a sandbox.
type ExecRequest struct {
	Command string
	Args    []string
	Env     []string // added to the sandbox's environment
	Workdir string   // empty: the sandbox's workdir
	Timeout time.Duration
}

// ExitTimeout is the exit code reported for a command killed by its timeout,
// as timeout(1) does.
const ExitTimeout = 124

// ExecResult is the outcome of a command.
type ExecResult struct {
	ExitCode int
	TimedOut bool
	Output   []Line
}

// Language is an interpreter a sandbox keeps alive between calls.
type Language string

// Languages a REPL understands.
const (
	Python Language = "python"
	Node   Language = "nodejs"
)

// ReplStatus is the outcome of one REPL evaluation.
type ReplStatus string

// REPL outcomes, as the wire contract names them.
const (
	ReplSuccess ReplStatus = "success"
	ReplError   ReplStatus = "error"
	ReplTimeout ReplStatus = "timeout"
)

// ReplResult is the outcome of one evaluation.
type ReplResult struct {
	Status ReplStatus
	Output []Line
}

// MaxOutput caps the output of one call (command or REPL evaluation). Past
// it the output is cut and a last stderr line says so.
const MaxOutput = 16 << 20

// OutputCutNotice is the stderr line appended when output hit MaxOutput.
var OutputCutNotice = fmt.Sprintf("[msb] output exceeded %d MiB; the rest was discarded", MaxOutput>>20)

// OutputBudgetNotice is the stderr line appended when a call's output was
// cut because the server's memory for call output was in use by others.
const OutputBudgetNotice = "[msb] output cut: the server's memory for call output (output_memory in config.toml) is in use by other calls; retry, or write large output to a file and read it in parts with sandbox.fs.read"

// MaxLog caps the output of a sandbox's background command (its exec or
// start script), which goes to the sandbox's log. Past it the portal stops
// forwarding that output and keeps discarding it, so the command runs on
// (a service that logs a lot must not block on a full pipe) but printing
// forever costs only the sandbox's CPU quota, not the server's CPU.
const MaxLog = 64 << 20

// LogCutNotice is the line the log gets when the output hit MaxLog.
var LogCutNotice = fmt.Sprintf("[msb] log reached %d MiB; further output is discarded", MaxLog>>20)

// Tmpfs is a memory-backed directory of a sandbox: what is written there
// is charged to the sandbox's memory.
type Tmpfs struct {
	Guest   string // absolute path inside the sandbox
	SizeMiB int    // 0: half the sandbox's memory
}

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

// MergeEnv returns base overridden by over, by variable name: a later
// KEY=VALUE wins, as it would in a shell, and the order of first
// appearance is kept.
func MergeEnv(base, over []string) []string {
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
