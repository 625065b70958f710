// Package server is msb's composition root: it builds one server from a
// configuration (home, keys, state database, sandbox engine and service,
// the front-ends) and runs it. The CLI's `msb server start` is New, Run and
// Close; so is every in-process test.
package server

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/msb-dev/msb/auth"
	"github.com/msb-dev/msb/auth/audit"
	"github.com/msb-dev/msb/config"
	"github.com/msb-dev/msb/rpc"
	"github.com/msb-dev/msb/rpc/mcp"
	v1 "github.com/msb-dev/msb/rpc/v1"
	"github.com/msb-dev/msb/sandbox"
	"github.com/msb-dev/msb/sandbox/engine"
	"github.com/msb-dev/msb/sandbox/image"
	"github.com/msb-dev/msb/sandbox/linux/portalbin"
	"github.com/msb-dev/msb/sandbox/logfile"
	"github.com/msb-dev/msb/sandbox/pool"
	"github.com/msb-dev/msb/sandbox/volume"
)

// Options configure a server beyond its configuration.
type Options struct {
	// SigningKey, if set, replaces the home's signing key (at least 32
	// characters) and is saved; ResetKey makes a new one. Either makes
	// every earlier key stop working.
	SigningKey string
	ResetKey   bool
	// PortalBinary is the path of the static binary run inside sandboxes
	// as their init and portal (and as their spawner); default the portal
	// binary msb carries (package portalbin), else this process's
	// executable.
	PortalBinary string
	// Out gets the lines a person starting the server reads (address,
	// warnings); nil: discarded.
	Out io.Writer
	// Log is the server's log; nil: text to stderr.
	Log *slog.Logger
	// Now is the clock of keys, limits, the audit log and sandboxes;
	// nil: time.Now. Tests move it to reach an expiry without waiting.
	Now func() time.Time
	// BodyTimeout is how long a request's body may take to arrive; 0:
	// BodyTimeout. Tests shorten it.
	BodyTimeout time.Duration
}

// Server is one msb server: built by New, serving from Run until its
// context ends, released by Close.
type Server struct {
	cfg  config.Config
	log  *slog.Logger
	out  io.Writer
	lock *os.File
	home *Home

	sandboxes   sandbox.API
	closeSvc    func(context.Context) error // stops every sandbox and the engine
	audit       *audit.Writer
	bodyTimeout time.Duration
	handler     *rpc.Server
	ln          net.Listener
	url         string
	closed      bool
}

// New builds the server of cfg: it takes the home's lock (one server per
// home), opens its signing key, state database and key registry, cleans
// up after a server that crashed, and listens. It returns an error wrapping
// config.ErrInvalid for a bad configuration, and says what to do for a home
// already served or a port in use.
func New(ctx context.Context, cfg config.Config, opts Options) (_ *Server, err error) {
	if err := Check(cfg, opts); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: opts.Log, out: opts.Out, bodyTimeout: opts.BodyTimeout}
	if s.bodyTimeout <= 0 {
		s.bodyTimeout = BodyTimeout
	}
	if s.log == nil {
		s.log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	if s.out == nil {
		s.out = io.Discard
	}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if err := cfg.EnsureHome(); err != nil {
		return nil, err
	}
	s.log.Info("file descriptor limit", "nofile", raiseFileLimit())
	if s.lock, err = lockHome(cfg); err != nil {
		return nil, err
	}
	signer, err := s.signer(opts)
	if err != nil {
		return nil, err
	}
	if s.home, err = openHome(ctx, cfg, signer, opts.Now); err != nil {
		return nil, err
	}
	if wrote, err := cfg.WriteDefaultFile(); err != nil {
		return nil, err
	} else if wrote {
		s.log.Info("wrote default config with the image alias table", "path", cfg.Path(config.FileName))
	}
	if !cfg.Dev {
		// Before the sandboxes: they record their refused network attempts.
		s.audit = audit.NewWriter(s.home.DB, audit.Options{Retention: cfg.Retention(), Log: s.log, Now: opts.Now})
	}
	if err := s.openSandboxes(ctx, opts.PortalBinary, opts.Now); err != nil {
		return nil, err
	}

	var policy auth.Policy = auth.DevPolicy{}
	if !cfg.Dev {
		policy = &auth.KeyPolicy{
			Authn:   &auth.Authenticator{Signer: signer, Registry: s.home.Registry, Now: opts.Now},
			Limits:  auth.NewLimits(s.home.Registry, KeyDefaults(cfg), opts.Now),
			Auditor: s.audit,
		}
	}
	gate := auth.NewGate(policy, rpc.Code, opts.Now)
	gate.Log, gate.MaxInFlight = s.log, cfg.MaxCallsPerKey
	s.handler = rpc.NewServer(methods(s.sandboxes, s.home, policy.Dev()), gate, s.log)
	s.handler.Mount(mcp.Path, mcp.NewHandler(s.handler, &mcp.Options{Logger: s.log}))
	s.handler.Handle(v1.Prefix, s.v1API(gate, opts.Now))

	if s.ln, err = net.Listen("tcp", cfg.Addr()); err != nil {
		return nil, fmt.Errorf("listen on %s: %w (is another program using the port? choose one with --port)", cfg.Addr(), err)
	}
	s.ln = newLimitListener(s.ln, cfg.MaxConnections, cfg.MaxConnectionsPerAddress, s.log)
	scheme := "http"
	if cfg.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("load TLS certificate: %w", err)
		}
		s.ln = tls.NewListener(s.ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
		scheme = "https"
	}
	s.url = scheme + "://" + s.ln.Addr().String()
	return s, nil
}

// Check says what is wrong with a configuration and options before a
// server is built from them (New checks them again).
func Check(cfg config.Config, opts Options) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if opts.SigningKey != "" && opts.ResetKey {
		return errors.New("--key and --reset-key cannot be combined: --key already replaces the signing key")
	}
	if _, err := image.NewRegistries(cfg.Registries); err != nil {
		return fmt.Errorf("config.toml: %w", err)
	}
	return checkNetwork(cfg.Network)
}

// URL is where the server listens, e.g. http://127.0.0.1:5555.
func (s *Server) URL() string { return s.url }

// Handler is the server's HTTP handler (for tests that skip the listener).
func (s *Server) Handler() http.Handler { return s.handler }

func (s *Server) signer(opts Options) (*auth.Signer, error) {
	path := s.cfg.KeyPath()
	if opts.SigningKey != "" {
		return auth.SetSigner(path, opts.SigningKey)
	}
	signer, created, err := auth.LoadOrCreateSigner(path, opts.ResetKey)
	if err != nil {
		return nil, err
	}
	if created && opts.ResetKey {
		fmt.Fprintln(s.out, "new signing key made: every API key made before no longer works")
	} else if created {
		fmt.Fprintf(s.out, "new signing key saved to %s\n", path)
	}
	return signer, nil
}

// carriedPortal is portalbin.Binary; tests replace it.
var carriedPortal = portalbin.Binary

// portalBinary is what the engine runs in every sandbox, when the server
// was not told (Options.PortalBinary): the portal binary msb carries
// (sandbox/linux/portalbin), whose build matches this msb's, else msb's own
// executable, which plays the same roles at a higher cost per start (it
// says why).
func portalBinary(log *slog.Logger) (path string, image io.ReaderAt) {
	image, err := carriedPortal()
	if err == nil {
		return "", image
	}
	log.Warn("sandboxes run msb itself, which costs more CPU per start than the portal binary msb carries when it is built as the README does: " + err.Error())
	// The running binary, whatever has become of its path since.
	return "/proc/self/exe", nil
}

// openSandboxes builds the sandbox service on the configured engine, after
// cleaning up whatever a crashed server left. Without the engine (not
// root, say) the server still runs, and sandbox methods say why they
// cannot work.
func (s *Server) openSandboxes(ctx context.Context, portalPath string, now func() time.Time) error {
	s.closeSvc = func(context.Context) error { return nil }
	if os.Geteuid() != 0 {
		reason := "msb must run as root to create sandboxes (namespaces, cgroups and mounts need it)"
		s.log.Warn("sandboxes disabled", "reason", reason)
		s.sandboxes = sandbox.Unavailable{Reason: reason}
		return nil
	}
	var portal io.ReaderAt
	if portalPath == "" {
		portalPath, portal = portalBinary(s.log)
	}
	// One cgroup subtree per home, so servers with different homes never meet.
	sum := sha256.Sum256([]byte(s.cfg.Home))
	eng, err := engine.Open(s.cfg.Engine, engine.Options{
		StateDir:     s.cfg.EngineDir(),
		SandboxDir:   s.cfg.SandboxDir(),
		PortalBinary: portalPath,
		Portal:       portal,
		CgroupParent: "msb/" + hex.EncodeToString(sum[:6]),
		LayerLock:    filepath.Join(s.cfg.ImageDir(), image.PullLockFile),
		Log:          s.log,

		TotalPids:      orDefault(s.cfg.TotalPids, hostPids()*3/4),
		UserNamespaces: s.cfg.UserNamespaces,
		TotalMemoryMiB: orDefault(s.cfg.TotalMemory, hostMemoryMiB()*3/4),
		ReadyDiskMiB:   s.cfg.DefaultDisk,
		ReadyInits:     s.cfg.ReadyInits,
	})
	if err != nil {
		return err
	}
	registries, err := image.NewRegistries(s.cfg.Registries)
	if err != nil {
		eng.Close()
		return fmt.Errorf("config.toml: %w", err)
	}
	images, err := image.NewStore(s.cfg.ImageDir(), image.StoreOptions{Records: s.home.DB, Registries: &registries})
	if err != nil {
		eng.Close()
		return err
	}
	if dev := s.cfg.Network.Interface; dev != "" {
		if _, err := net.InterfaceByName(dev); err != nil {
			s.log.Warn("network.interface of config.toml is not a device of this host (yet): sandboxes' connections fail until it is", "interface", dev, "err", err)
		}
	}
	resolver := image.Resolver{Aliases: s.cfg.Images, Store: images}
	wp, err := s.warmPool(eng, resolver)
	if err != nil {
		eng.Close()
		return err
	}
	var warm sandbox.WarmPool // nil, not a nil *pool.Pool, when there is none
	if wp != nil {
		warm = wp
	}
	svc := sandbox.NewService(sandbox.ServiceOptions{
		Engine:        eng,
		Store:         s.home.DB,
		Images:        resolver,
		LogDir:        s.cfg.SandboxLogDir(),
		Pids:          s.cfg.SandboxPids,
		MaxCPUs:       orDefault(s.cfg.MaxCPUs, runtime.NumCPU()),
		MaxMemMB:      orDefault(s.cfg.MaxMemory, hostMemoryMiB()/2),
		DefaultDiskMB: s.cfg.DefaultDisk,
		VolumeOwner:   volumeOwner(s.cfg),
		MaxDiskMB:     s.cfg.MaxDisk,
		OutputMemory:  int64(s.cfg.OutputMemory) << 20,
		Quotas: func(ns string) sandbox.Quota {
			q := s.cfg.Quotas.Of(ns)
			return sandbox.Quota{Sandboxes: q.Sandboxes, MemoryMiB: q.Memory, CPUs: q.CPUs, DiskMiB: q.Disk}
		},
		Log: s.log,
		Now: now,

		MaxTimeout:           s.cfg.CallTimeout(),
		VolumeRoots:          s.cfg.Volumes(),
		PortBind:             s.cfg.PortBind,
		AllowPrivilegedPorts: s.cfg.AllowPrivilegedPorts,

		Network:         func(ns string) sandbox.NetworkBounds { return networkBounds(s.cfg.Network, ns) },
		NetDialer:       netDialer(s.cfg.Network),
		NetResolver:     netResolver(s.cfg.Network),
		OnNetworkDenial: denialSink(s.audit, s.log),
		Pool:            warm,
	})
	if err := svc.Recover(ctx); err != nil {
		eng.Close()
		return err
	}
	// After Recover: the engine has removed what a crashed server's pool
	// left, and the pool's new sandboxes cannot be mistaken for it.
	if wp != nil {
		wp.Start()
	}
	s.sandboxes = svc
	s.closeSvc = func(ctx context.Context) error {
		err := svc.Close(ctx)
		if cerr := eng.Close(); cerr != nil {
			s.log.Warn("sandbox cgroups left for the next start to clean", "err", cerr)
		}
		return err
	}
	return nil
}

// warmPool is the warm pool of config.toml's [pool] on eng (nil: none,
// because it is off, empty, or the engine cannot start sandboxes ahead of
// time). Each image's pool gets its sandboxes' share of pool.memory.
func (s *Server) warmPool(eng sandbox.Engine, images sandbox.Resolver) (*pool.Pool, error) {
	cfg := s.cfg.Pool
	if cfg.Sandboxes() == 0 {
		s.log.Info("warm pool off: every start starts its sandbox", "enabled", cfg.Enabled)
		return nil, nil
	}
	pooler, ok := eng.(sandbox.Pooler)
	if !ok {
		s.log.Warn("warm pool off: the engine cannot start sandboxes ahead of time", "engine", s.cfg.Engine)
		return nil, nil
	}
	sizes := map[string]pool.Size{}
	for ref, n := range cfg.Images {
		if n > 0 {
			sizes[ref] = pool.Size{Sandboxes: n, MemoryMiB: n * cfg.Share()}
		}
	}
	p, err := pool.New(pool.Options{Engine: pooler, Images: images, Pids: s.cfg.SandboxPids, DiskMiB: s.cfg.DefaultDisk, Pools: sizes, Log: s.log})
	if err != nil {
		return nil, fmt.Errorf("config.toml: [pool]: %w", err)
	}
	s.log.Info("warm pool", "sandboxes", cfg.Sandboxes(), "memory_mib", cfg.Memory, "images", cfg.Images)
	return p, nil
}

// orDefault is v, or def when v is 0.
func orDefault(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

// v1API is the v1 API (today's microsandbox SDKs) on the server's sandbox
// service, volumes and logs.
func (s *Server) v1API(gate *auth.Gate, now func() time.Time) *v1.Handler {
	if now == nil {
		now = time.Now
	}
	vols := &volume.Store{Meta: s.cfg.Path("meta", "volumes"), Now: now, Owner: volumeOwner(s.cfg)}
	if roots := s.cfg.Volumes(); len(roots) > 0 {
		vols.Root = roots[0]
	}
	logs := logfile.Dir{Root: s.cfg.SandboxLogDir(), Options: sandbox.LogOptions(now)}
	return v1.New(gate, s.sandboxes, s.sandboxes.Sessions(), vols, logs, s.log)
}

// hostMemoryMiB is the machine's memory, the most one sandbox may ask for.
func hostMemoryMiB() int {
	var info syscall.Sysinfo_t
	if err := syscall.Sysinfo(&info); err != nil {
		return 0
	}
	return int(uint64(info.Totalram) * uint64(info.Unit) >> 20)
}

// volumeOwner is the host owner of what msb makes in volumes.
func volumeOwner(c config.Config) int {
	if c.UserNamespaces {
		return engine.VolumeOwner
	}
	return 0
}

// hostPids is the size of the host's process table: the lower of
// kernel.pid_max and kernel.threads-max (every thread takes a pid).
func hostPids() int {
	n := 0
	for _, f := range []string{"/proc/sys/kernel/pid_max", "/proc/sys/kernel/threads-max"} {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if v, err := strconv.Atoi(strings.TrimSpace(string(data))); err == nil && v > 0 && (n == 0 || v < n) {
			n = v
		}
	}
	return n
}

// Run serves until ctx ends, then shuts down gracefully: no new
// connections, calls in flight finish (for up to 30 s), every sandbox is
// stopped. It writes server.json and the pid file while it serves.
func (s *Server) Run(ctx context.Context) error {
	srv := &http.Server{
		Handler:           withBodyDeadline(s.handler, s.bodyTimeout),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	info := Info{Pid: os.Getpid(), Address: s.url, Dev: s.cfg.Dev, Started: time.Now().UTC()}
	if err := writeInfo(&s.cfg, info); err != nil {
		return err
	}
	defer os.Remove(s.cfg.PidPath())
	defer os.Remove(s.cfg.StatePath())
	if s.cfg.Dev {
		fmt.Fprintf(s.out, "WARNING: development mode: authentication is OFF; anyone who can reach %s can run code\n", s.url)
	}
	fmt.Fprintf(s.out, "msb server listening on %s\n", s.url)
	if !s.cfg.Dev {
		fmt.Fprintln(s.out, "authentication: required (create a key with `msb server keygen`)")
	}
	s.log.Info("server started", "address", s.url, "dev", s.cfg.Dev, "home", s.cfg.Home)

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(s.ln) }()
	select {
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	s.log.Info("shutting down: finishing calls in flight")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		s.log.Warn("shutdown", "err", err)
	}
	return nil
}

// Close stops every sandbox and releases everything the server holds: the
// engine's cgroups, the audit log (flushed), the database, the home's
// lock. It may be called after a failed New, and more than once.
func (s *Server) Close() error {
	if s.closed {
		return nil
	}
	s.closed = true
	if s.ln != nil {
		s.ln.Close()
	}
	var errs []error
	if s.closeSvc != nil {
		s.log.Info("stopping sandboxes")
		if err := s.closeSvc(context.Background()); err != nil {
			s.log.Error("stop sandboxes", "err", err)
			errs = append(errs, err)
		}
	}
	if s.audit != nil {
		s.audit.Close() // after the HTTP server's shutdown: flushes every event
	}
	if s.home != nil {
		errs = append(errs, s.home.Close())
	}
	if s.lock != nil {
		s.lock.Close()
		s.log.Info("server stopped")
	}
	return errors.Join(errs...)
}

// RPC is the server's JSON-RPC front-end.
func (s *Server) RPC() *rpc.Server { return s.handler }
