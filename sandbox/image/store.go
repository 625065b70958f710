package image

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/klauspost/compress/zstd"

	"github.com/msb-dev/msb/errdefs"
)

// pullTimeout bounds one pull shared by several sandbox starts.
const pullTimeout = 30 * time.Minute

// layerJobs is how many layers of one image download at once.
const layerJobs = 3

// Record is what the store keeps of one pulled image.
type Record struct {
	// Name is the canonical reference, e.g.
	// index.docker.io/library/alpine:3.20 or 127.0.0.1:5000/app@sha256:...
	Name string `json:"name"`
	// Digest is the digest the reference pointed at when pulled (for a
	// multi-platform image, the index's digest).
	Digest string `json:"digest"`
	// Manifest is the digest of the host platform's image manifest.
	Manifest string        `json:"manifest"`
	Config   ImageConfig   `json:"config"`
	Layers   []LayerRecord `json:"layers"`
	Pulled   time.Time     `json:"pulled"`
	LastUsed time.Time     `json:"last_used"`
}

// Size is the disk space the image's unpacked layers take.
func (r Record) Size() int64 {
	var n int64
	for _, l := range r.Layers {
		n += l.Unpacked
	}
	return n
}

// ImageConfig is the part of an image's config a sandbox honours.
type ImageConfig struct {
	Env        []string `json:"env,omitempty"`
	WorkingDir string   `json:"working_dir,omitempty"`
	User       string   `json:"user,omitempty"`
}

// LayerRecord is one layer of an image.
type LayerRecord struct {
	Digest   string `json:"digest"`  // of the compressed blob, as the manifest lists it
	DiffID   string `json:"diff_id"` // of the uncompressed tar; names its directory
	Size     int64  `json:"size"`    // compressed bytes
	Unpacked int64  `json:"unpacked"`
}

// Progress reports a pull's advance to a progress bar.
type Progress struct {
	Layers, LayersDone int   // layers of the image; of them, done (cached ones count as done)
	Bytes, BytesDone   int64 // compressed bytes to download; downloaded so far
}

// Store keeps OCI images pulled from registries under one directory of the
// msb home:
//
//	(records)            one Record per pulled reference, in the RecordStore
//	layers/<hex>/        a layer unpacked, named by the hex of its diff ID
//	tmp/                 downloads and unpacks in progress
//	lock                 flock serialising changes between msb processes
//	pull.lock            flock held shared by pulls, exclusively by Prune
//
// A layer is stored once, whatever the number of images and sandboxes
// using it. Blobs are verified against their digests before a byte of them
// is unpacked, and the unpacked tar against the config's diff ID: a
// tampered or corrupted layer is refused and never cached.
type Store struct {
	dir        string
	records    RecordStore
	registries Registries
	keychain   authn.Keychain
	platform   v1.Platform
	now        func() time.Time
	inUse      func() ([]string, error)

	mu    sync.Mutex
	pulls map[string]*pullCall // in flight, by canonical name
}

type pullCall struct {
	done chan struct{}
	rec  Record
	err  error
}

// RecordStore keeps the records of pulled images; storage.DB is the real
// one (SQLite). Names are canonical references (Record.Name).
type RecordStore interface {
	// ImageRecords returns every record.
	ImageRecords(ctx context.Context) ([]Record, error)
	// PutImageRecord records r, replacing a record of the same name.
	PutImageRecord(ctx context.Context, r Record) error
	// DeleteImageRecord forgets the record of name; a missing one is not an error.
	DeleteImageRecord(ctx context.Context, name string) error
	// TouchImageRecord sets the last-used time of the record of name, if any.
	TouchImageRecord(ctx context.Context, name string, t time.Time) error
}

// StoreOptions configure a Store. Records is required; the other fields'
// zero values are the defaults.
type StoreOptions struct {
	// Records is where the image records live.
	Records RecordStore
	// Registries are those pulls may talk to; nil: DefaultRegistries.
	Registries *Registries
	// Keychain finds registry credentials; default authn.DefaultKeychain
	// (~/.docker/config.json and its credential helpers).
	Keychain authn.Keychain
	// Platform is the platform picked from multi-platform images;
	// default linux and the host's architecture.
	Platform *v1.Platform
	Now      func() time.Time
	// InUse lists the layer directories that sandboxes use now, whatever
	// the process running them; Prune keeps those layers even when no
	// image record names them. Without it Prune knows of no sandbox.
	InUse func() ([]string, error)
}

// NewStore returns the store in dir, creating it. Records an earlier msb
// kept in dir/images.json are moved into opts.Records once. Errors are the
// underlying file system and record store errors.
func NewStore(dir string, opts StoreOptions) (*Store, error) {
	if opts.Records == nil {
		return nil, errors.New("image store: no record store")
	}
	for _, d := range []string{dir, filepath.Join(dir, "layers"), filepath.Join(dir, "tmp")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("image store: %w", err)
		}
	}
	if opts.Registries == nil {
		r, err := NewRegistries(nil)
		if err != nil {
			return nil, err
		}
		opts.Registries = &r
	}
	s := &Store{dir: dir, records: opts.Records, registries: *opts.Registries, keychain: opts.Keychain, now: opts.Now, inUse: opts.InUse, pulls: map[string]*pullCall{}}
	if s.keychain == nil {
		s.keychain = authn.DefaultKeychain
	}
	if opts.Platform != nil {
		s.platform = *opts.Platform
	} else {
		s.platform = hostPlatform()
	}
	if s.now == nil {
		s.now = time.Now
	}
	if err := s.importJSON(); err != nil {
		return nil, err
	}
	return s, nil
}

// importJSON moves the records of images.json, where msb kept them before
// they lived in the state database, into the record store, and renames the
// file so that it is done once. Records already in the store win.
func (s *Store) importJSON() error {
	path := filepath.Join(s.dir, "images.json")
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("image store: %w", err)
	}
	old := map[string]Record{}
	if err := json.Unmarshal(data, &old); err != nil {
		return fmt.Errorf("image store: %s is damaged (move it away to start with an empty cache): %w", path, err)
	}
	have, err := s.read()
	if err != nil {
		return err
	}
	for name, rec := range old {
		if _, ok := have[name]; !ok {
			if err := s.records.PutImageRecord(context.Background(), rec); err != nil {
				return fmt.Errorf("image store: import %s: %w", name, err)
			}
		}
	}
	return os.Rename(path, path+".imported")
}

func hostPlatform() v1.Platform {
	p := v1.Platform{OS: "linux", Architecture: runtime.GOARCH}
	if runtime.GOARCH == "arm" {
		p.Variant = "v7"
	}
	return p
}

// Dir is the directory the store lives in.
func (s *Store) Dir() string { return s.dir }

func (s *Store) layerDir(diffID string) string {
	return filepath.Join(s.dir, "layers", strings.TrimPrefix(diffID, "sha256:"))
}

// ParseReference parses an image reference as Docker does: a bare name is
// on Docker Hub under library/, a missing tag is :latest. Registries on a
// loopback address are spoken to over plain HTTP. Errors wrap
// errdefs.ErrInvalid.
func ParseReference(ref string) (name.Reference, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, errdefs.Invalidf("image %q is not a valid image reference (such as alpine:3.20 or ghcr.io/org/app@sha256:...): %v", ref, err)
	}
	if loopbackRegistry(r.Context().RegistryStr()) {
		if r, err = name.ParseReference(ref, name.Insecure); err != nil {
			return nil, errdefs.Invalidf("image %q: %v", ref, err)
		}
	}
	return r, nil
}

func loopbackRegistry(host string) bool {
	h, _, err := net.SplitHostPort(host)
	if err != nil {
		h = host
	}
	h = strings.Trim(h, "[]")
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// lock takes the store's cross-process lock; the returned func releases it.
func (s *Store) lock() (func(), error) { return s.flock("lock", syscall.LOCK_EX) }

// pullLock is held shared by every pull from its first look at the layers
// until it has recorded the image, and exclusively by Prune: a layer a pull
// has stored but not yet recorded is never pruned, whatever process pulls.
func (s *Store) pullLock(how int) (func(), error) { return s.flock(PullLockFile, how) }

// PullLockFile, in the store's directory, is the lock Prune holds
// exclusively. Anything about to use layers (a sandbox engine recording and
// mounting them) holds it shared meanwhile, so they are not pruned under it.
const PullLockFile = "pull.lock"

// flock takes the flock how (LOCK_SH or LOCK_EX) on the file name of the
// store; the returned func releases it.
func (s *Store) flock(name string, how int) (func(), error) {
	f, err := os.OpenFile(filepath.Join(s.dir, name), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("image store lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), how); err != nil {
		f.Close()
		return nil, fmt.Errorf("image store lock: %w", err)
	}
	return func() { f.Close() }, nil
}

// read returns every record, by name.
func (s *Store) read() (map[string]Record, error) {
	recs, err := s.records.ImageRecords(context.Background())
	if err != nil {
		return nil, fmt.Errorf("image store: %w", err)
	}
	db := make(map[string]Record, len(recs))
	for _, r := range recs {
		db[r.Name] = r
	}
	return db, nil
}

// List returns the pulled images, by name.
func (s *Store) List() ([]Record, error) {
	db, err := s.read()
	if err != nil {
		return nil, err
	}
	out := make([]Record, 0, len(db))
	for _, r := range db {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// find finds the record of a parsed reference in db: by name, or for a
// digest reference by digest in the same repository.
func find(db map[string]Record, r name.Reference) (Record, bool) {
	if rec, ok := db[r.Name()]; ok {
		return rec, true
	}
	if d, isDigest := r.(name.Digest); isDigest {
		for _, c := range db {
			cr, err := name.ParseReference(c.Name)
			if err == nil && cr.Context().Name() == d.Context().Name() && (c.Digest == d.DigestStr() || c.Manifest == d.DigestStr()) {
				return c, true
			}
		}
	}
	return Record{}, false
}

// lookup finds the record of a parsed reference, as find does, and checks
// that every layer is still on disk.
func (s *Store) lookup(r name.Reference) (Record, bool, error) {
	db, err := s.read()
	if err != nil {
		return Record{}, false, err
	}
	rec, ok := find(db, r)
	if !ok {
		return Record{}, false, nil
	}
	for _, l := range rec.Layers {
		if _, err := os.Stat(s.layerDir(l.DiffID)); err != nil {
			return Record{}, false, nil // pruned under us: pull again
		}
	}
	return rec, true, nil
}

// Get returns the image ref names, from the cache when it was pulled
// before (no network needed) and otherwise by pulling it. Concurrent Gets
// of the same uncached image share one pull. Errors are those of Pull.
func (s *Store) Get(ctx context.Context, ref string) (Record, error) {
	r, err := ParseReference(ref)
	if err != nil {
		return Record{}, err
	}
	if rec, ok, err := s.lookup(r); err != nil {
		return Record{}, err
	} else if ok {
		s.touch(rec.Name)
		return rec, nil
	}
	return s.pullOnce(ctx, ref, r)
}

// pullOnce pulls ref, the reference r, for a Get that did not find it in
// the cache, or waits for the pull of it already under way.
func (s *Store) pullOnce(ctx context.Context, ref string, r name.Reference) (Record, error) {
	key := r.Name()
	s.mu.Lock()
	c, ok := s.pulls[key]
	if !ok {
		// A pull that ended since the caller looked has recorded the
		// image before leaving s.pulls: use it rather than pull again.
		rec, cached, err := s.lookup(r)
		if err != nil || cached {
			s.mu.Unlock()
			if cached {
				s.touch(rec.Name)
			}
			return rec, err
		}
		c = &pullCall{done: make(chan struct{})}
		s.pulls[key] = c
		go func() {
			// Not the caller's context: others may wait on this pull.
			pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), pullTimeout)
			defer cancel()
			c.rec, c.err = s.Pull(pctx, ref, nil)
			s.mu.Lock()
			delete(s.pulls, key)
			s.mu.Unlock()
			close(c.done)
		}()
	}
	s.mu.Unlock()
	select {
	case <-c.done:
		return c.rec, c.err
	case <-ctx.Done():
		return Record{}, errdefs.Unavailablef("image %q: gave up waiting for its pull (the request was cancelled or timed out); the pull goes on in the background: try again shortly", ref)
	}
}

// touch records that an image was used now; failures only cost the date.
func (s *Store) touch(key string) {
	_ = s.records.TouchImageRecord(context.Background(), key, s.now().UTC())
}

// Pull fetches ref from its registry (credentials from the keychain; for a
// multi-platform image, the host platform's image), stores its layers and
// records it, replacing an earlier pull of the same reference. progress,
// if not nil, is called as bytes arrive, from several goroutines but never
// concurrently. A Prune, in any process, waits until the pull has recorded
// the image. Errors wrap errdefs.ErrInvalid when the reference
// is wrong (bad syntax, no such image or tag, access refused, no image for
// this platform, a tampered layer) and errdefs.ErrUnavailable when the
// registry cannot be reached or fails; each says what to do.
func (s *Store) Pull(ctx context.Context, ref string, progress func(Progress)) (Record, error) {
	r, err := ParseReference(ref)
	if err != nil {
		return Record{}, err
	}
	unlock, err := s.pullLock(syscall.LOCK_SH)
	if err != nil {
		return Record{}, err
	}
	defer unlock()
	if err := s.registries.Allowed(r.Context().RegistryStr()); err != nil {
		return Record{}, fmt.Errorf("image %q: %w", ref, err)
	}
	opts := []remote.Option{
		remote.WithContext(ctx),
		remote.WithTransport(s.registries.Transport()),
		remote.WithAuthFromKeychain(s.keychain),
		remote.WithPlatform(s.platform),
		remote.WithUserAgent("msb"),
	}
	desc, err := remote.Get(r, opts...)
	if err != nil {
		return Record{}, pullError(ref, r, err)
	}
	var img v1.Image
	manifest := desc.Digest
	if desc.MediaType.IsIndex() {
		idx, err := desc.ImageIndex()
		if err != nil {
			return Record{}, pullError(ref, r, err)
		}
		im, err := idx.IndexManifest()
		if err != nil {
			return Record{}, pullError(ref, r, err)
		}
		child, err := s.pickPlatform(ref, im)
		if err != nil {
			return Record{}, err
		}
		manifest = child
		if img, err = idx.Image(child); err != nil {
			return Record{}, pullError(ref, r, err)
		}
	} else if img, err = desc.Image(); err != nil {
		return Record{}, pullError(ref, r, err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return Record{}, pullError(ref, r, err)
	}
	if (cfg.OS != "" && cfg.OS != s.platform.OS) || (cfg.Architecture != "" && cfg.Architecture != s.platform.Architecture) {
		// A single-platform image for another platform would only fail
		// later, with "exec format error".
		p := v1.Platform{OS: cfg.OS, Architecture: cfg.Architecture, Variant: cfg.Variant}
		return Record{}, s.noPlatform(ref, []string{p.String()})
	}
	layers, err := img.Layers()
	if err != nil {
		return Record{}, pullError(ref, r, err)
	}
	if len(layers) != len(cfg.RootFS.DiffIDs) {
		return Record{}, errdefs.Invalidf("image %q is malformed: its manifest lists %d layers but its config %d", ref, len(layers), len(cfg.RootFS.DiffIDs))
	}
	rec := Record{
		Name:     r.Name(),
		Digest:   desc.Digest.String(),
		Manifest: manifest.String(),
		Config:   ImageConfig{Env: cfg.Config.Env, WorkingDir: cfg.Config.WorkingDir, User: cfg.Config.User},
		Layers:   make([]LayerRecord, len(layers)),
		Pulled:   s.now().UTC(),
	}
	rec.LastUsed = rec.Pulled
	prog := &progressMeter{fn: progress, p: Progress{Layers: len(layers)}}
	var todo []int
	for i, l := range layers {
		digest, err := l.Digest()
		if err != nil {
			return Record{}, pullError(ref, r, err)
		}
		size, err := l.Size()
		if err != nil {
			return Record{}, pullError(ref, r, err)
		}
		rec.Layers[i] = LayerRecord{Digest: digest.String(), DiffID: cfg.RootFS.DiffIDs[i].String(), Size: size}
		if n, ok := s.cachedLayer(rec.Layers[i].DiffID); ok {
			rec.Layers[i].Unpacked = n
			prog.add(0, 1)
			continue
		}
		prog.p.Bytes += size
		todo = append(todo, i)
	}
	prog.add(0, 0)

	var wg sync.WaitGroup
	sem := make(chan struct{}, layerJobs)
	errs := make([]error, len(layers))
	for _, i := range todo {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				errs[i] = ctx.Err()
				return
			}
			defer func() { <-sem }()
			n, err := s.fetchLayer(ctx, ref, r, layers[i], rec.Layers[i], prog)
			rec.Layers[i].Unpacked, errs[i] = n, err
			if err == nil {
				prog.add(0, 1)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return Record{}, err
	}
	if err := s.records.PutImageRecord(ctx, rec); err != nil {
		return Record{}, fmt.Errorf("image store: record %s: %w", rec.Name, err)
	}
	return rec, nil
}

// pickPlatform chooses the host platform's image from an index, or says
// which platforms the image has.
func (s *Store) pickPlatform(ref string, im *v1.IndexManifest) (v1.Hash, error) {
	var have []string
	for _, m := range im.Manifests {
		p := v1.Platform{OS: "linux", Architecture: "amd64"} // the default when an index says nothing
		if m.Platform != nil {
			p = *m.Platform
		}
		if p.OS == s.platform.OS && p.Architecture == s.platform.Architecture &&
			(s.platform.Variant == "" || p.Variant == "" || p.Variant == s.platform.Variant) {
			return m.Digest, nil
		}
		if p.OS != "unknown" { // attestation manifests
			have = append(have, p.String())
		}
	}
	return v1.Hash{}, s.noPlatform(ref, have)
}

// noPlatform says that image ref has builds for the platforms have only.
func (s *Store) noPlatform(ref string, have []string) error {
	return errdefs.Invalidf("image %q has no build for this server's platform %s (it has: %s): use an image built for %s",
		ref, s.platform.String(), strings.Join(have, ", "), s.platform.String())
}

// cachedLayer reports whether a layer is unpacked already, and its size.
func (s *Store) cachedLayer(diffID string) (int64, bool) {
	if _, err := os.Stat(s.layerDir(diffID)); err != nil {
		return 0, false
	}
	data, err := os.ReadFile(s.layerDir(diffID) + ".size")
	if err != nil {
		return 0, true
	}
	var n int64
	fmt.Sscan(string(data), &n)
	return n, true
}

// progressMeter serialises progress reports.
type progressMeter struct {
	mu sync.Mutex
	fn func(Progress)
	p  Progress
}

func (m *progressMeter) add(bytes int64, layers int) {
	if m == nil || m.fn == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.p.BytesDone += bytes
	m.p.LayersDone += layers
	m.fn(m.p)
}

type countingWriter struct {
	m *progressMeter
}

func (w countingWriter) Write(p []byte) (int, error) {
	w.m.add(int64(len(p)), 0)
	return len(p), nil
}

// fetchLayer downloads one layer into tmp/, verifies its digest, unpacks
// it while verifying its diff ID, and moves it into layers/. Nothing is
// left behind when any step fails.
func (s *Store) fetchLayer(ctx context.Context, ref string, r name.Reference, l v1.Layer, lr LayerRecord, prog *progressMeter) (int64, error) {
	tmp, err := os.MkdirTemp(filepath.Join(s.dir, "tmp"), "layer-")
	if err != nil {
		return 0, fmt.Errorf("image store: %w", err)
	}
	defer os.RemoveAll(tmp)
	blobPath := filepath.Join(tmp, "blob")
	want, err := v1.NewHash(lr.Digest)
	if err != nil {
		return 0, errdefs.Invalidf("image %q: layer digest %q: %v", ref, lr.Digest, err)
	}
	if want.Algorithm != "sha256" {
		return 0, errdefs.Invalidf("image %q: layer %s uses an unsupported digest algorithm", ref, lr.Digest)
	}

	// 1. Download, hashing as it comes.
	rc, err := l.Compressed()
	if err != nil {
		return 0, pullError(ref, r, err)
	}
	f, err := os.OpenFile(blobPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		rc.Close()
		return 0, fmt.Errorf("image store: %w", err)
	}
	h := sha256.New()
	w := io.MultiWriter(f, h)
	if prog != nil && prog.fn != nil {
		w = io.MultiWriter(f, h, countingWriter{prog})
	}
	_, err = io.Copy(w, &ctxReader{ctx: ctx, r: rc})
	rc.Close()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	got := "sha256:" + hex.EncodeToString(h.Sum(nil))
	if err != nil {
		if strings.Contains(err.Error(), "checksum") || strings.Contains(err.Error(), "verif") {
			return 0, tampered(ref, lr.Digest, got)
		}
		return 0, pullError(ref, r, err)
	}
	if got != lr.Digest {
		return 0, tampered(ref, lr.Digest, got)
	}

	// 2. Unpack the verified blob, hashing the tar for the diff ID.
	dir := filepath.Join(tmp, "fs")
	if err := os.Mkdir(dir, 0o755); err != nil {
		return 0, fmt.Errorf("image store: %w", err)
	}
	blob, err := os.Open(blobPath)
	if err != nil {
		return 0, fmt.Errorf("image store: %w", err)
	}
	defer blob.Close()
	tarStream, closeTar, err := decompress(blob)
	if err != nil {
		return 0, errdefs.Invalidf("image %q: layer %s: %v", ref, lr.Digest, err)
	}
	defer closeTar()
	dh := sha256.New()
	tee := io.TeeReader(tarStream, dh)
	size, err := unpackLayer(tee, dir)
	if err == nil {
		_, err = io.Copy(io.Discard, tee) // the tar's padding is part of the diff ID
	}
	if err != nil {
		if errors.Is(err, errUnsafe) {
			return 0, errdefs.Invalidf("image %q: layer %s is refused: %v", ref, lr.Digest, err)
		}
		return 0, fmt.Errorf("image %q: unpacking layer %s: %w", ref, lr.Digest, err)
	}
	if got := "sha256:" + hex.EncodeToString(dh.Sum(nil)); got != lr.DiffID {
		return 0, errdefs.Invalidf("image %q: layer %s unpacks to %s, not the %s its config names: the image is corrupt or tampered with; it was not cached", ref, lr.Digest, got, lr.DiffID)
	}

	// 3. Publish. Another pull may have stored the same layer meanwhile.
	final := s.layerDir(lr.DiffID)
	_ = os.WriteFile(final+".size", []byte(fmt.Sprint(size)), 0o600)
	if err := os.Rename(dir, final); err != nil {
		if _, serr := os.Stat(final); serr == nil {
			return size, nil
		}
		return 0, fmt.Errorf("image store: %w", err)
	}
	return size, nil
}

func tampered(ref, want, got string) error {
	return errdefs.Invalidf("image %q: layer %s failed verification (the registry sent content with digest %s): it is corrupt or tampered with, and was refused and not cached",
		ref, want, got)
}

// ctxReader ends a download when its context ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// decompress recognises a gzip, zstd or plain tar stream by its first bytes.
func decompress(r io.Reader) (io.Reader, func(), error) {
	br := bufio.NewReader(r)
	magic, _ := br.Peek(4)
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, nil, fmt.Errorf("gzip: %w", err)
		}
		return zr, func() { zr.Close() }, nil
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br)
		if err != nil {
			return nil, nil, fmt.Errorf("zstd: %w", err)
		}
		return zr, zr.Close, nil
	default:
		return br, func() {}, nil
	}
}

// pullError turns a registry or network failure into a message a person
// can act on.
func pullError(ref string, r name.Reference, err error) error {
	reg := r.Context().RegistryStr()
	var refused *errdefs.Error
	if errors.As(err, &refused) && refused.Class == errdefs.Invalid {
		return fmt.Errorf("image %q: %w", ref, refused) // the egress check's own words
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return errdefs.Unavailablef("image %q: the pull from %s was cancelled or timed out: try again", ref, reg)
	}
	var terr *transport.Error
	if errors.As(err, &terr) {
		codes := map[transport.ErrorCode]bool{}
		for _, d := range terr.Errors {
			codes[d.Code] = true
		}
		switch {
		case terr.StatusCode == 404 || codes[transport.ManifestUnknownErrorCode] || codes[transport.NameUnknownErrorCode]:
			return errdefs.Invalidf("image %q was not found on %s: check the repository name and the tag", ref, reg)
		case terr.StatusCode == 401 || terr.StatusCode == 403 || codes[transport.UnauthorizedErrorCode] || codes[transport.DeniedErrorCode]:
			return errdefs.Invalidf("image %q: %s refused access (HTTP %d): the image does not exist or needs credentials; log in with `docker login %s` (msb reads ~/.docker/config.json)", ref, reg, terr.StatusCode, reg)
		case terr.StatusCode == 429 || codes[transport.TooManyRequestsErrorCode]:
			return errdefs.Unavailablef("image %q: %s is rate-limiting pulls: wait and try again, or log in to raise the limit", ref, reg)
		default:
			return errdefs.Unavailablef("image %q: %s failed (HTTP %d): try again later", ref, reg, terr.StatusCode)
		}
	}
	var uerr *url.Error
	var nerr net.Error
	var oerr *net.OpError
	if errors.As(err, &uerr) || errors.As(err, &oerr) || errors.As(err, &nerr) {
		return errdefs.Unavailablef("image %q: cannot reach the registry %s (%v): check the network, DNS or proxy; images pulled before still start from the cache", ref, reg, err)
	}
	return errdefs.Unavailablef("image %q: pulling from %s failed: %v", ref, reg, err)
}

// Remove forgets the image ref names, found as a sandbox start finds it
// (by tag, or repository@digest), and returns its record; its layers stay
// until Prune. Errors wrap errdefs.ErrInvalid for a malformed
// reference and errdefs.ErrNotFound when no such image was pulled.
func (s *Store) Remove(ref string) (Record, error) {
	r, err := ParseReference(ref)
	if err != nil {
		return Record{}, err
	}
	unlock, err := s.lock()
	if err != nil {
		return Record{}, err
	}
	defer unlock()
	db, err := s.read()
	if err != nil {
		return Record{}, err
	}
	rec, ok := find(db, r)
	if !ok {
		return Record{}, errdefs.NotFoundf("image %q is not in the cache: see `msb image list`", ref)
	}
	if err := s.records.DeleteImageRecord(context.Background(), rec.Name); err != nil {
		return Record{}, fmt.Errorf("image store: %w", err)
	}
	return rec, nil
}

// Prune deletes the layers no image uses and downloads left by pulls that
// died, and returns how many layers it deleted and the bytes freed. It
// waits for the pulls under way (in any process) to record their images,
// and keeps the layers StoreOptions.InUse reports (a sandbox running on an
// image removed meanwhile) for a later prune. Errors are the underlying
// file system errors and those of InUse.
func (s *Store) Prune() (int, int64, error) {
	unpull, err := s.pullLock(syscall.LOCK_EX)
	if err != nil {
		return 0, 0, err
	}
	defer unpull()
	unlock, err := s.lock()
	if err != nil {
		return 0, 0, err
	}
	defer unlock()
	db, err := s.read()
	if err != nil {
		return 0, 0, err
	}
	used := map[string]bool{}
	for _, rec := range db {
		for _, l := range rec.Layers {
			used[strings.TrimPrefix(l.DiffID, "sha256:")] = true
		}
	}
	if s.inUse != nil {
		dirs, err := s.inUse()
		if err != nil {
			return 0, 0, fmt.Errorf("image store: finding the layers sandboxes use: %w", err)
		}
		for _, d := range dirs {
			// By name alone: a layer is kept however its path was spelt.
			used[filepath.Base(d)] = true
		}
	}
	layers := filepath.Join(s.dir, "layers")
	entries, err := os.ReadDir(layers)
	if err != nil {
		return 0, 0, fmt.Errorf("image store: %w", err)
	}
	var n int
	var freed int64
	for _, e := range entries {
		hexName := strings.TrimSuffix(e.Name(), ".size")
		if used[hexName] || !e.IsDir() {
			if !e.IsDir() && !used[hexName] {
				os.Remove(filepath.Join(layers, e.Name())) // a size file without its layer
			}
			continue
		}
		size, _ := s.cachedLayer("sha256:" + hexName)
		if err := os.RemoveAll(filepath.Join(layers, e.Name())); err != nil {
			return n, freed, fmt.Errorf("image store: %w", err)
		}
		os.Remove(filepath.Join(layers, e.Name()+".size"))
		n++
		freed += size
	}
	// No pull runs while Prune holds the pull lock: all of tmp/ is left
	// by pulls that died.
	tmps, _ := os.ReadDir(filepath.Join(s.dir, "tmp"))
	for _, e := range tmps {
		os.RemoveAll(filepath.Join(s.dir, "tmp", e.Name()))
	}
	return n, freed, nil
}
