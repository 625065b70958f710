package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/errdefs"
)

// maxVolumes and maxPorts bound what one config may ask for.
const (
	maxVolumes = 64
	maxPorts   = 64
)

// volumeSpec is one "host:guest[:ro]" of config.volumes.
type volumeSpec struct {
	Host, Guest string
	ReadOnly    bool
}

func (v volumeSpec) String() string {
	if v.ReadOnly {
		return v.Host + ":" + v.Guest + ":ro"
	}
	return v.Host + ":" + v.Guest
}

// reservedGuest reports whether a sandbox path belongs to msb or the
// kernel and may not be covered by a volume.
func reservedGuest(p string) bool {
	for _, r := range []string{"/.msb", "/proc", "/sys", "/dev"} {
		if p == r || strings.HasPrefix(p, r+"/") {
			return true
		}
	}
	return p == "/"
}

// parseVolume checks the syntax of one volume and puts it in canonical
// form. Errors say which rule the spec breaks.
func parseVolume(v string) (volumeSpec, error) {
	parts := strings.Split(v, ":")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
		return volumeSpec{}, fmt.Errorf("%.100q is not host:guest or host:guest:ro", v)
	}
	spec := volumeSpec{Host: parts[0], Guest: parts[1]}
	if len(parts) == 3 {
		switch parts[2] {
		case "ro":
			spec.ReadOnly = true
		case "rw":
		default:
			return volumeSpec{}, fmt.Errorf("%.100q: the mode must be ro or rw, not %q", v, parts[2])
		}
	}
	if strings.ContainsAny(v, "\x00\n") {
		return volumeSpec{}, fmt.Errorf("%.100q contains a control character", v)
	}
	for _, c := range strings.Split(spec.Host, "/") {
		if c == ".." {
			return volumeSpec{}, fmt.Errorf("%.100q: the host path may not contain \"..\"", v)
		}
	}
	if !path.IsAbs(spec.Guest) {
		return volumeSpec{}, fmt.Errorf("%.100q: the sandbox path must be absolute, such as /data", v)
	}
	spec.Guest = path.Clean(spec.Guest)
	if reservedGuest(spec.Guest) {
		return volumeSpec{}, fmt.Errorf("%.100q: the sandbox path %s is reserved: use another, such as /data", v, spec.Guest)
	}
	spec.Host = path.Clean(spec.Host)
	return spec, nil
}

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
func (s *Service) resolveVolume(ns string, v volumeSpec) (Mount, error) {
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
	if err := os.MkdirAll(root, 0o755); err != nil {
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
		err = mkdirBeneath(rootfd, rel)
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

// mkdirBeneath creates the directory rel and its parents beneath rootfd,
// refusing to pass through any symlink.
func mkdirBeneath(rootfd int, rel string) error {
	cur := "."
	for _, c := range strings.Split(rel, "/") {
		if c == "" || c == "." {
			continue
		}
		parent, err := unix.Openat2(rootfd, cur, &unix.OpenHow{
			Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
		})
		if err != nil {
			if errors.Is(err, unix.ELOOP) {
				return unix.EXDEV // a symlink on the way: treat as leading out
			}
			return err
		}
		err = unix.Mkdirat(parent, c, 0o755)
		unix.Close(parent)
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return err
		}
		cur = path.Join(cur, c)
	}
	return nil
}
