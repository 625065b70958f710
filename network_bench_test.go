package main_test

import (
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/msb-dev/msb/sandbox/network/networktest"
)

// BenchmarkNetwork measures a sandbox's outbound network against the
// host's own, in a world of the benchmark's own (networktest: a namespace
// behind a veth, its HTTP server in this process). The msb server runs as
// its own process (the built binary, dev mode), so that its CPU, the
// netstack's, is measured apart from the client's and the world's. The
// client is curl in both cases, run by sandbox.command.run inside a
// sandbox (network allowed to the world's address) and by this process on
// the host; measurements are interleaved, repeated, and medians reported:
//
//	host-MiB/s, sandbox-MiB/s   download of NETBENCH_BYTES (default 256 MiB)
//	ratio                       median of the per-repeat ratios sandbox/host
//	msb-CPU-s/GiB               the msb process's CPU per GiB through it
//	host-first-byte-us          connect + request + first byte, median of NETBENCH_CONNS
//	sandbox-first-byte-us       the same from a sandbox whose rules are addresses
//	domain-first-byte-us        ... from one whose rules are names (the dial waits for the Host
//	                            the request presents, which must resolve to the address)
//
// Run it with scripts/bench-network.sh (root).
func BenchmarkNetwork(b *testing.B) {
	repeats := envInt(b, "NETBENCH_REPEATS", 5)
	size := envInt(b, "NETBENCH_BYTES", 256<<20)
	conns := envInt(b, "NETBENCH_CONNS", 200)
	w := networktest.New(b)
	home := netHome(b, w, "")
	srv := startProcess(b, home, "--dev")
	byAddr := srv.sandbox("", "bench", "byaddr", map[string]any{"cpus": 2,
		"network": map[string]any{"allow": []string{w.Plain.String() + ":80"}}})
	byName := srv.sandbox("", "bench", "byname", map[string]any{"cpus": 2,
		"network": map[string]any{"allow": []string{"allowed.test:80"}}})
	url := fmt.Sprintf("http://%s/bytes?n=%d", w.Plain, size)
	first := "http://" + w.Plain.String() + "/"
	// By address with the name in Host: no DNS in the measurement (the
	// link checks the name with its resolver once, then remembers it).
	allowedURL := "http://" + w.Allowed.String() + "/"
	// curl prints the average speed of the transfer (bytes/s), and the
	// time to the first byte of each request (s).
	download := []string{"curl", "-sS", "-o", "/dev/null", "-w", "%{speed_download}\n", url}
	latency := func(u string) []string {
		return []string{"sh", "-c", fmt.Sprintf(`for i in $(seq %d); do curl -sS -o /dev/null -w '%%{time_starttransfer}\n' %s; done`, conns, u)}
	}
	inSandbox := func(box *sb, argv []string) []float64 {
		r := box.run(argv[0], argv[1:]...)
		if r.ExitCode != 0 {
			b.Fatalf("in the sandbox: %v: %s", argv, text(r.Output, ""))
		}
		return floats(b, text(r.Output, "stdout"))
	}
	onHost := func(argv []string) []float64 {
		out, err := exec.Command(argv[0], argv[1:]...).Output()
		if err != nil {
			b.Fatalf("on the host: %v: %v", argv, err)
		}
		return floats(b, string(out))
	}
	pid := serverPid(b, home)
	mib := func(bps float64) float64 { return bps / (1 << 20) }
	var host, sandbox, ratio, cpu, hostLat, addrLat, nameLat []float64
	b.ResetTimer()
	for range b.N {
		for i := 0; i < repeats; i++ {
			cpu0 := procCPU(b, pid)
			s := mib(inSandbox(byAddr, download)[0])
			cpu = append(cpu, (procCPU(b, pid)-cpu0).Seconds()/(float64(size)/(1<<30)))
			h := mib(onHost(download)[0])
			sandbox, host, ratio = append(sandbox, s), append(host, h), append(ratio, s/h)
			addrLat = append(addrLat, median(inSandbox(byAddr, latency(first)))*1e6)
			nameLat = append(nameLat, median(inSandbox(byName, latency("-H 'Host: allowed.test' "+allowedURL)))*1e6)
			hostLat = append(hostLat, median(onHost(latency(first)))*1e6)
		}
	}
	b.StopTimer()
	b.Logf("download of %d MiB, %d repeats, MiB/s: host %v, sandbox %v; ratios %v", size>>20, repeats, rounded(host), rounded(sandbox), rounded2(ratio))
	b.Logf("first byte, µs (medians of %d connections): host %v, sandbox by address %v, by name %v", conns, rounded(hostLat), rounded(addrLat), rounded(nameLat))
	b.ReportMetric(median(host), "host-MiB/s")
	b.ReportMetric(median(sandbox), "sandbox-MiB/s")
	b.ReportMetric(median(ratio), "ratio")
	b.ReportMetric(median(cpu), "msb-CPU-s/GiB")
	b.ReportMetric(median(hostLat), "host-first-byte-us")
	b.ReportMetric(median(addrLat), "sandbox-first-byte-us")
	b.ReportMetric(median(nameLat), "domain-first-byte-us")
}

func envInt(tb testing.TB, name string, def int) int {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		tb.Fatalf("%s=%q is not a positive number", name, s)
	}
	return n
}

func floats(tb testing.TB, s string) []float64 {
	var out []float64
	for _, f := range strings.Fields(s) {
		x, err := strconv.ParseFloat(f, 64)
		if err != nil {
			tb.Fatalf("%q is not a number (output %q)", f, s)
		}
		out = append(out, x)
	}
	if len(out) == 0 {
		tb.Fatalf("no numbers in %q", s)
	}
	return out
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func rounded(xs []float64) []int {
	out := make([]int, len(xs))
	for i, x := range xs {
		out[i] = int(x + 0.5)
	}
	return out
}

func rounded2(xs []float64) []string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = strconv.FormatFloat(x, 'f', 2, 64)
	}
	return out
}

// serverPid is the pid of the server running for home.
func serverPid(tb testing.TB, home string) int {
	data, err := os.ReadFile(home + "/server.pid")
	if err != nil {
		tb.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		tb.Fatal(err)
	}
	return pid
}

// procCPU is the user+system CPU time process pid has used.
func procCPU(tb testing.TB, pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		tb.Fatal(err)
	}
	// After the command name (which may hold spaces): utime and stime are
	// fields 14 and 15, in clock ticks.
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}
