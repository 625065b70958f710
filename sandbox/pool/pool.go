// Package pool keeps sandboxes of some images started ahead of time (a
// warm pool), refilled in the background, for the sandbox Service to take
// when a start asks for one of those images (sandbox.WarmPool) instead of
// starting one.
//
// Each image has a pool of its own: how many sandboxes wait, and the
// memory they may hold together. A waiting sandbox is limited (its memory
// cgroup) to its share of that memory, so the kernel holds the pool to
// it, and the pool never has more sandboxes waiting or starting than its
// size: taken ones belong to the start that took them (and to its
// namespace's quota), not to the pool. A waiting sandbox runs nothing but
// its agent: nobody can reach it until a start takes it (its engine knows
// it by a handle only), and one taken is never given back. A start takes
// a waiting sandbox only when its config fits what cannot change on a
// running sandbox (sandbox.Poolable); a waiting sandbox whose image has
// changed since it started (an alias moved to a newer image) is deleted
// when a start finds it.
package pool

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox"
)

// Size is the pool of one image.
type Size struct {
	// Sandboxes is how many sandboxes wait started.
	Sandboxes int
	// MemoryMiB is the memory they may hold together: each waits with a
	// memory limit of MemoryMiB / Sandboxes, at least sandbox.MinMemory.
	MemoryMiB int
}

// share is the memory limit of each waiting sandbox.
func (s Size) share() int { return s.MemoryMiB / max(s.Sandboxes, 1) }

// Options configure a Pool.
type Options struct {
	// Engine starts, adopts and deletes the sandboxes.
	Engine sandbox.Pooler
	// Images resolves the pools' image references, as starts do.
	Images sandbox.Resolver
	// Pids is every sandbox's pids limit (the Service's).
	Pids int
	// DiskMiB is the disk of a sandbox whose config names none (the
	// Service's default); 0: sandbox.DefaultDisk.
	DiskMiB int
	// Pools are the pools by image reference, as sandbox configs name
	// images ("microsandbox/python"); a size of 0 sandboxes is no pool.
	Pools map[string]Size
	// Log gets the pool's failures; nil: slog.Default().
	Log *slog.Logger
	// Retry is the wait after a pool's sandbox failed to start, doubled
	// after each failure in a row up to 64 times it; 0: a second.
	Retry time.Duration
}

// Pool is the warm pool of every configured image. It implements
// sandbox.WarmPool. Its methods are safe to call at once.
type Pool struct {
	opts   Options
	log    *slog.Logger
	ctx    context.Context // ends at Close: starts under way give up
	cancel context.CancelFunc
	wake   chan struct{} // a sandbox was taken, or the pool closes
	done   chan struct{} // closed when the filler has returned
	bg     sync.WaitGroup

	mu      sync.Mutex
	pools   map[string]*imagePool
	started bool
	closed  bool
}

// imagePool is the pool of one image.
type imagePool struct {
	ref      string
	size     Size
	ready    []waiting // oldest first
	starting int       // prestarts under way
	failures int       // in a row
	retryAt  time.Time // no prestart before
}

type waiting struct {
	handle string
	spec   sandbox.Spec
}

var _ sandbox.WarmPool = (*Pool)(nil)

// New returns a pool of the images in o.Pools, empty until Start. It
// returns an error wrapping errdefs.ErrInvalid for a pool whose sandboxes
// would each get less than sandbox.MinMemory.
func New(o Options) (*Pool, error) {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Retry <= 0 {
		o.Retry = time.Second
	}
	p := &Pool{opts: o, log: o.Log, wake: make(chan struct{}, 1), done: make(chan struct{}), pools: map[string]*imagePool{}}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	for _, ref := range slices.Sorted(maps.Keys(o.Pools)) {
		size := o.Pools[ref]
		if size.Sandboxes <= 0 {
			continue
		}
		if size.share() < sandbox.MinMemory {
			return nil, errdefs.Invalidf("pool of %q: %d MiB for %d sandboxes is %d MiB each, less than the least a sandbox may have (%d MiB): give it at least %d MiB",
				ref, size.MemoryMiB, size.Sandboxes, size.share(), sandbox.MinMemory, size.Sandboxes*sandbox.MinMemory)
		}
		p.pools[ref] = &imagePool{ref: ref, size: size}
	}
	return p, nil
}

// Start starts filling the pools in the background. Call it once the
// engine has recovered what an earlier server left.
func (p *Pool) Start() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.started || p.closed {
		return
	}
	p.started = true
	go p.fill()
}

// Take implements sandbox.WarmPool: it removes the oldest sandbox waiting
// for image that can become one of spec, and has the pool refilled.
// Waiting sandboxes of another version of the image are deleted.
func (p *Pool) Take(image string, spec sandbox.Spec) (string, bool) {
	p.mu.Lock()
	ip := p.pools[image]
	if ip == nil || p.closed {
		p.mu.Unlock()
		return "", false
	}
	var stale []string
	handle := ""
	for i := 0; i < len(ip.ready); i++ {
		w := ip.ready[i]
		if sandbox.Stale(w.spec, spec) {
			stale = append(stale, w.handle)
			ip.ready = slices.Delete(ip.ready, i, i+1)
			i--
			continue
		}
		if sandbox.Poolable(w.spec, spec) == nil {
			handle = w.handle
			ip.ready = slices.Delete(ip.ready, i, i+1)
			break
		}
	}
	if len(stale) > 0 {
		p.log.Info("deleting sandboxes of the warm pool started from an older version of their image", "image", image, "sandboxes", len(stale))
		p.discard(stale)
	}
	p.mu.Unlock()
	if handle != "" || len(stale) > 0 {
		p.poke()
	}
	return handle, handle != ""
}

// poke wakes the filler.
func (p *Pool) poke() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// discard deletes waiting sandboxes in the background; Close waits for
// it. p.mu held.
func (p *Pool) discard(handles []string) {
	p.bg.Go(func() {
		for _, err := range p.discardAll(context.Background(), handles) {
			p.log.Warn("deleting a sandbox of the warm pool", "err", err)
		}
	})
}

// discardAll deletes the sandboxes handles, all at once, and returns the
// errors of those it could not delete.
func (p *Pool) discardAll(ctx context.Context, handles []string) []error {
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	for _, h := range handles {
		wg.Go(func() {
			if err := p.opts.Engine.Discard(ctx, h); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("sandbox %s: %w", h, err))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return errs
}

// Status implements sandbox.WarmPool: every image's pool, by image.
func (p *Pool) Status() []sandbox.PoolStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []sandbox.PoolStatus
	for _, ref := range slices.Sorted(maps.Keys(p.pools)) {
		ip := p.pools[ref]
		out = append(out, sandbox.PoolStatus{Image: ref, Size: ip.size.Sandboxes, MemoryMiB: ip.size.MemoryMiB,
			Waiting: len(ip.ready), Starting: ip.starting})
	}
	return out
}

// Close implements sandbox.WarmPool: it stops the filler (a start under
// way is given up) and deletes every waiting sandbox. It returns the
// engine's errors for those it could not delete.
func (p *Pool) Close(ctx context.Context) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	started := p.started
	var handles []string
	for _, ip := range p.pools {
		for _, w := range ip.ready {
			handles = append(handles, w.handle)
		}
		ip.ready = nil
	}
	p.mu.Unlock()
	p.cancel()
	p.poke()
	if started {
		<-p.done
	}
	p.bg.Wait()
	return errors.Join(p.discardAll(ctx, handles)...)
}

// fill keeps every pool full, one sandbox at a time, until Close.
func (p *Pool) fill() {
	defer close(p.done)
	for {
		ip, wait := p.next()
		if ip == nil {
			var timer <-chan time.Time
			if wait > 0 {
				timer = time.After(wait)
			}
			select {
			case <-p.wake:
			case <-timer:
			case <-p.ctx.Done():
				return
			}
			continue
		}
		h, spec, err := p.prestart(ip)
		p.mu.Lock()
		ip.starting--
		switch {
		case err != nil:
			ip.failures++
			delay := p.opts.Retry << min(ip.failures-1, 6)
			ip.retryAt = time.Now().Add(delay)
			if p.ctx.Err() == nil {
				p.log.Warn("a sandbox of the warm pool could not be started; starts of its image are cold meanwhile",
					"image", ip.ref, "failures", ip.failures, "retry_in", delay.String(), "err", err)
			}
		case p.closed:
			p.discard([]string{h})
		default:
			ip.failures = 0
			ip.ready = append(ip.ready, waiting{handle: h, spec: spec})
		}
		p.mu.Unlock()
		if p.ctx.Err() != nil {
			return
		}
	}
}

// next picks the pool most short of its size that may start a sandbox
// now, and counts the start; nil when none may, with how long until one
// may retry (0: until woken).
func (p *Pool) next() (*imagePool, time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, 0
	}
	now := time.Now()
	var best *imagePool
	var wait time.Duration
	for _, ref := range slices.Sorted(maps.Keys(p.pools)) {
		ip := p.pools[ref]
		short := ip.size.Sandboxes - len(ip.ready) - ip.starting
		if short <= 0 {
			continue
		}
		if d := ip.retryAt.Sub(now); d > 0 {
			if wait == 0 || d < wait {
				wait = d
			}
			continue
		}
		if best == nil || short > best.size.Sandboxes-len(best.ready)-best.starting {
			best = ip
		}
	}
	if best != nil {
		best.starting++
	}
	return best, wait
}

// prestart starts one sandbox for ip's image.
func (p *Pool) prestart(ip *imagePool) (string, sandbox.Spec, error) {
	ctx, cancel := context.WithTimeout(p.ctx, time.Minute)
	defer cancel()
	img, err := p.opts.Images.Resolve(ctx, ip.ref, "")
	if err != nil {
		return "", sandbox.Spec{}, fmt.Errorf("image %q: %w", ip.ref, err)
	}
	spec := sandbox.WarmSpec(img, ip.size.share(), p.opts.Pids, p.opts.DiskMiB)
	h, err := p.opts.Engine.Prestart(ctx, spec)
	if err != nil {
		return "", sandbox.Spec{}, err
	}
	return h, spec, nil
}
