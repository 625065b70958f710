package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"time"

	"github.com/msb-dev/msb/sandbox"
	"github.com/msb-dev/msb/sandbox/image"
	"github.com/msb-dev/msb/sandbox/linux"
)

func main() {
	home, _ := os.MkdirTemp("", "drv")
	defer os.RemoveAll(home)
	e, err := linux.New(linux.Config{StateDir: filepath.Join(home, "run"), SandboxDir: filepath.Join(home, "sb"), PortalBinary: os.Args[1], CgroupParent: "drv-" + strconv.Itoa(os.Getpid())})
	if err != nil {
		panic(err)
	}
	defer e.Close()
	root, _ := image.Host()
	spec := sandbox.Spec{Root: root, Env: image.HostEnv(), Workdir: "/workspace", MemoryMiB: 512, CPUs: 1, Pids: 1024}
	spec.Root.Dirs = append(spec.Root.Dirs, "workspace")
	ctx := context.Background()
	var st []time.Duration
	for i := 0; i < 60; i++ {
		id, _ := sandbox.ParseID("drv", "s"+strconv.Itoa(i))
		if err := e.Create(ctx, id, spec); err != nil {
			panic(err)
		}
		t := time.Now()
		if err := e.Start(ctx, id); err != nil {
			panic(err)
		}
		st = append(st, time.Since(t))
		e.Delete(ctx, id)
	}
	sort.Slice(st, func(i, j int) bool { return st[i] < st[j] })
	fmt.Println("start p50", st[len(st)/2])
}
