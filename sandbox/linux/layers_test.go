package linux

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/msb-dev/msb/errdefs"
)

// A layer pruned between a sandbox's create and its start is found missing
// under the layer lock, with a message that names no host path, and the
// sandbox's record of its layers goes with the failed start.
func TestMountLayersPrunedMeanwhile(t *testing.T) {
	dir := t.TempDir()
	lock := filepath.Join(t.TempDir(), "pull.lock")
	layer := filepath.Join(t.TempDir(), "0123abcd")
	err := prepareRoot(dir, dir, []string{layer}, lock)
	if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "msb pull") || strings.Contains(err.Error(), layer) {
		t.Fatalf("missing layer: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, layersFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("record of a failed start left: %v", err)
	}
	// The lock was taken shared and let go: an exclusive one is free now.
	f, err := os.OpenFile(lock, os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("the layer lock file was not used: %v", err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatalf("the layer lock is still held: %v", err)
	}
}
