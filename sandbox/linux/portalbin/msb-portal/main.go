// Command msb-portal is the binary the Linux engine runs: its spawner
// (package spawn), and in every sandbox its init and portal (spawn.Reexec),
// and nothing else. It imports only what those roles need, so that it
// starts in a fraction of the time (and CPU) the whole msb binary takes,
// which initialises every package it holds (the server, SQLite, image
// registries, gVisor's network stack) before any of its code runs. msb
// carries it (package portalbin); it is built by
// `go generate ./sandbox/linux/portalbin`.
package main

import (
	"fmt"
	"os"
	"runtime"

	"github.com/msb-dev/msb/sandbox/linux/spawn"
)

func init() {
	// As in msb: the main goroutine keeps the main thread to itself, so
	// that no code that changes a thread's namespaces or credentials runs
	// on the thread that /proc/self and the process's identity follow.
	runtime.LockOSThread()
}

func main() {
	spawn.Reexec(os.Args, os.Getpid())
	fmt.Fprintln(os.Stderr, "msb-portal runs only inside an msb sandbox, started by the msb server")
	os.Exit(2)
}
