// SKELETON written by the lead so that sandbox/linux compiles against the
// portal's API while the portal is being built. The portal's author replaces
// this file (keeping these exported signatures, or telling the lead).
package portal

import (
	"context"
	"errors"
	"io"
	"time"

	"github.com/msb-dev/msb/sandbox"
)

var errTODO = errors.New("portal: not implemented yet")

// Main is the entry point of `msb portal`, the sandbox's init: it serves
// requests on file descriptor 3 until the connection closes, then exits.
func Main() { panic(errTODO) }

// Client talks to one sandbox's portal over a connection. Safe for
// concurrent use: calls are multiplexed.
type Client struct{}

// NewClient starts a client on conn; Close closes conn.
func NewClient(conn io.ReadWriteCloser) *Client { return &Client{} }

// Ping waits until the portal answers.
func (c *Client) Ping(ctx context.Context) error { return errTODO }

// Exec runs a command and returns its exit code and output, capped at sandbox.MaxOutput.
func (c *Client) Exec(ctx context.Context, req sandbox.ExecRequest) (sandbox.ExecResult, error) {
	return sandbox.ExecResult{}, errTODO
}

// RunCode evaluates code in the sandbox's live interpreter for lang.
func (c *Client) RunCode(ctx context.Context, lang sandbox.Language, code string, timeout time.Duration) (sandbox.ReplResult, error) {
	return sandbox.ReplResult{}, errTODO
}

// Spawn runs a long-lived background command, calling out for every line it
// prints, until it exits or ctx ends; returns its exit code.
func (c *Client) Spawn(ctx context.Context, req sandbox.ExecRequest, out func(sandbox.Line)) (int, error) {
	return 0, errTODO
}

// Close closes the connection; calls in flight fail.
func (c *Client) Close() error { return nil }
