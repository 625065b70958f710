// Package netns runs code inside Linux network namespaces: on a locked OS
// thread that joins the namespace and comes back, so that no goroutine ever
// runs in the wrong one. It has no other dependencies, so that both the
// sandbox network and its test world use it.
//
// Do and New need CAP_SYS_ADMIN.
package netns

import (
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// Do runs f on a locked OS thread that has joined the network
// namespace ns, then moves the thread back to the namespace it came from.
// Sockets and devices f creates belong to ns and keep working from any
// thread afterwards. A thread that cannot get back stays locked, so the Go
// runtime retires it with its goroutine: no goroutine ever runs in the
// wrong namespace.
func Do(ns *os.File, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("network namespace of this thread: %w", err)
			return
		}
		defer self.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("joining network namespace: %w", err)
			return
		}
		ferr := f()
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
			// Stay locked: the thread exits with this goroutine.
			errc <- fmt.Errorf("returning from network namespace: %w (after: %v)", err, ferr)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Open opens the network namespace of process pid.
func Open(pid int) (*os.File, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		return nil, fmt.Errorf("network namespace of process %d: %w", pid, err)
	}
	return f, nil
}

// IsOwn reports whether ns is this process's own network namespace.
func IsOwn(ns *os.File) (bool, error) {
	var self, other unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &self); err != nil {
		return false, fmt.Errorf("this process's network namespace: %w", err)
	}
	if err := unix.Fstat(int(ns.Fd()), &other); err != nil {
		return false, fmt.Errorf("network namespace: %w", err)
	}
	return self.Dev == other.Dev && self.Ino == other.Ino, nil
}

// New creates a new, empty network namespace (only a loopback device,
// down) and returns a file that keeps it alive. msb does not need it (the
// engine creates each sandbox's namespace); tests and benchmarks use it.
func New() (*os.File, error) {
	type result struct {
		f   *os.File
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		self, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{nil, err}
			return
		}
		defer self.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- result{nil, fmt.Errorf("unshare: %w", err)}
			return
		}
		f, ferr := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
			if f != nil {
				f.Close()
			}
			ch <- result{nil, fmt.Errorf("returning from new network namespace: %w", err)}
			return // the thread stays locked and dies
		}
		runtime.UnlockOSThread()
		ch <- result{f, ferr}
	}()
	r := <-ch
	return r.f, r.err
}
