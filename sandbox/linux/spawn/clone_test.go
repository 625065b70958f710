//go:build amd64

package spawn

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
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
	c := cloneSpec{env: []string{"X=y"}, dir: "/usr", cgroupFD: -1}
	// Given two, it has those two, and not this process's 2.
	// (": " keeps the shell, whose descriptors ls lists, from executing ls
	// in its place.)
	if got := runClone(t, c, []string{"/bin/sh", "-c", "ls /proc/$$/fd; :"}); got != "0\n1\n" {
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
	if got := runClone(t, c, []string{"/bin/pwd"}); got != "/usr\n" {
		t.Errorf("the child's directory: %q", got)
	}
}

// TestCloneInitUserNS clones into a new user namespace: the child waits for
// its id maps, takes the namespace's root, and has every capability there
// and the bounding set asked for, not the full one a new user namespace
// starts with.
func TestCloneInitUserNS(t *testing.T) {
	const docker = 0xa80425fb
	last := lastCap()
	if data, err := os.ReadFile("/proc/sys/kernel/cap_last_cap"); err != nil || strings.TrimSpace(string(data)) != strconv.Itoa(last) {
		t.Fatalf("lastCap() = %d; the kernel's: %q, %v", last, data, err)
	}
	ids := []syscall.SysProcIDMap{{ContainerID: 0, HostID: 100000, Size: 65536}}
	c := cloneSpec{flags: unix.CLONE_NEWUSER, cgroupFD: -1, cred: &syscall.Credential{}, uids: ids, gids: ids,
		setgroups: true, bounding: docker, lastCap: last}
	got := runClone(t, c, []string{"/bin/sh", "-c", "id -u; id -g; cat /proc/self/uid_map; grep -E '^Cap(Eff|Amb|Bnd):' /proc/self/status"})
	full := fmt.Sprintf("%016x", uint64(1)<<(last+1)-1)
	want := fmt.Sprintf("0\n0\n         0     100000      65536\nCapEff:\t%s\nCapBnd:\t%016x\nCapAmb:\t0000000000000000\n", full, docker)
	if got != want {
		t.Errorf("the child in a new user namespace:\n%s\nwant\n%s", got, want)
	}

	// Maps the kernel refuses: the child gives up, and the error says why.
	c.path, c.argv = "/bin/true", []string{"true"}
	c.uids = []syscall.SysProcIDMap{{ContainerID: 0, HostID: 100000, Size: 0}}
	_, _, err := cloneInit(c)
	if err == nil || !strings.Contains(err.Error(), "id maps") || !strings.Contains(err.Error(), "uid_map") {
		t.Errorf("a clone whose id maps fail: %v", err)
	}
	noChildLeft(t)
}

// TestCloneInitSignals: the child starts with no signal blocked (the
// spawner blocks every one across the clone) and none ignored, not even
// one this process ignores (an exec keeps those).
func TestCloneInitSignals(t *testing.T) {
	signal.Ignore(syscall.SIGUSR2)
	defer signal.Reset(syscall.SIGUSR2)
	status, err := os.ReadFile("/proc/self/status")
	if err != nil || !ignores(string(status), syscall.SIGUSR2) {
		t.Fatalf("SIGUSR2 is not ignored here: %v\n%s", err, status)
	}
	c := cloneSpec{cgroupFD: -1}
	got := runClone(t, c, []string{"/bin/grep", "-E", "^Sig(Blk|Ign):", "/proc/self/status"})
	if want := "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n"; got != want {
		t.Errorf("the child's signals:\n%s\nwant\n%s", got, want)
	}
}

// TestCloneInitFails: a child that cannot execute is reaped, and the error
// says why.
func TestCloneInitFails(t *testing.T) {
	_, _, err := cloneInit(cloneSpec{path: "/nonexistent", argv: []string{"x"}, cgroupFD: -1})
	if !errors.Is(err, unix.ENOENT) || !strings.Contains(err.Error(), "executing /nonexistent") {
		t.Errorf("executing a missing file: %v", err)
	}
	noChildLeft(t)
}

// ignores reports whether the SigIgn mask of a /proc status lists sig.
func ignores(status string, sig syscall.Signal) bool {
	for _, l := range strings.Split(status, "\n") {
		if hex, ok := strings.CutPrefix(l, "SigIgn:\t"); ok {
			mask, err := strconv.ParseUint(hex, 16, 64)
			return err == nil && mask&(1<<(sig-1)) != 0
		}
	}
	return false
}
