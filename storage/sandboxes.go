package storage

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox"
)

var _ sandbox.Store = (*DB)(nil)

// sandboxConfigV1 is how a sandbox's config is stored (the sandboxes.config
// column): a format of its own, versioned, so that renaming a field of the
// domain's sandbox.Config or of an API never changes stored rows. Version
// 0 (rows written before the field existed) has the same shape; version 2
// added the fields of the v1 API, absent from older rows; version 3 the
// network (absent: the namespace's default, as before it existed).
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
	// Version 2.
	Command     []string          `json:"command,omitempty"`
	User        string            `json:"user,omitempty"`
	Rlimits     []rlimitV2        `json:"rlimits,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Ephemeral   bool              `json:"ephemeral,omitempty"`
	MaxDuration int64             `json:"max_duration_ms,omitempty"`
	IdleTimeout int64             `json:"idle_timeout_ms,omitempty"`
	Tmpfs       []tmpfsV2         `json:"tmpfs,omitempty"`
	// Version 3.
	Network *networkV3 `json:"network,omitempty"`
	// Version 4.
	Disk int `json:"disk_mib,omitempty"`
}

type tmpfsV2 struct {
	Guest   string `json:"guest"`
	SizeMiB int    `json:"size_mib,omitempty"`
}

// networkV3 is a sandbox's network config; its rules are kept in the
// text form of network.ParseTarget.
type networkV3 struct {
	Mode           string   `json:"mode"`
	Allow          []string `json:"allow,omitempty"`
	Deny           []string `json:"deny,omitempty"`
	Strict         bool     `json:"strict,omitempty"`
	MaxConnections int      `json:"max_connections,omitempty"`
	MaxBandwidth   int64    `json:"max_bandwidth,omitempty"`
}

type rlimitV2 struct {
	Resource string `json:"resource"`
	Soft     uint64 `json:"soft"`
	Hard     uint64 `json:"hard"`
}

const sandboxConfigVersion = 4

func encodeConfig(c sandbox.Config) ([]byte, error) {
	r := sandboxConfigV1{V: sandboxConfigVersion, Image: c.Image, Memory: c.Memory, CPUs: c.CPUs, Disk: c.Disk, Envs: c.Envs,
		DependsOn: c.DependsOn, Workdir: c.Workdir, Shell: c.Shell, Scripts: c.Scripts, Exec: c.Exec,
		Command: c.Command, User: c.User, Labels: c.Labels, Ephemeral: c.Ephemeral,
		MaxDuration: c.MaxDuration.Milliseconds(), IdleTimeout: c.IdleTimeout.Milliseconds()}
	for _, l := range c.Rlimits {
		r.Rlimits = append(r.Rlimits, rlimitV2{l.Resource, l.Soft, l.Hard})
	}
	for _, t := range c.Tmpfs {
		r.Tmpfs = append(r.Tmpfs, tmpfsV2{t.Guest, t.SizeMiB})
	}
	if n := c.Network; n.Mode != sandbox.NetworkDefault {
		r.Network = &networkV3{Mode: string(n.Mode), Allow: n.Allow, Deny: n.Deny, Strict: n.Strict,
			MaxConnections: n.MaxConnections, MaxBandwidth: n.MaxBandwidth}
	}
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
	c := sandbox.Config{Image: r.Image, Memory: r.Memory, CPUs: r.CPUs, Disk: r.Disk, Envs: r.Envs, DependsOn: r.DependsOn,
		Workdir: r.Workdir, Shell: r.Shell, Scripts: r.Scripts, Exec: r.Exec,
		Command: r.Command, User: r.User, Labels: r.Labels}
	c.Ephemeral = r.Ephemeral
	c.MaxDuration = time.Duration(r.MaxDuration) * time.Millisecond
	c.IdleTimeout = time.Duration(r.IdleTimeout) * time.Millisecond
	for _, l := range r.Rlimits {
		c.Rlimits = append(c.Rlimits, sandbox.Rlimit{Resource: l.Resource, Soft: l.Soft, Hard: l.Hard})
	}
	for _, t := range r.Tmpfs {
		c.Tmpfs = append(c.Tmpfs, sandbox.Tmpfs{Guest: t.Guest, SizeMiB: t.SizeMiB})
	}
	if n := r.Network; n != nil {
		c.Network = sandbox.Network{Mode: sandbox.NetworkMode(n.Mode), Allow: n.Allow, Deny: n.Deny, Strict: n.Strict,
			MaxConnections: n.MaxConnections, MaxBandwidth: n.MaxBandwidth}
	}
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
	_, err = d.exec(ctx, `INSERT INTO sandboxes (namespace, name, uuid, config, state, failure, created_at, started_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (namespace, name) DO UPDATE SET config = excluded.config, state = excluded.state,
			failure = excluded.failure, started_at = excluded.started_at, stopped_at = NULL`,
		r.ID.Namespace(), r.ID.Name(), r.UUID, string(data), r.State, r.Failure, r.Created.UnixMilli(), nullTime(r.Started))
	if err != nil {
		return fmt.Errorf("record sandbox %s: %w", r.ID, err)
	}
	return nil
}

// SetSandboxConfig implements sandbox.Store.
func (d *DB) SetSandboxConfig(ctx context.Context, id sandbox.ID, cfg sandbox.Config) error {
	data, err := encodeConfig(cfg)
	if err != nil {
		return fmt.Errorf("record the config of sandbox %s: %w", id, err)
	}
	res, err := d.exec(ctx, `UPDATE sandboxes SET config = ? WHERE namespace = ? AND name = ?`, string(data), id.Namespace(), id.Name())
	if err != nil {
		return fmt.Errorf("record the config of sandbox %s: %w", id, err)
	}
	if n, err := res.RowsAffected(); err == nil && n == 0 {
		return errdefs.NotFoundf("sandbox %q not found in namespace %q: start it with sandbox.start and a config", id.Name(), id.Namespace())
	}
	return nil
}

// MarkSandboxFailed implements sandbox.Store.
func (d *DB) MarkSandboxFailed(ctx context.Context, id sandbox.ID, why string, t time.Time) error {
	_, err := d.exec(ctx, `UPDATE sandboxes SET state = ?, failure = ?, stopped_at = ? WHERE namespace = ? AND name = ?`,
		sandbox.StateFailed, why, t.UnixMilli(), id.Namespace(), id.Name())
	if err != nil {
		return fmt.Errorf("record sandbox %s failed: %w", id, err)
	}
	return nil
}

// DeleteSandbox implements sandbox.Store.
func (d *DB) DeleteSandbox(ctx context.Context, id sandbox.ID) error {
	if _, err := d.exec(ctx, `DELETE FROM sandboxes WHERE namespace = ? AND name = ?`, id.Namespace(), id.Name()); err != nil {
		return fmt.Errorf("forget sandbox %s: %w", id, err)
	}
	return nil
}

// SandboxByUUID implements sandbox.Store.
func (d *DB) SandboxByUUID(ctx context.Context, ns, uuid string) (sandbox.Record, error) {
	r, err := scanSandbox(d.queryRow(ctx, `SELECT `+sandboxColumns+` FROM sandboxes WHERE namespace = ? AND uuid = ?`, ns, uuid))
	if errors.Is(err, sql.ErrNoRows) {
		return sandbox.Record{}, errdefs.NotFoundf("no sandbox with id %q in namespace %q", uuid, ns)
	}
	if err != nil {
		return sandbox.Record{}, fmt.Errorf("read sandbox %s/%s: %w", ns, uuid, err)
	}
	return r, nil
}

// MarkSandboxStopped implements sandbox.Store.
func (d *DB) MarkSandboxStopped(ctx context.Context, id sandbox.ID, t time.Time) error {
	_, err := d.exec(ctx, `UPDATE sandboxes SET state = ?, stopped_at = ? WHERE namespace = ? AND name = ?`,
		sandbox.StateStopped, t.UnixMilli(), id.Namespace(), id.Name())
	if err != nil {
		return fmt.Errorf("record sandbox %s stopped: %w", id, err)
	}
	return nil
}

const sandboxColumns = `namespace, name, uuid, config, state, failure, created_at, started_at, stopped_at`

func scanSandbox(sc scanner) (sandbox.Record, error) {
	var r sandbox.Record
	var ns, name, cfg string
	var uuid sql.NullString
	var created int64
	var started, stopped sql.NullInt64
	if err := sc.Scan(&ns, &name, &uuid, &cfg, &r.State, &r.Failure, &created, &started, &stopped); err != nil {
		return sandbox.Record{}, err
	}
	id, err := sandbox.ParseID(ns, name)
	if err != nil {
		return sandbox.Record{}, fmt.Errorf("stored sandbox %s/%s: %w", ns, name, err)
	}
	r.ID, r.UUID = id, uuid.String
	if r.Config, err = decodeConfig(cfg); err != nil {
		return sandbox.Record{}, fmt.Errorf("sandbox %s: stored config: %w", r.ID, err)
	}
	r.Created, r.Started, r.Stopped = time.UnixMilli(created), timeOf(started), timeOf(stopped)
	return r, nil
}

// Sandbox implements sandbox.Store.
func (d *DB) Sandbox(ctx context.Context, id sandbox.ID) (sandbox.Record, error) {
	r, err := scanSandbox(d.queryRow(ctx, `SELECT `+sandboxColumns+` FROM sandboxes WHERE namespace = ? AND name = ?`,
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
	rows, err := d.query(ctx, `SELECT `+sandboxColumns+` FROM sandboxes WHERE ? = '*' OR namespace = ? ORDER BY namespace, name`, ns, ns)
	if err != nil {
		return nil, fmt.Errorf("list sandboxes: %w", err)
	}
	defer rows.Close()
	var out []sandbox.Record
	for rows.Next() {
		r, err := scanSandbox(rows)
		if err != nil {
			// One unreadable record must not hide the others, nor keep
			// the server from starting: it is left out, and said.
			slog.Error("a stored sandbox record cannot be read; it is left out", "err", err)
			continue
		}
		out = append(out, r)
	}
	return out, rows.Err()
}
