// Package storage keeps msb's state in one SQLite file in the msb home
// (modernc.org/sqlite: pure Go, no server). It is the only package that
// speaks SQL: it implements the small store interfaces that the domain
// packages declare (auth.KeyStore, audit.Store, sandbox.Store,
// image.RecordStore), so they never see a query and a second backend
// would only have to implement those.
//
// Open brings the schema up to date with the numbered migrations embedded
// from migrations/, each in its own transaction. WAL lets the CLI (keygen,
// keys revoke) write while a server reads; foreign keys are enforced;
// writers wait for each other instead of failing with SQLITE_BUSY.
package storage

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"modernc.org/sqlite" // registers the "sqlite" driver
	sqlite3 "modernc.org/sqlite/lib"
)

//go:embed migrations/*.sql
var migrations embed.FS

// DB is msb's state database.
type DB struct {
	db *sql.DB
	// stmts are the statements of the queries run so far, by query
	// (prepared); nil once the database is closed.
	mu    sync.Mutex
	stmts map[string]*sql.Stmt
}

// Open opens (creating if needed, mode 0600) the database at path and
// applies every pending migration.
func Open(ctx context.Context, path string) (*DB, error) {
	// Create the file ourselves so it is never world-readable; SQLite gives
	// its -wal and -shm files the same mode.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	f.Close()
	if err := os.Chmod(path, 0o600); err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	q := url.Values{}
	for _, p := range []string{"busy_timeout(10000)", "journal_mode(WAL)", "foreign_keys(1)", "synchronous(NORMAL)"} {
		q.Add("_pragma", p)
	}
	q.Set("_txlock", "immediate")
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	// Openers of a fresh database at the same moment (the CLI and the
	// server) can fail at once with SQLITE_BUSY, which busy_timeout does
	// not cover there (a lock taken for the switch to WAL, or upgraded
	// within a statement, is not waited for): they try again. Every step
	// of migrate can be repeated.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		err = migrate(ctx, db)
		var serr *sqlite.Error
		if err == nil || !errors.As(err, &serr) || serr.Code()&0xff != sqlite3.SQLITE_BUSY || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("migrate database %s: %w", path, err)
	}
	// A statement is prepared on each connection it runs on: connections
	// kept idle keep theirs. (database/sql keeps 2, fewer than the calls a
	// busy server makes at once.)
	db.SetMaxIdleConns(maxIdleConns)
	return &DB{db: db, stmts: map[string]*sql.Stmt{}}, nil
}

// Close closes the database.
func (d *DB) Close() error {
	d.mu.Lock()
	for _, s := range d.stmts {
		s.Close()
	}
	d.stmts = nil
	d.mu.Unlock()
	return d.db.Close()
}

// maxIdleConns is how many connections the database keeps open when idle.
const maxIdleConns = 8

// errClosed is the error of a query on a closed database.
var errClosed = errors.New("the database is closed")

// prepared is the statement of query, prepared on its first run and kept
// for the next: SQLite compiles a query it is given as text every time,
// which was 42 % of the CPU storage took for a sandbox's start and stop.
// Only the queries written in this package's source come here, so that
// the statements kept are few. Two first runs at once may both prepare;
// one statement is kept, the other closed.
func (d *DB) prepared(ctx context.Context, query string) (*sql.Stmt, error) {
	d.mu.Lock()
	s, ok := d.stmts[query]
	closed := d.stmts == nil
	d.mu.Unlock()
	switch {
	case ok:
		return s, nil
	case closed:
		return nil, errClosed
	}
	// Not under d.mu: a prepare may wait for SQLite's lock (busy_timeout),
	// and the queries already prepared must not wait with it.
	s, err := d.db.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if kept, ok := d.stmts[query]; ok || d.stmts == nil {
		s.Close()
		if ok {
			return kept, nil
		}
		return nil, errClosed
	}
	d.stmts[query] = s
	return s, nil
}

// exec runs query, prepared, with args.
func (d *DB) exec(ctx context.Context, query string, args ...any) (sql.Result, error) {
	s, err := d.prepared(ctx, query)
	if err != nil {
		return nil, err
	}
	return s.ExecContext(ctx, args...)
}

// query runs query, prepared, with args.
func (d *DB) query(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	s, err := d.prepared(ctx, query)
	if err != nil {
		return nil, err
	}
	return s.QueryContext(ctx, args...)
}

// queryRow runs query, prepared, with args, for one row.
func (d *DB) queryRow(ctx context.Context, query string, args ...any) scanner {
	s, err := d.prepared(ctx, query)
	if err != nil {
		return errRow{err}
	}
	return s.QueryRowContext(ctx, args...)
}

// errRow is a row whose query failed before it ran.
type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }

// nullTime stores a time as unix milliseconds, the zero time as NULL.
func nullTime(t time.Time) sql.NullInt64 {
	if t.IsZero() {
		return sql.NullInt64{}
	}
	return sql.NullInt64{Int64: t.UnixMilli(), Valid: true}
}

// timeOf reads what nullTime stored.
func timeOf(n sql.NullInt64) time.Time {
	if !n.Valid {
		return time.Time{}
	}
	return time.UnixMilli(n.Int64)
}

func migrate(ctx context.Context, db *sql.DB) error {
	if _, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)`); err != nil {
		return err
	}
	names, err := fs.Glob(migrations, "migrations/*.sql")
	if err != nil {
		return err
	}
	sort.Strings(names)
	for _, name := range names {
		base := strings.TrimPrefix(name, "migrations/")
		n, err := strconv.Atoi(strings.SplitN(base, "_", 2)[0])
		if err != nil {
			return fmt.Errorf("migration %s: name must start with a number", base)
		}
		if err := apply(ctx, db, n, name); err != nil {
			return fmt.Errorf("migration %s: %w", base, err)
		}
	}
	return nil
}

func apply(ctx context.Context, db *sql.DB, version int, name string) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var one int
	err = tx.QueryRowContext(ctx, `SELECT 1 FROM schema_migrations WHERE version = ?`, version).Scan(&one)
	if err == nil {
		return nil // already applied
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return err
	}
	body, err := migrations.ReadFile(name)
	if err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, string(body)); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version) VALUES (?)`, version); err != nil {
		return err
	}
	return tx.Commit()
}
