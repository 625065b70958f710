package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"

	"github.com/msb-dev/msb/auth"
	"github.com/msb-dev/msb/config"
	"github.com/msb-dev/msb/storage"
)

// Home is an msb home opened for its keys and state: the signing key, the
// state database and the key registry on it. The server and the CLI's key
// and audit commands open it the same way.
type Home struct {
	Config   config.Config
	Signer   *auth.Signer
	DB       *storage.DB
	Registry *auth.Registry
	now      func() time.Time
}

// OpenHome opens (creating if needed) the home of cfg, with its signing
// key. Close it when done.
func OpenHome(ctx context.Context, cfg config.Config) (*Home, error) {
	if err := cfg.EnsureHome(); err != nil {
		return nil, err
	}
	signer, _, err := auth.LoadOrCreateSigner(cfg.KeyPath(), false)
	if err != nil {
		return nil, err
	}
	return openHome(ctx, cfg, signer, nil)
}

// OpenExistingHome opens a home that already has a signing key and a
// database, read-mostly, for the CLI; errors wrap fs.ErrNotExist when it
// has not.
func OpenExistingHome(ctx context.Context, cfg config.Config) (*Home, error) {
	signer, err := auth.LoadSigner(cfg.KeyPath())
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(cfg.DBPath()); err != nil {
		return nil, err
	}
	return openHome(ctx, cfg, signer, nil)
}

// openHome opens the home's database and key registry; now is the clock
// (nil: time.Now).
func openHome(ctx context.Context, cfg config.Config, signer *auth.Signer, now func() time.Time) (*Home, error) {
	db, err := storage.Open(ctx, cfg.DBPath())
	if err != nil {
		return nil, err
	}
	return &Home{Config: cfg, Signer: signer, DB: db, Registry: auth.NewRegistry(db, cfg.KeyChangesPath(), now), now: now}, nil
}

// Close waits for the registry's pending writes and closes the database.
func (h *Home) Close() error {
	h.Registry.Close()
	return h.DB.Close()
}

// KeyDefaults are the home's default key rates (config.toml).
func KeyDefaults(cfg config.Config) auth.Defaults {
	rate, start := cfg.Rates()
	return auth.Defaults{Rate: rate, StartRate: start}
}

// Keys returns the key manager of the home.
func (h *Home) Keys() *auth.Manager {
	return &auth.Manager{Issuer: &auth.Issuer{Signer: h.Signer, Registry: h.Registry, Now: h.now}, Registry: h.Registry,
		Defaults: KeyDefaults(h.Config), Now: h.now}
}

// Info describes the running server, in server.json of its home, for
// `msb server status` and `msb server stop`.
type Info struct {
	Pid     int       `json:"pid"`
	Address string    `json:"address"`
	Dev     bool      `json:"dev"`
	Started time.Time `json:"started"`
}

func writeInfo(cfg *config.Config, info Info) error {
	data, _ := json.MarshalIndent(info, "", "  ")
	if err := os.WriteFile(cfg.StatePath(), append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", cfg.StatePath(), err)
	}
	if err := os.WriteFile(cfg.PidPath(), []byte(strconv.Itoa(info.Pid)+"\n"), 0o644); err != nil {
		return fmt.Errorf("write pid file: %w", err)
	}
	return nil
}

// ReadInfo reads what the server running for cfg's home (or the last one)
// wrote about itself.
func ReadInfo(cfg config.Config) (Info, error) {
	var info Info
	data, err := os.ReadFile(cfg.StatePath())
	if err != nil {
		return info, err
	}
	return info, json.Unmarshal(data, &info)
}

// lockHome takes the home's server lock, held for the life of the server;
// the kernel releases it however the process ends.
func lockHome(cfg config.Config) (*os.File, error) {
	f, err := os.OpenFile(cfg.LockPath(), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, ErrRunning(cfg)
	}
	return f, nil
}

// ErrRunning is the error of a second server for a home whose server runs.
func ErrRunning(cfg config.Config) error {
	if info, err := ReadInfo(cfg); err == nil {
		return fmt.Errorf("an msb server is already running (pid %d, %s): stop it with `msb server stop`", info.Pid, info.Address)
	}
	return errors.New("an msb server is already running for this home: stop it with `msb server stop`")
}

// Running reports whether a server holds the home's lock.
func Running(cfg config.Config) bool {
	f, err := os.OpenFile(cfg.LockPath(), os.O_RDWR, 0)
	if err != nil {
		return false
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return true
	}
	syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	return false
}
