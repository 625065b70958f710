package storage

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox"
)

var _ sandbox.Store = (*DB)(nil)

// sandboxConfigV1 is how a sandbox's config is stored (the sandboxes.config
// column): a format of its own, versioned, so that renaming a field of the
// domain's sandbox.Config or of an API never changes stored rows. Version
// 0 (rows written before the field existed) has the same shape.
type sandboxConfigV1 struct {
	V         int               `json:"v"`
	Image     string            `json:"image,omitempty"`
	Memory    int               `json:"memory,omitempty"`
	CPUs      int               `json:"cpus,omitempty"`
	Volumes   []string          `json:"volumes,omitempty"` // host:guest[:ro]
	Ports     []string          `json:"ports,omitempty"`   // host:guest
	Envs      []string          `json:"envs,omitempty"`
	DependsOn []string          `json:"depends_on,omitempty"`
	Workdir   string            `json:"workdir,omitempty"`
	Shell     string            `json:"shell,omitempty"`
	Scripts   map[string]string `json:"scripts,omitempty"`
	Exec      string            `json:"exec,omitempty"`
}

const sandboxConfigVersion = 1

func encodeConfig(c sandbox.Config) ([]byte, error) {
	r := sandboxConfigV1{V: sandboxConfigVersion, Image: c.Image, Memory: c.Memory, CPUs: c.CPUs, Envs: c.Envs,
		DependsOn: c.DependsOn, Workdir: c.Workdir, Shell: c.Shell, Scripts: c.Scripts, Exec: c.Exec}
	for _, v := range c.Volumes {
		r.Volumes = append(r.Volumes, v.String())
	}
	for _, p := range c.Ports {
		r.Ports = append(r.Ports, p.String())
	}
	return json.Marshal(r)
}

func decodeConfig(data string) (sandbox.Config, error) {
	var r sandboxConfigV1
	if err := json.Unmarshal([]byte(data), &r); err != nil {
		return sandbox.Config{}, err
	}
	if r.V > sandboxConfigVersion {
		return sandbox.Config{}, fmt.Errorf("stored config has version %d, newer than this msb (%d): upgrade msb", r.V, sandboxConfigVersion)
	}
	c := sandbox.Config{Image: r.Image, Memory: r.Memory, CPUs: r.CPUs, Envs: r.Envs, DependsOn: r.DependsOn,
		Workdir: r.Workdir, Shell: r.Shell, Scripts: r.Scripts, Exec: r.Exec}
	for _, s := range r.Volumes {
		v, err := sandbox.ParseVolume(s)
		if err != nil {
			return sandbox.Config{}, err
		}
		c.Volumes = append(c.Volumes, v)
	}
	for _, s := range r.Ports {
		p, err := sandbox.ParsePort(s)
		if err != nil {
			return sandbox.Config{}, err
		}
		c.Ports = append(c.Ports, p)
	}
	return c, nil
}

// PutSandbox implements sandbox.Store.
func (d *DB) PutSandbox(ctx context.Context, r sandbox.Record) error {
	data, err := encodeConfig(r.Config)
	if err != nil {
		return fmt.Errorf("record sandbox %s: %w", r.ID, err)
	}
	_, err = d.db.ExecContext(ctx, `INSERT INTO sandboxes (namespace, name, config, state, created_at, started_at)
		VALUES (?, ?, ?, ?, ?, ?)
		ON CONFLICT (namespace, name) DO UPDATE SET config = excluded.config, state = excluded.state,
			started_at = excluded.started_at, stopped_at = NULL`,
		r.ID.Namespace(), r.ID.Name(), string(data), r.State, r.Created.UnixMilli(), nullTime(r.Started))
	if err != nil {
		return fmt.Errorf("record sandbox %s: %w", r.ID, err)
	}
	return nil
}

// MarkSandboxStopped implements sandbox.Store.
func (d *DB) MarkSandboxStopped(ctx context.Context, id sandbox.ID, t time.Time) error {
	_, err := d.db.ExecContext(ctx, `UPDATE sandboxes SET state = ?, stopped_at = ? WHERE namespace = ? AND name = ?`,
		sandbox.StateStopped, t.UnixMilli(), id.Namespace(), id.Name())
	if err != nil {
		return fmt.Errorf("record sandbox %s stopped: %w", id, err)
	}
	return nil
}

const sandboxColumns = `namespace, name, config, state, created_at, started_at, stopped_at`

func scanSandbox(sc scanner) (sandbox.Record, error) {
	var r sandbox.Record
	var ns, name, cfg string
	var created int64
	var started, stopped sql.NullInt64
	if err := sc.Scan(&ns, &name, &cfg, &r.State, &created, &started, &stopped); err != nil {
		return sandbox.Record{}, err
	}
	id, err := sandbox.ParseID(ns, name)
	if err != nil {
		return sandbox.Record{}, fmt.Errorf("stored sandbox %s/%s: %w", ns, name, err)
	}
	r.ID = id
	if r.Config, err = decodeConfig(cfg); err != nil {
		return sandbox.Record{}, fmt.Errorf("sandbox %s: stored config: %w", r.ID, err)
	}
	r.Created, r.Started, r.Stopped = time.UnixMilli(created), timeOf(started), timeOf(stopped)
	return r, nil
}

// Sandbox implements sandbox.Store.
func (d *DB) Sandbox(ctx context.Context, id sandbox.ID) (sandbox.Record, error) {
	r, err := scanSandbox(d.db.QueryRowContext(ctx, `SELECT `+sandboxColumns+` FROM sandboxes WHERE namespace = ? AND name = ?`,
		id.Namespace(), id.Name()))
	if errors.Is(err, sql.ErrNoRows) {
		return sandbox.Record{}, errdefs.NotFoundf("sandbox %q not found in namespace %q: start it with sandbox.start and a config", id.Name(), id.Namespace())
	}
	if err != nil {
		return sandbox.Record{}, fmt.Errorf("read sandbox %s: %w", id, err)
	}
	return r, nil
}

// Sandboxes implements sandbox.Store.
func (d *DB) Sandboxes(ctx context.Context, ns string) ([]sandbox.Record, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT `+sandboxColumns+` FROM sandboxes WHERE ? = '*' OR namespace = ? ORDER BY namespace, name`, ns, ns)
	if err != nil {
		return nil, fmt.Errorf("list sandboxes: %w", err)
	}
	defer rows.Close()
	var out []sandbox.Record
	for rows.Next() {
		r, err := scanSandbox(rows)
		if err != nil {
			return nil, fmt.Errorf("list sandboxes: %w", err)
		}
		out = append(out, r)
	}
	return out, rows.Err()
}
