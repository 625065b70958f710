// Command msb is a self-hosted sandbox server: it runs untrusted code in
// isolated Linux sandboxes behind an authenticated API that the
// microsandbox SDKs speak (see README.md). The commands are in cli/, the
// server's composition in server/.
package main

import (
	"os"
	"runtime"

	"github.com/msb-dev/msb/cli"
	"github.com/msb-dev/msb/sandbox/engine"
)

func init() {
	// The main goroutine keeps the main thread to itself, so that no code
	// that changes a thread's namespaces or credentials ever runs on the
	// thread that /proc/self and the process's identity follow.
	runtime.LockOSThread()
	// When msb runs itself in sandboxes (it carries no portal binary,
	// sandbox/linux/portalbin, or refused the one it carries), the same
	// binary is also their spawner and, inside every sandbox, its init and
	// portal; none of these roles may run any of the CLI.
	engine.Reexec(os.Args, os.Getpid())
}

func main() { os.Exit(cli.Main(os.Args)) }
