package v1_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/msb-dev/msb/auth"
	"github.com/msb-dev/msb/auth/authtest"
	"github.com/msb-dev/msb/auth/ratelimit"
	"github.com/msb-dev/msb/rpc"
	v1 "github.com/msb-dev/msb/rpc/v1"
	"github.com/msb-dev/msb/rpc/v1/agent"
	"github.com/msb-dev/msb/sandbox"
	"github.com/msb-dev/msb/sandbox/logfile"
	"github.com/msb-dev/msb/sandbox/volume"
)

// env is a v1 API on a fake service, served over loopback as the server
// serves it (mounted on rpc.Server), with keys of a real registry.
type env struct {
	t     *testing.T
	svc   *fakeService
	sess  *fakeSessions
	vols  *volume.Store
	logs  logfile.Dir
	audit *authtest.Audit
	url   string
	// Keys: of namespace team (every scope), of namespace other, of every
	// namespace, of team with sandbox:read alone, of team with a rate of
	// 5 an hour.
	key, other, all, readOnly, limited string
	// revocable is a key of team for a test to revoke (revocableID) in
	// reg.
	revocable, revocableID string
	reg                    *auth.Registry
}

func newEnv(t *testing.T) *env {
	t.Helper()
	_, signer, reg := authtest.KeyStore(t)
	issuer := &auth.Issuer{Signer: signer, Registry: reg}
	issue := func(o auth.IssueOptions) string {
		k, _, err := issuer.Issue(context.Background(), o)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	read, _ := auth.ParseScopes([]string{"sandbox:read"})
	e := &env{t: t, svc: newFakeService(), audit: &authtest.Audit{}}
	e.sess = newFakeSessions(e.svc)
	e.key = issue(auth.IssueOptions{Namespace: "team", Label: "team"})
	e.other = issue(auth.IssueOptions{Namespace: "other"})
	e.all = issue(auth.IssueOptions{})
	e.readOnly = issue(auth.IssueOptions{Namespace: "team", Scopes: read})
	e.limited = issue(auth.IssueOptions{Namespace: "team", Rate: ratelimit.Rate{N: 5, Per: time.Hour}})
	text, k, err := issuer.Issue(context.Background(), auth.IssueOptions{Namespace: "team", Label: "revocable"})
	if err != nil {
		t.Fatal(err)
	}
	e.revocable, e.revocableID, e.reg = text, k.ID, reg
	policy := &auth.KeyPolicy{Authn: &auth.Authenticator{Signer: signer, Registry: reg},
		Limits:  auth.NewLimits(reg, auth.Defaults{Rate: ratelimit.Rate{N: 600, Per: time.Minute}, StartRate: ratelimit.Rate{N: 60, Per: time.Minute}}, nil),
		Auditor: e.audit}
	gate := auth.NewGate(policy, rpc.Code, nil)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	gate.Log = quiet
	dir := t.TempDir()
	e.vols = &volume.Store{Root: filepath.Join(dir, "volumes"), Meta: filepath.Join(dir, "meta")}
	e.logs = logfile.Dir{Root: filepath.Join(dir, "logs"), Options: sandbox.LogOptions(nil)}
	srv := rpc.NewServer(rpc.Methods{}, gate, quiet)
	srv.Handle(v1.Prefix, v1.New(gate, e.svc, e.sess, e.vols, e.logs, quiet))
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	e.url = hs.URL
	return e
}

// response is an answer of the API.
type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) json(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("status %d, body %q: %v", r.status, r.body, err)
	}
}

// errorCode returns the code of an error envelope ("" if it is none).
func (r response) errorCode() string {
	var e struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(r.body, &e) != nil || e.Error.Message == "" {
		return ""
	}
	return e.Error.Code
}

func (e *env) do(method, path, key string, body any, headers ...string) response {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		data, _ := json.Marshal(b)
		rd = bytes.NewReader(data)
	}
	req, _ := http.NewRequest(method, e.url+path, rd)
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: data}
}

// want checks an answer's status and, for an error, its code.
func (e *env) want(r response, status int, code string) {
	e.t.Helper()
	if r.status != status {
		e.t.Fatalf("status %d, want %d: %s", r.status, status, r.body)
	}
	if code != "" && r.errorCode() != code {
		e.t.Fatalf("code %q, want %q: %s", r.errorCode(), code, r.body)
	}
}

// body is the create body the 0.6.18 SDK sends for Sandbox.builder(name).
func body(name string, mod ...func(map[string]any)) map[string]any {
	b := map[string]any{
		"name": name, "image": map[string]any{"type": "oci", "reference": "alpine:3.20"},
		"resources": map[string]any{"vcpus": 1, "memory_mib": 512},
		"runtime": map[string]any{"workdir": nil, "shell": nil, "scripts": map[string]any{}, "entrypoint": nil, "cmd": nil,
			"user": nil, "log_level": nil},
		"env": []any{}, "labels": map[string]any{}, "rlimits": []any{}, "mounts": []any{}, "patches": []any{},
		"network": map[string]any{"enabled": true, "strict": false}, "init": nil, "pull_policy": "if_missing",
		"security_profile": "default", "lifecycle": map[string]any{"ephemeral": false, "max_duration_secs": nil, "idle_timeout_secs": nil},
	}
	for _, m := range mod {
		m(b)
	}
	return b
}

const createPath = "/v1/sandboxes?start=true&wait_for=running&wait_timeout=90"

// create makes a running sandbox of namespace team and returns it.
func (e *env) create(name string, mod ...func(map[string]any)) v1.Sandbox {
	e.t.Helper()
	r := e.do("POST", createPath, e.key, body(name, mod...))
	e.want(r, 200, "")
	var sb v1.Sandbox
	r.json(e.t, &sb)
	return sb
}

// agentClient is a raw client of the agent socket.
type agentClient struct {
	t    *testing.T
	ws   *websocket.Conn
	r    io.Reader
	buf  []byte
	in   chan []byte
	errc chan error
}

// dial opens the agent socket of sandbox id with key, and reads the
// handshake.
func (e *env) dial(id, key string) *agentClient {
	e.t.Helper()
	a, resp, err := e.tryDial(id, key)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		e.t.Fatalf("dial: %v (HTTP %d)", err, status)
	}
	pro := a.read(8)
	if !bytes.Equal(pro, agent.Prologue(1, 1<<31)) {
		e.t.Fatalf("prologue %x", pro)
	}
	f := a.frame()
	if f.Type != agent.TypeReady || f.ID != 0 || f.Flags != 0 || f.V != 7 {
		e.t.Fatalf("first frame %+v", f)
	}
	return a
}

func (e *env) tryDial(id, key string, headers ...string) (*agentClient, *http.Response, error) {
	h := http.Header{}
	if key != "" {
		h.Set("Authorization", "Bearer "+key)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		h.Set(headers[i], headers[i+1])
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ws, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(e.url, "http")+"/v1/sandboxes/"+id+"/agent", &websocket.DialOptions{HTTPHeader: h})
	if err != nil {
		return nil, resp, err
	}
	ws.SetReadLimit(16 << 20)
	a := &agentClient{t: e.t, ws: ws, in: make(chan []byte, 64), errc: make(chan error, 1)}
	go func() {
		for {
			typ, data, err := ws.Read(context.Background())
			if err != nil {
				a.errc <- err
				close(a.in)
				return
			}
			if typ == websocket.MessageBinary {
				a.in <- data
			}
		}
	}()
	e.t.Cleanup(func() { ws.CloseNow() })
	return a, resp, nil
}

// read returns the next n bytes of the stream.
func (a *agentClient) read(n int) []byte {
	a.t.Helper()
	timeout := time.After(10 * time.Second)
	for len(a.buf) < n {
		select {
		case b, ok := <-a.in:
			if !ok {
				a.t.Fatalf("socket closed while reading %d bytes", n)
			}
			a.buf = append(a.buf, b...)
		case <-timeout:
			a.t.Fatalf("timed out reading %d bytes", n)
		}
	}
	out := a.buf[:n]
	a.buf = a.buf[n:]
	return out
}

// frame returns the next frame.
func (a *agentClient) frame() agent.Frame {
	a.t.Helper()
	head := a.read(4)
	n := int(head[0])<<24 | int(head[1])<<16 | int(head[2])<<8 | int(head[3])
	rest := a.read(n)
	f, err := agent.ReadFrame(bytes.NewReader(append(append([]byte(nil), head...), rest...)))
	if err != nil {
		a.t.Fatalf("frame: %v", err)
	}
	return f
}

// closed reports whether the server closed the socket (within a while).
func (a *agentClient) closed() bool {
	timeout := time.After(5 * time.Second)
	for {
		select {
		case _, ok := <-a.in:
			if !ok {
				return true
			}
		case <-timeout:
			return false
		}
	}
}

func (a *agentClient) sendRaw(b []byte) {
	a.t.Helper()
	if err := a.ws.Write(context.Background(), websocket.MessageBinary, b); err != nil {
		a.t.Fatal(err)
	}
}

func (a *agentClient) send(id uint32, typ string, payload any) {
	a.t.Helper()
	f, err := agent.AppendFrame(nil, id, agent.FlagsOf(typ), typ, payload)
	if err != nil {
		a.t.Fatal(err)
	}
	a.sendRaw(f)
}

func (a *agentClient) exec(id uint32, cmd string, args ...string) {
	a.send(id, agent.TypeExecRequest, agent.ExecRequest{Cmd: cmd, Args: args, Env: []string{}, Rlimits: []agent.Rlimit{}})
}

func (a *agentClient) fs(id uint32, op string, args any) {
	a.t.Helper()
	o, err := agent.NewFsOp(op, args)
	if err != nil {
		a.t.Fatal(err)
	}
	a.send(id, agent.TypeFsRequest, agent.FsRequest{Op: o})
}

// fsResponse reads frames until the response of id and returns it with
// the data frames before it.
func (a *agentClient) fsResponse(id uint32) (map[string]any, []byte) {
	a.t.Helper()
	var data []byte
	for {
		f := a.frame()
		if f.ID != id {
			a.t.Fatalf("frame of id %d while waiting for %d: %+v", f.ID, id, f)
		}
		switch f.Type {
		case agent.TypeFsData:
			d, _ := agent.DecodeData(f.Payload)
			data = append(data, d...)
			continue
		case agent.TypeFsResponse:
			if f.Flags != agent.FlagTerminal {
				a.t.Fatalf("fs.response flags %d", f.Flags)
			}
			var m map[string]any
			if err := agent.Decode(f.Payload, &m); err != nil {
				a.t.Fatal(err)
			}
			return m, data
		}
		a.t.Fatalf("unexpected %+v", f)
	}
}

// execResult collects an exec's frames up to its terminal one.
type execResult struct {
	started        bool
	stdout, stderr []byte
	last           agent.Frame
	payload        map[string]any
}

func (a *agentClient) execResult(id uint32) execResult {
	a.t.Helper()
	var r execResult
	for {
		f := a.frame()
		if f.ID != id {
			a.t.Fatalf("frame of id %d while waiting for %d", f.ID, id)
		}
		switch f.Type {
		case agent.TypeExecStarted:
			r.started = true
			if f.Flags != 0 {
				a.t.Fatalf("started flags %d", f.Flags)
			}
			continue
		case agent.TypeExecStdout, agent.TypeExecStderr:
			d, err := agent.DecodeData(f.Payload)
			if err != nil || f.Flags != 0 {
				a.t.Fatalf("%s: %v flags %d", f.Type, err, f.Flags)
			}
			if f.Type == agent.TypeExecStdout {
				r.stdout = append(r.stdout, d...)
			} else {
				r.stderr = append(r.stderr, d...)
			}
			continue
		}
		r.last = f
		agent.Decode(f.Payload, &r.payload)
		if f.Flags&agent.FlagTerminal == 0 {
			a.t.Fatalf("last frame %s is not terminal", f.Type)
		}
		return r
	}
}

// eventually waits for cond.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var errAny = errors.New("any")
