package auth_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/msb-dev/msb/auth"
	"github.com/msb-dev/msb/namespace"
)

var t0 = time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)

func TestIssueThenAuthenticate(t *testing.T) {
	t.Parallel()
	h := newHome(t, nil)
	ctx := context.Background()
	for _, opts := range []auth.IssueOptions{
		{},
		{Namespace: "*", Label: "ci"},
		{Namespace: "team-a", Label: "deploy bot", Expire: time.Hour},
		{Namespace: "B_2", Label: strings.Repeat("x", auth.MaxLabelLen)},
	} {
		key, k := h.issue(t, opts)
		wantNS := opts.Namespace
		if wantNS == "" {
			wantNS = namespace.All
		}
		if k.Namespace != wantNS || k.Label != opts.Label || k.ID == "" {
			t.Fatalf("Issue(%+v) record = %+v", opts, k)
		}
		if k.SigningKeyID != h.signer.ID() {
			t.Fatalf("record signing key id %q, signer %q", k.SigningKeyID, h.signer.ID())
		}
		if k.Prefix != key[:auth.PrefixLen] {
			t.Fatalf("record prefix %q, key starts %q", k.Prefix, key[:auth.PrefixLen])
		}
		for i := 0; i < 3; i++ { // first call verifies, later ones use the memory
			p, err := h.authn.Authenticate(ctx, key)
			if err != nil {
				t.Fatalf("Authenticate(issued key %+v) call %d: %v", opts, i, err)
			}
			want := auth.Principal{KeyID: k.ID, Label: opts.Label, Namespace: wantNS, Scopes: auth.AllScopes, Expires: k.Expires}
			if !reflect.DeepEqual(p, want) {
				t.Fatalf("Principal = %+v, want %+v", p, want)
			}
		}
		// A second process (another Registry and Authenticator) accepts it too.
		_, reg2 := h.openRegistry(t)
		if p, err := h.authenticator(h.signer, reg2).Authenticate(ctx, key); err != nil || p.KeyID != k.ID {
			t.Fatalf("Authenticate through a second registry: %+v, %v", p, err)
		}
	}
	keys, err := h.reg.List(ctx)
	if err != nil || len(keys) != 4 {
		t.Fatalf("List: %d keys, %v; want 4", len(keys), err)
	}
	for _, k := range keys {
		if st := k.Status(time.Now(), h.signer.ID()); st != auth.StatusActive {
			t.Fatalf("key %s status %q, want active", k.ID, st)
		}
	}
}

func TestKeysAreDistinct(t *testing.T) {
	t.Parallel()
	h := newHome(t, newClock(t0)) // same clock, same options: only randomness differs
	seenKey, seenID := map[string]bool{}, map[string]bool{}
	for i := 0; i < 20; i++ {
		key, k := h.issue(t, auth.IssueOptions{Namespace: "ns"})
		if seenKey[key] || seenID[k.ID] {
			t.Fatalf("issue %d repeated a key or id (%s)", i, k.ID)
		}
		seenKey[key], seenID[k.ID] = true, true
	}
}

func TestKeyFormat(t *testing.T) {
	t.Parallel()
	clk := newClock(t0.Add(1500 * time.Millisecond)) // iat must be whole seconds
	h := newHome(t, clk)
	issued := t0.Add(time.Second)

	t.Run("no expiry", func(t *testing.T) {
		key, k := h.issue(t, auth.IssueOptions{Namespace: "team-a"})
		header, claims, _ := jwtParts(t, key)
		if header["alg"] != "HS256" {
			t.Fatalf("header alg = %v, want HS256 (header %v)", header["alg"], header)
		}
		if typ, ok := header["typ"]; ok && typ != "JWT" {
			t.Fatalf("header typ = %v", typ)
		}
		if got := sortedKeys(claims); !equalStrings(got, []string{"iat", "jti", "namespace"}) {
			t.Fatalf("claims %v, want exactly iat, jti, namespace (no exp without an expiry)", got)
		}
		if claims["jti"] != k.ID || claims["namespace"] != "team-a" {
			t.Fatalf("claims %v, want jti %q namespace team-a", claims, k.ID)
		}
		if claims["iat"] != json.Number(fmt.Sprint(issued.Unix())) {
			t.Fatalf("iat = %v, want %d", claims["iat"], issued.Unix())
		}
		if !k.Created.Equal(issued) || !k.Expires.IsZero() {
			t.Fatalf("record created %v expires %v, want %v and never", k.Created, k.Expires, issued)
		}
		// The signature is HS256 with the secret in the signing key file.
		parsed, err := jwt.NewParser(jwt.WithValidMethods([]string{"HS256"}), jwt.WithoutClaimsValidation()).
			Parse(jwtOf(t, key), func(*jwt.Token) (any, error) { return h.secret(t), nil })
		if err != nil || !parsed.Valid {
			t.Fatalf("key does not verify as HS256 with the signing key file's secret: %v", err)
		}
	})

	t.Run("default namespace", func(t *testing.T) {
		key, _ := h.issue(t, auth.IssueOptions{})
		_, claims, _ := jwtParts(t, key)
		if claims["namespace"] != "*" {
			t.Fatalf("namespace claim = %v, want \"*\"", claims["namespace"])
		}
	})

	t.Run("expiry", func(t *testing.T) {
		key, k := h.issue(t, auth.IssueOptions{Namespace: "*", Expire: 7 * 24 * time.Hour})
		_, claims, _ := jwtParts(t, key)
		if got := sortedKeys(claims); !equalStrings(got, []string{"exp", "iat", "jti", "namespace"}) {
			t.Fatalf("claims %v, want exactly exp, iat, jti, namespace", got)
		}
		wantExp := issued.Add(7 * 24 * time.Hour)
		if claims["exp"] != json.Number(fmt.Sprint(wantExp.Unix())) {
			t.Fatalf("exp = %v, want %d", claims["exp"], wantExp.Unix())
		}
		if !k.Expires.Equal(wantExp) {
			t.Fatalf("record expires %v, want %v", k.Expires, wantExp)
		}
	})
}

// A sub-second expiry cannot be represented in the JWT's exp (whole
// seconds), so Issue refuses it rather than record a different expiry.
func TestSubSecondExpiryRecordMatchesToken(t *testing.T) {
	t.Parallel()
	clk := newClock(t0)
	h := newHome(t, clk)
	_, _, err := h.issuer.Issue(context.Background(), auth.IssueOptions{Expire: 1500 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "whole number of seconds") {
		t.Fatalf("Issue with a 1.5s expiry: %v, want a refusal", err)
	}
	key, k, err := h.issuer.Issue(context.Background(), auth.IssueOptions{Expire: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	_, claims, _ := jwtParts(t, key)
	exp, _ := claims["exp"].(json.Number).Int64()
	if !k.Expires.Equal(time.Unix(exp, 0)) {
		t.Errorf("registry Expires = %v, JWT exp = %v: they must agree", k.Expires.UTC(), time.Unix(exp, 0).UTC())
	}
	at := t0.Add(1200 * time.Millisecond)
	clk.Set(at)
	_, aerr := h.authn.Authenticate(context.Background(), key)
	status := k.Status(at, h.signer.ID())
	if (aerr == nil) != (status == auth.StatusActive) {
		t.Errorf("at +1.2s Authenticate = %v but Key.Status = %q: they must agree", aerr, status)
	}
}

func TestRegistryNeverStoresKey(t *testing.T) {
	t.Parallel()
	h := newHome(t, nil)
	ctx := context.Background()
	var keys []string
	for i := 0; i < 5; i++ {
		key, _ := h.issue(t, auth.IssueOptions{Namespace: fmt.Sprintf("ns%d", i), Label: "l", Expire: time.Hour})
		keys = append(keys, key)
		if _, err := h.authn.Authenticate(ctx, key); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := h.reg.Revoke(ctx, mustID(t, h, keys[0])); err != nil {
		t.Fatal(err)
	}
	h.reg.Close() // let last-used writes land

	secretsOf := func(key string) map[string]string {
		parts := strings.Split(strings.TrimPrefix(key, auth.Prefix), ".")
		return map[string]string{"key": key, "jwt": strings.TrimPrefix(key, auth.Prefix), "signature": parts[2], "claims": parts[1]}
	}
	scanFiles := func(stage string) {
		t.Helper()
		for _, suffix := range []string{"", "-wal", "-shm"} {
			data, err := os.ReadFile(h.dbPath + suffix)
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, key := range keys {
				for what, s := range secretsOf(key) {
					if bytes.Contains(data, []byte(s)) {
						t.Fatalf("%s: database file msb.db%s contains the key's %s", stage, suffix, what)
					}
				}
			}
		}
		if data, err := os.ReadFile(h.changes); err == nil {
			for _, key := range keys {
				if bytes.Contains(data, []byte(secretsOf(key)["signature"])) {
					t.Fatalf("change file contains a key")
				}
			}
		}
	}
	scanFiles("before checkpoint")
	if _, err := h.db.ExecContext(ctx, `PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
		t.Fatal(err)
	}
	scanFiles("after checkpoint")

	// Every column of every row, as text.
	rows, err := h.db.QueryContext(ctx, `SELECT * FROM api_keys`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	n := 0
	for rows.Next() {
		n++
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		for i, v := range vals {
			cell := fmt.Sprintf("%s", v)
			for _, key := range keys {
				for what, s := range secretsOf(key) {
					if strings.Contains(cell, s) {
						t.Fatalf("api_keys.%s contains a key's %s", cols[i], what)
					}
				}
			}
			if cols[i] == "key_prefix" && len(cell) != auth.PrefixLen {
				t.Fatalf("key_prefix %q is %d characters, want %d", cell, len(cell), auth.PrefixLen)
			}
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if n != len(keys) {
		t.Fatalf("api_keys has %d rows, want %d", n, len(keys))
	}
}

// mustID returns the jti of key.
func mustID(t *testing.T, h *home, key string) string {
	t.Helper()
	_, claims, _ := jwtParts(t, key)
	return claims["jti"].(string)
}

func TestAuthenticateErrors(t *testing.T) {
	t.Parallel()
	clk := newClock(t0)
	h := newHome(t, clk)
	ctx := context.Background()
	key, k := h.issue(t, auth.IssueOptions{Namespace: "team-a", Expire: time.Hour})
	revokedKey, rk := h.issue(t, auth.IssueOptions{})
	if _, err := h.reg.Revoke(ctx, rk.ID); err != nil {
		t.Fatal(err)
	}
	_, _, parts := jwtParts(t, key)
	flip := func(s string, i int) string {
		b := []byte(s)
		if b[i] == 'A' {
			b[i] = 'B'
		} else {
			b[i] = 'A'
		}
		return string(b)
	}
	jwtText := strings.TrimPrefix(key, auth.Prefix)

	cases := []struct {
		name, key string
		want      error
	}{
		{"empty", "", auth.ErrKeyRequired},
		{"no prefix", jwtText, auth.ErrInvalidKey},
		{"upper-case prefix", "MSB_" + jwtText, auth.ErrInvalidKey},
		{"Bearer left in", "Bearer " + key, auth.ErrInvalidKey},
		{"prefix only", auth.Prefix, auth.ErrInvalidKey},
		{"garbage", "msb_not.a.jwt", auth.ErrInvalidKey},
		{"two parts", auth.Prefix + parts[0] + "." + parts[1], auth.ErrInvalidKey},
		{"trailing character", key + "x", auth.ErrInvalidKey},
		{"trailing newline", key + "\n", auth.ErrInvalidKey},
		{"tampered header", auth.Prefix + flip(parts[0], 3) + "." + parts[1] + "." + parts[2], auth.ErrInvalidKey},
		{"tampered claims", auth.Prefix + parts[0] + "." + flip(parts[1], 5) + "." + parts[2], auth.ErrInvalidKey},
		{"tampered signature", auth.Prefix + parts[0] + "." + parts[1] + "." + flip(parts[2], 4), auth.ErrInvalidKey},
		{"no signature", auth.Prefix + parts[0] + "." + parts[1] + ".", auth.ErrInvalidKey},
		{"huge", key + strings.Repeat("A", 10000), auth.ErrInvalidKey},
		{"revoked", revokedKey, auth.ErrRevoked},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for i := 0; i < 2; i++ { // also once the memory could have kept something
				_, err := h.authn.Authenticate(ctx, c.key)
				wantAuthErr(t, err, c.want, c.key)
			}
		})
	}
	// The good key still works after all that, then expires.
	if _, err := h.authn.Authenticate(ctx, key); err != nil {
		t.Fatalf("good key after failures: %v", err)
	}
	clk.Set(k.Expires)
	_, err := h.authn.Authenticate(ctx, key)
	wantAuthErr(t, err, auth.ErrExpired, key)

	// Messages are the documented ones.
	for err, msg := range map[error]string{
		auth.ErrKeyRequired: "API key is required",
		auth.ErrInvalidKey:  "invalid API key",
		auth.ErrExpired:     "API key has expired",
		auth.ErrRevoked:     "API key has been revoked",
	} {
		if err.Error() != msg {
			t.Errorf("message %q, want %q", err.Error(), msg)
		}
	}
}

// A different spelling of the same bytes (non-canonical base64 in the last
// character of the signature) still verifies as a JWT; it is not the issued
// key text and must not be accepted as it.
func TestNonCanonicalSpellingRefused(t *testing.T) {
	t.Parallel()
	h := newHome(t, nil)
	key, _ := h.issue(t, auth.IssueOptions{})
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	last := key[len(key)-1]
	idx := strings.IndexByte(alphabet, last)
	// 32-byte signature = 43 base64 chars: the last holds 4 bits + 2 padding bits.
	variant := key[:len(key)-1] + string(alphabet[idx^1])
	if variant == key {
		t.Fatal("variant equals key")
	}
	_, err := h.authn.Authenticate(context.Background(), variant)
	wantAuthErr(t, err, auth.ErrInvalidKey, variant)
	if _, err := h.authn.Authenticate(context.Background(), key); err != nil {
		t.Fatalf("the real key after its variant: %v", err)
	}
}

// register records tok in the registry as Issue would (the schema keeps the
// SHA-256 of the key text), so that only the token's own checks can refuse it.
func register(t *testing.T, h *home, tok, id, ns string) {
	t.Helper()
	sum := sha256.Sum256([]byte(tok))
	_, err := h.db.ExecContext(context.Background(), `INSERT INTO api_keys
		(id, label, namespace, key_prefix, key_hash, signing_key_id, created_at)
		VALUES (?, 'forged', ?, ?, ?, ?, ?)`,
		id, ns, tok[:auth.PrefixLen], hex.EncodeToString(sum[:]), h.signer.ID(), time.Now().UnixMilli())
	if err != nil {
		t.Fatal(err)
	}
}

func TestForeignAlgorithmsRefused(t *testing.T) {
	t.Parallel()
	h := newHome(t, nil)
	ctx := context.Background()
	secret := h.secret(t)
	n := 0
	forge := func(sign func(claims jwt.Claims) string) (string, string) {
		n++
		id := fmt.Sprintf("forged%018d", n)
		claims := auth.Claims{Namespace: "team-a", RegisteredClaims: jwt.RegisteredClaims{
			ID: id, IssuedAt: jwt.NewNumericDate(time.Now()),
		}}
		tok := sign(claims)
		register(t, h, tok, id, "team-a")
		return tok, id
	}
	with := func(m jwt.SigningMethod, key any) func(jwt.Claims) string {
		return func(c jwt.Claims) string {
			s, err := jwt.NewWithClaims(m, c).SignedString(key)
			if err != nil {
				t.Fatal(err)
			}
			return auth.Prefix + s
		}
	}
	raw := func(header map[string]any, secret []byte) func(jwt.Claims) string {
		return func(c jwt.Claims) string {
			b, _ := json.Marshal(c)
			var m map[string]any
			_ = json.Unmarshal(b, &m)
			return rawToken(t, header, m, secret)
		}
	}

	// Control: an HS256 token recorded this way is accepted, so the refusals
	// below come from the algorithm check, not from the registry.
	tok, id := forge(with(jwt.SigningMethodHS256, secret))
	if p, err := h.authn.Authenticate(ctx, tok); err != nil || p.KeyID != id {
		t.Fatalf("control HS256 token: %+v, %v", p, err)
	}

	for name, sign := range map[string]func(jwt.Claims) string{
		"HS384": with(jwt.SigningMethodHS384, secret),
		"HS512": with(jwt.SigningMethodHS512, secret),
		"none":  with(jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType),
		// RS256 in the header, HMAC-SHA256 with the secret as signature: the
		// classic algorithm-confusion forgery.
		"RS256 header":   raw(map[string]any{"alg": "RS256", "typ": "JWT"}, secret),
		"none lowercase": raw(map[string]any{"alg": "none"}, nil),
		"NONE":           raw(map[string]any{"alg": "NONE"}, nil),
		"hs256":          raw(map[string]any{"alg": "hs256"}, secret),
		"no alg":         raw(map[string]any{"typ": "JWT"}, secret),
	} {
		t.Run(name, func(t *testing.T) {
			tok, _ := forge(sign)
			_, err := h.authn.Authenticate(ctx, tok)
			wantAuthErr(t, err, auth.ErrInvalidKey, tok)
			_, err = h.authenticator(h.signer, h.reg).Authenticate(ctx, tok)
			wantAuthErr(t, err, auth.ErrInvalidKey, tok)
		})
	}
}

// Even recorded in the registry, a token whose claims are malformed (no
// jti, a namespace claim that is not a valid claim) is refused.
func TestRegisteredTokenWithBadClaimsRefused(t *testing.T) {
	t.Parallel()
	h := newHome(t, nil)
	ctx := context.Background()
	secret := h.secret(t)
	hdr := map[string]any{"alg": "HS256", "typ": "JWT"}
	iat := time.Now().Unix()

	control := rawToken(t, hdr, map[string]any{"iat": iat, "jti": "control", "namespace": "team-a"}, secret)
	register(t, h, control, "control", "team-a")
	if _, err := h.authn.Authenticate(ctx, control); err != nil {
		t.Fatalf("control token: %v", err)
	}
	for _, c := range []struct {
		name, id, ns string
		claims       map[string]any
	}{
		{"no jti", "", "team-a", map[string]any{"iat": iat, "namespace": "team-a"}},
		{"empty jti", "", "team-a", map[string]any{"iat": iat, "jti": "", "namespace": "team-a"}},
		{"path namespace", "k1", "../etc", map[string]any{"iat": iat, "jti": "k1", "namespace": "../etc"}},
		{"empty namespace", "k2", "", map[string]any{"iat": iat, "jti": "k2", "namespace": ""}},
		{"no namespace", "k3", "", map[string]any{"iat": iat, "jti": "k3"}},
		{"glob namespace", "k4", "team-*", map[string]any{"iat": iat, "jti": "k4", "namespace": "team-*"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			tok := rawToken(t, hdr, c.claims, secret)
			register(t, h, tok, c.id, c.ns)
			_, err := h.authn.Authenticate(ctx, tok)
			wantAuthErr(t, err, auth.ErrInvalidKey, tok)
			if _, err := h.db.ExecContext(ctx, `DELETE FROM api_keys WHERE id = ?`, c.id); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// Tokens correctly signed with the server's secret but never issued (as
// someone who read server.key could make) are still refused: the registry
// must hold the exact key.
func TestSignedButNotIssuedRefused(t *testing.T) {
	t.Parallel()
	h := newHome(t, nil)
	ctx := context.Background()
	key, k := h.issue(t, auth.IssueOptions{Namespace: "team-a"})
	secret := h.secret(t)
	hdr := map[string]any{"alg": "HS256", "typ": "JWT"}
	iat := k.Created.Unix()
	cases := map[string]map[string]any{
		"unknown jti":          {"iat": iat, "jti": "0123456789abcdef01234567", "namespace": "team-a"},
		"same jti, other ns":   {"iat": iat, "jti": k.ID, "namespace": "team-b"},
		"same jti, ns *":       {"iat": iat, "jti": k.ID, "namespace": "*"},
		"same jti, other iat":  {"iat": iat + 1, "jti": k.ID, "namespace": "team-a"},
		"same jti, added exp":  {"iat": iat, "jti": k.ID, "namespace": "team-a", "exp": iat + 3600},
		"no jti":               {"iat": iat, "namespace": "team-a"},
		"invalid ns claim":     {"iat": iat, "jti": k.ID, "namespace": "../etc"},
		"empty ns claim":       {"iat": iat, "jti": k.ID, "namespace": ""},
		"ns claim not string":  {"iat": iat, "jti": k.ID, "namespace": 7},
		"jti not string":       {"iat": iat, "jti": 7, "namespace": "team-a"},
		"missing namespace":    {"iat": iat, "jti": k.ID},
		"sql in jti":           {"iat": iat, "jti": "' OR 1=1 --", "namespace": "team-a"},
		"same claims, new key": {"iat": iat, "jti": k.ID, "namespace": "team-a", "x": 1},
	}
	for name, claims := range cases {
		t.Run(name, func(t *testing.T) {
			tok := rawToken(t, hdr, claims, secret)
			if tok == key {
				t.Fatal("forged token equals the issued key")
			}
			_, err := h.authn.Authenticate(ctx, tok)
			wantAuthErr(t, err, auth.ErrInvalidKey, tok)
		})
	}
	if _, err := h.authn.Authenticate(ctx, key); err != nil {
		t.Fatalf("issued key: %v", err)
	}
}

// The registry's record of a key's namespace is checked against the claim:
// a row edited to another namespace makes the key invalid.
func TestNamespaceClaimMustMatchRegistry(t *testing.T) {
	t.Parallel()
	h := newHome(t, nil)
	ctx := context.Background()
	key, k := h.issue(t, auth.IssueOptions{Namespace: "team-a"})
	_, reg2 := h.openRegistry(t)
	if _, err := h.authenticator(h.signer, reg2).Authenticate(ctx, key); err != nil {
		t.Fatalf("control: %v", err)
	}
	if _, err := h.db.ExecContext(ctx, `UPDATE api_keys SET namespace = 'team-b' WHERE id = ?`, k.ID); err != nil {
		t.Fatal(err)
	}
	_, reg3 := h.openRegistry(t)
	_, err := h.authenticator(h.signer, reg3).Authenticate(ctx, key)
	wantAuthErr(t, err, auth.ErrInvalidKey, key)

	// Widening the record to "*" must not widen (or keep) the key either.
	if _, err := h.db.ExecContext(ctx, `UPDATE api_keys SET namespace = '*' WHERE id = ?`, k.ID); err != nil {
		t.Fatal(err)
	}
	_, reg4 := h.openRegistry(t)
	_, err = h.authenticator(h.signer, reg4).Authenticate(ctx, key)
	wantAuthErr(t, err, auth.ErrInvalidKey, key)
}

// Authenticate agrees with Key.Status: a record whose signing key id is not
// the server's is invalid even if the signature checks out.
func TestSigningKeyIDMustMatchRegistry(t *testing.T) {
	t.Parallel()
	h := newHome(t, nil)
	ctx := context.Background()
	key, k := h.issue(t, auth.IssueOptions{})
	if _, err := h.db.ExecContext(ctx, `UPDATE api_keys SET signing_key_id = '000000000000' WHERE id = ?`, k.ID); err != nil {
		t.Fatal(err)
	}
	_, reg := h.openRegistry(t)
	keys, err := reg.List(ctx)
	if err != nil || len(keys) != 1 || keys[0].Status(time.Now(), h.signer.ID()) != auth.StatusInvalid {
		t.Fatalf("List = %+v, %v; want one key with status invalid", keys, err)
	}
	_, err = h.authenticator(h.signer, reg).Authenticate(ctx, key)
	wantAuthErr(t, err, auth.ErrInvalidKey, key)
}

func TestIssueRefusesBadOptions(t *testing.T) {
	t.Parallel()
	h := newHome(t, nil)
	ctx := context.Background()
	for _, ns := range []string{"bad name", "../x", "a/b", "-lead", strings.Repeat("a", 64), "**", "ns\n", "é"} {
		_, _, err := h.issuer.Issue(ctx, auth.IssueOptions{Namespace: ns})
		if !errors.Is(err, namespace.ErrInvalidName) {
			t.Errorf("Issue(namespace %q) error = %v, want one wrapping namespace.ErrInvalidName", ns, err)
		}
	}
	for _, label := range []string{strings.Repeat("x", auth.MaxLabelLen+1), "a\nb", "tab\there", "nul\x00", "del\x7f", "\x1b[31mred"} {
		_, _, err := h.issuer.Issue(ctx, auth.IssueOptions{Label: label})
		if err == nil || !strings.Contains(err.Error(), "label") {
			t.Errorf("Issue(label %q) error = %v, want one about the label", label, err)
		}
	}
	if _, _, err := h.issuer.Issue(ctx, auth.IssueOptions{Expire: -time.Second}); err == nil || !strings.Contains(err.Error(), "expiry") {
		t.Errorf("Issue(negative expiry) error = %v, want one about the expiry", err)
	}
	keys, err := h.reg.List(ctx)
	if err != nil || len(keys) != 0 {
		t.Fatalf("refused issues left %d keys in the registry (%v)", len(keys), err)
	}
}

func TestExpiryWithInjectedClock(t *testing.T) {
	t.Parallel()
	clk := newClock(t0)
	h := newHome(t, clk)
	ctx := context.Background()
	key, k := h.issue(t, auth.IssueOptions{Namespace: "team-a", Expire: time.Hour})
	forever, _ := h.issue(t, auth.IssueOptions{})
	exp := t0.Add(time.Hour)
	if !k.Expires.Equal(exp) {
		t.Fatalf("Expires = %v, want %v", k.Expires, exp)
	}

	// Verified (and remembered) shortly before it expires.
	clk.Set(exp.Add(-time.Second))
	if _, err := h.authn.Authenticate(ctx, key); err != nil {
		t.Fatalf("one second before expiry: %v", err)
	}
	if st := k.Status(clk.Now(), h.signer.ID()); st != auth.StatusActive {
		t.Fatalf("status before expiry %q", st)
	}
	// The remembered verification must not outlive exp.
	clk.Set(exp)
	_, err := h.authn.Authenticate(ctx, key)
	wantAuthErr(t, err, auth.ErrExpired, key)
	clk.Set(exp.Add(24 * time.Hour))
	_, err = h.authn.Authenticate(ctx, key)
	wantAuthErr(t, err, auth.ErrExpired, key)
	// Nor does a fresh authenticator (the JWT path) accept it.
	_, err = h.authenticator(h.signer, h.reg).Authenticate(ctx, key)
	wantAuthErr(t, err, auth.ErrExpired, key)
	if st := k.Status(clk.Now(), h.signer.ID()); st != auth.StatusExpired {
		t.Fatalf("status after expiry %q, want %q", st, auth.StatusExpired)
	}
	keys, err := h.reg.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, rec := range keys {
		if rec.ID == k.ID && !rec.Expires.Equal(exp) {
			t.Fatalf("listed Expires = %v, want %v", rec.Expires, exp)
		}
	}
	// A key without expiry works a century later.
	clk.Set(t0.AddDate(100, 0, 0))
	if _, err := h.authn.Authenticate(ctx, forever); err != nil {
		t.Fatalf("non-expiring key: %v", err)
	}
	// Expired key issued in the past: never remembered as good.
	clk.Set(t0)
	past, _ := h.issue(t, auth.IssueOptions{Expire: time.Minute})
	clk.Set(t0.Add(2 * time.Minute))
	for i := 0; i < 2; i++ {
		_, err = h.authn.Authenticate(ctx, past)
		wantAuthErr(t, err, auth.ErrExpired, past)
	}
}

func TestRevokeSeenByOtherRegistry(t *testing.T) {
	t.Parallel()
	h := newHome(t, nil)
	ctx := context.Background()
	cached, kc := h.issue(t, auth.IssueOptions{Label: "cached"})
	fresh, kf := h.issue(t, auth.IssueOptions{Label: "fresh"})
	bystander, _ := h.issue(t, auth.IssueOptions{Label: "bystander"})
	for _, key := range []string{cached, bystander} {
		for i := 0; i < 3; i++ {
			if _, err := h.authn.Authenticate(ctx, key); err != nil {
				t.Fatal(err)
			}
		}
	}
	// The CLI, in another process: its own connection and Registry.
	_, cli := h.openRegistry(t)
	for _, id := range []string{kc.ID, kf.ID} {
		rk, err := cli.Revoke(ctx, id)
		if err != nil {
			t.Fatalf("Revoke(%s): %v", id, err)
		}
		if rk.ID != id || rk.Revoked.IsZero() {
			t.Fatalf("Revoke returned %+v", rk)
		}
	}
	// The very next call, no waiting.
	_, err := h.authn.Authenticate(ctx, cached)
	wantAuthErr(t, err, auth.ErrRevoked, cached)
	_, err = h.authn.Authenticate(ctx, fresh)
	wantAuthErr(t, err, auth.ErrRevoked, fresh)
	if _, err := h.authn.Authenticate(ctx, bystander); err != nil {
		t.Fatalf("an unrevoked key stopped working: %v", err)
	}
	// Revoking twice is not an error and keeps the first time.
	again, err := cli.Revoke(ctx, kc.ID)
	if err != nil || again.Revoked.IsZero() {
		t.Fatalf("second Revoke: %+v, %v", again, err)
	}
	keys, err := h.reg.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		want := auth.StatusActive
		if k.ID == kc.ID || k.ID == kf.ID {
			want = auth.StatusRevoked
		}
		if st := k.Status(time.Now(), h.signer.ID()); st != want {
			t.Fatalf("key %s (%s) status %q, want %q", k.ID, k.Label, st, want)
		}
	}
	// A key issued by the other process works here straight away.
	other := &auth.Issuer{Signer: h.signer, Registry: cli}
	newKey, nk, err := other.Issue(ctx, auth.IssueOptions{Label: "from cli"})
	if err != nil {
		t.Fatal(err)
	}
	if p, err := h.authn.Authenticate(ctx, newKey); err != nil || p.KeyID != nk.ID {
		t.Fatalf("key issued by another registry: %+v, %v", p, err)
	}
}

// When the change file grows past its limit, announce replaces it with a
// new, shorter file; a registry that saw the long one must still notice.
func TestRevokeSeenAcrossChangeFileReset(t *testing.T) {
	t.Parallel()
	h := newHome(t, nil)
	ctx := context.Background()
	key, k := h.issue(t, auth.IssueOptions{})
	if err := os.WriteFile(h.changes, bytes.Repeat([]byte("1700000000000000000\n"), 4000), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := h.authn.Authenticate(ctx, key); err != nil { // sees the long file
		t.Fatal(err)
	}
	before, err := os.Stat(h.changes)
	if err != nil {
		t.Fatal(err)
	}
	_, cli := h.openRegistry(t)
	if _, err := cli.Revoke(ctx, k.ID); err != nil {
		t.Fatal(err)
	}
	after, err := os.Stat(h.changes)
	if err != nil {
		t.Fatal(err)
	}
	if after.Size() >= before.Size() {
		t.Fatalf("change file was not started over: %d -> %d bytes", before.Size(), after.Size())
	}
	if after.Mode().Perm() != 0o600 {
		t.Fatalf("change file mode %v, want 0600", after.Mode().Perm())
	}
	_, err = h.authn.Authenticate(ctx, key)
	wantAuthErr(t, err, auth.ErrRevoked, key)
}

func TestRevokeByPrefix(t *testing.T) {
	t.Parallel()
	h := newHome(t, nil)
	ctx := context.Background()
	ids := map[string]string{} // id -> key
	byFirst := map[byte][]string{}
	for i := 0; i < 17; i++ { // 17 hex ids: two share a first character
		key, k := h.issue(t, auth.IssueOptions{})
		ids[k.ID] = key
		byFirst[k.ID[0]] = append(byFirst[k.ID[0]], k.ID)
	}
	var shared string
	for c, group := range byFirst {
		if len(group) >= 2 {
			shared = string(c)
		}
	}
	if shared == "" {
		t.Fatal("no shared first character among 17 hex ids")
	}

	// Ambiguous: refused, nothing revoked.
	_, err := h.reg.Revoke(ctx, shared)
	if err == nil || !strings.Contains(err.Error(), "give more of the id") {
		t.Fatalf("Revoke(ambiguous %q) error = %v, want one asking for more of the id", shared, err)
	}
	if errors.Is(err, auth.ErrKeyNotFound) {
		t.Fatalf("ambiguous prefix reported as not found: %v", err)
	}

	// Unknown ids.
	var someID string
	for id := range ids {
		someID = id
		break
	}
	unknown := []string{"", "zz", "_", "%", someID + "0"}
	if up := strings.ToUpper(someID); up != someID {
		unknown = append(unknown, up) // ids are matched exactly, not case-folded
	}
	for _, id := range unknown {
		_, err := h.reg.Revoke(ctx, id)
		if !errors.Is(err, auth.ErrKeyNotFound) {
			t.Fatalf("Revoke(%q) error = %v, want ErrKeyNotFound", id, err)
		}
	}
	assertNoneRevoked := func() {
		t.Helper()
		keys, err := h.reg.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range keys {
			if !k.Revoked.IsZero() {
				t.Fatalf("key %s revoked by a refused Revoke", k.ID)
			}
		}
	}
	assertNoneRevoked()

	// A unique prefix revokes exactly that key.
	target := byFirst[shared[0]][0]
	prefix := ""
	for n := 1; n <= len(target); n++ {
		matches := 0
		for id := range ids {
			if strings.HasPrefix(id, target[:n]) {
				matches++
			}
		}
		if matches == 1 {
			prefix = target[:n]
			break
		}
	}
	rk, err := h.reg.Revoke(ctx, prefix)
	if err != nil || rk.ID != target {
		t.Fatalf("Revoke(unique prefix %q) = %s, %v; want %s", prefix, rk.ID, err, target)
	}
	keys, err := h.reg.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if (k.ID == target) == k.Revoked.IsZero() {
			t.Fatalf("key %s revoked=%v after revoking %s", k.ID, !k.Revoked.IsZero(), target)
		}
	}
	_, err = h.authn.Authenticate(ctx, ids[target])
	wantAuthErr(t, err, auth.ErrRevoked, ids[target])
}

func TestRevokeUsesRegistryClock(t *testing.T) {
	t.Parallel()
	clk := newClock(t0)
	h := newHome(t, clk)
	ctx := context.Background()
	_, k := h.issue(t, auth.IssueOptions{})
	clk.Set(t0.Add(90 * time.Minute))
	rk, err := h.reg.Revoke(ctx, k.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !rk.Revoked.Equal(t0.Add(90 * time.Minute)) {
		t.Fatalf("Revoked = %v, want the registry clock's %v", rk.Revoked, t0.Add(90*time.Minute))
	}
	clk.Set(t0.Add(3 * time.Hour))
	again, err := h.reg.Revoke(ctx, k.ID)
	if err != nil || !again.Revoked.Equal(rk.Revoked) {
		t.Fatalf("second Revoke = %v, %v; want the first time %v kept", again.Revoked, err, rk.Revoked)
	}
}

func sortedKeys(m map[string]any) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// A registry watching the change file through an open descriptor still
// notices a revocation when the file was deleted and made again.
func TestRevokeSeenAfterChangeFileDeleted(t *testing.T) {
	t.Parallel()
	h := newHome(t, nil)
	ctx := context.Background()
	key, k := h.issue(t, auth.IssueOptions{})
	if _, err := h.authn.Authenticate(ctx, key); err != nil { // watches the file
		t.Fatal(err)
	}
	if err := os.Remove(h.changes); err != nil { // made by NewRegistry
		t.Fatal(err)
	}
	if _, err := h.authn.Authenticate(ctx, key); err != nil {
		t.Fatal(err)
	}
	_, cli := h.openRegistry(t)
	if _, err := cli.Revoke(ctx, k.ID); err != nil {
		t.Fatal(err)
	}
	_, err := h.authn.Authenticate(ctx, key)
	wantAuthErr(t, err, auth.ErrRevoked, key)
}
