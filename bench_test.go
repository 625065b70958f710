package main_test

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// p50 times f n times and returns the median.
func p50(n int, f func()) time.Duration {
	d := make([]time.Duration, n)
	for i := range d {
		start := time.Now()
		f()
		d[i] = time.Since(start)
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[n/2]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func readInt(tb testing.TB, path string) int64 {
	data, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
	if err != nil {
		tb.Fatal(err)
	}
	return n
}

// cgroupPSS sums the proportional set size of every process in a cgroup.
func cgroupPSS(tb testing.TB, cgroup string) int64 {
	procs, err := os.ReadFile(cgroup + "/cgroup.procs")
	if err != nil {
		tb.Fatal(err)
	}
	var total int64
	for _, pid := range strings.Fields(string(procs)) {
		f, err := os.Open("/proc/" + pid + "/smaps_rollup")
		if err != nil {
			continue // exited
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			var kb int64
			if n, _ := fmt.Sscanf(sc.Text(), "Pss: %d kB", &kb); n == 1 {
				total += kb << 10
			}
		}
		f.Close()
	}
	return total
}

// BenchmarkSandbox measures the sandbox paths of the real server (dev mode,
// over HTTP on loopback) against baselines measured in the same run on the
// host, and reports each p50 and its ratio to the baseline:
//
//	start/python-c       sandbox.start vs a bare `python3 -c 'print(1)'`   (target <= 1.5)
//	exec-true/host-true  sandbox.command.run of true vs spawning /bin/true (target <= 5)
//	repl/python-c        warm sandbox.repl.run of print(1) vs python3 -c  (target <= 0.25)
//	idle-pss-MiB         host memory per idle sandbox (PSS of its processes)
//	idle-cgroup-MiB      what its memory cgroup is charged, page cache included
//
// Run it with scripts/bench-sandbox.sh.
func BenchmarkSandbox(b *testing.B) {
	home := b.TempDir()
	srv := startServer(b, home, "--dev")
	must := func(method string, params map[string]any) {
		if _, r := srv.call("", method, params); r.Error != nil {
			b.Fatalf("%s: %s", method, r.Error.Message)
		}
	}
	for i := 0; i < b.N; i++ {
		python := p50(21, func() {
			if out, err := exec.Command("/usr/bin/python3", "-c", "print(1)").Output(); err != nil || string(out) != "1\n" {
				b.Fatalf("python3: %v %q", err, out)
			}
		})
		hostTrue := p50(201, func() {
			if err := exec.Command("/bin/true").Run(); err != nil {
				b.Fatal(err)
			}
		})
		n := 0
		start := p50(21, func() {
			n++
			must("sandbox.start", map[string]any{"namespace": "bench", "sandbox": fmt.Sprintf("s%d", n)})
		})
		for j := 1; j <= n; j++ {
			must("sandbox.stop", map[string]any{"namespace": "bench", "sandbox": fmt.Sprintf("s%d", j)})
		}

		must("sandbox.start", map[string]any{"namespace": "bench", "sandbox": "warm"})
		target := map[string]any{"namespace": "bench", "sandbox": "warm"}
		execTrue := p50(201, func() {
			must("sandbox.command.run", map[string]any{"namespace": "bench", "sandbox": "warm", "command": "true"})
		})
		must("sandbox.repl.run", map[string]any{"namespace": "bench", "sandbox": "warm", "language": "python", "code": "print(1)"})
		repl := p50(201, func() {
			must("sandbox.repl.run", map[string]any{"namespace": "bench", "sandbox": "warm", "language": "python", "code": "print(1)"})
		})
		must("sandbox.stop", target)

		// Host memory per idle sandbox: the proportional set size of its
		// processes, and what its memory cgroup is charged (page cache too).
		const idle = 10
		for j := 0; j < idle; j++ {
			must("sandbox.start", map[string]any{"namespace": "bench", "sandbox": fmt.Sprintf("idle%d", j)})
		}
		time.Sleep(time.Second)
		var pss, charged int64
		sum := sha256.Sum256([]byte(home))
		for j := 0; j < idle; j++ {
			cg := fmt.Sprintf("/sys/fs/cgroup/memory/msb/%s/bench.idle%d", hex.EncodeToString(sum[:6]), j)
			pss += cgroupPSS(b, cg)
			charged += readInt(b, cg+"/memory.usage_in_bytes")
		}
		for j := 0; j < idle; j++ {
			must("sandbox.stop", map[string]any{"namespace": "bench", "sandbox": fmt.Sprintf("idle%d", j)})
		}

		b.ReportMetric(ms(python), "python-c-ms")
		b.ReportMetric(ms(start), "start-ms")
		b.ReportMetric(float64(start)/float64(python), "start/python-c")
		b.ReportMetric(ms(hostTrue), "host-true-ms")
		b.ReportMetric(ms(execTrue), "exec-true-ms")
		b.ReportMetric(float64(execTrue)/float64(hostTrue), "exec-true/host-true")
		b.ReportMetric(ms(repl), "repl-ms")
		b.ReportMetric(float64(repl)/float64(python), "repl/python-c")
		b.ReportMetric(float64(pss)/idle/(1<<20), "idle-pss-MiB")
		b.ReportMetric(float64(charged)/idle/(1<<20), "idle-cgroup-MiB")
	}
	if strings.Contains(srv.out.String(), "level=ERROR") {
		b.Fatalf("server logged errors:\n%s", srv.out)
	}
}
