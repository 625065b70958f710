package rpc_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/msb-dev/msb/auth"
	"github.com/msb-dev/msb/config/sqlite"
	"github.com/msb-dev/msb/rpc"
)

// noop is the trivial method the benchmark calls: the cost measured is the
// request path (HTTP, JSON-RPC, authentication, namespace check), not work.
var noop = rpc.Methods{"bench.noop": {Namespaced: true, Handle: func(ctx context.Context, c *rpc.Call) (any, error) {
	return "ok", nil
}}}

// newStack serves noop on a loopback port, with authentication backed by a
// real SQLite registry when authenticated is set (dev mode otherwise), and
// returns its URL and a key.
func newStack(tb testing.TB, authenticated bool) (string, string) {
	tb.Helper()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	if !authenticated {
		srv := httptest.NewServer(rpc.NewServer(noop, nil, quiet))
		tb.Cleanup(srv.Close)
		return srv.URL, ""
	}
	dir := tb.TempDir()
	db, err := sqlite.Open(context.Background(), filepath.Join(dir, "msb.db"))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	signer, _, err := auth.LoadOrCreateSigner(filepath.Join(dir, "server.key"), false)
	if err != nil {
		tb.Fatal(err)
	}
	reg := auth.NewRegistry(db, filepath.Join(dir, "keys.changed"), nil)
	tb.Cleanup(func() { reg.Close() })
	key, _, err := (&auth.Issuer{Signer: signer, Registry: reg}).Issue(context.Background(), auth.IssueOptions{Namespace: "bench"})
	if err != nil {
		tb.Fatal(err)
	}
	srv := httptest.NewServer(rpc.NewServer(noop, &auth.Authenticator{Signer: signer, Registry: reg}, quiet))
	tb.Cleanup(srv.Close)
	return srv.URL, key
}

const noopBody = `{"jsonrpc":"2.0","method":"bench.noop","params":{"namespace":"bench"},"id":1}`

func callNoop(tb testing.TB, client *http.Client, url, key string) {
	req, _ := http.NewRequest(http.MethodPost, url+rpc.RPCPath, strings.NewReader(noopBody))
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := client.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"result":"ok"`) {
		tb.Fatalf("status %d: %s", resp.StatusCode, body)
	}
}

// BenchmarkRequestPath measures a trivial authenticated call against the
// same call in development mode, in the same run; compare the two with
// benchstat or scripts/bench-auth.sh, which prints the ratio.
func BenchmarkRequestPath(b *testing.B) {
	for _, mode := range []struct {
		name string
		auth bool
	}{{"dev", false}, {"auth", true}} {
		b.Run(mode.name, func(b *testing.B) {
			url, key := newStack(b, mode.auth)
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					callNoop(b, client, url, key)
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
	}
}
