package spawn

import (
	"errors"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// A request whose descriptors do not add up is answered with why, and
// nothing is cloned (the last notes listed these checks untested).
func TestSpawnRequestChecked(t *testing.T) {
	null, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	one := []int{int(null.Fd())}
	s := &spawnerProc{pending: map[int]bool{}, hostNet: -1}
	for _, c := range []struct {
		name string
		req  Request
		want string
	}{
		{"more tasks files than sent", Request{Tasks: 2}, "a request for 2 descriptors came with 1"},
		{"a network namespace and a cgroup, one sent", Request{NetNS: true, CgroupFD: true}, "a request for 2 descriptors came with 1"},
		{"a file past those sent", Request{Files: []int{0, 1}}, "descriptor 1 of 1"},
		{"a file past those left after the tasks", Request{Tasks: 1, Files: []int{0}}, "descriptor 0 of 0"},
	} {
		pidfd, rep, err := s.spawn(c.req, one)
		if err != nil || pidfd != -1 || rep.Pid != 0 || rep.Err != c.want {
			t.Errorf("%s: pidfd %d, reply %+v, err %v; want the reply's error %q", c.name, pidfd, rep, err, c.want)
		}
	}
	if len(s.pending) != 0 {
		t.Errorf("children pending after refused requests: %v", s.pending)
	}
	noChildLeft(t)
}

// noChildLeft fails t if this process has a child to reap.
func noChildLeft(t *testing.T) {
	t.Helper()
	if _, err := unix.Wait4(-1, nil, unix.WNOHANG, nil); !errors.Is(err, unix.ECHILD) {
		t.Errorf("a child is left to reap: %v", err)
	}
}
