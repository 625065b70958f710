// Package linux is msb's Linux isolation engine: each sandbox is a tree of
// processes in namespaces and cgroups of its own, started by msb itself,
// without an external runtime or any C code.
//
// # Design
//
// A sandbox has its own PID, mount, IPC, UTS, cgroup and network
// namespaces; its network namespace has only a loopback interface, and an
// outbound link to a netstack in the server when its spec has a network
// (network.go, attached while its init builds the sandbox). Its
// cgroups live under /<CgroupParent>/<namespace>.<name> in every cgroup v1
// hierarchy (or the unified one on a cgroup v2 host) and cap memory (with
// memory+swap equal to it, so no swap, where the kernel accounts swap),
// CPU quota and process count; its device cgroup allows only runc's
// default devices. Processes run as root of the sandbox with Docker's
// default capability set (an image's other user gets none), no_new_privs,
// in a user namespace of its own when the engine is configured so (its
// root an unprivileged range of host ids, userns.go),
// the portal's seccomp filter, runc's masked and read-only paths, and a
// read-only /sys.
//
// # Starting a sandbox
//
// Start clones the sandbox's init straight into its new namespaces from the
// spawner (package spawn): a small process of the portal binary that the
// server starts once (and again if it exits) and that does nothing else,
// so that the child holds none of the server's descriptors before its
// exec. The init is the spawner's child, which the server follows through
// a pidfd. The spawner's cloning thread has a bounding set that is already
// the sandbox's, no_new_privs and no supplementary groups, so that the
// init inherits them (into a new user namespace, which starts with a full
// bounding set, the child sets the sandbox's before its exec; where the
// spawner clones with Go's fork and exec, the init does). On amd64 the
// clone shares the spawner's memory until the exec (CLONE_VFORK), also
// into a new user namespace, whose id maps another of the spawner's
// threads writes while the child waits. Before each clone the cloning
// thread moves itself into the sandbox's cgroups by writing "0" to their
// v1 tasks files, and back afterwards: the init is born in its cgroups (and
// its cgroup namespace rooted there) without the grace-period wait that
// moving a process into a v1 cgroup costs after a quiet spell. (On a cgroup
// v2 host the init is cloned into its cgroup with CLONE_INTO_CGROUP
// instead.) What can be made ahead of time is: cgroup sets, ready with
// their device rules and the portal's user pids cgroup (a start renames one
// to the sandbox's key and writes its limits), and network namespaces with
// their loopback up (the spawner joins one for the clone), both refilled in
// the background.
//
// The init is the portal binary: msb-portal, the small static binary msb
// carries (sandbox/linux/portalbin), which holds only the spawner's, the
// init's and the portal's code (sandbox/linux/spawn, sandbox/linux/boot,
// sandbox/portal) and so starts in about a third of the CPU that msb
// takes, whose Go runtime initialises all of msb's packages first; or,
// when msb carries none (or one built from another revision), msb itself,
// which plays the same roles (sandbox/engine.Reexec). It is copied once,
// when the engine starts, into a sealed memfd, and executed from it as
// `msb portal` with nothing in its environment but boot.InitEnv and
// GOMAXPROCS. First, before anything of its sandbox is known, it stages
// what every sandbox gets from the kernel (boot.Stage, sent by the server
// at the spawn): it makes / private in its own mount namespace and
// mounts, on a tmpfs of its own, /proc, /dev with its device nodes,
// /dev/pts, /dev/shm, /dev/mqueue, a read-only /sys with the sandbox's
// cgroups (on a cgroup v2 host, mounted once it is configured and has its
// cgroup namespace), runc's masks over them, and brings up loopback; an init
// spawned ahead does all of it while it waits. It then reads from its
// socket the descriptors of its mounts (volumes, its root or disk, and
// in a user namespace the image's host paths: the server makes them
// while the init starts, SCM_RIGHTS) and its configuration, and builds
// the sandbox around itself (package boot): it mounts the root
// (the overlay of the image's layers, or a bind of the sandbox's
// directory), writes the image's directories, links and files into it on
// the first start, moves the staged mounts into it, attaches the image's
// host paths and the volumes, pivots into the root, sets the hostname,
// RLIMIT_NOFILE and its OOM score, drops to the sandbox's user and
// capabilities on every thread, installs the portal's seccomp filter
// (portal.LockDown), and only then reports its set-up done (it closes its
// socket): the server's start returns then, without a round trip to the
// portal, which the init becomes in the same process: one exec per
// start. A binary linked with cgo cannot change credentials on all its
// threads, so there the init executes the portal once more from the one
// thread that has them, which locks itself down before it serves.
//
// Nothing of a sandbox is ever mounted in the server's mount namespace, so
// the server's mount table does not grow with the sandboxes (cloning a
// mount namespace copies it) and a crash leaves no mount behind.
//
// # Files
//
// A sandbox's root file system is an overlay, mounted by its init: the
// image's layers (sandbox.RootFS.Layers) read-only below and the upper
// directory (the sandbox's writes) above, on the sandbox's own disk
// (disk.go: an ext4 image on a loop device, mounted detached by the server
// and attached by the init) when its spec has a size, else in
// <SandboxDir>/<key>/upper. In a user namespace the server mounts the
// overlay itself, with idmapped layers, and hands it to the init as a
// descriptor, as it does the image's host paths and the volumes. A root without
// image layers (the host image) has one lower layer instead, a template
// the engine builds once per distinct content in
// <SandboxDir>/.template-<hash> (the root's generated directories, links
// and files, and its mount points): a start then makes a handful of inodes
// on the host, not one per entry, which on a file system that allocates
// inodes slowly after many deletions (ext4 without a journal) is most of
// the cost of a start. Everything the engine writes into a root
// (directories, links, /etc files, /etc/hostname) is resolved inside it
// (openat2 RESOLVE_IN_ROOT), so an image's symlinks can never redirect it
// to the host. The image's host paths (RootFS.Mounts without
// Beneath) are bind-mounted nosuid and nodev. Volumes (Mounts with Beneath)
// are resolved by the server beneath their volume root (openat2
// RESOLVE_BENEATH) at create and again at start, cloned into detached
// mounts (open_tree, mount_setattr) and passed to the init as file
// descriptors, which it moves onto their targets, resolved inside the
// root. Nothing else of the host is visible. Writes vanish on Delete; a
// stopped sandbox keeps its files and starts again on them.
//
// DialSandbox connects into a sandbox's network namespace from a locked OS
// thread that joins it for the one dial; the server's port forwards use it.
//
// # The portal
//
// The server talks to the portal over a unix socketpair whose other end is
// the portal's file descriptor 3; every command and REPL evaluation goes
// through that connection (package sandbox/portal), and so do streamed
// processes (sandbox.Streamer) and file operations (sandbox.FileSystem):
// the portal runs them inside the sandbox, so every path resolves in the
// sandbox's root, and the connection's per-call credit windows keep a slow
// consumer from growing the server's memory or holding up the sandbox's
// other calls.
//
// The init gets the server's oom_score_adj but never less than 0: the
// init's score is the floor below which nothing in the sandbox can lower
// its own, and at -1000 the memory cgroup's OOM killer could kill nothing
// there. The portal raises the score of every process it starts
// instead, so that a sandbox out of memory loses the user's processes first.
//
// The portal also gets, as file descriptor 4, the open tasks file of a
// child pids cgroup ("user") limited to a little less than the sandbox's
// pids, and as file descriptor 5 that cgroup's directory as a detached
// bind mount (see cgroups.userPidsCgroup): a fork bomb cannot take the
// portal's pids, and each command gets a cgroup of its own below it.
//
// # Deleting a sandbox
//
// On a cgroup v1 host (a v2 cgroup cannot be renamed: there Delete waits
// for the processes), Delete kills the sandbox's init (SIGKILL: its PID
// namespace goes with it), lowers its CPU weight for a second, closes its
// network and its portal connection, renames its cgroup sets aside
// ("gone-<owner>-<n>", under the same parent) and moves its directory to
// the trash, and returns: the name is free at once. The kernel's
// tear-down of the processes (their memory unmapped, most of a stop's
// time) goes on in the background; the renamed cgroups keep counting them
// under the server's ceilings, a start that only they would keep out of
// total_pids waits for them (holdPids), and once they are gone the
// cgroups are removed, the id range freed, the init's mount namespace let
// go of (which unmounts the sandbox's mounts) and the disk wiped or
// closed (Close waits for all of it). Stop, which keeps the files, waits.
//
// # Recovery
//
// When the server dies, every portal sees EOF on its connection and exits;
// the init of a PID namespace taking every other process of the sandbox with
// it. Nothing is re-adopted: the next server's Recover lists the sandboxes
// left in SandboxDir (a sandbox's init, if it still runs, is found in its
// cgroups as the PID 1 of a namespace of its own), and the caller deletes
// them: processes, cgroups, directory.
//
// The portal binary plays every role the engine runs it in through
// spawn.Reexec, first thing (msb-portal from its main; msb, when it is its
// own portal binary, from an init function of package main, through
// sandbox/engine.Reexec).
package linux
