package portal_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox"
	"github.com/msb-dev/msb/sandbox/portal"
)

const roleEnv = "MSB_PORTAL_TEST_ROLE"

// TestMain doubles as the portal: the tests re-execute their own binary in
// the "portal" role with one end of a socketpair as fd 3, exactly as the
// engine starts `msb portal`, and talk to it with a Client.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == portal.ExecRole {
		portal.ExecMain()
	}
	if os.Getenv(roleEnv) == "portal" {
		// As msb and msb-portal do: the main goroutine keeps the main
		// thread, so that the forking thread, which moves into the user
		// cgroup, is never the one /proc/<pid>/cgroup tells about.
		runtime.LockOSThread()
		portal.Main()
		return
	}
	os.Exit(m.Run())
}

type testPortal struct {
	*portal.Client
	cmd    *exec.Cmd
	dir    string        // the portal's working directory
	exited chan struct{} // closed when the portal process has exited
	err    error         // its Wait error, once exited is closed
}

func startPortal(t *testing.T, path string, extra ...*os.File) *testPortal {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	ours := os.NewFile(uintptr(fds[0]), "server")
	theirs := os.NewFile(uintptr(fds[1]), "portal")
	conn, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0])
	cmd.Env = []string{roleEnv + "=portal", "PATH=" + path, "MSB_TEST_DEFAULT=portal-env"}
	cmd.Dir = dir
	cmd.ExtraFiles = append([]*os.File{theirs}, extra...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	theirs.Close()
	p := &testPortal{Client: portal.NewClient(conn, nil), cmd: cmd, dir: dir, exited: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		p.Close()
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			t.Errorf("portal did not exit after its connection closed")
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Ping(ctx); err != nil {
		t.Fatalf("ping: %v", err)
	}
	return p
}

func newPortal(t *testing.T) *testPortal { return startPortal(t, "/usr/bin:/bin") }

func (p *testPortal) exec(t *testing.T, req sandbox.ExecRequest) sandbox.ExecResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := p.Exec(ctx, req)
	if err != nil {
		t.Fatalf("exec %q %q: %v", req.Command, req.Args, err)
	}
	return res
}

func (p *testPortal) run(t *testing.T, lang sandbox.Language, code string, timeout time.Duration) sandbox.ReplResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := p.RunCode(ctx, lang, code, timeout)
	if err != nil {
		t.Fatalf("run %s %q: %v", lang, code, err)
	}
	return res
}

func sh(script string) sandbox.ExecRequest {
	return sandbox.ExecRequest{Command: "sh", Args: []string{"-c", script}}
}

func out(text string) sandbox.Line  { return sandbox.Line{Stream: sandbox.Stdout, Text: text} }
func errl(text string) sandbox.Line { return sandbox.Line{Stream: sandbox.Stderr, Text: text} }

func equalLines(t *testing.T, got, want []sandbox.Line) {
	t.Helper()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("output:\n got %q\nwant %q", got, want)
	}
}

func texts(lines []sandbox.Line) string {
	var b strings.Builder
	for _, l := range lines {
		fmt.Fprintf(&b, "%s: %s\n", l.Stream, l.Text)
	}
	return b.String()
}

func lastLine(lines []sandbox.Line) sandbox.Line {
	if len(lines) == 0 {
		return sandbox.Line{}
	}
	return lines[len(lines)-1]
}

// uniqueSleep returns a sleep duration no other test (or test run) uses,
// so that /proc can be searched for exactly the processes a test started.
func uniqueSleep(secs int) string {
	return fmt.Sprintf("%d.%06d", secs, rand.IntN(1000000))
}

// processesWithArg lists live processes whose command line holds arg.
func processesWithArg(arg string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscan(e.Name(), &pid); err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.Contains(cmdline, []byte(arg)) {
			continue
		}
		stat, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if i := bytes.LastIndexByte(stat, ')'); i >= 0 && len(stat) > i+2 && stat[i+2] == 'Z' {
			continue
		}
		pids = append(pids, pid)
	}
	return pids
}

func waitGone(t *testing.T, arg string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		pids := processesWithArg(arg)
		if len(pids) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("processes with %q still alive: %v", arg, pids)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestPing(t *testing.T) {
	t.Parallel()
	p := newPortal(t)
	for range 3 {
		if err := p.Ping(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}

func TestExecExitCodeAndOutput(t *testing.T) {
	t.Parallel()
	p := newPortal(t)
	res := p.exec(t, sh("echo one; echo two; exit 3"))
	if res.ExitCode != 3 || res.TimedOut {
		t.Errorf("exit code %d timed out %v, want 3", res.ExitCode, res.TimedOut)
	}
	equalLines(t, res.Output, []sandbox.Line{out("one"), out("two")})

	res = p.exec(t, sh("echo out1; sleep 0.2; echo err1 >&2; sleep 0.2; echo out2; sleep 0.2; echo err2 >&2"))
	if res.ExitCode != 0 {
		t.Errorf("exit code %d, want 0", res.ExitCode)
	}
	equalLines(t, res.Output, []sandbox.Line{out("out1"), errl("err1"), out("out2"), errl("err2")})

	// A last line without its newline still counts; an empty line is a line.
	res = p.exec(t, sandbox.ExecRequest{Command: "printf", Args: []string{`a\n\nb`}})
	equalLines(t, res.Output, []sandbox.Line{out("a"), out(""), out("b")})

	res = p.exec(t, sh("kill -9 $$"))
	if res.ExitCode != 128+9 {
		t.Errorf("killed by SIGKILL: exit code %d, want 137", res.ExitCode)
	}
}

func TestExecArgsVerbatim(t *testing.T) {
	t.Parallel()
	p := newPortal(t)
	args := []string{"a b", "$HOME", "*", "", "it's", `"q"`, "; echo injected"}
	res := p.exec(t, sandbox.ExecRequest{Command: "printf", Args: append([]string{`%s\n`}, args...)})
	var want []sandbox.Line
	for _, a := range args {
		want = append(want, out(a))
	}
	equalLines(t, res.Output, want)
}

func TestExecEnvAndWorkdir(t *testing.T) {
	t.Parallel()
	p := newPortal(t)
	res := p.exec(t, sh(`echo "$MSB_TEST_DEFAULT"; pwd`))
	equalLines(t, res.Output, []sandbox.Line{out("portal-env"), out(p.dir)})

	dir := t.TempDir()
	res = p.exec(t, sandbox.ExecRequest{
		Command: "sh", Args: []string{"-c", `echo "$FOO $MSB_TEST_DEFAULT"; pwd`},
		Env:     []string{"FOO=first", "FOO=second", "MSB_TEST_DEFAULT=overridden"},
		Workdir: dir,
	})
	equalLines(t, res.Output, []sandbox.Line{out("second overridden"), out(dir)})

	// PATH is looked up in the command's own environment.
	bin := t.TempDir()
	if err := os.WriteFile(filepath.Join(bin, "hello-msb"), []byte("#!/bin/sh\necho hello from $0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	res = p.exec(t, sandbox.ExecRequest{Command: "hello-msb", Env: []string{"PATH=" + bin + ":/usr/bin"}})
	equalLines(t, res.Output, []sandbox.Line{out("hello from " + filepath.Join(bin, "hello-msb"))})
	res = p.exec(t, sandbox.ExecRequest{Command: "sh", Args: []string{"-c", "true"}, Env: []string{"PATH=" + bin}})
	if res.ExitCode != 127 {
		t.Errorf("sh with a PATH that lacks it: exit code %d, want 127", res.ExitCode)
	}

	// Relative commands resolve against the working directory.
	res = p.exec(t, sandbox.ExecRequest{Command: "./hello-msb", Workdir: bin})
	equalLines(t, res.Output, []sandbox.Line{out("hello from ./hello-msb")})
}

func TestExecCannotRun(t *testing.T) {
	t.Parallel()
	p := newPortal(t)
	res := p.exec(t, sandbox.ExecRequest{Command: "no-such-command-msb", Args: []string{"x"}})
	if res.ExitCode != 127 {
		t.Errorf("missing command: exit code %d, want 127", res.ExitCode)
	}
	equalLines(t, res.Output, []sandbox.Line{errl(`msb: command "no-such-command-msb" not found`)})

	file := filepath.Join(t.TempDir(), "data.txt")
	if err := os.WriteFile(file, []byte("not a program\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	res = p.exec(t, sandbox.ExecRequest{Command: file})
	if res.ExitCode != 126 {
		t.Errorf("non-executable file: exit code %d, want 126", res.ExitCode)
	}
	equalLines(t, res.Output, []sandbox.Line{errl(fmt.Sprintf("msb: command %q is not executable", file))})

	res = p.exec(t, sandbox.ExecRequest{Command: "true", Workdir: "/no/such/dir"})
	if res.ExitCode != 126 {
		t.Errorf("missing workdir: exit code %d, want 126", res.ExitCode)
	}
}

func TestExecTimeoutKillsWholeTree(t *testing.T) {
	t.Parallel()
	p := newPortal(t)
	s := uniqueSleep(100)
	start := time.Now()
	res := p.exec(t, sandbox.ExecRequest{
		Command: "sh",
		// A background child, one that left the process group, and a
		// loop that keeps forking: none may survive.
		Args:    []string{"-c", fmt.Sprintf("echo started; sleep %[1]s & setsid sleep %[1]s & while :; do sh -c 'sleep %[1]s' & sleep 0.02; done", s)},
		Timeout: 700 * time.Millisecond,
	})
	elapsed := time.Since(start)
	if elapsed > 5*time.Second {
		t.Errorf("timed-out command took %v to return", elapsed)
	}
	if res.ExitCode != sandbox.ExitTimeout || !res.TimedOut {
		t.Errorf("exit code %d timed out %v, want %d true", res.ExitCode, res.TimedOut, sandbox.ExitTimeout)
	}
	if len(res.Output) == 0 || res.Output[0] != out("started") {
		t.Errorf("output before the timeout lost: %q", res.Output)
	}
	if got, want := lastLine(res.Output), errl("[msb] command timed out after 700ms and was killed"); got != want {
		t.Errorf("last line %q, want %q", got, want)
	}
	waitGone(t, "sleep\x00"+s, 2*time.Second)
}

func TestExecSimpleTimeout(t *testing.T) {
	t.Parallel()
	p := newPortal(t)
	s := uniqueSleep(100)
	start := time.Now()
	res := p.exec(t, sandbox.ExecRequest{Command: "sh", Args: []string{"-c", fmt.Sprintf("sleep %[1]s & sleep %[1]s", s)}, Timeout: 2 * time.Second})
	if d := time.Since(start); d < 2*time.Second || d > 5*time.Second {
		t.Errorf("returned after %v, want about 2s", d)
	}
	if res.ExitCode != 124 || !res.TimedOut {
		t.Errorf("exit code %d timed out %v, want 124 true", res.ExitCode, res.TimedOut)
	}
	equalLines(t, res.Output, []sandbox.Line{errl("[msb] command timed out after 2s and was killed")})
	if pids := processesWithArg("sleep\x00" + s); len(pids) != 0 {
		t.Errorf("sleeps still alive after the call returned: %v", pids)
	}
}

func TestExecBackgroundChildDoesNotHoldCall(t *testing.T) {
	t.Parallel()
	p := newPortal(t)
	s := uniqueSleep(30)
	start := time.Now()
	res := p.exec(t, sh(fmt.Sprintf("echo before; sleep %s &", s)))
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("call waited %v for a background child", d)
	}
	if res.ExitCode != 0 {
		t.Errorf("exit code %d, want 0", res.ExitCode)
	}
	equalLines(t, res.Output, []sandbox.Line{out("before")})
	if len(processesWithArg("sleep\x00"+s)) == 0 {
		t.Errorf("the background child should keep running after the call")
	}
	// When the server goes away, the portal takes everything with it.
	p.Close()
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		t.Fatal("portal did not exit after its connection closed")
	}
	waitGone(t, "sleep\x00"+s, 2*time.Second)
}

func TestExecCancelKills(t *testing.T) {
	t.Parallel()
	p := newPortal(t)
	s := uniqueSleep(100)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := p.Exec(ctx, sandbox.ExecRequest{Command: "sleep", Args: []string{s}})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want context.DeadlineExceeded", err)
	}
	waitGone(t, "sleep\x00"+s, 3*time.Second)
	// The connection is still good.
	if res := p.exec(t, sandbox.ExecRequest{Command: "echo", Args: []string{"ok"}}); res.ExitCode != 0 {
		t.Errorf("exec after a cancelled call: %+v", res)
	}
}

// outputBytes is what lines weigh in a reply: each line's text (plain
// here) and the JSON around it.
func outputBytes(lines []sandbox.Line) int {
	n := 0
	for _, l := range lines {
		n += len(l.Text) + len(`{"stream":"stdout","text":""},`)
	}
	return n
}

// A flood of empty lines is cut by what it weighs in the reply, JSON
// included: the reply stays about 16 MiB, not three times that.
func TestExecEmptyLinesCutByReplySize(t *testing.T) {
	t.Parallel()
	p := newPortal(t)
	res := p.exec(t, sh(`yes '' | head -n 3000000`))
	data, err := json.Marshal(res.Output)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) > sandbox.MaxOutput+64<<10 || len(data) < sandbox.MaxOutput-64<<10 {
		t.Errorf("output of %d lines is %d bytes of JSON, want about %d", len(res.Output), len(data), sandbox.MaxOutput)
	}
	if got := lastLine(res.Output); got != errl(sandbox.OutputCutNotice) {
		t.Errorf("last line %q, want the cut notice", got)
	}
}

func TestExecOutputFloodIsCut(t *testing.T) {
	t.Parallel()
	p := newPortal(t)
	res := p.exec(t, sh(`head -c 40000000 /dev/zero | tr '\0' 'a' | fold -w 1000; echo done >&2`))
	if res.ExitCode != 0 {
		t.Errorf("exit code %d, want 0", res.ExitCode)
	}
	if got := lastLine(res.Output); got != errl(sandbox.OutputCutNotice) {
		t.Errorf("last line %q, want the cut notice", got)
	}
	body := res.Output[:len(res.Output)-1]
	if n := outputBytes(body); n > sandbox.MaxOutput || n < sandbox.MaxOutput-2000 {
		t.Errorf("kept %d bytes, want just under %d", n, sandbox.MaxOutput)
	}
	for _, l := range body {
		if l != out(strings.Repeat("a", 1000)) {
			t.Fatalf("unexpected line %.80q", l)
		}
	}
}

func TestExecLongLinesAreSplit(t *testing.T) {
	t.Parallel()
	p := newPortal(t)
	res := p.exec(t, sh(`head -c 200000 /dev/zero | tr '\0' 'b'`))
	var lens []int
	for _, l := range res.Output {
		lens = append(lens, len(l.Text))
	}
	if fmt.Sprint(lens) != "[65536 65536 65536 3392]" {
		t.Errorf("line lengths %v", lens)
	}
}

func TestSpawnStreams(t *testing.T) {
	t.Parallel()
	p := newPortal(t)
	var got []sandbox.Line
	var firstAt time.Time
	start := time.Now()
	code, err := p.Spawn(context.Background(), sh("echo a; sleep 0.5; echo b >&2; exit 5"), func(l sandbox.Line) {
		if got == nil {
			firstAt = time.Now()
		}
		got = append(got, l)
	})
	if err != nil {
		t.Fatal(err)
	}
	if code != 5 {
		t.Errorf("exit code %d, want 5", code)
	}
	equalLines(t, got, []sandbox.Line{out("a"), errl("b")})
	if total := time.Since(start); firstAt.Sub(start) > total-300*time.Millisecond {
		t.Errorf("first line arrived after %v of %v: not streamed", firstAt.Sub(start), total)
	}

	// Spawned output is not capped at MaxOutput.
	n := 0
	code, err = p.Spawn(context.Background(), sh(`head -c 20000000 /dev/zero | tr '\0' 'a' | fold -w 10000`), func(l sandbox.Line) { n += len(l.Text) + 1 })
	if err != nil || code != 0 {
		t.Fatalf("spawn flood: code %d err %v", code, err)
	}
	if n != 20000000+2000 {
		t.Errorf("spawn delivered %d bytes, want all 20002000", n)
	}

	// Ending ctx kills it.
	s := uniqueSleep(100)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(300*time.Millisecond, cancel)
	if _, err := p.Spawn(ctx, sandbox.ExecRequest{Command: "sleep", Args: []string{s}}, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
	waitGone(t, "sleep\x00"+s, 3*time.Second)
}

// TestSpawnStopsForwardingAtLogCap checks that a background command's
// output past sandbox.MaxLog is dropped in the portal, after one notice,
// while the command itself runs on: its pipe keeps being drained.
func TestSpawnStopsForwardingAtLogCap(t *testing.T) {
	t.Parallel()
	p := newPortal(t)
	var n, lines int
	var last sandbox.Line
	total := sandbox.MaxLog + 8<<20
	code, err := p.Spawn(context.Background(), sh(fmt.Sprintf(`head -c %d /dev/zero | tr '\0' 'a' | fold -w 9999`, total)), func(l sandbox.Line) {
		n += len(l.Text) + 1
		lines++
		last = l
	})
	if err != nil || code != 0 {
		t.Fatalf("spawn flood: code %d err %v", code, err)
	}
	if last != errl(sandbox.LogCutNotice) {
		t.Errorf("last line %q, want the log cut notice", last)
	}
	if n > sandbox.MaxLog+len(sandbox.LogCutNotice)+1 || n < sandbox.MaxLog-10000 {
		t.Errorf("forwarded %d bytes in %d lines, want %d and the notice", n, lines, sandbox.MaxLog)
	}
}

func TestConcurrentCalls(t *testing.T) {
	t.Parallel()
	p := newPortal(t)
	p.run(t, sandbox.Python, "import time", 0) // start the interpreter first
	start := time.Now()
	errc := make(chan error, 3)
	go func() {
		res, err := p.RunCode(context.Background(), sandbox.Python, "time.sleep(2); print('py')", 10*time.Second)
		if err == nil && (res.Status != sandbox.ReplSuccess || fmt.Sprint(res.Output) != fmt.Sprint([]sandbox.Line{out("py")})) {
			err = fmt.Errorf("repl: %+v", res)
		}
		errc <- err
	}()
	for i := range 2 {
		go func() {
			res, err := p.Exec(context.Background(), sh(fmt.Sprintf("sleep 2; echo cmd%d", i)))
			if err == nil && fmt.Sprint(res.Output) != fmt.Sprint([]sandbox.Line{out(fmt.Sprintf("cmd%d", i))}) {
				err = fmt.Errorf("exec %d: %+v", i, res)
			}
			errc <- err
		}()
	}
	for range 3 {
		if err := <-errc; err != nil {
			t.Error(err)
		}
	}
	if d := time.Since(start); d > 4500*time.Millisecond {
		t.Errorf("three 2s calls took %v: not concurrent", d)
	}
}

func TestPortalExitsWhenConnectionCloses(t *testing.T) {
	t.Parallel()
	p := newPortal(t)
	p.run(t, sandbox.Python, "x = 1", 0)
	p.Close()
	select {
	case <-p.exited:
		if p.err != nil {
			t.Errorf("portal exit: %v", p.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("portal did not exit")
	}
	if err := p.Ping(context.Background()); !errors.Is(err, portal.ErrClosed) || !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("ping after close: %v, want ErrClosed and ErrUnavailable", err)
	}
}

func TestMissingInterpreter(t *testing.T) {
	t.Parallel()
	p := startPortal(t, t.TempDir())
	_, err := p.RunCode(context.Background(), sandbox.Python, "print(1)", 0)
	if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), `python interpreter "python3" is not installed in this sandbox's image`) {
		t.Errorf("err = %v", err)
	}
	_, err = p.RunCode(context.Background(), sandbox.Node, "1", 0)
	if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), `"node"`) {
		t.Errorf("err = %v", err)
	}
	_, err = p.RunCode(context.Background(), "ruby", "1", 0)
	if !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("unknown language: err = %v", err)
	}
}

func TestOrphansAreReaped(t *testing.T) {
	t.Parallel()
	p := newPortal(t)
	s := uniqueSleep(0)
	res := p.exec(t, sh(fmt.Sprintf("sleep %s & echo $!", s)))
	if res.ExitCode != 0 || len(res.Output) != 1 {
		t.Fatalf("%+v", res)
	}
	orphan := strings.TrimSpace(res.Output[0].Text)
	// The sleep outlives its shell, is reparented to the portal and exits
	// within a second; the portal must reap it.
	deadline := time.Now().Add(5 * time.Second)
	for {
		stat, err := os.ReadFile(filepath.Join("/proc", orphan, "stat"))
		if err != nil {
			return // reaped
		}
		if time.Now().After(deadline) {
			t.Fatalf("orphan %s never reaped: %s", orphan, stat)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// testPidsCgroup makes a cgroup v1 pids cgroup for a test, removed when
// the test ends, and returns its directory and its tasks file open for
// writing.
func testPidsCgroup(t *testing.T) (string, *os.File) {
	t.Helper()
	dir := filepath.Join("/sys/fs/cgroup/pids", fmt.Sprintf("msb-portal-test-%d", rand.Int64()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("no cgroup v1 pids hierarchy to test with: %v", err)
	}
	t.Cleanup(func() {
		// The portal has exited by now (cleanups run last-in first-out),
		// but the kernel may take a moment to empty the cgroup.
		for range 50 {
			if os.Remove(dir) == nil {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Errorf("cannot remove %s", dir)
	})
	tasks, err := os.OpenFile(filepath.Join(dir, "tasks"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	return dir, tasks
}

// TestUserPidsCgroup checks that, given the user pids cgroup's tasks file
// as fd 4 (as the Linux engine passes it), the portal starts every process
// in that cgroup while the portal itself stays out of it.
func TestUserPidsCgroup(t *testing.T) {
	t.Parallel()
	dir, tasks := testPidsCgroup(t)
	p := startPortal(t, "/usr/bin:/bin", tasks)
	tasks.Close()
	name := "/" + filepath.Base(dir)
	res := p.exec(t, sandbox.ExecRequest{Command: "cat", Args: []string{"/proc/self/cgroup"}})
	if !hasLine(res.Output, sandbox.Stdout, ":pids:"+name) {
		t.Errorf("command not in the user cgroup:\n%s", texts(res.Output))
	}
	rres := p.run(t, sandbox.Python, "print(open('/proc/self/cgroup').read())", 0)
	if !hasLine(rres.Output, sandbox.Stdout, ":pids:"+name) {
		t.Errorf("interpreter not in the user cgroup:\n%s", texts(rres.Output))
	}
	own, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", p.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(own), ":pids:"+name+"\n") {
		t.Errorf("the portal's main thread moved into the user cgroup")
	}
}

// TestCallCgroupKillsDetached checks that, given the user pids cgroup's
// directory as fd 5 too (as the Linux engine passes it), a command runs in
// a cgroup of its own, and a timeout kills what it started even after
// that left the command's session and lost its parent.
func TestCallCgroupKillsDetached(t *testing.T) {
	t.Parallel()
	dir, tasks := testPidsCgroup(t)
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	p := startPortal(t, "/usr/bin:/bin", tasks, d)
	tasks.Close()
	d.Close()
	t.Cleanup(func() {
		// Idle call cgroups stay until the portal exits; the engine
		// removes them with the sandbox's.
		subs, _ := filepath.Glob(filepath.Join(dir, "call-*"))
		for _, s := range subs {
			os.Remove(s)
		}
	})

	res := p.exec(t, sandbox.ExecRequest{Command: "cat", Args: []string{"/proc/self/cgroup"}})
	if !strings.Contains(texts(res.Output), ":pids:/"+filepath.Base(dir)+"/call-") {
		t.Errorf("command not in a call cgroup:\n%s", texts(res.Output))
	}
	s := uniqueSleep(100)
	res = p.exec(t, sandbox.ExecRequest{
		Command: "sh",
		Args:    []string{"-c", fmt.Sprintf(`setsid sh -c "sleep %[1]s &"; sleep %[1]s`, s)},
		Timeout: 700 * time.Millisecond,
	})
	if !res.TimedOut {
		t.Fatalf("not timed out: %+v", res)
	}
	if pids := processesWithArg("sleep\x00" + s); len(pids) > 0 {
		t.Errorf("processes survived the timeout: %v", pids)
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}
