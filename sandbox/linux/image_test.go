package linux_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox"
	"github.com/msb-dev/msb/sandbox/image"
	"github.com/msb-dev/msb/sandbox/linux"
	"github.com/msb-dev/msb/sandbox/sandboxtest"
	"github.com/msb-dev/msb/storage"
)

// newEngine returns an engine keeping its state in home.
func newEngine(t *testing.T, home, cgroupPrefix string) (*linux.Engine, linux.Config) {
	t.Helper()
	cfg := testConfig(t, home, cgroupPrefix)
	e, err := linux.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e, cfg
}

// imageSpec is the spec of a sandbox made of layers that is created, never
// started.
func imageSpec(layers []string, mounts ...sandbox.Mount) sandbox.Spec {
	return sandbox.Spec{Root: sandbox.RootFS{Layers: layers, Mounts: mounts}, Workdir: "/", MemoryMiB: 64, CPUs: 1, Pids: 64}
}

// mountsUnder lists the mounts (mount point and type) at or below dir.
func mountsUnder(t *testing.T, dir string) []string {
	t.Helper()
	f, err := os.Open("/proc/thread-self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		for i, fld := range fields {
			if fld == "-" && i+1 < len(fields) && len(fields) > 4 && strings.HasPrefix(fields[4]+"/", dir+"/") {
				out = append(out, fields[4]+" "+fields[i+1])
			}
		}
	}
	return out
}

// TestPruneKeepsSandboxLayers removes the image of a sandbox and prunes,
// as `msb image prune` does while a server runs the sandbox: its layers
// stay until the sandbox is deleted, also when a crashed server left it.
// The msb home has a space in its path, which mountinfo escapes.
func TestPruneKeepsSandboxLayers(t *testing.T) {
	home := filepath.Join(t.TempDir(), "msb home")
	e, cfg := newEngine(t, home, "msb-prune")
	reg := sandboxtest.NewRegistry(t)
	ref := reg.Push(t, "test/inuse:1", sandboxtest.Image(t, v1.Config{}, sandboxtest.Layer(t, sandboxtest.File("etc/inuse", "x", 0o644))))
	db, err := storage.Open(context.Background(), filepath.Join(home, "msb.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	registries, _ := image.NewRegistries([]string{"127.0.0.1"}) // the test registry
	store, err := image.NewStore(filepath.Join(home, "images"), image.StoreOptions{
		Records:    db,
		Registries: &registries,
		InUse:      func() ([]string, error) { return linux.LayersInUse(cfg.SandboxDir) },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	rec, err := store.Pull(ctx, ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	img, err := store.Image(rec, "")
	if err != nil {
		t.Fatal(err)
	}
	id := sandboxtest.ID(t, "prune", "a")
	if err := e.Create(ctx, id, imageSpec(img.Root.Layers)); err != nil {
		t.Fatal(err)
	}
	defer e.Delete(ctx, id)
	if _, err := store.Remove(ref); err != nil {
		t.Fatal(err)
	}
	prune := func(want int) {
		t.Helper()
		if n, _, err := store.Prune(); err != nil || n != want {
			t.Errorf("prune deleted %d layers, %v; want %d", n, err, want)
		}
	}
	prune(0)
	if _, err := os.Stat(img.Root.Layers[0]); err != nil {
		t.Fatalf("the layer of a sandbox was pruned: %v", err)
	}

	// A server that died left the sandbox: its layers stay until the next
	// server cleans it up.
	next, err := linux.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if left, err := next.Recover(ctx); err != nil || len(left) != 1 {
		t.Fatalf("Recover = %+v, %v", left, err)
	}
	prune(0)
	if err := next.Delete(ctx, id); err != nil {
		t.Fatal(err)
	}
	prune(1)
}

// TestOverlayStaysPrivate runs a sandbox whose home is under a shared
// mount with a peer: neither its overlay nor its volume, mounted in the
// sandbox's own mount namespace, may show up in the peer (nor in the
// server's namespace) while it runs or after.
func TestOverlayStaysPrivate(t *testing.T) {
	base := t.TempDir()
	shared, peer := filepath.Join(base, "shared"), filepath.Join(base, "peer")
	for _, d := range []string{shared, peer, filepath.Join(base, "layer", "etc"), filepath.Join(base, "vol", "data")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mount(shared, shared, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(shared, unix.MNT_DETACH) })
	if err := unix.Mount("", shared, "", unix.MS_SHARED, ""); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(shared, peer, "", unix.MS_BIND, ""); err != nil { // joins shared's peer group
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(peer, unix.MNT_DETACH) })

	e, _ := newEngine(t, filepath.Join(shared, "home"), "msb-private")
	ctx := context.Background()
	id := sandboxtest.ID(t, "prop", "a")
	vol := sandbox.Mount{Source: filepath.Join(base, "vol", "data"), Target: "/data", Beneath: filepath.Join(base, "vol")}
	if err := e.Create(ctx, id, imageSpec([]string{filepath.Join(base, "layer")}, vol)); err != nil {
		t.Fatal(err)
	}
	defer e.Delete(ctx, id)
	// The portal runs in any image, even one without a userland.
	if err := e.Start(ctx, id); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{filepath.Join(peer, "home"), filepath.Join(shared, "home")} {
		if m := mountsUnder(t, dir); len(m) > 0 {
			t.Errorf("a running sandbox's mounts show under %s: %v", dir, m)
		}
	}
	if err := e.Delete(ctx, id); err != nil {
		t.Fatal(err)
	}
	left := append(mountsUnder(t, filepath.Join(peer, "home")), mountsUnder(t, filepath.Join(shared, "home"))...)
	if len(left) > 0 {
		t.Errorf("mounts left after Delete: %v", left)
	}
}

// TestMissingLayerMessage: layers gone from the cache are reported without
// the host path, with what to do.
func TestMissingLayerMessage(t *testing.T) {
	home := t.TempDir()
	e, cfg := newEngine(t, home, "msb-missing")
	id := sandboxtest.ID(t, "gone", "a")
	err := e.Create(context.Background(), id, imageSpec([]string{filepath.Join(home, "images", "layers", "0123abcd")}))
	if !errors.Is(err, errdefs.ErrInvalid) || strings.Contains(err.Error(), home) || !strings.Contains(err.Error(), "msb pull") {
		t.Errorf("Create with a missing layer = %v; want ErrInvalidArgument saying to pull again, without host paths", err)
	}
	if left := leftovers(t, cfg, id); len(left) > 0 {
		t.Errorf("failed Create left: %v", left)
	}
}

// TestFileVolumeTargets mounts a file volume over what an image has at the
// target: a regular file or nothing works; anything else is refused when
// the sandbox starts (its init resolves the target in its root), a fifo
// included (opening it for writing would block the start for ever).
func TestFileVolumeTargets(t *testing.T) {
	home := t.TempDir()
	e, cfg := newEngine(t, home, "msb-filevol")
	layer := filepath.Join(home, "layer")
	if err := os.MkdirAll(filepath.Join(layer, "etc", "dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(layer, "etc", "plain"), []byte("image\n"), 0o644)
	os.Symlink("plain", filepath.Join(layer, "etc", "link"))
	if err := unix.Mkfifo(filepath.Join(layer, "etc", "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	volRoot := filepath.Join(home, "volumes")
	os.MkdirAll(volRoot, 0o755)
	os.WriteFile(filepath.Join(volRoot, "conf"), []byte("volume\n"), 0o644)
	ctx := context.Background()
	for i, c := range []struct {
		target string
		want   string // "" for success
	}{
		{"/etc/plain", ""},
		{"/etc/new", ""},
		{"/etc/dir", "directory"},
		{"/etc/link", "symlink"},
		{"/etc/fifo", "fifo"},
	} {
		id := sandboxtest.ID(t, "filevol", "v"+strconv.Itoa(i))
		vol := sandbox.Mount{Source: filepath.Join(volRoot, "conf"), Target: c.target, Beneath: volRoot}
		if err := e.Create(ctx, id, imageSpec([]string{layer}, vol)); err != nil {
			t.Fatal(err)
		}
		err := e.Start(ctx, id)
		if c.want == "" {
			if err != nil {
				t.Errorf("file volume on %s: %v", c.target, err)
			} else if st, _ := e.Inspect(ctx, id); true {
				// Only the sandbox sees its mounts: look through its init's root.
				if data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/root%s", st.Pid, c.target)); string(data) != "volume\n" {
					t.Errorf("file volume on %s reads %q", c.target, data)
				}
			}
		} else if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "regular file") {
			t.Errorf("file volume on the image's %s at %s = %v; want ErrInvalidArgument naming it", c.want, c.target, err)
		}
		if err := e.Delete(ctx, id); err != nil {
			t.Fatal(err)
		}
		if left := leftovers(t, cfg, id); len(left) > 0 {
			t.Errorf("left after Delete: %v", left)
		}
	}
}
