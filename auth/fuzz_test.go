package auth_test

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/msb-dev/msb/auth"
	"github.com/msb-dev/msb/errdefs"
)

// FuzzAuthenticate: Authenticate never panics, and no string other than an
// issued, live key is ever accepted; every refusal is one of the four
// causes and never echoes the input.
func FuzzAuthenticate(f *testing.F) {
	clk := newClock(t0)
	h := newHome(f, clk)
	ctx := context.Background()

	good, gk := h.issue(f, auth.IssueOptions{Namespace: "team-a", Label: "good"})
	revoked, rk := h.issue(f, auth.IssueOptions{})
	if _, err := h.reg.Revoke(ctx, rk.ID); err != nil {
		f.Fatal(err)
	}
	clk.Set(t0.Add(-2 * time.Hour))
	expired, _ := h.issue(f, auth.IssueOptions{Expire: time.Hour})
	clk.Set(t0)

	secret := h.secret(f)
	_, claims, parts := jwtParts(f, good)
	hs384, _ := jwt.NewWithClaims(jwt.SigningMethodHS384, jwt.MapClaims(claims)).SignedString(secret)
	none, _ := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.MapClaims(claims)).SignedString(jwt.UnsafeAllowNoneSignatureType)
	seeds := []string{
		"", "msb_", "msb_.", "msb_..", "msb_a.b.c", "Bearer " + good, good, revoked, expired,
		good + "=", good + "\n", good + " ", " " + good, strings.ToUpper(good),
		strings.TrimPrefix(good, auth.Prefix),
		auth.Prefix + parts[0] + "." + parts[1],
		auth.Prefix + parts[0] + "." + parts[1] + ".",
		auth.Prefix + parts[0] + "." + parts[1] + "." + parts[2][:len(parts[2])-1] + "B",
		auth.Prefix + parts[0] + "==." + parts[1] + "." + parts[2],
		auth.Prefix + hs384, auth.Prefix + none,
		rawToken(f, map[string]any{"alg": "RS256"}, claims, secret),
		rawToken(f, map[string]any{"alg": "HS256"}, map[string]any{"jti": gk.ID, "namespace": "*"}, secret),
		rawToken(f, map[string]any{"alg": "HS256"}, map[string]any{"jti": gk.ID, "namespace": "team-a", "iat": 1}, []byte("wrong secret, but long enough!!!")),
		auth.Prefix + strings.Repeat("A", 5000),
	}
	for _, s := range seeds {
		f.Add(s)
	}

	f.Fuzz(func(t *testing.T, key string) {
		p, err := h.authn.Authenticate(ctx, key)
		switch key {
		case good:
			if err != nil || p.KeyID != gk.ID || p.Namespace != "team-a" || p.Label != "good" {
				t.Fatalf("issued key: %+v, %v", p, err)
			}
			return
		case revoked:
			wantAuthErr(t, err, auth.ErrRevoked, key)
			return
		case expired:
			wantAuthErr(t, err, auth.ErrExpired, key)
			return
		}
		if err == nil {
			t.Fatalf("Authenticate(%q) succeeded for a string never issued: %+v", key, p)
		}
		if !reflect.DeepEqual(p, auth.Principal{}) {
			t.Fatalf("refusal returned a principal %+v", p)
		}
		known := false
		for _, e := range authErrors {
			if err == e { //nolint:errorlint
				known = true
			}
		}
		if !known || !errors.Is(err, errdefs.ErrUnauthenticated) {
			t.Fatalf("Authenticate(%q) error %v (%T) is not one of the four causes", key, err, err)
		}
		if len(key) > 24 && strings.Contains(err.Error(), key) {
			t.Fatalf("error %q echoes the input", err)
		}
	})
}
