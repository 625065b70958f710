package v1

import (
	"context"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox"
)

// Unavailable is the Service of a server that cannot manage sandboxes
// (no engine, not root): every call fails with class Unavailable and the
// reason, so that the API still authenticates, authorizes and audits,
// and says why.
type Unavailable struct {
	sandbox.Unavailable
}

func (u Unavailable) fail() error {
	return errdefs.Unavailablef("no sandbox runtime is available: %s", u.Reason)
}

// Get fails with class Unavailable.
func (u Unavailable) Get(context.Context, sandbox.ID) (sandbox.Record, error) {
	return sandbox.Record{}, u.fail()
}

// GetByUUID fails with class Unavailable.
func (u Unavailable) GetByUUID(context.Context, string, string) (sandbox.Record, error) {
	return sandbox.Record{}, u.fail()
}

// List fails with class Unavailable.
func (u Unavailable) List(context.Context, string, sandbox.ListOptions) ([]sandbox.Record, string, error) {
	return nil, "", u.fail()
}

// Remove fails with class Unavailable.
func (u Unavailable) Remove(context.Context, sandbox.ID) error { return u.fail() }

// UnavailableSessions are the Sessions of a server that cannot stream
// processes or reach files: every call fails with class Unavailable.
type UnavailableSessions struct {
	Reason string
}

func (u UnavailableSessions) fail() error {
	return errdefs.Unavailablef("this server cannot stream processes or reach a sandbox's files: %s", u.Reason)
}

// Stream fails with class Unavailable.
func (u UnavailableSessions) Stream(context.Context, sandbox.ID, sandbox.ExecSpec, bool, func(sandbox.ExecEvent)) (sandbox.Process, error) {
	return nil, u.fail()
}

// Open fails with class Unavailable.
func (u UnavailableSessions) Open(context.Context, sandbox.ID, string, sandbox.OpenOptions) (sandbox.FileHandle, error) {
	return nil, u.fail()
}

// Stat fails with class Unavailable.
func (u UnavailableSessions) Stat(context.Context, sandbox.ID, string, bool) (sandbox.FileInfo, error) {
	return sandbox.FileInfo{}, u.fail()
}

// List fails with class Unavailable.
func (u UnavailableSessions) List(context.Context, sandbox.ID, string) ([]sandbox.FileInfo, error) {
	return nil, u.fail()
}

// Mkdir fails with class Unavailable.
func (u UnavailableSessions) Mkdir(context.Context, sandbox.ID, string, uint32) error {
	return u.fail()
}

// Remove fails with class Unavailable.
func (u UnavailableSessions) Remove(context.Context, sandbox.ID, string, bool) error { return u.fail() }

// Copy fails with class Unavailable.
func (u UnavailableSessions) Copy(context.Context, sandbox.ID, string, string) error { return u.fail() }

// Rename fails with class Unavailable.
func (u UnavailableSessions) Rename(context.Context, sandbox.ID, string, string) error {
	return u.fail()
}

var (
	_ Service          = Unavailable{}
	_ sandbox.Sessions = UnavailableSessions{}
)
