package image_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox/image"
	"github.com/msb-dev/msb/sandbox/sandboxtest"
	"github.com/msb-dev/msb/storage"
)

func newStore(t *testing.T) *image.Store {
	t.Helper()
	return openStore(t, filepath.Join(t.TempDir(), "images"))
}

// openStore opens the image store in dir with its records in a real state
// database next to it, as a server or a CLI command of that home does.
func openStore(t *testing.T, dir string) *image.Store {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		t.Fatal(err)
	}
	db, err := storage.Open(context.Background(), filepath.Join(filepath.Dir(dir), "msb.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return openStoreWith(t, dir, db, []string{"127.0.0.1"}) // the test registries
}

func openStoreWith(t *testing.T, dir string, db *storage.DB, registries []string) *image.Store {
	t.Helper()
	regs, err := image.NewRegistries(registries)
	if err != nil {
		t.Fatal(err)
	}
	s, err := image.NewStore(dir, image.StoreOptions{Records: db, Registries: &regs})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// A pull is a request the server makes for a tenant: one aimed at a
// registry the operator did not list is refused before any connection,
// and addresses on loopback or private networks are refused on every
// connection, redirects included, unless listed.
func TestPullEgressIsChecked(t *testing.T) {
	t.Parallel()
	reg := sandboxtest.NewRegistry(t)
	ref := reg.Push(t, "internal/admin:1", sandboxtest.Image(t, v1.Config{}, sandboxtest.Layer(t, sandboxtest.File("f", "x", 0o644))))
	dir := filepath.Join(t.TempDir(), "images")
	os.MkdirAll(filepath.Dir(dir), 0o700)
	db, err := storage.Open(context.Background(), filepath.Join(filepath.Dir(dir), "msb.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })

	// Not listed (the defaults are public registries): refused, no request.
	pushed := reg.Requests()
	s := openStoreWith(t, dir, db, nil)
	if _, err := s.Pull(context.Background(), ref, nil); !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "registries in config.toml") {
		t.Fatalf("pull from an unlisted registry: %v", err)
	}
	// Listed by a wildcard only: its loopback address is still refused.
	s = openStoreWith(t, dir, db, []string{"*.0.0.1"})
	if _, err := s.Pull(context.Background(), ref, nil); !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("pull from a wildcard-listed loopback registry: %v", err)
	}
	if n := reg.Requests() - pushed; n != 0 {
		t.Fatalf("the refused pulls sent the registry %d requests", n)
	}

	// A listed registry on 127.0.0.2 whose blobs redirect to a name of
	// 127.0.0.1 (localhost), which is not listed: the redirect's dial is
	// refused. (go-containerregistry itself refuses redirects to private
	// IP literals; names are for msb's dialer to check.)
	target, _ := url.Parse(reg.URL())
	proxy := httputil.NewSingleHostReverseProxy(target)
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	front := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/blobs/") {
			http.Redirect(w, r, strings.Replace(reg.URL(), "127.0.0.1", "localhost", 1)+r.URL.Path, http.StatusTemporaryRedirect)
			return
		}
		proxy.ServeHTTP(w, r)
	})}
	go front.Serve(ln)
	t.Cleanup(func() { front.Close() })
	frontRef := strings.Replace(ref, reg.Host, ln.Addr().String(), 1)
	s = openStoreWith(t, dir, db, []string{"127.0.0.2"})
	if _, err := s.Pull(context.Background(), frontRef, nil); !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "localhost resolves to 127.0.0.1, a loopback address") {
		t.Fatalf("pull redirected to an unlisted loopback address: %v", err)
	}
	if n := reg.BlobGets(""); n != 0 {
		t.Fatalf("the redirect reached the unlisted address: %d blob downloads", n)
	}
	s.Prune() // the manifest's pull left nothing to keep
	// Listed explicitly: the same pull works.
	s = openStoreWith(t, dir, db, []string{"127.0.0.2", "localhost"})
	if _, err := s.Pull(context.Background(), frontRef, nil); err != nil {
		t.Fatalf("pull from listed registries: %v", err)
	}
}

func layerDigest(t *testing.T, l v1.Layer) string {
	t.Helper()
	d, err := l.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

// layered is a three-layer image: files, then whiteouts, an opaque
// directory and links, then a config with env, workdir and user.
func layered(t *testing.T) (v1.Image, []v1.Layer) {
	base := sandboxtest.Layer(t,
		sandboxtest.Dir("etc"),
		sandboxtest.File("etc/passwd", "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n", 0o644),
		sandboxtest.File("etc/group", "root:x:0:\napp:x:1000:\nextra:x:2000:app\n", 0o644),
		sandboxtest.File("etc/keep", "keep\n", 0o644),
		sandboxtest.File("etc/gone", "gone\n", 0o644),
		sandboxtest.Dir("opq"),
		sandboxtest.File("opq/old", "old\n", 0o644),
		sandboxtest.Entry{Name: "bin/suid", Body: "#!/bin/sh\n", Mode: 0o4755, UID: 1000, GID: 2000},
	)
	top := sandboxtest.Layer(t,
		sandboxtest.Whiteout("etc/gone"),
		sandboxtest.Opaque("opq"),
		sandboxtest.File("opq/new", "new\n", 0o600),
		sandboxtest.Symlink("etc/abs", "/etc/keep"),
		sandboxtest.Symlink("etc/rel", "keep"),
		sandboxtest.File("data/orig", "linked\n", 0o640),
		sandboxtest.Hardlink("data/hard", "data/orig"),
	)
	img := sandboxtest.Image(t, v1.Config{
		Env:        []string{"FROM_IMAGE=yes", "PATH=/bin"},
		WorkingDir: "/srv/app",
		User:       "app",
	}, base, top)
	return img, []v1.Layer{base, top}
}

func TestPullLayeredImage(t *testing.T) {
	t.Parallel()
	reg := sandboxtest.NewRegistry(t)
	img, layers := layered(t)
	ref := reg.Push(t, "test/layered:1", img)
	s := newStore(t)

	var last image.Progress
	rec, err := s.Pull(context.Background(), ref, func(p image.Progress) { last = p })
	if err != nil {
		t.Fatal(err)
	}
	if last.Layers != 2 || last.LayersDone != 2 || last.BytesDone != last.Bytes || last.Bytes == 0 {
		t.Errorf("last progress = %+v", last)
	}
	if rec.Name != ref || !strings.HasPrefix(rec.Digest, "sha256:") || len(rec.Layers) != 2 || rec.Size() == 0 {
		t.Errorf("record = %+v", rec)
	}
	simg, err := s.Image(rec, "")
	if err != nil {
		t.Fatal(err)
	}
	if simg.Workdir != "/srv/app" || simg.User.UID != 1000 || simg.User.GID != 1000 ||
		len(simg.User.AdditionalGids) != 1 || simg.User.AdditionalGids[0] != 2000 {
		t.Errorf("image = %+v", simg)
	}
	env := strings.Join(simg.Env, " ")
	if !strings.Contains(env, "FROM_IMAGE=yes") || !strings.Contains(env, "PATH=/bin") || !strings.Contains(env, "HOME=/home/app") {
		t.Errorf("env = %v", simg.Env)
	}

	// The layers in overlayfs form...
	top := simg.Root.Layers[1]
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(top, "etc/gone"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		t.Errorf("whiteout of etc/gone: %+v, %v", st, err)
	}
	buf := make([]byte, 8)
	if n, err := unix.Lgetxattr(filepath.Join(top, "opq"), "trusted.overlay.opaque", buf); err != nil || string(buf[:n]) != "y" {
		t.Errorf("opaque opq: %q, %v", buf[:n], err)
	}
	if err := unix.Lstat(filepath.Join(simg.Root.Layers[0], "bin/suid"), &st); err != nil || st.Mode&0o7777 != 0o4755 || st.Uid != 1000 || st.Gid != 2000 {
		t.Errorf("bin/suid: mode %o uid %d gid %d, %v", st.Mode&0o7777, st.Uid, st.Gid, err)
	}
	var a, b unix.Stat_t
	if unix.Lstat(filepath.Join(top, "data/orig"), &a) != nil || unix.Lstat(filepath.Join(top, "data/hard"), &b) != nil || a.Ino != b.Ino {
		t.Error("data/hard is not a hard link of data/orig")
	}

	// ...and what a sandbox sees through the overlay.
	merged := mountOverlay(t, simg.Root.Layers)
	for p, want := range map[string]string{"etc/keep": "keep\n", "opq/new": "new\n", "etc/abs": "", "etc/rel": "keep\n", "data/hard": "linked\n"} {
		data, err := os.ReadFile(filepath.Join(merged, p))
		if p == "etc/abs" { // absolute: points into the sandbox's root, not the host's
			if target, err := os.Readlink(filepath.Join(merged, p)); err != nil || target != "/etc/keep" {
				t.Errorf("etc/abs -> %q, %v", target, err)
			}
			continue
		}
		if err != nil || string(data) != want {
			t.Errorf("%s = %q, %v; want %q", p, data, err, want)
		}
	}
	for _, p := range []string{"etc/gone", "opq/old"} {
		if _, err := os.Lstat(filepath.Join(merged, p)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s is visible through the overlay (err %v): whiteout not honoured", p, err)
		}
	}

	// Pulled again: every layer is cached, nothing downloaded.
	before := reg.BlobGets(layerDigest(t, layers[0])) + reg.BlobGets(layerDigest(t, layers[1]))
	if _, err := s.Pull(context.Background(), ref, nil); err != nil {
		t.Fatal(err)
	}
	if after := reg.BlobGets(layerDigest(t, layers[0])) + reg.BlobGets(layerDigest(t, layers[1])); after != before {
		t.Errorf("second pull downloaded %d layer blobs", after-before)
	}
}

func mountOverlay(t *testing.T, layers []string) string {
	t.Helper()
	dir := t.TempDir()
	merged := filepath.Join(dir, "merged")
	os.Mkdir(merged, 0o755)
	lower := make([]string, len(layers))
	for i, l := range layers {
		lower[len(layers)-1-i] = l
	}
	if err := unix.Mount("overlay", merged, "overlay", unix.MS_RDONLY, "lowerdir="+strings.Join(lower, ":")); err != nil {
		t.Fatalf("mount overlay: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(merged, unix.MNT_DETACH) })
	return merged
}

func TestTamperedLayerIsRefused(t *testing.T) {
	t.Parallel()
	reg := sandboxtest.NewRegistry(t)
	good := sandboxtest.Layer(t, sandboxtest.File("a", strings.Repeat("a", 4096), 0o644))
	bad := sandboxtest.Layer(t, sandboxtest.File("b", strings.Repeat("b", 4096), 0o644))
	ref := reg.Push(t, "test/tampered:1", sandboxtest.Image(t, v1.Config{}, good, bad))
	reg.Tamper(layerDigest(t, bad))
	s := newStore(t)
	_, err := s.Pull(context.Background(), ref, nil)
	if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "failed verification") || !strings.Contains(err.Error(), layerDigest(t, bad)) {
		t.Fatalf("pull of a tampered image = %v; want a verification failure naming the layer", err)
	}
	bd, _ := bad.DiffID()
	if _, err := os.Stat(filepath.Join(s.Dir(), "layers", bd.Hex)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the tampered layer was cached: %v", err)
	}
	if tmp, _ := os.ReadDir(filepath.Join(s.Dir(), "tmp")); len(tmp) != 0 {
		t.Errorf("downloads left in tmp: %v", tmp)
	}
	if list, _ := s.List(); len(list) != 0 {
		t.Errorf("a tampered image was recorded: %+v", list)
	}
}

func TestCacheWorksOffline(t *testing.T) {
	t.Parallel()
	reg := sandboxtest.NewRegistry(t)
	ref := reg.Push(t, "test/offline:1", sandboxtest.Image(t, v1.Config{}, sandboxtest.Layer(t, sandboxtest.File("f", "x", 0o644))))
	s := newStore(t)
	if _, err := s.Get(context.Background(), ref); err != nil {
		t.Fatal(err)
	}
	reg.Close()
	rec, err := s.Get(context.Background(), ref)
	if err != nil {
		t.Fatalf("cached image with the registry down: %v", err)
	}
	if !rec.LastUsed.After(rec.Pulled) && !rec.LastUsed.Equal(rec.Pulled) {
		t.Errorf("last used %v before pulled %v", rec.LastUsed, rec.Pulled)
	}
	// By digest too.
	if _, err := s.Get(context.Background(), strings.Split(ref, ":1")[0]+"@"+rec.Digest); err != nil {
		t.Errorf("cached image by digest: %v", err)
	}
	_, err = s.Get(context.Background(), reg.Host+"/test/other:1")
	if !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), "cannot reach the registry") {
		t.Errorf("uncached image with the registry down = %v", err)
	}
}

func TestConcurrentGetsPullOnce(t *testing.T) {
	t.Parallel()
	reg := sandboxtest.NewRegistry(t)
	l := sandboxtest.Layer(t, sandboxtest.File("f", strings.Repeat("x", 100000), 0o644))
	ref := reg.Push(t, "test/once:1", sandboxtest.Image(t, v1.Config{}, l))
	reg.SlowBlobs(300 * time.Millisecond)
	s := newStore(t)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = s.Get(context.Background(), ref)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := reg.BlobGets(layerDigest(t, l)); n != 1 {
		t.Errorf("layer downloaded %d times by 4 concurrent starts, want 1", n)
	}
}

func TestPullErrors(t *testing.T) {
	t.Parallel()
	reg := sandboxtest.NewRegistry(t)
	img := sandboxtest.Image(t, v1.Config{}, sandboxtest.Layer(t, sandboxtest.File("f", "x", 0o644)))
	reg.Push(t, "test/app:1", img)
	other := reg.PushIndex(t, "test/foreign:1",
		sandboxtest.Platformed{Platform: v1.Platform{OS: "linux", Architecture: "s390x"}, Image: img},
		sandboxtest.Platformed{Platform: v1.Platform{OS: "windows", Architecture: "amd64"}, Image: img})
	multi := reg.PushIndex(t, "test/multi:1",
		sandboxtest.Platformed{Platform: v1.Platform{OS: "linux", Architecture: "s390x"}, Image: sandboxtest.Image(t, v1.Config{}, sandboxtest.Layer(t, sandboxtest.File("wrong", "x", 0o644)))},
		sandboxtest.Platformed{Platform: v1.Platform{OS: "linux", Architecture: runtime.GOARCH}, Image: img})

	// An endpoint that wants credentials.
	authSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		w.Write([]byte(`{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`))
	}))
	defer authSrv.Close()
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()

	s := newStore(t)
	for _, c := range []struct {
		ref   string
		class error
		want  string
	}{
		{reg.Host + "/test/app:2", errdefs.ErrInvalid, "was not found"},
		{reg.Host + "/test/none:1", errdefs.ErrInvalid, "was not found"},
		{other, errdefs.ErrInvalid, "no build for this server's platform"},
		{strings.TrimPrefix(authSrv.URL, "http://") + "/private/app:1", errdefs.ErrInvalid, "docker login"},
		{strings.TrimPrefix(closed.URL, "http://") + "/test/app:1", errdefs.ErrUnavailable, "cannot reach the registry"},
		{"UPPER/case", errdefs.ErrInvalid, "not a valid image reference"},
	} {
		_, err := s.Pull(context.Background(), c.ref, nil)
		if !errors.Is(err, c.class) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.ref) {
			t.Errorf("pull %s = %v; want %v naming it and saying %q", c.ref, err, c.class, c.want)
		}
	}
	rec, err := s.Pull(context.Background(), multi, nil)
	if err != nil {
		t.Fatal(err)
	}
	simg, _ := s.Image(rec, "")
	if _, err := os.Stat(filepath.Join(simg.Root.Layers[0], "f")); err != nil {
		t.Errorf("multi-platform image resolved to the wrong platform: %v", err)
	}
}

func TestRemoveAndPrune(t *testing.T) {
	t.Parallel()
	reg := sandboxtest.NewRegistry(t)
	shared := sandboxtest.Layer(t, sandboxtest.File("shared", "s", 0o644))
	own := sandboxtest.Layer(t, sandboxtest.File("own", "o", 0o644))
	a := reg.Push(t, "test/a:1", sandboxtest.Image(t, v1.Config{}, shared, own))
	b := reg.Push(t, "test/b:1", sandboxtest.Image(t, v1.Config{}, shared))
	s := newStore(t)
	for _, ref := range []string{a, b} {
		if _, err := s.Pull(context.Background(), ref, nil); err != nil {
			t.Fatal(err)
		}
	}
	if n := reg.BlobGets(layerDigest(t, shared)); n != 1 {
		t.Errorf("shared layer downloaded %d times", n)
	}
	if _, err := s.Remove(reg.Host + "/test/missing:1"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("remove missing = %v", err)
	}
	if _, err := s.Remove(a); err != nil {
		t.Fatal(err)
	}
	n, freed, err := s.Prune()
	if err != nil || n != 1 || freed != 1 {
		t.Errorf("prune = %d layers, %d bytes, %v; want the one layer only a used", n, freed, err)
	}
	sd, _ := shared.DiffID()
	od, _ := own.DiffID()
	if _, err := os.Stat(filepath.Join(s.Dir(), "layers", sd.Hex)); err != nil {
		t.Errorf("layer b still uses was pruned: %v", err)
	}
	if _, err := os.Stat(filepath.Join(s.Dir(), "layers", od.Hex)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("unused layer kept: %v", err)
	}
	if list, _ := s.List(); len(list) != 1 || list[0].Name != b {
		t.Errorf("list = %+v", list)
	}
}

func TestResolverAliasToImage(t *testing.T) {
	t.Parallel()
	reg := sandboxtest.NewRegistry(t)
	ref := reg.Push(t, "test/aliased:1", sandboxtest.Image(t, v1.Config{WorkingDir: "/w"}, sandboxtest.Layer(t, sandboxtest.File("f", "x", 0o644))))
	r := image.Resolver{Aliases: map[string]string{"microsandbox/python": image.HostName, "mine": ref}, Store: newStore(t)}
	img, err := r.Resolve(context.Background(), "mine", "")
	if err != nil || img.Ref != "mine" || len(img.Root.Layers) != 1 || img.Workdir != "/w" {
		t.Errorf("Resolve(mine) = %+v, %v", img, err)
	}
	if img, err := r.Resolve(context.Background(), "microsandbox/python", ""); err != nil || len(img.Root.Layers) != 0 || len(img.Root.Mounts) == 0 {
		t.Errorf("host alias = %+v, %v", img, err)
	}
}

// flockWaiting reports whether some process waits for a flock on a file
// of dir, as /proc/locks shows it.
func flockWaiting(t *testing.T, dir string) bool {
	t.Helper()
	inodes := map[string]bool{}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		var st unix.Stat_t
		if unix.Lstat(filepath.Join(dir, e.Name()), &st) == nil {
			inodes[strconv.FormatUint(st.Ino, 10)] = true
		}
	}
	data, err := os.ReadFile("/proc/locks")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 7 || f[1] != "->" || f[2] != "FLOCK" {
			continue
		}
		if parts := strings.Split(f[6], ":"); len(parts) == 3 && inodes[parts[2]] {
			return true
		}
	}
	return false
}

// TestPruneWaitsForPulls runs a prune (as `msb image prune` does, in
// another process: another Store on the same directory) while a pull has
// stored one layer and still downloads the next: the stored layer is not
// yet recorded, and must not be pruned.
func TestPruneWaitsForPulls(t *testing.T) {
	t.Parallel()
	reg := sandboxtest.NewRegistry(t)
	first := sandboxtest.Layer(t, sandboxtest.File("first", "1", 0o644))
	second := sandboxtest.Layer(t, sandboxtest.File("second", "2", 0o644))
	ref := reg.Push(t, "test/racy:1", sandboxtest.Image(t, v1.Config{}, first, second))
	release := reg.Hold(t, layerDigest(t, second))
	dir := filepath.Join(t.TempDir(), "images")
	server, cli := openStore(t, dir), openStore(t, dir)

	pulled := make(chan error, 1)
	go func() {
		_, err := server.Pull(context.Background(), ref, nil)
		pulled <- err
	}()
	fd, _ := first.DiffID()
	firstDir := filepath.Join(dir, "layers", fd.Hex)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(time.Millisecond) {
		if _, err := os.Stat(firstDir); err == nil {
			break
		}
		select {
		case err := <-pulled:
			t.Fatalf("the pull ended before storing its first layer: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the pull never stored its first layer")
		}
	}

	pruned := make(chan error, 1)
	go func() {
		_, _, err := cli.Prune()
		pruned <- err
	}()
	// Let the pull finish once the prune has run or waits for it.
	var pruneErr error
	pruneDone := false
	for !pruneDone && !flockWaiting(t, dir) {
		select {
		case pruneErr = <-pruned:
			pruneDone = true
		case <-time.After(time.Millisecond):
		}
	}
	release()
	if err := <-pulled; err != nil {
		t.Fatal(err)
	}
	if !pruneDone {
		pruneErr = <-pruned
	}
	if pruneErr != nil {
		t.Fatal(pruneErr)
	}
	if _, err := os.Stat(firstDir); err != nil {
		t.Errorf("a prune deleted a layer a pull had just stored: %v", err)
	}
	reg.Close()
	if _, err := server.Get(context.Background(), ref); err != nil {
		t.Errorf("the image pulled during a prune does not start from the cache: %v", err)
	}
}

func TestPullForeignSingleArch(t *testing.T) {
	t.Parallel()
	reg := sandboxtest.NewRegistry(t)
	l := sandboxtest.Layer(t, sandboxtest.File("f", "x", 0o644))
	img := sandboxtest.Image(t, v1.Config{}, l)
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.Architecture = "s390x"
	if runtime.GOARCH == "s390x" {
		cf.Architecture = "riscv64"
	}
	foreign, err := mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	ref := reg.Push(t, "test/foreign-single:1", foreign)
	s := newStore(t)
	_, err = s.Pull(context.Background(), ref, nil)
	if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "no build for this server's platform") ||
		!strings.Contains(err.Error(), "linux/"+cf.Architecture) || !strings.Contains(err.Error(), ref) {
		t.Errorf("pull of an image for linux/%s only = %v; want a platform error naming both", cf.Architecture, err)
	}
	if list, _ := s.List(); len(list) != 0 {
		t.Errorf("a foreign image was recorded: %+v", list)
	}
}

func TestGetGivesUpWaiting(t *testing.T) {
	t.Parallel()
	reg := sandboxtest.NewRegistry(t)
	l := sandboxtest.Layer(t, sandboxtest.File("f", "x", 0o644))
	ref := reg.Push(t, "test/held:1", sandboxtest.Image(t, v1.Config{}, l))
	release := reg.Hold(t, layerDigest(t, l))
	s := newStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // a client that went away while the layer downloads
	_, err := s.Get(ctx, ref)
	if !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), "gave up waiting") || !strings.Contains(err.Error(), ref) {
		t.Errorf("Get with its context ended during the pull = %v; want ErrUnavailable saying so", err)
	}
	release()
	if _, err := s.Get(context.Background(), ref); err != nil {
		t.Errorf("Get after the pull went on: %v", err)
	}
}

func TestRemoveByReference(t *testing.T) {
	t.Parallel()
	reg := sandboxtest.NewRegistry(t)
	ref := reg.Push(t, "test/rm:1", sandboxtest.Image(t, v1.Config{}, sandboxtest.Layer(t, sandboxtest.File("f", "x", 0o644))))
	s := newStore(t)
	rec, err := s.Pull(context.Background(), ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	byDigest := strings.TrimSuffix(ref, ":1") + "@" + rec.Digest
	if _, err := s.Remove(reg.Host + "/test/other@" + rec.Digest); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("remove by digest in another repository = %v, want ErrNotFound", err)
	}
	got, err := s.Remove(byDigest)
	if err != nil || got.Name != ref {
		t.Fatalf("remove %s = %+v, %v; want the record of %s", byDigest, got, err, ref)
	}
	if list, _ := s.List(); len(list) != 0 {
		t.Errorf("still listed after remove: %+v", list)
	}
}

// TestWhiteoutEdgeCases: a whiteout and an entry of the same name in one
// layer (either order) hide only the lower layer's entry; AUFS metadata
// entries (.wh..wh.plnk and what is under it) are not files of the image.
func TestWhiteoutEdgeCases(t *testing.T) {
	t.Parallel()
	reg := sandboxtest.NewRegistry(t)
	lower := sandboxtest.Layer(t,
		sandboxtest.Dir("foo"), sandboxtest.File("foo/old", "old\n", 0o644),
		sandboxtest.Dir("bar"), sandboxtest.File("bar/old", "old\n", 0o644),
		sandboxtest.File("plnk", "kept\n", 0o644),
	)
	upper := sandboxtest.Layer(t,
		sandboxtest.Whiteout("foo"), sandboxtest.Dir("foo"), sandboxtest.File("foo/new", "new\n", 0o644),
		sandboxtest.Dir("bar"), sandboxtest.File("bar/new", "new\n", 0o644), sandboxtest.Whiteout("bar"),
		sandboxtest.Dir(".wh..wh.plnk"), sandboxtest.File(".wh..wh.plnk/123.456", "aufs\n", 0o644),
		sandboxtest.File(".wh..wh.aufs", "", 0o644),
	)
	ref := reg.Push(t, "test/wh:1", sandboxtest.Image(t, v1.Config{}, lower, upper))
	s := newStore(t)
	rec, err := s.Pull(context.Background(), ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	simg, err := s.Image(rec, "")
	if err != nil {
		t.Fatal(err)
	}
	merged := mountOverlay(t, simg.Root.Layers)
	for _, p := range []string{"foo/new", "bar/new", "plnk"} {
		if _, err := os.Stat(filepath.Join(merged, p)); err != nil {
			t.Errorf("%s is missing: %v", p, err)
		}
	}
	for _, p := range []string{"foo/old", "bar/old", ".wh.plnk", ".wh..wh.plnk", ".wh.aufs", ".wh..wh.aufs"} {
		if _, err := os.Lstat(filepath.Join(merged, p)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s is visible through the overlay (err %v)", p, err)
		}
	}
	if ents, _ := os.ReadDir(simg.Root.Layers[1]); len(ents) != 2 {
		t.Errorf("upper layer holds %v, want foo and bar only", ents)
	}
}
