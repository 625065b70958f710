// Package authtest gives tests of the packages above auth a real key store:
// a SQLite database in a temporary directory, a signing key file and the
// key registry on them, closed when the test ends.
package authtest

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/msb-dev/msb/auth"
	"github.com/msb-dev/msb/storage"
)

// KeyStore returns a real SQLite database in a temporary directory, a
// signing key, and the key registry on that database.
func KeyStore(tb testing.TB) (*storage.DB, *auth.Signer, *auth.Registry) {
	tb.Helper()
	dir := tb.TempDir()
	db, err := storage.Open(context.Background(), filepath.Join(dir, "msb.db"))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	signer, _, err := auth.LoadOrCreateSigner(filepath.Join(dir, "server.key"), false)
	if err != nil {
		tb.Fatal(err)
	}
	reg := auth.NewRegistry(db, filepath.Join(dir, "keys.changed"), nil)
	tb.Cleanup(func() { reg.Close() })
	return db, signer, reg
}
