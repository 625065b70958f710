package storage

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/msb-dev/msb/auth"
	"github.com/msb-dev/msb/auth/ratelimit"
)

var _ auth.KeyStore = (*DB)(nil)

// AddKey implements auth.KeyStore.
func (d *DB) AddKey(ctx context.Context, k auth.Key) error {
	_, err := d.exec(ctx, `INSERT INTO api_keys
		(id, label, namespace, key_prefix, key_hash, signing_key_id, created_at, expires_at,
		 scopes, rate_limit, start_rate_limit, max_uses, uses, parent)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		k.ID, k.Label, k.Namespace, k.Prefix, k.Hash, k.SigningKeyID, k.Created.UnixMilli(), nullTime(k.Expires),
		k.Scopes.String(), k.Rate.String(), k.StartRate.String(), nullInt(k.MaxUses), k.Uses, sql.NullString{String: k.Parent, Valid: k.Parent != ""})
	if err != nil {
		return fmt.Errorf("record API key: %w", err)
	}
	return nil
}

const keyColumns = `id, label, namespace, key_prefix, key_hash, signing_key_id, created_at, expires_at, last_used_at, revoked_at,
	scopes, rate_limit, start_rate_limit, max_uses, uses, replaced_by, parent`

func nullInt(n int64) sql.NullInt64 { return sql.NullInt64{Int64: n, Valid: n > 0} }

type scanner interface{ Scan(...any) error }

func scanKey(s scanner) (auth.Key, error) {
	var k auth.Key
	var created int64
	var expires, lastUsed, revoked, maxUses sql.NullInt64
	var scopes, rate, startRate string
	var replacedBy, parent sql.NullString
	if err := s.Scan(&k.ID, &k.Label, &k.Namespace, &k.Prefix, &k.Hash, &k.SigningKeyID, &created, &expires, &lastUsed, &revoked,
		&scopes, &rate, &startRate, &maxUses, &k.Uses, &replacedBy, &parent); err != nil {
		return auth.Key{}, err
	}
	k.Created = time.UnixMilli(created)
	k.Expires, k.LastUsed, k.Revoked = timeOf(expires), timeOf(lastUsed), timeOf(revoked)
	k.MaxUses, k.ReplacedBy, k.Parent = maxUses.Int64, replacedBy.String, parent.String
	var err error
	if k.Scopes, err = auth.ParseScopes([]string{scopes}); err != nil {
		return auth.Key{}, fmt.Errorf("key %s: scopes: %w", k.ID, err)
	}
	if rate != "" {
		if k.Rate, err = ratelimit.Parse(rate); err != nil {
			return auth.Key{}, fmt.Errorf("key %s: %w", k.ID, err)
		}
	}
	if startRate != "" {
		if k.StartRate, err = ratelimit.Parse(startRate); err != nil {
			return auth.Key{}, fmt.Errorf("key %s: %w", k.ID, err)
		}
	}
	return k, nil
}

func (d *DB) queryKeys(ctx context.Context, q string, args ...any) ([]auth.Key, error) {
	rows, err := d.query(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var keys []auth.Key
	for rows.Next() {
		k, err := scanKey(rows)
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	return keys, rows.Err()
}

// Keys implements auth.KeyStore: every key, oldest first.
func (d *DB) Keys(ctx context.Context) ([]auth.Key, error) {
	keys, err := d.queryKeys(ctx, `SELECT `+keyColumns+` FROM api_keys ORDER BY created_at, id`)
	if err != nil {
		return nil, fmt.Errorf("list API keys: %w", err)
	}
	return keys, nil
}

// KeysWithPrefix implements auth.KeyStore.
func (d *DB) KeysWithPrefix(ctx context.Context, prefix string) ([]auth.Key, error) {
	keys, err := d.queryKeys(ctx, `SELECT `+keyColumns+` FROM api_keys WHERE substr(id, 1, ?) = ? ORDER BY created_at, id`, len(prefix), prefix)
	if err != nil {
		return nil, fmt.Errorf("find API key: %w", err)
	}
	return keys, nil
}

// Key implements auth.KeyStore.
func (d *DB) Key(ctx context.Context, id string) (auth.Key, error) {
	k, err := scanKey(d.queryRow(ctx, `SELECT `+keyColumns+` FROM api_keys WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return auth.Key{}, auth.ErrKeyNotFound
	}
	if err != nil {
		return auth.Key{}, fmt.Errorf("key registry: %w", err)
	}
	return k, nil
}

// RevokeKey implements auth.KeyStore.
func (d *DB) RevokeKey(ctx context.Context, id string, at time.Time) error {
	if _, err := d.exec(ctx, `UPDATE api_keys SET revoked_at = ? WHERE id = ? AND (revoked_at IS NULL OR revoked_at > ?)`,
		at.UnixMilli(), id, at.UnixMilli()); err != nil {
		return fmt.Errorf("revoke API key: %w", err)
	}
	return nil
}

// SetKeyReplacedBy implements auth.KeyStore.
func (d *DB) SetKeyReplacedBy(ctx context.Context, id, by string) error {
	if _, err := d.exec(ctx, `UPDATE api_keys SET replaced_by = ? WHERE id = ?`, by, id); err != nil {
		return fmt.Errorf("record key rotation: %w", err)
	}
	return nil
}

// SetKeyLimits implements auth.KeyStore.
func (d *DB) SetKeyLimits(ctx context.Context, id string, rate, startRate ratelimit.Rate, maxUses int64) error {
	if _, err := d.exec(ctx, `UPDATE api_keys SET rate_limit = ?, start_rate_limit = ?, max_uses = ? WHERE id = ?`,
		rate.String(), startRate.String(), nullInt(maxUses), id); err != nil {
		return fmt.Errorf("set key limits: %w", err)
	}
	return nil
}

// UseKey implements auth.KeyStore: one use, atomically, unless they are spent.
func (d *DB) UseKey(ctx context.Context, id string) (left int64, ok bool, err error) {
	var uses int64
	var maxUses sql.NullInt64
	err = d.queryRow(ctx, `UPDATE api_keys SET uses = uses + 1 WHERE id = ? AND (max_uses IS NULL OR uses < max_uses) RETURNING uses, max_uses`, id).Scan(&uses, &maxUses)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("count key use: %w", err)
	}
	if !maxUses.Valid {
		return 1, true, nil // unlimited: never spent
	}
	return maxUses.Int64 - uses, true, nil
}

// TouchKey implements auth.KeyStore.
func (d *DB) TouchKey(ctx context.Context, id string, lastUsed time.Time, uses int64) error {
	if lastUsed.IsZero() {
		_, err := d.exec(ctx, `UPDATE api_keys SET uses = uses + ? WHERE id = ?`, uses, id)
		return err
	}
	_, err := d.exec(ctx, `UPDATE api_keys SET last_used_at = ?, uses = uses + ? WHERE id = ?`, lastUsed.UnixMilli(), uses, id)
	return err
}
