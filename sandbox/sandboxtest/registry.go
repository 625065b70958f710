package sandboxtest

import (
	"archive/tar"
	"bytes"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Registry is an OCI registry (go-containerregistry's pkg/registry) on a
// loopback port, for tests: it counts the blob downloads it serves and can
// corrupt chosen blobs on the way out or hold them back.
type Registry struct {
	srv  *httptest.Server
	Host string // 127.0.0.1:PORT

	mu       sync.Mutex
	requests int
	blobGets map[string]int // by digest
	tamper   map[string]bool
	held     map[string]chan struct{}
	delay    time.Duration
}

// NewRegistry starts a registry that stops when the test ends.
func NewRegistry(t testing.TB) *Registry {
	r := &Registry{blobGets: map[string]int{}, tamper: map[string]bool{}, held: map[string]chan struct{}{}}
	inner := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		r.requests++
		r.mu.Unlock()
		i := strings.Index(req.URL.Path, "/blobs/sha256:")
		if req.Method != http.MethodGet || i < 0 {
			inner.ServeHTTP(w, req)
			return
		}
		digest := req.URL.Path[i+len("/blobs/"):]
		r.mu.Lock()
		r.blobGets[digest]++
		bad, delay, held := r.tamper[digest], r.delay, r.held[digest]
		r.mu.Unlock()
		if delay > 0 {
			time.Sleep(delay)
		}
		if held != nil {
			select {
			case <-held:
			case <-req.Context().Done():
				return
			}
		}
		if !bad {
			inner.ServeHTTP(w, req)
			return
		}
		rec := httptest.NewRecorder()
		inner.ServeHTTP(rec, req)
		body := rec.Body.Bytes()
		if len(body) > 0 {
			body[len(body)/2] ^= 0xff // same length, other content
		}
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		w.Write(body)
	}))
	r.Host = strings.TrimPrefix(r.srv.URL, "http://")
	t.Cleanup(r.Close)
	return r
}

// Requests is how many requests the registry was sent.
func (r *Registry) Requests() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.requests
}

// URL is the registry's base URL.
func (r *Registry) URL() string { return r.srv.URL }

// Close stops the registry; pulls from it then fail to connect.
func (r *Registry) Close() { r.srv.Close() }

// BlobGets is how many times blobs were downloaded: digest's, or all when
// digest is "".
func (r *Registry) BlobGets(digest string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if digest != "" {
		return r.blobGets[digest]
	}
	n := 0
	for _, c := range r.blobGets {
		n += c
	}
	return n
}

// Tamper makes the registry corrupt the blob digest on every download.
func (r *Registry) Tamper(digest string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tamper[digest] = true
}

// Hold makes downloads of the blob digest wait until release is called (at
// the latest when the test ends), so that a test can act while a pull is
// halfway through.
func (r *Registry) Hold(t testing.TB, digest string) (release func()) {
	ch := make(chan struct{})
	r.mu.Lock()
	r.held[digest] = ch
	r.mu.Unlock()
	var once sync.Once
	release = func() { once.Do(func() { close(ch) }) }
	t.Cleanup(release)
	return release
}

// SlowBlobs delays every blob download by d, so that concurrent pulls
// overlap.
func (r *Registry) SlowBlobs(d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.delay = d
}

// Push uploads img as repo:tag (e.g. "tools/busybox:1") and returns its
// full reference, 127.0.0.1:PORT/repo:tag.
func (r *Registry) Push(t testing.TB, repoTag string, img v1.Image) string {
	t.Helper()
	ref := r.Host + "/" + repoTag
	n, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(n, img); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	return ref
}

// Platformed is one image of a multi-platform index.
type Platformed struct {
	Platform v1.Platform
	Image    v1.Image
}

// PushIndex uploads a multi-platform index of the given images.
func (r *Registry) PushIndex(t testing.TB, repoTag string, imgs ...Platformed) string {
	t.Helper()
	ref := r.Host + "/" + repoTag
	n, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	var idx v1.ImageIndex = empty.Index
	for _, pi := range imgs {
		p := pi.Platform
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: pi.Image, Descriptor: v1.Descriptor{Platform: &p}})
	}
	if err := remote.WriteIndex(n, idx); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	return ref
}

// Entry is one file of a test layer.
type Entry struct {
	Name     string
	Type     byte // tar.TypeReg when zero
	Body     string
	Mode     int64 // 0644 (0755 for directories) when zero
	Linkname string
	UID, GID int
}

// Dir, File, Symlink, Hardlink and Whiteout build entries.
func Dir(name string) Entry { return Entry{Name: name, Type: tar.TypeDir} }

// File is a regular file.
func File(name, body string, mode int64) Entry { return Entry{Name: name, Body: body, Mode: mode} }

// Symlink is a symbolic link to target.
func Symlink(name, target string) Entry {
	return Entry{Name: name, Type: tar.TypeSymlink, Linkname: target}
}

// Hardlink is a hard link to target.
func Hardlink(name, target string) Entry {
	return Entry{Name: name, Type: tar.TypeLink, Linkname: target}
}

// Whiteout deletes path of lower layers.
func Whiteout(path string) Entry {
	dir, base := "", path
	if i := strings.LastIndex(path, "/"); i >= 0 {
		dir, base = path[:i+1], path[i+1:]
	}
	return File(dir+".wh."+base, "", 0)
}

// Opaque hides everything lower layers have in dir.
func Opaque(dir string) Entry { return File(strings.TrimSuffix(dir, "/")+"/.wh..wh..opq", "", 0) }

// TarBytes is the tar archive of entries.
func TarBytes(t testing.TB, entries ...Entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.Name, Typeflag: e.Type, Mode: e.Mode, Linkname: e.Linkname, Uid: e.UID, Gid: e.GID, ModTime: time.Unix(1700000000, 0)}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
			if h.Typeflag == tar.TypeDir {
				h.Mode = 0o755
			}
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.Body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write([]byte(e.Body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Layer is a gzip-compressed image layer holding entries.
func Layer(t testing.TB, entries ...Entry) v1.Layer {
	t.Helper()
	data := TarBytes(t, entries...)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// Image is an image of layers (lowest first) with cfg as its config.
func Image(t testing.TB, cfg v1.Config, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	img, err = mutate.ConfigFile(img, &v1.ConfigFile{
		Architecture: runtime.GOARCH,
		OS:           "linux",
		Config:       cfg,
		RootFS:       mustRootFS(t, img),
	})
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func mustRootFS(t testing.TB, img v1.Image) v1.RootFS {
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	return cf.RootFS
}

// BusyboxPath is where Debian's busybox-static installs its binary.
const BusyboxPath = "/bin/busybox"

// BusyboxLayer is a layer with a static busybox at /bin/busybox, sh, ls,
// cat and the other applets the tests use as links to it, and minimal
// /etc/passwd and /etc/group. It skips the test when busybox-static is not
// installed.
func BusyboxLayer(t testing.TB) v1.Layer {
	t.Helper()
	bin, err := os.ReadFile(BusyboxPath)
	if err != nil {
		t.Skipf("busybox-static is not installed (%v): apt-get install busybox-static", err)
	}
	entries := []Entry{
		Dir("bin"), Dir("etc"), Dir("tmp"),
		{Name: "bin/busybox", Body: string(bin), Mode: 0o755},
		File("etc/passwd", "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n", 0o644),
		File("etc/group", "root:x:0:\napp:x:1000:\nextra:x:2000:app\n", 0o644),
	}
	entries[2].Mode = 0o1777
	for _, applet := range []string{"sh", "ls", "cat", "echo", "env", "id", "pwd", "test", "touch", "mkdir", "rm", "sleep", "httpd", "wget", "stat", "true", "false", "grep", "ln", "readlink", "mount", "getfattr", "wc", "head"} {
		entries = append(entries, Symlink("bin/"+applet, "busybox"))
	}
	return Layer(t, entries...)
}
