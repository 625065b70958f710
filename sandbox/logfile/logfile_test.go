package logfile_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/msb-dev/msb/sandbox/logfile"
)

func texts(t *testing.T, r *logfile.Reader) ([]string, logfile.Cursor) {
	t.Helper()
	var out []string
	var last logfile.Cursor
	for {
		e, c, ok, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			return out, last
		}
		out = append(out, e.Source+":"+e.Text)
		last = c
	}
}

// Entries written by several writers come back in order, with their
// source and time; a cursor resumes strictly after its entry.
func TestWriteReadResume(t *testing.T) {
	path := logfile.Path(t.TempDir(), "ns", "box")
	clock := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	w, err := logfile.Create(path, logfile.Options{Now: func() time.Time { return clock }})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	w.Write(logfile.System, "started")
	a, err := logfile.Append(path, logfile.Options{})
	if err != nil {
		t.Fatal(err)
	}
	lw := a.Lines(logfile.Stdout)
	fmt.Fprint(lw, "one\ntw")
	fmt.Fprint(lw, "o\r\nthree")
	lw.Flush()
	a.Lines(logfile.Stderr).Write([]byte("err\n"))

	r, err := logfile.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got, _ := texts(t, r)
	want := []string{"system:started", "stdout:one", "stdout:two", "stdout:three", "stderr:err"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("entries %q, want %q", got, want)
	}

	// Resume after "one".
	r2, _ := logfile.Open(path)
	defer r2.Close()
	r2.Next()
	e, c, _, _ := r2.Next()
	if e.Text != "one" || e.Time.IsZero() {
		t.Fatalf("entry %+v", e)
	}
	r3, _ := logfile.Open(path)
	defer r3.Close()
	if err := r3.Seek(c); err != nil {
		t.Fatal(err)
	}
	got, _ = texts(t, r3)
	if got[0] != "stdout:two" || len(got) != 3 {
		t.Fatalf("after the cursor: %q", got)
	}
	// A cursor of another run, or not at a line's end, starts from the top.
	for _, bad := range []logfile.Cursor{{Run: c.Run + 1, Offset: c.Offset}, {Run: c.Run, Offset: c.Offset - 1}, {Run: c.Run, Offset: 1 << 40}} {
		r4, _ := logfile.Open(path)
		r4.Seek(bad)
		if got, _ := texts(t, r4); len(got) != 5 {
			t.Errorf("cursor %v: %q", bad, got)
		}
		r4.Close()
	}
}

// A follower sees what is appended, waits at a line being written, and
// goes on from the start of a new run when the log is replaced.
func TestFollowAcrossRuns(t *testing.T) {
	path := logfile.Path(t.TempDir(), "ns", "box")
	w, _ := logfile.Create(path, logfile.Options{})
	w.Write(logfile.Stdout, "a")
	r, err := logfile.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	run1 := r.Run()
	if got, _ := texts(t, r); len(got) != 1 {
		t.Fatalf("%q", got)
	}
	// Half a line is not an entry yet.
	f, _ := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString(`{"ts":"2026-01-01T00:00:00Z","source":"stdout","te`)
	if got, _ := texts(t, r); len(got) != 0 {
		t.Fatalf("half a line read: %q", got)
	}
	f.WriteString(`xt":"b"}` + "\n")
	f.Close()
	if got, _ := texts(t, r); len(got) != 1 || got[0] != "stdout:b" {
		t.Fatalf("%q", got)
	}
	time.Sleep(time.Millisecond) // another run's id
	w2, _ := logfile.Create(path, logfile.Options{})
	w2.Write(logfile.Stdout, "second run")
	got, c := texts(t, r)
	if len(got) != 1 || got[0] != "stdout:second run" || c.Run == run1 || r.Run() != c.Run {
		t.Fatalf("after a new run: %q %v", got, c)
	}
	// The old run's writer writes into the old file, which no one reads.
	w.Write(logfile.Stdout, "lost")
	if got, _ := texts(t, r); len(got) != 0 {
		t.Fatalf("%q", got)
	}
	w.Close()
	w2.Close()
}

// A run is bounded: past Max one notice, then nothing, whichever writer
// writes.
func TestMax(t *testing.T) {
	path := logfile.Path(t.TempDir(), "ns", "box")
	o := logfile.Options{Max: 1000, CutNotice: "log full"}
	w, _ := logfile.Create(path, o)
	a, _ := logfile.Append(path, o)
	for i := range 100 {
		w.Write(logfile.Stdout, fmt.Sprintf("line %d", i))
		a.Write(logfile.Stderr, "x")
	}
	st, _ := os.Stat(path)
	if st.Size() > 1200 {
		t.Fatalf("log of %d bytes", st.Size())
	}
	r, _ := logfile.Open(path)
	defer r.Close()
	got, _ := texts(t, r)
	if got[len(got)-1] != "system:log full" || strings.Count(strings.Join(got, "\n"), "log full") != 1 {
		t.Fatalf("%q", got)
	}
}

// Writers racing to start a run share one; no line is torn.
func TestConcurrentAppends(t *testing.T) {
	path := logfile.Path(t.TempDir(), "ns", "box")
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			w, err := logfile.Append(path, logfile.Options{})
			if err != nil {
				t.Error(err)
				return
			}
			defer w.Close()
			for j := range 200 {
				w.Write(logfile.Stdout, strings.Repeat(fmt.Sprint(i), 100+j))
			}
		})
	}
	wg.Wait()
	r, _ := logfile.Open(path)
	defer r.Close()
	got, _ := texts(t, r)
	if len(got) != 1600 {
		t.Fatalf("%d entries, want 1600", len(got))
	}
	for _, g := range got {
		text := strings.TrimPrefix(g, "stdout:")
		if strings.Trim(text, text[:1]) != "" {
			t.Fatalf("torn line %q", g)
		}
	}
}

// A log of an older server (plain text) still reads, as stdout.
func TestOldFormat(t *testing.T) {
	path := filepath.Join(t.TempDir(), "old.log")
	os.WriteFile(path, []byte("[msb] 2026-01-01T00:00:00Z: sh -c x\nhello\n"), 0o600)
	r, err := logfile.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got, _ := texts(t, r)
	if len(got) != 2 || got[1] != "stdout:hello" || r.Run() != 0 {
		t.Fatalf("%q", got)
	}
	if _, err := logfile.Open(filepath.Join(t.TempDir(), "none.log")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing log: %v", err)
	}
	if logfile.Text(logfile.Entry{Source: logfile.System, Text: "x"}) != "[msb] x" {
		t.Fatal("system entries are marked")
	}
}
