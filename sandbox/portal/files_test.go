package portal_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/msb-dev/msb/sandbox"
	"github.com/msb-dev/msb/sandbox/portal"
	"github.com/msb-dev/msb/sandbox/sandboxtest"
)

func fctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// writeFile writes data to path through the portal.
func (p *testPortal) writeFile(t *testing.T, path string, o sandbox.OpenOptions, data string) error {
	t.Helper()
	f, err := p.Open(fctx(t), path, o)
	if err != nil {
		return err
	}
	defer f.Close()
	n, err := f.WriteFrom(fctx(t), 0, strings.NewReader(data))
	if err == nil && n != int64(len(data)) {
		t.Errorf("wrote %d bytes of %d", n, len(data))
	}
	return err
}

// readFile reads n bytes from offset of path through the portal.
func (p *testPortal) readFile(t *testing.T, path string, offset, n int64) (string, error) {
	t.Helper()
	f, err := p.Open(fctx(t), path, sandbox.OpenOptions{Read: true})
	if err != nil {
		return "", err
	}
	defer f.Close()
	var b bytes.Buffer
	got, err := f.ReadTo(fctx(t), offset, n, &b)
	if err == nil && got != int64(b.Len()) {
		t.Errorf("ReadTo said %d bytes, wrote %d", got, b.Len())
	}
	return b.String(), err
}

func wantErrno(t *testing.T, what string, err error, errno syscall.Errno) {
	t.Helper()
	var fe *portal.FileError
	if !errors.As(err, &fe) || fe.Errno != errno || !errors.Is(err, errno) {
		t.Errorf("%s: %v, want a FileError of %v", what, err, errno)
	}
}

func TestFiles(t *testing.T) {
	t.Parallel()
	p := newPortal(t)
	dir := t.TempDir()
	ctx := fctx(t)
	file := filepath.Join(dir, "a.txt")

	if err := p.writeFile(t, file, sandbox.OpenOptions{Write: true, Create: true, Truncate: true, Mode: 0o600}, "hello"); err != nil {
		t.Fatal(err)
	}
	if got, err := p.readFile(t, file, 0, -1); got != "hello" || err != nil {
		t.Errorf("read back %q, %v", got, err)
	}
	if got, err := p.readFile(t, file, 1, 3); got != "ell" || err != nil {
		t.Errorf("read 3 from 1: %q, %v", got, err)
	}
	if got, err := p.readFile(t, file, 10, -1); got != "" || err != nil {
		t.Errorf("read past the end: %q, %v", got, err)
	}
	if err := p.writeFile(t, file, sandbox.OpenOptions{Append: true}, " world"); err != nil {
		t.Fatal(err)
	}
	fi, err := p.Stat(ctx, file, true)
	if err != nil || fi.Kind != sandbox.KindFile || fi.Size != 11 || fi.Mode != syscall.S_IFREG|0o600 || fi.Path != file ||
		time.Since(fi.ModTime) > time.Minute || fi.ATime.IsZero() || fi.UID != 0 {
		t.Errorf("stat %+v, %v", fi, err)
	}
	wantErrno(t, "exclusive create of an existing file", p.writeFile(t, file, sandbox.OpenOptions{Write: true, Exclusive: true}, "x"), syscall.EEXIST)
	_, err = p.readFile(t, filepath.Join(dir, "missing"), 0, -1)
	wantErrno(t, "open a missing file", err, syscall.ENOENT)
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "missing") {
		t.Errorf("open a missing file: %v", err)
	}
	_, err = p.readFile(t, dir, 0, -1)
	wantErrno(t, "read a directory", err, syscall.EISDIR)

	// Relative paths are taken from the sandbox's working directory.
	if err := p.writeFile(t, "rel.txt", sandbox.OpenOptions{Write: true, Create: true}, "rel"); err != nil {
		t.Fatal(err)
	}
	if data, err := os.ReadFile(filepath.Join(p.dir, "rel.txt")); string(data) != "rel" {
		t.Errorf("relative write landed elsewhere: %q, %v", data, err)
	}

	sub := filepath.Join(dir, "x", "y", "z")
	if err := p.Mkdir(ctx, sub, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := p.Mkdir(ctx, sub, 0); err != nil {
		t.Errorf("mkdir -p of an existing directory: %v", err)
	}
	if fi, err := p.Stat(ctx, sub, false); err != nil || fi.Kind != sandbox.KindDir || fi.Mode != syscall.S_IFDIR|0o700 {
		t.Errorf("stat of the new directory %+v, %v", fi, err)
	}
	wantErrno(t, "mkdir over a file", p.Mkdir(ctx, filepath.Join(file, "sub"), 0), syscall.ENOTDIR)

	if err := os.Symlink("a.txt", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	if fi, err := p.Stat(ctx, filepath.Join(dir, "link"), false); err != nil || fi.Kind != sandbox.KindSymlink {
		t.Errorf("lstat of a link: %+v, %v", fi, err)
	}
	if fi, err := p.Stat(ctx, filepath.Join(dir, "link"), true); err != nil || fi.Kind != sandbox.KindFile || fi.Size != 11 {
		t.Errorf("stat through a link: %+v, %v", fi, err)
	}

	if err := p.Copy(ctx, file, filepath.Join(dir, "b.txt")); err != nil {
		t.Fatal(err)
	}
	if got, _ := p.readFile(t, filepath.Join(dir, "b.txt"), 0, -1); got != "hello world" {
		t.Errorf("copy holds %q", got)
	}
	wantErrno(t, "copy a directory", p.Copy(ctx, dir, filepath.Join(dir, "c")), syscall.EISDIR)
	wantErrno(t, "copy onto itself", p.Copy(ctx, file, file), syscall.EINVAL)
	if err := p.Rename(ctx, filepath.Join(dir, "b.txt"), filepath.Join(dir, "x", "b.txt")); err != nil {
		t.Fatal(err)
	}

	list, err := p.List(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range list {
		names = append(names, fmt.Sprintf("%s:%s", strings.TrimPrefix(e.Path, dir), e.Kind))
	}
	if got := strings.Join(names, " "); got != "/a.txt:file /link:symlink /x:dir" {
		t.Errorf("list: %s", got)
	}
	if list[0].Size != 11 || list[0].Mode != syscall.S_IFREG|0o600 {
		t.Errorf("entry %+v", list[0])
	}
	if _, err := p.List(ctx, file); !errors.Is(err, syscall.ENOTDIR) {
		t.Errorf("list a file: %v", err)
	}
	if l, err := p.List(ctx, sub); err != nil || l == nil || len(l) != 0 {
		t.Errorf("list an empty directory: %v, %v", l, err)
	}

	wantErrno(t, "remove a non-empty directory", p.Remove(ctx, filepath.Join(dir, "x"), false), syscall.ENOTEMPTY)
	if err := p.Remove(ctx, filepath.Join(dir, "x"), true); err != nil {
		t.Fatal(err)
	}
	if err := p.Remove(ctx, filepath.Join(dir, "link"), false); err != nil {
		t.Fatal(err)
	}
	wantErrno(t, "remove a missing file", p.Remove(ctx, filepath.Join(dir, "link"), false), syscall.ENOENT)
	if _, err := os.Stat(file); err != nil {
		t.Errorf("removing a link removed its target: %v", err)
	}
	wantErrno(t, "stat of an empty path", func() error { _, err := p.Stat(ctx, "", true); return err }(), syscall.EINVAL)
	wantErrno(t, "stat of a path with NUL", func() error { _, err := p.Stat(ctx, "/a\x00b", true); return err }(), syscall.EINVAL)
}

func TestFileHandleLimit(t *testing.T) {
	t.Parallel()
	p := newPortal(t)
	var open []*portal.File
	defer func() {
		for _, f := range open {
			f.Close()
		}
	}()
	for range 1024 {
		f, err := p.Open(fctx(t), "/dev/null", sandbox.OpenOptions{Read: true})
		if err != nil {
			t.Fatalf("open #%d: %v", len(open)+1, err)
		}
		open = append(open, f)
	}
	_, err := p.Open(fctx(t), "/dev/null", sandbox.OpenOptions{Read: true})
	wantErrno(t, "open #1025", err, syscall.EMFILE)
	open[0].Close()
	f, err := p.Open(fctx(t), "/dev/null", sandbox.OpenOptions{Read: true})
	if err != nil {
		t.Fatalf("open after a close: %v", err)
	}
	open[0] = f
	if _, err := f.ReadTo(fctx(t), 0, -1, io.Discard); err != nil {
		t.Errorf("read /dev/null: %v", err)
	}
}

// A 64 MiB file goes in and out through bounded memory, however slowly
// it is consumed.
func TestFileRoundTripBounded(t *testing.T) {
	// Not parallel: it measures the process's heap.
	p := newPortal(t)
	const size = 64 << 20
	path := filepath.Join(t.TempDir(), "big")
	want := sha256.New()
	io.Copy(want, sandboxtest.Pattern(size))
	peak := sandboxtest.HeapPeak(func() {
		f, err := p.Open(fctx(t), path, sandbox.OpenOptions{Write: true, Create: true})
		if err != nil {
			t.Fatal(err)
		}
		if n, err := f.WriteFrom(fctx(t), 0, sandboxtest.Pattern(size)); n != size || err != nil {
			t.Fatalf("wrote %d, %v", n, err)
		}
		f.Close()
		f, err = p.Open(fctx(t), path, sandbox.OpenOptions{Read: true})
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		got := sha256.New()
		slow := writerFunc(func(b []byte) (int, error) {
			time.Sleep(2 * time.Millisecond)
			return got.Write(b)
		})
		if n, err := f.ReadTo(fctx(t), 0, -1, slow); n != size || err != nil {
			t.Fatalf("read %d, %v", n, err)
		}
		if !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
			t.Error("the file read back differs from the one written")
		}
	})
	base := heapNow()
	t.Logf("heap peak %d MiB (now %d MiB) for 64 MiB written and read", peak>>20, base>>20)
	if peak > base+32<<20 {
		t.Errorf("heap peaked at %d MiB: not bounded", peak>>20)
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() != size {
		t.Errorf("file on disk: %v, %v", fi, err)
	}
}
