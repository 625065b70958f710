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
	"github.com/msb-dev/msb/auth/ratelimit"
	"github.com/msb-dev/msb/rpc"
)

// noop is the trivial method the benchmark calls: the cost measured is the
// request path (HTTP, JSON-RPC, authentication, rate limit, scope and
// namespace checks, usage count), not work. bench.change is the same but
// marked as changing something, so every call is also audited.
var noop = rpc.Methods{
	"bench.noop": {Scope: auth.ScopeSandboxRead, Namespaced: true, Handle: func(ctx context.Context, c *rpc.Call) (any, error) {
		return "ok", nil
	}},
	"bench.change": {Scope: auth.ScopeSandboxExec, Changes: true, Namespaced: true, Handle: func(ctx context.Context, c *rpc.Call) (any, error) {
		return "ok", nil
	}},
}

// newStack serves noop on a loopback port, with authentication backed by a
// real SQLite registry, rate limits and the audit log when authenticated is
// set (dev mode otherwise), and returns its URL and a key. The key's rate
// is high enough never to refuse a call, so every call pays for the bucket.
func newStack(tb testing.TB, authenticated bool) (string, string) {
	tb.Helper()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	if !authenticated {
		srv := httptest.NewServer(rpc.NewServer(noop, nil, quiet))
		tb.Cleanup(srv.Close)
		return srv.URL, ""
	}
	db, signer, reg := keyStore(tb)
	key, _, err := (&auth.Issuer{Signer: signer, Registry: reg}).Issue(context.Background(),
		auth.IssueOptions{Namespace: "bench", Rate: ratelimit.Rate{N: ratelimit.MaxN, Per: time.Second}})
	if err != nil {
		tb.Fatal(err)
	}
	auditLog := audit.NewWriter(db, audit.Options{Log: quiet})
	tb.Cleanup(func() { auditLog.Close() })
	limits := auth.NewLimits(reg, auth.Defaults{Rate: ratelimit.Rate{N: 600, Per: time.Minute}, StartRate: ratelimit.Rate{N: 60, Per: time.Minute}}, nil)
	srv := httptest.NewServer(rpc.NewServer(noop, &auth.Authenticator{Signer: signer, Registry: reg}, quiet,
		rpc.WithLimits(limits), rpc.WithAudit(auditLog)))
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

func call(tb testing.TB, client *http.Client, url, key, body string) {
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
	if key != "" && resp.Header.Get("X-RateLimit-Remaining") == "" {
		tb.Fatalf("authenticated response without X-RateLimit-Remaining: %v", resp.Header)
	}
}

// BenchmarkRequestPath measures a trivial authenticated call (with rate
// limiting, scope check, usage count and the audit log configured) against
// the same call in development mode, in the same run; auth-audited is a call
// that changes something, so each one also queues an audit event. Compare
// them with benchstat or scripts/bench-auth.sh, which prints the ratios.
func BenchmarkRequestPath(b *testing.B) {
	for _, mode := range []struct {
		name string
		auth bool
		body string
	}{{"dev", false, noopBody}, {"auth", true, noopBody}, {"auth-audited", true, changeBody}} {
		b.Run(mode.name, func(b *testing.B) {
			url, key := newStack(b, mode.auth)
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					call(b, client, url, key, mode.body)
				}
			})
		})
	}
}

// TestRequestPathStack checks the benchmark's own stack answers as it should,
// so the benchmark never measures a failing path.
func TestRequestPathStack(t *testing.T) {
	for _, authenticated := range []bool{false, true} {
		url, key := newStack(t, authenticated)
		callNoop(t, http.DefaultClient, url, key)
		call(t, http.DefaultClient, url, key, changeBody)
	}
}
