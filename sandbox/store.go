package sandbox

import (
	"context"
	"time"
)

// Record is what the server remembers of a sandbox, running or stopped.
type Record struct {
	ID ID
	// UUID names this sandbox for as long as it exists; a sandbox of the
	// same name made after this one was removed gets another.
	UUID    string
	Config  Config // normalized
	State   State
	Failure string // why its last start failed (State failed)
	Created time.Time
	Started time.Time
	Stopped time.Time
	// NetworkOn says whether the sandbox has outbound network with its
	// config in its namespace (Config.Network resolved against the
	// namespace's settings); filled by the Service, not stored.
	NetworkOn bool
}

// Store keeps sandbox records; storage.DB is the real one (SQLite), which
// keeps a record format of its own so that the domain types can change
// without touching stored rows.
type Store interface {
	// PutSandbox records a sandbox as started with r.Config at r.Started
	// (keeping its creation time and UUID if it is known).
	PutSandbox(ctx context.Context, r Record) error
	// SetSandboxConfig replaces the config of the sandbox's record (its
	// state and times stay); class NotFound when there is none.
	SetSandboxConfig(ctx context.Context, id ID, cfg Config) error
	// MarkSandboxStopped records that the sandbox stopped at t.
	MarkSandboxStopped(ctx context.Context, id ID, t time.Time) error
	// MarkSandboxFailed records that the sandbox's start failed at t, why.
	MarkSandboxFailed(ctx context.Context, id ID, why string, t time.Time) error
	// DeleteSandbox forgets the sandbox; a missing one is not an error.
	DeleteSandbox(ctx context.Context, id ID) error
	// SandboxByUUID returns the record of namespace ns with UUID uuid;
	// class NotFound when there is none.
	SandboxByUUID(ctx context.Context, ns, uuid string) (Record, error)
	// Sandbox returns the record of id; an error of class NotFound when
	// there is none.
	Sandbox(ctx context.Context, id ID) (Record, error)
	// Sandboxes returns the records of namespace ns ("*": every
	// namespace), by namespace and name.
	Sandboxes(ctx context.Context, ns string) ([]Record, error)
}
