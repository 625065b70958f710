package sandbox

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/msb-dev/msb/errdefs"
)

// Start implements Manager. A start that fails once the request is
// known to be valid (the engine failed, a host port is taken, an image
// cannot be pulled) leaves the sandbox in state failed, with why.
func (s *Service) Start(ctx context.Context, id ID, cfg *Config) error {
	rec, err := s.opts.Store.Sandbox(ctx, id)
	known := err == nil
	if err != nil && !errors.Is(err, errdefs.ErrNotFound) {
		return err
	}
	if cfg == nil {
		// No config: the one it last ran with, else every default.
		cfg = &rec.Config
	}
	norm, err := Normalize(*cfg, s.bounds)
	if err != nil {
		return err
	}
	eff, err := s.networkOf(id, norm.Network)
	if err != nil {
		return err
	}
	b := s.lockBox(id)
	defer b.mu.Unlock()
	if b.running.Load() {
		if b.alive() {
			if b.cfg.Equal(norm) {
				return nil
			}
			return errdefs.Conflictf("sandbox %q is already running with a different config: stop it first, or start it with the same config", id.Name())
		}
		// It died on its own and its watcher has not released it yet:
		// release what is left and start it afresh.
		s.opts.Log.Warn("sandbox had stopped on its own; starting it again", "sandbox", id.String())
		if err := s.release(ctx, id, b); err != nil {
			return engineError("start", id, err)
		}
	}
	if !known {
		rec = Record{ID: id, UUID: uuid.NewString(), Created: s.opts.Now()}
	}
	if err := s.quotas.reserve(id.Namespace(), norm); err != nil {
		return err
	}
	b.phase.Store(StateStarting)
	err = s.start(ctx, id, b, rec, norm, eff)
	b.phase.Store(State(""))
	if err != nil {
		s.quotas.free(id.Namespace(), norm)
	}
	if err != nil && !errdefs.Is(err, errdefs.Invalid) {
		// Recorded so that a client that asked for it sees it failed, and why.
		now := s.opts.Now()
		var ferr error
		if known {
			ferr = s.opts.Store.MarkSandboxFailed(ctx, id, failureText(err), now)
		} else {
			rec.Config, rec.State, rec.Failure = norm, StateFailed, failureText(err)
			ferr = s.opts.Store.PutSandbox(ctx, rec)
		}
		if ferr != nil {
			s.opts.Log.Error("record a failed start", "sandbox", id.String(), "err", ferr)
		}
	}
	return err
}

// failureText is what a failed start's record says of err: its message
// when it was written for a client, else what failed.
func failureText(err error) string {
	var e *errdefs.Error
	if errors.As(err, &e) && e.Class == errdefs.Internal {
		return e.Msg + "; the server log has the details"
	}
	if errdefs.Classify(err) == errdefs.Internal {
		return "the start failed; the server log has the details"
	}
	return err.Error()
}

// start starts the sandbox b holds (b.mu held) with the normalized config
// norm and its network net (nil: none), as the record rec (its UUID and
// creation kept).
func (s *Service) start(ctx context.Context, id ID, b *box, rec Record, norm Config, net *effectiveNetwork) error {
	for _, dep := range norm.DependsOn {
		depID, _ := ParseID(id.Namespace(), dep) // Normalize checked the name
		d, ok := s.lookup(depID)
		if !ok || !d.alive() {
			return errdefs.Conflictf("sandbox %q depends on %q, which is not running in namespace %q: start %q first", id.Name(), dep, id.Namespace(), dep)
		}
	}
	img, err := s.opts.Images.Resolve(ctx, norm.Image, norm.User)
	if err != nil {
		return err
	}
	spec := specOf(img, norm, s.opts.Pids)
	spec.Hostname = id.Name()
	for _, v := range norm.Volumes {
		m, err := s.resolveVolume(id.Namespace(), v)
		if err != nil {
			return err
		}
		spec.Root.Mounts = append(spec.Root.Mounts, m)
	}
	// The host ports are taken before the sandbox starts, so that a port
	// in use fails the start at once.
	forwarders, err := s.listenPorts(norm.Ports)
	if err != nil {
		return err
	}
	started := false
	defer func() {
		if !started {
			closeForwarders(forwarders)
		}
	}()
	var denials *denials
	if net != nil {
		denials = s.newDenials(id)
		spec.Network = s.linkConfig(net, denials)
	}

	eng := s.opts.Engine
	// The CPU baseline is the sandbox's creation: its first sample then
	// spreads its start-up CPU over its whole life, not over the instant
	// between its start and the sample. The real clock, not opts.Now: the
	// engine's samples are timed by it.
	created := time.Now()
	// A sandbox the engine still holds (stopped by a crash inside it) is
	// replaced: its record says stopped, so its leftovers are garbage.
	// This is also where the cleanup of a leftover Recover could not
	// delete is retried.
	if err := eng.Delete(ctx, id); err != nil {
		return engineError("start", id, fmt.Errorf("clean up earlier run: %w", err))
	}
	fail := func(err error) error {
		eng.Delete(context.WithoutCancel(ctx), id)
		return engineError("start", id, err)
	}
	pooled := s.adoptWarm(ctx, id, norm.Image, spec)
	if !pooled {
		if err := eng.Create(ctx, id, spec); err != nil {
			return fail(err)
		}
		if err := eng.Start(ctx, id); err != nil {
			return fail(err)
		}
	}
	exited, err := eng.Exited(ctx, id)
	if err != nil {
		return fail(err)
	}
	now := s.opts.Now()
	rec.Config, rec.State, rec.Failure, rec.Started = norm, StateRunning, "", now
	if err := s.opts.Store.PutSandbox(ctx, rec); err != nil {
		eng.Delete(context.WithoutCancel(ctx), id)
		return err
	}
	b.cfg, b.started = norm, now
	b.net, b.denials = net, denials
	b.exited.Store(exited)
	b.lastActive.Store(now.UnixNano())
	b.run++
	if norm.MaxDuration > 0 {
		run := b.run
		b.timers = append(b.timers, time.AfterFunc(norm.MaxDuration, func() {
			s.expire(id, b, run, fmt.Sprintf("it ran for its max duration of %v", norm.MaxDuration))
		}))
	}
	if norm.IdleTimeout > 0 {
		b.timers = append(b.timers, s.watchIdle(id, b, b.run, norm.IdleTimeout))
	}
	b.sampleMu.Lock()
	b.lastCPU, b.lastAt, b.cpus = 0, created, norm.CPUs
	b.sampleMu.Unlock()
	b.ports = forwarders
	b.running.Store(true)
	started = true
	s.serveForwarders(id, forwarders)
	go s.watch(id, b, exited)
	if req, ok := norm.background(); ok {
		s.background(id, b, req)
	}
	s.opts.Log.Info("sandbox started", "sandbox", id.String(), "image", norm.Image, "memory_mib", norm.Memory, "cpus", norm.CPUs, "disk_mib", norm.Disk, "network", net != nil, "pooled", pooled)
	return nil
}

// watch waits for the init of the run that exited belongs to and, if the
// sandbox died on its own (no stop or new start came first), releases it:
// its host ports, background log and engine state are freed at once, not
// at its next start or stop, and its record says stopped.
func (s *Service) watch(id ID, b *box, exited <-chan struct{}) {
	<-exited
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.running.Load() || b.exited.Load() != exited {
		return // stopped, or started again, meanwhile
	}
	if err := s.release(context.Background(), id, b); err != nil {
		s.opts.Log.Error("release a sandbox that stopped on its own", "sandbox", id.String(), "err", err)
		return
	}
	s.opts.Log.Warn("sandbox stopped on its own; what it held is released", "sandbox", id.String())
}

// Stop implements Manager.
func (s *Service) Stop(ctx context.Context, id ID) error {
	return s.stop(ctx, id, true)
}

func (s *Service) stop(ctx context.Context, id ID, mustExist bool) error {
	b, ok := s.lookup(id)
	if !ok {
		if !mustExist {
			return nil
		}
		// Known from an earlier server run: already stopped.
		_, err := s.opts.Store.Sandbox(ctx, id)
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.running.Load() {
		return nil
	}
	if err := s.release(ctx, id, b); err != nil {
		return engineError("stop", id, err)
	}
	s.opts.Log.Info("sandbox stopped", "sandbox", id.String())
	return nil
}

// release stops the sandbox b holds and frees everything: processes,
// engine state, host ports, its background log writer, and records it
// stopped. The caller holds b.mu.
func (s *Service) release(ctx context.Context, id ID, b *box) error {
	// Not ctx: a stop that began must finish, even if the client goes away.
	ctx = context.WithoutCancel(ctx)
	b.phase.Store(StateStopping)
	defer b.phase.Store(State(""))
	for _, t := range b.timers {
		t.Stop()
	}
	b.timers = nil
	if b.running.Load() {
		s.quotas.free(id.Namespace(), b.cfg)
		if b.cfg.Ephemeral {
			// Kept a while as stopped, for a client polling for the stop.
			run := b.run
			time.AfterFunc(s.opts.EphemeralGrace, func() { s.reap(id, b, run) })
		}
	}
	b.running.Store(false)
	closeForwarders(b.ports)
	b.ports = nil
	defer func() {
		// After the engine closed the link: its last refusals are in.
		b.denials.close()
		b.net, b.denials = nil, nil
	}()
	// Delete kills it too, and lets the kernel unmount its file systems
	// after the kill, not before it returns.
	err := s.opts.Engine.Delete(ctx, id)
	if b.stopBg != nil {
		b.stopBg()
		<-b.bgDone
		b.stopBg, b.bgDone = nil, nil
	}
	if serr := s.opts.Store.MarkSandboxStopped(ctx, id, s.opts.Now()); err == nil {
		err = serr
	}
	return err
}

// expire stops the run of the sandbox b holds when its life ran out (max
// duration, idle timeout), unless that run ended already.
func (s *Service) expire(id ID, b *box, run uint64, why string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.gone || b.run != run || !b.running.Load() {
		return
	}
	if err := s.release(context.Background(), id, b); err != nil {
		s.opts.Log.Error("stop an expired sandbox", "sandbox", id.String(), "err", err)
		return
	}
	s.opts.Log.Info("sandbox stopped: "+why, "sandbox", id.String())
}

// watchIdle stops the sandbox once it had no call for idle: no exec, code,
// file operation or streamed process under way or ended in that time. It
// checks when the last activity would make it idle, and again after any
// newer activity.
func (s *Service) watchIdle(id ID, b *box, run uint64, idle time.Duration) *time.Timer {
	var t *time.Timer
	check := func() {
		b.mu.Lock()
		current := !b.gone && b.run == run && b.running.Load()
		b.mu.Unlock()
		if !current {
			return
		}
		next := idle
		if b.inFlight.Load() == 0 {
			quiet := s.opts.Now().Sub(time.Unix(0, b.lastActive.Load()))
			if quiet >= idle {
				s.expire(id, b, run, fmt.Sprintf("it was idle for %v (idle timeout)", idle))
				return
			}
			next = idle - quiet
		}
		t.Reset(next)
	}
	// Made stopped, so that check never runs before t is set.
	t = time.AfterFunc(time.Hour, check)
	t.Reset(idle)
	return t
}

// reap removes a stopped ephemeral sandbox once its grace passed, unless
// it was started again (or removed) meanwhile.
func (s *Service) reap(id ID, b *box, run uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.gone || b.run != run || b.running.Load() {
		return
	}
	if err := s.forget(context.Background(), id, b); err != nil {
		s.opts.Log.Error("remove an ephemeral sandbox", "sandbox", id.String(), "err", err)
		return
	}
	s.opts.Log.Info("ephemeral sandbox removed", "sandbox", id.String())
}
