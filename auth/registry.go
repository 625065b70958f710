package auth

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/msb-dev/msb/auth/ratelimit"
	"github.com/msb-dev/msb/errdefs"
)

// Key is one API key as the registry records it. The key text itself is
// never stored: only its hash and its first characters.
type Key struct {
	ID           string
	Label        string
	Namespace    string
	Prefix       string // first PrefixLen characters of the key, for display
	SigningKeyID string
	Created      time.Time
	Expires      time.Time // zero: never
	LastUsed     time.Time // zero: never
	// Revoked is when the key stops working: zero if never; in the future
	// while a rotated key's grace period runs.
	Revoked    time.Time
	Scopes     Scopes
	Rate       ratelimit.Rate // zero: the server's default
	StartRate  ratelimit.Rate // sandbox.start's bucket; zero: the server's default
	MaxUses    int64          // 0: unlimited
	Uses       int64          // calls made, as recorded so far
	ReplacedBy string         // the key that replaced this one by rotation
	// Parent is the key this one was made from ("": by the operator):
	// its calls count against the parent's rate and uses too.
	Parent string
	// Hash is the hex SHA-256 of the key text: how the registry
	// recognises a key without storing it.
	Hash string
}

// PrefixLen is how many leading characters of a key the registry keeps.
const PrefixLen = 12

// Key states, as `msb server keys list` shows them.
const (
	StatusActive  = "active"
	StatusExpired = "expired"
	StatusRevoked = "revoked"
	StatusInvalid = "invalid (signing key reset)"
	StatusSpent   = "usage limit reached"
	// StatusRotated is a key replaced by rotation that keeps working
	// until its grace period ends (Revoked).
	StatusRotated = "rotated"
)

// Status says whether the key still works at now with the given signing key.
func (k Key) Status(now time.Time, signingKeyID string) string {
	switch {
	case k.RevokedAt(now):
		return StatusRevoked
	case k.SigningKeyID != signingKeyID:
		return StatusInvalid
	case !k.Expires.IsZero() && !now.Before(k.Expires):
		return StatusExpired
	case k.MaxUses > 0 && k.Uses >= k.MaxUses:
		return StatusSpent
	case !k.Revoked.IsZero():
		return StatusRotated
	}
	return StatusActive
}

// RevokedAt reports whether the key is revoked at now (a rotated key is not
// until its grace period ends).
func (k Key) RevokedAt(now time.Time) bool {
	return !k.Revoked.IsZero() && !now.Before(k.Revoked)
}

// hashKey is how the registry recognises a key without storing it.
func hashKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

// lastUsedEvery bounds how often a key's last-used time is written.
const lastUsedEvery = time.Minute

// KeyStore is where the registry keeps keys; storage.DB is the real one
// (SQLite). Methods return errors wrapping ErrKeyNotFound for an unknown id.
type KeyStore interface {
	// AddKey records a newly issued key.
	AddKey(ctx context.Context, k Key) error
	// Key returns the key with id.
	Key(ctx context.Context, id string) (Key, error)
	// KeysWithPrefix returns the keys whose id starts with prefix.
	KeysWithPrefix(ctx context.Context, prefix string) ([]Key, error)
	// Keys returns every key, oldest first.
	Keys(ctx context.Context) ([]Key, error)
	// RevokeKey makes key id stop working at t, unless it stops earlier.
	RevokeKey(ctx context.Context, id string, t time.Time) error
	// SetKeyReplacedBy records that key id was rotated to key by.
	SetKeyReplacedBy(ctx context.Context, id, by string) error
	// SetKeyLimits sets a key's rates (zero: the server's) and max uses (0: unlimited).
	SetKeyLimits(ctx context.Context, id string, rate, startRate ratelimit.Rate, maxUses int64) error
	// UseKey counts one use of a key with a usage limit, atomically, and
	// returns how many it has left then (as its record says now); it
	// reports false (counting nothing) when its uses are spent.
	UseKey(ctx context.Context, id string) (left int64, ok bool, err error)
	// TouchKey adds uses counted in memory and, unless zero, sets the
	// last-used time.
	TouchKey(ctx context.Context, id string, lastUsed time.Time, uses int64) error
}

// Registry records API keys in a KeyStore. Lookups on the request path are
// served from memory. Every change to a key's validity (revocation) is also
// announced by appending to a small change file next to the database; before
// each lookup the registry stats that file (one syscall, no lock shared with
// SQLite) and drops its cache when the file's identity or size moved. So a
// revocation made by another process (`msb server keys revoke`) takes effect
// on the very next request, without a database query per call. (SQLite's
// PRAGMA data_version does the same job but costs a read transaction per
// request: it halved the throughput of a trivial call.)
type Registry struct {
	store   KeyStore
	now     func() time.Time
	changes string // the change file

	mu   sync.RWMutex
	seen fileSig // change file as of the last invalidation
	// watch is the change file as last opened by path: an fstat of it
	// costs no path lookup. It is reopened when a look by path finds
	// another file there (after announce replaced it).
	watch    *os.File
	gen      uint64               // bumped on every invalidation
	cache    map[string]Key       // by id
	lastSeen map[string]time.Time // last-used writes, per key
	pending  sync.WaitGroup       // last-used writes in flight
	uses     sync.Map             // key id -> *atomic.Int64: uses not yet written
	spent    map[string]bool      // keys whose uses ran out since the last invalidation
}

// fileSig identifies a version of the change file: appends grow it, and it
// is only ever replaced by a shorter file.
type fileSig struct {
	ino  uint64
	size int64
}

// NewRegistry returns a registry on store. changes is
// the change file shared by every process using db (created on demand); now
// is the clock, nil meaning time.Now.
func NewRegistry(store KeyStore, changes string, now func() time.Time) *Registry {
	if now == nil {
		now = time.Now
	}
	// With the file there from the start, lookups can watch it by
	// descriptor at once (errors surface when announce writes it).
	if f, err := os.OpenFile(changes, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600); err == nil {
		f.Close()
	}
	return &Registry{store: store, now: now, changes: changes, seen: fileSig{ino: ^uint64(0)},
		cache: map[string]Key{}, lastSeen: map[string]time.Time{}, spent: map[string]bool{}}
}

// Close waits for pending last-used writes. It does not close the database.
func (r *Registry) Close() error {
	r.pending.Wait()
	r.flushUses(context.Background())
	r.mu.Lock()
	if r.watch != nil {
		r.watch.Close()
		r.watch = nil
	}
	r.mu.Unlock()
	return nil
}

// Add records a newly issued key.
func (r *Registry) Add(ctx context.Context, k Key) error { return r.store.AddKey(ctx, k) }

// List returns every key, oldest first.
func (r *Registry) List(ctx context.Context) ([]Key, error) { return r.store.Keys(ctx) }

// Find returns the key with id, or with a unique prefix of it (as `keys
// list` shows). Errors wrap ErrKeyNotFound when none matches.
func (r *Registry) Find(ctx context.Context, id string) (Key, error) {
	return r.findIn(ctx, id, nil)
}

// findIn is Find among the keys that in accepts (nil: all): a caller
// limited to some keys never learns, even by a prefix, of the others.
func (r *Registry) findIn(ctx context.Context, id string, in func(Key) bool) (Key, error) {
	if id == "" {
		return Key{}, fmt.Errorf("%w: give the key id shown by `msb server keys list`", ErrKeyNotFound)
	}
	keys, err := r.store.KeysWithPrefix(ctx, id)
	if err != nil {
		return Key{}, err
	}
	var matches []Key
	for _, k := range keys {
		if in == nil || in(k) {
			matches = append(matches, k)
		}
	}
	switch len(matches) {
	case 0:
		return Key{}, fmt.Errorf("key %s: %w (see `msb server keys list`)", quoteID(id), ErrKeyNotFound)
	case 1:
		return matches[0], nil
	}
	return Key{}, fmt.Errorf("%w: %d keys start with %s: give more of the id", errdefs.ErrInvalid, len(matches), quoteID(id))
}

func quoteID(id string) string {
	if len(id) > 32 {
		return strconv.Quote(id[:32]) + "..."
	}
	return strconv.Quote(id)
}

// Revoke revokes the key with id (or a unique prefix of it, as `keys list`
// shows) at once. ErrKeyNotFound if none matches. Revoking twice is not an
// error; revoking a rotated key in its grace period ends the grace.
func (r *Registry) Revoke(ctx context.Context, id string) (Key, error) {
	k, err := r.Find(ctx, id)
	if err != nil {
		return Key{}, fmt.Errorf("revoke: %w", err)
	}
	return r.revokeAt(ctx, k, r.now())
}

// revokeAt makes k stop working at t, unless it already stops earlier.
func (r *Registry) revokeAt(ctx context.Context, k Key, t time.Time) (Key, error) {
	if !k.Revoked.IsZero() && !k.Revoked.After(t) {
		return k, nil
	}
	k.Revoked = t
	if err := r.store.RevokeKey(ctx, k.ID, t); err != nil {
		return Key{}, err
	}
	if err := r.announce(); err != nil {
		return Key{}, err
	}
	return k, nil
}

// LimitChange changes the limits of a key; nil fields stay as they are.
type LimitChange struct {
	Rate      *ratelimit.Rate // zero Rate: the server's default
	StartRate *ratelimit.Rate
	MaxUses   *int64 // 0: unlimited
}

// SetLimits changes the limits of the key with id (or a unique prefix) and
// returns it as changed; a running server applies them on its next call.
// Errors wrap ErrKeyNotFound or errdefs.ErrInvalid.
func (r *Registry) SetLimits(ctx context.Context, id string, l LimitChange) (Key, error) {
	k, err := r.Find(ctx, id)
	if err != nil {
		return Key{}, err
	}
	if l.MaxUses != nil && *l.MaxUses < 0 {
		return Key{}, fmt.Errorf("%w: max uses must be 0 (unlimited) or more", errdefs.ErrInvalid)
	}
	if l.Rate != nil {
		k.Rate = *l.Rate
	}
	if l.StartRate != nil {
		k.StartRate = *l.StartRate
	}
	if l.MaxUses != nil {
		k.MaxUses = *l.MaxUses
	}
	r.flushUses(ctx)
	if err := r.store.SetKeyLimits(ctx, k.ID, k.Rate, k.StartRate, k.MaxUses); err != nil {
		return Key{}, err
	}
	if err := r.announce(); err != nil {
		return Key{}, err
	}
	return r.Find(ctx, k.ID)
}

// Use counts one call made with key k. For a key with a usage limit the
// count is written at once, atomically, so the limit holds across restarts
// and across processes; it returns ErrUsageLimit once the uses are spent.
// Other keys are counted in memory and written with their last-used time.
func (r *Registry) Use(ctx context.Context, id string, maxUses int64) error {
	if maxUses <= 0 {
		c, ok := r.uses.Load(id)
		if !ok {
			c, _ = r.uses.LoadOrStore(id, new(atomic.Int64))
		}
		c.(*atomic.Int64).Add(1)
		return nil
	}
	r.mu.RLock()
	gen := r.gen
	r.mu.RUnlock()
	left, ok, err := r.store.UseKey(ctx, id)
	if err != nil {
		return err
	}
	if !ok || left <= 0 {
		// Spent: the next call is refused at authentication. Unless the
		// limits changed meanwhile (keys limit): then the record decides.
		r.mu.Lock()
		if r.gen == gen {
			r.spent[id] = true
		}
		r.mu.Unlock()
	}
	if !ok {
		return ErrUsageLimit
	}
	return nil
}

// flushUses writes the uses counted in memory.
func (r *Registry) flushUses(ctx context.Context) {
	r.uses.Range(func(id, c any) bool {
		if n := c.(*atomic.Int64).Swap(0); n > 0 {
			if err := r.store.TouchKey(ctx, id.(string), time.Time{}, n); err != nil {
				slog.Warn("record key uses", "key_id", id, "err", err)
			}
		}
		return true
	})
}

// maxChangeFile is the size past which the change file starts over.
const maxChangeFile = 64 << 10

// announce tells every registry on this database that key validity changed.
func (r *Registry) announce() error {
	fi, err := os.Stat(r.changes)
	if err == nil && fi.Size() > maxChangeFile {
		// Start over with a new, shorter file: a new inode and a smaller
		// size. The old file grows once more first, so that registries
		// watching it through an open descriptor notice, look by path, and
		// find the new one.
		if f, err := os.OpenFile(r.changes, os.O_WRONLY|os.O_APPEND, 0o600); err == nil {
			_, err = fmt.Fprintf(f, "%d replaced\n", r.now().UnixNano())
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("announce key change: %w", err)
			}
		}
		tmp := r.changes + ".tmp"
		if err := os.WriteFile(tmp, []byte("reset\n"), 0o600); err != nil {
			return fmt.Errorf("announce key change: %w", err)
		}
		if err := os.Rename(tmp, r.changes); err != nil {
			return fmt.Errorf("announce key change: %w", err)
		}
		return nil
	}
	f, err := os.OpenFile(r.changes, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("announce key change: %w", err)
	}
	_, err = fmt.Fprintf(f, "%d\n", r.now().UnixNano())
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("announce key change: %w", err)
	}
	return nil
}

// checkChanges drops the cache if the change file moved since the last look.
func (r *Registry) checkChanges() {
	var st syscall.Stat_t
	r.mu.RLock()
	fast := r.watch != nil && syscall.Fstat(int(r.watch.Fd()), &st) == nil && st.Nlink > 0 && (fileSig{ino: st.Ino, size: st.Size}) == r.seen
	r.mu.RUnlock()
	if fast {
		return
	}
	// The watched file changed, or none is watched yet: look by path,
	// which also finds a file that replaced it, and watch that one.
	var sig fileSig
	if err := syscall.Stat(r.changes, &st); err == nil {
		sig = fileSig{ino: st.Ino, size: st.Size}
	}
	if sig.ino == 0 {
		r.mu.RLock()
		same := sig == r.seen // still no file
		r.mu.RUnlock()
		if same {
			return
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if sig.ino != 0 && (r.watch == nil || syscall.Fstat(int(r.watch.Fd()), &st) != nil || st.Ino != sig.ino) {
		if f, err := os.Open(r.changes); err == nil {
			if r.watch != nil {
				r.watch.Close()
			}
			r.watch = f
		}
	}
	if sig != r.seen {
		clear(r.cache)
		clear(r.spent)
		r.gen++
		r.seen = sig
	}
}

// lookup returns the key with id, from memory unless the database changed.
func (r *Registry) lookup(ctx context.Context, id string) (Key, error) {
	r.checkChanges()
	r.mu.RLock()
	k, ok := r.cache[id]
	gen := r.gen
	r.mu.RUnlock()
	if ok {
		return k, nil
	}
	k, err := r.store.Key(ctx, id)
	if err != nil {
		return Key{}, err
	}
	r.mu.Lock()
	// A row read before an invalidation may be stale: cache only if none happened.
	if r.gen == gen {
		r.cache[id] = k
	}
	r.mu.Unlock()
	return k, nil
}

// isSpent reports whether k has no uses left, as far as this registry
// knows: from its record, or from a use refused since.
func (r *Registry) isSpent(k Key) bool {
	if k.MaxUses <= 0 {
		return false
	}
	if k.Uses >= k.MaxUses {
		return true
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.spent[k.ID]
}

// touch records that key id was used, at most once per lastUsedEvery, off
// the request path.
func (r *Registry) touch(id string) {
	now := r.now()
	r.mu.RLock()
	last, ok := r.lastSeen[id]
	r.mu.RUnlock()
	if ok && now.Sub(last) < lastUsedEvery {
		return
	}
	r.mu.Lock()
	if last, ok := r.lastSeen[id]; ok && now.Sub(last) < lastUsedEvery {
		r.mu.Unlock()
		return
	}
	r.lastSeen[id] = now
	r.pending.Add(1)
	r.mu.Unlock()
	go func() {
		defer r.pending.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var n int64
		if c, ok := r.uses.Load(id); ok {
			n = c.(*atomic.Int64).Swap(0)
		}
		if err := r.store.TouchKey(ctx, id, now, n); err != nil {
			slog.Warn("record key use", "key_id", id, "err", err)
		}
	}()
}
