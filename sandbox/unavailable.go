package sandbox

import (
	"context"
	"time"

	"github.com/msb-dev/msb/errdefs"
)

// Unavailable is a Manager (and Sessions) for a server that has no
// isolation engine: every call fails with errdefs.ErrUnavailable and
// Reason, never with a fake success.
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

// Stream fails with errdefs.ErrUnavailable.
func (u Unavailable) Stream(context.Context, ID, ExecSpec, bool, func(ExecEvent)) (Process, error) {
	return nil, u.fail()
}

// Open fails with errdefs.ErrUnavailable.
func (u Unavailable) Open(context.Context, ID, string, OpenOptions) (FileHandle, error) {
	return nil, u.fail()
}

// Stat fails with errdefs.ErrUnavailable.
func (u Unavailable) Stat(context.Context, ID, string, bool) (FileInfo, error) {
	return FileInfo{}, u.fail()
}

// List fails with errdefs.ErrUnavailable.
func (u Unavailable) List(context.Context, ID, string) ([]FileInfo, error) { return nil, u.fail() }

// Mkdir fails with errdefs.ErrUnavailable.
func (u Unavailable) Mkdir(context.Context, ID, string, uint32) error { return u.fail() }

// Remove fails with errdefs.ErrUnavailable.
func (u Unavailable) Remove(context.Context, ID, string, bool) error { return u.fail() }

// Copy fails with errdefs.ErrUnavailable.
func (u Unavailable) Copy(context.Context, ID, string, string) error { return u.fail() }

// Rename fails with errdefs.ErrUnavailable.
func (u Unavailable) Rename(context.Context, ID, string, string) error { return u.fail() }
