package rpc

import (
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/msb-dev/msb/auth"
	"github.com/msb-dev/msb/auth/audit"
	"github.com/msb-dev/msb/auth/ratelimit"
	"github.com/msb-dev/msb/namespace"
)

// reqState is what the calls of one HTTP request tell its response: the
// key's rate-limit state after the last call, and how long to wait when a
// call was refused for its rate.
type reqState struct {
	remote string

	mu         sync.Mutex // calls through Invoke may run concurrently
	rate       ratelimit.Status
	rated      bool
	retryAfter time.Duration
	prepaid    int // calls already taken from the key's rate (by Mount)
}

// prepay notes that n calls of the request were taken from the rate.
func (st *reqState) prepay(n int) {
	st.mu.Lock()
	st.prepaid += n
	st.mu.Unlock()
}

// usePrepaid takes one prepaid call, if any is left.
func (st *reqState) usePrepaid() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.prepaid == 0 {
		return false
	}
	st.prepaid--
	return true
}

func (st *reqState) setRate(rs ratelimit.Status, err error) {
	st.mu.Lock()
	st.rate, st.rated = rs, true
	var rl *auth.RateLimitError
	if errors.As(err, &rl) && rl.RetryAfter > st.retryAfter {
		st.retryAfter = rl.RetryAfter
	}
	st.mu.Unlock()
}

// headerWriter sets the rate-limit headers of an authenticated response
// just before its status is written, when every call of the request has
// had its say.
type headerWriter struct {
	http.ResponseWriter
	s     *Server
	p     auth.Principal
	st    *reqState
	wrote bool
}

func (s *Server) headerWriter(w http.ResponseWriter, p auth.Principal, st *reqState) http.ResponseWriter {
	if s.auth == nil {
		return w // development mode: no key, no limits
	}
	return &headerWriter{ResponseWriter: w, s: s, p: p, st: st}
}

func (w *headerWriter) WriteHeader(status int) {
	if !w.wrote {
		w.wrote = true
		w.s.setHeaders(w.Header(), status, w.p, w.st)
	}
	w.ResponseWriter.WriteHeader(status)
}

func (w *headerWriter) Write(b []byte) (int, error) {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(b)
}

// Flush lets streaming protocols mounted with Mount flush through.
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

// Rate-limit headers, in canonical form.
const (
	hdrLimit     = "X-Ratelimit-Limit"
	hdrRemaining = "X-Ratelimit-Remaining"
	hdrReset     = "X-Ratelimit-Reset"
)

func (s *Server) setHeaders(h http.Header, status int, p auth.Principal, st *reqState) {
	st.mu.Lock()
	rs, rated, retry := st.rate, st.rated, st.retryAfter
	st.mu.Unlock()
	if s.limits != nil {
		if !rated {
			rs = s.limits.Status(p)
		}
		if rs.Limit > 0 {
			h.Set(hdrLimit, strconv.FormatInt(rs.Limit, 10))
			h.Set(hdrRemaining, strconv.FormatInt(rs.Remaining, 10))
			// Unix time, in seconds, at which the bucket is full again.
			h.Set(hdrReset, strconv.FormatInt((rs.Reset.UnixNano()+int64(time.Second)-1)/int64(time.Second), 10))
		}
	}
	if retry > 0 {
		h.Set("Retry-After", strconv.FormatInt(int64((retry+time.Second-1)/time.Second), 10))
	}
	if status == http.StatusUnauthorized {
		h.Set("WWW-Authenticate", "Bearer")
	}
}

// denied reports whether err refused the call (401, 403, 429) rather than
// failed it.
func denied(err error) bool {
	_, status, _ := classify(err)
	return status == http.StatusUnauthorized || status == http.StatusForbidden || status == http.StatusTooManyRequests
}

func outcome(status int) string {
	switch status {
	case http.StatusUnauthorized:
		return audit.Unauthenticated
	case http.StatusForbidden:
		return audit.Forbidden
	case http.StatusTooManyRequests:
		return audit.RateLimited
	}
	return audit.Error
}

// host drops the port of a remote address.
func host(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}

// record audits one call. A refusal keeps its message (written by msb, never
// holding a key); a failure only its code, since its message could echo the
// params; a success the detail the handler set. Code, commands and output
// are never recorded.
func (s *Server) record(v principalValue, method string, call *Call, err error) {
	e := audit.Event{
		KeyID:        v.p.KeyID,
		KeyLabel:     v.p.Label,
		KeyNamespace: v.p.Namespace,
		Namespace:    call.auditNamespace,
		Method:       truncate(method),
		Outcome:      audit.OK,
		Detail:       call.auditDetail,
	}
	if v.st != nil {
		e.Remote = host(v.st.remote)
	}
	var target struct {
		Namespace any `json:"namespace"`
		Sandbox   any `json:"sandbox"`
	}
	if len(call.params) > 0 && json.Unmarshal(call.params, &target) == nil {
		if name, ok := target.Sandbox.(string); ok {
			e.Sandbox = truncate(name)
		}
		// A call refused before its namespace was checked still names it.
		if ns, ok := target.Namespace.(string); ok && e.Namespace == "" && namespace.ValidateTarget(ns, true) == nil {
			e.Namespace = ns
		}
	}
	if err != nil {
		code, status, known := classify(err)
		e.Code, e.Outcome, e.Detail = code, outcome(status), ""
		if known && e.Outcome != audit.Error {
			e.Detail = err.Error()
		}
		if e.Outcome == audit.RateLimited {
			ok, skipped := s.sampleRefusal("rate_limited\x00" + v.p.KeyID)
			if !ok {
				return
			}
			e.Detail = withSkipped(e.Detail, skipped)
		}
	}
	s.audit.Record(e)
}
