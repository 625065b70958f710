// Package sandboxtest is the conformance suite every sandbox.Engine must
// pass: lifecycle and error classes, commands and REPLs, streamed
// processes and file operations (sandbox.Streamer and sandbox.FileSystem,
// which every engine must have), and the isolation promises (processes,
// files, network, memory, process count, host secrets), all against real
// sandboxes. An engine's own test calls Run with
// a Harness that knows where that engine keeps things on the host.
package sandboxtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox"
)

// Harness connects the suite to one engine implementation.
type Harness struct {
	// NewEngine returns an engine over the harness's state. Every call
	// must use the same directories, so that a second engine sees the
	// sandboxes of the first as left by a crashed server.
	NewEngine func(t *testing.T) sandbox.Engine
	// Spec returns a base spec whose image has sh, python3 and node on
	// PATH and a writable /workspace; the suite adjusts limits per test.
	// It is called from several goroutines at once.
	Spec func() sandbox.Spec
	// Home is the directory under which the engine keeps its state (the
	// server's msb home). The suite plants a canary file there that no
	// sandbox may read.
	Home string
	// WritableDir returns the host directory that holds what sandbox id
	// writes to its root file system.
	WritableDir func(id sandbox.ID) string
	// Leftovers lists what remains on the host of sandbox id: directories,
	// mounts, cgroups. It must be empty once the sandbox is deleted.
	Leftovers func(id sandbox.ID) []string
	// HandleLeftovers is Leftovers for a sandbox a sandbox.Pooler started
	// under handle, adopted or not.
	HandleLeftovers func(handle string) []string
}

// callTimeout bounds every engine call the suite makes.
const callTimeout = 60 * time.Second

// Run runs the conformance suite against the harness's engine.
func Run(t *testing.T, h Harness) {
	s := &suite{h: h, ns: "conf" + randHex(3)}
	s.e = h.NewEngine(t)
	t.Run("Lifecycle", s.testLifecycle)
	t.Run("Errors", s.testErrors)
	t.Run("Exec", s.testExec)
	t.Run("REPL", s.testREPL)
	t.Run("Processes", s.testProcesses)
	t.Run("HostSecrets", s.testHostSecrets)
	t.Run("ReadOnlyUserland", s.testReadOnly)
	t.Run("Writes", s.testWrites)
	t.Run("Network", s.testNetwork)
	t.Run("Memory", s.testMemory)
	t.Run("ForkBomb", s.testForkBomb)
	t.Run("Stats", s.testStats)
	t.Run("Streams", s.testStreams)
	t.Run("Files", s.testFiles)
	t.Run("Parallel", s.testParallel)
	t.Run("Pool", s.testPool)
	// Last: the engines it makes share the suite's directories, and the
	// first one closed removes what they share.
	t.Run("Recover", s.testRecover)
}

type suite struct {
	h  Harness
	e  sandbox.Engine
	ns string // a namespace of this run's own, so runs never collide
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), callTimeout)
	t.Cleanup(cancel)
	return c
}

func (s *suite) id(t *testing.T, name string) sandbox.ID { return ID(t, s.ns, name) }

// start creates and starts a sandbox on e, deleting it when the test ends.
func (s *suite) start(t *testing.T, e sandbox.Engine, name string, adjust func(*sandbox.Spec)) sandbox.ID {
	t.Helper()
	id := s.id(t, name)
	spec := s.h.Spec()
	if adjust != nil {
		adjust(&spec)
	}
	if err := e.Create(ctx(t), id, spec); err != nil {
		t.Fatalf("Create %s: %v", id, err)
	}
	t.Cleanup(func() {
		if err := e.Delete(context.Background(), id); err != nil {
			t.Errorf("Delete %s: %v", id, err)
		}
	})
	if err := e.Start(ctx(t), id); err != nil {
		t.Fatalf("Start %s: %v", id, err)
	}
	return id
}

// exec runs a command and fails the test if the engine returns an error.
func exec(t *testing.T, e sandbox.Engine, id sandbox.ID, timeout time.Duration, cmd string, args ...string) sandbox.ExecResult {
	t.Helper()
	res, err := e.Exec(ctx(t), id, sandbox.ExecRequest{Command: cmd, Args: args, Timeout: timeout})
	if err != nil {
		t.Fatalf("Exec %s %q: %v", cmd, args, err)
	}
	return res
}

// sh runs a shell script and returns its result.
func sh(t *testing.T, e sandbox.Engine, id sandbox.ID, script string) sandbox.ExecResult {
	t.Helper()
	return exec(t, e, id, 30*time.Second, "sh", "-c", script)
}

// mustSh runs a shell script that must succeed and returns its stdout.
func mustSh(t *testing.T, e sandbox.Engine, id sandbox.ID, script string) string {
	t.Helper()
	res := sh(t, e, id, script)
	if res.ExitCode != 0 {
		t.Fatalf("sh -c %q: exit %d\n%s", script, res.ExitCode, all(res.Output))
	}
	return text(res.Output, sandbox.Stdout)
}

func text(lines []sandbox.Line, stream sandbox.Stream) string {
	var b strings.Builder
	for _, l := range lines {
		if l.Stream == stream {
			b.WriteString(l.Text)
			b.WriteByte('\n')
		}
	}
	return b.String()
}

func all(lines []sandbox.Line) string {
	var b strings.Builder
	for _, l := range lines {
		fmt.Fprintf(&b, "%s: %s\n", l.Stream, l.Text)
	}
	return b.String()
}

func (s *suite) assertNoLeftovers(t *testing.T, id sandbox.ID) {
	t.Helper()
	if left := s.h.Leftovers(id); len(left) > 0 {
		t.Errorf("sandbox %s left behind: %v", id, left)
	}
}

func (s *suite) testLifecycle(t *testing.T) {
	e := s.e
	id := s.id(t, "life")
	spec := s.h.Spec()

	t0 := time.Now()
	if err := e.Create(ctx(t), id, spec); err != nil {
		t.Fatalf("Create: %v", err)
	}
	defer e.Delete(context.Background(), id)
	if err := e.Create(ctx(t), id, spec); !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("second Create = %v, want ErrConflict", err)
	}
	st, err := e.Inspect(ctx(t), id)
	if err != nil || st.State != sandbox.StateCreated || st.ID != id {
		t.Errorf("Inspect after Create = %+v, %v; want created", st, err)
	}
	if _, err := e.Exec(ctx(t), id, sandbox.ExecRequest{Command: "true"}); !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("Exec before Start = %v, want ErrConflict", err)
	}
	if err := e.Start(ctx(t), id); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Logf("timing: create+start+ping %v", time.Since(t0))

	st, err = e.Inspect(ctx(t), id)
	if err != nil || st.State != sandbox.StateRunning || st.Pid <= 0 || st.Started.IsZero() {
		t.Errorf("Inspect after Start = %+v, %v; want running with a pid", st, err)
	}
	if err := e.Start(ctx(t), id); !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("second Start = %v, want ErrConflict", err)
	}

	t1 := time.Now()
	res := exec(t, e, id, 0, "true")
	t.Logf("timing: exec true %v", time.Since(t1))
	if res.ExitCode != 0 {
		t.Errorf("true: exit %d", res.ExitCode)
	}
	if got := strings.TrimSpace(mustSh(t, e, id, "hostname")); got != id.Name() {
		t.Errorf("hostname = %q, want %q", got, id.Name())
	}

	// Files survive a stop and a start.
	mustSh(t, e, id, "echo kept > /workspace/kept.txt")
	t2 := time.Now()
	if err := e.Stop(ctx(t), id); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	t.Logf("timing: stop %v", time.Since(t2))
	if err := e.Stop(ctx(t), id); err != nil {
		t.Errorf("second Stop = %v, want nil", err)
	}
	st, err = e.Inspect(ctx(t), id)
	if err != nil || st.State != sandbox.StateStopped {
		t.Errorf("Inspect after Stop = %+v, %v; want stopped", st, err)
	}
	if _, err := e.Exec(ctx(t), id, sandbox.ExecRequest{Command: "true"}); !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("Exec after Stop = %v, want ErrConflict", err)
	}
	if _, err := e.Stats(ctx(t), id); !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("Stats after Stop = %v, want ErrConflict", err)
	}
	if err := e.Start(ctx(t), id); err != nil {
		t.Fatalf("Start after Stop: %v", err)
	}
	if got := strings.TrimSpace(mustSh(t, e, id, "cat /workspace/kept.txt")); got != "kept" {
		t.Errorf("file after restart = %q, want kept", got)
	}

	t3 := time.Now()
	if err := e.Stop(ctx(t), id); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := e.Delete(ctx(t), id); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	t.Logf("timing: stop+delete %v", time.Since(t3))
	if _, err := e.Inspect(ctx(t), id); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Inspect after Delete = %v, want ErrNotFound", err)
	}
	if err := e.Delete(ctx(t), id); err != nil {
		t.Errorf("second Delete = %v, want nil", err)
	}
	s.assertNoLeftovers(t, id)

	// Delete straight from running, without Stop.
	id2 := s.id(t, "life2")
	if err := e.Create(ctx(t), id2, spec); err != nil {
		t.Fatalf("Create: %v", err)
	}
	if err := e.Start(ctx(t), id2); err != nil {
		t.Fatalf("Start: %v", err)
	}
	mustSh(t, e, id2, "sleep 1000 & echo x > /tmp/x")
	if err := e.Delete(ctx(t), id2); err != nil {
		t.Fatalf("Delete running: %v", err)
	}
	s.assertNoLeftovers(t, id2)

	// A name can be used again once deleted.
	if err := e.Create(ctx(t), id, spec); err != nil {
		t.Fatalf("Create after Delete: %v", err)
	}
	if err := e.Delete(ctx(t), id); err != nil {
		t.Fatalf("Delete created: %v", err)
	}
	s.assertNoLeftovers(t, id)
}

func (s *suite) testErrors(t *testing.T) {
	e := s.e
	id := s.id(t, "nosuch")
	if err := e.Start(ctx(t), id); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Start unknown = %v, want ErrNotFound", err)
	}
	if err := e.Stop(ctx(t), id); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Stop unknown = %v, want ErrNotFound", err)
	}
	if _, err := e.Inspect(ctx(t), id); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Inspect unknown = %v, want ErrNotFound", err)
	}
	if _, err := e.Exec(ctx(t), id, sandbox.ExecRequest{Command: "true"}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Exec unknown = %v, want ErrNotFound", err)
	}
	if _, err := e.RunCode(ctx(t), id, sandbox.Python, "1", time.Second); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("RunCode unknown = %v, want ErrNotFound", err)
	}
	if _, err := e.Stats(ctx(t), id); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Stats unknown = %v, want ErrNotFound", err)
	}
	if err := e.Delete(ctx(t), id); err != nil {
		t.Errorf("Delete unknown = %v, want nil", err)
	}
	bad := s.h.Spec()
	bad.MemoryMiB = 0
	if err := e.Create(ctx(t), s.id(t, "badspec"), bad); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("Create with 0 MiB = %v, want ErrInvalidArgument", err)
	}
	s.assertNoLeftovers(t, s.id(t, "badspec"))
}

func (s *suite) testExec(t *testing.T) {
	e := s.e
	id := s.start(t, e, "exec", nil)

	res := exec(t, e, id, 0, "sh", "-c", "echo out; echo err >&2; exit 3")
	if res.ExitCode != 3 {
		t.Errorf("exit code = %d, want 3", res.ExitCode)
	}
	if got := text(res.Output, sandbox.Stdout); got != "out\n" {
		t.Errorf("stdout = %q", got)
	}
	if got := text(res.Output, sandbox.Stderr); got != "err\n" {
		t.Errorf("stderr = %q", got)
	}
	res = exec(t, e, id, 0, "echo", "a b", "c")
	if got := text(res.Output, sandbox.Stdout); got != "a b c\n" || res.ExitCode != 0 {
		t.Errorf("echo = %q, exit %d", got, res.ExitCode)
	}
	if got := mustSh(t, e, id, "pwd; id -u; echo $HOME"); got != "/workspace\n0\n/root\n" {
		t.Errorf("pwd, uid, HOME = %q", got)
	}
	res, err := e.Exec(ctx(t), id, sandbox.ExecRequest{Command: "sh", Args: []string{"-c", "pwd; echo $FOO"}, Workdir: "/tmp", Env: []string{"FOO=bar"}})
	if err != nil || text(res.Output, sandbox.Stdout) != "/tmp\nbar\n" {
		t.Errorf("workdir and env: %q, %v", text(res.Output, sandbox.Stdout), err)
	}
	// A command that cannot be started is either an ErrInvalidArgument or,
	// as a shell reports it, exit code 127 with a line naming it.
	res, err = e.Exec(ctx(t), id, sandbox.ExecRequest{Command: "no-such-command-msb"})
	if !errors.Is(err, errdefs.ErrInvalid) &&
		(err != nil || res.ExitCode != 127 || !strings.Contains(text(res.Output, sandbox.Stderr), "no-such-command-msb")) {
		t.Errorf("missing command = %+v, %v; want ErrInvalidArgument or exit 127", res, err)
	}
	t0 := time.Now()
	res = exec(t, e, id, 500*time.Millisecond, "sleep", "30")
	if !res.TimedOut || res.ExitCode != sandbox.ExitTimeout || time.Since(t0) > 10*time.Second {
		t.Errorf("sleep past its timeout: %+v after %v", res, time.Since(t0))
	}
	if got := mustSh(t, e, id, "python3 -c 'print(6*7)'"); got != "42\n" {
		t.Errorf("python3 = %q", got)
	}
	if got := mustSh(t, e, id, "node -e 'console.log(6*7)'"); got != "42\n" {
		t.Errorf("node = %q", got)
	}
}

func (s *suite) testREPL(t *testing.T) {
	e := s.e
	id := s.start(t, e, "repl", nil)
	run := func(lang sandbox.Language, code string) sandbox.ReplResult {
		t.Helper()
		res, err := e.RunCode(ctx(t), id, lang, code, 30*time.Second)
		if err != nil {
			t.Fatalf("RunCode %s %q: %v", lang, code, err)
		}
		return res
	}
	if res := run(sandbox.Python, "x = 41\nimport os"); res.Status != sandbox.ReplSuccess {
		t.Errorf("python define: %+v", res)
	}
	if res := run(sandbox.Python, "print(x + 1)"); res.Status != sandbox.ReplSuccess || text(res.Output, sandbox.Stdout) != "42\n" {
		t.Errorf("python state: %+v", res)
	}
	if res := run(sandbox.Python, "raise ValueError('boom')"); res.Status != sandbox.ReplError || !strings.Contains(text(res.Output, sandbox.Stderr), "ValueError") {
		t.Errorf("python error: %+v", res)
	}
	if res := run(sandbox.Node, "var y = 1; globalThis.z = 2"); res.Status != sandbox.ReplSuccess {
		t.Errorf("node define: %+v", res)
	}
	if res := run(sandbox.Node, "console.log(y + z)"); res.Status != sandbox.ReplSuccess || text(res.Output, sandbox.Stdout) != "3\n" {
		t.Errorf("node state: %+v", res)
	}
	if res := run(sandbox.Node, "throw new Error('boom')"); res.Status != sandbox.ReplError || !strings.Contains(text(res.Output, sandbox.Stderr), "boom") {
		t.Errorf("node error: %+v", res)
	}
	res, err := e.RunCode(ctx(t), id, sandbox.Python, "import time\ntime.sleep(30)", 500*time.Millisecond)
	if err != nil || res.Status != sandbox.ReplTimeout {
		t.Errorf("python past its timeout: %+v, %v", res, err)
	}
}

func (s *suite) testProcesses(t *testing.T) {
	e := s.e
	id := s.start(t, e, "procs", nil)
	out := mustSh(t, e, id, "sleep 100 & sleep 0.3; for p in /proc/[0-9]*; do echo ${p#/proc/} $(tr '\\0' ' ' < $p/cmdline); done")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var sawInit, sawSleep bool
	for _, l := range lines {
		pid, cmd, _ := strings.Cut(l, " ")
		if pid == "1" {
			sawInit = strings.Contains(cmd, "portal")
		}
		if strings.HasPrefix(cmd, "sleep 100") {
			sawSleep = true
		}
	}
	// The sandbox sees its portal, the shell, sleep, a few helpers: never
	// the host's processes (this test process among them).
	if !sawInit || !sawSleep || len(lines) > 12 {
		t.Errorf("processes inside the sandbox:\n%s", out)
	}
}

func (s *suite) testHostSecrets(t *testing.T) {
	e := s.e
	canaryName := "canary-" + randHex(4)
	canary := filepath.Join(s.h.Home, canaryName)
	if err := os.WriteFile(canary, []byte("secret "+canaryName+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(canary)
	id := s.start(t, e, "secrets", nil)

	for _, p := range []string{"/etc/shadow", canary, s.h.Home} {
		if res := sh(t, e, id, "ls -d "+p+" || cat "+p); res.ExitCode == 0 {
			t.Errorf("%s is visible in the sandbox:\n%s", p, all(res.Output))
		}
	}
	// /root and /home may exist but must not hold the host's files.
	for _, p := range []string{"/root", "/home"} {
		if out := mustSh(t, e, id, "ls -A "+p+" 2>/dev/null; true"); strings.TrimSpace(out) != "" {
			t.Errorf("%s inside the sandbox is not empty: %q", p, out)
		}
	}
	found := mustSh(t, e, id, "find / -path /proc -prune -o -path /sys -prune -o -path /usr -prune -o -name "+canaryName+" -print 2>/dev/null; true")
	if strings.TrimSpace(found) != "" {
		t.Errorf("canary found inside the sandbox: %s", found)
	}
}

func (s *suite) testReadOnly(t *testing.T) {
	e := s.e
	id := s.start(t, e, "ro", nil)
	for _, script := range []string{
		"touch /usr/msb-probe",
		"echo x > /usr/bin/msb-probe",
		"mount -o remount,rw /usr",
		"mkdir -p /tmp/m && mount -t tmpfs tmpfs /tmp/m",
		"echo x >> /.msb/msb",
		"echo 1 > /proc/sys/kernel/panic",
	} {
		if res := sh(t, e, id, script); res.ExitCode == 0 {
			t.Errorf("%q succeeded inside the sandbox", script)
		}
	}
	if _, err := os.Stat("/usr/msb-probe"); err == nil {
		t.Errorf("/usr/msb-probe appeared on the host")
	}
}

func (s *suite) testWrites(t *testing.T) {
	e := s.e
	id := s.start(t, e, "writes", nil)
	content := "written " + randHex(4)
	mustSh(t, e, id, "echo '"+content+"' > /workspace/out.txt && mkdir -p /opt/x && echo y > /opt/x/y && echo t > /tmp/t")
	got, err := os.ReadFile(filepath.Join(s.h.WritableDir(id), "workspace/out.txt"))
	if err != nil || strings.TrimSpace(string(got)) != content {
		t.Errorf("host copy of /workspace/out.txt = %q, %v", got, err)
	}
	if _, err := os.Stat(filepath.Join(s.h.WritableDir(id), "opt/x/y")); err != nil {
		t.Errorf("write to /opt did not land in the sandbox's dir: %v", err)
	}
	if _, err := os.Stat("/opt/x/y"); err == nil {
		t.Errorf("write to /opt/x/y reached the host's /opt")
	}
}

func (s *suite) testNetwork(t *testing.T) {
	e := s.e
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("host secret\n"))
			c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	id := s.start(t, e, "net", nil)

	res := exec(t, e, id, 30*time.Second, "python3", "-c", fmt.Sprintf(`
import socket
s = socket.create_connection(("127.0.0.1", %d), timeout=3)
print("connected", s.recv(100))
`, port))
	if res.ExitCode == 0 || strings.Contains(text(res.Output, sandbox.Stdout), "connected") {
		t.Errorf("the host's 127.0.0.1:%d is reachable from the sandbox:\n%s", port, all(res.Output))
	}
	// Loopback is up and works inside.
	res = exec(t, e, id, 30*time.Second, "python3", "-c", `
import socket
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
c = socket.create_connection(srv.getsockname(), timeout=3)
a, _ = srv.accept(); a.sendall(b"hi"); print(c.recv(2).decode())
`)
	if res.ExitCode != 0 || text(res.Output, sandbox.Stdout) != "hi\n" {
		t.Errorf("loopback inside the sandbox:\n%s", all(res.Output))
	}
	if got := mustSh(t, e, id, "ls /sys/class/net"); got != "lo\n" {
		t.Errorf("network interfaces = %q, want only lo", got)
	}
}

func (s *suite) testMemory(t *testing.T) {
	e := s.e
	id := s.start(t, e, "mem", func(sp *sandbox.Spec) { sp.MemoryMiB = 64 })
	res := exec(t, e, id, 60*time.Second, "python3", "-c", `
chunks = []
for i in range(64):
    chunks.append(bytearray(8 << 20))  # 512 MiB in all, touched
print("survived")
`)
	killed := res.ExitCode == 128+9 || res.ExitCode == -9 ||
		(res.ExitCode != 0 && strings.Contains(text(res.Output, sandbox.Stderr), "MemoryError"))
	if !killed || strings.Contains(text(res.Output, sandbox.Stdout), "survived") {
		t.Errorf("allocating 512 MiB under a 64 MiB limit: exit %d\n%s", res.ExitCode, all(res.Output))
	}
	// The portal survived and the sandbox still works.
	if got := mustSh(t, e, id, "echo alive"); got != "alive\n" {
		t.Errorf("after OOM: %q", got)
	}
	if st, err := e.Inspect(ctx(t), id); err != nil || st.State != sandbox.StateRunning {
		t.Errorf("after OOM: %+v, %v", st, err)
	}
}

func (s *suite) testForkBomb(t *testing.T) {
	e := s.e
	const limit = 64
	id := s.start(t, e, "bomb", func(sp *sandbox.Spec) { sp.Pids = limit })

	// Forks fail at the limit instead of taking the host down.
	res := exec(t, e, id, 60*time.Second, "python3", "-c", `
import os, time
n = 0
try:
    while True:
        if os.fork() == 0:
            time.sleep(1)
            os._exit(0)
        n += 1
except OSError as e:
    print("stopped after", n, "errno", e.errno)
for _ in range(n):
    os.wait()
`)
	out := text(res.Output, sandbox.Stdout)
	var n int
	if _, err := fmt.Sscanf(out, "stopped after %d", &n); err != nil || n >= limit {
		t.Errorf("fork loop under pids=%d:\n%s", limit, all(res.Output))
	}

	waitAlive(t, e, id, "the fork loop")

	// A shell fork bomb that keeps trying (every process forks in a loop,
	// so it never dies out on its own), stopped by its timeout.
	t0 := time.Now()
	res = exec(t, e, id, 3*time.Second, "sh", "-c", "b() { while :; do b & done; }; b 2>/dev/null & exec sleep 60")
	t.Logf("fork bomb: exit %d, timed out %v, after %v", res.ExitCode, res.TimedOut, time.Since(t0))
	if !res.TimedOut {
		t.Errorf("the fork bomb did not run until its timeout: %+v", res)
	}
	waitAlive(t, e, id, "a fork bomb")
	out = strings.TrimSpace(mustSh(t, e, id, "ls -d /proc/[0-9]* | wc -l"))
	if n, err := strconv.Atoi(out); err != nil || n > 8 {
		t.Errorf("%s processes left after the fork bomb's timeout", out)
	}
	if st, err := e.Inspect(ctx(t), id); err != nil || st.State != sandbox.StateRunning {
		t.Errorf("after fork bomb: %+v, %v", st, err)
	}
}

// waitAlive waits until the sandbox runs a command again, e.g. once the
// processes holding its pids are gone.
func waitAlive(t *testing.T, e sandbox.Engine, id sandbox.ID, after string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		res, err := e.Exec(ctx(t), id, sandbox.ExecRequest{Command: "echo", Args: []string{"alive"}, Timeout: 10 * time.Second})
		if err == nil && res.ExitCode == 0 && text(res.Output, sandbox.Stdout) == "alive\n" {
			return
		}
		if errors.Is(err, errdefs.ErrConflict) {
			t.Fatalf("sandbox died after %s: %v", after, err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("sandbox does not answer 30s after %s: %+v, %v", after, res, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (s *suite) testStats(t *testing.T) {
	e := s.e
	id := s.start(t, e, "stats", nil)
	before, err := e.Stats(ctx(t), id)
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	if before.MemoryBytes == 0 || before.Sampled.IsZero() {
		t.Errorf("Stats of a running sandbox: %+v", before)
	}
	exec(t, e, id, 30*time.Second, "python3", "-c", "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass")
	mustSh(t, e, id, "head -c 1048576 /dev/urandom > /workspace/blob")
	after, err := e.Stats(ctx(t), id)
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	if after.CPUTime-before.CPUTime < 450*time.Millisecond {
		t.Errorf("CPU time grew by %v after a busy loop of 0.5 s of CPU", after.CPUTime-before.CPUTime)
	}
	if after.DiskBytes < before.DiskBytes+1<<20 {
		t.Errorf("disk grew from %d to %d after writing 1 MiB", before.DiskBytes, after.DiskBytes)
	}
	if after.DiskBytes > before.DiskBytes+4<<20 {
		t.Errorf("disk use %d counts more than the writable layer", after.DiskBytes)
	}
}

func (s *suite) testParallel(t *testing.T) {
	e := s.e
	const n = 10
	var wg sync.WaitGroup
	errs := make(chan error, n)
	t0 := time.Now()
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- s.lifecycleOnce(e, s.id(t, "par"+strconv.Itoa(i)), i)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	t.Logf("timing: %d sandboxes create+start+python+delete in parallel: %v", n, time.Since(t0))
	for i := range n {
		s.assertNoLeftovers(t, s.id(t, "par"+strconv.Itoa(i)))
	}
}

func (s *suite) lifecycleOnce(e sandbox.Engine, id sandbox.ID, i int) (err error) {
	c, cancel := context.WithTimeout(context.Background(), 2*callTimeout)
	defer cancel()
	spec := s.h.Spec()
	if err := e.Create(c, id, spec); err != nil {
		return fmt.Errorf("%s: Create: %w", id, err)
	}
	defer func() {
		if derr := e.Delete(context.Background(), id); derr != nil && err == nil {
			err = fmt.Errorf("%s: Delete: %w", id, derr)
		}
	}()
	if err := e.Start(c, id); err != nil {
		return fmt.Errorf("%s: Start: %w", id, err)
	}
	res, err := e.Exec(c, id, sandbox.ExecRequest{Command: "python3", Args: []string{"-c", fmt.Sprintf("print(%d * 2)", i)}, Timeout: 60 * time.Second})
	if err != nil {
		return fmt.Errorf("%s: Exec: %w", id, err)
	}
	if got := text(res.Output, sandbox.Stdout); got != strconv.Itoa(i*2)+"\n" || res.ExitCode != 0 {
		return fmt.Errorf("%s: python printed %q, exit %d", id, got, res.ExitCode)
	}
	return nil
}

func (s *suite) testRecover(t *testing.T) {
	first := s.h.NewEngine(t)
	running := s.start(t, first, "crash-running", nil)
	created := s.id(t, "crash-created")
	if err := first.Create(ctx(t), created, s.h.Spec()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = first.Delete(context.Background(), created) })
	mustSh(t, first, running, "sleep 1000 & echo data > /workspace/data")

	// The second engine plays the server that starts after a crash.
	second := s.h.NewEngine(t)
	left, err := second.Recover(ctx(t))
	if err != nil {
		t.Fatalf("Recover: %v", err)
	}
	found := map[sandbox.ID]sandbox.Status{}
	for _, st := range left {
		found[st.ID] = st
	}
	if st, ok := found[running]; !ok || st.State != sandbox.StateRunning {
		t.Errorf("Recover did not report %s as running: %+v", running, left)
	}
	if _, ok := found[created]; !ok {
		t.Errorf("Recover did not report %s: %+v", created, left)
	}
	if _, err := second.Exec(ctx(t), running, sandbox.ExecRequest{Command: "true"}); err == nil {
		t.Errorf("a recovered sandbox accepted Exec without being started")
	}
	if err := second.Create(ctx(t), running, s.h.Spec()); !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("Create over a leftover = %v, want ErrConflict", err)
	}
	for _, id := range []sandbox.ID{running, created} {
		if err := second.Delete(ctx(t), id); err != nil {
			t.Errorf("Delete leftover %s: %v", id, err)
		}
		s.assertNoLeftovers(t, id)
	}
	left, err = second.Recover(ctx(t))
	if err != nil {
		t.Fatalf("Recover: %v", err)
	}
	for _, st := range left {
		if st.ID == running || st.ID == created {
			t.Errorf("still reported after Delete: %+v", st)
		}
	}
	// The first engine finds its sandbox gone.
	if _, err := first.Exec(ctx(t), running, sandbox.ExecRequest{Command: "true"}); err == nil {
		t.Errorf("Exec on a sandbox deleted by another engine succeeded")
	}
}

// ID returns the ID of sandbox name in namespace ns, failing the test if
// either name is invalid.
func ID(tb testing.TB, ns, name string) sandbox.ID {
	tb.Helper()
	id, err := sandbox.ParseID(ns, name)
	if err != nil {
		tb.Fatal(err)
	}
	return id
}

// BuildMSB builds msb as the README's set-up does: its portal binary
// first (go generate in sandbox/linux/portalbin), which msb embeds, then
// msb, statically, so that both run inside any image. It returns the
// paths of msb and of a copy of the portal binary, both in dir; the
// builds' output goes to stderr. Test binaries of several packages build
// at once: the builds are serialised (a lock on the portal binary's
// directory in the source tree, where it is written).
func BuildMSB(dir string) (msb, portal string, err error) {
	const portalPkg = "github.com/msb-dev/msb/sandbox/linux/portalbin"
	src, err := osexec.Command("go", "list", "-f", "{{.Dir}}", portalPkg).Output()
	if err != nil {
		return "", "", fmt.Errorf("build msb: find %s: %w", portalPkg, err)
	}
	bin := filepath.Join(strings.TrimSpace(string(src)), "bin")
	lock, err := os.Open(bin)
	if err != nil {
		return "", "", fmt.Errorf("build msb: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", "", fmt.Errorf("build msb: %w", err)
	}
	for _, args := range [][]string{
		{"generate", portalPkg},
		{"build", "-tags", "netgo,osusergo,urfave_cli_no_docs", "-ldflags", `-extldflags "-static"`, "-o", filepath.Join(dir, "msb"), "github.com/msb-dev/msb"},
	} {
		build := osexec.Command("go", args...)
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			return "", "", fmt.Errorf("build msb: go %s: %w", args[0], err)
		}
	}
	data, err := os.ReadFile(filepath.Join(bin, "msb-portal"))
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, "msb-portal"), data, 0o755)
	}
	if err != nil {
		return "", "", fmt.Errorf("build msb: the portal binary: %w", err)
	}
	return filepath.Join(dir, "msb"), filepath.Join(dir, "msb-portal"), nil
}

// ProcessCPU returns the CPU time process pid used itself and that of its
// children: the reaped ones, and what the living ones and their reaped
// children used (a sandbox server's: its spawner, the sandboxes' inits and
// all their processes), from /proc.
func ProcessCPU(pid int) (self, children time.Duration, err error) {
	self, children, err = statCPU(pid)
	if err != nil {
		return 0, 0, err
	}
	for _, n := range Children(pid) {
		if s, ch, err := statCPU(n); err == nil { // one gone meanwhile is in children
			children += s + ch
		}
	}
	return self, children, nil
}

// Children lists the children of process pid (of any of its threads).
func Children(pid int) []int {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	var pids []int
	for _, task := range tasks {
		data, _ := os.ReadFile(task)
		for _, c := range strings.Fields(string(data)) {
			if n, err := strconv.Atoi(c); err == nil {
				pids = append(pids, n)
			}
		}
	}
	return pids
}

// statCPU returns the CPU time of process pid and of its reaped children.
func statCPU(pid int) (self, children time.Duration, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:]))
	if len(f) < 15 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: %q", pid, data)
	}
	tick := func(i int) time.Duration {
		n, _ := strconv.ParseInt(f[i], 10, 64)
		return time.Duration(n) * time.Second / 100 // USER_HZ
	}
	return tick(11) + tick(12), tick(13) + tick(14), nil
}
