// Package portal is the agent that runs inside every sandbox, and the
// client the server uses to talk to it.
//
// The portal binary (msb-portal, which msb carries: sandbox/linux/portalbin;
// or msb itself when it carries none) is the init of every sandbox: the
// engine starts it as `msb portal`, PID 1 of the sandbox's PID namespace,
// from a sealed copy in memory, and once it has built the sandbox around
// itself (sandbox/linux/boot) it serves as the portal in the same process.
// The server keeps one end of a unix socketpair; the portal gets the
// other as file descriptor 3 and serves requests on it (run a command,
// evaluate code in a live interpreter, start a background command, answer
// a ping). When the server goes away the socket
// reaches EOF, the portal exits, and because it is PID 1 the kernel kills
// everything else in the sandbox: no sandbox outlives the server that owns it.
//
// When the engine passes the tasks file of the sandbox's "user" pids cgroup
// as file descriptor 4, the portal moves the one thread it forks from into
// it: everything the user runs is born there, and a fork bomb cannot take
// the pids the portal itself needs to keep answering. When the engine also
// passes that cgroup's directory as file descriptor 5, every command gets a
// cgroup of its own below it, which no process can leave: a timeout or a
// cancel kills everything the command started, even processes that left
// its session and lost their parent.
//
// A background command's output (a sandbox's exec or start script) goes to
// the sandbox's log; past guest.MaxLog the portal keeps draining it but
// stops sending it, so a command that prints forever costs the sandbox's
// CPU quota, not the server's.
//
// Why this shape:
//
//   - No path on any file system. The connection is an inherited file
//     descriptor, not a socket file or a port, so nothing inside or outside
//     the sandbox can find it, connect to it or race for it.
//   - One file to install. The portal binary is built from the same source
//     as msb and carried inside it (msb checks, where Go recorded it, that
//     both come from the same commit; the README's build generates it
//     every time), so the server and its agent speak the same protocol
//     version, and images need nothing installed for msb to work. It
//     imports only the standard library, x/sys/unix and msb packages that
//     do the same, so that a sandbox's start does not pay for the
//     server's packages.
//   - The server trusts nothing the portal sends. Untrusted code runs as root
//     inside the sandbox and can ptrace or replace the portal, so the Client
//     treats every frame as hostile: frames are size-bounded, output is
//     capped by the Client itself at guest.MaxOutput, and a malformed frame
//     closes the connection and fails every call. Whatever the sandbox sends,
//     the server's memory stays bounded.
//
// The wire protocol is newline-delimited JSON control frames over the
// socket, multiplexed by request id so that calls on one sandbox run
// concurrently, beside binary data frames. The client sends
// {"id":N,"op":"exec"|"repl"|"spawn"|"ping"|"cancel",...}; the portal answers
// with any number of line events {"id":N,"stream":"stdout"|"stderr","text":T}
// and one final {"id":N,"done":true,"exit_code":C,"timed_out":B,"status":S,"error":E}.
// A cancel carries the id of the call to abandon; the portal kills its
// processes (or interrupts the interpreter) and still sends the final frame.
// A "configure" (env, workdir) sets the environment and working directory of
// everything started afterwards: the engine sends it first to a sandbox it
// started before it knew them (a warm pool's).
//
// Bytes (a streamed process's output and input, file contents) travel in
// data frames, never in JSON strings: [0x00][id u64][kind u8][len u32][len
// bytes], big-endian, at most guest.MaxChunk bytes; no JSON frame starts
// with a zero byte. Kinds: 1 stdout, 2 stderr (portal → client), 3 stdin
// (client → portal; empty: end of input), 4 a file's chunk (both ways;
// from the client, empty: end of a write).
//
// A streamed process ("op":"start": command, args, env, workdir, user,
// tty, rows, cols, rlimits, timeout_ns, window) answers
// {"started":true,"pid":P,"credit":W} or fails at once with
// {"done":true,"fail":{"kind","errno","message"}}; then output data
// frames and {"stdin_error":M}; last {"done":true,"exit_code":C} (-1 and
// "signal" when a signal killed it; "timed_out"). On its id the client
// sends stdin data frames, "credit" (n), "signal", "resize" (rows, cols)
// and "detach" (kill): stop sending, close stdin, kill when asked.
//
// File operations are run by the portal inside the sandbox: "open" (path,
// open flags, mode) answers a handle; "read" (handle, offset, n, window)
// streams data frames and ends with {"done":true,"n":N}; "write" (handle,
// offset) grants credit, takes data frames until an empty one, and ends
// the same way; "close", "stat" (follow), "list" (entries in batches),
// "mkdir" (mode), "remove" (recursive), "copy" and "rename" (path,
// target). A failure is {"done":true,"fail":{"errno","message"}}.
//
// Flow control. Every stream of data frames is bounded by a window of
// credit: the sender may send no more bytes on a call than the receiver
// granted (a start's or read's "window", then "credit" frames as the
// receiver consumes; the portal grants a process's stdin and a write the
// same way with "credit" events). The portal stops reading a process's
// pipes (or the file) while it has no credit, and queues the client's
// input per call rather than waiting for a slow pipe or disk; the client
// queues what arrives per call and never waits for a caller. So a slow
// consumer costs at most a window of memory on either side, and never
// holds up the other calls on the socket. A client that finds more data
// than it granted closes the connection, as for any frame no honest
// portal sends.
package portal
