package boot

import "github.com/msb-dev/msb/sandbox/portal"

// Reexec plays the roles the portal binary is run in inside a sandbox,
// and never returns when it does: the init (`msb portal` as PID 1 with
// InitEnv set, maybeInit), which builds the sandbox around itself and then
// serves as its portal in the same process; the portal alone, which the
// init executes once the sandbox is set up when the binary is linked
// with cgo; and the trampoline through which the portal starts a command
// with resource limits (`msb portal-exec`). args are the process's
// arguments and pid its pid. spawn.Reexec, which every binary that runs
// sandboxes calls first thing, calls it after the spawner's role.
func Reexec(args []string, pid int) {
	maybeInit()
	if len(args) > 1 && args[1] == InitRole && pid == 1 {
		portal.Main()
	}
	if len(args) > 1 && args[1] == portal.ExecRole {
		portal.ExecMain()
	}
}
