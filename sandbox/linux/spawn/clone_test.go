//go:build amd64

package spawn

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// runClone clones and executes argv with cloneInit as c says (its path,
// argv and files filled in: /dev/null, a pipe, then extra), waits for it
// and returns what it wrote to its descriptor 1.
func runClone(t *testing.T, c cloneSpec, argv []string, extra ...uintptr) string {
	t.Helper()
	null, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	c.path, c.argv = argv[0], argv
	c.files = append([]uintptr{null.Fd(), w.Fd()}, extra...)
	pid, pidfd, err := cloneInit(c)
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pidfd)
	out, _ := io.ReadAll(r)
	var st unix.WaitStatus
	if _, err := unix.Wait4(pid, &st, 0, nil); err != nil || st.ExitStatus() != 0 {
		t.Fatalf("%s: %v, status %v; output %q", argv[0], err, st, out)
	}
	return string(out)
}

// TestCloneInit clones and executes programs with cloneInit: they get
// exactly the descriptors asked for, at their places (one of them below
// its own number), the environment and the directory.
func TestCloneInit(t *testing.T) {
	// What this process was given without close-on-exec must not reach
	// the child (the spawner does the same when it starts).
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	c := cloneSpec{env: []string{"X=y"}, dir: "/proc/self", cgroupFD: -1}
	if got := runClone(t, c, []string{"/bin/ls", "-1", "fd"}); got != "0\n1\n2\n3\n" { // 3: ls's own
		t.Errorf("the child's descriptors: %q", got)
	}
	stdout, err := os.Readlink("/proc/self/fd/1")
	if err != nil {
		t.Fatal(err)
	}
	// This process's 1 becomes the child's 2: moved out of the way of
	// the child's 1 first.
	got := runClone(t, c, []string{"/bin/readlink", "/proc/self/fd/0", "/proc/self/fd/2"}, 1)
	if want := "/dev/null\n" + stdout + "\n"; got != want {
		t.Errorf("the child's 0 and 2: %q, want %q", got, want)
	}
	if got := runClone(t, c, []string{"/usr/bin/env"}); got != "X=y\n" {
		t.Errorf("the child's environment: %q", got)
	}
}

// TestCloneInitUserNS clones into a new user namespace: the child runs as
// nobody there (no id maps yet) with every capability, kept across its
// exec in its ambient set, and the bounding set asked for, not the full
// one a new user namespace starts with.
func TestCloneInitUserNS(t *testing.T) {
	const docker = 0xa80425fb
	last := lastCap()
	c := cloneSpec{flags: unix.CLONE_NEWUSER, cgroupFD: -1, bounding: docker, lastCap: last}
	got := runClone(t, c, []string{"/bin/sh", "-c", "id -u; grep -E '^Cap(Eff|Amb|Bnd):' /proc/self/status"})
	full := fmt.Sprintf("%016x", uint64(1)<<(last+1)-1)
	want := fmt.Sprintf("65534\nCapEff:\t%s\nCapBnd:\t%016x\nCapAmb:\t%s\n", full, docker, full)
	if got != want {
		t.Errorf("the child in a new user namespace:\n%s\nwant\n%s", got, want)
	}
}

// TestCloneInitFails: a child that cannot execute is reaped, and the error
// says why.
func TestCloneInitFails(t *testing.T) {
	_, _, err := cloneInit(cloneSpec{path: "/nonexistent", argv: []string{"x"}, cgroupFD: -1})
	if !errors.Is(err, unix.ENOENT) || !strings.Contains(err.Error(), "executing /nonexistent") {
		t.Errorf("executing a missing file: %v", err)
	}
	if _, err := unix.Wait4(-1, nil, unix.WNOHANG, nil); !errors.Is(err, unix.ECHILD) {
		t.Errorf("a child is left to reap: %v", err)
	}
}
