package linux

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A tenant asking for many disk sizes leaves nothing behind: disks are
// made ahead for the default size only, and the templates of other sizes
// are bounded (maxTemplates), so loop devices and the host's disk are not
// used up by sizes no one asks for again.
func TestDiskSizesLeaveNothingBehind(t *testing.T) {
	root := t.TempDir()
	const readyMiB = 64
	d, err := newDisks(root, readyMiB, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.drain(); d.remove() })
	sizes := []int{readyMiB}
	for i := range maxTemplates + 4 {
		sizes = append(sizes, readyMiB+1+i)
	}
	for i, mib := range sizes {
		dir := filepath.Join(root, "sb", strings.Repeat("x", i+1))
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		k, err := d.create(dir, mib)
		if err != nil {
			t.Fatal(err)
		}
		k.close(true) // the sandbox is deleted
		os.RemoveAll(dir)
	}
	// The ready disks of the default size are made in the background.
	deadline := time.Now().Add(20 * time.Second)
	for {
		d.mu.Lock()
		n := len(d.pool[readyMiB])
		d.mu.Unlock()
		if n == diskPoolSize || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // a refill of another size would have started by now
	if n := len(LoopsUnder(root)); n != diskPoolSize {
		t.Errorf("%d loop devices attached after %d sizes, want the %d ready disks of the default size", n, len(sizes), diskPoolSize)
	}
	ents, err := os.ReadDir(filepath.Join(root, diskTemplateDir))
	if err != nil {
		t.Fatal(err)
	}
	templates := 0
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "ext4-") {
			templates++
		}
	}
	if templates > maxTemplates+1 {
		t.Errorf("%d templates kept after %d sizes, want at most %d", templates, len(sizes), maxTemplates+1)
	}
	// A server started again keeps only the default size's template.
	d.drain()
	d2, err := newDisks(root, readyMiB, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d2.drain() })
	ents, _ = os.ReadDir(filepath.Join(root, diskTemplateDir))
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "ext4-") && !strings.HasPrefix(e.Name(), "ext4-64-") {
			t.Errorf("template %s kept across a restart", e.Name())
		}
	}
}

// A disk closed for its sandbox's deletion drops what the sandbox wrote
// last instead of writing it back to the image (an ext4 shutdown), when
// that is worth it: a sandbox that wrote a few MiB costs no write-back,
// while one that wrote next to nothing costs no shutdown (which ext4
// reports on the host's console) and has its few blocks written back.
func TestDiskDiscard(t *testing.T) {
	root := t.TempDir()
	d, err := newDisks(root, 0, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.drain(); d.remove() })
	marker := bytes.Repeat([]byte("msb-discard-test"), 4096/16)
	for _, c := range []struct {
		name        string
		size        int
		writtenBack bool
	}{{"small", len(marker), true}, {"large", 4 << 20, false}} {
		t.Run(c.name, func(t *testing.T) {
			dir := filepath.Join(root, c.name)
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			k, err := d.create(dir, 64)
			if err != nil {
				t.Fatal(err)
			}
			fd, err := unix.Openat(int(k.mnt.Fd()), "upper/file", unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o600)
			if err != nil {
				k.close(true)
				t.Fatal(err)
			}
			f := os.NewFile(uintptr(fd), "file")
			data := bytes.Repeat(marker, c.size/len(marker))
			_, err = f.Write(data)
			f.Close()
			if err != nil {
				k.close(true)
				t.Fatal(err)
			}
			if much := k.holdsMuch(); much == c.writtenBack {
				t.Errorf("holdsMuch() = %v with %d bytes written", much, c.size)
			}
			k.close(true)
			img, err := os.ReadFile(filepath.Join(dir, "disk.img"))
			if err != nil {
				t.Fatal(err)
			}
			if found := bytes.Contains(img, marker); found != c.writtenBack {
				t.Errorf("%d bytes written: found in the image after close: %v, want %v", c.size, found, c.writtenBack)
			}
		})
	}
}
