package sandbox_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox"
	"github.com/msb-dev/msb/sandbox/pool"
	"github.com/msb-dev/msb/sandbox/sandboxtest"
	"github.com/msb-dev/msb/storage"
)

// pooled is a Service on the in-memory engine with a warm pool of size
// for the default image, filled before it returns.
type pooled struct {
	fixture
	pool *pool.Pool
}

func newPooled(t *testing.T, size pool.Size, opts func(*sandbox.ServiceOptions)) pooled {
	t.Helper()
	return newPooledOf(t, hostImage{}, sandbox.DefaultImage, size, opts)
}

// newPooledOf is newPooled for a pool of the image ref, resolved by
// images.
func newPooledOf(t *testing.T, images sandbox.Resolver, ref string, size pool.Size, opts func(*sandbox.ServiceOptions)) pooled {
	t.Helper()
	eng := sandboxtest.NewMemory()
	ctx := context.Background()
	db, err := storage.Open(ctx, filepath.Join(t.TempDir(), "msb.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	p, err := pool.New(pool.Options{Engine: eng, Images: images, Pids: 64, Log: log, Retry: 10 * time.Millisecond,
		Pools: map[string]pool.Size{ref: size}})
	if err != nil {
		t.Fatal(err)
	}
	o := sandbox.ServiceOptions{Engine: eng, Store: db, Images: images, LogDir: t.TempDir(), Pids: 64, MaxCPUs: 2, MaxMemMB: 4096,
		Log: log, Pool: p}
	if opts != nil {
		opts(&o)
	}
	svc := sandbox.NewService(o)
	if err := svc.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	p.Start()
	t.Cleanup(func() { svc.Close(context.Background()) })
	f := pooled{fixture{svc, eng, db, ctx}, p}
	f.waitWaiting(t, size.Sandboxes)
	return f
}

// waitWaiting waits until n sandboxes wait in the pool.
func (f pooled) waitWaiting(t *testing.T, n int) {
	t.Helper()
	f.waitUntil(t, fmt.Sprintf("%d waiting", n), func() bool {
		st := f.pool.Status()
		return len(st) == 1 && st[0].Waiting == n && st[0].Starting == 0 && len(f.eng.Waiting()) == n
	})
}

// waitUntil waits up to 10 s until cond holds, which what describes.
func (f pooled) waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: pool %+v, engine's waiting sandboxes %v", what, f.pool.Status(), f.eng.Waiting())
		}
	}
}

// A start of the pooled image takes a waiting sandbox instead of creating
// one, with its own config applied, and the pool refills.
func TestPoolServesStarts(t *testing.T) {
	f := newPooled(t, pool.Size{Sandboxes: 2, MemoryMiB: 128}, nil)
	for h, spec := range f.eng.Waiting() {
		if spec.MemoryMiB != 64 || spec.Hostname != sandbox.WarmHostname || spec.Workdir != "/srv" {
			t.Errorf("waiting sandbox %s: memory %d, hostname %q, workdir %q; want its share (64), %q, the image's workdir",
				h, spec.MemoryMiB, spec.Hostname, spec.Workdir, sandbox.WarmHostname)
		}
	}
	if st := f.svc.Pool(); len(st) != 1 || st[0] != (sandbox.PoolStatus{Image: sandbox.DefaultImage, Size: 2, MemoryMiB: 128, Waiting: 2}) {
		t.Errorf("Service.Pool = %+v", st)
	}
	id := sandboxtest.ID(t, "ns", "box")
	cfg := &sandbox.Config{Memory: 256, CPUs: 2, Envs: []string{"A=user"}, Workdir: "/data",
		Rlimits: []sandbox.Rlimit{{Resource: "nofile", Soft: 10, Hard: 10}}}
	if err := f.svc.Start(f.ctx, id, cfg); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.eng.Handle(id); !ok {
		t.Fatalf("the start did not take a waiting sandbox: %v", f.eng.Calls())
	}
	if n := count(f.eng.Calls(), "create "+id.String()); n != 0 {
		t.Errorf("a pooled start created the sandbox too: %v", f.eng.Calls())
	}
	spec, _ := f.eng.Spec(id)
	if spec.MemoryMiB != 256 || spec.CPUs != 2 || spec.Workdir != "/data" || spec.Hostname != "box" ||
		!slices.Contains(spec.Env, "A=user") || !slices.Contains(spec.Env, "PATH=/usr/bin") || len(spec.Rlimits) != 1 {
		t.Errorf("the adopted sandbox's spec is not its config's: %+v", spec)
	}
	if res, err := f.svc.Exec(f.ctx, id, sandbox.ExecRequest{Command: "echo", Args: []string{"hi"}}); err != nil || res.Output[0].Text != "echo hi" {
		t.Fatalf("exec in a pooled sandbox: %+v, %v", res, err)
	}
	f.waitWaiting(t, 2)
	rec, err := f.svc.Get(f.ctx, id)
	if err != nil || rec.State != sandbox.StateRunning || rec.UUID == "" {
		t.Fatalf("record of a pooled start: %+v, %v", rec, err)
	}
}

// A waiting sandbox goes to one start only, and one that was taken is
// never taken again: a stop deletes it, and the next start of the same
// name takes another.
func TestPoolNeverReuses(t *testing.T) {
	f := newPooled(t, pool.Size{Sandboxes: 3, MemoryMiB: 96}, nil)
	var mu sync.Mutex
	seen := map[string]sandbox.ID{}
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Go(func() {
			id := sandboxtest.ID(t, "ns", "c"+string(rune('a'+i)))
			if err := f.svc.Start(f.ctx, id, &sandbox.Config{}); err != nil {
				t.Error(err)
				return
			}
			h, ok := f.eng.Handle(id)
			if !ok {
				return // cold: the pool ran dry under a race with its refill
			}
			mu.Lock()
			defer mu.Unlock()
			if other, dup := seen[h]; dup {
				t.Errorf("waiting sandbox %s went to %s and to %s", h, other, id)
			}
			seen[h] = id
		})
	}
	wg.Wait()
	f.waitWaiting(t, 3)
	id := sandboxtest.ID(t, "ns", "again")
	for round := range 3 {
		if err := f.svc.Start(f.ctx, id, &sandbox.Config{}); err != nil {
			t.Fatal(err)
		}
		h, ok := f.eng.Handle(id)
		if !ok {
			t.Fatalf("round %d: cold start with a full pool", round)
		}
		if other, dup := seen[h]; dup {
			t.Fatalf("round %d: %s was given %s, which %s had", round, id, h, other)
		}
		seen[h] = id
		if err := f.svc.Stop(f.ctx, id); err != nil {
			t.Fatal(err)
		}
		if _, ok := f.eng.Spec(id); ok {
			t.Fatalf("round %d: the stopped sandbox is still in the engine", round)
		}
		if _, waiting := f.eng.Waiting()[h]; waiting {
			t.Fatalf("round %d: the stopped sandbox %s waits in the pool again", round, h)
		}
		f.waitWaiting(t, 3)
	}
}

// What cannot change on a running sandbox (volumes, tmpfs, its disk's
// size) makes the start a cold one, as does an image without a
// pool; the pool keeps its sandboxes for the starts that fit.
func TestPoolFallsBackToColdStarts(t *testing.T) {
	f := newPooled(t, pool.Size{Sandboxes: 1, MemoryMiB: 64}, func(o *sandbox.ServiceOptions) {
		o.VolumeRoots = []string{t.TempDir()}
	})
	for name, cfg := range map[string]*sandbox.Config{
		"volume": {Volumes: []sandbox.Volume{{Host: "data", Guest: "/data"}}},
		"tmpfs":  {Tmpfs: []sandbox.Tmpfs{{Guest: "/scratch", SizeMiB: 16}}},
		"disk":   {Disk: 512},
		"image":  {Image: "other"},
	} {
		id := sandboxtest.ID(t, "ns", name)
		if err := f.svc.Start(f.ctx, id, cfg); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if h, ok := f.eng.Handle(id); ok {
			t.Errorf("%s: took waiting sandbox %s", name, h)
		}
		if count(f.eng.Calls(), "create "+id.String()) != 1 {
			t.Errorf("%s: not started cold: %v", name, f.eng.Calls())
		}
	}
	if n := len(f.eng.Waiting()); n != 1 {
		t.Errorf("%d sandboxes wait after cold starts, want the pool's 1", n)
	}
}

// A burst larger than the pool: the first starts take waiting sandboxes,
// the rest are cold, and the pool refills afterwards.
func TestPoolRefillsAfterABurst(t *testing.T) {
	f := newPooled(t, pool.Size{Sandboxes: 3, MemoryMiB: 96}, nil)
	// Refills may not come between the burst's starts: every prestart
	// waits until the burst is over.
	release := make(chan struct{})
	var holding atomic.Bool
	holding.Store(true)
	f.eng.Fail = func(op string, id sandbox.ID) error {
		if op == "prestart" && holding.Load() {
			<-release
		}
		return nil
	}
	ids := make([]sandbox.ID, 8)
	var wg sync.WaitGroup
	for i := range ids {
		ids[i] = sandboxtest.ID(t, "burst", "b"+string(rune('a'+i)))
		wg.Go(func() {
			if err := f.svc.Start(f.ctx, ids[i], &sandbox.Config{}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	holding.Store(false)
	close(release)
	fromPool := 0
	for _, id := range ids {
		if _, ok := f.eng.Handle(id); ok {
			fromPool++
		}
	}
	if fromPool != 3 {
		t.Errorf("%d of 8 starts took a waiting sandbox, want the pool's 3", fromPool)
	}
	f.waitWaiting(t, 3)
}

// A pooled sandbox is charged to the namespace that takes it; one that
// its quota refuses takes nothing from the pool.
func TestPoolHonoursQuotas(t *testing.T) {
	f := newPooled(t, pool.Size{Sandboxes: 2, MemoryMiB: 64}, func(o *sandbox.ServiceOptions) {
		o.Quotas = func(ns string) sandbox.Quota { return sandbox.Quota{Sandboxes: 1, MemoryMiB: 512} }
	})
	a, b := sandboxtest.ID(t, "q", "a"), sandboxtest.ID(t, "q", "b")
	if err := f.svc.Start(f.ctx, a, &sandbox.Config{Memory: 384}); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.eng.Handle(a); !ok {
		t.Fatal("not started from the pool")
	}
	if u, _ := f.svc.Usage("q"); u != (sandbox.Usage{Sandboxes: 1, MemoryMiB: 384, CPUs: 1, DiskMiB: sandbox.DefaultDisk}) {
		t.Errorf("usage of the namespace that took a pooled sandbox: %+v", u)
	}
	f.waitWaiting(t, 2)
	if err := f.svc.Start(f.ctx, b, &sandbox.Config{}); !errors.Is(err, errdefs.ErrExhausted) {
		t.Fatalf("start past the quota: %v", err)
	}
	if n := len(f.eng.Waiting()); n != 2 {
		t.Errorf("a start the quota refused took from the pool: %d waiting", n)
	}
	if u, _ := f.svc.Usage(""); u != (sandbox.Usage{}) {
		t.Errorf("waiting sandboxes are charged to a namespace: %+v", u)
	}
}

// A waiting sandbox that died is not given to a start: the start takes
// the next one (or starts cold), and the pool replaces it.
func TestPoolSkipsDeadSandboxes(t *testing.T) {
	f := newPooled(t, pool.Size{Sandboxes: 2, MemoryMiB: 64}, nil)
	for h := range f.eng.Waiting() {
		f.eng.DieWaiting(h)
	}
	id := sandboxtest.ID(t, "ns", "box")
	if err := f.svc.Start(f.ctx, id, &sandbox.Config{}); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.eng.Handle(id); ok {
		t.Fatal("a dead waiting sandbox was given to a start")
	}
	if _, err := f.svc.Exec(f.ctx, id, sandbox.ExecRequest{Command: "true"}); err != nil {
		t.Fatal(err)
	}
	f.waitWaiting(t, 2)
}

// Closing the service deletes the waiting sandboxes and stops the refill.
func TestPoolDrainedAtClose(t *testing.T) {
	f := newPooled(t, pool.Size{Sandboxes: 3, MemoryMiB: 96}, nil)
	id := sandboxtest.ID(t, "ns", "box")
	if err := f.svc.Start(f.ctx, id, &sandbox.Config{}); err != nil {
		t.Fatal(err)
	}
	if err := f.svc.Close(f.ctx); err != nil {
		t.Fatal(err)
	}
	if w := f.eng.Waiting(); len(w) != 0 {
		t.Fatalf("waiting sandboxes left after Close: %v", w)
	}
	if _, ok := f.eng.Spec(id); ok {
		t.Fatal("the running pooled sandbox survived Close")
	}
	time.Sleep(50 * time.Millisecond)
	if w := f.eng.Waiting(); len(w) != 0 {
		t.Fatalf("the pool refilled after Close: %v", w)
	}
	if h, ok := f.pool.Take(sandbox.DefaultImage, sandbox.Spec{}); ok {
		t.Fatalf("a closed pool gave %s", h)
	}
}

// The pool never holds more sandboxes than its size, each limited to its
// share of the pool's memory, and a pool whose share would be below the
// least a sandbox may have is refused.
func TestPoolMemoryBound(t *testing.T) {
	f := newPooled(t, pool.Size{Sandboxes: 3, MemoryMiB: 100}, nil)
	total := 0
	for _, spec := range f.eng.Waiting() {
		total += spec.MemoryMiB
	}
	if total > 100 || len(f.eng.Waiting()) != 3 {
		t.Errorf("%d waiting sandboxes hold %d MiB, more than the pool's 100", len(f.eng.Waiting()), total)
	}
	_, err := pool.New(pool.Options{Engine: f.eng, Images: hostImage{}, Pools: map[string]pool.Size{"x": {Sandboxes: 4, MemoryMiB: 100}}})
	if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "at least 128 MiB") {
		t.Errorf("a pool of 4 in 100 MiB: %v", err)
	}
}

// versioned resolves the default image to a root whose content changes
// with version: an alias that moves to a newer image.
type versioned struct{ version atomic.Int32 }

func (v *versioned) Resolve(ctx context.Context, ref, user string) (sandbox.Image, error) {
	img, _ := hostImage{}.Resolve(ctx, ref, user)
	img.Root.Files = []sandbox.File{{Path: "etc/version", Mode: 0o644, Content: []byte{byte('0' + v.version.Load())}}}
	return img, nil
}

// Waiting sandboxes of an image that changed since they started are
// deleted, never given to a start.
func TestPoolDropsStaleSandboxes(t *testing.T) {
	images := &versioned{}
	f := newPooledOf(t, images, "changing", pool.Size{Sandboxes: 2, MemoryMiB: 64}, nil) // filled
	svc := f.svc
	full := func() bool { return f.pool.Status()[0].Waiting == 2 && len(f.eng.Waiting()) == 2 }
	old := f.eng.Waiting()
	images.version.Store(1)
	id := sandboxtest.ID(t, "ns", "fresh")
	if err := svc.Start(f.ctx, id, &sandbox.Config{Image: "changing"}); err != nil {
		t.Fatal(err)
	}
	if h, ok := f.eng.Handle(id); ok {
		t.Fatalf("a start of the new image took %s, started from the old one", h)
	}
	f.waitUntil(t, "refilled with the new image", func() bool {
		if !full() {
			return false
		}
		for h := range f.eng.Waiting() {
			if _, stale := old[h]; stale {
				return false
			}
		}
		return true
	})
	for h, spec := range f.eng.Waiting() {
		if string(spec.Root.Files[0].Content) != "1" {
			t.Errorf("waiting sandbox %s has image version %s, want 1", h, spec.Root.Files[0].Content)
		}
	}
	next := sandboxtest.ID(t, "ns", "next")
	if err := svc.Start(f.ctx, next, &sandbox.Config{Image: "changing"}); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.eng.Handle(next); !ok {
		t.Error("the refilled pool of the new image did not serve a start")
	}
}
