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
	// The main goroutine keeps the main thread: a goroutine that moves
	// its thread into a sandbox's namespaces and ends without giving it
	// back (libcontainer does) then never parks the main thread there,
	// where /proc/self would show that namespace for the server's life.
	runtime.LockOSThread()
	// The same binary is also the engine's container init and, inside
	// every sandbox, the portal; neither role may run any of the CLI.
	engine.Reexec(os.Args, os.Getpid())
}

func main() { os.Exit(cli.Main(os.Args)) }
