package auth_test

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/msb-dev/msb/auth"
	"github.com/msb-dev/msb/storage"
)

// A database made before scopes, limits and checksums (migration 0001 only),
// holding a key issued then, is migrated on open, and the key keeps working
// with every scope and no limits.
func TestKeyFromBeforeScopesSurvivesMigration(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	h := &home{keyPath: filepath.Join(dir, "server.key"), dbPath: filepath.Join(dir, "msb.db"), changes: filepath.Join(dir, "keys.changed")}
	signer, _, err := auth.LoadOrCreateSigner(h.keyPath, false)
	if err != nil {
		t.Fatal(err)
	}

	// The database as the first release left it.
	init, err := os.ReadFile("../storage/migrations/0001_init.sql")
	if err != nil {
		t.Fatal(err)
	}
	old, err := sql.Open("sqlite", "file:"+h.dbPath)
	if err != nil {
		t.Fatal(err)
	}
	const id = "0123456789abcdef01234567"
	issued := time.Now().Add(-time.Hour).Truncate(time.Second)
	legacy := rawToken(t, map[string]any{"alg": "HS256", "typ": "JWT"},
		map[string]any{"iat": issued.Unix(), "namespace": "team-a", "jti": id}, h.secret(t))
	sum := sha256.Sum256([]byte(legacy))
	for _, stmt := range []string{
		`CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY)`,
		string(init),
		`INSERT INTO schema_migrations (version) VALUES (1)`,
	} {
		if _, err := old.ExecContext(ctx, stmt); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := old.ExecContext(ctx, `INSERT INTO api_keys (id, label, namespace, key_prefix, key_hash, signing_key_id, created_at)
		VALUES (?, 'old', 'team-a', ?, ?, ?, ?)`, id, legacy[:auth.PrefixLen], hex.EncodeToString(sum[:]), signer.ID(), issued.UnixMilli()); err != nil {
		t.Fatal(err)
	}
	old.Close()

	db, err := storage.Open(ctx, h.dbPath) // applies 0002 and later
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	reg := auth.NewRegistry(db, h.changes, nil)
	defer reg.Close()
	p, err := (&auth.Authenticator{Signer: signer, Registry: reg}).Authenticate(ctx, legacy)
	if err != nil || p.KeyID != id || p.Namespace != "team-a" || p.Scopes != auth.AllScopes || p.MaxUses != 0 || !p.Rate.IsZero() {
		t.Fatalf("key from before the migration: %+v, %v", p, err)
	}
	keys, err := reg.List(ctx)
	if err != nil || len(keys) != 1 || keys[0].Status(time.Now(), signer.ID()) != auth.StatusActive || keys[0].Scopes != auth.AllScopes {
		t.Fatalf("registry after the migration: %+v, %v", keys, err)
	}
}
