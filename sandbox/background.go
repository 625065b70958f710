package sandbox

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Spawner runs a long-lived command in the background of a running sandbox
// (its exec or start script), streaming every line to out until it exits.
type Spawner interface {
	Spawn(ctx context.Context, id ID, req ExecRequest, out func(Line)) (int, error)
}

// LogPath is where the background output of sandbox id goes.
func LogPath(logDir string, id ID) string {
	return filepath.Join(logDir, id.Namespace(), id.Name()+".log")
}

// background runs the sandbox's start command with its output in the
// sandbox's log file.
func (s *Service) background(id ID, b *box, req ExecRequest) {
	spawner, ok := s.opts.Engine.(Spawner)
	if !ok {
		s.opts.Log.Warn("engine cannot run background commands", "sandbox", id.String())
		return
	}
	path := LogPath(s.opts.LogDir, id)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		s.opts.Log.Error("sandbox log", "sandbox", id.String(), "err", err)
		return
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		s.opts.Log.Error("sandbox log", "sandbox", id.String(), "err", err)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	b.stopBg, b.bgDone = cancel, done
	go func() {
		defer close(done)
		defer f.Close()
		var written int64
		full := false
		write := func(text string) {
			if full {
				return
			}
			// The portal stops at MaxLog already; this bounds the
			// file whatever the portal sends.
			if written+int64(len(text))+1 > MaxLog {
				full = true
				text = LogCutNotice
			}
			n, _ := f.WriteString(text + "\n")
			written += int64(n)
		}
		fmt.Fprintf(f, "[msb] %s: %s %s\n", s.opts.Now().UTC().Format(time.RFC3339), req.Command, strings.Join(req.Args, " "))
		code, err := spawner.Spawn(ctx, id, req, func(l Line) { write(l.Text) })
		switch {
		case ctx.Err() != nil:
			write("[msb] stopped with the sandbox")
		case err != nil:
			write(fmt.Sprintf("[msb] could not run: %v", err))
		default:
			write(fmt.Sprintf("[msb] exited with code %d", code))
		}
	}()
}
