// Package portalbin carries the portal binary (msb-portal, the command in
// this directory) inside msb, so that msb stays one file to install while
// every sandbox runs the small binary rather than msb itself.
//
// `go generate ./sandbox/linux/portalbin` builds it into bin/, from which
// the next build of msb embeds it; the README's build does both. An msb
// built without it still works: its sandboxes run msb itself, which plays
// the same roles (sandbox/engine.Reexec) at more CPU per start (its Go
// runtime initialises all of msb's packages first: 22.6 ms of CPU against
// 7 to 8 to start and exit, on the machine of the README's benchmarks). After
// a change to the code the portal binary holds, generate it again: msb
// checks the source revision both were built from (Binary), not changes
// made since.
package portalbin

import (
	"debug/buildinfo"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"runtime"
	"runtime/debug"
)

// The build writes aside and renames, so that a build of msb at the same
// moment embeds the old binary or the new, never a part of one.
//
//go:generate sh -c "CGO_ENABLED=0 go build -trimpath -o bin/.msb-portal.new ./msb-portal && mv bin/.msb-portal.new bin/msb-portal"

// bin holds bin/msb-portal once generated (and a README, so that the
// pattern matches before).
//
//go:embed bin
var bin embed.FS

// Name is the portal binary's file name.
const Name = "msb-portal"

// Binary returns the portal binary msb carries, once it has checked that
// it was built for this machine and from the same source revision as msb
// (as far as both builds recorded one): else an error that says how to
// build it again. A build of msb carries whatever bin/ held when it was
// built: nothing in a fresh checkout without `go generate`.
// The binary is read in place, in msb's own image: it is not copied.
func Binary() (io.ReaderAt, error) { return binaryIn(bin) }

// binaryIn is Binary of the files fsys.
func binaryIn(fsys fs.FS) (io.ReaderAt, error) {
	f, err := fsys.Open("bin/" + Name)
	var data io.ReaderAt
	var size int64
	if err == nil {
		data, _ = f.(io.ReaderAt) // every file of an embed.FS is one
		if fi, err := f.Stat(); err == nil {
			size = fi.Size()
		}
	}
	if data == nil || size == 0 {
		return nil, errors.New("this msb carries no portal binary; build it as the README does (go generate ./sandbox/linux/portalbin, then go build)")
	}
	theirs, err := buildinfo.Read(data)
	if err != nil {
		return nil, fmt.Errorf("the portal binary msb carries: %w", err)
	}
	info, _ := debug.ReadBuildInfo()
	ours := settings(info)
	ours["GOOS"], ours["GOARCH"] = runtime.GOOS, runtime.GOARCH
	if err := sameBuild(settings(theirs), ours); err != nil {
		return nil, fmt.Errorf("the portal binary msb carries %w: run go generate ./sandbox/linux/portalbin again, then go build", err)
	}
	return data, nil
}

// settings are a build's settings by key (GOOS, vcs.revision, ...).
func settings(b *debug.BuildInfo) map[string]string {
	m := map[string]string{}
	if b != nil {
		for _, s := range b.Settings {
			m[s.Key] = s.Value
		}
	}
	return m
}

// sameBuild says how the portal binary's build (theirs) differs from
// msb's (ours): its machine (GOOS, GOARCH), or its source revision and
// whether the tree had changes, where both recorded them. Changes made
// since, and built into msb without generating the portal binary again,
// are not seen.
func sameBuild(theirs, ours map[string]string) error {
	for _, k := range []string{"GOOS", "GOARCH", "vcs.revision", "vcs.modified"} {
		t, ok1 := theirs[k]
		o, ok2 := ours[k]
		if ok1 && ok2 && t != o {
			return fmt.Errorf("was built with %s=%s, msb with %s=%s", k, t, k, o)
		}
	}
	return nil
}
