package linux

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/sandbox"
	"github.com/msb-dev/msb/sandbox/linux/boot"
)

// templates are the read-only lower layers of the roots of sandboxes
// without image layers (the host image): a directory with the root's
// generated directories, links and files and its mount points, built once
// per distinct content in <SandboxDir>/.template-<hash> and shared by
// every such sandbox, whose root is an overlay of it under the sandbox's
// own upper directory. A sandbox's start then creates a handful of inodes
// on the host's file system (its upper and work directories, the copy-up
// of /etc/hostname) instead of one per entry, and its deletion removes as
// few: on a file system that allocates inodes slowly while many were
// deleted recently (ext4 without a journal skips them), this is most of
// what a start and a stop cost.
type templates struct {
	dir string // SandboxDir

	mu  sync.Mutex // serialises builds and cleaning
	seq int
}

// templatePrefix starts the names of templates in SandboxDir; no sandbox
// key starts with a dot.
const (
	templatePrefix    = ".template-"
	templateTmpPrefix = ".tmp-template-"
)

// templateContent is what a template holds, hashed to name it.
type templateContent struct {
	Dirs    []string       `json:"dirs"`
	Links   []sandbox.Link `json:"links"`
	Files   []sandbox.File `json:"files"`
	Workdir string         `json:"workdir"`
	User    sandbox.User   `json:"user"` // owner of a workdir msb makes
	// Targets are the mount points of the image's binds: "d:/usr" for a
	// directory, "f:/etc/x" for a file.
	Targets []string `json:"targets"`
}

func contentOf(s sandbox.Spec) (templateContent, error) {
	c := templateContent{Dirs: s.Root.Dirs, Links: s.Root.Links, Files: s.Root.Files, Workdir: s.Workdir, User: s.User}
	for _, m := range bindOrder(imageMounts(s.Root.Mounts)) {
		fi, err := os.Stat(m.Source)
		if err != nil {
			return c, err
		}
		kind := "f:"
		if fi.IsDir() {
			kind = "d:"
		}
		c.Targets = append(c.Targets, kind+m.Target)
	}
	return c, nil
}

// get returns the directory of the template of the sandbox spec s (which
// has no image layers), building it if needed.
func (t *templates) get(s sandbox.Spec) (string, error) {
	c, err := contentOf(s)
	if err != nil {
		return "", err
	}
	data, err := json.Marshal(c)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(data)
	name := templatePrefix + hex.EncodeToString(sum[:12])
	final := filepath.Join(t.dir, name)
	t.mu.Lock()
	defer t.mu.Unlock()
	// Made by this engine, or an earlier server (a template is renamed
	// into place whole), and not removed since.
	if fi, err := os.Lstat(final); err == nil && fi.IsDir() {
		return final, nil
	}
	t.seq++
	tmp := filepath.Join(t.dir, fmt.Sprintf("%s%d-%d", templateTmpPrefix, os.Getpid(), t.seq))
	if err := buildTemplate(tmp, c); err != nil {
		removeTree(tmp, devOf(t.dir))
		return "", fmt.Errorf("root template: %w", err)
	}
	if err := os.Rename(tmp, final); err != nil {
		removeTree(tmp, devOf(t.dir))
		if fi, serr := os.Lstat(final); serr != nil || !fi.IsDir() {
			return "", fmt.Errorf("root template: %w", err)
		}
	}
	return final, nil
}

// buildTemplate writes the template of c into the new directory dir.
func buildTemplate(dir string, c templateContent) error {
	if err := os.Mkdir(dir, 0o755); err != nil {
		return err
	}
	r, err := boot.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer r.Close()
	b := &boot.RootBuild{Dirs: c.Dirs, Links: c.Links, Files: c.Files}
	for _, t := range c.Targets {
		b.Mounts = append(b.Mounts, t[2:])
	}
	if err := r.Build(b, "", c.Workdir, c.User); err != nil {
		return err
	}
	// The mount points the init needs, so that it makes none in the
	// sandbox's upper directory.
	for _, d := range []string{"proc", "dev", "sys"} {
		if err := r.Mkdir(d, 0o755); err != nil {
			return err
		}
	}
	for _, t := range c.Targets {
		var h *os.File
		if strings.HasPrefix(t, "d:") {
			h, err = r.MkdirAll(t[2:])
		} else {
			h, err = r.FileTarget(t[2:])
		}
		if err != nil {
			return fmt.Errorf("mount point %s: %w", t[2:], err)
		}
		h.Close()
	}
	return nil
}

// clean removes templates being built by processes that are gone and, when
// no sandbox is on disk, every template: they are rebuilt on demand. It
// reports whether it removed them all.
func (t *templates) clean() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	entries, err := os.ReadDir(t.dir)
	if err != nil {
		return false
	}
	inUse := false
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".") {
			inUse = true
		}
	}
	own := templateTmpPrefix + strconv.Itoa(os.Getpid()) + "-"
	dev := devOf(t.dir)
	for _, e := range entries {
		n := e.Name()
		if strings.HasPrefix(n, templateTmpPrefix) && !strings.HasPrefix(n, own) ||
			strings.HasPrefix(n, templatePrefix) && !inUse {
			removeTree(filepath.Join(t.dir, n), dev)
		}
	}
	return !inUse
}

// devOf returns the device of the file system p is on.
func devOf(p string) uint64 {
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return 0
	}
	return st.Dev
}
