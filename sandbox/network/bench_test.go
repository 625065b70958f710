package network

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/msb-dev/msb/sandbox/network/networktest"
)

var (
	netBench   = flag.Bool("netbench", false, "run the throughput and latency comparison (TestNetBench)")
	benchReps  = flag.Int("netbench.repeats", 7, "repeats of each measurement")
	benchBytes = flag.Int64("netbench.bytes", 256<<20, "bytes per download")
	benchConns = flag.Int("netbench.conns", 200, "connections per latency measurement")
	benchOnly  = flag.String("netbench.only", "", "link or host: measure one path only (for profiling)")
	benchPin   = flag.Bool("netbench.pin", false, "pin the client and server to CPU 0 and this process (the netstack) to CPU 1")
	benchAB    = flag.String("netbench.ab", "", "tuning variants to compare, ';'-separated, each copy=N,snd=N,rcv=N,sndmax=N,rcvmax=N,wnd=N,mtu=N,qdisc=N,bulk=N")
)

// variant is one link configuration under test.
type variant struct {
	name      string
	sb        *sandbox
	mib, cpu  []float64 // MiB/s; netstack CPU s/GiB
	cli, srv  []float64 // client and server CPU s/GiB
	lat, nlat []float64
}

// newVariant applies a tuning string and attaches a sandbox with it.
func newVariant(t *testing.T, w *networktest.World, spec string, policy Policy) *variant {
	saved := tuning
	defer func() { tuning = saved }()
	mtu := 0
	if spec != "" {
		for _, kv := range strings.Split(spec, ",") {
			k, v, _ := strings.Cut(kv, "=")
			n, err := strconv.Atoi(v)
			if err != nil {
				t.Fatalf("tune %q", kv)
			}
			switch k {
			case "copy":
				tuning.copyBuffer = n
			case "snd":
				tuning.sndBuf.Default, tuning.sndBuf.Max = n, n
			case "rcv":
				tuning.rcvBuf.Default, tuning.rcvBuf.Max = n, n
			case "sndmax":
				tuning.sndBuf.Max = n
			case "rcvmax":
				tuning.rcvBuf.Max = n
			case "bulk":
				tuning.bulkCopies = n
			case "wnd":
				tuning.rcvWnd = n
			case "mtu":
				mtu = n
			case "qdisc":
				tuning.qdiscLen = n
			default:
				t.Fatalf("tune %q", kv)
			}
		}
	}
	name := spec
	if name == "" {
		name = "default"
	}
	v := &variant{name: name, sb: newSandbox(t, w, Config{MTU: mtu, Policy: policy})}
	return v
}

// TestNetBench compares downloading over HTTP from the test world through
// a sandbox's link with downloading from the host's namespace directly,
// and the connect+first-byte latency of both. The client and the server
// are separate processes (this binary re-executed), as with msb, where the
// server process hosts only the netstack. The runs are interleaved, and
// medians of the repeats are reported. Run as root:
//
//	go test -run NetBench -netbench -v ./network
func TestNetBench(t *testing.T) {
	if !*netBench {
		t.Skip("pass -netbench")
	}
	if *benchPin {
		pinSelf(t)
	}
	w := networktest.New(t)
	serverCPU := startHelperServer(t, w, addr(w.Plain, 8080))
	startHelperServer(t, w, addr(w.Allowed, 8080))
	byAddrPolicy := MustParsePolicy(Deny, "allow "+w.Plain.String())
	var vs []*variant
	for _, spec := range strings.Split(*benchAB, ";") {
		vs = append(vs, newVariant(t, w, spec, byAddrPolicy))
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, v := range vs {
				t.Logf("stats %s: %+v\n%s", v.name, v.sb.link.Stats(), debugStack(v.sb.link))
			}
			buf := make([]byte, 1<<20)
			os.WriteFile("/tmp/netbench-goroutines.txt", buf[:runtime.Stack(buf, true)], 0o644)
		}
	})
	// A sandbox whose policy has domain rules: its connections wait for
	// the name they present before anything is dialed.
	byName := newSandbox(t, w, Config{Policy: MustParsePolicy(Deny, "deny *.evil.test", "allow allowed.test")})
	if _, err := byName.resolver("10.0.2.2:53").LookupNetIP(context.Background(), "ip4", "allowed.test"); err != nil {
		t.Fatal(err)
	}

	size := strconv.FormatInt(*benchBytes, 10)
	conns := strconv.Itoa(*benchConns)
	latency := *benchOnly == "" && *benchConns > 0
	var hostMiB, hostLat, nameLat, pairRatio, hostCli, hostSrv []float64
	gib := float64(*benchBytes) / (1 << 30)
	for i := 0; i < *benchReps; i++ {
		for _, v := range vs {
			if *benchOnly == "host" {
				break
			}
			cpu0, srv0 := selfCPU(), serverCPU()
			res := runClient(t, v.sb.ns, "", "download", addr(w.Plain, 8080), size)
			v.mib = append(v.mib, res.MiBps)
			v.cpu = append(v.cpu, (selfCPU()-cpu0).Seconds()/gib)
			v.srv = append(v.srv, (serverCPU()-srv0).Seconds()/gib)
			v.cli = append(v.cli, res.CPU.Seconds()/gib)
		}
		if *benchOnly != "link" {
			srv0 := serverCPU()
			res := runClient(t, nil, w.HostIf, "download", addr(w.Plain, 8080), size)
			hostMiB = append(hostMiB, res.MiBps)
			hostSrv = append(hostSrv, (serverCPU()-srv0).Seconds()/gib)
			hostCli = append(hostCli, res.CPU.Seconds()/gib)
			if *benchOnly == "" {
				pairRatio = append(pairRatio, vs[0].mib[i]/hostMiB[i])
			}
		}
		if latency {
			for _, v := range vs {
				v.lat = append(v.lat, median(runClient(t, v.sb.ns, "", "latency", addr(w.Plain, 8080), conns).Latencies))
			}
			nameLat = append(nameLat, median(runClient(t, byName.ns, "", "latency", addr(w.Allowed, 8080), conns).Latencies))
			hostLat = append(hostLat, median(runClient(t, nil, w.HostIf, "latency", addr(w.Plain, 8080), conns).Latencies))
		}
	}
	mh := median(hostMiB)
	t.Logf("download of %d MiB, %d repeats, medians:", *benchBytes>>20, *benchReps)
	if len(hostMiB) > 0 {
		t.Logf("  host (direct)      %6.0f MiB/s  runs%s", mh, fmtRuns(hostMiB, "%.0f"))
		t.Logf("      CPU s/GiB: client %.2f, server %.2f", median(hostCli), median(hostSrv))
	}
	for _, v := range vs {
		if len(v.mib) == 0 {
			continue
		}
		ratio := ""
		if mh > 0 {
			ratio = fmt.Sprintf(" (%.2fx host)", median(v.mib)/mh)
		}
		t.Logf("  link %-13s %6.0f MiB/s%s  runs%s", v.name, median(v.mib), ratio, fmtRuns(v.mib, "%.0f"))
		t.Logf("      CPU s/GiB: client %.2f, server %.2f, netstack (msb's process) %.2f", median(v.cli), median(v.srv), median(v.cpu))
	}
	if len(pairRatio) > 0 {
		t.Logf("  median of per-repeat ratios link/host: %.2f  runs%s", median(pairRatio), fmtRuns(pairRatio, "%.2f"))
	}
	if latency {
		t.Logf("connect + request + first byte, median over repeats of the median of %d connections:", *benchConns)
		t.Logf("  host (direct)              %5.0f µs", median(hostLat))
		for _, v := range vs {
			t.Logf("  link %-13s (by CIDR)  %5.0f µs (+%.0f)", v.name, median(v.lat), median(v.lat)-median(hostLat))
		}
		t.Logf("  link default (domain rule) %5.0f µs (+%.0f)", median(nameLat), median(nameLat)-median(hostLat))
	}
	for _, v := range vs {
		t.Logf("stats %s: %+v", v.name, v.sb.link.Stats())
	}
}

func fmtRuns(xs []float64, format string) string {
	s := ""
	for _, x := range xs {
		s += " " + fmt.Sprintf(format, x)
	}
	return s
}

// selfCPU is the user+system CPU time this process has used.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// download fetches size bytes from the world's /bytes through dial and
// returns MiB/s.
func download(t *testing.T, dial func(ctx context.Context, network, addr string) (net.Conn, error), target string, size int64) float64 {
	ctx := context.Background()
	start := time.Now()
	c, err := dial(ctx, "tcp", target)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET /bytes?n=%d HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n", size)
	resp, err := http.ReadResponse(bufioReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.CopyBuffer(io.Discard, resp.Body, make([]byte, 1<<20))
	if err != nil || n != size {
		t.Fatalf("read %d of %d: %v", n, size, err)
	}
	return float64(size) / (1 << 20) / time.Since(start).Seconds()
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
