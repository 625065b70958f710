package sandbox_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox"
	"github.com/msb-dev/msb/sandbox/sandboxtest"
	"github.com/msb-dev/msb/storage"
)

// clock is a settable clock for the service.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) advance(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	return c.now
}

// newClockedService is newService with a clock the test moves, and
// engine as the service's engine.
func newClockedService(t *testing.T, engine sandbox.Engine, maxTimeout time.Duration) (*sandbox.Service, *clock) {
	t.Helper()
	ctx := context.Background()
	db, err := storage.Open(ctx, filepath.Join(t.TempDir(), "msb.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	c := &clock{now: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
	svc := sandbox.NewService(sandbox.ServiceOptions{
		Engine: engine, Store: db, Images: hostImage{}, LogDir: t.TempDir(), Pids: 64, MaxCPUs: 2, MaxMemMB: 4096,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: c.Now, MaxTimeout: maxTimeout,
	})
	if err := svc.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close(context.Background()) })
	return svc, c
}

func TestSessionsNeedARunningSandbox(t *testing.T) {
	svc, _ := newClockedService(t, sandboxtest.NewMemory(), 0)
	ctx := context.Background()
	missing := sandboxtest.ID(t, "ns", "nosuch")
	stopped := sandboxtest.ID(t, "ns", "stopped")
	if err := svc.Start(ctx, stopped, nil); err != nil {
		t.Fatal(err)
	}
	if err := svc.Stop(ctx, stopped); err != nil {
		t.Fatal(err)
	}
	for id, class := range map[sandbox.ID]errdefs.Class{missing: errdefs.NotFound, stopped: errdefs.Conflict} {
		calls := map[string]error{}
		_, calls["stream"] = svc.Sessions().Stream(ctx, id, sandbox.ExecSpec{Command: "echo"}, true, nil)
		_, calls["open"] = svc.Sessions().Open(ctx, id, "/x", sandbox.OpenOptions{Read: true})
		_, calls["stat"] = svc.Sessions().Stat(ctx, id, "/x", true)
		_, calls["list"] = svc.Sessions().List(ctx, id, "/")
		calls["mkdir"] = svc.Sessions().Mkdir(ctx, id, "/x", 0)
		calls["remove"] = svc.Sessions().Remove(ctx, id, "/x", true)
		calls["copy"] = svc.Sessions().Copy(ctx, id, "/x", "/y")
		calls["rename"] = svc.Sessions().Rename(ctx, id, "/x", "/y")
		for name, err := range calls {
			if !errdefs.Is(err, class) {
				t.Errorf("%s in %s: %v, want class %s", name, id.Name(), err, class)
			}
		}
	}
}

// collect gathers a process's events until its last.
type collect struct {
	mu     sync.Mutex
	kinds  []sandbox.ExecEventKind
	stdout bytes.Buffer
	last   sandbox.ExecEvent
}

func (c *collect) add(ev sandbox.ExecEvent) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.kinds = append(c.kinds, ev.Kind)
	c.stdout.Write(ev.Data)
	c.last = ev
}

func waitDone(t *testing.T, p sandbox.Process) {
	t.Helper()
	select {
	case <-p.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the process never ended")
	}
}

func TestStreamThroughTheService(t *testing.T) {
	eng := sandboxtest.NewMemory()
	svc, clk := newClockedService(t, eng, time.Hour)
	ctx := context.Background()
	id := sandboxtest.ID(t, "ns", "box")
	if err := svc.Start(ctx, id, nil); err != nil {
		t.Fatal(err)
	}
	c := &collect{}
	p, err := svc.Sessions().Stream(ctx, id, sandbox.ExecSpec{Command: "cat", Timeout: 1000 * time.Hour}, true, c.add)
	if err != nil {
		t.Fatal(err)
	}
	at := clk.advance(time.Minute)
	if err := p.Stdin(ctx, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if got := svc.LastActivity(id); !got.Equal(at) {
		t.Errorf("activity at %v after stdin, want %v", got, at)
	}
	if err := p.Stdin(ctx, nil); err != nil {
		t.Fatal(err)
	}
	waitDone(t, p)
	if c.stdout.String() != "hello" || c.last.Kind != sandbox.EventExited || c.last.Code != 0 {
		t.Errorf("cat: %q, last %+v", c.stdout.String(), c.last)
	}
	if err := p.Stdin(ctx, []byte("late")); !errdefs.Is(err, errdefs.Conflict) {
		t.Errorf("stdin after the end: %v, want a conflict", err)
	}
	if err := p.Signal(0); !errdefs.Is(err, errdefs.Invalid) {
		t.Errorf("signal 0: %v, want invalid", err)
	}
	if specs := eng.Streamed(); len(specs) != 1 || specs[0].Timeout != time.Hour {
		t.Errorf("the engine got %+v; want the timeout cut to the maximum, an hour", specs)
	}

	// A process that cannot start is an event, not an error.
	c = &collect{}
	p, err = svc.Sessions().Stream(ctx, id, sandbox.ExecSpec{Command: "no-such"}, true, c.add)
	if err != nil {
		t.Fatal(err)
	}
	waitDone(t, p)
	if c.last.Kind != sandbox.EventFailed || c.last.Fail.Kind != "not_found" {
		t.Errorf("last event %+v", c.last)
	}

	// Stopping the sandbox ends what streams in it.
	c = &collect{}
	p, err = svc.Sessions().Stream(ctx, id, sandbox.ExecSpec{Command: "sleep"}, true, c.add)
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Stop(ctx, id); err != nil {
		t.Fatal(err)
	}
	waitDone(t, p)
	if c.last.Kind != sandbox.EventExited || c.last.Signal != 9 {
		t.Errorf("after the sandbox stopped: %+v", c.last)
	}
}

func TestFilesThroughTheService(t *testing.T) {
	svc, _ := newClockedService(t, sandboxtest.NewMemory(), 0)
	ctx := context.Background()
	id := sandboxtest.ID(t, "ns", "box")
	if err := svc.Start(ctx, id, nil); err != nil {
		t.Fatal(err)
	}
	f, err := svc.Sessions().Open(ctx, id, "notes.txt", sandbox.OpenOptions{Write: true, Create: true})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := f.WriteFrom(ctx, 0, strings.NewReader("hello")); n != 5 || err != nil {
		t.Fatalf("write: %d, %v", n, err)
	}
	f.Close()
	if err := svc.Sessions().Mkdir(ctx, id, "/srv/d/e", 0o700); err != nil {
		t.Fatal(err)
	}
	if err := svc.Sessions().Copy(ctx, id, "/srv/notes.txt", "/srv/d/copy.txt"); err != nil {
		t.Fatal(err)
	}
	if err := svc.Sessions().Rename(ctx, id, "/srv/d/copy.txt", "/srv/d/e/moved.txt"); err != nil {
		t.Fatal(err)
	}
	f, err = svc.Sessions().Open(ctx, id, "/srv/d/e/moved.txt", sandbox.OpenOptions{Read: true})
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if n, err := f.ReadTo(ctx, 1, 3, &b); n != 3 || err != nil || b.String() != "ell" {
		t.Errorf("read: %d %q, %v", n, b.String(), err)
	}
	list, err := svc.Sessions().List(ctx, id, "/srv")
	if err != nil || len(list) != 2 || list[0].Path != "/srv/d" || list[0].Kind != sandbox.KindDir || list[1].Path != "/srv/notes.txt" || list[1].Size != 5 {
		t.Errorf("list: %+v, %v", list, err)
	}

	// The classes of what the sandbox refuses reach the caller as they are.
	_, err = svc.Sessions().Stat(ctx, id, "/srv/missing", true)
	wantClass(t, "stat a missing file", err, errdefs.NotFound)
	wantClass(t, "remove a full directory", svc.Sessions().Remove(ctx, id, "/srv/d", false), errdefs.Conflict)
	_, err = svc.Sessions().Open(ctx, id, "/usr/x", sandbox.OpenOptions{Write: true, Create: true})
	wantClass(t, "write to /usr", err, errdefs.Forbidden)
	_, err = svc.Sessions().Stat(ctx, id, "", true)
	wantClass(t, "stat of no path", err, errdefs.Invalid)

	// A writer's own error comes back as it is.
	boom := errors.New("boom")
	_, err = f.ReadTo(ctx, 0, -1, failingWriter{boom})
	if !errors.Is(err, boom) {
		t.Errorf("read into a failing writer: %v", err)
	}
	if err := svc.Sessions().Remove(ctx, id, "/srv/d", true); err != nil {
		t.Fatal(err)
	}
}

type failingWriter struct{ err error }

func (w failingWriter) Write([]byte) (int, error) { return 0, w.err }

func wantClass(t *testing.T, what string, err error, c errdefs.Class) {
	t.Helper()
	if !errdefs.Is(err, c) {
		t.Errorf("%s: %v (class %s), want class %s", what, err, errdefs.Classify(err), c)
	}
}

func TestActivityIsRecorded(t *testing.T) {
	svc, clk := newClockedService(t, sandboxtest.NewMemory(), 0)
	ctx := context.Background()
	id := sandboxtest.ID(t, "ns", "box")
	if got := svc.LastActivity(id); !got.IsZero() {
		t.Errorf("activity of a sandbox never started: %v", got)
	}
	started := clk.Now()
	if err := svc.Start(ctx, id, nil); err != nil {
		t.Fatal(err)
	}
	if got := svc.LastActivity(id); !got.Equal(started) {
		t.Errorf("activity after start %v, want %v", got, started)
	}
	for name, call := range map[string]func() error{
		"exec": func() error { _, err := svc.Exec(ctx, id, sandbox.ExecRequest{Command: "true"}); return err },
		"code": func() error { _, err := svc.RunCode(ctx, id, sandbox.Python, "1", 0); return err },
		"stream": func() error {
			p, err := svc.Sessions().Stream(ctx, id, sandbox.ExecSpec{Command: "echo"}, true, nil)
			if err == nil {
				<-p.Done()
			}
			return err
		},
		"stat":  func() error { _, err := svc.Sessions().Stat(ctx, id, "/", true); return err },
		"list":  func() error { _, err := svc.Sessions().List(ctx, id, "/"); return err },
		"mkdir": func() error { return svc.Sessions().Mkdir(ctx, id, "/d", 0) },
		// A failed call is activity too.
		"failed open": func() error {
			_, err := svc.Sessions().Open(ctx, id, "/missing", sandbox.OpenOptions{Read: true})
			if errdefs.Is(err, errdefs.NotFound) {
				return nil
			}
			return err
		},
	} {
		at := clk.advance(time.Minute)
		if err := call(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := svc.LastActivity(id); !got.Equal(at) {
			t.Errorf("activity after %s: %v, want %v", name, got, at)
		}
	}
	// A call on another sandbox is not this one's activity.
	before := svc.LastActivity(id)
	clk.advance(time.Minute)
	other := sandboxtest.ID(t, "ns", "other")
	if err := svc.Start(ctx, other, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Exec(ctx, other, sandbox.ExecRequest{Command: "true"}); err != nil {
		t.Fatal(err)
	}
	if got := svc.LastActivity(id); !got.Equal(before) {
		t.Errorf("another sandbox's call moved this one's activity to %v", got)
	}
}

// onlyEngine hides every optional ability of the engine it holds.
type onlyEngine struct{ sandbox.Engine }

func TestEngineWithoutStreamsOrFiles(t *testing.T) {
	svc, _ := newClockedService(t, onlyEngine{sandboxtest.NewMemory()}, 0)
	ctx := context.Background()
	id := sandboxtest.ID(t, "ns", "box")
	if err := svc.Start(ctx, id, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Sessions().Stream(ctx, id, sandbox.ExecSpec{Command: "echo"}, true, nil); !errdefs.Is(err, errdefs.Unavailable) {
		t.Errorf("stream: %v, want unavailable", err)
	}
	if _, err := svc.Sessions().Stat(ctx, id, "/", true); !errdefs.Is(err, errdefs.Unavailable) {
		t.Errorf("stat: %v, want unavailable", err)
	}
}
