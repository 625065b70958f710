package sandbox

import (
	"context"
)

// Streams and files: what the v1 API's agent socket (and the JSON-RPC
// fs methods, and MCP's file tools) need of a running sandbox, beyond the
// buffered Exec and RunCode. Engines that can are found by type assertion
// (Streamer, FileSystem); the Service checks the sandbox runs, counts the
// call as activity (idle timeouts) and classifies errors, as for Exec.

// Streamer starts processes whose I/O is streamed. Events are delivered
// in order, from one goroutine, by calling events; a slow events (a client
// that reads slowly) slows the process's output down (flow control)
// rather than growing the server's memory, and never holds up other
// calls on the same sandbox. Errors: class Conflict when the sandbox is
// not running; a process that cannot start is an EventFailed, not an error.
type Streamer interface {
	Stream(ctx context.Context, id ID, spec ExecSpec, killOnClose bool, events func(ExecEvent)) (Process, error)
}

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
