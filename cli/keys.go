package cli

// The key and audit commands: keygen, keys list|revoke|rotate|limit, audit.

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/urfave/cli/v2"

	"github.com/msb-dev/msb/auth"
	"github.com/msb-dev/msb/auth/audit"
	"github.com/msb-dev/msb/auth/ratelimit"
	"github.com/msb-dev/msb/duration"
	"github.com/msb-dev/msb/rpc"
	"github.com/msb-dev/msb/server"
	"github.com/msb-dev/msb/storage"
)

// operator is who the CLI acts as: the machine's operator, with full rights.
var operator = auth.FullAccess("cli")

// auditCLI records a key change made at the command line, so the audit log
// shows every key change, not only those made over the API.
func auditCLI(ctx context.Context, db audit.Store, method, namespace, detail string) {
	err := db.AppendEvents(ctx, audit.Event{Time: time.Now(), KeyID: "cli", KeyNamespace: "*", Method: method, Namespace: namespace,
		Outcome: audit.OK, Detail: detail, Remote: "local"})
	if err != nil {
		fmt.Fprintln(os.Stderr, "warning: could not record the change in the audit log:", err)
	}
}

// trailingFlags parses flags given after the command's argument
// (`keys rotate ID --grace 24h`), which urfave/cli leaves in the arguments.
func trailingFlags(c *cli.Context, fs *flag.FlagSet) error {
	if c.NArg() <= 1 {
		return nil
	}
	fs.SetOutput(io.Discard)
	if err := fs.Parse(c.Args().Tail()); err != nil {
		return fmt.Errorf("msb server keys %s: %w", c.Command.Name, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return nil
}

func keygenCommand() *cli.Command {
	return &cli.Command{
		Name:  "keygen",
		Usage: "create an API key (printed once)",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "expire", Usage: "lifetime: 30s, 15m, 24h, 7d, 2w, 3mo, 1y (default: never expires)"},
			&cli.StringFlag{Name: "namespace", Usage: "namespace the key may use (default: all, \"*\")", Value: "*"},
			&cli.StringFlag{Name: "name", Usage: "a label to recognise the key by"},
			&cli.StringSliceFlag{Name: "scope", Usage: "a scope the key has (repeatable): " + strings.Join(auth.ScopeNames(), ", ") + " (default: all, \"*\")"},
			&cli.StringFlag{Name: "rate", Usage: "rate limit, e.g. 600/m, 10/s, 1000/h (default: rate_limit in config.toml)"},
			&cli.StringFlag{Name: "start-rate", Usage: "rate limit of sandbox.start (default: start_rate_limit in config.toml)"},
			&cli.Int64Flag{Name: "max-uses", Usage: "calls the key may make in all, then it stops working (default: unlimited)"},
		},
		Action: keygen,
	}
}

// openHome opens (creating if needed) the home's signing key and database
// for a command that writes keys.
func openHome(ctx context.Context) (*server.Home, error) {
	cfg, err := loadConfig()
	if err != nil {
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return server.OpenHome(ctx, cfg)
}

// openExistingHome opens the home of a command that reads keys or audit
// events, which exist only once a key was made or a server ran.
func openExistingHome(ctx context.Context) (*server.Home, error) {
	cfg, err := loadConfig()
	if err != nil {
		return nil, err
	}
	return server.OpenExistingHome(ctx, cfg)
}

func parseRateFlag(c *cli.Context, name string) (ratelimit.Rate, error) {
	if !c.IsSet(name) {
		return ratelimit.Rate{}, nil
	}
	r, err := ratelimit.Parse(c.String(name))
	if err != nil {
		return r, fmt.Errorf("--%s: %w", name, err)
	}
	return r, nil
}

func keygen(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", c.Args().First())
	}
	o := auth.CreateOptions{Namespace: c.String("namespace"), Label: c.String("name"), MaxUses: c.Int64("max-uses")}
	var err error
	if c.IsSet("expire") {
		if o.Expire, err = duration.Parse(c.String("expire")); err != nil {
			return fmt.Errorf("--expire: %w", err)
		}
	}
	if o.Scopes, err = auth.ParseScopes(c.StringSlice("scope")); err != nil {
		return fmt.Errorf("--scope: %w", err)
	}
	if o.Rate, err = parseRateFlag(c, "rate"); err != nil {
		return err
	}
	if o.StartRate, err = parseRateFlag(c, "start-rate"); err != nil {
		return err
	}
	if o.MaxUses < 0 {
		return errors.New("--max-uses must be 0 (unlimited) or more")
	}
	home, err := openHome(c.Context)
	if err != nil {
		return err
	}
	defer home.Close()
	key, rec, err := home.Keys().Create(c.Context, operator, o)
	if err != nil {
		return err
	}
	auditCLI(c.Context, home.DB, "cli: keygen", rec.Namespace, "created key "+rec.ID)
	// The key alone goes to stdout so `KEY=$(msb server keygen)` works.
	fmt.Fprintln(os.Stderr, "API key created. It is shown only this once: store it now.")
	describeKey(os.Stderr, rec)
	fmt.Println(key)
	return nil
}

func describeKey(w io.Writer, k auth.Key) {
	fmt.Fprintf(w, "  id:        %s\n", k.ID)
	if k.Label != "" {
		fmt.Fprintf(w, "  name:      %s\n", k.Label)
	}
	fmt.Fprintf(w, "  namespace: %s\n", k.Namespace)
	fmt.Fprintf(w, "  scopes:    %s\n", k.Scopes)
	fmt.Fprintf(w, "  expires:   %s\n", expiry(k.Expires))
	fmt.Fprintf(w, "  limits:    %s\n", limits(k))
}

func limits(k auth.Key) string {
	rate, start := k.Rate.String(), k.StartRate.String()
	if rate == "" {
		rate = "default"
	}
	if start == "" {
		start = "default"
	}
	uses := "unlimited"
	if k.MaxUses > 0 {
		uses = fmt.Sprintf("%d/%d", k.Uses, k.MaxUses)
	}
	return fmt.Sprintf("rate %s, start %s, uses %s", rate, start, uses)
}

func expiry(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.UTC().Format(time.RFC3339)
}

func keysCommand() *cli.Command {
	return &cli.Command{
		Name:  "keys",
		Usage: "list, revoke, rotate and limit API keys",
		Subcommands: []*cli.Command{
			{Name: "list", Usage: "list every API key, with warnings about keys expiring soon or unused", Action: listKeys},
			{Name: "revoke", Usage: "revoke an API key: msb server keys revoke ID", ArgsUsage: "ID", Action: revokeKey},
			{
				Name: "rotate", Usage: "replace a key by a new one with the same name, namespace, scopes and limits", ArgsUsage: "ID [--grace 24h]",
				Flags:  []cli.Flag{&cli.StringFlag{Name: "grace", Usage: "how long the old key keeps working (0: revoked at once)", Value: "0"}},
				Action: rotateKey,
			},
			{
				Name: "limit", Usage: "change a key's limits", ArgsUsage: "ID [--rate 600/m] [--start-rate 10/m] [--max-uses N]",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "rate", Usage: "rate limit, or \"default\" for config.toml's"},
					&cli.StringFlag{Name: "start-rate", Usage: "rate limit of sandbox.start, or \"default\""},
					&cli.Int64Flag{Name: "max-uses", Usage: "calls the key may make in all (0: unlimited)"},
				},
				Action: limitKey,
			},
		},
	}
}

// Thresholds of the warnings of `keys list`.
const (
	expiringWithin = 7 * 24 * time.Hour
	unusedFor      = 90 * 24 * time.Hour
)

func listKeys(c *cli.Context) error {
	home, err := openExistingHome(c.Context)
	if errors.Is(err, os.ErrNotExist) {
		fmt.Println("no API keys yet: create one with `msb server keygen`")
		return nil
	}
	if err != nil {
		return err
	}
	defer home.Close()
	signer := home.Signer
	list, err := home.Registry.List(c.Context)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tNAMESPACE\tSCOPES\tCREATED\tEXPIRES\tLAST USED\tUSES\tSTATUS")
	now := time.Now()
	var warnings []string
	for _, k := range list {
		lastUsed := "never"
		if !k.LastUsed.IsZero() {
			lastUsed = k.LastUsed.UTC().Format(time.RFC3339)
		}
		label := k.Label
		if label == "" {
			label = "-"
		}
		uses := fmt.Sprint(k.Uses)
		if k.MaxUses > 0 {
			uses += fmt.Sprintf("/%d", k.MaxUses)
		}
		st := k.Status(now, signer.ID())
		ends := k.Expires
		if st == auth.StatusRotated && (ends.IsZero() || k.Revoked.Before(ends)) {
			ends = k.Revoked // when its grace ends
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k.ID, label, k.Namespace, k.Scopes,
			k.Created.UTC().Format(time.RFC3339), expiry(ends), lastUsed, uses, st)
		if st != auth.StatusActive {
			continue
		}
		if !k.Expires.IsZero() && k.Expires.Sub(now) < expiringWithin {
			warnings = append(warnings, fmt.Sprintf("warning: key %s (%s) expires in %s, at %s: replace it with `msb server keys rotate %s --grace 24h`",
				k.ID, label, k.Expires.Sub(now).Round(time.Minute), expiry(k.Expires), k.ID))
		}
		last := k.LastUsed
		if last.IsZero() {
			last = k.Created
		}
		if now.Sub(last) > unusedFor {
			what := "has not been used for 90 days"
			if k.LastUsed.IsZero() {
				what = "was made over 90 days ago and never used"
			}
			warnings = append(warnings, fmt.Sprintf("warning: key %s (%s) %s: if nothing needs it, revoke it with `msb server keys revoke %s`",
				k.ID, label, what, k.ID))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, w := range warnings {
		fmt.Fprintln(os.Stderr, w)
	}
	return nil
}

func revokeKey(c *cli.Context) error {
	if c.NArg() != 1 {
		return errors.New("give the id of the key to revoke (see `msb server keys list`)")
	}
	home, err := openExistingHome(c.Context)
	if err != nil {
		return fmt.Errorf("no key registry in this msb home: %w", err)
	}
	defer home.Close()
	k, err := home.Registry.Revoke(c.Context, strings.TrimSpace(c.Args().First()))
	if err != nil {
		return err
	}
	auditCLI(c.Context, home.DB, "cli: keys revoke", k.Namespace, "revoked key "+k.ID)
	fmt.Printf("key %s revoked\n", k.ID)
	return nil
}

func rotateKey(c *cli.Context) error {
	if c.NArg() < 1 {
		return errors.New("give the id of the key to rotate (see `msb server keys list`): msb server keys rotate ID [--grace 24h]")
	}
	graceText := c.String("grace")
	fs := flag.NewFlagSet("rotate", flag.ContinueOnError)
	fs.StringVar(&graceText, "grace", graceText, "")
	if err := trailingFlags(c, fs); err != nil {
		return err
	}
	grace, err := rpc.ParseGrace(graceText)
	if err != nil {
		return fmt.Errorf("--grace: %w (or 0 to revoke the old key at once)", err)
	}
	home, err := openHome(c.Context)
	if err != nil {
		return err
	}
	defer home.Close()
	r, err := home.Keys().Rotate(c.Context, operator, strings.TrimSpace(c.Args().First()), grace)
	if err != nil {
		return err
	}
	auditCLI(c.Context, home.DB, "cli: keys rotate", r.New.Namespace, fmt.Sprintf("rotated key %s to %s, grace %s", r.Old.ID, r.New.ID, grace))
	fmt.Fprintf(os.Stderr, "API key %s rotated. The new key is shown only this once: store it now.\n", r.Old.ID)
	describeKey(os.Stderr, r.New)
	if grace == 0 {
		fmt.Fprintf(os.Stderr, "The old key %s is revoked. (Use --grace 24h to keep it working while clients switch.)\n", r.Old.ID)
	} else {
		fmt.Fprintf(os.Stderr, "The old key %s keeps working until %s.\n", r.Old.ID, expiry(r.Old.Revoked))
	}
	fmt.Println(r.Key)
	return nil
}

func limitKey(c *cli.Context) error {
	if c.NArg() < 1 {
		return errors.New("give the id of the key (see `msb server keys list`): msb server keys limit ID [--rate 600/m] [--start-rate 10/m] [--max-uses N]")
	}
	var l auth.LimitChange
	rate, start, maxUses := c.String("rate"), c.String("start-rate"), c.Int64("max-uses")
	setRate, setStart, setUses := c.IsSet("rate"), c.IsSet("start-rate"), c.IsSet("max-uses")
	fs := flag.NewFlagSet("limit", flag.ContinueOnError)
	fs.StringVar(&rate, "rate", rate, "")
	fs.StringVar(&start, "start-rate", start, "")
	fs.Int64Var(&maxUses, "max-uses", maxUses, "")
	if err := trailingFlags(c, fs); err != nil {
		return err
	}
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "rate":
			setRate = true
		case "start-rate":
			setStart = true
		case "max-uses":
			setUses = true
		}
	})
	if !setRate && !setStart && !setUses {
		return errors.New("nothing to change: give --rate, --start-rate or --max-uses")
	}
	for _, f := range []struct {
		set  bool
		name string
		in   string
		out  **ratelimit.Rate
	}{{setRate, "rate", rate, &l.Rate}, {setStart, "start-rate", start, &l.StartRate}} {
		if !f.set {
			continue
		}
		r, err := rpc.ParseLimit(f.in)
		if err != nil {
			return fmt.Errorf("--%s: %w (or \"default\")", f.name, err)
		}
		*f.out = &r
	}
	if setUses {
		if maxUses < 0 {
			return errors.New("--max-uses must be 0 (unlimited) or more")
		}
		l.MaxUses = &maxUses
	}
	home, err := openHome(c.Context)
	if err != nil {
		return err
	}
	defer home.Close()
	k, err := home.Keys().SetLimits(c.Context, operator, strings.TrimSpace(c.Args().First()), l)
	if err != nil {
		return err
	}
	auditCLI(c.Context, home.DB, "cli: keys limit", k.Namespace, "changed limits of key "+k.ID)
	fmt.Printf("key %s: %s\n", k.ID, limits(k))
	return nil
}

func auditCommand() *cli.Command {
	return &cli.Command{
		Name:  "audit",
		Usage: "show the audit log: calls that changed something, and refused calls",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "key", Usage: "only events of this key id (or a prefix of it)"},
			&cli.StringFlag{Name: "namespace", Usage: "only events in this namespace"},
			&cli.StringFlag{Name: "since", Usage: "only events of the last 30s, 15m, 1h, 7d, ..."},
			&cli.IntFlag{Name: "limit", Usage: "at most this many events, newest first", Value: 1000},
			&cli.BoolFlag{Name: "json", Usage: "print a JSON array of events"},
		},
		Action: showAudit,
	}
}

func showAudit(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", c.Args().First())
	}
	f := audit.Filter{KeyID: c.String("key"), Namespace: c.String("namespace"), Limit: c.Int("limit")}
	if c.IsSet("since") {
		d, err := duration.Parse(c.String("since"))
		if err != nil {
			return fmt.Errorf("--since: %w", err)
		}
		f.Since = time.Now().Add(-d)
	}
	if f.Limit < 1 {
		return errors.New("--limit must be 1 or more")
	}
	cfg, err := loadConfig()
	if err != nil {
		return err
	}
	if _, err := os.Stat(cfg.DBPath()); err != nil {
		return fmt.Errorf("no msb database in %s yet: start the server first", cfg.Home)
	}
	db, err := storage.Open(c.Context, cfg.DBPath())
	if err != nil {
		return err
	}
	defer db.Close()
	events, err := db.ListEvents(c.Context, f)
	if err != nil {
		return err
	}
	if c.Bool("json") {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(events)
	}
	if len(events) == 0 {
		fmt.Fprintln(os.Stderr, "no audit events match")
		return nil
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tKEY\tNAME\tNAMESPACE\tMETHOD\tSANDBOX\tOUTCOME\tCODE\tREMOTE\tDETAIL")
	dash := func(s string) string {
		if s == "" {
			return "-"
		}
		// Whatever a record holds, it cannot drive the terminal.
		for _, r := range s {
			if !unicode.IsGraphic(r) {
				return strconv.QuoteToGraphic(s)
			}
		}
		return s
	}
	for _, e := range events {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", e.Time.UTC().Format(time.RFC3339), dash(e.KeyID), dash(e.KeyLabel),
			dash(e.Namespace), dash(e.Method), dash(e.Sandbox), e.Outcome, e.Code, dash(e.Remote), dash(e.Detail))
	}
	return tw.Flush()
}
