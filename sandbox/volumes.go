package sandbox

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox/volume"
)

// namespaceRoots are the directories namespace ns may share: <root>/<ns>
// for every configured volume root. The first is where relative host
// paths resolve.
func (s *Service) namespaceRoots(ns string) []string {
	out := make([]string, 0, len(s.opts.VolumeRoots))
	for _, r := range s.opts.VolumeRoots {
		out = append(out, filepath.Join(r, ns))
	}
	return out
}

// resolveVolume turns a volume into a mount of a host directory (or file)
// inside one of the namespace's volume roots, creating a missing
// directory. The rules, each named in its error (errdefs.ErrInvalid):
// the host path is relative to the namespace's first root or inside one of
// its roots; nothing on the way, symlinks included, leads out of that
// root. The engine checks the last rule again when it mounts.
func (s *Service) resolveVolume(ns string, v Volume) (Mount, error) {
	bad := func(format string, args ...any) (Mount, error) {
		return Mount{}, errdefs.Invalidf("config.volumes: %q: "+format, append([]any{v.String()}, args...)...)
	}
	roots := s.namespaceRoots(ns)
	if len(roots) == 0 {
		return bad("this server shares no host directories (no volume_roots in its config)")
	}
	root, rel := roots[0], v.Host
	if filepath.IsAbs(v.Host) {
		root = ""
		for _, r := range roots {
			if v.Host == r || strings.HasPrefix(v.Host, r+"/") {
				root, rel = r, strings.TrimPrefix(strings.TrimPrefix(v.Host, r), "/")
				break
			}
		}
		if root == "" {
			return bad("the host path is outside the volume roots of namespace %q (%s): use a relative path, which resolves in %s", ns, strings.Join(roots, ", "), roots[0])
		}
	}
	if rel == "" {
		rel = "."
	}
	if err := volume.MkdirPrivate(root, s.opts.VolumeOwner); err != nil {
		return Mount{}, fmt.Errorf("volume root %s: %w", root, err)
	}
	rootfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return Mount{}, fmt.Errorf("volume root %s: %w", root, err)
	}
	defer unix.Close(rootfd)
	how := &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS}
	fd, err := unix.Openat2(rootfd, rel, how)
	if errors.Is(err, unix.ENOENT) {
		err = volume.MkdirBeneath(rootfd, rel, s.opts.VolumeOwner)
		if err == nil {
			fd, err = unix.Openat2(rootfd, rel, how)
		}
	}
	if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ELOOP) {
		return bad("a symlink on the host path leads out of the volume root %s: volumes must stay inside it", root)
	}
	if errors.Is(err, unix.ENOTDIR) {
		return bad("a part of the host path is a file, not a directory")
	}
	if err != nil {
		return Mount{}, fmt.Errorf("volume %s: %w", v, err)
	}
	var st unix.Stat_t
	err = unix.Fstat(fd, &st)
	unix.Close(fd)
	if err != nil {
		return Mount{}, fmt.Errorf("volume %s: %w", v, err)
	}
	if t := st.Mode & unix.S_IFMT; t != unix.S_IFDIR && t != unix.S_IFREG {
		return bad("the host path is neither a directory nor a regular file")
	}
	return Mount{Source: filepath.Join(root, rel), Target: v.Guest, ReadOnly: v.ReadOnly, Beneath: root}, nil
}
