package linux

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/msb-dev/msb/sandbox"
	"github.com/msb-dev/msb/sandbox/sandboxtest"
)

// TestSpecNeverLowersOOMScore checks that the init is never given a
// negative oom_score_adj, whatever the host allows: the score (and with
// CAP_SYS_RESOURCE the floor) of the init is what every process in the
// sandbox can go down to, and -1000 would make them immune to the OOM
// killer. (A real sandbox shows it only on a host where the server holds
// CAP_SYS_RESOURCE; TestSandboxCannotLowerOOMScore checks that end to end.)
func TestSpecNeverLowersOOMScore(t *testing.T) {
	host, err := probeHost()
	if err != nil {
		t.Fatal(err)
	}
	if host.oomScore < 0 {
		t.Errorf("probed init OOM score %d, want >= 0", host.oomScore)
	}
	id := sandboxtest.ID(t, "ns", "box")
	oci := ociSpec(id, sandbox.Spec{MemoryMiB: 64, CPUs: 1, Pids: 64}, "/r", "/msb", "msb", host)
	if p := oci.Process.OOMScoreAdj; p == nil || *p < 0 || *p != host.oomScore {
		t.Errorf("init oom_score_adj %v, want %d set explicitly (it pins the floor)", p, host.oomScore)
	}
}

// TestSpecSwapOnlyWithSwapAccounting checks that the memory+swap limit is
// given only when the host accounts swap: on a cgroup v1 host without it,
// runc fails every start writing memory.memsw.limit_in_bytes. This host
// cannot be made to lack swap accounting, so the probe is checked on a fake
// memory hierarchy and the spec for both answers.
func TestSpecSwapOnlyWithSwapAccounting(t *testing.T) {
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

	id := sandboxtest.ID(t, "ns", "box")
	spec := sandbox.Spec{MemoryMiB: 64, CPUs: 1, Pids: 64}
	mem := int64(64 << 20)
	for _, swap := range []bool{false, true} {
		cfg, err := libcontainerConfig(ociSpec(id, spec, "/r", "/msb", "msb", hostLimits{swap: swap}))
		if err != nil {
			t.Fatal(err)
		}
		r := cfg.Cgroups.Resources
		if r.Memory != mem {
			t.Errorf("swap %v: memory limit %d, want %d", swap, r.Memory, mem)
		}
		switch {
		case swap && r.MemorySwap != mem:
			t.Errorf("with swap accounting: memory+swap %d, want %d", r.MemorySwap, mem)
		case !swap && r.MemorySwap != 0:
			t.Errorf("without swap accounting: memory+swap %d set; runc would fail to start", r.MemorySwap)
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
