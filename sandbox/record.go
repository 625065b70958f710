package sandbox

import (
	"context"
	"time"
)

// The states of a sandbox's record beyond those an engine reports
// (engine.go): a sandbox is starting during its start, stopping while it
// stops, and failed when its last start failed (Record.Failure says why).
const (
	StateStarting State = "starting"
	StateStopping State = "stopping"
	StateFailed   State = "failed"
)

// Lifecycle bounds a sandbox's life.
type Lifecycle struct {
	// Ephemeral sandboxes are removed, record and all, once they stop
	// (after EphemeralGrace, so that a client polling for the stop still
	// sees it stopped).
	Ephemeral bool
	// MaxDuration stops the sandbox this long after it started; 0: never.
	MaxDuration time.Duration
	// IdleTimeout stops the sandbox after this long without a call
	// (exec, code, file); 0: never.
	IdleTimeout time.Duration
}

// EphemeralGrace is how long a stopped ephemeral sandbox stays listed
// before it is removed.
const EphemeralGrace = 30 * time.Second

// ListOptions select and page sandboxes.
type ListOptions struct {
	// Labels the sandboxes must all have, with these values.
	Labels map[string]string
	// Limit is the most returned; 0: 20, at most 1000.
	Limit int
	// After is the cursor a previous List returned: the page after it.
	After string
}

// Lifecycles is what the front-ends that manage sandboxes by id and list
// them (the v1 API) ask of the Service beyond Manager.
type Lifecycles interface {
	// Get returns the record of id with its live status; class NotFound
	// when there is none.
	Get(ctx context.Context, id ID) (Record, error)
	// GetByUUID returns the record of the sandbox of namespace ns whose
	// UUID is uuid; class NotFound when there is none in ns.
	GetByUUID(ctx context.Context, ns, uuid string) (Record, error)
	// List returns a page of the records of namespace ns, by name, and
	// the cursor of the next page ("" at the end).
	List(ctx context.Context, ns string, o ListOptions) ([]Record, string, error)
	// Remove stops the sandbox if it runs and forgets it: its record, its
	// log. Class NotFound when there is none.
	Remove(ctx context.Context, id ID) error
}
