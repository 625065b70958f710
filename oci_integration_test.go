package main_test

// OCI images, volumes and port forwards through the real server: images
// are built in the test and pushed to a registry on loopback.

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/msb-dev/msb/sandbox/sandboxtest"
)

// busyboxImage pushes a three-layer image: busybox; files; whiteouts and an
// opaque directory over them. Its config sets env, workdir and nothing else.
func busyboxImage(t *testing.T, reg *sandboxtest.Registry, repoTag string, cfg v1.Config, extra ...sandboxtest.Entry) (string, []v1.Layer) {
	t.Helper()
	files := sandboxtest.Layer(t,
		sandboxtest.Dir("etc"),
		sandboxtest.File("etc/kept", "kept by the image\n", 0o644),
		sandboxtest.File("etc/gone", "deleted by a whiteout\n", 0o644),
		sandboxtest.Dir("opq"),
		sandboxtest.File("opq/old", "hidden by an opaque dir\n", 0o644),
		sandboxtest.Dir("www"),
		sandboxtest.File("www/index.html", "hello from the sandbox\n", 0o644),
	)
	top := sandboxtest.Layer(t, append([]sandboxtest.Entry{
		sandboxtest.Whiteout("etc/gone"),
		sandboxtest.Opaque("opq"),
		sandboxtest.File("opq/new", "new\n", 0o644),
	}, extra...)...)
	layers := []v1.Layer{sandboxtest.BusyboxLayer(t), files, top}
	return reg.Push(t, repoTag, sandboxtest.Image(t, cfg, layers...)), layers
}

func digestOf(t *testing.T, l v1.Layer) string {
	d, err := l.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

func TestOCIImageSandbox(t *testing.T) {
	t.Parallel()
	reg := sandboxtest.NewRegistry(t)
	ref, layers := busyboxImage(t, reg, "test/busybox:1", v1.Config{
		Env:        []string{"FROM_IMAGE=yes", "OVERRIDDEN=image", "PATH=/bin"},
		WorkingDir: "/srv/app",
	})
	home := newHome(t)
	srv := startProcess(t, home)
	key := keygen(t, home)

	t0 := time.Now()
	box := srv.sandbox(key, "oci", "bb", map[string]any{"image": ref, "envs": []string{"OVERRIDDEN=user"}})
	t.Logf("timing: cold pull + start of a 3-layer busybox image: %v", time.Since(t0))

	out := box.sh("cat /etc/kept; ls /etc; ls /opq; pwd; echo FROM_IMAGE=$FROM_IMAGE OVERRIDDEN=$OVERRIDDEN; id -u; ls /usr 2>&1 || true")
	all := text(out.Output, "")
	for _, want := range []string{"kept by the image", "new", "/srv/app", "FROM_IMAGE=yes OVERRIDDEN=user", "\n0\n"} {
		if !strings.Contains(all, want) {
			t.Errorf("sandbox output lacks %q:\n%s", want, all)
		}
	}
	for _, unwanted := range []string{"gone", "old", "python"} {
		if strings.Contains(all, unwanted) {
			t.Errorf("sandbox sees %q (whiteout, opaque dir or host userland leaked):\n%s", unwanted, all)
		}
	}
	// The image's layers are read-only underneath; writes land in the
	// sandbox's own layer and never reach the cached layer.
	if r := box.sh("echo changed > /etc/kept && rm /bin/ls && cat /etc/kept"); r.ExitCode != 0 || !strings.Contains(text(r.Output, "stdout"), "changed") {
		t.Errorf("writing over image files: %+v", r)
	}
	cached, _ := filepath.Glob(filepath.Join(home, "images", "layers", "*", "etc", "kept"))
	for _, c := range cached {
		if data, _ := os.ReadFile(c); string(data) != "kept by the image\n" {
			t.Errorf("the sandbox changed the cached layer %s: %q", c, data)
		}
	}

	// No python in busybox: the error names the image and the interpreter.
	srv.wantError(key, "sandbox.repl.run", box.params(map[string]any{"language": "python", "code": "print(1)"}), 200, -32602, "python")
	_, r := srv.call(key, "sandbox.repl.run", box.params(map[string]any{"language": "python", "code": "print(1)"}))
	if r.Error == nil || !strings.Contains(r.Error.Message, ref) {
		t.Errorf("missing interpreter error does not name the image: %+v", r.Error)
	}

	// A second sandbox starts from the cache: no layer downloaded again.
	gets := reg.BlobGets(digestOf(t, layers[0]))
	t1 := time.Now()
	box2 := srv.sandbox(key, "oci", "bb2", map[string]any{"image": ref})
	t.Logf("timing: start of a cached image: %v", time.Since(t1))
	if n := reg.BlobGets(digestOf(t, layers[0])); n != gets {
		t.Errorf("cached layer downloaded again (%d -> %d)", gets, n)
	}
	if r := box2.sh("cat /etc/kept"); !strings.Contains(text(r.Output, "stdout"), "kept by the image") {
		t.Errorf("second sandbox sees the first one's writes: %+v", r)
	}

	// The CLI lists it.
	list, _, err := msb(t, home, "image", "list")
	if err != nil || !strings.Contains(list, ref) || !strings.Contains(list, "sha256:") {
		t.Errorf("msb image list: %v\n%s", err, list)
	}

	box.stop()
	box2.stop()
	assertNoLeftovers(t, home)

	// Offline: with the registry gone the cached image still starts; an
	// uncached one says the registry cannot be reached.
	reg.Close()
	box3 := srv.sandbox(key, "oci", "offline", map[string]any{"image": ref})
	if r := box3.run("cat", "/etc/kept"); r.ExitCode != 0 {
		t.Errorf("offline sandbox: %+v", r)
	}
	srv.wantError(key, "sandbox.start", map[string]any{"namespace": "oci", "sandbox": "x", "config": map[string]any{"image": reg.Host + "/test/never:1"}}, 200, -32603, "cannot reach the registry")

	// A server killed with a sandbox running leaves no mount on the host:
	// the overlay lived in the sandbox's own mount namespace. The next
	// server cleans up the rest.
	srv.Kill9()
	mounts, _ := os.ReadFile("/proc/thread-self/mountinfo")
	if strings.Contains(string(mounts), filepath.Join(home, "sandboxes")) {
		t.Errorf("a sandbox's mount is on the host after a crash:\n%s", grepLines(string(mounts), home))
	}
	startServer(t, home)
	assertNoLeftovers(t, home)
}

func TestOCIImageUserAndPullOnce(t *testing.T) {
	t.Parallel()
	reg := sandboxtest.NewRegistry(t)
	ref, layers := busyboxImage(t, reg, "test/user:1", v1.Config{User: "app", Env: []string{"PATH=/bin"}})
	reg.SlowBlobs(300 * time.Millisecond)
	home := newHome(t)
	srv := startServer(t, home)
	key := keygen(t, home)

	var wg sync.WaitGroup
	for _, name := range []string{"one", "two"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			srv.call(key, "sandbox.start", map[string]any{"namespace": "once", "sandbox": name, "config": map[string]any{"image": ref}})
		}()
	}
	wg.Wait()
	for _, l := range layers {
		if n := reg.BlobGets(digestOf(t, l)); n != 1 {
			t.Errorf("layer %s downloaded %d times for two concurrent starts, want 1", digestOf(t, l), n)
		}
	}
	for _, name := range []string{"one", "two"} {
		b := &sb{srv: srv, key: key, ns: "once", name: name}
		r := b.sh("id -u; id -g; id -G; echo $HOME; pwd; touch here && echo wrote")
		if got := text(r.Output, "stdout"); got != "1000\n1000\n1000 2000\n/home/app\n/workspace\nwrote\n" {
			t.Errorf("%s as the image's user: %q %+v", name, got, r)
		}
		// In its user namespace, the image's user is its range's 1000 on
		// the host.
		f := strings.Fields(text(b.sh("cat /proc/self/uid_map").Output, "stdout"))
		if len(f) != 3 || f[0] != "0" || f[2] != "65536" {
			t.Fatalf("%s: uid_map %q", name, f)
		}
		base, _ := strconv.Atoi(f[1])
		owner := -1
		for _, pid := range sandboxPids(home) {
			m, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "uid_map"))
			if g := strings.Fields(string(m)); len(g) == 3 && g[1] == f[1] {
				if fi, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid), "root", "workspace", "here")); err == nil {
					owner = int(fi.Sys().(*syscall.Stat_t).Uid)
					break
				}
			}
		}
		if base < 165536 || owner != base+1000 {
			t.Errorf("%s: a file of the image's user 1000 is owned on the host by %d, want %d+1000", name, owner, base)
		}
		b.stop()
	}
	assertNoLeftovers(t, home)
}

func TestOCITamperedImageRefused(t *testing.T) {
	t.Parallel()
	reg := sandboxtest.NewRegistry(t)
	ref, layers := busyboxImage(t, reg, "test/tampered:1", v1.Config{})
	reg.Tamper(digestOf(t, layers[1]))
	home := newHome(t)
	srv := startServer(t, home)
	key := keygen(t, home)
	srv.wantError(key, "sandbox.start", map[string]any{"namespace": "t", "sandbox": "x", "config": map[string]any{"image": ref}}, 200, -32602, "failed verification")
	out, _, _ := msb(t, home, "image", "list")
	if strings.Contains(out, ref) {
		t.Errorf("tampered image listed:\n%s", out)
	}
	if _, errOut, err := msb(t, home, "pull", reg.Host+"/test/missing:1"); err == nil || !strings.Contains(errOut, "was not found") {
		t.Errorf("msb pull of a missing tag: %v %s", err, errOut)
	}
	assertNoLeftovers(t, home)
}

func TestImageCLI(t *testing.T) {
	t.Parallel()
	reg := sandboxtest.NewRegistry(t)
	ref, _ := busyboxImage(t, reg, "test/cli:1", v1.Config{})
	home := newHome(t)
	out, errOut, err := msb(t, home, "pull", ref)
	if err != nil || !strings.Contains(out, "sha256:") || !strings.Contains(errOut, "layers 3/3") {
		t.Fatalf("msb pull: %v\nstdout: %s\nstderr: %s", err, out, errOut)
	}
	if out, _, err := msb(t, home, "image", "rm", ref); err != nil || !strings.Contains(out, "removed") {
		t.Errorf("msb image rm: %v %s", err, out)
	}
	out, _, err = msb(t, home, "image", "prune")
	if err != nil || !strings.Contains(out, "deleted 3 unused layers") {
		t.Errorf("msb image prune: %v %s", err, out)
	}
	if layers, _ := os.ReadDir(filepath.Join(home, "images", "layers")); len(layers) != 0 {
		t.Errorf("layers left after prune: %v", layers)
	}
}

func TestVolumes(t *testing.T) {
	t.Parallel()
	home := newHome(t)
	srv := startServer(t, home)
	key := keygen(t, home)
	roots := filepath.Join(home, "volumes")
	if err := os.MkdirAll(filepath.Join(roots, "team-a", "shared"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(roots, "team-a", "shared", "in.txt"), []byte("from the host\n"), 0o644)
	os.MkdirAll(filepath.Join(roots, "team-b", "secret"), 0o755)
	os.WriteFile(filepath.Join(roots, "team-b", "secret", "key"), []byte("team-b only"), 0o600)

	box := srv.sandbox(key, "team-a", "vol", map[string]any{"volumes": []string{"data:/data", "shared:/shared:ro"}})
	r := box.sh("echo written > /data/out.txt && cat /shared/in.txt && (echo x > /shared/nope) 2>&1; echo rc=$?")
	got := text(r.Output, "")
	if !strings.Contains(got, "from the host") || !strings.Contains(got, "Read-only file system") {
		t.Errorf("volumes: %s", got)
	}
	if data, err := os.ReadFile(filepath.Join(roots, "team-a", "data", "out.txt")); err != nil || string(data) != "written\n" {
		t.Errorf("write through the volume: %q, %v", data, err)
	}
	if _, err := os.Stat(filepath.Join(roots, "team-a", "shared", "nope")); err == nil {
		t.Error("a :ro volume was written")
	}
	box.stop()
	if data, _ := os.ReadFile(filepath.Join(roots, "team-a", "data", "out.txt")); string(data) != "written\n" {
		t.Error("the volume's data went with the sandbox")
	}

	// Escapes, each refused with -32602 naming the rule.
	os.Symlink("/etc", filepath.Join(roots, "team-a", "abs-link"))
	os.Symlink("../team-b", filepath.Join(roots, "team-a", "rel-link"))
	os.Symlink("/", filepath.Join(roots, "team-a", "shared", "root-link"))
	for _, c := range []struct{ volume, want string }{
		{"../team-b:/x", `may not contain ".."`},
		{"data/../../team-b:/x", `may not contain ".."`},
		{"/etc:/x", "outside the volume roots"},
		{filepath.Join(roots, "team-b", "secret") + ":/x", "outside the volume roots"},
		{roots + ":/x", "outside the volume roots"},
		{"abs-link:/x", "symlink"},
		{"rel-link/secret:/x", "symlink"},
		{"shared/root-link/etc:/x", "symlink"},
		{"data:relative", "must be absolute"},
		{"data:/proc/x", "reserved"},
		{"data:/x:rx", "ro or rw"},
	} {
		srv.wantError(key, "sandbox.start", map[string]any{"namespace": "team-a", "sandbox": "esc", "config": map[string]any{"volumes": []string{c.volume}}}, 200, -32602, c.want)
	}
	// A key scoped to team-a cannot even name team-b.
	scoped := keygen(t, home, "--namespace", "team-a")
	srv.wantError(scoped, "sandbox.start", map[string]any{"namespace": "team-b", "sandbox": "v", "config": map[string]any{"volumes": []string{"secret:/s"}}}, 403, -32004, "")
	assertNoLeftovers(t, home)
}

func freePort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func TestPortForward(t *testing.T) {
	t.Parallel()
	reg := sandboxtest.NewRegistry(t)
	ref, _ := busyboxImage(t, reg, "test/httpd:1", v1.Config{Env: []string{"PATH=/bin"}})
	home := newHome(t)
	srv := startProcess(t, home)
	key := keygen(t, home)
	port := freePort(t)

	box := srv.sandbox(key, "web", "httpd", map[string]any{
		"image": ref,
		"ports": []string{fmt.Sprintf("%d:8080", port)},
		"exec":  "httpd -f -p 127.0.0.1:8080 -h /www",
	})
	url := fmt.Sprintf("http://127.0.0.1:%d/index.html", port)
	var body string
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			data, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(data)
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s through the forward: %v %q", url, err, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if body != "hello from the sandbox\n" {
		t.Errorf("body = %q", body)
	}
	// The same host port again: in use.
	srv.wantError(key, "sandbox.start", map[string]any{"namespace": "web", "sandbox": "other", "config": map[string]any{"ports": []string{fmt.Sprintf("%d:80", port)}}}, 200, -32001, "in use")
	// Privileged host ports need the operator.
	srv.wantError(key, "sandbox.start", map[string]any{"namespace": "web", "sandbox": "other", "config": map[string]any{"ports": []string{"80:80"}}}, 200, -32602, "allow_privileged_ports")

	box.stop()
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatalf("host port not free after stop: %v", err)
	}
	ln.Close()

	// After a crash the next server starts the sandbox on the same port.
	srv.mustCall(key, "sandbox.start", map[string]any{"namespace": "web", "sandbox": "httpd"}, nil)
	srv.Kill9()
	srv = startServer(t, home)
	srv.mustCall(key, "sandbox.start", map[string]any{"namespace": "web", "sandbox": "httpd"}, nil)
	srv.Stop()
	assertNoLeftovers(t, home)
}

// TestPortFreedWhenSandboxDies kills a sandbox's init behind the server's
// back: its host port must be freed without a stop, for another sandbox to
// take, and the sandbox must start again afterwards.
func TestPortFreedWhenSandboxDies(t *testing.T) {
	t.Parallel()
	// No warm pool: a sandbox it is starting or taking back would be a
	// second process to tell from this one's, and a leftover for a moment.
	home := homeWith(t, "[pool]\nenabled = false\n")
	srv := startServer(t, home)
	key := keygen(t, home)
	port := freePort(t)
	ports := map[string]any{"ports": []string{fmt.Sprintf("%d:8080", port)}}
	box := srv.sandbox(key, "web", "fragile", ports)
	// Its one process.
	var pids []int
	waitFor(t, func() bool { pids = sandboxPids(home); return len(pids) == 1 })
	if err := syscall.Kill(pids[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// The server closes the port when it sees the init exit.
	waitFor(t, func() bool {
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			ln.Close()
		}
		return err == nil
	})
	other := srv.sandbox(key, "web", "other", ports)
	other.stop()
	srv.sandbox(key, "web", "fragile", ports)
	if r := box.run("true"); !r.Success {
		t.Errorf("after restart: %+v", r)
	}
	box.stop()
	assertNoLeftovers(t, home)
}

// BenchmarkImageStart measures, through the real server, sandbox.start of
// a busybox image (about 2 MiB in 2 layers) from a loopback registry: cold
// (the image removed and its layers pruned first, so the start pulls,
// verifies and unpacks it) and cached (start only). Each start is
// followed by a stop, outside the measurement; the p50s are reported in ms.
//
//	go test -run '^$' -bench ImageStart -benchtime 1x .
func BenchmarkImageStart(b *testing.B) {
	const n = 7
	reg := sandboxtest.NewRegistry(b)
	home := b.TempDir()
	srv := startServer(b, home)
	key := keygen(b, home)
	img := sandboxtest.Image(b, v1.Config{Env: []string{"PATH=/bin"}}, sandboxtest.BusyboxLayer(b),
		sandboxtest.Layer(b, sandboxtest.File("etc/motd", "bench\n", 0o644)))
	ref := reg.Push(b, "bench/busybox:1", img)
	timedStart := func(name string) time.Duration {
		t0 := time.Now()
		srv.mustCall(key, "sandbox.start", map[string]any{"namespace": "bench", "sandbox": name, "config": map[string]any{"image": ref}}, nil)
		d := time.Since(t0)
		srv.mustCall(key, "sandbox.stop", map[string]any{"namespace": "bench", "sandbox": name}, nil)
		return d
	}
	median := func(f func() time.Duration) time.Duration {
		d := make([]time.Duration, n)
		for i := range d {
			d[i] = f()
		}
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		return d[n/2]
	}
	for i := 0; i < b.N; i++ {
		cold := median(func() time.Duration {
			msb(b, home, "image", "rm", ref)
			msb(b, home, "image", "prune")
			return timedStart("cold")
		})
		cached := median(func() time.Duration { return timedStart("cached") })
		b.ReportMetric(ms(cold), "cold_pull+start_p50_ms")
		b.ReportMetric(ms(cached), "cached_start_p50_ms")
	}
}

// A key that may start sandboxes cannot make the server a port scanner or
// reach another tenant's forwarded port: a pull from a registry on
// loopback (or a private network) is refused unless the operator listed it.
func TestImagePullIsNotSSRF(t *testing.T) {
	t.Parallel()
	reg := sandboxtest.NewRegistry(t)
	ref, _ := busyboxImage(t, reg, "internal/admin:1", v1.Config{})
	pushed := reg.Requests()
	home := t.TempDir() // the default config: public registries only
	srv := startServer(t, home)
	key := keygen(t, home, "--scope", "sandbox:create")
	for _, image := range []string{ref, "127.0.0.1:22/internal/admin", "[::1]:22/x", "169.254.169.254/latest/meta-data"} {
		srv.wantError(key, "sandbox.start", map[string]any{"namespace": "ssrf", "sandbox": "x", "config": map[string]any{"image": image}},
			200, -32602, "registries in config.toml")
	}
	if n := reg.Requests() - pushed; n != 0 {
		t.Fatalf("the refused pulls sent the registry %d requests", n)
	}
}
