package sandbox

import (
	"context"
	"time"

	"github.com/msb-dev/msb/errdefs"
)

// running returns the live box of id, or the error a call on it gets:
// NotFound for a sandbox never started, Conflict for one not running.
func (s *Service) running(ctx context.Context, id ID) (*box, error) {
	if b, ok := s.lookup(id); ok && b.alive() {
		return b, nil
	}
	if _, err := s.opts.Store.Sandbox(ctx, id); err != nil {
		return nil, err
	}
	return nil, errdefs.Conflictf("sandbox %q in namespace %q is not running: start it with sandbox.start", id.Name(), id.Namespace())
}

// RunCode implements Manager.
func (s *Service) RunCode(ctx context.Context, id ID, lang Language, code string, timeout time.Duration) (ReplResult, error) {
	b, err := s.running(ctx, id)
	if err != nil {
		return ReplResult{}, err
	}
	defer s.busy(b)()
	ctx, release := holdOutput(ctx, s.output)
	defer release()
	res, err := s.opts.Engine.RunCode(ctx, id, lang, code, min(timeout, s.opts.MaxTimeout))
	if err != nil {
		if errdefs.Is(err, errdefs.Invalid) {
			b.mu.Lock()
			image := b.cfg.Image
			b.mu.Unlock()
			return ReplResult{}, errdefs.Wrapf(err, "%v (image %q)", err, image)
		}
		return ReplResult{}, s.callError(id, b, err)
	}
	return res, nil
}

// Exec implements Manager.
func (s *Service) Exec(ctx context.Context, id ID, req ExecRequest) (ExecResult, error) {
	b, err := s.running(ctx, id)
	if err != nil {
		return ExecResult{}, err
	}
	defer s.busy(b)()
	ctx, release := holdOutput(ctx, s.output)
	defer release()
	req.Timeout = min(req.Timeout, s.opts.MaxTimeout)
	res, err := s.opts.Engine.Exec(ctx, id, req)
	if err != nil {
		return ExecResult{}, s.callError(id, b, err)
	}
	return res, nil
}

// callError explains a failed call: a sandbox stopped under it is a
// conflict, not an internal error.
func (s *Service) callError(id ID, b *box, err error) error {
	if !b.alive() {
		return errdefs.Conflictf("sandbox %q was stopped during the call", id.Name())
	}
	return engineError("run in", id, err)
}
