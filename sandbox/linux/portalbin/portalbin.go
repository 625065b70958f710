// Package portalbin carries the portal binary (msb-portal, the command in
// this directory) inside msb, so that msb stays one file to install while
// every sandbox runs the small binary rather than msb itself.
//
// `go generate ./sandbox/linux/portalbin` builds it into bin/, from which
// the next build of msb embeds it; the README's build does both. An msb
// built without it still works: its sandboxes run msb itself, which plays
// the same roles (sandbox/engine.Reexec) at about three times the CPU per
// start.
package portalbin

import (
	"embed"
	"fmt"
	"os"
	"path/filepath"
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

// Binary returns the portal binary msb carries; nil when it was built
// without one.
func Binary() []byte {
	data, err := bin.ReadFile("bin/" + Name)
	if err != nil {
		return nil
	}
	return data
}

// Install writes binary (Binary's) into dir as Name, mode 0755, through a
// file written aside and renamed over what was there, and returns its
// path.
func Install(dir string, binary []byte) (string, error) {
	tmp, err := os.CreateTemp(dir, "."+Name+"-*")
	if err != nil {
		return "", fmt.Errorf("install the portal binary: %w", err)
	}
	defer os.Remove(tmp.Name()) // after the rename, nothing
	_, err = tmp.Write(binary)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), 0o755)
	}
	path := filepath.Join(dir, Name)
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return "", fmt.Errorf("install the portal binary: %w", err)
	}
	return path, nil
}
