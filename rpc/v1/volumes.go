package v1

import (
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox"
	"github.com/msb-dev/msb/sandbox/volume"
)

// DefaultVolumeID is the id of a namespace's default volume (its whole
// volume directory); a named volume's id is its name, which cannot begin
// with "_".
const DefaultVolumeID = "_default"

// Headers of the volume file routes.
const (
	hdrFilePath  = "X-Msb-File-Path" // base64url, without padding
	hdrRecursive = "X-Msb-File-Recursive"
)

// Volume is the volume object of the volume routes.
type Volume struct {
	ID            string            `json:"id"`
	Name          *string           `json:"name"`
	Kind          string            `json:"kind"`   // host (the default volume) or managed
	Status        string            `json:"status"` // active
	UsedBytes     *uint64           `json:"used_bytes"`
	CapacityBytes *uint64           `json:"capacity_bytes"`
	Labels        map[string]string `json:"labels"`
	CreatedAt     string            `json:"created_at"`
	UpdatedAt     string            `json:"updated_at"`
}

func volumeJSON(v volume.Info) Volume {
	out := Volume{ID: DefaultVolumeID, Kind: "host", Status: "active", Labels: v.Labels,
		CreatedAt: timestamp(v.Created), UpdatedAt: timestamp(v.Updated)}
	if v.Name != "" {
		out.ID, out.Name, out.Kind = v.Name, &v.Name, "managed"
	}
	if out.Labels == nil {
		out.Labels = map[string]string{}
	}
	return out
}

func (h *Handler) listVolumes(c *Call) { c.finish(h.volumeList(c)) }

func (h *Handler) volumeList(c *Call) ([]Volume, error) {
	def, err := h.defaultVolumeInfo(c)
	if err != nil {
		return nil, err
	}
	list, err := h.vols.List(c.NS)
	if err != nil {
		return nil, err
	}
	out := []Volume{def}
	for _, v := range list {
		out = append(out, volumeJSON(v))
	}
	return out, nil
}

func (h *Handler) defaultVolume(c *Call) { c.finish(h.defaultVolumeInfo(c)) }

// defaultVolumeInfo admits a call that reads volumes and describes the
// namespace's default volume.
func (h *Handler) defaultVolumeInfo(c *Call) (Volume, error) {
	if err := c.admit(nil); err != nil {
		return Volume{}, err
	}
	def, err := h.vols.Default(c.NS)
	if err != nil {
		return Volume{}, err
	}
	return volumeJSON(def), nil
}

// createVolumeBody is the body of POST /v1/volumes.
type createVolumeBody struct {
	Name        string            `json:"name"`
	Labels      map[string]string `json:"labels"`
	CapacityGiB *uint32           `json:"capacity_gib"`
}

func (h *Handler) createVolume(c *Call) {
	var body createVolumeBody
	decodeErr := c.decodeBody(&body)
	c.action.Detail = "volume " + truncate(body.Name)
	err := c.admit(func() error {
		if decodeErr != nil {
			return decodeErr
		}
		if body.CapacityGiB != nil {
			return errdefs.Invalidf("capacity_gib: msb cannot bound a volume's size yet (there are no per-volume quotas): create it without quota()")
		}
		return volume.ValidateName(body.Name)
	})
	if err != nil {
		c.fail(err)
		return
	}
	v, err := h.vols.Create(c.NS, body.Name, body.Labels)
	if errdefs.Is(err, errdefs.Conflict) {
		err = withCode(codeNameExists, err)
	}
	if err != nil {
		c.fail(err)
		return
	}
	c.finish(volumeJSON(v), nil)
}

func (h *Handler) deleteVolume(c *Call) {
	name := c.args[0]
	c.action.Detail = "volume " + truncate(name)
	if err := c.admit(nil); err != nil {
		c.fail(err)
		return
	}
	if name == DefaultVolumeID {
		c.fail(errdefs.Invalidf("the default volume cannot be deleted"))
		return
	}
	if _, err := h.vols.Get(c.NS, name); err != nil {
		c.fail(err)
		return
	}
	if user, err := h.mountedBy(c, name); err != nil || user != "" {
		if err == nil {
			err = errdefs.Conflictf("volume %q is mounted by sandbox %q, which is running: stop it first", name, user)
		}
		c.fail(err)
		return
	}
	if err := h.vols.Delete(c.NS, name); err != nil {
		c.fail(err)
		return
	}
	c.finish(message{Message: fmt.Sprintf("volume %s deleted", name)}, nil)
}

// mountedBy names a running sandbox of the call's namespace that mounts
// the volume name, a directory in it, or a directory holding it (such as
// the whole namespace's, ".:/data"), by any of the host paths a sandbox
// config may give (relative, absolute, through a symlink), or "".
func (h *Handler) mountedBy(c *Call, name string) (string, error) {
	nsDir, err := h.vols.Path(c.NS, "")
	if err != nil {
		return "", err
	}
	overlaps := sandbox.Overlapping(nsDir, filepath.Join(nsDir, name)) // name: checked by the caller's Get
	o := sandbox.ListOptions{Limit: 1000}
	for {
		recs, next, err := h.svc.List(c.ctx(), c.NS, o)
		if err != nil {
			return "", err
		}
		for _, r := range recs {
			if r.State != sandbox.StateRunning && r.State != sandbox.StateStarting {
				continue
			}
			for _, v := range r.Config.Volumes {
				if overlaps(v) {
					return r.ID.Name(), nil
				}
			}
		}
		if next == "" {
			return "", nil
		}
		o.After = next
	}
}

// FileInfo describes a file of a volume.
type FileInfo struct {
	Path       string  `json:"path"`
	Kind       string  `json:"kind"` // file or directory
	Size       int64   `json:"size"`
	Mode       uint32  `json:"mode"`
	UID        uint32  `json:"uid"`
	GID        uint32  `json:"gid"`
	ReadOnly   bool    `json:"readonly"`
	AccessedAt *string `json:"accessed_at"`
	ModifiedAt *string `json:"modified_at"`
	CreatedAt  *string `json:"created_at"`
}

func fileJSON(f volume.FileInfo) FileInfo {
	kind := "file"
	if f.Dir {
		kind = "directory"
	}
	return FileInfo{Path: f.Path, Kind: kind, Size: f.Size, Mode: f.Mode, UID: f.UID, GID: f.GID,
		ReadOnly: f.Mode&0o200 == 0, AccessedAt: optTimestamp(f.ATime), ModifiedAt: optTimestamp(f.MTime)}
}

// openVolume admits a volume file call and opens its volume; path is the
// file the x-msb-file-path header names (header: the route has it).
func (c *Call) openVolume(header bool, validate func() error) (*volume.Dir, string, error) {
	id := c.args[0]
	c.action.Detail = "volume " + truncate(id)
	var path string
	err := c.admit(func() error {
		if !header {
			return validate()
		}
		raw := strings.TrimRight(c.r.Header.Get(hdrFilePath), "=")
		b, err := base64.RawURLEncoding.DecodeString(raw)
		if err != nil {
			return errdefs.Invalidf("the %s header must be the path in base64url", hdrFilePath)
		}
		path = string(b)
		if _, err := volume.Clean(path); err != nil {
			return err
		}
		if validate != nil {
			return validate()
		}
		return nil
	})
	if err != nil {
		return nil, "", err
	}
	name := id
	if id == DefaultVolumeID {
		name = ""
	}
	d, err := c.h.vols.Open(c.NS, name)
	if err != nil {
		return nil, "", withCode(codeVolumeNotFound, err)
	}
	return d, path, nil
}

func (h *Handler) readFile(c *Call) {
	d, path, err := c.openVolume(true, nil)
	if err != nil {
		c.fail(err)
		return
	}
	defer d.Close()
	f, info, err := d.Open(path)
	if err != nil {
		c.fail(err)
		return
	}
	defer f.Close()
	c.report(nil)
	c.writeRateHeaders(http.StatusOK)
	c.w.Header().Set("Content-Type", "application/octet-stream")
	c.w.Header().Set("Content-Length", strconv.FormatInt(info.Size, 10))
	c.w.WriteHeader(http.StatusOK)
	if c.r.Method == http.MethodHead {
		return
	}
	if _, err := io.Copy(c.w, f); err != nil {
		h.log.Debug("volume read ended early", "err", err)
	}
}

func (h *Handler) writeFile(c *Call) {
	d, path, err := c.openVolume(true, nil)
	if err != nil {
		c.fail(err)
		return
	}
	defer d.Close()
	n, err := d.Write(path, c.r.Body)
	if err != nil {
		c.fail(err)
		return
	}
	c.finish(message{Message: fmt.Sprintf("wrote %d bytes", n)}, nil)
}

func (h *Handler) listFiles(c *Call) {
	d, path, err := c.openVolume(true, nil)
	if err != nil {
		c.fail(err)
		return
	}
	defer d.Close()
	list, err := d.List(path)
	if err != nil {
		c.fail(err)
		return
	}
	out := struct {
		Entries []FileInfo `json:"entries"`
	}{Entries: make([]FileInfo, 0, len(list))}
	for _, f := range list {
		out.Entries = append(out.Entries, fileJSON(f))
	}
	c.finish(out, nil)
}

func (h *Handler) statFile(c *Call) {
	d, path, err := c.openVolume(true, nil)
	if err != nil {
		c.fail(err)
		return
	}
	defer d.Close()
	f, err := d.Stat(path)
	if err != nil {
		c.fail(err)
		return
	}
	c.finish(struct {
		Metadata FileInfo `json:"metadata"`
	}{fileJSON(f)}, nil)
}

func (h *Handler) fileExists(c *Call) {
	d, path, err := c.openVolume(true, nil)
	if err != nil {
		c.fail(err)
		return
	}
	defer d.Close()
	_, err = d.Stat(path)
	if errdefs.Is(err, errdefs.NotFound) {
		c.finish(struct {
			Exists bool `json:"exists"`
		}{false}, nil)
		return
	}
	if err != nil {
		c.fail(err)
		return
	}
	c.finish(struct {
		Exists bool `json:"exists"`
	}{true}, nil)
}

func (h *Handler) removeFile(c *Call) {
	var recursive bool
	d, path, err := c.openVolume(true, func() error {
		switch s := c.r.Header.Get(hdrRecursive); s {
		case "", "false":
		case "true":
			recursive = true
		default:
			return errdefs.Invalidf("the %s header must be true or false, not %.16q", hdrRecursive, s)
		}
		return nil
	})
	if err != nil {
		c.fail(err)
		return
	}
	defer d.Close()
	if err := d.Remove(path, recursive); err != nil {
		c.fail(err)
		return
	}
	c.finish(message{Message: "removed"}, nil)
}

func (h *Handler) mkdir(c *Call) {
	var body struct {
		Path string `json:"path"`
	}
	decodeErr := c.decodeBody(&body)
	d, _, err := c.openVolume(false, func() error {
		if decodeErr != nil {
			return decodeErr
		}
		_, err := volume.Clean(body.Path)
		return err
	})
	if err != nil {
		c.fail(err)
		return
	}
	defer d.Close()
	if err := d.Mkdir(body.Path); err != nil {
		c.fail(err)
		return
	}
	c.finish(message{Message: "created"}, nil)
}

// fromTo is the body of copy and rename.
type fromTo struct {
	From string `json:"from"`
	To   string `json:"to"`
}

func (h *Handler) fromTo(c *Call, op func(d *volume.Dir, from, to string) error) {
	var body fromTo
	decodeErr := c.decodeBody(&body)
	d, _, err := c.openVolume(false, func() error {
		if decodeErr != nil {
			return decodeErr
		}
		for _, p := range []string{body.From, body.To} {
			if _, err := volume.Clean(p); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		c.fail(err)
		return
	}
	defer d.Close()
	if err := op(d, body.From, body.To); err != nil {
		c.fail(err)
		return
	}
	c.finish(message{Message: "done"}, nil)
}

func (h *Handler) copyFile(c *Call) { h.fromTo(c, (*volume.Dir).Copy) }

func (h *Handler) renameFile(c *Call) { h.fromTo(c, (*volume.Dir).Rename) }
