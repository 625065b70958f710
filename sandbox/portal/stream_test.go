package portal_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/msb-dev/msb/sandbox"
	"github.com/msb-dev/msb/sandbox/portal"
	"github.com/msb-dev/msb/sandbox/sandboxtest"
)

// stream starts spec and records its events; the process is closed (and
// killed) when the test ends.
func (p *testPortal) stream(t *testing.T, spec sandbox.ExecSpec) (*portal.Process, *sandboxtest.Recorder) {
	t.Helper()
	r := &sandboxtest.Recorder{}
	proc, err := p.Stream(context.Background(), spec, true, r.Add)
	if err != nil {
		t.Fatalf("stream %q: %v", spec.Command, err)
	}
	t.Cleanup(func() { proc.Close() })
	return proc, r
}

// wait waits for the process's last event and returns it.
func wait(t *testing.T, proc *portal.Process, r *sandboxtest.Recorder) sandbox.ExecEvent {
	t.Helper()
	select {
	case <-proc.Done():
	case <-time.After(30 * time.Second):
		t.Fatalf("no last event after 30s; events so far: %s", r.Kinds())
	}
	return r.Last()
}

func shSpec(script string) sandbox.ExecSpec {
	return sandbox.ExecSpec{Command: "sh", Args: []string{"-c", script}}
}

func TestStreamEventsInOrder(t *testing.T) {
	t.Parallel()
	p := newPortal(t)
	start := time.Now()
	proc, r := p.stream(t, shSpec("printf 'a\\000b'; sleep 0.3; echo err >&2; sleep 0.3; echo c; exit 3"))
	last := wait(t, proc, r)
	if last.Kind != sandbox.EventExited || last.Code != 3 || last.Signal != 0 || last.TimedOut {
		t.Errorf("last event %+v, want exited 3", last)
	}
	if got := r.Kinds(); got != "started stdout stderr stdout exited" {
		t.Errorf("events %s", got)
	}
	if r.First().Pid <= 0 {
		t.Errorf("started with pid %d", r.First().Pid)
	}
	if o, e := r.Output(); o != "a\x00bc\n" || e != "err\n" {
		t.Errorf("stdout %q stderr %q", o, e)
	}
	if total := time.Since(start); r.FirstOutput().Sub(start) > total-400*time.Millisecond {
		t.Errorf("first output after %v of %v: not streamed", r.FirstOutput().Sub(start), total)
	}
}

func TestStreamStdinAndEOF(t *testing.T) {
	t.Parallel()
	p := newPortal(t)
	proc, r := p.stream(t, sandbox.ExecSpec{Command: "cat"})
	// Every byte value, and more than the input window at once.
	var in bytes.Buffer
	for i := range 3000 {
		for b := range 256 {
			in.WriteByte(byte(b + i))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := proc.Stdin(ctx, in.Bytes()); err != nil {
		t.Fatal(err)
	}
	if err := proc.Stdin(ctx, nil); err != nil {
		t.Fatal(err)
	}
	last := wait(t, proc, r)
	if last.Kind != sandbox.EventExited || last.Code != 0 {
		t.Errorf("last event %+v", last)
	}
	if o, _ := r.Output(); o != in.String() {
		t.Errorf("cat gave back %d bytes, want the %d sent", len(o), in.Len())
	}
	if err := proc.Stdin(ctx, []byte("late")); !errors.Is(err, portal.ErrEnded) {
		t.Errorf("stdin after the end: %v, want ErrEnded", err)
	}

	// A process that closes its stdin: writing to it is an event, not
	// the end of the process.
	proc, r = p.stream(t, shSpec("exec 0<&-; sleep 0.5; echo done"))
	time.Sleep(200 * time.Millisecond)
	if err := proc.Stdin(ctx, []byte("nobody reads this\n")); err != nil {
		t.Fatal(err)
	}
	last = wait(t, proc, r)
	if got := r.Kinds(); got != "started stdin-error stdout exited" || last.Code != 0 {
		t.Errorf("events %s, last %+v", got, last)
	}
}

func TestStreamSignalAndTimeout(t *testing.T) {
	t.Parallel()
	p := newPortal(t)
	s := uniqueSleep(100)
	proc, r := p.stream(t, shSpec(fmt.Sprintf("sleep %s & sleep %[1]s", s)))
	for r.Kinds() != "started" {
		time.Sleep(10 * time.Millisecond)
	}
	if err := proc.Signal(int(syscall.SIGTERM)); err != nil {
		t.Fatal(err)
	}
	last := wait(t, proc, r)
	if last.Kind != sandbox.EventExited || last.Code != -1 || last.Signal != int(syscall.SIGTERM) || last.TimedOut {
		t.Errorf("after SIGTERM: %+v, want exited -1 by signal 15", last)
	}
	waitGone(t, "sleep\x00"+s, 3*time.Second) // the group got it

	// A signal sent at once, before the process may have started, is not
	// lost; nor is a resize.
	proc, r = p.stream(t, sandbox.ExecSpec{Command: "sleep", Args: []string{s}, TTY: true, Rows: 10, Cols: 10})
	proc.Resize(20, 30)
	proc.Signal(int(syscall.SIGINT))
	if last := wait(t, proc, r); last.Code != -1 || last.Signal != int(syscall.SIGINT) {
		t.Errorf("signalled at once: %+v", last)
	}

	start := time.Now()
	proc, r = p.stream(t, sandbox.ExecSpec{Command: "sleep", Args: []string{s}, Timeout: 300 * time.Millisecond})
	last = wait(t, proc, r)
	if last.Kind != sandbox.EventExited || last.Code != -1 || last.Signal != 9 || !last.TimedOut || time.Since(start) > 5*time.Second {
		t.Errorf("past its timeout: %+v after %v", last, time.Since(start))
	}
}

func TestStreamFailures(t *testing.T) {
	t.Parallel()
	p := newPortal(t)
	file := p.dir + "/data.txt"
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		spec sandbox.ExecSpec
		kind string
		msg  string
	}{
		{sandbox.ExecSpec{Command: "no-such-command-msb"}, "not_found", "no-such-command-msb"},
		{sandbox.ExecSpec{Command: file}, "not_executable", "not executable"},
		{sandbox.ExecSpec{Command: "true", Workdir: "/no/such/dir"}, "bad_cwd", "/no/such/dir"},
		{sandbox.ExecSpec{Command: "true", Args: []string{"a\x00b"}}, "bad_args", "NUL"},
		{sandbox.ExecSpec{Command: "true", Rlimits: []sandbox.Rlimit{{Resource: "bogus", Soft: 1, Hard: 1}}}, "bad_args", "bogus"},
		{sandbox.ExecSpec{Command: "true", Rlimits: []sandbox.Rlimit{{Resource: "nofile", Soft: 2, Hard: 1}}}, "bad_args", "soft"},
		{sandbox.ExecSpec{Command: "true", User: "no-such-user-msb"}, "user_setup_failed", "no-such-user-msb"},
		{sandbox.ExecSpec{Command: ""}, "bad_args", "no command"},
	} {
		proc, r := p.stream(t, c.spec)
		last := wait(t, proc, r)
		if last.Kind != sandbox.EventFailed || last.Fail == nil || last.Fail.Kind != c.kind || !strings.Contains(last.Fail.Message, c.msg) {
			t.Errorf("%+v: last event %+v %+v, want failed %s", c.spec, last, last.Fail, c.kind)
		}
		if got := r.Kinds(); got != "failed" {
			t.Errorf("%+v: events %s, want failed alone", c.spec, got)
		}
	}
}

func TestStreamUserEnvAndLimits(t *testing.T) {
	t.Parallel()
	p := newPortal(t)
	dir := t.TempDir()
	proc, r := p.stream(t, sandbox.ExecSpec{
		Command: "sh", Args: []string{"-c", `id -u; id -g; echo "$FOO $MSB_TEST_DEFAULT"; pwd; ulimit -n; ulimit -Hn`},
		Env: []string{"FOO=bar"}, Workdir: dir, User: "65534:65533",
		Rlimits: []sandbox.Rlimit{{Resource: "nofile", Soft: 100, Hard: 200}},
	})
	last := wait(t, proc, r)
	o, e := r.Output()
	if want := fmt.Sprintf("65534\n65533\nbar portal-env\n%s\n100\n200\n", dir); o != want || last.Code != 0 {
		t.Errorf("stdout %q stderr %q (last %+v %+v), want %q", o, e, last, last.Fail, want)
	}
}

func TestStreamTTY(t *testing.T) {
	t.Parallel()
	p := newPortal(t)
	proc, r := p.stream(t, sandbox.ExecSpec{Command: "stty", Args: []string{"size"}, TTY: true, Rows: 30, Cols: 100})
	if last := wait(t, proc, r); last.Code != 0 {
		t.Errorf("stty size: %+v", last)
	}
	if o, _ := r.Output(); o != "30 100\r\n" {
		t.Errorf("stty size on a 30x100 terminal: %q", o)
	}

	proc, r = p.stream(t, sandbox.ExecSpec{Command: "sh", Args: []string{"-c", "test -t 0 && test -t 2 && echo tty; read x; stty size; echo $x >&2"}, TTY: true})
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if o, _ := r.Output(); strings.Contains(o, "tty") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not on a terminal: %s", r.Kinds())
		}
	}
	if err := proc.Resize(50, 132); err != nil {
		t.Fatal(err)
	}
	if err := proc.Stdin(context.Background(), []byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	proc.Stdin(context.Background(), nil) // ignored on a terminal
	last := wait(t, proc, r)
	o, e := r.Output()
	// The terminal echoes the input, and carries stderr as stdout.
	if last.Code != 0 || o != "tty\r\nhello\r\n50 132\r\nhello\r\n" || e != "" {
		t.Errorf("stdout %q stderr %q, last %+v", o, e, last)
	}
}

// A slow consumer holds at most a window of output in the client, and
// never holds up other calls on the same portal.
func TestStreamSlowConsumer(t *testing.T) {
	// Not parallel: it measures the process's heap.
	p := newPortal(t)
	release := make(chan struct{})
	var got atomic.Int64
	var once sync.Once
	proc, err := p.Stream(context.Background(), shSpec("head -c 67108864 /dev/zero; echo done >&2"), true, func(ev sandbox.ExecEvent) {
		if ev.Kind == sandbox.EventStdout {
			once.Do(func() { <-release })
			got.Add(int64(len(ev.Data)))
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer proc.Close()
	peak := sandboxtest.HeapPeak(func() {
		time.Sleep(500 * time.Millisecond) // the portal fills the window, then waits
		start := time.Now()
		res := p.exec(t, sandbox.ExecRequest{Command: "echo", Args: []string{"other"}})
		if d := time.Since(start); d > 2*time.Second || len(res.Output) != 1 {
			t.Errorf("another call while a consumer is stuck: %+v after %v", res, d)
		}
		close(release)
		select {
		case <-proc.Done():
		case <-time.After(60 * time.Second):
			t.Fatal("64 MiB never arrived")
		}
	})
	if got.Load() != 64<<20 {
		t.Errorf("got %d bytes, want 64 MiB", got.Load())
	}
	base := heapNow()
	t.Logf("heap peak %d MiB (now %d MiB) for 64 MiB streamed", peak>>20, base>>20)
	if peak > base+32<<20 {
		t.Errorf("heap peaked at %d MiB while streaming 64 MiB: not bounded", peak>>20)
	}
}

func heapNow() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// fdCount counts the open descriptors of process pid.
func fdCount(t *testing.T, pid string) int {
	ents, err := os.ReadDir("/proc/" + pid + "/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// A session the client abandons mid-stream leaves nothing behind: no
// goroutine and no descriptor in the client or in the portal, no process.
func TestStreamAbandonedLeaksNothing(t *testing.T) {
	// Not parallel: it counts the process's goroutines.
	p := newPortal(t)
	portalPid := fmt.Sprint(p.cmd.Process.Pid)
	p.exec(t, sandbox.ExecRequest{Command: "true"}) // the portal's own start-up is done
	time.Sleep(100 * time.Millisecond)
	goroutines, fds, portalFDs := runtime.NumGoroutine(), fdCount(t, "self"), fdCount(t, portalPid)

	s := uniqueSleep(100)
	for _, tty := range []bool{false, true} {
		started := make(chan struct{})
		var once sync.Once
		proc, err := p.Stream(context.Background(), sandbox.ExecSpec{Command: "sh", Args: []string{"-c", "sleep " + s + " & yes"}, TTY: tty}, true, func(ev sandbox.ExecEvent) {
			if ev.Kind == sandbox.EventStdout {
				once.Do(func() { close(started) })
				time.Sleep(time.Millisecond) // a slow reader
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		<-started
		proc.Close()
		<-proc.Done()
		waitGone(t, "sleep\x00"+s, 5*time.Second)
	}
	// A file read abandoned half-way, and a handle left open then closed.
	f, err := p.Open(context.Background(), "/dev/zero", sandbox.OpenOptions{Read: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	_, err = f.ReadTo(ctx, 0, -1, writerFunc(func(b []byte) (int, error) { time.Sleep(time.Millisecond); return len(b), nil }))
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("read of /dev/zero: %v, want the deadline", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	deadline := time.Now().Add(10 * time.Second)
	for {
		g, fd, pfd := runtime.NumGoroutine(), fdCount(t, "self"), fdCount(t, portalPid)
		if g <= goroutines && fd <= fds && pfd <= portalFDs {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("after abandoned sessions: %d goroutines (was %d), %d fds (was %d), portal %d fds (was %d)\n%s",
				g, goroutines, fd, fds, pfd, portalFDs, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

// Closing a process without killing it leaves it running, with its stdin
// closed.
func TestStreamCloseWithoutKill(t *testing.T) {
	t.Parallel()
	p := newPortal(t)
	marker := filepath.Join(t.TempDir(), "marker")
	proc, err := p.Stream(context.Background(), shSpec("cat >/dev/null; sleep 0.2; echo eof > "+marker), false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := proc.Stdin(context.Background(), []byte("some input\n")); err != nil {
		t.Fatal(err)
	}
	proc.Close()
	<-proc.Done()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if data, err := os.ReadFile(marker); err == nil && string(data) == "eof\n" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the process closed without kill never saw the end of its input")
		}
	}
}
