package main_test

// MCP on /mcp, driven by the official Go SDK's client over Streamable HTTP
// against the real msb binary with real sandboxes.

import (
	"context"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"
)

// mcpBearer adds an API key to every request of the MCP client.
type mcpBearer struct{ key string }

func (b mcpBearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	if b.key != "" {
		r.Header.Set("Authorization", "Bearer "+b.key)
	}
	return http.DefaultTransport.RoundTrip(r)
}

// mcpConnect opens an MCP session to s with key ("" for none).
func (s *msbServer) mcpConnect(key string) (*sdk.ClientSession, error) {
	s.t.Helper()
	client := sdk.NewClient(&sdk.Implementation{Name: "msb-integration-test", Version: "1"}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cs, err := client.Connect(ctx, &sdk.StreamableClientTransport{
		Endpoint:   s.URL + "/mcp",
		HTTPClient: &http.Client{Transport: mcpBearer{key}},
		MaxRetries: -1,
	}, nil)
	if err == nil {
		s.t.Cleanup(func() { cs.Close() })
	}
	return cs, err
}

func (s *msbServer) mustMCPConnect(key string) *sdk.ClientSession {
	s.t.Helper()
	cs, err := s.mcpConnect(key)
	if err != nil {
		s.t.Fatalf("MCP connect: %v\nserver output:\n%s", err, s.out)
	}
	return cs
}

// mcpTool calls a tool and returns its text and isError.
func (s *msbServer) mcpTool(cs *sdk.ClientSession, name string, args map[string]any) (string, bool) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := cs.CallTool(ctx, &sdk.CallToolParams{Name: name, Arguments: args})
	if err != nil {
		s.t.Fatalf("%s: %v\nserver output:\n%s", name, err, s.out)
	}
	var b strings.Builder
	for _, c := range res.Content {
		if tc, ok := c.(*sdk.TextContent); ok {
			b.WriteString(tc.Text)
		}
	}
	return b.String(), res.IsError
}

func TestMCPAuthentication(t *testing.T) {
	t.Parallel()
	home := newHome(t)
	srv := startServer(t, home)

	t.Run("no key", func(t *testing.T) {
		status, body, hdr := srv.postTo("/mcp", `{"jsonrpc":"2.0","id":1,"method":"tools/list"}`, nil)
		if status != http.StatusUnauthorized || hdr.Get("WWW-Authenticate") != "Bearer" || !strings.Contains(string(body), "API key is required") {
			t.Errorf("POST /mcp without a key: %d %q %s", status, hdr.Get("WWW-Authenticate"), body)
		}
		if _, err := srv.mcpConnect(""); err == nil {
			t.Error("the MCP client connected without a key")
		}
	})

	t.Run("rate limit", func(t *testing.T) {
		// The protocol's own messages take from the key's rate, as calls do.
		key := keygen(t, home, "--rate", "3/h")
		list := `{"jsonrpc":"2.0","id":1,"method":"tools/list"}`
		for i := range 3 {
			status, body, hdr := srv.postTo("/mcp", list, bearer(key))
			if status != http.StatusOK || !strings.Contains(string(body), "sandbox_start") || hdr.Get("X-RateLimit-Remaining") != strconv.Itoa(2-i) {
				t.Fatalf("tools/list %d: %d %v %s", i, status, hdr, body)
			}
		}
		status, body, hdr := srv.postTo("/mcp", list, bearer(key))
		if status != http.StatusTooManyRequests || hdr.Get("Retry-After") == "" || !strings.Contains(string(body), "-32005") {
			t.Fatalf("tools/list over the rate: %d %v %s", status, hdr, body)
		}
	})

	t.Run("every message charged once", func(t *testing.T) {
		key := keygen(t, home, "--rate", "5/h")
		remaining := func(body string) (int, string) {
			t.Helper()
			status, data, hdr := srv.postTo("/mcp", body, bearer(key))
			if status == http.StatusTooManyRequests {
				return -1, string(data)
			}
			n, _ := strconv.Atoi(hdr.Get("X-RateLimit-Remaining"))
			return n, string(data)
		}
		// A tool call that runs is charged once, not twice.
		if n, body := remaining(`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"sandbox_get_metrics","arguments":{"namespace":"*"}}}`); n != 4 {
			t.Fatalf("tools/call: remaining %d, want 4: %s", n, body)
		}
		// One the server refuses before running it is charged too.
		if n, body := remaining(`{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"no_such_tool","arguments":{}}}`); n != 3 {
			t.Fatalf("unknown tool: remaining %d, want 3: %s", n, body)
		}
		// A field spelt in another case fools nothing.
		if n, body := remaining(`{"jsonrpc":"2.0","id":3,"method":"tools/list","Method":"tools/call"}`); n != 2 {
			t.Fatalf("case trick: remaining %d, want 2: %s", n, body)
		}
		// A batch costs one call per message.
		if n, body := remaining(`[{"jsonrpc":"2.0","id":4,"method":"ping"},{"jsonrpc":"2.0","id":5,"method":"ping"}]`); n != 0 {
			t.Fatalf("batch of two: remaining %d, want 0: %s", n, body)
		}
		if n, body := remaining(`{"jsonrpc":"2.0","id":6,"method":"ping"}`); n != -1 {
			t.Fatalf("ping with no calls left: remaining %d, want 429: %s", n, body)
		}
	})

	t.Run("other namespace", func(t *testing.T) {
		cs := srv.mustMCPConnect(keygen(t, home, "--namespace", "team-a"))
		text, isErr := srv.mcpTool(cs, "sandbox_start", map[string]any{"sandbox": "intruder", "namespace": "team-b"})
		if !isErr || !strings.Contains(text, "permission denied") || !strings.Contains(text, `API key for namespace "team-a" cannot access namespace "team-b"`) {
			t.Errorf("start in another namespace: isError %v, %q", isErr, text)
		}
		text, isErr = srv.mcpTool(cs, "sandbox_run_command", map[string]any{"sandbox": "intruder", "namespace": "team-b", "command": "id"})
		if !isErr || !strings.Contains(text, "permission denied") {
			t.Errorf("command in another namespace: isError %v, %q", isErr, text)
		}
		// Nothing was started there.
		var m metricsResult
		srv.mustCall(keygen(t, home), "sandbox.metrics.get", map[string]any{"namespace": "team-b"}, &m)
		if len(m.Sandboxes) != 0 {
			t.Errorf("a denied start left sandboxes: %+v", m.Sandboxes)
		}
	})
}

func TestMCPSandboxLifecycle(t *testing.T) {
	t.Parallel()
	home := newHome(t)
	srv := startServer(t, home)
	cs := srv.mustMCPConnect(keygen(t, home, "--namespace", "mcp"))
	ctx := context.Background()

	tools, err := cs.ListTools(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tool := range tools.Tools {
		names = append(names, tool.Name)
	}
	slices.Sort(names)
	if want := []string{"sandbox_get_metrics", "sandbox_list_files", "sandbox_read_file", "sandbox_run_code", "sandbox_run_command",
		"sandbox_start", "sandbox_stop", "sandbox_update_network", "sandbox_write_file"}; !slices.Equal(names, want) {
		t.Errorf("tools %v, want %v", names, want)
	}
	prompts, err := cs.ListPrompts(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	names = names[:0]
	for _, p := range prompts.Prompts {
		names = append(names, p.Name)
	}
	slices.Sort(names)
	if want := []string{"create_node_sandbox", "create_python_sandbox"}; !slices.Equal(names, want) {
		t.Errorf("prompts %v, want %v", names, want)
	}

	box := map[string]any{"sandbox": "assistant", "namespace": "mcp"}
	with := func(extra map[string]any) map[string]any {
		out := map[string]any{"sandbox": "assistant", "namespace": "mcp"}
		for k, v := range extra {
			out[k] = v
		}
		return out
	}
	text, isErr := srv.mcpTool(cs, "sandbox_start", with(map[string]any{"config": map[string]any{
		"image": "microsandbox/python", "memory": 256, "cpus": 1, "envs": []string{"GREETING=hello"}}}))
	if isErr || !strings.Contains(text, "Sandbox assistant started successfully") {
		t.Fatalf("start: isError %v, %q", isErr, text)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			srv.call(keygen(t, home), "sandbox.stop", box)
		}
	})

	text, isErr = srv.mcpTool(cs, "sandbox_run_code", with(map[string]any{"language": "python", "code": "print(6*7)"}))
	if isErr || text != "status: success\nstdout:\n42\n" {
		t.Errorf("run_code: isError %v, %q", isErr, text)
	}
	// The interpreter lives on between calls.
	srv.mcpTool(cs, "sandbox_run_code", with(map[string]any{"language": "python", "code": "x = 6"}))
	text, isErr = srv.mcpTool(cs, "sandbox_run_code", with(map[string]any{"language": "python", "code": "print(x * 7)\n1/0"}))
	if isErr || !strings.Contains(text, "status: error") || !strings.Contains(text, "stdout:\n42\n") || !strings.Contains(text, "ZeroDivisionError") {
		t.Errorf("run_code raising: isError %v, %q", isErr, text)
	}

	text, isErr = srv.mcpTool(cs, "sandbox_run_command", with(map[string]any{"command": "sh", "args": []string{"-c", "echo $GREETING; echo oops >&2; exit 3"}, "timeout": 30}))
	if isErr || text != "exit code: 3\nstdout:\nhello\nstderr:\noops\n" {
		t.Errorf("run_command: isError %v, %q", isErr, text)
	}

	// Files in and out, without a shell.
	text, isErr = srv.mcpTool(cs, "sandbox_write_file", with(map[string]any{"path": "calc.py", "content": "print(2 ** 10)\n"}))
	if isErr || text != "Wrote 15 bytes to calc.py." {
		t.Errorf("write_file: isError %v, %q", isErr, text)
	}
	text, isErr = srv.mcpTool(cs, "sandbox_run_command", with(map[string]any{"command": "python3", "args": []string{"calc.py"}}))
	if isErr || text != "exit code: 0 (success)\nstdout:\n1024\n" {
		t.Errorf("running the file written: isError %v, %q", isErr, text)
	}
	text, isErr = srv.mcpTool(cs, "sandbox_read_file", with(map[string]any{"path": "/workspace/calc.py"}))
	if isErr || text != "/workspace/calc.py (15 bytes):\nprint(2 ** 10)\n" {
		t.Errorf("read_file: isError %v, %q", isErr, text)
	}
	text, isErr = srv.mcpTool(cs, "sandbox_list_files", with(map[string]any{"path": "/workspace"}))
	if isErr || !strings.Contains(text, "1 entry in /workspace") || !strings.Contains(text, "/workspace/calc.py") {
		t.Errorf("list_files: isError %v, %q", isErr, text)
	}

	text, isErr = srv.mcpTool(cs, "sandbox_get_metrics", map[string]any{"namespace": "*"})
	if isErr || !strings.Contains(text, "assistant (namespace mcp): running") || !strings.Contains(text, "MiB") {
		t.Errorf("metrics: isError %v, %q", isErr, text)
	}

	text, isErr = srv.mcpTool(cs, "sandbox_stop", box)
	if isErr || text != "Sandbox assistant stopped successfully" {
		t.Errorf("stop: isError %v, %q", isErr, text)
	}
	stopped = true
	text, isErr = srv.mcpTool(cs, "sandbox_get_metrics", map[string]any{"namespace": "mcp", "sandbox": "assistant"})
	if isErr || !strings.Contains(text, "assistant (namespace mcp): stopped") {
		t.Errorf("metrics after stop: isError %v, %q", isErr, text)
	}
	text, isErr = srv.mcpTool(cs, "sandbox_run_code", with(map[string]any{"language": "python", "code": "print(1)"}))
	if !isErr {
		t.Errorf("run_code in a stopped sandbox succeeded: %q", text)
	}
}

func TestMCPDevMode(t *testing.T) {
	t.Parallel()
	srv := startServer(t, newHome(t), "--dev")
	cs := srv.mustMCPConnect("")
	box := map[string]any{"sandbox": "devbox", "namespace": "default"}
	if text, isErr := srv.mcpTool(cs, "sandbox_start", box); isErr {
		t.Fatalf("start: %s", text)
	}
	text, isErr := srv.mcpTool(cs, "sandbox_run_code", map[string]any{"sandbox": "devbox", "namespace": "default", "language": "python", "code": "print(6*7)"})
	if isErr || !strings.Contains(text, "42") {
		t.Errorf("run_code: isError %v, %q", isErr, text)
	}
	if text, isErr := srv.mcpTool(cs, "sandbox_stop", box); isErr {
		t.Errorf("stop: %s", text)
	}
}
