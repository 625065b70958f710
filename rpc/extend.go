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

// Mount serves h at path (an http.ServeMux pattern) behind the same
// authentication as the JSON-RPC endpoint: a request without a valid key
// gets the same 401 as /api/v1/rpc, and h finds the caller with
// PrincipalFrom. Other protocols (MCP) are mounted this way; the calls they
// make through Invoke are rate-limited, checked and audited like JSON-RPC
// calls, and their responses carry the same X-RateLimit-* headers.
//
// invokes reports whether a POST body holds a call that h makes through
// Invoke (an MCP tools/call), which takes from the key's rate there. Every
// other POST (the protocol's own messages, such as MCP's initialize and
// tools/list) takes one call from the rate here. With invokes nil, every
// POST is charged here.
func (s *Server) Mount(path string, h http.Handler, invokes func(body []byte) bool) {
	s.mux.Handle(path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		principal, err := s.authenticate(r)
		if err != nil {
			s.deny(w, r, err)
			return
		}
		st := &reqState{remote: r.RemoteAddr}
		w = s.headerWriter(w, principal, st)
		if s.limits != nil && s.auth != nil && r.Method == http.MethodPost {
			// The protocol's own messages (initialize, tools/list, ...) take
			// from the key's rate like any call; the calls made through
			// Invoke are charged there, once.
			body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
			if err != nil {
				writeJSON(w, http.StatusRequestEntityTooLarge, errorResponse(nullID, jsonrpc2.CodeInvalidRequest,
					fmt.Sprintf("request body is larger than %d MiB", MaxBodyBytes>>20)))
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
			if invokes == nil || !invokes(body) {
				rs, err := s.limits.Allow(principal, false)
				st.setRate(rs, err)
				if err != nil {
					code, status, _ := classify(err)
					writeJSON(w, status, errorResponse(nullID, code, err.Error()))
					return
				}
			}
		}
		h.ServeHTTP(w, r.WithContext(withPrincipal(r.Context(), principal, s.auth == nil, st)))
	}))
}

// PrincipalFrom returns the authenticated caller of a request served by
// the Server (or by a handler given to Mount).
func PrincipalFrom(ctx context.Context) (auth.Principal, bool) { return principalFrom(ctx) }

// Invoke runs method with params as the caller in ctx (see PrincipalFrom),
// through the same method table and checks as a JSON-RPC call. Other
// protocols call it so that what a method does, and who may do it, is
// decided in one place. The error is classified as for JSON-RPC; use
// ErrorCode for its code.
func (s *Server) Invoke(ctx context.Context, method string, params json.RawMessage) (any, error) {
	return s.dispatch(ctx, method, params)
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
