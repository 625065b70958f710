package main_test

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestConnectionLimits reproduces the attack of connections that send
// headers and one byte of body, and never more: they hold a descriptor
// each, and once they filled the server's table every tenant's calls
// timed out. Now each address has a bounded share of connections, other
// addresses are served meanwhile, and the body deadline ends them.
func TestConnectionLimits(t *testing.T) {
	t.Parallel()
	home := homeWith(t, "max_connections = 64\nmax_connections_per_address = 16\n")
	srv := startServer(t, home, "--body-timeout", "2s")
	addr := strings.TrimPrefix(srv.URL, "http://")
	dial := func(from string) (net.Conn, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
		return d.Dial("tcp", addr)
	}
	// healthy reports whether a health check from address from is answered.
	healthy := func(from string) bool {
		c, err := dial(from)
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("GET /api/v1/health HTTP/1.1\r\nHost: msb\r\nConnection: close\r\n\r\n")); err != nil {
			return false
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}

	// The attacker's 16 slow bodies from 127.0.0.1.
	var slow []net.Conn
	for range 16 {
		c, err := dial("127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte("POST /api/v1/rpc HTTP/1.1\r\nHost: msb\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")); err != nil {
			t.Fatal(err)
		}
		slow = append(slow, c)
	}
	// Give the server the time to accept them all.
	waitFor(t, func() bool { return !healthy("127.0.0.1") })
	// Another address is served while they hold theirs.
	if !healthy("127.0.0.2") {
		t.Fatal("a call from 127.0.0.2 failed while 127.0.0.1 held its share of connections")
	}
	// The body deadline ends every slow body: the server answers or
	// closes each, within a few seconds, and the address is served again.
	var wg sync.WaitGroup
	ended := make(chan time.Duration, len(slow))
	start := time.Now()
	for _, c := range slow {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetReadDeadline(time.Now().Add(30 * time.Second))
			buf := make([]byte, 4096)
			for {
				if _, err := c.Read(buf); err != nil {
					if ne, ok := err.(net.Error); ok && ne.Timeout() {
						return // never closed: reported below
					}
					ended <- time.Since(start)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(ended)
	if len(ended) != len(slow) {
		t.Fatalf("%d of %d slow bodies still open after 30s", len(slow)-len(ended), len(slow))
	}
	waitFor(t, func() bool { return healthy("127.0.0.1") })
}

// TestCallsInFlightPerKey: one key cannot hold more calls under way than
// max_calls_per_key; another key is served meanwhile.
func TestCallsInFlightPerKey(t *testing.T) {
	t.Parallel()
	home := homeWith(t, "max_calls_per_key = 2\n")
	srv := startServer(t, home)
	key := keygen(t, home, "--namespace", "busy")
	other := keygen(t, home, "--namespace", "busy")
	box := srv.sandbox(key, "busy", "sleeper", map[string]any{"image": "host", "memory": 64})
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var r commandResult
			srv.mustCall(key, "sandbox.command.run", box.params(map[string]any{"command": "sh", "args": []string{"-c", "touch /tmp/started.$$; sleep 3"}}), &r)
			if !r.Success {
				t.Errorf("a call within the bound: %+v", r)
			}
		}()
	}
	// Once both are under way (seen with the other key), a third is refused.
	waitFor(t, func() bool {
		var r commandResult
		srv.mustCall(other, "sandbox.command.run", box.params(map[string]any{"command": "sh", "args": []string{"-c", "ls /tmp | grep -c started"}}), &r)
		return strings.TrimSpace(text(r.Output, "stdout")) == "2"
	})
	srv.wantError(key, "sandbox.command.run", box.params(map[string]any{"command": "true"}), 429, -32005, "max_calls_per_key")
	var r commandResult
	srv.mustCall(other, "sandbox.command.run", box.params(map[string]any{"command": "true"}), &r)
	if !r.Success {
		t.Fatalf("another key's call: %+v", r)
	}
	wg.Wait()
	srv.mustCall(key, "sandbox.command.run", box.params(map[string]any{"command": "true"}), &r)
	box.stop()
}

// TestOutputMemoryIsBounded reproduces 24 concurrent calls printing a lot
// each (16 MiB took the server to 1.36 GB; 12 MiB here, in long lines, stay
// within a call's own cap): the output the server holds is
// bounded by output_memory, calls past it are cut and say so, and the
// server's peak memory grows by a bounded amount.
func TestOutputMemoryIsBounded(t *testing.T) {
	t.Parallel()
	home := homeWith(t, "output_memory = 64\nmax_calls_per_key = 64\n")
	srv := startProcess(t, home)
	key := keygen(t, home)
	box := srv.sandbox(key, "loud", "printer", map[string]any{"image": "host", "memory": 256, "cpus": 2})
	box.run("true")
	pid := srv.cmd.Process.Pid
	// Reset the server's peak resident size (VmHWM) to what it uses now.
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		t.Fatal(err)
	}
	before := procStatusKiB(t, pid, "VmHWM")
	const calls = 24
	var wg sync.WaitGroup
	var mu sync.Mutex
	full, cut := 0, 0
	for range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var r commandResult
			srv.mustCall(key, "sandbox.command.run", box.params(map[string]any{"command": "sh", "args": []string{"-c", "head -c 12582912 /dev/zero | tr '\\0' a"}}), &r)
			out := text(r.Output, "")
			mu.Lock()
			defer mu.Unlock()
			switch {
			case strings.Contains(out, "output_memory in config.toml"):
				cut++
			case len(out) >= 12<<20:
				full++
			default:
				t.Errorf("a call's output is %d bytes, neither whole nor cut with a notice", len(out))
			}
		}()
	}
	wg.Wait()
	grown := procStatusKiB(t, pid, "VmHWM") - before
	t.Logf("%d calls: %d whole, %d cut; server peak grew by %d MiB", calls, full, cut, grown>>10)
	if full == 0 || cut == 0 {
		t.Errorf("%d whole and %d cut calls: want some of each with output_memory = 64", full, cut)
	}
	// 64 MiB of budget, plus the buffers of 24 connections and calls.
	if grown > 256<<10 {
		t.Errorf("server peak memory grew by %d MiB during the calls: want under 256", grown>>10)
	}
	box.stop()
}

// procStatusKiB reads a "kB" field of /proc/PID/status.
func procStatusKiB(t *testing.T, pid int, field string) int {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			var n int
			fmt.Sscanf(strings.TrimSpace(rest), "%d", &n)
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// TestTotalPidsCeiling reproduces the exhaustion of the host's process
// table by many sandboxes together: the running sandboxes' pids limits
// may add up to total_pids at most, so a start past it is refused with an
// error naming the setting, every sandbox's fork bomb fails (EAGAIN) at
// its own limit, and the server keeps answering. The same ceilings are on
// the sandboxes' parent cgroup.
func TestTotalPidsCeiling(t *testing.T) {
	t.Parallel()
	// No warm pool: its waiting sandboxes would hold pids too.
	home := homeWith(t, "sandbox_pids = 64\ntotal_pids = 150\ntotal_memory = 4096\n[pool]\nenabled = false\n")
	srv := startServer(t, home)
	key := keygen(t, home)
	// Idle sandboxes run a few processes: more of them start than their
	// limits (3 x 64) would fit under the ceiling.
	var idle []*sb
	for _, name := range []string{"idle1", "idle2", "idle3"} {
		idle = append(idle, srv.sandbox(key, "ns", name, map[string]any{"image": "host", "memory": 64}))
	}
	for _, s := range idle {
		s.stop()
	}
	var hogs []*sb
	for _, name := range []string{"hog1", "hog2"} {
		hog := srv.sandbox(key, "ns", name, map[string]any{"image": "host", "memory": 64})
		r := hog.sh(`for i in $(seq 200); do sleep 600 >/dev/null 2>&1 & done 2>&1; echo looped`)
		if !strings.Contains(strings.ToLower(text(r.Output, "")), "fork") {
			t.Fatalf("200 processes in a sandbox of 64 pids: %s", mustJSON(r))
		}
		hogs = append(hogs, hog)
	}
	srv.wantError(key, "sandbox.start", map[string]any{"namespace": "other", "sandbox": "third", "config": map[string]any{"image": "host", "memory": 64}},
		200, -32001, "ceiling of 150 (total_pids in config.toml)")
	start := time.Now()
	for _, hog := range hogs {
		if r := hog.run("echo", "alive"); text(r.Output, "stdout") != "alive\n" {
			t.Fatalf("a sandbox at its pids limit: %s", mustJSON(r))
		}
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("calls took %v with the sandboxes at their limits", d)
	}
	if v := parentCgroup(t, home, "pids", "pids.max"); v != "150" {
		t.Fatalf("parent pids ceiling %q, want 150", v)
	}
	if v := parentCgroup(t, home, "memory", "memory.limit_in_bytes"); v != strconv.Itoa(4096<<20) {
		t.Fatalf("parent memory ceiling %q, want %d", v, 4096<<20)
	}
	hogs[0].stop()
	srv.sandbox(key, "other", "third", map[string]any{"image": "host", "memory": 64}).stop()
	hogs[1].stop()
}

// parentCgroup reads file of the sandboxes' parent cgroup of the server
// of home in the v1 hierarchy ctrl.
func parentCgroup(t *testing.T, home, ctrl, file string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("/sys/fs/cgroup", ctrl, "msb", cgroupOf(home), file))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(data))
}

// TestTotalMemoryCeiling reproduces sandboxes that together ask for more
// memory than the host has (each within max_memory): the ceiling on their
// parent cgroup (total_memory) makes the kernel reclaim and then kill a
// process of a sandbox, not of the host, and the server keeps answering.
func TestTotalMemoryCeiling(t *testing.T) {
	t.Parallel()
	// No warm pool: its waiting sandboxes would hold memory too.
	home := homeWith(t, "total_memory = 300\n[pool]\nenabled = false\n")
	srv := startServer(t, home)
	key := keygen(t, home)
	// Each holds 160 MiB, under its own limit of 256: together they pass
	// the total of 300.
	hold := "import time\nb = bytearray(160 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\nprint('holding', flush=True)\ntime.sleep(600)"
	var boxes []*sb
	for _, name := range []string{"m1", "m2"} {
		b := srv.sandbox(key, "mem", name, map[string]any{"image": "host", "memory": 256})
		srv.mustCall(key, "sandbox.command.run", b.params(map[string]any{"command": "sh",
			"args": []string{"-c", "python3 -c \"$0\" > /tmp/out 2>&1 & echo $! > /tmp/pid", hold}}), nil)
		boxes = append(boxes, b)
	}
	// Both have allocated, or one was killed on the way.
	alive := 0
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
		alive = 0
		done := 0
		for _, b := range boxes {
			// A killed process stays a zombie until the portal reaps it,
			// and kill -0 succeeds on a zombie: its state says.
			out := text(b.sh(`cat /tmp/out; s=$(grep '^State:' /proc/$(cat /tmp/pid)/status 2>/dev/null); case "$s" in ""|*Z*|*X*) ;; *) echo running;; esac`).Output, "stdout")
			if strings.Contains(out, "running") {
				alive++
				if strings.Contains(out, "holding") {
					done++
				}
			}
		}
		if alive < 2 || done == 2 {
			break
		}
	}
	if alive != 1 {
		t.Fatalf("%d of two sandboxes holding 160 MiB each under a total of 300 MiB still run theirs, want 1", alive)
	}
	for _, b := range boxes {
		if r := b.run("echo", "alive"); text(r.Output, "stdout") != "alive\n" {
			t.Fatalf("a sandbox's agent after the OOM kill: %s", mustJSON(r))
		}
	}
	if v := parentCgroup(t, home, "memory", "memory.limit_in_bytes"); v != strconv.Itoa(300<<20) {
		t.Fatalf("parent memory ceiling %q", v)
	}
	for _, b := range boxes {
		b.stop()
	}
}
