package v1_test

import (
	"encoding/json"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/msb-dev/msb/auth/audit"
	"github.com/msb-dev/msb/errdefs"
	v1 "github.com/msb-dev/msb/rpc/v1"
	"github.com/msb-dev/msb/sandbox"
)

var rfc3339 = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$`)

// checkSandbox checks what the 0.6.18 SDK needs of a sandbox object.
func checkSandbox(t *testing.T, raw []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"id", "org_id", "name", "slug", "status", "created_at"} {
		if s, ok := m[k].(string); !ok || s == "" {
			t.Fatalf("%s must be a non-empty string: %s", k, raw)
		}
	}
	if _, ok := m["ephemeral"].(bool); !ok {
		t.Fatalf("ephemeral must be a bool: %s", raw)
	}
	if !rfc3339.MatchString(m["created_at"].(string)) {
		t.Fatalf("created_at %v", m["created_at"])
	}
	switch m["status"] {
	case "created", "starting", "running", "stopping", "stopped", "failed":
	default:
		t.Fatalf("status %v", m["status"])
	}
	return m
}

// Without a key, with a bad one, or a spent rate, the answer is the v1
// error envelope with the status the SDK expects; refusals are audited.
func TestAuthentication(t *testing.T) {
	e := newEnv(t)
	r := e.do("GET", "/v1/sandboxes", "", nil)
	e.want(r, 401, "invalid_api_key")
	if r.header.Get("WWW-Authenticate") != "Bearer" {
		t.Fatalf("401 without WWW-Authenticate: %v", r.header)
	}
	e.want(e.do("GET", "/v1/sandboxes", "msb_not-a-key", nil), 401, "invalid_api_key")
	if ev := e.audit.Find("v1: GET /v1/sandboxes"); len(ev) != 2 || ev[0].Outcome != audit.Unauthenticated {
		t.Fatalf("401s audited as %+v", ev)
	}
	// An unknown route is still behind the key.
	e.want(e.do("GET", "/v1/nothing", "", nil), 401, "invalid_api_key")
	e.want(e.do("GET", "/v1/nothing", e.key, nil), 404, "not_found")
	e.want(e.do("PATCH", "/v1/sandboxes", e.key, nil), 405, "method_not_allowed")

	// The rate limit: 5 an hour, every call charged, with the headers.
	var last response
	for i := range 6 {
		last = e.do("GET", "/v1/sandboxes", e.limited, nil)
		if i < 5 {
			e.want(last, 200, "")
			if last.header.Get("X-Ratelimit-Limit") != "5" || last.header.Get("X-Ratelimit-Remaining") != fmt.Sprint(4-i) || last.header.Get("X-Ratelimit-Reset") == "" {
				t.Fatalf("call %d: rate headers %v", i, last.header)
			}
		}
	}
	e.want(last, 429, "rate_limited")
	if last.header.Get("Retry-After") == "" {
		t.Fatalf("429 without Retry-After: %v", last.header)
	}
	if ev := e.audit.Find("v1: GET /v1/sandboxes"); ev[len(ev)-1].Outcome != audit.RateLimited {
		t.Fatalf("429 audited as %+v", ev[len(ev)-1])
	}
}

// Scopes map as on JSON-RPC: create and start need sandbox:create, reads
// sandbox:read, stop and delete sandbox:delete, the agent sandbox:exec.
func TestScopes(t *testing.T) {
	e := newEnv(t)
	sb := e.create("box")
	for _, c := range []struct {
		method, path string
		scope        string
	}{
		{"POST", createPath, "sandbox:create"},
		{"POST", "/v1/sandboxes/" + sb.ID + "/start", "sandbox:create"},
		{"POST", "/v1/sandboxes/by-name/box/stop", "sandbox:delete"},
		{"DELETE", "/v1/sandboxes/" + sb.ID, "sandbox:delete"},
		{"POST", "/v1/volumes", "sandbox:create"},
		{"DELETE", "/v1/volumes/x", "sandbox:delete"},
		{"GET", "/v1/volumes/_default/files/exists", "sandbox:exec"},
	} {
		r := e.do(c.method, c.path, e.readOnly, body("new"))
		e.want(r, 403, "forbidden")
		if !strings.Contains(string(r.body), c.scope) {
			t.Errorf("%s %s: %s does not name %s", c.method, c.path, r.body, c.scope)
		}
	}
	e.want(e.do("GET", "/v1/sandboxes/by-name/box", e.readOnly, nil), 200, "")
	e.want(e.do("GET", "/v1/volumes", e.readOnly, nil), 200, "")
	if _, resp, err := e.tryDial(sb.ID, e.readOnly); err == nil || resp == nil || resp.StatusCode != 403 {
		t.Fatalf("agent upgrade without sandbox:exec: %v %v", err, resp)
	}
	if e.svc.starts != 1 {
		t.Fatalf("a refused call started a sandbox: %d starts", e.svc.starts)
	}
	forbidden := 0
	for _, ev := range e.audit.Events() {
		if ev.Outcome == audit.Forbidden {
			forbidden++
			if ev.Namespace != "team" || ev.KeyNamespace != "team" {
				t.Errorf("refusal audited without its namespace: %+v", ev)
			}
		}
	}
	if forbidden != 8 {
		t.Fatalf("%d refusals audited, want 8", forbidden)
	}
}

// The sandbox lifecycle: create holds until running and echoes the spec;
// get by name and by id; start is a no-op on a running sandbox; stop is
// idempotent and the record stays; delete forgets it.
func TestSandboxLifecycle(t *testing.T) {
	e := newEnv(t)
	r := e.do("POST", createPath, e.key, body("box", func(b map[string]any) {
		b["env"] = []any{map[string]any{"key": "FOO", "value": "bar"}}
		b["labels"] = map[string]any{"suite": "x"}
		b["runtime"].(map[string]any)["workdir"] = "/tmp"
		b["runtime"].(map[string]any)["entrypoint"] = []any{"/bin/sh"}
		b["runtime"].(map[string]any)["cmd"] = []any{"-c", "sleep infinity"}
		b["rlimits"] = []any{map[string]any{"resource": "nofile", "soft": 256, "hard": 512}}
		b["lifecycle"] = map[string]any{"ephemeral": true, "max_duration_secs": 60, "idle_timeout_secs": 30}
		b["resources"].(map[string]any)["disk_size_mib"] = 512
	}))
	e.want(r, 200, "")
	m := checkSandbox(t, r.body)
	if m["status"] != "running" || m["name"] != "box" || m["org_id"] != "team" || m["ephemeral"] != true || m["started_at"] == nil {
		t.Fatalf("created: %s", r.body)
	}
	rec, _ := e.svc.Get(t.Context(), mustID(t, "team", "box"))
	c := rec.Config
	if c.Image != "alpine:3.20" || c.Workdir != "/tmp" || strings.Join(c.Command, " ") != "/bin/sh -c sleep infinity" ||
		strings.Join(c.Envs, ",") != "FOO=bar" || c.Labels["suite"] != "x" || len(c.Rlimits) != 1 || c.Rlimits[0].Hard != 512 ||
		!c.Ephemeral || c.MaxDuration.Seconds() != 60 || c.IdleTimeout.Seconds() != 30 || c.Memory != 512 || c.CPUs != 1 || c.Disk != 512 {
		t.Fatalf("config %+v", c)
	}
	spec, _ := json.Marshal(m["spec"])
	for _, want := range []string{`"workdir":"/tmp"`, `{"key":"FOO","value":"bar"}`, `"entrypoint":["/bin/sh","-c","sleep infinity"]`,
		`"reference":"alpine:3.20"`, `"network":{"enabled":false,"strict":false}`, `"max_duration_secs":60`, `"disk_size_mib":512`} {
		if !strings.Contains(string(spec), want) {
			t.Errorf("spec lacks %s: %s", want, spec)
		}
	}
	id := m["id"].(string)

	// Get, by name and by id: the same object.
	a, b := e.do("GET", "/v1/sandboxes/by-name/box", e.key, nil), e.do("GET", "/v1/sandboxes/"+id, e.key, nil)
	e.want(a, 200, "")
	e.want(b, 200, "")
	if checkSandbox(t, a.body)["id"] != id || checkSandbox(t, b.body)["name"] != "box" {
		t.Fatalf("get: %s %s", a.body, b.body)
	}
	e.want(e.do("GET", "/v1/sandboxes/by-name/nope", e.key, nil), 404, "sandbox_not_found")
	e.want(e.do("GET", "/v1/sandboxes/by-name/..%2Fx", e.key, nil), 404, "sandbox_not_found")
	e.want(e.do("GET", "/v1/sandboxes/00000000-0000-0000-0000-000000000000", e.key, nil), 404, "sandbox_not_found")
	// A second create of the name.
	e.want(e.do("POST", createPath, e.key, body("box")), 409, "name_already_exists")

	// Start of a running sandbox: success, running.
	r = e.do("POST", "/v1/sandboxes/by-name/box/start?wait_for=running&wait_timeout=90", e.key, "{}")
	e.want(r, 200, "")
	if checkSandbox(t, r.body)["status"] != "running" {
		t.Fatalf("start: %s", r.body)
	}
	// Stop, twice, by id and by name: stopped, and still there.
	for _, p := range []string{"/v1/sandboxes/" + id + "/stop", "/v1/sandboxes/by-name/box/stop", "/v1/sandboxes/" + id + "/stop"} {
		r = e.do("POST", p, e.key, "{}")
		e.want(r, 200, "")
		if m := checkSandbox(t, r.body); m["status"] != "stopped" || m["stopped_at"] == nil {
			t.Fatalf("stop: %s", r.body)
		}
	}
	e.want(e.do("GET", "/v1/sandboxes/by-name/box", e.key, nil), 200, "")
	// Start again by id: same id.
	r = e.do("POST", "/v1/sandboxes/"+id+"/start", e.key, "{}")
	e.want(r, 200, "")
	if m := checkSandbox(t, r.body); m["id"] != id || m["status"] != "running" {
		t.Fatalf("restart: %s", r.body)
	}
	// Delete, then it is gone.
	r = e.do("DELETE", "/v1/sandboxes/"+id, e.key, nil)
	e.want(r, 200, "")
	var msg struct{ Message string }
	r.json(t, &msg)
	if msg.Message == "" {
		t.Fatalf("delete: %s", r.body)
	}
	e.want(e.do("GET", "/v1/sandboxes/"+id, e.key, nil), 404, "sandbox_not_found")
	e.want(e.do("DELETE", "/v1/sandboxes/by-name/box", e.key, nil), 404, "sandbox_not_found")

	// Every change is audited with its namespace and sandbox; reads are not.
	for _, route := range []string{"POST /v1/sandboxes", "POST /v1/sandboxes/{id}/stop", "DELETE /v1/sandboxes/{id}", "POST /v1/sandboxes/by-name/{name}/start"} {
		ev := e.audit.Find("v1: " + route)
		if len(ev) == 0 || ev[0].Namespace != "team" || ev[0].Sandbox != "box" || ev[0].KeyID == "" {
			t.Errorf("%s audited as %+v", route, ev)
		}
	}
	if ev := e.audit.Find("v1: GET /v1/sandboxes/by-name/{name}"); len(ev) != 0 {
		t.Errorf("reads audited: %+v", ev)
	}
}

func mustID(t *testing.T, ns, name string) sandbox.ID {
	id, err := sandbox.ParseID(ns, name)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// A start that fails in the engine answers the object, failed, with why;
// a refused one answers the error.
func TestStartFailure(t *testing.T) {
	e := newEnv(t)
	e.svc.startFail = fmt.Errorf("runc exploded: %w", errAny)
	r := e.do("POST", createPath, e.key, body("box"))
	e.want(r, 200, "")
	if m := checkSandbox(t, r.body); m["status"] != "failed" || m["last_failure_message"] != "the engine broke" {
		t.Fatalf("failed start: %s", r.body)
	}
	if ev := e.audit.Find("v1: POST /v1/sandboxes"); len(ev) != 1 || ev[0].Outcome != audit.Error {
		t.Fatalf("failed start audited as %+v", ev)
	}
}

// Another namespace's sandboxes do not exist for a key: 404 everywhere,
// absent from lists, untouched.
func TestNamespaces(t *testing.T) {
	e := newEnv(t)
	sb := e.create("box", func(b map[string]any) { b["labels"] = map[string]any{"suite": "s"} })
	for _, c := range [][2]string{
		{"GET", "/v1/sandboxes/by-name/box"}, {"GET", "/v1/sandboxes/" + sb.ID},
		{"POST", "/v1/sandboxes/" + sb.ID + "/stop"}, {"POST", "/v1/sandboxes/by-name/box/stop"},
		{"POST", "/v1/sandboxes/" + sb.ID + "/start"}, {"DELETE", "/v1/sandboxes/" + sb.ID},
		{"DELETE", "/v1/sandboxes/by-name/box"}, {"GET", "/v1/sandboxes/" + sb.ID + "/logs"},
	} {
		e.want(e.do(c[0], c[1], e.other, "{}"), 404, "sandbox_not_found")
	}
	if _, resp, err := e.tryDial(sb.ID, e.other); err == nil || resp == nil || resp.StatusCode != 404 {
		t.Fatalf("agent upgrade from another namespace: %v %v", err, resp)
	}
	var page struct{ Data []v1.Sandbox }
	e.do("GET", "/v1/sandboxes?limit=20", e.other, nil).json(t, &page)
	if len(page.Data) != 0 {
		t.Fatalf("another namespace lists %+v", page.Data)
	}
	if rec, _ := e.svc.Get(t.Context(), mustID(t, "team", "box")); rec.State != sandbox.StateRunning {
		t.Fatal("another namespace's key changed the sandbox")
	}
	// The other namespace may use the name for its own.
	e.want(e.do("POST", createPath, e.other, body("box")), 200, "")
	// A key of every namespace acts in "default".
	r := e.do("POST", createPath, e.all, body("box"))
	e.want(r, 200, "")
	if checkSandbox(t, r.body)["org_id"] != "default" {
		t.Fatalf("a key of every namespace created in %s", r.body)
	}
}

// Lists page with opaque cursors and filter on labels (AND).
func TestList(t *testing.T) {
	e := newEnv(t)
	for i, role := range []string{"main", "extra", "extra"} {
		e.create(fmt.Sprintf("s%d", i), func(b map[string]any) { b["labels"] = map[string]any{"suite": "p", "role": role} })
	}
	e.create("unlabelled")
	get := func(q string) (names []string, next *string) {
		var page struct {
			Data       []v1.Sandbox `json:"data"`
			NextCursor *string      `json:"next_cursor"`
		}
		r := e.do("GET", "/v1/sandboxes?"+q, e.key, nil)
		e.want(r, 200, "")
		r.json(t, &page)
		for _, s := range page.Data {
			names = append(names, s.Name)
		}
		return names, page.NextCursor
	}
	labels := url.QueryEscape(`{"suite":"p"}`)
	p1, next := get("limit=2&labels=" + labels)
	if strings.Join(p1, ",") != "s0,s1" || next == nil {
		t.Fatalf("page 1: %v %v", p1, next)
	}
	if strings.Contains(*next, "s1") {
		t.Fatalf("cursor %q is not opaque", *next)
	}
	p2, next := get("cursor=" + url.QueryEscape(*next) + "&limit=2&labels=" + labels)
	if strings.Join(p2, ",") != "s2" || next != nil {
		t.Fatalf("page 2: %v %v", p2, next)
	}
	if got, _ := get("labels=" + url.QueryEscape(`{"suite":"p","role":"main"}`)); strings.Join(got, ",") != "s0" {
		t.Fatalf("AND filter: %v", got)
	}
	if got, _ := get("limit=1000"); len(got) != 4 {
		t.Fatalf("a limit over 100 is cut, not refused: %v", got)
	}
	e.want(e.do("GET", "/v1/sandboxes?limit=0", e.key, nil), 400, "invalid_request")
	e.want(e.do("GET", "/v1/sandboxes?cursor=!!", e.key, nil), 400, "invalid_request")
	e.want(e.do("GET", "/v1/sandboxes?labels=%5B1%5D", e.key, nil), 400, "invalid_request")
}

// Every field msb cannot honour is refused with invalid_sandbox_config
// naming it; none is ignored. Nothing starts.
func TestCreateRefusals(t *testing.T) {
	e := newEnv(t)
	set := func(path string, v any) func(map[string]any) {
		return func(b map[string]any) {
			parts := strings.Split(path, ".")
			m := b
			for _, p := range parts[:len(parts)-1] {
				m = m[p].(map[string]any)
			}
			m[parts[len(parts)-1]] = v
		}
	}
	for _, c := range []struct {
		mod  func(map[string]any)
		want string
	}{
		{set("mounts", []any{map[string]any{"type": "bind", "host": "/etc", "guest": "/h", "options": map[string]any{}}}), "mounts[0]"},
		{set("mounts", []any{map[string]any{"type": "disk_image", "host": "/x.img", "guest": "/d", "format": "raw"}}), "mounts[0]"},
		{set("mounts", []any{map[string]any{"type": "named", "name": "v", "guest": "/d", "options": map[string]any{"readonly": false, "noexec": true, "nosuid": false, "nodev": false}, "stat_virtualization": "strict", "host_permissions": "private"}}), "noexec"},
		{set("patches", []any{map[string]any{"type": "text", "path": "/a", "content": "x", "mode": nil, "replace": false}}), "patches"},
		{set("init", map[string]any{"cmd": "/sbin/init", "args": []any{}, "env": []any{}}), "init"},
		{set("resources.disk_size_mib", 0), "disk_size_mib"},
		{set("runtime.log_level", "info"), "log_level"},
		{set("image", map[string]any{"type": "bind", "path": "/"}), "image.type"},
		{set("pull_policy", "always"), "pull_policy"},
		{set("security_profile", "restricted"), "security_profile"},
		{set("registry", map[string]any{"mode": "inline", "username": "u", "password": "p"}), "registry"},
		{set("network.policy", map[string]any{"default_egress": "deny", "default_ingress": "deny", "rules": []any{
			map[string]any{"direction": "egress", "destination": map[string]any{"group": "metadata"}, "protocols": []any{}, "ports": []any{}, "action": "allow"}}}), "network.policy.rules[0].destination.group"},
		{set("network.policy", map[string]any{"default_egress": "deny", "default_ingress": "deny", "rules": []any{
			map[string]any{"direction": "ingress", "destination": map[string]any{"any": nil}, "protocols": []any{}, "ports": []any{}, "action": "allow"}}}), "network.policy.rules[0].direction"},
		{set("network.secrets", map[string]any{"entries": []any{map[string]any{"env": "K"}}, "on_violation": map[string]any{"type": "block_and_log"}}), "network.secrets"},
		{set("rlimits", []any{map[string]any{"resource": "bogus", "soft": 1, "hard": 1}}), "rlimits[0].resource"},
		{set("env", []any{map[string]any{"key": "A=B", "value": "x"}}), "env[0]"},
		{set("slug", "other"), "slug"},
		{set("surprise", 1), "surprise"},
		{set("runtime.surprise", 1), "surprise"},
		{set("name", "no/slash"), "name"},
	} {
		r := e.do("POST", createPath, e.key, body("box", c.mod))
		e.want(r, 400, "invalid_sandbox_config")
		if !strings.Contains(string(r.body), c.want) {
			t.Errorf("refusal does not name %s: %s", c.want, r.body)
		}
	}
	// NetworkPolicy.none() with the SDK's empty secrets: no network.
	e.want(e.do("POST", createPath, e.key, body("ok", set("network", map[string]any{"enabled": true, "strict": true,
		"policy":  map[string]any{"default_egress": "deny", "default_ingress": "deny", "rules": []any{}},
		"secrets": map[string]any{"entries": []any{}, "on_violation": map[string]any{"type": "block_and_log"}}}))), 200, "")
	e.want(e.do("POST", "/v1/sandboxes?start=false", e.key, body("later")), 400, "invalid_sandbox_config")
	e.want(e.do("POST", createPath, e.key, "{not json"), 400, "invalid_sandbox_config")
	// A named volume must exist.
	r := e.do("POST", createPath, e.key, body("vol", set("mounts", []any{map[string]any{"type": "named", "name": "nope", "guest": "/d",
		"options": map[string]any{"readonly": true, "noexec": false, "nosuid": false, "nodev": false}, "stat_virtualization": "strict", "host_permissions": "private"}})))
	e.want(r, 404, "volume_not_found")
	if e.svc.starts != 1 {
		t.Fatalf("%d starts, want 1 (the accepted create)", e.svc.starts)
	}
	if r, err := e.svc.Get(t.Context(), mustID(t, "team", "ok")); err != nil || r.Config.Network.Mode != sandbox.NetworkNone {
		t.Errorf("network of a v1 sandbox with NetworkPolicy.none(): %+v, %v", r.Config.Network, err)
	}
}

// Error classes map through the one table: an internal error's detail is
// logged, and the client gets a reference; an unavailable service says why.
func TestErrorClasses(t *testing.T) {
	e := newEnv(t)
	e.svc.getFail = fmt.Errorf("open /var/lib/secret/path: %w", errAny)
	r := e.do("GET", "/v1/sandboxes/by-name/box", e.key, nil)
	e.want(r, 500, "internal_error")
	if strings.Contains(string(r.body), "/var/lib") || !strings.Contains(string(r.body), "ref ") {
		t.Fatalf("internal error shown as %s", r.body)
	}
	e.svc.getFail = errdefs.Unavailablef("the engine is down")
	r = e.do("GET", "/v1/sandboxes/by-name/box", e.key, nil)
	e.want(r, 503, "unavailable")
	if !strings.Contains(string(r.body), "the engine is down") {
		t.Fatalf("unavailable shown as %s", r.body)
	}
	u := sandbox.Unavailable{Reason: "not root"}
	if _, err := u.Get(t.Context(), mustID(t, "a", "b")); !errdefs.Is(err, errdefs.Unavailable) || !strings.Contains(err.Error(), "not root") {
		t.Fatalf("Unavailable.Get: %v", err)
	}
}
