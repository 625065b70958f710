package main_test

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// validParams is, for every JSON-RPC method, params it accepts. The walk
// below breaks them one field at a time; a method missing here fails the
// test, so a new method is walked too.
var validParams = map[string]map[string]any{
	"sandbox.start": {"namespace": "walk", "sandbox": "box", "config": map[string]any{
		"image": "microsandbox/python", "memory": 256, "cpus": 1, "volumes": []string{"data:/data"}, "ports": []string{},
		"envs": []string{"A=1"}, "depends_on": []string{}, "workdir": "/workspace", "shell": "/bin/sh",
		"scripts": map[string]string{"start": "true"}, "exec": "true", "user": "root", "labels": map[string]string{"a": "b"},
		"rlimits":   []map[string]any{{"resource": "nofile", "soft": 256, "hard": 256}},
		"lifecycle": map[string]any{"ephemeral": false, "max_duration_secs": 600, "idle_timeout_secs": 300},
		"network": map[string]any{"enabled": true, "allow": []string{"*.pypi.org:443"}, "deny": []string{"10.0.0.0/8"}, "strict": true,
			"max_connections": 16, "max_bandwidth": 1 << 20},
	}},
	"sandbox.network.update": {"namespace": "walk", "sandbox": "box", "network": map[string]any{"enabled": true, "allow": []string{"pypi.org:443"},
		"deny": []string{"evil.test"}, "strict": false, "max_connections": 4, "max_bandwidth": 1024}},
	"sandbox.stop":        {"namespace": "walk", "sandbox": "box"},
	"sandbox.metrics.get": {"namespace": "walk", "sandbox": "box"},
	"sandbox.repl.run":    {"namespace": "walk", "sandbox": "box", "language": "python", "code": "print(1)", "timeout": 5},
	"sandbox.command.run": {"namespace": "walk", "sandbox": "box", "command": "true", "args": []string{"x"}, "timeout": 5},
	"sandbox.fs.read":     {"namespace": "walk", "sandbox": "box", "path": "/a", "offset": 1, "length": 2, "encoding": "utf-8"},
	"sandbox.fs.write":    {"namespace": "walk", "sandbox": "box", "path": "/a", "content": "x", "encoding": "utf-8", "mode": "644"},
	"sandbox.fs.list":     {"namespace": "walk", "sandbox": "box", "path": "/"},
	"keys.create":         {"namespace": "walk", "label": "walk", "scopes": []string{"sandbox:read"}, "expire": "1d", "rate": "10/m", "start_rate": "1/m", "max_uses": 5},
	"keys.list":           {},
	"keys.revoke":         {"id": "0123456789abcdef"},
	"keys.rotate":         {"id": "0123456789abcdef", "grace": "1h"},
	"keys.limit":          {"id": "0123456789abcdef", "rate": "10/m", "start_rate": "default", "max_uses": 3},
	"audit.list":          {"key": "0123", "namespace": "walk", "since": "1h", "limit": 10},
}

// hostile are the values every field is set to in turn: every JSON type,
// edge numbers, and strings a parser may choke on.
var hostile = []any{
	nil, true, false, 0, -1, 1.5, 1e300, -1e300, 9223372036854775807, 1 << 62,
	"", " ", "*", "-x", "x\ny", "x\x00y", "../../etc/passwd", "\u202e\u0000\uffff", strings.Repeat("a", 100_000),
	[]any{}, []any{1, "a", nil, []any{}}, map[string]any{}, map[string]any{"a": map[string]any{}},
}

// jsonFields lists the JSON names of a params struct's fields, with the
// type of each, following embedded structs.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return out
	}
	for i := range t.NumField() {
		f := t.Field(i)
		if f.Anonymous {
			for k, v := range jsonFields(f.Type) {
				out[k] = v
			}
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "" || name == "-" || !f.IsExported() {
			continue
		}
		out[name] = f.Type
	}
	return out
}

func clone(m map[string]any) map[string]any {
	data, _ := json.Marshal(m)
	var out map[string]any
	json.Unmarshal(data, &out)
	return out
}

// No input reaches an internal error: every method, with params of every
// shape and every field of them (and of config) set to every hostile value,
// answers a class the client can act on (-32602, -32001, -32003, ...),
// never -32603 and never a 5xx.
func TestNoUserInputIsAnInternalError(t *testing.T) {
	t.Parallel()
	home := newHome(t)
	srv := startServer(t, home)
	// A rate high enough that every call reaches its method.
	key := keygen(t, home, "--rate", "1000000/s", "--start-rate", "1000000/s")
	methods := srv.srv.RPC().Methods().Describe()
	var bodies []string
	add := func(method string, params any) {
		b, err := json.Marshal(map[string]any{"jsonrpc": "2.0", "method": method, "params": params, "id": len(bodies)})
		if err != nil {
			t.Fatal(err)
		}
		bodies = append(bodies, string(b))
	}
	for _, m := range methods {
		base, ok := validParams[m.Name]
		if !ok {
			t.Errorf("method %s has no valid params in validParams: add them, so that it is walked", m.Name)
			continue
		}
		for _, shape := range []any{[]any{}, "params", 7, true, map[string]any{"no_such_field": 1}} {
			add(m.Name, shape)
		}
		fields := jsonFields(m.Params)
		for name, typ := range fields {
			for _, v := range hostile {
				p := clone(base)
				p[name] = v
				add(m.Name, p)
			}
			p := clone(base)
			delete(p, name)
			add(m.Name, p)
			if name != "config" && name != "network" {
				continue
			}
			for sub := range jsonFields(typ) {
				for _, v := range hostile {
					p := clone(base)
					p[name].(map[string]any)[sub] = v
					add(m.Name, p)
				}
			}
			p = clone(base)
			p[name].(map[string]any)["no_such_field"] = 1
			add(m.Name, p)
		}
	}
	codes := map[int]int{}
	defer func() {
		t.Logf("%d calls over %d methods; answers by code (0: success): %v", len(bodies), len(methods), codes)
	}()
	for _, body := range bodies {
		status, data, _ := srv.post(body, bearer(key))
		var r rpcResponse
		if err := json.Unmarshal(data, &r); err != nil || status >= 500 {
			t.Errorf("%.300s: HTTP %d, %.300s", body, status, data)
			continue
		}
		if r.Error == nil {
			codes[0]++
		} else {
			codes[r.Error.Code]++
		}
		if r.Error != nil && r.Error.Code == -32603 {
			t.Errorf("%.300s: internal error: %s", body, r.Error.Message)
		}
	}
}

// keys.create with a label that is too long, or not printable, is invalid
// params, not an internal error (a defect of the label check).
func TestKeyLabelIsValidated(t *testing.T) {
	t.Parallel()
	home := newHome(t)
	srv := startServer(t, home)
	key := keygen(t, home)
	for _, label := range []string{strings.Repeat("x", 65), "two\nlines", "tab\there"} {
		srv.wantError(key, "keys.create", map[string]any{"label": label}, 200, -32602, "label must be at most 64 printable characters")
	}
	var made struct{ Label string }
	srv.mustCall(key, "keys.create", map[string]any{"label": strings.Repeat("é", 64)}, &made)
	if made.Label != strings.Repeat("é", 64) {
		t.Fatalf("label %q", made.Label)
	}
}
