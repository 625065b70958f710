package linux

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/msb-dev/msb/sandbox"
)

// TestInitNeverLowersOOMScore checks that the init is never given a
// negative oom_score_adj, whatever the host allows: the score (and with
// CAP_SYS_RESOURCE the floor) of the init is what every process in the
// sandbox can go down to, and -1000 would make them immune to the OOM
// killer. (A real sandbox shows it only on a host where the server holds
// CAP_SYS_RESOURCE; TestSandboxCannotLowerOOMScore checks that end to end.)
func TestInitNeverLowersOOMScore(t *testing.T) {
	host, err := probeHost()
	if err != nil {
		t.Fatal(err)
	}
	if host.oomScore < 0 {
		t.Errorf("probed init OOM score %d, want >= 0", host.oomScore)
	}
	e := &Engine{host: host, cg: &cgroups{}, l: &launcher{}}
	b := &box{dir: "/d", spec: sandbox.Spec{MemoryMiB: 64, CPUs: 1, Pids: 64}}
	if c := e.initConfig(b); c.OOMScore < 0 || c.OOMScore != host.oomScore {
		t.Errorf("init oom_score_adj %d, want %d (it pins the floor)", c.OOMScore, host.oomScore)
	}
}

// TestSwapLimitOnlyWithSwapAccounting checks that the memory+swap limit is
// written only when the host accounts swap: on a cgroup v1 host without
// it, memory.memsw.limit_in_bytes does not exist. This host cannot be made
// to lack swap accounting, so the probe is checked on a fake memory
// hierarchy and the limits are written to fake cgroups for both answers.
func TestSwapLimitOnlyWithSwapAccounting(t *testing.T) {
	mnt := t.TempDir()
	if memswAt(mnt) {
		t.Error("swap accounting found in a hierarchy without memory.memsw files")
	}
	if err := os.WriteFile(filepath.Join(mnt, "memory.memsw.limit_in_bytes"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if !memswAt(mnt) {
		t.Error("swap accounting not found in a hierarchy with memory.memsw files")
	}

	for _, swap := range []bool{false, true} {
		mem := t.TempDir()
		c := &cgroups{parent: "p", memory: mem, swap: swap}
		d := filepath.Join(mem, "p", "k")
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := c.setLimits("k", limits{memory: 64 << 20, cpus: 1, pids: 64}); err != nil {
			t.Fatal(err)
		}
		if data, _ := os.ReadFile(filepath.Join(d, "memory.limit_in_bytes")); string(data) != "67108864" {
			t.Errorf("swap %v: memory limit %q", swap, data)
		}
		data, err := os.ReadFile(filepath.Join(d, "memory.memsw.limit_in_bytes"))
		switch {
		case swap && string(data) != "67108864":
			t.Errorf("with swap accounting: memory+swap %q, %v", data, err)
		case !swap && err == nil:
			t.Errorf("without swap accounting: memory+swap %q written", data)
		}
	}
}

// What a client reads of a portal that crashed is one short line, never
// its goroutine dump.
func TestLastWordsOfACrash(t *testing.T) {
	p := filepath.Join(t.TempDir(), "portal.log")
	dump := "some output\npanic: runtime error: index out of range [3] with length 2\n\ngoroutine 1 [running]:\nmain.main()\n\t/x.go:7 +0x1d\n"
	if err := os.WriteFile(p, []byte(dump), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := lastWords(p); got != "panic: runtime error: index out of range [3] with length 2" {
		t.Fatalf("last words of a panic: %q", got)
	}
	if err := os.WriteFile(p, []byte("line one\nkilled by \x1b[31msignal\x1b[0m 9\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := lastWords(p); got != "killed by [31msignal[0m 9" {
		t.Fatalf("last words: %q", got)
	}
}
