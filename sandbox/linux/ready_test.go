package linux_test

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox"
	"github.com/msb-dev/msb/sandbox/linux"
	"github.com/msb-dev/msb/sandbox/sandboxtest"
)

// waitingInits returns the inits waiting spawned ahead in the engine of
// cfg, by cgroup set name ("init-<owner>-<n>"), with the pid of each
// (from the pids hierarchy).
func waitingInits(t *testing.T, cfg linux.Config) map[string]int {
	t.Helper()
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/pids", cfg.CgroupParent, "init-*"))
	inits := map[string]int{}
	for _, d := range dirs {
		data, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		if err != nil {
			continue // taken meanwhile
		}
		// The init is PID 1 of its namespace ("NSpid: <host pid> 1");
		// the spawner passes through the cgroups while it clones.
		for _, f := range strings.Fields(string(data)) {
			status, _ := os.ReadFile("/proc/" + f + "/status")
			if strings.Contains(string(status), "\nNSpid:\t"+f+"\t1\n") {
				inits[filepath.Base(d)], _ = strconv.Atoi(f)
			}
		}
	}
	return inits
}

// waitInits waits until n inits wait, and returns them.
func waitInits(t *testing.T, cfg linux.Config, n int) map[string]int {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		inits := waitingInits(t, cfg)
		if len(inits) == n {
			return inits
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d inits wait spawned ahead, want %d: %v", len(inits), n, inits)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitReadyInits waits until n inits wait in the engine e of cfg, both as
// processes (waitInits) and on the engine's list (a process shows before
// the refill has put it there, and a start takes only from the list), and
// returns them.
func waitReadyInits(t *testing.T, e *linux.Engine, cfg linux.Config, n int) map[string]int {
	t.Helper()
	inits := waitInits(t, cfg, n)
	for deadline := time.Now().Add(10 * time.Second); linux.ReadyInits(e) != n; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d inits on the engine's list, want %d", linux.ReadyInits(e), n)
		}
	}
	return inits
}

// inspectPid is the host pid of the sandbox's init.
func inspectPid(t *testing.T, e *linux.Engine, id sandbox.ID) int {
	t.Helper()
	st, err := e.Inspect(context.Background(), id)
	if err != nil || st.Pid <= 0 {
		t.Fatalf("Inspect %s = %+v, %v", id, st, err)
	}
	return st.Pid
}

// A first start takes the oldest init spawned ahead, which becomes that
// sandbox and no other: its cgroups carry the sandbox's name and limits,
// its ids are recorded as the sandbox's, and the sandbox sees only its own
// processes and files. The engine spawns another in its place; a restart
// spawns its own; Close leaves no init and no cgroup behind.
func TestReadyInits(t *testing.T) {
	t.Run("root", func(t *testing.T) { testReadyInits(t, false) })
	t.Run("userns", func(t *testing.T) { testReadyInits(t, true) })
}

func testReadyInits(t *testing.T, userns bool) {
	e, cfg, closeEngine := newEngineToClose(t, "msb-ready", func(c *linux.Config) { c.UserNamespaces, c.ReadyInits = userns, 2 })
	ctx := context.Background()
	if n := len(waitingInits(t, cfg)); n != 0 {
		t.Fatalf("%d inits spawned before the first start (they must wait for Recover)", n)
	}
	// The first start is cold and starts the refill.
	first, _ := sandbox.ParseID("ready", "first")
	startBox(t, e, first, hostSpec(t))
	inits := waitReadyInits(t, e, cfg, 2)

	oldest := oldestInit(inits)
	// While it waits, before anything of a sandbox is known, it has
	// mounted what every sandbox gets from the kernel, masked, in a stage
	// of its own mount namespace.
	want := map[string]string{"/proc": "proc", "/dev": "tmpfs", "/dev/pts": "devpts", "/sys": "sysfs",
		"/sys/fs/cgroup/memory": "cgroup", "/proc/sys": "proc", "/sys/firmware": "tmpfs",
		"/proc/keys": "tmpfs"} // /dev/null over it: made in the stage's /dev, or the host's bound there
	if userns {
		want["/proc/keys"] = "devtmpfs"
	}
	staged := map[string]string{}
	done := func() bool {
		for mp, fstype := range want {
			if staged[mp] != fstype {
				return false
			}
		}
		return true
	}
	for deadline := time.Now().Add(10 * time.Second); !done() && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		for _, l := range strings.Split(readFile(t, fmt.Sprintf("/proc/%d/mountinfo", inits[oldest])), "\n") {
			if f := strings.Fields(l); len(f) > 8 && strings.Contains(f[4], "stage/") {
				staged[f[4][strings.Index(f[4], "stage/")+len("stage"):]] = f[slices.Index(f, "-")+1]
			}
		}
	}
	if !done() {
		t.Errorf("the waiting init has staged %v, want at least %v", staged, want)
	}
	id, _ := sandbox.ParseID("ready", "taken")
	spec := hostSpec(t)
	spec.MemoryMiB, spec.CPUs, spec.Hostname = 300, 2, "taken-host"
	spec.Env = append(spec.Env, "READY_TEST=yes")
	if err := e.Create(ctx, id, spec); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Delete(context.Background(), id) })
	slotFile := filepath.Join(cfg.SandboxDir, id.Key(), "slot")
	var created string // the slot Create gave it
	if userns {
		created = strings.TrimSpace(readFile(t, slotFile))
	}
	if err := e.Start(ctx, id); err != nil {
		t.Fatal(err)
	}
	pid := inspectPid(t, e, id)
	if pid != inits[oldest] {
		t.Fatalf("the start's init is pid %d; the oldest init waiting was %d (%v)", pid, inits[oldest], inits)
	}
	if left := leftoversOf(t, cfg, oldest); len(left) > 0 {
		t.Errorf("the taken init's cgroups keep its waiting name: %v", left)
	}
	cg := filepath.Join("/sys/fs/cgroup/cpu", cfg.CgroupParent, id.Key())
	if got := strings.TrimSpace(readFile(t, cg+"/cpu.shares")); got != "1024" {
		t.Errorf("the taken init's CPU weight is %s, want a sandbox's 1024", got)
	}
	if got := strings.TrimSpace(readFile(t, cg+"/cgroup.procs")); !strings.Contains("\n"+got+"\n", fmt.Sprintf("\n%d\n", pid)) {
		t.Errorf("the sandbox's cgroup holds %q, not its init %d", got, pid)
	}
	got := mustRun(t, e, id, `cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us; hostname; echo $READY_TEST; pwd
ls /proc | grep -c '^[0-9]'`)
	if want := fmt.Sprintf("%d\n200000\ntaken-host\nyes\n/workspace\n", 300<<20); !strings.HasPrefix(got, want) {
		t.Errorf("inside the sandbox that took a ready init:\n%s\nwant it to start with\n%s", got, want)
	}
	if got := mustRun(t, e, id, "grep -c stage /proc/self/mountinfo || true"); got != "0\n" {
		t.Errorf("the sandbox's mount table shows %s mounts of the stage", got)
	}
	// The portal and this command's shell and ls, grep: nothing else.
	if n, _ := strconv.Atoi(strings.TrimSpace(got[strings.LastIndex(strings.TrimSpace(got), "\n")+1:])); n < 2 || n > 5 {
		t.Errorf("the sandbox sees %d processes:\n%s", n, got)
	}
	if userns {
		slot := strings.TrimSpace(readFile(t, slotFile))
		if slot == created {
			t.Errorf("the sandbox kept the slot %s Create gave it", slot)
		}
		n, _ := strconv.Atoi(slot)
		uidMap := strings.Fields(readFile(t, fmt.Sprintf("/proc/%d/uid_map", pid)))
		if len(uidMap) < 2 || uidMap[1] != strconv.Itoa(100000+n*65536) {
			t.Errorf("the sandbox records slot %s; its init's uid_map is %v", slot, uidMap)
		}
		if !rangeLocked(t, slot) {
			t.Errorf("the sandbox's id range %s is not locked", slot)
		}
	}

	// Its files and processes are its own: the next sandbox, from the
	// other waiting init, sees neither.
	mustRun(t, e, id, "echo secret > /workspace/mine; sleep 1000 >/dev/null 2>&1 &")
	other, _ := sandbox.ParseID("ready", "other")
	otherPid := startBox(t, e, other, hostSpec(t))
	if _, waited := inits[filepath.Base(func() string {
		for h, p := range inits {
			if p == otherPid {
				return h
			}
		}
		return ""
	}())]; !waited {
		t.Errorf("the second start did not take the other waiting init (pid %d, waiting %v)", otherPid, inits)
	}
	if got := mustRun(t, e, other, "ls /workspace; cat /proc/[0-9]*/cmdline | tr '\\0' ' '"); strings.Contains(got, "mine") || strings.Contains(got, "sleep 1000") || !strings.Contains(got, "cat /proc/") {
		t.Errorf("a sandbox sees another's file or process, or not its own:\n%s", got)
	}

	// Refilled: two wait again, none of them a taken one.
	again := waitReadyInits(t, e, cfg, 2)
	for h, p := range again {
		if p == pid || p == otherPid || inits[h] != 0 {
			t.Errorf("a taken init waits again: %s pid %d", h, p)
		}
	}
	if userns && linux.SlotInUse(e, created) {
		// Free when the sandbox took the init's, but a refill may have
		// taken it since. (Not the host-wide lock: other tests' engines
		// in this process may have taken the range since.)
		n, _ := strconv.Atoi(created)
		refilled := false
		for _, p := range again {
			f := strings.Fields(readFile(t, fmt.Sprintf("/proc/%d/uid_map", p)))
			refilled = refilled || len(f) > 1 && f[1] == strconv.Itoa(100000+n*65536)
		}
		if !refilled {
			t.Errorf("slot %s, which the sandbox gave up for the init's, is still locked, by no waiting init", created)
		}
	}
	// A sandbox started for the warm pool spawns its own.
	h, err := e.Prestart(ctx, warmSpec(t, 64, 1, "/workspace"))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Discard(ctx, h); err != nil {
		t.Fatal(err)
	}
	if now := waitingInits(t, cfg); !maps.Equal(now, again) {
		t.Errorf("a sandbox of the warm pool took an init spawned ahead: %v before, %v after", again, now)
	}
	// A restart spawns its own init.
	if err := e.Stop(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := e.Start(ctx, id); err != nil {
		t.Fatal(err)
	}
	restarted := inspectPid(t, e, id)
	for _, p := range again {
		if p == restarted {
			t.Error("a restart took an init spawned ahead")
		}
	}
	if got := mustRun(t, e, id, "cat /workspace/mine"); got != "secret\n" {
		t.Errorf("the restarted sandbox's file: %q", got)
	}

	// Close: the waiting inits are killed and their cgroups removed.
	for _, s := range []sandbox.ID{first, id, other} {
		if err := e.Delete(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	closeEngine()
	for h, p := range again {
		waitGone(t, p)
		if left := leftoversOf(t, cfg, h); len(left) > 0 {
			t.Errorf("init %s left after Close: %v", h, left)
		}
	}
}

// An init that dies while it waits is never handed to a sandbox: the
// start takes the next one, or one spawned since, or spawns its own.
func TestReadyInitDied(t *testing.T) {
	logs := &sandboxtest.SyncBuffer{}
	e, cfg, _ := newEngineToClose(t, "msb-ready-died", func(c *linux.Config) {
		c.ReadyInits = 2
		c.Log = slog.New(slog.NewTextHandler(logs, nil))
	})
	kill := func(pids ...int) {
		t.Helper()
		for _, pid := range pids {
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			waitGone(t, pid)
		}
	}
	first, _ := sandbox.ParseID("ready", "first")
	startBox(t, e, first, hostSpec(t))

	// The oldest dead: the start takes the next.
	inits := waitReadyInits(t, e, cfg, 2)
	oldest := oldestInit(inits)
	kill(inits[oldest])
	next, _ := sandbox.ParseID("ready", "next")
	pid := startBox(t, e, next, hostSpec(t))
	for h, p := range inits {
		if h != oldest && p != pid {
			t.Fatalf("the start got pid %d, not the init that still waited (%d); the dead one was %d", pid, p, inits[oldest])
		}
	}
	if !strings.Contains(logs.String(), "an init spawned ahead exited while it waited") {
		t.Errorf("the dead init is not in the engine's log:\n%s", logs)
	}

	// All dead: the start gets none of them (it spawns its own, or takes
	// one the refill has made since).
	inits = waitReadyInits(t, e, cfg, 2)
	var pids []int
	for _, p := range inits {
		pids = append(pids, p)
	}
	kill(pids...)
	cold, _ := sandbox.ParseID("ready", "cold")
	pid = startBox(t, e, cold, hostSpec(t))
	if slices.Contains(pids, pid) {
		t.Fatal("a start got an init that had died")
	}
	for _, id := range []sandbox.ID{next, cold} {
		if got := mustRun(t, e, id, "echo ok"); got != "ok\n" {
			t.Errorf("%s after a dead init: %q", id, got)
		}
	}
	waitReadyInits(t, e, cfg, 2) // the dead ones' places are filled
}

// oldestInit is the handle of the init that has waited longest among
// inits: the lowest number, init-<owner>-<n>.
func oldestInit(inits map[string]int) string {
	n := func(h string) int { i, _ := strconv.Atoi(h[strings.LastIndex(h, "-")+1:]); return i }
	oldest := ""
	for h := range inits {
		if oldest == "" || n(h) < n(oldest) {
			oldest = h
		}
	}
	return oldest
}

// crashReadyEnv makes the test binary a server with inits waiting spawned
// ahead, one of them taken by a sandbox, that waits to be killed; its
// value is the engine's Config as JSON.
const crashReadyEnv = "MSB_TEST_CRASH_READY"

var crashReadyID, _ = sandbox.ParseID("crash", "ready")

func crashReadyServer(cfgJSON string) {
	e, spec, fail := crashStart("crash ready server", cfgJSON)
	ctx := context.Background()
	warmup, _ := sandbox.ParseID("crash", "warmup")
	for _, id := range []sandbox.ID{warmup, crashReadyID} {
		if err := e.Create(ctx, id, spec); err != nil {
			fail(err)
		}
		if err := e.Start(ctx, id); err != nil {
			fail(err)
		}
		if id == warmup { // then wait for the inits spawned ahead
			for deadline := time.Now().Add(20 * time.Second); linux.ReadyInits(e) < 2; time.Sleep(10 * time.Millisecond) {
				if time.Now().After(deadline) {
					fail(fmt.Errorf("no inits spawned ahead"))
				}
			}
		}
	}
	crashWait(e, crashReadyID, fail, "ready")
}

// A server killed with inits waiting and one taken: the waiting ones exit
// (their socket to the server is gone), the taken one's sandbox dies with
// its portal, and the next engine's Recover removes their cgroups.
func TestReadyInitsAfterCrash(t *testing.T) {
	cfg := testConfig(t, t.TempDir(), "msb-ready-crash")
	cfg.UserNamespaces, cfg.ReadyInits = true, 2
	server, _ := startCrashServer(t, crashReadyEnv, cfg)
	inits := waitInits(t, cfg, 2)
	server.Process.Kill()
	server.Wait()
	for _, pid := range inits {
		waitGone(t, pid) // its socket to the server is gone
	}
	next, left := recovered(t, cfg)
	if len(left) != 2 {
		t.Errorf("Recover found %+v, want the two sandboxes", left)
	}
	for h := range inits {
		if left := leftoversOf(t, cfg, h); len(left) > 0 {
			t.Errorf("waiting init %s left after Recover: %v", h, left)
		}
	}
	for _, st := range left {
		if err := next.Delete(context.Background(), st.ID); err != nil {
			t.Fatal(err)
		}
		if l := leftovers(t, cfg, st.ID); len(l) > 0 {
			t.Errorf("%s left after Delete: %v", st.ID, l)
		}
	}
	if n := len(waitingInits(t, cfg)); n != 0 {
		t.Errorf("%d inits wait after Recover, before any start", n)
	}
}

// Sandboxes whose namespace is named like the handles of waiting inits
// and of the pool's sandboxes are no leftovers: Recover keeps them.
func TestRecoverKeepsLookalikes(t *testing.T) {
	e, cfg := newEngine(t, t.TempDir(), "msb-lookalike")
	var ids []sandbox.ID
	for _, ns := range []string{"init-ci", "warm-ci", "gone-ci"} {
		id, err := sandbox.ParseID(ns, "x")
		if err != nil {
			t.Fatal(err)
		}
		startBox(t, e, id, hostSpec(t))
		ids = append(ids, id)
	}
	if _, err := e.Recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if got := mustRun(t, e, id, "echo alive"); got != "alive\n" {
			t.Errorf("%s after Recover: %q", id, got)
		}
		if len(leftovers(t, cfg, id)) == 0 {
			t.Errorf("Recover removed the directory and cgroups of %s", id)
		}
	}
}

// Delete holds a sandbox's mount namespace past the kill, so that its
// init's exit does not unmount the sandbox's mounts, and lets go of it
// afterwards: once what Delete left to the background is done, no
// descriptor of the server refers to it.
func TestDeleteLetsGoOfMounts(t *testing.T) {
	e, _ := newEngine(t, t.TempDir(), "msb-delete-mounts")
	id, _ := sandbox.ParseID("delete", "mounts")
	spec := hostSpec(t)
	spec.DiskMiB = 64
	ctx := context.Background()
	if err := e.Create(ctx, id, spec); err != nil {
		t.Fatal(err)
	}
	if err := e.Start(ctx, id); err != nil {
		t.Fatal(err)
	}
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", inspectPid(t, e, id)))
	if err != nil {
		t.Fatal(err)
	}
	self, _ := os.Readlink("/proc/self/ns/mnt")
	if ns == self {
		t.Fatalf("the sandbox shares the server's mount namespace %s", ns)
	}
	held := func() []string {
		var fds []string
		ents, _ := os.ReadDir("/proc/self/fd")
		for _, en := range ents {
			if l, err := os.Readlink("/proc/self/fd/" + en.Name()); err == nil && l == ns {
				fds = append(fds, en.Name())
			}
		}
		return fds
	}
	if fds := held(); len(fds) > 0 {
		t.Errorf("the server holds the running sandbox's mount namespace %s (descriptors %v)", ns, fds)
	}
	if err := e.Delete(ctx, id); err != nil {
		t.Fatal(err)
	}
	linux.WaitDeleted(e)
	if fds := held(); len(fds) > 0 {
		t.Errorf("the deleted sandbox's mount namespace %s is still held (descriptors %v)", ns, fds)
	}
	if _, err := e.Inspect(ctx, id); err == nil {
		t.Error("the deleted sandbox is still known")
	}
}

// Delete returns once a sandbox's processes are killed and its name is
// free, not once the kernel has torn them down: a process still dying
// is in cgroups renamed aside ("gone-<owner>-<n>", under the server's
// parent, so its ceilings still count it) at the least CPU weight, the
// same name starts again at once, and the background part of the delete
// removes the renamed cgroups once the processes are gone, and only then
// frees their id range. The sandbox is frozen (cgroup v1 freezer) across
// the Delete, so that its processes cannot die before the checks: a
// frozen process acts on SIGKILL only once thawed.
func TestDeleteAside(t *testing.T) {
	e, cfg, _ := newEngineToClose(t, "msb-delete-aside", func(c *linux.Config) {
		c.UserNamespaces = true
		c.ReadyInits = 0 // none takes the range freed
	})
	id, _ := sandbox.ParseID("delete", "aside")
	startBox(t, e, id, hostSpec(t))
	mustRun(t, e, id, "sleep 1000 >/dev/null 2>&1 &")
	sleeper := pidNamed(filepath.Join("/sys/fs/cgroup/pids", cfg.CgroupParent, id.Key()), "sleep")
	if sleeper == 0 {
		t.Fatal("no sleep among the sandbox's processes")
	}
	freeze(t, filepath.Join(cfg.CgroupParent, id.Key()), "FROZEN")
	slot := readFile(t, filepath.Join(cfg.SandboxDir, id.Key(), "slot"))
	if err := e.Delete(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	cg, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", sleeper))
	if err != nil {
		t.Fatalf("the frozen sandbox's process is gone as Delete returns: %v", err)
	}
	aside := ""
	for _, l := range strings.Split(strings.TrimSpace(string(cg)), "\n") {
		f := strings.SplitN(l, ":", 3)
		if len(f) < 3 || f[1] == "" {
			continue
		}
		parts := strings.Split(f[2], "/") // "", parent, set, ...
		if len(parts) < 3 || parts[1] != cfg.CgroupParent || !strings.HasPrefix(parts[2], "gone-") {
			t.Fatalf("a process of the deleted sandbox is in cgroup %s, not one set aside under %s", l, cfg.CgroupParent)
		}
		aside = filepath.Join(parts[1], parts[2])
	}
	if w := strings.TrimSpace(readFile(t, filepath.Join("/sys/fs/cgroup/cpu", aside, "cpu.shares"))); w != "2" {
		t.Errorf("the deleted sandbox's processes die at CPU weight %s, want 2", w)
	}
	if !linux.SlotInUse(e, slot) {
		t.Errorf("id range %s is free while the deleted sandbox's processes are still there", slot)
	}
	if left := leftovers(t, cfg, id); len(left) > 0 {
		t.Errorf("the deleted sandbox's name still holds %v", left)
	}
	startBox(t, e, id, hostSpec(t))
	if slices.Contains(treePids(filepath.Join("/sys/fs/cgroup/pids", cfg.CgroupParent, id.Key())), strconv.Itoa(sleeper)) {
		t.Errorf("the dying sandbox's sleep %d is in the cgroups of the new sandbox of the same name", sleeper)
	}
	if !slices.Contains(treePids(filepath.Join("/sys/fs/cgroup/pids", aside)), strconv.Itoa(sleeper)) {
		t.Errorf("the dying sandbox's sleep %d left its cgroups set aside (%s) when the name started again", sleeper, aside)
	}
	if readFile(t, filepath.Join(cfg.SandboxDir, id.Key(), "slot")) == slot {
		t.Fatalf("the new sandbox has the id range %s of the dying one", slot)
	}
	freeze(t, aside, "THAWED")
	linux.WaitDeleted(e)
	waitGone(t, sleeper)
	if left, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/*", cfg.CgroupParent, "gone-*")); len(left) > 0 {
		t.Errorf("cgroups set aside are left once the delete is done: %v", left)
	}
	if linux.SlotInUse(e, slot) {
		t.Errorf("id range %s of the deleted sandbox is still held once its processes are gone", slot)
	}
}

// A server that died while deleted sandboxes' processes were dying left
// their cgroups set aside: the next server's Recover kills what is still
// in them and removes them.
func TestRecoverRemovesAside(t *testing.T) {
	e, cfg := newEngine(t, t.TempDir(), "msb-recover-aside")
	aside := "gone-1-00000000-1"             // another server's: this one's owner is its own pid and token
	sleeper := exec.Command("sleep", "1000") // the init of a PID namespace, as a sandbox's is
	sleeper.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID}
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	defer sleeper.Process.Kill()
	go sleeper.Wait()
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/*", cfg.CgroupParent))
	for _, d := range dirs {
		if err := os.Mkdir(filepath.Join(d, aside), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, aside, "cgroup.procs"), []byte(strconv.Itoa(sleeper.Process.Pid)), 0); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.Recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitGone(t, sleeper.Process.Pid)
	if left := leftoversOf(t, cfg, aside); len(left) > 0 {
		t.Errorf("cgroups set aside by a dead server left after Recover: %v", left)
	}
}

// The spawn of an init ahead is admitted under total_pids only with room
// for the starts under way and the other spawns, but a start never counts
// the spawns under way: a start must not fail because an init was being
// spawned at that moment.
func TestRefillClaims(t *testing.T) {
	e, _, _ := newEngineToClose(t, "msb-refill-claims", func(c *linux.Config) {
		c.Ceilings.Pids = 100
		c.ReadyInits = 0
	})
	refill, err := linux.HoldPids(e, 64, true)
	if err != nil {
		t.Fatalf("a spawn ahead with nothing else under way: %v", err)
	}
	start, err := linux.HoldPids(e, 64, false)
	if err != nil {
		t.Fatalf("a start while an init is spawned ahead: %v", err)
	}
	if _, err := linux.HoldPids(e, 30, true); !errdefs.Is(err, errdefs.Exhausted) {
		t.Errorf("a second spawn ahead past what the start and the first may take: %v, want exhausted", err)
	}
	if _, err := linux.HoldPids(e, 40, false); !errdefs.Is(err, errdefs.Exhausted) {
		t.Errorf("a second start past what the first may take: %v, want exhausted", err)
	}
	refill()
	start()
	if release, err := linux.HoldPids(e, 100, false); err != nil {
		t.Errorf("a start of the whole ceiling once the claims are over: %v", err)
	} else {
		release()
	}
}

// oneReadyInit returns an engine of one init spawned ahead, waiting
// after the cold start of sandbox first (which started the refill), and
// first's id.
func oneReadyInit(t *testing.T, cgroupPrefix string) (*linux.Engine, linux.Config, sandbox.ID) {
	e, cfg, _ := newEngineToClose(t, cgroupPrefix, func(c *linux.Config) { c.ReadyInits = 1 })
	first, _ := sandbox.ParseID("ready", "first")
	startBox(t, e, first, hostSpec(t))
	waitReadyInits(t, e, cfg, 1)
	return e, cfg, first
}

// The refill of inits spawned ahead waits while a call of the engine is
// in flight (a sandbox's first command, say), which an init spawned beside
// it would slow; after BackgroundPatience it spawns all the same.
func TestRefillWaitsForQuiet(t *testing.T) {
	e, cfg, busy := oneReadyInit(t, "msb-refill-quiet")
	ctx := context.Background()

	// A call in flight for longer than the patience, which counts from
	// here at the latest.
	call := 3 * linux.BackgroundPatience
	t0 := time.Now()
	done := make(chan error, 1)
	go func() {
		_, err := e.Exec(ctx, busy, sandbox.ExecRequest{Command: "sleep", Args: []string{strconv.Itoa(int(call / time.Second))}})
		done <- err
	}()
	// Once the sleep runs, in a call cgroup of busy's set.
	for deadline := time.Now().Add(10 * time.Second); pidNamed(filepath.Join("/sys/fs/cgroup/pids", cfg.CgroupParent, busy.Key()), "sleep") == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the call's sleep did not start")
		}
	}
	took, _ := sandbox.ParseID("quiet", "took")
	startBox(t, e, took, hostSpec(t)) // takes the waiting init
	if n := linux.ReadyInits(e); n != 0 {
		t.Fatalf("%d inits wait right after a start took the only one", n)
	}
	waitInits(t, cfg, 1)
	// The call began after t0: no init can wait before its patience ran
	// out, however long the set-up above took.
	if since := time.Since(t0); since < linux.BackgroundPatience {
		t.Errorf("an init was spawned ahead %v after the call began, within its patience", since)
	}
	select {
	case err := <-done: // (then nothing is left to receive below)
		t.Fatalf("the call ended (%v) before the refill gave up waiting for it", err)
	default:
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// In a burst of starts, each right after the one before, the refill
// spawns at once: that is what inits spawned ahead are for.
func TestRefillInBurst(t *testing.T) {
	e, _, _ := oneReadyInit(t, "msb-refill-burst")
	ctx := context.Background()
	// Created first, so that nothing but starts comes between them.
	ids := make([]sandbox.ID, 60)
	for i := range ids {
		ids[i], _ = sandbox.ParseID("burst", "b"+strconv.Itoa(i))
		if err := e.Create(ctx, ids[i], hostSpec(t)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.Delete(context.Background(), ids[i]) })
	}
	t0 := time.Now()
	for i := 0; linux.ReadyTaken(e) < 2; i++ {
		if i == len(ids) || time.Since(t0) > linux.BackgroundPatience*3/4 {
			t.Fatalf("%d starts in a burst took %d inits spawned ahead: the refill waited as if for a quiet moment", i, linux.ReadyTaken(e))
		}
		if err := e.Start(ctx, ids[i]); err != nil {
			t.Fatal(err)
		}
	}
}

// freeze sets the cgroup v1 freezer state of the cgroup set (a path under
// the hierarchy, "<parent>/<set>"); a freeze waits until the kernel has
// frozen it, a thaw returns at once (what was killed while frozen dies
// then, and its set may be removed under a wait). What it freezes is thawed when the test ends, whatever its set is called by
// then, so that a failed test leaves no process frozen.
func freeze(t *testing.T, set, state string) {
	t.Helper()
	if state == "FROZEN" {
		t.Cleanup(func() {
			dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/freezer", filepath.Dir(set), "*", "freezer.state"))
			for _, f := range dirs {
				os.WriteFile(f, []byte("THAWED"), 0)
			}
		})
	}
	f := filepath.Join("/sys/fs/cgroup/freezer", set, "freezer.state")
	if err := os.WriteFile(f, []byte(state), 0); err != nil {
		t.Fatal(err)
	}
	if state == "THAWED" {
		return
	}
	for deadline := time.Now().Add(10 * time.Second); strings.TrimSpace(readFile(t, f)) != state; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s is not %s", f, state)
		}
	}
}

// The processes of a deleted sandbox count under total_pids until they
// are gone; a start that only they keep out waits for them, and one that
// would not fit anyway is refused at once. The deleted sandbox is frozen
// so that its processes stay until the test thaws them.
func TestStartWaitsForDying(t *testing.T) {
	e, cfg, _ := newEngineToClose(t, "msb-wait-dying", func(c *linux.Config) {
		c.Ceilings.Pids = 100
		c.ReadyInits = 0
	})
	id, _ := sandbox.ParseID("wait", "dying")
	spec := hostSpec(t)
	spec.Pids = 40
	startBox(t, e, id, spec)
	mustRun(t, e, id, "for i in $(seq 20); do sleep 1000 >/dev/null 2>&1 & done")
	freeze(t, filepath.Join(cfg.CgroupParent, id.Key()), "FROZEN")
	if err := e.Delete(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	held, _ := strconv.Atoi(strings.TrimSpace(readFile(t, filepath.Join("/sys/fs/cgroup/pids", cfg.CgroupParent, "pids.current"))))
	if held < 21 {
		t.Fatalf("the deleted sandbox's processes hold %d pids of the parent, want its 20 sleeps and more", held)
	}
	t0 := time.Now()
	if _, err := linux.HoldPids(e, 101, false); !errdefs.Is(err, errdefs.Exhausted) || time.Since(t0) > time.Second {
		t.Errorf("a start over the ceiling on its own: %v after %v, want exhausted at once", err, time.Since(t0))
	}
	claimed := make(chan error, 1)
	go func() {
		release, err := linux.HoldPids(e, 100-held+1, false)
		if err == nil {
			release()
		}
		claimed <- err
	}()
	select {
	case err := <-claimed:
		t.Fatalf("a start that only the dying processes keep out did not wait for them: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	var aside []string
	sets, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/freezer", cfg.CgroupParent, "gone-*"))
	for _, d := range sets {
		aside = append(aside, strings.TrimPrefix(d, "/sys/fs/cgroup/freezer/"))
	}
	if len(aside) != 1 {
		t.Fatalf("cgroups set aside: %v, want one", aside)
	}
	freeze(t, aside[0], "THAWED")
	if err := <-claimed; err != nil {
		t.Errorf("the start that waited for the dying processes: %v", err)
	}
}
