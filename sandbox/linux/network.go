package linux

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox"
	"github.com/msb-dev/msb/sandbox/network"
)

// A sandbox's outbound network is a network.Link: a TUN device, eth0, in
// the sandbox's network namespace (which the engine creates, with only its
// loopback), whose other end is a netstack in this process. The engine
// attaches it once the sandbox's init runs (its namespace exists) and
// before Start returns, so nothing in the sandbox ever runs without the
// network its spec asks for; it closes it when the init is gone.
//
// The engine's own code calls three functions of this file, at three
// places (see the package's call sites: start, kill, Stats):
//
//   - attachNetwork(ctx, b) right after the init has started, before
//     the portal is pinged; on error the start fails as if the portal had
//     not answered (kill, tear down, ErrUnavailable);
//   - detachNetwork(b) in kill, once the init is gone;
//   - networkStats(b) in Stats.

var _ sandbox.Networker = (*Engine)(nil)

// attachNetwork gives the sandbox b holds (b.mu held), whose init has
// started, the network of its spec, if any. It returns an error wrapping
// errdefs.ErrUnavailable when the link cannot be set up.
func (e *Engine) attachNetwork(ctx context.Context, b *box) error {
	if b.spec.Network == nil {
		return nil
	}
	link, err := e.attachLink(ctx, b, *b.spec.Network)
	if err != nil {
		return err
	}
	b.link = link
	return nil
}

func (e *Engine) attachLink(ctx context.Context, b *box, cfg network.Config) (*network.Link, error) {
	// (network.Attach also refuses the server's own namespace, whatever
	// happens.)
	ns, err := b.proc.openNS("net")
	if errors.Is(err, errInitExited) {
		return nil, fmt.Errorf("sandbox %s stopped while its network was set up: %w", b.id, errdefs.ErrConflict)
	}
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: network: %w: %w", b.id, err, errdefs.ErrUnavailable)
	}
	defer ns.Close()
	link, err := network.Attach(ctx, ns, cfg)
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: %w: %w", b.id, err, errdefs.ErrUnavailable)
	}
	return link, nil
}

// detachNetwork closes the sandbox's network, if it has one; b.mu held.
// The device goes with it: the sandbox is left with its loopback.
func (e *Engine) detachNetwork(b *box) {
	if b.link == nil {
		return
	}
	if err := b.link.Close(); err != nil {
		e.log().Warn("closing a sandbox's network", "sandbox", b.id.String(), "err", err)
	}
	b.link = nil
}

// networkStats are the counters of the sandbox's network, nil when it has
// none; b.mu held.
func networkStats(b *box) *sandbox.NetworkStats {
	if b.link == nil {
		return nil
	}
	st := b.link.Stats()
	return &sandbox.NetworkStats{
		Connections: st.TCPConns + st.UDPFlows,
		Active:      st.Active,
		Denied:      st.Denied,
		BytesIn:     st.BytesDown,
		BytesOut:    st.BytesUp,
		DNSQueries:  st.DNSQueries,
	}
}

// SetNetwork implements sandbox.Networker: a running sandbox without
// network gets one attached; one with network gets cfg's policy and
// limits (live connections the policy refuses are reset); nil detaches
// it. The next start of the sandbox has cfg too. It returns an error
// wrapping errdefs.ErrNotFound for an unknown sandbox,
// errdefs.ErrConflict when it is not running, errdefs.ErrInvalid for a
// policy the link refuses, and errdefs.ErrUnavailable when a link cannot
// be set up.
func (e *Engine) SetNetwork(ctx context.Context, id sandbox.ID, cfg *network.Config) error {
	b := e.lock(id)
	if b == nil {
		return notFound(id)
	}
	defer b.mu.Unlock()
	if b.leftover || !b.running() || b.proc == nil {
		return fmt.Errorf("sandbox %s is not running: %w", id, errdefs.ErrConflict)
	}
	switch {
	case cfg == nil:
		e.detachNetwork(b)
	case b.link == nil:
		link, err := e.attachLink(ctx, b, *cfg)
		if err != nil {
			return err
		}
		b.link = link
	default:
		if err := b.link.SetPolicy(cfg.Policy); err != nil {
			return fmt.Errorf("sandbox %s: %w: %w", id, err, errdefs.ErrInvalid)
		}
		if err := b.link.SetLimits(cfg.Limits); err != nil {
			return fmt.Errorf("sandbox %s: %w: %w", id, err, errdefs.ErrInvalid)
		}
	}
	b.spec.Network = cfg
	return nil
}

func (e *Engine) log() *slog.Logger {
	if e.cfg.Log != nil {
		return e.cfg.Log
	}
	return slog.Default()
}
