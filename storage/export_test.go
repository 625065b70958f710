package storage

import (
	"context"
	"database/sql"
)

// SQL exposes the database to this package's tests, which check the
// schema and the files themselves.
func (d *DB) SQL() *sql.DB { return d.db }

// Prepared is how many prepared statements d keeps.
func (d *DB) Prepared() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.stmts)
}

// ErrClosed is the error of a query on a closed database.
var ErrClosed = errClosed

// PreparedStmt is the statement d keeps for query, prepared on first use.
func (d *DB) PreparedStmt(ctx context.Context, query string) (*sql.Stmt, error) {
	return d.prepared(ctx, query)
}
