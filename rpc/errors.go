package rpc

import (
	"errors"
	"net/http"

	"github.com/sourcegraph/jsonrpc2"

	"github.com/msb-dev/msb/auth"
	"github.com/msb-dev/msb/auth/ratelimit"
	"github.com/msb-dev/msb/duration"
	"github.com/msb-dev/msb/namespace"
	"github.com/msb-dev/msb/sandbox"
)

// Error codes of CONTRACT.md beyond JSON-RPC 2.0's own.
const (
	CodeConflict        = -32001
	CodeUnauthenticated = -32002
	CodeNotFound        = -32003
	CodeForbidden       = -32004
	CodeRateLimited     = -32005
)

// Errors of the JSON-RPC layer itself.
var (
	errInvalidParams  = errors.New("invalid params")
	errMethodNotFound = errors.New("method not found")
)

// errorClasses maps every error class msb knows to its JSON-RPC code and
// HTTP status. Errors of these classes carry a message written for the
// client; anything else is internal and only its reference is shown.
var errorClasses = []struct {
	err    error
	code   int64
	status int
}{
	{errMethodNotFound, jsonrpc2.CodeMethodNotFound, http.StatusOK},
	{auth.ErrUnauthenticated, CodeUnauthenticated, http.StatusUnauthorized},
	{auth.ErrRateLimited, CodeRateLimited, http.StatusTooManyRequests}, // *auth.RateLimitError: Retry-After
	{auth.ErrForbidden, CodeForbidden, http.StatusForbidden},           // missing scope, key beyond the caller's reach
	{namespace.ErrForbidden, CodeForbidden, http.StatusForbidden},
	{auth.ErrInvalidArgument, jsonrpc2.CodeInvalidParams, http.StatusOK},
	{auth.ErrKeyNotFound, CodeNotFound, http.StatusOK},
	{ratelimit.ErrInvalid, jsonrpc2.CodeInvalidParams, http.StatusOK},
	{duration.ErrInvalid, jsonrpc2.CodeInvalidParams, http.StatusOK},
	{namespace.ErrInvalidName, jsonrpc2.CodeInvalidParams, http.StatusOK},
	{errInvalidParams, jsonrpc2.CodeInvalidParams, http.StatusOK},
	{sandbox.ErrInvalidArgument, jsonrpc2.CodeInvalidParams, http.StatusOK},
	{sandbox.ErrNotFound, CodeNotFound, http.StatusOK},
	{sandbox.ErrConflict, CodeConflict, http.StatusOK},
	{sandbox.ErrUnavailable, jsonrpc2.CodeInternalError, http.StatusOK},
}

// classify returns the code and status for err, and whether err is one of
// the known classes (whose message may be shown to the client).
func classify(err error) (code int64, status int, known bool) {
	for _, c := range errorClasses {
		if errors.Is(err, c.err) {
			return c.code, c.status, true
		}
	}
	return jsonrpc2.CodeInternalError, http.StatusOK, false
}
