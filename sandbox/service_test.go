package sandbox_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox"
	"github.com/msb-dev/msb/sandbox/sandboxtest"
	"github.com/msb-dev/msb/storage"
)

// hostImage resolves every reference to an empty root, as the built-in
// image resolver does for its aliases.
type hostImage struct{}

func (hostImage) Resolve(ctx context.Context, ref, user string) (sandbox.Image, error) {
	if ref == "nosuch" {
		return sandbox.Image{}, errdefs.Invalidf("image %q is not available", ref)
	}
	return sandbox.Image{Ref: ref, Env: []string{"PATH=/usr/bin", "A=image"}, Workdir: "/srv"}, nil
}

type fixture struct {
	svc   *sandbox.Service
	eng   *sandboxtest.Memory
	store *storage.DB
	ctx   context.Context
}

// newService is a Service on the in-memory engine and a real state
// database in a temporary directory.
func newService(t *testing.T, eng *sandboxtest.Memory) fixture {
	t.Helper()
	ctx := context.Background()
	db, err := storage.Open(ctx, filepath.Join(t.TempDir(), "msb.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	svc := sandbox.NewService(sandbox.ServiceOptions{
		Engine: eng, Store: db, Images: hostImage{}, LogDir: t.TempDir(), Pids: 64, MaxCPUs: 2, MaxMemMB: 4096,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), EphemeralGrace: 20 * time.Millisecond,
	})
	if err := svc.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close(context.Background()) })
	return fixture{svc, eng, db, ctx}
}

func count(calls []string, call string) int {
	n := 0
	for _, c := range calls {
		if c == call {
			n++
		}
	}
	return n
}

func TestStartIsIdempotentAndRefusesAnotherConfig(t *testing.T) {
	f := newService(t, sandboxtest.NewMemory())
	id := sandboxtest.ID(t, "ns", "box")
	cfg := &sandbox.Config{Memory: 256, Envs: []string{"A=user"}}
	if err := f.svc.Start(f.ctx, id, cfg); err != nil {
		t.Fatal(err)
	}
	// The same config, spelt with its defaults: nothing happens.
	if err := f.svc.Start(f.ctx, id, &sandbox.Config{Memory: 256, Envs: []string{"A=user"}, CPUs: 1, Image: sandbox.DefaultImage}); err != nil {
		t.Fatal(err)
	}
	if n := count(f.eng.Calls(), "start "+id.String()); n != 1 {
		t.Fatalf("engine started %d times, want 1: %v", n, f.eng.Calls())
	}
	err := f.svc.Start(f.ctx, id, &sandbox.Config{Memory: 512})
	if !errors.Is(err, errdefs.ErrConflict) || !strings.Contains(err.Error(), "different config") {
		t.Fatalf("start with another config: %v", err)
	}
	spec, _ := f.eng.Spec(id)
	if !slices.Equal(spec.Env, []string{"PATH=/usr/bin", "A=user"}) || spec.Workdir != "/srv" || spec.MemoryMiB != 256 || spec.Hostname != "box" {
		t.Fatalf("spec %+v: want the image's env overridden by the user's, the image's workdir, the config's memory", spec)
	}
}

func TestStartWithoutConfigReusesTheLastOne(t *testing.T) {
	f := newService(t, sandboxtest.NewMemory())
	id := sandboxtest.ID(t, "ns", "box")
	if err := f.svc.Start(f.ctx, id, &sandbox.Config{Memory: 300}); err != nil {
		t.Fatal(err)
	}
	if err := f.svc.Stop(f.ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := f.svc.Start(f.ctx, id, nil); err != nil {
		t.Fatal(err)
	}
	if spec, _ := f.eng.Spec(id); spec.MemoryMiB != 300 {
		t.Fatalf("restart without config: memory %d, want the last config's 300", spec.MemoryMiB)
	}
	rec, err := f.store.Sandbox(f.ctx, id)
	if err != nil || rec.State != sandbox.StateRunning || rec.Config.Memory != 300 {
		t.Fatalf("record %+v, %v", rec, err)
	}
}

func TestCallsOnMissingAndStoppedSandboxes(t *testing.T) {
	f := newService(t, sandboxtest.NewMemory())
	missing := sandboxtest.ID(t, "ns", "nosuch")
	if _, err := f.svc.Exec(f.ctx, missing, sandbox.ExecRequest{Command: "true"}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("exec in a sandbox never started: %v", err)
	}
	if err := f.svc.Stop(f.ctx, missing); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("stop of a sandbox never started: %v", err)
	}
	if _, err := f.svc.SandboxMetrics(f.ctx, missing); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("metrics of a sandbox never started: %v", err)
	}
	id := sandboxtest.ID(t, "ns", "box")
	if err := f.svc.Start(f.ctx, id, &sandbox.Config{}); err != nil {
		t.Fatal(err)
	}
	res, err := f.svc.Exec(f.ctx, id, sandbox.ExecRequest{Command: "exit", Args: []string{"3"}})
	if err != nil || res.ExitCode != 3 {
		t.Fatalf("exec: %+v, %v", res, err)
	}
	if err := f.svc.Stop(f.ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := f.svc.Stop(f.ctx, id); err != nil {
		t.Fatalf("second stop: %v", err)
	}
	_, err = f.svc.RunCode(f.ctx, id, sandbox.Python, "1", 0)
	if !errors.Is(err, errdefs.ErrConflict) || !strings.Contains(err.Error(), "not running") {
		t.Fatalf("code in a stopped sandbox: %v", err)
	}
	m, err := f.svc.SandboxMetrics(f.ctx, id)
	if err != nil || m.Running || m.CPUUsage != nil {
		t.Fatalf("metrics of a stopped sandbox: %+v, %v", m, err)
	}
}

// waitState polls the store until the sandbox's record has state want.
func waitState(t *testing.T, f fixture, id sandbox.ID, want sandbox.State) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if rec, err := f.store.Sandbox(f.ctx, id); err == nil && rec.State == want {
			return
		}
	}
	t.Fatalf("sandbox %s never recorded %s", id, want)
}

// The service learns from the engine that a sandbox died on its own: the
// sandbox is not running for any call at once, its record says stopped,
// what it held is released, and it starts again.
func TestSandboxThatDiesIsReleased(t *testing.T) {
	f := newService(t, sandboxtest.NewMemory())
	id := sandboxtest.ID(t, "ns", "box")
	if err := f.svc.Start(f.ctx, id, &sandbox.Config{}); err != nil {
		t.Fatal(err)
	}
	f.eng.Die(id)
	if _, err := f.svc.Exec(f.ctx, id, sandbox.ExecRequest{Command: "true"}); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("exec after the sandbox died: %v", err)
	}
	waitState(t, f, id, sandbox.StateStopped)
	if err := f.svc.Start(f.ctx, id, &sandbox.Config{}); err != nil {
		t.Fatalf("start after death: %v", err)
	}
	if _, err := f.svc.Exec(f.ctx, id, sandbox.ExecRequest{Command: "true"}); err != nil {
		t.Fatalf("exec after restart: %v", err)
	}
}

func TestDependsOn(t *testing.T) {
	f := newService(t, sandboxtest.NewMemory())
	db, app := sandboxtest.ID(t, "ns", "db"), sandboxtest.ID(t, "ns", "app")
	err := f.svc.Start(f.ctx, app, &sandbox.Config{DependsOn: []string{"db"}})
	if !errors.Is(err, errdefs.ErrConflict) || !strings.Contains(err.Error(), `start "db" first`) {
		t.Fatalf("start before its dependency: %v", err)
	}
	if err := f.svc.Start(f.ctx, db, &sandbox.Config{}); err != nil {
		t.Fatal(err)
	}
	if err := f.svc.Start(f.ctx, app, &sandbox.Config{DependsOn: []string{"db"}}); err != nil {
		t.Fatal(err)
	}
}

// An engine failure is an internal error that says what failed and keeps
// the engine's detail for the log only; the half-made sandbox is deleted.
// Errors that describe the request keep their class and words.
func TestEngineFailures(t *testing.T) {
	eng := sandboxtest.NewMemory()
	cause := errors.New("mount /var/lib/secret-host-path: permission denied")
	eng.Fail = func(op string, id sandbox.ID) error {
		if op == "start" && id.Name() == "broken" {
			return cause
		}
		return nil
	}
	f := newService(t, eng)
	id := sandboxtest.ID(t, "ns", "broken")
	err := f.svc.Start(f.ctx, id, &sandbox.Config{})
	var e *errdefs.Error
	if !errors.As(err, &e) || e.Class != errdefs.Internal || !strings.Contains(e.Msg, `start sandbox "broken" failed`) ||
		strings.Contains(e.Msg, "secret-host-path") || !errors.Is(err, cause) {
		t.Fatalf("engine failure: %#v", err)
	}
	if calls := eng.Calls(); calls[len(calls)-1] != "delete "+id.String() {
		t.Fatalf("half-made sandbox not deleted: %v", calls)
	}
	// The failed start is recorded, for a client that asks, with what
	// failed and not the engine's detail.
	rec, err := f.svc.Get(f.ctx, id)
	if err != nil || rec.State != sandbox.StateFailed || !strings.Contains(rec.Failure, "failed in the sandbox engine") ||
		strings.Contains(rec.Failure, "secret-host-path") || rec.UUID == "" {
		t.Fatalf("record of a failed start: %+v, %v", rec, err)
	}
	if err := f.svc.Start(f.ctx, id, &sandbox.Config{Image: "nosuch"}); !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "nosuch") {
		t.Fatalf("unknown image: %v", err)
	}
	if err := f.svc.Start(f.ctx, id, &sandbox.Config{Memory: 1 << 20}); !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "config.memory") {
		t.Fatalf("too much memory: %v", err)
	}
}

// Recover deletes what a crashed server left and marks its sandboxes
// stopped; Close stops every sandbox.
func TestRecoverAndClose(t *testing.T) {
	eng := sandboxtest.NewMemory()
	f := newService(t, eng)
	id := sandboxtest.ID(t, "ns", "box")
	if err := f.svc.Start(f.ctx, id, &sandbox.Config{}); err != nil {
		t.Fatal(err)
	}
	// A new server on the same database, after a crash: the engine holds
	// what the old one left.
	next := sandboxtest.NewMemory()
	next.Leave(id)
	svc := sandbox.NewService(sandbox.ServiceOptions{Engine: next, Store: f.store, Images: hostImage{}, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err := svc.Recover(f.ctx); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(next.Calls(), "delete "+id.String()) {
		t.Fatalf("leftover not deleted: %v", next.Calls())
	}
	if rec, _ := f.store.Sandbox(f.ctx, id); rec.State != sandbox.StateStopped {
		t.Fatalf("record after recovery: %s", rec.State)
	}
	if err := f.svc.Close(f.ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := eng.Inspect(f.ctx, id); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("sandbox still held after Close: %v", err)
	}
}

// CPU use is a percentage of one CPU over the time since the previous
// sample (for the first, since the sandbox was created), never more than
// its CPUs allow.
func TestMetricsCPU(t *testing.T) {
	eng := sandboxtest.NewMemory()
	f := newService(t, eng)
	id := sandboxtest.ID(t, "ns", "box")
	if err := f.svc.Start(f.ctx, id, &sandbox.Config{}); err != nil {
		t.Fatal(err)
	}
	// Start-up CPU far beyond what one CPU could have done since: the
	// first sample is capped at 100%.
	eng.AddCPU(time.Second)
	if m, err := f.svc.SandboxMetrics(f.ctx, id); err != nil || *m.CPUUsage > 100 || *m.CPUUsage < 99 {
		t.Fatalf("first sample after a start: %v%%, %v; want 100", *m.CPUUsage, err)
	}
	time.Sleep(50 * time.Millisecond)
	eng.AddCPU(25 * time.Millisecond)
	m, err := f.svc.SandboxMetrics(f.ctx, id)
	if err != nil || !m.Running || m.CPUUsage == nil || *m.CPUUsage <= 0 || *m.CPUUsage > 50 || *m.MemoryUsage != 1 {
		t.Fatalf("metrics %+v, %v", m, err)
	}
	list, err := f.svc.Metrics(f.ctx, "*")
	if err != nil || len(list) != 1 || list[0].ID != id {
		t.Fatalf("Metrics(*) = %+v, %v", list, err)
	}
}

// countingStore counts the store calls the service makes.
type countingStore struct {
	sandbox.Store
	gets, lists int
}

func (c *countingStore) Sandbox(ctx context.Context, id sandbox.ID) (sandbox.Record, error) {
	c.gets++
	return c.Store.Sandbox(ctx, id)
}

func (c *countingStore) Sandboxes(ctx context.Context, ns string) ([]sandbox.Record, error) {
	c.lists++
	return c.Store.Sandboxes(ctx, ns)
}

// The metrics of one sandbox look that sandbox up, not its whole
// namespace (which cost 6-9 ms with 1,400 records).
func TestSandboxMetricsLooksUpOne(t *testing.T) {
	eng := sandboxtest.NewMemory()
	f := newService(t, eng)
	counting := &countingStore{Store: f.store}
	svc := sandbox.NewService(sandbox.ServiceOptions{Engine: eng, Store: counting, Images: hostImage{}, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	id := sandboxtest.ID(t, "ns", "box")
	if err := svc.Start(f.ctx, id, &sandbox.Config{}); err != nil {
		t.Fatal(err)
	}
	defer svc.Close(f.ctx)
	counting.gets, counting.lists = 0, 0
	if _, err := svc.SandboxMetrics(f.ctx, id); err != nil {
		t.Fatal(err)
	}
	if counting.lists != 0 || counting.gets != 1 {
		t.Fatalf("one sandbox's metrics: %d lookups, %d listings; want 1 lookup", counting.gets, counting.lists)
	}
}

// A sandbox's UUID stays for its life, across stops and starts; a
// sandbox of the same name made after a removal gets another.
func TestUUIDAndRemove(t *testing.T) {
	f := newService(t, sandboxtest.NewMemory())
	id := sandboxtest.ID(t, "ns", "box")
	if err := f.svc.Start(f.ctx, id, &sandbox.Config{}); err != nil {
		t.Fatal(err)
	}
	first, err := f.svc.Get(f.ctx, id)
	if err != nil || first.UUID == "" || first.State != sandbox.StateRunning {
		t.Fatalf("Get = %+v, %v", first, err)
	}
	if byUUID, err := f.svc.GetByUUID(f.ctx, "ns", first.UUID); err != nil || byUUID.ID != id {
		t.Fatalf("GetByUUID = %+v, %v", byUUID, err)
	}
	if _, err := f.svc.GetByUUID(f.ctx, "other", first.UUID); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("GetByUUID in another namespace: %v", err)
	}
	f.svc.Stop(f.ctx, id)
	f.svc.Start(f.ctx, id, nil)
	if again, _ := f.svc.Get(f.ctx, id); again.UUID != first.UUID {
		t.Fatalf("UUID changed across a restart: %s, %s", first.UUID, again.UUID)
	}
	if err := f.svc.Remove(f.ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.Get(f.ctx, id); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("Get after Remove: %v", err)
	}
	if err := f.svc.Remove(f.ctx, id); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("second Remove: %v", err)
	}
	if _, err := f.eng.Inspect(f.ctx, id); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("removed sandbox still held by the engine: %v", err)
	}
	if err := f.svc.Start(f.ctx, id, &sandbox.Config{}); err != nil {
		t.Fatal(err)
	}
	if fresh, _ := f.svc.Get(f.ctx, id); fresh.UUID == first.UUID || fresh.UUID == "" {
		t.Fatalf("a new sandbox of the same name kept the UUID %s", fresh.UUID)
	}
}

func TestListPagesAndLabels(t *testing.T) {
	f := newService(t, sandboxtest.NewMemory())
	for i, name := range []string{"a", "b", "c", "d", "e"} {
		labels := map[string]string{"team": "x"}
		if i%2 == 1 {
			labels["team"] = "y"
		}
		if err := f.svc.Start(f.ctx, sandboxtest.ID(t, "ns", name), &sandbox.Config{Labels: labels}); err != nil {
			t.Fatal(err)
		}
	}
	f.svc.Start(f.ctx, sandboxtest.ID(t, "other", "z"), &sandbox.Config{})
	var names []string
	cursor := ""
	for range 10 {
		page, next, err := f.svc.List(f.ctx, "ns", sandbox.ListOptions{Limit: 2, After: cursor})
		if err != nil || len(page) > 2 {
			t.Fatalf("List = %v, %q, %v", page, next, err)
		}
		for _, r := range page {
			names = append(names, r.ID.Name())
		}
		if next == "" {
			break
		}
		cursor = next
	}
	if strings.Join(names, ",") != "a,b,c,d,e" {
		t.Fatalf("pages gave %v", names)
	}
	page, next, err := f.svc.List(f.ctx, "ns", sandbox.ListOptions{Labels: map[string]string{"team": "y"}})
	if err != nil || next != "" || len(page) != 2 || page[0].ID.Name() != "b" || page[1].ID.Name() != "d" {
		t.Fatalf("List by label = %v, %q, %v", page, next, err)
	}
	if _, _, err := f.svc.List(f.ctx, "ns", sandbox.ListOptions{After: "%%%"}); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("bad cursor: %v", err)
	}
}

// An ephemeral sandbox is removed once it stopped (after its grace, while
// which it is listed as stopped); a max duration stops a sandbox.
func TestEphemeralAndMaxDuration(t *testing.T) {
	f := newService(t, sandboxtest.NewMemory())
	eph := sandboxtest.ID(t, "ns", "eph")
	if err := f.svc.Start(f.ctx, eph, &sandbox.Config{Lifecycle: sandbox.Lifecycle{Ephemeral: true}}); err != nil {
		t.Fatal(err)
	}
	if err := f.svc.Stop(f.ctx, eph); err != nil {
		t.Fatal(err)
	}
	if rec, err := f.svc.Get(f.ctx, eph); err != nil || rec.State != sandbox.StateStopped {
		t.Fatalf("an ephemeral sandbox right after its stop: %+v, %v", rec, err)
	}
	waitGone(t, f, eph)

	short := sandboxtest.ID(t, "ns", "short")
	if err := f.svc.Start(f.ctx, short, &sandbox.Config{Lifecycle: sandbox.Lifecycle{MaxDuration: 50 * time.Millisecond}}); err != nil {
		t.Fatal(err)
	}
	waitState(t, f, short, sandbox.StateStopped)
	// A dead ephemeral sandbox goes too.
	dies := sandboxtest.ID(t, "ns", "dies")
	if err := f.svc.Start(f.ctx, dies, &sandbox.Config{Lifecycle: sandbox.Lifecycle{Ephemeral: true}}); err != nil {
		t.Fatal(err)
	}
	f.eng.Die(dies)
	waitGone(t, f, dies)
}

func waitGone(t *testing.T, f fixture, id sandbox.ID) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if _, err := f.store.Sandbox(f.ctx, id); errors.Is(err, errdefs.ErrNotFound) {
			return
		}
	}
	t.Fatalf("sandbox %s never removed", id)
}

// A namespace's running sandboxes stay within its quota: a start past it
// is refused naming the quota, and what a stop (or a death) frees can be
// used again; other namespaces are not affected.
func TestNamespaceQuota(t *testing.T) {
	eng := sandboxtest.NewMemory()
	db := newService(t, eng).store
	svc := sandbox.NewService(sandbox.ServiceOptions{Engine: eng, Store: db, Images: hostImage{}, MaxMemMB: 4096, MaxCPUs: 8,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Quotas: func(ns string) sandbox.Quota {
			return map[string]sandbox.Quota{"small": {Sandboxes: 2, MemoryMiB: 768, CPUs: 3, DiskMiB: 4096}}[ns]
		}})
	defer svc.Close(context.Background())
	ctx := context.Background()
	a, b, c := sandboxtest.ID(t, "small", "a"), sandboxtest.ID(t, "small", "b"), sandboxtest.ID(t, "small", "c")
	if err := svc.Start(ctx, a, &sandbox.Config{Memory: 512}); err != nil {
		t.Fatal(err)
	}
	if err := svc.Start(ctx, b, &sandbox.Config{Memory: 512}); !errors.Is(err, errdefs.ErrExhausted) || !strings.Contains(err.Error(), "quotas.memory") {
		t.Fatalf("start past the memory quota: %v", err)
	}
	if err := svc.Start(ctx, b, &sandbox.Config{Memory: 256, CPUs: 3}); !errors.Is(err, errdefs.ErrExhausted) || !strings.Contains(err.Error(), "quotas.cpus") {
		t.Fatalf("start past the CPU quota: %v", err)
	}
	if err := svc.Start(ctx, b, &sandbox.Config{Memory: 256, Disk: 2049}); !errors.Is(err, errdefs.ErrExhausted) || !strings.Contains(err.Error(), "quotas.disk") {
		t.Fatalf("start past the disk quota: %v", err)
	}
	if err := svc.Start(ctx, b, &sandbox.Config{Memory: 256}); err != nil {
		t.Fatal(err)
	}
	if err := svc.Start(ctx, c, &sandbox.Config{Memory: 32}); !errors.Is(err, errdefs.ErrExhausted) || !strings.Contains(err.Error(), "quotas.sandboxes") {
		t.Fatalf("start past the sandbox quota: %v", err)
	}
	if u, q := svc.Usage("small"); u != (sandbox.Usage{Sandboxes: 2, MemoryMiB: 768, CPUs: 2, DiskMiB: 2 * sandbox.DefaultDisk}) || q.Sandboxes != 2 {
		t.Fatalf("usage %+v of quota %+v", u, q)
	}
	if err := svc.Start(ctx, sandboxtest.ID(t, "big", "c"), &sandbox.Config{Memory: 2048}); err != nil {
		t.Fatalf("another namespace: %v", err)
	}
	svc.Stop(ctx, a)
	eng.Die(b)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if err := svc.Start(ctx, c, &sandbox.Config{Memory: 768, CPUs: 3}); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("what a stop and a death freed cannot be used again: %v", err)
		}
	}
}

// The first CPU sample spreads what the sandbox used since its creation
// over that whole time: a start that took 200 ms and 100 ms of CPU reads
// about 50%, not 100% (the capped figure of start-up CPU over the instant
// between the start and the sample).
func TestFirstCPUSampleFromCreation(t *testing.T) {
	eng := sandboxtest.NewMemory()
	eng.AddCPU(100 * time.Millisecond) // what its start will have used
	eng.Fail = func(op string, id sandbox.ID) error {
		if op == "start" {
			time.Sleep(200 * time.Millisecond)
		}
		return nil
	}
	f := newService(t, eng)
	id := sandboxtest.ID(t, "ns", "box")
	if err := f.svc.Start(f.ctx, id, &sandbox.Config{}); err != nil {
		t.Fatal(err)
	}
	m, err := f.svc.SandboxMetrics(f.ctx, id)
	if err != nil || m.CPUUsage == nil || *m.CPUUsage > 60 || *m.CPUUsage < 20 {
		t.Fatalf("first sample %v%%, %v; want about 50", *m.CPUUsage, err)
	}
}

// An idle timeout stops a sandbox that had no call for that long: calls
// keep it running, and so does a streamed process for as long as it runs.
func TestIdleTimeout(t *testing.T) {
	f := newService(t, sandboxtest.NewMemory())
	id := sandboxtest.ID(t, "ns", "idle")
	const idle = 300 * time.Millisecond
	if err := f.svc.Start(f.ctx, id, &sandbox.Config{Lifecycle: sandbox.Lifecycle{IdleTimeout: idle}}); err != nil {
		t.Fatal(err)
	}
	// Calls more often than the timeout, for three timeouts: it runs on.
	for end := time.Now().Add(3 * idle); time.Now().Before(end); time.Sleep(idle / 4) {
		if _, err := f.svc.Exec(f.ctx, id, sandbox.ExecRequest{Command: "true"}); err != nil {
			t.Fatalf("exec on a sandbox kept busy: %v", err)
		}
	}
	// A streamed process outlives the timeout: the sandbox still runs
	// while it does.
	p, err := f.svc.Sessions().Stream(f.ctx, id, sandbox.ExecSpec{Command: "sleep", Timeout: 3 * idle}, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * idle)
	if rec, err := f.svc.Get(f.ctx, id); err != nil || rec.State != sandbox.StateRunning {
		t.Fatalf("stopped while a process ran: %+v, %v", rec, err)
	}
	<-p.Done()
	started := time.Now()
	waitState(t, f, id, sandbox.StateStopped)
	if quiet := time.Since(started); quiet < idle/2 {
		t.Fatalf("stopped %v after its last call, before its idle timeout of %v", quiet, idle)
	}
}
