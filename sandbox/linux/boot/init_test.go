package boot

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// The sample an init decodes while it waits (prepareConfig) reaches every
// type of a Config: a misspelt field would leave one undecoded.
func TestSampleConfig(t *testing.T) {
	var c Config
	if err := json.Unmarshal([]byte(sampleConfig), &c); err != nil {
		t.Fatal(err)
	}
	if c.Build == nil || len(c.Build.Dirs) != 1 || len(c.Build.Links) != 1 || len(c.Build.Files) != 1 ||
		len(c.Binds) != 1 || len(c.Volumes) != 1 || len(c.Tmpfs) != 1 || len(c.Env) != 1 {
		t.Errorf("the sample decodes to %+v", c)
	}
}

// boundCapsEnv makes the test binary a child of TestBoundCaps.
const boundCapsEnv = "MSB_TEST_BOUND_CAPS"

func TestMain(m *testing.M) {
	if os.Getenv(boundCapsEnv) == "1" {
		allThreads := true
		if err := (&Config{Caps: dockerCaps}).boundCaps(&allThreads); err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		// Every thread's.
		tasks, _ := filepath.Glob("/proc/self/task/*/status")
		for _, f := range tasks {
			data, _ := os.ReadFile(f)
			for _, l := range strings.Split(string(data), "\n") {
				if strings.HasPrefix(l, "CapBnd:") {
					fmt.Println(l)
				}
			}
		}
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
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) < 2 {
		t.Fatalf("the child's threads: %q", out)
	}
	for _, l := range lines {
		if l != fmt.Sprintf("CapBnd:\t%016x", dockerCaps) {
			t.Errorf("a thread's bounding set: %q", l)
		}
	}
}
