// Package boot is the code a Linux sandbox runs before its portal serves:
// its init (maybeInit), which builds the sandbox around itself from the
// Config the engine (sandbox/linux) sends it (mounts, the root and what is
// written into it, credentials), then becomes the portal in the same
// process; Reexec, which dispatches the in-sandbox roles of the portal
// binary (the init, the portal, the trampoline of commands); the messages
// of the init's exchange with the engine and the descriptor-passing helpers
// the spawner and the engine share with it (RecvMsg, SendMsg, CloseFDs);
// and Root, through which the init and the engine write into a sandbox's
// root without ever leaving it.
//
// It imports only the standard library, x/sys/unix and msb's packages that
// do the same (sandbox/guest, sandbox/portal, errdefs), so that the portal
// binary built from it (sandbox/linux/portalbin) stays small: a sandbox's
// start pays for the Go runtime's initialisation of every package of the
// binary it runs.
package boot
