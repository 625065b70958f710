// Package authtest gives tests of the packages above auth a real key store:
// a SQLite database in a temporary directory, a signing key file and the
// key registry on them, closed when the test ends.
package authtest

import (
	"context"
	"path/filepath"
	"sync"
	"testing"

	"github.com/msb-dev/msb/auth"
	"github.com/msb-dev/msb/auth/audit"
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

// Audit is an audit log in memory (an auth.Auditor): every event is
// written as soon as it is recorded.
type Audit struct {
	mu     sync.Mutex
	events []audit.Event
}

// Record implements auth.Auditor.
func (a *Audit) Record(e audit.Event) <-chan struct{} {
	a.mu.Lock()
	a.events = append(a.events, e)
	a.mu.Unlock()
	return written
}

// written is the closed channel Record returns.
var written = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// Events returns the events recorded so far.
func (a *Audit) Events() []audit.Event {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]audit.Event(nil), a.events...)
}

// Find returns the events whose method is method.
func (a *Audit) Find(method string) []audit.Event {
	var out []audit.Event
	for _, e := range a.Events() {
		if e.Method == method {
			out = append(out, e)
		}
	}
	return out
}
