package auth_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/msb-dev/msb/auth"
	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/storage"
)

// clock is an injectable, race-safe clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock(t time.Time) *clock { return &clock{t: t} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

// home is one msb home as the server sees it: a real signing key file, a
// real SQLite database and a change file, all in a temporary directory.
type home struct {
	dir, keyPath, dbPath, changes string

	db     *sql.DB
	signer *auth.Signer
	reg    *auth.Registry
	issuer *auth.Issuer
	authn  *auth.Authenticator
	now    func() time.Time // nil: time.Now
}

// newHome sets up a home; clk may be nil for the real clock.
func newHome(tb testing.TB, clk *clock) *home {
	tb.Helper()
	dir := tb.TempDir()
	h := &home{
		dir:     dir,
		keyPath: filepath.Join(dir, "server.key"),
		dbPath:  filepath.Join(dir, "msb.db"),
		changes: filepath.Join(dir, "keys.changed"),
	}
	if clk != nil {
		h.now = clk.Now
	}
	signer, created, err := auth.LoadOrCreateSigner(h.keyPath, false)
	if err != nil {
		tb.Fatalf("LoadOrCreateSigner: %v", err)
	}
	if !created {
		tb.Fatalf("LoadOrCreateSigner on an empty home: created = false")
	}
	h.signer = signer
	h.db, h.reg = h.openRegistry(tb)
	h.issuer = &auth.Issuer{Signer: signer, Registry: h.reg, Now: h.now}
	h.authn = &auth.Authenticator{Signer: signer, Registry: h.reg, Now: h.now}
	return h
}

// openRegistry opens the home's database again, with its own connections
// and its own Registry on the same change file, as another process would.
// It also returns a raw connection to the database file, through which
// tests change rows behind the registry's back, as an attacker with the
// file (or another tool) would.
func (h *home) openRegistry(tb testing.TB) (*sql.DB, *auth.Registry) {
	tb.Helper()
	db, err := storage.Open(context.Background(), h.dbPath)
	if err != nil {
		tb.Fatalf("storage.Open: %v", err)
	}
	raw, err := sql.Open("sqlite", "file:"+h.dbPath+"?_pragma=busy_timeout(10000)")
	if err != nil {
		tb.Fatal(err)
	}
	reg := auth.NewRegistry(db, h.changes, h.now)
	// Cleanups run last-registered first: wait for last-used writes, then close.
	tb.Cleanup(func() { db.Close(); raw.Close() })
	tb.Cleanup(func() { reg.Close() })
	return raw, reg
}

// authenticator returns a fresh Authenticator (empty verified-token memory)
// on reg with the home's clock.
func (h *home) authenticator(signer *auth.Signer, reg *auth.Registry) *auth.Authenticator {
	return &auth.Authenticator{Signer: signer, Registry: reg, Now: h.now}
}

func (h *home) issue(tb testing.TB, opts auth.IssueOptions) (string, auth.Key) {
	tb.Helper()
	key, k, err := h.issuer.Issue(context.Background(), opts)
	if err != nil {
		tb.Fatalf("Issue(%+v): %v", opts, err)
	}
	return key, k
}

// secret is the signing key as the file holds it.
func (h *home) secret(tb testing.TB) []byte {
	tb.Helper()
	data, err := os.ReadFile(h.keyPath)
	if err != nil {
		tb.Fatal(err)
	}
	return []byte(strings.TrimSpace(string(data)))
}

// jwtParts splits a key into its decoded header and claims and its raw parts.
func jwtParts(tb testing.TB, key string) (header, claims map[string]any, parts []string) {
	tb.Helper()
	if !strings.HasPrefix(key, auth.Prefix) {
		tb.Fatalf("key %q does not start with %q", key, auth.Prefix)
	}
	parts = strings.Split(jwtOf(tb, key), ".")
	if len(parts) != 3 {
		tb.Fatalf("key has %d dot-separated parts, want 3", len(parts))
	}
	for i, dst := range []*map[string]any{&header, &claims} {
		raw, err := base64.RawURLEncoding.Strict().DecodeString(parts[i])
		if err != nil {
			tb.Fatalf("part %d is not unpadded base64url: %v", i, err)
		}
		dec := json.NewDecoder(strings.NewReader(string(raw)))
		dec.UseNumber()
		if err := dec.Decode(dst); err != nil {
			tb.Fatalf("part %d is not a JSON object: %v (%s)", i, err, raw)
		}
	}
	return header, claims, parts
}

// jwtOf returns the JWT inside a key: without the prefix and, for a key in
// the checksummed format, without "_" and the checksum.
func jwtOf(tb testing.TB, key string) string {
	tb.Helper()
	body := strings.TrimPrefix(key, auth.Prefix)
	if auth.ValidChecksum(key) {
		body = body[:len(body)-1-auth.ChecksumLen]
	}
	return body
}

// rawToken builds "msb_" + a JWT with any header, signed with HMAC-SHA256
// over secret whatever the header says (nil secret: empty signature).
func rawToken(tb testing.TB, header, claims map[string]any, secret []byte) string {
	tb.Helper()
	enc := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			tb.Fatal(err)
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}
	input := enc(header) + "." + enc(claims)
	sig := ""
	if secret != nil {
		m := hmac.New(sha256.New, secret)
		m.Write([]byte(input))
		sig = base64.RawURLEncoding.EncodeToString(m.Sum(nil))
	}
	return auth.Prefix + input + "." + sig
}

var authErrors = []error{auth.ErrKeyRequired, auth.ErrInvalidKey, auth.ErrExpired, auth.ErrRevoked}

// wantAuthErr asserts err is exactly the sentinel want (and no other of the
// four causes), matches errdefs.ErrUnauthenticated, and does not echo the key.
func wantAuthErr(tb testing.TB, err, want error, key string) {
	tb.Helper()
	if err == nil {
		tb.Fatalf("Authenticate succeeded, want %v", want)
	}
	if err != want { //nolint:errorlint // the contract is the sentinel itself
		tb.Fatalf("Authenticate error = %q (%T), want exactly %q", err, err, want)
	}
	if !errors.Is(err, errdefs.ErrUnauthenticated) {
		tb.Fatalf("errors.Is(%q, errdefs.ErrUnauthenticated) = false", err)
	}
	for _, other := range authErrors {
		if other != want && errors.Is(err, other) {
			tb.Fatalf("errors.Is(%q, %q) = true: causes must be distinguishable", err, other)
		}
	}
	checkNoLeak(tb, err.Error(), key)
}

// checkNoLeak fails if msg contains key or any JWT part of it.
func checkNoLeak(tb testing.TB, msg, key string) {
	tb.Helper()
	if key == "" {
		return
	}
	if strings.Contains(msg, key) {
		tb.Fatalf("error message %q contains the key", msg)
	}
	for _, p := range strings.Split(strings.TrimPrefix(key, auth.Prefix), ".") {
		if len(p) >= 16 && strings.Contains(msg, p) {
			tb.Fatalf("error message %q contains part of the key %q", msg, p)
		}
	}
}
