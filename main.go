// Command msb is a self-hosted sandbox server: it runs untrusted code in
// isolated Linux sandboxes behind an authenticated API that the
// microsandbox SDKs speak (see README.md). The commands are in cli/, the
// server's composition in server/.
package main

import (
	"os"

	"github.com/msb-dev/msb/cli"
	"github.com/msb-dev/msb/sandbox/engine"
)

func init() {
	// The same binary is also the engine's container init and, inside
	// every sandbox, the portal; neither role may run any of the CLI.
	engine.Reexec(os.Args, os.Getpid())
}

func main() { os.Exit(cli.Main(os.Args)) }
