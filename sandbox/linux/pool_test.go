package linux_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/msb-dev/msb/sandbox"
	"github.com/msb-dev/msb/sandbox/linux"
	"github.com/msb-dev/msb/sandbox/network"
	"github.com/msb-dev/msb/sandbox/network/networktest"
	"github.com/msb-dev/msb/sandbox/sandboxtest"
)

// warmSpec is a host-image spec as the Service builds them: the workdir
// added last to the root's directories.
func warmSpec(t *testing.T, memory, cpus int, workdir string) sandbox.Spec {
	t.Helper()
	spec := hostSpec(t)
	spec.MemoryMiB, spec.CPUs, spec.Workdir = memory, cpus, workdir
	spec.Root.Dirs = append(slices.Clone(spec.Root.Dirs), strings.TrimPrefix(workdir, "/"))
	return spec
}

// A sandbox taken from the pool gets the limits of the start that takes it
// (what its own cgroup files say, inside), and the network it asks for.
func TestPoolAppliesLimitsAndNetwork(t *testing.T) {
	w := networktest.New(t)
	e, cfg := newEngine(t, t.TempDir(), "msb-pool")
	ctx := context.Background()
	h, err := e.Prestart(ctx, warmSpec(t, 64, 1, "/workspace"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Discard(context.Background(), h) })
	cg := filepath.Join("/sys/fs/cgroup/memory", cfg.CgroupParent, h)
	if got := strings.TrimSpace(readFile(t, cg+"/memory.limit_in_bytes")); got != fmt.Sprint(64<<20) {
		t.Errorf("a waiting sandbox's memory limit is %s, want 64 MiB", got)
	}

	id, _ := sandbox.ParseID("pool", "taken")
	spec := warmSpec(t, 300, 2, "/workspace")
	spec.Network = &network.Config{
		Policy:   network.MustParsePolicy(network.Deny, "allow "+w.Allowed.String()+":80"),
		Dialer:   w.Dialer(),
		Resolver: w.Resolver(),
	}
	if err := e.Adopt(ctx, h, id, spec); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Delete(context.Background(), id) })
	got := mustRun(t, e, id, `cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/pids/pids.max
[ -e /sys/fs/cgroup/memory/memory.memsw.limit_in_bytes ] && cat /sys/fs/cgroup/memory/memory.memsw.limit_in_bytes || echo `+fmt.Sprint(300<<20))
	if want := fmt.Sprintf("%d\n200000\n128\n%d\n", 300<<20, 300<<20); got != want {
		t.Errorf("limits inside the adopted sandbox:\n%s\nwant\n%s", got, want)
	}
	r, err := e.Exec(ctx, id, sandbox.ExecRequest{Command: "/usr/bin/python3", Args: []string{"-c", fmt.Sprintf(`import socket
s = socket.create_connection((%q, 80), timeout=5)
s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
print(s.recv(100).split(b"\r\n")[0].decode())`, w.Allowed.String())}})
	if err != nil || r.ExitCode != 0 || len(r.Output) == 0 || !strings.HasPrefix(r.Output[0].Text, "HTTP/1.") {
		t.Errorf("network of the adopted sandbox: %+v, %v", r, err)
	}
	st, err := e.Stats(ctx, id)
	if err != nil || st.Network == nil || st.MemoryBytes == 0 {
		t.Errorf("Stats of the adopted sandbox = %+v, %v", st, err)
	}
	// Lower than the waiting limit works too.
	h2, err := e.Prestart(ctx, warmSpec(t, 64, 1, "/workspace"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Discard(context.Background(), h2) })
	small, _ := sandbox.ParseID("pool", "small")
	if err := e.Adopt(ctx, h2, small, warmSpec(t, 40, 1, "/workspace")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Delete(context.Background(), small) })
	if got := mustRun(t, e, small, "cat /sys/fs/cgroup/memory/memory.limit_in_bytes"); got != fmt.Sprintln(40<<20) {
		t.Errorf("lowered memory limit: %s", got)
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// crashPoolEnv makes the test binary a server with two sandboxes
// started ahead of time, one of them adopted, that waits to be killed;
// its value is the engine's Config as JSON.
const crashPoolEnv = "MSB_TEST_CRASH_POOL"

var crashPoolID, _ = sandbox.ParseID("crash", "pooled")

func crashPoolServer(cfgJSON string) {
	e, spec, fail := crashStart("crash pool server", cfgJSON)
	ctx := context.Background()
	var handles []string
	for range 2 {
		h, err := e.Prestart(ctx, spec)
		if err != nil {
			fail(err)
		}
		handles = append(handles, h)
	}
	if err := e.Adopt(ctx, handles[0], crashPoolID, spec); err != nil {
		fail(err)
	}
	crashWait(e, crashPoolID, fail, strings.Join(handles, " "))
}

// A server killed with sandboxes in its pool, waiting and adopted: the
// next engine's Recover removes both, processes, cgroups and directories.
func TestPoolAfterCrash(t *testing.T) {
	home := t.TempDir()
	cfg := testConfig(t, home, "msb-pool-crash")
	server, line := startCrashServer(t, crashPoolEnv, cfg)
	handles := strings.Fields(line)
	if len(handles) != 2 {
		t.Fatalf("crash pool server did not get ready: %q", line)
	}
	server.Process.Kill()
	server.Wait()

	_, left := recovered(t, cfg)
	for _, st := range left {
		t.Errorf("Recover reported %+v: a pool's sandbox is no sandbox of the caller's", st)
	}
	for _, h := range handles {
		if left := leftoversOf(t, cfg, h); len(left) > 0 {
			t.Errorf("pooled sandbox %s left after Recover: %v", h, left)
		}
	}
	// Nothing of theirs runs: no process is in a namespace of theirs.
	deadline := time.Now().Add(10 * time.Second)
	for {
		n := 0
		procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
		for _, p := range procs {
			if data, err := os.ReadFile(p); err == nil && strings.HasPrefix(string(data), "sleep\x001000") {
				n++
			}
		}
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d sleep processes of the killed server's pooled sandbox still run", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// What a dead server left under a handle that starts with this process's
// id (a server restarted in a container is the same pid 1) is still a
// leftover: Recover removes it, and the engine's own sandboxes start
// under handles of their own.
func TestPoolLeftoverOfTheSamePid(t *testing.T) {
	e, cfg := newEngine(t, t.TempDir(), "msb-pool-pid")
	ctx := context.Background()
	// A sandbox of this engine, waiting: not a leftover.
	h, err := e.Prestart(ctx, warmSpec(t, 64, 1, "/workspace"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Discard(context.Background(), h) })
	if !strings.HasPrefix(h, fmt.Sprintf("warm-%d-", os.Getpid())) {
		t.Fatalf("handle %q does not name its process", h)
	}
	dead := fmt.Sprintf("warm-%d-00000000-1", os.Getpid())
	if err := os.MkdirAll(filepath.Join(cfg.SandboxDir, dead, "upper"), 0o700); err != nil {
		t.Fatal(err)
	}
	parents, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/*", cfg.CgroupParent))
	if len(parents) == 0 {
		t.Fatal("the engine has no cgroup parent")
	}
	for _, p := range parents {
		if err := os.Mkdir(filepath.Join(p, dead), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	if left := leftoversOf(t, cfg, dead); len(left) > 0 {
		t.Errorf("a dead server's sandbox under this pid is left after Recover: %v", left)
	}
	if left := leftoversOf(t, cfg, h); len(left) == 0 {
		t.Fatal("Recover removed a sandbox this engine keeps waiting")
	}
	id, _ := sandbox.ParseID("pool", "same-pid")
	if err := e.Adopt(ctx, h, id, warmSpec(t, 128, 1, "/workspace")); err != nil {
		t.Fatalf("the waiting sandbox after Recover: %v", err)
	}
	if err := e.Delete(ctx, id); err != nil {
		t.Fatal(err)
	}
}

// A sandbox is started ahead of time only in a quiet moment: while a
// command that began within the patience is in flight, Prestart waits
// (and gives up with its context); past the patience it goes ahead.
func TestPrestartWaitsForQuiet(t *testing.T) {
	e, cfg := newEngine(t, t.TempDir(), "msb-prestart-quiet")
	ctx := context.Background()
	busy := sandboxtest.ID(t, "quiet", "busy")
	startBox(t, e, busy, hostSpec(t))
	done := make(chan error, 1)
	go func() {
		_, err := e.Exec(ctx, busy, sandbox.ExecRequest{Command: "sleep", Args: []string{"3"}})
		done <- err
	}()
	t0 := time.Now()
	// Once the sleep runs, in a call cgroup of busy's set.
	for deadline := time.Now().Add(10 * time.Second); pidNamed(filepath.Join("/sys/fs/cgroup/pids", cfg.CgroupParent, busy.Key()), "sleep") == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the call's sleep did not start")
		}
	}
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if h, err := e.Prestart(short, warmSpec(t, 64, 1, "/workspace")); !errors.Is(err, context.DeadlineExceeded) {
		if err == nil {
			e.Discard(ctx, h)
		}
		t.Errorf("Prestart while a call was in flight: %v; want it to wait past its deadline", err)
	}
	h, err := e.Prestart(ctx, warmSpec(t, 64, 1, "/workspace"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Discard(context.Background(), h) })
	if since := time.Since(t0); since < linux.BackgroundPatience {
		t.Errorf("Prestart went ahead %v after the call began, within its patience", since)
	}
	select {
	case err := <-done: // (then nothing is left to receive below)
		t.Fatalf("the call ended (%v) before Prestart went ahead: it waited past its patience", err)
	default:
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// Every entry point that starts a sandbox or runs something in one counts
// for the quiet moment (quiet.go), also when it fails: Start and Adopt as
// starts; Exec, Spawn, RunCode and Stream as commands.
func TestCallsCounted(t *testing.T) {
	e, _, _ := newEngineToClose(t, "msb-counted")
	ctx := context.Background()
	missing := sandboxtest.ID(t, "counted", "missing")
	for _, c := range []struct {
		name  string
		start bool // counted as a start, else as a command
		call  func() error
	}{
		{"Start", true, func() error { return e.Start(ctx, missing) }},
		{"Adopt", true, func() error { return e.Adopt(ctx, "no-such-handle", missing, hostSpec(t)) }},
		{"Exec", false, func() error {
			_, err := e.Exec(ctx, missing, sandbox.ExecRequest{Command: "true"})
			return err
		}},
		{"Spawn", false, func() error {
			_, err := e.Spawn(ctx, missing, sandbox.ExecRequest{Command: "true"}, func(sandbox.Line) {})
			return err
		}},
		{"RunCode", false, func() error {
			_, err := e.RunCode(ctx, missing, sandbox.Python, "print(1)", time.Second)
			return err
		}},
		{"Stream", false, func() error {
			_, err := e.Stream(ctx, missing, sandbox.ExecSpec{Command: "true"}, true, func(sandbox.ExecEvent) {})
			return err
		}},
	} {
		start0, command0 := linux.LastCalls(e)
		if err := c.call(); err == nil {
			t.Errorf("%s of a missing sandbox succeeded", c.name)
		}
		start1, command1 := linux.LastCalls(e)
		if got := start1.After(start0); got != c.start {
			t.Errorf("%s: counted as a start: %v, want %v", c.name, got, c.start)
		}
		if got := command1.After(command0); got == c.start {
			t.Errorf("%s: counted as a command: %v, want %v", c.name, got, !c.start)
		}
	}
}
