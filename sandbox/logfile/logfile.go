// Package logfile is the format of a sandbox's log: the output of its
// background command (exec or start script) and, from the v1 API, of the
// processes its clients stream. One file per sandbox, one run per file:
// a header line naming the run, then one JSON object per line, each an
// Entry. A reader remembers where it is as a Cursor (run, byte offset),
// which stays valid for as long as the run's file does, so a client can
// resume a stream strictly after the last entry it saw.
//
//	{"msb_log":1,"run":1767225600000000000}
//	{"ts":"2026-01-01T00:00:00.5Z","source":"stdout","text":"hello"}
//
// Every line is written with one append, so several writers (the
// background command's and each streamed process's) never interleave
// inside a line. `msb server log` prints the text of the entries.
package logfile

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"
)

// The sources of an entry.
const (
	Stdout = "stdout"
	Stderr = "stderr"
	Output = "output" // a terminal's output (stdout and stderr together)
	System = "system" // written by msb: a run started, a command exited
)

// Entry is one line of a sandbox's output.
type Entry struct {
	Time   time.Time `json:"ts"`
	Source string    `json:"source"`
	Text   string    `json:"text"` // without its newline
}

// Cursor is a position in a log: just after an entry of run Run.
type Cursor struct {
	Run    uint64
	Offset uint64
}

// header is the first line of a log file.
type header struct {
	Format int    `json:"msb_log"`
	Run    uint64 `json:"run"`
}

// formatVersion is the header's msb_log.
const formatVersion = 1

// Path is where the log of sandbox name of namespace ns lives under root.
func Path(root, ns, name string) string {
	return filepath.Join(root, ns, name+".log")
}

// Options bound what writers add.
type Options struct {
	// Max bounds a run's file, in bytes; past it one System entry says
	// CutNotice and the rest is discarded. 0: no bound.
	Max       int64
	CutNotice string
	// Now is the clock of the entries; nil: time.Now.
	Now func() time.Time
}

// Writer adds entries to a log file. Its methods may be called from any
// goroutine.
type Writer struct {
	o   Options
	mu  sync.Mutex
	f   *os.File
	cut bool // the run reached o.Max
}

// Create starts a new run's log at path, in place of any earlier one (a
// reader of the earlier run sees it replaced), and returns its writer.
func Create(path string, o Options) (*Writer, error) {
	o = o.defaults()
	tmp, err := newRunFile(path, o)
	if err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return nil, fmt.Errorf("sandbox log: %w", err)
	}
	return openAppend(path, o)
}

// Append returns a writer that adds to the current run of the log at
// path, starting a run if there is no log yet.
func Append(path string, o Options) (*Writer, error) {
	o = o.defaults()
	w, err := openAppend(path, o)
	if !errors.Is(err, os.ErrNotExist) {
		return w, err
	}
	tmp, err := newRunFile(path, o)
	if err != nil {
		return nil, err
	}
	// Link, not rename: if another writer started the run meanwhile, its
	// file stays and this one joins it.
	err = os.Link(tmp, path)
	os.Remove(tmp)
	if err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("sandbox log: %w", err)
	}
	return openAppend(path, o)
}

func (o Options) defaults() Options {
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// newRunFile writes a file holding a new run's header next to path and
// returns its name.
func newRunFile(path string, o Options) (string, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", fmt.Errorf("sandbox log: %w", err)
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".run-*")
	if err != nil {
		return "", fmt.Errorf("sandbox log: %w", err)
	}
	run := uint64(o.Now().UnixNano())
	if run == 0 {
		run = 1
	}
	line, _ := json.Marshal(header{Format: formatVersion, Run: run})
	_, err = f.Write(append(line, '\n'))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), 0o600)
	}
	if err != nil {
		os.Remove(f.Name())
		return "", fmt.Errorf("sandbox log: %w", err)
	}
	return f.Name(), nil
}

func openAppend(path string, o Options) (*Writer, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return nil, fmt.Errorf("sandbox log: %w", err)
	}
	return &Writer{o: o, f: f}, nil
}

// Write adds one entry of source with text (one line, without its
// newline; newlines inside are kept in the entry).
func (w *Writer) Write(source, text string) error {
	return w.write(source, []string{text})
}

// write adds one entry per text, in one append.
func (w *Writer) write(source string, texts []string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		return os.ErrClosed
	}
	if w.cut {
		return nil
	}
	now := w.o.Now()
	var buf bytes.Buffer
	for _, t := range texts {
		appendEntry(&buf, Entry{Time: now, Source: source, Text: t})
	}
	if w.o.Max > 0 {
		st, err := w.f.Stat()
		if err != nil {
			return fmt.Errorf("sandbox log: %w", err)
		}
		if size := st.Size(); size+int64(buf.Len()) > w.o.Max {
			w.cut = true
			// Another writer may have written the notice already: it
			// is the file's last line.
			if size <= w.o.Max && !w.endsWithNotice(size) {
				buf.Reset()
				appendEntry(&buf, Entry{Time: now, Source: System, Text: w.o.CutNotice})
				_, err = w.f.Write(buf.Bytes())
				return err
			}
			return nil
		}
	}
	_, err := w.f.Write(buf.Bytes())
	return err
}

// endsWithNotice reports whether the file of size bytes ends with the
// cut notice.
func (w *Writer) endsWithNotice(size int64) bool {
	tail := make([]byte, min(size, 4096))
	rf, err := os.Open(w.f.Name())
	if err != nil {
		return false
	}
	defer rf.Close()
	if _, err := rf.ReadAt(tail, size-int64(len(tail))); err != nil {
		return false
	}
	quoted, _ := json.Marshal(w.o.CutNotice)
	return bytes.Contains(tail, quoted)
}

func appendEntry(buf *bytes.Buffer, e Entry) {
	line, _ := json.Marshal(struct {
		Time   string `json:"ts"`
		Source string `json:"source"`
		Text   string `json:"text"`
	}{e.Time.UTC().Format(time.RFC3339Nano), e.Source, e.Text})
	buf.Write(line)
	buf.WriteByte('\n')
}

// Close closes the writer's file.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		return nil
	}
	err := w.f.Close()
	w.f = nil
	return err
}

// maxLine is the longest entry a LineWriter makes: a longer line is cut
// into entries of this size.
const maxLine = 64 << 10

// LineWriter turns a stream of bytes of one source into entries, one per
// line. It is not safe for concurrent use; Flush writes a last,
// unterminated line.
type LineWriter struct {
	w      *Writer
	source string
	buf    []byte
}

// Lines returns a LineWriter adding the lines of source to w.
func (w *Writer) Lines(source string) *LineWriter {
	return &LineWriter{w: w, source: source}
}

// Write implements io.Writer: the complete lines of p (and of what came
// before) become entries, in one append.
func (l *LineWriter) Write(p []byte) (int, error) {
	l.buf = append(l.buf, p...)
	var texts []string
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			if len(l.buf) < maxLine {
				break
			}
			i = maxLine
			texts = append(texts, string(l.buf[:i]))
			l.buf = l.buf[i:]
			continue
		}
		texts = append(texts, string(bytes.TrimSuffix(l.buf[:i], []byte{'\r'})))
		l.buf = l.buf[i+1:]
	}
	if len(l.buf) == 0 {
		l.buf = nil // let a large buffer go
	}
	if len(texts) == 0 {
		return len(p), nil
	}
	return len(p), l.w.write(l.source, texts)
}

// Flush writes what is left of an unterminated line.
func (l *LineWriter) Flush() error {
	if len(l.buf) == 0 {
		return nil
	}
	text := string(l.buf)
	l.buf = nil
	return l.w.Write(l.source, text)
}

// Reader reads a log's entries from the start of its current run, or
// after a cursor, and follows it as it grows and when it is replaced by
// a new run.
type Reader struct {
	path string
	f    *os.File
	run  uint64
	off  int64  // where buf starts in the file
	buf  []byte // read from the file, not yet returned
	eof  bool   // the last read found nothing more
}

// Open returns a reader of the log at path, at the start of its run.
// The error wraps os.ErrNotExist when there is no log.
func Open(path string) (*Reader, error) {
	r := &Reader{path: path}
	if err := r.open(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *Reader) open() error {
	f, err := os.Open(r.path)
	if err != nil {
		return fmt.Errorf("sandbox log: %w", err)
	}
	if r.f != nil {
		r.f.Close()
	}
	r.f, r.run, r.off, r.buf, r.eof = f, 0, 0, nil, false
	// The header, if this run has one (logs of older servers do not).
	line, ok, err := r.line()
	if err != nil {
		return err
	}
	var h header
	if ok && json.Unmarshal(line, &h) == nil && h.Format > 0 {
		r.run = h.Run
		return nil
	}
	r.off, r.buf = 0, nil
	_, err = f.Seek(0, io.SeekStart)
	return err
}

// Run is the run the reader is in.
func (r *Reader) Run() uint64 { return r.run }

// Seek moves the reader just after the entry c points at, if c is a
// position in the reader's current run; otherwise it stays where it is.
func (r *Reader) Seek(c Cursor) error {
	if c.Run != r.run || c.Offset == 0 {
		return nil
	}
	st, err := r.f.Stat()
	if err != nil {
		return fmt.Errorf("sandbox log: %w", err)
	}
	if c.Offset > uint64(st.Size()) {
		return nil
	}
	var b [1]byte
	if _, err := r.f.ReadAt(b[:], int64(c.Offset)-1); err != nil || b[0] != '\n' {
		return nil // not the end of a line: not a cursor of this file
	}
	if _, err := r.f.Seek(int64(c.Offset), io.SeekStart); err != nil {
		return fmt.Errorf("sandbox log: %w", err)
	}
	r.off, r.buf, r.eof = int64(c.Offset), nil, false
	return nil
}

// Next returns the next entry and the cursor just after it. ok is false
// when there is none yet (a line being written stays unread until its
// newline). When the log was replaced by a new run, Next goes on from
// the new run's start.
func (r *Reader) Next() (e Entry, c Cursor, ok bool, err error) {
	for {
		line, ok, err := r.line()
		if err != nil {
			return Entry{}, Cursor{}, false, err
		}
		if !ok {
			replaced, err := r.replaced()
			if err != nil || !replaced {
				return Entry{}, Cursor{}, false, err
			}
			if err := r.open(); err != nil {
				return Entry{}, Cursor{}, false, err
			}
			continue
		}
		c := Cursor{Run: r.run, Offset: uint64(r.off)}
		if e, ok := parse(line); ok {
			return e, c, true, nil
		}
	}
}

// line returns the next complete line, consuming it.
func (r *Reader) line() ([]byte, bool, error) {
	for {
		if i := bytes.IndexByte(r.buf, '\n'); i >= 0 || len(r.buf) >= maxRead {
			if i < 0 {
				i = len(r.buf) - 1 // a line longer than any writer makes: cut
			}
			line := r.buf[:i]
			r.buf = r.buf[i+1:]
			r.off += int64(i + 1)
			return line, true, nil
		}
		chunk := make([]byte, 64<<10)
		n, err := r.f.Read(chunk)
		if n > 0 {
			r.buf = append(r.buf, chunk[:n]...)
			continue
		}
		if err != nil && err != io.EOF {
			return nil, false, fmt.Errorf("sandbox log: %w", err)
		}
		return nil, false, nil
	}
}

// maxRead bounds a line the reader holds.
const maxRead = 1 << 20

// replaced reports whether the log's path now names another file (a new
// run) or the file was cut short.
func (r *Reader) replaced() (bool, error) {
	cur, err := r.f.Stat()
	if err != nil {
		return false, fmt.Errorf("sandbox log: %w", err)
	}
	if cur.Size() < r.off+int64(len(r.buf)) {
		return true, nil
	}
	now, err := os.Stat(r.path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil // removed: nothing more will come
	}
	if err != nil {
		return false, fmt.Errorf("sandbox log: %w", err)
	}
	return !os.SameFile(now, cur), nil
}

// Close closes the reader's file.
func (r *Reader) Close() error { return r.f.Close() }

// parse reads one line; a line of an older server's log (plain text) is
// an entry of stdout without a time; a header is not an entry.
func parse(line []byte) (Entry, bool) {
	if len(line) == 0 || line[0] != '{' {
		return Entry{Source: Stdout, Text: string(line)}, true
	}
	var raw struct {
		Time   string  `json:"ts"`
		Source string  `json:"source"`
		Text   *string `json:"text"`
		Format int     `json:"msb_log"`
	}
	if err := json.Unmarshal(line, &raw); err != nil || raw.Text == nil {
		if raw.Format > 0 {
			return Entry{}, false
		}
		return Entry{Source: Stdout, Text: string(line)}, true
	}
	t, _ := time.Parse(time.RFC3339Nano, raw.Time)
	return Entry{Time: t, Source: raw.Source, Text: *raw.Text}, true
}

// Text is how `msb server log` prints an entry: its text, and msb's own
// entries marked as such.
func Text(e Entry) string {
	if e.Source == System {
		return "[msb] " + e.Text
	}
	return e.Text
}

// String renders a cursor for logs and tests.
func (c Cursor) String() string {
	return strconv.FormatUint(c.Run, 10) + ":" + strconv.FormatUint(c.Offset, 10)
}

// Dir is the logs of every sandbox under one directory, by namespace and
// name, as their writers and readers find them.
type Dir struct {
	Root    string
	Options Options
}

// Open returns a reader of the log of sandbox name of namespace ns; the
// error wraps os.ErrNotExist when it has none.
func (d Dir) Open(ns, name string) (*Reader, error) {
	return Open(Path(d.Root, ns, name))
}

// Append returns a writer adding to the current run of the log of
// sandbox name of namespace ns.
func (d Dir) Append(ns, name string) (*Writer, error) {
	return Append(Path(d.Root, ns, name), d.Options)
}
