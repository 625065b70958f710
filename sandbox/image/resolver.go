package image

import (
	"context"
	"fmt"
	"strings"

	"github.com/msb-dev/msb/sandbox"
)

// hostWorkdir is where commands of the host image run by default.
const hostWorkdir = "/workspace"

// Resolver turns the image references of sandbox.start into images. It
// implements sandbox.Resolver.
type Resolver struct {
	// Aliases maps a reference (e.g. "microsandbox/python") to what it
	// runs; today the only target is HostName, the built-in host image.
	// The reference HostName itself needs no alias.
	Aliases map[string]string
}

var _ sandbox.Resolver = Resolver{}

// Resolve returns the image a reference names, following Aliases (a
// ":latest" tag is ignored). It returns an error wrapping
// sandbox.ErrInvalidArgument, naming the reference and the fix, for a
// reference that maps to no known image, and one wrapping
// sandbox.ErrUnavailable when the host image cannot be built on this host.
func (r Resolver) Resolve(ctx context.Context, ref string) (sandbox.Image, error) {
	target, ok := r.Aliases[ref]
	if !ok {
		target, ok = r.Aliases[strings.TrimSuffix(ref, ":latest")]
	}
	if !ok {
		target = ref
	}
	if target != HostName {
		return sandbox.Image{}, sandbox.Errorf(sandbox.ErrInvalidArgument,
			"image %q is not available on this server: it runs the built-in %q image and its aliases; an operator can map the name to it in the [images] table of config.toml (%q = %q)",
			ref, HostName, ref, HostName)
	}
	root, err := Host()
	if err != nil {
		return sandbox.Image{}, fmt.Errorf("image %q: %w", ref, err)
	}
	return sandbox.Image{Ref: ref, Root: root, Env: HostEnv(), Workdir: hostWorkdir}, nil
}
