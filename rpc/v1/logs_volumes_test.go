package v1_test

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/msb-dev/msb/sandbox"
	"github.com/msb-dev/msb/sandbox/logfile"
)

// sseEvent is one event of a log stream.
type sseEvent struct {
	event, id, data string
}

// openLogs opens the log stream of sandbox id and returns its events as
// they come.
func (e *env) openLogs(id, key, lastID string) (*http.Response, chan sseEvent) {
	e.t.Helper()
	req, _ := http.NewRequest("GET", e.url+"/v1/sandboxes/"+id+"/logs?sources=stdout,stderr,output", nil)
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Accept", "text/event-stream")
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { resp.Body.Close() })
	ch := make(chan sseEvent, 100)
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(resp.Body)
		var ev sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if ev.event != "" {
					ch <- ev
				}
				ev = sseEvent{}
			case strings.HasPrefix(line, "event: "):
				ev.event = line[7:]
			case strings.HasPrefix(line, "id: "):
				ev.id = line[4:]
			case strings.HasPrefix(line, "data: "):
				ev.data = line[6:]
			}
		}
	}()
	return resp, ch
}

func next(t *testing.T, ch chan sseEvent) sseEvent {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("the stream ended")
		}
		return ev
	case <-time.After(5 * time.Second):
		t.Fatal("no event within 5s")
	}
	return sseEvent{}
}

// The log stream: headers at once, the retained entries of the sources
// asked for, live ones as they come, cursors that resume strictly after
// their entry, and event: end once the sandbox stopped.
func TestLogStream(t *testing.T) {
	e := newEnv(t)
	sb := e.create("box")
	// Headers come at once, before there is anything to send.
	resp, ch := e.openLogs(sb.ID, e.key, "")
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") || resp.Header.Get("X-Ratelimit-Limit") == "" {
		t.Fatalf("stream answer %d %v", resp.StatusCode, resp.Header)
	}
	w, err := e.logs.Append("team", "box")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	w.Write(logfile.System, "started")
	w.Write(logfile.Stdout, "one")
	w.Write(logfile.Stderr, "two")
	ev1, ev2 := next(t, ch), next(t, ch)
	var d1 struct{ Source, TS, Text string }
	json.Unmarshal([]byte(ev1.data), &d1)
	if ev1.event != "log" || d1.Source != "stdout" || d1.Text != "one" || !rfc3339.MatchString(d1.TS) {
		t.Fatalf("first event %+v (system entries are not asked for)", ev1)
	}
	if !strings.Contains(ev2.data, `"source":"stderr"`) {
		t.Fatalf("second event %+v", ev2)
	}
	raw, err := base64.StdEncoding.DecodeString(ev1.id)
	if err != nil || len(raw) != 17 || raw[0] != 1 || base64.StdEncoding.EncodeToString(raw) != ev1.id {
		t.Fatalf("cursor %q is not [1][gen][offset] in padded base64", ev1.id)
	}
	w.Write(logfile.Stdout, "three")
	if ev := next(t, ch); !strings.Contains(ev.data, "three") {
		t.Fatalf("live event %+v", ev)
	}
	// Resume after "one".
	_, ch2 := e.openLogs(sb.ID, e.key, ev1.id)
	if ev := next(t, ch2); !strings.Contains(ev.data, `"two"`) {
		t.Fatalf("resumed at %+v", ev)
	}
	// A stopped sandbox: the stream ends.
	e.do("POST", "/v1/sandboxes/"+sb.ID+"/stop", e.key, "{}")
	for {
		ev := next(t, ch)
		if ev.event == "end" {
			break
		}
	}
	// A bad cursor; another namespace.
	e.want(e.do("GET", "/v1/sandboxes/"+sb.ID+"/logs", e.key, nil, "Last-Event-ID", "nope"), 400, "invalid_request")
	e.want(e.do("GET", "/v1/sandboxes/"+sb.ID+"/logs?sources=bogus", e.key, nil), 400, "invalid_request")
	e.want(e.do("GET", "/v1/sandboxes/"+sb.ID+"/logs", e.other, nil), 404, "sandbox_not_found")
	// The history of a stopped sandbox, then the end.
	_, ch3 := e.openLogs(sb.ID, e.key, "")
	var texts []string
	for ev := next(t, ch3); ev.event != "end"; ev = next(t, ch3) {
		var d struct{ Text string }
		json.Unmarshal([]byte(ev.data), &d)
		texts = append(texts, d.Text)
	}
	if strings.Join(texts, ",") != "one,two,three" {
		t.Fatalf("history %q", texts)
	}
}

func b64(p string) string { return base64.RawURLEncoding.EncodeToString([]byte(p)) }

// Named volumes: create, list (a bare array, the default first), files
// over REST beneath the volume, delete; another namespace sees none.
func TestVolumes(t *testing.T) {
	e := newEnv(t)
	r := e.do("POST", "/v1/volumes", e.key, map[string]any{"labels": map[string]string{"k": "v"}, "name": "data"})
	e.want(r, 200, "")
	var v struct {
		ID, Kind, Status string
		Name             *string
		Labels           map[string]string
	}
	r.json(t, &v)
	if v.ID != "data" || v.Kind != "managed" || v.Status != "active" || v.Labels["k"] != "v" || v.Name == nil {
		t.Fatalf("created %s", r.body)
	}
	e.want(e.do("POST", "/v1/volumes", e.key, map[string]any{"labels": map[string]string{}, "name": "data"}), 409, "name_already_exists")
	e.want(e.do("POST", "/v1/volumes", e.key, map[string]any{"labels": map[string]string{}, "name": "big", "capacity_gib": 1}), 400, "invalid_request")
	e.want(e.do("POST", "/v1/volumes", e.key, map[string]any{"name": "../x"}), 400, "invalid_request")
	r = e.do("GET", "/v1/volumes", e.key, nil)
	e.want(r, 200, "")
	var list []map[string]any
	r.json(t, &list)
	if len(list) != 2 || list[0]["kind"] != "host" || list[0]["name"] != nil || list[1]["name"] != "data" {
		t.Fatalf("list %s", r.body)
	}
	var def map[string]any
	e.do("GET", "/v1/volumes/default", e.key, nil).json(t, &def)
	if def["kind"] != "host" || def["id"] != "_default" {
		t.Fatalf("default %+v", def)
	}
	var other []map[string]any
	e.do("GET", "/v1/volumes", e.other, nil).json(t, &other)
	if len(other) != 1 {
		t.Fatalf("another namespace lists %+v", other)
	}

	// Files.
	e.want(e.do("PUT", "/v1/volumes/data/files/content", e.key, "from-rest", hdrPath, b64("seed/hello.txt")), 200, "")
	r = e.do("GET", "/v1/volumes/data/files/content", e.key, nil, hdrPath, b64("seed/hello.txt"))
	if r.status != 200 || string(r.body) != "from-rest" {
		t.Fatalf("read %d %q", r.status, r.body)
	}
	e.want(e.do("POST", "/v1/volumes/data/files/mkdir", e.key, map[string]string{"path": "made/dir"}), 200, "")
	var entries struct{ Entries []map[string]any }
	e.do("GET", "/v1/volumes/data/files", e.key, nil, hdrPath, "").json(t, &entries)
	if len(entries.Entries) != 2 || entries.Entries[0]["kind"] != "directory" {
		t.Fatalf("list %+v", entries)
	}
	var stat struct{ Metadata map[string]any }
	e.do("GET", "/v1/volumes/data/files/stat", e.key, nil, hdrPath, b64("seed/hello.txt")).json(t, &stat)
	if stat.Metadata["kind"] != "file" || stat.Metadata["size"] != float64(9) || stat.Metadata["readonly"] != false {
		t.Fatalf("stat %+v", stat)
	}
	exists := func(p string) bool {
		var x struct{ Exists bool }
		r := e.do("GET", "/v1/volumes/data/files/exists", e.key, nil, hdrPath, b64(p))
		e.want(r, 200, "")
		r.json(t, &x)
		return x.Exists
	}
	if !exists("seed/hello.txt") || exists("seed/nope") {
		t.Fatal("exists")
	}
	e.want(e.do("POST", "/v1/volumes/data/files/copy", e.key, map[string]string{"from": "seed/hello.txt", "to": "seed/copy.txt"}), 200, "")
	e.want(e.do("POST", "/v1/volumes/data/files/rename", e.key, map[string]string{"from": "seed/copy.txt", "to": "seed/moved.txt"}), 200, "")
	if exists("seed/copy.txt") || !exists("seed/moved.txt") {
		t.Fatal("copy and rename")
	}
	e.want(e.do("DELETE", "/v1/volumes/data/files", e.key, nil, hdrPath, b64("seed/moved.txt"), "X-Msb-File-Recursive", "false"), 200, "")
	e.want(e.do("DELETE", "/v1/volumes/data/files", e.key, nil, hdrPath, b64("made"), "X-Msb-File-Recursive", "true"), 200, "")
	if exists("seed/moved.txt") || exists("made") {
		t.Fatal("remove")
	}
	e.want(e.do("GET", "/v1/volumes/data/files/content", e.key, nil, hdrPath, b64("seed/missing")), 404, "volume_file_not_found")
	e.want(e.do("GET", "/v1/volumes/data/files/content", e.key, nil, hdrPath, b64("../../etc/passwd")), 400, "invalid_volume_path")
	e.want(e.do("GET", "/v1/volumes/data/files/content", e.key, nil, hdrPath, "!!!"), 400, "invalid_volume_path")
	e.want(e.do("GET", "/v1/volumes/nope/files/content", e.key, nil, hdrPath, b64("x")), 404, "volume_not_found")
	e.want(e.do("GET", "/v1/volumes/data/files/content", e.other, nil, hdrPath, b64("seed/hello.txt")), 404, "volume_not_found")
	// The file is where a sandbox.start volume "data:/..." mounts it.
	if data, err := os.ReadFile(filepath.Join(e.vols.Root, "team", "data", "seed", "hello.txt")); err != nil || string(data) != "from-rest" {
		t.Fatalf("on disk: %q %v", data, err)
	}
	// The default volume holds every volume of the namespace.
	r = e.do("GET", "/v1/volumes/_default/files/content", e.key, nil, hdrPath, b64("data/seed/hello.txt"))
	if string(r.body) != "from-rest" {
		t.Fatalf("default volume: %d %s", r.status, r.body)
	}

	// Mounted by a running sandbox: not deleted.
	e.create("box", func(b map[string]any) {
		b["mounts"] = []any{map[string]any{"type": "named", "name": "data", "guest": "/data",
			"options": map[string]any{"readonly": false, "noexec": false, "nosuid": false, "nodev": false}, "stat_virtualization": "strict", "host_permissions": "private"}}
	})
	e.want(e.do("DELETE", "/v1/volumes/data", e.key, nil), 409, "invalid_state_transition")
	e.do("DELETE", "/v1/sandboxes/by-name/box", e.key, nil)
	// Nor by a sandbox of /api/v1/rpc that mounts it another way: the
	// namespace's whole directory, its absolute path, a directory in it.
	nsDir := filepath.Join(e.vols.Root, "team")
	for i, host := range []string{".", nsDir + "/data", "data/seed", nsDir} {
		id := mustID(t, "team", fmt.Sprintf("rpc%d", i))
		if err := e.svc.Start(t.Context(), id, &sandbox.Config{Volumes: []sandbox.Volume{{Host: host, Guest: "/v"}}}); err != nil {
			t.Fatal(err)
		}
		e.want(e.do("DELETE", "/v1/volumes/data", e.key, nil), 409, "invalid_state_transition")
		if err := e.svc.Stop(t.Context(), id); err != nil {
			t.Fatal(err)
		}
	}
	e.want(e.do("DELETE", "/v1/volumes/data", e.other, nil), 404, "volume_not_found")
	e.want(e.do("DELETE", "/v1/volumes/_default", e.key, nil), 400, "invalid_request")
	e.want(e.do("DELETE", "/v1/volumes/data", e.key, nil), 200, "")
	e.want(e.do("DELETE", "/v1/volumes/data", e.key, nil), 404, "volume_not_found")
	for _, route := range []string{"POST /v1/volumes", "DELETE /v1/volumes/{id}", "PUT /v1/volumes/{id}/files/content"} {
		ok := false
		for _, ev := range e.audit.Find("v1: " + route) {
			ok = ok || ev.Outcome == "ok" && strings.Contains(ev.Detail, "volume data")
		}
		if !ok {
			t.Errorf("%s: no audit event names the volume", route)
		}
	}
}

const hdrPath = "X-Msb-File-Path"

// A log stream ends once its key is revoked.
func TestLogStreamEndsWithItsKey(t *testing.T) {
	e := newEnv(t)
	sb := e.create("box")
	resp, ch := e.openLogs(sb.ID, e.revocable, "")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if _, err := e.reg.Revoke(t.Context(), e.revocableID); err != nil {
		t.Fatal(err)
	}
	timeout := time.After(10 * time.Second)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-timeout:
			t.Fatal("the log stream of a revoked key is still open after 10s")
		}
	}
}
