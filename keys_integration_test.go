package main_test

// Integration tests of key scopes, key management over the API, rotation,
// rate and usage limits, the audit log and the key checksum, through the
// real binary over HTTP on loopback.

import (
	"bytes"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	_ "modernc.org/sqlite"
)

// callH makes one call and also returns the response headers.
func (s *msbServer) callH(key, method string, params any) (int, rpcResponse, http.Header) {
	s.t.Helper()
	body, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "method": method, "params": params, "id": 1})
	status, data, hdr := s.post(string(body), bearer(key))
	var r rpcResponse
	if err := json.Unmarshal(data, &r); err != nil {
		s.t.Fatalf("%s: response is not JSON (%d): %s", method, status, data)
	}
	return status, r, hdr
}

// mustMSB runs an msb command that must succeed and returns stdout and stderr.
func mustMSB(t *testing.T, home string, args ...string) (string, string) {
	t.Helper()
	out, errOut, err := msb(t, home, args...)
	if err != nil {
		t.Fatalf("msb %v: %v\n%s%s", args, err, out, errOut)
	}
	return out, errOut
}

func openDB(t *testing.T, home string) *sql.DB {
	t.Helper()
	// A raw connection, as another tool (or an attacker with the file) has.
	db, err := sql.Open("sqlite", "file:"+filepath.Join(home, "msb.db")+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func sqlExec(t *testing.T, home, q string, args ...any) {
	t.Helper()
	db := openDB(t, home)
	if _, err := db.Exec(q, args...); err != nil {
		t.Fatal(err)
	}
	db.Close()
}

var allScopes = []string{"sandbox:create", "sandbox:read", "sandbox:exec", "sandbox:delete", "keys:manage", "audit:read"}

// TestScopesPerMethod: every method is allowed with its own scope alone and
// refused (403 naming the scope) with every scope but its own.
func TestScopesPerMethod(t *testing.T) {
	t.Parallel()
	home := newHome(t)
	srv := startServer(t, home)
	only := map[string]string{}
	allBut := map[string]string{}
	for _, s := range allScopes {
		only[s] = keygen(t, home, "--scope", s)
		var args []string
		for _, o := range allScopes {
			if o != s {
				args = append(args, "--scope", o)
			}
		}
		allBut[s] = keygen(t, home, args...)
	}
	for _, m := range []struct {
		method, scope string
		params        map[string]any
	}{
		{"sandbox.start", "sandbox:create", map[string]any{"namespace": "default", "sandbox": "-bad"}},
		{"sandbox.stop", "sandbox:delete", map[string]any{"namespace": "default", "sandbox": "nosuch"}},
		{"sandbox.metrics.get", "sandbox:read", map[string]any{"namespace": "*"}},
		{"sandbox.repl.run", "sandbox:exec", map[string]any{"namespace": "default", "sandbox": "nosuch", "language": "python", "code": "1"}},
		{"sandbox.command.run", "sandbox:exec", map[string]any{"namespace": "default", "sandbox": "nosuch", "command": "true"}},
		{"keys.create", "keys:manage", map[string]any{"label": "made by scope test"}},
		{"keys.list", "keys:manage", map[string]any{}},
		{"keys.revoke", "keys:manage", map[string]any{"id": "ffffffffffffffff"}},
		{"keys.rotate", "keys:manage", map[string]any{"id": "ffffffffffffffff"}},
		{"keys.limit", "keys:manage", map[string]any{"id": "ffffffffffffffff", "max_uses": 5}},
		{"audit.list", "audit:read", map[string]any{}},
	} {
		status, r := srv.call(only[m.scope], m.method, m.params)
		if status == 403 || status == 401 || (r.Error != nil && (r.Error.Code == -32004 || r.Error.Code == -32002)) {
			t.Errorf("%s with only %s: HTTP %d %+v, want it allowed", m.method, m.scope, status, r.Error)
		}
		srv.wantError(allBut[m.scope], m.method, m.params, 403, -32004, "lacks scope "+m.scope)
	}
	// Keys made without --scope keep every scope.
	srv.mustCall(keygen(t, home), "keys.list", map[string]any{}, nil)
}

func TestKeyManagementAPI(t *testing.T) {
	t.Parallel()
	home := newHome(t)
	srv := startServer(t, home)
	mgr := keygen(t, home, "--namespace", "team-a", "--scope", "keys:manage", "--scope", "sandbox:read",
		"--expire", "1d", "--rate", "100/m", "--max-uses", "1000", "--name", "team-a manager")
	otherNS := keygen(t, home, "--namespace", "team-b", "--name", "b")
	strongA := keygen(t, home, "--namespace", "team-a", "--name", "strong") // every scope

	// Escalation through keys.create is refused.
	for name, p := range map[string]map[string]any{
		"wider namespace":  {"namespace": "*"},
		"other namespace":  {"namespace": "team-b"},
		"more scopes":      {"scopes": []string{"sandbox:exec"}},
		"all scopes":       {"scopes": []string{"*"}},
		"longer expiry":    {"expire": "2d"},
		"higher rate":      {"rate": "101/m"},
		"higher rate (/s)": {"rate": "2/s"},
		"more uses":        {"max_uses": 1001},
	} {
		status, r := srv.call(mgr, "keys.create", p)
		if status != 403 || r.Error == nil || r.Error.Code != -32004 {
			t.Errorf("keys.create %s: HTTP %d %+v, want 403 -32004", name, status, r.Error)
		}
	}
	srv.wantError(mgr, "keys.create", map[string]any{"scopes": []string{"sandbox:write"}}, 200, -32602, "unknown scope")
	srv.wantError(mgr, "keys.create", map[string]any{"rate": "fast"}, 200, -32602, "600/m")

	// A narrower key: returned once, works at once, within its scopes.
	var created struct {
		Key       string   `json:"key"`
		ID        string   `json:"id"`
		Namespace string   `json:"namespace"`
		Scopes    []string `json:"scopes"`
		Expires   string   `json:"expires"`
		Rate      string   `json:"rate"`
		MaxUses   int      `json:"max_uses"`
	}
	srv.mustCall(mgr, "keys.create", map[string]any{"label": "child", "scopes": []string{"sandbox:read"}, "expire": "1h"}, &created)
	if !strings.HasPrefix(created.Key, "msb_") || created.Namespace != "team-a" || len(created.Scopes) != 1 ||
		created.Rate != "100/m" || created.MaxUses != 1000-11 { // the caller's uses left: 11 calls so far, this one too
		t.Fatalf("keys.create = %+v", created)
	}
	srv.allowed(created.Key, "team-a")
	srv.wantError(created.Key, "keys.list", map[string]any{}, 403, -32004, "lacks scope keys:manage")
	srv.wantError(created.Key, "sandbox.metrics.get", map[string]any{"namespace": "team-b"}, 403, -32004, "team-b")

	// keys.list: only team-a's keys, never a key's text.
	status, data, _ := srv.post(`{"jsonrpc":"2.0","method":"keys.list","params":{},"id":1}`, bearer(mgr))
	if status != 200 {
		t.Fatalf("keys.list: %d %s", status, data)
	}
	for _, k := range []string{mgr, otherNS, strongA, created.Key} {
		if bytes.Contains(data, []byte(k[20:60])) {
			t.Fatalf("keys.list shows key text: %s", data)
		}
	}
	var list struct {
		Keys []struct {
			ID, Namespace, Label string
		} `json:"keys"`
	}
	json.Unmarshal(mustResult(t, data), &list)
	if len(list.Keys) != 3 {
		t.Fatalf("keys.list for team-a = %+v, want 3 keys", list.Keys)
	}
	for _, k := range list.Keys {
		if k.Namespace != "team-a" {
			t.Fatalf("keys.list for team-a shows %+v", k)
		}
	}

	// Escalation through keys.rotate and keys.limit is refused.
	srv.wantError(mgr, "keys.rotate", map[string]any{"id": keyID(t, strongA)}, 403, -32004, "your key has only")
	// Another namespace's keys do not exist for this key, not even by prefix.
	srv.wantError(mgr, "keys.rotate", map[string]any{"id": keyID(t, otherNS)}, 200, -32003, "no such API key")
	srv.wantError(mgr, "keys.revoke", map[string]any{"id": keyID(t, otherNS)[:12]}, 200, -32003, "no such API key")
	srv.wantError(mgr, "keys.limit", map[string]any{"id": created.ID, "rate": "1000/m"}, 403, -32004, "cannot grant more")
	srv.allowed(otherNS, "team-b")
	srv.allowed(strongA, "team-a")

	// Rotation through the API, without grace: the old key stops at once.
	var rotated struct {
		Key, ID, Replaces string
	}
	srv.mustCall(mgr, "keys.rotate", map[string]any{"id": created.ID, "grace": "0"}, &rotated)
	if rotated.Replaces != created.ID || rotated.ID == created.ID {
		t.Fatalf("keys.rotate = %+v", rotated)
	}
	srv.unauthorized(created.Key, "API key has been revoked")
	srv.allowed(rotated.Key, "team-a")
	// keys.limit within the caller's limits, then keys.revoke.
	srv.mustCall(mgr, "keys.limit", map[string]any{"id": rotated.ID, "rate": "5/m", "max_uses": 10}, nil)
	_, _, hdr := srv.callH(rotated.Key, "sandbox.metrics.get", map[string]any{"namespace": "team-a"})
	if hdr.Get("X-RateLimit-Limit") != "5" {
		t.Fatalf("after keys.limit, X-RateLimit-Limit = %q, want 5", hdr.Get("X-RateLimit-Limit"))
	}
	srv.mustCall(mgr, "keys.revoke", map[string]any{"id": rotated.ID}, nil)
	srv.unauthorized(rotated.Key, "API key has been revoked")
}

func mustResult(t *testing.T, data []byte) json.RawMessage {
	t.Helper()
	var r rpcResponse
	if err := json.Unmarshal(data, &r); err != nil || r.Error != nil {
		t.Fatalf("response %s", data)
	}
	return r.Result
}

func TestRotateCLI(t *testing.T) {
	t.Parallel()
	home := newHome(t)
	srv := startServer(t, home)
	old := keygen(t, home, "--namespace", "ci", "--name", "runner", "--scope", "sandbox:read", "--rate", "50/m")
	id := keyID(t, old)

	out, errOut := mustMSB(t, home, "server", "keys", "rotate", id[:10], "--grace", "3s")
	fresh := strings.TrimSpace(out)
	if !strings.HasPrefix(fresh, "msb_") || strings.Contains(out, "\n"+id) || !strings.Contains(errOut, "keeps working until") {
		t.Fatalf("rotate printed %q / %q", out, errOut)
	}
	srv.allowed(fresh, "ci")
	srv.allowed(old, "ci") // during the grace period
	_, _, hdr := srv.callH(fresh, "sandbox.metrics.get", map[string]any{"namespace": "ci"})
	if hdr.Get("X-RateLimit-Limit") != "50" {
		t.Fatalf("rotated key's rate limit %q, want 50 (copied)", hdr.Get("X-RateLimit-Limit"))
	}
	srv.wantError(fresh, "sandbox.metrics.get", map[string]any{"namespace": "other"}, 403, -32004, "other")
	srv.wantError(fresh, "keys.list", map[string]any{}, 403, -32004, "keys:manage")
	list, _ := mustMSB(t, home, "server", "keys", "list")
	if !strings.Contains(list, " rotated") || strings.Count(list, "runner") != 2 {
		t.Fatalf("keys list during grace:\n%s", list)
	}
	srv.Advance(3500 * time.Millisecond)
	srv.unauthorized(old, "API key has been revoked")
	srv.allowed(fresh, "ci")
	// Once its grace ended (on the server's clock), the old key cannot be
	// rotated again.
	admin := keygen(t, home, "--scope", "keys:manage")
	srv.wantError(admin, "keys.rotate", map[string]any{"id": id}, 200, -32602, "is revoked")

	// Without --grace: the old key is revoked at once.
	out, errOut = mustMSB(t, home, "server", "keys", "rotate", keyID(t, fresh))
	newer := strings.TrimSpace(out)
	if !strings.Contains(errOut, "is revoked") {
		t.Fatalf("rotate without grace said %q", errOut)
	}
	srv.unauthorized(fresh, "API key has been revoked")
	srv.allowed(newer, "ci")
	if _, errOut, err := msb(t, home, "server", "keys", "rotate", keyID(t, fresh)); err == nil || !strings.Contains(errOut, "revoked") {
		t.Fatalf("rotating a revoked key: %v %s", err, errOut)
	}
}

func rateHeaders(t *testing.T, hdr http.Header) (limit, remaining, reset int64) {
	t.Helper()
	var err error
	parse := func(name string) int64 {
		v, e := strconv.ParseInt(hdr.Get(name), 10, 64)
		if e != nil {
			err = e
		}
		return v
	}
	limit, remaining, reset = parse("X-RateLimit-Limit"), parse("X-RateLimit-Remaining"), parse("X-RateLimit-Reset")
	if err != nil {
		t.Fatalf("rate-limit headers missing or malformed: %v (%v)", hdr, err)
	}
	return
}

func TestRateLimits(t *testing.T) {
	t.Parallel()
	home := newHome(t)
	// The server's default rate, from config.toml.
	if err := os.WriteFile(filepath.Join(home, "config.toml"), []byte("rate_limit = \"4/m\"\nstart_rate_limit = \"2/m\"\n[images]\n\"microsandbox/python\" = \"host\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := startServer(t, home)
	key := keygen(t, home, "--rate", "3/m")
	for i := 0; i < 3; i++ {
		status, r, hdr := srv.callH(key, "sandbox.metrics.get", map[string]any{"namespace": "*"})
		if status != 200 || r.Error != nil {
			t.Fatalf("call %d: %d %+v", i, status, r.Error)
		}
		limit, remaining, reset := rateHeaders(t, hdr)
		if limit != 3 || remaining != int64(2-i) || reset < time.Now().Unix() || reset > time.Now().Add(61*time.Second).Unix() {
			t.Fatalf("call %d: limit %d remaining %d reset %d", i, limit, remaining, reset)
		}
	}
	status, r, hdr := srv.callH(key, "sandbox.metrics.get", map[string]any{"namespace": "*"})
	if status != 429 || r.Error == nil || r.Error.Code != -32005 || !strings.Contains(r.Error.Message, "rate limit") {
		t.Fatalf("4th call: %d %+v", status, r.Error)
	}
	retry, err := strconv.Atoi(hdr.Get("Retry-After"))
	if err != nil || retry < 1 || retry > 20 {
		t.Fatalf("Retry-After %q, want 1-20 seconds", hdr.Get("Retry-After"))
	}
	if _, remaining, _ := rateHeaders(t, hdr); remaining != 0 {
		t.Fatalf("429 with remaining %d", remaining)
	}
	// Even a parse error of an authenticated request carries the headers.
	_, _, hdr = srv.post(`{"jsonrpc":`, bearer(key))
	if hdr.Get("X-RateLimit-Limit") != "3" {
		t.Fatalf("parse error response headers: %v", hdr)
	}

	// A key without --rate has the config's default; sandbox.start its own,
	// lower bucket (refused calls with a bad name still spend it).
	def := keygen(t, home)
	_, _, hdr = srv.callH(def, "sandbox.metrics.get", map[string]any{"namespace": "*"})
	if limit, _, _ := rateHeaders(t, hdr); limit != 4 {
		t.Fatalf("default rate limit %d, want 4 from config.toml", limit)
	}
	starter := keygen(t, home, "--rate", "100/m", "--start-rate", "1/m")
	srv.wantError(starter, "sandbox.start", map[string]any{"namespace": "a", "sandbox": "-x"}, 200, -32602, "invalid sandbox name")
	status, r, hdr = srv.callH(starter, "sandbox.start", map[string]any{"namespace": "a", "sandbox": "-x"})
	if status != 429 || r.Error == nil || r.Error.Code != -32005 || !strings.Contains(r.Error.Message, "sandbox.start") || hdr.Get("Retry-After") == "" {
		t.Fatalf("2nd start: %d %+v %v", status, r.Error, hdr)
	}
	srv.allowed(starter, "a") // other calls still pass
	// Limits change on the running server.
	mustMSB(t, home, "server", "keys", "limit", keyID(t, starter), "--rate", "1/h")
	_, _, hdr = srv.callH(starter, "sandbox.metrics.get", map[string]any{"namespace": "*"})
	if limit, _, _ := rateHeaders(t, hdr); limit != 1 {
		t.Fatalf("after keys limit --rate 1/h: limit %d", limit)
	}
	// Dev mode has no limits and no headers.
	srv.Stop()
	dev := startServer(t, home, "--dev")
	_, _, hdr = dev.callH("", "sandbox.metrics.get", map[string]any{"namespace": "*"})
	if hdr.Get("X-RateLimit-Limit") != "" {
		t.Fatalf("dev mode sends rate-limit headers: %v", hdr)
	}
	dev.mustCall("", "audit.list", map[string]any{}, nil) // every scope
	// No key management without authentication: a key made in dev mode
	// would keep full rights after it.
	for _, m := range []string{"keys.create", "keys.list"} {
		dev.wantError("", m, map[string]any{}, 403, -32004, "not available in development mode")
	}
}

func TestMaxUses(t *testing.T) {
	t.Parallel()
	home := newHome(t)
	srv := startServer(t, home)
	key := keygen(t, home, "--max-uses", "2", "--name", "twice")
	srv.allowed(key, "default")
	srv.allowed(key, "default")
	srv.unauthorized(key, "API key usage limit reached")
	status, _, hdr := srv.callH(key, "sandbox.metrics.get", map[string]any{"namespace": "*"})
	if status != 401 || hdr.Get("WWW-Authenticate") != "Bearer" {
		t.Fatalf("spent key: %d %v", status, hdr)
	}
	srv.Stop()
	srv = startServer(t, home) // uses are kept across restarts
	srv.unauthorized(key, "API key usage limit reached")
	list, _ := mustMSB(t, home, "server", "keys", "list")
	if !strings.Contains(list, "2/2") || !strings.Contains(list, "usage limit reached") {
		t.Fatalf("keys list:\n%s", list)
	}
	mustMSB(t, home, "server", "keys", "limit", keyID(t, key), "--max-uses", "3")
	srv.allowed(key, "default")
	srv.unauthorized(key, "API key usage limit reached")
}

// auditEvents runs `msb server audit --json` with args.
func auditEvents(t *testing.T, home string, args ...string) []map[string]any {
	t.Helper()
	out, _ := mustMSB(t, home, append([]string{"server", "audit", "--json"}, args...)...)
	var events []map[string]any
	if err := json.Unmarshal([]byte(out), &events); err != nil {
		t.Fatalf("audit --json printed %q: %v", out, err)
	}
	return events
}

func find(events []map[string]any, want map[string]any) map[string]any {
	for _, e := range events {
		ok := true
		for k, v := range want {
			if e[k] != v {
				ok = false
			}
		}
		if ok {
			return e
		}
	}
	return nil
}

func TestAuditLog(t *testing.T) {
	t.Parallel()
	home := newHome(t)
	srv := startServer(t, home)
	key := keygen(t, home, "--name", "auditor-test")
	team := keygen(t, home, "--namespace", "team-a", "--name", "team")
	limited := keygen(t, home, "--rate", "1/h", "--name", "slow")
	revoked := keygen(t, home, "--name", "gone")
	mustMSB(t, home, "server", "keys", "revoke", keyID(t, revoked))

	// Changes (allowed, whatever they then answer) and refusals.
	srv.call(key, "sandbox.command.run", map[string]any{"namespace": "default", "sandbox": "nosuch", "command": "echo", "args": []string{"SECRET-ARG-MARKER"}})
	srv.call(key, "sandbox.repl.run", map[string]any{"namespace": "default", "sandbox": "nosuch", "language": "python", "code": "print('SECRET-CODE-MARKER')"})
	srv.call(key, "sandbox.stop", map[string]any{"namespace": "default", "sandbox": "nosuch"})
	srv.mustCall(key, "sandbox.metrics.get", map[string]any{"namespace": "*"}, nil) // a read: not audited
	srv.call(team, "sandbox.stop", map[string]any{"namespace": "team-b", "sandbox": "x"})
	srv.allowed(limited, "default")
	srv.call(limited, "sandbox.metrics.get", map[string]any{"namespace": "*"})
	srv.unauthorized(revoked, "revoked")
	srv.unauthorized("msb_garbage", "invalid API key")
	var made struct{ Key, ID string }
	srv.mustCall(key, "keys.create", map[string]any{"label": "via api", "namespace": "team-a"}, &made)

	// audit.list over the API: a team-a key with audit:read sees team-a only.
	teamAuditor := keygen(t, home, "--namespace", "team-a", "--scope", "audit:read")
	var viaAPI struct {
		Events []map[string]any `json:"events"`
	}
	srv.mustCall(teamAuditor, "audit.list", map[string]any{}, &viaAPI)
	if len(viaAPI.Events) == 0 {
		t.Fatal("audit.list for team-a is empty")
	}
	for _, e := range viaAPI.Events {
		if e["namespace"] != "team-a" {
			t.Fatalf("team-a auditor sees %v", e)
		}
	}
	srv.wantError(teamAuditor, "audit.list", map[string]any{"namespace": "team-b"}, 403, -32004, "team-b")
	// team-b's auditor does not see what team-a's key tried in team-b: that
	// would show it another tenant's key id, label and address.
	teamBAuditor := keygen(t, home, "--namespace", "team-b", "--scope", "audit:read")
	srv.mustCall(teamBAuditor, "audit.list", map[string]any{}, &viaAPI)
	for _, e := range viaAPI.Events {
		if e["key_id"] == keyID(t, team) {
			t.Fatalf("team-b's auditor sees team-a's key: %v", e)
		}
	}

	srv.Stop() // flushes the audit buffer
	events := auditEvents(t, home)
	id := keyID(t, key)
	for _, want := range []map[string]any{
		{"key_id": id, "key_label": "auditor-test", "method": "sandbox.command.run", "sandbox": "nosuch", "namespace": "default", "outcome": "error", "remote": "127.0.0.1"},
		{"key_id": id, "method": "sandbox.repl.run", "outcome": "error"},
		{"key_id": id, "method": "sandbox.stop"},
		{"key_id": keyID(t, team), "method": "sandbox.stop", "namespace": "team-b", "outcome": "forbidden", "code": float64(-32004)},
		{"key_id": keyID(t, limited), "key_label": "slow", "method": "sandbox.metrics.get", "outcome": "rate_limited", "code": float64(-32005)},
		{"key_id": keyID(t, revoked), "key_label": "gone", "outcome": "unauthenticated", "detail": "API key has been revoked"},
		{"key_id": "", "outcome": "unauthenticated", "detail": "invalid API key"},
		{"key_id": id, "method": "keys.create", "namespace": "team-a", "outcome": "ok", "detail": "created key " + made.ID},
		{"key_id": "cli", "method": "cli: keys revoke", "detail": "revoked key " + keyID(t, revoked)},
		{"key_id": "cli", "method": "cli: keygen"},
	} {
		if find(events, want) == nil {
			t.Errorf("no audit event %v in:\n%v", want, events)
		}
	}
	if e := find(events, map[string]any{"method": "sandbox.metrics.get", "outcome": "ok"}); e != nil {
		t.Errorf("an allowed read was audited: %v", e)
	}
	// Filters.
	for _, e := range auditEvents(t, home, "--key", id[:8]) {
		if e["key_id"] != id {
			t.Fatalf("--key %s shows %v", id[:8], e)
		}
	}
	// In team-b: two refusals (team-a's stop and the team-a auditor's
	// audit.list) and the keygen of team-b's auditor; nothing else.
	teamB := auditEvents(t, home, "--namespace", "team-b")
	outcomes := map[string]int{}
	for _, e := range teamB {
		if e["namespace"] != "team-b" {
			t.Fatalf("--namespace team-b shows %v", e)
		}
		outcomes[e["outcome"].(string)]++
	}
	if len(teamB) != 3 || outcomes["forbidden"] != 2 || find(teamB, map[string]any{"method": "cli: keygen"}) == nil {
		t.Fatalf("--namespace team-b: %v", teamB)
	}
	sqlExec(t, home, `INSERT INTO audit_events (time, key_id, method, outcome) VALUES (?, 'old-key', 'sandbox.start', 'ok')`,
		time.Now().Add(-2*time.Hour).UnixMilli())
	if find(auditEvents(t, home), map[string]any{"key_id": "old-key"}) == nil {
		t.Fatal("inserted old event missing without --since")
	}
	if find(auditEvents(t, home, "--since", "1h"), map[string]any{"key_id": "old-key"}) != nil {
		t.Fatal("--since 1h shows an event of 2h ago")
	}
	text, _ := mustMSB(t, home, "server", "audit", "--namespace", "team-b")
	if !strings.Contains(text, "OUTCOME") || !strings.Contains(text, "forbidden") || !strings.Contains(text, "team-b") {
		t.Fatalf("audit text output:\n%s", text)
	}
	if _, errOut, err := msb(t, home, "server", "audit", "--since", "yesterday"); err == nil || !strings.Contains(errOut, "--since") {
		t.Fatalf("bad --since: %v %s", err, errOut)
	}

	// No secret anywhere in the database: not the keys, not code or arguments.
	db := openDB(t, home)
	if _, err := db.Exec(`PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	for _, suffix := range []string{"", "-wal"} {
		data, err := os.ReadFile(filepath.Join(home, "msb.db") + suffix)
		if err != nil {
			continue
		}
		for _, k := range []string{key, team, limited, revoked, made.Key} {
			sig := k[strings.LastIndex(k, ".")+1:]
			if bytes.Contains(data, []byte(k)) || bytes.Contains(data, []byte(sig[:30])) || bytes.Contains(data, []byte(k[4:60])) {
				t.Fatalf("msb.db%s contains key material", suffix)
			}
		}
		for _, marker := range []string{"SECRET-ARG-MARKER", "SECRET-CODE-MARKER"} {
			if bytes.Contains(data, []byte(marker)) {
				t.Fatalf("msb.db%s contains %s", suffix, marker)
			}
		}
	}
}

func TestAuditPruning(t *testing.T) {
	t.Parallel()
	home := newHome(t)
	srv := startServer(t, home)
	srv.unauthorized("msb_nope", "invalid API key")
	srv.Stop()
	if n := len(auditEvents(t, home)); n != 1 {
		t.Fatalf("%d events, want 1", n)
	}
	// A tiny retention: the next start prunes what is older.
	cfgPath := filepath.Join(home, "config.toml")
	cfg, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfgPath, append([]byte("audit_retention = \"1s\"\n"), cfg...), 0o600); err != nil {
		t.Fatal(err)
	}
	srv = startServer(t, home, "--clock-offset", "1500ms")
	srv.unauthorized("msb_nope2", "invalid API key")
	srv.Stop()
	events := auditEvents(t, home)
	if len(events) != 1 {
		t.Fatalf("after pruning with a 1s retention: %v, want only the new event", events)
	}
}

func TestKeyChecksumAndLegacyKeys(t *testing.T) {
	t.Parallel()
	home := newHome(t)
	key := keygen(t, home, "--name", "legacy")
	// A key issued before the checksum: "msb_<JWT>", recorded by its hash.
	legacy := key[:strings.LastIndex(key, "_")]
	sum := sha256.Sum256([]byte(legacy))
	sqlExec(t, home, `UPDATE api_keys SET key_hash = ? WHERE id = ?`, hex.EncodeToString(sum[:]), keyID(t, legacy))
	current := keygen(t, home)
	srv := startServer(t, home)
	srv.allowed(legacy, "default")
	srv.allowed(current, "default")
	// One character of the checksum changed: refused.
	b := []byte(current)
	b[len(b)-1] ^= 1
	srv.unauthorized(string(b), "invalid API key")
	// Cut short: refused.
	srv.unauthorized(current[:len(current)-3], "invalid API key")
}

func TestKeysListWarnings(t *testing.T) {
	t.Parallel()
	home := newHome(t)
	soon := keygen(t, home, "--expire", "3d", "--name", "soon")
	idle := keygen(t, home, "--name", "idle")
	fine := keygen(t, home, "--name", "fine")
	old := time.Now().Add(-100 * 24 * time.Hour).UnixMilli()
	sqlExec(t, home, `UPDATE api_keys SET created_at = ?, last_used_at = ? WHERE id = ?`, old, old, keyID(t, idle))
	_, errOut := mustMSB(t, home, "server", "keys", "list")
	if !strings.Contains(errOut, "key "+keyID(t, soon)+" (soon) expires in") {
		t.Errorf("no expiry warning:\n%s", errOut)
	}
	if !strings.Contains(errOut, "key "+keyID(t, idle)+" (idle) has not been used for 90 days") {
		t.Errorf("no unused warning:\n%s", errOut)
	}
	if strings.Contains(errOut, keyID(t, fine)) {
		t.Errorf("warning about a fine key:\n%s", errOut)
	}
}

// A key cannot multiply its budget by minting children: a child's calls
// count against its own limits and against every ancestor's rate and
// uses. (A key with rate 10/m and 20 uses once minted 6 children that
// together made 64 calls.)
func TestKeyFamilyShareTheBudget(t *testing.T) {
	t.Parallel()
	home := newHome(t)
	srv := startServer(t, home)
	parent := keygen(t, home, "--rate", "10/m", "--max-uses", "20", "--scope", "keys:manage,sandbox:read")
	var children []string
	for range 6 {
		var made struct{ Key string }
		status, r := srv.call(parent, "keys.create", map[string]any{"scopes": []string{"sandbox:read", "keys:manage"}})
		if status != 200 || r.Error != nil || json.Unmarshal(r.Result, &made) != nil {
			break // the family's budget may already be spent
		}
		children = append(children, made.Key)
	}
	if len(children) == 0 {
		t.Fatal("no child key could be made")
	}
	// A grandchild too.
	var grand struct{ Key string }
	if status, r := srv.call(children[0], "keys.create", map[string]any{}); status == 200 && r.Error == nil {
		json.Unmarshal(r.Result, &grand)
		children = append(children, grand.Key)
	}
	made := len(children) + 1 // every keys.create was a call of the family
	ok := 0
	for round := 0; round < 20; round++ {
		for _, k := range append([]string{parent}, children...) {
			if status, r := srv.call(k, "sandbox.metrics.get", map[string]any{"namespace": "*"}); status == 200 && r.Error == nil {
				ok++
			}
		}
	}
	if total := made + ok; total > 11 { // 10 a minute, and a token that may refill meanwhile
		t.Fatalf("the family made %d calls with a key of 10/m and 20 uses", total)
	}
	// A child's own refusal names the family.
	srv.wantError(children[len(children)-1], "sandbox.metrics.get", map[string]any{"namespace": "*"}, 429, -32005, "made from")
}

// The uses of a key are shared with the keys made from it.
func TestKeyFamilyShareTheUses(t *testing.T) {
	t.Parallel()
	home := newHome(t)
	srv := startServer(t, home)
	parent := keygen(t, home, "--max-uses", "8", "--scope", "keys:manage,sandbox:read")
	var child struct{ Key string }
	srv.mustCall(parent, "keys.create", map[string]any{"max_uses": 5}, &child) // use 1 of the parent's 8
	ok := 0
	for range 20 {
		for _, k := range []string{parent, child.Key} {
			if status, r := srv.call(k, "sandbox.metrics.get", map[string]any{"namespace": "*"}); status == 200 && r.Error == nil {
				ok++
			}
		}
	}
	if ok != 7 {
		t.Fatalf("parent and child made %d calls after the create, want the parent's 7 uses left", ok)
	}
	srv.wantError(child.Key, "sandbox.metrics.get", map[string]any{"namespace": "*"}, 401, -32002, "usage limit reached")
}

// A key that may not make a call learns nothing of what else is wrong with
// it: another namespace, or a scope it lacks, is refused as such even when
// the params are malformed too, and the audit log records the refusal and
// its target.
func TestRefusalBeforeParamErrors(t *testing.T) {
	t.Parallel()
	home := newHome(t)
	srv := startServer(t, home)
	team := keygen(t, home, "--namespace", "team-a", "--scope", "sandbox:read,sandbox:create")
	reader := keygen(t, home, "--namespace", "team-a", "--scope", "sandbox:read")
	bad := map[string]any{"namespace": "team-b", "sandbox": "s1", "config": map[string]any{"memory": "lots", "no_such": 1}}
	srv.wantError(team, "sandbox.start", bad, 403, -32004, "team-b")
	bad["namespace"] = "team-a"
	srv.wantError(reader, "sandbox.start", bad, 403, -32004, "sandbox:create")
	srv.wantError(team, "sandbox.start", bad, 200, -32602, "config.memory") // allowed: now it may learn
	admin := keygen(t, home, "--scope", "audit:read")
	var got struct {
		Events []map[string]any `json:"events"`
	}
	srv.mustCall(admin, "audit.list", map[string]any{}, &got)
	if find(got.Events, map[string]any{"key_id": keyID(t, team), "outcome": "forbidden", "namespace": "team-b", "sandbox": "s1"}) == nil {
		t.Fatalf("the cross-namespace probe is not in the audit log as a refusal: %v", got.Events)
	}
}
