// Package volume keeps named volumes: directories a namespace's sandboxes
// mount by name, and whose files the v1 API reads and writes without a
// sandbox. A volume named v of namespace ns is the directory <root>/<ns>/<v>
// of the server's first volume root, the very directory a sandbox.start
// volume "v:/data" mounts, so both APIs see the same files. Its labels and
// creation time are kept beside, in <meta>/<ns>/<v>.json, where no
// sandbox reaches. The namespace's directory itself, <root>/<ns>, is its
// default volume (the v1 API's "host" volume).
//
// Every path inside a volume is resolved with openat2(RESOLVE_BENEATH)
// from the volume's directory, so neither "..", nor a symlink a sandbox
// left in it, leads out of it.
package volume

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/namespace"
)

// Store keeps the named volumes of every namespace.
type Store struct {
	// Root is the volume root: namespace ns's volumes are the directories
	// of Root/ns.
	Root string
	// Meta holds what a volume's directory cannot: Meta/ns/name.json.
	Meta string
	// Now is the clock of creation times; nil: time.Now.
	Now func() time.Time
	// Owner is the host uid and gid of what the store makes in volumes
	// (see sandbox.ServiceOptions.VolumeOwner); 0: root.
	Owner int
}

// Info describes a volume.
type Info struct {
	// Name is the volume's name; "" for the namespace's default volume.
	Name    string
	Labels  map[string]string
	Created time.Time
	Updated time.Time // the last change of its top directory
}

// meta is a volume's record in Meta.
type meta struct {
	Labels  map[string]string `json:"labels,omitempty"`
	Created time.Time         `json:"created"`
}

// Limits of what a volume may be given.
const (
	maxLabels   = 64
	maxLabelLen = 256
)

func (s *Store) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// Path returns the host directory of volume name of namespace ns ("": the
// namespace's default volume, which holds the others).
func (s *Store) Path(ns, name string) (string, error) {
	dir, err := s.nsDir(ns)
	if err != nil || name == "" {
		return dir, err
	}
	if err := ValidateName(name); err != nil {
		return "", err
	}
	return filepath.Join(dir, name), nil
}

// nsDir returns namespace ns's directory, created if missing.
func (s *Store) nsDir(ns string) (string, error) {
	if err := namespace.ValidateName("namespace", ns); err != nil {
		return "", err
	}
	if s.Root == "" {
		return "", errdefs.Unavailablef("this server has no volume root (volume_roots in its config): named volumes are not available")
	}
	dir := filepath.Join(s.Root, ns)
	if err := MkdirPrivate(dir, s.Owner); err != nil {
		return "", fmt.Errorf("volume root of namespace %q: %w", ns, err)
	}
	return dir, nil
}

// MkdirPrivate makes dir, a namespace's volume root, and its missing
// parents if it is missing: 0700, so that no user of the host reaches
// what sandboxes leave in volumes (a setuid file, say), owned by owner.
func MkdirPrivate(dir string, owner int) error {
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil
		}
		return err
	}
	return os.Chown(dir, owner, owner)
}

// ValidateName checks a volume's name: the rules of sandbox names.
// Errors are of class Invalid.
func ValidateName(name string) error {
	return namespace.ValidateName("volume", name)
}

// Create makes the volume name of namespace ns with labels. Errors: class
// Invalid for a bad name or labels, Conflict when it exists.
func (s *Store) Create(ns, name string, labels map[string]string) (Info, error) {
	if err := ValidateName(name); err != nil {
		return Info{}, err
	}
	if err := validateLabels(labels); err != nil {
		return Info{}, err
	}
	dir, err := s.nsDir(ns)
	if err != nil {
		return Info{}, err
	}
	if err := unix.Mkdirat(unix.AT_FDCWD, filepath.Join(dir, name), 0o700); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return Info{}, errdefs.Conflictf("a volume named %q already exists in namespace %q", name, ns)
		}
		return Info{}, fmt.Errorf("create volume %q: %w", name, err)
	}
	if err := os.Chown(filepath.Join(dir, name), s.Owner, s.Owner); err != nil {
		os.Remove(filepath.Join(dir, name))
		return Info{}, fmt.Errorf("create volume %q: %w", name, err)
	}
	m := meta{Labels: labels, Created: s.now().UTC()}
	if err := s.writeMeta(ns, name, m); err != nil {
		os.Remove(filepath.Join(dir, name))
		return Info{}, err
	}
	return s.Get(ns, name)
}

func validateLabels(labels map[string]string) error {
	if len(labels) > maxLabels {
		return errdefs.Invalidf("labels: %d labels is too many: use at most %d", len(labels), maxLabels)
	}
	for k, v := range labels {
		if k == "" || len(k) > maxLabelLen || len(v) > maxLabelLen || strings.ContainsRune(k+v, 0) {
			return errdefs.Invalidf("labels: %.64q: keys must be 1-%d bytes and values at most %d", k, maxLabelLen, maxLabelLen)
		}
	}
	return nil
}

func (s *Store) metaPath(ns, name string) string {
	return filepath.Join(s.Meta, ns, name+".json")
}

func (s *Store) writeMeta(ns, name string, m meta) error {
	path := s.metaPath(ns, name)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("volume %q: %w", name, err)
	}
	data, _ := json.Marshal(m)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("volume %q: %w", name, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("volume %q: %w", name, err)
	}
	return nil
}

// Get describes the volume name of namespace ns. A directory of the
// namespace made by a sandbox.start volume is a volume too, without
// labels. Errors: class NotFound when there is none.
func (s *Store) Get(ns, name string) (Info, error) {
	if err := ValidateName(name); err != nil {
		return Info{}, errdefs.NotFoundf("no volume named %.64q in namespace %q", name, ns)
	}
	dir, err := s.nsDir(ns)
	if err != nil {
		return Info{}, err
	}
	var st unix.Stat_t
	err = unix.Fstatat(unix.AT_FDCWD, filepath.Join(dir, name), &st, unix.AT_SYMLINK_NOFOLLOW)
	if err != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
		if err == nil || errors.Is(err, unix.ENOENT) {
			return Info{}, errdefs.NotFoundf("no volume named %q in namespace %q", name, ns)
		}
		return Info{}, fmt.Errorf("volume %q: %w", name, err)
	}
	info := Info{Name: name, Created: statTime(st.Mtim), Updated: statTime(st.Mtim)}
	if data, err := os.ReadFile(s.metaPath(ns, name)); err == nil {
		var m meta
		if json.Unmarshal(data, &m) == nil {
			info.Labels, info.Created = m.Labels, m.Created
		}
	}
	return info, nil
}

func statTime(t unix.Timespec) time.Time { return time.Unix(t.Sec, t.Nsec).UTC() }

// List describes the named volumes of namespace ns, by name.
func (s *Store) List(ns string) ([]Info, error) {
	dir, err := s.nsDir(ns)
	if err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("volumes of namespace %q: %w", ns, err)
	}
	var out []Info
	for _, e := range entries {
		if !e.IsDir() || ValidateName(e.Name()) != nil {
			continue
		}
		if info, err := s.Get(ns, e.Name()); err == nil {
			out = append(out, info)
		}
	}
	slices.SortFunc(out, func(a, b Info) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// Default describes namespace ns's default volume: its whole directory.
func (s *Store) Default(ns string) (Info, error) {
	dir, err := s.nsDir(ns)
	if err != nil {
		return Info{}, err
	}
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return Info{}, fmt.Errorf("default volume of namespace %q: %w", ns, err)
	}
	return Info{Created: statTime(st.Ctim), Updated: statTime(st.Mtim)}, nil
}

// Delete removes the volume name of namespace ns and everything in it.
// Errors: class NotFound when there is none.
func (s *Store) Delete(ns, name string) error {
	if _, err := s.Get(ns, name); err != nil {
		return err
	}
	dir, err := s.nsDir(ns)
	if err != nil {
		return err
	}
	// os.RemoveAll opens every directory it descends into with
	// O_NOFOLLOW from its parent's descriptor: a symlink in the volume
	// is removed, never followed.
	if err := os.RemoveAll(filepath.Join(dir, name)); err != nil {
		return fmt.Errorf("delete volume %q: %w", name, err)
	}
	if err := os.Remove(s.metaPath(ns, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete volume %q: %w", name, err)
	}
	return nil
}

// Open opens the files of the volume name of namespace ns ("": the
// default volume) for the file operations of Dir. Errors: class NotFound
// when there is no such volume.
func (s *Store) Open(ns, name string) (*Dir, error) {
	dir, err := s.nsDir(ns)
	if err != nil {
		return nil, err
	}
	nsfd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("volume root of namespace %q: %w", ns, err)
	}
	if name == "" {
		return &Dir{fd: nsfd, name: "default", owner: s.Owner}, nil
	}
	defer unix.Close(nsfd)
	if err := ValidateName(name); err != nil {
		return nil, errdefs.NotFoundf("no volume named %.64q in namespace %q", name, ns)
	}
	fd, err := unix.Openat(nsfd, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) {
			return nil, errdefs.NotFoundf("no volume named %q in namespace %q", name, ns)
		}
		return nil, fmt.Errorf("volume %q: %w", name, err)
	}
	return &Dir{fd: fd, name: name, owner: s.Owner}, nil
}
