package sandbox

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/msb-dev/msb/sandbox/logfile"
)

// Spawner runs a long-lived command in the background of a running sandbox
// (its exec or start script), streaming every line to out until it exits.
type Spawner interface {
	Spawn(ctx context.Context, id ID, req ExecRequest, out func(Line)) (int, error)
}

// LogPath is where the background output of sandbox id goes (the format
// of sandbox/logfile).
func LogPath(logDir string, id ID) string {
	return logfile.Path(logDir, id.Namespace(), id.Name())
}

// LogOptions are the bounds of a sandbox's log (MaxLog a run), for every
// writer of it; now is the clock of its entries.
func LogOptions(now func() time.Time) logfile.Options {
	return logfile.Options{Max: MaxLog, CutNotice: strings.TrimPrefix(LogCutNotice, "[msb] "), Now: now}
}

// background runs the sandbox's start command with its output in the
// sandbox's log, which starts a new run.
func (s *Service) background(id ID, b *box, req ExecRequest) {
	spawner, ok := s.opts.Engine.(Spawner)
	if !ok {
		s.opts.Log.Warn("engine cannot run background commands", "sandbox", id.String())
		return
	}
	w, err := logfile.Create(LogPath(s.opts.LogDir, id), LogOptions(s.opts.Now))
	if err != nil {
		s.opts.Log.Error("sandbox log", "sandbox", id.String(), "err", err)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	b.stopBg, b.bgDone = cancel, done
	go func() {
		defer close(done)
		defer w.Close()
		w.Write(logfile.System, fmt.Sprintf("%s %s", req.Command, strings.Join(req.Args, " ")))
		code, err := spawner.Spawn(ctx, id, req, func(l Line) {
			source, text := logfile.Stdout, l.Text
			switch {
			case text == LogCutNotice: // the portal's own notice
				source, text = logfile.System, strings.TrimPrefix(text, "[msb] ")
			case l.Stream == Stderr:
				source = logfile.Stderr
			}
			w.Write(source, text)
		})
		switch {
		case ctx.Err() != nil:
			w.Write(logfile.System, "stopped with the sandbox")
		case err != nil:
			w.Write(logfile.System, fmt.Sprintf("could not run: %v", err))
		default:
			w.Write(logfile.System, fmt.Sprintf("exited with code %d", code))
		}
	}()
}
