// Package spawn is the spawner: a small process of the portal binary
// (sandbox/linux/portalbin, or msb itself when it carries none or refuses
// the one it carries), started by the Linux engine's launcher
// (sandbox/linux) once, and again if it exits, that clones every
// sandbox's init. Cloned from the server, an init
// would hold copies of all the server's descriptors until its exec; the
// spawner holds only its own (all close-on-exec) and almost no memory.
//
// The spawner's one thread that clones is prepared once: the sandboxes'
// bounding set, a full inheritable set (so that the root init keeps every
// capability for its set-up), no_new_privs, no supplementary groups. For
// each init it joins the sandbox's v1 cgroups (writing "0" to their tasks
// files, which the server opens and sends) and a network namespace made
// ahead if the server sends one, clones, and goes back to its own.
//
// It clones with clone3 and CLONE_VM|CLONE_VFORK, the child sharing its
// memory until the exec, also into a new user namespace, which Go's own
// fork and exec cannot do (see clone.go): on amd64; elsewhere with Go's,
// which copies the spawner's address space for such a clone.
//
// Protocol, over a SOCK_SEQPACKET socket pair, one request at a time: the
// server sends 'S' and a JSON Request with its descriptors
// (SCM_RIGHTS), and reads back 'P' and a JSON Reply with the init's
// pidfd. The init is the spawner's child: the spawner reaps it when the
// server, which watches its pidfd, says it has exited ('R' and its pid), so
// that its pid is not reused before. The spawner ends when the server
// closes its end, and dies with the server's thread that started it
// (Pdeathsig); inits it leaves are reparented to the host's init, which
// reaps them.
package spawn
