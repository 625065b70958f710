package main_test

// Regressions found by running the upstream SDKs and the README's examples
// against msb as a new user would.

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/msb-dev/msb/sandbox/sandboxtest"
)

// The Go SDK sends timeouts in nanoseconds: any positive number is taken,
// and one above the server's maximum is cut to it.
func TestTimeoutsOfAnySize(t *testing.T) {
	t.Parallel()
	home := newHome(t)
	if err := os.WriteFile(filepath.Join(home, "config.toml"), []byte("max_timeout = \"1s\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := startServer(t, home)
	key := keygen(t, home)
	box := srv.sandbox(key, "sdk", "go", nil)
	var r commandResult
	srv.mustCall(key, "sandbox.command.run", box.params(map[string]any{"command": "echo", "args": []string{"hi"}, "timeout": 30000000000}), &r)
	if r.ExitCode != 0 || text(r.Output, "stdout") != "hi\n" {
		t.Fatalf("a nanosecond timeout: %+v", r)
	}
	// 30000000000 s is cut to the 1 s maximum: the command is killed.
	started := time.Now()
	srv.mustCall(key, "sandbox.command.run", box.params(map[string]any{"command": "sleep", "args": []string{"30"}, "timeout": 30000000000}), &r)
	if r.ExitCode != 124 || time.Since(started) > 20*time.Second {
		t.Fatalf("a timeout above the maximum: %+v after %v", r, time.Since(started))
	}
	var rr replResult
	srv.mustCall(key, "sandbox.repl.run", box.params(map[string]any{"language": "python", "code": "import time; time.sleep(30)", "timeout": 1e300}), &rr)
	if rr.Status != "timeout" {
		t.Fatalf("a huge REPL timeout: %+v", rr)
	}
	for _, bad := range []any{0, -1, -30000000000} {
		srv.wantError(key, "sandbox.command.run", box.params(map[string]any{"command": "true", "timeout": bad}), 200, -32602, "above 0")
	}
}

// The SDKs' examples run `python`: the host image has it (and the host's
// /usr has not gained it).
func TestHostImageHasPython(t *testing.T) {
	t.Parallel()
	home := newHome(t)
	srv := startServer(t, home)
	key := keygen(t, home)
	box := srv.sandbox(key, "sdk", "py", nil)
	r := box.sh("python -c 'print(6*7)' && command -v python")
	if r.ExitCode != 0 || !strings.HasPrefix(text(r.Output, "stdout"), "42\n") {
		t.Fatalf("python in the host image: %+v", r)
	}
	if _, err := os.Lstat("/usr/bin/python"); err == nil {
		if target, _ := os.Readlink("/usr/bin/python"); !strings.Contains(target, "python") {
			t.Fatalf("/usr/bin/python on the host is %q", target)
		}
	} else if _, err := os.Lstat("/opt/msb/bin/python"); err == nil {
		t.Fatal("the sandbox's python name leaked onto the host")
	}
}

// The first CPU sample after a start is not start-up CPU over a tiny
// interval: never more than cpus × 100.
func TestFirstCPUSample(t *testing.T) {
	t.Parallel()
	home := newHome(t)
	srv := startServer(t, home)
	key := keygen(t, home)
	for i, name := range []string{"a", "b", "c"} {
		box := srv.sandbox(key, "cpu", name, map[string]any{"cpus": 1, "exec": "python3 -c 'while True: pass'"})
		var m metricsResult
		srv.mustCall(key, "sandbox.metrics.get", box.params(nil), &m)
		if len(m.Sandboxes) != 1 || m.Sandboxes[0].CPUUsage == nil || *m.Sandboxes[0].CPUUsage > 100 {
			t.Fatalf("start %d: first sample %s", i, mustJSON(m))
		}
		box.stop()
	}
}

// A command printing short lines makes a reply of about 16 MiB, not three
// times that: the cap counts what each line costs in the reply.
func TestReplyOfShortLinesIsBounded(t *testing.T) {
	t.Parallel()
	home := newHome(t)
	srv := startServer(t, home)
	key := keygen(t, home)
	box := srv.sandbox(key, "big", "lines", nil)
	body, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "method": "sandbox.command.run", "id": 1,
		"params": box.params(map[string]any{"command": "sh", "args": []string{"-c", "yes '' | head -n 3000000"}})})
	status, data, _ := srv.post(string(body), bearer(key))
	if status != 200 || len(data) > 16<<20+64<<10 || len(data) < 16<<20-64<<10 {
		t.Fatalf("reply: HTTP %d, %d bytes; want about 16 MiB", status, len(data))
	}
}

// Key status and limits say the same everywhere and act at once.
func TestKeyStatusAndLimitsAtOnce(t *testing.T) {
	t.Parallel()
	home := newHome(t)
	srv := startServer(t, home)
	admin := keygen(t, home)

	// A spent key is refused as spent at once, not first as rate limited.
	once := keygen(t, home, "--max-uses", "1", "--rate", "1/h")
	srv.allowed(once, "default")
	srv.unauthorized(once, "usage limit reached")

	// A drained key whose rate is raised gets a full bucket of the new size.
	slow := keygen(t, home, "--rate", "1/h")
	srv.allowed(slow, "default")
	srv.wantError(slow, "sandbox.metrics.get", map[string]any{"namespace": "default"}, 429, -32005, "retry in")
	mustMSB(t, home, "server", "keys", "limit", keyID(t, slow), "--rate", "default")
	srv.allowed(slow, "default")

	// During a rotation's grace, keys.list and `keys list` say the same,
	// and a second rotation of the old key is refused.
	old := keygen(t, home, "--name", "rotating")
	var rotated struct{ ID string }
	srv.mustCall(admin, "keys.rotate", map[string]any{"id": keyID(t, old), "grace": "1h"}, &rotated)
	var list struct {
		Keys []struct{ ID, Status string }
	}
	srv.mustCall(admin, "keys.list", map[string]any{}, &list)
	status := ""
	for _, k := range list.Keys {
		if k.ID == keyID(t, old) {
			status = k.Status
		}
	}
	cli, _ := mustMSB(t, home, "server", "keys", "list")
	var cliStatus string
	for _, line := range strings.Split(cli, "\n") {
		if strings.HasPrefix(line, keyID(t, old)) {
			f := strings.Fields(line)
			cliStatus = f[len(f)-1]
		}
	}
	if status != "rotated" || cliStatus != status {
		t.Fatalf("status during grace: keys.list %q, keys list %q; want both rotated", status, cliStatus)
	}
	srv.wantError(admin, "keys.rotate", map[string]any{"id": keyID(t, old), "grace": "1h"}, 200, -32001, "already rotated to "+rotated.ID)
	srv.allowed(old, "default") // still in its grace
}

// A 401 echoes the request's id, and its audit record names the method.
func TestRefusedRequestKeepsIDAndMethod(t *testing.T) {
	t.Parallel()
	home := newHome(t)
	srv := startServer(t, home)
	admin := keygen(t, home, "--scope", "audit:read")
	for _, c := range []struct{ key, id string }{{"", `"req-7"`}, {"msb_forged", "42"}} {
		status, data, _ := srv.post(`{"jsonrpc":"2.0","method":"sandbox.stop","params":{"namespace":"default","sandbox":"x"},"id":`+c.id+`}`, bearer(c.key))
		var r rpcResponse
		if err := json.Unmarshal(data, &r); err != nil || status != 401 || string(r.ID) != c.id {
			t.Fatalf("401 with key %q: HTTP %d %s; want id %s", c.key, status, data, c.id)
		}
	}
	// Read at once: the audit log already has both refusals.
	var got struct {
		Events []struct{ Method, Outcome string }
	}
	srv.mustCall(admin, "audit.list", map[string]any{}, &got)
	n := 0
	for _, e := range got.Events {
		if e.Outcome == "unauthenticated" && e.Method == "sandbox.stop" {
			n++
		}
	}
	if n != 2 {
		t.Fatalf("audit right after two refused calls: %+v", got.Events)
	}
	// A refused request cannot write raw text into the log: an unknown
	// method's name is kept quoted.
	srv.post(`{"jsonrpc":"2.0","method":"x\n2026-01-01 forged row\u001b[31m","id":1}`, nil)
	srv.mustCall(admin, "audit.list", map[string]any{}, &got)
	for _, e := range got.Events {
		if strings.ContainsAny(e.Method, "\n\x1b") {
			t.Fatalf("raw control characters in an audit record: %q", e.Method)
		}
	}
	if !strings.Contains(fmt.Sprint(got.Events), `unknown method x\n2026`) {
		t.Fatalf("the refused unknown method is not recorded, quoted: %+v", got.Events)
	}
}

// An audit read sees every event of every call answered before it began:
// a refused call, then at once the CLI.
func TestAuditReadSeesTheLastCall(t *testing.T) {
	t.Parallel()
	home := newHome(t)
	srv := startServer(t, home)
	team := keygen(t, home, "--namespace", "team-a")
	for i := range 5 {
		srv.call(team, "sandbox.stop", map[string]any{"namespace": "team-b", "sandbox": "x" + string(rune('0'+i))})
		if e := find(auditEvents(t, home), map[string]any{"sandbox": "x" + string(rune('0'+i)), "outcome": "forbidden"}); e == nil {
			t.Fatalf("refused call %d not in the audit log read right after it", i)
		}
	}
}

// `msb server status` exits 3 when no server runs, as systemctl does.
func TestStatusExitCode(t *testing.T) {
	t.Parallel()
	home := newHome(t)
	if _, _, err := msb(t, home, "server", "status"); exitCode(err) != 3 {
		t.Fatalf("status without a server: %v, want exit code 3", err)
	}
	startServer(t, home)
	if out, _, err := msb(t, home, "server", "status"); err != nil || !strings.Contains(out, "running") {
		t.Fatalf("status with a server: %v %s", err, out)
	}
}

// A dynamically linked msb says so at start and, for an OCI image, says
// how to build it statically instead of failing with an internal error.
func TestDynamicBuildSaysHowToBuild(t *testing.T) {
	t.Parallel()
	reg := sandboxtest.NewRegistry(t)
	ref, _ := busyboxImage(t, reg, "test/dyn:1", v1.Config{})
	exe, err := os.Executable() // this test binary: dynamically linked
	if err != nil {
		t.Fatal(err)
	}
	home := newHome(t)
	srv := startServer(t, home, "--portal", exe)
	if !strings.Contains(srv.out.String(), "dynamically linked") {
		t.Errorf("no warning at start:\n%s", srv.out)
	}
	key := keygen(t, home)
	srv.wantError(key, "sandbox.start", map[string]any{"namespace": "dyn", "sandbox": "img", "config": map[string]any{"image": ref}},
		200, -32602, `-extldflags "-static"`)
	srv.sandbox(key, "dyn", "host", nil).stop() // the host image still works
}
