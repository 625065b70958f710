package storage

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/msb-dev/msb/auth/audit"
)

var _ audit.Store = (*DB)(nil)

func clip(s string) string {
	if len(s) > audit.MaxField {
		return s[:audit.MaxField]
	}
	return s
}

// AppendEvents implements audit.Store: the events in one transaction.
func (d *DB) AppendEvents(ctx context.Context, events ...audit.Event) error {
	// Prepared before the transaction takes a connection of its own.
	insert, err := d.prepared(ctx, `INSERT INTO audit_events
		(time, key_id, key_label, key_namespace, namespace, method, sandbox, outcome, code, detail, remote)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
	if err != nil {
		return fmt.Errorf("append audit events: %w", err)
	}
	tx, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("append audit events: %w", err)
	}
	defer tx.Rollback()
	stmt := tx.StmtContext(ctx, insert)
	defer stmt.Close()
	for _, e := range events {
		if _, err := stmt.ExecContext(ctx, e.Time.UnixMilli(), clip(e.KeyID), clip(e.KeyLabel), clip(e.KeyNamespace), clip(e.Namespace), clip(e.Method),
			clip(e.Sandbox), clip(e.Outcome), e.Code, clip(e.Detail), clip(e.Remote)); err != nil {
			return fmt.Errorf("append audit events: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("append audit events: %w", err)
	}
	return nil
}

// PruneEvents implements audit.Store.
func (d *DB) PruneEvents(ctx context.Context, before time.Time) (int64, error) {
	res, err := d.exec(ctx, `DELETE FROM audit_events WHERE time < ?`, before.UnixMilli())
	if err != nil {
		return 0, fmt.Errorf("prune audit events: %w", err)
	}
	return res.RowsAffected()
}

// ListEvents implements audit.Store.
func (d *DB) ListEvents(ctx context.Context, f audit.Filter) ([]audit.Event, error) {
	var where []string
	var args []any
	if f.KeyID != "" {
		where = append(where, `substr(key_id, 1, ?) = ?`)
		args = append(args, len(f.KeyID), f.KeyID)
	}
	if f.Namespace != "" {
		where = append(where, `namespace = ?`)
		args = append(args, f.Namespace)
	}
	if !f.Since.IsZero() {
		where = append(where, `time >= ?`)
		args = append(args, f.Since.UnixMilli())
	}
	if f.Visible != "" && f.Visible != "*" {
		where = append(where, `namespace = ? AND key_namespace IN (?, '*')`)
		args = append(args, f.Visible, f.Visible)
	}
	q := `SELECT time, key_id, key_label, key_namespace, namespace, method, sandbox, outcome, code, detail, remote FROM audit_events`
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, ` AND `)
	}
	limit := f.Limit
	if limit <= 0 {
		limit = 1000
	}
	q += ` ORDER BY time DESC, id DESC LIMIT ?`
	args = append(args, limit)
	rows, err := d.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list audit events: %w", err)
	}
	defer rows.Close()
	out := []audit.Event{}
	for rows.Next() {
		var e audit.Event
		var t int64
		if err := rows.Scan(&t, &e.KeyID, &e.KeyLabel, &e.KeyNamespace, &e.Namespace, &e.Method, &e.Sandbox, &e.Outcome, &e.Code, &e.Detail, &e.Remote); err != nil {
			return nil, fmt.Errorf("list audit events: %w", err)
		}
		e.Time = time.UnixMilli(t).UTC()
		out = append(out, e)
	}
	return out, rows.Err()
}
