package sandbox

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox/network"
)

// networkOf resolves a sandbox's normalized network config within the
// bounds of its namespace: nil when it has no network.
func (s *Service) networkOf(id ID, n Network) (*effectiveNetwork, error) {
	return s.opts.Network(id.Namespace()).resolve(id.Namespace(), n)
}

// linkConfig is what the engine attaches for a sandbox with network e,
// reporting its refusals to d.
func (s *Service) linkConfig(e *effectiveNetwork, d *denials) *network.Config {
	if e == nil {
		return nil
	}
	return &network.Config{
		Policy:   e.policy,
		Limits:   e.limits,
		Exempt:   e.exempt,
		Dialer:   s.opts.NetDialer,
		Resolver: s.opts.NetResolver,
		OnDeny:   d.deny,
	}
}

// newDenials returns the reporter of sandbox id's refused attempts.
func (s *Service) newDenials(id ID) *denials {
	return &denials{id: id, sink: s.opts.OnNetworkDenial, now: s.opts.Now}
}

// SetNetwork implements Manager. The new network is checked as a start
// checks it (NormalizeNetwork, then the namespace's bounds), applied at
// once to the running sandbox (live connections it refuses are reset),
// and recorded, so that the sandbox's next start has it too. Errors:
// class NotFound for an unknown sandbox, Invalid for a malformed network,
// Forbidden for one the namespace may not have.
func (s *Service) SetNetwork(ctx context.Context, id ID, n Network) (NetworkUpdate, error) {
	rec, err := s.opts.Store.Sandbox(ctx, id)
	if err != nil {
		return NetworkUpdate{}, err
	}
	norm, err := NormalizeNetwork(n, "network")
	if err != nil {
		return NetworkUpdate{}, err
	}
	if norm.Mode == NetworkOn && s.bounds.NoNetwork {
		return NetworkUpdate{}, errdefs.Invalidf("network: this server's sandbox engine cannot give sandboxes network")
	}
	eff, err := s.networkOf(id, norm)
	if err != nil {
		return NetworkUpdate{}, err
	}
	b := s.lockBox(id)
	defer b.mu.Unlock()
	out := NetworkUpdate{Network: Network{Mode: NetworkNone}}
	if eff != nil {
		out.Network = eff.Network
	}
	prev, prevDenials := b.net, b.denials
	running := b.alive()
	if running {
		if err := s.applyNetwork(ctx, id, b, eff); err != nil {
			return NetworkUpdate{}, err
		}
		out.Running = true
	}
	rec.Config.Network = norm
	if err := s.opts.Store.SetSandboxConfig(ctx, id, rec.Config); err != nil {
		if running {
			// Back to what the record says it runs with.
			if rerr := s.applyNetwork(context.WithoutCancel(ctx), id, b, prev); rerr != nil {
				s.opts.Log.Error("restore a sandbox's network after a failed update", "sandbox", id.String(), "err", rerr)
			}
			b.denials = prevDenials
		}
		return NetworkUpdate{}, err
	}
	if running {
		b.cfg.Network = norm
	}
	s.opts.Log.Info("sandbox network changed", "sandbox", id.String(), "mode", string(out.Network.Mode),
		"allow", len(out.Network.Allow), "deny", len(out.Network.Deny), "running", running)
	return out, nil
}

// applyNetwork gives the running sandbox b holds (b.mu held) the network
// e (nil: none) through the engine.
func (s *Service) applyNetwork(ctx context.Context, id ID, b *box, e *effectiveNetwork) error {
	eng, ok := s.opts.Engine.(Networker)
	if !ok {
		if e == nil {
			return nil
		}
		return errdefs.Invalidf("network: this server's sandbox engine cannot give sandboxes network")
	}
	if e != nil && b.denials == nil {
		b.denials = s.newDenials(id)
	}
	if err := eng.SetNetwork(ctx, id, s.linkConfig(e, b.denials)); err != nil {
		return engineError("change the network of", id, err)
	}
	if e == nil && b.denials != nil {
		b.denials.close()
		b.denials = nil
	}
	b.net = e
	return nil
}

// denials reports one sandbox's refused network attempts to the
// Service's sink, at most once per denialEvery: the first at once, the
// ones that follow within the interval as one report at its end (the
// last of them, and how many others were left out).
type denials struct {
	id   ID
	sink func(NetworkDenial)
	now  func() time.Time

	mu      sync.Mutex
	last    time.Time // when the last report went out (real time)
	pending int       // refusals since, not reported
	latest  network.Denial
	timer   *time.Timer
	closed  bool
}

// denialEvery is the most often one sandbox's refusals are reported.
const denialEvery = time.Second

// deny is the link's OnDeny: it never blocks.
func (d *denials) deny(x network.Denial) {
	if d == nil || d.sink == nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return
	}
	now := time.Now()
	if d.timer == nil && now.Sub(d.last) >= denialEvery {
		d.last = now
		d.sink(NetworkDenial{ID: d.id, Time: d.now(), Denial: x})
		return
	}
	d.pending++
	d.latest = x
	if d.timer == nil {
		d.timer = time.AfterFunc(d.last.Add(denialEvery).Sub(now), d.flush)
	}
}

// flush reports the refusals held back.
func (d *denials) flush() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.timer = nil
	d.report()
}

// report sends what is pending; d.mu held.
func (d *denials) report() {
	if d.pending == 0 {
		return
	}
	d.sink(NetworkDenial{ID: d.id, Time: d.now(), Denial: d.latest, Suppressed: d.pending - 1})
	d.last, d.pending = time.Now(), 0
}

// close reports what is pending at once and ignores later refusals.
func (d *denials) close() {
	if d == nil || d.sink == nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
	d.report()
	d.closed = true
}

// DescribeDenial is the one-line description of a refused network attempt
// for logs and the audit log: protocol, destination, name, why, and how
// many more were left out.
func DescribeDenial(d NetworkDenial) string {
	s := "network refused: " + d.Denial.String()
	if d.Suppressed > 0 {
		s += fmt.Sprintf(" (and %d more refused since the previous report)", d.Suppressed)
	}
	return s
}
