package rpc_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/msb-dev/msb/auth"
	"github.com/msb-dev/msb/auth/audit"
	"github.com/msb-dev/msb/auth/authtest"
	"github.com/msb-dev/msb/auth/ratelimit"
	"github.com/msb-dev/msb/rpc"
)

// noop is the trivial method the benchmark calls: the cost measured is the
// request path (HTTP, JSON-RPC, authentication, rate limit, scope and
// namespace checks, usage count), not work. bench.change is the same but
// marked as changing something, so every call is also audited.
var noop = rpc.Methods{
	"bench.noop": rpc.Method[rpc.Ref]{Scope: auth.ScopeSandboxRead, Target: rpc.TargetNamespaceOrAll, Handle: func(ctx context.Context, c *rpc.Call, p rpc.Ref) (any, error) {
		return "ok", nil
	}},
	"bench.change": rpc.Method[rpc.Ref]{Scope: auth.ScopeSandboxExec, Changes: true, Target: rpc.TargetSandbox, Handle: func(ctx context.Context, c *rpc.Call, p rpc.Ref) (any, error) {
		return "ok", nil
	}},
}

// keyGate is the gate of a server with keys: authn, limits and an audit
// log (nil: none).
func keyGate(signer *auth.Signer, reg *auth.Registry, limits *auth.Limits, auditor auth.Auditor) *auth.Gate {
	if limits == nil {
		limits = auth.NewLimits(reg, auth.Defaults{}, nil)
	}
	return auth.NewGate(&auth.KeyPolicy{Authn: &auth.Authenticator{Signer: signer, Registry: reg}, Limits: limits, Auditor: auditor}, rpc.Code, nil)
}

func devGate() *auth.Gate { return auth.NewGate(auth.DevPolicy{}, rpc.Code, nil) }

// stack is what newStack serves in front of the methods.
type stack int

const (
	devMode  stack = iota // no authentication
	keysOnly              // keys checked against the registry, nothing more
	full                  // keys, rate and usage limits, scopes, audit log
)

// newStack serves noop on a loopback port, with authentication backed by a
// real SQLite registry (and, for full, rate limits and the audit log), and
// returns its URL and a key. For full, the key's rate is high enough never
// to refuse a call, so every call pays for the bucket; for keysOnly it has
// none, and the server no default, so no call pays for one.
func newStack(tb testing.TB, mode stack) (string, string) {
	tb.Helper()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	if mode == devMode {
		srv := httptest.NewServer(rpc.NewServer(noop, devGate(), quiet))
		tb.Cleanup(srv.Close)
		return srv.URL, ""
	}
	db, signer, reg := authtest.KeyStore(tb)
	opts := auth.IssueOptions{Namespace: "bench"}
	if mode == full {
		opts.Rate = ratelimit.Rate{N: ratelimit.MaxN, Per: time.Second}
	}
	key, _, err := (&auth.Issuer{Signer: signer, Registry: reg}).Issue(context.Background(), opts)
	if err != nil {
		tb.Fatal(err)
	}
	if mode == keysOnly {
		srv := httptest.NewServer(rpc.NewServer(noop, keyGate(signer, reg, nil, nil), quiet))
		tb.Cleanup(srv.Close)
		return srv.URL, key
	}
	auditLog := audit.NewWriter(db, audit.Options{Log: quiet})
	tb.Cleanup(func() { auditLog.Close() })
	limits := auth.NewLimits(reg, auth.Defaults{Rate: ratelimit.Rate{N: 600, Per: time.Minute}, StartRate: ratelimit.Rate{N: 60, Per: time.Minute}}, nil)
	srv := httptest.NewServer(rpc.NewServer(noop, keyGate(signer, reg, limits, auditLog), quiet))
	tb.Cleanup(srv.Close)
	return srv.URL, key
}

const (
	noopBody   = `{"jsonrpc":"2.0","method":"bench.noop","params":{"namespace":"bench"},"id":1}`
	changeBody = `{"jsonrpc":"2.0","method":"bench.change","params":{"namespace":"bench","sandbox":"s"},"id":1}`
)

func callNoop(tb testing.TB, client *http.Client, url, key string) {
	call(tb, client, url, key, noopBody)
}

// call makes one call and fails tb unless it succeeded; it returns the
// response's header.
func call(tb testing.TB, client *http.Client, url, key, body string) http.Header {
	req, _ := http.NewRequest(http.MethodPost, url+rpc.RPCPath, strings.NewReader(body))
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := client.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	data, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(data), `"result":"ok"`) {
		tb.Fatalf("status %d: %s", resp.StatusCode, data)
	}
	return resp.Header
}

// BenchmarkRequestPath measures a trivial call in development mode (dev),
// with a key checked against the registry (auth), and with a key plus rate
// limit, scope check, usage count and audit log (limited), in the same run;
// limited-audited is a call that changes something, so each one also
// queues an audit event. Compare them with benchstat or
// scripts/bench-auth.sh, which prints the ratios.
func BenchmarkRequestPath(b *testing.B) {
	for _, mode := range []struct {
		name  string
		stack stack
		body  string
	}{{"dev", devMode, noopBody}, {"auth", keysOnly, noopBody}, {"limited", full, noopBody}, {"limited-audited", full, changeBody}} {
		b.Run(mode.name, func(b *testing.B) {
			url, key := newStack(b, mode.stack)
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
			// Sixteen clients per CPU, as a server sees many at once:
			// audited calls share their commits (group commit).
			b.SetParallelism(16)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					call(b, client, url, key, mode.body)
				}
			})
		})
	}
}

// TestRequestPathStack checks the benchmark's own stacks answer as they
// should, so the benchmark never measures a failing path.
func TestRequestPathStack(t *testing.T) {
	for _, mode := range []stack{devMode, keysOnly, full} {
		url, key := newStack(t, mode)
		h := call(t, http.DefaultClient, url, key, noopBody)
		call(t, http.DefaultClient, url, key, changeBody)
		if limited := h.Get("X-RateLimit-Remaining") != ""; limited != (mode == full) {
			t.Errorf("stack %d: rate-limit headers %v", mode, h)
		}
	}
}
