package linux_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox"
	"github.com/msb-dev/msb/sandbox/image"
	"github.com/msb-dev/msb/sandbox/network"
	"github.com/msb-dev/msb/sandbox/network/networktest"
)

// The engine attaches a sandbox's network before Start returns, counts it
// in Stats, changes, removes and adds it on the running sandbox, and
// closes it when the sandbox stops. The world is the test's own; the
// link dials only into it.
func TestNetwork(t *testing.T) {
	w := networktest.New(t)
	e, _ := newEngine(t, t.TempDir(), "msb-net")
	root, err := image.Host()
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var denied []network.Denial
	cfg := &network.Config{
		Policy:   network.MustParsePolicy(network.Deny, "allow "+w.Allowed.String()+":80"),
		Dialer:   w.Dialer(),
		Resolver: w.Resolver(),
		OnDeny: func(d network.Denial) {
			mu.Lock()
			denied = append(denied, d)
			mu.Unlock()
		},
	}
	ctx := context.Background()
	id, _ := sandbox.ParseID("net", "box")
	spec := sandbox.Spec{Root: root, Env: image.HostEnv(), Workdir: "/workspace", MemoryMiB: 128, CPUs: 1, Pids: 64, Network: cfg}
	if err := e.Create(ctx, id, spec); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Delete(context.Background(), id) })
	if err := e.Start(ctx, id); err != nil {
		t.Fatal(err)
	}
	get := func(ip string) string {
		t.Helper()
		script := fmt.Sprintf(`import socket
try:
    s = socket.create_connection((%q, 80), timeout=5)
    s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
    print(s.recv(100).split(b"\r\n")[0].decode())
except Exception as e:
    print(type(e).__name__)`, ip)
		r, err := e.Exec(ctx, id, sandbox.ExecRequest{Command: "/usr/bin/python3", Args: []string{"-c", script}})
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		for _, l := range r.Output {
			b.WriteString(l.Text)
		}
		return b.String()
	}
	devices := func() string {
		t.Helper()
		r, err := e.Exec(ctx, id, sandbox.ExecRequest{Command: "cat", Args: []string{"/proc/net/dev"}})
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		for _, l := range r.Output {
			b.WriteString(l.Text + "\n")
		}
		return b.String()
	}
	if got := get(w.Allowed.String()); got != "HTTP/1.0 200 OK" {
		t.Fatalf("allowed: %q", got)
	}
	if got := get(w.Evil.String()); got != "ConnectionRefusedError" {
		t.Errorf("denied: %q", got)
	}
	st, err := e.Stats(ctx, id)
	if err != nil || st.Network == nil || st.Network.Connections != 1 || st.Network.Denied != 1 || st.Network.BytesIn == 0 {
		t.Fatalf("stats %+v, %v", st.Network, err)
	}
	// Changed on the running sandbox.
	next := *cfg
	next.Policy = network.MustParsePolicy(network.Deny, "allow "+w.Evil.String()+":80")
	if err := e.SetNetwork(ctx, id, &next); err != nil {
		t.Fatal(err)
	}
	if got := get(w.Evil.String()); got != "HTTP/1.0 200 OK" {
		t.Errorf("after the change: %q", got)
	}
	// Removed, and added again.
	if err := e.SetNetwork(ctx, id, nil); err != nil {
		t.Fatal(err)
	}
	if d := devices(); strings.Contains(d, "eth0") {
		t.Errorf("devices after removing the network:\n%s", d)
	}
	if st, _ := e.Stats(ctx, id); st.Network != nil {
		t.Errorf("stats without network: %+v", st.Network)
	}
	if err := e.SetNetwork(ctx, id, cfg); err != nil {
		t.Fatal(err)
	}
	if got := get(w.Allowed.String()); got != "HTTP/1.0 200 OK" {
		t.Errorf("after adding it again: %q", got)
	}
	// Stopped: no network to change; started again: it has the last one.
	if err := e.Stop(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := e.SetNetwork(ctx, id, cfg); !errdefs.Is(err, errdefs.Conflict) {
		t.Errorf("SetNetwork on a stopped sandbox: %v", err)
	}
	if err := e.Start(ctx, id); err != nil {
		t.Fatal(err)
	}
	if d := devices(); !strings.Contains(d, "eth0") {
		t.Errorf("devices after a restart:\n%s", d)
	}
	other, _ := sandbox.ParseID("net", "nosuch")
	if err := e.SetNetwork(ctx, other, cfg); !errdefs.Is(err, errdefs.NotFound) {
		t.Errorf("SetNetwork on an unknown sandbox: %v", err)
	}
}
