package sandbox

import (
	"sync"

	"github.com/msb-dev/msb/errdefs"
)

// Quota bounds what the running sandboxes of one namespace hold together.
// A zero field is no bound.
type Quota struct {
	Sandboxes int // running at once
	MemoryMiB int // their memory limits, summed
	CPUs      int // their CPUs, summed
	DiskMiB   int // their disks, summed
}

// Usage is what the running sandboxes of a namespace hold together.
type Usage struct {
	Sandboxes int
	MemoryMiB int
	CPUs      int
	DiskMiB   int
}

// Quotas gives the quota of each namespace.
type Quotas func(namespace string) Quota

// quotas keeps the usage of every namespace, and admits a start only when
// it keeps the namespace within its quota. Starts reserve what they will
// hold before the engine runs them, so that concurrent starts cannot
// overshoot together.
type quotas struct {
	of Quotas

	mu    sync.Mutex
	usage map[string]Usage
}

// reserve takes what cfg holds from namespace ns, or returns an error of
// class Exhausted naming the quota it would pass.
func (q *quotas) reserve(ns string, cfg Config) error {
	limit := Quota{}
	if q.of != nil {
		limit = q.of(ns)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	u := q.usage[ns]
	switch {
	case limit.Sandboxes > 0 && u.Sandboxes+1 > limit.Sandboxes:
		return errdefs.Exhaustedf("namespace %q runs %d sandboxes, its quota (quotas.sandboxes in config.toml): stop one first", ns, u.Sandboxes)
	case limit.MemoryMiB > 0 && u.MemoryMiB+cfg.Memory > limit.MemoryMiB:
		return errdefs.Exhaustedf("namespace %q would hold %d MiB of memory in running sandboxes, over its quota of %d MiB (quotas.memory in config.toml): stop a sandbox, or ask for less memory", ns, u.MemoryMiB+cfg.Memory, limit.MemoryMiB)
	case limit.CPUs > 0 && u.CPUs+cfg.CPUs > limit.CPUs:
		return errdefs.Exhaustedf("namespace %q would hold %d CPUs in running sandboxes, over its quota of %d (quotas.cpus in config.toml): stop a sandbox, or ask for fewer CPUs", ns, u.CPUs+cfg.CPUs, limit.CPUs)
	case limit.DiskMiB > 0 && u.DiskMiB+cfg.Disk > limit.DiskMiB:
		return errdefs.Exhaustedf("namespace %q would hold %d MiB of disk in running sandboxes, over its quota of %d MiB (quotas.disk in config.toml): stop a sandbox, or ask for a smaller disk", ns, u.DiskMiB+cfg.Disk, limit.DiskMiB)
	}
	if q.usage == nil {
		q.usage = map[string]Usage{}
	}
	q.usage[ns] = Usage{u.Sandboxes + 1, u.MemoryMiB + cfg.Memory, u.CPUs + cfg.CPUs, u.DiskMiB + cfg.Disk}
	return nil
}

// free gives back what cfg held in namespace ns.
func (q *quotas) free(ns string, cfg Config) {
	q.mu.Lock()
	defer q.mu.Unlock()
	u := q.usage[ns]
	u = Usage{u.Sandboxes - 1, u.MemoryMiB - cfg.Memory, u.CPUs - cfg.CPUs, u.DiskMiB - cfg.Disk}
	if u == (Usage{}) {
		delete(q.usage, ns)
		return
	}
	q.usage[ns] = u
}

// Usage reports what the running sandboxes of namespace ns hold, and its
// quota.
func (s *Service) Usage(ns string) (Usage, Quota) {
	s.quotas.mu.Lock()
	u := s.quotas.usage[ns]
	s.quotas.mu.Unlock()
	var q Quota
	if s.quotas.of != nil {
		q = s.quotas.of(ns)
	}
	return u, q
}
