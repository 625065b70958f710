package v1_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/msb-dev/msb/auth/audit"
	"github.com/msb-dev/msb/rpc/v1/agent"
	"github.com/msb-dev/msb/sandbox"
)

func ptr[T any](v T) *T { return &v }

// Exec over the agent socket: frames and flags as the SDK needs them,
// stdin with EOF, signals, spawn failures; the request maps onto the
// domain's ExecSpec; each exec is audited, without its arguments.
func TestAgentExec(t *testing.T) {
	e := newEnv(t)
	sb := e.create("box")
	a := e.dial(sb.ID, e.key)

	a.send(1, agent.TypeExecRequest, agent.ExecRequest{Cmd: "echo", Args: []string{"hi", "$HOME"}, Env: []string{"A=1"},
		Cwd: ptr("/tmp"), User: ptr("nobody"), Rlimits: []agent.Rlimit{{Resource: "nofile", Soft: 10, Hard: 20}}})
	r := a.execResult(1)
	if !r.started || string(r.stdout) != "hi $HOME\n" || r.last.Type != agent.TypeExecExited || r.payload["code"] != uint64(0) {
		t.Fatalf("echo: %+v %q", r.last, r.stdout)
	}
	spec := e.sess.specs[0]
	if spec.Command != "echo" || spec.Workdir != "/tmp" || spec.User != "nobody" || spec.Env[0] != "A=1" || spec.TTY ||
		len(spec.Rlimits) != 1 || spec.Rlimits[0] != (sandbox.Rlimit{Resource: "nofile", Soft: 10, Hard: 20}) {
		t.Fatalf("spec %+v", spec)
	}
	a.exec(2, "err", "oops")
	if r := a.execResult(2); string(r.stderr) != "oops\n" || len(r.stdout) != 0 {
		t.Fatalf("stderr: %+v", r)
	}
	// cat: stdin echoed before EOF, then exit.
	a.exec(3, "cat")
	if f := a.frame(); f.Type != agent.TypeExecStarted {
		t.Fatalf("cat: %+v", f)
	}
	a.sendRaw(agent.AppendDataFrame(nil, 3, 0, agent.TypeExecStdin, []byte("abc\n")))
	if f := a.frame(); f.Type != agent.TypeExecStdout {
		t.Fatalf("cat echo: %+v", f)
	}
	a.sendRaw(agent.AppendDataFrame(nil, 3, 0, agent.TypeExecStdin, nil))
	if r := a.execResult(3); r.payload["code"] != uint64(0) {
		t.Fatalf("cat after EOF: %+v", r)
	}
	// A signal: death by signal is -1.
	a.exec(4, "sleep")
	a.frame()
	a.send(4, agent.TypeExecSignal, agent.ExecSignal{Signal: 15})
	if r := a.execResult(4); r.payload["code"] != int64(-1) {
		t.Fatalf("signal: %+v", r.payload)
	}
	// A process that cannot start.
	a.exec(5, "nonexistent")
	r = a.execResult(5)
	if r.started || r.last.Type != agent.TypeExecFailed || r.payload["kind"] != "not_found" || r.payload["errno_name"] != "ENOENT" ||
		!strings.Contains(r.payload["message"].(string), "not found") {
		t.Fatalf("failed: %+v %+v", r.last, r.payload)
	}
	a.exec(6, "")
	if r := a.execResult(6); r.payload["kind"] != "bad_args" {
		t.Fatalf("no command: %+v", r.payload)
	}
	// TCP forwarding is refused with its own terminal message.
	a.send(7, agent.TypeTCPConnect, map[string]any{"host": "127.0.0.1", "port": 22})
	if f := a.frame(); f.Type != agent.TypeTCPFailed || f.Flags != agent.FlagTerminal {
		t.Fatalf("tcp: %+v", f)
	}
	// Large output arrives whole, in frames under the limit.
	a.exec(8, "big", "5000000")
	if r := a.execResult(8); len(r.stdout) != 5000000 {
		t.Fatalf("big: %d bytes", len(r.stdout))
	}

	if ev := e.audit.Find("v1: GET /v1/sandboxes/{id}/agent"); len(ev) != 1 || ev[0].Outcome != audit.OK || ev[0].Sandbox != "box" {
		t.Fatalf("upgrade audited as %+v", ev)
	}
	ev := e.audit.Find("v1: agent exec")
	if len(ev) != 7 {
		t.Fatalf("%d exec events, want 7 (one a request): %+v", len(ev), ev)
	}
	for _, x := range ev {
		if x.Sandbox != "box" || x.Namespace != "team" || strings.Contains(x.Detail, "echo") {
			t.Fatalf("exec event %+v", x)
		}
	}
}

// Files over the agent socket: the SDK's write (open, Write with length,
// chunks, EOF, close), read (chunks of at most 3 MiB), list, stat and the
// rest; errors are fs.response ok:false; mutations are audited.
func TestAgentFiles(t *testing.T) {
	e := newEnv(t)
	sb := e.create("box")
	a := e.dial(sb.ID, e.key)
	data := bytes.Repeat([]byte("0123456789abcdef"), (7<<20+5)/16+1)[:7<<20+5]

	a.fs(1, "OpenFile", agent.OpenFile{Path: "/tmp/big.bin", Options: agent.OpenOptions{Write: true, Create: true, Truncate: true}})
	m, _ := a.fsResponse(1)
	h, ok := m["data"].(map[any]any)["Handle"].(uint64)
	if m["ok"] != true || !ok {
		t.Fatalf("open: %+v", m)
	}
	a.fs(2, "Write", agent.Write{Handle: h, Len: ptr(uint64(len(data)))})
	for rest := data; len(rest) > 0; {
		n := min(len(rest), agent.ChunkSize)
		a.sendRaw(agent.AppendDataFrame(nil, 2, 0, agent.TypeFsData, rest[:n]))
		rest = rest[n:]
	}
	a.sendRaw(agent.AppendDataFrame(nil, 2, 0, agent.TypeFsData, nil))
	if m, _ := a.fsResponse(2); m["ok"] != true {
		t.Fatalf("write: %+v", m)
	}
	a.fs(3, "CloseHandle", agent.CloseHandle{Handle: h})
	if m, _ := a.fsResponse(3); m["ok"] != true || e.sess.handles.Load() != 0 {
		t.Fatalf("close: %+v, %d open", m, e.sess.handles.Load())
	}
	if !bytes.Equal(e.sess.files["/tmp/big.bin"], data) {
		t.Fatalf("file of %d bytes written", len(e.sess.files["/tmp/big.bin"]))
	}

	// Read it back in one stream of chunks.
	b := e.dial(sb.ID, e.key)
	b.fs(1, "OpenFile", agent.OpenFile{Path: "/tmp/big.bin", Options: agent.OpenOptions{Read: true}})
	m, _ = b.fsResponse(1)
	h = m["data"].(map[any]any)["Handle"].(uint64)
	b.fs(2, "Read", agent.Read{Handle: h})
	var got []byte
	for {
		f := b.frame()
		if f.Type == agent.TypeFsResponse {
			break
		}
		d, _ := agent.DecodeData(f.Payload)
		if f.Type != agent.TypeFsData || len(d) == 0 || len(d) > agent.ChunkSize {
			t.Fatalf("read frame %s of %d bytes", f.Type, len(d))
		}
		got = append(got, d...)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes", len(got))
	}
	b.fs(3, "Read", agent.Read{Handle: h, Offset: 10, Len: ptr(uint64(6))})
	if _, d := b.fsResponse(3); string(d) != "abcdef" {
		t.Fatalf("ranged read %q", d)
	}

	// A Write whose length does not match; a handle that is not open.
	b.fs(4, "OpenFile", agent.OpenFile{Path: "/tmp/short", Options: agent.OpenOptions{Write: true, Create: true}})
	m, _ = b.fsResponse(4)
	h2 := m["data"].(map[any]any)["Handle"].(uint64)
	b.fs(5, "Write", agent.Write{Handle: h2, Len: ptr(uint64(10))})
	b.sendRaw(agent.AppendDataFrame(nil, 5, 0, agent.TypeFsData, []byte("abc")))
	b.sendRaw(agent.AppendDataFrame(nil, 5, 0, agent.TypeFsData, nil))
	if m, _ := b.fsResponse(5); m["ok"] != false || !strings.Contains(m["error"].(string), "length mismatch") {
		t.Fatalf("short write: %+v", m)
	}
	b.fs(6, "Read", agent.Read{Handle: 999})
	if m, _ := b.fsResponse(6); m["ok"] != false || !strings.Contains(m["error"].(string), "handle 999") {
		t.Fatalf("read of no handle: %+v", m)
	}

	// The other operations.
	step := func(id uint32, op string, args any) map[string]any {
		t.Helper()
		b.fs(id, op, args)
		m, _ := b.fsResponse(id)
		return m
	}
	if m := step(10, "Mkdir", agent.Mkdir{Path: "/tmp/d/e"}); m["ok"] != true {
		t.Fatalf("mkdir %+v", m)
	}
	if m := step(11, "Copy", agent.Copy{Src: "/tmp/big.bin", Dst: "/tmp/d/c.bin"}); m["ok"] != true {
		t.Fatalf("copy %+v", m)
	}
	if m := step(12, "Rename", agent.Copy{Src: "/tmp/d/c.bin", Dst: "/tmp/d/r.bin"}); m["ok"] != true {
		t.Fatalf("rename %+v", m)
	}
	m = step(13, "Stat", agent.Stat{Path: "/tmp/d/r.bin", FollowSymlink: true})
	st := m["data"].(map[any]any)["Stat"].(map[any]any)
	if st["kind"] != "file" || st["size"] != uint64(len(data)) || st["mode"] != uint64(0o100644) || st["mtime"] != uint64(1767225600) {
		t.Fatalf("stat %+v", st)
	}
	m = step(14, "List", agent.List{Path: "/tmp/d"})
	list := m["data"].(map[any]any)["List"].([]any)
	if len(list) != 2 || list[0].(map[any]any)["path"] != "/tmp/d/r.bin" || list[1].(map[any]any)["kind"] != "dir" {
		t.Fatalf("list %+v", list)
	}
	if m := step(15, "Remove", agent.Remove{Path: "/tmp/d/r.bin"}); m["ok"] != true {
		t.Fatalf("remove %+v", m)
	}
	if m := step(16, "RemoveDir", agent.RemoveDir{Path: "/tmp/d", Recursive: true}); m["ok"] != true {
		t.Fatalf("removedir %+v", m)
	}
	if m := step(17, "Stat", agent.Stat{Path: "/tmp/d", FollowSymlink: true}); m["ok"] != false || !strings.Contains(m["error"].(string), "no such") {
		t.Fatalf("stat of the removed: %+v", m)
	}
	if m := step(18, "Symlink", map[string]any{"target": "/etc", "link_path": "/tmp/l"}); m["ok"] != false || !strings.Contains(m["error"].(string), "not supported") {
		t.Fatalf("symlink: %+v", m)
	}
	if m := step(19, "Frobnicate", map[string]any{}); m["ok"] != false {
		t.Fatalf("unknown op: %+v", m)
	}

	// Mutations are audited, one event each; reads are not.
	for op, n := range map[string]int{"OpenFile": 2, "Write": 2, "Mkdir": 1, "Copy": 1, "Rename": 1, "Remove": 1, "RemoveDir": 1, "Stat": 0, "List": 0, "Read": 0} {
		if got := len(e.audit.Find("v1: agent fs." + op)); got != n {
			t.Errorf("%s: %d audit events, want %d", op, got, n)
		}
	}
}

// Hostile input on the socket: each gets a clear error (or a closed
// socket), and the socket, the sandbox and the server keep working.
func TestAgentHostileInput(t *testing.T) {
	e := newEnv(t)
	sb := e.create("box")
	a := e.dial(sb.ID, e.key)
	works := func(a *agentClient, id uint32) {
		t.Helper()
		a.exec(id, "echo", "still")
		if r := a.execResult(id); string(r.stdout) != "still\n" {
			t.Fatalf("after the bad frame: %+v", r)
		}
	}
	coreError := func(a *agentClient, id uint32, kind string) map[string]any {
		t.Helper()
		f := a.frame()
		var p map[string]any
		agent.Decode(f.Payload, &p)
		if f.Type != agent.TypeError || f.ID != id || f.Flags != agent.FlagTerminal || p["kind"] != kind {
			t.Fatalf("want core.error %s on %d, got %+v %+v", kind, id, f, p)
		}
		return p
	}
	frame := func(id uint32, flags byte, body []byte) []byte {
		b := binary.BigEndian.AppendUint32(nil, uint32(5+len(body)))
		b = binary.BigEndian.AppendUint32(b, id)
		return append(append(b, flags), body...)
	}
	// Malformed CBOR.
	a.sendRaw(frame(9, 2, []byte{0xff, 0x00, 0x13}))
	coreError(a, 9, agent.ErrMalformedMessage)
	works(a, 10)
	// An unknown message type.
	a.send(11, "core.frobnicate", map[string]any{})
	if p := coreError(a, 11, agent.ErrUnsupportedMessageType); p["offending_type"] != "core.frobnicate" {
		t.Fatalf("offending type: %+v", p)
	}
	// Ids outside the announced range.
	a.exec(0, "echo")
	coreError(a, 0, agent.ErrInvalidSession)
	a.exec(1<<31, "echo")
	coreError(a, 1<<31, agent.ErrInvalidSession)
	// A payload of the wrong shape.
	a.send(12, agent.TypeExecRequest, map[string]any{"cmd": 5})
	coreError(a, 12, agent.ErrInvalidPayload)
	a.send(13, agent.TypeFsRequest, map[string]any{"op": "nonsense"})
	if m, _ := a.fsResponse(13); m["ok"] != false {
		t.Fatalf("bad fs request: %+v", m)
	}
	// Follow-ups of no call are dropped; text messages are ignored.
	a.sendRaw(agent.AppendDataFrame(nil, 77, 0, agent.TypeExecStdin, []byte("x")))
	a.send(78, agent.TypeExecSignal, agent.ExecSignal{Signal: 9})
	a.ws.Write(context.Background(), websocket.MessageText, []byte("hello"))
	works(a, 14)
	// A frame split across messages, and two frames in one message.
	f1, _ := agent.AppendFrame(nil, 15, 2, agent.TypeExecRequest, agent.ExecRequest{Cmd: "echo", Args: []string{"split"}})
	a.sendRaw(f1[:7])
	a.sendRaw(f1[7:])
	if r := a.execResult(15); string(r.stdout) != "split\n" {
		t.Fatalf("split frame: %+v", r)
	}
	f2, _ := agent.AppendFrame(nil, 16, 2, agent.TypeExecRequest, agent.ExecRequest{Cmd: "echo", Args: []string{"a"}})
	f3, _ := agent.AppendFrame(nil, 17, 2, agent.TypeExecRequest, agent.ExecRequest{Cmd: "echo", Args: []string{"b"}})
	a.sendRaw(append(f2, f3...))
	seen := map[uint32]bool{}
	for len(seen) < 2 {
		if f := a.frame(); f.Type == agent.TypeExecExited {
			seen[f.ID] = true
		}
	}
	// A follow-up that does not belong to its call ends the call.
	a.exec(18, "stuck")
	a.frame()
	a.sendRaw(agent.AppendDataFrame(nil, 18, 0, agent.TypeFsData, []byte("x")))
	coreError(a, 18, agent.ErrInvalidSession)
	eventually(t, "the stuck process killed", func() bool { return e.sess.live.Load() == 0 })
	// A new request on an id in flight ends the old call.
	a.exec(19, "stuck")
	a.frame()
	a.exec(19, "echo")
	coreError(a, 19, agent.ErrInvalidSession)
	eventually(t, "the reused id's process killed", func() bool { return e.sess.live.Load() == 0 })
	works(a, 20)

	// A frame over the limit: core.error, then the socket closes.
	big := frame(21, 2, make([]byte, agent.MaxFrame))
	a.sendRaw(big[:9])
	coreError(a, 21, agent.ErrMalformedMessage)
	if !a.closed() {
		t.Fatal("the socket stayed open after an oversized frame")
	}
	// A WebSocket message over the limit closes the socket too.
	c := e.dial(sb.ID, e.key)
	c.ws.Write(context.Background(), websocket.MessageBinary, make([]byte, agent.MaxFrame+100))
	if !c.closed() {
		t.Fatal("the socket stayed open after an oversized message")
	}
	// The sandbox, and new sockets, work.
	works(e.dial(sb.ID, e.key), 1)
	if r, _ := e.svc.Get(t.Context(), mustID(t, "team", "box")); r.State != sandbox.StateRunning {
		t.Fatal("the sandbox stopped")
	}
}

// A client that vanishes mid-call leaves nothing behind: its processes
// are killed, its files closed, its goroutines gone.
func TestAgentClientVanishes(t *testing.T) {
	e := newEnv(t)
	sb := e.create("box")
	base := runtime.NumGoroutine()
	for range 3 {
		a := e.dial(sb.ID, e.key)
		a.exec(1, "stuck")
		a.frame()
		a.exec(2, "cat")
		a.frame()
		a.sendRaw(agent.AppendDataFrame(nil, 2, 0, agent.TypeExecStdin, []byte("half")))
		a.frame() // its echo
		a.fs(3, "OpenFile", agent.OpenFile{Path: "/tmp/f", Options: agent.OpenOptions{Write: true, Create: true}})
		m, _ := a.fsResponse(3)
		h := m["data"].(map[any]any)["Handle"].(uint64)
		a.fs(4, "OpenFile", agent.OpenFile{Path: "/tmp/f", Options: agent.OpenOptions{Read: true}})
		a.fsResponse(4)
		a.fs(5, "Write", agent.Write{Handle: h})
		a.sendRaw(agent.AppendDataFrame(nil, 5, 0, agent.TypeFsData, []byte("partial")))
		a.exec(6, "big", "100000000") // output the client never reads
		eventually(t, "three processes and two files", func() bool { return e.sess.live.Load() == 3 && e.sess.handles.Load() == 2 })
		a.ws.CloseNow() // TCP gone, no close frame
		eventually(t, "processes killed and files closed", func() bool {
			return e.sess.live.Load() == 0 && e.sess.handles.Load() == 0
		})
	}
	if k := e.sess.killed.Load(); k != 9 {
		t.Fatalf("%d processes killed, want 9", k)
	}
	eventually(t, "goroutines gone", func() bool { return runtime.NumGoroutine() <= base+2 })
	if r, _ := e.svc.Get(t.Context(), mustID(t, "team", "box")); r.State != sandbox.StateRunning {
		t.Fatal("the sandbox stopped")
	}
}

// A key revoked while its socket is open loses it: its next call is
// refused, and the socket closes with what it runs (a shell would be
// killed with it), as every request of the other front-ends is refused.
func TestAgentSocketEndsWithItsKey(t *testing.T) {
	e := newEnv(t)
	sb := e.create("box")
	a := e.dial(sb.ID, e.revocable)
	a.exec(1, "echo", "before")
	if r := a.execResult(1); string(r.stdout) != "before\n" {
		t.Fatalf("before the revocation: %+v", r)
	}
	a.exec(2, "stuck")
	a.frame()
	eventually(t, "the process running", func() bool { return e.sess.live.Load() == 1 })
	if _, err := e.reg.Revoke(t.Context(), e.revocableID); err != nil {
		t.Fatal(err)
	}
	a.exec(3, "echo", "after")
	for {
		f := a.frame()
		if f.ID != 3 {
			continue
		}
		if f.Type == agent.TypeExecStarted || f.Type == agent.TypeExecStdout {
			t.Fatalf("a revoked key ran a command: %s", f.Type)
		}
		if f.Type == agent.TypeExecFailed {
			break
		}
	}
	if !a.closed() {
		t.Fatal("the socket of a revoked key stays open")
	}
	eventually(t, "its process killed", func() bool { return e.sess.live.Load() == 0 })
}

// The upgrade is refused with a plain HTTP status before any byte of the
// protocol: no key, a stopped sandbox, not an upgrade, another origin.
func TestAgentUpgradeRefusals(t *testing.T) {
	e := newEnv(t)
	sb := e.create("box")
	if _, resp, err := e.tryDial(sb.ID, ""); err == nil || resp == nil || resp.StatusCode != 401 {
		t.Fatalf("no key: %v %v", err, resp)
	}
	if _, resp, err := e.tryDial(sb.ID, e.key, "Origin", "https://evil.example"); err == nil || resp == nil || resp.StatusCode != 403 {
		t.Fatalf("other origin: %v %v", err, resp)
	}
	e.want(e.do("GET", "/v1/sandboxes/"+sb.ID+"/agent", e.key, nil), 426, "invalid_request")
	e.do("POST", "/v1/sandboxes/"+sb.ID+"/stop", e.key, "{}")
	if _, resp, err := e.tryDial(sb.ID, e.key); err == nil || resp == nil || resp.StatusCode != 409 {
		t.Fatalf("stopped sandbox: %v %v", err, resp)
	}
	if got := len(e.audit.Find("v1: GET /v1/sandboxes/{id}/agent")); got != 4 {
		t.Fatalf("%d upgrade events, want 4 (each refusal)", got)
	}
}

// A process's output goes to the sandbox's log too, by source.
func TestAgentExecGoesToTheLog(t *testing.T) {
	e := newEnv(t)
	sb := e.create("box")
	a := e.dial(sb.ID, e.key)
	a.exec(1, "echo", "to the log")
	a.execResult(1)
	a.exec(2, "err", "an error")
	a.execResult(2)
	r, err := e.logs.Open("team", "box")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var got []string
	deadline := time.Now().Add(5 * time.Second)
	for len(got) < 2 && time.Now().Before(deadline) {
		en, _, ok, _ := r.Next()
		if !ok {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		got = append(got, en.Source+":"+en.Text)
	}
	if strings.Join(got, "|") != "stdout:to the log|stderr:an error" {
		t.Fatalf("log %q", got)
	}
}
