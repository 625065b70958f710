package linux

import (
	"fmt"
	"os"
	"runtime"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/sandbox/linux/boot"
)

// netnsPool keeps a few network namespaces made ahead of time, each with
// its loopback up and nothing else, for sandboxes to start in: making one
// is most of what cloning a sandbox's init costs (about 1 ms here), and
// it is done off the start path. A maker thread of the server creates
// them (unshare, then back into the server's namespace) and keeps them
// open; the spawner joins one for the clone (a network namespace
// is a thread's), so that the init is born in it. A namespace is given to
// one sandbox only and the pool holds it no longer; with the pool empty,
// the init gets a new one at clone.
type netnsPool struct {
	size int
	want chan struct{} // wakes the maker

	mu     sync.Mutex
	ready  []*os.File
	closed bool
}

// defaultNetnsPool is how many network namespaces wait ready.
const defaultNetnsPool = 4

func newNetnsPool(size int) *netnsPool {
	p := &netnsPool{size: size, want: make(chan struct{}, 1)}
	if size > 0 {
		go p.maker()
		p.want <- struct{}{}
	}
	return p
}

// maker makes namespaces whenever the pool runs low, on a thread locked
// for good: it enters each new namespace to make it, and a thread that
// could not get back to the server's must never run anything else.
func (p *netnsPool) maker() {
	runtime.LockOSThread() // never unlocked
	host, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return // no pool: inits get new namespaces at clone
	}
	defer host.Close()
	for range p.want {
		for {
			p.mu.Lock()
			full := p.closed || len(p.ready) >= p.size
			p.mu.Unlock()
			if full {
				break
			}
			ns, err := makeNetns(host)
			if ns != nil {
				p.mu.Lock()
				if p.closed {
					ns.Close()
				} else {
					p.ready = append(p.ready, ns)
				}
				p.mu.Unlock()
			}
			if err != nil {
				return // stuck in a namespace of its own, or none can be made
			}
		}
	}
}

// makeNetns makes a network namespace with its loopback up and returns it
// open, the calling thread back in the namespace host. An error means the
// thread may not be back.
func makeNetns(host *os.File) (*os.File, error) {
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		return nil, err
	}
	ns, err := os.Open("/proc/thread-self/ns/net")
	if err == nil {
		if err = boot.LoopbackUp(); err != nil {
			ns.Close()
			ns = nil
		}
	}
	if serr := unix.Setns(int(host.Fd()), unix.CLONE_NEWNET); serr != nil {
		if ns != nil {
			ns.Close()
		}
		return nil, fmt.Errorf("back to the server's network namespace: %w", serr)
	}
	return ns, err
}

// take returns a ready namespace, or nil when there is none, and has the
// pool refilled.
func (p *netnsPool) take() *os.File {
	p.mu.Lock()
	var ns *os.File
	if n := len(p.ready); n > 0 && !p.closed {
		ns = p.ready[n-1]
		p.ready = p.ready[:n-1]
	}
	p.mu.Unlock()
	select {
	case p.want <- struct{}{}:
	default:
	}
	return ns
}

// close frees the ready namespaces and ends the maker.
func (p *netnsPool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	p.closed = true
	for _, ns := range p.ready {
		ns.Close()
	}
	p.ready = nil
	close(p.want)
}
