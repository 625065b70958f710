package mcp

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/msb-dev/msb/rpc"
	"github.com/msb-dev/msb/sandbox"
)

// The tool results are text for an assistant to read. Each formatter reads
// the JSON-RPC result as docs/api.md defines it; a result it cannot read is
// shown as its JSON, so nothing is ever lost.

// maxStreamText bounds the stdout or stderr text of one result: an
// assistant's context is far smaller than the 16 MiB a call may return.
// Past it the middle is cut, keeping the start and the end (where errors
// and tracebacks are).
const maxStreamText = 128 << 10

func formatMessage(_, result json.RawMessage) string {
	var msg string
	if json.Unmarshal(result, &msg) != nil {
		return string(result)
	}
	return msg
}

func formatStart(args, result json.RawMessage) string {
	var a struct {
		Sandbox   string `json:"sandbox"`
		Namespace string `json:"namespace"`
	}
	json.Unmarshal(args, &a)
	return fmt.Sprintf("%s (namespace %q).\nIt keeps running until you call sandbox_stop with sandbox %q and namespace %q: do so when you are done.",
		strings.TrimSuffix(formatMessage(args, result), "."), a.Namespace, a.Sandbox, a.Namespace)
}

func formatCode(_, result json.RawMessage) string {
	var r struct {
		Status   string     `json:"status"`
		Language string     `json:"language"`
		Output   []rpc.Line `json:"output"`
	}
	if json.Unmarshal(result, &r) != nil || r.Status == "" {
		return string(result)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "status: %s", r.Status)
	switch r.Status {
	case "error":
		b.WriteString(" (the code raised an error; see stderr)")
	case "timeout":
		b.WriteString(" (the code was interrupted when the timeout passed)")
	}
	b.WriteByte('\n')
	writeOutput(&b, r.Output)
	return b.String()
}

func formatCommand(_, result json.RawMessage) string {
	var r struct {
		ExitCode *int       `json:"exit_code"`
		Output   []rpc.Line `json:"output"`
	}
	if json.Unmarshal(result, &r) != nil || r.ExitCode == nil {
		return string(result)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "exit code: %d", *r.ExitCode)
	switch *r.ExitCode {
	case 0:
		b.WriteString(" (success)")
	case 124:
		b.WriteString(" (killed: the timeout passed)")
	case 127:
		b.WriteString(" (command not found)")
	}
	b.WriteByte('\n')
	writeOutput(&b, r.Output)
	return b.String()
}

// writeOutput writes stdout, then stderr, each under its name; a stream
// that wrote nothing is left out.
func writeOutput(b *strings.Builder, lines []rpc.Line) {
	var stdout, stderr strings.Builder
	for _, l := range lines {
		s := &stdout
		if l.Stream == string(sandbox.Stderr) {
			s = &stderr
		}
		s.WriteString(l.Text)
		s.WriteByte('\n')
	}
	if stdout.Len() == 0 && stderr.Len() == 0 {
		b.WriteString("(no output)\n")
		return
	}
	for _, s := range []struct {
		name string
		text string
	}{{"stdout", stdout.String()}, {"stderr", stderr.String()}} {
		if s.text != "" {
			fmt.Fprintf(b, "%s:\n%s", s.name, clip(s.text))
		}
	}
}

// clip shortens s to about maxStreamText bytes by cutting out its middle.
func clip(s string) string {
	if len(s) <= maxStreamText {
		return s
	}
	head, tail := s[:maxStreamText/2], s[len(s)-maxStreamText/2:]
	// Cut at line ends, so that no line (or character) is split.
	if i := strings.LastIndexByte(head, '\n'); i >= 0 {
		head = head[:i+1]
	}
	if i := strings.IndexByte(tail, '\n'); i >= 0 {
		tail = tail[i+1:]
	}
	return fmt.Sprintf("%s[... %d bytes left out: write large output to a file and read it in parts ...]\n%s",
		head, len(s)-len(head)-len(tail), tail)
}

func formatMetrics(args, result json.RawMessage) string {
	var r struct {
		Sandboxes []rpc.SandboxMetrics `json:"sandboxes"`
	}
	if json.Unmarshal(result, &r) != nil || r.Sandboxes == nil {
		return string(result)
	}
	if len(r.Sandboxes) == 0 {
		var a struct {
			Namespace string `json:"namespace"`
			Sandbox   string `json:"sandbox"`
		}
		json.Unmarshal(args, &a)
		switch {
		case a.Sandbox != "":
			return fmt.Sprintf("No sandbox %q in namespace %q.", a.Sandbox, a.Namespace)
		case a.Namespace == "*":
			return "No sandboxes."
		}
		return fmt.Sprintf("No sandboxes in namespace %q.", a.Namespace)
	}
	var b strings.Builder
	running := 0
	for _, s := range r.Sandboxes {
		if s.Running {
			running++
		}
	}
	noun := "sandboxes"
	if len(r.Sandboxes) == 1 {
		noun = "sandbox"
	}
	fmt.Fprintf(&b, "%d %s, %d running:\n", len(r.Sandboxes), noun, running)
	for _, s := range r.Sandboxes {
		fmt.Fprintf(&b, "- %s (namespace %s): ", s.Name, s.Namespace)
		if !s.Running {
			b.WriteString("stopped\n")
			continue
		}
		b.WriteString("running")
		if s.CPUUsage != nil {
			fmt.Fprintf(&b, ", CPU %.1f%%", *s.CPUUsage)
		}
		if s.MemoryUsage != nil {
			fmt.Fprintf(&b, ", memory %d MiB", *s.MemoryUsage)
		}
		if s.DiskUsage != nil {
			fmt.Fprintf(&b, ", disk %d bytes written", *s.DiskUsage)
		}
		if n := s.Network; n != nil {
			fmt.Fprintf(&b, ", network: %d connections (%d open), %d refused, %d bytes in, %d out", n.Connections, n.Active, n.Denied, n.BytesIn, n.BytesOut)
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// maxListed bounds the entries a listing shows.
const maxListed = 1000

func formatRead(args, result json.RawMessage) string {
	var r rpc.FileContent
	if json.Unmarshal(result, &r) != nil || r.Encoding == "" {
		return string(result)
	}
	var a struct {
		Offset int64 `json:"offset"`
	}
	json.Unmarshal(args, &a)
	where := ""
	if a.Offset > 0 {
		where = fmt.Sprintf(" from offset %d", a.Offset)
	}
	var b strings.Builder
	switch {
	case r.Length == 0 && a.Offset > 0:
		fmt.Fprintf(&b, "%s: no bytes at offset %d (the file is shorter).\n", r.Path, a.Offset)
	case r.Length == 0:
		fmt.Fprintf(&b, "%s is empty.\n", r.Path)
	case r.Encoding == "base64":
		fmt.Fprintf(&b, "%s: %d bytes%s of binary content, as base64:\n", r.Path, r.Length, where)
		if len(r.Content) > maxStreamText {
			fmt.Fprintf(&b, "%s\n[... cut: the rest of these %d bytes is not shown; read less at a time, with offset and length ...]\n", r.Content[:maxStreamText], r.Length)
			return b.String()
		}
		b.WriteString(r.Content)
		b.WriteByte('\n')
	default:
		fmt.Fprintf(&b, "%s (%d bytes%s):\n", r.Path, r.Length, where)
		text := r.Content
		if len(text) > maxStreamText {
			cut := maxStreamText
			if i := strings.LastIndexByte(text[:cut], '\n'); i > 0 {
				cut = i + 1
			}
			fmt.Fprintf(&b, "%s[... %d more bytes not shown: read them with offset %d ...]\n", text[:cut], len(text)-cut, a.Offset+int64(cut))
			return b.String()
		}
		b.WriteString(text)
		if !strings.HasSuffix(text, "\n") {
			b.WriteByte('\n')
		}
	}
	if r.Truncated {
		fmt.Fprintf(&b, "[the file goes on: read the rest with offset %d]\n", a.Offset+int64(r.Length))
	}
	return b.String()
}

func formatWrite(_, result json.RawMessage) string {
	var r rpc.WriteResult
	if json.Unmarshal(result, &r) != nil || r.Path == "" {
		return string(result)
	}
	return fmt.Sprintf("Wrote %d bytes to %s.", r.Written, r.Path)
}

func formatList(args, result json.RawMessage) string {
	var r struct {
		Entries []rpc.FileEntry `json:"entries"`
	}
	if json.Unmarshal(result, &r) != nil || r.Entries == nil {
		return string(result)
	}
	var a struct {
		Path string `json:"path"`
	}
	json.Unmarshal(args, &a)
	if len(r.Entries) == 0 {
		return fmt.Sprintf("%s is empty.", a.Path)
	}
	var b strings.Builder
	noun := "entries"
	if len(r.Entries) == 1 {
		noun = "entry"
	}
	fmt.Fprintf(&b, "%d %s in %s (kind, permissions, size in bytes, path):\n", len(r.Entries), noun, a.Path)
	for i, e := range r.Entries {
		if i == maxListed {
			fmt.Fprintf(&b, "[... %d more not shown: list a subdirectory, or use sandbox_run_command with ls or find ...]\n", len(r.Entries)-maxListed)
			break
		}
		fmt.Fprintf(&b, "%-7s %04o %10d  %s\n", e.Kind, e.Mode&0o7777, e.Size, e.Path)
	}
	return b.String()
}

func formatNetwork(_, result json.RawMessage) string {
	var r rpc.NetworkResult
	if json.Unmarshal(result, &r) != nil || r.Sandbox == "" || r.Network.Enabled == nil {
		return string(result)
	}
	when := "from its next start"
	if r.Running {
		when = "now"
	}
	if !*r.Network.Enabled {
		return fmt.Sprintf("Sandbox %s has no network %s.", r.Sandbox, when)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Sandbox %s has network %s.\n", r.Sandbox, when)
	if len(r.Network.Allow) == 0 {
		b.WriteString("It may reach nothing (strict, with no allow list).\n")
	} else {
		fmt.Fprintf(&b, "It may reach: %s\n", strings.Join(r.Network.Allow, ", "))
	}
	if len(r.Network.Deny) > 0 {
		fmt.Fprintf(&b, "Refused even so: %s\n", strings.Join(r.Network.Deny, ", "))
	}
	b.WriteString("Private, loopback and link-local addresses and the server's own are always refused.\n")
	return b.String()
}
