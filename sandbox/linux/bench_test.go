package linux_test

import (
	"context"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/msb-dev/msb/sandbox"
	"github.com/msb-dev/msb/sandbox/image"
	"github.com/msb-dev/msb/sandbox/linux"
	"github.com/msb-dev/msb/sandbox/sandboxtest"
)

// benchEngine returns a Linux engine of its own (name tells engines of
// one benchmark apart), removed with its cgroups when b ends.
func benchEngine(b *testing.B, name string, userns bool) *linux.Engine {
	cfg := testConfig(b, b.TempDir(), "msb-bench-"+name)
	cfg.UserNamespaces = userns
	cfg.ReadyDiskMiB = 2048 // BenchmarkIsolationStart's disks
	e, err := linux.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { e.Close() })
	return e
}

// hostRoot is the root file system of the host image.
func hostRoot(b *testing.B) sandbox.RootFS {
	root, err := image.Host()
	if err != nil {
		b.Fatal(err)
	}
	return root
}

// BenchmarkLifecycle measures one sandbox's whole life, phase by phase,
// and reports each phase's median:
// go test ./sandbox/linux -run '^$' -bench Lifecycle -benchtime 200x.
func BenchmarkLifecycle(b *testing.B) {
	e := benchEngine(b, "", false)
	root := hostRoot(b)
	spec := sandbox.Spec{Root: root, Env: image.HostEnv(), Workdir: "/workspace", MemoryMiB: 512, CPUs: 1, Pids: 1024}
	ctx := context.Background()
	var create, start, execTrue, remove []time.Duration
	for i := 0; b.Loop(); i++ {
		id := sandboxtest.ID(b, "bench", "s"+strconv.Itoa(i))
		t0 := time.Now()
		if err := e.Create(ctx, id, spec); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := e.Start(ctx, id); err != nil {
			b.Fatal(err)
		}
		t2 := time.Now()
		if _, err := e.Exec(ctx, id, sandbox.ExecRequest{Command: "true"}); err != nil {
			b.Fatal(err)
		}
		t3 := time.Now()
		if err := e.Stop(ctx, id); err != nil {
			b.Fatal(err)
		}
		if err := e.Delete(ctx, id); err != nil {
			b.Fatal(err)
		}
		create, start = append(create, t1.Sub(t0)), append(start, t2.Sub(t1))
		execTrue, remove = append(execTrue, t3.Sub(t2)), append(remove, time.Since(t3))
	}
	b.ReportMetric(median(create), "create-ms")
	b.ReportMetric(median(start), "start+ping-ms")
	b.ReportMetric(median(execTrue), "exec-true-ms")
	b.ReportMetric(median(remove), "stop+delete-ms")
}

// BenchmarkAdopt measures the engine's part of a start served from a warm
// pool: Adopt of a prestarted sandbox with a start's own config (memory,
// CPUs, environment, working directory, hostname), and its first exec;
// the prestart is not timed:
// go test ./sandbox/linux -run '^$' -bench Adopt -benchtime 200x.
func BenchmarkAdopt(b *testing.B) {
	e := benchEngine(b, "", false)
	root := hostRoot(b)
	warm := sandbox.Spec{Root: root, Env: image.HostEnv(), Workdir: "/workspace", MemoryMiB: 64, CPUs: 1, Pids: 1024}
	warm.Root.Dirs = append(warm.Root.Dirs, "workspace")
	ctx := context.Background()
	var adopt, execTrue []time.Duration
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		h, err := e.Prestart(ctx, warm)
		if err != nil {
			b.Fatal(err)
		}
		id := sandboxtest.ID(b, "bench", "a"+strconv.Itoa(i))
		spec := warm
		spec.MemoryMiB, spec.CPUs, spec.Workdir, spec.Hostname = 256, 2, "/work", "a"+strconv.Itoa(i)
		spec.Env = append(append([]string(nil), warm.Env...), "BENCH=1")
		spec.Root.Dirs = append(append([]string(nil), root.Dirs...), "work")
		b.StartTimer()
		t0 := time.Now()
		if err := e.Adopt(ctx, h, id, spec); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if _, err := e.Exec(ctx, id, sandbox.ExecRequest{Command: "true"}); err != nil {
			b.Fatal(err)
		}
		adopt, execTrue = append(adopt, t1.Sub(t0)), append(execTrue, time.Since(t1))
		b.StopTimer()
		if err := e.Delete(ctx, id); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(median(adopt), "adopt-ms")
	b.ReportMetric(median(execTrue), "exec-true-ms")
}

// median returns the median of d in milliseconds.
func median(d []time.Duration) float64 {
	d = append([]time.Duration(nil), d...)
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return float64(d[len(d)/2].Microseconds()) / 1000
}

// BenchmarkThroughput starts and stops sandboxes of the host image from
// several goroutines at once and reports cold starts per second and the
// CPU each start+stop costs the engine (this process) and the sandboxes'
// processes (its children: the spawner, the inits and theirs), for bare
// sandboxes (no disk, no user namespace) and for sandboxes as the server
// makes them by default (a 2 GiB disk and a user namespace of their own):
// go test ./sandbox/linux -run '^$' -bench Throughput -benchtime 400x.
func BenchmarkThroughput(b *testing.B) {
	b.Run("bare", func(b *testing.B) { benchThroughput(b, false, 0) })
	b.Run("disk+userns", func(b *testing.B) { benchThroughput(b, true, 2048) })
}

func benchThroughput(b *testing.B, userns bool, diskMiB int) {
	e := benchEngine(b, "", userns)
	root := hostRoot(b)
	spec := sandbox.Spec{Root: root, Env: image.HostEnv(), Workdir: "/workspace", MemoryMiB: 512, CPUs: 1, Pids: 1024, DiskMiB: diskMiB}
	ctx := context.Background()
	workers := 2 * runtime.NumCPU()
	var next atomic.Int64
	// This process's CPU (the server's), and that of its children: the
	// spawner, the inits and every process of theirs.
	cpu := func() (server, inits time.Duration) {
		self, children, err := sandboxtest.ProcessCPU(os.Getpid())
		if err != nil {
			b.Fatal(err)
		}
		return self, children
	}
	b.ResetTimer()
	t0 := time.Now()
	s0, i0 := cpu()
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(b.N) {
					return
				}
				id := sandboxtest.ID(b, "tput", "s"+strconv.FormatInt(i, 10))
				if err := e.Create(ctx, id, spec); err != nil {
					b.Error(err)
					return
				}
				if err := e.Start(ctx, id); err != nil {
					b.Error(err)
				}
				if err := e.Delete(ctx, id); err != nil {
					b.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	wall := time.Since(t0)
	s1, i1 := cpu()
	perStart := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(b.N) / 1000 }
	b.ReportMetric(float64(b.N)/wall.Seconds(), "starts/s")
	b.ReportMetric(perStart(s1-s0+i1-i0), "cpu-ms/start+stop")
	b.ReportMetric(perStart(s1-s0), "server-cpu-ms")
	b.ReportMetric(perStart(i1-i0), "sandbox-cpu-ms") // the spawner and the inits
}

// BenchmarkIsolationStart measures what a sandbox's own disk and user
// namespace cost its start: each round starts (Create + Start, as
// sandbox.start does) and deletes one sandbox of each variant, in rotating
// order: without either, with a disk of 2 GiB, and with the disk in a user
// namespace of its own. It reports the medians and their ratios to the
// first:
// go test ./sandbox/linux -run '^$' -bench IsolationStart -benchtime 100x.
func BenchmarkIsolationStart(b *testing.B) {
	plain, userns := benchEngine(b, "plain", false), benchEngine(b, "userns", true)
	root := hostRoot(b)
	ctx := context.Background()
	variants := []struct {
		name string
		e    *linux.Engine
		disk int
	}{{"none", plain, 0}, {"disk", plain, 2048}, {"disk+userns", userns, 2048}}
	starts := make([][]time.Duration, len(variants))
	deletes := make([][]time.Duration, len(variants))
	for i := 0; b.Loop(); i++ {
		for k := range variants {
			v := (k + i) % len(variants) // rotate which goes first
			vr := variants[v]
			spec := sandbox.Spec{Root: root, Env: image.HostEnv(), Workdir: "/workspace", MemoryMiB: 512, CPUs: 1, Pids: 1024, DiskMiB: vr.disk}
			id := sandboxtest.ID(b, "bench", strings.ReplaceAll(vr.name, "+", "-")+strconv.Itoa(i))
			t0 := time.Now()
			if err := vr.e.Create(ctx, id, spec); err != nil {
				b.Fatal(err)
			}
			if err := vr.e.Start(ctx, id); err != nil {
				b.Fatal(err)
			}
			t1 := time.Now()
			if err := vr.e.Delete(ctx, id); err != nil {
				b.Fatal(err)
			}
			starts[v] = append(starts[v], t1.Sub(t0))
			deletes[v] = append(deletes[v], time.Since(t1))
		}
	}
	for v, vr := range variants {
		b.ReportMetric(median(starts[v]), vr.name+"-start-ms")
		b.ReportMetric(median(deletes[v]), vr.name+"-delete-ms")
		if v > 0 {
			b.ReportMetric(median(starts[v])/median(starts[0]), vr.name+"-start-ratio")
		}
	}
}
