package v1

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox"
	"github.com/msb-dev/msb/sandbox/logfile"
)

// How the log stream paces itself.
var (
	// logPoll is how often a follower looks for new entries and whether
	// the sandbox still runs.
	logPoll = 200 * time.Millisecond
	// logKeepAlive is how often an idle stream sends a comment, so that
	// proxies keep it open.
	logKeepAlive = 15 * time.Second
)

// logSources are the sources a stream may ask for.
var logSources = map[string]bool{logfile.Stdout: true, logfile.Stderr: true, logfile.Output: true, logfile.System: true}

// parseSources reads the sources= query: a comma-separated list, "all",
// or nothing (stdout, stderr and output, the SDK's default).
func parseSources(s string) (map[string]bool, error) {
	if s == "" {
		s = "stdout,stderr,output"
	}
	out := map[string]bool{}
	for _, name := range strings.Split(s, ",") {
		name = strings.TrimSpace(name)
		switch {
		case name == "all":
			for k := range logSources {
				out[k] = true
			}
		case logSources[name]:
			out[name] = true
		default:
			return nil, errdefs.Invalidf("sources: %.32q is not one of stdout, stderr, output, system, all", name)
		}
	}
	return out, nil
}

// encodeCursor renders a log cursor as the SDK carries it: standard
// base64 (padded) of [count u8][count × (generation u64 LE, offset u64
// LE)], with one position: the run and the offset after the entry.
func encodeCursor(c logfile.Cursor) string {
	b := []byte{1}
	b = binary.LittleEndian.AppendUint64(b, c.Run)
	b = binary.LittleEndian.AppendUint64(b, c.Offset)
	return base64.StdEncoding.EncodeToString(b)
}

// decodeCursor reads a cursor of encodeCursor's form (Last-Event-ID).
func decodeCursor(s string) (logfile.Cursor, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) == 0 || len(b) != 1+16*int(b[0]) {
		return logfile.Cursor{}, errdefs.Invalidf("Last-Event-ID %.64q is not a log cursor this server gave", s)
	}
	if b[0] == 0 {
		return logfile.Cursor{}, nil
	}
	return logfile.Cursor{Run: binary.LittleEndian.Uint64(b[1:]), Offset: binary.LittleEndian.Uint64(b[9:])}, nil
}

// logEvent is the data of one event: log.
type logEvent struct {
	Source string `json:"source"`
	TS     string `json:"ts"`
	Text   string `json:"text"`
}

// logStream serves GET /v1/sandboxes/{id}/logs: the sandbox's log as
// server-sent events, from the start of its current run (or strictly
// after Last-Event-ID), then what it adds for as long as the sandbox runs
// (a new run, when it is started again, follows); then event: end.
func (h *Handler) logStream(c *Call) {
	var sources map[string]bool
	var after logfile.Cursor
	err := c.admit(func() error {
		var err error
		if sources, err = parseSources(c.r.URL.Query().Get("sources")); err != nil {
			return err
		}
		if id := c.r.Header.Get("Last-Event-ID"); id != "" {
			after, err = decodeCursor(id)
		}
		return err
	})
	if err != nil {
		c.fail(err)
		return
	}
	rec, err := c.sandboxRecord()
	if err != nil {
		c.fail(err)
		return
	}
	c.report(nil)
	flusher, _ := c.w.(http.Flusher)
	c.writeRateHeaders(http.StatusOK)
	hdr := c.w.Header()
	hdr.Set("Content-Type", "text/event-stream")
	hdr.Set("Cache-Control", "no-cache")
	hdr.Set("X-Accel-Buffering", "no")
	c.w.WriteHeader(http.StatusOK)
	// The SDK waits for the headers before it returns the stream.
	if _, err := c.w.Write([]byte(": msb log stream\n\n")); err != nil {
		return
	}
	flush := func() {
		if flusher != nil {
			flusher.Flush()
		}
	}
	flush()

	ctx := c.ctx()
	id, uuid := rec.ID, rec.UUID
	var r *logfile.Reader
	defer func() {
		if r != nil {
			r.Close()
		}
	}()
	tick := time.NewTicker(logPoll)
	defer tick.Stop()
	lastWrite := time.Now()
	var buf []byte
	for {
		// The key is checked on every round, as a request of its own
		// would be: a revoked or expired key's stream ends.
		if err := h.gate.Recheck(ctx, c.caller); errdefs.Is(err, errdefs.Unauthenticated) {
			h.log.Info("log stream closed: its key no longer holds", "sandbox", id.String(), "key", c.caller.Principal.KeyID, "reason", err.Error())
			return
		}
		if r == nil {
			r, err = h.logs.Open(id.Namespace(), id.Name())
			switch {
			case errors.Is(err, os.ErrNotExist):
				r = nil
			case err != nil:
				h.log.Error("log stream", "sandbox", id.String(), "err", err)
				return
			default:
				if err := r.Seek(after); err != nil {
					h.log.Error("log stream", "sandbox", id.String(), "err", err)
					return
				}
			}
		}
		// Whether the sandbox still runs is asked before the log is
		// read, so that nothing it wrote before it stopped is missed.
		running := true
		if cur, err := h.svc.GetByUUID(ctx, id.Namespace(), uuid); err != nil {
			running = false // removed
		} else if cur.State != sandbox.StateRunning && cur.State != sandbox.StateStarting {
			running = false
		}
		if r != nil {
			for {
				e, cur, ok, err := r.Next()
				if err != nil {
					h.log.Error("log stream", "sandbox", id.String(), "err", err)
					return
				}
				if !ok {
					break
				}
				if !sources[e.Source] {
					continue
				}
				data, _ := json.Marshal(logEvent{Source: e.Source, TS: timestamp(e.Time), Text: e.Text})
				buf = append(buf[:0], "event: log\nid: "...)
				buf = append(buf, encodeCursor(cur)...)
				buf = append(buf, "\ndata: "...)
				buf = append(buf, data...)
				buf = append(buf, "\n\n"...)
				if _, err := c.w.Write(buf); err != nil {
					return
				}
				lastWrite = time.Now()
			}
		}
		if !running {
			c.w.Write([]byte("event: end\ndata: {}\n\n"))
			flush()
			return
		}
		if time.Since(lastWrite) >= logKeepAlive {
			if _, err := c.w.Write([]byte(": keep-alive\n\n")); err != nil {
				return
			}
			lastWrite = time.Now()
		}
		flush()
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
