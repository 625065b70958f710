package rpc_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/msb-dev/msb/auth"
	"github.com/msb-dev/msb/auth/audit"
	"github.com/msb-dev/msb/auth/authtest"
	"github.com/msb-dev/msb/auth/ratelimit"
	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/namespace"
	"github.com/msb-dev/msb/rpc"
	"github.com/msb-dev/msb/sandbox"
)

// Every method of the server's table states its scope explicitly.
func TestEveryMethodHasAScope(t *testing.T) {
	tables := []rpc.Methods{rpc.SandboxMethods(sandbox.Unavailable{Reason: "test"}), rpc.FileMethods(sandbox.Unavailable{Reason: "test"}.Sessions()),
		rpc.KeyMethods(&auth.Manager{}), rpc.AuditMethods(nil)}
	scope := func(table rpc.Methods, name string) auth.Scope { s, _ := table.Scope(name); return s }
	want := map[string]auth.Scope{
		"sandbox.start": auth.ScopeSandboxCreate, "sandbox.stop": auth.ScopeSandboxDelete,
		"sandbox.metrics.get": auth.ScopeSandboxRead, "sandbox.repl.run": auth.ScopeSandboxExec,
		"sandbox.command.run": auth.ScopeSandboxExec, "sandbox.fs.read": auth.ScopeSandboxExec, "sandbox.fs.write": auth.ScopeSandboxExec,
		"sandbox.fs.list": auth.ScopeSandboxExec, "sandbox.network.update": auth.ScopeSandboxCreate,
		"keys.create": auth.ScopeKeysManage, "keys.list": auth.ScopeKeysManage,
		"keys.revoke": auth.ScopeKeysManage, "keys.rotate": auth.ScopeKeysManage, "keys.limit": auth.ScopeKeysManage,
		"audit.list": auth.ScopeAuditRead,
	}
	n := 0
	for _, table := range tables {
		for name := range table {
			n++
			if got := scope(table, name); got != want[name] {
				t.Errorf("%s: scope %q, want %q", name, got, want[name])
			}
		}
	}
	if n != len(want) {
		t.Errorf("%d methods, want %d", n, len(want))
	}
}

type authedFunc func(http.ResponseWriter, *http.Request, *auth.Caller)

func (f authedFunc) ServeAuthed(w http.ResponseWriter, r *http.Request, c *auth.Caller) { f(w, r, c) }

// testClock is a clock the test moves.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }

func (c *testClock) Advance(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

// Other protocols call Invoke: the scope, namespace and rate checks and the
// audit apply to them exactly as to JSON-RPC, and a context without a caller
// may do nothing.
func TestInvokeCannotBypassChecks(t *testing.T) {
	_, signer, reg := authtest.KeyStore(t)
	issuer := &auth.Issuer{Signer: signer, Registry: reg}
	read, _ := auth.ParseScopes([]string{"sandbox:read"})
	key, _, err := issuer.Issue(context.Background(), auth.IssueOptions{Namespace: "team-a", Scopes: read, Rate: ratelimit.Rate{N: 3, Per: time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	ran := 0
	handle := func(context.Context, *rpc.Call, rpc.Ref) (any, error) { ran++; return "ok", nil }
	methods := rpc.Methods{
		"t.read":    rpc.Method[rpc.Ref]{Scope: auth.ScopeSandboxRead, Target: rpc.TargetSandbox, Handle: handle},
		"t.exec":    rpc.Method[rpc.Ref]{Scope: auth.ScopeSandboxExec, Changes: true, Target: rpc.TargetSandbox, Handle: handle},
		"t.noscope": rpc.Method[rpc.Ref]{Handle: handle},
	}
	rec := &authtest.Audit{}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv := rpc.NewServer(methods, keyGate(signer, reg, auth.NewLimits(reg, auth.Defaults{Rate: ratelimit.Rate{N: 600, Per: time.Minute}}, nil), rec), quiet)

	// No caller: nothing runs.
	for _, m := range []string{"t.read", "t.exec", "t.noscope"} {
		if _, err := srv.Invoke(context.Background(), nil, m, json.RawMessage(`{"namespace":"team-a","sandbox":"s1"}`)); !errors.Is(err, errdefs.ErrForbidden) {
			t.Fatalf("Invoke(%s) without a caller: %v", m, err)
		}
	}
	// Through Mount, as MCP is served.
	type result struct {
		err    error
		header http.Header
	}
	var got []result
	srv.Mount("/proto", authedFunc(func(w http.ResponseWriter, r *http.Request, caller *auth.Caller) {
		method := r.URL.Query().Get("m")
		_, err := srv.Invoke(r.Context(), caller, method, json.RawMessage(`{"namespace":"`+r.URL.Query().Get("ns")+`","sandbox":"s1"}`))
		w.WriteHeader(200)
		got = append(got, result{err, w.Header().Clone()})
	}))
	hs := httptest.NewServer(srv)
	defer hs.Close()
	get := func(m, ns string) result {
		req, _ := http.NewRequest("GET", hs.URL+"/proto?m="+m+"&ns="+ns, nil)
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		r := got[len(got)-1]
		r.header = resp.Header
		return r
	}
	if r := get("t.read", "team-a"); r.err != nil || r.header.Get("X-Ratelimit-Remaining") != "2" {
		t.Fatalf("allowed call: %v %v", r.err, r.header)
	}
	if r := get("t.exec", "team-a"); !errors.Is(r.err, errdefs.ErrForbidden) || !strings.Contains(r.err.Error(), "sandbox:exec") {
		t.Fatalf("missing scope through Invoke: %v", r.err)
	}
	if r := get("t.read", "team-b"); r.err == nil || !errors.Is(r.err, namespace.ErrForbidden) {
		// Every call takes from the bucket (3 an hour), refused or not.
		t.Fatalf("other namespace through Invoke: %v", r.err)
	}
	r := get("t.read", "team-a")
	var rl *auth.RateLimitError
	if !errors.As(r.err, &rl) || r.header.Get("Retry-After") == "" {
		t.Fatalf("over the rate through Invoke: %v %v", r.err, r.header)
	}
	if ran != 1 {
		t.Fatalf("handlers ran %d times, want 1", ran)
	}
	outcomes := map[string]int{}
	for _, e := range rec.Events() {
		outcomes[e.Outcome]++
		if e.KeyID != "" && (e.Namespace == "" || e.Sandbox != "s1" || e.Remote != "127.0.0.1") {
			t.Errorf("audit event without its namespace, sandbox or remote address: %+v", e)
		}
	}
	// The three calls without a caller, then the exec refusal, the namespace
	// refusal and the rate refusal; the allowed read is not audited.
	if outcomes[audit.Forbidden] != 5 || outcomes[audit.RateLimited] != 1 || outcomes[audit.OK] != 0 {
		t.Fatalf("audit events %+v", rec.Events())
	}
}

// A flood of refused requests cannot flood the audit log: 401s are recorded
// up to a budget, and the next event recorded counts those left out.
func TestRefusalFloodIsSampled(t *testing.T) {
	_, signer, reg := authtest.KeyStore(t)
	rec := &authtest.Audit{}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	clock := &testClock{t: time.Now()}
	gate := auth.NewGate(&auth.KeyPolicy{Authn: &auth.Authenticator{Signer: signer, Registry: reg}, Limits: auth.NewLimits(reg, auth.Defaults{}, nil), Auditor: rec},
		rpc.Code, clock.Now)
	hs := httptest.NewServer(rpc.NewServer(rpc.Methods{}, gate, quiet))
	defer hs.Close()
	refuse := func() {
		req, _ := http.NewRequest("POST", hs.URL+rpc.RPCPath, strings.NewReader(`{"jsonrpc":"2.0","method":"x","id":1}`))
		req.Header.Set("Authorization", "Bearer msb_not-a-key")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("status %d, want 401", resp.StatusCode)
		}
	}
	const flood = 200
	for range flood {
		refuse()
	}
	n := len(rec.Events())
	if n < 60 || n > 70 {
		t.Fatalf("%d of %d refusals audited, want about 60 (the budget)", n, flood)
	}
	clock.Advance(1100 * time.Millisecond) // one more event's worth of budget
	refuse()
	events := rec.Events()
	last := events[len(events)-1]
	if last.Outcome != audit.Unauthenticated || !strings.Contains(last.Detail, "more like it") {
		t.Fatalf("event after the flood: %+v", last)
	}
}

// In development mode a web page cannot drive the server: cross-origin
// browser requests and requests under a non-loopback Host (DNS rebinding)
// are refused; tools without those headers, and servers with keys, are not
// affected.
func TestDevModeRefusesBrowsersAndRebinding(t *testing.T) {
	methods := rpc.Methods{"t.ping": rpc.Method[struct{}]{Handle: func(context.Context, *rpc.Call, struct{}) (any, error) { return "pong", nil }}}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	dev := httptest.NewServer(rpc.NewServer(methods, devGate(), quiet))
	defer dev.Close()
	_, signer, reg := authtest.KeyStore(t)
	keyed := httptest.NewServer(rpc.NewServer(methods, keyGate(signer, reg, nil, nil), quiet))
	defer keyed.Close()
	post := func(url string, headers map[string]string) (int, string) {
		req, _ := http.NewRequest(http.MethodPost, url+rpc.RPCPath, strings.NewReader(`{"jsonrpc":"2.0","method":"t.ping","id":1}`))
		req.Header.Set("Content-Type", "text/plain") // what a page may send without a preflight
		for k, v := range headers {
			if k == "Host" {
				req.Host = v
			} else {
				req.Header.Set(k, v)
			}
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	for _, c := range []struct {
		name    string
		url     string
		headers map[string]string
		status  int
		want    string
	}{
		{"plain tool", dev.URL, nil, 200, "pong"},
		{"localhost", dev.URL, map[string]string{"Host": "localhost:5555"}, 200, "pong"},
		{"same-origin page", dev.URL, map[string]string{"Sec-Fetch-Site": "same-origin"}, 200, "pong"},
		{"cross-site page", dev.URL, map[string]string{"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}, 403, "cross-origin"},
		{"old browser, other origin", dev.URL, map[string]string{"Origin": "https://evil.example"}, 403, "cross-origin"},
		{"rebinding", dev.URL, map[string]string{"Host": "evil.example:5555", "Origin": "http://evil.example:5555"}, 403, "loopback"},
		{"with keys, other host", keyed.URL, map[string]string{"Host": "msb.internal"}, 401, "API key is required"},
	} {
		status, body := post(c.url, c.headers)
		if status != c.status || !strings.Contains(body, c.want) {
			t.Errorf("%s: %d %s; want %d with %q", c.name, status, body, c.status, c.want)
		}
	}
}

// A batch's answer is bounded: once its responses pass
// MaxBatchResponseBytes, its remaining calls are not run and say why.
func TestBatchResponseIsBounded(t *testing.T) {
	big := strings.Repeat("x", 20<<20)
	ran := 0
	methods := rpc.Methods{"t.big": rpc.Method[struct{}]{Handle: func(context.Context, *rpc.Call, struct{}) (any, error) { ran++; return big, nil }}}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	hs := httptest.NewServer(rpc.NewServer(methods, devGate(), quiet))
	defer hs.Close()
	var batch []string
	for i := range 6 {
		batch = append(batch, fmt.Sprintf(`{"jsonrpc":"2.0","method":"t.big","id":%d}`, i))
	}
	batch = append(batch, `{"jsonrpc":"2.0","method":"t.big"}`) // a notification past the budget: not run
	resp, err := http.Post(hs.URL+rpc.RPCPath, "application/json", strings.NewReader("["+strings.Join(batch, ",")+"]"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out []struct {
		Result *string `json:"result"`
		Error  *struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
		ID int `json:"id"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	want := (rpc.MaxBatchResponseBytes + len(big)) / len(big) // calls run before the budget is passed
	if ran != want || len(out) != 6 {
		t.Fatalf("ran %d calls, answered %d; want %d run, 6 answered", ran, len(out), want)
	}
	for i, r := range out {
		if r.ID != i {
			t.Fatalf("response %d has id %d", i, r.ID)
		}
		if i < want && (r.Result == nil || len(*r.Result) != len(big)) || i >= want && (r.Error == nil || !strings.Contains(r.Error.Message, "not run")) {
			t.Fatalf("response %d: result? %v error %+v", i, r.Result != nil, r.Error)
		}
	}
}
