package sandbox

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/msb-dev/msb/errdefs"
)

// Record is what the server remembers of a sandbox, running or stopped.
type Record struct {
	ID      ID
	Config  Config
	State   State
	Created time.Time
	Started time.Time
	Stopped time.Time
}

// Store keeps sandbox records in the state database (schema in config/sqlite).
type Store struct {
	db *sql.DB
}

// NewStore returns a store on db.
func NewStore(db *sql.DB) *Store { return &Store{db: db} }

func nullTime(t time.Time) sql.NullInt64 {
	if t.IsZero() {
		return sql.NullInt64{}
	}
	return sql.NullInt64{Int64: t.UnixMilli(), Valid: true}
}

func timeOf(n sql.NullInt64) time.Time {
	if !n.Valid {
		return time.Time{}
	}
	return time.UnixMilli(n.Int64)
}

// Put records a sandbox as started with cfg at now.
func (s *Store) Put(ctx context.Context, id ID, cfg Config, now time.Time) error {
	data, err := json.Marshal(cfg)
	if err != nil {
		return fmt.Errorf("record sandbox %s: %w", id, err)
	}
	_, err = s.db.ExecContext(ctx, `INSERT INTO sandboxes (namespace, name, config, state, created_at, started_at)
		VALUES (?, ?, ?, ?, ?, ?)
		ON CONFLICT (namespace, name) DO UPDATE SET config = excluded.config, state = excluded.state,
			started_at = excluded.started_at, stopped_at = NULL`,
		id.Namespace, id.Name, string(data), StateRunning, now.UnixMilli(), now.UnixMilli())
	if err != nil {
		return fmt.Errorf("record sandbox %s: %w", id, err)
	}
	return nil
}

// MarkStopped records that the sandbox stopped at now.
func (s *Store) MarkStopped(ctx context.Context, id ID, now time.Time) error {
	_, err := s.db.ExecContext(ctx, `UPDATE sandboxes SET state = ?, stopped_at = ? WHERE namespace = ? AND name = ?`,
		StateStopped, now.UnixMilli(), id.Namespace, id.Name)
	if err != nil {
		return fmt.Errorf("record sandbox %s stopped: %w", id, err)
	}
	return nil
}

const recordColumns = `namespace, name, config, state, created_at, started_at, stopped_at`

func scanRecord(sc interface{ Scan(...any) error }) (Record, error) {
	var r Record
	var cfg string
	var created int64
	var started, stopped sql.NullInt64
	if err := sc.Scan(&r.ID.Namespace, &r.ID.Name, &cfg, &r.State, &created, &started, &stopped); err != nil {
		return Record{}, err
	}
	if err := json.Unmarshal([]byte(cfg), &r.Config); err != nil {
		return Record{}, fmt.Errorf("sandbox %s: stored config: %w", r.ID, err)
	}
	r.Created, r.Started, r.Stopped = time.UnixMilli(created), timeOf(started), timeOf(stopped)
	return r, nil
}

// Get returns the record of id. Errors wrap errdefs.ErrNotFound when there is none.
func (s *Store) Get(ctx context.Context, id ID) (Record, error) {
	r, err := scanRecord(s.db.QueryRowContext(ctx, `SELECT `+recordColumns+` FROM sandboxes WHERE namespace = ? AND name = ?`,
		id.Namespace, id.Name))
	if errors.Is(err, sql.ErrNoRows) {
		return Record{}, errdefs.NotFoundf("sandbox %q not found in namespace %q: start it with sandbox.start and a config", id.Name, id.Namespace)
	}
	if err != nil {
		return Record{}, fmt.Errorf("read sandbox %s: %w", id, err)
	}
	return r, nil
}

// List returns the records of namespace ns ("*": every namespace), by namespace and name.
func (s *Store) List(ctx context.Context, ns string) ([]Record, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+recordColumns+` FROM sandboxes WHERE ? = '*' OR namespace = ? ORDER BY namespace, name`, ns, ns)
	if err != nil {
		return nil, fmt.Errorf("list sandboxes: %w", err)
	}
	defer rows.Close()
	var out []Record
	for rows.Next() {
		r, err := scanRecord(rows)
		if err != nil {
			return nil, fmt.Errorf("list sandboxes: %w", err)
		}
		out = append(out, r)
	}
	return out, rows.Err()
}
