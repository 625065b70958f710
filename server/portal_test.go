package server

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestInstallPortal checks that the portal binary msb carries is written
// whole, executable, over what an earlier server wrote, and that an msb
// without one runs its own executable in sandboxes and says so.
func TestInstallPortal(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run")
	var log bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&log, nil))
	for _, content := range []string{"first binary", "second"} {
		path, err := installPortal(dir, []byte(content), logger)
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(path)
		fi, serr := os.Stat(path)
		if err != nil || serr != nil || string(got) != content || fi.Mode().Perm() != 0o755 || filepath.Dir(path) != dir {
			t.Fatalf("installed %s: %q, %v, %v, %v", path, got, fi, err, serr)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("the directory holds %v; want the binary alone", entries)
	}
	if log.Len() > 0 {
		t.Errorf("logged %q", log.String())
	}
	path, err := installPortal(dir, nil, logger)
	exe, _ := os.Executable()
	if err != nil || path != exe {
		t.Errorf("without a portal binary: %q, %v; want this executable, %q", path, err, exe)
	}
	if !strings.Contains(log.String(), "carries no portal binary") {
		t.Errorf("without a portal binary, logged %q", log.String())
	}
}
