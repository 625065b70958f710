package linux_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox"
	"github.com/msb-dev/msb/sandbox/image"
	"github.com/msb-dev/msb/sandbox/linux"
	"github.com/msb-dev/msb/sandbox/sandboxtest"
)

// hostSpec is a sandbox of the host image.
func hostSpec(t *testing.T) sandbox.Spec {
	t.Helper()
	root, err := image.Host()
	if err != nil {
		t.Fatal(err)
	}
	return sandbox.Spec{Root: root, Env: image.HostEnv(), Workdir: "/workspace", MemoryMiB: 128, CPUs: 1, Pids: 128}
}

// startBox creates and starts a sandbox, deleting it when the test ends,
// and returns the host pid of its init.
func startBox(t *testing.T, e *linux.Engine, id sandbox.ID, spec sandbox.Spec) int {
	t.Helper()
	ctx := context.Background()
	if err := e.Create(ctx, id, spec); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.Delete(context.Background(), id); err != nil {
			t.Errorf("Delete %s: %v", id, err)
		}
	})
	if err := e.Start(ctx, id); err != nil {
		t.Fatal(err)
	}
	st, err := e.Inspect(ctx, id)
	if err != nil || st.Pid <= 0 {
		t.Fatalf("Inspect = %+v, %v", st, err)
	}
	return st.Pid
}

// mustRun runs a shell script in the sandbox and returns its stdout.
func mustRun(t *testing.T, e *linux.Engine, id sandbox.ID, script string) string {
	t.Helper()
	res, err := e.Exec(context.Background(), id, sandbox.ExecRequest{Command: "sh", Args: []string{"-c", script}})
	if err != nil {
		t.Fatal(err)
	}
	var out, all strings.Builder
	for _, l := range res.Output {
		if l.Stream == sandbox.Stdout {
			out.WriteString(l.Text + "\n")
		}
		all.WriteString(string(l.Stream) + ": " + l.Text + "\n")
	}
	if res.ExitCode != 0 {
		t.Fatalf("sh -c %q: exit %d\n%s", script, res.ExitCode, all.String())
	}
	return out.String()
}

// threadStatus reads fields of /proc/<pid>/task/<tid>/status for every
// thread of a process, on the host.
func threadStatus(t *testing.T, pid int, fields ...string) []map[string]string {
	t.Helper()
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]string
	for _, task := range tasks {
		f, err := os.Open(fmt.Sprintf("/proc/%d/task/%s/status", pid, task.Name()))
		if err != nil {
			continue // exited
		}
		m := map[string]string{"tid": task.Name()}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			k, v, _ := strings.Cut(sc.Text(), ":")
			for _, want := range fields {
				if k == want {
					m[k] = strings.TrimSpace(v)
				}
			}
		}
		f.Close()
		out = append(out, m)
	}
	if len(out) < 2 {
		t.Fatalf("the portal has %d threads; a Go program has several", len(out))
	}
	return out
}

const dockerCapsHex = "00000000a80425fb"

// checkCredentials checks the credentials of every thread of the portal
// (pid, on the host) and of a command it runs: Docker's capabilities for
// root, none for another user, the bounding set in any case, no_new_privs
// and the seccomp filter.
func checkCredentials(t *testing.T, e *linux.Engine, id sandbox.ID, pid int, uid string) {
	t.Helper()
	caps := dockerCapsHex
	if uid != "0" {
		caps = "0000000000000000"
	}
	want := map[string]string{"CapInh": caps, "CapPrm": caps, "CapEff": caps, "CapBnd": dockerCapsHex,
		"CapAmb": "0000000000000000", "NoNewPrivs": "1", "Seccomp": "2"}
	fields := []string{"Uid", "Gid", "Groups"}
	for k := range want {
		fields = append(fields, k)
	}
	hostUID := onHost(t, pid, uid)
	for _, th := range threadStatus(t, pid, fields...) {
		for k, v := range want {
			if th[k] != v {
				t.Errorf("portal thread %s: %s = %q, want %q", th["tid"], k, th[k], v)
			}
		}
		if u := strings.Fields(th["Uid"]); len(u) != 4 || u[0] != hostUID || u[1] != hostUID || u[2] != hostUID || u[3] != hostUID {
			t.Errorf("portal thread %s: Uid %q, want %s", th["tid"], th["Uid"], hostUID)
		}
		if th["Groups"] != "" {
			t.Errorf("portal thread %s: supplementary groups %q, want none", th["tid"], th["Groups"])
		}
	}
	out := mustRun(t, e, id, `grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs|Seccomp):' /proc/self/status`)
	for k, v := range want {
		if !strings.Contains(out, k+":\t"+v+"\n") {
			t.Errorf("a command's %s is not %s:\n%s", k, v, out)
		}
	}
}

// TestCredentials checks the credentials every thread of the sandbox's
// portal and the processes it starts get, for root and another user, with
// the host's ids and in a user namespace of the sandbox's own, and that
// the portal is the sandbox's PID 1, named `msb portal`.
func TestCredentials(t *testing.T) {
	t.Run("host-ids", func(t *testing.T) { testCredentials(t, false) })
	t.Run("userns", func(t *testing.T) { testCredentials(t, true) })
}

func testCredentials(t *testing.T, userns bool) {
	e, _, _ := newEngineToClose(t, "msb-creds", func(c *linux.Config) { c.UserNamespaces = userns })
	root := sandboxtest.ID(t, "creds", "root")
	pid := startBox(t, e, root, hostSpec(t))
	checkCredentials(t, e, root, pid, "0")
	if got := mustRun(t, e, root, `tr '\0' ' ' < /proc/1/cmdline; echo; id -u; id -G`); got != "msb portal \n0\n0\n" {
		t.Errorf("pid 1, uid and groups inside: %q", got)
	}
	if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); string(comm) != "msb\n" {
		t.Errorf("the portal's name on the host: %q", comm)
	}
	if got := onHost(t, pid, "0"); (got == "0") == userns {
		t.Errorf("root of the sandbox is the host's uid %s (in a user namespace: %v)", got, userns)
	}

	nobody := sandboxtest.ID(t, "creds", "nobody")
	spec := hostSpec(t)
	spec.User = sandbox.User{UID: 65534, GID: 65534}
	pid = startBox(t, e, nobody, spec)
	checkCredentials(t, e, nobody, pid, "65534")
	if got := mustRun(t, e, nobody, `id -u; id -g; pwd; touch /workspace/mine && echo ok`); got != "65534\n65534\n/workspace\nok\n" {
		t.Errorf("a sandbox of user 65534: %q", got)
	}
}

// onHost returns the host's id of the id uid in the user namespace of
// process pid (the same id with the host's).
func onHost(t *testing.T, pid int, uid string) string {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/uid_map", pid))
	if err != nil {
		t.Fatal(err)
	}
	id, err := strconv.ParseUint(uid, 10, 32)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		var inside, host, n uint64
		if _, err := fmt.Sscan(l, &inside, &host, &n); err == nil && id >= inside && id < inside+n {
			return strconv.FormatUint(host+id-inside, 10)
		}
	}
	t.Fatalf("uid %s is not mapped in the user namespace of %d: %q", uid, pid, data)
	return ""
}

// TestCgoPortal runs a sandbox of this test binary, which is linked with
// cgo: Go cannot change a credential on all the threads of such a binary,
// so its init takes the other path, executing the portal afresh from the
// thread that has the sandbox's credentials. The result must be the same.
func TestCgoPortal(t *testing.T) {
	// As the server names itself when it carries no portal binary.
	e, _, _ := newEngineToClose(t, "msb-cgo", runningPortal("/proc/self/exe"))
	// A start returns once the init has executed the portal, which then
	// starts its Go runtime: its threads are all there once it answers.
	id := sandboxtest.ID(t, "cgo", "root")
	pid := startBox(t, e, id, hostSpec(t))
	if got := mustRun(t, e, id, `tr '\0' ' ' < /proc/1/cmdline; echo; python3 -c 'print(6*7)'`); got != "msb portal \n42\n" {
		t.Errorf("pid 1 and python: %q", got)
	}
	checkCredentials(t, e, id, pid, "0")
	// The portal executed afresh, and so what it starts, keeps the timer
	// slack this process had before the engine raised it.
	if got := mustRun(t, e, id, `cat /proc/self/timerslack_ns`); got != strconv.Itoa(startSlack)+"\n" {
		t.Errorf("timer slack of a command: %q, want %d", got, startSlack)
	}
	nobody := sandboxtest.ID(t, "cgo", "nobody")
	spec := hostSpec(t)
	spec.User = sandbox.User{UID: 65534, GID: 65534}
	pid = startBox(t, e, nobody, spec)
	mustRun(t, e, nobody, "true")
	checkCredentials(t, e, nobody, pid, "65534")
}

// TestMemfdInit checks that every sandbox's init is the portal binary's
// one sealed copy in memory, made when the engine started: not a file on
// the host, not a copy per start, and not writable by anyone.
func TestMemfdInit(t *testing.T) {
	e, _ := newEngine(t, t.TempDir(), "msb-memfd")
	var inodes []uint64
	for _, name := range []string{"a", "b"} {
		pid := startBox(t, e, sandboxtest.ID(t, "memfd", name), hostSpec(t))
		exe := fmt.Sprintf("/proc/%d/exe", pid)
		target, err := os.Readlink(exe)
		if err != nil || !strings.HasPrefix(target, "/memfd:msb") {
			t.Fatalf("the init runs %q, %v; want the memfd", target, err)
		}
		var st syscall.Stat_t
		if err := syscall.Stat(exe, &st); err != nil {
			t.Fatal(err)
		}
		inodes = append(inodes, st.Ino)
		f, err := os.Open(exe)
		if err != nil {
			t.Fatal(err)
		}
		seals, err := unix.FcntlInt(f.Fd(), unix.F_GET_SEALS, 0)
		f.Close()
		want := unix.F_SEAL_SEAL | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE
		if err != nil || seals&want != want {
			t.Errorf("seals of the init's binary: %#x, %v; want %#x", seals, err, want)
		}
		if _, err := os.OpenFile(exe, os.O_WRONLY, 0); err == nil {
			t.Error("the init's binary opens for writing")
		}
	}
	if inodes[0] != inodes[1] {
		t.Errorf("two sandboxes run different copies of the binary (inodes %d, %d)", inodes[0], inodes[1])
	}
}

// runsBinary reports whether process pid runs a copy of binary (the same
// contents).
func runsBinary(t *testing.T, pid int, binary string) bool {
	t.Helper()
	want, err := os.ReadFile(binary)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(fmt.Sprintf("/proc/%d/exe", pid))
	return err == nil && bytes.Equal(got, want)
}

// TestPortalBinary checks that the portal binary msb carries
// (sandbox/linux/portalbin; here the copy the tests built, which msb
// embeds: TestBuiltMSBRunsItsPortal checks the embedded one) holds none of
// msb's other roles, and that it plays all of its own: the spawner, the
// init (root, and a user of the image), the portal, and the trampoline
// that starts commands with resource limits.
func TestPortalBinary(t *testing.T) {
	// Handed to the engine as the server hands it the one msb carries: not
	// a path but the binary itself.
	data, err := os.ReadFile(portalBin)
	if err != nil {
		t.Fatal(err)
	}
	testPortalBinary(t, portalBin, func(c *linux.Config) { c.PortalBinary, c.Portal = "", bytes.NewReader(data) })
	// msb's own subcommands are not in it, and what its Go runtime
	// initialises before any role runs is the standard library (not net),
	// x/sys/unix and the roles' own packages: none of the server's, the
	// network stack's or SQLite's, as in msb.
	cmd := exec.Command(portalBin, "version")
	cmd.Env = append(os.Environ(), "GODEBUG=inittrace=1")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "runs only inside an msb sandbox") {
		t.Errorf("msb-portal version: %q, %v; want it refused", out, err)
	}
	var inits []string
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[0] == "init" {
			inits = append(inits, f[1])
		}
	}
	if len(inits) == 0 || len(inits) > 40 {
		t.Errorf("msb-portal initialises %d packages, want 1 to 40: %v", len(inits), inits)
	}
	for _, p := range inits {
		thirdParty := strings.Contains(strings.SplitN(p, "/", 2)[0], ".") && p != "golang.org/x/sys/unix" && !ownPackage(p)
		if thirdParty || p == "net" || strings.HasPrefix(p, "net/") {
			t.Errorf("msb-portal initialises %s", p)
		}
	}
}

// ownPackage reports whether p is one of msb's packages msb-portal holds.
func ownPackage(p string) bool {
	switch strings.TrimPrefix(p, "github.com/msb-dev/msb/") {
	case "errdefs", "sandbox/guest", "sandbox/portal", "sandbox/linux/boot", "sandbox/linux/spawn":
		return true
	}
	return false
}

// TestMSBAsPortal runs sandboxes of msb itself, as an msb that carries no
// portal binary does: it plays the same roles (sandbox/engine.Reexec).
func TestMSBAsPortal(t *testing.T) { testPortalBinary(t, msbBin, runningPortal(msbBin)) }

// runningPortal makes an engine's sandboxes run binary.
func runningPortal(binary string) func(*linux.Config) {
	return func(c *linux.Config) { c.PortalBinary = binary }
}

// testPortalBinary runs sandboxes of an engine given the portal binary by
// portal, whose file is binary.
func testPortalBinary(t *testing.T, binary string, portal func(*linux.Config)) {
	e, _, _ := newEngineToClose(t, "msb-portalbin", portal)
	id := sandboxtest.ID(t, "portalbin", "root")
	spec := hostSpec(t)
	spec.Rlimits = []sandbox.Rlimit{{Resource: "nofile", Soft: 77, Hard: 78}}
	pid := startBox(t, e, id, spec)
	if !runsBinary(t, pid, binary) {
		t.Errorf("the init does not run %s", binary)
	}
	// The engine's spawner runs it too.
	if !runsBinary(t, linux.SpawnerPid(e), binary) {
		t.Errorf("the engine's spawner does not run %s", binary)
	}
	// ulimit runs through the trampoline, which set the limits.
	if got := mustRun(t, e, id, `tr '\0' ' ' < /proc/1/cmdline; echo; ulimit -n; ulimit -Hn; python3 -c 'print(6*7)'`); got != "msb portal \n77\n78\n42\n" {
		t.Errorf("pid 1, its limits and python: %q", got)
	}
	nobody := sandboxtest.ID(t, "portalbin", "nobody")
	spec.User = sandbox.User{UID: 65534, GID: 65534}
	pid = startBox(t, e, nobody, spec)
	if got := mustRun(t, e, nobody, "id -u; ulimit -n"); got != "65534\n77\n" {
		t.Errorf("the user and its limit: %q", got)
	}
	checkCredentials(t, e, nobody, pid, "65534")
}

// mountTable returns the mount points of this thread's mount namespace
// and of the process's (its main thread's).
func mountTable(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, p := range []string{"/proc/thread-self/mountinfo", "/proc/self/mountinfo"} {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			if f := strings.Fields(l); len(f) > 4 {
				out = append(out, p+" "+f[4])
			}
		}
	}
	return out
}

// TestNoMountOnTheHost starts sandboxes of every kind (the host image, an
// image of layers, volumes of a directory and a file) and checks that the
// server's mount table does not change: every mount of a sandbox is made
// in its own mount namespace, so nothing is left after a crash and
// starting a sandbox does not get slower with the number running.
func TestNoMountOnTheHost(t *testing.T) {
	home := t.TempDir()
	before := mountTable(t)
	e, cfg := newEngine(t, home, "msb-nomount")
	layer := filepath.Join(home, "layer")
	os.MkdirAll(filepath.Join(layer, "etc"), 0o755)
	os.WriteFile(filepath.Join(layer, "etc", "from-layer"), []byte("layer\n"), 0o644)
	volRoot := filepath.Join(home, "volumes")
	os.MkdirAll(filepath.Join(volRoot, "dir"), 0o755)
	os.WriteFile(filepath.Join(volRoot, "file"), []byte("file\n"), 0o644)

	host := hostSpec(t)
	img := hostSpec(t)
	img.Root.Layers = []string{layer}
	img.Root.Mounts = append(append([]sandbox.Mount(nil), img.Root.Mounts...),
		sandbox.Mount{Source: filepath.Join(volRoot, "dir"), Target: "/data", Beneath: volRoot},
		sandbox.Mount{Source: filepath.Join(volRoot, "file"), Target: "/etc/conf", Beneath: volRoot, ReadOnly: true})
	startBox(t, e, sandboxtest.ID(t, "nomount", "host"), host)
	id := sandboxtest.ID(t, "nomount", "img")
	startBox(t, e, id, img)
	if got := mustRun(t, e, id, "cat /etc/from-layer /etc/conf; echo x > /data/x && cat /data/x; echo y > /etc/conf || echo ro"); got != "layer\nfile\nx\nro\n" {
		t.Errorf("inside the image's sandbox: %q", got)
	}
	after := mountTable(t)
	if strings.Join(before, "\n") != strings.Join(after, "\n") {
		t.Errorf("the server's mount table changed:\nbefore:\n%s\nafter:\n%s", strings.Join(before, "\n"), strings.Join(after, "\n"))
	}
	for _, m := range after {
		if strings.Contains(m, cfg.SandboxDir) {
			t.Errorf("a mount in the sandboxes' directory: %s", m)
		}
	}
}

// TestCgroupsPreparedAhead checks the cgroups made ahead for sandboxes:
// ready sets wait under the parent, complete (device rules, the user pids
// cgroup), a start takes one (the sandbox's init is born in it, its cgroup
// namespace rooted there) and the pool is refilled; Close leaves nothing.
func TestCgroupsPreparedAhead(t *testing.T) {
	e, cfg, closeEngine := newEngineToClose(t, "msb-pool")
	ready := func() []string {
		t.Helper()
		names, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/pids", cfg.CgroupParent, ".pool-*"))
		return names
	}
	id := sandboxtest.ID(t, "pool", "a")
	pid := startBox(t, e, id, hostSpec(t))
	linux.WaitCgroupPool(e)
	sets := ready()
	if len(sets) == 0 {
		t.Fatal("no cgroups made ahead")
	}
	for _, s := range sets {
		name := filepath.Base(s)
		for _, h := range []string{"memory", "cpu", "cpuacct", "devices", "freezer", "cpuset"} {
			if _, err := os.Stat(filepath.Join("/sys/fs/cgroup", h, cfg.CgroupParent, name)); err != nil {
				t.Errorf("ready set %s lacks its %s cgroup: %v", name, h, err)
			}
		}
		if _, err := os.Stat(filepath.Join(s, "user")); err != nil {
			t.Errorf("ready set %s has no user pids cgroup: %v", name, err)
		}
		rules, _ := os.ReadFile(filepath.Join("/sys/fs/cgroup/devices", cfg.CgroupParent, name, "devices.list"))
		if strings.Contains(string(rules), "a *:* rwm") || !strings.Contains(string(rules), "c 1:3 rwm") {
			t.Errorf("device rules of ready set %s:\n%s", name, rules)
		}
	}

	// The init was born in the sandbox's cgroups: every hierarchy places
	// it there, and its cgroup namespace is rooted there.
	self, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	for _, l := range strings.Split(strings.TrimSpace(string(self)), "\n") {
		parts := strings.SplitN(l, ":", 3)
		if parts[1] == "" {
			continue // the unified hierarchy of a hybrid host holds no limits
		}
		if parts[2] != "/"+cfg.CgroupParent+"/"+id.Key() {
			t.Errorf("the init's cgroup in %s is %s", parts[1], parts[2])
		}
	}
	inside := mustRun(t, e, id, "cat /proc/1/cgroup; cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/cpu/cpu.cfs_quota_us")
	for _, l := range strings.Split(strings.TrimSpace(inside), "\n") {
		if parts := strings.SplitN(l, ":", 3); len(parts) == 3 && parts[1] != "" && parts[2] != "/" {
			t.Errorf("inside, the init's cgroup is not the namespace's root: %s", l)
		}
	}
	if !strings.HasSuffix(inside, strconv.Itoa(128<<20)+"\n128\n100000\n") {
		t.Errorf("limits seen inside:\n%s", inside)
	}
	// The device rules hold: root inside may make a node for the host's
	// disk in its /dev (not nodev), but not open it.
	if got := mustRun(t, e, id, "mknod /dev/sdx b 8 0 && (head -c 1 /dev/sdx || echo refused); head -c 1 /dev/zero | wc -c"); got != "refused\n1\n" {
		t.Errorf("devices inside: %q", got)
	}

	if err := e.Delete(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	closeEngine()
	if left, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/*", cfg.CgroupParent)); len(left) > 0 {
		t.Errorf("cgroups left after Close: %v", left)
	}
}

// TestNetworkNamespaces checks that every sandbox gets a network namespace
// of its own, never the host's nor another sandbox's, also when they come
// from the namespaces made ahead, and with only its loopback, up.
func TestNetworkNamespaces(t *testing.T) {
	e, _ := newEngine(t, t.TempDir(), "msb-netns")
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/self/ns/net", &st); err != nil {
		t.Fatal(err)
	}
	seen := map[uint64]string{st.Ino: "the host"}
	for i := range 6 {
		id := sandboxtest.ID(t, "netns", "n"+strconv.Itoa(i))
		pid := startBox(t, e, id, hostSpec(t))
		if err := syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st); err != nil {
			t.Fatal(err)
		}
		if other, ok := seen[st.Ino]; ok {
			t.Errorf("sandbox %s is in the network namespace of %s", id, other)
		}
		seen[st.Ino] = id.String()
		if got := mustRun(t, e, id, "ls /sys/class/net; cat /sys/class/net/lo/operstate /sys/class/net/lo/flags"); got != "lo\nunknown\n0x9\n" {
			t.Errorf("network of %s: %q", id, got)
		}
	}
}

// TestDeviceRulesBesideOldSandboxes starts an engine whose cgroup parent
// already holds a sandbox's cgroup of an earlier version, with device
// rules of its own: the parent's rules cannot be changed then, and every
// sandbox must still get runc's rules.
func TestDeviceRulesBesideOldSandboxes(t *testing.T) {
	cfg := testConfig(t, t.TempDir(), "msb-olddev")
	old := filepath.Join("/sys/fs/cgroup/devices", cfg.CgroupParent, "old.box")
	if err := os.MkdirAll(old, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(old) })
	if err := os.WriteFile(filepath.Join(old, "devices.deny"), []byte("a"), 0); err != nil {
		t.Fatal(err)
	}
	e, err := linux.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	id := sandboxtest.ID(t, "olddev", "a")
	startBox(t, e, id, hostSpec(t))
	rules, _ := os.ReadFile(filepath.Join("/sys/fs/cgroup/devices", cfg.CgroupParent, id.Key(), "devices.list"))
	if strings.Contains(string(rules), "a *:* rwm") || !strings.Contains(string(rules), "c 1:3 rwm") {
		t.Errorf("device rules of the sandbox:\n%s", rules)
	}
	if got := mustRun(t, e, id, "head -c 1 /dev/zero | wc -c; mknod /dev/sdx b 8 0 && (head -c 1 /dev/sdx || echo refused)"); !strings.HasSuffix(got, "1\nrefused\n") {
		t.Errorf("devices inside: %q", got)
	}
}

// TestSpawner checks the process that clones every init: a child of the
// server named msb-spawner, whose children the inits are; killed, it is
// replaced at the next start while the sandboxes it started run on and
// still stop; and it ends with the engine.
func TestSpawner(t *testing.T) {
	e, _, closeEngine := newEngineToClose(t, "msb-spawner")
	sp := linux.SpawnerPid(e)
	if got := procField(t, sp, "PPid"); got != strconv.Itoa(os.Getpid()) {
		t.Errorf("the spawner's parent is %s, want the server %d", got, os.Getpid())
	}
	ctx := context.Background()
	a := sandboxtest.ID(t, "spawner", "a")
	pid := startBox(t, e, a, hostSpec(t))
	if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", sp)); string(comm) != "msb-spawner\n" {
		t.Errorf("the spawner's name: %q", comm)
	}
	if got := procField(t, pid, "PPid"); got != strconv.Itoa(sp) {
		t.Errorf("the init's parent is %s, want the spawner %d", got, sp)
	}

	if err := syscall.Kill(sp, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitGone(t, sp)
	if got := mustRun(t, e, a, "echo alive"); got != "alive\n" {
		t.Errorf("the sandbox started by the killed spawner: %q", got)
	}
	b := sandboxtest.ID(t, "spawner", "b")
	startBox(t, e, b, hostSpec(t))
	if got := mustRun(t, e, b, "echo started"); got != "started\n" {
		t.Errorf("a sandbox started after the spawner was killed: %q", got)
	}
	sp2 := linux.SpawnerPid(e)
	if sp2 == sp || sp2 <= 0 {
		t.Fatalf("spawner %d after %d was killed", sp2, sp)
	}
	if !runsBinary(t, sp2, portalBin) {
		t.Errorf("the spawner that replaced %d does not run the portal binary", sp)
	}
	// a's init is the host init's child now; its exit is still seen.
	if err := e.Stop(ctx, a); err != nil {
		t.Fatal(err)
	}
	if st, err := e.Inspect(ctx, a); err != nil || st.State != sandbox.StateStopped {
		t.Errorf("a after Stop: %+v, %v", st, err)
	}
	if err := e.Stop(ctx, b); err != nil {
		t.Fatal(err)
	}
	// The spawner reaps the inits it started once they have exited.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		left := sandboxtest.Children(sp2)
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the spawner's children 5s after every sandbox stopped: %v", left)
		}
	}
	if err := e.Delete(ctx, a); err != nil {
		t.Fatal(err)
	}
	if err := e.Delete(ctx, b); err != nil {
		t.Fatal(err)
	}
	closeEngine()
	waitGone(t, sp2)
}

// treePids lists the processes in the cgroup dir and in every cgroup
// below it (a sandbox's commands run in cgroups of their own below its
// set); a cgroup removed meanwhile is skipped.
func treePids(dir string) []string {
	var all []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Name() == "cgroup.procs" {
			procs, _ := os.ReadFile(p)
			all = append(all, strings.Fields(string(procs))...)
		}
		return nil
	})
	return all
}

// pidNamed returns a process in the cgroup tree dir (treePids) whose
// command name is name, or 0.
func pidNamed(dir, name string) int {
	for _, f := range treePids(dir) {
		if comm, err := os.ReadFile("/proc/" + f + "/comm"); err == nil && string(comm) == name+"\n" {
			pid, _ := strconv.Atoi(f)
			return pid
		}
	}
	return 0
}

// newEngineToClose returns an engine of a new home for a test that checks
// what its Close leaves (its Config changed by opts first), and the
// function that closes it (failing the test on an error); it is closed at
// the end of the test otherwise.
func newEngineToClose(t *testing.T, cgroupPrefix string, opts ...func(*linux.Config)) (*linux.Engine, linux.Config, func()) {
	t.Helper()
	cfg := testConfig(t, t.TempDir(), cgroupPrefix)
	for _, o := range opts {
		o(&cfg)
	}
	e, err := linux.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			e.Close()
		}
	})
	return e, cfg, func() {
		t.Helper()
		closed = true
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// procField returns a field of /proc/<pid>/status.
func procField(t *testing.T, pid int, field string) string {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && k == field {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return ""
}

// waitGone waits up to 10 s until process pid no longer exists (a zombie
// all of whose threads have exited counts as gone).
func waitGone(t *testing.T, pid int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return
		}
		// A zombie whose other threads are gone too: its leader turns
		// zombie first, while its other threads still hold its
		// descriptors.
		threads, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if strings.Contains(string(data[strings.LastIndexByte(string(data), ')')+1:]), " Z ") && len(threads) <= 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d still there 10s later", pid)
		}
	}
}

// TestSpawnerLostRequest kills the spawner while it holds a start's
// request: the start fails (it is not sent again, which could start a
// second init for the sandbox), nothing of it is left running, and the
// next start gets a new spawner.
func TestSpawnerLostRequest(t *testing.T) {
	e, cfg := newEngine(t, t.TempDir(), "msb-spawner-lost")
	sp := linux.SpawnerPid(e)
	ctx := context.Background()
	id := sandboxtest.ID(t, "spawner", "lost")
	if err := e.Create(ctx, id, hostSpec(t)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Delete(context.Background(), id) })
	// A stopped spawner would hold the engine's Close forever (a pidfd:
	// its pid may name another process by then).
	pidfd, err := unix.PidfdOpen(sp, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.PidfdSendSignal(pidfd, unix.SIGKILL, nil, 0); unix.Close(pidfd) })
	if err := syscall.Kill(sp, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	started := make(chan error, 1)
	go func() { started <- e.Start(ctx, id) }()
	time.Sleep(200 * time.Millisecond) // the request waits in the stopped spawner's socket
	if err := syscall.Kill(sp, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err = <-started
	if !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), "did not answer") {
		t.Fatalf("Start with the spawner killed = %v, want unavailable, did not answer", err)
	}
	if procs, _ := os.ReadFile(filepath.Join("/sys/fs/cgroup/pids", cfg.CgroupParent, id.Key(), "cgroup.procs")); len(strings.TrimSpace(string(procs))) > 0 {
		t.Errorf("processes left in the sandbox's cgroup: %s", procs)
	}
	if err := e.Start(ctx, id); err != nil {
		t.Fatalf("Start after the spawner was replaced: %v", err)
	}
	if got := mustRun(t, e, id, "echo ok"); got != "ok\n" {
		t.Errorf("the sandbox: %q", got)
	}
	if sp2 := linux.SpawnerPid(e); sp2 == sp {
		t.Errorf("the spawner %d was not replaced", sp)
	}
}
