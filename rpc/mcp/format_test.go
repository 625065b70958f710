package mcp

import (
	"encoding/json"
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
	} {
		if got := c.format(json.RawMessage(c.args), json.RawMessage(c.result)); got != c.want {
			t.Errorf("%s: got %q, want %q", c.name, got, c.want)
		}
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
