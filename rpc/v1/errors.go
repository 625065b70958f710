package v1

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/http"

	"github.com/msb-dev/msb/auth"
	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/rpc"
)

// classCodes maps every error class to its HTTP status and v1 error code:
// the only place the v1 front-end decides what an error is. A class whose
// message msb wrote for the client has show set; an Internal error is
// logged with a reference and only the reference goes to the client.
// NotFound and Invalid take the code of the route (route.notFound,
// route.invalid) when it has one, so the SDK raises its typed errors
// (SandboxNotFoundError, VolumeNotFoundError, InvalidConfigError, ...).
var classCodes = map[errdefs.Class]struct {
	status int
	code   string
	show   bool
}{
	errdefs.Invalid:         {http.StatusBadRequest, "invalid_request", true},
	errdefs.NotFound:        {http.StatusNotFound, "not_found", true},
	errdefs.Conflict:        {http.StatusConflict, "invalid_state_transition", true},
	errdefs.Exhausted:       {http.StatusForbidden, "quota_exceeded", true},
	errdefs.Unauthenticated: {http.StatusUnauthorized, "invalid_api_key", true},
	errdefs.Forbidden:       {http.StatusForbidden, "forbidden", true},
	errdefs.RateLimited:     {http.StatusTooManyRequests, "rate_limited", true},
	errdefs.Unavailable:     {http.StatusServiceUnavailable, "unavailable", true},
	errdefs.Internal:        {http.StatusInternalServerError, "internal_error", false},
}

// The codes that refine a class's on some routes: the SDKs map them to
// typed errors (SandboxNotFoundError, VolumeNotFoundError,
// SandboxFsOpsError, SandboxAlreadyExistsError, InvalidConfigError).
const (
	codeSandboxNotFound   = "sandbox_not_found"
	codeVolumeNotFound    = "volume_not_found"
	codeFileNotFound      = "volume_file_not_found"
	codeNameExists        = "name_already_exists"
	codeInvalidRequest    = "invalid_request"
	codeInvalidConfig     = "invalid_sandbox_config"
	codeInvalidVolumePath = "invalid_volume_path"
)

// codedError gives an error a code of its own (and, if set, a status),
// keeping its class for the audit and the status table.
type codedError struct {
	code   string
	status int
	err    error
}

func (e *codedError) Error() string { return e.err.Error() }
func (e *codedError) Unwrap() error { return e.err }

// withCode gives err the v1 code code; nil stays nil.
func withCode(code string, err error) error {
	if err == nil {
		return nil
	}
	return &codedError{code: code, err: err}
}

// errorBody is the v1 error envelope.
type errorBody struct {
	Error errorDetail `json:"error"`
}

type errorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Details any    `json:"details"`
}

// describe returns the status, code and message of err on route rt (nil:
// no route), logging an internal error's detail with a reference.
func (h *Handler) describe(rt *route, err error) (int, string, string) {
	c := classCodes[errdefs.Classify(err)]
	status, code := c.status, c.code
	if rt != nil {
		switch errdefs.Classify(err) {
		case errdefs.NotFound:
			if rt.notFound != "" {
				code = rt.notFound
			}
		case errdefs.Invalid:
			if rt.invalid != "" {
				code = rt.invalid
			}
		}
	}
	var ce *codedError
	if errors.As(err, &ce) {
		code = ce.code
		if ce.status != 0 {
			status = ce.status
		}
	}
	msg := err.Error()
	if !c.show {
		msg = h.internal(rt, err)
	}
	return status, code, msg
}

// internal logs an unexpected error with a reference and returns the
// message the client sees: what failed, when an errdefs.Error of class
// Internal says it safely, and the reference.
func (h *Handler) internal(rt *route, err error) string {
	ref := make([]byte, 6)
	rand.Read(ref)
	r := hex.EncodeToString(ref)
	what := "v1"
	if rt != nil {
		what = "v1: " + rt.name
	}
	h.log.Error("internal error", "ref", r, "in", what, "err", err)
	msg := "internal server error"
	var e *errdefs.Error
	if errors.As(err, &e) && e.Class == errdefs.Internal && e.Msg != "" {
		msg = e.Msg
	}
	return msg + " (ref " + r + "): the server log has the details"
}

// writeError answers with the error envelope of err and, for a caller,
// the rate headers (a 401 also gets WWW-Authenticate).
func (h *Handler) writeError(w http.ResponseWriter, caller *auth.Caller, rt *route, err error) {
	status, code, msg := h.describe(rt, err)
	rpc.SetRateHeaders(w.Header(), h.gate.Policy, caller, status)
	writeJSON(w, status, errorBody{Error: errorDetail{Code: code, Message: msg}})
}
