package auth_test

import (
	"context"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/msb-dev/msb/auth"
)

func fileMode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestSigningKeyCreated(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "server.key")
	s, created, err := auth.LoadOrCreateSigner(path, false)
	if err != nil || !created {
		t.Fatalf("LoadOrCreateSigner(new) = created %v, %v", created, err)
	}
	if m := fileMode(t, path); m != 0o600 {
		t.Fatalf("signing key mode %v, want 0600", m)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text := strings.TrimSpace(string(data))
	raw, err := hex.DecodeString(text)
	if err != nil || len(text) != 64 || len(raw) != 32 {
		t.Fatalf("signing key file holds %q: want 64 hex characters (32 random bytes)", text)
	}
	distinct := map[byte]bool{}
	for _, b := range raw {
		distinct[b] = true
	}
	if len(distinct) < 16 { // 32 random bytes have ~30 distinct values
		t.Fatalf("signing key %x does not look random", raw)
	}
	if strings.Contains(text, s.ID()) || s.ID() == "" {
		t.Fatalf("signer id %q is empty or part of the secret", s.ID())
	}
	// No temporary files left behind.
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("home holds %d files after creating the key, want 1", len(entries))
	}

	// Loading again reads the same key and creates nothing.
	s2, created, err := auth.LoadOrCreateSigner(path, false)
	if err != nil || created || s2.ID() != s.ID() {
		t.Fatalf("reload: id %q created %v err %v; want id %q, not created", s2.ID(), created, err, s.ID())
	}
	s3, err := auth.LoadSigner(path)
	if err != nil || s3.ID() != s.ID() {
		t.Fatalf("LoadSigner: %v, %v", s3, err)
	}

	// Another home gets another secret.
	other, _, err := auth.LoadOrCreateSigner(filepath.Join(t.TempDir(), "server.key"), false)
	if err != nil || other.ID() == s.ID() {
		t.Fatalf("second home's signer id %q equals the first's (%v)", other.ID(), err)
	}
}

func TestLoadSignerMissing(t *testing.T) {
	t.Parallel()
	_, err := auth.LoadSigner(filepath.Join(t.TempDir(), "server.key"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("LoadSigner(missing) = %v, want an error wrapping os.ErrNotExist", err)
	}
}

func TestSigningKeyModeFixedOnLoad(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "server.key")
	s, _, err := auth.LoadOrCreateSigner(path, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, loosened := range []os.FileMode{0o644, 0o640, 0o604, 0o666} {
		if err := os.Chmod(path, loosened); err != nil {
			t.Fatal(err)
		}
		s2, err := auth.LoadSigner(path)
		if err != nil || s2.ID() != s.ID() {
			t.Fatalf("LoadSigner after chmod %o: %v", loosened, err)
		}
		if m := fileMode(t, path); m != 0o600 {
			t.Fatalf("after loading a %o key the mode is %o, want 0600", loosened, m)
		}
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := auth.LoadOrCreateSigner(path, false); err != nil {
		t.Fatal(err)
	}
	if m := fileMode(t, path); m != 0o600 {
		t.Fatalf("LoadOrCreateSigner left mode %o, want 0600", m)
	}
}

func TestSigningKeyTooShortRefused(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "server.key")
	short := "tooshort-secret\n"
	if err := os.WriteFile(path, []byte(short), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := auth.LoadSigner(path)
	if err == nil || !strings.Contains(err.Error(), "too short") || !strings.Contains(err.Error(), "--reset-key") {
		t.Fatalf("LoadSigner(short key) = %v, want a message saying it is too short and how to fix it", err)
	}
	if strings.Contains(err.Error(), "tooshort-secret") {
		t.Fatalf("error %q echoes the secret", err)
	}
	// Without reset it is not silently replaced either.
	if _, _, err := auth.LoadOrCreateSigner(path, false); err == nil {
		t.Fatal("LoadOrCreateSigner(short key, reset=false) succeeded")
	}
	if data, _ := os.ReadFile(path); string(data) != short {
		t.Fatalf("a refused key file was rewritten: %q", data)
	}
	// Whitespace does not count towards the length.
	padded := "   " + strings.Repeat("k", auth.MinSigningKeyLen-1) + "   \n\n"
	if err := os.WriteFile(path, []byte(padded), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := auth.LoadSigner(path); err == nil {
		t.Fatal("LoadSigner accepted a 31-character key padded with whitespace")
	}
	// --reset-key makes a good one.
	s, created, err := auth.LoadOrCreateSigner(path, true)
	if err != nil || !created {
		t.Fatalf("reset: created %v, %v", created, err)
	}
	if s2, err := auth.LoadSigner(path); err != nil || s2.ID() != s.ID() {
		t.Fatalf("after reset LoadSigner = %v, %v", s2, err)
	}
}

func TestSetSigner(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "server.key")
	for _, bad := range []string{"", "s3cr3tXYZ", strings.Repeat("q", auth.MinSigningKeyLen-1), "  " + strings.Repeat("q", auth.MinSigningKeyLen-1) + "  "} {
		_, err := auth.SetSigner(path, bad)
		if err == nil || !strings.Contains(err.Error(), "--key") || !strings.Contains(err.Error(), "32") {
			t.Fatalf("SetSigner(%q) = %v, want a message naming --key and the 32-character minimum", bad, err)
		}
		if bad != "" && strings.Contains(err.Error(), strings.TrimSpace(bad)) {
			t.Fatalf("error %q echoes the key", err)
		}
		if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("a refused --key was written to disk")
		}
	}

	key := "correct horse battery staple, 32+ chars long"
	s, err := auth.SetSigner(path, key)
	if err != nil {
		t.Fatal(err)
	}
	if m := fileMode(t, path); m != 0o600 {
		t.Fatalf("SetSigner wrote mode %o, want 0600", m)
	}
	loaded, err := auth.LoadSigner(path)
	if err != nil || loaded.ID() != s.ID() {
		t.Fatalf("LoadSigner after SetSigner = %v, %v; want id %q", loaded, err, s.ID())
	}
	if s2, created, err := auth.LoadOrCreateSigner(path, false); err != nil || created || s2.ID() != s.ID() {
		t.Fatalf("LoadOrCreateSigner after SetSigner: %v created=%v %v", s2, created, err)
	}
	// Surrounding whitespace is not part of the key.
	s3, err := auth.SetSigner(path, "\t"+key+"\n")
	if err != nil || s3.ID() != s.ID() {
		t.Fatalf("SetSigner with whitespace: id %v %v, want %q", s3, err, s.ID())
	}
	// Replacing a loosened file leaves it 0600.
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := auth.SetSigner(path, key+"-2"); err != nil {
		t.Fatal(err)
	}
	if m := fileMode(t, path); m != 0o600 {
		t.Fatalf("SetSigner over a 0644 file left mode %o", m)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("%d files in the home, want only server.key", len(entries))
	}

	// A key issued with --key works for a later start without --key.
	h := newHome(t, nil)
	sk, err := auth.SetSigner(h.keyPath, key)
	if err != nil {
		t.Fatal(err)
	}
	issued, _, err := (&auth.Issuer{Signer: sk, Registry: h.reg}).Issue(context.Background(), auth.IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	later, err := auth.LoadSigner(h.keyPath)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.authenticator(later, h.reg).Authenticate(context.Background(), issued); err != nil {
		t.Fatalf("key issued with --key refused after a restart without it: %v", err)
	}
}

func TestResetSigningKeyInvalidatesKeys(t *testing.T) {
	t.Parallel()
	h := newHome(t, nil)
	ctx := context.Background()
	oldKey, _ := h.issue(t, auth.IssueOptions{Label: "old"})
	expiring, _ := h.issue(t, auth.IssueOptions{Label: "old, expiring", Expire: time.Hour})
	if _, err := h.authn.Authenticate(ctx, oldKey); err != nil {
		t.Fatal(err)
	}

	newSigner, created, err := auth.LoadOrCreateSigner(h.keyPath, true)
	if err != nil || !created {
		t.Fatalf("reset: created %v, %v", created, err)
	}
	if newSigner.ID() == h.signer.ID() {
		t.Fatal("reset kept the signing key id")
	}
	if m := fileMode(t, h.keyPath); m != 0o600 {
		t.Fatalf("reset key mode %o", m)
	}
	if loaded, err := auth.LoadSigner(h.keyPath); err != nil || loaded.ID() != newSigner.ID() {
		t.Fatalf("LoadSigner after reset: %v, %v", loaded, err)
	}

	// The restarted server (new Registry, new Authenticator) refuses old keys.
	_, reg := h.openRegistry(t)
	authn := h.authenticator(newSigner, reg)
	for _, key := range []string{oldKey, expiring} {
		_, err := authn.Authenticate(ctx, key)
		wantAuthErr(t, err, auth.ErrInvalidKey, key)
	}
	newIssuer := &auth.Issuer{Signer: newSigner, Registry: reg}
	newKey, nk, err := newIssuer.Issue(ctx, auth.IssueOptions{Label: "new"})
	if err != nil {
		t.Fatal(err)
	}
	if p, err := authn.Authenticate(ctx, newKey); err != nil || p.KeyID != nk.ID {
		t.Fatalf("new key: %+v %v", p, err)
	}
	// And the old server's authenticator does not accept the new key.
	_, err = h.authenticator(h.signer, h.reg).Authenticate(ctx, newKey)
	wantAuthErr(t, err, auth.ErrInvalidKey, newKey)

	keys, err := reg.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		want := auth.StatusInvalid
		if k.ID == nk.ID {
			want = auth.StatusActive
		}
		if st := k.Status(time.Now(), newSigner.ID()); st != want {
			t.Fatalf("key %q status %q, want %q", k.Label, st, want)
		}
	}
	if auth.StatusInvalid != "invalid (signing key reset)" {
		t.Fatalf("StatusInvalid = %q", auth.StatusInvalid)
	}
}

// A symlink where the signing key belongs is refused: neither followed
// (its target used as the key) nor its target's mode changed.
func TestSigningKeySymlinkRefused(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	target := filepath.Join(dir, "elsewhere")
	if err := os.WriteFile(target, []byte(strings.Repeat("k", 64)), 0o644); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "server.key")
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
	if _, err := auth.LoadSigner(path); err == nil || !strings.Contains(err.Error(), "symlink") {
		t.Fatalf("LoadSigner through a symlink: %v", err)
	}
	if _, _, err := auth.LoadOrCreateSigner(path, false); err == nil {
		t.Fatal("LoadOrCreateSigner through a symlink succeeded")
	}
	if fi, _ := os.Stat(target); fi.Mode().Perm() != 0o644 {
		t.Fatalf("the symlink's target was chmod'ed to %o", fi.Mode().Perm())
	}
}
