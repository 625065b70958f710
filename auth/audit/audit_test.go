package audit_test

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/msb-dev/msb/auth/audit"
	"github.com/msb-dev/msb/storage"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// testDB is a real audit store, and a second, raw connection to its file
// for the checks and for holding its write lock.
type testDB struct {
	*storage.DB
	raw *sql.DB
}

func openDB(t *testing.T) testDB {
	t.Helper()
	path := filepath.Join(t.TempDir(), "msb.db")
	db, err := storage.Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	raw, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	return testDB{db, raw}
}

func count(t *testing.T, db testDB) int {
	t.Helper()
	var n int
	if err := db.raw.QueryRow(`SELECT count(*) FROM audit_events`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestWriterFlushesOnClose(t *testing.T) {
	db := openDB(t)
	clk := &clock{t: t0}
	w := audit.NewWriter(db, audit.Options{Now: clk.Now})
	for i := 0; i < 1000; i++ {
		w.Record(audit.Event{KeyID: "k1", KeyLabel: "ci", Namespace: "team-a", Method: "sandbox.start", Sandbox: "s", Outcome: audit.OK, Remote: "127.0.0.1"})
	}
	w.Record(audit.Event{Time: t0.Add(time.Second), KeyID: "k2", KeyNamespace: "team-b", Namespace: "team-b", Method: "sandbox.stop", Outcome: audit.Forbidden, Code: -32004, Detail: "no"})
	// What a team-a key tried in team-b, and what the operator did there.
	w.Record(audit.Event{Time: t0.Add(time.Second), KeyID: "a1", KeyNamespace: "team-a", Namespace: "team-b", Method: "sandbox.stop", Outcome: audit.Forbidden, Code: -32004})
	w.Record(audit.Event{Time: t0.Add(time.Second), KeyID: "cli", KeyNamespace: "*", Namespace: "team-b", Method: "cli: keygen", Outcome: audit.OK})
	w.Close()
	w.Close()                            // twice is fine
	w.Record(audit.Event{KeyID: "late"}) // after Close: counted, not a panic
	if n := count(t, db); n != 1003 {
		t.Fatalf("%d events written, want 1003", n)
	}
	ctx := context.Background()
	all, err := db.ListEvents(ctx, audit.Filter{Limit: 5000})
	if err != nil || len(all) != 1003 {
		t.Fatalf("List: %d, %v", len(all), err)
	}
	if e := all[2]; e.KeyID != "k2" || e.KeyNamespace != "team-b" || e.Outcome != audit.Forbidden || e.Code != -32004 || !e.Time.Equal(t0.Add(time.Second)) {
		t.Fatalf("newest event = %+v", e)
	}
	if e := all[3]; e.KeyLabel != "ci" || e.Sandbox != "s" || e.Remote != "127.0.0.1" || !e.Time.Equal(t0) {
		t.Fatalf("event = %+v", e)
	}
	for _, c := range []struct {
		f    audit.Filter
		want int
	}{
		{audit.Filter{KeyID: "k2"}, 1},
		{audit.Filter{KeyID: "k"}, 1000}, // a prefix; default limit 1000
		{audit.Filter{Namespace: "team-a", Limit: 2000}, 1000},
		{audit.Filter{Visible: "team-b"}, 2}, // k2 and the operator, not team-a's a1
		{audit.Filter{Namespace: "team-b"}, 3},
		{audit.Filter{Visible: "team-b", Namespace: "team-a"}, 0},
		{audit.Filter{Since: t0.Add(500 * time.Millisecond)}, 3},
		{audit.Filter{Limit: 3}, 3},
	} {
		got, err := db.ListEvents(ctx, c.f)
		if err != nil || len(got) != c.want {
			t.Errorf("List(%+v) = %d events, %v; want %d", c.f, len(got), err, c.want)
		}
	}
}

func TestPruneByRetention(t *testing.T) {
	db := openDB(t)
	clk := &clock{t: t0}
	ctx := context.Background()
	if err := db.AppendEvents(ctx,
		audit.Event{Time: t0.Add(-100 * 24 * time.Hour), Method: "old", Outcome: audit.OK},
		audit.Event{Time: t0.Add(-91 * 24 * time.Hour), Method: "old", Outcome: audit.OK},
		audit.Event{Time: t0.Add(-89 * 24 * time.Hour), Method: "recent", Outcome: audit.OK},
	); err != nil {
		t.Fatal(err)
	}
	// The default retention (90 days), pruned when the writer starts.
	w := audit.NewWriter(db, audit.Options{Now: clk.Now})
	w.Record(audit.Event{Method: "now", Outcome: audit.OK})
	w.Close()
	got, _ := db.ListEvents(ctx, audit.Filter{})
	if len(got) != 2 || got[0].Method != "now" || got[1].Method != "recent" {
		t.Fatalf("after pruning: %+v", got)
	}
	// A short retention, pruned periodically as the clock moves on.
	w = audit.NewWriter(db, audit.Options{Now: clk.Now, Retention: time.Hour, PruneEvery: 10 * time.Millisecond})
	defer w.Close()
	clk.Set(t0.Add(2 * time.Hour))
	w.Record(audit.Event{Method: "later", Outcome: audit.OK})
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, _ = db.ListEvents(ctx, audit.Filter{})
		if len(got) == 1 && got[0].Method == "later" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("events older than the retention not pruned: %+v", got)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestOverflowIsCountedAndRecorded(t *testing.T) {
	db := openDB(t)
	var logBuf bytes.Buffer
	var mu sync.Mutex
	log := slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return logBuf.Write(p)
	}), nil))
	// Hold the database so the writer blocks, then overflow a tiny buffer.
	tx, err := db.raw.Begin()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`INSERT INTO audit_events (time, outcome) VALUES (0, 'lock')`); err != nil {
		t.Fatal(err)
	}
	w := audit.NewWriter(db, audit.Options{Buffer: 4, Log: log})
	for i := 0; i < 50; i++ {
		w.Record(audit.Event{Method: "m", Outcome: audit.OK})
	}
	if w.Dropped() == 0 {
		t.Fatal("no event dropped with a buffer of 4 and a blocked writer")
	}
	tx.Rollback()
	w.Close()
	got, _ := db.ListEvents(context.Background(), audit.Filter{})
	var written, dropped int
	for _, e := range got {
		if e.Outcome == audit.Dropped {
			var n int
			if _, err := fmt.Sscanf(e.Detail, "%d", &n); err != nil {
				t.Fatalf("dropped detail %q", e.Detail)
			}
			dropped += n
		} else {
			written++
		}
	}
	if written+dropped != 50 || dropped == 0 {
		t.Fatalf("written %d + dropped %d, want 50 in all", written, dropped)
	}
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(logBuf.String(), "audit log buffer overflowed") {
		t.Fatalf("overflow not logged: %s", logBuf.String())
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
