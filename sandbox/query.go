package sandbox

import (
	"context"
	"encoding/base64"
	"fmt"

	"github.com/msb-dev/msb/errdefs"
)

var _ Lifecycles = (*Service)(nil)

// live overlays what the service knows now on a stored record: a start
// or stop under way, or a run that just died (its watcher about to
// record it).
func (s *Service) live(r Record) Record {
	if s.opts.Network != nil {
		eff, err := s.networkOf(r.ID, r.Config.Network)
		r.NetworkOn = err == nil && eff != nil
	}
	b, ok := s.lookup(r.ID)
	if !ok {
		return r
	}
	if p, _ := b.phase.Load().(State); p != "" {
		r.State = p
		return r
	}
	if r.State == StateRunning && !b.alive() {
		r.State = StateStopped
	}
	return r
}

// Get implements Lifecycles.
func (s *Service) Get(ctx context.Context, id ID) (Record, error) {
	r, err := s.opts.Store.Sandbox(ctx, id)
	if err != nil {
		return Record{}, err
	}
	return s.live(r), nil
}

// GetByUUID implements Lifecycles.
func (s *Service) GetByUUID(ctx context.Context, ns, uuid string) (Record, error) {
	r, err := s.opts.Store.SandboxByUUID(ctx, ns, uuid)
	if err != nil {
		return Record{}, err
	}
	return s.live(r), nil
}

// Page sizes of List.
const (
	defaultPage = 20
	maxPage     = 1000
)

// List implements Lifecycles. The cursor is the last name of the page,
// encoded; it stays valid while sandboxes come and go.
func (s *Service) List(ctx context.Context, ns string, o ListOptions) ([]Record, string, error) {
	limit := o.Limit
	switch {
	case limit == 0:
		limit = defaultPage
	case limit < 0 || limit > maxPage:
		return nil, "", errdefs.Invalidf("limit %d is out of range: use 1 to %d", limit, maxPage)
	}
	after := ""
	if o.After != "" {
		b, err := base64.RawURLEncoding.DecodeString(o.After)
		if err != nil {
			return nil, "", errdefs.Invalidf("cursor %.64q is not one this server gave", o.After)
		}
		after = string(b)
	}
	recs, err := s.opts.Store.Sandboxes(ctx, ns)
	if err != nil {
		return nil, "", err
	}
	var page []Record
	for _, r := range recs {
		if r.ID.Name() <= after || !hasLabels(r.Config.Labels, o.Labels) {
			continue
		}
		if len(page) == limit {
			return page, base64.RawURLEncoding.EncodeToString([]byte(page[len(page)-1].ID.Name())), nil
		}
		page = append(page, s.live(r))
	}
	return page, "", nil
}

func hasLabels(have, want map[string]string) bool {
	for k, v := range want {
		if w, ok := have[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// Remove implements Lifecycles.
func (s *Service) Remove(ctx context.Context, id ID) error {
	if _, err := s.opts.Store.Sandbox(ctx, id); err != nil {
		return err
	}
	b := s.lockBox(id)
	defer b.mu.Unlock()
	if b.running.Load() {
		if err := s.release(ctx, id, b); err != nil {
			return engineError("remove", id, err)
		}
	}
	if err := s.forget(context.WithoutCancel(ctx), id, b); err != nil {
		return fmt.Errorf("remove sandbox %q: %w", id.Name(), err)
	}
	s.opts.Log.Info("sandbox removed", "sandbox", id.String())
	return nil
}
