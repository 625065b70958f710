// Package linux is msb's Linux isolation engine: each sandbox is a container
// run by runc's libcontainer, in process, without a runc binary.
//
// # Design
//
// A sandbox is described by an OCI runtime spec, built from
// specconv.Example() and turned into libcontainer's config by
// specconv.CreateLibcontainerConfig. Every sandbox has its own PID, mount,
// IPC, UTS, cgroup and network namespaces; its network namespace has only a
// loopback interface. Its cgroups (v1, driven through cgroupfs, never
// systemd) live under /<CgroupParent>/<namespace>.<name> and cap memory
// (with memory+swap equal to it, so no swap, where the kernel accounts
// swap), CPU quota and process count.
// Processes run as root of the sandbox with Docker's default capability set,
// no_new_privs, runc's masked and read-only paths, and a read-only /sys.
//
// The root file system is <SandboxDir>/<key>/rootfs. For an image with
// layers (sandbox.RootFS.Layers) it is an overlay mounted by the engine in
// the host's mount namespace: the layers read-only below, <key>/upper (the
// sandbox's writes) above; otherwise a plain directory. Writes vanish on
// Delete, which unmounts everything under <key> first (as does the Delete
// of a sandbox found by Recover after a crash). Everything the engine
// writes into a root (directories, links, /etc files) is resolved inside
// it, so an image's symlinks can never redirect it to the host. The
// image's host paths (RootFS.Mounts without Beneath) are bind-mounted by
// libcontainer inside the sandbox's mount namespace only. Volumes (Mounts
// with Beneath) are mounted by the engine before start, through file
// descriptors (openat2 RESOLVE_BENEATH, open_tree, mount_setattr,
// move_mount), onto a private mount of the root. Nothing else of the host
// is visible.
//
// DialSandbox connects into a sandbox's network namespace from a locked OS
// thread that joins it for the one dial; the server's port forwards use it.
//
// # The portal
//
// The sandbox's init is the msb binary itself, bind-mounted read-only at
// /.msb/msb and started as `/.msb/msb portal`. The server talks to it over a
// unix socketpair whose other end is the portal's file descriptor 3; every
// command and REPL evaluation goes through that connection (package
// sandbox/portal), and so do streamed processes (sandbox.Streamer) and file
// operations (sandbox.FileSystem): the portal runs them inside the
// sandbox, so every path resolves in the sandbox's root, and the
// connection's per-call credit windows keep a slow consumer from growing
// the server's memory or holding up the sandbox's other calls.
//
// The init gets the server's oom_score_adj but never less than 0: the
// init's score is the floor below which nothing in the sandbox can lower
// its own, and at -1000 the memory cgroup's OOM killer could kill nothing
// there. The portal raises the score of every process it starts
// instead, so that a sandbox out of memory loses the user's processes first.
//
// The portal also gets, as file descriptor 4, the open tasks file of a
// child pids cgroup ("user") limited to a little less than the sandbox's
// pids. A portal that moves the thread it forks from into it (by writing
// "0") keeps a reserve of pids for its own threads: a Go program that
// cannot create a thread aborts, and a fork bomb must not take the portal
// with it. As file descriptor 5 it gets the same cgroup's directory, as a
// detached bind mount from which ".." leads nowhere, to make one child
// cgroup per command: a timeout then kills everything the command started.
//
// A stopped sandbox keeps its root file system; starting it again creates
// a fresh container (libcontainer runs one init per container) on it.
//
// # Recovery
//
// When the server dies, every portal sees EOF on its connection and exits;
// the init of a PID namespace taking every other process of the sandbox with
// it. Nothing is re-adopted: the next server's Recover lists what the dead
// one left in StateDir and SandboxDir, and the caller deletes it.
//
// A binary embedding this engine must call MaybeInit first thing in main (or
// in an init function), since libcontainer re-executes the binary as
// `<binary> init` to set up each container.
package linux
