package rpc

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/msb-dev/msb/auth"
	"github.com/msb-dev/msb/auth/audit"
	"github.com/msb-dev/msb/auth/ratelimit"
	"github.com/msb-dev/msb/duration"
	"github.com/msb-dev/msb/namespace"
)

// KeyMethods returns keys.create, keys.list, keys.revoke, keys.rotate and
// keys.limit, for keys with scope keys:manage. What a caller may do is
// decided by m: it never hands out more than the caller's own key has.
func KeyMethods(m *auth.Manager) Methods {
	h := keyHandlers{m}
	return Methods{
		"keys.create": Method[createParams]{Scope: auth.ScopeKeysManage, Changes: true, Handle: h.create},
		"keys.list":   Method[struct{}]{Scope: auth.ScopeKeysManage, Handle: h.list},
		"keys.revoke": Method[idParam]{Scope: auth.ScopeKeysManage, Changes: true, Handle: h.revoke},
		"keys.rotate": Method[rotateParams]{Scope: auth.ScopeKeysManage, Changes: true, Handle: h.rotate},
		"keys.limit":  Method[limitParams]{Scope: auth.ScopeKeysManage, Changes: true, Handle: h.limit},
	}
}

// AuditMethods returns audit.list (scope audit:read), reading events.
func AuditMethods(events audit.Store) Methods {
	return Methods{"audit.list": Method[auditParams]{Scope: auth.ScopeAuditRead, Handle: func(ctx context.Context, c *Call, p auditParams) (any, error) {
		return auditList(ctx, events, c, p)
	}}}
}

type keyHandlers struct{ m *auth.Manager }

// keyView is a key as keys.* methods show it: never its text or hash.
type keyView struct {
	ID         string     `json:"id"`
	Label      string     `json:"label"`
	Namespace  string     `json:"namespace"`
	Scopes     []string   `json:"scopes"`
	Prefix     string     `json:"prefix"`
	Created    time.Time  `json:"created"`
	Expires    *time.Time `json:"expires"`
	LastUsed   *time.Time `json:"last_used"`
	Revoked    *time.Time `json:"revoked"`
	Rate       string     `json:"rate"`       // "" : the server's default
	StartRate  string     `json:"start_rate"` // "" : the server's default
	MaxUses    int64      `json:"max_uses"`   // 0: unlimited
	Uses       int64      `json:"uses"`
	ReplacedBy string     `json:"replaced_by,omitempty"`
	Status     string     `json:"status"`
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := t.UTC()
	return &u
}

func (h keyHandlers) view(k auth.Key) keyView {
	return keyView{
		ID: k.ID, Label: k.Label, Namespace: k.Namespace, Scopes: k.Scopes.List(), Prefix: k.Prefix,
		Created: k.Created.UTC(), Expires: timePtr(k.Expires), LastUsed: timePtr(k.LastUsed), Revoked: timePtr(k.Revoked),
		Rate: k.Rate.String(), StartRate: k.StartRate.String(), MaxUses: k.MaxUses, Uses: k.Uses, ReplacedBy: k.ReplacedBy,
		Status: k.Status(time.Now(), h.m.Issuer.Signer.ID()),
	}
}

func parseRate(field, s string) (ratelimit.Rate, error) {
	if s == "" {
		return ratelimit.Rate{}, nil
	}
	r, err := ratelimit.Parse(s)
	if err != nil {
		return r, fmt.Errorf("%q: %w", field, err)
	}
	return r, nil
}

type createParams struct {
	Namespace string   `json:"namespace"`
	Label     string   `json:"label"`
	Scopes    []string `json:"scopes"`
	Expire    string   `json:"expire"`
	Rate      string   `json:"rate"`
	StartRate string   `json:"start_rate"`
	MaxUses   int64    `json:"max_uses"`
}

func (h keyHandlers) create(ctx context.Context, c *Call, p createParams) (any, error) {
	o := auth.CreateOptions{Namespace: p.Namespace, Label: p.Label, MaxUses: p.MaxUses}
	c.Audit(p.Namespace, "")
	var err error
	if len(p.Scopes) > 0 {
		if o.Scopes, err = auth.ParseScopes(p.Scopes); err != nil {
			return nil, err
		}
	}
	if p.Expire != "" {
		if o.Expire, err = duration.Parse(p.Expire); err != nil {
			return nil, fmt.Errorf("\"expire\": %w", err)
		}
	}
	if o.Rate, err = parseRate("rate", p.Rate); err != nil {
		return nil, err
	}
	if o.StartRate, err = parseRate("start_rate", p.StartRate); err != nil {
		return nil, err
	}
	if p.MaxUses < 0 {
		return nil, fmt.Errorf("%w: \"max_uses\" must be 0 (unlimited) or more", errInvalidParams)
	}
	text, k, err := h.m.Create(ctx, c.Principal(), o)
	if err != nil {
		return nil, err
	}
	c.Audit(k.Namespace, "created key "+k.ID)
	return struct {
		Key string `json:"key"`
		keyView
	}{text, h.view(k)}, nil
}

func (h keyHandlers) list(ctx context.Context, c *Call, _ struct{}) (any, error) {
	keys, err := h.m.List(ctx, c.Principal())
	if err != nil {
		return nil, err
	}
	out := make([]keyView, 0, len(keys))
	for _, k := range keys {
		out = append(out, h.view(k))
	}
	return map[string]any{"keys": out}, nil
}

type idParam struct {
	ID string `json:"id"`
}

func (p idParam) check() error {
	if p.ID == "" {
		return fmt.Errorf("%w: \"id\" is required: the key id shown by keys.list", errInvalidParams)
	}
	return nil
}

func (h keyHandlers) revoke(ctx context.Context, c *Call, p idParam) (any, error) {
	if err := p.check(); err != nil {
		return nil, err
	}
	c.Audit("", "key "+truncate(p.ID))
	k, err := h.m.Revoke(ctx, c.Principal(), p.ID)
	if err != nil {
		return nil, err
	}
	c.Audit(k.Namespace, "revoked key "+k.ID)
	return h.view(k), nil
}

type rotateParams struct {
	idParam
	Grace string `json:"grace"`
}

func (h keyHandlers) rotate(ctx context.Context, c *Call, p rotateParams) (any, error) {
	if err := p.check(); err != nil {
		return nil, err
	}
	grace, err := ParseGrace(p.Grace)
	if err != nil {
		return nil, fmt.Errorf("\"grace\": %w", err)
	}
	c.Audit("", "key "+truncate(p.ID))
	r, err := h.m.Rotate(ctx, c.Principal(), p.ID, grace)
	if err != nil {
		return nil, err
	}
	c.Audit(r.New.Namespace, fmt.Sprintf("rotated key %s to %s, grace %s", r.Old.ID, r.New.ID, grace))
	return struct {
		Key string `json:"key"`
		keyView
		Replaces      string    `json:"replaces"`
		OldValidUntil time.Time `json:"old_key_valid_until"`
	}{r.Key, h.view(r.New), r.Old.ID, r.Old.Revoked.UTC()}, nil
}

// ParseGrace reads a rotation's grace period: "0" (revoke the old key at
// once, also the meaning of "") or a duration such as 24h. Errors wrap
// duration.ErrInvalid.
func ParseGrace(s string) (time.Duration, error) {
	if s == "" || s == "0" {
		return 0, nil
	}
	// "0s", "0h", ...: zero with any unit the duration parser knows.
	if unit, ok := strings.CutPrefix(s, "0"); ok && unit != "" && (unit[0] < '0' || unit[0] > '9') {
		if _, err := duration.Parse("1" + unit); err == nil {
			return 0, nil
		}
	}
	return duration.Parse(s)
}

type limitParams struct {
	idParam
	Rate      *string `json:"rate"`       // "default": the server's
	StartRate *string `json:"start_rate"` // "default": the server's
	MaxUses   *int64  `json:"max_uses"`   // 0: unlimited
}

func (h keyHandlers) limit(ctx context.Context, c *Call, p limitParams) (any, error) {
	if err := p.check(); err != nil {
		return nil, err
	}
	var l auth.LimitChange
	for _, f := range []struct {
		name string
		in   *string
		out  **ratelimit.Rate
	}{{"rate", p.Rate, &l.Rate}, {"start_rate", p.StartRate, &l.StartRate}} {
		if f.in == nil {
			continue
		}
		r, err := ParseLimit(*f.in)
		if err != nil {
			return nil, fmt.Errorf("%q: %w", f.name, err)
		}
		*f.out = &r
	}
	if p.MaxUses != nil && *p.MaxUses < 0 {
		return nil, fmt.Errorf("%w: \"max_uses\" must be 0 (unlimited) or more", errInvalidParams)
	}
	l.MaxUses = p.MaxUses
	c.Audit("", "key "+truncate(p.ID))
	k, err := h.m.SetLimits(ctx, c.Principal(), p.ID, l)
	if err != nil {
		return nil, err
	}
	c.Audit(k.Namespace, "changed limits of key "+k.ID)
	return h.view(k), nil
}

// ParseLimit reads a rate for keys.limit: a rate spec, or "default" for the
// server's default. Errors wrap ratelimit.ErrInvalid.
func ParseLimit(s string) (ratelimit.Rate, error) {
	if s == "default" {
		return ratelimit.Rate{}, nil
	}
	return ratelimit.Parse(s)
}

type auditParams struct {
	Key       string `json:"key"`
	Namespace string `json:"namespace"`
	Since     string `json:"since"`
	Limit     int    `json:"limit"`
}

func auditList(ctx context.Context, events audit.Store, c *Call, p auditParams) (any, error) {
	f := audit.Filter{KeyID: p.Key, Namespace: p.Namespace, Visible: c.Principal().Namespace, Limit: p.Limit}
	if p.Namespace != "" {
		c.Audit(p.Namespace, "")
		if err := namespace.ValidateName("namespace", p.Namespace); err != nil {
			return nil, err
		}
		if err := namespace.Authorize(c.Principal().Namespace, p.Namespace); err != nil {
			return nil, err
		}
	}
	if p.Since != "" {
		d, err := duration.Parse(p.Since)
		if err != nil {
			return nil, fmt.Errorf("\"since\": %w", err)
		}
		f.Since = time.Now().Add(-d)
	}
	if p.Limit < 0 || p.Limit > 10000 {
		return nil, fmt.Errorf("%w: \"limit\" must be from 1 to 10000 (0: 1000)", errInvalidParams)
	}
	list, err := events.ListEvents(ctx, f)
	if err != nil {
		return nil, err
	}
	return map[string]any{"events": list}, nil
}
