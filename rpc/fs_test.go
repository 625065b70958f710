package rpc_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/msb-dev/msb/auth"
	"github.com/msb-dev/msb/rpc"
	"github.com/msb-dev/msb/sandbox"
	"github.com/msb-dev/msb/sandbox/sandboxtest"
)

// fsServer serves the fs methods on the in-memory engine, with one
// running sandbox, ns/box, in development mode.
type rpcError = struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

func fsServer(t *testing.T) (*sandboxtest.Memory, func(method string, params map[string]any) (json.RawMessage, *rpcError)) {
	t.Helper()
	eng := sandboxtest.NewMemory()
	id := sandboxtest.ID(t, "ns", "box")
	if err := eng.Create(context.Background(), id, sandbox.Spec{Workdir: "/workspace"}); err != nil {
		t.Fatal(err)
	}
	if err := eng.Start(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	srv := rpc.NewServer(rpc.FileMethods(eng), auth.NewGate(auth.DevPolicy{}, rpc.Code, nil), slog.New(slog.NewTextHandler(io.Discard, nil)))
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	return eng, func(method string, params map[string]any) (json.RawMessage, *rpcError) {
		t.Helper()
		p := map[string]any{"namespace": "ns", "sandbox": "box"}
		for k, v := range params {
			p[k] = v
		}
		body, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": 1, "method": method, "params": p})
		req, _ := http.NewRequest("POST", hs.URL+rpc.RPCPath, strings.NewReader(string(body)))
		req.Header.Set("Content-Type", "application/json")
		req.Host = "localhost"
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var r struct {
			Result json.RawMessage `json:"result"`
			Error  *rpcError       `json:"error"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
			t.Fatal(err)
		}
		return r.Result, r.Error
	}
}

func TestFileMethods(t *testing.T) {
	_, call := fsServer(t)
	mustCall := func(method string, params map[string]any, out any) {
		t.Helper()
		res, rerr := call(method, params)
		if rerr != nil {
			t.Fatalf("%s %v: %+v", method, params, rerr)
		}
		if err := json.Unmarshal(res, out); err != nil {
			t.Fatal(err)
		}
	}
	var w rpc.WriteResult
	mustCall("sandbox.fs.write", map[string]any{"path": "hello.txt", "content": "héllo <world>\n", "mode": "600"}, &w)
	if w.Path != "hello.txt" || w.Written != int64(len("héllo <world>\n")) {
		t.Errorf("write result %+v", w)
	}
	var r rpc.FileContent
	mustCall("sandbox.fs.read", map[string]any{"path": "/workspace/hello.txt"}, &r)
	if r.Content != "héllo <world>\n" || r.Encoding != "utf-8" || r.Length != 15 || r.Truncated {
		t.Errorf("read %+v", r)
	}
	// A cut through a character leaves it for the next read.
	mustCall("sandbox.fs.read", map[string]any{"path": "hello.txt", "length": 2}, &r)
	if r.Content != "h" || r.Encoding != "utf-8" || r.Length != 1 {
		t.Errorf("read of 2 bytes cutting é: %+v", r)
	}
	mustCall("sandbox.fs.read", map[string]any{"path": "hello.txt", "offset": 1, "length": 2, "encoding": "base64"}, &r)
	if r.Content != base64.StdEncoding.EncodeToString([]byte("é")) || r.Encoding != "base64" || r.Length != 2 {
		t.Errorf("base64 read %+v", r)
	}

	bin := []byte{0, 1, 2, 0xff, 0xfe, '\n'}
	mustCall("sandbox.fs.write", map[string]any{"path": "/workspace/bin", "content": base64.StdEncoding.EncodeToString(bin), "encoding": "base64", "mode": 0o755}, &w)
	mustCall("sandbox.fs.read", map[string]any{"path": "/workspace/bin"}, &r)
	if r.Encoding != "base64" || r.Content != base64.StdEncoding.EncodeToString(bin) || r.Length != len(bin) {
		t.Errorf("binary read %+v", r)
	}
	// Valid text that JSON would blow up travels as base64.
	mustCall("sandbox.fs.write", map[string]any{"path": "ctl", "content": strings.Repeat("\x01", 100)}, &w)
	mustCall("sandbox.fs.read", map[string]any{"path": "ctl"}, &r)
	if r.Encoding != "base64" {
		t.Errorf("control bytes read as %s", r.Encoding)
	}
	mustCall("sandbox.fs.read", map[string]any{"path": "ctl", "encoding": "utf-8"}, &r)
	if r.Encoding != "utf-8" || r.Content != strings.Repeat("\x01", 100) {
		t.Errorf("control bytes asked as text: %+v", r)
	}

	var l rpc.ListResult
	mustCall("sandbox.fs.list", map[string]any{"path": "/workspace"}, &l)
	var got []string
	for _, e := range l.Entries {
		got = append(got, e.Path+" "+e.Kind)
	}
	if strings.Join(got, ",") != "/workspace/bin file,/workspace/ctl file,/workspace/hello.txt file" {
		t.Errorf("list %s", got)
	}
	if e := l.Entries[0]; e.Size != 6 || e.Mode != 0o100755 || e.Modified.IsZero() {
		t.Errorf("entry %+v", e)
	}
	if e := l.Entries[2]; e.Mode != 0o100600 {
		t.Errorf("entry %+v: want the mode written", e)
	}

	for _, c := range []struct {
		method string
		params map[string]any
		code   int
		want   string
	}{
		{"sandbox.fs.read", map[string]any{}, -32602, `"path" is required`},
		{"sandbox.fs.read", map[string]any{"path": "/workspace/nope"}, -32003, "no such file"},
		{"sandbox.fs.read", map[string]any{"path": "/workspace"}, -32001, "is a directory"},
		{"sandbox.fs.read", map[string]any{"path": "bin", "encoding": "utf-8"}, -32602, "not UTF-8"},
		{"sandbox.fs.read", map[string]any{"path": "bin", "encoding": "latin1"}, -32602, `"encoding"`},
		{"sandbox.fs.read", map[string]any{"path": "bin", "offset": -1}, -32602, `"offset"`},
		{"sandbox.fs.read", map[string]any{"path": "bin", "length": -1}, -32602, `"length"`},
		{"sandbox.fs.write", map[string]any{"path": "x"}, -32602, `"content" is required`},
		{"sandbox.fs.write", map[string]any{"path": "x", "content": "!!", "encoding": "base64"}, -32602, "not base64"},
		{"sandbox.fs.write", map[string]any{"path": "x", "content": "", "mode": "9"}, -32602, `"mode"`},
		{"sandbox.fs.write", map[string]any{"path": "x", "content": "", "mode": 0o10000}, -32602, `"mode"`},
		{"sandbox.fs.write", map[string]any{"path": "/usr/x", "content": ""}, -32004, "permission denied"},
		{"sandbox.fs.write", map[string]any{"path": "/nodir/x", "content": ""}, -32003, "no such file"},
		{"sandbox.fs.list", map[string]any{"path": "/workspace/bin"}, -32001, "not a directory"},
		{"sandbox.fs.list", map[string]any{"path": "a\x00b"}, -32602, "invalid argument"},
	} {
		_, rerr := call(c.method, c.params)
		if rerr == nil || rerr.Code != c.code || !strings.Contains(rerr.Message, c.want) {
			t.Errorf("%s %v: %+v, want %d containing %q", c.method, c.params, rerr, c.code, c.want)
		}
	}
}

func TestFileReadIsCapped(t *testing.T) {
	eng, call := fsServer(t)
	// Valid text just past the cap (more than a request may carry).
	big := strings.Repeat("é", rpc.MaxFileRead/2) + "tail"
	f, err := eng.Open(context.Background(), sandboxtest.ID(t, "ns", "box"), "big", sandbox.OpenOptions{Write: true, Create: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteFrom(context.Background(), 0, strings.NewReader(big)); err != nil {
		t.Fatal(err)
	}
	res, rerr := call("sandbox.fs.read", map[string]any{"path": "big"})
	if rerr != nil {
		t.Fatal(rerr)
	}
	var r rpc.FileContent
	json.Unmarshal(res, &r)
	if !r.Truncated || r.Length != rpc.MaxFileRead || r.Encoding != "utf-8" || !utf8.ValidString(r.Content) || len(r.Content) != rpc.MaxFileRead {
		t.Errorf("read of %d bytes: truncated %v, length %d, %s", len(big), r.Truncated, r.Length, r.Encoding)
	}
	res, _ = call("sandbox.fs.read", map[string]any{"path": "big", "offset": r.Length})
	json.Unmarshal(res, &r)
	if r.Truncated || r.Content != "tail" {
		t.Errorf("the rest: %+v", r)
	}
}
