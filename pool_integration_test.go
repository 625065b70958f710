package main_test

// The warm pool with the real Linux engine: real sandboxes waiting in a
// real server's pool, taken by starts through every front-end, checked
// from inside (what a tenant sees) and from the host (cgroups, sandbox
// directories, processes).

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/msb-dev/msb/config"
)

// poolConfig is the [pool] of the tests' pooled homes: the default one,
// written out (two waiting sandboxes of the default image, 64 MiB each).
const poolConfig = "[pool]\nmemory = 128\n[pool.images]\n\"microsandbox/python\" = 2\n"

// poolShare is the memory limit (MiB) of a sandbox waiting in the pool of
// the tests' homes, the default. No tenant of the tests asks for it, so a
// pool's sandbox limited to it is one that waits, or is being started.
const poolShare = config.DefaultPoolMemory / config.DefaultPoolSandboxes

// pooledHome makes a home whose config has the tests' registries, extra
// settings and tables, and the tests' pool.
func pooledHome(t *testing.T, extra string) string {
	t.Helper()
	home := homeWith(t, extra+poolConfig)
	return home
}

// warmCgroups lists the memory cgroups of home's sandboxes that a pool
// started (named by a handle, warm-<pid>-<token>-<n>), with their memory limits.
func warmCgroups(home string) map[string]int64 {
	out := map[string]int64{}
	dirs, _ := filepath.Glob(fmt.Sprintf("/sys/fs/cgroup/memory/msb/%s/warm-*", cgroupOf(home)))
	for _, d := range dirs {
		data, err := os.ReadFile(filepath.Join(d, "memory.limit_in_bytes"))
		if err != nil {
			continue // removed meanwhile
		}
		n, _ := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
		out[filepath.Base(d)] = n
	}
	return out
}

// waitingWarm names the sandboxes of home's pool that wait (or are
// being started): their cgroups and directories are named by a handle
// (warm-<pid>-<token>-<n>), and their memory is limited to the pool's share.
func waitingWarm(home string) map[string]bool {
	out := map[string]bool{}
	for h, limit := range warmCgroups(home) {
		if limit == poolShare<<20 {
			out[h] = true
		}
	}
	return out
}

// waitingPool is waitingWarm and the server's inits waiting spawned ahead.
func waitingPool(home string) map[string]bool {
	out := waitingWarm(home)
	// And the inits waiting spawned ahead (init-<pid>-<token>-<n>): the
	// running server's too, until a start takes one and renames it.
	for _, h := range readyInitCgroups(home) {
		out[h] = true
	}
	return out
}

// poolOf is the warm pool of the default image, as sandbox.metrics.get
// reports it to a key of every namespace.
func (s *msbServer) poolOf(key string) (size, waiting, starting int) {
	s.t.Helper()
	var m metricsResult
	s.mustCall(key, "sandbox.metrics.get", map[string]any{"namespace": "*"}, &m)
	if len(m.Pool) != 1 || m.Pool[0].Image != "microsandbox/python" || m.Pool[0].MemoryMiB != 2*poolShare {
		s.t.Fatalf("sandbox.metrics.get's pool: %+v", m.Pool)
	}
	return m.Pool[0].Size, m.Pool[0].Waiting, m.Pool[0].Starting
}

// waitPoolFull waits until the server's pool has its two sandboxes
// waiting, none being started, and the host holds exactly those.
func (s *msbServer) waitPoolFull(key string) {
	s.t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		size, waiting, starting := s.poolOf(key)
		if size == 2 && waiting == 2 && starting == 0 && len(waitingWarm(s.home)) == 2 {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("the pool did not fill: %d of %d waiting, %d starting; on the host %v", waiting, size, starting, warmCgroups(s.home))
		}
	}
}

// starts counts the starts of sandbox ns/name the server logged, and of
// those the ones served from the pool.
func starts(out, ns, name string) (all, pooled int) {
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, `msg="sandbox started"`) && strings.Contains(l, " sandbox="+ns+"/"+name+" ") {
			all++
			if strings.Contains(l, " pooled=true") {
				pooled++
			}
		}
	}
	return all, pooled
}

// handleOf returns the pool handle (the name of its cgroups and
// directory) of the sandbox that runs the host process whose command line
// is `sleep <marker>`, "" when none runs.
func handleOf(home, marker string) string {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		data, err := os.ReadFile(p)
		if err != nil || string(data) != "sleep\x00"+marker+"\x00" {
			continue
		}
		cg, err := os.ReadFile(filepath.Join(filepath.Dir(p), "cgroup"))
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(cg), "\n") {
			if _, path, ok := strings.Cut(l, ":memory:"); ok && strings.Contains(path, "/msb/"+cgroupOf(home)+"/") {
				return filepath.Base(path)
			}
		}
	}
	return ""
}

// sleepsOnHost counts the host processes `sleep <marker>`.
func sleepsOnHost(marker string) int {
	n := 0
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		if data, err := os.ReadFile(p); err == nil && string(data) == "sleep\x00"+marker+"\x00" {
			n++
		}
	}
	return n
}

// startPooled starts an in-process server on a pooled home (extra added
// to its config) and returns them with a key of every namespace, once the
// pool is full.
func startPooled(t *testing.T, extra string) (string, *msbServer, string) {
	t.Helper()
	home := pooledHome(t, extra)
	srv := startServer(t, home)
	key := keygen(t, home)
	srv.waitPoolFull(key)
	return home, srv, key
}

// waitHandle waits until the sandbox running `sleep <marker>` is found.
func waitHandle(t *testing.T, home, marker string) string {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if h := handleOf(home, marker); h != "" {
			return h
		}
		if time.Now().After(deadline) {
			t.Fatalf("no sandbox runs sleep %s", marker)
		}
	}
}

// A sandbox taken from the pool gets its start's config (environment,
// working directory, hostname, memory and CPU limits, port forwards), and
// nothing one tenant leaves (files, processes, interpreter state) is ever
// seen by another: each start takes a sandbox no one has touched, and a
// stopped one is deleted, never offered again. What cannot be applied to
// a running sandbox (a volume) makes the start a cold one.
func TestWarmPoolIsolationAndConfig(t *testing.T) {
	t.Parallel()
	home, srv, key := startPooled(t, "")
	// The pool is the server's, shown to a call on every namespace only.
	var one metricsResult
	srv.mustCall(key, "sandbox.metrics.get", map[string]any{"namespace": "tenant-a"}, &one)
	if len(one.Pool) != 0 {
		t.Errorf("sandbox.metrics.get of one namespace shows the pool: %+v", one.Pool)
	}

	a := srv.sandbox(key, "tenant-a", "box", map[string]any{"envs": []string{"SECRET=a"}, "workdir": "/data/app",
		"memory": 200, "cpus": 2, "exec": "sleep 7001"})
	if _, pooled := starts(srv.out.String(), "tenant-a", "box"); pooled != 1 {
		t.Fatalf("the start did not take a waiting sandbox:\n%s", srv.out)
	}
	got := text(a.sh(`echo "$SECRET"; pwd; hostname; cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us
echo left-by-a > /data/app/f && echo a > /tmp/f && echo a > /workspace/f && echo written`).Output, "")
	if want := fmt.Sprintf("a\n/data/app\nbox\n%d\n200000\nwritten\n", 200<<20); got != want {
		t.Errorf("inside a pooled sandbox:\n%s\nwant\n%s", got, want)
	}
	// The interpreter, started after the sandbox was taken, has its config too.
	if r := a.repl("python", "import os, socket\nleft_by_a = 42\nprint(left_by_a, os.environ.get('SECRET'), os.getcwd(), socket.gethostname())", 0); text(r.Output, "stdout") != "42 a /data/app box\n" {
		t.Fatalf("repl in a pooled sandbox: %+v", r)
	}
	handleA := waitHandle(t, home, "7001")
	if !strings.HasPrefix(handleA, "warm-") {
		t.Fatalf("tenant a's sandbox runs in cgroup %q, not a pool's", handleA)
	}

	// The next tenant, while a runs: the other waiting sandbox.
	srv.waitPoolFull(key)
	check := func(b *sb, who string) {
		t.Helper()
		out := text(b.sh(`cat /data/app/f /tmp/f /workspace/f 2>/dev/null; echo "[$SECRET]"; hostname
for p in /proc/[0-9]*; do tr '\0' ' ' < $p/cmdline; echo; done | grep -c '^sleep 7001' || true`).Output, "stdout")
		if want := "[]\n" + b.name + "\n0\n"; out != want {
			t.Errorf("%s sees what an earlier tenant left:\n%s\nwant\n%s", who, out, want)
		}
		r := b.repl("python", "print(globals().get('left_by_a'))", 0)
		if text(r.Output, "stdout") != "None\n" {
			t.Errorf("%s sees an earlier tenant's interpreter: %+v", who, r)
		}
	}
	b := srv.sandbox(key, "tenant-b", "other", map[string]any{"exec": "sleep 7002"})
	if _, pooled := starts(srv.out.String(), "tenant-b", "other"); pooled != 1 {
		t.Fatalf("tenant b's start did not take a waiting sandbox")
	}
	check(b, "tenant b")
	if h := waitHandle(t, home, "7002"); h == handleA || !strings.HasPrefix(h, "warm-") {
		t.Errorf("tenant b got sandbox %s; tenant a has %s", h, handleA)
	}

	// a stops: its sandbox is gone, processes, cgroups and directory.
	a.stop()
	if _, err := os.Stat(filepath.Join(home, "sandboxes", handleA)); err == nil {
		t.Errorf("the directory of a stopped pooled sandbox is left")
	}
	if left, _ := filepath.Glob(fmt.Sprintf("/sys/fs/cgroup/*/msb/%s/%s", cgroupOf(home), handleA)); len(left) > 0 {
		t.Errorf("cgroups of a stopped pooled sandbox are left: %v", left)
	}
	if n := sleepsOnHost("7001"); n > 0 {
		t.Errorf("tenant a's process still runs on the host after its stop")
	}
	// The same name again takes another sandbox, as fresh as any.
	srv.waitPoolFull(key)
	again := srv.sandbox(key, "tenant-a", "box", map[string]any{"exec": "sleep 7003"})
	if _, pooled := starts(srv.out.String(), "tenant-a", "box"); pooled != 2 {
		t.Fatalf("the second start of tenant-a/box did not take a waiting sandbox")
	}
	check(again, "tenant a's next sandbox")
	if h := waitHandle(t, home, "7003"); h == handleA {
		t.Errorf("a stopped sandbox (%s) was handed out again", h)
	}

	// A port forward, applied to the taken sandbox.
	port := freePort(t)
	web := srv.sandbox(key, "tenant-c", "web", map[string]any{"ports": []string{fmt.Sprintf("%d:8000", port)},
		"exec": "python3 -m http.server 8000 --bind 127.0.0.1 --directory /workspace"})
	if _, pooled := starts(srv.out.String(), "tenant-c", "web"); pooled != 1 {
		t.Errorf("the start with a port forward did not take a waiting sandbox")
	}
	web.sh("echo served > /workspace/index.txt")
	var body string
	for deadline := time.Now().Add(20 * time.Second); body != "served\n"; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the port forward of a pooled sandbox does not reach it: %q", body)
		}
		if resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/index.txt", port)); err == nil {
			data, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(data)
		}
	}

	// A volume cannot be added to a running sandbox: a cold start.
	vol := srv.sandbox(key, "tenant-c", "vol", map[string]any{"volumes": []string{"data:/mnt/data"}})
	if all, pooled := starts(srv.out.String(), "tenant-c", "vol"); all != 1 || pooled != 0 {
		t.Errorf("a start with a volume: %d starts, %d from the pool; want one cold", all, pooled)
	}
	if c := vol.sh("echo v > /mnt/data/f && cat /mnt/data/f"); text(c.Output, "stdout") != "v\n" {
		t.Errorf("the cold start's volume: %+v", c)
	}
	for _, s := range []*sb{b, again, web, vol} {
		s.stop()
	}
	srv.waitPoolFull(key)
	assertNoLeftovers(t, home)
}

// A burst of starts larger than the pool: every start succeeds, those the
// pool cannot serve start cold, the pool never holds more than its size
// and memory, and it refills afterwards. A namespace's quota counts the
// pooled sandboxes its starts took, and a start it refuses takes nothing.
func TestWarmPoolBurstQuotaAndMemoryBound(t *testing.T) {
	t.Parallel()
	home, srv, key := startPooled(t, "[quotas.namespaces.quota]\nsandboxes = 1\nmemory = 300\n")

	// Watch the pool while the burst runs: by its own account it never
	// holds more than its 2 (waiting and being started), and on the host
	// no sandbox of the pool has a memory limit but its share, none
	// (limits not yet written) or a tenant's 128 MiB. (A taken sandbox
	// keeps the share until its start gives it its own limit, so the host
	// alone cannot count the pool's.)
	c := newRPCClient(srv.URL)
	c.key = key
	done := make(chan struct{})
	var most, samples int
	var odd []string
	var watch sync.WaitGroup
	watch.Go(func() {
		for {
			var r metricsResult
			if res, err := c.call("sandbox.metrics.get", map[string]any{"namespace": "*"}); err == nil && json.Unmarshal(res, &r) == nil {
				samples++
				for _, p := range r.Pool {
					most = max(most, p.Waiting+p.Starting)
				}
			}
			for h, limit := range warmCgroups(home) {
				if limit != poolShare<<20 && limit != 128<<20 && limit < 1<<40 {
					odd = append(odd, fmt.Sprintf("%s: %d", h, limit))
				}
			}
			select {
			case <-done:
				return
			case <-time.After(time.Millisecond):
			}
		}
	})
	const burst = 6
	var wg sync.WaitGroup
	errs := make(chan string, burst)
	for i := range burst {
		wg.Go(func() {
			name := fmt.Sprintf("b%d", i)
			if _, err := c.call("sandbox.start", map[string]any{"namespace": "burst", "sandbox": name, "config": map[string]any{"memory": 128}}); err != nil {
				errs <- name + ": " + err.Error()
			}
		})
	}
	wg.Wait()
	close(done)
	watch.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	pooled, cold := 0, 0
	for i := range burst {
		all, p := starts(srv.out.String(), "burst", fmt.Sprintf("b%d", i))
		pooled, cold = pooled+p, cold+all-p
	}
	if pooled < 2 || cold < 1 || pooled+cold != burst {
		t.Errorf("a burst of %d: %d from the pool, %d cold; want the 2 waiting taken and the rest cold\n%s", burst, pooled, cold, srv.out)
	}
	if samples == 0 || most > 2 || len(odd) > 0 {
		t.Errorf("during the burst (%d samples of the pool) the pool held %d sandboxes (its size is 2); memory limits %v", samples, most, odd)
	}
	srv.waitPoolFull(key) // refilled
	for i := range burst {
		b := &sb{srv: srv, key: key, ns: "burst", name: fmt.Sprintf("b%d", i)}
		if c := b.run("python3", "-c", "print(6 * 7)"); text(c.Output, "stdout") != "42\n" {
			t.Errorf("%s: %+v", b.name, c)
		}
		b.stop()
	}

	// Quotas: the taken sandbox counts against its namespace, with the
	// memory its config asks for (not the pool's share).
	srv.sandbox(key, "quota", "first", map[string]any{"memory": 256})
	if _, pooled := starts(srv.out.String(), "quota", "first"); pooled != 1 {
		t.Fatal("quota/first did not take a waiting sandbox")
	}
	var m metricsResult
	srv.mustCall(key, "sandbox.metrics.get", map[string]any{"namespace": "quota"}, &m)
	if len(m.Quotas) != 1 || m.Quotas[0].Sandboxes.Used != 1 || m.Quotas[0].MemoryMiB.Used != 256 {
		t.Errorf("quota use after a pooled start: %+v", m.Quotas)
	}
	srv.waitPoolFull(key)
	srv.wantError(key, "sandbox.start", map[string]any{"namespace": "quota", "sandbox": "second"}, 200, -32001, "quotas.sandboxes")
	if all, _ := starts(srv.out.String(), "quota", "second"); all != 0 {
		t.Errorf("a start the quota refused started")
	}
	if _, waiting, starting := srv.poolOf(key); waiting != 2 || starting != 0 {
		t.Errorf("a start the quota refused took from the pool: %d waiting, %d starting", waiting, starting)
	}
	(&sb{srv: srv, key: key, ns: "quota", name: "first"}).stop()
	assertNoLeftovers(t, home)
}

// Every front-end starts sandboxes through the same service, so all get
// the pool: JSON-RPC's sandbox.start, MCP's sandbox_start and the v1
// API's create.
func TestWarmPoolEveryFrontEnd(t *testing.T) {
	t.Parallel()
	home := pooledHome(t, "")
	srv := startServer(t, home)
	key := keygen(t, home)

	if out, _, err := msb(t, home, "server", "status"); err != nil || !strings.Contains(out, "warm pool:      2 × microsandbox/python, 64 MiB each\n") {
		t.Errorf("status with the default pool: %v\n%s", err, out)
	}
	srv.waitPoolFull(key)
	srv.sandbox(key, "fe", "rpc", nil)

	srv.waitPoolFull(key)
	cs := srv.mustMCPConnect(key)
	if out, isErr := srv.mcpTool(cs, "sandbox_start", map[string]any{"namespace": "fe", "sandbox": "mcp"}); isErr {
		t.Fatalf("MCP sandbox_start: %s", out)
	}

	srv.waitPoolFull(key)
	body := `{"name":"v1","image":{"type":"oci","reference":"microsandbox/python"},"resources":{"vcpus":1,"memory_mib":256},
"env":[{"key":"FROM","value":"v1"}],"labels":{},"mounts":[],"network":{"enabled":true,"strict":false},
"lifecycle":{"ephemeral":false}}`
	req, _ := http.NewRequest("POST", srv.URL+"/v1/sandboxes?start=true&wait_for=running&wait_timeout=60", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(data), `"running"`) {
		t.Fatalf("v1 create: %d %s\n%s", resp.StatusCode, data, srv.out)
	}
	// The v1 API's sandboxes of a key of every namespace are in "default".
	boxes := []*sb{{srv: srv, key: key, ns: "fe", name: "rpc"}, {srv: srv, key: key, ns: "fe", name: "mcp"}, {srv: srv, key: key, ns: "default", name: "v1"}}
	for _, b := range boxes {
		if all, pooled := starts(srv.out.String(), b.ns, b.name); all != 1 || pooled != 1 {
			t.Errorf("the %s front-end's start: %d starts, %d from the pool", b.name, all, pooled)
		}
	}
	if out := text(boxes[2].sh(`echo "$FROM"; cat /sys/fs/cgroup/memory/memory.limit_in_bytes`).Output, "stdout"); out != fmt.Sprintf("v1\n%d\n", 256<<20) {
		t.Errorf("the v1 sandbox taken from the pool: %q, want its env and memory", out)
	}
	for _, b := range boxes {
		b.stop()
	}
	assertNoLeftovers(t, home)
}

// pool.enabled = false: no sandbox waits, every start is cold.
func TestWarmPoolOff(t *testing.T) {
	t.Parallel()
	home := homeWith(t, "[pool]\nenabled = false\n")
	srv := startServer(t, home)
	key := keygen(t, home)
	var m metricsResult
	srv.mustCall(key, "sandbox.metrics.get", map[string]any{"namespace": "*"}, &m)
	if len(m.Pool) > 0 {
		t.Fatalf("the server has a pool with the pool off: %v", m.Pool)
	}
	if w := warmCgroups(home); len(w) > 0 {
		t.Fatalf("sandboxes wait with the pool off: %v", w)
	}
	if out, _, err := msb(t, home, "server", "status"); err != nil || !strings.Contains(out, "warm pool:      off\n") {
		t.Errorf("status with the pool off: %v\n%s", err, out)
	}
	b := srv.sandbox(key, "off", "box", nil)
	if all, pooled := starts(srv.out.String(), "off", "box"); all != 1 || pooled != 0 {
		t.Errorf("with the pool off: %d starts, %d from the pool", all, pooled)
	}
	if _, err := os.Stat(filepath.Join(home, "sandboxes", "off.box")); err != nil {
		t.Errorf("the cold start's directory: %v", err)
	}
	b.stop()
	if w := warmCgroups(home); len(w) > 0 {
		t.Fatalf("sandboxes wait with the pool off: %v", w)
	}
}

// A server killed (kill -9) with sandboxes in its pool, waiting and
// taken: the next server on the same home removes every one of them
// (processes, cgroups, directories) before its own pool fills, records
// the taken one stopped, and starts it again; a clean stop then leaves
// nothing. A leftover that cannot be removed (a host process holds its
// cgroup) does not keep the next server from starting, and is removed by
// the pool's next start of a sandbox once it can be.
func TestWarmPoolAfterCrash(t *testing.T) {
	t.Parallel()
	home := pooledHome(t, "")
	srv := startProcess(t, home)
	key := keygen(t, home)
	srv.waitPoolFull(key)
	srv.sandbox(key, "crash", "pooled", map[string]any{"exec": "sleep 7101"})
	taken := waitHandle(t, home, "7101")
	if !strings.HasPrefix(taken, fmt.Sprintf("warm-%d-", srv.cmd.Process.Pid)) {
		t.Fatalf("the sandbox was not taken from the killed server's pool: %s\n%s", taken, srv.out)
	}
	// A host process in the taken sandbox's pids cgroup: it outlives the
	// sandbox's PID namespace and keeps the cgroup from being removed.
	holder := exec.Command("sleep", "1000")
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { holder.Process.Kill(); holder.Wait() }()
	procs := fmt.Sprintf("/sys/fs/cgroup/pids/msb/%s/%s/cgroup.procs", cgroupOf(home), taken)
	if err := os.WriteFile(procs, []byte(fmt.Sprint(holder.Process.Pid)), 0); err != nil {
		t.Fatal(err)
	}
	srv.waitPoolFull(key)
	old := fmt.Sprintf("warm-%d-", srv.cmd.Process.Pid)
	srv.Kill9()
	// What the crash left: 3 sandboxes (2 waiting, 1 taken), their
	// directories and cgroups. (Their processes end on their own once the
	// agent's connection to the dead server closes.)
	leftDirs := func() []string {
		m, _ := filepath.Glob(filepath.Join(home, "sandboxes", old+"*"))
		return m
	}
	leftCgroups := func() []string {
		m, _ := filepath.Glob(fmt.Sprintf("/sys/fs/cgroup/*/msb/%s/%s*", cgroupOf(home), old))
		return m
	}
	leftProcs := func() []int {
		var pids []int
		files, _ := filepath.Glob("/proc/[0-9]*/cgroup")
		for _, f := range files {
			if data, err := os.ReadFile(f); err == nil && strings.Contains(string(data), "/msb/"+cgroupOf(home)+"/"+old) {
				pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(f)))
				pids = append(pids, pid)
			}
		}
		return pids
	}
	if len(leftDirs()) != 3 || len(leftCgroups()) < 3 {
		t.Fatalf("the crash left directories %v and cgroups %v: want those of 3 pooled sandboxes", leftDirs(), leftCgroups())
	}

	next := startServer(t, home)
	held := fmt.Sprintf("/sys/fs/cgroup/pids/msb/%s/%s", cgroupOf(home), taken)
	if d, c, p := leftDirs(), leftCgroups(), leftProcs(); len(d) > 0 || len(c) != 1 || c[0] != held || len(p) != 1 || p[0] != holder.Process.Pid || sleepsOnHost("7101") > 0 {
		t.Fatalf("after the next server started: directories %v, cgroups %v, processes %v; want only the held cgroup %s and its holder\n%s", d, c, p, held, next.out)
	}
	if !strings.Contains(next.out.String(), "cannot remove a pool's sandbox, a waiting init or a deleted sandbox's cgroups left by an earlier server") || !strings.Contains(next.out.String(), taken) {
		t.Errorf("the failed removal is not in the server log:\n%s", next.out)
	}
	holder.Process.Kill()
	holder.Wait()
	var m metricsResult
	next.mustCall(key, "sandbox.metrics.get", map[string]any{"namespace": "crash"}, &m)
	if len(m.Sandboxes) != 1 || m.Sandboxes[0].Running {
		t.Fatalf("the pooled sandbox after a crash: %s", mustJSON(m))
	}
	next.waitPoolFull(key)
	next.mustCall(key, "sandbox.start", map[string]any{"namespace": "crash", "sandbox": "pooled"}, nil)
	if _, pooled := starts(next.out.String(), "crash", "pooled"); pooled != 1 {
		t.Errorf("the restarted sandbox did not take a waiting sandbox")
	}
	if h := waitHandle(t, home, "7101"); !strings.HasPrefix(h, fmt.Sprintf("warm-%d-", os.Getpid())) {
		t.Errorf("restarted in %s", h)
	}
	// The refill after that start removed the held leftover, now free.
	waitFor(t, func() bool { return len(leftCgroups()) == 0 })
	next.Stop() // checks that no cgroup and no sandbox directory is left
	assertNoLeftovers(t, home)
	if n := sleepsOnHost("7101"); n > 0 {
		t.Errorf("%d processes of the restarted sandbox outlive the server's stop", n)
	}
	if w := warmCgroups(home); len(w) > 0 {
		t.Errorf("the stopped server's pool left %v", w)
	}
}

// readyInitCgroups names the cgroups of home's inits waiting spawned ahead.
func readyInitCgroups(home string) []string {
	dirs, _ := filepath.Glob(fmt.Sprintf("/sys/fs/cgroup/memory/msb/%s/init-*", cgroupOf(home)))
	for i, d := range dirs {
		dirs[i] = filepath.Base(d)
	}
	return dirs
}

// ready_inits through the server: by default two inits wait once the
// first sandbox has started, and the next start takes the oldest (its
// cgroups become the sandbox's); with ready_inits = 0 none ever waits.
// msb server status says which.
func TestReadyInitsSetting(t *testing.T) {
	t.Parallel()
	for _, n := range []int{2, 0} {
		home := homeWith(t, fmt.Sprintf("ready_inits = %d\n[pool]\nenabled = false\n", n))
		srv := startServer(t, home)
		key := keygen(t, home)
		if out, _, err := msb(t, home, "server", "status"); err != nil || !strings.Contains(out, fmt.Sprintf("ready inits:    %d\n", n)) {
			t.Errorf("status with ready_inits = %d: %v\n%s", n, err, out)
		}
		if w := readyInitCgroups(home); len(w) > 0 {
			t.Errorf("inits wait before the first start: %v", w)
		}
		first := srv.sandbox(key, "ready", "first", nil)
		waitFor(t, func() bool { return len(readyInitCgroups(home)) == n })
		waiting := readyInitCgroups(home)
		time.Sleep(100 * time.Millisecond) // and no more come
		if got := readyInitCgroups(home); len(got) != n {
			t.Fatalf("ready_inits = %d: %d inits wait: %v", n, len(got), got)
		}
		second := srv.sandbox(key, "ready", "second", nil)
		if c := second.sh("echo ok"); text(c.Output, "stdout") != "ok\n" {
			t.Errorf("the second sandbox: %+v", c)
		}
		if n > 0 {
			// The oldest has the lowest number: init-<pid>-<token>-<n>.
			num := func(h string) int { i, _ := strconv.Atoi(h[strings.LastIndex(h, "-")+1:]); return i }
			oldest := waiting[0]
			for _, h := range waiting {
				if num(h) < num(oldest) {
					oldest = h
				}
			}
			for _, h := range readyInitCgroups(home) {
				if h == oldest {
					t.Errorf("the second start did not take the oldest waiting init %s (%v)", oldest, readyInitCgroups(home))
				}
			}
		}
		first.stop()
		second.stop()
		srv.Stop()
		if w := readyInitCgroups(home); len(w) > 0 {
			t.Errorf("inits left after the server stopped: %v", w)
		}
		assertNoLeftovers(t, home)
	}
}
