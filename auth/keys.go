// Package auth issues and verifies msb's API keys.
//
// A key is "msb_" followed by an HS256 JWT signed with the server signing
// key (server.key in the msb home, mode 0600) with the claims iat, exp
// (absent: never expires), namespace ("*": all), jti (the key id) and scopes
// (absent: every scope), then "_" and a checksum (see checksum.go). Every
// key is also recorded in the registry (SQLite), which is what makes
// revocation and --reset-key take effect on a running server. The key text
// is shown once, at issue, and never stored, logged or echoed in an error.
package auth

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/golang-jwt/jwt/v5"

	"github.com/msb-dev/msb/auth/ratelimit"
	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/namespace"
)

// Prefix starts every msb API key, so leaked keys are easy to find.
const Prefix = "msb_"

// MaxLabelLen bounds a key's label.
const MaxLabelLen = 64

// Claims are the JWT claims of an msb API key.
type Claims struct {
	Namespace string `json:"namespace"`
	// Scopes lists the key's scopes; absent (keys made before scopes, and
	// keys with every scope) means every scope.
	Scopes []string `json:"scopes,omitempty"`
	jwt.RegisteredClaims
}

// IssueOptions describe a key to issue.
type IssueOptions struct {
	Namespace string        // "" or "*": all namespaces
	Expire    time.Duration // 0: never
	// ExpiresAt, when set, is the exact expiry (a whole second in the
	// future) and overrides Expire: a key made for a caller that expires
	// must not outlive it by the second that passes between two clocks.
	ExpiresAt time.Time
	Label     string
	Scopes    Scopes         // 0: every scope
	Rate      ratelimit.Rate // zero: the server's default
	StartRate ratelimit.Rate // zero: the server's default
	MaxUses   int64          // 0: unlimited
	// Uses are uses already spent, carried over by rotation, so rotating a
	// key never gives it fresh ones.
	Uses int64
	// Parent is the key the new one is made from ("": the operator's).
	Parent string
}

// Issuer makes new keys and records them.
type Issuer struct {
	Signer   *Signer
	Registry *Registry
	Now      func() time.Time
}

// Issue signs a new key, records it, and returns the key text (to be shown
// once) with its registry entry. Errors for a bad namespace or label wrap
// namespace.ErrInvalidName or are plain messages saying what to change.
func (is *Issuer) Issue(ctx context.Context, opts IssueOptions) (string, Key, error) {
	if opts.Namespace == "" {
		opts.Namespace = namespace.All
	}
	if err := namespace.ValidateClaim(opts.Namespace); err != nil {
		return "", Key{}, err
	}
	if opts.Expire < 0 || opts.Expire%time.Second != 0 {
		return "", Key{}, errdefs.Invalidf("expiry must be a positive whole number of seconds")
	}
	if opts.Scopes == 0 {
		opts.Scopes = AllScopes
	}
	if opts.Scopes&^AllScopes != 0 {
		return "", Key{}, fmt.Errorf("%w: unknown scopes", errdefs.ErrInvalid)
	}
	if opts.MaxUses < 0 || opts.Uses < 0 {
		return "", Key{}, fmt.Errorf("%w: max uses must be 0 (unlimited) or more", errdefs.ErrInvalid)
	}
	if !utf8.ValidString(opts.Label) || utf8.RuneCountInString(opts.Label) > MaxLabelLen ||
		strings.ContainsFunc(opts.Label, func(r rune) bool { return !unicode.IsPrint(r) }) {
		return "", Key{}, errdefs.Invalidf("label must be at most %d printable characters", MaxLabelLen)
	}
	now := time.Now
	if is.Now != nil {
		now = is.Now
	}
	issued := now().Truncate(time.Second)
	idBytes := make([]byte, 12)
	if _, err := rand.Read(idBytes); err != nil {
		return "", Key{}, fmt.Errorf("generate key id: %w", err)
	}
	k := Key{
		ID:           hex.EncodeToString(idBytes),
		Label:        opts.Label,
		Namespace:    opts.Namespace,
		SigningKeyID: is.Signer.ID(),
		Created:      issued,
		Scopes:       opts.Scopes,
		Rate:         opts.Rate,
		StartRate:    opts.StartRate,
		MaxUses:      opts.MaxUses,
		Uses:         opts.Uses,
		Parent:       opts.Parent,
	}
	claims := Claims{Namespace: k.Namespace, RegisteredClaims: jwt.RegisteredClaims{
		ID:       k.ID,
		IssuedAt: jwt.NewNumericDate(issued),
	}}
	if k.Scopes != AllScopes {
		claims.Scopes = k.Scopes.List()
	}
	switch {
	case !opts.ExpiresAt.IsZero():
		k.Expires = opts.ExpiresAt.Truncate(time.Second)
		if !k.Expires.After(issued) {
			return "", Key{}, ErrExpired
		}
	case opts.Expire > 0:
		k.Expires = issued.Add(opts.Expire)
	}
	if !k.Expires.IsZero() {
		claims.ExpiresAt = jwt.NewNumericDate(k.Expires)
	}
	signed, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(is.Signer.secret)
	if err != nil {
		return "", Key{}, fmt.Errorf("sign key: %w", err)
	}
	text := withChecksum(Prefix + signed)
	k.Prefix = text[:PrefixLen]
	k.Hash = hashKey(text)
	if err := is.Registry.Add(ctx, k); err != nil {
		return "", Key{}, err
	}
	return text, k, nil
}

// Principal is who made an authenticated request.
type Principal struct {
	KeyID     string
	Label     string
	Namespace string // the key's claim: a namespace or "*"
	Scopes    Scopes
	// Expires is when the key stops working: its expiry, or the end of its
	// grace period once rotated, whichever comes first. Zero: never.
	Expires   time.Time
	Rate      ratelimit.Rate // zero: the server's default
	StartRate ratelimit.Rate // zero: the server's default
	MaxUses   int64          // 0: unlimited
	// Unlimited marks the operator (the CLI) and development mode: no rate
	// or usage limit, so keys they make have whatever limits are asked for.
	Unlimited bool
	// Ancestors are the keys this one descends from, parent first: each
	// call is charged to their rate and uses too.
	Ancestors []Ancestor
}

// Ancestor is a key another descends from, as its limits need it.
type Ancestor struct {
	KeyID     string
	Rate      ratelimit.Rate // zero: the server's default
	StartRate ratelimit.Rate
	MaxUses   int64
}

// maxAncestry bounds how far up a key's family is followed.
const maxAncestry = 16

// FullAccess is the principal of development mode and of the operator at
// the command line: every namespace, every scope, no limits.
func FullAccess(id string) Principal {
	return Principal{KeyID: id, Namespace: namespace.All, Scopes: AllScopes, Unlimited: true}
}

// Authenticator verifies API keys on the request path.
type Authenticator struct {
	Signer   *Signer
	Registry *Registry
	Now      func() time.Time

	// verified remembers tokens whose signature checked out, by hash, so a
	// key in use costs one SHA-256 instead of a JWT parse per request. The
	// signing key cannot change while the server runs, so an entry stays
	// true; expiry is checked on every use and revocation by the registry.
	mu       sync.RWMutex
	verified map[[sha256.Size]byte]verifiedToken
}

type verifiedToken struct {
	id, namespace string
	scopes        Scopes
	expires       time.Time // zero: never
}

// maxVerified bounds the verified-token memory; past it the memory starts over.
const maxVerified = 10000

// maxKeyLen bounds what is parsed at all; real keys are ~250 bytes.
const maxKeyLen = 4096

// Authenticate verifies key and returns who it belongs to. Every error
// matches errdefs.ErrUnauthenticated and is one of ErrKeyRequired, ErrInvalidKey
// (also for a key whose checksum does not match), ErrExpired, ErrRevoked,
// except a failure of the registry itself.
func (a *Authenticator) Authenticate(ctx context.Context, key string) (Principal, error) {
	if key == "" {
		return Principal{}, ErrKeyRequired
	}
	if len(key) > maxKeyLen || !strings.HasPrefix(key, Prefix) {
		return Principal{}, ErrInvalidKey
	}
	now := time.Now
	if a.Now != nil {
		now = a.Now
	}
	// A key seen before is found by its hash alone: its checksum and
	// signature were checked when it was remembered.
	sum := sha256.Sum256([]byte(key))
	a.mu.RLock()
	tok, ok := a.verified[sum]
	a.mu.RUnlock()
	if !ok {
		token, _, ok := splitKey(key)
		if !ok {
			return Principal{}, ErrInvalidKey
		}
		var err error
		if tok, err = a.verify(token, now); err != nil {
			return Principal{}, err
		}
		a.mu.Lock()
		if a.verified == nil || len(a.verified) >= maxVerified {
			a.verified = make(map[[sha256.Size]byte]verifiedToken)
		}
		a.verified[sum] = tok
		a.mu.Unlock()
	}
	var hash [2 * sha256.Size]byte
	hex.Encode(hash[:], sum[:])
	if !tok.expires.IsZero() && !now().Before(tok.expires) {
		return Principal{}, ErrExpired
	}
	k, err := a.Registry.lookup(ctx, tok.id)
	if errors.Is(err, ErrKeyNotFound) {
		return Principal{}, ErrInvalidKey
	}
	if err != nil {
		return Principal{}, err
	}
	if !hmac.Equal([]byte(k.Hash), hash[:]) || k.Namespace != tok.namespace || k.Scopes != tok.scopes {
		return Principal{}, ErrInvalidKey
	}
	return a.principal(ctx, k, now, true)
}

// Recheck implements Policy.Recheck for a principal Authenticate made:
// its key is looked up again (a cached row, or one read after a change
// of the registry) and checked as Authenticate checks it.
func (a *Authenticator) Recheck(ctx context.Context, p Principal) error {
	if p.Unlimited {
		return nil
	}
	now := time.Now
	if a.Now != nil {
		now = a.Now
	}
	if !p.Expires.IsZero() && !now().Before(p.Expires) {
		return ErrExpired
	}
	k, err := a.Registry.lookup(ctx, p.KeyID)
	if errors.Is(err, ErrKeyNotFound) {
		return ErrInvalidKey
	}
	if err != nil {
		return err
	}
	_, err = a.principal(ctx, k, now, false)
	return err
}

// principal checks the registry's record k of a key whose text verified
// (signing key, revocation, expiry, uses, its ancestors') and returns who
// it makes; touch records its use.
func (a *Authenticator) principal(ctx context.Context, k Key, now func() time.Time, touch bool) (Principal, error) {
	if k.SigningKeyID != a.Signer.ID() {
		return Principal{}, ErrInvalidKey
	}
	if !k.Expires.IsZero() && !now().Before(k.Expires) {
		return Principal{}, ErrExpired
	}
	if k.RevokedAt(now()) {
		return Principal{}, ErrRevoked
	}
	// A key with no uses left is refused at once, before its rate is
	// looked at: waiting for the bucket would only delay the same 401.
	if a.Registry.isSpent(k) {
		return Principal{}, ErrUsageLimit
	}
	if touch {
		a.Registry.touch(k.ID)
	}
	expires := k.Expires
	if !k.Revoked.IsZero() && (expires.IsZero() || k.Revoked.Before(expires)) {
		expires = k.Revoked // a rotated key in its grace period
	}
	p := Principal{KeyID: k.ID, Label: k.Label, Namespace: k.Namespace, Scopes: k.Scopes, Expires: expires,
		Rate: k.Rate, StartRate: k.StartRate, MaxUses: k.MaxUses}
	for parent := k.Parent; parent != "" && len(p.Ancestors) < maxAncestry; {
		anc, err := a.Registry.lookup(ctx, parent)
		if errors.Is(err, ErrKeyNotFound) {
			break
		}
		if err != nil {
			return Principal{}, err
		}
		revoked, err := a.familyRevoked(ctx, anc, now())
		if err != nil {
			return Principal{}, err
		}
		if revoked {
			return Principal{}, ErrFamilyRevoked
		}
		if a.Registry.isSpent(anc) {
			return Principal{}, ErrFamilyUsageLimit
		}
		p.Ancestors = append(p.Ancestors, Ancestor{KeyID: anc.ID, Rate: anc.Rate, StartRate: anc.StartRate, MaxUses: anc.MaxUses})
		parent = anc.Parent
	}
	return p, nil
}

// familyRevoked reports whether the keys made from anc lost it: anc was
// revoked, or rotated (its family passes to its successor) to a key that
// was revoked, following the chain of rotations.
func (a *Authenticator) familyRevoked(ctx context.Context, anc Key, now time.Time) (bool, error) {
	for range maxAncestry {
		if anc.ReplacedBy == "" {
			return anc.RevokedAt(now), nil
		}
		next, err := a.Registry.lookup(ctx, anc.ReplacedBy)
		if errors.Is(err, ErrKeyNotFound) {
			return anc.RevokedAt(now), nil
		}
		if err != nil {
			return false, err
		}
		anc = next
	}
	return false, nil
}

// Identify returns the id and label of the issued key that key is, even
// when it is expired or revoked, for the audit record of a refused call. It
// returns "" for anything whose signature does not verify or that was never
// issued, so a forged id never reaches the audit log.
func (a *Authenticator) Identify(ctx context.Context, key string) (id, label string) {
	if len(key) > maxKeyLen {
		return "", ""
	}
	token, _, ok := splitKey(key)
	if !ok {
		return "", ""
	}
	var claims Claims
	_, err := jwt.NewParser(jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}), jwt.WithoutClaimsValidation()).
		ParseWithClaims(token, &claims, func(t *jwt.Token) (any, error) {
			if t.Method != jwt.SigningMethodHS256 {
				return nil, errors.New("unexpected signing method")
			}
			return a.Signer.secret, nil
		})
	if err != nil || claims.ID == "" {
		return "", ""
	}
	k, err := a.Registry.lookup(ctx, claims.ID)
	if err != nil || !hmac.Equal([]byte(k.Hash), []byte(hashKey(key))) {
		return "", ""
	}
	return k.ID, k.Label
}

// verify checks the JWT token (the key without prefix and checksum): HS256 only, signed with the server's
// signing key, not expired, with an id and a valid namespace claim.
func (a *Authenticator) verify(token string, now func() time.Time) (verifiedToken, error) {
	var claims Claims
	_, err := jwt.NewParser(
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithTimeFunc(now),
	).ParseWithClaims(token, &claims, func(t *jwt.Token) (any, error) {
		// The algorithm is fixed here, never chosen by the token's header.
		if t.Method != jwt.SigningMethodHS256 {
			return nil, errors.New("unexpected signing method")
		}
		return a.Signer.secret, nil
	})
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return verifiedToken{}, ErrExpired
	case err != nil:
		return verifiedToken{}, ErrInvalidKey
	}
	if claims.ID == "" || namespace.ValidateClaim(claims.Namespace) != nil {
		return verifiedToken{}, ErrInvalidKey
	}
	scopes := AllScopes
	if claims.Scopes != nil {
		if len(claims.Scopes) == 0 {
			return verifiedToken{}, ErrInvalidKey
		}
		if scopes, err = ParseScopes(claims.Scopes); err != nil {
			return verifiedToken{}, ErrInvalidKey
		}
	}
	tok := verifiedToken{id: claims.ID, namespace: claims.Namespace, scopes: scopes}
	if claims.ExpiresAt != nil {
		tok.expires = claims.ExpiresAt.Time
	}
	return tok, nil
}
