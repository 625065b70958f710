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
// make through Invoke are checked and audited like JSON-RPC calls, and
// their responses carry the same X-RateLimit-* headers.
//
// Every message a POST carries (one, or each element of a JSON array)
// takes one call from the key's rate here, before h reads it, whatever h
// then makes of it: the protocol's own messages (MCP's initialize,
// tools/list, ping), calls h refuses itself, and calls it makes through
// Invoke, which are not charged again.
func (s *Server) Mount(path string, h http.Handler) {
	s.mux.Handle(path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		principal, err := s.authenticate(r)
		if err != nil {
			s.deny(w, r, err)
			return
		}
		st := &reqState{remote: r.RemoteAddr}
		w = s.headerWriter(w, principal, st)
		if s.limits != nil && s.auth != nil && r.Method == http.MethodPost {
			body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
			if err != nil {
				writeJSON(w, http.StatusRequestEntityTooLarge, errorResponse(nullID, jsonrpc2.CodeInvalidRequest,
					fmt.Sprintf("request body is larger than %d MiB", MaxBodyBytes>>20)))
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
			n := messages(body)
			for range n {
				rs, err := s.limits.Allow(principal, false)
				st.setRate(rs, err)
				if err != nil {
					v := principalValue{principal, false, st}
					if s.audit != nil {
						s.record(v, "mcp: "+path, &Call{Principal: principal}, err)
					}
					code, status, _ := classify(err)
					writeJSON(w, status, errorResponse(nullID, code, err.Error()))
					return
				}
			}
			st.prepay(n)
		}
		h.ServeHTTP(w, r.WithContext(withPrincipal(r.Context(), principal, s.auth == nil, st)))
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
