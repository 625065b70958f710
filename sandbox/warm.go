package sandbox

import (
	"bytes"
	"context"
	"errors"
	"path"
	"slices"
	"strings"

	"github.com/msb-dev/msb/sandbox/guest"
)

// A warm pool keeps sandboxes of some images started ahead of time, so
// that a start takes one instead of starting one (package sandbox/pool
// runs it; an engine that can is a Pooler). The Service owns identity: a
// waiting sandbox has none, and gets the one a start asks for only when
// the start takes it (Pooler.Adopt), with the parts of its config that
// can be applied to a running sandbox applied then. What cannot (its
// root file system and volumes, its user, its tmpfs mounts) must be what
// it was started with, or the start is a cold one (Poolable). A waiting
// sandbox is taken by one start only, and once taken it is never offered
// again: when it stops it is deleted, as every sandbox is.

// WarmPool gives the Service sandboxes started ahead of time.
type WarmPool interface {
	// Take removes from the pool a sandbox started for image that can
	// become one of spec (Poolable), and returns the engine's handle on
	// it; false when none waits.
	Take(image string, spec Spec) (handle string, ok bool)
	// Status reports the pool of each image, by image.
	Status() []PoolStatus
	// Close stops refilling and deletes the sandboxes still waiting.
	Close(ctx context.Context) error
}

// PoolStatus is what the warm pool of one image holds.
type PoolStatus struct {
	Image     string // as sandbox configs name it
	Size      int    // sandboxes it keeps waiting
	MemoryMiB int    // the memory they may hold together
	Waiting   int    // started, ready to be taken
	Starting  int    // being started
}

// Pool reports the warm pool of each image (none without a pool).
func (s *Service) Pool() []PoolStatus {
	if s.opts.Pool == nil {
		return nil
	}
	return s.opts.Pool.Status()
}

// Poolable reports why a sandbox started with the spec pooled cannot
// become one of spec by Pooler.Adopt (nil: it can). Its root file system
// (image layers, host paths, generated files, volumes), user and tmpfs
// mounts are fixed when it starts; its environment, working directory,
// limits, hostname, rlimits and network are applied when it is adopted.
// A spec's last root directory is not compared when it is the spec's
// working directory: the Service adds the working directory there, and
// Adopt makes it.
func Poolable(pooled, spec Spec) error {
	a, b := pooled.Root, spec.Root
	switch {
	case !slices.Equal(a.Layers, b.Layers) || !sameLinks(a.Links, b.Links) || !sameFiles(a.Files, b.Files):
		return errors.New("its image differs")
	case !slices.Equal(a.Mounts, b.Mounts):
		return errors.New("its mounts (volumes, the image's host paths) differ")
	case !slices.Equal(dirsBut(a.Dirs, pooled.Workdir), dirsBut(b.Dirs, spec.Workdir)):
		return errors.New("its root's directories differ")
	case pooled.User.UID != spec.User.UID || pooled.User.GID != spec.User.GID ||
		!slices.Equal(pooled.User.AdditionalGids, spec.User.AdditionalGids):
		return errors.New("its user differs")
	case !slices.Equal(pooled.Tmpfs, spec.Tmpfs):
		return errors.New("its tmpfs mounts differ")
	case pooled.DiskMiB != spec.DiskMiB:
		return errors.New("its disk's size differs")
	}
	return nil
}

// Stale reports whether a sandbox waiting with the spec pooled was
// started from another version of the image a start of spec resolved
// (an alias moved to a newer image), volumes aside: it can never be
// taken, and a pool deletes it.
func Stale(pooled, spec Spec) bool {
	a, b := pooled.Root, spec.Root
	return !slices.Equal(a.Layers, b.Layers) || !sameLinks(a.Links, b.Links) || !sameFiles(a.Files, b.Files) ||
		!slices.Equal(imageMounts(a.Mounts), imageMounts(b.Mounts))
}

func imageMounts(ms []Mount) []Mount {
	var out []Mount
	for _, m := range ms {
		if m.Beneath == "" {
			out = append(out, m)
		}
	}
	return out
}

// sameLinks and sameFiles compare what a root gets, in whatever order.
func sameLinks(a, b []Link) bool {
	if len(a) != len(b) {
		return false
	}
	byPath := func(x, y Link) int { return strings.Compare(x.Path, y.Path) }
	return slices.Equal(slices.SortedFunc(slices.Values(a), byPath), slices.SortedFunc(slices.Values(b), byPath))
}

func sameFiles(a, b []File) bool {
	if len(a) != len(b) {
		return false
	}
	byPath := func(x, y File) int { return strings.Compare(x.Path, y.Path) }
	return slices.EqualFunc(slices.SortedFunc(slices.Values(a), byPath), slices.SortedFunc(slices.Values(b), byPath), func(x, y File) bool {
		return x.Path == y.Path && x.Mode == y.Mode && bytes.Equal(x.Content, y.Content)
	})
}

// dirsBut is dirs without the working directory workdir when it is the
// last one: the Service adds every spec's working directory to its root's
// directories last (specOf), and Adopt makes it in a sandbox taken from a
// pool.
func dirsBut(dirs []string, workdir string) []string {
	wd := strings.TrimPrefix(path.Clean("/"+workdir), "/")
	if n := len(dirs); n > 0 && dirs[n-1] == wd {
		return dirs[:n-1]
	}
	return dirs
}

// specOf is the spec of a sandbox of the normalized config norm on the
// image img, with pids processes, before what is the sandbox's own: its
// volumes, hostname and network.
func specOf(img Image, norm Config, pids int) Spec {
	spec := Spec{
		Root:      img.Root,
		Env:       guest.MergeEnv(img.Env, norm.Envs),
		Workdir:   norm.Workdir,
		MemoryMiB: norm.Memory,
		DiskMiB:   norm.Disk,
		CPUs:      norm.CPUs,
		Pids:      pids,
		User:      img.User,
		Tmpfs:     norm.Tmpfs,
		Rlimits:   norm.Rlimits,
	}
	if spec.Workdir == "" {
		spec.Workdir = img.Workdir
	}
	if spec.Workdir == "" {
		spec.Workdir = DefaultWorkdir
	}
	spec.Root.Mounts = slices.Clone(spec.Root.Mounts)
	spec.Root.Dirs = append(slices.Clone(spec.Root.Dirs), strings.TrimPrefix(spec.Workdir, "/"))
	return spec
}

// WarmHostname is the hostname of a sandbox waiting in a pool; it gets
// its own name when it is adopted.
const WarmHostname = "sandbox"

// WarmSpec is the spec a sandbox of the image img waits with in a pool:
// that of a start whose config names only the image, with memoryMiB of
// memory (a waiting sandbox's share of its pool's memory) and pids
// processes, and the disk of a config that names none, diskMiB (0:
// DefaultDisk), which only a start of the same disk can take. A start
// that takes it applies its own limits.
func WarmSpec(img Image, memoryMiB, pids, diskMiB int) Spec {
	spec := specOf(img, Config{Image: img.Ref, Memory: memoryMiB, CPUs: DefaultCPUs, Disk: serverDisk(diskMiB)}, pids)
	spec.Hostname = WarmHostname
	return spec
}

// adoptWarm makes a sandbox waiting in the pool the sandbox id of spec,
// if the pool has one for image that fits, and reports whether it did.
// A waiting sandbox that cannot be adopted is gone (the engine deleted
// it): the next one is tried, then the start is a cold one.
func (s *Service) adoptWarm(ctx context.Context, id ID, image string, spec Spec) bool {
	pooler, ok := s.opts.Engine.(Pooler)
	if !ok || s.opts.Pool == nil {
		return false
	}
	for range 2 {
		handle, ok := s.opts.Pool.Take(image, spec)
		if !ok {
			return false
		}
		err := pooler.Adopt(ctx, handle, id, spec)
		if err == nil {
			return true
		}
		s.opts.Log.Warn("a sandbox of the warm pool could not be taken; trying another, else starting one",
			"sandbox", id.String(), "image", image, "err", err)
	}
	return false
}
