package linux

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
