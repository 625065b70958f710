package sandboxtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox"
)

// The conformance of streamed processes (sandbox.Streamer) and of file
// operations (sandbox.FileSystem): every engine must have both.

// Recorder collects the events of a streamed process: the events
// without their data, and the data of each stream.
type Recorder struct {
	mu             sync.Mutex
	events         []sandbox.ExecEvent
	stdout, stderr bytes.Buffer
	firstOutput    time.Time
}

// Add records ev; pass it as the events function.
func (r *Recorder) Add(ev sandbox.ExecEvent) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch ev.Kind {
	case sandbox.EventStdout:
		r.stdout.Write(ev.Data)
	case sandbox.EventStderr:
		r.stderr.Write(ev.Data)
	}
	if (ev.Kind == sandbox.EventStdout || ev.Kind == sandbox.EventStderr) && r.firstOutput.IsZero() {
		r.firstOutput = time.Now()
	}
	ev.Data = nil
	r.events = append(r.events, ev)
}

// FirstOutput returns when the first output arrived (zero: none yet).
func (r *Recorder) FirstOutput() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.firstOutput
}

// Output returns what the process wrote to stdout and stderr so far.
func (r *Recorder) Output() (string, string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stdout.String(), r.stderr.String()
}

// Kinds names the events so far, in order, runs of output of one stream
// counted once: "started stdout stderr exited".
func (r *Recorder) Kinds() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ks []string
	for _, ev := range r.events {
		k := map[sandbox.ExecEventKind]string{sandbox.EventStarted: "started", sandbox.EventStdout: "stdout", sandbox.EventStderr: "stderr",
			sandbox.EventStdinError: "stdin-error", sandbox.EventExited: "exited", sandbox.EventFailed: "failed"}[ev.Kind]
		if len(ks) == 0 || ks[len(ks)-1] != k {
			ks = append(ks, k)
		}
	}
	return strings.Join(ks, " ")
}

// First returns the first event so far.
func (r *Recorder) First() sandbox.ExecEvent { return r.at(0) }

// Last returns the last event so far.
func (r *Recorder) Last() sandbox.ExecEvent { return r.at(-1) }

func (r *Recorder) at(i int) sandbox.ExecEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.events) == 0 {
		return sandbox.ExecEvent{}
	}
	if i < 0 {
		i = len(r.events) - 1
	}
	return r.events[i]
}

// WaitDone waits until p delivered its last event, failing the test
// after a minute, and returns that event.
func (r *Recorder) WaitDone(t testing.TB, p sandbox.Process) sandbox.ExecEvent {
	t.Helper()
	select {
	case <-p.Done():
	case <-time.After(time.Minute):
		t.Fatalf("no last event after a minute; events so far: %s", r.Kinds())
	}
	return r.Last()
}

// WaitOutput waits until the process's stdout holds want.
func (r *Recorder) WaitOutput(t testing.TB, want string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if out, _ := r.Output(); strings.Contains(out, want) {
			return
		}
		if time.Now().After(deadline) {
			out, errOut := r.Output()
			t.Fatalf("stdout never held %q: %q (stderr %q, events %s)", want, out, errOut, r.Kinds())
		}
	}
}

func (s *suite) streamer(t *testing.T) sandbox.Streamer {
	st, ok := s.e.(sandbox.Streamer)
	if !ok {
		t.Fatalf("engine %T does not implement sandbox.Streamer", s.e)
	}
	return st
}

func (s *suite) fileSystem(t *testing.T) sandbox.FileSystem {
	fs, ok := s.e.(sandbox.FileSystem)
	if !ok {
		t.Fatalf("engine %T does not implement sandbox.FileSystem", s.e)
	}
	return fs
}

// stream starts spec in id, recording its events; it is closed (and
// killed) when the test ends.
func stream(t *testing.T, st sandbox.Streamer, id sandbox.ID, spec sandbox.ExecSpec) (sandbox.Process, *Recorder) {
	t.Helper()
	r := &Recorder{}
	p, err := st.Stream(ctx(t), id, spec, true, r.Add)
	if err != nil {
		t.Fatalf("Stream %q: %v", spec.Command, err)
	}
	t.Cleanup(func() { p.Close() })
	return p, r
}

func shSpec(script string) sandbox.ExecSpec {
	return sandbox.ExecSpec{Command: "sh", Args: []string{"-c", script}}
}

func (s *suite) testStreams(t *testing.T) {
	st := s.streamer(t)
	e := s.e
	id := s.start(t, e, "streams", nil)

	// Order: started, output as it comes, exited last.
	start := time.Now()
	p, r := stream(t, st, id, shSpec("printf 'a\\000'; sleep 0.3; printf b >&2; sleep 0.3; echo c; pwd; exit 3"))
	var firstOut time.Duration
	r.WaitOutput(t, "a\x00")
	firstOut = time.Since(start)
	last := r.WaitDone(t, p)
	if got := r.Kinds(); got != "started stdout stderr stdout exited" {
		t.Errorf("events %s", got)
	}
	if first := r.First(); first.Pid <= 0 {
		t.Errorf("started with pid %d", first.Pid)
	}
	if last.Code != 3 || last.Signal != 0 || last.TimedOut {
		t.Errorf("last event %+v, want exited 3", last)
	}
	if out, errOut := r.Output(); out != "a\x00c\n/workspace\n" || errOut != "b" {
		t.Errorf("stdout %q stderr %q", out, errOut)
	}
	if total := time.Since(start); firstOut > total-400*time.Millisecond {
		t.Errorf("first output after %v of %v: not streamed", firstOut, total)
	}

	// Stdin, every byte value, more than any window, then EOF.
	var in bytes.Buffer
	for i := range 4096 {
		for b := range 256 {
			in.WriteByte(byte(b ^ i))
		}
	}
	p, r = stream(t, st, id, sandbox.ExecSpec{Command: "cat"})
	if err := p.Stdin(ctx(t), in.Bytes()); err != nil {
		t.Fatal(err)
	}
	if err := p.Stdin(ctx(t), nil); err != nil {
		t.Fatal(err)
	}
	if last := r.WaitDone(t, p); last.Kind != sandbox.EventExited || last.Code != 0 {
		t.Errorf("cat: last event %+v", last)
	}
	if out, _ := r.Output(); out != in.String() {
		t.Errorf("cat gave back %d bytes, want the %d sent, identical", len(out), in.Len())
	}
	if err := p.Stdin(ctx(t), []byte("late")); !errdefs.Is(err, errdefs.Conflict) {
		t.Errorf("stdin after the end: %v, want a conflict", err)
	}

	// Death by signal is -1 and the signal; a timeout kills too.
	p, r = stream(t, st, id, sandbox.ExecSpec{Command: "sleep", Args: []string{"1000"}})
	for r.Kinds() != "started" {
		time.Sleep(10 * time.Millisecond)
	}
	if err := p.Signal(int(syscall.SIGKILL)); err != nil {
		t.Fatal(err)
	}
	if last := r.WaitDone(t, p); last.Kind != sandbox.EventExited || last.Code != -1 || last.Signal != 9 || last.TimedOut {
		t.Errorf("killed: last event %+v, want exited -1 by signal 9", last)
	}
	t0 := time.Now()
	p, r = stream(t, st, id, sandbox.ExecSpec{Command: "sleep", Args: []string{"1000"}, Timeout: 300 * time.Millisecond})
	if last := r.WaitDone(t, p); last.Kind != sandbox.EventExited || last.Code != -1 || !last.TimedOut || time.Since(t0) > 10*time.Second {
		t.Errorf("past its timeout: last event %+v after %v", last, time.Since(t0))
	}

	// A terminal: its size, a resize, input echoed, stderr on it.
	p, r = stream(t, st, id, sandbox.ExecSpec{Command: "stty", Args: []string{"size"}, TTY: true, Rows: 30, Cols: 100})
	if last := r.WaitDone(t, p); last.Code != 0 {
		t.Errorf("stty size: %+v", last)
	}
	if out, _ := r.Output(); out != "30 100\r\n" {
		t.Errorf("stty size on a 30x100 terminal: %q", out)
	}
	p, r = stream(t, st, id, sandbox.ExecSpec{Command: "sh", Args: []string{"-c", "test -t 0 && echo tty; read x; stty size; echo $x >&2"}, TTY: true})
	r.WaitOutput(t, "tty")
	if err := p.Resize(50, 132); err != nil {
		t.Fatal(err)
	}
	if err := p.Stdin(ctx(t), []byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	last = r.WaitDone(t, p)
	if out, errOut := r.Output(); last.Code != 0 || out != "tty\r\nhello\r\n50 132\r\nhello\r\n" || errOut != "" {
		t.Errorf("on a resized terminal: stdout %q stderr %q, last %+v", out, errOut, last)
	}

	// User, environment, working directory, limits.
	p, r = stream(t, st, id, sandbox.ExecSpec{
		Command: "sh", Args: []string{"-c", `id -u; echo "$FOO"; pwd; ulimit -n`},
		Env: []string{"FOO=bar"}, Workdir: "/tmp", User: "nobody",
		Rlimits: []sandbox.Rlimit{{Resource: "nofile", Soft: 100, Hard: 100}},
	})
	last = r.WaitDone(t, p)
	if out, errOut := r.Output(); out != "65534\nbar\n/tmp\n100\n" || last.Code != 0 {
		t.Errorf("as nobody with FOO, in /tmp, with nofile 100: stdout %q stderr %q, last %+v", out, errOut, last)
	}

	// What cannot start fails, typed, and never starts.
	for _, c := range []struct {
		spec sandbox.ExecSpec
		kind string
	}{
		{sandbox.ExecSpec{Command: "no-such-command-msb"}, "not_found"},
		{sandbox.ExecSpec{Command: "/etc/hostname"}, "not_executable"},
		{sandbox.ExecSpec{Command: "true", Workdir: "/no/such/dir"}, "bad_cwd"},
		{sandbox.ExecSpec{Command: "true", User: "no-such-user-msb"}, "user_setup_failed"},
		{sandbox.ExecSpec{Command: "true", Rlimits: []sandbox.Rlimit{{Resource: "bogus", Soft: 1, Hard: 1}}}, "bad_args"},
	} {
		p, r := stream(t, st, id, c.spec)
		last := r.WaitDone(t, p)
		if r.Kinds() != "failed" || last.Fail == nil || last.Fail.Kind != c.kind || last.Fail.Message == "" {
			t.Errorf("%+v: events %s, last %+v %+v; want failed %s alone", c.spec, r.Kinds(), last, last.Fail, c.kind)
		}
	}

	// Close with kill on close kills what the process started.
	marker := fmt.Sprintf("1000.%06d", rand.IntN(1000000))
	p, r = stream(t, st, id, shSpec("sleep "+marker+" & sleep "+marker))
	for r.Kinds() != "started" {
		time.Sleep(10 * time.Millisecond)
	}
	p.Close()
	select {
	case <-p.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Done not closed after Close")
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		out := mustSh(t, e, id, "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '; echo")
		if !strings.Contains(out, "sleep "+marker) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("processes of a closed stream still run: %s", out)
		}
	}

	// A consumer that takes nothing holds up neither the sandbox's other
	// calls nor more than a window of memory.
	release := make(chan struct{})
	var got atomic.Int64
	var once sync.Once
	slow, err := st.Stream(ctx(t), id, shSpec("head -c 67108864 /dev/zero"), true, func(ev sandbox.ExecEvent) {
		if ev.Kind == sandbox.EventStdout {
			once.Do(func() { <-release })
			got.Add(int64(len(ev.Data)))
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	peak := HeapPeak(func() {
		time.Sleep(500 * time.Millisecond)
		t0 := time.Now()
		if out := mustSh(t, e, id, "echo other"); out != "other\n" || time.Since(t0) > 5*time.Second {
			t.Errorf("another call while a stream's consumer is stuck: %q after %v", out, time.Since(t0))
		}
		close(release)
		select {
		case <-slow.Done():
		case <-time.After(2 * time.Minute):
			t.Fatal("64 MiB never arrived")
		}
	})
	if got.Load() != 64<<20 {
		t.Errorf("streamed %d bytes, want 64 MiB", got.Load())
	}
	s.checkHeap(t, "streaming 64 MiB to a slow consumer", peak)

	s.abandon(t, st, id)

	// A stopped sandbox streams nothing.
	if err := e.Stop(ctx(t), id); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Stream(ctx(t), id, sandbox.ExecSpec{Command: "true"}, true, nil); !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("Stream in a stopped sandbox: %v, want ErrConflict", err)
	}
}

// abandon checks that sessions a client abandons mid-stream (a process
// that prints forever, on pipes and on a terminal; a file read given up
// half-way) leave no goroutine, no descriptor and no process behind.
func (s *suite) abandon(t *testing.T, st sandbox.Streamer, id sandbox.ID) {
	fs := s.fileSystem(t)
	mustSh(t, s.e, id, "true")
	time.Sleep(100 * time.Millisecond)
	goroutines, fds := runtime.NumGoroutine(), openFDs(t)
	marker := fmt.Sprintf("1000.%06d", rand.IntN(1000000))
	for _, tty := range []bool{false, true} {
		started := make(chan struct{})
		var once sync.Once
		p, err := st.Stream(ctx(t), id, sandbox.ExecSpec{Command: "sh", Args: []string{"-c", "sleep " + marker + " & yes"}, TTY: tty}, true, func(ev sandbox.ExecEvent) {
			if ev.Kind == sandbox.EventStdout {
				once.Do(func() { close(started) })
				time.Sleep(time.Millisecond)
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		select {
		case <-started:
		case <-time.After(30 * time.Second):
			t.Fatal("yes printed nothing")
		}
		p.Close()
		<-p.Done()
	}
	f, err := fs.Open(ctx(t), id, "/dev/zero", sandbox.OpenOptions{Read: true})
	if err != nil {
		t.Fatal(err)
	}
	c, cancel := context.WithTimeout(ctx(t), 300*time.Millisecond)
	_, err = f.ReadTo(c, 0, -1, writerFunc(func(p []byte) (int, error) { time.Sleep(time.Millisecond); return len(p), nil }))
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("read of /dev/zero given up: %v, want the deadline", err)
	}
	if err := f.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		out := mustSh(t, s.e, id, "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '; echo")
		g, fd := runtime.NumGoroutine(), openFDs(t)
		if !strings.Contains(out, marker) && !strings.Contains(out, "yes ") && g <= goroutines && fd <= fds {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("after abandoned sessions: %d goroutines (was %d), %d descriptors (was %d), processes %q\n%s",
				g, goroutines, fd, fds, out, buf[:runtime.Stack(buf, true)])
		}
	}
}

// openFDs counts this process's open descriptors.
func openFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// HeapPeak runs f and returns the peak of the process's heap while it ran.
func HeapPeak(f func()) uint64 {
	runtime.GC()
	var peak atomic.Uint64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapAlloc > peak.Load() {
				peak.Store(ms.HeapAlloc)
			}
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	f()
	close(stop)
	<-done
	return peak.Load()
}

// maxHeapGrowth is how far above the heap after a transfer its peak
// during one may be: windows, chunks, garbage not yet collected; far
// below the 64 MiB moved.
const maxHeapGrowth = 40 << 20

func (s *suite) checkHeap(t *testing.T, what string, peak uint64) {
	t.Helper()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	t.Logf("heap peak %d MiB (%d MiB after) %s", peak>>20, ms.HeapAlloc>>20, what)
	if peak > ms.HeapAlloc+maxHeapGrowth {
		t.Errorf("heap peaked at %d MiB (%d MiB after) %s: not bounded", peak>>20, ms.HeapAlloc>>20, what)
	}
}

// Pattern gives n bytes of a seeded pseudo-random pattern: the same
// bytes every time, for data too large to hold.
func Pattern(n int64) io.Reader { return &pattern{rng: rand.NewChaCha8([32]byte{7}), n: n} }

type pattern struct {
	rng *rand.ChaCha8
	n   int64
}

func (r *pattern) Read(p []byte) (int, error) {
	if r.n == 0 {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), r.n)]
	r.rng.Read(p)
	r.n -= int64(len(p))
	return len(p), nil
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// writeFile writes data to path in id through fs.
func writeFile(t *testing.T, fs sandbox.FileSystem, id sandbox.ID, path string, o sandbox.OpenOptions, data io.Reader) (int64, error) {
	t.Helper()
	f, err := fs.Open(ctx(t), id, path, o)
	if err != nil {
		return 0, err
	}
	n, err := f.WriteFrom(ctx(t), 0, data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return n, err
}

// readFile reads n bytes from offset of path in id through fs.
func readFile(t *testing.T, fs sandbox.FileSystem, id sandbox.ID, path string, offset, n int64) (string, error) {
	t.Helper()
	f, err := fs.Open(ctx(t), id, path, sandbox.OpenOptions{Read: true})
	if err != nil {
		return "", err
	}
	defer f.Close()
	var b bytes.Buffer
	_, err = f.ReadTo(ctx(t), offset, n, &b)
	return b.String(), err
}

func wantClass(t *testing.T, what string, err error, c errdefs.Class) {
	t.Helper()
	if !errdefs.Is(err, c) {
		t.Errorf("%s: %v (class %s), want class %s", what, err, errdefs.Classify(err), c)
	}
}

func (s *suite) testFiles(t *testing.T) {
	fs := s.fileSystem(t)
	e := s.e
	id := s.start(t, e, "files", nil)
	c := ctx(t)

	// Written through the API, read by the sandbox's processes, and back.
	if _, err := writeFile(t, fs, id, "/workspace/a.txt", sandbox.OpenOptions{Write: true, Create: true, Truncate: true, Mode: 0o640}, strings.NewReader("hello")); err != nil {
		t.Fatal(err)
	}
	if got := mustSh(t, e, id, "cat /workspace/a.txt; stat -c ' %a' /workspace/a.txt"); got != "hello 640\n" {
		t.Errorf("the sandbox sees %q", got)
	}
	mustSh(t, e, id, "printf ' world' >> /workspace/a.txt; mkdir -p /workspace/d/e; ln -s a.txt /workspace/link")
	if got, err := readFile(t, fs, id, "/workspace/a.txt", 0, -1); got != "hello world" || err != nil {
		t.Errorf("read back %q, %v", got, err)
	}
	if got, err := readFile(t, fs, id, "a.txt", 6, 3); got != "wor" || err != nil {
		t.Errorf("read 3 bytes at 6 of a path relative to the workdir: %q, %v", got, err)
	}
	fi, err := fs.Stat(c, id, "/workspace/a.txt", true)
	if err != nil || fi.Kind != sandbox.KindFile || fi.Size != 11 || fi.Mode != syscall.S_IFREG|0o640 || fi.UID != 0 ||
		fi.Path != "/workspace/a.txt" || fi.ModTime.IsZero() || time.Since(fi.ModTime) > time.Hour {
		t.Errorf("stat: %+v, %v", fi, err)
	}
	if fi, err := fs.Stat(c, id, "/workspace/link", false); err != nil || fi.Kind != sandbox.KindSymlink {
		t.Errorf("lstat of a link: %+v, %v", fi, err)
	}
	list, err := fs.List(c, id, "/workspace")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, en := range list {
		names = append(names, en.Path+":"+string(en.Kind))
	}
	if got := strings.Join(names, " "); got != "/workspace/a.txt:file /workspace/d:dir /workspace/link:symlink" {
		t.Errorf("list: %s", got)
	}

	if err := fs.Mkdir(c, id, "/workspace/m/n/o", 0o700); err != nil {
		t.Fatal(err)
	}
	if got := mustSh(t, e, id, "stat -c %a /workspace/m/n/o"); got != "700\n" {
		t.Errorf("mkdir -p mode: %q", got)
	}
	if err := fs.Copy(c, id, "/workspace/a.txt", "/workspace/m/b.txt"); err != nil {
		t.Fatal(err)
	}
	if err := fs.Rename(c, id, "/workspace/m/b.txt", "/workspace/m/n/c.txt"); err != nil {
		t.Fatal(err)
	}
	if got := mustSh(t, e, id, "cat /workspace/m/n/c.txt"); got != "hello world\n" && got != "hello world" {
		t.Errorf("copied and renamed: %q", got)
	}
	wantClass(t, "remove a non-empty directory", fs.Remove(c, id, "/workspace/m", false), errdefs.Conflict)
	if err := fs.Remove(c, id, "/workspace/m", true); err != nil {
		t.Fatal(err)
	}
	if err := fs.Remove(c, id, "/workspace/link", false); err != nil {
		t.Fatal(err)
	}
	if got := mustSh(t, e, id, "ls /workspace"); got != "a.txt\nd\n" {
		t.Errorf("after removes: %q", got)
	}

	// Errors by class.
	_, err = readFile(t, fs, id, "/workspace/missing", 0, -1)
	wantClass(t, "open a missing file", err, errdefs.NotFound)
	_, err = writeFile(t, fs, id, "/workspace/a.txt", sandbox.OpenOptions{Write: true, Exclusive: true}, strings.NewReader("x"))
	wantClass(t, "exclusive create over a file", err, errdefs.Conflict)
	_, err = readFile(t, fs, id, "/workspace/d", 0, -1)
	wantClass(t, "read a directory", err, errdefs.Conflict)
	wantClass(t, "mkdir under a file", fs.Mkdir(c, id, "/workspace/a.txt/x", 0), errdefs.Conflict)
	_, err = fs.List(c, id, "/workspace/a.txt")
	wantClass(t, "list a file", err, errdefs.Conflict)
	wantClass(t, "remove a missing file", fs.Remove(c, id, "/workspace/missing", false), errdefs.NotFound)
	_, err = writeFile(t, fs, id, "/usr/msb-probe", sandbox.OpenOptions{Write: true, Create: true}, strings.NewReader("x"))
	wantClass(t, "write to the read-only /usr", err, errdefs.Forbidden)
	_, err = fs.Stat(c, id, "", true)
	wantClass(t, "stat of no path", err, errdefs.Invalid)
	_, err = fs.Stat(c, id, "/a\x00b", true)
	wantClass(t, "stat of a path with a NUL", err, errdefs.Invalid)

	// Paths are resolved in the sandbox's root: a symlink to an absolute
	// path reads the sandbox's file, and no path reaches the host's.
	mustSh(t, e, id, "ln -s /etc/hostname /tmp/l")
	if got, err := readFile(t, fs, id, "/tmp/l", 0, -1); got != mustSh(t, e, id, "cat /etc/hostname") || err != nil {
		t.Errorf("/tmp/l -> /etc/hostname read %q, %v; want the sandbox's hostname file", got, err)
	}
	canaryName := "canary-" + randHex(4)
	canary := filepath.Join(s.h.Home, canaryName)
	if err := os.WriteFile(canary, []byte("secret "+canaryName), 0o600); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(canary)
	mustSh(t, e, id, "ln -s "+canary+" /tmp/h; ln -s "+s.h.Home+" /tmp/home")
	for _, p := range []string{canary, "/tmp/h", "/../../.." + canary, "/tmp/home/" + canaryName} {
		got, err := readFile(t, fs, id, p, 0, -1)
		if strings.Contains(got, "secret") || !errdefs.Is(err, errdefs.NotFound) {
			t.Errorf("%s read %q, %v; want NotFound", p, got, err)
		}
		if _, err := fs.Stat(c, id, p, true); !errdefs.Is(err, errdefs.NotFound) {
			t.Errorf("stat %s: %v, want NotFound", p, err)
		}
	}
	if _, err := fs.List(c, id, "/tmp/home"); !errdefs.Is(err, errdefs.NotFound) {
		t.Errorf("list through a link to the host's home: %v, want NotFound", err)
	}
	if _, err := writeFile(t, fs, id, "/tmp/home/"+canaryName, sandbox.OpenOptions{Write: true, Create: true}, strings.NewReader("x")); !errdefs.Is(err, errdefs.NotFound) {
		t.Errorf("write through a link to the host's home: %v, want NotFound", err)
	}
	if data, err := os.ReadFile(canary); string(data) != "secret "+canaryName || err != nil {
		t.Errorf("the host's canary changed: %q, %v", data, err)
	}

	// 64 MiB in and out, consumed slowly, through bounded memory.
	const size = 64 << 20
	want := sha256.New()
	io.Copy(want, Pattern(size))
	peak := HeapPeak(func() {
		if n, err := writeFile(t, fs, id, "/workspace/big", sandbox.OpenOptions{Write: true, Create: true, Truncate: true}, Pattern(size)); n != size || err != nil {
			t.Fatalf("wrote %d, %v", n, err)
		}
		f, err := fs.Open(c, id, "/workspace/big", sandbox.OpenOptions{Read: true})
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		got := sha256.New()
		slow := writerFunc(func(p []byte) (int, error) {
			time.Sleep(2 * time.Millisecond)
			return got.Write(p)
		})
		if n, err := f.ReadTo(c, 0, -1, slow); n != size || err != nil {
			t.Fatalf("read %d, %v", n, err)
		}
		if !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
			t.Error("64 MiB read back differ from those written")
		}
	})
	s.checkHeap(t, "writing and reading 64 MiB", peak)
	if got := mustSh(t, e, id, "wc -c < /workspace/big; sha256sum < /workspace/big | cut -c1-64"); got != fmt.Sprintf("%d\n%x\n", size, want.Sum(nil)) {
		t.Errorf("the sandbox sees the big file as %q", got)
	}

	// A handle whose sandbox stopped is gone; a stopped sandbox has no
	// files to reach.
	f, err := fs.Open(c, id, "/workspace/a.txt", sandbox.OpenOptions{Read: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Stop(c, id); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ReadTo(c, 0, -1, io.Discard); !errdefs.Is(err, errdefs.Conflict) {
		t.Errorf("read from a handle of a stopped sandbox: %v, want a conflict", err)
	}
	f.Close()
	_, err = fs.Stat(c, id, "/workspace/a.txt", true)
	wantClass(t, "stat in a stopped sandbox", err, errdefs.Conflict)
}
