// Package rpc serves msb's wire API: JSON-RPC 2.0 over HTTP on /api/v1/rpc
// and the health check on /api/v1/health, exactly as CONTRACT.md describes.
//
// Every call passes through one path: authentication of the HTTP request,
// then (Server.dispatch) the key's rate limit, the method table, the scope
// the method needs, the namespace check for every namespaced method, the
// key's usage limit, then the handler; calls that change something and
// calls refused are audited. No method can skip a step, because handlers
// only ever receive an already-authorized Call.
package rpc

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sourcegraph/jsonrpc2"

	"github.com/msb-dev/msb/auth"
	"github.com/msb-dev/msb/auth/audit"
	"github.com/msb-dev/msb/auth/ratelimit"
)

// Limits on what a client may send.
const (
	MaxBodyBytes = 10 << 20 // larger bodies get 413
	MaxBatch     = 100      // calls in one batch
	// MaxBatchResponseBytes bounds what the server holds for one batch's
	// answer: once its responses pass it, the batch's remaining calls are
	// not run (each output of a sandbox call may be up to 16 MiB).
	MaxBatchResponseBytes = 48 << 20
)

// Paths served.
const (
	RPCPath    = "/api/v1/rpc"
	HealthPath = "/api/v1/health"
)

// Authenticator verifies an API key; *auth.Authenticator is the real one.
type Authenticator interface {
	Authenticate(ctx context.Context, key string) (auth.Principal, error)
}

// Limiter enforces keys' rate and usage limits; *auth.Limits is the real one.
type Limiter interface {
	// Allow takes one call from p's rate budget (and from its sandbox.start
	// budget when start is set); the error matches errdefs.ErrRateLimited.
	Allow(p auth.Principal, start bool) (ratelimit.Status, error)
	// AllowStart takes one call from p's sandbox.start budget only, for a
	// call whose main budget was already taken.
	AllowStart(p auth.Principal) (ratelimit.Status, error)
	// Status reports p's budget without taking from it.
	Status(p auth.Principal) ratelimit.Status
	// Use counts one use of p's key; auth.ErrUsageLimit once they are spent.
	Use(ctx context.Context, p auth.Principal) error
}

// Auditor records audit events without waiting; *audit.Writer is the real one.
type Auditor interface {
	Record(audit.Event)
}

// Option configures a Server.
type Option func(*Server)

// WithLimits enforces per-key rate and usage limits (not in development mode).
func WithLimits(l Limiter) Option { return func(s *Server) { s.limits = l } }

// WithAudit records calls that change something and refused calls.
func WithAudit(a Auditor) Option { return func(s *Server) { s.audit = a } }

// Server is the HTTP handler of the API.
type Server struct {
	methods Methods
	auth    Authenticator // nil: development mode, no authentication
	limits  Limiter       // nil: no limits
	audit   Auditor       // nil: no audit log
	log     *slog.Logger
	mux     *http.ServeMux
	handler http.Handler // mux, behind the development mode's guards

	// Refusals that cost the caller nothing (401s, 429s) are audited at
	// most at refusalAuditRate per source; the rest are counted into the
	// next event recorded, so a flood can neither fill the database nor
	// crowd out the events of real changes.
	refusals *ratelimit.Limiter
	skipped  sync.Map // source -> *atomic.Int64
}

// refusalAuditRate bounds the audit events of 401s (all together) and of
// 429s (per key).
var refusalAuditRate = ratelimit.Rate{N: 60, Per: time.Minute}

// sampleRefusal reports whether a refusal from source goes into the audit
// log and, if so, how many were left out before it.
func (s *Server) sampleRefusal(source string) (record bool, skipped int64) {
	c, _ := s.skipped.LoadOrStore(source, new(atomic.Int64))
	n := c.(*atomic.Int64)
	if !s.refusals.Take(source, refusalAuditRate).Allowed {
		n.Add(1)
		return false, 0
	}
	return true, n.Swap(0)
}

// withSkipped notes in an audit detail how many like events were left out.
func withSkipped(detail string, skipped int64) string {
	if skipped == 0 {
		return detail
	}
	return fmt.Sprintf("%s (and %d more like it, not recorded one by one)", detail, skipped)
}

// NewServer returns the API handler. With auth nil every request is
// allowed with full rights (development mode).
func NewServer(methods Methods, auth Authenticator, log *slog.Logger, opts ...Option) *Server {
	if log == nil {
		log = slog.Default()
	}
	s := &Server{methods: methods, auth: auth, log: log, mux: http.NewServeMux(), refusals: ratelimit.New(nil)}
	for _, o := range opts {
		o(s)
	}
	s.mux.HandleFunc(RPCPath, s.serveRPC)
	s.mux.HandleFunc(HealthPath, s.serveHealth)
	s.handler = s.mux
	if auth == nil {
		// Without a key, the only thing between a web page in the
		// operator's browser and the sandboxes is the browser's own
		// rules: refuse cross-origin browser requests (CSRF), and requests
		// that reached a loopback listener under another host name (DNS
		// rebinding), which would let a page read the answers too.
		cop := http.NewCrossOriginProtection()
		cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, http.StatusForbidden, errorResponse(nullID, CodeForbidden,
				"cross-origin browser requests are refused in development mode"))
		}))
		s.handler = loopbackHostOnly(cop.Handler(s.mux))
	}
	return s
}

// loopbackHostOnly refuses a request that arrived on a loopback address
// with a Host header that is not a loopback name or address.
func loopbackHostOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if local, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok && isLoopback(local.String()) && !isLoopback(r.Host) {
			writeJSON(w, http.StatusForbidden, errorResponse(nullID, CodeForbidden,
				fmt.Sprintf("Host %q is not a loopback name: in development mode msb answers only to localhost, 127.0.0.1 or [::1]", truncate(r.Host))))
			return
		}
		h.ServeHTTP(w, r)
	})
}

// isLoopback reports whether hostport (a host, with or without a port)
// names this machine's loopback: localhost or a loopback address.
func isLoopback(hostport string) bool {
	h := host(hostport)
	h = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
	if strings.EqualFold(h, "localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.handler.ServeHTTP(w, r) }

func (s *Server) serveHealth(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "use GET", http.StatusMethodNotAllowed)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"message": "Service is healthy"})
}

// request is one JSON-RPC request as received. ID stays raw so it goes back
// with its JSON type (string, integer, fraction, negative) untouched.
type request struct {
	JSONRPC string          `json:"jsonrpc"`
	Method  *string         `json:"method"`
	Params  json.RawMessage `json:"params"`
	ID      json.RawMessage `json:"id"`
}

// response is one JSON-RPC response.
type response struct {
	JSONRPC string          `json:"jsonrpc"`
	Result  any             `json:"result,omitempty"`
	Error   *jsonrpc2.Error `json:"error,omitempty"`
	ID      json.RawMessage `json:"id"`
}

var nullID = json.RawMessage("null")

func (s *Server) serveRPC(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		writeJSON(w, http.StatusMethodNotAllowed, errorResponse(nullID, jsonrpc2.CodeInvalidRequest, "use POST for JSON-RPC calls"))
		return
	}
	principal, err := s.authenticate(r)
	if err != nil {
		s.deny(w, r, err)
		return
	}
	st := &reqState{remote: r.RemoteAddr}
	w = s.headerWriter(w, principal, st)
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeJSON(w, http.StatusRequestEntityTooLarge, errorResponse(nullID, jsonrpc2.CodeInvalidRequest,
				fmt.Sprintf("request body is larger than %d MiB", MaxBodyBytes>>20)))
			return
		}
		writeJSON(w, http.StatusBadRequest, errorResponse(nullID, jsonrpc2.CodeParseError, "could not read the request body"))
		return
	}
	ctx := withPrincipal(r.Context(), principal, s.auth == nil, st)

	trimmed := bytes.TrimLeft(body, " \t\r\n")
	if len(trimmed) > 0 && trimmed[0] == '[' {
		s.serveBatch(ctx, w, trimmed)
		return
	}
	var req request
	if err := json.Unmarshal(body, &req); err != nil {
		if json.Valid(body) {
			writeJSON(w, http.StatusOK, errorResponse(nullID, jsonrpc2.CodeInvalidRequest, "the body must be a JSON-RPC request object or an array of them"))
			return
		}
		writeJSON(w, http.StatusOK, parseError())
		return
	}
	resp, status := s.call(ctx, req)
	if resp == nil {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	writeJSON(w, status, resp)
}

func (s *Server) serveBatch(ctx context.Context, w http.ResponseWriter, body []byte) {
	var items []json.RawMessage
	if err := json.Unmarshal(body, &items); err != nil {
		writeJSON(w, http.StatusOK, parseError())
		return
	}
	if len(items) == 0 {
		writeJSON(w, http.StatusOK, errorResponse(nullID, jsonrpc2.CodeInvalidRequest, "empty batch: send at least one request"))
		return
	}
	if len(items) > MaxBatch {
		writeJSON(w, http.StatusOK, errorResponse(nullID, jsonrpc2.CodeInvalidRequest,
			fmt.Sprintf("batch of %d requests is too large: send at most %d", len(items), MaxBatch)))
		return
	}
	// Responses are kept encoded, so their size is known as they come.
	var out []json.RawMessage
	size := 0
	add := func(resp *response) {
		data, err := json.Marshal(resp)
		if err != nil {
			data, _ = json.Marshal(errorResponse(resp.ID, jsonrpc2.CodeInternalError, s.internal(ctx, "encode response", err)))
		}
		out = append(out, data)
		size += len(data) + 1
	}
	for _, item := range items {
		var req request
		if err := json.Unmarshal(item, &req); err != nil {
			// A batch element that is valid JSON but not a request object.
			add(errorResponse(nullID, jsonrpc2.CodeInvalidRequest, "batch element is not a JSON-RPC request object"))
			continue
		}
		if size > MaxBatchResponseBytes {
			if req.ID != nil && validID(req.ID) {
				add(errorResponse(req.ID, jsonrpc2.CodeInternalError, fmt.Sprintf(
					"not run: this batch's responses passed %d MiB before this call; send it again on its own or in a smaller batch", MaxBatchResponseBytes>>20)))
			}
			continue
		}
		if resp, _ := s.call(ctx, req); resp != nil {
			add(resp)
		}
	}
	if len(out) == 0 {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	w.Write([]byte{'['})
	for i, data := range out {
		if i > 0 {
			w.Write([]byte{','})
		}
		w.Write(data)
	}
	w.Write([]byte("]\n"))
}

// call runs one request and returns its response (nil for a notification)
// and the HTTP status it would have alone.
func (s *Server) call(ctx context.Context, req request) (*response, int) {
	id := req.ID
	notification := id == nil
	if notification {
		id = nullID
	}
	if !validID(id) {
		return errorResponse(nullID, jsonrpc2.CodeInvalidRequest, "id must be a string, a number or null"), http.StatusOK
	}
	if req.JSONRPC != "2.0" {
		return errorResponse(id, jsonrpc2.CodeInvalidRequest, `"jsonrpc" must be "2.0"`), http.StatusOK
	}
	if req.Method == nil || *req.Method == "" {
		return errorResponse(id, jsonrpc2.CodeInvalidRequest, `"method" is required`), http.StatusOK
	}
	method := *req.Method
	started := time.Now()
	result, err := s.dispatch(ctx, method, req.Params)
	principal, _ := principalFrom(ctx)
	if err != nil {
		code, status, known := classify(err)
		msg := err.Error()
		if !known {
			msg = s.internal(ctx, method, err)
		}
		s.log.Info("rpc", "method", truncate(method), "key_id", principal.KeyID, "code", code, "ms", time.Since(started).Milliseconds())
		if notification {
			return nil, http.StatusNoContent
		}
		return errorResponse(id, code, msg), status
	}
	s.log.Info("rpc", "method", method, "key_id", principal.KeyID, "ms", time.Since(started).Milliseconds())
	if notification {
		return nil, http.StatusNoContent
	}
	return &response{JSONRPC: "2.0", Result: result, ID: id}, http.StatusOK
}

// internal logs an unexpected error with a reference and returns the
// message the client sees, which carries only the reference.
func (s *Server) internal(ctx context.Context, what string, err error) string {
	ref := make([]byte, 6)
	rand.Read(ref)
	r := hex.EncodeToString(ref)
	s.log.Error("internal error", "ref", r, "in", truncate(what), "err", err)
	return fmt.Sprintf("internal server error (ref %s): the server log has the details", r)
}

// deny answers a request whose authentication failed.
func (s *Server) deny(w http.ResponseWriter, r *http.Request, err error) {
	code, status, known := classify(err)
	msg := err.Error()
	if !known {
		msg = s.internal(r.Context(), "authenticate", err)
	}
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", "Bearer")
	}
	// Refusals cost the sender nothing, so neither the log nor the audit
	// log records every one of a flood.
	if ok, skipped := s.sampleRefusal("unauthenticated"); ok {
		s.log.Info("request denied", "path", r.URL.Path, "remote", r.RemoteAddr, "reason", msg, "not_logged_before", skipped)
		if s.audit != nil {
			e := audit.Event{Outcome: outcome(status), Code: code, Detail: withSkipped(msg, skipped), Remote: host(r.RemoteAddr)}
			if id, ok := s.auth.(identifier); ok && status == http.StatusUnauthorized {
				e.KeyID, e.KeyLabel = id.Identify(r.Context(), KeyFromRequest(r))
			}
			s.audit.Record(e)
		}
	}
	writeJSON(w, status, errorResponse(nullID, code, msg))
}

// identifier is the optional ability of an Authenticator to name the key a
// refused request carried (expired, revoked), for the audit log.
type identifier interface {
	Identify(ctx context.Context, key string) (id, label string)
}

func (s *Server) authenticate(r *http.Request) (auth.Principal, error) {
	if s.auth == nil {
		return auth.FullAccess("dev"), nil
	}
	return s.auth.Authenticate(r.Context(), KeyFromRequest(r))
}

// KeyFromRequest returns the API key a request carries: the x-api-key
// header, else an Authorization: Bearer token, else "".
func KeyFromRequest(r *http.Request) string {
	if k := r.Header.Get("X-Api-Key"); k != "" {
		return strings.TrimSpace(k)
	}
	h := r.Header.Get("Authorization")
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return strings.TrimSpace(h[7:])
	}
	return ""
}

func validID(id json.RawMessage) bool {
	switch c := id[0]; {
	case c == '"', c == '-', c >= '0' && c <= '9':
		return true
	case bytes.Equal(id, nullID):
		return true
	}
	return false
}

func errorResponse(id json.RawMessage, code int64, msg string) *response {
	return &response{JSONRPC: "2.0", Error: &jsonrpc2.Error{Code: code, Message: msg}, ID: id}
}

func parseError() *response {
	return errorResponse(nullID, jsonrpc2.CodeParseError, "parse error: the body is not valid JSON")
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// truncate keeps client-chosen strings short in log lines.
func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
