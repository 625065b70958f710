package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/msb-dev/msb/sandbox/engine"
	"github.com/msb-dev/msb/sandbox/image"
	"github.com/msb-dev/msb/storage"
)

func pullCommand() *cli.Command {
	return &cli.Command{
		Name:      "pull",
		Usage:     "pull an OCI image into the cache (msb pull alpine:3.20)",
		ArgsUsage: "IMAGE",
		Action:    pullImage,
	}
}

func imageCommand() *cli.Command {
	return &cli.Command{
		Name:  "image",
		Usage: "manage the cache of pulled OCI images",
		Subcommands: []*cli.Command{
			{Name: "list", Aliases: []string{"ls"}, Usage: "list pulled images", Action: listImages},
			{Name: "rm", Usage: "forget a pulled image (its layers go with `msb image prune`)", ArgsUsage: "IMAGE", Action: removeImage},
			{Name: "prune", Usage: "delete the layers no pulled image uses", Action: pruneImages},
		},
	}
}

// openImages opens the image cache of the msb home; close the database
// when done.
func openImages(ctx context.Context) (*image.Store, *storage.DB, error) {
	cfg, err := loadConfig()
	if err != nil {
		return nil, nil, err
	}
	if err := cfg.EnsureHome(); err != nil {
		return nil, nil, err
	}
	db, err := storage.Open(ctx, cfg.DBPath())
	if err != nil {
		return nil, nil, err
	}
	registries, err := image.NewRegistries(cfg.Registries)
	if err != nil {
		db.Close()
		return nil, nil, fmt.Errorf("config.toml: %w", err)
	}
	store, err := image.NewStore(cfg.ImageDir(), image.StoreOptions{
		Records:    db,
		Registries: &registries,
		// Whatever server runs them, sandboxes record their layers in
		// their directories; prune keeps those.
		InUse: func() ([]string, error) { return engine.LayersInUse(cfg.Engine, cfg.SandboxDir()) },
	})
	if err != nil {
		db.Close()
		return nil, nil, err
	}
	return store, db, nil
}

func pullImage(c *cli.Context) error {
	if c.NArg() != 1 {
		return errors.New("give one image: msb pull IMAGE")
	}
	store, db, err := openImages(c.Context)
	if err != nil {
		return err
	}
	defer db.Close()
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	bar := &progressBar{w: os.Stderr, tty: isTerminal(os.Stderr)}
	t0 := time.Now()
	rec, err := store.Pull(ctx, c.Args().First(), bar.update)
	bar.finish()
	if err != nil {
		return err
	}
	fmt.Printf("%s\n  digest: %s\n  size:   %s in %d layers, pulled in %v\n", rec.Name, rec.Digest, humanBytes(rec.Size()), len(rec.Layers), time.Since(t0).Round(time.Millisecond))
	return nil
}

// progressBar draws a pull's progress on one line of a terminal (or, when
// not a terminal, a line per finished layer).
type progressBar struct {
	w      io.Writer
	tty    bool
	last   time.Time
	layers int
	drawn  bool
}

func (b *progressBar) update(p image.Progress) {
	if !b.tty {
		if p.LayersDone != b.layers {
			b.layers = p.LayersDone
			fmt.Fprintf(b.w, "layers %d/%d, %s/%s\n", p.LayersDone, p.Layers, humanBytes(p.BytesDone), humanBytes(p.Bytes))
		}
		return
	}
	if time.Since(b.last) < 100*time.Millisecond && p.LayersDone < p.Layers {
		return
	}
	b.last = time.Now()
	const width = 30
	frac := 1.0
	if p.Bytes > 0 {
		frac = float64(p.BytesDone) / float64(p.Bytes)
	}
	n := int(frac * width)
	fmt.Fprintf(b.w, "\r[%s%s] %3.0f%%  %s/%s  layers %d/%d ", strings.Repeat("=", n), strings.Repeat(" ", width-n), frac*100,
		humanBytes(p.BytesDone), humanBytes(p.Bytes), p.LayersDone, p.Layers)
	b.drawn = true
}

func (b *progressBar) finish() {
	if b.drawn {
		fmt.Fprintln(b.w)
	}
}

func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func listImages(c *cli.Context) error {
	store, db, err := openImages(c.Context)
	if err != nil {
		return err
	}
	defer db.Close()
	list, err := store.List()
	if err != nil {
		return err
	}
	if len(list) == 0 {
		fmt.Println("no images pulled yet: msb pull IMAGE, or start a sandbox with one")
		return nil
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "REFERENCE\tDIGEST\tSIZE\tLAYERS\tPULLED\tLAST USED")
	for _, r := range list {
		digest := r.Digest
		if len(digest) > 19 {
			digest = digest[:19]
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", r.Name, digest, humanBytes(r.Size()), len(r.Layers),
			r.Pulled.UTC().Format(time.RFC3339), r.LastUsed.UTC().Format(time.RFC3339))
	}
	return tw.Flush()
}

func removeImage(c *cli.Context) error {
	if c.NArg() != 1 {
		return errors.New("give one image: msb image rm IMAGE")
	}
	store, db, err := openImages(c.Context)
	if err != nil {
		return err
	}
	defer db.Close()
	rec, err := store.Remove(c.Args().First())
	if err != nil {
		return err
	}
	fmt.Printf("removed %s (%s); `msb image prune` frees layers no other image uses\n", rec.Name, rec.Digest)
	return nil
}

func pruneImages(c *cli.Context) error {
	store, db, err := openImages(c.Context)
	if err != nil {
		return err
	}
	defer db.Close()
	n, freed, err := store.Prune()
	if err != nil {
		return err
	}
	fmt.Printf("deleted %d unused layers, %s freed\n", n, humanBytes(freed))
	return nil
}
