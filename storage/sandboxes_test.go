package storage_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox"
	"github.com/msb-dev/msb/storage"
)

// Records round-trip through their stored format, and one that cannot be
// read (damaged, or written by a newer msb) hides no other and keeps no
// listing from working.
func TestSandboxRecords(t *testing.T) {
	ctx := context.Background()
	db := openDB(t)
	id, _ := sandbox.ParseID("ns", "box")
	cfg := sandbox.Config{Image: "microsandbox/python", Memory: 256, CPUs: 1, Disk: 4096, Shell: "/bin/sh",
		Volumes: []sandbox.Volume{{Host: "data", Guest: "/data", ReadOnly: true}}, Ports: []sandbox.Port{{Host: 8080, Guest: 80}},
		Command: []string{"sleep", "1"}, User: "1000:1000", Labels: map[string]string{"a": "b"},
		Rlimits:   []sandbox.Rlimit{{Resource: "nofile", Soft: 64, Hard: 128}},
		Tmpfs:     []sandbox.Tmpfs{{Guest: "/scratch", SizeMiB: 16}},
		Lifecycle: sandbox.Lifecycle{Ephemeral: true, MaxDuration: time.Minute, IdleTimeout: time.Second},
		Network: sandbox.Network{Mode: sandbox.NetworkOn, Allow: []string{"*.pypi.org:443"}, Deny: []string{"evil.test"}, Strict: true,
			MaxConnections: 10, MaxBandwidth: 1 << 20}}
	now := time.UnixMilli(time.Now().UnixMilli())
	if err := db.PutSandbox(ctx, sandbox.Record{ID: id, UUID: "u-1", Config: cfg, State: sandbox.StateRunning, Created: now, Started: now}); err != nil {
		t.Fatal(err)
	}
	got, err := db.Sandbox(ctx, id)
	if err != nil || !got.Config.Equal(cfg) || got.UUID != "u-1" || got.State != sandbox.StateRunning || !got.Started.Equal(now) {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	if _, err := db.SQL().ExecContext(ctx, `INSERT INTO sandboxes (namespace, name, uuid, config, state, created_at) VALUES ('ns', 'newer', 'u-2', '{"v":99}', 'stopped', 1)`); err != nil {
		t.Fatal(err)
	}
	list, err := db.Sandboxes(ctx, "ns")
	if err != nil || len(list) != 1 || list[0].ID != id {
		t.Fatalf("list with an unreadable record: %+v, %v", list, err)
	}
}

// Records of every earlier version still read: a version 2 record (before
// the network) has the namespace's default network.
func TestOldSandboxRecordsRead(t *testing.T) {
	ctx := context.Background()
	db := openDB(t)
	for name, data := range map[string]string{
		"v0": `{"image":"microsandbox/python","memory":512,"cpus":1,"shell":"/bin/sh"}`,
		"v2": `{"v":2,"image":"microsandbox/python","memory":512,"cpus":1,"shell":"/bin/sh","user":"root"}`,
	} {
		if _, err := db.SQL().ExecContext(ctx, `INSERT INTO sandboxes (namespace, name, uuid, config, state, created_at) VALUES ('ns', ?, ?, ?, 'stopped', 1)`, name, "u-"+name, data); err != nil {
			t.Fatal(err)
		}
		id, _ := sandbox.ParseID("ns", name)
		r, err := db.Sandbox(ctx, id)
		if err != nil || r.Config.Image != "microsandbox/python" || r.Config.Network.Mode != sandbox.NetworkDefault {
			t.Errorf("%s: %+v, %v", name, r.Config, err)
		}
	}
}

// A sandbox's config can be replaced without touching its state or times.
func TestSetSandboxConfig(t *testing.T) {
	ctx := context.Background()
	db := openDB(t)
	id, _ := sandbox.ParseID("ns", "box")
	now := time.UnixMilli(time.Now().UnixMilli())
	if err := db.PutSandbox(ctx, sandbox.Record{ID: id, UUID: "u", Config: sandbox.Config{Image: "a"}, State: sandbox.StateRunning, Created: now, Started: now}); err != nil {
		t.Fatal(err)
	}
	if err := db.MarkSandboxStopped(ctx, id, now); err != nil {
		t.Fatal(err)
	}
	cfg := sandbox.Config{Image: "a", Network: sandbox.Network{Mode: sandbox.NetworkNone}}
	if err := db.SetSandboxConfig(ctx, id, cfg); err != nil {
		t.Fatal(err)
	}
	r, err := db.Sandbox(ctx, id)
	if err != nil || !r.Config.Equal(cfg) || r.State != sandbox.StateStopped || !r.Stopped.Equal(now) {
		t.Fatalf("%+v, %v", r, err)
	}
	other, _ := sandbox.ParseID("ns", "other")
	if err := db.SetSandboxConfig(ctx, other, cfg); !errdefs.Is(err, errdefs.NotFound) {
		t.Fatalf("unknown sandbox: %v", err)
	}
}

// One statement is kept for each query, also when many goroutines run it
// first at once; a closed database forgets its statements and fails the
// next query with errClosed.
func TestStatementsPrepared(t *testing.T) {
	ctx := context.Background()
	db := openDB(t)
	before := db.Prepared()
	startStop := func(name string) error {
		id, _ := sandbox.ParseID("ns", name)
		now := time.Now()
		if err := db.PutSandbox(ctx, sandbox.Record{ID: id, UUID: name, Config: sandbox.Config{Image: "microsandbox/python"}, State: sandbox.StateRunning, Created: now, Started: now}); err != nil {
			return err
		}
		if _, err := db.Sandbox(ctx, id); err != nil {
			return err
		}
		return db.MarkSandboxStopped(ctx, id, now)
	}
	for round := range 2 {
		errs := make(chan error, 8)
		for i := range 8 {
			go func() { errs <- startStop(fmt.Sprintf("box%d-%d", round, i)) }()
		}
		for range 8 {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		if got := db.Prepared() - before; got != 3 {
			t.Fatalf("round %d: %d statements kept for three queries", round, got)
		}
	}
	db.Close()
	if n := db.Prepared(); n != 0 {
		t.Errorf("%d statements kept after Close", n)
	}
	if err := startStop("after"); !errors.Is(err, storage.ErrClosed) {
		t.Errorf("a query on a closed database: %v", err)
	}
}

// Goroutines that prepare the same query first at once all get the one
// statement kept (the others' prepares are closed, not kept beside it).
func TestPreparedOnceAtOnce(t *testing.T) {
	ctx := context.Background()
	db := openDB(t)
	const n = 16
	start := make(chan struct{})
	stmts := make(chan *sql.Stmt, n)
	for range n {
		go func() {
			<-start
			s, err := db.PreparedStmt(ctx, "SELECT 1 + ?")
			if err != nil {
				t.Error(err)
			}
			stmts <- s
		}()
	}
	close(start)
	first := <-stmts
	for range n - 1 {
		if s := <-stmts; s != first {
			t.Fatalf("two statements for one query: %p and %p", first, s)
		}
	}
}

// A Close while queries are being prepared ends them cleanly: each
// succeeds or fails as closed, and nothing is kept after.
func TestCloseWhilePreparing(t *testing.T) {
	ctx := context.Background()
	db := openDB(t)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				_, err := db.PreparedStmt(ctx, fmt.Sprintf("SELECT %d + %d", g, i))
				if err != nil && !errors.Is(err, storage.ErrClosed) && !strings.Contains(err.Error(), "database is closed") {
					t.Error(err)
					return
				}
			}
		}()
	}
	time.Sleep(5 * time.Millisecond)
	db.Close()
	wg.Wait()
	if n := db.Prepared(); n != 0 {
		t.Errorf("%d statements kept after Close", n)
	}
}
