package v1_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestSDKOnFake runs the real microsandbox SDK (npm, cloud backend) on
// the v1 API of the fake service: every object and frame msb sends must
// decode in it. It needs the SDK installed (scripts/v1-sdk-client/run.sh
// does: npm ci) and node; it is skipped without them.
func TestSDKOnFake(t *testing.T) {
	modules, _ := filepath.Abs("../../scripts/v1-sdk-client/node_modules")
	if _, err := os.Stat(filepath.Join(modules, "microsandbox")); err != nil {
		t.Skip("the SDK is not installed: run npm ci in scripts/v1-sdk-client")
	}
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("no node")
	}
	e := newEnv(t)
	// The script runs from a copy beside node_modules, so that its import
	// of "microsandbox" resolves.
	script := filepath.Join(filepath.Dir(modules), ".sdk_fake_test.mjs")
	src, err := os.ReadFile("testdata/sdk_fake.mjs")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(script, src, 0o600); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(script)
	cmd := exec.Command(node, script)
	cmd.Env = append(os.Environ(), "MSB_API_URL="+e.url, "MSB_API_KEY="+e.key)
	out, err := cmd.CombinedOutput()
	t.Logf("%s", out)
	if err != nil || !strings.Contains(string(out), "passed") {
		t.Fatalf("the SDK failed on the v1 API: %v", err)
	}
}
