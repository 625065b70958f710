package mcp

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

func TestFormat(t *testing.T) {
	for _, c := range []struct {
		name   string
		format func(args, result json.RawMessage) string
		args   string
		result string
		want   string
	}{
		{"code no output", formatCode, `{}`, `{"status":"success","language":"python","output":[]}`, "status: success\n(no output)\n"},
		{"code timeout", formatCode, `{}`, `{"status":"timeout","output":[{"stream":"stderr","text":"interrupted"}]}`,
			"status: timeout (the code was interrupted when the timeout passed)\nstderr:\ninterrupted\n"},
		{"command not found", formatCommand, `{}`, `{"exit_code":127,"output":[{"stream":"stderr","text":"nope: not found"}]}`,
			"exit code: 127 (command not found)\nstderr:\nnope: not found\n"},
		{"command timeout", formatCommand, `{}`, `{"exit_code":124,"output":[]}`, "exit code: 124 (killed: the timeout passed)\n(no output)\n"},
		{"command success", formatCommand, `{}`, `{"exit_code":0,"output":[{"stream":"stdout","text":"a"},{"stream":"stderr","text":"b"},{"stream":"stdout","text":"c"}]}`,
			"exit code: 0 (success)\nstdout:\na\nc\nstderr:\nb\n"},
		{"metrics none", formatMetrics, `{"namespace":"team"}`, `{"sandboxes":[]}`, `No sandboxes in namespace "team".`},
		{"metrics one missing", formatMetrics, `{"namespace":"team","sandbox":"x"}`, `{"sandboxes":[]}`, `No sandbox "x" in namespace "team".`},
		{"metrics stopped", formatMetrics, `{"namespace":"*"}`, `{"sandboxes":[{"namespace":"a","name":"b","running":false,"cpu_usage":null,"memory_usage":null,"disk_usage":null}]}`,
			"1 sandbox, 0 running:\n- b (namespace a): stopped\n"},
		{"unknown shape", formatCode, `{}`, `{"something":"else"}`, `{"something":"else"}`},
		{"message", formatMessage, `{}`, `"Sandbox x stopped successfully"`, "Sandbox x stopped successfully"},
		{"read text", formatRead, `{}`, `{"path":"/w/a.py","content":"print(1)","encoding":"utf-8","length":8,"truncated":false}`,
			"/w/a.py (8 bytes):\nprint(1)\n"},
		{"read truncated", formatRead, `{"offset":10}`, `{"path":"a","content":"xy\n","encoding":"utf-8","length":3,"truncated":true}`,
			"a (3 bytes from offset 10):\nxy\n[the file goes on: read the rest with offset 13]\n"},
		{"read binary", formatRead, `{}`, `{"path":"b","content":"AAE=","encoding":"base64","length":2,"truncated":false}`,
			"b: 2 bytes of binary content, as base64:\nAAE=\n"},
		{"read empty", formatRead, `{}`, `{"path":"e","content":"","encoding":"utf-8","length":0,"truncated":false}`, "e is empty.\n"},
		{"read past the end", formatRead, `{"offset":5}`, `{"path":"e","content":"","encoding":"utf-8","length":0,"truncated":false}`,
			"e: no bytes at offset 5 (the file is shorter).\n"},
		{"write", formatWrite, `{}`, `{"path":"/w/a.py","written":8}`, "Wrote 8 bytes to /w/a.py."},
		{"list", formatList, `{"path":"/w"}`, `{"entries":[{"path":"/w/d","kind":"dir","size":4096,"mode":16877,"modified":"2030-01-01T00:00:00Z"},{"path":"/w/a.py","kind":"file","size":8,"mode":33188,"modified":"2030-01-01T00:00:00Z"}]}`,
			"2 entries in /w (kind, permissions, size in bytes, path):\ndir     0755       4096  /w/d\nfile    0644          8  /w/a.py\n"},
		{"list empty", formatList, `{"path":"/w"}`, `{"entries":[]}`, "/w is empty."},
	} {
		if got := c.format(json.RawMessage(c.args), json.RawMessage(c.result)); got != c.want {
			t.Errorf("%s: got %q, want %q", c.name, got, c.want)
		}
	}
}

func TestFormatReadCutsLongText(t *testing.T) {
	line := strings.Repeat("x", 99) + "\n"
	content := strings.Repeat(line, 3000)
	res, _ := json.Marshal(map[string]any{"path": "big", "content": content, "encoding": "utf-8", "length": len(content)})
	got := formatRead(json.RawMessage(`{"offset":100}`), res)
	shown := maxStreamText / 100 * 100
	if len(got) > maxStreamText+200 || !strings.Contains(got, fmt.Sprintf("read them with offset %d", 100+shown)) {
		t.Errorf("long read: %d bytes ending %q", len(got), got[len(got)-100:])
	}
}

func TestClip(t *testing.T) {
	if s := "short\n"; clip(s) != s {
		t.Errorf("clip changed a short text")
	}
	line := strings.Repeat("x", 99) + "\n"
	long := "first\n" + strings.Repeat(line, 5000) + "last\n"
	got := clip(long)
	if len(got) > maxStreamText+200 || !strings.HasPrefix(got, "first\n") || !strings.HasSuffix(got, "last\n") || !strings.Contains(got, "bytes left out") {
		t.Errorf("clip of %d bytes gave %d bytes: %q...%q", len(long), len(got), got[:20], got[len(got)-20:])
	}
	for _, l := range strings.Split(strings.TrimSuffix(got, "\n"), "\n") {
		if l != line[:99] && l != "first" && l != "last" && !strings.Contains(l, "bytes left out") {
			t.Fatalf("clip split a line: %q", l)
		}
	}
}
