package sandbox

import (
	"context"
	"time"

	"github.com/msb-dev/msb/errdefs"
)

// Unavailable is the API of a server that has no isolation engine (not
// root, no engine): every call fails with errdefs.ErrUnavailable and
// Reason, never with a fake success, so that front-ends still
// authenticate, authorize and audit, and say why.
type Unavailable struct {
	Reason string
}

var _ API = Unavailable{}

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

// Pool reports no pool: nothing runs.
func (u Unavailable) Pool() []PoolStatus { return nil }

// Usage reports nothing used and no quota: nothing runs.
func (u Unavailable) Usage(string) (Usage, Quota) { return Usage{}, Quota{} }

// Get fails with errdefs.ErrUnavailable.
func (u Unavailable) Get(context.Context, ID) (Record, error) { return Record{}, u.fail() }

// GetByUUID fails with errdefs.ErrUnavailable.
func (u Unavailable) GetByUUID(context.Context, string, string) (Record, error) {
	return Record{}, u.fail()
}

// List fails with errdefs.ErrUnavailable.
func (u Unavailable) List(context.Context, string, ListOptions) ([]Record, string, error) {
	return nil, "", u.fail()
}

// Remove fails with errdefs.ErrUnavailable.
func (u Unavailable) Remove(context.Context, ID) error { return u.fail() }

// Sessions returns streams and file operations that fail as u does.
func (u Unavailable) Sessions() Sessions { return unavailableSessions{u} }

type unavailableSessions struct{ Unavailable }

// Stream fails with errdefs.ErrUnavailable.
func (u unavailableSessions) Stream(context.Context, ID, ExecSpec, bool, func(ExecEvent)) (Process, error) {
	return nil, u.fail()
}

// Open fails with errdefs.ErrUnavailable.
func (u unavailableSessions) Open(context.Context, ID, string, OpenOptions) (FileHandle, error) {
	return nil, u.fail()
}

// Stat fails with errdefs.ErrUnavailable.
func (u unavailableSessions) Stat(context.Context, ID, string, bool) (FileInfo, error) {
	return FileInfo{}, u.fail()
}

// List fails with errdefs.ErrUnavailable.
func (u unavailableSessions) List(context.Context, ID, string) ([]FileInfo, error) {
	return nil, u.fail()
}

// Mkdir fails with errdefs.ErrUnavailable.
func (u unavailableSessions) Mkdir(context.Context, ID, string, uint32) error { return u.fail() }

// Remove fails with errdefs.ErrUnavailable.
func (u unavailableSessions) Remove(context.Context, ID, string, bool) error { return u.fail() }

// Copy fails with errdefs.ErrUnavailable.
func (u unavailableSessions) Copy(context.Context, ID, string, string) error { return u.fail() }

// Rename fails with errdefs.ErrUnavailable.
func (u unavailableSessions) Rename(context.Context, ID, string, string) error { return u.fail() }

// SetNetwork fails with errdefs.ErrUnavailable.
func (u Unavailable) SetNetwork(context.Context, ID, Network) (NetworkUpdate, error) {
	return NetworkUpdate{}, u.fail()
}
