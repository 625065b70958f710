package linux_test

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox"
	"github.com/msb-dev/msb/sandbox/image"
	"github.com/msb-dev/msb/sandbox/linux"
	"github.com/msb-dev/msb/sandbox/sandboxtest"
)

// TestOverlayVolumesAndDial runs a sandbox whose root is an overlay of two
// layers (with the host's userland mounted over it, for sh and python3),
// with a volume, and checks: the overlay and the volume work, a port
// inside answers DialSandbox, a volume swapped for a symlink after
// validation is refused, and nothing is left after Delete, nor after
// Recover of a crashed engine.
func TestOverlayVolumesAndDial(t *testing.T) {
	home := t.TempDir()
	cfg := testConfig(t, home, "msb-overlay")
	e, err := linux.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	low, high := filepath.Join(home, "l0"), filepath.Join(home, "l1")
	for _, d := range []string{filepath.Join(low, "etc"), filepath.Join(high, "etc")} {
		os.MkdirAll(d, 0o755)
	}
	os.WriteFile(filepath.Join(low, "etc/from-low"), []byte("low\n"), 0o644)
	os.WriteFile(filepath.Join(high, "etc/from-high"), []byte("high\n"), 0o644)
	// An image planting a symlink where the engine writes /etc/hostname:
	// the write must land in the sandbox's root, not on the host.
	canary := filepath.Join(home, "host-file")
	os.WriteFile(canary, []byte("untouched"), 0o644)
	os.Symlink(canary, filepath.Join(high, "etc/hostname"))
	volRoot := filepath.Join(home, "volumes", "ns")
	os.MkdirAll(filepath.Join(volRoot, "data"), 0o755)

	host, err := image.Host()
	if err != nil {
		t.Fatal(err)
	}
	root := host
	root.Layers = []string{low, high}
	root.Mounts = append(append([]sandbox.Mount(nil), host.Mounts...),
		sandbox.Mount{Source: filepath.Join(volRoot, "data"), Target: "/data", Beneath: volRoot})
	spec := sandbox.Spec{Root: root, Env: image.HostEnv(), Workdir: "/workspace", MemoryMiB: 256, CPUs: 1, Pids: 128}
	ctx := context.Background()
	id := sandboxtest.ID(t, "ovl", "a")
	if err := e.Create(ctx, id, spec); err != nil {
		t.Fatal(err)
	}
	defer e.Delete(ctx, id)
	if err := e.Start(ctx, id); err != nil {
		t.Fatal(err)
	}
	res, err := e.Exec(ctx, id, sandbox.ExecRequest{Command: "sh", Args: []string{"-c",
		"cat /etc/from-low /etc/from-high /etc/hostname; echo v > /data/f; " +
			"python3 -c 'import socket,sys; s=socket.socket(); s.bind((\"127.0.0.1\",7000)); s.listen(1); print(\"listening\"); sys.stdout.flush(); c,_=s.accept(); c.sendall(b\"pong\"); c.close()' &" +
			" sleep 0.5"}})
	if err != nil {
		t.Fatal(err)
	}
	out := ""
	for _, l := range res.Output {
		out += l.Text + "\n"
	}
	if !strings.Contains(out, "low\nhigh\na\n") || !strings.Contains(out, "listening") {
		t.Errorf("overlay sandbox output:\n%s", out)
	}
	if data, _ := os.ReadFile(canary); string(data) != "untouched" {
		t.Errorf("the engine wrote through an image's symlink to the host: %q", data)
	}
	if data, _ := os.ReadFile(filepath.Join(volRoot, "data", "f")); string(data) != "v\n" {
		t.Errorf("volume write: %q", data)
	}
	c, err := e.DialSandbox(ctx, id, 7000)
	if err != nil {
		t.Fatalf("DialSandbox: %v", err)
	}
	got, _ := io.ReadAll(c)
	c.Close()
	if string(got) != "pong" {
		t.Errorf("through DialSandbox: %q", got)
	}
	if _, err := e.DialSandbox(ctx, sandboxtest.ID(t, "ovl", "none"), 7000); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("DialSandbox of a missing sandbox = %v", err)
	}

	// Validated, then swapped for a symlink out: refused when mounting.
	os.Rename(filepath.Join(volRoot, "data"), filepath.Join(volRoot, "data.old"))
	os.Symlink("/etc", filepath.Join(volRoot, "data"))
	id2 := sandboxtest.ID(t, "ovl", "b")
	if err := e.Create(ctx, id2, spec); !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "leads out") {
		t.Errorf("Create with a volume swapped for a symlink = %v, want refused", err)
	}
	if left := leftovers(t, cfg, id2); len(left) > 0 {
		t.Errorf("failed Create left: %v", left)
	}

	if err := e.Delete(ctx, id); err != nil {
		t.Fatal(err)
	}
	if left := leftovers(t, cfg, id); len(left) > 0 {
		t.Errorf("left after Delete: %v", left)
	}

	// A running sandbox of an engine that is gone for the next one (as
	// after a crash): a new engine's Recover finds it running, and Delete
	// kills it and leaves nothing.
	os.Remove(filepath.Join(volRoot, "data"))
	os.Rename(filepath.Join(volRoot, "data.old"), filepath.Join(volRoot, "data"))
	id3 := sandboxtest.ID(t, "ovl", "c")
	if err := e.Create(ctx, id3, spec); err != nil {
		t.Fatal(err)
	}
	if err := e.Start(ctx, id3); err != nil {
		t.Fatal(err)
	}
	next, err := linux.New(cfg) // sees id3 as left by a dead server
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { next.Close() })
	left, err := next.Recover(ctx)
	if err != nil || len(left) != 1 || left[0].ID != id3 || left[0].State != sandbox.StateRunning {
		t.Fatalf("Recover = %+v, %v", left, err)
	}
	if err := next.Delete(ctx, id3); err != nil {
		t.Fatal(err)
	}
	if left := leftovers(t, cfg, id3); len(left) > 0 {
		t.Errorf("left after recovery: %v", left)
	}
	if data, _ := os.ReadFile(filepath.Join(volRoot, "data", "f")); string(data) != "v\n" {
		t.Errorf("recovery's cleanup touched the volume's data: %q", data)
	}
}

// A dynamically linked portal (this test binary) cannot run inside an
// image's root: the start says so, and how to build msb, instead of an
// internal error; the host image still works.
func TestDynamicPortalRefusesImages(t *testing.T) {
	home := t.TempDir()
	cfg := testConfig(t, home, "msb-dynamic")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cfg.PortalBinary = exe
	e, err := linux.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	layer := filepath.Join(home, "layer")
	os.MkdirAll(filepath.Join(layer, "etc"), 0o755)
	ctx := context.Background()
	id := sandboxtest.ID(t, "dyn", "img")
	if err := e.Create(ctx, id, sandbox.Spec{Root: sandbox.RootFS{Layers: []string{layer}}, Workdir: "/", MemoryMiB: 64, CPUs: 1, Pids: 64}); err != nil {
		t.Fatal(err)
	}
	defer e.Delete(ctx, id)
	err = e.Start(ctx, id)
	if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "statically") || !strings.Contains(err.Error(), "-static") {
		t.Fatalf("start of an image with a dynamic portal: %v", err)
	}
}
