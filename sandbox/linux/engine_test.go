package linux_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/msb-dev/msb/sandbox"
	"github.com/msb-dev/msb/sandbox/image"
	"github.com/msb-dev/msb/sandbox/linux"
	"github.com/msb-dev/msb/sandbox/linux/spawn"
	"github.com/msb-dev/msb/sandbox/sandboxtest"
	"golang.org/x/sys/unix"
)

// portalBin is the portal binary msb carries (sandbox/linux/portalbin),
// built as the README builds it: the init and portal of the tests'
// sandboxes, as in production. msbBin is msb itself, which plays the same
// roles when it carries no portal binary (TestMSBAsPortal). (This test
// binary can play them too, see TestMain, but it is linked with cgo,
// which takes the engine's slower path; TestCgoPortal runs that one.)
var msbBin, portalBin string

// TestMain lets the test binary play the msb binary's roles inside a
// sandbox, the init and the portal, for the tests that run sandboxes of
// this very binary, and builds msb for the others.
func TestMain(m *testing.M) {
	spawn.Reexec(os.Args, os.Getpid())
	if cfg := os.Getenv(crashServerEnv); cfg != "" {
		crashServer(cfg)
	}
	if cfg := os.Getenv(crashPoolEnv); cfg != "" {
		crashPoolServer(cfg)
	}
	if cfg := os.Getenv(crashReadyEnv); cfg != "" {
		crashReadyServer(cfg)
	}
	// Before any engine raises it (TestTimerSlack).
	slack, err := unix.PrctlRetInt(unix.PR_GET_TIMERSLACK, 0, 0, 0, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, "timer slack:", err)
		os.Exit(2)
	}
	startSlack = slack
	dir, err := os.MkdirTemp("", "msb-linux-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if msbBin, portalBin, err = sandboxtest.BuildMSB(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// crashEngine is the engine of a test binary run as a server to be
// killed (cfgJSON: its Config), and the host image's root.
func crashEngine(cfgJSON string) (*linux.Engine, sandbox.RootFS, error) {
	var cfg linux.Config
	if err := json.Unmarshal([]byte(cfgJSON), &cfg); err != nil {
		return nil, sandbox.RootFS{}, err
	}
	e, err := linux.New(cfg)
	if err != nil {
		return nil, sandbox.RootFS{}, err
	}
	root, err := image.Host()
	return e, root, err
}

// startCrashServer runs this test binary as a server to be killed (env
// names its role, cfg is its engine's Config) and returns it with the
// line it printed once ready.
func startCrashServer(t *testing.T, env string, cfg linux.Config) (*exec.Cmd, string) {
	t.Helper()
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	server := exec.Command(exe, "-test.run=^$") // this test binary
	server.Env = append(os.Environ(), env+"="+string(cfgJSON))
	server.Stderr = os.Stderr
	out, err := server.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := server.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Process.Kill(); server.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("crash server did not get ready: %q, %v", line, err)
	}
	return server, line
}

// recovered is the engine of cfg a server starts after another died, and
// what its Recover found; it is closed when the test ends.
func recovered(t *testing.T, cfg linux.Config) (*linux.Engine, []sandbox.Status) {
	t.Helper()
	e, err := linux.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	left, err := e.Recover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return e, left
}

// crashServerEnv makes the test binary a server that starts one sandbox
// and waits to be killed; its value is the engine's Config as JSON.
const crashServerEnv = "MSB_TEST_CRASH_SERVER"

var crashID, _ = sandbox.ParseID("crash", "victim")

func crashServer(cfgJSON string) {
	e, spec, fail := crashStart("crash server", cfgJSON)
	ctx := context.Background()
	spec.MemoryMiB, spec.DiskMiB = 128, 256
	if err := e.Create(ctx, crashID, spec); err != nil {
		fail(err)
	}
	if err := e.Start(ctx, crashID); err != nil {
		fail(err)
	}
	crashWait(e, crashID, fail, "ready")
}

// crashStart begins a test binary run as a server to be killed (role
// names it in errors): its engine (cfgJSON: its Config), a small spec of
// the host image, and how it fails.
func crashStart(role, cfgJSON string) (*linux.Engine, sandbox.Spec, func(error)) {
	fail := func(err error) { fmt.Fprintln(os.Stderr, role+":", err); os.Exit(1) }
	e, root, err := crashEngine(cfgJSON)
	if err != nil {
		fail(err)
	}
	return e, sandbox.Spec{Root: root, Env: image.HostEnv(), Workdir: "/workspace", MemoryMiB: 64, CPUs: 1, Pids: 64}, fail
}

// crashWait leaves a process in the sandbox id that outlives its portal
// unless its namespace dies with it, prints line (the test reads it once
// the server is ready) and waits to be killed.
func crashWait(e *linux.Engine, id sandbox.ID, fail func(error), line string) {
	if _, err := e.Exec(context.Background(), id, sandbox.ExecRequest{Command: "sh", Args: []string{"-c", "sleep 1000 &"}}); err != nil {
		fail(err)
	}
	fmt.Println(line)
	select {} // until killed
}

// TestServerCrash kills a server process that runs a sandbox: the
// sandbox's portal must see EOF and exit, taking the sandbox with it, and
// the next server must find the remains with Recover and delete them.
// With user namespaces, the next server holds the dead sandbox's id range
// (its host-wide lock) until it deletes it, so that no other sandbox gets
// the ids of files it left.
func TestServerCrash(t *testing.T) {
	t.Run("root", func(t *testing.T) { testServerCrash(t, false) })
	t.Run("userns", func(t *testing.T) { testServerCrash(t, true) })
}

func testServerCrash(t *testing.T, userns bool) {
	home := t.TempDir()
	cfg := testConfig(t, home, "msb-crash")
	cfg.UserNamespaces = userns
	server, line := startCrashServer(t, crashServerEnv, cfg)
	if line != "ready\n" {
		t.Fatalf("crash server did not get ready: %q", line)
	}
	next, err := linux.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { next.Close() })
	ctx := context.Background()
	if st, err := next.Inspect(ctx, crashID); err != nil || st.State != sandbox.StateRunning {
		t.Fatalf("sandbox of the live server: %+v, %v", st, err)
	}

	// The server's spawner, among its children.
	var spawners []int
	for _, pid := range sandboxtest.Children(server.Process.Pid) {
		if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); string(comm) == "msb-spawner\n" {
			spawners = append(spawners, pid)
		}
	}
	if len(spawners) != 1 {
		t.Fatalf("the crash server's spawners: %v, want one", spawners)
	}

	server.Process.Kill()
	server.Wait()
	waitGone(t, spawners[0]) // Pdeathsig
	t0 := time.Now()
	for {
		st, err := next.Inspect(ctx, crashID)
		if err != nil {
			t.Fatal(err)
		}
		if st.State == sandbox.StateStopped {
			break
		}
		if time.Since(t0) > 10*time.Second {
			t.Fatalf("sandbox still %s 10s after its server died", st.State)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("sandbox gone %v after its server was killed", time.Since(t0))
	// The init's death makes the kernel kill the rest of the sandbox; they
	// may take a moment to be reaped, but none may survive.
	// Every cgroup of the sandbox counts: its commands run in cgroups of
	// their own below it.
	procsIn := func(dir string) string { return strings.Join(treePids(dir), " ") }
	for _, hier := range []string{"pids", "cpu", "memory"} {
		dir := filepath.Join("/sys/fs/cgroup", hier, cfg.CgroupParent, crashID.Key())
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			procs := procsIn(dir)
			if procs == "" {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("processes left in the dead server's sandbox (%s) 10s after: %s", hier, procs)
				break
			}
		}
	}

	left, err := next.Recover(ctx)
	if err != nil || len(left) != 1 || left[0].ID != crashID {
		t.Fatalf("Recover = %+v, %v; want %s", left, err, crashID)
	}
	var slot string
	if userns {
		data, err := os.ReadFile(filepath.Join(cfg.SandboxDir, crashID.Key(), "slot"))
		if err != nil {
			t.Fatal(err)
		}
		// Between the crash and Recover the range was free: a server of
		// another test binary on this host may have taken it meanwhile
		// (its sandbox cannot reach the dead one's files). Free, it may
		// not be.
		if slot = string(data); !rangeLocked(t, slot) && !rangeLockedElsewhere(t, slot) {
			t.Errorf("the dead sandbox's id range %s is held by no server", slot)
		}
	}
	if err := next.Delete(ctx, crashID); err != nil {
		t.Fatal(err)
	}
	if userns && rangeLocked(t, slot) {
		t.Errorf("id range %s still held after the dead sandbox was deleted", slot)
	}
	if left := leftovers(t, cfg, crashID); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
	if left, err := next.Recover(ctx); err != nil || len(left) != 0 {
		t.Errorf("Recover after Delete = %+v, %v", left, err)
	}
}

func TestEngine(t *testing.T) { testEngine(t, false) }

// TestEngineUserns runs the conformance suite with every sandbox in a user
// namespace of its own.
func TestEngineUserns(t *testing.T) { testEngine(t, true) }

func testEngine(t *testing.T, userns bool) {
	if os.Geteuid() != 0 {
		t.Fatal("the Linux engine needs root: run the tests as root")
	}
	home := t.TempDir() // stands for the msb home: the canary goes here
	cfg := testConfig(t, home, "msb-test")
	cfg.UserNamespaces = userns
	root, err := image.Host()
	if err != nil {
		t.Fatal(err)
	}
	var eng *linux.Engine
	sandboxtest.Run(t, sandboxtest.Harness{
		NewEngine: func(t *testing.T) sandbox.Engine {
			e, err := linux.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { e.Close() })
			eng = e
			return e
		},
		Spec: func() sandbox.Spec {
			return sandbox.Spec{
				Root:      root,
				Env:       image.HostEnv(),
				Workdir:   "/workspace",
				MemoryMiB: 512,
				CPUs:      1,
				Pids:      1024,
				DiskMiB:   256,
			}
		},
		Home: home,
		WritableDir: func(id sandbox.ID) string {
			return linux.WritableDir(eng, id)
		},
		Leftovers: func(id sandbox.ID) []string {
			return leftovers(t, cfg, id)
		},
		HandleLeftovers: func(handle string) []string {
			return leftoversOf(t, cfg, handle)
		},
	})
}

// leftovers lists what the host still holds of a sandbox: its directories,
// any mount under them, its cgroups.
func leftovers(t *testing.T, cfg linux.Config, id sandbox.ID) []string {
	return leftoversOf(t, cfg, id.Key())
}

// leftoversOf is leftovers of the sandbox whose directories and cgroups
// are named name: its key, or its handle in a pool.
func leftoversOf(t *testing.T, cfg linux.Config, name string) []string {
	var left []string
	dirs := []string{filepath.Join(cfg.SandboxDir, name), filepath.Join(cfg.StateDir, name)}
	for _, d := range dirs {
		if _, err := os.Lstat(d); err == nil {
			left = append(left, d)
		}
	}
	f, err := os.Open("/proc/thread-self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && strings.HasPrefix(fields[4]+"/", dirs[0]+"/") {
			left = append(left, "mount "+fields[4])
		}
	}
	cgs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/*", cfg.CgroupParent, name))
	return append(left, cgs...)
}

// testConfig returns the configuration of an engine keeping its state in
// home, running the portal binary as its sandboxes' init, with a cgroup
// parent of its own (prefix and the test's pid) that is removed when the
// test ends.
func testConfig(t testing.TB, home, prefix string) linux.Config {
	t.Helper()
	cfg := linux.Config{
		StateDir:     filepath.Join(home, "run", "engine"),
		SandboxDir:   filepath.Join(home, "sandboxes"),
		PortalBinary: portalBin,
		CgroupParent: prefix + "-" + strconv.Itoa(os.Getpid()),
	}
	t.Cleanup(func() { removeCgroupParent(t, cfg.CgroupParent) })
	return cfg
}

func removeCgroupParent(t testing.TB, parent string) {
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/*", parent))
	for _, d := range dirs {
		if err := os.Remove(d); err != nil {
			t.Errorf("cgroup parent left: %v", err)
		}
	}
}

// rangeLocked reports whether this process holds the host-wide flock of
// id range slot, in /proc/locks ("1: FLOCK ADVISORY WRITE <pid>
// <maj>:<min>:<inode> 0 EOF"); other tests' servers may take the range as
// soon as it is free.
func rangeLocked(t *testing.T, slot string) bool {
	t.Helper()
	return rangeLockHolder(t, slot) == os.Getpid()
}

// rangeLockedElsewhere reports whether another process holds the lock of
// id range slot.
func rangeLockedElsewhere(t *testing.T, slot string) bool {
	t.Helper()
	pid := rangeLockHolder(t, slot)
	return pid != 0 && pid != os.Getpid()
}

// rangeLockHolder returns the pid that holds the host-wide flock of id
// range slot, or 0.
func rangeLockHolder(t *testing.T, slot string) int {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join("/run/msb/id-ranges", slot), &st); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile("/proc/locks")
	if err != nil {
		t.Fatal(err)
	}
	id := fmt.Sprintf("%02x:%02x:%d", unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) >= 6 && f[1] == "FLOCK" && f[5] == id {
			pid, _ := strconv.Atoi(f[4])
			return pid
		}
	}
	return 0
}

// Two servers of different homes on one host never give their sandboxes
// the same host id range: a range in use is locked host-wide, and free
// again once its sandbox is deleted.
func TestIDRangesAreHostWide(t *testing.T) {
	root, err := image.Host()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	spec := sandbox.Spec{Root: root, Workdir: "/", MemoryMiB: 64, CPUs: 1, Pids: 64}
	slotOf := func(cfg linux.Config, id sandbox.ID) string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(cfg.SandboxDir, id.Key(), "slot"))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	var cfgs []linux.Config
	var engines []*linux.Engine
	for _, prefix := range []string{"msb-idA", "msb-idB"} {
		cfg := testConfig(t, t.TempDir(), prefix)
		cfg.UserNamespaces = true
		e, err := linux.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.Close() })
		cfgs, engines = append(cfgs, cfg), append(engines, e)
	}
	seen := map[string]string{}
	for i, e := range engines {
		for _, name := range []string{"one", "two"} {
			id := sandboxtest.ID(t, "team", fmt.Sprintf("%s%d", name, i))
			if err := e.Create(ctx, id, spec); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { e.Delete(ctx, id) })
			s := slotOf(cfgs[i], id)
			if other, ok := seen[s]; ok {
				t.Fatalf("%s and %s have the same id range %s", other, id, s)
			}
			seen[s] = id.String()
		}
	}
	// The lock of a range is held while its sandbox exists, and released
	// when it is deleted.
	first := sandboxtest.ID(t, "team", "one0")
	freed := slotOf(cfgs[0], first)
	locked := func() bool { return rangeLocked(t, freed) }
	if !locked() {
		t.Fatalf("id range %s of a live sandbox is not locked", freed)
	}
	if err := engines[0].Delete(ctx, first); err != nil {
		t.Fatal(err)
	}
	if locked() {
		t.Fatalf("id range %s is still locked after its sandbox was deleted", freed)
	}
}
