package main_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

func TestJSONRPCWire(t *testing.T) {
	t.Parallel()
	home := newHome(t)
	srv := startServer(t, home)
	key := keygen(t, home)
	h := bearer(key)

	decode := func(data []byte) rpcResponse {
		t.Helper()
		var r rpcResponse
		if err := json.Unmarshal(data, &r); err != nil {
			t.Fatalf("not a JSON-RPC response: %s", data)
		}
		return r
	}

	// ids come back with their JSON type.
	for _, id := range []string{`1`, `"abc"`, `-7`, `1.5`, `null`, `12345678901234567890`} {
		status, data, _ := srv.post(`{"jsonrpc":"2.0","method":"no.such.method","id":`+id+`}`, h)
		r := decode(data)
		if status != 200 || string(r.ID) != id || r.Error == nil || r.Error.Code != -32601 {
			t.Errorf("id %s: status %d, response %s", id, status, data)
		}
	}
	// Invalid ids are invalid requests.
	status, data, _ := srv.post(`{"jsonrpc":"2.0","method":"x","id":{"a":1}}`, h)
	if r := decode(data); status != 200 || r.Error == nil || r.Error.Code != -32600 {
		t.Errorf("object id: %d %s", status, data)
	}

	cases := []struct {
		name, body string
		code       int
		want       string
	}{
		{"parse error", `{"jsonrpc":`, -32700, "not valid JSON"},
		{"missing jsonrpc", `{"method":"sandbox.stop","id":1}`, -32600, `"jsonrpc" must be "2.0"`},
		{"wrong jsonrpc", `{"jsonrpc":"1.0","method":"sandbox.stop","id":1}`, -32600, `"2.0"`},
		{"no method", `{"jsonrpc":"2.0","id":1}`, -32600, `"method" is required`},
		{"not an object", `"hello"`, -32600, ""},
		{"unknown method", `{"jsonrpc":"2.0","method":"sandbox.explode","id":1}`, -32601, `"sandbox.explode" not found`},
		{"params not an object", `{"jsonrpc":"2.0","method":"sandbox.stop","params":[1],"id":1}`, -32602, "JSON object"},
		{"unknown field", `{"jsonrpc":"2.0","method":"sandbox.stop","params":{"namespace":"a","sandbox":"b","bogus":1},"id":1}`, -32602, `unknown field "bogus"`},
		{"wrong type", `{"jsonrpc":"2.0","method":"sandbox.start","params":{"namespace":"a","sandbox":"b","config":{"memory":"lots"}},"id":1}`, -32602, `must be an integer`},
		{"bad language", `{"jsonrpc":"2.0","method":"sandbox.repl.run","params":{"namespace":"a","sandbox":"b","language":"cobol","code":"1"},"id":1}`, -32602, `unsupported language "cobol"`},
		{"bad timeout", `{"jsonrpc":"2.0","method":"sandbox.command.run","params":{"namespace":"a","sandbox":"b","command":"true","timeout":-1},"id":1}`, -32602, `"timeout"`},
		{"no command", `{"jsonrpc":"2.0","method":"sandbox.command.run","params":{"namespace":"a","sandbox":"b"},"id":1}`, -32602, `"command" is required`},
	}
	for _, c := range cases {
		status, data, _ := srv.post(c.body, h)
		r := decode(data)
		if status != 200 || r.Error == nil || r.Error.Code != c.code || !strings.Contains(r.Error.Message, c.want) {
			t.Errorf("%s: status %d, %s; want code %d containing %q", c.name, status, data, c.code, c.want)
		}
	}

	// Notifications: run, answer 204 with no body.
	status, data, _ = srv.post(`{"jsonrpc":"2.0","method":"sandbox.metrics.get","params":{"namespace":"a"}}`, h)
	if status != http.StatusNoContent || len(data) != 0 {
		t.Errorf("notification: %d %q", status, data)
	}

	// Batch: one response per request, none for notifications, in order.
	status, data, _ = srv.post(`[
		{"jsonrpc":"2.0","method":"no.such","id":"first"},
		{"jsonrpc":"2.0","method":"no.such"},
		42,
		{"jsonrpc":"2.0","method":"sandbox.metrics.get","params":{"namespace":"a"},"id":3}
	]`, h)
	var batch []rpcResponse
	if err := json.Unmarshal(data, &batch); err != nil || status != 200 {
		t.Fatalf("batch: %d %s", status, data)
	}
	if len(batch) != 3 || string(batch[0].ID) != `"first"` || batch[0].Error.Code != -32601 ||
		batch[1].Error == nil || batch[1].Error.Code != -32600 || string(batch[2].ID) != "3" {
		t.Errorf("batch responses: %s", data)
	}
	status, data, _ = srv.post(`[]`, h)
	if r := decode(data); status != 200 || r.Error == nil || r.Error.Code != -32600 {
		t.Errorf("empty batch: %d %s", status, data)
	}
	status, data, _ = srv.post(`[{"jsonrpc":"2.0","method":"no.such"}]`, h)
	if status != http.StatusNoContent || len(data) != 0 {
		t.Errorf("batch of notifications: %d %q", status, data)
	}

	// Bodies over 10 MiB are refused with 413.
	big := `{"jsonrpc":"2.0","method":"sandbox.stop","params":{"pad":"` + strings.Repeat("a", 11<<20) + `"},"id":1}`
	status, data, _ = srv.post(big, h)
	if status != http.StatusRequestEntityTooLarge {
		t.Errorf("11 MiB body: status %d %.200s", status, data)
	}

	// Only POST.
	resp, err := http.Get(srv.URL + "/api/v1/rpc")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "POST" {
		t.Errorf("GET /api/v1/rpc: %d, Allow %q", resp.StatusCode, resp.Header.Get("Allow"))
	}

	// Health needs no key.
	resp, err = http.Get(srv.URL + "/api/v1/health")
	if err != nil {
		t.Fatal(err)
	}
	var health map[string]string
	json.NewDecoder(resp.Body).Decode(&health)
	resp.Body.Close()
	if resp.StatusCode != 200 || health["message"] != "Service is healthy" {
		t.Errorf("health: %d %v", resp.StatusCode, health)
	}
}
