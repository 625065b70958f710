package main_test

import (
	"bytes"
	"crypto/sha256"
	"debug/buildinfo"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/msb-dev/msb/sandbox/linux"
)

type outputLine struct {
	Stream string `json:"stream"`
	Text   string `json:"text"`
}

type replResult struct {
	Status   string       `json:"status"`
	Language string       `json:"language"`
	Output   []outputLine `json:"output"`
}

type commandResult struct {
	Command  string       `json:"command"`
	Args     []string     `json:"args"`
	ExitCode int          `json:"exit_code"`
	Success  bool         `json:"success"`
	Output   []outputLine `json:"output"`
}

// metricsResult is sandbox.metrics.get's result, as the tests read it
// (their own declaration of the wire format, not the server's).
type metricsResult struct {
	Sandboxes []struct {
		Namespace   string   `json:"namespace"`
		Name        string   `json:"name"`
		Running     bool     `json:"running"`
		CPUUsage    *float64 `json:"cpu_usage"`
		MemoryUsage *int64   `json:"memory_usage"`
		DiskUsage   *int64   `json:"disk_usage"`
	} `json:"sandboxes"`
	Quotas []struct {
		Namespace string   `json:"namespace"`
		Sandboxes quotaUse `json:"sandboxes"`
		MemoryMiB quotaUse `json:"memory_mib"`
		CPUs      quotaUse `json:"cpus"`
		DiskMiB   quotaUse `json:"disk_mib"`
	} `json:"quotas"`
	Pool []struct {
		Image     string `json:"image"`
		Size      int    `json:"size"`
		MemoryMiB int    `json:"memory_mib"`
		Waiting   int    `json:"waiting"`
		Starting  int    `json:"starting"`
	} `json:"pool"`
}

// quotaUse is one quantity of a namespace's quota: in use, and its bound
// (nil: none).
type quotaUse struct {
	Used  int  `json:"used"`
	Limit *int `json:"limit"`
}

func text(lines []outputLine, stream string) string {
	var b strings.Builder
	for _, l := range lines {
		if stream == "" || l.Stream == stream {
			b.WriteString(l.Text)
			b.WriteByte('\n')
		}
	}
	return b.String()
}

// sb is one sandbox driven through the API.
type sb struct {
	srv       *msbServer
	key, ns   string
	name      string
	lastStart string
}

func (s *msbServer) sandbox(key, ns, name string, config map[string]any) *sb {
	s.t.Helper()
	var msg string
	s.mustCall(key, "sandbox.start", map[string]any{"namespace": ns, "sandbox": name, "config": config}, &msg)
	if msg != "Sandbox "+name+" started successfully" {
		s.t.Fatalf("start result %q", msg)
	}
	return &sb{srv: s, key: key, ns: ns, name: name}
}

func (b *sb) params(extra map[string]any) map[string]any {
	p := map[string]any{"namespace": b.ns, "sandbox": b.name}
	for k, v := range extra {
		p[k] = v
	}
	return p
}

func (b *sb) run(command string, args ...string) commandResult {
	b.srv.t.Helper()
	var r commandResult
	b.srv.mustCall(b.key, "sandbox.command.run", b.params(map[string]any{"command": command, "args": args}), &r)
	return r
}

func (b *sb) sh(script string) commandResult {
	b.srv.t.Helper()
	return b.run("sh", "-c", script)
}

func (b *sb) repl(lang, code string, timeout float64) replResult {
	b.srv.t.Helper()
	p := b.params(map[string]any{"language": lang, "code": code})
	if timeout > 0 {
		p["timeout"] = timeout
	}
	var r replResult
	b.srv.mustCall(b.key, "sandbox.repl.run", p, &r)
	return r
}

func (b *sb) stop() {
	b.srv.t.Helper()
	var msg string
	b.srv.mustCall(b.key, "sandbox.stop", b.params(nil), &msg)
	if msg != "Sandbox "+b.name+" stopped successfully" {
		b.srv.t.Fatalf("stop result %q", msg)
	}
}

func TestSandboxCodeAndCommands(t *testing.T) {
	t.Parallel()
	home := newHome(t)
	srv := startServer(t, home)
	key := keygen(t, home)
	box := srv.sandbox(key, "default", "py", map[string]any{"image": "microsandbox/python", "envs": []string{"GREETING=hello"}})

	// Python: state persists, order of streams, exceptions.
	if r := box.repl("python", "x = 20\ndef double(n):\n    return n * 2", 0); r.Status != "success" || r.Language != "python" {
		t.Fatalf("define: %+v", r)
	}
	r := box.repl("python", "import sys\nprint(double(x) + 2)\nprint('oops', file=sys.stderr)\nprint('after')", 0)
	if r.Status != "success" || len(r.Output) != 3 || r.Output[0] != (outputLine{"stdout", "42"}) ||
		r.Output[1] != (outputLine{"stderr", "oops"}) || r.Output[2] != (outputLine{"stdout", "after"}) {
		t.Fatalf("python output: %+v", r)
	}
	r = box.repl("python", "raise ValueError('bad value')", 0)
	if r.Status != "error" || !strings.Contains(text(r.Output, "stderr"), "ValueError: bad value") ||
		!strings.Contains(text(r.Output, "stderr"), "Traceback") {
		t.Fatalf("python exception: %+v", r)
	}
	// An infinite loop comes back with status timeout, and the next call works.
	start := time.Now()
	r = box.repl("python", "while True:\n    pass", 1)
	if r.Status != "timeout" || time.Since(start) > 20*time.Second {
		t.Fatalf("python timeout: %+v after %v", r, time.Since(start))
	}
	if r := box.repl("python", "print('alive')", 0); r.Status != "success" || text(r.Output, "stdout") != "alive\n" {
		t.Fatalf("python after timeout: %+v", r)
	}

	// Node, under each of its names.
	if r := box.repl("node", "const base = 40; function add(a) { return base + a }", 0); r.Status != "success" {
		t.Fatalf("node define: %+v", r)
	}
	r = box.repl("javascript", "console.log(add(2)); console.error('warn')", 0)
	if r.Status != "success" || text(r.Output, "stdout") != "42\n" || text(r.Output, "stderr") != "warn\n" {
		t.Fatalf("node output: %+v", r)
	}
	r = box.repl("nodejs", "throw new TypeError('nope')", 0)
	if r.Status != "error" || !strings.Contains(text(r.Output, "stderr"), "TypeError: nope") {
		t.Fatalf("node exception: %+v", r)
	}
	r = box.repl("nodejs", "while (true) {}", 1)
	if r.Status != "timeout" {
		t.Fatalf("node timeout: %+v", r)
	}
	if r := box.repl("nodejs", "console.log('alive')", 0); r.Status != "success" || text(r.Output, "stdout") != "alive\n" {
		t.Fatalf("node after timeout: %+v", r)
	}

	// Commands: direct exec, exit codes, env, workdir.
	c := box.run("echo", "a b", "$HOME", ";true")
	if !c.Success || c.ExitCode != 0 || text(c.Output, "stdout") != "a b $HOME ;true\n" || c.Command != "echo" || len(c.Args) != 3 {
		t.Fatalf("echo: %+v", c)
	}
	c = box.sh("echo out; echo err >&2; exit 3")
	if c.Success || c.ExitCode != 3 || text(c.Output, "stdout") != "out\n" || text(c.Output, "stderr") != "err\n" {
		t.Fatalf("exit 3: %+v", c)
	}
	c = box.sh("echo $GREETING; pwd")
	if text(c.Output, "stdout") != "hello\n/workspace\n" {
		t.Fatalf("env and workdir: %+v", c)
	}
	var none commandResult
	srv.mustCall(key, "sandbox.command.run", box.params(map[string]any{"command": "true"}), &none)
	if none.Args == nil || len(none.Args) != 0 || !none.Success {
		t.Fatalf("args default to []: %+v", none)
	}
	c = box.run("no-such-command")
	if c.Success || c.ExitCode != 127 {
		t.Fatalf("missing command: %+v", c)
	}
	// A timeout kills the whole tree and says so.
	start = time.Now()
	var tr commandResult
	srv.mustCall(key, "sandbox.command.run", box.params(map[string]any{"command": "sh", "args": []string{"-c", "sleep 100 & sleep 100"}, "timeout": 1}), &tr)
	if tr.Success || tr.ExitCode != 124 || !strings.Contains(text(tr.Output, "stderr"), "timed out") || time.Since(start) > 20*time.Second {
		t.Fatalf("timeout: %+v", tr)
	}
	if ps := box.sh("ps -eo comm"); strings.Contains(text(ps.Output, "stdout"), "sleep") {
		t.Fatalf("sleep survived the timeout:\n%s", text(ps.Output, ""))
	}

	// A flood of output is cut at 16 MiB with a last stderr line.
	c = box.sh("head -c 40000000 /dev/zero | tr '\\0' a | fold -w 1000")
	last := c.Output[len(c.Output)-1]
	total := 0
	for _, l := range c.Output {
		total += len(l.Text)
	}
	if last.Stream != "stderr" || !strings.Contains(last.Text, "16 MiB") || total > 17<<20 || total < 15<<20 {
		t.Fatalf("flood: %d lines, %d bytes, last %+v", len(c.Output), total, last)
	}
	// The server is still healthy and the sandbox still answers.
	if c := box.run("true"); !c.Success {
		t.Fatalf("after flood: %+v", c)
	}
	box.stop()
}

func TestSandboxIsolation(t *testing.T) {
	t.Parallel()
	home := newHome(t)
	if err := os.WriteFile(filepath.Join(home, "config.toml"), []byte("sandbox_pids = 64\n[images]\n\"microsandbox/python\" = \"host\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := startServer(t, home)
	key := keygen(t, home)
	box := srv.sandbox(key, "iso", "box", map[string]any{"image": "microsandbox/python", "memory": 96})

	// Only the sandbox's own processes are visible.
	ps := box.sh("ls /proc | grep -E '^[0-9]+$' | wc -l; cat /proc/1/cmdline | tr '\\0' ' '")
	lines := strings.Split(strings.TrimSpace(text(ps.Output, "stdout")), "\n")
	if len(lines) != 2 || strings.TrimSpace(lines[1]) != "msb portal" {
		t.Fatalf("process view: %+v", ps)
	}
	var n int
	fmt.Sscan(lines[0], &n)
	if n > 5 {
		t.Fatalf("sandbox sees %d processes, want only its own", n)
	}

	// Host secrets and the msb home are not there; /usr is read-only.
	for _, p := range []string{"/etc/shadow", "/root/.bashrc", "/home", filepath.Join(home, "server.key"), filepath.Join(home, "msb.db"), home} {
		if c := box.run("cat", p); c.Success {
			t.Errorf("%s is readable in the sandbox: %+v", p, c)
		}
	}
	if c := box.sh("grep -c . /etc/passwd; ls /etc"); strings.Contains(text(c.Output, "stdout"), "shadow") {
		t.Errorf("/etc holds secrets: %s", text(c.Output, ""))
	}
	for _, p := range []string{"/usr/bin/msb-was-here", "/bin/x", "/.msb/msb", "/lib/x"} {
		if c := box.sh("echo x > " + p); c.Success {
			t.Errorf("wrote %s", p)
		}
	}
	if c := box.sh("echo data > /workspace/f && echo tmp > /tmp/f && cat /workspace/f /tmp/f"); !c.Success || text(c.Output, "stdout") != "data\ntmp\n" {
		t.Errorf("writable dirs: %+v", c)
	}

	// Root inside cannot leave its limits: no user namespace (which would
	// give it the capabilities to mount its cgroup and raise them), no
	// mounts, no shared kernel keyrings, no ptrace of the portal.
	escape := box.sh(`grep '^Seccomp:' /proc/self/status
unshare -Ur true && echo USERNS
unshare -UrmC sh -c 'mkdir -p /tmp/m && mount -t cgroup -o memory none /tmp/m && echo 8589934592 > /tmp/m/memory.limit_in_bytes && echo RAISED'
mkdir -p /tmp/t && mount -t tmpfs none /tmp/t && echo MOUNTED
python3 -c 'import ctypes; print("keyctl", ctypes.CDLL(None).syscall(250, 0, -3, 0, 0, 0))'
cat /proc/1/environ >/dev/null 2>&1 && echo PORTAL-READABLE
true`)
	esc := text(escape.Output, "stdout")
	if !strings.Contains(esc, "Seccomp:\t2") || !strings.Contains(esc, "keyctl -1") {
		t.Errorf("seccomp filter not in force: %s", text(escape.Output, ""))
	}
	for _, bad := range []string{"USERNS", "RAISED", "MOUNTED", "PORTAL-READABLE"} {
		if strings.Contains(esc, bad) {
			t.Errorf("sandbox escape step succeeded (%s):\n%s", bad, text(escape.Output, ""))
		}
	}
	// Its memory cgroup (named after it, or after the handle it had in the
	// warm pool) is the only one of the home limited to 96 MiB.
	limited, _ := filepath.Glob(fmt.Sprintf("/sys/fs/cgroup/memory/msb/%s/*/memory.limit_in_bytes", cgroupOf(home)))
	var found []string
	for _, f := range limited {
		if limit, err := os.ReadFile(f); err == nil && strings.TrimSpace(string(limit)) == fmt.Sprint(96<<20) {
			found = append(found, filepath.Base(filepath.Dir(f)))
		}
	}
	if len(found) != 1 || found[0] != "iso.box" && !strings.HasPrefix(found[0], "warm-") {
		t.Errorf("host-side memory cgroups limited to the sandbox's 96 MiB: %v, want its own", found)
	}

	// The host's loopback is out of reach: only the sandbox's own lo exists.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	r := box.repl("python", fmt.Sprintf(`import socket
s = socket.socket()
s.settimeout(2)
try:
    s.connect(("127.0.0.1", %d))
    print("connected")
except OSError as e:
    print("refused", e)
try:
    socket.create_connection(("10.0.0.1", 80), timeout=2)
    print("outside reachable")
except OSError as e:
    print("no route", e)
`, port), 0)
	out := text(r.Output, "stdout")
	if strings.Contains(out, "connected") || strings.Contains(out, "outside reachable") || !strings.Contains(out, "refused") {
		t.Fatalf("network: %+v", r)
	}

	// Allocating past the 64 MiB limit kills that process, not the sandbox or the server.
	r = box.repl("python", "b = bytearray(300 * 1024 * 1024)\nprint(len(b))", 30)
	if r.Status == "success" {
		t.Fatalf("allocated 300 MiB in a 64 MiB sandbox: %+v", r)
	}
	if c := box.run("true"); !c.Success {
		t.Fatalf("sandbox dead after OOM: %+v", c)
	}
	if r := box.repl("python", "print(6 * 7)", 0); r.Status != "success" || text(r.Output, "stdout") != "42\n" {
		t.Fatalf("python after OOM: %+v", r)
	}

	// A fork bomb is contained by the pids limit and ended by the timeout. The
	// shell forks once, before the bomb starts, then execs its sleep: once the
	// bomb fills the pids limit it could fork nothing more.
	var fb commandResult
	srv.mustCall(key, "sandbox.command.run", box.params(map[string]any{
		"command": "sh", "args": []string{"-c", "bomb() { bomb | bomb & }; bomb & exec sleep 30"}, "timeout": 3}), &fb)
	if fb.ExitCode != 124 {
		t.Fatalf("fork bomb: %+v", fb)
	}
	// Give the kernel a moment to reap, then the sandbox must answer again.
	var ok bool
	for i := 0; i < 50 && !ok; i++ {
		var c commandResult
		status, resp := srv.call(key, "sandbox.command.run", box.params(map[string]any{"command": "true"}))
		if status == 200 && resp.Error == nil && json.Unmarshal(resp.Result, &c) == nil && c.Success {
			ok = true
		} else {
			time.Sleep(100 * time.Millisecond)
		}
	}
	if !ok {
		t.Fatal("sandbox does not answer after the fork bomb")
	}
	box.stop()
}

func TestSandboxLifecycle(t *testing.T) {
	t.Parallel()
	home := newHome(t)
	srv := startServer(t, home)
	key := keygen(t, home)
	teamKey := keygen(t, home, "--namespace", "team")
	cfg := map[string]any{"image": "microsandbox/node", "memory": 256, "exec": "echo started in $PWD; echo oops >&2; sleep 0.2; echo bye"}
	box := srv.sandbox(key, "team", "web", cfg)

	// Same config again: no-op success. Another config: conflict.
	srv.sandbox(key, "team", "web", cfg)
	srv.wantError(key, "sandbox.start", map[string]any{"namespace": "team", "sandbox": "web", "config": map[string]any{"image": "microsandbox/node", "memory": 128}},
		200, -32001, "already running with a different config")

	// Bad configs are refused with a message naming the field.
	for _, c := range []struct {
		cfg  map[string]any
		want string
	}{
		{map[string]any{"image": "Alpine:3.20"}, `image "Alpine:3.20" is not a valid image reference`},
		{map[string]any{"volumes": []string{"/etc:/etc"}}, "volumes"},
		{map[string]any{"ports": []string{"80:80"}}, "allow_privileged_ports"},
		{map[string]any{"ports": []string{"8080"}}, "is not host:guest"},
		{map[string]any{"memory": 1}, "memory 1 MiB is out of range"},
		{map[string]any{"cpus": 1000}, "cpus 1000 is out of range"},
		{map[string]any{"envs": []string{"NOEQUALS"}}, "is not KEY=VALUE"},
		{map[string]any{"workdir": "relative"}, "absolute path"},
	} {
		srv.wantError(key, "sandbox.start", map[string]any{"namespace": "team", "sandbox": "bad", "config": c.cfg}, 200, -32602, c.want)
	}
	srv.wantError(key, "sandbox.start", map[string]any{"namespace": "team", "sandbox": "dep", "config": map[string]any{"depends_on": []string{"db"}}},
		200, -32001, `depends on "db"`)
	dep := srv.sandbox(key, "team", "dep", map[string]any{"depends_on": []string{"web"}})

	// Metrics: running sandboxes have figures; a namespaced key sees only its namespace.
	other := srv.sandbox(key, "other", "solo", nil)
	box.sh("head -c 1048576 /dev/urandom > /workspace/blob; i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done")
	var m metricsResult
	srv.mustCall(key, "sandbox.metrics.get", map[string]any{"namespace": "team", "sandbox": "web"}, &m)
	if len(m.Sandboxes) != 1 || !m.Sandboxes[0].Running || m.Sandboxes[0].MemoryUsage == nil || *m.Sandboxes[0].MemoryUsage <= 0 ||
		m.Sandboxes[0].DiskUsage == nil || *m.Sandboxes[0].DiskUsage < 1<<20 || m.Sandboxes[0].CPUUsage == nil || *m.Sandboxes[0].CPUUsage <= 0 {
		t.Fatalf("metrics of web: %s", mustJSON(m))
	}
	srv.mustCall(teamKey, "sandbox.metrics.get", map[string]any{"namespace": "*"}, &m)
	for _, s := range m.Sandboxes {
		if s.Namespace != "team" {
			t.Fatalf("namespaced key sees %s/%s", s.Namespace, s.Name)
		}
	}
	if len(m.Sandboxes) != 2 {
		t.Fatalf("team sandboxes: %s", mustJSON(m))
	}
	srv.mustCall(key, "sandbox.metrics.get", map[string]any{"namespace": "*"}, &m)
	if len(m.Sandboxes) != 3 {
		t.Fatalf("all sandboxes: %s", mustJSON(m))
	}

	// The exec command's output is in the sandbox's log.
	logPath := filepath.Join(home, "logs", "sandboxes", "team", "web.log")
	waitFor(t, func() bool { data, _ := os.ReadFile(logPath); return strings.Contains(string(data), "bye") })
	out, errOut, err := msb(t, home, "server", "log", "web", "--namespace", "team")
	if err != nil || !strings.Contains(out, "started in /workspace") || !strings.Contains(out, "oops") || !strings.Contains(out, "bye") {
		t.Fatalf("log: %v %s %s", err, out, errOut)
	}
	out, _, _ = msb(t, home, "server", "log", "web", "--namespace", "team", "--tail", "1")
	if strings.Count(out, "\n") != 1 {
		t.Fatalf("--tail 1 printed %q", out)
	}

	// Stop keeps the record; calls on a stopped sandbox are conflicts.
	box.stop()
	srv.wantError(key, "sandbox.command.run", box.params(map[string]any{"command": "true"}), 200, -32001, "not running")
	srv.wantError(key, "sandbox.stop", map[string]any{"namespace": "team", "sandbox": "nope"}, 200, -32003, "not found")
	srv.wantError(key, "sandbox.command.run", map[string]any{"namespace": "team", "sandbox": "nope", "command": "true"}, 200, -32003, "not found")
	srv.mustCall(key, "sandbox.metrics.get", map[string]any{"namespace": "team", "sandbox": "web"}, &m)
	if len(m.Sandboxes) != 1 || m.Sandboxes[0].Running || m.Sandboxes[0].MemoryUsage != nil {
		t.Fatalf("stopped sandbox metrics: %s", mustJSON(m))
	}
	// Started again without a config: the last one is reused, the filesystem is fresh.
	srv.mustCall(key, "sandbox.start", map[string]any{"namespace": "team", "sandbox": "web"}, nil)
	if c := box.run("cat", "/workspace/blob"); c.Success {
		t.Fatal("writable layer survived a stop")
	}
	box.stop()
	dep.stop()
	other.stop()
	assertNoLeftovers(t, home)
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// assertNoLeftovers checks that nothing of home's sandboxes remains on the
// host: no processes, mounts, cgroups or sandbox directories.
func assertNoLeftovers(t *testing.T, home string) {
	t.Helper()
	// A sandbox the running server's pool is starting is in no state to
	// tell (its limits not yet written): a leftover is what is still there
	// after a few seconds.
	var left []string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if left = leftovers(home); len(left) == 0 || time.Now().After(deadline) {
			break
		}
	}
	for _, l := range left {
		t.Error(l)
	}
}

// leftovers says what assertNoLeftovers finds.
func leftovers(home string) []string {
	var out []string
	// Names with a leading dot are the engine's files shared by all
	// sandboxes (root templates, a mount point), which a clean stop
	// removes (see msbServer.Stop); a sandbox's directory is its key.
	// So are the sandboxes waiting in the running server's pool.
	waiting := waitingPool(home)
	for _, e := range func() []os.DirEntry { entries, _ := os.ReadDir(filepath.Join(home, "sandboxes")); return entries }() {
		if !strings.HasPrefix(e.Name(), ".") && !waiting[e.Name()] {
			out = append(out, "sandbox directory left: "+e.Name())
		}
	}
	// This thread's: a thread, not a process, has a mount namespace.
	mounts, _ := os.ReadFile("/proc/thread-self/mountinfo")
	if strings.Contains(string(mounts), home) {
		out = append(out, fmt.Sprintf("mounts left under %s:\n%s", home, grepLines(string(mounts), home)))
	}
	if pids := sandboxPids(home); len(pids) > 0 {
		out = append(out, fmt.Sprintf("sandbox processes left: %v", pids))
	}
	// A disk's loop device detaches itself once its last user is gone.
	// The disks made ahead (in sandboxes/.disks) and those of the
	// sandboxes waiting in its pool belong to the running server, which
	// releases them when it stops (msbServer.Stop checks).
	for _, l := range linux.LoopsUnder(filepath.Join(home, "sandboxes")) {
		if strings.Contains(l, filepath.Join(home, "sandboxes", ".disks")+"/") {
			continue
		}
		ours := false
		for w := range waiting {
			ours = ours || strings.Contains(l, filepath.Join(home, "sandboxes", w)+"/")
		}
		if !ours {
			out = append(out, "loop device left attached: "+l)
		}
	}
	if entries, _ := os.ReadDir(filepath.Join(home, "run", "engine")); len(entries) > 0 {
		out = append(out, fmt.Sprintf("engine state left: %v", entries))
	}
	for _, pattern := range []string{"/sys/fs/cgroup/*/msb/%s/*", "/sys/fs/cgroup/unified/msb/%s/*"} {
		matches, _ := filepath.Glob(fmt.Sprintf(pattern, cgroupOf(home)))
		for _, m := range matches {
			// Cgroups made ahead for sandboxes to come belong to the
			// running server, which removes them when it stops (a clean
			// stop is checked to leave no cgroup at all).
			if strings.HasPrefix(filepath.Base(m), ".pool-") || waiting[filepath.Base(m)] {
				continue
			}
			if fi, err := os.Stat(m); err == nil && fi.IsDir() {
				out = append(out, "cgroup left: "+m)
			}
		}
	}
	return out
}

func TestSandboxesInParallel(t *testing.T) {
	t.Parallel()
	home := newHome(t)
	srv := startServer(t, home)
	key := keygen(t, home)
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("p%02d", i)
			params := map[string]any{"namespace": "par", "sandbox": name}
			if _, r := srv.call(key, "sandbox.start", map[string]any{"namespace": "par", "sandbox": name, "config": map[string]any{"memory": 128}}); r.Error != nil {
				errs <- fmt.Errorf("%s start: %s", name, r.Error.Message)
				return
			}
			p := map[string]any{"language": "python", "code": fmt.Sprintf("print(%d * 2)", i)}
			for k, v := range params {
				p[k] = v
			}
			_, r := srv.call(key, "sandbox.repl.run", p)
			var res replResult
			if r.Error != nil || json.Unmarshal(r.Result, &res) != nil || text(res.Output, "stdout") != fmt.Sprintf("%d\n", i*2) {
				errs <- fmt.Errorf("%s repl: %+v %s", name, r.Error, r.Result)
				return
			}
			if _, r := srv.call(key, "sandbox.stop", params); r.Error != nil {
				errs <- fmt.Errorf("%s stop: %s", name, r.Error.Message)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	assertNoLeftovers(t, home)
}

func TestCrashRecovery(t *testing.T) {
	t.Parallel()
	home := newHome(t)
	srv := startProcess(t, home)
	key := keygen(t, home)
	for _, name := range []string{"a", "b"} {
		srv.sandbox(key, "crash", name, map[string]any{"exec": "sleep 1000"})
	}
	srv.Kill9()

	srv = startServer(t, home)
	var m metricsResult
	srv.mustCall(key, "sandbox.metrics.get", map[string]any{"namespace": "crash"}, &m)
	if len(m.Sandboxes) != 2 || m.Sandboxes[0].Running || m.Sandboxes[1].Running {
		t.Fatalf("after a crash: %s", mustJSON(m))
	}
	assertNoLeftovers(t, home)
	// They start again from their recorded config.
	srv.mustCall(key, "sandbox.start", map[string]any{"namespace": "crash", "sandbox": "a"}, nil)
	srv.Stop() // a clean stop stops every sandbox
	assertNoLeftovers(t, home)
}

// cgroupOf names the cgroup subtree of home's sandboxes (as main.go does).
func cgroupOf(home string) string {
	sum := sha256.Sum256([]byte(home))
	return hex.EncodeToString(sum[:6])
}

// sandboxPids returns the host pids of every process in home's sandboxes,
// found by their cgroup, but those waiting in the server's pool.
func sandboxPids(home string) []int {
	var pids []int
	marker := "/msb/" + cgroupOf(home) + "/"
	waiting := waitingPool(home)
	files, _ := filepath.Glob("/proc/[0-9]*/cgroup")
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil || !strings.Contains(string(data), marker) {
			continue
		}
		if _, rest, _ := strings.Cut(string(data), marker); waiting[strings.SplitN(rest, "\n", 2)[0]] {
			continue
		}
		// A zombie is already dead; reaping it is the host init's job.
		if stat, err := os.ReadFile(filepath.Join(filepath.Dir(f), "stat")); err == nil {
			if i := strings.LastIndexByte(string(stat), ')'); i > 0 && strings.HasPrefix(string(stat[i:]), ") Z") {
				continue
			}
		}
		var pid int
		fmt.Sscan(filepath.Base(filepath.Dir(f)), &pid)
		pids = append(pids, pid)
	}
	return pids
}

func TestSandboxDiesOnItsOwn(t *testing.T) {
	t.Parallel()
	home := newHome(t)
	srv := startServer(t, home)
	key := keygen(t, home)
	box := srv.sandbox(key, "default", "fragile", nil)
	// Its one process (the pool's sandboxes that wait are not counted;
	// one the pool is starting may be, for a moment).
	var pids []int
	waitFor(t, func() bool { pids = sandboxPids(home); return len(pids) == 1 })
	if err := syscall.Kill(pids[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// The server learns of the death from the engine once the kernel has
	// reaped the init.
	waitFor(t, func() bool {
		var m metricsResult
		srv.mustCall(key, "sandbox.metrics.get", box.params(nil), &m)
		return len(m.Sandboxes) == 1 && !m.Sandboxes[0].Running
	})
	// A call on it fails as a state conflict, not an internal error.
	srv.wantError(key, "sandbox.command.run", box.params(map[string]any{"command": "true"}), 200, -32001, "")
	// Starting it again brings it back, rather than claiming it already runs.
	srv.sandbox(key, "default", "fragile", nil)
	if c := box.run("true"); !c.Success {
		t.Fatalf("after restart: %+v", c)
	}
	box.stop()
	assertNoLeftovers(t, home)
}

// TestSandboxCannotLowerOOMScore checks that nothing in a sandbox can make
// itself immune to the OOM killer: with oom_score_adj -1000 everywhere, the
// memory cgroup's killer finds no victim and host memory pressure falls on
// host processes instead.
func TestSandboxCannotLowerOOMScore(t *testing.T) {
	t.Parallel()
	home := newHome(t)
	srv := startServer(t, home)
	key := keygen(t, home)
	box := srv.sandbox(key, "oom", "box", nil)
	// The command itself, a child that forks at once, and the portal.
	c := box.sh(`echo -1000 > /proc/self/oom_score_adj; cat /proc/self/oom_score_adj
sh -c 'echo -1000 > /proc/self/oom_score_adj; cat /proc/self/oom_score_adj'
cat /proc/1/oom_score_adj`)
	scores := strings.Fields(text(c.Output, "stdout"))
	if len(scores) != 3 {
		t.Fatalf("scores: %+v", c)
	}
	for i, s := range scores {
		var n int
		if _, err := fmt.Sscan(s, &n); err != nil || n < 0 {
			t.Errorf("oom_score_adj %d is %q, want >= 0 (output %q)", i, s, text(c.Output, ""))
		}
	}
	box.stop()
}

// TestSandboxTimeoutKillsDetached checks that a command's timeout also
// kills what it started in a new session that its parent then left: such a
// process is reparented to the portal and is no longer in the command's
// process group nor among its descendants.
func TestSandboxTimeoutKillsDetached(t *testing.T) {
	t.Parallel()
	home := newHome(t)
	srv := startServer(t, home)
	key := keygen(t, home)
	box := srv.sandbox(key, "tree", "box", nil)
	var r commandResult
	srv.mustCall(key, "sandbox.command.run", box.params(map[string]any{
		"command": "sh", "args": []string{"-c", `setsid sh -c "sleep 1000 &" ; sleep 1000`}, "timeout": 1}), &r)
	if r.ExitCode != 124 || r.Success {
		t.Fatalf("timed-out command: %+v", r)
	}
	ps := box.sh(`for f in /proc/[0-9]*/stat; do cat $f; echo; done`)
	for _, line := range strings.Split(text(ps.Output, "stdout"), "\n") {
		// A zombie is already dead and about to be reaped.
		if strings.Contains(line, "(sleep) ") && !strings.Contains(line, "(sleep) Z") {
			t.Errorf("survived the timeout: %s", line)
		}
	}
	box.stop()
	assertNoLeftovers(t, home)
}

// serverCPU returns the CPU time the process pid has used itself.
func serverCPU(t *testing.T, pid int) time.Duration {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:]))
	var utime, stime int64
	fmt.Sscan(f[11], &utime)
	fmt.Sscan(f[12], &stime)
	return time.Duration(utime+stime) * time.Second / 100 // USER_HZ
}

// TestBackgroundOutputStopsAtLogCap checks that once a background command
// has filled the sandbox's log, its output stops reaching the server: a
// command printing forever must cost the sandbox's CPU quota, not the
// server's CPU.
func TestBackgroundOutputStopsAtLogCap(t *testing.T) {
	t.Parallel()
	home := newHome(t)
	srv := startProcess(t, home)
	key := keygen(t, home)
	box := srv.sandbox(key, "flood", "box", map[string]any{"exec": `yes "$(head -c 60000 /dev/zero | tr '\0' x)"`})
	logPath := filepath.Join(home, "logs", "sandboxes", "flood", "box.log")
	for i := 0; ; i++ {
		data, _ := os.ReadFile(logPath)
		if strings.Contains(string(data[max(0, len(data)-4096):]), "further output is discarded") {
			break
		}
		if i == 1200 {
			t.Fatalf("the log never reached its cap (%d bytes)", len(data))
		}
		time.Sleep(100 * time.Millisecond)
	}
	pid := srv.cmd.Process.Pid
	before := serverCPU(t, pid)
	time.Sleep(2 * time.Second)
	used := serverCPU(t, pid) - before
	t.Logf("server CPU in the 2s after the log was full: %v", used)
	if used > 200*time.Millisecond {
		t.Errorf("the server used %v of CPU in 2s after the log was full: output is still forwarded", used)
	}
	if fi, err := os.Stat(logPath); err != nil || fi.Size() > 64<<20+8<<10 {
		t.Errorf("log: %v %v", fi.Size(), err)
	}
	box.stop()
}

// TestCrashRecoveryWithStuckLeftover checks that a sandbox left by a
// crashed server that cannot be cleaned up (here: a host process holds its
// cgroup) does not keep the next server from starting; the others are
// cleaned, it is recorded stopped, and it starts again once freed.
func TestCrashRecoveryWithStuckLeftover(t *testing.T) {
	t.Parallel()
	// Sandboxes started cold, left by their keys (TestWarmPoolAfterCrash
	// has a pooled one held the same way).
	home := homeWith(t, "[pool]\nenabled = false\n")
	srv := startProcess(t, home)
	key := keygen(t, home)
	for _, name := range []string{"ok", "stuck"} {
		srv.sandbox(key, "crash", name, map[string]any{"exec": "sleep 1000"})
	}
	// A host process in the sandbox's pids cgroup: it outlives the
	// sandbox's PID namespace and keeps the cgroup from being removed.
	holder := exec.Command("sleep", "1000")
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { holder.Process.Kill(); holder.Wait() }()
	procs := fmt.Sprintf("/sys/fs/cgroup/pids/msb/%s/crash.stuck/cgroup.procs", cgroupOf(home))
	if err := os.WriteFile(procs, []byte(fmt.Sprint(holder.Process.Pid)), 0); err != nil {
		t.Fatal(err)
	}
	srv.Kill9()

	srv = startServer(t, home)
	if out := srv.out.String(); !strings.Contains(out, "cannot clean up") || !strings.Contains(out, "crash/stuck") {
		t.Errorf("the failed cleanup is not in the server log:\n%s", srv.out)
	}
	var m metricsResult
	srv.mustCall(key, "sandbox.metrics.get", map[string]any{"namespace": "crash"}, &m)
	if len(m.Sandboxes) != 2 || m.Sandboxes[0].Running || m.Sandboxes[1].Running {
		t.Fatalf("after a crash: %s", mustJSON(m))
	}
	if _, err := os.Stat(filepath.Join(home, "sandboxes", "crash.ok")); err == nil {
		t.Error("the other leftover was not cleaned up")
	}
	// Once the holder is gone, the stuck sandbox starts again.
	holder.Process.Kill()
	holder.Wait()
	box := &sb{srv: srv, key: key, ns: "crash", name: "stuck"}
	srv.mustCall(key, "sandbox.start", box.params(nil), nil)
	if c := box.run("true"); !c.Success {
		t.Fatalf("after restart: %+v", c)
	}
	box.stop()
	assertNoLeftovers(t, home)
}

// grepLines returns the lines of text that contain s.
func grepLines(text, s string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// A sandbox that makes its agent crash (SIGQUIT makes a Go program dump
// every goroutine and exit) gets a short message, not the dump.
func TestAgentCrashIsAShortMessage(t *testing.T) {
	t.Parallel()
	home := newHome(t)
	srv := startServer(t, home)
	key := keygen(t, home)
	box := srv.sandbox(key, "crash", "quit", nil)
	status, r := srv.call(key, "sandbox.command.run", box.params(map[string]any{"command": "sh", "args": []string{"-c", "kill -QUIT 1; sleep 10"}}))
	if status != 200 || r.Error == nil || r.Error.Code != -32001 {
		t.Fatalf("call during the agent's crash: HTTP %d, %+v", status, r.Error)
	}
	t.Logf("message: %q", r.Error.Message)
	if strings.Contains(r.Error.Message, "goroutine") || strings.Count(r.Error.Message, "\n") > 0 || len(r.Error.Message) > 400 {
		t.Fatalf("the client got the agent's dump: %q", r.Error.Message)
	}
}

// TestSandboxConfigFields starts real sandboxes with the config fields of
// the v1 API through sandbox.start: user, command, tmpfs, max duration.
func TestSandboxConfigFields(t *testing.T) {
	t.Parallel()
	home := newHome(t)
	srv := startServer(t, home)
	key := keygen(t, home)
	box := srv.sandbox(key, "cfg", "fields", map[string]any{
		"image": "host", "memory": 128, "user": "1000:1001",
		"command": []string{"sh", "-c", "id -u > /tmp/who; ulimit -n > /tmp/nofile; sleep 600"},
		"tmpfs":   []map[string]any{{"path": "/scratch", "size_mib": 8}},
		"labels":  map[string]string{"team": "a"},
		"rlimits": []map[string]any{{"resource": "nofile", "soft": 64, "hard": 128}},
	})
	// The limits bind every process: commands, the background command,
	// the interpreters.
	if c := box.sh("ulimit -n; ulimit -Hn"); text(c.Output, "stdout") != "64\n128\n" {
		t.Fatalf("ulimit in a command: %+v", c)
	}
	waitFor(t, func() bool { return strings.TrimSpace(text(box.run("cat", "/tmp/nofile").Output, "stdout")) == "64" })
	if r := box.repl("python", "import resource\nprint(resource.getrlimit(resource.RLIMIT_NOFILE))", 0); text(r.Output, "stdout") != "(64, 128)\n" {
		t.Fatalf("limits in the interpreter: %+v", r)
	}
	if r := box.repl("python", "x = 6 * 7\nprint(x)", 0); text(r.Output, "stdout") != "42\n" {
		t.Fatalf("the interpreter after a limited start: %+v", r)
	}
	if c := box.run("id", "-u"); strings.TrimSpace(text(c.Output, "stdout")) != "1000" {
		t.Fatalf("id -u: %+v", c)
	}
	if c := box.run("id", "-g"); strings.TrimSpace(text(c.Output, "stdout")) != "1001" {
		t.Fatalf("id -g: %+v", c)
	}
	waitFor(t, func() bool { return strings.TrimSpace(text(box.run("cat", "/tmp/who").Output, "stdout")) == "1000" })
	// The tmpfs is there, writable by the user, and holds no more than its size.
	if c := box.sh("grep ' /scratch ' /proc/mounts"); !strings.Contains(text(c.Output, "stdout"), "tmpfs") {
		t.Fatalf("no tmpfs at /scratch: %+v", c)
	}
	if c := box.sh("head -c 4194304 /dev/zero > /scratch/a"); !c.Success {
		t.Fatalf("4 MiB into an 8 MiB tmpfs: %+v", c)
	}
	if c := box.sh("head -c 8388608 /dev/zero > /scratch/b"); c.Success || !strings.Contains(text(c.Output, "stderr"), "No space left") {
		t.Fatalf("8 more MiB into an 8 MiB tmpfs: %+v", c)
	}
	// Refused tmpfs configs name the field.
	srv.wantError(key, "sandbox.start", map[string]any{"namespace": "cfg", "sandbox": "bad",
		"config": map[string]any{"memory": 64, "tmpfs": []map[string]any{{"path": "/s", "size_mib": 65}}}}, 200, -32602, "config.tmpfs")
	box.stop()

	// A max duration stops the sandbox on its own.
	short := srv.sandbox(key, "cfg", "short", map[string]any{"image": "host", "lifecycle": map[string]any{"max_duration_secs": 1}})
	waitFor(t, func() bool {
		status, resp := srv.call(key, "sandbox.command.run", short.params(map[string]any{"command": "true"}))
		return status == 200 && resp.Error != nil && strings.Contains(resp.Error.Message, "not running")
	})
	// The stop that follows releases everything.
	waitFor(t, func() bool {
		_, err := os.Stat(filepath.Join(home, "sandboxes", "cfg.short"))
		return os.IsNotExist(err)
	})
	assertNoLeftovers(t, home)
}

// TestNamespaceQuotasServed sets quotas in config.toml: a start past one is
// refused naming it, and sandbox.metrics.get and `msb server status` show
// each namespace's usage against its quota.
func TestNamespaceQuotasServed(t *testing.T) {
	t.Parallel()
	home := homeWith(t, "[quotas]\nsandboxes = 1\n[quotas.namespaces.big]\nsandboxes = 3\nmemory = 200\n")
	srv := startProcess(t, home)
	key := keygen(t, home)
	one := srv.sandbox(key, "small", "one", map[string]any{"image": "host", "memory": 64})
	srv.wantError(key, "sandbox.start", map[string]any{"namespace": "small", "sandbox": "two", "config": map[string]any{"image": "host", "memory": 64}},
		200, -32001, "quotas.sandboxes in config.toml")
	big := srv.sandbox(key, "big", "a", map[string]any{"image": "host", "memory": 128})
	srv.wantError(key, "sandbox.start", map[string]any{"namespace": "big", "sandbox": "b", "config": map[string]any{"image": "host", "memory": 128}},
		200, -32001, "over its quota of 200 MiB (quotas.memory in config.toml)")

	var m metricsResult
	srv.mustCall(key, "sandbox.metrics.get", map[string]any{"namespace": "big"}, &m)
	if len(m.Quotas) != 1 || m.Quotas[0].Namespace != "big" || m.Quotas[0].Sandboxes.Used != 1 || *m.Quotas[0].Sandboxes.Limit != 3 ||
		m.Quotas[0].MemoryMiB.Used != 128 || *m.Quotas[0].MemoryMiB.Limit != 200 {
		t.Fatalf("quotas of big: %s", mustJSON(m))
	}
	out, errOut, err := msb(t, home, "server", "status")
	if err != nil || !regexp.MustCompile(`big\s+1 / 3\s+128 / 200\s+1 / -`).MatchString(out) ||
		!regexp.MustCompile(`small\s+1 / 1\s+64 / -`).MatchString(out) {
		t.Fatalf("status: %v\n%s%s", err, out, errOut)
	}
	// A stop frees the quota.
	one.stop()
	srv.sandbox(key, "small", "two", map[string]any{"image": "host", "memory": 64}).stop()
	big.stop()
}

// The built msb runs in its sandboxes the portal binary it carries
// (sandbox/linux/portalbin), not itself, and so has nothing to warn about.
func TestBuiltMSBRunsItsPortal(t *testing.T) {
	t.Parallel()
	home := newHome(t)
	srv := startProcess(t, home)
	key := keygen(t, home)
	srv.sandbox(key, "portal", "a", nil)
	want, err := os.ReadFile(portalBin)
	if err != nil {
		t.Fatal(err)
	}
	pids := sandboxPids(home)
	var runs []int
	for _, pid := range pids {
		if got, err := os.ReadFile(fmt.Sprintf("/proc/%d/exe", pid)); err == nil && bytes.Equal(got, want) {
			runs = append(runs, pid)
		}
	}
	if len(runs) == 0 {
		t.Errorf("no process of the sandbox (%v) runs the portal binary", pids)
	}
	if info, err := buildinfo.ReadFile(msbBin); err == nil && !strings.Contains(fmt.Sprint(info.Settings), "vcs.revision") {
		t.Log("msb recorded no source revision (-buildvcs=false?): its check that the portal binary is of the same one did nothing")
	}
	if out := srv.out.String(); strings.Contains(out, "run msb itself") {
		t.Errorf("the server fell back to msb itself:\n%s", out)
	}
}
