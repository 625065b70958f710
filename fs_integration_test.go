package main_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type fileContent struct {
	Path      string `json:"path"`
	Content   string `json:"content"`
	Encoding  string `json:"encoding"`
	Length    int    `json:"length"`
	Truncated bool   `json:"truncated"`
}

type fileEntry struct {
	Path     string    `json:"path"`
	Kind     string    `json:"kind"`
	Size     int64     `json:"size"`
	Mode     uint32    `json:"mode"`
	Modified time.Time `json:"modified"`
}

func (b *sb) read(path string, extra map[string]any) fileContent {
	b.srv.t.Helper()
	p := b.params(map[string]any{"path": path})
	for k, v := range extra {
		p[k] = v
	}
	var r fileContent
	b.srv.mustCall(b.key, "sandbox.fs.read", p, &r)
	return r
}

func (b *sb) write(path, content string, extra map[string]any) int64 {
	b.srv.t.Helper()
	p := b.params(map[string]any{"path": path, "content": content})
	for k, v := range extra {
		p[k] = v
	}
	var r struct {
		Path    string `json:"path"`
		Written int64  `json:"written"`
	}
	b.srv.mustCall(b.key, "sandbox.fs.write", p, &r)
	if r.Path != path {
		b.srv.t.Fatalf("write result %+v", r)
	}
	return r.Written
}

func (b *sb) list(path string) []fileEntry {
	b.srv.t.Helper()
	var r struct {
		Entries []fileEntry `json:"entries"`
	}
	b.srv.mustCall(b.key, "sandbox.fs.list", b.params(map[string]any{"path": path}), &r)
	return r.Entries
}

// Files go in and out of a real sandbox through sandbox.fs.*, resolved in
// the sandbox's own root.
func TestSandboxFiles(t *testing.T) {
	t.Parallel()
	home := newHome(t)
	srv := startServer(t, home)
	key := keygen(t, home)
	box := srv.sandbox(key, "default", "files", map[string]any{"image": "microsandbox/python"})

	// Text in, run, read back.
	code := "import sys\nprint('hello from', sys.argv[1])\n"
	if n := box.write("/workspace/hello.py", code, map[string]any{"mode": "700"}); n != int64(len(code)) {
		t.Fatalf("wrote %d bytes", n)
	}
	if c := box.run("python3", "hello.py", "msb"); text(c.Output, "stdout") != "hello from msb\n" {
		t.Fatalf("running the file written: %+v", c)
	}
	if c := box.sh("stat -c %a /workspace/hello.py"); text(c.Output, "stdout") != "700\n" {
		t.Fatalf("mode: %+v", c)
	}
	if r := box.read("hello.py", nil); r.Content != code || r.Encoding != "utf-8" || r.Length != len(code) || r.Truncated {
		t.Fatalf("read back: %+v", r)
	}

	// Bytes in and out as base64, untouched.
	var bin bytes.Buffer
	for i := range 1000 {
		bin.WriteByte(byte(i))
	}
	box.write("/tmp/bin", base64.StdEncoding.EncodeToString(bin.Bytes()), map[string]any{"encoding": "base64"})
	if c := box.sh("sha256sum < /tmp/bin | cut -c1-16; wc -c < /tmp/bin"); !strings.HasSuffix(text(c.Output, "stdout"), "\n1000\n") {
		t.Fatalf("binary file in the sandbox: %+v", c)
	}
	if r := box.read("/tmp/bin", map[string]any{"offset": 10, "length": 20}); r.Encoding != "base64" || r.Length != 20 || r.Content != base64.StdEncoding.EncodeToString(bin.Bytes()[10:30]) {
		t.Fatalf("binary read: %+v", r)
	}

	box.sh("mkdir -p /workspace/sub && ln -s hello.py /workspace/link")
	entries := box.list("/workspace")
	var got []string
	for _, e := range entries {
		got = append(got, e.Path+":"+e.Kind)
	}
	if strings.Join(got, " ") != "/workspace/hello.py:file /workspace/link:symlink /workspace/sub:dir" {
		t.Fatalf("list: %s", got)
	}
	if e := entries[0]; e.Size != int64(len(code)) || e.Mode != 0o100700 || time.Since(e.Modified) > time.Hour {
		t.Fatalf("entry %+v", e)
	}

	// A symlink to an absolute path reads the sandbox's file; nothing
	// reaches the host's.
	box.sh("ln -s /etc/hostname /tmp/l")
	if r := box.read("/tmp/l", nil); r.Content != "files\n" {
		t.Fatalf("/tmp/l -> /etc/hostname read %+v, want the sandbox's hostname", r)
	}
	canary := filepath.Join(home, "canary-fs")
	if err := os.WriteFile(canary, []byte("host secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	box.sh("ln -s " + canary + " /tmp/h")
	for _, p := range []string{canary, "/tmp/h", "/../../.." + canary} {
		srv.wantError(key, "sandbox.fs.read", box.params(map[string]any{"path": p}), 200, -32003, "no such file")
	}
	srv.wantError(key, "sandbox.fs.list", box.params(map[string]any{"path": home}), 200, -32003, "no such file")

	// What the sandbox refuses, by class.
	srv.wantError(key, "sandbox.fs.read", box.params(map[string]any{"path": "/workspace"}), 200, -32001, "is a directory")
	srv.wantError(key, "sandbox.fs.write", box.params(map[string]any{"path": "/usr/evil", "content": "x"}), 403, -32004, "read-only file system")
	srv.wantError(key, "sandbox.fs.write", box.params(map[string]any{"path": "/nodir/x", "content": "x"}), 200, -32003, "no such file")
	srv.wantError(key, "sandbox.fs.list", box.params(map[string]any{"path": "/workspace/hello.py"}), 200, -32001, "not a directory")
	srv.wantError(key, "sandbox.fs.read", box.params(map[string]any{"path": "/tmp/bin", "encoding": "utf-8"}), 200, -32602, "not UTF-8")

	// No path a client can send is an internal error.
	for _, method := range []string{"sandbox.fs.read", "sandbox.fs.write", "sandbox.fs.list"} {
		for _, v := range hostile {
			_, r := srv.call(key, method, box.params(map[string]any{"path": v, "content": "x"}))
			if r.Error == nil && method != "sandbox.fs.write" {
				continue
			}
			if r.Error != nil && r.Error.Code == -32603 {
				t.Errorf("%s with path %.40q: internal error %s", method, v, r.Error.Message)
			}
		}
	}

	// A file larger than a read's cap comes in parts.
	box.sh("head -c 20000000 /dev/zero | tr '\\0' a > /workspace/big")
	r := box.read("/workspace/big", nil)
	if !r.Truncated || r.Length != 16<<20 || len(r.Content) != 16<<20 || r.Encoding != "utf-8" {
		t.Fatalf("big read: truncated %v, length %d, %s", r.Truncated, r.Length, r.Encoding)
	}
	if r := box.read("/workspace/big", map[string]any{"offset": r.Length}); r.Truncated || r.Length != 20000000-16<<20 {
		t.Fatalf("the rest: truncated %v, length %d", r.Truncated, r.Length)
	}

	// The methods need sandbox:exec, and a write is audited.
	readOnly := keygen(t, home, "--scope", "sandbox:read")
	srv.wantError(readOnly, "sandbox.fs.read", box.params(map[string]any{"path": "hello.py"}), 403, -32004, "sandbox:exec")
	var audit struct {
		Events []struct {
			Method  string `json:"method"`
			Sandbox string `json:"sandbox"`
		} `json:"events"`
	}
	srv.mustCall(key, "audit.list", map[string]any{"limit": 100}, &audit)
	writes := 0
	for _, e := range audit.Events {
		if e.Method == "sandbox.fs.write" && e.Sandbox == "files" {
			writes++
		}
	}
	if writes < 2 {
		data, _ := json.Marshal(audit)
		t.Fatalf("fs.write not audited: %s", data)
	}

	// A stopped sandbox has no files to reach; an unknown one is not found.
	box.stop()
	srv.wantError(key, "sandbox.fs.read", box.params(map[string]any{"path": "hello.py"}), 200, -32001, "not running")
	srv.wantError(key, "sandbox.fs.list", map[string]any{"namespace": "default", "sandbox": "nosuch", "path": "/"}, 200, -32003, "nosuch")
}
