package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"

	"github.com/ptsafe/converter/internal/envflag"
	"github.com/ptsafe/converter/internal/jobs"
)

const migrateAbout = `Brings the PostgreSQL job database at --db to this converter's schema (the job table and
River's queue tables) and exits. serve migrates at start too, under the same advisory lock, so
nodes starting together are safe; migrate lets an operator do it once, before the nodes start,
with a role that may change the schema. A database newer than this converter is refused.
Exit status: 0 migrated (or already current), 2 usage error, 1 anything else.`

// runMigrate migrates the PostgreSQL job database and returns.
func runMigrate(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	c := newCommand("migrate", "", migrateAbout)
	db := c.fs.String("db", "", "the job database: a `postgres://` URL (put the password in PGPASSWORD or ~/.pgpass, not in the URL, which help shows)")
	if err := envflag.Bind(c.fs, getenv, "db"); err != nil {
		return c.usagef("%v", err)
	}
	if _, err := c.parse(args, 0, 0, stdout); err != nil {
		return err
	}
	if !jobs.IsPostgres(*db) {
		return c.usagef("--db must be a postgres:// URL (the SQLite job store in a data directory migrates when serve opens it)")
	}
	if err := jobs.MigratePostgres(ctx, *db, slog.New(slog.NewTextHandler(stderr, nil))); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "job database migrated")
	return nil
}
