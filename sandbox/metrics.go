package sandbox

import (
	"context"
)

// Metrics implements Manager.
func (s *Service) Metrics(ctx context.Context, ns string) ([]Metrics, error) {
	recs, err := s.opts.Store.Sandboxes(ctx, ns)
	if err != nil {
		return nil, err
	}
	out := make([]Metrics, 0, len(recs))
	for _, r := range recs {
		out = append(out, s.metrics(ctx, r.ID))
	}
	return out, nil
}

// SandboxMetrics implements Manager. It looks the one sandbox up directly.
func (s *Service) SandboxMetrics(ctx context.Context, id ID) (Metrics, error) {
	if _, err := s.opts.Store.Sandbox(ctx, id); err != nil {
		return Metrics{}, err
	}
	return s.metrics(ctx, id), nil
}

func (s *Service) metrics(ctx context.Context, id ID) Metrics {
	m := Metrics{ID: id}
	if b, ok := s.lookup(id); ok && b.alive() {
		s.sample(ctx, id, b, &m)
	}
	return m
}

// sample fills the live figures of m. CPU is the percentage of one CPU used
// since the previous sample (or since the sandbox was created, for the
// first), never more than its CPUs allow: clocks read at slightly
// different moments must not report 110% of one CPU.
func (s *Service) sample(ctx context.Context, id ID, b *box, m *Metrics) {
	st, err := s.opts.Engine.Stats(ctx, id)
	if err != nil {
		if b.alive() {
			s.opts.Log.Warn("sandbox stats", "sandbox", id.String(), "err", err)
		}
		return
	}
	m.Running = true
	b.sampleMu.Lock()
	elapsed := st.Sampled.Sub(b.lastAt)
	var cpu float64
	if elapsed > 0 && st.CPUTime >= b.lastCPU {
		cpu = min(float64(st.CPUTime-b.lastCPU)/float64(elapsed)*100, float64(b.cpus)*100)
	}
	b.lastCPU, b.lastAt = st.CPUTime, st.Sampled
	b.sampleMu.Unlock()
	mem := int64(st.MemoryBytes >> 20)
	disk := int64(st.DiskBytes)
	m.CPUUsage, m.MemoryUsage, m.DiskUsage = &cpu, &mem, &disk
	m.Network = st.Network
}
