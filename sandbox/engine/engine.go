// Package engine finds a sandbox engine by the name the configuration gives
// (engine = "linux"). It is the only package besides the engines
// themselves that imports them: the server asks it for an engine by name,
// and a second engine (gVisor, a microVM) is one more entry in drivers.
package engine

import (
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"slices"
	"sort"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox"
	"github.com/msb-dev/msb/sandbox/linux"
	"github.com/msb-dev/msb/sandbox/linux/spawn"
)

// Options locate what an engine keeps on the host.
type Options struct {
	StateDir   string // the engine's own state, <home>/run/engine
	SandboxDir string // one directory per sandbox, <home>/sandboxes
	// PortalBinary is the host path of the static binary the engine runs
	// inside every sandbox as its agent, and as its spawner: msb's own
	// executable when it carries no portal binary. Portal, if set, is that
	// binary itself (sandbox/linux/portalbin), run instead.
	PortalBinary string
	Portal       io.ReaderAt
	// CgroupParent holds the sandboxes' cgroups of this home.
	CgroupParent string
	// LayerLock is the image store's pull lock, held shared while a
	// sandbox records and mounts its layers.
	LayerLock string
	// TotalPids and TotalMemoryMiB bound what all the sandboxes hold
	// together (the parent cgroup's ceilings); 0: no bound.
	TotalPids      int
	TotalMemoryMiB int
	// UserNamespaces runs every sandbox in a user namespace of its own
	// (its root an unprivileged host id); volumes' files are then owned
	// on the host from VolumeOwner up.
	UserNamespaces bool
	// ReadyDiskMiB is the disk size (MiB) of which disks are made ahead
	// (the default disk); 0: none.
	ReadyDiskMiB int
	// ReadyInits is how many sandbox inits wait spawned ahead for cold
	// starts; 0: none.
	ReadyInits int
	Log        *slog.Logger
}

// Engine is an opened engine: what the sandbox service drives, and what
// the server releases when it stops.
type Engine interface {
	sandbox.Engine
	// Close releases what the engine holds for all its sandboxes (their
	// cgroup parent) once they are gone.
	Close() error
}

// driver is one engine msb can run.
type driver struct {
	open func(Options) (Engine, error)
	// layersInUse lists the image layer directories the sandboxes in
	// sandboxDir use, whatever process runs them, so that image prune
	// keeps them.
	layersInUse func(sandboxDir string) ([]string, error)
}

var drivers = map[string]driver{
	"linux": {
		open: func(o Options) (Engine, error) {
			return linux.New(linux.Config{StateDir: o.StateDir, SandboxDir: o.SandboxDir, PortalBinary: o.PortalBinary, Portal: o.Portal,
				CgroupParent: o.CgroupParent, LayerLock: o.LayerLock, Log: o.Log,
				Ceilings: linux.Ceilings{Pids: o.TotalPids, MemoryMiB: o.TotalMemoryMiB}, UserNamespaces: o.UserNamespaces,
				ReadyDiskMiB: o.ReadyDiskMiB, ReadyInits: o.ReadyInits})
		},
		layersInUse: linux.LayersInUse,
	},
}

// VolumeOwner is the host uid and gid that root's files in volumes have
// when sandboxes run in user namespaces (uid k inside: VolumeOwner+k).
const VolumeOwner = linux.VolumeIDBase

// Names lists the engines msb has.
func Names() []string {
	names := slices.Collect(maps.Keys(drivers))
	sort.Strings(names)
	return names
}

func find(name string) (driver, error) {
	d, ok := drivers[name]
	if !ok {
		return driver{}, errdefs.Invalidf("unknown sandbox engine %q: use one of %v", name, Names())
	}
	return d, nil
}

// Open opens the engine called name. Errors are of class Invalid for an
// unknown name, else the engine's own.
func Open(name string, o Options) (Engine, error) {
	d, err := find(name)
	if err != nil {
		return nil, err
	}
	e, err := d.open(o)
	if err != nil {
		return nil, fmt.Errorf("start the %s sandbox engine: %w", name, err)
	}
	return e, nil
}

// LayersInUse lists the image layers the sandboxes of engine name use.
func LayersInUse(name, sandboxDir string) ([]string, error) {
	d, err := find(name)
	if err != nil {
		return nil, err
	}
	return d.layersInUse(sandboxDir)
}

// Reexec lets the msb binary play the roles the Linux engine runs its
// portal binary in, when msb is that binary (it carries no portal binary,
// see sandbox/linux/portalbin, or refused the one it carries), and never
// returns when it does: the spawner, the host process that clones every
// sandbox's init, and inside every sandbox its init, its portal and the
// trampoline of its commands (spawn.Reexec). Call it first thing,
// before any other package's work: from an init function of package main.
// This package's own init calls it too.
func Reexec(args []string, pid int) { spawn.Reexec(args, pid) }

// init plays the roles as soon as the packages they need (the engines
// and the portal) are initialised, which is before some of those only
// the server and the CLI need. main's init, which calls Reexec after
// every package, then finds nothing to do.
func init() { Reexec(os.Args, os.Getpid()) }
