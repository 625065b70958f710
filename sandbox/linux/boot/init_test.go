package boot

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// boundCapsEnv makes the test binary a child of TestBoundCaps.
const boundCapsEnv = "MSB_TEST_BOUND_CAPS"

func TestMain(m *testing.M) {
	if os.Getenv(boundCapsEnv) == "1" {
		// Every thread's bounding set, before and after boundCaps, and
		// whether it could work on all threads.
		capBnd := func() {
			tasks, _ := filepath.Glob("/proc/self/task/*/status")
			for _, f := range tasks {
				data, _ := os.ReadFile(f)
				for _, l := range strings.Split(string(data), "\n") {
					if strings.HasPrefix(l, "CapBnd:") {
						fmt.Println(l)
					}
				}
			}
		}
		capBnd()
		fmt.Println("--")
		allThreads := true
		if err := (&Config{Caps: dockerCaps}).boundCaps(&allThreads); err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		capBnd()
		fmt.Println("all threads:", allThreads)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

const dockerCaps = 0xa80425fb

// TestBoundCaps: an init cloned into a new user namespace by Go's fork and
// exec (a spawner without cloneExec) has the full bounding set such a
// namespace starts with; boundCaps leaves every thread the sandbox's.
func TestBoundCaps(t *testing.T) {
	cmd := exec.Command("/proc/self/exe", "-test.run=^$")
	cmd.Env = []string{boundCapsEnv + "=1"}
	ids := []syscall.SysProcIDMap{{ContainerID: 0, HostID: 0, Size: 1}}
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWUSER, UidMappings: ids, GidMappings: ids}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	before, after, ok := strings.Cut(strings.TrimSpace(string(out)), "\n--\n")
	after, allThreads, ok2 := strings.Cut(after, "\nall threads: ")
	if !ok || !ok2 || allThreads != "true" {
		t.Fatalf("the child's output: %q", out)
	}
	// The case boundCaps is for: the namespace's full set.
	last, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(last)))
	for _, l := range strings.Split(before, "\n") {
		if l != fmt.Sprintf("CapBnd:\t%016x", uint64(1)<<(n+1)-1) {
			t.Fatalf("the child's bounding set before boundCaps: %q", before)
		}
	}
	lines := strings.Split(after, "\n")
	if len(lines) < 2 {
		t.Fatalf("the child's threads: %q", out)
	}
	for _, l := range lines {
		if l != fmt.Sprintf("CapBnd:\t%016x", dockerCaps) {
			t.Errorf("a thread's bounding set: %q", l)
		}
	}
}
