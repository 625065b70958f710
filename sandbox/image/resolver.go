package image

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox"
	"github.com/msb-dev/msb/sandbox/guest"
	"github.com/msb-dev/msb/sandbox/network"
)

// hostWorkdir is where commands of the host image run by default.
const hostWorkdir = "/workspace"

// defaultPath is the PATH of an image whose config sets none, as Docker does.
const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Resolver turns the image references of sandbox.start into images. It
// implements sandbox.Resolver.
type Resolver struct {
	// Aliases maps a reference (e.g. "microsandbox/python") to what it
	// runs: HostName, the built-in host image, or an OCI image reference
	// (e.g. "python:3.12-slim"). The reference HostName itself needs no
	// alias.
	Aliases map[string]string
	// Store pulls and caches OCI images. Without it only the host image
	// and its aliases resolve.
	Store *Store
}

var _ sandbox.Resolver = Resolver{}

// Resolve returns the image a reference names, following Aliases (a
// ":latest" tag is ignored when looking an alias up). A reference that is
// not the host image is pulled through Store, or taken from its cache. It
// returns an error wrapping errdefs.ErrInvalid, naming the
// reference and the fix, for a reference that cannot name an image (and,
// without a Store, for anything but the host image); the errors of
// Store.Get for a failed pull; and one wrapping errdefs.ErrUnavailable
// when the host image cannot be built on this host.
func (r Resolver) Resolve(ctx context.Context, ref, user string) (sandbox.Image, error) {
	target, ok := r.Aliases[ref]
	if !ok {
		target, ok = r.Aliases[strings.TrimSuffix(ref, ":latest")]
	}
	if !ok {
		target = ref
	}
	if target != HostName {
		if r.Store == nil {
			return sandbox.Image{}, errdefs.Invalidf("image %q is not available on this server: it runs the built-in %q image and its aliases; an operator can map the name to it in the [images] table of config.toml (%q = %q)",
				ref, HostName, ref, HostName)
		}
		rec, err := r.Store.Get(ctx, target)
		if err != nil {
			if target != ref {
				return sandbox.Image{}, fmt.Errorf("image %q (an alias of %q): %w", ref, target, err)
			}
			return sandbox.Image{}, err
		}
		img, err := r.Store.Image(rec, user)
		if err != nil {
			return sandbox.Image{}, err
		}
		img.Ref = ref
		return img, nil
	}
	root, err := Host()
	if err != nil {
		return sandbox.Image{}, fmt.Errorf("image %q: %w", ref, err)
	}
	img := sandbox.Image{Ref: ref, Root: root, Env: HostEnv(), Workdir: hostWorkdir}
	if user != "" {
		u, home, err := resolveUserIn(parseFields(hostPasswd), parseFields(hostGroup), user)
		if err != nil {
			return sandbox.Image{}, errdefs.Invalidf("image %q: %v", ref, err)
		}
		img.User = u
		img.Env = guest.MergeEnv(img.Env, []string{"HOME=" + home})
	}
	return img, nil
}

// Image turns a pulled image into what a sandbox's root is made of: its
// layers, plus a generated /etc/hosts and /etc/resolv.conf (as Docker
// writes them), its environment (with a default PATH and HOME when the
// image sets none), working directory and user. It returns an error
// wrapping errdefs.ErrInvalid when the user (asUser, else the image's
// User) names a user or group its /etc/passwd or /etc/group lacks.
func (s *Store) Image(rec Record, asUser string) (sandbox.Image, error) {
	layers := make([]string, len(rec.Layers))
	for i, l := range rec.Layers {
		layers[i] = s.layerDir(l.DiffID)
	}
	if asUser == "" {
		asUser = rec.Config.User
	}
	user, home, err := resolveUser(layers, asUser)
	if err != nil {
		return sandbox.Image{}, errdefs.Invalidf("image %q: %v", rec.Name, err)
	}
	env := append([]string(nil), rec.Config.Env...)
	if !hasEnv(env, "PATH") {
		env = append([]string{defaultPath}, env...)
	}
	if !hasEnv(env, "HOME") {
		env = append(env, "HOME="+home)
	}
	f := func(p, content string) sandbox.File {
		return sandbox.File{Path: p, Mode: 0o644, Content: []byte(content)}
	}
	root := sandbox.RootFS{
		Layers: layers,
		Files: []sandbox.File{
			f("etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"),
			f("etc/resolv.conf", string(network.DefaultResolvConf())),
		},
	}
	wd := rec.Config.WorkingDir
	if wd != "" && !path.IsAbs(wd) {
		wd = "/" + wd
	}
	return sandbox.Image{Ref: rec.Name, Root: root, Env: env, Workdir: wd, User: user}, nil
}

func hasEnv(env []string, key string) bool {
	for _, kv := range env {
		if k, _, _ := strings.Cut(kv, "="); k == key {
			return true
		}
	}
	return false
}

// resolveUser turns an image config's User ("", "name", "uid",
// "name:group", "uid:gid") into numbers, reading the image's own
// /etc/passwd and /etc/group, and returns the user's home directory.
func resolveUser(layers []string, spec string) (sandbox.User, string, error) {
	if spec == "" {
		return sandbox.User{}, "/root", nil
	}
	return resolveUserIn(readImageFile(layers, "etc/passwd"), readImageFile(layers, "etc/group"), spec)
}

// resolveUserIn resolves spec (name or uid, then optionally :group or
// :gid) against the fields of an /etc/passwd and an /etc/group, and
// returns the user and their home.
func resolveUserIn(passwd, group [][]string, spec string) (sandbox.User, string, error) {
	userPart, groupPart, hasGroup := strings.Cut(spec, ":")
	var u sandbox.User
	home := "/"
	found := false
	if n, err := strconv.ParseUint(userPart, 10, 32); err == nil {
		u.UID = uint32(n)
		for _, f := range passwd {
			if len(f) >= 6 && f[2] == userPart {
				g, _ := strconv.ParseUint(f[3], 10, 32)
				u.GID, home, found = uint32(g), f[5], true
				break
			}
		}
		if !found {
			u.GID = u.UID
		}
	} else {
		for _, f := range passwd {
			if len(f) >= 6 && f[0] == userPart {
				uid, _ := strconv.ParseUint(f[2], 10, 32)
				gid, _ := strconv.ParseUint(f[3], 10, 32)
				u.UID, u.GID, home, found = uint32(uid), uint32(gid), f[5], true
				break
			}
		}
		if !found {
			return sandbox.User{}, "", fmt.Errorf("user %q is not in its /etc/passwd", userPart)
		}
	}
	if hasGroup {
		if n, err := strconv.ParseUint(groupPart, 10, 32); err == nil {
			u.GID = uint32(n)
		} else {
			ok := false
			for _, f := range group {
				if len(f) >= 3 && f[0] == groupPart {
					g, _ := strconv.ParseUint(f[2], 10, 32)
					u.GID, ok = uint32(g), true
					break
				}
			}
			if !ok {
				return sandbox.User{}, "", fmt.Errorf("group %q is not in its /etc/group", groupPart)
			}
		}
	} else {
		for _, f := range group {
			if len(f) < 4 || f[3] == "" {
				continue
			}
			for _, member := range strings.Split(f[3], ",") {
				if member == userPart && userPart != "" {
					if g, err := strconv.ParseUint(f[2], 10, 32); err == nil && uint32(g) != u.GID {
						u.AdditionalGids = append(u.AdditionalGids, uint32(g))
					}
				}
			}
		}
	}
	if home == "" {
		home = "/"
	}
	return u, home, nil
}

// readImageFile reads a colon-separated file of the image (topmost layer
// first, stopping at a whiteout), never following a symlink on the host.
// parseFields splits the lines of a passwd or group file into fields.
func parseFields(text string) [][]string {
	var out [][]string
	for _, line := range strings.Split(text, "\n") {
		if line != "" && !strings.HasPrefix(line, "#") {
			out = append(out, strings.Split(line, ":"))
		}
	}
	return out
}

func readImageFile(layers []string, rel string) [][]string {
	for i := len(layers) - 1; i >= 0; i-- {
		dirfd, err := unix.Open(layers[i], unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			continue
		}
		fd, err := unix.Openat2(dirfd, rel, &unix.OpenHow{
			Flags:   unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NOFOLLOW,
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
		})
		unix.Close(dirfd)
		if errors.Is(err, unix.ENOENT) {
			continue
		}
		if err != nil {
			return nil
		}
		f := os.NewFile(uintptr(fd), filepath.Join(layers[i], rel))
		var st unix.Stat_t
		if unix.Fstat(fd, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
			f.Close()
			return nil // a whiteout or something odd: no such file
		}
		var out [][]string
		sc := bufio.NewScanner(io.LimitReader(f, 4<<20))
		for sc.Scan() {
			if line := sc.Text(); line != "" && !strings.HasPrefix(line, "#") {
				out = append(out, strings.Split(line, ":"))
			}
		}
		f.Close()
		return out
	}
	return nil
}
