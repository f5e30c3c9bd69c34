package main

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"net/url"
	"path/filepath"
	"time"

	_ "modernc.org/sqlite" // the driver FerretDB itself links; registers "sqlite"
)

// FerretDB 1.24's SQLite backend pushes a filter {_id: <string or ObjectID>}
// down to SQL as `WHERE _ferretdb_sjson->'$._id' = ?`, but the unique _id
// index it creates is on the expression `_ferretdb_sjson->"_id"`. SQLite
// only uses an expression index for the very same expression, so every
// lookup, update and upsert by _id scans the whole table (about 0.15-0.6 s
// per operation at 50k documents).
//
// idIndexer adds, to every collection table, a plain (non-unique) index on
// the expression the queries use. FerretDB does not know about it: it is not
// listed by listIndexes, and SQLite drops it together with the table when
// the collection or database is dropped. New collections get theirs within
// one polling interval.
type idIndexer struct {
	dir      string
	interval time.Duration
	logger   *slog.Logger
}

const idIndexSuffix = "__edgepipe_sjson_id"

func (ix *idIndexer) run(ctx context.Context) {
	t := time.NewTicker(ix.interval)
	defer t.Stop()

	for {
		ix.pass(ctx)

		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (ix *idIndexer) pass(ctx context.Context) {
	files, err := filepath.Glob(filepath.Join(ix.dir, "*.sqlite"))
	if err != nil {
		ix.logger.Warn("id indexer: glob failed", "err", err)
		return
	}

	for _, f := range files {
		if ctx.Err() != nil {
			return
		}

		if err := ix.file(ctx, f); err != nil {
			ix.logger.Warn("id indexer: failed", "file", filepath.Base(f), "err", err)
		}
	}
}

func (ix *idIndexer) file(ctx context.Context, path string) error {
	// mode=rw: never create a file (a database being dropped must stay gone)
	u := &url.URL{Scheme: "file", Opaque: path, OmitHost: true}
	u.RawQuery = "mode=rw&_pragma=busy_timeout(10000)"

	db, err := sql.Open("sqlite", u.String())
	if err != nil {
		return err
	}
	defer db.Close()

	db.SetMaxOpenConns(1)

	rows, err := db.QueryContext(ctx, `
		SELECT c.table_name FROM _ferretdb_collections c
		JOIN sqlite_master t ON t.type = 'table' AND t.name = c.table_name
		WHERE NOT EXISTS (
			SELECT 1 FROM sqlite_master i
			WHERE i.type = 'index' AND i.name = c.table_name || ?
		)`, idIndexSuffix)
	if err != nil {
		// a database file without FerretDB's metadata table yet: next time
		return nil //nolint:nilerr // expected while a database is being created
	}

	var tables []string
	for rows.Next() {
		var t string
		if err = rows.Scan(&t); err != nil {
			rows.Close()
			return err
		}
		tables = append(tables, t)
	}
	rows.Close()

	for _, t := range tables {
		start := time.Now()
		q := fmt.Sprintf(`CREATE INDEX IF NOT EXISTS %q ON %q (_ferretdb_sjson->'$._id')`, t+idIndexSuffix, t)
		if _, err = db.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("%s: %w", t, err)
		}
		ix.logger.Info("id indexer: added _id lookup index",
			"file", filepath.Base(path), "table", t, "took", time.Since(start).Round(time.Millisecond))
	}

	return nil
}
