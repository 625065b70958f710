package linux

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// A host user's subordinate ids (rootless containers) inside msb's range
// would own sandboxes' and volumes' files: the engine names them.
func TestSubordinateOverlaps(t *testing.T) {
	dir := t.TempDir()
	subuid := filepath.Join(dir, "subuid")
	subgid := filepath.Join(dir, "subgid")
	top := hostID(maxSlots + 1)
	os.WriteFile(subuid, []byte("alice:100000:65536\nbob:10000:1000\n# comment\ncarol:"+strconv.Itoa(top)+":65536\n"), 0o644)
	os.WriteFile(subgid, []byte("dave:"+strconv.Itoa(top-1)+":10\n"), 0o644)
	got := subordinateOverlaps(subuid, subgid, filepath.Join(dir, "missing"))
	if len(got) != 2 || !strings.Contains(got[0], "alice") || !strings.Contains(got[1], "dave") {
		t.Fatalf("overlaps %q, want alice's and dave's", got)
	}
}
