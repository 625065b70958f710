package mcp_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/msb-dev/msb/auth"
	"github.com/msb-dev/msb/auth/authtest"
	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/rpc"
	"github.com/msb-dev/msb/rpc/mcp"
	"github.com/msb-dev/msb/sandbox"
	"github.com/msb-dev/msb/sandbox/sandboxtest"
)

// fakeManager records what the tools asked of the sandbox service.
type fakeManager struct {
	mu      sync.Mutex
	calls   []string
	configs []*sandbox.Config
	execs   []sandbox.ExecRequest
	running map[sandbox.ID]bool
	// block, when set, makes RunCode wait for its context and report when
	// it ended.
	block chan error
}

func (m *fakeManager) record(call string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls = append(m.calls, call)
}

func (m *fakeManager) Start(ctx context.Context, id sandbox.ID, cfg *sandbox.Config) error {
	m.record("start " + id.String())
	m.mu.Lock()
	defer m.mu.Unlock()
	m.configs = append(m.configs, cfg)
	if m.running == nil {
		m.running = map[sandbox.ID]bool{}
	}
	m.running[id] = true
	return nil
}

func (m *fakeManager) Stop(ctx context.Context, id sandbox.ID) error {
	m.record("stop " + id.String())
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.running[id] {
		return errdefs.NotFoundf("sandbox %s not found", id)
	}
	m.running[id] = false
	return nil
}

func (m *fakeManager) Metrics(ctx context.Context, ns string) ([]sandbox.Metrics, error) {
	m.record("metrics " + ns)
	return m.metrics(func(id sandbox.ID) bool { return ns == "*" || id.Namespace() == ns }), nil
}

func (m *fakeManager) SandboxMetrics(ctx context.Context, id sandbox.ID) (sandbox.Metrics, error) {
	m.record("metrics " + id.String())
	out := m.metrics(func(x sandbox.ID) bool { return x == id })
	if len(out) == 0 {
		return sandbox.Metrics{}, errdefs.NotFoundf("sandbox %q not found in namespace %q", id.Name(), id.Namespace())
	}
	return out[0], nil
}

func (m *fakeManager) SetNetwork(ctx context.Context, id sandbox.ID, n sandbox.Network) (sandbox.NetworkUpdate, error) {
	m.record(fmt.Sprintf("network %s %s %q", id, n.Mode, n.Allow))
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.running[id]; !ok {
		return sandbox.NetworkUpdate{}, errdefs.NotFoundf("sandbox %s not found", id)
	}
	return sandbox.NetworkUpdate{Network: n, Running: m.running[id]}, nil
}

func (m *fakeManager) metrics(match func(sandbox.ID) bool) []sandbox.Metrics {
	m.mu.Lock()
	defer m.mu.Unlock()
	cpu, mem, disk := 1.5, int64(34), int64(4096)
	var out []sandbox.Metrics
	for id, running := range m.running {
		if match(id) {
			e := sandbox.Metrics{ID: id, Running: running}
			if running {
				e.CPUUsage, e.MemoryUsage, e.DiskUsage = &cpu, &mem, &disk
			}
			out = append(out, e)
		}
	}
	return out
}

func (m *fakeManager) RunCode(ctx context.Context, id sandbox.ID, lang sandbox.Language, code string, timeout time.Duration) (sandbox.ReplResult, error) {
	m.record(fmt.Sprintf("code %s %s %q %s", id, lang, code, timeout))
	if m.block != nil {
		select {
		case <-ctx.Done():
			m.block <- ctx.Err()
		case <-time.After(10 * time.Second):
			m.block <- errors.New("RunCode was not cancelled")
		}
		return sandbox.ReplResult{}, ctx.Err()
	}
	if code == "raise" {
		return sandbox.ReplResult{Status: sandbox.ReplError, Output: []sandbox.Line{{Stream: sandbox.Stderr, Text: "Traceback: boom"}}}, nil
	}
	return sandbox.ReplResult{Status: sandbox.ReplSuccess, Output: []sandbox.Line{{Stream: sandbox.Stdout, Text: "42"}}}, nil
}

func (m *fakeManager) Pool() []sandbox.PoolStatus { return nil }

func (m *fakeManager) Usage(string) (sandbox.Usage, sandbox.Quota) {
	return sandbox.Usage{}, sandbox.Quota{}
}

func (m *fakeManager) Exec(ctx context.Context, id sandbox.ID, req sandbox.ExecRequest) (sandbox.ExecResult, error) {
	m.record("exec " + id.String())
	m.mu.Lock()
	m.execs = append(m.execs, req)
	m.mu.Unlock()
	return sandbox.ExecResult{ExitCode: 3, Output: []sandbox.Line{
		{Stream: sandbox.Stdout, Text: "out line"}, {Stream: sandbox.Stderr, Text: "err line"}}}, nil
}

func (m *fakeManager) Calls() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.calls)
}

// stack is an rpc.Server with /mcp mounted, on a loopback port, with real
// API keys (SQLite registry, signing key) unless dev.
type stack struct {
	url    string
	issue  func(namespace string) string
	m      *fakeManager
	files  *sandboxtest.Memory // the files of team-a/box, running
	logBuf *sandboxtest.SyncBuffer
}

func newStack(t *testing.T, dev bool) *stack {
	t.Helper()
	st := &stack{m: &fakeManager{}, logBuf: &sandboxtest.SyncBuffer{}}
	log := slog.New(slog.NewTextHandler(st.logBuf, nil))
	gate := auth.NewGate(auth.DevPolicy{}, rpc.Code, nil)
	if !dev {
		_, signer, reg := authtest.KeyStore(t)
		gate = auth.NewGate(&auth.KeyPolicy{Authn: &auth.Authenticator{Signer: signer, Registry: reg}, Limits: auth.NewLimits(reg, auth.Defaults{}, nil)}, rpc.Code, nil)
		st.issue = func(ns string) string {
			key, _, err := (&auth.Issuer{Signer: signer, Registry: reg}).Issue(context.Background(), auth.IssueOptions{Namespace: ns})
			if err != nil {
				t.Fatal(err)
			}
			return key
		}
	}
	st.files = sandboxtest.NewMemory()
	box := sandboxtest.ID(t, "team-a", "box")
	if err := st.files.Create(context.Background(), box, sandbox.Spec{Workdir: "/workspace"}); err != nil {
		t.Fatal(err)
	}
	if err := st.files.Start(context.Background(), box); err != nil {
		t.Fatal(err)
	}
	methods := rpc.SandboxMethods(st.m)
	maps.Copy(methods, rpc.FileMethods(st.files))
	server := rpc.NewServer(methods, gate, log)
	server.Mount(mcp.Path, mcp.NewHandler(server, &mcp.Options{Logger: log, Version: "test"}))
	srv := httptest.NewServer(server)
	t.Cleanup(srv.Close)
	st.url = srv.URL + mcp.Path
	return st
}

// bearerTransport adds the API key to every request of the MCP client.
type bearerTransport struct{ key string }

func (b bearerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	if b.key != "" {
		r.Header.Set("Authorization", "Bearer "+b.key)
	}
	return http.DefaultTransport.RoundTrip(r)
}

// connect opens an MCP client session with key ("" for none) speaking
// protocol version ("" for the SDK's latest).
func connect(t *testing.T, url, key, version string) (*sdk.ClientSession, error) {
	t.Helper()
	client := sdk.NewClient(&sdk.Implementation{Name: "msb-test", Version: "1"}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cs, err := client.Connect(ctx, &sdk.StreamableClientTransport{
		Endpoint:   url,
		HTTPClient: &http.Client{Transport: bearerTransport{key}},
		MaxRetries: -1,
	}, &sdk.ClientSessionOptions{ProtocolVersion: version})
	if err == nil {
		t.Cleanup(func() { cs.Close() })
	}
	return cs, err
}

func mustConnect(t *testing.T, url, key, version string) *sdk.ClientSession {
	t.Helper()
	cs, err := connect(t, url, key, version)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	return cs
}

// callTool calls a tool and returns its text and whether it is an error.
func callTool(t *testing.T, cs *sdk.ClientSession, name string, args map[string]any) (string, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := cs.CallTool(ctx, &sdk.CallToolParams{Name: name, Arguments: args})
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	var text strings.Builder
	for _, c := range res.Content {
		tc, ok := c.(*sdk.TextContent)
		if !ok {
			t.Fatalf("%s: content %T, want text", name, c)
		}
		text.WriteString(tc.Text)
	}
	return text.String(), res.IsError
}

func TestListToolsAndPrompts(t *testing.T) {
	st := newStack(t, false)
	cs := mustConnect(t, st.url, st.issue("*"), "")
	ctx := context.Background()
	init := cs.InitializeResult()
	if caps := init.Capabilities; caps.Tools == nil || caps.Prompts == nil || caps.Tools.ListChanged || caps.Prompts.ListChanged || caps.Logging != nil {
		t.Errorf("capabilities %+v: want tools and prompts, without listChanged or logging", caps)
	}
	if !strings.Contains(init.Instructions, "sandbox_stop") {
		t.Errorf("instructions do not say to stop sandboxes: %q", init.Instructions)
	}
	tools, err := cs.ListTools(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{
		"sandbox_start":          {"sandbox", "namespace"},
		"sandbox_stop":           {"sandbox", "namespace"},
		"sandbox_run_code":       {"sandbox", "namespace", "language", "code"},
		"sandbox_run_command":    {"sandbox", "namespace", "command"},
		"sandbox_get_metrics":    {"namespace"},
		"sandbox_read_file":      {"sandbox", "namespace", "path"},
		"sandbox_write_file":     {"sandbox", "namespace", "path", "content"},
		"sandbox_list_files":     {"sandbox", "namespace", "path"},
		"sandbox_update_network": {"sandbox", "namespace", "network"},
	}
	if len(tools.Tools) != len(want) {
		t.Errorf("got %d tools, want %d", len(tools.Tools), len(want))
	}
	for _, tool := range tools.Tools {
		required, ok := want[tool.Name]
		if !ok {
			t.Errorf("unexpected tool %s", tool.Name)
			continue
		}
		var schema struct {
			Type       string                     `json:"type"`
			Required   []string                   `json:"required"`
			Properties map[string]json.RawMessage `json:"properties"`
		}
		data, _ := json.Marshal(tool.InputSchema)
		if err := json.Unmarshal(data, &schema); err != nil {
			t.Fatalf("%s schema: %v", tool.Name, err)
		}
		if schema.Type != "object" || !slices.Equal(schema.Required, required) {
			t.Errorf("%s: schema type %q required %v, want object with %v", tool.Name, schema.Type, schema.Required, required)
		}
		if tool.Description == "" || !strings.Contains(string(data), "description") {
			t.Errorf("%s: no descriptions", tool.Name)
		}
	}
	start := tools.Tools[slices.IndexFunc(tools.Tools, func(t *sdk.Tool) bool { return t.Name == "sandbox_start" })]
	if !strings.Contains(start.Description, "sandbox_stop") {
		t.Errorf("sandbox_start does not tell the assistant to stop what it starts: %q", start.Description)
	}
	data, _ := json.Marshal(start.InputSchema)
	for _, field := range []string{"image", "memory", "cpus", "envs", "network", "allow"} {
		if !strings.Contains(string(data), `"`+field+`"`) {
			t.Errorf("sandbox_start config schema lacks %s: %s", field, data)
		}
	}

	prompts, err := cs.ListPrompts(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range prompts.Prompts {
		names = append(names, p.Name)
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"create_node_sandbox", "create_python_sandbox"}) {
		t.Errorf("prompts %v", names)
	}
	for name, image := range map[string]string{"create_python_sandbox": "microsandbox/python", "create_node_sandbox": "microsandbox/node"} {
		p, err := cs.GetPrompt(ctx, &sdk.GetPromptParams{Name: name, Arguments: map[string]string{"sandbox": "mine", "task": "add 2 and 2"}})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		text := p.Messages[0].Content.(*sdk.TextContent).Text
		for _, want := range []string{image, `"sandbox":"mine"`, "sandbox_start", "sandbox_run_code", "sandbox_stop", "add 2 and 2"} {
			if !strings.Contains(text, want) {
				t.Errorf("%s: prompt lacks %q:\n%s", name, want, text)
			}
		}
	}
}

func TestToolsCallTheSandboxMethods(t *testing.T) {
	// The default (newest) protocol, and the older one that clients such as
	// the TypeScript SDK speak with an initialize handshake.
	for _, version := range []string{"", "2025-06-18"} {
		t.Run("protocol="+version, func(t *testing.T) {
			st := newStack(t, false)
			cs := mustConnect(t, st.url, st.issue("team-a"), version)
			target := map[string]any{"sandbox": "box", "namespace": "team-a"}
			with := func(extra map[string]any) map[string]any {
				out := map[string]any{}
				for k, v := range target {
					out[k] = v
				}
				for k, v := range extra {
					out[k] = v
				}
				return out
			}

			text, isErr := callTool(t, cs, "sandbox_start", with(map[string]any{"config": map[string]any{
				"image": "microsandbox/python", "memory": 256, "cpus": 1, "envs": []string{"A=1"}}}))
			if isErr || !strings.Contains(text, "Sandbox box started successfully") || !strings.Contains(text, "sandbox_stop") {
				t.Fatalf("start: %v %q", isErr, text)
			}
			if cfg := st.m.configs[0]; cfg == nil || cfg.Image != "microsandbox/python" || cfg.Memory != 256 || !slices.Equal(cfg.Envs, []string{"A=1"}) {
				t.Errorf("config reached the service as %+v", cfg)
			}

			text, isErr = callTool(t, cs, "sandbox_run_code", with(map[string]any{"language": "python", "code": "print(6*7)", "timeout": 5}))
			if isErr || text != "status: success\nstdout:\n42\n" {
				t.Errorf("run_code: %v %q", isErr, text)
			}
			text, isErr = callTool(t, cs, "sandbox_run_code", with(map[string]any{"language": "python", "code": "raise"}))
			if isErr || !strings.Contains(text, "status: error") || !strings.Contains(text, "stderr:\nTraceback: boom") {
				t.Errorf("run_code raising: %v %q", isErr, text)
			}

			text, isErr = callTool(t, cs, "sandbox_run_command", with(map[string]any{"command": "sh", "args": []string{"-c", "exit 3"}, "timeout": 2.5}))
			if isErr || text != "exit code: 3\nstdout:\nout line\nstderr:\nerr line\n" {
				t.Errorf("run_command: %v %q", isErr, text)
			}
			if req := st.m.execs[0]; req.Command != "sh" || !slices.Equal(req.Args, []string{"-c", "exit 3"}) || req.Timeout != 2500*time.Millisecond {
				t.Errorf("exec reached the service as %+v", req)
			}

			text, isErr = callTool(t, cs, "sandbox_get_metrics", map[string]any{"namespace": "*"})
			if isErr || !strings.Contains(text, "box (namespace team-a): running, CPU 1.5%, memory 34 MiB, disk 4096 bytes written") {
				t.Errorf("metrics: %v %q", isErr, text)
			}
			if calls := st.m.Calls(); !slices.Contains(calls, "metrics team-a") {
				t.Errorf(`"*" from a team-a key was not narrowed to team-a: %v`, calls)
			}

			text, isErr = callTool(t, cs, "sandbox_update_network", with(map[string]any{"network": map[string]any{"allow": []string{"pypi.org:443"}}}))
			if isErr || !strings.Contains(text, "Sandbox box has network now") || !strings.Contains(text, "It may reach: pypi.org:443") {
				t.Errorf("update_network: %v %q", isErr, text)
			}
			if calls := st.m.Calls(); !slices.Contains(calls, `network team-a/box on ["pypi.org:443"]`) {
				t.Errorf("network update reached the service as %v", calls)
			}
			text, isErr = callTool(t, cs, "sandbox_update_network", with(map[string]any{"network": map[string]any{"enabled": false}}))
			if isErr || text != "Sandbox box has no network now." {
				t.Errorf("update_network off: %v %q", isErr, text)
			}

			text, isErr = callTool(t, cs, "sandbox_stop", target)
			if isErr || text != "Sandbox box stopped successfully" {
				t.Errorf("stop: %v %q", isErr, text)
			}
			text, isErr = callTool(t, cs, "sandbox_stop", target)
			if !isErr || !strings.Contains(text, "not found") {
				t.Errorf("second stop: %v %q", isErr, text)
			}
		})
	}
}

func TestFileTools(t *testing.T) {
	st := newStack(t, false)
	cs := mustConnect(t, st.url, st.issue("team-a"), "")
	with := func(extra map[string]any) map[string]any {
		out := map[string]any{"sandbox": "box", "namespace": "team-a"}
		maps.Copy(out, extra)
		return out
	}
	text, isErr := callTool(t, cs, "sandbox_write_file", with(map[string]any{"path": "main.py", "content": "print(42)\n", "mode": "755"}))
	if isErr || text != "Wrote 10 bytes to main.py." {
		t.Errorf("write: %v %q", isErr, text)
	}
	text, isErr = callTool(t, cs, "sandbox_write_file", with(map[string]any{"path": "/workspace/blob", "content": "AAEC", "encoding": "base64"}))
	if isErr || text != "Wrote 3 bytes to /workspace/blob." {
		t.Errorf("write base64: %v %q", isErr, text)
	}
	text, isErr = callTool(t, cs, "sandbox_read_file", with(map[string]any{"path": "/workspace/main.py"}))
	if isErr || text != "/workspace/main.py (10 bytes):\nprint(42)\n" {
		t.Errorf("read: %v %q", isErr, text)
	}
	text, isErr = callTool(t, cs, "sandbox_read_file", with(map[string]any{"path": "blob"}))
	if isErr || text != "blob: 3 bytes of binary content, as base64:\nAAEC\n" {
		t.Errorf("read binary: %v %q", isErr, text)
	}
	text, isErr = callTool(t, cs, "sandbox_list_files", with(map[string]any{"path": "/workspace"}))
	if isErr || !strings.Contains(text, "2 entries in /workspace") || !strings.Contains(text, "file    0755         10  /workspace/main.py") {
		t.Errorf("list: %v %q", isErr, text)
	}
	text, isErr = callTool(t, cs, "sandbox_read_file", with(map[string]any{"path": "/workspace/nope"}))
	if !isErr || !strings.Contains(text, "not found") || !strings.Contains(text, "no such file") {
		t.Errorf("read a missing file: %v %q", isErr, text)
	}
	text, isErr = callTool(t, cs, "sandbox_list_files", map[string]any{"sandbox": "box", "namespace": "team-b", "path": "/"})
	if !isErr || !strings.Contains(text, "permission denied") {
		t.Errorf("list in another namespace: %v %q", isErr, text)
	}
}

func TestNamespaceDenied(t *testing.T) {
	st := newStack(t, false)
	cs := mustConnect(t, st.url, st.issue("team-a"), "")
	for _, call := range []struct {
		tool string
		args map[string]any
	}{
		{"sandbox_start", map[string]any{"sandbox": "x", "namespace": "team-b"}},
		{"sandbox_run_code", map[string]any{"sandbox": "x", "namespace": "team-b", "language": "python", "code": "1"}},
		{"sandbox_run_command", map[string]any{"sandbox": "x", "namespace": "team-b", "command": "ls"}},
		{"sandbox_stop", map[string]any{"sandbox": "x", "namespace": "team-b"}},
		{"sandbox_get_metrics", map[string]any{"namespace": "team-b"}},
	} {
		text, isErr := callTool(t, cs, call.tool, call.args)
		if !isErr || !strings.Contains(text, "permission denied") || !strings.Contains(text, `cannot access namespace "team-b"`) {
			t.Errorf("%s in another namespace: isError %v, %q", call.tool, isErr, text)
		}
	}
	if calls := st.m.Calls(); len(calls) != 0 {
		t.Errorf("denied calls reached the service: %v", calls)
	}
}

// Each request is authorized as its own caller, even when requests of
// differently scoped keys interleave.
func TestCallersDoNotMix(t *testing.T) {
	st := newStack(t, false)
	a := mustConnect(t, st.url, st.issue("team-a"), "")
	b := mustConnect(t, st.url, st.issue("team-b"), "")
	var wg sync.WaitGroup
	errs := make(chan string, 100)
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cs, own, other := a, "team-a", "team-b"
			if i%2 == 1 {
				cs, own, other = b, "team-b", "team-a"
			}
			if text, isErr := callTool(t, cs, "sandbox_get_metrics", map[string]any{"namespace": own}); isErr {
				errs <- fmt.Sprintf("%s key denied its own namespace: %s", own, text)
			}
			if text, isErr := callTool(t, cs, "sandbox_get_metrics", map[string]any{"namespace": other}); !isErr {
				errs <- fmt.Sprintf("%s key allowed into %s: %s", own, other, text)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

func TestWithoutKey(t *testing.T) {
	st := newStack(t, false)
	resp, err := http.Post(st.url, "application/json", strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"tools/list"}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") != "Bearer" || !strings.Contains(string(body), "API key is required") {
		t.Errorf("without a key: %d %q %s", resp.StatusCode, resp.Header.Get("WWW-Authenticate"), body)
	}
	if _, err := connect(t, st.url, "", ""); err == nil {
		t.Error("the MCP client connected without a key")
	}
	if _, err := connect(t, st.url, "msb_not-a-key", ""); err == nil {
		t.Error("the MCP client connected with a bad key")
	}
}

func TestDevModeNeedsNoKey(t *testing.T) {
	st := newStack(t, true)
	cs := mustConnect(t, st.url, "", "")
	if text, isErr := callTool(t, cs, "sandbox_start", map[string]any{"sandbox": "d", "namespace": "default"}); isErr {
		t.Fatalf("start in dev mode: %s", text)
	}
	if text, isErr := callTool(t, cs, "sandbox_stop", map[string]any{"sandbox": "d", "namespace": "default"}); isErr {
		t.Fatalf("stop in dev mode: %s", text)
	}
}

func TestInvalidArguments(t *testing.T) {
	st := newStack(t, true)
	cs := mustConnect(t, st.url, "", "")
	for _, c := range []struct {
		tool string
		args map[string]any
		want string
	}{
		{"sandbox_run_command", map[string]any{"sandbox": "x", "namespace": "default", "command": "ls", "bogus": 1}, `unknown field "bogus"`},
		{"sandbox_run_code", map[string]any{"sandbox": "x", "namespace": "default", "language": "cobol", "code": "1"}, `unsupported language "cobol"`},
		{"sandbox_start", map[string]any{"sandbox": "x"}, `"namespace" is required`},
		{"sandbox_start", map[string]any{"sandbox": "x", "namespace": "no spaces"}, "namespace"},
		{"sandbox_run_code", map[string]any{"sandbox": "x", "namespace": "default", "language": "python", "code": "1", "timeout": -1}, `"timeout" must be`},
	} {
		text, isErr := callTool(t, cs, c.tool, c.args)
		if !isErr || !strings.Contains(text, "invalid arguments") || !strings.Contains(text, c.want) {
			t.Errorf("%s %v: isError %v, %q; want an invalid-arguments error containing %q", c.tool, c.args, isErr, text, c.want)
		}
	}
}

// A plain client POSTs one JSON-RPC request, without a session or an
// initialize handshake, and gets plain JSON back.
func TestSingleJSONPost(t *testing.T) {
	st := newStack(t, false)
	key := st.issue("*")
	req, _ := http.NewRequest(http.MethodPost, st.url, strings.NewReader(
		`{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"sandbox_get_metrics","arguments":{"namespace":"*"}}}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r struct {
		ID     int `json:"id"`
		Result struct {
			Content []struct {
				Type string `json:"type"`
				Text string `json:"text"`
			} `json:"content"`
			IsError bool `json:"isError"`
		} `json:"result"`
	}
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || ct != "application/json" {
		t.Fatalf("status %d, content type %q", resp.StatusCode, ct)
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		t.Fatal(err)
	}
	if r.ID != 7 || r.Result.IsError || len(r.Result.Content) != 1 || r.Result.Content[0].Text != "No sandboxes." {
		t.Errorf("response %+v", r)
	}
}

func TestAcceptHeaders(t *testing.T) {
	st := newStack(t, true)
	for accept, want := range map[string]int{
		"":                                    200, // none: anything goes
		"application/json":                    200,
		"*/*":                                 200,
		"application/json, text/event-stream": 200,
		"text/html":                           400,
	} {
		req, _ := http.NewRequest(http.MethodPost, st.url, strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"tools/list"}`))
		req.Header.Set("Content-Type", "application/json")
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("Accept %q: status %d, want %d", accept, resp.StatusCode, want)
		}
	}
	resp, err := http.Get(st.url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET: status %d, want 405 (no sessions, no event streams)", resp.StatusCode)
	}
}

// A client that gives up on a call stops the work it asked for.
func TestClientGivingUpCancelsTheCall(t *testing.T) {
	st := newStack(t, true)
	st.m.block = make(chan error, 1)
	cs := mustConnect(t, st.url, "", "")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	cs.CallTool(ctx, &sdk.CallToolParams{Name: "sandbox_run_code", Arguments: map[string]any{
		"sandbox": "x", "namespace": "default", "language": "python", "code": "while True: pass"}})
	if err := <-st.m.block; !errors.Is(err, context.Canceled) {
		t.Errorf("RunCode ended with %v, want context.Canceled", err)
	}
}
