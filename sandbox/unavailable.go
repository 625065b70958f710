package sandbox

import (
	"context"
	"time"

	"github.com/msb-dev/msb/errdefs"
)

// Unavailable is a Manager for a server that has no isolation engine: every
// call fails with errdefs.ErrUnavailable and Reason, never with a fake success.
type Unavailable struct {
	Reason string
}

func (u Unavailable) fail() error {
	return errdefs.Unavailablef("no sandbox runtime is available: %s", u.Reason)
}

// Start fails with errdefs.ErrUnavailable.
func (u Unavailable) Start(context.Context, ID, *Config) error { return u.fail() }

// Stop fails with errdefs.ErrUnavailable.
func (u Unavailable) Stop(context.Context, ID) error { return u.fail() }

// Metrics fails with errdefs.ErrUnavailable.
func (u Unavailable) Metrics(context.Context, string) ([]Metrics, error) { return nil, u.fail() }

// SandboxMetrics fails with errdefs.ErrUnavailable.
func (u Unavailable) SandboxMetrics(context.Context, ID) (Metrics, error) { return Metrics{}, u.fail() }

// RunCode fails with errdefs.ErrUnavailable.
func (u Unavailable) RunCode(context.Context, ID, Language, string, time.Duration) (ReplResult, error) {
	return ReplResult{}, u.fail()
}

// Exec fails with errdefs.ErrUnavailable.
func (u Unavailable) Exec(context.Context, ID, ExecRequest) (ExecResult, error) {
	return ExecResult{}, u.fail()
}

// SetNetwork fails with errdefs.ErrUnavailable.
func (u Unavailable) SetNetwork(context.Context, ID, Network) (NetworkUpdate, error) {
	return NetworkUpdate{}, u.fail()
}
