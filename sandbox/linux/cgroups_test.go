package linux

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// A set renamed onto the name of cgroups still there (a crashed run's,
// here in the last hierarchy only) fails with the hierarchies renamed
// already renamed back; renameOver removes them first and renames.
func TestRenameOverLeftover(t *testing.T) {
	c, err := findCgroups("msb-test-rename")
	if err != nil {
		t.Fatal(err)
	}
	if c.v2 {
		t.Skip("cgroup v2: the engine renames no cgroup there")
	}
	if err := c.setup(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.removeSet("ready")
		c.removeSet("box")
		if err := c.removeParent(); err != nil {
			t.Error(err)
		}
	})
	for _, name := range []string{"ready", "box"} {
		if err := c.makeSet(name); err != nil {
			t.Fatal(err)
		}
	}
	mnts := c.mounts()
	in := func(name string) (n int) {
		for _, mnt := range mnts {
			if _, err := os.Stat(c.dir(mnt, name)); err == nil {
				n++
			}
		}
		return n
	}
	all := len(mnts)
	if all < 2 {
		t.Skip("one cgroup hierarchy: no rename to undo")
	}
	for _, mnt := range mnts[:all-1] {
		if err := removeCgroupTree(c.dir(mnt, "box")); err != nil {
			t.Fatal(err)
		}
	}
	if in("box") != 1 {
		t.Fatalf("the leftover is in %d hierarchies", in("box"))
	}

	err = c.rename("ready", "box")
	var le *os.LinkError
	if !errors.Is(err, unix.EEXIST) || !errors.As(err, &le) || filepath.Base(le.New) != "box" {
		t.Fatalf("rename onto existing cgroups: err = %v, want EEXIST naming them", err)
	}
	if in("ready") != all || in("box") != 1 {
		t.Fatalf("after a failed rename: ready in %d, box in %d hierarchies of %d", in("ready"), in("box"), all)
	}
	if err := c.renameOver("ready", "box"); err != nil {
		t.Fatal(err)
	}
	if in("ready") != 0 || in("box") != all {
		t.Errorf("after renameOver: ready in %d, box in %d hierarchies of %d", in("ready"), in("box"), all)
	}
}
