package main_test

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The v1 API is served by the real server on /v1/, behind the same keys
// and audit log as /api/v1/rpc, beside it; its named volumes are the
// directories a sandbox.start volume mounts.
func TestV1Served(t *testing.T) {
	t.Parallel()
	home := newHome(t)
	srv := startServer(t, home)
	key := keygen(t, home, "--namespace", "team")
	do := func(method, path, key, body string) (int, []byte, http.Header) {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, data, resp.Header
	}
	status, body, hdr := do("GET", "/v1/volumes", "", "")
	if status != 401 || !strings.Contains(string(body), `"code":"invalid_api_key"`) || hdr.Get("WWW-Authenticate") != "Bearer" {
		t.Fatalf("without a key: %d %s", status, body)
	}
	status, body, _ = do("POST", "/v1/volumes", key, `{"labels":{},"name":"data"}`)
	if status != 200 {
		t.Fatalf("create volume: %d %s", status, body)
	}
	status, body, hdr = do("GET", "/v1/volumes", key, "")
	var vols []map[string]any
	if status != 200 || json.Unmarshal(body, &vols) != nil || len(vols) != 2 || hdr.Get("X-Ratelimit-Limit") == "" {
		t.Fatalf("list volumes: %d %s %v", status, body, hdr)
	}
	if fi, err := os.Stat(filepath.Join(home, "volumes", "team", "data")); err != nil || !fi.IsDir() {
		t.Fatalf("the volume is not in the namespace's volume root: %v", err)
	}
	// The change is in the audit log, as JSON-RPC's are.
	out, _, err := msb(t, home, "server", "audit", "--json")
	if err != nil || !strings.Contains(out, "v1: POST /v1/volumes") {
		t.Fatalf("audit: %v %s", err, out)
	}
	// JSON-RPC still answers beside it.
	if status, _, _ := srv.post(`{"jsonrpc":"2.0","method":"sandbox.metrics.get","params":{"namespace":"*"},"id":1}`, bearer(key)); status != 200 {
		t.Fatalf("JSON-RPC: %d", status)
	}
}
