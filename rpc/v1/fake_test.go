package v1_test

// A fake of the sandbox service for the v1 API's tests: records in a map
// (Manager and Lifecycles), scripted processes and an in-memory file
// system (Sessions). It counts what is live, so tests can check that a
// socket's end leaves no process or open file behind.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"maps"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox"
)

type fakeService struct {
	mu    sync.Mutex
	boxes map[sandbox.ID]*sandbox.Record
	// startFail, if set, makes Start fail with it (and mark the record
	// failed when it is of class Internal).
	startFail error
	// starts counts calls of Start.
	starts int
	// getFail, if set, makes Get fail with it.
	getFail error
}

func newFakeService() *fakeService {
	return &fakeService{boxes: map[sandbox.ID]*sandbox.Record{}}
}

func newUUID() string {
	b := make([]byte, 16)
	rand.Read(b)
	h := hex.EncodeToString(b)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

func (f *fakeService) Start(ctx context.Context, id sandbox.ID, cfg *sandbox.Config) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.starts++
	r := f.boxes[id]
	if r == nil {
		if cfg == nil {
			cfg = &sandbox.Config{}
		}
		r = &sandbox.Record{ID: id, UUID: newUUID(), Created: time.Now()}
		f.boxes[id] = r
	}
	if cfg != nil {
		r.Config = *cfg
		if r.Config.Image == "" {
			r.Config.Image = sandbox.DefaultImage
		}
	}
	if f.startFail != nil {
		if errdefs.Classify(f.startFail) == errdefs.Internal {
			r.State, r.Failure = sandbox.StateFailed, "the engine broke"
		}
		return f.startFail
	}
	r.State, r.Started, r.Failure = sandbox.StateRunning, time.Now(), ""
	return nil
}

func (f *fakeService) Stop(ctx context.Context, id sandbox.ID) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := f.boxes[id]
	if r == nil {
		return errdefs.NotFoundf("sandbox %q not found", id.Name())
	}
	if r.State == sandbox.StateRunning {
		r.State, r.Stopped = sandbox.StateStopped, time.Now()
	}
	return nil
}

func (f *fakeService) Metrics(context.Context, string) ([]sandbox.Metrics, error) {
	return nil, errdefs.Unavailablef("fake")
}

func (f *fakeService) SandboxMetrics(context.Context, sandbox.ID) (sandbox.Metrics, error) {
	return sandbox.Metrics{}, errdefs.Unavailablef("fake")
}

func (f *fakeService) RunCode(context.Context, sandbox.ID, sandbox.Language, string, time.Duration) (sandbox.ReplResult, error) {
	return sandbox.ReplResult{}, errdefs.Unavailablef("fake")
}

func (f *fakeService) Pool() []sandbox.PoolStatus { return nil }

func (f *fakeService) Usage(string) (sandbox.Usage, sandbox.Quota) {
	return sandbox.Usage{}, sandbox.Quota{}
}

func (f *fakeService) Exec(context.Context, sandbox.ID, sandbox.ExecRequest) (sandbox.ExecResult, error) {
	return sandbox.ExecResult{}, errdefs.Unavailablef("fake")
}

func (f *fakeService) SetNetwork(context.Context, sandbox.ID, sandbox.Network) (sandbox.NetworkUpdate, error) {
	return sandbox.NetworkUpdate{}, errdefs.Unavailablef("fake")
}

func (f *fakeService) Get(ctx context.Context, id sandbox.ID) (sandbox.Record, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.getFail != nil {
		return sandbox.Record{}, f.getFail
	}
	if r := f.boxes[id]; r != nil {
		return *r, nil
	}
	return sandbox.Record{}, errdefs.NotFoundf("sandbox %q not found in namespace %q", id.Name(), id.Namespace())
}

func (f *fakeService) GetByUUID(ctx context.Context, ns, uuid string) (sandbox.Record, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for id, r := range f.boxes {
		if id.Namespace() == ns && r.UUID == uuid {
			return *r, nil
		}
	}
	return sandbox.Record{}, errdefs.NotFoundf("no sandbox with id %q in namespace %q", uuid, ns)
}

func (f *fakeService) List(ctx context.Context, ns string, o sandbox.ListOptions) ([]sandbox.Record, string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var all []sandbox.Record
	for id, r := range f.boxes {
		if id.Namespace() != ns || id.Name() <= o.After {
			continue
		}
		ok := true
		for k, v := range o.Labels {
			if r.Config.Labels[k] != v {
				ok = false
			}
		}
		if ok {
			all = append(all, *r)
		}
	}
	slices.SortFunc(all, func(a, b sandbox.Record) int { return strings.Compare(a.ID.Name(), b.ID.Name()) })
	limit := o.Limit
	if limit == 0 {
		limit = 20
	}
	if len(all) > limit {
		return all[:limit], all[limit-1].ID.Name(), nil
	}
	return all, "", nil
}

func (f *fakeService) Remove(ctx context.Context, id sandbox.ID) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.boxes[id] == nil {
		return errdefs.NotFoundf("sandbox %q not found", id.Name())
	}
	delete(f.boxes, id)
	return nil
}

// fakeSessions runs scripted processes and keeps files in memory. The
// commands: echo ARGS (stdout), err TEXT (stderr), cat (stdin to stdout
// until EOF), sleep (until a signal: exit -1), big N (N bytes of stdout),
// stuck (ignores everything but Close), anything else fails not_found.
type fakeSessions struct {
	svc *fakeService

	live    atomic.Int64 // processes running
	killed  atomic.Int64 // processes killed by Close
	handles atomic.Int64 // files open

	mu    sync.Mutex
	files map[string][]byte
	dirs  map[string]bool
	specs []sandbox.ExecSpec
}

func newFakeSessions(svc *fakeService) *fakeSessions {
	return &fakeSessions{svc: svc, files: map[string][]byte{}, dirs: map[string]bool{"/": true, "/tmp": true}}
}

func (f *fakeSessions) running(ctx context.Context, id sandbox.ID) error {
	r, err := f.svc.Get(ctx, id)
	if err != nil {
		return err
	}
	if r.State != sandbox.StateRunning {
		return errdefs.Conflictf("sandbox %q is not running", id.Name())
	}
	return nil
}

type fakeProc struct {
	f      *fakeSessions
	stdin  chan []byte
	sig    chan int
	closed chan struct{}
	once   sync.Once
	done   chan struct{}
	mu     sync.Mutex
	rows   uint16
}

func (p *fakeProc) Stdin(ctx context.Context, b []byte) error {
	select {
	case p.stdin <- append([]byte(nil), b...):
		return nil
	case <-p.done:
		return errdefs.Conflictf("the process has exited")
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (p *fakeProc) Signal(sig int) error {
	select {
	case p.sig <- sig:
	case <-p.done:
	}
	return nil
}

func (p *fakeProc) Resize(rows, cols uint16) error {
	p.mu.Lock()
	p.rows = rows
	p.mu.Unlock()
	return nil
}

func (p *fakeProc) Done() <-chan struct{} { return p.done }

func (p *fakeProc) Close() error {
	p.once.Do(func() { close(p.closed) })
	return nil
}

func (f *fakeSessions) Stream(ctx context.Context, id sandbox.ID, spec sandbox.ExecSpec, killOnClose bool, events func(sandbox.ExecEvent)) (sandbox.Process, error) {
	if err := f.running(ctx, id); err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.specs = append(f.specs, spec)
	f.mu.Unlock()
	p := &fakeProc{f: f, stdin: make(chan []byte), sig: make(chan int), closed: make(chan struct{}), done: make(chan struct{})}
	f.live.Add(1)
	go func() {
		defer close(p.done)
		defer f.live.Add(-1)
		// emit stops delivering once the process was closed.
		emit := func(e sandbox.ExecEvent) bool {
			select {
			case <-p.closed:
				return false
			default:
				events(e)
				return true
			}
		}
		if spec.Command == "fail" || !slices.Contains([]string{"echo", "err", "cat", "sleep", "big", "stuck"}, spec.Command) {
			emit(sandbox.ExecEvent{Kind: sandbox.EventFailed, Fail: &sandbox.ExecFailure{Kind: "not_found", Errno: 2, Message: spec.Command + ": not found"}})
			return
		}
		if !emit(sandbox.ExecEvent{Kind: sandbox.EventStarted, Pid: 42}) {
			return
		}
		code := 0
		switch spec.Command {
		case "echo":
			emit(sandbox.ExecEvent{Kind: sandbox.EventStdout, Data: []byte(strings.Join(spec.Args, " ") + "\n")})
		case "err":
			emit(sandbox.ExecEvent{Kind: sandbox.EventStderr, Data: []byte(strings.Join(spec.Args, " ") + "\n")})
		case "big":
			n, _ := strconv.Atoi(spec.Args[0])
			chunk := bytes.Repeat([]byte("a"), 64<<10)
			for n > 0 {
				k := min(n, len(chunk))
				if !emit(sandbox.ExecEvent{Kind: sandbox.EventStdout, Data: chunk[:k]}) {
					f.killed.Add(1)
					return
				}
				n -= k
			}
		case "cat":
			for {
				select {
				case b := <-p.stdin:
					if len(b) == 0 {
						emit(sandbox.ExecEvent{Kind: sandbox.EventExited, Code: 0})
						return
					}
					emit(sandbox.ExecEvent{Kind: sandbox.EventStdout, Data: b})
				case <-p.closed:
					f.killed.Add(1)
					return
				}
			}
		case "sleep", "stuck":
			for {
				select {
				case sig := <-p.sig:
					if spec.Command == "sleep" {
						emit(sandbox.ExecEvent{Kind: sandbox.EventExited, Code: -1, Signal: sig})
						return
					}
				case <-p.stdin:
				case <-p.closed:
					f.killed.Add(1)
					return
				}
			}
		}
		emit(sandbox.ExecEvent{Kind: sandbox.EventExited, Code: code})
	}()
	return p, nil
}

type fakeHandle struct {
	f      *fakeSessions
	path   string
	closed atomic.Bool
}

func (h *fakeHandle) ReadTo(ctx context.Context, offset, n int64, w io.Writer) (int64, error) {
	h.f.mu.Lock()
	data := h.f.files[h.path]
	h.f.mu.Unlock()
	if offset > int64(len(data)) {
		return 0, nil
	}
	data = data[offset:]
	if n >= 0 && n < int64(len(data)) {
		data = data[:n]
	}
	var done int64
	for len(data) > 0 {
		k := min(len(data), sandbox.MaxChunk)
		if _, err := w.Write(data[:k]); err != nil {
			return done, err
		}
		done += int64(k)
		data = data[k:]
	}
	return done, nil
}

func (h *fakeHandle) WriteFrom(ctx context.Context, offset int64, r io.Reader) (int64, error) {
	var buf bytes.Buffer
	n, err := io.Copy(&buf, r)
	if err != nil {
		return n, err
	}
	h.f.mu.Lock()
	defer h.f.mu.Unlock()
	old := h.f.files[h.path]
	if int64(len(old)) < offset {
		old = append(old, make([]byte, offset-int64(len(old)))...)
	}
	h.f.files[h.path] = append(old[:offset], buf.Bytes()...)
	return n, nil
}

func (h *fakeHandle) Close() error {
	if h.closed.CompareAndSwap(false, true) {
		h.f.handles.Add(-1)
	}
	return nil
}

func clean(p string) string { return path.Clean("/" + p) }

func (f *fakeSessions) Open(ctx context.Context, id sandbox.ID, p string, o sandbox.OpenOptions) (sandbox.FileHandle, error) {
	if err := f.running(ctx, id); err != nil {
		return nil, err
	}
	p = clean(p)
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.files[p]; !ok {
		if !o.Create {
			return nil, errdefs.NotFoundf("open %s: no such file or directory", p)
		}
		if !f.dirs[path.Dir(p)] {
			return nil, errdefs.NotFoundf("open %s: no such directory", path.Dir(p))
		}
		f.files[p] = nil
	}
	if o.Truncate {
		f.files[p] = nil
	}
	f.handles.Add(1)
	return &fakeHandle{f: f, path: p}, nil
}

func (f *fakeSessions) info(p string) (sandbox.FileInfo, bool) {
	if data, ok := f.files[p]; ok {
		return sandbox.FileInfo{Path: p, Kind: sandbox.KindFile, Size: int64(len(data)), Mode: 0o100644, ModTime: time.Unix(1767225600, 0)}, true
	}
	if f.dirs[p] {
		return sandbox.FileInfo{Path: p, Kind: sandbox.KindDir, Mode: 0o40755, ModTime: time.Unix(1767225600, 0)}, true
	}
	return sandbox.FileInfo{}, false
}

func (f *fakeSessions) Stat(ctx context.Context, id sandbox.ID, p string, follow bool) (sandbox.FileInfo, error) {
	if err := f.running(ctx, id); err != nil {
		return sandbox.FileInfo{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if fi, ok := f.info(clean(p)); ok {
		fi.Path = p
		return fi, nil
	}
	return sandbox.FileInfo{}, errdefs.NotFoundf("stat %s: no such file or directory", p)
}

func (f *fakeSessions) List(ctx context.Context, id sandbox.ID, p string) ([]sandbox.FileInfo, error) {
	if err := f.running(ctx, id); err != nil {
		return nil, err
	}
	p = clean(p)
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.dirs[p] {
		return nil, errdefs.NotFoundf("list %s: no such directory", p)
	}
	var out []sandbox.FileInfo
	for _, name := range slices.Sorted(maps.Keys(f.files)) {
		if path.Dir(name) == p {
			fi, _ := f.info(name)
			out = append(out, fi)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(f.dirs)) {
		if name != p && path.Dir(name) == p {
			fi, _ := f.info(name)
			out = append(out, fi)
		}
	}
	return out, nil
}

func (f *fakeSessions) Mkdir(ctx context.Context, id sandbox.ID, p string, mode uint32) error {
	if err := f.running(ctx, id); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for d := clean(p); d != "/"; d = path.Dir(d) {
		f.dirs[d] = true
	}
	return nil
}

func (f *fakeSessions) Remove(ctx context.Context, id sandbox.ID, p string, recursive bool) error {
	if err := f.running(ctx, id); err != nil {
		return err
	}
	p = clean(p)
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.files[p]; ok {
		delete(f.files, p)
		return nil
	}
	if !f.dirs[p] {
		return errdefs.NotFoundf("remove %s: no such file or directory", p)
	}
	for name := range f.files {
		if strings.HasPrefix(name, p+"/") {
			if !recursive {
				return errdefs.Conflictf("remove %s: directory not empty", p)
			}
			delete(f.files, name)
		}
	}
	for name := range f.dirs {
		if name == p || strings.HasPrefix(name, p+"/") {
			delete(f.dirs, name)
		}
	}
	return nil
}

func (f *fakeSessions) Copy(ctx context.Context, id sandbox.ID, src, dst string) error {
	if err := f.running(ctx, id); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	data, ok := f.files[clean(src)]
	if !ok {
		return errdefs.NotFoundf("copy %s: no such file", src)
	}
	f.files[clean(dst)] = append([]byte(nil), data...)
	return nil
}

func (f *fakeSessions) Rename(ctx context.Context, id sandbox.ID, src, dst string) error {
	if err := f.Copy(ctx, id, src, dst); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.files, clean(src))
	return nil
}

var _ = fmt.Sprint
