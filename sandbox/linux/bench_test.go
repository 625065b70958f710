package linux_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/msb-dev/msb/sandbox"
	"github.com/msb-dev/msb/sandbox/image"
	"github.com/msb-dev/msb/sandbox/linux"
	"github.com/msb-dev/msb/sandbox/sandboxtest"
)

// BenchmarkLifecycle measures one sandbox's whole life, phase by phase:
// go test ./sandbox/linux -run '^$' -bench Lifecycle.
func BenchmarkLifecycle(b *testing.B) {
	home := b.TempDir()
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	parent := "msb-bench-" + strconv.Itoa(os.Getpid())
	defer func() {
		dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/*", parent))
		for _, d := range dirs {
			os.Remove(d)
		}
	}()
	e, err := linux.New(linux.Config{
		StateDir:     filepath.Join(home, "run"),
		SandboxDir:   filepath.Join(home, "sandboxes"),
		PortalBinary: exe,
		CgroupParent: parent,
	})
	if err != nil {
		b.Fatal(err)
	}
	root, err := image.Host()
	if err != nil {
		b.Fatal(err)
	}
	spec := sandbox.Spec{Root: root, Env: image.HostEnv(), Workdir: "/workspace", MemoryMiB: 512, CPUs: 1, Pids: 1024}
	ctx := context.Background()
	var create, start, execTrue, remove time.Duration
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
		create, start, execTrue, remove = create+t1.Sub(t0), start+t2.Sub(t1), execTrue+t3.Sub(t2), remove+time.Since(t3)
	}
	n := float64(b.N)
	b.ReportMetric(float64(create.Microseconds())/n/1000, "create-ms/op")
	b.ReportMetric(float64(start.Microseconds())/n/1000, "start+ping-ms/op")
	b.ReportMetric(float64(execTrue.Microseconds())/n/1000, "exec-true-ms/op")
	b.ReportMetric(float64(remove.Microseconds())/n/1000, "stop+delete-ms/op")
}
