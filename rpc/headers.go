package rpc

import (
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/msb-dev/msb/auth"
)

// Rate-limit headers, in canonical form.
const (
	hdrLimit     = "X-Ratelimit-Limit"
	hdrRemaining = "X-Ratelimit-Remaining"
	hdrReset     = "X-Ratelimit-Reset"
)

// setRateHeaders sets the headers of a response to caller that tell its
// rate: X-RateLimit-* (when its key has a rate), Retry-After after a
// refusal, and WWW-Authenticate on a 401.
func (s *Server) setRateHeaders(h http.Header, caller *auth.Caller, status int) {
	SetRateHeaders(h, s.gate.Policy, caller, status)
}

// SetRateHeaders sets the rate headers of a response to caller under
// policy p; other front-ends (the v1 API) share it.
func SetRateHeaders(h http.Header, p auth.Policy, caller *auth.Caller, status int) {
	if status == http.StatusUnauthorized {
		h.Set("WWW-Authenticate", "Bearer")
	}
	if caller == nil {
		return
	}
	rs, retry := caller.Rate(p)
	if rs.Limit > 0 {
		h.Set(hdrLimit, strconv.FormatInt(rs.Limit, 10))
		h.Set(hdrRemaining, strconv.FormatInt(rs.Remaining, 10))
		// Unix time, in seconds, at which the bucket is full again.
		h.Set(hdrReset, strconv.FormatInt((rs.Reset.UnixNano()+int64(time.Second)-1)/int64(time.Second), 10))
	}
	if retry > 0 {
		h.Set("Retry-After", strconv.FormatInt(int64((retry+time.Second-1)/time.Second), 10))
	}
}

// host drops the port of a remote address.
func host(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}
