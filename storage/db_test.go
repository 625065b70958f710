package storage_test

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/msb-dev/msb/storage"
)

// migrationVersions reads the version numbers of the migration files on disk.
func migrationVersions(t *testing.T) []int {
	t.Helper()
	names, err := filepath.Glob("migrations/*.sql")
	if err != nil || len(names) == 0 {
		t.Fatalf("no migrations found: %v", err)
	}
	var vs []int
	for _, n := range names {
		v, err := strconv.Atoi(strings.SplitN(filepath.Base(n), "_", 2)[0])
		if err != nil {
			t.Fatalf("migration %s: %v", n, err)
		}
		vs = append(vs, v)
	}
	sort.Ints(vs)
	return vs
}

func appliedVersions(t *testing.T, ctx context.Context, path string) []int {
	t.Helper()
	db, err := storage.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.SQL().QueryContext(ctx, `SELECT version FROM schema_migrations ORDER BY version`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var vs []int
	for rows.Next() {
		var v int
		if err := rows.Scan(&v); err != nil {
			t.Fatal(err)
		}
		vs = append(vs, v)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return vs
}

func TestOpenCreatesPrivateFile(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "msb.db")
	db, err := storage.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("database mode %o, want 0600", fi.Mode().Perm())
	}
	// Write something so the WAL exists; it must be as private as the database.
	if _, err := db.SQL().ExecContext(ctx, `INSERT INTO api_keys (id, namespace, key_prefix, key_hash, signing_key_id, created_at) VALUES ('a', '*', 'p', 'h', 's', 1)`); err != nil {
		t.Fatal(err)
	}
	for _, suffix := range []string{"-wal", "-shm"} {
		fi, err := os.Stat(path + suffix)
		if err != nil {
			t.Fatalf("%s: %v (WAL mode should create it)", suffix, err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Fatalf("msb.db%s mode %o, want 0600", suffix, fi.Mode().Perm())
		}
	}
}

func TestOpenFixesLoosenedMode(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "msb.db")
	db, err := storage.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	db, err = storage.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("database mode after reopen %o, want 0600", fi.Mode().Perm())
	}
}

func TestPragmas(t *testing.T) {
	ctx := context.Background()
	db := openDB(t)
	// Check several pooled connections at once: the settings must hold on
	// every connection, not just the first.
	for i := 0; i < 4; i++ {
		conn, err := db.SQL().Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		var mode string
		if err := conn.QueryRowContext(ctx, `PRAGMA journal_mode`).Scan(&mode); err != nil {
			t.Fatal(err)
		}
		if mode != "wal" {
			t.Fatalf("connection %d: journal_mode = %q, want wal", i, mode)
		}
		var fk, busy int
		if err := conn.QueryRowContext(ctx, `PRAGMA foreign_keys`).Scan(&fk); err != nil {
			t.Fatal(err)
		}
		if fk != 1 {
			t.Fatalf("connection %d: foreign_keys = %d, want 1", i, fk)
		}
		if err := conn.QueryRowContext(ctx, `PRAGMA busy_timeout`).Scan(&busy); err != nil {
			t.Fatal(err)
		}
		if busy <= 0 {
			t.Fatalf("connection %d: busy_timeout = %d, want writers to wait", i, busy)
		}
	}
}

func TestForeignKeysEnforced(t *testing.T) {
	ctx := context.Background()
	db := openDB(t)
	conn, err := db.SQL().Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, q := range []string{
		`CREATE TEMP TABLE parent (id INTEGER PRIMARY KEY)`,
		`CREATE TEMP TABLE child (pid INTEGER REFERENCES parent(id))`,
	} {
		if _, err := conn.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := conn.ExecContext(ctx, `INSERT INTO child (pid) VALUES (42)`); err == nil {
		t.Fatal("a row referencing a missing parent was accepted: foreign keys are off")
	}
}

func TestMigrationsIdempotent(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "msb.db")
	want := migrationVersions(t)
	first := appliedVersions(t, ctx, path)
	if !reflect.DeepEqual(first, want) {
		t.Fatalf("schema_migrations = %v, want %v", first, want)
	}
	// Data written between opens survives the second open's migrations.
	db, err := storage.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.SQL().ExecContext(ctx, `INSERT INTO sandboxes (namespace, name, config, state, created_at) VALUES ('ns', 'box', '{}', 'stopped', 1)`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	second := appliedVersions(t, ctx, path)
	if !reflect.DeepEqual(second, want) {
		t.Fatalf("after a second open schema_migrations = %v, want %v", second, want)
	}
	db, err = storage.Open(ctx, path)
	if err != nil {
		t.Fatalf("third open: %v", err)
	}
	defer db.Close()
	var n int
	if err := db.SQL().QueryRowContext(ctx, `SELECT count(*) FROM sandboxes`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("sandboxes rows after reopen = %d, %v; want 1", n, err)
	}
	// The tables the migrations promise.
	for _, table := range []string{"api_keys", "sandboxes", "schema_migrations"} {
		var name string
		if err := db.SQL().QueryRowContext(ctx, `SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?`, table).Scan(&name); err != nil {
			t.Fatalf("table %s: %v", table, err)
		}
	}
}

func TestConcurrentOpens(t *testing.T) {
	// The CLI and the server may open a fresh database at the same moment.
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "msb.db")
	errs := make(chan error, 4)
	for i := 0; i < 4; i++ {
		go func() {
			db, err := storage.Open(ctx, path)
			if err == nil {
				db.Close()
			}
			errs <- err
		}()
	}
	for i := 0; i < 4; i++ {
		if err := <-errs; err != nil {
			t.Fatalf("concurrent Open: %v", err)
		}
	}
	if got := appliedVersions(t, ctx, path); !reflect.DeepEqual(got, migrationVersions(t)) {
		t.Fatalf("schema_migrations = %v", got)
	}
}

func TestOpenMissingDirectory(t *testing.T) {
	_, err := storage.Open(context.Background(), filepath.Join(t.TempDir(), "no", "such", "msb.db"))
	if err == nil {
		t.Fatal("Open in a missing directory succeeded")
	}
}

// openDB opens a database of its own for t, closed when t ends.
func openDB(t *testing.T) *storage.DB {
	t.Helper()
	db, err := storage.Open(context.Background(), filepath.Join(t.TempDir(), "msb.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}
