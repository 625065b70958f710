package auth

import (
	"context"
	"fmt"
	"time"

	"github.com/msb-dev/msb/auth/ratelimit"
	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/namespace"
)

// Manager manages keys on behalf of a caller: the JSON-RPC keys.* methods
// for a key holding keys:manage, and the CLI for the operator (FullAccess).
// A caller can never give a key more than it has itself: no wider
// namespace, no scope it lacks, no later expiry, no higher rate, no more
// uses. What a request leaves unset is inherited from the caller.
type Manager struct {
	Issuer   *Issuer
	Registry *Registry
	// Defaults are the server's rates, which keys without their own follow.
	Defaults Defaults
	Now      func() time.Time
}

// Defaults are the server's default rate limits (config.toml).
type Defaults struct {
	Rate      ratelimit.Rate
	StartRate ratelimit.Rate
}

// CreateOptions describe a key to create for a caller; zero fields are
// inherited from the caller's own key.
type CreateOptions struct {
	Namespace string        // "": the caller's
	Label     string        //
	Scopes    Scopes        // 0: the caller's
	Expire    time.Duration // 0: when the caller's key expires (never, for one that never does)
	Rate      ratelimit.Rate
	StartRate ratelimit.Rate
	MaxUses   int64 // 0: the caller's remaining uses (unlimited, for an unlimited caller)
	Uses      int64 // uses already spent (rotation carries them over)
	// capped cuts an expiry or a number of uses beyond the caller's down
	// to the caller's, instead of refusing it: a rotation keeps what it
	// can of the old key.
	capped bool
}

func (m *Manager) now() time.Time {
	if m.Now != nil {
		return m.Now()
	}
	return time.Now()
}

func effective(r, def ratelimit.Rate) ratelimit.Rate {
	if r.IsZero() {
		return def
	}
	return r
}

// limit resolves a requested rate against the caller's: unset inherits the
// caller's, and a faster one than the caller's is refused.
func (m *Manager) limit(what string, want, caller, def ratelimit.Rate) (ratelimit.Rate, error) {
	if want.IsZero() {
		return caller, nil
	}
	if c := effective(caller, def); !c.IsZero() && want.Exceeds(c) {
		return ratelimit.Rate{}, errdefs.Forbiddenf("cannot give a key a %s of %s: your key's is %s, and a key cannot grant more than it has", what, want.Describe(), c.Describe())
	}
	return want, nil
}

// Create issues a key for caller. Errors match errdefs.ErrForbidden (more rights
// than the caller has), errdefs.ErrInvalid or namespace.ErrInvalidName.
func (m *Manager) Create(ctx context.Context, caller Principal, o CreateOptions) (string, Key, error) {
	opts, err := m.grant(ctx, caller, o)
	if err != nil {
		return "", Key{}, err
	}
	if !caller.Unlimited {
		// Its calls count against the caller's rate and uses too.
		opts.Parent = caller.KeyID
	}
	return m.Issuer.Issue(ctx, opts)
}

// grant turns o into issue options within what caller has.
func (m *Manager) grant(ctx context.Context, caller Principal, o CreateOptions) (IssueOptions, error) {
	opts := IssueOptions{Label: o.Label, Namespace: o.Namespace, Scopes: o.Scopes, Expire: o.Expire, MaxUses: o.MaxUses, Uses: o.Uses}
	if opts.Namespace == "" {
		opts.Namespace = caller.Namespace
	}
	if err := namespace.ValidateClaim(opts.Namespace); err != nil {
		return opts, err
	}
	if !namespace.Covers(caller.Namespace, opts.Namespace) {
		return opts, errdefs.Forbiddenf("API key for namespace %q cannot create a key for namespace %q: only for its own", caller.Namespace, opts.Namespace)
	}
	if opts.Scopes == 0 {
		opts.Scopes = caller.Scopes
	}
	if !caller.Scopes.Covers(opts.Scopes) {
		return opts, errdefs.Forbiddenf("cannot grant scopes %s: your key has only %s", opts.Scopes, caller.Scopes)
	}
	if opts.Expire < 0 {
		return opts, fmt.Errorf("%w: expiry must be positive", errdefs.ErrInvalid)
	}
	issued := m.now().Truncate(time.Second)
	if !caller.Expires.IsZero() {
		// Absolute times from here on, so the key's expiry cannot drift
		// past the caller's between this clock reading and the issuer's.
		left := caller.Expires.Sub(issued).Truncate(time.Second)
		if left <= 0 {
			return opts, ErrExpired
		}
		if opts.Expire == 0 {
			opts.ExpiresAt = caller.Expires
		} else if opts.Expire > left && o.capped {
			opts.ExpiresAt = caller.Expires
		} else if opts.Expire > left {
			return opts, errdefs.Forbiddenf("cannot give a key a later expiry than your own (%s): ask for at most %ds", caller.Expires.UTC().Format(time.RFC3339), int64(left/time.Second))
		} else {
			opts.ExpiresAt = issued.Add(opts.Expire)
		}
	}
	if caller.Unlimited {
		opts.Rate, opts.StartRate = o.Rate, o.StartRate
		return opts, nil
	}
	var err error
	if opts.Rate, err = m.limit("rate limit", o.Rate, caller.Rate, m.Defaults.Rate); err != nil {
		return opts, err
	}
	if opts.StartRate, err = m.limit("sandbox.start rate limit", o.StartRate, caller.StartRate, m.Defaults.StartRate); err != nil {
		return opts, err
	}
	if caller.MaxUses > 0 {
		left, err := m.usesLeft(ctx, caller)
		if err != nil {
			return opts, err
		}
		switch {
		case left <= 0:
			return opts, errdefs.Forbiddenf("cannot give a key uses: your key has none left")
		case opts.MaxUses == 0:
			opts.MaxUses = opts.Uses + left
		case opts.MaxUses-opts.Uses > left && o.capped:
			opts.MaxUses = opts.Uses + left
		case opts.MaxUses-opts.Uses > left:
			return opts, errdefs.Forbiddenf("cannot give a key %d uses: your key has %d left", opts.MaxUses-opts.Uses, left)
		}
	}
	return opts, nil
}

// usesLeft is how many uses the caller's key has left, as the registry
// counts them (a limited key's uses are written at once, this call's too).
func (m *Manager) usesLeft(ctx context.Context, caller Principal) (int64, error) {
	k, err := m.Registry.Find(ctx, caller.KeyID)
	if err != nil {
		return 0, fmt.Errorf("read your key's uses: %w", err)
	}
	return k.MaxUses - k.Uses, nil
}

// List returns the keys caller may manage: those of the namespaces its
// claim covers.
func (m *Manager) List(ctx context.Context, caller Principal) ([]Key, error) {
	all, err := m.Registry.List(ctx)
	if err != nil {
		return nil, err
	}
	var out []Key
	for _, k := range all {
		if namespace.Covers(caller.Namespace, k.Namespace) {
			out = append(out, k)
		}
	}
	return out, nil
}

// target finds the key id (or a unique prefix of it) among the keys caller
// may manage. Keys of other namespaces are not found at all, prefix or
// not: a tenant learns nothing of another's keys, not even that they exist.
func (m *Manager) target(ctx context.Context, caller Principal, id string) (Key, error) {
	return m.Registry.findIn(ctx, id, func(k Key) bool { return namespace.Covers(caller.Namespace, k.Namespace) })
}

// Revoke revokes a key of caller's namespaces at once, and with it every
// key made from it. Errors match ErrKeyNotFound or errdefs.ErrForbidden
// (the key has scopes the caller lacks: a narrower key cannot revoke a
// wider one, its parent included).
func (m *Manager) Revoke(ctx context.Context, caller Principal, id string) (Key, error) {
	k, err := m.target(ctx, caller, id)
	if err != nil {
		return Key{}, err
	}
	if !caller.Scopes.Covers(k.Scopes) {
		return Key{}, errdefs.Forbiddenf("cannot revoke key %s: it has scopes (%s) your key lacks; ask whoever holds a key with them, or the operator (`msb server keys revoke %s`)", k.ID, k.Scopes, k.ID)
	}
	return m.Registry.revokeAt(ctx, k, m.Registry.now())
}

// Rotation is the result of Rotate.
type Rotation struct {
	Key string // the new key's text, shown once
	New Key
	Old Key // Old.Revoked: when the old key stops working
}

// Rotate replaces key id with a new key of the same label, namespace,
// scopes, limits and uses spent, and the same lifetime from now (the
// lifetime and uses left capped at the caller's). The old key keeps
// working for grace (0: it is revoked at once). Errors match
// ErrKeyNotFound, errdefs.ErrForbidden (the old key has rights the caller lacks)
// or errdefs.ErrInvalid.
func (m *Manager) Rotate(ctx context.Context, caller Principal, id string, grace time.Duration) (Rotation, error) {
	if grace < 0 {
		return Rotation{}, fmt.Errorf("%w: grace must be 0 (revoke at once) or a positive duration", errdefs.ErrInvalid)
	}
	old, err := m.target(ctx, caller, id)
	if err != nil {
		return Rotation{}, err
	}
	now := m.Registry.now()
	if old.RevokedAt(now) {
		return Rotation{}, fmt.Errorf("%w: key %s is revoked: create a new key instead", errdefs.ErrInvalid, old.ID)
	}
	if old.MaxUses > 0 && old.Uses >= old.MaxUses {
		return Rotation{}, fmt.Errorf("%w: key %s has no uses left: create a new key instead", errdefs.ErrInvalid, old.ID)
	}
	if !old.Revoked.IsZero() {
		// In its grace period: a second rotation would make a second live
		// successor of one key.
		succ := old.ReplacedBy
		if succ == "" {
			succ = "another key"
		}
		return Rotation{}, errdefs.Conflictf("key %s was already rotated to %s and works only until %s: rotate %s instead, or revoke %s to end its grace now",
			old.ID, succ, old.Revoked.UTC().Format(time.RFC3339), succ, old.ID)
	}
	o := CreateOptions{Namespace: old.Namespace, Label: old.Label, Scopes: old.Scopes, Rate: old.Rate, StartRate: old.StartRate,
		MaxUses: old.MaxUses, Uses: old.Uses, capped: true}
	if !old.Expires.IsZero() {
		o.Expire = old.Expires.Sub(old.Created).Truncate(time.Second)
	}
	opts, err := m.grant(ctx, caller, o)
	if err != nil {
		return Rotation{}, fmt.Errorf("rotate key %s: %w", old.ID, err)
	}
	opts.Parent = old.Parent // the successor stays in its family
	text, nk, err := m.Issuer.Issue(ctx, opts)
	if err != nil {
		return Rotation{}, err
	}
	if err := m.Registry.store.SetKeyReplacedBy(ctx, old.ID, nk.ID); err != nil {
		return Rotation{}, fmt.Errorf("rotate key %s: %w", old.ID, err)
	}
	old.ReplacedBy = nk.ID
	if old, err = m.Registry.revokeAt(ctx, old, now.Add(grace)); err != nil {
		return Rotation{}, err
	}
	return Rotation{Key: text, New: nk, Old: old}, nil
}

// SetLimits changes the limits of a key of caller's namespaces, within the
// caller's own limits. Errors match ErrKeyNotFound, errdefs.ErrForbidden or
// errdefs.ErrInvalid.
func (m *Manager) SetLimits(ctx context.Context, caller Principal, id string, l LimitChange) (Key, error) {
	k, err := m.target(ctx, caller, id)
	if err != nil {
		return Key{}, err
	}
	if !caller.Scopes.Covers(k.Scopes) {
		return Key{}, errdefs.Forbiddenf("cannot change key %s: it has scopes (%s) your key lacks", k.ID, k.Scopes)
	}
	check := func(what string, want *ratelimit.Rate, callerRate, def ratelimit.Rate) error {
		if want == nil || caller.Unlimited {
			return nil
		}
		c := effective(callerRate, def)
		if w := effective(*want, def); !c.IsZero() && !w.IsZero() && w.Exceeds(c) {
			return errdefs.Forbiddenf("cannot give a key a %s of %s: your key's is %s, and a key cannot grant more than it has", what, w.Describe(), c.Describe())
		}
		return nil
	}
	if err := check("rate limit", l.Rate, caller.Rate, m.Defaults.Rate); err != nil {
		return Key{}, err
	}
	if err := check("sandbox.start rate limit", l.StartRate, caller.StartRate, m.Defaults.StartRate); err != nil {
		return Key{}, err
	}
	if l.MaxUses != nil && !caller.Unlimited && caller.MaxUses > 0 {
		left, err := m.usesLeft(ctx, caller)
		if err != nil {
			return Key{}, err
		}
		if *l.MaxUses == 0 || *l.MaxUses-k.Uses > left {
			return Key{}, errdefs.Forbiddenf("cannot give key %s more than %d further uses: that is what your key has left", k.ID, max(left, 0))
		}
	}
	return m.Registry.SetLimits(ctx, k.ID, l)
}
