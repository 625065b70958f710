package linux

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox"
)

// maxMountData is the kernel's limit on a mount's option string (a page).
const maxMountData = 4096

// layersFile, in a sandbox's directory, lists the image layers its overlay
// is made of. It is written when the sandbox is created and goes with its
// directory.
const layersFile = "layers.json"

// recordLayers writes the list of the sandbox's layers into its directory
// dir, for LayersInUse.
func recordLayers(dir string, layers []string) error {
	data, err := json.Marshal(layers)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(dir, layersFile, data); err != nil {
		return fmt.Errorf("recording the image's layers: %w", err)
	}
	return nil
}

// writeFileAtomic writes data (mode 0600) to the file name in dir through
// a file written aside and renamed into place: a crash leaves the old
// content or the new, never a part of either.
func writeFileAtomic(dir, name string, data []byte) error {
	tmp := filepath.Join(dir, name+".tmp")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, name))
}

// LayersInUse lists the image layer directories that the sandboxes in
// sandboxDir (a Config's SandboxDir) are made of: those of every sandbox
// whose directory is there, whichever process runs it, and those a crashed
// server left until they are cleaned up. An image store keeps these layers
// when it prunes. It reads files only, so it works from any process and
// mount namespace. Errors are the file system's, or say which sandbox's
// record is damaged.
func LayersInUse(sandboxDir string) ([]string, error) {
	entries, err := os.ReadDir(sandboxDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		data, err := os.ReadFile(filepath.Join(sandboxDir, e.Name(), layersFile))
		if errors.Is(err, fs.ErrNotExist) {
			continue // no image layers, or deleted meanwhile
		}
		if err != nil {
			return nil, err
		}
		var layers []string
		if err := json.Unmarshal(data, &layers); err != nil {
			return nil, fmt.Errorf("sandbox %s: its layer list is damaged: %w", e.Name(), err)
		}
		out = append(out, layers...)
	}
	return out, nil
}

// resolveVolume opens the host side of a volume beneath its volume root
// with openat2(RESOLVE_BENEATH), which refuses any symlink or ".." leading
// out of it at this very moment (whatever was checked before), and says
// whether it is a directory (else it is a regular file). The result is an
// O_PATH descriptor. It returns an error wrapping errdefs.ErrInvalid when
// the source leads out of its root or is neither a directory nor a file.
func resolveVolume(m sandbox.Mount) (fd int, dir bool, err error) {
	rel, err := filepath.Rel(m.Beneath, m.Source)
	if err != nil || !filepath.IsLocal(rel) && rel != "." {
		return -1, false, fmt.Errorf("volume %s: not inside %s: %w", m.Source, m.Beneath, errdefs.ErrInvalid)
	}
	rootfd, err := unix.Open(m.Beneath, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, false, fmt.Errorf("volume root %s: %w", m.Beneath, err)
	}
	defer unix.Close(rootfd)
	src, err := unix.Openat2(rootfd, rel, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS,
	})
	if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ELOOP) {
		return -1, false, fmt.Errorf("volume %s: a symlink or \"..\" leads out of the volume root: %w", m.Source, errdefs.ErrInvalid)
	}
	if err != nil {
		return -1, false, fmt.Errorf("volume %s: %w", m.Source, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(src, &st); err != nil {
		unix.Close(src)
		return -1, false, fmt.Errorf("volume %s: %w", m.Source, err)
	}
	dir = st.Mode&unix.S_IFMT == unix.S_IFDIR
	if !dir && st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(src)
		return -1, false, fmt.Errorf("volume %s is neither a directory nor a file: %w", m.Source, errdefs.ErrInvalid)
	}
	return src, dir, nil
}

// openVolume prepares a volume for the sandbox's init to mount, entirely
// through file descriptors: the source is resolved beneath its volume root
// (resolveVolume), cloned with open_tree into a detached mount, and made
// nosuid, nodev (and read-only) with mount_setattr. The init moves it onto
// its target, resolved inside the sandbox's root, in the sandbox's own
// mount namespace. The detached mount is in no mount namespace meanwhile.
// Errors are those of resolveVolume, or the kernel's.
func openVolume(m sandbox.Mount, userns *os.File) (tree *os.File, dir bool, err error) {
	src, dir, err := resolveVolume(m)
	if err != nil {
		return nil, false, err
	}
	defer unix.Close(src)
	// With userns, shown from the volume range to the sandbox's (userns.go).
	fd, err := idmappedClone(src, "", m.Source, userns, m.ReadOnly)
	if err != nil {
		return nil, false, fmt.Errorf("volume: %w", err)
	}
	return os.NewFile(uintptr(fd), "volume"), dir, nil
}
