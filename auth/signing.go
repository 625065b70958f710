package auth

import (
	"io"

	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// MinSigningKeyLen is the shortest signing key accepted from --key.
const MinSigningKeyLen = 32

// Signer holds the server signing key: the HMAC secret every API key is
// signed with. Its ID is a fingerprint that reveals nothing of the secret,
// recorded with each key so keys signed by an earlier secret show as invalid.
type Signer struct {
	secret []byte
	id     string
}

// ID returns the signing key's fingerprint.
func (s *Signer) ID() string { return s.id }

func newSigner(secret []byte) *Signer {
	sum := sha256.Sum256(append([]byte("msb signing key id\x00"), secret...))
	return &Signer{secret: secret, id: hex.EncodeToString(sum[:6])}
}

// LoadSigner reads the signing key at path, which must be a regular file:
// a symlink there is refused, never followed (nor its target chmod'ed).
// The error wraps os.ErrNotExist when there is none yet.
func LoadSigner(path string) (*Signer, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if errors.Is(err, unix.ELOOP) {
		return nil, fmt.Errorf("signing key %s is a symlink, which msb does not follow: replace it with the key file itself (or start with --reset-key)", path)
	}
	if err != nil {
		return nil, fmt.Errorf("read signing key: %w", &os.PathError{Op: "open", Path: path, Err: err})
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("read signing key: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("signing key %s is not a regular file: replace it with the key file (or start with --reset-key)", path)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		// Someone loosened it; a readable signing key lets anyone mint keys.
		if err := f.Chmod(0o600); err != nil {
			return nil, fmt.Errorf("signing key %s is readable by others and cannot be fixed: %w", path, err)
		}
	}
	data, err := io.ReadAll(io.LimitReader(f, 64<<10))
	if err != nil {
		return nil, fmt.Errorf("read signing key: %w", err)
	}
	secret := []byte(strings.TrimSpace(string(data)))
	if len(secret) < MinSigningKeyLen {
		return nil, fmt.Errorf("signing key %s is too short (%d bytes): remove it or start with --reset-key to make a new one", path, len(secret))
	}
	return newSigner(secret), nil
}

// LoadOrCreateSigner reads the signing key at path, creating a random one
// (32 bytes from crypto/rand, hex-encoded, mode 0600) when there is none or
// when reset is set. It reports whether it made a new key.
func LoadOrCreateSigner(path string, reset bool) (*Signer, bool, error) {
	if !reset {
		s, err := LoadSigner(path)
		if err == nil || !errors.Is(err, os.ErrNotExist) {
			return s, false, err
		}
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return nil, false, fmt.Errorf("generate signing key: %w", err)
	}
	secret := []byte(hex.EncodeToString(raw))
	if err := writeSecret(path, secret); err != nil {
		return nil, false, err
	}
	return newSigner(secret), true, nil
}

// SetSigner makes key the signing key (from --key) and saves it at path, so
// keygen and a later start without --key sign with the same secret.
func SetSigner(path, key string) (*Signer, error) {
	key = strings.TrimSpace(key)
	if len(key) < MinSigningKeyLen {
		return nil, fmt.Errorf("--key is too short: use at least %d characters (or omit it to use the saved key)", MinSigningKeyLen)
	}
	if err := writeSecret(path, []byte(key)); err != nil {
		return nil, err
	}
	return newSigner([]byte(key)), nil
}

// writeSecret replaces path atomically with a 0600 file holding secret.
func writeSecret(path string, secret []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".server.key-*")
	if err != nil {
		return fmt.Errorf("write signing key: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("write signing key: %w", err)
	}
	if _, err := tmp.Write(append(secret, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("write signing key: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write signing key: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write signing key: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write signing key: %w", err)
	}
	return nil
}
