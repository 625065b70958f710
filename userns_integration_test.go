package main_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestSetuidThroughVolumeIsNotRoot reproduces the attack of a sandbox
// that leaves a setuid-root copy of id in a volume for a user of the host
// to run with euid 0. With user namespaces (the default), root inside a
// sandbox is an unprivileged host id: the copy is owned on the host by the
// volume range (100000, root inside), the namespace's volume root is 0700,
// and a host user running the copy gets euid 100000, not 0. What the
// sandbox writes on its disk is owned by its own range. With
// user_namespaces = false the attack works, as it did before.
func TestSetuidThroughVolumeIsNotRoot(t *testing.T) {
	t.Parallel()
	for _, userns := range []bool{true, false} {
		t.Run("user_namespaces="+strconv.FormatBool(userns), func(t *testing.T) {
			t.Parallel()
			home := homeWith(t, "user_namespaces = "+strconv.FormatBool(userns)+"\n")
			srv := startServer(t, home)
			key := keygen(t, home)
			b := srv.sandbox(key, "evil", "a", map[string]any{"image": "host", "volumes": []string{"data:/data"}})
			r := b.sh("cp /usr/bin/id /data/id && chmod 4755 /data/id && echo x > /workspace/mine && cat /proc/self/uid_map && id -u")
			if r.ExitCode != 0 {
				t.Fatalf("inside: %s", mustJSON(r))
			}
			out := text(r.Output, "stdout")
			f := strings.Fields(out)
			if len(f) != 4 || f[3] != "0" {
				t.Fatalf("uid_map and id inside: %q", out)
			}
			sandboxRoot, _ := strconv.Atoi(f[1])

			copyPath := filepath.Join(home, "volumes", "evil", "data", "id")
			fi, err := os.Stat(copyPath)
			if err != nil {
				t.Fatal(err)
			}
			st := fi.Sys().(*syscall.Stat_t)
			if fi.Mode()&os.ModeSetuid == 0 {
				t.Fatalf("the copy lost its setuid bit: %v", fi.Mode())
			}
			root, err := os.Stat(filepath.Join(home, "volumes", "evil"))
			if err != nil {
				t.Fatal(err)
			}
			// A host user runs a copy (the volume root keeps them out of
			// the volume itself).
			dir, err := os.MkdirTemp("", "msb-setuid-")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(dir) })
			os.Chmod(dir, 0o755)
			run := filepath.Join(dir, "id")
			if out, err := exec.Command("cp", "-p", copyPath, run).CombinedOutput(); err != nil {
				t.Fatalf("cp -p: %v %s", err, out)
			}
			cmd := exec.Command(run)
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
			got, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("running the copy as nobody: %v %s", err, got)
			}

			if !userns {
				// The attack, as the issue found it.
				if st.Uid != 0 || !strings.Contains(string(got), "euid=0(") || sandboxRoot != 0 {
					t.Fatalf("without user namespaces: owner %d, %q, uid_map %q", st.Uid, got, out)
				}
				return
			}
			if sandboxRoot < 100000+65536 {
				t.Fatalf("root inside is host uid %d, not a range of its own", sandboxRoot)
			}
			if st.Uid != 100000 || st.Gid != 100000 {
				t.Fatalf("the setuid copy in the volume is owned on the host by %d:%d, want the volume range's 100000", st.Uid, st.Gid)
			}
			if strings.Contains(string(got), "euid=0(") || !strings.Contains(string(got), "euid=100000") {
				t.Fatalf("a host user running the copy: %s", got)
			}
			if root.Mode().Perm() != 0o700 {
				t.Fatalf("the namespace's volume root has mode %v, want 0700", root.Mode().Perm())
			}
			// The portal still gives each command a pids cgroup of its own
			// (the user cgroup is delegated to the sandbox's root).
			if r := b.sh("grep pids /proc/self/cgroup"); !strings.Contains(text(r.Output, "stdout"), "/user/") {
				t.Fatalf("a command's pids cgroup: %s", mustJSON(r))
			}
			// On its disk, the sandbox's file is its range's.
			owner := -1
			for _, pid := range sandboxPids(home) {
				if fi, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid), "root", "workspace", "mine")); err == nil {
					owner = int(fi.Sys().(*syscall.Stat_t).Uid)
					break
				}
			}
			if owner != sandboxRoot {
				t.Fatalf("a file root wrote in /workspace is owned on the host by %d, want %d", owner, sandboxRoot)
			}
		})
	}
}
