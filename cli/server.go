package cli

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/msb-dev/msb/auth"
	"github.com/msb-dev/msb/config"
	"github.com/msb-dev/msb/sandbox"
	"github.com/msb-dev/msb/sandbox/logfile"
	"github.com/msb-dev/msb/server"
)

// Main runs the msb command line with args (os.Args) and returns the
// process's exit code.
func Main(args []string) int {
	if err := newApp().Run(args); err != nil {
		var ec cli.ExitCoder
		if errors.As(err, &ec) {
			if msg := err.Error(); msg != "" {
				fmt.Fprintln(os.Stderr, "msb:", msg)
			}
			return ec.ExitCode()
		}
		fmt.Fprintln(os.Stderr, "msb:", err)
		return 1
	}
	return 0
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
	opts := server.Options{SigningKey: c.String("key"), ResetKey: c.Bool("reset-key"), Out: os.Stdout}
	if err := server.Check(cfg, opts); err != nil {
		return err // before a --detach, which could only say "see the log"
	}
	detached := os.Getenv(detachedEnv) != ""
	os.Unsetenv(detachedEnv) // not for what this server starts
	if c.Bool("detach") && !detached {
		return detach(cfg)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	srv, err := server.New(ctx, cfg, opts)
	if err != nil {
		return err
	}
	defer srv.Close()
	return srv.Run(ctx)
}

// detach starts the server in the background, waits until it serves, and
// returns.
func detach(cfg config.Config) error {
	if err := cfg.EnsureHome(); err != nil {
		return err
	}
	if server.Running(cfg) {
		return server.ErrRunning(cfg)
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
		if info, err := server.ReadInfo(cfg); err == nil && info.Pid == cmd.Process.Pid {
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
	info, err := server.ReadInfo(cfg)
	if err != nil || !server.Running(cfg) {
		return errors.New("no msb server is running for this home")
	}
	if err := syscall.Kill(info.Pid, syscall.SIGTERM); err != nil {
		return fmt.Errorf("stop server (pid %d): %w", info.Pid, err)
	}
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if !server.Running(cfg) {
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
	info, err := server.ReadInfo(cfg)
	running := err == nil && server.Running(cfg)
	if !running {
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
	home, err := server.OpenExistingHome(c.Context, cfg)
	if err == nil {
		defer home.Close()
		list, err := home.Registry.List(c.Context)
		if err != nil {
			return err
		}
		now := time.Now()
		for _, k := range list {
			if k.Status(now, home.Signer.ID()) == auth.StatusActive {
				active++
			}
		}
	}
	fmt.Printf("active keys:    %d\n", active)
	if running && home != nil {
		if err := printNamespaces(c.Context, home, cfg); err != nil {
			return err
		}
	}
	if !running {
		// As `systemctl status` does, so that scripts can test it.
		return cli.Exit("", exitNotRunning)
	}
	return nil
}

// printNamespaces prints what the running sandboxes of each namespace
// hold against its quota ("-": no bound).
func printNamespaces(ctx context.Context, home *server.Home, cfg config.Config) error {
	records, err := home.DB.Sandboxes(ctx, "*")
	if err != nil {
		return err
	}
	type usage struct{ sandboxes, memory, cpus, disk int }
	used := map[string]usage{}
	running := 0
	for _, r := range records {
		if r.State != sandbox.StateRunning {
			continue
		}
		running++
		u := used[r.ID.Namespace()]
		used[r.ID.Namespace()] = usage{u.sandboxes + 1, u.memory + r.Config.Memory, u.cpus + r.Config.CPUs, u.disk + r.Config.Disk}
	}
	names := slices.Sorted(maps.Keys(used))
	for ns := range cfg.Quotas.Namespaces {
		if _, ok := used[ns]; !ok {
			names = append(names, ns)
		}
	}
	slices.Sort(names)
	fmt.Printf("running:        %d sandboxes\n", running)
	fmt.Printf("warm pool:      %s\n", poolSummary(cfg.Pool))
	fmt.Printf("ready inits:    %d\n", cfg.ReadyInits)
	if len(names) == 0 {
		return nil
	}
	of := func(n, limit int) string {
		if limit <= 0 {
			return fmt.Sprintf("%d / -", n)
		}
		return fmt.Sprintf("%d / %d", n, limit)
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NAMESPACE\tSANDBOXES\tMEMORY (MiB)\tCPUS\tDISK (MiB)")
	for _, ns := range names {
		u, q := used[ns], cfg.Quotas.Of(ns)
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", ns, of(u.sandboxes, q.Sandboxes), of(u.memory, q.Memory), of(u.cpus, q.CPUs), of(u.disk, q.Disk))
	}
	return w.Flush()
}

// poolSummary says what the configured warm pool keeps waiting
// (sandbox.metrics.get lists what waits now).
func poolSummary(p config.Pool) string {
	if p.Sandboxes() == 0 {
		return "off"
	}
	var parts []string
	for _, ref := range slices.Sorted(maps.Keys(p.Images)) {
		if n := p.Images[ref]; n > 0 {
			parts = append(parts, fmt.Sprintf("%d × %s", n, ref))
		}
	}
	return fmt.Sprintf("%s, %d MiB each", strings.Join(parts, ", "), p.Share())
}

// exitNotRunning is the exit code of `msb server status` when no server
// runs, as systemctl's for an inactive unit.
const exitNotRunning = 3

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
	id, err := sandbox.ParseID(ns, c.Args().First())
	if err != nil {
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
	r, err := logfile.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("no log for sandbox %q in namespace %q: it has no exec or start script, or never started", id.Name(), id.Namespace())
	}
	if err != nil {
		return err
	}
	defer r.Close()
	out := bufio.NewWriter(os.Stdout)
	var ring []string
	for {
		e, _, ok, err := r.Next()
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		if tail == 0 {
			fmt.Fprintln(out, logfile.Text(e))
			continue
		}
		if len(ring) == tail {
			ring = ring[1:]
		}
		ring = append(ring, logfile.Text(e))
	}
	for _, l := range ring {
		fmt.Fprintln(out, l)
	}
	if err := out.Flush(); err != nil || !follow {
		return err
	}
	// Follow: print what is appended, and the next run's entries when the
	// sandbox is started again.
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	for {
		e, _, ok, err := r.Next()
		if err != nil {
			return err
		}
		if ok {
			fmt.Fprintln(out, logfile.Text(e))
			continue
		}
		if err := out.Flush(); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
	}
}
