package sandbox

import (
	"context"
	"fmt"
	"time"

	"github.com/msb-dev/msb/errdefs"
)

// Unavailable is a Manager for a server that has no isolation engine: every
// call fails with errdefs.ErrUnavailable and Reason, never with a fake success.
type Unavailable struct {
	Reason string
}

func (u Unavailable) fail(id ID) error {
	if err := id.Validate(); err != nil {
		return err
	}
	return errdefs.Unavailablef("no sandbox runtime is available: %s", u.Reason)
}

// Start fails with errdefs.ErrUnavailable.
func (u Unavailable) Start(ctx context.Context, id ID, cfg *Config) error { return u.fail(id) }

// Stop fails with errdefs.ErrUnavailable.
func (u Unavailable) Stop(ctx context.Context, id ID) error { return u.fail(id) }

// Metrics fails with errdefs.ErrUnavailable.
func (u Unavailable) Metrics(ctx context.Context, ns, name string) ([]Metrics, error) {
	return nil, fmt.Errorf("%w: no sandbox runtime is available: %s", errdefs.ErrUnavailable, u.Reason)
}

// RunCode fails with errdefs.ErrUnavailable.
func (u Unavailable) RunCode(ctx context.Context, id ID, lang Language, code string, timeout time.Duration) (ReplResult, error) {
	return ReplResult{}, u.fail(id)
}

// Exec fails with errdefs.ErrUnavailable.
func (u Unavailable) Exec(ctx context.Context, id ID, req ExecRequest) (ExecResult, error) {
	return ExecResult{}, u.fail(id)
}
