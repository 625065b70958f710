package sandboxtest

import (
	"context"
	"fmt"
	"io"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox"
)

// The in-memory engine's streamed processes and files: enough of
// sandbox.Streamer and sandbox.FileSystem for the service's own logic to
// be tested. Each sandbox has a tree of files in memory (directories,
// files, symlinks; nothing is shared with the host; /usr is read-only and
// empty, so writing there is refused as a real sandbox's permissions
// would refuse it), and a few commands
// stream: cat (stdin to stdout until EOF), echo, sleep (until a signal,
// its timeout or Close), exit N. Anything else fails to start, not_found.

var (
	_ sandbox.Streamer   = (*Memory)(nil)
	_ sandbox.FileSystem = (*Memory)(nil)
)

// memNode is a file of an in-memory sandbox.
type memNode struct {
	kind  sandbox.FileKind
	data  []byte
	link  string // a symlink's target
	mode  uint32 // permission bits
	mtime time.Time
}

// tree returns the files of the running sandbox id, made on first use
// with /, /tmp, /usr and the sandbox's workdir. m.mu must be held.
func (m *Memory) tree(id sandbox.ID) (map[string]*memNode, string, error) {
	b, ok := m.boxes[id]
	switch {
	case !ok:
		return nil, "", fmt.Errorf("sandbox %s: %w", id, errdefs.ErrNotFound)
	case b.state != sandbox.StateRunning:
		return nil, "", fmt.Errorf("sandbox %s is not running: %w", id, errdefs.ErrConflict)
	}
	wd := b.spec.Workdir
	if wd == "" {
		wd = "/"
	}
	if b.files == nil {
		b.files = map[string]*memNode{}
		now := time.Now()
		for p := wd; ; p = path.Dir(p) {
			b.files[p] = &memNode{kind: sandbox.KindDir, mode: 0o755, mtime: now}
			if p == "/" {
				break
			}
		}
		b.files["/tmp"] = &memNode{kind: sandbox.KindDir, mode: 0o1777, mtime: now}
		b.files["/usr"] = &memNode{kind: sandbox.KindDir, mode: 0o755, mtime: now}
	}
	return b.files, wd, nil
}

// fsErr is a file error of the class a real engine gives errno.
func fsErr(op, p string, errno syscall.Errno) error {
	class := map[syscall.Errno]errdefs.Class{
		syscall.ENOENT: errdefs.NotFound, syscall.EEXIST: errdefs.Conflict, syscall.ENOTDIR: errdefs.Conflict,
		syscall.EISDIR: errdefs.Conflict, syscall.ENOTEMPTY: errdefs.Conflict, syscall.EINVAL: errdefs.Invalid,
		syscall.ELOOP: errdefs.Invalid, syscall.EACCES: errdefs.Forbidden,
	}[errno]
	return &errdefs.Error{Class: class, Msg: fmt.Sprintf("%s %s: %v", op, p, errno), Err: errno}
}

// resolve returns the clean absolute path p names, following symlinks in
// every component but the last, and in the last too when follow is set.
func resolve(files map[string]*memNode, wd, op, p string, follow bool) (string, error) {
	if p == "" || strings.IndexByte(p, 0) >= 0 {
		return "", fsErr(op, p, syscall.EINVAL)
	}
	if !path.IsAbs(p) {
		p = path.Join(wd, p)
	}
	for hops := 0; ; hops++ {
		if hops > 40 {
			return "", fsErr(op, p, syscall.ELOOP)
		}
		parts := strings.Split(strings.TrimPrefix(path.Clean(p), "/"), "/")
		cur, redirected := "/", false
		for i, part := range parts {
			if part == "" {
				continue
			}
			next := path.Join(cur, part)
			n := files[next]
			last := i == len(parts)-1
			if n != nil && n.kind == sandbox.KindSymlink && (!last || follow) {
				target := n.link
				if !path.IsAbs(target) {
					target = path.Join(cur, target)
				}
				p = path.Join(append([]string{target}, parts[i+1:]...)...)
				redirected = true
				break
			}
			if !last && (n == nil || n.kind != sandbox.KindDir) {
				if n == nil {
					return "", fsErr(op, p, syscall.ENOENT)
				}
				return "", fsErr(op, p, syscall.ENOTDIR)
			}
			cur = next
		}
		if !redirected {
			return cur, nil
		}
	}
}

// parentDir checks that p's directory exists.
func parentDir(files map[string]*memNode, op, p string) error {
	d := files[path.Dir(p)]
	switch {
	case d == nil:
		return fsErr(op, p, syscall.ENOENT)
	case d.kind != sandbox.KindDir:
		return fsErr(op, p, syscall.ENOTDIR)
	}
	return nil
}

func info(asked string, n *memNode) sandbox.FileInfo {
	mode := n.mode
	switch n.kind {
	case sandbox.KindDir:
		mode |= syscall.S_IFDIR
	case sandbox.KindSymlink:
		mode |= syscall.S_IFLNK
	default:
		mode |= syscall.S_IFREG
	}
	size := int64(len(n.data))
	if n.kind == sandbox.KindSymlink {
		size = int64(len(n.link))
	}
	return sandbox.FileInfo{Path: asked, Kind: n.kind, Size: size, Mode: mode, ModTime: n.mtime, ATime: n.mtime}
}

// Symlink makes a symlink at p to target in the running sandbox id, as
// `ln -s` would in a real one.
func (m *Memory) Symlink(id sandbox.ID, target, p string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	files, wd, err := m.tree(id)
	if err != nil {
		return err
	}
	if p, err = resolve(files, wd, "symlink", p, false); err != nil {
		return err
	}
	if err := parentDir(files, "symlink", p); err != nil {
		return err
	}
	if files[p] != nil {
		return fsErr("symlink", p, syscall.EEXIST)
	}
	files[p] = &memNode{kind: sandbox.KindSymlink, link: target, mode: 0o777, mtime: time.Now()}
	return nil
}

// Open implements sandbox.FileSystem.
func (m *Memory) Open(ctx context.Context, id sandbox.ID, p string, o sandbox.OpenOptions) (sandbox.FileHandle, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	files, wd, err := m.tree(id)
	if err != nil {
		return nil, err
	}
	full, err := resolve(files, wd, "open", p, true)
	if err != nil {
		return nil, err
	}
	if (o.Write || o.Append || o.Create || o.Exclusive || o.Truncate) && (full == "/usr" || strings.HasPrefix(full, "/usr/")) {
		return nil, fsErr("open", full, syscall.EACCES)
	}
	n := files[full]
	switch {
	case n != nil && o.Exclusive:
		return nil, fsErr("open", full, syscall.EEXIST)
	case n == nil && !o.Create && !o.Exclusive:
		return nil, fsErr("open", full, syscall.ENOENT)
	case n == nil:
		if err := parentDir(files, "open", full); err != nil {
			return nil, err
		}
		mode := o.Mode & 0o7777
		if mode == 0 {
			mode = 0o644
		}
		n = &memNode{kind: sandbox.KindFile, mode: mode, mtime: time.Now()}
		files[full] = n
	case n.kind == sandbox.KindDir && (o.Write || o.Append):
		return nil, fsErr("open", full, syscall.EISDIR)
	}
	if o.Truncate && n.kind == sandbox.KindFile {
		n.data = nil
	}
	return &memHandle{m: m, path: full, node: n, append: o.Append}, nil
}

// memHandle is an open in-memory file.
type memHandle struct {
	m      *Memory
	path   string
	node   *memNode
	append bool
}

// ReadTo implements sandbox.FileHandle, in chunks of at most
// sandbox.MaxChunk.
func (h *memHandle) ReadTo(ctx context.Context, offset, n int64, w io.Writer) (int64, error) {
	h.m.mu.Lock()
	if h.node.kind == sandbox.KindDir {
		h.m.mu.Unlock()
		return 0, fsErr("read", h.path, syscall.EISDIR)
	}
	if offset < 0 {
		h.m.mu.Unlock()
		return 0, fsErr("read", h.path, syscall.EINVAL)
	}
	data := h.node.data[min(offset, int64(len(h.node.data))):]
	if n >= 0 && int64(len(data)) > n {
		data = data[:n]
	}
	data = slices.Clone(data)
	h.m.mu.Unlock()
	var total int64
	for len(data) > 0 {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		chunk := data[:min(len(data), sandbox.MaxChunk)]
		k, err := w.Write(chunk)
		total += int64(k)
		if err != nil {
			return total, err
		}
		data = data[len(chunk):]
	}
	return total, nil
}

// WriteFrom implements sandbox.FileHandle.
func (h *memHandle) WriteFrom(ctx context.Context, offset int64, r io.Reader) (int64, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return 0, err
	}
	h.m.mu.Lock()
	defer h.m.mu.Unlock()
	if offset < 0 {
		return 0, fsErr("write", h.path, syscall.EINVAL)
	}
	n := h.node
	if h.append {
		offset = int64(len(n.data))
	}
	if end := offset + int64(len(data)); end > int64(len(n.data)) {
		n.data = append(n.data, make([]byte, end-int64(len(n.data)))...)
	}
	copy(n.data[offset:], data)
	n.mtime = time.Now()
	return int64(len(data)), nil
}

// Close implements sandbox.FileHandle.
func (h *memHandle) Close() error { return nil }

// Stat implements sandbox.FileSystem.
func (m *Memory) Stat(ctx context.Context, id sandbox.ID, p string, follow bool) (sandbox.FileInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	files, wd, err := m.tree(id)
	if err != nil {
		return sandbox.FileInfo{}, err
	}
	full, err := resolve(files, wd, "stat", p, follow)
	if err != nil {
		return sandbox.FileInfo{}, err
	}
	n := files[full]
	if n == nil {
		return sandbox.FileInfo{}, fsErr("stat", full, syscall.ENOENT)
	}
	return info(p, n), nil
}

// List implements sandbox.FileSystem.
func (m *Memory) List(ctx context.Context, id sandbox.ID, p string) ([]sandbox.FileInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	files, wd, err := m.tree(id)
	if err != nil {
		return nil, err
	}
	full, err := resolve(files, wd, "list", p, true)
	if err != nil {
		return nil, err
	}
	switch n := files[full]; {
	case n == nil:
		return nil, fsErr("list", full, syscall.ENOENT)
	case n.kind != sandbox.KindDir:
		return nil, fsErr("list", full, syscall.ENOTDIR)
	}
	out := []sandbox.FileInfo{}
	for fp, n := range files {
		if fp != "/" && path.Dir(fp) == full {
			out = append(out, info(strings.TrimSuffix(p, "/")+"/"+path.Base(fp), n))
		}
	}
	slices.SortFunc(out, func(a, b sandbox.FileInfo) int { return strings.Compare(a.Path, b.Path) })
	return out, nil
}

// Mkdir implements sandbox.FileSystem.
func (m *Memory) Mkdir(ctx context.Context, id sandbox.ID, p string, mode uint32) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	files, wd, err := m.tree(id)
	if err != nil {
		return err
	}
	if p == "" || strings.IndexByte(p, 0) >= 0 {
		return fsErr("mkdir", p, syscall.EINVAL)
	}
	if !path.IsAbs(p) {
		p = path.Join(wd, p)
	}
	if mode == 0 {
		mode = 0o755
	}
	cur := "/"
	for _, part := range strings.Split(strings.TrimPrefix(path.Clean(p), "/"), "/") {
		if part == "" {
			continue
		}
		cur = path.Join(cur, part)
		switch n := files[cur]; {
		case n == nil:
			files[cur] = &memNode{kind: sandbox.KindDir, mode: mode & 0o7777, mtime: time.Now()}
		case n.kind != sandbox.KindDir:
			return fsErr("mkdir", cur, syscall.ENOTDIR)
		}
	}
	return nil
}

// Remove implements sandbox.FileSystem.
func (m *Memory) Remove(ctx context.Context, id sandbox.ID, p string, recursive bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	files, wd, err := m.tree(id)
	if err != nil {
		return err
	}
	full, err := resolve(files, wd, "remove", p, false)
	if err != nil {
		return err
	}
	n := files[full]
	if n == nil {
		return fsErr("remove", full, syscall.ENOENT)
	}
	var inside []string
	for fp := range files {
		if strings.HasPrefix(fp, full+"/") {
			inside = append(inside, fp)
		}
	}
	if len(inside) > 0 && !recursive {
		return fsErr("remove", full, syscall.ENOTEMPTY)
	}
	for _, fp := range inside {
		delete(files, fp)
	}
	delete(files, full)
	return nil
}

// Copy implements sandbox.FileSystem.
func (m *Memory) Copy(ctx context.Context, id sandbox.ID, src, dst string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	files, wd, err := m.tree(id)
	if err != nil {
		return err
	}
	from, err := resolve(files, wd, "copy", src, true)
	if err != nil {
		return err
	}
	to, err := resolve(files, wd, "copy", dst, true)
	if err != nil {
		return err
	}
	n := files[from]
	switch {
	case n == nil:
		return fsErr("copy", from, syscall.ENOENT)
	case n.kind == sandbox.KindDir:
		return fsErr("copy", from, syscall.EISDIR)
	}
	if err := parentDir(files, "copy", to); err != nil {
		return err
	}
	if d := files[to]; d != nil && d.kind == sandbox.KindDir {
		return fsErr("copy", to, syscall.EISDIR)
	}
	files[to] = &memNode{kind: sandbox.KindFile, data: slices.Clone(n.data), mode: n.mode, mtime: time.Now()}
	return nil
}

// Rename implements sandbox.FileSystem.
func (m *Memory) Rename(ctx context.Context, id sandbox.ID, src, dst string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	files, wd, err := m.tree(id)
	if err != nil {
		return err
	}
	from, err := resolve(files, wd, "rename", src, false)
	if err != nil {
		return err
	}
	to, err := resolve(files, wd, "rename", dst, false)
	if err != nil {
		return err
	}
	if files[from] == nil {
		return fsErr("rename", from, syscall.ENOENT)
	}
	if err := parentDir(files, "rename", to); err != nil {
		return err
	}
	for fp, n := range files {
		if fp == from || strings.HasPrefix(fp, from+"/") {
			delete(files, fp)
			files[to+strings.TrimPrefix(fp, from)] = n
		}
	}
	return nil
}

// Streamed reports the specs of the processes streamed so far, in order.
func (m *Memory) Streamed() []sandbox.ExecSpec {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.streamed)
}

// Stream implements sandbox.Streamer with the commands of the package
// comment above.
func (m *Memory) Stream(ctx context.Context, id sandbox.ID, spec sandbox.ExecSpec, killOnClose bool, events func(sandbox.ExecEvent)) (sandbox.Process, error) {
	m.mu.Lock()
	b, ok := m.boxes[id]
	switch {
	case !ok:
		m.mu.Unlock()
		return nil, fmt.Errorf("sandbox %s: %w", id, errdefs.ErrNotFound)
	case b.state != sandbox.StateRunning:
		m.mu.Unlock()
		return nil, fmt.Errorf("sandbox %s is not running: %w", id, errdefs.ErrConflict)
	}
	m.streamed = append(m.streamed, spec)
	m.pid++
	pid, exited := m.pid, b.exited
	m.mu.Unlock()
	if events == nil {
		events = func(sandbox.ExecEvent) {}
	}
	p := &memProcess{stdin: make(chan []byte), signals: make(chan int, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go p.run(spec, pid, exited, events)
	return p, nil
}

// memProcess is a streamed process of the in-memory engine.
type memProcess struct {
	stdin   chan []byte // nil data: EOF
	signals chan int
	stop    chan struct{}
	once    sync.Once
	done    chan struct{}
}

func (p *memProcess) run(spec sandbox.ExecSpec, pid int, exited <-chan struct{}, events func(sandbox.ExecEvent)) {
	defer close(p.done)
	emit := func(ev sandbox.ExecEvent) bool {
		select {
		case <-p.stop:
			return false
		default:
			events(ev)
			return true
		}
	}
	var code int
	switch spec.Command {
	case "cat", "echo", "sleep":
	case "exit":
		if len(spec.Args) != 1 {
			emit(sandbox.ExecEvent{Kind: sandbox.EventFailed, Fail: &sandbox.ExecFailure{Kind: "bad_args", Message: "exit N"}})
			return
		}
		code, _ = strconv.Atoi(spec.Args[0])
	default:
		emit(sandbox.ExecEvent{Kind: sandbox.EventFailed, Fail: &sandbox.ExecFailure{Kind: "not_found", Errno: int(syscall.ENOENT),
			Message: fmt.Sprintf("command %q not found", spec.Command)}})
		return
	}
	if !emit(sandbox.ExecEvent{Kind: sandbox.EventStarted, Pid: pid}) {
		return
	}
	var timeout <-chan time.Time
	if spec.Timeout > 0 {
		t := time.NewTimer(spec.Timeout)
		defer t.Stop()
		timeout = t.C
	}
	killed := func(sig int, timedOut bool) {
		emit(sandbox.ExecEvent{Kind: sandbox.EventExited, Code: -1, Signal: sig, TimedOut: timedOut})
	}
	if spec.Command == "echo" {
		emit(sandbox.ExecEvent{Kind: sandbox.EventStdout, Data: []byte(strings.Join(spec.Args, " ") + "\n")})
	}
	for spec.Command == "cat" || spec.Command == "sleep" {
		select {
		case data := <-p.stdin:
			if spec.Command != "cat" {
				continue
			}
			if data == nil {
				emit(sandbox.ExecEvent{Kind: sandbox.EventExited})
				return
			}
			if !emit(sandbox.ExecEvent{Kind: sandbox.EventStdout, Data: data}) {
				return
			}
		case sig := <-p.signals:
			killed(sig, false)
			return
		case <-timeout:
			killed(int(syscall.SIGKILL), true)
			return
		case <-exited:
			killed(int(syscall.SIGKILL), false)
			return
		case <-p.stop:
			return
		}
	}
	emit(sandbox.ExecEvent{Kind: sandbox.EventExited, Code: code})
}

// Stdin implements sandbox.Process: cat echoes it, sleep drops it.
func (p *memProcess) Stdin(ctx context.Context, data []byte) error {
	if len(data) == 0 {
		data = nil
	} else {
		data = slices.Clone(data)
	}
	select {
	case p.stdin <- data:
		return nil
	case <-p.done:
		return errdefs.Conflictf("the process has ended")
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Signal implements sandbox.Process: any signal ends sleep and cat.
func (p *memProcess) Signal(sig int) error {
	select {
	case p.signals <- sig:
	default:
	}
	return nil
}

// Resize implements sandbox.Process; there is no terminal.
func (p *memProcess) Resize(rows, cols uint16) error { return nil }

// Done implements sandbox.Process.
func (p *memProcess) Done() <-chan struct{} { return p.done }

// Close implements sandbox.Process.
func (p *memProcess) Close() error {
	p.once.Do(func() { close(p.stop) })
	return nil
}
