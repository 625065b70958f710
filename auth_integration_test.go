package main_test

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// allowed asserts key may use namespace ns: the call passes authentication
// and the namespace check (whatever the sandbox runtime then answers).
func (s *msbServer) allowed(key, ns string) {
	s.t.Helper()
	status, r := s.call(key, "sandbox.metrics.get", map[string]any{"namespace": ns})
	if status != http.StatusOK || (r.Error != nil && (r.Error.Code == -32002 || r.Error.Code == -32004)) {
		s.t.Fatalf("key refused for namespace %q: HTTP %d %+v", ns, status, r.Error)
	}
}

func (s *msbServer) unauthorized(key, want string) {
	s.t.Helper()
	s.wantError(key, "sandbox.metrics.get", map[string]any{"namespace": "default"}, 401, -32002, want)
}

func TestAuthCauses(t *testing.T) {
	t.Parallel()
	home := newHome(t)
	srv := startServer(t, home)
	key := keygen(t, home)
	srv.allowed(key, "default")

	srv.unauthorized("", "API key is required")
	srv.unauthorized("not-a-key", "invalid API key")
	srv.unauthorized(strings.TrimPrefix(key, "msb_"), "invalid API key") // prefix is required
	// Tamper with one character of the payload.
	parts := strings.Split(key, ".")
	payload := []byte(parts[1])
	payload[5] ^= 1
	srv.unauthorized(parts[0]+"."+string(payload)+"."+parts[2], "invalid API key")

	// 401s carry WWW-Authenticate and never echo the key.
	status, body, hdr := srv.post(`{"jsonrpc":"2.0","method":"sandbox.metrics.get","params":{"namespace":"x"},"id":1}`,
		map[string]string{"Authorization": "Bearer " + key + "x"})
	if status != 401 || hdr.Get("WWW-Authenticate") != "Bearer" || strings.Contains(string(body), key[10:40]) {
		t.Fatalf("bad 401: %d %q %s", status, hdr.Get("WWW-Authenticate"), body)
	}

	// x-api-key wins over Authorization.
	status, _, _ = srv.post(`{"jsonrpc":"2.0","method":"sandbox.metrics.get","params":{"namespace":"x"},"id":1}`,
		map[string]string{"Authorization": "Bearer bogus", "X-Api-Key": key})
	if status != 200 {
		t.Fatalf("x-api-key with a good key: status %d, want 200", status)
	}
	status, _, _ = srv.post(`{"jsonrpc":"2.0","method":"sandbox.metrics.get","params":{"namespace":"x"},"id":1}`,
		map[string]string{"Authorization": "Bearer " + key, "X-Api-Key": "bogus"})
	if status != 401 {
		t.Fatalf("bad x-api-key with good bearer: status %d, want 401 (x-api-key wins)", status)
	}

	// Expiry: a 2s key works, then stops.
	short := keygen(t, home, "--expire", "2s")
	srv.allowed(short, "default")
	srv.Advance(3 * time.Second)
	srv.unauthorized(short, "API key has expired")

	// Revocation on the running server takes effect at once.
	victim := keygen(t, home, "--name", "victim")
	srv.allowed(victim, "default")
	id := keyID(t, victim)
	if out, errOut, err := msb(t, home, "server", "keys", "revoke", id); err != nil {
		t.Fatalf("revoke: %v %s %s", err, out, errOut)
	}
	srv.unauthorized(victim, "API key has been revoked")
	srv.allowed(key, "default") // others unaffected

	// The CLI keeps the real clock, which Advance did not move: the short
	// key's record says what the passing of those seconds would.
	sqlExec(t, home, `UPDATE api_keys SET expires_at = ? WHERE id = ?`, time.Now().Add(-time.Second).UnixMilli(), keyID(t, short))
	list, _, err := msb(t, home, "server", "keys", "list")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{id, "victim", "revoked", "expired", "active"} {
		if !strings.Contains(list, want) {
			t.Errorf("keys list lacks %q:\n%s", want, list)
		}
	}

	// The server log never holds key text.
	srv.Stop()
	for _, k := range []string{key, short, victim} {
		sig := k[strings.LastIndex(k, ".")+1:]
		if strings.Contains(srv.out.String(), sig) || strings.Contains(srv.out.String(), k[4:60]) {
			t.Fatalf("server output contains key material:\n%s", srv.out)
		}
	}
}

func keyID(t *testing.T, key string) string {
	t.Helper()
	var claims jwt.RegisteredClaims
	if _, _, err := jwt.NewParser().ParseUnverified(strings.TrimPrefix(key, "msb_"), &claims); err != nil {
		t.Fatal(err)
	}
	return claims.ID
}

func signingKey(t *testing.T, home string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(home, "server.key"))
	if err != nil {
		t.Fatal(err)
	}
	return []byte(strings.TrimSpace(string(data)))
}

func TestForgedTokens(t *testing.T) {
	t.Parallel()
	home := newHome(t)
	srv := startServer(t, home)
	key := keygen(t, home)
	id := keyID(t, key)
	secret := signingKey(t, home)
	claims := jwt.MapClaims{"jti": id, "namespace": "*", "iat": time.Now().Unix()}

	// alg: none, with the claims of a real key.
	b64 := base64.RawURLEncoding.EncodeToString
	header, _ := json.Marshal(map[string]string{"alg": "none", "typ": "JWT"})
	body, _ := json.Marshal(claims)
	srv.unauthorized("msb_"+b64(header)+"."+b64(body)+".", "invalid API key")

	// Other HMAC algorithms with the real secret: the header must not choose.
	for _, m := range []jwt.SigningMethod{jwt.SigningMethodHS384, jwt.SigningMethodHS512} {
		tok, err := jwt.NewWithClaims(m, claims).SignedString(secret)
		if err != nil {
			t.Fatal(err)
		}
		srv.unauthorized("msb_"+tok, "invalid API key")
	}
	// RS256 header carrying an HMAC signature (algorithm confusion).
	rsHeader, _ := json.Marshal(map[string]string{"alg": "RS256", "typ": "JWT"})
	unsigned := b64(rsHeader) + "." + b64(body)
	sig, _ := jwt.SigningMethodHS256.Sign(unsigned, secret)
	srv.unauthorized("msb_"+unsigned+"."+b64(sig), "invalid API key")

	// Correctly signed, but never issued (not in the registry).
	forged, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"jti": "0123456789abcdef01234567", "namespace": "*"}).SignedString(secret)
	srv.unauthorized("msb_"+forged, "invalid API key")
	// A real key's id with a wider namespace claim, re-signed: not what was issued.
	nsKey := keygen(t, home, "--namespace", "team")
	wider, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"jti": keyID(t, nsKey), "namespace": "*"}).SignedString(secret)
	srv.unauthorized("msb_"+wider, "invalid API key")
	srv.allowed(key, "default")
}

func TestNamespaces(t *testing.T) {
	t.Parallel()
	home := newHome(t)
	srv := startServer(t, home)
	team := keygen(t, home, "--namespace", "team-a")
	all := keygen(t, home)

	srv.allowed(team, "team-a")
	srv.allowed(all, "team-b")
	srv.allowed(team, "*") // narrowed to its own namespace
	for _, m := range []struct {
		method string
		params map[string]any
	}{
		{"sandbox.start", map[string]any{"namespace": "team-b", "sandbox": "s1"}},
		{"sandbox.stop", map[string]any{"namespace": "team-b", "sandbox": "s1"}},
		{"sandbox.metrics.get", map[string]any{"namespace": "team-b"}},
		{"sandbox.repl.run", map[string]any{"namespace": "team-b", "sandbox": "s1", "language": "python", "code": "1"}},
		{"sandbox.command.run", map[string]any{"namespace": "team-b", "sandbox": "s1", "command": "true"}},
	} {
		srv.wantError(team, m.method, m.params, 403, -32004, `cannot access namespace "team-b"`)
	}
	srv.wantError(all, "sandbox.start", map[string]any{"namespace": "*", "sandbox": "s1"}, 200, -32602, `only allowed in sandbox.metrics.get`)
	srv.wantError(all, "sandbox.start", map[string]any{"namespace": "bad/ns", "sandbox": "s1"}, 200, -32602, `invalid namespace name`)
	srv.wantError(all, "sandbox.start", map[string]any{"sandbox": "s1"}, 200, -32602, `"namespace" is required`)
	srv.wantError(all, "sandbox.start", map[string]any{"namespace": "a", "sandbox": "-x"}, 200, -32602, `invalid sandbox name`)

	if _, errOut, err := msb(t, home, "server", "keygen", "--namespace", "no/pe"); err == nil || !strings.Contains(errOut, `invalid namespace claim "no/pe"`) {
		t.Fatalf("keygen with a bad namespace: %v %s", err, errOut)
	}
	if _, errOut, err := msb(t, home, "server", "keygen", "--expire", "1.5h"); err == nil || !strings.Contains(errOut, "mo (30 days)") {
		t.Fatalf("keygen with a bad expiry: %v %s", err, errOut)
	}
}

func TestRestartAndResetKey(t *testing.T) {
	t.Parallel()
	home := newHome(t)
	srv := startServer(t, home)
	key := keygen(t, home)
	srv.allowed(key, "default")
	srv.Stop()

	fi, err := os.Stat(filepath.Join(home, "server.key"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("server.key mode: %v %v, want 0600", fi.Mode(), err)
	}
	if fi, err := os.Stat(filepath.Join(home, "msb.db")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("msb.db mode: %v %v, want 0600", fi.Mode(), err)
	}
	if _, err := os.Stat(filepath.Join(home, "server.pid")); !os.IsNotExist(err) {
		t.Fatalf("pid file left after a clean stop: %v", err)
	}

	srv = startServer(t, home)
	srv.allowed(key, "default") // restart keeps keys valid
	srv.Stop()

	srv = startServer(t, home, "--reset-key")
	srv.unauthorized(key, "invalid API key")
	fresh := keygen(t, home)
	srv.allowed(fresh, "default")
	list, _, _ := msb(t, home, "server", "keys", "list")
	if !strings.Contains(list, "invalid (signing key reset)") {
		t.Fatalf("keys list does not show the old key as invalid:\n%s", list)
	}
}

func TestServerLifecycle(t *testing.T) {
	t.Parallel()
	home := newHome(t)
	srv := startProcess(t, home)
	keygen(t, home)

	// A second start while one runs is refused.
	_, errOut, err := msb(t, home, "server", "start", "--port", "0")
	if err == nil || !strings.Contains(errOut, "already running") {
		t.Fatalf("second start: %v %q", err, errOut)
	}
	out, _, err := msb(t, home, "server", "status")
	if err != nil || !strings.Contains(out, "running") || !strings.Contains(out, srv.URL) ||
		!strings.Contains(out, "authentication: required") || !strings.Contains(out, "active keys:    1") {
		t.Fatalf("status: %v\n%s", err, out)
	}
	out, _, err = msb(t, home, "server", "stop")
	if err != nil || !strings.Contains(out, "stopped") {
		t.Fatalf("stop: %v %s", err, out)
	}
	select {
	case <-srv.exited:
	case <-time.After(10 * time.Second):
		t.Fatal("server still running after msb server stop")
	}
	out, _, _ = msb(t, home, "server", "status")
	if !strings.Contains(out, "not running") {
		t.Fatalf("status after stop:\n%s", out)
	}

	// Detached start and stop, however --detach is spelled: the server it
	// starts must not detach again.
	for _, flag := range []string{"--detach", "--detach=1"} {
		out, errOut, err = msb(t, home, "server", "start", flag, "--port", "0")
		if err != nil || !strings.Contains(out, "running in the background") {
			t.Fatalf("%s: %v %s %s", flag, err, out, errOut)
		}
		if out, _, err := msb(t, home, "server", "stop"); err != nil {
			t.Fatalf("stop detached: %v %s", err, out)
		}
	}

	// --key already replaces the signing key: with --reset-key it is refused.
	_, errOut, err = msb(t, home, "server", "start", "--port", "0", "--key", strings.Repeat("k", 40), "--reset-key")
	if err == nil || !strings.Contains(errOut, "cannot be combined") {
		t.Fatalf("--key with --reset-key: %v %q", err, errOut)
	}
}

func TestDevMode(t *testing.T) {
	t.Parallel()
	home := newHome(t)
	srv := startServer(t, home, "--dev")
	if !strings.Contains(srv.out.String(), "authentication is OFF") {
		t.Fatalf("dev mode start printed no warning:\n%s", srv.out)
	}
	srv.allowed("", "any-namespace")
	out, _, _ := msb(t, home, "server", "status")
	if !strings.Contains(out, "development mode") {
		t.Fatalf("status in dev mode:\n%s", out)
	}
	srv.Stop()
	_, errOut, err := msb(t, home, "server", "start", "--dev", "--host", "0.0.0.0", "--port", "0")
	if err == nil || !strings.Contains(errOut, "loopback") {
		t.Fatalf("dev mode on 0.0.0.0: %v %q", err, errOut)
	}
}
