package rpc

import (
	"errors"
	"net/http"

	"github.com/sourcegraph/jsonrpc2"

	"github.com/msb-dev/msb/errdefs"
)

// Error codes of the JSON-RPC API beyond JSON-RPC 2.0's own (docs/api.md).
const (
	CodeConflict        = -32001
	CodeUnauthenticated = -32002
	CodeNotFound        = -32003
	CodeForbidden       = -32004
	CodeRateLimited     = -32005
)

// errInvalidParams starts the messages of params the JSON-RPC layer itself
// refuses (not an object, unknown field, wrong type).
var errInvalidParams = errdefs.New(errdefs.Invalid, "invalid params")

// errMethodNotFound is the one error of the JSON-RPC layer that is not a
// class of errdefs: an unknown method has its own code.
var errMethodNotFound = errors.New("method not found")

// classCodes maps every error class to its JSON-RPC code and HTTP status:
// the only place the JSON-RPC front-end decides what an error is. A class
// whose message is written for the client has show set; an Internal error
// is logged and only a reference goes to the client.
var classCodes = map[errdefs.Class]struct {
	code   int64
	status int
	show   bool
}{
	errdefs.Invalid:         {jsonrpc2.CodeInvalidParams, http.StatusOK, true},
	errdefs.NotFound:        {CodeNotFound, http.StatusOK, true},
	errdefs.Conflict:        {CodeConflict, http.StatusOK, true},
	errdefs.Exhausted:       {CodeConflict, http.StatusOK, true},
	errdefs.Unauthenticated: {CodeUnauthenticated, http.StatusUnauthorized, true},
	errdefs.Forbidden:       {CodeForbidden, http.StatusForbidden, true},
	errdefs.RateLimited:     {CodeRateLimited, http.StatusTooManyRequests, true},
	errdefs.Unavailable:     {jsonrpc2.CodeInternalError, http.StatusOK, true},
	errdefs.Internal:        {jsonrpc2.CodeInternalError, http.StatusOK, false},
}

// classify returns the code and status for err, and whether its message
// may be shown to the client.
func classify(err error) (code int64, status int, known bool) {
	if errors.Is(err, errMethodNotFound) {
		return jsonrpc2.CodeMethodNotFound, http.StatusOK, true
	}
	c := classCodes[errdefs.Classify(err)]
	return c.code, c.status, c.show
}
