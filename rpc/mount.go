package rpc

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"

	"github.com/sourcegraph/jsonrpc2"

	"github.com/msb-dev/msb/auth"
)

// AuthedHandler serves requests whose caller the Server authenticated.
type AuthedHandler interface {
	ServeAuthed(w http.ResponseWriter, r *http.Request, caller *auth.Caller)
}

// Mount serves h at path (an http.ServeMux pattern) behind the same
// authentication as the JSON-RPC endpoint: a request without a valid key
// gets the same 401 as /api/v1/rpc, and h gets the caller. Other
// protocols (MCP) are mounted this way; the calls they make through Invoke
// are checked and audited like JSON-RPC calls, and their responses carry
// the same X-RateLimit-* headers.
//
// Every message a POST carries (one, or each element of a JSON array)
// takes one call from the key's rate here, before h reads it, whatever h
// then makes of it: the protocol's own messages (MCP's initialize,
// tools/list, ping), calls h refuses itself, and calls it makes through
// Invoke, which are not charged again.
func (s *Server) Mount(path string, h AuthedHandler) {
	s.mux.Handle(path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		refusedID := nullID // a refused JSON-RPC message still gets its id back
		caller, err := s.gate.Authenticate(r.Context(), KeyFromRequest(r), host(r.RemoteAddr), func() string {
			if r.Method == http.MethodPost {
				refusedID, _ = peekRequest(w, r)
			}
			return "mcp: " + path
		})
		if err != nil {
			s.deny(w, r, refusedID, err)
			return
		}
		w = &headerWriter{ResponseWriter: w, s: s, caller: caller}
		if r.Method == http.MethodPost {
			body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
			if err != nil {
				writeJSON(w, http.StatusRequestEntityTooLarge, errorResponse(nullID, jsonrpc2.CodeInvalidRequest,
					fmt.Sprintf("request body is larger than %d MiB", MaxBodyBytes>>20)))
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
			if err := s.gate.Prepay(caller, messages(body)); err != nil {
				a := auth.Action{Name: "mcp: " + path}
				s.gate.Done(caller, a, err)
				code, status, _ := classify(err)
				writeJSON(w, status, errorResponse(nullID, code, err.Error()))
				return
			}
		}
		h.ServeAuthed(w, r, caller)
	}))
}

// messages is how many messages a POST body holds: the elements of a JSON
// array, else one.
func messages(body []byte) int {
	if b := bytes.TrimLeft(body, " \t\r\n"); len(b) > 0 && b[0] == '[' {
		var items []json.RawMessage
		if json.Unmarshal(b, &items) == nil && len(items) > 0 {
			return len(items)
		}
	}
	return 1
}

// headerWriter sets the rate-limit headers of a mounted handler's
// response just before its status is written, when every call the
// request made has had its say.
type headerWriter struct {
	http.ResponseWriter
	s      *Server
	caller *auth.Caller
	wrote  bool
}

func (w *headerWriter) WriteHeader(status int) {
	if !w.wrote {
		w.wrote = true
		w.s.setRateHeaders(w.Header(), w.caller, status)
	}
	w.ResponseWriter.WriteHeader(status)
}

func (w *headerWriter) Write(b []byte) (int, error) {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(b)
}

// Flush lets streaming protocols flush through.
func (w *headerWriter) Flush() {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap gives http.ResponseController the underlying writer.
func (w *headerWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Invoke runs method with params as caller through the same method table
// and checks as a JSON-RPC call. Other protocols call it so that what a
// method does, and who may do it, is decided in one place. A nil caller
// may do nothing. The error is classified as for JSON-RPC; use ErrorCode
// for its code.
func (s *Server) Invoke(ctx context.Context, caller *auth.Caller, method string, params json.RawMessage) (any, error) {
	return s.dispatch(ctx, caller, method, params)
}

// ErrorCode returns the JSON-RPC code of err and the message a client may
// see (internal errors are logged and replaced by a reference).
func (s *Server) ErrorCode(ctx context.Context, method string, err error) (int64, string) {
	code, _, known := classify(err)
	if !known {
		return code, s.internal(ctx, method, err)
	}
	return code, err.Error()
}

// Code is the JSON-RPC code of err, which audit records keep.
func Code(err error) int64 {
	code, _, _ := classify(err)
	return code
}

// Handle serves h at pattern (an http.ServeMux pattern) on the server's
// mux: behind development mode's guards, but not behind the JSON-RPC
// endpoint's authentication. h authenticates and authorizes its requests
// itself, through the same auth.Gate (the v1 API, rpc/v1).
func (s *Server) Handle(pattern string, h http.Handler) {
	s.mux.Handle(pattern, h)
}
