package auth_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"hash/crc32"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/msb-dev/msb/auth"
	"github.com/msb-dev/msb/auth/ratelimit"
	"github.com/msb-dev/msb/errdefs"
)

func TestParseScopes(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		in   []string
		want string
	}{
		{nil, "*"},
		{[]string{"*"}, "*"},
		{[]string{"sandbox:read"}, "sandbox:read"},
		{[]string{"sandbox:exec", "sandbox:read"}, "sandbox:read,sandbox:exec"},
		{[]string{"sandbox:read,keys:manage"}, "sandbox:read,keys:manage"},
		{[]string{"sandbox:read", "*"}, "*"},
		{[]string{"sandbox:create", "sandbox:read", "sandbox:exec", "sandbox:delete", "keys:manage", "audit:read"}, "*"},
	} {
		got, err := auth.ParseScopes(c.in)
		if err != nil || got.String() != c.want {
			t.Errorf("ParseScopes(%q) = %s, %v; want %s", c.in, got, err, c.want)
		}
	}
	for _, bad := range [][]string{{"sandbox:write"}, {"SANDBOX:READ"}, {"sandbox:read", "root"}, {strings.Repeat("x", 1000)}} {
		_, err := auth.ParseScopes(bad)
		if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "sandbox:read") || len(err.Error()) > 300 {
			t.Errorf("ParseScopes(%.40q) error = %v", bad, err)
		}
	}
	read, _ := auth.ParseScopes([]string{"sandbox:read"})
	if !read.Has(auth.ScopeSandboxRead) || read.Has(auth.ScopeSandboxExec) || read.Has(auth.ScopeAll) || read.Has("bogus") {
		t.Fatal("Has is wrong")
	}
	if !auth.AllScopes.Has(auth.ScopeAll) || !auth.AllScopes.Covers(read) || read.Covers(auth.AllScopes) {
		t.Fatal("AllScopes is wrong")
	}
	if var0 := auth.Scopes(0); var0.Has(auth.ScopeSandboxRead) {
		t.Fatal("the zero Scopes grants something")
	}
}

func TestScopesInTokenAndRegistry(t *testing.T) {
	t.Parallel()
	h := newHome(t, nil)
	ctx := context.Background()
	scopes, _ := auth.ParseScopes([]string{"sandbox:read", "sandbox:exec"})
	key, k := h.issue(t, auth.IssueOptions{Scopes: scopes})
	_, claims, _ := jwtParts(t, key)
	got, _ := claims["scopes"].([]any)
	if len(got) != 2 || got[0] != "sandbox:read" || got[1] != "sandbox:exec" {
		t.Fatalf("scopes claim = %v", claims["scopes"])
	}
	p, err := h.authn.Authenticate(ctx, key)
	if err != nil || p.Scopes != scopes {
		t.Fatalf("Authenticate: %+v, %v", p, err)
	}
	// The same id re-signed with wider scopes is not what was issued.
	wider, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"jti": k.ID, "namespace": "*", "iat": claims["iat"]}).SignedString(h.secret(t))
	_, err = h.authn.Authenticate(ctx, auth.Prefix+wider)
	wantAuthErr(t, err, auth.ErrInvalidKey, auth.Prefix+wider)
	for _, bad := range []any{[]string{}, []string{"root"}} {
		tok, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"jti": k.ID, "namespace": "*", "scopes": bad}).SignedString(h.secret(t))
		_, err = h.authn.Authenticate(ctx, auth.Prefix+tok)
		wantAuthErr(t, err, auth.ErrInvalidKey, auth.Prefix+tok)
	}
	list, _ := h.reg.List(ctx)
	if len(list) != 1 || list[0].Scopes != scopes {
		t.Fatalf("registry scopes: %+v", list)
	}
}

func TestChecksum(t *testing.T) {
	t.Parallel()
	h := newHome(t, nil)
	ctx := context.Background()
	key, _ := h.issue(t, auth.IssueOptions{})
	if !auth.ValidChecksum(key) || !auth.LooksLikeKey(key) {
		t.Fatalf("issued key fails its own checksum: %s...", key[:12])
	}
	// The format, recomputed independently: CRC-32 of "msb_<JWT>" in 6 base62 digits.
	body, sum := key[:len(key)-7], key[len(key)-6:]
	if key[len(key)-7] != '_' {
		t.Fatal("no _ before the checksum")
	}
	const b62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	n := crc32.ChecksumIEEE([]byte(body))
	want := make([]byte, 6)
	for i := 5; i >= 0; i-- {
		want[i] = b62[n%62]
		n /= 62
	}
	if sum != string(want) {
		t.Fatalf("checksum %s, want %s", sum, want)
	}
	// Any change to one character: the checksum no longer matches, offline
	// and on the server.
	for _, i := range []int{5, len(key) / 2, len(key) - 9, len(key) - 1} {
		b := []byte(key)
		b[i] = map[bool]byte{true: 'B', false: 'A'}[b[i] == 'A']
		bad := string(b)
		if auth.ValidChecksum(bad) || auth.LooksLikeKey(bad) {
			t.Fatalf("corrupted at %d still passes the checksum", i)
		}
		_, err := h.authn.Authenticate(ctx, bad)
		wantAuthErr(t, err, auth.ErrInvalidKey, bad)
	}
	for _, s := range []string{"", "msb_", "msb_a.b.c", "ghp_" + key[4:], key + "x", strings.TrimSuffix(key, sum), "msb_" + strings.Repeat("a", 60)} {
		if auth.ValidChecksum(s) {
			t.Fatalf("ValidChecksum(%.30q) = true", s)
		}
	}
}

// Keys issued before the checksum ("msb_<JWT>") keep working.
func TestLegacyKeyWithoutChecksum(t *testing.T) {
	t.Parallel()
	h := newHome(t, nil)
	ctx := context.Background()
	key, k := h.issue(t, auth.IssueOptions{Namespace: "old"})
	legacy := key[:len(key)-1-auth.ChecksumLen]
	sum := sha256.Sum256([]byte(legacy))
	// What the registry held for a key issued before: the hash of its text.
	if _, err := h.db.ExecContext(ctx, `UPDATE api_keys SET key_hash = ? WHERE id = ?`, hex.EncodeToString(sum[:]), k.ID); err != nil {
		t.Fatal(err)
	}
	_, reg := h.openRegistry(t)
	authn := h.authenticator(h.signer, reg)
	p, err := authn.Authenticate(ctx, legacy)
	if err != nil || p.KeyID != k.ID || p.Scopes != auth.AllScopes {
		t.Fatalf("legacy key: %+v, %v", p, err)
	}
	if auth.ValidChecksum(legacy) || !auth.LooksLikeKey(legacy) {
		t.Fatal("a legacy key has no checksum but looks like a key")
	}
	// The checksummed text of the same JWT is a different key text: refused.
	_, err = authn.Authenticate(ctx, key)
	wantAuthErr(t, err, auth.ErrInvalidKey, key)
}

func manager(h *home) *auth.Manager {
	return &auth.Manager{Issuer: h.issuer, Registry: h.reg, Now: h.now,
		Defaults: auth.Defaults{Rate: ratelimit.Rate{N: 600, Per: time.Minute}, StartRate: ratelimit.Rate{N: 60, Per: time.Minute}}}
}

func principal(t *testing.T, h *home, key string) auth.Principal {
	t.Helper()
	p, err := h.authn.Authenticate(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestNoPrivilegeEscalation(t *testing.T) {
	t.Parallel()
	clk := newClock(t0)
	h := newHome(t, clk)
	m := manager(h)
	ctx := context.Background()
	scopes, _ := auth.ParseScopes([]string{"keys:manage", "sandbox:read"})
	callerKey, _ := h.issue(t, auth.IssueOptions{Namespace: "team-a", Scopes: scopes, Expire: 24 * time.Hour,
		Rate: ratelimit.Rate{N: 10, Per: time.Minute}, StartRate: ratelimit.Rate{N: 2, Per: time.Minute}, MaxUses: 100})
	caller := principal(t, h, callerKey)
	exec, _ := auth.ParseScopes([]string{"sandbox:exec"})
	for name, o := range map[string]auth.CreateOptions{
		"wider namespace":   {Namespace: "*"},
		"other namespace":   {Namespace: "team-b"},
		"more scopes":       {Scopes: exec},
		"every scope":       {Scopes: auth.AllScopes},
		"longer expiry":     {Expire: 48 * time.Hour},
		"higher rate":       {Rate: ratelimit.Rate{N: 11, Per: time.Minute}},
		"higher rate, in s": {Rate: ratelimit.Rate{N: 1, Per: time.Second}},
		"higher start rate": {StartRate: ratelimit.Rate{N: 3, Per: time.Minute}},
		"bigger burst":      {Rate: ratelimit.Rate{N: 600, Per: time.Hour}}, // the same 10/m on average
		"more uses":         {MaxUses: 101},
	} {
		_, _, err := m.Create(ctx, caller, o)
		if !errors.Is(err, errdefs.ErrForbidden) {
			t.Errorf("%s: Create error = %v, want errdefs.ErrForbidden", name, err)
		}
	}
	// Unset options inherit the caller's; narrower ones are kept.
	_, k, err := m.Create(ctx, caller, auth.CreateOptions{Label: "child"})
	if err != nil {
		t.Fatal(err)
	}
	if k.Namespace != "team-a" || k.Scopes != scopes || !k.Expires.Equal(caller.Expires) ||
		k.Rate != caller.Rate || k.StartRate != caller.StartRate || k.MaxUses != 100 { // no use counted yet
		t.Fatalf("inherited key = %+v", k)
	}
	read, _ := auth.ParseScopes([]string{"sandbox:read"})
	_, k, err = m.Create(ctx, caller, auth.CreateOptions{Scopes: read, Expire: time.Hour, Rate: ratelimit.Rate{N: 1, Per: time.Second}, MaxUses: 5})
	if err == nil {
		t.Fatalf("1/s is faster than the caller's 10/m: created %+v", k)
	}
	_, k, err = m.Create(ctx, caller, auth.CreateOptions{Scopes: read, Expire: time.Hour, Rate: ratelimit.Rate{N: 5, Per: time.Minute}, MaxUses: 5})
	if err != nil || k.Scopes != read || k.Rate.N != 5 || k.MaxUses != 5 || !k.Expires.Equal(t0.Add(time.Hour)) {
		t.Fatalf("narrower key: %+v, %v", k, err)
	}
	// A caller on the server's default rate may not exceed the default.
	plainKey, _ := h.issue(t, auth.IssueOptions{})
	plain := principal(t, h, plainKey)
	if _, _, err := m.Create(ctx, plain, auth.CreateOptions{Rate: ratelimit.Rate{N: 601, Per: time.Minute}}); !errors.Is(err, errdefs.ErrForbidden) {
		t.Fatalf("above the default rate: %v", err)
	}
	// The operator may.
	if _, k, err := m.Create(ctx, auth.FullAccess("cli"), auth.CreateOptions{Rate: ratelimit.Rate{N: 10000, Per: time.Second}}); err != nil || k.Rate.N != 10000 {
		t.Fatalf("operator: %+v %v", k, err)
	}

	// Managing keys outside the namespace, or with more rights.
	otherKey, other := h.issue(t, auth.IssueOptions{Namespace: "team-b"})
	_ = otherKey
	// Another namespace's keys are not found at all, by id or by prefix,
	// and the error names neither the key nor its namespace.
	for _, id := range []string{other.ID, other.ID[:12]} {
		if _, err := m.Revoke(ctx, caller, id); !errors.Is(err, auth.ErrKeyNotFound) || strings.Contains(err.Error(), "team-b") {
			t.Fatalf("revoke %s in another namespace: %v", id, err)
		}
		if _, err := m.Rotate(ctx, caller, id, 0); !errors.Is(err, auth.ErrKeyNotFound) || strings.Contains(err.Error(), "team-b") {
			t.Fatalf("rotate %s in another namespace: %v", id, err)
		}
	}
	_, strong := h.issue(t, auth.IssueOptions{Namespace: "team-a"}) // every scope
	if _, err := m.Rotate(ctx, caller, strong.ID, 0); !errors.Is(err, errdefs.ErrForbidden) {
		t.Fatalf("rotate a key with more scopes: %v", err)
	}
	fast := ratelimit.Rate{N: 1000, Per: time.Second}
	if _, err := m.SetLimits(ctx, caller, k.ID, auth.LimitChange{Rate: &fast}); !errors.Is(err, errdefs.ErrForbidden) {
		t.Fatalf("raise a rate above the caller's: %v", err)
	}
	unlimited := int64(0)
	if _, err := m.SetLimits(ctx, caller, k.ID, auth.LimitChange{MaxUses: &unlimited}); !errors.Is(err, errdefs.ErrForbidden) {
		t.Fatalf("lift max uses of a limited caller: %v", err)
	}
	list, err := m.List(ctx, caller)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range list {
		if k.Namespace != "team-a" {
			t.Fatalf("team-a caller lists key of %q", k.Namespace)
		}
	}
}

func TestRotateWithGrace(t *testing.T) {
	t.Parallel()
	clk := newClock(t0)
	h := newHome(t, clk)
	m := manager(h)
	ctx := context.Background()
	scopes, _ := auth.ParseScopes([]string{"sandbox:exec"})
	oldKey, old := h.issue(t, auth.IssueOptions{Namespace: "ci", Label: "runner", Scopes: scopes, Expire: 30 * 24 * time.Hour,
		Rate: ratelimit.Rate{N: 7, Per: time.Minute}, MaxUses: 50})
	clk.Set(t0.Add(time.Hour))
	r, err := m.Rotate(ctx, auth.FullAccess("cli"), old.ID[:8], 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	n := r.New
	if n.Label != "runner" || n.Namespace != "ci" || n.Scopes != scopes || n.Rate != old.Rate || n.MaxUses != 50 ||
		!n.Expires.Equal(t0.Add(time.Hour).Add(30*24*time.Hour)) {
		t.Fatalf("new key = %+v", n)
	}
	if r.Old.ReplacedBy != n.ID || !r.Old.Revoked.Equal(t0.Add(25*time.Hour)) {
		t.Fatalf("old key = %+v", r.Old)
	}
	if _, err := h.authn.Authenticate(ctx, r.Key); err != nil {
		t.Fatalf("new key: %v", err)
	}
	if _, err := h.authn.Authenticate(ctx, oldKey); err != nil {
		t.Fatalf("old key during grace: %v", err)
	}
	clk.Set(t0.Add(25 * time.Hour))
	_, err = h.authn.Authenticate(ctx, oldKey)
	wantAuthErr(t, err, auth.ErrRevoked, oldKey)
	if _, err := m.Rotate(ctx, auth.FullAccess("cli"), old.ID, 0); err == nil {
		t.Fatal("rotating a revoked key succeeded")
	}

	// Without grace: revoked at once.
	r2, err := m.Rotate(ctx, auth.FullAccess("cli"), n.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = h.authn.Authenticate(ctx, r.Key)
	wantAuthErr(t, err, auth.ErrRevoked, r.Key)
	if _, err := h.authn.Authenticate(ctx, r2.Key); err != nil {
		t.Fatal(err)
	}
	// Revoking during a grace period ends it.
	r3, err := m.Rotate(ctx, auth.FullAccess("cli"), r2.New.ID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.reg.Revoke(ctx, r3.Old.ID); err != nil {
		t.Fatal(err)
	}
	_, err = h.authn.Authenticate(ctx, r2.Key)
	wantAuthErr(t, err, auth.ErrRevoked, r2.Key)
}

func TestUsageLimitPersists(t *testing.T) {
	t.Parallel()
	h := newHome(t, nil)
	ctx := context.Background()
	key, k := h.issue(t, auth.IssueOptions{MaxUses: 3})
	p := principal(t, h, key)
	limits := auth.NewLimits(h.reg, auth.Defaults{}, nil)
	for i := 0; i < 2; i++ {
		if err := limits.Use(ctx, p); err != nil {
			t.Fatalf("use %d: %v", i, err)
		}
	}
	// Another process (a restarted server) sees the uses made.
	_, reg2 := h.openRegistry(t)
	limits2 := auth.NewLimits(reg2, auth.Defaults{}, nil)
	if err := limits2.Use(ctx, p); err != nil {
		t.Fatalf("third use after reopening: %v", err)
	}
	err := limits2.Use(ctx, p)
	if err != auth.ErrUsageLimit || !errors.Is(err, errdefs.ErrUnauthenticated) || err.Error() == "" { //nolint:errorlint
		t.Fatalf("fourth use: %v", err)
	}
	if err := limits.Use(ctx, p); err != auth.ErrUsageLimit { //nolint:errorlint
		t.Fatalf("fourth use, first registry: %v", err)
	}
	list, _ := h.reg.List(ctx)
	if list[0].ID != k.ID || list[0].Uses != 3 || list[0].Status(time.Now(), h.signer.ID()) != auth.StatusSpent {
		t.Fatalf("record: %+v", list[0])
	}
	// Raising the limit gives more uses.
	more := int64(5)
	if _, err := h.reg.SetLimits(ctx, k.ID, auth.LimitChange{MaxUses: &more}); err != nil {
		t.Fatal(err)
	}
	if err := limits.Use(ctx, p); err != nil {
		t.Fatalf("use after raising the limit: %v", err)
	}
	// Keys without a limit are counted in memory and written on Close.
	free, fk := h.issue(t, auth.IssueOptions{})
	fp := principal(t, h, free)
	for i := 0; i < 4; i++ {
		if err := limits.Use(ctx, fp); err != nil {
			t.Fatal(err)
		}
	}
	h.reg.Close()
	got, _ := h.reg.Find(ctx, fk.ID)
	if got.Uses != 4 {
		t.Fatalf("unlimited key uses = %d, want 4", got.Uses)
	}
}

func TestLimitsBuckets(t *testing.T) {
	t.Parallel()
	clk := newClock(t0)
	h := newHome(t, clk)
	key, _ := h.issue(t, auth.IssueOptions{Rate: ratelimit.Rate{N: 3, Per: time.Minute}})
	p := principal(t, h, key)
	l := auth.NewLimits(h.reg, auth.Defaults{Rate: ratelimit.Rate{N: 600, Per: time.Minute}, StartRate: ratelimit.Rate{N: 1, Per: time.Minute}}, clk.Now)
	if st, err := l.Allow(p, true); err != nil || st.Limit != 1 {
		t.Fatalf("first start: %+v %v", st, err)
	}
	_, err := l.Allow(p, true)
	var rl *auth.RateLimitError
	if !errors.As(err, &rl) || !rl.Start || rl.RetryAfter != time.Minute || !strings.Contains(err.Error(), "sandbox.start") {
		t.Fatalf("second start: %v", err)
	}
	// The start bucket is spent; other calls still have the main one, from
	// which the refused start took nothing (3 - 1 start - this call).
	if st, err := l.Allow(p, false); err != nil || st.Remaining != 1 || st.Limit != 3 {
		t.Fatalf("call: %+v %v", st, err)
	}
	if st, err := l.Allow(p, false); err != nil || st.Remaining != 0 {
		t.Fatalf("last call: %+v %v", st, err)
	}
	_, err = l.Allow(p, false)
	if !errors.As(err, &rl) || rl.Start || rl.RetryAfter != 20*time.Second || !errors.Is(err, errdefs.ErrRateLimited) {
		t.Fatalf("over the main bucket: %v", err)
	}
	if st := l.Status(p); st.Remaining != 0 || st.Limit != 3 {
		t.Fatalf("Status: %+v", st)
	}
}

// A key's children and rotations get at most the uses it has left, so a
// limited key cannot multiply its uses by creating or rotating keys.
func TestUsesCannotMultiply(t *testing.T) {
	t.Parallel()
	h := newHome(t, nil)
	m := manager(h)
	ctx := context.Background()
	limits := auth.NewLimits(h.reg, auth.Defaults{}, nil)
	key, _ := h.issue(t, auth.IssueOptions{Namespace: "team-a", MaxUses: 3})
	caller := principal(t, h, key)
	if err := limits.Use(ctx, caller); err != nil { // the keys.create call itself
		t.Fatal(err)
	}
	_, child, err := m.Create(ctx, caller, auth.CreateOptions{})
	if err != nil || child.MaxUses != 2 {
		t.Fatalf("child of a key with 2 uses left: %+v, %v", child, err)
	}
	if _, _, err := m.Create(ctx, caller, auth.CreateOptions{MaxUses: 3}); !errors.Is(err, errdefs.ErrForbidden) || !strings.Contains(err.Error(), "2 left") {
		t.Fatalf("child with more uses than are left: %v", err)
	}
	for range 2 {
		if err := limits.Use(ctx, caller); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := m.Create(ctx, caller, auth.CreateOptions{}); !errors.Is(err, errdefs.ErrForbidden) {
		t.Fatalf("child of a spent key: %v", err)
	}

	// Rotation carries the uses spent over to the new key.
	rkey, rk := h.issue(t, auth.IssueOptions{Namespace: "team-a", MaxUses: 10})
	rp := principal(t, h, rkey)
	for range 7 {
		if err := limits.Use(ctx, rp); err != nil {
			t.Fatal(err)
		}
	}
	r, err := m.Rotate(ctx, auth.FullAccess("cli"), rk.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	if r.New.MaxUses != 10 || r.New.Uses != 7 {
		t.Fatalf("rotated key: max %d, uses %d; want 10, 7", r.New.MaxUses, r.New.Uses)
	}
	np := principal(t, h, r.Key)
	for i := range 4 {
		err := limits.Use(ctx, np)
		if i < 3 && err != nil || i == 3 && err != auth.ErrUsageLimit { //nolint:errorlint
			t.Fatalf("use %d of the rotated key: %v", i, err)
		}
	}
	if _, err := m.Rotate(ctx, auth.FullAccess("cli"), r.New.ID, 0); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("rotating a spent key: %v", err)
	}
}

// A rotated key in its grace period is a key that expires when the grace
// ends: it cannot make a key that outlives it.
func TestGraceKeyCannotOutliveItself(t *testing.T) {
	t.Parallel()
	clk := newClock(t0)
	h := newHome(t, clk)
	m := manager(h)
	ctx := context.Background()
	scopes, _ := auth.ParseScopes([]string{"keys:manage", "sandbox:read"})
	oldKey, old := h.issue(t, auth.IssueOptions{Namespace: "team-a", Scopes: scopes})
	if _, err := m.Rotate(ctx, auth.FullAccess("cli"), old.ID, time.Hour); err != nil {
		t.Fatal(err)
	}
	p := principal(t, h, oldKey)
	if !p.Expires.Equal(t0.Add(time.Hour)) {
		t.Fatalf("principal of a key in grace expires %v, want %v", p.Expires, t0.Add(time.Hour))
	}
	_, child, err := m.Create(ctx, p, auth.CreateOptions{})
	if err != nil || !child.Expires.Equal(t0.Add(time.Hour)) {
		t.Fatalf("child of a key in grace: %+v, %v", child, err)
	}
	if _, _, err := m.Create(ctx, p, auth.CreateOptions{Expire: 2 * time.Hour}); !errors.Is(err, errdefs.ErrForbidden) {
		t.Fatalf("child outliving the grace: %v", err)
	}
}

// Last use is written at most once a minute per key, not on every call,
// and the uses counted in between go with it.
func TestLastUsedAtMostOnceAMinute(t *testing.T) {
	t.Parallel()
	clk := newClock(t0)
	h := newHome(t, clk)
	ctx := context.Background()
	key, k := h.issue(t, auth.IssueOptions{})
	lastUsed := func() time.Time {
		t.Helper()
		h.reg.Close() // waits for the writes in flight
		got, err := h.reg.Find(ctx, k.ID)
		if err != nil {
			t.Fatal(err)
		}
		return got.LastUsed
	}
	if !lastUsed().IsZero() {
		t.Fatal("a key never used has a last use")
	}
	for _, c := range []struct {
		at   time.Duration
		want time.Duration
	}{{0, 0}, {30 * time.Second, 0}, {59 * time.Second, 0}, {61 * time.Second, 61 * time.Second}, {90 * time.Second, 61 * time.Second}} {
		clk.Set(t0.Add(c.at))
		principal(t, h, key)
		if got := lastUsed(); !got.Equal(t0.Add(c.want)) {
			t.Fatalf("after a call at +%s: last used %v, want +%s", c.at, got, c.want)
		}
	}
}

// Revoking a key revokes the keys made from it (a leaked key's holder
// cannot keep a child), rotating it does not; a narrower key cannot
// revoke a wider one.
func TestRevokeReachesTheFamily(t *testing.T) {
	t.Parallel()
	h := newHome(t, nil)
	m := manager(h)
	ctx := context.Background()
	authn := func(text string) (auth.Principal, error) { return h.authn.Authenticate(ctx, text) }
	parentText, parent := h.issue(t, auth.IssueOptions{Namespace: "team", Label: "leaked"})
	pp := principal(t, h, parentText)
	childText, _, err := m.Create(ctx, pp, auth.CreateOptions{Label: "child"})
	if err != nil {
		t.Fatal(err)
	}
	cp := principal(t, h, childText)
	grandText, _, err := m.Create(ctx, cp, auth.CreateOptions{Label: "grandchild"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.reg.Revoke(ctx, parent.ID); err != nil {
		t.Fatal(err)
	}
	for name, text := range map[string]string{"child": childText, "grandchild": grandText} {
		if _, err := authn(text); !errors.Is(err, auth.ErrFamilyRevoked) {
			t.Errorf("%s of a revoked key: %v, want ErrFamilyRevoked", name, err)
		}
	}

	// Rotation keeps the family.
	rotText, _ := h.issue(t, auth.IssueOptions{Namespace: "team", Label: "rotated"})
	rp := principal(t, h, rotText)
	kidText, _, err := m.Create(ctx, rp, auth.CreateOptions{Label: "kid"})
	if err != nil {
		t.Fatal(err)
	}
	rot, err := m.Rotate(ctx, rp, rp.KeyID, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := authn(rotText); err == nil {
		t.Fatal("a key rotated with no grace still works")
	}
	if _, err := authn(kidText); err != nil {
		t.Errorf("the child of a rotated key: %v, want it working", err)
	}
	// The family passed to the successor: rotated again, then revoked,
	// it takes the old key's children with it.
	sp := principal(t, h, rot.Key)
	rot2, err := m.Rotate(ctx, sp, sp.KeyID, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := authn(kidText); err != nil {
		t.Errorf("the child of a key rotated twice: %v, want it working", err)
	}
	if _, err := h.reg.Revoke(ctx, rot2.New.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := authn(kidText); !errors.Is(err, auth.ErrFamilyRevoked) {
		t.Errorf("the child of a rotated key whose last successor was revoked: %v, want ErrFamilyRevoked", err)
	}

	// A keys:manage-only key cannot revoke its namespace's admin key.
	km, err := auth.ParseScopes([]string{"keys:manage"})
	if err != nil {
		t.Fatal(err)
	}
	weakText, _ := h.issue(t, auth.IssueOptions{Namespace: "team", Scopes: km})
	wp := principal(t, h, weakText)
	adminText, admin := h.issue(t, auth.IssueOptions{Namespace: "team", Label: "admin"})
	if _, err := m.Revoke(ctx, wp, admin.ID); !errdefs.Is(err, errdefs.Forbidden) {
		t.Errorf("keys:manage key revoking an all-scopes key: %v, want forbidden", err)
	}
	if _, err := authn(adminText); err != nil {
		t.Errorf("admin key after the refused revoke: %v", err)
	}
	if _, err := m.Revoke(ctx, wp, wp.KeyID); err != nil {
		t.Errorf("a key revoking itself: %v", err)
	}
}
