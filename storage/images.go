package storage

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/msb-dev/msb/sandbox/image"
)

var _ image.RecordStore = (*DB)(nil)

// imageRecordV1 is how an image's record is stored (images.record): a
// format of storage's own, versioned like sandboxConfigV1.
type imageRecordV1 struct {
	V        int            `json:"v"`
	Digest   string         `json:"digest"`
	Manifest string         `json:"manifest"`
	Env      []string       `json:"env,omitempty"`
	Workdir  string         `json:"working_dir,omitempty"`
	User     string         `json:"user,omitempty"`
	Layers   []imageLayerV1 `json:"layers"`
}

type imageLayerV1 struct {
	Digest   string `json:"digest"`
	DiffID   string `json:"diff_id"`
	Size     int64  `json:"size"`
	Unpacked int64  `json:"unpacked"`
}

const imageRecordVersion = 1

// PutImageRecord implements image.RecordStore.
func (d *DB) PutImageRecord(ctx context.Context, r image.Record) error {
	rec := imageRecordV1{V: imageRecordVersion, Digest: r.Digest, Manifest: r.Manifest,
		Env: r.Config.Env, Workdir: r.Config.WorkingDir, User: r.Config.User}
	for _, l := range r.Layers {
		rec.Layers = append(rec.Layers, imageLayerV1{Digest: l.Digest, DiffID: l.DiffID, Size: l.Size, Unpacked: l.Unpacked})
	}
	data, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	_, err = d.exec(ctx, `INSERT INTO images (name, record, pulled_at, last_used_at) VALUES (?, ?, ?, ?)
		ON CONFLICT (name) DO UPDATE SET record = excluded.record, pulled_at = excluded.pulled_at, last_used_at = excluded.last_used_at`,
		r.Name, string(data), r.Pulled.UnixMilli(), r.LastUsed.UnixMilli())
	if err != nil {
		return fmt.Errorf("record image %s: %w", r.Name, err)
	}
	return nil
}

// ImageRecords implements image.RecordStore.
func (d *DB) ImageRecords(ctx context.Context) ([]image.Record, error) {
	rows, err := d.query(ctx, `SELECT name, record, pulled_at, last_used_at FROM images ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	defer rows.Close()
	var out []image.Record
	for rows.Next() {
		var name, data string
		var pulled, used int64
		if err := rows.Scan(&name, &data, &pulled, &used); err != nil {
			return nil, fmt.Errorf("list images: %w", err)
		}
		var rec imageRecordV1
		if err := json.Unmarshal([]byte(data), &rec); err != nil {
			return nil, fmt.Errorf("image %s: stored record: %w", name, err)
		}
		if rec.V > imageRecordVersion {
			return nil, fmt.Errorf("image %s: stored record has version %d, newer than this msb (%d): upgrade msb", name, rec.V, imageRecordVersion)
		}
		r := image.Record{Name: name, Digest: rec.Digest, Manifest: rec.Manifest,
			Config: image.ImageConfig{Env: rec.Env, WorkingDir: rec.Workdir, User: rec.User},
			Pulled: time.UnixMilli(pulled).UTC(), LastUsed: time.UnixMilli(used).UTC()}
		for _, l := range rec.Layers {
			r.Layers = append(r.Layers, image.LayerRecord{Digest: l.Digest, DiffID: l.DiffID, Size: l.Size, Unpacked: l.Unpacked})
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// DeleteImageRecord implements image.RecordStore.
func (d *DB) DeleteImageRecord(ctx context.Context, name string) error {
	if _, err := d.exec(ctx, `DELETE FROM images WHERE name = ?`, name); err != nil {
		return fmt.Errorf("forget image %s: %w", name, err)
	}
	return nil
}

// TouchImageRecord implements image.RecordStore.
func (d *DB) TouchImageRecord(ctx context.Context, name string, t time.Time) error {
	if _, err := d.exec(ctx, `UPDATE images SET last_used_at = ? WHERE name = ?`, t.UnixMilli(), name); err != nil {
		return fmt.Errorf("touch image %s: %w", name, err)
	}
	return nil
}
