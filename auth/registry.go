package auth

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
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
	Revoked      time.Time // zero: not revoked
	hash         string
}

// PrefixLen is how many leading characters of a key the registry keeps.
const PrefixLen = 12

// Key states, as `msb server keys list` shows them.
const (
	StatusActive  = "active"
	StatusExpired = "expired"
	StatusRevoked = "revoked"
	StatusInvalid = "invalid (signing key reset)"
)

// Status says whether the key still works at now with the given signing key.
func (k Key) Status(now time.Time, signingKeyID string) string {
	switch {
	case !k.Revoked.IsZero():
		return StatusRevoked
	case k.SigningKeyID != signingKeyID:
		return StatusInvalid
	case !k.Expires.IsZero() && !now.Before(k.Expires):
		return StatusExpired
	}
	return StatusActive
}

// hashKey is how the registry recognises a key without storing it.
func hashKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

// lastUsedEvery bounds how often a key's last-used time is written.
const lastUsedEvery = time.Minute

// Registry records API keys in SQLite. Lookups on the request path are
// served from memory; the cache is dropped whenever SQLite's data_version
// says another connection (another msb process, such as `msb server keys
// revoke`, or this one) committed a change, so a revocation takes effect on
// the next request without a query per call.
type Registry struct {
	db  *sql.DB
	now func() time.Time

	mu       sync.Mutex
	watch    *sql.Conn // dedicated: data_version is per connection
	version  int64
	cache    map[string]Key
	lastSeen map[string]time.Time // last-used writes, per key
}

// NewRegistry returns a registry on db (opened by config/sqlite). now is the
// clock; nil means time.Now.
func NewRegistry(db *sql.DB, now func() time.Time) *Registry {
	if now == nil {
		now = time.Now
	}
	return &Registry{db: db, now: now, cache: map[string]Key{}, lastSeen: map[string]time.Time{}}
}

// Close releases the registry's dedicated connection.
func (r *Registry) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.watch != nil {
		err := r.watch.Close()
		r.watch = nil
		return err
	}
	return nil
}

func ms(t time.Time) sql.NullInt64 {
	if t.IsZero() {
		return sql.NullInt64{}
	}
	return sql.NullInt64{Int64: t.UnixMilli(), Valid: true}
}

func fromMS(n sql.NullInt64) time.Time {
	if !n.Valid {
		return time.Time{}
	}
	return time.UnixMilli(n.Int64)
}

// Add records a newly issued key.
func (r *Registry) Add(ctx context.Context, k Key) error {
	_, err := r.db.ExecContext(ctx, `INSERT INTO api_keys
		(id, label, namespace, key_prefix, key_hash, signing_key_id, created_at, expires_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
		k.ID, k.Label, k.Namespace, k.Prefix, k.hash, k.SigningKeyID, k.Created.UnixMilli(), ms(k.Expires))
	if err != nil {
		return fmt.Errorf("record API key: %w", err)
	}
	return nil
}

const keyColumns = `id, label, namespace, key_prefix, key_hash, signing_key_id, created_at, expires_at, last_used_at, revoked_at`

type scanner interface{ Scan(...any) error }

func scanKey(s scanner) (Key, error) {
	var k Key
	var created int64
	var expires, lastUsed, revoked sql.NullInt64
	if err := s.Scan(&k.ID, &k.Label, &k.Namespace, &k.Prefix, &k.hash, &k.SigningKeyID, &created, &expires, &lastUsed, &revoked); err != nil {
		return Key{}, err
	}
	k.Created = time.UnixMilli(created)
	k.Expires, k.LastUsed, k.Revoked = fromMS(expires), fromMS(lastUsed), fromMS(revoked)
	return k, nil
}

// List returns every key, oldest first.
func (r *Registry) List(ctx context.Context) ([]Key, error) {
	rows, err := r.db.QueryContext(ctx, `SELECT `+keyColumns+` FROM api_keys ORDER BY created_at, id`)
	if err != nil {
		return nil, fmt.Errorf("list API keys: %w", err)
	}
	defer rows.Close()
	var keys []Key
	for rows.Next() {
		k, err := scanKey(rows)
		if err != nil {
			return nil, fmt.Errorf("list API keys: %w", err)
		}
		keys = append(keys, k)
	}
	return keys, rows.Err()
}

// Revoke revokes the key with id (or a unique prefix of it, as `keys list`
// shows). ErrKeyNotFound if none matches. Revoking twice is not an error.
func (r *Registry) Revoke(ctx context.Context, id string) (Key, error) {
	if id == "" {
		return Key{}, fmt.Errorf("revoke: %w: give the key id shown by `msb server keys list`", ErrKeyNotFound)
	}
	rows, err := r.db.QueryContext(ctx, `SELECT `+keyColumns+` FROM api_keys WHERE substr(id, 1, ?) = ?`, len(id), id)
	if err != nil {
		return Key{}, fmt.Errorf("revoke API key: %w", err)
	}
	var matches []Key
	for rows.Next() {
		k, err := scanKey(rows)
		if err != nil {
			rows.Close()
			return Key{}, fmt.Errorf("revoke API key: %w", err)
		}
		matches = append(matches, k)
	}
	rows.Close()
	switch len(matches) {
	case 0:
		return Key{}, fmt.Errorf("revoke %q: %w (see `msb server keys list`)", id, ErrKeyNotFound)
	case 1:
	default:
		return Key{}, fmt.Errorf("revoke %q: %d keys start with it: give more of the id", id, len(matches))
	}
	k := matches[0]
	if k.Revoked.IsZero() {
		k.Revoked = r.now()
		if _, err := r.db.ExecContext(ctx, `UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL`, k.Revoked.UnixMilli(), k.ID); err != nil {
			return Key{}, fmt.Errorf("revoke API key: %w", err)
		}
	}
	return k, nil
}

// lookup returns the key with id, from memory unless the database changed.
func (r *Registry) lookup(ctx context.Context, id string) (Key, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.watch == nil {
		c, err := r.db.Conn(ctx)
		if err != nil {
			return Key{}, fmt.Errorf("key registry: %w", err)
		}
		r.watch = c
		r.version = -1
	}
	var v int64
	if err := r.watch.QueryRowContext(ctx, `PRAGMA data_version`).Scan(&v); err != nil {
		r.watch.Close()
		r.watch = nil
		return Key{}, fmt.Errorf("key registry: %w", err)
	}
	if v != r.version {
		clear(r.cache)
		r.version = v
	}
	if k, ok := r.cache[id]; ok {
		return k, nil
	}
	k, err := scanKey(r.watch.QueryRowContext(ctx, `SELECT `+keyColumns+` FROM api_keys WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return Key{}, ErrKeyNotFound
	}
	if err != nil {
		return Key{}, fmt.Errorf("key registry: %w", err)
	}
	r.cache[id] = k
	return k, nil
}

// touch records that key id was used, at most once per lastUsedEvery, off
// the request path.
func (r *Registry) touch(id string) {
	now := r.now()
	r.mu.Lock()
	if last, ok := r.lastSeen[id]; ok && now.Sub(last) < lastUsedEvery {
		r.mu.Unlock()
		return
	}
	r.lastSeen[id] = now
	r.mu.Unlock()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := r.db.ExecContext(ctx, `UPDATE api_keys SET last_used_at = ? WHERE id = ?`, now.UnixMilli(), id); err != nil {
			slog.Warn("record key use", "key_id", id, "err", err)
		}
	}()
}
