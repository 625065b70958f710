package main_test

// Sandboxes' outbound network through the real server and real sandboxes.
// The outside world is networktest's: a namespace this test makes, behind
// a veth, with documentation addresses and an HTTP/HTTPS server and a DNS
// server of its own. The server is configured to resolve with that DNS
// server only, and to send every connection it makes for a sandbox out of
// the test's veth (network.interface): nothing a sandbox does here can
// reach past this machine, whatever the policy said.

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/msb-dev/msb/sandbox/network/networktest"
)

// netHome makes a home whose server resolves and dials for sandboxes in
// the world w only, with extra appended to its config.toml (settings of
// [network], then other tables).
func netHome(t testing.TB, w *networktest.World, extra string) string {
	t.Helper()
	home := homeWith(t, fmt.Sprintf("[network]\ndns = [%q]\ninterface = %q\n", w.DNS().String(), w.HostIf)+extra)
	return home
}

// fetchScript is Python that fetches URL (with the Host header HOST, if
// not empty, and trusting the world's certificate for https) and prints
// "OK <body>" or "ERR <what failed>".
const fetchScript = `
import socket, ssl, sys, urllib.parse
url, host, ca = sys.argv[1], sys.argv[2], sys.argv[3]
u = urllib.parse.urlsplit(url)
name = host or u.hostname
try:
    s = socket.create_connection((u.hostname, u.port or (443 if u.scheme == "https" else 80)), timeout=10)
    if u.scheme == "https":
        ctx = ssl.create_default_context(cadata=ca)
        ctx.check_hostname = False
        s = ctx.wrap_socket(s, server_hostname=name)
    s.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (u.path or "/", name)).encode())
    data = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        data += b
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        print("ERR status", head[:40])
    else:
        print("OK", body.decode().strip())
except Exception as e:
    print("ERR", type(e).__name__, e)
`

// fetch runs fetchScript in the sandbox.
func (b *sb) fetch(w *networktest.World, url, host string) string {
	b.srv.t.Helper()
	r := b.run("/usr/bin/python3", "-c", fetchScript, url, host, string(w.CertPEM))
	return strings.TrimSpace(text(r.Output, ""))
}

type netMetrics struct {
	Sandboxes []struct {
		Name    string `json:"name"`
		Running bool   `json:"running"`
		Network *struct {
			Connections uint64 `json:"connections"`
			Active      int64  `json:"active"`
			Denied      uint64 `json:"denied"`
			BytesIn     uint64 `json:"bytes_in"`
			BytesOut    uint64 `json:"bytes_out"`
			DNSQueries  uint64 `json:"dns_queries"`
		} `json:"network"`
	} `json:"sandboxes"`
}

func TestSandboxNetwork(t *testing.T) {
	t.Parallel()
	w := networktest.New(t)
	home := netHome(t, w, "")
	srv := startServer(t, home)
	key := keygen(t, home)
	allowed := func(s string) string { return "http://" + w.Allowed.String() + s }

	// Default: no network. Only loopback, no route, names fail at once.
	plain := srv.sandbox(key, "net", "plain", map[string]any{})
	if out := text(plain.run("cat", "/proc/net/dev").Output, ""); strings.Contains(out, "eth0") || !strings.Contains(out, "lo:") {
		t.Errorf("devices of a sandbox without network:\n%s", out)
	}
	if out := text(plain.run("cat", "/proc/net/route").Output, ""); strings.Count(strings.TrimSpace(out), "\n") != 0 {
		t.Errorf("routes of a sandbox without network:\n%s", out)
	}
	start := time.Now()
	if got := plain.fetch(w, "http://allowed.test/", ""); !strings.HasPrefix(got, "ERR") {
		t.Errorf("fetch without network: %s", got)
	}
	if got := plain.fetch(w, allowed("/"), ""); !strings.HasPrefix(got, "ERR") {
		t.Errorf("fetch by address without network: %s", got)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("failing without network took %v", d)
	}

	// allowed.test and *.allowed.test on 80 and 443; evil.test never.
	box := srv.sandbox(key, "net", "box", map[string]any{"network": map[string]any{
		"enabled": true, "allow": []string{"allowed.test:80", "*.allowed.test:80,443"}, "deny": []string{"evil.test"}}})
	if out := text(box.run("cat", "/proc/net/route").Output, ""); !strings.Contains(out, "eth0") {
		t.Errorf("no route through eth0:\n%s", out)
	}
	for _, c := range []struct {
		what, url, host, want string
	}{
		{"allowed name", "http://allowed.test/", "", "OK host=allowed.test "},
		{"allowed wildcard over TLS", "https://api.allowed.test/", "", "OK host=api.allowed.test "},
		{"allowed address with its name", allowed("/"), "allowed.test", "OK host=allowed.test "},
		{"denied name", "http://evil.test/", "", "ERR gaierror"}, // NXDOMAIN from msb's DNS
		{"denied address by its name", "http://" + w.Evil.String() + "/", "evil.test", "ERR ConnectionResetError"},
		{"unlisted address", "http://" + w.Plain.String() + "/", "", "ERR ConnectionResetError"},
		{"allowed address with a denied name", allowed("/"), "evil.test", "ERR ConnectionResetError"},
		{"allowed name to another address", "http://" + w.Evil.String() + "/", "allowed.test", "ERR ConnectionResetError"},
		{"allowed address, denied name in SNI", "https://" + w.Allowed.String() + "/", "evil.test", "ERR ConnectionResetError"},
		{"allowed name, other port", "http://allowed.test:2222/", "", "ERR ConnectionResetError"},
		{"metadata service", "http://169.254.169.254/", "", "ERR ConnectionRefusedError"}, // refused at the SYN, nothing dialed
		{"a name of the metadata service", "http://meta.allowed.test/", "", "ERR ConnectionRefusedError"},
		{"private address", "http://10.1.2.3/", "", "ERR ConnectionRefusedError"},
		{"the host", "http://" + w.HostAddr.String() + "/", "", "ERR ConnectionRefusedError"},
	} {
		if got := box.fetch(w, c.url, c.host); !strings.HasPrefix(got, c.want) {
			t.Errorf("%s (%s, Host %q): %s, want %s", c.what, c.url, c.host, got, c.want)
		}
	}
	var m netMetrics
	srv.mustCall(key, "sandbox.metrics.get", box.params(nil), &m)
	if n := m.Sandboxes[0].Network; n == nil || n.Connections < 3 || n.Denied < 8 || n.BytesIn == 0 || n.BytesOut == 0 || n.DNSQueries == 0 {
		t.Errorf("network metrics: %+v", n)
	}
	var pm netMetrics
	srv.mustCall(key, "sandbox.metrics.get", plain.params(nil), &pm)
	if pm.Sandboxes[0].Network != nil {
		t.Errorf("network metrics of a sandbox without network: %+v", pm.Sandboxes[0].Network)
	}

	// The refusals are in the audit log, at most one a second per sandbox.
	var events struct {
		Events []struct {
			Method, Sandbox, Outcome, Detail, Namespace string
		} `json:"events"`
	}
	waitFor(t, func() bool {
		srv.mustCall(key, "audit.list", map[string]any{"namespace": "net"}, &events)
		n := 0
		for _, e := range events.Events {
			if e.Method == "sandbox.network" && e.Sandbox == "box" && e.Outcome == "refused" && strings.HasPrefix(e.Detail, "network refused: ") {
				n++
			}
		}
		return n >= 2
	})

	// A change on the running sandbox takes effect at once: evil.test
	// allowed, allowed.test no more.
	var up struct {
		Sandbox string `json:"sandbox"`
		Running bool   `json:"running"`
		Network struct {
			Enabled bool     `json:"enabled"`
			Allow   []string `json:"allow"`
		} `json:"network"`
	}
	srv.mustCall(key, "sandbox.network.update", box.params(map[string]any{"network": map[string]any{"allow": []string{"evil.test:80"}}}), &up)
	if !up.Running || !up.Network.Enabled || strings.Join(up.Network.Allow, ",") != "evil.test:80" {
		t.Errorf("update result %+v", up)
	}
	if got := box.fetch(w, "http://evil.test/", ""); !strings.HasPrefix(got, "OK host=evil.test ") {
		t.Errorf("evil.test after the update: %s", got)
	}
	if got := box.fetch(w, "http://allowed.test/", ""); !strings.HasPrefix(got, "ERR") {
		t.Errorf("allowed.test after the update: %s", got)
	}
	// It is kept: stopped and started without a config, the sandbox has it.
	box.stop()
	srv.mustCall(key, "sandbox.start", box.params(nil), nil)
	if got := box.fetch(w, "http://evil.test/", ""); !strings.HasPrefix(got, "OK host=evil.test ") {
		t.Errorf("evil.test after a restart: %s", got)
	}
	// Off, on the running sandbox: the device goes. The kernel removes it
	// once the last descriptor of it closes, and a process the server
	// forks at that moment (the helper that makes a new id range's user
	// namespace, when the pool refills) holds a copy until its exec, so
	// allow it a moment.
	srv.mustCall(key, "sandbox.network.update", box.params(map[string]any{"network": map[string]any{"enabled": false}}), &up)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		out := text(box.run("cat", "/proc/net/dev").Output, "")
		if !strings.Contains(out, "eth0") {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("eth0 5s after turning the network off:\n%s", out)
			break
		}
	}
	if got := box.fetch(w, "http://evil.test/", ""); !strings.HasPrefix(got, "ERR") {
		t.Errorf("evil.test with the network off: %s", got)
	}
	// Malformed updates.
	srv.wantError(key, "sandbox.network.update", box.params(map[string]any{"network": map[string]any{"allow": []string{"*.*.test"}}}), 200, -32602, "network.allow")
	srv.wantError(key, "sandbox.network.update", box.params(nil), 200, -32602, `"network" is required`)
	srv.wantError(key, "sandbox.network.update", map[string]any{"namespace": "net", "sandbox": "nosuch", "network": map[string]any{}}, 200, -32003, "not found")
}

// What the operator allows a namespace bounds what its sandboxes ask,
// at start and at every update; some namespaces get no network at all.
func TestSandboxNetworkCeilings(t *testing.T) {
	t.Parallel()
	w := networktest.New(t)
	home := netHome(t, w, `max_connections = 4
[network.namespaces.tight]
allow = ["allowed.test:80", "*.allowed.test:443"]
default_enabled = true
[network.namespaces.closed]
permitted = false
`)
	srv := startServer(t, home)
	key := keygen(t, home)
	start := func(ns, name string, n map[string]any) map[string]any {
		return map[string]any{"namespace": ns, "sandbox": name, "config": map[string]any{"network": n}}
	}
	for _, n := range []map[string]any{
		{"enabled": true, "allow": []string{"*"}},
		{"allow": []string{"evil.test:80"}},
		{"allow": []string{"allowed.test"}}, // every port
	} {
		srv.wantError(key, "sandbox.start", start("tight", "greedy", n), 403, -32004, `namespace "tight" may reach`)
	}
	srv.wantError(key, "sandbox.start", start("tight", "greedy", map[string]any{"max_connections": 5}), 403, -32004, "max_connections 5")
	srv.wantError(key, "sandbox.start", start("closed", "box", map[string]any{"enabled": true}), 403, -32004, "may not have network")
	srv.sandbox(key, "closed", "offline", map[string]any{})

	// tight is on by default, with its ceiling as its list.
	box := srv.sandbox(key, "tight", "box", map[string]any{})
	if got := box.fetch(w, "http://allowed.test/", ""); !strings.HasPrefix(got, "OK host=allowed.test ") {
		t.Errorf("default network of tight: %s", got)
	}
	if got := box.fetch(w, "http://evil.test/", ""); !strings.HasPrefix(got, "ERR") {
		t.Errorf("evil.test from tight: %s", got)
	}
	srv.wantError(key, "sandbox.network.update", box.params(map[string]any{"network": map[string]any{"allow": []string{"evil.test:80"}}}), 403, -32004, `namespace "tight" may reach`)
	if got := box.fetch(w, "http://allowed.test/", ""); !strings.HasPrefix(got, "OK host=allowed.test ") {
		t.Errorf("after a refused update: %s", got)
	}
	// The connection cap: the sandbox holds four connections, the fifth
	// is refused.
	hold := `
import socket, sys
conns = [socket.create_connection(("allowed.test", 80), timeout=5) for _ in range(4)]
try:
    socket.create_connection(("allowed.test", 80), timeout=5).recv(1)
    print("fifth connected")
except Exception as e:
    print("fifth refused", type(e).__name__)
`
	if out := text(box.run("/usr/bin/python3", "-c", hold).Output, ""); !strings.Contains(out, "fifth refused") {
		t.Errorf("connection cap: %s", out)
	}
	// A key of one namespace cannot change another's sandboxes.
	tightKey := keygen(t, home, "--namespace", "tight")
	srv.wantError(tightKey, "sandbox.network.update", map[string]any{"namespace": "closed", "sandbox": "offline", "network": map[string]any{}}, 403, -32004, "closed")
}

// Port forwards reach a sandbox's own loopback, with network and without.
func TestSandboxNetworkAndPorts(t *testing.T) {
	t.Parallel()
	w := networktest.New(t)
	home := netHome(t, w, "")
	srv := startServer(t, home)
	key := keygen(t, home)
	for _, c := range []struct {
		name    string
		network map[string]any
	}{
		{"without", nil},
		{"with", map[string]any{"enabled": true, "allow": []string{"allowed.test:80"}}},
	} {
		port := freePort(t)
		cfg := map[string]any{"ports": []string{fmt.Sprintf("%d:8000", port)}, "exec": "/usr/bin/python3 -m http.server 8000 --bind 127.0.0.1 --directory /etc"}
		if c.network != nil {
			cfg["network"] = c.network
		}
		box := srv.sandbox(key, "ports", "web-"+c.name, cfg)
		url := fmt.Sprintf("http://127.0.0.1:%d/hostname", port)
		var body string
		deadline := time.Now().Add(15 * time.Second)
		for {
			resp, err := http.Get(url)
			if err == nil {
				data, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if body = string(data); resp.StatusCode == 200 {
					break
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s network: GET %s through the forward: %v %q", c.name, url, err, body)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if body != "web-"+c.name+"\n" {
			t.Errorf("%s network: body %q", c.name, body)
		}
		if c.network != nil {
			if got := box.fetch(w, "http://allowed.test/", ""); !strings.HasPrefix(got, "OK host=allowed.test ") {
				t.Errorf("outbound next to a port forward: %s", got)
			}
		}
		box.stop()
	}
}
