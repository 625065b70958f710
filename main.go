// Command msb is a self-hosted sandbox server: it runs untrusted code in
// isolated Linux sandboxes behind an authenticated JSON-RPC API that the
// microsandbox SDKs speak (see README.md).
package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/msb-dev/msb/auth"
	"github.com/msb-dev/msb/auth/audit"
	"github.com/msb-dev/msb/config"
	"github.com/msb-dev/msb/config/sqlite"
	"github.com/msb-dev/msb/rpc"
	"github.com/msb-dev/msb/rpc/mcp"
	"github.com/msb-dev/msb/sandbox"
	"github.com/msb-dev/msb/sandbox/image"
	"github.com/msb-dev/msb/sandbox/linux"
	"github.com/msb-dev/msb/sandbox/portal"
)

func init() {
	// The same binary is also the engine's container init and, inside every
	// sandbox, the portal; neither role may run any of the CLI.
	linux.MaybeInit()
	if len(os.Args) > 1 && os.Args[1] == "portal" && os.Getpid() == 1 {
		portal.Main()
	}
}

func main() {
	if err := newApp().Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "msb:", err)
		os.Exit(1)
	}
}

func newApp() *cli.App {
	return &cli.App{
		Name:  "msb",
		Usage: "a self-hosted sandbox server for untrusted code",
		Commands: []*cli.Command{{
			Name:  "server",
			Usage: "run and manage the msb server",
			Subcommands: []*cli.Command{
				startCommand(),
				{Name: "stop", Usage: "stop the running server", Action: stopServer},
				{Name: "status", Usage: "show whether a server runs, where, and how it authenticates", Action: status},
				keygenCommand(),
				keysCommand(),
				auditCommand(),
				logCommand(),
			},
		}, pullCommand(), imageCommand()},
	}
}

// loadConfig returns the configuration of the msb home, before flags.
func loadConfig() (config.Config, error) {
	home, err := config.HomeFromEnv()
	if err != nil {
		return config.Config{}, err
	}
	return config.Load(home)
}

func startCommand() *cli.Command {
	return &cli.Command{
		Name:  "start",
		Usage: "start the server",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "host", Usage: "address to listen on", Value: config.DefaultHost},
			&cli.IntFlag{Name: "port", Usage: "port to listen on (0: any free port)", Value: config.DefaultPort},
			&cli.BoolFlag{Name: "dev", Usage: "development mode: no authentication (loopback only)"},
			&cli.StringFlag{Name: "key", Usage: "use this signing key (at least 32 characters) and save it"},
			&cli.BoolFlag{Name: "reset-key", Usage: "make a new signing key: every earlier API key stops working"},
			&cli.BoolFlag{Name: "detach", Usage: "run in the background; logs go to <home>/logs/server.log"},
			&cli.StringFlag{Name: "tls-cert", Usage: "serve HTTPS with this certificate (PEM)"},
			&cli.StringFlag{Name: "tls-key", Usage: "private key of --tls-cert (PEM)"},
		},
		Action: startServer,
	}
}

func startServer(c *cli.Context) error {
	cfg, err := loadConfig()
	if err != nil {
		return err
	}
	if c.IsSet("host") {
		cfg.Host = c.String("host")
	}
	if c.IsSet("port") {
		cfg.Port = c.Int("port")
	}
	if c.IsSet("tls-cert") {
		cfg.TLSCert = c.String("tls-cert")
	}
	if c.IsSet("tls-key") {
		cfg.TLSKey = c.String("tls-key")
	}
	cfg.Dev = c.Bool("dev")
	if err := cfg.Validate(); err != nil {
		return err
	}
	if c.IsSet("key") && c.Bool("reset-key") {
		return errors.New("--key and --reset-key cannot be combined: --key already replaces the signing key")
	}
	detached := os.Getenv(detachedEnv) != ""
	os.Unsetenv(detachedEnv) // not for what this server starts
	if c.Bool("detach") && !detached {
		return detach(cfg)
	}
	s := &server{cfg: cfg, key: c.String("key"), resetKey: c.Bool("reset-key"), out: os.Stdout}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	return s.run(ctx)
}

// server is one run of `msb server start`.
type server struct {
	cfg      config.Config
	key      string
	resetKey bool
	out      io.Writer
}

// runtimeInfo is written to server.json while the server runs, for
// `msb server status` and `msb server stop`.
type runtimeInfo struct {
	Pid     int       `json:"pid"`
	Address string    `json:"address"`
	Dev     bool      `json:"dev"`
	Started time.Time `json:"started"`
}

func (s *server) run(ctx context.Context) error {
	cfg := &s.cfg
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := cfg.EnsureHome(); err != nil {
		return err
	}
	lock, err := lockHome(cfg)
	if err != nil {
		return err
	}
	defer lock.Close()

	signer, err := s.signer()
	if err != nil {
		return err
	}
	db, err := sqlite.Open(ctx, cfg.DBPath())
	if err != nil {
		return err
	}
	defer db.Close()
	registry := auth.NewRegistry(db, cfg.KeyChangesPath(), nil)
	defer registry.Close()
	if wrote, err := cfg.WriteDefaultFile(); err != nil {
		return err
	} else if wrote {
		log.Info("wrote default config with the image alias table", "path", cfg.Path(config.FileName))
	}

	manager, closeSandboxes, err := s.sandboxes(ctx, db, log)
	if err != nil {
		return err
	}

	var authn rpc.Authenticator
	var rpcOpts []rpc.Option
	if !cfg.Dev {
		authn = &auth.Authenticator{Signer: signer, Registry: registry}
		auditLog := audit.NewWriter(db, audit.Options{Retention: cfg.Retention(), Log: log})
		defer auditLog.Close() // after the HTTP server's shutdown: flushes every event
		rpcOpts = append(rpcOpts, rpc.WithLimits(auth.NewLimits(registry, keyDefaults(cfg), nil)), rpc.WithAudit(auditLog))
	}
	handler := rpc.NewServer(serverMethods(manager, db, signer, registry, cfg), authn, log, rpcOpts...)
	handler.Mount(mcp.Path, mcp.NewHandler(handler, &mcp.Options{Logger: log}))

	ln, err := net.Listen("tcp", cfg.Addr())
	if err != nil {
		return fmt.Errorf("listen on %s: %w (is another program using the port? choose one with --port)", cfg.Addr(), err)
	}
	scheme := "http"
	if cfg.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			ln.Close()
			return fmt.Errorf("load TLS certificate: %w", err)
		}
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
		scheme = "https"
	}
	address := scheme + "://" + ln.Addr().String()
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	info := runtimeInfo{Pid: os.Getpid(), Address: address, Dev: cfg.Dev, Started: time.Now().UTC()}
	if err := writeRuntimeInfo(cfg, info); err != nil {
		ln.Close()
		return err
	}
	defer os.Remove(cfg.PidPath())
	defer os.Remove(cfg.StatePath())

	if cfg.Dev {
		fmt.Fprintf(s.out, "WARNING: development mode: authentication is OFF; anyone who can reach %s can run code\n", address)
	}
	fmt.Fprintf(s.out, "msb server listening on %s\n", address)
	if !cfg.Dev {
		fmt.Fprintln(s.out, "authentication: required (create a key with `msb server keygen`)")
	}
	log.Info("server started", "address", address, "dev", cfg.Dev, "home", cfg.Home)

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	select {
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down: finishing calls in flight")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		log.Warn("shutdown", "err", err)
	}
	log.Info("stopping sandboxes")
	if err := closeSandboxes(context.Background()); err != nil {
		log.Error("stop sandboxes", "err", err)
	}
	log.Info("server stopped")
	return nil
}

// sandboxes builds the sandbox service on the Linux engine, after cleaning
// up whatever a crashed server left. Without the engine (not root, say) the
// server still runs, and sandbox methods say why they cannot work.
func (s *server) sandboxes(ctx context.Context, db *sql.DB, log *slog.Logger) (sandbox.Manager, func(context.Context) error, error) {
	noop := func(context.Context) error { return nil }
	if os.Geteuid() != 0 {
		reason := "msb must run as root to create sandboxes (namespaces, cgroups and mounts need it)"
		log.Warn("sandboxes disabled", "reason", reason)
		return sandbox.Unavailable{Reason: reason}, noop, nil
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, nil, fmt.Errorf("find the msb binary: %w", err)
	}
	// One cgroup subtree per home, so servers with different homes never meet.
	sum := sha256.Sum256([]byte(s.cfg.Home))
	engine, err := linux.New(linux.Config{
		StateDir:     s.cfg.EngineDir(),
		SandboxDir:   s.cfg.SandboxDir(),
		PortalBinary: exe,
		CgroupParent: "msb/" + hex.EncodeToString(sum[:6]),
		LayerLock:    filepath.Join(s.cfg.ImageDir(), image.PullLockFile),
	})
	if err != nil {
		return nil, nil, fmt.Errorf("start the sandbox engine: %w", err)
	}
	images, err := image.NewStore(s.cfg.ImageDir(), image.StoreOptions{})
	if err != nil {
		return nil, nil, err
	}
	svc := sandbox.NewService(sandbox.ServiceOptions{
		Engine:   engine,
		Store:    sandbox.NewStore(db),
		Images:   image.Resolver{Aliases: s.cfg.Images, Store: images},
		LogDir:   s.cfg.SandboxLogDir(),
		Pids:     s.cfg.SandboxPids,
		MaxCPUs:  runtime.NumCPU(),
		MaxMemMB: hostMemoryMiB(),
		Log:      log,

		VolumeRoots:          s.cfg.Volumes(),
		PortBind:             s.cfg.PortBind,
		AllowPrivilegedPorts: s.cfg.AllowPrivilegedPorts,
	})
	if err := svc.Recover(ctx); err != nil {
		return nil, nil, err
	}
	closeAll := func(ctx context.Context) error {
		err := svc.Close(ctx)
		if cerr := engine.Close(); cerr != nil {
			log.Warn("sandbox cgroups left for the next start to clean", "err", cerr)
		}
		return err
	}
	return svc, closeAll, nil
}

// hostMemoryMiB is the machine's memory, the most one sandbox may ask for.
func hostMemoryMiB() int {
	var info syscall.Sysinfo_t
	if err := syscall.Sysinfo(&info); err != nil {
		return 0
	}
	return int(uint64(info.Totalram) * uint64(info.Unit) >> 20)
}

func (s *server) signer() (*auth.Signer, error) {
	path := s.cfg.KeyPath()
	if s.key != "" {
		return auth.SetSigner(path, s.key)
	}
	signer, created, err := auth.LoadOrCreateSigner(path, s.resetKey)
	if err != nil {
		return nil, err
	}
	if created && s.resetKey {
		fmt.Fprintln(s.out, "new signing key made: every API key made before no longer works")
	} else if created {
		fmt.Fprintf(s.out, "new signing key saved to %s\n", path)
	}
	return signer, nil
}

// lockHome takes the home's server lock, held for the life of the server;
// the kernel releases it however the process ends.
func lockHome(cfg *config.Config) (*os.File, error) {
	f, err := os.OpenFile(cfg.LockPath(), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if info, ierr := readRuntimeInfo(cfg); ierr == nil {
			return nil, fmt.Errorf("an msb server is already running (pid %d, %s): stop it with `msb server stop`", info.Pid, info.Address)
		}
		return nil, errors.New("an msb server is already running for this home: stop it with `msb server stop`")
	}
	return f, nil
}

// serverRunning reports whether a server holds the home's lock.
func serverRunning(cfg *config.Config) bool {
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

func writeRuntimeInfo(cfg *config.Config, info runtimeInfo) error {
	data, _ := json.MarshalIndent(info, "", "  ")
	if err := os.WriteFile(cfg.StatePath(), append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", cfg.StatePath(), err)
	}
	if err := os.WriteFile(cfg.PidPath(), []byte(strconv.Itoa(info.Pid)+"\n"), 0o644); err != nil {
		return fmt.Errorf("write pid file: %w", err)
	}
	return nil
}

func readRuntimeInfo(cfg *config.Config) (runtimeInfo, error) {
	var info runtimeInfo
	data, err := os.ReadFile(cfg.StatePath())
	if err != nil {
		return info, err
	}
	return info, json.Unmarshal(data, &info)
}

// detach starts the server in the background, waits until it serves, and
// returns.
func detach(cfg config.Config) error {
	if err := cfg.EnsureHome(); err != nil {
		return err
	}
	if serverRunning(&cfg) {
		_, err := lockHome(&cfg)
		return err
	}
	if err := os.MkdirAll(cfg.LogDir(), 0o700); err != nil {
		return err
	}
	logPath := cfg.Path("logs", "server.log")
	logFile, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open server log: %w", err)
	}
	defer logFile.Close()
	var args []string
	for _, a := range os.Args[1:] {
		if a != "--detach" && a != "-detach" && a != "--detach=true" {
			args = append(args, a)
		}
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(exe, args...)
	// The marker, not the arguments, keeps the child from detaching again
	// (--detach has many spellings: --detach=1, -detach=t, ...).
	cmd.Env = append(os.Environ(), detachedEnv+"=1")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	os.Remove(cfg.StatePath())
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start server in the background: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case <-exited:
			return fmt.Errorf("the server exited at start; see %s", logPath)
		case <-deadline:
			return fmt.Errorf("the server did not start within 30s; see %s", logPath)
		case <-time.After(50 * time.Millisecond):
		}
		if info, err := readRuntimeInfo(&cfg); err == nil && info.Pid == cmd.Process.Pid {
			fmt.Printf("msb server running in the background on %s (pid %d; log: %s)\n", info.Address, info.Pid, logPath)
			if info.Dev {
				fmt.Println("WARNING: development mode: authentication is OFF")
			}
			return nil
		}
	}
}

// detachedEnv marks the server process that --detach started.
const detachedEnv = "MSB_DETACHED"

func stopServer(c *cli.Context) error {
	cfg, err := loadConfig()
	if err != nil {
		return err
	}
	info, err := readRuntimeInfo(&cfg)
	if err != nil || !serverRunning(&cfg) {
		return errors.New("no msb server is running for this home")
	}
	if err := syscall.Kill(info.Pid, syscall.SIGTERM); err != nil {
		return fmt.Errorf("stop server (pid %d): %w", info.Pid, err)
	}
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if !serverRunning(&cfg) {
			fmt.Printf("msb server stopped (pid %d)\n", info.Pid)
			return nil
		}
	}
	return fmt.Errorf("server (pid %d) is still stopping after 60s", info.Pid)
}

func status(c *cli.Context) error {
	cfg, err := loadConfig()
	if err != nil {
		return err
	}
	info, err := readRuntimeInfo(&cfg)
	if err != nil || !serverRunning(&cfg) {
		fmt.Println("server:         not running")
	} else {
		fmt.Println("server:         running")
		fmt.Printf("address:        %s\n", info.Address)
		fmt.Printf("pid:            %d\n", info.Pid)
		if info.Dev {
			fmt.Println("authentication: OFF (development mode)")
		} else {
			fmt.Println("authentication: required")
		}
	}
	active := 0
	if keys, signer, db, err := openKeys(c.Context, &cfg); err == nil {
		defer db.Close()
		list, err := keys.List(c.Context)
		if err != nil {
			return err
		}
		now := time.Now()
		for _, k := range list {
			if k.Status(now, signer.ID()) == auth.StatusActive {
				active++
			}
		}
	}
	fmt.Printf("active keys:    %d\n", active)
	return nil
}

// openKeys opens the key registry of an existing home, read-mostly, for the
// CLI. It fails if the home has no signing key or database yet.
func openKeys(ctx context.Context, cfg *config.Config) (*auth.Registry, *auth.Signer, *sql.DB, error) {
	signer, err := auth.LoadSigner(cfg.KeyPath())
	if err != nil {
		return nil, nil, nil, err
	}
	if _, err := os.Stat(cfg.DBPath()); err != nil {
		return nil, nil, nil, err
	}
	db, err := sqlite.Open(ctx, cfg.DBPath())
	if err != nil {
		return nil, nil, nil, err
	}
	return auth.NewRegistry(db, cfg.KeyChangesPath(), nil), signer, db, nil
}

func logCommand() *cli.Command {
	return &cli.Command{
		Name:      "log",
		Usage:     "print the output of a sandbox's exec or start script",
		ArgsUsage: "SANDBOX",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "namespace", Usage: "the sandbox's namespace", Value: "default"},
			&cli.BoolFlag{Name: "follow", Aliases: []string{"f"}, Usage: "keep printing as the log grows"},
			&cli.IntFlag{Name: "tail", Usage: "print only the last N lines (0: all)"},
		},
		Action: printLog,
	}
}

func printLog(c *cli.Context) error {
	if c.NArg() == 0 {
		return errors.New("give the sandbox's name: msb server log SANDBOX --namespace NS")
	}
	ns, follow, tail := c.String("namespace"), c.Bool("follow"), c.Int("tail")
	if c.NArg() > 1 {
		// urfave/cli stops at the first argument; the usage puts flags after it.
		fs := flag.NewFlagSet("log", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		fs.StringVar(&ns, "namespace", ns, "")
		fs.BoolVar(&follow, "follow", follow, "")
		fs.BoolVar(&follow, "f", follow, "")
		fs.IntVar(&tail, "tail", tail, "")
		if err := fs.Parse(c.Args().Tail()); err != nil {
			return fmt.Errorf("msb server log: %w", err)
		}
		if fs.NArg() > 0 {
			return fmt.Errorf("unexpected argument %q", fs.Arg(0))
		}
	}
	id := sandbox.ID{Namespace: ns, Name: c.Args().First()}
	if err := id.Validate(); err != nil {
		return err
	}
	if tail < 0 {
		return errors.New("--tail must be 0 or more")
	}
	cfg, err := loadConfig()
	if err != nil {
		return err
	}
	path := sandbox.LogPath(cfg.SandboxLogDir(), id)
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("no log for sandbox %q in namespace %q: it has no exec or start script, or never started", id.Name, id.Namespace)
	}
	if err != nil {
		return err
	}
	defer f.Close()
	out := bufio.NewWriter(os.Stdout)
	if n := tail; n > 0 {
		ring := make([]string, 0, n)
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			if len(ring) == n {
				ring = ring[1:]
			}
			ring = append(ring, sc.Text())
		}
		for _, l := range ring {
			fmt.Fprintln(out, l)
		}
	} else if _, err := io.Copy(out, f); err != nil {
		return err
	}
	out.Flush()
	if !follow {
		return nil
	}
	// Follow: print what is appended; start over if the log is replaced
	// (the sandbox was started again).
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	buf := make([]byte, 32<<10)
	for {
		n, err := f.Read(buf)
		if n > 0 {
			os.Stdout.Write(buf[:n])
			continue
		}
		if err != nil && err != io.EOF {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
		if fi, err := os.Stat(path); err == nil {
			if cur, err := f.Stat(); err == nil && !os.SameFile(fi, cur) {
				f.Close()
				if f, err = os.Open(path); err != nil {
					return err
				}
			}
		}
	}
}
