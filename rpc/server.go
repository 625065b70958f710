// Package rpc serves msb's JSON-RPC front-end: JSON-RPC 2.0 over HTTP on
// /api/v1/rpc and the health check on /api/v1/health, as docs/api.md
// describes.
//
// Every call passes through one path: authentication of the HTTP request,
// then (Server.dispatch) the method table, one strict decode of the params,
// and the auth.Gate (rate limit, scope, namespace, usage limit), then the
// handler; the Gate audits calls that change something and calls refused.
// No method can skip a step, because handlers only ever receive an
// already-authorized Call. The wire types of each method live beside it
// (sandbox.go; keys.go, which also has audit.list) and map onto the
// domain's.
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
	"time"

	"github.com/sourcegraph/jsonrpc2"

	"github.com/msb-dev/msb/auth"
	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox"
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

// Server is the HTTP handler of the API.
type Server struct {
	methods Methods
	gate    *auth.Gate
	log     *slog.Logger
	mux     *http.ServeMux
	handler http.Handler // mux, behind the development mode's guards
}

// NewServer returns the API handler of methods, whose callers gate
// admits. It panics on a table that is wrong in itself (a programming
// error, found when the server is built rather than at its first call).
func NewServer(methods Methods, gate *auth.Gate, log *slog.Logger) *Server {
	if err := methods.check(); err != nil {
		panic(err)
	}
	if log == nil {
		log = slog.Default()
	}
	s := &Server{methods: methods, gate: gate, log: log, mux: http.NewServeMux()}
	s.mux.HandleFunc(RPCPath, s.serveRPC)
	s.mux.HandleFunc(HealthPath, s.serveHealth)
	s.handler = s.mux
	if gate.Policy.Dev() {
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
	// A refused request still gets its own id back, and its audit record
	// the method it asked for, when its body (read only that far) says.
	refusedID := nullID
	caller, err := s.gate.Authenticate(r.Context(), KeyFromRequest(r), host(r.RemoteAddr), func() string {
		id, method := peekRequest(w, r)
		refusedID = id
		if _, known := s.methods[method]; !known && method != "" {
			return "unknown method " + method // quoted by the Gate if it is not plain text
		}
		return method
	})
	if err != nil {
		s.deny(w, r, refusedID, err)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			s.respond(w, caller, http.StatusRequestEntityTooLarge, errorResponse(nullID, jsonrpc2.CodeInvalidRequest,
				fmt.Sprintf("request body is larger than %d MiB", MaxBodyBytes>>20)))
			return
		}
		s.respond(w, caller, http.StatusBadRequest, errorResponse(nullID, jsonrpc2.CodeParseError, "could not read the request body"))
		return
	}
	// What the calls' results hold of the server's output budget is
	// given back once the response is written.
	ctx, release := sandbox.HoldOutput(r.Context())
	defer release()
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	if len(trimmed) > 0 && trimmed[0] == '[' {
		s.serveBatch(ctx, w, caller, trimmed)
		return
	}
	var req request
	if err := json.Unmarshal(body, &req); err != nil {
		if json.Valid(body) {
			s.respond(w, caller, http.StatusOK, errorResponse(nullID, jsonrpc2.CodeInvalidRequest, "the body must be a JSON-RPC request object or an array of them"))
			return
		}
		s.respond(w, caller, http.StatusOK, parseError())
		return
	}
	resp, status := s.call(ctx, caller, req)
	if resp == nil {
		s.setRateHeaders(w.Header(), caller, http.StatusNoContent)
		w.WriteHeader(http.StatusNoContent)
		return
	}
	s.respond(w, caller, status, resp)
}

// respond writes a response to caller with its rate-limit headers.
func (s *Server) respond(w http.ResponseWriter, caller *auth.Caller, status int, v any) {
	s.setRateHeaders(w.Header(), caller, status)
	writeJSON(w, status, v)
}

func (s *Server) serveBatch(ctx context.Context, w http.ResponseWriter, caller *auth.Caller, body []byte) {
	var items []json.RawMessage
	if err := json.Unmarshal(body, &items); err != nil {
		s.respond(w, caller, http.StatusOK, parseError())
		return
	}
	if len(items) == 0 {
		s.respond(w, caller, http.StatusOK, errorResponse(nullID, jsonrpc2.CodeInvalidRequest, "empty batch: send at least one request"))
		return
	}
	if len(items) > MaxBatch {
		s.respond(w, caller, http.StatusOK, errorResponse(nullID, jsonrpc2.CodeInvalidRequest,
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
		if resp, _ := s.call(ctx, caller, req); resp != nil {
			add(resp)
		}
	}
	s.setRateHeaders(w.Header(), caller, http.StatusOK)
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
func (s *Server) call(ctx context.Context, caller *auth.Caller, req request) (*response, int) {
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
	result, err := s.dispatch(ctx, caller, method, req.Params)
	principal := caller.Principal
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
// message the client sees: what failed, when the error says it safely
// (an errdefs.Error of class Internal with a message), and the reference.
func (s *Server) internal(ctx context.Context, what string, err error) string {
	ref := make([]byte, 6)
	rand.Read(ref)
	r := hex.EncodeToString(ref)
	msg := "internal server error"
	var e *errdefs.Error
	if errors.As(err, &e) && e.Class == errdefs.Internal && e.Msg != "" {
		msg = e.Msg
	}
	// An Error's message is the client's; its cause is the log's.
	if e != nil && e.Err != nil {
		s.log.Error("internal error", "ref", r, "in", truncate(what), "err", err, "cause", e.Err)
	} else {
		s.log.Error("internal error", "ref", r, "in", truncate(what), "err", err)
	}
	return fmt.Sprintf("%s (ref %s): the server log has the details", msg, r)
}

// maxPeek bounds what is read of an unauthenticated request's body.
const maxPeek = 64 << 10

// peekRequest reads the id and method of a JSON-RPC request body from a
// request that will be refused, reading at most maxPeek bytes of it. A
// body that is not one request (a batch, not JSON, too long) gives a null
// id and no method.
func peekRequest(w http.ResponseWriter, r *http.Request) (json.RawMessage, string) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxPeek))
	if err != nil {
		return nullID, ""
	}
	var req request
	if json.Unmarshal(body, &req) != nil || req.ID == nil || !validID(req.ID) {
		return nullID, ""
	}
	method := ""
	if req.Method != nil {
		method = *req.Method
	}
	return req.ID, method
}

// deny answers a request whose authentication failed (the Gate audited
// it), with id, the request's id when known.
func (s *Server) deny(w http.ResponseWriter, r *http.Request, id json.RawMessage, err error) {
	code, status, known := classify(err)
	msg := err.Error()
	if !known {
		msg = s.internal(r.Context(), "authenticate", err)
	}
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", "Bearer")
	}
	writeJSON(w, status, errorResponse(id, code, msg))
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
