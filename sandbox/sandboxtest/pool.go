package sandboxtest

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox"
)

// pooledSpec is the harness's spec with its workdir added last to its
// root's directories, as the Service builds specs (sandbox.Poolable).
func (s *suite) pooledSpec(adjust func(*sandbox.Spec)) sandbox.Spec {
	spec := s.h.Spec()
	if adjust != nil {
		adjust(&spec)
	}
	spec.Root.Dirs = append(slices.Clone(spec.Root.Dirs), strings.TrimPrefix(spec.Workdir, "/"))
	return spec
}

// testPool checks a sandbox.Pooler: a sandbox started ahead of time gets
// the environment, working directory, hostname and rlimits of the spec it
// is adopted with, is adopted once only, refuses a spec whose root or
// mounts differ (and is deleted then), and leaves nothing once deleted or
// discarded.
func (s *suite) testPool(t *testing.T) {
	p, ok := s.e.(sandbox.Pooler)
	if !ok {
		t.Skip("the engine is not a sandbox.Pooler (an optional ability)")
	}
	prestart := func() string {
		t.Helper()
		h, err := p.Prestart(ctx(t), s.pooledSpec(func(sp *sandbox.Spec) { sp.MemoryMiB = 64 }))
		if err != nil {
			t.Fatalf("Prestart: %v", err)
		}
		t.Cleanup(func() {
			if err := p.Discard(context.Background(), h); err != nil {
				t.Errorf("Discard %s: %v", h, err)
			}
			if left := s.h.HandleLeftovers(h); len(left) > 0 {
				t.Errorf("pooled sandbox %s left behind: %v", h, left)
			}
		})
		return h
	}
	adopt := func(h string, id sandbox.ID, spec sandbox.Spec) error {
		t.Helper()
		err := p.Adopt(ctx(t), h, id, spec)
		if err == nil {
			t.Cleanup(func() {
				if err := s.e.Delete(context.Background(), id); err != nil {
					t.Errorf("Delete %s: %v", id, err)
				}
			})
		}
		return err
	}

	h1, h2, h3, h4 := prestart(), prestart(), prestart(), prestart()
	if h1 == h2 {
		t.Fatalf("two prestarted sandboxes have the same handle %q", h1)
	}
	first := s.id(t, "pool-first")
	spec := s.pooledSpec(func(sp *sandbox.Spec) {
		sp.Env = append(slices.Clone(sp.Env), "POOLED=first")
		sp.Workdir = "/srv/work"
		sp.Rlimits = []sandbox.Rlimit{{Resource: "nofile", Soft: 123, Hard: 456}}
	})
	if err := adopt(h1, first, spec); err != nil {
		t.Fatalf("Adopt: %v", err)
	}
	if st, err := s.e.Inspect(ctx(t), first); err != nil || st.State != sandbox.StateRunning {
		t.Fatalf("Inspect of an adopted sandbox = %+v, %v", st, err)
	}
	got := mustSh(t, s.e, first, `echo "$POOLED"; pwd; hostname; cat /etc/hostname; ulimit -n; echo tenant > /workspace/left; sleep 1000 &`)
	if want := "first\n/srv/work\npool-first\npool-first\n123\n"; got != want {
		t.Errorf("inside the adopted sandbox: %q, want %q", got, want)
	}
	if err := adopt(h1, s.id(t, "pool-again"), spec); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("a second Adopt of the same handle = %v, want ErrNotFound", err)
	}

	// Another one is fresh: nothing of the first tenant's.
	second := s.id(t, "pool-second")
	if err := adopt(h2, second, s.pooledSpec(nil)); err != nil {
		t.Fatalf("Adopt: %v", err)
	}
	if got := mustSh(t, s.e, second, `ls /workspace; for p in /proc/[0-9]*; do tr '\0' ' ' < $p/cmdline; echo; done | grep -c '^sleep' || true; echo "[$POOLED]"; pwd`); got != "0\n[]\n/workspace\n" {
		t.Errorf("a second adopted sandbox sees %q, want nothing of the first", got)
	}

	// A spec the sandbox cannot become: refused, and the sandbox is gone.
	other := s.pooledSpec(func(sp *sandbox.Spec) { sp.Tmpfs = []sandbox.Tmpfs{{Guest: "/scratch", SizeMiB: 8}} })
	if err := adopt(h3, s.id(t, "pool-tmpfs"), other); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("Adopt with other tmpfs mounts = %v, want ErrInvalid", err)
	}
	if left := s.h.HandleLeftovers(h3); len(left) > 0 {
		t.Errorf("a refused pooled sandbox left %v", left)
	}
	if err := adopt(h4, first, s.pooledSpec(nil)); !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("Adopt under an ID in use = %v, want ErrConflict", err)
	}

	for _, id := range []sandbox.ID{first, second} {
		if err := s.e.Delete(ctx(t), id); err != nil {
			t.Fatalf("Delete %s: %v", id, err)
		}
		s.assertNoLeftovers(t, id)
	}
	for _, h := range []string{h1, h2, h4} {
		if left := s.h.HandleLeftovers(h); len(left) > 0 {
			t.Errorf("adopted sandbox %s left behind: %v", h, left)
		}
	}
}
