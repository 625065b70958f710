package volume_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox/volume"
	"golang.org/x/sys/unix"
)

func store(t *testing.T) (*volume.Store, string) {
	root := t.TempDir()
	return &volume.Store{Root: filepath.Join(root, "volumes"), Meta: filepath.Join(root, "meta")}, root
}

func TestVolumeLifecycle(t *testing.T) {
	s, root := store(t)
	info, err := s.Create("team", "data", map[string]string{"k": "v"})
	if err != nil || info.Name != "data" || info.Labels["k"] != "v" || time.Since(info.Created) > time.Minute {
		t.Fatalf("create: %+v %v", info, err)
	}
	st, err := os.Stat(filepath.Join(root, "volumes", "team", "data"))
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("volume directory: %v %v", st, err)
	}
	if _, err := s.Create("team", "data", nil); !errdefs.Is(err, errdefs.Conflict) {
		t.Fatalf("second create: %v", err)
	}
	for _, bad := range []string{"", "../x", ".hidden", "a/b", strings.Repeat("x", 64)} {
		if _, err := s.Create("team", bad, nil); !errdefs.Is(err, errdefs.Invalid) {
			t.Errorf("create %q: %v", bad, err)
		}
	}
	// A directory a sandbox.start volume made is a volume too; files and
	// symlinks are not.
	os.MkdirAll(filepath.Join(root, "volumes", "team", "shared"), 0o755)
	os.WriteFile(filepath.Join(root, "volumes", "team", "file"), nil, 0o644)
	os.Symlink("/etc", filepath.Join(root, "volumes", "team", "link"))
	list, err := s.List("team")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, v := range list {
		names = append(names, v.Name)
	}
	if !slices.Equal(names, []string{"data", "shared"}) {
		t.Fatalf("list %q", names)
	}
	if other, _ := s.List("other"); len(other) != 0 {
		t.Fatalf("another namespace sees %+v", other)
	}
	if _, err := s.Get("other", "data"); !errdefs.Is(err, errdefs.NotFound) {
		t.Fatalf("get from another namespace: %v", err)
	}
	if _, err := s.Open("team", "link"); !errdefs.Is(err, errdefs.NotFound) {
		t.Fatalf("open a symlink as a volume: %v", err)
	}
	if err := s.Delete("team", "link"); !errdefs.Is(err, errdefs.NotFound) {
		t.Fatalf("delete a symlink as a volume: %v", err)
	}
	if err := s.Delete("team", "data"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get("team", "data"); !errdefs.Is(err, errdefs.NotFound) {
		t.Fatalf("after delete: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "meta", "team", "data.json")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("metadata left: %v", err)
	}
	if _, err := os.Stat("/etc/passwd"); err != nil {
		t.Fatal("deleting volumes reached the host")
	}
}

func TestVolumeFiles(t *testing.T) {
	s, root := store(t)
	s.Create("team", "data", nil)
	d, err := s.Open("team", "data")
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if n, err := d.Write("seed/deep/hello.txt", strings.NewReader("hello")); err != nil || n != 5 {
		t.Fatalf("write: %d %v", n, err)
	}
	f, info, err := d.Open("/seed/deep/hello.txt")
	if err != nil || info.Size != 5 || info.Dir {
		t.Fatalf("open: %+v %v", info, err)
	}
	data, _ := io.ReadAll(f)
	f.Close()
	if string(data) != "hello" {
		t.Fatalf("read %q", data)
	}
	if err := d.Mkdir("made/a/b"); err != nil {
		t.Fatal(err)
	}
	top, err := d.List("")
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, e := range top {
		paths = append(paths, e.Path)
		if !e.Dir {
			t.Errorf("%s is not a directory", e.Path)
		}
	}
	slices.Sort(paths)
	if !slices.Equal(paths, []string{"made", "seed"}) {
		t.Fatalf("list %q", paths)
	}
	if sub, _ := d.List("seed/deep"); len(sub) != 1 || sub[0].Path != "seed/deep/hello.txt" || sub[0].Size != 5 {
		t.Fatalf("list seed/deep: %+v", sub)
	}
	if err := d.Copy("seed/deep/hello.txt", "copy.txt"); err != nil {
		t.Fatal(err)
	}
	if err := d.Copy("copy.txt", "./copy.txt"); !errdefs.Is(err, errdefs.Invalid) {
		t.Fatalf("copy onto itself: %v", err)
	}
	if err := d.Rename("copy.txt", "made/moved.txt"); err != nil {
		t.Fatal(err)
	}
	if st, err := d.Stat("made/moved.txt"); err != nil || st.Size != 5 {
		t.Fatalf("stat: %+v %v", st, err)
	}
	if _, err := d.Stat("copy.txt"); !errdefs.Is(err, errdefs.NotFound) {
		t.Fatalf("stat after rename: %v", err)
	}
	if err := d.Remove("made", false); !errdefs.Is(err, errdefs.Conflict) {
		t.Fatalf("non-recursive remove of a full directory: %v", err)
	}
	if err := d.Remove("made", true); err != nil {
		t.Fatal(err)
	}
	if err := d.Remove("seed/deep/hello.txt", false); err != nil {
		t.Fatal(err)
	}
	if err := d.Remove("", true); !errdefs.Is(err, errdefs.Invalid) {
		t.Fatalf("remove the top: %v", err)
	}
	// The default volume is the namespace's directory.
	def, err := s.Open("team", "")
	if err != nil {
		t.Fatal(err)
	}
	defer def.Close()
	if _, err := def.Stat("data/seed/deep"); err != nil {
		t.Fatalf("default volume: %v", err)
	}
	_ = root
}

// Nothing leads out of a volume: "..", absolute symlinks, relative
// symlinks climbing out, a symlinked directory, even for writes and
// removals.
func TestVolumeEscapes(t *testing.T) {
	s, root := store(t)
	s.Create("team", "data", nil)
	outside := filepath.Join(root, "outside")
	os.MkdirAll(outside, 0o755)
	os.WriteFile(filepath.Join(outside, "secret"), []byte("secret"), 0o644)
	vol := filepath.Join(root, "volumes", "team", "data")
	os.Symlink(filepath.Join(outside, "secret"), filepath.Join(vol, "abs"))
	os.Symlink("../../../outside/secret", filepath.Join(vol, "rel"))
	os.Symlink(outside, filepath.Join(vol, "dir"))
	os.WriteFile(filepath.Join(vol, "in.txt"), []byte("in"), 0o644)
	os.Symlink("in.txt", filepath.Join(vol, "inside"))
	d, _ := s.Open("team", "data")
	defer d.Close()
	for _, p := range []string{"abs", "rel", "dir/secret"} {
		if _, _, err := d.Open(p); !errdefs.Is(err, errdefs.Invalid) {
			t.Errorf("read %s: %v", p, err)
		}
		if _, err := d.Write(p, strings.NewReader("x")); err == nil {
			t.Errorf("write %s succeeded", p)
		}
		if _, err := d.Stat(p); err == nil {
			t.Errorf("stat %s succeeded", p)
		}
	}
	for _, p := range []string{"../data/in.txt", "a/../../x", ".."} {
		if _, _, err := d.Open(p); !errdefs.Is(err, errdefs.Invalid) {
			t.Errorf("read %s: %v", p, err)
		}
	}
	if err := d.Mkdir("dir/sub"); err == nil {
		t.Error("mkdir through a symlink succeeded")
	}
	if err := d.Remove("dir", true); err != nil {
		t.Fatalf("remove the symlink: %v", err)
	}
	if err := d.Rename("abs", "moved"); err != nil {
		t.Fatalf("rename a symlink: %v", err)
	}
	if data, err := os.ReadFile(filepath.Join(outside, "secret")); err != nil || !bytes.Equal(data, []byte("secret")) {
		t.Fatalf("the outside changed: %q %v", data, err)
	}
	// A symlink that stays inside is followed.
	f, _, err := d.Open("inside")
	if err != nil {
		t.Fatalf("symlink inside the volume: %v", err)
	}
	f.Close()
	list, _ := d.List(".")
	for _, e := range list {
		if e.Path == "moved" && e.Dir {
			t.Error("a symlink out of the volume is described as its target")
		}
	}
}

// FuzzClean: a path either is refused or stays inside the volume: relative,
// without "..", "." or empty parts.
func FuzzClean(f *testing.F) {
	for _, s := range []string{"", "/", "a/b", "../x", "a/../../b", "./a//b/", "a\x00b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		rel, err := volume.Clean(p)
		if err != nil {
			return
		}
		if rel == "." {
			return
		}
		if strings.HasPrefix(rel, "/") {
			t.Fatalf("%q cleans to an absolute %q", p, rel)
		}
		for _, part := range strings.Split(rel, "/") {
			if part == ".." || part == "." || part == "" {
				t.Fatalf("%q cleans to %q", p, rel)
			}
		}
	})
}

// A sandbox can leave a FIFO, a socket or a device node in a volume: the
// file calls refuse them at once, and never open one (which would block
// the server on a FIFO, or reach the host's device).
func TestVolumeFilesRefuseSpecialFiles(t *testing.T) {
	s, root := store(t)
	s.Create("team", "data", nil)
	dir := filepath.Join(root, "volumes", "team", "data")
	if err := unix.Mkfifo(filepath.Join(dir, "fifo"), 0o666); err != nil {
		t.Fatal(err)
	}
	// /dev/null's numbers: harmless if it were opened, and opened at once.
	if err := unix.Mknod(filepath.Join(dir, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", filepath.Join(dir, "sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := os.Symlink("fifo", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	d, err := s.Open("team", "data")
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, name := range []string{"fifo", "null", "sock", "link"} {
		done := make(chan error, 3)
		go func() {
			_, _, err := d.Open(name)
			done <- err
			_, err = d.Write(name, strings.NewReader("x"))
			done <- err
			done <- d.Copy(name, "copy")
		}()
		for _, op := range []string{"read", "write", "copy"} {
			select {
			case err := <-done:
				if !errdefs.Is(err, errdefs.Invalid) || !strings.Contains(err.Error(), "not a regular file") {
					t.Errorf("%s %s: %v, want refused as not a regular file", op, name, err)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("%s %s still blocked after 5s", op, name)
			}
		}
	}
	if _, err := os.Lstat(filepath.Join(dir, "copy")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused copy made its destination: %v", err)
	}
	// Regular files still work, created or replaced.
	for range 2 {
		if _, err := d.Write("plain", strings.NewReader("ok")); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Copy("plain", "copy"); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "copy")); err != nil || string(b) != "ok" {
		t.Fatalf("copy: %q %v", b, err)
	}
}
